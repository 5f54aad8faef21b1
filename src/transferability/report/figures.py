"""The report's figures: the study's Figure 2 for the user's data (figure2.png: pooled over replicates,
with the study's own curve beside it, the page's front at its full width; figure2-replicates.png: per
split, as small multiples), the two control comparisons, learning curves and the per-layer probes.
Every figure is written atomically as PNG.
"""

from __future__ import annotations

from pathlib import Path
from statistics import mean
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from transferability.files.atomic import atomic_path  # noqa: E402
from transferability.networks.architecture import ALEXNET_UNITS  # noqa: E402
from transferability.report.tables import sizes  # noqa: E402
from transferability.runs import role  # noqa: E402
from transferability.study import published as study  # noqa: E402  (the study's own numbers)
from transferability.study.findings import over, role_minus_base, units, unlearned  # noqa: E402

# Colours and markers as close to the study's Figure 2 as a legend allows.
STYLE = {"TnT": ("#1f4e9c", "o", "-"), "TnT+": ("#6fa8dc", "o", "--"), "SnT": ("#c0392b", "D", "-"),
         "SnT+": ("#f1948a", "D", "--"), "RnT": ("#7f7f7f", "s", ":")}
BAND_RUNS = 3  # a t interval from two runs (t = 12.7) says little: per-split bands need three seeds


# The front figure (the pooled panel alone) is drawn as wide as the page's content (report.PAGE's body takes
# this width), so a 1280-px window shows it 1:1 and its legend and labels read at their point sizes.
FRONT_WIDTH_PX = 1200
FRONT_DPI = 100
TITLE = "How transferable are features? (Yosinski et al. 2014, Figure 2, on this data)"


def _n_axis(ax: Any, names: tuple[str, ...], fontsize: float | None = None) -> None:
    """n from 0 (the base) to L-1, each tick with the unit it copies last (conv3, layer2.1, blocks.5);
    ``fontsize``: the ticks' (default: 8 points, 6 where more than 9 ticks stand side by side)."""
    top = len(names) - 1
    ax.set_xlim(-0.4, top + 0.4)
    ax.set_xticks(range(top + 1), ["0\nbase"] + [f"{n}\n{names[n - 1]}" for n in range(1, top + 1)],
                  fontsize=fontsize or (8 if top <= 9 else 6), rotation=0 if top <= 9 else 90)
    ax.set_xlabel("n: units copied from the source network (the last one named)")


def figure2(rows: list[dict[str, Any]], splits: list[str], path: Path, names: tuple[str, ...] = ALEXNET_UNITS,
            alexnet: bool = True) -> None:
    """The page's front: the study's Figure 2 for this data, every role minus its replicate's base pooled
    over the units (split, seed) of ``splits`` and both directions as the study pooled them (95% bands),
    alone and at the page's width, its legend beside the axes. ``names``: the architecture's units;
    ``alexnet``: the study's own numbers beside ours (hollow markers)."""
    fig, ax = plt.subplots(figsize=(FRONT_WIDTH_PX / FRONT_DPI, 6.2))
    _pooled_panel(ax, rows, splits, len(units(rows, splits)), names, alexnet)
    fig.suptitle(TITLE, fontsize=14)
    _save(fig, path, FRONT_DPI)


