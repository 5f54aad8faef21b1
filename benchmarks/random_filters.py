"""Random frozen filters (RnB): why the first trained layer stops learning on some random prefixes.

Builds RnB networks exactly as the training stage does (transfer.make_network, the network's
stages.run_seed, the split's half B of the prepared store, the frozen-prefix cache) and measures,
per setting (init, input scale, learning rate):

- the random prefix's activations, layer by layer, on the training images: mean, std, share of
  zeros, dead units (a channel or unit never positive on any image), and at the input of the first
  trained layer E||x||^2 and the share of it that is the mean over images (the common mode);
- the first steps of training, the loop of training.train step for step (same seeds, same batches,
  same dropout masks): the loss and the share of live units (positive on at least one training
  image) of every trained ReLU layer, and top-1 and mean loss at the run's first evaluation;
- optionally (``--full``) the whole budget through training.train itself: top-1 (k best).

    python benchmarks/random_filters.py --full default --plot    # five splits, traces; 8-17 min on 2 cores
    python benchmarks/random_filters.py --caffenet               # the study's CaffeNet at its init, 1 min
    python benchmarks/random_filters.py --quick                  # a few steps: checks the script

docs/random-filters.md has the measurements and every command that made them.
"""

from __future__ import annotations

import copy
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import matplotlib
import torch
import torch.nn.functional as F
from common import ROOT, load_params, parser, save, table
from torch import nn

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from transferability.data.loader import HalfData, half_data, make_batch  # noqa: E402
from transferability.data.sources import read_source  # noqa: E402
from transferability.data.splits import make_split  # noqa: E402
from transferability.data.store import Store, load_store, write_store  # noqa: E402
from transferability.files.atomic import atomic_path  # noqa: E402
from transferability.networks.prefix import build_cache, cacheable, split_prefix  # noqa: E402
from transferability.networks.transfer import make_network  # noqa: E402
from transferability.networks.unitnet import UnitNet  # noqa: E402
from transferability.runs import Network  # noqa: E402
from transferability.stages import run_seed  # noqa: E402
from transferability.training.loop import eval_steps, evaluate, lr_at, make_optimizer, step_batches, train  # noqa: E402

# Each setting: params overrides (dotted keys); ``train.lr`` is a factor of the params' lr.
SETTINGS: dict[str, dict[str, Any]] = {
    "default": {},
    "lr/3": {"train.lr": 1 / 3},
    "lr/10": {"train.lr": 1 / 10},
    "caffe": {"model.init": "caffe"},
    "caffe, mean": {"model.init": "caffe", "train.normalise": "mean"},
}
PROBE_IMAGES = 500  # training images (unflipped) on which a unit counts as live or dead


def with_setting(params: dict[str, Any], setting: str) -> dict[str, Any]:
    p = copy.deepcopy(params)
    for key, value in SETTINGS[setting].items():
        section, name = key.split(".")
        p[section][name] = p[section][name] * value if key == "train.lr" else value
    return p


def store_of(params: dict[str, Any], tmp: Path) -> Store:
    """The prepared store, as ``transferability prepare`` writes it (the same two calls)."""
    write_store(tmp / "store", *read_source(params["dataset"], tmp / "work"))
    return load_store(tmp / "store")


def half_of(params: dict[str, Any], store: Store, split: str) -> HalfData:
    """Half B of ``split`` as the training stage reads it (stages._train_held)."""
    halves = make_split(split, params["splits"][split], store.classes)
    return half_data(store, halves, "B", params["train"].get("images_per_class"),
                     params["evaluate"].get("images_per_class"), None, params["train"].get("normalise", "mean_std"))


def build(params: dict[str, Any], network: Network, data: HalfData) -> tuple[UnitNet, int]:
    """The network and its seed, as stages._train_held builds them."""
    seed = run_seed(network)
    c, size = data.x_train.shape[1], data.x_train.shape[-1]
    net = make_network(network, params["model"], c, len(data.class_names), size, seed, None,
                       fast_lrn=params["compute"].get("fast_lrn", True))
    if params["compute"].get("channels_last"):
        net = net.to(memory_format=torch.channels_last)
    return net, seed


def relus(net: UnitNet, layers: range) -> dict[int, nn.ReLU]:
    return {k: next(m for m in net.layer(k).modules() if isinstance(m, nn.ReLU)) for k in layers}


