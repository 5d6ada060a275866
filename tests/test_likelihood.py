"""Exact log-likelihoods through the probability-flow ODE: exactness against Gaussian-mixture
oracles, closed-form linear fields, Hutchinson unbiasedness, bits per dimension, validation."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import SDES_BY_NAME

import scoresde as sd
from scoresde.likelihood import LikelihoodResult, log_likelihood

EPS = 1e-5


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """These problems are tiny: with 2 intra-op threads on a loaded 2-core machine, small batched
    matmuls in the mixture score took ~1000x longer (OpenMP waits). Restore the setting afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


EPS = 1e-5
TOL = {"rtol": 1e-6, "atol": 1e-6}
SDES = {name: type(sde) for name, sde in SDES_BY_NAME.items()}


TARGETS = {
    "ring2": (sd.eight_gaussians, 200),
    "gauss2": (lambda: sd.get_target("gaussian"), 100),
    "mix10": (sd.random_mixture, 50),
}


def data(target: str, seed: int = 0) -> tuple[sd.GaussianMixture, torch.Tensor]:
    make, n = TARGETS[target]
    mix = make()
    return mix, mix.sample(n, torch.Generator().manual_seed(seed), dtype=torch.float64)


_cache: dict[tuple[str, str], tuple[sd.GaussianMixture, torch.Tensor, LikelihoodResult]] = {}


def exact_run(sde_name: str, target: str):
    """Exact-trace likelihood at rtol = atol = 1e-6 (cached: reused by the Hutchinson tests)."""
    key = (sde_name, target)
    if key not in _cache:
        mix, x = data(target)
        sde = SDES[sde_name]()
        _cache[key] = (mix, x, log_likelihood(sde, mix.score(sde), x, eps=EPS, **TOL))
    return _cache[key]


# ---------------------------------------------------------------------------------------
# exactness against the mixture oracle
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("target", ["ring2", "mix10", "gauss2"])
@pytest.mark.parametrize("sde_name", ["vp", "subvp", "ve"])
def test_exact_trace_matches_mixture_log_density(sde_name, target):
    mix, x, res = exact_run(sde_name, target)
    sde = SDES[sde_name]()
    exact = mix.marginal(sde, EPS).log_prob(x)  # the ODE computes log p_eps at x
    assert res.log_prob.shape == (x.shape[0],) and res.log_prob.dtype == torch.float64
    assert res.std_error is None and res.estimates is None
    torch.testing.assert_close(res.log_prob, res.prior_logp + res.delta_logp, rtol=0, atol=1e-12)

    # solver accuracy: substitute the true log p_T at the latent x(T) for the prior
    true_T = mix.marginal(sde, sde.T).log_prob(res.latent) + res.delta_logp
    solver_err = (true_T - exact).abs()
    assert float(solver_err.mean()) <= 1e-3, float(solver_err.mean())
    assert float(solver_err.max()) <= 2e-3, float(solver_err.max())

    # end to end with the SDE's prior: adds the prior mismatch log p_T - prior_logp, which is
    # ~1e-4 nats for VP / sub-VP on these zero-mean targets, ~1e-3 for VE (|mu|^2 / sigma_max^2);
    # the single Gaussian (mean (1, -0.5)) has a first-order VP mismatch s(T) mu . x_T ~ 1e-2
    err = (res.log_prob - exact).abs()
    bound = 1e-3 if (sde_name != "ve" and target != "gauss2") else 2e-2
    assert float(err.mean()) <= bound, float(err.mean())


