"""A notebook executed headless (nbclient): figures show as PNG, progress bars write nothing to stderr."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

import scoresde  # noqa: E402

REPO = Path(scoresde.__file__).resolve().parents[1]

CELLS = [
    # 0: the import prints nothing
    "import scoresde as sd",
    # 1: a run with the default progress bar (a widget: ipywidgets is installed)
    "sde = sd.VPSDE()\n"
    "target = sd.eight_gaussians()\n"
    "ds = sd.sample(sde, target.score(sde), sd.EulerMaruyama(steps=200), shape=(500, 2), seed=0)",
    # 2: the figure object, without %matplotlib inline
    "fig = sd.plotting.plot_samples(ds, target=target.marginal(sde, 1e-3))",
    "fig",
    # 4: a kernel without ipywidgets: the bar is disabled instead of writing text to stderr
    "import scoresde._progress as _progress\n"
    "_progress._widgets_available = lambda: False\n"
    "ds2 = sd.sample(sde, target.score(sde), sd.EulerMaruyama(steps=200), shape=(500, 2), seed=1)",
    # 5: with the inline backend active the figure still shows exactly once
    "%matplotlib inline\nfig",
]


@pytest.fixture(scope="module")
def executed():
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(src) for src in CELLS]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    env.pop("MPLBACKEND", None)
    client = nbclient.NotebookClient(nb, timeout=120, kernel_name="python3", allow_errors=False)
    client.execute(env=env)
    return nb


def outputs(nb, i):
    return nb.cells[i].get("outputs", [])


def test_import_prints_nothing(executed):
    assert outputs(executed, 0) == []


def test_figure_shows_as_png(executed):
    images = [o for o in outputs(executed, 3) if "image/png" in o.get("data", {})]
    assert len(images) == 1, outputs(executed, 3)
    images = [o for o in outputs(executed, 5) if "image/png" in o.get("data", {})]
    assert len(images) == 1, outputs(executed, 5)


def test_no_stderr_and_no_warnings(executed):
    for i, cell in enumerate(executed.cells):
        for out in cell.get("outputs", []):
            assert not (out["output_type"] == "stream" and out.get("name") == "stderr"), (i, out)
            text = out.get("text", "") + str(out.get("data", {}).get("text/plain", ""))
            assert "Warning" not in text, (i, text)


def test_progress_bar_without_widgets_is_silent(executed):
    assert outputs(executed, 4) == []
