r"""Samplers on any :mod:`time grid <scoresde.time_grids>`: the :class:`OnGrid` mixin, and :class:`Euler` and
:class:`Heun` on the probability-flow ODE, stepped in the noise level (EDM form, the default for VE)
or in :math:`t` (``form``).

A solver on a grid runs on :math:`T = t_0 > \dots > t_N = \varepsilon` given by its ``grid`` argument (a name
in :data:`scoresde.time_grids.GRIDS` or a :class:`~scoresde.time_grids.TimeGrid`); a grid that declares
``needs_linear_sde`` is refused for other SDEs.

Ending at :math:`\sigma = 0`
----------------------------
Solvers that step with the data prediction (:class:`Euler` and :class:`Heun` in EDM form, :class:`DDIM`,
:class:`DPMSolverPP`, :class:`UniPC`) take ``to_zero=True``: the run then ends exactly at noise level
:math:`\sigma = 0`, the data, at no extra score evaluation. Its ``steps`` count that final step: the solver
makes ``steps - 1`` steps on the grid :math:`T = t_0 > \dots > t_{N-1} = \varepsilon` (the grid of
``steps - 1`` steps; for ``steps = 1`` the grid is :math:`T` alone) and a last step from
:math:`t_{N-1}` to :math:`\tilde\sigma = 0`. In the noise level :math:`\tilde\sigma = \sigma/s` every one of
these solvers reduces there to its first-order step, whose value at :math:`\tilde\sigma = 0` is the data
prediction (Tweedie's formula)

.. math::
    x_{\sigma = 0} = \hat x_0(x_{N-1}, t_{N-1}) = \frac{x_{N-1} + \sigma(t_{N-1})^2\,
        s_\theta(x_{N-1}, t_{N-1})}{s(t_{N-1})},

(the limit :math:`h \to \infty` of the exponential integrators' updates, EDM's Euler-only last step;
Karras et al. 2022, Algorithm 1), so no :math:`\log 0` and no zero-length step occur. The state is saved at
``time = 0.0`` (as ``denoise=True`` saves its denoised state); ``denoise=True`` and ``to_zero=True`` exclude
each other. On the Karras grid this is EDM's schedule: ``steps`` noise levels from :math:`\tilde\sigma(T)` to
:math:`\tilde\sigma(\varepsilon)`, then 0.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .._kernels import check_linear, is_variance_exploding, kernel, time_vector, tweedie
from ..sde import SDE, LinearSDE, ReverseSDE
from ..time_grids import TimeGrid, get_grid
from .base import CountedScore, LinearDrift, Trajectory
from .ode import ProbabilityFlowODE

__all__ = ["OnGrid", "Euler", "Heun", "FORMS"]

#: the variables :class:`Euler` and :class:`Heun` step in
FORMS = ("auto", "edm", "t")


class OnGrid:
    """Mixin: a ``time_grid`` (:class:`TimeGrid`) replaces the uniform ``grid``, and ``to_zero`` (see the
    module docstring) ends the run at :math:`\\sigma = 0` with the data prediction."""

    time_grid: TimeGrid
    steps: int
    eps: float
    denoise: bool
    #: end the run at sigma = 0 with the data prediction (the last of ``steps`` steps)
    to_zero: bool = False

    def set_to_zero(self, to_zero: bool) -> None:
        """Set :attr:`to_zero`; ``ValueError`` if ``denoise`` is also set."""
        self.to_zero = bool(to_zero)
        if self.to_zero and self.denoise:
            raise ValueError(
                "to_zero=True already ends the run at sigma = 0 with the data prediction (within steps); "
                "denoise=True would add a second final step: choose one"
            )

    @property
    def grid_steps(self) -> int:
        """The steps made on the time grid, ``steps`` or ``steps - 1`` with ``to_zero`` (the last step goes
        from the grid's end to sigma = 0)."""
        return self.steps - 1 if self.to_zero else self.steps

    def time_points(self, sde: SDE) -> np.ndarray:
        """The solver's time grid for ``sde`` (float64, strictly decreasing from ``T`` to ``eps``; with
        ``to_zero`` the grid of ``steps - 1`` steps, or ``[T]`` for ``steps = 1``)."""
        if self.grid_steps == 0:
            return np.array([float(sde.T)])
        return self.time_grid(sde, self.grid_steps, self.eps)

    def check_grid(self, sde: SDE) -> None:
        """Raise ``ValueError`` if the grid needs a linear SDE and ``sde`` is not one (or ``to_zero`` is set)."""
        if self.time_grid.needs_linear_sde and not isinstance(sde, LinearSDE):
            raise ValueError(f"the {self.time_grid!r} grid needs a linear SDE, got {type(sde).__name__}")
        if self.to_zero:
            check_linear(self, sde)

    def integrate(
        self,
        sde: SDE,
        score_fn: CountedScore,
        x: torch.Tensor,
        generator: torch.Generator,
        save_times: np.ndarray,
        progress: bool,
    ) -> Trajectory:
        """Run the grid steps, then (``to_zero``) the last step to sigma = 0, saved at ``time = 0.0``."""
        traj: Trajectory = super().integrate(sde, score_fn, x, generator, save_times, progress)  # type: ignore[misc]
        if self.to_zero:
            x_last, t_last = traj.states[-1], traj.times[-1]
            s, sigma, _ = kernel(sde, t_last)
            x0 = tweedie(x_last, score_fn(x_last, time_vector(t_last, x_last)), s, sigma)
            score_fn.guard.current_step = self.grid_steps
            score_fn.guard.check(x0, self.grid_steps, t_last, 0.0, what="state at sigma = 0")
            traj.save(0.0, x0, score_fn.nfe)
        return traj


class Euler(OnGrid, ProbabilityFlowODE):
    r"""Euler's method on the probability-flow ODE, on any time grid (order 1, N NFE).

    ``form="edm"`` (what ``"auto"``, the default, picks for VE) steps in the EDM variables, the scaled state
    :math:`\tilde x = x/s(t)` and the noise level :math:`\tilde\sigma = \sigma(t)/s(t)` (Karras et al. 2022,
    eq. 4), in which the probability-flow ODE of every linear SDE reads

    .. math::
        \frac{d\tilde x}{d\tilde\sigma} = \frac{\tilde x - D(x, t)}{\tilde\sigma}
            = \hat\varepsilon(x, t) = -\sigma(t)\,s_\theta(x, t),
        \qquad D(x, t) = \frac{x + \sigma(t)^2 s_\theta(x, t)}{s(t)}

    (:math:`D` is Tweedie's data prediction), stepped on the grid's :math:`\tilde\sigma_i = \tilde\sigma(t_i)`:

    .. math::
        \tilde x_{i+1} = \tilde x_i + (\tilde\sigma_{i+1} - \tilde\sigma_i)\,\hat\varepsilon(x_i, t_i),
        \qquad x_{i+1} = s(t_{i+1})\,\tilde x_{i+1}.

    This step equals :class:`DDIM` (``eta=0``). ``form="t"`` steps the ODE in :math:`t` (score_sde's ODE step):

    .. math::
        x_{i+1} = x_i + \big[f(t_i) x_i - \tfrac12 g(t_i)^2 s_\theta(x_i, t_i)\big]\,(t_{i+1} - t_i).

    Parameters
    ----------
    steps : int
        Number of steps :math:`N` (= NFE). Default 100.
    grid : str or TimeGrid
        ``"uniform"`` (default, score_sde's ODE step), ``"logsnr"``, ``"karras"`` or a
        :class:`~scoresde.time_grids.TimeGrid`.
    eps : float
        Final time. Default 1e-3.
    denoise : bool
        Finish with the Tweedie step (one more NFE). Default False.
    form : {"auto", "edm", "t"}
        The variables stepped in: ``"edm"`` (noise level, linear SDEs only), ``"t"``, or ``"auto"``
        (default): ``"edm"`` for a variance-exploding kernel (:math:`s \equiv 1`: :class:`~scoresde.VESDE`,
        :class:`~scoresde.EDMSDE`) and whenever ``to_zero`` is set, ``"t"`` otherwise. On VE the step in
        :math:`t` follows :math:`\sigma(t)` poorly (a geometric :math:`\sigma` makes the drift in :math:`t`
        grow like :math:`\sigma^2`) and the EDM form is far more accurate at equal NFE; on VP the EDM form
        is Euler's method in DDIM's variables and the step in :math:`t` is more accurate on the uniform and
        Karras grids (see ``benchmarks/edm_table.py``).
    to_zero : bool
        End at :math:`\sigma = 0` with the data prediction, within ``steps`` (EDM form only; see
        :mod:`scoresde.integrators.fixed_grid`). Default False.

    Notes
    -----
    In :math:`t`, for VE with geometric :math:`\sigma(t)` the explicit step is stable only for
    :math:`|\Delta t| < 1/\log(\sigma_{\max}/\sigma_{\min})`; in :math:`\tilde\sigma` the drift of a
    Gaussian component is :math:`\tilde\sigma/(c + \tilde\sigma^2)` times the state, which a step on a
    decreasing grid never amplifies.
    """

    _method = "euler"

    def __init__(
        self,
        steps: int = 100,
        grid: str | TimeGrid = "uniform",
        eps: float = 1e-3,
        denoise: bool = False,
        form: str = "auto",
        to_zero: bool = False,
    ) -> None:
        super().__init__(self._method, steps=steps, eps=eps, denoise=denoise)
        self.time_grid = get_grid(grid)
        if form not in FORMS:
            raise ValueError(f"unknown form {form!r}; choose one of {FORMS}")
        self.form = form
        self.set_to_zero(to_zero)
        if self.to_zero and form == "t":
            raise ValueError(
                "to_zero=True needs the EDM form (the data prediction ends the run at sigma = 0); the ODE in t "
                "cannot reach sigma = 0: use form='edm' or 'auto'"
            )

    def params(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "steps": self.steps,
            "grid": repr(self.time_grid),
            "eps": self.eps,
            "denoise": self.denoise,
            "form": self.form,
            "to_zero": self.to_zero,
        }

    def form_for(self, sde: SDE) -> str:
        """The form a run on ``sde`` uses: ``form``, with ``"auto"`` resolved to ``"edm"`` for a variance-exploding
        kernel (:math:`s \\equiv 1`) or with ``to_zero``, else ``"t"``."""
        if self.form != "auto":
            return self.form
        return "edm" if self.to_zero or is_variance_exploding(sde) else "t"

    def check(self, sde: SDE) -> None:
        super().check(sde)
        self.check_grid(sde)
        if self.form == "edm":
            check_linear(self, sde)

    @property
    def nfe_per_step(self) -> int | None:
        """Score evaluations per grid step, 1 (Euler) or 2 (Heun)."""
        return 2 if self.method == "heun" else 1

    def expected_nfe(self, sde: SDE) -> int | None:
        """``nfe_per_step`` per grid step, one for the final step of ``to_zero`` or ``denoise``."""
        assert self.nfe_per_step is not None
        return self.grid_steps * self.nfe_per_step + int(self.to_zero) + int(self.denoise)

    def prepare(self, sde: SDE, score_fn: CountedScore) -> Any:
        """The probability-flow ODE (form ``"t"``), or the counted score itself (EDM form)."""
        return super().prepare(sde, score_fn) if self.form_for(sde) == "t" else score_fn

    def step(
        self,
        state: ReverseSDE | LinearDrift | CountedScore,
        sde: SDE,
        x: torch.Tensor,
        t: float,
        t_next: float,
        generator: torch.Generator,
    ) -> torch.Tensor:
        if isinstance(state, CountedScore):  # the EDM form
            return edm_step(state, sde, x, t, t_next, heun=self.method == "heun")
        return super().step(state, sde, x, t, t_next, generator)


class Heun(Euler):
    r"""Heun's method (explicit trapezoid) on the probability-flow ODE, on any time grid (order 2, 2N NFE).

    With :math:`d_i = \hat\varepsilon(x_i, t_i) = -\sigma(t_i)\,s_\theta(x_i, t_i)` and the EDM variables of
    :class:`Euler` (``form="edm"``, the default for VE; Karras et al. 2022, Algorithm 1):

    .. math::
        \tilde x' = \tilde x_i + (\tilde\sigma_{i+1} - \tilde\sigma_i)\,d_i, \qquad
        \tilde x_{i+1} = \tilde x_i + \tfrac12(\tilde\sigma_{i+1} - \tilde\sigma_i)
            \big[d_i + \hat\varepsilon(s_{i+1}\tilde x', t_{i+1})\big],

    and :math:`x_{i+1} = s(t_{i+1})\,\tilde x_{i+1}`. With ``form="t"``, :math:`d(x, t) = f(t) x - \tfrac12 g(t)^2
    s_\theta(x, t)` and :math:`\Delta_i = t_{i+1} - t_i`:

    .. math::
        \tilde x = x_i + d(x_i, t_i)\,\Delta_i, \qquad
        x_{i+1} = x_i + \tfrac12\big[d(x_i, t_i) + d(\tilde x, t_{i+1})\big]\,\Delta_i.

    Every grid step costs two score evaluations: NFE = ``2 * steps``. With ``to_zero=True`` the last step,
    to :math:`\sigma = 0`, is an Euler step (EDM's), so NFE = ``2 * steps - 1``. Parameters as :class:`Euler`.
    """

    _method = "heun"


def edm_step(score_fn: CountedScore, sde: SDE, x: torch.Tensor, t: float, t_next: float, heun: bool) -> torch.Tensor:
    r"""One Euler or Heun step of :math:`d\tilde x/d\tilde\sigma = \hat\varepsilon` from ``t`` to ``t_next``
    (see :class:`Euler`, :class:`Heun`), returned in the original variable :math:`x = s\,\tilde x`."""
    s, sigma, _ = kernel(sde, t)
    s2, sigma2, _ = kernel(sde, t_next)
    dsig = sigma2 / s2 - sigma / s
    xt = x / s
    d = score_fn(x, time_vector(t, x)) * -sigma
    x_euler = xt + dsig * d
    if not heun:
        return x_euler.mul_(s2)
    x_euler.mul_(s2)
    d2 = score_fn(x_euler, time_vector(t_next, x_euler)) * -sigma2
    return xt.add_((0.5 * dsig) * (d + d2)).mul_(s2)
