"""The Full-Network Embedding recipe on hand-checkable arrays, and feature dumps from real networks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from transferability.errors import UserError
from transferability.features.activations import digits, extract, load_torchvision, torchvision_alexnet_taps, unit_taps
from transferability.features.embedding import (
    columns,
    discretise,
    evaluate_all,
    fne,
    l2_normalise,
    small_data_splits,
    standardise,
)
from transferability.networks.models import build_model


def test_standardise_uses_training_statistics_only_and_zeroes_flat_columns():
    train = np.array([[-4.0, 1.0], [4.0, 1.0], [0.0, 1.0]])
    test = np.array([[8.0, 5.0]])
    ztr, zte = standardise(train, test)
    assert ztr.tolist() == [[-1.0, 0.0], [1.0, 0.0], [0.0, 0.0]]  # mean (0, 1), sample std (4, 0): ddof=1
    assert zte.tolist() == [[2.0, 0.0]]                            # 8 / 4; the zero-std column is 0
    ztr2, _ = standardise(train, test * 1000)                      # the test set never moves the statistics
    assert np.array_equal(ztr, ztr2)
    assert standardise(np.array([[3.0, 1.0]]))[0].tolist() == [[0.0, 0.0]]  # one training row: no spread


def test_thresholds_map_values_as_specified():
    z = np.array([[-1.0, -0.26, -0.25, -0.1, 0.0, 0.15, 0.151, 3.0]])
    assert discretise(z).tolist() == [[-1, -1, -1, 0, 0, 0, 1, 1]]
    assert discretise(z, -0.5, 0.5).tolist() == [[-1, 0, 0, 0, 0, 0, 0, 1]]
    tr, te = fne(np.array([[0.0], [2.0]]), np.array([[1.3], [0.9]]), (-0.25, 0.15))  # std sqrt(2): z 0.21, -0.07
    assert tr.tolist() == [[-1], [1]] and te.tolist() == [[1], [0]]


def test_ties_at_both_thresholds_code_as_the_fne_authors_code():
    """Mean 0 and sample std exactly 4, so test values -1 and 0.6 are z = -0.25 and 0.15 exactly:
    the lower threshold is inclusive (-1), the upper one is not (0); torch.bucketize's rule."""
    train = np.array([[-4.0], [4.0], [0.0]])
    test = np.array([[-1.0], [0.6], [-1.0 - 1e-12], [0.6 + 1e-12]])
    assert standardise(train, test)[1].ravel().tolist()[:2] == [-0.25, 0.15]
    _, codes = fne(train, test, (-0.25, 0.15))
    assert codes.ravel().tolist() == [-1, 0, -1, 1]


def test_l2_normalise_rows_and_leave_zero_rows():
    x = l2_normalise(np.array([[3.0, 4.0], [0.0, 0.0]]))
    assert x.tolist() == [[0.6, 0.8], [0.0, 0.0]]


def test_small_data_splits_are_disjoint_and_sized():
    y = np.repeat(np.arange(3), 30)
    tr, te = small_data_splits(y, 5, 10, repeat=0)
    assert not set(tr) & set(te)
    assert np.bincount(y[tr]).tolist() == [5, 5, 5] and np.bincount(y[te]).tolist() == [10, 10, 10]
    tr_all, _ = small_data_splits(y, None, 10, repeat=0)
    assert len(tr_all) == 60
    assert not np.array_equal(small_data_splits(y, 5, 10, repeat=1)[0], tr)


@pytest.fixture(scope="module")
def small_net():
    return build_model({"arch": "small", "width": 0.5, "init": "kaiming", "dropout": 0.5}, 1, 5, 28, seed=0)


def test_dump_columns_match_each_layer_and_batch_size_does_not_matter(small_net):
    images = np.random.default_rng(0).integers(0, 255, (7, 1, 28, 28), dtype=np.uint8)
    x1, index = extract(small_net, unit_taps(small_net, list(range(1, 8))), images, [72.9], [90.0], 1)
    x4, _ = extract(small_net, unit_taps(small_net, list(range(1, 8))), images, [72.9], [90.0], 4)
    assert np.allclose(x1, x4, atol=1e-5)
    assert [e["layer"] for e in index] == ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7"]
    assert index[-1]["stop"] == x1.shape[1]
    with torch.no_grad():
        small_net.eval()
        h = (torch.from_numpy(images).float() - 72.9) / 90.0
        for k, e in enumerate(index, start=1):
            h = small_net.layer(k)(h)
            expected = h.mean(dim=(2, 3)) if h.dim() == 4 else h
            assert np.allclose(x1[:, columns(index, e["layer"])], expected.numpy(), atol=1e-5), e["layer"]
    assert (x1[:, columns(index, "fc6")] >= 0).all()  # after the ReLU


