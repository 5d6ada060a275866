"""End-point RMSE of Euler and Heun on the probability-flow ODE, against a DOP853 solve (rtol = atol = 1e-10) of
the same ODE from the same x_T, on the 8-Gaussian ring and a 10-D random mixture (exact scores), VE and VP.

Run: PYTHONPATH=$PWD python benchmarks/edm_table.py [--n 2000] [--grid uniform|karras|...] [--ve-sigma 0.01 50]

Columns: Euler and Heun in each available ``form`` ("t": steps in t; "edm": steps in the noise level
sigma~ = sigma/s on the same grid), and a k-diffusion-style Heun that steps in sigma on the Karras (rho = 7)
sigmas from sigma(T) to sigma(eps) (written here independently of the library). Heun at NFE n takes n/2 steps.
"""

from __future__ import annotations

import argparse
import inspect
import math

import numpy as np
import torch

import scoresde as sd


def karras_heun(score, x, sigmas):
    """k-diffusion's sample_heun for VE (s = 1): d = (x - D)/sigma = -sigma * score."""
    for i in range(len(sigmas) - 1):
        s0, s1 = float(sigmas[i]), float(sigmas[i + 1])
        d = -s0 * score(x, s0)
        x2 = x + (s1 - s0) * d
        if s1 == 0:
            x = x2
            continue
        d2 = -s1 * score(x2, s1)
        x = x + (s1 - s0) * 0.5 * (d + d2)
    return x


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--grid", default="uniform")
    ap.add_argument("--ve-sigma", type=float, nargs=2, default=(0.01, 50.0), metavar=("MIN", "MAX"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    forms = ["t", "edm"] if "form" in inspect.signature(sd.Heun).parameters else ["t"]
    cases = [("ring", sd.eight_gaussians()), ("10-D", sd.random_mixture(dim=10))]
    sdes = [("VE", sd.VESDE(*args.ve_sigma)), ("VP", sd.VPSDE())]
    head = ["target", "SDE", "NFE"] + [f"{m}-{f}" for m in ("Euler", "Heun") for f in forms] + ["Heun-sigma(karras)"]
    print(" | ".join(head))
    for tname, mix in cases:
        for sname, sde in sdes:
            score = mix.score(sde)
            x_T = sde.prior_sampling((args.n, mix.dim), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
            ref = sd.sample(
                sde, score, sd.ProbabilityFlowODE("DOP853", rtol=1e-10, atol=1e-10), x_T=x_T, progress=False
            ).x.values[-1]

            def rmse(a, ref=ref):
                return math.sqrt(float(np.mean(np.sum((a - ref) ** 2, axis=1))))

            for nfe in (10, 20, 50):
                row = [tname, sname, str(nfe)]
                for cls, steps in ((sd.Euler, nfe), (sd.Heun, nfe // 2)):
                    for f in forms:
                        kw = {"form": f} if len(forms) > 1 else {}
                        s = cls(steps=steps, grid=args.grid, **kw)
                        ds = sd.sample(sde, score, s, x_T=x_T, progress=False)
                        assert ds.attrs["nfe"] == nfe, ds.attrs["nfe"]
                        row.append(f"{rmse(ds.x.values[-1]):.3g}")
                if sname == "VE":
                    sig = sd.time_grids.KarrasSigma(7.0).sigmas(sde, nfe // 2, 1e-3)
                    ts = sd.time_grids.invert_log_snr(sde, -np.log(sig), 1e-3)
                    ts[0], ts[-1] = sde.T, 1e-3
                    sig = sd.time_grids.noise_level(sde, ts)
                    tmap = dict(zip(sig.tolist(), ts.tolist(), strict=True))
                    with torch.no_grad():
                        out = karras_heun(lambda x, s_, f=score, m=tmap: f(x, m[s_]), x_T.clone(), sig)
                    row.append(f"{rmse(out.numpy()):.3g}")
                else:
                    row.append("-")
                print(" | ".join(row), flush=True)


if __name__ == "__main__":
    main()
