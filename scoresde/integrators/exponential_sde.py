r"""Stochastic exponential integrators in data-prediction form: :class:`DPMSolverPPSDE` and :class:`ERSDE`.

Both work in the EDM variables :math:`\tilde x = x/s(t)`, :math:`\tilde\sigma = \sigma(t)/s(t) = e^{-\lambda(t)}`,
in which every linear SDE is the variance-exploding one, and integrate a member of the family of reverse-time
SDEs with the marginals of the forward process: the probability-flow ODE plus Langevin dynamics of strength
:math:`\beta(\tilde\sigma) \ge 0`,

.. math::
    d\tilde x = \frac{\tilde\sigma + \beta}{\tilde\sigma^2}\,\big(\tilde x - D(\tilde x, \tilde\sigma)\big)\,
    d\tilde\sigma + \sqrt{2\beta}\,d\bar w, \qquad D = \hat x_0 = \frac{x + \sigma^2 s_\theta(x, t)}{s}.

Writing the linear part through a *noise scale function* :math:`\varphi` with
:math:`\varphi'/\varphi = (\tilde\sigma + \beta)/\tilde\sigma^2` (Cui et al. 2023), the solution from
:math:`\tilde\sigma_i` to :math:`\tilde\sigma_{i+1} < \tilde\sigma_i` is exactly

.. math::
    \tilde x_{i+1} = \frac{\varphi_{i+1}}{\varphi_i}\,\tilde x_i
        + \varphi_{i+1} \int_{\tilde\sigma_{i+1}}^{\tilde\sigma_i} \frac{\varphi'(\sigma)}{\varphi(\sigma)^2}\,
          D(\tilde x_\sigma, \sigma)\,d\sigma
        + \sqrt{\tilde\sigma_{i+1}^2 - \tilde\sigma_i^2\,\varphi_{i+1}^2/\varphi_i^2}\;z,
        \qquad z \sim \mathcal N(0, I),

(the noise variance is :math:`\varphi_{i+1}^2\int 2\beta/\varphi^2\,d\sigma`), and the solvers differ in
how they approximate :math:`D` under the integral from the current and previous evaluations.
:math:`\varphi(\sigma) = \sigma` is the probability-flow ODE (DDIM), :math:`\varphi(\sigma) = \sigma^2` the
reverse SDE of Song et al. (2021); :math:`\varphi(\sigma)/\sigma` must be nondecreasing (:math:`\beta \ge 0`).
When the data distribution is a point mass, :math:`D` is constant and both solvers are exact in distribution
for any steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy.integrate import quad

from .._checks import check_positive, check_positive_int
from .._kernels import check_linear, kernel, randn_like, time_vector, tweedie
from ..sde import SDE
from ..time_grids import TimeGrid, get_grid, log_snr
from .base import CountedScore, FixedStepSampler
from .fixed_grid import OnGrid

__all__ = ["DPMSolverPPSDE", "ERSDE", "er_sde_noise_scale"]


@dataclass
class _Memory:
    """Per-run state of a multistep solver: the counted score, the previous data predictions and their
    abscissae (lambda or sigma~), and precomputed per-step weights."""

    score_fn: CountedScore
    lower_final: bool = False
    step: int = 0
    at: list[float] = field(default_factory=list)
    x0s: list[torch.Tensor] = field(default_factory=list)
    weights: list[tuple[float, ...]] = field(default_factory=list)


class _StochasticMultistep(OnGrid, FixedStepSampler):
    """What the two solvers share: a time grid, a linear SDE, one score evaluation per step."""

    @property
    def nfe_per_step(self) -> int | None:
        """One score evaluation per step (none at ``eps``)."""
        return 1

    def check(self, sde: SDE) -> None:
        super().check(sde)
        check_linear(self, sde)


class DPMSolverPPSDE(_StochasticMultistep):
    r"""SDE-DPM-Solver++ (Lu et al. 2022), first order or multistep second order ("2M"), with the exact
    Ornstein–Uhlenbeck noise term; :math:`\eta` scales the injected noise.

    The member :math:`\varphi(\tilde\sigma) = \tilde\sigma^{1+\eta}` of the family in the module docstring:
    :math:`\eta = 1` is the reverse SDE, :math:`\eta = 0` the probability-flow ODE. With
    :math:`\lambda = -\log\tilde\sigma`, :math:`h = \lambda_{i+1} - \lambda_i > 0` and :math:`a = 1 + \eta`,
    the data prediction :math:`D` is taken linear in :math:`\lambda` through the current and previous
    evaluations, :math:`D(\lambda) = D_i + (\lambda - \lambda_i)(D_i - D_{i-1})/h_{i-1}`, and integrated exactly:

    .. math::
        \tilde x_{i+1} = e^{-a h}\,\tilde x_i + (1 - e^{-a h})\,D_i
            + \Big(1 - \frac{1 - e^{-a h}}{a h}\Big)\frac{h}{h_{i-1}}\,(D_i - D_{i-1})
            + \tilde\sigma_{i+1}\sqrt{1 - e^{-2\eta h}}\;S_\text{noise}\,z_i,

    and :math:`x_{i+1} = s(t_{i+1})\tilde x_{i+1}`; the first step (and, with ``order=1``, every step) drops
    the :math:`D_i - D_{i-1}` term. NFE = ``steps``.

    Parameters
    ----------
    order : {1, 2}
        1: SDE-DPM-Solver++1; 2 (default): the multistep 2M.
    steps : int
        Number of steps :math:`N` (= NFE). Default 20.
    grid : str or TimeGrid
        Time grid; default ``"logsnr"`` (constant :math:`h`).
    eta : float
        Noise scale :math:`\eta \ge 0`; default 1 (the reverse SDE).
    S_noise : float
        Multiplies the noise; default 1.
    lower_order_final : bool
        Make the last step first order when ``steps < 15`` or when the grid's last :math:`\lambda`-step is more
        than twice the one before it (as :class:`~scoresde.DPMSolverPP`). Default True.
    eps : float
        Final time. Default 1e-3.
    denoise : bool
        Finish with the Tweedie step (one more NFE). Default False.
    """

    def __init__(
        self,
        order: int = 2,
        steps: int = 20,
        grid: str | TimeGrid = "logsnr",
        eta: float = 1.0,
        S_noise: float = 1.0,
        lower_order_final: bool = True,
        eps: float = 1e-3,
        denoise: bool = False,
    ) -> None:
        super().__init__(steps, eps, denoise)
        self.order = check_positive_int("order", order)
        if self.order > 2:
            raise ValueError(f"order must be 1 or 2, got {order!r}")
        self.time_grid = get_grid(grid)
        self.eta = check_positive("eta", eta, allow_zero=True)
        self.S_noise = check_positive("S_noise", S_noise, allow_zero=True)
        self.lower_order_final = bool(lower_order_final)
        self.stochastic = self.eta > 0 and self.S_noise > 0

    def params(self) -> dict[str, Any]:
        return {
            "order": self.order,
            "steps": self.steps,
            "grid": repr(self.time_grid),
            "eta": self.eta,
            "S_noise": self.S_noise,
            "lower_order_final": self.lower_order_final,
            "eps": self.eps,
            "denoise": self.denoise,
        }

    def lowers_final_order(self, sde: SDE) -> bool:
        """Whether the last step is first order on ``sde``'s grid."""
        if not self.lower_order_final or self.order == 1:
            return False
        if self.steps < 15:
            return True
        lam = log_snr(sde, self.time_points(sde))
        return bool(lam[-1] - lam[-2] > 2.0 * (lam[-2] - lam[-3]))

    def prepare(self, sde: SDE, score_fn: CountedScore) -> _Memory:
        return _Memory(score_fn, lower_final=self.lowers_final_order(sde))

    def step(
        self, mem: _Memory, sde: SDE, x: torch.Tensor, t: float, t_next: float, generator: torch.Generator
    ) -> torch.Tensor:
        s, sigma, lam = kernel(sde, t)
        s2, sigma2, lam2 = kernel(sde, t_next)
        d0 = tweedie(x, mem.score_fn(x, time_vector(t, x)), s, sigma)
        h = lam2 - lam
        a = 1.0 + self.eta
        decay = -math.expm1(-a * h)  # 1 - e^{-a h}
        # x_{i+1} = s' (e^{-a h} x / s + (1 - e^{-a h}) D_i + ...): e^{-a h} s'/s = (sigma'/sigma) e^{-eta h}
        out = ((sigma2 / sigma) * math.exp(-self.eta * h)) * x + (s2 * decay) * d0
        last = mem.step == self.steps - 1
        if self.order == 2 and mem.x0s and not (last and mem.lower_final):
            h_prev = lam - mem.at[-1]
            coef = s2 * (1.0 - decay / (a * h)) * (h / h_prev)
            out = out + coef * (d0 - mem.x0s[-1])
        mem.x0s[:] = [d0]
        mem.at[:] = [lam]
        mem.step += 1
        if self.stochastic:
            std = sigma2 * math.sqrt(-math.expm1(-2.0 * self.eta * h)) * self.S_noise
            out = out + std * randn_like(x, generator)
        return out


