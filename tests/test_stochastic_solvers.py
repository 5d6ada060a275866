"""EDMStochastic, DPMSolverPPSDE and ERSDE: exact answers where the maths gives them.

* a (near) point-mass target makes the data prediction constant, and then all three are exact in
  distribution for any number of steps: mean and variance of x_eps match the exact marginal within a few
  standard errors (this pins the noise terms and the linear parts);
* with the noise switched off they are ODE solvers of known order: observed orders against a tight DOP853
  solve of the probability-flow ODE from the same x_T (this pins the multistep corrections);
* ``S_churn = 0`` is EDM's deterministic Heun (Algorithm 1), written out here in (sigma/s, x/s);
* a Gaussian target at moderate steps: mean and variance within a few standard errors;
* the ER-SDE weights against closed forms, argument errors, the CLI.
"""

import json
import math

import numpy as np
import pytest
import torch
import xarray as xr
from conftest import SDES

import scoresde as sd
from scoresde import cli
from scoresde.schedules import log_snr

EPS = 1e-3


def _sample(sde, target, sampler, n, seed=0, x_T=None, dtype=torch.float64):
    kw = {"x_T": x_T} if x_T is not None else {"shape": (n, target.dim)}
    ds = sd.sample(sde, target.score(sde), sampler, seed=seed, progress=False, dtype=dtype, **kw)
    return torch.from_numpy(ds["x"].values[-1]), ds


def _assert_moments(x, mean, var, k=4.5):
    """Per-coordinate mean and variance of the samples within k standard errors of the exact ones."""
    n = x.shape[0]
    se_mean = torch.sqrt(var / n)
    se_var = var * math.sqrt(2.0 / (n - 1))
    z_mean = (x.mean(0) - mean) / se_mean
    z_var = (x.var(0) - var) / se_var
    assert z_mean.abs().max() < k and z_var.abs().max() < k, (z_mean, z_var)


#: the stochastic samplers of this module, from a number of steps
NEW = {
    "edm": lambda n: sd.EDMStochastic(n, S_churn=40.0),
    "edm_uniform": lambda n: sd.EDMStochastic(n, grid="uniform", S_churn=5.0),
    "dpm2m_sde": lambda n: sd.DPMSolverPPSDE(2, n),
    "dpm1_sde": lambda n: sd.DPMSolverPPSDE(1, n, grid="karras"),
    "dpm2m_sde_eta": lambda n: sd.DPMSolverPPSDE(2, n, grid="quadratic", eta=0.4),
    "er_sde3": lambda n: sd.ERSDE(3, n),
    "er_sde2_karras": lambda n: sd.ERSDE(2, n, grid="karras"),
    "er_sde3_reverse_sde": lambda n: sd.ERSDE(3, n, grid="uniform", noise_scale=lambda s: s**2),
}


@pytest.mark.parametrize("sde", SDES, ids=repr)
@pytest.mark.parametrize("name", NEW)
def test_exact_in_distribution_for_a_point_mass(name, sde):
    """D is constant for a point mass (here variance 1e-14, far below sigma(eps)^2), so any step count gives the
    exact marginal; x_T is drawn from the exact p_T (VE's prior N(0, sigma_max^2) is not)."""
    target = sd.GaussianMixture([1.0], [[1.5, -0.5]], 1e-14)
    x_T = target.marginal(sde, sde.T).sample(20_000, torch.Generator().manual_seed(11), dtype=torch.float64)
    x, _ = _sample(sde, target, NEW[name](3), n=None, x_T=x_T)
    exact = target.marginal(sde, EPS)
    _assert_moments(x, exact.means[0], torch.diagonal(exact.covariances[0]))


def test_the_point_mass_check_can_fail():
    """A noise term off by 10 % is caught by the same check."""
    target = sd.GaussianMixture([1.0], [[1.5, -0.5]], 1e-14)
    sde = sd.VPSDE()
    x_T = target.marginal(sde, sde.T).sample(20_000, torch.Generator().manual_seed(11), dtype=torch.float64)
    x, _ = _sample(sde, target, sd.DPMSolverPPSDE(1, 3, S_noise=1.1), n=None, x_T=x_T)
    exact = target.marginal(sde, EPS)
    with pytest.raises(AssertionError):
        _assert_moments(x, exact.means[0], torch.diagonal(exact.covariances[0]))


