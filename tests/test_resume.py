"""Kill and resume, for real: SIGKILL a training job at random points (mid-epoch, and inside a
checkpoint write), start it again, and get files byte-identical to an uninterrupted run. The same
through Snakemake (--rerun-incomplete) and through dvc repro."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from .conftest import ENV, SMOKE, make_workspace

pytestmark = pytest.mark.slow
BASE = "data/runs/random0/seed0/baseB"
CKPT = Path("data/checkpoints/random0/seed0/baseB.pt")
# One thread, as the Snakemake job (the smoke profile's compute.threads) and the one-core DVC run below:
# the thread count changes the last bits of the numbers, and every run here is compared to one reference.
TRAIN = ["transferability", "--params", "params.yaml", "--threads", "1", "train", "--split", "random0", "--seed",
         "0", "--variant", "baseB"]
ONE_CORE = ["taskset", "-c", str(min(os.sched_getaffinity(0)))]


@pytest.fixture(scope="module")
def params_file(tmp_path_factory) -> Path:
    """The smoke profile with enough epochs to be killed in many places, each epoch long enough
    (about 1 s here; 0.16 s with 150 images once training got faster) that a kill up to 0.4 s after
    a checkpoint lands inside the next epoch, not after the run has finished."""
    params = yaml.safe_load(SMOKE.read_text())
    params["train"].update(epochs=8, images_per_class=1000)
    f = tmp_path_factory.mktemp("params") / "params.yaml"
    f.write_text(yaml.safe_dump(params))
    return f


def prepared_workspace(path: Path, params_file: Path) -> Path:
    ws = make_workspace(path, params_file)
    for stage in (["prepare"], ["split", "--split", "random0"]):
        subprocess.run(["transferability", "--params", "params.yaml", *stage], cwd=ws, env=ENV, check=True,
                       capture_output=True)
    return ws


@pytest.fixture(scope="module")
def reference(tmp_path_factory, params_file) -> dict[str, bytes]:
    """The files of an uninterrupted run."""
    ws = prepared_workspace(tmp_path_factory.mktemp("uninterrupted"), params_file)
    subprocess.run(TRAIN, cwd=ws, env=ENV, check=True, capture_output=True)
    return {f: (ws / BASE / f).read_bytes() for f in ("metrics.json", "curve.csv", "model.pt")}


def wait_for_new_checkpoint(ws: Path, proc: subprocess.Popen, timeout: float = 60) -> bool:
    """Wait until ``proc`` has saved one more epoch; False if it finished first."""
    ckpt = ws / CKPT
    before = ckpt.stat().st_mtime_ns if ckpt.exists() else None
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if ckpt.exists() and ckpt.stat().st_mtime_ns != before:
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.005)
    raise TimeoutError("no checkpoint appeared")


def kill_group(proc: subprocess.Popen) -> int:
    os.killpg(proc.pid, signal.SIGKILL)
    return proc.wait()


def test_cli_job_killed_at_random_points_resumes_to_identical_files(tmp_path, params_file, reference):
    ws = prepared_workspace(tmp_path / "ws", params_file)
    rng = random.Random(2014)
    kills = 0
    for _ in range(5):  # mid-epoch: after this process saved an epoch, a random fraction into the next
        proc = subprocess.Popen(TRAIN, cwd=ws, env=ENV, stderr=subprocess.DEVNULL, start_new_session=True)
        if wait_for_new_checkpoint(ws, proc):
            time.sleep(rng.uniform(0.0, 0.4))
            kills += kill_group(proc) == -signal.SIGKILL
            assert not (ws / BASE / "metrics.json").exists()
    # inside a checkpoint write: the temporary is complete, the rename has not happened
    proc = subprocess.Popen(TRAIN, cwd=ws, env={**ENV, "TRANSFERABILITY_PAUSE_BEFORE_RENAME_S": "30"},
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 60
    while not list((ws / CKPT).parent.glob(".baseB.pt.*.tmp")):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.01)
    kills += kill_group(proc) == -signal.SIGKILL
    assert list((ws / CKPT).parent.glob(".baseB.pt.*.tmp")), "the killed write left its temporary"
    assert kills == 6
    subprocess.run(TRAIN, cwd=ws, env=ENV, check=True, capture_output=True)
    for name, data in reference.items():
        assert (ws / BASE / name).read_bytes() == data, name
    assert not list((ws / CKPT).parent.glob(".baseB.pt.*")), "leftover temporaries were not cleared"


def test_snakemake_rerun_incomplete_resumes_a_killed_job(tmp_path, params_file, reference):
    ws = prepared_workspace(tmp_path / "ws", params_file)
    target = f"{BASE}/metrics.json"
    subprocess.run(["snakemake", "--cores", "1", "data/splits/random0.json"], cwd=ws, env=ENV, check=True,
                   capture_output=True)
    proc = subprocess.Popen(["snakemake", "--cores", "1", target], cwd=ws, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    assert wait_for_new_checkpoint(ws, proc)
    time.sleep(0.2)
    assert kill_group(proc) == -signal.SIGKILL
    # a SIGKILLed Snakemake leaves its directory lock: --unlock, then --rerun-incomplete (its own advice)
    subprocess.run(["snakemake", "--unlock"], cwd=ws, env=ENV, check=True, capture_output=True)
    proc = subprocess.run(["snakemake", "--cores", "1", "--rerun-incomplete", target], cwd=ws, env=ENV,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    log = (ws / "data/logs/runs/random0/seed0/baseB.log").read_text()
    assert "resumed from epoch" in log
    for name, data in reference.items():
        assert (ws / BASE / name).read_bytes() == data, name


def test_dvc_repro_resumes_a_killed_stage(tmp_path, params_file, reference):
    ws = make_workspace(tmp_path / "ws", params_file)
    stage = "train_base@random0-0-baseB"
    proc = subprocess.Popen([*ONE_CORE, "dvc", "repro", stage], cwd=ws, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    assert wait_for_new_checkpoint(ws, proc, timeout=120)
    time.sleep(0.2)
    assert kill_group(proc) == -signal.SIGKILL
    proc = subprocess.run([*ONE_CORE, "dvc", "repro", stage], cwd=ws, env=ENV, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "resumed from epoch" in proc.stdout + proc.stderr
    for name, data in reference.items():
        assert (ws / BASE / name).read_bytes() == data, name


def kill_after_shards(ws: Path, args: list[str], shard_glob: str, count: int) -> str:
    """Run ``args`` with every atomic write slowed down, SIGKILL it once ``count`` shards exist."""
    proc = subprocess.Popen(args, cwd=ws, env={**ENV, "TRANSFERABILITY_PAUSE_BEFORE_RENAME_S": "0.3"},
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while len(list(ws.glob(shard_glob))) < count:
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.01)
    assert kill_group(proc) == -signal.SIGKILL
    done = subprocess.run(args, cwd=ws, env=ENV, capture_output=True, text=True, check=True)
    return done.stderr


def test_killed_prepare_and_features_resume_without_redoing_shards(tmp_path, params_file):
    from .test_store import make_tree

    make_tree(tmp_path / "images", classes=("a", "b", "c"), per_class=12)
    params = yaml.safe_load(params_file.read_text())
    params["dataset"].update(source="imagefolder", root=str(tmp_path / "images"), name="tree", image_size=28,
                             channels=1, shard_images=4)
    params["features"].update(shard_images=4, targets=["digits"])
    params["train"].update(epochs=1)
    f = tmp_path / "params.yaml"
    f.write_text(yaml.safe_dump(params))
    ref, ws = prepared_workspace(tmp_path / "ref", f), make_workspace(tmp_path / "ws", f)
    prepare = ["transferability", "prepare"]
    err = kill_after_shards(ws, prepare, "data/prepared/.tree.shards/train/*/shard-*.json", 3)
    assert re.search(r"prepare train: resuming, [3-9] of 9 shards already done", err), err
    for name in ("train_images.npy", "test_images.npy", "train_labels.npy", "manifest.json"):
        assert (ws / "data/prepared/tree" / name).read_bytes() == (ref / "data/prepared/tree" / name).read_bytes()
    assert not (ws / "data/prepared/.tree.shards").exists()
    params["features"]["shard_images"] = 300
    f.write_text(yaml.safe_dump(params))
    for w in (ref, ws):
        (w / "params.yaml").write_text(f.read_text())
        subprocess.run(["transferability", "split", "--split", "random0"], cwd=w, env=ENV, check=True,
                       capture_output=True)
        subprocess.run(TRAIN[:-1] + ["baseA"], cwd=w, env=ENV, check=True, capture_output=True)
    feats = ["transferability", "features", "--split", "random0", "--seed", "0", "--network", "baseA",
             "--target", "digits"]
    subprocess.run(feats, cwd=ref, env=ENV, check=True, capture_output=True)
    err = kill_after_shards(ws, feats, "data/features/random0/seed0/baseA/.digits.shards/*/shard-*.npy", 2)
    assert re.search(r"resuming, [2-6] of 6 shards already done", err), err
    dump = "data/features/random0/seed0/baseA/digits"
    for name in ("features.npy", "labels.npy", "index.json"):
        assert (ws / dump / name).read_bytes() == (ref / dump / name).read_bytes(), name
