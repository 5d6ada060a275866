"""EDM form of Euler/Heun, runs that end at sigma = 0, EDMSDE, EDM preconditioning and the EDM objective.

Reference solutions: the closed-form probability-flow map of one Gaussian (``GaussianMixture.flow_map``) and
DOP853 at rtol = atol = 1e-10 from the same x_T for mixtures; the sigma-stepping Heun below is written here
independently of the library (k-diffusion's ``sample_heun``: noise levels of ``get_sigmas_karras``).
"""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.integrate import solve_ivp
from torch import nn

import scoresde as sd
from scoresde.nets import ScoreModel, build_network, model_config, model_from_config
from scoresde.training import TrainConfig, load_checkpoint, train

GAUSS = sd.GaussianMixture([1.0], [[1.0, -0.5]], [[[1.0, 0.3], [0.3, 0.5]]])


def rmse(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return math.sqrt(float(np.mean(np.sum((a - b) ** 2, axis=1))))


def end(sde, score, sampler, x_T):
    ds = sd.sample(sde, score, sampler, x_T=x_T, progress=False)
    return ds["x"].values[-1], ds


# -- a sigma-stepping Heun, k-diffusion style (VE: x is the scaled state, d = (x - D)/sigma) ------------------
def karras_sigmas(n, sigma_min, sigma_max, rho=7.0):
    """``n`` noise levels from sigma_max to sigma_min (k-diffusion's get_sigmas_karras without the 0)."""
    ramp = np.linspace(0, 1, n)
    a, b = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return (a + ramp * (b - a)) ** rho


def sigma_heun(denoiser, x, sigmas):
    """k-diffusion's sample_heun: Heun in sigma, Euler on a last step to sigma = 0."""
    for s0, s1 in zip(sigmas[:-1], sigmas[1:], strict=True):
        d = (x - denoiser(x, s0)) / s0
        x_next = x + d * (s1 - s0)
        if s1 > 0:
            d2 = (x_next - denoiser(x_next, s1)) / s1
            x_next = x + 0.5 * (d + d2) * (s1 - s0)
        x = x_next
    return x


def ve_denoiser(mix, sde):
    """D(x, sigma) = x + sigma^2 score(x, t(sigma)) on VESDE, t = T log(sigma/sigma_min)/log(sigma_max/sigma_min)."""
    score = mix.score(sde)

    def D(x, sigma):
        t = sde.T * math.log(sigma / sde.sigma_min) / math.log(sde.sigma_max / sde.sigma_min)
        t = min(max(t, 0.0), sde.T)
        return x + sigma**2 * score(x, torch.full((x.shape[0],), t, dtype=x.dtype))

    return D


VE = sd.VESDE()
TARGETS = {"ring": (sd.eight_gaussians(), 400), "10d": (sd.random_mixture(dim=10), 200)}
_REFS: dict = {}


def dop853(name):
    """The ring / 10-D mixture on VE: x_T and the DOP853 end point at eps = 1e-3 (computed once)."""
    if name not in _REFS:
        mix, n = TARGETS[name]
        x_T = VE.prior_sampling((n, mix.dim), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        ref, _ = end(VE, mix.score(VE), sd.ProbabilityFlowODE("DOP853", rtol=1e-10, atol=1e-10), x_T)
        _REFS[name] = (mix, x_T, ref)
    return _REFS[name]


@pytest.mark.parametrize("name", ["ring", "10d"])
@pytest.mark.parametrize("nfe", [20, 50])
def test_edm_heun_on_ve_is_as_accurate_as_sigma_stepping_heun(name, nfe):
    mix, x_T, ref = dop853(name)
    steps = nfe // 2
    ours, ds = end(VE, mix.score(VE), sd.Heun(steps, grid="karras"), x_T)
    assert ds.attrs["nfe"] == nfe
    sigmas = karras_sigmas(steps + 1, float(VE.std(torch.tensor(1e-3, dtype=torch.float64))), VE.sigma_max)
    with torch.no_grad():
        theirs = sigma_heun(ve_denoiser(mix, VE), x_T.clone(), sigmas).numpy()
    e_ours, e_theirs = rmse(ours, ref), rmse(theirs, ref)
    assert e_ours <= e_theirs * (1 + 1e-6) + 1e-12, (e_ours, e_theirs)
    # the step in t, on the same grid and NFE, is much less accurate on VE: why "auto" picks the EDM form there
    in_t, _ = end(VE, mix.score(VE), sd.Heun(steps, grid="karras", form="t"), x_T)
    assert rmse(in_t, ref) > 1.5 * e_ours
    # the default (grid "uniform", form "auto") is the EDM form on VE, at least as accurate as the sigma step
    default, _ = end(VE, mix.score(VE), sd.Heun(steps), x_T)
    edm, _ = end(VE, mix.score(VE), sd.Heun(steps, form="edm"), x_T)
    np.testing.assert_array_equal(default, edm)
    sig_uniform = sd.schedules.noise_level(VE, sd.Heun(steps).time_points(VE))
    with torch.no_grad():
        theirs_uniform = sigma_heun(ve_denoiser(mix, VE), x_T.clone(), sig_uniform).numpy()
    assert rmse(default, ref) <= rmse(theirs_uniform, ref) * (1 + 1e-6) + 1e-12


def test_edm_heun_to_zero_matches_k_diffusion_heun_on_edmsde():
    """Heun(N, karras, to_zero) is k-diffusion's Heun on N Karras sigmas and 0: 2N - 1 NFE, same end point."""
    sde, mix = sd.EDMSDE(80.0), sd.eight_gaussians()
    x_T = sde.prior_sampling((300, 2), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    score = mix.score(sde)
    for n in (6, 13, 25):
        ours, ds = end(sde, score, sd.Heun(n, grid="karras", eps=2e-3, to_zero=True), x_T)
        assert ds.attrs["nfe"] == 2 * n - 1 and ds["time"].values[-1] == 0.0
        sigmas = np.append(karras_sigmas(n, 2e-3, 80.0), 0.0)

        def D(x, s):
            return x + s**2 * score(x, torch.full((x.shape[0],), s, dtype=x.dtype))

        with torch.no_grad():
            theirs = sigma_heun(D, x_T.clone(), sigmas).numpy()
        np.testing.assert_allclose(ours, theirs, rtol=1e-9, atol=1e-9)


# -- convergence: EDM form vs form t on a Gaussian (closed-form flow) ------------------------------------------
def observed_orders(errs):
    return [math.log2(errs[i] / errs[i + 1]) for i in range(len(errs) - 1)]


@pytest.mark.parametrize("sde", [sd.VPSDE(), sd.VESDE(), sd.SubVPSDE()], ids=repr)
@pytest.mark.parametrize("cls,order", [(sd.Euler, 1), (sd.Heun, 2)])
def test_edm_and_t_forms_converge_to_the_exact_flow_at_their_order(sde, cls, order):
    x_T = sde.prior_sampling((100, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    exact = GAUSS.flow_map(sde, x_T, sde.T, 1e-3).numpy()
    score = GAUSS.score(sde)
    errs = {"edm": [], "t": []}
    gaps = []
    for n in (32, 64, 128):
        ends = {f: end(sde, score, cls(n, form=f), x_T)[0] for f in errs}
        for f, x in ends.items():
            errs[f].append(rmse(x, exact))
        gaps.append(rmse(ends["edm"], ends["t"]))
    for f in errs:
        p = observed_orders(errs[f])[-1]
        assert abs(p - order) < 0.25, (f, errs[f])
    # the two forms agree as the steps grow, at the method's order
    assert observed_orders(gaps)[-1] > order - 0.3, gaps


def test_forms_coincide_on_edmsde_and_options_are_checked():
    sde = sd.EDMSDE(10.0)
    x_T = sde.prior_sampling((50, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    a, _ = end(sde, GAUSS.score(sde), sd.Heun(10, form="edm"), x_T)
    b, _ = end(sde, GAUSS.score(sde), sd.Heun(10, form="t"), x_T)
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)  # s = 1, sigma = t: the same ODE, the same steps
    with pytest.raises(ValueError, match="form"):
        sd.Euler(10, form="sigma")
    with pytest.raises(ValueError, match="to_zero"):
        sd.Heun(10, form="t", to_zero=True)
    for cls in (sd.Euler, sd.Heun, sd.DDIM, sd.DPMSolverPP, sd.UniPC):
        with pytest.raises(ValueError, match="denoise"):
            cls(steps=10, to_zero=True, denoise=True)
    assert sd.Heun(10).params()["form"] == "auto" and sd.DDIM(5, to_zero=True).params()["to_zero"] is True
    # "auto" is the EDM form on VE and with to_zero, the step in t on VP
    assert sd.Heun(4).form_for(sd.VESDE()) == "edm" and sd.Heun(4).form_for(sd.VPSDE()) == "t"
    assert sd.Heun(4, to_zero=True).form_for(sd.VPSDE()) == "edm"


# -- ending at sigma = 0 ------------------------------------------------------------------------------------
ZERO_SOLVERS = {
    "euler": (lambda n, e: sd.Euler(n, grid="karras", eps=e, to_zero=True), lambda n: n, 1),
    "ddim": (lambda n, e: sd.DDIM(n, grid="karras", eps=e, to_zero=True), lambda n: n, 1),
    "heun": (lambda n, e: sd.Heun(n, grid="karras", eps=e, to_zero=True), lambda n: 2 * n - 1, 2),
    "dpm2": (lambda n, e: sd.DPMSolverPP(2, n, eps=e, to_zero=True), lambda n: n, 2),
    "dpm3": (lambda n, e: sd.DPMSolverPP(3, n, eps=e, to_zero=True), lambda n: n, 2),
    "unipc3": (lambda n, e: sd.UniPC(3, n, eps=e, to_zero=True), lambda n: n, 2),
}


#: SDE and eps: the last step, from sigma~(eps) ~ 2e-3 / 1e-3 to 0, errs by O(sigma~(eps)^2), below the solvers'
@pytest.mark.parametrize("sde,eps", [(sd.EDMSDE(80.0), 2e-3), (sd.VPSDE(), 1e-5)], ids=["EDMSDE", "VPSDE"])
@pytest.mark.parametrize("name", list(ZERO_SOLVERS))
def test_to_zero_costs_its_steps_and_converges_to_the_exact_data_point(sde, eps, name):
    make, nfe, order = ZERO_SOLVERS[name]
    x_T = sde.prior_sampling((100, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    exact = GAUSS.flow_map(sde, x_T, sde.T, 0.0).numpy()  # sigma(0) = 0 on both: the data point of x_T
    errs = []
    for n in (16, 32, 64):
        x, ds = end(sde, GAUSS.score(sde), make(n, eps), x_T)
        assert ds.attrs["nfe"] == nfe(n) == make(n, eps).expected_nfe(sde)
        assert ds["time"].values[-1] == 0.0 and ds["nfe"].values[-1] == nfe(n)
        assert np.isfinite(x).all()
        errs.append(rmse(x, exact))
    assert observed_orders(errs)[-1] > order - 0.35, errs


def test_to_zero_with_one_step_is_the_data_prediction_at_T():
    sde = sd.EDMSDE(5.0)
    x_T = sde.prior_sampling((20, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    score = GAUSS.score(sde)
    t = torch.full((20,), sde.T, dtype=torch.float64)
    tweedie = (x_T + sde.T**2 * score(x_T, t)).numpy()
    for sampler in (sd.Euler(1, to_zero=True), sd.Heun(1, to_zero=True), sd.DDIM(1, to_zero=True),
                    sd.DPMSolverPP(3, 1, to_zero=True), sd.UniPC(3, 1, to_zero=True)):  # fmt: skip
        x, ds = end(sde, score, sampler, x_T)
        assert ds.attrs["nfe"] == 1 and list(ds["time"].values) == [sde.T, 0.0]
        np.testing.assert_allclose(x, tweedie, rtol=1e-12, atol=1e-12)


def test_to_zero_is_the_denoised_run_of_one_step_less():
    """On the same grid, ``to_zero`` with N steps = ``denoise`` with N - 1 steps (N NFE both) for DDIM and DPM++."""
    sde = sd.VESDE()
    x_T = sde.prior_sampling((50, 2), generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    score = sd.eight_gaussians().score(sde)
    a, da = end(sde, score, sd.DDIM(10, grid="karras", to_zero=True), x_T)
    b, db = end(sde, score, sd.DDIM(9, grid="karras", denoise=True), x_T)
    np.testing.assert_array_equal(a, b)
    assert da.attrs["nfe"] == db.attrs["nfe"] == 10


def test_edm_form_on_a_scipy_solve_to_sigma_zero_of_a_mixture():
    """The 8-Gaussian ring on EDMSDE: its score is finite at t = 0, so scipy solves dx/dt = -t s(x, t) to 0."""
    sde, mix = sd.EDMSDE(80.0), sd.eight_gaussians()
    x_T = sde.prior_sampling((200, 2), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    score = mix.score(sde)

    def f(t, y):
        x = torch.from_numpy(y).reshape(-1, 2)
        return (-t * score(x, torch.full((x.shape[0],), t, dtype=torch.float64))).reshape(-1).numpy()

    sol = solve_ivp(f, (80.0, 0.0), x_T.reshape(-1).numpy(), method="DOP853", rtol=1e-10, atol=1e-10)
    ref = sol.y[:, -1].reshape(-1, 2)
    errs = [rmse(end(sde, score, sd.UniPC(3, n, grid="karras", eps=2e-3, to_zero=True), x_T)[0], ref) for n in (10, 40)]
    assert errs[1] < 0.05 * errs[0] and errs[1] < 5e-3, errs


# -- EDMSDE --------------------------------------------------------------------------------------------------
@settings(max_examples=30, deadline=None)
@given(
    sigma_max=st.floats(1.0, 100.0),
    sigma_min=st.one_of(st.just(0.0), st.floats(1e-3, 0.5)),
    u=st.floats(0.0, 1.0),
)
def test_edmsde_kernel_is_closed_form(sigma_max, sigma_min, u):
    sde = sd.EDMSDE(sigma_max, sigma_min)
    t = torch.tensor([u * sigma_max], dtype=torch.float64, requires_grad=True)
    assert sde.T == sigma_max and sde.prior_std == pytest.approx(math.hypot(sigma_max, sigma_min), rel=1e-15)
    f, g, s, sigma = sde.coefficients(t.detach())
    assert float(f) == 0.0 and float(s) == 1.0
    tv = float(t.detach())
    assert float(sigma) == pytest.approx(math.hypot(tv, sigma_min), rel=1e-14, abs=0)
    assert float(g) == pytest.approx(math.sqrt(2 * tv), rel=1e-14, abs=0)
    # d sigma^2 / dt = g^2 and sigma_dot from autograd
    (d_var,) = torch.autograd.grad(sde.std(t) ** 2, t)
    t = t.detach()
    assert float(d_var) == pytest.approx(float(g) ** 2, rel=1e-12, abs=1e-14)
    if float(sigma) > 0:
        tt = t.clone().requires_grad_(True)
        (d_std,) = torch.autograd.grad(sde.std(tt), tt)
        assert float(sde.std_dot(t)) == pytest.approx(float(d_std), rel=1e-12, abs=1e-14)
    x0 = torch.randn(3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    mean, std = sde.marginal_prob(x0, t)
    assert torch.equal(mean, x0) and torch.allclose(std, sigma.expand(3))


def test_edmsde_scores_samples_and_records():
    sde = sd.EDMSDE()
    assert sde.params() == {"sigma_max": 80.0, "sigma_min": 0.0}
    assert sd.sde_from_config(sd.sde_config(sde)).params() == sde.params() and sd.sde_config(sde)["class"] == "EDMSDE"
    assert type(sd.sde_from_config("edm")) is sd.EDMSDE
    # the Gaussian's score at t: -(C + t^2 I)^{-1} (x - m), at t = 0 the data's own score
    x = torch.randn(7, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    m, C = GAUSS.means[0], GAUSS.covariances[0]
    for t in (0.0, 0.3, 5.0, 80.0):
        want = -torch.linalg.solve(C + t**2 * torch.eye(2, dtype=torch.float64), (x - m).T).T
        torch.testing.assert_close(GAUSS.score(sde)(x, t), want, rtol=1e-12, atol=1e-12)
    # discretize: exact variance increment sigma(t)^2 - sigma(t - dt)^2
    _, G = sde.discretize(x, 3.0, 0.5)
    torch.testing.assert_close(G**2, torch.full((7,), 9.0 - 6.25, dtype=torch.float64))
    for bad in (dict(sigma_max=0.0), dict(sigma_min=-1.0), dict(sigma_max=1.0, sigma_min=1.0)):
        with pytest.raises(ValueError, match="sigma_m"):
            sd.EDMSDE(**bad)
    assert sd.EDMSDE(sigma_min=0.002).std(torch.tensor(0.0)).item() == pytest.approx(0.002)


# -- EDM preconditioning --------------------------------------------------------------------------------------
class ExactF(nn.Module):
    """The F that makes EDM's D = c_skip x~ + c_out F(c_in x~, c_noise) the exact denoiser of N(m, C)."""

    def __init__(self, m, C, sigma_data):
        super().__init__()
        self.m, self.C, self.sd = m, C, sigma_data

    def forward(self, y, c):
        sig = torch.exp(4 * c)[:, None]  # c_noise = log(sigma~)/4
        norm = torch.sqrt(sig**2 + self.sd**2)
        xs = y * norm
        m, C = self.m.to(y.dtype), self.C.to(y.dtype)
        eye = torch.eye(C.shape[0], dtype=y.dtype)
        D = torch.stack(
            [m + C @ torch.linalg.solve(C + float(s) ** 2 * eye, xi - m) for s, xi in zip(sig, xs, strict=True)]
        )
        c_skip, c_out = self.sd**2 / norm**2, sig * self.sd / norm
        return (D - c_skip * xs) / c_out


@pytest.mark.parametrize("sde", [sd.VPSDE(), sd.VESDE(), sd.EDMSDE(), sd.SubVPSDE()], ids=repr)
@pytest.mark.parametrize("sigma_data", [0.5, 1.3])
def test_edm_preconditioning_with_the_exact_f_gives_the_exact_score(sde, sigma_data):
    m, C = GAUSS.means[0], GAUSS.covariances[0]
    model = ScoreModel(ExactF(m, C, sigma_data), sde, parameterization="edm", sigma_data=sigma_data)
    assert model.config == dict(
        parameterization="edm", scale_by_sigma=False, time_input="log_sigma", sigma_data=sigma_data
    )
    x = torch.randn(6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    exact = GAUSS.score(sde)
    for u in (0.01, 0.2, 0.7, 1.0):
        t = torch.full((6,), u * sde.T, dtype=torch.float64)
        _, _, s, sigma = sde.coefficients(t, like=x)
        s, sigma = s[:, None], sigma[:, None]
        want = exact(x, t)
        torch.testing.assert_close(model(x, t), want, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(model.epsilon(x, t), -sigma * want, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(model.data_prediction(x, t), (x + sigma**2 * want) / s, rtol=1e-9, atol=1e-9)


def test_edm_model_options_and_config_round_trip():
    sde = sd.EDMSDE(10.0)
    net = build_network("mlp", dim=2, hidden=16, layers=2, embed_dim=8)
    model = ScoreModel(net, sde, parameterization="edm", sigma_data=0.7)
    rebuilt = model_from_config(model_config(model), sde)
    rebuilt.load_state_dict(model.state_dict())
    x, t = torch.randn(4, 2), torch.full((4,), 2.0)
    with torch.no_grad():
        assert torch.equal(rebuilt(x, t), model(x, t)) and rebuilt.sigma_data == 0.7
        # for every parameterisation, the data prediction is Tweedie's formula of the score
        eps_model = ScoreModel(net, sde)
        torch.testing.assert_close(eps_model.data_prediction(x, t), x + 4.0 * eps_model(x, t))
    with pytest.raises(ValueError, match="sigma_data"):
        ScoreModel(net, sde, parameterization="noise", sigma_data=0.5)
    with pytest.raises(ValueError, match="sigma_data"):
        ScoreModel(net, sde, parameterization="edm", sigma_data=0.0)
    assert ScoreModel(net, sde).time_input == "t"


# -- the EDM objective ----------------------------------------------------------------------------------------
def test_edm_objective_is_the_documented_formula():
    sde = sd.VPSDE()
    torch.manual_seed(0)
    net = build_network("mlp", dim=2, hidden=16, layers=2, embed_dim=8)
    model = ScoreModel(net, sde, parameterization="edm")
    obj = sd.EDMObjective()
    x0 = GAUSS.sample(64, torch.Generator().manual_seed(0)).float()
    loss = obj.loss(sde, model, x0, torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    n = torch.randn(64, generator=g)
    sig = torch.exp(-1.2 + 1.2 * n).clamp(*sorted(float(v) for v in sd.schedules.noise_level(sde, [1.0, 1e-5])))
    z = torch.randn(x0.shape, generator=g)
    t = torch.from_numpy(sd.schedules.invert_log_snr(sde, -np.log(sig.double().numpy()), 1e-5)).float()
    s, sigma = sde.mean_coef(t)[:, None], sde.std(t)[:, None]
    D = model.data_prediction(s * x0 + sigma * z, t)
    sig_t = (sigma / s)[:, 0]
    want = ((sig_t**2 + 0.25) / (0.25 * sig_t**2) * ((D - x0) ** 2).mean(1)).mean()
    torch.testing.assert_close(loss, want, rtol=1e-6, atol=0)
    with pytest.raises(ValueError, match="sigma_data"):
        sd.EDMObjective(sigma_data=0.3).check(sde, model)
    with pytest.raises(ValueError, match="p_mean"):
        sd.EDMObjective(p_mean=float("nan"))
    assert sd.losses.objective_from_config(sd.losses.objective_config(sd.EDMObjective(p_std=2.0))) == sd.EDMObjective(
        p_std=2.0
    )


def test_edm_objective_trains_and_checkpoints(tmp_path):
    from scoresde.datasets import load_dataset

    sde = sd.EDMSDE(20.0)
    torch.manual_seed(0)
    model = ScoreModel(build_network("mlp", dim=2, hidden=64, layers=2, embed_dim=16), sde, parameterization="edm")
    data = load_dataset("gaussian", n=4000, scaling="none")
    cfg = TrainConfig(steps=300, batch_size=256, lr=3e-3, warmup=20, objective=sd.EDMObjective(), checkpoint_every=300)
    obj, x0 = sd.EDMObjective(), GAUSS.sample(4000, torch.Generator().manual_seed(9)).float()

    def expected_loss(m):  # one large batch, the same draws for every model
        with torch.no_grad():
            return float(obj.loss(sde, m, x0, torch.Generator().manual_seed(11)))

    exact = ScoreModel(ExactF(GAUSS.means[0], GAUSS.covariances[0], 0.5), sde, parameterization="edm")
    floor, before = expected_loss(exact), expected_loss(model)
    trainer = train(sde, model, data, cfg, out_dir=tmp_path, progress=False)
    after = expected_loss(trainer.model)
    # the gap to the exact denoiser's loss (the minimum) shrinks by more than half
    assert floor < after and after - floor < 0.4 * (before - floor), (floor, before, after)
    sde2, loaded, _ = load_checkpoint(tmp_path / "last.pt")
    assert type(sde2) is sd.EDMSDE and loaded.parameterization == "edm" and loaded.sigma_data == 0.5
    x, t = torch.randn(5, 2), torch.full((5,), 1.5)
    with torch.no_grad():
        assert torch.equal(loaded(x, t), trainer.ema(x, t))
    ds = sd.sample(sde2, loaded, sd.Heun(8, grid="karras", to_zero=True), shape=(64, 2), progress=False)
    assert ds.attrs["nfe"] == 15 and np.isfinite(ds["x"].values).all()


def test_cli_reaches_form_and_to_zero(tmp_path):
    from scoresde import cli
    from scoresde.integrators.fixed_grid import FORMS

    assert cli.FORM_NAMES == FORMS and cli.SDE_CHOICES["edm"][0] == "EDMSDE"
    parser = cli.build_parser()
    args = parser.parse_args(
        ["sample", "--sde", "edm", "--sampler", "heun", "--steps", "5", "--to-zero", "--form", "edm"]
    )
    sampler = cli.build_sampler(args)
    assert isinstance(sampler, sd.Heun) and sampler.to_zero and sampler.form == "edm"
    assert sampler.expected_nfe(sd.EDMSDE()) == 9
