"""Chunked sampling into a zarr store: peak memory at two sizes, and throughput per rank for 1 and 2 ranks.

Memory: ``scoresde.sample(..., chunk_size=K, out=STORE.zarr)`` of the exact 8-Gaussian mixture
(2-D, VP SDE, DDIM with 10 steps, 3 saved states) at ``--n-small`` (default 10,000) and ``--n-large``
(default 1,000,000) samples with the same chunk size, each in a fresh subprocess, which reports its
peak resident memory (``resource.getrusage(RUSAGE_SELF).ru_maxrss``); a subprocess that only imports
the library gives the baseline. Target: the large run's peak within 1.2x of the small one's (memory
is O(chunk), not O(samples x saved states)); the in-memory trajectory of the large run alone would
take ``n x 3 x 2 x 4`` bytes.

Throughput: the same run at ``--n-ranks`` samples (default 100,000) under ``torchrun
--nproc-per-node 1`` and ``2`` (gloo on CPU, one torch thread per rank): samples per second per rank
and in all, timed between two barriers on every rank (the slowest rank counts). On a machine with
fewer free cores than ranks the ranks share cores and the total cannot grow.

This is a measurement, not a test: the exit code is 0.

Usage::

    python benchmarks/bench_chunked.py                       # about 2 minutes on 2 cores
    python benchmarks/bench_chunked.py --quick               # smoke check: small sizes
    python benchmarks/bench_chunked.py --out chunked.md      # .json for JSON
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from _common import environment, write_result  # benchmarks/ is sys.path[0] when a script runs

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

#: run by a fresh interpreter: sample into a store, print the peak RSS (and wall time) as JSON
CHILD = """
import json, resource, sys, time
import torch
torch.set_num_threads(1)
import scoresde as sd
from scoresde.mixture import get_target
n, k, store = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
wall = None
if n:
    sde = sd.VPSDE()
    score = get_target("eight_gaussians").score(sde)
    import xarray  # noqa: F401
    t0 = time.perf_counter()
    ds = sd.sample(sde, score, sd.DDIM(steps=10), shape=(n, 2), seed=0, save_at=3, chunk_size=k, out=store,
                   progress=False)
    wall = time.perf_counter() - t0
    assert bool(ds["chunk_done"].all())
    ds.close()
else:
    import dask.array, xarray, zarr  # noqa: F401  (the baseline imports what a run imports)
print(json.dumps({"maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "wall_s": wall}))
"""

#: run under torchrun: every rank samples its chunks; rank 0 prints the timing as JSON
RANKS = """
import json, sys, time
import torch
import torch.distributed as dist
torch.set_num_threads(1)
import scoresde as sd
from scoresde.mixture import get_target
n, k, store = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
dist.init_process_group("gloo")
sde = sd.VPSDE()
score = get_target("eight_gaussians").score(sde)
dist.barrier()
t0 = time.perf_counter()
ds = sd.sample(sde, score, sd.DDIM(steps=10), shape=(n, 2), seed=0, save_at=3, chunk_size=k, out=store,
               progress=False)
dist.barrier()
wall = time.perf_counter() - t0
if dist.get_rank() == 0:
    print("RESULT " + json.dumps({"world": dist.get_world_size(), "wall_s": wall}))
ds.close()
dist.destroy_process_group()
"""


def _env() -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


def peak_memory(n: int, k: int, tmp: Path) -> dict[str, Any]:
    """Peak RSS of a fresh process sampling ``n`` samples in chunks of ``k`` into a store (``n = 0``: imports only)."""
    store = tmp / f"mem-{n}.zarr"
    cmd = [sys.executable, "-c", CHILD, str(n), str(k), str(store)]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def ranks_throughput(world: int, n: int, k: int, tmp: Path) -> dict[str, Any]:
    script = tmp / "ranks.py"
    script.write_text(RANKS)
    store = tmp / f"ranks-{world}.zarr"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(world)]
    proc = subprocess.run(
        [*cmd, str(script), str(n), str(k), str(store)], env=_env(), capture_output=True, text=True, timeout=600
    )
    if proc.returncode != 0:
        raise RuntimeError(f"torchrun with {world} ranks failed:\n{proc.stderr[-3000:]}")
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    res = json.loads(line[len("RESULT ") :])
    res["samples_per_s"] = n / res["wall_s"]
    res["samples_per_s_per_rank"] = res["samples_per_s"] / world
    return res


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n-small", type=int, default=10_000)
    p.add_argument("--n-large", type=int, default=1_000_000)
    p.add_argument("--n-ranks", type=int, default=100_000, help="samples of the throughput runs")
    p.add_argument("--chunk-size", type=int, default=10_000)
    p.add_argument("--quick", action="store_true", help="smoke check: 2,000 / 50,000 / 20,000 samples, chunks of 1,000")
    p.add_argument("--out", default=None, help="write the results to this .md or .json file")
    args = p.parse_args()
    if args.quick:
        args.n_small, args.n_large, args.n_ranks, args.chunk_size = 2_000, 50_000, 20_000, 1_000
    k = args.chunk_size
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        base = peak_memory(0, k, tmp)
        small = peak_memory(args.n_small, k, tmp)
        large = peak_memory(args.n_large, k, tmp)
        ranks = [ranks_throughput(w, args.n_ranks, k, tmp) for w in (1, 2)]
    ratio = large["maxrss_mib"] / small["maxrss_mib"]
    in_memory_mib = args.n_large * 3 * 2 * 4 / 2**20
    res = {
        "environment": environment(),
        "chunk_size": k,
        "memory": {"baseline": base, "small": {"n": args.n_small, **small}, "large": {"n": args.n_large, **large}},
        "memory_ratio_large_over_small": ratio,
        "in_memory_trajectory_mib_large": in_memory_mib,
        "ranks": ranks,
    }
    lines = [
        f"# Chunked sampling (DDIM 10 steps, 2-D mixture, 3 saved states, chunk size {k:,})",
        "",
        "| run | samples | peak RSS (MiB) | wall (s) |",
        "|---|---:|---:|---:|",
        f"| imports only | 0 | {base['maxrss_mib']:.1f} | |",
        f"| small | {args.n_small:,} | {small['maxrss_mib']:.1f} | {small['wall_s']:.2f} |",
        f"| large | {args.n_large:,} | {large['maxrss_mib']:.1f} | {large['wall_s']:.2f} |",
        "",
        f"peak RSS large / small = {ratio:.3f} (target <= 1.2; the large run's trajectory in memory alone: "
        f"{in_memory_mib:.1f} MiB)",
        "",
        "| ranks | samples | wall (s) | samples/s in all | samples/s per rank |",
        "|---:|---:|---:|---:|---:|",
    ]
    for r in ranks:
        lines.append(
            f"| {r['world']} | {args.n_ranks:,} | {r['wall_s']:.2f} | {r['samples_per_s']:,.0f} | "
            f"{r['samples_per_s_per_rank']:,.0f} |"
        )
    table = "\n".join(lines)
    print(table)
    print(f"\ncpus available: {res['environment']['cpus_available']}, load average: {os.getloadavg()[0]:.2f}")
    write_result(args.out, res, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
