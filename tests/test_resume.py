"""Kill and resume, for real: SIGKILL a training job at random points (mid-epoch, and inside a
checkpoint write), start it again, and get files byte-identical to an uninterrupted run. The same
through Snakemake (--rerun-incomplete) and through dvc repro."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from transferability import params as tparams

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
    params = tparams.resolve(SMOKE)
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


def mtime_ns(path: Path) -> int | None:
    """The file's mtime, or None while it is absent: one stat, no exists() first, because
    checkpoints.save moves the checkpoint aside (to ``.<name>.prev``) before it writes the next one,
    so the path can vanish between an exists() and a stat()."""
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return None


def wait_for_new_checkpoint(ws: Path, proc: subprocess.Popen, timeout: float = 60) -> bool:
    """Wait until ``proc`` has saved one more epoch; False if it finished first."""
    ckpt = ws / CKPT
    before = mtime_ns(ckpt)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if (now := mtime_ns(ckpt)) is not None and now != before:
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.005)
    raise TimeoutError("no checkpoint appeared")


def kill_group(proc: subprocess.Popen) -> int:
    os.killpg(proc.pid, signal.SIGKILL)
    return proc.wait()


REWRITER = """
import sys, time, torch
from pathlib import Path
from transferability.files import checkpoints
net = torch.nn.Linear(2, 2)
opt, gen, end = torch.optim.SGD(net.parameters(), lr=0.1), torch.Generator(), time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:
    checkpoints.save(Path(sys.argv[1]), "tag", net, opt, {}, gen, torch.device("cpu"))
