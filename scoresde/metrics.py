r"""Sample-based distances between two sets of samples.

Every metric takes two sample sets ``x`` of shape ``(n, *feature_shape)`` and
``y`` of shape ``(m, *feature_shape)``; the feature dimensions are flattened, so
a sample is a vector in :math:`R^d` with ``d = prod(feature_shape)`` (a 1-D
set of shape ``(n,)`` is ``n`` scalar samples, ``d = 1``).

Conventions shared by all metrics

* A sample set is a :class:`torch.Tensor`, a NumPy array or an
  :class:`xarray.DataArray` (e.g. ``ds["x"].isel(time=-1)`` of a run of
  :func:`scoresde.sample`; a ``sample`` dimension is moved first, a ``time``
  dimension is refused).  All are converted to torch tensors, the compute type.
* ``x`` and ``y`` must have the same feature shape, real numeric dtypes
  (boolean, complex and non-numeric arrays raise :class:`TypeError`), finite
  values and at least two samples each; otherwise an error naming the
  offending argument is raised.
* Computation follows the inputs' dtype: float32 and float64 inputs are kept
  (a float64 NumPy array is computed in float64), integers become float64,
  half precision is promoted to float32, and mixed dtypes are promoted
  (float32 with float64 gives float64).  It runs on the device of the torch
  inputs (NumPy and xarray inputs are moved there; torch inputs on two
  different devices raise).  All reductions are accumulated in ``float64`` and
  the result is a Python ``float``.
* Pairwise quantities are computed block by block (``chunk_size`` rows and
  columns at a time), so memory stays bounded: a full ``n x m`` matrix is
  never materialised.
* The only randomness (projection directions of :func:`sliced_wasserstein`)
  comes from an explicit ``seed`` / ``generator``; defaults are fixed, so every
  function is deterministic by default.  No global RNG is used.

Besides the metrics, :func:`metric_floor` estimates the statistical floor of a
metric (its value between two independent exact sample sets of the same
size), and :func:`mode_weight_test` checks mixture mode weights.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import scipy.stats
import torch

from ._samples import as_samples, common_dtype_device

if TYPE_CHECKING:
    from typing import TypeAlias

    import xarray as xr

    #: What the functions here accept as a sample set.
    SampleSet: TypeAlias = torch.Tensor | np.ndarray | xr.DataArray

__all__ = [
    "METRICS",
    "MetricFloor",
    "ModeWeightResult",
    "energy_distance",
    "get_metric",
    "metric_floor",
    "mmd",
    "mode_fractions",
    "mode_weight_test",
    "sliced_wasserstein",
]

#: Default number of rows/columns per block of pairwise computations.
DEFAULT_CHUNK_SIZE = 2048

# Above this feature dimension torch.cdist may use the (faster, slightly less
# exact) matrix-multiplication formula; at or below it the direct formula.
_DIRECT_CDIST_MAX_DIM = 64

# Number of elements of the (projections x samples) buffers processed at once
# by sliced_wasserstein.
_SW_BUFFER_ELEMENTS = 1 << 22

# Maximum number of points (per input) used by the median heuristic.
_MEDIAN_SUBSAMPLE = 500


# ---------------------------------------------------------------------------
# validation helpers
# ---------------------------------------------------------------------------


def _flatten(t: object, name: str, min_samples: int = 2) -> torch.Tensor:
    """Validate one sample set and return it as a detached ``(n, d)`` tensor in its compute dtype."""
    flat = as_samples(name, t, min_samples=min_samples)
    flat = flat.reshape(flat.shape[0], -1)
    dtype, _ = common_dtype_device({name: t}, {name: flat})
    return flat.to(dtype)


def _check_pair(x: object, y: object) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate ``x`` and ``y`` and return both flattened to ``(n, d)``/``(m, d)``, one dtype and device."""
    xt = as_samples("x", x, min_samples=2)
    yt = as_samples("y", y, min_samples=2)
    if xt.shape[1:] != yt.shape[1:]:
        raise ValueError(
            f"y has feature shape {tuple(yt.shape[1:])}, which does not match x's feature shape {tuple(xt.shape[1:])}"
        )
    dtype, device = common_dtype_device({"x": x, "y": y}, {"x": xt, "y": yt})
    xf = xt.reshape(xt.shape[0], -1).to(device=device, dtype=dtype)
    yf = yt.reshape(yt.shape[0], -1).to(device=device, dtype=dtype)
    return xf, yf


