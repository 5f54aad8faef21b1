"""Long row-wise computations in shards, so a killed stage resumes where it stopped.

Each shard of rows is saved atomically under a work folder named by a digest of the inputs; a
restarted stage loads the finished shards and computes only the missing ones. Different inputs get
a different folder (older ones are cleared), so a shard is never reused for data it was not made from.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .atomic import atomic_path
from .store import save_npy


def sharded_rows(work: Path, key: str, n: int, shard: int, make: Callable[[int, int], np.ndarray],
                 desc: str) -> np.ndarray:
    """Rows 0..n of ``make(start, stop)``, computed a shard at a time and kept in ``work/key``."""
    folder = work / key
    if work.exists():
        for stale in work.iterdir():
            if stale.name != key:
                shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink()
    folder.mkdir(parents=True, exist_ok=True)
    starts = list(range(0, n, shard))
    files = [folder / f"shard-{i:05d}.npy" for i in range(len(starts))]
    done = sum(f.exists() for f in files)
    if done:
        print(f"{desc}: resuming, {done} of {len(files)} shards already done", file=sys.stderr)
    with tqdm(total=n, desc=desc, unit="row", mininterval=2, ascii=True) as bar:
        for start, f in zip(starts, files, strict=True):
            stop = min(start + shard, n)
            if not f.exists():
                with atomic_path(f) as tmp:
                    save_npy(tmp, make(start, stop))
            bar.update(stop - start)
    if not files:
        return make(0, 0)
    return np.concatenate([np.load(f) for f in files])
