"""Core accuracy study: every sampler against exact answers.

Part 1, a single Gaussian target N(m, C) (m = (1, -0.5), C = [[0.8, 0.3], [0.3, 0.5]], float64), for
the VP, sub-VP and VE SDEs:

* deterministic solvers: the maximum end-point error (Euclidean, over 500 starting points x_T from
  the prior) of the probability-flow ODE solved by fixed-step Euler and Heun and by scipy's RK45,
  against the closed-form PF-ODE map from the same x_T; observed orders are the log-log slopes of
  error against steps (or NFE for RK45) over the finer half of the runs;
* Euler–Maruyama: the weak error |mean - exact| + ||cov - exact||_F of the exact moment recursion
  of the discrete scheme started at the exact marginal p_T, against steps, and the sampler's own
  sample moments (n = 20,000) for a few step counts, with standard errors, against that recursion.

Part 2, the 8-Gaussian ring (nonlinear regime): every sampler at its defaults draws 10,000 samples
(seed 1); reported are NFE, wall time, the sliced Wasserstein (SW) and energy distances (ED) to an
exact reference sample of p_eps, each next to its statistical floor (``metrics.metric_floor``: the
same distance between independent exact sample sets of the same size, 16 pairs; verdict: value <=
mean + 3 sd) and the mode-weight check (max |z| over the 8 modes, verdict |z| <= 3). A second,
reference-conditional floor (16 fresh exact sets against the *same* reference) gives a second
verdict: the sampler's distance is measured against one fixed reference, whose own sampling noise
shifts every row alike and which the pairs floor does not see.

Usage::

    python -m studies.core_accuracy                 # default size, a few minutes on 2 cores
    python -m studies.core_accuracy --full          # publication size
    python -m studies.core_accuracy --docs          # the documentation build's size (2,000 samples, N <= 200)
    python -m studies.core_accuracy --out DIR --quiet
    python -m studies.core_accuracy --workers 4      # cells on a local dask cluster (scoresde[studies])
    python -m studies.core_accuracy --scheduler tcp://host:8786

The cells (SDE x solver x steps or tolerance; SDE x sampler) are independent and seeded by their
parameters: the numbers are the same, bit for bit, in-process and on any number of workers (the
wall times are measured where each cell runs).

Writes to ``--out`` (default ``studies/output/core_accuracy/``): ``gaussian.nc`` and ``mixture.nc``
(xarray Datasets with provenance attributes), ``figure.png``/``figure.svg``, ``table.md`` and one
CSV per table. The markdown tables are printed to stdout.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
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
from matplotlib.patches import Patch  # noqa: E402

import scoresde as sd  # noqa: E402
from scoresde import metrics  # noqa: E402

from . import _io, _sweep  # noqa: E402

STUDY = "studies.core_accuracy"
DEFAULT_OUT = Path(__file__).resolve().parent / "output" / "core_accuracy"

#: the Gaussian target of part 1
GAUSS = sd.GaussianMixture([1.0], [[1.0, -0.5]], [[[0.8, 0.3], [0.3, 0.5]]])
#: the nonlinear target of part 2
RING = sd.eight_gaussians()
SDES: dict[str, sd.LinearSDE] = {"VP": sd.VPSDE(), "subVP": sd.SubVPSDE(), "VE": sd.VESDE()}
EPS = 1e-3
K_SD = 3.0  # verdicts: metric <= floor mean + 3 sd; mode weights |z| <= 3
THEORY = {"euler": 1.0, "heun": 2.0, "RK45": 5.0, "EM": 1.0}  # RK45: nominal, error vs NFE


@dataclass(frozen=True)
class Config:
    """Sizes and seeds of one run."""

    steps: tuple[int, ...] = (25, 50, 100, 200, 400, 800)
    tols: tuple[float, ...] = (1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8)
    n_ode: int = 500  # starting points of the ODE end-point error
    n_em: int = 20_000  # samples of the Euler–Maruyama moment check
    em_check_steps: tuple[int, ...] = (5, 20, 100)
    n_mix: int = 10_000  # samples per sampler on the ring
    floor_pairs: int = 16
    seed_ode: int = 0  # x_T of the ODE runs
    seed_em: int = 2  # x_T ~ p_T and the EM noise (+ steps)
    seed_mix: int = 1  # the samplers on the ring
    seed_floor: int = 1  # metric_floor's base seed
    seed_ref_floor: int = 2  # the fresh exact sets of the reference-conditional floor
    seed_reference: int = 12345  # the exact reference sample of p_eps


DEFAULT = Config()
FULL = replace(DEFAULT, steps=(*DEFAULT.steps, 1600, 3200), n_em=100_000, n_mix=20_000)
#: the documentation build's size (``--docs``): every figure and table from fewer points and samples, step counts
#: up to 200 and four tolerances
DOCS = replace(
    DEFAULT, steps=(25, 50, 100, 200), tols=(1e-3, 1e-5, 1e-6, 1e-8), n_ode=200, n_em=5_000, n_mix=2_000, floor_pairs=4
)


def mixture_samplers() -> dict[str, sd.Sampler]:
    """The samplers of part 2, at their defaults."""
    return {
        "EM": sd.EulerMaruyama(),
        "PC": sd.PredictorCorrector(),
        "PC-ancestral": sd.PredictorCorrector("ancestral", "none"),
        "ODE-RK45": sd.ProbabilityFlowODE(),
        "ODE-Heun": sd.ProbabilityFlowODE("heun"),
        "TorchSDE": sd.TorchSDE(),
    }


def supported(sde_name: str, sampler_name: str) -> bool:
    """Ancestral sampling exists for VP (DDPM) and VE (SMLD) only."""
    return not (sampler_name == "PC-ancestral" and sde_name == "subVP")


# ---------------------------------------------------------------------------------------
# exact answers for the Gaussian target
# ---------------------------------------------------------------------------------------
def em_moments(
    sde: sd.LinearSDE, steps: int, eps: float, mean: torch.Tensor, cov: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Exact mean and covariance after ``steps`` Euler–Maruyama steps of the reverse SDE of N(m, C).

    The exact score is affine, :math:`-C_t^{-1}(x - s m)`, so one step is
    :math:`x \leftarrow A x + b + g\sqrt{|\Delta t|}\,z` with :math:`A = I + (f I + g^2 C_t^{-1})\Delta t`,
    :math:`b = -g^2 \Delta t\, C_t^{-1} s m`; mean and covariance follow exactly.
    """
    C, m = GAUSS.covariances[0], GAUSS.means[0]
    eye = torch.eye(2, dtype=torch.float64)
    grid = np.linspace(sde.T, eps, steps + 1)
    for t, tn in zip(grid[:-1], grid[1:], strict=True):
        f, g, s, sig = sde.coefficients(float(t))
        dt = float(tn - t)
        Ct_inv = torch.linalg.inv(s**2 * C + sig**2 * eye)
        A = eye + (f * eye + g**2 * Ct_inv) * dt
        b = -(g**2) * dt * (Ct_inv @ (s * m))
        mean = A @ mean + b
        cov = A @ cov @ A.T + g**2 * abs(dt) * eye
    return mean, cov


