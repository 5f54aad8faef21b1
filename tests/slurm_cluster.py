"""A real one-node Slurm cluster for tests: munged, slurmctld and slurmd from Debian's packages
(`apt-get install slurm-wlm munge`), on loopback, with every file under one temporary folder.

    with SlurmCluster() as cluster:
        subprocess.run(["sbatch", "--wrap", "true"], env=cluster.env(os.environ))
        cluster.jobcomp()  # one dict per finished job, from slurmctld's own completion log

Nothing in /etc is read or written: ``SLURM_CONF`` points at the rendered tests/slurm/slurm.conf.in,
whose ``AuthInfo`` names the cluster's own munge socket. The daemons are stopped through their pid
files when the context exits, whether the test passed or not.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import string
import subprocess
import tempfile
import time
from pathlib import Path

TEMPLATES = Path(__file__).resolve().parent / "slurm"
DAEMONS = ("/usr/sbin/munged", "/usr/sbin/slurmctld", "/usr/sbin/slurmd")
CLIENTS = ("sbatch", "srun", "squeue", "sinfo", "scontrol", "scancel")
MISSING_HINT = "apt-get install slurm-wlm munge (or make test-tools)"
KEY = re.compile(r"^[A-Za-z][\w:]*$")  # JobId, AllocNode:Sid, ReqB:S:C:T


def missing() -> list[str]:
    """What this machine lacks to start a cluster: Slurm and munge programs, root (empty: nothing)."""
    absent = [p for p in DAEMONS if not os.access(p, os.X_OK)] + [c for c in CLIENTS if shutil.which(c) is None]
    return absent + ([] if os.geteuid() == 0 else ["root (slurmd runs jobs as their user)"])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parse_jobcomp(text: str) -> list[dict[str, str]]:
    """jobcomp/filetxt lines, or `scontrol show job --oneliner`'s, (``JobId=3 ... JobState=COMPLETED``) as dicts."""
    records = []
    for line in text.splitlines():
        record, key = {}, None
        for token in line.split(" "):  # values (Tres, WorkDir) have no spaces; keep any that do
            k, sep, v = token.partition("=")
            if sep and KEY.match(k):
                key, record[k] = k, v
            elif key:
                record[key] += " " + token
        if record:
            records.append({k: v.strip() for k, v in record.items()})
    return records


