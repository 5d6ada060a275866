"""torchdiffeq as a backend of the probability-flow ODE and of the likelihood: accuracy against the closed-form
flow of a Gaussian, no evaluation outside [eps, T], exact NFE, dtype kept, tolerances checked, failures reported,
and a clear ImportError without the optional dependency."""

import sys

import numpy as np
import pytest
import torch
from conftest import SDES

import scoresde as sd
from scoresde import cli
from scoresde.integrators.ode import solve_ode

pytest.importorskip("torchdiffeq")

EPS = 1e-3
GAUSS = sd.GaussianMixture([1.0], [[1.0, -0.5]], [[[0.8, 0.3], [0.3, 0.5]]])


class Recorder:
    def __init__(self, score):
        self.score, self.times, self.calls = score, [], 0

    def __call__(self, x, t):
        self.calls += 1
        self.times.extend(t.tolist())
        return self.score(x, t)


def gauss_run(sde, sampler, dtype=torch.float64, n=50, **kw):
    x_T = sde.prior_sampling((n, 2), generator=torch.Generator().manual_seed(0), dtype=dtype)
    rec = Recorder(GAUSS.score(sde))
    ds = sd.sample(sde, rec, sampler, x_T=x_T, progress=False, **kw)
    exact = GAUSS.flow_map(sde, x_T.double(), sde.T, sampler.eps)
    err = float((torch.from_numpy(ds["x"].values[-1]).double() - exact).norm(dim=1).max())
    return ds, rec, err


@pytest.mark.parametrize("sde", SDES, ids=repr)
@pytest.mark.parametrize("method", ["dopri5", "dopri8"])
def test_torchdiffeq_is_accurate_stays_in_eps_T_and_counts_nfe(sde, method):
    errs = []
    for tol in (1e-3, 1e-6):
        ds, rec, err = gauss_run(sde, sd.ProbabilityFlowODE(method, rtol=tol, atol=tol), save_at=3)
        errs.append(err)
        assert min(rec.times) >= EPS and max(rec.times) == sde.T
        assert ds.attrs["nfe"] == rec.calls == ds.attrs["stat_nfev"] == ds["nfe"].values[-1]
        t = ds["time"].values
        assert t[0] == sde.T and t[-1] == EPS and len(t) == 3
        assert err < 50 * tol, (method, tol, err)
    assert errs[1] < 1e-2 * errs[0]


def test_torchdiffeq_keeps_dtype_and_saves_exact_times():
    sde = sd.VPSDE()
    ds, rec, err = gauss_run(sde, sd.ProbabilityFlowODE("dopri5", rtol=1e-4, atol=1e-4), dtype=torch.float32)
    assert ds["x"].dtype == np.float32 and err < 5e-3
    # the same run in float64 from the same x_T, saved at given times (dense output, no extra NFE)
    times = [1.0, 0.7, 0.3, EPS]
    ds64, rec64, _ = gauss_run(sde, sd.ProbabilityFlowODE("dopri5", rtol=1e-8, atol=1e-8), save_at=times)
    np.testing.assert_array_equal(ds64["time"].values, times)
    x_T = torch.from_numpy(ds64["x"].values[0])
    for j, t in enumerate(times):
        np.testing.assert_allclose(ds64["x"].values[j], GAUSS.flow_map(sde, x_T, 1.0, t).numpy(), atol=1e-6)
    assert list(ds64["nfe"].values[:-1]) == [-1] * 3 and ds64["nfe"].values[-1] == rec64.calls


