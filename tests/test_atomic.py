"""Atomic writes give files and folders the modes the user's umask asks for, as open() and mkdir() do."""

from __future__ import annotations

import os
import stat

import pytest

from transferability.atomic import atomic_dir, umask, write_bytes, write_json, write_text
from transferability.sources import imagefolder
from transferability.store import write_store

from .test_store import make_tree


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture(params=[0o022, 0o077, 0o002], ids=oct)
def mask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def test_umask_is_read_without_changing_it(mask):
    assert umask() == mask
    assert umask() == mask


def test_files_and_folders_get_the_umasks_modes(tmp_path, mask):
    write_text(tmp_path / "a.txt", "a\n")
    write_json(tmp_path / "b.json", {"b": 1})
    write_bytes(tmp_path / "c.bin", b"c")
    with atomic_dir(tmp_path / "d") as tmp:
        (tmp / "inside.txt").write_text("inside\n")
    (tmp_path / "plain.txt").write_text("as open() makes it\n")
    (tmp_path / "plain").mkdir()
    for name in ("a.txt", "b.json", "c.bin", "d/inside.txt", "plain.txt"):
        assert mode(tmp_path / name) == 0o666 & ~mask, name
    for name in ("d", "plain"):
        assert mode(tmp_path / name) == 0o777 & ~mask, name


def test_a_store_is_readable_as_the_umask_says(tmp_path, mask):
    """An image folder's store: its images files are the decoder's shards, linked in, not copied."""
    make_tree(tmp_path / "src")
    write_store(tmp_path / "store", *imagefolder(tmp_path / "src", 16, 1, tmp_path / "work"))
    files = sorted((tmp_path / "store").iterdir())
    assert "train_images.npy" in [f.name for f in files]
    assert mode(tmp_path / "store") == 0o777 & ~mask
    assert {f.name: mode(f) for f in files} == {f.name: 0o666 & ~mask for f in files}
