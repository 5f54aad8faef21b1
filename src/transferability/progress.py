"""Progress bars that read well on a terminal and in a log file.

On a terminal tqdm redraws one line in place. In a log (Snakemake's ``log:`` files, Slurm's output)
every redraw would append to one endless line of carriage returns, so there each update becomes a
line of its own, at most every ``LOG_INTERVAL`` seconds: a log shows how far a job got, how fast it
runs and its ETA, line by line.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

from tqdm import tqdm

LOG_INTERVAL = 30.0  # seconds between progress lines in a log file


class _Lines:
    """A stream wrapper that turns tqdm's in-place redraws into whole lines."""

    def __init__(self, stream: TextIO) -> None:
        self.stream, self.started = stream, False

    def write(self, s: str) -> int:
        lines = [line.rstrip() for line in s.replace("\r", "\n").split("\n")]
        text = "\n".join(lines)
        if not self.started:
            text, self.started = text.lstrip("\n"), bool(text.strip())
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()


def bar(total: int, desc: str, unit: str, stream: TextIO | None = None, **kwargs: Any) -> tqdm:
    """A tqdm bar on stderr: redrawn in place on a terminal, one line per update in a log."""
    stream = stream or sys.stderr
    tty = stream.isatty()
    return tqdm(total=total, desc=desc, unit=unit, ascii=True, dynamic_ncols=False, ncols=110,
                file=stream if tty else _Lines(stream), mininterval=1.0 if tty else LOG_INTERVAL, **kwargs)
