r"""Likelihood study: accuracy of :func:`scoresde.log_likelihood` versus solver tolerance and trace estimator.

Targets with exact scores, float64: the 2-D 8-Gaussian ring (``eight_gaussians``) and a 10-D mixture of
three Gaussians with unequal weights and random full covariances (:func:`scoresde.random_mixture`, the
one the likelihood tests use), each under the VP, sub-VP and VE SDEs. The data are exact samples of the
mixture; the ODE (scipy RK45, ``eps = 1e-5``) computes :math:`\log p_\varepsilon(x)`, which is compared
with the exact mixture density :math:`\log p_\varepsilon(x)` (``marginal(sde, eps).log_prob``); the
distance to :math:`\log p_0(x)` (the data density itself) is reported alongside.

* Exact trace at rtol = atol over ``tols``: mean and max absolute error and NFE, with the exact
  :math:`\log p_T` (``prior_logp=target.marginal(sde, T).log_prob``: solver error only) and with the
  SDE's Gaussian prior (``sde.prior_logp`` at the same latent :math:`x(T)`: adds the prior mismatch
  :math:`\log p_T - \log\mathcal N`, which no tolerance removes). Both come from one solve:
  ``log_prob = prior(x(T)) + delta_logp``; the study checks once that a call without ``prior_logp``
  gives the SDE-prior numbers.
* Hutchinson at rtol = atol = ``hutch_tol`` with Gaussian and Rademacher probes, ``probes`` each:
  mean absolute error against the exact density, NFE, and the bias against the exact-trace result at
  the same tolerance in units of its standard error: ``z_reported`` = sum of the differences over the
  sum of the reported variances (K >= 2), and ``z_empirical`` = mean difference over its standard
  error across samples (any K). Both are ~ N(0, 1) for an unbiased estimator. The probes come from
  the same seeds for every SDE (common random numbers). The three probability-flow ODEs are one flow
  in :math:`y = x / s(t)` against :math:`\tilde\sigma = \sigma(t)/s(t)`; the SDEs differ by a
  multiple of the identity in the drift's Jacobian (and by the range of :math:`\tilde\sigma`), which
  Rademacher probes (:math:`v_i^2 = 1`) measure without error and Gaussian probes do not. So with
  shared probes the Rademacher errors nearly coincide across SDEs, VP and sub-VP (same :math:`s(t)`)
  coincide for both noises, and VE is much noisier with Gaussian probes: its flow expands every
  direction by about :math:`\sigma_{\max}` / (data scale), an isotropic part that VP's contraction by
  :math:`s(t)` cancels.

The acceptance row: MAE at rtol = atol = 1e-6 with the exact trace, 2-D and 10-D x VP /
sub-VP / VE, target <= 1e-3 nats.

Usage::

    python -m studies.likelihood                 # default size, ~1.5 minutes on 2 cores
    python -m studies.likelihood --full          # publication size
    python -m studies.likelihood --docs          # the documentation build's size (50 points, 4 tolerances)
    python -m studies.likelihood --out DIR --quiet --threads 1
    python -m studies.likelihood --workers 4      # cells on a local dask cluster (scoresde[studies])
    python -m studies.likelihood --scheduler tcp://host:8786

The cells (target x SDE x tolerance, target x SDE x noise x probes) are independent and seeded by
their parameters: the numbers are the same, bit for bit, in-process and on any number of workers
(the wall times are measured where each cell runs).

Writes to ``--out`` (default ``studies/output/likelihood/``): ``likelihood.nc`` (xarray Dataset with
provenance attributes), ``figure.png``/``figure.svg``, ``table.md`` (printed unless ``--quiet``) and one CSV per table.
"""

from __future__ import annotations

import argparse
import math
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
from matplotlib.ticker import NullFormatter  # noqa: E402

import scoresde as sd  # noqa: E402

from . import _io, _sweep  # noqa: E402

STUDY = "studies.likelihood"
DEFAULT_OUT = Path(__file__).resolve().parent / "output" / "likelihood"

SDES: dict[str, sd.LinearSDE] = {"VP": sd.VPSDE(), "subVP": sd.SubVPSDE(), "VE": sd.VESDE()}
EPS = 1e-5
PRIORS = ("exact", "sde")  # exact log p_T at the latent; the SDE's Gaussian prior
NOISES = ("gaussian", "rademacher")
ACCEPT_TOL = 1e-6  # acceptance: MAE at rtol = atol = 1e-6 with the exact trace ...
ACCEPT_MAE = 1e-3  # ... at most 1e-3 nats


