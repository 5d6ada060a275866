"""Command-line interface: ``scoresde sample`` (also ``python -m scoresde sample``).

``scoresde sample`` draws samples of a 2-D Gaussian-mixture target (default: the 8-Gaussian
ring) through the reverse-time SDE driven by the target's exact score, writes the trajectory
as ``<out>/samples.nc`` and a figure ``<out>/samples.png`` (both atomically), and reports the
sliced-Wasserstein distance to exact samples next to its statistical floor, and a mode-weight
check. Run ``scoresde sample --help`` for the options.

Exit codes: 0 success, 1 the samples contain NaN/inf (files are still written) or writing
failed, 2 bad arguments or options the library rejects, 130 interrupted.
"""

from __future__ import annotations

import argparse
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
from .mixture import TARGETS, GaussianMixture, get_target
from .samplers import CORRECTORS, PREDICTORS, EulerMaruyama, PredictorCorrector, ProbabilityFlowODE, Sampler, TorchSDE
from .sampling import sample
from .sde import VESDE, VPSDE, LinearSDE, SubVPSDE

__all__ = ["main", "build_parser"]

PROG = "scoresde"

SDES: dict[str, Callable[[], LinearSDE]] = {"vp": VPSDE, "subvp": SubVPSDE, "ve": VESDE}
SAMPLERS: dict[str, str] = {
    "pc": "PredictorCorrector (reverse diffusion + Langevin corrector), default 1000 steps",
    "em": "EulerMaruyama on the reverse SDE, default 1000 steps",
    "ode": "ProbabilityFlowODE, scipy RK45 with error control (--rtol/--atol; --steps ignored)",
    "ode-euler": "ProbabilityFlowODE, fixed-step Euler, default 100 steps",
    "ode-heun": "ProbabilityFlowODE, fixed-step Heun (2 NFE per step), default 100 steps",
    "torchsde": "TorchSDE, torchsde's srk (SRA1) scheme, 3 NFE per step, default 1000 steps",
}
DTYPES = {"float32": torch.float32, "float64": torch.float64}

#: sliced-Wasserstein settings of the report (the floor uses the same projections)
SW_PROJECTIONS = 500
FLOOR_PAIRS = 8
FLOOR_K = 3.0
#: family-wise false-alarm rate of the mode-weight check: that of one two-sided 3-sigma test
MODE_FWER = 2 * NormalDist().cdf(-3.0)

OUTPUT_FILES = ("samples.nc", "samples.png")


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


def _device(text: str) -> torch.device:
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"invalid device {text!r}; use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(
                f"{text!r} requested but CUDA is not available on this machine "
                "(torch.cuda.is_available() is False); use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(
                f"{text!r} requested but only {torch.cuda.device_count()} CUDA device(s) are visible")
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
    """The ``scoresde`` parser, with one sub-parser per command (``sample``)."""
    from . import __version__

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Score-based diffusion models as SDEs: sample exact Gaussian-mixture targets "
                    "through reverse-time SDEs and probability-flow ODEs.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = commands.add_parser(
        "sample",
        help="sample a 2-D target with its exact score; write samples.nc and samples.png",
        description=(
            "Sample a 2-D Gaussian-mixture target through the reverse-time SDE (or the\n"
            "probability-flow ODE) driven by the target's exact score. Writes DIR/samples.nc\n"
            "(the trajectory as an xarray Dataset, metrics as attributes) and DIR/samples.png,\n"
            "and reports NFE, wall time, the sliced-Wasserstein distance to exact samples next\n"
            "to its statistical floor, and a mode-weight check."
        ),
        epilog="samplers:\n" + "\n".join(f"  {k:<10} {v}" for k, v in SAMPLERS.items())
               + "\n\nexample:\n  scoresde sample --sde ve --sampler ode --n-samples 2000 --out out/ve_ode",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    g = p.add_argument_group("problem")
    g.add_argument("--target", choices=sorted(TARGETS), default="eight_gaussians",
                   help="2-D target distribution (default: %(default)s)")
    g.add_argument("--sde", choices=list(SDES), default="vp",
                   help="forward SDE: VP, sub-VP or VE, default parameters (default: %(default)s)")
    g.add_argument("--n-samples", type=_int_at_least(2, " (the metrics compare sample sets)"), default=10_000,
                   metavar="N", help="number of samples (default: %(default)s)")
    g.add_argument("--seed", type=_int_at_least(0), default=0,
                   help="seed of the prior draw and all sampler noise (default: %(default)s)")

    g = p.add_argument_group("sampler")
    g.add_argument("--sampler", choices=list(SAMPLERS), default="pc",
                   help="reverse-time integrator, see below (default: %(default)s)")
    g.add_argument("--steps", type=_int_at_least(1), default=None, metavar="N",
                   help="number of sampler steps (default: the sampler's own; ignored by --sampler ode)")
    g.add_argument("--predictor", choices=sorted(PREDICTORS), default=None,
                   help="pc only: predictor (default: reverse_diffusion)")
    g.add_argument("--corrector", choices=sorted(CORRECTORS), default=None,
                   help="pc only: corrector (default: langevin)")
    g.add_argument("--snr", type=_positive_float, default=None,
                   help="pc only: corrector signal-to-noise ratio (default: 0.16)")
    g.add_argument("--rtol", type=_positive_float, default=None, help="ode only: relative tolerance (default: 1e-5)")
    g.add_argument("--atol", type=_positive_float, default=None, help="ode only: absolute tolerance (default: 1e-5)")
    g.add_argument("--eps", type=_positive_float, default=None,
                   help="final time of the reverse process (default: 1e-3)")
    g.add_argument("--denoise", action="store_true",
                   help="finish with the Tweedie denoising step (one more NFE) and compare with the "
                        "target itself instead of its marginal at t = eps")

    g = p.add_argument_group("run and output")
    g.add_argument("--device", type=_device, default="cpu", help="torch device: cpu, cuda, cuda:N (default: cpu)")
    g.add_argument("--dtype", choices=list(DTYPES), default="float32",
                   help="precision of the integration (default: %(default)s)")
    g.add_argument("--save-at", type=_int_at_least(2), default=11, metavar="K",
                   help="number of saved states, evenly spaced in time from T to eps (default: %(default)s)")
    g.add_argument("--out", type=Path, default=Path("out"), metavar="DIR",
                   help="output directory, created if needed; samples.nc and samples.png in it are "
                        "replaced (default: out)")
    g.add_argument("--threads", type=_int_at_least(0), default=1, metavar="N",
                   help="torch CPU threads; 0 keeps torch's default (default: 1: the 2-D problems are too "
                        "small for intra-op parallelism, which is much slower when cores are shared)")
    g.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_sample, subparser=p)
    return parser


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
        pc: dict[str, Any] = {k: v for k, v in (("predictor", args.predictor), ("corrector", args.corrector),
                                                 ("snr", args.snr)) if v is not None}
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
    raise CLIError(f"unknown sampler {kind!r}")  # unreachable: argparse checks the choices


