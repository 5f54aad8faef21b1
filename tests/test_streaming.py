"""The ImageNet-scale data path: halves streamed from the store, crops as one gather, bfloat16.

A half too large for memory is read batch by batch (data.Streamed) and must train exactly as the
same half held in memory, and the features stage reads its target half a slice at a time; the
vectorised random crop must draw and cut exactly as slicing does."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from transferability import runs, stages
from transferability.data.loader import HalfData, Rows, Streamed, batches, half_data, make_batch
from transferability.data.store import load_store


def sliced_crops(x: torch.Tensor, data: HalfData, crop: int, gen: torch.Generator) -> torch.Tensor:
    """The reference: one slice per image, then flips, as the loop did before the gather."""
    offs = torch.randint(0, x.shape[-1] - crop + 1, (len(x), 2), generator=gen).tolist()
    x = torch.stack([im[..., i : i + crop, j : j + crop] for im, (i, j) in zip(x, offs, strict=True)])
    x = (x.float() - data.mean) / data.std
    flip = torch.rand(len(x), generator=gen) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)


@pytest.mark.parametrize("channels_last", [False, True])
def test_random_crops_are_one_gather_equal_to_slicing(channels_last):
    x = torch.randint(0, 256, (37, 3, 32, 32), dtype=torch.uint8)
    data = HalfData(x, torch.zeros(37), x, torch.zeros(37), torch.tensor([120.0, 110, 100]).view(1, 3, 1, 1),
                    torch.tensor([60.0, 50, 40]).view(1, 3, 1, 1), [])
    got = make_batch(x, data, 27, True, torch.Generator().manual_seed(3), channels_last)
    want = sliced_crops(x, data, 27, torch.Generator().manual_seed(3))
    assert got.shape == (37, 3, 27, 27) and torch.equal(got, want)
    assert got.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def test_a_streamed_part_gives_the_rows_of_the_resident_one(tmp_path):
    images = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=np.uint8, shape=(50, 1, 4, 4))
    images[:] = np.arange(50 * 16, dtype=np.uint8).reshape(50, 1, 4, 4)
    rows = np.array([3, 7, 8, 20, 21, 40, 49])
    streamed, resident = Streamed(images, rows), torch.from_numpy(images[rows])
    assert streamed.shape == resident.shape and len(streamed) == 7
    pick = torch.tensor([6, 0, 3, 3, 1])
    assert torch.equal(streamed[pick], resident[pick]) and torch.equal(streamed[2:5], resident[2:5])
    order = torch.randperm(7, generator=torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip(batches(streamed, order, 3), batches(resident, order, 3),
                                                 strict=True))


@pytest.mark.parametrize("crop", [None, 24])
@pytest.mark.usefixtures("workspace")
def test_a_streamed_half_trains_to_the_same_bits(tmp_path, params, crop):
    params["train"]["crop"] = crop
    run, ckpt = tmp_path / "data/runs/random0/seed0/baseB", tmp_path / "data/checkpoints/random0/seed0/baseB.pt"
    files = {}
    for resident_gb in (16, 0):  # 0: every part is streamed from the store
        params["compute"]["resident_gb"] = resident_gb
        ckpt.unlink(missing_ok=True)
        stages.train_network(params, "random0", 0, "baseB", None)
        files[resident_gb] = (run / "metrics.json").read_bytes(), (run / "model.pt").read_bytes()
    assert files[16] == files[0]


@pytest.mark.usefixtures("workspace")
def test_bfloat16_autocast_trains_and_is_recorded(tmp_path, params):
    params["train"].update(images_per_class=150, epochs=3)
    run, ckpt = tmp_path / "data/runs/random0/seed0/baseB", tmp_path / "data/checkpoints/random0/seed0/baseB.pt"
    top1, weights = {}, {}
    for precision in ("float32", "bfloat16"):
        params["compute"]["precision"] = precision
        ckpt.unlink(missing_ok=True)
        stages.train_network(params, "random0", 0, "baseB", None)
        metrics = json.loads((run / "metrics.json").read_text())
        assert metrics["params"]["compute"]["precision"] == precision
        top1[precision], weights[precision] = metrics["top1_kbest"], (run / "model.pt").read_bytes()
    assert weights["bfloat16"] != weights["float32"]  # the forward passes really ran in bfloat16
    assert top1["float32"] > 0.5 and abs(top1["bfloat16"] - top1["float32"]) < 0.1


def test_mean_only_normalisation_keeps_caffes_scale(fmnist_store):
    split = {h: {"indices": idx, "names": [str(i) for i in idx]} for h, idx in (("A", [0, 1]), ("B", [2, 3]))}
    caffe = half_data(fmnist_store, split, "B", 10, 10, normalise="mean")
    ours = half_data(fmnist_store, split, "B", 10, 10)
    assert torch.equal(caffe.std, torch.ones_like(caffe.std)) and torch.equal(caffe.mean, ours.mean)
    x = make_batch(caffe.x_test, caffe, None, False, None)
    assert torch.equal(x, caffe.x_test.float() - caffe.mean) and x.abs().max() > 100  # 0..255 scale
    assert torch.allclose(make_batch(ours.x_test, ours, None, False, None) * ours.std, x)


@pytest.mark.usefixtures("workspace")
def test_a_target_half_is_read_from_the_store_a_slice_at_a_time(params):
    store = load_store(runs.prepared_path(params))
    split = stages.read_split("random0")
    target = stages.half_target(store, split, "B", params)
    data = half_data(store, split, "B", params["train"]["images_per_class"], params["evaluate"]["images_per_class"])
    whole = np.concatenate([data.x_train.numpy(), data.x_test.numpy()])  # what the stage held before
    assert isinstance(target.images, Rows) and all(isinstance(p, Streamed) for p in target.images.parts)
    assert target.images.shape == whole.shape and target.is_train.sum() == len(data.x_train)
    n, t = len(whole), len(data.x_train)
    for a, b in [(0, n), (0, 7), (t - 3, t + 5), (t, n), (n - 1, n + 10), (5, 5)]:  # across the parts' seam
        assert np.array_equal(target.images[a:b], whole[a:b])
