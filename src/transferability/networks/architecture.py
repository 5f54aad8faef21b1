"""The registry of architecture families: every question the package asks about ``model.arch`` is
answered here, from the family that registered it, never by a branch on the name.

A family is one file in ``families/`` (as timm's ``register_model``: one file per family, one call
in it) that calls ``register(Family(...))`` with its architectures' names, its units (what the
study's n counts), the least input side it takes, how it is built, how a unit's output is pooled
into features, the memory arithmetic if it has one (else memory.py builds it on ``meta``), and
whether the study's published numbers apply to it. The files are found by listing the folder, so
adding a family touches its own file and the params schema's ``model.arch`` enum (tests check the
two agree). An architecture nobody registered is one line naming it and the known ones.

This module and the family files import no torch: params.py checks an input side against them, so
``transferability check`` and Snakemake's start (which load params, not torch: 0.6 s against 7 s
on a busy 2-core machine) refuse an input a network cannot take before any stage runs. A family's
``build`` imports torch (models.py, backbones.py) when it is called.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from transferability.errors import UserError

if TYPE_CHECKING:
    from transferability.networks.unitnet import UnitNet

Model = dict[str, Any]
# (out channels, kernel, stride, padding, groups, pool kernel or 0, lrn after pool): the AlexNet family's
ConvTable = tuple[tuple[int, int, int, int, int, int, bool], ...]
ALEXNET_UNITS = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8")
TIMM_KEYS = ("input_size", "pretrained")  # model keys a timm family takes (a ViT also model.patch_size)


@dataclass(frozen=True)
class Timm:
    """How timm's model of a family becomes units (families.timm_family): ``regroup(net, resize)`` lists
    a built model's modules as the units (``resize``, a module or None, goes first in the first unit);
    ``kwargs(model, side)`` adds to what timm is asked to build (backbones.timm_kwargs)."""

    regroup: Callable[[Any, Any], list]
    kwargs: Callable[[Model, int], dict[str, Any]] = lambda model, side: {}


@dataclass(frozen=True)
class Family:
    """One family of architectures and what the package needs to know of it.

    ``build(model, in_channels, num_classes, side, fast_lrn)`` returns a fresh UnitNet (the caller
    seeds torch; ``side`` is the images' side). ``layers(model)`` gives the conv table and fc width
    for memory.py's arithmetic; a family without one is built on ``meta`` to be measured.
    ``pooling`` names features.POOLINGS' way from a unit's output to a vector."""

    name: str
    archs: tuple[str, ...]
    units: Callable[[Model], tuple[str, ...]]
    smallest_input: Callable[[Model], int]
    build: Callable[[Model, int, int, int, bool], UnitNet]
    pooling: str = "map"
    layers: Callable[[Model], tuple[ConvTable, int]] | None = None
    published: bool = False  # the study's published numbers (Figure 2's overlay, Table 1) apply
    inits: tuple[str, ...] = ("kaiming",)  # model.init values it takes; a timm family: its own init only
    keys: tuple[str, ...] = TIMM_KEYS  # the optional model keys that apply to it
    timm: Timm | None = None  # built by timm (backbones.py), from this


_REGISTRY: dict[str, Family] = {}


def register(family: Family) -> Family:
    """Add ``family`` under each of its architectures' names (called once, by its file in families/)."""
    for arch in family.archs:
        if arch in _REGISTRY:
            raise ValueError(f"model.arch {arch} is registered twice ({_REGISTRY[arch].name}, {family.name})")
        _REGISTRY[arch] = family
    return family


@functools.cache
def _registry() -> dict[str, Family]:
    """Every family file's registration, found by listing families/ and imported on first use (as plugins:
    the files import this module, this module names none of them)."""
    package = importlib.import_module(f"{__package__}.families")
    for info in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{info.name}")
    return _REGISTRY


def names() -> tuple[str, ...]:
    """Every registered ``model.arch``."""
    return tuple(_registry())


def family(model: Model) -> Family:
    """The family of ``model.arch``: one line naming it and the known ones if none registered it."""
    arch, known = model["arch"], _registry()
    if arch not in known:
        raise UserError(f"model.arch {arch} is not a registered architecture; use one of {', '.join(known)} "
                        "(or add a family file under src/transferability/networks/families/)")
    return known[arch]


def takes(key: str) -> tuple[str, ...]:
    """The architectures whose family takes the optional model key ``key`` (for error messages)."""
    return tuple(a for a, f in _registry().items() if key in f.keys)


def unit_names(model: Model) -> tuple[str, ...]:
    """The transferable units of ``model.arch`` in order, the classifier last: what the study's n counts."""
    return family(model).units(model)


def transferable(model: Model) -> int:
    """How many units can be copied: every one but the classifier (n = 1..L-1)."""
    return len(unit_names(model)) - 1


def smallest_input(model: Model) -> int:
    """The least input side ``model.arch`` takes (CaffeNet: 67; the small net: 8; a ViT: its patch):
    anything smaller fails when the network is built, so params are checked against this first."""
    return family(model).smallest_input(model)


def published(model: Model) -> bool:
    """The study's own family: its published numbers and Table 1 apply only to it."""
    return family(model).published


def network_input(model: Model, side: int) -> int:
    """The side the network sees: ``model.input_size`` (images are resized inside the first unit) or the images'."""
    return model.get("input_size") or side


def pooled_side(convs: ConvTable, size: int) -> int:
    """The side of the last conv's output for a square input of ``size``, by the conv and pooling
    arithmetic (torch's floor rounding); 0 if some layer's output would be empty."""
    for _, kernel, stride, pad, _, pool, _ in convs:
        size = (size + 2 * pad - kernel) // stride + 1
        if pool and size >= 1:
            size = (size - pool) // 2 + 1
        if size < 1:
            return 0
    return size
