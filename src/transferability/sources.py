"""Dataset sources: each turns files a user already has into the arrays or files of the store.

Fashion-MNIST is small and read into memory. An image folder (ImageNet's ILSVRC-2012 layouts) is
decoded once, resized as the study did, straight into the images file the store will hold: by a
pool of processes, in resumable shards (shards.py), each unreadable file reported by its path. A
csv source lists its images and labels in <root>/train.csv and <root>/val.csv, decoded the same way.

``SOURCES`` is the registry the pipeline reads (prepare, params checks, Snakemake's fingerprint, memory
requests): one ``Source`` per name the schema's dataset.source allows. A new source is its reader and
one entry there, plus its name in the schema's enum (test_registry checks that the two agree).
"""

from __future__ import annotations

import csv
import functools
import gzip
import hashlib
import json
import os
import struct
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import PIL
from PIL import Image

from . import progress
from .atomic import write_json
from .errors import UserError
from .shards import Imap, fill_npy, key_folder, worker_pool
from .store import ImagesFile

FASHION_MNIST_SIDE = 28
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
FASHION_MNIST_FILES = {
    ("train", "images"): "train-images-idx3-ubyte.gz",
    ("train", "labels"): "train-labels-idx1-ubyte.gz",
    ("test", "images"): "t10k-images-idx3-ubyte.gz",
    ("test", "labels"): "t10k-labels-idx1-ubyte.gz",
}
IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
REFERENCE = Path(__file__).with_name("reference")
# What Pillow raises on a file it cannot read: a broken header, truncated data, an absurd size.
UNREADABLE = (OSError, SyntaxError, ValueError, EOFError, struct.error, Image.DecompressionBombError)
BAD_IMAGE_FIX = "remove or replace the file, or set dataset.on_bad_image: skip to leave such files out"

Arrays = tuple[dict[str, Any], dict[str, np.ndarray], list[dict[str, Any]], dict[str, Any]]


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


# --- decoding one image -----------------------------------------------------------------------

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


# --- the folder layouts -----------------------------------------------------------------------

def ilsvrc_synsets() -> list[str]:
    """The 1000 ILSVRC-2012 wnids in class-index order (sorted), as the study numbered them."""
    return (REFERENCE / "synsets.txt").read_text().split()


def _image_files(folder: Path) -> list[str]:
    return sorted(e.path for e in os.scandir(folder)
                  if e.is_file() and os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES)


def _class_folders(part_dir: Path) -> list[Path]:
    if not part_dir.is_dir():
        raise UserError(f"image folder {part_dir} not found: expected <root>/{part_dir.name}/<class>/<image>")
    return sorted(p for p in part_dir.iterdir() if p.is_dir())


def labels_file(name: str, root: Path, key: str = "dataset.val_labels") -> Path:
    """``name`` as given, else inside the dataset root, else the study's copy shipped with the package."""
    for path in (Path(name), root / name, REFERENCE / name, REFERENCE / f"{name}.gz"):
        if path.is_file():
            return path
    raise UserError(f"{key}: {name} not found (nor in {root} or {REFERENCE}); give its path")


def read_val_labels(path: Path, ids: list[str]) -> dict[str, int]:
    """File name -> class index from lines 'FILE LABEL' (the study's whole_valid_files.txt); -1: a
    class the training set lacks. LABEL is an ILSVRC-2012 class index (synsets.txt order) when the
    classes are wnids, else an index into the sorted classes; or the class folder name itself."""
    index = {c: i for i, c in enumerate(ids)}
    names = ilsvrc_synsets() if set(ids) <= set(ilsvrc_synsets()) else ids
    opener = gzip.open if path.suffix == ".gz" else open
    table = {}
    with opener(path, "rt") as f:
        for n, line in enumerate(f, 1):
            if not (fields := line.split()):
                continue
            if len(fields) != 2:
                raise UserError(f"{path}, line {n}: expected 'FILE LABEL', got {line.strip()!r}")
            file, label = fields
            if label.isdigit():
                if int(label) >= len(names):
                    raise UserError(f"{path}, line {n}: class index {label} is outside 0..{len(names) - 1}")
                label = names[int(label)]
            table[file] = index.get(label, -1)
    return table


