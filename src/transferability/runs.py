"""Which networks the params ask for, what each one is called, and where it writes.

The study's notation (baseB, B3B, A3B+) is for people; file and stage names use a shell-,
wildcard- and DVC-safe form of it: the variant with ``-ft`` for '+' and n as its own path level
(``AnB-ft/n3``). Snakemake, DVC and the CLI all take their paths from the patterns below.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transferability.errors import UserError

PREPARED = "data/prepared/{dataset}"
SPLIT = "data/splits/{split}.json"
STUDY_LISTS = "data/splits/lists"  # `split --lists`: a split as the study's own list files
BASE_DIR = "data/runs/{split}/seed{seed}/{variant}"
TRANSFER_DIR = "data/runs/{split}/seed{seed}/{variant}/n{n}"
# A run's resumable state lives outside its folder, so a DAG that clears a stale run's outputs
# before re-running it (Snakemake, DVC) never deletes the checkpoint the run resumes from.
CHECKPOINTS = "data/checkpoints"
RUN_FILES = ("metrics.json", "timing.json", "curve.csv", "model.pt")
FEATURES_DIR = "data/features/{split}/seed{seed}/{network}/{target}"
FEATURE_FILES = ("features.npy", "logits.npy", "labels.npy", "is_train.npy", "index.json")
EMBED = "data/embed/{split}/seed{seed}/{network}/{target}.json"
REPORT_DIR = "reports"
REPORT_FILES = ("index.html", "figure2.png", "figure2-replicates.png", "curves.png", "probes.png", "metrics.json",
                "runs.csv", "runs.md", "variants.md", "decomposition.md", "fne.md", "findings.md", "dissimilar.png",
                "random_filters.png")
REPORT_CURVES = "reports/curves"  # one CSV per run, for `dvc plots`
ESTIMATES_DIR = "data/estimates/{split}/seed{seed}"  # one replicate's estimator scores, and their timing
ESTIMATE_FILES = ("scores.json", "timing.json")
ESTIMATOR_FILES = ("estimators.md", "estimators.png", "estimators.json", "estimator_metrics.json")  # under REPORT_DIR
OTHER_HALF = {"A": "B", "B": "A"}

BASE_RE = re.compile(r"^base(?P<tgt>[AB])$")
TRANSFER_RE = re.compile(r"^(?P<src>[ABR])n(?P<tgt>[AB])(?P<ft>-ft)?$")
TORCHVISION_PREFIX = "tv-"  # a torchvision model as feature extractor, e.g. tv-alexnet
SLUG_RE = re.compile(r"^(?P<src>[ABR])(?P<n>[1-9][0-9]*)(?P<tgt>[AB])(?P<ft>-ft)?$")
# Snakemake wildcard constraints, so a base's folder can never be mistaken for a transfer's.
WILDCARDS = {"variant_base": r"base[AB]", "variant_transfer": r"[ABR]n[AB](-ft)?", "n": r"[1-9][0-9]*",
             "seed": r"\d+", "split": r"[A-Za-z0-9_]+",
             "network": r"base[AB]|[ABR][1-9][0-9]*[AB](-ft)?|tv-alexnet",
    "target": r"[AB]|digits"}


@dataclass(frozen=True)
class Network:
    """One trained network: a base (n is None) or a transfer network copying n layers."""

    split: str
    seed: int
    variant: str
    n: int | None = None

    def __post_init__(self) -> None:
        if self.is_base:
            if self.n is not None:
                raise UserError(f"variant '{self.variant}' is a base network and takes no n")
        else:
            if not TRANSFER_RE.match(self.variant):
                raise UserError(
                    f"unknown variant '{self.variant}'; allowed: baseA, baseB, or XnY[-ft] with "
                    "X in A, B, R and Y in A, B (e.g. AnB-ft)"
                )
            if self.n is None or self.n < 1:  # the top is the architecture's (params.check, stages)
                raise UserError(f"variant '{self.variant}' needs n of 1 or more, got {self.n}")
            if self.variant.startswith("R") and self.variant.endswith("-ft"):
                raise UserError("RnX-ft is not a variant: random filters fine-tuned are a base")

    @property
    def is_base(self) -> bool:
        return bool(BASE_RE.match(self.variant))

    @property
    def target(self) -> str:
        m = BASE_RE.match(self.variant) or TRANSFER_RE.match(self.variant)
        return m["tgt"]

    @property
    def source(self) -> str | None:
        """The half whose base supplies layers 1..n ('R': random filters, None: a base)."""
        return None if self.is_base else self.variant[0]

    @property
    def fine_tune(self) -> bool:
        return self.variant.endswith("-ft")

    @property
    def frozen_layers(self) -> list[int]:
        return [] if self.is_base or self.fine_tune else list(range(1, self.n + 1))

    @property
    def slug(self) -> str:
        """File-safe study name: baseB, A3B, A3B-ft, R3B."""
        if self.is_base:
            return self.variant
        return f"{self.variant[0]}{self.n}{self.variant[2:]}"

    @property
    def name(self) -> str:
        """The study's notation: baseB, A3B, A3B+, R3B."""
        return self.slug.replace("-ft", "+")

    @property
    def family(self) -> str:
        """The variant in the study's notation, without n: BnB+, AnB, baseB."""
        return self.variant.replace("-ft", "+")

    @property
    def dir(self) -> Path:
        pattern = BASE_DIR if self.is_base else TRANSFER_DIR
        return Path(pattern.format(split=self.split, seed=self.seed, variant=self.variant, n=self.n))

    @property
    def checkpoint(self) -> Path:
        """data/checkpoints/<split>/seed<seed>/baseB.pt or .../AnB-ft/n3.pt"""
        return Path(CHECKPOINTS, *self.dir.parts[2:]).with_suffix(".pt")

    @property
    def source_base(self) -> Network | None:
        if self.source in ("A", "B"):
            return Network(self.split, self.seed, f"base{self.source}")
        return None

    def file(self, name: str) -> Path:
        return self.dir / name

    @classmethod
    def from_slug(cls, split: str, seed: int, slug: str) -> Network:
        """The inverse of ``slug``: 'baseA' or 'A3B-ft' back to a Network."""
        if BASE_RE.match(slug):
            return cls(split, seed, slug)
        m = SLUG_RE.match(slug)
        if not m:
            raise UserError(f"unknown network '{slug}'; use baseA, baseB or e.g. A3B, A3B-ft, B5B, R2B")
        return cls(split, seed, f"{m['src']}n{m['tgt']}{m['ft'] or ''}", int(m["n"]))



