"""Samplers: exactness on Gaussian targets, arguments, saving, predictors and correctors (the contract every
sampler meets is in test_sampler_contract.py)."""

import math

import numpy as np
import pytest
import torch
import xarray as xr
from conftest import SDES
from hypothesis import given, settings
from hypothesis import strategies as st

import scoresde as sd
from scoresde.integrators.correctors import AnnealedLangevinCorrector, Corrector


def small_samplers(steps=8):
    return [
        sd.EulerMaruyama(steps=steps),
        sd.PredictorCorrector(steps=steps),
        sd.PredictorCorrector("euler_maruyama", "ald", steps=steps, corrector_steps=2),
        sd.PredictorCorrector("ancestral", "none", steps=steps),
        sd.PredictorCorrector("none", "langevin", steps=steps),
        sd.ProbabilityFlowODE("RK45", rtol=1e-3, atol=1e-3),
        sd.ProbabilityFlowODE("euler", steps=steps),
        sd.ProbabilityFlowODE("heun", steps=steps),
        sd.TorchSDE("euler", steps=steps),
        sd.TorchSDE("milstein", steps=steps),
        sd.TorchSDE("srk", steps=steps),
    ]


def _ok_for(sampler, sde):
    return not (
        isinstance(sampler, sd.PredictorCorrector)
        and sampler.predictor.name == "ancestral"
        and isinstance(sde, sd.SubVPSDE)
    )


@pytest.mark.parametrize("sampler", small_samplers(steps=5), ids=repr)
def test_float64_and_images(sampler):
    sde = (
        sd.VESDE()
        if isinstance(sampler, sd.PredictorCorrector) and sampler.predictor.name == "ancestral"
        else sd.VPSDE()
    )

    def score(x, t):  # exact score of N(0, I) data, any feature shape
        _, _, s, sigma = sde.coefficients(t, like=x)
        return -x / (s**2 + sigma**2).reshape(-1, *[1] * (x.dim() - 1))

    ds = sd.sample(sde, score, sampler, shape=(3, 1, 4, 4), dtype=torch.float64, progress=False)
    assert ds["x"].dims == ("time", "sample", "channel", "height", "width")
    assert ds["x"].dtype == np.float64 and ds.attrs["dtype"] == "float64"
    assert np.isfinite(ds["x"].values).all()


@settings(max_examples=12, deadline=None)
@given(steps=st.sampled_from([1, 2, 3, 17, 1000]), idx=st.integers(0, 10), sde_i=st.integers(0, 2))
def test_any_step_count_is_finite(steps, idx, sde_i):
    sde = SDES[sde_i]
    sampler = small_samplers(steps)[idx]
    if not _ok_for(sampler, sde) or (steps == 1000 and isinstance(sampler, sd.TorchSDE)):
        return
    ds = sd.sample(sde, sd.eight_gaussians().score(sde), sampler, shape=(16, 2), progress=False)
    assert np.isfinite(ds["x"].values).all()


def test_netcdf_round_trip(tmp_path):
    sde = sd.VESDE()
    ds = sd.sample(
        sde,
        sd.eight_gaussians().score(sde),
        sd.PredictorCorrector(steps=20, denoise=True),
        shape=(50, 2),
        seed=11,
        save_at=5,
        progress=False,
    )
    path = tmp_path / "run.nc"
    ds.to_netcdf(path)
    back = xr.open_dataset(path)
    xr.testing.assert_identical(back.load(), ds)
    back.close()
    assert back.attrs["sde"] == "VESDE" and back.attrs["sde_sigma_max"] == 50.0
    assert back.attrs["sampler"] == "PredictorCorrector" and back.attrs["seed"] == 11
    assert back.attrs["eps"] == 1e-3 and back.attrs["nfe"] == 20 * 2 + 1
    assert "scoresde_version" in back.attrs and "sampler_params" in back.attrs
    # the denoised state is saved at t = 0 after the state at eps
    assert back["time"].values[-2:].tolist() == [1e-3, 0.0]


