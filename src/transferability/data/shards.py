"""Long row-wise computations in shards, so a killed stage resumes where it stopped.

``sharded_rows``: each shard of rows is saved atomically and sealed under a work folder named by a
digest of the inputs; a restarted stage keeps the intact finished shards and computes the missing
(or damaged) ones; ``join_npy`` then streams them into the output.

``fill_npy``: rows too many to hold in memory (ImageNet: 250 GB) go straight into one preallocated
.npy, written by a pool of processes. The parent takes finished shards in order, hashes their rows
(still in the page cache), fsyncs and only then marks the shard done, so a restarted stage trusts
exactly the marked prefix, and the result is bit-identical to an uninterrupted run.

Different inputs get a different folder (older ones are cleared), so a shard is never reused for
data it was not made from.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import multiprocessing
import os
import shutil
import signal
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from transferability import progress
from transferability.data.store import NPY_HEADER, npy_header
from transferability.errors import UserError
from transferability.files.atomic import atomic_path, ensure_writable, write_json
from transferability.files.sealed import intact, sealed_writer

Imap = Callable[[Callable[[Any], Any], Iterable[Any]], Iterator[Any]]
PIECE = 64  # items per task of fill_npy: a shard is shared among the workers, however few shards there are


@contextlib.contextmanager
def worker_pool(workers: int) -> Iterator[Imap]:
    """An ordered ``imap`` over ``workers`` processes, or plain ``map`` in this process for one.

    Forked, so a worker starts in milliseconds and imports nothing (spawn would re-run the caller's
    main module in each); a failure or an interrupt terminates them all. Workers ignore Ctrl-C and
    end quietly on SIGTERM: the parent alone reports an interrupt (cli.py), in one line."""
    if workers <= 1:
        yield map
        return
    with multiprocessing.get_context("fork").Pool(workers, initializer=_quiet_worker) as pool:
        yield functools.partial(pool.imap, chunksize=1)


def _quiet_worker() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def key_folder(work: Path, key: str) -> Path:
    """``work/key``, created, with the folders of other keys (stale inputs) removed."""
    if work.exists():
        for stale in work.iterdir():
            if stale.name != key:
                shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink()
    folder = work / key
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def sharded_rows(work: Path, key: str, n: int, shard: int, make: Callable[[int, int], np.ndarray],
                 desc: str) -> list[Path]:
    """Rows 0..n of ``make(start, stop)`` as shard files in ``work/key``, computed a shard at a time.

    Each shard is sealed (sealed.py): one a restarted stage finds damaged is set aside and computed
    again, never trusted. Read them in order with ``join_npy``."""
    folder = key_folder(work, key)
    starts = list(range(0, max(n, 1), shard))  # one (empty) shard for no rows: it still has their width
    files = [folder / f"shard-{i:05d}.npy" for i in range(len(starts))]
    done = sum(intact(f, "computing it again") for f in files)
    if done:
        print(f"{desc}: resuming, {done} of {len(files)} shards already done", file=sys.stderr)
    with progress.bar(n, desc, "row") as bar:
        for start, f in zip(starts, files, strict=True):
            stop = min(start + shard, n)
            if not f.exists():
                with sealed_writer(f) as out:
                    np.lib.format.write_array(out, make(start, stop))
            bar.update(stop - start)
    return files


def join_npy(files: list[Path], dest: Path, cols: slice = slice(None)) -> tuple[int, ...]:
    """Write the .npy files' rows, in order, as the one .npy ``dest`` (a shard at a time, never the
    whole in memory: an ImageNet feature dump is ~13 GB); ``cols``: only those columns (a dump's logits
    go to a file of their own). Return its shape."""
    parts = [np.load(f, mmap_mode="r")[:, cols] for f in files]
    shape = (sum(len(p) for p in parts), *parts[0].shape[1:])
    with open(dest, "wb") as out:
        np.lib.format.write_array_header_1_0(out, {"descr": np.lib.format.dtype_to_descr(parts[0].dtype),
                                                   "fortran_order": False, "shape": shape})
        for p in parts:
            out.write(np.ascontiguousarray(p).data)
    return shape


@dataclass(frozen=True)
class Filled:
    """The .npy ``fill_npy`` made: one row per item except the ``failed`` ones."""

    path: Path
    shape: tuple[int, ...]
    sha256: str
    stats: np.ndarray               # the workers' per-shard statistics, summed
    failed: list[tuple[int, str]]   # (item index, reason), in item order


class _Hasher:
    """sha256 of a file's bytes in order, read back as far as asked (from the page cache, just written)."""

    def __init__(self, f: Any, chunk: int = 1 << 23) -> None:
        self.f, self.h, self.pos, self.buf = f, hashlib.sha256(), 0, bytearray(chunk)

    def upto(self, end: int) -> None:
        view = memoryview(self.buf)
        self.f.seek(self.pos)
        while self.pos < end:
            got = self.f.readinto(view[: min(len(view), end - self.pos)])
            if not got:
                raise OSError(f"{self.f.name} ends at byte {self.pos}, before {end}")
            self.h.update(view[:got])
            self.pos += got


