r"""The probability-flow ODE :math:`dx/dt = f(x, t) - \tfrac12 g(t)^2 s_\theta(x, t)`: :class:`ProbabilityFlowODE`,
and the adaptive ODE driver :func:`solve_ode` shared with :func:`scoresde.log_likelihood`.

Two backends integrate adaptively with error control, selected by the method's name:

* scipy's ``solve_ivp`` (``SCIPY_METHODS``): the state goes through a flat float64 NumPy array on the CPU;
* torchdiffeq's ``odeint`` (``TORCHDIFFEQ_METHODS``, the optional dependency ``scoresde[torchdiffeq]``): the
  state stays a tensor of its own dtype and device, times are float64. Its solvers would step past the
  end of the time span and interpolate back; the end time is passed as a step point (``step_t``), so
  every step ends exactly there and no right-hand side is evaluated outside the span (a time within a
  rounding error of an end is clamped to it; anything further raises ``RuntimeError``).

The fixed-step methods are Euler (N NFE) and Heun's explicit trapezoid (2N NFE) on a time grid
(:func:`euler_heun_step`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .._checks import check_tolerances
from .._progress import progress_bar
from ..sde import SDE, ReverseSDE
from .base import CountedScore, FixedStepSampler, LinearDrift, Trajectory

__all__ = [
    "ProbabilityFlowODE",
    "SCIPY_METHODS",
    "TORCHDIFFEQ_METHODS",
    "TorchODESolution",
    "solve_ode",
    "euler_heun_step",
    "import_torchdiffeq",
]

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


SCIPY_METHODS = ("RK45", "RK23", "DOP853", "Radau", "BDF", "LSODA")
#: torchdiffeq's adaptive Runge-Kutta methods (Dormand-Prince 5(4) and 8(5,3), Bogacki-Shampine 3(2),
#: Fehlberg 2(1), adaptive Heun 2(1))
TORCHDIFFEQ_METHODS = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")
_FIXED_ODE_METHODS = ("euler", "heun")


def import_torchdiffeq(what: str) -> Any:
    """The ``torchdiffeq`` module, or ``ImportError`` naming ``what`` needs it and the extra that installs it."""
    try:
        import torchdiffeq
    except ImportError as err:
        raise ImportError(
            f"{what} needs the optional dependency torchdiffeq; install it with pip install 'scoresde[torchdiffeq]' "
            f"(or pip install torchdiffeq), or use one of scipy's methods {list(SCIPY_METHODS)}"
        ) from err
    return torchdiffeq


@dataclass
class TorchODESolution:
    """What :func:`solve_ode` returns for a torchdiffeq method, with the fields of scipy's result that the
    library reads: ``t`` (float64 NumPy times), ``ys`` (the states at ``t``, stacked on a first axis, in
    ``y0``'s dtype and device), ``status`` (0 success, -1 failure), ``message``, ``nfev``."""

    t: np.ndarray
    ys: torch.Tensor
    status: int
    message: str
    nfev: int
    njev: int = 0
    nlu: int = 0

    @property
    def y(self) -> torch.Tensor:
        """The states as scipy lays them out, of shape ``(y0.numel(), len(t))``."""
        return self.ys.reshape(len(self.t), -1).T


def _tracker(fun: Callable[[float, Any], Any], t_span: tuple[float, float], bar: Any) -> Callable[[float, Any], Any]:
    """``fun`` updating ``bar`` with the fraction of ``t_span`` covered by the furthest time it was asked about."""
    t0, t1 = t_span
    done = [0]

    def tracked(t: float, y: Any) -> Any:
        out = fun(t, y)
        pct = int(100 * (t - t0) / (t1 - t0))
        if pct > done[0]:
            bar.update(pct - done[0])
            done[0] = pct
            bar.set_postfix_str(f"{t:.4f}", refresh=False)
        return out

    return tracked


def solve_ode(
    fun: Callable[[float, Any], Any],
    t_span: tuple[float, float],
    y0: Any,
    *,
    method: str,
    rtol: float,
    atol: float,
    t_eval: np.ndarray | None = None,
    desc: str,
    progress: bool,
) -> Any:
    r"""Integrate :math:`dy/dt = \text{fun}(t, y)` over ``t_span`` adaptively, with a progress bar over :math:`t`.

    * ``method`` in ``SCIPY_METHODS``: ``scipy.integrate.solve_ivp(fun, t_span, y0, ...)`` with BLAS limited
      to one thread (its threads compete with torch's); ``fun`` and ``y0`` are float64 NumPy arrays, and
      scipy's result object is returned.
    * ``method`` in ``TORCHDIFFEQ_METHODS``: ``torchdiffeq.odeint`` with ``y0`` a tensor (any shape, dtype,
      device) and ``fun(t, y)`` returning a tensor like ``y``; times are float64, ``t`` is a Python float
      in ``t_span`` (never outside it, see the module docstring). Returns a :class:`TorchODESolution`;
      a step-size failure gives ``status = -1`` and the time reached.

    The bar shows the fraction of ``t_span`` covered by the furthest time ``fun`` was asked about.
    """
    bar = progress_bar(total=100, desc=desc, disable=not progress, bar_format="{l_bar}{bar}| t {postfix}")
    try:
        if method in TORCHDIFFEQ_METHODS:
            return _solve_torchdiffeq(_tracker(fun, t_span, bar), t_span, y0, method, rtol, atol, t_eval)
        from scipy.integrate import solve_ivp
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=1, user_api="blas"):
            return solve_ivp(_tracker(fun, t_span, bar), t_span, y0, method=method, t_eval=t_eval, rtol=rtol, atol=atol)
    finally:
        bar.close()


