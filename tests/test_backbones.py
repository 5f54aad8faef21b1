"""ResNets and ViTs from timm, through the study's surgery: the same guarantees as the AlexNet family.

Per family: the units run timm's own forward; copied units equal the source; frozen units (weights and
BatchNorm statistics) are bit-identical after training; fine-tuned ones change; re-initialised ones
are a fresh network's; the three frozen-prefix modes write the same bytes; a base can be a weights file.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import timm
import torch

from transferability import stages
from transferability.errors import UserError
from transferability.features.activations import extract, unit_taps
from transferability.networks.architecture import unit_names
from transferability.networks.backbones import build_backbone, timm_kwargs, units
from transferability.networks.transfer import layer_prefix, make_network
from transferability.params import validate
from transferability.runs import Network

FAMILIES = {
    "resnet18": {"arch": "resnet18", "width": 0.125, "init": "kaiming", "dropout": 0.0},
    "vit_tiny": {"arch": "vit_tiny_patch16_224", "patch_size": 7, "init": "kaiming", "dropout": 0.0},
}
N = {"resnet18": 4, "vit_tiny": 6}  # a cut inside the network: blocks on both sides


def unit_state(net, k):
    return {name: t.clone() for name, t in net.state_dict().items() if name.startswith(layer_prefix(net, k))}


def same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(params=list(FAMILIES))
def family(request):
    return request.param


@pytest.fixture
def backbone_params(params, family):
    """The smoke profile on a narrow ResNet-18 or a ViT-Tiny with 7x7 patches."""
    params["model"] = dict(FAMILIES[family])
    top = len(unit_names(params["model"])) - 1
    params["experiment"]["layers"] = [1, N[family], top]
    params["embed"]["baselines"] = [unit_names(params["model"])[top - 1]]
    params["train"].update(images_per_class=12, epochs=1, batch_size=12)
    params["evaluate"].update(images_per_class=8, evals=2, k_best=1)
    return validate(params)


@pytest.mark.parametrize("model", [*FAMILIES.values(), {"arch": "resnet50", "width": 0.125},
                                   {"arch": "vit_small_patch16_224", "patch_size": 14}], ids=lambda m: m["arch"])
def test_units_run_timms_forward_bit_for_bit(model):
    model = {"init": "kaiming", "dropout": 0.0, **model}
    torch.manual_seed(0)
    net = build_backbone(model, 1, 5, 28)
    torch.manual_seed(0)
    ref = timm.create_model(model["arch"], **timm_kwargs(model, 1, 5, 28))
    assert net.unit_names == unit_names(model)
    assert net.state_dict().keys().__len__() == ref.state_dict().keys().__len__()
    x = torch.randn(4, 1, 28, 28)
    assert torch.equal(net.eval()(x), ref.eval()(x))


def test_a_resized_input_is_the_first_units_work():
    model = {**FAMILIES["vit_tiny"], "patch_size": 8, "input_size": 32}
    net = build_backbone(model, 1, 5, 28)
    assert net.layer(1)(torch.randn(2, 1, 28, 28)).shape == (2, 1 + 16, 192)  # 4x4 patches of the 32x32 input


@pytest.mark.usefixtures("workspace")
def test_surgery_copies_freezes_and_reinitialises_units(backbone_params, family):
    n = N[family]
    stages.train_network(backbone_params, "random0", 0, "baseA", None)
    base = torch.load("data/runs/random0/seed0/baseA/model.pt", weights_only=True)
    net = make_network(Network("random0", 0, "AnB", n), backbone_params["model"], 1, 5, 28, seed=7, source_state=base)
    fresh = make_network(Network("random0", 0, "baseB"), backbone_params["model"], 1, 5, 28, seed=7)
    for k in range(1, net.num_units + 1):
        mine, theirs = unit_state(net, k), {name: base[name] for name in unit_state(net, k)}
        if k <= n:
            assert same(mine, theirs), f"unit {k} should be copied"
        else:
            assert not same(mine, theirs) and same(mine, unit_state(fresh, k)), f"unit {k} should be fresh"

    before = {v: {k: unit_state(make_network(Network("random0", 0, v, n), backbone_params["model"], 1, 5, 28,
                                              seed=stages.run_seed(Network("random0", 0, v, n)), source_state=base),
                                 k) for k in range(1, net.num_units + 1)} for v in ("AnB", "AnB-ft")}
    for v in ("AnB", "AnB-ft"):
        stages.train_network(backbone_params, "random0", 0, v, n)
        after = torch.load(f"data/runs/random0/seed0/{v}/n{n}/model.pt", weights_only=True)
        for k in range(1, net.num_units + 1):
            trained = {name: after[name] for name in before[v][k]}
            if v == "AnB" and k <= n:  # weights and BatchNorm running statistics alike
                assert same(trained, before[v][k]), f"frozen unit {k} of A{n}B changed"
            else:
                assert not same(trained, before[v][k]), f"unit {k} of {v} n{n} did not train"
    if family == "resnet18":
        stats = [name for name in before["AnB"][1] if name.endswith("running_mean")]
        assert stats, "the stem's BatchNorm statistics are part of the copied unit"

    rnb = Network("random0", 0, "RnB", n)  # the random-filter control: its own fresh units 1..n, kept
    own = make_network(rnb, backbone_params["model"], 1, 5, 28, seed=stages.run_seed(rnb))
    stages.train_network(backbone_params, "random0", 0, "RnB", n)
    after = torch.load(f"data/runs/random0/seed0/RnB/n{n}/model.pt", weights_only=True)
    for k in range(1, net.num_units + 1):
        want = unit_state(own, k)
        assert same({name: after[name] for name in want}, want) == (k <= n), f"unit {k} of R{n}B"


@pytest.mark.usefixtures("workspace")
def test_every_frozen_prefix_mode_writes_the_same_bytes(tmp_path, backbone_params, family):
    stages.train_network(backbone_params, "random0", 0, "baseA", None)
    n, run = N[family], tmp_path / f"data/runs/random0/seed0/AnB/n{N[family]}"
    files = {}
    for mode in ("full", "no_grad", "cache"):
        backbone_params["compute"]["frozen_prefix"] = mode
        for f in (run / "metrics.json", tmp_path / f"data/checkpoints/random0/seed0/AnB/n{n}.pt"):
            f.unlink(missing_ok=True)
        stages.train_network(backbone_params, "random0", 0, "AnB", n)
        files[mode] = (run / "metrics.json").read_bytes(), (run / "model.pt").read_bytes()
        # a head with a 1x1 convolution (the ResNet's shortcut) is not cached: it runs no_grad, which is exact
        ran = "no_grad" if mode == "cache" and family == "resnet18" else mode
        assert json.loads((run / "timing.json").read_text())["frozen_prefix"] == ran
    assert files["full"] == files["no_grad"] == files["cache"]


@pytest.mark.usefixtures("workspace")
def test_a_pretrained_base_from_a_file_loads_and_transfers(tmp_path, backbone_params, family):
    """An 'ImageNet' source of our own: timm's model with 3 input channels and 10 classes, saved to disk."""
    model = backbone_params["model"]
    torch.manual_seed(3)
    source = timm.create_model(model["arch"], **timm_kwargs(model, 3, 10, 28))
    weights = tmp_path / "pretrained.pth"
    torch.save(source.state_dict(), weights)
    backbone_params["model"]["pretrained"] = {"A": str(weights)}
    backbone_params["experiment"]["variants"] = ["AnB", "AnB-ft"]
    backbone_params["experiment"]["dissimilar"]["splits"] = []
    validate(backbone_params)
    stages.train_network(backbone_params, "random0", 0, "baseA", None)
    meta = json.loads((tmp_path / "data/runs/random0/seed0/baseA/metrics.json").read_text())
    assert meta["pretrained"]["file"] == str(weights) and meta["classes"] == 10 and meta["top1"] is None
    n = N[family]
    stages.train_network(backbone_params, "random0", 0, "AnB", n)
    after = torch.load(tmp_path / f"data/runs/random0/seed0/AnB/n{n}/model.pt", weights_only=True)
    rgb = source.state_dict()
    first = source.pretrained_cfg["first_conv"]
    rgb[f"{first}.weight"] = rgb[f"{first}.weight"].sum(dim=1, keepdim=True)  # grayscale: the RGB filters summed
    gray = timm.create_model(model["arch"], **timm_kwargs(model, 1, 10, 28))
    gray.load_state_dict(rgb)
    expected = units(gray, model, 28)
    for k in range(1, n + 1):
        want = unit_state(expected, k)
        assert want and same({name: after[name] for name in want}, want), f"unit {k} is not the file's"

    dest = stages.features(backbone_params, "random0", 0, "baseA", "B")  # the estimators' source dump
    assert np.load(dest / "logits.npy").shape[1] == 10  # the file's own classes, for LEEP and NCE

    weights.unlink()
    (tmp_path / "data/runs/random0/seed0/baseA/metrics.json").unlink()
    with pytest.raises(UserError, match="pretrained weights .* not found.*nothing is downloaded"):
        stages.train_network(backbone_params, "random0", 0, "baseA", None)


