"""Streamed loader throughput: the training job's batching from an ImageNet-shaped store, beside its physical anchors.

The store: N uint8 images of 3 x 256 x 256 (the prepared store's layout: one .npy, memory-mapped),
written once by this script (random bytes) and reused by later runs. Each pass is one epoch as a
training job draws it: an order from ``torch.randperm`` with a seeded generator, batches of the
profile's size, the crops and flips drawn as training draws them (``data.augmentation``, the host's
part of ``make_batch``; on a GPU the whole ``make_batch``, whose crop is one gather there), and the
batch the job sends to its device (on a GPU: pinned, copied on the loader's stream; on a CPU: the
uint8 batch in host memory, nothing pinned, for a CPU-only torch has no pinned memory).

Measured, images/s with 1 and 2 loader threads, HOT (store in the page cache) and COLD (evicted
before each pass with ``posix_fadvise(DONTNEED)``, its residency checked with ``fincore``), each
beside its anchor measured in the same run on the same file, same batches, same threads:

- new: ``data.batches`` (``data.Loader``: readers copying each image once into reused buffers);
- old: ``data.batches`` of commit eb5778e (one prefetch thread, a gather and a scatter per batch),
  imported from git, 1 thread (it had no other setting);
- hot anchor: a plain loop copying each image of the batch once into one preallocated buffer;
- cold anchor: a plain ``os.preadv`` of each image's bytes into one preallocated buffer.

Batches are split between the anchors' threads a batch at a time; every image is read in file order
within its batch, as the loader reads it. Also counted: the copies of a batch on the host (numpy's
allocations traced with tracemalloc while a batch is made: the old loader's temporaries are batch-
sized, the new one makes none). Targets (issue 23): hot >= 0.7 of the anchor at the same threads,
2 threads >= 1.8 x one, cold >= 0.8 of the anchor, one copy per batch.

    python benchmarks/loader.py                  # 20,000 images (3.9 GB under data/benchmarks/loader)
    python benchmarks/loader.py --repeat 3 --images 20000 --threads 1 2
"""

from __future__ import annotations

import gc
import mmap
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
import types
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import ROOT, parser, save, table

from transferability import params as tparams
from transferability.data.loader import HalfData, Loader, Streamed, augmentation, batches, gather, make_batch

BEFORE = "eb5778e"  # main before the loader was rebuilt


def make_store(path: Path, n: int, channels: int, side: int) -> np.ndarray:
    """The store file (reused when it holds ``n`` images of this shape), memory-mapped read-only."""
    shape = (n, channels, side, side)
    if path.exists():
        images = np.load(path, mmap_mode="r")
        if images.shape == shape and images.dtype == np.uint8:
            return images
        del images
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
    rng = np.random.default_rng(0)
    step = max(1, 2**28 // out[0].nbytes)
    for a in range(0, n, step):
        b = min(a + step, n)
        out[a:b] = np.frombuffer(rng.bytes((b - a) * out[0].nbytes), np.uint8).reshape(b - a, *shape[1:])
    out.flush()
    del out
    os.replace(tmp, path)
    return np.load(path, mmap_mode="r")


def evict(path: Path) -> None:
    """Drop the file's pages from the page cache (pages mapped by a live memory map stay: map none)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def resident(path: Path) -> int | None:
    """Bytes of the file in the page cache (util-linux ``fincore``; None without it)."""
    if not shutil.which("fincore"):
        return None
    out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)],
                         capture_output=True, text=True)
    return int(out.stdout.split()[0]) if out.returncode == 0 and out.stdout.strip() else None


def warm(path: Path) -> None:
    with open(path, "rb") as f:
        while f.read(2**24):
            pass


def old_data(commit: str) -> types.ModuleType | None:
    """``transferability.data.loader`` as it was at ``commit`` (its relative imports resolve in today's package)."""
    src = subprocess.run(["git", "-C", str(ROOT), "show", f"{commit}:src/transferability/data/loader.py"],
                         capture_output=True, text=True)
    if src.returncode != 0:
        return None
    module = types.ModuleType(f"transferability._data_{commit}")
    module.__package__ = "transferability"
    sys.modules[module.__name__] = module  # dataclasses look their module up
    exec(compile(src.stdout, f"{commit}:src/transferability/data/loader.py", "exec"), module.__dict__)
    return module


def epoch(n: int, seed: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))


def picks(order: torch.Tensor, size: int) -> list[np.ndarray]:
    """Each batch's store rows in file order (the order the loader reads them in)."""
    return [np.sort(order[a : a + size].numpy()) for a in range(0, len(order), size)]


def split(work: Callable[[int], None], threads: int) -> None:
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(work, range(threads)))