#: the targets, by the name of their dimension
TARGETS = {"2-D": sd.eight_gaussians, "10-D": sd.random_mixture}


@dataclass(frozen=True)
class Config:
    """Sizes and seeds of one run."""

    n: int = 200  # data points per target
    tols: tuple[float, ...] = (1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8)
    hutch_tol: float = 1e-6
    probes: tuple[int, ...] = (1, 4, 16)
    targets: tuple[str, ...] = ("2-D", "10-D")
    sdes: tuple[str, ...] = ("VP", "subVP", "VE")
    seed_data: int = 0
    seed_probes: int = 1


DEFAULT = Config()
FULL = replace(DEFAULT, n=1000, tols=(1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8, 1e-9), probes=(1, 4, 16, 64))
#: the documentation build's size (``--docs``): every figure and table from 50 points per target, four
#: tolerances (including the acceptance one) and 1 or 4 probes
DOCS = replace(DEFAULT, n=50, tols=(1e-3, 1e-5, 1e-6, 1e-8), probes=(1, 4))


def _data(cfg: Config, target: str, sde: str) -> tuple[sd.GaussianMixture, torch.Tensor, Any]:
    """The mixture, its exact samples (seed ``cfg.seed_data``) and the SDE's score."""
    mix = TARGETS[target]()
    x = mix.sample(cfg.n, torch.Generator().manual_seed(cfg.seed_data), dtype=torch.float64)
    return mix, x, mix.score(SDES[sde])


def exact_trace_cell(cfg: Config, target: str, sde: str, tol: float, check: bool = False) -> dict[str, Any]:
    """One cell: the exact-trace likelihood of ``target`` under ``sde`` at rtol = atol = ``tol``.

    Returns the errors against the exact log p_eps (exact and SDE prior) and log p_0, the log-likelihood
    itself (the Hutchinson cells' reference), NFE and wall time; with ``check``, also the gap between a
    call without ``prior_logp`` and ``sde.prior_logp(latent) + delta_logp``.
    """
    mix, x, score = _data(cfg, target, sde)
    lsde = SDES[sde]
    exact_eps = mix.marginal(lsde, EPS).log_prob(x)
    prior_T = mix.marginal(lsde, lsde.T).log_prob
    start = time.perf_counter()
    res = sd.log_likelihood(lsde, score, x, eps=EPS, rtol=tol, atol=tol, prior_logp=prior_T)
    wall = time.perf_counter() - start
    with_sde_prior = lsde.prior_logp(res.latent) + res.delta_logp
    out = {
        "err": np.stack([(res.log_prob - exact_eps).numpy(), (with_sde_prior - exact_eps).numpy()]),
        "err0": (res.log_prob - mix.log_prob(x)).numpy(),
        "log_prob": res.log_prob.numpy(),
        "nfe": res.nfe,
        "wall": wall,
    }
    if check:
        plain = sd.log_likelihood(lsde, score, x, eps=EPS, rtol=tol, atol=tol)
        out["check"] = float((plain.log_prob - with_sde_prior).abs().max())
    return out


def hutchinson_cell(cfg: Config, target: str, sde: str, noise: str, probes: int, seed: int) -> dict[str, Any]:
    """One cell: the Hutchinson likelihood at rtol = atol = ``cfg.hutch_tol`` with ``probes`` probes of
    ``noise`` drawn from ``seed``: the error against the exact log p_eps, the log-likelihood, its
    reported standard error (``None`` for one probe), NFE and wall time."""
    mix, x, score = _data(cfg, target, sde)
    lsde = SDES[sde]
    start = time.perf_counter()
    res = sd.log_likelihood(
        lsde,
        score,
        x,
        eps=EPS,
        rtol=cfg.hutch_tol,
        atol=cfg.hutch_tol,
        divergence="hutchinson",
        probes=probes,
        noise=noise,
        seed=seed,
        prior_logp=mix.marginal(lsde, lsde.T).log_prob,
    )
    wall = time.perf_counter() - start
    return {
        "err": (res.log_prob - mix.marginal(lsde, EPS).log_prob(x)).numpy(),
        "log_prob": res.log_prob.numpy(),
        "se": None if res.std_error is None else res.std_error.numpy(),
        "nfe": res.nfe,
        "wall": wall,
    }


