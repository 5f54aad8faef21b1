"""The report's arithmetic and the study's numbers it overlays."""

from __future__ import annotations

import pytest

from transferability.errors import UserError
from transferability.report import build_report, decomposition, figure2, role, study_points, summarise


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
    pts = study_points("random0", "B")
    base = [p for p in pts if p["role"] == "base"]
    assert base == [{"role": "base", "n": 0, "top1": 0.63408}]  # half0B in results.csv
    assert {p["role"] for p in pts} == {"base", "SnT", "SnT+"}  # the study's selffer runs were A->A only
    assert {p["role"] for p in study_points("random0", "A")} == {"base", "TnT", "TnT+", "SnT"}
    assert study_points("natman", "B") and not study_points("dissimilar", "B")


def test_figure_with_the_study_overlaid(tmp_path):
    path = tmp_path / "figure2.png"
    figure2(ROWS, summarise(ROWS), True, path)
    assert path.read_bytes()[:4] == b"\x89PNG" and path.stat().st_size > 20_000


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
    from transferability.report import findings_figures

    from .test_findings import runs

    findings_figures(runs(3), ["random0"], ["dissimilar"], tmp_path)
    for name in ("dissimilar.png", "random_filters.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG" and (tmp_path / name).stat().st_size > 15_000
    (tmp_path / "one").mkdir()
    findings_figures(runs(1), ["random0"], [], tmp_path / "one")  # one seed, no dissimilar split: no bands
    assert (tmp_path / "one" / "dissimilar.png").exists()
