"""Sources and the prepared store: real files in, checked arrays out, corruption detected."""

from __future__ import annotations

import gzip
import io
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from transferability.data.sources.fashion_mnist import fashion_mnist
from transferability.data.sources.imagefolder import imagefolder
from transferability.data.store import NPY_HEADER, channel_hist, hist_stats, load_store, npy_header, write_store
from transferability.errors import UserError


def test_fashion_mnist_store(fmnist_store):
    m = fmnist_store.manifest
    assert m["parts"]["train"]["count"] == 60000 and m["parts"]["test"]["count"] == 10000
    assert m["parts"]["train"]["shape"] == [1, 28, 28]
    assert m["parts"]["train"]["per_class"] == [6000] * 10
    assert fmnist_store.images["train"].dtype == np.uint8
    assert [c["name"] for c in fmnist_store.classes][:2] == ["T-shirt/top", "Trouser"]
    assert 60 < fmnist_store.mean[0] < 80 and 80 < fmnist_store.std[0] < 100  # known FMNIST stats


def test_channel_stats_are_exact_float64_sums():
    """Statistics from value counts: the float64 sums of the whole array, to the last bit."""
    x = np.random.default_rng(0).integers(0, 256, (300, 3, 17, 13), dtype=np.uint8)
    mean, std = hist_stats(channel_hist(x, chunk=64))
    count = x.shape[0] * x.shape[2] * x.shape[3]
    ref_mean = x.sum(axis=(0, 2, 3), dtype=np.float64) / count
    ref_sq = (x.astype(np.float64) ** 2).sum(axis=(0, 2, 3)) / count
    assert mean == ref_mean.tolist() and std == np.sqrt(ref_sq - ref_mean**2).tolist()


def test_npy_header_is_numpys_own():
    for arr in (np.zeros((5, 3, 4, 4), np.uint8), np.zeros(7, np.int64)):
        buf = io.BytesIO()
        np.save(buf, arr)
        assert buf.getvalue()[:NPY_HEADER] == npy_header(arr.shape, arr.dtype)


def test_missing_fashion_mnist_names_the_package(tmp_path):
    with pytest.raises(UserError, match="apt-get install dataset-fashion-mnist"):
        fashion_mnist(tmp_path)


def test_truncated_idx_file_is_refused(tmp_path, smoke_params):
    src = smoke_params["dataset"]["root"]
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        shutil.copy(f"{src}/{name}", tmp_path / name)
    data = gzip.open(f"{src}/t10k-images-idx3-ubyte.gz").read()[:-100]
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(data, compresslevel=1))
    with pytest.raises(UserError, match="t10k-images-idx3-ubyte.gz is truncated"):
        fashion_mnist(tmp_path)


def make_tree(root, classes=("cat", "dog"), per_class=3):
    rng = np.random.default_rng(0)
    for part in ("train", "val"):
        for c in classes:
            d = root / part / c
            d.mkdir(parents=True)
            for i in range(per_class):
                arr = rng.integers(0, 255, (20 + 7 * i, 30, 3), dtype=np.uint8)
                im = Image.fromarray(arr)
                kind = i % 3
                if kind == 0:
                    im.save(d / f"{i}.JPEG", format="JPEG")
                elif kind == 1:
                    im.convert("CMYK").save(d / f"{i}.JPEG", format="JPEG")  # CMYK JPEG
                else:
                    im.convert("L").save(d / f"{i}.JPEG", format="PNG")  # a grayscale PNG named .JPEG


def test_imagefolder_reads_varied_files(tmp_path):
    make_tree(tmp_path / "src")
    images, labels, classes, _ = imagefolder(tmp_path / "src", 16, 3, tmp_path / "work")
    assert images["train"].shape == (6, 3, 16, 16) and images["test"].shape == (6, 3, 16, 16)
    assert labels["train"].tolist() == [0, 0, 0, 1, 1, 1]
    assert [c["id"] for c in classes] == ["cat", "dog"]
    write_store(tmp_path / "store", images, labels, classes, {"source": "imagefolder"})
    store = load_store(tmp_path / "store")
    assert np.array_equal(store.images["train"], np.load(images["train"].path))


def test_imagefolder_errors_name_the_file(tmp_path):
    make_tree(tmp_path / "src")
    (tmp_path / "src" / "train" / "dog" / "broken.JPEG").write_bytes(b"")
    with pytest.raises(UserError, match=r"cannot read .*broken.JPEG \(UnidentifiedImageError"):
        imagefolder(tmp_path / "src", 16, 3, tmp_path / "work")
    (tmp_path / "src" / "train" / "dog" / "broken.JPEG").unlink()
    (tmp_path / "src" / "train" / "empty").mkdir()
    with pytest.raises(UserError, match=r"class folder .*empty holds no images"):
        imagefolder(tmp_path / "src", 16, 3, tmp_path / "work")


