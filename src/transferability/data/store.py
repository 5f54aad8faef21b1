"""The prepared dataset store: uint8 images and int labels as .npy files plus a manifest.

Training slices these arrays directly (memory-mapped, nanoGPT-style), so no image is decoded
twice. The manifest records counts, shapes, checksums and the training set's channel statistics;
a store whose files no longer match it is refused. Images come either as arrays in memory
(Fashion-MNIST) or as an ``ImagesFile`` the image decoder has already written in full (ImageNet:
250 GB, never held in memory), which the store takes over by a hard link instead of a copy.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from transferability.errors import UserError
from transferability.files.atomic import atomic_dir, write_json

PARTS = ("train", "test")
NPY_HEADER = 128  # bytes: numpy's own v1.0 header for any 1- to 4-d array of up to 10**15 rows
# What a source reads: (images, labels, classes, source) by part, as write_store takes them
Arrays = tuple[dict[str, Any], dict[str, np.ndarray], list[dict[str, Any]], dict[str, Any]]


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def npy_header(shape: tuple[int, ...], dtype: Any = np.uint8) -> bytes:
    """numpy's .npy v1.0 header for a C-order array, padded to NPY_HEADER bytes.

    A fixed length lets a writer put the rows first and settle the row count later."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": shape})
    text = buf.getvalue()[10:].rstrip(b" \n")
    if len(text) > NPY_HEADER - 11:
        raise ValueError(f"shape {shape} does not fit a {NPY_HEADER}-byte .npy header")
    return b"\x93NUMPY\x01\x00" + (NPY_HEADER - 10).to_bytes(2, "little") + text.ljust(NPY_HEADER - 11) + b"\n"


@dataclass(frozen=True)
class ImagesFile:
    """A complete (N, C, H, W) uint8 .npy written by the image decoder, with what the store records."""

    path: Path
    shape: tuple[int, ...]
    sha256: str
    hist: np.ndarray  # (C, 256): how many pixels of each channel have each value
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason): unreadable, left out

    def __len__(self) -> int:
        return self.shape[0]


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


