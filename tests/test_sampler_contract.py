"""The contract every sampler meets, on every SDE it accepts.

For each (sampler, SDE) pair: the SDE is accepted or refused with a ``ValueError`` as declared; the run keeps
the shape and dtype; its NFE equals ``sampler.expected_nfe(sde)`` where that is declared (and the fixed-step
samplers declare it as ``steps * nfe_per_step`` plus the denoising step); the same seed gives the same output
and another seed another one; the saved times decrease from ``T`` to ``eps``; a fixed-step sampler's grid is
strictly decreasing from ``T`` to ``eps``; and a run with 1 to 3 steps stays finite.
"""

import math

import numpy as np
import pytest
import torch
from conftest import ALL_SDES

import scoresde as sd
from scoresde.integrators.correctors import Corrector


class FixedLangevin(Corrector):
    """A corrector written outside the library: two NFE per move (the second evaluation is discarded)."""

    nfe_per_move = 2
    name = "fixed_langevin"

    def update(self, rsde, x, t, t_next, generator):
        vt = torch.full((x.shape[0],), t, dtype=x.dtype)
        for _ in range(self.steps):
            score = rsde.score_fn(x, vt)
            rsde.score_fn(x, vt)
            x = x + 1e-4 * score + math.sqrt(2e-4) * torch.randn(x.shape, generator=generator, dtype=x.dtype)
        return x


#: id -> factory of the sampler from a number of steps (ignored by the adaptive samplers)
SAMPLERS = {
    "em": lambda n: sd.EulerMaruyama(steps=n),
    "em_denoise": lambda n: sd.EulerMaruyama(steps=n, denoise=True),
    "pc": lambda n: sd.PredictorCorrector(steps=n),
    "pc_em_ald2": lambda n: sd.PredictorCorrector("euler_maruyama", "ald", steps=n, corrector_steps=2),
    "pc_ancestral": lambda n: sd.PredictorCorrector("ancestral", "none", steps=n),
    "pc_langevin_only": lambda n: sd.PredictorCorrector("none", "langevin", steps=n),
    "pc_user_corrector": lambda n: sd.PredictorCorrector("reverse_diffusion", FixedLangevin(steps=2), steps=n),
    "pf_rk45": lambda n: sd.ProbabilityFlowODE("RK45", rtol=1e-3, atol=1e-3),
    "pf_dopri5": lambda n: sd.ProbabilityFlowODE("dopri5", rtol=1e-3, atol=1e-3, denoise=True),
    "pf_euler": lambda n: sd.ProbabilityFlowODE("euler", steps=n),
    "pf_heun": lambda n: sd.ProbabilityFlowODE("heun", steps=n),
    "torchsde_euler": lambda n: sd.TorchSDE("euler", steps=n),
    "torchsde_milstein": lambda n: sd.TorchSDE("milstein", steps=n),
    "torchsde_srk": lambda n: sd.TorchSDE("srk", steps=n),
    "torchsde_midpoint": lambda n: sd.TorchSDE("midpoint", steps=n),
    "euler_karras": lambda n: sd.Euler(n, grid="karras"),
    "heun_logsnr": lambda n: sd.Heun(n, grid="logsnr"),
    "ddim": lambda n: sd.DDIM(n),
    "ddim_eta": lambda n: sd.DDIM(n, grid="karras", eta=0.5),
    "dpm2": lambda n: sd.DPMSolverPP(2, n),
    "dpm3_uniform": lambda n: sd.DPMSolverPP(3, n, grid="uniform"),
    "dpm2s": lambda n: sd.DPMSolverPPSinglestep(2, n),
    "dpm3s_karras": lambda n: sd.DPMSolverPP(3, n, grid="karras", multistep=False, denoise=True),
    "dpm_adaptive23": lambda n: sd.AdaptiveDPMSolver(3, rtol=1e-2, atol=1e-2),
    "dpm_adaptive12_rms": lambda n: sd.AdaptiveDPMSolver(2, rtol=1e-2, atol=1e-2, norm="rms", denoise=True),
    "unipc3": lambda n: sd.UniPC(3, n),
    "unipc2_bh1": lambda n: sd.UniPC(2, n, grid="karras", variant="bh1", denoise=True),
    "euler_t": lambda n: sd.Euler(n, form="t"),
    "heun_edm": lambda n: sd.Heun(n, form="edm"),
    "heun_karras_zero": lambda n: sd.Heun(n, grid="karras", to_zero=True),
    "ddim_zero": lambda n: sd.DDIM(n, to_zero=True),
    "dpm3_zero": lambda n: sd.DPMSolverPP(3, n, to_zero=True),
    "unipc3_zero": lambda n: sd.UniPC(3, n, grid="quadratic", to_zero=True),
    "dpm3s_zero": lambda n: sd.DPMSolverPP(3, n, multistep=False, to_zero=True),
    "dpm_adaptive23_zero": lambda n: sd.AdaptiveDPMSolver(3, rtol=1e-2, atol=1e-2, to_zero=True),
    "adaptive": lambda n: sd.AdaptiveSDE(rtol=5e-2, atol=5e-2),
    "flow_euler": lambda n: sd.FlowODE(n),
    "flow_heun": lambda n: sd.FlowODE(n, method="heun", grid="quadratic"),
    "ddpm_ancestral": lambda n: sd.DDPMAncestral(),
    "edm_sde": lambda n: sd.EDMStochastic(n, S_churn=40.0),
    "edm_sde_uniform_denoise": lambda n: sd.EDMStochastic(n, grid="uniform", S_noise=1.003, denoise=True),
    "dpm2m_sde": lambda n: sd.DPMSolverPPSDE(2, n),
    "dpm1_sde_karras": lambda n: sd.DPMSolverPPSDE(1, n, grid="karras", eta=0.5),
    "er_sde3": lambda n: sd.ERSDE(3, n),
    "er_sde2_quadratic": lambda n: sd.ERSDE(2, n, grid="quadratic", noise_scale=lambda s: s**2),
}


