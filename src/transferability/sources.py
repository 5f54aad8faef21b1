"""Dataset sources: each turns files a user already has into arrays for the store."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import UserError
from .params import digest
from .shards import sharded_rows

FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
FASHION_MNIST_FILES = {
    ("train", "images"): "train-images-idx3-ubyte.gz",
    ("train", "labels"): "train-labels-idx1-ubyte.gz",
    ("test", "images"): "t10k-images-idx3-ubyte.gz",
    ("test", "labels"): "t10k-labels-idx1-ubyte.gz",
}
IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}

Arrays = tuple[dict[str, np.ndarray], dict[str, np.ndarray], list[dict[str, Any]], dict[str, Any]]


def read_idx(path: Path) -> np.ndarray:
    """Read a (gzipped) IDX file of unsigned bytes, the MNIST family's format."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08:
        raise UserError(f"{path} is not an IDX file of unsigned bytes; reinstall the dataset")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise UserError(f"{path} is truncated ({body.size} of {int(np.prod(shape))} bytes)")
    return body.reshape(shape)


def fashion_mnist(root: str | Path) -> Arrays:
    root = Path(root)
    missing = [n for n in FASHION_MNIST_FILES.values() if not (root / n).exists()]
    if missing:
        raise UserError(
            f"Fashion-MNIST not found in {root} (missing {missing[0]}): install it with "
            "`sudo apt-get install dataset-fashion-mnist`, or set dataset.root"
        )
    images, labels = {}, {}
    for part in ("train", "test"):
        images[part] = read_idx(root / FASHION_MNIST_FILES[(part, "images")])[:, None, :, :].copy()
        labels[part] = read_idx(root / FASHION_MNIST_FILES[(part, "labels")]).astype(np.int64)
    classes = [{"index": i, "id": str(i), "name": n} for i, n in enumerate(FASHION_MNIST_CLASSES)]
    return images, labels, classes, {"source": "fashion_mnist", "root": str(root)}


def load_image(path: Path, size: int, channels: int) -> np.ndarray:
    """Decode any Pillow-readable file (CMYK, grayscale, palette too) into (C, size, size) uint8."""
    try:
        with Image.open(path) as im:
            im = im.convert("L" if channels == 1 else "RGB")
            im = im.resize((size, size), Image.BILINEAR)
            arr = np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise UserError(f"cannot read image {path} ({exc}); remove or replace the file") from exc
    return arr[None] if channels == 1 else arr.transpose(2, 0, 1)


def _class_folders(part_dir: Path) -> list[Path]:
    if not part_dir.is_dir():
        raise UserError(f"image folder {part_dir} not found: expected <root>/{part_dir.name}/<class>/<image>")
    return sorted(p for p in part_dir.iterdir() if p.is_dir())


def imagefolder(root: str | Path, size: int, channels: int, work: Path, shard: int = 4096) -> Arrays:
    """Read ``root/train/<class>/*`` and ``root/val/<class>/*``; classes are the train folders, sorted.

    Images are decoded in shards of ``shard`` kept under ``work``: a killed prepare resumes there."""
    root = Path(root)
    folders = _class_folders(root / "train")
    if not folders:
        raise UserError(f"{root / 'train'} has no class folders")
    ids = [p.name for p in folders]
    index = {c: i for i, c in enumerate(ids)}
    images, labels = {}, {}
    for part, sub in (("train", "train"), ("test", "val")):
        files: list[tuple[Path, int]] = []
        for folder in _class_folders(root / sub):
            if folder.name not in index:
                raise UserError(f"{folder} is a class that {root / 'train'} does not have")
            found = sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise UserError(f"class folder {folder} holds no images; remove it or add images")
            files += [(f, index[folder.name]) for f in found]
        def decode(start: int, stop: int, files: list[tuple[Path, int]] = files) -> np.ndarray:
            x = np.empty((stop - start, channels, size, size), dtype=np.uint8)
            for i, (f, _) in enumerate(files[start:stop]):
                x[i] = load_image(f, size, channels)
            return x

        key = digest([part, size, channels, [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f, _ in files]])
        images[part] = sharded_rows(work / part, key, len(files), shard, decode, f"prepare {part}")
        labels[part] = np.array([y for _, y in files], dtype=np.int64)
    classes = [{"index": i, "id": c, "name": c} for i, c in enumerate(ids)]
    return images, labels, classes, {"source": "imagefolder", "root": str(root), "image_size": size}


def read_source(dataset: dict[str, Any], work: Path) -> Arrays:
    if dataset["source"] == "fashion_mnist":
        return fashion_mnist(dataset["root"])
    return imagefolder(dataset["root"], dataset["image_size"], dataset.get("channels", 3), work,
                       dataset.get("shard_images", 4096))
