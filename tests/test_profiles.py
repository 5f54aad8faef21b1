"""Profiles state only how they differ from params.yaml: each resolves to exactly the whole file it
replaced (tests/data/params_d753035.json: every params file as parsed at commit d753035, before the
profiles became overlays), through the one function every route uses (transferability.params.resolve)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from transferability import cli
from transferability import params as tparams
from transferability.errors import UserError

from .conftest import ROOT, make_workspace, sh

WHOLE = json.loads((ROOT / "tests" / "data" / "params_d753035.json").read_text())
PROFILES = sorted(name for name in WHOLE if name.startswith("workflow/params/"))


def test_the_frozen_files_are_every_shipped_params_file():
    assert sorted(WHOLE) == sorted(["params.yaml", *(str(p.relative_to(ROOT))
                                                     for p in (ROOT / "workflow" / "params").glob("*.yaml"))])


@pytest.mark.parametrize("name", sorted(WHOLE))
def test_each_params_file_resolves_to_exactly_the_whole_file_it_was(name):
    """Values, types (1.0 is not 1) and key order (the report's provenance lists params in order)."""
    assert json.dumps(tparams.load(ROOT / name)) == json.dumps(WHOLE[name])


@pytest.mark.parametrize("name", PROFILES)
def test_a_profile_states_only_what_differs(name):
    """No key a profile states has the value of the file it extends: each says only how it differs."""
    overlay = yaml.safe_load((ROOT / name).read_text())
    base = tparams.resolve((ROOT / name).parent / overlay["extends"])

    def restated(over: dict, under: dict, where: str = "") -> list[str]:
        out = []
        for key, value in over.items():
            if key in ("extends", "drop") and not where:
                continue
            if isinstance(value, dict) and isinstance(under.get(key), dict):
                out += restated(value, under[key], f"{where}{key}.")
            elif key in under and under[key] == value:
                out.append(f"{where}{key}")
        return out

    assert restated(overlay, base) == []


def project_copy(dest: Path) -> Path:
    """params.yaml and the profiles, as in the project root."""
    shutil.copytree(ROOT / "workflow" / "params", dest / "workflow" / "params")
    shutil.copy(ROOT / "params.yaml", dest)
    return dest


def test_resolve_writes_the_whole_profile_for_dvc_and_refuses_another_over_it(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(project_copy(tmp_path))
    resnet = "workflow/params/resnet.yaml"
    assert cli.main(["--params", resnet, "check"]) == 0
    assert capsys.readouterr().out == f"{resnet}: valid; 38 networks planned\n"
    assert cli.main(["--params", resnet, "resolve", "--out", "params.yaml"]) == 0
    text = Path("params.yaml").read_text()
    assert text.startswith(f"{tparams.RESOLVED} from {resnet}:")
    assert json.dumps(yaml.safe_load(text)) == json.dumps(tparams.load("params.yaml")) == json.dumps(WHOLE[resnet])
    # printed without --out: the same file; and the same profile over it changes nothing (Snakemake given it)
    assert cli.main(["--params", resnet, "resolve"]) == 0
    assert capsys.readouterr().out == text
    assert json.dumps(tparams.load(resnet)) == json.dumps(WHOLE[resnet])
    # another profile over it would keep resnet's keys it does not state: refused, in one line
    assert cli.main(["--params", "workflow/params/smoke.yaml", "check"]) == 2
    assert capsys.readouterr().err == (
        "error: params.yaml was written by `transferability resolve` and workflow/params/smoke.yaml would change "
        "it: restore the default (`git checkout params.yaml`) before resolving workflow/params/smoke.yaml over it\n")
    assert Path("params.yaml").read_text() == text  # nothing written
    assert cli.main(["--params", "params.yaml", "resolve", "--out", "params.yaml"]) == 2
    assert "would overwrite the file it reads" in capsys.readouterr().err


def write(path: Path, params: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def test_mappings_merge_and_everything_else_replaces(tmp_path):
    base = write(tmp_path / "params.yaml", WHOLE["params.yaml"])
    write(tmp_path / "p" / "mid.yaml", {"extends": "../params.yaml", "drop": ["splits.random4", "model.width"],
                                        "train": {"lr_steps": [0.25], "crop": None, "normalise": "mean"},
                                        "model": {"arch": "resnet18"}})
    top = write(tmp_path / "p" / "top.yaml", {"extends": "mid.yaml", "train": {"crop": 24},
                                              "experiment": {"layers": [1, 9], "dissimilar": {"seeds": [5]}}})
    got, whole = tparams.resolve(top), tparams.resolve(base)
    assert got["train"]["lr_steps"] == [0.25]                                # a list replaces the base's
    assert got["train"]["crop"] == 24 and list(got["train"])[-1] == "normalise"   # a new key after the base's
    assert got["experiment"]["layers"] == [1, 9]
    assert got["experiment"]["dissimilar"] == {**whole["experiment"]["dissimilar"], "seeds": [5]}  # merged
    assert "random4" not in got["splits"] and "width" not in got["model"] and got["model"]["arch"] == "resnet18"
    assert got["dataset"] == whole["dataset"] and tparams.resolve(base) == whole  # the base is untouched
    assert tparams.resolve(tmp_path / "p" / "mid.yaml")["train"]["crop"] is None   # null replaces too


@pytest.mark.parametrize(("overlay", "says"), [
    ({"train": {"lr_typo": 0.1}}, "x.yaml: unknown key ['lr_typo'] under 'train'; allowed keys: "),
    ({"traim": {"lr": 0.1}}, "x.yaml: unknown key ['traim'] at the top level"),
    ({"model": {"arch": "vgg"}}, "x.yaml: 'model.arch' is 'vgg'; allowed values: small, caffenet, resnet18"),
    ({"drop": ["splits.random9"]}, "x.yaml: drop names splits.random9, which what it extends does not have"),
    ({"drop": "model.width"}, "x.yaml: drop must be a list of dotted keys"),
    ({"drop": ["model.dropout"]}, "x.yaml: missing key under 'model'"),   # the schema, after the merge
])
def test_a_bad_overlay_is_one_line_naming_it(tmp_path, overlay, says):
    write(tmp_path / "params.yaml", WHOLE["params.yaml"])
    f = write(tmp_path / "x.yaml", {"extends": "params.yaml", **overlay})
    with pytest.raises(UserError) as err:
        tparams.load(f)
    assert "\n" not in str(err.value) and str(err.value).startswith(f"{tmp_path}/{says}"), str(err.value)


def test_a_broken_extends_is_one_line_naming_it(tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    write(a, {"extends": "nothere.yaml"})
    with pytest.raises(UserError, match=r"a.yaml: extends .*nothere.yaml, which is not a file \(the path is relative"):
        tparams.load(a)
    write(a, {"extends": "b.yaml"})
    write(b, {"extends": "a.yaml"})
    with pytest.raises(UserError, match=r"a.yaml: extends leads back to .*a.yaml"):
        tparams.load(a)
    write(a, {**WHOLE["params.yaml"], "drop": ["model.width"]})
    with pytest.raises(UserError, match=r"a.yaml: 'drop' removes keys from the file a profile extends"):
        tparams.load(a)
    a.write_text("")
    with pytest.raises(UserError, match=r"a.yaml is empty; `git checkout .*a.yaml` restores"):
        tparams.load(a)


# Both DAGs plan the same jobs from a profile as from the whole file it replaced, job for job.


@pytest.mark.slow
@pytest.mark.parametrize("name", PROFILES, ids=[Path(p).stem for p in PROFILES])
def test_both_dags_plan_a_profile_as_the_whole_file_it_replaced(tmp_path, name):
    from .test_workflow import dvc_stages, snakemake_jobs

    ws = make_workspace(tmp_path / "ws", params_file=None)
    write(ws / "whole.yaml", WHOLE[name])
    def planned(configfile: str) -> list[dict]:
        return sorted(snakemake_jobs(ws, "--configfile", configfile), key=lambda job: (job["rule"], job["cmd"]))

    jobs = planned(name)
    assert jobs == planned("whole.yaml") and jobs
    dvc_reads_whole = dvc_stages(write(ws / "params.yaml", WHOLE[name]).parent)
    shutil.copy(ROOT / "params.yaml", ws)  # the default back, for the profile's command for DVC (its header)
    sh(["transferability", "--params", name, "resolve", "--out", "params.yaml"], ws)
    assert dvc_stages(ws) == dvc_reads_whole and len(dvc_reads_whole) == len(jobs)
