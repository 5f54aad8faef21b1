"""The `estimators` stage (``compare``): the estimators' comparison in words, tables and a figure, what
prediction.py computes, for people.

Every estimator sits beside depth alone (score = -n), because on data where transfer falls with n a
score that merely falls with n ranks the layers well; the claims say, in those words, which estimators
beat depth (their gain's 95% interval over replicate units lies above 0) and which do not.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

from transferability import runs
from transferability.estimators.prediction import (
    CURVE_NAMES,
    CURVES,
    DEPTH,
    NAMES,
    ORDER,
    WHAT,
    WHOLE_NETWORK,
    best,
    costs,
    pooled,
    replicates,
)
from transferability.files.atomic import atomic_path, write_json, write_text
from transferability.report.tables import markdown as md_table


def _name(method: str) -> str:
    return NAMES.get(method, method)


def _ci(entry: dict[str, Any] | None, digits: int = 3) -> str:
    """Mean [95% interval], and how many records were undefined where any were."""
    if not entry:
        return ""
    if entry["mean"] is None:
        text = "undefined"
    else:
        text = f"{entry['mean']:+.{digits}f}"
        text += f" [{entry['ci95'][0]:+.{digits}f}, {entry['ci95'][1]:+.{digits}f}]" if entry["ci95"] else ""
    return text + (f" ({entry['dropped']} undefined)" if entry.get("dropped") else "")


def _units(s: dict[str, Any]) -> str:
    """Replicate units behind a row, and the records dropped as undefined (never hidden behind a maximum)."""
    cells = [v for c in CURVES if c in s for k, v in s[c].items() if k in ("kendall", "spearman")]
    if "score" in s:
        cells = [s["score"]]
    if not cells and "sources" in s:
        cells = [s["sources"]]
    if not cells:
        return "0"
    used, dropped = min(v["replicates"] for v in cells), max(v.get("dropped", 0) for v in cells)
    return f"{used}" + (f" ({dropped} record(s) undefined, dropped)" if dropped else "")


def _drop(d: dict[str, Any] | None) -> str:
    if not d:
        return ""
    return f"mean tau over n {d['mean_over_n']:+.2f}; > 0 at {d['positive_n']} of {d['defined_n']} n"


def _gain(entry: dict[str, Any]) -> str:
    g = entry.get("gain_over_depth")
    return f"{_ci(g)}: {g['verdict']}" if g else ""


def table(summary: dict[str, dict[str, Any]], cost: dict[str, float]) -> tuple[list[str], list[list[str]]]:
    fanout = sum(v for k, v in cost.items() if k.startswith("fan-out"))
    header = (["estimator", "what it scores"]
              + [h for c in CURVES for h in (f"Kendall tau vs {CURVE_NAMES[c]}", f"gain over depth, {CURVE_NAMES[c]}")]
              + ["(a) ranks the sources at each n", "(b) orders AnB(n) - base across replicates",
                 "replicate units", "core-s per replicate", "fan-out / estimator cost"])
    rows = []
    for method, s in summary.items():
        if method in WHOLE_NETWORK:
            cells = [f"one score per network: {_ci(s['score'])}", "", "", "", "", ""]
        elif method == DEPTH:
            cells = [x for c in CURVES for x in (_ci(s.get(c, {}).get("kendall")), "")]
            cells += ["cannot: every source has the same n", "cannot: the same n in every replicate"]
        elif method == ORDER:
            cells = ["", "", "", "", _ci(s["sources"]), "cannot: the same order in every replicate"]
        else:
            cells = [x for c in CURVES for x in (_ci(s.get(c, {}).get("kendall")), _gain(s.get(c, {})))]
            a = s.get("sources")
            cells += [f"{_ci(a)}; gain over the fixed order {_ci(a['gain_over_order'])}: "
                      f"{a['gain_over_order']['verdict']}" if a else "", _drop(s.get("drop"))]
        spent = cost.get(method, 0.0)
        ratio = f"{fanout / spent:,.0f}x" if spent > 0 and fanout else ""
        rows.append([_name(method), WHAT.get(method, ''), *cells, _units(s), f"{spent:.3g}", ratio])
    return header, rows


def claims(summary: dict[str, dict[str, Any]]) -> list[str]:
    """Which estimators beat depth and which do not, per measured curve, in those words; then the two
    comparisons depth cannot win."""
    out = []
    for curve in CURVES:
        depth = summary.get(DEPTH, {}).get(curve, {}).get("kendall")
        gains = {m: s[curve]["gain_over_depth"] for m, s in summary.items()
                 if m != DEPTH and curve in s and "gain_over_depth" in s[curve]}
        if not gains or not depth:
            continue
        beat = [_name(m) for m, g in gains.items() if g["verdict"] == "beats depth"]
        not_beat = [_name(m) for m, g in gains.items() if g["verdict"] != "beats depth"]
        text = (f"Against {CURVE_NAMES[curve]}, depth alone (score = -n) reaches Kendall tau {_ci(depth)}. "
                + (f"Beat depth: {', '.join(beat)}. " if beat else "No estimator beats depth. ")
                + (f"Do not beat depth: {', '.join(not_beat)}." if not_beat else "Every estimator beats depth."))
        if top := best(summary, curve):
            text += (f" Tracks {CURVE_NAMES[curve]} best among the estimators: {_name(top[0])}, Kendall tau "
                     f"{_ci(top[1])}, gain over depth {_ci(summary[top[0]][curve]['gain_over_depth'])}.")
        out.append(text)
    ranked = {m: s["sources"] for m, s in summary.items() if "sources" in s and m != ORDER}
    if ranked:
        order = summary.get(ORDER, {}).get("sources")
        srcs = next(iter(ranked.values()))["sources"]
        beat = [_name(m) for m, e in ranked.items() if e["gain_over_order"]["verdict"] == "beats the fixed order"]
        out.append(f"(a) Ranking the sources a target transfers from ({', '.join(srcs)}) at each n, where depth "
                   "cannot tell them apart: " + ", ".join(f"{_name(m)} {_ci(e)}" for m, e in ranked.items())
                   + (f"; the fixed order (own base, the other half's, random filters) {_ci(order)}" if order else "")
                   + (f". Beat the fixed order: {', '.join(beat)}." if beat else
                      ". No estimator beats the fixed order."))
    drops = {m: s["drop"] for m, s in summary.items() if "drop" in s}
    if drops:
        out.append("(b) Ordering the measured drop AnB(n) - base across replicates at each n, where depth is the same "
                   "in every replicate: " + ", ".join(f"{_name(m)} {_drop(d)}" for m, d in drops.items()) + ".")
    return out


def drop_table(summary: dict[str, dict[str, Any]], layers: list[int]) -> tuple[list[str], list[list[str]]] | None:
    """(b) per n: Kendall's tau across replicate units, and its p-value."""
    drops = {m: s["drop"] for m, s in summary.items() if "drop" in s}
    if not drops:
        return None
    header = ["estimator"] + [f"n = {n}" for n in layers]
    rows = [[_name(m)] + [("" if (e := d["by_n"].get(n, d["by_n"].get(str(n)))) is None or e["kendall"] is None
                           else f"{e['kendall']:+.2f} (p {e['p']:.2f})") for n in layers] for m, d in drops.items()]
    return header, rows


