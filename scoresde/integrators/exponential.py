r"""Fast deterministic samplers of the probability-flow ODE on any :mod:`time grid <scoresde.time_grids>`.

All solvers are :class:`~scoresde.integrators.base.FixedStepSampler` subclasses run by :func:`scoresde.sample`
on the grid :math:`T = t_0 > \dots > t_N = \varepsilon` given by their ``grid`` argument (a name in
:data:`scoresde.time_grids.GRIDS` or a :class:`~scoresde.time_grids.TimeGrid`). The probability-flow
ODE of a linear SDE with kernel :math:`\mathcal N(s(t) x_0, \sigma(t)^2 I)` is

.. math::
    \frac{dx}{dt} = f(t)\,x - \tfrac12 g(t)^2\,s_\theta(x, t).

Two families of solvers:

* **In t** — :class:`Euler` (order 1, N NFE) and :class:`Heun` (explicit trapezoid, order 2, 2N NFE)
  step this ODE directly (they are :class:`~scoresde.ProbabilityFlowODE` on another grid).
* **Exponential integrators in data-prediction form** — with the half log-SNR
  :math:`\lambda = \log(s/\sigma)` as the time variable, the ODE's linear part is solved exactly and
  only the data prediction (Tweedie's formula)

  .. math::
      \hat x_0(x, t) = \frac{x + \sigma(t)^2 s_\theta(x, t)}{s(t)}, \qquad
      \hat\varepsilon(x, t) = -\sigma(t)\,s_\theta(x, t) = \frac{x - s(t)\hat x_0}{\sigma(t)},

  is extrapolated (Lu et al. 2022, *DPM-Solver++*):

  .. math::
      x_{t'} = \frac{\sigma(t')}{\sigma(t)}\,x_t
               + s(t') \int_{\lambda_t}^{\lambda_{t'}} e^{-(\lambda_{t'} - \lambda)}\,\hat x_0(\lambda)\,d\lambda.

  :class:`DDIM` (order 1) keeps :math:`\hat x_0` constant; :class:`DPMSolverPP` (multistep, order 2
  or 3) extrapolates it from the previous steps (``multistep=False``: the single-step 2S/3S of
  :mod:`scoresde.integrators.singlestep`, which evaluate inside each step instead), and :class:`UniPC`
  adds a corrector that reuses the next step's evaluation. One score evaluation per step: NFE = ``steps``.

VE is the special case :math:`s \equiv 1` and needs nothing special (dpm-solver#5): every formula
uses :math:`s(t)` and :math:`\sigma(t)` from the SDE. :math:`\sigma(\varepsilon) > 0`, so the last step
never takes :math:`\log 0`. With ``to_zero=True`` the run ends at :math:`\sigma = 0` within ``steps``: the last
step is the data prediction at the grid's end (the limit :math:`h \to \infty` of every update; see
:mod:`scoresde.integrators.fixed_grid`).
"""

from __future__ import annotations

import inspect
import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .._checks import check_positive, check_positive_int
from .._kernels import check_linear, kernel, kernel_table, randn_like, time_vector, tweedie
from ..sde import SDE
from ..time_grids import TimeGrid, get_grid, log_snr
from .base import CountedScore, FixedStepSampler
from .fixed_grid import Euler, Heun, OnGrid
from .singlestep import DPMSolverPPSinglestep

__all__ = ["DDIM", "DPMSolverPP", "UniPC", "SOLVERS"]


class _Exponential(OnGrid, FixedStepSampler):
    """What the exponential integrators share: a time grid, a linear SDE, one score evaluation per step
    (the evaluation at ``eps`` is never made)."""

    stochastic = False

    @property
    def nfe_per_step(self) -> int | None:
        """One score evaluation per step."""
        return 1

    def check(self, sde: SDE) -> None:
        super().check(sde)
        check_linear(self, sde)


