"""The fixed-grid samplers' per-run coefficient tables: the same numbers as the per-step tensor code, bit for bit,
each coefficient computed once per run, the grid built once."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import SDES

import scoresde as sd
from scoresde.integrators import exponential
from scoresde.integrators.base import CountedScore, LinearDrift
from scoresde.integrators.predictors import ReverseDiffusionPredictor

DTYPES = (torch.float32, torch.float64)


def _score(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    # a score with x- and t-dependence and values of all scales, so that any reordering of the arithmetic shows
    return -x / (0.3 + t[:, None]) + torch.sin(3.0 * x) * t[:, None] ** 2


def _x(dtype: torch.dtype) -> torch.Tensor:
    return torch.randn(64, 3, generator=torch.Generator().manual_seed(0), dtype=dtype) * 7.0


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("probability_flow", [False, True])
@pytest.mark.parametrize("sde", SDES, ids=repr)
def test_linear_drift_is_the_reverse_drift_bit_for_bit(sde, probability_flow, dtype):
    rsde = sde.reverse(_score, probability_flow=probability_flow)
    assert LinearDrift.applies(rsde)
    drift = LinearDrift(rsde)
    x = _x(dtype)
    for t in np.linspace(1.0, 1e-3, 7).tolist():
        expected = rsde.sde(x, t)[0]
        got = drift(x, t)
        assert got.dtype == dtype
        assert torch.equal(got, expected), (t, (got - expected).abs().max())
        g = rsde.base.sde(x, t)[1]
        assert drift.diffusion_times(t, x, 0.37) == float((g * 0.37)[0])


def test_linear_drift_does_not_apply_to_other_drifts():
    class Shifted(sd.VPSDE):
        def sde(self, x, t):  # not f(t) x: the table would be wrong
            drift, g = super().sde(x, t)
            return drift + 1.0, g

    assert not LinearDrift.applies(Shifted().reverse(_score))
    assert not LinearDrift.applies(sd.VPSDE().reverse(_score).reverse(_score))
    # and the sampler falls back to the SDE's own drift
    ds = sd.sample(Shifted(), _score, sd.EulerMaruyama(steps=5), shape=(4, 2), seed=1, progress=False)
    plain = sd.sample(sd.VPSDE(), _score, sd.EulerMaruyama(steps=5), shape=(4, 2), seed=1, progress=False)
    assert not np.allclose(ds["x"].values[-1], plain["x"].values[-1])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("sde", [sd.VPSDE(), sd.VESDE(), sd.DDPMSchedule.linear(T=50).sde()], ids=repr)
def test_reverse_diffusion_table_is_the_discretized_step_bit_for_bit(sde, dtype):
    pred = ReverseDiffusionPredictor()
    x = _x(dtype)
    times = np.linspace(1.0, 1e-3, 6).tolist()
    rsde = sde.reverse(_score)
    for t, t_next in zip(times[:-1], times[1:], strict=True):
        fast = pred.update(rsde, x, t, t_next, torch.Generator().manual_seed(2))
        f, G = rsde.discretize(x, t, t - t_next)
        z = torch.randn(x.shape, generator=torch.Generator().manual_seed(2), dtype=dtype)
        assert torch.equal(fast, (x - f).add_(G[:, None] * z))


def test_exponential_kernel_table_once_per_run(monkeypatch):
    """The exponential integrators take (s, sigma, lambda) of every grid time from one vectorised table per
    run (no per-step kernel evaluation), and the table holds kernel()'s values."""
    tables: list[list[float]] = []
    steps_calls: list[float] = []
    kernel, kernel_table = exponential.kernel, exponential.kernel_table

    def counted_table(sde, times):
        tables.append(list(np.asarray(times)))
        return kernel_table(sde, times)

    def counted(sde, t):
        steps_calls.append(t)
        return kernel(sde, t)

    monkeypatch.setattr(exponential, "kernel_table", counted_table)
    monkeypatch.setattr(exponential, "kernel", counted)
    for sampler in (sd.DDIM(steps=8), sd.DPMSolverPP(steps=8), sd.UniPC(steps=8)):
        tables.clear()
        steps_calls.clear()
        sd.sample(sd.VPSDE(), _score, sampler, shape=(4, 2), progress=False)
        assert len(tables) == 1 and len(tables[0]) == 9 and steps_calls == [], (sampler, tables, steps_calls)
    for sde in SDES:
        grid = sd.DPMSolverPP(steps=8).time_points(sde)
        for t, (s, sigma, lam) in kernel_table(sde, grid).items():
            s1, sigma1, lam1 = kernel(sde, t)
            np.testing.assert_allclose([s, sigma, lam], [s1, sigma1, lam1], rtol=1e-14, atol=0)


def test_multistep_grid_built_once_per_run(monkeypatch):
    sampler = sd.DPMSolverPP(order=3, steps=20, grid="uniform")
    calls = []
    time_points = type(sampler).time_points

    def counted(self, sde):
        calls.append(sde)
        return time_points(self, sde)

    monkeypatch.setattr(type(sampler), "time_points", counted)
    sd.sample(sd.VPSDE(), _score, sampler, shape=(4, 2), progress=False)
    assert len(calls) == 1
    # the lowering rule still sees the grid: uniform-t VP lowers the final orders (last lambda-step > 2x)
    assert sampler.uses_lower_order_final(sd.VPSDE())


def test_tables_are_per_run():
    # one sampler object on two SDEs in turn: each run has its own coefficients
    pc = sd.PredictorCorrector("ancestral", "langevin", steps=6)
    for sde in (sd.VPSDE(), sd.VESDE(), sd.VPSDE()):
        score = sd.mixture.pinwheel().score(sde)
        a = sd.sample(sde, score, pc, shape=(5, 2), seed=4, progress=False)["x"].values
        fresh = sd.PredictorCorrector("ancestral", "langevin", steps=6)
        b = sd.sample(sde, score, fresh, shape=(5, 2), seed=4, progress=False)["x"].values
        assert np.array_equal(a, b)


def test_counted_score_in_ddim_step_directly():
    # step() may be called with the counted score itself as the state (no run table)
    sde = sd.VPSDE()
    x = _x(torch.float64)
    run = exponential._Run(CountedScore(_score))
    a = sd.DDIM().step(run, sde, x, 0.5, 0.4, torch.Generator())
    b = sd.DDIM().step(CountedScore(_score), sde, x, 0.5, 0.4, torch.Generator())
    assert torch.equal(a, b)
