r"""Convergence study: strong and weak order of the reverse-time integrators on a Gaussian mixture.

Target: a 2-D Gaussian mixture with its exact score, float64, for the VP, sub-VP and VE SDEs,
integrated from ``T`` to ``eps = 1e-3``, starting from exact samples of :math:`p_T` (no prior
mismatch). The default, ``overlap3``, has three overlapping components with unequal weights and full
covariances (no symmetry makes a moment bias vanish). ``--target`` takes the library's named targets
too; on the well-separated ones (``pinwheel``, ``eight_gaussians``) the strong error at N <= 512 is
pre-asymptotic: a path that the coarse scheme sends into a different mode than the reference costs
an O(1) error, so the RMS error falls erratically, near order 0.5-0.8 for EM.

Integrators and their theoretical orders (strong, weak) for additive noise:

* ``EM``: Euler–Maruyama (1, 1), a hand loop over ``sde.reverse(score).sde`` that reproduces
  :class:`scoresde.EulerMaruyama` step for step (checked: same generator, same numbers), driven by
  Brownian increments summed from one fine path;
* ``SRK``: :class:`scoresde.TorchSDE` ``("srk")``, torchsde's additive-noise SRA1 scheme (1.5, 2),
  run by :func:`scoresde.sample` with the fine path handed in through ``TorchSDE(brownian=...)``;
* ``ODE-Euler`` and ``ODE-Heun``: :class:`scoresde.ProbabilityFlowODE` fixed-step Euler and Heun
  (deterministic: 1 and 2), against their own tight reference (scipy DOP853, rtol = atol = 1e-10)
  from the same :math:`x_T`.

One Brownian path per sample is drawn on a fine uniform grid of ``ref_steps`` steps in
:math:`u = T - t` as increments :math:`\Delta W_k` and space-time Lévy areas
:math:`H_k \sim \mathcal N(0, h/12)` (independent of :math:`\Delta W_k`), so that
:math:`\int_{u_k}^{u_{k+1}} (W_s - W_{u_k})\,ds = h(\Delta W_k/2 + H_k)`. Every coarser dyadic grid
reads its increments and its :math:`\int (W_s - W_{u_a})\,ds` exactly from these sums
(:class:`GridBrownian`), so every step count is driven by the same path. This is needed: torchsde's
``BrownianInterval`` with a fixed entropy but a different ``dt`` hint (what ``TorchSDE`` does for
two step counts with one seed) gives the same :math:`W(T - \varepsilon)` but a different path in
between (measured here; see the cross-checks).

Errors, per SDE x integrator x step count :math:`N`:

* strong: :math:`\big(\mathbb E\,|X_N - X_{\text{ref}}|^2\big)^{1/2}` over the samples, against the
  SRK solution at ``ref_steps`` driven by the same path and :math:`x_T` (the ODEs: against DOP853);
* weak: the norm of the vector of biases of :math:`\phi(x) = (x_1, x_2, x_1^2, x_1 x_2, x_2^2)`,
  :math:`\mathbb E[\phi(X_N)] - \mathbb E[\phi(X_{\text{ref}})]`, estimated from the coupled
  per-sample differences (same paths: far less variance than two independent runs), with a
  delta-method Monte-Carlo standard error. The references' own bias against the exact moments of
  :math:`p_\varepsilon` is checked separately (plain Monte Carlo, z-scores).

Observed orders are minus the least-squares slope of log error against log N over the finer half of
the step counts; for weak errors, only over those whose error exceeds 3 standard errors (the weak
errors of the high-order schemes sink into the Monte-Carlo noise at large N). A strong error is an
RMS, positive however noisy, so it is never dropped.

Usage::

    python -m studies.convergence                 # default size, ~1.5 minutes on 2 cores
    python -m studies.convergence --full          # publication size
    python -m studies.convergence --docs          # the documentation build's size (500 paths, N <= 128)
    python -m studies.convergence --out DIR --quiet --threads 1
    python -m studies.convergence --workers 3     # cells on a local dask cluster (scoresde[studies])
    python -m studies.convergence --scheduler tcp://host:8786

The cells (SDE x chunk of ``chunk`` samples) are independent and seeded by their parameters, so the
results are the same, bit for bit, in-process and on any number of workers (each worker holds one
chunk's Brownian path, ~4 x ref_steps x chunk x 2 x 8 bytes).

Writes to ``--out`` (default ``studies/output/convergence/``): ``convergence.nc`` (xarray Dataset
with provenance attributes), ``figure.png``/``figure.svg``, ``table.md`` (printed unless ``--quiet``) and one CSV per
table.
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
import torchsde  # noqa: E402
import xarray as xr  # noqa: E402

import scoresde as sd  # noqa: E402

from . import _io, _sweep  # noqa: E402

STUDY = "studies.convergence"
DEFAULT_OUT = Path(__file__).resolve().parent / "output" / "convergence"

SDES: dict[str, sd.LinearSDE] = {"VP": sd.VPSDE(), "subVP": sd.SubVPSDE(), "VE": sd.VESDE()}
EPS = 1e-3
INTEGRATORS = ("EM", "SRK", "ODE-Euler", "ODE-Heun")
#: theoretical (strong, weak) orders for additive noise; the ODEs are deterministic
THEORY = {"EM": (1.0, 1.0), "SRK": (1.5, 2.0), "ODE-Euler": (1.0, 1.0), "ODE-Heun": (2.0, 2.0)}
FUNCTIONALS = ("x1", "x2", "x1^2", "x1*x2", "x2^2")
REFERENCES = ("SDE", "ODE")  # SRK at ref_steps; DOP853 at ode_ref_tol
K_SE = 3.0  # a weak error counts in the fit only above K_SE standard errors


def overlap3() -> sd.GaussianMixture:
    """Three overlapping 2-D Gaussians (weights 0.5 / 0.3 / 0.2, full covariances, means about 3 sd apart):
    bimodal and nonlinear, but smooth enough that the asymptotic orders show at N <= 512."""
    v = 0.5
    return sd.GaussianMixture(
        [0.5, 0.3, 0.2],
        [[-1.0, 0.0], [1.0, 1.2], [0.6, -1.4]],
        [[[v, 0.3 * v], [0.3 * v, 0.6 * v]], [[0.8 * v, -0.2 * v], [-0.2 * v, v]], [[0.5 * v, 0.0], [0.0, 0.5 * v]]],
    )


#: targets by name: ``overlap3`` and the library's named 2-D targets (``sd.TARGETS``)
TARGETS = {"overlap3": overlap3, **sd.TARGETS}


def get_target(name: str) -> sd.GaussianMixture:
    """A target of :data:`TARGETS` by name."""
    if name not in TARGETS:
        raise ValueError(f"unknown target {name!r}; choose one of {sorted(TARGETS)}")
    return TARGETS[name]()


@dataclass(frozen=True)
class Config:
    """Sizes and seeds of one run."""

    target: str = "overlap3"
    sdes: tuple[str, ...] = ("VP", "subVP", "VE")
    steps: tuple[int, ...] = (16, 32, 64, 128, 256, 512)
    ref_steps: int = 4096  # fine grid: the Brownian path and the SRK reference
    n_paths: int = 2000  # samples (Brownian paths and x_T) per SDE
    chunk: int = 2000  # samples integrated at once (memory: ~4 * ref_steps * chunk * 2 * 8 bytes)
    ode_ref_tol: float = 1e-10  # DOP853 rtol = atol of the ODE reference
    check_steps: int = 64  # step count of the cross-checks (8 x check_steps must divide ref_steps)
    n_check: int = 1000  # samples of the cross-checks
    seed: int = 0


DEFAULT = Config()
FULL = replace(DEFAULT, steps=(16, 32, 64, 128, 256, 512, 1024), ref_steps=8192, n_paths=10_000, chunk=1000)
#: the documentation build's size (``--docs``): every figure and table from 500 paths, N = 16 .. 128 and a
#: 1,024-step reference (the weak errors sink into the Monte-Carlo noise sooner)
DOCS = replace(DEFAULT, steps=(16, 32, 64, 128), ref_steps=1024, n_paths=500, chunk=500, n_check=500)


# ---------------------------------------------------------------------------------------
# one Brownian path on a fine grid, readable on every coarser sub-grid
# ---------------------------------------------------------------------------------------
class GridBrownian(torchsde.BaseBrownian):
    r"""A Brownian motion on :math:`[0, t_1]` known on a uniform fine grid, for ``torchsde``.

    Parameters
    ----------
    dW : tensor, shape ``(n, batch, d)``
        Increments over the ``n`` fine steps of size :math:`h = t_1 / n`, :math:`\mathcal N(0, h)`.
    H : tensor, shape ``(n, batch, d)``
        Space-time Lévy areas :math:`H_k \sim \mathcal N(0, h/12)`, independent of ``dW``:
        :math:`\int_{u_k}^{u_{k+1}} (W_s - W_{u_k})\,ds = h(\Delta W_k / 2 + H_k)`.
    t1 : float
        End of the interval.
    levy_area_approximation : str
        What torchsde's solvers are told (``"space-time"`` lets ``srk`` use it).

    A query ``bm(ta, tb, return_U=...)`` must fall on the grid (to within ``1e-3`` fine steps, which
    absorbs torchsde's ``dt * (1 + 1e-9)`` steps); it returns :math:`W_{tb} - W_{ta}` and, with
    ``return_U``, :math:`U = \int_{ta}^{tb} (W_s - W_{ta})\,ds`, both exact sums of the fine
    quantities, so that every sub-grid sees the same path.
    """

    def __init__(self, dW: torch.Tensor, H: torch.Tensor, t1: float, levy_area_approximation: str = "space-time"):
        n = dW.shape[0]
        self._h = float(t1) / n
        self._t1 = float(t1)
        self._n = n
        zero = torch.zeros_like(dW[:1])
        self.W = torch.cat([zero, dW.cumsum(0)])  # W(u_k), k = 0..n
        area = self._h * (0.5 * dW + H)  # int over step k of (W_s - W_{u_k}) ds
        self.I = torch.cat([zero, (self._h * self.W[:-1] + area).cumsum(0)])  # int_0^{u_k} W ds
        self._levy = levy_area_approximation

    def index(self, t: float) -> int:
        """The fine-grid index of time ``t`` (raises ``ValueError`` off the grid)."""
        k = round(float(t) / self._h)
        if not 0 <= k <= self._n or abs(float(t) - k * self._h) > 1e-3 * self._h:
            raise ValueError(f"time {float(t)!r} is not on the fine grid (h = {self._h!r}, n = {self._n})")
        return k

    def __call__(self, ta, tb=None, return_U=False, return_A=False):
        if tb is None:
            ta, tb = 0.0, ta
        if return_A:
            raise ValueError("GridBrownian has no Lévy area A (additive-noise solvers do not need it)")
        i, j = self.index(ta), self.index(tb)
        W = self.W[j] - self.W[i]
        if not return_U:
            return W
        return W, self.I[j] - self.I[i] - ((j - i) * self._h) * self.W[i]

    def __repr__(self) -> str:
        return f"GridBrownian(n={self._n}, t1={self._t1:g}, shape={tuple(self.shape)})"

    @property
    def dtype(self):
        return self.W.dtype

    @property
    def device(self):
        return self.W.device

    @property
    def shape(self):
        return self.W.shape[1:]

    @property
    def levy_area_approximation(self):
        return self._levy

    def factory(self):
        """A ``TorchSDE(brownian=...)`` factory that hands out this path (checks span and size)."""

        def grid_brownian(*, t0, t1, size, dtype, device, dt, levy_area_approximation):
            if t0 != 0.0 or abs(t1 - self._t1) > 1e-12 * self._t1 or tuple(size) != tuple(self.shape):
                raise ValueError(
                    f"GridBrownian covers [0, {self._t1}] x {tuple(self.shape)}, asked for [{t0}, {t1}] x {tuple(size)}"
                )
            if dtype != self.dtype:
                raise ValueError(f"GridBrownian is {self.dtype}, asked for {dtype}")
            self._levy = levy_area_approximation
            return self

        return grid_brownian


def draw_path(n: int, batch: int, dim: int, t1: float, generator: torch.Generator) -> GridBrownian:
    """A fine Brownian path of ``n`` steps on ``[0, t1]`` for ``batch`` samples in ``dim`` dimensions."""
    h = t1 / n
    dW = math.sqrt(h) * torch.randn(n, batch, dim, generator=generator, dtype=torch.float64)
    H = math.sqrt(h / 12) * torch.randn(n, batch, dim, generator=generator, dtype=torch.float64)
    return GridBrownian(dW, H, t1)


def coarse_values(bm: GridBrownian, steps: int) -> torch.Tensor:
    """:math:`W(u_k)` on the ``steps``-step sub-grid, shape ``(steps + 1, batch, d)``."""
    if bm._n % steps:
        raise ValueError(f"{steps} steps is not a sub-grid of the fine grid of {bm._n} steps")
    return bm.W[:: bm._n // steps]


def euler_maruyama(sde: sd.SDE, score_fn, x_T: torch.Tensor, W: torch.Tensor, eps: float) -> torch.Tensor:
    r"""Euler–Maruyama on the uniform grid ``linspace(T, eps, N + 1)`` as in :class:`scoresde.EulerMaruyama`,
    with the Brownian increments ``W[k + 1] - W[k]`` in :math:`u = T - t` (``W``: ``(N + 1, batch, d)``):
    :math:`x \leftarrow x + \bar f(x, t)\,\Delta t + g(t)\,\Delta W`."""
    rsde = sde.reverse(score_fn)
    steps = W.shape[0] - 1
    grid = np.linspace(sde.T, eps, steps + 1)
    x = x_T.clone()
    for k in range(steps):
        drift, g = rsde.sde(x, float(grid[k]))
        x = x + drift * float(grid[k + 1] - grid[k]) + g[:, None] * (W[k + 1] - W[k])
    return x


def moments(x: torch.Tensor) -> torch.Tensor:
    """The test functions ``FUNCTIONALS`` per sample, shape ``(batch, 5)``."""
    return torch.stack([x[:, 0], x[:, 1], x[:, 0] ** 2, x[:, 0] * x[:, 1], x[:, 1] ** 2], dim=1)


def exact_moments(p: sd.GaussianMixture) -> np.ndarray:
    """Exact expectations of ``FUNCTIONALS`` under ``p``."""
    m, C = p.mean().numpy(), p.covariance().numpy()
    return np.array([m[0], m[1], C[0, 0] + m[0] ** 2, C[0, 1] + m[0] * m[1], C[1, 1] + m[1] ** 2])


def fit_order(
    steps: Sequence[int], err: Sequence[float], se: Sequence[float] | None = None, k_se: float = K_SE
) -> tuple[float, int]:
    """Minus the log-log least-squares slope of ``err`` against ``steps`` over the finer half of the
    points with ``err > k_se * se`` (at least two); returns ``(order, points used)``, NaN if < 2."""
    steps, err = np.asarray(steps, float), np.asarray(err, float)
    ok = np.isfinite(err) & (err > 0)
    if se is not None:
        ok &= err > k_se * np.asarray(se, float)
    idx = np.flatnonzero(ok)
    if idx.size < 2:
        return float("nan"), int(idx.size)
    idx = idx[-max(2, idx.size // 2) :]
    slope = np.polyfit(np.log(steps[idx]), np.log(err[idx]), 1)[0]
    return float(-slope), int(idx.size)


class _Acc:
    """Running sums over chunks of per-sample squared errors and moment differences."""

    def __init__(self) -> None:
        self.n = 0
        self.sq = self.sq2 = 0.0
        self.d = np.zeros(len(FUNCTIONALS))
        self.dd = np.zeros((len(FUNCTIONALS), len(FUNCTIONALS)))

    def add(self, x: torch.Tensor, ref: torch.Tensor) -> None:
        e2 = (x - ref).square().sum(1).numpy()
        d = (moments(x) - moments(ref)).numpy()
        self.n += e2.size
        self.sq += float(e2.sum())
        self.sq2 += float((e2**2).sum())
        self.d += d.sum(0)
        self.dd += d.T @ d

    def state(self) -> tuple[int, float, float, np.ndarray, np.ndarray]:
        """The running sums ``(n, sq, sq2, d, dd)``."""
        return self.n, self.sq, self.sq2, self.d, self.dd

    def merge(self, state: tuple[int, float, float, np.ndarray, np.ndarray]) -> None:
        """Add the sums of another chunk (:meth:`state`); merging chunks in order is what :meth:`add`
        over the chunks in order gives, to the last bit."""
        n, sq, sq2, d, dd = state
        self.n += n
        self.sq += sq
        self.sq2 += sq2
        self.d += d
        self.dd += dd

    def strong(self) -> tuple[float, float]:
        """RMS error and its delta-method standard error."""
        m = self.sq / self.n
        var = max(self.sq2 / self.n - m**2, 0.0) * self.n / max(self.n - 1, 1)
        rms = math.sqrt(m)
        return rms, math.sqrt(var / self.n) / (2 * rms) if rms > 0 else float("nan")

    def weak(self) -> tuple[np.ndarray, np.ndarray, float, float]:
        """Bias vector, its standard errors, the bias norm and the norm's delta-method standard error."""
        mean = self.d / self.n
        cov = (self.dd / self.n - np.outer(mean, mean)) * self.n / max(self.n - 1, 1)
        se = np.sqrt(np.diag(cov) / self.n)
        norm = float(np.linalg.norm(mean))
        grad = mean / norm if norm > 0 else np.zeros_like(mean)
        return mean, se, norm, float(math.sqrt(max(grad @ cov @ grad, 0.0) / self.n))


# ---------------------------------------------------------------------------------------
# the study
# ---------------------------------------------------------------------------------------
def convergence_cell(cfg: Config, sde: str, chunk: int) -> dict[str, Any]:
    """One cell of the sweep: SDE ``sde``, samples ``chunk * cfg.chunk ...`` (seeded by ``cfg.seed`` and
    ``chunk``), every integrator and step count against the two references.

    Returns plain data: ``"acc"`` maps ``(integrator, steps)`` to the running sums of :class:`_Acc`
    (``n, sq, sq2, d, dd``) over this chunk, ``"ref"`` the references' end points.
    """
    target = get_target(cfg.target)
    lsde = SDES[sde]
    size = min(cfg.chunk, cfg.n_paths - chunk * cfg.chunk)
    gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + chunk)
    x_T = target.marginal(lsde, lsde.T).sample(size, gen, dtype=torch.float64)
    bm = draw_path(cfg.ref_steps, size, target.dim, lsde.T - EPS, gen)
    score = target.score(lsde)

    def run(sampler: sd.Sampler) -> torch.Tensor:
        ds = sd.sample(lsde, score, sampler, x_T=x_T, progress=False)
        return torch.from_numpy(ds["x"].values[-1])

    ref = {
        "SDE": run(sd.TorchSDE("srk", steps=cfg.ref_steps, eps=EPS, brownian=bm.factory())),
        "ODE": run(sd.ProbabilityFlowODE("DOP853", rtol=cfg.ode_ref_tol, atol=cfg.ode_ref_tol, eps=EPS)),
    }
    acc = {(m, n): _Acc() for m in INTEGRATORS for n in cfg.steps}
    for n in cfg.steps:
        acc["EM", n].add(euler_maruyama(lsde, score, x_T, coarse_values(bm, n), EPS), ref["SDE"])
        acc["SRK", n].add(run(sd.TorchSDE("srk", steps=n, eps=EPS, brownian=bm.factory())), ref["SDE"])
        acc["ODE-Euler", n].add(run(sd.ProbabilityFlowODE("euler", steps=n, eps=EPS)), ref["ODE"])
        acc["ODE-Heun", n].add(run(sd.ProbabilityFlowODE("heun", steps=n, eps=EPS)), ref["ODE"])
    return {"acc": {k: a.state() for k, a in acc.items()}, "ref": {k: v.numpy() for k, v in ref.items()}}


