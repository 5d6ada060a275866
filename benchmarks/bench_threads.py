"""Thread benchmark: Euler–Maruyama wall time with 1 against 2 torch intra-op threads, over batch sizes.

For each score function (the exact 8-Gaussian mixture score, a small MLP ``ScoreModel``, and a
small U-Net ``ScoreModel`` on 1x8x8 images) and each batch size, ``scoresde.sample`` runs a fixed
number of Euler–Maruyama steps with ``num_threads=1`` and ``num_threads=2``, side by side in
interleaved rounds (the order of the two alternates from round to round). Reported: the median wall
time of each, the ratio ``t(2 threads) / t(1 thread)`` per size (below 1: two threads help), and per
score function the threshold size from which two threads are faster at that and every larger size.

``--load N`` starts ``N`` busy-loop processes for the duration of the measurement (they are always
stopped, also on error or Ctrl-C), to see what other work on the machine does to each setting.
This is a measurement, not a test: the exit code is 0.

Usage::

    python benchmarks/bench_threads.py                         # 100 steps, 2-D 100 ... 100,000 samples, 3 rounds
    python benchmarks/bench_threads.py --quick                 # smoke check: small sizes, 10 steps, 1 round
    python benchmarks/bench_threads.py --load 2 --out threads.md   # under load; .json for JSON
    python benchmarks/bench_threads.py --cases mixture mlp --sizes 1000 10000
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from _common import environment, write_result  # benchmarks/ is sys.path[0] when a script runs

import scoresde as sd

THREADS = (1, 2)
SIZES = (100, 300, 1000, 3000, 10_000, 30_000, 100_000)
IMAGE_SIZES = (4, 16, 64, 256)
QUICK_SIZES = (100, 1000)
QUICK_IMAGE_SIZES = (4,)
CASES = ("mixture", "mlp", "unet")


def score_functions(sde: sd.SDE) -> dict[str, tuple[str, Callable, tuple[int, ...]]]:
    """name -> (description, score_fn, feature shape); fixed seeds, eval mode."""
    torch.manual_seed(0)
    mlp = sd.nets.ScoreModel(sd.nets.MLPScore(dim=2, hidden=128, layers=3), sde).eval()
    unet = sd.nets.ScoreModel(sd.nets.UNet(channels=1, base=16, channel_mults=(1, 2), embed_dim=64), sde).eval()
    return {
        "mixture": ("exact 8-Gaussian mixture score, 2-D", sd.eight_gaussians().score(sde), (2,)),
        "mlp": ("MLPScore(dim=2, hidden=128, layers=3) ScoreModel, 2-D", mlp, (2,)),
        "unet": ("UNet(channels=1, base=16, channel_mults=(1, 2)) ScoreModel, 1x8x8", unet, (1, 8, 8)),
    }


@contextmanager
def busy_load(n: int) -> Iterator[list[int]]:
    """Run ``n`` busy-loop processes for the block; terminate (then kill) and reap them afterwards."""
    procs: list[subprocess.Popen] = []
    previous = signal.getsignal(signal.SIGTERM)

    def _terminate(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)  # runs the finally below

    signal.signal(signal.SIGTERM, _terminate)
    try:
        for _ in range(n):
            procs.append(subprocess.Popen([sys.executable, "-c", "while True: pass"], stdin=subprocess.DEVNULL))
        yield [p.pid for p in procs]
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        signal.signal(signal.SIGTERM, previous)


def time_sample(sde: sd.SDE, score_fn: Callable, shape: tuple[int, ...], steps: int, threads: int) -> float:
    """Wall time of one ``scoresde.sample`` call with ``num_threads=threads``."""
    start = time.perf_counter()
    sd.sample(sde, score_fn, sd.EulerMaruyama(steps=steps), shape=shape, seed=0, num_threads=threads, progress=False)
    return time.perf_counter() - start


def threshold(rows: list[dict[str, Any]]) -> int | None:
    """Smallest size from which the 2-thread ratio is below 1 at that and every larger size (None: never)."""
    best = None
    for row in sorted(rows, key=lambda r: r["batch"], reverse=True):
        if row["ratio"] >= 1:
            break
        best = row["batch"]
    return best


def run(cases: list[str], sizes: list[int], image_sizes: list[int], steps: int, rounds: int) -> dict[str, Any]:
    sde = sd.VPSDE()
    fns = score_functions(sde)
    results: dict[str, Any] = {}
    for case in cases:
        desc, score_fn, feat = fns[case]
        rows = []
        for batch in image_sizes if len(feat) == 3 else sizes:
            shape = (batch, *feat)
            for n in THREADS:  # warm-up: allocator, thread pool, first-call costs
                time_sample(sde, score_fn, shape, 2, n)
            walls: dict[int, list[float]] = {n: [] for n in THREADS}
            for r in range(rounds):
                for n in THREADS if r % 2 == 0 else THREADS[::-1]:
                    walls[n].append(time_sample(sde, score_fn, shape, steps, n))
            t1, t2 = statistics.median(walls[1]), statistics.median(walls[2])
            row = {
                "batch": batch,
                "t1_s": t1,
                "t2_s": t2,
                "ratio": t2 / t1,
                "t1_rounds_s": walls[1],
                "t2_rounds_s": walls[2],
            }
            rows.append(row)
            print(
                f"{case:8s} batch {batch:>7d}: 1 thread {t1:8.3f} s, 2 threads {t2:8.3f} s, ratio {t2 / t1:6.3f}",
                flush=True,
            )
        results[case] = {"description": desc, "feature_shape": list(feat), "rows": rows, "threshold": threshold(rows)}
    return results


def markdown(res: dict[str, Any]) -> str:
    cfg, env = res["config"], res["environment"]
    lines = [
        f"{cfg['steps']} Euler–Maruyama steps, {cfg['sde']}, median of {cfg['rounds']} interleaved round(s), "
        f"busy-loop processes: {cfg['load']}",
        f"torch {env['torch']}, CPU {env['cpu']} ({env['cpus_available']} available), default torch threads "
        f"{env['torch_threads']}; 1-min load average at start / end: "
        + " / ".join(f"{v:.2f}" for v in env["loadavg_1min_start_end"]),
        "",
        "| score function | batch | 1 thread (s) | 2 threads (s) | t(2) / t(1) | per-round ratios |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for case, r in res["cases"].items():
        for row in r["rows"]:
            per_round = ", ".join(f"{b / a:.2f}" for a, b in zip(row["t1_rounds_s"], row["t2_rounds_s"], strict=True))
            times = f"{row['t1_s']:.3f} | {row['t2_s']:.3f} | {row['ratio']:.3f}"
            lines.append(f"| {case} | {row['batch']} | {times} | {per_round} |")
    lines += ["", "Threshold (two threads faster at this and every larger batch size):", ""]
    for case, r in res["cases"].items():
        th = r["threshold"]
        lines.append(f"* {case} ({r['description']}): " + (f"batch >= {th}" if th is not None else "none measured"))
    lines += [
        "",
        "wall: the whole `scoresde.sample(..., num_threads=n)` call; ratio below 1: two threads are faster.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--steps", type=int, default=None, help="Euler–Maruyama steps per run (default 100; --quick: 10)")
    p.add_argument("--sizes", type=int, nargs="+", default=None, help=f"2-D batch sizes (default {SIZES})")
    p.add_argument(
        "--image-sizes", type=int, nargs="+", default=None, help=f"1x8x8 batch sizes for the U-Net ({IMAGE_SIZES})"
    )
    p.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES), help="score functions to measure")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 3; --quick: 1)")
    p.add_argument("--load", type=int, default=0, metavar="N", help="busy-loop processes during the measurement")
    p.add_argument("--quick", action="store_true", help="smoke check: small sizes, 10 steps, 1 round")
    p.add_argument("--out", default=None, help="also write the results: .json as JSON, otherwise markdown")
    args = p.parse_args(argv)
    if args.load < 0:
        p.error("--load must be >= 0")

    steps = args.steps or (10 if args.quick else 100)
    rounds = args.rounds or (1 if args.quick else 3)
    sizes = args.sizes or list(QUICK_SIZES if args.quick else SIZES)
    image_sizes = args.image_sizes or list(QUICK_IMAGE_SIZES if args.quick else IMAGE_SIZES)

    print(
        f"scoresde thread benchmark: {steps} steps, {rounds} round(s), threads {THREADS}, load {args.load}",
        flush=True,
    )
    load_start = os.getloadavg()
    with busy_load(args.load) as pids:
        if pids:
            print(f"started {len(pids)} busy-loop process(es): {pids}", flush=True)
        cases = run(args.cases, sizes, image_sizes, steps, rounds)
    res = {
        "config": {"steps": steps, "rounds": rounds, "threads": list(THREADS), "load": args.load, "sde": "VPSDE()"},
        "cases": cases,
        "environment": {**environment(), "loadavg_1min_start_end": [load_start[0], os.getloadavg()[0]]},
    }
    table = markdown(res)
    print()
    print(table)
    write_result(args.out, res, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
