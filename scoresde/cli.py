"""Command-line interface: ``scoresde train`` and ``scoresde sample`` (also ``python -m scoresde ...``).

``scoresde train`` trains a network on a named data set (2-D toy sets, the 8x8 digits) or a user
array (``.npy`` or netCDF) with one of three objectives: denoising score matching (``dsm``), Ho et
al.'s noise-prediction loss on the DDPM chain (``ddpm``) or flow matching (``flow_matching``, the
velocity of rectified flow). It writes checkpoints, ``history.nc`` and a loss curve ``loss.png`` to
``--out``, resumes from ``<out>/last.pt`` by default, and reports the speed, the final loss and,
for Gaussian-mixture data, the weighted relative error of the learned score against the exact one.

``scoresde sample`` integrates the reverse-time SDE, the probability-flow ODE or the flow ODE with
any sampler of the library (``--sampler``; fast ODE solvers on any time grid ``--grid``), either
for a 2-D Gaussian-mixture target driven by its exact score (default: the 8-Gaussian ring) or,
with ``--checkpoint``, for a trained model (EMA weights). It writes the trajectory as
``<out>/samples.nc`` and a figure ``<out>/samples.png`` (both atomically), and reports the
sliced-Wasserstein distance to exact samples (or to the training data) next to its statistical
floor (:mod:`scoresde.evaluation`; ``--no-evaluate`` skips it). Run ``scoresde train --help`` and
``scoresde sample --help`` for the options.

The parser needs only the standard library (and numpy): ``--help`` and argument errors answer
without importing torch, xarray or matplotlib, which the commands import when they run.

Exit codes: 0 success, 1 the samples contain NaN/inf (files are still written), the training
loss diverged, or writing failed, 2 bad arguments, data or checkpoints, or options the library
rejects, 130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import inspect
import json
import math
import re
import shlex
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

    from .datasets import Dataset
    from .evaluation import Evaluation
    from .samplers import Sampler
    from .sde import LinearSDE
    from .training import TrainConfig

__all__ = ["main", "build_parser", "build_sampler", "SAMPLERS", "SamplerSpec"]

PROG = "scoresde"

# ---------------------------------------------------------------------------------------
# names the parser offers. They are the library's, written out here so that the parser needs
# no torch; tests/test_cli.py checks that they equal the library's registries.
# ---------------------------------------------------------------------------------------
#: --sde: CLI name -> (class name in scoresde, description)
SDE_CHOICES: dict[str, tuple[str, str]] = {
    "vp": ("VPSDE", "variance preserving, beta(t) linear from 0.1 to 20 (DDPM's continuous limit)"),
    "subvp": ("SubVPSDE", "sub-VP: the VP drift with a smaller diffusion, variance 1 - s(t)^2 squared"),
    "ve": ("VESDE", "variance exploding, sigma(t) geometric from 0.01 to 50 (SMLD / NCSN)"),
    "edm": ("EDMSDE", "variance exploding in EDM's time, sigma(t) = t from 0 to 80 (Karras et al. 2022)"),
    "ddpm": ("DDPMSDE", "the VP SDE through Ho et al.'s 1000-step DDPM chain (linear betas 1e-4..0.02)"),
    "rf": ("RectifiedFlow", "rectified flow: x_t = (1 - t) x_0 + t z (sampled with the flow ODE)"),
}
TARGET_NAMES = ("eight_gaussians", "grid", "pinwheel", "gaussian")
TOY_DATASETS = ("moons", "swiss_roll", "checkerboard", *TARGET_NAMES)
DATASETS = (*TOY_DATASETS, "digits")
PREDICTOR_NAMES = ("euler_maruyama", "reverse_diffusion", "ancestral", "none")
CORRECTOR_NAMES = ("langevin", "annealed_langevin", "ald", "none")
WEIGHTING_NAMES = ("sigma2", "likelihood")
OBJECTIVE_NAMES = ("dsm", "ddpm", "flow_matching")
GRID_NAMES = ("uniform", "logsnr", "quadratic", "karras")
FORM_NAMES = ("auto", "edm", "t")
SCIPY_METHOD_NAMES = ("RK45", "RK23", "DOP853", "Radau", "BDF", "LSODA")
TORCHDIFFEQ_METHOD_NAMES = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")
TORCHSDE_METHOD_NAMES = ("euler", "milstein", "srk", "heun", "midpoint", "reversible_heun")
FLOW_METHOD_NAMES = ("euler", "heun")
UNIPC_VARIANTS = ("bh1", "bh2")
DDPM_VARIANCES = ("beta", "beta_tilde")
#: TrainConfig's defaults (shown by ``train --help``)
TRAIN_DEFAULTS: dict[str, Any] = {
    "steps": 5000,
    "batch_size": 512,
    "lr": 2e-3,
    "weight_decay": 0.0,
    "warmup": 100,
    "grad_clip": 1.0,
    "ema_decay": 0.999,
    "eps": 1e-5,
    "weighting": "sigma2",
    "reduce": "mean",
    "objective": "dsm",
    "seed": 0,
    "checkpoint_every": 1000,
    "log_every": 10,
    "label_dropout": 0.0,
}
#: the label dropout of `train --conditional` when --label-dropout is not given
DEFAULT_LABEL_DROPOUT = 0.1
#: the observations of `sample --checkpoint <images> --inpaint`
INPAINT_MASKS = ("half",)
#: the methods of the image inverse problems, and the default of each problem
INVERSE_METHODS = {"inpaint": ("replacement", "pigdm", "dps"), "super_resolution": ("pigdm", "dps")}
DTYPE_NAMES = ("float32", "float64")

#: chunk size of a run written to a zarr store (--out *.zarr) when --chunk-size is not given
DEFAULT_CHUNK_SIZE = 10_000

#: the sampler used when --sampler is not given: DEFAULT_SAMPLER[sde], else SAMPLER_FALLBACK (the default of
#: scoresde.sample, Euler-Maruyama on the reverse SDE; see its docstring for why)
DEFAULT_SAMPLER = {"ddpm": "ddpm", "rf": "flow"}
SAMPLER_FALLBACK = "em"
#: the training objective and parameterisation used when --objective / --parameterization are not given
DEFAULT_OBJECTIVE = {"ddpm": "ddpm", "rf": "flow_matching"}

OUTPUT_FILES = ("samples.nc", "samples.png")
TRAIN_FILES = ("last.pt", "history.nc", "loss.png")
NETS = ("mlp", "unet", "dit")
#: default width per network: MLP hidden width, U-Net base channels, DiT token width
DEFAULT_HIDDEN = {"mlp": 128, "unet": 32, "dit": 128}
#: toy sets with an exact score (Gaussian mixtures): ``scoresde train`` reports the score error
ORACLE_DATASETS = TARGET_NAMES
NETCDF_SUFFIXES = (".nc", ".nc4", ".netcdf", ".cdf", ".h5", ".hdf5")
DEFAULT_N_DATA = 20_000
#: saved states by default: every step of a fixed-step sampler up to this many (evenly spaced for
#: the others), and at most DEFAULT_SAVE_VALUES numbers in all (8 MB in float32), but at least
#: MIN_DEFAULT_SAVE_AT states; image checkpoints save IMAGE_SAVE_AT (their figure shows final states only)
MAX_DEFAULT_SAVE_AT = 101
MIN_DEFAULT_SAVE_AT = 11
DEFAULT_SAVE_VALUES = 2_000_000
IMAGE_SAVE_AT = 11

#: names re-exported lazily from the library (PEP 562): ``scoresde.cli.<name>`` still works, but
#: importing this module does not import torch
_LAZY = {
    "metrics": ("scoresde.metrics", None),
    "sample": ("scoresde.sampling", "sample"),
    "Evaluation": ("scoresde.evaluation", "Evaluation"),
    "evaluate": ("scoresde.evaluation", "evaluate"),
    "expected_mode_fractions": ("scoresde.evaluation", "expected_mode_fractions"),
    "mode_limit": ("scoresde.evaluation", "mode_limit"),
    "_score_error": ("scoresde.evaluation", "score_error"),
    "_model_space_oracle": ("scoresde.evaluation", "model_space_oracle"),
    "SW_PROJECTIONS": ("scoresde.evaluation", "SW_PROJECTIONS"),
    "FLOOR_PAIRS": ("scoresde.evaluation", "FLOOR_PAIRS"),
    "FLOOR_K": ("scoresde.evaluation", "FLOOR_K"),
    "MODE_FWER": ("scoresde.evaluation", "MODE_FWER"),
    "SCORE_ERROR_POINTS": ("scoresde.evaluation", "SCORE_ERROR_POINTS"),
    "SCORE_ERROR_T_MIN": ("scoresde.evaluation", "SCORE_ERROR_T_MIN"),
    "plot_image_grid": ("scoresde.plotting", "plot_image_grid"),
    "plot_loss": ("scoresde.plotting", "plot_loss"),
    "data_label": ("scoresde.evaluation", "data_label"),
    "training_data": ("scoresde.evaluation", "training_data"),
    "evaluate_model_samples": ("scoresde.evaluation", "evaluate_model_samples"),
}


def __getattr__(name: str) -> Any:
    if name == "SDES":  # CLI name -> SDE class, as before
        return {key: _sde_class(key) for key in SDE_CHOICES}
    if name == "DTYPES":
        import torch

        return {key: getattr(torch, key) for key in DTYPE_NAMES}
    if name in _LAZY:
        module, attr = _LAZY[name]
        mod = importlib.import_module(module)
        return mod if attr is None else getattr(mod, attr)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _lib(name: str) -> Any:
    """``scoresde.cli.<name>`` at call time, so that a replacement (e.g. a test's monkeypatch) is used."""
    return getattr(sys.modules[__name__], name)


def _sde_class(key: str) -> Callable[[], LinearSDE]:
    from .sde import SDE_REGISTRY

    return SDE_REGISTRY.lookup(SDE_CHOICES[key][0])


def _sde_key(class_name: str) -> str:
    """The --sde name of an SDE class name ('' if none)."""
    return next((k for k, (c, _) in SDE_CHOICES.items() if c == class_name), "")


class CLIError(Exception):
    """A user-facing error: printed as ``scoresde: error: <message>``, exit code 2."""


# ---------------------------------------------------------------------------------------
# argument types (their messages appear as "argument --opt: <message>")
# ---------------------------------------------------------------------------------------
def _int_at_least(minimum: int, why: str = "", maximum: int | None = None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}{why}, got {value}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"must be an integer in [{minimum}, {maximum}], got {value}")
        return value

    parse.__name__ = "int"
    return parse


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def _nonnegative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1), got {text}")
    return value


def _unit_interval(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1], got {text}")
    return value


_DEVICE = re.compile(r"(cpu|cuda|mps)(:\d+)?")


def _device(text: str) -> str:
    """A device string ``cpu``, ``cuda``, ``cuda:N`` or ``mps``, checked for its form only.

    Whether the device exists is checked by :func:`_torch_device` when a command runs (it needs torch).
    """
    if not _DEVICE.fullmatch(text):
        kind = text.split(":", 1)[0]
        if kind and kind.isidentifier() and kind not in ("cpu", "cuda", "mps"):
            raise argparse.ArgumentTypeError(f"unsupported device type {kind!r}; use cpu or cuda")
        raise argparse.ArgumentTypeError(f"invalid device {text!r}; use cpu, cuda or cuda:N")
    return text


