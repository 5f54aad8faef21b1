"""Both DAGs end to end on the smoke profile: Snakemake and DVC run the same commands on the same
paths, produce bit-identical metrics, and DVC can record, reproduce and diff the results."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest
import yaml

from transferability import params as tparams
from transferability import runs

from .conftest import ROOT, SMOKE, dvc_reads, make_workspace, sh

pytestmark = pytest.mark.slow
NETWORKS = 37 + 9  # random0: 2 bases, 4 variants x 7 n, 7 random-filter controls; dissimilar: 2 bases, AnB x 7
PROFILES = sorted((ROOT / "workflow" / "params").glob("*.yaml"))
# The CLI's options before the stage: which params file and how many threads. Snakemake passes the
# file it was given and the threads it gave the job; DVC passes params.yaml and lets a stage take every core.
GLOBAL_OPTIONS = re.compile(r" --(?:params|threads) \S+")


def stage_command(cmd: str) -> str:
    """A shell command without the CLI's global options: the stage and its arguments."""
    return GLOBAL_OPTIONS.sub("", cmd)


def snakemake_jobs(ws: Path, *extra: str) -> list[dict]:
    """Jobs of a forced dry run: rule, outputs, resources, threads and the stage command (log redirect cut)."""
    out = sh(["snakemake", "-n", "-p", "--forceall", "--cores", "all", *extra], ws).stdout
    jobs = []
    for block in out.split("\nrule ")[1:]:
        rule = block.split(":", 1)[0]
        if rule == "all":
            continue
        fields = dict(re.findall(r"^    (\w+): (.*)$", block, re.M))
        cmd = re.search(r"^Shell command: (.*)$", block, re.M)[1].split(" > ")[0]
        threads = re.search(r" --threads (\d+) ", cmd)
        jobs.append({"rule": rule, "outputs": set(fields["output"].split(", ")), "resources": fields["resources"],
                     "threads": int(threads[1]) if threads else None, "cmd": stage_command(cmd)})
    return jobs


def dvc_stages(ws: Path) -> list[dict]:
    from dvc.repo import Repo

    with Repo(str(ws)) as repo:
        return [{"name": s.addressing, "cmd": stage_command(s.cmd), "outputs": {str(o.def_path) for o in s.outs}}
                for s in repo.index.stages]


# What the stages write but DVC does not record: wall-clock timings, and the views that print them
UNRECORDED_VIEWS = {"reports/index.html", "reports/runs.csv", "reports/runs.md", "reports/estimators.md",
                    "reports/estimators.png", "reports/estimators.json"}


def unrecorded(path: str) -> bool:
    return path.endswith("/timing.json") or path.split(" ")[0] in UNRECORDED_VIEWS


def job_counts(dry_run: str) -> dict[str, int]:
    """The 'Job stats' table of a Snakemake dry run: jobs per rule."""
    table = dry_run.split("Job stats:", 1)[1].split("total", 1)[0]
    return {rule: int(n) for rule, n in re.findall(r"^(\w+)\s+(\d+)$", table, re.M)}


@pytest.mark.parametrize("profile", PROFILES, ids=[p.stem for p in PROFILES])
def test_every_profile_plans_its_whole_dag_as_documented(tmp_path, profile):
    """`snakemake -n --configfile workflow/params/<profile>.yaml --cores all`, as typed, beside the
    project's own params.yaml: the jobs read the profile alone (the ImageNet profiles' dataset folder
    is not here; only running needs it)."""
    ws = make_workspace(tmp_path / "ws", params_file=None)
    assert (ws / "params.yaml").read_bytes() == (ROOT / "params.yaml").read_bytes()
    rel = profile.relative_to(ROOT)
    proc = sh(["snakemake", "-n", "--configfile", str(rel), "--cores", "all"], ws)
    params = tparams.load(profile)
    exp = params["experiment"]
    nets = runs.networks(params)
    assert job_counts(proc.stdout) == {
        "prepare": 1, "split": len(exp["splits"]) + len(exp["dissimilar"]["splits"]),
        "train_base": sum(n.is_base for n in nets), "train_transfer": sum(not n.is_base for n in nets),
        "features": len(runs.feature_jobs(params)), "embed": len(runs.feature_jobs(params)),
        "estimate": len(exp["splits"]) * len(exp["seeds"]), "estimators": 1, "report": 1, "all": 1}
    # the command the profile's header shows, dry and with its shell commands: each reads the profile
    (use,) = re.findall(r"^# Use: (snakemake .*)$", profile.read_text(), re.M)
    assert f"--configfile {rel}" in use, use
    shell = sh([*use.split(), "-n", "-p"], ws).stdout
    assert job_counts(shell) == job_counts(proc.stdout)
    commands = re.findall(r"^Shell command: (transferability .*)$", shell, re.M)
    assert commands and all(c.startswith(f"transferability --params {rel} ") for c in commands)


