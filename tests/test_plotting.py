"""Figures of scoresde.plotting: what each panel shows, its scales and legends, image grids, loss curves."""

from __future__ import annotations

import math

import matplotlib
import numpy as np
import pytest
import torch
import xarray as xr
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.contour import ContourSet
from matplotlib.figure import Figure

import scoresde as sd
from scoresde import plotting
from scoresde.plotting import DisplayFigure, plot_image_grid, plot_loss, plot_samples

matplotlib.use("Agg")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run_dataset(x: np.ndarray, times: np.ndarray) -> xr.Dataset:
    """A Dataset shaped like the result of scoresde.sample: x (time, sample, feature)."""
    return xr.Dataset(
        {"x": (("time", "sample", "feature"), x)},
        coords={"time": times},
        attrs={"sde": "VESDE", "sampler": "test", "sde_T": float(times[0])},
    )


@pytest.fixture(scope="module")
def vp_run():
    sde = sd.VPSDE()
    target = sd.eight_gaussians()
    ds = sd.sample(sde, target.score(sde), sd.EulerMaruyama(steps=60), shape=(300, 2), save_at=61, progress=False)
    p_eps = target.marginal(sde, 1e-3)
    return ds, p_eps, p_eps.sample(300, torch.Generator().manual_seed(0), dtype=torch.float64)


@pytest.fixture(scope="module")
def ve_like_run():
    """Paths that start at +-80 and end in a unit blob, as VE runs do."""
    rng = np.random.default_rng(0)
    times = np.linspace(1.0, 1e-3, 50)
    start = 80.0 * rng.standard_normal((200, 2))
    end = rng.standard_normal((200, 2))
    w = np.clip(times, 0, 1)[:, None, None] ** 2
    x = w * start[None] + (1 - w) * end[None]
    return run_dataset(x, times), end


def draw(fig: Figure) -> None:
    FigureCanvasAgg(fig).draw()


def test_figures_display_in_notebooks(vp_run):
    ds, target, ref = vp_run
    fig = plot_samples(ds, target=target, reference=ref)
    assert isinstance(fig, DisplayFigure) and isinstance(fig, Figure)
    png = fig._repr_png_()
    assert png.startswith(PNG_MAGIC) and len(png) > 10_000


@pytest.mark.parametrize("container", ["torch32", "numpy", "xarray"])
def test_reference_may_be_any_sample_container(vp_run, container):
    ds, target, ref = vp_run
    base = plot_samples(ds, target=None, reference=ref)
    conv = {
        "torch32": ref.float(),
        "numpy": ref.numpy(),
        "xarray": xr.DataArray(ref.numpy(), dims=("sample", "feature")),
    }[container]
    fig = plot_samples(ds, target=None, reference=conv)
    for a, b in zip(base.axes, fig.axes, strict=True):
        assert a.get_xlim() == pytest.approx(b.get_xlim(), rel=1e-6)
        assert a.get_ylim() == pytest.approx(b.get_ylim(), rel=1e-6)
    bad = ref.clone()
    bad[3, 0] = float("nan")
    with pytest.raises(ValueError, match="reference.*NaN"):
        plot_samples(ds, reference=bad)
    with pytest.raises(ValueError, match="reference has 3 features"):
        plot_samples(ds, reference=np.zeros((10, 3)))
    with pytest.raises(TypeError, match="reference.*real numbers"):
        plot_samples(ds, reference=np.array([["a", "b"]] * 4))


def test_legends_lie_outside_the_data(vp_run):
    ds, target, ref = vp_run
    fig = plot_samples(ds, target=target, reference=ref)
    draw(fig)
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        legend = ax.get_legend()
        assert legend is not None
        lb, ab = legend.get_window_extent(renderer), ax.get_window_extent(renderer)
        assert lb.y1 <= ab.y0 + 1e-6, (ax.get_title(), lb, ab)


def test_reference_and_samples_both_visible(vp_run):
    """The exact distribution is drawn as contour lines over the samples, not as points under them."""
    ds, target, ref = vp_run
    for kwargs, what in (({"target": target}, "exact density"), ({"reference": ref}, "exact samples (300, KDE)")):
        fig = plot_samples(ds, **kwargs)
        ax = fig.axes[0]
        contours = [c for c in ax.collections if isinstance(c, ContourSet)]
        assert len(contours) == 1 and len(contours[0].levels) == 2
        points = [c for c in ax.collections if not isinstance(c, ContourSet)]
        assert points[0].get_offsets().shape == (300, 2)
        assert contours[0].get_zorder() > points[0].get_zorder()
        labels = [t.get_text() for t in ax.get_legend().get_texts()]
        assert any(s.startswith(what) for s in labels), labels
        assert any(s.startswith("samples (300)") for s in labels)


