"""The ``scoresde`` command line and the plotting helpers (small, fast runs)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
from matplotlib.figure import Figure

import scoresde as sd
from scoresde import cli
from scoresde.plotting import atomic_path, plot_samples, save_figure

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SMALL = ["--n-samples", "500", "--steps", "50", "--quiet"]


@pytest.fixture(autouse=True)
def floor_cache(tmp_path_factory, monkeypatch):
    """The SW2 floor cache of these runs: a fresh directory per test, never the user's."""
    path = tmp_path_factory.mktemp("floor-cache")
    monkeypatch.setenv("SCORESDE_CACHE_DIR", str(path))
    monkeypatch.delenv("SCORESDE_NO_CACHE", raising=False)
    return path


def run(out: Path, *args: str) -> int:
    return cli.main(["sample", "--out", str(out), *args])


def open_ds(out: Path) -> xr.Dataset:
    with xr.open_dataset(out / "samples.nc") as ds:
        return ds.load()


def assert_only_outputs(out: Path) -> None:
    """Exactly the two outputs, and no temporary (hidden) files left behind."""
    assert sorted(p.name for p in out.iterdir()) == ["samples.nc", "samples.png"]


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > 10_000  # a real figure, not an empty canvas


# ---------------------------------------------------------------------------------------
# the main job
# ---------------------------------------------------------------------------------------
def test_sample_writes_dataset_figure_and_report(tmp_path, capsys):
    out = tmp_path / "run"
    assert run(out, *SMALL) == 0
    captured = capsys.readouterr()

    ds = open_ds(out)
    # default --save-at: every one of the 50 steps (and T)
    assert dict(ds.sizes) == {"time": 51, "sample": 500, "feature": 2}
    assert ds["x"].dims == ("time", "sample", "feature")
    times = ds["time"].values
    assert times[0] == pytest.approx(1.0) and times[-1] == pytest.approx(1e-3)
    assert np.all(np.diff(times) < 0)
    assert np.isfinite(ds["x"].values).all()
    a = ds.attrs
    assert a["sde"] == "VPSDE" and a["sampler"] == "EulerMaruyama"  # the default sampler
    assert a["target"] == "eight_gaussians"
    assert a["nfe"] == 50  # 50 steps, one score evaluation each
    assert a["command"].startswith("scoresde sample")
    assert a["metric_sw2"] > 0
    assert a["metric_sw2_floor_pairs"] == 8
    assert a["metric_sw2_floor_threshold"] == pytest.approx(a["metric_sw2_floor_mean"] + 3 * a["metric_sw2_floor_std"])
    within = a["metric_sw2"] <= a["metric_sw2_floor_threshold"]
    assert a["metric_sw2_within_floor"] == int(within)
    fractions = np.atleast_1d(a["metric_mode_fractions"])
    assert fractions.shape == (8,) and fractions.sum() == pytest.approx(1.0)
    assert np.atleast_1d(a["metric_mode_z"]).shape == (8,)
    z = np.atleast_1d(a["metric_mode_z"])
    assert a["metric_mode_weights_ok"] == int(bool(np.all(np.abs(z) <= a["metric_mode_k"])))

    assert_png(out / "samples.png")
    assert_only_outputs(out)

    report = captured.out
    for word in ("VPSDE", "EulerMaruyama", "NFE", "50", "wall time", "SW2", "floor", "mode"):
        assert word in report
    assert ("within floor (mean + 3 sd" if within else "ABOVE floor (mean + 3 sd") in report
    assert "EulerMaruyama:" not in captured.err  # --quiet: no progress bar


def test_progress_bar_shown_without_quiet(tmp_path, capsys):
    assert run(tmp_path, "--n-samples", "100", "--steps", "5", "--sampler", "em", "--save-at", "2") == 0
    assert "EulerMaruyama" in capsys.readouterr().err


