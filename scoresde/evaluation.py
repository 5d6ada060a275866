r"""Evaluation of sample sets against exact references: what ``scoresde sample`` reports.

For samples :math:`x_1..x_n` of a 2-D problem:

* the sliced-Wasserstein distance :math:`SW_2` to :math:`n` exact samples (or to :math:`n` points
  of the training data), with :data:`SW_PROJECTIONS` directions;
* its statistical floor: :math:`SW_2` between :data:`FLOOR_PAIRS` pairs of independent exact sets
  of the same size :math:`n` (:func:`scoresde.metrics.metric_floor`), summarised by mean and standard
  deviation; the samples are *within the floor* when :math:`SW_2 \le \text{mean} + k\,\text{sd}`,
  :math:`k =` :data:`FLOOR_K`. The floor is computed at the samples' own size: the floor of a
  Gaussian mixture does not scale exactly like :math:`n^{-1/2}` (its Gaussian tails add a slowly
  growing factor), so it is not extrapolated from smaller sets;
* for Gaussian-mixture targets, a mode-weight check: the fraction of samples nearest each mode
  centre against the exact probability of that event (:func:`expected_mode_fractions`), with
  binomial z-scores and a Bonferroni limit (:func:`mode_limit`).

The floor of a fixed reference at a given ``n`` does not depend on the samples, and it costs
:data:`FLOOR_PAIRS` times the comparison itself. :func:`evaluate` can therefore keep it in a cache
directory (``cache_dir``; :func:`default_cache_dir` is the one ``scoresde sample`` uses): one small
JSON file per (reference mixture, ``n``, pairs, seed, projections, torch version), written
atomically and recomputed when missing or unreadable. The library itself caches nothing unless
asked to.

:func:`score_error` is the weighted relative score error that ``scoresde train`` reports.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np
import torch

from . import metrics
from ._io import atomic_path
from .datasets import TOY_DATASETS, Dataset, load_dataset, toy_sample
from .mixture import GaussianMixture, get_target
from .sde import LinearSDE

__all__ = [
    "Evaluation",
    "evaluate",
    "evaluate_against_data",
    "expected_mode_fractions",
    "mode_limit",
    "default_cache_dir",
    "cached_floor",
    "metric_attrs",
    "report_lines",
    "score_error",
    "model_space_oracle",
    "training_data",
    "toy_draw",
    "data_label",
    "evaluate_model_samples",
    "SW_PROJECTIONS",
    "FLOOR_PAIRS",
    "FLOOR_K",
    "MODE_FWER",
]

#: sliced-Wasserstein settings of the report (the floor uses the same projection directions)
SW_PROJECTIONS = 500
FLOOR_PAIRS = 8
FLOOR_K = 3.0
#: family-wise false-alarm rate of the mode-weight check, that of one two-sided 3-sigma test
MODE_FWER = 2 * NormalDist().cdf(-3.0)
#: Monte Carlo of the expected mode fractions: draws per component and batch, and the most in all
MODE_BATCH = 4096
MODE_MAX_DRAWS = 5_000_000
#: ... it stops once its standard error is at most this fraction of the binomial one at n
MODE_MC_RATIO = 0.1
SCORE_ERROR_POINTS = 4000
SCORE_ERROR_T_MIN = 1e-3


@dataclass
class Evaluation:
    """Metrics of final samples: :math:`SW_2`, its floor, and (targets only) the mode-weight check.

    Attributes
    ----------
    sw : float
        :math:`SW_2` of the samples to ``reference``.
    floor : MetricFloor
        The floor: :math:`SW_2` between pairs of exact sets of the samples' size.
    within : bool
        ``sw <= floor.threshold(FLOOR_K)``.
    modes : ModeWeightResult or None
        The mode-weight check (None against training data).
    expected : ndarray or None
        Exact probabilities that a sample's nearest mode centre is mode k.
    reference_draws : int
        Monte Carlo draws behind ``expected`` (0 if none).
    exact : Tensor or None
        The exact comparison set (for figures); None against training data.
    reference, floor_reference : str
        What ``sw`` compares with, and what the floor pairs are (for reports).
    """

    sw: float
    floor: metrics.MetricFloor
    within: bool
    modes: Any  # metrics.ModeWeightResult | None
    expected: np.ndarray | None
    reference_draws: int
    exact: torch.Tensor | None
    reference: str = ""
    floor_reference: str = ""
    floor_cached: bool = False


def mode_limit(n_modes: int) -> float:
    r"""The limit on :math:`|z|` of the mode-weight check: Bonferroni over the modes at the 3-sigma rate.

    3.0 for one mode."""
    return NormalDist().inv_cdf(1.0 - MODE_FWER / (2 * max(1, n_modes)))


def expected_mode_fractions(
    reference: GaussianMixture, n: int, generator: torch.Generator, chunk: int = MODE_BATCH
) -> tuple[np.ndarray, int]:
    r"""Probability :math:`e_k` that an exact sample's nearest mode centre is mode :math:`k`, by Monte Carlo.

    Equal to the mixture weights only for well-separated modes (not for ``pinwheel``), so the
    mode-weight test compares with these. The Monte Carlo is stratified by component: with
    :math:`m_j` draws of component :math:`j` and :math:`\hat p_{jk}` the fraction of them nearest
    centre :math:`k`,

    .. math::
        \hat e_k = \sum_j w_j \hat p_{jk}, \qquad
        \widehat{\operatorname{Var}}\,\hat e_k = \sum_j w_j^2\,\frac{\tilde p_{jk}(1 - \tilde p_{jk})}{m_j},
        \quad \tilde p_{jk} = \frac{m_j \hat p_{jk} + 1}{m_j + 2},

    which has no multinomial component-count noise (for well-separated modes
    :math:`\hat p_{jk} = \delta_{jk}` almost exactly). Batches of ``chunk`` draws per component are
    added until the standard error of every :math:`\hat e_k` is at most :data:`MODE_MC_RATIO` times
    the binomial standard error :math:`\sqrt{e_k(1 - e_k)/n}` of the test at ``n`` samples (so the
    Monte Carlo widens the test's error by at most :math:`\sqrt{1 + 0.01}`), or until
    :data:`MODE_MAX_DRAWS` draws in all. Returns :math:`\hat e` and the number of draws.
    """
    n_comp = reference.n_components
    w = reference.weights.to(torch.float64).cpu().numpy()
    counts = np.zeros((n_comp, n_comp))  # counts[j, k]: draws of component j nearest centre k
    drawn = 0
    components = [
        GaussianMixture([1.0], reference.means[j : j + 1], reference.covariances[j : j + 1]) for j in range(n_comp)
    ]
    m = 0
    while True:
        for j, comp in enumerate(components):
            x = comp.sample(chunk, generator, dtype=torch.float64)
            counts[j] += metrics.mode_fractions(x, reference.means).numpy() * chunk
        m += chunk
        drawn += chunk * n_comp
        p = counts / m
        expected = w @ p
        p_tilde = (counts + 1.0) / (m + 2.0)
        mc_var = (w[:, None] ** 2 * p_tilde * (1.0 - p_tilde) / m).sum(axis=0)
        binom_var = expected * (1.0 - expected) / n
        if np.all(mc_var <= MODE_MC_RATIO**2 * binom_var) or drawn + chunk * n_comp > MODE_MAX_DRAWS:
            break
    expected = expected / expected.sum()  # exact sum 1 (rounding) for mode_weight_test
    return expected, drawn


#: bump when the cached floor's definition changes
_CACHE_FORMAT = 1


def default_cache_dir() -> Path | None:
    """The user cache directory of the SW2 floors, or None when caching is switched off.

    ``$SCORESDE_CACHE_DIR`` if set (an empty value or ``SCORESDE_NO_CACHE=1`` switches caching
    off), else ``scoresde/floors`` in the platform's user cache directory: ``$XDG_CACHE_HOME``
    or ``~/.cache`` (Linux and others), ``~/Library/Caches`` (macOS), ``%LOCALAPPDATA%`` (Windows).
    """
    if os.environ.get("SCORESDE_NO_CACHE", "").strip() not in ("", "0"):
        return None
    explicit = os.environ.get("SCORESDE_CACHE_DIR")
    if explicit is not None:
        return Path(explicit).expanduser() if explicit.strip() else None
    if sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    elif sys.platform.startswith("win"):
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "scoresde" / "floors"


def _floor_key(reference: GaussianMixture, n: int, pairs: int, seed: int, projections: int) -> str:
    def exact(t: torch.Tensor) -> list[str]:
        return [float(v).hex() for v in t.detach().to(torch.float64).reshape(-1).tolist()]

    spec = {
        "format": _CACHE_FORMAT,
        "metric": "sliced_wasserstein",
        "n": n,
        "pairs": pairs,
        "seed": seed,
        "projections": projections,
        "torch": torch.__version__,
        "weights": exact(reference.weights),
        "means": exact(reference.means),
        "covariances": exact(reference.covariances),
        "shape": list(reference.means.shape),
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def cached_floor(
    reference: GaussianMixture,
    n: int,
    seed: int,
    cache_dir: str | os.PathLike[str] | None = None,
    pairs: int = FLOOR_PAIRS,
    projections: int = SW_PROJECTIONS,
) -> tuple[metrics.MetricFloor, bool]:
    """The SW2 floor of ``reference`` at ``n`` (``metric_floor(seed=seed)`` on float64 exact draws).

    With ``cache_dir`` the values are read from, or written (atomically) to, a JSON file named by a
    hash of everything they depend on; a missing, unreadable or inconsistent file is recomputed.
    Returns the floor and whether it came from the cache. Cached and computed floors are equal.
    """

    def draw(m: int, generator: torch.Generator) -> torch.Tensor:
        return reference.sample(m, generator, dtype=torch.float64)

    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"sw2-floor-{_floor_key(reference, n, pairs, seed, projections)}.json"
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            stored = json.loads(path.read_text())
            values = tuple(float(v) for v in stored["values"])
            if len(values) == pairs and all(math.isfinite(v) and v >= 0 for v in values):
                mean = math.fsum(values) / pairs
                std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (pairs - 1))
                return metrics.MetricFloor(str(stored["metric"]), n, values, mean, std), True
    floor = metrics.metric_floor("sliced_wasserstein", draw, n, pairs=pairs, seed=seed, projections=projections)
    if path is not None:
        with contextlib.suppress(OSError):  # a cache that cannot be written costs time, not correctness
            with atomic_path(path) as tmp:
                tmp.write_text(json.dumps({"metric": floor.metric, "n": n, "values": list(floor.values)}))
    return floor, False


def _seeds(seed: int) -> int:
    return 1000 * (seed + 1)


def evaluate(
    final: torch.Tensor,
    reference: GaussianMixture,
    seed: int,
    reference_desc: str = "",
    cache_dir: str | os.PathLike[str] | None = None,
) -> Evaluation:
    """SW2 of ``final`` to exact samples of ``reference``, its floor from exact pairs, and the mode check.

    Seeds, all derived from ``seed`` and distinct from it (the sampler's generator): the
    floor uses ``metric_floor(seed=seed + 1)`` (generators ``1000 (seed + 1) + k``, k < 8),
    the exact comparison set ``1000 (seed + 1) + 500``, the mode Monte Carlo ``... + 501``.
    The SW projection directions are the same (seed 0) for the comparison and the floor.
    ``cache_dir``: see :func:`cached_floor`.
    """
    n = final.shape[0]
    base = _seeds(seed)

    def draw(m: int, generator: torch.Generator) -> torch.Tensor:
        return reference.sample(m, generator, dtype=torch.float64)

    exact = draw(n, torch.Generator().manual_seed(base + 500))
    sw = metrics.sliced_wasserstein(final, exact, projections=SW_PROJECTIONS)
    floor, cached = cached_floor(reference, n, seed + 1, cache_dir)
    expected, m = expected_mode_fractions(reference, n, torch.Generator().manual_seed(base + 501))
    modes = metrics.mode_weight_test(
        final, reference.means, torch.from_numpy(expected), k=mode_limit(reference.n_components)
    )
    return Evaluation(
        sw=sw,
        floor=floor,
        within=floor.contains(sw, k=FLOOR_K),
        modes=modes,
        expected=expected,
        reference_draws=m,
        exact=exact,
        reference=f"{n} exact samples of {reference_desc or 'the reference'}",
        floor_reference=f"SW2 between {FLOOR_PAIRS} pairs of exact sets of {n}" + ("; cached" if cached else ""),
        floor_cached=cached,
    )


def evaluate_against_data(
    final: torch.Tensor,
    data: torch.Tensor,
    draw: Callable[[int, torch.Generator], torch.Tensor],
    seed: int,
    data_desc: str = "the training data",
) -> Evaluation:
    """SW2 of ``final`` to a random subset of ``data`` of the same size, and its conditional floor.

    The subset (a permutation from generator ``1000 (seed + 1)``) has the samples' size (equal
    sizes: the exact SW path). The floor is conditional on it: SW2 of :data:`FLOOR_PAIRS` fresh sets
    ``draw(n, generator)`` of the data's distribution to the same subset
    (``metric_floor(seed=seed + 1, reference=subset)``).
    """
    n = final.shape[0]
    perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(_seeds(seed)))
    reference = data[perm[:n]]
    sw = metrics.sliced_wasserstein(final, reference, projections=SW_PROJECTIONS)
    floor = metrics.metric_floor(
        "sliced_wasserstein",
        draw,
        n,
        pairs=FLOOR_PAIRS,
        seed=seed + 1,
        reference=reference,
        projections=SW_PROJECTIONS,
    )
    return Evaluation(
        sw=sw,
        floor=floor,
        within=floor.contains(sw, k=FLOOR_K),
        modes=None,
        expected=None,
        reference_draws=0,
        exact=None,
        reference=f"{len(reference)} random points of {data_desc}",
        floor_reference=f"SW2 of {FLOOR_PAIRS} fresh sets of {n} points to the same points",
    )


def _as_array(x: Any) -> np.ndarray:
    return np.asarray(torch.as_tensor(x).double().cpu(), dtype=np.float64)


def metric_attrs(ev: Evaluation) -> dict[str, Any]:
    """The ``metric_*`` attributes of an evaluation (netCDF-safe: numbers, strings, float64 arrays)."""
    attrs: dict[str, Any] = {
        "metric_sw2": ev.sw,
        "metric_sw2_projections": SW_PROJECTIONS,
        "metric_sw2_reference": ev.reference,
        "metric_sw2_floor_mean": ev.floor.mean,
        "metric_sw2_floor_std": ev.floor.std,
        "metric_sw2_floor_pairs": len(ev.floor.values),
        "metric_sw2_floor_threshold": ev.floor.threshold(FLOOR_K),
        "metric_sw2_floor_k": FLOOR_K,
        "metric_sw2_within_floor": int(ev.within),
        "metric_sw2_floor_cached": int(ev.floor_cached),
    }
    if ev.modes is not None:
        attrs.update(
            {
                "metric_mode_fractions": _as_array(ev.modes.fractions),
                "metric_mode_expected": np.asarray(ev.expected, dtype=np.float64),
                "metric_mode_expected_draws": int(ev.reference_draws),
                "metric_mode_z": _as_array(ev.modes.z_scores),
                "metric_mode_k": float(ev.modes.k),
                "metric_mode_weights_ok": int(bool(ev.modes.ok)),
            }
        )
    return attrs


def report_lines(ev: Evaluation) -> list[str]:
    """The report lines of an evaluation: SW2, the floor with the verdict, and the mode check."""
    thr = ev.floor.threshold(FLOOR_K)
    verdict = f"{'within' if ev.within else 'ABOVE'} floor (mean + {FLOOR_K:g} sd = {thr:.4g})"
    lines = [
        f"  SW2        {ev.sw:.4g} to {ev.reference} ({SW_PROJECTIONS} projections)",
        f"  floor      {ev.floor.mean:.4g} ± {ev.floor.std:.2g} ({ev.floor_reference}): {verdict}",
    ]
    if ev.modes is not None:
        z = _as_array(ev.modes.z_scores)
        worst = int(np.argmax(np.abs(z))) if z.size else 0
        lines.append(
            f"  modes      {'ok' if ev.modes.ok else 'FAILED'}: max |z| = {abs(z[worst]):.2f} "
            f"(mode {worst}; limit {ev.modes.k:.2f}: 3-sigma family-wise over {z.size} mode(s))"
        )
        fr = _as_array(ev.modes.fractions)
        if fr.size <= 10 and ev.expected is not None:
            lines.append(
                "             fraction nearest each mode centre / exact probability: "
                + "  ".join(f"{f:.3f}/{e:.3f}" for f, e in zip(fr, ev.expected, strict=True))
            )
    return lines


def score_error(
    model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    sde: LinearSDE,
    mixture: GaussianMixture,
    n: int = SCORE_ERROR_POINTS,
    t_min: float = SCORE_ERROR_T_MIN,
    seed: int = 0,
) -> float:
    r"""Weighted relative score error :math:`E\,\sigma^2\|s_\theta - s\|^2 / E\,\sigma^2\|s\|^2`.

    Over :math:`t \sim U[t_{\min}, T]` and :math:`x \sim p_t` (``n`` points, one time each), with
    :math:`s` the exact score of ``mixture`` (which must be given in model space) and
    :math:`\sigma = \sigma(t)` the perturbation std. 0 for the exact score, 1 for ``s_theta = 0``.
    The points are drawn in float64 on the CPU from a generator seeded with ``seed``; the model
    is evaluated in its own dtype on its own device.
    """
    g = torch.Generator().manual_seed(seed)
    x0 = mixture.sample(n, g, dtype=torch.float64)
    t = torch.rand(n, generator=g, dtype=torch.float64) * (sde.T - t_min) + t_min
    mean, std = sde.marginal_prob(x0, t)
    std = std.reshape(n, *([1] * (x0.dim() - 1)))
    xt = mean + std * torch.randn(x0.shape, generator=g, dtype=torch.float64)
    s_true = mixture.score(sde)(xt, t)
    param = next(iter(model.parameters()), None) if isinstance(model, torch.nn.Module) else None
    like = param if param is not None else xt
    with torch.no_grad():
        s_model = model(xt.to(like), t.to(like)).to(device="cpu", dtype=torch.float64)
    w = std**2
    return float((w * (s_model - s_true) ** 2).sum() / (w * s_true**2).sum())


def model_space_oracle(name: str, data: Dataset) -> GaussianMixture:
    """The named mixture mapped like the data: means ``(m - shift) / scale``, covariances ``C / scale^2``."""
    mix = get_target(name)
    return GaussianMixture(mix.weights, (mix.means - data.shift) / data.scale, mix.covariances / data.scale**2)


# ---------------------------------------------------------------------------------------
# samples of a trained model against its training data
# ---------------------------------------------------------------------------------------
def training_data(checkpoint: dict[str, Any]) -> torch.Tensor | None:
    """A checkpoint's training data in data space (float64), where it can be had, else ``None``.

    Toy sets are regenerated from their recorded ``n`` and ``seed``; data stored in the checkpoint
    (``checkpoint["data"]``, in model space) is mapped back with ``x * scale + shift``.
    """
    d = checkpoint["config"]["data"]
    p = d.get("params") or {}
    if d["name"] in TOY_DATASETS:
        default_n = inspect.signature(load_dataset).parameters["n"].default
        return torch.from_numpy(toy_sample(d["name"], int(p.get("n", default_n)), int(p.get("seed", 0))))
    stored = checkpoint.get("data")
    if isinstance(stored, torch.Tensor):
        return stored.to(torch.float64) * float(d["scale"]) + float(d["shift"])
    return None


def toy_draw(name: str) -> Callable[[int, torch.Generator], torch.Tensor]:
    """``draw(m, generator)``: ``m`` fresh points of the toy set ``name``, seeded from ``generator``."""

    def draw(m: int, generator: torch.Generator) -> torch.Tensor:
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        return torch.from_numpy(toy_sample(name, m, seed))

    return draw


def data_label(data_config: dict[str, Any]) -> str:
    """A short name of a checkpoint's training data: the toy set's name or the array file it came from."""
    p = data_config.get("params") or {}
    if data_config["name"] == "array" and p.get("source"):
        return str(p["source"]) + (f":{p['var']}" if p.get("var") else "")
    return str(data_config["name"])


def evaluate_model_samples(
    ds: Any, checkpoint: dict[str, Any], seed: int
) -> tuple[Evaluation | None, torch.Tensor | None]:
    """Evaluate a trained model's final samples (``ds.x_data``, data space) against its training data.

    Returns the :class:`Evaluation` (sliced Wasserstein to the training data next to the floor of
    fresh draws of the same toy set) for 2-D named toy sets, else ``None``, and the training data
    of vector data sets where it can be had (for the figure).
    """
    data_cfg = checkpoint["config"]["data"]
    feature_shape = tuple(int(s) for s in data_cfg["feature_shape"])
    final = torch.from_numpy(np.asarray(ds["x_data"].values, dtype=np.float64))
    train = training_data(checkpoint) if len(feature_shape) == 1 else None
    if feature_shape != (2,) or data_cfg["name"] not in TOY_DATASETS or train is None:
        return None, train
    label = data_label(data_cfg)
    desc = f"the training data ({len(train)} points of {label}, data space)"
    ev = evaluate_against_data(final, train, toy_draw(data_cfg["name"]), seed, desc)
    ev.floor_reference += f" of {label}"
    return ev, train
