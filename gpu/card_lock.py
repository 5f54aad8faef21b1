"""The GPU check kit's ``lock`` section: training jobs started at once on one card run one at a time,
and a killed holder frees the card and resumes to its uninterrupted run's bytes; and, for a CPU run,
the worker that takes the per-card lock as a CUDA job does."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from kit import CLAIMED, WORKER, Kit, cli, job_threads, label, smoke_params, train_args, workspace

from transferability import params as tparams
from transferability import runs
from transferability.runs import Network


class Job:
    """A training job in the background, each line of its stderr stamped as it arrives and kept in
    ws/logs/<network>-<n>.log."""

    def __init__(self, kit: Kit, ws: Path, net: Network, run: int) -> None:
        args = ["--params", "params.yaml", *job_threads(ws), *train_args(net)]
        # a CUDA job claims a card itself; a CPU job never does, so a worker takes the same lock first
        self.cmd = [sys.executable, str(WORKER), "locked-train", *args] if kit.tiny else ["transferability", *args]
        self.net, self.lines = net, []
        self.log = ws / "logs" / f"{label(net).replace('/', '_')}-{run}.log"
        self.log.parent.mkdir(exist_ok=True)
        self.started = time.monotonic()
        self.proc = subprocess.Popen(self.cmd, cwd=ws, env=kit.env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        with open(self.log, "w") as log:
            for line in self.proc.stderr:
                self.lines.append((time.monotonic(), line.rstrip()))
                log.write(line)

    def at(self, text: str) -> float | None:
        """When the first line containing ``text`` arrived."""
        return next((t for t, line in self.lines if text in line), None)

    def wait(self, timeout: float) -> int:
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise RuntimeError(f"{label(self.net)} still ran when the kit's time ran out") from None
        self.reader.join()
        if rc and rc != -signal.SIGKILL:
            raise RuntimeError(f"{' '.join(self.cmd)} failed ({rc}):\n{self.tail()}")
        return rc

    def stop(self) -> None:
        """Kill the job if it still runs (a section that failed half-way leaves nothing behind)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def record(self, t0: float) -> dict[str, Any]:
        claimed = self.at(CLAIMED)
        return {"network": label(self.net), "rc": self.proc.returncode, "started_s": round(self.started - t0, 3),
                "claimed_s": None if claimed is None else round(claimed - t0, 3),
                "last_line_s": round(self.lines[-1][0] - t0, 3) if self.lines else None,
                "waited_s": None if claimed is None else round(claimed - self.started, 3)}

    def tail(self) -> str:
        return "\n".join(line for _, line in self.lines[-15:])


def poll(test: Any, timeout: float) -> Any:
    """``test()`` every 10 ms until it returns something true, or None after ``timeout`` seconds."""
    stop = time.monotonic() + timeout
    while not (found := test()) and time.monotonic() < stop:
        time.sleep(0.01)
    return found or None


