"""Data-parallel training on torch.distributed (gloo, CPU): N ranks take the steps of one, checkpoints, failures.

Every rank is a subprocess (the worker below) joined by a file store, so that nothing depends on a free
port; the command-line tests launch ``python -m torch.distributed.run`` (torchrun).
"""

import os
import re
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import scoresde as sd
from scoresde._distributed import row_bounds
from scoresde.datasets import load_dataset
from scoresde.nets import ScoreModel, build_network
from scoresde.training import TrainConfig, Trainer, read_checkpoint

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")

TIMEOUT = 120  # seconds a test waits for its ranks before it fails (a hang); the ranks' own timeout is shorter

# One rank of a run: argv = store file (or "" for a single process without a process group), rank, world size,
# out_dir (or ""), steps, mode, result file. Modes: "train"; "pause" (rank 0 stops dead when it starts writing
# step_0000040.pt, after last.pt of step 40, and creates <out>/paused); "fail" (rank 1 raises in the
# objective at step 5); "write_fails" (rank 0 cannot write its first checkpoint).
WORKER = textwrap.dedent("""
    import datetime, sys, time
    from pathlib import Path
    import torch
    import torch.distributed as dist
    import scoresde as sd
    from scoresde.datasets import load_dataset
    from scoresde.nets import ScoreModel, build_network
    from scoresde.training import TrainConfig, train

    store, rank, world, out, steps, mode, result = sys.argv[1:]
    rank, world, steps = int(rank), int(world), int(steps)
    if store:
        dist.init_process_group(
            "gloo", init_method="file://" + store, rank=rank, world_size=world,
            timeout=datetime.timedelta(seconds=60),
        )
    save = torch.save

    def patched_save(obj, f, *args, **kwargs):
        name = Path(f).name
        if mode == "pause" and name.startswith(".step_0000040.pt."):
            Path(out, "paused").write_text(str(f))
            time.sleep(600)
        if mode == "write_fails" and name.startswith(".last.pt."):
            raise OSError(28, "No space left on device")
        save(obj, f, *args, **kwargs)

    torch.save = patched_save

    class FailingDSM(sd.DenoisingScoreMatching, register=False):
        calls = 0

        def loss(self, sde, model, x0, generator, z=None):
            FailingDSM.calls += 1
            if mode == "fail" and rank == 1 and FailingDSM.calls == 5:
                raise RuntimeError("rank 1 broke down at step 5")
            return super().loss(sde, model, x0, generator, z)

    torch.manual_seed(0)
    sde = sd.VPSDE()
    model = ScoreModel(build_network("mlp", dim=2, hidden=16, layers=2, embed_dim=8), sde).double()
    data = load_dataset("moons", n=500, dtype=torch.float64)
    cfg = TrainConfig(steps=steps, batch_size=31, lr=3e-3, warmup=5, checkpoint_every=20, log_every=5,
                      objective=FailingDSM() if mode == "fail" else "dsm")
    t = train(sde, model, data, cfg, out_dir=out or None, progress=False)
    torch.save = save
    if result:
        torch.save({"model": t.model.state_dict(), "ema": t.ema.state_dict(), "history": t.history,
                    "rank": t.rank, "world_size": t.world_size}, result)
    if store:
        dist.destroy_process_group()
""")


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def launch(tmp, world, steps, out="", mode="train", tag="run"):
    """Start the ``world`` ranks of one run (one process without a process group for world 0); return them."""
    store = "" if world == 0 else str(tmp / f"{tag}.store")
    procs = []
    for r in range(max(world, 1)):
        result = str(tmp / f"{tag}.rank{r}.pt")
        args = [store, str(r), str(max(world, 1)), str(out), str(steps), mode, result]
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", WORKER, *args],
                env=_env(),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    return procs


def finish(procs):
    """Wait for every rank; return their (exit code, stderr)."""
    out = []
    for p in procs:
        try:
            _, err = p.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise AssertionError("a rank did not finish within the test's timeout (a hang)") from None
        out.append((p.returncode, err))
    return out


def results(tmp, procs, tag):
    """Wait for the ranks of run ``tag``, check that each exited 0, and return what each saved."""
    done = finish(procs)
    for r, (code, err) in enumerate(done):
        assert code == 0, f"rank {r} of run {tag} exited {code}:\n{err}"
    return [torch.load(tmp / f"{tag}.rank{r}.pt", weights_only=True) for r in range(len(done))]


def run_ok(tmp, world, steps, out="", mode="train", tag="run"):
    return results(tmp, launch(tmp, world, steps, out, mode, tag), tag)


def max_rel_diff(a, b):
    return max(float((a[k] - b[k]).abs().max() / b[k].abs().max().clamp_min(1e-300)) for k in b)


