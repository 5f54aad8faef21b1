"""A training run's checkpoint: what it holds, how it is written and found again, who may write it.

- It holds the model, the optimizer's momentum buffers, the loop's state, the data generator and
  the random state of the CPU and of the device that trains (a GPU's dropout masks come from the
  GPU's generator), so a resumed run is the uninterrupted one, bit for bit.
- Every tensor is saved as a CPU tensor: the bytes do not depend on which card trained the
  network (``torch.save`` records a tensor's device), and it is streamed to the file, never held
  as a second serialised copy in memory.
- It is sealed (sealed.py): a truncated, empty or altered checkpoint is set aside with one line,
  and the run falls back to the previous epoch's (kept under ``.<name>.prev`` until the run ends),
  else to the start. It is loaded with ``weights_only=True``: a file pulled from a remote runs no code.
- One job per network: a job holds an exclusive ``flock`` on ``.<name>.lock`` beside it for its
  whole life, so a second job on the same network (a rerun beside an orphaned one) waits for the
  first to end and then takes up its finished checkpoint instead of training beside it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pickle
import platform
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from transferability.errors import UserError
from transferability.files.sealed import intact, sealed_writer, set_aside

# What torch.load raises on a file that is not a safe state dict: objects weights_only refuses
# (pickle.UnpicklingError), a broken archive (RuntimeError), a cut-off pickle (EOFError).
UNLOADABLE = (pickle.UnpicklingError, RuntimeError, EOFError, ValueError)


def previous(path: Path) -> Path:
    """Where the previous epoch's checkpoint stays while the next one is written."""
    return path.with_name(f".{path.name}.prev")


def on_cpu(obj: Any) -> Any:
    """``obj`` with every tensor in it (dicts, lists) moved to the CPU; CPU tensors are not copied.

    A state dict stays what it was (an OrderedDict with its ``_metadata``), so a CPU run saves the
    same bytes with or without this."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu")
    if isinstance(obj, dict):
        out = type(obj)((k, on_cpu(v)) for k, v in obj.items())
        if hasattr(obj, "_metadata"):
            out._metadata = obj._metadata
        return out
    if isinstance(obj, (list, tuple)):
        return type(obj)(on_cpu(v) for v in obj)
    return obj


def rng_states(device: torch.device) -> dict[str, torch.Tensor]:
    """The CPU generator's state and, on an accelerator, that of the card ``device`` names, keyed by
    device type: a run resumed on another card of the same kind continues the same stream."""
    states = {"cpu": torch.get_rng_state()}
    if device.type != "cpu":
        states[device.type] = torch.get_device_module(device.type).get_rng_state(device)
    return states


def set_rng_states(states: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(states["cpu"])
    if device.type != "cpu" and device.type in states:
        torch.get_device_module(device.type).set_rng_state(states[device.type], device)


def save(path: Path, tag: str, net: torch.nn.Module, opt: Any, state: dict[str, Any],
         gen: torch.Generator, device: torch.device) -> None:
    """Write the checkpoint; the one it replaces stays as ``previous(path)`` until this one is complete."""
    if path.exists():
        os.replace(path, previous(path))
    with sealed_writer(path) as f:
        torch.save(on_cpu({"tag": tag, "model": net.state_dict(), "optimizer": opt.state_dict(),
                           "state": state, "rng": rng_states(device), "data_rng": gen.get_state()}), f)


def load(path: Path, tag: str, net: torch.nn.Module, opt: Any, gen: torch.Generator,
         device: torch.device) -> dict[str, Any] | None:
    """Restore the newest intact checkpoint written for this exact run (same tag); None if there is none."""
    for candidate, then in ((path, "falling back to the previous epoch's checkpoint, else to the start"),
                            (previous(path), "starting from the first epoch")):
        if not intact(candidate, then):
            continue
        try:
            ckpt = torch.load(candidate, map_location="cpu", weights_only=True)
        except UNLOADABLE as exc:
            moved = set_aside(candidate)
            print(f"{candidate} cannot be loaded as plain tensors ({_first_line(exc)}): set aside as "
                  f"{moved.name}; {then}", file=sys.stderr)
            continue
        if ckpt.get("tag") != tag:
            print(f"ignoring {candidate}: it belongs to other params, inputs or code", file=sys.stderr)
            continue
        net.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        set_rng_states(ckpt["rng"], device)
        gen.set_state(ckpt["data_rng"])
        return ckpt["state"]
    return None


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def load_weights(path: Path, fix: str) -> dict[str, torch.Tensor]:
    """A state dict from ``path`` (model.pt, or downloaded weights), on the CPU, loaded so that a file
    from elsewhere can run no code; one that is damaged or holds objects is refused with ``fix``."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except UNLOADABLE as exc:
        raise UserError(f"cannot load {path}: it is damaged or holds more than tensors "
                        f"({_first_line(exc)}); {fix}") from exc


def finish(path: Path) -> None:
    """The run is complete: the previous epoch's checkpoint is no longer needed."""
    previous(path).unlink(missing_ok=True)


@contextlib.contextmanager
def exclusive(path: Path, label: str) -> Iterator[None]:
    """Hold the network's checkpoint for this job: wait (saying so) while another job holds it.

    The kernel drops the lock when the holder ends, however it ends. Waiting rather than refusing:
    the first job's finished checkpoint then completes this one in seconds with the same files, so
    a rerun beside an orphaned job succeeds instead of failing."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        f = open(path.with_name(f".{path.name}.lock"), "a+")  # closed by the with below
    except OSError:  # a folder this job cannot write: no job can train here, and the stage says so in one line
        yield
        return
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            print(f"{label}: another job ({holder}) is training this network ({path}); waiting for it to "
                  "end, then this job takes up its checkpoint", file=sys.stderr)
            fcntl.flock(f, fcntl.LOCK_EX)
        with contextlib.suppress(OSError):  # who holds it, for the message above: a full disk may refuse it
            f.seek(0)
            f.truncate()
            f.write(f"pid {os.getpid()} on {platform.node()}\n")
            f.flush()
        yield