#: the order of the propagated solution of each torchdiffeq method (for the initial step)
_TORCHDIFFEQ_ORDERS = {"dopri5": 5, "dopri8": 8, "bosh3": 3, "fehlberg2": 2, "adaptive_heun": 2}


def _initial_step(
    evaluate: Callable[[float, torch.Tensor], torch.Tensor],
    t0: float,
    t1: float,
    y0: torch.Tensor,
    f0: torch.Tensor,
    order: int,
    rtol: float,
    atol: float,
) -> float:
    r"""The first step of an explicit RK method of order ``order`` (Hairer, Norsett & Wanner, *Solving ODEs I*,
    II.4), never longer than the span, so that its probe evaluation (one NFE) lies inside it.

    With :math:`w = \text{atol} + \text{rtol}|y_0|` and RMS norms: :math:`d_0 = \|y_0/w\|`, :math:`d_1 = \|f_0/w\|`,
    :math:`h_0 = \min(0.01\,d_0/d_1, |t_1 - t_0|)` (:math:`10^{-6}` if either is below :math:`10^{-5}`),
    :math:`d_2 = \|(f(t_0 + h_0, y_0 + h_0 f_0) - f_0)/w\|/h_0` and
    :math:`h = \min(100 h_0, (0.01/\max(d_1, d_2))^{1/\text{order}}, |t_1 - t_0|)`.
    """
    span = abs(t1 - t0)
    direction = 1.0 if t1 > t0 else -1.0
    w = atol + rtol * y0.abs()

    def rms(v: torch.Tensor) -> float:
        return float((v / w).double().square().mean().sqrt())

    d0, d1 = rms(y0), rms(f0)
    h0 = min(1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1, span)
    f1 = evaluate(t0 + direction * h0, y0 + (direction * h0) * f0)
    d2 = rms(f1 - f0) / h0
    h1 = max(1e-6, h0 * 1e-3) if max(d1, d2) <= 1e-15 else (0.01 / max(d1, d2)) ** (1.0 / order)
    return min(100 * h0, h1, span)