def _torch_device(text: str, sub: argparse.ArgumentParser) -> torch.device:
    """The ``torch.device`` of ``--device``, or a usage error if this machine does not have it."""
    import torch

    device = torch.device(text)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            sub.error(
                f"argument --device: {text!r} requested but CUDA is not available on this machine "
                "(torch.cuda.is_available() is False); use --device cpu"
            )
        index: int | None = device.index  # None for a bare "cuda" (torch's stubs say int)
        if index is not None and index >= torch.cuda.device_count():
            sub.error(
                f"argument --device: {text!r} requested but only {torch.cuda.device_count()} CUDA device(s) are visible"
            )
    elif device.type == "mps" and not torch.backends.mps.is_available():
        sub.error("argument --device: 'mps' requested but the MPS backend is not available; use --device cpu")
    return device


# ---------------------------------------------------------------------------------------
# the samplers of --sampler: one table, read by the parser, the option checks and build_sampler
# ---------------------------------------------------------------------------------------
#: options that every sampler could take (argparse dests = constructor keywords); ``grid`` is
#: given as a TimeGrid built from --grid, --grid-rho and --grid-power
SAMPLER_OPTIONS = (
    "steps",
    "predictor",
    "corrector",
    "snr",
    "corrector_steps",
    "method",
    "rtol",
    "atol",
    "eta",
    "order",
    "variant",
    "lower_order_final",
    "variance",
    "t_clip",
    "grid",
    "eps",
    "denoise",
    "form",
    "to_zero",
)
_END = ("eps", "denoise")


@dataclass(frozen=True)
class SamplerSpec:
    """One ``--sampler`` choice: the class it builds and the options that apply to it.

    ``cls`` is ``"module:Class"`` in :mod:`scoresde`; ``options`` the argparse destinations passed
    as keyword arguments when given; ``fixed`` keywords set by the choice itself; ``defaults`` CLI
    defaults that differ from the class's; ``choices`` the values of a shared option (``--method``)
    that this sampler accepts; ``ignored`` options accepted with a warning (kept for old commands).
    """

    cls: str
    summary: str
    options: tuple[str, ...]
    fixed: Mapping[str, Any] = field(default_factory=dict)
    defaults: Mapping[str, Any] = field(default_factory=dict)
    choices: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    ignored: Mapping[str, str] = field(default_factory=dict)

    @property
    def class_name(self) -> str:
        return self.cls.rsplit(":", 1)[1]

    def load(self) -> type:
        module, name = self.cls.split(":")
        cls: type = getattr(importlib.import_module(f"scoresde.{module}"), name)
        return cls


SAMPLERS: dict[str, SamplerSpec] = {
    "pc": SamplerSpec(
        "samplers:PredictorCorrector",
        "reverse-SDE predictor + Langevin corrector; default 1000 steps, NFE = steps x (1 + corrector steps)",
        ("steps", "predictor", "corrector", "snr", "corrector_steps", *_END),
    ),
    "em": SamplerSpec(
        "samplers:EulerMaruyama", "Euler-Maruyama on the reverse SDE; default 1000 steps", ("steps", *_END)
    ),
    "ode": SamplerSpec(
        "samplers:ProbabilityFlowODE",
        "probability-flow ODE with a scipy or torchdiffeq solver with error control (--method, default RK45; "
        "--rtol/--atol)",
        ("method", "rtol", "atol", *_END),
        defaults={"method": "RK45"},
        choices={"method": SCIPY_METHOD_NAMES + TORCHDIFFEQ_METHOD_NAMES},
        ignored={"steps": "adaptive step size; use --rtol/--atol, or --sampler ode-euler / ode-heun for fixed steps"},
    ),
    "ode-euler": SamplerSpec(
        "samplers:ProbabilityFlowODE",
        "probability-flow ODE, fixed-step Euler in t; default 100 steps",
        ("steps", *_END),
        fixed={"method": "euler"},
    ),
    "ode-heun": SamplerSpec(
        "samplers:ProbabilityFlowODE",
        "probability-flow ODE, fixed-step Heun in t (2 NFE per step); default 100 steps",
        ("steps", *_END),
        fixed={"method": "heun"},
    ),
    "torchsde": SamplerSpec(
        "samplers:TorchSDE",
        "reverse SDE through torchsde.sdeint (--method, default srk: SRA1, 2 NFE per step); default 200 steps",
        ("method", "steps", *_END),
        choices={"method": TORCHSDE_METHOD_NAMES},
    ),
    "adaptive": SamplerSpec(
        "adaptive:AdaptiveSDE",
        "reverse SDE, adaptive Euler-Maruyama / improved-Euler pair (--rtol/--atol, default 1e-2); "
        "saves T and eps only",
        ("rtol", "atol", *_END),
    ),
    "euler": SamplerSpec(
        "solvers:Euler",
        "probability-flow ODE, Euler in t or in the noise level (--form) on --grid; default 100 steps",
        ("steps", "grid", "form", "to_zero", *_END),
    ),
    "heun": SamplerSpec(
        "solvers:Heun",
        "probability-flow ODE, Heun in t or in the noise level (--form) on --grid (2 NFE per step); default 100 steps",
        ("steps", "grid", "form", "to_zero", *_END),
    ),
    "ddim": SamplerSpec(
        "solvers:DDIM",
        "DDIM (first-order exponential integrator; --eta > 0 adds noise) on --grid; default 50 steps",
        ("steps", "grid", "eta", "to_zero", *_END),
    ),
    "dpmsolver++": SamplerSpec(
        "solvers:DPMSolverPP",
        "DPM-Solver++ multistep, --order 2 (default) or 3, on --grid (default logsnr); default 20 steps",
        ("order", "steps", "grid", "lower_order_final", "to_zero", *_END),
    ),
    "dpmsolver++-singlestep": SamplerSpec(
        "solvers:DPMSolverPPSinglestep",
        "DPM-Solver++ single-step, --order 2 (2S, default) or 3 (3S), --order NFE per step, on --grid "
        "(default logsnr); default 10 steps",
        ("order", "steps", "grid", "to_zero", *_END),
    ),
    "dpm-adaptive": SamplerSpec(
        "solvers:AdaptiveDPMSolver",
        "adaptive DPM-Solver with error control, --order 3 (DPM-Solver-23, default) or 2 (-12), --rtol/--atol "
        "(default 0.05/0.0078)",
        ("order", "rtol", "atol", "to_zero", *_END),
        ignored={"steps": "adaptive step size; use --rtol/--atol"},
    ),
    "unipc": SamplerSpec(
        "solvers:UniPC",
        "UniPC predictor-corrector, --order 1-3 (default 3), --variant bh2|bh1, on --grid (default logsnr); "
        "default 20 steps",
        ("order", "variant", "steps", "grid", "lower_order_final", "to_zero", *_END),
    ),
    "edm-sde": SamplerSpec(
        "samplers:EDMStochastic",
        "EDM's stochastic sampler (churn S_churn=10, Heun in sigma/s; 2 NFE per step) on --grid; default 10 steps",
        ("steps", "grid", *_END),
    ),
    "dpmsolver++-sde": SamplerSpec(
        "samplers:DPMSolverPPSDE",
        "SDE-DPM-Solver++, --order 2 (default, 2M) or 1, --eta noise scale (default 1), on --grid; default 20 steps",
        ("order", "steps", "grid", "eta", "lower_order_final", *_END),
    ),
    "er-sde": SamplerSpec(
        "samplers:ERSDE",
        "ER-SDE-Solver, --order 1-3 (default 3), on --grid (default logsnr); default 20 steps",
        ("order", "steps", "grid", *_END),
    ),
    "ddpm": SamplerSpec(
        "ddpm:DDPMAncestral",
        "Ho et al.'s ancestral sampler on the DDPM chain (--sde ddpm only; NFE = the chain's 1000 steps)",
        ("variance",),
    ),
    "flow": SamplerSpec(
        "flow:FlowODE",
        "flow ODE dx/dt = v(x, t), --method heun (default, 2 NFE per step) or euler, on --grid; "
        "default 50 steps; the one for --sde rf",
        ("steps", "method", "grid", "t_clip", "eps"),
        defaults={"steps": 50, "method": "heun"},
        choices={"method": FLOW_METHOD_NAMES},
    ),
}
#: the grid parameters: option -> (grid it applies to, TimeGrid keyword)
GRID_PARAMS = {"grid_rho": ("karras", "rho"), "grid_power": ("quadratic", "power")}
_IMPORT_PATH = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")


def _sampler_name(text: str) -> str:
    if text in SAMPLERS or _IMPORT_PATH.fullmatch(text):
        return text
    raise argparse.ArgumentTypeError(
        f"invalid choice: {text!r} (choose from {', '.join(SAMPLERS)}, or give a Sampler class as module:Class)"
    )


def _option_flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def _given(args: argparse.Namespace, dest: str) -> bool:
    value = getattr(args, dest, None)
    return bool(value) if dest in ("denoise", "to_zero") else value is not None


def _check_sampler_options(args: argparse.Namespace, sub: argparse.ArgumentParser) -> None:
    """Usage errors for sampler options that do not apply to ``--sampler`` (no torch needed)."""
    name = args.sampler
    spec = SAMPLERS.get(name)
    if spec is None:  # a class by import path: its constructor decides (checked when it is built)
        _check_grid_options(args, sub)
        return
    for dest in SAMPLER_OPTIONS:
        if not _given(args, dest) or dest in spec.options:
            continue
        if dest in spec.ignored:
            print(
                f"{PROG}: warning: {_option_flag(dest)} is ignored by --sampler {name} ({spec.ignored[dest]})",
                file=sys.stderr,
            )
            continue
        takes = ", ".join(_option_flag(o) for o in spec.options) or "none"
        users = [k for k, s in SAMPLERS.items() if dest in s.options]
        sub.error(
            f"argument {_option_flag(dest)}: does not apply to --sampler {name} ({spec.class_name}; it takes: "
            f"{takes}); {_option_flag(dest)} is for --sampler {', '.join(users)}"
        )
    for dest, allowed in spec.choices.items():
        value = getattr(args, dest, None)
        if value is not None and value not in allowed:
            sub.error(
                f"argument {_option_flag(dest)}: invalid choice {value!r} for --sampler {name} "
                f"(choose from {', '.join(allowed)})"
            )
    _check_grid_options(args, sub)


def _check_grid_options(args: argparse.Namespace, sub: argparse.ArgumentParser) -> None:
    for dest, (grid, _) in GRID_PARAMS.items():
        if getattr(args, dest, None) is not None and args.grid != grid:
            sub.error(
                f"argument {_option_flag(dest)}: only applies to --grid {grid}"
                + (f" (got --grid {args.grid})" if args.grid else " (give --grid too)")
            )


def _time_grid(args: argparse.Namespace) -> Any:
    from .time_grids import GRIDS

    params = {kw: getattr(args, dest) for dest, (grid, kw) in GRID_PARAMS.items() if getattr(args, dest) is not None}
    return GRIDS[args.grid](**params)


