"""A split's half of the store as uint8 images, and batches made from them.

Images stay uint8 until a batch is drawn (airbench-style): a batch is indexed, cast, normalised
with the training set's channel statistics and augmented as one tensor operation, on whatever
device the tensors live on. A half that fits (``compute.resident_gb``) lives on the device; a
larger one (an ImageNet half is ~130 GB of uint8) is streamed from the memory-mapped store, batch
by batch, through pinned memory with an asynchronous copy, and gives the same batches.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .store import Store


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor sent to ``device`` without making the host wait: to a GPU from pinned memory,
    asynchronously (torch keeps the pinned block until the copy is done)."""
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


class Streamed:
    """Images of one part of a half, read from the store per batch and copied to the device.

    Indexing (a tensor of positions or a slice) returns a uint8 tensor on the device, as indexing
    a resident tensor would; rows are gathered in file order so a memory map reads forward."""

    def __init__(self, images: np.ndarray, rows: np.ndarray, device: torch.device | str = "cpu") -> None:
        self.images, self.rows, self.device = images, rows, torch.device(device)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.rows), *self.images.shape[1:])

    def __getitem__(self, sel: torch.Tensor | slice) -> torch.Tensor:
        """The images at positions ``sel`` (a slice, or a tensor on the host: reading it back from
        the device would make the loader wait for every step queued before)."""
        rows = self.rows[sel] if isinstance(sel, slice) else self.rows[sel.numpy()]
        order = np.argsort(rows, kind="stable")
        batch = np.empty((len(rows), *self.images.shape[1:]), dtype=self.images.dtype)
        batch[order] = self.images[rows[order]]
        return to_device(torch.from_numpy(batch), self.device)

    def to(self, device: torch.device | str) -> Streamed:
        return Streamed(self.images, self.rows, device)

    def numpy(self) -> np.ndarray:
        return self[slice(None)].cpu().numpy()


class Rows:
    """Parts of a half (train, then test) as one sequence of uint8 images, read a slice at a time.

    The features stage embeds a whole half; an ImageNet half is ~126 GB, so it is never gathered
    into memory: each slice is read from the memory-mapped store when it is asked for."""

    def __init__(self, *parts: torch.Tensor | Streamed) -> None:
        self.parts = parts

    def __len__(self) -> int:
        return sum(len(p) for p in self.parts)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self), *self.parts[0].shape[1:])

    def __getitem__(self, sel: slice) -> np.ndarray:
        start, stop, _ = sel.indices(len(self))
        out, offset = [], 0
        for p in self.parts:
            a, b = max(start - offset, 0), min(stop - offset, len(p))
            if a < b:
                out.append(p[a:b].cpu().numpy())
            offset += len(p)
        return np.concatenate(out) if out else np.empty((0, *self.shape[1:]), dtype=np.uint8)


@dataclass
class HalfData:
    """Train and test images of one half, labels renumbered 0..N-1 in original index order."""

    x_train: torch.Tensor | Streamed  # (N, C, H, W) uint8
    y_train: torch.Tensor  # (N,) int64
    x_test: torch.Tensor | Streamed
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


def normalisation(store: Store, normalise: str = "mean_std") -> tuple[list[float], list[float]]:
    """Channel mean and scale of the network's input: the training set's mean and std, or the mean
    only (``mean``: the study's Caffe recipe, which kept the 0..255 scale its initialisation expects)."""
    return store.mean, store.std if normalise == "mean_std" else [1.0] * len(store.mean)


def half_data(store: Store, split: dict[str, Any], half: str, per_class: int | None,
              test_per_class: int | None = None, resident_gb: float | None = None,
              normalise: str = "mean_std") -> HalfData:
    """The half's images, in memory when the training part takes at most ``resident_gb``, else streamed."""
    classes = split[half]["indices"]
    remap = np.full(len(store.classes), -1, dtype=np.int64)
    remap[classes] = np.arange(len(classes))
    out = {}
    for part, limit in (("train", per_class), ("test", test_per_class)):
        idx = select(store.labels[part], classes, limit)
        images = store.images[part]
        if resident_gb is not None and len(idx) * images[0].nbytes > resident_gb * 2**30:
            out[f"x_{part}"] = Streamed(images, idx)
        else:
            out[f"x_{part}"] = torch.from_numpy(np.ascontiguousarray(images[idx]))
        out[f"y_{part}"] = torch.from_numpy(remap[store.labels[part][idx]])
    c = store.images["train"].shape[1]
    mean, std = (torch.tensor(v, dtype=torch.float32).view(1, c, 1, 1) for v in normalisation(store, normalise))
    return HalfData(**out, mean=mean, std=std, class_names=split[half]["names"])


# CPU kernels give each image the same bits in any batch of at least this many (tests/test_prefix.py);
# a batch of one may take another code path. Not 1x1 convolutions in channels_last (prefix.cacheable).
LEAST_BATCH = 8


def chunks(n: int, size: int) -> list[tuple[int, int]]:
    """(start, stop) of inference batches of ``size``; a remainder under LEAST_BATCH joins the last one."""
    starts = list(range(0, n, size))
    if len(starts) > 1 and n - starts[-1] < LEAST_BATCH:
        starts.pop()
    return [(a, b) for a, b in zip(starts, [*starts[1:], n], strict=True)]


def batches(x: torch.Tensor | Streamed, order: torch.Tensor, size: int) -> Iterator[torch.Tensor]:
    """``x[order[i * size : (i + 1) * size]]`` for every batch of an epoch, ``order`` on the host. From
    a streamed half the next batch is read and copied in a thread while the current one trains."""
    if not isinstance(x, Streamed):
        order = to_device(order, x.device)
        yield from (x[order[a : a + size]] for a in range(0, len(order), size))
        return
    picks = [order[a : a + size] for a in range(0, len(order), size)]
    with ThreadPoolExecutor(1) as pool:
        ahead = pool.submit(x.__getitem__, picks[0])
        for i in range(len(picks)):
            current = ahead.result()
            if i + 1 < len(picks):
                ahead = pool.submit(x.__getitem__, picks[i + 1])
            yield current


def input_size(stored_size: int, crop: int | None) -> int:
    return crop or stored_size


def make_batch(x: torch.Tensor, data: HalfData, crop: int | None, mirror: bool,
               gen: torch.Generator | None, channels_last: bool = False) -> torch.Tensor:
    """Normalise a uint8 batch; with ``gen`` apply random crops and flips, else a centre crop.

    The random draws come from ``gen`` on the CPU whatever the device, so a GPU run draws the same
    crops and flips; they reach the device asynchronously, and the crops are one gather there."""
    size = x.shape[-1]
    if crop and crop < size:
        if gen is None:
            o = (size - crop) // 2
            x = x[..., o : o + crop, o : o + crop]
        else:
            offs = to_device(torch.randint(0, size - crop + 1, (len(x), 2), generator=gen), x.device)
            span = torch.arange(crop, device=x.device)
            rows, cols = offs[:, :1] + span, offs[:, 1:] + span  # (B, crop) each
            b = torch.arange(len(x), device=x.device)[:, None, None]
            x = x[b, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)  # (B, C, crop, crop), NHWC in memory
    x = (x.float() - data.mean) / data.std
    if mirror and gen is not None:
        flip = to_device(torch.rand(len(x), generator=gen) < 0.5, x.device)
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
    return x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
