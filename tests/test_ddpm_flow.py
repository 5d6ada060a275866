"""Discrete-time DDPM and flow matching, checked against closed forms and the Gaussian-mixture oracle."""

import math

import pytest
import torch

import scoresde as sd
from scoresde.ddpm import DDPMSchedule, discretized_gaussian_log_likelihood
from scoresde.flow import RectifiedFlow, flow_matching_loss, sample_flow, velocity

MEAN = [0.5, -0.3]
COV = [[0.3, 0.1], [0.1, 0.2]]


def gaussian():
    return sd.GaussianMixture([1.0], [MEAN], [COV])


# -- DDPM schedules ----------------------------------------------------------------------------
@pytest.mark.parametrize("schedule", [DDPMSchedule.linear(), DDPMSchedule.cosine()], ids=["linear", "cosine"])
def test_schedule_properties(schedule):
    assert schedule.T == 1000
    for a in (schedule.betas, schedule.alphas, schedule.alpha_bars):
        assert a.dtype == torch.float64 and a.shape == (1000,)
    assert bool((schedule.betas > 0).all() and (schedule.betas <= 0.999).all())
    ab = schedule.alpha_bars
    assert bool(((ab > 0) & (ab < 1)).all())
    assert bool((ab[1:] < ab[:-1]).all())
    assert torch.allclose(ab, torch.cumprod(1 - schedule.betas, 0), rtol=1e-12)
    assert bool((schedule.beta_tildes <= schedule.betas).all())