GAUSSIAN = sd.GaussianMixture([1.0], [[1.0, -2.0]], [[0.3, 1.2]])


@pytest.mark.parametrize("sde", SDES, ids=repr)
@pytest.mark.parametrize("name", ["dpm2m_sde", "er_sde3"])
def test_gaussian_target_moments(name, sde):
    """A Gaussian N(m, c) target from the exact p_T: at 100 NFE the bias is below the sampling error of 20,000
    samples."""
    x_T = GAUSSIAN.marginal(sde, sde.T).sample(20_000, torch.Generator().manual_seed(12), dtype=torch.float64)
    x, ds = _sample(sde, GAUSSIAN, NEW[name](100), n=None, x_T=x_T, seed=2)
    assert ds.attrs["nfe"] == 100
    exact = GAUSSIAN.marginal(sde, EPS)
    _assert_moments(x, exact.means[0], torch.diagonal(exact.covariances[0]))


def edm_gaussian_moments(sde, sampler, mean_T, var_T, m, c):
    """Mean and variance (per coordinate, in x) of EDMStochastic's output for the target N(m, c), from
    x_T ~ N(mean_T, var_T): the churn adds variance q^2 and the Heun step is affine, x~ - m -> a (x~ - m), with
    D(x~, sigma) = m + kappa (x~ - m), kappa = c / (c + sigma^2)."""
    times, _, t_hat = sampler.churn(sde)
    s = sde.mean_coef(torch.tensor(times)).numpy()
    level = np.exp(-log_snr(sde, times))
    level_hat = np.exp(-log_snr(sde, t_hat))
    mu, v = mean_T / s[0] - m, var_T / s[0] ** 2
    for i in range(len(times) - 1):
        v = v + (level_hat[i] ** 2 - level[i] ** 2) * sampler.S_noise**2
        sh, sn = level_hat[i], level[i + 1]
        k1, k2 = c / (c + sh**2), c / (c + sn**2)
        e = 1 + (sn - sh) * (1 - k1) / sh  # Euler: x~' - m = e (x^ - m)
        a = 1 + 0.5 * (sn - sh) * ((1 - k1) / sh + (1 - k2) * e / sn)
        mu, v = a * mu, a * a * v
    return s[-1] * (mu + m), s[-1] ** 2 * v


@pytest.mark.parametrize("sde", SDES, ids=repr)
def test_edm_gaussian_moments_follow_its_algorithm(sde):
    """For a Gaussian target the EDM step is affine plus churn noise: the samples' moments match those of the
    algorithm (computed independently above) within a few standard errors, and with many steps these tend to
    the exact marginal's."""
    m, c = GAUSSIAN.means[0].numpy(), np.diagonal(GAUSSIAN.covariances[0].numpy())
    p_T = GAUSSIAN.marginal(sde, sde.T)
    mean_T, var_T = p_T.means[0].numpy(), np.diagonal(p_T.covariances[0].numpy())
    sampler = sd.EDMStochastic(25, S_churn=10.0)
    x_T = p_T.sample(20_000, torch.Generator().manual_seed(12), dtype=torch.float64)
    x, ds = _sample(sde, GAUSSIAN, sampler, n=None, x_T=x_T, seed=2)
    mean, var = edm_gaussian_moments(sde, sampler, mean_T, var_T, m, c)
    _assert_moments(x, torch.from_numpy(mean), torch.from_numpy(var))
    exact = GAUSSIAN.marginal(sde, EPS)
    exact_mean, exact_var = exact.means[0].numpy(), np.diagonal(exact.covariances[0].numpy())
    fine_mean, fine_var = edm_gaussian_moments(sde, sd.EDMStochastic(2000, S_churn=10.0), mean_T, var_T, m, c)
    np.testing.assert_allclose(fine_mean, exact_mean, rtol=1e-4)
    np.testing.assert_allclose(fine_var, exact_var, rtol=1e-3)


