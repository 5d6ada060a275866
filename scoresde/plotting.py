"""Figures of sampling and training runs: final samples against the exact target, trajectories,
image grids and loss curves.

Every function here returns a :class:`DisplayFigure`, a :class:`matplotlib.figure.Figure` built
directly (no ``pyplot``): no global figure state is created, nothing is kept alive after the
caller drops the figure (no leak in scripts that make many figures), and no GUI backend is
needed. A :class:`DisplayFigure` renders itself as PNG in Jupyter (``_repr_png_``), so ``fig`` as
the last line of a cell shows the figure without ``%matplotlib inline``. :func:`save_figure`
writes a figure atomically.

Sample sets (``reference``, images) may be torch tensors, NumPy arrays or xarray DataArrays.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, NullLocator

from ._io import atomic_path
from ._samples import as_samples

__all__ = [
    "DisplayFigure",
    "plot_samples",
    "plot_model_samples",
    "plot_image_grid",
    "plot_inverse_problem",
    "plot_loss",
    "display_range",
    "save_figure",
    "atomic_path",
]

_SAMPLE_COLOR = "C0"
_REFERENCE_COLOR = "0.55"
_DENSITY_COLOR = "k"
_MODE_COLOR = "C3"
#: probability mass inside the density contours drawn for the exact distribution
_CONTOUR_MASSES = (0.5, 0.9)
#: most points of a reference set used for its kernel density estimate
_KDE_MAX_POINTS = 4000
#: kernel width of the reference's density estimate, relative to Scott's rule (which
#: over-smooths well separated modes)
_KDE_BANDWIDTH = 0.5
#: at most this many of the drawn trajectories appear in the 2-D paths panel
_MAX_2D_PATHS = 3
#: saved states above which trajectory lines are drawn without markers
_MARKER_MAX_STATES = 30

#: axis label of the loss of each training objective (``TrainConfig.objective``)
LOSS_LABELS: dict[str, str] = {
    "dsm": "denoising score-matching loss",
    "ddpm": "DDPM ε-prediction loss",
    "flow_matching": "flow-matching loss",
}


class DisplayFigure(Figure):
    """A :class:`~matplotlib.figure.Figure` that Jupyter displays as PNG (``_repr_png_``).

    The figures of this module are built without ``pyplot``, so they are not registered with a
    backend, are freed like any Python object when no longer referenced, and work with any (or
    no) backend. A plain ``Figure`` built this way shows in a notebook only as
    ``<Figure size ...>`` unless ``%matplotlib inline`` has been run; this subclass renders
    itself, so ``fig`` at the end of a cell shows the image in every kernel and in notebooks
    executed headless (nbclient, nbconvert). With ``%matplotlib inline`` active, IPython's own
    formatter for figures is used instead: the image appears once either way.
    """

    def _repr_png_(self) -> bytes:
        buf = io.BytesIO()
        self.savefig(buf, format="png", dpi=100, bbox_inches="tight")
        return buf.getvalue()


def save_figure(fig: Figure, path: str | os.PathLike[str], dpi: int = 120) -> Path:
    """Save ``fig`` to ``path`` atomically (temporary file + :func:`os.replace`); PNG at ``dpi`` 120.

    The format follows the suffix of ``path`` (``.png`` if it has none). Returns the path.
    """
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower() or "png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=fmt, dpi=dpi, bbox_inches="tight")
    return path


def _as_numpy(name: str, a: Any, *, finite: bool = True) -> np.ndarray:
    """A sample set (tensor, array or DataArray) as a float64 NumPy array, validated by name."""
    return np.asarray(as_samples(name, a, finite=finite).cpu().numpy(), dtype=np.float64)


def _means(target: Any) -> np.ndarray | None:
    if target is None:
        return None
    mu = _as_numpy("target.means", target.means)
    return mu.reshape(mu.shape[0], -1)


def _feature_matrix(x: xr.DataArray) -> np.ndarray:
    """``x`` (time, sample, *features) -> array (time, sample, d)."""
    values = np.asarray(x.values, dtype=np.float64)
    return values.reshape(values.shape[0], values.shape[1], -1)


def _title(ds: xr.Dataset) -> str:
    a = ds.attrs
    parts = [str(a.get("target", "")), str(a.get("sde", "")), str(a.get("sampler", ""))]
    parts = [p for p in parts if p]
    if "nfe" in a:
        parts.append(f"NFE {a['nfe']}")
    parts.append(f"n = {ds.sizes['sample']}")
    title = " · ".join(parts)
    if "metric_sw2" in a:
        verdict = "within floor" if int(a.get("metric_sw2_within_floor", 0)) else "ABOVE floor"
        title += (
            f"\nSW$_2$ = {float(a['metric_sw2']):.4g} (floor {float(a['metric_sw2_floor_mean']):.3g}"
            f" ± {float(a['metric_sw2_floor_std']):.2g}: {verdict})"
        )
    return title


def _point_style(n: int) -> tuple[float, float]:
    """Marker area and alpha for a scatter of ``n`` points: small and translucent when dense."""
    return float(np.clip(20000.0 / max(n, 1), 1.0, 12.0)), float(np.clip(3000.0 / max(n, 1), 0.25, 0.8))


def _legend_below(ax: Axes, handles: list[Any], ncol: int = 2) -> None:
    """A legend under the axes (below the x label), so that it never hides data."""
    ax.legend(
        handles=handles,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.13),
        ncol=ncol,
        fontsize="small",
        frameon=False,
        handlelength=1.8,
    )


def _marker(label: str, **style: Any) -> Line2D:
    return Line2D([], [], linestyle="none", label=label, **style)


def _feature_label(i: int, d: int) -> str:
    """Axis label of feature ``i`` (0-based) of ``d``: the coordinates are dimensionless."""
    return f"$x_{{{i + 1}}}$" + (f" (feature {i + 1} of {d})" if d > 2 else "")


def _box(*arrays: np.ndarray, margin: float = 0.06) -> tuple[tuple[float, float], tuple[float, float]]:
    """Square axis limits holding every finite point of the ``(n, >=2)`` arrays, with a relative margin."""
    pts = np.concatenate([a[:, :2].reshape(-1, 2) for a in arrays])
    pts = pts[np.isfinite(pts).all(1)]
    if pts.size == 0:
        return (-1.0, 1.0), (-1.0, 1.0)
    lo, hi = pts.min(0), pts.max(0)
    # a square box (equal scales on both axes) around the points
    half = max(float((hi - lo).max()) * (0.5 + margin), 0.5)
    cx, cy = (lo + hi) / 2
    return (float(cx - half), float(cx + half)), (float(cy - half), float(cy + half))


def _hdr_levels(density: np.ndarray, masses: Sequence[float]) -> list[float]:
    """Density levels whose super-level sets hold the given probability masses (on a uniform grid).

    The grid values are sorted in decreasing order and their cumulative sum normalised to 1; the
    level of mass :math:`m` is the density at which that sum first reaches :math:`m`. Returned in
    increasing order (largest mass first), as :meth:`~matplotlib.axes.Axes.contour` requires.
    """
    flat = np.sort(density.ravel())[::-1]
    cum = np.cumsum(flat)
    if cum[-1] <= 0:
        return []
    cum /= cum[-1]
    levels = sorted({float(flat[min(int(np.searchsorted(cum, m)), flat.size - 1)]) for m in masses})
    return [lv for lv in levels if lv > 0]


def _exact_density(
    target: Any,
    reference: np.ndarray | None,
    d: int,
    xlim: tuple[float, float],
    ylim: tuple[float, float],
    reference_label: str = "exact samples",
) -> tuple[np.ndarray, np.ndarray, np.ndarray, str] | None:
    """Density of the exact distribution of the first two features on a grid over the axes.

    The target's exact density (``target.log_prob``) for 2-D targets, else a Gaussian kernel
    density estimate (:class:`scipy.stats.gaussian_kde`, half the bandwidth of Scott's rule) of
    the first two features of the reference samples; ``None`` if neither is available.
    """
    gx = np.linspace(*xlim, 160)
    gy = np.linspace(*ylim, 160)
    X, Y = np.meshgrid(gx, gy)
    grid = np.stack([X.ravel(), Y.ravel()], 1)
    if target is not None and d == 2 and hasattr(target, "log_prob"):
        import torch

        with torch.no_grad():
            logp = target.log_prob(torch.from_numpy(grid)).cpu().numpy()
        return X, Y, np.exp(logp).reshape(X.shape), "exact density"
    if reference is not None and len(reference) > 2:
        from scipy.stats import gaussian_kde

        pts = reference[:, :2]
        pts = pts[:: max(1, math.ceil(len(pts) / _KDE_MAX_POINTS))]
        try:
            kde = gaussian_kde(pts.T)
            kde.set_bandwidth(kde.factor * _KDE_BANDWIDTH)
        except np.linalg.LinAlgError:  # degenerate (e.g. all points on a line): no contours
            return None
        return X, Y, kde(grid.T).reshape(X.shape), f"{reference_label} ({len(reference)}, KDE)"
    return None


def _plot_final_1d(
    ax: Axes, final: np.ndarray, target: Any, reference: np.ndarray | None, reference_label: str = "exact samples"
) -> None:
    n = final.shape[0]
    finite = final[np.isfinite(final[:, 0]), 0]
    handles: list[Any] = []
    both = finite if reference is None else np.concatenate([finite, reference[:, 0]])
    # bin edges shared by both histograms
    bins = np.histogram_bin_edges(both, bins=int(np.clip(np.sqrt(n), 10, 100))).tolist()
    if reference is not None:
        ax.hist(reference[:, 0], bins=bins, density=True, color=_REFERENCE_COLOR, alpha=0.45)
        handles.append(Patch(color=_REFERENCE_COLOR, alpha=0.45, label=f"{reference_label} ({len(reference)})"))
    ax.hist(finite, bins=bins, density=True, histtype="step", color=_SAMPLE_COLOR, lw=1.5)
    handles.append(Line2D([], [], color=_SAMPLE_COLOR, lw=1.5, label=f"samples ({n})"))
    if target is not None and hasattr(target, "log_prob") and getattr(target, "dim", None) == 1:
        import torch

        lo, hi = ax.get_xlim()
        grid = np.linspace(lo, hi, 400)
        with torch.no_grad():
            p = np.exp(target.log_prob(torch.from_numpy(grid[:, None])).cpu().numpy())
        ax.plot(grid, p, color=_DENSITY_COLOR, lw=1.0)
        handles.append(Line2D([], [], color=_DENSITY_COLOR, lw=1.0, label="exact density"))
    mu = _means(target)
    if mu is not None:
        for m in mu[:, 0]:
            ax.axvline(m, color=_MODE_COLOR, lw=0.8, ls=":")
        handles.append(Line2D([], [], color=_MODE_COLOR, lw=0.8, ls=":", label="mode centres"))
    ax.set_xlabel(_feature_label(0, 1))
    ax.set_ylabel("probability density")
    _legend_below(ax, handles)


def _plot_final_2d(
    ax: Axes,
    final: np.ndarray,
    target: Any,
    reference: np.ndarray | None,
    box: tuple[tuple[float, float], tuple[float, float]],
    reference_label: str = "exact samples",
) -> None:
    n, d = final.shape
    size, alpha = _point_style(n)
    handles: list[Any] = []
    ax.scatter(final[:, 0], final[:, 1], s=size, alpha=alpha, color=_SAMPLE_COLOR, lw=0, rasterized=True, zorder=1)
    handles.append(_marker(f"samples ({n})", marker="o", ms=5, color=_SAMPLE_COLOR))
    dens = _exact_density(target, reference, d, *box, reference_label=reference_label)
    if dens is not None:
        X, Y, Z, what = dens
        levels = _hdr_levels(Z, _CONTOUR_MASSES)
        if levels:
            # levels increase: the first encloses the largest mass (dashed), the last the smallest (solid)
            styles = ["--"] * (len(levels) - 1) + ["-"]
            ax.contour(X, Y, Z, levels=levels, colors=_DENSITY_COLOR, linewidths=1.0, linestyles=styles, zorder=3)
            masses = " / ".join(f"{m:.0%}" for m in sorted(_CONTOUR_MASSES)[: len(levels)])
            handles.append(
                Line2D([], [], color=_DENSITY_COLOR, lw=1.0, label=f"{what}: {masses} regions (solid / dashed)")
            )
    mu = _means(target)
    if mu is not None and mu.shape[1] >= 2:
        ax.scatter(mu[:, 0], mu[:, 1], marker="x", s=40, color=_MODE_COLOR, lw=1.5, zorder=4)
        handles.append(_marker("mode centres", marker="x", ms=7, mew=1.5, color=_MODE_COLOR))
    ax.set_xlim(*box[0])
    ax.set_ylim(*box[1])
    ax.set_aspect("equal", adjustable="box")
    ax.set_xlabel(_feature_label(0, d))
    ax.set_ylabel(_feature_label(1, d))
    _legend_below(ax, handles, ncol=1)


def _asinh_ticks(linear_width: float, top: float) -> list[float]:
    """Ticks 0, ±1 and ±3 times powers of ten up to ``top``, without crowding the linear part."""
    mags = [m * 10.0**k for k in range(-6, 10) for m in (1.0, 3.0)]
    mags = [v for v in mags if 0.5 * linear_width <= v <= top * 1.05]
    return sorted([0.0, *mags, *(-v for v in mags)])


def _plot_coordinate(ax: Axes, times: np.ndarray, x: np.ndarray, n_traj: int, T: float, t_end: float, d: int) -> None:
    """Feature 1 against time: the 5-95 % range of all samples and ``n_traj`` single paths.

    When the paths start far outside the final samples (VE), the y axis has an ``asinh`` scale,
    linear over the range of the final samples and logarithmic beyond, so the start and the end
    are both legible.
    """
    coord = x[:, :, 0]
    with np.errstate(invalid="ignore"):
        lo, hi = np.nanquantile(coord, [0.05, 0.95], axis=1)
    handles: list[Any] = []
    ax.fill_between(times, lo, hi, color=_SAMPLE_COLOR, alpha=0.18, lw=0)
    handles.append(Patch(color=_SAMPLE_COLOR, alpha=0.18, label=f"5–95 % range of all {coord.shape[1]} samples"))
    style: dict[str, Any] = {"lw": 0.8 if len(times) <= _MARKER_MAX_STATES else 0.6, "alpha": 0.9}
    if len(times) <= _MARKER_MAX_STATES:
        style.update(marker=".", ms=3)
    for j in range(n_traj):
        ax.plot(times, coord[:, j], color=f"C{j % 10}", **style)
    if n_traj:
        handles.append(Line2D([], [], color="0.3", lw=0.8, label=f"{n_traj} single sample paths"))
    ax.set_xlim(T, t_end)  # time runs backwards: T on the left, eps on the right
    ax.set_xlabel("SDE time $t$ (the reverse process runs from $T$ to $\\varepsilon$)")
    label = _feature_label(0, d)
    end = coord[-1][np.isfinite(coord[-1])]
    shown = np.concatenate([lo, hi, coord[:, :n_traj].ravel()])
    shown = shown[np.isfinite(shown)]
    if end.size and shown.size:
        lin = float(np.quantile(np.abs(end), 0.995)) or 1.0
        if float(np.abs(shown).max()) > 5.0 * lin:
            ax.set_yscale("asinh", linear_width=lin)
            ax.set_yticks(_asinh_ticks(lin, float(np.abs(shown).max())))
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.yaxis.set_minor_locator(NullLocator())
            label += f"  (asinh scale, linear within ±{lin:.2g})"
    ax.set_ylabel(label)
    ax.set_title(f"{_feature_label(0, d).split(' ')[0]} of the samples against time")
    _legend_below(ax, handles, ncol=1)


def _plot_paths(
    ax: Axes,
    times: np.ndarray,
    paths: np.ndarray,
    target: Any,
    box: tuple[tuple[float, float], tuple[float, float]],
    d: int,
) -> None:
    """2-D paths of a few samples, in the axes of the final samples (starts may lie outside)."""
    n_paths, n_states = paths.shape[1], paths.shape[0]
    starts = paths[0]
    # include the start points when they are not far outside the final samples' box
    wide = _box(paths[-1], starts, margin=0.06)
    (x0, x1), (y0, y1) = box
    if (wide[0][1] - wide[0][0]) <= 2.5 * (x1 - x0) and (wide[1][1] - wide[1][0]) <= 2.5 * (y1 - y0):
        box = _box(np.array([[x0, y0], [x1, y1]]), starts, margin=0.0)
    (x0, x1), (y0, y1) = box
    lw = 0.9 if n_states <= _MARKER_MAX_STATES else 0.5
    for j in range(n_paths):
        color = f"C{j % 10}"
        ax.plot(paths[:, j, 0], paths[:, j, 1], lw=lw, color=color, alpha=0.85, zorder=2)
        ax.plot(starts[j, 0], starts[j, 1], "o", ms=5, mfc="white", color=color, zorder=4)
        ax.plot(paths[-1, j, 0], paths[-1, j, 1], "o", ms=6, color=color, mec="k", mew=0.6, zorder=5)
    outside = int(np.sum(~((starts[:, 0] >= x0) & (starts[:, 0] <= x1) & (starts[:, 1] >= y0) & (starts[:, 1] <= y1))))
    start_label = f"start (t = {times[0]:.3g})"
    if outside:
        start_label += f"; {outside} of {n_paths} outside the axes"
    handles: list[Any] = [
        _marker(start_label, marker="o", ms=5, mfc="white", color="0.3"),
        _marker(f"end (t = {times[-1]:.3g})", marker="o", ms=6, color="0.3", mec="k", mew=0.6),
    ]
    mu = _means(target)
    if mu is not None and mu.shape[1] >= 2:
        ax.scatter(mu[:, 0], mu[:, 1], marker="x", s=30, color=_MODE_COLOR, lw=1.2, alpha=0.6, zorder=3)
        handles.append(_marker("mode centres", marker="x", ms=6, mew=1.2, color=_MODE_COLOR))
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    ax.set_aspect("equal", adjustable="box")
    ax.set_xlabel(_feature_label(0, d))
    ax.set_ylabel(_feature_label(1, d))
    ax.set_title(f"2-D paths of {n_paths} samples ({n_states} saved states)")
    _legend_below(ax, handles, ncol=1)


def plot_samples(
    ds: xr.Dataset,
    target: Any = None,
    reference: Any = None,
    n_traj: int = 4,
    ax: Axes | Sequence[Axes] | None = None,
    reference_label: str = "exact samples",
) -> Figure:
    r"""Plot a sampling run from :func:`scoresde.sample`.

    Panels (for samples with ``d >= 2`` features; the first two are drawn):

    1. the final samples (scatter) against the exact distribution, drawn as contour lines of the
       regions holding 50 % (solid) and 90 % (dashed) of its mass, so that neither hides the
       other. The density is the target's exact density (``target.log_prob``, 2-D targets) or
       else a Gaussian kernel density estimate of ``reference``. Axis limits hold all final
       samples and the reference samples;
    2. feature 1 against SDE time: the 5-95 % range over all samples at every saved state and
       ``n_traj`` single paths drawn thin (legible for stochastic samplers with many saved
       states). If the paths start far outside the final samples (VE SDEs), the y axis is
       linear over the final samples' range and logarithmic beyond (``asinh`` scale);
    3. the 2-D paths of the first ``min(n_traj, 3)`` samples, from an open circle at ``T`` to a
       filled circle at the end, in the limits of panel 1 (start points far outside are left
       off-scale and counted in the legend).

    For 1-D samples there are two panels: histograms of the samples and of ``reference`` (with
    the exact density of a 1-D target), and panel 2. Legends sit under the axes.

    Parameters
    ----------
    ds : xarray.Dataset
        The result of :func:`scoresde.sample`: ``x`` with dims ``(time, sample, *features)``
        and the coordinate ``time`` (decreasing from ``T`` to ``eps``; a final ``0`` for a
        denoised state).
    target : GaussianMixture, optional
        Its exact density and component means are drawn (pass ``target.marginal(sde, eps)``
        to compare with undenoised samples at ``t = eps``).
    reference : torch.Tensor, numpy.ndarray or xarray.DataArray, optional
        Exact samples ``(m, d)``: they set the axis limits with the samples, and their kernel
        density estimate is drawn when ``target`` has no usable density.
    n_traj : int
        Number of single trajectories drawn (the first ``n_traj`` samples). 0 draws none.
    ax : Axes or sequence of Axes, optional
        ``None``: a new figure with the panels above. One ``Axes``: only the final samples,
        drawn there. A sequence of 2 or 3 axes: the panels in that order.
    reference_label : str
        What ``reference`` is, in the legend (default ``"exact samples"``; e.g. ``"training data"``).

    Returns
    -------
    matplotlib.figure.Figure
        A :class:`DisplayFigure` when ``ax`` is ``None`` (shown by Jupyter as PNG), else the
        figure of ``ax``.
    """
    given_ds: object = ds  # callers may pass anything; checked here
    if not isinstance(given_ds, xr.Dataset) or "x" not in ds or "time" not in ds.coords:
        raise TypeError("ds must be the xarray.Dataset returned by scoresde.sample (with 'x' and 'time')")
    if ds["x"].ndim < 3 or ds["x"].dims[:2] != ("time", "sample"):
        raise ValueError(f"ds.x must have dims (time, sample, *features), got {ds['x'].dims}")
    if ds["x"].ndim > 3:
        raise ValueError(f"plot_samples draws vector samples (time, sample, feature); got dims {ds['x'].dims}")
    given: object = n_traj  # callers may pass anything; checked here
    if isinstance(given, bool) or not isinstance(given, int | np.integer) or given < 0:
        raise ValueError(f"n_traj must be a non-negative int, got {n_traj!r}")

    x = _feature_matrix(ds["x"])
    times = np.asarray(ds["time"].values, dtype=np.float64)
    d = x.shape[2]
    ref = None
    if reference is not None:
        ref = _as_numpy("reference", reference)
        ref = ref.reshape(ref.shape[0], -1)
        if ref.shape[1] != d:
            raise ValueError(f"reference has {ref.shape[1]} features per sample, but ds.x has {d}")
    n_traj = min(int(n_traj), x.shape[1])
    T = float(ds.attrs.get("sde_T", times[0]))
    n_panels = 3 if d >= 2 else 2

    if ax is None:
        fig: Figure = DisplayFigure(figsize=(5.0 * n_panels, 6.0), layout="constrained")
        axes = list(fig.subplots(1, n_panels))
        fig.suptitle(_title(ds), fontsize="medium")
    elif isinstance(ax, Axes):
        axes = [ax]
        fig = ax.get_figure()  # type: ignore[assignment]
    else:
        axes = list(ax)
        if not 1 <= len(axes) <= 3 or not all(isinstance(a, Axes) for a in axes):
            raise TypeError("ax must be None, one Axes, or a sequence of 1 to 3 Axes")
        fig = axes[0].get_figure()

    final = x[-1]
    if d >= 2:
        box = _box(final, *([] if ref is None else [ref]))
        _plot_final_2d(axes[0], final, target, ref, box, reference_label)
    else:
        _plot_final_1d(axes[0], final, target, ref, reference_label)
    axes[0].set_title(f"final samples (t = {float(times[-1]):.3g})")
    if len(axes) > 1:
        _plot_coordinate(axes[1], times, x, n_traj, T, float(times[-1]), d)
    if len(axes) > 2 and d >= 2:
        _plot_paths(axes[2], times, x[:, : min(n_traj, _MAX_2D_PATHS)], target, box, d)
    for a in axes:
        a.grid(alpha=0.3)
    return fig


def _history_values(history: Any) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(history, xr.Dataset | Mapping):
        if "step" not in history or "loss" not in history:
            raise TypeError("history must have 'step' and 'loss' (Trainer.history_dataset())")
        steps, loss = history["step"], history["loss"]
    else:
        raise TypeError(
            f"history must be an xarray.Dataset from Trainer.history_dataset(), got {type(history).__name__}"
        )
    steps = np.asarray(getattr(steps, "values", steps), dtype=np.float64).reshape(-1)
    loss = np.asarray(getattr(loss, "values", loss), dtype=np.float64).reshape(-1)
    if steps.shape != loss.shape:
        raise ValueError(f"history step and loss differ in length: {steps.size} and {loss.size}")
    return steps, loss


def plot_loss(history: Any, title: str = "", objective: str = "dsm") -> Figure:
    """Loss curve of a training history: the logged values and, for long runs, a running mean.

    Parameters
    ----------
    history : xarray.Dataset
        ``Trainer.history_dataset()`` (or a mapping) with ``step`` and ``loss``.
    title : str
        Axes title.
    objective : str
        The training objective's name (``TrainConfig.make_objective().name``), which names the loss on
        the y axis: :data:`LOSS_LABELS` for the built-in objectives, ``"<name> loss"`` for others.

    Returns
    -------
    DisplayFigure
        The y axis is logarithmic when every finite loss is positive. With more than 50 logged
        values a running mean over ``len // 25`` values is drawn as well.
    """
    given: object = objective  # callers outside the type checker may pass anything
    if not isinstance(given, str) or not given:
        raise TypeError(f"objective must be an objective's name (a non-empty str), got {objective!r}")
    steps, loss = _history_values(history)
    fig = DisplayFigure(figsize=(7.0, 4.2), layout="constrained")
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
    ax.set_ylabel(LOSS_LABELS.get(objective, f"{objective} loss"))
    ax.grid(alpha=0.3, which="both")
    if title:
        ax.set_title(title, fontsize="medium")
    return fig


def plot_image_grid(images: Any, lo: float, hi: float, title: str = "", max_images: int = 64) -> Figure:
    """A grid of the first ``max_images`` images ``(n, C, H, W)``, shown clipped to ``[lo, hi]``.

    One image per axes of a :class:`mpl_toolkits.axes_grid1.axes_grid.ImageGrid` with
    :math:`\\lceil \\sqrt{n} \\rceil` columns. One channel is drawn in grey, three as RGB; other
    channel counts show channel 0. NaN pixels are left blank (transparent).

    Parameters
    ----------
    images : torch.Tensor, numpy.ndarray or xarray.DataArray
        Images ``(n, C, H, W)`` in data space.
    lo, hi : float
        Display range: ``lo`` is black, ``hi`` white (values outside are clipped).
    title : str
        Figure title.
    max_images : int
        Most images drawn (the first ones).

    Returns
    -------
    DisplayFigure
    """
    from mpl_toolkits.axes_grid1 import ImageGrid  # type: ignore[import-untyped]

    x = _as_numpy("images", images, finite=False)
    if x.ndim != 4:
        raise ValueError(f"images must have shape (n, C, H, W), got {x.shape}")
    given: object = max_images  # callers may pass anything; checked here
    if isinstance(given, bool) or not isinstance(given, int | np.integer) or given < 1:
        raise ValueError(f"max_images must be a positive int, got {max_images!r}")
    lo, hi = float(lo), float(hi)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"lo and hi must be finite, got {lo!r} and {hi!r}")
    x = x[: int(max_images)]
    n, C, H, W = x.shape
    x = np.clip((x - lo) / (hi - lo), 0.0, 1.0) if hi > lo else np.where(np.isnan(x), np.nan, 0.0)
    cols = max(1, math.ceil(math.sqrt(n)))
    rows = max(1, math.ceil(n / cols))
    side = min(9.0, max(3.0, 0.6 * cols + 1.0))
    grid_h = side * rows * H / (cols * W)
    head = 0.4 if title else 0.0  # inches above the grid for the title
    fig = DisplayFigure(figsize=(side, grid_h + head))
    rect = (0.0, 0.0, 1.0, grid_h / (grid_h + head))
    # the number of axes is passed by position: its keyword was renamed (ngrids -> n_axes) in matplotlib 3.11
    grid = ImageGrid(fig, rect, (rows, cols), n, axes_pad=0.04, share_all=True)
    for cax in grid.cbar_axes:  # no colour bars: only the image axes stay in the figure
        if cax in fig.axes:
            cax.remove()
    for i, a in enumerate(grid):
        if C == 3:
            rgb = x[i].transpose(1, 2, 0)
            rgba = np.concatenate([np.nan_to_num(rgb), (~np.isnan(rgb).any(-1, keepdims=True)).astype(float)], -1)
            a.imshow(rgba, interpolation="nearest")
        else:
            a.imshow(x[i, 0], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
        a.set_xticks([])
        a.set_yticks([])
        for spine in a.spines.values():
            spine.set_visible(False)
    if title:
        fig.suptitle(title, fontsize="medium", y=1.0 - 0.1 / (grid_h + head), va="top")
    return fig


def plot_inverse_problem(
    observation: Any,
    samples: Any,
    truth: Any,
    lo: float,
    hi: float,
    title: str = "",
    observation_label: str = "observation",
    max_samples: int = 24,
) -> Figure:
    """An image inverse problem at a glance: the observation and the truth (left), posterior samples (right).

    Each image is drawn in grey on ``[lo, hi]`` (values outside clipped); NaN pixels (the unobserved ones
    of an inpainting observation) are left blank. The panels are titled "observation" (or
    ``observation_label``), "truth" and "posterior samples (k of n)".

    Parameters
    ----------
    observation, truth : torch.Tensor, numpy.ndarray or xarray.DataArray
        Images ``(C, H, W)`` in data space (the observation shown at the image's resolution, e.g. a pooled
        image repeated over its blocks).
    samples : torch.Tensor, numpy.ndarray or xarray.DataArray
        Images ``(n, C, H, W)`` in data space.
    lo, hi : float
        Display range.
    title : str
        Figure title.
    observation_label : str
        Title of the observation panel.
    max_samples : int
        Most samples drawn (the first ones).

    Returns
    -------
    DisplayFigure
    """
    obs = _as_numpy("observation", observation, finite=False)
    tru = _as_numpy("truth", truth, finite=False)
    x = _as_numpy("samples", samples, finite=False)
    if x.ndim != 4:
        raise ValueError(f"samples must have shape (n, C, H, W), got {x.shape}")
    for name, img in (("observation", obs), ("truth", tru)):
        if img.shape != x.shape[1:]:
            raise ValueError(f"{name} must have the samples' image shape {x.shape[1:]}, got {img.shape}")
    given: object = max_samples  # callers may pass anything; checked here
    if isinstance(given, bool) or not isinstance(given, int | np.integer) or given < 1:
        raise ValueError(f"max_samples must be a positive int, got {max_samples!r}")
    lo, hi = float(lo), float(hi)
    if not (math.isfinite(lo) and math.isfinite(hi)) or not hi > lo:
        raise ValueError(f"lo and hi must be finite with lo < hi, got {lo!r} and {hi!r}")
    n = x.shape[0]
    shown = x[: int(max_samples)]
    k = shown.shape[0]
    cols = min(8, max(1, math.ceil(math.sqrt(k * 2))))
    rows = math.ceil(k / cols)
    fig = DisplayFigure(figsize=(1.6 + 1.05 * cols + 0.6, max(3.4, 1.05 * rows + 0.9)), layout="constrained")
    subfigures: Any = fig.subfigures(1, 2, width_ratios=[1.6, 1.05 * cols + 0.6])  # an array of two
    left, right = subfigures[0], subfigures[1]

    def show(ax: Axes, img: np.ndarray) -> None:
        ax.imshow(img[0], cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])

    for ax, img, label in zip(left.subplots(2, 1), (obs, tru), (observation_label, "truth"), strict=True):
        show(ax, img)
        ax.set_title(label, fontsize="small")
    axes = np.atleast_1d(right.subplots(rows, cols, squeeze=False)).reshape(-1)
    for i, ax in enumerate(axes):
        if i < k:
            show(ax, shown[i])
        else:
            ax.set_axis_off()
    right.suptitle(f"posterior samples ({k} of {n})", fontsize="small")
    if title:
        fig.suptitle(title, fontsize="medium")
    return fig


def display_range(images: np.ndarray, data_config: dict[str, Any]) -> tuple[float, float]:
    """Data-space range in which image grids show a trained model's samples.

    The range of the training data's min-max map (``scale``/``shift`` of the checkpoint's data
    configuration with ``scaling="minmax"``), else the 0.5 % and 99.5 % quantiles of the finite
    pixels (a constant image gets a unit range around its value).
    """
    shift, scale = float(data_config["shift"]), float(data_config["scale"])
    if (data_config.get("params") or {}).get("scaling") == "minmax":
        return shift - scale, shift + scale
    finite = images[np.isfinite(images)]
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = (float(v) for v in np.quantile(finite, [0.005, 0.995]))
    return (lo, hi) if hi > lo else (lo - 0.5, lo + 0.5)


def plot_model_samples(
    ds: xr.Dataset, data_config: dict[str, Any], training_data: Any = None, title: str = "", seed: int = 0
) -> Figure | None:
    """The figure of a trained model's samples (``scoresde sample --checkpoint``), in data space.

    Vector samples: :func:`plot_samples` of ``x * scale + shift`` against as many points of
    ``training_data`` as there are samples (drawn with ``seed``), labelled "training data". Image
    samples ``(C, H, W)``: :func:`plot_image_grid` of ``ds.x_data`` in :func:`display_range`.
    Other shapes: ``None``.
    """
    import torch

    feature_shape = tuple(int(s) for s in data_config["feature_shape"])
    n = ds.sizes["sample"]
    shift, scale = float(data_config["shift"]), float(data_config["scale"])
    if len(feature_shape) == 1:
        plot_ds = ds[["x"]].assign(x=ds["x"] * scale + shift)
        plot_ds.attrs = {**ds.attrs, "target": title}
        reference = None
        if training_data is not None:
            data = torch.as_tensor(np.asarray(training_data))
            idx = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:n]
            reference = data[idx]
        return plot_samples(plot_ds, target=None, reference=reference, reference_label="training data")
    if len(feature_shape) == 3:
        images = np.asarray(ds["x_data"].values, dtype=np.float64)
        lo, hi = display_range(images, data_config)
        k = min(64, n)
        return plot_image_grid(
            images,
            lo,
            hi,
            title=f"{title}: first {k} of {n} samples, {ds.attrs['sampler']}, "
            f"NFE {ds.attrs['nfe']}\n(data space, shown in [{lo:g}, {hi:g}])",
        )
    return None