def _log_quad(f: Callable[[float], float], lo: float, hi: float, scale: float) -> float:
    r""":math:`\int_{lo}^{hi} f(u)\,du` by :func:`scipy.integrate.quad` in :math:`v = \log u` (smooth over the
    decades a noise-level step can span); ``scale`` bounds the integral's magnitude (sets the absolute tolerance)."""
    value: float = quad(
        lambda v: f(math.exp(v)) * math.exp(v),
        math.log(lo),
        math.log(hi),
        epsabs=1e-13 * scale,
        epsrel=1e-11,
        limit=200,
    )[0]
    return value


def er_sde_noise_scale(sigma: float) -> float:
    r"""The noise scale function :math:`\varphi(\sigma) = \sigma\,(e^{\sigma^{0.3}} + 10)` recommended by Cui et
    al. (2023) ("ER SDE 5"): close to the probability-flow ODE at low noise, more stochastic at high noise."""
    return sigma * (math.exp(sigma**0.3) + 10.0)


class ERSDE(_StochasticMultistep):
    r"""ER-SDE-Solver (Cui et al. 2023): the extended reverse-time SDE of noise scale function :math:`\varphi`,
    multistep of order 1-3 in :math:`\tilde\sigma`.

    With the Newton interpolation of the data predictions through the last ``order`` evaluations,
    :math:`D(\sigma) \approx D_i + (\sigma - \tilde\sigma_i)\,D[i, i-1]
    + (\sigma - \tilde\sigma_i)(\sigma - \tilde\sigma_{i-1})\,D[i, i-1, i-2]` (divided differences in
    :math:`\tilde\sigma`), the integral of the module docstring becomes, with
    :math:`r_i = \varphi_{i+1}/\varphi_i`,

    .. math::
        \tilde x_{i+1} = r_i\,\tilde x_i + (1 - r_i)\,D_i + w_1\,D[i, i-1] + w_2\,D[i, i-1, i-2]
            + \sqrt{\tilde\sigma_{i+1}^2 - r_i^2\tilde\sigma_i^2}\;z_i,

        w_1 = \varphi_{i+1}\!\int_{\tilde\sigma_{i+1}}^{\tilde\sigma_i}\!\Big(\frac1{\varphi(\sigma)}
              - \frac1{\varphi_{i+1}}\Big)d\sigma, \qquad
        w_2 = 2\varphi_{i+1}\!\int_{\tilde\sigma_{i+1}}^{\tilde\sigma_i}\!(\sigma - \tilde\sigma_i)
              \Big(\frac1{\varphi(\sigma)} - \frac1{\varphi_{i+1}}\Big)d\sigma
              + (\tilde\sigma_i - \tilde\sigma_{i-1})\,w_1,

    (integration by parts of :math:`\int \varphi'/\varphi^2\,(\sigma - \tilde\sigma_i)^k`; the integrals are
    computed once per run with :func:`scipy.integrate.quad`), and :math:`x_{i+1} = s(t_{i+1})\tilde x_{i+1}`.
    The first steps use the orders the history allows. NFE = ``steps``.

    Parameters
    ----------
    order : {1, 2, 3}
        Multistep order; default 3.
    steps : int
        Number of steps :math:`N` (= NFE). Default 20.
    grid : str or TimeGrid
        Time grid; default ``"logsnr"``.
    noise_scale : callable
        :math:`\varphi`, a positive function of :math:`\tilde\sigma` (a float) with :math:`\varphi(\sigma)/\sigma`
        nondecreasing; default :func:`er_sde_noise_scale`. ``lambda s: s`` is the probability-flow ODE,
        ``lambda s: s**2`` the reverse SDE.
    eps : float
        Final time. Default 1e-3.
    denoise : bool
        Finish with the Tweedie step (one more NFE). Default False.
    """

    def __init__(
        self,
        order: int = 3,
        steps: int = 20,
        grid: str | TimeGrid = "logsnr",
        noise_scale: Callable[[float], float] = er_sde_noise_scale,
        eps: float = 1e-3,
        denoise: bool = False,
    ) -> None:
        super().__init__(steps, eps, denoise)
        self.order = check_positive_int("order", order)
        if self.order > 3:
            raise ValueError(f"order must be 1, 2 or 3, got {order!r}")
        self.time_grid = get_grid(grid)
        if not callable(noise_scale):
            raise TypeError(f"noise_scale must be a callable phi(sigma) -> float, got {type(noise_scale).__name__}")
        self.noise_scale = noise_scale

    def params(self) -> dict[str, Any]:
        return {
            "order": self.order,
            "steps": self.steps,
            "grid": repr(self.time_grid),
            "noise_scale": getattr(self.noise_scale, "__name__", repr(self.noise_scale)),
            "eps": self.eps,
            "denoise": self.denoise,
        }

    def _phi(self, sigma: float) -> float:
        value = self.noise_scale(sigma)
        try:
            phi = float(value)
        except (TypeError, ValueError):
            raise TypeError(f"noise_scale({sigma!r}) must return a number, got {type(value).__name__}") from None
        if not (math.isfinite(phi) and phi > 0):
            raise ValueError(f"noise_scale must be finite and > 0; noise_scale({sigma!r}) = {phi!r}")
        return phi

    def weights(self, sde: SDE) -> list[tuple[float, float, float, float]]:
        r"""Per step :math:`(r_i, \text{noise std in } \tilde x, w_1, w_2)`, computed in float64 (``ValueError``
        if :math:`\varphi(\sigma)/\sigma` decreases between two grid points, i.e. negative noise variance)."""
        level = np.exp(-log_snr(sde, self.time_points(sde)))
        phis = [self._phi(float(v)) for v in level]
        out = []
        for i in range(self.steps):
            hi, lo, p_hi, p_lo = float(level[i]), float(level[i + 1]), phis[i], phis[i + 1]
            r = p_lo / p_hi
            var = lo**2 - (r * hi) ** 2
            if var < -1e-12 * lo**2:
                raise ValueError(
                    f"noise_scale gives a negative noise variance on step {i} (sigma~ {hi:.6g} -> {lo:.6g}): "
                    f"phi(sigma)/sigma must be nondecreasing"
                )

            def gap(u: float, p_lo: float = p_lo) -> float:
                return 1.0 / self._phi(u) - 1.0 / p_lo

            def moment(u: float, hi: float = hi, gap: Callable[[float], float] = gap) -> float:
                return (u - hi) * gap(u)

            i1 = _log_quad(gap, lo, hi, (hi - lo) / p_lo)
            i2 = _log_quad(moment, lo, hi, (hi - lo) ** 2 / p_lo)
            w1 = p_lo * i1
            w2 = 2.0 * p_lo * i2 + ((hi - float(level[i - 1])) * w1 if i > 0 else 0.0)
            out.append((r, math.sqrt(max(var, 0.0)), w1, w2))
        return out

    def prepare(self, sde: SDE, score_fn: CountedScore) -> _Memory:
        return _Memory(score_fn, weights=list(self.weights(sde)))

    def step(
        self, mem: _Memory, sde: SDE, x: torch.Tensor, t: float, t_next: float, generator: torch.Generator
    ) -> torch.Tensor:
        s, sigma, _ = kernel(sde, t)
        s2, _, _ = kernel(sde, t_next)
        level = sigma / s
        r, std, w1, w2 = mem.weights[mem.step]
        d0 = tweedie(x, mem.score_fn(x, time_vector(t, x)), s, sigma)
        out = (s2 * r / s) * x + (s2 * (1.0 - r)) * d0
        k = min(self.order, mem.step + 1)
        if k >= 2:
            dd1 = (d0 - mem.x0s[-1]) / (level - mem.at[-1])
            out = out + (s2 * w1) * dd1
            if k == 3:
                dd1_prev = (mem.x0s[-1] - mem.x0s[-2]) / (mem.at[-1] - mem.at[-2])
                out = out + (s2 * w2 / (level - mem.at[-2])) * (dd1 - dd1_prev)
        keep = self.order - 1  # the evaluations the next step's divided differences need
        mem.x0s = [*mem.x0s, d0][-keep:] if keep else []
        mem.at = [*mem.at, level][-keep:] if keep else []
        mem.step += 1
        return out + (s2 * std) * randn_like(x, generator) if std > 0 else out
