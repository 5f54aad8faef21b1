"""The report: every run in a table, the study's findings with their verdicts and controls, Figure 2
for the user's data, ``reports/metrics.json`` and the HTML page that holds them (tables.py makes the
tables, figures.py the figures; this module collects the runs and writes the page).
"""

from __future__ import annotations

import csv
import html
import io
import json
from pathlib import Path
from typing import Any

from transferability import runs
from transferability.errors import UserError
from transferability.estimators.prediction import load_comparison
from transferability.files.atomic import write_json, write_text
from transferability.networks.architecture import published, unit_names
from transferability.provenance import versions
from transferability.report.figures import (
    FRONT_WIDTH_PX,
    curves_figure,
    figure2,
    figure2_replicates,
    findings_figures,
    probes_figure,
)
from transferability.report.tables import (
    decomposition,
    fne_table,
    html_table,
    markdown,
    metrics_json,
    summarise,
    variant_table,
)
from transferability.study.findings import as_json, boost_table, budget_check, budget_table, evaluate, table
from transferability.training import health

COLUMNS = ["split", "seed", "network", "family", "n", "source", "target", "top1_kbest", "top1",
           "learned", "wall_time_s", "images_per_s"]


def collect(params: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for net in runs.networks(params):
        f = net.file("metrics.json")
        if not f.exists():
            raise UserError(f"{f} is missing: train {net.name} ({net.split}, seed {net.seed}) first")
        m = json.loads(f.read_text())
        if m.get("pretrained"):  # a weights file (model.pretrained): its own classes, no top-1 on ours
            continue
        # timings are not in DVC's record (dvc.yaml): a clone that pulled the runs has none, and says so
        t = json.loads(tf.read_text()) if (tf := net.file("timing.json")).exists() else {}
        rows.append({"split": net.split, "seed": net.seed, "network": net.name, "family": net.family,
                     "n": net.n or 0, "source": net.source or "", "target": net.target,
                     "top1_kbest": m["top1_kbest"], "top1": m["top1"],
                     "wall_time_s": t.get("wall_time_s"), "images_per_s": t.get("images_per_s"),
                     "slug": net.slug, "evals": m["evals"], "versions": m["versions"],
                     "run_seed": m["run_seed"], "learned": learned(m)})
    return rows


def _needed(path: Path) -> Path:
    if not path.exists():
        raise UserError(f"{path} is missing: run `transferability estimators` first")
    return path


def learned(m: dict[str, Any]) -> bool:
    """metrics.json's ``learned``; for a file written before training recorded it, the same test on
    the evaluations it holds (health.py)."""
    return m["learned"] if "learned" in m else health.learned(m["evals"], m["num_test"], len(m["classes"]))


def collect_embeddings(params: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for job in runs.feature_jobs(params):
        f = job.embed_file
        if not f.exists():
            raise UserError(f"{f} is missing: run `transferability embed` for {job.name} on {job.target} first")
        out.append(json.loads(f.read_text()))
    return out


# The body is as wide as the front figure (figures.FRONT_WIDTH_PX): the pooled Figure 2 shows 1:1.
PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Transferability report</title>
<style>body{{font-family:system-ui,sans-serif;max-width:{width}px;margin:2em auto;padding:0 1em;color:#222}}
table{{border-collapse:collapse;font-size:13px;margin:0.5em 0 1.5em}}
td,th{{border:1px solid #ccc;padding:3px 7px;text-align:right}}
th{{background:#f3f3f3}}img{{max-width:100%}}img.front{{width:100%}}code,pre{{background:#f6f6f6}}pre{{padding:0.6em;overflow:auto;font-size:12px}}
.warning{{background:#fff3cd;border:1px solid #e0b400;padding:0.6em 1em}}</style>
</head><body>
<h1>How transferable are features in this network?</h1>
<p>{intro}</p>
<p{health_class}>{health}</p>
<h2>Figure 2: top-1 on the target half against the number of layers copied</h2>
<img class="front" src="figure2.png"
 alt="Figure 2, pooled over replicates: every role's top-1 minus the base's against n">
<p>Every role minus its replicate's base, the mean over the independent units (split, seed) of the splits its title
names with their 95% band, and the study's own numbers where the model is AlexNet (hollow markers: ImageNet, each
role's mean minus the mean half base). TnT (BnB): layers from the base of the same half, frozen; + : all layers
fine-tuned; SnT (AnB): layers from the other half's base; RnT (RnB): random frozen filters. Ringed: a mean that
includes networks that did not learn.</p>
<img src="figure2-replicates.png" alt="Figure 2 per split and target half: a point per network, a line per variant">
<p>Per split and target half: points are single networks, lines the mean of each variant over seeds, the grey line
the base network trained on the target half, rings the networks that did not learn; bands (95%) where there are at
least 3 seeds.</p>
<h2>The study's findings on this data</h2>
<p>Each effect is computed per (split, seed, target half); the two target halves of one (split, seed) share both
bases, so they are averaged into one replicate, and the interval is Student's t at 95% over those independent
replicates (Welch's for the dissimilar-split comparison). Verdict, with a smallest effect of interest of
{margin} (report.margin): <em>holds</em> when the interval lies above zero in the claimed direction;
<em>does not hold</em> when it lies below {margin} (no effect worth the name, or the opposite one);
<em>inconclusive</em> when it straddles both (or with a single replicate).</p>
{findings}
<h3>Budget check: does a network retrained from its own base beat it?</h3>
{budget}
<h3>The fine-tuning boost beside the study's Table 1</h3>
<p>AnB+ against BnB+ is the study's control for training time: both fine-tune every layer on the same budget,
from the other half's features and from the target's own.</p>
{boost}
<img src="dissimilar.png" alt="Transfer minus the base, random against dissimilar splits">
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
<h2>Transferability estimators against the measured fan-out, and against depth alone</h2>
<p>Scores from features alone, per layer n of the source base, ranked against the measured top-1 of AnB
and AnB+ over n (mean over replicate units, 95% interval), beside depth alone (score = -n): an estimator
<b>beats depth</b> where its gain over depth (its Kendall tau minus depth's, per unit) has an interval above 0.
(a) and (b) ask what depth cannot answer: which source transfers better at the same n, and which replicate's
transfer drops more below its base. Cost in core-seconds per replicate (<code>estimators.md</code>).</p>
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


def budget_words(check: dict[str, Any] | None) -> str:
    """The budget check in one sentence: passed, or the warning."""
    if check is None:
        return "No BnB+ runs: the budget check needs BnB+ and the base."
    if check["passes"]:
        return (f"BnB+ - base lies within +-{check['margin']} at every n: the bases sit on their plateau, "
                "as in the study (within 0.9 points).")
    return "Warning: " + check["warning"]


def findings_markdown(found: list[dict[str, Any]], check: dict[str, Any] | None) -> str:
    """findings.md: the findings table, the budget check and the study's Table 1 side by side."""
    text = markdown(*table(found))
    text += f"\n**Budget check** (BnB+ - base, pooled over replicates): {budget_words(check)}\n\n"
    if check is not None:
        text += markdown(*budget_table(check))
    if boost := boost_table(found):
        text += "\n**Fine-tuning boost beside the study's Table 1** (AnB+ - BnB+ controls for training time)\n\n"
        text += markdown(*boost)
    return text


def _listed(word: str, items: list) -> str:
    return f"{word}{'s' * (len(items) > 1)} {', '.join(map(str, items))}"


def health_words(rows: list[dict[str, Any]]) -> str:
    """How many networks did not learn (health.py), which, and where they are marked."""
    bad = [f"{r['split']}/seed{r['seed']}/{r['network']}" for r in rows if r.get("learned") is False]
    if not bad:
        return (f"Every one of the {len(rows)} networks learned (its training loss fell below ln C or its top-1 "
                "left chance).")
    return (f"{len(bad)} of {len(rows)} networks did not learn: their training loss stayed at ln C (within "
            f"{health.LOSS_TOLERANCE}) and their top-1 at chance (binomial, alpha {health.ALPHA}): {', '.join(bad)}. "
            "They are ringed in Figure 2, counted in the accuracy table's cells, and each finding says whether its "
            "estimate includes them.")


def intro(params: dict[str, Any], networks: int) -> str:
    """The page's first sentence: what ran, on which splits and seeds, and the metric."""
    exp = params["experiment"]
    dis = exp["dissimilar"]
    control = (f"; the dissimilar-task control on {_listed('split', dis['splits'])}, {_listed('seed', dis['seeds'])}"
               if dis["splits"] else "")
    units = unit_names(params["model"])
    return (f"{networks} networks on {params['dataset']['name']} ({params['model']['arch']} model, "
            f"{len(units)} units: {units[0]} ... {units[-1]}): "
            f"{_listed('split', exp['splits'])}, {_listed('seed', exp['seeds'])}{control}; "
            f"{params['train']['epochs']} epochs for every network. Accuracy is the study's metric: the mean "
            f"of the {params['evaluate']['k_best']} best of the test evaluations made during training.")


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
    random_splits = [sp for sp in used if params["splits"][sp]["method"] == "random"] or used
    dissimilar_splits = params["experiment"]["dissimilar"]["splits"]
    margin = params["report"]["margin"]
    names, alexnet = unit_names(params["model"]), published(params["model"])
    ns = tuple(sorted(params["experiment"]["layers"]))
    found = evaluate(rows, random_splits, dissimilar_splits, margin, ns, alexnet)
    check = budget_check(rows, random_splits, margin, ns, alexnet)
    write_text(out / "findings.md", findings_markdown(found, check))
    findings_figures(rows, random_splits, dissimilar_splits, out)
    metrics = metrics_json(summary, decomp, rows, params)
    metrics["findings"] = as_json(found)
    metrics["budget_check"] = check
    for e in embeds:
        metrics[e["split"]].setdefault("fne", {})[f"{e['slug']}_on_{e['target']}"] = {
            size: {m: round(v["mean"], 6) for m, v in res.items()} for size, res in e["results"].items()}
    # the `estimators` stage's numbers, as DVC records them (estimator_metrics.json: no costs); its table with
    # the costs (estimators.json) is a view DVC does not carry, so a clone that pulled the runs may lack it
    metrics["estimators"] = json.loads(_needed(out / "estimator_metrics.json").read_text())["metrics"]
    estimators = load_comparison(out) if (out / "estimators.json").exists() else None
    write_json(out / "metrics.json", metrics)
    for r in rows:  # per-run learning curves for `dvc plots`
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=["epoch", "top1", "train_loss"], extrasaction="ignore",
                           lineterminator="\n")
        w.writeheader()
        w.writerows(r["evals"])
        write_text(Path(runs.REPORT_CURVES) / f"{r['split']}-seed{r['seed']}-{r['slug']}.csv", buf.getvalue())
    figure2(rows, random_splits, out / "figure2.png", names, alexnet)
    figure2_replicates(rows, summary, params["report"].get("overlay_study", False), out / "figure2-replicates.png",
                       names, alexnet)
    curves_figure(rows, out / "curves.png")
    boost = boost_table(found)
    warn = ' class="warning"' if check and not check["passes"] else ""
    budget = f"<p{warn}>{html.escape(budget_words(check))}</p>"
    provenance = json.dumps({"versions": versions(), "params": params}, indent=2)
    write_text(out / "index.html", PAGE.format(
        width=FRONT_WIDTH_PX, intro=html.escape(intro(params, len(rows))), margin=margin,
        health=html.escape(health_words(rows)),
        health_class=' class="warning"' if any(r["learned"] is False for r in rows) else "",
        variants=html_table(v_header, v_table),
        findings=html_table(*table(found)), budget=budget + (html_table(*budget_table(check)) if check else ""),
        boost=html_table(*boost) if boost else "<p>No AnB+ and BnB+ runs to compare.</p>",
        decomposition=html_table(d_header, d_table), runs=html_table(COLUMNS, run_table),
        fne=html_table(f_header, f_table) if embeds else "<p>No feature extraction configured.</p>",
        estimators=html_table(estimators["table"]["header"], estimators["table"]["rows"])
        + "".join(f"<p>{html.escape(line)}</p>" for line in estimators.get("claims", [])) if estimators else
        "<p>reports/estimators.json is not here (DVC does not carry it: it holds wall-clock costs); "
        "<code>transferability estimators</code> writes it from the runs and their timing.json.</p>",
        provenance=html.escape(provenance)))
    print(f"report: {out / 'index.html'} ({len(rows)} runs)")