def DDPM_N(n):
    """The NFE of DDPMAncestral on the 50-step chain of conftest.ALL_SDES, whatever n."""
    return 50


#: expected NFE of a run with n steps (None: adaptive, known after the run only)
DECLARED = {
    "em": lambda n: n,
    "em_denoise": lambda n: n + 1,
    "pc": lambda n: 2 * n,
    "pc_em_ald2": lambda n: 3 * n,
    "pc_ancestral": lambda n: n,
    "pc_langevin_only": lambda n: n,
    "pc_user_corrector": lambda n: 5 * n,
    "pf_rk45": None,
    "pf_dopri5": None,
    "pf_euler": lambda n: n,
    "pf_heun": lambda n: 2 * n,
    "torchsde_euler": lambda n: n,
    "torchsde_milstein": lambda n: n,
    "torchsde_srk": lambda n: 2 * n,
    "torchsde_midpoint": lambda n: 2 * n,
    "euler_karras": lambda n: n,
    "heun_logsnr": lambda n: 2 * n,
    "ddim": lambda n: n,
    "ddim_eta": lambda n: n,
    "dpm2": lambda n: n,
    "dpm3_uniform": lambda n: n,
    "dpm2s": lambda n: 2 * n,
    "dpm3s_karras": lambda n: 3 * n + 1,
    "dpm_adaptive23": None,
    "dpm_adaptive12_rms": None,
    "unipc3": lambda n: n,
    "unipc2_bh1": lambda n: n + 1,
    "euler_t": lambda n: n,
    "heun_edm": lambda n: 2 * n,
    "heun_karras_zero": lambda n: 2 * n - 1,
    "ddim_zero": lambda n: n,
    "dpm3_zero": lambda n: n,
    "unipc3_zero": lambda n: n,
    "dpm3s_zero": lambda n: 3 * (n - 1) + 1,
    "dpm_adaptive23_zero": None,
    "adaptive": None,
    "flow_euler": lambda n: n,
    "flow_heun": lambda n: 2 * n,
    "ddpm_ancestral": DDPM_N,
    "edm_sde": lambda n: 2 * n,
    "edm_sde_uniform_denoise": lambda n: 2 * n + 1,
    "dpm2m_sde": lambda n: n,
    "dpm1_sde_karras": lambda n: n,
    "er_sde3": lambda n: n,
    "er_sde2_quadratic": lambda n: n,
}


