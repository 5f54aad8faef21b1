"""fill_npy: rows written by a pool straight into one .npy, shards shared among the workers,
failed items dropped or stopping the fill, the same bytes however many workers."""

from __future__ import annotations

import os

import numpy as np
import pytest

from transferability.data.shards import PIECE, fill_npy, key_folder, worker_pool
from transferability.data.store import sha256_file
from transferability.errors import UserError


def write_items(task: tuple[str, int, list[int]]) -> tuple[np.ndarray, list[tuple[int, str]]]:
    """A worker: item v becomes a 2x2 row of v % 256; every 37th item (from 5) cannot be read."""
    path, offset, items = task
    assert len(items) <= PIECE
    fd = os.open(path, os.O_WRONLY)
    total, failed = np.zeros(1, np.int64), []
    for i, v in enumerate(items):
        if v % 37 == 5:
            failed.append((i, f"item {v} is bad"))
            continue
        os.pwrite(fd, bytes([v % 256]) * 4, offset + i * 4)
        total += v
    os.close(fd)
    return total, failed


@pytest.mark.parametrize("workers", [1, 2])
def test_fill_drops_failed_items_and_is_the_same_for_any_workers(tmp_path, workers):
    items = list(range(300))
    with worker_pool(workers) as imap:
        filled = fill_npy(key_folder(tmp_path / "work", "k"), items, (2, 2), 100, write_items, imap,
                          keep_going=True, fix="", desc="test")
    kept = [v for v in items if v % 37 != 5]
    assert filled.failed == [(v, f"item {v} is bad") for v in items if v % 37 == 5]
    assert np.array_equal(np.load(filled.path), np.repeat(np.array(kept) % 256, 4).astype(np.uint8).reshape(-1, 2, 2))
    assert filled.sha256 == sha256_file(filled.path) and filled.stats.tolist() == [sum(kept)]


def test_fill_stops_at_a_failed_item_with_the_fix(tmp_path):
    with worker_pool(2) as imap, pytest.raises(UserError, match=r"cannot read 5 \(item 5 is bad\); do this"):
        fill_npy(key_folder(tmp_path / "work", "k"), list(range(300)), (2, 2), 100, write_items, imap,
                 keep_going=False, fix="do this", desc="test")
