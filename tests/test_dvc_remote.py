"""The DVC remote round trip: a finished smoke run, recorded (`dvc commit`, `git commit`) and pushed to
the project's default remote (a local directory, .dvc/config), comes back bit-identical in a fresh
`git clone` by `dvc pull`: the data store, the splits, every run's files, the checkpoints, the feature
dumps, the embeddings, the report's figures, tables and metrics (not the wall-clock timings, nor the
views that print them: dvc.yaml); `dvc status` in the clone is then clean."""

from __future__ import annotations

import configparser
import hashlib
import re
import shutil
from pathlib import Path

import pytest
import yaml

from .conftest import ROOT, dvc_reads, sh

pytestmark = pytest.mark.slow
GIT = ["git", "-c", "user.email=t@example.org", "-c", "user.name=test"]
CLEAN = "Data and pipelines are up to date."
# Snakemake's marker in each directory() output: in .dvcignore, so neither hashed, pushed nor pulled
MARKER = ".snakemake_timestamp"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tracked_files(ws: Path) -> dict[str, str]:
    """Every file behind an output in dvc.lock (directories expanded) -> its sha256."""
    lock = yaml.safe_load((ws / "dvc.lock").read_text())
    files = {}
    for stage in lock["stages"].values():
        for out in stage.get("outs", []):
            path = ws / out["path"]
            for f in [path] if path.is_file() else sorted(p for p in path.rglob("*")
                                                          if p.is_file() and p.name != MARKER):
                files[f.relative_to(ws).as_posix()] = sha256(f)
    return files


def default_remote(ws: Path) -> tuple[str, Path]:
    """The default remote's name and the directory its url resolves to in ``ws``."""
    name = sh(["dvc", "remote", "default"], ws).stdout.strip()
    listed = sh(["dvc", "remote", "list"], ws).stdout
    url = re.search(rf"^{re.escape(name)}\s+(\S+)", listed, re.M)
    assert url, listed
    return name, Path(url[1]).resolve()


def test_the_committed_default_remote_is_a_directory_beside_the_checkout():
    config = configparser.ConfigParser()
    config.read(ROOT / ".dvc" / "config")
    name = config["core"]["remote"]
    url = config[f"'remote \"{name}\"'"]["url"]
    assert "://" not in url and not Path(url).is_absolute(), url  # a local directory, relative
    assert (ROOT / ".dvc" / url).resolve() == (ROOT.parent / "transferability-dvc-remote").resolve()


@pytest.fixture(scope="module")
def pushed(snakemake_ws):
    """The smoke workspace with the project's .dvc/config, recorded in dvc.lock and git, pushed."""
    ws = dvc_reads(snakemake_ws)  # the profile Snakemake was given, where DVC reads it
    shutil.copy2(ROOT / ".dvc" / "config", ws / ".dvc" / "config")
    sh(["dvc", "commit", "--force", "--quiet"], ws)
    sh([*GIT, "add", "-A"], ws)
    sh([*GIT, "commit", "-qm", "smoke results", "--allow-empty"], ws)
    name, remote = default_remote(ws)
    assert remote == ws.parent / "transferability-dvc-remote"  # <checkout>/../transferability-dvc-remote
    sh(["dvc", "push"], ws)
    return ws, name, remote


def test_push_fills_the_default_remote(pushed):
    ws, name, remote = pushed
    assert any(p.is_file() for p in (remote / "files" / "md5").rglob("*"))
    assert f"Cache and remote '{name}' are in sync." in sh(["dvc", "status", "--cloud"], ws).stdout


def test_pull_in_a_fresh_clone_is_bit_identical(pushed, tmp_path):
    ws, name, remote = pushed
    expected = tracked_files(ws)
    # what the round trip has to carry: data, every run's files and checkpoint, features, report, metrics
    for pattern in ("data/prepared/", "data/splits/", "data/runs/", "/model.pt", "/metrics.json",
                    "data/checkpoints/", "data/features/", "data/embed/", "reports/figure2.png", "reports/curves/",
                    "reports/metrics.json"):
        assert any(pattern in f for f in expected), pattern
    # wall-clock timings and the views that print them are no DVC output (dvc.yaml): not carried
    assert not any(f.endswith("/timing.json") or f == "reports/index.html" for f in expected)
    n_runs = sum(f.endswith("/model.pt") for f in expected)
    assert n_runs > 0 and n_runs == sum(f.startswith("data/checkpoints/") for f in expected)  # one each

    clone = tmp_path / "clone"  # not beside the workspace: the clone points at the remote in config.local
    sh(["git", "clone", "-q", str(ws), str(clone)], tmp_path)
    assert not (clone / "data" / "runs").exists() and not (clone / ".dvc" / "cache").exists()
    sh(["dvc", "remote", "modify", "--local", name, "url", str(remote)], clone)
    assert default_remote(clone) == (name, remote)
    sh(["dvc", "pull"], clone)

    got = tracked_files(clone)
    assert sorted(got) == sorted(expected)
    assert (ws / "reports" / "curves" / MARKER).exists() and not (clone / "reports" / "curves" / MARKER).exists()
    differ = [f for f in expected if got[f] != expected[f]]
    assert not differ, differ
    assert CLEAN in sh(["dvc", "status"], clone).stdout
    assert sh(["git", "status", "--porcelain"], clone).stdout == ""  # pulled files are all ignored by git
    # the page, not carried, is written again from what was pulled: the same metrics, no timings
    sh(["transferability", "report"], clone)
    assert (clone / "reports/metrics.json").read_bytes() == (ws / "reports/metrics.json").read_bytes()
    assert "reports/estimators.json is not here" in (clone / "reports/index.html").read_text()
    assert CLEAN in sh(["dvc", "status"], clone).stdout