def _check_option_combinations(args: argparse.Namespace, sub: argparse.ArgumentParser) -> None:
    for opt in ("predictor", "corrector", "snr"):
        if getattr(args, opt) is not None and args.sampler != "pc":
            sub.error(f"argument --{opt}: only applies to --sampler pc (got --sampler {args.sampler})")
    for opt in ("rtol", "atol"):
        if getattr(args, opt) is not None and args.sampler != "ode":
            sub.error(f"argument --{opt}: only applies to --sampler ode (got --sampler {args.sampler})")
    if args.steps is not None and args.sampler == "ode":
        print(f"{PROG}: warning: --steps is ignored by --sampler ode (adaptive RK45; use --rtol/--atol, or "
              "--sampler ode-euler / ode-heun for fixed steps)", file=sys.stderr)


def _prepare_out(out: Path, sub: argparse.ArgumentParser) -> Path:
    """Create the output directory or fail with a message naming --out, before any sampling."""
    if out.exists() and not out.is_dir():
        sub.error(f"argument --out: {str(out)!r} exists and is not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        sub.error(f"argument --out: cannot create directory {str(out)!r}: {err.strerror or err}")
    for name in OUTPUT_FILES:
        if (out / name).is_dir():
            sub.error(f"argument --out: {str(out / name)!r} is a directory; cannot write {name} there")
    probe = out / f".{PROG}-write-test"
    try:
        probe.touch()
        probe.unlink()
    except OSError as err:
        sub.error(f"argument --out: directory {str(out)!r} is not writable: {err.strerror or err}")
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


def expected_mode_fractions(reference: GaussianMixture, n: int, generator: torch.Generator,
                            chunk: int = 1_000_000) -> tuple[np.ndarray, int]:
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
    floor = metrics.metric_floor("sliced_wasserstein", draw, n, pairs=FLOOR_PAIRS, seed=seed + 1,
                                 projections=SW_PROJECTIONS)
    expected, m = expected_mode_fractions(reference, n, torch.Generator().manual_seed(base + 501))
    modes = metrics.mode_weight_test(final, reference.means, expected, k=mode_limit(reference.n_components))
    return Evaluation(sw=sw, floor=floor, within=floor.contains(sw, k=FLOOR_K), modes=modes,
                      expected=expected, reference_draws=m, exact=exact)


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


def _format_report(ds: Any, args: argparse.Namespace, target_name: str, ev: Evaluation | None,
                   reference_desc: str, total_s: float, paths: Sequence[Path]) -> str:
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
        verdict = (f"within floor (mean + {FLOOR_K:g} sd = {ev.floor.threshold(FLOOR_K):.4g})" if ev.within
                   else f"ABOVE floor (mean + {FLOOR_K:g} sd = {ev.floor.threshold(FLOOR_K):.4g})")
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
            lines.append("             fraction nearest each mode centre / exact probability: "
                         + "  ".join(f"{f:.3f}/{e:.3f}" for f, e in zip(fr, ev.expected, strict=True)))
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
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}"
                     for k, v in params.items())


def _write_netcdf(ds: Any, path: Path) -> None:
    from .plotting import atomic_path

    with atomic_path(path) as tmp:
        ds.to_netcdf(tmp)


def _cmd_sample(args: argparse.Namespace, argv: Sequence[str]) -> int:
    start = time.perf_counter()
    sub: argparse.ArgumentParser = args.subparser
    _check_option_combinations(args, sub)

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
        ds = sample(sde, target.score(sde), sampler, shape=(args.n_samples, target.dim), seed=args.seed,
                    device=args.device, dtype=DTYPES[args.dtype], save_at=args.save_at, progress=not args.quiet)
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

    print(_format_report(ds, args, args.target, ev, reference_desc, time.perf_counter() - start,
                         (nc_path, png_path)))
    if ev is None:
        print(f"{PROG}: warning: the samples contain NaN or inf (try more --steps or --dtype float64)",
              file=sys.stderr)
        return 1
    return 0


# ---------------------------------------------------------------------------------------
# entry point
# ---------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``scoresde`` command line with ``argv`` (default ``sys.argv[1:]``); return the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
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
    except KeyboardInterrupt:
        print(f"\n{PROG}: interrupted", file=sys.stderr)
        return 130
