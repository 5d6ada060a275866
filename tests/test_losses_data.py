"""Denoising score matching against hand computation and the oracle; training data sets."""

import math

import numpy as np
import pytest
import torch
import xarray as xr

import scoresde as sd
from scoresde.datasets import TOY_DATASETS, load_dataset, toy_sample
from scoresde.losses import dsm_loss


def test_dsm_loss_hand_computed():
    sde = sd.VPSDE()
    x0 = torch.tensor([[1.0, 2.0], [-1.0, 0.5]], dtype=torch.float64)
    t = torch.tensor([0.5, 0.1], dtype=torch.float64)
    z = torch.tensor([[0.3, -0.2], [1.0, 0.0]], dtype=torch.float64)

    def model(x, tt):
        return -2.0 * x

    expected_sigma2, expected_lik, expected_sum = [], [], []
    for i in range(2):
        ti = float(t[i])
        lmc = -0.25 * ti**2 * 19.9 - 0.5 * ti * 0.1
        s, sig = math.exp(lmc), math.sqrt(1 - math.exp(2 * lmc))
        xt = s * x0[i] + sig * z[i]
        score = -2.0 * xt
        expected_sigma2.append(float(((score * sig + z[i]) ** 2).mean()))
        expected_sum.append(float(((score * sig + z[i]) ** 2).sum()))
        g2 = 0.1 + ti * 19.9
        expected_lik.append(float(((score + z[i] / sig) ** 2).mean()) * g2)
    got = dsm_loss(sde, model, x0, t=t, z=z)
    assert got.item() == pytest.approx(np.mean(expected_sigma2), rel=1e-12)
    assert dsm_loss(sde, model, x0, t=t, z=z, reduce="sum").item() == pytest.approx(np.mean(expected_sum), rel=1e-12)
    assert dsm_loss(sde, model, x0, t=t, z=z, weighting="likelihood").item() == pytest.approx(
        np.mean(expected_lik), rel=1e-12
    )


@pytest.mark.parametrize("sde", [sd.VPSDE(), sd.VESDE()], ids=repr)
@pytest.mark.parametrize("weighting", ["sigma2", "likelihood"])
def test_dsm_minimiser_is_the_exact_score(sde, weighting):
    """L(a) for s = s* + a h is a quadratic in a minimised at a = 0 (within Monte Carlo error)."""
    mix = sd.eight_gaussians()
    exact = mix.score(sde)
    g = torch.Generator().manual_seed(0)
    n = 200_000
    x0 = mix.sample(n, g, dtype=torch.float64)
    t = torch.rand(n, generator=g, dtype=torch.float64) * (1 - 0.05) + 0.05
    z = torch.randn(n, 2, generator=g, dtype=torch.float64)

    def perturbed(a):
        return lambda x, tt: exact(x, tt) + a * torch.tanh(x) / sde.std(tt)[:, None]

    losses = {a: dsm_loss(sde, perturbed(a), x0, t=t, z=z, weighting=weighting).item() for a in (-0.2, 0.0, 0.2)}
    # fitted vertex of the parabola through the three points
    lm, l0, lp = losses[-0.2], losses[0.0], losses[0.2]
    curvature = (lp + lm - 2 * l0) / 0.04
    vertex = -((lp - lm) / 0.4) / curvature
    assert curvature > 0 and l0 < lm and l0 < lp
    assert abs(vertex) < 0.02, (losses, vertex)


def test_dsm_loss_validation():
    sde = sd.VPSDE()
    x0 = torch.zeros(4, 2)
    with pytest.raises(ValueError, match="weighting"):
        dsm_loss(sde, lambda x, t: x, x0, weighting="uniform")
    with pytest.raises(ValueError, match="x0"):
        dsm_loss(sde, lambda x, t: x, torch.full((4, 2), float("nan")))
    with pytest.raises(ValueError, match="model returned shape"):
        dsm_loss(sde, lambda x, t: x[:, :1], x0)
    with pytest.raises(ValueError, match="eps"):
        dsm_loss(sde, lambda x, t: x, x0, eps=2.0)


@pytest.mark.parametrize("name", ["moons", "swiss_roll", "checkerboard", "eight_gaussians", "pinwheel"])
def test_toy_sets_are_standardised_and_reproducible(name):
    d = load_dataset(name, n=4000, seed=3)
    assert d.data.shape == (4000, 2) and d.data.dtype == torch.float32
    assert abs(float(d.data.double().mean())) < 1e-6 and abs(float(d.data.double().std()) - 1) < 1e-5
    raw = torch.as_tensor(toy_sample(name, 4000, seed=3))
    assert torch.allclose(d.unscale(d.data.double()), raw, atol=1e-5)
    assert torch.equal(load_dataset(name, n=4000, seed=3).data, d.data)
    assert not torch.equal(load_dataset(name, n=4000, seed=4).data, d.data)


