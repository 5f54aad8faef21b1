"""Frozen-prefix cost: an epoch of AnB for n = 1..7 against an epoch of baseB, per execution mode.

An epoch is its training steps plus its evaluation on the test images, as the default run does
them. Modes (compute.frozen_prefix, all exact): ``full`` computes and discards the frozen layers'
gradients; ``no_grad`` stops autograd at the prefix; ``cache`` also runs the frozen layers once
per view before training (its one-off cost is reported apart, and inside the whole-run ratio).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from common import default_half, load_params, parser, save, table

from transferability.networks.models import build_model
from transferability.networks.transfer import make_network
from transferability.runs import Network
from transferability.training.loop import train


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--modes", nargs="+", default=["no_grad", "cache"], choices=["full", "no_grad", "cache"])
    args = p.parse_args()
    params = load_params(args.params, args.quick)
    run_epochs = params["train"]["epochs"]  # the default run's, for the whole-run ratio
    params["train"]["epochs"] = epochs = 1 if args.quick else 2
    torch.set_num_threads(params["compute"]["threads"])
    data = default_half(params)
    cl = params["compute"].get("channels_last", False)
    c, size, classes = data.x_train.shape[1], data.x_train.shape[-1], len(data.class_names)
    source = build_model(params["model"], c, classes, size, seed=1).state_dict()

    def measure(network: Network, mode: str) -> dict[str, float]:
        params["compute"]["frozen_prefix"] = mode
        net = make_network(network, params["model"], c, classes, size, 0, source, stop_grad=mode != "full")
        net = net.to(memory_format=torch.channels_last) if cl else net
        with tempfile.TemporaryDirectory() as tmp:
            t = train(net, data, params, 0, Path(tmp) / "ckpt.pt", "bench", f"{network.name} ({mode})")["timing"]
        epoch = (t["wall_time_s"] - t["prefix_cache_s"]) / epochs
        return {"epoch_s": epoch, "cache_s": t["prefix_cache_s"], "run_s": epoch * run_epochs + t["prefix_cache_s"]}

    base = measure(Network("random0", 0, "baseB"), "no_grad")
    figures = {"baseB": base, "AnB": {}, "epochs_timed": epochs, "run_epochs": run_epochs}
    rows = [["baseB", "-", base["epoch_s"], 0.0, 1.0, 1.0]]
    for n in range(1, 8):
        for mode in args.modes:
            m = measure(Network("random0", 0, "AnB", n), mode)
            m["epoch_speedup"] = base["epoch_s"] / m["epoch_s"]
            m["run_speedup"] = base["run_s"] / m["run_s"]
            figures["AnB"].setdefault(str(n), {})[mode] = m
            rows.append([f"A{n}B", mode, m["epoch_s"], m["cache_s"], m["epoch_speedup"], m["run_speedup"]])
    table(["network", "mode", "epoch s", "cache s", "x per epoch", f"x per {run_epochs}-epoch run"], rows)
    save("frozen_prefix", figures, params, args)


if __name__ == "__main__":
    main()