def test_two_ranks_take_the_steps_of_one(tmp_path):
    """Same seed and global batch: 2 gloo ranks end within 1e-5 (relative, float64) of 1 process after 50 steps.

    The global batch of 31 splits into 15 + 16 rows (unequal slices)."""
    single_procs, ddp_procs = launch(tmp_path, 0, 50, tag="single"), launch(tmp_path, 2, 50, tag="ddp")
    (single,), ranks = results(tmp_path, single_procs, "single"), results(tmp_path, ddp_procs, "ddp")
    assert single["world_size"] == 1 and [r["rank"] for r in ranks] == [0, 1] and ranks[1]["world_size"] == 2
    for key in ("model", "ema"):
        assert next(iter(single[key].values())).dtype == torch.float64
        assert max_rel_diff(ranks[0][key], single[key]) <= 1e-5, key
        for k in ranks[0][key]:  # the ranks hold the same weights, bit for bit
            assert torch.equal(ranks[0][key][k], ranks[1][key][k]), k
    # the weights moved (the comparison is not between two untrained networks)
    torch.manual_seed(0)
    init = ScoreModel(build_network("mlp", dim=2, hidden=16, layers=2, embed_dim=8), sd.VPSDE()).double()
    assert max_rel_diff(single["model"], init.state_dict()) > 1e-2
    assert ranks[0]["history"]["step"] == single["history"]["step"]
    for key in ("loss", "grad_norm"):  # the gradient norm (before clipping) catches a wrongly scaled gradient
        values = torch.tensor(ranks[0]["history"][key]), torch.tensor(single["history"][key])
        assert torch.allclose(*values, rtol=1e-6, atol=0), (key, values)


@pytest.mark.slow  # ~15-20 s; test_two_ranks_take_the_steps_of_one covers two ranks in the default run
def test_killed_two_rank_run_resumes_identically_and_loads_in_one_process(tmp_path):
    """Kill both ranks while rank 0 writes step 40 (last.pt of step 40 complete), resume with 2 ranks to step 60:
    the result equals an uninterrupted 2-rank run bit for bit; the 2-rank checkpoint loads and trains in 1 process."""
    ref_out, out = tmp_path / "ref", tmp_path / "killed"
    ref_procs = launch(tmp_path, 2, 60, out=ref_out, tag="ref")
    procs = launch(tmp_path, 2, 60, out=out, mode="pause", tag="paused")
    paused = out / "paused"
    while not paused.exists():  # rank 0 creates it when it stops: no timing involved
        if any(p.poll() is not None for p in procs):
            raise AssertionError("a rank ended before the pause: " + "\n".join(p.communicate()[1] for p in procs))
        os.sched_yield()
    for p in procs:
        p.send_signal(signal.SIGKILL)
        p.communicate()
    paused.unlink()
    ckpt = read_checkpoint(out / "last.pt")
    assert ckpt["step"] == 40 and ckpt["world_size"] == 2 and ckpt["global_batch_size"] == 31
    resumed, ref = run_ok(tmp_path, 2, 60, out=out, tag="resumed"), results(tmp_path, ref_procs, "ref")
    for key in ("model", "ema"):
        for k in ref[0][key]:
            assert torch.equal(resumed[0][key][k], ref[0][key][k]), (key, k)
    assert resumed[0]["history"] == ref[0]["history"]
    last = read_checkpoint(ref_out / "last.pt")
    assert sorted(p.name for p in ref_out.iterdir()) == sorted(
        ["history.nc", "last.pt", "step_0000020.pt", "step_0000040.pt", "step_0000060.pt"]
    )
    # the 2-rank checkpoint of step 40 in one process: sampling and further training
    _, model, _ = sd.load_checkpoint(ref_out / "step_0000040.pt")
    x = torch.randn(4, 2, dtype=torch.float64)
    assert torch.isfinite(model(x, torch.full((4,), 0.5, dtype=torch.float64))).all()
    one = Trainer.from_checkpoint(ref_out / "step_0000040.pt", out_dir=tmp_path / "one", steps=60).train(progress=False)
    assert one.world_size == 1 and read_checkpoint(tmp_path / "one" / "last.pt")["world_size"] == 1
    assert max_rel_diff(one.model.state_dict(), last["model"]) <= 1e-5
    assert max_rel_diff(one.ema.state_dict(), last["ema"]) <= 1e-5


def test_a_failing_rank_stops_the_others(tmp_path):
    """Rank 1 raises in the objective at step 5: it exits with its error, rank 0 with a DistributedError (no hang)."""
    (code0, err0), (code1, err1) = finish(launch(tmp_path, 2, 50, mode="fail", tag="fail"))
    assert code1 != 0 and "rank 1 broke down at step 5" in err1, err1
    assert code0 != 0 and re.search(r"DistributedError: rank 0 of 2: .*step 5.*another rank", err0), err0


