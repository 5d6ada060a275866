"""Probability-flow ODE backends side by side: scipy RK45 / DOP853 vs torchdiffeq dopri5 / dopri8.

Problem: the FFJORD 8-Gaussian ring with its exact mixture score, VP SDE, ``eps = 1e-3``, float64,
``n`` samples from one fixed ``x_T``. Every solver runs through :class:`scoresde.ProbabilityFlowODE`
(``method`` selects the backend) at each tolerance ``rtol = atol = tol``. Reported per (solver, tol):
NFE, wall time (median over interleaved rounds) and the RMSE of the end point against a scipy DOP853
solve at ``rtol = atol = 1e-10`` of the same ODE from the same ``x_T``. The default size runs in well
under a minute on two cores. A measurement, not a test: the exit code is 0.

Usage::

    python benchmarks/bench_ode_backends.py                    # 200 samples, tol 1e-3 1e-5 1e-7, 3 rounds
    python benchmarks/bench_ode_backends.py --n 1000 --tols 1e-4 1e-6 --rounds 5 --out backends.md
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch
from _common import environment, write_result  # benchmarks/ is sys.path[0] when a script runs

import scoresde as sd

SOLVERS = (("scipy", "RK45"), ("scipy", "DOP853"), ("torchdiffeq", "dopri5"), ("torchdiffeq", "dopri8"))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=200, help="number of samples (default 200)")
    p.add_argument("--tols", type=float, nargs="+", default=[1e-3, 1e-5, 1e-7], help="rtol = atol values")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--out", default=None, help="write the table (.md) or the results (.json)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    try:
        import torchdiffeq

        solvers = SOLVERS
        versions = {"torchdiffeq": torchdiffeq.__version__}
    except ImportError:
        print("torchdiffeq is not installed (pip install 'scoresde[torchdiffeq]'): scipy only")
        solvers = tuple(s for s in SOLVERS if s[0] == "scipy")
        versions = {}

    sde = sd.VPSDE()
    score = sd.eight_gaussians().score(sde)
    x_T = sde.prior_sampling((args.n, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def run(method: str, tol: float) -> tuple[torch.Tensor, int, float]:
        t0 = time.perf_counter()
        ds = sd.sample(sde, score, sd.ProbabilityFlowODE(method, rtol=tol, atol=tol), x_T=x_T, progress=False)
        return torch.from_numpy(ds["x"].values[-1]), int(ds.attrs["nfe"]), time.perf_counter() - t0

    ref, ref_nfe, ref_time = run("DOP853", 1e-10)
    cells = [(backend, method, tol) for tol in args.tols for backend, method in solvers]
    times: dict[tuple[str, str, float], list[float]] = {c: [] for c in cells}
    found: dict[tuple[str, str, float], tuple[int, float]] = {}
    for r in range(args.rounds):
        order = cells[r % len(cells) :] + cells[: r % len(cells)]  # rotate the order between rounds
        for cell in order:
            end, nfe, wall = run(cell[1], cell[2])
            times[cell].append(wall)
            found[cell] = (nfe, float((end - ref).square().sum(dim=1).mean().sqrt()))

    rows = []
    for cell in cells:
        nfe, rmse = found[cell]
        rows.append(
            {
                "backend": cell[0],
                "method": cell[1],
                "tol": cell[2],
                "nfe": nfe,
                "wall_s": statistics.median(times[cell]),
                "rmse": rmse,
            }
        )
    header = "| backend | method | rtol = atol | NFE | wall (s) | RMSE vs DOP853 1e-10 |\n|---|---|---|---|---|---|"
    lines = [
        f"| {r['backend']} | {r['method']} | {r['tol']:.0e} | {r['nfe']} | {r['wall_s']:.3f} | {r['rmse']:.2e} |"
        for r in rows
    ]
    env = environment(**versions)
    table = "\n".join(
        [
            f"8-Gaussian ring, VP, exact score, {args.n} samples, float64, median of {args.rounds} rounds; "
            f"reference DOP853 at 1e-10: {ref_nfe} NFE, {ref_time:.2f} s",
            "",
            header,
            *lines,
        ]
    )
    print(table)
    print(f"\nenvironment: {env}")
    res = {"problem": {"n": args.n, "sde": "VPSDE", "target": "eight_gaussians"}, "rows": rows, "environment": env}
    write_result(args.out, res, table)
    return res


if __name__ == "__main__":
    main()
