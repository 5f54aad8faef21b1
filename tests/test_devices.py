"""The per-GPU lock allocator, with more jobs than (simulated) cards and a killed holder."""

from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import signal
import socket
import tempfile
import time
from pathlib import Path

import pytest
import torch

from transferability import params as tparams
from transferability import stages
from transferability.errors import UserError
from transferability.training import devices
from transferability.training.devices import (
    card_names,
    claim_gpu,
    driver_version,
    lock_folder,
    no_gpu_reason,
    resolve_device,
    setup,
)

from .conftest import ROOT


def hold(lock_dir, count, hold_s, queue):
    index = claim_gpu(count, lock_dir, wait_s=0.05)
    queue.put((os.getpid(), index, time.monotonic()))
    time.sleep(hold_s)


def test_jobs_get_distinct_cards_and_wait_when_all_are_taken(tmp_path):
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    procs = [ctx.Process(target=hold, args=(tmp_path, 2, 1.0, q)) for _ in range(4)]
    for p in procs:
        p.start()
    got = [q.get(timeout=20) for _ in procs]
    for p in procs:
        p.join()
    first_two = sorted(got, key=lambda g: g[2])[:2]
    assert sorted(i for _, i, _ in first_two) == [0, 1]  # two cards, two different ones
    assert sorted(i for _, i, _ in got) == [0, 0, 1, 1]   # the others waited for a free card
    later = sorted(got, key=lambda g: g[2])[2:]
    assert all(t - first_two[0][2] > 0.5 for _, _, t in later)


def test_a_killed_job_releases_its_card(tmp_path):
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    victim = ctx.Process(target=hold, args=(tmp_path, 1, 60, q))
    victim.start()
    q.get(timeout=20)
    with pytest.raises(TimeoutError):
        claim_gpu(1, tmp_path, wait_s=0.05, timeout_s=0.3)
    os.kill(victim.pid, signal.SIGKILL)
    victim.join()
    assert claim_gpu(1, tmp_path, wait_s=0.05, timeout_s=5) == 0


def test_cuda_requested_without_a_gpu_says_why_in_one_line(tmp_path, capsys):
    """A CUDA build of torch that sees no device names its CUDA, the driver (here: none) and what torch said."""
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(UserError) as err:
        resolve_device("cuda", tmp_path)
    message = str(err.value)
    assert message.startswith("compute.device is 'cuda' but torch finds no CUDA device here (") and "\n" not in message
    assert message.endswith("); set compute.device: cpu (or auto), or install a torch build for this driver")
    if torch.version.cuda is None:
        assert f"torch {torch.__version__} is a CPU-only build" in message
    else:
        assert (f"torch {torch.__version__} is built for CUDA {torch.version.cuda} and "
                "torch.cuda.is_available() is False; NVIDIA driver: ") in message
        assert (driver_version() or "none found (/proc/driver/nvidia/version is missing)") in message
    capsys.readouterr()
    assert resolve_device("auto", tmp_path).type == "cpu"
    said = capsys.readouterr().err.splitlines()
    if torch.version.cuda is None:
        assert said == []  # a CPU-only build on a CPU machine: nothing to explain
    else:
        assert len(said) == 1
        assert said[0].startswith(f"compute.device auto: no usable GPU, training on the CPU ({no_gpu_reason()}")


def test_the_driver_version_is_read_from_proc(tmp_path, monkeypatch):
    f = tmp_path / "version"
    f.write_text("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  570.133.20  Release Build  "
                 "(dvs-builder@U16-I3-B07-1-1)  Sat Mar 29 2025\nGCC version:  gcc version 12.2.0\n")
    monkeypatch.setattr(devices, "DRIVER_VERSION_FILE", f)
    assert driver_version() == "570.133.20"
    f.write_text("NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.14  Thu Feb 22 01:44:30 UTC 2024\n")
    assert driver_version() == "550.54.14"
    monkeypatch.setattr(devices, "DRIVER_VERSION_FILE", tmp_path / "none")
    assert driver_version() is None


