"""Accuracy versus cost: error (deterministic solvers) and distance to the truth (every sampler) against NFE.

Target: the FFJORD 8-Gaussian ring (``scoresde.eight_gaussians()``: 8 equal modes on a circle of radius
4/sqrt(2), component std 0.5/sqrt(2)) with its exact score, under the VP, sub-VP and VE SDEs (from T = 1) and
EDM's variance-exploding ``EDMSDE`` (sigma(t) = t, from T = 80), integrated to eps = 1e-3.

Part A, deterministic solvers (float64). For every solver (``Euler``, ``Heun``, ``DDIM(eta=0)``,
``DPMSolverPP`` order 1, 2M, 3M, ``UniPC`` order 3) x time grid (``uniform``, ``logsnr``, ``quadratic``,
``karras``) x SDE x NFE target: the per-sample end-point RMSE against a tight reference solve of the same
probability-flow ODE from the same x_T (scipy DOP853, rtol = atol = 1e-10; :func:`ode_reference`), sqrt(mean_i
|x_i - x_i^ref|^2) over ``n_det`` starting points x_T ~ p_T. The NFE is the one the run reports
(``ds.attrs["nfe"]``): Heun takes floor(target / 2) steps. Combinations a solver cannot run are recorded as
``unsupported``, runs that overflow as ``diverged``. scipy's adaptive RK45 and DOP853 at a few tolerances give
adaptive points on the same axes. Observed orders: minus the least-squares slope of log RMSE against log NFE
over the NFE targets in ``fit_range``.

Part B, distance to the truth (float32, ``n_sto`` samples; 20,000 with ``--full``). Every stochastic
sampler (``EulerMaruyama``; ``PredictorCorrector`` with reverse diffusion + Langevin; the ancestral
predictor without corrector, i.e. DDPM for VP and SMLD for VE; ``TorchSDE`` euler and srk;
``AdaptiveSDE`` at several tolerances, whose NFE is an output; ``EDMStochastic`` (Karras grid, S_churn = 10),
``DPMSolverPPSDE`` (2M, eta = 1) and ``ERSDE`` (order 3), the last two on the log-SNR grid; ``DDPMAncestral``
where exported, which runs only a DDPM chain and is recorded as unsupported on these SDEs) and, on the same axes, a few
deterministic solvers (Euler and Heun on the uniform grid, DPM-Solver++(3M) on the log-SNR grid, RK45 at
several tolerances), each x SDE x cost level. Measured: the sliced Wasserstein distance (SW, 500
projections) and the energy distance (ED, U-statistic) from the samples at t = eps to a fixed exact
reference sample of p_eps of the same size, and the mode-weight test. Each distance is set against its
floor: ``metrics.metric_floor`` with ``reference=`` (``floor_pairs`` fresh exact sets of the same size
against the same reference: the null distribution conditional on the reference, as in
``tests/test_acceptance.py``). A run lies *within the band* when SW and ED are both <= floor mean + 3 sd
and every mode's fraction is within 3 binomial standard errors family-wise (Bonferroni over the 8 modes:
|z| <= 3.58). Reported per sampler x SDE: the smallest NFE within the band ("the NFE it needs"), and
whether every run with more NFE stays within it. SW is shown divided by its floor mean; ED, whose floor
mean is ~0 (unbiased), as (ED - floor mean) / floor sd.

Usage::

    python -m studies.accuracy_cost                 # default size (n_sto = 5,000), a few minutes on 2 cores
    python -m studies.accuracy_cost --full          # n_sto = 20,000 (as the slow acceptance tests), finer NFE sweeps
    python -m studies.accuracy_cost --docs          # the documentation build's size (n_sto = 1,000, NFE 20-200)
    python -m studies.accuracy_cost --band          # stochastic samplers only (part B), 20,000 samples, NFE 10-200
    python -m studies.accuracy_cost --out DIR --quiet --threads N

Writes to ``--out`` (default ``studies/output/accuracy_cost/``): ``accuracy_cost.nc`` (one xarray
Dataset, provenance attributes), ``error_vs_nfe.png/.svg`` and ``distance_vs_nfe.png/.svg`` (drawn by
:func:`plot` from the Dataset alone, so they can be redrawn from the re-opened file), ``table.md``
(printed unless ``--quiet``) and one CSV per table.
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

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
import xarray as xr  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from scipy.integrate import solve_ivp  # noqa: E402
from scipy.stats import norm  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

import scoresde as sd  # noqa: E402
from scoresde import metrics  # noqa: E402

from . import _io  # noqa: E402

STUDY = "studies.accuracy_cost"
DEFAULT_OUT = Path(__file__).resolve().parent / "output" / "accuracy_cost"

TARGET = sd.eight_gaussians()
SDES: dict[str, sd.LinearSDE] = {"VP": sd.VPSDE(), "subVP": sd.SubVPSDE(), "VE": sd.VESDE(), "EDM": sd.EDMSDE()}
GRIDS = ("uniform", "logsnr", "quadratic", "karras")
EPS = 1e-3
REF_TOL = 1e-10  # rtol = atol of the DOP853 reference solve
K_SD = 3.0  # band: distance <= floor mean + 3 sd
#: family-wise 3-sigma level over the 8 modes (Bonferroni), as in tests/test_acceptance.py
K_MODES = float(norm.isf(norm.sf(K_SD) / TARGET.n_components))

# status flags shared by both parts
OK, UNSUPPORTED, DIVERGED, NOT_RUN = 1, 0, -1, -2
FLAG = {
    "flag_values": np.array([NOT_RUN, DIVERGED, UNSUPPORTED, OK], np.int8),
    "flag_meanings": "not_run diverged unsupported ok",
}

#: deterministic solvers of part A: name -> (factory(steps, grid), NFE per step)
SOLVERS: dict[str, tuple[Callable[[int, str], sd.Sampler], int]] = {
    "Euler": (lambda n, g: sd.Euler(n, grid=g, eps=EPS), 1),
    "Heun": (lambda n, g: sd.Heun(n, grid=g, eps=EPS), 2),
    "DDIM": (lambda n, g: sd.DDIM(n, grid=g, eta=0.0, eps=EPS), 1),
    "DPM++1": (lambda n, g: sd.DPMSolverPP(1, n, grid=g, eps=EPS), 1),
    "DPM++2M": (lambda n, g: sd.DPMSolverPP(2, n, grid=g, eps=EPS), 1),
    "DPM++3M": (lambda n, g: sd.DPMSolverPP(3, n, grid=g, eps=EPS), 1),
    "UniPC-3": (lambda n, g: sd.UniPC(3, n, grid=g, eps=EPS), 1),
    "Euler-EDM": (lambda n, g: sd.Euler(n, grid=g, form="edm", eps=EPS), 1),
    "Heun-EDM": (lambda n, g: sd.Heun(n, grid=g, form="edm", eps=EPS), 2),
    "DPM++2S": (lambda n, g: sd.DPMSolverPPSinglestep(2, n, grid=g, eps=EPS), 2),
    "DPM++3S": (lambda n, g: sd.DPMSolverPPSinglestep(3, n, grid=g, eps=EPS), 3),
    # ending at sigma = 0 (to_zero): measured against the reference solved to t = 0 (ZERO_SOLVERS)
    "Euler-0": (lambda n, g: sd.Euler(n, grid=g, eps=EPS, to_zero=True), 1),
    "Heun-0": (lambda n, g: sd.Heun(n, grid=g, eps=EPS, to_zero=True), 2),
    "DPM++3M-0": (lambda n, g: sd.DPMSolverPP(3, n, grid=g, eps=EPS, to_zero=True), 1),
    "UniPC-3-0": (lambda n, g: sd.UniPC(3, n, grid=g, eps=EPS, to_zero=True), 1),
    "DPM++3S-0": (lambda n, g: sd.DPMSolverPPSinglestep(3, n, grid=g, eps=EPS, to_zero=True), 3),
}
#: the solvers that end at sigma = 0; run only on SDEs with sigma(0) = 0 (VP, sub-VP, EDM), where the reference
#: is the probability-flow ODE solved to t = 0 (:func:`ode_reference_to_zero`); on VE sigma(0) = sigma_min > 0
ZERO_SOLVERS = frozenset(name for name in SOLVERS if name.endswith("-0"))
#: theoretical order of each solver (3M: >= 2 in practice, held near 2 by its first-order start-up); the
#: to_zero variants add a last step to sigma = 0 that errs by O(sigma~(eps)^2), a floor at high NFE
THEORY = {
    "Euler": 1.0,
    "Heun": 2.0,
    "DDIM": 1.0,
    "DPM++1": 1.0,
    "DPM++2M": 2.0,
    "DPM++3M": 3.0,
    "UniPC-3": 4.0,
    "Euler-EDM": 1.0,
    "Heun-EDM": 2.0,
    "DPM++2S": 2.0,
    "DPM++3S": 3.0,
    "Euler-0": 1.0,
    "Heun-0": 2.0,
    "DPM++3M-0": 3.0,
    "UniPC-3-0": 4.0,
    "DPM++3S-0": 3.0,
}
#: adaptive points of part A besides scipy's methods: the adaptive DPM-Solver (largest per-sample error norm)
ADAPTIVE_DPM: dict[str, Callable[[float], sd.Sampler]] = {
    "DPM-Solver-12": lambda tol: sd.AdaptiveDPMSolver(2, rtol=tol, atol=tol, eps=EPS),
    "DPM-Solver-23": lambda tol: sd.AdaptiveDPMSolver(3, rtol=tol, atol=tol, eps=EPS),
}

#: samplers of part B; kind "sde" = stochastic, "ode" = deterministic shown for comparison
SAMPLER_KINDS = {
    "EM": "sde",
    "PC": "sde",
    "PC-ancestral": "sde",
    "TorchSDE-euler": "sde",
    "TorchSDE-srk": "sde",
    "AdaptiveSDE": "sde",
    "EDM-SDE": "sde",
    "DPM++2M-SDE": "sde",
    "ER-SDE-3": "sde",
    "DDPMAncestral": "sde",
    "ODE-Euler": "ode",
    "ODE-Heun": "ode",
    "ODE-DPM++3M": "ode",
    "ODE-RK45": "ode",
}


@dataclass(frozen=True)
class Config:
    """Sizes, sweeps and seeds of one run."""

    # part A
    n_det: int = 2000
    nfe_targets: tuple[int, ...] = (5, 10, 20, 35, 50, 100)
    fit_range: tuple[int, int] = (20, 100)
    solvers: tuple[str, ...] = tuple(SOLVERS)
    grids: tuple[str, ...] = GRIDS
    sdes: tuple[str, ...] = tuple(SDES)
    ode_methods: tuple[str, ...] = ("RK45", "DOP853", *ADAPTIVE_DPM)
    ode_tols: tuple[float, ...] = (1e-3, 1e-4, 1e-5, 1e-6)
    # part B
    n_sto: int = 5000
    levels: tuple[int, ...] = (20, 50, 100, 200, 500, 1000)  # NFE targets of the fixed-step samplers
    adaptive_tols: tuple[float, ...] = (0.2, 0.1, 0.05, 0.02, 0.01, 0.005)  # one per level
    rk45_tols: tuple[float, ...] = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6)  # one per level
    ode_max_nfe: int = 100  # fixed-step ODE solvers run the levels up to this NFE
    samplers: tuple[str, ...] = tuple(SAMPLER_KINDS)
    floor_pairs: int = 8
    seed_det: int = 0  # x_T of part A
    seed_sto: int = 1  # every sampler of part B (prior and noise)
    seed_floor: int = 1  # metric_floor's base seed
    seed_reference: int = 12345  # the exact reference sample of p_eps (+ SDE index)
    # part B: sweep each sampler x SDE only up to the second level within the band, and skip the energy
    # distance of a run already outside the band by SW or mode weights (NaN); saves most of the cost of --band
    lazy: bool = False

    def __post_init__(self) -> None:
        if not (len(self.adaptive_tols) == len(self.rk45_tols) == len(self.levels)):
            raise ValueError("adaptive_tols and rk45_tols need one entry per level")
        unknown = (
            set(self.solvers) - set(SOLVERS)
            | set(self.samplers) - set(SAMPLER_KINDS)
            | set(self.grids) - set(GRIDS)
            | set(self.sdes) - set(SDES)
        )
        if unknown:
            raise ValueError(f"unknown names {sorted(unknown)}")


DEFAULT = Config()
FULL = replace(
    DEFAULT,
    nfe_targets=(5, 7, 10, 14, 20, 28, 35, 50, 70, 100, 140, 200),
    fit_range=(20, 200),
    ode_tols=(1e-3, 1e-4, 1e-5, 1e-6, 1e-7),
    n_sto=20_000,
    levels=(10, 20, 50, 100, 200, 500, 1000, 2000),
    adaptive_tols=(0.5, 0.2, 0.1, 0.05, 0.02, 0.01, 0.005, 0.002),
    rk45_tols=(1e-1, 3e-2, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7),
    ode_max_nfe=200,
    floor_pairs=16,
)
#: the documentation build's size (``--docs``): every figure and table of the default size, from fewer starting
#: points and samples, four NFE targets (including the headline's 20, 35 and 50) and three cost levels
DOCS = replace(
    DEFAULT,
    n_det=200,
    nfe_targets=(10, 20, 35, 50),
    fit_range=(20, 50),
    ode_tols=(1e-3, 1e-5),
    n_sto=1000,
    levels=(20, 50, 200),
    adaptive_tols=(0.2, 0.1, 0.05),
    rk45_tols=(1e-1, 1e-2, 1e-4),
    floor_pairs=4,
)
#: the NFE-to-band table of the stochastic samplers alone (part B only: ``run_distances(BAND)``), 20,000
#: samples on a sweep fine at low NFE, each sampler up to its second level within the band (``lazy``);
#: ``python -m studies.accuracy_cost --band``
BAND = replace(
    FULL,
    levels=(10, 14, 20, 28, 35, 50, 70, 100, 140, 200),
    adaptive_tols=(0.5, 0.3, 0.2, 0.14, 0.1, 0.07, 0.05, 0.03, 0.02, 0.01),
    rk45_tols=(1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 3e-5, 1e-5, 1e-6),
    samplers=("EM", "PC", "PC-ancestral", "TorchSDE-srk", "AdaptiveSDE", "EDM-SDE", "DPM++2M-SDE", "ER-SDE-3"),
    sdes=tuple(SDES),
    floor_pairs=8,
    lazy=True,
)


# ---------------------------------------------------------------------------------------
# shared helpers (also used by tests/test_study_accuracy_cost.py)
# ---------------------------------------------------------------------------------------
def ode_reference(
    sde: sd.SDE, score_fn: Callable, x_T: torch.Tensor, tol: float = REF_TOL, eps: float = EPS
) -> tuple[np.ndarray, int]:
    """End points at ``eps`` of the probability-flow ODE from ``x_T``, solved by scipy's DOP853 at
    ``rtol = atol = tol`` (the reference of the RMSE; float64 when ``x_T`` is), and the NFE it took."""
    ode = sd.ProbabilityFlowODE("DOP853", rtol=tol, atol=tol, eps=eps)
    ds = sd.sample(sde, score_fn, ode, x_T=x_T, progress=False)
    return ds["x"].values[-1], int(ds.attrs["nfe"])


def ode_reference_to_zero(
    sde: sd.LinearSDE, score_fn: Callable, x_T: torch.Tensor, tol: float = REF_TOL
) -> tuple[np.ndarray, int]:
    r"""End points at :math:`t = 0` of the probability-flow ODE :math:`dx/dt = f(t)x - \tfrac12 g(t)^2 s(x, t)` from
    ``x_T`` (scipy DOP853 at ``rtol = atol = tol``, float64), and the NFE: the reference of the runs that end at
    :math:`\sigma = 0`, for an SDE with :math:`\sigma(0) = 0` and a score finite at :math:`t = 0` (the mixture's)."""
    shape, n = tuple(x_T.shape), x_T.shape[0]
    calls = 0

    def fun(t: float, y: np.ndarray) -> np.ndarray:
        nonlocal calls
        calls += 1
        x = torch.from_numpy(y).reshape(shape)
        f, g, _, _ = (float(v) for v in sde.coefficients(float(t)))
        drift = f * x - 0.5 * g**2 * score_fn(x, torch.full((n,), float(t), dtype=torch.float64))
        return drift.reshape(-1).numpy()

    y0 = x_T.double().reshape(-1).numpy()
    sol = solve_ivp(fun, (float(sde.T), 0.0), y0, method="DOP853", rtol=tol, atol=tol)
    if sol.status != 0:
        raise RuntimeError(f"the reference solve to t = 0 failed on {sde!r}: {sol.message}")
    return sol.y[:, -1].reshape(shape), calls


def sigma_at_zero(sde: sd.LinearSDE) -> float:
    r""":math:`\sigma(0)` of ``sde`` (0 for VP, sub-VP and EDM; ``sigma_min`` for VE)."""
    return float(sde.coefficients(0.0)[3])


def end_point_rmse(
    sde: sd.SDE, score_fn: Callable, sampler: sd.Sampler, x_T: torch.Tensor, reference: np.ndarray
) -> tuple[float, int, float]:
    r"""Run ``sampler`` from ``x_T``; return the RMSE :math:`\sqrt{\mathrm{mean}_i |x_i - x_i^{ref}|^2}`, the NFE
    the run reports, and the RMSE's standard error over the starting points (delta method,
    :math:`\mathrm{sd}_i(e_i^2) / (2\,\mathrm{RMSE}\sqrt n)`); ``nan`` when the end points are not finite."""
    ds = sd.sample(sde, score_fn, sampler, x_T=x_T, progress=False)
    end = ds["x"].values[-1]
    nfe = int(ds.attrs["nfe"])
    if not np.isfinite(end).all():
        return math.nan, nfe, math.nan
    sq = ((end - reference) ** 2).sum(axis=1)
    err = float(np.sqrt(sq.mean()))
    se = float(sq.std(ddof=1) / (2 * err * math.sqrt(len(sq)))) if err > 0 and len(sq) > 1 else math.nan
    return err, nfe, se


def fit_order(nfe: Sequence[float], err: Sequence[float]) -> float:
    """Observed order: minus the least-squares slope of log ``err`` against log ``nfe`` (finite, positive
    points only; ``nan`` with fewer than two)."""
    nfe, err = np.asarray(nfe, float), np.asarray(err, float)
    ok = np.isfinite(err) & (err > 0) & np.isfinite(nfe) & (nfe > 0)
    if ok.sum() < 2 or np.unique(nfe[ok]).size < 2:
        return math.nan
    return float(-np.polyfit(np.log(nfe[ok]), np.log(err[ok]), 1)[0])


def _check(sampler: sd.Sampler, sde: sd.SDE) -> str | None:
    """``None`` if ``sampler`` can run ``sde``, else the reason."""
    try:
        sampler.check(sde)
    except ValueError as err:
        return str(err)
    return None


# ---------------------------------------------------------------------------------------
# part A: deterministic solvers, RMSE against the DOP853 reference
# ---------------------------------------------------------------------------------------
def run_deterministic(cfg: Config, progress: bool) -> xr.Dataset:
    """Part A: RMSE and NFE for every solver x grid x SDE x NFE target, adaptive points, fitted orders."""
    S, G, D, N = len(cfg.solvers), len(cfg.grids), len(cfg.sdes), len(cfg.nfe_targets)
    M, R = len(cfg.ode_methods), len(cfg.ode_tols)
    rmse = np.full((S, G, D, N), np.nan)
    rmse_se = np.full((S, G, D, N), np.nan)
    nfe = np.full((S, G, D, N), -1, np.int64)
    steps = np.zeros((S, N), np.int64)
    status = np.full((S, G, D, N), NOT_RUN, np.int8)
    wall = np.full((S, G, D, N), np.nan)
    ode_rmse, ode_nfe = np.full((M, D, R), np.nan), np.full((M, D, R), -1, np.int64)
    ref_nfe, ref_wall = np.zeros(D, np.int64), np.zeros(D)
    ref0_nfe = np.full(D, -1, np.int64)
    notes: dict[str, str] = {}
    for i, name in enumerate(cfg.solvers):
        per_step = SOLVERS[name][1]
        steps[i] = [max(1, n // per_step) for n in cfg.nfe_targets]

    total = D * (1 + S * G * N + M * R)
    with tqdm(total=total, desc="A: solvers", disable=not progress, leave=False) as bar:
        for d, sname in enumerate(cfg.sdes):
            sde = SDES[sname]
            score = TARGET.score(sde)
            x_T = sde.prior_sampling(
                (cfg.n_det, 2), generator=torch.Generator().manual_seed(cfg.seed_det), dtype=torch.float64
            )
            bar.set_postfix_str(f"{sname} DOP853 reference")
            t0 = time.perf_counter()
            ref, ref_nfe[d] = ode_reference(sde, score, x_T)
            ref_wall[d] = time.perf_counter() - t0
            ref0 = None  # the reference at t = 0, solved when a solver that ends at sigma = 0 first needs it
            bar.update()
            for i, name in enumerate(cfg.solvers):
                factory = SOLVERS[name][0]
                for g, grid in enumerate(cfg.grids):
                    for k in range(N):
                        bar.set_postfix_str(f"{sname} {name} {grid} NFE~{cfg.nfe_targets[k]}")
                        try:
                            solver = factory(int(steps[i, k]), grid)
                            why = _check(solver, sde)
                            if why is None and name in ZERO_SOLVERS and sigma_at_zero(sde) > 0:
                                why = (
                                    f"sigma(0) = {sigma_at_zero(sde):g} > 0 on {sname}: no reference at sigma = 0 "
                                    "(the run ends at sigma = 0, the ODE at sigma(0))"
                                )
                            if why is None:
                                solver.time_points(sde)  # a grid that cannot be built is an unsupported combination
                        except ValueError as err:
                            why = str(err)
                        if why is not None:
                            status[i, g, d, k] = UNSUPPORTED
                            notes[f"{name}/{grid}/{sname}"] = why
                            bar.update()
                            continue
                        if name in ZERO_SOLVERS and ref0 is None:
                            bar.set_postfix_str(f"{sname} DOP853 reference to t = 0")
                            ref0, ref0_nfe[d] = ode_reference_to_zero(sde, score, x_T)
                        t0 = time.perf_counter()
                        err, used, se = end_point_rmse(sde, score, solver, x_T, ref0 if name in ZERO_SOLVERS else ref)
                        wall[i, g, d, k] = time.perf_counter() - t0
                        rmse[i, g, d, k], nfe[i, g, d, k], rmse_se[i, g, d, k] = err, used, se
                        status[i, g, d, k] = OK if math.isfinite(err) else DIVERGED
                        bar.update()
            for m, method in enumerate(cfg.ode_methods):
                for r, tol in enumerate(cfg.ode_tols):
                    bar.set_postfix_str(f"{sname} {method} tol={tol:g}")
                    ode = (
                        ADAPTIVE_DPM[method](tol)
                        if method in ADAPTIVE_DPM
                        else sd.ProbabilityFlowODE(method, rtol=tol, atol=tol, eps=EPS)
                    )
                    ode_rmse[m, d, r], ode_nfe[m, d, r], _ = end_point_rmse(sde, score, ode, x_T, ref)
                    bar.update()

    lo, hi = cfg.fit_range
    in_fit = (np.asarray(cfg.nfe_targets) >= lo) & (np.asarray(cfg.nfe_targets) <= hi)
    order = np.full((S, G, D), np.nan)
    for i in range(S):
        for g in range(G):
            for d in range(D):
                sel = in_fit & (status[i, g, d] == OK)
                order[i, g, d] = fit_order(nfe[i, g, d, sel], rmse[i, g, d, sel])

    return xr.Dataset(
        {
            "rmse": (
                ("solver", "grid", "sde", "nfe_target"),
                rmse,
                {
                    "long_name": "end-point RMSE against the DOP853 reference",
                    "description": "sqrt(mean_i |x_i - x_i_ref|^2) over the starting points",
                },
            ),
            "rmse_se": (
                ("solver", "grid", "sde", "nfe_target"),
                rmse_se,
                {"long_name": "standard error of the RMSE over the starting points (delta method)"},
            ),
            "nfe": (
                ("solver", "grid", "sde", "nfe_target"),
                nfe,
                {"long_name": "score evaluations reported by the run (-1: not run)"},
            ),
            "steps": (("solver", "nfe_target"), steps, {"long_name": "solver steps"}),
            "status": (("solver", "grid", "sde", "nfe_target"), status, {"long_name": "run status", **FLAG}),
            "wall_time": (("solver", "grid", "sde", "nfe_target"), wall, {"long_name": "run wall time", "units": "s"}),
            "order": (
                ("solver", "grid", "sde"),
                order,
                {"long_name": f"observed order: -slope of log RMSE vs log NFE over NFE targets in [{lo}, {hi}]"},
            ),
            "order_theory": (
                ("solver",),
                np.array([THEORY[s] for s in cfg.solvers]),
                {"long_name": "theoretical order (DPM++3M: 3; >= 2 expected, start-up step)"},
            ),
            "ode_rmse": (
                ("ode_method", "sde", "ode_tol"),
                ode_rmse,
                {"long_name": "end-point RMSE of scipy's adaptive solver against the reference"},
            ),
            "ode_nfe": (("ode_method", "sde", "ode_tol"), ode_nfe, {"long_name": "score evaluations (adaptive)"}),
            "reference_nfe": (("sde",), ref_nfe, {"long_name": f"NFE of the DOP853 reference (rtol=atol={REF_TOL:g})"}),
            "reference_wall_time": (("sde",), ref_wall, {"units": "s"}),
            "reference_to_zero_nfe": (
                ("sde",),
                ref0_nfe,
                {"long_name": f"NFE of the DOP853 reference to t = 0 (rtol=atol={REF_TOL:g}; -1: not needed)"},
            ),
        },
        coords={
            "solver": list(cfg.solvers),
            "grid": list(cfg.grids),
            "sde": list(cfg.sdes),
            "nfe_target": list(cfg.nfe_targets),
            "ode_method": list(cfg.ode_methods),
            "ode_tol": list(cfg.ode_tols),
        },
        attrs={"unsupported_notes": repr(notes)},
    )


# ---------------------------------------------------------------------------------------
# part B: distance to the truth against NFE
# ---------------------------------------------------------------------------------------
def _steps_for(target: int, per_step: int, overhead: int = 0) -> int:
    return max(1, (target - overhead) // per_step)


def part_b_sampler(name: str, level: int, cfg: Config) -> tuple[str, sd.Sampler] | None:
    """The sampler ``name`` at cost level ``level``: ``(setting label, sampler)``, or ``None`` when that
    level is not run (fixed-step ODE solvers above ``ode_max_nfe``; ``DDPMAncestral`` when not exported)."""
    target = cfg.levels[level]
    if name == "EM":
        n = _steps_for(target, 1)
        return f"steps={n}", sd.EulerMaruyama(steps=n, eps=EPS)
    if name == "PC":
        n = _steps_for(target, 2)
        return f"steps={n}", sd.PredictorCorrector("reverse_diffusion", "langevin", steps=n, eps=EPS)
    if name == "PC-ancestral":
        n = _steps_for(target, 1)
        return f"steps={n}", sd.PredictorCorrector("ancestral", "none", steps=n, eps=EPS)
    if name == "TorchSDE-euler":
        n = _steps_for(target, 1, 2)
        return f"steps={n}", sd.TorchSDE("euler", steps=n, eps=EPS)
    if name == "TorchSDE-srk":
        n = _steps_for(target, 3, 2)
        return f"steps={n}", sd.TorchSDE("srk", steps=n, eps=EPS)
    if name == "AdaptiveSDE":
        tol = cfg.adaptive_tols[level]
        return f"rtol=atol={tol:g}", sd.AdaptiveSDE(rtol=tol, atol=tol, eps=EPS)
    if name == "EDM-SDE":
        n = _steps_for(target, 2)
        return f"steps={n}, karras, S_churn=10", sd.EDMStochastic(n, grid="karras", S_churn=10.0, eps=EPS)
    if name == "DPM++2M-SDE":
        return f"steps={target}, logsnr", sd.DPMSolverPPSDE(2, target, grid="logsnr", eps=EPS)
    if name == "ER-SDE-3":
        return f"steps={target}, logsnr", sd.ERSDE(3, target, grid="logsnr", eps=EPS)
    if name == "DDPMAncestral":
        cls = getattr(sd, "DDPMAncestral", None)
        return None if cls is None else ("default", cls())
    if name == "ODE-RK45":
        tol = cfg.rk45_tols[level]
        return f"rtol=atol={tol:g}", sd.ProbabilityFlowODE("RK45", rtol=tol, atol=tol, eps=EPS)
    if target > cfg.ode_max_nfe:
        return None
    if name == "ODE-Euler":
        return f"steps={target}, uniform", sd.Euler(target, grid="uniform", eps=EPS)
    if name == "ODE-Heun":
        n = _steps_for(target, 2)
        return f"steps={n}, uniform", sd.Heun(n, grid="uniform", eps=EPS)
    if name == "ODE-DPM++3M":
        return f"steps={target}, logsnr", sd.DPMSolverPP(3, target, grid="logsnr", eps=EPS)
    raise ValueError(f"unknown sampler {name!r}")


def run_distances(cfg: Config, progress: bool) -> xr.Dataset:
    """Part B: SW, ED and mode weights against an exact reference, with floors, for every sampler x SDE x level."""
    names, D, L = list(cfg.samplers), len(cfg.sdes), len(cfg.levels)
    P, n = len(names), cfg.n_sto
    shape = (P, D, L)
    sw, ed, modez, wall = (np.full(shape, np.nan) for _ in range(4))
    nfe = np.full(shape, -1, np.int64)
    status = np.full(shape, NOT_RUN, np.int8)
    mode_ok = np.zeros(shape, np.int8)
    setting = np.full((P, L), "", dtype=object)
    floors = {m: np.full((D, cfg.floor_pairs), np.nan) for m in ("sw", "energy")}
    notes: dict[str, str] = {}
    fns = {"sw": metrics.sliced_wasserstein, "energy": metrics.energy_distance}
    metric_names = {"sw": "sliced_wasserstein", "energy": "energy"}

    plan = [[part_b_sampler(p, k, cfg) for k in range(L)] for p in names]
    total = D * (2 + sum(s is not None for row in plan for s in row))
    with tqdm(total=total, desc="B: samplers", disable=not progress, leave=False) as bar:
        for d, sname in enumerate(cfg.sdes):
            sde = SDES[sname]
            score = TARGET.score(sde)
            p_eps = TARGET.marginal(sde, EPS)
            ref = p_eps.sample(n, torch.Generator().manual_seed(cfg.seed_reference + d))
            for m in fns:
                bar.set_postfix_str(f"{sname} {m} floor")
                fl = metrics.metric_floor(
                    metric_names[m],
                    lambda k, g, p=p_eps: p.sample(k, g),
                    n,
                    pairs=cfg.floor_pairs,
                    seed=cfg.seed_floor,
                    reference=ref,
                )
                floors[m][d] = fl.values
                bar.update()
            sw_edge = floors["sw"][d].mean() + K_SD * floors["sw"][d].std(ddof=1)
            ed_edge = floors["energy"][d].mean() + K_SD * floors["energy"][d].std(ddof=1)
            for j, pname in enumerate(names):
                passed = 0
                for k, entry in enumerate(plan[j]):
                    if entry is None:
                        continue
                    if cfg.lazy and passed >= 2:
                        bar.update()
                        continue
                    label, sampler = entry
                    setting[j, k] = label
                    bar.set_postfix_str(f"{sname} {pname} {label}")
                    why = _check(sampler, sde)
                    if why is not None:
                        status[j, d, k] = UNSUPPORTED
                        notes[f"{pname}/{sname}"] = why
                        bar.update()
                        continue
                    t0 = time.perf_counter()
                    ds = sd.sample(sde, score, sampler, shape=(n, 2), seed=cfg.seed_sto, progress=False)
                    wall[j, d, k] = time.perf_counter() - t0
                    nfe[j, d, k] = ds.attrs["nfe"]
                    x = torch.from_numpy(ds["x"].values[-1])
                    if not bool(torch.isfinite(x).all()):
                        status[j, d, k] = DIVERGED
                        bar.update()
                        continue
                    sw[j, d, k] = fns["sw"](x, ref)
                    mw = metrics.mode_weight_test(x, p_eps.means, p_eps.weights, k=K_MODES)
                    if not cfg.lazy or (sw[j, d, k] <= sw_edge and mw.ok):
                        ed[j, d, k] = fns["energy"](x, ref)
                    modez[j, d, k] = float(mw.z_scores.abs().max())
                    mode_ok[j, d, k] = mw.ok
                    status[j, d, k] = OK
                    passed += int(sw[j, d, k] <= sw_edge and ed[j, d, k] <= ed_edge and mw.ok)
                    bar.update()

    fmean = {m: floors[m].mean(1) for m in floors}
    fsd = {m: floors[m].std(1, ddof=1) for m in floors}
    thr = {m: fmean[m] + K_SD * fsd[m] for m in floors}
    in_band = (
        (status == OK) & (sw <= thr["sw"][None, :, None]) & (ed <= thr["energy"][None, :, None]) & (mode_ok == 1)
    ).astype(np.int8)
    long = {"sw": "sliced Wasserstein-2 (500 projections)", "energy": "energy distance (U-statistic)"}
    data: dict[str, tuple] = {
        "sw": (("sampler", "sde", "level"), sw, {"long_name": f"{long['sw']} to the exact reference sample"}),
        "energy": (("sampler", "sde", "level"), ed, {"long_name": f"{long['energy']} to the exact reference sample"}),
        "mode_max_abs_z": (
            ("sampler", "sde", "level"),
            modez,
            {"long_name": "max binomial |z| of the nearest-mode fractions"},
        ),
        "mode_ok": (
            ("sampler", "sde", "level"),
            mode_ok,
            {"long_name": f"max |z| <= {K_MODES:.2f} (3 sd family-wise)"},
        ),
        "in_band": (
            ("sampler", "sde", "level"),
            in_band,
            {"long_name": f"SW and ED <= floor mean + {K_SD:g} sd, and mode weights ok"},
        ),
        "sto_nfe": (("sampler", "sde", "level"), nfe, {"long_name": "score evaluations reported by the run"}),
        "sto_status": (("sampler", "sde", "level"), status, {"long_name": "run status", **FLAG}),
        "sto_wall_time": (("sampler", "sde", "level"), wall, {"long_name": "sampling wall time", "units": "s"}),
        "setting": (("sampler", "level"), setting.astype(str), {"long_name": "steps or tolerance of the run"}),
    }
    for m in floors:
        data[f"{m}_floor"] = (
            ("sde", "pair"),
            floors[m],
            {"long_name": f"{long[m]}: fresh exact sets vs the same reference (metric_floor)"},
        )
        data[f"{m}_floor_mean"] = (("sde",), fmean[m])
        data[f"{m}_floor_sd"] = (("sde",), fsd[m])
    return xr.Dataset(
        data,
        coords={
            "sampler": names,
            "sde": list(cfg.sdes),
            "level": np.arange(L),
            "pair": np.arange(cfg.floor_pairs),
            "level_nfe_target": ("level", list(cfg.levels)),
            "sampler_kind": ("sampler", [SAMPLER_KINDS[p] for p in names]),
        },
        attrs={"unsupported_notes_sto": repr(notes)},
    )


def run(cfg: Config, progress: bool = True, argv: Sequence[str] = (), size: str = "custom") -> xr.Dataset:
    """Run both parts; one Dataset with provenance attributes."""
    start = time.perf_counter()
    a = run_deterministic(cfg, progress)
    t_a = time.perf_counter() - start
    b = run_distances(cfg, progress)
    elapsed = time.perf_counter() - start
    ds = xr.merge([a, b], combine_attrs="drop")
    ds.attrs = {
        **_io.provenance(STUDY, list(argv), size=size, **asdict(cfg)),
        **a.attrs,
        **b.attrs,
        "target": "eight_gaussians (radius 4/sqrt(2), std 0.5/sqrt(2))",
        "eps": EPS,
        "reference": f"scipy DOP853 rtol=atol={REF_TOL:g} from the same x_T (to eps; to t = 0 for the runs ending at "
        "sigma = 0)",
        "k_sd": K_SD,
        "k_modes": K_MODES,
        "sdes": repr([SDES[s] for s in cfg.sdes]),
        "part_a_wall_time_s": round(t_a, 1),
        "study_wall_time_s": round(elapsed, 1),
    }
    return ds


# ---------------------------------------------------------------------------------------
# summaries
# ---------------------------------------------------------------------------------------
def _str_list(ds: xr.Dataset, dim: str) -> list[str]:
    return [str(v) for v in ds[dim].values]


def needed_nfe(ds: xr.Dataset) -> pd.DataFrame:
    """Per sampler x SDE: the smallest NFE within the band, whether all runs with more NFE stay within it,
    and the distances there."""
    rows = []
    for p in _str_list(ds, "sampler"):
        for s in _str_list(ds, "sde"):
            r = ds.sel(sampler=p, sde=s)
            st = r.sto_status.values
            row: dict[str, Any] = {"sampler": p, "kind": str(r.sampler_kind.values), "SDE": s}
            if not (st == OK).any():
                row["status"] = "unsupported" if (st == UNSUPPORTED).any() else "not run"
                rows.append(row)
                continue
            run_ = st == OK
            order = np.argsort(r.sto_nfe.values[run_], kind="stable")
            nf = r.sto_nfe.values[run_][order]
            band = r.in_band.values[run_][order].astype(bool)
            lvl = r.level.values[run_][order]
            row["NFE range"] = f"{nf[0]}–{nf[-1]}"
            if band.any():
                first = int(np.argmax(band))
                k = int(lvl[first])
                row |= {
                    "status": "in band",
                    "NFE needed": int(nf[first]),
                    "setting": str(r.setting.values[k]),
                    "stays in band": bool(band[first:].all()),
                    "SW/floor": float(r.sw.values[k] / ds.sw_floor_mean.sel(sde=s)),
                    "ED z": float(
                        (r.energy.values[k] - ds.energy_floor_mean.sel(sde=s)) / ds.energy_floor_sd.sel(sde=s)
                    ),
                    "modes |z|": float(r.mode_max_abs_z.values[k]),
                }
            else:
                k = int(lvl[-1])
                row |= {
                    "status": "never in band",
                    "setting": f"best tried: {r.setting.values[k]}",
                    "SW/floor": float(r.sw.values[k] / ds.sw_floor_mean.sel(sde=s)),
                    "ED z": float(
                        (r.energy.values[k] - ds.energy_floor_mean.sel(sde=s)) / ds.energy_floor_sd.sel(sde=s)
                    ),
                    "modes |z|": float(r.mode_max_abs_z.values[k]),
                }
            rows.append(row)
    return pd.DataFrame(rows)


def headline_thresholds(ds: xr.Dataset, sde: str = "VP") -> pd.DataFrame:
    """Headline accuracy on ``sde`` against fixed bounds: the best solver's RMSE at 20 and 50 NFE, Heun at ~35 NFE."""
    r = ds.sel(sde=sde)
    rows = []
    for target, bound, who in ((20, 1.2e-2, None), (50, 1.6e-3, None), (35, 2.5e-2, "Heun")):
        if target not in r.nfe_target.values or (who is not None and who not in r.solver.values):
            continue
        sub = r.rmse.sel(nfe_target=target)
        if who is not None:
            sub = sub.sel(solver=[who])
        st = sub.stack(c=("solver", "grid"))
        if not np.isfinite(st.values).any():
            continue
        best = st.isel(c=int(np.nanargmin(st.values)))
        solver, grid = str(best.solver.values), str(best.grid.values)
        used = int(r.nfe.sel(solver=solver, grid=grid, nfe_target=target))
        se = float(r.rmse_se.sel(solver=solver, grid=grid, nfe_target=target))
        rows.append(
            {
                "criterion": f"{who or 'best solver'} at {'about ' if who else ''}{target} NFE, {sde}",
                "solver": solver,
                "grid": grid,
                "NFE": used,
                "RMSE": float(best),
                "RMSE se": se,
                "bound": bound,
                "verdict": "pass" if float(best) <= bound else "FAIL",
                "(RMSE - bound) / se": (float(best) - bound) / se,
            }
        )
    return pd.DataFrame(rows)


def needed_table(ds: xr.Dataset) -> tuple[str, pd.DataFrame, str]:
    """The NFE-to-band table of part B: ``(title, raw DataFrame, markdown)``."""
    need = needed_nfe(ds)
    n_sto = ds.attrs.get("n_sto", "")
    disp = need.copy()
    for c, f in (("SW/floor", ".2f"), ("ED z", "+.1f"), ("modes |z|", ".2f")):
        if c in disp:
            disp[c] = [format(v, f) if isinstance(v, float) and np.isfinite(v) else "—" for v in disp[c]]
    if "NFE needed" in disp:
        disp["NFE needed"] = [
            str(int(v)) if isinstance(v, (int, float)) and np.isfinite(v) else "—" for v in disp["NFE needed"]
        ]
    floors = ", ".join(
        f"{s}: SW {float(ds.sw_floor_mean.sel(sde=s)):.4f} ± {float(ds.sw_floor_sd.sel(sde=s)):.4f}, "
        f"ED {float(ds.energy_floor_mean.sel(sde=s)):.1e} ± {float(ds.energy_floor_sd.sel(sde=s)):.1e}"
        for s in _str_list(ds, "sde")
    )
    return (
        f"NFE each sampler needs to lie within the band (n = {n_sto} samples, seed {ds.attrs.get('seed_sto', '')}; "
        f"SW and ED ≤ floor mean + {K_SD:g} sd with {ds.sizes['pair']} reference-conditional floor pairs, modes "
        f"|z| ≤ {K_MODES:.2f}). SW/floor = SW / floor mean; ED z = (ED − floor mean) / floor sd. Floors: {floors}",
        need,
        _io.markdown_table(disp.fillna("—")),
    )


def make_tables(
    ds: xr.Dataset, show: Sequence[int] = (10, 20, 35, 50, 100)
) -> dict[str, tuple[str, pd.DataFrame, str]]:
    """``{key: (title, raw DataFrame for the CSV, markdown)}`` for every table."""
    tables: dict[str, tuple[str, pd.DataFrame, str]] = {}
    n_det = ds.attrs.get("n_det", "")
    cols = [t for t in show if t in ds.nfe_target.values]
    rows = []
    for s in _str_list(ds, "sde"):
        for sv in _str_list(ds, "solver"):
            for g in _str_list(ds, "grid"):
                r = ds.sel(sde=s, solver=sv, grid=g)
                row = {"SDE": s, "solver": sv, "grid": g}
                for t in ds.nfe_target.values:
                    st = int(r.status.sel(nfe_target=t))
                    row[f"NFE {t}"] = (
                        float(r.rmse.sel(nfe_target=t))
                        if st == OK
                        else {UNSUPPORTED: "unsupported", DIVERGED: "diverged"}.get(st, "—")
                    )
                row["order"] = float(r.order)
                rows.append(row)
    raw = pd.DataFrame(rows)
    fmt = {f"NFE {t}": (lambda v: v if isinstance(v, str) else f"{v:.2e}") for t in cols}
    for s in _str_list(ds, "sde"):
        sub = raw[raw.SDE == s][["solver", "grid", *[f"NFE {t}" for t in cols], "order"]]
        tables[f"rmse_{s}"] = (
            f"{s}: end-point RMSE vs DOP853 (rtol=atol={REF_TOL:g}), n = {n_det} starting points, at the NFE "
            f"targets (Heun: actual NFE = 2 floor(target/2)); last column: fitted order",
            sub,
            _io.markdown_table(sub, {**fmt, "order": ".2f"}),
        )
    tables["rmse_all"] = ("every solver x grid x SDE x NFE target", raw, "")

    best = []
    for s in _str_list(ds, "sde"):
        r = ds.rmse.sel(sde=s)
        row = {"SDE": s}
        for t in cols:
            st = r.sel(nfe_target=t).stack(c=("solver", "grid"))
            if np.isfinite(st.values).any():
                b = st.isel(c=int(np.nanargmin(st.values)))
                row[f"NFE {t}"] = f"{float(b):.2e} ({b.solver.values} {b.grid.values})"
        best.append(row)
    bdf = pd.DataFrame(best)
    tables["best"] = ("Best solver x grid per SDE at each NFE target", bdf, _io.markdown_table(bdf))

    orders = (
        ds.order.to_dataframe()
        .reset_index()
        .pivot_table(index=["solver", "grid"], columns="sde", values="order")
        .reset_index()
    )
    orders = orders[["solver", "grid", *[s for s in _str_list(ds, "sde") if s in orders.columns]]]
    orders.insert(2, "theory", [THEORY.get(s, math.nan) for s in orders.solver])
    lo, hi = (int(v) for v in ds.attrs.get("fit_range", "[20, 100]").strip("[]()").split(","))
    tables["orders"] = (
        f"Observed orders (-slope of log RMSE vs log NFE, NFE targets {lo}–{hi}); expected ≈ 1 "
        "Euler/DDIM/DPM++1, ≈ 2 Heun/2M, ≥ 2 3M (first-order start-up step)",
        orders,
        _io.markdown_table(orders, {c: ".2f" for c in orders.columns[2:]}),
    )

    thr = headline_thresholds(ds)
    tables["headline"] = (
        f"Headline accuracy against fixed bounds (VP, n = {n_det} starting points; RMSE se: standard error over them, "
        "delta method; the verdict compares the RMSE itself with the bound)",
        thr,
        _io.markdown_table(thr, {"RMSE": ".3e", "RMSE se": ".1e", "bound": ".1e", "(RMSE - bound) / se": "+.1f"}),
    )

    ode = []
    for m in _str_list(ds, "ode_method"):
        for s in _str_list(ds, "sde"):
            for tol in ds.ode_tol.values:
                ode.append(
                    {
                        "method": m,
                        "SDE": s,
                        "rtol=atol": float(tol),
                        "NFE": int(ds.ode_nfe.sel(ode_method=m, sde=s, ode_tol=tol)),
                        "RMSE": float(ds.ode_rmse.sel(ode_method=m, sde=s, ode_tol=tol)),
                    }
                )
    odf = pd.DataFrame(ode)
    tables["adaptive_ode"] = (
        "adaptive solvers on the same ODE (scipy's: error control joint over the batch; DPM-Solver-12/23: "
        "AdaptiveDPMSolver, largest per-sample error)",
        odf,
        _io.markdown_table(odf, {"rtol=atol": ".0e", "RMSE": ".2e"}),
    )

    tables["needed"] = needed_table(ds)

    rows = []
    for p in _str_list(ds, "sampler"):
        for s in _str_list(ds, "sde"):
            for k in ds.level.values:
                r = ds.sel(sampler=p, sde=s, level=k)
                if int(r.sto_status) != OK:
                    continue
                rows.append(
                    {
                        "sampler": p,
                        "SDE": s,
                        "setting": str(r.setting.values),
                        "NFE": int(r.sto_nfe),
                        "wall_s": float(r.sto_wall_time),
                        "SW": float(r.sw),
                        "SW/floor": float(r.sw / ds.sw_floor_mean.sel(sde=s)),
                        "ED": float(r.energy),
                        "ED z": float((r.energy - ds.energy_floor_mean.sel(sde=s)) / ds.energy_floor_sd.sel(sde=s)),
                        "modes |z|": float(r.mode_max_abs_z),
                        "in band": int(r.in_band),
                    }
                )
    tables["distances"] = ("every run of part B", pd.DataFrame(rows), "")
    return tables


# ---------------------------------------------------------------------------------------
# figures (from the Dataset alone)
# ---------------------------------------------------------------------------------------
SOLVER_STYLE = {
    "Euler": ("C0", "o"),
    "Heun": ("C1", "s"),
    "DDIM": ("C2", "^"),
    "DPM++1": ("C4", "v"),
    "DPM++2M": ("C3", "D"),
    "DPM++3M": ("C5", "P"),
    "UniPC-3": ("C6", "X"),
    "Euler-EDM": ("C0", "<"),
    "Heun-EDM": ("C1", ">"),
    "DPM++2S": ("C7", "d"),
    "DPM++3S": ("C8", "h"),
    "Euler-0": ("C9", "1"),
    "Heun-0": ("C1", "2"),
    "DPM++3M-0": ("C5", "3"),
    "UniPC-3-0": ("C6", "4"),
    "DPM++3S-0": ("C8", "+"),
}
ODE_STYLE = {"RK45": ("0.3", "*"), "DOP853": ("0.6", "X"), "DPM-Solver-12": ("C9", "p"), "DPM-Solver-23": ("C4", "H")}


def _slope_guides(ax: plt.Axes, x: np.ndarray, y0: float, orders: Sequence[int] = (1, 2, 3)) -> None:
    xs = np.array([np.nanmin(x), np.nanmax(x)], float)
    for p in orders:
        ys = y0 * (xs / xs[0]) ** (-p)
        ax.plot(xs, ys, color="0.6", lw=0.8, ls=(0, (1, 2)))
        ax.annotate(
            f"slope −{p}",
            (xs[1], ys[1]),
            fontsize=7,
            color="0.45",
            xytext=(2, 0),
            textcoords="offset points",
            va="center",
        )


def plot_error(ds: xr.Dataset) -> plt.Figure:
    """Log-log RMSE vs NFE: rows = grids, columns = SDEs; one line per solver, scipy adaptive points, slopes."""
    grids, sdes = _str_list(ds, "grid"), _str_list(ds, "sde")
    fig, axes = plt.subplots(
        len(grids), len(sdes), figsize=(4.2 * len(sdes), 3.6 * len(grids)), squeeze=False, sharex=True, sharey=True
    )
    finite = ds.rmse.where(ds.status == OK)
    top = float(finite.max()) if np.isfinite(finite).any() else 1.0
    nfe_all = ds.nfe.where(ds.status == OK).values
    for gi, g in enumerate(grids):
        for si, s in enumerate(sdes):
            ax = axes[gi, si]
            for sv in _str_list(ds, "solver"):
                r = ds.sel(solver=sv, grid=g, sde=s)
                ok = r.status.values == OK
                color, marker = SOLVER_STYLE.get(sv, ("k", "."))
                ax.loglog(
                    r.nfe.values[ok],
                    r.rmse.values[ok],
                    color=color,
                    marker=marker,
                    ms=3.5,
                    lw=1.2,
                    label=f"{sv} ({float(r.order):.2f})",
                )
            for m in _str_list(ds, "ode_method"):
                color, marker = ODE_STYLE.get(m, ("k", "x"))
                r = ds.sel(ode_method=m, sde=s)
                ax.loglog(
                    r.ode_nfe.values,
                    r.ode_rmse.values,
                    color=color,
                    marker=marker,
                    ls="none",
                    ms=6,
                    label=f"{m} (tol {float(ds.ode_tol.min()):.0e}–{float(ds.ode_tol.max()):.0e})",
                )
            _slope_guides(ax, nfe_all, min(top, 1.0))
            ax.grid(True, which="both", lw=0.3, alpha=0.5)
            ax.set_title(f"{s}, {g} grid", fontsize=10)
            if gi == len(grids) - 1:
                ax.set_xlabel("NFE")
            if si == 0:
                ax.set_ylabel("end-point RMSE vs DOP853")
            ax.legend(fontsize=6.5, title="solver (fitted order)", title_fontsize=7, loc="lower left")
    fig.suptitle(
        f"8-Gaussian ring, exact score: PF-ODE end-point RMSE vs NFE (n = {ds.attrs.get('n_det', '')}, "
        f"reference DOP853 rtol=atol={REF_TOL:g})",
        fontsize=11,
    )
    fig.tight_layout()
    return fig


SAMPLER_STYLE = {
    "EM": "C0",
    "PC": "C1",
    "PC-ancestral": "C2",
    "TorchSDE-euler": "C3",
    "TorchSDE-srk": "C4",
    "AdaptiveSDE": "C5",
    "EDM-SDE": "olive",
    "DPM++2M-SDE": "teal",
    "ER-SDE-3": "crimson",
    "DDPMAncestral": "C6",
    "ODE-Euler": "C7",
    "ODE-Heun": "C8",
    "ODE-DPM++3M": "C9",
    "ODE-RK45": "k",
}


def plot_distance(ds: xr.Dataset) -> plt.Figure:
    """Distance to the truth vs NFE: SW / floor mean (top) and (ED − floor mean) / floor sd (bottom) per SDE;
    stochastic samplers solid, deterministic solvers dashed; the band's upper edge dotted; runs outside the
    band open markers, mode-weight failures crossed."""
    sdes = _str_list(ds, "sde")
    fig, axes = plt.subplots(2, len(sdes), figsize=(5.0 * len(sdes), 8.0), squeeze=False, sharex=True)
    for si, s in enumerate(sdes):
        fm, fsd = float(ds.sw_floor_mean.sel(sde=s)), float(ds.sw_floor_sd.sel(sde=s))
        em, esd = float(ds.energy_floor_mean.sel(sde=s)), float(ds.energy_floor_sd.sel(sde=s))
        for row, (ax, edge) in enumerate(((axes[0, si], (fm + K_SD * fsd) / fm), (axes[1, si], K_SD))):
            lowest = 0.0
            for p in _str_list(ds, "sampler"):
                r = ds.sel(sampler=p, sde=s)
                ok = r.sto_status.values == OK
                if not ok.any():
                    continue
                order = np.argsort(r.sto_nfe.values[ok], kind="stable")
                x = r.sto_nfe.values[ok][order]
                y = (r.sw.values[ok] / fm if row == 0 else (r.energy.values[ok] - em) / esd)[order]
                lowest = min(lowest, float(np.nanmin(y)) if np.isfinite(y).any() else 0.0)
                band = r.in_band.values[ok][order].astype(bool)
                modes = r.mode_ok.values[ok][order].astype(bool)
                kind = str(r.sampler_kind.values)
                color = SAMPLER_STYLE.get(p, "k")
                ax.plot(x, y, color=color, ls="-" if kind == "sde" else "--", lw=1.2, label=p)
                ax.scatter(x[band], y[band], color=color, s=16, zorder=3)
                ax.scatter(x[~band], y[~band], facecolor="white", edgecolor=color, s=16, zorder=3)
                ax.scatter(x[~modes], y[~modes], color=color, marker="x", s=40, zorder=4)
            ax.axhline(edge, color="k", ls=":", lw=1)
            ax.set_xscale("log")
            ax.grid(True, which="both", lw=0.3, alpha=0.5)
            if row == 0:
                ax.set_yscale("log")
                ax.axhline(1.0, color="0.5", lw=0.6)
                ax.set_title(f"{s}: SW / floor mean (band edge {edge:.2f})", fontsize=10)
                if si == 0:
                    ax.set_ylabel("sliced Wasserstein / floor mean")
            else:
                ax.set_yscale("symlog", linthresh=3.0)
                ax.set_ylim(bottom=min(-3.0, 1.5 * lowest))
                ax.axhline(0.0, color="0.5", lw=0.6)
                ax.set_title(f"{s}: (ED − floor mean) / floor sd (band edge {K_SD:g})", fontsize=10)
                ax.set_xlabel("NFE")
                if si == 0:
                    ax.set_ylabel("energy distance, floor sd above the floor")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    handles += [
        Line2D([], [], color="k", ls=":", label=f"band edge (floor mean + {K_SD:g} sd)"),
        Line2D([], [], marker="o", mfc="white", mec="k", ls="none", label="outside the band"),
        Line2D([], [], marker="x", color="k", ls="none", label="mode weights fail"),
    ]
    fig.legend(handles=handles, loc="lower center", ncol=6, fontsize=8, frameon=False)
    fig.suptitle(
        f"8-Gaussian ring: distance to exact p_eps vs NFE (n = {ds.attrs.get('n_sto', '')}; solid: "
        "stochastic samplers, dashed: deterministic solvers)",
        fontsize=11,
    )
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return fig


def plot(ds: xr.Dataset) -> dict[str, plt.Figure]:
    """Both figures from the Dataset alone (works on the re-opened netCDF): ``{"error_vs_nfe": ...,
    "distance_vs_nfe": ...}``."""
    return {"error_vs_nfe": plot_error(ds), "distance_vs_nfe": plot_distance(ds)}


# ---------------------------------------------------------------------------------------
# entry point
# ---------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = _io.study_parser(
        STUDY,
        __doc__,
        "publication size (20,000 samples, finer NFE sweeps)",
        DEFAULT_OUT,
        threads_help="torch intra-op threads (default 1: small batches run fastest "
        "single-threaded on a shared machine)",
    )
    ap.add_argument(
        "--band",
        action="store_true",
        help="part B only, stochastic samplers, 20,000 samples, NFE 10-200: the NFE each needs to reach the band",
    )
    return ap.parse_args(argv)


def run_band(cfg: Config = BAND, progress: bool = True, argv: Sequence[str] = ()) -> xr.Dataset:
    """Part B alone (the stochastic samplers' NFE-to-band table), with provenance attributes."""
    start = time.perf_counter()
    ds = run_distances(cfg, progress)
    ds.attrs = {
        **_io.provenance(STUDY, list(argv), size="band", **asdict(cfg)),
        **ds.attrs,
        "target": "eight_gaussians (radius 4/sqrt(2), std 0.5/sqrt(2))",
        "eps": EPS,
        "k_sd": K_SD,
        "k_modes": K_MODES,
        "study_wall_time_s": round(time.perf_counter() - start, 1),
    }
    return ds


def write_band_outputs(ds: xr.Dataset, out: Path) -> str:
    """Write ``band.nc``, ``distance_vs_nfe.png/.svg`` and the NFE-to-band table of :func:`run_band`; return the
    markdown text."""
    _io.write_netcdf(ds, out / "band.nc")
    _io.save_figures(out, {"distance_vs_nfe": plot_distance(ds)})
    timing = f"{ds.attrs['study_wall_time_s']:.0f} s, {ds.attrs['torch_threads']} torch thread(s)"
    return _io.write_tables(
        out, "Stochastic samplers: NFE to the floor band", ds.attrs, timing, {"needed": needed_table(ds)}
    )


def write_outputs(ds: xr.Dataset, out: Path) -> str:
    """Write the netCDF, both figures and the tables to ``out``; return the markdown text."""
    _io.write_netcdf(ds, out / "accuracy_cost.nc")
    _io.save_figures(out, plot(ds))
    timing = (
        f"{ds.attrs['study_wall_time_s']:.0f} s (part A {ds.attrs['part_a_wall_time_s']:.0f} s), "
        f"{ds.attrs['torch_threads']} torch thread(s)"
    )
    return _io.write_tables(
        out, f"Accuracy versus cost ({ds.attrs.get('size', '')} size)", ds.attrs, timing, make_tables(ds)
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the study, write the outputs, print the tables (unless ``--quiet``); returns 0."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    out = _io.prepare(args)
    size = _io.size(args)
    cfg = {"full": FULL, "docs": DOCS}.get(size, DEFAULT)
    if args.band:
        _io.report(args, write_band_outputs(run_band(BAND, progress=not args.quiet, argv=argv), out))
        return 0
    ds = run(cfg, progress=not args.quiet, argv=argv, size=size)
    _io.report(args, write_outputs(ds, out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
