r"""Reverse-time integrators: small, interchangeable objects run by :func:`scoresde.sample`.

Every sampler integrates from :math:`t = T` down to a small :math:`\varepsilon` (``eps``,
default ``1e-3``) and may finish with the one-step Tweedie denoiser

.. math::
    \hat x_0 = \big(x_\varepsilon + \sigma(\varepsilon)^2\,
    s_\theta(x_\varepsilon, \varepsilon)\big) / s(\varepsilon)

(``denoise=True``; linear SDEs only). Fixed-step samplers use the uniform grid
:math:`t_i = T - i (T - \varepsilon)/N`, :math:`i = 0..N`, so that :math:`\Delta t_i = t_{i+1} - t_i < 0`.

Samplers and their cost in score evaluations (NFE) for N steps:

* ``EulerMaruyama``: :math:`x \leftarrow x + \bar f\,\Delta t + g\sqrt{|\Delta t|}\,z`; N.
* ``PredictorCorrector``: M corrector moves (Langevin, annealed Langevin, none), then a
  predictor step (Euler–Maruyama, reverse diffusion, ancestral, none); N (1 + M).
* ``ProbabilityFlowODE``: :math:`dx/dt = f - \tfrac12 g^2 s_\theta` by scipy ``solve_ivp``
  (adaptive) or fixed-step Euler (N) / Heun (2N).
* ``TorchSDE``: the reverse SDE through ``torchsde.sdeint`` in :math:`u = T - t`; N (euler),
  2N (srk).

Where :math:`\bar f = f - g^2 s_\theta` is the reverse drift (Song et al. 2021, eq. 6).
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import torch

from ._checks import check_positive, check_positive_int
from ._guard import DivergenceError, DivergenceGuard, check_score_output, max_abs, resolve_bound
from ._progress import progress_bar
from .integrators.correctors import CORRECTOR_ALIASES, CORRECTORS, Corrector, NoneCorrector
from .integrators.predictors import PREDICTORS, EulerMaruyamaPredictor, NonePredictor, Predictor
from .sde import SDE, LinearSDE, ReverseSDE, ScoreFn

__all__ = [
    "Sampler",
    "EulerMaruyama",
    "PredictorCorrector",
    "ProbabilityFlowODE",
    "TorchSDE",
    "PREDICTORS",
    "CORRECTORS",
    "SCIPY_METHODS",
    "DivergenceError",
]


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


def _vec(t: float, x: torch.Tensor) -> torch.Tensor:
    return torch.full((x.shape[0],), t, dtype=x.dtype, device=x.device)


def _randn_like(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)


class Sampler(abc.ABC):
    """Base class: ``eps`` (end time) and ``denoise`` (final Tweedie step) are common to all."""

    #: whether the sampler draws random numbers (the SDE samplers) or is deterministic (ODEs)
    stochastic: bool = True
    #: whether the sampler can start at a T where s(T) = 0 (rectified flow): only velocity integrators
    singular_T_ok: bool = False

    def __init__(self, eps: float = 1e-3, denoise: bool = False) -> None:
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
        _check_forward(sde)
        if self.eps >= sde.T:
            raise ValueError(f"eps={self.eps!r} must be smaller than the SDE's T={sde.T!r}")
        if self.denoise and not isinstance(sde, LinearSDE):
            raise ValueError("denoise=True needs a linear SDE (Tweedie's formula uses s(t), sigma(t))")
        if (
            not self.singular_T_ok
            and isinstance(sde, LinearSDE)
            and float(sde.mean_coef(torch.tensor(sde.T, dtype=torch.float64))) == 0.0
        ):
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
            score = score_fn(x_eps, _vec(self.eps, x_eps))
            x0 = (x_eps + sigma**2 * score) / s
            guard.check(x0, None, self.eps, 0.0, what="denoised state")
            traj.save(0.0, x0, score_fn.nfe)
        guard.finish()
        traj.stats["max_abs_x"] = guard.max_abs_x
        return traj


def _check_forward(sde: SDE) -> None:
    if isinstance(sde, ReverseSDE) or getattr(sde, "reversed", False):
        raise ValueError(
            f"sde is a reversed SDE ({type(sde).__name__}, e.g. from sde.reverse(score_fn)); pass the forward "
            f"SDE (e.g. sde.base): the sampler builds the reverse-time process from it and score_fn itself"
        )


class FixedStepSampler(Sampler):
    """A sampler on the uniform grid ``linspace(T, eps, steps + 1)``; subclasses define ``step``."""

    def __init__(self, steps: int = 1000, eps: float = 1e-3, denoise: bool = False) -> None:
        super().__init__(eps, denoise)
        self.steps = check_positive_int("steps", steps)

    def params(self) -> dict[str, Any]:
        return {"steps": self.steps, **super().params()}

    def grid(self, sde: SDE) -> np.ndarray:
        """The time grid, float64, strictly decreasing from ``T`` to ``eps``."""
        return np.linspace(sde.T, self.eps, self.steps + 1)

    def max_saved_states(self, sde: SDE) -> int | None:
        """``steps + 1``: the states on the grid."""
        return self.steps + 1

    @property
    def nfe_per_step(self) -> int | None:
        """Score evaluations per step (``None``: not a fixed number)."""
        return None

    def expected_nfe(self, sde: SDE) -> int | None:
        """``steps * nfe_per_step``, plus one for the denoising step."""
        n = self.nfe_per_step
        return None if n is None else self.steps * n + int(self.denoise)

    def prepare(self, sde: SDE, score_fn: CountedScore) -> Any:
        """Per-run state handed to every ``step`` (default: the reverse-time SDE)."""
        return sde.reverse(score_fn)

    @abc.abstractmethod
    def step(
        self, state: Any, sde: SDE, x: torch.Tensor, t: float, t_next: float, generator: torch.Generator
    ) -> torch.Tensor:
        """Advance ``x`` from ``t`` to ``t_next < t``."""

    def integrate(
        self,
        sde: SDE,
        score_fn: CountedScore,
        x: torch.Tensor,
        generator: torch.Generator,
        save_times: np.ndarray,
        progress: bool,
    ) -> Trajectory:
        grid = self.grid(sde)
        save_idx = set(_nearest_indices(grid, save_times))
        state = self.prepare(sde, score_fn)
        traj = Trajectory()
        if 0 in save_idx:
            traj.save(grid[0], x, score_fn.nfe)
        desc = type(self).__name__
        guard = score_fn.guard
        for i in progress_bar(range(self.steps), desc=desc, disable=not progress):
            t, t_next = float(grid[i]), float(grid[i + 1])
            guard.current_step = i
            x = self.step(state, sde, x, t, t_next, generator)
            guard.check(x, i, t, t_next)
            if i + 1 in save_idx:
                traj.save(grid[i + 1], x, score_fn.nfe)
        return traj


def _nearest_indices(grid: np.ndarray, times: np.ndarray) -> list[int]:
    return sorted({int(np.argmin(np.abs(grid - t))) for t in np.atleast_1d(times)} | {len(grid) - 1})


# ---------------------------------------------------------------------------------------
# Euler–Maruyama
# ---------------------------------------------------------------------------------------
class EulerMaruyama(FixedStepSampler):
    r"""Euler–Maruyama on the reverse-time SDE (strong order 1/2, weak order 1).

    .. math::
        x_{i+1} = x_i + [f(x_i, t_i) - g(t_i)^2 s_\theta(x_i, t_i)]\,\Delta t_i
                  + g(t_i)\sqrt{|\Delta t_i|}\,z_i, \qquad z_i \sim \mathcal N(0, I).

    Parameters
    ----------
    steps : int
        Number of steps :math:`N` (= NFE). Default 1000.
    eps : float
        Final time. Default 1e-3.
    denoise : bool
        Finish with the Tweedie step (one more NFE). Default False.

    Notes
    -----
    The step is explicit, so it is stable only for small enough steps. For VE, where the reverse
    drift near a Gaussian mode is :math:`g^2 x / \sigma^2 = 2\log(\sigma_{\max}/\sigma_{\min})\,x`,
    stability needs :math:`|\Delta t| < 1/\log(\sigma_{\max}/\sigma_{\min})`: at least 9 steps
    with the default parameters; fewer steps give finite but meaningless samples.
    """

    @property
    def nfe_per_step(self) -> int | None:
        """One score evaluation per step."""
        return 1

    def step(
        self, rsde: ReverseSDE, sde: SDE, x: torch.Tensor, t: float, t_next: float, generator: torch.Generator
    ) -> torch.Tensor:
        return _EM_PREDICTOR.update(rsde, x, t, t_next, generator)


_EM_PREDICTOR = EulerMaruyamaPredictor()


# ---------------------------------------------------------------------------------------
# Predictor–corrector
# ---------------------------------------------------------------------------------------
class PredictorCorrector(FixedStepSampler):
    r"""Predictor–corrector sampling (Song et al. 2021, Alg. 1): at each grid time, the corrector's
    MCMC moves at :math:`t_i`, then one predictor step to :math:`t_{i+1}`.

    Parameters
    ----------
    predictor : Predictor or str
        Numerical step of the reverse SDE: a :class:`~scoresde.integrators.predictors.Predictor`, or the
        name of a built-in one in ``PREDICTORS``: ``"reverse_diffusion"``, ``"euler_maruyama"``,
        ``"ancestral"`` (DDPM sampling for variance-preserving kernels such as ``VPSDE`` and
        ``DDPMSDE``, SMLD sampling for ``VESDE``; not defined for ``SubVPSDE``) or ``"none"``.
    corrector : Corrector or str
        A :class:`~scoresde.integrators.correctors.Corrector`, or the name of a built-in one in
        ``CORRECTORS``: ``"langevin"`` (Langevin MCMC with signal-to-noise step size), ``"ald"``
        (also ``"annealed_langevin"``: annealed Langevin dynamics) or ``"none"``.
    steps : int
        Number of predictor steps :math:`N`. NFE is :math:`N` times ``nfe_per_step``, the predictor's
        plus the corrector's NFE (:math:`1 + M` for the built-ins with :math:`M` corrector steps;
        predictor ``"none"`` costs nothing).
    snr : float
        Signal-to-noise ratio :math:`r` that sets the step size of a corrector given by name.
        Default 0.16.
    corrector_steps : int
        Corrector moves :math:`M` per time step of a corrector given by name. Default 1.

    A corrector given as an object carries its own ``snr`` and ``steps``; ``snr`` and ``corrector_steps``
    must then keep their defaults.
    """

    def __init__(
        self,
        predictor: Predictor | str = "reverse_diffusion",
        corrector: Corrector | str = "langevin",
        steps: int = 1000,
        snr: float = 0.16,
        corrector_steps: int = 1,
        eps: float = 1e-3,
        denoise: bool = False,
    ) -> None:
        super().__init__(steps, eps, denoise)
        if isinstance(predictor, str):
            if predictor not in PREDICTORS:
                raise ValueError(f"unknown predictor {predictor!r}; choose one of {sorted(PREDICTORS)}")
            predictor = PREDICTORS[predictor]()
        elif not isinstance(predictor, Predictor):
            raise TypeError(
                f"predictor must be a Predictor or one of {sorted(PREDICTORS)}, got {type(predictor).__name__}"
            )
        if isinstance(corrector, str):
            key = CORRECTOR_ALIASES.get(corrector, corrector)
            if key not in CORRECTORS:
                names = sorted([*CORRECTORS, *CORRECTOR_ALIASES])
                raise ValueError(f"unknown corrector {corrector!r}; choose one of {names}")
            corrector = CORRECTORS[key](snr=snr, steps=corrector_steps)
        elif isinstance(corrector, Corrector):
            if snr != 0.16 or corrector_steps != 1:
                raise ValueError(
                    f"snr and corrector_steps set the corrector given by name; {corrector!r} carries its own "
                    f"(pass them to its constructor)"
                )
        else:
            raise TypeError(
                f"corrector must be a Corrector or one of {sorted(CORRECTORS)}, got {type(corrector).__name__}"
            )
        if isinstance(predictor, NonePredictor) and isinstance(corrector, NoneCorrector):
            raise ValueError("predictor and corrector cannot both be 'none'")
        self.predictor: Predictor = predictor
        self.corrector: Corrector = corrector

    @property
    def snr(self) -> float:
        """The corrector's signal-to-noise ratio."""
        return self.corrector.snr

    @property
    def corrector_steps(self) -> int:
        """The corrector's moves per grid time."""
        return self.corrector.steps

    @property
    def nfe_per_step(self) -> int | None:
        """The predictor's NFE plus the corrector's."""
        return self.predictor.nfe + self.corrector.nfe

    def params(self) -> dict[str, Any]:
        return {
            "predictor": self.predictor.name or repr(self.predictor),
            "corrector": self.corrector.name or repr(self.corrector),
            "snr": self.snr,
            "corrector_steps": self.corrector_steps,
            **super().params(),
        }

    def check(self, sde: SDE) -> None:
        super().check(sde)
        self.predictor.check(sde)
        self.corrector.check(sde)

    def step(
        self, rsde: ReverseSDE, sde: SDE, x: torch.Tensor, t: float, t_next: float, generator: torch.Generator
    ) -> torch.Tensor:
        x = self.corrector.update(rsde, x, t, t_next, generator)
        if not isinstance(self.corrector, NoneCorrector) and not isinstance(self.predictor, NonePredictor):
            # the corrector's result is checked before the predictor evaluates the score on it
            # prepare() built rsde from the run's CountedScore
            guard = cast(CountedScore, rsde.score_fn).guard
            guard.check(x, guard.current_step, t, t_next, what="corrected state")
        return self.predictor.update(rsde, x, t, t_next, generator)


