"""Progress bars stay readable in a log file: one line per update, no carriage returns."""

from __future__ import annotations

import io
import re
import subprocess

import pytest

from transferability import progress

from .conftest import ENV, SMOKE, write_params


def test_a_bar_in_a_log_writes_whole_lines(monkeypatch):
    monkeypatch.setattr(progress, "LOG_INTERVAL", 0.0)
    log = io.StringIO()
    with progress.bar(300, "baseB", "img", stream=log, unit_scale=True, miniters=1) as bar:
        for _ in range(3):
            bar.update(100)
    text = log.getvalue()
    assert "\r" not in text and text.endswith("\n") and not text.startswith("\n")
    lines = text.splitlines()
    assert all(line.startswith("baseB:") for line in lines)
    done = [int(re.match(r"baseB:\s+(\d+)%", line)[1]) for line in lines]
    assert done[:4] == [0, 33, 67, 100] and done[4:] in ([], [100])  # closing redraws the last line once
    assert "300/300" in lines[-1]


@pytest.mark.usefixtures("workspace")
def test_a_training_log_shows_progress_lines_and_a_summary(tmp_path):
    write_params(SMOKE, tmp_path / "params.yaml")
    log = tmp_path / "train.log"
    with log.open("w") as f:
        subprocess.run(["transferability", "--params", "params.yaml", "train", "--split", "random0", "--seed", "0",
                        "--variant", "baseB"], cwd=tmp_path, env=ENV, stderr=f, check=True)
    text = log.read_text()
    assert "\r" not in text
    assert re.search(r"^baseB: 100%.*400/400 \[.*img/s, epoch=2/2, top1=0\.\d{4}\]$", text, re.M), text
    assert re.search(r"^baseB \[random0 seed 0\]: top-1 0\.\d{4}, 2-best 0\.\d{4}, [\d.]+ s, \d+ img/s$", text, re.M)
