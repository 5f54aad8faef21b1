"""The GPU check kit's sections in the order gpu/check.py runs them, each proving one part of the GPU
path through the real pipeline and returning what it saw, as plain data for the kit's JSON and
Markdown; run as a script, the entry of the kit's worker processes.

- ``device``: what the kit ran on;
- ``smoke``: the smoke experiment trained through the CLI stages in DAG order on the device (as
  configured: IEEE float32; and with ``compute.precision: tf32``), and beside it on the CPU; every
  network's accuracy compared;
- ``snakemake``: part of it again through Snakemake with ``--resources gpu=1``: the CLI's bits;
- ``lock``: training jobs started at once on one card run one at a time; a killed holder frees the
  card, and the killed job resumes from its checkpoint with the uninterrupted run's metrics;
- ``prepare``: a generated JPEG tree through the prepare stage with every core;
- ``throughput``: training images/s through ``training.train`` and the real data path (the default
  small net from memory, CaffeNet at batch 256 streamed from the prepared store), float32 and
  bfloat16, with and without torch.compile: peak memory and the share of time the GPU was busy; for
  the streamed net, the loader alone and the step alone beside the loop, and which one bounds it.

Work that may crash, hang or overrun runs in a process of its own, started as
``python gpu/sections.py <worker> <config.json> <result.json>``: each throughput configuration,
the prepare measurement, and (``locked-train``, CPU runs only) a train stage behind the per-card
lock, which a CUDA job takes itself and a CPU job never does.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from card_lock import lock, locked_train
from correctness import device, smoke, snakemake
from measurements import prepare, prepare_worker, throughput, throughput_worker

SECTIONS = {"device": device, "smoke": smoke, "snakemake": snakemake, "lock": lock, "prepare": prepare,
            "throughput": throughput}
WORKERS = {"throughput-worker": throughput_worker, "prepare-worker": prepare_worker}

if __name__ == "__main__":
    if sys.argv[1] == "locked-train":
        sys.exit(locked_train(sys.argv[2:]))
    result = WORKERS[sys.argv[1]](json.loads(Path(sys.argv[2]).read_text()))
    Path(sys.argv[3]).write_text(json.dumps(result, indent=1))
