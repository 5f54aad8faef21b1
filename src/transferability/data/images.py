"""Image files decoded into the store: resized as the study did, by a pool of processes, in resumable
shards (shards.py), straight into the images file the store will hold; each unreadable file reported
by its path. Image-folder and CSV sources list their files; this module decodes them.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import struct
import sys
from pathlib import Path
from typing import Any

import numpy as np
import PIL
from PIL import Image

from transferability import progress
from transferability.data.fingerprint import stamp
from transferability.data.shards import Imap, fill_npy, key_folder, worker_pool
from transferability.data.store import ImagesFile
from transferability.errors import UserError
from transferability.files.atomic import write_json

IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}

# What Pillow raises on a file it cannot read: a broken header, truncated data, an absurd size.
UNREADABLE = (OSError, SyntaxError, ValueError, EOFError, struct.error, Image.DecompressionBombError)
BAD_IMAGE_FIX = "remove or replace the file, or set dataset.on_bad_image: skip to leave such files out"


def decode_image(path: str | Path, size: int, mode: str) -> Image.Image:
    """One file as a ``size`` x ``size`` image in ``mode`` (RGB or L), aspect ratio ignored (the study's
    256x256), bilinear. Any file Pillow reads works: CMYK JPEGs (Adobe-inverted too), grayscale,
    palette, a PNG named .JPEG. A JPEG at least twice the size is decoded at 1/2, 1/4 or 1/8 scale
    inside libjpeg (Pillow's draft: a fraction of the work, still at least ``size`` on each side)."""
    with Image.open(path) as im:
        im.draft(mode, (size, size))
        if im.mode != mode:
            im = im.convert(mode)
        return im.resize((size, size), Image.Resampling.BILINEAR)


def planes(im: Image.Image) -> bytes:
    """The image's bytes channel by channel (C, H, W), as the store holds them."""
    return b"".join(im.tobytes("raw", band) for band in im.getbands()) if len(im.getbands()) > 1 else im.tobytes()


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".replace("\n", " ")


def check_header(path: str) -> str | None:
    """Why Pillow cannot even open ``path`` (empty, not an image, absurd size), or None: the cheap check."""
    try:
        with Image.open(path):
            return None
    except UNREADABLE as exc:
        return _reason(exc)


def _check_files(task: tuple[int, list[str]]) -> list[tuple[int, str]]:
    start, files = task
    return [(start + i, r) for i, f in enumerate(files) if (r := check_header(f)) is not None]


def _decode_shard(task: tuple[str, int, list[str]], size: int, mode: str) -> tuple[np.ndarray, list[tuple[int, str]]]:
    """Decode a shard's files into the rows of ``path`` from byte ``offset`` (fill_npy's worker).

    Returns the pixel-value counts per channel (the store's statistics, exact) and the files it
    could not read (index in the shard, reason)."""
    path, offset, files = task
    row = len(mode) * size * size
    hist = np.zeros(256 * len(mode), np.int64)
    failed = []
    fd = os.open(path, os.O_WRONLY)
    try:
        for i, f in enumerate(files):
            try:
                im = decode_image(f, size, mode)
            except UNREADABLE as exc:
                failed.append((i, _reason(exc)))
                continue
            hist += im.histogram()
            os.pwrite(fd, planes(im), offset + i * row)
    finally:
        os.close(fd)
    return hist, failed


def _listing_key(part: str, files: list[str], size: int, channels: int, shard: int) -> str:
    """A digest of what the decoded rows depend on: the files (path, size, mtime), the size, the
    shard layout and the decoding code (this file, Pillow's version)."""
    h = hashlib.sha256(json.dumps([part, size, channels, shard, PIL.__version__,
                                   hashlib.sha256(Path(__file__).read_bytes()).hexdigest()]).encode())
    for f in files:
        h.update(stamp(f, f))
    return h.hexdigest()[:16]


def _check_all(folder: Path, files: list[str], imap: Imap, desc: str, chunk: int = 256) -> list[tuple[int, str]]:
    """Open every file's header before any decoding (cached in ``folder``): the empty, the
    non-images and the absurd are known in seconds, not hours into the run."""
    cached = folder / "unreadable.json"
    if cached.exists():
        return [(int(i), r) for i, r in json.loads(cached.read_text())]
    bad = []
    with progress.bar(len(files), desc, "file") as bar:
        for found in imap(_check_files, [(s, files[s : s + chunk]) for s in range(0, len(files), chunk)]):
            bad += found
            bar.update(min(chunk, len(files) - bar.n))
    write_json(cached, bad)
    return bad


def refuse_empty_classes(part: str, files: list[str], labels: np.ndarray, ids: list[str],
                         unreadable: dict[int, str]) -> None:
    """Every class needs images in both parts: one without training images would still be a class
    of the network's output, and one without test images would be left out of every accuracy,
    both without a word. ``unreadable``: file index -> reason, the files left out."""
    kept = np.ones(len(files), dtype=bool)
    kept[list(unreadable)] = False
    counts = np.bincount(labels[kept], minlength=len(ids))
    for c in np.flatnonzero(counts == 0):
        lost = [i for i in unreadable if labels[i] == c]
        if lost:
            raise UserError(f"class {ids[c]} has no readable {part} image: all {len(lost)} of its files are "
                            f"unreadable (e.g. {files[lost[0]]}: {unreadable[lost[0]]}); replace them, or remove "
                            "the class from the dataset (its train and val images)")
        folder = "train" if part == "train" else "val"
        raise UserError(f"class {ids[c]} has no {part} images (nothing of it in {folder}/); add its images, or "
                        "remove the class from the dataset (its train and val images)")


def _decode_part(part: str, files: list[str], labels: np.ndarray, ids: list[str], size: int, channels: int,
                 work: Path, shard: int, skip: bool, imap: Imap) -> tuple[ImagesFile, np.ndarray]:
    folder = key_folder(work / part, _listing_key(part, files, size, channels, shard))
    bad = _check_all(folder, files, imap, f"check {part}")
    if bad and not skip:
        for i, reason in bad:
            print(f"unreadable: {files[i]} ({reason})", file=sys.stderr)
        more = f" (and {len(bad) - 1} more, listed above)" if len(bad) > 1 else ""
        raise UserError(f"cannot read {files[bad[0][0]]} ({bad[0][1]}){more}; {BAD_IMAGE_FIX}")
    refuse_empty_classes(part, files, labels, ids, dict(bad))  # before hours of decoding
    drop = {i for i, _ in bad}
    keep = [i for i in range(len(files)) if i not in drop]
    mode = "L" if channels == 1 else "RGB"
    filled = fill_npy(folder, [files[i] for i in keep], (channels, size, size), shard,
                      functools.partial(_decode_shard, size=size, mode=mode), imap, skip, BAD_IMAGE_FIX,
                      f"prepare {part}")
    failed = {keep[i]: r for i, r in filled.failed}
    skipped = sorted([(i, r) for i, r in bad] + list(failed.items()))
    for i, reason in skipped:
        print(f"skipped unreadable image {files[i]} ({reason})", file=sys.stderr)
    refuse_empty_classes(part, files, labels, ids, dict(skipped))
    kept = np.array([i for i in keep if i not in failed], dtype=np.int64)
    images = ImagesFile(filled.path, filled.shape, filled.sha256, filled.stats.reshape(channels, 256),
                        [(files[i], r) for i, r in skipped])
    return images, labels[kept]


def decode_listing(ids: list[str], parts: dict[str, tuple[list[str], np.ndarray]], size: int, channels: int,
                   work: Path, shard: int = 1024, workers: int = 1, on_bad_image: str = "fail"
                   ) -> tuple[dict[str, ImagesFile], dict[str, np.ndarray], list[dict[str, Any]]]:
    """Listed files (per part: files in store order, their labels into ``ids``) decoded to ``size`` x ``size``
    into ``work``, resumable: a killed run restarts where it stopped. Images come back as ``ImagesFile``s for
    ``write_store`` to take over; with them the labels of the images kept, and the classes."""
    images, labels = {}, {}
    for part, (files, part_labels) in parts.items():
        refuse_empty_classes(part, files, part_labels, ids, {})  # a class val/ lacks: before any decoding
    with worker_pool(workers) as imap:
        for part, (files, part_labels) in parts.items():
            images[part], labels[part] = _decode_part(part, files, part_labels, ids, size, channels, work, shard,
                                                      on_bad_image == "skip", imap)
    return images, labels, [{"index": i, "id": c, "name": c} for i, c in enumerate(ids)]
