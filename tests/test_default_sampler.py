"""The default sampler of ``sample`` and ``scoresde sample`` (Euler–Maruyama, 1000 steps), and the property of
the Langevin corrector that its docstring relies on: with the exact score it leaves p_t invariant up to its
known step bias."""

import json
import math

import pytest
import torch

import scoresde as sd
from scoresde import cli
from scoresde.integrators.correctors import LangevinCorrector


def test_sample_defaults_to_euler_maruyama_with_1000_steps():
    sde = sd.VPSDE()
    score = sd.eight_gaussians().score(sde)
    ds = sd.sample(sde, score, shape=(4, 2), seed=3, progress=False)
    assert ds.attrs["sampler"] == "EulerMaruyama" and ds.attrs["nfe"] == 1000
    assert json.loads(ds.attrs["sampler_params"]) == sd.EulerMaruyama().params()  # steps 1000, eps 1e-3


def test_cli_default_sampler_is_the_library_default(capsys):
    assert cli.SAMPLER_FALLBACK == "em" and cli.SAMPLERS["em"].cls == "samplers:EulerMaruyama"
    parser = cli.build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["sample", "--help"])
    assert "(default: em, 1000 steps;" in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("snr", [0.16, 0.5])
def test_langevin_with_the_exact_gaussian_score_keeps_its_known_stationary_variance(snr):
    # VE with a point mass at 0: p_t = N(0, sigma^2 I) with score -x / sigma^2, and alpha = 1. The SNR rule
    # gives the step h = 2 r^2 (E|z| / E|s|)^2 = 2 r^2 sigma^4 / v on a state of variance v, and the move
    # x' = (1 - h / sigma^2) x + sqrt(2 h) z has the stationary variance v = sigma^2 / (1 - h / (2 sigma^2)),
    # whose self-consistent solution is v = sigma^2 (1 + r^2): p_t up to the O(h) bias r^2.
    sde = sd.VESDE()
    t = 0.5
    sigma = float(sde.std(torch.tensor(t, dtype=torch.float64)))
    rsde = sde.reverse(lambda x, tt: -x / sigma**2)
    g = torch.Generator().manual_seed(0)
    x = sigma * torch.randn(40_000, 2, generator=g, dtype=torch.float64)
    corrector = LangevinCorrector(snr=snr, steps=60)
    with torch.inference_mode():
        x = corrector.update(rsde, x, t, t - 1e-3, g)
    ratio = float(x.var()) / sigma**2
    se = math.sqrt(2 / x.numel())  # of a sample variance (relative)
    assert ratio == pytest.approx(1 + snr**2, abs=5 * se)
    assert float(x.mean()) == pytest.approx(0.0, abs=5 * sigma * math.sqrt(1 / x.numel()))
