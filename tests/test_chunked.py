"""Chunked and sharded sampling: ``sample(chunk_size=k)``, zarr stores (``out=``), torchrun, the CLI."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st

import scoresde as sd
from scoresde import chunked, cli
from scoresde.mixture import get_target

pytest.importorskip("zarr")
pytest.importorskip("dask.array")

ROOT = Path(__file__).resolve().parents[1]
SDE = sd.VPSDE()
SCORE = get_target("eight_gaussians").score(SDE)
N, K = 50, 12  # 5 chunks, the last one of 2 samples


def sampler() -> sd.Sampler:
    """A cheap stochastic sampler: the chunks' noise, not only their priors, must follow the chunk seeds."""
    return sd.EulerMaruyama(steps=6)


def run(**kw):
    kw = {"shape": (N, 2), "seed": 7, "save_at": 3, "progress": False, **kw}
    return sd.sample(SDE, SCORE, sampler(), **kw)


def open_store(path: Path) -> xr.Dataset:
    return xr.open_zarr(path, consolidated=False)


def per_run(ds: xr.Dataset) -> xr.Dataset:
    """``ds`` without what differs between two runs of one configuration (creation and wall times)."""
    out = ds.drop_vars("chunk_wall_time_s").load()
    out.attrs = {k: v for k, v in ds.attrs.items() if k not in ("created", "wall_time_s")}
    return out


@pytest.fixture(scope="module")
def reference() -> xr.Dataset:
    """The in-memory chunked run every other form of the run must reproduce."""
    return run(chunk_size=K)


def test_chunk_seed_is_the_seed_sequence_child():
    child = np.random.SeedSequence(7).spawn(4)[3]
    assert sd.chunk_seed(7, 3) == int(child.generate_state(1, dtype=np.uint64)[0])
    assert len({sd.chunk_seed(7, i) for i in range(100)} | {sd.chunk_seed(8, 0)}) == 101


def test_without_chunks_one_generator_seeded_with_seed():
    """chunk_size=None is the run of one torch.Generator seeded with ``seed`` (as before chunking existed)."""
    ds = run()
    generator = torch.Generator().manual_seed(7)
    x = SDE.prior_sampling((N, 2), generator=generator, dtype=torch.float32, device="cpu")
    times = np.linspace(SDE.T, 1e-3, 3)
    traj = sampler().run(SDE, sd.samplers.CountedScore(SCORE), x, generator, times, False)
    np.testing.assert_array_equal(ds["x"].values, torch.stack(traj.states).numpy())
    assert "chunk" not in ds.dims and ds["nfe"].dims == ("time",)


def test_chunked_layout_and_aggregates(reference):
    ds = reference
    assert ds.sizes["chunk"] == math.ceil(N / K) == 5 and ds.sizes["sample"] == N
    np.testing.assert_array_equal(ds["chunk_start"].values, np.arange(5) * K)
    assert ds["chunk_done"].values.all() and ds["nfe"].dims == ("chunk", "time")
    assert (ds["chunk_nfe"].values == 6).all() and ds.attrs["nfe"] == 6 and ds.attrs["nfe_total"] == 30
    assert ds.attrs["max_abs_x"] == ds["chunk_max_abs_x"].max() > 0
    assert ds.attrs["chunk_size"] == K and ds.attrs["n_chunks"] == 5
    assert not np.array_equal(ds["x"].values, run()["x"].values)  # other seeds than the unchunked run


def test_chunks_processed_in_reversed_order_give_the_same_samples(reference):
    run_args = chunked._Run(SDE, SCORE, sampler(), N, (2,), K, None, 7, torch.device("cpu"), torch.float32,
                            np.linspace(SDE.T, 1e-3, 3), "auto")  # fmt: skip
    chunks = [chunked._run_chunk(run_args, i) for i in reversed(range(5))]
    states = np.concatenate([c.states for c in reversed(chunks)], axis=1)
    np.testing.assert_array_equal(states, reference["x"].values)


