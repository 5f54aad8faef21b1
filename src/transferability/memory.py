"""How much host memory a job needs, from params: the ``mem_mb`` that Snakemake asks a scheduler for.

Under Slurm's ``--mem`` or a Kubernetes limit a job that outgrows its request is killed, and no
fixed request fits two profiles (a Fashion-MNIST job holds a few MiB of images; an ImageNet one
briefly holds its 5 GB test part). So a request is the sum of what the job holds at its peak,
each part computed from params and, once they exist, the store's manifest and the split:

- the runtime: Python with torch and numpy imported and, on a GPU, the CUDA libraries;
- the images on the host: every part of the half kept resident (on a GPU only until it is moved
  to the device, but all of it at that moment), and for a streamed part the loader's buffers;
- on the CPU, the model three times (weights, gradients, momentum), a batch's activations and the
  frozen-prefix cache (twice while it is built); on a GPU, the checkpoint's CPU copy of the model
  and momentum while it is written;
- the checkpoint read back on resume (model and momentum).

A features job holds the network, one batch's activations and one shard of rows: it writes its
dump a shard at a time, never whole.
"""

from __future__ import annotations

import functools
import json
import math
from typing import Any

import torch

from transferability.data.loader import input_size
from transferability.data.sources import source_of
from transferability.features.activations import TORCHVISION_SIDE, LayerTaps, torchvision_alexnet_taps
from transferability.networks.architecture import family
from transferability.runs import FeatureJob, Network, prepared_path, split_path

RUNTIME = 850 * 2**20     # measured 813 MiB: a job that has imported its modules (torch 2.14, CPU)
CUDA_RUNTIME = 3 * 2**30  # host side of the CUDA context, cuBLAS and cuDNN: to be measured on a GPU
MARGIN = 1.25             # allocator slack and fragmentation over the computed peak