def test_snakemake_config_overrides_and_two_configfiles_are_refused_in_one_line(tmp_path):
    ws = make_workspace(tmp_path / "ws")
    for args, says in ((["--config", "train={lr: 0.1}"], "snakemake --config is refused"),
                       (["--configfile", "params.yaml", "workflow/params/single.yaml"],
                        "--configfile got 2 files; give one whole params file")):
        proc = sh(["snakemake", "-n", "--cores", "1", *args], ws, check=False)
        assert proc.returncode == 1 and proc.stdout == "", proc.stdout
        assert proc.stderr.splitlines() == [proc.stderr.strip()] and proc.stderr.startswith(f"error: {says}"), \
            proc.stderr


# snakemake_ws, dvc_ws: the smoke DAG run once per session (conftest.py).


def test_snakemake_run_writes_the_report(snakemake_ws):
    # the jobs read the profile alone (not merged with params.yaml), each with the threads Snakemake gave it
    smoke = tparams.load(SMOKE)
    base = json.loads((snakemake_ws / "data/runs/random0/seed0/baseB/metrics.json").read_text())
    assert {k: base["params"][k] for k in ("dataset", "model", "train", "evaluate")} == \
        {k: smoke[k] for k in ("dataset", "model", "train", "evaluate")}
    assert base["params"]["compute"]["threads"] == smoke["compute"]["threads"] == 1
    reports = snakemake_ws / "reports"
    for name in ("index.html", "metrics.json", "figure2.png", "figure2-replicates.png", "curves.png", "probes.png",
                 "runs.csv", "decomposition.md", "fne.md", "findings.md", "dissimilar.png", "random_filters.png"):
        assert (reports / name).stat().st_size > 0, name
    assert all((reports / name).read_bytes()[:4] == b"\x89PNG" for name in ("figure2.png", "figure2-replicates.png"))
    metrics = json.loads((reports / "metrics.json").read_text())["random0"]
    for variant in ("BnB", "BnB-ft", "AnB", "AnB-ft", "RnB"):
        assert sorted(metrics[variant]) == [f"n{n}" for n in range(1, 8)]
        assert all(0 <= v["top1_kbest"] <= 1 for v in metrics[variant].values())
    assert set(metrics["effects_B"]["n3"]) == {"coadaptation_loss", "specificity", "finetune_gain"}
    n3 = metrics["effects_B"]["n3"]
    expected = metrics["BnB"]["n3"]["top1_kbest"] - metrics["AnB"]["n3"]["top1_kbest"]
    assert n3["specificity"] == pytest.approx(expected, abs=2e-6)
    findings = json.loads((reports / "metrics.json").read_text())["findings"]
    assert set(findings) == {"specificity", "fragile co-adaptation", "fine-tuning boost",
                             "dissimilar tasks transfer worse", "random frozen filters"}
    assert {f["verdict"] for f in findings.values()} == {"inconclusive"}  # one seed: no interval, no verdict
    assert "The study's findings on this data" in (reports / "index.html").read_text()
    fne = metrics["fne"]
    assert sorted(fne) == ["baseA_on_B", "baseA_on_digits", "baseB_on_B", "baseB_on_digits"]
    assert sorted(fne["baseA_on_digits"]) == ["5_per_class", "all"]
    assert {"full_network", "fc6", "fc7", "probe_conv1"} <= set(fne["baseA_on_B"]["all"])
    fne_rows = (reports / "fne.md").read_text().splitlines()
    assert [r.split(" | ")[0] for r in fne_rows[2:]] == ["| fc6", "| fc7", "| full network (FNE)"]
    rows = (reports / "runs.csv").read_text().splitlines()
    assert len(rows) == 1 + NETWORKS
    html = (reports / "index.html").read_text()
    assert html.index('src="figure2.png"') < html.index('src="figure2-replicates.png"')  # the pooled panel first
    assert "A3B+" in html and "co-adaptation" in html
    assert len(list((reports / "curves").glob("*.csv"))) == NETWORKS
    bench = [f for split in ("random0", "dissimilar")  # one per training
             for f in (snakemake_ws / "data" / "benchmarks" / split).rglob("*.tsv")]
    assert len(bench) == NETWORKS