def _check_int(name: str, value: int, minimum: int) -> int:
    """Return ``value`` as an int if it is an integer ``>= minimum``, else raise ValueError."""
    try:
        if isinstance(value, bool):
            raise TypeError
        value = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}") from None
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_chunk_size(chunk_size: int) -> int:
    return _check_int("chunk_size", chunk_size, 1)


def _center(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Subtract the pooled mean (all metrics here are translation invariant)."""
    n, m = x.shape[0], y.shape[0]
    mean = (x.sum(0, dtype=torch.float64) + y.sum(0, dtype=torch.float64)) / (n + m)
    mean = mean.to(x.dtype)
    return x - mean, y - mean


# ---------------------------------------------------------------------------
# blockwise pairwise reductions
# ---------------------------------------------------------------------------


def _cdist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    mode = (
        "donot_use_mm_for_euclid_dist" if a.shape[1] <= _DIRECT_CDIST_MAX_DIM else "use_mm_for_euclid_dist_if_necessary"
    )
    return torch.cdist(a, b, compute_mode=mode)


def _block_sum(block: torch.Tensor) -> float:
    """Sum of a block: rows summed in the block dtype, row sums in float64.

    (Summing a float32 block with ``dtype=torch.float64`` directly is ~50x
    slower on CPU; rows of at most ``chunk_size`` terms lose nothing relevant.)
    """
    return float(block.sum(dim=-1).sum(dtype=torch.float64))


def _pairwise_sum(
    a: torch.Tensor,
    b: torch.Tensor | None,
    fn: Callable[[torch.Tensor], torch.Tensor],
    chunk_size: int,
) -> float:
    r"""Sum ``fn(D)`` over pairs, ``D`` the Euclidean distance matrix, in blocks.

    With ``b`` given the sum runs over all :math:`n m` pairs :math:`(a_i, b_j)`.
    With ``b=None`` it runs over the ordered pairs :math:`i \ne j` of ``a``
    (diagonal excluded); symmetry is used to evaluate only blocks on or above
    the block diagonal.  ``fn`` may modify its argument in place.  Block sums
    are accumulated in float64.
    """
    total = 0.0
    if b is not None:
        for i in range(0, a.shape[0], chunk_size):
            ai = a[i : i + chunk_size]
            for j in range(0, b.shape[0], chunk_size):
                block = fn(_cdist(ai, b[j : j + chunk_size]))
                total += _block_sum(block)
        return total
    n = a.shape[0]
    for i in range(0, n, chunk_size):
        ai = a[i : i + chunk_size]
        for j in range(i, n, chunk_size):
            block = fn(_cdist(ai, a[j : j + chunk_size]))
            s = _block_sum(block)
            if j == i:
                # exclude the i == j terms exactly as computed
                total += s - float(block.diagonal().sum(dtype=torch.float64))
            else:
                total += 2.0 * s
    return total


# ---------------------------------------------------------------------------
# sliced Wasserstein
# ---------------------------------------------------------------------------


def _quantile_grid(n: int, m: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    r"""Merged quantile-level grid of two empirical measures of sizes n and m.

    The levels :math:`\{i/n\} \cup \{j/m\}` are written with the common
    denominator :math:`nm` (integers :math:`i m` and :math:`j n`), merged and
    deduplicated into :math:`0 = a_0 < a_1 < \dots < a_K = nm`.  On the segment
    :math:`(a_{k-1}, a_k]` both quantile functions are constant, equal to the
    order statistics with 0-based indices :math:`\lceil a_k/m \rceil - 1` and
    :math:`\lceil a_k/n \rceil - 1`; the segment has length
    :math:`(a_k - a_{k-1})/(nm)`.
    """
    levels = torch.cat(
        [
            torch.arange(1, n + 1, device=device, dtype=torch.int64) * m,
            torch.arange(1, m + 1, device=device, dtype=torch.int64) * n,
        ]
    )
    levels = torch.unique(levels, sorted=True)
    idx_x = (levels + m - 1) // m - 1
    idx_y = (levels + n - 1) // n - 1
    lengths = torch.diff(levels, prepend=levels.new_zeros(1)).to(torch.float64) / (n * m)
    return idx_x, idx_y, lengths


def sliced_wasserstein(
    x: SampleSet,
    y: SampleSet,
    projections: int = 500,
    p: float = 2,
    seed: int = 0,
    *,
    generator: torch.Generator | None = None,
) -> float:
    r"""Sliced Wasserstein distance between two sample sets.

    .. math::

        SW_p(\mu, \nu) = \Big( E_{\theta \sim U(S^{d-1})}
            W_p^p(\theta_\# \mu, \theta_\# \nu) \Big)^{1/p}

    where :math:`\theta_\# \mu` is the law of :math:`\langle \theta, X \rangle`.
    The expectation is estimated with ``projections`` directions
    :math:`\theta_l = g_l / \|g_l\|`, :math:`g_l \sim N(0, I_d)`, drawn on
    ``x``'s device (in float64, then cast to ``x``'s dtype) from a
    :class:`torch.Generator` seeded with ``seed`` (or from ``generator`` if
    given): the same seed gives the same directions for float32 and float64
    inputs on a given device type (CPU and CUDA generators differ).  For
    ``d = 1`` the directions are :math:`\pm 1` and the result is the exact 1-D
    :math:`W_p`.

    Each 1-D distance is exact for the empirical measures: with quantile
    functions :math:`F^{-1}, G^{-1}` (step functions given by the sorted
    projections),

    .. math::

        W_p^p = \int_0^1 |F^{-1}(u) - G^{-1}(u)|^p \, du ,

    evaluated exactly on the merged grid of quantile levels
    :math:`\{i/n\} \cup \{j/m\}` (for ``n == m`` this is
    :math:`\frac1n \sum_i |x_{(i)} - y_{(i)}|^p`).

    Parameters
    ----------
    x, y : torch.Tensor, numpy.ndarray or xarray.DataArray
        Samples of shape ``(n, *feature_shape)`` and ``(m, *feature_shape)``.
    projections : int, default 500
        Number of random directions :math:`L`.  The Monte-Carlo error of
        :math:`SW_p^p` is :math:`O(L^{-1/2})`.
    p : float, default 2
        Order, ``p >= 1``.
    seed : int, default 0
        Seed of the projection directions (ignored if ``generator`` is given).
    generator : torch.Generator, optional
        Generator on ``x``'s device to draw the directions from instead.

    Returns
    -------
    float
        :math:`SW_p` estimate (non-negative; exactly 0 for identical sets).
    """
    xf, yf = _check_pair(x, y)
    projections = _check_int("projections", projections, 1)
    p = float(p)
    if not (p >= 1.0 and math.isfinite(p)):
        raise ValueError(f"p must be a finite number >= 1, got {p!r}")
    n, d = xf.shape
    m = yf.shape[0]
    device, dtype = xf.device, xf.dtype
    if generator is None:
        generator = torch.Generator(device=device)
        generator.manual_seed(int(seed))
    with torch.no_grad():
        # drawn in float64 and then cast, so that float32 and float64 inputs
        # are projected on the same directions
        theta = torch.randn(projections, d, generator=generator, device=device, dtype=torch.float64)
        theta = (theta / torch.linalg.vector_norm(theta, dim=1, keepdim=True)).to(dtype)
        xc, yc = _center(xf, yf)
        if n != m:
            idx_x, idx_y, lengths = _quantile_grid(n, m, device)
        per_chunk = max(1, _SW_BUFFER_ELEMENTS // (n + m))
        total = torch.zeros((), dtype=torch.float64, device=device)
        for s in range(0, projections, per_chunk):
            th = theta[s : s + per_chunk]
            px = torch.sort(th @ xc.T, dim=1).values  # (L, n)
            py = torch.sort(th @ yc.T, dim=1).values  # (L, m)
            if n == m:
                diff = (px - py).to(torch.float64).abs_()
                total += diff.pow_(p).sum() / n
            else:
                diff = (px[:, idx_x] - py[:, idx_y]).to(torch.float64).abs_()
                total += (diff.pow_(p) * lengths).sum()
        swp = float(total) / projections
    return float(max(swp, 0.0) ** (1.0 / p))


# ---------------------------------------------------------------------------
# energy distance
# ---------------------------------------------------------------------------


def energy_distance(
    x: SampleSet,
    y: SampleSet,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> float:
    r"""Unbiased (U-statistic) estimate of the energy distance.

    .. math::

        E(\mu, \nu) = 2 E\|X - Y\| - E\|X - X'\| - E\|Y - Y'\|,
        \qquad X, X' \sim \mu, \; Y, Y' \sim \nu \text{ independent},

    estimated by

    .. math::

        \hat E = \frac{2}{nm} \sum_{i,j} \|x_i - y_j\|
               - \frac{1}{n(n-1)} \sum_{i \ne j} \|x_i - x_j\|
               - \frac{1}{m(m-1)} \sum_{i \ne j} \|y_i - y_j\| .

    This is the U-statistic (each term is unbiased, diagonal terms excluded),
    so :math:`E[\hat E] = E(\mu, \nu)`, which is :math:`\ge 0` with equality iff
    :math:`\mu = \nu`; the estimate itself can be slightly negative when the
    two sets come from the same distribution.  (It is the squared energy
    distance of Székely & Rizzo, not its square root.)

    Distances are computed with :func:`torch.cdist` in blocks of
    ``chunk_size x chunk_size`` in the input dtype (after subtracting the pooled
    mean); block sums are accumulated in float64.

    Parameters
    ----------
    x, y : torch.Tensor, numpy.ndarray or xarray.DataArray
        Samples of shape ``(n, *feature_shape)`` and ``(m, *feature_shape)``.
    chunk_size : int, default 2048
        Block size of the pairwise computations.

    Returns
    -------
    float
        :math:`\hat E`.
    """
    xf, yf = _check_pair(x, y)
    chunk_size = _check_chunk_size(chunk_size)
    n, m = xf.shape[0], yf.shape[0]

    def ident(d: torch.Tensor) -> torch.Tensor:
        return d

    with torch.no_grad():
        xc, yc = _center(xf, yf)
        exy = _pairwise_sum(xc, yc, ident, chunk_size) / (n * m)
        exx = _pairwise_sum(xc, None, ident, chunk_size) / (n * (n - 1))
        eyy = _pairwise_sum(yc, None, ident, chunk_size) / (m * (m - 1))
    return 2.0 * exy - exx - eyy


# ---------------------------------------------------------------------------
# MMD
# ---------------------------------------------------------------------------


def _median_bandwidth(x: torch.Tensor, y: torch.Tensor) -> float:
    """Median pairwise distance of a fixed, evenly spaced subsample of x and y."""
    parts = []
    for t in (x, y):
        k = min(t.shape[0], _MEDIAN_SUBSAMPLE)
        idx = torch.linspace(0, t.shape[0] - 1, k, device=t.device).round().long()
        parts.append(t[idx])
    z = torch.cat(parts).to(torch.float64)
    dist = torch.cdist(z, z, compute_mode="donot_use_mm_for_euclid_dist")
    iu = torch.triu_indices(z.shape[0], z.shape[0], offset=1, device=z.device)
    h = float(torch.median(dist[iu[0], iu[1]]))
    return h if h > 0.0 else 1.0


def _bandwidths(
    bandwidth: float | Sequence[float] | torch.Tensor | None, x: torch.Tensor, y: torch.Tensor
) -> list[float]:
    if bandwidth is None:
        return [_median_bandwidth(x, y)]
    if isinstance(bandwidth, (int, float)) and not isinstance(bandwidth, bool):
        hs = [float(bandwidth)]
    elif isinstance(bandwidth, torch.Tensor) and bandwidth.ndim == 0:
        hs = [float(bandwidth)]
    else:
        try:
            if isinstance(bandwidth, (str, bytes)):
                raise TypeError
            hs = [float(h) for h in bandwidth]  # type: ignore[union-attr]
        except (TypeError, ValueError) as exc:
            raise ValueError(
                f"bandwidth must be None, a positive float or a sequence of them, got {bandwidth!r}"
            ) from exc
    if not hs or not all(math.isfinite(h) and h > 0.0 for h in hs):
        raise ValueError(f"bandwidth values must be positive and finite, got {bandwidth!r}")
    return hs


def mmd(
    x: SampleSet,
    y: SampleSet,
    bandwidth: float | Sequence[float] | None = None,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> float:
    r"""Unbiased estimate of the squared maximum mean discrepancy (RBF kernel).

    With the kernel :math:`k(a, b) = \sum_h \exp(-\|a - b\|^2 / (2 h^2))`
    (one term per bandwidth :math:`h`),

    .. math::

        MMD^2(\mu, \nu) = E k(X, X') + E k(Y, Y') - 2 E k(X, Y),

    estimated by the U-statistic

    .. math::

        \widehat{MMD^2} = \frac{1}{n(n-1)} \sum_{i \ne j} k(x_i, x_j)
            + \frac{1}{m(m-1)} \sum_{i \ne j} k(y_i, y_j)
            - \frac{2}{nm} \sum_{i, j} k(x_i, y_j) .

    It is unbiased, hence can be slightly negative when both sets come from
    the same distribution.  The value returned is :math:`MMD^2`, not its root.

    Parameters
    ----------
    x, y : torch.Tensor, numpy.ndarray or xarray.DataArray
        Samples of shape ``(n, *feature_shape)`` and ``(m, *feature_shape)``.
    bandwidth : float or sequence of float, optional
        Kernel bandwidth(s) :math:`h > 0`; a sequence gives the sum of the RBF
        kernels.  ``None`` (default) uses the median heuristic: :math:`h` is
        the median of the pairwise distances :math:`\|z_i - z_j\|, i < j`, of a
        fixed deterministic subsample (up to 500 evenly spaced points of each
        of ``x`` and ``y``), or 1 if that median is 0.
    chunk_size : int, default 2048
        Block size of the pairwise computations.

    Returns
    -------
    float
        :math:`\widehat{MMD^2}`.
    """
    xf, yf = _check_pair(x, y)
    chunk_size = _check_chunk_size(chunk_size)
    n, m = xf.shape[0], yf.shape[0]
    with torch.no_grad():
        hs = _bandwidths(bandwidth, xf, yf)
        scales = [-1.0 / (2.0 * h * h) for h in hs]

        def kernel(d: torch.Tensor) -> torch.Tensor:
            d2 = d.square_()
            if len(scales) == 1:
                return d2.mul_(scales[0]).exp_()
            out = torch.zeros_like(d2)
            for s in scales:
                out += torch.exp(d2 * s)
            return out

        xc, yc = _center(xf, yf)
        kxy = _pairwise_sum(xc, yc, kernel, chunk_size) / (n * m)
        kxx = _pairwise_sum(xc, None, kernel, chunk_size) / (n * (n - 1))
        kyy = _pairwise_sum(yc, None, kernel, chunk_size) / (m * (m - 1))
    return kxx + kyy - 2.0 * kxy


# ---------------------------------------------------------------------------
# registry
# ---------------------------------------------------------------------------

Metric = Callable[..., float]

#: Available metrics by name.
METRICS: dict[str, Metric] = {
    "sliced_wasserstein": sliced_wasserstein,
    "energy": energy_distance,
    "mmd": mmd,
}


def get_metric(name_or_callable: str | Metric) -> Metric:
    """Resolve a metric by name (a key of :data:`METRICS`) or pass a callable through.

    Parameters
    ----------
    name_or_callable : str or callable
        ``"sliced_wasserstein"``, ``"energy"``, ``"mmd"``, or a callable
        ``metric(x, y, **kwargs) -> float``.

    Returns
    -------
    callable
        The metric function.

    Raises
    ------
    ValueError
        For an unknown name (the message lists the valid names).
    """
    if isinstance(name_or_callable, str):
        try:
            return METRICS[name_or_callable]
        except KeyError:
            valid = ", ".join(repr(k) for k in METRICS)
            raise ValueError(f"unknown metric {name_or_callable!r}; valid names are {valid}") from None
    if callable(name_or_callable):
        return name_or_callable
    raise ValueError(f"metric must be a name ({', '.join(METRICS)}) or a callable, got {name_or_callable!r}")


def _metric_name(metric: str | Metric, fn: Metric) -> str:
    if isinstance(metric, str):
        return metric
    for key, value in METRICS.items():
        if value is fn:
            return key
    return getattr(fn, "__name__", repr(fn))


# ---------------------------------------------------------------------------
# statistical floor
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class MetricFloor:
    r"""Statistical floor of a metric at sample size ``n``.

    ``values`` are the metric between ``len(values)`` independent pairs of exact
    sample sets; ``mean`` and ``std`` (``ddof=1``) summarise them.  A metric
    value between model samples and exact samples is consistent with the
    floor when it is at most :math:`\text{mean} + k \cdot \text{std}`.
    """

    metric: str
    n: int
    values: tuple[float, ...]
    mean: float
    std: float

    def threshold(self, k: float = 3.0) -> float:
        r"""Return :math:`\text{mean} + k \cdot \text{std}`."""
        return self.mean + k * self.std

    def contains(self, value: float, k: float = 3.0) -> bool:
        r"""Whether ``value`` :math:`\le` :meth:`threshold` ``(k)``."""
        return float(value) <= self.threshold(k)

    def __str__(self) -> str:
        return f"{self.metric} floor (n={self.n}, {len(self.values)} pairs): {self.mean:.4g} ± {self.std:.2g}"


def metric_floor(
    metric: str | Metric,
    sample: Callable[[int, torch.Generator], SampleSet],
    n: int,
    pairs: int = 8,
    seed: int = 0,
    *,
    device: torch.device | str = "cpu",
    reference: SampleSet | None = None,
    **metric_kwargs: object,
) -> MetricFloor:
    r"""Estimate the statistical floor of a metric between exact sample sets.

    With ``reference`` given, each pair is a fresh exact set and that fixed reference set: the
    floor is then the null distribution of ``metric(candidate, reference)`` *conditional on the
    reference*. Use this when candidates are judged against one shared reference set: a single
    reference set that happens to lie far from typical sets shifts every comparison, and only
    the conditional floor accounts for it.

    For :math:`k = 0, \dots, \text{pairs} - 1` a generator on ``device`` is
    seeded with ``seed * 1000 + k``, two independent sets
    :math:`X_k = \text{sample}(n, g_k)` and then :math:`Y_k = \text{sample}(n, g_k)`
    are drawn and :math:`v_k = \text{metric}(X_k, Y_k, **\text{metric\_kwargs})`
    is computed.  The floor is summarised by

    .. math::

        \bar v = \frac{1}{P} \sum_k v_k, \qquad
        s = \Big( \frac{1}{P - 1} \sum_k (v_k - \bar v)^2 \Big)^{1/2} .

    Parameters
    ----------
    metric : str or callable
        A name in :data:`METRICS` or a callable ``metric(x, y, **kw) -> float``.
    sample : callable
        ``sample(n, generator)`` returning a sample set (tensor, NumPy array or
        DataArray) of shape ``(n, *feature_shape)``, drawing exact samples using
        only ``generator`` for randomness.
    n : int
        Size of each sample set (>= 2).
    pairs : int, default 8
        Number of independent pairs (>= 2).
    seed : int, default 0
        Base seed; the result is a deterministic function of it.
    device : torch.device or str, default "cpu"
        Device of the generators passed to ``sample``.
    reference : torch.Tensor, numpy.ndarray or xarray.DataArray, optional
        A fixed exact set that replaces the second set of every pair (any size).
    **metric_kwargs
        Forwarded to the metric.

    Returns
    -------
    MetricFloor
    """
    fn = get_metric(metric)
    pairs = _check_int("pairs", pairs, 2)
    n = _check_int("n", n, 2)
    ref = None if reference is None else as_samples("reference", reference, min_samples=2)

    def draw(g: torch.Generator, name: str) -> torch.Tensor:
        t = sample(n, g)
        shape = getattr(t, "shape", None)
        if shape is None or len(shape) == 0 or shape[0] != n:
            raise ValueError(
                f"sample(n, generator) must return a sample set with {n} rows; "
                f"got {shape or type(t).__name__} for {name}"
            )
        return as_samples(f"sample(n, generator) (for {name})", t, min_samples=2)

    values = []
    for k in range(pairs):
        g = torch.Generator(device=device)
        g.manual_seed(int(seed) * 1000 + k)
        xs = draw(g, "x")
        ys = draw(g, "y") if ref is None else ref
        values.append(float(fn(xs, ys, **metric_kwargs)))
    mean = math.fsum(values) / pairs
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (pairs - 1))
    return MetricFloor(metric=_metric_name(metric, fn), n=n, values=tuple(values), mean=mean, std=std)


# ---------------------------------------------------------------------------
# mixture mode weights
# ---------------------------------------------------------------------------


def _flatten_means(x: torch.Tensor, means: object) -> torch.Tensor:
    """Validate ``means`` against flattened ``x`` (n, d); return (K, d) on x's device."""
    d = x.shape[1]
    mu = as_samples("means", means).to(device=x.device, dtype=x.dtype)
    if mu.ndim == 1 and d == 1:
        mu = mu[:, None]
    if mu.ndim < 2 or mu.shape[0] < 1 or mu[0].numel() != d:
        raise ValueError(
            f"means must have shape (K, d) with d = {d} (x's flattened feature size), got {tuple(mu.shape)}"
        )
    mu = mu.reshape(mu.shape[0], d)
    return mu


def _mode_counts(x: object, means: object, chunk_size: int) -> torch.Tensor:
    """Number of samples of ``x`` nearest to each mean (int64, on the samples' device)."""
    xf = _flatten(x, "x", min_samples=1)
    chunk_size = _check_chunk_size(chunk_size)
    mu = _flatten_means(xf, means)
    counts = torch.zeros(mu.shape[0], dtype=torch.int64, device=xf.device)
    with torch.no_grad():
        for i in range(0, xf.shape[0], chunk_size):
            nearest = _cdist(xf[i : i + chunk_size], mu).argmin(dim=1)
            counts += torch.bincount(nearest, minlength=mu.shape[0])
    return counts


def mode_fractions(
    x: SampleSet,
    means: torch.Tensor,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> torch.Tensor:
    r"""Fraction of samples assigned to each mode by the nearest mean.

    .. math::

        f_k = \frac{1}{n} \#\{ i : \arg\min_j \|x_i - \mu_j\| = k \}

    (ties go to the lowest index).

    Parameters
    ----------
    x : torch.Tensor, numpy.ndarray or xarray.DataArray
        Samples ``(n, *feature_shape)``, ``n >= 1``.
    means : torch.Tensor
        Mode centres ``(K, d)`` (or ``(K, *feature_shape)``) with ``d`` the
        flattened feature size of ``x``; converted to ``x``'s dtype/device.
    chunk_size : int, default 2048
        Rows of ``x`` processed at once.

    Returns
    -------
    torch.Tensor
        Fractions :math:`f` of shape ``(K,)``, float64, on ``x``'s device;
        they sum to 1.
    """
    counts = _mode_counts(x, means, chunk_size)
    return counts.to(torch.float64) / int(counts.sum())


@dataclass(frozen=True)
class ModeWeightResult:
    r"""Result of :func:`mode_weight_test`.

    Attributes
    ----------
    fractions : torch.Tensor
        Observed fractions :math:`f_k` (float64, ``(K,)``).
    weights : torch.Tensor
        Expected weights :math:`w_k` (float64, ``(K,)``).
    std_errors : torch.Tensor
        Binomial standard errors :math:`\sqrt{w_k (1 - w_k) / n}`.
    z_scores : torch.Tensor
        :math:`(f_k - w_k) / se_k` (0 where :math:`se_k = 0` and
        :math:`f_k = w_k`, :math:`\pm\infty` where :math:`se_k = 0` otherwise).
    n : int
        Number of samples.
    k : float
        Threshold on :math:`|z|`.
    ok : bool
        Whether all :math:`|z_k| \le k`.
    p_values : torch.Tensor
        Exact two-sided binomial p-values of the counts :math:`n f_k` under
        :math:`\text{Binomial}(n, w_k)` (:func:`scipy.stats.binomtest`; float64,
        ``(K,)``), for information: ``ok`` is decided by the z-scores.
    """

    fractions: torch.Tensor
    weights: torch.Tensor
    std_errors: torch.Tensor
    z_scores: torch.Tensor
    n: int
    k: float
    ok: bool
    p_values: torch.Tensor

    def __str__(self) -> str:
        rows = ", ".join(
            f"{f:.4f}/{w:.4f} (z={z:+.2f})"
            for f, w, z in zip(self.fractions.tolist(), self.weights.tolist(), self.z_scores.tolist(), strict=True)
        )
        verdict = "ok" if self.ok else "FAILED"
        return f"mode weights {verdict} (n={self.n}, |z|<={self.k:g}): {rows}"


def mode_weight_test(
    x: SampleSet,
    means: torch.Tensor,
    weights: torch.Tensor | Sequence[float],
    k: float = 3.0,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> ModeWeightResult:
    r"""Test observed mode fractions against mixture weights with binomial z-scores.

    With :math:`c_k = n f_k` the number of samples nearest to mode :math:`k`
    (:func:`mode_fractions`), expected weights :math:`w_k` and :math:`n`
    samples, :math:`c_k \sim \text{Binomial}(n, w_k)` for a correct sampler.
    Its mean and standard deviation (from :data:`scipy.stats.binom`) give

    .. math::

        se_k = \frac{\operatorname{sd} \text{Bin}(n, w_k)}{n} = \sqrt{w_k (1 - w_k) / n},
        \qquad z_k = \frac{c_k - n w_k}{\operatorname{sd} \text{Bin}(n, w_k)} = \frac{f_k - w_k}{se_k} ,

    and the test passes (``ok``) iff :math:`\max_k |z_k| \le k` (the normal
    approximation of the binomial).  The exact two-sided binomial p-values
    (:func:`scipy.stats.binomtest`) are reported alongside.  This assumes the
    modes are well separated (nearest-mean assignment recovers the component)
    and the samples are independent.

    Parameters
    ----------
    x : torch.Tensor, numpy.ndarray or xarray.DataArray
        Samples ``(n, *feature_shape)``.
    means : torch.Tensor
        Mode centres ``(K, d)``, ``d`` the flattened feature size of ``x``.
    weights : torch.Tensor or sequence of float
        Expected weights ``(K,)``, non-negative, summing to 1 (within 1e-6).
    k : float, default 3.0
        Threshold on :math:`|z_k|`.
    chunk_size : int, default 2048
        Rows of ``x`` processed at once.

    Returns
    -------
    ModeWeightResult
    """
    counts = _mode_counts(x, means, chunk_size)
    n = int(counts.sum())
    kk = counts.shape[0]
    w = torch.as_tensor(weights).detach().to(device=counts.device, dtype=torch.float64)
    if w.ndim != 1 or w.shape[0] != kk:
        raise ValueError(f"weights must have shape ({kk},) to match means, got {tuple(w.shape)}")
    if not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
        raise ValueError("weights must be finite and non-negative")
    total = float(w.sum())
    if abs(total - 1.0) > 1e-6:
        raise ValueError(f"weights must sum to 1 (within 1e-6), got sum {total!r}")
    k = float(k)
    if not k > 0:
        raise ValueError(f"k must be positive, got {k!r}")
    c = counts.cpu().numpy()
    wn = np.clip(w.cpu().numpy(), 0.0, 1.0)  # sums within 1e-6 of 1 can leave a weight at 1 + 1e-7
    null = scipy.stats.binom(n, wn)
    mean, sd = null.mean(), null.std()
    diff = c - mean
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(sd > 0, diff / np.where(sd > 0, sd, 1.0), np.where(diff == 0, 0.0, np.sign(diff) * math.inf))
    p = np.array([scipy.stats.binomtest(int(ci), n, float(wi)).pvalue for ci, wi in zip(c, wn, strict=True)])
    ok = bool((np.abs(z) <= k).all())

    def back(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.asarray(a, dtype=np.float64)).to(counts.device)

    return ModeWeightResult(
        fractions=counts.to(torch.float64) / n,
        weights=w,
        std_errors=back(sd / n),
        z_scores=back(z),
        n=n,
        k=k,
        ok=ok,
        p_values=back(p),
    )
