r"""What every integrator is built on: :class:`Sampler`, :class:`FixedStepSampler`, :class:`CountedScore`
and :class:`Trajectory`.

Every sampler integrates from :math:`t = T` down to a small :math:`\varepsilon` (``eps``, default ``1e-3``)
and may finish with the one-step Tweedie denoiser

.. math::
    \hat x_0 = \big(x_\varepsilon + \sigma(\varepsilon)^2\,
    s_\theta(x_\varepsilon, \varepsilon)\big) / s(\varepsilon)

(``denoise=True``; linear SDEs only).

Writing a sampler
-----------------
:func:`scoresde.sample` calls :meth:`Sampler.run`, which checks the SDE (:meth:`Sampler.check`), sets up
the run's divergence guard, calls :meth:`Sampler.integrate` and applies the denoising step. A new sampler
subclasses one of the two base classes:

* :class:`FixedStepSampler` — a loop over a time grid :math:`T = t_0 > \dots > t_N = \varepsilon`. Implement

  - :meth:`FixedStepSampler.step`: ``step(state, sde, x, t, t_next, generator) -> x_next``, one step from
    :math:`t_i` to :math:`t_{i+1}`; ``state`` is what :meth:`FixedStepSampler.prepare` returned at the start
    of the run (default: the reverse-time SDE ``sde.reverse(score_fn)``, whose ``sde(x, t)`` gives the
    reverse drift :math:`\bar f = f - g^2 s_\theta` and diffusion :math:`g`). Draw random numbers from
    ``generator`` only, evaluate the score only through ``score_fn`` (it counts the NFE), and return a new
    tensor (do not modify ``x`` in place);
  - :attr:`FixedStepSampler.nfe_per_step`: the score evaluations one step makes (``None`` if not fixed);
  - optionally :meth:`FixedStepSampler.grid` (default: uniform in :math:`t`), :meth:`Sampler.check` (raise
    ``ValueError`` for SDEs the method is not defined for), :meth:`Sampler.params` (provenance) and
    :meth:`FixedStepSampler.prepare_run` (a per-run state that needs the run's grid, built once).

  Coefficients that depend on the time only are best computed once per run rather than once per step:
  :class:`LinearDrift` does so for the reverse drift of a linear SDE, and :func:`run_table` gives a dict
  that lives as long as the run's reverse-time SDE.

  The base class runs the loop, checks every state for divergence, saves the states nearest the requested
  times and shows the progress bar.
* :class:`Sampler` — anything else (adaptive steps, external libraries). Implement :meth:`Sampler.integrate`,
  which returns a :class:`Trajectory` of the saved times (decreasing from ``T`` to ``eps``), states and
  cumulative NFE, and check each new state with ``score_fn.guard.check(x, step, t, t_next)``; declare
  :meth:`Sampler.expected_nfe` where the NFE is known in advance.

Attributes every sampler declares: ``stochastic`` (whether it draws random numbers) and
``handles_zero_signal_at_T`` (whether it can start at a :math:`T` where the signal scale :math:`s(T) = 0`,
as for rectified flow; only velocity integrators can).
"""

from __future__ import annotations

import abc
import weakref
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import torch

from .._checks import check_positive, check_positive_int
from .._guard import DivergenceGuard, check_score_output, max_abs, resolve_bound
from .._kernels import is_variance_exploding, is_variance_preserving, singular_at_T, time_vector, tweedie
from .._progress import progress_bar
from ..sde import SDE, VESDE, LinearSDE, ReverseSDE, ScoreFn

__all__ = ["Sampler", "FixedStepSampler", "CountedScore", "Trajectory"]


class CountedScore:
    """Wraps a score function for one run: counts its evaluations (one call on a batch = one NFE),
    checks the first result against the score-function contract, and carries the run's
    :class:`~scoresde._guard.DivergenceGuard` (set by :meth:`Sampler.run`).

    The contract: ``score_fn(x, t)`` returns a ``torch.Tensor`` of ``x``'s shape, floating dtype and
    device. Nothing is broadcast or cast (a float64 score for a float32 state is an error, for every
    sampler alike); a result that breaks it raises ``TypeError`` or ``ValueError`` naming ``score_fn``.
    Only the first call of a run is checked, so the check costs nothing per step.
    """

    def __init__(self, score_fn: ScoreFn) -> None:
        self.score_fn = score_fn
        self.nfe = 0
        self.guard = DivergenceGuard("sampler")
        self._checked = False

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.nfe += 1
        return self.checked(x, self.score_fn(x, t))

    def checked(self, x: torch.Tensor, out: Any, name: str = "score_fn") -> torch.Tensor:
        """Return ``out``, the result of an evaluation at ``x``, after checking the first one of the run."""
        if not self._checked:
            check_score_output(out, x, name)
            self._checked = True
        return cast(torch.Tensor, out)  # a tensor by the contract checked on the first call


