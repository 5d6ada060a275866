r"""Chunked and sharded sampling: :func:`scoresde.sample` with ``chunk_size`` (and ``out``).

A run of ``n`` samples with ``chunk_size=k`` is cut into :math:`C = \lceil n / k \rceil` chunks; chunk
:math:`i` holds the samples :math:`ik, \dots, \min((i + 1)k, n) - 1` and draws its prior and all its
noise from its own ``torch.Generator``, seeded with :func:`chunk_seed` ``(seed, i)`` (the first 64-bit
word of ``numpy.random.SeedSequence(seed).spawn(i + 1)[i]``). The samples therefore do not depend on the
order in which the chunks are processed, on the number of processes, or on which process ran which chunk;
they differ from those of the same ``seed`` without chunks (one generator for the whole batch).

Processes. When the caller has initialised a ``torch.distributed`` process group (e.g. under
``torchrun``), the ranks share the chunks round-robin: chunk :math:`i` runs on rank
:math:`i \bmod W` of :math:`W`. Without a process group everything runs in this process. The library never
initialises a process group itself (the command line does, under ``torchrun``). An error on one rank
(e.g. a :class:`~scoresde.DivergenceError`) is raised there with the chunk named; the other ranks then
wait at the next synchronisation until the process group's timeout (``torchrun`` stops them all when one
rank fails).

Zarr stores (``out=``). Every finished chunk is written into one zarr store through xarray
(``to_zarr(region=...)``): the store's chunks along ``sample`` are the run's chunks, so the ranks write
disjoint parts of it without locks. The store, with every variable, coordinate and attribute, is created
first (by rank 0, in a temporary directory renamed into place, so a half-made store never appears); a
chunk's data is written before its ``chunk_done`` mark, so a run that is killed leaves a store whose
``chunk_done`` says which chunks are complete. Running the same call again computes only the missing
chunks; a store made by a different configuration (its attribute ``run_config`` lists what must match)
is refused. Memory is :math:`O(k)`, not :math:`O(n)` times the number of saved states.

Per-chunk results. What a run without chunks records as scalar attributes is recorded per chunk in
variables along the dimension ``chunk``: ``nfe`` ``(chunk, time)`` (cumulative score evaluations of the
chunk at each saved state), ``chunk_nfe``, ``chunk_wall_time_s``, ``chunk_max_abs_x``,
``chunk_divergence_bound`` (the bound in force, which ``"auto"`` computes from the chunk's own
:math:`x_T`), ``chunk_stat_<name>`` for the sampler's numeric statistics, ``chunk_start`` (first sample)
and ``chunk_done``. Once every chunk is done the attributes hold the aggregates: ``nfe`` (the largest
``chunk_nfe``: the score evaluations along each sample's trajectory, the same for every chunk of a
fixed-step sampler), ``nfe_total`` (their sum: the score-function calls of the run), ``wall_time_s`` (the
sum of the chunks' wall times), ``max_abs_x`` and ``divergence_bound`` (the largest over the chunks: every
state of the run satisfied :math:`\|x\|_\infty \le` ``divergence_bound``). The sampler's non-numeric
statistics (e.g. a method name) are attributes ``stat_<name>`` taken from chunk 0.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr

from ._guard import resolve_bound
from ._progress import progress_bar
from .samplers import CountedScore, Sampler
from .sampling import feature_dims, provenance
from .sde import SDE, ScoreFn

__all__ = ["chunk_seed", "sample_chunked", "update_store_attrs", "ZARR_INSTALL_HINT"]

#: how to install what ``out=`` needs
ZARR_INSTALL_HINT = "pip install 'scoresde[zarr]' (zarr>=3 and dask)"

#: attributes that differ between two runs of one configuration (not part of its identity)
_PER_RUN_ATTRS = ("created", "wall_time_s")


def chunk_seed(seed: int, index: int) -> int:
    """The seed of chunk ``index`` of a run seeded with ``seed``: a 64-bit integer for ``torch.Generator.manual_seed``.

    It is the first 64-bit word of ``numpy.random.SeedSequence(seed, spawn_key=(index,))``, the
    ``index``-th child of ``numpy.random.SeedSequence(seed).spawn``: a function of ``(seed, index)`` only.
    """
    state = np.random.SeedSequence(int(seed), spawn_key=(int(index),)).generate_state(1, dtype=np.uint64)
    return int(state[0])


# ---------------------------------------------------------------------------------------
# processes (torch.distributed, only if the caller initialised it)
# ---------------------------------------------------------------------------------------
def _rank_world() -> tuple[int, int]:
    """``(rank, world size)`` of the caller's process group, ``(0, 1)`` without one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


