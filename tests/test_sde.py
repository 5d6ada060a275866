"""SDEs against their closed forms: moment ODEs, forward simulation, priors, reversal, discretisation."""

import math

import pytest
import torch
from conftest import SDES
from hypothesis import given, settings
from hypothesis import strategies as st

import scoresde as sd

sde_strategy = st.one_of(
    st.builds(lambda a, b: sd.VPSDE(a, a + b), st.floats(0.01, 1.0), st.floats(0.0, 30.0)),
    st.builds(lambda a, b: sd.SubVPSDE(a, a + b), st.floats(0.01, 1.0), st.floats(0.0, 30.0)),
    st.builds(lambda a, b: sd.VESDE(a, a * b), st.floats(1e-3, 1.0), st.floats(1.5, 5e3)),
)


def _coefs_autograd(sde, t):
    """f, g, s, sigma and ds/dt, d(sigma^2)/dt at float64 time t via autograd."""
    tt = torch.tensor(t, dtype=torch.float64, requires_grad=True)
    s = sde.mean_coef(tt)
    var = sde.std(tt) ** 2
    ds = torch.autograd.grad(s, tt)[0] if s.requires_grad else torch.zeros((), dtype=torch.float64)  # VE: s = 1
    (dvar,) = torch.autograd.grad(var, tt)
    f = sde.drift_coef(tt.detach())
    g = sde.diffusion_coef(tt.detach())
    return f, g, s.detach(), var.detach(), ds, dvar


