"""Class halves A and B, written as data.

``random`` follows the study's make_reduced_dataset.py exactly (legacy numpy generator seeded
with a one-element list, then ``choice(arange(N), N // 2, replace=False)``), so on ILSVRC-2012
seeds 0..3 give the study's four halves. ``lists`` takes explicit class lists (names, ids,
indices, or a file of them), e.g. the study's natural / man-made halves. Inside a half classes
are renumbered 0..N-1 in increasing original index order, as in the study.

``study_lists`` writes a split as the study's own list files: each half's lines of an ILSVRC-2012
list ('FILE IDX', e.g. whole_valid_files.txt) as 'FILE NEWIDX', and the half's index map, byte for
byte as the study's make_reduced_dataset.py wrote them, so its users can compare with ours.
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import numpy as np

from transferability import REFERENCE
from transferability.errors import UserError
from transferability.provenance import digest


def random_half(num_classes: int, seed: int) -> list[int]:
    """Half A of the study's seeded random split (sorted original class indices)."""
    rng = np.random.RandomState([seed])
    return sorted(int(i) for i in rng.choice(np.arange(num_classes), num_classes // 2, replace=False))


def _entries(spec: Any, where: str) -> list[Any]:
    if isinstance(spec, dict):
        path = Path(spec["file"])
        if not path.is_absolute() and not path.exists() and (REFERENCE / path.name).exists():
            path = REFERENCE / path.name  # the study's own lists ship with the package
        if not path.exists():
            raise UserError(f"{where}: class list file {spec['file']} not found")
        lines = [ln.split("#")[0].strip() for ln in path.read_text().splitlines()]
        return [int(x) if x.isdigit() else x for x in lines if x]
    return list(spec)


def resolve(spec: Any, classes: list[dict[str, Any]], where: str) -> list[int]:
    """Turn names, ids or indices into sorted class indices; unknown or repeated ones are errors."""
    by_key: dict[Any, int] = {}
    for c in classes:
        by_key[c["id"]] = c["index"]
        by_key[c["name"]] = c["index"]
    out = []
    for e in _entries(spec, where):
        if isinstance(e, int) and not isinstance(e, bool):
            if not 0 <= e < len(classes):
                raise UserError(f"{where}: class index {e} is outside 0..{len(classes) - 1}")
            out.append(e)
        elif e in by_key:
            out.append(by_key[e])
        else:
            raise UserError(f"{where}: unknown class {e!r}; use a class name, id or index of the dataset")
    dupes = sorted({classes[i]["name"] for i in out if out.count(i) > 1})
    if dupes:
        raise UserError(f"{where}: classes listed twice: {', '.join(dupes)}")
    return sorted(out)


def make_split(name: str, spec: dict[str, Any], classes: list[dict[str, Any]]) -> dict[str, Any]:
    n = len(classes)
    where = f"splits.{name}"
    if n < 2:
        raise UserError(f"{where}: the dataset has {n} class; a split needs at least 2")
    if spec["method"] == "random":
        a = random_half(n, spec["seed"])
        b = sorted(set(range(n)) - set(a))
    else:
        a = resolve(spec["A"], classes, f"{where}.A")
        b = resolve(spec["B"], classes, f"{where}.B")
        both = sorted(set(a) & set(b))
        if both:
            names = ", ".join(classes[i]["name"] for i in both[:5])
            raise UserError(f"{where}: halves A and B overlap in {len(both)} classes ({names}); "
                            "each class belongs to one half")
        missing = sorted(set(range(n)) - set(a) - set(b))
        if missing:
            names = ", ".join(classes[i]["name"] for i in missing[:5])
            raise UserError(f"{where}: {len(missing)} classes are in neither half ({names}); "
                            "list every class in A or B")
    halves = {h: {"indices": idx,
                  "ids": [classes[i]["id"] for i in idx],
                  "names": [classes[i]["name"] for i in idx]} for h, idx in (("A", a), ("B", b))}
    for h, half in halves.items():
        if not half["indices"]:
            raise UserError(f"{where}: half {h} is empty")
    split = {"name": name, "method": spec["method"], "seed": spec.get("seed"),
             "num_classes": n, **halves}
    split["checksum"] = digest({h: halves[h] for h in ("A", "B")})
    return split


def read_listing(path: Path, num_classes: int) -> list[tuple[str, int]]:
    """(file, class index) per line of a 'FILE IDX' list, such as the study's whole_valid_files.txt."""
    opener = gzip.open if path.suffix == ".gz" else open
    rows = []
    with opener(path, "rt") as f:
        for n, line in enumerate(f, 1):
            fields = line.split()
            if len(fields) != 2 or not fields[1].isdigit() or int(fields[1]) >= num_classes:
                raise UserError(f"{path}, line {n}: expected 'FILE IDX' with IDX in 0..{num_classes - 1}, "
                                f"got {line.strip()!r}")
            rows.append((fields[0], int(fields[1])))
    return rows


def study_lists(split: dict[str, Any], listing: list[tuple[str, int]]) -> dict[str, dict[str, str]]:
    """Per half, the text of its list ('FILE NEWIDX' for the listing's lines of its classes, in the
    listing's order) and of its index map ('# Orig_idx new_idx', one line per class)."""
    out = {}
    for half in ("A", "B"):
        new = {old: i for i, old in enumerate(split[half]["indices"])}
        out[half] = {"files": "".join(f"{f} {new[c]}\n" for f, c in listing if c in new),
                     "idxmap": "# Orig_idx new_idx\n" + "".join(f"{o} {i}\n" for o, i in new.items())}
    return out


def check_split(split: dict[str, Any]) -> None:
    """Refuse a split file edited by hand into overlapping halves or a stale checksum."""
    if split["checksum"] != digest({h: split[h] for h in ("A", "B")}):
        raise UserError(f"split {split['name']}: checksum mismatch; run `transferability split` again")
    if set(split["A"]["indices"]) & set(split["B"]["indices"]):
        raise UserError(f"split {split['name']}: halves overlap; run `transferability split` again")
