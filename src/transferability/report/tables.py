"""The report's tables: accuracy per variant and n, the per-n decomposition, the FNE table and
``reports/metrics.json``, as Markdown and HTML.

Accuracy is the study's metric (mean of the k best evaluations, ``top1_kbest``) unless a column
says ``final``. Where a variant has several seeds, tables give the mean.
"""

from __future__ import annotations

import html
from collections import defaultdict
from statistics import mean, stdev
from typing import Any

from transferability.study.stats import t_interval
from transferability.training import health


def summarise(rows: list[dict[str, Any]]) -> dict[tuple, dict[str, Any]]:
    """(split, family, n) -> mean, sd, 95% interval and count of the study's metric over seeds, and final top-1."""
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[(r["split"], r["family"], r["n"])].append(r)
    out = {}
    for key, rs in groups.items():
        e = t_interval([r["top1_kbest"] for r in rs])
        out[key] = {"top1_kbest": e.mean, "top1_kbest_sd": e.std, "ci95": (e.low, e.high),
                    "top1": mean(r["top1"] for r in rs), "runs": len(rs), "target": rs[0]["target"],
                    "not_learned": sum(r.get("learned") is False for r in rs)}
    return out


def decomposition(summary: dict[tuple, dict[str, Any]]) -> list[dict[str, Any]]:
    """Per split, target half and n: the study's three effects, from mean accuracies.

    co-adaptation loss = baseT - TnT; specificity = TnT - SnT; fine-tuning gain = SnT+ - baseT.
    """
    out = []
    for split, target in sorted({(k[0], v["target"]) for k, v in summary.items()}):
        other = "A" if target == "B" else "B"
        base = summary.get((split, f"base{target}", 0))
        for n in sorted({k[2] for k in summary if k[2] > 0}):
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
    """Rows: split and variant; columns: n = 0 (bases) and every n trained. A mean that includes
    networks that did not learn (health.py) says how many of its runs: "0.3600 (3 of 5 did not learn)"."""
    ns = sorted({0} | {k[2] for k in summary})
    header = ["split", "variant"] + [f"n={n}" for n in ns]
    table = []
    keys = sorted({(k[0], k[1]) for k in summary}, key=lambda k: (k[0], not k[1].startswith("base"), k[1]))
    for split, fam in keys:
        row = [split, fam] + [_cell(summary.get((split, fam, n))) for n in ns]
        table.append(row)
    return header, table


def _cell(s: dict[str, Any] | None) -> float | str | None:
    if s is None or not s.get("not_learned"):
        return s and s["top1_kbest"]
    return f"{_fmt(s['top1_kbest'])} ({s['not_learned']} of {s['runs']} did not learn)"


def metrics_json(summary: dict[tuple, dict[str, Any]], decomp: list[dict[str, Any]],
                 rows: list[dict[str, Any]], params: dict[str, Any]) -> dict[str, Any]:
    """Nested numbers for `dvc metrics diff`: split -> variant -> n -> accuracy, plus provenance."""
    out: dict[str, Any] = {}
    for (split, fam, n), s in sorted(summary.items()):
        slug = fam.replace("+", "-ft")
        entry = {"top1_kbest": round(s["top1_kbest"], 6), "top1": round(s["top1"], 6), "replicates": s["runs"]}
        if s.get("not_learned"):
            entry["not_learned"] = s["not_learned"]
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
    unlearned = sorted(f"{r['split']}/seed{r['seed']}/{r['slug']}" for r in rows if r.get("learned") is False)
    out["training_health"] = {
        "networks": len(rows), "not_learned": len(unlearned), "not_learned_networks": unlearned,
        "rule": f"learned: false where every evaluation window's mean training loss stays above "
                f"ln C - {health.LOSS_TOLERANCE} and no evaluation's top-1 beats 1/C (one-sided binomial on "
                f"the test images, alpha {health.ALPHA} over the run's evaluations)"}
    out["provenance"] = {"seeds": params["experiment"]["seeds"], "runs": len(rows),
                         "run_seeds": {f"{r['split']}/seed{r['seed']}/{r['slug']}": r["run_seed"]
                                       for r in rows},
                         "versions": rows[0]["versions"],
                         "params": {k: params[k] for k in ("dataset", "model", "train", "evaluate")}}
    return out