def test_save_at_times_and_validation():
    sde = sd.VPSDE()
    score = sd.eight_gaussians().score(sde)
    ds = sd.sample(sde, score, sd.EulerMaruyama(steps=10), shape=(4, 2), save_at=[0.5, 1.0], progress=False)
    assert np.allclose(ds["time"].values, [1.0, 0.5005, 1e-3])  # nearest grid times, and the end
    ode = sd.sample(sde, score, sd.ProbabilityFlowODE(), shape=(4, 2), save_at=[0.5, 0.25], progress=False)
    assert np.allclose(ode["time"].values, [1.0, 0.5, 0.25, 1e-3])  # exact times for scipy
    with pytest.raises(ValueError, match="save_at"):
        sd.sample(sde, score, sd.EulerMaruyama(steps=10), shape=(4, 2), save_at=[2.0])
    with pytest.raises(ValueError, match="save_at"):
        sd.sample(sde, score, sd.EulerMaruyama(steps=10), shape=(4, 2), save_at=1)


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(shape=None), ValueError, "shape"),
        (dict(shape=(0, 2)), ValueError, "shape"),
        (dict(shape=(4, 2), seed=-1), ValueError, "seed"),
        (dict(shape=(4, 2), dtype=torch.int64), ValueError, "dtype"),
        (dict(x_T=torch.full((4, 2), float("nan"))), ValueError, "x_T"),
        (dict(x_T=torch.zeros(4, 2), shape=(5, 2)), ValueError, "shape"),
    ],
)
def test_sample_bad_input(kwargs, exc, match):
    sde = sd.VPSDE()
    with pytest.raises(exc, match=match):
        sd.sample(sde, sd.eight_gaussians().score(sde), sd.EulerMaruyama(steps=2), progress=False, **kwargs)


def test_sampler_bad_parameters():
    with pytest.raises(ValueError, match="steps"):
        sd.EulerMaruyama(steps=0)
    with pytest.raises(ValueError, match="eps"):
        sd.EulerMaruyama(eps=-1e-3)
    with pytest.raises(ValueError, match="predictor"):
        sd.PredictorCorrector(predictor="leapfrog")
    with pytest.raises(ValueError, match="corrector"):
        sd.PredictorCorrector(corrector="hmc")
    with pytest.raises(ValueError, match="snr"):
        sd.PredictorCorrector(snr=float("nan"))
    with pytest.raises(ValueError, match="method"):
        sd.ProbabilityFlowODE("rk4")
    with pytest.raises(ValueError, match="method"):
        sd.TorchSDE("leapfrog")
    with pytest.raises(ValueError, match="eps"):
        sd.sample(sd.VPSDE(), lambda x, t: x, sd.EulerMaruyama(eps=2.0), shape=(2, 2))


def test_no_autograd_graph():
    sde = sd.VPSDE()
    seen = []

    def score(x, t):
        seen.append(torch.is_grad_enabled())
        return -x

    sd.sample(sde, score, sd.EulerMaruyama(steps=3), shape=(2, 2), progress=False)
    assert seen == [False, False, False]


# ------------------------------------------------------------------------------------
# Exactness on a single Gaussian N(m, C): closed-form maps and moments
# ------------------------------------------------------------------------------------
GAUSS = sd.GaussianMixture([1.0], [[1.0, -0.5]], [[[0.8, 0.3], [0.3, 0.5]]])


