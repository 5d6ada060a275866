r"""The probability-flow ODE :math:`dx/dt = f(x, t) - \tfrac12 g(t)^2 s_\theta(x, t)`: :class:`ProbabilityFlowODE`,
and the scipy ``solve_ivp`` driver shared with :func:`scoresde.log_likelihood`.

scipy integrates adaptively with error control (``SCIPY_METHODS``); the fixed-step methods are Euler
(N NFE) and Heun's explicit trapezoid (2N NFE) on a time grid (:func:`euler_heun_step`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from .._checks import check_tolerances
from .._progress import progress_bar
from ..sde import SDE, ReverseSDE
from .base import CountedScore, FixedStepSampler, LinearDrift, Trajectory

__all__ = ["ProbabilityFlowODE", "SCIPY_METHODS", "solve_ode", "euler_heun_step"]

#: a drift ``f(x, t)`` of a state and a float time
Drift = Callable[[torch.Tensor, float], torch.Tensor]


def euler_heun_step(f: Drift, x: torch.Tensor, t: float, t_next: float, heun: bool) -> torch.Tensor:
    r"""One explicit step of :math:`dx/dt = f(x, t)` from ``t`` to ``t_next``, :math:`\Delta = t_{next} - t`:
    Euler, :math:`x + f(x, t)\,\Delta` (one evaluation of ``f``), or Heun's trapezoid,
    :math:`x + \tfrac12 [f(x, t) + f(\tilde x, t_{next})]\,\Delta` with :math:`\tilde x` the Euler step
    (two evaluations)."""
    dt = t_next - t
    d = f(x, t)
    if not heun:
        return x + d * dt
    d2 = f(x + d * dt, t_next)
    return x + (0.5 * dt) * (d + d2)


def solve_ode(
    fun: Callable[[float, np.ndarray], np.ndarray],
    t_span: tuple[float, float],
    y0: np.ndarray,
    *,
    method: str,
    rtol: float,
    atol: float,
    t_eval: np.ndarray | None = None,
    desc: str,
    progress: bool,
) -> Any:
    r"""``scipy.integrate.solve_ivp(fun, t_span, y0, ...)`` with a progress bar over :math:`t` and BLAS
    limited to one thread (its threads compete with torch's); returns scipy's result object.

    The bar shows the fraction of ``t_span`` covered by the furthest time ``fun`` was asked about.
    """
    from scipy.integrate import solve_ivp
    from threadpoolctl import threadpool_limits

    t0, t1 = t_span
    bar = progress_bar(total=100, desc=desc, disable=not progress, bar_format="{l_bar}{bar}| t {postfix}")
    done = [0]

    def tracked(t: float, y: np.ndarray) -> np.ndarray:
        out = fun(t, y)
        pct = int(100 * (t - t0) / (t1 - t0))
        if pct > done[0]:
            bar.update(pct - done[0])
            done[0] = pct
            bar.set_postfix_str(f"{t:.4f}", refresh=False)
        return out

    try:
        with threadpool_limits(limits=1, user_api="blas"):
            return solve_ivp(tracked, t_span, y0, method=method, t_eval=t_eval, rtol=rtol, atol=atol)
    finally:
        bar.close()


SCIPY_METHODS = ("RK45", "RK23", "DOP853", "Radau", "BDF", "LSODA")
_FIXED_ODE_METHODS = ("euler", "heun")


class ProbabilityFlowODE(FixedStepSampler):
    r"""The probability-flow ODE :math:`dx/dt = f(x, t) - \tfrac12 g(t)^2 s_\theta(x, t)` from ``T`` to ``eps``.

    Parameters
    ----------
    method : str
        One of scipy's ``solve_ivp`` methods (``"RK45"``, ``"RK23"``, ``"DOP853"``, ``"Radau"``,
        ``"BDF"``, ``"LSODA"``), adaptive with error control, or a fixed-step torch method on the
        uniform grid: ``"euler"`` (order 1, ``steps`` NFE) or ``"heun"`` (explicit trapezoid,
        order 2, ``2 * steps`` NFE).
    rtol, atol : float
        Tolerances of the scipy methods. Default 1e-5 each.
    steps : int
        Number of steps of the fixed-step methods (ignored by scipy methods). Default 100.

    Notes
    -----
    scipy integrates the whole batch as one flat float64 system, so the error control is
    joint over the batch. The score is evaluated in the dtype of the initial state. BLAS
    threads are limited to one while scipy integrates (they compete with torch's threads).
    The implicit methods (Radau, BDF, LSODA when stiff) estimate a Jacobian by finite
    differences, one NFE per state entry: only for small problems.
    """

    stochastic = False

    def __init__(
        self,
        method: str = "RK45",
        rtol: float = 1e-5,
        atol: float = 1e-5,
        steps: int = 100,
        eps: float = 1e-3,
        denoise: bool = False,
    ) -> None:
        super().__init__(steps, eps, denoise)
        if method not in SCIPY_METHODS + _FIXED_ODE_METHODS:
            raise ValueError(
                f"unknown method {method!r}; choose one of scipy's {list(SCIPY_METHODS)} or the "
                f"fixed-step {list(_FIXED_ODE_METHODS)}"
            )
        self.method = method
        self.rtol, self.atol = check_tolerances(rtol, atol, torch.float64)

    def params(self) -> dict[str, Any]:
        p: dict[str, Any] = {"method": self.method}
        if self.method in SCIPY_METHODS:
            p.update(rtol=self.rtol, atol=self.atol)
        else:
            p.update(steps=self.steps)
        p.update(eps=self.eps, denoise=self.denoise)
        return p

    def prepare(self, sde: SDE, score_fn: CountedScore) -> ReverseSDE | LinearDrift:
        """The probability-flow ODE, as a :class:`~scoresde.integrators.base.LinearDrift` where it applies."""
        ode = sde.reverse(score_fn, probability_flow=True)
        return LinearDrift(ode) if LinearDrift.applies(ode) else ode

    def max_saved_states(self, sde: SDE) -> int | None:
        """``steps + 1`` for the fixed-step methods; no limit for scipy's (it saves at exact times)."""
        return None if self.method in SCIPY_METHODS else self.steps + 1

    @property
    def nfe_per_step(self) -> int | None:
        """1 (``"euler"``), 2 (``"heun"``), ``None`` for scipy's adaptive methods."""
        return {"euler": 1, "heun": 2}.get(self.method)

    def step(
        self,
        ode: ReverseSDE | LinearDrift,
        sde: SDE,
        x: torch.Tensor,
        t: float,
        t_next: float,
        generator: torch.Generator,
    ) -> torch.Tensor:
        f: Drift = ode if isinstance(ode, LinearDrift) else (lambda y, s: ode.sde(y, s)[0])
        return euler_heun_step(f, x, t, t_next, self.method == "heun")

    def integrate(
        self,
        sde: SDE,
        score_fn: CountedScore,
        x: torch.Tensor,
        generator: torch.Generator,
        save_times: np.ndarray,
        progress: bool,
    ) -> Trajectory:
        if self.method in _FIXED_ODE_METHODS:
            return super().integrate(sde, score_fn, x, generator, save_times, progress)
        return self._integrate_scipy(sde, score_fn, x, save_times, progress)

    def _integrate_scipy(
        self, sde: SDE, score_fn: CountedScore, x: torch.Tensor, save_times: np.ndarray, progress: bool
    ) -> Trajectory:
        check_tolerances(self.rtol, self.atol, x.dtype)
        ode = sde.reverse(score_fn, probability_flow=True)
        shape, dtype, device = x.shape, x.dtype, x.device
        t_eval = np.unique(np.clip(np.concatenate([save_times, [sde.T, self.eps]]), self.eps, sde.T))[::-1]
        guard = score_fn.guard
        guard.step_name = "right-hand-side evaluation"
        evals = [0]

        def fun(t: float, y: np.ndarray) -> np.ndarray:
            xt = torch.from_numpy(y).to(dtype=dtype, device=device).reshape(shape)
            # the state scipy asks about, then the drift (a NaN/inf score shows there first)
            guard.check(xt, evals[0], float(t))
            drift = ode.sde(xt, float(t))[0]
            guard.check(drift, evals[0], float(t), what="drift (from the score)", bounded=False)
            evals[0] += 1
            return drift.reshape(-1).to(device="cpu", dtype=torch.float64).numpy()

        y0 = x.reshape(-1).to(device="cpu", dtype=torch.float64).numpy()
        sol = solve_ode(
            fun,
            (sde.T, self.eps),
            y0,
            method=self.method,
            rtol=self.rtol,
            atol=self.atol,
            t_eval=t_eval,
            desc="ProbabilityFlowODE",
            progress=progress,
        )
        if sol.status != 0:
            t_fail = float(sol.t[-1]) if len(sol.t) else sde.T
            raise RuntimeError(
                f"solve_ivp({self.method}) failed near t = {t_fail:.6g} after {evals[0]} evaluations: {sol.message} "
                f"The states it evaluated were finite with |x| <= {guard.max_abs_x:.3g} (divergence_bound="
                f"{guard.bound:.3g}); a step-size failure with a finite state means a stiff or very steep drift: check "
                f"score_fn near that time, loosen rtol/atol, or use an implicit method (Radau, BDF)"
            )
        traj = Trajectory(
            stats={
                "nfev": int(sol.nfev),
                "njev": int(sol.njev),
                "nlu": int(sol.nlu),
                "solver_message": str(sol.message),
            }
        )
        guard.check(torch.from_numpy(sol.y[:, -1]), None, float(sol.t[-1]))
        for j, t in enumerate(sol.t):
            state = torch.from_numpy(np.ascontiguousarray(sol.y[:, j])).to(dtype=dtype, device=device)
            # scipy's dense output gives no NFE per time: record the total at the end only
            traj.save(t, state.reshape(shape), score_fn.nfe if j == len(sol.t) - 1 else -1)
        return traj
