r"""Stochastic fixed-step samplers of the reverse-time SDE: :class:`EulerMaruyama` and :class:`PredictorCorrector`.

Both run on the uniform grid :math:`t_i = T - i (T - \varepsilon)/N`, :math:`i = 0..N`, so that
:math:`\Delta t_i = t_{i+1} - t_i < 0`, and use the reverse drift :math:`\bar f = f - g^2 s_\theta`
(Song et al. 2021, eq. 6). NFE for N steps: N (Euler–Maruyama), N times the predictor's plus the
corrector's NFE (predictor–corrector; see :mod:`~scoresde.integrators.predictors` and
:mod:`~scoresde.integrators.correctors`).
"""

from __future__ import annotations

import math
from typing import Any, cast

import torch

from .._kernels import randn_like
from ..sde import SDE, ReverseSDE
from .base import CountedScore, FixedStepSampler, LinearDrift
from .correctors import CORRECTOR_ALIASES, CORRECTORS, Corrector, NoneCorrector
from .predictors import PREDICTORS, EulerMaruyamaPredictor, NonePredictor, Predictor

__all__ = ["EulerMaruyama", "PredictorCorrector"]


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
    drift near a Gaussian mode of mean :math:`\mu` is
    :math:`g^2 (x - \mu) / \sigma^2 = 2\log(\sigma_{\max}/\sigma_{\min})\,(x - \mu)`,
    stability needs :math:`|\Delta t| < 1/\log(\sigma_{\max}/\sigma_{\min})`: at least 9 steps
    with the default parameters; fewer steps give finite but meaningless samples.
    """

    @property
    def nfe_per_step(self) -> int | None:
        """One score evaluation per step."""
        return 1

    def prepare(self, sde: SDE, score_fn: CountedScore) -> ReverseSDE | LinearDrift:
        """The reverse-time SDE, as a :class:`~scoresde.integrators.base.LinearDrift` where it applies."""
        rsde = sde.reverse(score_fn)
        return LinearDrift(rsde) if LinearDrift.applies(rsde) else rsde

    def step(
        self,
        rsde: ReverseSDE | LinearDrift,
        sde: SDE,
        x: torch.Tensor,
        t: float,
        t_next: float,
        generator: torch.Generator,
    ) -> torch.Tensor:
        if not isinstance(rsde, LinearDrift):
            return _EM_PREDICTOR.update(rsde, x, t, t_next, generator)
        # the predictor's update with the run's coefficients: x + drift dt + g sqrt(-dt) z
        dt = t_next - t
        drift = rsde(x, t)
        noise = randn_like(x, generator)
        x = x + drift.mul_(dt)
        return x.add_(noise.mul_(rsde.diffusion_times(t, x, math.sqrt(-dt))))


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
        ``CORRECTORS``: ``"langevin"`` (Langevin MCMC with signal-to-noise step size), ``"annealed_langevin"``
        (annealed Langevin dynamics; also ``"ald"``) or ``"none"``.
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
