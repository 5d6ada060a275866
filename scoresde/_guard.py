r"""Run-time checks shared by the samplers: the score function's contract and divergence detection.

* :func:`check_score_output` checks what a score function returned on the first call of a run:
  a ``torch.Tensor`` of ``x``'s shape, floating dtype and device (nothing is broadcast or cast).
* :class:`DivergenceGuard` checks the state after every step: it must be finite and lie within
  the run's ``divergence_bound``, :math:`\max_{i,j} |x_{ij}| \le B`. The check is one fused
  reduction per step (``torch.aminmax``, then :math:`\|x\|_\infty = \max(x_{\max}, -x_{\min})`);
  NaN propagates through it, so a NaN or inf state fails it whatever :math:`B` is. The default
  bound (``divergence_bound="auto"``) is

  .. math:: B = 10^3\,\big(\sigma_T + \max(1, \|x_T\|_\infty)\big),

  with :math:`\sigma_T` the prior's standard deviation (1 for VP and sub-VP, :math:`\sigma_{\max}`
  for VE) and :math:`\max(1, \|x_T\|_\infty)` standing for the data scale (data of unit scale, or
  the start's own scale when it is larger). A correct run stays within
  :math:`s(t)\,\|x_0\|_\infty + \sigma(t)\,\|z\|_\infty`, a few times :math:`\sigma_T` plus the data scale.
"""

from __future__ import annotations

import math
from typing import Any

import torch

__all__ = ["DivergenceError", "DivergenceGuard", "check_score_output", "max_abs", "resolve_bound", "AUTO_BOUND_FACTOR"]

#: the default bound is this multiple of (prior std + data scale)
AUTO_BOUND_FACTOR = 1e3

_FIX = (
    "check that score_fn returns finite values of the right scale at these times, reduce the step "
    "(more steps or tighter tolerances), or raise divergence_bound (divergence_bound=None disables the "
    "bound; NaN and inf always raise)"
)


class DivergenceError(RuntimeError):
    """A sampler's state became NaN/inf or left the run's ``divergence_bound``.

    Attributes
    ----------
    sampler : str
        The sampler's class name.
    step : int or None
        The step (fixed-step samplers), iteration (adaptive SDE) or right-hand-side evaluation
        (scipy) at which the bad state appeared.
    t, t_next : float or None
        The step went from ``t`` to ``t_next`` (``t_next`` is None where the check is at one time).
    indices : list of int
        The first offending samples (at most 10).
    max_abs : float
        :math:`\\|x\\|_\\infty` of the checked tensor (NaN if it holds a NaN).
    bound : float
        The bound in force (``inf`` if disabled).
    """

    def __init__(
        self,
        message: str,
        *,
        sampler: str,
        step: int | None,
        t: float | None,
        t_next: float | None,
        indices: list[int],
        max_abs: float,
        bound: float,
    ) -> None:
        super().__init__(message)
        self.sampler, self.step, self.t, self.t_next = sampler, step, t, t_next
        self.indices, self.max_abs, self.bound = indices, max_abs, bound


def max_abs(x: torch.Tensor) -> torch.Tensor:
    r""":math:`\|x\|_\infty` as a 0-d tensor on ``x``'s device, NaN if ``x`` holds a NaN (one fused pass)."""
    lo, hi = torch.aminmax(x.detach())
    return torch.maximum(hi, lo.neg())


def resolve_bound(divergence_bound: Any, sde: Any, x_T: torch.Tensor) -> float:
    """The bound :math:`B` in force: ``"auto"`` as in the module docstring, a positive number as given,
    ``None`` as ``inf`` (disabled)."""
    if divergence_bound is None:
        return math.inf
    if isinstance(divergence_bound, str):
        if divergence_bound != "auto":
            raise ValueError(f"divergence_bound must be 'auto', a positive number or None, got {divergence_bound!r}")
        _, std = sde.marginal_prob(x_T[:1].detach(), sde.T)
        prior_std = float(torch.as_tensor(std, dtype=torch.float64).reshape(-1)[0])
        start = float(max_abs(x_T))
        return AUTO_BOUND_FACTOR * (prior_std + max(1.0, start))
    if isinstance(divergence_bound, bool) or not isinstance(divergence_bound, int | float):
        raise TypeError(
            f"divergence_bound must be 'auto', a positive number or None, got {type(divergence_bound).__name__}"
        )
    bound = float(divergence_bound)
    if not bound > 0:  # also rejects NaN
        raise ValueError(f"divergence_bound must be > 0 (or None to disable it), got {divergence_bound!r}")
    return bound


