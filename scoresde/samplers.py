"""The reverse-time samplers run by :func:`scoresde.sample` (re-exported from :mod:`scoresde.integrators`).

* :class:`Sampler`, :class:`FixedStepSampler`, :class:`CountedScore`, :class:`Trajectory` —
  :mod:`scoresde.integrators.base`;
* :class:`EulerMaruyama`, :class:`PredictorCorrector` — :mod:`scoresde.integrators.stochastic`, with the
  predictors and correctors of :mod:`scoresde.integrators.predictors` and
  :mod:`scoresde.integrators.correctors` (``PREDICTORS``, ``CORRECTORS``: name -> class);
* :class:`ProbabilityFlowODE`, ``SCIPY_METHODS``, ``TORCHDIFFEQ_METHODS`` — :mod:`scoresde.integrators.ode`;
* :class:`TorchSDE`, ``TORCHSDE_METHODS`` — :mod:`scoresde.integrators.torchsde`;
* :class:`EDMStochastic` — :mod:`scoresde.integrators.edm`;
* :class:`DPMSolverPPSDE`, :class:`ERSDE` — :mod:`scoresde.integrators.exponential_sde`.
"""

from __future__ import annotations

from ._guard import DivergenceError
from .integrators.base import CountedScore, FixedStepSampler, Sampler, Trajectory
from .integrators.correctors import (
    CORRECTOR_ALIASES,
    CORRECTORS,
    AnnealedLangevinCorrector,
    Corrector,
    LangevinCorrector,
    NoneCorrector,
)
from .integrators.edm import EDMStochastic
from .integrators.exponential_sde import ERSDE, DPMSolverPPSDE
from .integrators.ode import SCIPY_METHODS, TORCHDIFFEQ_METHODS, ProbabilityFlowODE
from .integrators.predictors import (
    PREDICTORS,
    AncestralPredictor,
    EulerMaruyamaPredictor,
    NonePredictor,
    Predictor,
    ReverseDiffusionPredictor,
)
from .integrators.stochastic import EulerMaruyama, PredictorCorrector
from .integrators.torchsde import TORCHSDE_METHODS, TorchSDE

__all__ = [
    "Sampler",
    "EulerMaruyama",
    "PredictorCorrector",
    "ProbabilityFlowODE",
    "TorchSDE",
    "PREDICTORS",
    "CORRECTORS",
    "SCIPY_METHODS",
    "TORCHDIFFEQ_METHODS",
    "DivergenceError",
    "FixedStepSampler",
    "CountedScore",
    "Trajectory",
    "TORCHSDE_METHODS",
    "Predictor",
    "EulerMaruyamaPredictor",
    "ReverseDiffusionPredictor",
    "AncestralPredictor",
    "NonePredictor",
    "Corrector",
    "LangevinCorrector",
    "AnnealedLangevinCorrector",
    "NoneCorrector",
    "CORRECTOR_ALIASES",
    "EDMStochastic",
    "DPMSolverPPSDE",
    "ERSDE",
]
