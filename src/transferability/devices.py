"""Choosing the device, and claiming a free GPU with per-card lock files.

Snakemake's ``--resources gpu=N`` only counts jobs; it hands out no device ids. Each training
job therefore takes an exclusive ``flock`` on ``<lock_dir>/gpu<i>.lock`` for the first free i and
holds it for its lifetime. The kernel releases the lock when the process dies, however it dies,
so a killed job never strands a card. Locks are named by the physical card: under Slurm (or any
``CUDA_VISIBLE_DEVICES``) a job sees its granted card as cuda:0, and two jobs granted different
cards must not wait for each other's ``gpu0.lock``.
"""

from __future__ import annotations

import fcntl
import os
import sys
import time
from pathlib import Path
from typing import IO

import torch

from .errors import UserError

_held: list[IO] = []  # lock files held open by this process


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity, which taskset, cgroup cpusets and Slurm
    narrow; os.cpu_count() counts the whole machine's, whatever this job was granted."""
    return len(os.sched_getaffinity(0))


def physical_ids(count: int) -> list[str]:
    """The machine's names of the cards torch numbers 0..count-1 (CUDA_VISIBLE_DEVICES, if set)."""
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    return visible[:count] if len(visible) >= count else [str(i) for i in range(count)]


def claim_gpu(count: int, lock_dir: str | Path, wait_s: float = 0.5, timeout_s: float | None = None) -> int:
    """Return the index of a card no other process holds, waiting until one frees up."""
    lock_dir = Path(lock_dir)
    lock_dir.mkdir(parents=True, exist_ok=True)
    names = physical_ids(count)
    start = time.monotonic()
    while True:
        for i in range(count):
            f = open(lock_dir / f"gpu{names[i]}.lock", "a+")
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.close()
                continue
            f.seek(0)
            f.truncate()
            f.write(f"{os.getpid()}\n")
            f.flush()
            _held.append(f)
            return i
        if timeout_s is not None and time.monotonic() - start > timeout_s:
            raise TimeoutError(f"no free GPU among {count} in {lock_dir} after {timeout_s} s")
        time.sleep(wait_s)


def resolve_device(requested: str, lock_dir: str | Path) -> torch.device:
    """cpu, or a claimed CUDA card; 'cuda' with no card present is a configuration error."""
    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UserError("compute.device is 'cuda' but torch finds no CUDA device here; "
                        "set compute.device: cpu (or auto)")
    count = torch.cuda.device_count()
    index = claim_gpu(count, lock_dir)
    print(f"claimed GPU {index} ({lock_dir}/gpu{physical_ids(count)[index]}.lock)", file=sys.stderr)
    return torch.device("cuda", index)
