"""The pipeline's stages: each reads params and files, and writes its outputs atomically.

The CLI, Snakemake and DVC all end up here; nothing about a stage's logic lives in a rule.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from transferability import progress, runs
from transferability.data.loader import Rows, half_data, input_size, normalisation
from transferability.data.shards import join_npy, sharded_rows
from transferability.data.sources import read_source
from transferability.data.sources.imagefolder import ilsvrc_synsets, labels_file
from transferability.data.splits import check_split, make_split, read_listing, study_lists
from transferability.data.store import load_store, save_npy, sha256_file, stamp_verified, write_store
from transferability.errors import UserError
from transferability.features.activations import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    TORCHVISION_SIDE,
    Target,
    digits,
    extract,
    load_torchvision,
    torchvision_alexnet_taps,
    unit_taps,
)
from transferability.files import checkpoints
from transferability.files.atomic import atomic_dir, atomic_path, ensure_writable, write_json, write_text
from transferability.networks.architecture import transferable
from transferability.networks.models import build_model
from transferability.networks.transfer import make_network
from transferability.provenance import digest, source_digest, versions
from transferability.runs import FeatureJob, Network
from transferability.training.devices import setup
from transferability.training.loop import train


def prepare(params: dict[str, Any]) -> Path:
    """The dataset source as the store; an image folder is decoded by compute.threads processes into
    resumable shards beside the store, which the finished store takes over without a copy."""
    dest = runs.prepared_path(params)
    work = dest.with_name(f".{dest.name}.shards")
    images, labels, classes, source = read_source(params["dataset"], work, params["compute"]["threads"])
    # decoded images files are linked into the store, not copied: only in-memory arrays need room
    ensure_writable(dest.parent, sum(a.nbytes for a in [*images.values(), *labels.values()]
                                     if isinstance(a, np.ndarray)))
    manifest = write_store(dest, images, labels, classes, source)
    stamp_verified(dest, manifest)  # every file was hashed just now: training jobs need not hash it again
    shutil.rmtree(work, ignore_errors=True)
    counts = {p: manifest["parts"][p]["count"] for p in manifest["parts"]}
    print(f"prepared {dest}: {len(classes)} classes, {counts}", file=sys.stderr)
    if skipped := sum(manifest["parts"][p]["skipped"] for p in manifest["parts"]):
        print(f"{skipped} unreadable images left out, listed in {dest / 'skipped.txt'}", file=sys.stderr)
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


def split_lists(params: dict[str, Any], name: str, lists: list[str], out: str | Path = runs.STUDY_LISTS) -> Path:
    """The split over ILSVRC-2012's 1000 classes as the study's list files: for each list (a path, or
    the study's whole_valid_files.txt, shipped), ``<out>/<split><half>/<list name>`` and its idxmap.txt.
    No store is needed: the lists number classes as ILSVRC-2012 does (synsets.txt order)."""
    if name not in params["splits"]:
        raise UserError(f"split '{name}' is not defined under 'splits' (defined: {', '.join(params['splits'])})")
    classes = [{"index": i, "id": wnid, "name": wnid} for i, wnid in enumerate(ilsvrc_synsets())]
    result = make_split(name, params["splits"][name], classes)
    for given in lists:
        path = labels_file(given, Path(params["dataset"]["root"]), "--lists")
        texts = study_lists(result, read_listing(path, len(classes)))
        list_name = path.name.removesuffix(".gz")
        for half, text in texts.items():
            folder = Path(out) / f"{name}{half}"
            write_text(folder / list_name, text["files"])
            write_text(folder / "idxmap.txt", text["idxmap"])
            lines, md5 = len(text["files"].splitlines()), hashlib.md5(text["files"].encode()).hexdigest()
            print(f"{folder / list_name}: {lines} lines, md5 {md5}", file=sys.stderr)
    return Path(out)


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
    """Train one network, holding its checkpoint (checkpoints.exclusive) until its files are written."""
    network = Network(split_name, seed, variant, n)
    if split_name not in params["splits"]:
        raise UserError(f"split '{split_name}' is not defined under 'splits'")
    with checkpoints.exclusive(network.checkpoint, network.name):
        return _train_held(params, network)


def compute_identity(compute: dict[str, Any], device_type: str) -> dict[str, Any]:
    """The compute settings that can change a trained network's numbers, for its metrics and its
    checkpoint's tag. The thread count does on the CPU (the last bits of the reductions), not on a
    GPU: there a checkpoint written under Slurm with 4 CPUs must resume in a rerun with 2."""
    out = {"threads": compute["threads"], "channels_last": compute.get("channels_last"),
           "precision": compute.get("precision", "float32"), "compile": compute.get("compile", False)}
    if device_type == "cuda":
        del out["threads"]
    return out


def _train_held(params: dict[str, Any], network: Network) -> Network:
    split_name, seed = network.split, network.seed
    compute = params["compute"]
    if network.n is not None and network.n > (top := transferable(params["model"])):
        raise UserError(f"{network.name}: model.arch {params['model']['arch']} has {top + 1} units; n runs over "
                        f"1..{top}")
    if network.is_base and network.target in (params["model"].get("pretrained") or {}):
        return _import_pretrained(params, network)
    device = setup(compute)
    source_state, source_sha = None, None
    if (base := network.source_base) is not None:
        model_file = base.file("model.pt")
        if not model_file.exists():
            raise UserError(f"{network.name} copies layers from {base.name}, but {model_file} is missing: "
                            f"train {base.name} first")
        source_sha = sha256_file(model_file)
        source_state = checkpoints.load_weights(model_file, f"delete it and train {base.name} again")
    store = load_store(runs.prepared_path(params))
    split_data = read_split(split_name)
    # on the device at once: a GPU run keeps no host copy of the images it holds
    data = half_data(store, split_data, network.target, params["train"].get("images_per_class"),
                     params["evaluate"].get("images_per_class"), compute.get("resident_gb", 16),
                     params["train"].get("normalise", "mean_std")).to(device)
    c, size = store.images["train"].shape[1], store.images["train"].shape[-1]
    size = input_size(size, params["train"].get("crop"))
    seed_used = run_seed(network)
    net = make_network(network, params["model"], c, len(split_data[network.target]["indices"]), size,
                       seed_used, source_state, stop_grad=compute.get("frozen_prefix", "cache") != "full",
                       fast_lrn=compute.get("fast_lrn", True)).to(device)
    if compute.get("channels_last"):
        net = net.to(memory_format=torch.channels_last)
    # model.pt; two checkpoints (model and momentum), the previous one kept while the next is written
    model_bytes = 4 * sum(p.numel() for p in net.parameters())
    for folder, need in ((network.dir, 2 * model_bytes), (network.checkpoint.parent, 2 * 2 * model_bytes)):
        ensure_writable(folder, need + 2**20)
    recorded = {k: params[k] for k in ("dataset", "model", "train", "evaluate")}
    recorded["compute"] = compute_identity(compute, device.type)
    identity = {"network": network.slug, "split": split_name, "seed": seed, "run_seed": seed_used,
                "params": recorded, "split_checksum": split_data["checksum"],
                "store": {p: store.manifest["parts"][p]["files"] for p in ("train", "test")},
                "source_model_sha256": source_sha}
    tag = digest([identity, source_digest()])
    out = train(net, data, params, seed_used, network.checkpoint, tag, network.name)
    # CPU tensors, for the same bytes from any card; to a file object, not a path, whose name torch would record
    with atomic_path(network.file("model.pt")) as tmp, open(tmp, "wb") as f:
        torch.save(checkpoints.on_cpu(net.state_dict()), f)
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


def _import_pretrained(params: dict[str, Any], network: Network) -> Network:
    """A base that is a weights file on disk (model.pretrained): its units as model.pt, nothing trained.
    Its metrics say where it came from; it has no top-1 on our halves (its classifier is the file's)."""
    from transferability.networks.backbones import load_pretrained

    weights = Path(params["model"]["pretrained"][network.target])
    store = load_store(runs.prepared_path(params))
    c, side = store.images["train"].shape[1], input_size(store.images["train"].shape[-1], params["train"].get("crop"))
    net = load_pretrained(params["model"], weights, c, side)
    with atomic_path(network.file("model.pt")) as tmp, open(tmp, "wb") as f:
        torch.save(net.state_dict(), f)
    write_text(network.file("curve.csv"), curve_csv([]))
    write_json(network.file("timing.json"), {"wall_time_s": 0.0, "images_per_s": 0.0, "pretrained": True})
    sha = sha256_file(weights)
    write_json(network.file("metrics.json"), {
        "network": network.name, "slug": network.slug, "variant": network.variant, "family": network.family,
        "n": None, "target": network.target, "pretrained": {"file": str(weights), "sha256": sha},
        "classes": classes(net.state_dict()),
        "top1": None, "top1_kbest": None, "model": params["model"], "versions": versions()})
    print(f"{network.name} [{network.split} seed {network.seed}]: the weights in {weights} "
          f"({sha[:12]}), {net.num_units} units", file=sys.stderr)
    return network


def half_target(store: Any, split_data: dict[str, Any], half: str, params: dict[str, Any]) -> Target:
    """A half of the dataset as an embedding target: the training subset the networks use, and the test set."""
    data = half_data(store, split_data, half, params["train"].get("images_per_class"),
                     params["evaluate"].get("images_per_class"), resident_gb=0,  # streamed: nothing read yet
                     normalise=params["train"].get("normalise", "mean_std"))
    labels = np.concatenate([data.y_train.numpy(), data.y_test.numpy()])
    is_train = np.arange(len(labels)) < len(data.y_train)
    return Target(half, Rows(data.x_train, data.x_test), labels, is_train, data.class_names)


def load_trained(params: dict[str, Any], network: Network, store: Any, split_data: dict[str, Any]) -> torch.nn.Module:
    model_file = network.file("model.pt")
    if not model_file.exists():
        raise UserError(f"{model_file} is missing: train {network.name} ({network.split}, seed {network.seed}) first")
    c, size = store.images["train"].shape[1], store.images["train"].shape[-1]
    state = checkpoints.load_weights(model_file, f"delete it and train {network.name} again")
    net = build_model(params["model"], c, classes(state), input_size(size, params["train"].get("crop")), seed=0,
                      fast_lrn=params["compute"].get("fast_lrn", True))
    net.load_state_dict(state)
    return net


def classes(state: dict[str, torch.Tensor]) -> int:
    """How many classes a network's state dict predicts: its classifier's bias comes last (every family);
    a pretrained base predicts the file's classes, not a half's."""
    return state[list(state)[-1]].shape[0]


def extractor(params: dict[str, Any], job: FeatureJob, store: Any,
              split_data: dict[str, Any]) -> tuple[torch.nn.Module, dict, list, list, tuple | None, Path]:
    """The network, its layer taps, input normalisation and shape, and the weights file it came from."""
    if arch := job.torchvision_arch:
        weights = Path(params["features"]["torchvision_weights"][arch])
        net = load_torchvision(arch, weights)
        return net, torchvision_alexnet_taps(net, list(range(1, 9))), IMAGENET_MEAN, IMAGENET_STD, \
            (3, TORCHVISION_SIDE), weights
    net = load_trained(params, job.trained, store, split_data)
    mean, std = normalisation(store, params["train"].get("normalise", "mean_std"))
    return net, unit_taps(net), mean, std, None, job.trained.file("model.pt")


def features(params: dict[str, Any], split_name: str, seed: int, network: str, target: str) -> Path:
    """Dump every unit's activations of a network on a target (eval mode, on compute.device: a card
    claimed as a training job claims it), in resumable shards: units 1..L-1 in features.npy, and the
    classifier's logits over the source's own classes (fc8, the head) apart in logits.npy, for the
    estimators that read the source's predictions (LEEP, NCE)."""
    job = FeatureJob(split_name, seed, network, target)
    device = setup(params["compute"])
    store = load_store(runs.prepared_path(params))
    split_data = read_split(split_name)
    net, taps, mean, std, shape, weights = extractor(params, job, store, split_data)
    net.to(device)  # in place: the taps stay the network's modules
    crop = params["train"].get("crop")
    if target == "digits":
        tgt = digits(store.images["train"].shape[1], input_size(store.images["train"].shape[-1], crop))
    else:
        tgt = half_target(store, split_data, target, params)
    side = tgt.images.shape[-1]
    keep = crop if crop and crop < side else side  # centre crop, as evaluation does
    o = (side - keep) // 2
    feats = params["features"]
    dest = job.dir

    def rows(start: int, stop: int) -> tuple[np.ndarray, list[dict[str, Any]]]:
        images = tgt.images[start:stop][..., o : o + keep, o : o + keep]
        x, index = extract(net, taps, images, mean, std, feats.get("batch_size", 256),
                           f"{job.name} on {target}", shape)
        return x.astype(feats.get("dtype", "float32")), index

    _, index = rows(0, 1)  # the column index, whether or not earlier shards exist
    weights_sha = sha256_file(weights)
    key = digest([weights_sha, target, feats, params["train"], params["evaluate"], index])
    shards = sharded_rows(dest.with_name(f".{dest.name}.shards"), key, len(tgt.images),
                          feats.get("shard_images", 4096), lambda start, stop: rows(start, stop)[0],
                          f"features {job.name} on {target}")
    *index, logits = index
    with atomic_dir(dest) as tmp:
        shape = join_npy(shards, tmp / "features.npy", slice(0, logits["start"]))
        join_npy(shards, tmp / "logits.npy", slice(logits["start"], None))
        save_npy(tmp / "labels.npy", tgt.labels)
        save_npy(tmp / "is_train.npy", tgt.is_train)
        (tmp / "index.json").write_text(json.dumps(
            {"network": job.name, "target": target, "layers": index, "classes": tgt.class_names,
             "source_model_sha256": weights_sha}, indent=2) + "\n")
    shutil.rmtree(dest.with_name(f".{dest.name}.shards"), ignore_errors=True)
    print(f"features {job.name} on {target}: {shape[0]} images x {shape[1]} features, "
          f"{logits['stop'] - logits['start']} logits -> {dest}",
          file=sys.stderr)
    return dest


def embed(params: dict[str, Any], split_name: str, seed: int, network: str, target: str) -> Path:
    """Full-Network Embedding, single-layer baselines and per-layer probes on one feature dump."""
    from transferability.features.embedding import (  # scipy's linalg: 0.3 s that no other stage needs
        evaluate_all,
        target_splits,
    )

    job = FeatureJob(split_name, seed, network, target)
    src = job.dir
    if not (src / "index.json").exists():
        raise UserError(f"no feature dump in {src}: run `transferability features` for it first")
    meta = json.loads((src / "index.json").read_text())
    x = np.load(src / "features.npy").astype(np.float32)
    y = np.load(src / "labels.npy")
    is_train = np.load(src / "is_train.npy")
    cfg = params["embed"]
    splits = target_splits(target, y, is_train, cfg, seed)
    results = {}
    total = sum(len(v) for v in splits.values())
    # BLAS threads as params say: two OpenBLAS threads on these small matrices ran 3-10x slower than one
    with threadpool_limits(params["compute"]["threads"]), \
            progress.bar(total, f"embed {job.name} on {target}", "split") as bar:
        for size, folds in splits.items():
            accs = []
            for tr, te in folds:
                accs.append(evaluate_all(x[tr], y[tr], x[te], y[te], meta["layers"], cfg))
                bar.update(1)
            key = "all" if size is None else f"{size}_per_class"
            results[key] = {m: {"mean": float(np.mean([a[m] for a in accs])),
                                "std": float(np.std([a[m] for a in accs])), "runs": len(accs),
                                "train_images": int(len(folds[0][0]))} for m in accs[0]}
    out = {"network": job.name, "slug": job.network, "split": split_name, "seed": seed, "target": target,
           "results": results, "embed": cfg, "layers": meta["layers"],
           "source_model_sha256": meta["source_model_sha256"], "versions": versions()}
    dest = job.embed_file
    write_json(dest, out)
    full = results["all"] if "all" in results else results[list(results)[-1]]
    print(f"embed {job.name} on {target}: full network {full['full_network']['mean']:.4f}, "
          + ", ".join(f"{b} {full[b]['mean']:.4f}" for b in cfg["baselines"]), file=sys.stderr)
    return dest