@dataclass
class _Run:
    r"""Per-run state of an exponential integrator: the counted score and :math:`(s, \sigma, \lambda)` at the
    grid times, each computed once per run (for the whole grid by :func:`~scoresde._kernels.kernel_table` when
    the run starts, else by :func:`~scoresde._kernels.kernel` on first use)."""

    score_fn: CountedScore
    coefs: dict[float, tuple[float, float, float]] = field(default_factory=dict)

    def kernel(self, sde: SDE, t: float) -> tuple[float, float, float]:
        r""":math:`(s(t), \sigma(t), \lambda(t))`, from the run's table."""
        k = self.coefs.get(t)
        if k is None:
            k = self.coefs[t] = kernel(sde, t)
        return k


class DDIM(_Exponential):
    r"""DDIM (Song, Meng & Ermon 2021) for any linear SDE, in data-prediction form.

    From :math:`x` at :math:`t` to :math:`t' < t`, with :math:`s, \sigma` at :math:`t` and
    :math:`s', \sigma'` at :math:`t'`, :math:`h = \lambda(t') - \lambda(t) > 0`:

    .. math::
        \hat x_0 = \frac{x + \sigma^2 s_\theta(x, t)}{s}, \quad \hat\varepsilon = -\sigma s_\theta(x, t),
        \quad
        x' = s' \hat x_0 + \sqrt{\sigma'^2 - \sigma_\eta^2}\,\hat\varepsilon + \sigma_\eta z,
        \quad \sigma_\eta = \eta\,\sigma'\sqrt{1 - e^{-2h}}, \quad z \sim \mathcal N(0, I).

    For :math:`\eta = 0` this is deterministic, :math:`x' = s'\hat x_0 + \sigma'\hat\varepsilon
    = \tfrac{\sigma'}{\sigma} x - s'(e^{-h} - 1)\,\hat x_0` — the first-order exponential integrator
    (DPM-Solver++ 1), equal to Euler's method in :math:`(\tilde\sigma = \sigma/s,\ x/s)`. It is exact
    when the data distribution is a point mass, first order otherwise (for a Gaussian
    :math:`\mathcal N(m, C)` its one-step map multiplies the eigen-component :math:`c` of
    :math:`x - s m` by :math:`(s s' c + \sigma\sigma')/(s^2 c + \sigma^2)` instead of
    :math:`\sqrt{(s'^2 c + \sigma'^2)/(s^2 c + \sigma^2)}`). :math:`\sigma_\eta` generalises DDIM's
    :math:`\eta\sqrt{(1-\bar\alpha')/(1-\bar\alpha)}\sqrt{1-\bar\alpha/\bar\alpha'}`
    (:math:`\bar\alpha = s^2` for VP): :math:`\eta = 1` draws from the DDPM posterior
    :math:`q(x_{t'} \mid x_t, \hat x_0)`.

    Parameters
    ----------
    steps : int
        Number of steps :math:`N` (= NFE). Default 50.
    grid : str or TimeGrid
        Time grid; default ``"uniform"``.
    eta : float
        Stochasticity :math:`\eta \in [0, 1]`; default 0 (deterministic). With ``eta > 0`` the
        noise is drawn from the run's generator (``stochastic`` is then True).
    eps : float
        Final time. Default 1e-3.
    denoise : bool
        Finish with the Tweedie step (one more NFE). Default False.
    to_zero : bool
        End at :math:`\sigma = 0` with the data prediction, within ``steps``. Default False.
    """

    def __init__(
        self,
        steps: int = 50,
        grid: str | TimeGrid = "uniform",
        eta: float = 0.0,
        eps: float = 1e-3,
        denoise: bool = False,
        to_zero: bool = False,
    ) -> None:
        super().__init__(steps, eps, denoise)
        self.set_to_zero(to_zero)
        self.time_grid = get_grid(grid)
        self.eta = check_positive("eta", eta, allow_zero=True)
        if self.eta > 1:
            raise ValueError(f"eta must lie in [0, 1], got {eta!r}")
        self.stochastic = self.eta > 0

    def params(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "grid": repr(self.time_grid),
            "eta": self.eta,
            "eps": self.eps,
            "denoise": self.denoise,
            "to_zero": self.to_zero,
        }

    def prepare(self, sde: SDE, score_fn: CountedScore) -> _Run:
        return _Run(score_fn)

    def prepare_run(self, sde: SDE, score_fn: CountedScore, grid: np.ndarray) -> _Run:
        return _Run(score_fn, kernel_table(sde, grid))

    def step(
        self,
        run: _Run | CountedScore,
        sde: SDE,
        x: torch.Tensor,
        t: float,
        t_next: float,
        generator: torch.Generator,
    ) -> torch.Tensor:
        run = run if isinstance(run, _Run) else _Run(run)
        s, sigma, lam = run.kernel(sde, t)
        s2, sigma2, lam2 = run.kernel(sde, t_next)
        score = run.score_fn(x, time_vector(t, x))
        x0 = tweedie(x, score, s, sigma)
        h = lam2 - lam
        if self.eta == 0:
            return torch.mul(x, sigma2 / sigma).add_(x0, alpha=-s2 * math.expm1(-h))
        sigma_eta = self.eta * sigma2 * math.sqrt(-math.expm1(-2.0 * h))
        c = math.sqrt(max(sigma2**2 - sigma_eta**2, 0.0))
        z = randn_like(x, generator)
        return (s2 * x0 - (c * sigma) * score).add_(sigma_eta * z)


