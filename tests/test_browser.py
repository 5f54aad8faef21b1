"""The project's HTML report in a real headless browser (Debian's Chromium): it loads with no console
error and shows every figure. Outside CI a machine without the browser skips; in CI (CI set) it fails."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
import pytest
from matplotlib import image

from transferability import runs
from transferability.report.figures import FRONT_WIDTH_PX

from . import browser
from .conftest import sh

pytestmark = pytest.mark.slow
FIGURES = {name for name in runs.REPORT_FILES + runs.ESTIMATOR_FILES if name.endswith(".png")}


@pytest.fixture(scope="module")
def have_browser():
    if lacking := browser.missing():
        message = f"no headless browser: missing {', '.join(lacking)} (make test-tools installs them)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_report_loads_without_console_errors_and_shows_every_figure(have_browser, snakemake_ws, tmp_path):
    shot = tmp_path / "report.png"
    page = browser.open_page(snakemake_ws / runs.REPORT_DIR / "index.html", screenshot=shot)
    assert page.title == "Transferability report"
    assert not page.errors, page.errors
    assert {i["src"] for i in page.images} == FIGURES
    assert not page.broken_images, page.broken_images
    for img in page.images:  # each figure at its own size: the PNG the report wrote, decoded
        assert (img["width"], img["height"]) == png_size((snakemake_ws / runs.REPORT_DIR / img["src"]).read_bytes())
    width, height = png_size(shot.read_bytes())
    assert width == 1280 and height > 3000  # the whole page, not just the first screen


def test_a_missing_figure_is_caught(have_browser, snakemake_ws, tmp_path):
    """The check is real: the same page with one figure gone fails it."""
    page_dir = tmp_path / "reports"
    page_dir.mkdir()
    (page_dir / "index.html").write_text((snakemake_ws / runs.REPORT_DIR / "index.html").read_text())
    for name in FIGURES - {"curves.png"}:
        (page_dir / name).write_bytes((snakemake_ws / runs.REPORT_DIR / name).read_bytes())
    page = browser.open_page(page_dir / "index.html")
    assert [i["src"] for i in page.broken_images] == ["curves.png"]
    assert any("curves.png" in m["message"] for m in page.errors), page.console


def front_problems(page: browser.Page, reports: Path, shot: Path) -> list[str]:
    """What keeps the pooled Figure 2 from being the page's front: it must be the first figure, laid out 1:1
    across the content width (so its legend reads at the size it was drawn: the screenshot holds the PNG
    pixel for pixel), with the per-split panels after it."""
    out = []
    front = next(i for i in page.images if i["src"] == "figure2.png")
    rest = next(i for i in page.images if i["src"] == "figure2-replicates.png")
    if page.images[0] is not front:
        out.append(f"the first figure is {page.images[0]['src']}")
    if not page.content_width - 1 <= front["shown_width"] <= page.content_width:
        out.append(f"the front is {front['shown_width']} px wide in {page.content_width} px of content")
    if (front["shown_width"], front["shown_height"]) != (front["width"], front["height"]):
        out.append(f"the front is scaled: drawn {front['width']}x{front['height']}, shown "
                   f"{front['shown_width']}x{front['shown_height']}")
    if rest["top"] < front["top"] + front["shown_height"]:
        out.append("the per-split panels are not below the front")
    drawn = image.imread(reports / "figure2.png")[..., :3]
    x, y = round(front["left"]), round(front["top"])
    seen = image.imread(shot)[y : y + drawn.shape[0], x : x + drawn.shape[1], :3]
    if seen.shape != drawn.shape or np.abs(seen - drawn).max() > 0.02:
        out.append("the screenshot does not show figure2.png pixel for pixel")
    return out


def test_the_pooled_figure_is_the_front_at_the_pages_width(have_browser, snakemake_ws, tmp_path):
    """At 1280 px the first figure is the pooled panel, full width and 1:1, and it ends on the first screen."""
    reports, shot = snakemake_ws / runs.REPORT_DIR, tmp_path / "front.png"
    page = browser.open_page(reports / "index.html", screenshot=shot, height=1200)
    assert png_size(shot.read_bytes()) == (1280, 1200)
    assert page.content_width == FRONT_WIDTH_PX
    assert front_problems(page, reports, shot) == []
    front = page.images[0]
    assert front["top"] + front["shown_height"] <= 1000  # the window's first screen (browser.open_page: 1000 high)


def test_a_page_without_the_front_is_caught(have_browser, snakemake_ws, tmp_path):
    """The check is real: the per-split panels first, and the front shown at half width, each fail it."""
    reports = snakemake_ws / runs.REPORT_DIR
    html = (reports / "index.html").read_text()
    front, rest = '<img class="front" src="figure2.png"', '<img src="figure2-replicates.png"'
    pages = {"swapped": html.replace(front, "FRONT").replace(rest, front).replace("FRONT", rest),
             "half": html.replace("img.front{width:100%}", "img.front{width:50%}")}
    found = {}
    for name, text in pages.items():
        (tmp_path / name).mkdir()
        for figure in FIGURES:
            (tmp_path / name / figure).write_bytes((reports / figure).read_bytes())
        (tmp_path / name / "index.html").write_text(text)
        shot = tmp_path / f"{name}.png"
        found[name] = front_problems(browser.open_page(tmp_path / name / "index.html", screenshot=shot), reports, shot)
    assert found["swapped"][0] == "the first figure is figure2-replicates.png"
    assert "the per-split panels are not below the front" in found["swapped"]
    assert found["half"][0] == f"the front is {FRONT_WIDTH_PX // 2} px wide in {FRONT_WIDTH_PX} px of content"
    assert "the screenshot does not show figure2.png pixel for pixel" in found["half"]


def test_the_snakemake_report_loads_without_console_errors(have_browser, snakemake_ws, tmp_path):
    out = tmp_path / "snakemake.html"
    sh(["snakemake", "--configfile", "workflow/params/smoke.yaml", "--report", str(out)], snakemake_ws)
    page = browser.open_page(out)
    assert page.title == "Snakemake Report"
    assert not page.errors, page.errors