@torch.no_grad()
def unit_stats(out: torch.Tensor) -> dict[str, float]:
    """Activation scale of one unit's output over a batch of images; a channel (conv) or unit (fc) is
    dead when it is zero at every position of every image."""
    per_unit = out.transpose(0, 1).reshape(out.shape[1], -1)
    return {"mean": out.mean().item(), "std": out.std().item(), "zeros": (out == 0).float().mean().item(),
            "dead_units": (per_unit.amax(1) <= 0).float().mean().item()}


@torch.no_grad()
def common_mode(x: torch.Tensor) -> dict[str, float]:
    """E||x||^2 of the first trained layer's input per image, and the share of it in the mean image: an
    SGD step on the layer's weights moves every image's pre-activation by about lr * delta * ||x||^2,
    and along the mean image it moves all of them the same way."""
    x = x.flatten(1).double()
    sq = x.pow(2).sum(1).mean().item()
    return {"sq_norm": sq, "common_share": x.mean(0).pow(2).sum().item() / sq}


@torch.no_grad()
def prefix_stats(net: UnitNet, data: HalfData, n: int, channels_last: bool) -> dict[str, Any]:
    """Units 1..n (the random frozen prefix) on the first PROBE_IMAGES training images, in eval mode."""
    was = net.training
    net.eval()
    x = make_batch(data.x_train[:PROBE_IMAGES], data, None, False, None, channels_last)
    layers = {}
    for k in range(1, n + 1):
        x = net.layer(k)(x)
        layers[net.unit_names[k - 1]] = unit_stats(x)
    net.train(was)
    return {"layers": layers, "input_of_trained": common_mode(x)}


