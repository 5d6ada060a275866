"""The convergence study (studies/convergence.py) at a tiny size: the shared Brownian path, the
hand Euler–Maruyama loop against the library, fitted orders, and the files it writes."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
import xarray as xr

import scoresde as sd
from studies import convergence as cv

TINY = replace(
    cv.DEFAULT,
    sdes=("VP", "VE"),
    steps=(16, 32, 64, 128),
    ref_steps=512,
    n_paths=200,
    chunk=200,
    check_steps=16,
    n_check=200,
)


@pytest.fixture(scope="module")
def tiny() -> xr.Dataset:
    return cv.run_convergence(TINY, progress=False)


def test_grid_brownian_sub_grids_are_sums_of_the_fine_path():
    bm = cv.draw_path(64, 3, 2, 1.5, torch.Generator().manual_seed(0))
    h = 1.5 / 64
    dW = bm.W[1:] - bm.W[:-1]
    # a coarse step [8h, 24h]: the increment and int (W_s - W_a) ds are exact sums of fine quantities
    W, U = bm(8 * h, 24 * h, return_U=True)
    torch.testing.assert_close(W, dW[8:24].sum(0))
    fine = [bm(k * h, (k + 1) * h, return_U=True) for k in range(8, 24)]
    U_sum = sum(h * (bm.W[k] - bm.W[8]) + fine[k - 8][1] for k in range(8, 24))
    torch.testing.assert_close(U, U_sum)
    torch.testing.assert_close(cv.coarse_values(bm, 4)[2], bm.W[32])
    with pytest.raises(ValueError, match="grid"):
        bm(0.3 * h, h)
    with pytest.raises(ValueError, match="sub-grid"):
        cv.coarse_values(bm, 5)


def test_grid_brownian_has_the_law_of_brownian_motion():
    n, t1 = 20_000, 2.0
    bm = cv.draw_path(16, n, 1, t1, torch.Generator().manual_seed(1))
    W, U = bm(0.0, t1, return_U=True)
    W, U = W[:, 0], U[:, 0]
    # W(t1) ~ N(0, t1); U = int_0^t1 W ds: var t1^3 / 3, cov(U, W) = t1^2 / 2 (5 standard errors)
    for value, exact, se in (
        (W.var(), t1, t1 * math.sqrt(2 / n)),
        (U.var(), t1**3 / 3, t1**3 / 3 * math.sqrt(2 / n)),
        ((U * W).mean(), t1**2 / 2, float((U * W).std()) / math.sqrt(n)),
    ):
        assert abs(float(value) - exact) < 5 * se, (float(value), exact)


def test_hand_euler_maruyama_is_the_library_sampler_and_torchsde_euler():
    target = cv.overlap3()
    sde = sd.VESDE()
    score = target.score(sde)
    x_T = target.marginal(sde, sde.T).sample(50, torch.Generator().manual_seed(2), dtype=torch.float64)
    N, span = 16, sde.T - cv.EPS
    g = torch.Generator().manual_seed(3)
    z = torch.stack([torch.randn(x_T.shape, generator=g, dtype=torch.float64) for _ in range(N)])
    W = torch.cat([torch.zeros_like(z[:1]), (math.sqrt(span / N) * z).cumsum(0)])
    lib = sd.sample(sde, score, sd.EulerMaruyama(steps=N, eps=cv.EPS), x_T=x_T, seed=3, progress=False)
    torch.testing.assert_close(
        cv.euler_maruyama(sde, score, x_T, W, cv.EPS), torch.from_numpy(lib["x"].values[-1]), rtol=0, atol=1e-10
    )

    bm = cv.draw_path(64, 50, 2, span, torch.Generator().manual_seed(4))
    ts = sd.sample(
        sde, score, sd.TorchSDE("euler", steps=N, eps=cv.EPS, brownian=bm.factory()), x_T=x_T, progress=False
    )
    torch.testing.assert_close(
        torch.from_numpy(ts["x"].values[-1]),
        cv.euler_maruyama(sde, score, x_T, cv.coarse_values(bm, N), cv.EPS),
        rtol=0,
        atol=1e-6,
    )


def test_fitted_orders_match_theory(tiny):
    order = tiny.order
    for s in TINY.sdes:
        strong = order.sel(sde=s, kind="strong")
        assert 1.7 <= float(strong.sel(integrator="ODE-Heun")) <= 2.3
        assert 0.8 <= float(strong.sel(integrator="ODE-Euler")) <= 1.2
        assert 0.75 <= float(strong.sel(integrator="EM")) <= 1.25
        assert float(strong.sel(integrator="SRK")) >= 1.3
        assert 1.7 <= float(order.sel(sde=s, kind="weak", integrator="ODE-Heun")) <= 2.3
    # the strong errors fall with N only because every N sees the same path: at N = 128 EM is far
    # closer to the reference than two independent paths (RMS distance ~1.5 on this target)
    assert float(tiny.strong_error.sel(integrator="EM", steps=128).max()) < 0.2
    # the references agree with the exact moments of p_eps
    assert float(abs(tiny.reference_bias / tiny.reference_bias_se).max()) < 4


def test_fit_order_skips_noise_dominated_points():
    order, used = cv.fit_order([8, 16, 32, 64], [1.0, 0.25, 0.0625, 0.06], se=[0.01, 0.01, 0.01, 0.03])
    assert used == 2 and order == pytest.approx(2.0)
    assert math.isnan(cv.fit_order([8, 16], [1.0, 1e-3], se=[1.0, 1.0])[0])


def test_dataset_dims_and_attributes(tiny):
    assert dict(tiny.sizes) == {"sde": 2, "integrator": 4, "steps": 4, "kind": 2, "functional": 5, "reference": 2}
    assert tiny.strong_error.dims == ("sde", "integrator", "steps")
    assert tiny.weak_bias.dims == ("sde", "integrator", "steps", "functional")
    assert list(tiny.nfe.sel(integrator="SRK").values) == [2 * n for n in TINY.steps]
    assert tiny.attrs["target"] == "overlap3" and tiny.attrs["ref_steps"] == 512


def test_main_writes_every_output(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(
        cv, "DEFAULT", replace(TINY, sdes=("VE",), steps=(16, 32), ref_steps=128, n_paths=50, chunk=50, n_check=50)
    )
    assert cv.main(["--out", str(tmp_path), "--quiet"]) == 0
    for name in ("convergence.nc", "figure.png", "figure.svg", "table.md", "table_orders.csv", "table_checks.csv"):
        assert (tmp_path / name).stat().st_size > 0, name
    with xr.open_dataset(tmp_path / "convergence.nc") as ds:
        assert ds.attrs["study"] == "studies.convergence" and "--quiet" in ds.attrs["command"]
        assert ds.attrs["check_em_hand_vs_library_max_abs"] < 1e-10
        # the library's BrownianInterval with one entropy shares W(T - eps), not the path
        assert ds.attrs["check_brownian_interval_end_max_abs_diff"] < 1e-10
        assert ds.attrs["check_brownian_interval_path_max_abs_diff"] > 0.1
    assert capsys.readouterr().out == ""  # --quiet: the tables go to table.md only
    assert "Observed orders" in (tmp_path / "table.md").read_text(encoding="utf-8")
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
