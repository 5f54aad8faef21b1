"""How far rounding alone moves the smoke experiment's accuracies: the scale of the GPU check kit's
tolerances, measured on the CPU.

A GPU's kernels do not round as the CPU's do, so the kit cannot ask a GPU for the CPU's bits; it asks
for accuracies within a tolerance. Two perturbations of the same size as a GPU's, on the CPU:

- ``float32, no oneDNN``: torch's own convolution kernels instead of oneDNN's (other summation
  orders, float32 rounding, relative 6e-8): the scale of a GPU's float32 kernels against the CPU's.
  (``compute.channels_last: false`` was tried first: it left every accuracy as it was);
- ``bfloat16``: autocast, an 8-bit mantissa in every convolution and matrix product (relative 4e-3):
  more than TF32's 10 bits (5e-4), in which cuDNN runs float32 convolutions by default.

The whole smoke experiment is trained under each and against plain float32, and every network's
k-best accuracy compared (200 test images: 0.005 an image). Stages run in this process.

    python gpu/tolerance.py          # -> gpu/results/tolerance.json
"""

from __future__ import annotations

import copy
import json
import os
import sys
import tempfile
from pathlib import Path

import torch

from transferability import runs, stages

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))  # what every benchmark shares
from common import ROOT, load_params, parser, save, table  # noqa: E402

RESULT = Path(__file__).with_name("results") / "tolerance.json"

# name: (compute settings, oneDNN on)
RUNS = {"float32": ({}, True), "float32, no oneDNN": ({}, False), "bfloat16": ({"precision": "bfloat16"}, True)}


def train_all(params: dict, folder: Path) -> dict[str, dict]:
    """The smoke experiment's networks in DAG order (runs.networks: bases first), metrics.json each."""
    folder.mkdir()
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        stages.prepare(params)
        exp = params["experiment"]
        for split in [*exp["splits"], *exp["dissimilar"]["splits"]]:
            stages.split(params, split)
        out = {}
        for net in runs.networks(params):
            stages.train_network(params, net.split, net.seed, net.variant, net.n)
            out[f"{net.split}/seed{net.seed}/{net.slug}"] = json.loads(net.file("metrics.json").read_text())
        return out
    finally:
        os.chdir(cwd)


def main() -> None:
    p = parser(__doc__, RESULT)
    p.set_defaults(params=str(ROOT / "workflow" / "params" / "smoke.yaml"))
    args = p.parse_args()
    params = load_params(args.params, False)
    accuracies, test_images = {}, set()
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, (compute, onednn)) in enumerate(RUNS.items()):
            run = copy.deepcopy(params)
            run["compute"].update(device="cpu", **compute)
            with torch.backends.mkldnn.flags(enabled=onednn):
                metrics = train_all(run, Path(tmp) / str(i))
            accuracies[name] = {k: m["top1_kbest"] for k, m in metrics.items()}
            test_images |= {m["num_test"] for m in metrics.values()}
    reference = accuracies.pop("float32")
    figures = {"test_images_per_network": sorted(test_images), "reference": reference}
    for name, acc in accuracies.items():
        diffs = {k: acc[k] - reference[k] for k in reference}
        absolute = [abs(v) for v in diffs.values()]
        figures[name] = {"networks": len(diffs), "max_abs_diff": max(absolute),
                         "mean_abs_diff": sum(absolute) / len(absolute), "mean_diff": sum(diffs.values()) / len(diffs),
                         "unchanged": sum(v == 0 for v in absolute), "diffs": diffs}
    table(["against float32", "networks", "max |diff|", "mean |diff|", "mean diff", "unchanged"],
          [[k, *(figures[k][f] for f in ("networks", "max_abs_diff", "mean_abs_diff", "mean_diff", "unchanged"))]
           for k in accuracies])
    save("gpu_tolerance", figures, params, args)


if __name__ == "__main__":
    main()
