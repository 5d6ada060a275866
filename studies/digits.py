"""Digits study: the small U-Net trained on scikit-learn's 8x8 digits, sampled, and checked by a classifier.

The default U-Net (``build_network("unet", channels=1)``, ``ScoreModel(..., parameterization="noise")``,
``torch.manual_seed(0)``) is trained with the VP SDE on all 1,797 digits (``load_dataset("digits")``:
shape (1, 8, 8), pixels 0..16 mapped to [-1, 1]) for STEPS steps of batch 128 (other settings:
:class:`scoresde.TrainConfig` defaults; ``--full``: 4x the steps). The default step count (2,000) is
what fits in about four minutes on the shared 2-core development machine at one torch thread
(measured at tiny size: 7-9 steps/s under a concurrent load; the default run trained at 8.0 steps/s,
249 s; two threads were far slower there). Checkpoints go to ``<out>/checkpoints``.

256 images are then drawn from the EMA model with the probability-flow ODE (scipy RK45, rtol = atol
= 1e-5; seed 1): it needs a few hundred score evaluations (230 in the default run; NFE reported), against 1,000 for
``PredictorCorrector(steps=500)`` (one corrector step per predictor step), so it is the cheaper of
the two; ``--sampler pc`` uses PC instead. Samples are mapped back to pixel values with
``dataset.unscale``.

Measured, as a sanity proxy for sample quality (not a likelihood or FID): a scikit-learn
``LogisticRegression(max_iter=2000)`` fitted on a stratified 75 % split of the real digits (flattened,
pixels 0..16) is applied to the generated digits (clipped to [0, 16] for the classifier only; the
stored samples are unclipped) and to the held-out 25 % of real digits: the mean max class
probability and the histogram of predicted classes of each (and their total-variation distance),
plus two references: uniform-noise images (how confident the classifier is on garbage) and the
nearest-neighbour pixel distance of each generated digit to the 1,797 training images, next to that
of each held-out real digit to the 75 % split (copies of training images would sit near 0).

Usage::

    python -m studies.digits                 # default size, about 5 minutes on 2 cores
    python -m studies.digits --full          # 4x the training steps
    python -m studies.digits --docs          # the documentation build's size: 150 training steps, 64 samples
    python -m studies.digits --out DIR --quiet --threads N

Writes to ``--out`` (default ``studies/output/digits/``): ``digits.nc`` (samples in data space,
the reverse trajectory of 8 samples, classifier outputs, loss history; provenance attributes),
``samples.png/svg`` (16 x 16 grid of generated digits next to 256 real ones), ``trajectory.png/svg``
(8 samples at 9 times from T to eps), ``figure.png/svg`` (classifier proxy and loss), ``table.md``
and one CSV per table, and ``checkpoints/``. The markdown tables are printed.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
import xarray as xr  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402

import scoresde as sd  # noqa: E402
from scoresde.datasets import Dataset, load_dataset  # noqa: E402
from scoresde.nets import ScoreModel, build_network  # noqa: E402
from scoresde.training import TrainConfig, Trainer, load_checkpoint, train  # noqa: E402

from . import _io  # noqa: E402

STUDY = "studies.digits"
DEFAULT_OUT = Path(__file__).resolve().parent / "output" / "digits"
PIXEL_MAX = 16.0
N_CLASSES = 10


@dataclass(frozen=True)
class Config:
    """Sizes and seeds of one run."""

    steps: int = 2_000
    batch_size: int = 128
    n_samples: int = 256
    sampler: str = "ode"  # "ode": ProbabilityFlowODE() (RK45); "pc": PredictorCorrector(steps=500)
    n_strip: int = 8  # samples in the trajectory strip
    save_at: int = 9  # states of the trajectory strip, T .. eps
    test_size: float = 0.25  # held-out real digits for the classifier
    seed_model: int = 0
    seed_sample: int = 1
    seed_split: int = 0
    seed_real_grid: int = 2  # which 256 real digits are shown
    seed_noise: int = 3  # the uniform-noise control images


DEFAULT = Config()
FULL = replace(DEFAULT, steps=4 * DEFAULT.steps)
#: the documentation build's size (``--docs``): every figure and table from a short training run (the samples
#: look like blurred digits at best) and 64 samples
DOCS = replace(DEFAULT, steps=150, n_samples=64)


def make_sampler(name: str) -> sd.Sampler:
    """``ode``: the probability-flow ODE with scipy RK45; ``pc``: PredictorCorrector(steps=500)."""
    if name == "ode":
        return sd.ProbabilityFlowODE()
    if name == "pc":
        return sd.PredictorCorrector(steps=500)
    raise ValueError(f"unknown sampler {name!r}; choose 'ode' or 'pc'")


# ---------------------------------------------------------------------------------------
# training and sampling
# ---------------------------------------------------------------------------------------
def clear_checkpoints(ckpt_dir: Path) -> None:
    """Remove the files an earlier run of this study left in ``ckpt_dir`` (each run starts afresh)."""
    if ckpt_dir.is_dir():
        for p in [*ckpt_dir.glob("step_*.pt"), ckpt_dir / "last.pt", ckpt_dir / "history.nc"]:
            p.unlink(missing_ok=True)


def run_training(
    sde: sd.LinearSDE, data: Dataset, cfg: Config, ckpt_dir: Path, progress: bool
) -> tuple[Trainer, dict[str, float]]:
    """Train the default U-Net (eps parameterisation) from scratch; return the trainer and the timing."""
    torch.manual_seed(cfg.seed_model)
    model = ScoreModel(build_network("unet", channels=1), sde, parameterization="noise")
    clear_checkpoints(ckpt_dir)
    start = time.perf_counter()
    trainer = train(
        sde,
        model,
        data,
        TrainConfig(steps=cfg.steps, batch_size=cfg.batch_size),
        out_dir=ckpt_dir,
        progress=progress,
        resume=False,
    )
    wall = time.perf_counter() - start
    n_params = sum(p.numel() for p in model.parameters())
    return trainer, {"train_wall_s": wall, "steps_per_s": cfg.steps / wall, "n_params": n_params}


def run_sampling(sde: sd.LinearSDE, score_fn: torch.nn.Module, cfg: Config, progress: bool) -> xr.Dataset:
    """``cfg.n_samples`` images from ``score_fn`` with ``cfg.save_at`` saved states (model space)."""
    return sd.sample(
        sde,
        score_fn,
        make_sampler(cfg.sampler),
        shape=(cfg.n_samples, 1, 8, 8),
        seed=cfg.seed_sample,
        save_at=cfg.save_at,
        progress=progress,
    )


# ---------------------------------------------------------------------------------------
# classifier proxy
# ---------------------------------------------------------------------------------------
def nearest_distance(x: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Euclidean pixel distance (0..16 scale) of every row of ``x`` to its nearest row of ``ref``."""
    d2 = (x**2).sum(1)[:, None] - 2 * x @ ref.T + (ref**2).sum(1)[None, :]
    return np.sqrt(np.maximum(d2.min(1), 0.0))