# ---------------------------------------------------------------------------------------
# one chunk
# ---------------------------------------------------------------------------------------
@dataclass
class _Chunk:
    """What one chunk's run gives: its states (numpy), saved times, cumulative NFE and statistics."""

    index: int
    start: int
    states: np.ndarray
    times: list[float]
    nfe: list[int]
    total_nfe: int
    wall_time_s: float
    max_abs_x: float
    bound: float
    stats: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Run:
    """A chunked run's arguments, checked by :func:`scoresde.sample`."""

    sde: SDE
    score_fn: ScoreFn
    sampler: Sampler
    n: int
    feature_shape: tuple[int, ...]
    chunk_size: int
    x_T: torch.Tensor | None
    seed: int
    device: torch.device
    dtype: torch.dtype
    save_times: np.ndarray
    divergence_bound: float | str | None

    @property
    def n_chunks(self) -> int:
        return math.ceil(self.n / self.chunk_size)

    def bounds(self, index: int) -> tuple[int, int]:
        start = index * self.chunk_size
        return start, min(start + self.chunk_size, self.n)


def _run_chunk(run: _Run, index: int) -> _Chunk:
    """Sample chunk ``index`` with its own generator (seeded by :func:`chunk_seed`)."""
    start, stop = run.bounds(index)
    generator = torch.Generator(device=run.device).manual_seed(chunk_seed(run.seed, index))
    counted = CountedScore(run.score_fn)
    t0 = time.perf_counter()
    try:
        with torch.inference_mode():
            if run.x_T is None:
                x = run.sde.prior_sampling(
                    (stop - start, *run.feature_shape), generator=generator, dtype=run.dtype, device=run.device
                )
            else:
                x = run.x_T[start:stop].detach().clone()
            traj = run.sampler.run(
                run.sde, counted, x, generator, run.save_times, False, divergence_bound=run.divergence_bound
            )
    except Exception as err:
        if hasattr(err, "add_note"):
            err.add_note(
                f"(in chunk {index} of {run.n_chunks}: samples {start} to {stop - 1}; sample indices in the "
                f"message count from {start})"
            )
        raise
    wall = time.perf_counter() - t0
    stats = dict(traj.stats)
    max_abs_x = float(stats.pop("max_abs_x"))
    return _Chunk(
        index=index,
        start=start,
        states=torch.stack(traj.states).cpu().numpy(),
        times=[float(t) for t in traj.times],
        nfe=[int(v) for v in traj.nfe],
        total_nfe=int(counted.nfe),
        wall_time_s=round(wall, 4),
        max_abs_x=max_abs_x,
        bound=float(counted.guard.bound),
        stats=stats,
    )


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float | np.integer | np.floating) and not isinstance(v, bool | np.bool_)


def _chunk_variables(chunks: Sequence[_Chunk]) -> dict[str, tuple[tuple[str, ...], np.ndarray, dict[str, str]]]:
    """The per-chunk variables of ``chunks`` (in their order), as ``(dims, values, attrs)``."""
    first = chunks[0]
    out: dict[str, tuple[tuple[str, ...], np.ndarray, dict[str, str]]] = {
        "nfe": (
            ("chunk", "time"),
            np.array([c.nfe for c in chunks], dtype=np.int64),
            {"long_name": "cumulative score evaluations of the chunk at each saved state (-1: unknown)"},
        ),
        "chunk_start": (
            ("chunk",),
            np.array([c.start for c in chunks], dtype=np.int64),
            {"long_name": "first sample of the chunk"},
        ),
        "chunk_nfe": (
            ("chunk",),
            np.array([c.total_nfe for c in chunks], dtype=np.int64),
            {"long_name": "score evaluations of the chunk"},
        ),
        "chunk_wall_time_s": (
            ("chunk",),
            np.array([c.wall_time_s for c in chunks], dtype=np.float64),
            {"long_name": "wall time of the chunk", "units": "s"},
        ),
        "chunk_max_abs_x": (
            ("chunk",),
            np.array([c.max_abs_x for c in chunks], dtype=np.float64),
            {"long_name": "largest |x| of the chunk's states"},
        ),
        "chunk_divergence_bound": (
            ("chunk",),
            np.array([c.bound for c in chunks], dtype=np.float64),
            {"long_name": "divergence bound in force for the chunk (inf: disabled)"},
        ),
    }
    for key, value in first.stats.items():
        if _is_number(value):
            dtype = np.int64 if isinstance(value, int | np.integer) else np.float64
            out[f"chunk_stat_{key}"] = (
                ("chunk",),
                np.array([c.stats[key] for c in chunks], dtype=dtype),
                {"long_name": f"sampler statistic {key} of the chunk"},
            )
    return out


