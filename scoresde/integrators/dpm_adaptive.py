r"""Adaptive DPM-Solver: an embedded pair of single-step exponential integrators with error control
(Lu et al. 2022, *DPM-Solver*, section 4 and Algorithm 4: "DPM-Solver-12" and "DPM-Solver-23").

The probability-flow ODE of a linear SDE is integrated in the half log-SNR :math:`\lambda = \log(s/\sigma)`,
from :math:`\lambda_T` to :math:`\lambda_\varepsilon`, with the single-step updates of
:mod:`scoresde.integrators.singlestep` in data-prediction form. A step of size :math:`h` from
:math:`(x, \lambda_s)` computes a lower- and a higher-order solution that share their evaluations,

* ``order=2`` (DPM-Solver-12): :math:`x_{low}` = the first-order update (DDIM), :math:`x_{high}` = the
  second-order update with :math:`r_1 = 1/2`; 2 score evaluations per attempt;
* ``order=3`` (DPM-Solver-23): :math:`x_{low}` = the second-order update with :math:`r_1 = 1/3`,
  :math:`x_{high}` = the third-order update with :math:`r_1 = 1/3,\ r_2 = 2/3`; 3 score evaluations per
  attempt,

and the scaled error with the combined relative/absolute tolerance

.. math::
    \delta = \max\big(\text{atol},\ \text{rtol}\cdot\max(|x_{low}|, |x|)\big) \text{ elementwise},\qquad
    E = \Big\| \frac{x_{high} - x_{low}}{\delta} \Big\|,

where :math:`\|\cdot\|` is the root mean square over the entries of each sample, then the largest over
the batch (``norm="max"``, the authors' code: every sample's error is controlled) or the root mean square
over the whole batch (``norm="rms"``, as k-diffusion's ``sample_dpm_adaptive``). The step is accepted when
:math:`E \le 1` (:math:`x \leftarrow x_{high}`, local extrapolation), and accepted or not the next step is

.. math::
    h \leftarrow \min\big(h\,\min(f_{\max}, \max(f_{\min}, \theta E^{-1/k})),\ \lambda_\varepsilon - \lambda\big),

:math:`k` = ``order``, :math:`\theta` = ``safety``. The evaluation at the current state is kept across
rejections (a rejected attempt costs ``order - 1`` evaluations), so the NFE of a run is
``accepted * order + rejected * (order - 1)``, reported exactly. The last step ends exactly at
:math:`\varepsilon`; the intermediate times are found by inverting :math:`\lambda(t)`, so the score is never
evaluated outside :math:`[\varepsilon, T]`.

With ``to_zero=True`` the run ends at :math:`\sigma = 0`: after the controlled steps to :math:`\varepsilon`, the
last step is the data prediction :math:`\hat x_0(x_\varepsilon, \varepsilon)` (the limit :math:`h \to \infty` of
every update; :mod:`scoresde.integrators.fixed_grid`), saved at ``time = 0.0``. It costs the one evaluation
that the next attempt would start with, so NFE = ``accepted * order + rejected * (order - 1) + 1``; the
step to :math:`\sigma = 0` is not error-controlled and errs by :math:`O(\tilde\sigma(\varepsilon)^2)`,
:math:`\tilde\sigma = \sigma/s`, so choose a small ``eps`` for it. It gives the state of ``denoise=True``
(which is refused with it); the fixed-grid solvers count this step within their ``steps``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from .._checks import check_positive, check_positive_int, check_tolerances
from .._kernels import check_linear, kernel
from .._progress import progress_bar
from ..sde import SDE
from ..time_grids import invert_log_snr, log_snr
from .base import CountedScore, Sampler, Trajectory
from .singlestep import (
    STAGE_RATIOS,
    data_prediction,
    first_order_update,
    stage_times,
    stage_update,
    third_order_stage,
)

__all__ = ["AdaptiveDPMSolver"]

#: the norms of the scaled error
NORMS = ("max", "rms")


class AdaptiveDPMSolver(Sampler):
    r"""Adaptive DPM-Solver-12 (``order=2``) or -23 (``order=3``) with error control (module docstring).

    Parameters
    ----------
    order : {2, 3}
        Order :math:`k` of the higher solution of the pair. Default 3.
    rtol, atol : float
        Relative and absolute tolerances of the combined error norm. Defaults 0.05 and 0.0078, the
        authors' choice for images scaled to :math:`[-1, 1]` (about the quantisation step); lower them for
        accurate solutions.
    norm : {"max", "rms"}
        Largest per-sample RMS over the batch (default) or the RMS over the whole batch.
    h_init : float
        First step in :math:`\lambda`. Default 0.05.
    safety : float
        Safety factor :math:`\theta \in (0, 1]`. Default 0.9.
    min_factor, max_factor : float
        Bounds :math:`f_{\min} < 1 < f_{\max}` on the change of :math:`h` per attempt. Defaults 0.2, 10.
    max_nfe : int
        Upper bound on score evaluations; exceeding it raises ``RuntimeError``. Default 100000.
    eps : float
        Final time. Default 1e-3.
    denoise : bool
        Finish with the Tweedie step (one more NFE). Default False.
    to_zero : bool
        End at :math:`\sigma = 0` with the data prediction at ``eps`` (module docstring). Default False.

    Notes
    -----
    The step size is common to the batch. The saved states are ``x_T``, the first accepted state at or
    below each requested time, and the state at ``eps``. ``Trajectory.stats`` (``stat_*`` attributes of the
    Dataset) records the accepted and rejected steps.
    """

    stochastic = False

    def __init__(
        self,
        order: int = 3,
        rtol: float = 0.05,
        atol: float = 0.0078,
        norm: str = "max",
        h_init: float = 0.05,
        safety: float = 0.9,
        min_factor: float = 0.2,
        max_factor: float = 10.0,
        max_nfe: int = 100000,
        eps: float = 1e-3,
        denoise: bool = False,
        to_zero: bool = False,
    ) -> None:
        super().__init__(eps, denoise)
        self.to_zero = bool(to_zero)
        if self.to_zero and self.denoise:
            raise ValueError(
                "to_zero=True already ends the run at sigma = 0 with the data prediction at eps; denoise=True "
                "would add a second final step: choose one"
            )
        self.order = check_positive_int("order", order)
        if self.order not in (2, 3):
            raise ValueError(f"order must be 2 (DPM-Solver-12) or 3 (DPM-Solver-23), got {order!r}")
        self.rtol, self.atol = check_tolerances(rtol, atol, torch.float64)
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        self.norm = norm
        self.h_init = check_positive("h_init", h_init)
        self.safety = check_positive("safety", safety)
        if self.safety > 1:
            raise ValueError(f"safety must lie in (0, 1], got {safety!r}")
        self.min_factor = check_positive("min_factor", min_factor)
        self.max_factor = check_positive("max_factor", max_factor)
        if not self.min_factor < 1 < self.max_factor:
            raise ValueError(f"need min_factor < 1 < max_factor, got {min_factor!r} and {max_factor!r}")
        self.max_nfe = check_positive_int("max_nfe", max_nfe)

    def params(self) -> dict[str, Any]:
        return {
            "order": self.order,
            "rtol": self.rtol,
            "atol": self.atol,
            "norm": self.norm,
            "h_init": self.h_init,
            "safety": self.safety,
            "min_factor": self.min_factor,
            "max_factor": self.max_factor,
            "max_nfe": self.max_nfe,
            **super().params(),
            "to_zero": self.to_zero,
        }

    def check(self, sde: SDE) -> None:
        super().check(sde)
        check_linear(self, sde)

    def error(self, x: torch.Tensor, x_low: torch.Tensor, x_high: torch.Tensor) -> float:
        """The scaled error :math:`E` of one attempt (module docstring), as a float (``inf`` if not finite)."""
        delta = torch.clamp(self.rtol * torch.maximum(x_low.abs(), x.abs()), min=self.atol)
        ratio = ((x_high - x_low) / delta).reshape(x.shape[0], -1).double()
        if self.norm == "max":
            err = float(ratio.square().mean(dim=1).sqrt().max())
        else:
            err = float(ratio.square().mean().sqrt())
        return err if math.isfinite(err) else math.inf

    def attempt(
        self, score_fn: CountedScore, sde: SDE, x: torch.Tensor, d_s: torch.Tensor, t: float, t_next: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x_low, x_high)`` of the pair from ``x`` at ``t`` to ``t_next``, given ``d_s`` = the data
        prediction at ``(x, t)``; ``order - 1`` score evaluations."""
        ks, kt = kernel(sde, t), kernel(sde, t_next)
        ratios = STAGE_RATIOS[self.order]
        inner = stage_times(sde, t, t_next, ratios, self.eps)
        k1 = kernel(sde, inner[0])
        x1 = first_order_update(x, d_s, ks, k1)
        d1 = data_prediction(score_fn, x1, inner[0], k1[0], k1[1])
        if self.order == 2:
            return first_order_update(x, d_s, ks, kt), stage_update(2, x, d_s, [d1], ratios, ks, kt)
        k2 = kernel(sde, inner[1])
        x2 = third_order_stage(x, d_s, d1, (ratios[0], ratios[1]), ks, k2)
        d2 = data_prediction(score_fn, x2, inner[1], k2[0], k2[1])
        x_low = stage_update(2, x, d_s, [d1], (ratios[0],), ks, kt)
        return x_low, stage_update(3, x, d_s, [d1, d2], ratios, ks, kt)

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
        T, eps = float(sde.T), self.eps
        lam_T, lam_end = (float(v) for v in log_snr(sde, np.array([T, eps])))
        pending = sorted((float(s) for s in np.atleast_1d(save_times) if eps < s < T), reverse=True)
        traj = Trajectory()
        traj.save(T, x, score_fn.nfe)
        guard = score_fn.guard
        guard.step_name = "step"
        t, lam = T, lam_T
        h = min(self.h_init, lam_end - lam)
        d_s: torch.Tensor | None = None
        accepted = rejected = 0
        bar = progress_bar(total=100, desc=type(self).__name__, disable=not progress)
        try:
            while t > eps:
                if score_fn.nfe >= self.max_nfe:
                    raise RuntimeError(
                        f"AdaptiveDPMSolver: no solution after max_nfe={self.max_nfe} score evaluations (reached "
                        f"t={t:.6g} of [{eps:g}, {T:g}], step h={h:.3g} in lambda); loosen rtol/atol, raise max_nfe, "
                        "or check score_fn near this time"
                    )
                last = h >= lam_end - lam
                lam_next = lam_end if last else lam + h
                t_next = eps if last else float(invert_log_snr(sde, [lam_next], eps)[0])
                if d_s is None:
                    ks = kernel(sde, t)
                    d_s = data_prediction(score_fn, x, t, ks[0], ks[1])
                    # a NaN/inf score shows here, not as endless rejections
                    guard.check(d_s, accepted, t, what="data prediction (from the score)", bounded=False)
                x_low, x_high = self.attempt(score_fn, sde, x, d_s, t, t_next)
                err = self.error(x, x_low, x_high)
                if err <= 1.0:
                    guard.current_step = accepted
                    guard.check(x_high, accepted, t, t_next)
                    x, t, lam, d_s = x_high, t_next, lam_next, None
                    accepted += 1
                    if pending and t <= pending[0]:
                        traj.save(t, x, score_fn.nfe)
                        pending = [s for s in pending if s < t]
                    bar.n = int(100 * (lam - lam_T) / (lam_end - lam_T))
                    bar.refresh()
                else:
                    rejected += 1
                factor = self.safety * err ** (-1.0 / self.order) if err > 0 else self.max_factor
                h = min(h * min(self.max_factor, max(self.min_factor, factor)), lam_end - lam)
        finally:
            bar.close()
        if traj.times[-1] != eps:
            traj.save(eps, x, score_fn.nfe)
        if self.to_zero:
            ks = kernel(sde, eps)
            x0 = data_prediction(score_fn, x, eps, ks[0], ks[1])
            guard.current_step = accepted
            guard.check(x0, accepted, eps, 0.0, what="state at sigma = 0")
            traj.save(0.0, x0, score_fn.nfe)
        traj.stats = {"accepted": accepted, "rejected": rejected}
        return traj
