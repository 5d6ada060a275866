r"""Adaptive-step reverse-SDE sampler (Jolicoeur-Martineau et al. 2021, "Gotta Go Fast").

The number of score evaluations (NFE) is an *output*: the step size of every sample is chosen
from a local error estimate, and the sampler stops when all samples have reached ``eps``.

At time :math:`t` with step :math:`h > 0` (time runs down, :math:`t \to t - h`), with
:math:`(\bar f, g)` the reverse drift and diffusion of ``sde.reverse(score_fn).sde`` (written
for :math:`dt < 0`) and one draw :math:`z \sim \mathcal N(0, I)`:

.. math::
    x' &= x - h\,\bar f(x, t) + g(t)\sqrt h\,z \qquad \text{(Euler–Maruyama)} \\
    x'' &= x - \tfrac h2\big[\bar f(x, t) + \bar f(x', t - h)\big]
          + \tfrac12\big[g(t) + g(t - h)\big]\sqrt h\,z \qquad \text{(improved Euler, same } z)

The scaled error of each sample is

.. math::
    E = \big\| (x' - x'') / \delta \big\|_2 / \sqrt{d}, \qquad
    \delta = \max\big(\text{atol},\ \text{rtol}\cdot\max(|x'|, |x|)\big) \text{ elementwise},

the step is accepted (:math:`x \leftarrow x''`, :math:`t \leftarrow t - h`) when :math:`E \le 1`,
and, accepted or not, the next step is :math:`h \leftarrow \min(t - \varepsilon,\ \theta h E^{-r})`.
Each sample carries its own :math:`t` and :math:`h`; every iteration evaluates the score twice
on the batch of unfinished samples (2 NFE per iteration, counted per batch call).

Deviation from the paper: a rejected step is retried with the *same* Brownian path, not a fresh
:math:`z` (rejection sampling with memory, RSwM; Rackauckas & Nie 2017): the shorter increment is
drawn from the Brownian bridge of the rejected one and the remainder is kept for later steps.
Redrawing :math:`z` makes acceptance depend on the noise; in image dimensions :math:`E`
concentrates and this hardly matters, but in 2-D it inflated the sample covariance by ~40%
(a Gaussian target, VP, at any tolerance).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from .._checks import broadcast_coef, check_positive, check_positive_int, check_tolerances
from .._kernels import randn_like
from .._progress import progress_bar
from ..sde import SDE
from .base import CountedScore, Sampler, Trajectory

__all__ = ["AdaptiveSDE"]


class AdaptiveSDE(Sampler):
    r"""Adaptive-step reverse-SDE sampler: Euler–Maruyama / improved-Euler pair with error control.

    Algorithm 1 of Jolicoeur-Martineau et al. (2021), run backwards from :math:`T` to
    :math:`\varepsilon` with per-sample times and steps (see the module docstring for the
    equations).

    Parameters
    ----------
    rtol : float
        Relative tolerance :math:`\varepsilon_{rel}`. Default ``1e-2`` (the paper uses 0.01–0.05).
    atol : float
        Absolute tolerance :math:`\varepsilon_{abs}`. Default ``1e-2``. The paper uses 0.0078 for
        images in :math:`[0, 1]`, i.e. about :math:`0.78\%` of the data range; for data of roughly
        unit scale ``1e-2`` is the same order. At large noise (VE, :math:`\sigma` up to 50) the
        relative term :math:`\text{rtol}\cdot|x|` dominates, so the absolute floor only matters
        near :math:`t = \varepsilon`, where it sets the accuracy at the data scale.
    h_init : float
        First step size. Default ``0.01``.
    safety : float
        Safety factor :math:`\theta`. Default ``0.9``.
    exponent : float
        Step-control exponent :math:`r \in (0, 1]`. Default ``0.9``.
    max_iters : int
        Upper bound on iterations (each one costs 2 NFE); exceeding it raises ``RuntimeError``.
    eps : float
        Final time. Default ``1e-3``.
    denoise : bool
        Finish with the Tweedie step (one more NFE). Default False.

    Notes
    -----
    Samples finish at different iterations, so only the states at ``T`` and at ``eps`` are
    saved, whatever ``save_at`` asks for (intermediate ``save_times`` cannot be honoured with
    per-sample times). ``Trajectory.stats`` (``stat_*`` attributes of the Dataset) records the
    iterations and, per sample, accepted steps and rejections (mean and max).
    """

    stochastic = True

    def __init__(
        self,
        rtol: float = 1e-2,
        atol: float = 1e-2,
        h_init: float = 0.01,
        safety: float = 0.9,
        exponent: float = 0.9,
        max_iters: int = 10000,
        eps: float = 1e-3,
        denoise: bool = False,
    ) -> None:
        super().__init__(eps, denoise)
        self.rtol, self.atol = check_tolerances(rtol, atol, torch.float64)
        self.h_init = check_positive("h_init", h_init)
        self.safety = check_positive("safety", safety)
        if self.safety > 1:
            raise ValueError(f"safety must lie in (0, 1], got {safety!r}")
        self.exponent = check_positive("exponent", exponent)
        if self.exponent > 1:
            raise ValueError(f"exponent must lie in (0, 1], got {exponent!r}")
        self.max_iters = check_positive_int("max_iters", max_iters)

    def params(self) -> dict[str, Any]:
        return {
            "rtol": self.rtol,
            "atol": self.atol,
            "h_init": self.h_init,
            "safety": self.safety,
            "exponent": self.exponent,
            "max_iters": self.max_iters,
            **super().params(),
        }

    def integrate(
        self,
        sde: SDE,
        score_fn: CountedScore,
        x: torch.Tensor,
        generator: torch.Generator,
        save_times: np.ndarray,
        progress: bool,
    ) -> Trajectory:
        check_tolerances(self.rtol, self.atol, x.dtype)
        rsde = sde.reverse(score_fn)
        traj = Trajectory()
        traj.save(sde.T, x, score_fn.nfe)
        n = x.shape[0]
        dim = x[0].numel()
        eps = self.eps
        # Times and steps are kept in float64; they are cast to x's dtype for the score.
        t = torch.full((n,), float(sde.T), dtype=torch.float64, device=x.device)
        h = torch.full_like(t, min(self.h_init, sde.T - eps))
        accepted = torch.zeros(n, dtype=torch.long, device=x.device)
        rejected = torch.zeros(n, dtype=torch.long, device=x.device)
        active = torch.ones(n, dtype=torch.bool, device=x.device)
        x = x.clone()
        stack = _BrownianStack(x)
        guard = score_fn.guard
        guard.step_name = "iteration"
        iters = 0
        bar = progress_bar(total=n, desc=type(self).__name__, disable=not progress)
        try:
            while bool(active.any()):
                if iters >= self.max_iters:
                    raise RuntimeError(
                        f"AdaptiveSDE: {int(active.sum())} samples did not reach eps={eps:g} within "
                        f"max_iters={self.max_iters}; loosen rtol/atol or raise max_iters"
                    )
                iters += 1
                idx = active.nonzero().squeeze(1)
                xa, ta, ha = x[idx], t[idx], h[idx]
                t_next = torch.clamp(ta - ha, min=eps)
                ha = ta - t_next
                dw = self._draw(stack, idx, ha, xa, generator)
                sqrt_h = broadcast_coef(ha.sqrt().to(x.dtype), xa)
                z = dw / sqrt_h
                rd, g = rsde.sde(xa, ta.to(x.dtype))
                # the drift at accepted (checked) states: NaN/inf here is the score's, not a step-size problem
                guard.check(rd, iters, None, times=ta, what="drift (from the score)", bounded=False)
                g = broadcast_coef(g, xa)
                hx = broadcast_coef(ha.to(x.dtype), xa)
                x1 = xa - hx * rd + g * sqrt_h * z
                rd1, g1 = rsde.sde(x1, t_next.to(x.dtype))
                g1 = broadcast_coef(g1, xa)
                x2 = xa - 0.5 * hx * (rd + rd1) + 0.5 * (g + g1) * sqrt_h * z
                # every accepted state is a proposal x2: checking the proposals checks the states, and a
                # NaN/inf score at x1 shows here instead of as endless rejections
                guard.check(x2, iters, None, times=t_next, what="proposed state")
                delta = torch.clamp(self.rtol * torch.maximum(x1.abs(), xa.abs()), min=self.atol)
                err = ((x1 - x2) / delta).reshape(len(idx), -1).double().norm(dim=1) / math.sqrt(dim)
                # A non-finite error (overflowing proposal) is a rejection with a strong cut of h.
                err = torch.nan_to_num(err, nan=1e4, posinf=1e4)
                ok = err <= 1.0
                ok_idx = idx[ok]
                x[ok_idx] = x2[ok]
                t_new = torch.where(ok, t_next, ta)
                done = ok & (t_next <= eps)
                t[idx] = torch.where(done, torch.full_like(t_new, eps), t_new)
                accepted[ok_idx] += 1
                rejected[idx[~ok]] += 1
                # Rejection with memory: the rejected increment is kept for the shorter retry.
                stack.push(idx[~ok], ha[~ok], dw[~ok])
                factor = self.safety * torch.clamp(err, min=1e-10, max=1e4) ** (-self.exponent)
                h_new = torch.minimum(ha * factor, t[idx] - eps)
                h[idx] = h_new
                active[idx[done]] = False
                bar.update(int(done.sum()))
        finally:
            bar.close()
        traj.save(eps, x, score_fn.nfe)
        stats_depth = stack.capacity
        acc = accepted.double()
        rej = rejected.double()
        traj.stats = {
            "iterations": iters,
            "accepted_mean": float(acc.mean()),
            "accepted_max": int(accepted.max()),
            "rejected_mean": float(rej.mean()),
            "rejected_max": int(rejected.max()),
            "brownian_stack_capacity": stats_depth,
        }
        return traj

    @staticmethod
    def _draw(
        stack: _BrownianStack, idx: torch.Tensor, h: torch.Tensor, like: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor:
        """Brownian increments over ``h`` for samples ``idx``, consistent with their stored path."""
        dw = torch.zeros_like(like)
        rem = h.clone()
        while True:
            depth = stack.depth[idx]
            m = (depth > 0) & (rem > 0)
            if not bool(m.any()):
                break
            rows, top = idx[m], depth[m] - 1
            length, inc = stack.lens[rows, top], stack.incs[rows, top]
            r = rem[m]
            xi = randn_like(inc, generator)
            full = length <= r * (1 + 1e-12)
            frac = torch.where(full, torch.ones_like(r), r / length)
            sd_ = torch.where(full, torch.zeros_like(r), (r * (length - r) / length).clamp(min=0).sqrt())
            part = broadcast_coef(frac.to(inc.dtype), inc) * inc + broadcast_coef(sd_.to(inc.dtype), inc) * xi
            dw[m] += part
            rem[m] = torch.where(full, r - length, torch.zeros_like(r)).clamp(min=0)
            stack.lens[rows, top] = length - torch.where(full, length, r)
            stack.incs[rows, top] = inc - part
            stack.depth[rows] -= full.long()
        fresh = rem > 0
        if bool(fresh.any()):
            xi = randn_like(like[fresh], generator)
            dw[fresh] += broadcast_coef(rem[fresh].sqrt().to(like.dtype), xi) * xi
        return dw


class _BrownianStack:
    """Per-sample stack of known future Brownian increments (Rackauckas & Nie 2017, RSwM).

    ``lens[i, k]`` and ``incs[i, k]`` are the length and increment of segment ``k`` of sample
    ``i``; segment ``depth[i] - 1`` is the one nearest in time. The capacity grows as needed.
    """

    def __init__(self, x: torch.Tensor, capacity: int = 4) -> None:
        n = x.shape[0]
        self.lens = torch.zeros(n, capacity, dtype=torch.float64, device=x.device)
        self.incs = torch.zeros(n, capacity, *x.shape[1:], dtype=x.dtype, device=x.device)
        self.depth = torch.zeros(n, dtype=torch.long, device=x.device)

    @property
    def capacity(self) -> int:
        return self.lens.shape[1]

    def push(self, rows: torch.Tensor, lens: torch.Tensor, incs: torch.Tensor) -> None:
        if rows.numel() == 0:
            return
        need = int(self.depth[rows].max()) + 1
        if need > self.capacity:
            grow = max(need, 2 * self.capacity) - self.capacity
            self.lens = torch.cat([self.lens, self.lens.new_zeros(self.lens.shape[0], grow)], 1)
            self.incs = torch.cat([self.incs, self.incs.new_zeros(self.incs.shape[0], grow, *self.incs.shape[2:])], 1)
        pos = self.depth[rows]
        self.lens[rows, pos] = lens
        self.incs[rows, pos] = incs
        self.depth[rows] += 1
