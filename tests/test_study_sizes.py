"""The studies' sizes (``--docs``, default, ``--full``) and ``--quiet``, on the default-sampler study at a tiny size."""

import importlib
import sys
from pathlib import Path

import pytest
import torch
import xarray as xr

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `studies` is not installed with the package
    sys.path.insert(0, str(ROOT))
if str(ROOT / "docs") not in sys.path:
    sys.path.insert(0, str(ROOT / "docs"))

from _gallery import study_names  # noqa: E402

from studies import _io  # noqa: E402
from studies import default_sampler as dsm  # noqa: E402

STUDIES = study_names(ROOT)
#: ring_exact alone (no training), one sampler at one budget, at the docs size (4,000 samples, 4 floor pairs)
TINY_ARGS = ["--docs", "--problems", "ring_exact", "--samplers", "EM", "--budgets", "20"]


@pytest.fixture
def one_thread():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)  # the studies' prepare() sets --threads


def test_the_docs_build_runs_every_study():
    assert "default_sampler" in STUDIES and len(STUDIES) == len(set(STUDIES)) >= 7


@pytest.mark.parametrize("name", STUDIES)
def test_every_study_has_a_smaller_docs_size(name):
    mod = importlib.import_module(f"studies.{name}")
    assert mod.DOCS != mod.DEFAULT and mod.FULL != mod.DEFAULT
    assert _io.size(mod.parse_args(["--docs"])) == "docs"
    assert _io.size(mod.parse_args(["--full"])) == "full"
    assert _io.size(mod.parse_args([])) == "default"
    with pytest.raises(SystemExit):
        mod.parse_args(["--docs", "--full"])


def test_quiet_prints_nothing(tmp_path, capsys, one_thread):
    assert dsm.main([*TINY_ARGS, "--quiet", "--out", str(tmp_path / "quiet")]) == 0
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""
    text = (tmp_path / "quiet" / "table.md").read_text(encoding="utf-8")
    assert text.startswith("# Accuracy per NFE of every sampler on trained and exact scores (docs size)")
    assert (tmp_path / "quiet" / "figure.png").stat().st_size > 0
    with xr.open_dataset(tmp_path / "quiet" / "default_sampler.nc") as ds:
        assert ds.attrs["size"] == "docs" and ds.attrs["n_samples_exact"] == dsm.DOCS.n_samples_exact
        assert ds.attrs["command"].startswith("python -m studies.default_sampler --docs")

    assert dsm.main([*TINY_ARGS, "--out", str(tmp_path / "loud")]) == 0
    out = capsys.readouterr().out
    assert out.strip() == (tmp_path / "loud" / "table.md").read_text(encoding="utf-8").strip()


@pytest.mark.parametrize("name", ["conditional", "conditional_digits"])
def test_a_study_without_a_docs_size_refuses_the_option(name, tmp_path, capsys):
    mod = importlib.import_module(f"studies.{name}")
    with pytest.raises(SystemExit) as exc:
        mod.main(["--docs", "--out", str(tmp_path)])
    assert exc.value.code == 2 and "there is no --docs size" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # refused before anything was written
