"""AdaptiveSDE: contract, tolerance/NFE trade-off, and exactness on Gaussian-mixture targets."""

import numpy as np
import pytest
import torch

import scoresde as sd
from scoresde.adaptive import AdaptiveSDE

GAUSS = sd.GaussianMixture([1.0], [[1.0, -0.5]], [[[0.8, 0.3], [0.3, 0.5]]])


def test_only_the_ends_are_saved_and_each_iteration_costs_two_nfe(sde):
    # the rest of the contract (reproducibility, dtypes, finiteness) is in test_sampler_contract.py
    score = sd.eight_gaussians().score(sde)
    a = sd.sample(sde, score, AdaptiveSDE(), shape=(32, 2), seed=5, progress=False, save_at=4)
    assert a["x"].shape == (2, 32, 2)  # only T and eps can be saved with per-sample times
    np.testing.assert_allclose(a["time"].values, [sde.T, 1e-3])
    assert a.attrs["nfe"] == a["nfe"].values[-1] == 2 * a.attrs["stat_iterations"] > 0
    assert a.attrs["stat_accepted_max"] >= a.attrs["stat_accepted_mean"] > 0
    assert a.attrs["sampler"] == "AdaptiveSDE" and a.attrs["sampler_rtol"] == 1e-2
    assert AdaptiveSDE().expected_nfe(sde) is None


def test_denoise_and_validation():
    sde = sd.VPSDE()
    ds = sd.sample(sde, GAUSS.score(sde), AdaptiveSDE(denoise=True), shape=(16, 2), progress=False)
    assert ds["time"].values[-1] == 0.0 and ds["nfe"].values[-1] == ds["nfe"].values[-2] + 1
    for kw in ({"rtol": 0}, {"atol": -1}, {"safety": 1.5}, {"exponent": 2}, {"max_iters": 0}):
        with pytest.raises(ValueError):
            AdaptiveSDE(**kw)
    with pytest.raises(RuntimeError, match="max_iters"):
        sd.sample(sde, GAUSS.score(sde), AdaptiveSDE(max_iters=3), shape=(4, 2), progress=False)


def test_nfe_decreases_as_rtol_loosens():
    sde = sd.VPSDE()
    score = sd.eight_gaussians().score(sde)
    nfe = [
        sd.sample(sde, score, AdaptiveSDE(rtol=r, atol=r), shape=(256, 2), seed=0, progress=False).attrs["nfe"]
        for r in (3e-3, 1e-2, 5e-2)
    ]
    assert nfe[0] > nfe[1] > nfe[2]


@pytest.mark.slow
@pytest.mark.parametrize("sde", [sd.VPSDE(), sd.VESDE()], ids=repr)
def test_gaussian_moments(sde):
    n = 20000
    ds = sd.sample(sde, GAUSS.score(sde), AdaptiveSDE(), shape=(n, 2), seed=1, progress=False, dtype=torch.float64)
    x = torch.as_tensor(ds["x"].values[-1])
    m = GAUSS.marginal(sde, 1e-3)
    mean, cov = m.mean().double(), m.covariance().double()
    se_mean = (torch.diagonal(cov) / n).sqrt()
    assert torch.all((x.mean(0) - mean).abs() <= 4 * se_mean + 0.02)
    # se of a sample covariance entry: sqrt((S_ii S_jj + S_ij^2) / n)
    se_cov = ((torch.outer(torch.diagonal(cov), torch.diagonal(cov)) + cov**2) / n).sqrt()
    assert torch.all((torch.cov(x.T) - cov).abs() <= 4 * se_cov + 0.03)


@pytest.mark.slow
def test_eight_gaussians_sliced_wasserstein():
    sde, n = sd.VPSDE(), 3000
    mix = sd.eight_gaussians()
    m = mix.marginal(sde, 1e-3)
    ref = m.sample(n, torch.Generator().manual_seed(12345))
    floor = sd.metrics.metric_floor("sliced_wasserstein", lambda k, g: m.sample(k, g), n, pairs=16, reference=ref)
    ds = sd.sample(sde, mix.score(sde), AdaptiveSDE(), shape=(n, 2), seed=2, progress=False)
    x = torch.as_tensor(ds["x"].values[-1]).to(ref.dtype)
    assert floor.contains(sd.metrics.sliced_wasserstein(x, ref), k=4)
