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
    # 4: progress=False draws nothing
    "ds2 = sd.sample(sde, target.score(sde), sd.EulerMaruyama(steps=200), shape=(500, 2), seed=1, progress=False)",
    # 5: with the inline backend active the figure still shows exactly once
    "%matplotlib inline\nfig",
]


#: a kernel in which ipywidgets cannot be imported (as after a plain ``pip install scoresde``)
CELLS_WITHOUT_WIDGETS = [
    "import sys\nsys.modules['ipywidgets'] = None  # import ipywidgets now raises ImportError",
    "import scoresde as sd",
    "sde = sd.VPSDE()\n"
    "target = sd.eight_gaussians()\n"
    "ds = sd.sample(sde, target.score(sde), sd.EulerMaruyama(steps=200), shape=(500, 2), seed=0)",
    "sd.plotting.plot_samples(ds, target=target.marginal(sde, 1e-3))",
]


def run_notebook(cells):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(src) for src in cells]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    env.pop("MPLBACKEND", None)
    client = nbclient.NotebookClient(nb, timeout=120, kernel_name="python3", allow_errors=False)
    client.execute(env=env)
    return nb


@pytest.fixture(scope="module")
def executed():
    return run_notebook(CELLS)


@pytest.fixture(scope="module")
def executed_without_widgets():
    return run_notebook(CELLS_WITHOUT_WIDGETS)


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


def test_progress_false_is_silent(executed):
    assert outputs(executed, 4) == []


def test_without_ipywidgets_no_warning_and_a_silent_bar(executed_without_widgets):
    """tqdm.auto warns on stderr at import in a kernel without ipywidgets; the library never imports it there."""
    nb = executed_without_widgets
    for i, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []):
            assert not (out["output_type"] == "stream" and out.get("name") == "stderr"), (i, out)
            assert "Warning" not in out.get("text", ""), (i, out)
    assert outputs(nb, 1) == [] and outputs(nb, 2) == []
    assert [o for o in outputs(nb, 3) if "image/png" in o.get("data", {})]
