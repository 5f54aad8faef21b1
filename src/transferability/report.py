"""The report: every run in a table, the study's Figure 2 for the user's data, the per-n
decomposition of the effects, learning curves, ``reports/metrics.json`` and an HTML page.

Accuracy is the study's metric (mean of the k best evaluations, ``top1_kbest``) unless a column
says ``final``. Where a variant has several seeds, tables give the mean and the plot every run.
"""

from __future__ import annotations

import csv
import html
import io
import json
from collections import defaultdict
from pathlib import Path
from statistics import mean, stdev
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from . import runs  # noqa: E402
from .atomic import atomic_path, write_json, write_text  # noqa: E402
from .errors import UserError  # noqa: E402
from .findings import as_json, evaluate, replicates, table  # noqa: E402
from .prediction import load_comparison  # noqa: E402
from .runs import role  # noqa: E402
from .stats import t_interval  # noqa: E402
from .training import versions  # noqa: E402

STUDY_RESULTS = Path(__file__).with_name("reference") / "results.csv"
# Colours and markers as close to the study's Figure 2 as a legend allows.
STYLE = {"TnT": ("#1f4e9c", "o", "-"), "TnT+": ("#6fa8dc", "o", "--"), "SnT": ("#c0392b", "D", "-"),
         "SnT+": ("#f1948a", "D", "--"), "RnT": ("#7f7f7f", "s", ":")}
COLUMNS = ["split", "seed", "network", "family", "n", "source", "target", "top1_kbest", "top1",
           "wall_time_s", "images_per_s"]


