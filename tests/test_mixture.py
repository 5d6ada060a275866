"""The Gaussian-mixture oracle: exact densities, exact scores, stability, validation."""

import math

import numpy as np
import pytest
import torch
from conftest import SDES
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import multivariate_normal

import scoresde as sd


def _full_cov_mixture():
    return sd.pinwheel()


def test_log_prob_matches_scipy():
    mix = _full_cov_mixture()
    x = torch.randn(50, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 2
    expected = np.log(
        sum(
            float(w) * multivariate_normal(m.numpy(), c.numpy()).pdf(x.numpy())
            for w, m, c in zip(mix.weights, mix.means, mix.covariances, strict=True)
        )
    )
    assert np.allclose(mix.log_prob(x).numpy(), expected, rtol=1e-10, atol=1e-10)


@settings(max_examples=40, deadline=None)
@given(
    sde_i=st.integers(0, 2),
    t=st.floats(1e-4, 1.0),
    target=st.sampled_from(["eight_gaussians", "pinwheel", "gaussian", "grid"]),
)
def test_score_is_gradient_of_marginal_log_prob(sde_i, t, target):
    sde = SDES[sde_i]
    mix = sd.get_target(target)
    score = mix.score(sde)
    x = 3 * torch.randn(16, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    x.requires_grad_(True)
    (grad,) = torch.autograd.grad(score.log_prob(x, t).sum(), x)
    assert torch.allclose(score(x.detach(), t), grad, rtol=1e-8, atol=1e-8)
    # and the marginal mixture object has the same density
    assert torch.allclose(score.log_prob(x.detach(), t), mix.marginal(sde, t).log_prob(x.detach()), atol=1e-9)


def test_per_sample_times():
    sde = sd.VPSDE()
    score = sd.eight_gaussians().score(sde)
    x = torch.randn(5, 2, dtype=torch.float64)
    t = torch.tensor([0.01, 0.2, 0.4, 0.6, 1.0], dtype=torch.float64)
    batched = score(x, t)
    for i in range(5):
        assert torch.allclose(batched[i], score(x[i : i + 1], float(t[i]))[0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_score_stable_at_extremes(dtype):
    mix = sd.eight_gaussians()
    for sde in SDES:
        score = mix.score(sde)
        for t, scale in [(1.0, 200.0), (1.0, 1.0), (1e-5, 5.0), (0.0, 3.0)]:
            x = scale * torch.randn(64, 2, dtype=dtype, generator=torch.Generator().manual_seed(2))
            s = score(x, t)
            assert s.dtype == dtype and torch.isfinite(s).all(), (sde, t)
            assert torch.isfinite(score.log_prob(x, t)).all()
    # VE at sigma_max: the score is -x / (sigma^2 + component var) up to the mean shift
    ve = sd.VESDE()
    x = torch.full((1, 2), 1e4, dtype=dtype)
    s = mix.score(ve)(x, 1.0)
    expected = -(x - mix.means.to(dtype).mean(0) * 0) / (50.0**2 + 0.125)
    assert torch.allclose(s, expected, rtol=1e-2)


def test_single_gaussian_score_closed_form():
    mix = sd.get_target("gaussian")
    sde = sd.VPSDE()
    t = 0.3
    _, _, s, sigma = sde.coefficients(t)
    cov_t = s**2 * mix.covariances[0] + sigma**2 * torch.eye(2, dtype=torch.float64)
    x = torch.randn(10, 2, dtype=torch.float64)
    expected = -(x - s * mix.means[0]) @ torch.linalg.inv(cov_t).T
    assert torch.allclose(mix.score(sde)(x, t), expected, rtol=1e-10, atol=1e-12)


def test_sampling_moments_and_reproducibility():
    mix = _full_cov_mixture()
    g = torch.Generator().manual_seed(0)
    x = mix.sample(100_000, g, dtype=torch.float64)
    cov = mix.covariance()
    se = torch.sqrt(torch.diag(cov) / x.shape[0])
    assert torch.all((x.mean(0) - mix.mean()).abs() < 5 * se)
    assert torch.allclose(torch.cov(x.T), cov, atol=0.03)
    a = mix.sample(10, torch.Generator().manual_seed(7))
    b = mix.sample(10, torch.Generator().manual_seed(7))
    assert torch.equal(a, b) and a.dtype == torch.float32


def test_marginal_components():
    mix = sd.eight_gaussians()
    sde = sd.VESDE()
    m = mix.marginal(sde, 1.0)
    assert torch.allclose(m.means, mix.means)
    assert torch.allclose(m.covariances[0], (0.125 + 50.0**2) * torch.eye(2, dtype=torch.float64))


def test_eight_gaussians_geometry():
    mix = sd.eight_gaussians()
    r = mix.means.norm(dim=1)
    assert torch.allclose(r, torch.full((8,), 4 / math.sqrt(2), dtype=torch.float64))
    eye = torch.eye(2, dtype=torch.float64).expand(8, 2, 2)
    assert torch.allclose(mix.covariances, (0.5 / math.sqrt(2)) ** 2 * eye)


@pytest.mark.parametrize(
    "args, match",
    [
        (([0.5, 0.6], [[0, 0], [1, 1]], 1.0), "sum to 1"),
        (([1.0], [[0, 0]], [[[1.0, 2.0], [2.0, 1.0]]]), "positive definite"),
        (([1.0], [[0, 0]], [[[1.0, 0.5], [0.0, 1.0]]]), "symmetric"),
        (([1.0], [0, 0], 1.0), "means"),
        (([0.5, 0.5], [[0, 0]], 1.0), "weights"),
        (([1.0], [[0, float("nan")]], 1.0), "means"),
        (([1.0], [[0, 0]], [[1.0, 1.0, 1.0]]), "covariances"),
    ],
)
def test_invalid_mixtures(args, match):
    with pytest.raises(ValueError, match=match):
        sd.GaussianMixture(*args)


def test_bad_inputs_to_score_and_names():
    mix = sd.eight_gaussians()
    score = mix.score(sd.VPSDE())
    with pytest.raises(ValueError, match="x must have shape"):
        score(torch.zeros(3, 3), 0.5)
    with pytest.raises(ValueError, match="NaN"):
        score(torch.full((3, 2), float("nan")), 0.5)
    with pytest.raises(ValueError, match="t must lie"):
        score(torch.zeros(3, 2), 2.0)
    with pytest.raises(ValueError, match="unknown target"):
        sd.get_target("nope")
    with pytest.raises(TypeError, match="linear SDE"):
        mix.score(sd.VPSDE().reverse(score))


# -- closed-form probability-flow map and the random high-dimensional target -------------------
@pytest.mark.parametrize("sde", [sd.VPSDE(), sd.SubVPSDE(), sd.VESDE()], ids=repr)
def test_flow_map_is_a_flow_and_pushes_marginals_forward(sde):
    gauss = sd.GaussianMixture([1.0], [[1.0, -0.5]], [[[0.8, 0.3], [0.3, 0.5]]])
    x = gauss.marginal(sde, 0.7).sample(20_000, torch.Generator().manual_seed(1)).double()
    y = gauss.flow_map(sde, x, 0.7, 0.2)
    torch.testing.assert_close(gauss.flow_map(sde, x, 0.7, 0.7), x, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(
        gauss.flow_map(sde, y, 0.2, 0.05), gauss.flow_map(sde, x, 0.7, 0.05), rtol=1e-12, atol=1e-12
    )
    # a linear map: pushes N(s m, s^2 C + sigma^2 I) at 0.7 exactly to the marginal at 0.2
    target = gauss.marginal(sde, 0.2)
    A = torch.linalg.lstsq(x - x.mean(0), y - y.mean(0)).solution.T
    src = gauss.marginal(sde, 0.7)
    torch.testing.assert_close(A @ src.covariances[0] @ A.T, target.covariances[0], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(gauss.flow_map(sde, src.means, 0.7, 0.2), target.means, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="single Gaussian"):
        sd.eight_gaussians().flow_map(sde, x[:3], 0.7, 0.2)


def test_random_mixture():
    a, b = sd.random_mixture(10), sd.random_mixture(10)
    assert a.dim == 10 and a.n_components == 3
    assert torch.equal(a.means, b.means) and torch.equal(a.covariances, b.covariances)
    torch.testing.assert_close(a.weights @ a.means, torch.zeros(10, dtype=torch.float64), atol=1e-14, rtol=0)
    assert bool((torch.linalg.eigvalsh(a.covariances) > 0.09).all())
    assert not torch.equal(sd.random_mixture(10, seed=2).means, a.means)


def _loglik(mix, sde, x):
    return sd.log_likelihood(sde, mix.score(sde), x, rtol=1e-4, atol=1e-4).log_prob


@pytest.mark.parametrize("order", ["sample_first", "loglik_first", "sample_loglik_sample"])
def test_cache_serves_inference_mode_and_autograd(order):
    """sample() fills the per-dtype cache inside torch.inference_mode(); log_likelihood() then needs
    autograd through the same cached tensors (and the other way round): every order must work and
    give the same numbers as a fresh mixture."""
    sde = sd.VPSDE()
    x = sd.eight_gaussians().sample(4, torch.Generator().manual_seed(0), dtype=torch.float32)
    reference = _loglik(sd.eight_gaussians(), sde, x)
    ref_ds = sd.sample(sde, sd.eight_gaussians().score(sde), sd.EulerMaruyama(5), shape=(4, 2), progress=False)
    mix = sd.eight_gaussians()
    em = sd.EulerMaruyama(5)
    if order == "sample_first":
        ds = sd.sample(sde, mix.score(sde), em, shape=(4, 2), progress=False)
        lp = _loglik(mix, sde, x)
    elif order == "loglik_first":
        lp = _loglik(mix, sde, x)
        ds = sd.sample(sde, mix.score(sde), em, shape=(4, 2), progress=False)
    else:
        sd.sample(sde, mix.score(sde), em, shape=(4, 2), progress=False)
        lp = _loglik(mix, sde, x)
        ds = sd.sample(sde, mix.score(sde), em, shape=(4, 2), progress=False)
    assert torch.equal(lp, reference)
    np.testing.assert_array_equal(ds.x.values, ref_ds.x.values)
    for tensors in mix._cache.values():
        assert not any(t.is_inference() for t in tensors)


def test_score_under_inference_mode_then_grad():
    """The score itself: first call inside inference mode (float32 cache), then differentiate it."""
    sde = sd.VESDE()
    mix = sd.eight_gaussians()
    score = mix.score(sde)
    x = torch.randn(6, 2, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        s_inf = score(x, 0.3)
    xg = x.clone().requires_grad_(True)
    out = score(xg, 0.3)
    (g,) = torch.autograd.grad(out.sum(), xg)
    assert torch.equal(out.detach(), s_inf)
    assert torch.isfinite(g).all()