def test_hdr_levels_of_a_gaussian():
    """The 50 % and 90 % regions of N(0, I_2) are discs of radius sqrt(-2 log(1 - m))."""
    g = np.linspace(-6, 6, 801)
    X, Y = np.meshgrid(g, g)
    Z = np.exp(-(X**2 + Y**2) / 2) / (2 * math.pi)
    levels = plotting._hdr_levels(Z, (0.5, 0.9))
    expected = sorted((1 - m) / (2 * math.pi) for m in (0.5, 0.9))
    assert levels == pytest.approx(expected, rel=2e-3)


def test_axes_labels(vp_run):
    ds, target, ref = vp_run
    a0, a1, a2 = plot_samples(ds, target=target, reference=ref).axes
    assert (a0.get_xlabel(), a0.get_ylabel()) == ("$x_{1}$", "$x_{2}$")
    assert (a2.get_xlabel(), a2.get_ylabel()) == ("$x_{1}$", "$x_{2}$")
    assert a1.get_xlabel().startswith("SDE time $t$") and a1.get_ylabel().startswith("$x_{1}$")
    assert a1.get_xlim()[0] > a1.get_xlim()[1]  # T on the left


def test_many_saved_states_are_drawn_thin_and_few(vp_run):
    ds, target, ref = vp_run
    assert ds.sizes["time"] == 61
    fig = plot_samples(ds, target=target, reference=ref, n_traj=8)
    a1, a2 = fig.axes[1], fig.axes[2]
    lines = a1.get_lines()
    assert len(lines) == 8
    assert all(line.get_marker() in ("None", "", None) and line.get_linewidth() <= 0.6 for line in lines)
    # the 2-D panel shows at most three paths (a line, a start and an end marker each)
    paths = [line for line in a2.get_lines() if len(line.get_xdata()) > 1]
    assert len(paths) == 3 and all(line.get_linewidth() <= 0.5 for line in paths)
    assert "3 samples (61 saved states)" in a2.get_title()


def test_each_panel_is_scaled_to_what_it_shows(ve_like_run):
    ds, end = ve_like_run
    a0, a1, a2 = plot_samples(ds, reference=end).axes
    extent = np.abs(end).max()
    for ax in (a0, a2):  # the final samples fill the box; the starts at +-80 are off-scale
        for lim in (ax.get_xlim(), ax.get_ylim()):
            assert max(abs(lim[0]), abs(lim[1])) < 1.3 * extent
    assert a1.get_yscale() == "asinh"
    lo, hi = a1.get_ylim()
    assert lo < -100 and hi > 100  # the time panel shows the start as well
    labels = [t.get_text() for t in a2.get_legend().get_texts()]
    assert any("4 of 4 outside the axes" in s or "3 of 3 outside the axes" in s for s in labels), labels


def test_vp_like_starts_stay_inside(vp_run):
    ds, target, ref = vp_run
    a1, a2 = plot_samples(ds, target=target, reference=ref).axes[1:]
    assert a1.get_yscale() == "linear"
    labels = [t.get_text() for t in a2.get_legend().get_texts()]
    assert not any("outside" in s for s in labels)


def test_one_dimensional_samples():
    sde = sd.VPSDE()
    target = sd.GaussianMixture(torch.tensor([0.5, 0.5]), torch.tensor([[-2.0], [2.0]]), torch.ones(2, 1, 1) * 0.1)
    ds = sd.sample(sde, target.score(sde), sd.EulerMaruyama(steps=30), shape=(200, 1), save_at=31, progress=False)
    ref = target.sample(200, torch.Generator().manual_seed(0), dtype=torch.float64).numpy()
    fig = plot_samples(ds, target=target.marginal(sde, 1e-3), reference=ref)
    assert len(fig.axes) == 2
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels == ["exact samples (200)", "samples (200)", "exact density", "mode centres"]
    assert fig.axes[0].get_xlabel() == "$x_{1}$" and fig.axes[0].get_ylabel() == "probability density"


# ---------------------------------------------------------------------------------------
# image grids
# ---------------------------------------------------------------------------------------
def image_axes(fig: Figure) -> list:
    return [ax for ax in fig.axes if ax.images]


@pytest.mark.parametrize(("n", "max_images"), [(1, 64), (5, 64), (10, 4), (20, 16)])
def test_image_grid_draws_min_n_max_images(n, max_images):
    images = torch.linspace(0, 16, n * 64).reshape(n, 1, 8, 8)
    fig = plot_image_grid(images, 0.0, 16.0, title="digits", max_images=max_images)
    assert isinstance(fig, DisplayFigure)
    axes = image_axes(fig)
    assert len(axes) == len(fig.axes) == min(n, max_images)
    assert fig._suptitle is not None and fig._suptitle.get_text() == "digits"
    # image i shows images[i] mapped to [0, 1]
    for i, ax in enumerate(axes):
        np.testing.assert_allclose(ax.images[0].get_array(), images[i, 0].numpy() / 16.0, rtol=1e-6)
    if n == 5:
        assert fig._repr_png_().startswith(PNG_MAGIC)


