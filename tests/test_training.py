"""The training loop's schedule, metric and determinism."""

from __future__ import annotations

import json
import math
import re
import subprocess

import pytest
import torch
import yaml

from transferability import stages
from transferability.data.loader import chunks
from transferability.errors import UserError
from transferability.training import health
from transferability.training.loop import Window, eval_steps, k_best, lr_at, seconds_file

from .conftest import ENV


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
    assert m["learned"] is True
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

    from transferability.training.loop import compiled

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


LN5 = math.log(5)
# the default run's RnB at n = 5, random2 seed 0 (issue 24): loss flat at ln 5, top-1 0.2000 on 2,500 images
FLAT = [1.6130, 1.6133, 1.6116, 1.6099, 1.6095, 1.6096]


def evals(losses: list[float], top1: list[float]) -> list[dict]:
    return [{"train_loss": loss, "top1": t} for loss, t in zip(losses, top1, strict=True)]


@pytest.mark.parametrize("losses, top1, expected", [
    (FLAT, [0.2] * 6, False),  # at chance: the default run's flat curve
    ([1.45, 1.30, 1.22, 1.18, 1.17, 1.16], [0.32, 0.38, 0.40, 0.40, 0.41, 0.40], True),  # learned (random4's 0.40)
    ([LN5 - 0.0099] * 6, [0.2] * 6, False),  # borderline loss: inside the tolerance
    ([LN5 - 0.0101] * 6, [0.2] * 6, True),  # just past it: the loss fell
    (FLAT, [0.2] * 5 + [559 / 2500], False),  # borderline top-1: p = 0.0019 > 0.01 / 6 = 0.0017
    (FLAT, [0.2] * 5 + [560 / 2500], True),  # p = 0.00165 < 0.00167: it left chance
    ([1.7] * 6, [0.1] * 6, False),  # worse than chance is not learning
])
def test_a_network_did_not_learn_only_where_its_loss_and_its_top1_both_stayed_at_chance(losses, top1, expected):
    assert health.learned(evals(losses, top1), 2500, 5) is expected


def test_the_binomial_threshold_is_corrected_for_the_number_of_evaluations():
    """One evaluation at 0.2200 (550 of 2,500, p = 0.0071) left chance; the best of six such did not."""
    assert health.learned(evals([1.62], [0.22]), 2500, 5) is True
    assert health.learned(evals([1.62] * 6, [0.22] * 6), 2500, 5) is False


def test_a_non_finite_loss_names_its_first_step():
    """Synthetic divergence: the running sum of a window that started after step 10 turns inf at its
    third step, then nan; the window reports step 13 (1-based), its epoch and the lr then."""
    window = Window(10, torch.device("cpu"))
    total = 0.0
    for loss in (1.5, 1.7, math.inf, math.nan):
        total += loss
        window.count(torch.tensor(total))
    train = {"lr": 0.5, "lr_decay": 0.1, "lr_steps": [0.1]}
    with pytest.raises(UserError) as err:
        window.mean(torch.tensor(total), 4 * 32, "R5B", 100, 7, train)
    assert str(err.value) == ("R5B: the training loss became nan at step 13 of 100 (epoch 2, lr 0.05): training "
                              "diverged; lower train.lr (now 0.5) and run the stage again")
    assert Window(0, torch.device("cpu")).mean(torch.tensor(3.0), 2, "R5B", 100, 7, train) == 1.5


@pytest.mark.usefixtures("workspace")
def test_a_real_run_made_to_diverge_stops_with_one_line_and_writes_nothing(tmp_path, params):
    """The smoke run with lr 1e6 through the CLI: exit status 2, one line, no network file, no checkpoint."""
    params["train"]["lr"] = 1e6
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    proc = subprocess.run(["transferability", "--params", "params.yaml", "--threads", "1", "train", "--split",
                           "random0", "--seed", "0", "--variant", "baseB"], cwd=tmp_path, env=ENV,
                          capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert re.fullmatch(r"error: baseB: the training loss became (nan|inf|-inf) at step \d+ of 14 \(epoch [12], "
                        r"lr 1e\+06\): training diverged; lower train.lr \(now 1e\+06\) and run the stage again",
                        errors[0]), errors[0]
    assert proc.stderr.strip().splitlines()[-1] == errors[0]
    assert not (tmp_path / "data/runs/random0/seed0/baseB/metrics.json").exists()
    assert not list((tmp_path / "data/runs").rglob("*.*"))  # no model, curve or timing either
    assert not (tmp_path / "data/checkpoints/random0/seed0/baseB.pt").exists()  # no diverged weights kept


@pytest.mark.usefixtures("workspace")
def test_two_identical_runs_leave_byte_identical_checkpoints(tmp_path, params, capsys):
    """DVC hashes the checkpoints (dvc.lock): the seconds a run took sit beside its checkpoint, not in it,
    and a job that takes up a finished checkpoint still reports the whole run's time."""
    ckpt = tmp_path / "data/checkpoints/random0/seed0/baseB.pt"
    run = tmp_path / "data/runs/random0/seed0/baseB"
    seen = []
    for _ in range(2):
        stages.train_network(params, "random0", 0, "baseB", None)
        seen.append((ckpt.read_bytes(), json.loads((run / "timing.json").read_text())))
        for f in (ckpt, seconds_file(ckpt), *run.iterdir()):
            f.unlink()
    assert seen[0][0] == seen[1][0]
    assert seen[0][1]["wall_time_s"] != seen[1][1]["wall_time_s"]  # the clock did differ
    stages.train_network(params, "random0", 0, "baseB", None)
    timing = json.loads((run / "timing.json").read_text())
    stages.train_network(params, "random0", 0, "baseB", None)  # takes up the finished checkpoint
    assert "resumed from epoch 2 of 2" in capsys.readouterr().err
    again = json.loads((run / "timing.json").read_text())
    assert again["wall_time_s"] == timing["wall_time_s"] and again["resumed_from_epoch"] == 2