@dataclass
class Trajectory:
    """What a sampler hands back: saved times (descending), saved states, cumulative NFE, stats."""

    times: list[float] = field(default_factory=list)
    states: list[torch.Tensor] = field(default_factory=list)
    nfe: list[int] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)

    def save(self, t: float, x: torch.Tensor, nfe: int) -> None:
        self.times.append(float(t))
        self.states.append(x.detach().clone())
        self.nfe.append(int(nfe))


class Sampler(abc.ABC):
    """Base class: ``eps`` (end time) and ``denoise`` (final Tweedie step) are common to all."""

    #: whether the sampler draws random numbers (the SDE samplers) or is deterministic (ODEs)
    stochastic: bool = True
    #: whether the sampler can start at a final time ``T`` with ``s(T) = 0`` (rectified flow); only the
    #: velocity integrators can
    handles_zero_signal_at_T: bool = False
    #: whether ``eps = 0`` is legal; true where the last step lands on the data itself (a discrete chain)
    eps_may_be_zero: bool = False

    def __init__(self, eps: float = 1e-3, denoise: bool = False) -> None:
        if self.eps_may_be_zero and type(eps) in (int, float) and eps == 0:
            self.eps = 0.0
        else:
            self.eps = check_positive("eps", eps)
        self.denoise = bool(denoise)

    def params(self) -> dict[str, Any]:
        """Parameters recorded in the Dataset's provenance attributes."""
        return {"eps": self.eps, "denoise": self.denoise}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"

    def check(self, sde: SDE) -> None:
        """Raise ``ValueError`` if this sampler cannot run ``sde``."""
        check_forward(sde)
        if self.eps >= sde.T:
            raise ValueError(f"eps={self.eps!r} must be smaller than the SDE's T={sde.T!r}")
        if self.denoise and not isinstance(sde, LinearSDE):
            raise ValueError("denoise=True needs a linear SDE (Tweedie's formula uses s(t), sigma(t))")
        # ``singular_T_ok`` is the attribute's former name, still honoured on user subclasses
        handles = self.handles_zero_signal_at_T or bool(getattr(self, "singular_T_ok", False))
        if not handles and singular_at_T(sde):
            raise ValueError(
                f"{type(sde).__name__} has s(T) = 0, so its drift f = s'/s is infinite at t = T and "
                f"{type(self).__name__} cannot start there; sample it with scoresde.FlowODE"
            )

    def expected_nfe(self, sde: SDE) -> int | None:
        """The exact number of score evaluations a run on ``sde`` makes, the denoising step included, or
        ``None`` where it is known only after the run (adaptive step sizes)."""
        return None

    def max_saved_states(self, sde: SDE) -> int | None:
        """How many distinct states from ``T`` to ``eps`` a run can save (``None``: no limit of its own).

        Fixed-step samplers save states on their grid, so at most ``steps + 1``; samplers that save at
        exact times (scipy, torchsde) have no such limit.
        """
        return None

    @abc.abstractmethod
    def integrate(
        self,
        sde: SDE,
        score_fn: CountedScore,
        x: torch.Tensor,
        generator: torch.Generator,
        save_times: np.ndarray,
        progress: bool,
    ) -> Trajectory:
        """Integrate from ``x`` at ``T`` to ``eps``, saving the states nearest ``save_times``."""

    def run(
        self,
        sde: SDE,
        score_fn: CountedScore,
        x: torch.Tensor,
        generator: torch.Generator,
        save_times: np.ndarray,
        progress: bool = True,
        divergence_bound: float | str | None = "auto",
    ) -> Trajectory:
        r"""Check, integrate, and apply the optional denoising step (saved at ``t = 0``).

        Every state the run makes is checked by a :class:`~scoresde._guard.DivergenceGuard` (set on
        ``score_fn.guard``): a NaN/inf state, or one with :math:`\|x\|_\infty` above
        ``divergence_bound`` (``"auto"``: :math:`10^3(\sigma_T + \max(1, \|x_T\|_\infty))`; a number;
        ``None`` disables the bound), raises :class:`DivergenceError`. ``Trajectory.stats["max_abs_x"]``
        records the largest :math:`\|x\|_\infty` of the completed run.
        """
        self.check(sde)
        bound = resolve_bound(divergence_bound, sde, x)
        guard = score_fn.guard = DivergenceGuard(type(self).__name__, bound, device=x.device)
        guard.max_abs_x = float(max_abs(x))
        traj = self.integrate(sde, score_fn, x, generator, save_times, progress)
        if self.denoise:
            x_eps = traj.states[-1]
            # check() allows denoise=True for linear SDEs only
            _, _, s, sigma = cast(LinearSDE, sde).coefficients(self.eps, like=x_eps)
            score = score_fn(x_eps, time_vector(self.eps, x_eps))
            x0 = tweedie(x_eps, score, s, sigma)
            guard.check(x0, None, self.eps, 0.0, what="denoised state")
            traj.save(0.0, x0, score_fn.nfe)
        guard.finish()
        traj.stats["max_abs_x"] = guard.max_abs_x
        return traj


