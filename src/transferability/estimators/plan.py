"""Which feature dumps and estimates the params ask for: the estimators' part of the plan (runs.py names
the networks; the estimator registry says which of them each method reads)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transferability.estimators.scores import own_base_readers
from transferability.runs import ESTIMATES_DIR, OTHER_HALF, FeatureJob


def transfer_targets(params: dict[str, Any]) -> list[str]:
    """Target halves that the experiment reaches from the other half's base (AnB or BnA, frozen or
    fine-tuned): the fan-outs the transferability estimators predict (none without estimators)."""
    if not params["estimators"]["methods"]:
        return []
    variants = params["experiment"]["variants"]
    return [t for t in ("A", "B") if {f"{OTHER_HALF[t]}n{t}", f"{OTHER_HALF[t]}n{t}-ft"} & set(variants)]


def reads_own_base(params: dict[str, Any]) -> bool:
    """Whether an estimator in estimators.methods reads the target's own base too (linear CKA does)."""
    return bool(own_base_readers(params["estimators"]["methods"]))


def other_sources(params: dict[str, Any], target: str) -> dict[str, list[str]]:
    """The other networks a target half transfers from, whose dumps the params provide, by the variant they
    feed: its own base (BnB; dumped where features.networks lists it, and always read for linear CKA) and
    the random networks R1B..R7B (RnB: each's layer n is the random filters RnB freezes at that n; only
    where features.networks lists every one). One dump per n for the random networks, one for the base."""
    nets = params.get("features", {}).get("networks", [])
    variants, layers = params["experiment"]["variants"], params["experiment"]["layers"]
    out = {}
    if f"{target}n{target}" in variants and (f"base{target}" in nets or reads_own_base(params)):
        out[f"{target}n{target}"] = [f"base{target}"] * len(layers)
    randoms = [f"R{n}{target}" for n in layers]
    if f"Rn{target}" in variants and all(r in nets for r in randoms):
        out[f"Rn{target}"] = randoms
    return out


def estimator_dumps(params: dict[str, Any], split: str, seed: int) -> list[FeatureJob]:
    """The feature dumps one replicate's estimators read: the source base on each target half, and there the
    target's own base (where an estimator reads it: linear CKA compares the two) and the random networks
    (``other_sources``)."""
    own = reads_own_base(params)
    out = []
    for t in transfer_targets(params):
        nets = [f"base{OTHER_HALF[t]}"] + ([f"base{t}"] if own else [])
        nets += [net for names in other_sources(params, t).values() for net in names if net not in nets]
        out += [FeatureJob(split, seed, net, t) for net in dict.fromkeys(nets)]
    return out


def estimates_dir(split: str, seed: int) -> Path:
    return Path(ESTIMATES_DIR.format(split=split, seed=seed))