def list_imagefolder(root: Path, val_labels: str | None) -> tuple[list[str], dict[str, tuple[list[str], np.ndarray]],
                                                                   dict[str, Any]]:
    """Class ids and, per part, the files in store order with their labels.

    train is ``root/train/<class>/*``; val is ``root/val/<class>/*``, or flat ``root/val/*`` (the
    ILSVRC-2012 archive as extracted) labelled by ``val_labels``. Classes are the train folders
    sorted, which for ImageNet's wnids is the standard (and the study's) class-index order. Either
    val layout gives the same order: by class, then by file name."""
    folders = _class_folders(root / "train")
    if not folders:
        raise UserError(f"{root / 'train'} has no class folders")
    ids = [p.name for p in folders]
    index = {c: i for i, c in enumerate(ids)}
    parts: dict[str, tuple[list[str], np.ndarray]] = {}
    layout: dict[str, Any] = {"val": "folders"}
    val_folders = _class_folders(root / "val")
    flat = _image_files(root / "val")
    if flat and val_folders:
        raise UserError(f"{root / 'val'} holds both images and class folders: keep one layout")
    for part, folder_list in (("train", folders), ("test", val_folders)):
        if part == "test" and flat:
            continue
        files: list[str] = []
        labels: list[int] = []
        for folder in folder_list:
            if folder.name not in index:
                raise UserError(f"{folder} is a class that {root / 'train'} does not have")
            found = _image_files(folder)
            if not found:
                raise UserError(f"class folder {folder} holds no images; remove it or add images")
            files += found
            labels += [index[folder.name]] * len(found)
        parts[part] = (files, np.array(labels, dtype=np.int64))
    if flat:
        if not val_labels:
            raise UserError(f"{root / 'val'} holds its images directly (the ILSVRC-2012 archive as extracted): "
                            "set dataset.val_labels: whole_valid_files.txt to label them")
        path = labels_file(val_labels, root)
        table = read_val_labels(path, ids)
        for f in flat:
            label = table.get(os.path.basename(f))
            if label is None:
                raise UserError(f"{f} is not listed in {path}: remove it, or give a labels file that lists it")
            if label < 0:
                raise UserError(f"{f} is of a class that {root / 'train'} does not have (per {path})")
        by_class = sorted(flat, key=lambda f: (table[os.path.basename(f)], f))
        missing = sum(label >= 0 for label in table.values()) - len(flat)
        if missing:
            print(f"note: {path} lists {missing} images of the training classes that {root / 'val'} lacks",
                  file=sys.stderr)
        parts["test"] = (by_class, np.array([table[os.path.basename(f)] for f in by_class], dtype=np.int64))
        layout = {"val": "flat", "val_labels": str(path)}
    elif not val_folders:
        raise UserError(f"{root / 'val'} holds no class folders and no images")
    elif val_labels:
        print(f"note: {root / 'val'} holds class folders, which label it: dataset.val_labels is not used",
              file=sys.stderr)
    return ids, parts, layout


# --- decoding a folder into the store's images files --------------------------------------------

def _stamp(path: str, name: str) -> bytes:
    """``name`` with the size and modification time of ``path``: what tells a replaced file, unread."""
    try:
        st = os.stat(path)
    except OSError as exc:  # a dangling link: prepare names it; a digest must not fail on it
        return f"{name}\0{exc.strerror}\n".encode()
    return f"{name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode()


def tree_fingerprint(dataset: dict[str, Any]) -> str:
    """A digest of every file under ``dataset.root`` by path, size and mtime: a change means the store
    is stale. Snakemake re-runs prepare when it changes (a `params:` value); DVC has the root as a dep.

    Stats only, no reads: ILSVRC-2012's 1.3M files (~140 GB) are a walk of stat calls, where hashing
    their bytes (what DVC does for its DAG, once, then keeps by mtime) reads all 140 GB. A missing root
    has a digest too, so a DAG plans before the data is in place; prepare itself names what is missing."""
    root = str(dataset["root"])
    h = hashlib.sha256()
    for folder, dirs, files in os.walk(root, followlinks=True):  # linked class folders, as the listing reads
        dirs.sort()
        rel = os.path.relpath(folder, root)  # once per folder: per file it costs more than the stat
        for name in sorted(files):
            h.update(_stamp(os.path.join(folder, name), os.path.join(rel, name)))
    return h.hexdigest()[:16]


