"""The dataset source is an input of prepare under both DAGs: a replaced or added image (or a changed
Fashion-MNIST file) re-runs prepare and what follows; a re-prepare that fails keeps the last good store."""

from __future__ import annotations

import gzip
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from transferability import params as tparams
from transferability.data.sources.fashion_mnist import FASHION_MNIST_FILES

from .conftest import SMOKE, make_workspace, sh
from .test_store import make_tree
from .test_workflow import job_counts

pytestmark = pytest.mark.slow
FMNIST = Path("/usr/share/datasets/fashion-mnist")
SPLIT = "data/splits/random0.json"


def workspace(tmp_path: Path, source: str) -> tuple[Path, Path]:
    """A project whose params read a source of our own in ``tmp_path``: an image folder, or a copy of
    Fashion-MNIST's files. Returns the workspace and the source's root."""
    params = tparams.resolve(SMOKE)
    root = tmp_path / "source"
    if source == "imagefolder":
        make_tree(root, classes=("a", "b", "c", "d"), per_class=3)
        params["dataset"].update(source="imagefolder", root=str(root), name="tree", image_size=16, channels=1,
                                 on_bad_image="fail")
    else:
        shutil.copytree(FMNIST, root)
        params["dataset"]["root"] = str(root)
    del params["splits"]["dissimilar"]
    params["experiment"]["dissimilar"]["splits"] = []
    f = tmp_path / "params.yaml"
    f.write_text(yaml.safe_dump(params, sort_keys=False))
    return make_workspace(tmp_path / "ws", f), root


def store_files(ws: Path) -> dict[str, bytes]:
    (store,) = [p for p in (ws / "data" / "prepared").iterdir() if not p.name.startswith(".")]
    return {str(p.relative_to(store)): p.read_bytes() for p in sorted(store.rglob("*")) if p.is_file()}


def replace_image(root: Path) -> None:
    """Another picture under an existing name, as a user fixing a mislabelled image would."""
    Image.fromarray(np.full((24, 24, 3), 200, np.uint8)).save(root / "train" / "a" / "0.JPEG", format="JPEG")


def add_image(root: Path) -> None:
    Image.fromarray(np.full((24, 24, 3), 50, np.uint8)).save(root / "train" / "b" / "new.JPEG", format="JPEG")


def change_a_pixel(root: Path) -> None:
    """A new t10k-images-idx3-ubyte.gz: one pixel of the first test image changed."""
    f = root / FASHION_MNIST_FILES[("test", "images")]
    data = bytearray(gzip.decompress(f.read_bytes()))
    data[16] ^= 0xFF  # the IDX header is 16 bytes: this is pixel (0, 0) of image 0
    f.write_bytes(gzip.compress(bytes(data)))


def run(tool: str, ws: Path, check: bool = True):
    """prepare and the split after it, as each tool's user would ask."""
    args = ["snakemake", "--cores", "1", SPLIT] if tool == "snakemake" else ["dvc", "repro", "split@random0"]
    return sh(args, ws, check=check)


def planned(tool: str, ws: Path) -> str:
    """What the tool would re-run now: Snakemake's jobs per rule, DVC's changed stages."""
    if tool == "snakemake":
        out = sh(["snakemake", "-n", "--cores", "1", SPLIT], ws).stdout
        return "nothing" if "Nothing to be done" in out else str(sorted(job_counts(out).items()))
    out = sh(["dvc", "status", "prepare", "split@random0"], ws).stdout
    return "nothing" if "Data and pipelines are up to date." in out else out


@pytest.mark.parametrize("tool", ["snakemake", "dvc"])
def test_a_replaced_or_added_image_reruns_prepare(tmp_path, tool):
    ws, root = workspace(tmp_path, "imagefolder")
    run(tool, ws)
    assert planned(tool, ws) == "nothing"
    for change, train_count in ((replace_image, 12), (add_image, 13)):
        before = store_files(ws)
        change(root)
        plan = planned(tool, ws)
        if tool == "snakemake":
            assert plan == "[('prepare', 1), ('split', 1)]", plan
        else:
            assert re.search(rf"prepare:\s+changed deps:\s+modified:\s+{re.escape(str(root))}", plan), plan
        out = run(tool, ws)
        if tool == "dvc":
            assert "Running stage 'prepare'" in out.stdout, out.stdout
        after = store_files(ws)
        assert after["train_images.npy"] != before["train_images.npy"], change.__name__
        assert yaml.safe_load(after["manifest.json"])["parts"]["train"]["count"] == train_count
        assert planned(tool, ws) == "nothing"


@pytest.mark.parametrize("tool", ["snakemake", "dvc"])
def test_changed_fashion_mnist_files_rerun_prepare(tmp_path, tool):
    ws, root = workspace(tmp_path, "fashion_mnist")
    run(tool, ws)
    before = store_files(ws)
    change_a_pixel(root)
    assert planned(tool, ws) != "nothing"
    run(tool, ws)
    after = store_files(ws)
    assert after["test_images.npy"] != before["test_images.npy"]
    assert after["train_images.npy"] == before["train_images.npy"]
    assert planned(tool, ws) == "nothing"


@pytest.mark.parametrize("tool", ["snakemake", "dvc"])
def test_a_failed_re_prepare_keeps_the_last_good_store(tmp_path, tool):
    ws, root = workspace(tmp_path, "imagefolder")
    run(tool, ws)
    good = store_files(ws)
    (root / "train" / "c" / "broken.JPEG").write_bytes(b"")  # an empty file: no image at all
    force = ["--forcerun", "prepare"] if tool == "snakemake" else ["--force"]
    for extra in ([], force):  # the source changed; then a forced re-run, as a user might try next
        args = ["snakemake", "--cores", "1", SPLIT, *extra] if tool == "snakemake" else \
            ["dvc", "repro", *extra, "prepare"]
        proc = sh(args, ws, check=False)
        assert proc.returncode != 0, proc.stdout + proc.stderr
        said = (ws / "data/logs/prepare.log").read_text() if tool == "snakemake" else proc.stderr
        assert "Traceback" not in said, said
        assert re.search(r"^error: cannot read \S+/train/c/broken\.JPEG \(.*\); remove or replace the file", said,
                         re.M), said
        assert store_files(ws) == good, extra
    (root / "train" / "c" / "broken.JPEG").unlink()
    run(tool, ws)
    assert store_files(ws) == good