def role(family: str, target: str) -> str:
    """BnB -> TnT (self), AnB -> SnT (other half), RnB -> RnT, keeping '+'."""
    src = family[0]
    kind = "R" if src == "R" else ("T" if src == target else "S")
    return f"{kind}nT" + ("+" if family.endswith("+") else "")


def networks(params: dict[str, Any]) -> list[Network]:
    """Every network the experiment section asks for, bases first, in a stable order: the main
    splits with every variant, then the dissimilar-task control with its own seeds and (fewer) variants."""
    exp, dis = params["experiment"], params["experiment"]["dissimilar"]
    out = []
    for splits, seeds, variants in ((exp["splits"], exp["seeds"], exp["variants"]),
                                    (dis["splits"], dis["seeds"], dis["variants"])):
        for split in splits:
            for seed in seeds:
                out += [Network(split, seed, "baseA"), Network(split, seed, "baseB")]
                out += [Network(split, seed, v, n) for v in variants for n in exp["layers"]]
    return out


@dataclass(frozen=True)
class FeatureJob:
    """One feature dump and its embedding: a network (ours by file name, or tv-<arch>) on a target."""

    split: str
    seed: int
    network: str
    target: str

    @property
    def torchvision_arch(self) -> str | None:
        return self.network[len(TORCHVISION_PREFIX) :] if self.network.startswith(TORCHVISION_PREFIX) else None

    @property
    def trained(self) -> Network | None:
        """Our trained network, or None for a torchvision model."""
        return None if self.torchvision_arch else Network.from_slug(self.split, self.seed, self.network)

    @property
    def name(self) -> str:
        return self.trained.name if self.trained else self.network

    @property
    def dir(self) -> Path:
        return Path(FEATURES_DIR.format(split=self.split, seed=self.seed, network=self.network, target=self.target))

    @property
    def embed_file(self) -> Path:
        return Path(EMBED.format(split=self.split, seed=self.seed, network=self.network, target=self.target))


def feature_jobs(params: dict[str, Any]) -> list[FeatureJob]:
    """Every (network, target) whose features the params ask to dump and embed."""
    feats = params.get("features", {})
    exp = params["experiment"]
    return [FeatureJob(split, seed, net, target) for split in exp["splits"] for seed in exp["seeds"]
            for net in feats.get("networks", []) for target in feats.get("targets", [])]


def split_path(split: str) -> Path:
    return Path(SPLIT.format(split=split))


def prepared_path(params: dict[str, Any]) -> Path:
    return Path(PREPARED.format(dataset=params["dataset"]["name"]))
