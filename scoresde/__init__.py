"""scoresde: score-based diffusion models as stochastic differential equations.

SDE -> score function -> integrator -> ``xarray.Dataset``::

    import scoresde as sd
    sde = sd.VPSDE()
    target = sd.eight_gaussians()
    ds = sd.sample(sde, target.score(sde), sd.EulerMaruyama(steps=500), shape=(10_000, 2), seed=0)

The public names are loaded on first use (PEP 562), so ``import scoresde`` and ``scoresde --help``
do not import torch, xarray or matplotlib until something needs them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__

if TYPE_CHECKING:
    from . import (
        adaptive,
        chunked,
        datasets,
        ddpm,
        evaluation,
        flow,
        likelihood,
        losses,
        metrics,
        nets,
        plotting,
        schedules,
        solvers,
        time_grids,
    )
    from .adaptive import AdaptiveSDE
    from .chunked import chunk_seed
    from .datasets import Dataset, load_dataset
    from .ddpm import DDPMSDE, DDPMAncestral, DDPMSchedule
    from .flow import FlowODE, RectifiedFlow, reflow_data
    from .integrators.correctors import AnnealedLangevinCorrector, Corrector, LangevinCorrector, NoneCorrector
    from .integrators.predictors import (
        AncestralPredictor,
        EulerMaruyamaPredictor,
        NonePredictor,
        Predictor,
        ReverseDiffusionPredictor,
    )
    from .likelihood import LikelihoodResult, log_likelihood
    from .losses import (
        OBJECTIVE_REGISTRY,
        DDPMObjective,
        DenoisingScoreMatching,
        EDMObjective,
        FlowMatching,
        Objective,
        dsm_loss,
        velocity_loss,
    )
    from .mixture import (
        TARGETS,
        GaussianMixture,
        MixtureScore,
        eight_gaussians,
        get_target,
        grid,
        pinwheel,
        random_mixture,
        ring,
    )
    from .nets import NETWORK_REGISTRY, ScoreModel, ScoreNetwork, build_network
    from .samplers import (
        CORRECTORS,
        PREDICTORS,
        SCIPY_METHODS,
        TORCHDIFFEQ_METHODS,
        DivergenceError,
        EulerMaruyama,
        PredictorCorrector,
        ProbabilityFlowODE,
        Sampler,
        TorchSDE,
    )
    from .sampling import sample
    from .sde import (
        EDMSDE,
        SDE,
        SDE_REGISTRY,
        VESDE,
        VPSDE,
        LinearSDE,
        ReverseSDE,
        SubVPSDE,
        UnregisteredError,
        VariancePreservingSDE,
        sde_config,
        sde_from_config,
    )
    from .solvers import DDIM, SOLVERS, AdaptiveDPMSolver, DPMSolverPP, DPMSolverPPSinglestep, Euler, Heun, UniPC
    from .time_grids import GRIDS, KarrasSigma, LogSNRUniform, TimeGrid, TimeQuadratic, UniformTime, get_grid
    from .training import (
        CheckpointError,
        DistributedError,
        TrainConfig,
        Trainer,
        load_checkpoint,
        read_checkpoint,
        train,
    )

#: public submodules, importable as ``scoresde.<name>``
_SUBMODULES = frozenset(
    {
        "adaptive",
        "chunked",
        "conditioning",
        "datasets",
        "ddpm",
        "evaluation",
        "flow",
        "integrators",
        "likelihood",
        "losses",
        "metrics",
        "mixture",
        "nets",
        "plotting",
        "samplers",
        "sampling",
        "schedules",
        "sde",
        "solvers",
        "time_grids",
        "training",
    }
)

#: public name -> submodule that defines it
_NAMES: dict[str, str] = {
    "AdaptiveSDE": "adaptive",
    "chunk_seed": "chunked",
    "Dataset": "datasets",
    "load_dataset": "datasets",
    "DDPMSDE": "ddpm",
    "DDPMAncestral": "ddpm",
    "DDPMSchedule": "ddpm",
    "FlowODE": "flow",
    "RectifiedFlow": "flow",
    "reflow_data": "flow",
    "LikelihoodResult": "likelihood",
    "log_likelihood": "likelihood",
    "dsm_loss": "losses",
    "velocity_loss": "losses",
    "Objective": "losses",
    "DenoisingScoreMatching": "losses",
    "EDMObjective": "losses",
    "DDPMObjective": "losses",
    "FlowMatching": "losses",
    "OBJECTIVE_REGISTRY": "losses",
    "TARGETS": "mixture",
    "GaussianMixture": "mixture",
    "MixtureScore": "mixture",
    "eight_gaussians": "mixture",
    "get_target": "mixture",
    "grid": "mixture",
    "pinwheel": "mixture",
    "random_mixture": "mixture",
    "ring": "mixture",
    "MixtureClassifier": "mixture",
    "ClassConditionalScore": "mixture",
    "LinearObservation": "conditioning",
    "ClassifierGuidance": "conditioning",
    "ClassifierFreeGuidance": "conditioning",
    "DPS": "conditioning",
    "PiGDM": "conditioning",
    "Replacement": "conditioning",
    "RePaint": "conditioning",
    "TwistedSMC": "conditioning",
    "sample_posterior": "conditioning",
    "sample_class": "conditioning",
    "ScoreModel": "nets",
    "build_network": "nets",
    "ScoreNetwork": "nets",
    "NETWORK_REGISTRY": "nets",
    "CORRECTORS": "samplers",
    "PREDICTORS": "samplers",
    "SCIPY_METHODS": "samplers",
    "TORCHDIFFEQ_METHODS": "samplers",
    "DivergenceError": "samplers",
    "Predictor": "integrators.predictors",
    "EulerMaruyamaPredictor": "integrators.predictors",
    "ReverseDiffusionPredictor": "integrators.predictors",
    "AncestralPredictor": "integrators.predictors",
    "NonePredictor": "integrators.predictors",
    "Corrector": "integrators.correctors",
    "LangevinCorrector": "integrators.correctors",
    "AnnealedLangevinCorrector": "integrators.correctors",
    "NoneCorrector": "integrators.correctors",
    "EulerMaruyama": "samplers",
    "PredictorCorrector": "samplers",
    "ProbabilityFlowODE": "samplers",
    "Sampler": "samplers",
    "TorchSDE": "samplers",
    "EDMStochastic": "samplers",
    "DPMSolverPPSDE": "samplers",
    "ERSDE": "samplers",
    "sample": "sampling",
    "GRIDS": "time_grids",
    "KarrasSigma": "time_grids",
    "LogSNRUniform": "time_grids",
    "TimeGrid": "time_grids",
    "TimeQuadratic": "time_grids",
    "UniformTime": "time_grids",
    "get_grid": "time_grids",
    "SDE": "sde",
    "VESDE": "sde",
    "EDMSDE": "sde",
    "VPSDE": "sde",
    "LinearSDE": "sde",
    "ReverseSDE": "sde",
    "SubVPSDE": "sde",
    "VariancePreservingSDE": "sde",
    "sde_config": "sde",
    "sde_from_config": "sde",
    "SDE_REGISTRY": "sde",
    "UnregisteredError": "sde",
    "DDIM": "solvers",
    "SOLVERS": "solvers",
    "DPMSolverPP": "solvers",
    "DPMSolverPPSinglestep": "solvers",
    "AdaptiveDPMSolver": "solvers",
    "Euler": "solvers",
    "Heun": "solvers",
    "UniPC": "solvers",
    "CheckpointError": "training",
    "DistributedError": "training",
    "TrainConfig": "training",
    "Trainer": "training",
    "load_checkpoint": "training",
    "read_checkpoint": "training",
    "train": "training",
    "train_classifier": "training",
    "save_classifier": "training",
    "load_classifier": "training",
    "MLPClassifier": "nets",
    "NoisyClassifier": "nets",
}


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    if name in _NAMES:
        value = getattr(importlib.import_module(f".{_NAMES[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "__version__",
    "SDE",
    "LinearSDE",
    "VariancePreservingSDE",
    "VPSDE",
    "SubVPSDE",
    "VESDE",
    "EDMSDE",
    "ReverseSDE",
    "GaussianMixture",
    "MixtureScore",
    "TARGETS",
    "get_target",
    "eight_gaussians",
    "ring",
    "grid",
    "pinwheel",
    "random_mixture",
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
    "Predictor",
    "EulerMaruyamaPredictor",
    "ReverseDiffusionPredictor",
    "AncestralPredictor",
    "NonePredictor",
    "Corrector",
    "LangevinCorrector",
    "AnnealedLangevinCorrector",
    "NoneCorrector",
    "sample",
    "chunked",
    "chunk_seed",
    "sde_config",
    "sde_from_config",
    "SDE_REGISTRY",
    "UnregisteredError",
    "metrics",
    "plotting",
    "evaluation",
    "nets",
    "losses",
    "datasets",
    "Dataset",
    "load_dataset",
    "dsm_loss",
    "velocity_loss",
    "ScoreModel",
    "build_network",
    "ScoreNetwork",
    "NETWORK_REGISTRY",
    "Objective",
    "DenoisingScoreMatching",
    "EDMObjective",
    "DDPMObjective",
    "FlowMatching",
    "OBJECTIVE_REGISTRY",
    "TrainConfig",
    "Trainer",
    "train",
    "train_classifier",
    "save_classifier",
    "load_classifier",
    "MLPClassifier",
    "NoisyClassifier",
    "load_checkpoint",
    "read_checkpoint",
    "CheckpointError",
    "DistributedError",
    "likelihood",
    "log_likelihood",
    "LikelihoodResult",
    "schedules",
    "time_grids",
    "solvers",
    "TimeGrid",
    "UniformTime",
    "LogSNRUniform",
    "TimeQuadratic",
    "KarrasSigma",
    "GRIDS",
    "get_grid",
    "Euler",
    "Heun",
    "DDIM",
    "DPMSolverPP",
    "DPMSolverPPSinglestep",
    "AdaptiveDPMSolver",
    "UniPC",
    "SOLVERS",
    "ddpm",
    "flow",
    "DDPMSchedule",
    "DDPMSDE",
    "DDPMAncestral",
    "RectifiedFlow",
    "FlowODE",
    "reflow_data",
    "adaptive",
    "AdaptiveSDE",
]