def test_estimators_stage_scores_every_layer_against_the_measured_curves(snakemake_ws):
    methods = tparams.load(SMOKE)["estimators"]["methods"]  # the profile Snakemake was given
    reports = snakemake_ws / "reports"
    scores = json.loads((snakemake_ws / "data/estimates/random0/seed0/scores.json").read_text())["targets"]
    assert list(scores) == ["B"] and scores["B"]["source_network"] == "baseA" and scores["B"]["images"] == 200
    for method in methods:
        value = scores["B"]["scores"][method]
        assert isinstance(value, float) if method in ("leep", "nce") else len(value) == 7, method
    embed = json.loads((snakemake_ws / "data/embed/random0/seed0/baseA/B.json").read_text())["results"]["all"]
    layers = ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7"]
    assert scores["B"]["scores"]["probe"] == [embed[f"probe_{layer}"]["mean"] for layer in layers]  # the same probe
    cka = scores["B"]["scores"]["cka"]
    assert all(0 < v <= 1 for v in cka)
    estimators = json.loads((reports / "metrics.json").read_text())["estimators"]
    assert set(estimators) == set(methods) | {"depth", "order"}   # depth alone, and (a)'s fixed order, beside them
    for method in set(methods) - {"leep", "nce"}:
        for curve in ("AnB", "AnB-ft"):
            tau = estimators[method][curve]["kendall"]
            assert -1 <= tau["mean"] <= 1 and tau["replicates"] == 1 and tau["ci95"] is None, (method, curve)
            assert estimators[method][curve]["gain_over_depth"]["verdict"].startswith("does not beat depth")
    table = (reports / "estimators.md").read_text()
    assert "| LogME |" in table and "Tracks AnB (frozen) best" in table
    assert (reports / "estimators.png").read_bytes()[:4] == b"\x89PNG"
    assert 'src="estimators.png"' in (reports / "index.html").read_text()


def test_dvc_commit_after_snakemake_records_it(snakemake_ws):
    dvc_reads(snakemake_ws)  # the profile Snakemake was given, where DVC reads it
    sh(["dvc", "commit", "--force"], snakemake_ws)
    status = sh(["dvc", "status"], snakemake_ws).stdout
    assert "Data and pipelines are up to date." in status, status


def test_the_two_dags_agree(tmp_path):
    """The same stages on the same paths: Snakemake given the profile as documented, DVC reading it
    as params.yaml. The store is its folder in DVC and, in Snakemake, its manifest (written last, in
    the same swap of the folder; `update`: kept in place while prepare runs)."""
    ws = make_workspace(tmp_path / "ws")
    jobs = snakemake_jobs(ws, "--configfile", "workflow/params/smoke.yaml")
    stages = dvc_stages(ws)
    assert sorted(j["cmd"] for j in jobs) == sorted(s["cmd"] for s in stages)
    by_cmd = {s["cmd"]: s for s in stages}
    for job in jobs:
        stage_outs = {f"{o}/manifest.json (update)" if o.startswith("data/prepared/") else o
                      for o in by_cmd[job["cmd"]]["outputs"] if not o.startswith("data/checkpoints/")}
        # DVC records all but what holds wall-clock time (dvc.yaml's header): Snakemake makes those too
        assert {o for o in job["outputs"] if not unrecorded(o)} == stage_outs, job["cmd"]
    assert len([j for j in jobs if j["rule"].startswith("train")]) == NETWORKS
    # the jobs that compute ask for compute.threads; split and report run on one
    assert {j["rule"]: j["threads"] for j in jobs} == {"prepare": 1, "split": None, "train_base": 1,
                                                      "train_transfer": 1, "features": 1, "embed": 1,
                                                      "estimate": 1, "estimators": None, "report": None}