def markdown(reps: list[dict[str, Any]], summary: dict[str, dict[str, Any]], cost: dict[str, float],
             layers: list[int], header: list[str], rows: list[list[str]], said: list[str]) -> str:

    lines = ["# Transferability estimators against the measured fan-out, and against depth alone\n"]
    if not reps:
        return "\n".join(lines + ["No estimators configured (`estimators.methods` is empty).\n"])
    units = len({(r["split"], r["seed"]) for r in reps})
    lines += [f"Every score is computed on the source base's features of the target half's training images "
              f"({reps[0]['images']} per replicate), per n in {layers} where it reads a layer, and ranked against "
              "the measured top-1 of the networks that copy layers 1..n (Kendall's tau, within each replicate), "
              "beside depth alone (score = -n); an estimator's gain over depth is its tau minus depth's in the same "
              "replicate. "
              f"A replicate unit is one split and seed ({units}; its target halves, which share both bases, are "
              "averaged first, as in findings.py), the interval Student's t at 95% over units; an estimator "
              "**beats depth** where its gain's interval lies above 0. (a): at each n, the sources a target "
              "transfers from, ranked by each one's score on its layer n against their measured top-1 (Kendall), "
              "pooled over n and units. (b): at each n, across units, the source's score against the measured "
              f"AnB(n) - base (Kendall). Cost: CPU seconds of the estimator's arithmetic (compute.threads = "
              f"{reps[0]['threads']}), against wall seconds x threads of training the fan-out.\n",
              md_table(header, rows)]
    lines += [f"{text}\n" for text in said]
    if per_n := drop_table(summary, layers):
        lines += ["(b) per n: Kendall's tau across replicate units between the score and AnB(n) - base "
                  "(p: two-sided, exact).\n", md_table(*per_n)]
    fanout = sum(v for k, v in cost.items() if k.startswith("fan-out"))
    lines.append(f"All estimators together cost {sum(v for k, v in cost.items() if not k.startswith('fan-out')):.2f} "
                 f"core-s per replicate; training the fan-out they predict cost {fanout:.0f} core-s (" + ", ".join(
                     f"{k.removeprefix('fan-out ')} {v:.0f}" for k, v in cost.items() if k.startswith("fan-out"))
                 + ").\n")
    return "\n".join(lines)