def figure2_replicates(rows: list[dict[str, Any]], summary: dict[tuple, dict[str, Any]], overlay: bool,
                       path: Path, names: tuple[str, ...] = ALEXNET_UNITS, alexnet: bool = True) -> None:
    """Small multiples below the front: a panel per split and target half, a point per run and a mean
    line per variant; ``overlay`` (AlexNet only): the study's points for that split."""
    panels = sorted({(r["split"], r["target"]) for r in rows if not r["family"].startswith("base")})
    cols = max(1, min(4, len(panels)))
    nrows = max(1, -(-len(panels) // cols))
    fig, axes = plt.subplots(nrows, cols, figsize=(6.5 * cols, 5 * nrows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, (split, target) in zip(axes.flat, panels, strict=False):
        _split_panel(ax, rows, summary, split, target, overlay and alexnet, names)
    if not panels:
        axes.flat[0].set_visible(True)
        axes.flat[0].axis("off")
        axes.flat[0].text(0.5, 0.5, "no transfer networks in params (experiment.variants)", ha="center")
    fig.suptitle(f"{TITLE}: per split and target half")
    _save(fig, path, 110)


def _save(fig: Any, path: Path, dpi: int) -> None:
    """Lay the figure out, write it as PNG atomically, free it."""
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    plt.close(fig)


def _split_panel(ax: Any, rows: list[dict[str, Any]], summary: dict[tuple, dict[str, Any]], split: str,
                 target: str, overlay: bool, names: tuple[str, ...]) -> None:
    """One split and target half: a point per run (ringed where it did not learn), a mean line per
    variant, the base; ``overlay``: the study's own points."""
    bases = [r for r in rows if r["split"] == split and r["family"] == f"base{target}"]
    base = [r["top1_kbest"] for r in bases]
    lo, hi = summary[(split, f"base{target}", 0)]["ci95"]
    if len(base) >= BAND_RUNS:
        ax.axhspan(lo, hi, color="#dddddd", zorder=0)
    ax.axhline(mean(base), color="#555555", lw=1, zorder=1,
               label=f"base{target} (mean of {len(base)})")
    ax.scatter([0] * len(base), base, color="white", edgecolor="black", zorder=3, s=36)
    _mark_unlearned(ax, [(0, r["top1_kbest"]) for r in bases if r.get("learned") is False])
    families = sorted({r["family"] for r in rows if r["split"] == split and r["target"] == target
                       and not r["family"].startswith("base")}, key=lambda f: list(STYLE).index(role(f, target)))
    for fam in families:
        color, marker, ls = STYLE[role(fam, target)]
        pts = [r for r in rows if r["split"] == split and r["family"] == fam]
        jitter = {"TnT": -0.12, "TnT+": -0.04, "SnT": 0.04, "SnT+": 0.12, "RnT": 0.0}[role(fam, target)]
        ax.scatter([r["n"] + jitter for r in pts], [r["top1_kbest"] for r in pts], color=color,
                   marker=marker, s=28, alpha=0.8, zorder=3)
        _mark_unlearned(ax, [(r["n"] + jitter, r["top1_kbest"]) for r in pts if r.get("learned") is False])
        ns = sorted({r["n"] for r in pts})
        ax.plot(ns, [summary[(split, fam, n)]["top1_kbest"] for n in ns], color=color, ls=ls, lw=1.8,
                label=fam, zorder=2)
        if min(summary[(split, fam, n)]["runs"] for n in ns) >= BAND_RUNS:
            _band(ax, [summary[(split, fam, n)]["ci95"] for n in ns], ns, color)
    if overlay:
        published = study.points(split, target)
        for rl in ("TnT", "TnT+", "SnT", "SnT+"):
            pts = [p for p in published if p["role"] == rl]
            if pts:
                ax.scatter([p["n"] for p in pts], [p["top1"] for p in pts], facecolor="none",
                           edgecolor=STYLE[rl][0], marker=STYLE[rl][1], s=60, zorder=4,
                           label=f"study {rl.replace('T', target, 2).replace('S', _other(target))}")
    _n_axis(ax, names)
    ax.set_ylabel(f"top-1 on half {target} (mean of k best evaluations)")
    ax.set_title(f"{split}: target half {target}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left", ncol=2)


def _pooled_panel(ax: Any, rows: list[dict[str, Any]], splits: list[str], count: int,
                  names: tuple[str, ...] = ALEXNET_UNITS, alexnet: bool = True) -> None:
    """Every role's top-1 minus its replicate's base: mean and 95% interval over the independent units
    (split, seed), with the study's own curve (ImageNet, role mean minus the mean half base) beside it."""
    ax.axhline(0, color="#555555", lw=1, label="base (each replicate's own)")
    ref = study.curves()
    for rl, (color, marker, ls) in STYLE.items():
        ns, means, cis = _role_curve(rows, splits, rl, True)
        if ns:
            ax.plot(ns, means, color=color, marker=marker, ls=ls, lw=1.8, label=rl)
            _band(ax, cis, ns, color)
            _mark_unlearned(ax, [(n, m) for n, m in zip(ns, means, strict=True)
                                 if unlearned(rows, splits, ("base", rl), (n,))], "a mean that includes them")
        if rl != "RnT" and alexnet:  # the study's random filters fall 50 points: off this scale
            ax.scatter(list(ref[rl]), list(ref[rl].values()), facecolor="none", edgecolor=color, marker=marker,
                       s=60, zorder=4, label=f"{rl}, the study")
    _n_axis(ax, names, 11 if len(names) <= 10 else 9)
    ax.set_ylabel("top-1 minus the base's (mean, 95% interval)", fontsize=12)
    targets = {r["target"] for r in rows if r["split"] in splits and r["n"] > 0}  # a source base is no target
    halves = "both halves as targets, " if len(targets) > 1 else ""
    ax.set_title(f"pooled: {', '.join(splits)}, {halves}{count} replicate{'s' * (count != 1)}"
                 + (" (hollow: the study)" if alexnet else ""), fontsize=12)
    ax.xaxis.label.set_fontsize(12)
    ax.tick_params(axis="y", labelsize=11)
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()  # ours, then the study's, then the ring
    order = sorted(range(len(labels)), key=lambda i: (labels[i].startswith("did not"), ", the study" in labels[i]))
    ax.legend([handles[i] for i in order], [labels[i] for i in order], fontsize=11, loc="upper left",
              bbox_to_anchor=(1.01, 1), borderaxespad=0)  # beside the axes: it covers no point


def _mark_unlearned(ax: Any, points: list[tuple[float, float]], what: str = "") -> None:
    """Ring the points of networks that did not learn (health.py: loss at ln C, top-1 at chance), with
    one legend entry per panel."""
    if not points:
        return
    label = "did not learn: loss at ln C, top-1 at chance" + (f"\n({what})" if what else "")
    drawn = any(h.get_label() == label for h in ax.collections)
    ax.scatter([x for x, _ in points], [y for _, y in points], facecolor="none", edgecolor="black", marker="o",
               s=110, lw=1.4, zorder=5, label="_" + label if drawn else label)  # "_": not in the legend again


def _band(ax: Any, intervals: list[tuple[float | None, float | None]], ns: list[int], color: str) -> None:
    """The 95% interval over seeds as a shaded band (nothing with one seed)."""
    if intervals and all(lo is not None for lo, _ in intervals):
        ax.fill_between(ns, [lo for lo, _ in intervals], [hi for _, hi in intervals], color=color, alpha=0.15,
                        lw=0, zorder=1)


def _role_curve(rows: list[dict[str, Any]], splits: list[str], want: str,
                base_relative: bool) -> tuple[list[int], list[float], list[tuple]]:
    """Mean and 95% interval over the units (split, seed) of one role per n, or of role - base."""
    us = units(rows, splits)
    ns, means, cis = [], [], []
    for n in sorted({r["n"] for r in rows if r["n"] > 0}):
        e = role_minus_base(us, want, n) if base_relative else over(us, (want,), (n,), lambda r, n=n: r[(want, n)])
        if e is not None:
            ns.append(n)
            means.append(e.mean)
            cis.append((e.low, e.high))
    return ns, means, cis


def findings_figures(rows: list[dict[str, Any]], random_splits: list[str], dissimilar_splits: list[str],
                     out: Path) -> None:
    """dissimilar.png: SnT minus the base, random against dissimilar splits; random_filters.png: RnT
    against SnT. Lines are means over units (split, seed), bands their 95% intervals."""
    panels = {"dissimilar.png": ("Transfer from a dissimilar half", "SnT (AnB) minus the base",
                                 [(random_splits, "SnT", True, "random splits", "#c0392b"),
                                  (dissimilar_splits, "SnT", True, "dissimilar split", "#8e44ad")]),
              "random_filters.png": ("Random frozen filters against transferred ones", "top-1 on the target half",
                                     [(random_splits, "SnT", False, "SnT (AnB): trained filters", "#c0392b"),
                                      (random_splits, "RnT", False, "RnT (RnB): random filters", "#7f7f7f")])}
    for name, (title, ylabel, lines) in panels.items():
        fig, ax = plt.subplots(figsize=(7, 4.5))
        drawn = 0
        for splits, want, rel, label, color in lines:
            ns, means, cis = _role_curve(rows, splits, want, rel)
            if ns:
                ax.plot(ns, means, marker="o", color=color, label=f"{label} ({', '.join(splits)})")
                _band(ax, cis, ns, color)
                drawn += 1
        if not drawn:
            ax.text(0.5, 0.5, "no runs for this comparison in params (experiment.splits, experiment.dissimilar)",
                    ha="center", transform=ax.transAxes)
        ax.set_xlabel("n: layers copied and frozen")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        if drawn:
            ax.legend(fontsize=8)
        _save(fig, out / name, 100)


def _other(half: str) -> str:
    return "A" if half == "B" else "B"


def curves_figure(rows: list[dict[str, Any]], path: Path) -> None:
    """Learning curves: test top-1 during training, one panel per variant, a line per n."""
    keys = sorted({(r["split"], r["family"]) for r in rows}, key=lambda k: (k[0], not k[1].startswith("base"), k[1]))
    cols = min(4, len(keys))
    nrows = -(-len(keys) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4 * cols, 3 * nrows), squeeze=False, sharey=True)
    cmap = plt.get_cmap("viridis")
    top = max(r["n"] for r in rows) or 1
    for ax, (split, fam) in zip(axes.flat, keys, strict=False):
        for r in (r for r in rows if r["split"] == split and r["family"] == fam):
            ax.plot([e["epoch"] for e in r["evals"]], [e["top1"] for e in r["evals"]],
                    color=cmap(r["n"] / top), lw=1, label=r["network"] if r["seed"] == rows[0]["seed"] else None)
        ax.set_title(f"{split}: {fam}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, ncol=2)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.supxlabel("epoch")
    fig.supylabel("test top-1")
    _save(fig, path, 90)



def probes_figure(embeds: list[dict[str, Any]], summary: dict[tuple, dict[str, Any]], path: Path) -> None:
    """Per-layer probe accuracy (largest training size) beside the AnB curve on the same target."""
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    if not embeds:
        ax.text(0.5, 0.5, "no feature extraction configured (features.networks is empty)", ha="center")
        ax.axis("off")
    for e in embeds:
        size = sizes(e)[-1]
        layers = [L["layer"] for L in e["layers"]]
        acc = [e["results"][size][f"probe_{L}"]["mean"] for L in layers]
        ax.plot(range(1, len(layers) + 1), acc, marker="o", label=f"probe: {e['network']} layer k -> {e['target']}")
        src, tgt = e["network"].replace("base", ""), e["target"]
        family = f"{src}n{tgt}"
        ns = sorted(k[2] for k in summary if k[0] == e["split"] and k[1] == family)
        if e["network"].startswith("base") and ns:
            ax.plot(ns, [summary[(e["split"], family, n)]["top1_kbest"] for n in ns], color="#c0392b", ls="--",
                    marker="D", label=f"{family}: layers 1..n copied and frozen, retrained on top")
    if embeds:
        _n_axis(ax, tuple(L["layer"] for L in embeds[0]["layers"]) + ("head",))
        ax.set_xlim(0.6, len(embeds[0]["layers"]) + 0.4)
        ax.set_xlabel("unit k (probe) or n (units copied)")
        ax.set_ylabel("top-1")
        ax.set_title("Generality from features alone: a linear probe per layer")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    _save(fig, path, 100)