def _sampler_class(name: str) -> type:
    """The Sampler class of ``--sampler`` (a registry name or ``module:Class``)."""
    from .samplers import Sampler

    spec = SAMPLERS.get(name)
    if spec is not None:
        return spec.load()
    module, attr = name.split(":")
    try:
        cls = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as err:
        raise CLIError(f"argument --sampler: cannot import {name!r} ({type(err).__name__}: {err})") from None
    if not (isinstance(cls, type) and issubclass(cls, Sampler)):
        raise CLIError(f"argument --sampler: {name!r} is not a scoresde.Sampler subclass (got {cls!r})")
    return cls


def build_sampler(args: argparse.Namespace) -> Sampler:
    """The sampler selected by ``--sampler`` with only the options given (library defaults otherwise).

    A name of :data:`SAMPLERS` builds its class with the table's fixed and default keywords and
    the options that apply to it; ``module:Class`` builds that Sampler subclass with every option
    given, each of which must be a parameter of its constructor.
    """
    name = args.sampler
    cls = _sampler_class(name)
    spec = SAMPLERS.get(name)
    options = spec.options if spec is not None else SAMPLER_OPTIONS
    kwargs: dict[str, Any] = {} if spec is None else {**spec.fixed, **spec.defaults}
    for dest in options:
        if _given(args, dest):
            kwargs[dest] = _time_grid(args) if dest == "grid" else getattr(args, dest)
    if spec is None:
        params = inspect.signature(cls).parameters
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        for dest in kwargs:
            if dest not in params and not takes_any:
                raise CLIError(
                    f"argument {_option_flag(dest)}: {cls.__name__} takes no parameter {dest!r} "
                    f"(its parameters: {', '.join(params) or 'none'})"
                )
    sampler: Sampler = cls(**kwargs)
    return sampler


# ---------------------------------------------------------------------------------------
# parser
# ---------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """The ``scoresde`` parser, with one sub-parser per command (``train``, ``sample``)."""
    from ._version import __version__

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Score-based diffusion models as SDEs: train score, noise or velocity networks on toy "
        "sets, digits or your own arrays, and sample trained models or exact Gaussian-mixture targets "
        "through reverse-time SDEs, probability-flow ODEs and fast ODE solvers.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_train_parser(commands)
    _add_sample_parser(commands)
    return parser


def _sde_help_lines() -> str:
    return "\n".join(f"  {k:<12} {cls}: {text}" for k, (cls, text) in SDE_CHOICES.items())


def _sampler_help_lines() -> str:
    import textwrap

    lines = []
    for k, spec in SAMPLERS.items():
        text = f"{spec.class_name}: {spec.summary}; options: {', '.join(_option_flag(o) for o in spec.options)}"
        lines += textwrap.wrap(text, 100, initial_indent=f"  {k:<12} ", subsequent_indent=" " * 17)
    return "\n".join(lines)


def _add_sample_parser(commands: Any) -> None:
    p = commands.add_parser(
        "sample",
        help="sample a 2-D target with its exact score, or a trained model (--checkpoint); "
        "write samples.nc and samples.png",
        description=(
            "Sample through the reverse-time SDE, the probability-flow ODE or the flow ODE with any\n"
            "sampler of the library, driven either by the exact score of a 2-D Gaussian-mixture\n"
            "target (--target) or by a trained model (--checkpoint, EMA weights; the SDE and the\n"
            "sample shape come from the checkpoint). Writes DIR/samples.nc (the trajectory as an\n"
            "xarray Dataset, metrics as attributes; with --checkpoint also x_data, the final state\n"
            "in data space) and DIR/samples.png, and reports NFE, wall time and, for 2-D targets and\n"
            "named toy sets, the sliced-Wasserstein distance to exact samples (or to the training\n"
            "data) next to its statistical floor; for targets also a mode-weight check\n"
            "(--no-evaluate skips the metrics)."
        ),
        epilog="SDEs (--sde):\n"
        + _sde_help_lines()
        + "\n\nsamplers (--sampler; an option that does not apply to the chosen sampler is an error):\n"
        + _sampler_help_lines()
        + "\n  module:Class a scoresde.Sampler subclass by import path, built with the options given"
        + "\n\ntime grids (--grid; for euler, heun, ddim, dpmsolver++, unipc, flow):\n"
        + "  uniform      uniform in t (default, except logsnr for dpmsolver++ and unipc)\n"
        + "  logsnr       uniform in the half log-SNR lambda(t) = log(s(t)/sigma(t))\n"
        + "  quadratic    uniform in t^(1/p), p = --grid-power (default 2)\n"
        + "  karras       EDM's schedule in sigma(t)/s(t), exponent rho = --grid-rho (default 7)\n"
        + "\nexamples:\n  scoresde sample --sde ve --sampler ode --n-samples 2000 --out out/ve_ode"
        + "\n  scoresde sample --sampler dpmsolver++ --order 3 --steps 15 --grid logsnr --out out/dpm"
        + "\n  scoresde sample --checkpoint runs/moons/last.pt --sampler em --out out/moons"
        + "\n  scoresde sample --checkpoint runs/digits-cond/last.pt --class 3 --guidance 2.0 --out out/three"
        + "\n  scoresde sample --checkpoint runs/digits/last.pt --inpaint half --out out/inpaint"
        + "\n  scoresde sample --checkpoint runs/digits/last.pt --super-resolution 4 --out out/sr"
        + "\n  torchrun --nproc-per-node 2 -m scoresde sample --sampler ddim --steps 10 --n-samples 1000000 "
        + "--chunk-size 10000 --out out/big.zarr",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    g = p.add_argument_group("problem")
    g.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        metavar="PATH",
        help="sample a model trained by `scoresde train` (e.g. runs/moons/last.pt) instead of a target",
    )
    g.add_argument(
        "--target",
        choices=sorted(TARGET_NAMES),
        default=None,
        help="2-D target distribution, sampled with its exact score (default: eight_gaussians; not with --checkpoint)",
    )
    g.add_argument(
        "--sde",
        choices=list(SDE_CHOICES),
        default=None,
        help="forward SDE with its default parameters: VP, sub-VP, VE, the DDPM chain or rectified flow, "
        "see below (default: vp; with --checkpoint the checkpoint's, and a different --sde is an error)",
    )
    g = p.add_argument_group("conditional sampling (--checkpoint only)")
    g.add_argument(
        "--class",
        dest="class_label",
        type=_int_at_least(0),
        default=None,
        metavar="C",
        help="sample class C of a class-conditional checkpoint (`train --conditional`) by classifier-free guidance",
    )
    g.add_argument(
        "--guidance",
        type=_nonnegative_float,
        default=None,
        metavar="W",
        help="--class: guidance weight w >= 0 of (1 + w) s(x, t, c) - w s(x, t, null); 0 is the conditional "
        "score itself (default: 0)",
    )
    g.add_argument(
        "--inpaint",
        choices=INPAINT_MASKS,
        default=None,
        help="image checkpoints: observe the top half of a training image (--truth) and sample the rest",
    )
    g.add_argument(
        "--super-resolution",
        type=_int_at_least(1),
        default=None,
        metavar="S",
        help="image checkpoints: observe the S x S average-pooled training image (--truth), y = A x with A the "
        "average over blocks of (H/S) x (W/S) pixels, and sample images of full resolution",
    )
    g.add_argument(
        "--posterior-method",
        default=None,
        help="--inpaint: replacement (default), pigdm or dps; --super-resolution: pigdm (default) or dps (the "
        "sampler's own --method is that of ode, torchsde and flow)",
    )
    g.add_argument(
        "--observation-noise",
        type=_nonnegative_float,
        default=None,
        metavar="SIGMA",
        help="--inpaint, --super-resolution: the noise level sigma_y >= 0 (model space) that the likelihood "
        "N(y; A x, sigma_y^2 I) assumes; dps needs sigma_y > 0 (default: 0, an exact observation; 0.05 for dps)",
    )
    g.add_argument(
        "--clip-denoised",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="pigdm, dps: clip the model's denoised estimate x0_hat(x, t) to the data range [-1, 1] of "
        "min-max scaled images before the guidance uses it (a learnt x0_hat = (x - sigma eps_hat)/s(t) "
        "amplifies the network's error by 1/s(t) near t = T, which makes the guidance diverge); the "
        "samples' score is then that of the clipped denoiser (default: on)",
    )
    g.add_argument(
        "--truth",
        type=_int_at_least(0),
        default=0,
        metavar="I",
        help="--inpaint, --super-resolution: index of the training image observed (default: %(default)s)",
    )
    g.add_argument(
        "--n-samples",
        type=_int_at_least(2, " (the metrics compare sample sets)"),
        default=None,
        metavar="N",
        help="number of samples (default: 10000; 64 for image checkpoints)",
    )
    g.add_argument(
        "--seed",
        type=_int_at_least(0),
        default=0,
        help="seed of the prior draw and all sampler noise (default: %(default)s)",
    )

    g = p.add_argument_group("sampler (each option applies to the samplers listed below)")
    g.add_argument(
        "--sampler",
        type=_sampler_name,
        default=None,
        metavar="NAME",
        help=f"reverse-time integrator: {', '.join(SAMPLERS)} or module:Class, see below "
        f"(default: {SAMPLER_FALLBACK}, 1000 steps; ddpm for --sde ddpm, flow for --sde rf)",
    )
    g.add_argument(
        "--steps",
        type=_int_at_least(1),
        default=None,
        metavar="N",
        help="number of sampler steps (default: the sampler's own, see below)",
    )
    g.add_argument(
        "--predictor", choices=PREDICTOR_NAMES, default=None, help="pc: predictor (default: reverse_diffusion)"
    )
    g.add_argument("--corrector", choices=CORRECTOR_NAMES, default=None, help="pc: corrector (default: langevin)")
    g.add_argument(
        "--snr", type=_positive_float, default=None, help="pc: corrector signal-to-noise ratio (default: 0.16)"
    )
    g.add_argument(
        "--corrector-steps",
        type=_int_at_least(0),
        default=None,
        metavar="M",
        help="pc: corrector steps per time step (default: 1)",
    )
    g.add_argument(
        "--method",
        default=None,
        help=f"ode: scipy method, {'/'.join(SCIPY_METHOD_NAMES)} (default: RK45), or torchdiffeq's "
        f"{'/'.join(TORCHDIFFEQ_METHOD_NAMES)} (scoresde[torchdiffeq]); torchsde: "
        f"{'/'.join(TORCHSDE_METHOD_NAMES)} (default: srk); flow: euler/heun (default: heun)",
    )
    g.add_argument(
        "--rtol",
        type=_positive_float,
        default=None,
        help="ode, adaptive, dpm-adaptive: relative tolerance (default: 1e-5 for ode, 1e-2 for adaptive, 0.05 for "
        "dpm-adaptive)",
    )
    g.add_argument(
        "--atol",
        type=_positive_float,
        default=None,
        help="ode, adaptive, dpm-adaptive: absolute tolerance (default: 1e-5 for ode, 1e-2 for adaptive, 0.0078 for "
        "dpm-adaptive)",
    )
    g.add_argument(
        "--eta", type=_unit_interval, default=None, help="ddim: stochasticity in [0, 1], 0 deterministic (default: 0)"
    )
    g.add_argument(
        "--order",
        type=_int_at_least(1, maximum=3),
        default=None,
        help="dpmsolver++, dpmsolver++-singlestep, unipc: order 1-3; dpm-adaptive: 2 or 3 (default: 2 for dpmsolver++ "
        "and dpmsolver++-singlestep, 3 for unipc and dpm-adaptive)",
    )
    g.add_argument("--variant", choices=UNIPC_VARIANTS, default=None, help="unipc: B(h) variant (default: bh2)")
    g.add_argument(
        "--lower-order-final",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="dpmsolver++, unipc: lower the order over the last steps (default: on)",
    )
    g.add_argument("--variance", choices=DDPM_VARIANCES, default=None, help="ddpm: reverse variance (default: beta)")
    g.add_argument(
        "--t-clip",
        type=_positive_float,
        default=None,
        help="flow: a score-based velocity is evaluated at min(t, T - t_clip) where s(T) = 0 (default: 1e-4)",
    )
    g.add_argument(
        "--grid",
        choices=GRID_NAMES,
        default=None,
        help="euler, heun, ddim, dpmsolver++, dpmsolver++-singlestep, unipc, flow: time grid, see below",
    )
    g.add_argument("--grid-rho", type=_positive_float, default=None, help="--grid karras: exponent rho (default: 7)")
    g.add_argument("--grid-power", type=_positive_float, default=None, help="--grid quadratic: power p (default: 2)")
    g.add_argument(
        "--eps",
        type=_positive_float,
        default=None,
        help="final time of the reverse process (default: 1e-3; not ddpm, which ends at t = 0)",
    )
    g.add_argument(
        "--denoise",
        action="store_true",
        help="finish with the Tweedie denoising step (one more NFE) and compare with the "
        "target itself instead of its marginal at t = eps (not ddpm, flow)",
    )
    g.add_argument(
        "--form",
        choices=FORM_NAMES,
        default=None,
        help="euler, heun: step in t, or in the noise level sigma/s (edm); auto: edm on VE, t otherwise "
        "(default: auto)",
    )
    g.add_argument(
        "--to-zero",
        action="store_true",
        help="euler, heun, ddim, dpmsolver++, unipc: end at sigma = 0 with the data prediction within --steps "
        "(no extra NFE; heun: 2 steps - 1 NFE) and compare with the target itself",
    )

    g = p.add_argument_group("run and output")
    g.add_argument("--device", type=_device, default="cpu", help="torch device: cpu, cuda, cuda:N (default: cpu)")
    g.add_argument(
        "--dtype", choices=DTYPE_NAMES, default="float32", help="precision of the integration (default: %(default)s)"
    )
    g.add_argument(
        "--save-at",
        type=_int_at_least(2),
        default=None,
        metavar="K",
        help="number of saved states, evenly spaced in time from T to eps (default: every step of a "
        f"fixed-step sampler, else {MAX_DEFAULT_SAVE_AT}; at most {MAX_DEFAULT_SAVE_AT} and at most "
        f"{DEFAULT_SAVE_VALUES:,} numbers in all, at least {MIN_DEFAULT_SAVE_AT}; {IMAGE_SAVE_AT} for image "
        "checkpoints)",
    )
    g.add_argument(
        "--evaluate",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="compute the metrics (SW2 and its floor, mode weights) and draw exact samples in the figure (default: on)",
    )
    g.add_argument(
        "--floor-cache",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="keep the SW2 floors of targets (a property of the target, n and seed) in the user cache "
        "directory, $SCORESDE_CACHE_DIR or ~/.cache/scoresde/floors; SCORESDE_NO_CACHE=1 also switches it "
        "off (default: on)",
    )
    g.add_argument(
        "--out",
        type=Path,
        default=Path("out"),
        metavar="DIR",
        help="output directory, created if needed; samples.nc and samples.png in it are replaced (default: out); "
        "a path ending in .zarr is a zarr store instead, into which the chunks of the run are streamed "
        "(--chunk-size; no figure, no metrics), and a store of an interrupted run of the same command is completed",
    )
    g.add_argument(
        "--chunk-size",
        type=_int_at_least(1),
        default=None,
        metavar="K",
        help="sample in chunks of K samples, chunk i seeded by (--seed, i), so the samples do not depend on "
        "the number of processes; under torchrun the ranks share the chunks round-robin (default: one batch; "
        f"{DEFAULT_CHUNK_SIZE} with --out *.zarr)",
    )
    g.add_argument(
        "--threads",
        type=_int_at_least(0),
        default=1,
        metavar="N",
        help="torch CPU threads; 0 keeps torch's default (default: 1: the 2-D problems are too "
        "small for intra-op parallelism, which is much slower when cores are shared)",
    )
    g.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_sample, subparser=p)


