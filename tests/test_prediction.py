"""The estimators' stages: what the feature dump holds for them, scores per replicate, their rank
correlation with the measured curves and costs, and the one-line errors on bad params or dumps."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from transferability import params as tparams
from transferability import prediction, runs, stages
from transferability.data import normalisation
from transferability.errors import UserError
from transferability.features import extract, unit_taps
from transferability.store import load_store, save_npy

LAYERS = list(range(1, 8))


def test_features_dump_keeps_its_columns_and_adds_the_source_classifiers_logits(workspace, params):
    stages.train_network(params, "random0", 0, "baseA", None)
    dump = stages.features(params, "random0", 0, "baseA", "B")
    store = load_store(runs.prepared_path(params))
    net = stages.load_trained(params, runs.Network("random0", 0, "baseA"), store, stages.read_split("random0"))
    mean, std = normalisation(store, "mean_std")
    images = stages.half_target(store, stages.read_split("random0"), "B", params).images[0:400]
    layers, _ = extract(net, unit_taps(net, LAYERS), images, mean, std, 500)  # layers 1..7 alone
    assert np.array_equal(np.load(dump / "features.npy"), layers.astype(np.float16))  # the FNE's columns, unchanged
    x = (torch.from_numpy(np.ascontiguousarray(images)).float() - torch.tensor(mean).view(1, -1, 1, 1)) \
        / torch.tensor(std).view(1, -1, 1, 1)
    with torch.no_grad():
        logits = net.eval()(x).numpy()
    stored = np.load(dump / "logits.npy")
    assert stored.shape == (400, 5)  # the source's own five classes, on every image of half B
    assert np.allclose(stored, logits.astype(np.float16), atol=1e-2)
    assert [e["layer"] for e in json.loads((dump / "index.json").read_text())["layers"]] == \
        ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7"]


def write_dump(network: str, layer: list[np.ndarray], labels: np.ndarray, is_train: np.ndarray) -> None:
    folder = runs.FeatureJob("random0", 0, network, "B").dir
    folder.mkdir(parents=True)
    index, start = [], 0
    for k, f in enumerate(layer):
        index.append({"layer": ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7"][k], "start": start,
                      "stop": start + f.shape[1]})
        start += f.shape[1]
    save_npy(folder / "features.npy", np.hstack(layer).astype(np.float32))
    save_npy(folder / "logits.npy", 2 * np.eye(5)[labels] + np.random.default_rng(9).normal(size=(len(labels), 5)))
    save_npy(folder / "labels.npy", labels)
    save_npy(folder / "is_train.npy", is_train)
    (folder / "index.json").write_text(json.dumps({"layers": index}))


def write_run(variant: str, n: int, top1: float, wall: float) -> None:
    net = runs.Network("random0", 0, variant, n)
    net.dir.mkdir(parents=True)
    (net.dir / "metrics.json").write_text(json.dumps({"top1_kbest": top1}))
    (net.dir / "timing.json").write_text(json.dumps({"wall_time_s": wall, "threads": 2}))


@pytest.fixture
def synthetic(tmp_path, monkeypatch, params):
    """One replicate whose layer n separates the target's classes less the higher n is (as specificity
    would), beside measured curves that fall (AnB) and rise (AnB+) with n."""
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    labels = np.arange(250) % 5
    is_train = np.arange(250) < 150
    centres = rng.normal(size=(5, 6))
    noise = [rng.normal(size=(250, 6)) for _ in LAYERS]
    source = [(2.4 - 0.3 * n) * centres[labels] + noise[n - 1] for n in LAYERS]
    own = [s + 0.4 * n * rng.normal(size=s.shape) for n, s in zip(LAYERS, source, strict=True)]  # drifts away
    write_dump("baseA", source, labels, is_train)
    write_dump("baseB", own, labels, is_train)
    for n in LAYERS:
        write_run("AnB", n, 0.9 - 0.02 * n, 10.0 * n)
        write_run("AnB-ft", n, 0.8 + 0.01 * n, 20.0)
    return params


def test_scores_rank_the_layers_as_the_measured_curves_do(synthetic):
    params = synthetic
    prediction.estimate(params, "random0", 0)
    scores = json.loads((runs.estimates_dir("random0", 0) / "scores.json").read_text())["targets"]["B"]
    assert scores["images"] == 150 and scores["source_network"] == "baseA"
    for method in ("logme", "hscore", "cka"):
        assert np.all(np.diff(scores["scores"][method]) < 0), method  # separation falls with n: so do they
    prediction.compare(params, "reports")
    result = json.loads(open("reports/estimators.json").read())
    metrics = result["metrics"]
    for method in ("logme", "hscore", "cka"):
        assert metrics[method]["AnB"]["kendall"]["mean"] == 1.0   # falls with n as AnB does
        assert metrics[method]["AnB-ft"]["spearman"]["mean"] == -1.0  # AnB+ rises instead
        assert metrics[method]["AnB"]["kendall"]["ci95"] is None   # one replicate: no interval
    assert set(metrics["leep"]) == {"score"} and set(metrics["nce"]) == {"score"}  # one score per network
    cost = result["cost_core_s"]
    assert cost["fan-out AnB"] == 2 * 10.0 * sum(LAYERS) and cost["fan-out AnB-ft"] == 2 * 20.0 * 7
    assert all(cost[m] > 0 for m in params["estimators"]["methods"])
    page = open("reports/estimators.md").read()
    assert "Tracks AnB (frozen) best" in page and "| LogME |" in page
    assert open("reports/estimators.png", "rb").read()[:4] == b"\x89PNG"


def test_a_damaged_dump_is_one_line_naming_it_and_the_fix(synthetic):
    dump = runs.FeatureJob("random0", 0, "baseA", "B").dir / "features.npy"
    dump.write_bytes(dump.read_bytes()[:1000])
    with pytest.raises(UserError, match=r"the feature dump in data/features/random0/seed0/baseA/B is unreadable "
                                        r"\(mmap length is greater than file size\): run `transferability features"):
        prediction.estimate(synthetic, "random0", 0)
    dump.unlink()
    with pytest.raises(UserError, match="no complete feature dump in data/features/random0/seed0/baseA/B"):
        prediction.estimate(synthetic, "random0", 0)


def test_a_missing_run_is_one_line_naming_it(synthetic):
    prediction.estimate(synthetic, "random0", 0)
    runs.Network("random0", 0, "AnB", 4).file("metrics.json").unlink()
    with pytest.raises(UserError, match=r"AnB/n4/metrics.json is missing: train A4B \(random0, seed 0\) first"):
        prediction.compare(synthetic, "reports")


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda p: p["features"].update(networks=["baseA"]),
         "estimators read baseB's features on half B (linear CKA compares it with the source base): add baseB to "
         "features.networks"),
        (lambda p: p["features"].update(targets=["digits"]),
         "estimators read features on half B (the target of AnB): add B to features.targets"),
        (lambda p: p["experiment"].update(variants=["BnB", "RnB"]),
         "estimators predict transfer from the other half's base, but experiment.variants has none of AnB"),
        (lambda p: p["experiment"].update(layers=[3]), "experiment.layers needs at least 2 values (got [3])"),
        (lambda p: p["estimators"].update(methods=["logme", "gbc"]), "'estimators.methods.1' is 'gbc'; allowed"),
    ],
)
def test_estimator_params_that_cannot_work_are_one_line(params, edit, expected):
    edit(params)
    with pytest.raises(UserError) as err:
        tparams.validate(params)
    assert expected in str(err.value) and "\n" not in str(err.value)


def test_no_estimators_need_no_dumps(params):
    params["estimators"]["methods"] = []
    params["features"].update(networks=["baseA"], targets=["digits"])
    tparams.validate(params)
    assert runs.estimator_dumps(params, "random0", 0) == []
