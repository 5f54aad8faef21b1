"""prepare on ImageNet's layouts: a small ILSVRC-2012-shaped tree (real wnids, JPEGs of varied sizes,
the archive's bad-file kinds, a flat val folder labelled by the study's whole_valid_files.txt)."""

from __future__ import annotations

import gzip
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from transferability import REFERENCE
from transferability import params as tparams
from transferability.data.images import decode_image
from transferability.data.sources.imagefolder import ilsvrc_synsets, imagefolder
from transferability.data.store import load_store, write_store
from transferability.errors import UserError

from .conftest import ENV, SMOKE

SIZE = 32
SHARED = Path("/work/shared/reference/yosinski2014")


def val_table() -> list[tuple[str, int]]:
    with gzip.open(REFERENCE / "whole_valid_files.txt.gz", "rt") as f:
        return [(name, int(label)) for name, label in (line.split() for line in f)]


# the classes of the first four validation images, so the flat val folder uses real names and labels
LABELS = sorted({label for _, label in val_table()[:4]})
WNIDS = [ilsvrc_synsets()[i] for i in LABELS]


def photo(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 127 / (h + w)], -1)
    return (img + rng.normal(0, 10, img.shape)).clip(0, 255).astype(np.uint8)


def make_imagenet(root: Path, flat_val: bool = False, per_class: int = 3) -> dict[str, Path]:
    """train/<wnid>/ JPEGs of varied sizes and aspect ratios (some large enough for draft decoding)
    plus a CMYK JPEG, an RGB PNG named .JPEG and a grayscale JPEG; val by class or flat, with the
    study's file names. Returns the bad-kind files by kind."""
    rng = np.random.default_rng(2014)
    sizes = [(40, 50), (150, 100), (48, 130), (90, 60), (210, 170)]
    for c, wnid in enumerate(WNIDS):
        folder = root / "train" / wnid
        folder.mkdir(parents=True)
        for i in range(per_class + c % 2):
            h, w = sizes[(c + i) % len(sizes)]
            Image.fromarray(photo(rng, h, w)).save(folder / f"{wnid}_{i + 1}.JPEG", quality=90)
    folder = root / "train" / WNIDS[1]
    kinds = {"cmyk": folder / f"{WNIDS[1]}_cmyk.JPEG", "png": folder / f"{WNIDS[1]}_png.JPEG",
             "gray": folder / f"{WNIDS[1]}_gray.JPEG"}
    Image.fromarray(photo(rng, 50, 70)).convert("CMYK").save(kinds["cmyk"], "JPEG", quality=90)
    Image.fromarray(photo(rng, 45, 60)).save(kinds["png"], "PNG")
    Image.fromarray(photo(rng, 60, 40)).convert("L").save(kinds["gray"], "JPEG", quality=90)
    table = val_table()
    for label, wnid in zip(LABELS, WNIDS, strict=True):
        names = [name for name, lab in table if lab == label][:2]
        for k, name in enumerate(names):
            f = root / "val" / ("" if flat_val else wnid) / name
            f.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(photo(rng, 60 + 40 * k, 80)).save(f, quality=90)
    return kinds


def pillow(path: Path, size: int = SIZE) -> np.ndarray:
    """What plain Pillow makes of a file: convert to RGB, resize, channels first."""
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB").resize((size, size), Image.BILINEAR)).transpose(2, 0, 1)


def build(root: Path, dest: Path, **kw) -> tuple[dict, list]:
    arrays = imagefolder(root, SIZE, 3, dest.with_name(dest.name + ".work"), **kw)
    return write_store(dest, *arrays), arrays[2]


def store_bytes(dest: Path, names=("train_images.npy", "train_labels.npy", "test_images.npy",
                                   "test_labels.npy", "classes.json")) -> dict[str, bytes]:
    return {n: (dest / n).read_bytes() for n in names if (dest / n).exists()}


