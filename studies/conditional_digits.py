"""Class-conditional digits: a conditional U-Net sampled per class with classifier-free guidance, then classified.

The default U-Net of the digits study with a class embedding (``build_network("unet", channels=1,
num_classes=10)``, ``ScoreModel(..., parameterization="noise")``, ``torch.manual_seed(0)``) is trained with
the VP SDE on all 1,797 digits and their labels (``load_dataset("digits")``) for STEPS steps of batch 128,
each label replaced by the null class with probability ``label_dropout`` = 0.1 (other settings:
:class:`scoresde.TrainConfig` defaults; ``--full``: 4x the steps).

For every guidance weight :math:`w` in WEIGHTS and every class :math:`c = 0..9`, N_PER_CLASS images are
drawn with DDIM (50 steps, deterministic; seed 1 + c) from the guided score
:math:`(1 + w)\\,s_\\theta(x, t, c) - w\\,s_\\theta(x, t, \\varnothing)`
(:func:`scoresde.conditioning.sample_class`). Measured:

* the accuracy of a held-out classifier on the generated digits: scikit-learn's
  ``LogisticRegression(max_iter=2000)`` fitted on a stratified 75 % split of the real digits (flattened
  pixels 0..16; the generated digits are clipped to [0, 16] for the classifier only), the fraction of the
  digits generated for class :math:`c` that it assigns to :math:`c`, per class and overall, next to its
  accuracy on the held-out 25 % of real digits;
* the nearest-real-digit distance: the Euclidean pixel distance (0..16 scale) of every generated digit to
  its nearest one among the 1,797 real digits, next to that of each held-out real digit to the 75 % split
  (copies of training images would sit near 0).

Usage::

    python -m studies.conditional_digits          # default size
    python -m studies.conditional_digits --full   # 4x the training steps

Writes to ``--out`` (default ``studies/output/conditional_digits/``): ``conditional_digits.nc`` (samples in
data space, per-class accuracies, distances, loss history; provenance attributes), ``samples.png/svg``
(class by row, at the best weight), ``table.md`` and a CSV per table, and ``checkpoints/``.
"""

from __future__ import annotations

import argparse
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
from scoresde.conditioning import sample_class  # noqa: E402
from scoresde.datasets import load_dataset  # noqa: E402
from scoresde.nets import ScoreModel, build_network  # noqa: E402
from scoresde.training import TrainConfig, load_checkpoint, train  # noqa: E402

from . import _io  # noqa: E402
from .digits import PIXEL_MAX, clear_checkpoints, mosaic, nearest_distance  # noqa: E402

STUDY = "studies.conditional_digits"
DEFAULT_OUT = Path(__file__).resolve().parent / "output" / "conditional_digits"
N_CLASSES = 10


@dataclass(frozen=True)
class Config:
    """Sizes and seeds of one run."""

    steps: int = 2_000
    batch_size: int = 128
    label_dropout: float = 0.1
    weights: tuple[float, ...] = (0.0, 1.0, 2.0, 4.0)
    n_per_class: int = 32
    ddim_steps: int = 50
    test_size: float = 0.25
    hidden: int = 32  # U-Net base width (the digits study's default)
    seed_model: int = 0
    seed_sample: int = 1
    seed_split: int = 0


DEFAULT = Config()
FULL = replace(DEFAULT, steps=4 * DEFAULT.steps)


def run_training(cfg: Config, ckpt_dir: Path, progress: bool) -> tuple[xr.Dataset, float]:
    """Train the conditional U-Net from scratch; return its loss history and the wall time."""
    sde = sd.VPSDE()
    data = load_dataset("digits")
    torch.manual_seed(cfg.seed_model)
    net = build_network("unet", channels=1, base=cfg.hidden, num_classes=N_CLASSES)
    model = ScoreModel(net, sde, parameterization="noise")
    clear_checkpoints(ckpt_dir)
    start = time.perf_counter()
    config = TrainConfig(steps=cfg.steps, batch_size=cfg.batch_size, label_dropout=cfg.label_dropout)
    trainer = train(sde, model, data, config, out_dir=ckpt_dir, progress=progress, resume=False)
    return trainer.history_dataset(), time.perf_counter() - start


def generate(model: ScoreModel, cfg: Config, weight: float, progress: bool) -> np.ndarray:
    """``n_per_class`` digits of every class at guidance ``weight``, data space, shape (10, n, 1, 8, 8)."""
    out = []
    for c in range(N_CLASSES):
        ds = sample_class(
            model.sde,
            model,
            c,
            sampler=sd.DDIM(cfg.ddim_steps),
            weight=weight,
            shape=(cfg.n_per_class, 1, 8, 8),
            seed=cfg.seed_sample + c,
            progress=progress,
        )
        out.append(ds["x"].isel(time=-1).values)
    x = np.stack(out).astype(np.float64)
    return x * (PIXEL_MAX / 2) + PIXEL_MAX / 2  # [-1, 1] -> pixel values 0..16 (load_dataset's min-max map)


def measure(generated: np.ndarray, cfg: Config) -> dict[str, np.ndarray | float]:
    """Held-out classifier accuracy per (weight, class) and nearest-real-digit distances.

    ``generated``: shape (weights, 10, n, 1, 8, 8), data space.
    """
    digits = load_digits()
    X, y = digits.data.astype(np.float64), digits.target
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=cfg.test_size, random_state=cfg.seed_split, stratify=y)
    clf = LogisticRegression(max_iter=2000).fit(X_tr, y_tr)
    W, C, n = generated.shape[:3]
    flat = np.clip(generated.reshape(W * C * n, -1), 0.0, PIXEL_MAX)
    predicted = clf.predict(flat).reshape(W, C, n)
    accuracy = (predicted == np.arange(C)[None, :, None]).mean(axis=2)
    real_pred = clf.predict(X_te)
    real_accuracy = np.array([(real_pred[y_te == c] == c).mean() for c in range(C)])
    return {
        "accuracy": accuracy,
        "predicted": predicted,
        "real_accuracy": real_accuracy,
        "real_accuracy_all": float((real_pred == y_te).mean()),
        "nn_generated": nearest_distance(flat, X).reshape(W, C, n),
        "nn_real": nearest_distance(X_te, X_tr),
    }