def accepts(name, sde):
    """Which pairs the samplers accept (the others must raise ValueError)."""
    if isinstance(sde, sd.RectifiedFlow):  # s(T) = 0: only the velocity integrator starts there
        return name.startswith("flow")
    if name == "ddpm_ancestral":
        return isinstance(sde, sd.DDPMSDE)
    if name == "pc_ancestral":
        return not isinstance(sde, sd.SubVPSDE)
    return True


PAIRS = [(name, sde) for name in SAMPLERS for sde in ALL_SDES]
IDS = [f"{name}-{type(sde).__name__}" for name, sde in PAIRS]


def run(name, sde, steps, **kw):
    kw = {"shape": (16, 2), "seed": 3, "progress": False, **kw}
    return sd.sample(sde, sd.eight_gaussians().score(sde), SAMPLERS[name](steps), **kw)


@pytest.mark.parametrize("name,sde", PAIRS, ids=IDS)
def test_sampler_contract(name, sde):
    sampler = SAMPLERS[name](4)
    if not accepts(name, sde):
        with pytest.raises(ValueError, match=type(sde).__name__):
            run(name, sde, 4, shape=(4, 2))
        return
    declared = DECLARED[name]
    # denoise=True, or to_zero=True, ends the run at sigma = 0 (saved at time 0) with one more evaluation
    at_zero = sampler.denoise or getattr(sampler, "to_zero", False)
    assert sampler.expected_nfe(sde) == (None if declared is None else declared(4))
    if isinstance(sampler, sd.samplers.FixedStepSampler) and sampler.nfe_per_step is not None:
        grid = sampler.time_points(sde)
        assert sampler.expected_nfe(sde) == (len(grid) - 1) * sampler.nfe_per_step + at_zero
        assert grid.dtype == np.float64 and grid[0] == sde.T and grid[-1] == sampler.eps
        assert np.all(np.diff(grid) < 0)
    for dtype, np_dtype in ((torch.float32, np.float32), (torch.float64, np.float64)):
        ds = run(name, sde, 4, dtype=dtype, save_at=3)
        x = ds["x"]
        assert x.dims == ("time", "sample", "feature") and x.shape[1:] == (16, 2) and x.dtype == np_dtype
        assert np.isfinite(x.values).all()
        t = ds["time"].values
        assert t[0] == sde.T and np.all(np.diff(t) < 0)
        assert t[-1] == (0.0 if at_zero else pytest.approx(sampler.eps, rel=1e-12))
        nfe = ds.attrs["nfe"]
        assert nfe == ds["nfe"].values[-1] >= 1
        if declared is not None:
            assert nfe == declared(4)
        again = run(name, sde, 4, dtype=dtype, save_at=3)
        np.testing.assert_array_equal(again["x"].values, x.values)
    other = run(name, sde, 4, seed=4)
    assert not np.array_equal(other["x"].values[-1], x.values[-1])
    # from the same x_T, another seed changes the result exactly when the sampler draws noise
    x_T = sde.prior_sampling((16, 2), generator=torch.Generator().manual_seed(5))
    a, b = (run(name, sde, 4, x_T=x_T, seed=k)["x"].values[-1] for k in (1, 2))
    assert sampler.stochastic == (not np.array_equal(a, b))


#: the accepted pairs whose sampler takes a number of steps
STEPPED = [(p, i) for p, i in zip(PAIRS, IDS, strict=True) if accepts(*p) and DECLARED[p[0]] not in (None, DDPM_N)]


@pytest.mark.parametrize("steps", [1, 2, 3])
@pytest.mark.parametrize("name,sde", [p for p, _ in STEPPED], ids=[i for _, i in STEPPED])
def test_few_steps_stay_finite(name, sde, steps):
    ds = run(name, sde, steps, shape=(8, 2))
    assert np.isfinite(ds["x"].values).all()
    assert ds.attrs["nfe"] == DECLARED[name](steps)