def _aggregate_attrs(ds: xr.Dataset) -> dict[str, Any]:
    """The run's aggregates, from the per-chunk variables of a complete run (see the module docstring)."""
    return {
        "nfe": int(ds["chunk_nfe"].max()),
        "nfe_total": int(ds["chunk_nfe"].sum()),
        "wall_time_s": round(float(ds["chunk_wall_time_s"].sum()), 4),
        "max_abs_x": float(ds["chunk_max_abs_x"].max()),
        "divergence_bound": float(ds["chunk_divergence_bound"].max()),
    }


# ---------------------------------------------------------------------------------------
# configuration (what a store must match to be resumed)
# ---------------------------------------------------------------------------------------
def _score_identity(score_fn: ScoreFn) -> str:
    """The score function's ``repr`` where it is stable across processes, else its qualified type name."""
    text = repr(score_fn)
    if " at 0x" in text or "object at" in text:
        return getattr(score_fn, "__qualname__", type(score_fn).__qualname__)
    return text


def _run_config(run: _Run) -> dict[str, Any]:
    """The configuration of a chunked run that decides its samples; a store is resumed only if it matches.

    SDE and sampler with their parameters, the score function (its ``repr`` where that holds no memory
    address, else its name: a different function of the same name is not detected), number of samples,
    feature shape, chunk size, seed, dtype, device type, saved times, divergence bound and a SHA-256 of
    ``x_T`` (if given).
    """
    x_T_hash = None
    if run.x_T is not None:
        arr = np.ascontiguousarray(run.x_T.detach().cpu().numpy())
        x_T_hash = hashlib.sha256(arr.tobytes()).hexdigest()
    bound = run.divergence_bound
    return {
        "sde": type(run.sde).__name__,
        "sde_params": json.dumps(run.sde.params(), sort_keys=True),
        "sampler": type(run.sampler).__name__,
        "sampler_params": json.dumps(run.sampler.params(), sort_keys=True, default=repr),
        "score_fn": _score_identity(run.score_fn),
        "n_samples": run.n,
        "feature_shape": list(run.feature_shape),
        "chunk_size": run.chunk_size,
        "seed": run.seed,
        "dtype": str(run.dtype).replace("torch.", ""),
        "device_type": run.device.type,
        "save_times": [float(t) for t in run.save_times],
        "divergence_bound": bound if isinstance(bound, str) or bound is None else float(bound),
        "x_T_sha256": x_T_hash,
    }


def _base_attrs(run: _Run, first: _Chunk) -> dict[str, Any]:
    config = _run_config(run)
    extra = {k: v for k, v in first.stats.items() if not _is_number(v)}
    return provenance(
        run.sde,
        run.sampler,
        run.score_fn,
        seed=run.seed,
        eps=run.sampler.eps,
        dtype=config["dtype"],
        device=str(run.device),
        denoised=run.sampler.denoise,
        chunk_size=run.chunk_size,
        n_chunks=run.n_chunks,
        chunk_seeding="chunk i: torch.Generator seeded with scoresde.chunk_seed(seed, i)",
        run_config=json.dumps(config, sort_keys=True),
        **{f"stat_{k}": v for k, v in extra.items()},
    )


def _coords(run: _Run, times: Sequence[float]) -> dict[str, Any]:
    return {
        "time": ("time", np.asarray(times, dtype=np.float64), {"long_name": "SDE time t"}),
        "sample": ("sample", np.arange(run.n)),
        "chunk": ("chunk", np.arange(run.n_chunks)),
    }


_X_ATTRS = {"long_name": "state", "description": "saved states of the reverse-time process"}


def _check_times(chunk: _Chunk, times: np.ndarray) -> None:
    if len(chunk.times) != len(times) or not np.array_equal(np.asarray(chunk.times), times):
        raise RuntimeError(
            f"chunk {chunk.index} saved its states at times {chunk.times}, chunk 0 at {times.tolist()}; a chunked "
            "run needs a sampler that saves every chunk at the same times (run it without chunk_size)"
        )


