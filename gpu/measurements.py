"""The GPU check kit's measuring sections, each configuration in a worker process of its own:
``prepare``, a JPEG tree through the prepare stage with every core (images/s); ``throughput``,
training images/s through ``training.train`` and the real data path, with peak memory, the GPU's busy
share and, for a streamed half, the loader alone and the step alone, so the report names the bound."""

from __future__ import annotations

import copy
import os
import resource
import sys
import threading
import time
from pathlib import Path
from typing import Any

from kit import BENCHMARKS, PROFILES, ROOT, Kit, nvidia_smi, run_worker

from transferability import params as tparams


def prepare(kit: Kit) -> dict[str, Any]:
    """JPEGs (ILSVRC-2012's mix of sizes) decoded into a 256x256 store by every core."""
    config = {"root": str(kit.work / "jpeg"), "workers": kit.cores, "kind": "small" if kit.tiny else "imagenet",
              "per_class": 4 if kit.tiny else 48, "copies": 2 if kit.tiny else 50}
    result = run_worker(kit, "prepare-worker", config, kit.left())
    if result["status"] != "ok":
        raise RuntimeError(f"prepare: {result['status']}\n{result.get('error', '')}")
    result["summary"] = (f"{result['images']} JPEGs, {result['workers']} workers: "
                         f"{result['images_per_s']:.0f} images/s ({result['images_per_s_per_core']:.0f} per core)")
    return result


def throughput_configs(kit: Kit) -> list[dict[str, Any]]:
    """The configurations in the order they matter: the ImageNet profile's own (CaffeNet, bfloat16,
    compiled) first. A tiny run compiles only the small net: CaffeNet takes minutes on a CPU."""
    store = kit.results.get("prepare", {}).get("store")
    caffenet = {"net": "caffenet", "params": str(PROFILES / "imagenet.yaml"), "store": store,
                "batch": 8 if kit.tiny else 256, "warmup_epochs": 1, "epochs": 1 if kit.tiny else 2}
    small = {"net": "small", "params": str(ROOT / "params.yaml"), "fmnist": str(kit.fmnist),
             "batch": None, "warmup_epochs": 1 if kit.tiny else 2, "epochs": 1 if kit.tiny else 30,
             "images_per_class": 40 if kit.tiny else None}
    order = [(caffenet, "bfloat16", True), (caffenet, "float32", False), (caffenet, "bfloat16", False),
             (caffenet, "float32", True), (small, "float32", False), (small, "bfloat16", False),
             (small, "float32", True), (small, "bfloat16", True)]
    return [{**base, "device": kit.device, "precision": precision, "compile": compiled,
             "lock_dir": str(kit.work / "locks")}
            for base, precision, compiled in order
            if not (kit.tiny and (compiled or (base is caffenet and precision == "bfloat16")))]


def throughput(kit: Kit) -> dict[str, Any]:
    configs = []
    for config in throughput_configs(kit):
        keys = {k: config[k] for k in ("net", "precision", "compile")}
        if config["net"] == "caffenet" and not config["store"]:
            configs.append({**keys, "status": "skipped: no store (the prepare section failed)"})
            continue
        if kit.left() < 20:
            configs.append({**keys, "status": "skipped: time budget"})
            continue
        configs.append({**keys, **run_worker(kit, "throughput-worker", config, min(150.0, kit.left(5)))})
    done = [c for c in configs if c["status"] == "ok"]
    return {"configs": configs, "summary": f"{len(done)} of {len(configs)} configurations measured: " + ", ".join(
        f"{c['net']} {c['precision']}{' compiled' if c['compile'] else ''} {c['images_per_s']:.0f}/s"
        + (f" ({c['bound']}-bound: loader {c['loader_images_per_s']:.0f}/s, step {c['step_images_per_s']:.0f}/s)"
           if "bound" in c else "") for c in done)}


class BusySampler:
    """The GPU's utilisation, read every 0.1 s while a run trains: NVML's share of its last sample
    period in which a kernel ran (through torch, or nvidia-smi where torch cannot reach NVML)."""

    def __init__(self, device: Any) -> None:
        self.device, self.samples, self.how = device, [], None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def read(self) -> float | None:
        import torch

        if self.how != "nvidia-smi":
            try:
                value, self.how = float(torch.cuda.utilization(self.device)), "NVML (torch.cuda.utilization)"
                return value
            except Exception:  # noqa: BLE001 - torch finds no pynvml here: nvidia-smi instead
                self.how = "nvidia-smi"
        value = nvidia_smi("utilization.gpu")
        return None if value is None else float(value)

    def _run(self) -> None:
        while not self.stop.is_set():
            if (value := self.read()) is not None:
                self.samples.append(value)
            self.stop.wait(0.1)

    def __enter__(self) -> BusySampler:
        if self.device.type == "cuda":
            self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join()

    @property
    def percent(self) -> float | None:
        return round(sum(self.samples) / len(self.samples), 1) if self.samples else None


