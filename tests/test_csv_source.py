"""The csv source end to end: a small tree of PNGs in four classes listed by train.csv and val.csv (paths
relative to the CSVs' folder, rows in any order), prepared through the CLI as a user would."""

from __future__ import annotations

import csv
import random
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from transferability import params as tparams
from transferability.data import sources
from transferability.data.images import decode_image
from transferability.data.store import load_store

from .conftest import ENV, SMOKE

SIZE = 32
CLASSES = ["circle", "cross", "square", "stripe"]  # sorted: the store's class order
TRAIN, VAL = 6, 2                                 # images per class


def picture(rng: np.random.Generator, c: int, h: int, w: int) -> Image.Image:
    """An RGB image whose mean colour tells its class, of varied size (the store resizes every one)."""
    base = np.zeros((h, w, 3)) + 60 * c
    return Image.fromarray((base + rng.uniform(0, 50, (h, w, 3))).astype(np.uint8))


def make_tree(root: Path, order_seed: int = 0) -> dict[str, list[tuple[str, str]]]:
    """images/<class>/<part>_<i>.png and the CSVs listing them, rows shuffled by ``order_seed``; plus a
    grayscale image and one stored outside the root (../), as a user's listing may have them."""
    rng = np.random.default_rng(2014)
    rows: dict[str, list[tuple[str, str]]] = {"train.csv": [], "val.csv": []}
    for c, name in enumerate(CLASSES):
        for part, count in (("train", TRAIN), ("val", VAL)):
            for i in range(count):
                rel = f"images/{name}/{part}_{i}.png"
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                im = picture(rng, c, 20 + 3 * i, 24 + 2 * c)
                (im.convert("L") if (c, i) == (1, 0) else im).save(root / rel)
                rows[f"{part}.csv"].append((rel, name))
    outside = root.parent / "elsewhere" / "square_extra.png"
    outside.parent.mkdir(parents=True, exist_ok=True)
    picture(rng, 2, 30, 30).save(outside)
    rows["train.csv"].append(("../elsewhere/square_extra.png", "square"))
    for name, listed in rows.items():
        random.Random(order_seed).shuffle(listed)
        write_csv(root / name, listed)
    return rows


def write_csv(path: Path, rows: list[tuple[str, str]]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label"])
        w.writerows(rows)


def workspace(tmp_path: Path, root: Path, name: str = "ws") -> Path:
    """A project folder whose params.yaml is the smoke profile with the csv source at ``root``."""
    params = tparams.resolve(SMOKE)
    params["dataset"] = {"source": "csv", "root": str(root), "name": "shapes", "image_size": SIZE, "channels": 3}
    params["compute"]["threads"] = 2
    ws = tmp_path / name
    ws.mkdir()
    (ws / "params.yaml").write_text(yaml.safe_dump(params))
    return ws


def cli(ws: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["transferability", "--params", "params.yaml", *args], cwd=ws, env=ENV,
                          capture_output=True, text=True)


@pytest.mark.slow  # the CLI end to end
def test_a_csv_listing_is_prepared_split_and_fingerprinted(tmp_path):
    root = tmp_path / "data"
    rows = make_tree(root)
    ws = workspace(tmp_path, root)
    assert cli(ws, "check").returncode == 0
    done = cli(ws, "prepare")
    assert done.returncode == 0, done.stderr
    assert "prepared data/prepared/shapes: 4 classes, {'train': 25, 'test': 8}" in done.stderr
    store = load_store(ws / "data/prepared/shapes")
    manifest = store.manifest
    assert manifest["source"] == {"source": "csv", "root": str(root), "image_size": SIZE}
    assert [c["id"] for c in store.classes] == CLASSES
    assert manifest["parts"]["train"]["per_class"] == [6, 6, 7, 6] and manifest["parts"]["test"]["per_class"] == [2] * 4
    assert manifest["parts"]["train"]["shape"] == [3, SIZE, SIZE]
    # store order: by class, then path; each row is its file decoded as Pillow does, with its CSV label
    for part, name in (("train", "train.csv"), ("test", "val.csv")):
        listed = sorted((CLASSES.index(label), str(root / path)) for path, label in rows[name])
        assert store.labels[part].tolist() == [c for c, _ in listed]
        for i, (_, f) in enumerate(listed):
            expect = np.asarray(decode_image(f, SIZE, "RGB")).transpose(2, 0, 1)
            assert np.array_equal(store.images[part][i], expect), f
    # the class means follow the pictures' colours: the labels went with the right images
    means = [store.images["train"][store.labels["train"] == c].mean() for c in range(4)]
    assert means == sorted(means)
    split = cli(ws, "split", "--split", "random0")
    assert split.returncode == 0, split.stderr
    halves = yaml.safe_load((ws / "data/splits/random0.json").read_text())
    assert sorted(halves["A"]["indices"] + halves["B"]["indices"]) == [0, 1, 2, 3]

    # the same listing in another row order is the same store, byte for byte
    other = tmp_path / "shuffled"
    shutil.copytree(root, other)
    for name, listed in rows.items():
        write_csv(other / name, list(reversed(listed)))
    ws2 = workspace(tmp_path, other, "ws2")
    assert cli(ws2, "prepare").returncode == 0
    for f in ("train_images.npy", "train_labels.npy", "test_images.npy", "test_labels.npy", "classes.json"):
        assert (ws / "data/prepared/shapes" / f).read_bytes() == (ws2 / "data/prepared/shapes" / f).read_bytes()

    # the fingerprint follows what the CSVs list, inside the root or not, and nothing else
    dataset = yaml.safe_load((ws / "params.yaml").read_text())["dataset"]
    before = sources.fingerprint(dataset)
    assert sources.fingerprint(dataset) == before
    (root / "images" / "notes.txt").write_text("not listed")
    assert sources.fingerprint(dataset) == before
    outside = tmp_path / "elsewhere" / "square_extra.png"
    picture(np.random.default_rng(1), 2, 31, 30).save(outside)
    assert sources.fingerprint(dataset) != before
    assert sources.source_of(dataset).expected(dataset) == {"classes": 4, "train": 7, "test": 2}


@pytest.mark.slow  # the CLI on each mistake in turn
def test_csv_mistakes_are_one_line_naming_the_row(tmp_path):
    root = tmp_path / "data"
    rows = make_tree(root)
    ws = workspace(tmp_path, root)
    cases = [
        ("val.csv", [*rows["val.csv"], ("images/circle/val_0.png", "triangle")],
         "val.csv, line 10: label 'triangle' is not a class of train.csv"),
        ("train.csv", [*rows["train.csv"], ("images/circle/missing.png", "circle")],
         f"train.csv, line 27: {root / 'images/circle/missing.png'} not found (paths are relative to {root})"),
        ("val.csv", [r for r in rows["val.csv"] if r[1] != "stripe"],
         "class stripe has images in train.csv but none in val.csv"),
    ]
    for name, listed, message in cases:
        write_csv(root / name, listed)
        proc = cli(ws, "prepare")
        assert proc.returncode == 2
        last = proc.stderr.strip().splitlines()
        assert len(last) == 1 and last[0].startswith("error: ") and message in last[0], proc.stderr
        write_csv(root / name, rows[name])
    (root / "val.csv").unlink()
    proc = cli(ws, "prepare")
    assert proc.returncode == 2 and f"{root / 'val.csv'} not found" in proc.stderr
    assert not (ws / "data/prepared/shapes").exists()