def likelihood_cell(kind: str, **params: Any) -> dict[str, Any]:
    """:func:`exact_trace_cell` (``kind="exact"``) or :func:`hutchinson_cell` (``kind="hutchinson"``) of ``params``."""
    return {"exact": exact_trace_cell, "hutchinson": hutchinson_cell}[kind](**params)


def run_likelihood(cfg: Config = DEFAULT, progress: bool = True, sweep: _sweep.Sweep | None = None) -> xr.Dataset:
    """Every target x SDE x tolerance (exact trace) and target x SDE x noise x probes (Hutchinson).

    The cells (:func:`exact_trace_cell`, :func:`hutchinson_cell`, all in one queue) run where ``sweep`` runs them
    (default: in-process); the result does not depend on it.
    """
    tnames, snames, tols, probes = list(cfg.targets), list(cfg.sdes), list(cfg.tols), list(cfg.probes)
    T_, S, R, P = len(tnames), len(snames), len(tols), len(probes)
    if ACCEPT_TOL not in tols:
        raise ValueError(f"tols must contain the acceptance tolerance {ACCEPT_TOL:g}, got {tols}")
    shape = (T_, S, R)
    err = np.full((*shape, 2, cfg.n), np.nan)  # (target, sde, tol, prior, sample), log p_ODE - log p_eps
    err0 = np.full((*shape, cfg.n), np.nan)  # exact prior, vs log p_0
    nfe, wall = np.zeros(shape, np.int64), np.zeros(shape)
    hshape = (T_, S, 2, P)
    h_err = np.full((*hshape, cfg.n), np.nan)  # Hutchinson (exact prior) - exact log p_eps
    h_diff = np.full((*hshape, cfg.n), np.nan)  # Hutchinson - exact trace, same tolerance and prior
    h_se = np.full((*hshape, cfg.n), np.nan)  # reported standard error (NaN for K = 1)
    h_nfe, h_wall = np.zeros(hshape, np.int64), np.zeros(hshape)
    checks: dict[str, float] = {}

    sweep = sweep or _sweep.Sweep()
    # the exact-trace cells, plus one at hutch_tol for the Hutchinson reference if tols lacks it
    ref_tols = tols if cfg.hutch_tol in tols else [*tols, cfg.hutch_tol]
    exact_cells = [
        {"cfg": cfg, "target": t, "sde": s, "tol": tol, "check": tol == ACCEPT_TOL and a == 0 and b == 0}
        for a, t in enumerate(tnames)
        for b, s in enumerate(snames)
        for tol in ref_tols
    ]
    hutch_cells = [
        {"cfg": cfg, "target": t, "sde": s, "noise": noise, "probes": K, "seed": cfg.seed_probes + d}
        for t in tnames
        for s in snames
        for noise in NOISES
        for d, K in enumerate(probes)
    ]
    cells = [{"kind": "exact", **c} for c in exact_cells] + [{"kind": "hutchinson", **c} for c in hutch_cells]
    results = sweep.map(likelihood_cell, cells, progress=progress, desc="likelihood")  # one queue: no idle workers
    exact_res, hutch_res = iter(results[: len(exact_cells)]), iter(results[len(exact_cells) :])
    for a in range(T_):
        for b in range(S):
            ref = None
            for c, tol in enumerate(ref_tols):
                r = next(exact_res)
                if tol == cfg.hutch_tol:
                    ref = r["log_prob"]
                if c >= R:
                    continue
                err[a, b, c], err0[a, b, c] = r["err"], r["err0"]
                nfe[a, b, c], wall[a, b, c] = r["nfe"], r["wall"]
                if "check" in r:
                    checks["sde_prior_call_vs_latent_max_abs"] = r["check"]
            for c in range(len(NOISES)):
                for d in range(P):
                    r = next(hutch_res)
                    h_err[a, b, c, d], h_diff[a, b, c, d] = r["err"], r["log_prob"] - ref
                    h_nfe[a, b, c, d], h_wall[a, b, c, d] = r["nfe"], r["wall"]
                    if r["se"] is not None:
                        h_se[a, b, c, d] = r["se"]

    mae = np.abs(err).mean(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        z_rep = h_diff.sum(-1) / np.sqrt(np.square(h_se).sum(-1))  # NaN for one probe (no reported se)
        z_emp = h_diff.mean(-1) / (h_diff.std(-1, ddof=1) / math.sqrt(cfg.n))
        mean_se = h_se.sum(-1) / cfg.n
    dims, hdims = ("target", "sde", "tol"), ("target", "sde", "noise", "probes")
    return xr.Dataset(
        {
            "error": (
                (*dims, "prior", "sample"),
                err,
                {"long_name": "ODE log p_eps(x) - exact log p_eps(x)", "units": "nats"},
            ),
            "error_vs_p0": (
                (*dims, "sample"),
                err0,
                {"long_name": "ODE log p_eps(x) (exact prior) - exact log p_0(x)", "units": "nats"},
            ),
            "mae": ((*dims, "prior"), mae, {"long_name": "mean |ODE log p - exact log p_eps|", "units": "nats"}),
            "max_error": ((*dims, "prior"), np.abs(err).max(-1), {"units": "nats"}),
            "mae_vs_p0": (dims, np.abs(err0).mean(-1), {"long_name": "mean |ODE log p - exact log p_0|"}),
            "nfe": (dims, nfe, {"long_name": "score evaluations (exact trace: D backward passes each)"}),
            "wall_time": (dims, wall, {"units": "s"}),
            "hutch_error": ((*hdims, "sample"), h_err, {"long_name": "Hutchinson log p - exact log p_eps"}),
            "hutch_diff": (
                (*hdims, "sample"),
                h_diff,
                {"long_name": "Hutchinson log p - exact-trace ODE log p (same tolerance and prior)"},
            ),
            "hutch_se": ((*hdims, "sample"), h_se, {"long_name": "reported standard error (NaN for one probe)"}),
            "hutch_mae": (hdims, np.abs(h_err).mean(-1), {"long_name": "mean |Hutchinson log p - exact log p_eps|"}),
            "hutch_bias": (hdims, h_diff.mean(-1), {"long_name": "mean (Hutchinson - exact trace)"}),
            "hutch_z_reported": (hdims, z_rep, {"long_name": "sum of differences / sqrt(sum of reported variances)"}),
            "hutch_z_empirical": (hdims, z_emp, {"long_name": "mean difference / its standard error across samples"}),
            "hutch_mean_se": (hdims, mean_se, {"long_name": "mean reported standard error (NaN for one probe)"}),
            "hutch_nfe": (hdims, h_nfe),
            "hutch_wall_time": (hdims, h_wall, {"units": "s"}),
        },
        coords={
            "target": tnames,
            "sde": snames,
            "tol": tols,
            "prior": list(PRIORS),
            "noise": list(NOISES),
            "probes": probes,
            "sample": np.arange(cfg.n),
            "dim": ("target", [TARGETS[t]().dim for t in tnames]),
        },
        attrs={
            "eps": EPS,
            "method": "RK45",
            "hutch_tol": cfg.hutch_tol,
            "accept_tol": ACCEPT_TOL,
            "accept_mae": ACCEPT_MAE,
            "sdes": repr([SDES[s] for s in snames]),
            **{f"check_{k}": v for k, v in checks.items()},
        },
    )


# ---------------------------------------------------------------------------------------
# tables and figure
# ---------------------------------------------------------------------------------------
def acceptance_table(ds: xr.Dataset) -> pd.DataFrame:
    """Acceptance: MAE at rtol = atol = 1e-6, exact trace, per target x SDE, both priors, with verdicts."""
    rows = []
    for t in ds.target.values:
        for s in ds.sde.values:
            r = ds.sel(target=t, sde=s, tol=ACCEPT_TOL)
            ex, gp = float(r.mae.sel(prior="exact")), float(r.mae.sel(prior="sde"))
            rows.append(
                {
                    "target": t,
                    "SDE": s,
                    "NFE": int(r.nfe),
                    "MAE, exact log p_T": ex,
                    "verdict (exact p_T)": "ok" if ex <= ACCEPT_MAE else "ABOVE",
                    "max error, exact log p_T": float(r.max_error.sel(prior="exact")),
                    "MAE, SDE prior": gp,
                    "verdict (SDE prior)": "ok" if gp <= ACCEPT_MAE else "ABOVE",
                    "MAE vs log p_0": float(r.mae_vs_p0),
                }
            )
    return pd.DataFrame(rows)


def make_tables(ds: xr.Dataset) -> dict[str, tuple[str, pd.DataFrame, str]]:
    """``{key: (title, raw DataFrame for the CSV, markdown)}``."""
    tables: dict[str, tuple[str, pd.DataFrame, str]] = {}
    acc = acceptance_table(ds)
    fmt = {c: ".2e" for c in acc.columns if "MAE" in c or "max" in c}
    tables["acceptance"] = (
        f"Acceptance: mean |log p_ODE − log p_eps| at rtol = atol = {ACCEPT_TOL:g}, exact trace, "
        f"n = {ds.sizes['sample']} (target ≤ {ACCEPT_MAE:g} nats)",
        acc,
        _io.markdown_table(acc, fmt),
    )

    rows, disp = [], []
    for t in ds.target.values:
        for s in ds.sde.values:
            for tol in ds.tol.values:
                r = ds.sel(target=t, sde=s, tol=tol)
                rows.append(
                    {
                        "target": t,
                        "SDE": s,
                        "rtol=atol": float(tol),
                        "NFE": int(r.nfe),
                        "MAE exact p_T": float(r.mae.sel(prior="exact")),
                        "max exact p_T": float(r.max_error.sel(prior="exact")),
                        "MAE SDE prior": float(r.mae.sel(prior="sde")),
                        "wall_s": float(r.wall_time),
                    }
                )
    df = pd.DataFrame(rows)
    wide = df.pivot_table(index="rtol=atol", columns=["target", "SDE"], values="MAE exact p_T", sort=False)
    wide_nfe = df.pivot_table(index="rtol=atol", columns=["target", "SDE"], values="NFE", sort=False)
    disp = pd.DataFrame({"rtol=atol": [f"{v:.0e}" for v in wide.index]})
    for col in wide.columns:
        disp[f"{col[0]} {col[1]}"] = [
            f"{e:.2e} ({int(n)})" for e, n in zip(wide[col].values, wide_nfe[col].values, strict=True)
        ]
    tables["tolerance"] = (
        "Exact trace, exact log p_T: MAE in nats (NFE) against rtol = atol",
        df,
        _io.markdown_table(disp),
    )

    rows = []
    for t in ds.target.values:
        for s in ds.sde.values:
            for noise in ds.noise.values:
                for K in ds.probes.values:
                    r = ds.sel(target=t, sde=s, noise=noise, probes=K)
                    rows.append(
                        {
                            "target": t,
                            "SDE": s,
                            "noise": noise,
                            "probes": int(K),
                            "NFE": int(r.hutch_nfe),
                            "MAE": float(r.hutch_mae),
                            "mean reported se": float(r.hutch_mean_se),
                            "bias vs exact trace": float(r.hutch_bias),
                            "z (reported se)": float(r.hutch_z_reported),
                            "z (empirical se)": float(r.hutch_z_empirical),
                            "wall_s": float(r.hutch_wall_time),
                        }
                    )
    df = pd.DataFrame(rows)
    tables["hutchinson"] = (
        f"Hutchinson at rtol = atol = {ds.attrs['hutch_tol']:g}, exact log p_T: MAE against the exact density, and the "
        "bias against the exact-trace solve in units of its standard error (unbiased: |z| ≲ 3)",
        df,
        _io.markdown_table(
            df.drop(columns="wall_s"),
            {
                "MAE": ".2e",
                "mean reported se": ".2e",
                "bias vs exact trace": ".1e",
                "z (reported se)": ".2f",
                "z (empirical se)": ".2f",
            },
        ),
    )
    return tables


COLORS = {"VP": "C0", "subVP": "C1", "VE": "C2"}


def make_figure(ds: xr.Dataset) -> plt.Figure:
    """One row per target: (a) MAE vs tolerance (both priors), (b) MAE vs NFE, (c) Hutchinson MAE vs probes."""
    tn = list(ds.target.values)
    fig, axes = plt.subplots(len(tn), 3, figsize=(15, 4.5 * len(tn)), squeeze=False)
    tols = ds.tol.values
    for row, t in enumerate(tn):
        ax = axes[row, 0]
        for s in ds.sde.values:
            for prior, ls in (("exact", "-"), ("sde", "--")):
                ax.loglog(tols, ds.mae.sel(target=t, sde=s, prior=prior), color=COLORS[s], ls=ls, marker="o", ms=4)
        ax.loglog(tols, tols, color="0.5", lw=1, ls=":")
        ax.axhline(ACCEPT_MAE, color="r", lw=0.8, ls="-.")
        ax.axvline(ACCEPT_TOL, color="0.7", lw=0.8)
        ax.invert_xaxis()
        handles = [Line2D([], [], color=COLORS[s], marker="o", ms=4, label=s) for s in ds.sde.values]
        handles += [
            Line2D([], [], color="k", ls="-", label="exact log p_T (prior_logp=)"),
            Line2D([], [], color="k", ls="--", label="SDE prior (prior mismatch)"),
            Line2D([], [], color="0.5", ls=":", label="error = tolerance"),
            Line2D([], [], color="r", ls="-.", lw=0.8, label=f"acceptance {ACCEPT_MAE:g} nats"),
        ]
        ax.legend(handles=handles, fontsize=7)
        ax.set(
            xlabel="rtol = atol",
            ylabel="mean |log p_ODE − log p_eps| [nats]",
            title=f"({'ab'[row]}1) {t}, exact trace: error vs tolerance",
        )

        ax = axes[row, 1]
        for s in ds.sde.values:
            ax.loglog(
                ds.nfe.sel(target=t, sde=s),
                ds.mae.sel(target=t, sde=s, prior="exact"),
                color=COLORS[s],
                marker="o",
                ms=4,
                label=s,
            )
        ax.legend(fontsize=7)
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set(xlabel="NFE", ylabel="MAE (exact log p_T) [nats]", title=f"({'ab'[row]}2) {t}: error vs NFE (RK45)")

        ax = axes[row, 2]
        K = ds.probes.values
        for s in ds.sde.values:
            for noise, ls in (("gaussian", "-"), ("rademacher", "--")):
                ax.loglog(
                    K,
                    ds.hutch_mae.sel(target=t, sde=s, noise=noise),
                    color=COLORS[s],
                    ls=ls,
                    marker="s",
                    ms=4,
                    label=f"{s} {noise}",
                )
        top = float(ds.hutch_mae.sel(target=t).max())
        ax.loglog(K, top * (K / K[0]) ** -0.5, color="0.5", lw=1, ls=":", label="slope −1/2")
        ax.set_xscale("log", base=2)
        ax.text(
            0.02,
            0.02,
            "shared probes: VP and sub-VP coincide,\nand all three SDEs with Rademacher probes",
            transform=ax.transAxes,
            fontsize=7,
            color="0.3",
        )
        ax.legend(fontsize=7, ncol=2)
        ax.set(
            xlabel="Hutchinson probes K",
            ylabel="MAE (exact log p_T) [nats]",
            title=f"({'ab'[row]}3) {t}: Hutchinson at rtol = atol = {ds.attrs['hutch_tol']:g}",
        )
    fig.suptitle(
        f"log_likelihood vs exact mixture densities (n = {ds.sizes['sample']} per target, eps = {EPS:g})", fontsize=10
    )
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------
# entry point
# ---------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = _io.study_parser(
        STUDY, __doc__, "publication size (more samples, tolerances, probes)", DEFAULT_OUT, sweep=True
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
        ds = run_likelihood(cfg, progress=not args.quiet, sweep=sweep)
    elapsed = time.perf_counter() - start
    attrs: dict[str, Any] = _io.provenance(STUDY, argv, size=size, **asdict(cfg))
    ds.attrs = {**attrs, **ds.attrs, "study_wall_time_s": round(elapsed, 1)}
    _io.write_netcdf(ds, out / "likelihood.nc")
    _io.save_figures(out, {"figure": make_figure(ds)})
    extra = []
    if "check_sde_prior_call_vs_latent_max_abs" in ds.attrs:
        extra.append(
            "Check: a call without `prior_logp` equals `sde.prior_logp(latent) + delta_logp` to "
            f"{ds.attrs['check_sde_prior_call_vs_latent_max_abs']:.1e} nats (2-D, VP, {ACCEPT_TOL:g}).\n"
        )
    _io.report(
        args,
        _io.write_tables(
            out,
            f"Likelihood accuracy ({size} size)",
            attrs,
            f"{elapsed:.0f} s",
            make_tables(ds),
            extra,
        ),
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
