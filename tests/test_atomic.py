"""Atomic writes: the modes the user's umask asks for, as open() and mkdir() give; a killed writer's
temporaries are cleared, a live writer's never are."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

from transferability.data.sources.imagefolder import imagefolder
from transferability.data.store import write_store
from transferability.files.atomic import atomic_dir, atomic_path, umask, write_bytes, write_json, write_text

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


ATOMIC = "from transferability.files.atomic import atomic_path, write_text\n"


def test_a_live_writers_temporary_survives_another_writer_of_the_same_file(tmp_path):
    """Two jobs on one output (a job orphaned by a killed Snakemake, and its rerun)."""
    target = tmp_path / "out.txt"
    with atomic_path(target) as tmp:
        tmp.write_text("first")
        subprocess.run([sys.executable, "-c", ATOMIC + f"write_text({str(target)!r}, 'second')"], check=True)
        assert tmp.exists(), "the other writer deleted this one's temporary"
        assert target.read_text() == "second"
    assert target.read_text() == "first"


def test_temporaries_of_ended_writers_are_cleared_and_of_other_hosts_kept(tmp_path):
    target = tmp_path / "out.txt"
    killed = ATOMIC + f"import os\nwith atomic_path({str(target)!r}) as tmp:\n    tmp.write_text('x')\n    os._exit(9)"
    assert subprocess.run([sys.executable, "-c", killed]).returncode == 9
    (left,) = tmp_path.glob(".out.txt.*.tmp")
    other_host = tmp_path / ".out.txt.elsewhere-1.abcdefgh.tmp"
    older_version = tmp_path / ".out.txt.abcdefgh.tmp"  # no owner in the name
    for f in (other_host, older_version):
        f.write_text("")
    write_text(target, "done")
    assert not left.exists() and not older_version.exists()
    assert other_host.exists(), "a writer on another host cannot be asked whether it still runs"
    assert target.read_text() == "done"
