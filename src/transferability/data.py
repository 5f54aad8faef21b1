"""A split's half of the store as in-memory uint8 tensors, and batches made from them.

Images stay uint8 until a batch is drawn (airbench-style): a batch is indexed, cast, normalised
with the training set's channel statistics and augmented as one tensor operation, on whatever
device the tensors live on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .store import Store


@dataclass
class HalfData:
    """Train and test images of one half, labels renumbered 0..N-1 in original index order."""

    x_train: torch.Tensor  # (N, C, H, W) uint8
    y_train: torch.Tensor  # (N,) int64
    x_test: torch.Tensor
    y_test: torch.Tensor
    mean: torch.Tensor     # (1, C, 1, 1) float32
    std: torch.Tensor
    class_names: list[str]

    def to(self, device: torch.device) -> HalfData:
        moved = {k: getattr(self, k).to(device) for k in ("x_train", "y_train", "x_test", "y_test",
                                                          "mean", "std")}
        return HalfData(**moved, class_names=self.class_names)


def select(labels: np.ndarray, classes: list[int], per_class: int | None) -> np.ndarray:
    """Indices of the images of ``classes``: the first ``per_class`` of each, in store order."""
    keep = []
    for c in classes:
        idx = np.flatnonzero(labels == c)
        keep.append(idx if per_class is None else idx[:per_class])
    return np.sort(np.concatenate(keep))


def half_data(store: Store, split: dict[str, Any], half: str, per_class: int | None,
              test_per_class: int | None = None) -> HalfData:
    classes = split[half]["indices"]
    remap = np.full(len(store.classes), -1, dtype=np.int64)
    remap[classes] = np.arange(len(classes))
    out = {}
    for part, limit in (("train", per_class), ("test", test_per_class)):
        idx = select(store.labels[part], classes, limit)
        out[f"x_{part}"] = torch.from_numpy(np.ascontiguousarray(store.images[part][idx]))
        out[f"y_{part}"] = torch.from_numpy(remap[store.labels[part][idx]])
    c = store.images["train"].shape[1]
    mean = torch.tensor(store.mean, dtype=torch.float32).view(1, c, 1, 1)
    std = torch.tensor(store.std, dtype=torch.float32).view(1, c, 1, 1)
    return HalfData(**out, mean=mean, std=std, class_names=split[half]["names"])


# CPU kernels give each image the same bits in any batch of at least this many (tests/test_prefix.py);
# a batch of one may take another code path.
LEAST_BATCH = 8


def chunks(n: int, size: int) -> list[tuple[int, int]]:
    """(start, stop) of inference batches of ``size``; a remainder under LEAST_BATCH joins the last one."""
    starts = list(range(0, n, size))
    if len(starts) > 1 and n - starts[-1] < LEAST_BATCH:
        starts.pop()
    return [(a, b) for a, b in zip(starts, [*starts[1:], n], strict=True)]


def input_size(stored_size: int, crop: int | None) -> int:
    return crop or stored_size


def make_batch(x: torch.Tensor, data: HalfData, crop: int | None, mirror: bool,
               gen: torch.Generator | None, channels_last: bool = False) -> torch.Tensor:
    """Normalise a uint8 batch; with ``gen`` apply random crops and flips, else a centre crop."""
    size = x.shape[-1]
    if crop and crop < size:
        if gen is None:
            o = (size - crop) // 2
            x = x[..., o : o + crop, o : o + crop]
        else:
            offs = torch.randint(0, size - crop + 1, (len(x), 2), generator=gen).tolist()
            x = torch.stack([im[..., i : i + crop, j : j + crop] for im, (i, j) in zip(x, offs, strict=True)])
    x = (x.float() - data.mean) / data.std
    if mirror and gen is not None:
        flip = torch.rand(len(x), generator=gen) < 0.5
        x = torch.where(flip.view(-1, 1, 1, 1).to(x.device), x.flip(-1), x)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x