def test_check_refuses_what_the_architecture_cannot_run(backbone_params, family):
    top = len(unit_names(backbone_params["model"])) - 1
    with pytest.raises(UserError, match=f"experiment.layers has n = {top + 1}, .* n runs over 1..{top}"):
        validate({**backbone_params, "experiment": {**backbone_params["experiment"], "layers": [1, top + 1]}})
    with pytest.raises(UserError, match="model.pretrained.A makes baseA a weights file .* BnA"):
        validate({**backbone_params, "model": {**backbone_params["model"], "pretrained": {"A": "x.pth"}},
                  "experiment": {**backbone_params["experiment"], "variants": ["AnB", "BnA"]}})
    with pytest.raises(UserError, match="model.init caffe is the AlexNet family's"):
        validate({**backbone_params, "model": {**backbone_params["model"], "init": "caffe"}})


def test_features_tap_every_unit_by_name(family):
    model = FAMILIES[family]
    net = build_backbone(model, 1, 5, 28)
    images = torch.randint(0, 255, (6, 1, 28, 28), dtype=torch.uint8).numpy()
    x, index = extract(net, unit_taps(net), images, [72.9], [90.0], 4)
    assert [i["layer"] for i in index] == list(unit_names(model))
    widths = {i["layer"]: i["stop"] - i["start"] for i in index}
    if family == "vit_tiny":
        assert widths["blocks.3"] == 2 * 192  # the class token and the mean patch token
    else:
        assert widths["layer4.1"] == 64  # 512 channels x 0.125, pooled
    assert widths[unit_names(model)[-1]] == 5 and x.shape == (6, sum(widths.values()))


def test_memory_requests_count_the_backbone_as_built(family):
    """Slurm's mem_mb for a backbone job: its parameters and the frozen head's output, as the real network has them."""
    from transferability.memory import _shapes
    from transferability.networks.prefix import split_prefix

    model = FAMILIES[family]
    shapes = _shapes(model, 1, 28, 5, N[family])
    net = build_backbone(model, 1, 5, 28).eval()
    assert shapes["params"] == sum(p.numel() for p in net.parameters())
    with torch.no_grad():
        assert shapes["head"] == split_prefix(net, N[family])[0](torch.zeros(1, 1, 28, 28))[0].numel()
    assert shapes["width"] == sum(t.shape[1] for t in [extract(net, unit_taps(net, list(range(1, net.num_units))),
                                                                torch.zeros(1, 1, 28, 28, dtype=torch.uint8).numpy(),
                                                                [0.0], [1.0], 1)[0]])
