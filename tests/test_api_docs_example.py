"""The "writing your own sampler" example of docs/api/integrators.md runs as printed and is right.

The ```python blocks of the page are read at test time (so an edit to the page is tested), executed
in order in one namespace, and the sampler they define is checked against the library's own
Euler–Maruyama: the example says the two draw the same noise in the same order, so with the same seed
they must give the same samples.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

import scoresde as sd

PAGE = Path(__file__).resolve().parents[1] / "docs" / "api" / "integrators.md"


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def test_page_has_the_example():
    blocks = _python_blocks(PAGE.read_text(encoding="utf-8"))
    assert blocks, f"no ```python block in {PAGE}"
    assert any("FixedStepSampler" in b for b in blocks)


def test_example_runs_and_matches_euler_maruyama(capsys):
    namespace: dict[str, object] = {"__name__": "docs_api_example"}
    for block in _python_blocks(PAGE.read_text(encoding="utf-8")):
        exec(compile(block, str(PAGE), "exec"), namespace)  # noqa: S102 - the documented example
    ds = namespace["ds"]
    out = capsys.readouterr().out
    assert "MyEulerMaruyama 200" in out  # what the example prints: its name in the provenance, NFE
    assert ds.attrs["sampler"] == "MyEulerMaruyama"
    assert ds.attrs["nfe"] == 200
    sde, target = namespace["sde"], namespace["target"]
    ref = sd.sample(sde, target.score(sde), sd.EulerMaruyama(steps=200), shape=(1000, 2), seed=0, progress=False)
    assert torch.equal(torch.as_tensor(ds["x"].values), torch.as_tensor(ref["x"].values))
    # the sampler follows the input dtype and the seed
    cls = namespace["MyEulerMaruyama"]
    x_T = torch.randn(64, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    a = sd.sample(sde, target.score(sde), cls(steps=20), x_T=x_T, seed=1, progress=False)
    b = sd.sample(sde, target.score(sde), cls(steps=20), x_T=x_T, seed=1, progress=False)
    assert a["x"].dtype == "float64"
    assert torch.equal(torch.as_tensor(a["x"].values), torch.as_tensor(b["x"].values))
