"""Atomic writes: a file or folder appears under its final name only once it is complete.

A job killed mid-write leaves at most a hidden temporary beside the target, never a file that
looks finished, and the previous good output stays in place until the new one replaces it. The
next write of the same target clears such leftovers. A temporary's name carries its writer's host
and process id, and only those of writers that are gone are cleared: two jobs that write one
output at once (a job orphaned by a killed Snakemake and its rerun) never delete each other's.

Temporaries get the modes ``open()`` and ``mkdir()`` would give (0666 and 0777 less the umask),
not ``tempfile``'s private 0600 and 0700: on a shared cluster or project the reports, models and
store must be as readable as any other file the user writes.

``TRANSFERABILITY_PAUSE_BEFORE_RENAME_S`` makes every write wait that long between a complete
temporary and its rename: a fault-injection hook, so tests can kill a job inside that window.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from transferability.errors import UserError

PAUSE_ENV = "TRANSFERABILITY_PAUSE_BEFORE_RENAME_S"


def _owner() -> str:
    """This writer, as its temporaries' names carry it: ``<host>-<pid>``."""
    return f"{platform.node()}-{os.getpid()}"


def _writer_gone(middle: str) -> bool:
    """Whether the writer named in a temporary's ``<host>-<pid>.<random>`` has ended.

    A writer on another host cannot be asked, so its temporaries are left alone; a name without
    an owner comes from an older version of this module, whose writers are gone."""
    host, _, pid = middle.rpartition(".")[0].rpartition("-")
    if not pid.isdigit():
        return True
    if host != platform.node():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        pass
    return False


def clear_leftovers(target: Path) -> list[Path]:
    """Remove the temporaries that ended writers of ``target`` left behind; return what was removed."""
    found = []
    for p in target.parent.glob(f".{glob.escape(target.name)}.*"):
        rest = p.name[len(target.name) + 2 :]
        if rest == "old" or (".tmp" in rest and _writer_gone(rest.rpartition(".tmp")[0])):
            found.append(p)
    for p in found:
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    return found


def umask() -> int:
    """The process's umask. Linux shows it in /proc; elsewhere it is read by setting it and back,
    which another thread creating a file in that instant would see."""
    with contextlib.suppress(OSError, StopIteration, ValueError):
        status = Path("/proc/self/status").read_text().splitlines()
        return int(next(line for line in status if line.startswith("Umask:")).split()[1], 8)
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def _pause() -> None:
    if seconds := float(os.environ.get(PAUSE_ENV, 0) or 0):
        time.sleep(seconds)


@contextlib.contextmanager
def atomic_path(target: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` if the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    clear_leftovers(target)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.{_owner()}.", suffix=f".tmp{suffix}", dir=target.parent)
    os.fchmod(fd, 0o666 & ~umask())
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb") as f:
            os.fsync(f.fileno())
        _pause()
        os.replace(tmp_path, target)
    except OSError as exc:  # name the output, not its temporary
        raise OSError(exc.errno, exc.strerror, str(target)) from exc
    finally:
        tmp_path.unlink(missing_ok=True)


def ensure_writable(folder: str | Path, need_bytes: int = 0) -> None:
    """Fail before any expensive work if ``folder`` cannot take ``need_bytes`` of new files."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-probe.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UserError(f"cannot write to {folder}: {exc.strerror}; make it writable, or run from a "
                        "writable copy of the project") from exc
    free = shutil.disk_usage(folder).free
    if free < need_bytes:
        raise UserError(f"{folder} has {free / 2**20:.1f} MiB free but this stage writes about "
                        f"{need_bytes / 2**20:.1f} MiB; free some space and run it again")


def write_text(target: str | Path, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text)


def write_json(target: str | Path, obj: Any) -> None:
    """Write JSON deterministically (sorted keys, fixed indent) so equal content means equal bytes."""
    write_text(target, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_bytes(target: str | Path, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


@contextlib.contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``target``; swap it in for ``target`` if the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    clear_leftovers(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.{_owner()}.", suffix=".tmp", dir=target.parent))
    tmp.chmod(0o777 & ~umask())
    try:
        yield tmp
        _pause()
        old = None
        if target.exists():
            old = target.with_name(f".{target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, str(target)) from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