def test_chunk_results_do_not_depend_on_the_number_of_ranks(tmp_path, monkeypatch, reference):
    """Three ranks, run one after the other into one store, give the samples of one process."""
    store = tmp_path / "ranks.zarr"
    monkeypatch.setattr(chunked, "_barrier", lambda world: None)
    computed: dict[int, list[int]] = {}
    real = chunked._run_chunk
    for rank in range(3):
        monkeypatch.setattr(chunked, "_rank_world", lambda rank=rank: (rank, 3))
        monkeypatch.setattr(
            chunked, "_run_chunk", lambda r, i, rank=rank: computed.setdefault(rank, []).append(i) or real(r, i)
        )
        run(chunk_size=K, out=store)
    assert computed == {0: [0, 3], 1: [1, 4], 2: [2]}  # round-robin: chunk i on rank i % 3
    monkeypatch.setattr(chunked, "_rank_world", lambda: (0, 1))
    ds = run(chunk_size=K, out=store)  # nothing left to do: only the aggregates are written
    assert computed == {0: [0, 3], 1: [1, 4], 2: [2]}
    xr.testing.assert_identical(per_run(ds), per_run(reference))


def test_zarr_round_trip_equals_the_in_memory_dataset(tmp_path, reference):
    ds = run(chunk_size=K, out=tmp_path / "run.zarr")
    assert isinstance(ds["x"].data, __import__("dask.array").array.Array)  # opened lazily
    assert ds["x"].encoding["chunks"] == (3, K, 2)  # zarr chunks = the run's chunks along sample
    xr.testing.assert_identical(per_run(ds), per_run(reference))
    again = open_store(tmp_path / "run.zarr")
    xr.testing.assert_identical(per_run(again), per_run(reference))


def test_x_T_chunks_are_slices_of_x_T(tmp_path):
    x_T = torch.randn(N, 2, generator=torch.Generator().manual_seed(3))
    a = sd.sample(SDE, SCORE, sampler(), x_T=x_T, chunk_size=K, save_at=2, progress=False)
    np.testing.assert_array_equal(a["x"].isel(time=0).values, x_T.numpy())
    b = sd.sample(SDE, SCORE, sampler(), x_T=x_T, chunk_size=K, save_at=2, progress=False, out=tmp_path / "x.zarr")
    np.testing.assert_array_equal(a["x"].values, b["x"].values)
    with pytest.raises(ValueError, match="x_T_sha256"):
        sd.sample(SDE, SCORE, sampler(), x_T=x_T + 1, chunk_size=K, save_at=2, progress=False, out=tmp_path / "x.zarr")


class _Killed(Exception):
    pass


def test_resume_after_a_kill_computes_only_the_missing_chunks(tmp_path, monkeypatch, reference):
    store = tmp_path / "killed.zarr"
    real_write, real_run = chunked._write_chunk, chunked._run_chunk
    written: list[int] = []

    def write_then_die(chunk, *args):
        if len(written) == 2:
            raise _Killed  # the process dies after two chunks
        real_write(chunk, *args)
        written.append(chunk.index)

    monkeypatch.setattr(chunked, "_write_chunk", write_then_die)
    with pytest.raises(_Killed):
        run(chunk_size=K, out=store)
    partial = open_store(store)
    assert partial["chunk_done"].values.tolist() == [True, True, False, False, False]
    assert "nfe_total" not in partial.attrs  # the aggregates come when every chunk is done

    monkeypatch.setattr(chunked, "_write_chunk", real_write)
    computed: list[int] = []
    monkeypatch.setattr(chunked, "_run_chunk", lambda r, i: computed.append(i) or real_run(r, i))
    ds = run(chunk_size=K, out=store)
    assert computed == [2, 3, 4]
    xr.testing.assert_identical(per_run(ds), per_run(reference))


def test_a_chunk_without_its_done_mark_is_recomputed(tmp_path, monkeypatch, reference):
    store = tmp_path / "marks.zarr"
    run(chunk_size=K, out=store)
    # chunk 1's data half-written (NaN) and its mark not yet set, as after a kill during its write
    bad = xr.Dataset({"x": (("time", "sample", "feature"), np.full((3, K, 2), np.nan, np.float32))})
    bad.to_zarr(store, region={"sample": slice(K, 2 * K)}, mode="r+", consolidated=False)
    mark = xr.Dataset({"chunk_done": (("chunk",), np.zeros(1, bool))})
    mark.to_zarr(store, region={"chunk": slice(1, 2)}, mode="r+", consolidated=False)
    computed: list[int] = []
    real = chunked._run_chunk
    monkeypatch.setattr(chunked, "_run_chunk", lambda r, i: computed.append(i) or real(r, i))
    ds = run(chunk_size=K, out=store)
    assert computed == [1]
    np.testing.assert_array_equal(ds["x"].values, reference["x"].values)


