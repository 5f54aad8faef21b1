"""CaffeNet training images/s on whatever device this machine has, through the real training loop.

The ImageNet profile's path end to end: 256x256 uint8 images in a memory-mapped file (as the prepared
store holds them) streamed per batch (pinned memory, asynchronous copy on a GPU), random 227 crops
and mirroring on the device, mean subtraction, CaffeNet with Caffe initialisation, the study's SGD,
with the profile's precision, memory layout and torch.compile. One warm-up pass (allocations,
compilation), then the measured one; evaluation time is left out of the figure. Torch is set up by
the training stage's own ``devices.setup`` (threads, float32 precision, deterministic algorithms,
a claimed card), so the figure is what a training job gets. A GPU owner runs

    python benchmarks/caffenet.py                 # the imagenet profile's settings on the GPU found
    python benchmarks/caffenet.py --steps 50 --precision float32 --no-compile

and gets the images/s to set beside docs/performance.md's arithmetic ceiling.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
from pathlib import Path

import numpy as np
import torch
from common import ROOT, parser, save, table

from transferability import params as tparams
from transferability.data.loader import HalfData, Streamed
from transferability.networks.models import build_model, forward_flops
from transferability.training.devices import setup
from transferability.training.loop import train

CLASSES = 500  # a half of ILSVRC-2012


def synthetic_half(folder: Path, n_train: int, n_test: int, device: torch.device) -> HalfData:
    """Random 3x256x256 uint8 images in a memory map, streamed as an ImageNet half is."""
    rng = np.random.default_rng(0)
    images = np.lib.format.open_memmap(folder / "images.npy", mode="w+", dtype=np.uint8,
                                       shape=(n_train + n_test, 3, 256, 256))
    for a in range(0, len(images), 256):
        images[a : a + 256] = rng.integers(0, 256, images[a : a + 256].shape, dtype=np.uint8)
    images.flush()
    labels = torch.from_numpy(rng.integers(0, CLASSES, n_train + n_test))
    mean = torch.tensor([104.0, 117.0, 123.0]).view(1, 3, 1, 1)
    std = torch.ones(1, 3, 1, 1)  # Caffe subtracts the mean only
    train, test = np.arange(n_train), np.arange(n_train, n_train + n_test)
    return HalfData(Streamed(images, train), labels[:n_train], Streamed(images, test), labels[n_train:],
                    mean, std, [str(c) for c in range(CLASSES)]).to(device)


def main() -> None:
    p = parser(__doc__)
    p.set_defaults(params=str(ROOT / "workflow" / "params" / "imagenet.yaml"))
    p.add_argument("--device", default="auto", help="cpu | cuda | auto (default: a GPU if there is one)")
    p.add_argument("--batch", type=int, default=None, help="training batch (default: the profile's, 256)")
    p.add_argument("--steps", type=int, default=None, help="measured steps (default: 3 on a CPU, 50 on a GPU)")
    p.add_argument("--precision", choices=["float32", "tf32", "bfloat16"], default=None,
                   help="default: the profile's on a GPU, float32 on a CPU")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile (default: the profile's on a GPU, off on a CPU)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: the profile's compute.threads)")
    args = p.parse_args()
    params = copy.deepcopy(tparams.load(args.params))
    compute = params["compute"]
    compute.update(device=args.device, threads=args.threads or compute["threads"],
                   precision=args.precision or compute.get("precision", "float32"))
    device = setup(compute)
    gpu = device.type == "cuda"
    compute.update(precision=compute["precision"] if gpu or args.precision else "float32",
                   compile=args.compile if args.compile is not None else compute.get("compile", False) and gpu)
    threads = torch.get_num_threads()
    batch = args.batch or params["train"]["batch_size"]
    steps = args.steps or (1 if args.quick else 50 if gpu else 3)
    if args.quick:
        batch = min(batch, 16)
    params["train"].update(epochs=1, batch_size=batch)
    params["evaluate"].update(evals=1, k_best=1)
    model = params["model"]
    flops = 3 * forward_flops(build_model(model, 3, CLASSES, 227, seed=0), 3, 227)
    rates = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = synthetic_half(Path(tmp), batch * steps, 2 * batch, device)
        net = build_model(model, 3, CLASSES, 227, seed=0, fast_lrn=compute.get("fast_lrn", True)).to(device)
        if compute.get("channels_last"):
            net = net.to(memory_format=torch.channels_last)
        for run in ("warm-up", "measured"):
            ckpt = Path(tmp) / f"{run}.ckpt"
            out = train(net, data, params, 0, ckpt, run, f"caffenet {run}")
            rates[run] = out["timing"]["train_images_per_s"]
    rate = rates["measured"]
    figures = {"device": str(device), "device_name": torch.cuda.get_device_name(device) if gpu else "cpu",
               "threads": threads, "batch": batch, "steps": steps, "precision": compute["precision"],
               "compile": compute["compile"], "channels_last": compute.get("channels_last", False),
               "conv_fp32_precision": torch.backends.cudnn.conv.fp32_precision,
               "deterministic": torch.are_deterministic_algorithms_enabled(),
               "train_images_per_s": rate, "warmup_images_per_s": rates["warm-up"],
               "gflop_per_image": round(flops / 1e9, 3), "achieved_gflop_s": round(rate * flops / 1e9, 1)}
    table(["device", "batch", "precision", "compile", "images/s", "GFLOP/s"],
          [[figures["device_name"], batch, figures["precision"], figures["compile"], rate,
            figures["achieved_gflop_s"]]])
    save("caffenet", figures, params, args)


if __name__ == "__main__":
    main()
