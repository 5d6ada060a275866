"""Figures of sampling runs: final samples against the exact target, and a few trajectories.

Everything here builds :class:`matplotlib.figure.Figure` objects directly (no ``pyplot``), so
no global figure state is created and no GUI backend is needed; :func:`save_figure` writes a
figure atomically.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from ._io import atomic_path

__all__ = ["plot_samples", "save_figure", "atomic_path"]

_SAMPLE_COLOR = "C0"
_REFERENCE_COLOR = "0.55"
_MODE_COLOR = "C3"


def save_figure(fig: Figure, path: str | os.PathLike[str], dpi: int = 120) -> Path:
    """Save ``fig`` to ``path`` atomically (temporary file + :func:`os.replace`); PNG at ``dpi`` 120.

    The format follows the suffix of ``path`` (``.png`` if it has none). Returns the path.
    """
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower() or "png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=fmt, dpi=dpi, bbox_inches="tight")
    return path


def _as_numpy(a: Any) -> np.ndarray:
    if hasattr(a, "detach"):  # torch tensor, without importing torch here
        a = a.detach().cpu().numpy()
    return np.asarray(a, dtype=np.float64)


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


def _legend(ax: Axes, entries: list[tuple[str, dict[str, Any]]]) -> None:
    """A legend of opaque, readable proxy markers (the plotted points are tiny and translucent)."""
    handles = [Line2D([], [], linestyle="none", label=label, **style) for label, style in entries]
    ax.legend(handles=handles, loc="upper right", fontsize="small", framealpha=0.9)


def _plot_final(ax: Axes, final: np.ndarray, target: Any, reference: Any, t_final: float) -> None:
    d = final.shape[1]
    n = final.shape[0]
    size, alpha = _point_style(n)
    entries: list[tuple[str, dict[str, Any]]] = []
    if d == 1:
        bins = int(np.clip(np.sqrt(n), 10, 100))
        finite = final[np.isfinite(final[:, 0]), 0]
        if reference is not None:
            ax.hist(
                _as_numpy(reference).reshape(-1),
                bins=bins,
                density=True,
                color=_REFERENCE_COLOR,
                alpha=0.5,
                label="exact samples",
            )
        ax.hist(finite, bins=bins, density=True, histtype="step", color=_SAMPLE_COLOR, lw=1.5, label="samples")
        if target is not None:
            for i, m in enumerate(_as_numpy(target.means).reshape(-1)):
                ax.axvline(m, color=_MODE_COLOR, lw=0.8, ls="--", label="mode centres" if i == 0 else None)
        ax.set_xlabel("$x_0$")
        ax.set_ylabel("density")
        ax.legend(loc="upper right", fontsize="small")
    else:
        if reference is not None:
            ref = _as_numpy(reference).reshape(len(reference), -1)
            ax.scatter(
                ref[:, 0], ref[:, 1], s=size, alpha=alpha, color=_REFERENCE_COLOR, lw=0, rasterized=True, zorder=1
            )
            entries.append((f"exact samples ({len(ref)})", {"marker": "o", "ms": 5, "color": _REFERENCE_COLOR}))
        ax.scatter(final[:, 0], final[:, 1], s=size, alpha=alpha, color=_SAMPLE_COLOR, lw=0, rasterized=True, zorder=2)
        entries.append((f"samples ({n})", {"marker": "o", "ms": 5, "color": _SAMPLE_COLOR}))
        if target is not None:
            mu = _as_numpy(target.means).reshape(len(target.means), -1)
            ax.scatter(mu[:, 0], mu[:, 1], marker="x", s=40, color=_MODE_COLOR, lw=1.5, zorder=3)
            entries.append(("mode centres", {"marker": "x", "ms": 7, "mew": 1.5, "color": _MODE_COLOR}))
        ax.set_xlabel("$x_0$ (feature 0)")
        ax.set_ylabel("$x_1$ (feature 1)")
        ax.set_aspect("equal", adjustable="datalim")
        _legend(ax, entries)
    ax.set_title(f"final samples (t = {t_final:.3g})")
    ax.grid(alpha=0.3)


def _plot_coordinate(ax: Axes, times: np.ndarray, paths: np.ndarray, T: float, t_end: float) -> None:
    for j in range(paths.shape[1]):
        ax.plot(times, paths[:, j, 0], marker=".", ms=3, lw=1, color=f"C{j % 10}")
    ax.set_xlim(T, t_end)  # time runs backwards: T on the left, eps on the right
    ax.set_xlabel("SDE time $t$ (reverse process: $T \\to \\varepsilon$)")
    ax.set_ylabel("$x_0$ (feature 0)")
    ax.set_title(f"feature 0 of {paths.shape[1]} trajectories against time")
    ax.grid(alpha=0.3)


def _plot_paths(ax: Axes, times: np.ndarray, paths: np.ndarray, target: Any) -> None:
    for j in range(paths.shape[1]):
        color = f"C{j % 10}"
        ax.plot(paths[:, j, 0], paths[:, j, 1], lw=0.9, color=color, alpha=0.7)
        ax.plot(paths[0, j, 0], paths[0, j, 1], "o", ms=5, mfc="white", color=color, zorder=3)
        ax.plot(paths[-1, j, 0], paths[-1, j, 1], "o", ms=6, color=color, zorder=3)
    entries: list[tuple[str, dict[str, Any]]] = [
        (f"start (t = {times[0]:.3g})", {"marker": "o", "ms": 5, "mfc": "white", "color": "0.3"}),
        (f"end (t = {times[-1]:.3g})", {"marker": "o", "ms": 6, "color": "0.3"}),
    ]
    if target is not None:
        mu = _as_numpy(target.means).reshape(len(target.means), -1)
        ax.scatter(mu[:, 0], mu[:, 1], marker="x", s=30, color=_MODE_COLOR, lw=1.2, alpha=0.6, zorder=2)
        entries.append(("mode centres", {"marker": "x", "ms": 6, "mew": 1.2, "color": _MODE_COLOR}))
    ax.set_xlabel("$x_0$ (feature 0)")
    ax.set_ylabel("$x_1$ (feature 1)")
    ax.set_title(f"2-D paths of the same {paths.shape[1]} samples ({len(times)} saved states)")
    ax.set_aspect("equal", adjustable="datalim")
    _legend(ax, entries)
    ax.grid(alpha=0.3)


def plot_samples(
    ds: xr.Dataset,
    target: Any = None,
    reference: Any = None,
    n_traj: int = 8,
    ax: Axes | Sequence[Axes] | None = None,
) -> Figure:
    """Plot a sampling run from :func:`scoresde.sample`.

    Parameters
    ----------
    ds : xarray.Dataset
        The result of :func:`scoresde.sample`: ``x`` with dims ``(time, sample, *features)``
        and the coordinate ``time`` (decreasing from ``T`` to ``eps``; a final ``0`` for a
        denoised state).
    target : GaussianMixture, optional
        Its component means are drawn as mode centres (pass ``target.marginal(sde, eps)``
        to compare with undenoised samples at ``t = eps``).
    reference : array-like or tensor, optional
        Exact samples ``(m, d)`` drawn in grey under the samples.
    n_traj : int
        Number of trajectories drawn (the first ``n_traj`` samples). 0 draws none.
    ax : Axes or sequence of Axes, optional
        ``None``: a new figure with three panels (final samples; feature 0 against time;
        2-D paths, or two panels for 1-D samples). One ``Axes``: only the final samples,
        drawn there. A sequence of 2 or 3 axes: the panels in that order.

    Returns
    -------
    matplotlib.figure.Figure
    """
    if not isinstance(ds, xr.Dataset) or "x" not in ds or "time" not in ds.coords:
        raise TypeError("ds must be the xarray.Dataset returned by scoresde.sample (with 'x' and 'time')")
    if ds["x"].ndim < 3 or ds["x"].dims[:2] != ("time", "sample"):
        raise ValueError(f"ds.x must have dims (time, sample, *features), got {ds['x'].dims}")
    if ds["x"].ndim > 3:
        raise ValueError(f"plot_samples draws vector samples (time, sample, feature); got dims {ds['x'].dims}")
    if isinstance(n_traj, bool) or not isinstance(n_traj, int | np.integer) or n_traj < 0:
        raise ValueError(f"n_traj must be a non-negative int, got {n_traj!r}")

    x = _feature_matrix(ds["x"])
    times = np.asarray(ds["time"].values, dtype=np.float64)
    d = x.shape[2]
    n_traj = min(int(n_traj), x.shape[1])
    paths = x[:, :n_traj]
    T = float(ds.attrs.get("sde_T", times[0]))
    n_panels = 3 if d >= 2 else 2

    if ax is None:
        fig = Figure(figsize=(5.0 * n_panels, 5.0), layout="constrained")
        axes = list(fig.subplots(1, n_panels))
        fig.suptitle(_title(ds), fontsize="medium")
    elif isinstance(ax, Axes):
        axes = [ax]
        fig = ax.get_figure()
    else:
        axes = list(ax)
        if not 1 <= len(axes) <= 3 or not all(isinstance(a, Axes) for a in axes):
            raise TypeError("ax must be None, one Axes, or a sequence of 1 to 3 Axes")
        fig = axes[0].get_figure()

    _plot_final(axes[0], x[-1], target, reference, float(times[-1]))
    if len(axes) > 1:
        _plot_coordinate(axes[1], times, paths, T, float(times[-1]))
    if len(axes) > 2 and d >= 2:
        _plot_paths(axes[2], times, paths, target)
    return fig