def test_linear_and_cosine_formulas():
    lin = DDPMSchedule.linear(T=10, beta_1=0.1, beta_T=0.5)
    assert torch.allclose(lin.betas, torch.linspace(0.1, 0.5, 10, dtype=torch.float64))
    cos = DDPMSchedule.cosine(T=1000, s=0.008)
    i = torch.arange(1, 1001, dtype=torch.float64)

    def f(t):
        return torch.cos((t / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2

    expected = f(i) / f(torch.zeros(1, dtype=torch.float64))
    # identical except at the very end, where beta is clipped at 0.999
    assert torch.allclose(cos.alpha_bars[:-1], expected[:-1], rtol=1e-10)
    assert float(cos.betas[-1]) == pytest.approx(0.999)
    with pytest.raises(ValueError, match="beta"):
        DDPMSchedule([0.1, 1.0])


def test_q_sample_moments_and_validation():
    s = DDPMSchedule.linear()
    g = torch.Generator().manual_seed(0)
    n = 200_000
    x0 = torch.full((n, 1), 2.0, dtype=torch.float64)
    noise = torch.randn(n, 1, generator=g, dtype=torch.float64)
    x = s.q_sample(x0, 300, noise)
    ab = float(s.alpha_bars[299])
    assert x.mean().item() == pytest.approx(2 * math.sqrt(ab), abs=4e-3)
    assert x.var().item() == pytest.approx(1 - ab, rel=1e-2)
    # per-sample steps
    xs = s.q_sample(x0[:3], torch.tensor([1, 500, 1000]), noise[:3])
    for k, i in enumerate([1, 500, 1000]):
        assert torch.allclose(xs[k], s.q_sample(x0[k : k + 1], i, noise[k : k + 1])[0])
    with pytest.raises(ValueError, match="steps"):
        s.q_sample(x0[:2], 0, noise[:2])


@pytest.mark.parametrize("T", [100, 1000])
def test_linear_schedule_vp_sde(T):
    sde = DDPMSchedule.linear(T, 0.1 / T, 20 / T).vp_sde()
    assert isinstance(sde, sd.VPSDE)
    assert sde.beta_min == pytest.approx(0.1) and sde.beta_max == pytest.approx(20.0)


def test_ddpm_marginals_converge_to_vp_at_rate_one_over_T():
    errs = {}
    for T in (100, 1000, 10_000):
        s = DDPMSchedule.linear(T, 0.1 / T, 20 / T)
        vp, t = s.vp_sde(), torch.arange(1, T + 1, dtype=torch.float64) / T
        m, std = vp.mean_coef(t), vp.std(t)
        err_m = (s.alpha_bars.sqrt() - m).abs().max().item()
        err_s = ((1 - s.alpha_bars).sqrt() - std).abs().max().item()
        errs[T] = max(err_m, err_s)
    assert errs[10_000] < 1e-3
    for a, b in ((100, 1000), (1000, 10_000)):
        assert 5 < errs[a] / errs[b] < 20, errs  # O(1/T): a tenfold T gives a tenfold smaller error


def test_eps_loss_hand_computed_and_minimiser():
    s = DDPMSchedule.linear(T=50, beta_1=1e-3, beta_T=0.2)
    x0 = torch.tensor([[1.0, 2.0], [-1.0, 0.5]], dtype=torch.float64)
    i = torch.tensor([3, 40])
    noise = torch.tensor([[0.3, -0.2], [1.0, 0.0]], dtype=torch.float64)

    def model(x, ii):
        return 0.5 * x

    exp = []
    for k in range(2):
        ab = float(s.alpha_bars[int(i[k]) - 1])
        xi = math.sqrt(ab) * x0[k] + math.sqrt(1 - ab) * noise[k]
        exp.append(float(((0.5 * xi - noise[k]) ** 2).mean()))
    assert s.eps_loss(model, x0, i=i, noise=noise).item() == pytest.approx(sum(exp) / 2, rel=1e-12)

    # the oracle epsilon is the minimiser: parabola vertex at 0
    mix = sd.eight_gaussians()
    exact = s.oracle_eps(mix)
    g = torch.Generator().manual_seed(1)
    n = 50_000
    x0 = mix.sample(n, g, dtype=torch.float64)
    i = torch.randint(1, s.T + 1, (n,), generator=g)
    noise = torch.randn(n, 2, generator=g, dtype=torch.float64)

    def losses(a):
        return s.eps_loss(lambda x, ii: exact(x, ii) + a * torch.tanh(x), x0, i=i, noise=noise).item()

    lm, l0, lp = losses(-0.2), losses(0.0), losses(0.2)
    curvature = (lp + lm - 2 * l0) / 0.04
    vertex = -((lp - lm) / 0.4) / curvature
    assert curvature > 0 and abs(vertex) < 0.02


def test_oracle_eps_matches_vp_score_for_large_T():
    """The exact discrete epsilon and -sigma * (VP oracle score at t = i/T) agree as T grows."""
    s = DDPMSchedule.linear()
    mix = gaussian()
    vp_score = mix.score(s.vp_sde())
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    i = torch.randint(1, 1001, (64,), generator=torch.Generator().manual_seed(3))
    t = i.to(torch.float64) / 1000
    approx = -s.vp_sde().std(t)[:, None] * vp_score(x, t)
    assert torch.allclose(s.oracle_eps(mix)(x, i), approx, atol=2e-2)


@pytest.mark.parametrize("variance", ["beta", "beta_tilde"])
def test_ancestral_sampling_gaussian_target(variance):
    s = DDPMSchedule.linear(200, 0.1 / 200, 20 / 200)  # the default VP SDE on a coarser grid
    mix = gaussian()
    g = torch.Generator().manual_seed(4)
    x = s.ancestral_sample(s.oracle_eps(mix), (5000, 2), g, variance=variance, dtype=torch.float64)
    assert torch.allclose(x.mean(0), torch.tensor(MEAN, dtype=torch.float64), atol=0.04)
    assert torch.allclose(torch.cov(x.T), torch.tensor(COV, dtype=torch.float64), atol=0.04)


def test_elbo_bounds_the_exact_nll_for_gaussian_data():
    s = DDPMSchedule.linear()
    mix = gaussian()
    g = torch.Generator().manual_seed(5)
    x0 = mix.sample(1000, g, dtype=torch.float64)
    nll = -mix.log_prob(x0) / (2 * math.log(2))  # bits/dim
    out = s.elbo_bits_per_dim(s.oracle_eps(mix), x0, g, decoder="gaussian", terms=True)
    assert out["total"].shape == (1000,)
    assert torch.allclose(out["total"], out["prior"] + out["diffusion"] + out["decoder"])
    assert 0 < out["prior"].mean().item() < 1e-3
    gap = out["total"] - nll
    se = gap.std().item() / math.sqrt(gap.numel())
    assert gap.mean().item() > -3 * se  # an upper bound on the NLL (up to Monte Carlo error)
    assert gap.mean().item() < 0.03 + 3 * se  # and a tight one for T = 1000


def test_discretized_decoder_is_normalised_and_elbo_runs():
    bins = 256
    grid = torch.linspace(-1, 1, bins, dtype=torch.float64)[:, None]
    for mean, std in ((0.0, 0.01), (0.97, 0.05), (-2.0, 0.5)):
        logp = discretized_gaussian_log_likelihood(grid, torch.full_like(grid, mean), std, bins)
        assert logp.exp().sum().item() == pytest.approx(1.0, abs=1e-10)
    s = DDPMSchedule.linear(T=20, beta_1=1e-3, beta_T=0.3)
    x0 = grid[torch.randint(0, bins, (8, 3), generator=torch.Generator().manual_seed(6))].reshape(8, 3)
    bpd = s.elbo_bits_per_dim(lambda x, i: torch.zeros_like(x), x0, torch.Generator().manual_seed(7))
    assert bpd.shape == (8,) and bool((bpd > 0).all())


# -- flow matching ---------------------------------------------------------------------------------
def test_rectified_flow_coefficients_and_moment_ode():
    sde = RectifiedFlow()
    t = torch.linspace(0.01, 0.99, 50, dtype=torch.float64)
    f, g, s, sigma = sde.drift_coef(t), sde.diffusion_coef(t), sde.mean_coef(t), sde.std(t)
    assert torch.allclose(s, 1 - t) and torch.allclose(sigma, t)
    assert torch.allclose(f, -1 / (1 - t))
    h = 1e-6
    for fn, deriv_of in ((lambda u: sde.std(u) ** 2, "var"), (sde.mean_coef, "mean")):
        d = (fn(t + h) - fn(t - h)) / (2 * h)
        rhs = 2 * f * sigma**2 + g**2 if deriv_of == "var" else f * s
        assert torch.allclose(d, rhs, rtol=1e-6, atol=1e-8)
    assert sde.prior_std == 1.0
    with pytest.raises(ValueError, match="T"):
        RectifiedFlow(T=2.0)


def _closed_form_velocity(x, t):
    """E[z - x0 | x_t] for x0 ~ N(m, C), z ~ N(0, I) independent, x_t = (1-t) x0 + t z."""
    m = torch.tensor(MEAN, dtype=torch.float64)
    C = torch.tensor(COV, dtype=torch.float64)
    eye = torch.eye(2, dtype=torch.float64)
    out = []
    for xk, tk in zip(x, t, strict=True):
        sig = (1 - tk) ** 2 * C + tk**2 * eye
        cross = tk * eye - (1 - tk) * C  # Cov(z - x0, x_t)
        out.append(-m + cross @ torch.linalg.solve(sig, xk - (1 - tk) * m))
    return torch.stack(out)


def test_velocity_from_score_matches_closed_form():
    v = velocity(gaussian().score(RectifiedFlow()))
    g = torch.Generator().manual_seed(8)
    x = torch.randn(200, 2, generator=g, dtype=torch.float64)
    t = torch.rand(200, generator=g, dtype=torch.float64) * 0.999
    assert torch.allclose(v(x, t), _closed_form_velocity(x, t), rtol=1e-8, atol=1e-8)
    # at t = 1 the clamped formula is still accurate: v(x, 1) = x - E[x0]
    one = torch.ones(200, dtype=torch.float64)
    assert torch.allclose(v(x, one), x - torch.tensor(MEAN, dtype=torch.float64), atol=1e-3)
    # and it is the probability-flow velocity f x - g^2/2 * score
    sde = RectifiedFlow()
    drift = sde.reverse(gaussian().score(sde), probability_flow=True).sde(x, t)[0]
    assert torch.allclose(v(x, t), drift, rtol=1e-7, atol=1e-7)


def test_flow_matching_loss_hand_computed_and_minimiser():
    x0 = torch.tensor([[1.0, 2.0], [-1.0, 0.5]], dtype=torch.float64)
    t = torch.tensor([0.25, 0.8], dtype=torch.float64)
    z = torch.tensor([[0.3, -0.2], [1.0, 0.0]], dtype=torch.float64)
    exp = []
    for k in range(2):
        xt = (1 - t[k]) * x0[k] + t[k] * z[k]
        exp.append(float(((2 * xt - (z[k] - x0[k])) ** 2).mean()))
    got = flow_matching_loss(lambda x, tt: 2 * x, x0, t=t, z=z).item()
    assert got == pytest.approx(sum(exp) / 2, rel=1e-12)

    mix = sd.eight_gaussians()
    exact = velocity(mix.score(RectifiedFlow()))
    g = torch.Generator().manual_seed(9)
    n = 100_000
    x0 = mix.sample(n, g, dtype=torch.float64)
    t = torch.rand(n, generator=g, dtype=torch.float64)
    z = torch.randn(n, 2, generator=g, dtype=torch.float64)

    def loss(a):
        return flow_matching_loss(lambda x, tt: exact(x, tt) + a * torch.tanh(x), x0, t=t, z=z).item()

    lm, l0, lp = loss(-0.2), loss(0.0), loss(0.2)
    curvature = (lp + lm - 2 * l0) / 0.04
    vertex = -((lp - lm) / 0.4) / curvature
    assert curvature > 0 and abs(vertex) < 0.02, (lm, l0, lp, vertex)


@pytest.mark.parametrize("method,tol", [("heun", 0.04), ("euler", 0.06)])
def test_sample_flow_gaussian_target(method, tol):
    v = velocity(gaussian().score(RectifiedFlow()))
    g = torch.Generator().manual_seed(10)
    x = sample_flow(v, (5000, 2), steps=100, generator=g, method=method, dtype=torch.float64)
    assert torch.allclose(x.mean(0), torch.tensor(MEAN, dtype=torch.float64), atol=tol)
    assert torch.allclose(torch.cov(x.T), torch.tensor(COV, dtype=torch.float64), atol=tol)


def test_heun_is_second_order():
    """The flow map of a Gaussian is affine; with fixed noise Heun's error shrinks ~4x per step doubling."""
    v = velocity(gaussian().score(RectifiedFlow()))
    x1 = torch.randn(32, 2, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    ref = sample_flow(v, x1.shape, steps=320, method="heun", x1=x1)
    e1 = (sample_flow(v, x1.shape, steps=20, method="heun", x1=x1) - ref).abs().max().item()
    e2 = (sample_flow(v, x1.shape, steps=40, method="heun", x1=x1) - ref).abs().max().item()
    assert 3 < e1 / e2 < 5.5, (e1, e2)
    with pytest.raises(ValueError, match="method"):
        sample_flow(v, (2, 2), method="rk4")
