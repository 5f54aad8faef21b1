"""The GPU check kit's correctness sections, which prove the GPU gives the pipeline's results: the
device found (``device``), the smoke experiment on it against the CPU within the measured tolerances
(``smoke``), and part of it again through Snakemake with the CLI's bytes (``snakemake``)."""

from __future__ import annotations

import importlib.util
import os
import platform
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from kit import JobFailed, Kit, cpu_name, label, metrics, nvidia_smi, run_dag, smoke_params, workspace

from transferability import runs
from transferability.runs import Network

# Accuracies on the device against the CPU (smoke section), from gpu/tolerance.py: how far
# rounding alone moved the smoke experiment's 46 k-best accuracies on the CPU (200 test images a
# network: 0.005 an image; 14 SGD steps, after which a small change in the weights moves the images
# near a decision boundary). Per network, on the mean |difference|, and on the signed mean, where a
# defect of the GPU path (other crops, a wrong normalisation, a frozen layer trained) would show: it
# moves every network the same way. Each bound is the measurement with a margin for its own spread.
TOLERANCE = {
    "fp32": {"per_network": 0.05, "mean_abs": 0.01, "mean": 0.005,
             "why": "float32 kernels of another summation order (torch's instead of oneDNN's) moved them on the "
                    "CPU by at most 0.035, 0.0034 on average, -0.0002 signed (standard error 0.0012)"},
    "tf32": {"per_network": 0.075, "mean_abs": 0.02, "mean": 0.01,
             "why": "bfloat16 autocast, a coarser rounding than TF32's, moved them on the CPU by at most 0.06, "
                    "0.0125 on average, -0.0027 signed (standard error 0.0027)"},
}


def device(kit: Kit) -> dict[str, Any]:
    import torch

    out = {"torch": torch.__version__, "torch_cuda": torch.version.cuda, "python": platform.python_version(),
           "host": platform.node(), "cores": kit.cores, "cpu": cpu_name(),
           "host_memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
           "env": {k: os.environ[k] for k in ("CUDA_VISIBLE_DEVICES", "NVIDIA_TF32_OVERRIDE") if k in os.environ}}
    if kit.tiny:
        return {**out, "name": "cpu", "summary": f"the CPU ({out['cpu']}), torch {out['torch']}"}
    if not torch.cuda.is_available():
        smi = shutil.which("nvidia-smi")
        raise RuntimeError(f"torch {torch.__version__} (CUDA {torch.version.cuda}) finds no CUDA device; "
                           f"nvidia-smi {'is at ' + smi if smi else 'is not installed'}")
    props = torch.cuda.get_device_properties(0)
    driver = nvidia_smi("driver_version")
    return {**out, "name": props.name, "summary": f"{props.name}, driver {driver}, torch {out['torch']}",
            "count": torch.cuda.device_count(),
            "capability": f"{props.major}.{props.minor}", "memory_gib": round(props.total_memory / 2**30, 1),
            "multiprocessors": props.multi_processor_count, "cudnn": torch.backends.cudnn.version(),
            "driver": driver,
            # float32 on a GPU: cuDNN convolutions use TF32 unless told not to; matrix products do not
            "tf32": {"cudnn_conv": torch.backends.cudnn.allow_tf32,
                     "matmul": torch.backends.cuda.matmul.allow_tf32}}


def device_runs(kit: Kit) -> dict[str, dict[str, Any]]:
    """The smoke experiment's runs on the device, each with the ``compute.precision`` its jobs run in
    (None: the profile's own, float32), which ``devices.setup`` turns into torch's float32 settings
    as in any training job, and its tolerance. On a GPU: as configured (IEEE float32, the CPU's
    scale of rounding), then ``tf32`` (float32 convolutions and matrix products in TF32). The first
    is the one the Snakemake section repeats. A tiny run has the CPU as its device: the same bits."""
    if kit.tiny:
        return {"cpu": {"precision": None, "tolerance": {"per_network": 0.0, "mean_abs": 0.0, "mean": 0.0,
                                                         "why": "the same device: the same bits"}}}
    return {"fp32": {"precision": None, "tolerance": TOLERANCE["fp32"]},
            "tf32": {"precision": "tf32", "tolerance": TOLERANCE["tf32"]}}


def compare(dev_ws: Path, cpu_ws: Path, nets: list[Network], tolerance: dict[str, Any],
            exact: bool) -> dict[str, Any]:
    """Every network's k-best accuracy (and every evaluation's) in one run against the CPU run; a
    network the run did not finish counts as missing, and a run with one missing is not within."""
    rows = []
    done = [n for n in nets if (dev_ws / n.file("metrics.json")).exists()]
    for net in done:
        a, b = metrics(dev_ws, net), metrics(cpu_ws, net)
        rows.append({"network": label(net), "device": a["top1_kbest"], "cpu": b["top1_kbest"],
                     "diff": round(a["top1_kbest"] - b["top1_kbest"], 6),
                     "evals_max_diff": round(max(abs(x["top1"] - y["top1"])
                                                 for x, y in zip(a["evals"], b["evals"], strict=True)), 6),
                     "same_schedule": all(a[k] == b[k] for k in ("steps", "num_train", "num_test"))
                     and len(a["evals"]) == len(b["evals"]),
                     "identical": (dev_ws / net.file("metrics.json")).read_bytes()
                     == (cpu_ws / net.file("metrics.json")).read_bytes()})
    diffs = [r["diff"] for r in rows] or [float("nan")]
    worst, mean_abs = max(map(abs, diffs)), sum(map(abs, diffs)) / len(diffs)
    mean = sum(diffs) / len(diffs)
    within = (len(done) == len(nets) and all(r["same_schedule"] for r in rows) and worst <= tolerance["per_network"]
              and mean_abs <= tolerance["mean_abs"] and abs(mean) <= tolerance["mean"]
              and (not exact or all(r["identical"] for r in rows)))
    return {"max_abs_diff": worst, "mean_abs_diff": round(mean_abs, 6), "mean_diff": round(mean, 6),
            "missing": len(nets) - len(done), "identical": sum(r["identical"] for r in rows),
            "within_tolerance": within, "compare": rows}