def torch_settings() -> dict[str, Any]:
    """What torch was set up to do, as a training job's results depend on it: threads, how float32
    convolutions and matrix products round, deterministic algorithms."""
    import torch

    return {"threads": torch.get_num_threads(), "interop_threads": torch.get_num_interop_threads(),
            "matmul_fp32_precision": torch.backends.cuda.matmul.fp32_precision,
            "conv_fp32_precision": torch.backends.cudnn.conv.fp32_precision,
            "float32_matmul_precision": torch.get_float32_matmul_precision(),
            "deterministic": torch.are_deterministic_algorithms_enabled(),
            "deterministic_warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
            "cudnn_benchmark": torch.backends.cudnn.benchmark}


def synchronize(dev: Any) -> None:
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def loader_alone(data: Any, params: dict[str, Any], epochs: int) -> dict[str, Any]:
    """The training job's batches without its step: ``training.step_batches`` (the streamed loader
    with the job's reader threads, then ``make_batch``: crops, flips, normalisation, on the device)
    over each epoch's shuffled order, for the batches of ``epochs`` epochs, nothing trained; timed
    to the device's last kernel."""
    import torch

    from transferability.training.loop import step_batches

    tr, compute = params["train"], params["compute"]
    dev = data.y_train.device
    gen = torch.Generator().manual_seed(0)
    count = 0
    synchronize(dev)
    t = time.perf_counter()
    for _ in range(epochs):
        order = torch.randperm(len(data.x_train), generator=gen)
        for _batch in step_batches(data, None, order, tr["batch_size"], tr.get("crop"), tr.get("mirror", False), gen,
                                   compute.get("channels_last", False), compute["threads"]):
            count += 1
    synchronize(dev)
    seconds = time.perf_counter() - t
    return {"batches": count, "seconds": round(seconds, 3),
            "images_per_s": round(len(data.x_train) * epochs / max(seconds, 1e-9), 1)}


def bound(loader: float, step: float, loop: float) -> dict[str, Any]:
    """Which side limits the loop: the slower of the loader alone and the step alone. A loop that
    overlaps them runs at the slower one's rate; one that runs them one after the other at
    1 / (1/loader + 1/step) ("serial")."""
    side = "loader" if loader < step else "step"
    slow, fast = (loader, step) if side == "loader" else (step, loader)
    other = "step" if side == "loader" else "loader"
    serial = 1 / (1 / loader + 1 / step)
    return {"bound": side, "serial_images_per_s": round(serial, 1),
            "loop_of_bound": round(loop / slow, 3),
            "verdict": f"{side}-bound: {side} {slow:.0f} img/s < {other} {fast:.0f} img/s; the loop "
                       f"{loop:.0f} img/s ({loop / slow:.2f} of the {side}; {serial:.0f} if run one after the other)"}