def channel_hist(images: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """(C, 256) counts of each uint8 value per channel, in chunks: exact, and ImageNet-sized safe."""
    hist = np.zeros((images.shape[1], 256), np.int64)
    for i in range(0, len(images), chunk):
        x = images[i : i + chunk]
        for c in range(len(hist)):
            hist[c] += np.bincount(x[:, c].ravel(), minlength=256)
    return hist


def hist_stats(hist: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std from value counts: integer sums, so equal in any shard order."""
    values = np.arange(256, dtype=np.int64)
    count = hist.sum(axis=1)
    mean = (hist @ values) / count
    std = np.sqrt(np.maximum((hist @ values**2) / count - mean**2, 1e-12))
    return mean.tolist(), std.tolist()


def _link_or_copy(src: Path, dst: Path) -> None:
    """Give ``dst`` the decoded file: a hard link (no copy of 250 GB), or a copy across file systems."""
    try:
        os.link(src, dst)
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
            raise
        shutil.copyfile(src, dst)


def write_store(
    dest: str | Path,
    images: Mapping[str, np.ndarray | ImagesFile],
    labels: dict[str, np.ndarray],
    classes: list[dict[str, Any]],
    source: dict[str, Any],
) -> dict[str, Any]:
    """Write a complete store atomically and return its manifest; unreadable images that the
    source left out are listed in ``skipped.txt`` inside it."""
    for part in PARTS:
        x, y = images[part], labels[part]
        if isinstance(x, np.ndarray) and (x.dtype != np.uint8 or x.ndim != 4):
            raise ValueError(f"{part} images must be uint8 (N, C, H, W), got {x.dtype} {x.shape}")
        if len(x) != len(y):
            raise ValueError(f"{part}: {len(x)} images but {len(y)} labels")
        if len(y) and (y.min() < 0 or y.max() >= len(classes)):
            raise UserError(f"{part} labels fall outside 0..{len(classes) - 1}: the source is inconsistent")
    train = images["train"]
    mean, std = hist_stats(train.hist if isinstance(train, ImagesFile) else channel_hist(train))
    manifest: dict[str, Any] = {
        "format": 1,
        "source": source,
        "num_classes": len(classes),
        "train_mean": mean,
        "train_std": std,
        "parts": {},
    }
    skipped = [(part, *s) for part in PARTS if isinstance(images[part], ImagesFile) for s in images[part].skipped]
    with atomic_dir(dest) as tmp:
        for part in PARTS:
            x = images[part]
            counts = np.bincount(labels[part], minlength=len(classes)).tolist()
            entry = {"count": int(len(labels[part])), "shape": list(x.shape[1:]), "per_class": counts,
                     "skipped": sum(s[0] == part for s in skipped), "files": {}}
            f = tmp / f"{part}_images.npy"
            if isinstance(x, ImagesFile):
                _link_or_copy(x.path, f)
                entry["files"]["images"] = {"file": f.name, "sha256": x.sha256}
            else:
                save_npy(f, x)
                entry["files"]["images"] = {"file": f.name, "sha256": sha256_file(f)}
            f = tmp / f"{part}_labels.npy"
            save_npy(f, labels[part].astype(np.int64))
            entry["files"]["labels"] = {"file": f.name, "sha256": sha256_file(f)}
            manifest["parts"][part] = entry
        if skipped:
            (tmp / "skipped.txt").write_text("".join(f"{p}\t{f}\t{r}\n" for p, f, r in skipped))
        (tmp / "classes.json").write_text(json.dumps(classes, indent=2) + "\n")
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def verified_stamp(path: Path) -> Path:
    """Beside the store (not in it: the store is a DVC output): files already verified, by stat."""
    return path.parent / f".{path.name}.verified.json"


def _stat_key(f: Path) -> list[int]:
    st = f.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def _write_stamp(path: Path, entries: dict[str, list]) -> None:
    with contextlib.suppress(OSError):  # only a cache: a read-only data folder hashes every time
        write_json(verified_stamp(path), entries)


def stamp_verified(path: str | Path, manifest: dict[str, Any]) -> None:
    """Record a store just written as verified: its writer hashed every file for the manifest, and
    without this each training job that opens the store first (four at once on four GPUs) would
    hash it all again, ~250 GB each for ImageNet, evicting the page cache the jobs then read."""
    path = Path(path)
    entries = {}
    for part in PARTS:
        for kind in ("images", "labels"):
            entry = manifest["parts"][part]["files"][kind]
            entries[entry["file"]] = [*_stat_key(path / entry["file"]), entry["sha256"]]
    _write_stamp(path, entries)


def load_store(path: str | Path, verify: bool = True) -> Store:
    """Open a store memory-mapped; with ``verify``, refuse it if a file's checksum changed.

    A file is hashed again only when its size, modification time or inode differ from the last
    successful verification (``verified_stamp``, first written by ``prepare``): an ImageNet store
    is ~250 GB, and every training job opens it. Bytes changed in place with the times restored would go unnoticed."""
    path = Path(path)
    manifest_file = path / "manifest.json"
    if not manifest_file.exists():
        raise UserError(f"no prepared store at {path}: run `transferability prepare` first")
    manifest = json.loads(manifest_file.read_text())
    classes = json.loads((path / "classes.json").read_text())
    images, labels = {}, {}
    stamp = verified_stamp(path)
    known = json.loads(stamp.read_text()) if verify and stamp.exists() else {}
    seen = {}
    for part in PARTS:
        files = manifest["parts"][part]["files"]
        for kind in ("images", "labels"):
            f = path / files[kind]["file"]
            if not f.exists():
                raise UserError(f"store {path} lacks {f.name}: prepare it again")
            if not verify:
                continue
            key = [*_stat_key(f), files[kind]["sha256"]]
            if known.get(f.name) != key and sha256_file(f) != files[kind]["sha256"]:
                raise UserError(
                    f"{f} does not match the checksum in {manifest_file}: the store is corrupt, "
                    "prepare it again"
                )
            seen[f.name] = key
        images[part] = np.load(path / files["images"]["file"], mmap_mode="r")
        labels[part] = np.load(path / files["labels"]["file"])
    if verify and seen != known:
        _write_stamp(path, seen)
    return Store(path, images, labels, classes, manifest)
