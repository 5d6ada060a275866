"""The likelihood study (studies/likelihood.py) at a tiny size: the acceptance figure (MAE at
rtol = atol = 1e-6 with the exact trace), Hutchinson unbiasedness, the Dataset and the files."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import xarray as xr

from studies import likelihood as lk

TINY = replace(lk.DEFAULT, n=16, tols=(1e-3, 1e-6), probes=(4,), targets=("2-D",))


@pytest.fixture(scope="module")
def tiny() -> xr.Dataset:
    return lk.run_likelihood(TINY, progress=False)


def test_acceptance_mae_at_1e6_exact_trace(tiny):
    acc = lk.acceptance_table(tiny)
    assert len(acc) == 3 and (acc["MAE, exact log p_T"] < 1e-3).all(), acc
    # the tolerance matters: at 1e-3 the error is far above the one at 1e-6
    mae = tiny.mae.sel(prior="exact")
    assert (mae.sel(tol=1e-3) > 30 * mae.sel(tol=1e-6)).all()
    assert (tiny.nfe.sel(tol=1e-6) > tiny.nfe.sel(tol=1e-3)).all()
    # the SDE's Gaussian prior adds the prior mismatch: small for VP / sub-VP, ~1e-3 nats for VE
    sde_prior = tiny.mae.sel(prior="sde", tol=1e-6, target="2-D")
    assert float(sde_prior.sel(sde="VP")) < 1e-3 and float(sde_prior.sel(sde="VE")) > 5e-4


def test_hutchinson_is_unbiased_within_its_standard_error(tiny):
    assert (np.abs(tiny.hutch_z_reported) < 4).all() and (np.abs(tiny.hutch_z_empirical) < 4).all()
    assert (tiny.hutch_mean_se > 1e-2).all()  # the probes do add noise
    assert tiny.attrs["check_sde_prior_call_vs_latent_max_abs"] < 1e-10


def test_dataset_dims_and_attributes(tiny):
    assert tiny.error.dims == ("target", "sde", "tol", "prior", "sample")
    assert tiny.hutch_error.dims == ("target", "sde", "noise", "probes", "sample")
    assert dict(tiny.sizes) == {"target": 1, "sde": 3, "tol": 2, "prior": 2, "sample": 16, "noise": 2, "probes": 1}
    assert list(tiny.dim.values) == [2] and tiny.attrs["accept_tol"] == 1e-6
    with pytest.raises(ValueError, match="acceptance"):
        lk.run_likelihood(replace(TINY, tols=(1e-3,)), progress=False)


def test_main_writes_every_output(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(lk, "DEFAULT", replace(TINY, n=4, sdes=("VP",), tols=(1e-6,), probes=(2,)))
    assert lk.main(["--out", str(tmp_path), "--quiet"]) == 0
    for name in (
        "likelihood.nc",
        "figure.png",
        "figure.svg",
        "table.md",
        "table_acceptance.csv",
        "table_tolerance.csv",
        "table_hutchinson.csv",
    ):
        assert (tmp_path / name).stat().st_size > 0, name
    with xr.open_dataset(tmp_path / "likelihood.nc") as ds:
        assert ds.attrs["study"] == "studies.likelihood" and "torch_version" in ds.attrs
        assert ds.mae.dims == ("target", "sde", "tol", "prior")
    assert capsys.readouterr().out == ""  # --quiet: the tables go to table.md only
    assert "Acceptance: mean |log p_ODE" in (tmp_path / "table.md").read_text(encoding="utf-8")
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.slow
def test_acceptance_10d_every_sde():
    ds = lk.run_likelihood(replace(lk.DEFAULT, n=50, tols=(1e-6,), probes=(8,), targets=("10-D",)), progress=False)
    assert (ds.mae.sel(prior="exact") < 1e-3).all()
    assert (np.abs(ds.hutch_z_reported) < 4).all()
