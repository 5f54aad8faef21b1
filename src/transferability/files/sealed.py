"""Files that carry the sha256 of their own bytes, so damage is found before anything trusts them.

A checkpoint or a finished shard is worth hours, and both are read back by a later run: one that
is truncated (a full disk, an interrupted copy or ``dvc pull``), empty, or has a flipped bit must
not be resumed from. A sealed file is its payload followed by a fixed-size trailer holding the
payload's sha256, computed while the payload is streamed to disk (no copy in memory). A file cut
short has lost its trailer; an altered one no longer matches it. ``torch.load`` and ``np.load``
read a sealed file as they read the plain one: both stop where the payload ends.

A damaged file is set aside under ``<name>.corrupt`` (never deleted: it may be worth a look) with
one line saying what happens next, and the caller recomputes it or falls back to an earlier one.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from transferability.files.atomic import atomic_path

SEAL = b"\n#transferability sealed sha256="
TRAILER = len(SEAL) + 64 + 1  # the prefix, the hex digest, a newline


class _HashingWriter:
    """A write-only binary file that hashes what passes through it (torch.save and np.save need
    only ``write`` and ``flush``)."""

    def __init__(self, f: IO[bytes]) -> None:
        self.f, self.h = f, hashlib.sha256()

    def write(self, data: Any) -> int:
        self.h.update(data)
        return self.f.write(data)

    def flush(self) -> None:
        self.f.flush()


@contextlib.contextmanager
def sealed_writer(target: str | Path) -> Iterator[_HashingWriter]:
    """A binary file to write ``target``'s payload into; sealed and renamed onto ``target`` (atomic.py)
    when the block succeeds."""
    with atomic_path(target) as tmp, open(tmp, "wb") as f:
        out = _HashingWriter(f)
        yield out
        f.write(SEAL + out.h.hexdigest().encode() + b"\n")


def damage(path: Path, chunk: int = 1 << 22) -> str | None:
    """What is wrong with the sealed file ``path`` (one phrase), or None if its bytes are intact."""
    size = path.stat().st_size
    if size == 0:
        return "empty (0 bytes)"
    if size < TRAILER:
        return f"truncated ({size} bytes)"
    h = hashlib.sha256()
    with open(path, "rb") as f:
        left = size - TRAILER
        while left:
            block = f.read(min(chunk, left))
            if not block:
                return f"truncated while read ({size - TRAILER - left} bytes)"
            h.update(block)
            left -= len(block)
        trailer = f.read()
    if not trailer.startswith(SEAL) or len(trailer) != TRAILER:
        return f"truncated or not sealed ({size} bytes, no integrity trailer)"
    if trailer[len(SEAL) : -1].decode("ascii", "replace") != h.hexdigest():
        return "damaged (its bytes do not match their sha256)"
    return None


def set_aside(path: Path) -> Path:
    """Rename ``path`` to a free ``<name>.corrupt[.k]`` beside it and return the new path."""
    dest = path.with_name(f"{path.name}.corrupt")
    k = 1
    while dest.exists():
        k += 1
        dest = path.with_name(f"{path.name}.corrupt.{k}")
    os.replace(path, dest)
    return dest


def intact(path: Path, then: str) -> bool:
    """True if ``path`` exists and is intact. A damaged one is set aside with one line naming it,
    what is wrong and ``then`` (what happens instead), and False is returned."""
    if not path.exists():
        return False
    if (problem := damage(path)) is None:
        return True
    moved = set_aside(path)
    print(f"{path} is {problem}: set aside as {moved.name}; {then}", file=sys.stderr)
    return False