"""


def test_polling_a_checkpoint_that_is_being_rewritten_never_raises(tmp_path):
    """The race a full `make test` once hit: checkpoints.save (the real one, in another process,
    as fast as it can) moves the checkpoint aside before writing the next, and the poll must read
    that as "not yet", never raise FileNotFoundError. A race, so a stress test: exists()-then-stat()
    raised here about once in 3 s of it."""
    (tmp_path / CKPT).parent.mkdir(parents=True)
    writer = subprocess.Popen([sys.executable, "-c", REWRITER, str(tmp_path / CKPT), "4"])
    seen = 0
    while wait_for_new_checkpoint(tmp_path, writer):
        seen += 1
    assert writer.returncode == 0 and seen > 1


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
    left = [p.name for p in (ws / CKPT).parent.glob(".baseB.pt.*") if p.name != ".baseB.pt.lock"]
    assert not left, f"leftover temporaries were not cleared: {left}"  # the one-job lock file stays: it holds no state


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
    params["estimators"]["methods"] = []  # no half B dumped: nothing for them to read
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


def flip_momentum_bit(path: Path) -> None:
    """Flip one bit of a momentum value where the checkpoint stores it (the issue's silent wrong result)."""
    import torch

    buf = next(b for b in torch.load(path, weights_only=True)["optimizer"]["momentum_buffers"][0] if b is not None)
    raw = bytearray(path.read_bytes())
    at = raw.find(buf.numpy().tobytes())
    assert at >= 0
    raw[at + buf.numel() * buf.element_size() // 2] ^= 0x10
    path.write_bytes(bytes(raw))


def test_a_damaged_checkpoint_falls_back_to_the_previous_epoch_and_ends_identical(tmp_path, params_file, reference):
    ws = prepared_workspace(tmp_path / "ws", params_file)
    proc = subprocess.Popen(TRAIN, cwd=ws, env=ENV, stderr=subprocess.DEVNULL, start_new_session=True)
    for _ in range(2):  # epochs 1 and 2 saved: the first is kept as the previous one
        assert wait_for_new_checkpoint(ws, proc)
    assert kill_group(proc) == -signal.SIGKILL
    import torch

    saved = torch.load(ws / CKPT, weights_only=True)["state"]["epoch"]
    flip_momentum_bit(ws / CKPT)
    done = subprocess.run(TRAIN, cwd=ws, env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"{CKPT} is damaged (its bytes do not match their sha256): set aside as baseB.pt.corrupt; falling " \
        "back to the previous epoch's checkpoint, else to the start" in done.stderr
    assert f"resumed from epoch {saved - 1} of 8" in done.stderr and "Traceback" not in done.stderr
    assert (ws / CKPT.with_name("baseB.pt.corrupt")).exists()
    assert not (ws / CKPT.with_name(".baseB.pt.prev")).exists(), "the finished run keeps no previous checkpoint"
    for name, data in reference.items():
        assert (ws / BASE / name).read_bytes() == data, name


def test_a_truncated_feature_shard_is_computed_again(tmp_path, params_file):
    params = yaml.safe_load(params_file.read_text())
    params["features"].update(shard_images=300, targets=["digits"])
    params["estimators"]["methods"] = []  # they read the dumps on half B, which this test does not make
    params["train"].update(epochs=1)
    f = tmp_path / "params.yaml"
    f.write_text(yaml.safe_dump(params))
    ref, ws = prepared_workspace(tmp_path / "ref", f), prepared_workspace(tmp_path / "ws", f)
    feats = ["transferability", "features", "--split", "random0", "--seed", "0", "--network", "baseA",
             "--target", "digits"]
    for w in (ref, ws):
        subprocess.run(TRAIN[:-1] + ["baseA"], cwd=w, env=ENV, check=True, capture_output=True)
    subprocess.run(feats, cwd=ref, env=ENV, check=True, capture_output=True)
    shards = "data/features/random0/seed0/baseA/.digits.shards/*/shard-*.npy"
    proc = subprocess.Popen(feats, cwd=ws, env={**ENV, "TRANSFERABILITY_PAUSE_BEFORE_RENAME_S": "0.3"},
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while len(list(ws.glob(shards))) < 2:
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.01)
    assert kill_group(proc) == -signal.SIGKILL
    first = sorted(ws.glob(shards))[0]
    first.write_bytes(first.read_bytes()[:1000])
    done = subprocess.run(feats, cwd=ws, env=ENV, capture_output=True, text=True)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert f"{first.relative_to(ws)} is truncated or not sealed" in done.stderr
    assert "computing it again" in done.stderr
    dump = "data/features/random0/seed0/baseA/digits"
    for name in ("features.npy", "labels.npy", "index.json"):
        assert (ws / dump / name).read_bytes() == (ref / dump / name).read_bytes(), name


def test_a_second_job_on_the_same_network_waits_and_ends_with_the_same_files(tmp_path, params_file, reference):
    """Snakemake killed alone leaves its job running; a rerun starts a second job on the same network."""
    ws = prepared_workspace(tmp_path / "ws", params_file)
    first = subprocess.Popen(TRAIN, cwd=ws, env=ENV, stderr=subprocess.PIPE, text=True, start_new_session=True)
    assert wait_for_new_checkpoint(ws, first)
    second = subprocess.Popen(TRAIN, cwd=ws, env=ENV, stderr=subprocess.PIPE, text=True, start_new_session=True)
    err_first, err_second = first.communicate(timeout=300)[1], second.communicate(timeout=300)[1]
    assert first.returncode == 0 and second.returncode == 0, err_first[-2000:] + err_second[-2000:]
    assert re.search(rf"baseB: another job \(pid {first.pid} on .+\) is training this network \({CKPT}\); "
                     "waiting for it to end, then this job takes up its checkpoint", err_second), err_second
    assert "resumed from epoch 8 of 8" in err_second  # it trained nothing itself
    for name, data in reference.items():
        assert (ws / BASE / name).read_bytes() == data, name


@pytest.mark.parametrize("sig, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_an_interrupted_job_says_so_in_one_line_and_resumes(tmp_path, params_file, reference, sig, status):
    ws = prepared_workspace(tmp_path / "ws", params_file)
    proc = subprocess.Popen(TRAIN, cwd=ws, env=ENV, stderr=subprocess.PIPE, text=True, start_new_session=True)
    assert wait_for_new_checkpoint(ws, proc)
    time.sleep(0.2)
    os.killpg(proc.pid, sig)
    err = proc.communicate(timeout=60)[1]
    assert proc.returncode == status, err
    last = err.strip().splitlines()[-1]
    assert last == (f"interrupted ({sig.name}): the work so far is kept (finished epochs, shards and outputs); "
                    "run the same command again to resume"), err
    assert "Traceback" not in err
    done = subprocess.run(TRAIN, cwd=ws, env=ENV, capture_output=True, text=True, check=True)
    assert "resumed from epoch" in done.stderr
    for name, data in reference.items():
        assert (ws / BASE / name).read_bytes() == data, name


def test_ctrl_c_in_a_prepare_with_worker_processes_prints_one_line(tmp_path, params_file):
    from .test_store import make_tree

    make_tree(tmp_path / "images", classes=("a", "b", "c"), per_class=12)
    params = yaml.safe_load(params_file.read_text())
    params["dataset"].update(source="imagefolder", root=str(tmp_path / "images"), name="tree", image_size=28,
                             channels=1, shard_images=4)
    params["compute"]["threads"] = 2
    f = tmp_path / "params.yaml"
    f.write_text(yaml.safe_dump(params))
    ws = make_workspace(tmp_path / "ws", f)
    proc = subprocess.Popen(["transferability", "prepare"], cwd=ws, stderr=subprocess.PIPE, text=True,
                            env={**ENV, "TRANSFERABILITY_PAUSE_BEFORE_RENAME_S": "0.3"}, start_new_session=True)
    deadline = time.monotonic() + 120
    while not list(ws.glob("data/prepared/.tree.shards/train/*/shard-*.json")):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C does: the whole group, workers included
    err = proc.communicate(timeout=60)[1]
    assert proc.returncode == 130 and "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert err.strip().splitlines()[-1].startswith("interrupted (SIGINT): the work so far is kept")
    done = subprocess.run(["transferability", "prepare"], cwd=ws, env=ENV, capture_output=True, text=True, check=True)
    assert "shards already done" in done.stderr


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA device")
def test_gpu_run_killed_and_resumed_is_identical(tmp_path, params_file):
    """On a GPU: momentum buffers back on the card (else the first step fails) and the card's generator
    restored (else dropout masks restart), so the resumed run's files are the uninterrupted run's."""
    params = yaml.safe_load(params_file.read_text())
    params["compute"].update(device="cuda", gpu_lock_dir=str(tmp_path / "locks"))
    f = tmp_path / "params.yaml"
    f.write_text(yaml.safe_dump(params))
    ref, ws = prepared_workspace(tmp_path / "ref", f), prepared_workspace(tmp_path / "ws", f)
    subprocess.run(TRAIN, cwd=ref, env=ENV, check=True, capture_output=True)
    # every write held 0.5 s, so the kill lands before the fast GPU run has finished
    proc = subprocess.Popen(TRAIN, cwd=ws, env={**ENV, "TRANSFERABILITY_PAUSE_BEFORE_RENAME_S": "0.5"},
                            stderr=subprocess.DEVNULL, start_new_session=True)
    assert wait_for_new_checkpoint(ws, proc)
    assert kill_group(proc) == -signal.SIGKILL
    done = subprocess.run(TRAIN, cwd=ws, env=ENV, capture_output=True, text=True)
    assert done.returncode == 0 and "resumed from epoch" in done.stderr, done.stderr[-2000:]
    for name in ("metrics.json", "curve.csv", "model.pt"):
        assert (ws / BASE / name).read_bytes() == (ref / BASE / name).read_bytes(), name