@torch.no_grad()
def live(net: UnitNet, rest: nn.Module, x: torch.Tensor, trained: range) -> tuple[dict[str, float], dict[str, float]]:
    """Share of live units (positive on at least one probe image) of each trained ReLU layer; and of the
    first trained layer, its pre-activations' mean and std over images and units and its weights' norm."""
    seen: dict[int, torch.Tensor] = {}
    hooks = [m.register_forward_hook(lambda _m, _i, o, k=k: seen.__setitem__(k, o.detach().clone()))
             for k, m in relus(net, trained).items()]
    first = next(m for m in net.layer(trained[0]).modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    hooks.append(first.register_forward_hook(lambda _m, _i, o: seen.__setitem__(0, o.detach().clone())))
    was = net.training
    net.eval()
    rest(x)
    net.train(was)
    for h in hooks:
        h.remove()
    pre = seen.pop(0)
    out = {net.unit_names[k - 1]: 1 - unit_stats(o)["dead_units"] for k, o in seen.items()}
    return out, {"pre_mean": pre.mean().item(), "pre_std": pre.std().item(), "weight_norm": first.weight.norm().item()}


def trace(params: dict[str, Any], net: UnitNet, data: HalfData, seed: int, n: int, probes: list[int]) -> dict[str, Any]:
    """The first max(probes) steps of training.train's loop, step for step, with the loss and the live
    units of layers n+1..7 at each probe step; at the run's first evaluation its curve's two numbers
    (top-1, and the mean loss of the steps since that epoch began)."""
    tr, compute = params["train"], params["compute"]
    cl = compute.get("channels_last", False)
    steps_per_epoch = math.ceil(len(data.x_train) / tr["batch_size"])
    total = tr["epochs"] * steps_per_epoch
    first_eval = min(eval_steps(total, params["evaluate"]["evals"]))
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    opt = make_optimizer(net, tr)
    if not cacheable(net, data, tr, compute):
        raise SystemExit(f"R{n}B: the frozen prefix cannot be cached with these params")
    cache = build_cache(net, data, tr.get("mirror", False), cl, compute.get("eval_batch", 250))
    head, rest = split_prefix(net, n)
    probe_x = cache.train_views[:PROBE_IMAGES]
    trained = range(n + 1, net.num_units)
    out: dict[str, Any] = {"steps": [0], "loss": [None], "live": [], "first_layer": []}

    def probe() -> None:
        units, first = live(net, rest, probe_x, trained)
        out["live"].append(units)
        out["first_layer"].append(first)

    probe()
    losses: list[tuple[float, int]] = []  # (loss, images): means weighted by images, as the curve's

    def mean(part: list[tuple[float, int]]) -> float:
        return sum(v * k for v, k in part) / sum(k for _, k in part)

    last = max(max(probes), first_eval)
    net.train()
    step = 0
    while step < last:
        order = torch.randperm(len(data.x_train), generator=gen)
        epoch_start = len(losses)  # training.train's curve averages the loss from here (or the last evaluation)
        batches = step_batches(data, cache, order, tr["batch_size"], tr.get("crop"), tr.get("mirror", False), gen, cl)
        for x, y in batches:
            for g in opt.param_groups:
                g["lr"] = lr_at(step, total, tr) * g["lr_mult"]
            loss = F.cross_entropy(cache.rest(x), y)
            net.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append((loss.item(), len(y)))
            step += 1
            if step in probes:
                out["loss"].append(mean(losses[out["steps"][-1]:]))
                out["steps"].append(step)
                probe()
            if step == first_eval:
                top1 = evaluate(net, data, tr.get("crop"), cl, cache, compute.get("eval_batch", 250))
                out["first_eval"] = {"step": step, "train_loss": mean(losses[epoch_start:]), "top1": top1}
            if step == last:
                break
    return out


def full(params: dict[str, Any], net: UnitNet, data: HalfData, seed: int, label: str) -> dict[str, Any]:
    """The whole budget through training.train, as the training stage runs it."""
    with tempfile.TemporaryDirectory() as tmp:
        r = train(net, data, params, seed, Path(tmp) / "ckpt.pt", "random_filters", label)["results"]
    return {"top1_kbest": r["top1_kbest"], "curve": [(e["step"], e["train_loss"], e["top1"]) for e in r["evals"]]}


@torch.no_grad()
def caffenet_prefix(crops: int, seed: int = 0) -> dict[str, Any]:
    """The study's CaffeNet with random units (the prototxt's Gaussians on the study's input scale,
    Caffe's 0..255 with the mean subtracted; and Kaiming's on standardised input, as our default):
    activations per unit and the input of fc6 (n = 5) and fc7 (n = 6), on 227x227 crops of
    scikit-learn's two sample photographs (natural images of ImageNet's scale; no ImageNet here)."""
    import numpy as np
    from sklearn.datasets import load_sample_images

    from transferability.networks.models import build_model

    photos = load_sample_images().images
    rng = np.random.default_rng(seed)
    picks = []
    for i in range(crops):
        im = photos[i % len(photos)]
        y, x = rng.integers(0, im.shape[0] - 227), rng.integers(0, im.shape[1] - 227)
        picks.append(im[y : y + 227, x : x + 227])
    images = torch.tensor(np.stack(picks)).permute(0, 3, 1, 2).float()
    centred = images - images.mean(dim=(0, 2, 3), keepdim=True)
    out = {}
    for init, x in (("caffe", centred), ("kaiming", centred / centred.std(dim=(0, 2, 3), keepdim=True))):
        net = build_model({"arch": "caffenet", "init": init, "dropout": 0.5}, 3, 500, 227, seed).eval()
        layers, inputs = {}, {}
        for k in range(1, 7):
            x = net.layer(k)(x)
            layers[net.unit_names[k - 1]] = unit_stats(x)
            if k >= 5:
                inputs[f"n={k}"] = common_mode(x)
        out[init] = {"layers": layers, "input_of_trained": inputs}
    return {"crops": crops, "seed": seed, "inits": out}


def plot(figures: dict[str, Any], path: Path) -> None:
    """Live units of the first trained layer and the loss over the first steps, per setting and n."""
    runs = figures["runs"]
    settings = list(dict.fromkeys(r["setting"] for r in runs))
    fig, axes = plt.subplots(2, len(settings), figsize=(3.2 * len(settings), 5.6), sharex=True, sharey="row",
                             squeeze=False)
    colours = {n: c for n, c in zip(sorted({r["n"] for r in runs}), ["tab:green", "tab:red", "tab:blue", "tab:purple"],
                                    strict=False)}
    for j, s in enumerate(settings):
        for r in (r for r in runs if r["setting"] == s):
            t = r["trace"]
            first = next(iter(t["live"][0]))
            lab = f"R{r['n']}B" if r["split"] == figures["splits"][0] else None
            axes[0, j].plot(t["steps"], [lv[first] for lv in t["live"]], color=colours[r["n"]], alpha=0.7, label=lab)
            axes[1, j].plot(t["steps"][1:], t["loss"][1:], color=colours[r["n"]], alpha=0.7)
        axes[0, j].set_title(s, fontsize=9)
        axes[1, j].axhline(math.log(figures["classes"]), color="grey", lw=0.8, ls=":")
        axes[1, j].set_xlabel("step")
    axes[0, 0].set_ylabel("live units, first trained layer")
    axes[1, 0].set_ylabel("training loss (window mean)")
    axes[0, 0].legend(fontsize=8)
    fig.suptitle("RnB on the default data: live units of fc(n+1) (conv5 at n = 4) and loss; dotted: ln C", fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--splits", nargs="+", default=None, help="default: experiment.splits")
    p.add_argument("--n", nargs="+", type=int, default=[4, 5, 6])
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    p.add_argument("--probes", nargs="+", type=int, default=[10, 25, 50, 100, 200, 300, 400, 500, 752])
    p.add_argument("--full", nargs="*", default=[], metavar="SETTING",
                   help="also train the whole budget (training.train) in these settings")
    p.add_argument("--bases", action="store_true",
                   help="also train baseB of the first split, the whole budget, in each --full setting")
    p.add_argument("--plot", action="store_true", help="write docs/random-filters-steps.png")
    p.add_argument("--caffenet", action="store_true",
                   help="only the study's CaffeNet's random prefix on natural-image crops (no training)")
    args = p.parse_args()
    params = load_params(args.params, args.quick)
    if args.caffenet:
        torch.set_num_threads(params["compute"]["threads"])
        figures = caffenet_prefix(4 if args.quick else 24)
        table(["init", "input of", "E|x|^2", "common"], [[i, n, v["sq_norm"], v["common_share"]]
                                                        for i, r in figures["inits"].items()
                                                        for n, v in r["input_of_trained"].items()])
        save("random_filters", figures, None, args)
        return
    if args.quick:
        params["train"]["epochs"] = 1
        args.probes = [2, 5]
    splits = args.splits or params["experiment"]["splits"]
    torch.set_num_threads(params["compute"]["threads"])
    runs, rows, bases = [], [], {}
    with tempfile.TemporaryDirectory() as tmp:
        store = store_of(params, Path(tmp))
        for setting in args.settings:
            sp = with_setting(params, setting)
            if args.bases and setting in args.full:
                data = half_of(sp, store, splits[0])
                network = Network(splits[0], params["experiment"]["seeds"][0], "baseB")
                net, seed = build(sp, network, data)
                bases[setting] = {"split": splits[0], **full(sp, net, data, seed, f"baseB [{splits[0]}, {setting}]")}
            for split in splits:
                data = half_of(sp, store, split)
                for n in args.n:
                    t = time.perf_counter()
                    network = Network(split, params["experiment"]["seeds"][0], "RnB", n)
                    net, seed = build(sp, network, data)
                    stats = prefix_stats(net, data, n, sp["compute"].get("channels_last", False))
                    tr = trace(sp, net, data, seed, n, args.probes)
                    run = {"setting": setting, "split": split, "n": n, "run_seed": seed, "prefix": stats, "trace": tr}
                    if setting in args.full:
                        net, seed = build(sp, network, data)
                        run["full"] = full(sp, net, data, seed, f"{network.name} [{split}, {setting}]")
                    run["seconds"] = time.perf_counter() - t
                    runs.append(run)
                    first = next(iter(tr["live"][0]))
                    rows.append([setting, split, f"R{n}B", stats["input_of_trained"]["sq_norm"],
                                 stats["input_of_trained"]["common_share"], first, tr["live"][0][first],
                                 tr["live"][-1][first], tr["first_eval"]["train_loss"], tr["first_eval"]["top1"],
                                 run.get("full", {}).get("top1_kbest", "-")])
    table(["setting", "split", "net", "E|x|^2", "common", "layer", "live@0", f"live@{args.probes[-1]}",
           "loss@eval1", "top1@eval1", "top1 (full)"], rows)
    if bases:
        table(["setting", "split", "baseB top1 (full)"], [[s, b["split"], b["top1_kbest"]] for s, b in bases.items()])
    figures = {"splits": splits, "classes": len(data.class_names), "probe_images": PROBE_IMAGES,
               "settings": {s: SETTINGS[s] for s in args.settings}, "runs": runs, "bases": bases}
    if args.plot:
        plot(figures, ROOT / "docs" / "random-filters-steps.png")
    save("random_filters", figures, params, args)


if __name__ == "__main__":
    main()