def _add_train_parser(commands: Any) -> None:
    d = SimpleNamespace(**TRAIN_DEFAULTS)
    p = commands.add_parser(
        "train",
        help="train a score, noise or velocity network on a toy set, the digits or an array file; write checkpoints",
        description=(
            "Train a network with one of three objectives (--objective): denoising score matching\n"
            "(dsm: E lambda(t) |s_theta(x_t, t) - grad log p(x_t | x_0)|^2, t ~ U[eps, T]), Ho et\n"
            "al.'s noise-prediction loss on the DDPM chain (ddpm, t = i/N; --sde ddpm) or flow\n"
            "matching (flow_matching: regress the velocity z - x_0 of x_t = (1 - t) x_0 + t z; --sde\n"
            "rf). AdamW, warm-up, gradient clipping, EMA. Writes DIR/last.pt and DIR/step_XXXXXXX.pt\n"
            "(checkpoints: `scoresde sample --checkpoint DIR/last.pt` samples the EMA model),\n"
            "DIR/history.nc (the loss history) and DIR/loss.png. If DIR/last.pt exists the run\n"
            "resumes from it (--no-resume starts over). Reports steps, wall time, steps/s, the final\n"
            "loss and, for the Gaussian-mixture toy sets\n"
            f"({', '.join(ORACLE_DATASETS)}), the weighted relative score error\n"
            "E sigma^2 |s_theta - s|^2 / E sigma^2 |s|^2 against the exact score."
        ),
        epilog="data:\n  " + ", ".join(DATASETS) + "\n  or a path to a .npy file (n, *features) or a netCDF "
        "file (--var NAME; first dimension: samples);\n  vectors are standardised, images (n, C, H, W) "
        "mapped to [-1, 1]\n\nexamples:\n  scoresde train --data moons --sde vp --steps 5000 --out "
        "runs/moons\n  scoresde train --data digits --steps 3000 --batch-size 128 --out runs/digits\n"
        "  scoresde train --data digits --conditional --label-dropout 0.1 --out runs/digits-cond\n"
        "  torchrun --standalone --nproc-per-node 2 -m scoresde train --data moons --out runs/moons-ddp\n\n"
        "under torchrun every rank takes its slice of each global batch (--batch-size) and the gradients\n"
        "are averaged (DistributedDataParallel: gloo on CPU, nccl on CUDA, each rank on its LOCAL_RANK GPU);\n"
        "rank 0 writes the checkpoints and prints",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    g = p.add_argument_group("data and model")
    g.add_argument(
        "--data",
        required=True,
        metavar="NAME|PATH",
        help=f"a named data set ({', '.join(DATASETS)}) or a .npy / netCDF file",
    )
    g.add_argument(
        "--var",
        default=None,
        metavar="NAME",
        help="netCDF only: the data variable (default: the file's only data variable)",
    )
    g.add_argument(
        "--n-data",
        type=_int_at_least(2),
        default=None,
        metavar="N",
        help=f"number of points drawn from a generated toy set (default: {DEFAULT_N_DATA})",
    )
    g.add_argument(
        "--sde",
        choices=list(SDE_CHOICES),
        default="vp",
        help="forward SDE: "
        + "; ".join(f"{k} {cls}" for k, (cls, _) in SDE_CHOICES.items())
        + " (see `scoresde sample --help`; default: %(default)s)",
    )
    g.add_argument(
        "--net", choices=NETS, default=None, help="score network (default: mlp for vector data, unet for images)"
    )
    g.add_argument(
        "--hidden",
        type=_int_at_least(1),
        default=None,
        metavar="N",
        help="network width: MLP hidden units, U-Net base channels, DiT token width "
        f"(default: {', '.join(f'{k} {v}' for k, v in DEFAULT_HIDDEN.items())})",
    )
    g.add_argument(
        "--conditional",
        action="store_true",
        help="train a class-conditional network on the data set's labels (digits 0-9, the moons, the mixture "
        "components), with a null class for classifier-free guidance (see --label-dropout)",
    )
    g.add_argument(
        "--parameterization",
        choices=("noise", "score", "velocity", "eps"),
        default=None,
        help="what the network predicts: the noise, sigma(t) x the score, or the flow velocity "
        "(default: velocity for --objective flow_matching, else noise; eps is the former name of noise)",
    )

    g = p.add_argument_group("optimisation (TrainConfig)")
    g.add_argument(
        "--steps",
        type=_int_at_least(1),
        default=d.steps,
        metavar="N",
        help="total number of optimiser steps, including those of a resumed run (default: %(default)s)",
    )
    g.add_argument(
        "--batch-size", type=_int_at_least(1), default=None, metavar="N", help=f"batch size (default: {d.batch_size})"
    )
    g.add_argument("--lr", type=_positive_float, default=None, help=f"peak learning rate (default: {d.lr:g})")
    g.add_argument(
        "--weight-decay",
        type=_nonnegative_float,
        default=None,
        help=f"AdamW weight decay (default: {d.weight_decay:g})",
    )
    g.add_argument(
        "--warmup",
        type=_int_at_least(0),
        default=None,
        metavar="N",
        help=f"linear learning-rate warm-up steps (default: {d.warmup})",
    )
    g.add_argument(
        "--grad-clip",
        type=_nonnegative_float,
        default=None,
        help=f"gradient-norm bound, 0 disables (default: {d.grad_clip:g})",
    )
    g.add_argument(
        "--ema-decay",
        type=_fraction,
        default=None,
        help=f"EMA decay of the weights used for sampling, in [0, 1) (default: {d.ema_decay:g})",
    )
    g.add_argument("--eps", type=_positive_float, default=None, help=f"smallest training time (default: {d.eps:g})")
    g.add_argument(
        "--objective",
        choices=OBJECTIVE_NAMES,
        default=None,
        help="loss: dsm (denoising score matching, t ~ U[eps, T], weighted by --weighting), ddpm (Ho et "
        "al.'s eps-loss with t on the DDPM grid; --sde ddpm), flow_matching (regression of the velocity "
        "z - x_0; --sde rf) (default: ddpm for --sde ddpm, flow_matching for --sde rf, else dsm)",
    )
    g.add_argument(
        "--weighting",
        choices=WEIGHTING_NAMES,
        default=None,
        help="dsm, ddpm: loss weighting lambda(t), sigma(t)^2 or the likelihood weighting g(t)^2 "
        f"(default: {d.weighting})",
    )
    g.add_argument(
        "--reduce",
        choices=("mean", "sum"),
        default=None,
        help=f"reduction of the loss over features (default: {d.reduce})",
    )
    g.add_argument(
        "--seed",
        type=_int_at_least(0),
        default=None,
        help=f"seed of the network initialisation, the toy data and the batches (default: {d.seed})",
    )
    g.add_argument(
        "--label-dropout",
        type=_unit_interval,
        default=None,
        metavar="P",
        help="--conditional: probability in [0, 1] of training on the null class instead of the label, so that "
        f"the network also learns the unconditional score (default: {DEFAULT_LABEL_DROPOUT})",
    )
    g.add_argument(
        "--checkpoint-every",
        type=_int_at_least(0),
        default=None,
        metavar="N",
        help=f"write a checkpoint every N steps (and at the end); 0: only at the end (default: {d.checkpoint_every})",
    )
    g.add_argument(
        "--log-every",
        type=_int_at_least(1),
        default=None,
        metavar="N",
        help=f"record the loss every N steps (default: {d.log_every})",
    )

    g = p.add_argument_group("run and output")
    g.add_argument("--device", type=_device, default="cpu", help="torch device: cpu, cuda, cuda:N (default: cpu)")
    g.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="DIR",
        help="output directory, created if needed (default: runs/<data>)",
    )
    g.add_argument(
        "--no-resume",
        dest="resume",
        action="store_false",
        help="start over even if DIR/last.pt exists (its checkpoints are overwritten)",
    )
    g.add_argument(
        "--threads",
        type=_int_at_least(0),
        default=1,
        metavar="N",
        help="torch CPU threads; 0 keeps torch's default (default: 1: the small networks gain "
        "little from intra-op parallelism, which is much slower when cores are shared)",
    )
    g.add_argument(
        "--dist-timeout",
        type=_positive_float,
        default=300.0,
        metavar="SECONDS",
        help="under torchrun: how long a rank waits for the others before it stops with an error (default: 300)",
    )
    g.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_train, subparser=p)