def _listing_key(part: str, files: list[str], size: int, channels: int, shard: int) -> str:
    """A digest of what the decoded rows depend on: the files (path, size, mtime), the size, the
    shard layout and the decoding code (this file, Pillow's version)."""
    h = hashlib.sha256(json.dumps([part, size, channels, shard, PIL.__version__,
                                   hashlib.sha256(Path(__file__).read_bytes()).hexdigest()]).encode())
    for f in files:
        h.update(_stamp(f, f))
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


def imagefolder(root: str | Path, size: int, channels: int, work: Path, shard: int = 1024, workers: int = 1,
                val_labels: str | None = None, on_bad_image: str = "fail") -> Arrays:
    """An image folder decoded to ``size`` x ``size`` into ``work`` (``decode_listing``)."""
    root = Path(root)
    ids, parts, layout = list_imagefolder(root, val_labels)
    images, labels, classes = decode_listing(ids, parts, size, channels, work, shard, workers, on_bad_image)
    source = {"source": "imagefolder", "root": str(root), "image_size": size, **layout}
    return images, labels, classes, source


# --- a CSV of image paths and labels ----------------------------------------------------------

CSV_FILES = {"train": "train.csv", "test": "val.csv"}  # store part -> the CSV in dataset.root that lists it
CSV_COLUMNS = ("path", "label")


def _csv_rows(path: Path) -> list[tuple[int, str, str]]:
    """(line, path, label) of each row of ``path``, a CSV whose header names the columns path and label."""
    if not path.is_file():
        raise UserError(f"{path} not found: a csv source's dataset.root holds {' and '.join(CSV_FILES.values())}, "
                        f"each with a header line '{','.join(CSV_COLUMNS)}' and one image per line")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if not set(CSV_COLUMNS) <= set(reader.fieldnames or []):
            raise UserError(f"{path}: the header line must name the columns {' and '.join(CSV_COLUMNS)}, "
                            f"got {reader.fieldnames}")
        rows = []
        for row in reader:
            file, label = (row[c] or "" for c in CSV_COLUMNS)
            if not file.strip() or not label.strip():
                raise UserError(f"{path}, line {reader.line_num}: empty path or label; give both, or remove the line")
            rows.append((reader.line_num, file.strip(), label.strip()))
    if not rows:
        raise UserError(f"{path} lists no images")
    return rows


def list_csv(root: Path) -> tuple[list[str], dict[str, tuple[list[str], np.ndarray]]]:
    """Class ids (train.csv's labels, sorted) and, per part, the files in store order (by class, then path,
    whatever the CSV's row order) with their labels; paths relative to ``root`` (the CSVs' folder)."""
    rows = {part: _csv_rows(root / name) for part, name in CSV_FILES.items()}
    ids = sorted({label for _, _, label in rows["train"]})
    index = {c: i for i, c in enumerate(ids)}
    parts = {}
    for part, part_rows in rows.items():
        listed = []
        for line, file, label in part_rows:
            where = f"{root / CSV_FILES[part]}, line {line}"
            if label not in index:
                raise UserError(f"{where}: label {label!r} is not a class of {CSV_FILES['train']} "
                                f"(its classes: {', '.join(ids)}); fix the label or add images of it to train")
            if not (root / file).is_file():
                raise UserError(f"{where}: {root / file} not found (paths are relative to {root})")
            listed.append((index[label], str(root / file)))
        listed.sort()
        parts[part] = ([f for _, f in listed], np.array([c for c, _ in listed], dtype=np.int64))
    for c in sorted(set(range(len(ids))) - set(parts["test"][1].tolist())):
        raise UserError(f"class {ids[c]} has images in {CSV_FILES['train']} but none in {CSV_FILES['test']}: "
                        "list some of its images there, or remove the class")
    return ids, parts


def read_csv(dataset: dict[str, Any], work: Path, workers: int) -> Arrays:
    """The images the CSVs list, decoded as an image folder's are (``decode_listing``)."""
    if dataset.get("val_labels"):
        raise UserError(f"dataset.val_labels is for source imagefolder: a csv source's {CSV_FILES['test']} labels "
                        "its test images; remove dataset.val_labels")
    root = Path(dataset["root"])
    ids, parts = list_csv(root)
    settings = decoding(dataset)
    images, labels, classes = decode_listing(ids, parts, work=work, workers=workers, **settings)
    return images, labels, classes, {"source": "csv", "root": str(root), "image_size": settings["size"]}


