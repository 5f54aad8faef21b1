"""One readable training loop for every network: bases, transfer networks and controls.

One SGD schedule for all (momentum, weight decay, step decay at fractions of the budget). Biases
take twice the learning rate and no weight decay, as in the study's Caffe prototxt. The loop
evaluates top-1 on the target half's test images ``evaluate.evals`` times, evenly spaced over the
budget (a fixed count, so a longer budget does not cost more evaluation), and reports the final
value and the study's metric, the mean of the k best evaluations.

Resume is a first-class mode: at each epoch's end a checkpoint (checkpoints.py) holds the model,
optimizer, step, every RNG state and the curve so far, tagged with a digest of everything that
defines the run; a restarted job continues from it and ends with the same metrics as an
uninterrupted one.

The step path never waits on the device: the epoch's order and every random draw stay on the
host, and what the device needs is sent asynchronously; only evaluations read a number back.
"""

from __future__ import annotations

import contextlib
import json
import math
import platform
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from transferability import progress
from transferability.data.loader import HalfData, batches, chunks, make_batch, to_device
from transferability.files import checkpoints
from transferability.files.atomic import write_json
from transferability.networks.prefix import PrefixCache, build_cache, cacheable
from transferability.networks.unitnet import UnitNet
from transferability.training import health
from transferability.training.sgd import SGD

BIAS_LR_MULT = 2.0


