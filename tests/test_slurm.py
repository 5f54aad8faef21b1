"""The smoke DAG on a real one-node Slurm cluster (munged, slurmctld, slurmd from Debian's packages,
started by tests/slurm_cluster.py) through `snakemake --workflow-profile workflow/profiles/slurm`.

Proof that the jobs really went through sbatch comes from the cluster's own records: slurmctld's
job completion log (jobcomp/filetxt: one line per finished job, with its state) and `scontrol show job`
(what each job asked for). The report equals a local `snakemake --cores 2` run's (conftest's
session fixture). A second, shorter run with compute.device auto shows that only training jobs ask
Slurm for a GPU (`--gpus=1`, from the rules' `gpu` resource).

Without Slurm installed the module is skipped, except under CI (the CI variable set, as .ci/run does),
where it fails: `make test-tools` installs slurm-wlm and munge.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from transferability import params as tparams

from . import slurm_cluster
from .conftest import ENV, SMOKE, make_workspace

pytestmark = pytest.mark.slow
PROFILE = "workflow/profiles/slurm"
# Test-only flags: this cluster has no slurmdbd, so no sacct (the plugin's default status command);
# a first status check after 1 s instead of 40 (the smoke jobs take seconds).
FLAGS = ["--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "1",
         "--latency-wait", "10"]
SUBMITTED = re.compile(r"has been submitted with SLURM jobid (\d+) \(log: (\S+)\)")
RULE_LOG = re.compile(r"/slurm_logs/rule_(\w+)/")
TIMEOUT_S = 1800


@pytest.fixture(scope="module")
def cluster():
    absent = slurm_cluster.missing()
    if absent:
        reason = f"no Slurm cluster can start here ({', '.join(absent)} missing): {slurm_cluster.MISSING_HINT}"
        if os.environ.get("CI", "").lower() not in ("", "0", "false"):
            pytest.fail(reason + " (CI is set: this test must run)")
        pytest.skip(reason)
    with slurm_cluster.SlurmCluster() as c:
        yield c


def run_on_slurm(cluster: slurm_cluster.SlurmCluster, ws: Path, *targets: str) -> dict[str, str]:
    """Run Snakemake through the slurm profile; return {Slurm job id: rule} of what it submitted."""
    args = ["snakemake", "--workflow-profile", PROFILE, *FLAGS, *targets]
    try:
        proc = subprocess.run(args, cwd=ws, env=cluster.env(ENV), capture_output=True, text=True,
                              timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired as e:
        cluster.run("scancel", "--user", str(os.getuid()), check=False)
        raise AssertionError(f"snakemake on Slurm ran past {TIMEOUT_S} s:\n{(e.stderr or b'')[-3000:]!r}\n"
                             f"{cluster.logs()}") from e
    log = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}):\n{log[-4000:]}\n{cluster.logs()}")
    submitted = {}
    for job_id, slurm_log in SUBMITTED.findall(log):
        submitted[job_id] = RULE_LOG.search(slurm_log)[1]
    assert submitted, f"no job was submitted to Slurm:\n{log[-3000:]}"
    return submitted


def dag_counts(ws: Path, *targets: str) -> dict[str, int]:
    """Jobs per rule of the whole DAG for ``targets`` (a forced dry run's job stats), 'all' left out."""
    out = subprocess.run(["snakemake", "-n", "--forceall", "--cores", "1", *targets], cwd=ws, env=ENV,
                         capture_output=True, text=True, check=True).stdout
    stats = out.split("Job stats:", 1)[1].split("total", 1)[0]
    return {rule: int(n) for rule, n in re.findall(r"^(\w+)\s+(\d+)$", stats, re.M) if rule != "all"}


def table(records: list[dict[str, str]], rules: dict[str, str], extra: dict[str, str] | None = None) -> str:
    lines = [f"{'JobId':>5}  {'rule':<15} {'JobState':<10} {'Partition':<9} {'TimeLimit':<11} "
             f"{'NodeList':<9} {'Tres':<34} TresPerJob"]
    for r in sorted(records, key=lambda r: int(r["JobId"])):
        lines.append(f"{r['JobId']:>5}  {rules.get(r['JobId'], '?'):<15} {r['JobState']:<10} {r['Partition']:<9} "
                     f"{r['TimeLimit']:<11} {r['NodeList']:<9} {r['Tres']:<34} "
                     f"{(extra or {}).get(r['JobId'], '-')}")
    return "\n".join(lines)


def show(capsys, title: str, text: str) -> None:
    with capsys.disabled():  # in the test output even without -s, so CI logs show the cluster's records
        print(f"\n--- {title}\n{text}")


@pytest.fixture(scope="module")
def smoke_on_slurm(cluster, tmp_path_factory):
    ws = make_workspace(tmp_path_factory.mktemp("slurm"))
    submitted = run_on_slurm(cluster, ws)
    records = {r["JobId"]: r for r in cluster.jobcomp(wait_for=set(submitted)) if r["JobId"] in submitted}
    gpus = {job_id: cluster.show_job(job_id).get("TresPerJob", "-") for job_id in submitted}
    return ws, submitted, records, gpus


def test_every_job_ran_through_sbatch_and_completed(smoke_on_slurm, capsys):
    ws, submitted, records, gpus = smoke_on_slurm
    listing = table(list(records.values()), submitted, gpus)
    show(capsys, f"slurmctld job completion records ({len(records)} jobs, {ws})", listing)
    expected = dag_counts(ws)
    assert set(expected) == {"prepare", "split", "train_base", "train_transfer", "features", "embed", "estimate",
                             "estimators", "report"}
    per_rule = {rule: sum(r == rule for r in submitted.values()) for rule in expected}
    assert per_rule == expected, listing
    assert set(records) == set(submitted), f"jobs without a completion record:\n{listing}"
    assert {r["JobState"] for r in records.values()} == {"COMPLETED"}, listing
    assert {r["ExitCode"].strip() for r in records.values()} == {"0:0"}, listing
    assert {r["WorkDir"].strip() for r in records.values()} == {str(ws)}, listing
    # device cpu: no job asks the cluster for a GPU
    assert all(g == "-" for g in gpus.values()) and not any("gpu" in r["Tres"] for r in records.values()), listing
    # the profile's runtime per rule reached sbatch -t
    limits = {rule: {r["TimeLimit"] for j, r in records.items() if submitted[j] == rule} for rule in expected}
    assert limits["train_base"] == limits["train_transfer"] == {"1440"}, listing  # minutes
    assert limits["prepare"] == {"60"} and limits["split"] == {"10"}, listing


def test_slurm_run_gives_the_local_runs_metrics(smoke_on_slurm, snakemake_ws):
    ws = smoke_on_slurm[0]
    runs = sorted(p.relative_to(ws) for p in (ws / "data" / "runs").rglob("metrics.json"))
    assert runs and runs == sorted(p.relative_to(snakemake_ws) for p in
                                   (snakemake_ws / "data" / "runs").rglob("metrics.json"))
    for f in runs:  # every network: same accuracies, learning curve and seeds (timing is in timing.json)
        assert json.loads((ws / f).read_text()) == json.loads((snakemake_ws / f).read_text()), f
    slurm = json.loads((ws / "reports" / "metrics.json").read_text())
    local = json.loads((snakemake_ws / "reports" / "metrics.json").read_text())
    assert slurm["random0"]["AnB"]["n3"]["top1_kbest"] == local["random0"]["AnB"]["n3"]["top1_kbest"]
    assert slurm == local


def test_only_training_jobs_ask_slurm_for_a_gpu(cluster, tmp_path, capsys):
    """compute.device auto: the rules' gpu=1 becomes `sbatch --gpus=1` for training jobs only (the test
    node advertises one count-only GPU; without a CUDA device the job then trains on the CPU)."""
    params = tparams.resolve(SMOKE)
    params["compute"]["device"] = "auto"
    params_file = tmp_path / "auto.yaml"
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    ws = make_workspace(tmp_path / "ws", params_file)
    target = "data/runs/random0/seed0/baseB/metrics.json"
    submitted = run_on_slurm(cluster, ws, target)
    gpus = {job_id: cluster.show_job(job_id).get("TresPerJob", "-").strip() for job_id in submitted}
    records = [r for r in cluster.jobcomp(wait_for=set(submitted)) if r["JobId"] in submitted]
    listing = table(records, submitted, gpus)
    show(capsys, "compute.device auto: what each job asked for", listing)
    assert sorted(submitted.values()) == ["prepare", "split", "train_base"], listing
    for job_id, rule in submitted.items():
        assert gpus[job_id] == ("gres:gpu:1" if rule == "train_base" else "-"), listing
    assert {r["JobState"] for r in records} == {"COMPLETED"}, listing
    assert (ws / target).exists()
