"""What every section of the GPU check kit shares: the Kit (device, scratch folder, deadline,
environment), the smoke params and workspaces its jobs run in, the CLI as a Snakemake rule runs it,
and the worker processes that run work which may crash, hang or overrun (gpu/sections.py's entry)."""

from __future__ import annotations

import copy
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from transferability import params as tparams
from transferability import runs
from transferability.runs import Network

ROOT = Path(__file__).resolve().parents[1]
PROFILES = ROOT / "workflow" / "params"
BENCHMARKS = ROOT / "benchmarks"  # common.py and prepare.py, which the workers reuse
WORKER = Path(__file__).with_name("sections.py")  # `python WORKER <worker> ...`: a process of its own
CLAIMED = "claimed GPU"  # how a training job says it holds a card (devices.resolve_device)


@dataclass
class Kit:
    """What every section needs: the device, a scratch folder, the time left, the environment."""

    device: str                 # "cuda", or "cpu" for the tiny CPU run (--cpu)
    work: Path                  # workspaces, stores and logs
    deadline: float             # time.monotonic() by which the sections must have stopped
    env: dict[str, str]         # PATH with the `transferability` command, PYTHONPATH with src/
    fmnist: Path                # the Fashion-MNIST folder every workspace reads
    cores: int = field(default_factory=lambda: os.cpu_count() or 1)
    results: dict[str, Any] = field(default_factory=dict)  # earlier sections', by name

    @property
    def tiny(self) -> bool:
        return self.device == "cpu"

    def left(self, reserve: float = 0.0) -> float:
        """Seconds left before the deadline, less ``reserve``; at least 1 (subprocess timeouts)."""
        return max(1.0, self.deadline - time.monotonic() - reserve)


class JobFailed(RuntimeError):
    """A command of the pipeline failed; the message ends with its stderr's last lines."""

    def __init__(self, cmd: list[str], proc: subprocess.CompletedProcess | None, note: str = "") -> None:
        tail = "" if proc is None else (proc.stderr or "")[-1500:]
        super().__init__(f"{' '.join(cmd)}: {note or f'exit {proc.returncode}'}\n{tail}")


def smoke_params(kit: Kit, device: str, locks: str = "locks", precision: str | None = None) -> dict[str, Any]:
    """The smoke profile on ``device`` (in ``precision`` where given), its card locks in
    ``work/<locks>``; in a tiny run three networks of it instead of 46."""
    params = copy.deepcopy(tparams.load(PROFILES / "smoke.yaml"))
    params["dataset"]["root"] = str(kit.fmnist)
    params["compute"].update(device=device, gpu_lock_dir=str(kit.work / locks))
    if precision:
        params["compute"]["precision"] = precision
    if kit.tiny:
        params["experiment"].update(variants=["AnB"], layers=[2],
                                    dissimilar={"splits": [], "seeds": [0], "variants": []})
        params["estimators"]["methods"] = []  # one n: nothing to rank
    return tparams.validate(params, "smoke params")


def workspace(kit: Kit, name: str, params: dict[str, Any], snakefile: bool = False) -> Path:
    """A fresh project folder with ``params`` as its params.yaml (and the workflow, for Snakemake)."""
    ws = kit.work / name
    shutil.rmtree(ws, ignore_errors=True)
    ws.mkdir(parents=True)
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    if snakefile:
        shutil.copy2(ROOT / "Snakefile", ws / "Snakefile")
        shutil.copytree(ROOT / "workflow", ws / "workflow", ignore=shutil.ignore_patterns("__pycache__"))
    return ws


def train_args(net: Network) -> list[str]:
    n = ["--n", str(net.n)] if net.n is not None else []
    return ["train", "--split", net.split, "--seed", str(net.seed), "--variant", net.variant, *n]


def label(net: Network) -> str:
    return f"{net.split}/seed{net.seed}/{net.slug}"


def job_threads(ws: Path) -> list[str]:
    """``--threads compute.threads``, as Snakemake gives a job: the count is in each metrics.json."""
    return ["--threads", str(yaml.safe_load((ws / "params.yaml").read_text())["compute"]["threads"])]


def cli(kit: Kit, ws: Path, *args: str) -> subprocess.CompletedProcess:
    """One stage, exactly as a Snakemake rule runs it (with the threads the params ask for); its output
    kept in ws/logs/."""
    cmd = ["transferability", "--params", "params.yaml", *job_threads(ws), *args]
    try:
        proc = subprocess.run(cmd, cwd=ws, env=kit.env, capture_output=True, text=True,
                              timeout=kit.left())
    except subprocess.TimeoutExpired as exc:
        raise JobFailed(cmd, None, "stopped: the kit's time budget ran out") from exc
    log = ws / "logs" / ("_".join(a.lstrip("-") for a in args) + ".log")
    log.parent.mkdir(exist_ok=True)
    log.write_text(proc.stderr)
    if proc.returncode:
        raise JobFailed(cmd, proc)
    return proc


def run_dag(kit: Kit, ws: Path, params: dict[str, Any], workers: int) -> dict[str, Any]:
    """prepare, split, then every network's train stage in DAG order (the bases, then the networks
    that copy from them), ``workers`` jobs at a time."""
    t = time.monotonic()
    exp = params["experiment"]
    cli(kit, ws, "prepare")
    for split in [*exp["splits"], *exp["dissimilar"]["splits"]]:
        cli(kit, ws, "split", "--split", split)
    nets = runs.networks(params)
    for wave in ([n for n in nets if n.is_base], [n for n in nets if not n.is_base]):
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(lambda net: cli(kit, ws, *train_args(net)), wave))
    wall = [json.loads((ws / n.file("timing.json")).read_text())["wall_time_s"] for n in nets]
    return {"networks": len(nets), "workers": workers, "seconds": round(time.monotonic() - t, 1),
            "train_seconds": round(sum(wall), 1)}


def metrics(ws: Path, net: Network) -> dict[str, Any]:
    return json.loads((ws / net.file("metrics.json")).read_text())


def run_worker(kit: Kit, name: str, config: dict[str, Any], timeout: float) -> dict[str, Any]:
    """``python gpu/sections.py <name> config.json result.json``; its result, or why there is none."""
    folder = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=kit.work))
    (folder / "config.json").write_text(json.dumps(config))
    cmd = [sys.executable, str(WORKER), name, str(folder / "config.json"), str(folder / "result.json")]
    try:
        proc = subprocess.run(cmd, env=kit.env, capture_output=True, text=True, timeout=timeout, cwd=folder)
    except subprocess.TimeoutExpired:
        return {"status": f"stopped after {timeout:.0f} s (time budget)"}
    (folder / "stderr.log").write_text(proc.stderr)
    if proc.returncode:
        return {"status": "failed", "error": proc.stderr[-1500:]}
    return {"status": "ok", **json.loads((folder / "result.json").read_text())}


def cpu_name() -> str:
    info = Path("/proc/cpuinfo")
    lines = info.read_text().splitlines() if info.exists() else []
    return next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), platform.processor())


def nvidia_smi(field_name: str) -> str | None:
    if not shutil.which("nvidia-smi"):
        return None
    proc = subprocess.run(["nvidia-smi", f"--query-gpu={field_name}", "--format=csv,noheader,nounits", "-i", "0"],
                          capture_output=True, text=True)
    value = proc.stdout.strip() if proc.returncode == 0 else ""
    return value or None
