"""Divergence detection: every sampler raises DivergenceError, naming the step and time, when the
state becomes NaN/inf or leaves divergence_bound; correct runs record their largest |x|."""

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_score_contract import SAMPLERS

import scoresde as sd
from scoresde._guard import DivergenceGuard

BLOWUPS = {"nan": math.nan, "inf": math.inf, "1e30": 1e30}


class Blowup:
    """-x (the exact VP score of N(0, I) data), but ``value`` wherever t < tau; records bad calls."""

    def __init__(self, tau, value):
        self.tau, self.value = tau, value
        self.bad_times = []  # per call with a bad row: the times of the bad rows

    def __call__(self, x, t):
        bad = t < self.tau
        if bool(bad.any()):
            self.bad_times.append(t[bad].double().tolist())
        return torch.where(bad[:, None], torch.full_like(x, self.value), -x)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    which=st.integers(0, len(SAMPLERS) - 1),
    kind=st.sampled_from(sorted(BLOWUPS)),
    frac=st.floats(0.1, 0.9),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_a_blow_up_is_reported_at_its_time(which, kind, frac, dtype):
    sampler, sde = SAMPLERS[which]
    tau = sampler.eps + frac * (sde.T - sampler.eps)
    score = Blowup(tau, BLOWUPS[kind])
    try:
        ds = sd.sample(sde, score, sampler, shape=(5, 2), dtype=dtype, progress=False)
    except sd.DivergenceError as e:
        err = e
    else:  # only a run that never evaluated the score below tau may finish, or one whose state stayed bounded:
        # the SNR-rule Langevin move eps * s = 2 alpha (r |z|)^2 s / |s|^2 shrinks as the score grows
        langevin_only = isinstance(sampler, sd.PredictorCorrector) and sampler.predictor.name == "none"
        assert not score.bad_times or (langevin_only and kind == "1e30")
        assert np.isfinite(ds["x"].values).all() and ds.attrs["max_abs_x"] <= ds.attrs["divergence_bound"]
        return
    assert err.sampler == type(sampler).__name__
    assert type(sampler).__name__ in str(err) and "score_fn" in str(err)
    assert err.indices and set(err.indices) <= set(range(5))
    first = max(score.bad_times[0])  # the first time the score went bad (time runs down)
    tol = 1e-6 if dtype == torch.float32 else 1e-12
    if err.t_next is not None:  # fixed-step samplers: the step from t to t_next made the bad state
        assert err.t_next - tol <= first <= err.t + tol
        assert f"step {err.step}" in str(err)
    elif isinstance(sampler, sd.AdaptiveSDE):  # the proposal at a time where the score was bad
        assert any(abs(err.t - s) <= tol for call in score.bad_times for s in call)
    elif isinstance(sampler, sd.TorchSDE):  # the next state torchsde asked about, within a step
        h = (sde.T - sampler.eps) / sampler.steps
        assert first - h * (1 + 1e-6) - tol <= err.t < first + tol  # torchsde steps are h (1 + 1e-9) long
    else:  # scipy: at the evaluation (NaN/inf drift), or at a later one (1e30 shows in the next state)
        if kind == "1e30":
            assert sampler.eps - tol <= err.t < first + tol
        else:
            assert abs(err.t - first) <= tol
    if kind != "1e30":
        assert "NaN or inf" in str(err)
    else:
        assert "above divergence_bound" in str(err) and err.max_abs > err.bound


def test_default_bound_is_generous_and_recorded():
    # VE: the prior's scale is sigma_max, so the auto bound is 1e3 * (sigma_max + max(1, |x_T|_inf))
    ve = sd.VESDE(sigma_max=20.0)
    score = sd.eight_gaussians().score(ve)
    ds = sd.sample(ve, score, sd.EulerMaruyama(steps=50), shape=(64, 2), save_at=51, progress=False)
    x_T = np.abs(ds["x"].values[0]).max()
    assert ds.attrs["divergence_bound"] == pytest.approx(1e3 * (20.0 + max(1.0, x_T)))
    # every state is saved, so the recorded max |x| is the largest saved entry
    assert ds.attrs["max_abs_x"] == np.abs(ds["x"].values).max()
    vp = sd.VPSDE()
    ds = sd.sample(vp, sd.eight_gaussians().score(vp), sd.DDIM(steps=10), shape=(8, 2), progress=False)
    assert ds.attrs["max_abs_x"] >= np.abs(ds["x"].values).max()


