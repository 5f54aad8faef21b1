"""A full disk or a read-only one: a clear error, and the previous good outputs intact."""

from __future__ import annotations

import errno
import subprocess

import pytest
import yaml

from transferability import params as tparams
from transferability.data.sources.imagefolder import imagefolder
from transferability.data.store import write_store

from .conftest import ENV, SMOKE, make_workspace
from .test_store import make_tree

TRAIN = ["transferability", "--params", "params.yaml", "train", "--split", "random0", "--seed", "0",
         "--variant", "baseB"]


@pytest.fixture
def small_disk(tmp_path):
    """A real 2 MiB file system (tmpfs), mounted for the test."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=True)


def cli(ws, *args, env=ENV):
    return subprocess.run(list(args), cwd=ws, env=env, capture_output=True, text=True)


def snapshot(folder):
    """Every file's bytes, but a checkpoint's lock file (it names the last job that held it)."""
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.name.endswith(".lock")}


@pytest.fixture
def trained(tmp_path, small_disk):
    """A workspace whose runs and checkpoints live on the small disk, with baseB trained once."""
    ws = make_workspace(tmp_path / "ws")
    (ws / "data").mkdir()
    for sub in ("runs", "checkpoints"):
        (small_disk / sub).mkdir()
        (ws / "data" / sub).symlink_to(small_disk / sub)
    for stage in (["prepare"], ["split", "--split", "random0"]):
        assert cli(ws, "transferability", "--params", "params.yaml", *stage).returncode == 0
    assert cli(ws, *TRAIN).returncode == 0
    params = yaml.safe_load((ws / "params.yaml").read_text())
    params["train"]["lr"] = 0.05  # new params: the next run must retrain and overwrite
    (ws / "params.yaml").write_text(yaml.safe_dump(params))
    return ws, small_disk


@pytest.mark.slow  # trains a base first
def test_full_disk_is_reported_before_training_and_outputs_survive(trained):
    ws, disk = trained
    before = snapshot(disk)
    free = int(subprocess.check_output(["df", "--output=avail", "-B1", str(disk)]).split()[-1])
    (disk / "filler").write_bytes(b"\0" * max(free - 64 * 1024, 0))
    proc = cli(ws, *TRAIN)
    assert proc.returncode == 2
    line = proc.stderr.strip().splitlines()[-1]
    assert "MiB free but this stage writes about" in line and "free some space" in line, proc.stderr
    (disk / "filler").unlink()
    assert snapshot(disk) == before


@pytest.mark.slow  # prepares stores on a small filesystem
def test_a_store_too_big_for_the_disk_is_refused_and_the_old_one_kept(tmp_path, small_disk):
    ws = make_workspace(tmp_path / "ws")
    make_tree(tmp_path / "images")
    params = tparams.resolve(SMOKE)
    params["dataset"].update(source="imagefolder", root=str(tmp_path / "images"), name="store", image_size=16,
                             channels=3)
    (ws / "params.yaml").write_text(yaml.safe_dump(params))
    (ws / "data").mkdir()
    (ws / "data" / "prepared").symlink_to(small_disk)
    assert cli(ws, "transferability", "prepare").returncode == 0
    before = snapshot(small_disk)
    params["dataset"].update(image_size=300)  # 12 images of 3x300x300: more than the disk has left
    (ws / "params.yaml").write_text(yaml.safe_dump(params))
    proc = cli(ws, "transferability", "prepare")
    assert proc.returncode in (2, 3), proc.stderr  # refused before the store, or when a shard no longer fits
    assert "free some space" in proc.stderr.strip().splitlines()[-1]
    # the store and its verified stamp beside it (prepare writes both) as they were; resumable shards may stay
    kept = {"store", ".store.verified.json"}
    assert {k: v for k, v in snapshot(small_disk).items() if k.parts[0] in kept} == \
        {k: v for k, v in before.items() if k.parts[0] in kept}
    assert (small_disk / ".store.verified.json").exists()


def test_disk_filling_up_mid_write_keeps_the_previous_store(tmp_path, small_disk):
    make_tree(tmp_path / "images")
    write_store(small_disk / "store", *imagefolder(tmp_path / "images", 16, 3, tmp_path / "work"))
    before = snapshot(small_disk)
    with pytest.raises(OSError) as err:  # no pre-check here: the write itself runs out of space
        write_store(small_disk / "store", *imagefolder(tmp_path / "images", 300, 3, tmp_path / "work"))
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(small_disk / "store")
    assert snapshot(small_disk) == before  # the old store, and no temporaries


@pytest.mark.slow  # trains a base first
def test_read_only_outputs_are_a_clear_error(trained):
    ws, disk = trained
    before = snapshot(disk)
    subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
    try:
        proc = cli(ws, *TRAIN)
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(disk)], check=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: cannot write to data/runs/random0/seed0/baseB: "
                                                           "Read-only file system"), proc.stderr
    assert snapshot(disk) == before
