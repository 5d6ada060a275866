"""Likelihood benchmark: exact-trace log-likelihood through the probability-flow ODE, scipy vs torchdiffeq.

Problem: 1,000 points of the FFJORD 8-Gaussian ring (float64), VP SDE, its exact mixture score,
``eps = 1e-5``, exact divergence (one backward pass per dimension), tolerance ``rtol = atol = 1e-5``.
Solvers:

* ``scipy RK45`` / ``scipy DOP853``: :func:`scoresde.likelihood.log_likelihood` (one flat float64
  system through NumPy, BLAS threads limited);
* ``torchdiffeq dopri5``: ``torchdiffeq.odeint`` over ``[eps, T]`` of the augmented state
  ``(x, delta_logp)`` kept in torch, the same drift and exact divergence (skipped if torchdiffeq is
  not installed: ``pip install torchdiffeq``).

Reported per solver: wall time (median over interleaved rounds), NFE (score evaluations), and the
error of the log-likelihood against the exact ``log p_eps`` of the mixture: *end to end* (with the
SDE's N(0, I) prior) and *solver only* (the exact ``log p_T`` substituted at the latent ``x(T)``, which
removes the prior mismatch). This is a measurement, not a test: the exit code is 0.

Usage::

    python benchmarks/bench_likelihood.py                  # 1000 points, 3 rounds
    python benchmarks/bench_likelihood.py --quick          # 200 points, 1 round
    python benchmarks/bench_likelihood.py --threads 1 --out likelihood.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from typing import Any

import torch
from _common import write_result  # benchmarks/ is sys.path[0] when a script runs

import scoresde as sd
from scoresde.likelihood import log_likelihood

EPS = 1e-5


def _exact_divergence(drift: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    flat = drift.reshape(x.shape[0], -1)
    div = torch.zeros(x.shape[0], dtype=x.dtype)
    for i in range(flat.shape[1]):
        (grad,) = torch.autograd.grad(flat[:, i].sum(), x, retain_graph=i < flat.shape[1] - 1)
        div = div + grad.reshape(x.shape[0], -1)[:, i]
    return div


def torchdiffeq_loglik(sde, score_fn, x: torch.Tensor, rtol: float, atol: float) -> dict[str, Any]:
    """The augmented ODE [x, delta] forward from eps to T by torchdiffeq's dopri5, all in torch."""
    from torchdiffeq import odeint

    ode = sde.reverse(score_fn, probability_flow=True)
    stats = {"nfe": 0, "outside": 0}

    def func(t: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]):
        xt, _ = state
        tf = float(t)
        if not EPS <= tf <= sde.T:  # never observed forward from eps; guard as for torchdiffeq#78
            stats["outside"] += 1
            tf = min(max(tf, EPS), sde.T)
        stats["nfe"] += 1
        with torch.enable_grad():
            xg = xt.detach().requires_grad_(True)
            drift = ode.sde(xg, tf)[0]
            div = _exact_divergence(drift, xg)
        return drift.detach(), div.detach()

    t = torch.tensor([EPS, sde.T], dtype=x.dtype)
    state0 = (x, torch.zeros(x.shape[0], dtype=x.dtype))
    with torch.no_grad():
        xs, deltas = odeint(func, state0, t, method="dopri5", rtol=rtol, atol=atol)
    latent, delta = xs[-1], deltas[-1]
    return {"log_prob": sde.prior_logp(latent) + delta, "latent": latent, "delta_logp": delta, **stats}


def run(n: int, rounds: int, tol: float) -> dict[str, Any]:
    mix = sd.eight_gaussians()
    sde = sd.VPSDE()
    score = mix.score(sde)
    x = mix.sample(n, torch.Generator().manual_seed(0), dtype=torch.float64)
    exact = mix.marginal(sde, EPS).log_prob(x)
    p_T = mix.marginal(sde, sde.T)

    def scipy_solver(method):
        def go():
            r = log_likelihood(sde, score, x, eps=EPS, method=method, rtol=tol, atol=tol)
            return {"log_prob": r.log_prob, "latent": r.latent, "delta_logp": r.delta_logp, "nfe": r.nfe}

        return go

    solvers = {"scipy RK45": scipy_solver("RK45"), "scipy DOP853": scipy_solver("DOP853")}
    try:
        import torchdiffeq  # noqa: F401

        solvers["torchdiffeq dopri5"] = lambda: torchdiffeq_loglik(sde, score, x, tol, tol)
    except ImportError:
        print("torchdiffeq not installed: skipping it (pip install torchdiffeq)", flush=True)

    times: dict[str, list[float]] = {k: [] for k in solvers}
    last: dict[str, dict[str, Any]] = {}
    names = list(solvers)
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            t0 = time.perf_counter()
            last[name] = solvers[name]()
            times[name].append(time.perf_counter() - t0)

    rows = []
    for name in names:
        out = last[name]
        e2e = (out["log_prob"] - exact).abs()
        solver_only = (p_T.log_prob(out["latent"]) + out["delta_logp"] - exact).abs()
        rows.append(
            {
                "solver": name,
                "wall_s": statistics.median(times[name]),
                "wall_s_all": times[name],
                "nfe": int(out["nfe"]),
                "err_end_to_end_mean": float(e2e.mean()),
                "err_end_to_end_max": float(e2e.max()),
                "err_solver_only_mean": float(solver_only.mean()),
                "err_solver_only_max": float(solver_only.max()),
                "evals_outside_span": int(out.get("outside", 0)),
            }
        )
    versions = {"torch": torch.__version__, "python": platform.python_version()}
    try:
        import scipy

        versions["scipy"] = scipy.__version__
        import torchdiffeq

        versions["torchdiffeq"] = torchdiffeq.__version__
    except ImportError:
        pass
    return {
        "n": n,
        "rounds": rounds,
        "tol": tol,
        "eps": EPS,
        "torch_threads": torch.get_num_threads(),
        "versions": versions,
        "rows": rows,
    }


def markdown(res: dict[str, Any]) -> str:
    lines = [
        f"8-Gaussian ring, {res['n']} points, VP, exact score and trace, rtol = atol = {res['tol']:g}, "
        f"eps = {res['eps']:g}; {res['torch_threads']} torch thread(s); median of {res['rounds']} round(s)",
        "",
        "| solver | wall (s) | NFE | mean abs err (end to end) | max | mean abs err (solver only) | max |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        lines.append(
            f"| {r['solver']} | {r['wall_s']:.2f} | {r['nfe']} | {r['err_end_to_end_mean']:.1e} | "
            f"{r['err_end_to_end_max']:.1e} | {r['err_solver_only_mean']:.1e} | "
            f"{r['err_solver_only_max']:.1e} |"
        )
    lines += [
        "",
        "end to end: against exact log p_eps with the SDE's N(0, I) prior; solver only: the exact "
        "log p_T substituted at x(T). Versions: " + json.dumps(res["versions"]),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--n", type=int, default=None, help="number of points (default 1000; --quick: 200)")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 3; --quick: 1)")
    p.add_argument("--tol", type=float, default=1e-5, help="rtol = atol (default 1e-5)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--quick", action="store_true", help="smoke check: 200 points, 1 round")
    p.add_argument("--out", default=None, help="also write the results: .json as JSON, otherwise markdown")
    args = p.parse_args(argv)
    n = args.n or (200 if args.quick else 1000)
    rounds = args.rounds or (1 if args.quick else 3)
    if args.threads:
        torch.set_num_threads(args.threads)
    res = run(n, rounds, args.tol)
    table = markdown(res)
    print(table)
    write_result(args.out, res, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