# ---------------------------------------------------------------------------------------
# DPM-Solver++ multistep
# ---------------------------------------------------------------------------------------
@dataclass
class _History(_Run):
    """Per-run state of a multistep solver: the last data predictions and their lambdas."""

    step: int = 0
    lams: list[float] = field(default_factory=list)
    x0s: list[torch.Tensor] = field(default_factory=list)
    lower_order_final: bool = False


class _Multistep(_Exponential):
    """What DPM-Solver++ and UniPC share: order 1-3, a time grid, a :class:`_History`, and an order
    schedule with warm-up and (when :meth:`uses_lower_order_final` says so) lowering over the final steps."""

    def __init__(
        self,
        order: int,
        steps: int,
        grid: str | TimeGrid,
        lower_order_final: bool,
        eps: float,
        denoise: bool,
        to_zero: bool = False,
    ) -> None:
        super().__init__(steps, eps, denoise)
        self.set_to_zero(to_zero)
        self.order = check_positive_int("order", order)
        if self.order > 3:
            raise ValueError(f"order must be 1, 2 or 3, got {order!r}")
        self.time_grid = get_grid(grid)
        self.lower_order_final = bool(lower_order_final)

    def prepare(self, sde: SDE, score_fn: CountedScore) -> _History:
        return _History(score_fn, lower_order_final=self.uses_lower_order_final(sde))

    def prepare_run(self, sde: SDE, score_fn: CountedScore, grid: np.ndarray) -> _History:
        return _History(score_fn, kernel_table(sde, grid), lower_order_final=self.uses_lower_order_final(sde, grid))

    def uses_lower_order_final(self, sde: SDE | None = None, grid: np.ndarray | None = None) -> bool:
        """Whether ``lower_order_final`` takes effect: the final steps use lower orders (default: whenever
        ``lower_order_final`` is set)."""
        return self.lower_order_final

    def lowers_final_order(self, sde: SDE | None = None) -> bool:
        """Deprecated name of :meth:`uses_lower_order_final`."""
        warnings.warn(
            "lowers_final_order() is deprecated; use uses_lower_order_final()", DeprecationWarning, stacklevel=2
        )
        return self.uses_lower_order_final(sde)

    def step_order(self, i: int, lower_order_final: bool | None = None) -> int:
        """Order used by step ``i`` (0-based): warm-up, then ``order``, lowered at the end when
        ``lower_order_final`` (default: :meth:`uses_lower_order_final` without an SDE)."""
        k = min(self.order, i + 1)
        if self.uses_lower_order_final() if lower_order_final is None else lower_order_final:
            k = min(k, self.steps - i)
        return k