@settings(max_examples=60, deadline=None)
@given(sde=sde_strategy, t=st.floats(1e-4, 1.0))
def test_marginals_solve_the_moment_odes(sde, t):
    # ds/dt = f s ;  d sigma^2/dt = 2 f sigma^2 + g^2
    f, g, s, var, ds, dvar = _coefs_autograd(sde, t)
    assert torch.allclose(ds, f * s, rtol=1e-9, atol=1e-12)
    assert torch.allclose(dvar, 2 * f * var + g**2, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("sde", [sd.VPSDE(), sd.SubVPSDE()], ids=repr)
def test_vp_kernels_start_at_the_data(sde):
    _, _, s, sigma = sde.coefficients(0.0)
    assert float(s) == 1.0 and float(sigma) == 0.0
    # VP marginal at T is close to N(0, I) = the prior
    _, _, s, sigma = sde.coefficients(1.0)
    assert float(s) < 0.01 and abs(float(sigma) - 1) < 1e-4


def test_song_formulas_exactly():
    t = torch.tensor([0.0, 0.3, 1.0], dtype=torch.float64)
    vp = sd.VPSDE()
    lmc = -0.25 * t**2 * (20 - 0.1) - 0.5 * t * 0.1
    assert torch.allclose(vp.mean_coef(t), torch.exp(lmc))
    assert torch.allclose(vp.std(t), torch.sqrt(1 - torch.exp(2 * lmc)))
    sub = sd.SubVPSDE()
    assert torch.allclose(sub.std(t), 1 - torch.exp(2 * lmc))
    disc = 1 - torch.exp(-2 * 0.1 * t - (20 - 0.1) * t**2)
    assert torch.allclose(sub.diffusion_coef(t), torch.sqrt((0.1 + t * 19.9) * disc))
    ve = sd.VESDE()
    sig = 0.01 * (50 / 0.01) ** t
    assert torch.allclose(ve.std(t), sig)
    assert torch.allclose(ve.diffusion_coef(t), sig * math.sqrt(2 * (math.log(50) - math.log(0.01))))


@pytest.mark.parametrize("sde", SDES, ids=repr)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shapes_dtypes_and_time_forms(sde, dtype):
    x = torch.randn(5, 3, 4, 4, dtype=dtype)
    for t in (0.5, torch.tensor(0.5), torch.full((5,), 0.5, dtype=torch.float64)):
        drift, diffusion = sde.sde(x, t)
        assert drift.shape == x.shape and drift.dtype == dtype
        assert diffusion.shape == (5,) and diffusion.dtype == dtype
        mean, std = sde.marginal_prob(x, t)
        assert mean.shape == x.shape and std.shape == (5,) and mean.dtype == dtype
    # per-sample times give per-sample coefficients
    t = torch.linspace(0.1, 0.9, 5, dtype=dtype)
    _, std = sde.marginal_prob(x, t)
    for i in range(5):
        assert torch.allclose(std[i], sde.marginal_prob(x[i : i + 1], float(t[i]))[1][0])


@pytest.mark.parametrize(
    "make, arg",
    [
        (lambda: sd.VPSDE(beta_min=-1.0), "beta_min"),
        (lambda: sd.VPSDE(beta_min=0.0), "beta_min"),
        (lambda: sd.VPSDE(beta_max=float("nan")), "beta_max"),
        (lambda: sd.VPSDE(beta_min=5.0, beta_max=1.0), "beta_max"),
        (lambda: sd.SubVPSDE(beta_max=float("inf")), "beta_max"),
        (lambda: sd.VESDE(sigma_min=0.0), "sigma_min"),
        (lambda: sd.VESDE(sigma_min=2.0, sigma_max=1.0), "sigma_max"),
        (lambda: sd.VESDE(sigma_max=-3.0), "sigma_max"),
        (lambda: sd.VPSDE(T=0.0), "T"),
    ],
)
def test_invalid_parameters_name_the_argument(make, arg):
    with pytest.raises(ValueError, match=arg):
        make()


@pytest.mark.parametrize("sde", SDES, ids=repr)
@pytest.mark.parametrize("t", [-0.1, 1.5, float("nan"), torch.tensor([0.5, 1.2])])
def test_time_outside_range_raises(sde, t):
    x = torch.zeros(2, 2)
    with pytest.raises(ValueError, match="t must lie in"):
        sde.sde(x, t)
    with pytest.raises(ValueError, match="t must lie in"):
        sde.marginal_prob(x, t)


@pytest.mark.parametrize("sde", SDES, ids=repr)
def test_prior_logp_is_the_gaussian_density(sde):
    z = sde.prior_sampling((7, 3, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    normal = torch.distributions.Normal(0.0, sde.prior_std)
    expected = normal.log_prob(z).reshape(7, -1).sum(1)
    assert torch.allclose(sde.prior_logp(z), expected)
    # the prior has the advertised scale
    big = sde.prior_sampling((20000, 2), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert abs(float(big.std()) / sde.prior_std - 1) < 0.02


def _identity_score(x, t):
    return -x / (1 + t.reshape(-1, 1))


@settings(max_examples=30, deadline=None)
@given(sde=sde_strategy, t=st.floats(0.01, 1.0), pf=st.booleans())
def test_reverse_of_reverse_is_forward(sde, t, pf):
    x = torch.randn(6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    fwd = sde.sde(x, t)
    rev = sde.reverse(_identity_score, probability_flow=pf)
    back = rev.reverse(_identity_score, probability_flow=pf).sde(x, t)
    if pf:  # the ODE's reversal is the same ODE
        assert torch.allclose(back[0], rev.sde(x, t)[0])
    else:
        assert torch.allclose(back[0], fwd[0], rtol=1e-10, atol=1e-9 * (1 + float(fwd[1].max()) ** 2))
        assert torch.equal(back[1], fwd[1])
        assert back[2 - 2].shape == x.shape


@pytest.mark.parametrize("sde", SDES, ids=repr)
def test_reverse_drift_formula(sde):
    x = torch.randn(4, 2, dtype=torch.float64)
    f, g = sde.sde(x, 0.4)
    s = _identity_score(x, torch.full((4,), 0.4, dtype=torch.float64))
    rf, rg = sde.reverse(_identity_score).sde(x, 0.4)
    assert torch.allclose(rf, f - g[:, None] ** 2 * s) and torch.equal(rg, g)
    of, og = sde.reverse(_identity_score, probability_flow=True).sde(x, 0.4)
    assert torch.allclose(of, f - 0.5 * g[:, None] ** 2 * s) and torch.all(og == 0)


@pytest.mark.parametrize("sde", SDES, ids=repr)
def test_discretize_is_consistent_with_the_sde(sde):
    x = torch.randn(3, 2, dtype=torch.float64)
    t = 0.6
    for dt in (1e-3, 1e-5):
        fd, G = sde.discretize(x, t, dt)
        drift, g = sde.sde(x, t)
        assert torch.allclose(fd / dt, drift, rtol=2e3 * dt, atol=1e-10)
        assert torch.allclose(G**2 / dt, g**2, rtol=2e3 * dt)


@pytest.mark.parametrize("sde", [sd.VPSDE(), sd.VESDE()], ids=repr)
def test_exact_discretisation_reproduces_the_kernel(sde):
    # one discrete step from t - dt to t maps N(s(t-dt) x0, sigma(t-dt)^2) to N(s(t) x0, sigma(t)^2)
    x0 = torch.tensor([[1.5, -2.0]], dtype=torch.float64)
    t, dt = 0.7, 0.25
    m0, s0 = sde.marginal_prob(x0, t - dt)
    f, G = sde.discretize(m0, t, dt)
    m1, s1 = sde.marginal_prob(x0, t)
    a = (m0 + f) / m0  # the step is linear: x -> a x + G z
    assert torch.allclose(m0 + f, m1)
    assert torch.allclose(a[0, 0] ** 2 * s0**2 + G**2, s1**2)


def test_discretize_rejects_steps_below_zero():
    with pytest.raises(ValueError, match="dt"):
        sd.VPSDE().discretize(torch.zeros(1, 2), 0.1, 0.2)
    with pytest.raises(ValueError, match="dt"):
        sd.VPSDE().discretize(torch.zeros(1, 2), 0.5, -0.1)


@pytest.mark.parametrize("sde", SDES, ids=repr)
def test_forward_simulation_matches_marginal_prob(sde):
    # Euler-Maruyama with small steps from x0 (+ sigma(0) z) at t=0 to t=0.5: mean and variance
    g = torch.Generator().manual_seed(0)
    n, steps, t1 = 20000, 500, 0.5
    x0 = torch.tensor([[2.0, -1.0]], dtype=torch.float64)
    _, sig0 = sde.marginal_prob(x0, 0.0)
    x = x0 + float(sig0[0]) * torch.randn(n, 2, generator=g, dtype=torch.float64)
    dt = t1 / steps
    for i in range(steps):
        drift, diff = sde.sde(x, i * dt)
        x = x + drift * dt + diff[:, None] * math.sqrt(dt) * torch.randn(n, 2, generator=g, dtype=torch.float64)
    mean, std = sde.marginal_prob(x0, t1)
    sd_ = float(std[0])
    se = sd_ / math.sqrt(n)
    assert torch.allclose(x.mean(0), mean[0], atol=5 * se + 2e-3 * float(mean.abs().max()))
    var_se = sd_**2 * math.sqrt(2 / n)
    assert torch.allclose(x.var(0), torch.full((2,), sd_**2, dtype=torch.float64), atol=5 * var_se + 0.01 * sd_**2)