def test_rerun_is_deterministic_and_replaces_outputs(tmp_path, capsys):
    args = ("--n-samples", "300", "--steps", "20", "--sampler", "em", "--seed", "3", "--quiet")
    assert run(tmp_path, *args) == 0
    first = open_ds(tmp_path)
    assert run(tmp_path, *args) == 0
    second = open_ds(tmp_path)
    np.testing.assert_array_equal(first["x"].values, second["x"].values)
    for key in ("metric_sw2", "metric_sw2_floor_mean", "metric_sw2_floor_std"):
        assert first.attrs[key] == second.attrs[key]
    assert_only_outputs(tmp_path)
    assert run(tmp_path, *args[:-3], "--seed", "4", "--quiet") == 0
    assert not np.array_equal(open_ds(tmp_path)["x"].values, first["x"].values)


@pytest.mark.parametrize(
    ("sampler", "extra", "cls", "nfe"),
    [
        (
            "pc",
            ["--steps", "20", "--predictor", "ancestral", "--corrector", "ald", "--snr", "0.1"],
            "PredictorCorrector",
            40,
        ),
        ("em", ["--steps", "20"], "EulerMaruyama", 20),
        ("ode", ["--rtol", "1e-3", "--atol", "1e-3"], "ProbabilityFlowODE", None),
        ("ode-euler", ["--steps", "20"], "ProbabilityFlowODE", 20),
        ("ode-heun", ["--steps", "20"], "ProbabilityFlowODE", 40),
        ("torchsde", ["--steps", "20"], "TorchSDE", None),
    ],
)
def test_each_sampler_runs(tmp_path, capsys, sampler, extra, cls, nfe):
    out = tmp_path / sampler
    assert run(out, "--sampler", sampler, "--n-samples", "200", "--save-at", "3", "--quiet", *extra) == 0
    ds = open_ds(out)
    assert ds.attrs["sampler"] == cls
    assert ds.sizes["sample"] == 200
    if nfe is not None:
        assert ds.attrs["nfe"] == nfe
    else:
        assert ds.attrs["nfe"] > 0
    assert np.isfinite(ds["x"].values).all()
    assert_png(out / "samples.png")
    assert_only_outputs(out)
    assert "floor" in capsys.readouterr().out


def test_ode_method_and_steps_warning(tmp_path, capsys):
    assert run(tmp_path, "--sampler", "ode", "--steps", "7", "--n-samples", "100", "--rtol", "1e-3", "-q") == 0
    ds = open_ds(tmp_path)
    assert '"method": "RK45"' in ds.attrs["sampler_params"]
    assert "--steps is ignored" in capsys.readouterr().err


@pytest.mark.parametrize("sde", ["subvp", "ve"])
def test_options_reach_the_library(tmp_path, capsys, sde):
    args = [
        "--sde",
        sde,
        "--target",
        "grid",
        "--dtype",
        "float64",
        "--eps",
        "0.01",
        "--denoise",
        "--sampler",
        "ode-heun",
        "--steps",
        "10",
        "--n-samples",
        "300",
        "--save-at",
        "4",
        "-q",
    ]
    assert run(tmp_path, *args) == 0
    ds = open_ds(tmp_path)
    assert ds.attrs["sde"] == {"subvp": "SubVPSDE", "ve": "VESDE"}[sde]
    assert ds.attrs["target"] == "grid"
    assert ds["x"].dtype == np.float64
    assert ds.attrs["eps"] == pytest.approx(0.01)
    # denoised: a final state at t = 0, compared with the target itself
    assert ds["time"].values[-1] == 0.0 and ds["time"].values[-2] == pytest.approx(0.01)
    assert "the target" in ds.attrs["metric_sw2_reference"]
    assert np.atleast_1d(ds.attrs["metric_mode_fractions"]).shape == (25,)
    assert "denoised" in capsys.readouterr().out


def test_main_restores_torch_threads(tmp_path, capsys):
    before = torch.get_num_threads()
    assert run(tmp_path, "--n-samples", "50", "--steps", "3", "--sampler", "em", "-q", "--threads", "1") == 0
    assert torch.get_num_threads() == before


