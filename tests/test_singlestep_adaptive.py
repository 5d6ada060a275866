"""Single-step DPM-Solver++ (2S, 3S) and the adaptive DPM-Solver-12/23: orders and error control measured
against the closed-form probability-flow map of a Gaussian target, exactness for a point mass, exact NFE,
times inside [eps, T], argument checks, and the CLI."""

import math
import warnings

import numpy as np
import pytest
import torch
from conftest import SDES

import scoresde as sd
from scoresde import cli
from scoresde.integrators.singlestep import STAGE_RATIOS, stage_times
from scoresde.schedules import log_snr

EPS = 1e-3
GAUSS = sd.GaussianMixture([1.0], [[1.0, -0.5]], [[[0.8, 0.3], [0.3, 0.5]]])


class Recorder:
    """A score function that records the times it is called at and counts its calls."""

    def __init__(self, score):
        self.score, self.times, self.calls = score, [], 0

    def __call__(self, x, t):
        self.calls += 1
        self.times.append(float(t[0]))
        return self.score(x, t)


def x_T_of(sde, n=50, seed=0):
    return sde.prior_sampling((n, 2), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def gauss_error(sde, sampler, n=50):
    """Largest end-point error over ``n`` samples against the exact flow map, and the run's NFE."""
    x_T = x_T_of(sde, n)
    ds = sd.sample(sde, GAUSS.score(sde), sampler, x_T=x_T, progress=False)
    end = torch.from_numpy(ds["x"].values[-1])
    return float((end - GAUSS.flow_map(sde, x_T, sde.T, sampler.eps)).norm(dim=1).max()), ds.attrs["nfe"]


def fitted_order(sde, make, steps):
    errs = [gauss_error(sde, make(n))[0] for n in steps]
    return -np.polyfit(np.log(steps), np.log(errs), 1)[0], errs


# ---------------------------------------------------------------------------------------
# DPM-Solver++ single-step
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("sde", SDES, ids=repr)
def test_singlestep_orders_on_a_gaussian(sde):
    """2S is order 2, 3S order 3 (fitted slopes 1.81-1.90 over 10-40 steps, 2.77-2.87 over 50-100 steps)."""
    slope2, errs2 = fitted_order(sde, lambda n: sd.DPMSolverPPSinglestep(2, n), (10, 20, 40))
    assert abs(slope2 - 2.0) < 0.25, (slope2, errs2)
    slope3, errs3 = fitted_order(sde, lambda n: sd.DPMSolverPPSinglestep(3, n), (50, 100))
    assert abs(slope3 - 3.0) < 0.3, (slope3, errs3)
    # at equal NFE (150) the third-order method is far more accurate than the second-order one
    assert errs3[0] < 0.1 * gauss_error(sde, sd.DPMSolverPPSinglestep(2, 75))[0]


@pytest.mark.parametrize("sde", SDES, ids=repr)
def test_singlestep_is_exact_for_a_point_mass(sde):
    """For data = delta_m the data prediction is m at every point, so every order is exact on any grid."""
    m = torch.tensor([1.5, -0.5], dtype=torch.float64)

    def score(x, t):
        _, _, s, sigma = sde.coefficients(t, like=x)
        return -(x - s[:, None] * m) / sigma[:, None] ** 2

    x_T = x_T_of(sde, 20, seed=1)
    _, _, sT, sigT = sde.coefficients(sde.T)
    _, _, se, sige = sde.coefficients(EPS)
    exact = se * m + (sige / sigT) * (x_T - sT * m)
    for sampler in (sd.DPMSolverPPSinglestep(2, 3), sd.DPMSolverPPSinglestep(3, 4, grid="karras")):
        end = torch.from_numpy(sd.sample(sde, score, sampler, x_T=x_T, progress=False)["x"].values[-1])
        torch.testing.assert_close(end, exact, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("grid", sorted(sd.GRIDS))
@pytest.mark.parametrize("order", [2, 3])
def test_singlestep_stages_lie_inside_each_step(order, grid):
    """The score is evaluated order times per step: at t_i, then at the points with lambda = lambda_i + r_j h."""
    sde = sd.VPSDE()
    sampler = sd.DPMSolverPPSinglestep(order, 5, grid=grid)
    rec = Recorder(GAUSS.score(sde))
    ds = sd.sample(sde, rec, sampler, shape=(4, 2), progress=False, dtype=torch.float64)
    assert ds.attrs["nfe"] == rec.calls == order * 5 == sampler.expected_nfe(sde)
    g = sampler.time_points(sde)
    times = np.array(rec.times).reshape(5, order)
    np.testing.assert_array_equal(times[:, 0], g[:-1])
    lam, lam_stage = log_snr(sde, g), log_snr(sde, times[:, 1:])
    want = lam[:-1, None] + np.asarray(STAGE_RATIOS[order])[None, :] * np.diff(lam)[:, None]
    np.testing.assert_allclose(lam_stage, want, rtol=1e-9, atol=1e-9)
    assert np.all((times[:, 1:] < g[:-1, None]) & (times[:, 1:] > g[1:, None]))
    # the per-step fallback (a step not prepared) finds the same times
    np.testing.assert_allclose(stage_times(sde, g[0], g[1], STAGE_RATIOS[order], EPS), times[0, 1:], rtol=1e-12)


def test_multistep_false_builds_the_singlestep_solver():
    s = sd.DPMSolverPP(3, 12, "karras", False, eps=1e-2, denoise=True)
    assert type(s) is sd.DPMSolverPPSinglestep
    assert (s.order, s.steps, repr(s.time_grid), s.eps, s.denoise) == (3, 12, "KarrasSigma(rho=7.0)", 1e-2, True)
    assert s.params()["multistep"] is False and s.nfe_per_step == 3
    assert type(sd.DPMSolverPP(2, multistep=True)) is sd.DPMSolverPP
    with pytest.raises(ValueError, match="lower_order_final applies to the multistep solver only"):
        sd.DPMSolverPP(2, multistep=False, lower_order_final=True)
    with pytest.raises(ValueError, match="order must be 1, 2 or 3"):
        sd.DPMSolverPP(4, multistep=False)
    with pytest.raises(TypeError):
        sd.DPMSolverPP(2, multistep=False, variant="bh2")


def test_first_order_singlestep_is_ddim():
    sde = sd.VPSDE()
    x_T = x_T_of(sde, 20)
    a, b = (
        sd.sample(sde, GAUSS.score(sde), s, x_T=x_T, progress=False)["x"].values[-1]
        for s in (sd.DPMSolverPPSinglestep(1, 7), sd.DDIM(7, grid="logsnr"))
    )
    np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-13)


def test_singlestep_refuses_nonlinear_and_singular_sdes():
    with pytest.raises(ValueError, match="RectifiedFlow"):
        sd.sample(sd.RectifiedFlow(), lambda x, t: x, sd.DPMSolverPPSinglestep(2, 3), shape=(2, 2), progress=False)


# ---------------------------------------------------------------------------------------
# one name for the lowering of the final orders
# ---------------------------------------------------------------------------------------
def test_lowers_final_order_is_a_deprecated_alias():
    s = sd.DPMSolverPP(3, 20, grid="uniform")
    with pytest.warns(DeprecationWarning, match="uses_lower_order_final"):
        old = s.lowers_final_order(sd.VPSDE())
    assert old is s.uses_lower_order_final(sd.VPSDE()) is True
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert sd.UniPC(3, 20, lower_order_final=False).uses_lower_order_final() is False


# ---------------------------------------------------------------------------------------
# adaptive DPM-Solver
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("sde", SDES, ids=repr)
@pytest.mark.parametrize("order", [2, 3])
def test_adaptive_error_tracks_the_tolerance(sde, order):
    """The error decreases with the tolerance and stays near it (measured error/tol: 1.7-4.3 for
    DPM-Solver-12, 0.10-0.74 for DPM-Solver-23, tol = 1e-2 .. 1e-5); the NFE grows."""
    tols = (1e-2, 1e-3, 1e-4) if order == 3 else (3e-2, 3e-3, 3e-4)  # (fewer NFE for the second-order pair)
    runs = [gauss_error(sde, sd.AdaptiveDPMSolver(order, rtol=tol, atol=tol)) for tol in tols]
    errs, nfes = [e for e, _ in runs], [n for _, n in runs]
    assert errs[0] > errs[1] > errs[2], errs
    assert nfes[0] < nfes[1] < nfes[2], nfes
    for tol, err in zip(tols, errs, strict=True):
        assert tol / 20 < err < 6 * tol, (tol, err)


@pytest.mark.parametrize("order", [2, 3])
def test_adaptive_counts_nfe_exactly_and_stays_in_eps_T(order):
    sde = sd.VESDE()
    rec = Recorder(sd.eight_gaussians().score(sde))
    sampler = sd.AdaptiveDPMSolver(order, rtol=1e-3, atol=1e-3, h_init=2.0)  # a first step too long: rejections
    ds = sd.sample(sde, rec, sampler, shape=(64, 2), seed=1, progress=False, save_at=4, dtype=torch.float64)
    acc, rej = ds.attrs["stat_accepted"], ds.attrs["stat_rejected"]
    assert rej >= 1
    assert ds.attrs["nfe"] == rec.calls == order * acc + (order - 1) * rej
    assert ds["nfe"].values[-1] == rec.calls
    assert max(rec.times) == sde.T and min(rec.times) >= EPS  # (no evaluation at eps: the last state is the end)
    t = ds["time"].values
    assert t[0] == sde.T and t[-1] == EPS and np.all(np.diff(t) < 0) and len(t) == 4
    # the saved intermediate states are the first accepted states at or below the requested times
    assert np.all(t[1:-1] <= np.linspace(sde.T, EPS, 4)[1:-1])


def test_adaptive_norms_and_error():
    """``max`` controls the worst sample, ``rms`` the batch: ``max`` needs at least as many evaluations."""
    sde = sd.VPSDE()
    e_max, n_max = gauss_error(sde, sd.AdaptiveDPMSolver(3, rtol=1e-3, atol=1e-3, norm="max"))
    e_rms, n_rms = gauss_error(sde, sd.AdaptiveDPMSolver(3, rtol=1e-3, atol=1e-3, norm="rms"))
    assert n_max >= n_rms and e_max <= e_rms
    s = sd.AdaptiveDPMSolver(3, rtol=0.1, atol=0.5)
    x = torch.tensor([[1.0, 2.0], [0.0, 0.0]], dtype=torch.float64)
    low = torch.zeros_like(x)
    high = torch.tensor([[0.1, 0.4], [0.5, 0.0]], dtype=torch.float64)
    # delta = max(0.5, 0.1 max(|low|, |x|)) = 0.5 everywhere: per-sample RMS of high / 0.5
    rows = [math.sqrt((0.2**2 + 0.8**2) / 2), math.sqrt(1.0 / 2)]
    assert s.error(x, low, high) == pytest.approx(max(rows))
    s.norm = "rms"
    assert s.error(x, low, high) == pytest.approx(math.sqrt((0.2**2 + 0.8**2 + 1.0) / 4))
    high[0, 0] = math.nan
    assert s.error(x, low, high) == math.inf


def test_adaptive_max_nfe_and_arguments():
    sde = sd.VPSDE()
    with pytest.raises(RuntimeError, match="max_nfe=10"):
        sd.sample(sde, GAUSS.score(sde), sd.AdaptiveDPMSolver(3, rtol=1e-6, atol=1e-6, max_nfe=10), shape=(4, 2))
    for kw, match in (
        ({"order": 1}, "order must be 2"),
        ({"norm": "l1"}, "norm must be one of"),
        ({"safety": 1.5}, "safety"),
        ({"min_factor": 2.0}, "min_factor < 1 < max_factor"),
        ({"rtol": 0.0}, "rtol"),
        ({"atol": 1e-300}, "atol"),
    ):
        with pytest.raises(ValueError, match=match):
            sd.AdaptiveDPMSolver(**kw)
    with pytest.raises(ValueError, match="rtol"):  # float32 cannot resolve 1e-9
        sd.sample(sde, GAUSS.score(sde), sd.AdaptiveDPMSolver(rtol=1e-9, atol=1e-3), shape=(4, 2), progress=False)


def test_adaptive_nan_score_is_reported_with_time():
    sde = sd.VPSDE()

    def bad(x, t):
        return torch.full_like(x, math.nan) if float(t[0]) < 0.5 else -x

    with pytest.raises(sd.DivergenceError, match="data prediction"):
        sd.sample(sde, bad, sd.AdaptiveDPMSolver(3, rtol=1e-2, atol=1e-2), shape=(4, 2), progress=False)


# ---------------------------------------------------------------------------------------
# the CLI
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("sampler", "extra", "cls", "nfe"),
    [
        ("dpmsolver++-singlestep", ["--order", "3", "--steps", "4", "--grid", "karras"], "DPMSolverPPSinglestep", 12),
        ("dpm-adaptive", ["--order", "2", "--rtol", "1e-2", "--atol", "1e-2"], "AdaptiveDPMSolver", None),
    ],
)
def test_cli_runs_the_new_samplers(tmp_path, monkeypatch, sampler, extra, cls, nfe):
    import xarray as xr

    monkeypatch.setenv("SCORESDE_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "out"
    args = ["sample", "--out", str(out), "--sampler", sampler, "--n-samples", "50", "--quiet", *extra]
    assert cli.main(args) == 0
    with xr.open_dataset(out / "samples.nc") as ds:
        assert ds.attrs["sampler"] == cls
        assert ds.attrs["nfe"] == nfe if nfe is not None else ds.attrs["nfe"] > 0
        assert np.isfinite(ds["x"].values).all()


# -- ending at sigma = 0 ------------------------------------------------------------------------------------
#: SDEs with sigma(0) = 0 and an eps whose last step to sigma = 0, O(sigma~(eps)^2), is below the solvers' errors
ZERO_SDES = [(sd.EDMSDE(80.0), 2e-3), (sd.VPSDE(), 1e-5)]


def zero_error(sde, sampler, x_T):
    """RMSE of the run's end point against the exact data point of ``x_T`` (sigma(0) = 0), and the run."""
    ds = sd.sample(sde, GAUSS.score(sde), sampler, x_T=x_T, progress=False)
    exact = GAUSS.flow_map(sde, x_T, sde.T, 0.0).numpy()
    return math.sqrt(float(np.mean(np.sum((ds["x"].values[-1] - exact) ** 2, axis=1)))), ds


@pytest.mark.parametrize("sde,eps", ZERO_SDES, ids=["EDMSDE", "VPSDE"])
@pytest.mark.parametrize("order", [2, 3])
def test_singlestep_to_zero_costs_its_steps_and_converges_to_the_exact_data_point(sde, eps, order):
    """``steps - 1`` single steps and the data prediction: NFE = order (N - 1) + 1, error falls at the order."""
    x_T = x_T_of(sde, 100)
    errs = []
    for n in (16, 32, 64):
        sampler = sd.DPMSolverPP(order, n, multistep=False, eps=eps, to_zero=True)
        assert isinstance(sampler, sd.DPMSolverPPSinglestep) and sampler.to_zero
        err, ds = zero_error(sde, sampler, x_T)
        assert ds.attrs["nfe"] == order * (n - 1) + 1 == sampler.expected_nfe(sde) == ds["nfe"].values[-1]
        assert ds["time"].values[-1] == 0.0 and ds["time"].values[-2] == eps and ds.attrs["sampler_to_zero"]
        errs.append(err)
    assert math.log2(errs[-2] / errs[-1]) > order - 0.35, errs


def test_singlestep_to_zero_is_the_denoised_run_of_one_step_less():
    """On the same grid: N steps ending at sigma = 0 = N - 1 steps and ``denoise`` (bit for bit, same NFE)."""
    sde = sd.VESDE()
    x_T = x_T_of(sde, 50, seed=2)
    score = sd.eight_gaussians().score(sde)
    for order in (2, 3):
        a = sd.sample(sde, score, sd.DPMSolverPPSinglestep(order, 6, grid="karras", to_zero=True), x_T=x_T,
                      progress=False)  # fmt: skip
        b = sd.sample(sde, score, sd.DPMSolverPPSinglestep(order, 5, grid="karras", denoise=True), x_T=x_T,
                      progress=False)  # fmt: skip
        np.testing.assert_array_equal(a["x"].values[-1], b["x"].values[-1])
        assert a.attrs["nfe"] == b.attrs["nfe"] == order * 5 + 1


def test_singlestep_to_zero_with_one_step_is_the_data_prediction_at_T():
    sde = sd.EDMSDE(5.0)
    x_T = x_T_of(sde, 20)
    t = torch.full((20,), sde.T, dtype=torch.float64)
    tweedie = (x_T + sde.T**2 * GAUSS.score(sde)(x_T, t)).numpy()
    for order in (2, 3):
        ds = sd.sample(sde, GAUSS.score(sde), sd.DPMSolverPPSinglestep(order, 1, to_zero=True), x_T=x_T, progress=False)
        assert ds.attrs["nfe"] == 1 and list(ds["time"].values) == [sde.T, 0.0]
        np.testing.assert_allclose(ds["x"].values[-1], tweedie, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("sde,eps", ZERO_SDES, ids=["EDMSDE", "VPSDE"])
def test_adaptive_to_zero_ends_at_the_exact_data_point_as_the_tolerance_falls(sde, eps):
    """The controlled run to eps, then the data prediction there: one evaluation more, error tracks the tolerance."""
    x_T = x_T_of(sde, 100)
    errs = []
    for tol in (1e-3, 1e-5):
        sampler = sd.AdaptiveDPMSolver(3, rtol=tol, atol=tol, eps=eps, to_zero=True)
        err, ds = zero_error(sde, sampler, x_T)
        plain = sd.sample(sde, GAUSS.score(sde), sd.AdaptiveDPMSolver(3, rtol=tol, atol=tol, eps=eps), x_T=x_T,
                          progress=False)  # fmt: skip
        acc, rej = ds.attrs["stat_accepted"], ds.attrs["stat_rejected"]
        assert ds.attrs["nfe"] == 3 * acc + 2 * rej + 1 == plain.attrs["nfe"] + 1 == ds["nfe"].values[-1]
        assert list(ds["time"].values[-2:]) == [eps, 0.0]
        np.testing.assert_array_equal(ds["x"].values[-2], plain["x"].values[-1])
        errs.append(err)
    assert errs[1] < 0.2 * errs[0] and errs[1] < 2e-5, errs


def test_to_zero_excludes_denoise_and_is_recorded():
    for make in (lambda **kw: sd.DPMSolverPPSinglestep(2, 5, **kw), lambda **kw: sd.AdaptiveDPMSolver(**kw),
                 lambda **kw: sd.DPMSolverPP(3, 5, multistep=False, **kw)):  # fmt: skip
        with pytest.raises(ValueError, match="denoise"):
            make(to_zero=True, denoise=True)
        assert make(to_zero=True).params()["to_zero"] is True and make().params()["to_zero"] is False


def test_cli_reaches_to_zero_for_singlestep_and_adaptive():
    parser = cli.build_parser()
    for name, cls, extra in (
        ("dpmsolver++-singlestep", sd.DPMSolverPPSinglestep, ["--order", "3", "--steps", "5"]),
        ("dpm-adaptive", sd.AdaptiveDPMSolver, ["--rtol", "1e-3", "--atol", "1e-3"]),
    ):
        sampler = cli.build_sampler(
            parser.parse_args(["sample", "--sde", "edm", "--sampler", name, "--to-zero", *extra])
        )
        assert isinstance(sampler, cls) and sampler.to_zero