# ---------------------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------------------
def sample_chunked(
    sde: SDE,
    score_fn: ScoreFn,
    sampler: Sampler,
    *,
    n: int,
    feature_shape: Sequence[int],
    chunk_size: int,
    x_T: torch.Tensor | None,
    seed: int,
    device: torch.device,
    dtype: torch.dtype,
    save_times: np.ndarray,
    divergence_bound: float | str | None,
    progress: bool,
    out: str | os.PathLike[str] | None = None,
) -> xr.Dataset:
    """Run a sampling run of ``n`` samples chunk by chunk; :func:`scoresde.sample` calls it with checked arguments.

    This rank runs its share of the chunks (see the module docstring). Without ``out`` the ranks exchange
    their chunks and each returns the whole Dataset; with ``out`` (a path) the chunks are streamed into
    the zarr store there, and the store is returned lazily opened (``xarray.open_zarr``).
    """
    resolve_bound(divergence_bound, sde, torch.zeros((1, *feature_shape), dtype=dtype))  # its type and value
    run = _Run(
        sde,
        score_fn,
        sampler,
        int(n),
        tuple(int(s) for s in feature_shape),
        int(chunk_size),
        x_T,
        int(seed),
        device,
        dtype,
        save_times,
        divergence_bound,
    )
    if out is not None:
        return _sample_to_zarr(run, progress, Path(os.fspath(out)))
    rank, world = _rank_world()
    mine = list(range(rank, run.n_chunks, world))
    chunks = [_run_chunk(run, i) for i in progress_bar(mine, desc="chunks", disable=not progress or rank != 0)]
    if world > 1:
        import torch.distributed as dist

        gathered: list[Any] = [None] * world
        dist.all_gather_object(gathered, chunks)
        chunks = [c for part in gathered for c in part]
    chunks.sort(key=lambda c: c.index)
    times = np.asarray(chunks[0].times, dtype=np.float64)
    for c in chunks:
        _check_times(c, times)
    states = np.concatenate([c.states for c in chunks], axis=1)
    dims = ("time", "sample", *feature_dims(run.feature_shape))
    variables: dict[str, Any] = {"x": (dims, states, _X_ATTRS), **_chunk_variables(chunks)}
    variables["chunk_done"] = (("chunk",), np.ones(run.n_chunks, dtype=bool), {"long_name": "chunk complete"})
    ds = xr.Dataset(variables, coords=_coords(run, chunks[0].times), attrs=_base_attrs(run, chunks[0]))
    ds.attrs.update(_aggregate_attrs(ds))
    return ds


def _require_zarr() -> None:
    try:
        import dask.array  # noqa: F401
        import zarr  # noqa: F401
    except ImportError as err:
        raise ImportError(f"out= writes a zarr store and needs zarr and dask ({err}); {ZARR_INSTALL_HINT}") from None


def _open(path: Path, lazy: bool = True) -> xr.Dataset:
    """The store at ``path``: as dask arrays (``lazy``, what users get) or lazily indexed (small reads here)."""
    ds: xr.Dataset = xr.open_zarr(path, consolidated=False, chunks={} if lazy else None)
    return ds


def _inspect_store(run: _Run, path: Path) -> np.ndarray | None:
    """``chunk_done`` of the store at ``path`` (``None``: no store yet); a store of another run raises."""
    if not path.exists():
        return None
    try:
        ds = _open(path, lazy=False)
    except Exception as err:  # zarr and xarray raise many types for what is not a store
        raise ValueError(
            f"out={str(path)!r} exists and is not a zarr store ({type(err).__name__}: {err}); choose another path "
            "or remove it"
        ) from None
    with ds:
        text = ds.attrs.get("run_config")
        if text is None or "chunk_done" not in ds:
            raise ValueError(
                f"out={str(path)!r} is a zarr store but not one written by a chunked scoresde.sample run; choose "
                "another path or remove it"
            )
        stored = json.loads(text)
        config = json.loads(json.dumps(_run_config(run), sort_keys=True))
        if stored != config:
            diff = ", ".join(
                f"{k}: store {stored.get(k)!r}, this run {config.get(k)!r}"
                for k in sorted(set(stored) | set(config))
                if stored.get(k) != config.get(k)
            )
            raise ValueError(
                f"out={str(path)!r} holds a run of another configuration ({diff}); a store is resumed only by the "
                "same call; write to another path or remove it"
            )
        return np.asarray(ds["chunk_done"].values, dtype=bool)