def test_the_resnet_profile_plans_the_same_commands_in_both_dags(tmp_path):
    """As its header says: Snakemake given the profile with --configfile, DVC reading it resolved into params.yaml;
    n runs over the ResNet-18's 1..9."""
    rel = "workflow/params/resnet.yaml"
    ws = make_workspace(tmp_path / "ws", ROOT / rel)
    jobs = snakemake_jobs(ws, "--configfile", rel)
    dry = sh(["dvc", "repro", "--dry", "--force"], ws).stdout
    assert sorted(stage_command(c) for c in re.findall(r"^> (.*)$", dry, re.M)) == sorted(j["cmd"] for j in jobs)
    transfer = {j["cmd"] for j in jobs if j["rule"] == "train_transfer"}
    assert len(transfer) == 4 * 9 and "transferability train --split random0 --seed 0 --variant AnB --n 9" in transfer


def test_make_run_with_a_profile_runs_snakemake_on_it():
    """The README's `make run PARAMS=workflow/params/resnet.yaml`, as typed but dry (make -n): set-up, then
    Snakemake given the profile; no `dvc commit`, whose record is params.yaml's."""
    line = next(ln for ln in (ROOT / "README.md").read_text().splitlines() if ln.startswith("make run PARAMS="))
    command = line.split("#")[0].split()
    proc = sh(["make", "-n", *command[1:]], ROOT)
    assert "snakemake --configfile workflow/params/resnet.yaml --cores all" in proc.stdout.splitlines()
    assert "dvc commit" not in proc.stdout


def test_snakemake_jobs_take_the_threads_snakemake_gives_them(tmp_path):
    params = tparams.resolve(SMOKE)
    params["compute"]["threads"] = 2
    f = tmp_path / "two.yaml"
    f.write_text(yaml.safe_dump(params))
    ws = make_workspace(tmp_path / "ws", f)
    computing = ("prepare", "train_base", "train_transfer", "features", "embed", "estimate")
    for cores, threads in (("2", 2), ("1", 1)):  # --cores 1: Snakemake scales every job down to 1
        jobs = [j for j in snakemake_jobs(ws, "--cores", cores) if j["rule"] in computing]
        assert {j["threads"] for j in jobs} == {threads}, cores


def test_a_dvc_stage_takes_every_core_and_records_it(tmp_path):
    ws = make_workspace(tmp_path / "ws")
    sh(["dvc", "repro", "train_base@random0-0-baseA"], ws)
    cores = len(os.sched_getaffinity(0))
    metrics = json.loads((ws / "data/runs/random0/seed0/baseA/metrics.json").read_text())
    timing = json.loads((ws / "data/runs/random0/seed0/baseA/timing.json").read_text())
    assert metrics["params"]["compute"]["threads"] == timing["threads"] == cores


def test_dvc_repro_gives_the_same_metrics_as_snakemake(snakemake_ws, dvc_ws):
    files = sorted(p.relative_to(dvc_ws) for p in (dvc_ws / "data" / "runs").rglob("metrics.json"))
    assert len(files) == NETWORKS
    for f in files:
        assert (dvc_ws / f).read_bytes() == (snakemake_ws / f).read_bytes(), f
    assert (dvc_ws / "reports/metrics.json").read_bytes() == (snakemake_ws / "reports/metrics.json").read_bytes()


def test_dvc_exp_run_and_metrics_diff(dvc_ws):
    git = ["git", "-c", "user.email=t@example.org", "-c", "user.name=test"]
    sh([*git, "add", "dvc.lock", "reports/metrics.json", "data/splits"], dvc_ws, check=False)
    sh([*git, "add", "-A"], dvc_ws)
    sh([*git, "commit", "-qm", "smoke results"], dvc_ws)
    sh(["dvc", "exp", "run", "-S", "train.lr=0.05"], dvc_ws)
    diff = sh(["dvc", "metrics", "diff", "--md"], dvc_ws).stdout
    for key in ("random0.baseB.top1_kbest", "random0.AnB-ft.n3.top1_kbest", "random0.BnB.n7.top1_kbest"):
        assert re.search(rf"\| reports/metrics.json\s*\| {re.escape(key)}\s*\|", diff), (key, diff)
    show = sh(["dvc", "exp", "show", "--md", "--no-pager"], dvc_ws).stdout
    assert "train.lr" in show and "0.05" in show


