"""Shared fixtures: the real Fashion-MNIST store (Debian's package) and the smoke params."""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from transferability import params as tparams
from transferability.data.sources import read_source
from transferability.data.store import load_store, write_store

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "workflow" / "params" / "smoke.yaml"
# The tools (snakemake, dvc, transferability) installed beside the interpreter running the tests.
ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
# What a workspace needs to run both DAGs: the project minus data, reports and caches.
PROJECT_ENTRIES = ["Snakefile", "dvc.yaml", "params.yaml", "workflow", "src", ".dvcignore", ".gitignore"]


@pytest.fixture(scope="session")
def smoke_params() -> dict:
    return tparams.load(SMOKE)


@pytest.fixture
def params(smoke_params) -> dict:
    return copy.deepcopy(smoke_params)


@pytest.fixture
def workspace(tmp_path, monkeypatch, params) -> Path:
    """An empty project folder (the working directory) with the smoke store prepared and split random0."""
    from transferability import stages
    monkeypatch.chdir(tmp_path)
    stages.prepare(params)
    stages.split(params, "random0")
    return tmp_path


@pytest.fixture(scope="session")
def fmnist_store(tmp_path_factory, smoke_params):
    dest = tmp_path_factory.mktemp("store") / "fashion_mnist"
    write_store(dest, *read_source(smoke_params["dataset"], dest.with_name("work")))
    return load_store(dest)


def write_params(profile: Path, dest: Path) -> None:
    """The whole params ``profile`` stands for, written to ``dest`` as `transferability resolve --out` does."""
    tparams.write_resolved(tparams.load(profile), profile, dest)


def make_workspace(dest: Path, params_file: Path | None = SMOKE) -> Path:
    """A copy of the project in ``dest`` with ``params_file`` resolved as its params.yaml (None: the
    project's own, for Snakemake given a profile with --configfile), as a git repo."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_ENTRIES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(src, dest / name)
    if params_file is not None:
        write_params(params_file, dest / "params.yaml")
    run = dict(cwd=dest, check=True, capture_output=True, env=ENV)
    subprocess.run(["git", "init", "-q", "-b", "main"], **run)
    subprocess.run(["git", "-c", "user.email=t@example.org", "-c", "user.name=test", "add", "-A"], **run)
    subprocess.run(["git", "-c", "user.email=t@example.org", "-c", "user.name=test", "commit", "-qm",
                    "workspace"], **run)
    subprocess.run(["dvc", "init", "-q"], **run)
    subprocess.run(["git", "-c", "user.email=t@example.org", "-c", "user.name=test", "commit", "-qam",
                    "dvc init"], **run)
    return dest


def sh(args: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, cwd=cwd, env=ENV, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}):\n"
                             f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def dvc_reads(ws: Path, profile: Path = SMOKE) -> Path:
    """Resolve ``profile`` into the workspace's params.yaml by the command its header gives for DVC
    (it reads only that file), as typed."""
    (command,) = re.findall(r"^# DVC reads only params.yaml: (transferability .*)$", profile.read_text(), re.M)
    sh(command.split(), ws)
    return ws


# The smoke DAG run once per test session, under each tool; test_workflow, test_dvc_remote,
# test_snakemake_report and test_browser all read the same finished workspaces.
@pytest.fixture(scope="session")
def snakemake_ws(tmp_path_factory):
    """The README's command as typed, in a workspace that keeps the project's own params.yaml."""
    ws = make_workspace(tmp_path_factory.mktemp("snakemake"), params_file=None)
    sh(["snakemake", "--configfile", "workflow/params/smoke.yaml", "--cores", "2"], ws)
    return ws


@pytest.fixture(scope="session")
def dvc_ws(tmp_path_factory):
    """`dvc repro` on one core: each stage then runs with 1 thread, as Snakemake's jobs do with the
    smoke profile's compute.threads (the thread count changes the last bits of a network's numbers)."""
    ws = make_workspace(tmp_path_factory.mktemp("dvc"))
    sh(["taskset", "-c", str(min(os.sched_getaffinity(0))), "dvc", "repro"], ws)
    return ws