def test_digits_are_bundled_and_scaled_to_unit_range():
    d = load_dataset("digits")
    assert d.data.shape == (1797, 1, 8, 8)
    assert float(d.data.min()) == -1.0 and float(d.data.max()) == 1.0
    assert d.shift == 8.0 and d.scale == 8.0


def test_user_arrays():
    arr = np.random.default_rng(0).normal(3.0, 2.0, size=(500, 3))
    for data in (arr, torch.as_tensor(arr), xr.DataArray(arr, dims=("sample", "feature"))):
        d = load_dataset(data)
        assert d.name == "array" and d.data.shape == (500, 3)
        assert torch.allclose(d.unscale(d.data.double()), torch.as_tensor(arr), atol=1e-5)
    bad = arr.copy()
    bad[7, 1] = np.nan
    with pytest.raises(ValueError, match="NaN or inf in 1 sample"):
        load_dataset(bad)
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("mnist")
    with pytest.raises(ValueError, match="shape"):
        load_dataset(np.zeros(5))


@pytest.mark.parametrize("name", sorted(TOY_DATASETS))
def test_toy_sets_are_shuffled(name):
    """The first quarter of a toy set has the whole set's mean and covariance (within 4.5 standard errors)."""
    x = load_dataset(name, n=8000, seed=5).data.double().numpy()
    q = x[: len(x) // 4]
    nq = len(q)
    mu = x.mean(0)
    se_mean = x.std(0) / math.sqrt(nq)
    assert np.all(np.abs(q.mean(0) - mu) < 4.5 * se_mean), (q.mean(0), mu, se_mean)
    r = x - mu
    rq = q - mu
    for i, j in ((0, 0), (1, 1), (0, 1)):
        prod = r[:, i] * r[:, j]
        se = prod.std() / math.sqrt(nq)
        assert abs((rq[:, i] * rq[:, j]).mean() - prod.mean()) < 4.5 * se, (name, i, j)


@pytest.mark.parametrize("name", sorted(TOY_DATASETS))
def test_toy_sets_are_iid(name):
    """Points are independent draws, not a stratified set: the fraction of points in one half-plane
    varies across seeds with the binomial variance p (1 - p) / n (a stratified generator, like
    scikit-learn's make_moons with its evenly spaced angles, gives almost none)."""
    n, seeds = 200, 300
    fractions = np.array([(toy_sample(name, n, seed=s)[:, 0] < 0.5).mean() for s in range(seeds)])
    p = fractions.mean()
    ratio = fractions.var(ddof=1) / (p * (1 - p) / n)
    # the sample variance of 300 binomial fractions is within 25 % of its expectation far beyond 3 sd
    assert 0.75 < ratio < 1.25, (name, p, ratio)


def test_moons_first_points_come_from_both_moons():
    raw = toy_sample("moons", 8000, seed=1)
    # nearest half circle: the upper moon lies on the unit circle, the lower one on the unit circle about (1, 0.5)
    upper = np.abs(np.hypot(raw[:, 0], raw[:, 1]) - 1) < np.abs(np.hypot(raw[:, 0] - 1, raw[:, 1] - 0.5) - 1)
    assert upper.mean() == pytest.approx(0.5, abs=4 * 0.5 / np.sqrt(8000))  # 4 binomial standard errors
    for k in (200, 2000):
        # binomial standard error of a fraction of 1/2 from k points
        assert abs(upper[:k].mean() - 0.5) < 4.5 * 0.5 / math.sqrt(k), (k, upper[:k].mean())


def test_moons_lie_on_scikit_learns_half_circles():
    """Without noise every point lies on one of make_moons' two half circles, and the set's mean is the
    exact (1/2, 1/4); the same seed gives the same points."""
    from sklearn.datasets import make_moons

    from scoresde.datasets import TOY_DATASETS

    def off_arcs(x):
        upper = np.abs(np.hypot(x[:, 0], x[:, 1]) - 1) + np.maximum(-x[:, 1], 0)
        lower = np.abs(np.hypot(x[:, 0] - 1, x[:, 1] - 0.5) - 1) + np.maximum(x[:, 1] - 0.5, 0)
        return np.minimum(upper, lower)

    ref, _ = make_moons(n_samples=1000, noise=0.0, random_state=0)
    assert off_arcs(ref).max() < 1e-12  # the geometry is scikit-learn's
    x = TOY_DATASETS["moons"](20_000, np.random.default_rng(3), noise=0.0)
    assert off_arcs(x).max() < 1e-12
    se = x.std(0) / np.sqrt(len(x))
    assert np.all(np.abs(x.mean(0) - [0.5, 0.25]) < 4 * se), x.mean(0)
    assert np.array_equal(toy_sample("moons", 1000, seed=2), toy_sample("moons", 1000, seed=2))