def lock(kit: Kit) -> dict[str, Any]:
    """Three training jobs started at once on one card run one at a time; then kill_and_resume."""
    params = smoke_params(kit, kit.device)
    # jobs that hold the card for seconds, so a kill lands inside the run
    params["train"].update(images_per_class=40 if kit.tiny else 300, batch_size=8, epochs=8 if kit.tiny else 3)
    ws = workspace(kit, "lock", params)
    cli(kit, ws, "prepare")
    cli(kit, ws, "split", "--split", "random0")
    nets = [Network("random0", 0, "baseA"), Network("random0", 0, "baseB"), Network("random0", 0, "RnB", 2)]
    jobs = [Job(kit, ws, n, 1) for n in nets]
    try:
        for job in jobs:
            job.wait(kit.left(30))
    finally:
        for job in jobs:
            job.stop()
    holds = sorted((job.at(CLAIMED), job.lines[-1][0]) for job in jobs)
    gaps = [round(b[0] - a[1], 3) for a, b in zip(holds, holds[1:], strict=False)]
    out = {"jobs": [j.record(jobs[0].started) for j in jobs], "gaps_s": gaps, "serialised": min(gaps) > 0,
           "lock_dir": params["compute"]["gpu_lock_dir"]}
    try:
        out["kill"] = kill_and_resume(kit, ws, nets[:2])
    except Exception as exc:  # noqa: BLE001 - a failure here (a resume that crashes) is a finding
        out["kill"] = {"error": f"{type(exc).__name__}: {exc}"}
    k = out["kill"]
    out["summary"] = f"3 jobs at once: {'one at a time' if out['serialised'] else 'OVERLAPPED'} (gaps {gaps} s); " + (
        f"killed holder: card taken {k['waiter_claimed_after_kill_s']:.2f} s later; rerun "
        f"{'resumed' if k['resumed'] else 'did NOT resume'}, metrics "
        f"{'identical' if k['resumed_metrics_identical'] else 'DIFFERENT'} to the uninterrupted run's"
        if "error" not in k else f"kill and resume: {k['error'].splitlines()[0]}")
    return out


def kill_and_resume(kit: Kit, ws: Path, nets: list[Network]) -> dict[str, Any]:
    """Two jobs (trained before, uninterrupted) started at once again from no checkpoint: the one
    that claims the card is SIGKILLed after its first epoch's checkpoint, so the other, waiting for
    the card by then, takes it; then the killed one runs again and resumes. Both must end with their
    uninterrupted runs' bytes."""
    for net in nets:
        shutil.move(ws / net.file("metrics.json"), ws / f"{net.slug}-first-run.json")
    shutil.rmtree(ws / runs.CHECKPOINTS)
    pair = [Job(kit, ws, n, 2) for n in nets]
    try:
        holder = poll(lambda: next((j for j in pair if j.at(CLAIMED)), None), kit.left(30))
        if holder is None or not poll((ws / holder.net.checkpoint).exists, kit.left(30)):
            raise RuntimeError(f"no job claimed the card and wrote a checkpoint:\n{pair[0].tail()}")
        holder.proc.kill()
        killed_at = time.monotonic()
        waiter = pair[1] if holder is pair[0] else pair[0]
        holder.wait(10)
        waiter.wait(kit.left(20))
    finally:
        for job in pair:
            job.stop()
    claimed = waiter.at(CLAIMED)
    latency = round(claimed - killed_at, 3)
    finished_first = holder.proc.returncode == 0
    rerun = Job(kit, ws, holder.net, 3)
    try:
        rerun.wait(kit.left(10))
        error = None
    except RuntimeError as exc:  # e.g. a resume that crashes on the device
        error = str(exc)
    finally:
        rerun.stop()

    def same(net: Network) -> bool:
        done = ws / net.file("metrics.json")
        return done.exists() and done.read_bytes() == (ws / f"{net.slug}-first-run.json").read_bytes()

    return {"killed": label(holder.net), "holder_finished_first": finished_first, "waiter": label(waiter.net),
            "waiter_claimed_after_kill_s": latency,
            # the waiter polls the lock every 0.5 s (devices.claim_gpu)
            "freed_card": not finished_first and 0 < latency < 2.0,
            "waiter_metrics_identical": same(waiter.net),
            "resumed": next((line for _, line in rerun.lines if "resumed from epoch" in line), None),
            "rerun_error": error, "resumed_metrics_identical": error is None and same(holder.net)}


def locked_train(argv: list[str]) -> int:
    """A CPU run's training job behind the per-card lock: claim it as a CUDA job does, then train."""
    from transferability.cli import main
    from transferability.training.devices import claim_gpu

    params = tparams.load(argv[argv.index("--params") + 1])
    lock_dir = params["compute"]["gpu_lock_dir"]
    claim_gpu(1, lock_dir)
    print(f"{CLAIMED} 0 ({lock_dir}/gpu0.lock)", file=sys.stderr, flush=True)
    return main(argv)