def run(cfg: Config, ckpt_dir: Path, progress: bool, argv: Sequence[str] = ()) -> xr.Dataset:
    """Train, sample every class at every weight, measure; the results as a Dataset."""
    history, train_wall = run_training(cfg, ckpt_dir, progress)
    _, ema, _ = load_checkpoint(ckpt_dir / "last.pt", ema=True)
    start = time.perf_counter()
    generated = np.stack([generate(ema, cfg, w, progress) for w in cfg.weights])
    sample_wall = time.perf_counter() - start
    m = measure(generated, cfg)
    dims = ("weight", "class", "sample")
    return xr.Dataset(
        {
            "x_data": (
                (*dims, "channel", "height", "width"),
                generated.astype(np.float32),
                {"long_name": "generated digits in data space (pixels, nominally 0..16; unclipped)"},
            ),
            "accuracy": (
                ("weight", "class"),
                m["accuracy"],
                {"long_name": "fraction of the class's generated digits that the held-out classifier assigns to it"},
            ),
            "predicted": (dims, m["predicted"], {"long_name": "the held-out classifier's class"}),
            "nn_generated": (dims, m["nn_generated"], {"long_name": "pixel distance to the nearest real digit"}),
            "real_accuracy": (("class",), m["real_accuracy"], {"long_name": "classifier accuracy, held-out digits"}),
            "nn_real": (("real",), m["nn_real"], {"long_name": "held-out digit: distance to the nearest training one"}),
            "loss": (("step",), history["loss"].values, {"long_name": "training loss (denoising score matching)"}),
        },
        coords={"weight": list(cfg.weights), "class": np.arange(N_CLASSES), "step": history["step"].values},
        attrs=_io.provenance(
            STUDY,
            argv,
            config=asdict(cfg),
            real_accuracy_all=m["real_accuracy_all"],
            train_wall_s=train_wall,
            sample_wall_s=sample_wall,
        ),
    )


def make_table(res: xr.Dataset) -> pd.DataFrame:
    """Accuracy (overall, worst class) and nearest-real-digit distance per weight, and the real-digit reference."""
    rows = []
    for w in res.weight.values:
        acc = res.accuracy.sel(weight=w)
        nn = res.nn_generated.sel(weight=w)
        rows.append(
            {
                "digits": f"generated, w = {w:g}",
                "accuracy (all)": float(acc.mean()),
                "accuracy (worst class)": float(acc.min()),
                "worst class": int(np.argmin(acc.values)),
                "NN distance (median)": float(nn.median()),
            }
        )
    rows.append(
        {
            "digits": "real, held out",
            "accuracy (all)": float(res.attrs["real_accuracy_all"]),
            "accuracy (worst class)": float(res.real_accuracy.min()),
            "worst class": int(np.argmin(res.real_accuracy.values)),
            "NN distance (median)": float(res.nn_real.median()),
        }
    )
    return pd.DataFrame(rows)


def samples_figure(res: xr.Dataset, weight: float, per_class: int = 16) -> plt.Figure:
    """Class by row: the first ``per_class`` digits generated for each class at ``weight``."""
    x = res.x_data.sel(weight=weight).values[:, :per_class, 0]  # (10, k, 8, 8)
    k = x.shape[1]
    fig, ax = plt.subplots(figsize=(0.45 * k + 1, 5.2))
    ax.imshow(mosaic(x.reshape(-1, 8, 8), N_CLASSES, k), cmap="gray", vmin=0, vmax=PIXEL_MAX)
    ax.set_yticks([4.5 + 9 * c for c in range(N_CLASSES)], [str(c) for c in range(N_CLASSES)])
    ax.set_xticks([])
    ax.set(ylabel="class", title=f"classifier-free guidance, w = {weight:g}")
    return fig


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = _io.study_parser(STUDY, __doc__, "4x the training steps", DEFAULT_OUT, docs_size=False)
    ap.add_argument("--steps", type=int, default=None, help=argparse.SUPPRESS)  # development: fewer steps
    ap.add_argument("--n-per-class", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--hidden", type=int, default=None, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the study, write the outputs, print the table (unless ``--quiet``); returns 0."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    out = _io.prepare(args)
    cfg = FULL if args.full else DEFAULT
    for key in ("steps", "n_per_class", "hidden"):
        if getattr(args, key) is not None:
            cfg = replace(cfg, **{key: getattr(args, key)})
    res = run(cfg, out / "checkpoints", not args.quiet, argv)
    _io.write_netcdf(res, out / "conditional_digits.nc")
    table = make_table(res)
    best = float(res.weight.values[int(np.argmax(res.accuracy.mean("class").values))])
    _io.save_figures(out, {"samples": samples_figure(res, best)})
    text = (
        f"Class-conditional digits ({cfg.steps} training steps, {cfg.n_per_class} digits per class and weight)\n\n"
        + _io.markdown_table(table)
        + f"\n\nbest weight: w = {best:g}\n"
    )
    _io.write_text(out / "table.md", text)
    _io.write_csv(table, out / "table.csv")
    _io.report(args, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