def throughput_worker(config: dict[str, Any]) -> dict[str, Any]:
    """One configuration, set up by ``devices.setup`` as a training job is: a warm-up run
    (allocation, kernel choice, compilation), then the measured run, both through ``training.train``
    as a training job runs it. A streamed half is measured in parts too: the loader alone (the
    job's batches, nothing trained), and the step alone (the same training on the half held on the
    device), so the report says which side bounds the loop."""
    import torch

    sys.path.insert(0, str(BENCHMARKS))
    from common import default_half

    from transferability.data.loader import Streamed, half_data, input_size
    from transferability.data.splits import make_split
    from transferability.data.store import load_store
    from transferability.networks.models import build_model
    from transferability.training.devices import setup
    from transferability.training.loop import train

    params = copy.deepcopy(tparams.load(config["params"]))
    compute, tr, ev = params["compute"], params["train"], params["evaluate"]
    compute.update(device=config["device"], precision=config["precision"], compile=config["compile"],
                   gpu_lock_dir=config["lock_dir"])
    dev = setup(compute)  # exactly as stages.train_network sets up a job with this compute
    settings = torch_settings()
    tr["batch_size"] = config["batch"] or tr["batch_size"]
    ev.update(evals=1, k_best=1)  # one evaluation, at the end: images/s leaves it out
    if config["net"] == "caffenet":  # the prepared store's half B, streamed as an ImageNet half is
        store = load_store(config["store"])
        halves = make_split("random0", {"method": "random", "seed": 0}, store.classes)

        def half(resident_gb: float | None) -> Any:  # resident_gb None: every image in memory
            return half_data(store, halves, "B", None, 2 if config["device"] == "cpu" else 10,
                             resident_gb=resident_gb, normalise=tr.get("normalise", "mean_std"))
        data = half(0)
    else:  # the default params' half B in memory, as the default run trains it
        params["dataset"]["root"] = config["fmnist"]
        if config["images_per_class"]:
            tr["images_per_class"] = ev["images_per_class"] = config["images_per_class"]
        data = default_half(params)
    c, size = data.x_train.shape[1], input_size(data.x_train.shape[-1], tr.get("crop"))
    net = build_model(params["model"], c, len(data.class_names), size, seed=0,
                      fast_lrn=compute.get("fast_lrn", True)).to(dev)
    if compute.get("channels_last"):
        net = net.to(memory_format=torch.channels_last)
    data = data.to(dev)
    streamed = isinstance(data.x_train, Streamed)
    folder = Path.cwd()
    timings, busy = {}, {}
    for run, epochs in (("warm-up", config["warmup_epochs"]), ("measured", config["epochs"])):
        tr["epochs"] = epochs
        synchronize(dev)
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        with BusySampler(dev) as busy[run]:
            timings[run] = train(net, data, params, 0, folder / f"{run}.ckpt", run, f"{config['net']} {run}")
    gpu = dev.type == "cuda"
    peak = round((torch.cuda.max_memory_allocated(dev) if gpu else
                  resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2**20, 1)
    loop = timings["measured"]["timing"]["train_images_per_s"]
    out = {"device_name": torch.cuda.get_device_name(dev) if gpu else "cpu", "threads": compute["threads"],
           "torch_settings": settings, "batch": tr["batch_size"], "train_images": len(data.x_train),
           "last_batch": len(data.x_train) % tr["batch_size"], "epochs": config["epochs"],
           "steps": timings["measured"]["results"]["steps"], "streamed": streamed, "images_per_s": loop,
           "warmup_s": timings["warm-up"]["timing"]["wall_time_s"],
           "measured_s": timings["measured"]["timing"]["wall_time_s"],
           "peak_mem_mib": peak, "peak_mem_of": "GPU, torch.cuda.max_memory_allocated" if gpu else
           "host, the process's max RSS", "gpu_busy_pct": busy["measured"].percent,
           "busy_samples": len(busy["measured"].samples), "busy_from": busy["measured"].how}
    if not streamed:  # a half in memory has no loader to measure apart
        return out
    with BusySampler(dev) as busy_loader:
        loader = loader_alone(data, params, config["epochs"])
    del data  # the streamed half's buffers, before the same images are put on the device
    resident = half(None).to(dev)  # each batch gathered, cropped and flipped there: the step's own work
    tr["epochs"] = config["epochs"]
    synchronize(dev)
    with BusySampler(dev) as busy_step:
        step = train(net, resident, params, 0, folder / "step.ckpt", "step", f"{config['net']} step alone")
    step_rate = step["timing"]["train_images_per_s"]
    return {**out, "loader_images_per_s": loader["images_per_s"], "loader_batches": loader["batches"],
            "loader_s": loader["seconds"], "loader_gpu_busy_pct": busy_loader.percent,
            "step_images_per_s": step_rate, "step_steps": step["results"]["steps"],
            "step_s": step["timing"]["wall_time_s"], "step_gpu_busy_pct": busy_step.percent,
            **bound(loader["images_per_s"], step_rate, loop)}


def prepare_worker(config: dict[str, Any]) -> dict[str, Any]:
    """benchmarks/prepare.py's photo-like JPEGs (its ``imagenet`` mix: 1 in 8 of 800-1600 px), written
    once for 4 classes and hard-linked into ``copies`` times as many class folders (every file is
    decoded in full; the page cache holds them all), then its ``prepare_in``: the prepare stage."""
    sys.path.insert(0, str(BENCHMARKS))
    from prepare import prepare_in, write_fixture

    root = Path(config["root"])
    base = root / "base"
    write_fixture(base, config["per_class"], config["kind"])
    tree = root / "tree"
    files = 0
    for part_dir in base.iterdir():
        for k in range(config["copies"]):
            for class_dir in part_dir.iterdir():
                dest = tree / part_dir.name / f"{class_dir.name}_{k:03d}"
                dest.mkdir(parents=True)
                for f in class_dir.iterdir():
                    os.link(f, dest / f.name)
                    files += 1
    params = tparams.load(PROFILES / "imagenet.yaml")
    params["dataset"].update(root=str(tree), name="gpucheck", val_labels=None)
    store, seconds = prepare_in(root / "project", params, config["workers"])
    return {"images": files, "classes": 4 * config["copies"], "workers": config["workers"],
            "seconds": round(seconds, 2), "images_per_s": round(files / seconds, 1),
            "images_per_s_per_core": round(files / seconds / config["workers"], 1),
            "shard_images": params["dataset"]["shard_images"], "store": str(store)}
