r"""EDM's stochastic sampler (Karras et al. 2022, Algorithm 2) for every linear SDE: :class:`EDMStochastic`.

EDM works in the variables

.. math::
    \tilde x = x / s(t), \qquad \tilde\sigma(t) = \sigma(t) / s(t) = e^{-\lambda(t)},

in which every linear SDE with kernel :math:`\mathcal N(s(t) x_0, \sigma(t)^2 I)` becomes the variance-exploding
one, :math:`\tilde x_t = x_0 + \tilde\sigma(t)\,z`, whose probability-flow ODE is

.. math::
    \frac{d\tilde x}{d\tilde\sigma} = \frac{\tilde x - D(\tilde x, \tilde\sigma)}{\tilde\sigma}, \qquad
    D = \hat x_0 = \frac{x + \sigma(t)^2 s_\theta(x, t)}{s(t)} \quad \text{(Tweedie's formula)}.

The sampler alternates a *churn* — noise added to raise the noise level from :math:`\tilde\sigma_i` to
:math:`\hat\sigma_i = (1 + \gamma_i)\tilde\sigma_i`, which moves :math:`\tilde x` along the forward process and
so keeps the marginal — with a Heun step of this ODE from :math:`\hat\sigma_i` down to :math:`\tilde\sigma_{i+1}`.
The score is evaluated at the time :math:`\hat t_i` with :math:`\tilde\sigma(\hat t_i) = \hat\sigma_i`
(:func:`scoresde.time_grids.invert_log_snr`). VE (:math:`s \equiv 1`) is the setting of the paper; VP, sub-VP
and DDPM need nothing else.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .._checks import check_positive
from .._kernels import check_linear, kernel, randn_like, time_vector, tweedie
from ..sde import SDE
from ..time_grids import TimeGrid, get_grid, invert_log_snr, log_snr
from .base import CountedScore, FixedStepSampler
from .fixed_grid import OnGrid

__all__ = ["EDMStochastic"]


@dataclass
class _ChurnPlan:
    """Per-run state: the counted score, the grid, and per step the churned time and its kernel."""

    score_fn: CountedScore
    times: np.ndarray
    gammas: np.ndarray
    t_hat: np.ndarray
    step: int = 0


class EDMStochastic(OnGrid, FixedStepSampler):
    r"""EDM's stochastic sampler (Karras et al. 2022, Algorithm 2) in the variables :math:`\tilde x = x/s`,
    :math:`\tilde\sigma = \sigma/s`, on any time grid and any linear SDE.

    Step :math:`i` (from :math:`t_i` to :math:`t_{i+1}`), with :math:`\tilde\sigma_i = \tilde\sigma(t_i)`,
    :math:`\tilde x_i = x_i / s(t_i)` and
    :math:`d(\tilde x, \tilde\sigma) = (\tilde x - D(\tilde x, \tilde\sigma))/\tilde\sigma`:

    .. math::
        \gamma_i = \begin{cases} \min\big(S_\text{churn}/N,\ \sqrt2 - 1,\ \tilde\sigma(T)/\tilde\sigma_i - 1\big)
                   & S_\text{tmin} \le \tilde\sigma_i \le S_\text{tmax} \\ 0 & \text{otherwise} \end{cases},
        \qquad \hat\sigma_i = (1 + \gamma_i)\,\tilde\sigma_i,

        \hat x = \tilde x_i + \sqrt{\hat\sigma_i^2 - \tilde\sigma_i^2}\,S_\text{noise}\,z_i, \quad
        z_i \sim \mathcal N(0, I),

        \tilde x' = \hat x + (\tilde\sigma_{i+1} - \hat\sigma_i)\,d(\hat x, \hat\sigma_i), \qquad
        \tilde x_{i+1} = \hat x + \tfrac12(\tilde\sigma_{i+1} - \hat\sigma_i)
                         \big[d(\hat x, \hat\sigma_i) + d(\tilde x', \tilde\sigma_{i+1})\big],

    and :math:`x_{i+1} = s(t_{i+1})\,\tilde x_{i+1}`. The third bound on :math:`\gamma_i` (ours) keeps
    :math:`\hat\sigma_i \le \tilde\sigma(T)`, so the score is never evaluated after :math:`T`; in particular
    the first step, which starts from fresh noise :math:`x_T`, has no churn. :math:`\tilde\sigma(\varepsilon) > 0`,
    so every step, the last included, is a Heun step: NFE = ``2 * steps``. With ``S_churn = 0`` the sampler is
    deterministic: Heun's method on the probability-flow ODE in :math:`(\tilde\sigma, \tilde x)` (EDM's
    Algorithm 1).

    Parameters
    ----------
    steps : int
        Number of steps :math:`N` (NFE = :math:`2N`). Default 10.
    grid : str or TimeGrid
        Time grid; default ``"karras"`` (EDM's schedule, :math:`\rho = 7`).
    S_churn : float
        Total churn :math:`S_\text{churn} \ge 0`; :math:`\gamma_i = S_\text{churn}/N` per step (at most
        :math:`\sqrt2 - 1`). Default 10.
    S_tmin, S_tmax : float
        The churn acts only while :math:`S_\text{tmin} \le \tilde\sigma_i \le S_\text{tmax}`. Defaults 0 and
        ``inf``.
    S_noise : float
        Scale of the churn noise (:math:`> 1` slightly over-injects to offset a denoiser's bias).
        Default 1.
    eps : float
        Final time. Default 1e-3.
    denoise : bool
        Finish with the Tweedie step (one more NFE). Default False.
    """

    def __init__(
        self,
        steps: int = 10,
        grid: str | TimeGrid = "karras",
        S_churn: float = 10.0,
        S_tmin: float = 0.0,
        S_tmax: float = math.inf,
        S_noise: float = 1.0,
        eps: float = 1e-3,
        denoise: bool = False,
    ) -> None:
        super().__init__(steps, eps, denoise)
        self.time_grid = get_grid(grid)
        self.S_churn = check_positive("S_churn", S_churn, allow_zero=True)
        self.S_tmin = check_positive("S_tmin", S_tmin, allow_zero=True)
        given: object = S_tmax  # callers may pass anything
        if isinstance(given, bool) or not isinstance(given, (int, float)) or math.isnan(given):
            raise TypeError(f"S_tmax must be a real number (math.inf for no upper bound), got {S_tmax!r}")
        self.S_tmax = float(given)
        if self.S_tmax < self.S_tmin:
            raise ValueError(f"S_tmax={S_tmax!r} must be >= S_tmin={S_tmin!r}")
        self.S_noise = check_positive("S_noise", S_noise, allow_zero=True)
        self.stochastic = self.S_churn > 0 and self.S_noise > 0

    @property
    def nfe_per_step(self) -> int | None:
        """Two score evaluations per step (Heun)."""
        return 2

    def params(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "grid": repr(self.time_grid),
            "S_churn": self.S_churn,
            "S_tmin": self.S_tmin,
            "S_tmax": self.S_tmax,
            "S_noise": self.S_noise,
            "eps": self.eps,
            "denoise": self.denoise,
        }

    def check(self, sde: SDE) -> None:
        super().check(sde)
        check_linear(self, sde)

    def churn(self, sde: SDE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        r"""The grid :math:`t_i`, the churn factors :math:`\gamma_i` and the churned times :math:`\hat t_i`
        (:math:`\tilde\sigma(\hat t_i) = (1 + \gamma_i)\tilde\sigma(t_i)`; :math:`\hat t_i = t_i` where
        :math:`\gamma_i = 0`) of the :math:`N` steps, all float64."""
        times = self.time_points(sde)
        level = np.exp(-log_snr(sde, times[:-1]))  # sigma~(t_i), i = 0..N-1
        top = math.exp(-float(log_snr(sde, sde.T)))
        inside = (level >= self.S_tmin) & (level <= self.S_tmax)
        cap = np.maximum(top / level - 1.0, 0.0)
        gammas = np.where(inside, np.minimum(min(self.S_churn / self.steps, math.sqrt(2.0) - 1.0), cap), 0.0)
        t_hat = times[:-1].copy()
        churned = gammas > 0
        if churned.any():
            lam_hat = -np.log(level[churned] * (1.0 + gammas[churned]))
            t_hat[churned] = np.maximum(invert_log_snr(sde, lam_hat, self.eps), times[:-1][churned])
        return times, gammas, t_hat

    def prepare(self, sde: SDE, score_fn: CountedScore) -> _ChurnPlan:
        times, gammas, t_hat = self.churn(sde)
        return _ChurnPlan(score_fn, times, gammas, t_hat)

    def step(
        self, plan: _ChurnPlan, sde: SDE, x: torch.Tensor, t: float, t_next: float, generator: torch.Generator
    ) -> torch.Tensor:
        i = plan.step
        plan.step += 1
        score_fn = plan.score_fn
        s, sigma, _ = kernel(sde, t)
        s2, sigma2, _ = kernel(sde, t_next)
        level, level2 = sigma / s, sigma2 / s2
        xt = x / s
        t_hat = float(plan.t_hat[i])
        if t_hat > t:
            s_hat, sigma_hat, _ = kernel(sde, t_hat)
            level_hat = sigma_hat / s_hat
            std = math.sqrt(max(level_hat**2 - level**2, 0.0)) * self.S_noise
            xt = xt + std * randn_like(x, generator)
        else:
            s_hat, sigma_hat, level_hat = s, sigma, level
        x_hat = s_hat * xt
        d = (xt - tweedie(x_hat, score_fn(x_hat, time_vector(t_hat, x)), s_hat, sigma_hat)) / level_hat
        dl = level2 - level_hat
        x_euler = xt + dl * d
        x_pred = s2 * x_euler
        d2 = (x_euler - tweedie(x_pred, score_fn(x_pred, time_vector(t_next, x)), s2, sigma2)) / level2
        return s2 * (xt + (0.5 * dl) * (d + d2))
