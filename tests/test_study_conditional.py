"""The conditional-sampling study (studies/conditional.py) at a tiny size: its operators, the exact tempered
mode fractions, what it measures and the files it writes."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

import scoresde as sd
from scoresde import metrics

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `studies` is not installed with the package
    sys.path.insert(0, str(ROOT))

from studies import conditional as cs  # noqa: E402

TINY = replace(
    cs.DEFAULT,
    sdes=("VP",),
    operators=("mask", "projection"),
    noise_levels=(0.0, 0.1),
    budgets=(10, 20),
    n=32,
    replicates=2,
    particles=4,
    particle_sweep=(1, 4),
    cg_weights=(1.0, 4.0),
    cfg_weights=(0.0, 2.0),
    n_picture=32,
    floor_pairs=3,
    mode_draws=20_000,
)


@pytest.fixture(scope="module")
def tiny() -> xr.Dataset:
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return cs.run(TINY, progress=False, argv=["--tiny"], size="tiny")
    finally:
        torch.set_num_threads(n)


def test_config_checks():
    with pytest.raises(ValueError, match="unknown names"):
        replace(cs.DEFAULT, methods=("ddrm",))
    with pytest.raises(ValueError, match="particle counts"):
        replace(cs.DEFAULT, particle_sweep=(0, 4))
    with pytest.raises(ValueError, match="budgets"):
        replace(cs.DEFAULT, budgets=(1, 10))
    assert cs.FULL.n >= 2048 and 0.5 in cs.FULL.noise_levels and max(cs.FULL.budgets) > max(cs.DEFAULT.budgets)


def test_operators():
    x = np.arange(10.0)
    np.testing.assert_array_equal(cs.operator("mask", 10) @ x, x[:5])
    np.testing.assert_array_equal(cs.operator("downsample", 10) @ x, [0.5, 2.5, 4.5, 6.5, 8.5])
    P = cs.operator("projection", 10)
    assert P.shape == (3, 10) and np.array_equal(P, cs.operator("projection", 10))
    with pytest.raises(ValueError, match="even"):
        cs.operator("downsample", 3)
    assert cs.applicable("dps", "mask", 0.1) and not cs.applicable("dps", "mask", 0.0)
    assert cs.applicable("replacement", "mask", 0.0) and not cs.applicable("repaint", "projection", 0.0)
    assert not cs.applicable("replacement", "mask", 0.1) and cs.applicable("smc", "projection", 0.0)


def test_tempered_fractions_are_bayes_at_gamma_1_and_the_prior_at_gamma_0():
    mix, sde = cs.prior(10), sd.VESDE()
    marg = mix.marginal(sde, cs.EPS)
    draws = marg.sample(100_000, torch.Generator().manual_seed(0), dtype=torch.float64)
    cond = mix.select_class(0).marginal(sde, cs.EPS).sample(100_000, torch.Generator().manual_seed(1))
    exact_cond = metrics.mode_fractions(cond.double(), marg.means).numpy()
    np.testing.assert_allclose(cs.tempered_fractions(mix, sde, 1.0, 0, draws), exact_cond, atol=0.006)
    np.testing.assert_allclose(
        cs.tempered_fractions(mix, sde, 0.0, 0, draws), metrics.mode_fractions(draws, marg.means).numpy(), atol=1e-12
    )
    # gamma > 1 keeps at most the class's fractions (the other class's mode loses weight)
    assert cs.tempered_fractions(mix, sde, 4.0, 0, draws)[1] < exact_cond[1]


def test_study_measures_what_it_should(tiny):
    ds = tiny
    assert ds.sw.dims == ("sde", "operator", "noise_std", "algorithm", "budget", "replicate")
    st = ds.status.sel(sde="VP")
    assert (st.sel(algorithm="dps", noise_std=0.0) == cs.UNSUPPORTED).all()
    assert (st.sel(algorithm=["replacement", "repaint"], operator="projection") == cs.UNSUPPORTED).all()
    assert (st.sel(algorithm=["replacement", "repaint"], noise_std=0.1) == cs.UNSUPPORTED).all()
    ok = st.sel(algorithm=["pigdm", "smc", "replacement"], operator="mask", noise_std=0.0)
    assert (ok == cs.OK).all() and (st.sel(algorithm="exact") == cs.OK).all()
    # NFE budgets are spent exactly by the Euler-Maruyama methods and the SMC
    nfe = ds.nfe.sel(sde="VP", operator="projection", algorithm=["pigdm", "smc"])
    np.testing.assert_array_equal(nfe.values, np.broadcast_to(ds.budget.values, nfe.shape))
    # measured where run, NaN where not
    ran = ds.status == cs.OK
    assert bool(np.isfinite(ds.sw.where(ran)).sum() == 2 * int(ran.sum()))
    assert bool(np.isnan(ds.sw.where(ds.status == cs.UNSUPPORTED)).all())
    assert (ds.sw_floor > 0).all() and (ds.mode_tv_floor >= 0).all()
    np.testing.assert_allclose(ds.posterior_weights.sum("component"), 1.0)
    # replacement keeps the observed coordinates exactly: the picture's observed coordinate is 0
    pic = ds.picture.sel(panel="replacement (σ_y=0)").values
    np.testing.assert_array_equal(pic[:, 0], np.float32(cs.PICTURE_Y))
    assert list(ds.panel.values)[:2] == ["prior", "exact posterior (σ_y=0)"]


def test_guidance_part(tiny):
    ds = tiny
    b = int(ds.budget.max())
    sw = ds.guidance_sw.sel(budget=b, sde="VP")
    # classifier guidance at w = 1 with the exact classifier follows the exact conditional score: same noise,
    # same samples up to rounding, so the same distances
    np.testing.assert_allclose(sw.sel(case="CG w=1"), sw.sel(case="exact score"), rtol=1e-3)
    np.testing.assert_allclose(sw.sel(case="CFG w=0"), sw.sel(case="exact score"), rtol=1e-6)
    # at gamma = 1 the tempered fractions are the conditional ones
    np.testing.assert_allclose(
        ds.tempered_fractions.sel(sde="VP", case="exact score"), ds.conditional_fractions.sel(sde="VP"), atol=0.02
    )
    # the other weights run the largest budget only
    assert (ds.guidance_status.sel(case="CG w=4", budget=10) == cs.NOT_RUN).all()
    assert (ds.guidance_status.sel(case="exact score") == cs.OK).all()
    tv = ds.guidance_mode_tv.sel(budget=b, sde="VP").mean("replicate")
    assert float(tv.sel(case="CG w=4")) > float(tv.sel(case="exact score"))  # over-guidance moves mode weight


def test_outputs_and_quiet(tiny, tmp_path, monkeypatch, capsys):
    text = cs.write_outputs(tiny, tmp_path)
    assert (tmp_path / "table.md").read_text(encoding="utf-8") == text
    for key in ("posterior", "guidance", "particles"):
        assert (tmp_path / f"table_{key}.csv").stat().st_size > 0
    assert "## Posterior sampling at 20 NFE" in text and "twisted SMC" in text and "CG w=4" in text
    for stem in ("distance_vs_nfe", "guidance_vs_nfe", "smc_particles", "pictures"):
        assert (tmp_path / f"{stem}.png").stat().st_size > 0
    with xr.open_dataset(tmp_path / "conditional.nc") as back:
        back.load()
    xr.testing.assert_allclose(back.sw, tiny.sw)
    assert back.attrs["command"] == "python -m studies.conditional --tiny" and back.attrs["n"] == 32
    monkeypatch.setattr(cs, "run", lambda *a, **k: tiny)
    assert cs.main(["--out", str(tmp_path / "q"), "--quiet"]) == 0
    assert capsys.readouterr().out == ""
    assert cs.main(["--out", str(tmp_path / "loud")]) == 0
    assert "## Class guidance" in capsys.readouterr().out