class SlurmCluster:
    """munged + slurmctld + slurmd for one node called ``localhost`` with ``cpus`` CPUs and ``gpus``
    count-only GPUs (bound to /dev/null: Slurm schedules them, no card is touched)."""

    def __init__(self, cpus: int | None = None, memory_mb: int | None = None, gpus: int = 1,
                 partition: str = "debug", timeout_s: float = 30.0):
        self.cpus = cpus or os.cpu_count() or 1
        # slurmd refuses to serve a node configured with more memory than it finds: 90% of MemTotal
        self.memory_mb = memory_mb or int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**20 * 0.9)
        self.gpus, self.partition, self.timeout_s = gpus, partition, timeout_s
        # munged insists that its socket's folder and every parent are 755, which pytest's tmp_path
        # (under a 700 folder) is not: the cluster gets a folder of its own in the system temp dir.
        self.root = Path(tempfile.mkdtemp(prefix="slurm-test-"))
        self.root.chmod(0o755)
        self.conf = self.root / "etc" / "slurm.conf"
        self.munge_socket = self.root / "munge" / "munge.socket"
        self.bin = self.root / "bin"
        self.pid_files = {"slurmd": self.root / "run" / "slurmd-localhost.pid",
                          "slurmctld": self.root / "run" / "slurmctld.pid",
                          "munged": self.root / "run" / "munged.pid"}

    # --- what a test uses -------------------------------------------------------------------------

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """``base`` with SLURM_CONF set and the srun wrapper first on PATH."""
        base = dict(os.environ if base is None else base)
        base = {k: v for k, v in base.items() if not k.startswith("SLURM_")}
        return {**base, "SLURM_CONF": str(self.conf), "PATH": f"{self.bin}{os.pathsep}{base.get('PATH', '')}"}

    def run(self, *args: str, check: bool = True) -> str:
        proc = subprocess.run(args, env=self.env(), capture_output=True, text=True, timeout=60)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{shlex.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc.stdout

    def jobcomp(self, wait_for: set[str] = frozenset(), timeout_s: float = 10.0) -> list[dict[str, str]]:
        """slurmctld's completion records, one per finished job, oldest first; waits (up to timeout_s)
        until the jobs ``wait_for`` names have theirs."""
        log = self.root / "log" / "jobcomp.txt"
        deadline = time.monotonic() + timeout_s
        while True:
            try:  # slurmctld appends while we read: parse whole lines only, and no exists()-then-read
                text = log.read_text()
            except FileNotFoundError:
                text = ""
            records = parse_jobcomp(text[: text.rfind("\n") + 1])
            if wait_for <= {r["JobId"] for r in records} or time.monotonic() > deadline:
                return records
            time.sleep(0.2)

    def show_job(self, job_id: str) -> dict[str, str]:
        """``scontrol show job`` as a dict; slurmctld keeps a finished job for MinJobAge (3600 s)."""
        return parse_jobcomp(self.run("scontrol", "show", "job", "--oneliner", job_id))[0]

    def logs(self) -> str:
        """The tail of every daemon log, for a failing test's message."""
        parts = []
        for f in sorted((self.root / "log").glob("*.log")):
            parts.append(f"--- {f.name}\n" + "\n".join(f.read_text(errors="replace").splitlines()[-30:]))
        return "\n".join(parts)

    # --- start and stop ---------------------------------------------------------------------------

    def __enter__(self) -> SlurmCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        if missing():
            raise RuntimeError(f"Slurm is not installed ({', '.join(missing())} missing): {MISSING_HINT}")
        for d in ("etc", "munge", "run", "log", "state", "spool", "bin"):
            (self.root / d).mkdir(mode=0o755)
        (self.root / "spool" / "slurmd-localhost").mkdir(mode=0o755)
        fields = {"root": str(self.root), "munge_socket": str(self.munge_socket), "cpus": self.cpus,
                  "memory_mb": self.memory_mb, "gpus": self.gpus, "partition": self.partition,
                  "ctld_port": free_port(), "slurmd_port": free_port()}
        for name in ("slurm.conf", "gres.conf"):  # slurmd reads gres.conf beside slurm.conf
            text = string.Template((TEMPLATES / f"{name}.in").read_text()).substitute(fields)
            (self.root / "etc" / name).write_text(text)
        # The jobstep executor strips every SLURM_* variable (SLURM_CONF too) before its inner srun,
        # which then looks for a configless controller in DNS; PATH survives, so a wrapper restores it.
        srun = self.bin / "srun"
        srun.write_text(f"#!/bin/sh\nexport SLURM_CONF={shlex.quote(str(self.conf))}\n"
                        f"exec {shlex.quote(shutil.which('srun'))} \"$@\"\n")
        srun.chmod(0o755)
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        self._daemon("munged", "--force", f"--socket={self.munge_socket}", f"--key-file={key}",
                     f"--pid-file={self.pid_files['munged']}", f"--log-file={self.root / 'log' / 'munged.log'}",
                     f"--seed-file={self.root / 'munge' / 'munged.seed'}")
        self._wait(self.munge_socket.exists, "munged to open its socket")
        self._daemon("slurmctld", "-i", "-f", str(self.conf))
        self._daemon("slurmd", "-N", "localhost", "-f", str(self.conf))
        self._wait(self._node_idle, "the node to be idle in sinfo")

    def stop(self) -> None:
        """Cancel what is still queued or running, SIGTERM each daemon named in a pid file (slurmd
        first), then SIGKILL what is left, and remove the folder."""
        if self.pid_files["slurmctld"].exists():
            try:  # a failed run can leave jobs behind, whose slurmstepd would outlive slurmd
                subprocess.run(["scancel", "--full", "--user", str(os.getuid())], env=self.env(),
                               capture_output=True, timeout=10)
                deadline = time.monotonic() + 10
                while self.run("squeue", "-h", "-t", "PD,R,CG", check=False).strip():
                    if time.monotonic() > deadline:
                        break
                    time.sleep(0.2)
            except (OSError, subprocess.TimeoutExpired):
                pass
        pids = []
        for name in ("slurmd", "slurmctld", "munged"):
            try:
                pid = int(self.pid_files[name].read_text().split()[0])
                os.kill(pid, signal.SIGTERM)
                pids.append(pid)
            except (FileNotFoundError, ValueError, IndexError, ProcessLookupError):
                continue
        deadline = time.monotonic() + 10
        for pid in pids:
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.root, ignore_errors=True)

    def _daemon(self, name: str, *args: str) -> None:
        proc = subprocess.run([f"/usr/sbin/{name}", *args], env=self.env(), capture_output=True, text=True,
                              timeout=30)  # each forks into the background and writes its pid file
        if proc.returncode != 0:
            raise RuntimeError(f"{name} did not start ({proc.returncode}): {proc.stderr.strip()}\n{self.logs()}")
        self._wait(self.pid_files[name].exists, f"{name}'s pid file")

    def _node_idle(self) -> bool:
        proc = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %t"], env=self.env(), capture_output=True,
                              text=True, timeout=30)
        return proc.returncode == 0 and proc.stdout.split() == ["localhost", "idle"]

    def _wait(self, ready, what: str) -> None:
        deadline = time.monotonic() + self.timeout_s
        while not ready():
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {self.timeout_s} s waiting for {what}\n{self.logs()}")
            time.sleep(0.1)


def _alive(pid: int) -> bool:
    """Running, and not a zombie waiting for a parent that may never reap it (PID 1 in a container)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
