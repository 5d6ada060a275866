r"""Single-step exponential integrators of the probability-flow ODE in data-prediction form:
:class:`DPMSolverPPSinglestep` (DPM-Solver++ "2S" and "3S", Lu et al. 2022) and the stage updates it shares
with the adaptive :class:`~scoresde.integrators.dpm_adaptive.AdaptiveDPMSolver`.

For a linear SDE with kernel :math:`\mathcal N(s(t) x_0, \sigma(t)^2 I)` and the half log-SNR
:math:`\lambda = \log(s/\sigma)`, the probability-flow ODE from :math:`x_s` at :math:`\lambda_s` to
:math:`\lambda_t = \lambda_s + h` is solved exactly in its linear part,

.. math::
    x_t = \frac{\sigma_t}{\sigma_s}\,x_s + s_t \int_{\lambda_s}^{\lambda_t} e^{-(\lambda_t - \lambda)}\,
          \hat x_0(x_\lambda, \lambda)\,d\lambda,

with :math:`\hat x_0 = (x + \sigma^2 s_\theta)/s` Tweedie's data prediction. A *single-step* method
approximates :math:`\hat x_0` on :math:`[\lambda_s, \lambda_t]` from evaluations at intermediate points
:math:`\lambda_{s_j} = \lambda_s + r_j h` of the same step (a Runge-Kutta method in :math:`\lambda`),
so it needs no history and starts at full order. With :math:`D_s = \hat x_0(x_s, s)`,
:math:`\varphi_1(h) = e^{-h} - 1` and :math:`\varphi_2(h) = \varphi_1(h)/h + 1`:

.. math::
    x^{(1)}_t &= \frac{\sigma_t}{\sigma_s} x_s - s_t \varphi_1(h) D_s \qquad \text{(order 1, DDIM)},\\
    x^{(2)}_t &= x^{(1)}_t - \frac{s_t \varphi_1(h)}{2 r_1}\,(D_{s_1} - D_s), \quad
        x_{s_1} = x^{(1)}_{s_1} \qquad \text{(order 2)},\\
    x^{(3)}_t &= x^{(1)}_t + \frac{s_t \varphi_2(h)}{r_2}\,(D_{s_2} - D_s), \quad
        x_{s_2} = x^{(1)}_{s_2} + \frac{r_2}{r_1}\, s_{s_2} \varphi_2(r_2 h)\,(D_{s_1} - D_s)
        \qquad \text{(order 3)},

where :math:`x^{(1)}_{u}` is the first-order update from :math:`s` to :math:`u` and :math:`D_{s_j} =
\hat x_0(x_{s_j}, s_j)`. These are the updates of DPM-Solver++ (Lu et al. 2022, singlestep,
``solver_type="dpmsolver"``); the order-2 method uses :math:`r_1 = 1/2` and the order-3 one
:math:`r_1 = 1/3,\ r_2 = 2/3`. The intermediate times :math:`s_j` are found by inverting
:math:`\lambda(t)` (:func:`scoresde.time_grids.invert_log_snr`); they lie strictly inside the step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .._checks import check_positive_int
from .._kernels import check_linear, kernel, time_vector, tweedie
from ..sde import SDE
from ..time_grids import TimeGrid, get_grid, invert_log_snr, log_snr
from .base import CountedScore, FixedStepSampler
from .fixed_grid import OnGrid

__all__ = [
    "DPMSolverPPSinglestep",
    "STAGE_RATIOS",
    "data_prediction",
    "first_order_update",
    "stage_update",
    "third_order_stage",
    "stage_times",
]

#: order -> the intermediate points r_j of a step (fractions of h in lambda)
STAGE_RATIOS: dict[int, tuple[float, ...]] = {1: (), 2: (0.5,), 3: (1.0 / 3.0, 2.0 / 3.0)}


def data_prediction(score_fn: CountedScore, x: torch.Tensor, t: float, s: float, sigma: float) -> torch.Tensor:
    r"""Tweedie's :math:`\hat x_0(x, t) = (x + \sigma^2 s_\theta(x, t))/s` (one score evaluation)."""
    return tweedie(x, score_fn(x, time_vector(t, x)), s, sigma)


