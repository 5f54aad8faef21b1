"""`snakemake --report` on the finished smoke run: every figure of the project's report, the tables
and the metrics, each with its caption from workflow/report/, and the workflow's description."""

from __future__ import annotations

import base64
import hashlib
import re
import zipfile
from pathlib import Path

import pytest

from transferability import runs

from .conftest import ROOT, sh

pytestmark = pytest.mark.slow
CAPTIONS = ROOT / "workflow" / "report"
REPORTED = runs.REPORT_FILES + runs.ESTIMATOR_FILES  # the report's files and the estimators stage's


def first_line(rst: Path) -> str:
    """A caption's first line, as the report's HTML has it (rst markup and Jinja cut)."""
    line = rst.read_text().splitlines()[0]
    return re.split(r"``|\{\{", line)[0].strip()


def captioned() -> dict[Path, list[str]]:
    """Each caption in workflow/report/ (but the workflow's) -> the report files of its name, one of which
    (runs.csv, not runs.md) is in the Snakemake report."""
    stems = {p: [n for n in REPORTED if n.rsplit(".", 1)[0] == p.stem]
             for p in sorted(CAPTIONS.glob("*.rst")) if p.stem != "workflow"}
    assert all(stems.values()), stems
    return stems


def test_every_figure_has_a_caption():
    figures = {name for name in REPORTED if name.endswith(".png")}
    named = {n for names in captioned().values() for n in names}
    assert figures <= named, figures - named


@pytest.mark.parametrize("suffix", ["zip", "html"])
def test_snakemake_report_has_every_figure_and_caption(snakemake_ws, tmp_path, suffix):
    out = tmp_path / f"snakemake.{suffix}"
    sh(["snakemake", "--configfile", "workflow/params/smoke.yaml", "--report", str(out)], snakemake_ws)
    if suffix == "zip":
        with zipfile.ZipFile(out) as z:
            page = z.read("snakemake/report.html").decode()
            stored = {hashlib.sha256(z.read(n)).digest() for n in z.namelist()}
    else:
        page = out.read_text()
    for caption, names in captioned().items():
        data = [(snakemake_ws / runs.REPORT_DIR / name).read_bytes() for name in names]
        if suffix == "zip":  # the file itself, byte for byte
            assert any(hashlib.sha256(d).digest() in stored for d in data), names
        else:  # embedded as a data URI
            assert any(base64.b64encode(d).decode() in page for d in data), names
        assert first_line(caption) in page, (names, first_line(caption))
    assert first_line(CAPTIONS / "workflow.rst") in page
    for category in ("Figures", "Tables", "Metrics"):
        assert category in page, category