def add_corrupt(root: Path) -> dict[str, Path]:
    """An empty file (caught by the header check) and a truncated JPEG (caught only when decoded)."""
    folder = root / "train" / WNIDS[2]
    empty, truncated = folder / "zz_empty.JPEG", folder / "zz_truncated.JPEG"
    empty.write_bytes(b"")
    Image.fromarray(photo(np.random.default_rng(1), 120, 120)).save(truncated, quality=95)
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size * 2 // 3])
    return {"empty": empty, "truncated": truncated}


def test_wnids_sorted_are_the_studys_class_indices():
    synsets = ilsvrc_synsets()
    assert len(synsets) == 1000 and synsets == sorted(synsets)  # sorted folders = the study's class order
    table = val_table()
    assert len(table) == 50000 and np.bincount([lab for _, lab in table]).tolist() == [50] * 1000
    assert table[0] == ("ILSVRC2012_val_00000001.JPEG", 65)
    if SHARED.exists():
        assert (SHARED / "synsets.txt").read_text().split() == synsets
        shipped = gzip.open(REFERENCE / "whole_valid_files.txt.gz").read()
        assert shipped == (SHARED / "whole_valid_files.txt").read_bytes()


def test_both_val_layouts_give_the_same_store(tmp_path, capsys):
    make_imagenet(tmp_path / "folders")
    make_imagenet(tmp_path / "flat", flat_val=True)
    m1, classes = build(tmp_path / "folders", tmp_path / "s1")
    m2, _ = build(tmp_path / "flat", tmp_path / "s2", val_labels="whole_valid_files.txt")
    assert store_bytes(tmp_path / "s1") == store_bytes(tmp_path / "s2")
    assert m1["parts"] == m2["parts"] and m2["source"]["val"] == "flat"
    assert "whole_valid_files.txt.gz lists 192 images of the training classes" in capsys.readouterr().err
    assert [c["id"] for c in classes] == WNIDS
    store = load_store(tmp_path / "s2")
    assert store.labels["test"].tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    # each val image has its class: the k-th image of a class is 60 + 40k pixels high
    by_name = {n: lab for n, lab in val_table()}
    for i, f in enumerate(sorted((tmp_path / "flat" / "val").iterdir(), key=lambda f: (by_name[f.name], f.name))):
        assert np.array_equal(store.images["test"][i], np.asarray(decode_image(f, SIZE, "RGB")).transpose(2, 0, 1))
        assert WNIDS[store.labels["test"][i]] == ilsvrc_synsets()[by_name[f.name]]


def test_the_archives_bad_kinds_decode_as_pillow_converts_them(tmp_path):
    kinds = make_imagenet(tmp_path / "src")
    build(tmp_path / "src", tmp_path / "store")
    store = load_store(tmp_path / "store")
    files = sorted(str(f) for f in (tmp_path / "src" / "train").rglob("*.JPEG"))
    modes = {}
    for kind, f in kinds.items():
        with Image.open(f) as im:
            modes[kind] = (im.format, im.mode)
        row = store.images["train"][files.index(str(f))]
        assert np.array_equal(row, pillow(f)), kind
    assert modes == {"cmyk": ("JPEG", "CMYK"), "png": ("PNG", "RGB"), "gray": ("JPEG", "L")}
    gray = store.images["train"][files.index(str(kinds["gray"]))]
    assert np.array_equal(gray[0], gray[1]) and np.array_equal(gray[0], gray[2])


def test_draft_decoding_of_large_jpegs_keeps_the_picture(tmp_path):
    """A JPEG at least twice the size is decoded at reduced scale; the result stays within a few
    grey levels of a full decode (and is the full decode when the file is smaller)."""
    rng = np.random.default_rng(0)
    for h, w in [(256, 256), (700, 300), (1200, 900)]:
        f = tmp_path / f"{h}x{w}.JPEG"
        Image.fromarray(photo(rng, h, w)).save(f, quality=90)
        ours = np.asarray(decode_image(f, 64, "RGB")).transpose(2, 0, 1).astype(np.float64)
        mse = np.mean((ours - pillow(f, 64)) ** 2)
        assert 10 * np.log10(255**2 / max(mse, 1e-9)) > 40, (h, w, mse)
    f = tmp_path / "small.JPEG"
    Image.fromarray(photo(rng, 100, 127)).save(f)
    assert np.array_equal(np.asarray(decode_image(f, 64, "RGB")).transpose(2, 0, 1), pillow(f, 64))