def test_the_bound_can_be_set_and_disabled():
    vp = sd.VPSDE()

    def big(x, t):
        return torch.full_like(x, 1e5)  # finite, but drives |x| to ~1e6

    smp = sd.EulerMaruyama(steps=10)
    with pytest.raises(sd.DivergenceError, match="above divergence_bound"):
        sd.sample(vp, big, smp, shape=(4, 2), progress=False)
    ds = sd.sample(vp, big, smp, shape=(4, 2), progress=False, divergence_bound=None)
    assert ds.attrs["divergence_bound"] == math.inf and ds.attrs["max_abs_x"] > 1e5
    ds = sd.sample(vp, big, smp, shape=(4, 2), progress=False, divergence_bound=1e9)
    assert ds.attrs["divergence_bound"] == 1e9
    with pytest.raises(sd.DivergenceError, match="above divergence_bound=5"):
        sd.sample(
            vp,
            lambda x, t: torch.zeros_like(x),
            smp,
            shape=(4, 2),
            progress=False,
            divergence_bound=5.0,
            x_T=torch.full((4, 2), 9.0),
        )
    # NaN is an error even without a bound
    with pytest.raises(sd.DivergenceError, match="NaN or inf"):
        sd.sample(vp, lambda x, t: x * math.nan, smp, shape=(4, 2), progress=False, divergence_bound=None)


@pytest.mark.parametrize(
    "value,exc", [(0.0, ValueError), (-1.0, ValueError), (math.nan, ValueError), ("big", ValueError), (True, TypeError)]
)
def test_bad_bounds(value, exc):
    with pytest.raises(exc, match="divergence_bound"):
        sd.sample(sd.VPSDE(), lambda x, t: -x, sd.EulerMaruyama(steps=2), shape=(2, 2), divergence_bound=value)


def test_the_error_names_the_first_bad_samples():
    vp = sd.VPSDE()

    def score(x, t):
        out = -x.clone()
        out[[3, 7]] = math.inf if float(t[0]) < 0.5 else 0.0
        return out

    with pytest.raises(sd.DivergenceError, match=r"2 of 10 samples .*first bad samples: \[3, 7\]") as info:
        sd.sample(vp, score, sd.DDIM(steps=10), shape=(10, 2), progress=False)
    # DDIM's grid has step 0.0999; the first step that evaluates the score below t = 0.5 starts at 0.4006
    assert info.value.indices == [3, 7] and (info.value.step, info.value.t) == (6, pytest.approx(0.4006))


@pytest.mark.parametrize("lag", [0, 1])
def test_lagged_check_reports_the_same_step(lag):
    # devices other than the CPU read the check back one step later; the report is the same
    guard = DivergenceGuard("S", bound=10.0, lag=lag)
    guard.check(torch.ones(3, 2), 0, 1.0, 0.9)
    bad = torch.ones(3, 2)
    bad[1, 0] = 11.0
    with pytest.raises(sd.DivergenceError) as info:
        guard.check(bad, 1, 0.9, 0.8)
        guard.check(torch.ones(3, 2), 2, 0.8, 0.7)
        guard.finish()
    assert (info.value.step, info.value.t, info.value.t_next, info.value.indices) == (1, 0.9, 0.8, [1])
    assert guard.max_abs_x == 1.0


def test_lagged_check_resolves_the_last_step_at_finish():
    guard = DivergenceGuard("S", bound=10.0, lag=1)
    guard.check(torch.full((2, 2), math.nan), 4, 0.2, 0.1)
    with pytest.raises(sd.DivergenceError, match="S diverged at step 4"):
        guard.finish()


def test_adaptive_nan_score_is_not_blamed_on_the_tolerances():
    # it used to reject every step until max_iters and ask to loosen rtol/atol
    vp = sd.VPSDE()
    with pytest.raises(sd.DivergenceError, match="AdaptiveSDE diverged at iteration"):
        sd.sample(vp, Blowup(0.5, math.nan), sd.AdaptiveSDE(max_iters=200), shape=(4, 2), progress=False)


def test_scipy_blow_up_is_not_blamed_on_the_step_size():
    # it used to fail with scipy's "Required step size is less than spacing between numbers"
    vp = sd.VPSDE()
    with pytest.raises(sd.DivergenceError, match="ProbabilityFlowODE diverged at right-hand-side evaluation"):
        sd.sample(vp, Blowup(0.5, 1e30), sd.ProbabilityFlowODE(), shape=(4, 2), progress=False)


def test_denoising_step_is_checked():
    vp = sd.VPSDE()
    smp = sd.EulerMaruyama(steps=5, denoise=True)
    with pytest.raises(sd.DivergenceError, match="denoised state"):
        sd.sample(vp, Blowup(2e-3, math.nan), smp, shape=(4, 2), progress=False)
