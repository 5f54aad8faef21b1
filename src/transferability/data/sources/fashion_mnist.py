"""Fashion-MNIST (Debian's dataset-fashion-mnist): four idx files, small enough to read into memory."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

from transferability.data.fingerprint import tree_fingerprint
from transferability.data.sources import Source, register
from transferability.data.store import Arrays
from transferability.errors import UserError

FASHION_MNIST_SIDE = 28
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
FASHION_MNIST_FILES = {
    ("train", "images"): "train-images-idx3-ubyte.gz",
    ("train", "labels"): "train-labels-idx1-ubyte.gz",
    ("test", "images"): "t10k-images-idx3-ubyte.gz",
    ("test", "labels"): "t10k-labels-idx1-ubyte.gz",
}


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


register(Source("fashion_mnist", lambda ds, work, workers: fashion_mnist(ds["root"]), tree_fingerprint,
                lambda ds: FASHION_MNIST_SIDE, lambda ds: 1, lambda ds: {"classes": 10, "train": 6000, "test": 1000}))
