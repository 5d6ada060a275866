"""Tests for scoresde.metrics: exact answers against naive/independent computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
import torch
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st

from scoresde import metrics
from scoresde.metrics import (
    METRICS,
    MetricFloor,
    energy_distance,
    get_metric,
    metric_floor,
    mmd,
    mode_fractions,
    mode_weight_test,
    sliced_wasserstein,
)

DTYPES = [torch.float32, torch.float64]
RTOL = {torch.float32: 1e-5, torch.float64: 1e-11}


def randn(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=dtype)


def gaussian_sampler(d: int = 2):
    def sample(n: int, generator: torch.Generator) -> torch.Tensor:
        return torch.randn(n, d, generator=generator, dtype=torch.float64)

    return sample


# ---------------------------------------------------------------------------
# naive references (numpy, float64, O(n^2))
# ---------------------------------------------------------------------------


def naive_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.reshape(len(a), -1)
    b = b.reshape(len(b), -1)
    return np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))


def naive_energy(x: np.ndarray, y: np.ndarray) -> float:
    n, m = len(x), len(y)
    dxy = naive_dists(x, y).mean()
    dxx = naive_dists(x, x).sum() / (n * (n - 1))
    dyy = naive_dists(y, y).sum() / (m * (m - 1))
    return 2 * dxy - dxx - dyy


def naive_mmd(x: np.ndarray, y: np.ndarray, hs: list[float]) -> float:
    def k(a, b):
        d2 = naive_dists(a, b) ** 2
        return sum(np.exp(-d2 / (2 * h * h)) for h in hs)

    n, m = len(x), len(y)
    kxx = k(x, x)
    kyy = k(y, y)
    np.fill_diagonal(kxx, 0.0)
    np.fill_diagonal(kyy, 0.0)
    return kxx.sum() / (n * (n - 1)) + kyy.sum() / (m * (m - 1)) - 2 * k(x, y).mean()


def exact_w1d(u: np.ndarray, v: np.ndarray, p: float) -> float:
    """Exact 1-D W_p via replication to a common size n*m (independent of the grid code)."""
    n, m = len(u), len(v)
    uu = np.sort(np.repeat(u, m))
    vv = np.sort(np.repeat(v, n))
    return float(np.mean(np.abs(uu - vv) ** p) ** (1 / p))


# ---------------------------------------------------------------------------
# sliced Wasserstein
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("p", [1, 2, 3])
@pytest.mark.parametrize("shape", [(200,), (200, 1), (200, 1, 1)])
def test_sw_1d_shift_is_exact(dtype, p, shape):
    x = randn(*shape, seed=1, dtype=dtype)
    c = 0.75
    val = sliced_wasserstein(x, x + c, projections=7, p=p)
    assert val == pytest.approx(c, rel=RTOL[dtype])
    val = sliced_wasserstein(x, x - c, projections=7, p=p)
    assert val == pytest.approx(c, rel=RTOL[dtype])


@pytest.mark.parametrize("p", [1, 2, 3])
def test_sw_1d_equal_sizes_sorted_formula(p):
    x = randn(300, 1, seed=2)
    y = 0.5 * randn(300, 1, seed=3) + 0.3
    expected = np.mean(np.abs(np.sort(x[:, 0].numpy()) - np.sort(y[:, 0].numpy())) ** p) ** (1 / p)
    assert sliced_wasserstein(x, y, projections=3, p=p) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("n,m", [(7, 5), (40, 25), (33, 64), (2, 9)])
def test_sw_1d_unequal_sizes_matches_scipy_p1(n, m):
    x = randn(n, 1, seed=4)
    y = 2.0 * randn(m, 1, seed=5) + 1.0
    expected = scipy.stats.wasserstein_distance(x[:, 0].numpy(), y[:, 0].numpy())
    assert sliced_wasserstein(x, y, projections=3, p=1) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("p", [1, 2, 3.5])
@pytest.mark.parametrize("n,m", [(7, 5), (12, 18), (21, 14)])
def test_sw_1d_unequal_sizes_exact_wp(p, n, m):
    x = randn(n, 1, seed=6)
    y = randn(m, 1, seed=7) ** 3
    expected = exact_w1d(x[:, 0].numpy(), y[:, 0].numpy(), p)
    assert sliced_wasserstein(x, y, projections=3, p=p) == pytest.approx(expected, rel=1e-12)


def test_sw_projection_chunking_does_not_change_result(monkeypatch):
    x = randn(50, 3, seed=8)
    y_eq = randn(50, 3, seed=9) + 0.2
    y_neq = randn(37, 3, seed=10) + 0.2
    ref_eq = sliced_wasserstein(x, y_eq)
    ref_neq = sliced_wasserstein(x, y_neq)
    monkeypatch.setattr(metrics, "_SW_BUFFER_ELEMENTS", 200)  # 2 projections per chunk
    assert sliced_wasserstein(x, y_eq) == pytest.approx(ref_eq, rel=1e-12)
    assert sliced_wasserstein(x, y_neq) == pytest.approx(ref_neq, rel=1e-12)


@pytest.mark.parametrize("d", [2, 3, 5])
def test_sw_shift_matches_projected_shift_exactly(d):
    # x vs x + c: every sorted projection differs by theta.c, so
    # SW_2^2 = mean_l (theta_l . c)^2 exactly for the drawn directions.
    x = randn(64, d, seed=11)
    c = torch.linspace(0.5, 1.5, d, dtype=torch.float64)
    g = torch.Generator().manual_seed(123)
    theta = torch.randn(1000, d, generator=g, dtype=torch.float64)
    theta = theta / theta.norm(dim=1, keepdim=True)
    expected = math.sqrt(float(((theta @ c) ** 2).mean()))
    val = sliced_wasserstein(x, x + c, projections=1000, seed=123)
    assert val == pytest.approx(expected, rel=1e-10)
    # generator argument gives the same directions as the seed
    val_g = sliced_wasserstein(x, x + c, projections=1000, generator=torch.Generator().manual_seed(123))
    assert val_g == val


@pytest.mark.parametrize("d", [2, 3, 5])
def test_sw_shift_expectation_is_norm_over_d(d):
    # E[(theta.c)^2] = ||c||^2 / d, Var = ||c||^4 * 2(d-1) / (d^2 (d+2)).
    x = randn(32, d, seed=12)
    c = randn(d, seed=13)
    L = 20000
    val = sliced_wasserstein(x, x + c, projections=L, seed=d)
    c2 = float(c @ c)
    mc_std = c2 * math.sqrt(2 * (d - 1) / (d * d * (d + 2)) / L)
    assert abs(val**2 - c2 / d) < 4 * mc_std


@pytest.mark.parametrize("dtype", DTYPES)
def test_sw_basic_properties(dtype):
    x = randn(300, 2, seed=14, dtype=dtype)
    y = randn(250, 2, seed=15, dtype=dtype) * 1.3
    assert sliced_wasserstein(x, x) == 0.0
    a = sliced_wasserstein(x, y)
    assert isinstance(a, float) and a > 0
    assert sliced_wasserstein(y, x) == pytest.approx(a, rel=RTOL[dtype] * 10)
    assert sliced_wasserstein(x, y) == a  # deterministic
    b = sliced_wasserstein(x, y, seed=1)
    assert b != a and b == pytest.approx(a, rel=0.1)


def test_sw_float32_close_to_float64():
    x = randn(500, 3, seed=16)
    y = randn(400, 3, seed=17) + 0.1
    v64 = sliced_wasserstein(x, y)
    v32 = sliced_wasserstein(x.float(), y.float())
    assert v32 == pytest.approx(v64, rel=1e-4)


def test_sw_argument_validation():
    x = randn(10, 2)
    with pytest.raises(ValueError, match="projections"):
        sliced_wasserstein(x, x, projections=0)
    with pytest.raises(ValueError, match="p must"):
        sliced_wasserstein(x, x, p=0.5)


# ---------------------------------------------------------------------------
# energy distance
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,m,shape", [(50, 50, (2,)), (50, 37, (2,)), (23, 41, (3, 2)), (30, 20, (100,))])
@pytest.mark.parametrize("chunk_size", [7, 2048])
def test_energy_matches_naive(dtype, n, m, shape, chunk_size):
    x = randn(n, *shape, seed=20, dtype=dtype)
    y = randn(m, *shape, seed=21, dtype=dtype) * 1.5 + 0.3
    expected = naive_energy(x.double().numpy(), y.double().numpy())
    val = energy_distance(x, y, chunk_size=chunk_size)
    scale = naive_dists(x.double().numpy(), y.double().numpy()).mean()
    assert val == pytest.approx(expected, abs=scale * RTOL[dtype] * 10)


def test_energy_same_distribution_within_floor_and_shift_detected():
    n = 1000
    floor = metric_floor("energy", gaussian_sampler(), n, pairs=8, seed=3)
    g = torch.Generator().manual_seed(99)
    x = torch.randn(n, 2, generator=g, dtype=torch.float64)
    y = torch.randn(n, 2, generator=g, dtype=torch.float64)
    assert abs(energy_distance(x, y)) <= floor.threshold(4.0)
    assert abs(floor.mean) < 4 * floor.std  # U-statistic: unbiased, centred on 0
    # shift by 0.5: E = 2 E|Z + c| - 2 E|Z'|, Z ~ N(0, 2 I); clearly above the floor
    shifted = energy_distance(x, y + torch.tensor([0.5, 0.0], dtype=torch.float64))
    assert shifted > 0.05 and not floor.contains(shifted)
    assert shifted > floor.threshold(20.0)


def test_energy_identical_sets_is_negative_u_statistic():
    # E(x, x) = 2 mean_all - 2 mean_offdiag = 2 mean_offdiag (1/n - 1) < 0
    x = randn(40, 2, seed=22)
    d = naive_dists(x.numpy(), x.numpy())
    n = 40
    offdiag = d.sum() / (n * (n - 1))
    assert energy_distance(x, x) == pytest.approx(2 * d.sum() / n**2 - 2 * offdiag, rel=1e-12)


# ---------------------------------------------------------------------------
# MMD
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bandwidth", [0.5, 2.0, [0.3, 1.0, 3.0], (1.0,)])
@pytest.mark.parametrize("n,m,shape", [(50, 50, (2,)), (50, 37, (2,)), (30, 20, (80,))])
def test_mmd_matches_naive(dtype, bandwidth, n, m, shape):
    x = randn(n, *shape, seed=30, dtype=dtype)
    y = randn(m, *shape, seed=31, dtype=dtype) + 0.4
    if shape == (80,):
        bandwidth = [10 * h for h in np.atleast_1d(bandwidth)]
    hs = [float(h) for h in np.atleast_1d(bandwidth)]
    expected = naive_mmd(x.double().numpy(), y.double().numpy(), hs)
    val = mmd(x, y, bandwidth=bandwidth, chunk_size=16)
    assert val == pytest.approx(expected, abs=len(hs) * RTOL[dtype] * 10)


def test_mmd_median_heuristic():
    x = randn(50, 2, seed=32)
    y = randn(37, 2, seed=33) * 2
    z = torch.cat([x, y]).numpy()
    d = naive_dists(z, z)
    h = float(np.median(d[np.triu_indices(len(z), k=1)]))
    assert mmd(x, y) == pytest.approx(naive_mmd(x.numpy(), y.numpy(), [h]), rel=1e-12)
    assert mmd(x, y) == pytest.approx(mmd(x, y, bandwidth=h), rel=1e-12)


def test_mmd_median_heuristic_degenerate_falls_back_to_one():
    x = torch.zeros(5, 2, dtype=torch.float64)
    assert mmd(x, x) == pytest.approx(0.0, abs=1e-15)


def test_mmd_detects_shift_and_validates_bandwidth():
    x = randn(500, 2, seed=34)
    y = randn(500, 2, seed=35)
    same = mmd(x, y)
    shifted = mmd(x, y + 1.0)
    assert shifted > 50 * abs(same)
    for bad in (0.0, -1.0, [1.0, 0.0], [], float("nan"), "abc"):
        with pytest.raises(ValueError, match="bandwidth"):
            mmd(x, y, bandwidth=bad)


# ---------------------------------------------------------------------------
# registry and floors
# ---------------------------------------------------------------------------


def test_registry():
    assert set(METRICS) == {"sliced_wasserstein", "energy", "mmd"}
    assert get_metric("energy") is energy_distance
    assert get_metric(mmd) is mmd
    with pytest.raises(ValueError, match="sliced_wasserstein.*energy.*mmd"):
        get_metric("wasserstein")


@pytest.mark.parametrize("name", sorted(METRICS))
def test_metric_floor_deterministic_and_reproducible(name):
    sample = gaussian_sampler()
    f1 = metric_floor(name, sample, 200, pairs=3, seed=5)
    f2 = metric_floor(name, sample, 200, pairs=3, seed=5)
    assert f1 == f2
    assert f1.metric == name and f1.n == 200 and len(f1.values) == 3
    # pair k uses a generator seeded seed*1000 + k, drawing x then y
    g = torch.Generator().manual_seed(5 * 1000 + 1)
    x, y = sample(200, g), sample(200, g)
    assert f1.values[1] == METRICS[name](x, y)
    f3 = metric_floor(name, sample, 200, pairs=3, seed=6)
    assert f3.values != f1.values


def test_metric_floor_statistics_and_threshold():
    floor = metric_floor("sliced_wasserstein", gaussian_sampler(), 100, pairs=4, projections=50)
    vals = np.array(floor.values)
    assert floor.mean == pytest.approx(vals.mean(), rel=1e-14)
    assert floor.std == pytest.approx(vals.std(ddof=1), rel=1e-12)
    assert floor.threshold() == pytest.approx(floor.mean + 3 * floor.std, rel=1e-14)
    assert floor.threshold(1.5) == pytest.approx(floor.mean + 1.5 * floor.std, rel=1e-14)
    assert floor.contains(floor.threshold(2.0), k=2.0)
    assert not floor.contains(floor.threshold(2.0) * 1.001 + 1e-12, k=2.0)
    s = str(floor)
    assert s.startswith("sliced_wasserstein floor (n=100, 4 pairs): ") and "±" in s
    # metric kwargs are forwarded: other projection seed, other values
    other = metric_floor("sliced_wasserstein", gaussian_sampler(), 100, pairs=4, projections=50, seed=0)
    assert other == floor


def test_metric_floor_fixed_values_dataclass():
    f = MetricFloor(metric="m", n=10, values=(1.0, 2.0, 3.0), mean=2.0, std=1.0)
    assert f.threshold() == 5.0 and f.threshold(k=1.0) == 3.0
    assert f.contains(5.0) and not f.contains(5.0001)
    assert str(f) == "m floor (n=10, 3 pairs): 2 ± 1"
    with pytest.raises(AttributeError):
        f.mean = 3.0  # type: ignore[misc]


def test_metric_floor_validation_and_callable_name():
    sample = gaussian_sampler()
    with pytest.raises(ValueError, match="pairs"):
        metric_floor("energy", sample, 50, pairs=1)
    with pytest.raises(ValueError, match="valid names"):
        metric_floor("nope", sample, 50)
    with pytest.raises(ValueError, match="rows"):
        metric_floor("energy", lambda n, g: sample(n + 1, g), 50, pairs=2)

    def my_metric(x, y):
        return float((x.mean(0) - y.mean(0)).norm())

    f = metric_floor(my_metric, sample, 50, pairs=2)
    assert f.metric == "my_metric"
    assert metric_floor(energy_distance, sample, 50, pairs=2).metric == "energy"


# ---------------------------------------------------------------------------
# mode weights
# ---------------------------------------------------------------------------

MEANS = torch.tensor([[-6.0, 0.0], [6.0, 0.0], [0.0, 8.0]], dtype=torch.float64)
WEIGHTS = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)


def sample_mixture(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.multinomial(WEIGHTS, n, replacement=True, generator=g)
    x = MEANS[labels] + 0.5 * torch.randn(n, 2, generator=g, dtype=torch.float64)
    return x, labels


def test_mode_fractions_exact_on_separated_modes():
    x, labels = sample_mixture(5000, seed=40)
    frac = mode_fractions(x, MEANS, chunk_size=333)
    expected = torch.bincount(labels, minlength=3).double() / 5000
    assert torch.equal(frac, expected)
    assert frac.dtype == torch.float64 and float(frac.sum()) == pytest.approx(1.0)
    # float32 input and means given as nested lists
    frac32 = mode_fractions(x.float(), MEANS.tolist())
    assert torch.equal(frac32, expected)


def test_mode_fractions_feature_shapes():
    x, labels = sample_mixture(1000, seed=41)
    x4 = x.reshape(1000, 2, 1)
    assert torch.equal(mode_fractions(x4, MEANS.reshape(3, 2, 1)), mode_fractions(x, MEANS))
    # 1-D samples with 1-D means
    y = torch.tensor([-1.0, -0.9, 1.0, 1.1, 1.2])
    assert mode_fractions(y, torch.tensor([-1.0, 1.0])).tolist() == [0.4, 0.6]
    with pytest.raises(ValueError, match="means"):
        mode_fractions(x, torch.zeros(3, 3))


def test_mode_weight_test_exact_mixture_passes():
    x, _ = sample_mixture(20000, seed=42)
    res = mode_weight_test(x, MEANS, WEIGHTS)
    assert res.ok
    assert res.n == 20000 and res.k == 3.0
    se = torch.sqrt(WEIGHTS * (1 - WEIGHTS) / 20000)
    assert torch.allclose(res.std_errors, se, rtol=1e-14)
    assert torch.allclose(res.z_scores, (res.fractions - WEIGHTS) / se, rtol=1e-12)
    assert bool((res.z_scores.abs() <= 3).all())
    assert "ok" in str(res)


def test_mode_weight_test_matches_binomial_distribution():
    """z-scores are the standardised binomial counts; p-values the exact two-sided binomial test."""
    x, labels = sample_mixture(3000, seed=46)
    res = mode_weight_test(x.numpy(), MEANS, WEIGHTS)
    counts = torch.bincount(labels, minlength=3).numpy()
    assert (res.fractions.numpy() * 3000).round().astype(int).tolist() == counts.tolist()
    for c, w, z, p in zip(counts, WEIGHTS.tolist(), res.z_scores.tolist(), res.p_values.tolist(), strict=True):
        assert z == pytest.approx((c - 3000 * w) / math.sqrt(3000 * w * (1 - w)), rel=1e-12)
        assert p == scipy.stats.binomtest(int(c), 3000, w).pvalue
    assert res.p_values.dtype == torch.float64 and res.p_values.shape == (3,)


def test_metric_floor_accepts_numpy_samplers():
    def sample_np(n, generator):
        return torch.randn(n, 2, generator=generator, dtype=torch.float64).numpy()

    a = metric_floor("energy", sample_np, n=50, pairs=3)
    b = metric_floor("energy", gaussian_sampler(2), n=50, pairs=3)
    assert a.values == b.values
    with pytest.raises(ValueError, match="50 rows"):
        metric_floor("energy", lambda n, g: sample_np(n - 1, g), n=50, pairs=3)


def test_mode_weight_test_wrong_weights_fail():
    x, _ = sample_mixture(20000, seed=43)
    res = mode_weight_test(x, MEANS, [0.25, 0.45, 0.3])
    assert not res.ok
    assert float(res.z_scores.abs().max()) > 10
    assert "FAILED" in str(res)
    # a small violation passes with a loose k but fails with a tight one
    loose = mode_weight_test(x, MEANS, [0.205, 0.495, 0.3], k=100.0)
    assert loose.ok


def test_mode_weight_test_zero_weight_mode():
    x, _ = sample_mixture(2000, seed=44)
    means = torch.cat([MEANS, torch.tensor([[100.0, 100.0]], dtype=torch.float64)])
    res = mode_weight_test(x, means, [0.2, 0.5, 0.3, 0.0])
    assert float(res.z_scores[3]) == 0.0 and float(res.std_errors[3]) == 0.0
    # samples in a zero-weight mode -> infinite z, fails
    x2 = torch.cat([x, torch.tensor([[100.0, 100.0]], dtype=torch.float64)])
    res2 = mode_weight_test(x2, means, [0.2, 0.5, 0.3, 0.0])
    assert math.isinf(float(res2.z_scores[3])) and not res2.ok


def test_mode_weight_test_validation():
    x, _ = sample_mixture(100, seed=45)
    with pytest.raises(ValueError, match="sum to 1"):
        mode_weight_test(x, MEANS, [0.2, 0.5, 0.2])
    with pytest.raises(ValueError, match="shape"):
        mode_weight_test(x, MEANS, [0.5, 0.5])
    with pytest.raises(ValueError, match="non-negative"):
        mode_weight_test(x, MEANS, [-0.2, 0.9, 0.3])
    with pytest.raises(ValueError, match="means"):
        mode_weight_test(x, MEANS[:, :1], WEIGHTS)
    # within tolerance of 1e-6 is accepted
    mode_weight_test(x, MEANS, [0.2, 0.5, 0.3 + 5e-7])


# ---------------------------------------------------------------------------
# input validation (all metrics)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("fn", list(METRICS.values()))
def test_input_validation(fn):
    x = randn(20, 2, seed=50)
    y = randn(15, 2, seed=51)
    bad = x.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match=r"\bx\b.*NaN"):
        fn(bad, y)
    with pytest.raises(ValueError, match=r"\by\b.*NaN"):
        fn(x, bad)
    inf = y.clone()
    inf[0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"\by\b"):
        fn(x, inf)
    with pytest.raises(ValueError, match="feature shape"):
        fn(x, randn(15, 3))
    with pytest.raises(ValueError, match="feature shape"):
        fn(x.reshape(20, 2, 1), y)
    with pytest.raises(ValueError, match=r"\bx\b.*at least 2"):
        fn(x[:1], y)
    with pytest.raises(ValueError, match=r"\by\b.*at least 2"):
        fn(x, y[:1])
    with pytest.raises(TypeError, match=r"\by\b.*real numbers.*bool"):
        fn(x, y > 0)
    with pytest.raises(TypeError, match=r"\bx\b.*real numbers.*complex"):
        fn(x.numpy() + 1j, y)
    with pytest.raises(TypeError, match=r"\by\b.*real numbers"):
        fn(x, np.array([["a", "b"]] * 15))
    with pytest.raises(TypeError, match=r"\bx\b.*Dataset"):
        fn(xr.Dataset({"x": (("sample", "feature"), x.numpy())}), y)
    with pytest.raises(ValueError, match=r"\bx\b.*'time' dimension.*isel"):
        fn(xr.DataArray(x.numpy()[None], dims=("time", "sample", "feature")), y)
    with pytest.raises(ValueError, match=r"\by\b.*scalar"):
        fn(x, np.float64(1.0))
    with pytest.raises(ValueError, match=r"\by\b.*NaN"):
        fn(x, bad.numpy())
    with pytest.raises(ValueError, match="feature shape"):
        fn(x.numpy(), xr.DataArray(randn(15, 3).numpy(), dims=("sample", "feature")))


@pytest.mark.parametrize("fn", list(METRICS.values()))
def test_mixed_and_integer_dtypes_are_promoted(fn):
    x = randn(20, 2, seed=56)
    y = randn(15, 2, seed=57).float()
    # float32 with float64 is computed in float64
    assert fn(x, y) == fn(x, y.double())
    assert fn(y, x) == fn(y.double(), x)
    assert fn(x.numpy(), y.numpy()) == fn(x, y.double())
    # integers are converted to float64 exactly
    xi = torch.arange(40).reshape(20, 2) % 7
    yi = np.arange(30).reshape(15, 2) % 5
    assert fn(xi, yi) == fn(xi.double(), torch.from_numpy(yi).double())
    assert fn(xi, y) == fn(xi.double(), y.double())


def test_readme_tour_numpy_final_state():
    """The final state of a run, taken out of the Dataset as NumPy values, is a valid sample set."""
    import scoresde as sd

    sde = sd.VPSDE()
    target = sd.eight_gaussians()
    ds = sd.sample(sde, target.score(sde), sd.EulerMaruyama(steps=20), shape=(300, 2), seed=0, progress=False)
    truth = target.sample(300, torch.Generator().manual_seed(1), dtype=torch.float64)
    x = ds["x"].isel(time=-1).values
    expected = sliced_wasserstein(torch.from_numpy(x), truth)
    assert sliced_wasserstein(x, truth) == expected
    assert sliced_wasserstein(ds["x"].isel(time=-1), truth) == expected
    # a DataArray whose sample dimension is not first is transposed by name
    assert sliced_wasserstein(ds["x"].isel(time=-1).transpose(), truth) == expected
    assert mode_weight_test(x, target.means, target.weights).z_scores.tolist() == (
        mode_weight_test(torch.from_numpy(x), target.means, target.weights).z_scores.tolist()
    )


CONTAINERS = {
    "torch": lambda t: t,
    "numpy": lambda t: t.numpy(),
    "xarray": lambda t: xr.DataArray(t.numpy(), dims=("sample", *(f"f{i}" for i in range(t.ndim - 1)))),
}


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(2, 25),
    m=st.integers(2, 25),
    feature_shape=st.lists(st.integers(1, 3), min_size=0, max_size=2).map(tuple),
    dtype=st.sampled_from(DTYPES),
    cx=st.sampled_from(sorted(CONTAINERS)),
    cy=st.sampled_from(sorted(CONTAINERS)),
    seed=st.integers(0, 2**16),
)
def test_containers_give_the_torch_result(n, m, feature_shape, dtype, cx, cy, seed):
    """NumPy arrays and DataArrays of either float dtype give bit-identical results to the torch path."""
    x = randn(n, *feature_shape, seed=seed, dtype=dtype)
    y = randn(m, *feature_shape, seed=seed + 1, dtype=dtype) + 0.3
    xc, yc = CONTAINERS[cx](x), CONTAINERS[cy](y)
    assert sliced_wasserstein(xc, yc, projections=20) == sliced_wasserstein(x, y, projections=20)
    assert energy_distance(xc, yc) == energy_distance(x, y)
    assert mmd(xc, yc) == mmd(x, y)
    means = x[:2].reshape(2, -1)
    assert torch.equal(mode_fractions(xc, means), mode_fractions(x, means))
    d = x[0].numel()
    ref = y.reshape(m, d)
    floor = metric_floor("energy", gaussian_sampler(d), n=5, pairs=2, reference=CONTAINERS[cy](ref))
    assert floor.values == metric_floor("energy", gaussian_sampler(d), n=5, pairs=2, reference=ref).values


def test_inputs_requiring_grad_are_accepted():
    x = randn(20, 2, seed=52).requires_grad_()
    y = randn(20, 2, seed=53)
    for fn in METRICS.values():
        assert isinstance(fn(x, y), float)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", sorted(METRICS))
def test_cuda_matches_cpu(name):
    x = randn(300, 2, seed=54)
    y = randn(200, 2, seed=55) + 0.2
    fn = METRICS[name]
    if name == "sliced_wasserstein":
        # CUDA generators draw different directions; use d = 1 (exact W_p)
        x, y = x[:, :1], y[:, :1]
    assert fn(x.cuda(), y.cuda()) == pytest.approx(fn(x, y), rel=1e-9)
    mf = mode_fractions(x.cuda(), x[:3].cuda())
    assert mf.device.type == "cuda"


# ---------------------------------------------------------------------------
# properties (hypothesis)
# ---------------------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(2, 30),
    m=st.integers(2, 30),
    feature_shape=st.lists(st.integers(1, 3), min_size=0, max_size=2).map(tuple),
    dtype=st.sampled_from(DTYPES),
    seed=st.integers(0, 2**16),
    shift=st.floats(-5.0, 5.0),
    scale=st.floats(0.1, 10.0),
)
def test_symmetry_and_translation_invariance(n, m, feature_shape, dtype, seed, shift, scale):
    x = randn(n, *feature_shape, seed=seed, dtype=dtype) * scale
    y = randn(m, *feature_shape, seed=seed + 1, dtype=dtype) * scale + 0.5 * scale
    c = torch.full(feature_shape, shift, dtype=dtype) if feature_shape else torch.tensor(shift)
    c = c.to(dtype)
    tol = {torch.float32: 1e-4, torch.float64: 1e-10}[dtype]

    sw = sliced_wasserstein(x, y, projections=20)
    assert sw >= 0
    assert sliced_wasserstein(y, x, projections=20) == pytest.approx(sw, abs=tol * scale)
    assert sliced_wasserstein(x + c, y + c, projections=20) == pytest.approx(sw, abs=tol * (scale + abs(shift)))

    ed = energy_distance(x, y)
    assert energy_distance(y, x) == pytest.approx(ed, abs=tol * scale)
    assert energy_distance(x + c, y + c) == pytest.approx(ed, abs=tol * (scale + abs(shift)))

    h = scale
    mm = mmd(x, y, bandwidth=h)
    assert mmd(y, x, bandwidth=h) == pytest.approx(mm, abs=tol)
    assert mmd(x + c, y + c, bandwidth=h) == pytest.approx(mm, abs=tol * (1 + abs(shift) / scale))
