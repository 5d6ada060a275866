r"""Predictors: one step of the reverse-time SDE from :math:`t` to :math:`t' < t` (Song et al. 2021, Alg. 1).

A predictor is run by :class:`~scoresde.PredictorCorrector` once per grid step, after the corrector.
To write one, subclass :class:`Predictor`, set :attr:`Predictor.nfe` (score evaluations per step) and
:attr:`Predictor.name`, implement :meth:`Predictor.update`, and override :meth:`Predictor.check` if the
step is defined for some SDEs only.
"""

from __future__ import annotations

import abc
import math
from typing import Any, cast

import torch

from .._checks import broadcast_coef
from .._kernels import ddpm_step, is_variance_exploding, is_variance_preserving, randn_like, time_vector
from ..sde import SDE, VESDE, LinearSDE, ReverseSDE, VariancePreservingSDE
from ..time_grids import log_coefs
from .base import run_kernel_kind, run_table

__all__ = [
    "Predictor",
    "EulerMaruyamaPredictor",
    "ReverseDiffusionPredictor",
    "AncestralPredictor",
    "NonePredictor",
    "PREDICTORS",
]


class Predictor(abc.ABC):
    r"""One step of the reverse-time SDE, :math:`x_t \mapsto x_{t'}` with :math:`t' < t`.

    :meth:`update` receives

    * ``rsde`` — the reverse-time SDE ``sde.reverse(score_fn)`` (a :class:`~scoresde.ReverseSDE`): its
      ``sde(x, t)`` returns the reverse drift :math:`\bar f = f - g^2 s_\theta` and the diffusion
      :math:`g`, ``rsde.score_fn(x, t)`` is the (counted) score :math:`s_\theta` with ``t`` a ``(batch,)``
      vector, and ``rsde.base`` is the forward SDE;
    * ``x`` — the state at time ``t``;
    * ``t``, ``t_next`` — the step's two times (Python floats, ``t_next < t``);
    * ``generator`` — the run's ``torch.Generator``, the only source of random numbers,

    and returns the state at ``t_next``, a new tensor of ``x``'s shape, dtype and device (``x`` itself
    must not be modified). It evaluates the score exactly :attr:`nfe` times.
    """

    #: score evaluations per step
    nfe: int = 1
    #: name recorded in provenance (the ``PREDICTORS`` key of the built-ins)
    name: str = ""

    def check(self, sde: SDE) -> None:
        """Raise ``ValueError`` if this predictor is not defined for the forward SDE ``sde`` (default: any SDE)."""
        return None

    @abc.abstractmethod
    def update(
        self, rsde: ReverseSDE, x: torch.Tensor, t: float, t_next: float, generator: torch.Generator
    ) -> torch.Tensor:
        """The state at ``t_next`` from ``x`` at ``t`` (see the class docstring)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class EulerMaruyamaPredictor(Predictor):
    r"""Euler–Maruyama: :math:`x' = x + \bar f(x, t)\,\Delta t + g(t)\sqrt{|\Delta t|}\,z`,
    :math:`\Delta t = t' - t < 0`, :math:`z \sim \mathcal N(0, I)`. One NFE."""

    name = "euler_maruyama"

    def update(
        self, rsde: ReverseSDE, x: torch.Tensor, t: float, t_next: float, generator: torch.Generator
    ) -> torch.Tensor:
        dt = t_next - t
        drift, diffusion = rsde.sde(x, t)
        noise = randn_like(x, generator)
        x = x + drift * dt
        return x.add_(broadcast_coef(diffusion, x) * math.sqrt(-dt) * noise)


class ReverseDiffusionPredictor(Predictor):
    r"""Reverse diffusion (Song et al. 2021, eq. 46): with the forward transition
    :math:`x_{t} = x_{t'} + F(x_{t'}) + G z` of ``sde.discretize`` over :math:`t - t'`,
    :math:`x' = x - F(x) + G^2 s_\theta(x, t) + G z`. One NFE."""

    name = "reverse_diffusion"

    def update(
        self, rsde: ReverseSDE, x: torch.Tensor, t: float, t_next: float, generator: torch.Generator
    ) -> torch.Tensor:
        coefs = _exact_transition(rsde, x, t, t - t_next)
        if coefs is None:
            f, G = rsde.discretize(x, t, t - t_next)
            return (x - f).add_(broadcast_coef(G, x) * randn_like(x, generator))
        # the same update with the run's coefficients: F(x) = a x (a = 0: VE), G = g
        tt, a, k, g = coefs
        f = rsde.score_fn(x, tt.reshape(-1).expand(x.shape[0])) * k
        if a is not None:
            f.add_(x * a)
        return (x - f).add_(randn_like(x, generator).mul_(g))


def _exact_transition(
    rsde: ReverseSDE, x: torch.Tensor, t: float, dt: float
) -> tuple[torch.Tensor, float | None, float, float] | None:
    r"""For a reverse-time SDE whose forward SDE uses the exact transition of VP (and DDPM) or VE as
    ``discretize``, ``(t, a, -G^2, G)`` of :math:`x_t = x + a x + G z` (``a`` None for VE) over ``dt``, as
    the SDE computes them in ``x``'s dtype, once per run and time; else None."""
    base = rsde.base
    if type(rsde) is not ReverseSDE or rsde.probability_flow or base.reversed:
        return None
    kind = type(base).discretize
    if kind is not VariancePreservingSDE.discretize and kind is not VESDE.discretize:
        return None
    table = run_table(rsde)
    key = ("transition", t, dt, x.dtype, x.device)
    entry = table.get(key)
    if entry is None:
        # the SDE's own discretize (and its checks) on a one-sample probe of ones: F(1) = a exactly
        probe = torch.ones((1, *x.shape[1:]), dtype=x.dtype, device=x.device)
        F, G = base.discretize(probe, t, dt)
        a = None if kind is VESDE.discretize else float(F.reshape(-1)[0])
        tt = torch.tensor(float(t), dtype=x.dtype, device=x.device)
        entry = table[key] = (tt, a, float(-1.0 * G[0] ** 2), float(G[0]))
    return cast(tuple[torch.Tensor, float | None, float, float], entry)


