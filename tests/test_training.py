"""The training loop's schedule, metric and determinism."""

from __future__ import annotations

import json

import pytest

from transferability import stages
from transferability.data import chunks
from transferability.training import eval_steps, k_best, lr_at


def test_step_decay_at_fractions_of_the_budget():
    train = {"lr": 0.01, "lr_decay": 0.1, "lr_steps": [2 / 9, 4 / 9, 6 / 9, 8 / 9]}  # the study's
    total = 450_000
    assert lr_at(0, total, train) == 0.01
    assert lr_at(99_999, total, train) == 0.01
    assert lr_at(100_000, total, train) == pytest.approx(0.001)
    assert lr_at(449_999, total, train) == pytest.approx(1e-6)


def test_k_best_is_the_mean_of_the_k_best_evaluations():
    evals = [{"top1": v} for v in (0.5, 0.9, 0.7, 0.8, 0.6)]
    assert k_best(evals, 2) == pytest.approx(0.85)
    assert k_best(evals, 10) == pytest.approx(0.7)


def test_eval_steps_spread_over_the_budget_and_end_it():
    assert eval_steps(10, 1) == {10}
    assert eval_steps(10, 3) == {4, 7, 10}
    assert eval_steps(2, 5) == {1, 2}
    assert eval_steps(60, 6) == {10, 20, 30, 40, 50, 60}  # 6 epochs of 10 steps: each epoch's end


@pytest.mark.usefixtures("workspace")
def test_same_seed_gives_an_identical_metrics_file(tmp_path, params):
    stages.train_network(params, "random0", 0, "baseB", None)
    run = tmp_path / "data/runs/random0/seed0/baseB"
    first = (run / "metrics.json").read_bytes()
    for f in ("metrics.json", "model.pt"):
        (run / f).unlink()
    (tmp_path / "data/checkpoints/random0/seed0/baseB.pt").unlink()
    stages.train_network(params, "random0", 0, "baseB", None)
    assert (run / "metrics.json").read_bytes() == first
    m = json.loads(first)
    assert m["network"] == "baseB" and m["seed"] == 0 and m["versions"]["torch"]
    assert m["params"]["train"] == params["train"] and len(m["evals"]) == params["train"]["epochs"]
    assert 0.2 < m["top1"] <= 1.0  # better than chance (0.2) on 5 classes
    timing = json.loads((run / "timing.json").read_text())
    assert timing["wall_time_s"] > 0 and timing["images_per_s"] > 0
    # A finished checkpoint of the same run is reused: the re-run ends with the same bytes.
    stages.train_network(params, "random0", 0, "baseB", None)
    assert (run / "metrics.json").read_bytes() == first


@pytest.mark.usefixtures("workspace")
def test_a_checkpoint_of_other_params_is_ignored(tmp_path, params, capsys):
    stages.train_network(params, "random0", 0, "baseA", None)
    first = json.loads((tmp_path / "data/runs/random0/seed0/baseA/metrics.json").read_text())
    params["train"]["lr"] *= 2
    stages.train_network(params, "random0", 0, "baseA", None)
    assert "belongs to other params" in capsys.readouterr().err
    second = json.loads((tmp_path / "data/runs/random0/seed0/baseA/metrics.json").read_text())
    assert second["params"]["train"]["lr"] == 2 * first["params"]["train"]["lr"]
    assert second["evals"] != first["evals"]


@pytest.mark.usefixtures("workspace")
def test_a_checkpoint_written_by_other_code_is_ignored(params, capsys, monkeypatch):
    stages.train_network(params, "random0", 0, "baseB", None)
    monkeypatch.setattr(stages, "source_digest", lambda: "other code")
    stages.train_network(params, "random0", 0, "baseB", None)
    err = capsys.readouterr().err
    assert "belongs to other params" in err and "resumed from epoch" not in err


def test_transfer_needs_its_base_first(tmp_path, monkeypatch, params):
    monkeypatch.chdir(tmp_path)
    from transferability.errors import UserError

    with pytest.raises(UserError, match="A3B copies layers from baseA, but .* is missing: train baseA first"):
        stages.train_network(params, "random0", 0, "AnB", 3)


def test_inference_batches_never_end_in_a_tiny_remainder():
    assert chunks(1000, 250) == [(0, 250), (250, 500), (500, 750), (750, 1000)]
    assert chunks(1003, 250) == [(0, 250), (250, 500), (500, 750), (750, 1003)]  # 3 join the last
    assert chunks(1010, 250)[-1] == (1000, 1010)
    assert chunks(5, 250) == [(0, 5)]


@pytest.mark.usefixtures("workspace")
def test_the_evaluation_batch_changes_no_number(tmp_path, params):
    params["evaluate"]["images_per_class"] = 61  # 305 test images: remainders of 5, 55 and 305
    run = tmp_path / "data/runs/random0/seed0/baseB"
    files = set()
    for batch in (1000, 250, 100, 50):
        params["compute"]["eval_batch"] = batch
        (tmp_path / "data/checkpoints/random0/seed0/baseB.pt").unlink(missing_ok=True)
        stages.train_network(params, "random0", 0, "baseB", None)
        files.add((run / "metrics.json").read_bytes())
    assert len(files) == 1


@pytest.mark.parametrize("dynamic", [False, None])
def test_compiling_gives_a_short_last_batch_its_own_static_graph(dynamic):
    """None is torch.compile's default (what the loop used): its second shape compiles a dynamic graph."""
    import torch
    from torch._dynamo.testing import EagerAndRecordGraphs

    from transferability.training import compiled

    torch._dynamo.reset()
    backend = EagerAndRecordGraphs()
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU())
    model = compiled(net, backend) if dynamic is False else torch.compile(net, backend=backend)
    for size in (8, 8, 3, 8, 3):  # epochs of 19 images in batches of 8
        model(torch.randn(size, 4))
    symbolic = [n.name for g in backend.graphs for n in g.graph.nodes
                if n.op == "placeholder" and isinstance(n.meta.get("example_value"), torch.SymInt)]
    assert len(backend.graphs) == 2
    assert (symbolic == []) == (dynamic is False), symbolic