def test_unreadable_files_fail_with_the_path_and_the_fix(tmp_path, capsys):
    make_imagenet(tmp_path / "src")
    bad = add_corrupt(tmp_path / "src")
    with pytest.raises(UserError, match=rf"cannot read {bad['empty']} \(UnidentifiedImageError.*\); remove or "
                                         r"replace the file, or set dataset.on_bad_image: skip"):
        build(tmp_path / "src", tmp_path / "store")
    bad["empty"].unlink()  # the truncated JPEG passes the header check: decoding finds it
    with pytest.raises(UserError, match=rf"cannot read {bad['truncated']} \(OSError: image file is truncated"):
        build(tmp_path / "src", tmp_path / "store")
    assert not (tmp_path / "store").exists()


def test_unreadable_files_are_skipped_listed_and_the_rest_kept(tmp_path, capsys):
    """skip: the store is exactly the one made without those files, and they are listed, not hidden."""
    make_imagenet(tmp_path / "src")
    shutil.copytree(tmp_path / "src", tmp_path / "clean")
    bad = add_corrupt(tmp_path / "src")
    manifest, _ = build(tmp_path / "src", tmp_path / "store", on_bad_image="skip", shard=4)
    err = capsys.readouterr().err
    build(tmp_path / "clean", tmp_path / "ref", shard=4)
    assert store_bytes(tmp_path / "store") == store_bytes(tmp_path / "ref")
    assert manifest["parts"]["train"]["skipped"] == 2 and manifest["parts"]["test"]["skipped"] == 0
    listed = [line.split("\t") for line in (tmp_path / "store" / "skipped.txt").read_text().splitlines()]
    assert [(p, f) for p, f, _ in listed] == [("train", str(bad["empty"])), ("train", str(bad["truncated"]))]
    assert "image file is truncated" in listed[1][2]
    for f in bad.values():
        assert f"skipped unreadable image {f} (" in err


def test_parallel_and_serial_stores_are_bit_identical(tmp_path):
    make_imagenet(tmp_path / "src", flat_val=True)
    add_corrupt(tmp_path / "src")
    kw = {"val_labels": "whole_valid_files.txt", "on_bad_image": "skip"}
    m1, _ = build(tmp_path / "src", tmp_path / "serial", workers=1, shard=5, **kw)
    m2, _ = build(tmp_path / "src", tmp_path / "parallel", workers=2, shard=3, **kw)
    names = ("train_images.npy", "train_labels.npy", "test_images.npy", "test_labels.npy", "classes.json",
             "skipped.txt", "manifest.json")
    assert store_bytes(tmp_path / "serial", names) == store_bytes(tmp_path / "parallel", names)
    assert len(store_bytes(tmp_path / "serial", names)) == len(names)


def cli_params(tmp_path: Path, root: Path, **dataset) -> Path:
    params = tparams.resolve(SMOKE)
    params["dataset"] = {"source": "imagefolder", "root": str(root), "name": "inet", "image_size": SIZE,
                         "channels": 3, **dataset}
    params["compute"]["threads"] = 2
    f = tmp_path / "params.yaml"
    f.write_text(yaml.safe_dump(params))
    return f


def prepare_cli(ws: Path, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["transferability", "--params", "params.yaml", "prepare"], cwd=ws, env=ENV,
                          capture_output=True, text=True, **kw)


