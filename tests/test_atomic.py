"""Atomic writes: a killed writer's temporaries are cleared, a live writer's never are."""

from __future__ import annotations

import subprocess
import sys

from transferability.atomic import atomic_path, write_text

ATOMIC = "from transferability.atomic import atomic_path, write_text\n"


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