def first_order_update(
    x: torch.Tensor, d_s: torch.Tensor, ks: tuple[float, float, float], kt: tuple[float, float, float]
) -> torch.Tensor:
    r""":math:`x^{(1)}_t = (\sigma_t/\sigma_s)\,x_s - s_t \varphi_1(h) D_s` with ``ks``, ``kt`` the
    :math:`(s, \sigma, \lambda)` of :func:`scoresde._kernels.kernel` at :math:`s` and :math:`t`."""
    h = kt[2] - ks[2]
    return (kt[1] / ks[1]) * x - (kt[0] * math.expm1(-h)) * d_s


def stage_update(
    order: int,
    x: torch.Tensor,
    d_s: torch.Tensor,
    d_stages: list[torch.Tensor],
    ratios: tuple[float, ...],
    ks: tuple[float, float, float],
    kt: tuple[float, float, float],
) -> torch.Tensor:
    r"""The order-``order`` update from :math:`s` to :math:`t` (module docstring) from :math:`D_s` and the
    data predictions ``d_stages`` at the intermediate points ``ratios`` (:math:`r_1` for order 2; :math:`r_1, r_2`
    for order 3, of which only :math:`D_{s_2}` enters the final combination)."""
    out = first_order_update(x, d_s, ks, kt)
    if order == 1:
        return out
    h = kt[2] - ks[2]
    phi1 = math.expm1(-h)
    if order == 2:
        return out - (0.5 * kt[0] * phi1 / ratios[0]) * (d_stages[0] - d_s)
    phi2 = phi1 / h + 1.0
    return out + (kt[0] * phi2 / ratios[1]) * (d_stages[1] - d_s)


def third_order_stage(
    x: torch.Tensor,
    d_s: torch.Tensor,
    d_1: torch.Tensor,
    ratios: tuple[float, float],
    ks: tuple[float, float, float],
    k2: tuple[float, float, float],
) -> torch.Tensor:
    r"""The second intermediate state of the order-3 step, :math:`x_{s_2}` (module docstring)."""
    r1, r2 = ratios
    h2 = k2[2] - ks[2]  # = r2 h
    phi22 = math.expm1(-h2) / h2 + 1.0
    return first_order_update(x, d_s, ks, k2) + ((r2 / r1) * k2[0] * phi22) * (d_1 - d_s)


def stage_times(sde: SDE, t: float, t_next: float, ratios: tuple[float, ...], eps: float) -> list[float]:
    r"""The times :math:`s_j` with :math:`\lambda(s_j) = \lambda(t) + r_j(\lambda(t_{next}) - \lambda(t))`,
    strictly between ``t_next`` and ``t`` (float64)."""
    if not ratios:
        return []
    lam = log_snr(sde, np.array([t, t_next]))
    out = invert_log_snr(sde, lam[0] + np.asarray(ratios) * (lam[1] - lam[0]), eps)
    return [float(min(max(u, t_next), t)) for u in out]


@dataclass
class _Stages:
    """Per-run state: the score function and, per grid time, the intermediate times of its step."""

    score_fn: CountedScore
    times: dict[float, list[float]]