# ---------------------------------------------------------------------------------------
# sample
# ---------------------------------------------------------------------------------------
#: output-directory locks taken by _prepare_out, released when main() returns
_HELD_LOCKS: list[Any] = []


def _prepare_out(out: Path, sub: argparse.ArgumentParser, names: Sequence[str] = OUTPUT_FILES) -> Path:
    """Create, check and lock the output directory, before any sampling or training; remove stale temp files.

    Fails with a message naming --out (exit 2) if it is not a writable directory or another run holds
    its lock; the lock is held until :func:`main` returns (or the process dies).
    """
    from ._io import OutputDirError, lock_directory, remove_stale_temps

    try:
        if out.exists() and not out.is_dir():
            sub.error(f"argument --out: {str(out)!r} exists and is not a directory")
        lock = lock_directory(out)
    except OutputDirError as err:
        sub.error(f"argument --out: {err}")
    except OSError as err:
        sub.error(f"argument --out: cannot use directory {str(out)!r}: {err.strerror or err}")
    _HELD_LOCKS.append(lock)
    try:
        for name in names:
            if (out / name).is_dir():
                sub.error(f"argument --out: {str(out / name)!r} is a directory; cannot write {name} there")
        remove_stale_temps(out, names)
    except OSError as err:
        sub.error(f"argument --out: cannot use directory {str(out)!r}: {err.strerror or err}")
    return out


def _json_dict(text: Any) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except (TypeError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _params_text(params: dict[str, Any]) -> str:
    return ", ".join(
        f"{k}={v:g}" if isinstance(v, float) else f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}"
        for k, v in params.items()
    )


def _write_netcdf(ds: Any, path: Path) -> None:
    from .plotting import atomic_path

    with atomic_path(path) as tmp:
        ds.to_netcdf(tmp)


@contextlib.contextmanager
def _torch_threads(threads: int) -> Iterator[None]:
    """Run with ``threads`` torch CPU threads (0: unchanged) and restore the caller's number after."""
    import torch

    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)  # main() may run inside a longer-lived process (tests, notebooks)


def _plotting() -> Any:
    """:mod:`scoresde.plotting` with matplotlib's non-interactive backend (the CLI never opens windows)."""
    import matplotlib

    matplotlib.use("Agg")  # the library itself leaves the backend alone
    from . import plotting

    return plotting


def _check_eps(args: argparse.Namespace, sde: Any, sub: argparse.ArgumentParser) -> None:
    if args.eps is not None and args.eps >= sde.T:
        sub.error(f"argument --eps: must be smaller than the SDE's end time T = {sde.T:g}, got {args.eps:g}")