def test_cli_names_an_unreadable_file_in_one_line(tmp_path):
    make_imagenet(tmp_path / "src")
    bad = add_corrupt(tmp_path / "src")
    ws = tmp_path / "ws"
    ws.mkdir()
    shutil.copy(cli_params(tmp_path, tmp_path / "src"), ws / "params.yaml")
    proc = prepare_cli(ws)
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: cannot read {bad['empty']} (") and "on_bad_image: skip" in last
    assert f"unreadable: {bad['empty']}" in proc.stderr


def test_cli_refuses_a_class_whose_every_image_is_unreadable(tmp_path):
    """on_bad_image: skip, and every training image of one class unreadable: before, prepare made a
    store with an empty class and training ran without a word; now one line names the class."""
    make_imagenet(tmp_path / "src")
    for f in (tmp_path / "src" / "train" / WNIDS[0]).iterdir():
        f.write_bytes(b"")
    ws = tmp_path / "ws"
    ws.mkdir()
    shutil.copy(cli_params(tmp_path, tmp_path / "src", on_bad_image="skip"), ws / "params.yaml")
    proc = prepare_cli(ws)
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: class {WNIDS[0]} has no readable train image: all 3 of its files are unreadable")
    assert last.endswith("replace them, or remove the class from the dataset (its train and val images)")
    assert not (ws / "data" / "prepared" / "inet").exists()


@pytest.mark.slow  # prepare killed and run again
def test_killed_prepare_resumes_to_a_bit_identical_store(tmp_path):
    """SIGKILL a 2-worker prepare (skip mode, a truncated file to drop) once some shards are done:
    the rerun keeps them, and its store is byte for byte an uninterrupted run's."""
    make_imagenet(tmp_path / "src", flat_val=True, per_class=5)
    add_corrupt(tmp_path / "src")
    params = cli_params(tmp_path, tmp_path / "src", shard_images=2, on_bad_image="skip",
                        val_labels="whole_valid_files.txt")
    ref, ws = tmp_path / "ref", tmp_path / "ws"
    for w in (ref, ws):
        w.mkdir()
        shutil.copy(params, w / "params.yaml")
    done = prepare_cli(ref, check=True)
    assert "prepare train: 100%|" in done.stderr and "\r" not in done.stderr  # a log file gets lines
    proc = subprocess.Popen(["transferability", "--params", "params.yaml", "prepare"], cwd=ws,
                            env={**ENV, "TRANSFERABILITY_PAUSE_BEFORE_RENAME_S": "0.3"},
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while len(list(ws.glob("data/prepared/.inet.shards/train/*/shard-*.json"))) < 3:
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert not (ws / "data/prepared/inet").exists()
    again = prepare_cli(ws, check=True)
    assert "prepare train: resuming, " in again.stderr and "check train" not in again.stderr
    store = sorted(p.name for p in (ref / "data/prepared/inet").iterdir())
    assert store == sorted(p.name for p in (ws / "data/prepared/inet").iterdir()) and "skipped.txt" in store
    for name in store:
        assert (ws / "data/prepared/inet" / name).read_bytes() == (ref / "data/prepared/inet" / name).read_bytes()
    assert not (ws / "data/prepared/.inet.shards").exists()


def test_layout_errors_say_what_to_do(tmp_path):
    make_imagenet(tmp_path / "src", flat_val=True)
    with pytest.raises(UserError, match=r"holds its images directly .* set dataset.val_labels"):
        imagefolder(tmp_path / "src", SIZE, 3, tmp_path / "work")
    extra = tmp_path / "src" / "val" / "ILSVRC2012_val_00000000.JPEG"
    shutil.copy(next((tmp_path / "src" / "val").iterdir()), extra)
    with pytest.raises(UserError, match=rf"{extra} is not listed in .*whole_valid_files.txt.gz"):
        imagefolder(tmp_path / "src", SIZE, 3, tmp_path / "work", val_labels="whole_valid_files.txt")
    extra.unlink()
    other = tmp_path / "src" / "val" / "ILSVRC2012_val_00000005.JPEG"  # class 516: not a training class
    shutil.copy(next((tmp_path / "src" / "val").iterdir()), other)
    with pytest.raises(UserError, match=rf"{other} is of a class that .*train does not have"):
        imagefolder(tmp_path / "src", SIZE, 3, tmp_path / "work", val_labels="whole_valid_files.txt")
    with pytest.raises(UserError, match="val_labels: nope.txt not found"):
        imagefolder(tmp_path / "src", SIZE, 3, tmp_path / "work", val_labels="nope.txt")
