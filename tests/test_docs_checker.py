"""The documentation site checker's link logic (docs/check_site.py) on a tiny synthetic site, no browser.

Marked ``docs`` (deselected by default; ``pytest -m docs`` runs it, and so does ``nox -s docs``).
"""

import importlib.util
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.docs

_SPEC = importlib.util.spec_from_file_location(
    "check_site", Path(__file__).resolve().parents[1] / "docs" / "check_site.py"
)
check_site = importlib.util.module_from_spec(_SPEC)
sys.modules.setdefault("check_site", check_site)  # dataclasses look their module up
_SPEC.loader.exec_module(check_site)


def _site(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return tmp_path


GOOD = {
    "index.html": """<html><head><link rel="stylesheet" href="_static/s.css?v=12ab">
        <script src="_static/x.js"></script></head><body>
        <a href="theory/index.html#forward-sdes">theory</a>
        <a href="theory/">dir index</a>
        <a href="#top">self</a><a href="">empty</a><a id="top"></a>
        <a href="https://example.org/nowhere">external</a><a href="mailto:a@b.c">mail</a>
        <img src="_images/fig%201.png"></body></html>""",
    "theory/index.html": """<html><body><section id="forward-sdes"><h1>x</h1></section>
        <a href="../index.html#top">back</a><a href="../api/sde.html#scoresde.sde.VPSDE">VPSDE</a>
        <a name="legacy-anchor"></a><a href="#legacy-anchor">legacy</a></body></html>""",
    "api/sde.html": """<dt class="sig" id="scoresde.sde.VPSDE">VPSDE</dt>""",
    "_static/s.css": "body {}",
    "_static/x.js": "",
    "_images/fig 1.png": "png",
}


def test_resolve_relative_absolute_and_directory_urls():
    assert check_site.resolve("theory/index.html", "../api/sde.html#x") == ("api/sde.html", "x")
    assert check_site.resolve("theory/index.html", "#frag") == ("theory/index.html", "frag")
    assert check_site.resolve("a/b.html", "/c.html?v=1") == ("c.html", "")
    assert check_site.resolve("index.html", "theory/") == ("theory/index.html", "")
    assert check_site.resolve("index.html", "_images/fig%201.png") == ("_images/fig 1.png", "")
    assert not check_site.is_internal("https://example.org")
    assert not check_site.is_internal("//cdn.example.org/x.js")
    assert check_site.is_internal("../x.html")


def test_good_site_passes(tmp_path):
    failures, external = check_site.check_links(_site(tmp_path, GOOD))
    assert failures == []
    assert external == 1


def test_broken_links_fragments_and_resources_are_reported(tmp_path):
    files = dict(GOOD)
    files["index.html"] = (
        GOOD["index.html"]
        .replace("#forward-sdes", "#reverse-sde")
        .replace("_images/fig%201.png", "_images/missing.png")
    )
    files["theory/index.html"] += '<a href="../api/solvers.html">gone</a><a href="../../outside.html">up</a>'
    failures, _ = check_site.check_links(_site(tmp_path, files))
    text = "\n".join(failures)
    assert len(failures) == 4, text
    assert "no id 'reverse-sde' in theory/index.html" in text
    assert "missing file _images/missing.png" in text
    assert "missing file api/solvers.html" in text
    assert "points outside the site" in text


def test_main_links_only_exit_codes(tmp_path, capsys):
    site = _site(tmp_path, GOOD)
    assert check_site.main([str(site), "--links-only"]) == 0
    (site / "api" / "sde.html").write_text("<p>no ids here</p>", encoding="utf-8")
    assert check_site.main([str(site), "--links-only"]) == 1
    assert "no id 'scoresde.sde.VPSDE'" in capsys.readouterr().out
    assert check_site.main([str(tmp_path / "nothing"), "--links-only"]) == 2
