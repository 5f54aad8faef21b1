"""Network names and paths: the study's notation, and no two jobs sharing an output."""

from __future__ import annotations

import pytest

from transferability.errors import UserError
from transferability.runs import Network, networks


def test_names_follow_the_study():
    assert Network("random0", 0, "AnB-ft", 3).name == "A3B+"
    assert Network("random0", 0, "AnB-ft", 3).slug == "A3B-ft"
    assert Network("random0", 0, "BnA", 5).name == "B5A"
    assert Network("random0", 0, "baseB").name == "baseB"
    assert str(Network("random0", 1, "RnB", 7).dir) == "data/runs/random0/seed1/RnB/n7"
    assert str(Network("random0", 1, "AnB-ft", 2).checkpoint) == "data/checkpoints/random0/seed1/AnB-ft/n2.pt"


def test_frozen_layers_and_sources():
    assert Network("s", 0, "AnB", 3).frozen_layers == [1, 2, 3]
    assert Network("s", 0, "AnB-ft", 3).frozen_layers == []
    assert Network("s", 0, "RnB", 2).frozen_layers == [1, 2] and Network("s", 0, "RnB", 2).source_base is None
    assert Network("s", 0, "BnA-ft", 4).source_base == Network("s", 0, "baseB")


@pytest.mark.parametrize(("variant", "n", "message"), [
    ("AnC", 3, "unknown variant 'AnC'"), ("AnB", 0, "needs n of 1 or more"),
    ("AnB", None, "needs n of 1 or more"), ("baseB", 2, "takes no n"), ("RnB-ft", 2, "RnX-ft is not a variant"),
])
def test_bad_networks_are_refused(variant, n, message):
    with pytest.raises(UserError, match=message):
        Network("s", 0, variant, n)


def test_an_n_past_the_architecture_is_refused_before_any_work(tmp_path, monkeypatch, params):
    """n's top is the architecture's (AlexNet 1..7, a ResNet-18 1..9): the train stage says so in one line."""
    from transferability.stages import train_network

    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=r"^A8B: model.arch small has 8 units; n runs over 1..7$"):
        train_network(params, "random0", 0, "AnB", 8)
    assert not (tmp_path / "data/runs").exists()


def test_no_two_jobs_write_the_same_output(params):
    exp = params["experiment"]
    every = ["BnB", "BnB-ft", "AnB", "AnB-ft", "RnB", "AnA", "AnA-ft", "BnA", "BnA-ft", "RnA"]
    exp.update(splits=["random0"], seeds=[0, 1, 2], variants=every,
               dissimilar={"splits": ["dissimilar"], "seeds": [0, 1, 2], "variants": every})
    nets = networks(params)
    assert len(nets) == 2 * 3 * (2 + 10 * 7)
    for attr in ("dir", "checkpoint"):
        paths = [getattr(n, attr) for n in nets]
        assert len(set(paths)) == len(paths)
    dirs = {n.dir for n in nets}
    assert not any(d.parent in dirs or d.parent.parent in dirs for d in dirs if d.name.startswith("n"))


def test_the_dissimilar_control_trains_its_own_seeds_and_variants(params):
    exp = params["experiment"]
    exp.update(splits=["random0"], seeds=[0, 1],
               dissimilar={"splits": ["dissimilar"], "seeds": [0, 1, 2], "variants": ["AnB", "BnA"]})
    nets = networks(params)
    control = [n for n in nets if n.split == "dissimilar"]
    assert len(nets) == 2 * (2 + 5 * 7) + 3 * (2 + 2 * 7)
    assert {n.variant for n in control} == {"baseA", "baseB", "AnB", "BnA"}
    assert {n.seed for n in control} == {0, 1, 2}
    assert nets[: 2 * 37] == [n for n in nets if n.split == "random0"]  # the main splits first