def classify(generated: np.ndarray, cfg: Config) -> dict[str, np.ndarray | float]:
    """Fit LogisticRegression on the real training split; class probabilities of the generated digits
    (clipped to [0, 16]), of the held-out real digits and of uniform-noise images; nearest-neighbour distances."""
    digits = load_digits()
    X, y = digits.data.astype(np.float64), digits.target
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=cfg.test_size, random_state=cfg.seed_split, stratify=y)
    clf = LogisticRegression(max_iter=2000).fit(X_tr, y_tr)
    gen = np.clip(generated.reshape(generated.shape[0], -1), 0.0, PIXEL_MAX)
    noise = np.random.default_rng(cfg.seed_noise).uniform(0.0, PIXEL_MAX, (generated.shape[0], X.shape[1]))
    return {
        "prob_generated": clf.predict_proba(gen),
        "prob_real": clf.predict_proba(X_te),
        "prob_noise": clf.predict_proba(noise),
        "label_real": y_te,
        "test_accuracy": float(clf.score(X_te, y_te)),
        "nn_generated": nearest_distance(gen, X),
        "nn_real": nearest_distance(X_te, X_tr),
    }


def class_fractions(prob: np.ndarray) -> np.ndarray:
    """Fraction of images predicted as each class (argmax of the probabilities)."""
    return np.bincount(prob.argmax(1), minlength=N_CLASSES) / prob.shape[0]


# ---------------------------------------------------------------------------------------
# images
# ---------------------------------------------------------------------------------------
def mosaic(images: np.ndarray, rows: int, cols: int, gap: int = 1) -> np.ndarray:
    """Tile ``rows * cols`` images of shape (H, W) into one array, NaN gaps (drawn as background)."""
    h, w = images.shape[-2:]
    out = np.full((rows * (h + gap) - gap, cols * (w + gap) - gap), np.nan)
    for k in range(min(rows * cols, images.shape[0])):
        r, c = divmod(k, cols)
        out[r * (h + gap) : r * (h + gap) + h, c * (w + gap) : c * (w + gap) + w] = images[k]
    return out