def smoke(kit: Kit) -> dict[str, Any]:
    """The smoke experiment on the device (each of device_runs) and on the CPU at once, through the
    CLI; every network's accuracy compared with the CPU's."""
    plans = device_runs(kit)
    cpu_params = smoke_params(kit, "cpu")
    cpu_ws = workspace(kit, "smoke-cpu-reference", cpu_params)
    # each device run has locks of its own, so the runs share the card; two jobs a run, so a job's
    # start-up is hidden behind the other's training while it waits for the lock
    workers = 1 if kit.tiny else 2
    with ThreadPoolExecutor(len(plans) + 1) as pool:
        started = {}
        for name, plan in plans.items():
            plan["params"] = smoke_params(kit, kit.device, f"locks-{name}", plan["precision"])
            plan["ws"] = workspace(kit, f"smoke-on-{name}", plan["params"])
            started[name] = pool.submit(run_dag, kit, plan["ws"], plan["params"], workers)
        cpu = pool.submit(run_dag, kit, cpu_ws, cpu_params, max(1, kit.cores - workers * len(plans)))
        cpu_run = cpu.result()  # without the CPU's run there is nothing to compare: the section fails
        done = {}
        for name, future in started.items():  # a device run that fails is a finding: kept, with its error
            try:
                done[name] = future.result()
            except Exception as exc:  # noqa: BLE001
                done[name] = {"error": f"{type(exc).__name__}: {exc}"}
    nets = runs.networks(cpu_params)
    out = {"cpu_run": cpu_run, "networks": len(nets), "test_images": metrics(cpu_ws, nets[0])["num_test"],
           "device_runs": {name: {"run": done[name], "precision": plan["params"]["compute"].get("precision", "float32"),
                                  "tolerance": plan["tolerance"],
                                  **compare(plan["ws"], cpu_ws, nets, plan["tolerance"], kit.tiny)}
                           for name, plan in plans.items()}}
    out["within_tolerance"] = all(r["within_tolerance"] for r in out["device_runs"].values())
    out["summary"] = "; ".join(
        f"{name}: {len(nets) - r['missing']} of {len(nets)} networks, max |device - CPU| {r['max_abs_diff']:.4f}, "
        f"mean {r['mean_abs_diff']:.4f}, signed {r['mean_diff']:+.4f} (tolerance {r['tolerance']['per_network']} / "
        f"{r['tolerance']['mean_abs']} / {r['tolerance']['mean']}): "
        + ("within" if r["within_tolerance"] else "OUTSIDE") for name, r in out["device_runs"].items())
    return out


def snakemake_targets(params: dict[str, Any]) -> list[Network]:
    """The first split's bases and every variant at the middle n: each rule and kind of network."""
    exp = params["experiment"]
    split, seed, n = exp["splits"][0], exp["seeds"][0], exp["layers"][len(exp["layers"]) // 2]
    return [Network(split, seed, "baseA"), Network(split, seed, "baseB"),
            *[Network(split, seed, v, n) for v in exp["variants"]]]


def snakemake(kit: Kit) -> dict[str, Any]:
    """Networks of the smoke run again through Snakemake on the device: the same bytes as the CLI's."""
    if importlib.util.find_spec("snakemake") is None:
        return {"skipped": "Snakemake is not installed here", "summary": "Snakemake is not installed here"}
    params = smoke_params(kit, kit.device)
    ws = workspace(kit, "snakemake", params, snakefile=True)
    targets = snakemake_targets(params)
    cmd = [sys.executable, "-m", "snakemake", "--cores", str(kit.cores), "--resources", "gpu=1",
           "--scheduler", "greedy", *[str(n.file("metrics.json")) for n in targets]]
    t = time.monotonic()
    try:
        proc = subprocess.run(cmd, cwd=ws, env=kit.env, capture_output=True, text=True, timeout=kit.left())
    except subprocess.TimeoutExpired as exc:
        raise JobFailed(cmd, None, "stopped: the kit's time budget ran out") from exc
    (ws / "snakemake.log").write_text(proc.stderr)
    if proc.returncode:
        raise JobFailed(cmd, proc)
    cli_ws = kit.work / f"smoke-on-{next(iter(device_runs(kit)))}"  # the run as configured
    same = {label(n): (ws / n.file("metrics.json")).read_bytes() == (cli_ws / n.file("metrics.json")).read_bytes()
            for n in targets if (cli_ws / n.file("metrics.json")).exists()}
    gpu_jobs = [ln for ln in proc.stderr.splitlines() if ln.strip().startswith("resources:") and "gpu=1" in ln]
    return {"command": " ".join(["snakemake", *cmd[3:6]]) + " ...", "targets": [label(n) for n in targets],
            "seconds": round(time.monotonic() - t, 1), "same_as_cli": same,
            "all_same": bool(same) and all(same.values()), "jobs_with_gpu_1": len(gpu_jobs),
            "summary": f"{len(targets)} networks via `snakemake --resources gpu=1`: "
                       f"{sum(same.values())} of {len(same)} metrics.json identical to the CLI run's"}
