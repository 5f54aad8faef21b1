"""The project's HTML report in a real headless browser (Debian's Chromium): it loads with no console
error and shows every figure. Outside CI a machine without the browser skips; in CI (CI set) it fails."""

from __future__ import annotations

import os
import struct

import pytest

from transferability import runs

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


def test_the_snakemake_report_loads_without_console_errors(have_browser, snakemake_ws, tmp_path):
    out = tmp_path / "snakemake.html"
    sh(["snakemake", "--configfile", "workflow/params/smoke.yaml", "--report", str(out)], snakemake_ws)
    page = browser.open_page(out)
    assert page.title == "Snakemake Report"
    assert not page.errors, page.errors