def precision_context(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bfloat16 autocast for the forward passes (tensor cores on a GPU), or nothing for float32."""
    if precision == "bfloat16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def lr_at(step: int, total: int, train: dict[str, Any]) -> float:
    """Step decay: lr times lr_decay for every lr_steps fraction of the budget already passed."""
    passed = sum(step >= math.ceil(f * total) for f in train["lr_steps"])
    return train["lr"] * train["lr_decay"] ** passed


def make_optimizer(net: UnitNet, train: dict[str, Any]) -> SGD:
    """SGD over trainable parameters only: frozen layers get no update and no weight decay."""
    frozen = tuple(f"layers.{net.key(k)}." for k in net.frozen)
    params = [(n, p) for n, p in net.named_parameters() if not n.startswith(frozen)]
    weights = [p for n, p in params if not n.endswith("bias")]
    biases = [p for n, p in params if n.endswith("bias")]
    return SGD([{"params": weights, "lr_mult": 1.0, "weight_decay": train["weight_decay"]},
                {"params": biases, "lr_mult": BIAS_LR_MULT, "weight_decay": 0.0}],
               lr=train["lr"], momentum=train["momentum"])


@torch.no_grad()
def evaluate(net: torch.nn.Module, data: HalfData, crop: int | None, channels_last: bool = False,
             cache: PrefixCache | None = None, batch: int = 250) -> float:
    """Top-1 accuracy on the half's test images (centre crop, no flips).

    The batch size changes speed only (activations that stay in cache), never a prediction."""
    was = net.training
    net.eval()
    correct = 0
    for a, b in chunks(len(data.x_test), batch):
        if cache is None:
            out = net(make_batch(data.x_test[a:b], data, crop, False, None, channels_last))
        else:
            out = cache.rest(cache.test[a:b])
        correct += (out.argmax(1) == data.y_test[a:b]).sum().item()
    net.train(was)
    return correct / len(data.x_test)


def step_batches(data: HalfData, cache: PrefixCache | None, order: torch.Tensor, batch_size: int,
                 crop: int | None, mirror: bool, gen: torch.Generator,
                 channels_last: bool, readers: int = 1) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Each step's input (to the network, or to the layers after the prefix cache) and labels for an
    epoch in ``order`` (on the host), drawing crops and flips from ``gen`` in step order; a streamed
    half is read by ``readers`` threads."""
    on_device = to_device(order, data.y_train.device)
    images = batches(data.x_train, order, batch_size, readers) if cache is None else None
    for a in range(0, len(order), batch_size):
        idx = on_device[a : a + batch_size]
        if images is not None:
            x = make_batch(next(images), data, crop, mirror, gen, channels_last)
        else:
            x = cache.batch(idx, data, mirror, gen)
        yield x, data.y_train[idx]


def compiled(net: torch.nn.Module, backend: Any = "inductor") -> torch.nn.Module:
    """``torch.compile`` with static shapes: an epoch's short last batch (and the evaluation batches)
    get a graph of their own, compiled once, instead of turning every later step into a dynamic-shape
    graph; the numbers stay those of the uncompiled batches (nothing dropped or padded). The
    compiled module shares ``net``'s parameters."""
    return torch.compile(net, dynamic=False, backend=backend)


def eval_steps(total: int, evals: int) -> set[int]:
    """Steps of the whole budget (1-based, the last = its end) after which the net is evaluated."""
    k = min(evals, total)
    return {math.ceil(total * j / k) for j in range(1, k + 1)}


@dataclass
class State:
    """Everything a resumed run needs besides the model and optimizer."""

    epoch: int = 0
    step: int = 0
    evals: list[dict[str, Any]] = field(default_factory=list)
    train_seconds: float = 0.0  # everything: steps, evaluations, checkpoints, the prefix cache
    eval_seconds: float = 0.0
    cache_seconds: float = 0.0

    def work(self) -> dict[str, Any]:
        """What the checkpoint holds: the run's state without its wall-clock seconds, so that two
        identical runs leave byte-identical checkpoints (DVC hashes them in dvc.lock)."""
        return {k: v for k, v in self.__dict__.items() if k not in SECONDS}

    def save_seconds(self, checkpoint: Path, tag: str) -> None:
        """The seconds so far, beside the checkpoint (``seconds_file``), for a resumed run's timing.json."""
        write_json(seconds_file(checkpoint), {"tag": tag, "epoch": self.epoch,
                                              **{k: self.__dict__[k] for k in SECONDS}})

    def load_seconds(self, checkpoint: Path, tag: str) -> None:
        """The seconds recorded with this epoch's checkpoint; none (a timing from the resume on) where
        the file is missing or belongs to another epoch (a fallback to the previous checkpoint)."""
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            saved = json.loads(seconds_file(checkpoint).read_text())
            if saved.get("tag") == tag and saved.get("epoch") == self.epoch:
                self.__dict__.update({k: float(saved[k]) for k in SECONDS})


SECONDS = ("train_seconds", "eval_seconds", "cache_seconds")


def seconds_file(checkpoint: Path) -> Path:
    """``.<stem>.seconds.json`` beside the checkpoint (not ``.<name>.*``: those are its temporaries)."""
    return checkpoint.with_name(f".{checkpoint.stem}.seconds.json")


def k_best(evals: list[dict[str, Any]], k: int) -> float:
    best = sorted((e["top1"] for e in evals), reverse=True)[:k]
    return sum(best) / len(best)


class Window:
    """The training loss since the last evaluation, checked for NaN and inf without a sync per step:
    the device counts the steps whose running sum is still finite (a non-finite sum stays so), and the
    host reads it only where it reads the sum anyway (each evaluation, each epoch's end), so a diverged
    run stops there, before its weights reach a checkpoint, naming the first bad step."""

    def __init__(self, start: int, device: torch.device) -> None:
        self.start, self.finite = start, torch.zeros((), dtype=torch.long, device=device)

    def count(self, loss_sum: torch.Tensor) -> None:
        self.finite += torch.isfinite(loss_sum)

    def mean(self, loss_sum: torch.Tensor, n: int, label: str, total: int, steps_per_epoch: int,
             tr: dict[str, Any]) -> float:
        """The window's mean loss; a UserError (health.diverged) if a step's loss was not finite."""
        value = loss_sum.item() / n
        if not math.isfinite(value):
            step = self.start + int(self.finite.item()) + 1
            raise health.diverged(label, value, step, total, (step - 1) // steps_per_epoch, lr_at(step - 1, total, tr),
                                  tr["lr"])
        return value


def train(net: UnitNet, data: HalfData, params: dict[str, Any], seed: int,
          checkpoint: Path, tag: str, label: str) -> dict[str, Any]:
    """Train ``net`` on ``data`` under params' schedule; return the results and timing."""
    tr, ev, compute = params["train"], params["evaluate"], params["compute"]
    channels_last = compute.get("channels_last", False)
    eval_batch = compute.get("eval_batch", 250)
    device = data.y_train.device
    amp = precision_context(device, compute.get("precision", "float32"))
    model = compiled(net) if compute.get("compile", False) else net
    n_train = len(data.x_train)
    steps_per_epoch = math.ceil(n_train / tr["batch_size"])
    total = tr["epochs"] * steps_per_epoch
    when = eval_steps(total, ev["evals"])

    torch.manual_seed(seed)  # dropout's stream
    gen = torch.Generator().manual_seed(seed)  # data order and augmentation
    opt = make_optimizer(net, tr)
    state = State(**(checkpoints.load(checkpoint, tag, net, opt, gen, device) or {}))
    if state.epoch:
        state.load_seconds(checkpoint, tag)
    resumed_from = state.epoch
    if resumed_from:
        print(f"{label}: resumed from epoch {resumed_from} of {tr['epochs']} ({checkpoint})", file=sys.stderr)
    cache = None
    mode = params["compute"].get("frozen_prefix", "cache")
    if mode == "cache" and state.epoch < tr["epochs"] and cacheable(net, data, tr, params["compute"]):
        t = time.perf_counter()
        with amp:
            cache = build_cache(net, data, tr.get("mirror", False), channels_last, eval_batch)
        built = time.perf_counter() - t
        state.cache_seconds += built
        state.train_seconds += built
        print(f"{label}: frozen layers 1..{max(net.frozen)} run once: {cache.nbytes / 2**20:.0f} MiB cached "
              f"in {built:.1f} s", file=sys.stderr)
    net.train()
    # closed however the loop ends (an interrupt too), before anything reports how it ended
    with progress.bar(tr["epochs"] * n_train, label, "img", initial=state.epoch * n_train, unit_scale=True) as bar:
        t0 = time.perf_counter()
        while state.epoch < tr["epochs"]:
            order = torch.randperm(n_train, generator=gen)
            loss_sum, loss_n = torch.zeros((), device=device), 0
            window = Window(state.step, device)
            steps = step_batches(data, cache, order, tr["batch_size"], tr.get("crop"), tr.get("mirror", False), gen,
                                 channels_last, compute["threads"])
            for i, (x, y) in enumerate(steps):
                lr = lr_at(state.step, total, tr)
                for g in opt.param_groups:
                    g["lr"] = lr * g["lr_mult"]
                with amp:
                    loss = F.cross_entropy(model(x) if cache is None else cache.rest(x), y)
                net.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                loss_sum += loss.detach() * len(y)
                window.count(loss_sum)
                loss_n += len(y)
                state.step += 1
                bar.update(len(y))
                if state.step in when:
                    train_loss = window.mean(loss_sum, loss_n, label, total, steps_per_epoch, tr)
                    t_eval = time.perf_counter()
                    with amp:
                        top1 = evaluate(model, data, tr.get("crop"), channels_last, cache, eval_batch)
                    state.eval_seconds += time.perf_counter() - t_eval
                    state.evals.append({"epoch": round(state.epoch + (i + 1) / steps_per_epoch, 4),
                                        "step": state.step, "lr": lr,
                                        "train_loss": round(train_loss, 6), "top1": top1})
                    loss_sum, loss_n = torch.zeros((), device=device), 0
                    window = Window(state.step, device)
                    bar.set_postfix(epoch=f"{state.epoch + 1}/{tr['epochs']}", top1=f"{top1:.4f}", refresh=False)
            window.mean(loss_sum, max(loss_n, 1), label, total, steps_per_epoch, tr)  # no diverged checkpoint
            state.epoch += 1
            state.train_seconds += time.perf_counter() - t0
            t0 = time.perf_counter()
            checkpoints.save(checkpoint, tag, net, opt, state.work(), gen, device)
            state.save_seconds(checkpoint, tag)
    checkpoints.finish(checkpoint)
    wall = state.train_seconds
    results = {"top1": state.evals[-1]["top1"], "top1_kbest": k_best(state.evals, ev["k_best"]),
               "k_best": ev["k_best"], "evals": state.evals, "steps": total, "num_train": n_train,
               "num_test": len(data.x_test),
               "learned": health.learned(state.evals, len(data.x_test), len(data.class_names))}
    steps_s = wall - state.eval_seconds - state.cache_seconds
    timing = {"wall_time_s": round(wall, 3), "resumed_from_epoch": resumed_from,
              "images_per_s": round(n_train * tr["epochs"] / max(wall, 1e-9), 1),
              "train_images_per_s": round(n_train * tr["epochs"] / max(steps_s, 1e-9), 1),
              "eval_s": round(state.eval_seconds, 3),
              "device": str(device), "threads": torch.get_num_threads(), "host": platform.node(),
              "frozen_prefix": "cache" if cache else "full" if mode == "full" else "no_grad",
              "prefix_cache_s": round(state.cache_seconds, 3)}
    return {"results": results, "timing": timing}
