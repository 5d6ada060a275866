"""The citation records agree with the package metadata."""

import re
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


def test_citation_cff_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    cff = (ROOT / "CITATION.cff").read_text(encoding="utf-8")
    assert re.search(r"^cff-version: 1\.2\.0$", cff, re.M)
    assert re.search(rf"^version: {re.escape(project['version'])}$", cff, re.M), "CITATION.cff version"
    assert re.search(rf"^license: {re.escape(project['license'])}$", cff, re.M), "CITATION.cff license"


def test_bibtex_on_the_citing_page_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    page = (ROOT / "docs" / "citing.md").read_text(encoding="utf-8")
    assert f"version = {{{project['version']}}}" in page
    assert f"license = {{{project['license']}}}" in page
