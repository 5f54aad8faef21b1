"""timm's ConvNeXt-Atto, added as a user adds a family (families/convnext.py and the schema's enum):
the same guarantees as the ResNets and ViTs of test_backbones.py.

Its units run timm's own forward; it has the units its file names; copied units equal the source,
frozen ones are bit-identical after training, fine-tuned ones change; params refuse an input it
cannot take; its memory request is the built network's, not the AlexNet family's arithmetic.
"""

from __future__ import annotations

import pytest
import timm
import torch

from transferability import stages
from transferability.errors import UserError
from transferability.features.activations import extract, unit_taps
from transferability.memory import _shapes
from transferability.networks.architecture import family, published, smallest_input, unit_names
from transferability.networks.backbones import build_backbone, timm_kwargs
from transferability.networks.prefix import split_prefix
from transferability.networks.transfer import make_network
from transferability.params import validate
from transferability.runs import Network

from .test_backbones import same, unit_state

MODEL = {"arch": "convnext_atto", "input_size": 32, "init": "kaiming", "dropout": 0.0}
N = 5  # stem and stage 0's blocks and stage 1's first (with its downsampling) copied


@pytest.fixture
def convnext_params(params):
    """The smoke profile on ConvNeXt-Atto, Fashion-MNIST's 28x28 images resized to 32x32 in the stem."""
    params["model"] = dict(MODEL)
    params["experiment"]["layers"] = [1, N, 13]
    params["embed"]["baselines"] = ["stages.3.1"]
    params["train"].update(images_per_class=12, epochs=1, batch_size=12)
    params["evaluate"].update(images_per_class=8, evals=2, k_best=1)
    return validate(params)


def test_units_are_the_stem_every_block_and_the_head_and_run_timms_forward():
    names = unit_names(MODEL)
    assert len(names) == 1 + 2 + 2 + 6 + 2 + 1 and names[:3] == ("stem", "stages.0.0", "stages.0.1")
    assert names[-2:] == ("stages.3.1", "head") and not published(MODEL) and family(MODEL).layers is None
    torch.manual_seed(0)
    net = build_backbone(MODEL, 1, 5, 32)
    torch.manual_seed(0)
    ref = timm.create_model("convnext_atto", pretrained=False, **timm_kwargs(MODEL, 1, 5, 32))
    assert net.unit_names == names and net.num_units == 14
    assert len(net.state_dict()) == len(ref.state_dict())
    x = torch.randn(3, 1, 32, 32)
    assert torch.equal(net.eval()(x), ref.eval()(x))


def test_the_smallest_input_is_what_the_built_network_takes():
    model = {k: v for k, v in MODEL.items() if k != "input_size"}
    assert smallest_input(model) == 32
    net = build_backbone(model, 1, 5, 32).eval()
    assert net(torch.zeros(1, 1, 32, 32)).shape == (1, 5)
    with pytest.raises(RuntimeError):
        net(torch.zeros(1, 1, 31, 31))


def test_params_refuse_what_convnext_cannot_run(params):
    params["model"] = {k: v for k, v in MODEL.items() if k != "input_size"}
    params["experiment"]["layers"] = [1, N]
    params["embed"]["baselines"] = []
    with pytest.raises(UserError, match="model.arch convnext_atto takes inputs of at least 32x32, but the fashion"):
        validate(params)
    with pytest.raises(UserError, match="model.patch_size is for vit_tiny_patch16_224, vit_small_patch16_224, "
                                        "not model.arch convnext_atto"):
        validate({**params, "model": {**MODEL, "patch_size": 4}})
    with pytest.raises(UserError, match="experiment.layers has n = 14, .* n runs over 1..13"):
        validate({**params, "model": MODEL, "experiment": {**params["experiment"], "layers": [1, 14]}})


@pytest.mark.usefixtures("workspace")
def test_surgery_copies_freezes_and_fine_tunes_units(convnext_params):
    stages.train_network(convnext_params, "random0", 0, "baseA", None)
    base = torch.load("data/runs/random0/seed0/baseA/model.pt", weights_only=True)
    before = {v: make_network(Network("random0", 0, v, N), MODEL, 1, 5, 28,
                              seed=stages.run_seed(Network("random0", 0, v, N)), source_state=base)
              for v in ("AnB", "AnB-ft")}
    fresh = make_network(Network("random0", 0, "baseB"), MODEL, 1, 5, 28, seed=stages.run_seed(Network(
        "random0", 0, "AnB", N)))
    for k in range(1, 15):
        mine = unit_state(before["AnB"], k)
        copied = same(mine, {name: base[name] for name in mine})
        assert copied == (k <= N), f"unit {k} copied: {copied}"
        assert same(mine, unit_state(fresh, k)) == (k > N), f"unit {k} should be fresh"
    for v in ("AnB", "AnB-ft"):
        stages.train_network(convnext_params, "random0", 0, v, N)
        after = torch.load(f"data/runs/random0/seed0/{v}/n{N}/model.pt", weights_only=True)
        for k in range(1, 15):
            was = unit_state(before[v], k)
            kept = same({name: after[name] for name in was}, was)
            assert kept == (v == "AnB" and k <= N), f"unit {k} of {v} n{N}: kept {kept}"


def test_features_and_memory_count_the_network_as_built():
    net = build_backbone(MODEL, 1, 5, 28).eval()
    images = torch.randint(0, 255, (4, 1, 28, 28), dtype=torch.uint8).numpy()
    x, index = extract(net, unit_taps(net), images, [72.9], [90.0], 4)
    widths = {i["layer"]: i["stop"] - i["start"] for i in index}
    assert list(widths) == list(unit_names(MODEL))
    assert (widths["stem"], widths["stages.1.0"], widths["stages.3.1"], widths["head"]) == (40, 80, 320, 5)
    shapes = _shapes(MODEL, 1, 28, 5, N)  # built on meta: ConvNeXt has no AlexNet layer table
    assert shapes["params"] == sum(p.numel() for p in net.parameters())
    assert shapes["width"] == sum(widths.values()) - 5
    with torch.no_grad():
        assert shapes["head"] == split_prefix(net, N)[0](torch.zeros(1, 1, 28, 28))[0].numel() == 80 * 4 * 4