def copy_anchor(images: np.ndarray, batches_rows: list[np.ndarray], size: int, threads: int) -> None:
    """Each image of each batch copied once into one preallocated buffer (per thread)."""
    src = np.asarray(images)
    bufs = [np.empty((size, *images.shape[1:]), np.uint8) for _ in range(threads)]

    def work(k: int) -> None:
        buf = bufs[k]
        for rows in batches_rows[k::threads]:
            for j, r in enumerate(rows):
                buf[j] = src[r]

    split(work, threads)


def read_anchor(path: Path, images: np.ndarray, batches_rows: list[np.ndarray], size: int, threads: int) -> None:
    """Each image's bytes read once (``os.preadv``) into one preallocated buffer (per thread)."""
    offset, nbytes = images.offset, images[0].nbytes
    bufs = [np.empty((size, *images.shape[1:]), np.uint8) for _ in range(threads)]
    fd = os.open(path, os.O_RDONLY)

    def work(k: int) -> None:
        buf = bufs[k]
        for rows in batches_rows[k::threads]:
            for j, r in enumerate(rows):
                if os.preadv(fd, [buf[j]], offset + int(r) * nbytes) != nbytes:
                    raise OSError(f"{path}: short read at image {r}")

    try:
        split(work, threads)
    finally:
        os.close(fd)


def consume(epoch_batches: Iterator[torch.Tensor], data: HalfData, crop: int | None, mirror: bool, gpu: bool) -> int:
    """Draw each batch's crops and flips as training does; on a GPU make the whole batch there."""
    gen, n = torch.Generator().manual_seed(1), 0
    for x in epoch_batches:
        if gpu:
            make_batch(x, data, crop, mirror, gen)
        else:
            augmentation(len(x), x.shape[-1], crop, mirror, gen)
        n += len(x)
    if gpu:
        torch.cuda.synchronize()
    return n


def images_per_s(fn: Callable[[], Any], n: int) -> tuple[float, float]:
    """Images per second of wall time, and per second of this process's CPU time (user + system, every
    thread): the second is what a pass costs, whatever else the machine runs meanwhile."""
    gc.collect()
    t, cpu = time.perf_counter(), time.process_time()
    fn()
    return n / (time.perf_counter() - t), n / max(time.process_time() - cpu, 1e-9)


def batch_copies(make: Callable[[], Any], batch_bytes: int) -> float:
    """Peak bytes numpy allocates while ``make`` runs, in batches (tracemalloc traces numpy's arrays)."""
    gc.collect()
    tracemalloc.start()
    try:
        make()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return peak / batch_bytes


Runs = dict[str, dict[str, dict[str, list[float]]]]  # mode -> threads -> loader -> a figure per round


def record(runs: Runs, cpu: Runs, mode: str, k: int, name: str, rates: tuple[float, float]) -> None:
    runs[mode][str(k)][name].append(rates[0])
    cpu[mode][str(k)][name].append(rates[1])


Passes = dict[int, dict[str, Callable[[np.ndarray], Any]]]  # threads -> loader -> one epoch over a memory map


def hot_round(path: Path, n: int, runs: Runs, cpu: Runs, passes: Passes) -> None:
    """HOT: the page cache warm, one memory map for every pass, every page already mapped (a job holds its
    store open: after its first epoch no page faults)."""
    warm(path)
    images = np.load(path, mmap_mode="r")
    images.reshape(-1)[:: mmap.PAGESIZE].max()  # map every page before any pass is timed
    for k, by_name in passes.items():
        for name, run in by_name.items():
            record(runs, cpu, "hot", k, name, images_per_s(partial(run, images), n))


def cold_round(path: Path, n: int, runs: Runs, cpu: Runs, passes: Passes) -> list[int | None]:
    """COLD: the file evicted before each pass, and a fresh memory map for it (a page that a live map holds
    stays in the cache); returns the bytes still cached after each eviction."""
    left = []
    for k, by_name in passes.items():
        for name, run in by_name.items():
            gc.collect()
            evict(path)
            left.append(resident(path))
            record(runs, cpu, "cold", k, name, images_per_s(partial(run, np.load(path, mmap_mode="r")), n))
    return left


def copies_made(path: Path, rows: np.ndarray, order: torch.Tensor, size: int, threads: int,
                old: types.ModuleType | None) -> tuple[float, float | None]:
    """Batch-sized arrays numpy makes per batch: over 4 batches of the new loader (its buffers are
    torch's, made before), and for one batch of the old one."""
    images = np.load(path, mmap_mode="r")
    batch_bytes = size * images[0].nbytes
    loader = Loader(Streamed(images, rows), order[: 4 * size], size, threads)
    new = batch_copies(lambda: [None for _ in loader], batch_bytes)
    return new, batch_copies(lambda: old.Streamed(images, rows)[order[:size]], batch_bytes) if old else None