def check_forward(sde: SDE) -> None:
    """Raise ``ValueError`` if ``sde`` is a reversed SDE (samplers take the forward one)."""
    if isinstance(sde, ReverseSDE) or getattr(sde, "reversed", False):
        raise ValueError(
            f"sde is a reversed SDE ({type(sde).__name__}, e.g. from sde.reverse(score_fn)); pass the forward "
            f"SDE (e.g. sde.base): the sampler builds the reverse-time process from it and score_fn itself"
        )


class FixedStepSampler(Sampler):
    """A sampler on a time grid (default: uniform, ``linspace(T, eps, steps + 1)``); subclasses define
    :meth:`step` and :attr:`nfe_per_step` (see the module docstring)."""

    def __init__(self, steps: int = 1000, eps: float = 1e-3, denoise: bool = False) -> None:
        super().__init__(eps, denoise)
        self.steps = check_positive_int("steps", steps)

    def params(self) -> dict[str, Any]:
        return {"steps": self.steps, **super().params()}

    def time_points(self, sde: SDE) -> np.ndarray:
        """The times the sampler steps through, float64, strictly decreasing from ``T`` to ``eps``.

        Override it for another grid (a subclass that still overrides :meth:`grid`, this method's former
        name, is honoured)."""
        if type(self).grid is not FixedStepSampler.grid:
            return type(self).grid(self, sde)
        return np.linspace(sde.T, self.eps, self.steps + 1)

    def grid(self, sde: SDE) -> np.ndarray:
        """Former name of :meth:`time_points`."""
        return self.time_points(sde)

    def max_saved_states(self, sde: SDE) -> int | None:
        """``steps + 1``: the states on the grid."""
        return self.steps + 1

    @property
    def nfe_per_step(self) -> int | None:
        """Score evaluations per step, or ``None`` where it is not a fixed number."""
        return None

    def expected_nfe(self, sde: SDE) -> int | None:
        """``steps * nfe_per_step``, plus one for the denoising step."""
        n = self.nfe_per_step
        return None if n is None else self.steps * n + int(self.denoise)

    def prepare(self, sde: SDE, score_fn: CountedScore) -> Any:
        """Per-run state handed to every ``step`` (default: the reverse-time SDE)."""
        return sde.reverse(score_fn)

    def prepare_run(self, sde: SDE, score_fn: CountedScore, grid: np.ndarray) -> Any:
        """Per-run state for a run on ``grid`` (the run's :meth:`time_points`, built once): :meth:`prepare` by default.

        Samplers whose state depends on the grid override this rather than build the grid again.
        """
        return self.prepare(sde, score_fn)

    @abc.abstractmethod
    def step(
        self, state: Any, sde: SDE, x: torch.Tensor, t: float, t_next: float, generator: torch.Generator
    ) -> torch.Tensor:
        """Advance ``x`` from ``t`` to ``t_next < t``.

        Parameters
        ----------
        state
            What :meth:`prepare` returned for this run (default: ``sde.reverse(score_fn)``).
        sde : SDE
            The forward SDE.
        x : torch.Tensor
            The state at ``t``; not to be modified in place.
        t, t_next : float
            Consecutive grid times, ``t_next < t``.
        generator : torch.Generator
            The run's generator: the only source of random numbers.

        Returns
        -------
        torch.Tensor
            The state at ``t_next``, of ``x``'s shape, dtype and device, after exactly :attr:`nfe_per_step`
            score evaluations.
        """

    def integrate(
        self,
        sde: SDE,
        score_fn: CountedScore,
        x: torch.Tensor,
        generator: torch.Generator,
        save_times: np.ndarray,
        progress: bool,
    ) -> Trajectory:
        grid = self.time_points(sde)
        save_idx = set(nearest_indices(grid, save_times))
        state = self.prepare_run(sde, score_fn, grid)
        times: list[float] = grid.tolist()  # Python floats, converted once per run
        traj = Trajectory()
        if 0 in save_idx:
            traj.save(times[0], x, score_fn.nfe)
        desc = type(self).__name__
        guard = score_fn.guard
        step = self.step
        for i in progress_bar(range(len(times) - 1), desc=desc, disable=not progress):
            t, t_next = times[i], times[i + 1]
            guard.current_step = i
            x = step(state, sde, x, t, t_next, generator)
            guard.check(x, i, t, t_next)
            if i + 1 in save_idx:
                traj.save(t_next, x, score_fn.nfe)
        return traj


