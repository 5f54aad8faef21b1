"""Compute efficiency and execution settings: what a training step achieves against the machine.

Measures, in one run: float32 matmul GFLOP/s (the machine's practical ceiling, 1 and all threads);
a training step's achieved GFLOP/s (3 x forward FLOPs per image: forward, input and weight
gradients) for the default small net and for caffenet; and the default step's images/s under each
execution setting the params expose or the issue asked about: memory layout, LRN implementation,
threads per process, two 1-thread processes at once, glibc's allocator thresholds (allocator.py),
torch.compile (with its compile time).
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from common import load_params, parser, save, table

from transferability.networks.models import build_model, forward_flops
from transferability.training.sgd import SGD

BATCHES = (8, 16, 32, 64, 128)  # training batch sizes timed for the default net


def matmul_gflops(threads: int, n: int = 1024, repeat: int = 10) -> float:
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t = time.perf_counter()
    for _ in range(repeat):
        a @ b
    return 2 * n**3 * repeat / (time.perf_counter() - t) / 1e9


def step_rate(model: dict[str, Any], size: int, classes: int, batch: int, steps: int, threads: int = 1,
              channels_last: bool = True, fast_lrn: bool = True, compile_net: bool = False,
              device: str = "cpu") -> dict[str, float]:
    """Images/s of SGD training steps on one in-memory batch, and the time to the first step."""
    torch.set_num_threads(threads)
    net = build_model(model, 3 if model["arch"] == "caffenet" else 1, classes, size, seed=0, fast_lrn=fast_lrn)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    net = net.to(device, memory_format=fmt)
    x = torch.randn(batch, net.layer(1)[0].in_channels, size, size, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, classes, (batch,), device=device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    fn = torch.compile(net) if compile_net else net
    opt = SGD([{"params": net.parameters()}], lr=0.01, momentum=0.9)

    def step() -> None:
        loss = F.cross_entropy(fn(x), y)
        net.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    t = time.perf_counter()
    step()
    sync()
    first = time.perf_counter() - t
    step()
    sync()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    rate = batch * steps / (time.perf_counter() - t)
    flops = 3 * forward_flops(net, x.shape[1], size)
    return {"images_per_s": rate, "gflops": rate * flops / 1e9, "first_step_s": first, "flops_per_image": flops}


def _worker(args: tuple) -> float:
    return step_rate(*args)["images_per_s"]


FRESH = """
import json, sys
from transferability.training.allocator import keep_freed_memory
if sys.argv[1] == "tuned":
    keep_freed_memory()
sys.path.insert(0, sys.argv[2])
from compute import step_rate
print(json.dumps(step_rate(json.loads(sys.argv[3]), 28, 5, int(sys.argv[4]), int(sys.argv[5]))))
"""


def fresh_process_rate(tuned: bool, model: dict[str, Any], batch: int, steps: int) -> dict[str, float]:
    """step_rate in a new interpreter, with or without keep_freed_memory (common.py sets it here)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-c", FRESH, "tuned" if tuned else "glibc",
                          str(Path(__file__).parent), json.dumps(model), str(batch), str(steps)],
                         check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--skip-compile", action="store_true", help="leave torch.compile out (it takes a while)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="where the caffenet step runs (default: a GPU if there is one)")
    args = p.parse_args()
    params = load_params(args.params, args.quick)
    model, batch = params["model"], params["train"]["batch_size"]
    steps = 3 if args.quick else 20
    cores = os.cpu_count() or 1
    peak = {"1 thread": matmul_gflops(1), f"{cores} threads": matmul_gflops(cores)}
    caffenet = {"arch": "caffenet", "init": "caffe", "dropout": 0.5}
    nets = {"default (small)": step_rate(model, 28, 5, batch, steps),
            f"caffenet, batch 32 ({args.device})": step_rate(caffenet, 227, 500, 32, 1 if args.quick else 3,
                                                             device=args.device)}
    rows = [[name, r["images_per_s"], r["gflops"], r["gflops"] / peak["1 thread"], r["flops_per_image"] / 1e6]
            for name, r in nets.items()]
    print(f"float32 matmul: {peak['1 thread']:.1f} GFLOP/s on 1 thread, {peak[f'{cores} threads']:.1f} on {cores}")
    table(["training step (1 thread)", "images/s", "GFLOP/s", "of matmul", "MFLOP/image"], rows)

    settings = {
        "channels_last, fast LRN (default)": step_rate(model, 28, 5, batch, steps),
        "NCHW, fast LRN": step_rate(model, 28, 5, batch, steps, channels_last=False),
        "channels_last, torch LRN (before)": step_rate(model, 28, 5, batch, steps, fast_lrn=False),
        f"1 process x {cores} threads": step_rate(model, 28, 5, batch, steps, threads=cores),
    }
    with mp.get_context("spawn").Pool(cores) as pool:
        rates = pool.map(_worker, [(model, 28, 5, batch, steps)] * cores)
        settings[f"{cores} processes x 1 thread (sum)"] = {"images_per_s": sum(rates)}
    for tuned, name in ((True, "new process, freed memory kept (default)"), (False, "new process, glibc defaults")):
        settings[name] = fresh_process_rate(tuned, model, batch, steps)
    if not args.skip_compile:
        settings["torch.compile"] = step_rate(model, 28, 5, batch, steps, compile_net=True)
    base = settings["channels_last, fast LRN (default)"]["images_per_s"]
    table(["setting", "images/s", "x default", "first step s"],
          [[k, v["images_per_s"], v["images_per_s"] / base, v.get("first_step_s", float("nan"))]
           for k, v in settings.items()])
    # a smaller batch converges in fewer images (docs/convergence.md) but costs more per image
    by_batch = {b: step_rate(model, 28, 5, b, steps if args.quick else max(steps, 2560 // b)) for b in BATCHES}
    table(["batch", "images/s", "x batch 128"],
          [[b, r["images_per_s"], r["images_per_s"] / by_batch[128]["images_per_s"]] for b, r in by_batch.items()])
    save("compute", {"matmul_gflops": peak, "train_step": nets, "settings": settings, "batch_sizes": by_batch},
         params, args)


if __name__ == "__main__":
    main()
