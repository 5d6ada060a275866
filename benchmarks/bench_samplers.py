"""Speed benchmark: sampler wall time against the same number of bare score calls.

Target (CPU): for every fixed-grid sampler (Euler–Maruyama, predictor–corrector, DDPM ancestral, the
fixed-step probability-flow ODE, Euler, Heun, DDIM, DPM-Solver++, UniPC, FlowODE)
``ratio = wall / (NFE * bare per-call time)`` is at most 1.05, where ``wall`` is the whole
``scoresde.sample`` call. torchsde's samplers are reported too. Three score models (``--model``):

* ``fourier-mlp`` (default): 16 Gaussian Fourier features of t, 3 hidden layers of width 128, float32;
* ``mlp``: ``cat(x, t)``, 2 hidden layers of width 128 (3-128-128-2), SiLU, float32;
* ``mixture``: the exact score of the 5-component pinwheel mixture, float64.

SDE samplers run ``--steps`` steps (DDPMAncestral: a DDPM chain of that length), ODE solvers
``--ode-steps``; 2-D states, batch 10,000 by default.

Repetitions are interleaved: every round runs each sampler once (the order rotates from round to
round), each run bracketed by two runs of bare calls of its own score function, and its ratio uses the
mean bare per-call time of those two. The table shows medians over the rounds. Each sampler's own cost
(microseconds per NFE of the same ``sample`` call with the nearly free score ``-x``, whose own time is
subtracted) is measured too, with the ratio ``1 + own cost / bare call`` it implies: a low-noise
estimate where the wall-time ratio drifts with the machine's speed.
This is a measurement, not a test: the exit code is 0.

Usage::

    python benchmarks/bench_samplers.py                      # full size: batch 10000, 1000 steps, 3 rounds
    python benchmarks/bench_samplers.py --model mixture --steps 200 --ode-steps 20 --progress
    python benchmarks/bench_samplers.py --model mlp --steps 1000 --ode-steps 50 --exclude TorchSDE
    python benchmarks/bench_samplers.py --quick              # smoke check: batch 2000, 200 steps, 1 round
    python benchmarks/bench_samplers.py --out results.md     # also write the table (.json: as JSON)

    # glibc's malloc trims / mmaps the large temporaries of big forward passes, which can slow
    # them down on some VMs; these must be set before the process starts:
    MALLOC_MMAP_THRESHOLD_=2000000000 MALLOC_TRIM_THRESHOLD_=2000000000 MALLOC_TOP_PAD_=100000000 \\
        python benchmarks/bench_samplers.py
    python benchmarks/bench_samplers.py --malloc-tuned       # the same: re-executes itself with them set
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from _common import environment, write_result  # benchmarks/ is sys.path[0] when a script runs

import scoresde as sd

#: every fixed-grid sampler: wall / (NFE x bare call) at most this
TARGET_RATIO = 1.05
MALLOC_TUNED = {
    "MALLOC_MMAP_THRESHOLD_": "2000000000",
    "MALLOC_TRIM_THRESHOLD_": "2000000000",
    "MALLOC_TOP_PAD_": "100000000",
}


# ---------------------------------------------------------------------------------------
# the score model
# ---------------------------------------------------------------------------------------
class ScoreMLP(torch.nn.Module):
    """(x in R^d, t) -> R^d: Gaussian random Fourier features of t concatenated to x, then
    3 hidden layers of width 128 with SiLU and a linear output layer, added to ``-x``.

    ``-x`` is the exact score of N(0, I) data under the VP SDE (its marginals are N(0, I) at every
    t), so the (untrained) network is a correction and the sampled states stay O(1), as with a
    trained model. An untrained MLP alone lets the reverse trajectories grow to |x| ~ 1e3 (EM) to
    2e4 (PC); SiLU's exp() is ~4x slower on such large activations, so the sampler's network calls
    would cost more than the bare calls on N(0, I) inputs and bias the overhead ratio.
    """

    def __init__(self, dim: int = 2, width: int = 128, n_freq: int = 16, scale: float = 4.0, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.register_buffer("freq", 2 * math.pi * scale * torch.randn(n_freq, generator=gen))
        torch.manual_seed(seed)
        self.net = torch.nn.Sequential(
            torch.nn.Linear(dim + 2 * n_freq, width),
            torch.nn.SiLU(),
            torch.nn.Linear(width, width),
            torch.nn.SiLU(),
            torch.nn.Linear(width, width),
            torch.nn.SiLU(),
            torch.nn.Linear(width, dim),
        )

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        arg = t[:, None] * self.freq
        return self.net(torch.cat([x, torch.sin(arg), torch.cos(arg)], dim=1)) - x


def make_score_fn(dim: int = 2) -> tuple[Callable[[torch.Tensor, torch.Tensor], torch.Tensor], ScoreMLP]:
    model = ScoreMLP(dim).eval()
    for p in model.parameters():
        p.requires_grad_(False)

    def score_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return model(x, t)

    return score_fn, model


class SmallMLP(torch.nn.Module):
    """(x in R^2, t) -> R^2: ``cat(x, t)`` (3 inputs), 2 hidden layers of width 128 with SiLU, a linear
    output layer, added to ``-x`` (as :class:`ScoreMLP`, so that the states stay O(1))."""

    def __init__(self, dim: int = 2, width: int = 128, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.net = torch.nn.Sequential(
            torch.nn.Linear(dim + 1, width),
            torch.nn.SiLU(),
            torch.nn.Linear(width, width),
            torch.nn.SiLU(),
            torch.nn.Linear(width, dim),
        )

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([x, t[:, None]], dim=1)) - x


def _frozen(model: torch.nn.Module) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)

    def score_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return model(x, t)

    return score_fn


@dataclass
class Model:
    """A score model of the benchmark: how to build its score function for an SDE, its dtype and a description."""

    make: Callable[[sd.SDE], Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]
    dtype: torch.dtype
    description: str


#: the score models: ``--model`` picks one
MODELS: dict[str, Model] = {
    "fourier-mlp": Model(
        lambda sde: make_score_fn()[0],
        torch.float32,
        "MLP 34-128-128-128-2, SiLU, 16 Gaussian Fourier features of t, float32",
    ),
    "mlp": Model(lambda sde: _frozen(SmallMLP()), torch.float32, "MLP 3-128-128-2 on cat(x, t), SiLU, float32"),
    "mixture": Model(
        lambda sde: sd.mixture.pinwheel().score(sde),
        torch.float64,
        "exact score of the 5-component pinwheel mixture (scoresde.mixture.pinwheel), float64",
    ),
}


# ---------------------------------------------------------------------------------------
# the measurements
# ---------------------------------------------------------------------------------------
def _minor_faults() -> int:
    """Minor page faults of this process so far (0 where ``resource`` is unavailable)."""
    try:
        import resource
    except ImportError:  # not on Unix
        return 0
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


class Meter:
    """Wall time, process CPU time (all threads) and minor page faults over a ``with`` block."""

    def __enter__(self) -> Meter:
        self._w, self._c, self._f = time.perf_counter(), time.process_time(), _minor_faults()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self._w
        self.cpu = time.process_time() - self._c
        self.faults = _minor_faults() - self._f


def time_bare_calls(score_fn, batch: int, n_calls: int, dim: int = 2, eps: float = 1e-3, dtype=torch.float32) -> Meter:
    """``n_calls`` bare calls on a ``(batch, dim)`` state, a fresh ``t`` vector each call (on the same
    uniform grid as the samplers), inside ``torch.inference_mode()`` like ``sample``."""
    x = torch.randn(batch, dim, generator=torch.Generator().manual_seed(1), dtype=dtype)
    times = np.linspace(1.0, eps, n_calls + 1)[:-1].tolist()
    with torch.inference_mode(), Meter() as m:
        for t in times:
            score_fn(x, torch.full((batch,), t, dtype=x.dtype))
    return m


def make_samplers(steps: int, ode_steps: int) -> dict[str, Callable[[], sd.Sampler]]:
    """Every fixed-grid sampler (and torchsde's): the SDE samplers with ``steps`` steps, the ODE solvers
    with ``ode_steps``; DDPMAncestral runs a DDPM chain of ``steps`` steps (see :func:`sde_for`)."""
    return {
        "EulerMaruyama": lambda: sd.EulerMaruyama(steps=steps),
        "PredictorCorrector (rd + langevin)": lambda: sd.PredictorCorrector(steps=steps),
        "DDPMAncestral": lambda: sd.DDPMAncestral(),
        "TorchSDE euler": lambda: sd.TorchSDE(method="euler", steps=steps),
        "TorchSDE srk": lambda: sd.TorchSDE(method="srk", steps=steps),
        "ProbabilityFlowODE euler": lambda: sd.ProbabilityFlowODE("euler", steps=ode_steps),
        "ProbabilityFlowODE heun": lambda: sd.ProbabilityFlowODE("heun", steps=ode_steps),
        "Euler": lambda: sd.Euler(steps=ode_steps),
        "Heun": lambda: sd.Heun(steps=ode_steps),
        "DDIM": lambda: sd.DDIM(steps=ode_steps),
        "DPMSolverPP (2M)": lambda: sd.DPMSolverPP(order=2, steps=ode_steps),
        "UniPC (3)": lambda: sd.UniPC(order=3, steps=ode_steps),
        "FlowODE euler": lambda: sd.FlowODE(steps=ode_steps),
    }


def sde_for(name: str, steps: int) -> sd.SDE:
    """The SDE a sampler runs on: VP, or for DDPMAncestral the linear DDPM chain of ``steps`` steps."""
    if name == "DDPMAncestral":
        return sd.DDPMSchedule.linear(T=steps).sde()
    return sd.VPSDE()


def time_sampler(
    sde, score_fn, sampler: sd.Sampler, batch: int, dtype: torch.dtype, progress: bool
) -> tuple[Meter, float, int, float]:
    """The whole ``sample`` call; the integration loop's wall time as the Dataset records it; NFE;
    the largest |x| of the final state (a sanity check that the states stayed O(1))."""
    with Meter() as m:
        ds = sd.sample(sde, score_fn, sampler, shape=(batch, 2), seed=0, dtype=dtype, progress=progress)
    return m, float(ds.attrs["wall_time_s"]), int(ds.attrs["nfe"]), float(np.abs(ds["x"].values[-1]).max())


def free_score(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The score of N(0, I) data under VP, ``-x``: one cheap elementwise operation."""
    return x.neg()


def own_cost(
    sdes: dict[str, sd.SDE],
    factories: dict[str, Callable[[], sd.Sampler]],
    names: list[str],
    batch: int,
    dtype: torch.dtype,
    progress: bool,
    repeats: int,
) -> dict[str, float]:
    """Per sampler: microseconds per NFE of the whole ``sample`` call with :func:`free_score`, less the
    cost of one call of :func:`free_score` itself (median of ``repeats`` interleaved runs)."""
    x = torch.randn(batch, 2, generator=torch.Generator().manual_seed(1), dtype=dtype)
    with torch.inference_mode(), Meter() as m:
        for _ in range(200):
            free_score(x, x[:, 0])
    free_us = 1e6 * m.wall / 200
    per: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(repeats):
        for name in names:
            with Meter() as m:
                ds = sd.sample(
                    sdes[name], free_score, factories[name](), shape=(batch, 2), seed=0, dtype=dtype, progress=progress
                )
            per[name].append(1e6 * m.wall / int(ds.attrs["nfe"]) - free_us)
    return {name: statistics.median(v) for name, v in per.items()}


def run(
    batch: int,
    steps: int,
    repeats: int,
    only: list[str] | None = None,
    *,
    exclude: list[str] | None = None,
    model: str = "fourier-mlp",
    ode_steps: int = 50,
    progress: bool = False,
) -> dict[str, Any]:
    spec = MODELS[model]
    dtype = spec.dtype
    factories = make_samplers(steps, ode_steps)
    if only:
        factories = {k: v for k, v in factories.items() if any(o.lower() in k.lower() for o in only)}
    if exclude:
        factories = {k: v for k, v in factories.items() if not any(o.lower() in k.lower() for o in exclude)}
    names = list(factories)
    sdes = {name: sde_for(name, steps) for name in names}
    # one score function per SDE (the mixture's exact score depends on it; the MLPs ignore it)
    score_fns: dict[str, Any] = {}
    for name in names:
        key = repr(sdes[name])
        if key not in score_fns:
            score_fns[key] = spec.make(sdes[name])
    score_of = {name: score_fns[repr(sdes[name])] for name in names}
    # warm-up: the network, every code path (small), the allocator
    load_start = os.getloadavg()
    for fn in score_fns.values():
        time_bare_calls(fn, batch, 20, dtype=dtype)
    warm_up = make_samplers(10, 10)
    for name in names:
        sd.sample(
            sde_for(name, 10),
            spec.make(sde_for(name, 10)),
            warm_up[name](),
            shape=(batch, 2),
            seed=0,
            dtype=dtype,
            progress=False,
        )

    # each sampler run is bracketed by two runs of bare calls of its own score function (the one after it is
    # the one before the next sampler on the same SDE); its ratio uses the mean per-call time of the two,
    # which cancels slow drifts in the machine's speed (other load, clock) better than one baseline per round
    n_bare = min(steps, max(ode_steps, 100))
    rounds: list[dict[str, Any]] = []
    bare_runs: list[dict[str, float]] = []

    def bare(name: str) -> dict[str, float]:
        m = time_bare_calls(score_of[name], batch, n_bare, dtype=dtype)
        bare_runs.append({"wall": m.wall / n_bare, "cpu": m.cpu / n_bare, "faults": m.faults / n_bare})
        print(
            f"    {n_bare} bare calls{'':<{22 - len(str(n_bare))}s} {m.wall:8.3f} s  "
            f"({1e3 * m.wall / n_bare:.3f} ms/call, {m.faults / n_bare:.0f} page faults/call)",
            flush=True,
        )
        return bare_runs[-1]

    for r in range(repeats):
        print(f"  round {r + 1}/{repeats}", flush=True)
        rec: dict[str, Any] = {}
        order = names[r % len(names) :] + names[: r % len(names)]
        last: dict[str, dict[str, float]] = {}
        for name in order:
            key = repr(sdes[name])
            before = last.get(key) or bare(name)
            m, loop, nfe, xmax = time_sampler(sdes[name], score_of[name], factories[name](), batch, dtype, progress)
            after = last[key] = bare(name)
            per_call = 0.5 * (before["wall"] + after["wall"])
            cpu_per_call = 0.5 * (before["cpu"] + after["cpu"])
            denom = nfe * per_call
            rec[name] = {
                "wall": m.wall,
                "loop": loop,
                "nfe": nfe,
                "ratio": m.wall / denom,
                "loop_ratio": loop / denom,
                "cpu_ratio": m.cpu / (nfe * cpu_per_call),
                "faults_per_nfe": m.faults / nfe,
                "final_abs_max": xmax,
                "bare_ms": 1e3 * per_call,
            }
            print(
                f"    {name:<36s} {m.wall:8.3f} s  NFE {nfe:5d}  ratio {m.wall / denom:6.3f}  "
                f"({m.faults / nfe:.0f} page faults/NFE)",
                flush=True,
            )
        rounds.append(rec)

    # the samplers' own cost: the same runs with a score that costs almost nothing (-x, the score of N(0, I)),
    # whose per-NFE time is low-noise; 1 + (own cost per NFE) / (bare call) estimates the ratio above
    own = own_cost(sdes, factories, names, batch, dtype, progress, max(repeats, 5))
    med = statistics.median
    per_call = med(b["wall"] for b in bare_runs)
    rows = []
    for name in names:
        recs = [r[name] for r in rounds]
        nfe = recs[0]["nfe"]
        wall = med(x["wall"] for x in recs)
        rows.append(
            {
                "sampler": name,
                "wall_s": wall,
                "loop_s": med(x["loop"] for x in recs),
                "nfe": nfe,
                "ms_per_nfe": 1e3 * wall / nfe,
                "ratio": med(x["ratio"] for x in recs),
                "loop_ratio": med(x["loop_ratio"] for x in recs),
                "cpu_ratio": med(x["cpu_ratio"] for x in recs),
                "own_us_per_nfe": own[name],
                "estimated_ratio": 1.0 + own[name] / (1e3 * med(x["bare_ms"] for x in recs)),
                "faults_per_nfe": med(x["faults_per_nfe"] for x in recs),
                "final_abs_max": recs[0]["final_abs_max"],
                "ratios": [x["ratio"] for x in recs],
            }
        )
    return {
        "config": {
            "batch": batch,
            "steps": steps,
            "ode_steps": ode_steps,
            "repeats": repeats,
            "sde": repr(sd.VPSDE()) + " (DDPMAncestral: the linear DDPM chain of `steps` steps)",
            "dim": 2,
            "model": spec.description,
            "progress": progress,
        },
        "bare": {
            "calls": n_bare,
            "runs": len(bare_runs),
            "wall_s": n_bare * per_call,
            "ms_per_call": 1e3 * per_call,
            "faults_per_call": med(b["faults"] for b in bare_runs),
            "ms_per_call_each_run": [1e3 * b["wall"] for b in bare_runs],
        },
        "rows": rows,
        "environment": {
            **environment(torchsde=_torchsde_version()),
            "loadavg_1min_start_end": [load_start[0], os.getloadavg()[0]],
        },
    }


# ---------------------------------------------------------------------------------------
# reporting
# ---------------------------------------------------------------------------------------
def _torchsde_version() -> str:
    import torchsde

    return getattr(torchsde, "__version__", "?")


def markdown(res: dict[str, Any]) -> str:
    cfg, bare, env = res["config"], res["bare"], res["environment"]
    lines = [
        f"batch {cfg['batch']}, {cfg['steps']} steps (SDE samplers) / {cfg['ode_steps']} steps (ODE solvers), "
        f"{cfg['sde']}, median of {cfg['repeats']} interleaved round(s); model {cfg['model']}; progress bar "
        f"{'on' if cfg['progress'] else 'off'}",
        f"torch {env['torch']}, torchsde {env['torchsde']}, threads {env['torch_threads']}, "
        f"CPU {env['cpu']} ({env['cpus_available']} available), MALLOC_*: "
        + (
            ", ".join(f"{k}={v}" for k, v in env["malloc_env"].items())
            if isinstance(env["malloc_env"], dict)
            else "unset"
        ),
        "1-min load average at start / end: "
        + " / ".join(f"{v:.2f}" for v in env["loadavg_1min_start_end"])
        + f" (this benchmark adds up to {env['torch_threads']}; clearly more than {env['cpus_available']} means "
        "other processes competed for the CPU: repeat)",
        "",
        "| sampler | wall (s) | NFE | ms / NFE | ratio = wall / (NFE x bare call) | loop-only ratio "
        "| CPU-time ratio | own cost (us / NFE) | 1 + own cost / bare call | page faults / NFE | max abs x_eps "
        "| per-round ratios |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        f"| bare score calls (median of {bare['runs']} runs) | {bare['wall_s']:.3f} | {bare['calls']} "
        f"| {bare['ms_per_call']:.3f} | 1 | 1 | 1 | | | {bare['faults_per_call']:.0f} | "
        f"| {min(bare['ms_per_call_each_run']):.3f} to {max(bare['ms_per_call_each_run']):.3f} ms/call |",
    ]
    for row in res["rows"]:
        ratio = f"{row['ratio']:.3f}"
        if not row["sampler"].startswith("TorchSDE"):
            ok = row["ratio"] <= TARGET_RATIO
            ratio += f" **{'PASS' if ok else 'FAIL'}** (<= {TARGET_RATIO:.2f})"
        lines.append(
            f"| {row['sampler']} | {row['wall_s']:.3f} | {row['nfe']} | {row['ms_per_nfe']:.3f} | {ratio} "
            f"| {row['loop_ratio']:.3f} | {row['cpu_ratio']:.3f} "
            f"| {row['own_us_per_nfe']:.0f} | {row['estimated_ratio']:.3f} "
            f"| {row['faults_per_nfe']:.0f} | {row['final_abs_max']:.3g} "
            f"| {', '.join(f'{v:.3f}' for v in row['ratios'])} |"
        )
    lines += [
        "",
        "wall: the whole `scoresde.sample(...)` call (integration + xarray Dataset); loop-only: the "
        "integration time the Dataset records (`attrs['wall_time_s']`); CPU-time ratio: the same with "
        "process CPU time (user + sys of all threads) in place of wall time, less sensitive to other load; "
        "own cost: microseconds per NFE of the same `sample` call with the score -x (one cheap elementwise "
        "operation, its own cost subtracted), i.e. what the sampler adds to each evaluation; it is measured "
        "to a few microseconds where the ratio, a quotient of two noisy wall times, scatters by several "
        "per cent from round to round, and 1 + own cost / bare call estimates the ratio from it; "
        "page faults: minor page faults per call, thousands of them mean glibc malloc hands the network's "
        "large temporaries back to the kernel and re-faults them on every call (see the MALLOC_* note); "
        "max abs x_eps: largest |x| of the final state, O(1) unless the trajectories blew up.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--batch", type=int, default=None, help="batch size (default 10000; --quick: 2000)")
    p.add_argument(
        "--model", choices=sorted(MODELS), default="fourier-mlp", help="the score model (default fourier-mlp)"
    )
    p.add_argument("--steps", type=int, default=None, help="SDE sampler steps (default 1000; --quick: 200)")
    p.add_argument("--ode-steps", type=int, default=50, help="steps of the ODE solvers (default 50)")
    p.add_argument("--progress", action="store_true", help="show the progress bars (sample's default; on stderr)")
    p.add_argument("--repeats", type=int, default=None, help="interleaved rounds (default 3; --quick: 1)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--quick", action="store_true", help="smoke check: batch 2000, 200 steps, 1 round")
    p.add_argument("--only", nargs="+", default=None, help="run only samplers whose name contains one of these")
    p.add_argument("--exclude", nargs="+", default=None, help="skip samplers whose name contains one of these")
    p.add_argument("--out", default=None, help="also write the results: .json as JSON, otherwise markdown")
    p.add_argument(
        "--malloc-tuned",
        action="store_true",
        help="re-execute with " + " ".join(f"{k}={v}" for k, v in MALLOC_TUNED.items()),
    )
    args = p.parse_args(argv)

    if args.malloc_tuned and any(os.environ.get(k) != v for k, v in MALLOC_TUNED.items()):
        env = {**os.environ, **MALLOC_TUNED}
        os.execve(sys.executable, [sys.executable, os.path.abspath(__file__), *sys.argv[1:]], env)

    batch = args.batch or (2000 if args.quick else 10_000)
    steps = args.steps or (200 if args.quick else 1000)
    repeats = args.repeats or (1 if args.quick else 3)
    if args.threads:
        torch.set_num_threads(args.threads)

    print(
        f"scoresde sampler benchmark: batch {batch}, {steps} steps, {repeats} round(s), "
        f"{torch.get_num_threads()} torch thread(s)",
        flush=True,
    )
    res = run(
        batch,
        steps,
        repeats,
        args.only,
        exclude=args.exclude,
        model=args.model,
        ode_steps=args.ode_steps,
        progress=args.progress,
    )
    table = markdown(res)
    print()
    print(table)
    write_result(args.out, res, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
