"""Prepare throughput: JPEGs to the training store, images/s per core, against plain Pillow.

A: the prepare stage (``imagefolder``: header check, decode, convert, resize to the study's 256x256,
written shard by shard into the store's .npy with its checksum and channel statistics, the store
made) in one process, and with one worker process per core. B: a bare loop of Pillow open +
convert + resize on the same files, one process, writing nothing. Per core: images/s divided by
the processes decoding.

Two fixtures of JPEGs this script writes into a temporary folder: ``small`` (300-500 px, as every
earlier run of this benchmark) and ``imagenet`` (ILSVRC-2012's mix as we assume it: mostly 500 px
on the long side, 1 in 8 of 800-1600 px), where Pillow's draft decoding of the large ones at
reduced scale pays. Also measured: how far the draft decode moves real photos (PSNR against a full
decode, and against the study's own resize), and why the store holds raw uint8 rather than
re-encoded JPEGs (read rate against decode rate).
"""

from __future__ import annotations

import copy
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from common import best_time, load_params, parser, save, table
from PIL import Image

from transferability import stages
from transferability.data.images import check_header, decode_image
from transferability.data.store import load_store


def photo(rng: np.random.Generator, h: int, w: int, c: int, i: int) -> np.ndarray:
    """A photo-like picture: smooth gradients, coarse texture and fine noise (JPEG entropy as in photos)."""
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([(xx * (c + 1) + yy) % 256, (yy * 2 + i) % 256, (xx + yy) % 256], -1).astype(np.float32)
    coarse = rng.normal(0, 20, (h // 16 + 1, w // 16 + 1, 3)).repeat(16, 0).repeat(16, 1)[:h, :w]
    return (img + coarse + rng.normal(0, 8, img.shape)).clip(0, 255).astype(np.uint8)


def write_fixture(root: Path, per_class: int, kind: str = "small", classes: int = 4, seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    files = []
    for part in ("train", "val"):
        for c in range(classes):
            folder = root / part / f"n{c:08d}"
            folder.mkdir(parents=True)
            for i in range(per_class if part == "train" else max(1, per_class // 4)):
                if kind == "small":
                    h, w = rng.integers(300, 500, 2)
                elif i % 8 == 7:
                    h, w = rng.integers(800, 1600, 2)
                else:
                    h, w = [(375, 500), (500, 375), (333, 500), (500, 500)][int(rng.integers(4))]
                f = folder / f"img_{i:05d}.JPEG"
                Image.fromarray(photo(rng, h, w, c, i)).save(f, quality=90)
                files.append(f)
    return files


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255**2 / mse))


def prepare_in(folder: Path, params: dict, workers: int) -> tuple[Path, float]:
    """The prepare stage run in ``folder`` (as a project root) with ``workers``: the store, seconds."""
    folder.mkdir()
    run = copy.deepcopy(params)
    run["compute"]["threads"] = workers
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        t = time.perf_counter()
        store = stages.prepare(run)
        return folder / store, time.perf_counter() - t
    finally:
        os.chdir(cwd)


def measure(tmp: Path, params: dict, files: list[Path], size: int, repeat: int) -> dict:
    def plain() -> float:
        t = time.perf_counter()
        for f in files:
            with Image.open(f) as im:
                np.asarray(im.convert("RGB").resize((size, size), Image.BILINEAR))
        return time.perf_counter() - t

    def ours(workers: int) -> float:
        return prepare_in(tmp / f"work{time.perf_counter_ns()}", params, workers)[1]

    cores = os.cpu_count() or 1
    plain()  # warm the page cache for both
    runs = {"plain Pillow": (plain, 1), "prepare stage": (lambda: ours(1), 1)}
    if cores > 1:
        runs[f"prepare stage, {cores} workers"] = (lambda: ours(cores), cores)
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(repeat):
        for name, (fn, _) in runs.items():
            times[name].append(fn())
    rates = {k: len(files) / min(times[k]) / runs[k][1] for k in runs}
    header = best_time(lambda: [check_header(str(f)) for f in files], repeat)
    return {"images": len(files), "images_per_s_per_core": rates,
            "ratio": rates["prepare stage"] / rates["plain Pillow"], "times_s": times,
            # the header check before decoding, as a share of the stage's time per image (one process)
            "header_check_share": header / len(files) * rates["prepare stage"]}


def sample_photos() -> list[Path]:
    """Real photographs that ship with the project's dependencies (scikit-learn, matplotlib)."""
    import matplotlib
    import sklearn

    images = Path(sklearn.__file__).parent / "datasets" / "images"
    return [images / "china.jpg", images / "flower.jpg",
            Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"]


def study_resize(a: np.ndarray, size: int) -> np.ndarray:
    """The study's resize as numpy: Caffe's convert_imageset used OpenCV's INTER_LINEAR (two taps per
    axis at half-pixel centres, no antialiasing); OpenCV's fixed-point rounding aside."""
    def taps(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x = np.clip((np.arange(size) + 0.5) * n / size - 0.5, 0, n - 1)
        x0 = np.floor(x).astype(int)
        return x0, np.minimum(x0 + 1, n - 1), (x - x0)[:, None]
    y0, y1, fy = taps(a.shape[0])
    x0, x1, fx = taps(a.shape[1])
    a = a.astype(np.float64)
    rows = a[y0] * (1 - fy[..., None]) + a[y1] * fy[..., None]
    return np.rint(rows[:, x0] * (1 - fx) + rows[:, x1] * fx).clip(0, 255)


def draft_quality() -> dict:
    """How far draft decoding moves the picture, on real photographs at each scale it uses (1/2, 1/4,
    1/8): PSNR against a full decode + our bilinear resize, and against the study's own resize, beside
    the full decode's distance to the study's resize."""
    out = {}
    for f in sample_photos():
        with Image.open(f) as im:
            rgb = im.convert("RGB")
        for s in (2, 4, 8):
            size = min(rgb.size) // s
            full = np.asarray(rgb.resize((size, size), Image.BILINEAR))
            draft = np.asarray(decode_image(f, size, "RGB"))
            study = study_resize(np.asarray(rgb), size)
            out[f"{f.name} 1/{s}"] = {"draft_vs_full": psnr(draft, full), "full_vs_study": psnr(full, study),
                                      "draft_vs_study": psnr(draft, study)}
    return out


def feed_rates(tmp: Path, store: Path, batch: int = 256) -> dict:
    """Images/s one core gets from the store (random batches, page cache) against decoding the same
    pictures re-encoded as 256x256 JPEGs (quality 90): why the store holds raw uint8."""
    x = load_store(store, verify=False).images["train"]
    rng = np.random.default_rng(0)
    idx = [np.sort(rng.choice(len(x), min(batch, len(x)), replace=False)) for _ in range(20)]
    np.asarray(x[idx[0]])
    t = time.perf_counter()
    for i in idx:
        np.ascontiguousarray(x[i])
    read = sum(map(len, idx)) / (time.perf_counter() - t)
    jpegs = []
    for k in range(min(len(x), 200)):
        f = tmp / f"re{k}.jpg"
        Image.fromarray(np.ascontiguousarray(x[k].transpose(1, 2, 0))).save(f, quality=90)
        jpegs.append(f)
    t = time.perf_counter()
    for f in jpegs:
        with Image.open(f) as im:
            np.asarray(im)
    decode = len(jpegs) / (time.perf_counter() - t)
    return {"store_read_images_per_s": read, "jpeg256_decode_images_per_s_per_core": decode,
            "store_bytes_per_image": int(np.prod(x.shape[1:])),
            "jpeg256_bytes_per_image": int(np.mean([f.stat().st_size for f in jpegs]))}


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--size", type=int, default=256, help="side of the stored images (the study: 256)")
    args = p.parse_args()
    params = copy.deepcopy(load_params(args.params, args.quick))
    per_class = 10 if args.quick else 250
    repeat = 1 if args.quick else 2
    figures: dict = {"size": args.size, "cores": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for kind in ("small", "imagenet"):
            root = tmp / kind
            files = write_fixture(root, per_class if kind == "small" else per_class // 2, kind)
            params["dataset"] = {"source": "imagefolder", "root": str(root), "name": "bench",
                                 "image_size": args.size, "channels": 3}
            result = measure(tmp, params, files, args.size, repeat)
            if kind == "small":
                figures.update(result)
            else:
                figures["imagenet"] = result
                figures["feed"] = feed_rates(tmp, prepare_in(tmp / "feed", params, 1)[0])
            print(f"\n{kind} fixture: {len(files)} JPEGs")
            table(["decode + resize to the store", "images/s per core"],
                  [[k, v] for k, v in result["images_per_s_per_core"].items()])
            print(f"prepare / plain Pillow: {result['ratio']:.3f}; header check: "
                  f"{result['header_check_share']:.1%} of the stage's time")
    figures["draft_psnr_db"] = draft_quality()
    print("\ndraft decoding on real photos, PSNR (dB)")
    table(["photo, scale", "draft vs full decode", "full vs study's resize", "draft vs study's resize"],
          [[k, *v.values()] for k, v in figures["draft_psnr_db"].items()])
    print(f"feeding: {figures['feed']}")
    save("prepare", figures, params, args)


if __name__ == "__main__":
    main()