def test_vp_constant_velocity_field_gives_shifted_prior():
    """Data N(m, I) under VP: p_t = N(s(t) m, I), so the ODE drift -beta s(t) m / 2 is constant in x,
    its divergence is 0 and x(T) = x + m (s(T) - s(eps)): log p = prior_logp(x shifted) exactly."""
    m = torch.tensor([1.5, -2.0, 0.5], dtype=torch.float64)
    mix = sd.GaussianMixture([1.0], m[None], 1.0)
    sde = sd.VPSDE()
    x = torch.randn(64, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    res = log_likelihood(sde, mix.score(sde), x, eps=EPS, rtol=1e-10, atol=1e-10)
    s = lambda t: float(sde.mean_coef(torch.tensor(t, dtype=torch.float64)))  # noqa: E731
    shifted = x + m * (s(sde.T) - s(EPS))
    torch.testing.assert_close(res.delta_logp, torch.zeros(64, dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(res.latent, shifted, rtol=0, atol=1e-9)
    torch.testing.assert_close(res.log_prob, sde.prior_logp(shifted), rtol=0, atol=1e-8)


def _ve_point_mass_score(sde: sd.VESDE):
    """Exact score of VE-diffused data concentrated at 0: p_t = N(0, sigma(t)^2 I)."""

    def score(x, t):
        return -x / sde.sigma(t).reshape(-1, *[1] * (x.dim() - 1)) ** 2

    return score


def test_ve_linear_field_closed_form_on_images():
    """VE with data at 0: the ODE drift is L x with L = log(sigma_max / sigma_min) / T, divergence D L,
    x(T) = x sigma_max / sigma(eps), and the prior is exactly p_T, so log p_eps = log N(x; 0, sigma(eps)^2)."""
    sde = sd.VESDE(sigma_min=0.01, sigma_max=50.0)
    shape = (16, 1, 3, 3)
    D = 9
    x = 0.02 * torch.randn(shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    res = log_likelihood(sde, _ve_point_mass_score(sde), x, eps=EPS, rtol=1e-8, atol=1e-8)
    L = math.log(50.0 / 0.01)
    sig_eps = float(sde.sigma(torch.tensor(EPS, dtype=torch.float64)))
    assert res.latent.shape == shape
    torch.testing.assert_close(
        res.delta_logp, torch.full((16,), D * L * (1 - EPS), dtype=torch.float64), rtol=1e-7, atol=0
    )
    torch.testing.assert_close(res.latent, x * 50.0 / sig_eps, rtol=1e-6, atol=0)
    exact = -0.5 * D * math.log(2 * math.pi * sig_eps**2) - x.reshape(16, -1).square().sum(1) / (2 * sig_eps**2)
    torch.testing.assert_close(res.log_prob, exact, rtol=0, atol=1e-5)
    torch.testing.assert_close(res.bits_per_dim, -exact / (D * math.log(2)), rtol=0, atol=1e-5)

    # the Jacobian is L * I: Rademacher probes give v^T J v = D L exactly, with zero spread
    h = log_likelihood(
        sde, _ve_point_mass_score(sde), x, eps=EPS, rtol=1e-8, atol=1e-8, divergence="hutchinson", probes=4
    )
    assert h.estimates.shape == (16, 4)
    torch.testing.assert_close(h.log_prob, res.log_prob, rtol=0, atol=1e-5)
    assert float(h.std_error.max()) < 1e-9


# ---------------------------------------------------------------------------------------
# Hutchinson
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(("target", "noise"), [("ring2", "gaussian"), ("mix10", "rademacher")])
def test_hutchinson_unbiased_within_standard_error(target, noise):
    mix, x, exact = exact_run("vp", target)
    sde = sd.VPSDE()
    K = 8
    h = log_likelihood(sde, mix.score(sde), x, eps=EPS, **TOL, divergence="hutchinson", probes=K, noise=noise, seed=1)
    assert h.estimates.shape == (x.shape[0], K)
    torch.testing.assert_close(h.log_prob, h.estimates.mean(1), rtol=0, atol=1e-10)
    torch.testing.assert_close(h.std_error, h.estimates.std(1) / math.sqrt(K), rtol=0, atol=1e-10)
    d = h.log_prob - exact.log_prob
    z = float(d.sum() / h.std_error.square().sum().sqrt())  # ~ N(0, 1) if unbiased
    assert abs(z) < 4, z
    assert float((d.abs() <= 4 * h.std_error).double().mean()) >= 0.85
    # the estimate is not trivially exact: probes do add noise
    assert float(h.std_error.mean()) > 1e-3


def test_hutchinson_single_probe_has_no_standard_error():
    mix, x = data("ring2")
    sde = sd.VPSDE()
    h = log_likelihood(sde, mix.score(sde), x[:10], divergence="hutchinson")
    assert h.std_error is None and h.estimates.shape == (10, 1)


def test_deterministic_for_fixed_seed():
    mix, x = data("ring2")
    x = x[:20]
    sde = sd.SubVPSDE()
    kw = dict(divergence="hutchinson", probes=3, noise="gaussian", dequantize=0.01)
    a = log_likelihood(sde, mix.score(sde), x, seed=7, **kw)
    b = log_likelihood(sde, mix.score(sde), x, seed=7, **kw)
    c = log_likelihood(sde, mix.score(sde), x, seed=8, **kw)
    assert torch.equal(a.log_prob, b.log_prob) and torch.equal(a.std_error, b.std_error)
    assert torch.equal(a.latent, b.latent) and a.nfe == b.nfe
    assert not torch.equal(a.log_prob, c.log_prob)


# ---------------------------------------------------------------------------------------
# bits per dimension, dequantisation, dtype, NFE
# ---------------------------------------------------------------------------------------
def test_bits_per_dim_and_dequantisation():
    sde = sd.VESDE(sigma_min=0.01, sigma_max=50.0)
    shape, D, w, seed = (8, 2, 2), 4, 1 / 256, 11
    x = torch.randint(0, 3, shape, generator=torch.Generator().manual_seed(0)).double() * w
    res = log_likelihood(sde, _ve_point_mass_score(sde), x, eps=EPS, rtol=1e-8, atol=1e-8, dequantize=w, seed=seed)
    # the dequantisation noise is the generator's first draw
    u = w * torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    assert float(u.min()) >= 0 and float(u.max()) < w
    sig_eps = float(sde.sigma(torch.tensor(EPS, dtype=torch.float64)))
    xd = (x + u).reshape(8, -1)
    exact = -0.5 * D * math.log(2 * math.pi * sig_eps**2) - xd.square().sum(1) / (2 * sig_eps**2)
    torch.testing.assert_close(res.log_prob, exact, rtol=0, atol=1e-5)
    bpd = -(res.log_prob + D * math.log(w)) / (D * math.log(2))
    torch.testing.assert_close(res.bits_per_dim, bpd, rtol=0, atol=1e-12)
    # w = 1/256: score_sde's "-log p / (D ln 2) + 8"
    torch.testing.assert_close(res.bits_per_dim, -res.log_prob / (D * math.log(2)) + 8, rtol=0, atol=1e-12)


def test_float32_follows_dtype_and_counts_nfe():
    mix, x = data("ring2")
    sde = sd.VPSDE()
    calls = [0]
    score = mix.score(sde)

    def counted(xt, t):
        calls[0] += 1
        return score(xt, t)

    r32 = log_likelihood(sde, counted, x[:50].float())
    assert r32.log_prob.dtype == torch.float32 and r32.latent.dtype == torch.float32
    assert r32.nfe == calls[0] > 0
    torch.testing.assert_close(r32.log_prob.double(), mix.marginal(sde, EPS).log_prob(x[:50]), rtol=0, atol=5e-3)


def test_runs_under_inference_mode():
    mix, x = data("ring2")
    sde = sd.VPSDE()
    with torch.inference_mode():
        r = log_likelihood(sde, mix.score(sde), x[:10])
    assert torch.isfinite(r.log_prob).all()


# ---------------------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"x": torch.tensor([[0.0, float("nan")]])}, "x"),
        ({"x": torch.zeros(3)}, "x"),
        ({"eps": 0.0}, "eps"),
        ({"eps": 1.0}, "eps"),
        ({"method": "euler"}, "method"),
        ({"rtol": -1.0}, "rtol"),
        ({"atol": 0.0}, "atol"),
        ({"divergence": "trace"}, "divergence"),
        ({"noise": "uniform"}, "noise"),
        ({"probes": 0}, "probes"),
        ({"dequantize": 0.0}, "dequantize"),
    ],
)
def test_validation_errors_name_the_argument(kwargs, match):
    sde = sd.VPSDE()
    score = sd.eight_gaussians().score(sde)
    args = {"x": torch.zeros(4, 2, dtype=torch.float64), **kwargs}
    x = args.pop("x")
    with pytest.raises(ValueError, match=match):
        log_likelihood(sde, score, x, **args)


def test_rejects_reversed_sde_and_bad_types():
    sde = sd.VPSDE()
    score = sd.eight_gaussians().score(sde)
    x = torch.zeros(4, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="sde"):
        log_likelihood(sde.reverse(score, probability_flow=True), score, x)
    with pytest.raises(TypeError, match="score_fn"):
        log_likelihood(sde, None, x)
    with pytest.raises(TypeError, match="x"):
        log_likelihood(sde, score, torch.zeros(4, 2, dtype=torch.long))
    with pytest.raises(TypeError, match="seed"):
        log_likelihood(sde, score, x, seed=1.5)


def test_prior_logp_override_removes_the_prior_mismatch():
    """With the exact log p_T the ODE likelihood meets 1e-3 nats for VE too (the SDE prior gives ~1.3e-3)."""
    import scoresde as sd
    from scoresde.likelihood import log_likelihood

    mix, sde = sd.eight_gaussians(), sd.VESDE()
    x = mix.marginal(sde, 1e-5).sample(100, torch.Generator().manual_seed(0), dtype=torch.float64)
    exact = mix.marginal(sde, 1e-5).log_prob(x)
    res = log_likelihood(sde, mix.score(sde), x, rtol=1e-6, atol=1e-6, prior_logp=mix.marginal(sde, sde.T).log_prob)
    assert float((res.log_prob - exact).abs().mean()) < 1e-4
    plain = log_likelihood(sde, mix.score(sde), x, rtol=1e-6, atol=1e-6)
    assert float((plain.log_prob - exact).abs().mean()) > 5e-4  # the mismatch is real and measurable


# ---------------------------------------------------------------------------------------
# safety: divergence, runaway solves, non-differentiable scores, tolerances, dtypes, seeds
# ---------------------------------------------------------------------------------------
def _ring_points(n: int = 5, dtype=torch.float64):
    mix = sd.eight_gaussians()
    return mix, mix.sample(n, torch.Generator().manual_seed(0), dtype=dtype)


def test_nan_score_names_time_and_samples():
    """A score that turns NaN for samples 1 and 3 from t = 0.5 on: the error names t and those samples."""
    mix, x = _ring_points()
    sde = sd.VPSDE()
    score = mix.score(sde)

    def nan_score(xt, t):
        mask = (t >= 0.5)[:, None] & (torch.arange(xt.shape[0]) % 2 == 1)[:, None]
        return score(xt, t).masked_fill(mask, float("nan"))

    with pytest.raises(
        RuntimeError, match=r"drift \(from score_fn\) is NaN or infinite at t=0\.5\d* for samples \[1, 3\]"
    ):
        log_likelihood(sde, nan_score, x, rtol=1e-4, atol=1e-4)


def test_infinite_divergence_is_reported_as_divergence():
    """A finite score whose gradient is NaN (sqrt at 0): the error blames the divergence, not x."""
    mix, x = _ring_points()
    sde = sd.VESDE()
    score = mix.score(sde)
    x = x.clone()
    x[2] = 0.0

    def bad_grad(xt, t):
        return score(xt, t) + torch.sqrt(xt.square().sum(dim=1, keepdim=True)) * 0.0

    with pytest.raises(RuntimeError, match=r"divergence of the drift is NaN or infinite at t=1e-05 for samples \[2\]"):
        log_likelihood(sde, bad_grad, x)


def test_max_nfe_stops_a_runaway_solve():
    """A score 1e3 x makes the ODE stiff; the solve used to run for thousands of NFE and return a number."""
    _, x = _ring_points()
    sde = sd.VPSDE()
    with pytest.raises(RuntimeError, match=r"max_nfe=300 score evaluations"):
        log_likelihood(sde, lambda xt, t: 1e3 * xt, x, max_nfe=300)
    with pytest.raises(RuntimeError, match=r"max_nfe=5000 score evaluations"):  # the default catches it too
        log_likelihood(sde, lambda xt, t: 1e3 * xt, x[:2])


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
def test_correct_runs_stay_well_below_the_default_max_nfe(sde_name):
    from scoresde.likelihood import MAX_NFE

    mix, x = _ring_points(20)
    sde = SDES[sde_name]()
    r = log_likelihood(sde, mix.score(sde), x, rtol=1e-9, atol=1e-9)
    assert r.nfe < MAX_NFE / 5
    with pytest.raises(ValueError, match="max_nfe"):
        log_likelihood(sde, mix.score(sde), x, max_nfe=0)


@pytest.mark.parametrize(
    "make",
    [
        lambda score: lambda xt, t: score(xt.detach(), t),
        lambda score: lambda xt, t: score(xt, t).detach(),
        lambda score: lambda xt, t: torch.from_numpy(score(xt, t).detach().numpy()),
    ],
    ids=["detached-input", "detached-output", "numpy"],
)
@pytest.mark.parametrize("divergence", ["exact", "hutchinson"])
def test_non_differentiable_score_is_rejected(make, divergence):
    """A detached score gave a finite, wrong log p (only the linear drift's divergence was counted)."""
    mix, x = _ring_points()
    sde = sd.VPSDE()
    with pytest.raises(ValueError, match="no autograd graph back to x"):
        log_likelihood(sde, make(mix.score(sde)), x, divergence=divergence)


def test_score_of_wrong_shape_is_rejected():
    mix, x = _ring_points()
    sde = sd.VPSDE()
    score = mix.score(sde)
    with pytest.raises(ValueError, match=r"score_fn\(x, t\) returned shape \(5, 1\)"):
        log_likelihood(sde, lambda xt, t: score(xt, t)[:, :1], x)


@pytest.mark.parametrize(
    ("dtype", "rtol", "atol", "bad"),
    [
        (torch.float64, 1e-300, 1e-300, "rtol"),
        (torch.float64, 1e-5, 1e-16, "atol"),
        (torch.float32, 1e-8, 1e-5, "rtol"),
        (torch.float32, 1e-5, 1e-9, "atol"),
    ],
)
def test_tolerances_below_the_resolution_are_rejected(dtype, rtol, atol, bad):
    """rtol = atol = 1e-300 made scipy take ever smaller steps (a minute for two points)."""
    from scoresde.likelihood import tolerance_floor

    mix, x = _ring_points(2, dtype)
    sde = sd.VPSDE()
    with pytest.raises(ValueError, match=rf"{bad}=.* must be >= {tolerance_floor(dtype):.3g}"):
        log_likelihood(sde, mix.score(sde), x, rtol=rtol, atol=atol)


def test_tolerance_floor_values():
    from scoresde.likelihood import tolerance_floor

    assert tolerance_floor(torch.float64) == 100 * torch.finfo(torch.float64).eps
    assert tolerance_floor(torch.float32) == torch.finfo(torch.float32).eps
    assert tolerance_floor(torch.float32) < 1e-5  # the default tolerance is accepted for float32


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_refused_like_sample(dtype):
    mix, x = _ring_points(2)
    sde = sd.VPSDE()
    with pytest.raises(ValueError, match=rf"x must be float32 or float64, got {dtype}"):
        log_likelihood(sde, mix.score(sde), x.to(dtype))


@pytest.mark.parametrize("seed", [-1, 2**63, 2**64])
def test_seed_outside_the_generator_range_is_refused(seed):
    mix, x = _ring_points(2)
    sde = sd.VPSDE()
    with pytest.raises(ValueError, match=r"seed must be an integer in \[0, 2\*\*63\)"):
        log_likelihood(sde, mix.score(sde), x, seed=seed)


def test_num_threads_is_applied_and_restored():
    mix, x = _ring_points(4)
    sde = sd.VPSDE()
    score = mix.score(sde)
    seen = []

    def spy(xt, t):
        seen.append(torch.get_num_threads())
        return score(xt, t)

    before = torch.get_num_threads()
    r2 = log_likelihood(sde, spy, x, num_threads=2, rtol=1e-4, atol=1e-4)
    assert set(seen) == {2} and torch.get_num_threads() == before
    r1 = log_likelihood(sde, score, x, num_threads=1, rtol=1e-4, atol=1e-4)
    assert torch.equal(r1.log_prob, r2.log_prob)

    def boom(xt, t):
        raise KeyError("boom")

    with pytest.raises(KeyError):
        log_likelihood(sde, boom, x, num_threads=2)
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="num_threads"):
        log_likelihood(sde, score, x, num_threads=0)