def nearest_indices(grid: np.ndarray, times: np.ndarray) -> list[int]:
    """Indices of the grid points nearest ``times``, and of the last one, sorted."""
    return sorted({int(np.argmin(np.abs(grid - t))) for t in np.atleast_1d(times)} | {len(grid) - 1})


class LinearDrift:
    r"""The drift :math:`\bar f(x, t) = f(t)\,x - c\,g(t)^2 s_\theta(x, t)` of ``rsde``, the reverse-time SDE
    (:math:`c = 1`) or probability-flow ODE (:math:`c = \tfrac12`) of a linear SDE, with :math:`f(t)`,
    :math:`-c\,g(t)^2` and :math:`g(t)` as Python floats computed once per time of the run.

    The coefficients come from the SDE's own ``drift_coef`` and ``diffusion_coef`` on a 0-d tensor in the
    state's dtype, combined in the order of :meth:`scoresde.ReverseSDE.sde`, so the drift is bit-identical
    to ``rsde.sde(x, t)[0]`` on the CPU while each step makes no coefficient tensors of its own. Use
    :meth:`applies` first: it holds for a :class:`~scoresde.ReverseSDE` of a :class:`~scoresde.LinearSDE`
    that keeps the linear drift :math:`f(t)\,x` (``sde`` not overridden, as for VP, sub-VP and VE).
    """

    def __init__(self, rsde: ReverseSDE) -> None:
        self.rsde = rsde
        self.zero_drift = type(rsde.base).sde is VESDE.sde
        self.c = 0.5 if rsde.probability_flow else 1.0
        self._table: dict[float, tuple[torch.Tensor, float, float, float]] = {}

    @staticmethod
    def applies(rsde: Any) -> bool:
        r"""Whether ``rsde`` is a reverse-time SDE or ODE of a forward linear SDE with the drift :math:`f(t)\,x`."""
        if type(rsde) is not ReverseSDE:
            return False
        base = rsde.base
        return isinstance(base, LinearSDE) and not base.reversed and type(base).sde in (LinearSDE.sde, VESDE.sde)

    def coefficients(self, t: float, x: torch.Tensor) -> tuple[torch.Tensor, float, float, float]:
        """``(t as a 0-d tensor, f(t), -c g(t)^2, g(t))`` in ``x``'s dtype (the floats hold its values exactly)."""
        entry = self._table.get(t)
        if entry is None:
            base = cast(LinearSDE, self.rsde.base)  # applies() accepts linear SDEs only
            tt = torch.tensor(float(t), dtype=x.dtype, device=x.device)
            f = 0.0 if self.zero_drift else float(base.drift_coef(tt))
            g = base.diffusion_coef(tt)
            k = float((-self.c) * g**2)
            entry = self._table[t] = (tt, f, k, float(g))
        return entry

    def diffusion_times(self, t: float, x: torch.Tensor, factor: float) -> float:
        """:math:`g(t)` times ``factor``, rounded to ``x``'s dtype as ``g(t) * factor`` on a tensor would be."""
        tt = self.coefficients(t, x)[0]
        return float(cast(LinearSDE, self.rsde.base).diffusion_coef(tt) * factor)

    def __call__(self, x: torch.Tensor, t: float) -> torch.Tensor:
        r""":math:`\bar f(x, t)`: one score evaluation."""
        tt, f, k, _ = self.coefficients(t, x)
        score = self.rsde.score_fn(x, tt.reshape(-1).expand(x.shape[0]))
        drift = score * k
        if not self.zero_drift:
            drift.add_(x * f)
        return drift


#: per-run tables of step coefficients, keyed (weakly) by the run's reverse-time SDE
_RUN_TABLES: weakref.WeakKeyDictionary[Any, dict[Any, Any]] = weakref.WeakKeyDictionary()


def run_kernel_kind(rsde: Any) -> tuple[bool, bool]:
    """``(variance preserving, variance exploding)`` for the forward SDE of ``rsde`` (see
    :func:`scoresde._kernels.is_variance_preserving`), probed once per run."""
    table = run_table(rsde)
    kind = table.get("kernel_kind")
    if kind is None:
        kind = table["kernel_kind"] = (is_variance_preserving(rsde.base), is_variance_exploding(rsde.base))
    return cast(tuple[bool, bool], kind)


def run_table(rsde: Any) -> dict[Any, Any]:
    """A dict that lives as long as ``rsde`` (the reverse-time SDE a run builds in ``prepare``): where the
    steps of that run keep coefficients they compute once per time rather than once per step."""
    table = _RUN_TABLES.get(rsde)
    if table is None:
        table = _RUN_TABLES[rsde] = {}
    return table
