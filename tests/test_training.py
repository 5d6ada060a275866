"""Trainer: learning works, checkpoints rebuild the score, a killed run resumes bit-identically."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import xarray as xr

import scoresde as sd
from scoresde.datasets import load_dataset
from scoresde.nets import ScoreModel, build_network
from scoresde.training import CheckpointError, TrainConfig, Trainer, load_checkpoint, read_checkpoint, train

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


# A training subprocess that stops dead (and waits to be killed) at a point the test chooses:
# PAUSE = "<file name>:<when>" pauses when the trainer starts writing that file ("start": the
# temporary file is still empty) or after half of its bytes ("mid"), and creates <out>/paused.
WORKER = textwrap.dedent("""
    import io, os, sys, time, torch
    from pathlib import Path
    import scoresde as sd
    from scoresde.datasets import load_dataset
    from scoresde.nets import ScoreModel, build_network
    from scoresde.training import TrainConfig, train
    out, steps, pause = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    name, when = pause.split(":") if pause else ("", "")
    save = torch.save
    def paused_save(obj, f, *args, **kwargs):
        if name and Path(f).name.startswith("." + name + "."):
            if when == "mid":
                buf = io.BytesIO()
                save(obj, buf)
                with open(f, "wb") as fh:
                    fh.write(buf.getvalue()[: len(buf.getvalue()) // 2])
                    fh.flush()
                    os.fsync(fh.fileno())
            Path(out, "paused").write_text(str(f))
            time.sleep(600)
        save(obj, f, *args, **kwargs)
    torch.save = paused_save
    torch.manual_seed(0)
    sde = sd.VPSDE()
    model = ScoreModel(build_network("mlp", dim=2, hidden=32, layers=2, embed_dim=16), sde)
    cfg = TrainConfig(steps=steps, batch_size=64, lr=1e-3, warmup=10, checkpoint_every=20, log_every=5)
    t = train(sde, model, load_dataset("moons", n=1000), cfg, out_dir=out, progress=False)
    torch.save = save
    torch.save(dict(t.model.state_dict()), out + "/final_weights.pt")
    torch.save(dict(t.ema.state_dict()), out + "/final_ema.pt")
""")


def _worker(out, steps, pause=""):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", WORKER, str(out), str(steps), pause],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _temp_files(directory):
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


def test_killed_run_resumes_bit_identically(tmp_path):
    """SIGKILL a training subprocess while it writes its second step file; resuming gives the same weights.

    The worker itself stops at that point (no timing): ``last.pt`` (written first) is then at step 40,
    ``step_0000040.pt`` is half-written under its temporary name, which the resumed run removes.
    """
    total = 60
    killed = tmp_path / "killed"
    proc = _worker(killed, total, pause="step_0000040.pt:mid")
    try:
        while not (killed / "paused").exists():
            if proc.poll() is not None:
                raise AssertionError(proc.stderr.read().decode())
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    (killed / "paused").unlink()
    assert len(_temp_files(killed)) == 1  # the half-written step file: SIGKILL cannot clean up
    assert read_checkpoint(killed / "last.pt")["step"] == 40
    assert not (killed / "step_0000040.pt").exists() and read_checkpoint(killed / "step_0000020.pt")["step"] == 20
    # resume (the worker resumes from last.pt in its out_dir) and an uninterrupted reference run
    ref = tmp_path / "ref"
    procs = [_worker(killed, total), _worker(ref, total)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err.decode()
    for name in ("final_weights.pt", "final_ema.pt"):
        a = torch.load(killed / name, weights_only=True)
        b = torch.load(ref / name, weights_only=True)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert read_checkpoint(killed / "last.pt")["step"] == total
    assert _temp_files(killed) == []


class _Killed(BaseException):
    """Stands for SIGKILL in-process: raised after the out_dir was copied as a kill would leave it."""


@pytest.mark.parametrize(
    "target, when",
    [
        ("last.pt", "start"),
        ("last.pt", "mid"),
        ("step_0000040.pt", "start"),
        ("step_0000040.pt", "mid"),
        ("history.nc", "start"),
    ],
)
def test_resume_after_a_kill_at_every_write(tmp_path, monkeypatch, target, when):
    """At each point of a checkpoint write, the files on disk resume bit-identically.

    A kill is simulated exactly: at the chosen point the output directory is copied (that copy is
    what ``kill -9`` leaves on disk, temporary file included), then training resumes in the copy.
    """
    import shutil

    sde = sd.VPSDE()
    data = load_dataset("moons", n=500)
    cfg = TrainConfig(**SMALL)
    full = train(sde, small_model(sde), data, cfg, progress=False)
    out, snap = tmp_path / "run", tmp_path / "snap"

    seen = []
    kill_at = 1 if "40" in target else 2  # the checkpoint of step 40: the 2nd write of last.pt / history.nc

    def kill_here(path, write):
        if Path(path).name.startswith(f".{target}."):
            seen.append(path)
        if len(seen) == kill_at and Path(path).name.startswith(f".{target}."):
            if when == "mid":
                write(path)
                data_ = Path(path).read_bytes()
                Path(path).write_bytes(data_[: len(data_) // 2])
            shutil.copytree(out, snap)
            raise _Killed

    save, to_netcdf = torch.save, xr.Dataset.to_netcdf
    monkeypatch.setattr(torch, "save", lambda obj, f, *a, **k: (kill_here(f, lambda p: save(obj, p)), save(obj, f)))
    monkeypatch.setattr(
        xr.Dataset,
        "to_netcdf",
        lambda self, p, *a, **k: (kill_here(p, lambda q: to_netcdf(self, q)), to_netcdf(self, p, *a, **k))[1],
    )
    with pytest.raises(_Killed):
        with Trainer(sde, small_model(sde), data, cfg, out_dir=out) as trainer:
            trainer.train(steps=41, progress=False)  # the kill comes at the checkpoint of step 40
    monkeypatch.undo()
    # what the kill left: last.pt is the newest complete checkpoint (at least the step of every step file)
    left = {p.name: read_checkpoint(p)["step"] for p in snap.glob("*.pt")}
    assert left["last.pt"] == max(left.values()) == (20 if target == "last.pt" else 40)
    assert len(_temp_files(snap)) == 1
    resumed = train(sde, small_model(sde), data, cfg, out_dir=snap, progress=False)
    assert resumed.step == 60 and _temp_files(snap) == []
    for a, b in [(full.model, resumed.model), (full.ema, resumed.ema)]:
        for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True):
            assert torch.equal(x, y)
    assert full.history == resumed.history


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


def test_lr_schedule_and_ema_are_the_documented_formulas():
    """LambdaLR gives lr * min(1, (k + 1) / warmup) at step k; the EMA is a lerp with 1 - mu_k, bit for bit."""
    sde = sd.VPSDE()
    cfg = TrainConfig(**SMALL)
    trainer = Trainer(sde, small_model(sde), load_dataset("moons", n=500), cfg)
    assert isinstance(trainer.scheduler, torch.optim.lr_scheduler.LRScheduler)
    for k in range(15):
        lr = trainer.optimizer.param_groups[0]["lr"]
        assert lr == cfg.lr * min(1.0, (k + 1) / cfg.warmup) == trainer.lr_at(k), k
        ema_before = [p.clone() for p in trainer.ema.parameters()]
        trainer.train_step()
        mu = min(cfg.ema_decay, (1 + k) / (10 + k))
        for e0, e, p in zip(ema_before, trainer.ema.parameters(), trainer.model.parameters(), strict=True):
            assert torch.equal(e, torch.lerp(e0, p, 1.0 - mu))
    assert trainer.history_dataset()["lr"].values.tolist() == [trainer.lr_at(s - 1) for s in trainer.history["step"]]
    import scoresde.training as training

    assert "_foreach" not in Path(training.__file__).read_text()


def _old_format(ckpt, lr_used):
    """A checkpoint as the code before format version 2 wrote it: no checksum, no scheduler state."""
    old = {k: v for k, v in ckpt.items() if k not in ("sha256", "scheduler")}
    old["version"] = 1
    groups = old["optimizer"]["param_groups"]
    old["optimizer"] = {"state": old["optimizer"]["state"], "param_groups": [dict(g) for g in groups]}
    for g in old["optimizer"]["param_groups"]:
        g.pop("initial_lr", None)
        g["lr"] = lr_used  # the old trainer set the lr of the last step taken
    return old


def test_old_format_checkpoint_loads_and_resumes_bit_identically(tmp_path):
    sde = sd.VPSDE()
    data = load_dataset("eight_gaussians", n=1000)
    cfg = TrainConfig(**SMALL)
    full = train(sde, small_model(sde), data, cfg, progress=False)
    part = Trainer(sde, small_model(sde), data, cfg)
    part.train(steps=5, progress=False)  # inside the warm-up (10 steps)
    old = _old_format(part.state(), part.lr_at(4))
    torch.save(old, tmp_path / "old.pt")
    assert read_checkpoint(tmp_path / "old.pt")["version"] == 1
    _, model, _ = load_checkpoint(tmp_path / "old.pt")
    resumed = Trainer.from_checkpoint(tmp_path / "old.pt", out_dir=tmp_path / "out").train(progress=False)
    for a, b in [(full.model, resumed.model), (full.ema, resumed.ema)]:
        for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True):
            assert torch.equal(x, y)
    assert full.history == resumed.history
    assert read_checkpoint(tmp_path / "out" / "last.pt")["version"] == 2  # rewritten with a checksum


def test_checkpoint_with_the_former_name_eps_loads_and_resumes_as_noise(tmp_path):
    """A checkpoint that records the noise prediction under its former name "eps" reads as "noise", loads
    the same model without a warning, and resumes bit-identically to an uninterrupted run."""
    import warnings

    from scoresde.training import checksum

    sde = sd.VPSDE()
    data = load_dataset("eight_gaussians", n=1000)
    cfg = TrainConfig(**SMALL)
    full = train(sde, small_model(sde), data, cfg, progress=False)
    part = Trainer(sde, small_model(sde), data, cfg)
    part.train(steps=5, progress=False)
    assert part.model.parameterization == "noise" and part.full_config()["model"]["parameterization"] == "noise"
    old = part.state()
    old["config"]["model"]["parameterization"] = "eps"
    old["sha256"] = checksum(old)
    torch.save(old, tmp_path / "old.pt")
    assert read_checkpoint(tmp_path / "old.pt")["config"]["model"]["parameterization"] == "noise"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, model, _ = load_checkpoint(tmp_path / "old.pt", ema=False)
    assert model.parameterization == "noise"
    x, t = torch.randn(7, 2), torch.linspace(0.1, 0.9, 7)
    assert torch.equal(model(x, t), part.model.eval()(x, t))
    resumed = Trainer.from_checkpoint(tmp_path / "old.pt", out_dir=tmp_path / "out").train(progress=False)
    for a, b in [(full.model, resumed.model), (full.ema, resumed.ema)]:
        for u, v in zip(a.state_dict().values(), b.state_dict().values(), strict=True):
            assert torch.equal(u, v)
    assert read_checkpoint(tmp_path / "out" / "last.pt")["config"]["model"]["parameterization"] == "noise"
    bad = part.state()
    bad["config"]["model"]["parameterization"] = "epsilon"
    bad["sha256"] = checksum(bad)
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="parameterization"):
        read_checkpoint(tmp_path / "bad.pt")


def test_seed_range():
    assert TrainConfig(seed=2**63 - 1).seed == 2**63 - 1
    for bad in (2**63, -1):
        with pytest.raises(ValueError, match=r"seed must be an integer in \[0, 2\*\*63\)"):
            TrainConfig(seed=bad)
    with pytest.raises(TypeError, match="seed"):
        TrainConfig(seed=1.5)


def test_trainer_checks_and_locks_out_dir_up_front(tmp_path, monkeypatch):
    """An unwritable or busy out_dir fails at construction, before any training step."""
    import fcntl

    from scoresde._io import LOCK_NAME, OutputDirError

    sde = sd.VPSDE()
    data = load_dataset("moons", n=200)
    ro = tmp_path / "ro"
    ro.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, m, **k: False if Path(p) == ro else real_access(p, m, **k))
    with pytest.raises(OutputDirError, match="not writable"):
        Trainer(sde, small_model(sde), data, TrainConfig(**SMALL), out_dir=ro)
    monkeypatch.undo()
    busy = tmp_path / "busy"
    busy.mkdir()
    with open(busy / LOCK_NAME, "w") as fh:  # another process's lock (flock is per open file)
        fcntl.flock(fh, fcntl.LOCK_EX)
        with pytest.raises(OutputDirError, match="in use by another scoresde run"):
            Trainer(sde, small_model(sde), data, TrainConfig(**SMALL), out_dir=busy)
    with Trainer(sde, small_model(sde), data, TrainConfig(**SMALL), out_dir=busy) as trainer:
        assert (busy / LOCK_NAME).exists()
        with open(busy / LOCK_NAME) as fh, pytest.raises(BlockingIOError):
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        trainer.train(steps=3, progress=False)
    assert not (busy / LOCK_NAME).exists()  # released and removed
    assert read_checkpoint(busy / "last.pt")["step"] == 3  # a checkpoint after close() locks again


@pytest.mark.slow
def test_random_kills_during_cli_training_resume_bit_identically(tmp_path):
    """``kill -9`` ``scoresde train`` at 20+ random points (after it made progress), then resume to the end.

    After every kill each checkpoint left reads (checksum and fields); at the end no temporary file
    is left and the weights, EMA, optimizer state and history equal those of an uninterrupted run.
    """
    import random

    total = 200
    args = ["-m", "scoresde", "train", "--data", "moons", "--n-data", "500", "--hidden", "16", "--batch-size", "32",
            "--warmup", "5", "--steps", str(total), "--checkpoint-every", "2", "--log-every", "2", "--threads", "1",
            "--quiet"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

    def run(out):
        return subprocess.Popen(
            [sys.executable, *args, "--out", str(out)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )

    killed, ref = tmp_path / "killed", tmp_path / "ref"
    reference = run(ref)
    rng = random.Random(1234)
    last = killed / "last.pt"

    def version():
        try:
            st = last.stat()
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_mtime_ns

    steps_seen = []
    for _ in range(20):
        seen = version()
        proc = run(killed)
        while version() == seen:  # wait until this run wrote a checkpoint: each kill follows progress
            if proc.poll() is not None:
                raise AssertionError(f"the run ended before it was killed: {proc.stderr.read().decode()}")
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.15))
        proc.kill()
        proc.wait()
        for p in killed.glob("*.pt"):
            read_checkpoint(p)  # every checkpoint left is complete
        steps = {p.name: read_checkpoint(p)["step"] for p in killed.glob("*.pt")}
        assert steps["last.pt"] == max(steps.values())
        steps_seen.append(steps["last.pt"])
    assert steps_seen == sorted(steps_seen) and steps_seen[-1] < total
    final = run(killed)
    assert final.wait(timeout=600) == 0, final.stderr.read().decode()
    assert reference.wait(timeout=600) == 0, reference.stderr.read().decode()
    assert _temp_files(killed) == [] and not (killed / ".scoresde.lock").exists()
    a, b = read_checkpoint(killed / "last.pt"), read_checkpoint(ref / "last.pt")
    assert a["step"] == b["step"] == total
    for key in ("model", "ema"):
        assert a[key].keys() == b[key].keys() and all(torch.equal(a[key][k], b[key][k]) for k in a[key])
    for k, state in b["optimizer"]["state"].items():
        assert all(torch.equal(state[f], a["optimizer"]["state"][k][f]) for f in state)
    assert a["history"] == b["history"]


# -- objectives as objects ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("shorthand", "options", "objective"),
    [
        (
            "dsm",
            dict(weighting="likelihood", reduce="sum", eps=1e-3),
            sd.DenoisingScoreMatching("likelihood", 1e-3, "sum"),
        ),
        ("ddpm", dict(reduce="sum"), sd.DDPMObjective(reduce="sum")),
        ("flow_matching", dict(eps=1e-3), sd.FlowMatching(eps=1e-3)),
    ],
)
def test_objective_object_trains_bit_identically_to_its_shorthand(shorthand, options, objective):
    sde = {"dsm": sd.VPSDE(), "ddpm": sd.DDPMSchedule.linear(T=100).sde(), "flow_matching": sd.RectifiedFlow()}[
        shorthand
    ]
    param = "velocity" if shorthand == "flow_matching" else "noise"
    data = load_dataset("eight_gaussians", n=256, seed=0)
    runs = []
    for cfg in (TrainConfig(steps=15, batch_size=32, checkpoint_every=0, objective=shorthand, **options),
                TrainConfig(steps=15, batch_size=32, checkpoint_every=0, objective=objective)):  # fmt: skip
        torch.manual_seed(0)
        model = ScoreModel(build_network("mlp", dim=2, hidden=16, layers=1, embed_dim=8), sde, parameterization=param)
        runs.append(Trainer(sde, model, data, cfg).train(progress=False))
    assert runs[0].objective == objective and runs[0].config.make_objective() == objective
    for a, b in zip(runs[0].model.state_dict().values(), runs[1].model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert runs[0].full_config()["train"]["objective"] == shorthand  # a shorthand is still recorded as a string
    assert runs[1].full_config()["train"]["objective"] == {"name": shorthand, "params": objective.params()}


def test_train_config_objective_validation_and_record():
    with pytest.raises(TypeError, match="objective must be one of"):
        TrainConfig(objective=3)
    with pytest.raises(ValueError, match=r"\['eps', 'reduce'\] configure the objective shorthands only"):
        TrainConfig(objective=sd.DenoisingScoreMatching(), eps=1e-3, reduce="sum")
    with pytest.raises(ValueError, match="unknown weighting"):
        sd.DenoisingScoreMatching(weighting="sigma")
    with pytest.raises(ValueError, match="reduce"):
        sd.FlowMatching(reduce="max")
    cfg = TrainConfig(objective=sd.DenoisingScoreMatching(weighting="likelihood"))
    record = cfg.record()
    assert record["objective"] == {"name": "dsm", "params": {"weighting": "likelihood", "eps": 1e-5, "reduce": "mean"}}
    assert TrainConfig(**record) == cfg
    with pytest.raises(sd.UnregisteredError, match="unknown objective 'elbo'"):
        TrainConfig(objective={"name": "elbo", "params": {}})


def test_objective_checks_reach_the_trainer():
    data = load_dataset("moons", n=128)
    with pytest.raises(ValueError, match="DDPMSDE"):
        Trainer(sd.VPSDE(), small_model(sd.VPSDE()), data, TrainConfig(objective=sd.DDPMObjective()))
    with pytest.raises(ValueError, match="velocity model"):
        Trainer(sd.VPSDE(), small_model(sd.VPSDE()), data, TrainConfig(objective=sd.FlowMatching()))