def check_score_output(out: Any, x: torch.Tensor, name: str = "score_fn") -> None:
    """Raise ``TypeError``/``ValueError`` unless ``out`` is a tensor of ``x``'s shape, dtype and device."""
    call = f"{name}(x, t)"
    if not isinstance(out, torch.Tensor):
        raise TypeError(
            f"{call} returned a {type(out).__module__}.{type(out).__name__}, expected a torch.Tensor shaped like x "
            f"{tuple(x.shape)} with dtype {x.dtype}; return torch.as_tensor(value, dtype=x.dtype, device=x.device)"
        )
    if tuple(out.shape) != tuple(x.shape):
        raise ValueError(
            f"{call} returned shape {tuple(out.shape)} for x of shape {tuple(x.shape)}; it must return one value "
            f"per entry of x (the same shape, nothing is broadcast)"
        )
    if not out.is_floating_point() or out.dtype != x.dtype:
        raise TypeError(
            f"{call} returned dtype {out.dtype} for x of dtype {x.dtype}; it must return x's dtype "
            f"(nothing is cast: compute in x's dtype, or end with .to(x.dtype))"
        )
    if out.device != x.device:
        raise ValueError(
            f"{call} returned a tensor on device {out.device} for x on {x.device}; return it on x's device"
        )


def _fmt(t: float | None) -> str:
    return "?" if t is None else f"{t:.6g}"


#: a pending check: (max |x|, x, step, t, t_next, times, what, bounded)
_Record = tuple[torch.Tensor, torch.Tensor, int | None, float | None, float | None, torch.Tensor | None, str, bool]


class DivergenceGuard:
    """Per-run divergence check: :meth:`check` after every step, :meth:`finish` at the end.

    On the CPU the state is checked as soon as it is made. On other devices the check of step
    ``k`` is read back at step ``k + 1`` (``lag=1``), so that it adds no host synchronisation that
    stalls the device; a bad state is then reported one step later, with its own step and time.

    Parameters
    ----------
    sampler : str
        Name used in messages.
    bound : float
        :math:`B`; ``inf`` checks finiteness only.
    lag : int or None
        0 (check at once) or 1 (read back one step later). Default: 0 on the CPU, else 1.
    """

    def __init__(self, sampler: str, bound: float = math.inf, lag: int | None = None, device: Any = None) -> None:
        self.sampler = sampler
        self.bound = float(bound)
        dev = torch.device("cpu" if device is None else device)
        self.lag = (0 if dev.type == "cpu" else 1) if lag is None else int(lag)
        #: largest :math:`\|x\|_\infty` of the states checked so far
        self.max_abs_x = 0.0
        #: what ``step`` counts, in messages ("step", "iteration", "evaluation")
        self.step_name = "step"
        #: the step a fixed-step loop is in (for checks inside a step)
        self.current_step: int | None = None
        self._pending: _Record | None = None

    def check(
        self,
        x: torch.Tensor,
        step: int | None,
        t: float | None,
        t_next: float | None = None,
        *,
        times: torch.Tensor | None = None,
        what: str = "state",
        bounded: bool = True,
    ) -> None:
        """Check ``x`` (the state after ``step``, from ``t`` to ``t_next``); raise :class:`DivergenceError`.

        ``times`` (per sample) replaces ``t`` in the message for samplers whose samples carry their own
        time. ``bounded=False`` checks finiteness only (for a drift or score rather than a state).
        """
        m = max_abs(x)
        record: _Record = (m, x, step, t, t_next, times, what, bounded)
        if self.lag == 0:
            self._resolve(record)
            return
        pending, self._pending = self._pending, record
        if pending is not None:
            self._resolve(pending)

    def finish(self) -> None:
        """Resolve a pending (lagged) check."""
        pending, self._pending = self._pending, None
        if pending is not None:
            self._resolve(pending)

    def _resolve(self, record: _Record) -> None:
        m, x, step, t, t_next, times, what, bounded = record
        v = float(m)
        bound = self.bound if bounded else math.inf
        if v <= bound and v != math.inf:
            if bounded and v > self.max_abs_x:
                self.max_abs_x = v
            return
        self._raise(x, step, t, t_next, times, what, bound, v)

    def _raise(
        self,
        x: torch.Tensor,
        step: int | None,
        t: float | None,
        t_next: float | None,
        times: torch.Tensor | None,
        what: str,
        bound: float,
        v: float,
    ) -> None:
        flat = x.detach().reshape(x.shape[0], -1) if x.dim() > 1 else x.detach().reshape(-1, 1)
        row = torch.linalg.vector_norm(flat, ord=math.inf, dim=1)
        bad = ~((row <= bound) & torch.isfinite(row))
        rows = bad.nonzero().reshape(-1)
        idx = [int(i) for i in rows[:10]]
        finite = math.isfinite(v)
        if times is not None and idx:
            t = float(times.reshape(-1)[idx[0]])
        where = f"{self.step_name} {step}" if step is not None else "the end"
        span = f"t = {_fmt(t)}" if t_next is None else f"t = {_fmt(t)} -> {_fmt(t_next)}"
        kind = "NaN or inf" if not finite else f"|x| up to {v:.3g}, above divergence_bound={bound:.3g}"
        message = (
            f"{self.sampler} diverged at {where} ({span}): the {what} of {int(bad.sum())} of {flat.shape[0]} "
            f"samples is {kind}; first bad samples: {idx}. Fix: {_FIX}"
        )
        raise DivergenceError(
            message,
            sampler=self.sampler,
            step=step,
            t=t,
            t_next=t_next,
            indices=idx,
            max_abs=v,
            bound=bound,
        )