def _show(ax: plt.Axes, img: np.ndarray, title: str) -> None:
    cmap = plt.get_cmap("gray_r").copy()
    cmap.set_bad("#d0d8e8")
    ax.imshow(img, cmap=cmap, vmin=0.0, vmax=PIXEL_MAX, interpolation="nearest")
    ax.set_title(title, fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])


def samples_figure(gen: np.ndarray, real: np.ndarray, side: int = 16) -> plt.Figure:
    """Generated digits (left) next to as many real digits (right), each a ``side x side`` grid."""
    fig, axes = plt.subplots(1, 2, figsize=(14, 7.3))
    _show(axes[0], mosaic(gen[:, 0], side, side), f"generated ({side * side}; display clipped to [0, 16])")
    _show(axes[1], mosaic(real[:, 0], side, side), f"real ({side * side} random scikit-learn digits)")
    fig.tight_layout()
    return fig


def trajectory_figure(traj: np.ndarray, times: np.ndarray) -> plt.Figure:
    """One row per sample, one column per saved time (T on the left, eps on the right)."""
    n_t, n_s = traj.shape[:2]
    fig, axes = plt.subplots(n_s, n_t, figsize=(1.1 * n_t, 1.1 * n_s + 0.4), squeeze=False)
    for i in range(n_s):
        for j in range(n_t):
            ax = axes[i, j]
            ax.imshow(traj[j, i, 0], cmap="gray_r", vmin=0.0, vmax=PIXEL_MAX, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(f"t={times[j]:.3g}", fontsize=8)
    fig.suptitle("reverse trajectories (data space, display clipped to [0, 16])", fontsize=9)
    fig.tight_layout()
    return fig


def proxy_figure(res: xr.Dataset) -> plt.Figure:
    """(a) predicted-class fractions, (b) max-probability distributions, (c) nearest-neighbour distances, (d) loss."""
    fig, axes = plt.subplots(2, 2, figsize=(12, 9))
    ax = axes[0, 0]
    k = np.arange(N_CLASSES)
    for j, (src, c) in enumerate((("generated", "C0"), ("real", "0.5"), ("noise", "C3"))):
        ax.bar(k + (j - 1) * 0.27, res.class_fraction.sel(source=src), width=0.27, color=c, label=src)
    ax.axhline(0.1, color="k", lw=0.8, ls=":")
    ax.set_xticks(k)
    ax.legend(fontsize=8)
    ax.set(xlabel="predicted class", ylabel="fraction", title="(a) LogisticRegression: predicted classes")

    ax = axes[0, 1]
    bins = np.linspace(0.0, 1.0, 26)
    for name, var, c in (
        ("generated", "prob_generated", "C0"),
        ("real (held out)", "prob_real", "0.5"),
        ("uniform noise", "prob_noise", "C3"),
    ):
        m = res[var].max("class").values
        ax.hist(m, bins=bins, density=True, histtype="step", lw=1.5, color=c, label=f"{name}: mean {m.mean():.3f}")
    ax.legend(fontsize=8, loc="upper left")
    ax.set(xlabel="max class probability", ylabel="density", title="(b) classifier confidence")

    ax = axes[1, 0]
    bins = np.linspace(0.0, float(max(res.nn_generated.max(), res.nn_real.max())) * 1.05, 30)
    ax.hist(
        res.nn_generated,
        bins=bins,
        density=True,
        histtype="step",
        lw=1.5,
        color="C0",
        label="generated → all 1,797 real",
    )
    ax.hist(
        res.nn_real,
        bins=bins,
        density=True,
        histtype="step",
        lw=1.5,
        color="0.5",
        label="held-out real → training split",
    )
    ax.legend(fontsize=8)
    ax.set(
        xlabel="nearest-neighbour distance (pixels 0..16)",
        ylabel="density",
        title="(c) distance to the nearest real digit (copies would sit at 0)",
    )

    ax = axes[1, 1]
    step, loss = res.step.values, res["loss"].values
    w = max(1, len(loss) // 50)
    ax.plot(step, loss, color="0.7", lw=0.6, label="logged loss")
    if w > 1:
        ax.plot(
            step[w - 1 :],
            np.convolve(loss, np.ones(w) / w, mode="valid"),
            color="C0",
            lw=1.5,
            label=f"running mean ({w} logs)",
        )
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.set(
        xlabel="step",
        ylabel="DSM loss",
        title=f"(d) loss; {res.attrs['train_wall_s']:.0f} s, {res.attrs['steps_per_s']:.1f} steps/s",
    )
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------
# tables
# ---------------------------------------------------------------------------------------
def make_tables(res: xr.Dataset) -> dict[str, tuple[str, pd.DataFrame, str]]:
    """``{key: (title, raw DataFrame for the CSV, markdown)}`` for every table."""
    a = res.attrs
    tables: dict[str, tuple[str, pd.DataFrame, str]] = {}
    loss = res["loss"].values
    run = pd.DataFrame(
        [
            {
                "steps": int(a["steps"]),
                "batch": int(a["batch_size"]),
                "parameters": int(a["n_params"]),
                "train wall [s]": float(a["train_wall_s"]),
                "steps/s": float(a["steps_per_s"]),
                "final loss (last 10% of log)": float(np.mean(loss[-max(1, len(loss) // 10) :])),
                "sampler": a["sampler_repr"],
                "NFE": int(a["nfe"]),
                "sampling wall [s]": float(a["sampling_wall_s"]),
                "threads": int(a["torch_threads"]),
            }
        ]
    )
    tables["run"] = (
        "Training and sampling (U-Net, eps parameterisation, VP SDE; wall time includes checkpoints)",
        run,
        _io.markdown_table(
            run,
            {
                "train wall [s]": ".1f",
                "steps/s": ".2f",
                "sampling wall [s]": ".1f",
                "final loss (last 10% of log)": ".4f",
            },
        ),
    )

    rows = []
    for src, var, label in (
        ("generated", "prob_generated", "generated (clipped to [0, 16])"),
        ("real", "prob_real", "real, held out"),
        ("noise", "prob_noise", "uniform noise"),
    ):
        p = res[var].values
        frac = res.class_fraction.sel(source=src).values
        tv = 0.5 * float(np.abs(frac - res.class_fraction.sel(source="real").values).sum())
        rows.append(
            {
                "images": label,
                "n": p.shape[0],
                "mean max prob": float(p.max(1).mean()),
                "frac max prob > 0.9": float((p.max(1) > 0.9).mean()),
                "TV to real classes": tv,
                **{f"{c}": float(frac[c]) for c in range(N_CLASSES)},
            }
        )
    proxy = pd.DataFrame(rows)
    tables["classifier"] = (
        f"Sanity proxy: LogisticRegression(max_iter=2000) on {100 * (1 - a['test_size']):.0f} % of the real digits "
        f"(held-out accuracy {a['test_accuracy']:.3f}); mean max class probability, fraction above 0.9, "
        "total-variation distance of the predicted-class histogram to that of the held-out real digits, and "
        "predicted-class fractions 0–9",
        proxy,
        _io.markdown_table(proxy, {c: ".3f" for c in proxy.columns if c not in ("images", "n")}),
    )

    nn = pd.DataFrame(
        [
            {
                "pair": "generated → all 1,797 real",
                "median": float(np.median(res.nn_generated)),
                "min": float(res.nn_generated.min()),
                "mean": float(res.nn_generated.mean()),
            },
            {
                "pair": "held-out real → training split",
                "median": float(np.median(res.nn_real)),
                "min": float(res.nn_real.min()),
                "mean": float(res.nn_real.mean()),
            },
        ]
    )
    tables["nearest"] = (
        "Nearest-neighbour pixel distance (0..16 scale, 64 pixels): copies of training digits would sit near 0",
        nn,
        _io.markdown_table(nn, {c: ".2f" for c in ("median", "min", "mean")}),
    )
    return tables


# ---------------------------------------------------------------------------------------
# entry point
# ---------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = _io.study_parser(
        STUDY,
        __doc__,
        "4x the training steps",
        DEFAULT_OUT,
        threads_help="torch intra-op threads (default 1: fastest and most reproducible on a shared 2-core machine)",
    )
    ap.add_argument(
        "--sampler",
        choices=("ode", "pc"),
        default=None,
        help="ode: ProbabilityFlowODE() (RK45, default); pc: PredictorCorrector(steps=500)",
    )
    ap.add_argument("--steps", type=int, default=None, help=argparse.SUPPRESS)  # development: fewer steps
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
    if args.sampler is not None:
        cfg = replace(cfg, sampler=args.sampler)
    ckpt_dir = out / "checkpoints"
    progress = not args.quiet
    start = time.perf_counter()
    sde = sd.VPSDE()
    data = load_dataset("digits")

    trainer, timing = run_training(sde, data, cfg, ckpt_dir, progress)
    _, ema, _ = load_checkpoint(ckpt_dir / "last.pt", ema=True)
    ds = run_sampling(sde, ema, cfg, progress)
    x_data = data.unscale(torch.from_numpy(ds["x"].values)).numpy()  # (time, sample, 1, 8, 8), unclipped
    generated = x_data[-1]
    cls = classify(generated, cfg)
    hist = trainer.history_dataset()
    elapsed = time.perf_counter() - start

    real = data.unscale(data.data).numpy()
    pick = np.random.default_rng(cfg.seed_real_grid).choice(real.shape[0], cfg.n_samples, replace=False)
    img = {"channel": [0], "height": np.arange(8), "width": np.arange(8)}
    fractions = np.stack([class_fractions(cls[f"prob_{s}"]) for s in ("generated", "real", "noise")])
    res = xr.Dataset(
        {
            "x_data": (
                ("sample", "channel", "height", "width"),
                generated.astype(np.float32),
                {"long_name": "generated digits in data space (pixels, nominally 0..16; unclipped)"},
            ),
            "trajectory_data": (
                ("time", "strip", "channel", "height", "width"),
                x_data[:, : cfg.n_strip].astype(np.float32),
                {"long_name": f"reverse trajectory of the first {cfg.n_strip} samples, data space"},
            ),
            "prob_generated": (
                ("sample", "class"),
                cls["prob_generated"],
                {
                    "long_name": "LogisticRegression class probabilities of the generated digits "
                    "(clipped to [0, 16] for the classifier)"
                },
            ),
            "prob_real": (
                ("real_sample", "class"),
                cls["prob_real"],
                {"long_name": "class probabilities of the held-out real digits"},
            ),
            "label_real": (("real_sample",), cls["label_real"], {"long_name": "true class of the held-out digits"}),
            "prob_noise": (
                ("sample", "class"),
                cls["prob_noise"],
                {"long_name": "class probabilities of uniform-noise images (control)"},
            ),
            "class_fraction": (("source", "class"), fractions, {"long_name": "fraction predicted as each class"}),
            "nn_generated": (
                ("sample",),
                cls["nn_generated"],
                {"long_name": "pixel distance of each generated digit to the nearest real digit"},
            ),
            "nn_real": (
                ("real_sample",),
                cls["nn_real"],
                {"long_name": "pixel distance of each held-out digit to the nearest training-split digit"},
            ),
            **{k: ("step", hist[k].values) for k in ("loss", "lr", "grad_norm")},
        },
        coords={
            "sample": np.arange(cfg.n_samples),
            "strip": np.arange(cfg.n_strip),
            "time": ds["time"].values,
            "class": np.arange(N_CLASSES),
            "source": ["generated", "real", "noise"],
            "real_sample": np.arange(cls["prob_real"].shape[0]),
            "step": hist["step"].values,
            **img,
        },
    )
    attrs = _io.provenance(STUDY, argv, size=size, **asdict(cfg))
    res.attrs = {
        **attrs,
        **{k: round(v, 3) if isinstance(v, float) else v for k, v in timing.items()},
        "nfe": int(ds.attrs["nfe"]),
        "sampling_wall_s": float(ds.attrs["wall_time_s"]),
        "sampler_repr": repr(make_sampler(cfg.sampler)),
        "sampling_attrs": json.dumps(ds.attrs, default=str),
        "test_accuracy": cls["test_accuracy"],
        "data_shift": data.shift,
        "data_scale": data.scale,
        "training_config": hist.attrs["config"],
        "sde": repr(sde),
        "checkpoint": str(ckpt_dir / "last.pt"),
        "classifier_input": "generated digits clipped to [0, 16]",
        "study_wall_time_s": round(elapsed, 1),
    }
    _io.write_netcdf(res, out / "digits.nc")
    _io.save_figures(
        out,
        {
            "samples": samples_figure(generated, real[pick], side=math.isqrt(cfg.n_samples)),
            "trajectory": trajectory_figure(x_data[:, : cfg.n_strip], ds["time"].values),
            "figure": proxy_figure(res),
        },
    )
    _io.report(
        args,
        _io.write_tables(
            out,
            f"Digits: U-Net on scikit-learn's 8x8 digits ({size} size)",
            attrs,
            f"{elapsed:.0f} s in all",
            make_tables(res),
        ),
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