def nfe_of(integrator: str, steps: int) -> int:
    """Score evaluations of one run."""
    return {"EM": steps, "SRK": 2 * steps, "ODE-Euler": steps, "ODE-Heun": 2 * steps}[integrator]


def run_convergence(cfg: Config = DEFAULT, progress: bool = True, sweep: _sweep.Sweep | None = None) -> xr.Dataset:
    """Strong and weak errors of every integrator x SDE x step count, fitted orders, reference checks.

    The cells (SDE x chunk of samples, :func:`convergence_cell`) run where ``sweep`` runs them
    (default: in-process); the result does not depend on it.
    """
    target = get_target(cfg.target)
    names, steps = list(cfg.sdes), list(cfg.steps)
    if any(cfg.ref_steps % n for n in steps):
        raise ValueError(f"every step count must divide ref_steps={cfg.ref_steps}: {steps}")
    S, I_, N, F = len(names), len(INTEGRATORS), len(steps), len(FUNCTIONALS)
    strong, strong_se = np.full((S, I_, N), np.nan), np.full((S, I_, N), np.nan)
    weak, weak_se = np.full((S, I_, N), np.nan), np.full((S, I_, N), np.nan)
    bias, bias_se = np.full((S, I_, N, F), np.nan), np.full((S, I_, N, F), np.nan)
    ref_bias, ref_se, exact = np.full((S, 2, F), np.nan), np.full((S, 2, F), np.nan), np.full((S, F), np.nan)
    n_chunks = -(-cfg.n_paths // cfg.chunk)
    cells = [{"cfg": cfg, "sde": name, "chunk": c} for name in names for c in range(n_chunks)]
    results = iter((sweep or _sweep.Sweep()).map(convergence_cell, cells, progress=progress, desc="convergence"))
    for i, name in enumerate(names):
        sde = SDES[name]
        acc = {(m, n): _Acc() for m in INTEGRATORS for n in steps}
        ref_acc: dict[str, list[torch.Tensor]] = {k: [] for k in REFERENCES}
        for _ in range(n_chunks):  # the cells of this SDE, in chunk order
            res = next(results)
            for key, state in res["acc"].items():
                acc[key].merge(state)
            for k in REFERENCES:
                ref_acc[k].append(torch.from_numpy(res["ref"][k]))
        for j, m in enumerate(INTEGRATORS):
            for k, n in enumerate(steps):
                strong[i, j, k], strong_se[i, j, k] = acc[m, n].strong()
                bias[i, j, k], bias_se[i, j, k], weak[i, j, k], weak_se[i, j, k] = acc[m, n].weak()
        exact[i] = exact_moments(target.marginal(sde, EPS))
        for r, key in enumerate(REFERENCES):
            phi = moments(torch.cat(ref_acc[key])).numpy()
            ref_bias[i, r] = phi.mean(0) - exact[i]
            ref_se[i, r] = phi.std(0, ddof=1) / math.sqrt(phi.shape[0])

    orders = np.full((S, I_, 2), np.nan)
    used = np.zeros((S, I_, 2), np.int64)
    for i in range(S):
        for j in range(I_):
            orders[i, j, 0], used[i, j, 0] = fit_order(steps, strong[i, j])
            orders[i, j, 1], used[i, j, 1] = fit_order(steps, weak[i, j], weak_se[i, j])
    theory = np.array([THEORY[m] for m in INTEGRATORS])
    dims3 = ("sde", "integrator", "steps")
    return xr.Dataset(
        {
            "strong_error": (dims3, strong, {"long_name": "RMS end-point error vs the same-path reference"}),
            "strong_se": (dims3, strong_se, {"long_name": "Monte-Carlo standard error of strong_error"}),
            "weak_error": (dims3, weak, {"long_name": "norm of the moment-bias vector vs the reference (coupled)"}),
            "weak_se": (dims3, weak_se, {"long_name": "Monte-Carlo standard error of weak_error (delta method)"}),
            "weak_bias": ((*dims3, "functional"), bias, {"long_name": "E[phi(X_N)] - E[phi(X_ref)], coupled"}),
            "weak_bias_se": ((*dims3, "functional"), bias_se, {"long_name": "standard error of weak_bias"}),
            "nfe": (
                ("integrator", "steps"),
                np.array([[nfe_of(m, n) for n in steps] for m in INTEGRATORS]),
                {"long_name": "score evaluations per run"},
            ),
            "order": (
                ("sde", "integrator", "kind"),
                orders,
                {
                    "long_name": "observed order: minus the log-log slope over the finer half of the "
                    f"points (weak: of those above {K_SE:g} standard errors)"
                },
            ),
            "order_points": (("sde", "integrator", "kind"), used, {"long_name": "points in the order fit"}),
            "theory": (("integrator", "kind"), theory, {"long_name": "theoretical order (additive noise)"}),
            "reference_bias": (
                ("sde", "reference", "functional"),
                ref_bias,
                {"long_name": "E[phi(X_ref)] - exact E[phi] under p_eps (plain Monte Carlo)"},
            ),
            "reference_bias_se": (("sde", "reference", "functional"), ref_se),
            "exact_expectation": (("sde", "functional"), exact, {"long_name": "exact E[phi] under p_eps"}),
        },
        coords={
            "sde": names,
            "integrator": list(INTEGRATORS),
            "steps": steps,
            "kind": ["strong", "weak"],
            "functional": list(FUNCTIONALS),
            "reference": list(REFERENCES),
        },
        attrs={
            "target": cfg.target,
            "eps": EPS,
            "n_paths": cfg.n_paths,
            "ref_steps": cfg.ref_steps,
            "sdes": repr([SDES[s] for s in names]),
        },
    )


# ---------------------------------------------------------------------------------------
# cross-checks: the hand EM is the library's, the fine path drives torchsde, and the library's
# own BrownianInterval does not share a path across step counts
# ---------------------------------------------------------------------------------------
def run_checks(cfg: Config = DEFAULT) -> dict[str, float]:
    """Cross-checks on VP at ``cfg.check_steps`` steps with ``cfg.n_check`` samples; returns the numbers."""
    import functools

    target = get_target(cfg.target)
    sde = SDES["VP"]
    score = target.score(sde)
    N, n = cfg.check_steps, cfg.n_check
    span = sde.T - EPS
    gen = torch.Generator().manual_seed(cfg.seed + 7)
    x_T = target.marginal(sde, sde.T).sample(n, gen, dtype=torch.float64)
    out: dict[str, float] = {}

    def end(sampler: sd.Sampler, seed: int = 0) -> torch.Tensor:
        return torch.from_numpy(sd.sample(sde, score, sampler, x_T=x_T, seed=seed, progress=False)["x"].values[-1])

    # (1) the hand EM reproduces sd.EulerMaruyama given the generator's normals
    g = torch.Generator().manual_seed(5)
    h = span / N
    z = torch.stack([torch.randn(x_T.shape, generator=g, dtype=torch.float64) for _ in range(N)])
    W = torch.cat([torch.zeros_like(z[:1]), (math.sqrt(h) * z).cumsum(0)])
    out["em_hand_vs_library_max_abs"] = float(
        (euler_maruyama(sde, score, x_T, W, EPS) - end(sd.EulerMaruyama(steps=N, eps=EPS), seed=5)).abs().max()
    )

    # (2) torchsde's Euler driven by the fine path equals the hand EM on the summed increments
    bm = draw_path(cfg.ref_steps, n, target.dim, span, gen)
    em = euler_maruyama(sde, score, x_T, coarse_values(bm, N), EPS)
    out["em_hand_vs_torchsde_euler_gridpath_max_abs"] = float(
        (end(sd.TorchSDE("euler", steps=N, eps=EPS, brownian=bm.factory())) - em).abs().max()
    )

    # (3) in law: SRK with the library's default BrownianInterval vs with the fine path, max |z| over
    # the five moments (independent samples of the same law)
    a = moments(end(sd.TorchSDE("srk", steps=N, eps=EPS), seed=11))
    b = moments(end(sd.TorchSDE("srk", steps=N, eps=EPS, brownian=bm.factory())))
    zs = (a.mean(0) - b.mean(0)) / torch.sqrt(a.var(0) / n + b.var(0) / n)
    out["srk_default_vs_gridpath_moments_max_abs_z"] = float(zs.abs().max())

    # (4) torchsde's BrownianInterval, one entropy, dt = h as TorchSDE builds it: same end value,
    # different path in between (max over the coarse grid of |W_N(u_k) - W_fine(u_k)|)
    def interval_path(steps: int) -> torch.Tensor:
        bi = torchsde.BrownianInterval(
            t0=0.0,
            t1=span,
            size=(n, target.dim),
            dtype=torch.float64,
            entropy=123,
            dt=span / steps,
            levy_area_approximation="space-time",
        )
        u = [k * span / steps for k in range(steps)] + [span]
        return torch.stack([bi(u[k], u[k + 1]) for k in range(steps)]).cumsum(0)

    fine_steps = 8 * N
    coarse, fine = interval_path(N), interval_path(fine_steps)[7::8]
    out["brownian_interval_end_max_abs_diff"] = float((coarse[-1] - fine[-1]).abs().max())
    out["brownian_interval_path_max_abs_diff"] = float((coarse - fine).abs().max())
    # ... and what that does to a strong-error study through the library sampler: SRK at N and 8 N
    # steps with one entropy, vs the fine-path difference of the same two runs
    bi = functools.partial(torchsde.BrownianInterval, entropy=123)
    out["srk_same_entropy_rms_diff_N_vs_8N"] = float(
        (
            end(sd.TorchSDE("srk", steps=N, eps=EPS, brownian=bi))
            - end(sd.TorchSDE("srk", steps=fine_steps, eps=EPS, brownian=bi))
        )
        .square()
        .sum(1)
        .mean()
        .sqrt()
    )
    out["srk_gridpath_rms_diff_N_vs_8N"] = float(
        (
            end(sd.TorchSDE("srk", steps=N, eps=EPS, brownian=bm.factory()))
            - end(sd.TorchSDE("srk", steps=fine_steps, eps=EPS, brownian=bm.factory()))
        )
        .square()
        .sum(1)
        .mean()
        .sqrt()
    )
    return out


# ---------------------------------------------------------------------------------------
# tables and figure
# ---------------------------------------------------------------------------------------
def make_tables(ds: xr.Dataset, checks: dict[str, float]) -> dict[str, tuple[str, pd.DataFrame, str]]:
    """``{key: (title, raw DataFrame for the CSV, markdown)}``."""
    tables: dict[str, tuple[str, pd.DataFrame, str]] = {}
    rows = []
    for s in ds.sde.values:
        for m in ds.integrator.values:
            o = ds.order.sel(sde=s, integrator=m)
            th = ds.theory.sel(integrator=m)
            pts = ds.order_points.sel(sde=s, integrator=m)
            rows.append(
                {
                    "SDE": s,
                    "integrator": m,
                    "strong observed": float(o.sel(kind="strong")),
                    "strong theory": float(th.sel(kind="strong")),
                    "weak observed": float(o.sel(kind="weak")),
                    "weak theory": float(th.sel(kind="weak")),
                    "weak fit points": int(pts.sel(kind="weak")),
                }
            )
    df = pd.DataFrame(rows)
    tables["orders"] = (
        f"Observed orders (minus the log-log slope over the finer half of the points; weak: of those above "
        f"{K_SE:g} s.e.) vs "
        f"theory; target {ds.attrs['target']}, {ds.attrs['n_paths']} paths, N = {list(map(int, ds.steps.values))}",
        df,
        _io.markdown_table(
            df, {"strong observed": ".2f", "weak observed": ".2f", "strong theory": ".1f", "weak theory": ".1f"}
        ),
    )

    for kind in ("strong", "weak"):
        raw = pd.DataFrame({"N": ds.steps.values})
        disp = pd.DataFrame({"N": ds.steps.values})
        for s in ds.sde.values:
            for m in ds.integrator.values:
                e = ds[f"{kind}_error"].sel(sde=s, integrator=m).values
                se = ds[f"{kind}_se"].sel(sde=s, integrator=m).values
                raw[f"{s} {m}"], raw[f"{s} {m} se"] = e, se
                disp[f"{s} {m}"] = [f"{a:.2e} ± {b:.0e}" for a, b in zip(e, se, strict=True)]
        label = (
            "RMS end-point error vs the same-path reference"
            if kind == "strong"
            else "weak error ‖E φ(X_N) − E φ(X_ref)‖ (coupled), φ = first and second moments"
        )
        tables[f"{kind}_errors"] = (f"{label} (± 1 s.e.)", raw, _io.markdown_table(disp))

    rows = []
    for s in ds.sde.values:
        for r in ds.reference.values:
            b = ds.reference_bias.sel(sde=s, reference=r).values
            se = ds.reference_bias_se.sel(sde=s, reference=r).values
            rows.append(
                {
                    "SDE": s,
                    "reference": {"SDE": "SRK, ref_steps", "ODE": "DOP853"}[r],
                    "max abs bias": float(np.abs(b).max()),
                    "max abs z": float(np.abs(b / se).max()),
                }
            )
    df = pd.DataFrame(rows)
    tables["reference_bias"] = (
        f"The references' own bias: E φ(X_ref) − exact E φ under p_eps over the {len(ds.functional)} moments "
        "(plain Monte Carlo; |z| ≲ 3 means no detectable bias)",
        df,
        _io.markdown_table(df, {"max abs bias": ".2e", "max abs z": ".2f"}),
    )

    labels = {
        "em_hand_vs_library_max_abs": "hand EM vs sd.EulerMaruyama, same normals (max abs diff)",
        "em_hand_vs_torchsde_euler_gridpath_max_abs": "hand EM vs TorchSDE('euler', fine path) (max abs diff)",
        "srk_default_vs_gridpath_moments_max_abs_z": "SRK default BrownianInterval vs fine path, in law (max |z|)",
        "brownian_interval_end_max_abs_diff": "BrownianInterval, one entropy, dt = h vs h/8: W(T−eps) diff",
        "brownian_interval_path_max_abs_diff": "same, max diff of W on the coarse grid (the paths differ)",
        "srk_same_entropy_rms_diff_N_vs_8N": "SRK N vs 8N steps, one BrownianInterval entropy: RMS diff",
        "srk_gridpath_rms_diff_N_vs_8N": "SRK N vs 8N steps, one fine path: RMS diff",
    }
    df = pd.DataFrame({"check": [labels.get(k, k) for k in checks], "value": list(checks.values())})
    tables["checks"] = ("Cross-checks (VP, N = check_steps)", df, _io.markdown_table(df, {"value": ".2e"}))
    return tables


COLORS = {"EM": "C0", "SRK": "C1", "ODE-Euler": "C2", "ODE-Heun": "C3"}
MARKERS = {"EM": "o", "SRK": "s", "ODE-Euler": "^", "ODE-Heun": "v"}


def _slope_line(ax: plt.Axes, x: np.ndarray, y_anchor: float, order: float, label: str) -> None:
    xs = np.array([x.min(), x.max()], float)
    ax.plot(xs, y_anchor * (xs / xs[0]) ** (-order), color="0.5", lw=1, ls=(0, (1, 2)))
    ax.annotate(
        label,
        (xs[1], y_anchor * (xs[1] / xs[0]) ** (-order)),
        fontsize=7,
        color="0.4",
        xytext=(3, 0),
        textcoords="offset points",
        va="center",
    )


def make_figure(ds: xr.Dataset) -> plt.Figure:
    """2 x 3: strong (top) and weak (bottom) error against steps, one column per SDE, reference slopes."""
    names = list(ds.sde.values)
    fig, axes = plt.subplots(2, len(names), figsize=(5 * len(names), 9), squeeze=False)
    steps = ds.steps.values
    for row, kind in enumerate(("strong", "weak")):
        for col, s in enumerate(names):
            ax = axes[row, col]
            top = 0.0
            for m in ds.integrator.values:
                e = ds[f"{kind}_error"].sel(sde=s, integrator=m).values
                se = ds[f"{kind}_se"].sel(sde=s, integrator=m).values
                o = float(ds.order.sel(sde=s, integrator=m, kind=kind))
                th = float(ds.theory.sel(integrator=m, kind=kind))
                good = (e > K_SE * se) | (kind == "strong")
                ax.errorbar(
                    steps,
                    e,
                    yerr=se,
                    color=COLORS[m],
                    marker=MARKERS[m],
                    ms=4,
                    lw=1,
                    capsize=2,
                    label=f"{m}: {o:.2f} (theory {th:g})",
                )
                ax.scatter(steps[~good], e[~good], s=60, facecolor="none", edgecolor="0.4", zorder=3)
                top = max(top, float(np.nanmax(e)))
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            for order, frac in ((1.0, 1.0), (1.5, 0.1), (2.0, 0.01)):
                _slope_line(ax, steps, top * frac, order, f"slope −{order:g}")
            ax.legend(fontsize=7, loc="lower left", title="observed order", title_fontsize=7)
            ylabel = "RMS |X_N − X_ref|" if kind == "strong" else "‖E φ(X_N) − E φ(X_ref)‖"
            ax.set(xlabel="steps N", ylabel=ylabel, title=f"{s}: {kind} error")
    fig.suptitle(
        f"Reverse-time integrators on '{ds.attrs['target']}' with its exact score "
        f"({ds.attrs['n_paths']} paths; open circles: weak error below {K_SE:g} s.e., not fitted)",
        fontsize=10,
    )
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------
# entry point
# ---------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = _io.study_parser(STUDY, __doc__, "publication size (more paths, finer steps)", DEFAULT_OUT, sweep=True)
    ap.add_argument(
        "--target", default=None, choices=sorted(TARGETS), help=f"Gaussian-mixture target (default {DEFAULT.target})"
    )
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the study, write the outputs, print the tables (unless ``--quiet``); returns 0."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    out = _io.prepare(args)
    size = _io.size(args)
    cfg = {"full": FULL, "docs": DOCS}.get(size, DEFAULT)
    if args.target:
        cfg = replace(cfg, target=args.target)
    start = time.perf_counter()

    with _sweep.Sweep.from_args(args) as sweep:
        ds = run_convergence(cfg, progress=not args.quiet, sweep=sweep)
    checks = run_checks(cfg)
    elapsed = time.perf_counter() - start
    ds.attrs = {
        **_io.provenance(STUDY, argv, size=size, **asdict(cfg)),
        **ds.attrs,
        **{f"check_{k}": v for k, v in checks.items()},
        "study_wall_time_s": round(elapsed, 1),
    }
    _io.write_netcdf(ds, out / "convergence.nc")
    _io.save_figures(out, {"figure": make_figure(ds)})
    _io.report(
        args,
        _io.write_tables(
            out,
            f"Convergence orders ({size} size)",
            ds.attrs,
            f"{elapsed:.0f} s",
            make_tables(ds, checks),
        ),
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
