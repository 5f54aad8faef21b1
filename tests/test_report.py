"""The report's arithmetic, the study's numbers it sets beside ours, and what its page says."""

from __future__ import annotations

import pytest

from transferability.errors import UserError
from transferability.report.figures import FRONT_WIDTH_PX, figure2, figure2_replicates, findings_figures
from transferability.report.page import build_report, findings_markdown, intro
from transferability.report.tables import decomposition, summarise
from transferability.runs import role
from transferability.study import published as study
from transferability.study.findings import budget_check, evaluate


def row(family, n, acc, seed=0, target="B"):
    return {"split": "random0", "seed": seed, "family": family, "n": n, "target": target,
            "top1_kbest": acc, "top1": acc - 0.01}


ROWS = [row("baseB", 0, 0.80), row("baseB", 0, 0.82, seed=1),
        row("BnB", 3, 0.75), row("BnB", 3, 0.77, seed=1),
        row("AnB", 3, 0.70), row("AnB", 3, 0.72, seed=1),
        row("AnB+", 3, 0.84), row("AnB+", 3, 0.86, seed=1),
        row("RnB", 3, 0.40), row("RnB", 3, 0.42, seed=1)]


def test_summary_averages_over_seeds():
    s = summarise(ROWS)
    assert s[("random0", "baseB", 0)]["top1_kbest"] == pytest.approx(0.81)
    assert s[("random0", "baseB", 0)]["top1_kbest_sd"] == pytest.approx(0.01414, abs=1e-5)
    assert s[("random0", "AnB", 3)]["runs"] == 2


def test_decomposition_is_the_studys_three_effects():
    (d,) = decomposition(summarise(ROWS))
    assert (d["split"], d["target"], d["n"]) == ("random0", "B", 3)
    assert d["coadaptation_loss"] == pytest.approx(0.81 - 0.76)  # baseB - BnB
    assert d["specificity"] == pytest.approx(0.76 - 0.71)        # BnB - AnB
    assert d["finetune_gain"] == pytest.approx(0.85 - 0.81)      # AnB+ - baseB


def test_roles_generalise_both_directions():
    assert [role(f, "B") for f in ("BnB", "BnB+", "AnB", "AnB+", "RnB")] == ["TnT", "TnT+", "SnT", "SnT+", "RnT"]
    assert [role(f, "A") for f in ("AnA", "BnA+")] == ["TnT", "SnT+"]


def test_study_points_are_the_published_numbers():
    pts = study.points("random0", "B")
    base = [p for p in pts if p["role"] == "base"]
    assert base == [{"role": "base", "n": 0, "top1": 0.63408}]  # half0B in results.csv
    assert {p["role"] for p in pts} == {"base", "SnT", "SnT+"}  # the study's selffer runs were A->A only
    assert {p["role"] for p in study.points("random0", "A")} == {"base", "TnT", "TnT+", "SnT"}
    assert study.points("natman", "B") and not study.points("dissimilar", "B")


def test_the_studys_controls_are_its_published_table():
    """The reference README's figures, from results.csv: BnB+ - baseB per n and the Table 1 boosts."""
    c = study.curves()
    assert [round(100 * c["TnT+"][n], 2) for n in range(1, 8)] == [-0.74, -0.36, 0.62, 0.36, 0.5, 0.25, 0.15]
    assert [round(100 * c["TnT"][n], 1) for n in (3, 4, 5)] == [-0.4, -2.0, -3.2]  # the dip
    assert round(100 * study.boost("TnT+", tuple(range(1, 8))), 2) == 1.56
    assert round(100 * study.boost("TnT+", (3, 4, 5, 6, 7)), 2) == 1.50
    assert round(100 * study.boost("TnT+", (5, 6, 7)), 2) == 1.76
    assert [round(100 * study.boost("base", ns), 2) for ns in ((1, 2, 3, 4, 5, 6, 7), (3, 4, 5, 6, 7), (5, 6, 7))] \
        == [1.67, 1.88, 2.06]
    assert study.effects()["specificity"] == pytest.approx(c["TnT"][7] - c["SnT"][7])


def test_figure_with_the_study_overlaid(tmp_path):
    path = tmp_path / "figure2-replicates.png"
    figure2_replicates(ROWS, summarise(ROWS), True, path)
    assert path.read_bytes()[:4] == b"\x89PNG" and path.stat().st_size > 20_000


