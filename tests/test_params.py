"""params.yaml validation: every mistake is one line that names the key and the allowed values."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from transferability import params as tparams
from transferability import provenance
from transferability.errors import UserError

from .conftest import ROOT


def test_shipped_profiles_are_valid():
    for path in [ROOT / "params.yaml", *sorted((ROOT / "workflow" / "params").glob("*.yaml"))]:
        tparams.load(path)


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda p: p["train"].update(lr_typo=0.1), "unknown key ['lr_typo'] under 'train'"),
        (lambda p: p.update(extra={}), "unknown key ['extra'] at the top level"),
        (lambda p: p["train"].update(epochs="ten"), "'train.epochs': 'ten' is not of type 'integer'"),
        (lambda p: p["experiment"].update(layers=[1, 8]), "n = 8, but model.arch small has 8 units"),
        (lambda p: p["experiment"].update(layers=[0]), "'experiment.layers.0': 0 is less than"),
        (lambda p: p["experiment"].update(variants=["AnC"]), "'experiment.variants.0' is 'AnC'; allowed values: BnB"),
        (lambda p: p["model"].update(arch="vgg"), "'model.arch' is 'vgg'; allowed values: small, caffenet"),
        (lambda p: p["compute"].update(device="tpu"), "'compute.device' is 'tpu'; allowed values: cpu, cuda, auto"),
        (lambda p: p["experiment"].update(splits=["nope"]), "experiment.splits names 'nope'"),
        (lambda p: p["splits"]["random0"].pop("seed"), "splits.random0 uses method 'random' and needs a 'seed'"),
        (lambda p: p["train"].update(lr_steps=[0.8, 0.5]), "train.lr_steps must increase"),
        (lambda p: p["model"].update(dropout=1.0), "'model.dropout': 1.0 is greater than or equal to"),
        (lambda p: p["experiment"]["dissimilar"].update(splits=["random0"]),
         "experiment.dissimilar.splits names 'random0', a random split"),
        (lambda p: p["experiment"]["dissimilar"].update(splits=["natman"]),
         "experiment.dissimilar.splits names 'natman', which is not defined under 'splits'"),
        (lambda p: p["experiment"].update(splits=["random0", "dissimilar"]),
         "'dissimilar' is in both experiment.splits and experiment.dissimilar.splits"),
        (lambda p: p["compute"].update(precision="float16"), "'compute.precision' is 'float16'; allowed values"),
        # combinations that passed check and then crashed in training or feature extraction
        (lambda p: p["train"].update(crop=32),
         "train.crop is 32 but the fashion_mnist images are 28x28; set train.crop to at most 28, or null"),
        (lambda p: p["model"].update(arch="caffenet"),
         "model.arch caffenet takes inputs of at least 67x67, but the fashion_mnist images are 28x28; "
         "use model.arch: small"),
        (lambda p: (p["model"].update(arch="caffenet"), p["train"].update(crop=60),
                    p["dataset"].update(source="imagefolder", image_size=64)),
         "model.arch caffenet takes inputs of at least 67x67, but train.crop is 60"),
        (lambda p: p["train"].update(crop=7), "model.arch small takes inputs of at least 8x8, but train.crop is 7"),
        (lambda p: (p["dataset"].update(source="imagefolder", image_size=300), p["train"].update(crop=301)),
         "train.crop is 301 but the imagefolder images are 300x300"),
        (lambda p: p["evaluate"].update(k_best=3), "evaluate.k_best is 3 but a run makes at most 2 evaluations"),
        (lambda p: (p["features"].update(networks=["baseA", "baseB", "A3B"]), p["experiment"].update(layers=[1, 2])),
         "features.networks has A3B, which the experiment does not train"),
    ],
)
def test_bad_params_give_one_clear_line(params, edit, expected):
    edit(params)
    with pytest.raises(UserError) as err:
        tparams.validate(params)
    assert expected in str(err.value)
    assert "\n" not in str(err.value)


def test_cli_reports_bad_params_in_one_line_before_any_work(tmp_path, params):
    params["experiment"]["layers"] = [9]
    f = tmp_path / "params.yaml"
    f.write_text(yaml.safe_dump(params))
    proc = subprocess.run([sys.executable, "-m", "transferability.cli", "--params", str(f), "prepare"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: {f}: experiment.layers has n = 9, but model.arch small has 8 units (conv1, conv2, ..., fc8): "
        "n runs over 1..7"]
    assert not (tmp_path / "data").exists()


def test_check_refuses_a_crop_larger_than_the_images_in_one_line(tmp_path, params):
    """Before: `check` said valid, and training crashed with a shape-mismatch traceback."""
    params["train"]["crop"] = 227
    f = tmp_path / "params.yaml"
    f.write_text(yaml.safe_dump(params))
    proc = subprocess.run([sys.executable, "-m", "transferability.cli", "--params", str(f), "check"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: {f}: train.crop is 227 but the fashion_mnist images are 28x28; set train.crop to at most 28, "
        "or null for no crop"]


@pytest.mark.parametrize(("arch", "least"), [("caffenet", 67), ("small", 8)])
def test_smallest_input_is_where_building_the_network_starts_to_work(arch, least):
    from transferability.networks.architecture import smallest_input
    from transferability.networks.models import build_model

    model = {"arch": arch, "width": 0.25, "init": "kaiming", "dropout": 0.5}
    assert smallest_input(model) == least
    build_model(model, 3, 2, least, seed=0)
    with pytest.raises(RuntimeError, match="too small"):
        build_model(model, 3, 2, least - 1, seed=0)


def test_missing_params_file(tmp_path):
    with pytest.raises(UserError, match="params file .*nothere.yaml not found"):
        tparams.load(tmp_path / "nothere.yaml")


def test_digest_is_stable_and_order_free():
    assert provenance.digest({"a": 1, "b": [1, 2]}) == provenance.digest({"b": [1, 2], "a": 1})
    assert provenance.digest({"a": 1}) != provenance.digest({"a": 2})