def _default_save_at(sampler: Sampler, sde: Any, values_per_state: int, wanted: int | None = None) -> int:
    """Saved states when --save-at is not given: ``wanted``, else every state the sampler makes (else
    MAX_DEFAULT_SAVE_AT), capped by MAX_DEFAULT_SAVE_AT and by DEFAULT_SAVE_VALUES numbers in the file
    (but not below MIN_DEFAULT_SAVE_AT for that budget), and never more than the sampler can save."""
    cap = sampler.max_saved_states(sde)
    if wanted is None:
        wanted = cap if cap is not None else MAX_DEFAULT_SAVE_AT
        budget = max(MIN_DEFAULT_SAVE_AT, DEFAULT_SAVE_VALUES // max(1, values_per_state))
        wanted = min(wanted, MAX_DEFAULT_SAVE_AT, budget)
    return wanted if cap is None else min(wanted, cap)


@dataclass
class _Timings:
    """Wall time of the parts of a ``sample`` run (seconds), for the report."""

    start: float = field(default_factory=time.perf_counter)
    evaluation: float | None = None
    writing: float = 0.0

    def line(self, sampling: float) -> str:
        ev = "evaluation skipped" if self.evaluation is None else f"{self.evaluation:.2f} s evaluation"
        return (
            f"  wall time  {sampling:.2f} s sampling, {ev}, {self.writing:.2f} s writing and plotting, "
            f"{time.perf_counter() - self.start:.2f} s in all"
        )


def _run_lines(ds: Any, head: str, timings: _Timings) -> list[str]:
    a = ds.attrs
    return [
        head,
        f"  SDE        {a['sde']}({_params_text(_json_dict(a['sde_params']))})",
        f"  sampler    {a['sampler']}({_params_text(_json_dict(a['sampler_params']))})",
        f"  NFE        {a['nfe']}",
        timings.line(float(a["wall_time_s"])),
    ]


def _metric_lines(ev: Evaluation | None, finite: bool, evaluate: bool) -> list[str]:
    from .evaluation import report_lines

    if not finite:
        return ["  metrics    skipped: the final samples contain NaN or inf"]
    if not evaluate:
        return ["  metrics    skipped (--no-evaluate)"]
    return [] if ev is None else report_lines(ev)


def _nonfinite_warning() -> int:
    print(f"{PROG}: warning: the samples contain NaN or inf (try more --steps or --dtype float64)", file=sys.stderr)
    return 1


def _is_zarr(path: Path) -> bool:
    return path.suffix.lower() == ".zarr"


def _under_torchrun() -> bool:
    """Whether this process was started by ``torchrun`` (which sets RANK, WORLD_SIZE and MASTER_ADDR)."""
    import os

    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR"))


@contextlib.contextmanager
def _process_group(device: str) -> Iterator[int]:
    """Under ``torchrun``: a ``torch.distributed`` process group (gloo on CPU, nccl on CUDA) for the run,
    destroyed at the end; yields this process's rank (0 without torchrun)."""
    if not _under_torchrun():
        yield 0
        return
    import torch.distributed as dist

    if dist.is_initialized():  # main() called by a program that made its own group
        yield dist.get_rank()
        return
    dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    try:
        yield dist.get_rank()
    finally:
        dist.destroy_process_group()


def _prepare_store(out: Path, sub: argparse.ArgumentParser) -> None:
    """Check the path of a zarr store (--out *.zarr) and create its parent directory."""
    if out.exists() and not out.is_dir():
        sub.error(f"argument --out: {str(out)!r} exists and is not a zarr store (a directory)")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        sub.error(f"argument --out: cannot create directory {str(out.parent)!r}: {err.strerror or err}")


def _conditioning_mode(args: argparse.Namespace, sub: argparse.ArgumentParser) -> str | None:
    """``"class"``, ``"inpaint"``, ``"super_resolution"`` or ``None``, after the checks of the options together."""
    given = {
        "class": args.class_label is not None,
        "inpaint": args.inpaint is not None,
        "super_resolution": args.super_resolution is not None,
    }
    modes = [m for m, on in given.items() if on]
    if len(modes) > 1:
        sub.error("arguments --class, --inpaint, --super-resolution: choose one of them")
    mode = modes[0] if modes else None
    if mode is not None and args.checkpoint is None:
        sub.error(f"argument --{mode.replace('_', '-')}: applies to a trained model (--checkpoint) only")
    if args.guidance is not None and mode != "class":
        sub.error("argument --guidance: applies with --class only")
    if args.posterior_method is not None:
        if mode not in INVERSE_METHODS:
            sub.error("argument --posterior-method: applies with --inpaint or --super-resolution only")
        if args.posterior_method not in INVERSE_METHODS[mode]:
            sub.error(
                f"argument --posterior-method: {args.posterior_method!r} does not solve "
                f"--{mode.replace('_', '-')}; choose one of {', '.join(INVERSE_METHODS[mode])}"
            )
    if args.truth != 0 and mode not in INVERSE_METHODS:
        sub.error("argument --truth: applies with --inpaint or --super-resolution only")
    if args.observation_noise is not None and mode not in INVERSE_METHODS:
        sub.error("argument --observation-noise: applies with --inpaint or --super-resolution only")
    return mode


def _cmd_sample(args: argparse.Namespace, argv: Sequence[str]) -> int:
    _conditioning_mode(args, args.subparser)
    if args.checkpoint is not None:
        if _is_zarr(args.out):
            args.subparser.error("argument --out: a zarr store is written for targets only, not with --checkpoint")
        if _under_torchrun():
            raise CLIError("sample --checkpoint does not run under torchrun; run it as one process")
        return _cmd_sample_checkpoint(args, argv)
    with _process_group(args.device) as rank:
        return _cmd_sample_target(args, argv, rank)


def _cmd_sample_target(args: argparse.Namespace, argv: Sequence[str], rank: int) -> int:
    timings = _Timings()
    sub: argparse.ArgumentParser = args.subparser
    args.sde = args.sde or "vp"
    if args.sampler is None:
        args.sampler = DEFAULT_SAMPLER.get(args.sde, SAMPLER_FALLBACK)
    _check_sampler_options(args, sub)
    args.target = args.target or "eight_gaussians"
    args.n_samples = args.n_samples or 10_000

    import torch

    from .evaluation import default_cache_dir, evaluate, metric_attrs
    from .mixture import get_target

    device = _torch_device(args.device, sub)
    sde = _sde_class(args.sde)()
    _check_eps(args, sde, sub)
    target = get_target(args.target)
    sampler = build_sampler(args)
    sampler.check(sde)
    if _is_zarr(args.out):
        return _sample_target_to_zarr(args, argv, rank, sde, target, sampler, device, timings)
    if rank != 0:  # under torchrun: every rank samples its chunks, rank 0 writes and reports
        with _torch_threads(args.threads):
            _sample_target(args, sde, target, sampler, device)
        return 0
    out = _prepare_out(args.out, sub)
    plotting = _plotting()

    with _torch_threads(args.threads):
        ds = _sample_target(args, sde, target, sampler, device)
        ds.attrs["target"] = args.target
        ds.attrs["command"] = shlex.join([PROG, *argv])

        final = torch.from_numpy(np.asarray(ds["x"].isel(time=-1).values, dtype=np.float64))
        finite = bool(torch.isfinite(final).all())
        if sampler.denoise:
            reference, reference_desc = target, "the target (denoised samples, t = 0)"
        elif getattr(sampler, "to_zero", False):
            reference, reference_desc = target, "the target (samples at sigma = 0, t = 0)"
        else:
            reference, reference_desc = target.marginal(sde, sampler.eps), f"p_t at t = eps = {sampler.eps:g}"
        ev = None
        if finite and args.evaluate:
            t0 = time.perf_counter()
            cache = default_cache_dir() if args.floor_cache else None
            ev = evaluate(final, reference, args.seed, reference_desc, cache_dir=cache)
            timings.evaluation = time.perf_counter() - t0
    if ev is not None:
        ds.attrs.update(metric_attrs(ev))

    t0 = time.perf_counter()
    nc_path, png_path = out / "samples.nc", out / "samples.png"
    _write_netcdf(ds, nc_path)
    fig = plotting.plot_samples(ds, target=reference, reference=None if ev is None else ev.exact)
    plotting.save_figure(fig, png_path)
    timings.writing = time.perf_counter() - t0

    head = f"{PROG} sample: target {args.target}, n = {args.n_samples}, seed {args.seed}, "
    head += f"{ds.attrs['dtype']} on {ds.attrs['device']}"
    lines = _run_lines(ds, head, timings) + _metric_lines(ev, finite, args.evaluate)
    lines.append(f"  wrote      {nc_path}, {png_path}")
    print("\n".join(lines))
    return 0 if finite else _nonfinite_warning()


def _sample_target(args: argparse.Namespace, sde: Any, target: Any, sampler: Sampler, device: Any, **kw: Any) -> Any:
    import torch

    return _lib("sample")(
        sde,
        target.score(sde),
        sampler,
        shape=(args.n_samples, target.dim),
        seed=args.seed,
        device=device,
        dtype=getattr(torch, args.dtype),
        save_at=args.save_at or _default_save_at(sampler, sde, args.n_samples * target.dim),
        progress=not args.quiet,
        chunk_size=args.chunk_size,
        **kw,
    )


def _sample_target_to_zarr(
    args: argparse.Namespace,
    argv: Sequence[str],
    rank: int,
    sde: Any,
    target: Any,
    sampler: Sampler,
    device: Any,
    timings: _Timings,
) -> int:
    """``sample --out STORE.zarr``: stream the chunks into the store; rank 0 adds the command and reports."""
    from .chunked import update_store_attrs

    _prepare_store(args.out, args.subparser)
    args.chunk_size = args.chunk_size or DEFAULT_CHUNK_SIZE
    with _torch_threads(args.threads):
        ds = _sample_target(args, sde, target, sampler, device, out=str(args.out))
    if rank != 0:
        ds.close()
        return 0
    with ds:
        update_store_attrs(args.out, {"target": args.target, "command": shlex.join([PROG, *argv])})
        finite = bool(np.isfinite(ds["x"].isel(time=-1).values).all())
        head = f"{PROG} sample: target {args.target}, n = {args.n_samples}, seed {args.seed}, "
        head += f"{ds.attrs['dtype']} on {ds.attrs['device']}, {ds.attrs['n_chunks']} chunks of {args.chunk_size}"
        lines = _run_lines(ds, head, timings)
    lines.append("  metrics    skipped for a zarr store (evaluate ds.x.isel(time=-1) of xarray.open_zarr(store))")
    lines.append(f"  wrote      {args.out}")
    print("\n".join(lines))
    return 0 if finite else _nonfinite_warning()


# ---------------------------------------------------------------------------------------
# sample a trained model (--checkpoint)
# ---------------------------------------------------------------------------------------
def _read_checkpoint_problem(args: argparse.Namespace, sub: argparse.ArgumentParser) -> tuple[dict[str, Any], Any]:
    """The checkpoint of ``--checkpoint`` and its SDE, after the checks of the options against it."""
    from .sde import sde_from_config
    from .training import read_checkpoint

    ckpt = read_checkpoint(args.checkpoint)  # CheckpointError (a ValueError): missing, truncated, corrupt -> exit 2
    sde_class = ckpt["config"]["sde"]["class"]
    if args.sampler is None:
        args.sampler = DEFAULT_SAMPLER.get(_sde_key(sde_class), SAMPLER_FALLBACK)
    _check_sampler_options(args, sub)
    if args.target is not None:
        sub.error("argument --target: does not apply with --checkpoint (the model samples its training data)")
    sde = sde_from_config(ckpt["config"]["sde"])
    if args.sde is not None and type(sde).__name__ != SDE_CHOICES[args.sde][0]:
        key = _sde_key(type(sde).__name__) or type(sde).__name__
        sub.error(
            f"argument --sde: the checkpoint was trained with {type(sde).__name__} ({key}), not --sde "
            f"{args.sde}; omit --sde or pass --sde {key}"
        )
    _check_eps(args, sde, sub)
    return ckpt, sde


def _sample_model(
    args: argparse.Namespace,
    argv: Sequence[str],
    ckpt: dict[str, Any],
    sde: Any,
    sampler: Sampler,
    n: int,
    device: torch.device,
    run: Callable[..., Any] | None = None,
) -> Any:
    """Sample the checkpoint's EMA model; the Dataset gets ``x_data`` (data space) and the checkpoint's provenance.

    ``run(model, **kwargs)`` samples instead of ``scoresde.sample(sde, model, sampler, **kwargs)`` (conditional
    sampling); it gets the EMA model and :func:`scoresde.sample`'s keyword arguments.
    """
    import torch

    from .training import load_checkpoint

    path: Path = args.checkpoint
    _, model, _ = load_checkpoint(path, ema=True, device=device)
    data_cfg = ckpt["config"]["data"]
    feature_shape = tuple(int(s) for s in data_cfg["feature_shape"])
    dtype = getattr(torch, args.dtype)
    model.to(dtype)
    save_at = args.save_at or (
        _default_save_at(sampler, sde, n * math.prod(feature_shape), IMAGE_SAVE_AT if len(feature_shape) == 3 else None)
    )
    if run is None:

        def run(model: Any, **kw: Any) -> Any:
            return _lib("sample")(sde, model, sampler, **kw)

    ds = run(
        model,
        shape=(n, *feature_shape),
        seed=args.seed,
        device=device,
        dtype=dtype,
        save_at=save_at,
        progress=not args.quiet,
        chunk_size=args.chunk_size,
    )
    shift, scale = float(data_cfg["shift"]), float(data_cfg["scale"])
    x_data = (ds["x"].isel(time=-1) * scale + shift).drop_vars("time")
    x_data.attrs = {
        "long_name": "final state in data space",
        "description": "x at the last saved time mapped back to data space: x * scale + shift",
    }
    ds["x_data"] = x_data
    ds.attrs.update(
        checkpoint=str(path),
        checkpoint_step=int(ckpt["step"]),
        data=_lib("data_label")(data_cfg),
        data_shift=shift,
        data_scale=scale,
        command=shlex.join([PROG, *argv]),
    )
    return ds


def _class_run(args: argparse.Namespace, ckpt: dict[str, Any], sde: Any, sampler: Sampler) -> Callable[..., Any]:
    """``run`` of :func:`_sample_model` for ``--class``: classifier-free guidance of the conditional EMA model."""
    network = ckpt["config"]["model"]["network"]
    classes = network.get("num_classes")
    if classes is None:
        raise CLIError(
            f"--class needs a class-conditional checkpoint (`scoresde train --conditional`); {str(args.checkpoint)!r} "
            "holds an unconditional network"
        )
    if args.class_label >= classes:
        args.subparser.error(
            f"argument --class: {args.class_label} is out of range: the model has classes 0..{classes - 1}"
        )
    weight = 0.0 if args.guidance is None else args.guidance

    def run(model: Any, **kw: Any) -> Any:
        from .conditioning import sample_class

        ds = sample_class(sde, model, args.class_label, sampler=sampler, weight=weight, **kw)
        ds.attrs.update(class_label=int(args.class_label), guidance_weight=float(weight))
        return ds

    return run


def _truth_image(ckpt: dict[str, Any], index: int) -> torch.Tensor:
    """Training image ``index`` of an image checkpoint, in model space (float64, shape (C, H, W))."""
    import torch

    from .datasets import load_dataset

    d = ckpt["config"]["data"]
    if isinstance(ckpt.get("data"), torch.Tensor):
        images = ckpt["data"].to(torch.float64)
    elif d["name"] == "digits":
        images = load_dataset(
            "digits", scaling=(d.get("params") or {}).get("scaling", "auto"), dtype=torch.float64
        ).data
    else:
        raise CLIError(f"the checkpoint's training data ({d['name']!r}) cannot be had to observe one of its images")
    if index >= images.shape[0]:
        raise CLIError(f"--truth {index} is out of range: the training data has {images.shape[0]} images")
    image: torch.Tensor = images[index]
    return image


def _inverse_problem(
    args: argparse.Namespace, ckpt: dict[str, Any], mode: str
) -> tuple[Any, torch.Tensor, torch.Tensor, str]:
    """The observation of ``--inpaint`` / ``--super-resolution`` (model space), the truth, the observation drawn
    at full resolution (NaN where unobserved) and its description."""
    import torch

    from .conditioning import LinearObservation

    shape = tuple(int(s) for s in ckpt["config"]["data"]["feature_shape"])
    if len(shape) != 3:
        args.subparser.error(
            f"argument --{mode.replace('_', '-')}: needs an image checkpoint (C, H, W), this one has feature shape "
            f"{shape}"
        )
    C, H, W = shape
    truth = _truth_image(ckpt, args.truth)
    method = args.posterior_method or INVERSE_METHODS[mode][0]
    noise = args.observation_noise if args.observation_noise is not None else (0.05 if method == "dps" else 0.0)
    if method == "replacement" and noise > 0:
        args.subparser.error("argument --observation-noise: replacement imposes the observation exactly; use 0")
    if method == "dps" and noise == 0:
        args.subparser.error("argument --observation-noise: dps needs a noise level sigma_y > 0 (e.g. 0.05)")
    if mode == "inpaint":
        mask = torch.zeros(shape, dtype=torch.bool)
        mask[:, : H // 2, :] = True
        shown = torch.where(mask, truth, torch.full_like(truth, math.nan))
        return LinearObservation.inpainting(mask, truth, noise), truth, shown, f"the top {H // 2} of {H} rows"
    S = args.super_resolution
    if H % S or W % S or S >= max(H, W):
        args.subparser.error(
            f"argument --super-resolution: {S} must divide the image sides {H} x {W} and be smaller than them"
        )
    fh, fw = H // S, W // S
    # A: the average over each block of fh x fw pixels, one row per channel and block (row-major)
    block = (torch.arange(H)[:, None] // fh) * (W // fw) + torch.arange(W)[None, :] // fw  # (H, W) block index
    rows = (torch.arange(C)[:, None, None] * (S * (W // fw)) + block[None]).reshape(-1)  # per pixel: its row of A
    A = torch.zeros(C * S * (W // fw), C * H * W, dtype=torch.float64)
    A[rows, torch.arange(C * H * W)] = 1.0 / (fh * fw)
    y = A @ truth.reshape(-1)
    shown = y[rows].reshape(shape)  # each block shows its average
    return (
        LinearObservation(A, y, noise),
        truth,
        shown,
        f"the {S} x {W // fw} average-pooled image (blocks of {fh} x {fw})",
    )


class _ClippedDenoiser:
    r"""The score of a model whose data prediction is clipped to ``[lo, hi]``:
    :math:`\big(s(t)\,\mathrm{clip}(\hat x_0(x, t)) - x\big)/\sigma(t)^2` (Tweedie's formula solved for the score)."""

    def __init__(self, model: Any, sde: Any, lo: float, hi: float) -> None:
        self.model, self.sde, self.lo, self.hi = model, sde, lo, hi

    def __repr__(self) -> str:
        return f"clipped denoiser [{self.lo:g}, {self.hi:g}] of {self.model.__class__.__name__}"

    def __call__(self, x: torch.Tensor, t: Any) -> torch.Tensor:
        import torch

        tt = t if isinstance(t, torch.Tensor) else torch.tensor(float(t), dtype=x.dtype, device=x.device)
        tt = tt.reshape(-1).expand(x.shape[0]).to(device=x.device)
        shape = (-1, *([1] * (x.dim() - 1)))
        s = self.sde.mean_coef(tt).to(x.dtype).reshape(shape)
        sigma = self.sde.std(tt).to(x.dtype).reshape(shape)
        x0 = self.model.data_prediction(x, tt).clamp(self.lo, self.hi)
        out: torch.Tensor = (s * x0 - x) / sigma**2
        return out


def _inverse_run(
    args: argparse.Namespace, sde: Any, sampler: Sampler, observation: Any, method: str, data_cfg: dict[str, Any]
) -> Callable[..., Any]:
    clip = args.clip_denoised and method in ("pigdm", "dps")
    if clip and (data_cfg.get("params") or {}).get("scaling") != "minmax":
        args.subparser.error(
            "argument --clip-denoised: the data was not min-max scaled to [-1, 1]; pass --no-clip-denoised"
        )

    def run(model: Any, **kw: Any) -> Any:
        from .conditioning import sample_posterior

        score = _ClippedDenoiser(model, sde, -1.0, 1.0) if clip else model
        ds = sample_posterior(sde, score, observation, method=method, sampler=sampler, **kw)
        ds.attrs["clip_denoised"] = "[-1, 1] (model space)" if clip else "none"
        return ds

    return run


def _cmd_sample_checkpoint(args: argparse.Namespace, argv: Sequence[str]) -> int:
    timings = _Timings()
    sub: argparse.ArgumentParser = args.subparser
    mode = _conditioning_mode(args, sub)
    ckpt, sde = _read_checkpoint_problem(args, sub)
    data_cfg = ckpt["config"]["data"]
    feature_shape = tuple(int(s) for s in data_cfg["feature_shape"])
    n = args.n_samples or ((16 if mode in INVERSE_METHODS else 64) if len(feature_shape) == 3 else 10_000)
    device = _torch_device(args.device, sub)
    run: Callable[..., Any] | None = None
    inverse: tuple[Any, ...] | None = None
    if mode == "class":
        run = _class_run(args, ckpt, sde, sampler := build_sampler(args))
    elif mode in INVERSE_METHODS:
        method = args.posterior_method or INVERSE_METHODS[mode][0]
        observation, truth, shown, described = _inverse_problem(args, ckpt, mode)
        inverse = (truth, shown, described, method)
        run = _inverse_run(args, sde, sampler := build_sampler(args), observation, method, data_cfg)
    else:
        sampler = build_sampler(args)
    sampler.check(sde)
    out = _prepare_out(args.out, sub)
    plotting = _plotting()
    if mode is not None:
        args.evaluate = False  # the metrics compare with the unconditional training data

    with _torch_threads(args.threads):
        ds = _sample_model(args, argv, ckpt, sde, sampler, n, device, run=run)
        finite = bool(np.isfinite(ds["x_data"].values).all())
        ev, train_data = None, None
        if finite and args.evaluate:
            t0 = time.perf_counter()
            ev, train_data = _lib("evaluate_model_samples")(ds, ckpt, args.seed)
            timings.evaluation = time.perf_counter() - t0
        elif len(feature_shape) == 1:
            train_data = _lib("training_data")(ckpt)
    if ev is not None:
        from .evaluation import metric_attrs

        ds.attrs.update(metric_attrs(ev))

    t0 = time.perf_counter()
    nc_path, png_path = out / "samples.nc", out / "samples.png"
    label, step = _lib("data_label")(data_cfg), int(ckpt["step"])
    if inverse is not None:
        truth, shown, described, method = inverse
        shift, scale = float(data_cfg["shift"]), float(data_cfg["scale"])
        lo, hi = plotting.display_range(np.asarray(ds["x_data"].values, dtype=np.float64), data_cfg)
        ds.attrs.update(
            inverse_problem=mode, observed=described, truth_index=int(args.truth), conditioning_method=method
        )
        image_dims = ds["x_data"].dims[1:]
        ds["truth"] = (image_dims, (truth * scale + shift).numpy(), {"long_name": "the observed image, data space"})
        ds["observation"] = (
            image_dims,
            (shown * scale + shift).numpy(),
            {"long_name": "the observation at full resolution, data space (NaN: unobserved)"},
        )
        fig = plotting.plot_inverse_problem(
            ds["observation"].values,
            ds["x_data"].values,
            ds["truth"].values,
            lo,
            hi,
            f"{label} model (step {step}): {str(mode).replace('_', '-')} by {method}, observed {described}",
        )
    else:
        title = f"{label} model (step {step})"
        if mode == "class":
            title += f", class {args.class_label}, guidance w = {ds.attrs['guidance_weight']:g}"
        fig = plotting.plot_model_samples(ds, data_cfg, None if mode else train_data, title, args.seed)
    _write_netcdf(ds, nc_path)
    written = [nc_path]
    if fig is not None:
        plotting.save_figure(fig, png_path)
        written.append(png_path)
    elif png_path.exists():
        png_path.unlink()  # a figure of an earlier run would not belong to these samples
    timings.writing = time.perf_counter() - t0

    head = (
        f"{PROG} sample: checkpoint {args.checkpoint} (step {step}; data {label}, feature shape {feature_shape}), "
        f"n = {n}, seed {args.seed}, {ds.attrs['dtype']} on {ds.attrs['device']}"
    )
    metric_lines = _metric_lines(ev, finite, args.evaluate)
    if mode is not None and finite:
        metric_lines = ["  metrics    not computed for conditional samples (they compare with the training data)"]
    lines = _run_lines(ds, head, timings) + metric_lines
    lines.append(f"  wrote      {', '.join(str(p) for p in written)}")
    print("\n".join(lines))
    return 0 if finite else _nonfinite_warning()


# ---------------------------------------------------------------------------------------
# train
# ---------------------------------------------------------------------------------------
def _load_training_data(args: argparse.Namespace, sub: argparse.ArgumentParser) -> tuple[Dataset, str]:
    """The data set of ``--data`` in model space, and a label for messages."""
    from .datasets import load_dataset

    spec: str = args.data
    n_data = args.n_data if args.n_data is not None else DEFAULT_N_DATA
    if spec in DATASETS:
        if args.var is not None:
            sub.error(f"argument --var: only applies to netCDF files, not to --data {spec}")
        if spec in TOY_DATASETS:
            return load_dataset(spec, n=n_data, seed=args.seed), spec
        if args.n_data is not None:
            print(f"{PROG}: warning: --n-data is ignored by --data {spec} (a fixed data set)", file=sys.stderr)
        return load_dataset(spec), spec
    path = Path(spec)
    if not path.exists():
        sub.error(
            f"argument --data: unknown dataset {spec!r} and no such file; choose one of "
            f"{', '.join(DATASETS)}, or give the path of a .npy or netCDF file"
        )
    if not path.is_file():
        sub.error(f"argument --data: {spec!r} is not a file")
    if args.n_data is not None:
        print(f"{PROG}: warning: --n-data is ignored for data from a file", file=sys.stderr)
    var = None
    if path.suffix.lower() == ".npy":
        if args.var is not None:
            sub.error("argument --var: only applies to netCDF files, not to .npy files")
        try:
            raw: Any = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as err:
            raise CLIError(f"--data {spec!r}: cannot read it as a .npy file ({err})") from None
    else:
        import xarray as xr

        try:
            ds = xr.open_dataset(path)
        except Exception as err:  # xarray raises ValueError, OSError, KeyError... for unreadable files
            raise CLIError(
                f"--data {spec!r}: not a .npy file and not readable as netCDF ({type(err).__name__}: {err})"
            ) from None
        with ds:
            names = [str(k) for k in ds.data_vars]
            if args.var is None:
                if len(names) != 1:
                    raise CLIError(f"--data {spec!r} has {len(names)} data variables {names}; choose one with --var")
                var = names[0]
            elif args.var not in ds.data_vars:
                raise CLIError(f"--var {args.var!r} is not a data variable of {spec!r}; it has {names}")
            else:
                var = args.var
            raw = ds[var].load()
    try:
        data = load_dataset(raw)
    except (ValueError, TypeError) as err:
        raise CLIError(f"--data {spec!r}{f' (variable {var!r})' if var else ''}: {err}") from None
    data.params["source"] = str(path)
    if var is not None:
        data.params["var"] = var
    return data, spec + (f":{var}" if var else "")


def _build_score_model(args: argparse.Namespace, data: Dataset, sde: LinearSDE, label: str) -> Any:
    """The ``--net`` network for ``data``'s feature shape, initialised from ``--seed``, wrapped in a ScoreModel."""
    import torch

    from .nets import ScoreModel, build_network

    fs = data.feature_shape
    net = args.net or ("mlp" if len(fs) == 1 else "unet")
    hidden = args.hidden or DEFAULT_HIDDEN[net]
    if net == "mlp" and len(fs) != 1:
        raise CLIError(
            f"--net mlp needs vector data (n, features), but {label} has feature shape {fs}; "
            "use --net unet or --net dit for images"
        )
    if net != "mlp" and len(fs) != 3:
        hint = "; for single-channel images add a channel axis, (n, 1, H, W)" if len(fs) == 2 else ""
        raise CLIError(
            f"--net {net} needs images (n, channels, height, width), but {label} has feature shape "
            f"{fs}; use --net mlp for vectors{hint}"
        )
    classes: dict[str, Any] = {}
    if getattr(args, "conditional", False):
        if data.labels is None:
            raise CLIError(
                f"--conditional needs labelled data, but {label} has no labels (labelled: digits, moons and the "
                f"Gaussian mixtures {', '.join(TARGET_NAMES)})"
            )
        classes["num_classes"] = data.num_classes
    with torch.random.fork_rng(devices=[]):  # the initialisation follows --seed; the caller's RNG is untouched
        torch.manual_seed(args.seed)
        if net == "mlp":
            network = build_network("mlp", dim=fs[0], hidden=hidden, **classes)
        elif net == "unet":
            network = build_network("unet", channels=fs[0], base=hidden, groups=math.gcd(8, hidden), **classes)
        else:
            patch = 2 if fs[1] % 2 == 0 and fs[2] % 2 == 0 else 1
            network = build_network(
                "dit", image_size=(fs[1], fs[2]), channels=fs[0], hidden=hidden, patch_size=patch, **classes
            )
    return ScoreModel(network, sde, parameterization=args.parameterization)


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


#: TrainConfig fields that do not change the optimisation: on resume, the command line's apply
BOOKKEEPING = ("checkpoint_every", "log_every")


def _resume_trainer(
    last: Path,
    sde: LinearSDE,
    model: Any,
    data: Dataset,
    config: TrainConfig,
    given: dict[str, Any],
    out: Path,
    device: torch.device,
    report: bool = True,
) -> Any:
    """A Trainer continued from ``last``, after checking that it is the same run (SDE, network, data).

    The checkpoint's optimisation settings are kept (so that the run continues as it would have
    without the interruption): options ``given`` on the command line that differ from them are
    reported and ignored, except ``--steps``, ``--checkpoint-every`` and ``--log-every``.
    """
    from .nets import model_config
    from .sde import sde_config
    from .training import CheckpointError, TrainConfig, Trainer, read_checkpoint

    try:
        ckpt = read_checkpoint(last)
    except CheckpointError as err:
        raise CLIError(f"{err}, or start over with --no-resume") from None
    cfg = ckpt["config"]
    hint = f"use --no-resume to start over in {str(out)!r}, or another --out"
    if _canonical(cfg["sde"]) != _canonical(sde_config(sde)):
        raise CLIError(
            f"{str(last)!r} was trained with {cfg['sde']['class']}({_params_text(cfg['sde']['params'])}),"
            f" not {type(sde).__name__}({_params_text(sde.params())}); {hint}"
        )
    if _canonical(cfg["model"]) != _canonical(model_config(model)):
        old = cfg["model"]["network"]
        raise CLIError(
            f"{str(last)!r} holds a different network ({_params_text(dict(old))}, "
            f"{cfg['model'].get('parameterization')}); {hint}"
        )
    new_data, old_data = data.config(), cfg["data"]
    a: Any
    b: Any
    for key in ("name", "feature_shape", "n", "shift", "scale"):
        a, b = old_data.get(key), new_data.get(key)
        same = (
            math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
            if key in ("shift", "scale")
            else _canonical(a) == _canonical(b)
        )
        if not same:
            raise CLIError(f"{str(last)!r} was trained on other data ({key} {a!r}, now {b!r}); {hint}")
    train_cfg = dict(cfg["train"])
    ignored = [
        f"--{k.replace('_', '-')} {v:g} (checkpoint: {train_cfg[k]:g})"
        if isinstance(v, float)
        else f"--{k.replace('_', '-')} {v} (checkpoint: {train_cfg[k]})"
        for k, v in given.items()
        if k not in BOOKKEEPING and k in train_cfg and train_cfg[k] != v
    ]
    if ignored and report:
        print(
            f"{PROG}: warning: resuming keeps the checkpoint's settings; ignoring "
            + ", ".join(ignored)
            + " (use --no-resume to start over with them)",
            file=sys.stderr,
        )
    keep = {k: getattr(config, k) for k in BOOKKEEPING if k in given}
    try:
        resumed = TrainConfig(**{**train_cfg, **keep, "steps": config.steps})
    except TypeError as err:
        raise CheckpointError(f"checkpoint {str(last)!r}: unusable training settings ({err})") from None
    trainer = Trainer(sde, model, data, resumed, out_dir=out, device=device)
    trainer.load_state(ckpt, last)
    return trainer


def _cmd_train(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """``scoresde train``; under torchrun (``RANK`` and ``WORLD_SIZE`` set) in a process group made here.

    The group (gloo on CPU, nccl on CUDA with each rank on the GPU of its ``LOCAL_RANK``) has the
    timeout ``--dist-timeout`` and is destroyed when the command ends.
    """
    import os

    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return _train(args, argv)
    import datetime

    import torch
    import torch.distributed as dist

    if dist.is_initialized():  # a group made by the caller (main() called in-process): use it as it is
        return _train(args, argv)
    device = _torch_device(args.device, args.subparser)
    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if local >= torch.cuda.device_count():
            raise CLIError(f"LOCAL_RANK {local} but only {torch.cuda.device_count()} CUDA device(s) are visible")
        torch.cuda.set_device(local)
        args.device = f"cuda:{local}"
    dist.init_process_group(
        "nccl" if device.type == "cuda" else "gloo", timeout=datetime.timedelta(seconds=args.dist_timeout)
    )
    from ._distributed import DistributedError

    try:
        return _train(args, argv)
    except DistributedError as err:  # another rank failed or left: its own message says why
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 1
    finally:
        dist.destroy_process_group()


def _train(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from ._distributed import rank as dist_rank
    from ._distributed import world_size as dist_world_size

    start = time.perf_counter()
    sub: argparse.ArgumentParser = args.subparser
    device = _torch_device(args.device, sub)
    main_rank, world = dist_rank() == 0, dist_world_size()

    import torch

    from .evaluation import SCORE_ERROR_POINTS, SCORE_ERROR_T_MIN, model_space_oracle, score_error
    from .nets import PARAMETERIZATION_ALIASES, model_config
    from .training import TrainConfig, Trainer

    if args.objective is None:
        args.objective = DEFAULT_OBJECTIVE.get(args.sde, "dsm")
    if args.parameterization is None:
        args.parameterization = "velocity" if args.objective == "flow_matching" else "noise"
    # a former name ("eps") is the parameterisation it names now
    args.parameterization = PARAMETERIZATION_ALIASES.get(args.parameterization, args.parameterization)
    if args.label_dropout is not None and not args.conditional:
        sub.error("argument --label-dropout: applies to --conditional training only")
    if args.conditional and args.label_dropout is None:
        args.label_dropout = DEFAULT_LABEL_DROPOUT
    # TrainConfig options default to None, so that a resumed run can tell what was asked for
    given = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(TrainConfig)
        if f.name != "steps" and getattr(args, f.name) is not None
    }
    config = TrainConfig(**{**dataclasses.asdict(TrainConfig()), **given, "steps": args.steps})
    args.seed = config.seed
    data, label = _load_training_data(args, sub)
    sde = _sde_class(args.sde)()
    model = _build_score_model(args, data, sde, label)
    name = args.data if args.data in DATASETS else Path(args.data).stem
    out = args.out if args.out is not None else Path("runs") / name
    if main_rank:  # rank 0 alone writes into --out (and locks it)
        out = _prepare_out(out, sub, TRAIN_FILES)
    last = out / "last.pt"

    plotting = _plotting()
    save_figure = plotting.save_figure

    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        if args.resume and last.exists():
            trainer = _resume_trainer(last, sde, model, data, config, given, out, device, main_rank)
            if main_rank:
                print(f"resuming from {last} at step {trainer.step} (to step {args.steps})", flush=True)
        else:
            if last.exists() and main_rank:
                print(
                    f"{PROG}: note: --no-resume: starting over at step 0; the checkpoints in {out} are replaced",
                    file=sys.stderr,
                )
            trainer = Trainer(sde, model, data, config, out_dir=out, device=device)
        first = trainer.step
        t0 = time.perf_counter()
        if trainer.step >= args.steps and main_rank:
            print(f"already at step {trainer.step} >= --steps {args.steps}: nothing to train", flush=True)
        elif trainer.step < args.steps:
            try:
                trainer.train(progress=not args.quiet)
            except KeyboardInterrupt:
                print(
                    f"\n{PROG}: training interrupted at step {trainer.step}; run the same command again to resume "
                    f"from the last checkpoint ({last})",
                    file=sys.stderr,
                )
                raise
            except FloatingPointError as err:
                if main_rank:
                    print(
                        f"{PROG}: error: {err} (checkpoints up to the last one before it are in {out})", file=sys.stderr
                    )
                return 1
        train_s = time.perf_counter() - t0
        trained = trainer.step - first
        score_err = None
        if not main_rank:  # rank 0 reports and plots
            return 0
        if data.name in ORACLE_DATASETS:
            score_err = score_error(trainer.ema, sde, model_space_oracle(data.name, data))
    finally:
        torch.set_num_threads(threads)

    history = trainer.history_dataset()
    net_name = model_config(trainer.model)["network"]["name"]
    png = save_figure(
        plotting.plot_loss(
            history,
            f"{label} · {type(sde).__name__} · {net_name} ({trainer.model.parameterization}) · {trainer.step} steps",
            objective=trainer.config.make_objective().name,
        ),
        out / "loss.png",
    )
    losses = np.asarray(history["loss"].values, dtype=np.float64)
    tail = losses[-10:]
    n_params = sum(p.numel() for p in trainer.model.parameters())
    lines = [
        f"{PROG} train: data {label} ({' x '.join(map(str, (len(data), *data.feature_shape)))}, "
        f"{data.params.get('scaling')}: "
        f"shift {data.shift:.4g}, scale {data.scale:.4g}), {type(sde).__name__}, {net_name} "
        f"({n_params:,} parameters, {trainer.model.parameterization}) on {trainer.device}"
        + (f", {world} ranks (global batch {trainer.config.batch_size})" if world > 1 else ""),
        f"  steps      {trainer.step} ({trained} this run in {train_s:.1f} s: "
        + (f"{trained / train_s:.1f} steps/s)" if trained and train_s > 0 else "-)"),
        f"  wall time  {time.perf_counter() - start:.1f} s in all",
        "  final loss "
        + (
            "-"
            if not tail.size
            else f"{tail[0]:.4g} (the only logged value, step {int(history['step'][-1])})"
            if tail.size == 1
            else f"{tail.mean():.4g} (mean of the last {tail.size} logged values, steps "
            f"{int(history['step'][-tail.size])}-{int(history['step'][-1])})"
        ),
    ]
    if score_err is not None:
        lines.append(
            f"  score err  {score_err:.4g} (EMA model: E sigma^2 |s_theta - s|^2 / E sigma^2 |s|^2 "
            f"against the exact score; {SCORE_ERROR_POINTS} points, t ~ U[{SCORE_ERROR_T_MIN:g}, {sde.T:g}])"
        )
    lines += [
        f"  wrote      {last} (step {trainer.step}), {out / 'history.nc'}, {png}",
        f"  sample     {PROG} sample --checkpoint {shlex.quote(str(last))} --out {shlex.quote(str(out / 'samples'))}",
    ]
    print("\n".join(lines))
    return 0


# ---------------------------------------------------------------------------------------
# entry point
# ---------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``scoresde`` command line with ``argv`` (default ``sys.argv[1:]``); return the exit code."""
    import signal
    import threading

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    previous = None
    if threading.current_thread() is threading.main_thread():
        # SIGTERM ends the run like Ctrl-C, so that temporary files are removed (atomic_path's clean-up)
        previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help(sys.stderr)
            return 2
        return int(args.func(args, argv))
    except SystemExit as exc:  # argparse: --help (0) and usage errors (2)
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 2)
    except (CLIError, ValueError, TypeError) as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:
        if isinstance(exc, _Terminated):
            print(f"\n{PROG}: terminated", file=sys.stderr)
            return 128 + signal.SIGTERM
        print(f"\n{PROG}: interrupted", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        while _HELD_LOCKS:  # the run is over: unlock --out, also for the Trainer that the run created
            _HELD_LOCKS.pop().release(force=True)


class _Terminated(KeyboardInterrupt):
    """Raised by the SIGTERM handler of :func:`main`: unwinds like Ctrl-C (clean-up runs), exit 143."""


def _terminate(signum: int, frame: Any) -> None:
    raise _Terminated()
