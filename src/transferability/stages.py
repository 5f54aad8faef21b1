"""The pipeline's stages: each reads params and files, and writes its outputs atomically.

The CLI, Snakemake and DVC all end up here; nothing about a stage's logic lives in a rule.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path
from typing import Any

import torch

from . import runs
from .atomic import ensure_writable, write_bytes, write_json, write_text
from .data import half_data, input_size
from .devices import resolve_device
from .errors import UserError
from .params import digest
from .runs import Network
from .sources import read_source
from .splits import check_split, make_split
from .store import load_store, sha256_file, write_store
from .training import train, versions
from .transfer import make_network


def prepare(params: dict[str, Any]) -> Path:
    dest = runs.prepared_path(params)
    images, labels, classes, source = read_source(params["dataset"])
    ensure_writable(dest.parent, sum(a.nbytes for a in [*images.values(), *labels.values()]))
    manifest = write_store(dest, images, labels, classes, source)
    counts = {p: manifest["parts"][p]["count"] for p in manifest["parts"]}
    print(f"prepared {dest}: {len(classes)} classes, {counts}", file=sys.stderr)
    return dest


def split(params: dict[str, Any], name: str) -> Path:
    if name not in params["splits"]:
        raise UserError(f"split '{name}' is not defined under 'splits' (defined: {', '.join(params['splits'])})")
    store = load_store(runs.prepared_path(params), verify=False)
    result = make_split(name, params["splits"][name], store.classes)
    dest = runs.split_path(name)
    write_json(dest, result)
    print(f"split {name}: A = {result['A']['names'][:5]}..., B = {result['B']['names'][:5]}...",
          file=sys.stderr)
    return dest


def read_split(name: str) -> dict[str, Any]:
    path = runs.split_path(name)
    if not path.exists():
        raise UserError(f"{path} not found: run `transferability split --split {name}` first")
    result = json.loads(path.read_text())
    check_split(result)
    return result


def run_seed(network: Network) -> int:
    """A seed per network, so replicates and variants draw independent initialisations."""
    return int(digest([network.split, network.seed, network.slug]), 16) % 2**31


def curve_csv(evals: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["epoch", "step", "lr", "train_loss", "top1"], lineterminator="\n")
    w.writeheader()
    w.writerows(evals)
    return buf.getvalue()


def train_network(params: dict[str, Any], split_name: str, seed: int, variant: str,
                  n: int | None) -> Network:
    network = Network(split_name, seed, variant, n)
    if split_name not in params["splits"]:
        raise UserError(f"split '{split_name}' is not defined under 'splits'")
    compute = params["compute"]
    torch.set_num_threads(compute["threads"])
    torch.use_deterministic_algorithms(True, warn_only=True)
    device = resolve_device(compute["device"], compute.get("gpu_lock_dir", "/tmp/transferability-gpu-locks"))
    source_state, source_sha = None, None
    if (base := network.source_base) is not None:
        model_file = base.file("model.pt")
        if not model_file.exists():
            raise UserError(f"{network.name} copies layers from {base.name}, but {model_file} is missing: "
                            f"train {base.name} first")
        source_sha = sha256_file(model_file)
        source_state = torch.load(model_file, map_location="cpu", weights_only=True)
    store = load_store(runs.prepared_path(params))
    split_data = read_split(split_name)
    data = half_data(store, split_data, network.target, params["train"].get("images_per_class"),
                     params["evaluate"].get("images_per_class"))
    c, size = store.images["train"].shape[1], store.images["train"].shape[-1]
    size = input_size(size, params["train"].get("crop"))
    seed_used = run_seed(network)
    net = make_network(network, params["model"], c, len(split_data[network.target]["indices"]), size,
                       seed_used, source_state).to(device)
    if compute.get("channels_last"):
        net = net.to(memory_format=torch.channels_last)
    # model.pt, and a checkpoint of the model with its momentum buffers, with room to spare
    need = 4 * sum(p.numel() for p in net.parameters()) * 4 + 2**20
    for folder in (network.dir, network.checkpoint.parent):
        ensure_writable(folder, need)
    recorded = {k: params[k] for k in ("dataset", "model", "train", "evaluate")}
    recorded["compute"] = {k: compute.get(k) for k in ("threads", "channels_last")}
    identity = {"network": network.slug, "split": split_name, "seed": seed, "run_seed": seed_used,
                "params": recorded, "split_checksum": split_data["checksum"],
                "store": {p: store.manifest["parts"][p]["files"] for p in ("train", "test")},
                "source_model_sha256": source_sha}
    out = train(net, data.to(device), params, seed_used, network.checkpoint, digest(identity), network.name)
    buf = io.BytesIO()
    torch.save(net.state_dict(), buf)
    write_bytes(network.file("model.pt"), buf.getvalue())
    write_text(network.file("curve.csv"), curve_csv(out["results"]["evals"]))
    write_json(network.file("timing.json"), out["timing"])
    metrics = {"network": network.name, "slug": network.slug, "variant": network.variant,
               "family": network.family, "n": network.n, "source": network.source,
               "target": network.target, "fine_tune": network.fine_tune,
               "frozen_layers": network.frozen_layers, **identity, **out["results"],
               "classes": data.class_names, "versions": versions()}
    write_json(network.file("metrics.json"), metrics)  # last: its presence means the run finished
    r = out["results"]
    print(f"{network.name} [{split_name} seed {seed}]: top-1 {r['top1']:.4f}, "
          f"{r['k_best']}-best {r['top1_kbest']:.4f}, {out['timing']['wall_time_s']:.1f} s, "
          f"{out['timing']['images_per_s']:.0f} img/s", file=sys.stderr)
    return network