class DPMSolverPP(_Multistep):
    r"""DPM-Solver++ multistep (Lu et al. 2022), order 2 ("2M", Algorithm 2) or 3 ("3M").

    With :math:`\lambda_i = \lambda(t_i)`, :math:`h_i = \lambda_i - \lambda_{i-1}`, the data
    predictions :math:`D_i = \hat x_0(x_{i}, t_{i})` (one score evaluation each) and
    :math:`\varphi_1 = e^{-h} - 1`, :math:`\varphi_2 = \varphi_1/h + 1`, :math:`\varphi_3 = \varphi_2/h - \tfrac12`,
    the step from :math:`t_{i-1}` to :math:`t_i` is

    .. math::
        x_i = \frac{\sigma_i}{\sigma_{i-1}} x_{i-1} - s_i \varphi_1 D_{i-1}
              \quad \text{(order 1: DDIM)},

        x_i = \frac{\sigma_i}{\sigma_{i-1}} x_{i-1} - s_i \varphi_1 \Big(D_{i-1}
              + \frac{1}{2 r_0}(D_{i-1} - D_{i-2})\Big), \quad r_0 = h_{i-1}/h_i \quad \text{(2M)},

        x_i = \frac{\sigma_i}{\sigma_{i-1}} x_{i-1} - s_i \varphi_1 D_{i-1} + s_i\varphi_2 D^{(1)}
              - s_i\varphi_3 D^{(2)} \quad \text{(3M)},

    where, with :math:`r_1 = h_{i-2}/h_i`, :math:`\delta_0 = (D_{i-1} - D_{i-2})/r_0`,
    :math:`\delta_1 = (D_{i-2} - D_{i-3})/r_1`: :math:`D^{(1)} = \delta_0 + \frac{r_0}{r_0 + r_1}(\delta_0 - \delta_1)`
    and :math:`D^{(2)} = (\delta_0 - \delta_1)/(r_0 + r_1)`. These are the updates of the reference
    implementation (``dpm_solver_pytorch.py``, ``algorithm_type="dpmsolver++"``,
    ``solver_type="dpmsolver"``); :math:`s, \sigma` come from the SDE, so VE (:math:`s \equiv 1`),
    VP and sub-VP are handled alike.

    Warm-up: the first step is first order, the second (for 3M) second order. With
    ``lower_order_final=True`` the order also decreases over the final steps,
    :math:`k_i = \min(\text{order}, N - i)` for step :math:`i = 0..N-1`, when there are fewer than 15
    steps (the threshold of the reference code used by Stable Diffusion and diffusers) *or* when the
    grid's last step in :math:`\lambda` is more than twice the one before it. The second rule is ours:
    on the uniform-:math:`t` grid the last :math:`\lambda`-step of a VP run is 3-4.7 times the previous
    one and extrapolating over it is unstable; measured on the 8-Gaussian VP ring (500 samples), 3M at
    20 / 50 / 100 steps errs 7.7e-1 / 4.9e-2 / 9.0e-3 without lowering and 7.4e-2 / 6.1e-3 / 9.2e-4
    with it, while on the log-SNR and Karras grids (ratio 1-1.3) lowering changes little.
    NFE = ``steps`` (no evaluation at :math:`\varepsilon`).

    Parameters
    ----------
    order : {1, 2, 3}
        Multistep order. Default 2. ``order=1`` is :class:`DDIM` with ``eta=0``.
    steps : int
        Number of steps :math:`N` (= NFE). Default 20.
    grid : str or TimeGrid
        Time grid; default ``"logsnr"`` (constant :math:`h`).
    multistep : bool
        ``True`` (default): this multistep solver. ``False`` returns the single-step solver
        :class:`~scoresde.DPMSolverPPSinglestep` (2S/3S, ``order`` NFE per step) built from the arguments
        given (``order``, ``steps``, ``grid``, ``eps``, ``denoise``; the others take its defaults);
        ``lower_order_final`` then cannot be given.
    lower_order_final : bool
        Lower the order over the last steps when ``steps < 15`` or the last :math:`\lambda`-step is
        more than twice the previous one (see above). Default True.
    eps : float
        Final time. Default 1e-3.
    denoise : bool
        Finish with the Tweedie step (one more NFE). Default False.
    to_zero : bool
        End at :math:`\sigma = 0` with the data prediction, within ``steps`` (a first-order last step).
        Default False.
    """

    #: ``lower_order_final`` applies when ``steps`` is below this
    lower_order_final_below = 15
    #: ... or when the last lambda-step exceeds this multiple of the one before
    lower_order_final_ratio = 2.0

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        bound = inspect.signature(cls.__init__).bind(None, *args, **kwargs)
        given = dict(bound.arguments)
        given.pop("self")
        if given.pop("multistep", True):
            return super().__new__(cls)
        if "lower_order_final" in given:
            raise ValueError(
                "lower_order_final applies to the multistep solver only (a single-step solver has the full order "
                "at every step); drop it, or use multistep=True"
            )
        return DPMSolverPPSinglestep(**given)

    def __init__(
        self,
        order: int = 2,
        steps: int = 20,
        grid: str | TimeGrid = "logsnr",
        multistep: bool = True,
        lower_order_final: bool = True,
        eps: float = 1e-3,
        denoise: bool = False,
        to_zero: bool = False,
    ) -> None:
        super().__init__(order, steps, grid, lower_order_final, eps, denoise, to_zero)

    #: the constructor's parameters, for ``inspect.signature`` (which would otherwise show ``__new__``'s)
    __signature__ = inspect.signature(__init__).replace(
        parameters=list(inspect.signature(__init__).parameters.values())[1:]
    )

    def params(self) -> dict[str, Any]:
        return {
            "order": self.order,
            "steps": self.steps,
            "grid": repr(self.time_grid),
            "multistep": True,
            "lower_order_final": self.lower_order_final,
            "eps": self.eps,
            "denoise": self.denoise,
            "to_zero": self.to_zero,
        }

    def uses_lower_order_final(self, sde: SDE | None = None, grid: np.ndarray | None = None) -> bool:
        """Whether the final steps use lower orders (for ``sde``'s grid, or ``grid`` when given: the run's
        own, built once; without ``sde``, by ``steps`` alone)."""
        if not self.lower_order_final:
            return False
        if self.steps < self.lower_order_final_below:
            return True
        if sde is None or self.steps < 2:
            return False
        lam = log_snr(sde, self.time_points(sde) if grid is None else grid)
        return bool(lam[-1] - lam[-2] > self.lower_order_final_ratio * (lam[-2] - lam[-3]))

    def step(
        self, hist: _History, sde: SDE, x: torch.Tensor, t: float, t_next: float, generator: torch.Generator
    ) -> torch.Tensor:
        s, sigma, lam = hist.kernel(sde, t)
        s2, sigma2, lam2 = hist.kernel(sde, t_next)
        score = hist.score_fn(x, time_vector(t, x))
        hist.x0s.append(tweedie(x, score, s, sigma))
        hist.lams.append(lam)
        del hist.x0s[: -self.order], hist.lams[: -self.order]
        k = self.step_order(hist.step, hist.lower_order_final)
        hist.step += 1

        h = lam2 - lam
        phi1 = math.expm1(-h)
        x0s = hist.x0s
        # the update is a x + sum_j c_j D_j; its coefficients (Python floats) combine those of the divided
        # differences of the class docstring
        a, c0 = sigma2 / sigma, -s2 * phi1
        if k == 1:
            return torch.mul(x, a).add_(x0s[-1], alpha=c0)
        r0 = (lam - hist.lams[-2]) / h
        if k == 2:
            c_delta0 = -0.5 * s2 * phi1  # times delta0 = (D_0 - D_1) / r0
            return torch.mul(x, a).add_(x0s[-1], alpha=c0 + c_delta0 / r0).add_(x0s[-2], alpha=-c_delta0 / r0)
        r1 = (hist.lams[-2] - hist.lams[-3]) / h
        phi2 = phi1 / h + 1.0
        phi3 = phi2 / h - 0.5
        q = r0 / (r0 + r1)
        # s phi2 D1 - s phi3 D2 with D1 = (1 + q) delta0 - q delta1, D2 = (delta0 - delta1) / (r0 + r1)
        c_delta0 = s2 * phi2 * (1.0 + q) - s2 * phi3 / (r0 + r1)
        c_delta1 = -s2 * phi2 * q + s2 * phi3 / (r0 + r1)
        return (
            torch.mul(x, a)
            .add_(x0s[-1], alpha=c0 + c_delta0 / r0)
            .add_(x0s[-2], alpha=c_delta1 / r1 - c_delta0 / r0)
            .add_(x0s[-3], alpha=-c_delta1 / r1)
        )