def python_seconds(order: torch.Tensor, size: int, repeat: int = 3) -> float:
    """Seconds per image the loader's Python holds the GIL for: ``gather``'s loop over the same batches of a
    store of 1-byte images (everything but the copy, which numpy does without the GIL). Its share of an
    image's time bounds what threads can give (Amdahl)."""
    tiny, out = np.zeros((len(order), 1), np.uint8), np.empty((size, 1), np.uint8)
    by_batch = [order[a : a + size].numpy() for a in range(0, len(order), size)]

    def loop() -> None:
        for rows in by_batch:
            gather(tiny, rows, out[: len(rows)])

    return min(images_per_s(loop, 1)[0] ** -1 for _ in range(repeat)) / len(order)


def memcpy_gb_s(threads: int, nbytes: int = 2**28, repeat: int = 3) -> float:
    """The machine's copy rate (GB/s copied, best of ``repeat``): ``threads`` threads each copying its own
    ``nbytes`` array into another, numpy without the GIL: what any loader's copies share."""
    src = [np.ones(nbytes, np.uint8) for _ in range(threads)]
    dst = [np.empty_like(a) for a in src]

    def work(k: int) -> None:
        np.copyto(dst[k], src[k])

    return max(images_per_s(partial(split, work, threads), threads * nbytes)[0] for _ in range(repeat)) / 1e9