def test_non_finite_samples_exit_1_but_write_files(tmp_path, capsys, monkeypatch):
    real_sample = cli.sample

    def broken(*args, **kwargs):
        ds = real_sample(*args, **kwargs)
        ds["x"][-1, 0, 0] = np.nan
        return ds

    monkeypatch.setattr(cli, "sample", broken)
    assert run(tmp_path, "--n-samples", "50", "--steps", "3", "--sampler", "em", "-q") == 1
    captured = capsys.readouterr()
    assert "NaN" in captured.err and "skipped" in captured.out
    assert "metric_sw2" not in open_ds(tmp_path).attrs
    assert_only_outputs(tmp_path)


# ---------------------------------------------------------------------------------------
# entry points and errors
# ---------------------------------------------------------------------------------------
def test_python_m_help_exits_0():
    proc = subprocess.run(
        [sys.executable, "-m", "scoresde", "sample", "--help"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: scoresde sample")
    for opt in ("--sde", "--sampler", "--steps", "--n-samples", "--out", "--denoise", "--save-at"):
        assert opt in proc.stdout


def test_no_command_and_version(capsys):
    assert cli.main([]) == 2
    err = capsys.readouterr().err
    assert "sample" in err and "train" in err
    assert cli.main(["--version"]) == 0
    assert sd.__version__ in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--target", "moons"], "--target"),
        (["--sde", "cld"], "--sde"),
        (["--sampler", "dpm"], "--sampler"),
        (["--n-samples", "0"], "--n-samples"),
        (["--n-samples", "ten"], "--n-samples"),
        (["--steps", "0"], "--steps"),
        (["--save-at", "1"], "--save-at"),
        (["--seed", "-1"], "--seed"),
        (["--eps", "0"], "--eps"),
        (["--eps", "1.5"], "--eps"),
        (["--snr", "-1"], "--snr"),
        (["--dtype", "float16"], "--dtype"),
        (["--device", "tpu:0"], "--device"),
        (["--sampler", "em", "--predictor", "ancestral"], "--predictor"),
        (["--sampler", "ode-euler", "--rtol", "1e-3"], "--rtol"),
    ],
)
def test_bad_arguments_exit_2_naming_the_option(tmp_path, capsys, args, needle):
    out = tmp_path / "never"
    assert run(out, *args) == 2
    err = capsys.readouterr().err
    assert needle in err and "error" in err
    assert "Traceback" not in err
    assert not out.exists()  # nothing is created before the arguments are checked


def test_out_is_a_file(tmp_path, capsys):
    path = tmp_path / "file.txt"
    path.write_text("keep me")
    assert run(path, "--n-samples", "50") == 2
    err = capsys.readouterr().err
    assert "--out" in err and "not a directory" in err
    assert path.read_text() == "keep me"


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_without_cuda(tmp_path, capsys):
    assert run(tmp_path / "o", "--device", "cuda", "--n-samples", "50") == 2
    err = capsys.readouterr().err
    assert "--device" in err and "CUDA is not available" in err and "Traceback" not in err