@pytest.fixture(scope="module")
def complete_store(tmp_path_factory) -> Path:
    """A complete store of ``run(chunk_size=K)``, which the tests that use it only read."""
    store = tmp_path_factory.mktemp("complete") / "run.zarr"
    run(chunk_size=K, out=store)
    return store


@pytest.mark.parametrize(
    ("change", "named"),
    [({"seed": 8}, "seed"), ({"chunk_size": 10}, "chunk_size"), ({"save_at": 4}, "save_times"),
     ({"shape": (N + 1, 2)}, "n_samples"), ({"dtype": torch.float64}, "dtype")],
)  # fmt: skip
def test_a_store_of_another_configuration_is_refused(complete_store, change, named):
    store = complete_store
    before = sorted(p.name for p in store.iterdir())
    with pytest.raises(ValueError, match=rf"another configuration \(.*{named}: store"):
        run(**{"chunk_size": K, **change, "out": store})
    assert sorted(p.name for p in store.iterdir()) == before


def test_other_sampler_refused(complete_store):
    store = complete_store
    with pytest.raises(ValueError, match="sampler_params"):
        sd.sample(SDE, SCORE, sd.EulerMaruyama(steps=7), shape=(N, 2), seed=7, save_at=3, chunk_size=K, out=store)


def test_a_path_that_is_not_a_chunked_store_is_refused(tmp_path):
    (tmp_path / "dir.zarr").mkdir()
    (tmp_path / "dir.zarr" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a zarr store"):
        run(chunk_size=K, out=tmp_path / "dir.zarr")
    xr.Dataset({"y": ("a", np.arange(3))}).to_zarr(tmp_path / "other.zarr", consolidated=False)
    with pytest.raises(ValueError, match="not one written by a chunked"):
        run(chunk_size=K, out=tmp_path / "other.zarr")
    assert (tmp_path / "dir.zarr" / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize(("value", "error"), [(0, ValueError), (-3, ValueError), (2.5, TypeError), ("4", TypeError),
                                              (True, TypeError), (np.float64(4), TypeError)])  # fmt: skip
def test_bad_chunk_size_is_refused_naming_it(value, error):
    with pytest.raises(error, match="chunk_size"):
        run(chunk_size=value)


def test_out_needs_chunk_size_and_a_path(tmp_path):
    with pytest.raises(ValueError, match="give chunk_size"):
        run(out=tmp_path / "a.zarr")
    with pytest.raises(TypeError, match="out must be a path"):
        run(chunk_size=K, out=3)
    assert not (tmp_path / "a.zarr").exists()


@settings(max_examples=8, deadline=None)
@given(n=st.integers(1, 30), k=st.integers(1, 40))
def test_chunks_cover_the_samples(n, k):
    ds = sd.sample(SDE, SCORE, sd.DDIM(steps=2), shape=(n, 2), seed=1, save_at=2, chunk_size=k, progress=False)
    assert ds.sizes["sample"] == n and ds.sizes["chunk"] == -(-n // k)
    np.testing.assert_array_equal(ds["chunk_start"].values, np.arange(0, n, k))
    # chunk i is the run of its own generator: its first rows do not depend on n
    first = sd.sample(SDE, SCORE, sd.DDIM(steps=2), shape=(min(n, k), 2), seed=1, save_at=2, chunk_size=k,
                      progress=False)  # fmt: skip
    np.testing.assert_array_equal(ds["x"].values[:, : min(n, k)], first["x"].values)


TORCHRUN_SCRIPT = """
import sys
import numpy as np
import torch
import torch.distributed as dist
import scoresde as sd
from scoresde.mixture import get_target

torch.set_num_threads(1)
dist.init_process_group("gloo")
sde = sd.VPSDE()
score = get_target("eight_gaussians").score(sde)
kw = dict(shape=(50, 2), seed=7, save_at=3, progress=False, chunk_size=12)
memory = sd.sample(sde, score, sd.EulerMaruyama(steps=6), **kw)
store = sd.sample(sde, score, sd.EulerMaruyama(steps=6), out=sys.argv[1] + "/run.zarr", **kw)
if dist.get_rank() == 0:
    np.save(sys.argv[1] + "/memory.npy", memory["x"].values)
    np.save(sys.argv[1] + "/store.npy", store["x"].values)
    np.save(sys.argv[1] + "/done.npy", store["chunk_done"].values)
store.close()
dist.destroy_process_group()
"""


def _env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    env.update(OMP_NUM_THREADS="1")
    return env


def test_two_gloo_ranks_under_torchrun_equal_one_process(tmp_path, reference):
    script = tmp_path / "ranks.py"
    script.write_text(textwrap.dedent(TORCHRUN_SCRIPT))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(script)]
    proc = subprocess.run([*cmd, str(tmp_path)], env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    np.testing.assert_array_equal(np.load(tmp_path / "memory.npy"), reference["x"].values)
    np.testing.assert_array_equal(np.load(tmp_path / "store.npy"), reference["x"].values)
    assert np.load(tmp_path / "done.npy").all()
    xr.testing.assert_identical(per_run(open_store(tmp_path / "run.zarr")), per_run(reference))


def test_cli_chunked_zarr_run_and_resume(tmp_path, capsys):
    store = tmp_path / "out" / "small.zarr"
    args = ["sample", "--sampler", "ddim", "--steps", "5", "--n-samples", "30", "--chunk-size", "8",
            "--save-at", "3", "--out", str(store), "--quiet"]  # fmt: skip
    assert cli.main(args) == 0
    text = capsys.readouterr().out
    assert "4 chunks of 8" in text and f"wrote      {store}" in text
    ds = open_store(store)
    assert ds.sizes["sample"] == 30 and ds["chunk_done"].values.all()
    assert ds.attrs["target"] == "eight_gaussians" and "--chunk-size 8" in ds.attrs["command"]
    assert ds.attrs["nfe"] == 5 and np.isfinite(ds["x"].values).all()
    assert not (tmp_path / "out" / "samples.nc").exists()
    assert cli.main(args) == 0  # complete: the store is kept
    np.testing.assert_array_equal(open_store(store)["x"].values, ds["x"].values)
    assert cli.main([*args[:-3], "--seed", "1", "--out", str(store), "--quiet"]) == 2
    assert "another configuration" in capsys.readouterr().err


def test_cli_chunk_size_with_netcdf_output(tmp_path):
    out = tmp_path / "nc"
    args = ["sample", "--sampler", "ddim", "--steps", "5", "--n-samples", "30", "--chunk-size", "8", "--save-at", "3"]
    assert cli.main([*args, "--out", str(out), "--quiet", "--no-evaluate"]) == 0
    with xr.open_dataset(out / "samples.nc") as ds:
        assert ds.sizes["chunk"] == 4 and ds.attrs["chunk_size"] == 8
        direct = sd.sample(SDE, SCORE, sd.DDIM(steps=5), shape=(30, 2), seed=0, save_at=3, chunk_size=8, progress=False)
        np.testing.assert_array_equal(ds["x"].values, direct["x"].values)


def test_a_divergence_names_its_chunk():
    x_T = torch.zeros(N, 2)
    x_T[2 * K + 1] = 40.0  # sample 25 = sample 1 of chunk 2

    def score(x, t):  # NaN far out: only chunk 2 meets it
        return torch.where(x.abs() > 30, torch.nan, SCORE(x, t))

    with pytest.raises(sd.DivergenceError) as info:
        sd.sample(SDE, score, sampler(), x_T=x_T, chunk_size=K, progress=False)
    assert info.value.indices == [1]
    assert "in chunk 2 of 5: samples 24 to 35; sample indices in the message count from 24" in str(
        getattr(info.value, "__notes__", ["(no notes before Python 3.11)"])
    ) or sys.version_info < (3, 11)


@pytest.mark.parametrize("bound", [[1.0], "x", -1.0, True])
def test_a_bad_divergence_bound_is_refused_before_any_chunk(tmp_path, bound):
    with pytest.raises((TypeError, ValueError), match="divergence_bound"):
        run(chunk_size=K, divergence_bound=bound, out=tmp_path / "b.zarr")
    assert not (tmp_path / "b.zarr").exists()
