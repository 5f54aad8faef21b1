"""Setting torch up for a job, choosing its device, and claiming a free GPU with per-card lock files.

Snakemake's ``--resources gpu=N`` only counts jobs; it hands out no device ids. Each training
job therefore takes an exclusive ``flock`` on ``<lock_dir>/<card>.lock`` for the first free card
and holds it for its lifetime. The kernel releases the lock when the process dies, however it
dies, so a killed job never strands a card. A lock is named by what the card is on the machine,
never by torch's index: under Slurm with device cgroups every job sees its one granted card as
cuda:0 (``CUDA_VISIBLE_DEVICES=0``), and jobs granted different cards must not wait for each
other. The name is the card's UUID where torch (or ``CUDA_VISIBLE_DEVICES``) gives it, unique on
any host; else the host and the card's index there (Slurm's ``SLURM_STEP_GPUS`` /
``SLURM_JOB_GPUS``, else ``CUDA_VISIBLE_DEVICES``), so a lock folder shared by hosts still works.
"""

from __future__ import annotations

import fcntl
import os
import re
import socket
import sys
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import torch

from .errors import UserError

_held: list[IO] = []  # lock files held open by this process
DRIVER_VERSION_FILE = Path("/proc/driver/nvidia/version")


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity, which taskset, cgroup cpusets and Slurm
    narrow; os.cpu_count() counts the whole machine's, whatever this job was granted."""
    return len(os.sched_getaffinity(0))


def _ids(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def card_names(count: int, uuids: list[str | None] | None = None,
               env: Mapping[str, str] | None = None, host: str | None = None) -> list[str]:
    """Lock names of the cards torch numbers 0..count-1: ``GPU-<uuid>``, else ``<host>-gpu<index>``
    with the card's index on the host as the scheduler or CUDA_VISIBLE_DEVICES gives it."""
    env = os.environ if env is None else env
    host = host or socket.gethostname()
    visible = _ids(env.get("CUDA_VISIBLE_DEVICES"))
    granted = _ids(env.get("SLURM_STEP_GPUS") or env.get("SLURM_JOB_GPUS"))  # indices on the node, in order
    names = []
    for i in range(count):
        uuid = uuids[i] if uuids and i < len(uuids) else None
        if uuid:
            names.append(uuid if uuid.startswith(("GPU-", "MIG-")) else f"GPU-{uuid}")
        elif len(visible) >= count and visible[i].startswith(("GPU-", "MIG-")):
            names.append(visible[i])
        elif len(granted) >= count:
            names.append(f"{host}-gpu{granted[i]}")
        elif len(visible) >= count:
            names.append(f"{host}-gpu{visible[i]}")
        else:
            names.append(f"{host}-gpu{i}")
    return names


def torch_uuids(count: int) -> list[str | None]:
    """Each visible card's UUID as torch reports it (None where it does not)."""
    out: list[str | None] = []
    for i in range(count):
        uuid = getattr(torch.cuda.get_device_properties(i), "uuid", None)
        out.append(str(uuid) if uuid else None)
    return out


def claim_gpu(count: int, lock_dir: str | Path, wait_s: float = 0.5, timeout_s: float | None = None,
              uuids: list[str | None] | None = None) -> int:
    """Return the index of a card no other process holds, waiting until one frees up."""
    lock_dir = Path(lock_dir)
    lock_dir.mkdir(parents=True, exist_ok=True)
    names = card_names(count, uuids)
    start = time.monotonic()
    while True:
        for i, name in enumerate(names):
            f = open(lock_dir / f"{name}.lock", "a+")
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.close()
                continue
            f.seek(0)
            f.truncate()
            f.write(f"{os.getpid()}\n")
            f.flush()
            _held.append(f)
            print(f"claimed GPU {i} ({lock_dir / name}.lock)", file=sys.stderr)
            return i
        if timeout_s is not None and time.monotonic() - start > timeout_s:
            raise TimeoutError(f"no free GPU among {count} in {lock_dir} after {timeout_s} s")
        time.sleep(wait_s)


def driver_version() -> str | None:
    """The NVIDIA kernel driver's version, from /proc (None where there is no driver)."""
    try:
        text = DRIVER_VERSION_FILE.read_text()
    except OSError:
        return None
    first = text.splitlines()[0] if text else ""
    m = re.search(r"\s(\d+\.\d+(?:\.\d+)?)\s", first)  # "... Kernel Module  550.54.14  Thu Feb ..."
    return m[1] if m else first.strip() or None


def cuda_available() -> tuple[bool, str | None]:
    """torch.cuda.is_available(), and the first line of what torch warned while finding out (a driver
    too old for its build, ...): torch says it once per process, so it is caught here, where asked."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        available = torch.cuda.is_available()
    return available, next((str(w.message).splitlines()[0] for w in caught if "CUDA" in str(w.message)), None)


def no_gpu_reason(said: str | None = None) -> str:
    """Why torch sees no CUDA device, in one clause: a CPU-only build, or the CUDA build's version,
    the driver's, and what torch said when it tried (``said``)."""
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU-only build"
    driver = driver_version() or f"none found ({DRIVER_VERSION_FILE} is missing)"
    return (f"torch {torch.__version__} is built for CUDA {torch.version.cuda} and torch.cuda.is_available() "
            f"is False; NVIDIA driver: {driver}" + (f"; torch says: {said}" if said else ""))


def resolve_device(requested: str, lock_dir: str | Path) -> torch.device:
    """cpu, or a claimed CUDA card; 'cuda' with no card present is a configuration error, and
    'auto' says in one line why a CUDA build of torch falls back to the CPU."""
    if requested == "cpu":
        return torch.device("cpu")
    available, said = cuda_available()
    if not available:
        if requested == "cuda":
            raise UserError(f"compute.device is 'cuda' but torch finds no CUDA device here ({no_gpu_reason(said)}); "
                            "set compute.device: cpu (or auto), or install a torch build for this driver")
        if torch.version.cuda is not None:
            print(f"compute.device auto: no usable GPU, training on the CPU ({no_gpu_reason(said)})", file=sys.stderr)
        return torch.device("cpu")
    count = torch.cuda.device_count()
    return torch.device("cuda", claim_gpu(count, lock_dir, uuids=torch_uuids(count)))


def fp32_precision(precision: str) -> str:
    """torch's name for how float32 convolutions and matrix products run: 'tf32' only when params
    ask for it. torch's own default runs cuDNN convolutions in TF32 on Ampere and later GPUs (a
    10-bit mantissa), which ``precision: float32`` must not mean."""
    return "tf32" if precision == "tf32" else "ieee"


def setup(compute: dict[str, Any]) -> torch.device:
    """Set torch up for one job as ``compute`` says and return its device (a claimed card): the
    thread count, float32 as IEEE float32 unless precision is tf32, and deterministic algorithms
    on a GPU. The training stage and the CaffeNet benchmark both start here, so the benchmark
    measures what a training job gets."""
    torch.set_num_threads(compute["threads"])
    fp32 = fp32_precision(compute.get("precision", "float32"))
    torch.backends.cuda.matmul.fp32_precision = fp32
    torch.backends.cudnn.conv.fp32_precision = fp32
    device = resolve_device(compute["device"], compute.get("gpu_lock_dir", "/tmp/transferability-gpu-locks"))
    if device.type == "cuda":  # CPU kernels are deterministic already; the switch costs 2.4 s of imports
        torch.use_deterministic_algorithms(True, warn_only=True)
    return device