def test_figure2_is_the_pooled_panel_alone_at_the_pages_width(tmp_path):
    """The page's front: one panel as wide as the page's content (report.PAGE), its legend beside the axes
    in reading order (our roles, the study's, the ring) at a size that reads 1:1; the per-split panels go
    to a second image, four to a row."""
    import struct

    import matplotlib.pyplot as plt

    from transferability.report.figures import _pooled_panel

    from .test_findings import mirrored, runs

    rows = runs(3) + mirrored(runs(3, split_seed=1))
    rows = [{**r, "top1": r["top1_kbest"], "learned": not (r["family"] == "RnB" and r["n"] == 7 and r["seed"] == 0)}
            for r in rows]
    figure2(rows, ["random0"], tmp_path / "figure2.png")
    figure2_replicates(rows, summarise(rows), True, tmp_path / "figure2-replicates.png")
    size = {name: struct.unpack(">II", (tmp_path / name).read_bytes()[16:24])
            for name in ("figure2.png", "figure2-replicates.png")}
    assert size["figure2.png"] == (FRONT_WIDTH_PX, 620)
    assert size["figure2-replicates.png"] == (4 * 715, 550)  # random0 and dissimilar, both halves: 4 panels, 110 dpi
    fig, ax = plt.subplots()
    _pooled_panel(ax, rows, ["random0"], 3)
    legend = ax.get_legend()
    assert [t.get_text().split("\n")[0] for t in legend.get_texts()] == [
        "base (each replicate's own)", "TnT", "TnT+", "SnT", "SnT+", "RnT", "TnT, the study", "TnT+, the study",
        "SnT, the study", "SnT+, the study", "did not learn: loss at ln C, top-1 at chance"]
    assert min(t.get_fontsize() for t in legend.get_texts()) >= 11 and ax.title.get_fontsize() >= 12
    fig.canvas.draw()
    assert legend.get_window_extent().x0 > ax.get_window_extent().x1  # beside the axes, over no point
    plt.close(fig)


def test_report_names_the_missing_run(tmp_path, monkeypatch, params):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=r"data/runs/random0/seed0/baseA/metrics.json is missing: train baseA"):
        build_report(params)


def test_summary_gives_a_95_percent_interval_over_seeds():
    s = summarise(ROWS)[("random0", "baseB", 0)]
    half = 12.7062047 * 0.0141421356 / 2**0.5  # t(0.975, 1) * sd / sqrt(2)
    assert s["ci95"] == pytest.approx((0.81 - half, 0.81 + half))
    assert summarise([row("baseB", 0, 0.8)])[("random0", "baseB", 0)]["ci95"] == (None, None)


