r"""Integrating the probability-flow velocity :math:`dx/dt = v(x, t)`: :class:`FlowODE` and :func:`velocity_field`.

The velocity of a linear SDE with kernel :math:`\mathcal N(s(t) x_0, \sigma(t)^2 I)` is
:math:`v = \dot s\,\hat x_0 + \dot\sigma\,\hat\varepsilon`, the probability-flow drift written without
:math:`f` and :math:`g`, so it can start where :math:`s(T) = 0` (rectified flow, :class:`scoresde.RectifiedFlow`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, cast

import numpy as np
import torch

from .._checks import check_positive
from .._kernels import check_linear, singular_at_T, time_vector
from ..sde import SDE, LinearSDE, ScoreFn
from ..time_grids import TimeGrid, get_grid
from .base import CountedScore, FixedStepSampler
from .fixed_grid import OnGrid
from .ode import euler_heun_step

__all__ = ["FlowODE", "velocity_field", "singular_at_T", "METHODS"]

METHODS = ("euler", "heun")


class FlowODE(OnGrid, FixedStepSampler):
    r"""Integrate the flow :math:`dx/dt = v(x, t)` from ``T`` to ``eps`` through :func:`scoresde.sample`.

    The velocity is the model's own (:meth:`scoresde.ScoreModel.velocity`, e.g. a flow-matching model)
    when ``score_fn`` is a :class:`~scoresde.ScoreModel` for the same SDE; otherwise it is built from the
    score, :math:`v = \dot s\,\hat x_0 + \dot\sigma\,\hat\varepsilon` with
    :math:`\hat\varepsilon = -\sigma\nabla\log p_t` and :math:`\hat x_0 = (x + \sigma^2\nabla\log p_t)/s`,
    which is the probability-flow drift :math:`f x - \tfrac12 g^2\nabla\log p_t` written without
    :math:`f` and :math:`g`. Where :math:`s(T) = 0` (:class:`RectifiedFlow`) a score-based velocity is
    evaluated at :math:`\min(t, T - t_\mathrm{clip})` instead of :math:`T` (an :math:`O(t_\mathrm{clip})`
    change of the first step); a velocity model is evaluated at ``T`` itself.

    Parameters
    ----------
    steps : int
        Number of steps on the grid.
    method : {"euler", "heun"}
        Euler (order 1, ``steps`` NFE) or Heun's explicit trapezoid (order 2, ``2 * steps`` NFE).
    grid : str or TimeGrid
        Time grid (``"uniform"``, ``"logsnr"``, ``"karras"``; see :mod:`scoresde.time_grids`).
    eps : float
        End time.
    t_clip : float
        See above. Default 1e-4.
    """

    stochastic = False
    handles_zero_signal_at_T = True

    def __init__(
        self,
        steps: int = 100,
        method: str = "euler",
        grid: str | TimeGrid = "uniform",
        eps: float = 1e-3,
        t_clip: float = 1e-4,
    ) -> None:
        super().__init__(steps, eps, denoise=False)
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        self.method = method
        self.time_grid = get_grid(grid)
        self.t_clip = check_positive("t_clip", t_clip)

    def params(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "method": self.method,
            "grid": repr(self.time_grid),
            "eps": self.eps,
            "t_clip": self.t_clip,
        }

    @property
    def nfe_per_step(self) -> int | None:
        """1 (``"euler"``) or 2 (``"heun"``) velocity evaluations per step."""
        return 1 if self.method == "euler" else 2

    def check(self, sde: SDE) -> None:
        super().check(sde)
        check_linear(self, sde)
        self.check_grid(sde)

    def prepare(self, sde: SDE, score_fn: CountedScore) -> Callable[[torch.Tensor, float], torch.Tensor]:
        # check() accepts linear SDEs only
        return velocity_field(cast(LinearSDE, sde), score_fn, self.t_clip)

    def prepare_run(
        self, sde: SDE, score_fn: CountedScore, grid: np.ndarray
    ) -> Callable[[torch.Tensor, float], torch.Tensor]:
        # the coefficients of every grid time from one vectorised evaluation
        return velocity_field(cast(LinearSDE, sde), score_fn, self.t_clip, times=grid)

    def step(
        self,
        v: Callable[[torch.Tensor, float], torch.Tensor],
        sde: SDE,
        x: torch.Tensor,
        t: float,
        t_next: float,
        generator: torch.Generator,
    ) -> torch.Tensor:
        return euler_heun_step(v, x, t, t_next, self.method == "heun")


class _VelocityModel(Protocol):
    """A model with a ``velocity(x, t)`` method, such as a :class:`~scoresde.ScoreModel`."""

    def velocity(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor: ...


def velocity_field(
    sde: LinearSDE, score_fn: ScoreFn, t_clip: float = 1e-4, times: Any = None
) -> Callable[[torch.Tensor, float], torch.Tensor]:
    r"""The probability-flow velocity :math:`v(x, t)` (a callable of a state and a float time) for ``sde``.

    * If ``score_fn`` (or the function a :class:`~scoresde.integrators.base.CountedScore` wraps) has a
      ``velocity`` method and an ``sde`` equal to ``sde`` (a :class:`~scoresde.ScoreModel`), that is used;
      calls are counted on the ``CountedScore``.
    * Otherwise :math:`v = \dot s\,\hat x_0 + \dot\sigma\,\hat\varepsilon
      = \frac{\dot s}{s}(x + \sigma^2 s_\theta) - \dot\sigma\sigma\, s_\theta`, evaluated at
      :math:`\min(t, T - t_\mathrm{clip})` when :math:`s(T) = 0` (it is :math:`0/0` there), as
      :math:`\frac{\dot s}{s} x + \big(\frac{\dot s}{s}\sigma^2 - \dot\sigma\sigma\big) s_\theta` with the two
      coefficients (Python floats) computed once per time, for all of ``times`` (e.g. a run's grid) at once
      where given.
    """
    inner = score_fn.score_fn if isinstance(score_fn, CountedScore) else score_fn
    model_sde = getattr(inner, "sde", None)
    same_sde = type(model_sde) is type(sde) and model_sde.params() == sde.params()
    if callable(getattr(inner, "velocity", None)) and same_sde:

        def v_model(x: torch.Tensor, t: float) -> torch.Tensor:
            # inner has a callable ``velocity`` (checked above)
            out = cast(_VelocityModel, inner).velocity(x, time_vector(t, x))
            if isinstance(score_fn, CountedScore):
                score_fn.nfe += 1
                return score_fn.checked(x, out, "score_fn.velocity")
            return out

        return v_model

    t_max = sde.T - t_clip if singular_at_T(sde) else sde.T

    def coefficients(ts: Any) -> dict[float, tuple[float, float]]:
        """``{t: (s_dot / s, s_dot / s sigma^2 - sigma_dot sigma)}`` at the (clipped) times ``ts``."""
        tt = torch.as_tensor(np.minimum(np.asarray(ts, dtype=np.float64).reshape(-1), t_max))
        a = sde.mean_coef_dot(tt) / sde.mean_coef(tt)
        b = a * sde.std(tt) ** 2 - sde.std_dot(tt) * sde.std(tt)
        return dict(zip(tt.tolist(), zip(a.tolist(), b.tolist(), strict=True), strict=True))

    # the coefficients at each time asked about, computed once
    coefs = {} if times is None else coefficients(times)

    def v_score(x: torch.Tensor, t: float) -> torch.Tensor:
        t = min(t, t_max)
        c = coefs.get(t)
        if c is None:
            c = coefs[t] = coefficients([t])[t]
        score = score_fn(x, time_vector(t, x))
        return torch.mul(x, c[0]).add_(score, alpha=c[1])

    return v_score
