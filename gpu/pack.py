"""Pack what the GPU check kit needs on a bare GPU machine into ``.gpukit/`` (git-ignored), which travels
with the working tree: ``make gpu-kit``, or

    python gpu/pack.py

- ``wheels/``: the wheels of gpu/requirements.txt for CPython 3.12 on manylinux x86_64
  (jsonschema, Snakemake and what they need that the target image lacks), one version of each;
- ``fashion-mnist/``: the first 600 training and 500 test images of every Fashion-MNIST class from
  Debian's ``dataset-fashion-mnist``, in its IDX format: what the smoke profile and the default net's
  images per class need (the target machine has no Debian package and no network);
- ``COMMIT``: the commit packed, for the kit's report where the copied tree has no ``.git``.
"""

from __future__ import annotations

import argparse
import gzip
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np

from transferability.data.loader import select
from transferability.data.sources.fashion_mnist import FASHION_MNIST_FILES, read_idx

ROOT = Path(__file__).resolve().parents[1]
REQUIREMENTS = Path(__file__).with_name("requirements.txt")
FMNIST = Path("/usr/share/datasets/fashion-mnist")
PER_CLASS = {"train": 600, "test": 500}  # params.yaml's train / evaluate images_per_class
# The manylinux tags pip must be told one by one (it matches each exactly) for the target's glibc.
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64",
             "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux_2_5_x86_64", "manylinux1_x86_64"]
SDIST_ONLY = {"connection_pool"}  # pure Python, no wheel on PyPI: built here
LIMIT_MIB = 40  # of the device tool's 64 MiB for the whole tree; the repository takes ~2


def requirements() -> list[str]:
    lines = [line.strip() for line in REQUIREMENTS.read_text().splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", *args, "--quiet", "--disable-pip-version-check"], check=True)


def download_wheels(dest: Path) -> None:
    dest.mkdir(parents=True)
    reqs = requirements()
    built = [r for r in reqs if r.split("==")[0] in SDIST_ONLY]
    binary = [r for r in reqs if r not in built]
    pip("download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp",
        *[a for p in PLATFORMS for a in ("--platform", p)], "-d", str(dest), *binary)
    pip("wheel", "--no-deps", "-w", str(dest), *built)
    names = sorted(p.name.split("-")[0].lower().replace("_", "-") for p in dest.glob("*.whl"))
    wanted = sorted(r.split("==")[0].lower().replace("_", "-") for r in reqs)
    if names != wanted:
        raise SystemExit(f"error: wheels {names} do not match {REQUIREMENTS.name} {wanted}")


def write_idx(path: Path, array: np.ndarray) -> None:
    """The MNIST family's IDX format, gzipped with no timestamp: the same bytes every time."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", filename="", mtime=0) as f:
        f.write(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def write_fashion_mnist(dest: Path, root: Path = FMNIST) -> None:
    dest.mkdir(parents=True)
    for part, per_class in PER_CLASS.items():
        images, labels = (FASHION_MNIST_FILES[(part, kind)] for kind in ("images", "labels"))
        y = read_idx(root / labels)
        keep = select(y, sorted(set(y.tolist())), per_class)
        write_idx(dest / labels, y[keep])
        write_idx(dest / images, read_idx(root / images)[keep])


def commit() -> str:
    def git(*a: str) -> str:
        return subprocess.run(["git", "-C", str(ROOT), *a], capture_output=True, text=True).stdout.strip()

    changed = git("status", "--porcelain", "--", "src", "gpu", "benchmarks")
    return git("rev-parse", "HEAD") + ("+changes" if changed else "")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dest", default=str(ROOT / ".gpukit"), help="folder to (re)write (default: .gpukit)")
    dest = Path(p.parse_args().dest)
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    download_wheels(tmp / "wheels")
    write_fashion_mnist(tmp / "fashion-mnist")
    (tmp / "COMMIT").write_text(commit() + "\n")
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    size = {d.name: sum(f.stat().st_size for f in d.rglob("*") if f.is_file()) / 2**20 for d in dest.iterdir()}
    total = sum(size.values())
    print(f"{dest}: " + ", ".join(f"{k} {v:.1f} MiB" for k, v in sorted(size.items())) + f"; {total:.1f} MiB in all")
    if total > LIMIT_MIB:
        raise SystemExit(f"error: {dest} takes {total:.1f} MiB, over the {LIMIT_MIB} MiB this kit allows itself")


if __name__ == "__main__":
    main()