def ode_end_error(sde, sampler, n=200):
    x_T = sde.prior_sampling((n, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ds = sd.sample(sde, GAUSS.score(sde), sampler, x_T=x_T, progress=False)
    assert np.array_equal(ds["x"].values[0], x_T.numpy())  # the start is kept
    end = torch.from_numpy(ds["x"].values[-1])
    return float((end - GAUSS.flow_map(sde, x_T, sde.T, sampler.eps)).norm(dim=1).max())


@pytest.mark.parametrize("sde", SDES, ids=repr)
@pytest.mark.parametrize("method, order", [("euler", 1), ("heun", 2)])
def test_fixed_step_ode_converges_at_its_order(sde, method, order):
    errs = [ode_end_error(sde, sd.ProbabilityFlowODE(method, steps=n)) for n in (200, 400, 800)]
    rates = [math.log2(a / b) for a, b in zip(errs, errs[1:], strict=False)]
    assert all(abs(r - order) < 0.25 for r in rates), (errs, rates)


@pytest.mark.parametrize("sde", SDES, ids=repr)
def test_rk45_tracks_its_tolerance(sde):
    coarse = ode_end_error(sde, sd.ProbabilityFlowODE("RK45", rtol=1e-4, atol=1e-4))
    fine = ode_end_error(sde, sd.ProbabilityFlowODE("RK45", rtol=1e-8, atol=1e-8))
    assert coarse < 2e-2 and fine < 2e-5 and fine < coarse / 50


def em_moments(sde, steps, eps=1e-3, start="prior"):
    """Exact mean and covariance of the Euler-Maruyama recursion for a Gaussian target, started
    from the SDE's prior or from the exact marginal at T (which removes the prior-mismatch bias)."""
    C, m = GAUSS.covariances[0], GAUSS.means[0]
    eye = torch.eye(2, dtype=torch.float64)
    if start == "prior":
        mean, P = torch.zeros(2, dtype=torch.float64), sde.prior_std**2 * eye
    else:
        mT = GAUSS.marginal(sde, sde.T)
        mean, P = mT.mean(), mT.covariance()
    grid = np.linspace(sde.T, eps, steps + 1)
    for t, tn in zip(grid[:-1], grid[1:], strict=True):
        f, g, s, sig = sde.coefficients(float(t))
        dt = tn - t
        Ct_inv = torch.linalg.inv(s**2 * C + sig**2 * eye)
        A = eye + (f * eye + g**2 * Ct_inv) * dt
        b = -(g**2) * dt * (Ct_inv @ (s * m))
        mean = A @ mean + b
        P = A @ P @ A.T + g**2 * abs(dt) * eye
    return mean, P


@pytest.mark.parametrize("sde", SDES, ids=repr)
def test_euler_maruyama_moments_are_exact_for_a_gaussian(sde):
    n = 40_000
    for steps in (5, 20):
        ds = sd.sample(
            sde,
            GAUSS.score(sde),
            sd.EulerMaruyama(steps=steps),
            shape=(n, 2),
            seed=steps,
            dtype=torch.float64,
            progress=False,
        )
        x = torch.from_numpy(ds["x"].values[-1])
        mean, P = em_moments(sde, steps)
        se = torch.sqrt(torch.diag(P) / n)
        assert torch.all((x.mean(0) - mean).abs() < 5 * se), (steps, x.mean(0), mean)
        # covariance entries: se of a sample covariance ~ sqrt((P_ii P_jj + P_ij^2) / n)
        cov_se = torch.sqrt((torch.outer(torch.diag(P), torch.diag(P)) + P**2) / n)
        assert torch.all((torch.cov(x.T) - P).abs() < 5 * cov_se), (steps, torch.cov(x.T), P)


@pytest.mark.parametrize("sde", SDES, ids=repr)
def test_euler_maruyama_bias_is_weak_order_one(sde):
    eps = 1e-3
    m = GAUSS.marginal(sde, eps)
    true_mean, true_cov = m.mean(), m.covariance()

    def bias(steps):
        mean, P = em_moments(sde, steps, eps, start="exact")
        return float((mean - true_mean).norm() + (P - true_cov).norm())

    errs = [bias(n) for n in (250, 500, 1000, 2000)]
    rates = [math.log2(a / b) for a, b in zip(errs, errs[1:], strict=False)]
    # at least first order (VE, with f = 0, shows second order on Gaussian moments)
    assert rates[-1] > 0.85 and (isinstance(sde, sd.VESDE) or abs(rates[-1] - 1) < 0.15), (errs, rates)
    assert errs[-2] < 0.05  # the default 1000 steps


# ------------------------------------------------------------------------------------
# TorchSDE(brownian=...): a user Brownian motion
# ------------------------------------------------------------------------------------
def test_torchsde_user_brownian_motion():
    import functools

    import torchsde

    sde = sd.VPSDE()
    score = GAUSS.score(sde)
    x_T = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    calls = []

    def factory(**kwargs):
        calls.append(kwargs)
        return torchsde.BrownianInterval(entropy=42, **kwargs)

    def end(sampler, seed):
        ds = sd.sample(sde, score, sampler, x_T=x_T, seed=seed, progress=False)
        return ds, torch.from_numpy(ds["x"].values[-1])

    ds, a = end(sd.TorchSDE("srk", steps=10, brownian=factory), seed=1)
    _, b = end(sd.TorchSDE("srk", steps=10, brownian=factory), seed=2)
    assert torch.equal(a, b)  # the path comes from the factory: the run's generator is not used
    assert set(calls[0]) == {"t0", "t1", "size", "dtype", "device", "dt", "levy_area_approximation"}
    assert calls[0]["t0"] == 0.0 and calls[0]["t1"] == pytest.approx(sde.T - 1e-3)
    assert tuple(calls[0]["size"]) == (64, 2) and calls[0]["dtype"] == torch.float64
    assert calls[0]["dt"] == pytest.approx((sde.T - 1e-3) / 10)
    assert calls[0]["levy_area_approximation"] == "space-time"
    assert ds.attrs["sampler_brownian"] == "factory"
    # functools.partial(BrownianInterval, entropy=...) is a valid factory; euler asks for no Levy area
    _, c = end(
        sd.TorchSDE("euler", steps=10, brownian=functools.partial(torchsde.BrownianInterval, entropy=42)), seed=3
    )
    assert torch.isfinite(c).all() and not torch.equal(c, a)
    # the default is unchanged: seeded from the run's generator
    _, d1 = end(sd.TorchSDE("srk", steps=10), seed=1)
    _, d2 = end(sd.TorchSDE("srk", steps=10), seed=1)
    assert torch.equal(d1, d2) and "brownian" not in sd.TorchSDE().params()
    with pytest.raises(TypeError, match="brownian"):
        sd.TorchSDE(brownian=3)


def test_torchsde_drift_cache_changes_nothing_but_the_nfe(monkeypatch):
    """torchsde's SRA1 asks twice for the drift at (t0, y0); the cached answer gives bit-identical samples
    with 2N instead of 3N + 2 score evaluations (euler: N instead of N + 2)."""
    from scoresde.integrators.torchsde import TorchsdeReverse

    sde = sd.VPSDE()
    score = sd.eight_gaussians().score(sde)
    cached = {
        m: sd.sample(sde, score, sd.TorchSDE(m, steps=25), shape=(64, 2), seed=3, progress=False)
        for m in ("srk", "euler")
    }

    def uncached(self, u, y):
        drift, _ = self.rsde.sde(y.reshape(self.shape), self.T - float(u))
        return -drift.reshape(y.shape)

    monkeypatch.setattr(TorchsdeReverse, "f", uncached)
    for m, nfe in (("srk", 3 * 25 + 2), ("euler", 25 + 2)):
        plain = sd.sample(sde, score, sd.TorchSDE(m, steps=25), shape=(64, 2), seed=3, progress=False)
        np.testing.assert_array_equal(plain["x"].values, cached[m]["x"].values)
        assert plain.attrs["nfe"] == nfe
        assert cached[m].attrs["nfe"] == (2 * 25 if m == "srk" else 25)


@pytest.mark.parametrize("sde", [sd.VPSDE(), sd.VESDE()], ids=repr)
def test_langevin_with_a_zero_score_takes_the_annealed_step(sde):
    # the SNR step 2 alpha (r |z| / |s|)^2 is infinite at s = 0 (it returned all NaN); it falls back to the
    # annealed-Langevin step 2 alpha (r sigma(t))^2, so the run equals corrector="ald" with the same noise
    def zero(x, t):
        return torch.zeros_like(x)

    kw = dict(shape=(16, 2), seed=2, dtype=torch.float64, progress=False, save_at=6)
    lang = sd.sample(sde, zero, sd.PredictorCorrector("none", "langevin", steps=5, corrector_steps=2), **kw)
    ald = sd.sample(sde, zero, sd.PredictorCorrector("none", "ald", steps=5, corrector_steps=2), **kw)
    assert np.isfinite(lang["x"].values).all()
    np.testing.assert_allclose(lang["x"].values, ald["x"].values, rtol=1e-14, atol=0)
    # and with a predictor, as a ScoreModel whose last layer starts at zero gives
    pc = sd.sample(sde, zero, sd.PredictorCorrector(steps=5), **kw)
    assert np.isfinite(pc["x"].values).all()


def test_reversed_sde_is_rejected():
    sde = sd.VPSDE()
    score = sd.eight_gaussians().score(sde)
    for bad in (sde.reverse(score), sde.reverse(score, probability_flow=True)):
        for sampler in (sd.EulerMaruyama(steps=3), sd.DDIM(steps=3), sd.AdaptiveSDE()):
            with pytest.raises(ValueError, match="reversed SDE.*forward"):
                sd.sample(bad, score, sampler, shape=(4, 2), progress=False)


@pytest.mark.parametrize(
    "sampler,cap",
    [
        (sd.EulerMaruyama(steps=20), 21),
        (sd.PredictorCorrector(steps=7), 8),
        (sd.ProbabilityFlowODE("heun", steps=5), 6),
        (sd.DDIM(steps=4), 5),
        (sd.UniPC(steps=6, grid="uniform"), 7),
        (sd.FlowODE(steps=3), 4),
    ],
    ids=repr,
)
def test_save_at_beyond_the_grid_is_rejected_before_allocating(sampler, cap):
    sde = sd.VPSDE()
    score = sd.eight_gaussians().score(sde)
    assert sampler.max_saved_states(sde) == cap
    ds = sd.sample(sde, score, sampler, shape=(4, 2), save_at=cap, progress=False)
    assert ds.sizes["time"] == cap
    # 10**9 used to allocate past 3 GB and 10**7 to hang; the error comes at once
    for n in (cap + 1, 10**7, 10**9):
        with pytest.raises(ValueError, match=rf"save_at={n} asks for {n} saved states.*at most {cap}"):
            sd.sample(sde, score, sampler, shape=(4, 2), save_at=n, progress=False)
    with pytest.raises(ValueError, match="at most"):
        sd.sample(sde, score, sampler, shape=(4, 2), save_at=list(np.linspace(1.0, 0.01, cap + 1)), progress=False)


def test_save_capacity_of_exact_time_and_ddpm_samplers():
    sde = sd.VPSDE()
    assert sd.ProbabilityFlowODE("RK45").max_saved_states(sde) is None
    assert sd.TorchSDE(steps=3).max_saved_states(sde) is None
    ddpm = sd.DDPMSchedule.linear(T=10).sde()
    assert sd.DDPMAncestral().max_saved_states(ddpm) == 11
    with pytest.raises(ValueError, match="save_at=12 .*at most 11"):
        sd.sample(ddpm, sd.eight_gaussians().score(ddpm), sd.DDPMAncestral(), shape=(4, 2), save_at=12, progress=False)


# -- predictors and correctors as objects -------------------------------------------------------
class FixedStepLangevin(Corrector):
    """A user corrector: plain Langevin moves x <- x + delta s(x, t) + sqrt(2 delta) z with a fixed delta."""

    name = "fixed_langevin"

    def __init__(self, delta, steps=1):
        super().__init__(steps=steps)
        self.delta = delta

    def update(self, rsde, x, t, t_next, generator):
        for _ in range(self.steps):
            score = rsde.score_fn(x, torch.full((x.shape[0],), t, dtype=x.dtype))
            z = torch.randn(x.shape, generator=generator, dtype=x.dtype)
            x = x + self.delta * score + math.sqrt(2 * self.delta) * z
        return x


def test_a_user_corrector_runs_inside_predictor_corrector():
    sde, delta = sd.VESDE(), 0.01
    target = sd.eight_gaussians()
    score = target.score(sde)
    x_T = torch.randn(16, 2, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    pc = sd.PredictorCorrector("none", FixedStepLangevin(delta, steps=2), steps=3)
    ds = sd.sample(sde, score, pc, x_T=x_T, seed=5, dtype=torch.float64, progress=False)
    # by hand: on the grid linspace(T, eps, 4) two Langevin moves at each of t_0, t_1, t_2 (the predictor is none)
    g = torch.Generator().manual_seed(5)
    x = x_T.clone()
    for t in np.linspace(sde.T, pc.eps, 4)[:-1]:
        for _ in range(2):
            s = score(x, torch.full((16,), float(t), dtype=torch.float64))
            x = x + delta * s + math.sqrt(2 * delta) * torch.randn(x.shape, generator=g, dtype=torch.float64)
    np.testing.assert_array_equal(ds["x"].values[-1], x.numpy())
    assert ds.attrs["nfe"] == 3 * 2 == pc.steps * pc.corrector.nfe
    assert ds.attrs["sampler_corrector"] == "fixed_langevin"
    with pytest.raises(ValueError, match="carries its own"):
        sd.PredictorCorrector(corrector=FixedStepLangevin(delta), corrector_steps=3)


@pytest.mark.parametrize("name", ["euler_maruyama", "reverse_diffusion", "ancestral", "none"])
def test_predictor_names_and_instances_give_the_same_run(name):
    sde = sd.VPSDE()
    score = sd.eight_gaussians().score(sde)
    kw = dict(shape=(8, 2), seed=2, progress=False)
    a = sd.sample(sde, score, sd.PredictorCorrector(name, "langevin", steps=4), **kw)
    b = sd.sample(sde, score, sd.PredictorCorrector(sd.samplers.PREDICTORS[name](), "langevin", steps=4), **kw)
    np.testing.assert_array_equal(a["x"].values, b["x"].values)
    assert a.attrs["sampler_params"] == b.attrs["sampler_params"]


def test_annealed_langevin_alias_is_ald():
    pc = sd.PredictorCorrector(corrector="annealed_langevin", corrector_steps=2, snr=0.1)
    assert isinstance(pc.corrector, AnnealedLangevinCorrector)
    assert pc.params()["corrector"] == "annealed_langevin" and pc.corrector_steps == 2 and pc.snr == 0.1
    with pytest.raises(TypeError, match="Predictor"):
        sd.PredictorCorrector(predictor=3)


def test_ancestral_predictor_is_checked_by_kernel_not_class():
    from scoresde.integrators.predictors import AncestralPredictor

    anc = AncestralPredictor()
    for sde in (sd.VPSDE(), sd.VESDE(), sd.DDPMSchedule.linear(T=10).sde()):
        anc.check(sde)
    with pytest.raises(ValueError, match="SubVPSDE"):
        anc.check(sd.SubVPSDE())


def test_ancestral_predictor_on_ddpm_is_the_ddpm_step():
    # on DDPMSDE's grid t_i = i/N the ancestral step is x' = (x + beta_i s) / sqrt(1 - beta_i) + sqrt(beta_i) z,
    # with beta_i the schedule's own (s(t_i)^2 = alpha_bar_i exactly)
    sch = sd.DDPMSchedule.linear(T=4)
    sde = sch.sde()
    score = sd.eight_gaussians().score(sde)
    x_T = torch.randn(8, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    pc = sd.PredictorCorrector("ancestral", "none", steps=4, eps=1e-9)
    ds = sd.sample(sde, score, pc, x_T=x_T, seed=3, dtype=torch.float64, progress=False)
    g = torch.Generator().manual_seed(3)
    x = x_T.clone()
    grid = np.linspace(1.0, 1e-9, 5)
    for i in range(4):
        beta = 1 - float(sde.mean_coef(torch.tensor(grid[i], dtype=torch.float64)) ** 2) / float(
            sde.mean_coef(torch.tensor(grid[i + 1], dtype=torch.float64)) ** 2
        )
        if i < 3:
            np.testing.assert_allclose(beta, float(sch.betas[3 - i]), rtol=1e-6)
        s = score(x, torch.full((8,), grid[i], dtype=torch.float64))
        z = torch.randn(x.shape, generator=g, dtype=torch.float64)
        x = (x + beta * s) / math.sqrt(1 - beta) + math.sqrt(beta) * z
    np.testing.assert_allclose(ds["x"].values[-1], x.numpy(), rtol=1e-10, atol=1e-12)