def weak_error(mean: torch.Tensor, cov: torch.Tensor, true_mean: torch.Tensor, true_cov: torch.Tensor) -> float:
    """|mean - true_mean| + ||cov - true_cov||_F."""
    return float((mean - true_mean).norm() + (cov - true_cov).norm())


def fit_order(cost: Sequence[float], err: Sequence[float]) -> float:
    """Observed order: minus the least-squares log-log slope of ``err`` against ``cost`` over the
    finer half of the points (at least two; ``cost`` increasing)."""
    k = max(2, len(cost) // 2)
    slope = np.polyfit(np.log(np.asarray(cost[-k:], float)), np.log(np.asarray(err[-k:], float)), 1)[0]
    return float(-slope)


# ---------------------------------------------------------------------------------------
# part 1: Gaussian target
# ---------------------------------------------------------------------------------------
def _ode_end_error(sde: sd.LinearSDE, sampler: sd.ProbabilityFlowODE, x_T: torch.Tensor) -> tuple[float, int]:
    """Max over starting points of |x_eps - exact map(x_T)|, and the NFE."""
    ds = sd.sample(sde, GAUSS.score(sde), sampler, x_T=x_T, progress=False)
    end = torch.from_numpy(ds["x"].values[-1])
    return float((end - GAUSS.flow_map(sde, x_T, sde.T, sampler.eps)).norm(dim=1).max()), int(ds.attrs["nfe"])


def _ode_x_T(cfg: Config, sde: sd.LinearSDE) -> torch.Tensor:
    return sde.prior_sampling(
        (cfg.n_ode, 2), generator=torch.Generator().manual_seed(cfg.seed_ode), dtype=torch.float64
    )


def gaussian_cell(cfg: Config, sde: str, job: str, value: float) -> dict[str, Any]:
    """One cell of part 1 for SDE ``sde``: ``job`` is ``"euler"`` or ``"heun"`` (``value`` steps),
    ``"RK45"`` (``value`` = rtol = atol), ``"em_recursion"`` or ``"em_sampler"`` (``value`` steps)."""
    lsde = SDES[sde]
    if job in ("euler", "heun"):
        return {"error": _ode_end_error(lsde, sd.ProbabilityFlowODE(job, steps=int(value)), _ode_x_T(cfg, lsde))[0]}
    if job == "RK45":
        sampler = sd.ProbabilityFlowODE("RK45", rtol=value, atol=value)
        error, nfe = _ode_end_error(lsde, sampler, _ode_x_T(cfg, lsde))
        return {"error": error, "nfe": nfe}
    n = int(value)
    p_T, p_eps = GAUSS.marginal(lsde, lsde.T), GAUSS.marginal(lsde, EPS)
    true_mean, true_cov = p_eps.mean(), p_eps.covariance()
    mean, cov = em_moments(lsde, n, EPS, p_T.mean(), p_T.covariance())
    if job == "em_recursion":
        return {"mean_error": float((mean - true_mean).norm()), "cov_error": float((cov - true_cov).norm())}
    if job != "em_sampler":
        raise ValueError(f"unknown job {job!r}")
    gen = torch.Generator().manual_seed(cfg.seed_em)
    x_T = p_T.sample(cfg.n_em, gen, dtype=torch.float64)
    ds = sd.sample(
        lsde, GAUSS.score(lsde), sd.EulerMaruyama(steps=n, eps=EPS), x_T=x_T, seed=cfg.seed_em + n, progress=False
    )
    x = torch.from_numpy(ds["x"].values[-1])
    smean, scov = x.mean(0), torch.cov(x.T)
    mean_se = torch.sqrt(torch.diag(cov) / cfg.n_em)
    cov_se = torch.sqrt((torch.outer(torch.diag(cov), torch.diag(cov)) + cov**2) / cfg.n_em)
    z = torch.cat([((smean - mean) / mean_se), ((scov - cov) / cov_se)[[0, 0, 1], [0, 1, 1]]])
    out = {
        key: val.numpy()
        for key, val in (
            ("mc_mean", smean),
            ("rec_mean", mean),
            ("mc_mean_se", mean_se),
            ("mc_cov", scov),
            ("rec_cov", cov),
            ("mc_cov_se", cov_se),
        )
    }
    out["mc_weak"] = weak_error(smean, scov, true_mean, true_cov)
    out["rec_weak"] = weak_error(mean, cov, true_mean, true_cov)
    out["mc_z"] = float(z.abs().max())
    return out


def run_gaussian(cfg: Config, progress: bool, sweep: _sweep.Sweep | None = None) -> xr.Dataset:
    """Part 1: ODE end-point errors, EM weak errors (exact recursion) and the EM sample-moment check.

    The cells (:func:`gaussian_cell`) run where ``sweep`` runs them (default: in-process).
    """
    names, steps, tols, checks = list(SDES), list(cfg.steps), list(cfg.tols), list(cfg.em_check_steps)
    S, N, R, M = len(names), len(steps), len(tols), len(checks)
    ode_err = np.full((S, 2, N), np.nan)
    rk_err, rk_nfe = np.full((S, R), np.nan), np.zeros((S, R), np.int64)
    em_err, em_merr, em_cerr = (np.full((S, N), np.nan) for _ in range(3))
    mc = {k: np.full((S, M, 2), np.nan) for k in ("mc_mean", "rec_mean", "mc_mean_se")}
    mc |= {k: np.full((S, M, 2, 2), np.nan) for k in ("mc_cov", "rec_cov", "mc_cov_se")}
    mc_weak, rec_weak, mc_z = (np.full((S, M), np.nan) for _ in range(3))

    jobs = [("euler", n) for n in steps] + [("heun", n) for n in steps] + [("RK45", tol) for tol in tols]
    jobs += [("em_recursion", n) for n in steps] + [("em_sampler", n) for n in checks]
    cells = [{"cfg": cfg, "sde": name, "job": job, "value": value} for name in names for job, value in jobs]
    results = iter((sweep or _sweep.Sweep()).map(gaussian_cell, cells, progress=progress, desc="gaussian"))
    for i in range(S):
        for j in range(2):
            for k in range(N):
                ode_err[i, j, k] = next(results)["error"]
        for k in range(R):
            r = next(results)
            rk_err[i, k], rk_nfe[i, k] = r["error"], r["nfe"]
        for k in range(N):
            r = next(results)
            em_merr[i, k], em_cerr[i, k] = r["mean_error"], r["cov_error"]
            em_err[i, k] = em_merr[i, k] + em_cerr[i, k]
        for k in range(M):
            r = next(results)
            for key in mc:
                mc[key][i, k] = r[key]
            mc_weak[i, k], rec_weak[i, k], mc_z[i, k] = r["mc_weak"], r["rec_weak"], r["mc_z"]

    solvers = ["euler", "heun", "RK45"]
    order = np.array(
        [
            [fit_order(steps, ode_err[i, 0]), fit_order(steps, ode_err[i, 1]), fit_order(rk_nfe[i], rk_err[i])]
            for i in range(S)
        ]
    )
    # tolerance proportionality: error ~ tol^q, ideally q = 1 (fit_order returns -slope vs 1/tol)
    tol_slope = np.array([fit_order([1 / t for t in tols], rk_err[i]) for i in range(S)])
    em_order = np.array([fit_order(steps, em_err[i]) for i in range(S)])
    feat = ("feature", [0, 1])
    return xr.Dataset(
        {
            "ode_error": (
                ("sde", "scheme", "steps"),
                ode_err,
                {"long_name": "PF-ODE end-point error, max over starting points of |x - exact|"},
            ),
            "ode_nfe": (
                ("scheme", "steps"),
                np.array([steps, [2 * n for n in steps]], np.int64),
                {"long_name": "score evaluations of the fixed-step ODE solver"},
            ),
            "rk45_error": (("sde", "tol"), rk_err, {"long_name": "RK45 end-point error, max over starting points"}),
            "rk45_nfe": (("sde", "tol"), rk_nfe, {"long_name": "RK45 score evaluations (rtol = atol = tol)"}),
            "ode_order": (
                ("sde", "solver"),
                order,
                {"long_name": "observed order: -slope of log error vs log steps (RK45: vs log NFE), finer half"},
            ),
            "ode_order_theory": (
                ("solver",),
                [THEORY[s] for s in solvers],
                {"long_name": "theoretical order (RK45: nominal 5)"},
            ),
            "rk45_tol_slope": (
                ("sde",),
                tol_slope,
                {"long_name": "slope of log RK45 error vs log tol, finer half (ideal 1)"},
            ),
            "em_weak_error": (
                ("sde", "em_steps"),
                em_err,
                {
                    "long_name": "EM weak error |mean - exact| + ||cov - exact||_F (exact recursion, "
                    "started at the exact p_T)"
                },
            ),
            "em_mean_error": (("sde", "em_steps"), em_merr, {"long_name": "|mean - exact| of the EM recursion"}),
            "em_cov_error": (("sde", "em_steps"), em_cerr, {"long_name": "||cov - exact||_F of the EM recursion"}),
            "em_order": (("sde",), em_order, {"long_name": "observed weak order of EM (finer half); theory 1"}),
            "mc_mean": (("sde", "check_steps", "feature"), mc["mc_mean"], {"long_name": "EM sample mean"}),
            "mc_mean_se": (
                ("sde", "check_steps", "feature"),
                mc["mc_mean_se"],
                {"long_name": "standard error of the sample mean"},
            ),
            "rec_mean": (("sde", "check_steps", "feature"), mc["rec_mean"], {"long_name": "EM recursion mean"}),
            "mc_cov": (
                ("sde", "check_steps", "feature", "feature_b"),
                mc["mc_cov"],
                {"long_name": "EM sample covariance"},
            ),
            "mc_cov_se": (
                ("sde", "check_steps", "feature", "feature_b"),
                mc["mc_cov_se"],
                {"long_name": "standard error of the sample covariance entries"},
            ),
            "rec_cov": (
                ("sde", "check_steps", "feature", "feature_b"),
                mc["rec_cov"],
                {"long_name": "EM recursion covariance"},
            ),
            "mc_max_abs_z": (
                ("sde", "check_steps"),
                mc_z,
                {"long_name": "max |sample - recursion| / se over 2 mean and 3 covariance entries"},
            ),
            "mc_weak_error": (("sde", "check_steps"), mc_weak, {"long_name": "weak error of the EM samples"}),
            "rec_weak_error": (("sde", "check_steps"), rec_weak, {"long_name": "weak error of the EM recursion"}),
        },
        coords={
            "sde": names,
            "scheme": ["euler", "heun"],
            "steps": steps,
            "tol": tols,
            "solver": solvers,
            "em_steps": steps,
            "check_steps": checks,
            "feature": feat[1],
            "feature_b": feat[1],
        },
    )


# ---------------------------------------------------------------------------------------
# part 2: the 8-Gaussian ring
# ---------------------------------------------------------------------------------------
METRIC_FNS = {"sw": metrics.sliced_wasserstein, "energy": metrics.energy_distance}
FLOOR_KINDS = ("pairs", "ref")


def reference_floor(metric: str, p_eps: sd.GaussianMixture, ref: torch.Tensor, draws: int, seed: int) -> np.ndarray:
    """``metric(X_k, ref)`` for ``draws`` fresh exact sets X_k (generator seed ``seed * 1000 + k``): the
    null distribution of a sampler's distance *to this reference*, whose own sampling noise it includes."""
    fn = METRIC_FNS[metric]
    return np.array(
        [fn(p_eps.sample(ref.shape[0], torch.Generator().manual_seed(seed * 1000 + k)), ref) for k in range(draws)]
    )


def _reference(cfg: Config, sde: sd.LinearSDE) -> tuple[sd.GaussianMixture, torch.Tensor]:
    p_eps = RING.marginal(sde, EPS)
    return p_eps, p_eps.sample(cfg.n_mix, torch.Generator().manual_seed(cfg.seed_reference))


def floors_cell(cfg: Config, sde: str) -> dict[str, Any]:
    """One cell of part 2: the exact reference sample of p_eps under ``sde``, its mode-weight z-scores,
    and both floors of both metrics."""
    p_eps, ref = _reference(cfg, SDES[sde])
    floors = {
        m: np.stack(
            [
                metrics.metric_floor(fn, p_eps.sample, cfg.n_mix, pairs=cfg.floor_pairs, seed=cfg.seed_floor).values,
                reference_floor(m, p_eps, ref, cfg.floor_pairs, cfg.seed_ref_floor),
            ]
        )
        for m, fn in METRIC_FNS.items()
    }
    z = metrics.mode_weight_test(ref, p_eps.means, p_eps.weights).z_scores.numpy()
    return {"reference": ref.numpy(), "ref_z": z, "floors": floors}


def sampler_cell(cfg: Config, sde: str, sampler: str) -> dict[str, Any]:
    """One cell of part 2: ``sampler`` (of :func:`mixture_samplers`) under ``sde`` on the ring, seed
    ``cfg.seed_mix``: its samples, NFE, wall time, both distances to the reference, the mode-weight test."""
    lsde = SDES[sde]
    p_eps, ref = _reference(cfg, lsde)
    ds = sd.sample(
        lsde, RING.score(lsde), mixture_samplers()[sampler], shape=(cfg.n_mix, 2), seed=cfg.seed_mix, progress=False
    )
    x = torch.from_numpy(ds["x"].values[-1])
    mw = metrics.mode_weight_test(x, p_eps.means, p_eps.weights, k=K_SD)
    return {
        "samples": x.numpy(),
        "nfe": ds.attrs["nfe"],
        "wall_time": ds.attrs["wall_time_s"],
        **{m: fn(x, ref) for m, fn in METRIC_FNS.items()},
        "mode_max_abs_z": float(mw.z_scores.abs().max()),
        "mode_ok": mw.ok,
        "mode_frac": mw.fractions.numpy(),
    }


def mixture_cell(cfg: Config, sde: str, sampler: str | None = None) -> dict[str, Any]:
    """:func:`floors_cell` (no ``sampler``) or :func:`sampler_cell`."""
    return floors_cell(cfg, sde) if sampler is None else sampler_cell(cfg, sde, sampler)


def run_mixture(cfg: Config, progress: bool, sweep: _sweep.Sweep | None = None) -> xr.Dataset:
    """Part 2: every sampler at its defaults on the ring, against an exact sample of p_eps and two floors.

    Floor ``pairs`` is :func:`scoresde.metrics.metric_floor` (distance between independent exact pairs);
    floor ``ref`` is :func:`reference_floor` (fresh exact sets against the same fixed reference). The
    cells (:func:`floors_cell` per SDE, :func:`sampler_cell` per SDE x sampler) run where ``sweep`` runs
    them (default: in-process).
    """
    names, samplers = list(SDES), mixture_samplers()
    snames = list(samplers)
    S, P, F, n = len(names), len(snames), len(FLOOR_KINDS), cfg.n_mix
    out = {k: np.full((S, P), np.nan) for k in ("nfe", "wall_time", "sw", "energy", "mode_max_abs_z")}
    flags = {k: np.full((S, P, F), -1, np.int8) for k in ("sw_ok", "energy_ok")}
    mode_ok = np.full((S, P), -1, np.int8)
    floors = {m: np.full((S, F, cfg.floor_pairs), np.nan) for m in METRIC_FNS}
    samples = np.full((S, P, n, 2), np.nan, np.float32)
    reference = np.full((S, n, 2), np.nan, np.float32)
    ref_z = np.full((S, RING.n_components), np.nan)
    mode_frac = np.full((S, P, RING.n_components), np.nan)

    sweep = sweep or _sweep.Sweep()
    pairs = [(i, j) for i, s in enumerate(names) for j, p in enumerate(snames) if supported(s, p)]
    cells = [{"cfg": cfg, "sde": s} for s in names]
    cells += [{"cfg": cfg, "sde": names[i], "sampler": snames[j]} for i, j in pairs]
    results = sweep.map(mixture_cell, cells, progress=progress, desc="mixture")  # one queue: no idle workers
    floor_res, sampler_res = results[:S], results[S:]
    for i, r in enumerate(floor_res):
        reference[i], ref_z[i] = r["reference"], r["ref_z"]
        for m in METRIC_FNS:
            floors[m][i] = r["floors"][m]
    threshold = {m: floors[m].mean(-1) + K_SD * floors[m].std(-1, ddof=1) for m in METRIC_FNS}  # (S, F)
    for (i, j), r in zip(pairs, sampler_res, strict=True):
        samples[i, j] = r["samples"]
        for key in ("nfe", "wall_time", "mode_max_abs_z", *METRIC_FNS):
            out[key][i, j] = r[key]
        for m in METRIC_FNS:
            flags[f"{m}_ok"][i, j] = out[m][i, j] <= threshold[m][i]
        mode_ok[i, j] = r["mode_ok"]
        mode_frac[i, j] = r["mode_frac"]

    flag = {"flag_values": np.array([-1, 0, 1], np.int8), "flag_meanings": "not_run above_threshold ok"}
    long = {"sw": "sliced Wasserstein-2 (500 projections)", "energy": "energy distance (U-statistic)"}
    data: dict[str, tuple] = {
        "nfe": (("sde", "sampler"), out["nfe"], {"long_name": "score evaluations"}),
        "wall_time": (("sde", "sampler"), out["wall_time"], {"long_name": "sampling wall time", "units": "s"}),
        "mode_max_abs_z": (
            ("sde", "sampler"),
            out["mode_max_abs_z"],
            {"long_name": "max binomial |z| of the nearest-mode fractions"},
        ),
        "mode_ok": (("sde", "sampler"), mode_ok, {"long_name": f"max |z| <= {K_SD:g}", **flag}),
        "mode_fraction": (("sde", "sampler", "mode"), mode_frac, {"long_name": "fraction nearest each mode"}),
        "reference_mode_z": (("sde", "mode"), ref_z, {"long_name": "binomial z of the reference's mode fractions"}),
        "samples": (("sde", "sampler", "sample", "feature"), samples, {"long_name": "final samples (t = eps)"}),
        "reference": (("sde", "sample", "feature"), reference, {"long_name": "exact reference sample of p_eps"}),
    }
    for m in METRIC_FNS:
        data[m] = (("sde", "sampler"), out[m], {"long_name": f"{long[m]} to the exact reference sample"})
        data[f"{m}_floor"] = (
            ("sde", "floor", "pair"),
            floors[m],
            {
                "long_name": f"{long[m]} between exact sets: independent pairs (pairs) or fresh "
                "sets vs the reference (ref)"
            },
        )
        data[f"{m}_floor_mean"] = (("sde", "floor"), floors[m].mean(-1))
        data[f"{m}_floor_sd"] = (("sde", "floor"), floors[m].std(-1, ddof=1))
        data[f"{m}_ok"] = (
            ("sde", "sampler", "floor"),
            flags[f"{m}_ok"],
            {"long_name": f"{m} <= floor mean + {K_SD:g} sd", **flag},
        )
    return xr.Dataset(
        data,
        coords={
            "sde": names,
            "sampler": snames,
            "floor": list(FLOOR_KINDS),
            "pair": np.arange(cfg.floor_pairs),
            "mode": np.arange(RING.n_components),
            "sample": np.arange(n),
            "feature": [0, 1],
            "sampler_repr": ("sampler", [repr(samplers[s]) for s in snames]),
        },
    )


# ---------------------------------------------------------------------------------------
# tables
# ---------------------------------------------------------------------------------------
def _verdict(flag: int, fail: str = "ABOVE") -> str:
    return {1: "ok", 0: fail}.get(int(flag), "—")


def make_tables(g: xr.Dataset, m: xr.Dataset) -> dict[str, tuple[str, pd.DataFrame, str]]:
    """``{key: (title, raw DataFrame for the CSV, markdown)}`` for every table."""
    tables: dict[str, tuple[str, pd.DataFrame, str]] = {}
    names = list(g.sde.values)

    ode = pd.DataFrame({"N": g.steps.values, "NFE euler": g.ode_nfe.sel(scheme="euler").values})
    for s in names:
        for meth in ("euler", "heun"):
            ode[f"{s} {meth}"] = g.ode_error.sel(sde=s, scheme=meth).values
    fmt = {c: ".2e" for c in ode.columns[2:]}
    tables["ode_errors"] = (
        "PF-ODE end-point max error vs the exact map (Heun: NFE = 2N)",
        ode,
        _io.markdown_table(ode, fmt),
    )

    rk = pd.DataFrame({"rtol=atol": g.tol.values})
    for s in names:
        rk[f"{s} error"] = g.rk45_error.sel(sde=s).values
        rk[f"{s} NFE"] = g.rk45_nfe.sel(sde=s).values
    tables["rk45"] = (
        "RK45 end-point max error and NFE",
        rk,
        _io.markdown_table(rk, {"rtol=atol": ".0e", **{c: ".2e" for c in rk.columns if "error" in c}}),
    )

    orders = pd.DataFrame({"SDE": names})
    for solver, label in (("euler", "Euler"), ("heun", "Heun"), ("RK45", "RK45 (vs NFE)")):
        orders[f"{label} observed"] = g.ode_order.sel(solver=solver).values
        orders[f"{label} theory"] = THEORY[solver]
    orders["RK45 error-vs-tol slope"] = g.rk45_tol_slope.values
    orders["EM weak observed"] = g.em_order.values
    orders["EM weak theory"] = THEORY["EM"]
    tables["orders"] = (
        "Observed orders (log-log slope over the finer half) vs theory",
        orders,
        _io.markdown_table(
            orders,
            {c: ".2f" for c in orders.columns if "observed" in c or "slope" in c}
            | {c: ".0f" for c in orders.columns if "theory" in c},
        ),
    )

    em = pd.DataFrame({"N": g.em_steps.values})
    for s in names:
        em[s] = g.em_weak_error.sel(sde=s).values
    tables["em_weak"] = (
        "Euler–Maruyama weak error |mean − exact| + ‖cov − exact‖_F (exact recursion from p_T)",
        em,
        _io.markdown_table(em, {s: ".2e" for s in names}),
    )

    rows = []
    for s in names:
        for n in g.check_steps.values:
            r = g.sel(sde=s, check_steps=n)
            rows.append(
                {
                    "SDE": s,
                    "N": int(n),
                    "recursion weak error": float(r.rec_weak_error),
                    "sample weak error": float(r.mc_weak_error),
                    "mean[0] sample": float(r.mc_mean[0]),
                    "mean[0] recursion": float(r.rec_mean[0]),
                    "mean se": float(r.mc_mean_se[0]),
                    "cov[0,0] sample": float(r.mc_cov[0, 0]),
                    "cov[0,0] recursion": float(r.rec_cov[0, 0]),
                    "cov se": float(r.mc_cov_se[0, 0]),
                    "max abs z": float(r.mc_max_abs_z),
                }
            )
    mc = pd.DataFrame(rows)
    n_em = g.attrs.get("n_em", "")
    tables["em_samples"] = (
        f"EulerMaruyama sample moments (n = {n_em}) vs the exact recursion; max |z| over 2 mean + 3 cov entries",
        mc,
        _io.markdown_table(mc, {c: ".4g" for c in mc.columns if c not in ("SDE", "N")} | {"max abs z": ".2f"}),
    )

    rows, disp, frows = [], [], []
    for s in names:
        fl = {
            (k, f): (float(m[f"{k}_floor_mean"].sel(sde=s, floor=f)), float(m[f"{k}_floor_sd"].sel(sde=s, floor=f)))
            for k in METRIC_FNS
            for f in FLOOR_KINDS
        }
        frows.append(
            {
                "SDE": s,
                **{
                    f"{lab} floor {f} {st}": fl[k, f][q]
                    for k, lab in (("sw", "SW"), ("energy", "ED"))
                    for f in FLOOR_KINDS
                    for q, st in enumerate(("mean", "sd"))
                },
                "reference max abs mode z": float(np.abs(m.reference_mode_z.sel(sde=s)).max()),
            }
        )
        for p in m.sampler.values:
            r = m.sel(sde=s, sampler=p)
            if int(r.mode_ok) < 0:
                continue
            ok = {(k, f): int(r[f"{k}_ok"].sel(floor=f)) for k in METRIC_FNS for f in FLOOR_KINDS}
            rows.append(
                {
                    "SDE": s,
                    "sampler": p,
                    "NFE": int(r.nfe),
                    "wall_s": float(r.wall_time),
                    "SW": float(r.sw),
                    "SW_floor_mean": fl["sw", "pairs"][0],
                    "SW_floor_sd": fl["sw", "pairs"][1],
                    "SW_ok": ok["sw", "pairs"],
                    "SW_ok_ref_floor": ok["sw", "ref"],
                    "ED": float(r.energy),
                    "ED_floor_mean": fl["energy", "pairs"][0],
                    "ED_floor_sd": fl["energy", "pairs"][1],
                    "ED_ok": ok["energy", "pairs"],
                    "ED_ok_ref_floor": ok["energy", "ref"],
                    "mode_max_abs_z": float(r.mode_max_abs_z),
                    "mode_ok": int(r.mode_ok),
                }
            )
            disp.append(
                {
                    "SDE": s,
                    "sampler": p,
                    "NFE": int(r.nfe),
                    "wall [s]": f"{float(r.wall_time):.2f}",
                    "SW": f"{float(r.sw):.4f}",
                    "SW floor": f"{fl['sw', 'pairs'][0]:.4f} ± {fl['sw', 'pairs'][1]:.4f}",
                    "SW verdict": _verdict(ok["sw", "pairs"]),
                    "SW verdict (ref floor)": _verdict(ok["sw", "ref"]),
                    "ED": f"{float(r.energy):.2e}",
                    "ED floor": f"{fl['energy', 'pairs'][0]:.1e} ± {fl['energy', 'pairs'][1]:.1e}",
                    "ED verdict": _verdict(ok["energy", "pairs"]),
                    "ED verdict (ref floor)": _verdict(ok["energy", "ref"]),
                    "modes max abs z": f"{float(r.mode_max_abs_z):.2f}",
                    "modes": _verdict(int(r.mode_ok), "FAIL"),
                }
            )
    n_mix, pairs = m.attrs.get("n_mix", ""), m.sizes["pair"]
    tables["mixture"] = (
        f"8-Gaussian ring, samplers at their defaults, n = {n_mix}, seed {m.attrs.get('seed_mix', '')}: distance to "
        f"an exact reference sample of p_eps vs its floor (metric_floor, {pairs} exact pairs; verdict ≤ mean + {K_SD:g}"
        f" sd; 'ref floor': {pairs} fresh exact sets vs the same reference); modes: |z| ≤ {K_SD:g}",
        pd.DataFrame(rows),
        _io.markdown_table(pd.DataFrame(disp))
        + "\n\nAll rows share one reference sample and seed: rows with the same prior draw and noise stream "
        "(the ODE solvers of all SDEs; EM and PC-ancestral; TorchSDE for VP and subVP) are strongly correlated, "
        "not independent tests.",
    )
    floors = pd.DataFrame(frows)
    tables["floors"] = (
        "Floors per SDE (mean, sd): 'pairs' = independent exact pairs (metric_floor), 'ref' = fresh exact sets vs "
        "the fixed reference; last column: the reference's own largest mode-weight |z|",
        floors,
        _io.markdown_table(
            floors,
            {c: (".4f" if c.startswith("SW") else ".2e") for c in floors.columns[1:-1]} | {floors.columns[-1]: ".2f"},
        ),
    )
    return tables


# ---------------------------------------------------------------------------------------
# figure
# ---------------------------------------------------------------------------------------
COLORS = {"VP": "C0", "subVP": "C1", "VE": "C2"}


def _slope_line(ax: plt.Axes, x: np.ndarray, y_anchor: float, order: float, label: str) -> None:
    xs = np.array([x.min(), x.max()], float)
    ax.plot(xs, y_anchor * (xs / xs[0]) ** (-order), color="0.5", lw=1, ls=(0, (1, 2)))
    ax.annotate(
        label,
        (xs[1], y_anchor * (xs[1] / xs[0]) ** (-order)),
        fontsize=8,
        color="0.4",
        xytext=(3, 0),
        textcoords="offset points",
        va="center",
    )


def make_figure(g: xr.Dataset, m: xr.Dataset, scatter: tuple[str, str] = ("VP", "EM")) -> plt.Figure:
    """2 x 2: (a) ODE error vs NFE, (b) EM weak error vs steps, (c) SW vs floor band, (d) samples vs exact."""
    fig, axes = plt.subplots(2, 2, figsize=(12, 10))
    names = list(g.sde.values)

    ax = axes[0, 0]
    styles = {"euler": ("-", "o"), "heun": ("--", "s"), "RK45": (":", "^")}
    for s in names:
        for meth in ("euler", "heun"):
            ax.loglog(
                g.ode_nfe.sel(scheme=meth),
                g.ode_error.sel(sde=s, scheme=meth),
                color=COLORS[s],
                ls=styles[meth][0],
                marker=styles[meth][1],
                ms=4,
            )
        ax.loglog(
            g.rk45_nfe.sel(sde=s),
            g.rk45_error.sel(sde=s),
            color=COLORS[s],
            ls=styles["RK45"][0],
            marker=styles["RK45"][1],
            ms=4,
        )
    nfe = g.ode_nfe.values.ravel()
    top = float(g.ode_error.max())
    _slope_line(ax, nfe, top, 1, "slope −1")
    _slope_line(ax, nfe, top / 10, 2, "slope −2")
    handles = [Line2D([], [], color=COLORS[s], label=s) for s in names]
    handles += [Line2D([], [], color="k", ls=ls, marker=mk, ms=4, label=meth) for meth, (ls, mk) in styles.items()]
    ax.legend(handles=handles, fontsize=8, ncol=2)
    ax.set(xlabel="NFE", ylabel="max end-point error", title="(a) PF-ODE vs exact map (Gaussian)")

    ax = axes[0, 1]
    top = 10 * float(g.em_weak_error.max())
    for s in names:
        rec = xr.concat(
            [g.em_weak_error.sel(sde=s).rename(em_steps="N"), g.rec_weak_error.sel(sde=s).rename(check_steps="N")], "N"
        ).sortby("N")
        rec = rec.drop_duplicates("N")
        ax.loglog(rec.N, rec, color=COLORS[s], marker="o", ms=4, label=f"{s} exact recursion")
        mc = g.mc_weak_error.sel(sde=s)
        ax.loglog(
            mc.check_steps,
            mc.where(mc < top),
            color=COLORS[s],
            marker="x",
            ls="none",
            ms=7,
            label=f"{s} sampler, n = {g.attrs.get('n_em', '')} (incl. MC noise)",
        )
        off = [f"{s} N={n_}: {v:.1e}" for n_, v in zip(rec.N.values, rec.values, strict=True) if v > top]
        if off:
            ax.text(
                0.98,
                0.97,
                "off scale (EM unstable): " + ", ".join(off),
                transform=ax.transAxes,
                ha="right",
                va="top",
                fontsize=8,
                color=COLORS[s],
            )
    _slope_line(ax, g.em_steps.values, float(g.em_weak_error.max()), 1, "slope −1")
    ax.set_ylim(top=top)
    ax.legend(fontsize=8, loc="lower left")
    ax.set(xlabel="steps N", ylabel="|mean − exact| + ‖cov − exact‖_F", title="(b) Euler–Maruyama weak error")

    ax = axes[1, 0]
    snames = list(m.sampler.values)
    x0 = 0
    ticks, labels = [], []
    for s in names:
        run = [p for p in snames if int(m.mode_ok.sel(sde=s, sampler=p)) >= 0]
        xs = np.arange(x0, x0 + len(run))
        for f, style in (
            ("pairs", {"color": COLORS[s], "alpha": 0.15, "lw": 0}),
            ("ref", {"facecolor": "none", "edgecolor": COLORS[s], "hatch": "//", "lw": 0.5}),
        ):
            mean, sd_ = float(m.sw_floor_mean.sel(sde=s, floor=f)), float(m.sw_floor_sd.sel(sde=s, floor=f))
            ax.fill_between([xs[0] - 0.4, xs[-1] + 0.4], max(mean - K_SD * sd_, 0), mean + K_SD * sd_, **style)
            ax.hlines(mean, xs[0] - 0.4, xs[-1] + 0.4, color=COLORS[s], lw=1, ls="-" if f == "pairs" else "--")
        vals = [float(m.sw.sel(sde=s, sampler=p)) for p in run]
        ok = [int(m.sw_ok.sel(sde=s, sampler=p, floor="pairs")) == 1 for p in run]
        ax.scatter(xs, vals, color=COLORS[s], marker="o", zorder=3)
        ax.scatter(xs[~np.array(ok)], np.array(vals)[~np.array(ok)], facecolor="none", edgecolor="r", s=120, zorder=4)
        ticks += list(xs)
        labels += [f"{s} {p}" for p in run]
        x0 += len(run) + 1
    ax.set_xticks(ticks, labels, rotation=60, ha="right", fontsize=8)
    ax.legend(
        handles=[
            Patch(color="0.5", alpha=0.3, label=f"floor, exact pairs (mean ± {K_SD:g} sd)"),
            Patch(facecolor="none", edgecolor="0.3", hatch="//", label="floor, exact sets vs reference"),
            Line2D([], [], marker="o", mfc="none", mec="r", ls="none", ms=10, label="above the pairs threshold"),
        ],
        fontsize=8,
        loc="lower center",
        framealpha=0.9,
    )
    ax.set(
        ylabel="sliced Wasserstein to exact p_eps",
        title=f"(c) 8-Gaussian ring, n = {m.attrs.get('n_mix', '')}: SW vs floor (mean ± {K_SD:g} sd)",
    )

    ax = axes[1, 1]
    s, p = scatter
    k = min(3000, m.sizes["sample"])
    ref = m.reference.sel(sde=s).values[:k]
    xs_ = m.samples.sel(sde=s, sampler=p).values[:k]
    ax.scatter(ref[:, 0], ref[:, 1], s=2, alpha=0.4, color="0.3", label="exact p_eps", rasterized=True)
    ax.scatter(xs_[:, 0], xs_[:, 1], s=2, alpha=0.4, color=COLORS[s], label=f"{s} {p}", rasterized=True)
    ax.set_aspect("equal")
    ax.legend(fontsize=8, markerscale=4)
    ax.set(title=f"(d) {s} {p} samples vs exact ({k} each)")
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------
# entry point
# ---------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = _io.study_parser(
        STUDY,
        __doc__,
        "publication size (more steps, more samples)",
        DEFAULT_OUT,
        threads_help="torch intra-op threads (default 1: small batches run fastest and most "
        "reproducibly single-threaded on a shared machine)",
        sweep=True,
    )
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the study, write the outputs, print the tables (unless ``--quiet``); returns 0."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    out = _io.prepare(args)
    size = _io.size(args)
    cfg = {"full": FULL, "docs": DOCS}.get(size, DEFAULT)
    start = time.perf_counter()

    with _sweep.Sweep.from_args(args) as sweep:
        g = run_gaussian(cfg, progress=not args.quiet, sweep=sweep)
        m = run_mixture(cfg, progress=not args.quiet, sweep=sweep)
    attrs = _io.provenance(STUDY, argv, size=size, **asdict(cfg))
    g.attrs = {
        **attrs,
        "part": "1: single Gaussian N(m, C)",
        "target_mean": repr(GAUSS.means[0].tolist()),
        "target_cov": repr(GAUSS.covariances[0].tolist()),
        "eps": EPS,
        "sdes": repr([SDES[s] for s in SDES]),
    }
    m.attrs = {**attrs, "part": "2: 8-Gaussian ring", "eps": EPS, "k_sd": K_SD, "sdes": repr([SDES[s] for s in SDES])}
    elapsed = time.perf_counter() - start
    g.attrs["study_wall_time_s"] = m.attrs["study_wall_time_s"] = round(elapsed, 1)

    _io.write_netcdf(g, out / "gaussian.nc")
    _io.write_netcdf(m, out / "mixture.nc")
    _io.save_figures(out, {"figure": make_figure(g, m)})
    _io.report(
        args,
        _io.write_tables(
            out,
            f"Core accuracy ({size} size)",
            attrs,
            f"{elapsed:.0f} s",
            make_tables(g, m),
        ),
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
