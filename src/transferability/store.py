"""The prepared dataset store: uint8 images and int labels as .npy files plus a manifest.

Training slices these arrays directly (memory-mapped, nanoGPT-style), so no image is decoded
twice. The manifest records counts, shapes, checksums and the training set's channel statistics;
a store whose files no longer match it is refused.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import atomic_dir
from .errors import UserError

PARTS = ("train", "test")


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass
class Store:
    """A loaded store: arrays per part and the class table (index order = label order)."""

    path: Path
    images: dict[str, np.ndarray]   # part -> (N, C, H, W) uint8
    labels: dict[str, np.ndarray]   # part -> (N,) int64
    classes: list[dict[str, Any]]   # [{"index": 0, "id": "...", "name": "..."}]
    manifest: dict[str, Any]

    @property
    def mean(self) -> list[float]:
        return self.manifest["train_mean"]

    @property
    def std(self) -> list[float]:
        return self.manifest["train_std"]


def save_npy(path: Path, arr: np.ndarray, rows: int = 1024) -> None:
    """np.save, streamed in chunks through Python's file API so a full disk raises ENOSPC (numpy's
    own writer reports it without an errno) and arrays larger than memory never get copied whole."""
    arr = np.ascontiguousarray(arr)
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, np.lib.format.header_data_from_array_1_0(arr))
        for i in range(0, len(arr), rows):
            f.write(arr[i : i + rows].data)


def _channel_stats(images: np.ndarray, chunk: int = 4096) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 images, in float64 and in chunks (ImageNet-sized safe)."""
    c = images.shape[1]
    total, sq, count = np.zeros(c), np.zeros(c), 0
    for i in range(0, len(images), chunk):
        x = images[i : i + chunk].astype(np.float64)
        total += x.sum(axis=(0, 2, 3))
        sq += (x**2).sum(axis=(0, 2, 3))
        count += x.shape[0] * x.shape[2] * x.shape[3]
    mean = total / count
    std = np.sqrt(np.maximum(sq / count - mean**2, 1e-12))
    return mean.tolist(), std.tolist()


def write_store(
    dest: str | Path,
    images: dict[str, np.ndarray],
    labels: dict[str, np.ndarray],
    classes: list[dict[str, Any]],
    source: dict[str, Any],
) -> dict[str, Any]:
    """Write a complete store atomically and return its manifest."""
    for part in PARTS:
        x, y = images[part], labels[part]
        if x.dtype != np.uint8 or x.ndim != 4:
            raise ValueError(f"{part} images must be uint8 (N, C, H, W), got {x.dtype} {x.shape}")
        if len(x) != len(y):
            raise ValueError(f"{part}: {len(x)} images but {len(y)} labels")
        if len(y) and (y.min() < 0 or y.max() >= len(classes)):
            raise UserError(f"{part} labels fall outside 0..{len(classes) - 1}: the source is inconsistent")
    mean, std = _channel_stats(images["train"])
    manifest: dict[str, Any] = {
        "format": 1,
        "source": source,
        "num_classes": len(classes),
        "train_mean": mean,
        "train_std": std,
        "parts": {},
    }
    with atomic_dir(dest) as tmp:
        for part in PARTS:
            counts = np.bincount(labels[part], minlength=len(classes)).tolist()
            entry = {"count": int(len(labels[part])), "shape": list(images[part].shape[1:]),
                     "per_class": counts, "files": {}}
            for kind, arr in (("images", images[part]), ("labels", labels[part].astype(np.int64))):
                f = tmp / f"{part}_{kind}.npy"
                save_npy(f, arr)
                entry["files"][kind] = {"file": f.name, "sha256": sha256_file(f)}
            manifest["parts"][part] = entry
        (tmp / "classes.json").write_text(json.dumps(classes, indent=2) + "\n")
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def load_store(path: str | Path, verify: bool = True) -> Store:
    """Open a store memory-mapped; with ``verify``, refuse it if a file's checksum changed."""
    path = Path(path)
    manifest_file = path / "manifest.json"
    if not manifest_file.exists():
        raise UserError(f"no prepared store at {path}: run `transferability prepare` first")
    manifest = json.loads(manifest_file.read_text())
    classes = json.loads((path / "classes.json").read_text())
    images, labels = {}, {}
    for part in PARTS:
        files = manifest["parts"][part]["files"]
        for kind in ("images", "labels"):
            f = path / files[kind]["file"]
            if not f.exists():
                raise UserError(f"store {path} lacks {f.name}: prepare it again")
            if verify and sha256_file(f) != files[kind]["sha256"]:
                raise UserError(
                    f"{f} does not match the checksum in {manifest_file}: the store is corrupt, "
                    "prepare it again"
                )
        images[part] = np.load(path / files["images"]["file"], mmap_mode="r")
        labels[part] = np.load(path / files["labels"]["file"])
    return Store(path, images, labels, classes, manifest)