def test_a_changed_store_file_is_refused_and_verified_ones_are_not_hashed_again(tmp_path, monkeypatch):
    from transferability.data import store as store_module
    make_tree(tmp_path / "src")
    write_store(tmp_path / "store", *imagefolder(tmp_path / "src", 16, 1, tmp_path / "work"))
    hashed = []
    real = store_module.sha256_file
    monkeypatch.setattr(store_module, "sha256_file", lambda f: hashed.append(f.name) or real(f))
    load_store(tmp_path / "store")
    assert len(hashed) == 4 and (tmp_path / ".store.verified.json").exists()
    load_store(tmp_path / "store")
    assert len(hashed) == 4  # every file as verified last time: nothing hashed
    f = tmp_path / "store" / "train_images.npy"
    data = bytearray(f.read_bytes())
    data[-1] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(UserError, match="train_images.npy does not match the checksum"):
        load_store(tmp_path / "store")
    assert hashed[4:] == ["train_images.npy"]


def test_store_rewrite_is_atomic_and_leaves_no_temporaries(tmp_path):
    make_tree(tmp_path / "src")
    arrays = imagefolder(tmp_path / "src", 16, 1, tmp_path / "work")
    write_store(tmp_path / "store", *arrays)
    first = json.loads((tmp_path / "store" / "manifest.json").read_text())
    write_store(tmp_path / "store", *arrays)
    assert json.loads((tmp_path / "store" / "manifest.json").read_text()) == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src", "store", "work"]


def test_labels_out_of_range_are_refused(tmp_path):
    images = {p: np.zeros((2, 1, 4, 4), np.uint8) for p in ("train", "test")}
    labels = {"train": np.array([0, 1]), "test": np.array([0, 2])}
    classes = [{"index": i, "id": str(i), "name": str(i)} for i in range(2)]
    with pytest.raises(UserError, match="test labels fall outside 0..1"):
        write_store(tmp_path / "store", images, labels, classes, {})
    assert not (tmp_path / "store").exists()


def test_a_class_left_without_images_is_refused_naming_it(tmp_path):
    """on_bad_image: skip must not turn a class whose every image is unreadable into an empty class
    (it would train and test on nothing, without a word), nor may a class lack test images."""
    make_tree(tmp_path / "src")
    dog = tmp_path / "src" / "train" / "dog"
    for f in dog.iterdir():
        f.write_bytes(b"")  # the header check finds these before any decoding
    with pytest.raises(UserError, match=rf"class dog has no readable train image: all 3 of its files are "
                                        rf"unreadable \(e.g. {dog}/0.JPEG: UnidentifiedImageError"):
        imagefolder(tmp_path / "src", 16, 3, tmp_path / "work", on_bad_image="skip")
    shutil.rmtree(tmp_path / "src")
    make_tree(tmp_path / "src")
    for f in dog.iterdir():  # truncated: the header reads, decoding fails
        f.write_bytes(f.read_bytes()[: f.stat().st_size * 2 // 3])
    with pytest.raises(UserError, match=r"class dog has no readable train image: all 3 of its files are unreadable"):
        imagefolder(tmp_path / "src", 16, 3, tmp_path / "work", on_bad_image="skip")
    shutil.rmtree(tmp_path / "src")
    make_tree(tmp_path / "src")
    shutil.rmtree(tmp_path / "src" / "val" / "dog")
    with pytest.raises(UserError, match=r"class dog has no test images \(nothing of it in val/\); add its images"):
        imagefolder(tmp_path / "src", 16, 3, tmp_path / "fresh")
    assert not (tmp_path / "fresh").exists()  # refused before any decoding


def test_prepare_and_any_number_of_training_jobs_hash_each_store_file_once(tmp_path, monkeypatch, params):
    """prepare hashes each file for the manifest and stamps the store as verified; before, the first
    job to open it hashed everything again (and four jobs starting at once, four times)."""
    from transferability import runs, stages
    from transferability.data import store as store_module
    monkeypatch.chdir(tmp_path)
    hashed = []
    real = store_module.sha256_file
    monkeypatch.setattr(store_module, "sha256_file", lambda f: hashed.append(f.name) or real(f))
    stages.prepare(params)
    for _ in range(3):
        load_store(runs.prepared_path(params), verify=True)
    assert sorted(hashed) == ["test_images.npy", "test_labels.npy", "train_images.npy", "train_labels.npy"]
    f = runs.prepared_path(params) / "test_labels.npy"
    f.write_bytes(f.read_bytes())  # same bytes, a new modification time: hashed again, and accepted
    load_store(runs.prepared_path(params), verify=True)
    assert hashed[4:] == ["test_labels.npy"]
