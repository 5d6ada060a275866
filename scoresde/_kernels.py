r"""Coefficient helpers of linear SDEs shared by the integrators.

A :class:`~scoresde.LinearSDE` has the Gaussian perturbation kernel :math:`\mathcal N(s(t)\,x_0, \sigma(t)^2 I)`.
The integrators use, as Python floats computed in float64,

* :math:`s(t)`, :math:`\sigma(t)` and the half log-SNR :math:`\lambda(t) = \log(s(t)/\sigma(t))` (:func:`kernel`);
* Tweedie's data prediction :math:`\hat x_0 = (x + \sigma^2 s_\theta(x, t))/s` (:func:`tweedie`);
* the capabilities that some steps need: a *variance-preserving* kernel, :math:`s(t)^2 + \sigma(t)^2 = 1`
  (VP, DDPM; not sub-VP), and a *variance-exploding* one, :math:`s(t) \equiv 1` (VE). Both are tested on
  the kernel itself at a few times, not on the SDE's class, so a user's :class:`~scoresde.LinearSDE` with
  such a kernel qualifies.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from .sde import SDE, LinearSDE
from .time_grids import log_coefs

__all__ = [
    "time_vector",
    "randn_like",
    "kernel",
    "kernel_table",
    "tweedie",
    "check_linear",
    "is_variance_preserving",
    "is_variance_exploding",
    "singular_at_T",
    "ddpm_step",
]


def time_vector(t: float, x: torch.Tensor) -> torch.Tensor:
    """The time ``t`` as a ``(batch,)`` vector in ``x``'s dtype and device (what a score function receives)."""
    return torch.full((x.shape[0],), t, dtype=x.dtype, device=x.device)


def randn_like(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    r""":math:`z \sim \mathcal N(0, I)` shaped like ``x`` (its dtype and device), drawn from ``generator``."""
    return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)


def kernel(sde: SDE, t: float) -> tuple[float, float, float]:
    r"""Return :math:`(s(t), \sigma(t), \lambda(t))` as Python floats computed in float64 (``TypeError``
    unless ``sde`` is a :class:`~scoresde.LinearSDE`)."""
    ((_, coefs),) = kernel_table(sde, [t]).items()
    return coefs


def kernel_table(sde: SDE, times: Any) -> dict[float, tuple[float, float, float]]:
    r""":func:`kernel` at every time of ``times`` (e.g. a run's grid), from one vectorised evaluation:
    ``{t: (s(t), sigma(t), lambda(t))}`` with Python-float keys and values."""
    ts = np.asarray(times, dtype=np.float64).reshape(-1)
    log_s, log_sigma = log_coefs(sde, ts)
    return {
        t: (math.exp(a), math.exp(b), a - b)
        for t, a, b in zip(ts.tolist(), log_s.reshape(-1).tolist(), log_sigma.reshape(-1).tolist(), strict=True)
    }


def tweedie(x: torch.Tensor, score: torch.Tensor, s: float | torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
    r"""Tweedie's data prediction :math:`\hat x_0 = (x + \sigma^2 s_\theta)/s`."""
    if isinstance(sigma, float) and isinstance(s, float):
        return torch.add(x, score, alpha=sigma**2).div_(s)
    return (x + sigma**2 * score) / s


def require_linear(sde: SDE, who: str) -> LinearSDE:
    """``sde`` if it is a :class:`~scoresde.LinearSDE`; else ``ValueError`` naming ``who``."""
    if not isinstance(sde, LinearSDE):
        raise ValueError(
            f"{who} needs a linear SDE (kernel N(s(t) x0, sigma(t)^2 I)): VPSDE, SubVPSDE, "
            f"VESDE or a LinearSDE subclass, got {type(sde).__name__}"
        )
    return sde


def check_linear(sampler: object, sde: SDE) -> None:
    """Raise ``ValueError`` naming ``sampler`` unless ``sde`` is a :class:`~scoresde.LinearSDE`."""
    require_linear(sde, type(sampler).__name__)


def _probe_times(sde: SDE) -> torch.Tensor:
    return torch.tensor(np.linspace(0.0, sde.T, 5)[1:], dtype=torch.float64)


def is_variance_preserving(sde: SDE) -> bool:
    r"""Whether ``sde`` is linear with :math:`s(t)^2 + \sigma(t)^2 = 1` (to :math:`10^{-9}`) at four times in
    :math:`(0, T]`: VP and DDPM, not sub-VP or VE."""
    if not isinstance(sde, LinearSDE):
        return False
    t = _probe_times(sde)
    s, sigma = sde.mean_coef(t).to(torch.float64), sde.std(t).to(torch.float64)
    return bool(torch.all(torch.abs(s**2 + sigma**2 - 1.0) <= 1e-9))


def is_variance_exploding(sde: SDE) -> bool:
    r"""Whether ``sde`` is linear with :math:`s(t) = 1` exactly at four times in :math:`(0, T]` (VE)."""
    if not isinstance(sde, LinearSDE):
        return False
    return bool(torch.all(sde.mean_coef(_probe_times(sde)) == 1.0))


def singular_at_T(sde: SDE) -> bool:
    """Whether :math:`s(T) = 0` (the path ends in pure noise, as for :class:`~scoresde.RectifiedFlow`)."""
    return isinstance(sde, LinearSDE) and float(sde.mean_coef(torch.tensor(sde.T, dtype=torch.float64))) == 0.0


def ddpm_step(
    x: torch.Tensor, score: torch.Tensor, beta: float, noise_std: float, z: torch.Tensor | None
) -> torch.Tensor:
    r"""One DDPM ancestral step :math:`x' = (x + \beta\,s_\theta)/\sqrt{1 - \beta} + \sigma z` (Ho et al. 2020,
    Algorithm 2 with :math:`\hat\varepsilon = -\sqrt{1 - \bar\alpha}\,s_\theta`); no noise when ``z`` is None."""
    x = (x + beta * score) / math.sqrt(1 - beta)
    return x if z is None else x.add_(noise_std * z)
