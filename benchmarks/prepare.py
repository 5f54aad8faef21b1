"""Prepare throughput: JPEGs to the training store, images/s per core, against plain Pillow.

A: the prepare stage (``imagefolder`` source: decode, convert, resize to the study's 256x256, the
resumable shards, the store's checksums and statistics) in one process. B: a bare loop of Pillow
open + convert + resize on the same files. Both decode every file fully; the fixture is JPEGs of
ImageNet-like sizes (300-500 px) that this script writes into a temporary folder.
"""

from __future__ import annotations

import copy
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from common import load_params, parser, save, table
from PIL import Image

from transferability import stages


def write_fixture(root: Path, per_class: int, classes: int = 4, seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    files = []
    for part in ("train", "val"):
        for c in range(classes):
            folder = root / part / f"n{c:08d}"
            folder.mkdir(parents=True)
            for i in range(per_class if part == "train" else max(1, per_class // 4)):
                h, w = rng.integers(300, 500, 2)
                yy, xx = np.mgrid[0:h, 0:w]
                img = np.stack([(xx * (c + 1) + yy) % 256, (yy * 2 + i) % 256, (xx + yy) % 256], -1)
                img = (img + rng.normal(0, 12, img.shape)).clip(0, 255).astype(np.uint8)
                f = folder / f"img_{i:05d}.JPEG"
                Image.fromarray(img).save(f, quality=90)
                files.append(f)
    return files


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--size", type=int, default=256, help="side of the stored images (the study: 256)")
    args = p.parse_args()
    params = copy.deepcopy(load_params(args.params, args.quick))
    per_class = 10 if args.quick else 250
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        files = write_fixture(tmp / "images", per_class)
        params["dataset"] = {"source": "imagefolder", "root": str(tmp / "images"), "name": "bench",
                             "image_size": args.size, "channels": 3}

        def plain() -> float:
            t = time.perf_counter()
            for f in files:
                with Image.open(f) as im:
                    np.asarray(im.convert("RGB").resize((args.size, args.size), Image.BILINEAR))
            return time.perf_counter() - t

        def ours() -> float:
            work = tmp / f"work{time.perf_counter_ns()}"
            work.mkdir()
            cwd = os.getcwd()
            os.chdir(work)
            try:
                t = time.perf_counter()
                stages.prepare(params)
                return time.perf_counter() - t
            finally:
                os.chdir(cwd)

        plain()  # warm the page cache for both
        times = {"plain Pillow": [], "prepare stage": []}
        for _ in range(1 if args.quick else 2):
            times["plain Pillow"].append(plain())
            times["prepare stage"].append(ours())
    rates = {k: len(files) / min(v) for k, v in times.items()}
    figures = {"images": len(files), "size": args.size, "images_per_s_per_core": rates,
               "ratio": rates["prepare stage"] / rates["plain Pillow"], "times_s": times}
    table(["decode + resize to the store", "images/s (1 core)"], [[k, v] for k, v in rates.items()])
    print(f"prepare / plain Pillow: {figures['ratio']:.3f}")
    save("prepare", figures, params, args)


if __name__ == "__main__":
    main()
