r"""Samplers on any :mod:`time grid <scoresde.schedules>`: the :class:`OnGrid` mixin, and :class:`Euler` and
:class:`Heun`, the probability-flow ODE stepped in :math:`t`.

A solver on a grid runs on :math:`T = t_0 > \dots > t_N = \varepsilon` given by its ``grid`` argument (a name
in :data:`scoresde.schedules.GRIDS` or a :class:`~scoresde.schedules.TimeGrid`); a grid that declares
``needs_linear_sde`` is refused for other SDEs.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..schedules import TimeGrid, get_grid
from ..sde import SDE, LinearSDE
from .ode import ProbabilityFlowODE

__all__ = ["OnGrid", "Euler", "Heun"]


class OnGrid:
    """Mixin: a ``time_grid`` (:class:`TimeGrid`) replaces the uniform ``grid``."""

    time_grid: TimeGrid
    steps: int
    eps: float

    def grid(self, sde: SDE) -> np.ndarray:
        """The solver's time grid for ``sde`` (float64, strictly decreasing from ``T`` to ``eps``)."""
        return self.time_grid(sde, self.steps, self.eps)

    def check_grid(self, sde: SDE) -> None:
        """Raise ``ValueError`` if the grid needs a linear SDE and ``sde`` is not one."""
        if self.time_grid.needs_linear_sde and not isinstance(sde, LinearSDE):
            raise ValueError(f"the {self.time_grid!r} grid needs a linear SDE, got {type(sde).__name__}")


class Euler(OnGrid, ProbabilityFlowODE):
    r"""Euler's method on the probability-flow ODE in :math:`t`, on any time grid (order 1, N NFE).

    .. math::
        x_{i+1} = x_i + \big[f(t_i) x_i - \tfrac12 g(t_i)^2 s_\theta(x_i, t_i)\big]\,(t_{i+1} - t_i).

    Parameters
    ----------
    steps : int
        Number of steps :math:`N` (= NFE). Default 100.
    grid : str or TimeGrid
        ``"uniform"`` (default, score_sde's ODE step), ``"logsnr"``, ``"karras"`` or a
        :class:`~scoresde.schedules.TimeGrid`.
    eps : float
        Final time. Default 1e-3.
    denoise : bool
        Finish with the Tweedie step (one more NFE). Default False.

    Notes
    -----
    This is *not* DDIM: DDIM is Euler's method in the variables :math:`(\tilde\sigma, x/s)`
    (Karras et al. 2022), i.e. :class:`DDIM`. For VE with geometric :math:`\sigma(t)` the explicit
    step in :math:`t` is stable only for :math:`|\Delta t| < 1/\log(\sigma_{\max}/\sigma_{\min})`.
    """

    _method = "euler"

    def __init__(
        self, steps: int = 100, grid: str | TimeGrid = "uniform", eps: float = 1e-3, denoise: bool = False
    ) -> None:
        super().__init__(self._method, steps=steps, eps=eps, denoise=denoise)
        self.time_grid = get_grid(grid)

    def params(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "steps": self.steps,
            "grid": repr(self.time_grid),
            "eps": self.eps,
            "denoise": self.denoise,
        }

    def check(self, sde: SDE) -> None:
        super().check(sde)
        self.check_grid(sde)


class Heun(Euler):
    r"""Heun's method (explicit trapezoid) on the probability-flow ODE in :math:`t` (order 2, 2N NFE).

    With :math:`d(x, t) = f(t) x - \tfrac12 g(t)^2 s_\theta(x, t)` and :math:`\Delta_i = t_{i+1} - t_i`:

    .. math::
        \tilde x = x_i + d(x_i, t_i)\,\Delta_i, \qquad
        x_{i+1} = x_i + \tfrac12\big[d(x_i, t_i) + d(\tilde x, t_{i+1})\big]\,\Delta_i.

    Every step, the last included, costs two score evaluations (:math:`\sigma(\varepsilon) > 0`,
    so EDM's Euler-only final step is not needed): NFE = ``2 * steps``. Parameters as :class:`Euler`.
    """

    _method = "heun"
