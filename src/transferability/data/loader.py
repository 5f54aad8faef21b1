"""A split's half of the store as uint8 images, and batches made from them.

Images stay uint8 until a batch is drawn (airbench-style): a batch is indexed, cast, normalised
with the training set's channel statistics and augmented as one tensor operation, on whatever
device the tensors live on. A half that fits (``compute.resident_gb``) lives on the device; a
larger one (an ImageNet half is ~130 GB of uint8) is streamed from the memory-mapped store: reader
threads copy each batch's images once, straight into reused (on a GPU, pinned) buffers, batches
ahead of the step, and a GPU gets them by an asynchronous copy on a stream of its own. The batches
are the resident half's, bit for bit.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from transferability.data.store import Store

PREFETCH = 3  # batches read ahead of the one the step holds: with it, 4 buffers (memory.py counts 4 batches)


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor sent to ``device`` without making the host wait: to a GPU from pinned memory,
    asynchronously (torch keeps the pinned block until the copy is done)."""
    if device.type == "cuda":
        return (t if t.is_pinned() else t.pin_memory()).to(device, non_blocking=True)
    return t.to(device)


def host_buffer(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """An empty host tensor to read images into: pinned when bound for a GPU, so that reading into
    it is the only copy on the host (the copy to the device is then one asynchronous DMA)."""
    return torch.empty(shape, dtype=dtype, pin_memory=device.type == "cuda")


def gather(images: np.ndarray, rows: np.ndarray, out: np.ndarray, part: np.ndarray | None = None) -> np.ndarray:
    """``out[i] = images[rows[i]]`` for ``i`` in ``part`` (default: all), each image copied once,
    straight into ``out``: no temporary batch. In file order, so a memory map reads forward."""
    src = np.asarray(images)  # a plain view: no np.memmap object made per row
    for i in np.argsort(rows, kind="stable") if part is None else part:
        out[i] = src[rows[i]]
    return out

class Streamed:
    """Images of one part of a half, read from the store per batch and copied to the device.

    Indexing (a tensor of positions or a slice) returns a uint8 tensor on the device, as indexing
    a resident tensor would; an epoch's batches come from ``Loader`` (through ``batches``)."""

    def __init__(self, images: np.ndarray, rows: np.ndarray, device: torch.device | str = "cpu") -> None:
        self.images, self.rows, self.device = images, rows, torch.device(device)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.rows), *self.images.shape[1:])

    @property
    def dtype(self) -> torch.dtype:
        return torch.from_numpy(np.empty(0, self.images.dtype)).dtype  # the store's may be read-only

    def __getitem__(self, sel: torch.Tensor | slice) -> torch.Tensor:
        """The images at positions ``sel`` (a slice, or a tensor on the host: reading it back from
        the device would make the loader wait for every step queued before), copied once from the
        store into a fresh host tensor (pinned for a GPU)."""
        rows = self.rows[sel] if isinstance(sel, slice) else self.rows[sel.numpy()]
        out = host_buffer((len(rows), *self.images.shape[1:]), self.dtype, self.device)
        gather(self.images, rows, out.numpy())
        return to_device(out, self.device)

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


