"""A CSV source: <root>/train.csv and <root>/val.csv list images (``path,label``, paths relative to
root), decoded as an image folder's are (images.py)."""

from __future__ import annotations

import csv
import hashlib
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from transferability.data.fingerprint import stamp
from transferability.data.images import decode_listing
from transferability.data.sources import Source, channels, decoding, register, sized
from transferability.data.store import Arrays
from transferability.errors import UserError

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
        h.update(stamp(str(root / name), name))
        try:
            rows = _csv_rows(root / name)
        except UserError:  # prepare names what is wrong; a DAG still plans
            continue
        for _, file, _ in rows:
            h.update(stamp(str(root / file), file))
    return h.hexdigest()[:16]


def csv_counts(dataset: dict[str, Any]) -> dict[str, int]:
    """train.csv's classes, and the most images of one class in each part: bounds for memory requests."""
    root = Path(dataset["root"])
    per_part = {part: Counter(label for _, _, label in _csv_rows(root / name)) for part, name in CSV_FILES.items()}
    return {"classes": len(per_part["train"]), **{part: max(c.values()) for part, c in per_part.items()}}


register(Source("csv", read_csv, csv_fingerprint, sized, channels, csv_counts, sized=True))
