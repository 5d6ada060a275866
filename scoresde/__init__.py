"""scoresde: score-based diffusion models as stochastic differential equations.

SDE -> score function -> integrator -> ``xarray.Dataset``::

    import scoresde as sd
    sde = sd.VPSDE()
    target = sd.eight_gaussians()
    ds = sd.sample(sde, target.score(sde), sd.EulerMaruyama(steps=500), shape=(10_000, 2), seed=0)
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("scoresde")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

from . import adaptive, datasets, ddpm, flow, likelihood, losses, metrics, nets, schedules, solvers
from .adaptive import AdaptiveSDE
from .datasets import Dataset, load_dataset
from .ddpm import DDPMSDE, DDPMAncestral, DDPMSchedule
from .flow import FlowODE, RectifiedFlow, reflow_data
from .likelihood import LikelihoodResult, log_likelihood
from .losses import dsm_loss, velocity_loss
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
from .nets import ScoreModel, build_network
from .samplers import (
    CORRECTORS,
    PREDICTORS,
    SCIPY_METHODS,
    EulerMaruyama,
    PredictorCorrector,
    ProbabilityFlowODE,
    Sampler,
    TorchSDE,
)
from .sampling import sample
from .schedules import GRIDS, KarrasSigma, LogSNRUniform, TimeGrid, TimeQuadratic, UniformTime, get_grid
from .sde import (
    SDE,
    VESDE,
    VPSDE,
    LinearSDE,
    ReverseSDE,
    SubVPSDE,
    VariancePreservingSDE,
    sde_config,
    sde_from_config,
)
from .solvers import DDIM, SOLVERS, DPMSolverPP, Euler, Heun, UniPC
from .training import CheckpointError, TrainConfig, Trainer, load_checkpoint, read_checkpoint, train

__all__ = [
    "__version__",
    "SDE",
    "LinearSDE",
    "VariancePreservingSDE",
    "VPSDE",
    "SubVPSDE",
    "VESDE",
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
    "sample",
    "sde_config",
    "sde_from_config",
    "metrics",
    "nets",
    "losses",
    "datasets",
    "Dataset",
    "load_dataset",
    "dsm_loss",
    "velocity_loss",
    "ScoreModel",
    "build_network",
    "TrainConfig",
    "Trainer",
    "train",
    "load_checkpoint",
    "read_checkpoint",
    "CheckpointError",
    "likelihood",
    "log_likelihood",
    "LikelihoodResult",
    "schedules",
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