def test_locks_are_named_by_the_physical_card(tmp_path, monkeypatch):
    """Without Slurm: two jobs given cards 3 and 5 by CUDA_VISIBLE_DEVICES each see cuda:0."""
    for var in SLURM_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    assert claim_gpu(1, tmp_path, wait_s=0.05, timeout_s=1) == 0
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5")
    assert claim_gpu(1, tmp_path, wait_s=0.05, timeout_s=1) == 0  # card 3's lock is held, card 5's is free
    host = socket.gethostname()
    assert sorted(f.name for f in tmp_path.glob("*.lock")) == [f"{host}-gpu3.lock", f"{host}-gpu5.lock"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    with pytest.raises(TimeoutError):
        claim_gpu(1, tmp_path, wait_s=0.05, timeout_s=0.3)


# What slurmd sets in a job granted one card (gres/gpu, ConstrainDevices=yes): the cgroup shows the
# job only its card, renumbered 0, so CUDA_VISIBLE_DEVICES is 0 in every job; the card's index on
# the node is in SLURM_JOB_GPUS (batch step) and SLURM_STEP_GPUS (srun steps).
SLURM_VARS = ("SLURM_JOB_ID", "SLURM_JOB_GPUS", "SLURM_STEP_GPUS", "GPU_DEVICE_ORDINAL", "CUDA_VISIBLE_DEVICES")


def slurm_job(job_id: int, card: int, step: bool) -> dict[str, str]:
    env = {"SLURM_JOB_ID": str(job_id), "SLURM_JOB_GPUS": str(card), "GPU_DEVICE_ORDINAL": "0",
           "CUDA_VISIBLE_DEVICES": "0"}
    return {**env, "SLURM_STEP_GPUS": str(card)} if step else env


def hold_as_job(lock_dir, env, queue):
    os.environ.update(env)
    index = claim_gpu(1, lock_dir, wait_s=0.05)
    queue.put((env["SLURM_JOB_GPUS"], index))
    time.sleep(600)  # holds its card until killed


@pytest.mark.parametrize("step", [False, True])
def test_slurm_jobs_granted_different_cards_do_not_wait_for_each_other(tmp_path, monkeypatch, step):
    """Two jobs on cards 3 and 5 of one node, a node-local lock folder: before, both took gpu0.lock
    and the second waited for the first to end; now both hold their own card at once."""
    for var in SLURM_VARS:
        monkeypatch.delenv(var, raising=False)
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    jobs = [ctx.Process(target=hold_as_job, args=(tmp_path, slurm_job(100 + c, c, step), q)) for c in (3, 5)]
    for p in jobs:
        p.start()
    try:
        got = sorted(q.get(timeout=60) for _ in jobs)  # the second claim would wait for the first job's end
    finally:
        for p in jobs:
            p.kill()
            p.join()
    assert got == [("3", 0), ("5", 0)]
    host = socket.gethostname()
    assert sorted(f.name for f in tmp_path.glob("*.lock")) == [f"{host}-gpu3.lock", f"{host}-gpu5.lock"]


def test_a_second_job_on_the_same_card_still_waits(tmp_path, monkeypatch):
    """Two jobs inside one allocation (Snakemake run under salloc) on the same card must take turns."""
    for var, value in slurm_job(7, 2, step=True).items():
        monkeypatch.setenv(var, value)
    assert claim_gpu(1, tmp_path, wait_s=0.05, timeout_s=1) == 0
    with pytest.raises(TimeoutError):
        claim_gpu(1, tmp_path, wait_s=0.05, timeout_s=0.3)


def test_card_names_prefer_the_uuid_then_the_index_on_the_host():
    slurm = slurm_job(1, 6, step=True)
    assert card_names(1, ["8f3a-11"], slurm, "n1") == ["GPU-8f3a-11"]  # torch's UUID: unique on any host
    assert card_names(1, [None], slurm, "n1") == ["n1-gpu6"]
    assert card_names(2, None, {"CUDA_VISIBLE_DEVICES": "GPU-aa,GPU-bb"}, "n1") == ["GPU-aa", "GPU-bb"]
    assert card_names(2, None, {"SLURM_JOB_GPUS": "4,6", "CUDA_VISIBLE_DEVICES": "0,1"}, "n1") == ["n1-gpu4", "n1-gpu6"]
    assert card_names(2, None, {"CUDA_VISIBLE_DEVICES": "2,3"}, "n1") == ["n1-gpu2", "n1-gpu3"]
    assert card_names(2, None, {}, "n1") == ["n1-gpu0", "n1-gpu1"]


@pytest.fixture
def torch_settings():
    """devices.setup changes process-wide torch settings: put them back."""
    saved = (torch.get_num_threads(), torch.backends.cuda.matmul.fp32_precision,
             torch.backends.cudnn.conv.fp32_precision)
    yield
    torch.set_num_threads(saved[0])
    torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision = saved[1:]


@pytest.mark.parametrize(("precision", "fp32"), [("float32", "ieee"), ("bfloat16", "ieee"), ("tf32", "tf32")])
def test_setup_makes_float32_mean_float32(tmp_path, torch_settings, precision, fp32):
    """torch's default runs cuDNN convolutions in TF32 on Ampere and later: float32 must switch that off."""
    # torch's own default in a fresh process (an earlier test's job may have set up this one)
    torch.backends.cudnn.conv.fp32_precision = torch.backends.cuda.matmul.fp32_precision = "tf32"
    device = setup({"device": "cpu", "threads": 1, "precision": precision, "gpu_lock_dir": str(tmp_path)})
    assert device.type == "cpu" and torch.get_num_threads() == 1
    assert torch.backends.cudnn.conv.fp32_precision == fp32 and torch.backends.cuda.matmul.fp32_precision == fp32


def test_the_declared_torch_range_admits_the_tested_versions():
    """pyproject pins no single torch: the GPU machines' 2.11 and this machine's install both fit."""
    import tomllib

    from packaging.requirements import Requirement

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    torch_req = next(Requirement(d) for d in deps if Requirement(d).name == "torch")
    installed = torch.__version__.split("+")[0]
    for version in ("2.11.0", installed):
        assert torch_req.specifier.contains(version), (str(torch_req), version)
    for version in ("2.10.0", "3.0.0"):  # untested: not admitted
        assert not torch_req.specifier.contains(version), (str(torch_req), version)


def test_a_waiting_job_says_once_which_cards_are_held_and_by_whom(tmp_path, monkeypatch, capsys):
    """Before, a job with every card held waited without a word, however long."""
    for var in SLURM_VARS:
        monkeypatch.delenv(var, raising=False)
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    holders = [ctx.Process(target=hold, args=(tmp_path, 2, 60, q)) for _ in range(2)]
    for p in holders:
        p.start()
    try:
        held = {index: pid for pid, index, _ in (q.get(timeout=20) for _ in holders)}
        capsys.readouterr()
        with pytest.raises(TimeoutError):  # ten tries or so
            claim_gpu(2, tmp_path, wait_s=0.05, timeout_s=0.5)
        said = capsys.readouterr().err.splitlines()
    finally:
        for p in holders:
            p.kill()
            p.join()
    host = socket.gethostname()
    assert len(said) == 1 and said[0].startswith(
        "waiting for a GPU: all 2 cards visible to this job are held by other processes (")
    for i in (0, 1):
        assert f"{tmp_path}/{host}-gpu{i}.lock: pid {held[i]} on {host}" in said[0]
    assert "--resources gpu=N with N > 2" in said[0]
    assert claim_gpu(2, tmp_path, wait_s=0.05, timeout_s=5) in (0, 1)  # the holders are gone


def test_a_waiting_job_says_when_torch_sees_fewer_cards_than_granted(tmp_path, monkeypatch, capsys):
    for var in SLURM_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,7")  # two cards granted, one visible to torch
    assert claim_gpu(1, tmp_path, wait_s=0.05, timeout_s=1) == 0
    capsys.readouterr()
    with pytest.raises(TimeoutError):
        claim_gpu(1, tmp_path, wait_s=0.05, timeout_s=0.3)
    said = capsys.readouterr().err.splitlines()
    assert len(said) == 1 and said[0].startswith("waiting for a GPU: the 1 card visible to this job is held")
    assert said[0].endswith("; CUDA_VISIBLE_DEVICES names 2 cards (2,7) but torch sees only 1")


def test_the_lock_folder_is_per_user_by_default():
    """One folder in /tmp for every user: the first user's folder (mode 755) refused everyone else's locks."""
    mine = Path(f"/tmp/transferability-gpu-locks-{os.getuid()}")
    assert lock_folder() == lock_folder(None) == mine
    for f in [ROOT / "params.yaml", *sorted((ROOT / "workflow" / "params").glob("*.yaml"))]:
        assert lock_folder(tparams.load(f)["compute"]["gpu_lock_dir"]) == mine, f
    assert lock_folder("/scratch/locks") == Path("/scratch/locks")


def claim_as_another_user(lock_dir, queue):
    if os.getuid() == 0:  # root writes anywhere: become nobody, as another user's job is
        os.setgid(65534)
        os.setuid(65534)
    try:
        queue.put(f"claimed {claim_gpu(1, lock_dir, wait_s=0.05, timeout_s=1)}")
    except Exception as exc:  # what the job would die of, sent back to the test
        queue.put(f"{type(exc).__name__}: {exc}")


def test_a_lock_folder_this_user_cannot_write_is_one_line_naming_the_fix():
    base = Path(tempfile.mkdtemp(dir="/tmp"))  # another user must reach it: not under pytest's 700 folder
    try:
        locks = base / "locks"
        locks.mkdir()
        for d in (base, locks):
            d.chmod(0o755 if os.getuid() == 0 else 0o555)  # made by root, or not writable by this user
        ctx = mp.get_context("fork")
        q = ctx.Queue()
        job = ctx.Process(target=claim_as_another_user, args=(locks, q))
        job.start()
        said = q.get(timeout=20)
        job.join()
    finally:
        for d in (base, base / "locks"):
            d.chmod(0o755)
        shutil.rmtree(base)
    assert said.startswith(f"UserError: cannot use the GPU lock folder {locks} (Permission denied: ") and (
        "set compute.gpu_lock_dir to a folder this user can write (default /tmp/transferability-gpu-locks-{uid}"
        in said) and "\n" not in said


def test_the_features_stage_runs_on_compute_device(params, tmp_path, monkeypatch):
    """features sets up as a training job does (devices.setup): before, it ran on the CPU whatever
    compute.device said (an ImageNet dump: ~1.3M CaffeNet forward passes on 4 threads)."""
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    monkeypatch.chdir(tmp_path)
    params["compute"]["device"] = "cuda"
    with pytest.raises(UserError, match=r"^compute.device is 'cuda' but torch finds no CUDA device here \("):
        stages.features(params, "random0", 0, "baseB", "B")