# ---------------------------------------------------------------------------------------
# noise off: ODE solvers of known order
# ---------------------------------------------------------------------------------------
def edm_heun(sde, score_fn, x, times):
    """EDM's Algorithm 1 (deterministic Heun) in (sigma~ = sigma/s, x~ = x/s), every step a Heun step."""
    lam = log_snr(sde, times)
    s = sde.mean_coef(torch.tensor(times)).numpy()
    level = np.exp(-lam)

    def denoise(xt, i):
        xs = s[i] * xt
        score = score_fn(xs, torch.full((xs.shape[0],), float(times[i]), dtype=xs.dtype))
        return (xs + (level[i] * s[i]) ** 2 * score) / s[i]

    xt = x / s[0]
    for i in range(len(times) - 1):
        d = (xt - denoise(xt, i)) / level[i]
        x_next = xt + (level[i + 1] - level[i]) * d
        d2 = (x_next - denoise(x_next, i + 1)) / level[i + 1]
        xt = xt + (level[i + 1] - level[i]) * 0.5 * (d + d2)
    return s[-1] * xt


@pytest.mark.parametrize("sde", [sd.VPSDE(), sd.VESDE()], ids=repr)
def test_without_churn_edm_is_its_deterministic_heun(sde):
    target = sd.eight_gaussians()
    x_T = sde.prior_sampling((64, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    sampler = sd.EDMStochastic(7, grid="karras", S_churn=0.0)
    assert not sampler.stochastic
    x, _ = _sample(sde, target, sampler, n=None, x_T=x_T)
    expected = edm_heun(sde, target.score(sde), x_T, sampler.time_points(sde))
    torch.testing.assert_close(x, expected, rtol=1e-12, atol=1e-12)


def test_without_noise_the_first_order_solvers_are_ddim():
    sde, target = sd.SubVPSDE(), sd.eight_gaussians()
    x_T = sde.prior_sampling((64, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ddim, _ = _sample(sde, target, sd.DDIM(9, grid="karras"), n=None, x_T=x_T)
    for sampler in (sd.DPMSolverPPSDE(1, 9, grid="karras", eta=0.0), sd.ERSDE(1, 9, grid="karras", noise_scale=abs)):
        x, _ = _sample(sde, target, sampler, n=None, x_T=x_T)
        torch.testing.assert_close(x, ddim, rtol=1e-11, atol=1e-11)


def test_er_sde_with_the_reverse_sde_scale_is_sde_dpm_solver_1():
    """phi(sigma) = sigma^2 is the reverse SDE: ER-SDE-1 and SDE-DPM-Solver++1 draw the same noise."""
    sde, target = sd.VPSDE(), sd.eight_gaussians()
    a, _ = _sample(sde, target, sd.ERSDE(1, 12, grid="logsnr", noise_scale=lambda s: s * s), n=500, seed=3)
    b, _ = _sample(sde, target, sd.DPMSolverPPSDE(1, 12, grid="logsnr", eta=1.0), n=500, seed=3)
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


ORDERS = {
    "ER-SDE-1 (ODE)": (lambda n: sd.ERSDE(1, n, grid="logsnr", noise_scale=abs), 1.0),
    "ER-SDE-2 (ODE)": (lambda n: sd.ERSDE(2, n, grid="logsnr", noise_scale=abs), 2.0),
    "ER-SDE-3 (ODE)": (lambda n: sd.ERSDE(3, n, grid="logsnr", noise_scale=abs), 3.0),
    "DPM++2M (eta=0)": (lambda n: sd.DPMSolverPPSDE(2, n, grid="logsnr", eta=0.0, lower_order_final=False), 2.0),
    "EDM Heun (no churn)": (lambda n: sd.EDMStochastic(n // 2, grid="logsnr", S_churn=0.0), 2.0),
}


@pytest.fixture(scope="module")
def ode_reference():
    sde, target = sd.VPSDE(), sd.eight_gaussians()
    x_T = sde.prior_sampling((200, 2), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ref, _ = _sample(sde, target, sd.ProbabilityFlowODE("DOP853", rtol=1e-10, atol=1e-10), n=None, x_T=x_T)
    return sde, target, x_T, ref


@pytest.mark.parametrize("name", ORDERS)
def test_observed_order_without_noise(name, ode_reference):
    sde, target, x_T, ref = ode_reference
    factory, order = ORDERS[name]
    nfe = np.array([40, 80, 160])
    err = []
    for n in nfe:
        x, ds = _sample(sde, target, factory(int(n)), n=None, x_T=x_T)
        assert ds.attrs["nfe"] == n
        err.append(float(((x - ref) ** 2).sum(1).mean().sqrt()))
    slope = -np.polyfit(np.log(nfe), np.log(err), 1)[0]
    assert abs(slope - order) < 0.35, (name, err, slope)


# ---------------------------------------------------------------------------------------
# the pieces
# ---------------------------------------------------------------------------------------
def test_er_sde_weights_match_closed_forms_for_the_reverse_sde_scale():
    sde = sd.VESDE()
    solver = sd.ERSDE(3, 6, grid="logsnr", noise_scale=lambda s: s * s)
    level = np.exp(-log_snr(sde, solver.time_points(sde)))
    for i, (r, std, w1, w2) in enumerate(solver.weights(sde)):
        hi, lo = level[i], level[i + 1]
        assert r == pytest.approx((lo / hi) ** 2, rel=1e-14)
        assert std == pytest.approx(lo * math.sqrt(1 - (lo / hi) ** 2), rel=1e-12)
        # phi'/phi^2 = 2/s^3: w1 = lo^2 int_lo^hi 2 (s - hi)/s^3 ds, w2 = lo^2 int_lo^hi 2 (s - hi)^2/s^3 ds + ...
        w1_exact = lo**2 * (2 * (1 / lo - 1 / hi) - hi * (1 / lo**2 - 1 / hi**2))
        assert w1 == pytest.approx(w1_exact, rel=1e-9)
        j2 = 2 * math.log(hi / lo) - 4 * hi * (1 / lo - 1 / hi) + hi**2 * (1 / lo**2 - 1 / hi**2)
        w2_exact = lo**2 * j2 + ((hi - level[i - 1]) * w1_exact if i > 0 else 0.0)
        assert w2 == pytest.approx(w2_exact, rel=1e-8)


def test_edm_churn_stays_below_T_and_in_its_window():
    sde = sd.VPSDE()
    sampler = sd.EDMStochastic(10, grid="karras", S_churn=4.0, S_tmin=0.05, S_tmax=20.0)
    times, gammas, t_hat = sampler.churn(sde)
    level = np.exp(-log_snr(sde, times[:-1]))
    assert gammas[0] == 0.0 and t_hat[0] == sde.T  # the first level is sigma~(T): no room to churn
    inside = (level >= 0.05) & (level <= 20.0)
    assert np.all(gammas[~inside] == 0.0) and np.all(t_hat[~inside] == times[:-1][~inside])
    assert np.all(gammas[inside] == pytest.approx(0.4)) and inside[1:].sum() >= 3
    np.testing.assert_allclose(np.exp(-log_snr(sde, t_hat)), level * (1 + gammas), rtol=1e-9)
    assert np.all(t_hat <= sde.T) and np.all(t_hat >= times[:-1])
    big = sd.EDMStochastic(10, S_churn=100.0).churn(sde)[1]
    assert big.max() == pytest.approx(math.sqrt(2) - 1)


def test_argument_errors():
    with pytest.raises(ValueError, match="S_churn"):
        sd.EDMStochastic(S_churn=-1.0)
    with pytest.raises(ValueError, match="S_tmax"):
        sd.EDMStochastic(S_tmin=2.0, S_tmax=1.0)
    with pytest.raises(TypeError, match="S_tmax"):
        sd.EDMStochastic(S_tmax=math.nan)
    with pytest.raises(ValueError, match="order must be 1 or 2"):
        sd.DPMSolverPPSDE(order=3)
    with pytest.raises(ValueError, match="eta"):
        sd.DPMSolverPPSDE(eta=-0.5)
    with pytest.raises(ValueError, match="order must be 1, 2 or 3"):
        sd.ERSDE(order=4)
    with pytest.raises(TypeError, match="noise_scale"):
        sd.ERSDE(noise_scale=2.0)
    target, sde = sd.eight_gaussians(), sd.VESDE()
    with pytest.raises(ValueError, match="phi\\(sigma\\)/sigma must be nondecreasing"):
        _sample(sde, target, sd.ERSDE(2, 5, noise_scale=math.sqrt), n=10)
    with pytest.raises(ValueError, match="noise_scale must be finite and > 0"):
        _sample(sde, target, sd.ERSDE(2, 5, noise_scale=lambda s: -s), n=10)
    rf = sd.RectifiedFlow()
    for sampler in (sd.EDMStochastic(), sd.DPMSolverPPSDE(), sd.ERSDE()):
        with pytest.raises(ValueError, match="RectifiedFlow"):
            sampler.check(rf)


def test_float32_runs_stay_float32_and_reproducible():
    sde, target = sd.VESDE(), sd.eight_gaussians()
    for make in NEW.values():
        a, ds = _sample(sde, target, make(5), n=64, seed=7, dtype=torch.float32)
        b, _ = _sample(sde, target, make(5), n=64, seed=7, dtype=torch.float32)
        assert a.dtype == torch.float32 and torch.equal(a, b)


@pytest.mark.parametrize(
    ("name", "extra", "cls", "params", "nfe"),
    [
        ("edm-sde", ["--steps", "4", "--grid", "uniform"], "EDMStochastic", {"S_churn": 10.0, "steps": 4}, 8),
        ("dpmsolver++-sde", ["--steps", "5", "--eta", "0.5"], "DPMSolverPPSDE", {"eta": 0.5, "order": 2}, 5),
        ("er-sde", ["--steps", "5", "--order", "2", "--grid", "karras"], "ERSDE", {"order": 2}, 5),
    ],
)
def test_cli_runs_the_new_samplers(tmp_path, capsys, name, extra, cls, params, nfe):
    out = tmp_path / name
    argv = ["sample", "--out", str(out), "--sde", "vp", "--sampler", name, *extra, "--n-samples", "40"]
    assert cli.main([*argv, "--no-evaluate", "-q"]) == 0, capsys.readouterr().err
    with xr.open_dataset(out / "samples.nc") as ds:
        ds.load()
    assert ds.attrs["sampler"] == cls and ds.attrs["nfe"] == nfe
    recorded = json.loads(ds.attrs["sampler_params"])
    assert all(recorded[k] == v for k, v in params.items()), recorded
    assert np.isfinite(ds["x"].values).all()


# ---------------------------------------------------------------------------------------
# the floor band at <= 20 NFE (20,000 samples), as tests/test_acceptance.py
# ---------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("sde_name", ["vp", "subvp", "ve", "edm"])
def test_er_sde_within_the_floor_band_at_20_nfe(sde_name):
    """ER-SDE-Solver-3 (20 steps, log-SNR grid, 20 NFE) is statistically indistinguishable from exact samples of
    p_eps at 20,000 samples: SW and energy distance within the floor's mean + 3 sd and mode weights within 3
    standard errors family-wise; two of three seeds, as the acceptance tests."""
    from test_acceptance import check_against_truth, two_of_three

    sampler = sd.ERSDE(3, 20)
    assert sampler.expected_nfe(sd.VPSDE()) == 20

    def run(seed):
        report = check_against_truth(sde_name, sampler, n=20_000, key="er-sde-3", seed=seed)
        assert report["nfe"] == 20

    two_of_three(run)