def test_image_grid_rgb_clipping_and_nan():
    x = np.random.default_rng(0).uniform(-2, 2, size=(6, 3, 5, 5))
    x[0, 1, 2, 2] = np.nan
    fig = plot_image_grid(xr.DataArray(x, dims=("sample", "c", "h", "w")), -1.0, 1.0)
    axes = image_axes(fig)
    assert len(axes) == 6
    rgba = np.asarray(axes[0].images[0].get_array())
    assert rgba.shape == (5, 5, 4) and rgba[2, 2, 3] == 0.0 and rgba[0, 0, 3] == 1.0
    np.testing.assert_allclose(
        rgba[..., :3][rgba[..., 3] == 1], np.clip((x[0].transpose(1, 2, 0) + 1) / 2, 0, 1)[rgba[..., 3] == 1]
    )
    with pytest.raises(ValueError, match="images must have shape"):
        plot_image_grid(np.zeros((4, 8, 8)), 0, 1)
    with pytest.raises(ValueError, match="max_images"):
        plot_image_grid(np.zeros((4, 1, 8, 8)), 0, 1, max_images=0)


# ---------------------------------------------------------------------------------------
# loss curves
# ---------------------------------------------------------------------------------------
def history(n: int) -> xr.Dataset:
    steps = np.arange(1, n + 1) * 10
    return xr.Dataset({"loss": ("step", 1.0 / np.sqrt(steps))}, coords={"step": steps})


def test_loss_labels_cover_every_training_objective():
    from scoresde.training import OBJECTIVES

    assert set(plotting.LOSS_LABELS) == set(OBJECTIVES)


@pytest.mark.parametrize(
    ("objective", "label"),
    [
        ("dsm", "denoising score-matching loss"),
        ("ddpm", "DDPM ε-prediction loss"),
        ("flow_matching", "flow-matching loss"),
    ],
)
def test_plot_loss_labels_the_objective(objective, label):
    fig = plot_loss(history(200), title="run", objective=objective)
    assert isinstance(fig, DisplayFigure)
    (ax,) = fig.axes
    assert ax.get_ylabel() == label and ax.get_xlabel() == "optimiser step" and ax.get_title() == "run"
    assert ax.get_yscale() == "log"
    assert len(ax.get_lines()) == 2  # logged values and their running mean


def test_plot_loss_short_and_empty_histories():
    (ax,) = plot_loss(history(10)).axes
    assert len(ax.get_lines()) == 1
    (ax,) = plot_loss(history(0)).axes
    assert not ax.get_lines() and ax.texts[0].get_text() == "no logged steps"
    (ax,) = plot_loss(history(10), objective="truncated-dsm").axes  # a user objective's name
    assert ax.get_ylabel() == "truncated-dsm loss"
    with pytest.raises(TypeError, match="objective"):
        plot_loss(history(10), objective=None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="history"):
        plot_loss([1.0, 2.0])


def test_reference_label_and_model_samples_figure(vp_run):
    """A trained model's samples are drawn in data space against its training data, so labelled."""
    ds, _, ref = vp_run
    labels = [
        t.get_text()
        for t in plot_samples(ds, reference=ref, reference_label="training data").axes[0].get_legend().get_texts()
    ]
    assert any(s.startswith("training data (300, KDE)") for s in labels), labels
    data_cfg = {"feature_shape": [2], "shift": 1.0, "scale": 2.0, "name": "moons"}
    fig = sd.plotting.plot_model_samples(ds, data_cfg, ref, title="moons model", seed=0)
    final = fig.axes[0].collections[0].get_offsets()
    np.testing.assert_allclose(final, ds["x"].isel(time=-1).values * 2.0 + 1.0, rtol=1e-6)
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert any(s.startswith("training data (300, KDE)") for s in labels), labels
    images = xr.Dataset({"x_data": (("sample", "channel", "height", "width"), np.zeros((5, 1, 4, 4)))})
    images.attrs = {"sampler": "EulerMaruyama", "nfe": 3}
    grid = sd.plotting.plot_model_samples(images, {"feature_shape": [1, 4, 4], "shift": 0.0, "scale": 1.0})
    assert grid is not None and len([a for a in grid.axes if a.get_images()]) == 5
    assert sd.plotting.display_range(np.zeros((2, 1, 4, 4)), {"shift": 0.0, "scale": 1.0}) == (-0.5, 0.5)
    minmax = {"shift": 8.0, "scale": 8.0, "params": {"scaling": "minmax"}}
    assert sd.plotting.display_range(np.zeros(3), minmax) == (0.0, 16.0)