def figure(reps: list[dict[str, Any]], summary: dict[str, dict[str, Any]], cost: dict[str, float],
           layers: list[int], path: Path) -> None:
    """Left: every per-layer score and the measured curves against n, each scaled to [0, 1] within its
    replicate, then averaged; middle: Kendall's tau with its 95% interval, depth alone's on top; right:
    what each costs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def scaled(v: list[float]) -> np.ndarray:
        a = np.asarray(v, dtype=np.float64)
        span = a.max() - a.min()
        return (a - a.min()) / span if span > 0 else np.full_like(a, 0.5)

    per_layer = [m for m in summary if m not in WHOLE_NETWORK and m not in (DEPTH, ORDER)]
    colors = dict(zip(per_layer, plt.get_cmap("tab10").colors, strict=False))
    colors[DEPTH] = "black"
    if not reps:
        fig, ax = plt.subplots(figsize=(7, 2))
        ax.text(0.5, 0.5, "no estimators configured (estimators.methods is empty)", ha="center")
        ax.axis("off")
        _save(fig, path)
        return
    fig, axes = plt.subplots(1, 3, figsize=(19, 5.2), gridspec_kw={"width_ratios": [1.3, 1, 1]})
    ax = axes[0]
    for curve, style in zip(CURVES, ("-", "--"), strict=True):
        curves = [scaled(r["measured"][curve]["top1_kbest"]) for r in reps if curve in r["measured"]]
        if curves:
            ax.plot(layers, np.mean(curves, axis=0), color="black", lw=3, ls=style,
                    label=f"measured {CURVE_NAMES[curve]}")
    ax.plot(layers, scaled([-n for n in layers]), color="#777777", ls=":", lw=2, label="depth alone (-n)")
    for m in per_layer:
        ax.plot(layers, np.mean([scaled(r["scores"][m]) for r in reps], axis=0), marker="o", color=colors[m],
                label=_name(m))
    ax.set_xlabel("n: layers of the source base (copied, for the measured curves)")
    ax.set_ylabel("scaled to [0, 1] within each replicate, mean")
    ax.set_title(f"Scores against n beside the measured top-1 ({len(reps)} replicates)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax = axes[1]
    rows = [DEPTH, *per_layer] if DEPTH in summary else per_layer
    for i, curve in enumerate(CURVES):
        for j, m in enumerate(rows):
            e = summary[m].get(curve, {}).get("kendall")
            if not e or e["mean"] is None:
                continue
            y = j + (i - 0.5) * 0.3
            err = None if not e["ci95"] else [[e["mean"] - e["ci95"][0]], [e["ci95"][1] - e["mean"]]]
            ax.errorbar(e["mean"], y, xerr=err, fmt="o" if i == 0 else "s", color=colors[m], capsize=3,
                        mfc=colors[m] if i == 0 else "white", label=CURVE_NAMES[curve] if j == 0 else None)
    ax.axvline(0, color="#555555", lw=1)
    ax.set_yticks(range(len(rows)), [_name(m) + (" (-n)" if m == DEPTH else "") for m in rows])
    ax.set_xlim(-1.05, 1.05)
    ax.set_xlabel("Kendall's tau with the measured top-1 over n (95% interval over replicate units)")
    ax.set_title("Does the score rank the layers as training does, better than depth?")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    ax = axes[2]
    names = list(cost)
    ax.barh(range(len(names)), [max(cost[k], 1e-6) for k in names],
            color=[colors.get(k, "#999999") if not k.startswith("fan-out") else "black" for k in names])
    ax.set_xscale("log")
    ax.set_yticks(range(len(names)), [NAMES.get(k, k.replace("-ft", "+")) for k in names])
    ax.set_xlabel("core-seconds per replicate (log scale)")
    ax.set_title("Cost: every n scored, against training the fan-out", fontsize=11)
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    _save(fig, path)


def _save(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def compare(params: dict[str, Any], out_dir: str | Path = runs.REPORT_DIR) -> Path:
    """The `estimators` stage: estimators.md (the table, depth beside every estimator, and which beat it),
    estimators.png, and estimators.json, whose ``metrics`` (rank correlations and scores: the same bits from
    the same runs) the report merges into metrics.json; the costs, which differ from run to run, stay out of it."""
    out = Path(out_dir)
    methods, layers = params["estimators"]["methods"], params["experiment"]["layers"]
    reps = replicates(params)
    summary = pooled(reps, methods) if reps else {}
    cost = costs(reps, methods) if reps else {}
    header, rows = table(summary, cost) if reps else ([], [])
    said = claims(summary) if reps else []
    write_text(out / "estimators.md", markdown(reps, summary, cost, layers, header, rows, said))
    figure(reps, summary, cost, layers, out / "estimators.png")
    dest = out / "estimators.json"
    write_json(dest, {"metrics": summary, "replicates": reps, "cost_core_s": cost,
                      "table": {"header": header, "rows": rows}, "claims": said})
    # the numbers alone, without the costs: what DVC records (dvc.yaml), the same bytes from the same runs
    write_json(out / "estimator_metrics.json", {"metrics": summary})
    units = len({(r["split"], r["seed"]) for r in reps})
    print(f"estimators: {len(reps)} records in {units} replicate units, {', '.join(methods) or 'none'} -> "
          f"{out / 'estimators.md'}", file=sys.stderr)
    return dest
