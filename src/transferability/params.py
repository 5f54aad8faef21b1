"""Load and validate params.yaml: the single configuration of Snakemake, DVC and the CLI.

A profile (workflow/params/) states only how it differs from another params file: ``resolve``
turns it into the whole params it stands for, and the CLI, Snakemake and ``transferability
resolve`` (which writes that whole file for DVC) all go through it, so every route reads the same.
Validation happens after that and before any work: the JSON schema catches unknown keys, wrong
types and out-of-range values; ``check`` adds the rules a schema cannot express (lists that must agree).
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from transferability import runs
from transferability.data.sources import source_of
from transferability.errors import UserError
from transferability.files import atomic
from transferability.networks.architecture import family, network_input, smallest_input, takes, transferable, unit_names

SCHEMA_PATH = Path(__file__).with_name("params.schema.yaml")


def schema() -> dict[str, Any]:
    return yaml.safe_load(SCHEMA_PATH.read_text())


def _where(error: jsonschema.ValidationError) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "(top level)"


def _explain(error: jsonschema.ValidationError) -> str:
    key = _where(error)
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed))
        where = f"under '{key}'" if error.absolute_path else "at the top level"
        return f"unknown key {extra} {where}; allowed keys: {', '.join(allowed)}"
    if error.validator == "enum":
        allowed = ", ".join(map(str, error.validator_value))
        return f"'{key}' is {error.instance!r}; allowed values: {allowed}"
    if error.validator == "required":
        return f"missing key under '{key}': {error.message}"
    return f"'{key}': {error.message}"


def validate(params: dict[str, Any], source: str = "params") -> dict[str, Any]:
    """Raise UserError with one line naming the key and the allowed values, else return params."""
    validator = jsonschema.Draft202012Validator(schema())
    errors = sorted(validator.iter_errors(params), key=lambda e: list(e.absolute_path))
    if errors:
        raise UserError(f"{source}: {_explain(errors[0])}")
    check(params, source)
    return params


def check(params: dict[str, Any], source: str = "params") -> None:
    """Cross-key rules the schema cannot state."""
    exp = params["experiment"]
    for name in exp["splits"]:
        if name not in params["splits"]:
            raise UserError(
                f"{source}: experiment.splits names '{name}', which is not defined under 'splits' "
                f"(defined: {', '.join(params['splits'])})"
            )
    for name in exp["dissimilar"]["splits"]:
        if name not in params["splits"]:
            raise UserError(f"{source}: experiment.dissimilar.splits names '{name}', which is not defined under "
                            f"'splits' (defined: {', '.join(params['splits'])})")
        if params["splits"][name]["method"] == "random":
            raise UserError(f"{source}: experiment.dissimilar.splits names '{name}', a random split; "
                            "a dissimilar split lists its halves (method: lists)")
        if name in exp["splits"]:
            raise UserError(f"{source}: '{name}' is in both experiment.splits and experiment.dissimilar.splits; "
                            "keep it in one of them")
    for name, split in params["splits"].items():
        if split["method"] == "random" and "seed" not in split:
            raise UserError(f"{source}: splits.{name} uses method 'random' and needs a 'seed'")
        if split["method"] == "lists" and not ("A" in split and "B" in split):
            raise UserError(f"{source}: splits.{name} uses method 'lists' and needs both 'A' and 'B'")
    if exp["variants"] and not exp["layers"]:
        raise UserError(f"{source}: experiment.layers is empty but variants are asked for; "
                        f"give n in 1..{transferable(params['model'])}")
    check_model(params, source)
    th = params.get("embed", {}).get("thresholds")
    if th and not th[0] < 0 < th[1]:
        raise UserError(f"{source}: embed.thresholds must be [negative, positive] (the FNE's -0.25, 0.15), got {th}")
    if params.get("features", {}).get("networks") and "embed" not in params:
        raise UserError(f"{source}: features.networks is set but the 'embed' section is missing")
    feats = params.get("features", {})
    for net in feats.get("networks", []):
        if net.startswith("tv-") and net[3:] not in feats.get("torchvision_weights", {}):
            raise UserError(f"{source}: features.networks has {net} but features.torchvision_weights.{net[3:]} "
                            "does not give its weights file (nothing is downloaded)")
    check_estimators(params, source)
    steps = params["train"]["lr_steps"]
    if steps != sorted(steps):
        raise UserError(f"{source}: train.lr_steps must increase, got {steps}")
    ds = params["dataset"]
    if source_of(ds).sized and not ds.get("image_size"):
        raise UserError(f"{source}: dataset.image_size is required for source '{ds['source']}' (e.g. 256)")
    check_inputs(params, source)
    evals = params["evaluate"]["evals"]
    if params["evaluate"]["k_best"] > evals:
        raise UserError(f"{source}: evaluate.k_best is {params['evaluate']['k_best']} but a run makes at most "
                        f"{evals} evaluations (evaluate.evals); lower k_best")
    planned = {n.slug for n in runs.networks(params) if n.split in exp["splits"]}  # features: main splits
    for net in feats.get("networks", []):
        if not net.startswith("tv-") and net not in planned:
            raise UserError(f"{source}: features.networks has {net}, which the experiment does not train; add "
                            "its variant and n to experiment.variants and .layers, or drop it")


def check_model(params: dict[str, Any], source: str = "params") -> None:
    """n within the architecture's units, keys that apply to its family only, pretrained bases that
    no variant trains on, and single-layer baselines that name its units."""
    model, exp = params["model"], params["experiment"]
    arch, names, top = model["arch"], unit_names(params["model"]), transferable(params["model"])
    for n in exp["layers"]:
        if n > top:
            raise UserError(f"{source}: experiment.layers has n = {n}, but model.arch {arch} has {top + 1} units "
                            f"({names[0]}, {names[1]}, ..., {names[-1]}): n runs over 1..{top}")
    fam = family(model)
    for key in ("input_size", "patch_size", "pretrained"):
        if model.get(key) is not None and key not in fam.keys:
            raise UserError(f"{source}: model.{key} is for {', '.join(takes(key))}, not model.arch {arch}; remove it")
    if model["init"] not in fam.inits:
        raise UserError(f"{source}: model.init {model['init']} is the AlexNet family's; {arch} takes its own "
                        f"initialisation: set model.init: {fam.inits[0]}")
    variants = exp["variants"] + exp["dissimilar"]["variants"]
    for half in model.get("pretrained") or {}:
        trains = [v for v in variants if v.endswith((half, f"{half}-ft"))]
        if trains:
            raise UserError(f"{source}: model.pretrained.{half} makes base{half} a weights file with its own classes, "
                            f"but {trains[0]} is trained on half {half} against base{half}; drop those variants "
                            f"or model.pretrained.{half}")
    for layer in params.get("embed", {}).get("baselines", []):
        if layer not in names[:-1]:
            raise UserError(f"{source}: embed.baselines names {layer}, which is not a unit of {arch} below its "
                            f"classifier ({', '.join(names[:-1])})")


def image_side(dataset: dict[str, Any]) -> int:
    """The side of the stored images, from params alone: the source's (sources.SOURCES) fixed side, as
    Fashion-MNIST's 28, or dataset.image_size, the square a source of image files is resized to."""
    return source_of(dataset).side(dataset)


