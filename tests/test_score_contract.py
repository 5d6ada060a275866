"""The score-function contract: every sampler rejects, on the first call, a score that is not a tensor
of x's shape, dtype and device, with an error that names score_fn."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import scoresde as sd

VP = sd.VPSDE()
DDPM = sd.DDPMSchedule.linear(T=8).sde()


def all_samplers():
    """(sampler, sde) pairs covering every sampler class and PC predictor/corrector."""
    pairs = [
        (sd.EulerMaruyama(steps=4), VP),
        (sd.PredictorCorrector(steps=4), VP),
        (sd.PredictorCorrector("ancestral", "ald", steps=4), VP),
        (sd.PredictorCorrector("none", "langevin", steps=4), VP),
        (sd.PredictorCorrector("euler_maruyama", "none", steps=4), VP),
        (sd.ProbabilityFlowODE("RK45", rtol=1e-2, atol=1e-2), VP),
        (sd.ProbabilityFlowODE("euler", steps=4), VP),
        (sd.ProbabilityFlowODE("heun", steps=4), VP),
        (sd.TorchSDE("euler", steps=4), VP),
        (sd.TorchSDE("srk", steps=4), VP),
        (sd.Euler(steps=4), VP),
        (sd.Heun(steps=4), VP),
        (sd.DDIM(steps=4), VP),
        (sd.DPMSolverPP(steps=4), VP),
        (sd.UniPC(steps=4), VP),
        (sd.AdaptiveSDE(), VP),
        (sd.DDPMAncestral(), DDPM),
        (sd.FlowODE(steps=4), VP),
    ]
    return pairs


SAMPLERS = all_samplers()


def _good(x, t):
    return -x


BAD = {
    "row (1, d)": (lambda x, t: -x[:1], ValueError, r"shape \(1, 2\)"),
    "0-d": (lambda x, t: (-x).sum(), ValueError, r"shape \(\)"),
    "(n, d + 1)": (lambda x, t: torch.zeros(x.shape[0], x.shape[1] + 1, dtype=x.dtype), ValueError, "shape"),
    "numpy": (lambda x, t: (-x).numpy(), TypeError, "numpy.ndarray"),
    "float": (lambda x, t: 0.0, TypeError, "float"),
    "float16": (lambda x, t: (-x).half(), TypeError, "float16"),
    "int64": (lambda x, t: (-x).long(), TypeError, "int64"),
    "other float": (lambda x, t: (-x).double() if x.dtype == torch.float32 else (-x).float(), TypeError, "dtype"),
    "meta device": (lambda x, t: torch.empty_like(x, device="meta"), ValueError, "device meta"),
}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    which=st.integers(0, len(SAMPLERS) - 1),
    bad=st.sampled_from(sorted(BAD)),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_bad_score_functions_are_rejected_by_every_sampler(which, bad, dtype):
    sampler, sde = SAMPLERS[which]
    fn, exc, match = BAD[bad]
    with pytest.raises(exc, match=match) as info:
        sd.sample(sde, fn, sampler, shape=(3, 2), dtype=dtype, progress=False)
    assert "score_fn" in str(info.value)


@pytest.mark.parametrize("sampler,sde", SAMPLERS, ids=lambda v: type(v).__name__)
def test_float64_score_for_float32_state_is_the_same_error_everywhere(sampler, sde):
    # AdaptiveSDE used to fail deep inside with an index_put dtype error; the others cast silently
    with pytest.raises(TypeError, match=r"score_fn\(x, t\) returned dtype torch.float64 for x of dtype torch.float32"):
        sd.sample(sde, lambda x, t: (-x).double(), sampler, shape=(3, 2), progress=False)


@pytest.mark.parametrize("sampler,sde", SAMPLERS, ids=lambda v: type(v).__name__)
def test_a_valid_score_passes(sampler, sde):
    ds = sd.sample(sde, _good, sampler, shape=(3, 2), dtype=torch.float64, progress=False)
    assert ds["x"].shape[1:] == (3, 2)


def test_velocity_model_is_checked_too():
    class V:
        sde = sd.RectifiedFlow()

        def __call__(self, x, t):
            return -x

        def velocity(self, x, t):
            return x[:1]

    with pytest.raises(ValueError, match=r"score_fn.velocity\(x, t\) returned shape \(1, 2\)"):
        sd.sample(sd.RectifiedFlow(), V(), sd.FlowODE(steps=3), shape=(4, 2), progress=False)
