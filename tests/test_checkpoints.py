"""Checkpoints: sealed against damage, loaded safely, device-independent, resumable on any device.

The fault tests damage real files the way disks and copies do (cut short, emptied, one bit flipped)
and check the run sets the file aside with one line and ends with the bytes of an undamaged run.
Tests marked ``cuda`` need a GPU; they are the GPU check of what the CPU tests cannot show."""

from __future__ import annotations

import json
import os
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from transferability import stages
from transferability.data.loader import HalfData, Streamed
from transferability.data.shards import sharded_rows
from transferability.errors import UserError
from transferability.files import checkpoints
from transferability.files.sealed import damage, intact, sealed_writer
from transferability.networks.models import build_model
from transferability.networks.prefix import PrefixCache
from transferability.training.loop import make_optimizer

SMALL = {"arch": "small", "width": 0.25, "init": "kaiming", "dropout": 0.5}
TRAIN = {"weight_decay": 0.0005, "lr": 0.01, "momentum": 0.9}
CKPT = Path("data/checkpoints/random0/seed0/baseB.pt")
RUN = Path("data/runs/random0/seed0/baseB")
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def flip_bit_in(path: Path, tensor: torch.Tensor) -> None:
    """Flip one bit in the middle of ``tensor``'s bytes where the file stores them."""
    raw = bytearray(path.read_bytes())
    at = raw.find(tensor.numpy().tobytes())
    assert at >= 0, "the tensor's bytes are not in the file"
    raw[at + tensor.numel() * tensor.element_size() // 2] ^= 0x10
    path.write_bytes(bytes(raw))


DAMAGE = {
    "empty": lambda p: p.write_bytes(b""),
    "truncated": lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
    "one bit flipped in a weight": lambda p: flip_bit_in(
        p, torch.load(p, weights_only=True)["model"]["layers.fc8.0.weight"]),
}


def test_a_sealed_file_tells_every_damage_and_is_set_aside(tmp_path, capsys):
    f = tmp_path / "x.bin"
    with sealed_writer(f) as out:
        out.write(b"payload " * 1000)
    assert damage(f) is None and intact(f, "never said")
    good = f.read_bytes()
    for kind, expect in (("empty", "empty"), ("truncated", "truncated"), ("one bit flipped", "damaged")):
        raw = bytearray(good)
        if kind == "empty":
            raw = bytearray()
        elif kind == "truncated":
            raw = raw[:-10]
        else:
            raw[100] ^= 1
        f.write_bytes(bytes(raw))
        assert expect in damage(f)
        assert not intact(f, "computing it again")
        assert not f.exists()
        line = capsys.readouterr().err.strip()
        assert re.fullmatch(rf"{re.escape(str(f))} is {expect}.*: set aside as x\.bin\.corrupt(\.\d)?; "
                            "computing it again", line), line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.bin.corrupt", "x.bin.corrupt.2", "x.bin.corrupt.3"]


@pytest.mark.parametrize("kind", DAMAGE)
@pytest.mark.usefixtures("workspace")
def test_a_damaged_final_checkpoint_is_set_aside_and_the_run_ends_identical(tmp_path, params, capsys, kind):
    """The job was killed after its last checkpoint, before its outputs; then the checkpoint got damaged."""
    stages.train_network(params, "random0", 0, "baseB", None)
    reference = {f: (RUN / f).read_bytes() for f in ("metrics.json", "model.pt", "curve.csv")}
    for f in ("metrics.json", "model.pt"):
        (RUN / f).unlink()
    DAMAGE[kind](CKPT)
    capsys.readouterr()
    stages.train_network(params, "random0", 0, "baseB", None)
    err = capsys.readouterr().err
    assert f"{CKPT} is " in err and "set aside as baseB.pt.corrupt; falling back to the previous epoch's " \
        "checkpoint, else to the start" in err, err
    assert "resumed from epoch" not in err and "Traceback" not in err
    assert (tmp_path / CKPT.with_name("baseB.pt.corrupt")).exists()
    for f, data in reference.items():
        assert (RUN / f).read_bytes() == data, f
    assert damage(CKPT) is None


@pytest.mark.usefixtures("workspace")
def test_a_checkpoint_that_would_run_code_is_refused_and_never_run(tmp_path, params, capsys):
    """A sealed, well-formed file whose pickle calls os.system (as one pulled from a remote could)."""
    stages.train_network(params, "random0", 0, "baseB", None)
    reference = (RUN / "metrics.json").read_bytes()
    (RUN / "metrics.json").unlink()
    marker = tmp_path / "code-ran"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    with sealed_writer(CKPT) as out:
        torch.save({"tag": Payload()}, out)
    capsys.readouterr()
    stages.train_network(params, "random0", 0, "baseB", None)
    err = capsys.readouterr().err
    assert not marker.exists(), "loading the checkpoint ran its code"
    assert f"{CKPT} cannot be loaded as plain tensors" in err and "set aside as baseB.pt.corrupt" in err, err
    assert (RUN / "metrics.json").read_bytes() == reference


@pytest.mark.usefixtures("workspace")
def test_a_model_file_that_is_not_plain_tensors_is_refused_in_one_line(params):
    stages.train_network(params, "random0", 0, "baseA", None)
    model = Path("data/runs/random0/seed0/baseA/model.pt")
    model.write_bytes(model.read_bytes()[:1000])
    with pytest.raises(UserError, match=r"cannot load data/runs/random0/seed0/baseA/model.pt: it is damaged or "
                                        r"holds more than tensors \(.*\); delete it and train baseA again"):
        stages.train_network(params, "random0", 0, "AnB", 3)


def test_feature_shards_are_sealed_and_a_damaged_one_is_computed_again(tmp_path, capsys):
    from transferability.data.shards import join_npy

    calls = []

    def make(start: int, stop: int) -> np.ndarray:
        calls.append(start)
        return np.arange(start * 3, stop * 3, dtype=np.float32).reshape(-1, 3)

    files = sharded_rows(tmp_path / "work", "k", 10, 4, make, "rows")
    assert calls == [0, 4, 8]
    whole = tmp_path / "whole.npy"
    assert join_npy(files, whole) == (10, 3)
    assert np.array_equal(np.load(whole), make(0, 10))
    want = whole.read_bytes()
    files[1].write_bytes(files[1].read_bytes()[:-40])  # cut short, as a full disk or a killed copy leaves it
    calls.clear()
    capsys.readouterr()
    files = sharded_rows(tmp_path / "work", "k", 10, 4, make, "rows")
    err = capsys.readouterr().err
    assert calls == [4]
    assert f"{files[1]} is truncated or not sealed" in err and "computing it again" in err
    assert "rows: resuming, 2 of 3 shards already done" in err
    join_npy(files, whole)
    assert whole.read_bytes() == want


def test_momentum_buffers_follow_their_parameters_device():
    """A checkpoint is loaded on the CPU; the network may live elsewhere (here `meta`, where any
    mixing of devices fails as it does between the CPU and a GPU)."""
    net = build_model(SMALL, 1, 5, 28, seed=0)
    opt = make_optimizer(net, TRAIN)
    net(torch.randn(4, 1, 28, 28)).sum().backward()
    opt.step()
    state = opt.state_dict()
    other = build_model(SMALL, 1, 5, 28, seed=0).to("meta")
    resumed = make_optimizer(other, TRAIN)
    resumed.load_state_dict(state)
    for group, bufs in zip(resumed.param_groups, resumed.buffers, strict=True):
        assert [b.device.type for b in bufs] == [p.device.type for p in group["params"]] == ["meta"] * len(bufs)
    for p in other.parameters():
        p.grad = torch.zeros_like(p)
    resumed.step()  # on the old code: "Tensor on device cpu is not on the expected device meta"


class FakeCards:
    """Stands in for torch.cuda (no GPU here): one generator state per card, by index."""

    def __init__(self) -> None:
        self.states = {0: torch.tensor([0], dtype=torch.uint8), 1: torch.tensor([1], dtype=torch.uint8)}

    def get_rng_state(self, device: torch.device) -> torch.Tensor:
        return self.states[torch.device(device).index].clone()

    def set_rng_state(self, state: torch.Tensor, device: torch.device) -> None:
        self.states[torch.device(device).index] = state.clone()


def test_the_rng_of_the_device_used_is_saved_and_restored(monkeypatch):
    cpu = torch.device("cpu")
    states = checkpoints.rng_states(cpu)
    assert list(states) == ["cpu"]
    first = torch.rand(5)
    checkpoints.set_rng_states(states, cpu)
    assert torch.equal(torch.rand(5), first)

    cards = FakeCards()
    monkeypatch.setattr(torch, "get_device_module", lambda kind: cards if kind == "cuda" else None)
    states = checkpoints.rng_states(torch.device("cuda", 1))
    assert list(states) == ["cpu", "cuda"] and states["cuda"].tolist() == [1]  # card 1's, not card 0's
    cards.states[1] = torch.tensor([9], dtype=torch.uint8)
    checkpoints.set_rng_states(states, torch.device("cuda", 1))
    assert cards.states[1].tolist() == [1] and cards.states[0].tolist() == [0]
    checkpoints.set_rng_states(states, torch.device("cuda", 0))  # resumed on another card of the same kind
    assert cards.states[0].tolist() == [1]


def storage_locations(path: Path) -> set[str]:
    """The device torch.save recorded for each storage in ``path`` (torch hands it to map_location)."""
    seen: set[str] = set()
    torch.load(path, weights_only=True, map_location=lambda storage, location: seen.add(location) or storage)
    return seen


@pytest.mark.usefixtures("workspace")
def test_model_and_checkpoint_hold_cpu_tensors_and_no_file_name(params):
    stages.train_network(params, "random0", 0, "baseB", None)
    for f in (RUN / "model.pt", CKPT):
        assert storage_locations(f) == {"cpu"}, f
        with zipfile.ZipFile(f) as z:
            assert {n.split("/")[0] for n in z.namelist()} == {"archive"}, "a temporary's name got into the file"
    ckpt = torch.load(CKPT, weights_only=True)
    assert set(ckpt) == {"tag", "model", "optimizer", "state", "rng", "data_rng"} and list(ckpt["rng"]) == ["cpu"]


def meta_half(streamed: bool) -> HalfData:
    """A half whose tensors live on `meta`: any copy back to the host fails there, as a sync would cost on a GPU."""
    images = np.random.default_rng(0).integers(0, 256, (40, 1, 28, 28), dtype=np.uint8)
    x = Streamed(images, np.arange(40)) if streamed else torch.from_numpy(images)
    y = torch.arange(40) % 4
    data = HalfData(x, y, x, y, torch.full((1, 1, 1, 1), 100.0), torch.full((1, 1, 1, 1), 50.0), list("abcd"))
    return data.to(torch.device("meta"))


@pytest.mark.parametrize("streamed", [False, True])
@pytest.mark.parametrize("crop", [None, 24])
def test_the_step_path_reads_nothing_back_from_the_device(streamed, crop):
    from transferability.training.loop import step_batches

    data = meta_half(streamed)
    gen = torch.Generator().manual_seed(0)
    order = torch.randperm(40, generator=gen)
    steps = list(step_batches(data, None, order, 16, crop, True, gen, True))
    side = crop or 28
    assert [tuple(x.shape) for x, _ in steps] == [(16, 1, side, side)] * 2 + [(8, 1, side, side)]
    assert all(x.device.type == "meta" and y.device.type == "meta" for x, y in steps)
    assert order.device.type == "cpu"


def test_the_cached_step_path_reads_nothing_back_from_the_device():
    from transferability.training.loop import step_batches

    data = meta_half(False)
    cache = PrefixCache(torch.nn.Sequential(), torch.empty(80, 7, device="meta"), torch.empty(40, 7, device="meta"), 40)
    gen = torch.Generator().manual_seed(0)
    steps = list(step_batches(data, cache, torch.randperm(40, generator=gen), 16, None, True, gen, False))
    assert [tuple(x.shape) for x, _ in steps] == [(16, 7), (16, 7), (8, 7)]
    assert all(x.device.type == "meta" for x, _ in steps)


def test_the_step_path_draws_what_the_loop_drew_before():
    """The same crops, flips and order as the old loop, which drew them in this sequence on the CPU."""
    from transferability.data.loader import make_batch
    from transferability.training.loop import step_batches

    x = torch.randint(0, 256, (40, 1, 28, 28), dtype=torch.uint8)
    y = torch.arange(40) % 4
    data = HalfData(x, y, x, y, torch.full((1, 1, 1, 1), 100.0), torch.full((1, 1, 1, 1), 50.0), list("abcd"))
    gen = torch.Generator().manual_seed(5)
    got = list(step_batches(data, None, torch.randperm(40, generator=gen), 16, 24, True, gen, False))
    gen = torch.Generator().manual_seed(5)
    order = torch.randperm(40, generator=gen)
    for (gx, gy), a in zip(got, range(0, 40, 16), strict=True):
        idx = order[a : a + 16]
        assert torch.equal(gx, make_batch(x[idx], data, 24, True, gen)) and torch.equal(gy, y[idx])


@cuda
@pytest.mark.usefixtures("workspace")
def test_gpu_step_path_never_synchronises(params):
    from transferability.data.loader import half_data
    from transferability.data.store import load_store
    from transferability.runs import prepared_path
    from transferability.training.loop import step_batches

    store = load_store(prepared_path(params))
    split = json.loads(Path("data/splits/random0.json").read_text())
    device = torch.device("cuda", 0)
    for resident in (16, 0):
        data = half_data(store, split, "B", 40, 40, resident).to(device)
        net = build_model(SMALL, 1, 5, 24, seed=0).to(device)
        opt = make_optimizer(net, TRAIN)
        gen = torch.Generator().manual_seed(0)
        torch.cuda.set_sync_debug_mode("error")
        try:
            for x, y in step_batches(data, None, torch.randperm(len(data.x_train), generator=gen), 32, 24, True,
                                     gen, True):
                loss = torch.nn.functional.cross_entropy(net(x), y)
                net.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        finally:
            torch.cuda.set_sync_debug_mode("default")


@cuda
@pytest.mark.usefixtures("workspace")
def test_gpu_model_file_has_the_bytes_of_the_same_weights_saved_from_the_cpu(tmp_path, params):
    params["compute"]["device"] = "cuda"
    params["compute"]["gpu_lock_dir"] = str(tmp_path / "locks")
    stages.train_network(params, "random0", 0, "baseB", None)
    saved = (RUN / "model.pt").read_bytes()
    assert storage_locations(RUN / "model.pt") == {"cpu"}
    weights = torch.load(RUN / "model.pt", weights_only=True)
    net = build_model(SMALL, 1, 5, 28, seed=0).to(torch.device("cuda", torch.cuda.device_count() - 1))
    net = net.to(memory_format=torch.channels_last)
    net.load_state_dict(weights)
    again = tmp_path / "again.pt"
    with open(again, "wb") as f:
        torch.save(checkpoints.on_cpu(net.state_dict()), f)
    assert again.read_bytes() == saved


def test_a_gpu_runs_tag_and_metrics_leave_the_thread_count_out():
    """Before, a GPU run's checkpoint tag held compute.threads: a job killed under Slurm with 4 CPUs and
    rerun with 2 started again from epoch 0, though on a GPU the thread count changes no number."""
    from transferability.provenance import digest
    from transferability.stages import compute_identity

    compute = {"device": "cuda", "threads": 4, "channels_last": True, "precision": "bfloat16", "compile": False,
               "gpu_lock_dir": "/tmp/locks", "eval_batch": 250}
    cpu = compute_identity(compute, "cpu")  # the CPU's metrics.json: the same keys, in the same order, as before
    assert cpu == {"threads": 4, "channels_last": True, "precision": "bfloat16", "compile": False}
    assert list(cpu) == ["threads", "channels_last", "precision", "compile"]
    assert digest(compute_identity({**compute, "threads": 2}, "cpu")) != digest(cpu)
    gpu = [compute_identity({**compute, "threads": t}, "cuda") for t in (4, 2)]
    assert gpu[0] == gpu[1] == {"channels_last": True, "precision": "bfloat16", "compile": False}
    assert digest(compute_identity({**compute, "precision": "float32"}, "cuda")) != digest(gpu[0])
