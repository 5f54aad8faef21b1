"""The streamed loader (data.Loader): reader threads, reused buffers, one copy per image, read-ahead.

Every test compares against the store's rows indexed directly (what a resident half gives), so
several readers, buffer reuse and read-ahead can change speed only, never a batch. Timings are
benchmarks/loader.py's."""

from __future__ import annotations

import threading
import tracemalloc
from concurrent.futures import wait

import numpy as np
import pytest
import torch

from transferability.data.loader import PREFETCH, HalfData, Loader, Streamed, batches
from transferability.training.loop import step_batches

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture
def store(tmp_path) -> np.ndarray:
    """A memory-mapped store file of 300 distinct 3x32x32 uint8 images (read-only, as load_store opens it)."""
    images = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=np.uint8, shape=(300, 3, 32, 32))
    images[:] = np.random.default_rng(0).integers(0, 256, images.shape, dtype=np.uint8)
    images.flush()
    return np.load(tmp_path / "x.npy", mmap_mode="r")


def want(images: np.ndarray, rows: np.ndarray, order: torch.Tensor, size: int) -> list[torch.Tensor]:
    return [torch.from_numpy(images[rows[order[a : a + size].numpy()]]) for a in range(0, len(order), size)]


def loader_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("loader")]


@pytest.mark.parametrize("size", [16, 25, 200])
def test_several_readers_give_the_batches_of_one(store, size):
    rows = np.sort(np.random.default_rng(1).choice(300, 170, replace=False))
    order = torch.randperm(170, generator=torch.Generator().manual_seed(2))
    expected = want(store, rows, order, size)
    for readers in (1, 2, 3, 7):
        got = [b.clone() for b in batches(Streamed(store, rows), order, size, readers)]
        assert len(got) == len(expected)
        assert all(torch.equal(g, e) for g, e in zip(got, expected, strict=True)), readers


def test_a_held_batch_survives_the_read_ahead_and_buffers_are_reused(store):
    """The step holds a batch while the readers fill every other buffer: it must not change. Exactly
    PREFETCH batches are read ahead (no more: their buffers are the loader's few), and an epoch of
    many batches cycles through PREFETCH + 1 buffers."""
    rows = np.arange(300)
    order = torch.randperm(300, generator=torch.Generator().manual_seed(3))
    expected = want(store, rows, order, 20)
    loader = Loader(Streamed(store, rows), order, 20, readers=2)
    assert len(loader.buffers) == PREFETCH + 1 >= 3
    buffers = {b.data_ptr() for b in loader.buffers}
    seen = set()
    for i, batch in enumerate(loader):
        wait([f for _, futures in loader.pending for f in futures])  # the readers have done all they may
        assert len(loader.pending) == min(PREFETCH, len(expected) - i - 1)
        assert all(f.done() for _, futures in loader.pending for f in futures)
        assert torch.equal(batch, expected[i]), i  # untouched by the batches read meanwhile
        seen.add(batch.data_ptr())
    assert seen == buffers and len(expected) == 15


def test_each_image_is_copied_once(store):
    """No batch-sized array is made on the way: the store's bytes go straight into the loader's
    buffer, which is what the step gets (today's main made two per batch: a gathered temporary and
    the batch it was scattered into)."""
    rows = np.arange(300)
    order = torch.randperm(300, generator=torch.Generator().manual_seed(4))
    size = 100
    batch_bytes = size * store[0].nbytes  # 307 kB
    expected = want(store, rows, order, size)
    for readers in (1, 2):
        loader = Loader(Streamed(store, rows), order, size, readers)
        buffers = {b.data_ptr() for b in loader.buffers}
        tracemalloc.start()
        try:
            for batch, e in zip(loader, expected, strict=True):
                assert batch.data_ptr() in buffers and torch.equal(batch, e)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < batch_bytes / 4, (readers, peak)  # numpy's arrays are traced: none the size of a batch
    pick = order[:size]  # indexing a streamed part (evaluation, the features stage): one copy too
    tracemalloc.start()
    try:
        one = Streamed(store, rows)[pick]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert torch.equal(one, expected[0]) and peak < batch_bytes / 4


def test_readers_stop_when_the_step_stops(store):
    order = torch.randperm(300, generator=torch.Generator().manual_seed(5))
    epoch = batches(Streamed(store, np.arange(300)), order, 10, readers=3)
    next(epoch)
    assert loader_threads()
    epoch.close()  # a training loop that raised (a NaN loss, an interrupt) closes its batches
    assert not loader_threads()


def test_a_failed_read_reaches_the_step(store):
    rows = np.array([0, 1, 2, 300_000])  # past the store's end
    with pytest.raises(IndexError):
        list(batches(Streamed(store, rows), torch.arange(4), 2, readers=2))
    assert not loader_threads()


@pytest.mark.parametrize("crop", [None, 24])
def test_the_steps_of_a_streamed_half_with_several_readers_are_the_resident_ones(store, crop):
    rows = np.arange(0, 300, 3)
    y = torch.arange(100) % 7
    mean, std = torch.full((1, 3, 1, 1), 100.0), torch.full((1, 3, 1, 1), 50.0)
    resident = torch.from_numpy(store[rows])
    steps = {}
    for name, x, readers in (("resident", resident, 1), ("streamed", Streamed(store, rows), 3)):
        data = HalfData(x, y, x, y, mean, std, list("abcdefg"))
        gen = torch.Generator().manual_seed(6)
        steps[name] = list(step_batches(data, None, torch.randperm(100, generator=gen), 16, crop, True, gen, True,
                                        readers))
    assert len(steps["streamed"]) == 7
    for (xs, ys), (xr, yr) in zip(steps["streamed"], steps["resident"], strict=True):
        assert torch.equal(xs, xr) and torch.equal(ys, yr)


@cuda
def test_gpu_batches_wait_for_their_copy_and_buffers_for_the_gpu(store):
    """On a GPU: pinned buffers, and batches equal to the store's rows although the step's stream
    is kept busy (a sleep kernel) while the readers refill buffers whose copies are queued."""
    device = torch.device("cuda", torch.cuda.current_device())
    rows = np.arange(300)
    order = torch.randperm(300, generator=torch.Generator().manual_seed(7))
    expected = want(store, rows, order, 20)
    loader = Loader(Streamed(store, rows, device), order, 20, readers=2)
    assert all(b.is_pinned() for b in loader.buffers)
    got = []
    for batch in loader:
        torch.cuda._sleep(10_000_000)  # ~10 ms of the step's stream before it reads the batch
        got.append(batch.clone())
    assert all(g.device == device and torch.equal(g.cpu(), e) for g, e in zip(got, expected, strict=True))