class AncestralPredictor(Predictor):
    r"""Ancestral sampling: DDPM for a variance-preserving kernel, SMLD for a variance-exploding one
    (Song et al. 2021, App. F). One NFE.

    Variance preserving (:math:`s^2 + \sigma^2 = 1`: VP, DDPM), with
    :math:`\beta_i = 1 - s(t)^2/s(t')^2` (:math:`= 1 - \bar\alpha_i/\bar\alpha_{i-1}` on a DDPM grid):
    :math:`x' = (x + \beta_i s_\theta)/\sqrt{1-\beta_i} + \sqrt{\beta_i}\,z`.

    Variance exploding (:math:`s \equiv 1`: VE), with :math:`\sigma = \sigma(t)`, :math:`\sigma' = \sigma(t')`:
    :math:`x' = x + (\sigma^2 - \sigma'^2) s_\theta + \sqrt{\sigma'^2 (\sigma^2 - \sigma'^2)/\sigma^2}\,z`.

    Not defined for other kernels (sub-VP): :meth:`check` raises ``ValueError``.
    """

    name = "ancestral"

    def check(self, sde: SDE) -> None:
        if not (is_variance_exploding(sde) or is_variance_preserving(sde)):
            raise ValueError(
                f"the ancestral predictor is defined for variance-preserving (VPSDE, DDPMSDE: DDPM) and "
                f"variance-exploding (VESDE: SMLD) kernels only, not {type(sde).__name__}; use "
                f"predictor='reverse_diffusion' or 'euler_maruyama'"
            )

    def update(
        self, rsde: ReverseSDE, x: torch.Tensor, t: float, t_next: float, generator: torch.Generator
    ) -> torch.Tensor:
        sde = rsde.base
        score = rsde.score_fn(x, time_vector(t, x))
        z = randn_like(x, generator)
        table = run_table(rsde)
        key = ("ancestral", t, t_next)
        coefs = table.get(key)  # the step's coefficients, computed once per run
        if coefs is None:
            coefs = table[key] = _ancestral_coefficients(sde, t, t_next, run_kernel_kind(rsde)[1])
        if coefs[0] == "ve":
            s2, a2 = cast(float, coefs[1]), cast(float, coefs[2])
            return (x + (s2 - a2) * score).add_(math.sqrt(a2 * (s2 - a2) / s2) * z)
        beta = cast(float, coefs[1])
        return ddpm_step(x, score, beta, math.sqrt(beta), z)


def _ancestral_coefficients(sde: SDE, t: float, t_next: float, variance_exploding: bool) -> tuple[Any, ...]:
    r"""``("ve", \sigma(t)^2, \sigma(t')^2)`` for a variance-exploding kernel, else ``("vp", \beta)``."""
    if variance_exploding:
        ve = cast(LinearSDE, sde)  # check() accepts linear SDEs only
        s2 = float(ve.std(torch.tensor(t, dtype=torch.float64))) ** 2
        a2 = float(ve.std(torch.tensor(t_next, dtype=torch.float64))) ** 2
        return ("ve", s2, a2)
    log_s, _ = log_coefs(sde, t)
    log_s_next, _ = log_coefs(sde, t_next)
    return ("vp", -math.expm1(2.0 * float(log_s - log_s_next)))


class NonePredictor(Predictor):
    """No predictor step: :math:`x' = x` (corrector-only sampling). No NFE."""

    nfe = 0
    name = "none"

    def update(
        self, rsde: ReverseSDE, x: torch.Tensor, t: float, t_next: float, generator: torch.Generator
    ) -> torch.Tensor:
        return x


#: predictor name -> class (the shorthands accepted by ``PredictorCorrector(predictor=...)``)
PREDICTORS: dict[str, type[Predictor]] = {
    "euler_maruyama": EulerMaruyamaPredictor,
    "reverse_diffusion": ReverseDiffusionPredictor,
    "ancestral": AncestralPredictor,
    "none": NonePredictor,
}