# ---------------------------------------------------------------------------------------
# Probability-flow ODE
# ---------------------------------------------------------------------------------------
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
        self.rtol = check_positive("rtol", rtol)
        self.atol = check_positive("atol", atol)

    def params(self) -> dict[str, Any]:
        p: dict[str, Any] = {"method": self.method}
        if self.method in SCIPY_METHODS:
            p.update(rtol=self.rtol, atol=self.atol)
        else:
            p.update(steps=self.steps)
        p.update(eps=self.eps, denoise=self.denoise)
        return p

    def prepare(self, sde: SDE, score_fn: CountedScore) -> ReverseSDE:
        return sde.reverse(score_fn, probability_flow=True)

    def max_saved_states(self, sde: SDE) -> int | None:
        """``steps + 1`` for the fixed-step methods; no limit for scipy's (it saves at exact times)."""
        return None if self.method in SCIPY_METHODS else self.steps + 1

    @property
    def nfe_per_step(self) -> int | None:
        """1 (``"euler"``), 2 (``"heun"``), ``None`` for scipy's adaptive methods."""
        return {"euler": 1, "heun": 2}.get(self.method)

    def step(
        self, ode: ReverseSDE, sde: SDE, x: torch.Tensor, t: float, t_next: float, generator: torch.Generator
    ) -> torch.Tensor:
        dt = t_next - t
        d = ode.sde(x, t)[0]
        if self.method == "euler":
            return x + d * dt
        d2 = ode.sde(x + d * dt, t_next)[0]
        return x + (0.5 * dt) * (d + d2)

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
        from scipy.integrate import solve_ivp
        from threadpoolctl import threadpool_limits

        ode = sde.reverse(score_fn, probability_flow=True)
        shape, dtype, device = x.shape, x.dtype, x.device
        t_eval = np.unique(np.clip(np.concatenate([save_times, [sde.T, self.eps]]), self.eps, sde.T))[::-1]
        bar = progress_bar(
            total=100,
            desc="ProbabilityFlowODE",
            disable=not progress,
            bar_format="{l_bar}{bar}| t {postfix}",
        )
        span = sde.T - self.eps
        done = [0]
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
            pct = int(100 * (sde.T - t) / span)
            if pct > done[0]:
                bar.update(pct - done[0])
                done[0] = pct
                bar.set_postfix_str(f"{t:.4f}", refresh=False)
            return drift.reshape(-1).to(device="cpu", dtype=torch.float64).numpy()

        y0 = x.reshape(-1).to(device="cpu", dtype=torch.float64).numpy()
        with threadpool_limits(limits=1, user_api="blas"):
            sol = solve_ivp(
                fun, (sde.T, self.eps), y0, method=self.method, t_eval=t_eval, rtol=self.rtol, atol=self.atol
            )
        bar.close()
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