def _write_template(run: _Run, first: _Chunk, path: Path) -> None:
    """Create the store (every variable, coordinate and attribute, no chunk data) atomically at ``path``."""
    import dask.array as da

    k, c = run.chunk_size, run.n_chunks
    n_time = len(first.times)
    dims = ("time", "sample", *feature_dims(run.feature_shape))
    x_shape = (n_time, run.n, *run.feature_shape)
    variables: dict[str, Any] = {
        "x": (dims, da.zeros(x_shape, chunks=(n_time, k, *run.feature_shape), dtype=first.states.dtype), _X_ATTRS)
    }
    for name, (vdims, values, attrs) in _chunk_variables([first]).items():
        shape = (c, *values.shape[1:])
        variables[name] = (vdims, da.zeros(shape, chunks=(1, *values.shape[1:]), dtype=values.dtype), attrs)
    variables["chunk_done"] = (("chunk",), da.zeros(c, chunks=1, dtype=bool), {"long_name": "chunk complete"})
    template = xr.Dataset(variables, coords=_coords(run, first.times), attrs=_base_attrs(run, first))
    for stale in path.parent.glob(f".{path.name}.tmp-*"):  # left by a run killed while it made the store
        shutil.rmtree(stale, ignore_errors=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        template.to_zarr(tmp, mode="w-", compute=False, consolidated=False)
        os.rename(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _write_chunk(chunk: _Chunk, run: _Run, path: Path, names: Sequence[str]) -> None:
    """Write the chunk's data into its region of the store, then its ``chunk_done`` mark."""
    start, stop = run.bounds(chunk.index)
    dims = ("time", "sample", *feature_dims(run.feature_shape))
    variables: dict[str, Any] = {"x": (dims, chunk.states)}
    for name, (vdims, values, _) in _chunk_variables([chunk]).items():
        if name not in names:
            raise RuntimeError(f"chunk {chunk.index} has the variable {name!r}, which the store at {path} lacks")
        variables[name] = (vdims, values)
    region = {"sample": slice(start, stop), "chunk": slice(chunk.index, chunk.index + 1)}
    xr.Dataset(variables).to_zarr(path, region=region, mode="r+", consolidated=False)
    done = xr.Dataset({"chunk_done": (("chunk",), np.ones(1, dtype=bool))})
    done.to_zarr(path, region={"chunk": region["chunk"]}, mode="r+", consolidated=False)


def update_store_attrs(path: str | os.PathLike[str], attrs: dict[str, Any]) -> None:
    """Add ``attrs`` (JSON-serialisable values) to the attributes of the zarr store at ``path``."""
    import zarr

    group = zarr.open_group(os.fspath(path), mode="r+")
    group.attrs.update({k: (v.item() if isinstance(v, np.generic) else v) for k, v in attrs.items()})


def _sample_to_zarr(run: _Run, progress: bool, path: Path) -> xr.Dataset:
    _require_zarr()
    rank, world = _rank_world()
    done = _inspect_store(run, path)  # every rank reads the same store, so every rank refuses alike
    _barrier(world)  # nobody creates the store before every rank has looked at it
    todo = [i for i in range(rank, run.n_chunks, world) if done is None or not done[i]]
    bar = progress_bar(total=len(todo), desc="chunks", disable=not progress or rank != 0)
    try:
        first = None
        if done is None:
            first = _run_chunk(run, todo[0]) if todo else None
            if rank == 0:
                assert first is not None and first.index == 0  # a new store: rank 0 has chunk 0 to do
                _write_template(run, first, path)
            _barrier(world)
        with _open(path, lazy=False) as store:
            times = np.asarray(store["time"].values)
            names = [str(v) for v in store.data_vars]
        for i in todo:
            chunk = first if first is not None and first.index == i else _run_chunk(run, i)
            _check_times(chunk, times)
            _write_chunk(chunk, run, path, names)
            bar.update(1)
    finally:
        bar.close()
    _barrier(world)
    if rank == 0:
        with _open(path, lazy=False) as store:
            complete = bool(store["chunk_done"].values.all())
            aggregates = _aggregate_attrs(store) if complete else {}
        update_store_attrs(path, aggregates)
    _barrier(world)
    return _open(path)
