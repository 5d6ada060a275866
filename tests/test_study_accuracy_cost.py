"""The accuracy-versus-cost study at a tiny size: what it measures, what it writes, and that its figures
are drawn from the re-opened netCDF alone."""

import math
import sys
from dataclasses import replace
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
import xarray as xr
from matplotlib.figure import Figure

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `studies` is not installed with the package
    sys.path.insert(0, str(ROOT))

from studies import accuracy_cost as ac  # noqa: E402

TINY = replace(
    ac.DEFAULT,
    n_det=200,
    nfe_targets=(10, 20, 40, 80),
    fit_range=(20, 80),
    grids=("uniform", "logsnr"),
    solvers=(*list(ac.SOLVERS)[:7], "Heun-EDM", "DPM++2S", "DPM++3S", "Heun-0", "DPM++3S-0"),
    ode_methods=("RK45", "DPM-Solver-23"),
    ode_tols=(1e-4,),
    n_sto=1000,
    levels=(3, 300),
    adaptive_tols=(0.1, 0.02),
    rk45_tols=(1e-2, 1e-4),
    samplers=("EM", "PC-ancestral", "AdaptiveSDE", "ER-SDE-3", "ODE-DPM++3M", "ODE-RK45"),
    floor_pairs=8,
)


@pytest.fixture(scope="module")
def study():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield ac.run(TINY, progress=False, argv=["--tiny"], size="tiny")
    finally:
        torch.set_num_threads(n)


def test_fit_order_and_helpers():
    assert ac.fit_order([10, 20, 40], [1.0, 0.25, 0.0625]) == pytest.approx(2.0)
    assert ac.fit_order([10, 20, 40], [1.0, math.nan, 0.0625]) == pytest.approx(2.0)
    assert math.isnan(ac.fit_order([10, 20], [1.0, math.nan]))
    assert (
        ac.FULL.n_sto >= 20_000
        and {20, 35, 50} <= set(ac.FULL.nfe_targets)
        and {20, 35, 50} <= set(ac.DEFAULT.nfe_targets)
    )
    with pytest.raises(ValueError, match="one entry per level"):
        replace(ac.DEFAULT, levels=(10, 20))
    with pytest.raises(ValueError, match="unknown names"):
        replace(ac.DEFAULT, solvers=("RK4",))


