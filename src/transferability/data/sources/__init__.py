"""Dataset sources: each turns files a user already has into the arrays or files of the store.

``SOURCES`` is the registry the pipeline reads (prepare, params checks, Snakemake's fingerprint, memory
requests): one ``Source`` per name the schema's dataset.source allows. Each source is one file in this
folder that calls ``register``; the files are imported here, as plugins (this module names none of them).
A new source is its file plus its name in the schema's enum (test_registry checks that the two agree).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transferability.data.store import Arrays
from transferability.errors import UserError


@dataclass(frozen=True)
class Source:
    """A dataset source as the pipeline knows it: ``read(dataset, work, workers)`` makes the store's arrays
    (``work``: a folder for resumable shards; ``workers``: processes); ``fingerprint(dataset)`` changes when
    its files do (stats only: Snakemake reruns prepare on it); the stored images' ``side`` and ``channels``
    from params alone (params checks, before the store exists); ``expected``: its classes and images per
    class, or bounds on them, until it is prepared (memory.py's estimate of a dry run); ``sized``: whether
    it needs dataset.image_size."""

    name: str
    read: Callable[[dict[str, Any], Path, int], Arrays]
    fingerprint: Callable[[dict[str, Any]], str]
    side: Callable[[dict[str, Any]], int]
    channels: Callable[[dict[str, Any]], int]
    expected: Callable[[dict[str, Any]], dict[str, int]]
    sized: bool = False


SOURCES: dict[str, Source] = {}


def register(source: Source) -> Source:
    """Add ``source`` under its name (called once, by its file in this folder)."""
    if source.name in SOURCES:
        raise ValueError(f"dataset.source {source.name} is registered twice")
    SOURCES[source.name] = source
    return source


def decoding(dataset: dict[str, Any]) -> dict[str, Any]:
    """``decode_listing``'s settings from a source that decodes image files: dataset.image_size, .channels,
    .shard_images and .on_bad_image."""
    return {"size": dataset["image_size"], "channels": dataset.get("channels", 3),
            "shard": dataset.get("shard_images", 1024), "on_bad_image": dataset.get("on_bad_image", "fail")}


def sized(dataset: dict[str, Any]) -> int:
    """The stored side of a source that resizes its images: dataset.image_size."""
    return dataset["image_size"]


def channels(dataset: dict[str, Any]) -> int:
    """The stored channels of a source that decodes image files: dataset.channels (3)."""
    return dataset.get("channels", 3)


def source_of(dataset: dict[str, Any]) -> Source:
    """dataset.source's entry, or one line naming it and the known sources (never a fallback: an unknown
    source read as another would make a wrong store without a word)."""
    if (found := SOURCES.get(dataset["source"])) is None:
        raise UserError(f"dataset.source '{dataset['source']}' is unknown; known sources: {', '.join(SOURCES)}")
    return found


def read_source(dataset: dict[str, Any], work: Path, workers: int = 1) -> Arrays:
    """The store's arrays from dataset.source (``Source.read``)."""
    return source_of(dataset).read(dataset, work, workers)


def fingerprint(dataset: dict[str, Any]) -> str:
    """dataset.source's fingerprint of its files (``Source.fingerprint``): what Snakemake reruns prepare on."""
    return source_of(dataset).fingerprint(dataset)


for _info in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_info.name}")
