r"""Conditional sampling against the exact posterior: which methods are biased, and by how much.

Gaussian-mixture priors have exact posteriors under linear Gaussian observations
(:meth:`scoresde.GaussianMixture.condition`) and exact noisy classifiers and class-conditional scores
(:meth:`~scoresde.GaussianMixture.classifier`, :meth:`~scoresde.GaussianMixture.conditional_score`), so every
conditioning method of :mod:`scoresde.conditioning` can be measured against the exact answer. Three parts,
each under the VP, sub-VP and VE SDEs (``eps = 1e-3``, every method ends at ``eps`` without a Tweedie step,
and the exact answer is the posterior diffused to ``eps``, :meth:`~scoresde.GaussianMixture.marginal`):

* ``posterior`` — the 10-D mixture :func:`scoresde.random_mixture` (3 components) observed through a
  coordinate mask (the first half of the coordinates), a 2x average down-sampling (means of coordinate pairs)
  and a random Gaussian projection (3 rows, seeded), at the observation :math:`y = A\bar x`, :math:`\bar x`
  the midpoint of the two heaviest component means (a two-mode posterior), and noise levels
  :math:`\sigma_y`. Methods: DPS (:math:`\sigma_y > 0` only), PiGDM, replacement and RePaint (mask with
  :math:`\sigma_y = 0` only) on Euler–Maruyama, and the twisted SMC sampler, each at a set of NFE budgets;
  ``exact`` is Euler–Maruyama on the exact posterior score, the discretisation error alone, which separates
  a method's bias from the integrator's. ``replicates`` independent sets of ``n`` samples (disjoint blocks of
  one batch of ``replicates * n``; for the SMC one particle of each of ``replicates * n`` independent particle
  systems, since resampled particles of one system are dependent) are each compared with one exact reference
  set of ``n`` posterior samples: the sliced Wasserstein distance (SW2, :data:`PROJECTIONS` projections) divided by its
  floor (the mean SW2 of fresh exact sets of ``n`` to the same reference, ``metrics.metric_floor``), the
  energy distance as a z-score against its floor, and the total-variation distance between the samples'
  nearest-mode fractions (nearest posterior component mean) and the exact posterior's (Monte Carlo with
  ``mode_draws`` exact draws), next to the same distance for exact sets (its floor).
* ``particles`` — the twisted SMC at the largest budget on one case (VP, projection, the first
  :math:`\sigma_y > 0`) as the number of particles per group grows.
* ``guidance`` — the same 10-D mixture with labels ``[0, 1, 0]``, class 0: the exact class-conditional score
  run by :func:`scoresde.sample`, classifier guidance with the exact noisy classifier at weights ``cg_weights``
  (exact at :math:`w = 1`) and classifier-free guidance with the exact conditional score at ``cfg_weights``
  (exact at :math:`w = 0`). The exact cases run every budget, the others the largest only. Guidance at weight
  :math:`w` follows the score of :math:`p_t(x)\,p_t(c \mid x)^{\gamma}` with :math:`\gamma = w` (classifier) or
  :math:`1 + w` (classifier-free); the mode fractions are compared with the exact class-conditional ones and
  with those of the tempered density :math:`p_\varepsilon(x)\,p_\varepsilon(c \mid x)^\gamma` at ``eps``
  (self-normalised importance weights on ``mode_draws`` exact draws of :math:`p_\varepsilon`), which the
  noisy-time guidance does not sample either except at :math:`\gamma = 1`.

A 2-D picture grid (the 8-Gaussian ring with unequal weights observed through its first coordinate,
:math:`y = 2`, VP, largest budget) shows the prior, the observation, the exact posterior and each method's samples.

Usage::

    python -m studies.conditional                 # default size (a few minutes on 2 cores)
    python -m studies.conditional --full          # sigma_y in {0, 0.1, 0.5}, 8 budgets up to 1280, 2,048 per set
    python -m studies.conditional --out DIR --quiet --threads N

Writes ``conditional.nc`` (one xarray Dataset with provenance attributes), ``table.md`` (printed unless
``--quiet``) with one CSV per table, and the figures ``distance_vs_nfe``, ``guidance_vs_nfe``,
``smc_particles`` and ``pictures`` (PNG and SVG).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import xarray as xr
from tqdm.auto import tqdm

import scoresde as sd
from scoresde import conditioning as C
from scoresde import metrics

from . import _io

STUDY = "studies.conditional"
DEFAULT_OUT = Path(__file__).resolve().parent / "output" / "conditional"

EPS = 1e-3
PROJECTIONS = 500
F64 = torch.float64
SDES: dict[str, Callable[[], sd.LinearSDE]] = {"VP": sd.VPSDE, "subVP": sd.SubVPSDE, "VE": sd.VESDE}
OPERATORS = ("mask", "downsample", "projection")
METHODS = ("exact", "dps", "pigdm", "replacement", "repaint", "smc")
LABELS = {
    "exact": "exact score",
    "dps": "DPS",
    "pigdm": "PiGDM",
    "replacement": "replacement",
    "repaint": "RePaint",
    "smc": "twisted SMC",
}
REPAINT_RESAMPLES = 3

OK, UNSUPPORTED, DIVERGED, NOT_RUN = 1, 0, -1, -2
FLAG = {
    "flag_values": np.array([NOT_RUN, DIVERGED, UNSUPPORTED, OK], np.int8),
    "flag_meanings": "not_run diverged unsupported ok",
}


@dataclass(frozen=True)
class Config:
    """Sizes, sweeps and seeds of one run."""

    sdes: tuple[str, ...] = tuple(SDES)
    operators: tuple[str, ...] = OPERATORS
    noise_levels: tuple[float, ...] = (0.0, 0.1)
    methods: tuple[str, ...] = METHODS
    budgets: tuple[int, ...] = (10, 40, 160)  # NFE budgets
    n: int = 256  # samples per replicate set
    replicates: int = 3
    dim: int = 10
    particles: int = 4  # per SMC group in the posterior part
    particle_sweep: tuple[int, ...] = (1, 4, 16)
    cg_weights: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0)
    cfg_weights: tuple[float, ...] = (0.0, 0.5, 2.0, 4.0)
    n_picture: int = 512
    floor_pairs: int = 8
    mode_draws: int = 200_000  # exact draws for the exact mode fractions
    seed_sample: int = 0
    seed_reference: int = 12345
    seed_floor: int = 1
    seed_modes: int = 7

    def __post_init__(self) -> None:
        bad = set(self.sdes) - set(SDES) | set(self.operators) - set(OPERATORS) | set(self.methods) - set(METHODS)
        if bad:
            raise ValueError(
                f"unknown names {sorted(bad)}; sdes: {list(SDES)}, operators: {list(OPERATORS)}, "
                f"methods: {list(METHODS)}"
            )
        if not self.budgets or min(self.budgets) < 2:
            raise ValueError(f"budgets must be NFE counts >= 2, got {self.budgets}")
        if any(s < 0 for s in self.noise_levels):
            raise ValueError(f"noise_levels must be >= 0, got {self.noise_levels}")
        if min(self.particles, *self.particle_sweep) < 1:
            raise ValueError(f"particle counts must be >= 1, got {self.particles}, {self.particle_sweep}")
        if self.replicates < 2 or self.floor_pairs < 2:
            raise ValueError("replicates and floor_pairs must be >= 2 (standard errors)")


DEFAULT = Config()
FULL = replace(
    DEFAULT,
    noise_levels=(0.0, 0.1, 0.5),
    budgets=(10, 20, 40, 80, 160, 320, 640, 1280),
    n=2048,
    replicates=4,
    particles=16,
    particle_sweep=(1, 4, 16, 64),
    n_picture=2048,
    floor_pairs=16,
)


# ---------------------------------------------------------------------------------------
# problems
# ---------------------------------------------------------------------------------------
def operator(name: str, dim: int) -> np.ndarray:
    """The observation matrix: ``mask`` (first ``dim // 2`` coordinates), ``downsample`` (means of coordinate
    pairs; ``dim`` even) or ``projection`` (``max(1, dim // 3)`` rows of i.i.d. N(0, 1/dim), seed 0)."""
    if name == "mask":
        return np.eye(dim)[: max(1, dim // 2)]
    if name == "downsample":
        if dim % 2:
            raise ValueError(f"2x down-sampling needs an even dimension, got {dim}")
        return np.kron(np.eye(dim // 2), [[0.5, 0.5]])
    if name == "projection":
        g = np.random.default_rng(0)
        return g.standard_normal((max(1, dim // 3), dim)) / math.sqrt(dim)
    raise ValueError(f"unknown operator {name!r}; choose one of {OPERATORS}")


def prior(dim: int) -> sd.GaussianMixture:
    """:func:`scoresde.random_mixture` in ``dim`` dimensions, labelled ``[0, 1, 0]``."""
    mix = sd.random_mixture(dim)
    return sd.GaussianMixture(mix.weights, mix.means, mix.covariances, labels=[0, 1, 0])


def observation_point(mix: sd.GaussianMixture) -> np.ndarray:
    """The midpoint of the two heaviest component means (the observation is ``A`` times it)."""
    top = torch.argsort(mix.weights, descending=True)[:2]
    return mix.means[top].mean(0).numpy()


def applicable(method: str, op: str, noise: float) -> bool:
    """DPS needs ``noise > 0``; replacement and RePaint a mask with ``noise = 0``."""
    if method == "dps":
        return noise > 0
    if method in ("replacement", "repaint"):
        return op == "mask" and noise == 0
    return True


def observation(A: np.ndarray, y: np.ndarray, noise: float, op: str) -> C.LinearObservation:
    if op == "mask" and noise == 0:
        mask = np.asarray(A.sum(0) > 0)
        return C.LinearObservation.inpainting(mask, y)
    return C.LinearObservation(A, y, noise)


def run_method(
    method: str,
    budget: int,
    sde: sd.LinearSDE,
    mix: sd.GaussianMixture,
    obs: C.LinearObservation,
    n: int,
    seed: int,
    particles: int,
) -> tuple[np.ndarray | None, int, int]:
    """``n`` independent samples (float64 array or ``None``), the NFE spent and the status of one run.

    ``exact`` runs Euler–Maruyama on the exact posterior score (``mix`` is then the posterior): the
    discretisation error alone. The SMC runs ``n`` particle systems of ``particles`` particles and keeps one
    particle of each (the particles of one system are dependent after resampling)."""
    kw: dict[str, Any] = dict(n=n, seed=seed, progress=False)
    score = mix.score(sde)
    if method == "exact":
        try:
            ds = sd.sample(sde, score, sd.EulerMaruyama(budget, eps=EPS), shape=(n, mix.dim), seed=seed, progress=False)
        except sd.DivergenceError:
            return None, 0, DIVERGED
        return ds.x.values[-1].astype(np.float64), int(ds.attrs["nfe"]), OK
    if method == "smc":
        kw.update(n=n * particles, particles=particles, steps=budget - 1, eps=EPS)
        sampler = None
    elif method == "repaint":
        steps = max(2, budget // REPAINT_RESAMPLES)
        kw.update(jump_length=max(1, steps // 8), resamples=REPAINT_RESAMPLES)
        sampler = sd.EulerMaruyama(steps, eps=EPS)
    else:
        sampler = sd.EulerMaruyama(budget, eps=EPS)
    try:
        ds = C.sample_posterior(sde, score, obs, method, sampler, **kw)
    except sd.DivergenceError:
        return None, 0, DIVERGED
    x = ds.x.values[-1].astype(np.float64)
    if method == "smc":
        x = x.reshape(n, particles, -1)[:, 0]
    if not np.isfinite(x).all():
        return None, int(ds.attrs["nfe"]), DIVERGED
    return x, int(ds.attrs["nfe"]), OK


# ---------------------------------------------------------------------------------------
# measurements
# ---------------------------------------------------------------------------------------
@dataclass
class Reference:
    """An exact reference set, the floors of SW2, energy and mode TV, and the exact mode fractions."""

    exact: sd.GaussianMixture
    ref: torch.Tensor
    sw_floor: np.ndarray
    energy_floor: np.ndarray
    tv_floor: np.ndarray
    centres: torch.Tensor
    fractions: np.ndarray


def mode_tv(x: Any, centres: torch.Tensor, expected: np.ndarray) -> float:
    r"""Total variation :math:`\tfrac12\sum_k |f_k - e_k|` of nearest-centre fractions from ``expected``."""
    f = metrics.mode_fractions(torch.as_tensor(np.asarray(x), dtype=F64), centres).numpy()
    return 0.5 * float(np.abs(f - expected).sum())


def reference(exact: sd.GaussianMixture, n: int, cfg: Config, centres: torch.Tensor | None = None) -> Reference:
    draw = lambda m, g: exact.sample(m, g, dtype=F64)  # noqa: E731
    ref = draw(n, torch.Generator().manual_seed(cfg.seed_reference))
    kw = dict(pairs=cfg.floor_pairs, seed=cfg.seed_floor, reference=ref)
    sw = metrics.metric_floor("sliced_wasserstein", draw, n, projections=PROJECTIONS, **kw)
    en = metrics.metric_floor("energy", draw, n, **kw)
    centres = exact.means if centres is None else centres
    fractions = metrics.mode_fractions(draw(cfg.mode_draws, torch.Generator().manual_seed(cfg.seed_modes)), centres)
    e = fractions.numpy()
    g = torch.Generator().manual_seed(cfg.seed_floor + 1)
    tv = np.array([mode_tv(draw(n, g), centres, e) for _ in range(cfg.floor_pairs)])
    return Reference(exact, ref, np.asarray(sw.values), np.asarray(en.values), tv, centres, e)


def measure(x: np.ndarray, r: Reference) -> tuple[float, float, float]:
    """SW2, energy distance and mode TV of one sample set against the reference."""
    xt = torch.as_tensor(x, dtype=F64)
    return (
        metrics.sliced_wasserstein(xt, r.ref, projections=PROJECTIONS),
        metrics.energy_distance(xt, r.ref),
        mode_tv(xt, r.centres, r.fractions),
    )


def _measure_blocks(x: np.ndarray | None, r: Reference, n: int, R: int) -> np.ndarray:
    """(3, R): SW2, energy, mode TV of each block of ``n`` samples (NaN for a failed run)."""
    out = np.full((3, R), np.nan)
    if x is not None:
        for k in range(R):
            out[:, k] = measure(x[k * n : (k + 1) * n], r)
    return out


def run_posterior(cfg: Config, bar: tqdm) -> dict[str, np.ndarray]:
    mix = prior(cfg.dim)
    xbar = observation_point(mix)
    S, O, L, M, B, R = (len(cfg.sdes), len(cfg.operators), len(cfg.noise_levels), len(cfg.methods), len(cfg.budgets),
                        cfg.replicates)  # fmt: skip
    vals = np.full((3, S, O, L, M, B, R), np.nan)
    nfe = np.full((S, O, L, M, B), np.nan)
    status = np.full((S, O, L, M, B), UNSUPPORTED, np.int8)
    floors = np.full((3, S, O, L, cfg.floor_pairs), np.nan)
    weights = np.full((S, O, L, mix.n_components), np.nan)
    for i, sname in enumerate(cfg.sdes):
        sde = SDES[sname]()
        for o, op in enumerate(cfg.operators):
            A = operator(op, cfg.dim)
            y = A @ xbar
            for j, noise in enumerate(cfg.noise_levels):
                post = mix.condition(A, y, noise)
                assert isinstance(post, sd.GaussianMixture)
                weights[i, o, j] = post.weights.numpy()
                r = reference(post.marginal(sde, EPS), cfg.n, cfg)
                floors[:, i, o, j] = r.sw_floor, r.energy_floor, r.tv_floor
                obs = observation(A, y, noise, op)
                for m, method in enumerate(cfg.methods):
                    for b, budget in enumerate(cfg.budgets):
                        bar.set_postfix_str(f"{sname} {op} {noise:g} {method} @ {budget}")
                        if applicable(method, op, noise):
                            x, nfe[i, o, j, m, b], status[i, o, j, m, b] = run_method(
                                method, budget, sde, post if method == "exact" else mix, obs, cfg.n * R,
                                cfg.seed_sample, cfg.particles,
                            )  # fmt: skip
                            vals[:, i, o, j, m, b] = _measure_blocks(x, r, cfg.n, R)
                        bar.update()
    return {"vals": vals, "nfe": nfe, "status": status, "floors": floors, "weights": weights}


def run_particles(cfg: Config, bar: tqdm) -> dict[str, np.ndarray]:
    """The twisted SMC on VP, projection, the first noise level > 0 (else 0), largest budget, per particle count."""
    mix = prior(cfg.dim)
    sde = sd.VPSDE()
    A = operator("projection", cfg.dim)
    y = A @ observation_point(mix)
    noise = next((s for s in cfg.noise_levels if s > 0), 0.0)
    post = mix.condition(A, y, noise)
    assert isinstance(post, sd.GaussianMixture)
    r = reference(post.marginal(sde, EPS), cfg.n, cfg)
    obs = C.LinearObservation(A, y, noise)
    P, R = len(cfg.particle_sweep), cfg.replicates
    vals = np.full((3, P, R), np.nan)
    for p, K in enumerate(cfg.particle_sweep):
        bar.set_postfix_str(f"SMC particles {K}")
        x, _, _ = run_method("smc", max(cfg.budgets), sde, mix, obs, cfg.n * R, cfg.seed_sample, K)
        vals[:, p] = _measure_blocks(x, r, cfg.n, R)
        bar.update()
    return {"vals": vals, "floors": np.stack([r.sw_floor, r.energy_floor, r.tv_floor]), "noise": np.array(noise)}


def guidance_cases(cfg: Config) -> list[tuple[str, str, float, float]]:
    """``(name, kind, weight, gamma)``: the exact conditional score, classifier guidance, classifier-free guidance."""
    cases = [("exact score", "exact", math.nan, 1.0)]
    cases += [(f"CG w={w:g}", "classifier", w, w) for w in cfg.cg_weights]
    cases += [(f"CFG w={w:g}", "classifier_free", w, 1.0 + w) for w in cfg.cfg_weights]
    return cases


def tempered_fractions(
    mix: sd.GaussianMixture, sde: sd.LinearSDE, gamma: float, c: int, draws: torch.Tensor
) -> np.ndarray:
    r"""Nearest-mode fractions of :math:`p_\varepsilon(x)\,p_\varepsilon(c \mid x)^\gamma` (normalised), by
    self-normalised importance weights on exact draws of :math:`p_\varepsilon`."""
    logc = mix.classifier(sde)(draws, torch.full((draws.shape[0],), EPS, dtype=F64))[:, c]
    w = torch.softmax(gamma * logc, 0)
    centres = mix.marginal(sde, EPS).means
    nearest = torch.cdist(draws, centres).argmin(1)
    return torch.zeros(mix.n_components, dtype=F64).index_add_(0, nearest, w).numpy()


def run_guidance(cfg: Config, bar: tqdm, label: int = 0) -> dict[str, Any]:
    mix = prior(cfg.dim)
    cases = guidance_cases(cfg)
    S, Q, B, R = len(cfg.sdes), len(cases), len(cfg.budgets), cfg.replicates
    K = mix.n_components
    vals = np.full((4, S, Q, B, R), np.nan)  # sw, energy, tv to the conditional, tv to the tempered
    nfe = np.full((S, Q, B), np.nan)
    status = np.full((S, Q, B), NOT_RUN, np.int8)
    floors = np.full((3, S, cfg.floor_pairs), np.nan)
    cond_frac = np.full((S, K), np.nan)
    temp_frac = np.full((S, Q, K), np.nan)
    fractions = np.full((S, Q, R, K), np.nan)
    for i, sname in enumerate(cfg.sdes):
        sde = SDES[sname]()
        marg = mix.marginal(sde, EPS)
        cond = mix.select_class(label).marginal(sde, EPS)
        r = reference(cond, cfg.n, cfg, centres=marg.means)
        floors[:, i] = r.sw_floor, r.energy_floor, r.tv_floor
        cond_frac[i] = r.fractions
        draws = marg.sample(cfg.mode_draws, torch.Generator().manual_seed(cfg.seed_modes), dtype=F64)
        for q, (name, kind, w, gamma) in enumerate(cases):
            temp_frac[i, q] = tempered_fractions(mix, sde, gamma, label, draws)
            exact_case = kind == "exact" or (kind == "classifier" and w == 1) or (kind == "classifier_free" and w == 0)
            for b, budget in enumerate(cfg.budgets):
                bar.set_postfix_str(f"{sname} {name} @ {budget}")
                if exact_case or budget == max(cfg.budgets):
                    sampler = sd.EulerMaruyama(budget, eps=EPS)
                    kw: dict[str, Any] = dict(shape=(cfg.n * R, cfg.dim), seed=cfg.seed_sample, progress=False)
                    try:
                        if kind == "exact":
                            cs = mix.conditional_score(sde)
                            ds = sd.sample(sde, lambda x, t, cs=cs: cs(x, t, label), sampler, **kw)
                        elif kind == "classifier":
                            ds = C.sample_class(
                                sde, mix.score(sde), label, "classifier", sampler, weight=w,
                                classifier=mix.classifier(sde), **kw,
                            )  # fmt: skip
                        else:
                            ds = C.sample_class(
                                sde, mix.conditional_score(sde), label, "classifier_free", sampler, weight=w, **kw
                            )
                    except sd.DivergenceError:
                        status[i, q, b] = DIVERGED
                    else:
                        x = ds.x.values[-1].astype(np.float64)
                        nfe[i, q, b], status[i, q, b] = int(ds.attrs["nfe"]), OK
                        for k in range(R):
                            blk = x[k * cfg.n : (k + 1) * cfg.n]
                            vals[:3, i, q, b, k] = measure(blk, r)
                            vals[3, i, q, b, k] = 0.5 * float(
                                np.abs(_fractions(blk, marg.means) - temp_frac[i, q]).sum()
                            )
                            if budget == max(cfg.budgets):
                                fractions[i, q, k] = _fractions(blk, marg.means)
                bar.update()
    return {
        "vals": vals, "nfe": nfe, "status": status, "floors": floors, "cond_frac": cond_frac,
        "temp_frac": temp_frac, "fractions": fractions, "cases": cases, "prior_weights": mix.weights.numpy(),
    }  # fmt: skip


def _fractions(x: np.ndarray, centres: torch.Tensor) -> np.ndarray:
    return metrics.mode_fractions(torch.as_tensor(x, dtype=F64), centres).numpy()


#: the pictures' prior: the 8-Gaussian ring with unequal weights (the mode at 0 degrees the heaviest), observed
#: at x1 = PICTURE_Y, a line that passes through the modes at +-45 degrees and grazes the one at 0 degrees
PICTURE_WEIGHTS = (0.3, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.05)
PICTURE_Y = 2.0


def run_pictures(cfg: Config, bar: tqdm) -> dict[str, Any]:
    """2-D ring observed through its first coordinate, VP, largest budget: (panel, sample, 2) samples."""
    w = np.asarray(PICTURE_WEIGHTS)
    ring = sd.ring(8, weights=w / w.sum())
    sde = sd.VPSDE()
    A = np.array([[1.0, 0.0]])
    y = np.array([PICTURE_Y])
    noisy = next((s for s in cfg.noise_levels if s > 0), 0.1)
    n = cfg.n_picture
    budget = max(cfg.budgets)
    panels: list[tuple[str, np.ndarray]] = [("prior", ring.sample(n, torch.Generator().manual_seed(0)).numpy())]
    for noise in (0.0, noisy):
        post = ring.condition(A, y, noise)
        assert isinstance(post, sd.GaussianMixture)
        panels.append((f"exact posterior (σ_y={noise:g})", post.sample(n, torch.Generator().manual_seed(1)).numpy()))
        obs = observation(np.array([[1.0, 0.0]]), y, noise, "mask")
        for method in METHODS:
            if applicable(method, "mask", noise) and method != "exact":
                bar.set_postfix_str(f"picture {method} {noise:g}")
                x, _, st = run_method(method, budget, sde, ring, obs, n, cfg.seed_sample, cfg.particles)
                panels.append((f"{LABELS[method]} (σ_y={noise:g})", x if x is not None else np.full((n, 2), np.nan)))
                bar.update()
    return {"names": [p[0] for p in panels], "x": np.stack([p[1] for p in panels]), "noisy": noisy}


# ---------------------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------------------
def run(cfg: Config, progress: bool = True, argv: Sequence[str] = (), size: str = "custom") -> xr.Dataset:
    """Run the three parts and the pictures; return one Dataset."""
    start = time.perf_counter()
    cases = guidance_cases(cfg)
    n_pic = sum(applicable(m, "mask", s) for s in (0.0, 0.1) for m in METHODS[1:])
    total = (
        len(cfg.sdes) * len(cfg.operators) * len(cfg.noise_levels) * len(cfg.methods) * len(cfg.budgets)
        + len(cfg.particle_sweep)
        + len(cfg.sdes) * len(cases) * len(cfg.budgets)
        + n_pic
    )
    with tqdm(total=total, desc="conditional", disable=not progress, leave=False) as bar:
        post = run_posterior(cfg, bar)
        parts = run_particles(cfg, bar)
        guide = run_guidance(cfg, bar)
        pics = run_pictures(cfg, bar)
    R = cfg.replicates
    pdims = ("sde", "operator", "noise_std", "algorithm", "budget", "replicate")
    fdims = ("sde", "operator", "noise_std", "pair")
    gdims = ("sde", "case", "budget", "replicate")
    sw_desc = f"SW2 ({PROJECTIONS} projections) to the exact reference set"
    en_desc = "energy distance (U-statistic) to the exact reference set"
    tv_desc = "total variation of the nearest-mode fractions from the exact ones"
    data: dict[str, Any] = {
        "sw": (pdims, post["vals"][0], {"long_name": sw_desc}),
        "energy": (pdims, post["vals"][1], {"long_name": en_desc}),
        "mode_tv": (pdims, post["vals"][2], {"long_name": tv_desc}),
        "nfe": (pdims[:-1], post["nfe"], {"long_name": "score evaluations of the run"}),
        "status": (pdims[:-1], post["status"], {"long_name": "run status", **FLAG}),
        "sw_floor": (fdims, post["floors"][0], {"long_name": "SW2 of fresh exact sets to the reference"}),
        "energy_floor": (fdims, post["floors"][1], {"long_name": "energy distance of fresh exact sets"}),
        "mode_tv_floor": (fdims, post["floors"][2], {"long_name": "mode TV of fresh exact sets"}),
        "posterior_weights": (
            ("sde", "operator", "noise_std", "component"),
            post["weights"],
            {"long_name": "exact posterior component weights"},
        ),  # fmt: skip
        "smc_sw": (("particles", "replicate"), parts["vals"][0], {"long_name": sw_desc}),
        "smc_energy": (("particles", "replicate"), parts["vals"][1], {"long_name": en_desc}),
        "smc_mode_tv": (("particles", "replicate"), parts["vals"][2], {"long_name": tv_desc}),
        "smc_floor": (("metric", "pair"), parts["floors"], {"long_name": "floors (sw, energy, mode_tv)"}),
        "guidance_sw": (gdims, guide["vals"][0], {"long_name": sw_desc + " of p_eps(x | c)"}),
        "guidance_energy": (gdims, guide["vals"][1], {"long_name": en_desc + " of p_eps(x | c)"}),
        "guidance_mode_tv": (gdims, guide["vals"][2], {"long_name": tv_desc + " of p_eps(x | c)"}),
        "guidance_mode_tv_tempered": (
            gdims,
            guide["vals"][3],
            {"long_name": "mode TV from p_eps(x) p_eps(c | x)^gamma's fractions"},
        ),  # fmt: skip
        "guidance_nfe": (gdims[:-1], guide["nfe"], {"long_name": "score evaluations of the run"}),
        "guidance_status": (gdims[:-1], guide["status"], {"long_name": "run status", **FLAG}),
        "guidance_floor": (("metric", "sde", "pair"), guide["floors"], {"long_name": "floors (sw, energy, mode_tv)"}),
        "conditional_fractions": (
            ("sde", "component"),
            guide["cond_frac"],
            {"long_name": "nearest-mode fractions of p_eps(x | c)"},
        ),  # fmt: skip
        "tempered_fractions": (
            ("sde", "case", "component"),
            guide["temp_frac"],
            {"long_name": "nearest-mode fractions of p_eps(x) p_eps(c | x)^gamma"},
        ),  # fmt: skip
        "guidance_fractions": (
            ("sde", "case", "replicate", "component"),
            guide["fractions"],
            {"long_name": "nearest-mode fractions of the samples at the largest budget"},
        ),  # fmt: skip
        "picture": (("panel", "sample", "coord"), pics["x"], {"long_name": "2-D ring samples"}),
    }
    coords = {
        "sde": list(cfg.sdes),
        "operator": list(cfg.operators),
        "noise_std": ("noise_std", list(cfg.noise_levels), {"long_name": "observation noise sigma_y"}),
        "algorithm": list(cfg.methods),
        "budget": ("budget", list(cfg.budgets), {"long_name": "NFE budget"}),
        "replicate": np.arange(R),
        "pair": np.arange(cfg.floor_pairs),
        "component": np.arange(3),
        "particles": list(cfg.particle_sweep),
        "metric": ["sw", "energy", "mode_tv"],
        "case": [c[0] for c in guide["cases"]],
        "guidance": ("case", [c[1] for c in guide["cases"]]),
        "weight": ("case", [c[2] for c in guide["cases"]]),
        "gamma": ("case", [c[3] for c in guide["cases"]], {"long_name": "exponent of p_t(c | x)"}),
        "panel": pics["names"],
        "coord": ["x1", "x2"],
    }
    ds = xr.Dataset(data, coords=coords)
    ds.attrs = _io.provenance(
        STUDY,
        argv,
        size=size,
        **{k: v for k, v in asdict(cfg).items() if k not in ("sdes", "operators", "methods")},
        eps=EPS,
        projections=PROJECTIONS,
        repaint_resamples=REPAINT_RESAMPLES,
        smc_particle_noise=float(parts["noise"]),
        picture_noise=float(pics["noisy"]),
        prior_weights=guide["prior_weights"].tolist(),
        study_wall_time_s=round(time.perf_counter() - start, 1),
    )
    return ds


# ---------------------------------------------------------------------------------------
# tables
# ---------------------------------------------------------------------------------------
def _stats(v: xr.DataArray, floor: xr.DataArray) -> dict[str, float]:
    """Mean / floor mean and its standard error over replicates; z of the mean against the floor."""
    vals = np.asarray(v.values, dtype=float)
    fl = np.asarray(floor.values, dtype=float)
    R = np.isfinite(vals).sum()
    mean = float(np.nanmean(vals)) if R else math.nan
    se = float(np.nanstd(vals, ddof=1) / math.sqrt(R)) if R > 1 else math.nan
    return {"mean": mean, "se": se, "floor": float(fl.mean()), "floor_sd": float(fl.std(ddof=1))}


def posterior_table(ds: xr.Dataset) -> pd.DataFrame:
    """At the largest budget: SW / floor, energy z, mode TV (and its floor), each with a standard error."""
    b = ds.budget.values.max()
    rows = []
    for s in ds.sde.values:
        for o in ds.operator.values:
            for ns in ds.noise_std.values:
                fsel = dict(sde=s, operator=o, noise_std=ns)
                for m in ds.algorithm.values:
                    sel = dict(fsel, algorithm=m, budget=b)
                    st = int(ds.status.sel(sel))
                    if st == UNSUPPORTED:
                        continue
                    sw = _stats(ds.sw.sel(sel), ds.sw_floor.sel(fsel))
                    en = _stats(ds.energy.sel(sel), ds.energy_floor.sel(fsel))
                    tv = _stats(ds.mode_tv.sel(sel), ds.mode_tv_floor.sel(fsel))
                    rows.append({
                        "SDE": str(s), "operator": str(o), "σ_y": float(ns), "method": LABELS[str(m)],
                        "NFE": float(ds.nfe.sel(sel)),
                        "SW / floor": sw["mean"] / sw["floor"], "± (SW)": sw["se"] / sw["floor"],
                        "energy z": (en["mean"] - en["floor"]) / en["floor_sd"], "± (z)": en["se"] / en["floor_sd"],
                        "mode TV": tv["mean"], "± (TV)": tv["se"], "TV floor": tv["floor"],
                        "status": {OK: "ok", DIVERGED: "diverged"}.get(st, "not run"),
                    })  # fmt: skip
    return pd.DataFrame(rows)


def guidance_table(ds: xr.Dataset) -> pd.DataFrame:
    b = ds.budget.values.max()
    rows = []
    for s in ds.sde.values:
        fl = ds.guidance_floor.sel(sde=s)
        for c in ds.case.values:
            sel = dict(sde=s, case=c, budget=b)
            sw = _stats(ds.guidance_sw.sel(sel), fl.sel(metric="sw"))
            tv = _stats(ds.guidance_mode_tv.sel(sel), fl.sel(metric="mode_tv"))
            tt = _stats(ds.guidance_mode_tv_tempered.sel(sel), fl.sel(metric="mode_tv"))
            frac = ds.guidance_fractions.sel(sde=s, case=c).mean("replicate").values
            rows.append({
                "SDE": str(s), "case": str(c), "γ": float(ds.gamma.sel(case=c)),
                "SW / floor": sw["mean"] / sw["floor"], "± (SW)": sw["se"] / sw["floor"],
                "TV to p(x|c)": tv["mean"], "± (TV)": tv["se"], "TV to tempered": tt["mean"],
                "TV floor": tv["floor"], "fractions": " / ".join(f"{f:.3f}" for f in frac),
                "exact p(x|c)": " / ".join(f"{f:.3f}" for f in ds.conditional_fractions.sel(sde=s).values),
                "tempered": " / ".join(f"{f:.3f}" for f in ds.tempered_fractions.sel(sde=s, case=c).values),
            })  # fmt: skip
    return pd.DataFrame(rows)


def particles_table(ds: xr.Dataset) -> pd.DataFrame:
    rows = []
    for p in ds.particles.values:
        sw = _stats(ds.smc_sw.sel(particles=p), ds.smc_floor.sel(metric="sw"))
        tv = _stats(ds.smc_mode_tv.sel(particles=p), ds.smc_floor.sel(metric="mode_tv"))
        rows.append({
            "particles": int(p), "SW / floor": sw["mean"] / sw["floor"], "± (SW)": sw["se"] / sw["floor"],
            "mode TV": tv["mean"], "± (TV)": tv["se"], "TV floor": tv["floor"],
        })  # fmt: skip
    return pd.DataFrame(rows)


def make_tables(ds: xr.Dataset) -> dict[str, tuple[str, pd.DataFrame, str]]:
    R, b, n = ds.sizes["replicate"], int(ds.budget.values.max()), ds.attrs["n"]
    f3 = {c: ".3f" for c in ("SW / floor", "± (SW)", "mode TV", "± (TV)", "TV floor", "TV to p(x|c)",
                             "TV to tempered")}  # fmt: skip
    post = posterior_table(ds)
    gd = guidance_table(ds)
    pt = particles_table(ds)
    return {
        "posterior": (
            f"Posterior sampling at {b} NFE: distance to the exact posterior ({R} replicate sets of {n} samples; "
            "± = standard error)",
            post,
            _io.markdown_table(post, {**f3, "σ_y": "g", "NFE": ".0f", "energy z": ".1f", "± (z)": ".1f"}),
        ),
        "guidance": (
            f"Class guidance at {b} NFE: distance to p(x | c) and mode fractions (exact: CG w=1, CFG w=0)",
            gd,
            _io.markdown_table(gd, {**f3, "γ": "g"}),
        ),
        "particles": (
            f"Twisted SMC at {b} NFE vs particles per group (VP, projection, σ_y = {ds.attrs['smc_particle_noise']:g})",
            pt,
            _io.markdown_table(pt, f3),
        ),
    }


# ---------------------------------------------------------------------------------------
# figures
# ---------------------------------------------------------------------------------------
def _band(ax: Any, floor: np.ndarray, scale: float = 1.0, label: str | None = "floor mean ± 3 sd") -> None:
    lo, hi = floor.mean() - 3 * floor.std(ddof=1), floor.mean() + 3 * floor.std(ddof=1)
    ax.axhspan(max(lo, 1e-12) / scale, hi / scale, color="0.8", alpha=0.6, label=label)


def figures(ds: xr.Dataset) -> dict[str, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out: dict[str, Any] = {}
    # distance vs NFE: rows = SDE, columns = (operator, noise)
    cases = [(o, s) for o in ds.operator.values for s in ds.noise_std.values]
    S = ds.sizes["sde"]
    fig, axes = plt.subplots(S, len(cases), figsize=(3.2 * len(cases), 2.8 * S), squeeze=False, sharex=True)
    for i, sde in enumerate(ds.sde.values):
        for j, (o, s) in enumerate(cases):
            ax = axes[i, j]
            fsel = dict(sde=sde, operator=o, noise_std=s)
            floor = ds.sw_floor.sel(fsel).values
            _band(ax, floor, floor.mean(), "exact-sample floor ± 3 sd" if (i, j) == (0, 0) else None)
            for m in ds.algorithm.values:
                sel = dict(fsel, algorithm=m)
                if (ds.status.sel(sel) == UNSUPPORTED).all():
                    continue
                v = ds.sw.sel(sel) / floor.mean()
                ax.errorbar(
                    ds.nfe.sel(sel).where(ds.status.sel(sel) == OK).values, v.mean("replicate").values,
                    yerr=v.std("replicate", ddof=1).values / math.sqrt(ds.sizes["replicate"]),
                    marker="o", ms=3, capsize=2, label=LABELS[str(m)] if (i, j) == (0, 0) else None,
                    color=f"C{list(METHODS).index(str(m))}",
                )  # fmt: skip
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_title(f"{sde}, {o}, σ_y = {float(s):g}", fontsize=9)
            if i == S - 1:
                ax.set_xlabel("NFE (score evaluations)")
            if j == 0:
                ax.set_ylabel("SW2 / floor mean")
    # one legend for the whole figure, listing every method that appears anywhere
    handles = {}
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(lab, h)
    for m in ds.algorithm.values:
        handles.setdefault(LABELS[str(m)], plt.Line2D([], [], color=f"C{list(METHODS).index(str(m))}", marker="o"))
    fig.legend(handles.values(), handles.keys(), loc="upper center", ncol=len(handles), bbox_to_anchor=(0.5, 1.02))
    fig.suptitle("Distance to the exact posterior (10-D mixture) vs NFE", y=1.06)
    fig.tight_layout()
    out["distance_vs_nfe"] = fig

    # guidance: exact cases vs NFE, per SDE
    fig, axes = plt.subplots(1, S, figsize=(4 * S, 3.2), squeeze=False)
    for i, sde in enumerate(ds.sde.values):
        ax = axes[0, i]
        floor = ds.guidance_floor.sel(sde=sde, metric="sw").values
        _band(ax, floor, floor.mean())
        for k, c in enumerate(ds.case.values):
            sel = dict(sde=sde, case=c)
            ok = ds.guidance_status.sel(sel) == OK
            if int(ok.sum()) < 2:
                continue
            v = ds.guidance_sw.sel(sel) / floor.mean()
            ax.errorbar(
                ds.guidance_nfe.sel(sel).where(ok).values, v.mean("replicate").values,
                yerr=v.std("replicate", ddof=1).values / math.sqrt(ds.sizes["replicate"]),
                marker="os^"[k % 3], ms=4, capsize=2, label=str(c), ls=["-", "--", ":"][k % 3],
            )  # fmt: skip
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("NFE (score evaluations)")
        ax.set_ylabel("SW2 / floor mean")
        ax.set_title(f"{sde}: exact-answer guidance, class 0\n(the same score up to rounding: the curves coincide)",
                     fontsize=9)  # fmt: skip
        ax.legend(fontsize=8)
    fig.tight_layout()
    out["guidance_vs_nfe"] = fig

    # twisted SMC vs particles
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    floor = ds.smc_floor.sel(metric="sw").values
    _band(ax, floor, floor.mean())
    v = ds.smc_sw / floor.mean()
    ax.errorbar(
        ds.particles.values, v.mean("replicate").values,
        yerr=v.std("replicate", ddof=1).values / math.sqrt(ds.sizes["replicate"]),
        marker="o", capsize=2, label="twisted SMC", color=f"C{list(METHODS).index('smc')}",
    )  # fmt: skip
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("particles per group")
    ax.set_ylabel("SW2 / floor mean")
    ax.set_title(f"VP, projection, σ_y = {ds.attrs['smc_particle_noise']:g}, {int(ds.budget.max())} NFE")
    ax.legend()
    fig.tight_layout()
    out["smc_particles"] = fig

    # the 2-D picture grid
    names = [str(p) for p in ds.panel.values]
    cols = 4
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3 * rows), squeeze=False, sharex=True, sharey=True)
    for ax, name in zip(axes.flat, names, strict=False):
        x = ds.picture.sel(panel=name).values
        ax.scatter(x[:, 0], x[:, 1], s=2, alpha=0.5, color="C0" if name == "prior" else "C1")
        if name != "prior":
            ax.axvline(PICTURE_Y, color="k", lw=0.8, ls="--", label=f"observation x1 = {PICTURE_Y:g}")
        ax.set_title(name, fontsize=9)
        ax.set_xlim(-4.5, 4.5)
        ax.set_ylim(-4.5, 4.5)
        ax.set_aspect("equal")
    for ax in axes.flat[len(names) :]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("x1")
    for ax in axes[:, 0]:
        ax.set_ylabel("x2")
    axes[0, 1].legend(fontsize=7, loc="lower right")
    fig.suptitle(f"8-Gaussian ring, unequal weights, observed through x1 (VP, {int(ds.budget.max())} NFE)")
    fig.tight_layout()
    out["pictures"] = fig
    return out


# ---------------------------------------------------------------------------------------
# entry point
# ---------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = _io.study_parser(
        STUDY,
        __doc__,
        "sigma_y in {0, 0.1, 0.5}, eight NFE budgets up to 1280, 4 replicate sets of 2,048 samples",
        DEFAULT_OUT,
        docs_size=False,
    )
    ap.add_argument("--budgets", nargs="+", type=int, default=None, help="NFE budgets")
    ap.add_argument("--sdes", nargs="+", default=None, help=f"a subset of {list(SDES)}")
    return ap.parse_args(argv)


def write_outputs(ds: xr.Dataset, out: Path) -> str:
    """Write the netCDF, the tables and the figures; return the markdown."""
    _io.write_netcdf(ds, out / "conditional.nc")
    text = _io.write_tables(
        out,
        f"Conditional sampling against the exact posterior ({ds.attrs['size']} size)",
        ds.attrs,
        f"{ds.attrs['study_wall_time_s']:.0f} s in all",
        make_tables(ds),
        extra=[
            "SW / floor near 1 (and energy z within ±3, mode TV near its floor) is as close as exact samples of "
            "the same size; ± is the standard error over the replicate sets. Mode fractions: nearest component "
            "mean of the exact posterior (posterior part) or of p_eps (guidance part).\n"
        ],
    )
    _io.save_figures(out, figures(ds))
    return text


def main(argv: Sequence[str] | None = None) -> int:
    """Run the study, write the outputs, print the tables unless ``--quiet``; returns 0."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    out = _io.prepare(args)
    cfg = FULL if args.full else DEFAULT
    if args.budgets is not None:
        cfg = replace(cfg, budgets=tuple(args.budgets))
    if args.sdes is not None:
        cfg = replace(cfg, sdes=tuple(args.sdes))
    ds = run(cfg, progress=not args.quiet, argv=argv, size="full" if args.full else "default")
    text = write_outputs(ds, out)
    if not args.quiet:
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