def _solve_torchdiffeq(
    fun: Callable[[float, Any], Any],
    t_span: tuple[float, float],
    y0: torch.Tensor,
    method: str,
    rtol: float,
    atol: float,
    t_eval: np.ndarray | None,
) -> TorchODESolution:
    torchdiffeq = import_torchdiffeq(f"method={method!r}")
    t0, t1 = float(t_span[0]), float(t_span[1])
    lo, hi = min(t0, t1), max(t0, t1)
    slack = 64 * np.finfo(np.float64).eps * max(abs(lo), abs(hi))
    seen = [t0]
    nfev = [0]

    def evaluate(tf: float, y: torch.Tensor) -> torch.Tensor:
        if not lo - slack <= tf <= hi + slack:
            raise RuntimeError(
                f"torchdiffeq's {method} asked for the right-hand side at t={tf!r}, outside [{lo:g}, {hi:g}]"
            )
        tf = min(max(tf, lo), hi)
        seen[0] = tf
        nfev[0] += 1
        out: torch.Tensor = fun(tf, y)
        return out

    f0 = evaluate(t0, y0)
    first_step = _initial_step(evaluate, t0, t1, y0, f0, _TORCHDIFFEQ_ORDERS[method], rtol, atol)

    def rhs(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        tf = float(t)
        if tf == t0 and (y is y0 or torch.equal(y, y0)):  # torchdiffeq asks for f(t0, y0) again
            return f0
        return evaluate(tf, y)

    times = np.ascontiguousarray([t0, t1] if t_eval is None else t_eval, dtype=np.float64)
    ts = torch.as_tensor(times, dtype=torch.float64, device=y0.device)
    options = {"step_t": torch.tensor([t1], dtype=torch.float64, device=y0.device), "first_step": first_step}
    try:
        ys = torchdiffeq.odeint(rhs, y0, ts, method=method, rtol=rtol, atol=atol, options=options)
    except AssertionError as err:  # torchdiffeq reports step-size underflow and non-finite states so
        return TorchODESolution(np.array([seen[0]]), y0[None], -1, f"{err}.", nfev[0])
    return TorchODESolution(
        times, ys, 0, "The solver successfully reached the end of the integration interval.", nfev[0]
    )


class ProbabilityFlowODE(FixedStepSampler):
    r"""The probability-flow ODE :math:`dx/dt = f(x, t) - \tfrac12 g(t)^2 s_\theta(x, t)` from ``T`` to ``eps``.

    Parameters
    ----------
    method : str
        One of scipy's ``solve_ivp`` methods (``"RK45"``, ``"RK23"``, ``"DOP853"``, ``"Radau"``,
        ``"BDF"``, ``"LSODA"``) or torchdiffeq's (``"dopri5"``, ``"dopri8"``, ``"bosh3"``, ``"fehlberg2"``,
        ``"adaptive_heun"``; needs ``scoresde[torchdiffeq]``), adaptive with error control, or a fixed-step
        torch method on the uniform grid: ``"euler"`` (order 1, ``steps`` NFE) or ``"heun"`` (explicit
        trapezoid, order 2, ``2 * steps`` NFE).
    rtol, atol : float
        Tolerances of the adaptive methods. Default 1e-5 each.
    steps : int
        Number of steps of the fixed-step methods (ignored by the adaptive ones). Default 100.

    Notes
    -----
    Both adaptive backends integrate the whole batch as one system, so the error control is joint
    over the batch. scipy integrates a flat float64 copy on the CPU; torchdiffeq integrates the state in
    its own dtype and on its own device, the times in float64, and never evaluates the drift outside
    :math:`[\varepsilon, T]`. The score is evaluated in the dtype of the initial state. BLAS
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
        if method not in SCIPY_METHODS + TORCHDIFFEQ_METHODS + _FIXED_ODE_METHODS:
            raise ValueError(
                f"unknown method {method!r}; choose one of scipy's {list(SCIPY_METHODS)}, torchdiffeq's "
                f"{list(TORCHDIFFEQ_METHODS)} or the fixed-step {list(_FIXED_ODE_METHODS)}"
            )
        if method in TORCHDIFFEQ_METHODS:
            import_torchdiffeq(f"ProbabilityFlowODE(method={method!r})")
        self.method = method
        self.rtol, self.atol = check_tolerances(rtol, atol, torch.float64)

    def params(self) -> dict[str, Any]:
        p: dict[str, Any] = {"method": self.method}
        if self.method not in _FIXED_ODE_METHODS:
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
        """``steps + 1`` for the fixed-step methods; no limit for the adaptive ones (they save at exact times)."""
        return None if self.method not in _FIXED_ODE_METHODS else self.steps + 1

    @property
    def nfe_per_step(self) -> int | None:
        """1 (``"euler"``), 2 (``"heun"``), ``None`` for the adaptive methods."""
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
        if self.method in TORCHDIFFEQ_METHODS:
            return self._integrate_torchdiffeq(sde, score_fn, x, save_times, progress)
        return self._integrate_scipy(sde, score_fn, x, save_times, progress)

    def _guarded_drift(
        self, sde: SDE, score_fn: CountedScore, x: torch.Tensor, save_times: np.ndarray
    ) -> tuple[np.ndarray, Callable[[float, torch.Tensor], torch.Tensor], list[int]]:
        """What both adaptive backends integrate: the output times (``save_times`` with ``T`` and ``eps``,
        decreasing), the probability-flow drift with the divergence guard on the state it is asked about and
        then on the drift (a NaN/inf score shows there first), and its evaluation counter."""
        check_tolerances(self.rtol, self.atol, x.dtype)
        ode = sde.reverse(score_fn, probability_flow=True)
        t_eval = np.unique(np.clip(np.concatenate([save_times, [sde.T, self.eps]]), self.eps, sde.T))[::-1]
        guard = score_fn.guard
        guard.step_name = "right-hand-side evaluation"
        evals = [0]

        def drift_fn(t: float, xt: torch.Tensor) -> torch.Tensor:
            guard.check(xt, evals[0], t)
            drift = ode.sde(xt, t)[0]
            guard.check(drift, evals[0], t, what="drift (from the score)", bounded=False)
            evals[0] += 1
            return drift

        return t_eval, drift_fn, evals

    def _integrate_torchdiffeq(
        self, sde: SDE, score_fn: CountedScore, x: torch.Tensor, save_times: np.ndarray, progress: bool
    ) -> Trajectory:
        t_eval, fun, evals = self._guarded_drift(sde, score_fn, x, save_times)
        guard = score_fn.guard
        sol = solve_ode(
            fun,
            (sde.T, self.eps),
            x,
            method=self.method,
            rtol=self.rtol,
            atol=self.atol,
            t_eval=t_eval,
            desc="ProbabilityFlowODE",
            progress=progress,
        )
        if sol.status != 0:
            raise RuntimeError(
                f"torchdiffeq's {self.method} failed near t = {float(sol.t[-1]):.6g} after {evals[0]} evaluations: "
                f"{sol.message} The states it evaluated were finite with |x| <= {guard.max_abs_x:.3g}; a step-size "
                "failure with a finite state means a stiff or very steep drift: check score_fn near that time, "
                "loosen rtol/atol, or use one of scipy's implicit methods (Radau, BDF)"
            )
        traj = Trajectory(stats={"nfev": sol.nfev, "solver_message": sol.message})
        guard.check(sol.ys[-1], None, float(sol.t[-1]))
        for j, t in enumerate(sol.t):
            # the dense output gives no NFE per time: record the total at the end only
            traj.save(float(t), sol.ys[j], score_fn.nfe if j == len(sol.t) - 1 else -1)
        return traj

    def _integrate_scipy(
        self, sde: SDE, score_fn: CountedScore, x: torch.Tensor, save_times: np.ndarray, progress: bool
    ) -> Trajectory:
        shape, dtype, device = x.shape, x.dtype, x.device
        t_eval, drift_fn, evals = self._guarded_drift(sde, score_fn, x, save_times)
        guard = score_fn.guard

        def fun(t: float, y: np.ndarray) -> np.ndarray:
            xt = torch.from_numpy(y).to(dtype=dtype, device=device).reshape(shape)
            return drift_fn(float(t), xt).reshape(-1).to(device="cpu", dtype=torch.float64).numpy()

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
