r"""Correctors: MCMC moves at a fixed time :math:`t` towards :math:`p_t` (Song et al. 2021, Alg. 1).

A corrector is run by :class:`~scoresde.PredictorCorrector` at every grid time, before the predictor.
To write one, subclass :class:`Corrector`, implement :meth:`Corrector.update` and declare its cost:
:attr:`Corrector.nfe` (score evaluations per grid step; by default :attr:`Corrector.steps` times
:attr:`Corrector.nfe_per_move`). Override :meth:`Corrector.check` if the moves are defined for some
SDEs only.
"""

from __future__ import annotations

import abc
import math
from typing import cast

import torch

from .._checks import check_positive, check_positive_int
from .._kernels import is_variance_preserving, randn_like, time_vector
from ..sde import SDE, ReverseSDE
from ..time_grids import log_coefs
from .base import run_kernel_kind, run_table

__all__ = [
    "Corrector",
    "LangevinCorrector",
    "AnnealedLangevinCorrector",
    "NoneCorrector",
    "CORRECTORS",
    "CORRECTOR_ALIASES",
    "langevin_alpha",
]


class Corrector(abc.ABC):
    r"""``steps`` MCMC moves at time :math:`t` that leave :math:`p_t` (approximately) invariant.

    :meth:`update` receives

    * ``rsde`` — the reverse-time SDE ``sde.reverse(score_fn)``: ``rsde.score_fn(x, t)`` is the (counted)
      score :math:`s_\theta \approx \nabla_x \log p_t` with ``t`` a ``(batch,)`` vector, ``rsde.base`` the
      forward SDE;
    * ``x`` — the state at time ``t``;
    * ``t`` — the time of the moves, and ``t_next < t`` — the next grid time (the predictor's target; the
      Langevin step sizes of score_sde use :math:`\alpha_i = s(t)^2/s(t_{next})^2`);
    * ``generator`` — the run's ``torch.Generator``, the only source of random numbers,

    and returns the corrected state at ``t``, a new tensor of ``x``'s shape, dtype and device (``x``
    itself must not be modified). It evaluates the score exactly :attr:`nfe` times.

    Parameters
    ----------
    snr : float
        Signal-to-noise ratio :math:`r` that sets the step size. Default 0.16.
    steps : int
        Moves :math:`M` per grid time (0 allowed: no move). Default 1.
    """

    #: score evaluations per move
    nfe_per_move: int = 1
    #: name recorded in provenance (the ``CORRECTORS`` key of the built-ins)
    name: str = ""

    def __init__(self, snr: float = 0.16, steps: int = 1) -> None:
        self.snr = check_positive("snr", snr)
        self.steps = check_positive_int("steps", steps, minimum=0)

    @property
    def nfe(self) -> int:
        """Score evaluations per grid step, ``steps * nfe_per_move``."""
        return self.steps * self.nfe_per_move

    def check(self, sde: SDE) -> None:
        """Raise ``ValueError`` if this corrector is not defined for the forward SDE ``sde`` (default: any SDE)."""
        return None

    @abc.abstractmethod
    def update(
        self, rsde: ReverseSDE, x: torch.Tensor, t: float, t_next: float, generator: torch.Generator
    ) -> torch.Tensor:
        """The corrected state at ``t`` (see the class docstring)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(snr={self.snr!r}, steps={self.steps!r})"


def langevin_alpha(sde: SDE, t: float, t_next: float) -> float:
    r"""score_sde's :math:`\alpha_i` of the Langevin step sizes: :math:`s(t)^2/s(t_{next})^2 = 1 - \beta_i` (the
    DDPM step) for a variance-preserving kernel, 1 otherwise (:math:`t_{next}` is clipped at 0)."""
    return _alpha(sde, t, t_next, is_variance_preserving(sde))


def _alpha(sde: SDE, t: float, t_next: float, variance_preserving: bool) -> float:
    """:func:`langevin_alpha`, given whether the kernel of ``sde`` is variance preserving."""
    if not variance_preserving:
        return 1.0
    # t - (t - t_next) rather than t_next: the time score_sde's corrector works out from its step
    lo = max(t - (t - t_next), 0.0)
    log_s, _ = log_coefs(sde, t)
    log_s_lo, _ = log_coefs(sde, lo)
    return math.exp(2.0 * float(log_s - log_s_lo))


def _annealed_step(corrector: Corrector, sde: SDE, x: torch.Tensor, t: float, alpha: float) -> float:
    r""":math:`\epsilon = 2\alpha (r\,\sigma(t))^2`."""
    _, std = sde.marginal_prob(x[:1], t)
    return 2 * alpha * (corrector.snr * float(std[0])) ** 2


def _run_alpha(rsde: ReverseSDE, t: float, t_next: float) -> float:
    """:func:`langevin_alpha` for ``rsde``'s forward SDE, computed once per run and pair of times."""
    table = run_table(rsde)
    key = ("langevin_alpha", t, t_next)
    alpha = table.get(key)
    if alpha is None:
        alpha = table[key] = _alpha(rsde.base, t, t_next, run_kernel_kind(rsde)[0])
    return cast(float, alpha)


