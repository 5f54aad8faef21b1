"""An image folder: ImageNet's ILSVRC-2012 layouts (class folders, or a flat val/ with a labels file),
decoded once as the study did (images.py)."""

from __future__ import annotations

import gzip
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from transferability import REFERENCE
from transferability.data.fingerprint import tree_fingerprint
from transferability.data.images import IMAGE_SUFFIXES, decode_listing
from transferability.data.sources import Source, channels, decoding, register, sized
from transferability.data.store import Arrays
from transferability.errors import UserError


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


def imagefolder(root: str | Path, size: int, channels: int, work: Path, shard: int = 1024, workers: int = 1,
                val_labels: str | None = None, on_bad_image: str = "fail") -> Arrays:
    """An image folder decoded to ``size`` x ``size`` into ``work`` (``decode_listing``)."""
    root = Path(root)
    ids, parts, layout = list_imagefolder(root, val_labels)
    images, labels, classes = decode_listing(ids, parts, size, channels, work, shard, workers, on_bad_image)
    source = {"source": "imagefolder", "root": str(root), "image_size": size, **layout}
    return images, labels, classes, source


def _read_imagefolder(dataset: dict[str, Any], work: Path, workers: int) -> Arrays:
    return imagefolder(dataset["root"], work=work, workers=workers, val_labels=dataset.get("val_labels"),
                       **decoding(dataset))


# ILSVRC-2012's counts bound an image folder's until it is prepared
register(Source("imagefolder", _read_imagefolder, tree_fingerprint, sized, channels,
                lambda ds: {"classes": 1000, "train": 1300, "test": 50}, sized=True))