def test_a_failed_checkpoint_write_on_rank_0_stops_every_rank(tmp_path):
    (code0, err0), (code1, err1) = finish(launch(tmp_path, 2, 50, out=tmp_path / "out", mode="write_fails"))
    assert code0 != 0 and "No space left on device" in err0, err0
    assert code1 != 0 and "DistributedError: rank 1 stops: writing the checkpoint of step 20" in err1, err1
    assert "rank 0: OSError: [Errno 28] No space left on device" in err1, err1
    assert not (tmp_path / "out" / "last.pt").exists()


def test_checkpoint_fields_world_size_and_global_batch(tmp_path):
    """New checkpoints record world size and global batch; files without them (written before) still load."""
    sde = sd.VPSDE()
    torch.manual_seed(0)
    model = ScoreModel(build_network("mlp", dim=2, hidden=16, layers=1, embed_dim=8), sde)
    trainer = Trainer(sde, model, load_dataset("moons", n=200), TrainConfig(steps=3, batch_size=16, warmup=1))
    trainer.train(progress=False)
    state = trainer.state()
    assert state["world_size"] == 1 and state["global_batch_size"] == 16
    torch.save(state, tmp_path / "new.pt")
    assert read_checkpoint(tmp_path / "new.pt")["world_size"] == 1
    old = {k: v for k, v in state.items() if k not in ("world_size", "global_batch_size")}
    old["sha256"] = sd.training.checksum(old)
    torch.save(old, tmp_path / "old.pt")
    assert "world_size" not in read_checkpoint(tmp_path / "old.pt")
    Trainer.from_checkpoint(tmp_path / "old.pt", out_dir=tmp_path / "resumed", steps=5).train(progress=False)
    for key, value, match in [
        ("world_size", 0, "'world_size' must be an integer >= 1"),
        ("world_size", 1.5, "'world_size' must be an integer >= 1"),
        ("global_batch_size", 32, "global batch size 32 differs from the setting batch_size 16"),
    ]:
        bad = {**state, key: value}
        bad["sha256"] = sd.training.checksum(bad)
        torch.save(bad, tmp_path / "bad.pt")
        with pytest.raises(sd.training.CheckpointError, match=match):
            read_checkpoint(tmp_path / "bad.pt")


def test_torchrun_cli_trains_with_two_ranks(tmp_path):
    """``torchrun --nproc-per-node 2 -m scoresde train``: rank 0 reports and writes; the weights are those of 1 rank."""
    args = ["train", "--data", "moons", "--n-data", "500", "--hidden", "16", "--batch-size", "32", "--steps", "20",
            "--checkpoint-every", "10", "--warmup", "5", "--quiet"]  # fmt: skip
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    runs = {
        "ddp": subprocess.Popen([*torchrun, "-m", "scoresde", *args, "--out", str(tmp_path / "ddp")], env=_env(),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True),
        "one": subprocess.Popen([sys.executable, "-m", "scoresde", *args, "--out", str(tmp_path / "one")], env=_env(),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True),
    }  # fmt: skip
    stdout = {}
    for name, proc in runs.items():
        stdout[name], err = proc.communicate(timeout=TIMEOUT)
        assert proc.returncode == 0, f"{name}:\n{stdout[name]}\n{err}"
        assert err == "", f"{name}: {err}"
        assert stdout[name].count("scoresde train:") == 1, stdout[name]  # one report: rank 0's
    assert "on cpu, 2 ranks (global batch 32)" in stdout["ddp"] and "ranks" not in stdout["one"], stdout
    ddp, one = read_checkpoint(tmp_path / "ddp" / "last.pt"), read_checkpoint(tmp_path / "one" / "last.pt")
    assert (ddp["step"], ddp["world_size"], ddp["global_batch_size"]) == (20, 2, 32)
    assert (one["step"], one["world_size"], one["global_batch_size"]) == (20, 1, 32)
    assert sorted(p.name for p in (tmp_path / "ddp").iterdir()) == sorted(
        ["history.nc", "last.pt", "loss.png", "step_0000010.pt", "step_0000020.pt"]
    )
    assert max_rel_diff(ddp["model"], one["model"]) <= 1e-4  # float32


@given(n=st.integers(0, 10_000), world=st.integers(1, 64))
def test_row_bounds_split_a_batch_into_consecutive_near_equal_blocks(n, world):
    b = row_bounds(n, world)
    sizes = [hi - lo for lo, hi in zip(b[:-1], b[1:], strict=True)]
    assert b[0] == 0 and b[-1] == n and len(sizes) == world
    assert min(sizes) >= 0 and max(sizes) - min(sizes) <= 1 and sum(sizes) == n


def test_single_process_trainer_has_rank_0_of_1_and_no_data_parallel_wrapper():
    sde = sd.VPSDE()
    model = ScoreModel(build_network("mlp", dim=2, hidden=16, layers=1, embed_dim=8), sde)
    trainer = Trainer(sde, model, load_dataset("moons", n=100), TrainConfig(steps=1, batch_size=8))
    assert (trainer.rank, trainer.world_size) == (0, 1) and not torch.distributed.is_initialized()
    assert type(trainer.model.net).__name__ == "MLPScore"