def test_library_errors_are_reported_without_traceback(tmp_path, capsys):
    # the library rejects the ancestral predictor for sub-VP: ValueError -> "scoresde: error: ..."
    argv = ("--sde", "subvp", "--sampler", "pc", "--predictor", "ancestral", "--n-samples", "50")
    assert run(tmp_path / "o", *argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("scoresde: error: ") and "ancestral" in err and "Traceback" not in err


# ---------------------------------------------------------------------------------------
# plotting
# ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_ds():
    sde = sd.VPSDE()
    target = sd.eight_gaussians()
    ds = sd.sample(sde, target.score(sde), sd.EulerMaruyama(steps=20), shape=(200, 2), save_at=5, progress=False)
    return ds, target.marginal(sde, 1e-3)


def test_plot_samples_panels(small_ds):
    ds, target = small_ds
    exact = target.sample(200, torch.Generator().manual_seed(0))
    fig = plot_samples(ds, target=target, reference=exact, n_traj=4)
    assert isinstance(fig, Figure)
    axes = fig.get_axes()
    assert len(axes) == 3
    for ax in axes:
        assert ax.get_xlabel() and ax.get_ylabel() and ax.get_title()
    assert axes[0].get_legend() is not None and axes[2].get_legend() is not None
    labels = [t.get_text() for t in axes[0].get_legend().get_texts()]
    assert any("exact" in s for s in labels) and any("mode" in s for s in labels)
    assert len(axes[1].get_lines()) == 4
    lo, hi = axes[1].get_xlim()
    assert lo > hi  # time runs from T (left) down to eps (right)


def test_plot_samples_into_given_axes(small_ds):
    ds, _ = small_ds
    fig = Figure()
    ax = fig.add_subplot()
    assert plot_samples(ds, ax=ax) is fig
    assert len(fig.get_axes()) == 1
    with pytest.raises(TypeError):
        plot_samples(ds.to_array())


def test_save_figure_is_atomic(tmp_path, small_ds):
    ds, _ = small_ds
    fig = plot_samples(ds)
    path = save_figure(fig, tmp_path / "f.png")
    assert_png(path)
    with pytest.raises(ValueError):  # unknown format: the error propagates, no temporary file is left
        save_figure(fig, tmp_path / "f.notaformat")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.png"]


def test_atomic_path_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "data.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"partial")
        raise RuntimeError("writer failed")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["data.bin"]
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["data.bin"]


# ---------------------------------------------------------------------------------------
# start-up without torch, the sampler table, and the options of each sampler
# ---------------------------------------------------------------------------------------
HEAVY = ("torch", "xarray", "matplotlib")
PROBE = (
    "import sys\n"
    "from scoresde.cli import main\n"
    "rc = main(sys.argv[1:])\n"
    "print('HEAVY=' + ','.join(m for m in {heavy!r} if m in sys.modules))\n"
    "sys.exit(rc)\n"
)


@pytest.mark.parametrize(
    ("argv", "code"),
    [
        (["--help"], 0),
        (["sample", "--help"], 0),
        (["train", "--help"], 0),
        (["sample", "--n-samples", "0"], 2),
        (["sample", "--sampler", "em", "--order", "2"], 2),
        (["sample", "--sampler", "dpm"], 2),
        (["sample", "--device", "tpu"], 2),
    ],
)
def test_help_and_usage_errors_import_no_torch(argv, code):
    proc = subprocess.run(
        [sys.executable, "-c", PROBE.format(heavy=HEAVY), *argv], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == code, proc.stderr
    assert "HEAVY=\n" in proc.stdout  # none of torch, xarray, matplotlib was imported
    if code == 2:
        assert "error" in proc.stderr and "Traceback" not in proc.stderr


def test_sample_help_lists_every_sampler_and_grid():
    proc = subprocess.run(
        [sys.executable, "-m", "scoresde", "sample", "--help"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    for name, spec in cli.SAMPLERS.items():
        assert f"  {name} " in proc.stdout and spec.class_name in proc.stdout
    for grid in sd.GRIDS:
        assert f"  {grid} " in proc.stdout
    for key in ("vp", "subvp", "ve", "ddpm", "rf"):
        assert f"  {key} " in proc.stdout
    assert "VP, sub-VP or VE," not in proc.stdout


def test_parser_names_are_the_librarys():
    from scoresde import adaptive, datasets, ddpm, flow, losses, samplers, solvers, training

    assert set(cli.TARGET_NAMES) == set(sd.TARGETS)
    assert cli.TOY_DATASETS == tuple(datasets.TOY_DATASETS) and cli.DATASETS == datasets.DATASETS
    assert set(cli.PREDICTOR_NAMES) == set(samplers.PREDICTORS)
    assert set(cli.CORRECTOR_NAMES) == set(samplers.CORRECTORS) | set(samplers.CORRECTOR_ALIASES)
    assert cli.WEIGHTING_NAMES == losses.WEIGHTINGS and cli.OBJECTIVE_NAMES == training.OBJECTIVES
    assert cli.GRID_NAMES == tuple(sd.GRIDS)
    assert cli.SCIPY_METHOD_NAMES == samplers.SCIPY_METHODS
    assert cli.TORCHDIFFEQ_METHOD_NAMES == samplers.TORCHDIFFEQ_METHODS
    assert cli.TORCHSDE_METHOD_NAMES == samplers.TORCHSDE_METHODS
    assert cli.FLOW_METHOD_NAMES == flow.METHODS
    assert cli.UNIPC_VARIANTS == solvers.UniPC.VARIANTS and cli.DDPM_VARIANCES == ddpm.VARIANCES
    assert cli.TRAIN_DEFAULTS == {k: v for k, v in dataclasses.asdict(training.TrainConfig()).items()}
    assert {k: c.__name__ for k, c in cli.SDES.items()} == {k: v[0] for k, v in cli.SDE_CHOICES.items()}
    assert cli.DTYPES == {"float32": torch.float32, "float64": torch.float64}
    # every sampler class of the library is reachable
    classes = {spec.load() for spec in cli.SAMPLERS.values()}
    library = {
        samplers.EulerMaruyama,
        samplers.PredictorCorrector,
        samplers.ProbabilityFlowODE,
        samplers.TorchSDE,
        *solvers.SOLVERS.values(),
        solvers.DPMSolverPPSinglestep,
        solvers.AdaptiveDPMSolver,
        adaptive.AdaptiveSDE,
        ddpm.DDPMAncestral,
        flow.FlowODE,
    }
    assert library <= classes


@pytest.mark.parametrize("name", list(cli.SAMPLERS))
def test_sampler_table_defaults_and_options_match_the_classes(name):
    import inspect

    spec = cli.SAMPLERS[name]
    cls = spec.load()
    params = inspect.signature(cls).parameters
    assert set(spec.options) | set(spec.fixed) | set(spec.defaults) <= set(params)
    args = cli.build_parser().parse_args(["sample", "--sampler", name])
    sampler = cli.build_sampler(args)
    assert type(sampler) is cls
    steps = sampler.params().get("steps")
    if steps is not None:  # the help's "default N steps" is the built sampler's
        assert f"default {steps} steps" in spec.summary


# (CLI arguments, --sde, expected class, expected sampler_params entries, expected NFE or None)
SAMPLER_RUNS = [
    ("pc", ["--steps", "4", "--corrector-steps", "2"], "vp", "PredictorCorrector", {"corrector_steps": 2}, 12),
    ("em", ["--steps", "5"], "vp", "EulerMaruyama", {"steps": 5}, 5),
    (
        "ode",
        ["--method", "RK23", "--rtol", "1e-2", "--atol", "1e-2"],
        "vp",
        "ProbabilityFlowODE",
        {"method": "RK23", "rtol": 0.01},
        None,
    ),
    ("ode-euler", ["--steps", "5"], "vp", "ProbabilityFlowODE", {"method": "euler", "steps": 5}, 5),
    ("ode-heun", ["--steps", "5"], "vp", "ProbabilityFlowODE", {"method": "heun", "steps": 5}, 10),
    ("torchsde", ["--method", "euler", "--steps", "5"], "vp", "TorchSDE", {"method": "euler", "steps": 5}, 5),
    ("adaptive", ["--rtol", "0.05", "--atol", "0.05"], "vp", "AdaptiveSDE", {"rtol": 0.05, "atol": 0.05}, None),
    (
        "euler",
        ["--steps", "5", "--grid", "karras", "--grid-rho", "3"],
        "vp",
        "Euler",
        {"grid": "KarrasSigma(rho=3.0)"},
        5,
    ),
    (
        "heun",
        ["--steps", "5", "--grid", "quadratic", "--grid-power", "1.5"],
        "ve",
        "Heun",
        {"grid": "TimeQuadratic(power=1.5)"},
        10,
    ),
    (
        "ddim",
        ["--steps", "5", "--eta", "0.5", "--grid", "logsnr"],
        "vp",
        "DDIM",
        {"eta": 0.5, "grid": "LogSNRUniform()"},
        5,
    ),
    (
        "dpmsolver++",
        ["--steps", "6", "--order", "3", "--no-lower-order-final"],
        "subvp",
        "DPMSolverPP",
        {"order": 3, "lower_order_final": False},
        6,
    ),
    (
        "unipc",
        ["--steps", "6", "--order", "2", "--variant", "bh1", "--grid", "uniform"],
        "vp",
        "UniPC",
        {"order": 2, "variant": "bh1", "grid": "UniformTime()"},
        6,
    ),
    ("ddpm", ["--variance", "beta_tilde"], "ddpm", "DDPMAncestral", {"variance": "beta_tilde"}, 1000),
    (
        "flow",
        ["--steps", "5", "--method", "euler", "--t-clip", "1e-3"],
        "rf",
        "FlowODE",
        {"method": "euler", "steps": 5, "t_clip": 0.001},
        5,
    ),
]


@pytest.mark.parametrize(
    ("name", "extra", "sde", "cls", "params", "nfe"), SAMPLER_RUNS, ids=[r[0] for r in SAMPLER_RUNS]
)
def test_every_sampler_runs_from_the_cli(tmp_path, capsys, name, extra, sde, cls, params, nfe):
    out = tmp_path / name
    argv = ["--sde", sde, "--sampler", name, *extra, "--n-samples", "50", "--no-evaluate", "-q"]
    assert run(out, *argv) == 0, capsys.readouterr().err
    ds = open_ds(out)
    assert ds.attrs["sampler"] == cls
    recorded = json.loads(ds.attrs["sampler_params"])
    for key, value in params.items():
        assert recorded[key] == value
    if nfe is not None:
        assert ds.attrs["nfe"] == nfe
    assert ds.sizes["sample"] == 50 and np.isfinite(ds["x"].values).all()
    assert not any(k.startswith("metric_") for k in ds.attrs)
    assert "skipped (--no-evaluate)" in capsys.readouterr().out
    assert_only_outputs(out)


def test_grid_defaults_of_the_solvers(tmp_path, capsys):
    assert run(tmp_path, "--sampler", "dpmsolver++", "--steps", "4", "--n-samples", "20", "--no-evaluate", "-q") == 0
    assert json.loads(open_ds(tmp_path).attrs["sampler_params"])["grid"] == "LogSNRUniform()"


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--sampler", "em", "--grid", "logsnr"], "argument --grid: does not apply to --sampler em"),
        (["--sampler", "ode", "--order", "2"], "argument --order"),
        (["--sampler", "ddim", "--variant", "bh1"], "--variant"),
        (["--sampler", "ddpm", "--sde", "ddpm", "--steps", "5"], "argument --steps: does not apply"),
        (["--sampler", "ddpm", "--sde", "ddpm", "--eps", "0.01"], "argument --eps"),
        (["--sampler", "flow", "--sde", "rf", "--denoise"], "argument --denoise"),
        (["--sampler", "adaptive", "--eta", "0.3"], "--eta"),
        (["--sampler", "ode", "--method", "heun"], "invalid choice 'heun' for --sampler ode"),
        (["--sampler", "torchsde", "--method", "RK45"], "--method"),
        (["--sampler", "euler", "--grid-rho", "3"], "argument --grid-rho: only applies to --grid karras"),
        (["--sampler", "euler", "--grid", "logsnr", "--grid-power", "2"], "--grid-power"),
        (["--sampler", "ddim", "--eta", "1.5"], "--eta"),
        (["--sampler", "unipc", "--order", "4"], "--order"),
        (["--sampler", "no_such_module_xyz:Sampler"], "argument --sampler: cannot import"),
        (["--sampler", "scoresde.mixture:GaussianMixture"], "not a scoresde.Sampler subclass"),
        (["--sampler", "scoresde.samplers:EulerMaruyama", "--grid", "logsnr"], "argument --grid"),
    ],
)
def test_sampler_options_that_do_not_apply_exit_2(tmp_path, capsys, args, needle):
    out = tmp_path / "never"
    assert run(out, *args) == 2
    err = capsys.readouterr().err
    assert needle in err and "error" in err and "Traceback" not in err
    assert not out.exists()


def test_sampler_by_import_path(tmp_path, capsys):
    args = ["--sampler", "scoresde.solvers:DDIM", "--steps", "4", "--eta", "0.2", "--n-samples", "30"]
    assert run(tmp_path, *args, "--no-evaluate", "-q") == 0
    ds = open_ds(tmp_path)
    assert ds.attrs["sampler"] == "DDIM" and ds.attrs["nfe"] == 4
    assert json.loads(ds.attrs["sampler_params"])["eta"] == 0.2


def test_default_save_at_and_no_evaluate_figure(tmp_path, capsys):
    # ode (adaptive): MAX_DEFAULT_SAVE_AT evenly spaced states; ode-euler with 7 steps: every step
    assert run(tmp_path / "a", "--sampler", "ode", "--rtol", "1e-2", "--n-samples", "20", "--no-evaluate", "-q") == 0
    assert open_ds(tmp_path / "a").sizes["time"] == cli.MAX_DEFAULT_SAVE_AT
    assert (
        run(tmp_path / "b", "--sampler", "ode-euler", "--steps", "7", "--n-samples", "20", "--no-evaluate", "-q") == 0
    )
    assert open_ds(tmp_path / "b").sizes["time"] == 8
    assert_png(tmp_path / "b" / "samples.png")
    out = capsys.readouterr().out
    assert "evaluation skipped" in out and "writing and plotting" in out


def test_report_splits_the_wall_time(tmp_path, capsys):
    assert run(tmp_path, "--sampler", "em", "--steps", "5", "--n-samples", "100", "-q") == 0
    out = capsys.readouterr().out
    line = next(s for s in out.splitlines() if "wall time" in s)
    assert "s sampling" in line and "s evaluation" in line and "writing and plotting" in line and "in all" in line


def test_floor_cache_second_run_reads_the_same_floor(tmp_path, capsys, floor_cache):
    args = ("--sampler", "em", "--steps", "5", "--n-samples", "300", "-q")
    assert run(tmp_path / "a", *args) == 0
    first = open_ds(tmp_path / "a").attrs
    assert first["metric_sw2_floor_cached"] == 0 and "cached" not in capsys.readouterr().out
    (entry,) = floor_cache.iterdir()
    assert entry.name.startswith("sw2-floor-") and entry.suffix == ".json"
    assert run(tmp_path / "b", *args, "--seed", "0") == 0
    second = open_ds(tmp_path / "b").attrs
    assert second["metric_sw2_floor_cached"] == 1 and "; cached" in capsys.readouterr().out
    for key in ("metric_sw2", "metric_sw2_floor_mean", "metric_sw2_floor_std", "metric_sw2_floor_threshold"):
        assert first[key] == second[key]
    # another n is another floor; --no-floor-cache neither reads nor writes
    assert run(tmp_path / "c", *args[:-3], "--n-samples", "301", "--no-floor-cache", "-q") == 0
    assert open_ds(tmp_path / "c").attrs["metric_sw2_floor_cached"] == 0
    assert len(list(floor_cache.iterdir())) == 1


def test_default_save_at_rule():
    em, vp = sd.EulerMaruyama(steps=1000), sd.VPSDE()
    assert cli._default_save_at(em, vp, 500 * 2) == cli.MAX_DEFAULT_SAVE_AT
    assert cli._default_save_at(em, vp, 20_000 * 2) == cli.DEFAULT_SAVE_VALUES // 40_000 == 50
    assert cli._default_save_at(em, vp, 10**7) == cli.MIN_DEFAULT_SAVE_AT
    assert cli._default_save_at(sd.EulerMaruyama(steps=7), vp, 100) == 8
    assert cli._default_save_at(sd.ProbabilityFlowODE(), vp, 100) == cli.MAX_DEFAULT_SAVE_AT  # adaptive RK45
    # an explicit wish (image checkpoints) is capped by what the sampler saves
    assert cli._default_save_at(sd.EulerMaruyama(steps=3), vp, 64, cli.IMAGE_SAVE_AT) == 4
    assert cli._default_save_at(em, vp, 64, cli.IMAGE_SAVE_AT) == cli.IMAGE_SAVE_AT
