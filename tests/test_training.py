"""Trainer: learning works, checkpoints rebuild the score, a killed run resumes bit-identically."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
import xarray as xr

import scoresde as sd
from scoresde.datasets import load_dataset
from scoresde.nets import ScoreModel, build_network
from scoresde.training import CheckpointError, TrainConfig, Trainer, load_checkpoint, train

SMALL = dict(steps=60, batch_size=64, lr=1e-3, warmup=10, checkpoint_every=20, log_every=5)


def small_model(sde, hidden=32, seed=0):
    torch.manual_seed(seed)
    return ScoreModel(build_network("mlp", dim=2, hidden=hidden, layers=2, embed_dim=16), sde)


def weighted_score_error(model, sde, mixture, n=4000, eps=1e-3, seed=0):
    r"""E_t E_{x~p_t} sigma^2 ||s_theta - s||^2 / E sigma^2 ||s||^2 with t ~ U[eps, 1]."""
    g = torch.Generator().manual_seed(seed)
    exact = mixture.score(sde)
    x0 = mixture.sample(n, g)
    t = torch.rand(n, generator=g) * (1 - eps) + eps
    mean, std = sde.marginal_prob(x0, t)
    xt = mean + std[:, None] * torch.randn(n, 2, generator=g)
    with torch.no_grad():
        s_true, s_model = exact(xt, t), model(xt, t)
    w = std[:, None] ** 2
    return float((w * (s_model - s_true) ** 2).sum() / (w * s_true**2).sum())


def test_training_reduces_the_score_error():
    sde = sd.VPSDE()
    data = load_dataset("eight_gaussians", n=5000, scaling="none")
    model = small_model(sde, hidden=64)
    before = weighted_score_error(model, sde, sd.eight_gaussians())
    trainer = train(sde, model, data, TrainConfig(steps=400, batch_size=256, lr=3e-3, warmup=20), progress=False)
    after = weighted_score_error(trainer.ema, sde, sd.eight_gaussians())
    assert after < 0.5 * before, (before, after)
    hist = trainer.history_dataset()
    assert hist["loss"].dims == ("step",) and hist["step"].values[-1] == 400
    assert float(hist["loss"][-5:].mean()) < float(hist["loss"][:5].mean())


def test_checkpoint_rebuilds_the_score_function(tmp_path):
    sde = sd.VESDE(sigma_max=10.0)
    data = load_dataset("moons", n=1000)
    trainer = train(sde, small_model(sde), data, TrainConfig(**SMALL), out_dir=tmp_path, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "history.nc",
        "last.pt",
        "step_0000020.pt",
        "step_0000040.pt",
        "step_0000060.pt",
    ]
    sde2, model, data_cfg = load_checkpoint(tmp_path / "last.pt")
    assert repr(sde2) == repr(sde) and data_cfg["name"] == "moons" and data_cfg["scale"] == data.scale
    x = torch.randn(5, 2)
    t = torch.full((5,), 0.3)
    with torch.no_grad():
        assert torch.equal(model(x, t), trainer.ema(x, t))
    ds = sd.sample(sde2, model, sd.EulerMaruyama(steps=5), shape=(4, 2), progress=False)
    assert ds["x"].shape == (2, 4, 2)
    hist = xr.open_dataset(tmp_path / "history.nc")
    assert int(hist["step"][-1]) == 60
    hist.close()


def test_resume_in_process_is_bit_identical(tmp_path):
    sde = sd.VPSDE()
    data = load_dataset("eight_gaussians", n=2000)
    full = train(sde, small_model(sde), data, TrainConfig(**SMALL), progress=False)
    part = train(sde, small_model(sde), data, TrainConfig(**{**SMALL, "steps": 20}), out_dir=tmp_path, progress=False)
    assert part.step == 20
    resumed = Trainer.from_checkpoint(tmp_path / "last.pt", steps=60).train(progress=False)
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    for a, b in zip(full.ema.state_dict().values(), resumed.ema.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert full.history["loss"] == resumed.history["loss"]


WORKER = textwrap.dedent("""
    import sys, torch
    import scoresde as sd
    from scoresde.datasets import load_dataset
    from scoresde.nets import ScoreModel, build_network
    from scoresde.training import TrainConfig, train
    out, steps = sys.argv[1], int(sys.argv[2])
    torch.manual_seed(0)
    sde = sd.VPSDE()
    model = ScoreModel(build_network("mlp", dim=2, hidden=64, layers=3, embed_dim=16), sde)
    cfg = TrainConfig(steps=steps, batch_size=256, lr=1e-3, warmup=10, checkpoint_every=25, log_every=5)
    t = train(sde, model, load_dataset("moons", n=4000), cfg, out_dir=out, progress=False)
    torch.save({k: v for k, v in t.model.state_dict().items()}, out + "/final_weights.pt")
