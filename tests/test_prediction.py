"""The estimators' stages: what the feature dump holds for them, scores per replicate, their rank
correlation with the measured curves and costs, and the one-line errors on bad params or dumps."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch

from transferability import params as tparams
from transferability import runs, stages
from transferability.data.loader import normalisation
from transferability.data.store import load_store, save_npy
from transferability.errors import UserError
from transferability.estimators import plan, prediction
from transferability.features.activations import extract, unit_taps
from transferability.report import estimators as estimator_report

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


def write_run(variant: str, n: int | None, top1: float, wall: float, split: str = "random0") -> None:
    net = runs.Network(split, 0, variant, n)
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
        write_run("BnB", n, 0.95 - 0.01 * n, 10.0)   # the target's own base transfers better than A's at every n
        write_run("RnB", n, 0.5, 10.0)
    write_run("baseB", None, 0.93, 30.0)
    return params


def test_scores_rank_the_layers_as_the_measured_curves_do(synthetic):
    params = synthetic
    prediction.estimate(params, "random0", 0)
    scores = json.loads((plan.estimates_dir("random0", 0) / "scores.json").read_text())["targets"]["B"]
    assert scores["images"] == 150 and scores["source_network"] == "baseA"
    for method in ("logme", "hscore", "cka"):
        assert np.all(np.diff(scores["scores"][method]) < 0), method  # separation falls with n: so do they
    estimator_report.compare(params, "reports")
    result = json.loads(open("reports/estimators.json").read())
    metrics = result["metrics"]
    for method in ("logme", "hscore", "cka"):
        assert metrics[method]["AnB"]["kendall"]["mean"] == 1.0   # falls with n as AnB does
        assert metrics[method]["AnB-ft"]["spearman"]["mean"] == -1.0  # AnB+ rises instead
        assert metrics[method]["AnB"]["kendall"]["ci95"] is None   # one replicate: no interval
    assert set(metrics["leep"]) == {"score"} and set(metrics["nce"]) == {"score"}  # one score per network
    assert metrics["depth"]["AnB"]["kendall"]["mean"] == 1.0    # AnB falls with n: depth alone ranks it perfectly
    assert metrics["depth"]["AnB-ft"]["kendall"]["mean"] == -1.0
    for method in ("logme", "hscore", "cka"):   # as good as depth, no better: one unit gives no interval
        assert metrics[method]["AnB"]["gain_over_depth"]["mean"] == 0.0
        assert metrics[method]["AnB"]["gain_over_depth"]["verdict"] == "does not beat depth (no interval: one " \
            "replicate unit)"
    # (a) the target's own base (BnB) against A's (AnB) at each n: CKA of baseB with itself is 1, and BnB is the
    # better source at every n, so CKA ranks the two sources right at all 7 n; the random networks have no dumps
    cka = metrics["cka"]["sources"]
    assert (cka["mean"], cka["ci95"], cka["replicates"], cka["dropped"], cka["sources"]) == \
        (1.0, None, 1, 0, ["AnB", "BnB"])
    # CKA puts the target's own base first by construction (1 against itself): no better than the fixed order
    assert metrics["order"]["sources"]["mean"] == 1.0 and cka["gain_over_order"]["mean"] == 0.0
    assert "drop" not in metrics["cka"]   # (b) needs 3 units or more across which to order the drop
    cost = result["cost_core_s"]
    assert cost["fan-out AnB"] == 2 * 10.0 * sum(LAYERS) and cost["fan-out AnB-ft"] == 2 * 20.0 * 7
    assert all(cost[m] > 0 for m in params["estimators"]["methods"])
    page = open("reports/estimators.md").read()
    assert "| LogME |" in page and "| depth alone |" in page
    assert "Against AnB (frozen), depth alone (score = -n) reaches Kendall tau +1.000. No estimator beats depth. " \
        "Do not beat depth: LogME, N-LEEP, H-score, linear CKA, FNE probe." in page
    assert result["claims"][0] in page
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
        estimator_report.compare(synthetic, "reports")


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
    assert plan.estimator_dumps(params, "random0", 0) == []


def record(split: str, target: str, scores: dict[str, list[float]], anb: list[float], base: float = 0.95,
           sources: dict[str, dict[str, list[float]]] | None = None) -> dict:
    """One (split, seed, target) record as `replicates` makes it, from scores and a measured AnB curve; its
    within-record correlations straight from scipy (None where undefined), depth's (score = -n) beside them."""
    from scipy.stats import kendalltau, spearmanr

    def finite(v: float) -> float | None:
        return None if np.isnan(v) else float(v)

    curves = {"AnB": {"top1_kbest": anb, "core_s": 1.0}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # constant scores: scipy warns, the correlation is None
        rank = {m: {"AnB": {"kendall": finite(kendalltau(v, anb).statistic),
                            "spearman": finite(spearmanr(v, anb).statistic)}}
                for m, v in {"depth": [-n for n in LAYERS[: len(anb)]], **scores}.items()}
    return {"split": split, "seed": 0, "target": target, "layers": LAYERS[: len(anb)], "scores": scores,
            "measured": curves, "rank": rank, "base_top1": base, "sources": sources or {}}


def test_pooling_counts_the_split_and_seed_unit_as_the_replicate_and_shows_what_it_dropped():
    falls = [0.9, 0.8, 0.7, 0.6]
    reps = [record("random0", "A", {"cka": [4.0, 3.0, 2.0, 1.0]}, falls),      # tau +1
            record("random0", "B", {"cka": [1.0, 2.0, 3.0, 4.0]}, falls),      # tau -1: the same unit, averaged: 0
            record("random1", "B", {"cka": [4.0, 3.0, 1.0, 2.0]}, falls),      # tau +2/3
            record("random2", "B", {"cka": [1.0, 1.0, 1.0, 1.0]}, falls)]      # constant: undefined, dropped
    cka = prediction.pooled(reps, ["cka"])["cka"]["AnB"]["kendall"]
    assert cka["replicates"] == 2 and cka["dropped"] == 1     # two units with a value, not three records
    assert cka["mean"] == pytest.approx(1 / 3, abs=1e-6)       # mean of the units' 0 and 2/3
    assert cka["std"] == pytest.approx(math.sqrt(2) / 3, abs=1e-6)

    header, rows = estimator_report.table(prediction.pooled(reps, ["cka"]), {"cka": 1.0})
    row = dict(zip(header, rows[1], strict=True))
    assert row["estimator"] == "linear CKA" and row["replicate units"] == "2 (1 record(s) undefined, dropped)"
    assert row["Kendall tau vs AnB (frozen)"].endswith("(1 undefined)")


def test_an_estimator_that_knows_more_than_depth_beats_it_and_one_that_knows_less_does_not():
    # AnB with the study's dip: not monotone in n, so depth alone ranks it badly; "follows" tracks it exactly
    reps, rng = [], np.random.default_rng(0)
    for k in range(5):
        dip = [0.9, 0.85, 0.8, 0.84, 0.7, 0.6, 0.65] + rng.normal(0, 0.002, 7)
        noisy = -np.arange(7) + rng.normal(0, 3, 7)
        reps.append(record(f"random{k}", "B", {"follows": list(dip + 1), "noisy": list(noisy)}, list(dip)))
    summary = prediction.pooled(reps, ["follows", "noisy"])
    depth = summary["depth"]["AnB"]["kendall"]["mean"]
    assert 0.5 < depth < 0.9
    follows, noisy = summary["follows"]["AnB"]["gain_over_depth"], summary["noisy"]["AnB"]["gain_over_depth"]
    assert follows["mean"] == pytest.approx(1 - depth, abs=1e-6) and follows["ci95"][0] > 0
    assert follows["verdict"] == "beats depth"
    assert noisy["mean"] < 0 and noisy["verdict"].startswith("does not beat depth")
    from transferability.report import estimators as estimator_report
    said = estimator_report.claims(summary)[0]
    assert "Beat depth: follows. Do not beat depth: noisy." in said


def test_ranking_the_sources_at_each_n_is_what_depth_cannot_do():
    """(a): a score that follows the measured top-1 of BnB, AnB and RnB at each n ranks them right, and beats
    the fixed order (own base, other half's, random) where random filters at n = 1 beat the other half's."""
    anb, bnb = [0.9, 0.8, 0.7], [0.95] * 3
    reps = []
    for k in range(5):
        rnb = [0.92 if k < 4 else 0.5, 0.4, 0.2]   # in four units of five, random filters beat AnB at n = 1
        srcs = {"AnB": {"scores": {"right": anb, "wrong": [2.0] * 3}, "top1_kbest": anb},
                "BnB": {"scores": {"right": bnb, "wrong": [1.0] * 3}, "top1_kbest": bnb},
                "RnB": {"scores": {"right": rnb, "wrong": [3.0] * 3}, "top1_kbest": rnb}}
        reps.append(record(f"random{k}", "B", {"right": anb, "wrong": [2.0] * 3}, anb, sources=srcs))
    summary = prediction.pooled(reps, ["right", "wrong"])
    right, wrong, order = summary["right"]["sources"], summary["wrong"]["sources"], summary["order"]["sources"]
    assert right["mean"] == 1.0 and right["replicates"] == 5 and right["sources"] == ["AnB", "BnB", "RnB"]
    assert order["mean"] == pytest.approx((4 * (1 / 3 + 2) / 3 + 1) / 5, abs=1e-6)   # tau 1/3 where R > A
    assert right["gain_over_order"]["ci95"][0] > 0 and right["gain_over_order"]["verdict"] == "beats the fixed order"
    assert wrong["mean"] < 0 and wrong["gain_over_order"]["verdict"].startswith("does not beat the fixed order")
    assert "sources" not in summary["depth"]
    from transferability.report import estimators as estimator_report
    assert "Beat the fixed order: right." in estimator_report.claims(summary)[-1]


def test_the_score_orders_the_drop_below_the_base_across_replicates():
    reps = []
    for k, drop in enumerate([0.02, 0.05, 0.08, 0.11]):   # a source that transfers worse in each replicate
        anb = [0.9 - drop, 0.85 - drop]
        reps.append(record(f"random{k}", "B", {"knows": [-drop, -2 * drop], "blind": [drop, 2 * drop]}, anb,
                           base=0.9))
    summary = prediction.pooled(reps, ["knows", "blind"])
    knows = summary["knows"]["drop"]["by_n"]
    assert knows[1]["kendall"] == knows[2]["kendall"] == 1.0 and knows[2]["replicates"] == 4
    assert summary["blind"]["drop"]["mean_over_n"] == -1.0 and summary["blind"]["drop"]["positive_n"] == 0
    assert summary["knows"]["drop"]["by_n"][1]["p"] == pytest.approx(1 / 12, abs=1e-6)   # exact: 2 of 4! orders
    from transferability.report import estimators as estimator_report
    header, rows = estimator_report.drop_table(summary, [1, 2])
    assert rows[0] == ["knows", "+1.00 (p 0.08)", "+1.00 (p 0.08)"]


def test_stored_scores_for_other_layers_are_one_line_naming_them_and_the_fix(synthetic):
    prediction.estimate(synthetic, "random0", 0)
    synthetic["experiment"]["layers"] = LAYERS[:-1]
    with pytest.raises(UserError, match=r"^data/estimates/random0/seed0/scores.json scored n = "
                                        r"\[1, 2, 3, 4, 5, 6, 7\], but experiment.layers is \[1, 2, 3, 4, 5, 6\]: "
                                        r"run `transferability estimate "
                                        r"--split random0 --seed 0` again$"):
        estimator_report.compare(synthetic, "reports")


def test_the_random_networks_are_read_where_features_dumps_every_one(params):
    """RnB's source at n is R{n}B's own random prefix (each RnB draws its own filters): ranking it among the
    sources needs a dump of each, so the estimators read them only where features.networks lists all of them."""
    assert [j.network for j in plan.estimator_dumps(params, "random0", 0)] == ["baseA", "baseB"]
    assert plan.other_sources(params, "B") == {"BnB": ["baseB"] * 7}
    params["features"]["networks"] += [f"R{n}B" for n in LAYERS[:-1]]   # R7B missing: not a source
    assert "RnB" not in plan.other_sources(params, "B")
    params["features"]["networks"].append("R7B")
    assert plan.other_sources(params, "B")["RnB"] == [f"R{n}B" for n in LAYERS]
    assert [j.network for j in plan.estimator_dumps(params, "random0", 0)] == ["baseA", "baseB"] + \
        [f"R{n}B" for n in LAYERS]


def test_the_stage_scores_every_source_it_has_dumps_of(synthetic):
    params, rng = synthetic, np.random.default_rng(3)
    labels, is_train = np.load(runs.FeatureJob("random0", 0, "baseA", "B").dir / "labels.npy"), np.arange(250) < 150
    for n in LAYERS:   # random filters: no class structure at any layer
        write_dump(f"R{n}B", [rng.normal(size=(250, 6)) for _ in LAYERS], labels, is_train)
    params["features"]["networks"] += [f"R{n}B" for n in LAYERS]
    prediction.estimate(params, "random0", 0)
    stored = json.loads((plan.estimates_dir("random0", 0) / "scores.json").read_text())["targets"]["B"]
    assert set(stored["sources"]) == {"BnB", "RnB"} and stored["sources"]["RnB"]["networks"][4] == "R5B"
    assert stored["sources"]["BnB"]["scores"]["cka"] == [1.0] * 7   # the target's own base against itself
    assert len(stored["sources"]["RnB"]["scores"]["hscore"]) == 7
    estimator_report.compare(params, "reports")
    cka = json.loads(open("reports/estimators.json").read())["metrics"]["cka"]["sources"]
    assert cka["sources"] == ["AnB", "BnB", "RnB"] and cka["replicates"] == 1 and cka["dropped"] == 0
    assert cka["mean"] == 1.0   # own base 1, A's base between, random filters least: as measured at every n
