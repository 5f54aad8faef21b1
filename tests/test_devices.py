"""The per-GPU lock allocator, with more jobs than (simulated) cards and a killed holder."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time

import pytest

from transferability.devices import claim_gpu, resolve_device
from transferability.errors import UserError


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


def test_cuda_requested_without_a_gpu_is_a_clear_error(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(UserError, match="compute.device is 'cuda' but torch finds no CUDA device"):
        resolve_device("cuda", tmp_path)
    assert resolve_device("auto", tmp_path).type == "cpu"


def test_locks_are_named_by_the_physical_card(tmp_path, monkeypatch):
    """Two Slurm jobs granted cards 3 and 5 each see cuda:0, and must not wait for each other."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    assert claim_gpu(1, tmp_path, wait_s=0.05, timeout_s=1) == 0
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5")
    assert claim_gpu(1, tmp_path, wait_s=0.05, timeout_s=1) == 0  # gpu3.lock is held, gpu5.lock is free
    assert sorted(f.name for f in tmp_path.glob("*.lock")) == ["gpu3.lock", "gpu5.lock"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    with pytest.raises(TimeoutError):
        claim_gpu(1, tmp_path, wait_s=0.05, timeout_s=0.3)
