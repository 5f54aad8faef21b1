"""What every benchmark shares: the default data, a timer, the machine's description, the result file.

Each benchmark measures A against B in one run on one machine, prints a table and writes
``benchmarks/results/<name>.json`` (figures, ratios, params, versions, machine), written atomically.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import subprocess
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from transferability import params as tparams
from transferability.data.loader import HalfData, half_data
from transferability.data.sources import read_source
from transferability.data.splits import make_split
from transferability.data.store import load_store, write_store
from transferability.files.atomic import write_json
from transferability.provenance import versions
from transferability.training.allocator import keep_freed_memory

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
keep_freed_memory()  # as the CLI does for every stage: benchmarks measure what the stages run


def parser(doc: str, result: Path | None = None) -> argparse.ArgumentParser:
    """The options every benchmark takes; ``result``: where its result goes, if not in benchmarks/results/."""
    p = argparse.ArgumentParser(description=doc)
    p.add_argument("--params", default=str(ROOT / "params.yaml"), help="params file (default: the project's)")
    p.add_argument("--quick", action="store_true", help="a few steps only: checks the script, not the machine")
    where = result.relative_to(ROOT) if result else "benchmarks/results/<name>.json"
    p.add_argument("--out", default=None if result is None else str(result), help=f"result file (default: {where})")
    return p


def load_params(path: str, quick: bool) -> dict[str, Any]:
    params = copy.deepcopy(tparams.load(path))
    if quick:
        params["train"].update(images_per_class=60, batch_size=32)
        params["evaluate"]["images_per_class"] = 40
    return params


def default_half(params: dict[str, Any], half: str = "B", split: str = "random0") -> HalfData:
    """The half the default run trains on, read from the dataset source into a temporary store."""
    with tempfile.TemporaryDirectory() as tmp:
        dest = Path(tmp) / "store"
        write_store(dest, *read_source(params["dataset"], Path(tmp) / "work"))
        store = load_store(dest)
        halves = make_split(split, params["splits"][split], store.classes)
        return half_data(store, halves, half, params["train"].get("images_per_class"),
                         params["evaluate"].get("images_per_class"))


def wall_times(fn: Callable[[], Any], repeat: int = 3) -> list[float]:
    """The wall times of ``repeat`` calls of ``fn``."""
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


def best_time(fn: Callable[[], Any], repeat: int = 3) -> float:
    """The fastest of ``repeat`` wall times: the least disturbed by anything else on the machine."""
    return min(wall_times(fn, repeat))


def machine() -> dict[str, Any]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    return {"host": platform.node(), "cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


def commit() -> str:
    """The checked-out commit, with '+changes' when the package's source differs from it."""
    def git(*a: str) -> str:
        return subprocess.run(["git", "-C", str(ROOT), *a], capture_output=True, text=True).stdout.strip()

    return git("rev-parse", "--short", "HEAD") + ("+changes" if git("status", "--porcelain", "--", "src") else "")


def save(name: str, figures: dict[str, Any], params: dict[str, Any] | None, args: argparse.Namespace) -> Path:
    out = Path(args.out) if args.out else RESULTS / f"{name}.json"
    write_json(out, {"benchmark": name, "date": datetime.now(UTC).isoformat(timespec="seconds"),
                     "commit": commit(),
                     "quick": args.quick, "figures": figures, "params": params, "versions": versions(),
                     "machine": machine()})
    print(f"-> {out}")
    return out


def table(header: list[str], rows: list[list[Any]]) -> None:
    cells = [header] + [[f"{v:.3g}" if isinstance(v, float) else str(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    for r in cells:
        print("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)))