def test_gpu_plan_asks_one_gpu_per_training_and_features_job(tmp_path):
    params = tparams.resolve(SMOKE)
    params["compute"]["device"] = "cuda"
    gpu_params = tmp_path / "gpu.yaml"
    gpu_params.write_text(yaml.safe_dump(params))
    ws = make_workspace(tmp_path / "ws", gpu_params)
    jobs = snakemake_jobs(ws, "--resources", "gpu=4")
    train = [j for j in jobs if j["rule"].startswith("train")]
    assert len(train) == NETWORKS
    assert all("gpu=1" in j["resources"] for j in train)
    assert any(j["rule"] == "features" for j in jobs)  # the dumps run on compute.device too
    assert all(("gpu=1" in j["resources"]) == (j["rule"].startswith("train") or j["rule"] == "features")
               for j in jobs)
    dry = sh(["dvc", "repro", "--dry", "--force"], ws).stdout
    assert sorted(stage_command(c) for c in re.findall(r"^> (.*)$", dry, re.M)) == sorted(j["cmd"] for j in jobs)


def test_snakemake_lint_is_clean(tmp_path):
    ws = make_workspace(tmp_path / "ws")
    proc = sh(["snakemake", "--lint"], ws, check=False)
    assert proc.returncode == 0 and "Congratulations" in proc.stdout + proc.stderr, proc.stdout + proc.stderr


def test_tradeoff_table_on_the_finished_smoke_run(snakemake_ws, tmp_path):
    """benchmarks/tradeoff.py in a finished run's folder: one random unit, so one row, every finding
    inconclusive, and the whole run's minutes (the subset keeps all of its training CPU time)."""
    out = tmp_path / "tradeoff.json"
    sh([sys.executable, str(ROOT / "benchmarks" / "tradeoff.py"), "--params", str(SMOKE), "--run", ".",
        "--setup-min", "2", "--snakemake-min", "3", "--out", str(out)], snakemake_ws)
    (row,) = json.loads(out.read_text())["figures"]["rows"]
    assert row == {"units": 1, "subsets": 1, "networks": NETWORKS, "minutes": 5.0, "inconclusive_mean": 5,
                   "inconclusive_max": 5, "budget_outside_mean": 7}


def test_embedding_benchmark_on_the_workflows_dumps(snakemake_ws, tmp_path):
    out = tmp_path / "embedding.json"
    sh([sys.executable, str(ROOT / "benchmarks" / "embedding.py"), "--quick", "--params", str(SMOKE),
        "--dumps", str(snakemake_ws / "data/features/random0/seed0/baseA"), "--out", str(out)], tmp_path)
    figures = json.loads(out.read_text())["figures"]["per_feature_set"]
    assert {"full_network", "fc6", "fc7", "probe_conv1", "probe_fc7"} <= set(figures)
    for name, f in figures.items():
        assert f["newton_s"] > 0 and f["liblinear_s"] > 0, name
        assert abs(f["top1_diff_points"]) <= 2.0, name  # the same optimum: at most a few test images apart


def test_two_identical_dvc_runs_leave_the_same_dvc_lock(tmp_path):
    """DVC's record attests a reproduction: `dvc repro` of the smoke profile in two workspaces at once (one
    core each, so each stage runs one thread, as dvc_ws) records every output with the same hash, so the two
    dvc.lock files are the same file; the wall-clock timings (timing.json, the seconds beside each
    checkpoint, the views that print them) were written all the same, differ, and are in no hash."""
    import subprocess

    from .conftest import ENV

    cores = sorted(os.sched_getaffinity(0))
    spaces = [make_workspace(tmp_path / name) for name in ("one", "two")]
    procs = [subprocess.Popen(["taskset", "-c", str(cores[i % len(cores)]), "dvc", "repro"], cwd=ws, env=ENV,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i, ws in enumerate(spaces)]
    for proc in procs:
        out = proc.communicate()[0]
        assert proc.returncode == 0, out[-3000:]
    first, second = ((ws / "dvc.lock").read_text() for ws in spaces)
    outs = {o["path"] for stage in yaml.safe_load(first)["stages"].values() for o in stage.get("outs", [])}
    assert any(o.startswith("data/checkpoints/") for o in outs) and "reports/metrics.json" in outs
    assert not any(o.endswith("timing.json") or unrecorded(o) for o in outs)
    timing = "data/runs/random0/seed0/baseA/timing.json"
    assert all((ws / timing).exists() and (ws / "reports/index.html").exists() for ws in spaces)
    assert (spaces[0] / timing).read_bytes() != (spaces[1] / timing).read_bytes()
    assert first == second