def main() -> None:
    p = parser(__doc__)
    p.set_defaults(params=str(ROOT / "workflow" / "params" / "imagenet.yaml"))
    p.add_argument("--images", type=int, default=None, help="images in the store (default 20000; --quick 400)")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="loader threads to measure")
    p.add_argument("--repeat", type=int, default=None, help="rounds of every measurement (default 3; --quick 1)")
    p.add_argument("--work", default=None, help="folder of the store (default data/benchmarks/loader; --quick: a "
                                                "temporary one)")
    p.add_argument("--device", default="auto", help="cpu | cuda | auto (a GPU if there is one)")
    p.add_argument("--before", default=BEFORE, help="commit whose loader is measured beside today's")
    args = p.parse_args()
    params = tparams.load(args.params)
    tr, ds = params["train"], params["dataset"]
    size, crop, mirror, side = tr["batch_size"], tr.get("crop"), tr.get("mirror", False), ds["image_size"]
    n = args.images or (400 if args.quick else 20000)
    repeat = args.repeat or (1 if args.quick else 3)
    if args.quick:
        size, side, crop = min(size, 32), 64, 57 if crop else None
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    gpu = device.type == "cuda"
    torch.set_num_threads(1)  # the measured threads are the loader's

    tmp = tempfile.TemporaryDirectory() if args.quick and not args.work else None
    folder = Path(tmp.name if tmp else args.work or ROOT / "data" / "benchmarks" / "loader")
    path = folder / f"images_{n}x{ds['channels']}x{side}x{side}.npy"
    t = time.perf_counter()
    images = make_store(path, n, ds["channels"], side)
    made_s = time.perf_counter() - t
    old = old_data(args.before)
    mean = torch.full((1, ds["channels"], 1, 1), 117.0, device=device)
    data = HalfData(None, None, None, None, mean, torch.ones_like(mean), [])  # make_batch reads mean and std
    rows = np.arange(n)

    def new(threads: int) -> Callable[..., int]:
        def run(im: np.ndarray, order: torch.Tensor) -> int:
            return consume(batches(Streamed(im, rows, device), order, size, threads), data, crop, mirror, gpu)
        return run

    def before(im: np.ndarray, order: torch.Tensor) -> int:
        return consume(old.batches(old.Streamed(im, rows, device), order, size), data, crop, mirror, gpu)

    runs, cpu = ({mode: {str(k): {"anchor": [], "new": [], "old": []} for k in args.threads}
                  for mode in ("hot", "cold")} for _ in range(2))
    evicted, loads = [], []
    for r in range(repeat):
        loads.append(os.getloadavg()[0])
        order = epoch(n, r)
        by_file = picks(order, size)
        for mode, anchor in (("hot", copy_anchor), ("cold", partial(read_anchor, path))):
            passes = {k: {"anchor": partial(anchor, batches_rows=by_file, size=size, threads=k),
                          "new": partial(new(k), order=order)} for k in args.threads}
            if old and 1 in passes:
                passes[1]["old"] = partial(before, order=order)
            if mode == "hot":
                hot_round(path, n, runs, cpu, passes)
            else:
                evicted += cold_round(path, n, runs, cpu, passes)
        loads.append(os.getloadavg()[0])

    best = {mode: {k: {name: max(v) if v else None for name, v in cell.items()} for k, cell in by.items()}
            for mode, by in runs.items()}

    def ratio(a: float | None, b: float | None) -> float | None:
        return a / b if a and b else None

    def per_run(mode: str, k: str, a: str, b: str) -> list[float]:
        cell = runs[mode][k]
        return [x / y for x, y in zip(cell[a], cell[b], strict=False)]

    ratios = {mode: {k: {"new/anchor": ratio(c["new"], c["anchor"]), "old/anchor": ratio(c["old"], c["anchor"]),
                         "new/old": ratio(c["new"], best[mode]["1"]["old"]) if "1" in best[mode] else None,
                         "new/anchor, each run": per_run(mode, k, "new", "anchor"),
                         "new/anchor per CPU second": ratio(max(cpu[mode][k]["new"]), max(cpu[mode][k]["anchor"]))}
                     for k, c in by.items()} for mode, by in best.items()}
    scaling = {}
    if "1" in best["hot"] and "2" in best["hot"]:
        scaling = {mode: {name: ratio(best[mode]["2"][name], best[mode]["1"][name]) for name in ("new", "anchor")}
                   for mode in ("hot", "cold")}
    memcpy = {str(k): round(memcpy_gb_s(k), 2) for k in args.threads}
    gil_s = python_seconds(epoch(n, 0), size)
    gil = {"python_us_per_image": round(gil_s * 1e6, 3)}
    if "1" in best["hot"]:
        share = gil_s * best["hot"]["1"]["new"]  # of an image's time in the loader at 1 thread
        gil.update(share_of_an_image=round(share, 4), two_threads_bound=round(1 / (share + (1 - share) / 2), 3))
    if scaling:
        scaling["per CPU second"] = {mode: {name: ratio(max(cpu[mode]["2"][name]), max(cpu[mode]["1"][name]))
                                            for name in ("new", "anchor")} for mode in ("hot", "cold")}
    hot_min = min((v["new/anchor"] or 0) for v in ratios["hot"].values())
    cold_min = min((v["new/anchor"] or 0) for v in ratios["cold"].values())

    new_peak, old_peak = copies_made(path, rows, epoch(n, 0), size, max(args.threads), old)
    copies = {"new": 1, "new_numpy_batches_made": round(new_peak, 3),
              "old": (round(old_peak) + (1 if gpu else 0)) if old else None,
              "old_numpy_batches_made": round(old_peak, 3) if old else None,
              "note": "new: the store's bytes go straight into the reused (pinned on a GPU) buffer; old: a gathered "
                      "temporary, the batch it is scattered into, and on a GPU pin_memory()'s copy"}

    figures = {"store": {"images": n, "shape": list(images.shape[1:]), "bytes": int(images.nbytes), "file": str(path),
                         "made_s": round(made_s, 1)},
               "batch_size": size, "crop": crop, "mirror": mirror, "device": str(device), "pinned": gpu,
               "pinned_note": None if gpu else "no GPU: batches stay in (pageable) host memory; a CPU-only torch "
                                               "has no pinned memory",
               "before": args.before if old else None, "repeat": repeat, "threads": args.threads,
               "images_per_s": runs, "images_per_cpu_s": cpu, "best": best, "ratios": ratios, "scaling_2_vs_1": scaling,
               "targets": {"hot new/anchor >= 0.7": hot_min >= 0.7, "cold new/anchor >= 0.8": cold_min >= 0.8,
                           "2 threads >= 1.8 x one (hot)": bool(scaling) and (scaling["hot"]["new"] or 0) >= 1.8,
                           "2 threads >= 1.8 x one (cold)": bool(scaling) and (scaling["cold"]["new"] or 0) >= 1.8,
                           "one copy per batch": copies["new"] == 1 and new_peak < 0.25},
               "gil": gil, "memcpy_gb_s": memcpy, "copies_per_batch": copies, "resident_bytes_after_evict": evicted,
               "load_average_1min": loads}
    rows_out = []
    for mode, by in best.items():
        for k, c in by.items():
            rows_out.append([mode, k, c["anchor"], c["new"], c["old"] or "", ratios[mode][k]["new/anchor"],
                             ratios[mode][k]["new/old"] or "", ratios[mode][k]["new/anchor per CPU second"]])
    table(["mode", "threads", "anchor img/s", "new img/s", "old img/s", "new/anchor", "new/old", "per CPU s"], rows_out)
    print(f"scaling 2 vs 1 thread: {scaling}")
    print(f"GIL held {gil}; memcpy GB/s by threads {memcpy}")
    print(f"copies per batch: new {copies['new']} (numpy batches made {new_peak:.3f}), old {copies['old']} "
          f"(numpy batches made {old_peak})")
    save("loader", figures, None, args)
    if tmp:
        del images
        tmp.cleanup()


if __name__ == "__main__":
    main()