def test_the_backends_agree():
    sde = sd.VESDE()
    a = gauss_run(sde, sd.ProbabilityFlowODE("DOP853", rtol=1e-9, atol=1e-9))[0]["x"].values[-1]
    b = gauss_run(sde, sd.ProbabilityFlowODE("dopri8", rtol=1e-9, atol=1e-9))[0]["x"].values[-1]
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_tolerances_are_checked_as_for_scipy():
    with pytest.raises(ValueError, match="rtol"):
        sd.ProbabilityFlowODE("dopri5", rtol=1e-300)
    with pytest.raises(ValueError, match="float32"):  # float32 cannot resolve 1e-9
        gauss_run(sd.VPSDE(), sd.ProbabilityFlowODE("dopri5", rtol=1e-9, atol=1e-9), dtype=torch.float32)
    with pytest.raises(ValueError, match="torchdiffeq's"):
        sd.ProbabilityFlowODE("dopri7")
    assert sd.ProbabilityFlowODE("dopri5").params()["rtol"] == 1e-5


def test_solve_ode_reports_a_step_size_failure_and_refuses_times_outside_the_span():
    def nan_after(t, y):
        return y * float("nan") if t < 0.5 else -y

    sol = solve_ode(
        nan_after, (1.0, 0.0), torch.ones(3), method="dopri5", rtol=1e-3, atol=1e-3, desc="", progress=False
    )
    assert sol.status == -1 and "underflow" in sol.message and 0.0 <= sol.t[-1] <= 1.0
    seen = []

    def f(t, y):
        seen.append(t)
        return -y

    sol = solve_ode(
        f, (0.0, 2.0), torch.ones(2, dtype=torch.float64), method="bosh3", rtol=1e-6, atol=1e-6, desc="", progress=False
    )
    assert sol.status == 0 and min(seen) == 0.0 and 2.0 - 1e-12 <= max(seen) <= 2.0
    np.testing.assert_allclose(sol.ys[-1].numpy(), np.exp(-2.0), rtol=1e-4)


def test_a_run_that_fails_raises_with_the_time():
    def score(x, t):
        return torch.full_like(x, float("nan")) if float(t[0]) < 0.5 else -x

    with pytest.raises(sd.DivergenceError, match="drift"):
        sd.sample(sd.VPSDE(), score, sd.ProbabilityFlowODE("dopri5"), shape=(4, 2), progress=False)


def test_missing_torchdiffeq_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchdiffeq", None)  # makes `import torchdiffeq` raise ImportError
    with pytest.raises(ImportError, match=r"scoresde\[torchdiffeq\]"):
        sd.ProbabilityFlowODE("dopri5")
    with pytest.raises(ImportError, match=r"log_likelihood\(method='dopri5'\) needs the optional dependency"):
        sd.log_likelihood(sd.VPSDE(), GAUSS.score(sd.VPSDE()), torch.zeros(2, 2), method="dopri5")
    sd.ProbabilityFlowODE("RK45")  # scipy's methods do not need it


def test_likelihood_with_torchdiffeq():
    sde = sd.VPSDE()
    x = torch.tensor([[1.0, -0.5], [0.2, 0.3], [2.0, -1.0]], dtype=torch.float64)
    true = GAUSS.marginal(sde, 1e-5).log_prob(x)
    rec = Recorder(GAUSS.score(sde))
    res = sd.log_likelihood(sde, rec, x, method="dopri5", prior_logp=GAUSS.marginal(sde, sde.T).log_prob)
    assert float((res.log_prob - true).abs().max()) < 1e-3
    assert res.nfe == rec.calls and min(rec.times) >= 1e-5 and sde.T - 1e-12 <= max(rec.times) <= sde.T
    with pytest.raises(ValueError, match="torchdiffeq's"):
        sd.log_likelihood(sde, rec, x, method="dopri7")


def test_cli_ode_with_a_torchdiffeq_method(tmp_path, monkeypatch):
    import xarray as xr

    monkeypatch.setenv("SCORESDE_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "out"
    args = ["sample", "--out", str(out), "--sampler", "ode", "--method", "dopri5", "--rtol", "1e-3", "--atol", "1e-3"]
    assert cli.main([*args, "--n-samples", "50", "--quiet"]) == 0
    with xr.open_dataset(out / "samples.nc") as ds:
        assert ds.attrs["sampler_method"] == "dopri5" and ds.attrs["nfe"] > 0
