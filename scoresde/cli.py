"""Command-line interface: ``scoresde train`` and ``scoresde sample`` (also ``python -m scoresde ...``).

``scoresde train`` trains a score network by denoising score matching on a named data set
(2-D toy sets, the 8x8 digits) or a user array (``.npy`` or netCDF), writes checkpoints,
``history.nc`` and a loss curve ``loss.png`` to ``--out``, resumes from ``<out>/last.pt`` by
default, and reports the speed, the final loss and, for Gaussian-mixture data, the weighted
relative error of the learned score against the exact one.

``scoresde sample`` draws samples through the reverse-time SDE (or the probability-flow ODE),
either of a 2-D Gaussian-mixture target driven by its exact score (default: the 8-Gaussian ring)
or, with ``--checkpoint``, of a trained model (EMA weights). It writes the trajectory as
``<out>/samples.nc`` and a figure ``<out>/samples.png`` (both atomically), and reports the
sliced-Wasserstein distance to exact samples (or to the training data) next to its statistical
floor. Run ``scoresde train --help`` and ``scoresde sample --help`` for the options.

Exit codes: 0 success, 1 the samples contain NaN/inf (files are still written), the training
loss diverged, or writing failed, 2 bad arguments, data or checkpoints, or options the library
rejects, 130 interrupted.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np
import torch

from . import metrics
from .datasets import DATASETS, TOY_DATASETS, Dataset, load_dataset, toy_sample
from .ddpm import DDPMSDE, DDPMAncestral
from .flow import FlowODE, RectifiedFlow
from .losses import WEIGHTINGS
from .mixture import TARGETS, GaussianMixture, get_target
from .samplers import CORRECTORS, PREDICTORS, EulerMaruyama, PredictorCorrector, ProbabilityFlowODE, Sampler, TorchSDE
from .sampling import sample
from .sde import VESDE, VPSDE, LinearSDE, SubVPSDE, sde_from_config
from .training import OBJECTIVES, TrainConfig

__all__ = ["main", "build_parser", "build_sampler"]

PROG = "scoresde"

SDES: dict[str, Callable[[], LinearSDE]] = {
    "vp": VPSDE,
    "subvp": SubVPSDE,
    "ve": VESDE,
    "ddpm": DDPMSDE,
    "rf": RectifiedFlow,
}
SAMPLERS: dict[str, str] = {
    "pc": "PredictorCorrector (reverse diffusion + Langevin corrector), default 1000 steps",
    "em": "EulerMaruyama on the reverse SDE, default 1000 steps",
    "ode": "ProbabilityFlowODE, scipy RK45 with error control (--rtol/--atol; --steps ignored)",
    "ode-euler": "ProbabilityFlowODE, fixed-step Euler, default 100 steps",
    "ode-heun": "ProbabilityFlowODE, fixed-step Heun (2 NFE per step), default 100 steps",
    "torchsde": "TorchSDE, torchsde's srk (SRA1) scheme, 2 NFE per step, default 1000 steps",
    "ddpm": "DDPMAncestral, Ho et al.'s ancestral sampler on the DDPM chain (--sde ddpm only; 1000 NFE)",
    "flow": "FlowODE, Heun on dx/dt = v(x, t) (2 NFE per step), default 50 steps; the one for --sde rf",
}
#: the sampler used when --sampler is not given
DEFAULT_SAMPLER = {"ddpm": "ddpm", "rf": "flow"}
#: the training objective and parameterisation used when --objective / --parameterization are not given
DEFAULT_OBJECTIVE = {"ddpm": "ddpm", "rf": "flow_matching"}
DTYPES = {"float32": torch.float32, "float64": torch.float64}

#: sliced-Wasserstein settings of the report (the floor uses the same projections)
SW_PROJECTIONS = 500
FLOOR_PAIRS = 8
FLOOR_K = 3.0
#: family-wise false-alarm rate of the mode-weight check: that of one two-sided 3-sigma test
MODE_FWER = 2 * NormalDist().cdf(-3.0)

OUTPUT_FILES = ("samples.nc", "samples.png")
TRAIN_FILES = ("last.pt", "history.nc", "loss.png")
NETS = ("mlp", "unet", "dit")
#: default width per network: MLP hidden width, U-Net base channels, DiT token width
DEFAULT_HIDDEN = {"mlp": 128, "unet": 32, "dit": 128}
#: toy sets with an exact score (Gaussian mixtures): ``scoresde train`` reports the score error
ORACLE_DATASETS = tuple(TARGETS)
SCORE_ERROR_POINTS = 4000
SCORE_ERROR_T_MIN = 1e-3
NETCDF_SUFFIXES = (".nc", ".nc4", ".netcdf", ".cdf", ".h5", ".hdf5")
DEFAULT_N_DATA = 20_000


class CLIError(Exception):
    """A user-facing error: printed as ``scoresde: error: <message>``, exit code 2."""


# ---------------------------------------------------------------------------------------
# argument types (their messages appear as "argument --opt: <message>")
# ---------------------------------------------------------------------------------------
def _int_at_least(minimum: int, why: str = "") -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}{why}, got {value}")
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


def _device(text: str) -> torch.device:
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"invalid device {text!r}; use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(
                f"{text!r} requested but CUDA is not available on this machine "
                "(torch.cuda.is_available() is False); use --device cpu"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(
                f"{text!r} requested but only {torch.cuda.device_count()} CUDA device(s) are visible"
            )
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise argparse.ArgumentTypeError("'mps' requested but the MPS backend is not available; use --device cpu")
    elif device.type != "cpu":
        raise argparse.ArgumentTypeError(f"unsupported device type {device.type!r}; use cpu or cuda")
    return device


# ---------------------------------------------------------------------------------------
# parser
# ---------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """The ``scoresde`` parser, with one sub-parser per command (``train``, ``sample``)."""
    from . import __version__

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Score-based diffusion models as SDEs: train score networks on toy sets, digits or "
        "your own arrays, and sample trained models or exact Gaussian-mixture targets through "
        "reverse-time SDEs and probability-flow ODEs.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_train_parser(commands)
    _add_sample_parser(commands)
    return parser


def _add_sample_parser(commands: Any) -> None:
    p = commands.add_parser(
        "sample",
        help="sample a 2-D target with its exact score, or a trained model (--checkpoint); "
        "write samples.nc and samples.png",
        description=(
            "Sample through the reverse-time SDE (or the probability-flow ODE), driven either by\n"
            "the exact score of a 2-D Gaussian-mixture target (--target) or by a trained model\n"
            "(--checkpoint, EMA weights; the SDE and the sample shape come from the checkpoint).\n"
            "Writes DIR/samples.nc (the trajectory as an xarray Dataset, metrics as attributes;\n"
            "with --checkpoint also x_data, the final state in data space) and DIR/samples.png,\n"
            "and reports NFE, wall time and, for 2-D targets and named toy sets, the\n"
            "sliced-Wasserstein distance to exact samples (or to the training data) next to its\n"
            "statistical floor; for targets also a mode-weight check."
        ),
        epilog="samplers:\n"
        + "\n".join(f"  {k:<10} {v}" for k, v in SAMPLERS.items())
        + "\n\nexamples:\n  scoresde sample --sde ve --sampler ode --n-samples 2000 --out out/ve_ode"
        + "\n  scoresde sample --checkpoint runs/moons/last.pt --sampler em --out out/moons",
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
        choices=sorted(TARGETS),
        default=None,
        help="2-D target distribution, sampled with its exact score (default: eight_gaussians; not with --checkpoint)",
    )
    g.add_argument(
        "--sde",
        choices=list(SDES),
        default=None,
        help="forward SDE: VP, sub-VP or VE, default parameters (default: vp; with --checkpoint "
        "the checkpoint's, and a different --sde is an error)",
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

    g = p.add_argument_group("sampler")
    g.add_argument(
        "--sampler",
        choices=list(SAMPLERS),
        default=None,
        help="reverse-time integrator, see below (default: pc; ddpm for --sde ddpm, flow for --sde rf)",
    )
    g.add_argument(
        "--steps",
        type=_int_at_least(1),
        default=None,
        metavar="N",
        help="number of sampler steps (default: the sampler's own; ignored by --sampler ode)",
    )
    g.add_argument(
        "--predictor", choices=sorted(PREDICTORS), default=None, help="pc only: predictor (default: reverse_diffusion)"
    )
    g.add_argument(
        "--corrector", choices=sorted(CORRECTORS), default=None, help="pc only: corrector (default: langevin)"
    )
    g.add_argument(
        "--snr", type=_positive_float, default=None, help="pc only: corrector signal-to-noise ratio (default: 0.16)"
    )
    g.add_argument("--rtol", type=_positive_float, default=None, help="ode only: relative tolerance (default: 1e-5)")
    g.add_argument("--atol", type=_positive_float, default=None, help="ode only: absolute tolerance (default: 1e-5)")
    g.add_argument(
        "--eps", type=_positive_float, default=None, help="final time of the reverse process (default: 1e-3)"
    )
    g.add_argument(
        "--denoise",
        action="store_true",
        help="finish with the Tweedie denoising step (one more NFE) and compare with the "
        "target itself instead of its marginal at t = eps",
    )

    g = p.add_argument_group("run and output")
    g.add_argument("--device", type=_device, default="cpu", help="torch device: cpu, cuda, cuda:N (default: cpu)")
    g.add_argument(
        "--dtype", choices=list(DTYPES), default="float32", help="precision of the integration (default: %(default)s)"
    )
    g.add_argument(
        "--save-at",
        type=_int_at_least(2),
        default=11,
        metavar="K",
        help="number of saved states, evenly spaced in time from T to eps (default: %(default)s)",
    )
    g.add_argument(
        "--out",
        type=Path,
        default=Path("out"),
        metavar="DIR",
        help="output directory, created if needed; samples.nc and samples.png in it are replaced (default: out)",
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
    d = TrainConfig()
    p = commands.add_parser(
        "train",
        help="train a score network on a toy set, the digits or an array file; write checkpoints",
        description=(
            "Train a score network by denoising score matching (AdamW, warm-up, gradient clipping,\n"
            "EMA). Writes DIR/last.pt and DIR/step_XXXXXXX.pt (checkpoints: `scoresde sample\n"
            "--checkpoint DIR/last.pt` samples the EMA model), DIR/history.nc (the loss history) and\n"
            "DIR/loss.png. If DIR/last.pt exists the run resumes from it (--no-resume starts over).\n"
            "Reports steps, wall time, steps/s, the final loss and, for the Gaussian-mixture toy sets\n"
            f"({', '.join(ORACLE_DATASETS)}), the weighted relative score error\n"
            "E sigma^2 |s_theta - s|^2 / E sigma^2 |s|^2 against the exact score."
        ),
        epilog="data:\n  " + ", ".join(DATASETS) + "\n  or a path to a .npy file (n, *features) or a netCDF "
        "file (--var NAME; first dimension: samples);\n  vectors are standardised, images (n, C, H, W) "
        "mapped to [-1, 1]\n\nexamples:\n  scoresde train --data moons --sde vp --steps 5000 --out "
        "runs/moons\n  scoresde train --data digits --steps 3000 --batch-size 128 --out runs/digits",
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
    g.add_argument("--sde", choices=list(SDES), default="vp", help="forward SDE (default: %(default)s)")
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
        "--parameterization",
        choices=("eps", "score", "velocity"),
        default=None,
        help="what the network predicts: the noise (eps), sigma(t) x the score, or the flow velocity "
        "(default: velocity for --objective flow_matching, else eps)",
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
        choices=OBJECTIVES,
        default=None,
        help="loss: dsm (continuous-time score matching), ddpm (Ho et al.'s eps-loss on the DDPM grid; "
        "--sde ddpm), flow_matching (velocity regression; --sde rf) (default: ddpm for --sde "
        "ddpm, flow_matching for --sde rf, else dsm)",
    )
    g.add_argument(
        "--weighting", choices=WEIGHTINGS, default=None, help=f"loss weighting lambda(t) (default: {d.weighting})"
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
    g.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_train, subparser=p)


# ---------------------------------------------------------------------------------------
# sample
# ---------------------------------------------------------------------------------------
def build_sampler(args: argparse.Namespace) -> Sampler:
    """The sampler selected by ``--sampler`` with only the options given (library defaults otherwise)."""
    common: dict[str, Any] = {"denoise": bool(args.denoise)}
    if args.eps is not None:
        common["eps"] = args.eps
    steps: dict[str, Any] = {} if args.steps is None else {"steps": args.steps}
    kind = args.sampler
    if kind == "pc":
        pc: dict[str, Any] = {
            k: v
            for k, v in (("predictor", args.predictor), ("corrector", args.corrector), ("snr", args.snr))
            if v is not None
        }
        return PredictorCorrector(**pc, **steps, **common)
    if kind == "em":
        return EulerMaruyama(**steps, **common)
    if kind == "ode":
        tol = {k: v for k, v in (("rtol", args.rtol), ("atol", args.atol)) if v is not None}
        return ProbabilityFlowODE("RK45", **tol, **common)
    if kind in ("ode-euler", "ode-heun"):
        return ProbabilityFlowODE(kind.removeprefix("ode-"), **steps, **common)
    if kind == "torchsde":
        return TorchSDE("srk", **steps, **common)
    if kind == "ddpm":
        return DDPMAncestral()
    if kind == "flow":
        return FlowODE(steps=args.steps or 50, method="heun", **{k: v for k, v in common.items() if k == "eps"})
    raise CLIError(f"unknown sampler {kind!r}")  # unreachable: argparse checks the choices


def _check_option_combinations(args: argparse.Namespace, sub: argparse.ArgumentParser) -> None:
    for opt in ("predictor", "corrector", "snr"):
        if getattr(args, opt) is not None and args.sampler != "pc":
            sub.error(f"argument --{opt}: only applies to --sampler pc (got --sampler {args.sampler})")
    for opt in ("rtol", "atol"):
        if getattr(args, opt) is not None and args.sampler != "ode":
            sub.error(f"argument --{opt}: only applies to --sampler ode (got --sampler {args.sampler})")
    if args.steps is not None and args.sampler == "ode":
        print(
            f"{PROG}: warning: --steps is ignored by --sampler ode (adaptive RK45; use --rtol/--atol, or "
            "--sampler ode-euler / ode-heun for fixed steps)",
            file=sys.stderr,
        )


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


@dataclass
class Evaluation:
    """Metrics of the final samples against exact samples of ``reference``."""

    sw: float
    floor: metrics.MetricFloor
    within: bool
    modes: Any  # metrics.ModeWeightResult
    expected: np.ndarray
    reference_draws: int
    exact: torch.Tensor


def expected_mode_fractions(
    reference: GaussianMixture, n: int, generator: torch.Generator, chunk: int = 1_000_000
) -> tuple[np.ndarray, int]:
    """Probability that an exact sample's nearest mode centre is mode k, by Monte Carlo.

    Equal to the mixture weights only for well-separated modes (not for ``pinwheel``), so
    the mode-weight test compares with these. Uses ``m = clip(20 n, 2e5, 5e6)`` draws, so
    the Monte Carlo error adds at most a factor ``sqrt(1 + n/m)`` to the binomial error.
    """
    m = int(np.clip(20 * n, 200_000, 5_000_000))
    counts = np.zeros(reference.n_components)
    drawn = 0
    while drawn < m:
        k = min(chunk, m - drawn)
        x = reference.sample(k, generator, dtype=torch.float64)
        counts += metrics.mode_fractions(x, reference.means).numpy() * k
        drawn += k
    return counts / m, m


def evaluate(final: torch.Tensor, reference: GaussianMixture, seed: int) -> Evaluation:
    """SW2 of ``final`` to exact samples, its floor from 8 pairs of exact sets, and the mode check.

    Seeds, all derived from ``seed`` and distinct from it (the sampler's generator): the
    floor uses ``metric_floor(seed=seed + 1)`` (generators ``1000 (seed + 1) + k``, k < 8),
    the exact comparison set ``1000 (seed + 1) + 500``, the mode Monte Carlo ``... + 501``.
    The SW projection directions are the same (seed 0) for the comparison and the floor.
    """
    n = final.shape[0]
    base = 1000 * (seed + 1)

    def draw(m: int, generator: torch.Generator) -> torch.Tensor:
        return reference.sample(m, generator, dtype=torch.float64)

    exact = draw(n, torch.Generator().manual_seed(base + 500))
    sw = metrics.sliced_wasserstein(final, exact, projections=SW_PROJECTIONS)
    floor = metrics.metric_floor(
        "sliced_wasserstein", draw, n, pairs=FLOOR_PAIRS, seed=seed + 1, projections=SW_PROJECTIONS
    )
    expected, m = expected_mode_fractions(reference, n, torch.Generator().manual_seed(base + 501))
    modes = metrics.mode_weight_test(final, reference.means, expected, k=mode_limit(reference.n_components))
    return Evaluation(
        sw=sw,
        floor=floor,
        within=floor.contains(sw, k=FLOOR_K),
        modes=modes,
        expected=expected,
        reference_draws=m,
        exact=exact,
    )


def mode_limit(n_modes: int) -> float:
    """|z| limit of the mode-weight check: Bonferroni over the modes at the 3-sigma rate (3.0 for one mode)."""
    return NormalDist().inv_cdf(1.0 - MODE_FWER / (2 * max(1, n_modes)))


def _mode_z(result: Any) -> np.ndarray:
    z = getattr(result, "z_scores", None)
    if z is None:
        z = result.z
    return np.asarray(torch.as_tensor(z).double().cpu(), dtype=np.float64)


def _metric_attrs(ev: Evaluation, reference_desc: str) -> dict[str, Any]:
    return {
        "metric_sw2": ev.sw,
        "metric_sw2_projections": SW_PROJECTIONS,
        "metric_sw2_reference": reference_desc,
        "metric_sw2_floor_mean": ev.floor.mean,
        "metric_sw2_floor_std": ev.floor.std,
        "metric_sw2_floor_pairs": len(ev.floor.values),
        "metric_sw2_floor_threshold": ev.floor.threshold(FLOOR_K),
        "metric_sw2_floor_k": FLOOR_K,
        "metric_sw2_within_floor": int(ev.within),
        "metric_mode_fractions": np.asarray(torch.as_tensor(ev.modes.fractions).double().cpu(), dtype=np.float64),
        "metric_mode_expected": np.asarray(ev.expected, dtype=np.float64),
        "metric_mode_z": _mode_z(ev.modes),
        "metric_mode_k": float(ev.modes.k),
        "metric_mode_weights_ok": int(bool(ev.modes.ok)),
    }


def _format_report(
    ds: Any,
    args: argparse.Namespace,
    target_name: str,
    ev: Evaluation | None,
    reference_desc: str,
    total_s: float,
    paths: Sequence[Path],
) -> str:
    a = ds.attrs
    n = ds.sizes["sample"]
    lines = [
        f"{PROG} sample: target {target_name}, n = {n}, seed {args.seed}, {a['dtype']} on {a['device']}",
        f"  SDE        {a['sde']}({_params_text(_json_dict(a['sde_params']))})",
        f"  sampler    {a['sampler']}({_params_text(_json_dict(a['sampler_params']))})",
        f"  NFE        {a['nfe']}",
        f"  wall time  {a['wall_time_s']:.2f} s sampling, {total_s:.2f} s in all",
    ]
    if ev is None:
        lines.append("  metrics    skipped: the final samples contain NaN or inf")
    else:
        verdict = (
            f"within floor (mean + {FLOOR_K:g} sd = {ev.floor.threshold(FLOOR_K):.4g})"
            if ev.within
            else f"ABOVE floor (mean + {FLOOR_K:g} sd = {ev.floor.threshold(FLOOR_K):.4g})"
        )
        z = _mode_z(ev.modes)
        worst = int(np.argmax(np.abs(z))) if z.size else 0
        lines += [
            f"  SW2        {ev.sw:.4g} to {n} exact samples of {reference_desc} ({SW_PROJECTIONS} projections)",
            f"  floor      {ev.floor.mean:.4g} ± {ev.floor.std:.2g} (SW2 between {len(ev.floor.values)} pairs of "
            f"exact sets of {n}): {verdict}",
            f"  modes      {'ok' if ev.modes.ok else 'FAILED'}: max |z| = {abs(z[worst]):.2f} "
            f"(mode {worst}; limit {ev.modes.k:.2f}: 3-sigma family-wise over {z.size} mode(s))",
        ]
        fr = np.asarray(torch.as_tensor(ev.modes.fractions).cpu(), dtype=np.float64)
        if fr.size <= 10:
            lines.append(
                "             fraction nearest each mode centre / exact probability: "
                + "  ".join(f"{f:.3f}/{e:.3f}" for f, e in zip(fr, ev.expected, strict=True))
            )
    lines.append(f"  wrote      {', '.join(str(p) for p in paths)}")
    return "\n".join(lines)


def _json_dict(text: Any) -> dict[str, Any]:
    import json

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


def _cmd_sample(args: argparse.Namespace, argv: Sequence[str]) -> int:
    if args.checkpoint is not None:
        return _cmd_sample_checkpoint(args, argv)
    start = time.perf_counter()
    sub: argparse.ArgumentParser = args.subparser
    if args.sampler is None:
        args.sampler = DEFAULT_SAMPLER.get(args.sde or "vp", "pc")
    _check_option_combinations(args, sub)
    args.target = args.target or "eight_gaussians"
    args.sde = args.sde or "vp"
    args.n_samples = args.n_samples or 10_000
    if args.sampler is None:
        args.sampler = DEFAULT_SAMPLER.get(args.sde, "pc")

    sde = SDES[args.sde]()
    if args.eps is not None and args.eps >= sde.T:
        sub.error(f"argument --eps: must be smaller than the SDE's end time T = {sde.T:g}, got {args.eps:g}")
    target = get_target(args.target)
    sampler = build_sampler(args)
    sampler.check(sde)
    out = _prepare_out(args.out, sub)

    import matplotlib

    matplotlib.use("Agg")  # the CLI never opens windows; the library itself leaves the backend alone
    from .plotting import plot_samples, save_figure

    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        ds = sample(
            sde,
            target.score(sde),
            sampler,
            shape=(args.n_samples, target.dim),
            seed=args.seed,
            device=args.device,
            dtype=DTYPES[args.dtype],
            save_at=args.save_at,
            progress=not args.quiet,
        )
        ds.attrs["target"] = args.target
        ds.attrs["command"] = shlex.join([PROG, *argv])

        final = torch.from_numpy(np.asarray(ds["x"].isel(time=-1).values, dtype=np.float64))
        if sampler.denoise:
            reference, reference_desc = target, "the target (denoised samples, t = 0)"
        else:
            reference, reference_desc = target.marginal(sde, sampler.eps), f"p_t at t = eps = {sampler.eps:g}"
        ev = evaluate(final, reference, args.seed) if bool(torch.isfinite(final).all()) else None
    finally:
        torch.set_num_threads(threads)  # main() may run inside a longer-lived process (tests, notebooks)
    if ev is not None:
        ds.attrs.update(_metric_attrs(ev, reference_desc))

    nc_path, png_path = out / "samples.nc", out / "samples.png"
    _write_netcdf(ds, nc_path)
    fig = plot_samples(ds, target=reference, reference=None if ev is None else ev.exact)
    save_figure(fig, png_path)

    print(_format_report(ds, args, args.target, ev, reference_desc, time.perf_counter() - start, (nc_path, png_path)))
    if ev is None:
        print(f"{PROG}: warning: the samples contain NaN or inf (try more --steps or --dtype float64)", file=sys.stderr)
        return 1
    return 0


# ---------------------------------------------------------------------------------------
# sample a trained model (--checkpoint)
# ---------------------------------------------------------------------------------------
def _display_range(x: np.ndarray, data_cfg: dict[str, Any]) -> tuple[float, float]:
    """Data-space range shown by image grids: the min-max range of the training map, else robust quantiles."""
    shift, scale = float(data_cfg["shift"]), float(data_cfg["scale"])
    if (data_cfg.get("params") or {}).get("scaling") == "minmax":
        return shift - scale, shift + scale
    finite = x[np.isfinite(x)]
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = (float(v) for v in np.quantile(finite, [0.005, 0.995]))
    return (lo, hi) if hi > lo else (lo - 0.5, lo + 0.5)


def plot_image_grid(images: Any, lo: float, hi: float, title: str = "", max_images: int = 64) -> Any:
    """A grid of the first ``max_images`` images ``(n, C, H, W)``, shown clipped to ``[lo, hi]``.

    One channel is drawn in grey, three as RGB; other channel counts show channel 0. NaN pixels
    are left blank. Returns a :class:`matplotlib.figure.Figure`.
    """
    from matplotlib.figure import Figure

    x = np.asarray(images, dtype=np.float64)
    if x.ndim != 4:
        raise ValueError(f"images must have shape (n, C, H, W), got {x.shape}")
    x = x[:max_images]
    n, C, H, W = x.shape
    x = np.clip((x - lo) / (hi - lo), 0.0, 1.0) if hi > lo else np.zeros_like(x)
    tiles = x.transpose(0, 2, 3, 1) if C == 3 else x[:, :1].transpose(0, 2, 3, 1)  # (n, H, W, 1 or 3)
    cols = max(1, math.ceil(math.sqrt(n)))
    rows = max(1, math.ceil(n / cols))
    pad = max(1, min(H, W) // 8)
    canvas = np.full((rows * (H + pad) + pad, cols * (W + pad) + pad, tiles.shape[-1]), 0.5)
    for i in range(n):
        r, c = divmod(i, cols)
        top, left = pad + r * (H + pad), pad + c * (W + pad)
        canvas[top : top + H, left : left + W] = tiles[i]
    side = min(9.0, max(3.0, 0.6 * cols + 1.0))
    fig = Figure(figsize=(side, side * canvas.shape[0] / canvas.shape[1] + 0.6), layout="constrained")
    ax = fig.add_subplot()
    if canvas.shape[-1] == 1:
        ax.imshow(canvas[..., 0], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    else:
        ax.imshow(canvas, vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize="medium")
    return fig


def _training_data(ckpt: dict[str, Any]) -> torch.Tensor | None:
    """The training data in data space, float64, where it can be had: regenerated toy sets, stored arrays."""
    d = ckpt["config"]["data"]
    p = d.get("params") or {}
    if d["name"] in TOY_DATASETS:
        return torch.from_numpy(toy_sample(d["name"], int(p.get("n", DEFAULT_N_DATA)), int(p.get("seed", 0))))
    stored = ckpt.get("data")
    if isinstance(stored, torch.Tensor):
        return stored.to(torch.float64) * float(d["scale"]) + float(d["shift"])
    return None


def _toy_draw(name: str) -> Callable[[int, torch.Generator], torch.Tensor]:
    def draw(m: int, generator: torch.Generator) -> torch.Tensor:
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        return torch.from_numpy(toy_sample(name, m, seed))

    return draw


def _data_label(data_cfg: dict[str, Any]) -> str:
    p = data_cfg.get("params") or {}
    if data_cfg["name"] == "array" and p.get("source"):
        return str(p["source"]) + (f":{p['var']}" if p.get("var") else "")
    return str(data_cfg["name"])


def _cmd_sample_checkpoint(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from .training import load_checkpoint, read_checkpoint

    start = time.perf_counter()
    sub: argparse.ArgumentParser = args.subparser
    if args.sampler is None:
        ckpt_sde = read_checkpoint(args.checkpoint)["config"]["sde"]["class"]
        args.sampler = DEFAULT_SAMPLER.get(next((k for k, c in SDES.items() if c.__name__ == ckpt_sde), ""), "pc")
    _check_option_combinations(args, sub)
    if args.target is not None:
        sub.error("argument --target: does not apply with --checkpoint (the model samples its training data)")

    path: Path = args.checkpoint
    ckpt = read_checkpoint(path)  # CheckpointError (a ValueError): missing, truncated, corrupt -> exit 2
    cfg = ckpt["config"]
    sde = sde_from_config(cfg["sde"])
    if args.sde is not None and type(sde) is not SDES[args.sde]:
        key = next((k for k, c in SDES.items() if type(sde) is c), type(sde).__name__)
        sub.error(
            f"argument --sde: the checkpoint was trained with {type(sde).__name__} ({key}), not --sde "
            f"{args.sde}; omit --sde or pass --sde {key}"
        )
    if args.eps is not None and args.eps >= sde.T:
        sub.error(f"argument --eps: must be smaller than the SDE's end time T = {sde.T:g}, got {args.eps:g}")
    data_cfg = cfg["data"]
    feature_shape = tuple(int(s) for s in data_cfg["feature_shape"])
    is_image = len(feature_shape) == 3
    n = args.n_samples or (64 if is_image else 10_000)
    sampler = build_sampler(args)
    sampler.check(sde)
    out = _prepare_out(args.out, sub)

    import matplotlib

    matplotlib.use("Agg")
    from .plotting import plot_samples, save_figure

    shift, scale = float(data_cfg["shift"]), float(data_cfg["scale"])
    label = _data_label(data_cfg)
    step = int(ckpt["step"])
    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        _, model, _ = load_checkpoint(path, ema=True, device=args.device)
        model.to(DTYPES[args.dtype])
        ds = sample(
            sde,
            model,
            sampler,
            shape=(n, *feature_shape),
            seed=args.seed,
            device=args.device,
            dtype=DTYPES[args.dtype],
            save_at=args.save_at,
            progress=not args.quiet,
        )
        x_data = (ds["x"].isel(time=-1) * scale + shift).drop_vars("time")
        x_data.attrs = {
            "long_name": "final state in data space",
            "description": "x at the last saved time mapped back to data space: x * scale + shift",
        }
        ds["x_data"] = x_data
        ds.attrs.update(
            checkpoint=str(path),
            checkpoint_step=step,
            data=label,
            data_shift=shift,
            data_scale=scale,
            command=shlex.join([PROG, *argv]),
        )
        final = torch.from_numpy(np.asarray(x_data.values, dtype=np.float64))
        finite = bool(torch.isfinite(final).all())
        train_data = _training_data(ckpt) if len(feature_shape) == 1 else None
        ev = None
        reference_desc = ""
        if finite and feature_shape == (2,) and data_cfg["name"] in TOY_DATASETS and train_data is not None:
            # a random subset of the training data of the samples' size (equal sizes: the fast exact SW path);
            # the floor is conditional on it: fresh toy sets of n points against the same subset
            perm = torch.randperm(len(train_data), generator=torch.Generator().manual_seed(1000 * (args.seed + 1)))
            reference = train_data[perm[:n]]
            reference_desc = (
                f"{len(reference)} random points of the training data ({len(train_data)} points of {label}, data space)"
            )
            sw = metrics.sliced_wasserstein(final, reference, projections=SW_PROJECTIONS)
            floor = metrics.metric_floor(
                "sliced_wasserstein",
                _toy_draw(data_cfg["name"]),
                n,
                pairs=FLOOR_PAIRS,
                seed=args.seed + 1,
                reference=reference,
                projections=SW_PROJECTIONS,
            )
            ev = (sw, floor)
    finally:
        torch.set_num_threads(threads)

    if ev is not None:
        sw, floor = ev
        ds.attrs.update(
            {
                "metric_sw2": sw,
                "metric_sw2_projections": SW_PROJECTIONS,
                "metric_sw2_reference": reference_desc,
                "metric_sw2_floor_mean": floor.mean,
                "metric_sw2_floor_std": floor.std,
                "metric_sw2_floor_pairs": len(floor.values),
                "metric_sw2_floor_threshold": floor.threshold(FLOOR_K),
                "metric_sw2_floor_k": FLOOR_K,
                "metric_sw2_within_floor": int(floor.contains(sw, k=FLOOR_K)),
            }
        )

    nc_path, png_path = out / "samples.nc", out / "samples.png"
    _write_netcdf(ds, nc_path)
    written = [nc_path]
    title = f"{label} model (step {step})"
    fig = None
    if len(feature_shape) == 1:
        plot_ds = ds[["x"]].assign(x=ds["x"] * scale + shift)
        plot_ds.attrs = {**ds.attrs, "target": title}
        reference = None
        if train_data is not None:
            idx = torch.randperm(len(train_data), generator=torch.Generator().manual_seed(args.seed))[:n]
            reference = train_data[idx]
        fig = plot_samples(plot_ds, target=None, reference=reference)
        legend = fig.axes[0].get_legend()
        for text in legend.get_texts() if legend is not None else ():
            text.set_text(text.get_text().replace("exact samples", "training data"))
    elif is_image:
        images = np.asarray(x_data.values, dtype=np.float64)
        lo, hi = _display_range(images, data_cfg)
        k = min(64, n)
        fig = plot_image_grid(
            images,
            lo,
            hi,
            title=f"{title}: first {k} of {n} samples, {ds.attrs['sampler']}, "
            f"NFE {ds.attrs['nfe']}\n(data space, shown in [{lo:g}, {hi:g}])",
        )
    if fig is not None:
        save_figure(fig, png_path)
        written.append(png_path)
    elif png_path.exists():
        png_path.unlink()  # a figure of an earlier run would not belong to these samples

    a = ds.attrs
    lines = [
        f"{PROG} sample: checkpoint {path} (step {step}; data {label}, feature shape {feature_shape}), n = {n}, "
        f"seed {args.seed}, {a['dtype']} on {a['device']}",
        f"  SDE        {a['sde']}({_params_text(_json_dict(a['sde_params']))})",
        f"  sampler    {a['sampler']}({_params_text(_json_dict(a['sampler_params']))})",
        f"  NFE        {a['nfe']}",
        f"  wall time  {a['wall_time_s']:.2f} s sampling, {time.perf_counter() - start:.2f} s in all",
    ]
    if not finite:
        lines.append("  metrics    skipped: the final samples contain NaN or inf")
    elif ev is not None:
        sw, floor = ev
        thr = floor.threshold(FLOOR_K)
        verdict = (
            f"within floor (mean + {FLOOR_K:g} sd = {thr:.4g})"
            if floor.contains(sw, k=FLOOR_K)
            else f"ABOVE floor (mean + {FLOOR_K:g} sd = {thr:.4g})"
        )
        lines += [
            f"  SW2        {sw:.4g} to {reference_desc}; {SW_PROJECTIONS} projections, samples at t = "
            f"{float(ds['time'][-1]):.3g}",
            f"  floor      {floor.mean:.4g} ± {floor.std:.2g} (SW2 of {len(floor.values)} fresh sets of {n} points of "
            f"{label} to the same points): {verdict}",
        ]
    lines.append(f"  wrote      {', '.join(str(p) for p in written)}")
    print("\n".join(lines))
    if not finite:
        print(f"{PROG}: warning: the samples contain NaN or inf (try more --steps or --dtype float64)", file=sys.stderr)
        return 1
    return 0


# ---------------------------------------------------------------------------------------
# train
# ---------------------------------------------------------------------------------------
def _score_error(
    model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    sde: LinearSDE,
    mixture: GaussianMixture,
    n: int = SCORE_ERROR_POINTS,
    t_min: float = SCORE_ERROR_T_MIN,
    seed: int = 0,
) -> float:
    r"""Weighted relative score error :math:`E\,\sigma^2\|s_\theta - s\|^2 / E\,\sigma^2\|s\|^2`.

    Over :math:`t \sim U[t_{\min}, T]` and :math:`x \sim p_t` (``n`` points, one time each), with
    :math:`s` the exact score of ``mixture`` (which must be given in model space) and
    :math:`\sigma = \sigma(t)` the perturbation std. 0 for the exact score, 1 for ``s_theta = 0``.
    The points are drawn in float64 on the CPU from a generator seeded with ``seed``; the model
    is evaluated in its own dtype on its own device.
    """
    g = torch.Generator().manual_seed(seed)
    x0 = mixture.sample(n, g, dtype=torch.float64)
    t = torch.rand(n, generator=g, dtype=torch.float64) * (sde.T - t_min) + t_min
    mean, std = sde.marginal_prob(x0, t)
    std = std.reshape(n, *([1] * (x0.dim() - 1)))
    xt = mean + std * torch.randn(x0.shape, generator=g, dtype=torch.float64)
    s_true = mixture.score(sde)(xt, t)
    param = next(iter(model.parameters()), None) if isinstance(model, torch.nn.Module) else None
    like = param if param is not None else xt
    with torch.no_grad():
        s_model = model(xt.to(like), t.to(like)).to(device="cpu", dtype=torch.float64)
    w = std**2
    return float((w * (s_model - s_true) ** 2).sum() / (w * s_true**2).sum())


def _model_space_oracle(name: str, data: Dataset) -> GaussianMixture:
    """The named mixture mapped like the data: means ``(m - shift) / scale``, covariances ``C / scale^2``."""
    mix = get_target(name)
    return GaussianMixture(mix.weights, (mix.means - data.shift) / data.scale, mix.covariances / data.scale**2)


def plot_loss(history: Any, title: str = "") -> Any:
    """Loss curve of a training history (``Trainer.history_dataset()``): logged values and a running mean."""
    from matplotlib.figure import Figure

    steps = np.asarray(history["step"].values, dtype=np.float64)
    loss = np.asarray(history["loss"].values, dtype=np.float64)
    fig = Figure(figsize=(7.0, 4.2), layout="constrained")
    ax = fig.add_subplot()
    if loss.size:
        w = max(1, loss.size // 25)
        ax.plot(
            steps,
            loss,
            lw=0.7 if w > 1 else 1.2,
            alpha=0.45 if w > 1 else 1.0,
            color="C0",
            label=f"loss ({loss.size} logged values)",
        )
        if w > 1:
            smooth = np.convolve(loss, np.ones(w) / w, mode="valid")
            ax.plot(steps[w - 1 :], smooth, lw=1.8, color="C3", label=f"running mean of {w}")
        if np.all(loss[np.isfinite(loss)] > 0):
            ax.set_yscale("log")
        ax.legend(loc="upper right", fontsize="small")
    else:
        ax.text(0.5, 0.5, "no logged steps", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("denoising score-matching loss")
    ax.grid(alpha=0.3, which="both")
    if title:
        ax.set_title(title, fontsize="medium")
    return fig


def _load_training_data(args: argparse.Namespace, sub: argparse.ArgumentParser) -> tuple[Dataset, str]:
    """The data set of ``--data`` in model space, and a label for messages."""
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
    with torch.random.fork_rng(devices=[]):  # the initialisation follows --seed; the caller's RNG is untouched
        torch.manual_seed(args.seed)
        if net == "mlp":
            network = build_network("mlp", dim=fs[0], hidden=hidden)
        elif net == "unet":
            network = build_network("unet", channels=fs[0], base=hidden, groups=math.gcd(8, hidden))
        else:
            patch = 2 if fs[1] % 2 == 0 and fs[2] % 2 == 0 else 1
            network = build_network("dit", image_size=(fs[1], fs[2]), channels=fs[0], hidden=hidden, patch_size=patch)
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
) -> Any:
    """A Trainer continued from ``last``, after checking that it is the same run (SDE, network, data).

    The checkpoint's optimisation settings are kept (so that the run continues as it would have
    without the interruption): options ``given`` on the command line that differ from them are
    reported and ignored, except ``--steps``, ``--checkpoint-every`` and ``--log-every``.
    """
    from .nets import model_config
    from .sde import sde_config
    from .training import CheckpointError, Trainer, read_checkpoint

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
    if ignored:
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
    from .nets import model_config
    from .training import Trainer

    start = time.perf_counter()
    sub: argparse.ArgumentParser = args.subparser
    if args.objective is None:
        args.objective = DEFAULT_OBJECTIVE.get(args.sde, "dsm")
    if args.parameterization is None:
        args.parameterization = "velocity" if args.objective == "flow_matching" else "eps"
    # TrainConfig options default to None, so that a resumed run can tell what was asked for
    given = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(TrainConfig)
        if f.name != "steps" and getattr(args, f.name) is not None
    }
    config = TrainConfig(**{**dataclasses.asdict(TrainConfig()), **given, "steps": args.steps})
    args.seed = config.seed
    data, label = _load_training_data(args, sub)
    sde = SDES[args.sde]()
    model = _build_score_model(args, data, sde, label)
    name = args.data if args.data in DATASETS else Path(args.data).stem
    out = _prepare_out(args.out if args.out is not None else Path("runs") / name, sub, TRAIN_FILES)
    last = out / "last.pt"

    import matplotlib

    matplotlib.use("Agg")
    from .plotting import save_figure

    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        if args.resume and last.exists():
            trainer = _resume_trainer(last, sde, model, data, config, given, out, args.device)
            print(f"resuming from {last} at step {trainer.step} (to step {args.steps})", flush=True)
        else:
            if last.exists():
                print(
                    f"{PROG}: note: --no-resume: starting over at step 0; the checkpoints in {out} are replaced",
                    file=sys.stderr,
                )
            trainer = Trainer(sde, model, data, config, out_dir=out, device=args.device)
        first = trainer.step
        t0 = time.perf_counter()
        if trainer.step >= args.steps:
            print(f"already at step {trainer.step} >= --steps {args.steps}: nothing to train", flush=True)
        else:
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
                print(f"{PROG}: error: {err} (checkpoints up to the last one before it are in {out})", file=sys.stderr)
                return 1
        train_s = time.perf_counter() - t0
        trained = trainer.step - first
        score_err = None
        if data.name in ORACLE_DATASETS:
            score_err = _score_error(trainer.ema, sde, _model_space_oracle(data.name, data))
    finally:
        torch.set_num_threads(threads)

    history = trainer.history_dataset()
    net_name = model_config(trainer.model)["network"]["name"]
    png = save_figure(
        plot_loss(
            history,
            f"{label} · {type(sde).__name__} · {net_name} ({trainer.model.parameterization}) · {trainer.step} steps",
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
        f"({n_params:,} parameters, {trainer.model.parameterization}) on {trainer.device}",
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