def _run_annealed_step(corrector: Corrector, rsde: ReverseSDE, x: torch.Tensor, t: float, alpha: float) -> float:
    r""":func:`_annealed_step` with :math:`\sigma(t)` (in ``x``'s dtype) computed once per run and time."""
    table = run_table(rsde)
    key = ("std", t, x.dtype, x.device)
    std = table.get(key)
    if std is None:
        _, std_t = rsde.base.marginal_prob(x[:1], t)
        std = table[key] = float(std_t[0])
    return 2 * alpha * (corrector.snr * cast(float, std)) ** 2


class LangevinCorrector(Corrector):
    r"""Langevin MCMC with step size from the signal-to-noise ratio (Song et al. 2021, Alg. 4).

    :math:`\epsilon = 2\alpha\,(r\,\|z\| / \|s_\theta\|)^2` (norms averaged over the batch),
    :math:`x \leftarrow x + \epsilon\,s_\theta(x, t) + \sqrt{2\epsilon}\,z`, ``steps`` times (one NFE each);
    :math:`\alpha` is :func:`langevin_alpha`.

    Where the score vanishes (:math:`\|s_\theta\| = 0`, e.g. a network whose last layer starts at
    zero) the rule gives :math:`\epsilon = \infty`; wherever :math:`\epsilon` is not finite
    (:math:`\|s_\theta\| = 0`, or so small that :math:`\epsilon` overflows) the step falls back to
    the annealed-Langevin step :math:`\epsilon = 2\alpha\,(r\,\sigma(t))^2`, the limit the SNR rule
    takes for the Gaussian :math:`\mathcal N(\mu, \sigma(t)^2 I)`, whose score has
    :math:`\|s\| \approx \|z\|/\sigma(t)`. With a zero score the move is then
    :math:`x \leftarrow x + \sqrt{2\epsilon}\,z`, as for :class:`AnnealedLangevinCorrector`.
    """

    name = "langevin"

    def update(
        self, rsde: ReverseSDE, x: torch.Tensor, t: float, t_next: float, generator: torch.Generator
    ) -> torch.Tensor:
        alpha = _run_alpha(rsde, t, t_next)
        vt = time_vector(t, x)
        fallback: float | None = None
        for _ in range(self.steps):
            grad = rsde.score_fn(x, vt)
            noise = randn_like(x, generator)
            grad_norm = torch.linalg.vector_norm(grad.reshape(grad.shape[0], -1), dim=-1).mean()
            noise_norm = torch.linalg.vector_norm(noise.reshape(noise.shape[0], -1), dim=-1).mean()
            step = 2 * alpha * (self.snr * noise_norm / grad_norm) ** 2
            if fallback is None:
                fallback = _run_annealed_step(self, rsde, x, t, alpha)
            # no host sync: the fallback is selected on the device
            step = torch.where(torch.isfinite(step), step, fallback)
            x = x + step * grad + torch.sqrt(2 * step) * noise
        return x


class AnnealedLangevinCorrector(Corrector):
    r"""Annealed Langevin dynamics (Song & Ermon 2019): :math:`\epsilon = 2\alpha (r\,\sigma(t))^2`,
    :math:`x \leftarrow x + \epsilon\,s_\theta(x, t) + \sqrt{2\epsilon}\,z`, ``steps`` times (one NFE each)."""

    name = "annealed_langevin"

    def update(
        self, rsde: ReverseSDE, x: torch.Tensor, t: float, t_next: float, generator: torch.Generator
    ) -> torch.Tensor:
        alpha = _run_alpha(rsde, t, t_next)
        step = _run_annealed_step(self, rsde, x, t, alpha)
        vt = time_vector(t, x)
        for _ in range(self.steps):
            grad = rsde.score_fn(x, vt)
            x = (x + step * grad).add_(math.sqrt(2 * step) * randn_like(x, generator))
        return x


class NoneCorrector(Corrector):
    """No corrector move: returns ``x``. No NFE."""

    nfe_per_move = 0
    name = "none"

    def update(
        self, rsde: ReverseSDE, x: torch.Tensor, t: float, t_next: float, generator: torch.Generator
    ) -> torch.Tensor:
        return x


#: corrector name -> class (the shorthands accepted by ``PredictorCorrector(corrector=...)``)
CORRECTORS: dict[str, type[Corrector]] = {
    "langevin": LangevinCorrector,
    "annealed_langevin": AnnealedLangevinCorrector,
    "none": NoneCorrector,
}
#: further names accepted by ``PredictorCorrector(corrector=...)`` -> their ``CORRECTORS`` key
#: (``"ald"``, score_sde's name for annealed Langevin dynamics)
CORRECTOR_ALIASES: dict[str, str] = {"ald": "annealed_langevin"}