class Loader:
    """An epoch's batches of a streamed part, ``x[order[a : a + size]]`` in order, read ahead by threads.

    ``readers`` threads split each batch (its rows in file order, cut in ``readers`` runs) and copy
    every image once, from the store straight into one of ``depth + 1`` reused host buffers, pinned
    when the device is a GPU; up to ``depth`` batches are read ahead of the one the step holds.
    On a GPU the reader that finishes a batch sends it on a stream of its own (asynchronous copy,
    an event recorded after it); when the batch is handed over, the step's stream waits on that
    event and the device tensor is marked as used there (``record_stream``, so the caching
    allocator does not give its memory to the next copy while the step reads it); the host buffer
    is refilled only after the event has completed. On the CPU a batch is the buffer itself, valid
    until the next one is drawn; on any other device it is copied there at once."""

    def __init__(self, x: Streamed, order: torch.Tensor, size: int, readers: int = 1, depth: int = PREFETCH) -> None:
        if readers < 1 or depth < 1:
            raise ValueError(f"readers ({readers}) and depth ({depth}) must be at least 1")
        self.x, self.readers, self.depth = x, readers, depth
        self.device = x.device
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.picks = [x.rows[order[a : a + size].numpy()] for a in range(0, len(order), size)]
        rows = min(size, len(order))
        self.buffers = [host_buffer((rows, *x.shape[1:]), x.dtype, self.device)
                        for _ in range(min(depth + 1, len(self.picks)))]
        self.sent: list[Any] = [None] * len(self.buffers)  # each buffer's last copy to the GPU (an event)
        self.pending: deque[tuple[int, list[Future]]] = deque()  # (buffer, its readers' futures), oldest first

    def __iter__(self) -> Iterator[torch.Tensor]:
        cuda = self.device.type == "cuda"
        stream = torch.cuda.Stream(self.device) if cuda else None
        free, held, nxt = deque(range(len(self.buffers))), None, 0
        with ThreadPoolExecutor(self.readers, thread_name_prefix="loader") as pool:

            def refill() -> None:
                nonlocal nxt
                while free and nxt < len(self.picks) and len(self.pending) < self.depth:
                    b, rows = free.popleft(), self.picks[nxt]
                    parts = np.array_split(np.argsort(rows, kind="stable"), min(self.readers, len(rows)))
                    left = [len(parts)]
                    self.pending.append((b, [pool.submit(self._read, b, rows, p, left, stream) for p in parts]))
                    nxt += 1

            try:
                for _ in range(len(self.picks)):
                    if held is not None:  # the step asked for the next batch: it is done with this one
                        free.append(held)
                        held = None
                    refill()
                    b, futures = self.pending.popleft()
                    batch, sent = next(r for r in (f.result() for f in futures) if r is not None)
                    if cuda:
                        step = torch.cuda.current_stream(self.device)
                        step.wait_event(sent)
                        batch.record_stream(step)
                    if self.device.type == "cpu":
                        held = b
                    else:
                        free.append(b)  # a GPU's refill waits for the copy's event first
                    refill()
                    yield batch
            finally:
                for _, futures in self.pending:
                    for f in futures:
                        f.cancel()
                self.pending.clear()

    def _read(self, b: int, rows: np.ndarray, part: np.ndarray, left: list[int],
              stream: Any) -> tuple[torch.Tensor, Any] | None:
        """One reader's share of a batch into buffer ``b``; the reader that completes the batch sends it
        and returns (the batch on the device, the copy's event or None); the others return None."""
        if (sent := self.sent[b]) is not None:
            sent.synchronize()  # the buffer's previous copy to the GPU has read it: now it may be overwritten
        buf = self.buffers[b][: len(rows)]
        gather(self.x.images, rows, buf.numpy(), part)
        with _lock:
            left[0] -= 1
            if left[0]:
                return None
        if self.device.type == "cpu":
            return buf, None
        if self.device.type != "cuda":
            return buf.to(self.device), None
        with torch.cuda.stream(stream):
            batch = buf.to(self.device, non_blocking=True)
            sent = torch.cuda.Event(blocking=True)  # a reader waiting on it sleeps, not spins on a core
            sent.record(stream)
        self.sent[b] = sent
        return batch, sent


_lock = threading.Lock()  # the count of a batch's readers still at work


def batches(x: torch.Tensor | Streamed, order: torch.Tensor, size: int, readers: int = 1) -> Iterator[torch.Tensor]:
    """``x[order[i * size : (i + 1) * size]]`` for every batch of an epoch, ``order`` on the host. From
    a streamed half the batches are read ahead by ``readers`` threads (``Loader``); each is valid until
    the next one is drawn."""
    if not isinstance(x, Streamed):
        order = to_device(order, x.device)
        yield from (x[order[a : a + size]] for a in range(0, len(order), size))
        return
    yield from Loader(x, order, size, readers)


def input_size(stored_size: int, crop: int | None) -> int:
    return crop or stored_size


def augmentation(n: int, size: int, crop: int | None, mirror: bool,
                 gen: torch.Generator | None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """A batch's random draws, on the host from ``gen`` whatever the device, in training's order: the
    crops' (row, column) offsets (n, 2), then the flips (n,); None where nothing is drawn."""
    offs = torch.randint(0, size - crop + 1, (n, 2), generator=gen) if gen is not None and crop and crop < size \
        else None
    flip = torch.rand(n, generator=gen) < 0.5 if mirror and gen is not None else None
    return offs, flip


def make_batch(x: torch.Tensor, data: HalfData, crop: int | None, mirror: bool,
               gen: torch.Generator | None, channels_last: bool = False) -> torch.Tensor:
    """Normalise a uint8 batch; with ``gen`` apply random crops and flips, else a centre crop.

    The random draws come from ``gen`` on the CPU whatever the device (``augmentation``), so a GPU
    run draws the same crops and flips; they reach the device asynchronously, and the crops are one
    gather there."""
    size = x.shape[-1]
    offs, flip = augmentation(len(x), size, crop, mirror, gen)
    if offs is not None:
        offs = to_device(offs, x.device)
        span = torch.arange(crop, device=x.device)
        rows, cols = offs[:, :1] + span, offs[:, 1:] + span  # (B, crop) each
        b = torch.arange(len(x), device=x.device)[:, None, None]
        x = x[b, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)  # (B, C, crop, crop), NHWC in memory
    elif crop and crop < size:
        o = (size - crop) // 2
        x = x[..., o : o + crop, o : o + crop]
    x = (x.float() - data.mean) / data.std
    if flip is not None:
        x = torch.where(to_device(flip, x.device).view(-1, 1, 1, 1), x.flip(-1), x)
    return x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
