"""The gallery pages (docs/_gallery.py) on a synthetic tree: the size note read from a study's Dataset."""

import sys
from pathlib import Path

import numpy as np
import xarray as xr

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "docs") not in sys.path:
    sys.path.insert(0, str(ROOT / "docs"))

import _gallery  # noqa: E402


def _tree(tmp_path: Path, size: str | None) -> Path:
    (tmp_path / "noxfile.py").write_text('STUDIES = ("alpha", "beta")\n', encoding="utf-8")
    (tmp_path / "studies").mkdir()
    (tmp_path / "studies" / "alpha.py").write_text('"""Alpha study: one figure.\n\nMore."""\n', encoding="utf-8")
    out = tmp_path / "studies" / "output" / "alpha"
    out.mkdir(parents=True)
    (out / "figure.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (out / "table.md").write_text("# Alpha\n\n## A table\n\n| a |\n|---|\n| 1 |\n", encoding="utf-8")
    attrs = {"command": "python -m studies.alpha --docs --quiet", "created": "2026-01-01T00:00:00+00:00"}
    if size is not None:
        attrs.update(size=size, study_wall_time_s=12.3)
    xr.Dataset({"v": ("i", np.arange(3.0))}, attrs=attrs).to_netcdf(out / "alpha.nc")
    return tmp_path


def test_page_names_the_size_and_command(tmp_path):
    root = _tree(tmp_path, "docs")
    assert _gallery.write_gallery(root, tmp_path / "gallery") == ["alpha"]
    page = (tmp_path / "gallery" / "alpha.md").read_text(encoding="utf-8")
    assert "```{note}\nProduced at **docs** size, the documentation build's small size" in page
    assert "`python -m studies.alpha --docs --quiet` (2026-01-01T00:00:00+00:00, 12 s)." in page
    index = (tmp_path / "gallery" / "index.md").read_text(encoding="utf-8")
    assert "Run size: docs." in index and "`beta`" in index  # beta has no outputs: listed as not built


def test_default_size_is_stated_without_a_warning(tmp_path):
    page = _gallery.study_page(_tree(tmp_path, "default"), "alpha", tmp_path / "studies/output/alpha", tmp_path / "g")
    assert "```{admonition} Run size\nProduced at **default** size, the study's default size" in page
    assert "{note}" not in page


def test_no_size_attribute_no_note(tmp_path):
    page = _gallery.study_page(_tree(tmp_path, None), "alpha", tmp_path / "studies/output/alpha", tmp_path / "g")
    assert "Produced at" not in page and "Run size" not in page
