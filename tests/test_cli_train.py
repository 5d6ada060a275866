"""``scoresde train`` and ``scoresde sample --checkpoint`` (tiny runs: the whole file takes seconds)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

import scoresde as sd
from scoresde import cli, plotting

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TINY = ["--steps", "50", "--batch-size", "16", "--log-every", "5", "--checkpoint-every", "25", "--quiet"]


def train(out: Path, *args: str) -> int:
    return cli.main(["train", "--out", str(out), *args])


def sample(checkpoint: Path, out: Path, *args: str) -> int:
    return cli.main(["sample", "--checkpoint", str(checkpoint), "--out", str(out), "--quiet", *args])


def open_nc(path: Path) -> xr.Dataset:
    with xr.open_dataset(path) as ds:
        return ds.load()


def assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_MAGIC


@pytest.fixture(scope="module")
def moons_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("moons")
    assert train(out, "--data", "moons", "--n-data", "2000", *TINY) == 0
    return out


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("digits")
    assert train(out, "--data", "digits", "--hidden", "8", "--steps", "3", "--batch-size", "8", "-q") == 0
    return out


# ---------------------------------------------------------------------------------------
# train
# ---------------------------------------------------------------------------------------
def test_train_writes_checkpoints_history_and_loss_plot(moons_run, capsys):
    names = sorted(p.name for p in moons_run.iterdir())
    assert names == ["history.nc", "last.pt", "loss.png", "step_0000025.pt", "step_0000050.pt"]
    assert_png(moons_run / "loss.png")
    hist = open_nc(moons_run / "history.nc")
    assert hist["step"].values[-1] == 50 and hist.sizes["step"] == 10
    assert np.isfinite(hist["loss"].values).all()
    ckpt = torch.load(moons_run / "last.pt", weights_only=True)
    assert ckpt["step"] == 50
    assert ckpt["config"]["model"]["network"]["name"] == "mlp"
    assert ckpt["config"]["model"]["parameterization"] == "noise"
    assert ckpt["config"]["train"]["batch_size"] == 16
    assert ckpt["config"]["data"]["n"] == 2000


def test_train_report_and_resume(moons_run, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(moons_run, out)
    assert train(out, "--data", "moons", "--n-data", "2000", *TINY[2:], "--steps", "60", "--lr", "1e-3") == 0
    captured = capsys.readouterr()
    assert f"resuming from {out / 'last.pt'} at step 50" in captured.out
    assert "ignoring --lr 0.001" in captured.err  # the checkpoint's optimiser settings are kept
    for word in ("steps      60", "10 this run", "steps/s", "wall time", "final loss", "last.pt"):
        assert word in captured.out
    assert "score err" not in captured.out  # moons has no exact score
    assert open_nc(out / "history.nc")["step"].values[-1] == 60
    assert torch.load(out / "last.pt", weights_only=True)["step"] == 60

    # already there: nothing to train; --no-resume starts over
    assert train(out, "--data", "moons", "--n-data", "2000", *TINY[2:], "--steps", "60") == 0
    assert "nothing to train" in capsys.readouterr().out
    assert train(out, "--data", "moons", "--n-data", "2000", *TINY[2:], "--steps", "5", "--no-resume") == 0
    assert "resuming" not in capsys.readouterr().out
    assert torch.load(out / "last.pt", weights_only=True)["step"] == 5


def test_resume_a_checkpoint_that_names_the_noise_prediction_eps(moons_run, tmp_path, capsys):
    """A run whose checkpoint records the former name "eps" resumes, with or without --parameterization eps."""
    from scoresde.training import checksum

    out = tmp_path / "run"
    shutil.copytree(moons_run, out)
    for p in out.glob("*.pt"):
        ckpt = torch.load(p, weights_only=True)
        ckpt["config"]["model"]["parameterization"] = "eps"
        ckpt["sha256"] = checksum(ckpt)
        torch.save(ckpt, p)
    assert train(out, "--data", "moons", "--n-data", "2000", *TINY[2:], "--steps", "55", "-q") == 0
    args = ("--data", "moons", "--n-data", "2000", *TINY[2:], "--steps", "60", "--parameterization", "eps")
    assert train(out, *args) == 0
    assert "resuming from" in capsys.readouterr().out
    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert ckpt["step"] == 60 and ckpt["config"]["model"]["parameterization"] == "noise"


def test_resume_refuses_a_different_run(moons_run, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(moons_run, out)
    assert train(out, "--data", "moons", "--n-data", "2000", "--sde", "ve", "--steps", "60", "-q") == 2
    err = capsys.readouterr().err
    assert "VPSDE" in err and "--no-resume" in err
    assert train(out, "--data", "moons", "--n-data", "2000", "--hidden", "16", "--steps", "60", "-q") == 2
    assert "different network" in capsys.readouterr().err


def test_train_mixture_reports_the_score_error(tmp_path, capsys):
    assert (
        train(
            tmp_path,
            "--data",
            "eight_gaussians",
            "--n-data",
            "1000",
            "--steps",
            "5",
            "--batch-size",
            "16",
            "--hidden",
            "16",
            "-q",
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "score err" in out
    value = float(out.split("score err")[1].split()[0])
    assert 0 < value < 10


def test_score_error_of_exact_and_zero_scores():
    sde = sd.VPSDE()
    data = sd.load_dataset("grid", n=2000)
    oracle = cli._model_space_oracle("grid", data)
    exact = oracle.score(sde)
    assert cli._score_error(exact, sde, oracle, n=500) == pytest.approx(0.0, abs=1e-12)
    assert cli._score_error(lambda x, t: torch.zeros_like(x), sde, oracle, n=500) == pytest.approx(1.0)
    # the oracle is the named mixture mapped like the data
    assert torch.allclose(oracle.mean(), (sd.grid().mean() - data.shift) / data.scale)


def test_train_from_netcdf_variable(tmp_path, capsys):
    path = tmp_path / "data.nc"
    rng = np.random.default_rng(0)
    xr.Dataset({"u": (("n", "f"), rng.standard_normal((64, 3))), "v": (("n",), np.arange(64.0))}).to_netcdf(path)
    assert train(tmp_path / "a", "--data", str(path), "--steps", "2", "--batch-size", "8", "-q") == 2
    assert "--var" in capsys.readouterr().err
    assert train(tmp_path / "b", "--data", str(path), "--var", "u", "--steps", "2", "--batch-size", "8", "-q") == 0
    ckpt = torch.load(tmp_path / "b" / "last.pt", weights_only=True)
    assert ckpt["config"]["data"]["feature_shape"] == [3]
    assert ckpt["config"]["data"]["params"]["var"] == "u"


# ---------------------------------------------------------------------------------------
# sample --checkpoint
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("sampler", "extra"), [("em", ["--steps", "10"]), ("ode", ["--rtol", "1e-2", "--atol", "1e-2"])]
)
def test_sample_checkpoint(moons_run, tmp_path, capsys, sampler, extra):
    out = tmp_path / sampler
    assert sample(moons_run / "last.pt", out, "--sampler", sampler, "--n-samples", "200", "--save-at", "3", *extra) == 0
    ds = open_nc(out / "samples.nc")
    assert ds["x"].dims == ("time", "sample", "feature") and ds["x"].shape == (3, 200, 2)
    assert ds["x_data"].dims == ("sample", "feature")
    a = ds.attrs
    assert a["checkpoint"] == str(moons_run / "last.pt") and a["checkpoint_step"] == 50
    np.testing.assert_allclose(
        ds["x_data"].values, ds["x"].values[-1] * a["data_scale"] + a["data_shift"], rtol=1e-6, atol=1e-6
    )
    assert a["sampler"] in ("EulerMaruyama", "ProbabilityFlowODE")
    assert a["metric_sw2"] > 0 and a["metric_sw2_floor_pairs"] == 8
    assert_png(out / "samples.png")
    report = capsys.readouterr().out
    assert "SW2" in report and "training data" in report and "floor" in report


def test_sample_checkpoint_option_conflicts(moons_run, tmp_path, capsys):
    out = tmp_path / "never"
    assert sample(moons_run / "last.pt", out, "--sde", "ve") == 2
    assert "--sde" in capsys.readouterr().err
    assert sample(moons_run / "last.pt", out, "--target", "grid") == 2
    assert "--target" in capsys.readouterr().err
    assert not out.exists()


def test_digits_unet_train_and_image_grid(digits_run, tmp_path, capsys, monkeypatch):
    assert sorted(p.name for p in digits_run.iterdir()) == ["history.nc", "last.pt", "loss.png", "step_0000003.pt"]
    ckpt = torch.load(digits_run / "last.pt", weights_only=True)
    assert ckpt["config"]["model"]["network"]["name"] == "unet"
    assert ckpt["config"]["model"]["network"]["base"] == 8

    grids = []
    real = plotting.plot_image_grid

    def spy(images, *args, **kwargs):
        grids.append(np.asarray(images).shape)
        return real(images, *args, **kwargs)

    monkeypatch.setattr(plotting, "plot_image_grid", spy)
    out = tmp_path / "s"
    assert sample(digits_run / "last.pt", out, "--steps", "3", "--n-samples", "4") == 0
    assert grids == [(4, 1, 8, 8)]
    ds = open_nc(out / "samples.nc")
    assert ds["x"].dims == ("time", "sample", "channel", "height", "width")
    assert ds["x_data"].shape == (4, 1, 8, 8)
    assert_png(out / "samples.png")
    assert "SW2" not in capsys.readouterr().out  # only for 2-D toy sets


# ---------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------
def test_unknown_dataset_lists_the_choices(tmp_path, capsys):
    out = tmp_path / "never"
    assert train(out, "--data", "mnist") == 2
    err = capsys.readouterr().err
    assert "--data" in err and "'mnist'" in err and "moons" in err and "digits" in err
    assert "Traceback" not in err
    assert not out.exists()


def test_nan_data_is_rejected(tmp_path, capsys):
    data = np.random.default_rng(0).standard_normal((50, 2))
    data[7, 0] = np.nan
    np.save(tmp_path / "bad.npy", data)
    out = tmp_path / "never"
    assert train(out, "--data", str(tmp_path / "bad.npy")) == 2
    err = capsys.readouterr().err
    assert err.startswith("scoresde: error: ") and "bad.npy" in err and "NaN" in err
    assert not out.exists()


def test_mlp_on_images_names_the_feature_shape(tmp_path, capsys):
    assert train(tmp_path / "never", "--data", "digits", "--net", "mlp") == 2
    err = capsys.readouterr().err
    assert "(1, 8, 8)" in err and "mlp" in err and "Traceback" not in err


def test_truncated_checkpoint(moons_run, tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes((moons_run / "last.pt").read_bytes()[:4000])
    assert sample(bad, tmp_path / "never") == 2
    err = capsys.readouterr().err
    assert err.startswith("scoresde: error: checkpoint") and "truncated or corrupt" in err
    assert not (tmp_path / "never").exists()
    assert sample(tmp_path / "missing.pt", tmp_path / "never") == 2
    assert "does not exist" in capsys.readouterr().err

    # a truncated last.pt in --out: train refuses to resume, and says how to start over
    out = tmp_path / "run"
    out.mkdir()
    shutil.copy(bad, out / "last.pt")
    assert train(out, "--data", "moons", "--steps", "5", "-q") == 2
    err = capsys.readouterr().err
    assert "truncated or corrupt" in err and "--no-resume" in err


def test_train_help():
    proc = subprocess.run(
        [sys.executable, "-m", "scoresde", "train", "--help"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    for opt in (
        "--data",
        "--var",
        "--n-data",
        "--net",
        "--hidden",
        "--parameterization",
        "--steps",
        "--batch-size",
        "--lr",
        "--weight-decay",
        "--warmup",
        "--grad-clip",
        "--ema-decay",
        "--eps",
        "--weighting",
        "--reduce",
        "--seed",
        "--checkpoint-every",
        "--log-every",
        "--device",
        "--out",
        "--no-resume",
        "--quiet",
    ):
        assert opt in proc.stdout


def test_train_help_describes_each_objective_and_sde(capsys):
    assert cli.main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    assert "Train a score network by denoising score matching" not in out
    for word in ("denoising score", "noise-prediction", "flow", "matching", "velocity", "RectifiedFlow", "DDPMSDE"):
        assert word in out