def test_part_a_errors_orders_and_nfe(study):
    ds = study
    # every cell runs but those ending at sigma = 0 on VE, where sigma(0) = sigma_min > 0 (no reference there)
    zero = [s for s in TINY.solvers if s in ac.ZERO_SOLVERS]
    assert zero == ["Heun-0", "DPM++3S-0"]
    assert (ds.status.drop_sel(solver=zero) == ac.OK).all()
    assert (ds.status.sel(solver=zero, sde="VE") == ac.UNSUPPORTED).all()
    assert (ds.status.sel(solver=zero).drop_sel(sde="VE") == ac.OK).all()
    assert "sigma(0) = 0.01 > 0 on VE" in ds.attrs["unsupported_notes"]
    assert ds.reference_to_zero_nfe.sel(sde="VE") == -1 and (ds.reference_to_zero_nfe.drop_sel(sde="VE") > 0).all()
    # the NFE is the one each run reports: one per step, Heun two
    one = ds.nfe.sel(solver=["Euler", "DDIM", "DPM++2M", "DPM++3M"])
    assert (one == ds.nfe_target).all()
    assert (ds.nfe.sel(solver="Heun") == 2 * (ds.nfe_target // 2)).all()
    assert (ds.nfe.sel(solver="DPM++2S") == 2 * (ds.nfe_target // 2)).all()
    assert (ds.nfe.sel(solver="DPM++3S") == 3 * (ds.nfe_target // 3)).all()
    ok = ds.drop_sel(sde="VE")
    assert (ok.nfe.sel(solver="Heun-0") == 2 * (ds.nfe_target // 2) - 1).all()  # the last step: one evaluation
    assert (ok.nfe.sel(solver="DPM++3S-0") == 3 * (ds.nfe_target // 3 - 1) + 1).all()
    # on VE the EDM form is Heun's default; 2S and 3S converge at their order on the log-SNR grid
    np.testing.assert_array_equal(ds.rmse.sel(solver="Heun", sde="VE"), ds.rmse.sel(solver="Heun-EDM", sde="VE"))
    for sde in ("VP", "EDM"):
        assert float(ds.order.sel(solver="DPM++2S", grid="logsnr", sde=sde)) >= 1.7
        assert float(ds.order.sel(solver="DPM++3S", grid="logsnr", sde=sde)) >= 2.0  # pre-asymptotic at <= 80 NFE
    # ending at sigma = 0, against the reference at t = 0: converges like the run that ends at eps
    for sde in ("VP", "EDM"):
        zero3 = ds.rmse.sel(solver="DPM++3S-0", grid="logsnr", sde=sde).values
        at_eps = ds.rmse.sel(solver="DPM++3S", grid="logsnr", sde=sde).values
        assert (np.diff(np.log(zero3)) < -np.log(3.0)).all() and zero3[-1] < 3 * at_eps[-1] < 0.05, (zero3, at_eps)
    vp = ds.sel(sde="VP")
    heun = float(vp.order.sel(solver="Heun", grid="logsnr"))
    assert 1.6 <= heun <= 2.4, heun
    for solver in ("Euler", "DDIM"):
        assert 0.8 <= float(vp.order.sel(solver=solver, grid="logsnr")) <= 1.2
    assert float(vp.order.sel(solver="DPM++3M", grid="logsnr")) >= 1.9
    at20 = vp.rmse.sel(grid="logsnr", nfe_target=20)
    assert float(at20.sel(solver="DPM++3M")) < float(at20.sel(solver="DPM++2M")) < float(at20.sel(solver="DDIM"))
    # DDIM(eta=0) is DPM-Solver++ of order 1
    np.testing.assert_allclose(ds.rmse.sel(solver="DDIM"), ds.rmse.sel(solver="DPM++1"), rtol=1e-8)
    # adaptive points: finite, and the reference is much tighter than them
    assert np.isfinite(ds.ode_rmse).all() and (ds.ode_rmse < 1e-2).all() and (ds.ode_nfe > 0).all()
    assert (
        ds.ode_nfe.sel(ode_method="DPM-Solver-23").values.tolist() != ds.ode_nfe.sel(ode_method="RK45").values.tolist()
    )
    assert (ds.reference_nfe > ds.ode_nfe.max()).all()


def test_reference_to_zero_is_the_exact_flow_map_of_a_gaussian():
    """The to_zero reference (DOP853 to t = 0) against the closed-form probability-flow map of one Gaussian."""
    gauss = ac.sd.GaussianMixture([1.0], [[1.0, -0.5]], [[[1.0, 0.3], [0.3, 0.5]]])
    for name in ("VP", "subVP", "EDM"):
        sde = ac.SDES[name]
        assert ac.sigma_at_zero(sde) == 0.0
        x_T = sde.prior_sampling((20, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        ref, nfe = ac.ode_reference_to_zero(sde, gauss.score(sde), x_T)
        np.testing.assert_allclose(ref, gauss.flow_map(sde, x_T, sde.T, 0.0).numpy(), rtol=0, atol=1e-8)
        assert nfe > 50
    assert ac.sigma_at_zero(ac.SDES["VE"]) == ac.SDES["VE"].sigma_min > 0


def test_part_b_band_unsupported_and_needed_nfe(study):
    ds = study
    em = ds.sel(sampler="EM", sde="VP")
    assert em.sto_nfe.values.tolist() == [3, 300]
    assert em.in_band.values.tolist() == [0, 1], (em.sw.values, ds.sw_floor_mean.values)
    assert float(em.sw[0]) > 3 * float(ds.sw_floor_mean.sel(sde="VP"))
    assert (ds.sto_status.sel(sampler="PC-ancestral", sde="subVP") == ac.UNSUPPORTED).all()
    assert (ds.sto_status.sel(sampler="PC-ancestral", sde=["VP", "VE"]) == ac.OK).all()
    # fixed-step ODE solvers run the levels up to ode_max_nfe only
    assert ds.sto_status.sel(sampler="ODE-DPM++3M").values[:, 1].tolist() == [ac.NOT_RUN] * len(TINY.sdes)
    ad = ds.sto_nfe.sel(sampler="AdaptiveSDE")
    assert (ad > 0).all() and (ad.isel(level=1) > ad.isel(level=0)).all()  # tighter tolerance, more NFE
    er = ds.sel(sampler="ER-SDE-3", sde="VP")
    assert er.sto_nfe.values.tolist() == [3, 300] and er.in_band.values.tolist() == [0, 1]
    need = ac.needed_nfe(ds).set_index(["sampler", "SDE"])
    assert need.loc[("EM", "VP"), "NFE needed"] == 300
    assert need.loc[("PC-ancestral", "subVP"), "status"] == "unsupported"


def test_outputs_and_plot_from_the_reopened_file(study, tmp_path):
    text = ac.write_outputs(study, tmp_path)
    for name in (
        "accuracy_cost.nc",
        "error_vs_nfe.png",
        "error_vs_nfe.svg",
        "distance_vs_nfe.png",
        "distance_vs_nfe.svg",
        "table.md",
        "table_needed.csv",
        "table_rmse_all.csv",
    ):
        assert (tmp_path / name).stat().st_size > 0, name
    assert "Headline accuracy against fixed bounds" in text
    assert (tmp_path / "table.md").read_text(encoding="utf-8") == text
    with xr.open_dataset(tmp_path / "accuracy_cost.nc") as ds:
        ds.load()
    assert {"solver", "grid", "sde", "nfe_target", "sampler", "level", "pair"} <= set(ds.sizes)
    assert ds.rmse.dims == ("solver", "grid", "sde", "nfe_target")
    assert ds.sw.dims == ("sampler", "sde", "level")
    for key in ("study", "command", "scoresde_version", "torch_version", "created", "n_det", "n_sto", "reference"):
        assert key in ds.attrs, key
    assert ds.attrs["command"] == "python -m studies.accuracy_cost --tiny" and ds.attrs["n_sto"] == 1000
    xr.testing.assert_allclose(ds.rmse, study.rmse)
    figs = ac.plot(ds)
    try:
        assert set(figs) == {"error_vs_nfe", "distance_vs_nfe"}
        assert all(isinstance(f, Figure) for f in figs.values())
        assert len(figs["error_vs_nfe"].axes) == len(TINY.grids) * len(TINY.sdes)
        lines = [ln for ln in figs["error_vs_nfe"].axes[0].get_lines() if ln.get_label().startswith("Heun")]
        assert lines and len(lines[0].get_xdata()) == len(TINY.nfe_targets)
    finally:
        for f in figs.values():
            plt.close(f)


def test_band_mode_writes_its_table(tmp_path):
    cfg = replace(
        TINY,
        sdes=("VE",),
        samplers=("EDM-SDE", "DPM++2M-SDE"),
        levels=(2, 20, 40, 80),
        adaptive_tols=(0.1,) * 4,
        rk45_tols=(1e-2,) * 4,
        n_sto=500,
        lazy=True,
    )
    ds = ac.run_band(cfg, progress=False, argv=["--band"])
    band = ds.in_band.sel(sde="VE").values
    status = ds.sto_status.sel(sde="VE").values
    assert (status[:, 0] == ac.OK).all() and not band[:, 0].any()  # 2 NFE: far outside
    # outside the band by SW or modes: no energy distance; each row stops after its second level in the band
    outside = (ds.sw > ds.sw_floor_mean + 3 * ds.sw_floor_sd) | (ds.mode_ok == 0)
    assert bool((np.isnan(ds.energy) == (outside & (ds.sto_status == ac.OK) | (ds.sto_status != ac.OK))).all())
    for row_band, row_status in zip(band, status, strict=True):
        ran = row_status == ac.OK
        assert row_band.sum() <= 2 and (ran.all() or row_band.sum() == 2)
    text = ac.write_band_outputs(ds, tmp_path)
    assert "NFE each sampler needs" in text and "EDM-SDE" in text and "DPM++2M-SDE" in text
    for name in ("band.nc", "distance_vs_nfe.png", "table.md", "table_needed.csv"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert ac.BAND.n_sto == 20_000 and {"ER-SDE-3", "EM", "PC", "TorchSDE-srk", "AdaptiveSDE"} <= set(ac.BAND.samplers)


def test_noxfile_runs_the_study():
    assert '"accuracy_cost"' in (ROOT / "noxfile.py").read_text(encoding="utf-8")