def _shapes(model: dict[str, Any], channels: int, side: int, classes: int, frozen: int) -> dict[str, int]:
    """Parameters, every module's output per image (summed), the dump's width (conv channels, fc
    units) and the frozen head's output per image (prefix.split_prefix) of a network of the family.

    Computed from the layer specification with the conv and pooling arithmetic rather than by
    building the network: Snakemake asks for every job it plans, and even on the ``meta`` device
    the first build imports torch's compiler (4 s here). tests/test_memory.py checks every number
    against the built network. A family without a layer table (timm's) is built on ``meta`` instead
    (_built_shapes)."""
    layers = family(model).layers
    if layers is None:
        return _built_shapes(json.dumps(model, sort_keys=True), channels, side, classes, frozen)
    convs, fc = layers(model)
    n_params = outputs = width = head = 0
    c, s = channels, side
    for k, (out, kernel, stride, pad, groups, pool, lrn) in enumerate(convs, start=1):
        n_params += out * (c // groups) * kernel**2 + out
        s = (s + 2 * pad - kernel) // stride + 1
        outputs += out * s * s  # conv
        if pool:
            s = (s - pool) // 2 + 1
            outputs += out * s * s
        outputs += out * s * s * (2 if lrn else 1)  # ReLU, LRN
        c, width = out, width + out
        head = out * s * s if k == frozen else head
    flat = c * s * s
    n_params += flat * fc + fc + fc * fc + fc + fc * classes + classes
    outputs += flat + 6 * fc + classes  # flatten; linear, ReLU, dropout of fc6 and fc7; fc8
    # layers 6 and 7 frozen: the head stops before fc6's dropout (or runs through dropouts of p = 0)
    return {"params": n_params, "activations": outputs, "width": width + 2 * fc, "head": fc if frozen >= 6 else head}


@functools.lru_cache(maxsize=8)
def _torchvision_shapes(arch: str) -> dict[str, int]:
    """The same for a torchvision model (its own layers; built on ``meta``, once per run)."""
    import torchvision

    with torch.device("meta"):
        net = getattr(torchvision.models, arch)(weights=None)
        outputs: list[int] = []
        hooks = [m.register_forward_hook(lambda m, i, out: outputs.append(out[0].numel()))
                 for m in net.modules() if not list(m.children())]
        tap = LayerTaps(torchvision_alexnet_taps(net, list(range(1, 8))))
        net(torch.empty(1, 3, TORCHVISION_SIDE, TORCHVISION_SIDE))
    for h in [*hooks, *tap.hooks]:
        h.remove()
    return {"params": sum(p.numel() for p in net.parameters()), "activations": sum(outputs),
            "width": sum(tap.outputs[n].shape[1] for n in tap.names), "head": 0}


@functools.lru_cache(maxsize=64)
def _built_shapes(model_json: str, channels: int, side: int, classes: int, frozen: int) -> dict[str, int]:
    """The same for any family, built on ``meta`` (no memory, no weights): its leaf modules' outputs,
    every unit's tap and the frozen head's output (prefix.split_prefix)."""
    from transferability.features.activations import unit_taps
    from transferability.networks.prefix import split_prefix

    with torch.device("meta"):
        model = json.loads(model_json)
        net = family(model).build(model, channels, classes, side, True).eval()
        outputs: list[int] = []
        hooks = [m.register_forward_hook(lambda m, i, out: outputs.append(out[0].numel()))
                 for m in net.modules() if not list(m.children())]
        tap = LayerTaps(unit_taps(net, list(range(1, net.num_units))), net.pooling)
        x = torch.empty(1, channels, side, side)
        net(x)
        for h in [*hooks, *tap.hooks]:
            h.remove()
        head = split_prefix(net, frozen)[0](x)[0].numel() if frozen else 0
    return {"params": sum(p.numel() for p in net.parameters()), "activations": sum(outputs),
            "width": sum(tap.outputs[n].shape[1] for n in tap.names), "head": head}


def _half(params: dict[str, Any], split: str, half: str) -> dict[str, Any]:
    """Image shape, class count and per-class counts of a half: from the store and the split once they
    exist (Snakemake asks when the job is ready to run), else what params tell (a dry run's estimate)."""
    manifest_file, split_file = prepared_path(params) / "manifest.json", split_path(split)
    ds = params["dataset"]
    if manifest_file.exists() and split_file.exists():
        manifest, halves = json.loads(manifest_file.read_text()), json.loads(split_file.read_text())
        classes = halves[half]["indices"]
        c, side = manifest["parts"]["train"]["shape"][:2]
        return {"channels": c, "side": side, "classes": len(classes),
                **{part: [manifest["parts"][part]["per_class"][k] for k in classes] for part in ("train", "test")}}
    src = source_of(ds)
    expected = src.expected(ds)
    k = expected["classes"] // 2
    return {"channels": src.channels(ds), "side": src.side(ds), "classes": k,
            **{part: [expected[part]] * k for part in ("train", "test")}}


def _count(per_class: list[int], limit: int | None) -> int:
    return sum(min(c, limit) if limit else c for c in per_class)


def request_mb(parts: dict[str, int]) -> int:
    """Snakemake's ``mem_mb`` (MiB) for a job holding ``parts`` (bytes), with the margin."""
    return math.ceil(sum(parts.values()) * MARGIN / 2**20)


def train_parts(params: dict[str, Any], network: Network) -> dict[str, int]:
    """The bytes a training job holds at its peak, by what holds them."""
    tr, compute = params["train"], params["compute"]
    half = _half(params, network.split, network.target)
    image = half["channels"] * half["side"] ** 2
    side = input_size(half["side"], tr.get("crop"))
    crops = bool(tr.get("crop")) and tr["crop"] < half["side"]
    frozen = max(network.frozen_layers, default=0)
    net = _shapes(params["model"], half["channels"], side, half["classes"], frozen)
    gpu = compute["device"] != "cpu"
    counts = {"train": _count(half["train"], tr.get("images_per_class")),
              "test": _count(half["test"], params["evaluate"].get("images_per_class"))}
    resident = compute.get("resident_gb", 16) * 2**30
    streamed = [n * image > resident for n in counts.values()]
    parts = {"runtime": RUNTIME + (CUDA_RUNTIME if gpu else 0),
             "images": sum(n * image for n, s in zip(counts.values(), streamed, strict=True) if not s),
             "labels": 8 * 3 * counts["train"] + 8 * counts["test"],  # labels, the epoch's order (twice)
             "loader": 4 * tr["batch_size"] * image if any(streamed) else 0,  # data.PREFETCH + 1 reused buffers
             "checkpoint": 4 * 2 * net["params"] * (2 if gpu else 1)}  # read on resume; on a GPU, its CPU copy
    if not gpu:
        batch = max(tr["batch_size"], compute.get("eval_batch", 250))
        parts["model"] = 4 * 3 * net["params"]
        parts["activations"] = 4 * 2 * net["activations"] * batch  # forward, and their gradients
        if frozen and not crops:
            cache = 4 * net["head"] * ((2 if tr.get("mirror") else 1) * counts["train"] + counts["test"])
            parts["prefix_cache"] = 2 * cache if cache <= compute.get("prefix_cache_gb", 4) * 2**30 else 0
    return parts


def features_parts(params: dict[str, Any], job: FeatureJob) -> dict[str, int]:
    """The bytes a features job holds at its peak, by what holds them."""
    feats = params["features"]
    half = _half(params, job.split, job.trained.target if job.trained else "A")
    side = input_size(half["side"], params["train"].get("crop"))
    arch = job.torchvision_arch
    net = _torchvision_shapes(arch) if arch else _shapes(params["model"], half["channels"], side, half["classes"], 0)
    batch, shard = feats.get("batch_size", 256), feats.get("shard_images", 4096)
    image = half["channels"] * half["side"] ** 2
    return {"runtime": RUNTIME, "model": 4 * 2 * net["params"],  # the network, and the weights it loads
            "activations": 4 * net["activations"] * batch,
            "images": shard * image + 4 * 2 * batch * image,  # a shard's uint8 rows; a batch as float, normalised
            "rows": 4 * 3 * shard * net["width"]}  # a shard's features: per batch, joined, cast to the dtype


def train_mb(params: dict[str, Any], network: Network) -> int:
    """A training job's memory request in MiB."""
    return request_mb(train_parts(params, network))


def features_mb(params: dict[str, Any], job: FeatureJob) -> int:
    """A features job's memory request in MiB."""
    return request_mb(features_parts(params, job))