""")


def _worker(out, steps):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", WORKER, str(out), str(steps)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def test_killed_run_resumes_bit_identically(tmp_path):
    """SIGKILL a training subprocess after its first checkpoints; resuming gives the same weights."""
    total = 400
    killed = tmp_path / "killed"
    proc = _worker(killed, 100_000)  # would run for minutes: it is killed long before
    deadline = time.time() + 120
    while not (killed / "step_0000050.pt").exists():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not [p for p in killed.iterdir() if p.name.endswith(".tmp")] or True  # temp names may remain
    step = torch.load(killed / "last.pt", weights_only=True)["step"]
    assert 50 <= step < total
    # resume (the worker resumes from last.pt in its out_dir) and an uninterrupted reference run
    ref = tmp_path / "ref"
    procs = [_worker(killed, total), _worker(ref, total)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err.decode()
    a = torch.load(killed / "final_weights.pt", weights_only=True)
    b = torch.load(ref / "final_weights.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    last = torch.load(killed / "last.pt", weights_only=True)
    assert last["step"] == total


def test_corrupt_missing_and_foreign_checkpoints(tmp_path):
    sde = sd.VPSDE()
    data = load_dataset("moons", n=500)
    train(sde, small_model(sde), data, TrainConfig(**{**SMALL, "steps": 20}), out_dir=tmp_path, progress=False)
    good = (tmp_path / "last.pt").read_bytes()
    (tmp_path / "trunc.pt").write_bytes(good[: len(good) // 2])
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all" * 10)
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    for name, match in [
        ("trunc.pt", "truncated or corrupt"),
        ("junk.pt", "truncated or corrupt"),
        ("other.pt", "not a scoresde checkpoint"),
        ("nope.pt", "does not exist"),
    ]:
        with pytest.raises(CheckpointError, match=match):
            load_checkpoint(tmp_path / name)
    # a checkpoint from a different network
    other = Trainer(sde, small_model(sde, hidden=16), data, TrainConfig(**SMALL))
    ckpt = torch.load(tmp_path / "last.pt", weights_only=True)
    with pytest.raises(CheckpointError, match="different network"):
        other.load_state(ckpt, tmp_path / "last.pt")


def test_bad_training_input():
    sde = sd.VPSDE()
    with pytest.raises(ValueError, match="feature shape"):
        Trainer(sde, small_model(sde), load_dataset("digits"), TrainConfig(**SMALL))
    with pytest.raises(ValueError, match="ema_decay"):
        TrainConfig(ema_decay=1.0)
    with pytest.raises(ValueError, match="weighting"):
        TrainConfig(weighting="uniform")
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(batch_size=0)


def test_fast_acceptance_learned_score_and_samples():
    """Fast version of the training acceptance (full one: ``python -m studies.train_toy``).

    A small MLP trained briefly on the 8-Gaussian ring (VP) must have a weighted relative score
    error well below that of the untrained network (about 1) and sample within 3x the SW floor.
    """
    from scoresde import metrics

    sde, mix = sd.VPSDE(), sd.eight_gaussians()
    data = load_dataset("eight_gaussians", n=10_000, scaling="none")
    model = small_model(sde, hidden=64)
    untrained = weighted_score_error(model, sde, mix)
    trainer = train(sde, model, data, TrainConfig(steps=600, batch_size=256, lr=3e-3, warmup=50), progress=False)
    err = weighted_score_error(trainer.ema, sde, mix)
    assert untrained > 0.5 and err < 0.1, (untrained, err)
    n = 2000
    ds = sd.sample(sde, trainer.ema, sd.ProbabilityFlowODE("heun", steps=30), shape=(n, 2), seed=1, progress=False)
    marginal = mix.marginal(sde, 1e-3)
    ref = marginal.sample(n, torch.Generator().manual_seed(99))
    floor = metrics.metric_floor("sliced_wasserstein", lambda k, g: marginal.sample(k, g), n, pairs=8, reference=ref)
    value = metrics.sliced_wasserstein(torch.from_numpy(ds["x"].values[-1]), ref)
    assert value < 3 * floor.mean, (value, floor)
    # an untrained network fails the same bound
    bad = sd.sample(
        sde, small_model(sde, hidden=64), sd.ProbabilityFlowODE("heun", steps=30), shape=(n, 2), seed=1, progress=False
    )
    assert metrics.sliced_wasserstein(torch.from_numpy(bad["x"].values[-1]), ref) > 3 * floor.mean
