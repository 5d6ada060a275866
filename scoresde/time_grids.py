r"""Time grids for fixed-step samplers: pluggable objects, benchmarked separately from solvers.

A *time grid* maps ``(sde, steps, eps)`` to the decreasing times

.. math::  T = t_0 > t_1 > \dots > t_N = \varepsilon, \qquad N = \text{steps},

as a float64 NumPy array of ``steps + 1`` points whose ends are exactly ``T`` and ``eps``.
Grids other than :class:`UniformTime` are defined through the perturbation kernel
:math:`\mathcal N(s(t) x_0, \sigma(t)^2 I)` of a :class:`~scoresde.LinearSDE`:

* the half log signal-to-noise ratio :math:`\lambda(t) = \log\big(s(t)/\sigma(t)\big)` (``log_snr``),
  strictly decreasing in :math:`t` for VP, sub-VP and VE;
* the EDM *noise level* :math:`\tilde\sigma(t) = \sigma(t)/s(t) = e^{-\lambda(t)}` (``noise_level``),
  the standard deviation of the noise once :math:`x` is rescaled to :math:`x/s(t)`.

Grids available (``GRIDS``, :func:`get_grid`):

* ``"uniform"`` — :class:`UniformTime`: :math:`t_i = T - i (T - \varepsilon)/N`.
* ``"logsnr"`` — :class:`LogSNRUniform`: :math:`\lambda(t_i)` uniform between :math:`\lambda(T)` and
  :math:`\lambda(\varepsilon)` (DPM-Solver's ``skip_type="logSNR"``). For VE with its geometric
  :math:`\sigma(t)` this is the uniform grid.
* ``"quadratic"`` — :class:`TimeQuadratic`: uniform in :math:`t^{1/2}` (DPM-Solver's
  ``skip_type="time_quadratic"``), which concentrates steps near :math:`t = \varepsilon`. Works for any SDE.
* ``"karras"`` — :class:`KarrasSigma`: the EDM polynomial schedule (Karras et al. 2022, eq. 5)

  .. math::
      \tilde\sigma_i = \Big(\tilde\sigma_{\max}^{1/\rho}
          + \tfrac{i}{N}\big(\tilde\sigma_{\min}^{1/\rho} - \tilde\sigma_{\max}^{1/\rho}\big)\Big)^{\rho},
      \qquad \tilde\sigma_{\max} = \tilde\sigma(T),\ \tilde\sigma_{\min} = \tilde\sigma(\varepsilon),

  mapped back to times by inverting :math:`\tilde\sigma(t)`.

The inversion :math:`t = \lambda^{-1}(\ell)` is a vectorised bisection on :math:`[\varepsilon, T]`
run to machine precision, so it works for any ``LinearSDE`` whose :math:`\lambda(t)` is monotone
(a non-monotone :math:`\lambda` is detected and reported).
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from ._checks import check_positive, check_positive_int
from .sde import SDE, LinearSDE

__all__ = [
    "TimeGrid",
    "UniformTime",
    "LogSNRUniform",
    "TimeQuadratic",
    "KarrasSigma",
    "GRIDS",
    "get_grid",
    "log_snr",
    "noise_level",
    "log_coefs",
    "invert_log_snr",
]


# ---------------------------------------------------------------------------------------
# kernel coefficients in float64
# ---------------------------------------------------------------------------------------
def _linear(sde: SDE, what: str) -> LinearSDE:
    if not isinstance(sde, LinearSDE):
        raise TypeError(
            f"{what} needs a linear SDE with Gaussian kernel N(s(t) x0, sigma(t)^2 I) (VPSDE, SubVPSDE, "
            f"VESDE or a LinearSDE subclass), got {type(sde).__name__}; use the 'uniform' grid instead"
        )
    return sde


def log_coefs(sde: SDE, t: Any) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    r"""Return :math:`(\log s(t), \log\sigma(t))` in float64 (NumPy arrays shaped like ``t``).

    Uses ``sde.log_mean_coef`` where the SDE has it (VP, sub-VP), which keeps :math:`\log s` exact
    near :math:`t = 0`; :math:`\sigma(t)` comes from ``sde.std`` (``expm1``-accurate for VP/sub-VP).
    """
    sde = _linear(sde, "log_coefs")
    tt = torch.as_tensor(np.asarray(t, dtype=np.float64))
    log_mean: Callable[[torch.Tensor], torch.Tensor] | None = getattr(sde, "log_mean_coef", None)
    log_s = log_mean(tt) if callable(log_mean) else torch.log(sde.mean_coef(tt))
    log_sigma = torch.log(sde.std(tt))
    return log_s.numpy(), log_sigma.numpy()


def log_snr(sde: SDE, t: Any) -> npt.NDArray[np.float64]:
    r"""Half log signal-to-noise ratio :math:`\lambda(t) = \log s(t) - \log\sigma(t)` (float64)."""
    log_s, log_sigma = log_coefs(sde, t)
    return log_s - log_sigma


def noise_level(sde: SDE, t: Any) -> npt.NDArray[np.float64]:
    r"""EDM noise level :math:`\tilde\sigma(t) = \sigma(t)/s(t) = e^{-\lambda(t)}` (float64)."""
    return np.exp(-log_snr(sde, t))


def invert_log_snr(sde: SDE, lam: Any, eps: float, *, check: bool = True) -> npt.NDArray[np.float64]:
    r"""Times :math:`t \in [\varepsilon, T]` with :math:`\lambda(t) = \ell` for each entry of ``lam``.

    :math:`\lambda` is decreasing in :math:`t`. A vectorised Illinois (regula falsi) iteration from the bracket
    :math:`[\varepsilon, T]` locates each root to a few floats; a bracket of 16 floats around it (wider, up to
    :math:`2^{25}` floats, where :math:`\lambda` is flat at float resolution; the original bracket wherever none
    holds) is checked and bisected until it has shrunk to adjacent floats, so the result is that of a
    bisection from :math:`[\varepsilon, T]` at about a third of its evaluations.
    Targets outside :math:`[\lambda(T), \lambda(\varepsilon)]` are clipped to the ends. With ``check=True`` a
    residual larger than :math:`10^{-6}` in :math:`\lambda` raises ``ValueError`` (it means :math:`\lambda(t)`
    is not monotone).
    """
    sde = _linear(sde, "invert_log_snr")
    target = np.asarray(lam, dtype=np.float64)
    lo: npt.NDArray[np.float64] = np.full(target.shape, float(eps))
    hi: npt.NDArray[np.float64] = np.full(target.shape, float(sde.T))
    if target.size:
        lo, hi = _illinois_bracket(sde, target, lo, hi)
    for _ in range(2000):
        mid = 0.5 * (lo + hi)
        if np.all((mid == lo) | (mid == hi)):
            break
        above = log_snr(sde, mid) > target  # lambda(mid) too large -> mid is too early in time
        lo = np.where(above, mid, lo)
        hi = np.where(above, hi, mid)
    t = 0.5 * (lo + hi)
    if check and target.size:
        resid = np.abs(log_snr(sde, t) - np.clip(target, *sorted(log_snr(sde, [sde.T, eps]))))
        if not np.all(resid <= 1e-6 * np.maximum(1.0, np.abs(target))):
            raise ValueError(
                f"could not invert lambda(t) = log(s/sigma) for {type(sde).__name__} (max residual "
                f"{resid.max():.3g}): lambda(t) must be strictly monotone on [eps, T]"
            )
    return t


def _illinois_bracket(
    sde: SDE, target: npt.NDArray[np.float64], lo: npt.NDArray[np.float64], hi: npt.NDArray[np.float64]
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Brackets ``[lo, hi]`` of the roots of ``lambda(t) = target`` in which ``lambda(lo) > target >= lambda(hi)``
    holds as in the bisection of :func:`invert_log_snr`, narrowed to 16 floats (or 2**13, 2**25 where lambda is
    flat) around the point where a regula falsi (Illinois) iteration converges; the given bracket is returned
    for the other entries."""
    f_lo = log_snr(sde, lo) - target
    f_hi = log_snr(sde, hi) - target
    inside = (f_lo > 0) & (f_hi <= 0)  # else the bisection ends at an end (a root there, or a clipped target)
    a, b, fa, fb = lo.copy(), hi.copy(), f_lo.copy(), f_hi.copy()
    side = np.zeros(target.shape, dtype=np.int8)  # which end moved last: -1 a, +1 b
    t = np.full(target.shape, np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        for _ in range(100):
            t_new = (a * fb - b * fa) / (fb - fa)
            bad = ~np.isfinite(t_new) | (t_new < a) | (t_new > b)
            t_new = np.where(bad, 0.5 * (a + b), t_new)
            done = np.abs(t_new - t) <= 4 * np.spacing(np.abs(t_new))
            t = t_new
            if np.all(done | ~inside):
                break
            f = log_snr(sde, t) - target
            move_a = f > 0
            # Illinois: halve the function value at the end that stayed twice in a row
            fb = np.where(move_a & (side == -1), 0.5 * fb, fb)
            fa = np.where(~move_a & (side == 1), 0.5 * fa, fa)
            a, fa = np.where(move_a, t, a), np.where(move_a, f, fa)
            b, fb = np.where(move_a, b, t), np.where(move_a, fb, f)
            side = np.where(move_a, -1, 1).astype(np.int8)
    t = np.where(inside, t, np.where(f_lo <= 0, lo, hi))
    new_lo, new_hi = lo.copy(), hi.copy()
    todo = np.isfinite(t)
    # lambda is flat over many floats of t where |t lambda'(t)| is small: widen the bracket until it holds
    for ulps in (8.0, 2.0**12, 2.0**24):
        if not np.any(todo):
            break
        width = ulps * np.spacing(np.abs(t))
        lo2, hi2 = np.maximum(t - width, lo), np.minimum(t + width, hi)
        lam2 = log_snr(sde, np.concatenate([lo2[todo], hi2[todo]]))
        n = int(todo.sum())
        # the invariant of the bisection; the given ends need not satisfy it (nor does the bisection's own start)
        ok = np.zeros(target.shape, dtype=bool)
        ok[todo] = ((lo2[todo] == lo[todo]) | (lam2[:n] > target[todo])) & (
            (hi2[todo] == hi[todo]) | ~(lam2[n:] > target[todo])
        )
        new_lo, new_hi = np.where(ok, lo2, new_lo), np.where(ok, hi2, new_hi)
        todo &= ~ok
    return new_lo, new_hi


# ---------------------------------------------------------------------------------------
# grids
# ---------------------------------------------------------------------------------------
class TimeGrid(abc.ABC):
    r"""A time grid: ``grid(sde, steps, eps)`` returns :math:`T = t_0 > \dots > t_N = \varepsilon`.

    Subclasses implement :meth:`times` and set :attr:`needs_linear_sde`; ``__call__`` validates the
    arguments, pins the two ends to exactly ``T`` and ``eps``, and checks that the result is finite, float64, of length
    ``steps + 1`` and strictly decreasing (no duplicate times), raising ``ValueError`` otherwise.
    """

    #: registry name (``GRIDS`` key)
    name: str = ""
    #: whether :meth:`times` needs the kernel of a :class:`~scoresde.LinearSDE` (:math:`s`, :math:`\sigma`,
    #: :math:`\lambda`); samplers refuse other SDEs on such a grid. A grid computed from ``T``, ``steps`` and
    #: ``eps`` alone sets it to ``False``.
    needs_linear_sde: bool = True

    def __call__(self, sde: SDE, steps: int, eps: float) -> np.ndarray:
        steps = check_positive_int("steps", steps)
        eps = check_positive("eps", eps)
        if eps >= sde.T:
            raise ValueError(f"eps={eps!r} must be smaller than the SDE's T={sde.T!r}")
        t = np.array(self.times(sde, steps, eps), dtype=np.float64).reshape(-1)
        if t.shape != (steps + 1,):
            raise ValueError(f"{self!r} returned {t.size} times for steps={steps}; expected {steps + 1}")
        t[0], t[-1] = sde.T, eps
        if not np.all(np.isfinite(t)):
            raise ValueError(f"{self!r} produced non-finite times for {sde!r}, steps={steps}, eps={eps:g}")
        if not np.all(np.diff(t) < 0):
            i = int(np.argmax(np.diff(t) >= 0))
            raise ValueError(
                f"{self!r} is not strictly decreasing for {sde!r}, steps={steps}, eps={eps:g}: "
                f"t[{i}]={t[i]!r}, t[{i + 1}]={t[i + 1]!r}; use fewer steps or another grid"
            )
        return t

    @abc.abstractmethod
    def times(self, sde: SDE, steps: int, eps: float) -> np.ndarray:
        """The ``steps + 1`` raw times from ``T`` down to ``eps`` (validated by ``__call__``)."""

    def params(self) -> dict[str, Any]:
        """Constructor parameters (for ``repr`` and provenance)."""
        return {}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.params() == other.params()

    def __hash__(self) -> int:
        return hash((type(self).__name__, tuple(sorted(self.params().items()))))


class UniformTime(TimeGrid):
    r"""Uniform in time: :math:`t_i = T - i\,(T - \varepsilon)/N`. Works for any SDE."""

    name = "uniform"
    needs_linear_sde = False

    def times(self, sde: SDE, steps: int, eps: float) -> np.ndarray:
        return np.linspace(sde.T, eps, steps + 1)


class LogSNRUniform(TimeGrid):
    r"""Uniform in :math:`\lambda(t) = \log(s(t)/\sigma(t))`: :math:`\lambda_i = \lambda(T) + \tfrac iN
    \big(\lambda(\varepsilon) - \lambda(T)\big)`, :math:`t_i = \lambda^{-1}(\lambda_i)`.

    The grid of DPM-Solver(++) (``skip_type="logSNR"``): the exponential integrators' step
    :math:`h_i = \lambda_{i+1} - \lambda_i` is then constant. Needs a :class:`~scoresde.LinearSDE`.
    """

    name = "logsnr"

    def times(self, sde: SDE, steps: int, eps: float) -> np.ndarray:
        lam_T, lam_eps = log_snr(sde, [sde.T, eps])
        return invert_log_snr(sde, np.linspace(lam_T, lam_eps, steps + 1), eps)


class TimeQuadratic(TimeGrid):
    r"""Uniform in :math:`t^{1/p}`: :math:`t_i = \big(T^{1/p} + \tfrac iN(\varepsilon^{1/p} - T^{1/p})\big)^p`.

    With :math:`p = 2` this is DPM-Solver's ``skip_type="time_quadratic"`` (Lu et al. 2022, recommended
    there for unconditional low-resolution models). Measured on the 8-Gaussian VP ring (exact score,
    2,000 samples, RMSE against DOP853): DPM-Solver++(3M) 8.3e-3 at 20 NFE and 4.7e-4 at 50
    (log-SNR grid: 1.26e-2 / 1.74e-3); UniPC-3 7.7e-3 / 1.65e-4. Works for any SDE.

    Parameters
    ----------
    power : float
        :math:`p > 0`; 1 is the uniform grid. Default 2.
    """

    name = "quadratic"
    needs_linear_sde = False

    def __init__(self, power: float = 2.0) -> None:
        self.power = check_positive("power", power)

    def params(self) -> dict[str, Any]:
        return {"power": self.power}

    def times(self, sde: SDE, steps: int, eps: float) -> np.ndarray:
        p = self.power
        return np.linspace(sde.T ** (1.0 / p), eps ** (1.0 / p), steps + 1) ** p


class KarrasSigma(TimeGrid):
    r"""EDM's polynomial schedule in the noise level :math:`\tilde\sigma = \sigma/s` (Karras et al. 2022).

    .. math::
        \tilde\sigma_i = \Big(\tilde\sigma_{\max}^{1/\rho} + \tfrac iN\big(\tilde\sigma_{\min}^{1/\rho}
        - \tilde\sigma_{\max}^{1/\rho}\big)\Big)^{\rho}, \qquad t_i = \tilde\sigma^{-1}(\tilde\sigma_i),

    with :math:`\tilde\sigma_{\max} = \tilde\sigma(T)`, :math:`\tilde\sigma_{\min} = \tilde\sigma(\varepsilon)`.
    :math:`\rho = 7` (EDM's choice for images) concentrates steps at low noise; :math:`\rho = 1` is
    uniform in :math:`\tilde\sigma`. Needs a :class:`~scoresde.LinearSDE`.

    Parameters
    ----------
    rho : float
        Exponent :math:`\rho > 0`. Default 7.
    """

    name = "karras"

    def __init__(self, rho: float = 7.0) -> None:
        self.rho = check_positive("rho", rho)

    def params(self) -> dict[str, Any]:
        return {"rho": self.rho}

    def sigmas(self, sde: SDE, steps: int, eps: float) -> np.ndarray:
        r"""The noise levels :math:`\tilde\sigma_i`, :math:`i = 0..N` (decreasing)."""
        lam_T, lam_eps = log_snr(sde, [sde.T, eps])
        a, b = math.exp(-lam_T / self.rho), math.exp(-lam_eps / self.rho)  # sigma_max^(1/rho), sigma_min^(1/rho)
        return (a + np.arange(steps + 1) / steps * (b - a)) ** self.rho

    def times(self, sde: SDE, steps: int, eps: float) -> np.ndarray:
        return invert_log_snr(sde, -np.log(self.sigmas(sde, steps, eps)), eps)


GRIDS: dict[str, type[TimeGrid]] = {
    "uniform": UniformTime,
    "logsnr": LogSNRUniform,
    "quadratic": TimeQuadratic,
    "karras": KarrasSigma,
}


def get_grid(grid: str | TimeGrid) -> TimeGrid:
    """A :class:`TimeGrid` from a name in ``GRIDS`` (``"uniform"``, ``"logsnr"``, ``"quadratic"``, ``"karras"``) or
    an instance."""
    if isinstance(grid, TimeGrid):
        return grid
    if isinstance(grid, str):
        try:
            return GRIDS[grid.lower()]()
        except KeyError:
            raise ValueError(f"unknown time grid {grid!r}; choose one of {sorted(GRIDS)} or pass a TimeGrid") from None
    raise TypeError(f"grid must be a name in {sorted(GRIDS)} or a TimeGrid instance, got {type(grid).__name__}")