class UniPC(_Multistep):
    r"""UniPC (Zhao et al. 2023): a multistep predictor (UniP) and corrector (UniC) in data-prediction form.

    With :math:`h = \lambda_{i+1} - \lambda_i`, the previous data predictions :math:`D_{i-k}` at
    :math:`\lambda_{i-k}`, :math:`r_k = (\lambda_{i-k} - \lambda_i)/h` and
    :math:`\Delta_k = (D_{i-k} - D_i)/r_k`, both stages start from the DDIM step and add a weighted sum of
    divided differences,

    .. math::
        \tilde x_{i+1} = \frac{\sigma_{i+1}}{\sigma_i} x_i - s_{i+1}(e^{-h} - 1) D_i
            - s_{i+1} B(h) \sum_{k=1}^{p-1} \rho^{p}_k \Delta_k \quad \text{(UniP-}p\text{)},

        x_{i+1} = \frac{\sigma_{i+1}}{\sigma_i} x_i - s_{i+1}(e^{-h} - 1) D_i
            - s_{i+1} B(h) \Big(\sum_{k=1}^{p-1} \rho^{c}_k \Delta_k + \rho^{c}_p (D_{i+1} - D_i)\Big)
            \quad \text{(UniC)},

    where :math:`D_{i+1} = \hat x_0(\tilde x_{i+1}, t_{i+1})` is the evaluation the next step needs anyway,
    so the corrector costs no extra NFE and raises the order to :math:`p + 1`. The weights solve
    :math:`R\rho = b` with :math:`R_{jk} = r_k^{j-1}` and :math:`b_j = j!\,\varphi_{j+1}(-h)/B(h)` (the
    :math:`\varphi` functions of the exponential integrator, :math:`\varphi_{j+1}(z) = (\varphi_j(z) - 1/j!)/z`);
    :math:`B(h) = e^{-h} - 1` (``"bh2"``) or :math:`-h` (``"bh1"``). These are the updates of the authors'
    reference implementation (``uni_pc.py``, ``predict_x0=True``). Warm-up by lower orders; no corrector
    on the last step; with ``lower_order_final`` the order drops over the last steps,
    :math:`p_i = \min(p, N - i)`, as in the reference code. NFE = ``steps``.

    Parameters
    ----------
    order : {1, 2, 3}
        Predictor order :math:`p` (the corrected update has order :math:`p + 1`). Default 3.
    steps : int
        Number of steps (= NFE). Default 20.
    grid : str or TimeGrid
        Time grid; default ``"logsnr"``.
    variant : {"bh2", "bh1"}
        :math:`B(h)`. Default ``"bh2"``.
    lower_order_final : bool
        Lower the order over the last steps. Default True.
    eps : float
        Final time. Default 1e-3.
    denoise : bool
        Finish with the Tweedie step (one more NFE). Default False.
    to_zero : bool
        End at :math:`\sigma = 0` with the data prediction, within ``steps``: the step before it makes no
        corrector, so the data prediction is that of the predicted state. Default False.
    """

    VARIANTS = ("bh1", "bh2")

    def __init__(
        self,
        order: int = 3,
        steps: int = 20,
        grid: str | TimeGrid = "logsnr",
        variant: str = "bh2",
        lower_order_final: bool = True,
        eps: float = 1e-3,
        denoise: bool = False,
        to_zero: bool = False,
    ) -> None:
        super().__init__(order, steps, grid, lower_order_final, eps, denoise, to_zero)
        if variant not in self.VARIANTS:
            raise ValueError(f"variant must be one of {self.VARIANTS}, got {variant!r}")
        self.variant = variant

    def params(self) -> dict[str, Any]:
        return {
            "order": self.order,
            "steps": self.steps,
            "grid": repr(self.time_grid),
            "variant": self.variant,
            "lower_order_final": self.lower_order_final,
            "eps": self.eps,
            "denoise": self.denoise,
            "to_zero": self.to_zero,
        }

    def _weights(self, rks: list[float], h: float, order: int) -> tuple[list[float], list[float], float]:
        """(rho_p, rho_c, B(h)) for the divided-difference ratios ``rks`` (last entry 1)."""
        hh = -h
        h_phi_1 = math.expm1(hh)
        b_h = hh if self.variant == "bh1" else h_phi_1
        h_phi_k = h_phi_1 / hh - 1.0
        factorial = 1.0
        R, b = [], []
        for i in range(1, order + 1):
            R.append([r ** (i - 1) for r in rks])
            b.append(h_phi_k * factorial / b_h)
            factorial *= i + 1
            h_phi_k = h_phi_k / hh - 1.0 / factorial
        R_, b_ = np.asarray(R), np.asarray(b)
        if order == 1:
            rho_p, rho_c = [], [0.5]
        elif order == 2:
            rho_p, rho_c = [0.5], np.linalg.solve(R_, b_).tolist()
        else:
            rho_p, rho_c = np.linalg.solve(R_[:-1, :-1], b_[:-1]).tolist(), np.linalg.solve(R_, b_).tolist()
        return rho_p, rho_c, b_h

    def step(
        self, st: _History, sde: SDE, x: torch.Tensor, t: float, t_next: float, generator: torch.Generator
    ) -> torch.Tensor:
        s, sigma, lam = st.kernel(sde, t)
        s2, sigma2, lam2 = st.kernel(sde, t_next)
        if not st.x0s:  # first step: evaluate at x_T
            score = st.score_fn(x, time_vector(t, x))
            st.x0s.append(tweedie(x, score, s, sigma))
            st.lams.append(lam)
        k = self.step_order(st.step, st.lower_order_final)
        st.step += 1
        last = st.step == self.grid_steps
        h = lam2 - lam
        x0s = st.x0s
        rks = [(st.lams[-(j + 1)] - lam) / h for j in range(1, k)] + [1.0]
        rho_p, rho_c, b_h = self._weights(rks, h, k)
        # both stages are a x + c_0 D_0 + sum_j c_j D_j (+ c_next D_next): the DDIM step plus the weighted
        # divided differences (D_j - D_0) / r_j, with coefficients as Python floats
        a, c_ddim, sb = sigma2 / sigma, -s2 * math.expm1(-h), s2 * b_h
        ax = torch.mul(x, a)
        c_p = [-sb * rho / r for rho, r in zip(rho_p, rks[:-1], strict=True)]
        x_pred = torch.add(ax, x0s[-1], alpha=c_ddim - sum(c_p))
        for j, c in enumerate(c_p, start=1):
            x_pred.add_(x0s[-(j + 1)], alpha=c)
        if last:
            return x_pred
        score = st.score_fn(x_pred, time_vector(t_next, x_pred))
        d_next = tweedie(x_pred, score, s2, sigma2)
        c_next = -sb * rho_c[-1]
        c_c = [-sb * rho / r for rho, r in zip(rho_c[:-1], rks[:-1], strict=True)]
        x_new = ax.add_(x0s[-1], alpha=c_ddim - c_next - sum(c_c)).add_(d_next, alpha=c_next)
        for j, c in enumerate(c_c, start=1):
            x_new.add_(x0s[-(j + 1)], alpha=c)
        x0s.append(d_next)
        st.lams.append(lam2)
        del x0s[: -self.order], st.lams[: -self.order]
        return x_new


SOLVERS: dict[str, type[FixedStepSampler]] = {
    "euler": Euler,
    "heun": Heun,
    "ddim": DDIM,
    "dpmsolver++": DPMSolverPP,
    "unipc": UniPC,
}