def test_findings_figures_draw_bands_or_say_what_is_missing(tmp_path):
    from .test_findings import runs

    findings_figures(runs(3), ["random0"], ["dissimilar"], tmp_path)
    for name in ("dissimilar.png", "random_filters.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG" and (tmp_path / name).stat().st_size > 15_000
    (tmp_path / "one").mkdir()
    findings_figures(runs(1), ["random0"], [], tmp_path / "one")  # one seed, no dissimilar split: no bands
    assert (tmp_path / "one" / "dissimilar.png").exists()


def test_findings_say_the_verdicts_the_budget_check_and_the_studys_table(tmp_path):
    from .test_findings import runs

    rows = runs(4, ft_gain=0.03)
    found = evaluate(rows, ["random0"], ["dissimilar"], 0.01)
    text = findings_markdown(found, budget_check(rows, ["random0"], 0.01))
    assert "| fine-tuning boost | SnT+ (AnB+) beats TnT+ (BnB+)" in text and "+0.0156" in text  # the study's value
    assert "Warning: the bases look under-trained" in text and "| 4 | +0.03" in text
    assert "| BnB+ (TnT+) | n = 5..7 |" in text and "+0.0176 |" in text
    path = tmp_path / "figure2.png"
    rows = [{**r, "top1": r["top1_kbest"]} for r in rows]
    figure2(rows, ["random0"], path)  # the pooled panel with the study's curve
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_the_page_and_the_pooled_panel_count_what_ran(params):
    """One replicate is one; a dissimilar split is named once, with its own seeds."""
    import matplotlib.pyplot as plt

    from transferability.report.figures import _pooled_panel

    from .test_findings import mirrored, runs

    fig, ax = plt.subplots()
    _pooled_panel(ax, runs(1), ["random0"], 1)
    assert "1 replicate (" in ax.get_title() and "both halves" not in ax.get_title()
    both = runs(2) + mirrored(runs(2))
    _pooled_panel(ax, both, ["random0"], 2)
    assert "both halves as targets, 2 replicates (" in ax.get_title()
    plt.close(fig)
    params["experiment"].update(splits=["random0"], seeds=[0],
                                dissimilar={"splits": ["natman"], "seeds": [0, 1], "variants": ["AnB"]})
    text = intro(params, 40)
    assert text.startswith("40 networks on fashion_mnist (small model, 8 units: conv1 ... fc8): split random0, seed 0; "
                           "the dissimilar-task control on split natman, seeds 0, 1; ")
    assert "dissimilar dissimilar" not in text


def test_networks_that_did_not_learn_are_ringed_counted_and_named(tmp_path):
    """Figure 2 rings them (its legend says what the ring means), the accuracy table and metrics.json
    count them per cell and in all, the page names them; a run with none says so."""
    import matplotlib.pyplot as plt

    from transferability.networks.architecture import ALEXNET_UNITS
    from transferability.report.figures import _pooled_panel, _split_panel
    from transferability.report.page import health_words
    from transferability.report.tables import metrics_json, variant_table

    from .test_findings import runs

    def slugged(rows):
        return [{**r, "top1": r["top1_kbest"], "slug": r["family"].replace("n", str(r["n"]), 1).replace("+", "-ft"),
                 "network": r["family"].replace("n", str(r["n"]), 1), "versions": {}, "run_seed": 0} for r in rows]

    rows = slugged([r for r in runs(3) if r["split"] == "random0"])
    rows = [{**r, "learned": not (r["family"] == "RnB" and r["n"] == 5 and r["seed"] > 0)} for r in rows]
    rows[0] = {**rows[0], "learned": False}  # a base (seed 0's baseB): ringed at n = 0
    summary = summarise(rows)
    fig, (a, b) = plt.subplots(1, 2)
    _split_panel(a, rows, summary, "random0", "B", False, ALEXNET_UNITS)
    _pooled_panel(b, rows, ["random0"], 3)
    ring = [t.get_text() for t in a.get_legend().get_texts() if t.get_text().startswith("did not learn")]
    assert ring == ["did not learn: loss at ln C, top-1 at chance"]
    ringed = [y for c in a.collections if c.get_label().lstrip("_") == ring[0] for y in c.get_offsets()[:, 1]]
    assert sorted(ringed) == sorted(r["top1_kbest"] for r in rows if not r["learned"])
    assert any("a mean that includes them" in t.get_text() for t in b.get_legend().get_texts())
    plt.close(fig)
    header, table = variant_table(summary)
    cell = next(row for row in table if row[:2] == ["random0", "RnB"])[header.index("n=5")]
    assert cell == f"{summary[('random0', 'RnB', 5)]['top1_kbest']:.4f} (2 of 3 did not learn)"
    params = {"experiment": {"seeds": [0, 1, 2]}, "dataset": {}, "model": {}, "train": {}, "evaluate": {}}
    metrics = metrics_json(summary, [], rows, params)
    assert metrics["random0"]["RnB"]["n5"]["not_learned"] == 2 and "not_learned" not in metrics["random0"]["RnB"]["n4"]
    assert metrics["random0"]["baseB"]["not_learned"] == 1
    health = metrics["training_health"]
    assert (health["networks"], health["not_learned"]) == (len(rows), 3)
    assert health["not_learned_networks"] == ["random0/seed0/baseB", "random0/seed1/R5B", "random0/seed2/R5B"]
    assert health_words(rows).startswith(f"3 of {len(rows)} networks did not learn: ")
    assert "random0/seed1/R5B, random0/seed2/R5B" in health_words(rows)
    healthy = [{**r, "learned": True} for r in rows]
    assert health_words(healthy).startswith(f"Every one of the {len(rows)} networks learned")
    assert metrics_json(summarise(healthy), [], healthy, params)["training_health"]["not_learned"] == 0