def check_inputs(params: dict[str, Any], source: str = "params") -> None:
    """The network's input, known from params alone: a crop no larger than the stored images, and
    an input no smaller than the architecture takes (either would fail only once training starts)."""
    ds, arch, crop = params["dataset"], params["model"]["arch"], params["train"].get("crop")
    side = image_side(ds)
    stored = f"{ds['source']} images are {side}x{side}"
    if crop and crop > side:
        raise UserError(f"{source}: train.crop is {crop} but the {stored}; set train.crop to at most {side}, "
                        "or null for no crop")
    size, least = network_input(params["model"], crop or side), smallest_input(params["model"])
    if size < least:
        given = f"train.crop is {crop}" if crop else f"the {stored}"
        raise UserError(f"{source}: model.arch {arch} takes inputs of at least {least}x{least}, but {given}; "
                        f"use model.arch: small, or images of at least {least} (dataset.image_size, train.crop)")


def check_estimators(params: dict[str, Any], source: str) -> None:
    """The estimators need a fan-out to predict, n to rank, and the dumps they read."""
    from transferability.estimators.plan import transfer_targets
    from transferability.estimators.scores import own_base_readers
    from transferability.runs import OTHER_HALF

    methods, layers = params["estimators"]["methods"], params["experiment"]["layers"]
    targets = transfer_targets(params)
    if not methods:
        return
    if not targets:
        raise UserError(f"{source}: estimators predict transfer from the other half's base, but experiment.variants "
                        "has none of AnB, AnB-ft, BnA, BnA-ft; add one")
    if len(layers) < 2:
        raise UserError(f"{source}: estimators are ranked against the measured accuracy over n, so experiment.layers "
                        f"needs at least 2 values (got {layers})")
    feats = params.get("features", {})
    own = own_base_readers(methods)
    for t in targets:
        why = {f"base{OTHER_HALF[t]}": "the source base",
               f"base{t}": f"{', '.join(e.label for e in own)} compares it with the source base"}
        for net in [f"base{OTHER_HALF[t]}"] + ([f"base{t}"] if own else []):
            if net not in feats.get("networks", []):
                raise UserError(f"{source}: estimators read {net}'s features on half {t} ({why[net]}): add {net} to "
                                "features.networks")
        if t not in feats.get("targets", []):
            raise UserError(f"{source}: estimators read features on half {t} (the target of "
                            f"{OTHER_HALF[t]}n{t}): add {t} to features.targets")


EXTENDS, DROP = "extends", "drop"
RESOLVED = "# Written by `transferability resolve`"  # the first line of a file it wrote