class DPMSolverPPSinglestep(OnGrid, FixedStepSampler):
    r"""DPM-Solver++ single-step (Lu et al. 2022): order 2 ("2S") or 3 ("3S") on any time grid.

    Every step from :math:`t_i` to :math:`t_{i+1}` is the order-``order`` update of the module docstring:
    it evaluates the score at :math:`x_{t_i}` and at ``order - 1`` intermediate points of the same step, so
    NFE = ``order * steps`` and every step (the first included) has the full order (``to_zero=True``: the last of
    the ``steps`` is the data prediction, landing on :math:`\sigma = 0`). Order 1 is
    :class:`~scoresde.DDIM` with ``eta=0``. Also built by ``DPMSolverPP(order, steps, multistep=False)``.

    Parameters
    ----------
    order : {1, 2, 3}
        Order of every step. Default 2.
    steps : int
        Number of steps :math:`N` (NFE = ``order * steps``). Default 10.
    grid : str or TimeGrid
        Time grid; default ``"logsnr"`` (constant :math:`h`).
    eps : float
        Final time. Default 1e-3.
    denoise : bool
        Finish with the Tweedie step (one more NFE). Default False.
    to_zero : bool
        End at :math:`\sigma = 0` within ``steps``: ``steps - 1`` single-step updates on the grid of
        ``steps - 1`` steps, then the data prediction at its end (:mod:`scoresde.integrators.fixed_grid`), so
        NFE = ``order * (steps - 1) + 1``. Default False.
    """

    stochastic = False

    def __init__(
        self,
        order: int = 2,
        steps: int = 10,
        grid: str | TimeGrid = "logsnr",
        eps: float = 1e-3,
        denoise: bool = False,
        to_zero: bool = False,
    ) -> None:
        super().__init__(steps, eps, denoise)
        self.set_to_zero(to_zero)
        self.order = check_positive_int("order", order)
        if self.order > 3:
            raise ValueError(f"order must be 1, 2 or 3, got {order!r}")
        self.time_grid = get_grid(grid)

    def params(self) -> dict[str, Any]:
        return {
            "order": self.order,
            "steps": self.steps,
            "grid": repr(self.time_grid),
            "multistep": False,
            "eps": self.eps,
            "denoise": self.denoise,
            "to_zero": self.to_zero,
        }

    @property
    def nfe_per_step(self) -> int | None:
        """``order`` score evaluations per step."""
        return self.order

    def expected_nfe(self, sde: SDE) -> int | None:
        """``order`` per grid step, one for the final step of ``to_zero`` or ``denoise``."""
        return self.order * self.grid_steps + int(self.to_zero) + int(self.denoise)

    def check(self, sde: SDE) -> None:
        super().check(sde)
        check_linear(self, sde)
        self.check_grid(sde)

    def prepare(self, sde: SDE, score_fn: CountedScore) -> _Stages:
        return self.prepare_run(sde, score_fn, self.time_points(sde))

    def prepare_run(self, sde: SDE, score_fn: CountedScore, grid: np.ndarray) -> _Stages:
        ratios = STAGE_RATIOS[self.order]
        times: dict[float, list[float]] = {}
        if ratios and len(grid) > 1:  # one vectorised inversion of lambda for all intermediate points of the run
            lam = log_snr(sde, grid)
            h = np.diff(lam)
            targets = lam[:-1, None] + np.asarray(ratios)[None, :] * h[:, None]
            inner = invert_log_snr(sde, targets.ravel(), self.eps).reshape(targets.shape)
            inner = np.clip(inner, grid[1:, None], grid[:-1, None])
            times = {float(t): [float(u) for u in row] for t, row in zip(grid[:-1], inner, strict=True)}
        return _Stages(score_fn, times)

    def step(
        self, st: _Stages, sde: SDE, x: torch.Tensor, t: float, t_next: float, generator: torch.Generator
    ) -> torch.Tensor:
        ratios = STAGE_RATIOS[self.order]
        ks, kt = kernel(sde, t), kernel(sde, t_next)
        d_s = data_prediction(st.score_fn, x, t, ks[0], ks[1])
        if self.order == 1:
            return first_order_update(x, d_s, ks, kt)
        inner = st.times.get(t)
        if inner is None:  # a step that prepare() did not see (a direct call): invert lambda here
            inner = stage_times(sde, t, t_next, ratios, self.eps)
        k1 = kernel(sde, inner[0])
        x1 = first_order_update(x, d_s, ks, k1)
        d1 = data_prediction(st.score_fn, x1, inner[0], k1[0], k1[1])
        if self.order == 2:
            return stage_update(2, x, d_s, [d1], ratios, ks, kt)
        k2 = kernel(sde, inner[1])
        x2 = third_order_stage(x, d_s, d1, (ratios[0], ratios[1]), ks, k2)
        d2 = data_prediction(st.score_fn, x2, inner[1], k2[0], k2[1])
        return stage_update(3, x, d_s, [d1, d2], ratios, ks, kt)
