"""Loop efficiency: training images/s through our store and loop against a bare loop on ready batches.

A: ``training.train`` on the default half B (uint8 images in memory, batches normalised, mirrored
and laid out per step, the lr schedule, loss bookkeeping, the progress bar); its steps only, the
evaluations are timed apart. B: the same model, batch size and optimizer stepping over batches
that were normalised and laid out before the clock started. Efficiency = A / B (target >= 0.95).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from common import default_half, load_params, parser, save, table

from transferability.data.loader import make_batch
from transferability.networks.models import build_model
from transferability.training.loop import make_optimizer, train


def main() -> None:
    args = parser(__doc__).parse_args()
    params = load_params(args.params, args.quick)
    params["train"]["epochs"] = 1 if args.quick else 2
    torch.set_num_threads(params["compute"]["threads"])
    data = default_half(params)
    cl = params["compute"].get("channels_last", False)
    c, size, classes = data.x_train.shape[1], data.x_train.shape[-1], len(data.class_names)

    def fresh() -> torch.nn.Module:
        net = build_model(params["model"], c, classes, size, seed=0)
        return net.to(memory_format=torch.channels_last) if cl else net

    def ours() -> float:
        with tempfile.TemporaryDirectory() as tmp:
            out = train(fresh(), data, params, 0, Path(tmp) / "ckpt.pt", "bench", "loop (ours)")
        return out["timing"]["train_images_per_s"]

    bs = params["train"]["batch_size"]
    batches = [(make_batch(data.x_train[i : i + bs], data, None, False, None, cl), data.y_train[i : i + bs])
               for i in range(0, len(data.x_train), bs)]

    def bare() -> float:
        net = fresh()
        opt = make_optimizer(net, params["train"])
        t = time.perf_counter()
        for _ in range(params["train"]["epochs"]):
            for x, y in batches:
                loss = F.cross_entropy(net(x), y)
                net.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        return len(data.x_train) * params["train"]["epochs"] / (time.perf_counter() - t)

    bare()  # warm-up: first calls allocate and pick kernels
    runs = {"ours": [], "bare": []}
    for _ in range(1 if args.quick else 3):  # interleaved, so drift on the machine hits both alike
        runs["ours"].append(ours())
        runs["bare"].append(bare())
    best = {k: max(v) for k, v in runs.items()}
    figures = {"ours_images_per_s": best["ours"], "bare_images_per_s": best["bare"],
               "efficiency": best["ours"] / best["bare"], "runs": runs, "train_images": len(data.x_train),
               "batch_size": bs, "threads": params["compute"]["threads"], "channels_last": cl}
    table(["loop", "images/s (best)", "all runs"], [["ours", best["ours"], runs["ours"]],
                                                    ["bare", best["bare"], runs["bare"]]])
    print(f"loop efficiency: {figures['efficiency']:.3f}")
    save("loop", figures, params, args)


if __name__ == "__main__":
    main()