def _read(path: Path, named_by: Path | None = None) -> tuple[dict[str, Any], bool]:
    """A params file's mapping, and whether `transferability resolve` wrote it."""
    if not path.is_file():
        if named_by:
            raise UserError(f"{named_by}: extends {path}, which is not a file (the path is relative to "
                            f"{named_by.parent})")
        raise UserError(f"params file {path} not found; run from the project root or pass --params")
    text = path.read_text()
    try:
        params = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UserError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from exc
    if params is None:  # `... > params.yaml` empties the file before the command reads it
        raise UserError(f"{path} is empty; `git checkout {path}` restores a tracked one (write with --out, "
                        "never a shell redirect onto a file it reads)")
    if not isinstance(params, dict):
        raise UserError(f"{path} must hold a mapping of sections (dataset, splits, ...)")
    return params, text.startswith(RESOLVED)


def _chain(path: Path) -> tuple[list[tuple[Path, dict[str, Any]]], Path, dict[str, Any], bool]:
    """The overlays from ``path`` down its `extends` links, and the whole file they end on."""
    chain: list[tuple[Path, dict[str, Any]]] = []
    while True:
        if path.resolve() in {f.resolve() for f, _ in chain}:
            raise UserError(f"{chain[0][0]}: extends leads back to {path} "
                            f"({' -> '.join(str(f) for f, _ in chain)} -> {path})")
        params, written = _read(path, chain[-1][0] if chain else None)
        if EXTENDS not in params:
            if DROP in params:
                raise UserError(f"{path}: '{DROP}' removes keys from the file a profile extends; add "
                                f"'{EXTENDS}: <params file>' or remove '{DROP}'")
            return chain, path, params, written
        if not isinstance(params[EXTENDS], str):
            raise UserError(f"{path}: {EXTENDS} must name a params file, relative to {path.parent} "
                            "(e.g. ../../params.yaml)")
        chain.append((path, params))
        path = Path(os.path.normpath(path.parent / params[EXTENDS]))  # as a user names it: params.yaml


def _drop(params: dict[str, Any], key: str, overlay: Path, strict: bool) -> None:
    """Take a dotted key (``splits.random4``) out of ``params``, in place."""
    *parents, last = key.split(".")
    node: Any = params
    for part in parents:
        node = node.get(part) if isinstance(node, dict) else None
    if isinstance(node, dict) and last in node:
        del node[last]
    elif strict:
        raise UserError(f"{overlay}: {DROP} names {key}, which what it extends does not have; "
                        "drop only keys of the file it extends (dotted, e.g. splits.random4)")


def merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """``overlay`` over ``base``: a mapping merges key by key (new keys after the base's, in the
    overlay's order); anything else, a list or null included, replaces the base's value whole."""
    out = dict(base)
    for key, value in overlay.items():
        both = isinstance(value, dict) and isinstance(base.get(key), dict)
        out[key] = merge(base[key], value) if both else copy.deepcopy(value)
    return out


def resolve(path: str | Path) -> dict[str, Any]:
    """The whole params a file stands for, before validation. A file without `extends` is whole
    already. A profile names the file it differs from, relative to its own folder (``extends:
    ../../params.yaml``, or another profile), lists under ``drop`` the dotted keys of that file it
    goes without, and states its other keys as they differ: see ``merge`` (to replace a mapping
    whole, drop it and state it). Over a file that
    `transferability resolve` wrote, only the profile it was written from (which changes nothing)
    resolves: another would silently keep the first one's keys."""
    top = Path(path)
    chain, root, whole, written = _chain(top)
    params = copy.deepcopy(whole)
    for overlay_path, overlay in reversed(chain):
        drop = overlay.get(DROP, [])
        if not (isinstance(drop, list) and all(isinstance(k, str) for k in drop)):
            raise UserError(f"{overlay_path}: {DROP} must be a list of dotted keys, e.g. [splits.random4, model.width]")
        for key in drop:
            _drop(params, key, overlay_path, strict=not written)
        params = merge(params, {k: v for k, v in overlay.items() if k not in (EXTENDS, DROP)})
    if written and chain:
        if params != whole:
            raise UserError(f"{root} was written by `transferability resolve` and {top} would change it: restore "
                            f"the default (`git checkout {root}`) before resolving {top} over it")
        return whole
    return params


def load(path: str | Path = "params.yaml") -> dict[str, Any]:
    """The validated whole params of a params file or profile (``resolve``)."""
    return validate(resolve(path), str(path))


def resolved_text(params: dict[str, Any], source: str | Path) -> str:
    """A profile's whole params as one file, for DVC (it reads params.yaml alone): the same values
    in the same order, so every output is the same as from the profile itself."""
    return (f"{RESOLVED} from {source}: the whole params it stands for.\n"
            "# Resolve a profile over the default params (`git checkout params.yaml` restores it), not over this.\n"
            + yaml.safe_dump(params, sort_keys=False, allow_unicode=True))


def write_resolved(params: dict[str, Any], source: str | Path, out: str | Path) -> None:
    """`transferability --params <profile> resolve --out <file>`: ``params`` as ``load`` gave them."""
    if Path(out).resolve() == Path(source).resolve():
        raise UserError(f"resolve --out {out} would overwrite the file it reads; write another file")
    atomic.write_text(out, resolved_text(params, source))