# ---------------------------------------------------------------------------------------
# torchsde
# ---------------------------------------------------------------------------------------
TORCHSDE_METHODS = ("euler", "milstein", "srk", "heun", "midpoint", "reversible_heun")


class _TorchsdeReverse(torch.nn.Module):
    r"""The reverse SDE in :math:`u = T - t`: :math:`dy = -\bar f(y, T - u)\,du + g(T - u)\,dW_u`.

    Noise is additive (``g`` depends on time only), given as the product ``g_prod = g * v``
    so that no ``(batch, d, d)`` matrix is ever built. For additive noise Itô and
    Stratonovich coincide.
    """

    noise_type = "additive"

    def __init__(
        self, rsde: ReverseSDE, shape: torch.Size, sde_type: str, guard: DivergenceGuard | None = None, h: float = 1.0
    ) -> None:
        super().__init__()
        self.rsde, self.shape, self.sde_type = rsde, shape, sde_type
        self.T = rsde.T
        self._last: tuple[float, torch.Tensor, torch.Tensor] | None = None
        self.guard = DivergenceGuard("TorchSDE") if guard is None else guard
        self.h = h

    def f(self, u: float | torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # torchsde's additive SRA1 step evaluates the drift at (t0, y0) twice (stages 1 and 2); the
        # second call returns the cached value: 2 NFE per step instead of 3, bit-identical results
        # (the same tensor object at the same time; torchsde never updates its states in place, and
        # inference tensors carry no version counter to check that with)
        u = float(u)
        last = self._last
        if last is not None and last[0] == u and last[1] is y:
            return last[2]
        # the state torchsde asks about at u (a step's result, or a stage of one): step floor(u / h)
        self.guard.check(y, int(u / self.h * (1 + 1e-9)), self.T - u)
        drift, _ = self.rsde.sde(y.reshape(self.shape), self.T - u)
        out = -drift.reshape(y.shape)
        self._last = (u, y, out)
        return out

    def g_prod(self, u: float | torch.Tensor, y: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        _, diffusion = self.rsde.base.sde(y[:1].reshape(1, *self.shape[1:]), self.T - float(u))
        return diffusion[0] * v

    def f_and_g_prod(
        self, u: float | torch.Tensor, y: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.f(u, y), self.g_prod(u, y, v)


class TorchSDE(Sampler):
    r"""The reverse-time SDE through ``torchsde.sdeint`` with a fixed step.

    ``sdeint`` needs increasing times, so the reverse SDE is integrated in :math:`u = T - t`
    (:math:`u: 0 \to T - \varepsilon`), with drift :math:`-\bar f(y, T - u)` and diffusion
    :math:`g(T - u)` (additive noise). Each sample is flattened to a vector (torchsde wants
    2-D states) and reshaped back.

    ``sdeint`` checks shapes by evaluating the drift at :math:`(0, x_T)` before integrating; that
    evaluation is reused by the first step (cached), so NFE = N (euler) or 2N (srk). The Brownian
    motion is a ``torchsde.BrownianInterval`` whose entropy is drawn from the run's generator, so a
    seed gives bit-identical results on CPU.

    Parameters
    ----------
    method : str
        ``"euler"``, ``"milstein"`` (identical to Euler for additive noise), ``"srk"`` (the
        additive-noise SRA1 scheme, strong order 1.5; torchsde 0.2.6 asks for the drift 3 times
        per step, one of them a repeat that is answered from a one-entry cache), ``"heun"``,
        ``"midpoint"`` or ``"reversible_heun"`` (the last three are Stratonovich schemes; for
        additive noise the Stratonovich and Itô SDEs coincide).
    steps : int
        Number of steps of size :math:`(T - \varepsilon)/N`. Default 200 (400 NFE with srk).
    brownian : callable, optional
        Builds the Brownian motion instead of the default: called as ``brownian(t0=0.0, t1=T - eps,
        size=(batch, D), dtype=..., device=..., dt=h, levy_area_approximation=...)`` (the keywords
        of ``torchsde.BrownianInterval``, so ``functools.partial(torchsde.BrownianInterval,
        entropy=...)`` works) and must return a torchsde Brownian motion in :math:`u = T - t`.
        ``levy_area_approximation`` is ``"space-time"`` for ``"srk"`` (it must then answer
        ``return_U=True``), else ``"none"``. The steps query :math:`(u_k, u_{k+1})` with
        :math:`u_k = k h (1 + 10^{-9})`, the last one clipped to :math:`T - \varepsilon`. Use it to
        drive runs with different ``steps`` by one Brownian path (a ``BrownianInterval`` with
        a fixed entropy but a different ``dt`` gives the same :math:`W(T - \varepsilon)` but a
        different path in between). The run's generator is then not used.
    """

    def __init__(
        self,
        method: str = "srk",
        steps: int = 200,
        eps: float = 1e-3,
        denoise: bool = False,
        brownian: Callable[..., Any] | None = None,
    ) -> None:
        super().__init__(eps, denoise)
        if method not in TORCHSDE_METHODS:
            raise ValueError(f"unknown torchsde method {method!r}; choose one of {list(TORCHSDE_METHODS)}")
        if brownian is not None and not callable(brownian):
            raise TypeError(f"brownian must be callable (a Brownian-motion factory), got {type(brownian).__name__}")
        self.method = method
        self.steps = check_positive_int("steps", steps)
        self.brownian = brownian

    #: drift evaluations per step of the torchsde methods (additive noise; the srk repeat is cached)
    NFE_PER_STEP: dict[str, int] = {"euler": 1, "milstein": 1, "srk": 2, "heun": 2, "midpoint": 2}

    @property
    def nfe_per_step(self) -> int | None:
        """Score evaluations per step of ``method`` (``None`` where torchsde does not fix it)."""
        return self.NFE_PER_STEP.get(self.method)

    def expected_nfe(self, sde: SDE) -> int | None:
        """``steps * nfe_per_step``, plus one for the denoising step."""
        n = self.nfe_per_step
        return None if n is None else self.steps * n + int(self.denoise)

    def params(self) -> dict[str, Any]:
        p: dict[str, Any] = {"method": self.method, "steps": self.steps, **super().params()}
        if self.brownian is not None:
            p["brownian"] = getattr(self.brownian, "__name__", type(self.brownian).__name__)
        return p

    def integrate(
        self,
        sde: SDE,
        score_fn: CountedScore,
        x: torch.Tensor,
        generator: torch.Generator,
        save_times: np.ndarray,
        progress: bool,
    ) -> Trajectory:
        import torchsde

        shape = x.shape
        sde_type = "stratonovich" if self.method in ("heun", "midpoint", "reversible_heun") else "ito"
        span = sde.T - self.eps
        h = span / self.steps
        model = _TorchsdeReverse(sde.reverse(score_fn), shape, sde_type, score_fn.guard, h)
        # save times, in u = T - t, always containing 0 and the end
        u = np.unique(np.clip(sde.T - np.concatenate([save_times, [sde.T, self.eps]]), 0.0, span))
        ts = torch.tensor(u, dtype=torch.float64, device=x.device)
        levy = "space-time" if self.method == "srk" else "none"
        y0 = x.reshape(shape[0], -1)
        if self.brownian is not None:
            bm = self.brownian(
                t0=0.0, t1=span, size=y0.shape, dtype=x.dtype, device=x.device, dt=h, levy_area_approximation=levy
            )
        else:
            entropy = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
            bm = torchsde.BrownianInterval(
                t0=0.0,
                t1=span,
                size=y0.shape,
                dtype=x.dtype,
                device=x.device,
                entropy=entropy,
                dt=h,
                levy_area_approximation=levy,
            )
        # a step a hair longer than h makes sdeint take exactly `steps` steps: its last step
        # is clipped to ts[-1], and no extra ~1e-16 step appears from rounding
        with progress_bar(total=1, desc=f"TorchSDE[{self.method}]", disable=not progress) as bar:
            ys = torchsde.sdeint(model, y0, ts, bm=bm, method=self.method, dt=h * (1 + 1e-9))
            bar.update(1)
        score_fn.guard.check(ys[-1], self.steps - 1, self.eps)
        traj = Trajectory(stats={"torchsde_method": self.method})
        for j, uj in enumerate(u):
            traj.save(sde.T - uj, ys[j].reshape(shape), score_fn.nfe if j == len(u) - 1 else -1)
        return traj