def collect(params: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for net in runs.networks(params):
        f = net.file("metrics.json")
        if not f.exists():
            raise UserError(f"{f} is missing: train {net.name} ({net.split}, seed {net.seed}) first")
        m = json.loads(f.read_text())
        t = json.loads(net.file("timing.json").read_text())
        rows.append({"split": net.split, "seed": net.seed, "network": net.name, "family": net.family,
                     "n": net.n or 0, "source": net.source or "", "target": net.target,
                     "top1_kbest": m["top1_kbest"], "top1": m["top1"],
                     "wall_time_s": t["wall_time_s"], "images_per_s": t["images_per_s"],
                     "slug": net.slug, "evals": m["evals"], "versions": m["versions"],
                     "run_seed": m["run_seed"]})
    return rows


def summarise(rows: list[dict[str, Any]]) -> dict[tuple, dict[str, Any]]:
    """(split, family, n) -> mean, sd, 95% interval and count of the study's metric over seeds, and final top-1."""
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[(r["split"], r["family"], r["n"])].append(r)
    out = {}
    for key, rs in groups.items():
        e = t_interval([r["top1_kbest"] for r in rs])
        out[key] = {"top1_kbest": e.mean, "top1_kbest_sd": e.std, "ci95": (e.low, e.high),
                    "top1": mean(r["top1"] for r in rs), "runs": len(rs), "target": rs[0]["target"]}
    return out


def decomposition(summary: dict[tuple, dict[str, Any]]) -> list[dict[str, Any]]:
    """Per split, target half and n: the study's three effects, from mean accuracies.

    co-adaptation loss = baseT - TnT; specificity = TnT - SnT; fine-tuning gain = SnT+ - baseT.
    """
    out = []
    for split, target in sorted({(k[0], v["target"]) for k, v in summary.items()}):
        other = "A" if target == "B" else "B"
        base = summary.get((split, f"base{target}", 0))
        for n in range(1, 8):
            self_, other_, other_ft = (_acc(summary, split, family, n) for family in
                                       (f"{target}n{target}", f"{other}n{target}", f"{other}n{target}+"))
            if self_ is None and other_ is None and other_ft is None:
                continue
            b = base["top1_kbest"] if base else None
            out.append({"split": split, "target": target, "n": n,
                        "coadaptation_loss": _diff(b, self_), "specificity": _diff(self_, other_),
                        "finetune_gain": _diff(other_ft, b)})
    return out


def _acc(summary: dict[tuple, dict[str, Any]], split: str, family: str, n: int) -> float | None:
    s = summary.get((split, family, n))
    return s["top1_kbest"] if s else None


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def study_points(split: str, target: str) -> list[dict[str, Any]]:
    """The study's published networks for this split and target half, in our roles."""
    names = {"base": "base", "selffer": "TnT", "selffer_ft": "TnT+", "transfer": "SnT",
             "transfer_ft": "SnT+"}
    out = []
    with open(STUDY_RESULTS) as f:
        for r in csv.DictReader(f):
            if r["split"] == split and r["target"] == target and r["variant"] in names:
                out.append({"role": names[r["variant"]], "n": int(r["n"]), "top1": float(r["top1"])})
    return out


BAND_RUNS = 3  # a t interval from two runs (t = 12.7) says little: per-split bands need three seeds


def figure2(rows: list[dict[str, Any]], summary: dict[tuple, dict[str, Any]], overlay: bool,
            path: Path, pooled_splits: list[str] | None = None) -> None:
    """Top-1 against n. First, when several replicates exist, every role pooled over the random
    splits and both directions as the study pooled them (relative to each replicate's base, with
    95% bands); then a panel per split and target half: a point per run, a mean line per variant."""
    panels = sorted({(r["split"], r["target"]) for r in rows if not r["family"].startswith("base")})
    reps = [rep for (split, _, _), rep in replicates(rows).items() if split in (pooled_splits or [])]
    pooled = len(reps) > 1
    cols = min(4, len(panels) + pooled)
    nrows = -(-(len(panels) + pooled) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(6.5 * cols, 5 * nrows), squeeze=False)
    for ax in axes.flat[len(panels) + pooled :]:
        ax.set_visible(False)
    if pooled:
        _pooled_panel(axes.flat[0], rows, pooled_splits or [], len(reps))
    for ax, (split, target) in zip(axes.flat[pooled:], panels, strict=False):
        base = [r["top1_kbest"] for r in rows if r["split"] == split and r["family"] == f"base{target}"]
        lo, hi = summary[(split, f"base{target}", 0)]["ci95"]
        if len(base) >= BAND_RUNS:
            ax.axhspan(lo, hi, color="#dddddd", zorder=0)
        ax.axhline(mean(base), color="#555555", lw=1, zorder=1,
                   label=f"base{target} (mean of {len(base)})")
        ax.scatter([0] * len(base), base, color="white", edgecolor="black", zorder=3, s=36)
        families = sorted({r["family"] for r in rows if r["split"] == split and r["target"] == target
                           and not r["family"].startswith("base")}, key=lambda f: list(STYLE).index(role(f, target)))
        for fam in families:
            color, marker, ls = STYLE[role(fam, target)]
            pts = [r for r in rows if r["split"] == split and r["family"] == fam]
            jitter = {"TnT": -0.12, "TnT+": -0.04, "SnT": 0.04, "SnT+": 0.12, "RnT": 0.0}[role(fam, target)]
            ax.scatter([r["n"] + jitter for r in pts], [r["top1_kbest"] for r in pts], color=color,
                       marker=marker, s=28, alpha=0.8, zorder=3)
            ns = sorted({r["n"] for r in pts})
            ax.plot(ns, [summary[(split, fam, n)]["top1_kbest"] for n in ns], color=color, ls=ls, lw=1.8,
                    label=fam, zorder=2)
            if min(summary[(split, fam, n)]["runs"] for n in ns) >= BAND_RUNS:
                _band(ax, [summary[(split, fam, n)]["ci95"] for n in ns], ns, color)
        if overlay:
            study = study_points(split, target)
            for rl in ("TnT", "TnT+", "SnT", "SnT+"):
                pts = [p for p in study if p["role"] == rl]
                if pts:
                    ax.scatter([p["n"] for p in pts], [p["top1"] for p in pts], facecolor="none",
                               edgecolor=STYLE[rl][0], marker=STYLE[rl][1], s=60, zorder=4,
                               label=f"study {rl.replace('T', target, 2).replace('S', _other(target))}")
        ax.set_xlim(-0.4, 7.4)
        ax.set_xticks(range(8))
        ax.set_xlabel("n: layers copied from the source network")
        ax.set_ylabel(f"top-1 on half {target} (mean of k best evaluations)")
        ax.set_title(f"{split}: target half {target}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower left", ncol=2)
    fig.suptitle("How transferable are features? (Yosinski et al. 2014, Figure 2, on this data)")
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def _pooled_panel(ax: Any, rows: list[dict[str, Any]], splits: list[str], count: int) -> None:
    """Every role's top-1 minus its replicate's base, mean and 95% interval over the replicates."""
    ax.axhline(0, color="#555555", lw=1, label="base (each replicate's own)")
    for rl, (color, marker, ls) in STYLE.items():
        ns, drops, cis = _role_curve(rows, splits, rl, True)
        if ns:
            ax.plot(ns, [-d for d in drops], color=color, marker=marker, ls=ls, lw=1.8, label=rl)
            _band(ax, [(None, None) if lo is None else (-hi, -lo) for lo, hi in cis], ns, color)
    ax.set_xlim(-0.4, 7.4)
    ax.set_xticks(range(8))
    ax.set_xlabel("n: layers copied from the source network")
    ax.set_ylabel("top-1 minus the base's (mean, 95% interval)")
    ax.set_title(f"pooled: {', '.join(splits)}, both halves as targets ({count} replicates)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left", ncol=2)


def _band(ax: Any, intervals: list[tuple[float | None, float | None]], ns: list[int], color: str) -> None:
    """The 95% interval over seeds as a shaded band (nothing with one seed)."""
    if intervals and all(lo is not None for lo, _ in intervals):
        ax.fill_between(ns, [lo for lo, _ in intervals], [hi for _, hi in intervals], color=color, alpha=0.15,
                        lw=0, zorder=1)


def _role_curve(rows: list[dict[str, Any]], splits: list[str], want: str,
                base_relative: bool) -> tuple[list[int], list[float], list[tuple]]:
    """Mean and 95% interval over replicates (split, seed, target) of one role per n, or of base - role."""
    reps = replicates(rows)
    ns, means, cis = [], [], []
    for n in range(1, 8):
        vals = [rep[("base", 0)] - rep[(want, n)] if base_relative else rep[(want, n)]
                for (split, _, _), rep in reps.items() if split in splits and (want, n) in rep
                and ("base", 0) in rep]
        if vals:
            e = t_interval(vals)
            ns.append(n)
            means.append(e.mean)
            cis.append((e.low, e.high))
    return ns, means, cis


def findings_figures(rows: list[dict[str, Any]], random_splits: list[str], dissimilar_splits: list[str],
                     out: Path) -> None:
    """dissimilar.png: SnT's drop below the base, random against dissimilar splits; random_filters.png: RnT
    against SnT. Lines are means over replicates, bands their 95% intervals."""
    panels = {"dissimilar.png": ("Transfer from a dissimilar half", "drop below the base: base - SnT (AnB)",
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
        fig.tight_layout()
        with atomic_path(out / name, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=100, format="png")
        plt.close(fig)


def _other(half: str) -> str:
    return "A" if half == "B" else "B"


def curves_figure(rows: list[dict[str, Any]], path: Path) -> None:
    """Learning curves: test top-1 during training, one panel per variant, a line per n."""
    keys = sorted({(r["split"], r["family"]) for r in rows}, key=lambda k: (k[0], not k[1].startswith("base"), k[1]))
    cols = min(4, len(keys))
    nrows = -(-len(keys) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4 * cols, 3 * nrows), squeeze=False, sharey=True)
    cmap = plt.get_cmap("viridis")
    for ax, (split, fam) in zip(axes.flat, keys, strict=False):
        for r in (r for r in rows if r["split"] == split and r["family"] == fam):
            ax.plot([e["epoch"] for e in r["evals"]], [e["top1"] for e in r["evals"]],
                    color=cmap(r["n"] / 7), lw=1, label=r["network"] if r["seed"] == rows[0]["seed"] else None)
        ax.set_title(f"{split}: {fam}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, ncol=2)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.supxlabel("epoch")
    fig.supylabel("test top-1")
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)


def collect_embeddings(params: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for job in runs.feature_jobs(params):
        f = job.embed_file
        if not f.exists():
            raise UserError(f"{f} is missing: run `transferability embed` for {job.name} on {job.target} first")
        out.append(json.loads(f.read_text()))
    return out


def sizes(embedding: dict[str, Any]) -> list[str]:
    """Training-size keys, smallest first and 'all' last."""
    return sorted(embedding["results"], key=lambda k: float("inf") if k == "all" else int(k.split("_")[0]))


def fne_table(embeds: list[dict[str, Any]], baselines: list[str]) -> tuple[list[str], list[list[Any]]]:
    """The FNE paper's table: rows fc6, fc7, full network; a column per extractor, target and training
    size. Over several replicates (splits, seeds) a cell is their mean ± std; from one, the mean ± std
    over its own random training splits (digits)."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for e in embeds:
        for size in sizes(e):
            groups[(e["network"], e["target"], size)].append(e["results"][size])
    header = ["features"] + [f"{net} -> {target} ({size.replace('_', ' ')})" for net, target, size in groups]
    table = []
    for method, label in [(b, b) for b in baselines] + [("full_network", "full network (FNE)")]:
        row: list[Any] = [label]
        for results in groups.values():
            rs = [r[method] for r in results]
            avg, std = (mean(r["mean"] for r in rs), stdev(r["mean"] for r in rs)) if len(rs) > 1 else \
                (rs[0]["mean"], rs[0]["std"] if rs[0]["runs"] > 1 else None)
            row.append(f"{avg:.4f}" + (f" ± {std:.4f}" if std is not None else ""))
        table.append(row)
    return header, table


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
        ax.set_xticks(range(1, 8), [f"{k}" for k in range(1, 8)])
        ax.set_xlabel("layer k (probe) or n (layers copied)")
        ax.set_ylabel("top-1")
        ax.set_title("Generality from features alone: a linear probe per layer")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return ""
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def markdown(header: list[str], table: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in table]
    return "\n".join(lines) + "\n"


def html_table(header: list[str], table: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row) + "</tr>" for row in table)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def variant_table(summary: dict[tuple, dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """Rows: split and variant; columns: n = 0 (bases) and 1..7."""
    header = ["split", "variant"] + [f"n={n}" for n in range(8)]
    table = []
    keys = sorted({(k[0], k[1]) for k in summary}, key=lambda k: (k[0], not k[1].startswith("base"), k[1]))
    for split, fam in keys:
        row = [split, fam] + [summary.get((split, fam, n), {}).get("top1_kbest") for n in range(8)]
        table.append(row)
    return header, table


def metrics_json(summary: dict[tuple, dict[str, Any]], decomp: list[dict[str, Any]],
                 rows: list[dict[str, Any]], params: dict[str, Any]) -> dict[str, Any]:
    """Nested numbers for `dvc metrics diff`: split -> variant -> n -> accuracy, plus provenance."""
    out: dict[str, Any] = {}
    for (split, fam, n), s in sorted(summary.items()):
        slug = fam.replace("+", "-ft")
        entry = {"top1_kbest": round(s["top1_kbest"], 6), "top1": round(s["top1"], 6), "replicates": s["runs"]}
        if s["runs"] > 1:
            entry.update(std=round(s["top1_kbest_sd"], 6), ci95_low=round(s["ci95"][0], 6),
                         ci95_high=round(s["ci95"][1], 6))
        if fam.startswith("base"):
            out.setdefault(split, {})[slug] = entry
        else:
            out.setdefault(split, {}).setdefault(slug, {})[f"n{n}"] = entry
    for d in decomp:
        out[d["split"]].setdefault(f"effects_{d['target']}", {})[f"n{d['n']}"] = {
            k: round(d[k], 6) for k in ("coadaptation_loss", "specificity", "finetune_gain") if d[k] is not None}
    out["provenance"] = {"seeds": params["experiment"]["seeds"], "runs": len(rows),
                         "run_seeds": {f"{r['split']}/seed{r['seed']}/{r['slug']}": r["run_seed"]
                                       for r in rows},
                         "versions": rows[0]["versions"],
                         "params": {k: params[k] for k in ("dataset", "model", "train", "evaluate")}}
    return out


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Transferability report</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}}
table{{border-collapse:collapse;font-size:13px;margin:0.5em 0 1.5em}}
td,th{{border:1px solid #ccc;padding:3px 7px;text-align:right}}
th{{background:#f3f3f3}}img{{max-width:100%}}code,pre{{background:#f6f6f6}}pre{{padding:0.6em;overflow:auto;font-size:12px}}</style>
</head><body>
<h1>How transferable are features in this network?</h1>
<p>{intro}</p>
<h2>Figure 2: top-1 on the target half against the number of layers copied</h2>
<img src="figure2.png" alt="Figure 2: top-1 against n for every variant">
<p>First panel (with several replicates): every role minus its replicate's base, the mean over the
random splits, seeds and directions with its 95% band. Then per split and target half: points are single
networks, lines the mean of each variant over seeds, the grey line the base network trained on the
target half; bands (95%) where there are at least 3 seeds. TnT (BnB): layers from the base of the same half,
frozen; + : all layers fine-tuned; SnT (AnB): layers from the other half's base; RnT (RnB): random frozen filters.</p>
<h2>The study's findings on this data</h2>
<p>Each effect is computed per replicate (split, seed and target half; random splits and both directions pooled),
then averaged; the interval is Student's t at 95% over replicates (Welch's for the dissimilar-split comparison).
Verdict: <em>holds</em> when the whole interval lies on the side the study claims, <em>does not hold</em> when it
lies on the other side, <em>inconclusive</em> otherwise (or with a single replicate).</p>
{findings}
<img src="dissimilar.png" alt="Drop of transfer below the base, random against dissimilar splits">
<img src="random_filters.png" alt="Random frozen filters against transferred filters">
<h2>Accuracy per variant and n</h2>
{variants}
<h2>Decomposition per n</h2>
<p>co-adaptation loss = baseB &minus; BnB; specificity = BnB &minus; AnB; fine-tuning gain = AnB+ &minus; baseB
(top-1 points as fractions; B stands for the target half).</p>
{decomposition}
<h2>Off-the-shelf features and the Full-Network Embedding</h2>
<p>Trained networks used as fixed feature extractors: single layers (L2-normalised) against every layer at once
(standardised with training statistics, discretised to {{-1, 0, 1}}), each with a linear SVM. Mean ± std over
random training splits where there are several.</p>
{fne}
<img src="probes.png" alt="Linear probe accuracy per layer">
<h2>Transferability estimators against the measured fan-out</h2>
<p>Scores from features alone, per layer n of the source base, ranked against the measured top-1 of AnB
and AnB+ over n (mean over replicates, 95% interval); cost in core-seconds per replicate
(<code>estimators.md</code>).</p>
{estimators}
<img src="estimators.png" alt="Transferability estimators against n, their rank correlations and costs">
<h2>Learning curves</h2>
<img src="curves.png" alt="Test top-1 during training for every network">
<h2>All runs</h2>
{runs}
<h2>Provenance</h2>
<pre>{provenance}</pre>
</body></html>
"""


def build_report(params: dict[str, Any], out_dir: str | Path = runs.REPORT_DIR) -> None:
    out = Path(out_dir)
    rows = collect(params)
    summary = summarise(rows)
    decomp = decomposition(summary)
    run_table = [[r[c] for c in COLUMNS] for r in rows]
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows([COLUMNS] + run_table)
    write_text(out / "runs.csv", buf.getvalue())
    write_text(out / "runs.md", markdown(COLUMNS, run_table))
    d_header = ["split", "target", "n", "coadaptation_loss", "specificity", "finetune_gain"]
    d_table = [[d[k] for k in d_header] for d in decomp]
    write_text(out / "decomposition.md", markdown(d_header, d_table))
    v_header, v_table = variant_table(summary)
    write_text(out / "variants.md", markdown(v_header, v_table))
    embeds = collect_embeddings(params)
    baselines = params.get("embed", {}).get("baselines", [])
    f_header, f_table = fne_table(embeds, baselines)
    write_text(out / "fne.md", markdown(f_header, f_table) if embeds else "No feature extraction configured.\n")
    probes_figure(embeds, summary, out / "probes.png")
    used = params["experiment"]["splits"]
    random_splits = [sp for sp in used if params["splits"][sp]["method"] == "random"]
    dissimilar_splits = params["experiment"]["dissimilar"]["splits"]
    found = evaluate(rows, random_splits or used, dissimilar_splits)
    fi_header, fi_table = table(found)
    write_text(out / "findings.md", markdown(fi_header, fi_table))
    findings_figures(rows, random_splits, dissimilar_splits, out)
    metrics = metrics_json(summary, decomp, rows, params)
    metrics["findings"] = as_json(found)
    for e in embeds:
        metrics[e["split"]].setdefault("fne", {})[f"{e['slug']}_on_{e['target']}"] = {
            size: {m: round(v["mean"], 6) for m, v in res.items()} for size, res in e["results"].items()}
    estimators = load_comparison(out)  # the `estimators` stage's output
    metrics["estimators"] = estimators["metrics"]
    write_json(out / "metrics.json", metrics)
    for r in rows:  # per-run learning curves for `dvc plots`
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=["epoch", "top1", "train_loss"], extrasaction="ignore",
                           lineterminator="\n")
        w.writeheader()
        w.writerows(r["evals"])
        write_text(Path(runs.REPORT_CURVES) / f"{r['split']}-seed{r['seed']}-{r['slug']}.csv", buf.getvalue())
    figure2(rows, summary, params.get("report", {}).get("overlay_study", False), out / "figure2.png", random_splits)
    curves_figure(rows, out / "curves.png")
    seeds = params["experiment"]["seeds"]
    intro = (f"{len(rows)} networks on {params['dataset']['name']} ({params['model']['arch']} model), "
             f"splits {', '.join(params['experiment']['splits'])}"
             + "".join(f" and the dissimilar {sp}" for sp in params["experiment"]["dissimilar"]["splits"])
             + f", seeds {seeds}. "
             "Accuracy is the study's metric: the mean of the "
             f"{params['evaluate']['k_best']} best of the test evaluations made during training.")
    provenance = json.dumps({"versions": versions(), "params": params}, indent=2)
    write_text(out / "index.html", PAGE.format(
        intro=html.escape(intro), variants=html_table(v_header, v_table), findings=html_table(fi_header, fi_table),
        decomposition=html_table(d_header, d_table), runs=html_table(COLUMNS, run_table),
        fne=html_table(f_header, f_table) if embeds else "<p>No feature extraction configured.</p>",
        estimators=html_table(estimators["table"]["header"], estimators["table"]["rows"]),
        provenance=html.escape(provenance)))
    print(f"report: {out / 'index.html'} ({len(rows)} runs)")