def csv_fingerprint(dataset: dict[str, Any]) -> str:
    """The CSVs and every file they list, by path, size and mtime (``tree_fingerprint``'s stamps): a listed
    image outside dataset.root counts, a file under it that no CSV lists does not."""
    root = Path(dataset["root"])
    h = hashlib.sha256()
    for name in CSV_FILES.values():
        h.update(_stamp(str(root / name), name))
        try:
            rows = _csv_rows(root / name)
        except UserError:  # prepare names what is wrong; a DAG still plans
            continue
        for _, file, _ in rows:
            h.update(_stamp(str(root / file), file))
    return h.hexdigest()[:16]


def csv_counts(dataset: dict[str, Any]) -> dict[str, int]:
    """train.csv's classes, and the most images of one class in each part: bounds for memory requests."""
    root = Path(dataset["root"])
    per_part = {part: Counter(label for _, _, label in _csv_rows(root / name)) for part, name in CSV_FILES.items()}
    return {"classes": len(per_part["train"]), **{part: max(c.values()) for part, c in per_part.items()}}


# --- the registry -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Source:
    """A dataset source as the pipeline knows it: ``read(dataset, work, workers)`` makes the store's arrays
    (``work``: a folder for resumable shards; ``workers``: processes); ``fingerprint(dataset)`` changes when
    its files do (stats only: Snakemake reruns prepare on it); the stored images' ``side`` and ``channels``
    from params alone (params checks, before the store exists); ``expected``: its classes and images per
    class, or bounds on them, until it is prepared (memory.py's estimate of a dry run); ``sized``: whether
    it needs dataset.image_size."""

    name: str
    read: Callable[[dict[str, Any], Path, int], Arrays]
    fingerprint: Callable[[dict[str, Any]], str]
    side: Callable[[dict[str, Any]], int]
    channels: Callable[[dict[str, Any]], int]
    expected: Callable[[dict[str, Any]], dict[str, int]]
    sized: bool = False


def decoding(dataset: dict[str, Any]) -> dict[str, Any]:
    """``decode_listing``'s settings from a source that decodes image files: dataset.image_size, .channels,
    .shard_images and .on_bad_image."""
    return {"size": dataset["image_size"], "channels": dataset.get("channels", 3),
            "shard": dataset.get("shard_images", 1024), "on_bad_image": dataset.get("on_bad_image", "fail")}


def _read_imagefolder(dataset: dict[str, Any], work: Path, workers: int) -> Arrays:
    return imagefolder(dataset["root"], work=work, workers=workers, val_labels=dataset.get("val_labels"),
                       **decoding(dataset))


def _sized(dataset: dict[str, Any]) -> int:
    return dataset["image_size"]


def _channels(dataset: dict[str, Any]) -> int:
    return dataset.get("channels", 3)


SOURCES: dict[str, Source] = {s.name: s for s in [
    Source("fashion_mnist", lambda ds, work, workers: fashion_mnist(ds["root"]), tree_fingerprint,
           lambda ds: FASHION_MNIST_SIDE, lambda ds: 1, lambda ds: {"classes": 10, "train": 6000, "test": 1000}),
    # ILSVRC-2012's counts bound an image folder's until it is prepared
    Source("imagefolder", _read_imagefolder, tree_fingerprint, _sized, _channels,
           lambda ds: {"classes": 1000, "train": 1300, "test": 50}, sized=True),
    Source("csv", read_csv, csv_fingerprint, _sized, _channels, csv_counts, sized=True),
]}


def source_of(dataset: dict[str, Any]) -> Source:
    """dataset.source's entry, or one line naming it and the known sources (never a fallback: an unknown
    source read as another would make a wrong store without a word)."""
    if (found := SOURCES.get(dataset["source"])) is None:
        raise UserError(f"dataset.source '{dataset['source']}' is unknown; known sources: {', '.join(SOURCES)}")
    return found


def read_source(dataset: dict[str, Any], work: Path, workers: int = 1) -> Arrays:
    """The store's arrays from dataset.source (``Source.read``)."""
    return source_of(dataset).read(dataset, work, workers)


def fingerprint(dataset: dict[str, Any]) -> str:
    """dataset.source's fingerprint of its files (``Source.fingerprint``): what Snakemake reruns prepare on."""
    return source_of(dataset).fingerprint(dataset)
