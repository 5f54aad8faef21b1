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

from transferability.errors import UserError

_held: list[IO] = []  # lock files held open by this process
DRIVER_VERSION_FILE = Path("/proc/driver/nvidia/version")
# per user: a folder another user made in /tmp (mode 755) would refuse this user's lock files
DEFAULT_LOCK_DIR = "/tmp/transferability-gpu-locks-{uid}"


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


def lock_folder(value: str | None = None) -> Path:
    """compute.gpu_lock_dir with ``{uid}`` replaced by this user's id (default DEFAULT_LOCK_DIR): a
    folder in /tmp made by another user would refuse this one's lock files."""
    return Path((value or DEFAULT_LOCK_DIR).replace("{uid}", str(os.getuid())))


def _open_lock(path: Path) -> IO:
    """The card's lock file, opened for flock; a folder this user may not write is one UserError line."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return open(path, "a+")
    except PermissionError as exc:
        raise UserError(f"cannot use the GPU lock folder {path.parent} ({exc.strerror}: {exc.filename}): it is "
                        "another user's or not writable; set compute.gpu_lock_dir to a folder this user can "
                        f"write (default {DEFAULT_LOCK_DIR}, {{uid}} is the user's id)") from exc


def _holder(f: IO) -> str:
    f.seek(0)
    return f.read().strip() or "holder unknown"


def _waiting(count: int, busy: list[str], env: Mapping[str, str]) -> str:
    """Why this job waits, in one line: who holds each card, and a grant torch does not see in full."""
    line = (f"waiting for a GPU: {'the' if count == 1 else 'all'} {count} card{'s' * (count != 1)} visible to "
            f"this job {'is' if count == 1 else 'are'} held by other processes ({'; '.join(busy)}); it takes the "
            f"first to free up (more GPU jobs at once than cards, e.g. snakemake --resources gpu=N with N > "
            f"{count}, wait here)")
    for var in ("CUDA_VISIBLE_DEVICES", "SLURM_STEP_GPUS", "SLURM_JOB_GPUS"):
        if len(named := _ids(env.get(var))) > count:
            line += f"; {var} names {len(named)} cards ({','.join(named)}) but torch sees only {count}"
            break
    return line


def claim_gpu(count: int, lock_dir: str | Path, wait_s: float = 0.5, timeout_s: float | None = None,
              uuids: list[str | None] | None = None) -> int:
    """Return the index of a card no other process holds, waiting until one frees up; the first time
    all are held, say once (stderr) which lock files hold them, by whom."""
    lock_dir = Path(lock_dir)
    names = card_names(count, uuids)
    start, said = time.monotonic(), False
    while True:
        busy = []
        for i, name in enumerate(names):
            path = lock_dir / f"{name}.lock"
            f = _open_lock(path)
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                busy.append(f"{path}: {_holder(f)}")
                f.close()
                continue
            f.seek(0)
            f.truncate()
            f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
            f.flush()
            _held.append(f)
            print(f"claimed GPU {i} ({path})", file=sys.stderr)
            return i
        if not said:
            print(_waiting(count, busy, os.environ), file=sys.stderr, flush=True)
            said = True
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
    index = claim_gpu(count, lock_dir, uuids=torch_uuids(count))
    # the job's current device: kernels, caches and any call without a device then go to its card,
    # not to card 0, where every job would otherwise open a stray context
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def fp32_precision(precision: str) -> str:
    """torch's name for how float32 convolutions and matrix products run: 'tf32' only when params
    ask for it. torch's own default runs cuDNN convolutions in TF32 on Ampere and later GPUs (a
    10-bit mantissa), which ``precision: float32`` must not mean."""
    return "tf32" if precision == "tf32" else "ieee"


def setup(compute: dict[str, Any]) -> torch.device:
    """Set torch up for one job as ``compute`` says and return its device (a claimed card, made the
    current one): the thread count, float32 as IEEE float32 unless precision is tf32, and
    deterministic algorithms on a GPU. The training stage and the CaffeNet benchmark both start
    here, so the benchmark measures what a training job gets."""
    torch.set_num_threads(compute["threads"])
    fp32 = fp32_precision(compute.get("precision", "float32"))
    torch.backends.cuda.matmul.fp32_precision = fp32
    torch.backends.cudnn.conv.fp32_precision = fp32
    device = resolve_device(compute["device"], lock_folder(compute.get("gpu_lock_dir")))
    if device.type == "cuda":  # CPU kernels are deterministic already; the switch costs 2.4 s of imports
        torch.use_deterministic_algorithms(True, warn_only=True)
    return device