def _without_rows(src: Path, dest: Path, shape: tuple[int, ...], drop: set[int], block: int = 64) -> str:
    """Copy the .npy ``src`` of ``shape`` without rows ``drop`` to ``dest``; return its sha256."""
    row = int(np.prod(shape[1:]))
    keep = [i for i in range(shape[0]) if i not in drop]
    h = hashlib.sha256()
    with open(src, "rb") as fin, open(dest, "wb") as fout:
        header = npy_header((len(keep), *shape[1:]))
        h.update(header)
        fout.write(header)
        for i in range(0, len(keep), block):
            chunk = b"".join(_pread(fin, NPY_HEADER + r * row, row) for r in keep[i : i + block])
            h.update(chunk)
            fout.write(chunk)
    return h.hexdigest()


def _pread(f: Any, offset: int, size: int) -> bytes:
    f.seek(offset)
    return f.read(size)


def fill_npy(folder: Path, items: list[Any], row_shape: tuple[int, ...], shard: int,
             worker: Callable[[tuple[str, int, list[Any]]], tuple[np.ndarray, list[tuple[int, str]]]],
             imap: Imap, keep_going: bool, fix: str, desc: str) -> Filled:
    """A uint8 .npy of one row per item, filled shard by shard by ``worker`` through ``imap``.

    ``worker((path, offset, items))`` writes the rows of up to PIECE items into ``path`` from byte
    ``offset`` and returns its statistics and the items it could not turn into a row (index among
    its items, reason). Such an item stops the fill with ``fix`` as the advice, or with ``keep_going`` is left
    out: its row is dropped from the result (one extra copy of the file, for this rare case)."""
    n, row = len(items), int(np.prod(row_shape))
    data = folder / "rows.npy"
    if not data.exists():
        ensure_writable(folder, NPY_HEADER + n * row)
        with atomic_path(data) as tmp, open(tmp, "r+b") as f:
            f.write(npy_header((n, *row_shape)))
            f.truncate(NPY_HEADER + n * row)  # sparse: the disk fills as the rows arrive
    starts = list(range(0, n, shard))
    markers = [folder / f"shard-{k:05d}.json" for k in range(len(starts))]
    done = next((k for k, m in enumerate(markers) if not m.exists()), len(markers))
    if done:
        print(f"{desc}: resuming, {done} of {len(markers)} shards already done", file=sys.stderr)
    stats: Any = 0
    failed: list[tuple[int, str]] = []
    for m in markers[:done]:
        state = json.loads(m.read_text())
        stats = stats + np.array(state["stats"], dtype=np.int64)
        failed += [(int(i), r) for i, r in state["failed"]]
    pieces = [(p, min(p + PIECE, s + shard, n)) for s in starts[done:] for p in range(s, min(s + shard, n), PIECE)]
    results = imap(worker, [(str(data), NPY_HEADER + a * row, items[a:b]) for a, b in pieces])
    # unbuffered: a buffered reader would keep bytes read ahead, from before the workers wrote them
    with open(data, "rb", buffering=0) as f, progress.bar(n, desc, "image", initial=min(done * shard, n)) as bar:
        hasher = _Hasher(f)
        for k in range(done, len(starts)):
            start, stop = starts[k], min(starts[k] + shard, n)
            shard_stats, bad = 0, []
            for a in range(start, stop, PIECE):
                piece_stats, piece_failed = next(results)
                shard_stats = shard_stats + piece_stats
                bad += [(a + i, reason) for i, reason in piece_failed]
                bar.update(min(a + PIECE, stop) - a)
            if bad and not keep_going:
                raise UserError(f"cannot read {items[bad[0][0]]} ({bad[0][1]}); {fix}")
            hasher.upto(NPY_HEADER + stop * row)
            os.fsync(f.fileno())  # the rows reach the disk before the marker that vouches for them
            write_json(markers[k], {"stats": shard_stats.tolist(), "failed": bad})
            stats, failed = stats + shard_stats, failed + bad
        hasher.upto(NPY_HEADER + n * row)
    if not failed:
        return Filled(data, (n, *row_shape), hasher.h.hexdigest(), np.asarray(stats), [])
    kept = folder / "kept.npy"
    ensure_writable(folder, NPY_HEADER + (n - len(failed)) * row)
    with atomic_path(kept) as tmp:
        sha = _without_rows(data, tmp, (n, *row_shape), {i for i, _ in failed})
    return Filled(kept, (n - len(failed), *row_shape), sha, np.asarray(stats), failed)