def test_every_method_beats_chance_on_a_real_dump(small_net):
    target = digits(1)
    assert target.images.shape == (1797, 1, 28, 28) and target.images.dtype == np.uint8
    x, index = extract(small_net, unit_taps(small_net, list(range(1, 8))), target.images, [72.9], [90.0], 500)
    tr, te = small_data_splits(target.labels, 20, 30, repeat=0)
    acc = evaluate_all(x[tr], target.labels[tr], x[te], target.labels[te], index,
                       {"thresholds": [-0.25, 0.15], "C": 1.0, "baselines": ["fc6", "fc7"]})
    assert set(acc) == {"full_network", "fc6", "fc7"} | {f"probe_{e['layer']}" for e in index}
    assert all(0.2 < v <= 1.0 for v in acc.values()), acc  # chance is 0.1, even with random filters


@pytest.mark.parametrize("per_class", [5, None])
def test_codes_equal_the_fne_authors_implementation_on_a_real_dump(small_net, per_class):
    """PyPI ``fne`` (Garcia-Gasulla et al.'s own code): its standardise-and-discretise step on the
    same dump gives our codes on every column, except the zero-std columns, where it divides by zero
    (NaN codes as 1) and we give 0 (embedding.py's one deliberate difference)."""
    from fne.fne_torch import FullNetworkEmbedding

    target = digits(1)
    x, _ = extract(small_net, unit_taps(small_net, list(range(1, 8))), target.images, [72.9], [90.0], 500)
    tr, te = small_data_splits(target.labels, per_class, 50, repeat=0)
    theirs = FullNetworkEmbedding(torch.nn.Identity(), [], classifier=None)
    ref_tr = theirs._postprocess(torch.from_numpy(x[tr]), train=True).numpy()
    ref_te = theirs._postprocess(torch.from_numpy(x[te]), train=False).numpy()
    ours_tr, ours_te = fne(x[tr], x[te], (theirs.f_minus, theirs.f_plus))
    flat = x[tr].std(axis=0) == 0
    assert 0 < flat.sum() < len(flat)  # the dump has both kinds of column
    assert np.array_equal(ours_tr[:, ~flat], ref_tr[:, ~flat]) and np.array_equal(ours_te[:, ~flat], ref_te[:, ~flat])
    assert (ours_tr[:, flat] == 0).all() and (ours_te[:, flat] == 0).all()


def test_torchvision_alexnet_from_weights_on_disk(tmp_path):
    import torchvision

    with pytest.raises(UserError, match="nothing is fetched at run time"):
        load_torchvision("alexnet", tmp_path / "missing.pth")
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), tmp_path / "alexnet.pth")
    net = load_torchvision("alexnet", tmp_path / "alexnet.pth")
    images = np.zeros((2, 3, 224, 224), dtype=np.uint8)
    x, index = extract(net, torchvision_alexnet_taps(net, list(range(1, 8))), images, [124, 116, 104],
                       [58, 57, 57], 2)
    assert [e["stop"] - e["start"] for e in index] == [64, 192, 384, 256, 256, 4096, 4096]
    assert x.shape == (2, 9344)


@pytest.mark.slow  # torchvision's AlexNet through the CLI
def test_a_torchvision_model_from_disk_through_the_cli(tmp_path, params, monkeypatch):
    import json

    import torchvision
    import yaml

    from transferability import params as tparams
    from transferability import stages
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), tmp_path / "alexnet.pth")
    params["features"].update(networks=["tv-alexnet"], targets=["B"])
    params["estimators"]["methods"] = []  # they read our own bases, not dumped here
    with pytest.raises(UserError, match="features.torchvision_weights.alexnet does not give its weights file"):
        tparams.validate(yaml.safe_load(yaml.safe_dump(params)))
    params["features"]["torchvision_weights"] = {"alexnet": str(tmp_path / "alexnet.pth")}
    tparams.validate(params)
    monkeypatch.chdir(tmp_path)
    stages.prepare(params)
    stages.split(params, "random0")
    dump = stages.features(params, "random0", 0, "tv-alexnet", "B")
    index = json.loads((dump / "index.json").read_text())
    assert [e["stop"] - e["start"] for e in index["layers"]] == [64, 192, 384, 256, 256, 4096, 4096]
    assert np.load(dump / "features.npy").shape == (5 * 40 + 5 * 40, 9344)  # smoke: 40 train + 40 test per class
    assert np.load(dump / "logits.npy").shape == (400, 1000)  # torchvision's ImageNet classifier
    result = json.loads(stages.embed(params, "random0", 0, "tv-alexnet", "B").read_text())
    assert result["network"] == "tv-alexnet" and 0.2 < result["results"]["all"]["full_network"]["mean"] <= 1
