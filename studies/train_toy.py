"""Training acceptance study: the default MLP score network on the 8-Gaussian ring, against the exact score.

The default network (``ScoreModel(build_network("mlp", dim=2), VPSDE())``, ``torch.manual_seed(0)``) is
trained with :class:`scoresde.TrainConfig` defaults (5,000 steps, batch 512; ``--full``: 20,000) on
20,000 points of the ring, unscaled (``scaling="none"``), so that the exact score of the diffused
mixture is the oracle. Checkpoints go to ``<out>/checkpoints``; the evaluation uses the EMA and raw
models *rebuilt from the last checkpoint* (:func:`scoresde.load_checkpoint`). Measured:

(a) the weighted relative score error

    E_t E_{x~p_t} sigma(t)^2 ||s_theta(x, t) - s(x, t)||^2 / E_t E_{x~p_t} sigma(t)^2 ||s(x, t)||^2,
    t ~ U[1e-3, 1]  (20,000 points),

  for the EMA model, the raw model and the untrained network, with a delta-method standard error;
  and the same ratio resolved in t: 20 log-spaced bins of [1e-3, 1], 2,000 points per bin with t
  log-uniform inside the bin (common random numbers across models). "Contribution" is a bin's share
  of the global (t-uniform) error: width-weighted numerator of the bin over the width-weighted
  denominator of all bins, so the contributions add up to the global error. This answers "where in t
  does the network fail?".
(b) 10,000 samples from the EMA network through ``PredictorCorrector()``, ``ProbabilityFlowODE()`` and
  ``EulerMaruyama()`` (seed 1) and, as a control that isolates the sampler's own error, the same
  samplers driven by the exact score. Sliced Wasserstein (SW, 500 projections) to an exact reference
  sample of p_eps (eps = 1e-3), against the reference-conditional floor (``metric_floor(...,
  reference=ref)``, 16 fresh exact sets against the same reference). Acceptance: SW / floor mean <= 3
  for the network samples. Also the mode-weight test (max binomial |z| over the 8 modes).
(c) the loss history, the training wall time and steps/s (including checkpoint writes).

Usage::

    python -m studies.train_toy                 # default size: about 3 min on a loaded 2-core machine
                                                # (training about 40 s of it, 1 thread)
    python -m studies.train_toy --full          # 20,000 training steps
    python -m studies.train_toy --docs          # the documentation build's size: 500 steps, 1,000 samples
    python -m studies.train_toy --out DIR --quiet --threads N
    python -m studies.train_toy --resume        # continue from <out>/checkpoints/last.pt

Writes to ``--out`` (default ``studies/output/train_toy/``): ``train_toy.nc`` (history, error vs t,
global errors, sampling metrics, samples; provenance attributes), ``figure.png``/``figure.svg``,
``table.md`` and one CSV per table, and ``checkpoints/``. The markdown tables are printed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
import xarray as xr  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

import scoresde as sd  # noqa: E402
from scoresde import metrics  # noqa: E402
from scoresde.datasets import load_dataset  # noqa: E402
from scoresde.nets import ScoreModel, build_network  # noqa: E402
from scoresde.training import TrainConfig, Trainer, load_checkpoint, train  # noqa: E402

from . import _io  # noqa: E402

STUDY = "studies.train_toy"
DEFAULT_OUT = Path(__file__).resolve().parent / "output" / "train_toy"

RING = sd.eight_gaussians()
EPS = 1e-3  # smallest time of the error evaluation and of the samplers
ACCEPT_RATIO = 3.0  # acceptance: SW <= 3 x floor mean
SCORE_KINDS = ("network", "exact")
MODELS = ("EMA", "raw", "initial")


@dataclass(frozen=True)
class Config:
    """Sizes and seeds of one run."""

    steps: int = TrainConfig().steps  # 5000
    n_data: int = 20_000
    n_err: int = 20_000  # points of the global (t-uniform) score error
    bins: int = 20  # log-spaced t bins of [EPS, 1]
    n_bin: int = 2_000  # points per t bin
    n_samples: int = 10_000
    floor_pairs: int = 16
    seed_model: int = 0  # torch.manual_seed before building the network
    seed_data: int = 0  # load_dataset seed
    seed_err: int = 7  # evaluation points of the score error
    seed_sample: int = 1  # prior draw and noise of the samplers
    seed_reference: int = 12345  # exact reference sample of p_eps
    seed_floor: int = 1  # metric_floor's base seed (generators 1000..1015)


DEFAULT = Config()
FULL = replace(DEFAULT, steps=20_000)
#: the documentation build's size (``--docs``): every figure and table from a short training run and fewer points
DOCS = replace(DEFAULT, steps=500, n_data=5_000, n_err=5_000, n_bin=500, n_samples=1_000, floor_pairs=4)


def samplers() -> dict[str, sd.Sampler]:
    """The samplers of part (b), at their defaults."""
    return {"PC": sd.PredictorCorrector(), "ODE-RK45": sd.ProbabilityFlowODE(), "EM": sd.EulerMaruyama()}


# ---------------------------------------------------------------------------------------
# (a) score error against the exact score
# ---------------------------------------------------------------------------------------
@dataclass
class Points:
    """Evaluation points x_t ~ p_t with their times, sigma(t)^2 and the exact score (float64)."""

    x: torch.Tensor
    t: torch.Tensor
    w: torch.Tensor
    score: torch.Tensor


def make_points(sde: sd.LinearSDE, t: torch.Tensor, g: torch.Generator) -> Points:
    """x_0 from the ring, x_t = s(t) x_0 + sigma(t) z, and the exact score of p_t at x_t."""
    x0 = RING.sample(t.shape[0], g, dtype=torch.float64)
    mean, std = sde.marginal_prob(x0, t)
    xt = mean + std[:, None] * torch.randn(x0.shape, generator=g, dtype=torch.float64)
    return Points(xt, t, std**2, RING.score(sde)(xt, t))


def error_terms(model: torch.nn.Module, p: Points) -> tuple[np.ndarray, np.ndarray]:
    """Per point: numerator sigma^2 ||s_theta - s||^2 and denominator sigma^2 ||s||^2 (float64)."""
    with torch.no_grad():
        s_model = model(p.x.float(), p.t.float()).double()
    num = p.w * ((s_model - p.score) ** 2).sum(1)
    den = p.w * (p.score**2).sum(1)
    return num.numpy(), den.numpy()


def ratio_and_se(num: np.ndarray, den: np.ndarray) -> tuple[float, float]:
    """R = mean(num) / mean(den) and its delta-method standard error sqrt(var(num - R den) / n) / mean(den)."""
    r = float(num.mean() / den.mean())
    se = float(np.std(num - r * den, ddof=1) / np.sqrt(num.size) / den.mean())
    return r, se


def score_errors(models: dict[str, torch.nn.Module], sde: sd.LinearSDE, cfg: Config) -> xr.Dataset:
    """Global weighted relative score error (t ~ U[EPS, 1]) and the same per log-spaced t bin."""
    g = torch.Generator().manual_seed(cfg.seed_err)
    glob = make_points(sde, torch.rand(cfg.n_err, generator=g, dtype=torch.float64) * (1 - EPS) + EPS, g)
    edges = np.logspace(np.log10(EPS), 0.0, cfg.bins + 1)
    binned = []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        u = torch.rand(cfg.n_bin, generator=g, dtype=torch.float64)
        binned.append(make_points(sde, torch.exp(np.log(lo) + u * np.log(hi / lo)), g))
    names = list(models)
    err, se = np.zeros(len(names)), np.zeros(len(names))
    rel, rel_se = np.zeros((len(names), cfg.bins)), np.zeros((len(names), cfg.bins))
    num_mean, den_mean = np.zeros((len(names), cfg.bins)), np.zeros(cfg.bins)
    for i, name in enumerate(names):
        err[i], se[i] = ratio_and_se(*error_terms(models[name], glob))
        for b, pts in enumerate(binned):
            num, den = error_terms(models[name], pts)
            rel[i, b], rel_se[i, b] = ratio_and_se(num, den)
            num_mean[i, b], den_mean[b] = num.mean(), den.mean()
    width = np.diff(edges)
    contribution = num_mean * width / float((den_mean * width).sum())
    t_mid = np.sqrt(edges[:-1] * edges[1:])
    sigma_mid = sde.std(torch.as_tensor(t_mid)).numpy()
    return xr.Dataset(
        {
            "score_error": (
                ("model",),
                err,
                {"long_name": f"E sigma^2 ||s_theta - s||^2 / E sigma^2 ||s||^2, t ~ U[{EPS:g}, 1]"},
            ),
            "score_error_se": (("model",), se, {"long_name": "delta-method standard error of score_error"}),
            "rel_error_t": (("model", "t_bin"), rel, {"long_name": "weighted relative score error in the t bin"}),
            "rel_error_t_se": (("model", "t_bin"), rel_se, {"long_name": "its standard error"}),
            "contribution_t": (
                ("model", "t_bin"),
                contribution,
                {
                    "long_name": "share of the t-uniform global error from the bin (sums to the "
                    "binned estimate of score_error)"
                },
            ),
            "num_t": (("model", "t_bin"), num_mean, {"long_name": "E sigma^2 ||s_theta - s||^2 in the bin"}),
            "den_t": (("t_bin",), den_mean, {"long_name": "E sigma^2 ||s||^2 in the bin"}),
        },
        coords={
            "model": names,
            "t_bin": np.arange(cfg.bins),
            "t_lo": ("t_bin", edges[:-1]),
            "t_hi": ("t_bin", edges[1:]),
            "t_mid": ("t_bin", t_mid, {"long_name": "geometric bin centre"}),
            "sigma_mid": ("t_bin", sigma_mid, {"long_name": "sigma(t_mid)"}),
        },
        attrs={"n_err": cfg.n_err, "n_bin": cfg.n_bin, "seed_err": cfg.seed_err},
    )


# ---------------------------------------------------------------------------------------
# (b) samples against exact samples of p_eps
# ---------------------------------------------------------------------------------------
def run_sampling(score_fns: dict[str, Callable], sde: sd.LinearSDE, cfg: Config, progress: bool) -> xr.Dataset:
    """Every sampler with the network and with the exact score: NFE, wall time, SW vs the floor, modes."""
    snames, n = list(samplers()), cfg.n_samples
    p_eps = RING.marginal(sde, EPS)
    ref = p_eps.sample(n, torch.Generator().manual_seed(cfg.seed_reference))
    floor = metrics.metric_floor(
        metrics.sliced_wasserstein, p_eps.sample, n, pairs=cfg.floor_pairs, seed=cfg.seed_floor, reference=ref
    )
    shape = (len(snames), len(SCORE_KINDS))
    out = {k: np.full(shape, np.nan) for k in ("nfe", "wall_time", "sw", "mode_max_abs_z")}
    samples = np.full((*shape, n, 2), np.nan, np.float32)
    with tqdm(total=len(snames) * len(SCORE_KINDS), desc="sampling", disable=not progress, leave=False) as bar:
        for i, sname in enumerate(snames):
            for j, kind in enumerate(SCORE_KINDS):
                bar.set_postfix_str(f"{sname} {kind}")
                ds = sd.sample(
                    sde, score_fns[kind], samplers()[sname], shape=(n, 2), seed=cfg.seed_sample, progress=False
                )
                x = torch.from_numpy(ds["x"].values[-1])
                samples[i, j] = x.numpy()
                out["nfe"][i, j] = ds.attrs["nfe"]
                out["wall_time"][i, j] = ds.attrs["wall_time_s"]
                out["sw"][i, j] = metrics.sliced_wasserstein(x, ref)
                mw = metrics.mode_weight_test(x, p_eps.means, p_eps.weights)
                out["mode_max_abs_z"][i, j] = float(mw.z_scores.abs().max())
                bar.update()
    ratio = out["sw"] / floor.mean
    return xr.Dataset(
        {
            "nfe": (("sampler", "score"), out["nfe"], {"long_name": "score evaluations"}),
            "wall_time": (("sampler", "score"), out["wall_time"], {"long_name": "sampling wall time", "units": "s"}),
            "sw": (
                ("sampler", "score"),
                out["sw"],
                {"long_name": "sliced Wasserstein-2 (500 projections) to the exact reference sample of p_eps"},
            ),
            "sw_ratio": (("sampler", "score"), ratio, {"long_name": "sw / floor mean"}),
            "accepted": (
                ("sampler", "score"),
                (ratio <= ACCEPT_RATIO).astype(np.int8),
                {"long_name": f"sw <= {ACCEPT_RATIO:g} x floor mean"},
            ),
            "mode_max_abs_z": (
                ("sampler", "score"),
                out["mode_max_abs_z"],
                {"long_name": "max binomial |z| of the nearest-mode fractions"},
            ),
            "sw_floor": (
                ("pair",),
                np.asarray(floor.values),
                {"long_name": "SW of fresh exact sets of p_eps to the same reference (metric_floor, reference=ref)"},
            ),
            "samples": (("sampler", "score", "sample", "feature"), samples, {"long_name": "final samples (t = eps)"}),
            "reference": (
                ("sample", "feature"),
                ref.numpy().astype(np.float32),
                {"long_name": "exact reference sample of p_eps"},
            ),
        },
        coords={
            "sampler": snames,
            "score": list(SCORE_KINDS),
            "pair": np.arange(cfg.floor_pairs),
            "sample": np.arange(n),
            "feature": [0, 1],
            "sampler_repr": ("sampler", [repr(s) for s in samplers().values()]),
        },
        attrs={"sw_floor_mean": floor.mean, "sw_floor_sd": floor.std, "n_samples": n, "accept_ratio": ACCEPT_RATIO},
    )


# ---------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------
def clear_checkpoints(ckpt_dir: Path) -> None:
    """Remove the files an earlier run of this study left in ``ckpt_dir`` (a fresh run starts from scratch)."""
    if ckpt_dir.is_dir():
        for p in [*ckpt_dir.glob("step_*.pt"), ckpt_dir / "last.pt", ckpt_dir / "history.nc"]:
            p.unlink(missing_ok=True)


def run_training(
    sde: sd.LinearSDE, cfg: Config, ckpt_dir: Path, resume: bool, progress: bool
) -> tuple[Trainer, ScoreModel, dict[str, float]]:
    """Train the default network with TrainConfig defaults (``cfg.steps`` steps); return the trainer, a
    copy of the untrained network and the timing."""
    torch.manual_seed(cfg.seed_model)
    model = ScoreModel(build_network("mlp", dim=2), sde)
    initial = ScoreModel(build_network("mlp", dim=2), sde)
    initial.load_state_dict(model.state_dict())
    initial.eval()
    data = load_dataset("eight_gaussians", n=cfg.n_data, seed=cfg.seed_data, scaling="none")
    if not resume:
        clear_checkpoints(ckpt_dir)
    last = ckpt_dir / "last.pt"
    start_step = int(torch.load(last, weights_only=True)["step"]) if resume and last.exists() else 0
    start = time.perf_counter()
    trainer = train(sde, model, data, TrainConfig(steps=cfg.steps), out_dir=ckpt_dir, progress=progress, resume=resume)
    wall = time.perf_counter() - start
    trained = trainer.step - start_step
    return (
        trainer,
        initial,
        {"train_wall_s": wall, "steps_this_run": trained, "steps_per_s": trained / wall if wall > 0 else float("nan")},
    )


# ---------------------------------------------------------------------------------------
# tables and figure
# ---------------------------------------------------------------------------------------
def make_tables(res: xr.Dataset) -> dict[str, tuple[str, pd.DataFrame, str]]:
    """``{key: (title, raw DataFrame for the CSV, markdown)}`` for every table."""
    tables: dict[str, tuple[str, pd.DataFrame, str]] = {}
    a = res.attrs
    loss = res["loss"].values
    tail = float(np.mean(loss[-max(1, len(loss) // 10) :]))
    tr = pd.DataFrame(
        [
            {
                "steps": int(res.step.values[-1]),
                "steps this run": int(a["steps_this_run"]),
                "batch": int(a["batch_size"]),
                "train wall [s]": float(a["train_wall_s"]),
                "steps/s": float(a["steps_per_s"]),
                "final loss (last 10% of log)": tail,
                "threads": int(a["torch_threads"]),
            }
        ]
    )
    tables["training"] = (
        "Training (TrainConfig defaults; wall time includes checkpoint writes)",
        tr,
        _io.markdown_table(tr, {"train wall [s]": ".1f", "steps/s": ".0f", "final loss (last 10% of log)": ".4f"}),
    )

    glob = pd.DataFrame(
        {
            "model": res.model.values,
            "score error": res.score_error.values,
            "se": res.score_error_se.values,
            "binned estimate": res.contribution_t.sum("t_bin").values,
        }
    )
    tables["score_error"] = (
        f"Weighted relative score error E σ²‖s_θ − s‖² / E σ²‖s‖², t ~ U[{EPS:g}, 1], n = {a['n_err']} "
        "(binned estimate: the same from the t bins)",
        glob,
        _io.markdown_table(glob, {"score error": ".3e", "se": ".1e", "binned estimate": ".3e"}),
    )

    bins = pd.DataFrame({"t_lo": res.t_lo.values, "t_hi": res.t_hi.values, "sigma(t_mid)": res.sigma_mid.values})
    for m in res.model.values:
        bins[f"{m} rel error"] = res.rel_error_t.sel(model=m).values
    for m in ("EMA", "raw"):
        bins[f"{m} contribution"] = res.contribution_t.sel(model=m).values
    fmt: dict[str, str] = {"t_lo": ".2e", "t_hi": ".2e", "sigma(t_mid)": ".3f"}
    fmt |= {c: ".3e" for c in bins.columns if "rel error" in c or "contribution" in c}
    tables["error_vs_t"] = (
        f"Score error resolved in t ({res.sizes['t_bin']} log bins, {a['n_bin']} points each, t log-uniform in the "
        "bin): relative error per bin, and each bin's contribution to the t-uniform global error",
        bins,
        _io.markdown_table(bins, fmt),
    )

    rows, disp = [], []
    fm, fs = float(a["sw_floor_mean"]), float(a["sw_floor_sd"])
    for p in res.sampler.values:
        for k in res.score.values:
            r = res.sel(sampler=p, score=k)
            rows.append(
                {
                    "sampler": p,
                    "score": k,
                    "NFE": int(r.nfe),
                    "wall_s": float(r.wall_time),
                    "SW": float(r.sw),
                    "floor_mean": fm,
                    "floor_sd": fs,
                    "ratio": float(r.sw_ratio),
                    "accepted": int(r.accepted),
                    "mode_max_abs_z": float(r.mode_max_abs_z),
                }
            )
            disp.append(
                {
                    "sampler": p,
                    "score": k,
                    "NFE": int(r.nfe),
                    "wall [s]": f"{float(r.wall_time):.1f}",
                    "SW": f"{float(r.sw):.4f}",
                    "floor (ref)": f"{fm:.4f} ± {fs:.4f}",
                    "SW / floor mean": f"{float(r.sw_ratio):.2f}",
                    f"verdict (≤ {ACCEPT_RATIO:g})": "PASS" if int(r.accepted) else "FAIL",
                    "modes max |z|": f"{float(r.mode_max_abs_z):.2f}",
                }
            )
    tables["sampling"] = (
        f"Samples (n = {a['n_samples']}, seed {a['seed_sample']}) from the EMA network and, as a control, from the "
        f"exact score: SW to an exact reference sample of p_eps vs the reference-conditional floor "
        f"({res.sizes['pair']} fresh exact sets); acceptance SW ≤ {ACCEPT_RATIO:g} × floor mean "
        "(network rows)",
        pd.DataFrame(rows),
        _io.markdown_table(pd.DataFrame(disp)),
    )
    return tables


def verdict_lines(res: xr.Dataset) -> list[str]:
    """One acceptance line per sampler (network score)."""
    lines = []
    for p in res.sampler.values:
        r = res.sel(sampler=p, score="network")
        lines.append(
            f"- {p}: SW / floor mean = {float(r.sw_ratio):.2f} → "
            f"{'PASS' if int(r.accepted) else 'FAIL'} (exact-score control: "
            f"{float(res.sw_ratio.sel(sampler=p, score='exact')):.2f}; modes max |z| = "
            f"{float(r.mode_max_abs_z):.2f}, not part of the acceptance)"
        )
    return lines


def make_figure(res: xr.Dataset, scatter: str = "PC") -> plt.Figure:
    """2 x 2: (a) loss, (b) score error vs t, (c) samples vs exact, (d) SW / floor per sampler."""
    fig, axes = plt.subplots(2, 2, figsize=(12, 10))
    ax = axes[0, 0]
    step, loss = res.step.values, res["loss"].values
    k = max(1, len(loss) // 50)
    smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
    ax.plot(step, loss, color="0.7" if k > 1 else "C0", lw=0.6, label="logged loss")
    if k > 1:
        ax.plot(step[k - 1 :], smooth, color="C0", lw=1.5, label=f"running mean ({k} logs)")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.set(
        xlabel="step",
        ylabel="DSM loss (sigma² weighting)",
        title=f"(a) loss; {res.attrs['train_wall_s']:.0f} s, {res.attrs['steps_per_s']:.0f} steps/s",
    )

    ax = axes[0, 1]
    colors = {"EMA": "C0", "raw": "C1", "initial": "0.5"}
    for m in res.model.values:
        r = res.rel_error_t.sel(model=m)
        ls = "--" if m == "initial" else "-"
        ax.errorbar(
            res.t_mid,
            r,
            yerr=2 * res.rel_error_t_se.sel(model=m),
            color=colors[m],
            ls=ls,
            marker="o",
            ms=3,
            capsize=2,
            label=f"{m} (global {float(res.score_error.sel(model=m)):.3g})",
        )
    ax.plot(
        res.t_mid,
        res.contribution_t.sel(model="EMA"),
        color="C0",
        ls=":",
        marker="x",
        ms=4,
        label="EMA contribution to global",
    )
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="t",
        ylabel="E σ²‖s_θ − s‖² / E σ²‖s‖² in bin",
        title="(b) where the network fails: relative score error vs t (± 2 se)",
    )
    ax.legend(fontsize=8)

    ax = axes[1, 0]
    n = min(3000, res.sizes["sample"])
    ref = res.reference.values[:n]
    xs = res.samples.sel(sampler=scatter, score="network").values[:n]
    ax.scatter(ref[:, 0], ref[:, 1], s=2, alpha=0.4, color="0.3", label="exact p_eps", rasterized=True)
    ax.scatter(xs[:, 0], xs[:, 1], s=2, alpha=0.4, color="C0", label=f"EMA network, {scatter}", rasterized=True)
    ax.set_aspect("equal")
    ax.legend(fontsize=8, markerscale=4)
    ax.set(title=f"(c) {scatter} samples vs exact ({n} each)")

    ax = axes[1, 1]
    snames = list(res.sampler.values)
    x = np.arange(len(snames))
    for j, (kind, c) in enumerate((("network", "C0"), ("exact", "0.6"))):
        ax.bar(x + (j - 0.5) * 0.38, res.sw_ratio.sel(score=kind).values, width=0.38, color=c, label=f"{kind} score")
    ax.axhline(ACCEPT_RATIO, color="r", ls="--", lw=1, label=f"acceptance ({ACCEPT_RATIO:g} × floor mean)")
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks(x, snames)
    ax.legend(fontsize=8)
    ax.set(ylabel="SW / floor mean", title=f"(d) SW to exact p_eps, n = {res.attrs['n_samples']}")
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------
# entry point
# ---------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = _io.study_parser(
        STUDY,
        __doc__,
        "20,000 training steps",
        DEFAULT_OUT,
        threads_help="torch intra-op threads (default 1: small batches run fastest "
        "single-threaded on a shared machine)",
    )
    ap.add_argument(
        "--resume", action="store_true", help="continue from <out>/checkpoints/last.pt instead of starting afresh"
    )
    ap.add_argument("--steps", type=int, default=None, help=argparse.SUPPRESS)  # development: fewer steps
    ap.add_argument("--samples", type=int, default=None, help=argparse.SUPPRESS)  # development: fewer samples
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the study, write the outputs, print the tables (unless ``--quiet``); returns 0."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    out = _io.prepare(args)
    size = _io.size(args)
    cfg = {"full": FULL, "docs": DOCS}.get(size, DEFAULT)
    if args.steps is not None:
        cfg = replace(cfg, steps=args.steps)
    if args.samples is not None:
        cfg = replace(cfg, n_samples=args.samples)
    ckpt_dir = out / "checkpoints"
    progress = not args.quiet
    start = time.perf_counter()
    sde = sd.VPSDE()

    trainer, initial, timing = run_training(sde, cfg, ckpt_dir, args.resume, progress)
    _, ema, _ = load_checkpoint(ckpt_dir / "last.pt", ema=True)
    _, raw, _ = load_checkpoint(ckpt_dir / "last.pt", ema=False)
    errors = score_errors({"EMA": ema, "raw": raw, "initial": initial}, sde, cfg)
    sampling = run_sampling({"network": ema, "exact": RING.score(sde)}, sde, cfg, progress)
    hist = trainer.history_dataset()
    elapsed = time.perf_counter() - start

    res = xr.merge([hist.drop_attrs(), errors.drop_attrs(), sampling.drop_attrs()])
    res["loss"].attrs = {"long_name": "DSM loss of the logged step (batch estimate)"}
    attrs = _io.provenance(STUDY, argv, size=size, **asdict(cfg))
    res.attrs = {
        **attrs,
        **errors.attrs,
        **sampling.attrs,
        **{k: round(v, 3) for k, v in timing.items()},
        "batch_size": trainer.config.batch_size,
        "train_config": json.dumps(asdict(trainer.config)),
        "training_config": hist.attrs["config"],
        "sde": repr(sde),
        "eps": EPS,
        "checkpoint": str(ckpt_dir / "last.pt"),
        "study_wall_time_s": round(elapsed, 1),
    }
    _io.write_netcdf(res, out / "train_toy.nc")
    _io.save_figures(out, {"figure": make_figure(res)})
    acceptance = (
        f"## Acceptance (EMA network: SW ≤ {ACCEPT_RATIO:g} × reference floor mean)\n\n"
        + "\n".join(verdict_lines(res))
        + "\n"
    )
    _io.report(
        args,
        _io.write_tables(
            out,
            f"Training acceptance: MLP on the 8-Gaussian ring ({size} size)",
            attrs,
            f"{elapsed:.0f} s in all",
            make_tables(res),
            [acceptance],
        ),
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
