"""The default-sampler study at a tiny size: what it measures, what it writes, and its exact p_eps sampler."""

import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

import scoresde as sd

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `studies` is not installed with the package
    sys.path.insert(0, str(ROOT))

from studies import default_sampler as dsm  # noqa: E402

TINY = replace(
    dsm.DEFAULT,
    samplers=("EM", "PC (snr 0.16)", "Heun", "DPM-Solver++(2M)", "RK45"),
    budgets=(3, 20, 40),
    train_steps=30,
    n_data=2000,
    n_samples=400,
    n_samples_exact=800,
    floor_pairs=4,
    ode_max_nfe=20,
)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        root = tmp_path_factory.mktemp("ckpt")
        yield dsm.run(TINY, root, progress=False, argv=["--tiny"], size="tiny"), root
    finally:
        torch.set_num_threads(n)


def test_config_checks_names():
    with pytest.raises(ValueError, match="unknown names"):
        replace(dsm.DEFAULT, samplers=("RK4",))
    with pytest.raises(ValueError, match="budgets"):
        replace(dsm.DEFAULT, budgets=(0, 10))
    assert set(dsm.FULL.budgets) >= set(dsm.DEFAULT.budgets) and dsm.FULL.n_samples >= 20_000


def test_budgets_are_spent_exactly():
    for name, factory in dsm.SAMPLERS.items():
        if name == "RK45":
            continue
        for budget in (20, 50, 1000):
            sampler = factory(budget)
            assert sampler is not None and sampler.expected_nfe(sd.VPSDE()) == budget, (name, budget)
    assert dsm.SAMPLERS["PC (snr 0.16)"](3) is None and dsm.SAMPLERS["Heun"](1) is None


def test_exact_p_eps_draw_matches_the_closed_form_marginal():
    sde = sd.VPSDE()
    problem = dsm.exact_problem("eight_gaussians", sde)
    x = problem.draw_eps(sde)(200_000, torch.Generator().manual_seed(3))
    p_eps = sd.eight_gaussians().marginal(sde, dsm.EPS)
    mean = (p_eps.weights[:, None] * p_eps.means).sum(0)
    cov = (p_eps.weights[:, None, None] * (p_eps.covariances + p_eps.means[:, :, None] * p_eps.means[:, None, :])).sum(
        0
    ) - torch.outer(mean, mean)
    np.testing.assert_allclose(x.mean(0), mean, atol=0.02)
    np.testing.assert_allclose(torch.cov(x.T), cov, atol=0.03)
    # from a point mass at 1 the draw is N(s(eps), sigma(eps)^2 I), exactly
    point = dsm.Problem("point", problem.score_fn, lambda m, g: torch.ones(m, 2, dtype=torch.float64), "")
    y = point.draw_eps(sde)(200_000, torch.Generator().manual_seed(4))
    t = torch.tensor(dsm.EPS, dtype=torch.float64)
    np.testing.assert_allclose(y.std(0), [float(sde.std(t))] * 2, rtol=0.01)
    np.testing.assert_allclose(y.mean(0), [float(sde.mean_coef(t))] * 2, atol=1e-4)


def test_study_measures_and_writes(study, tmp_path):
    ds, root = study
    assert (root / "moons" / "last.pt").exists() and (root / "eight_gaussians" / "last.pt").exists()
    assert ds.sw.dims == ("problem", "sampler", "budget")
    assert ds.problem.values.tolist() == list(dsm.PROBLEMS)
    status = ds.status.sel(budget=3)
    # PC and Heun cannot spend 3 NFE; the others run
    assert (status.sel(sampler=["PC (snr 0.16)", "Heun"]) == dsm.UNSUPPORTED).all()
    assert (ds.status.sel(budget=20) == dsm.OK).all()
    # the deterministic solvers run the budgets up to ode_max_nfe only
    assert (ds.status.sel(budget=40, sampler=["Heun", "DPM-Solver++(2M)", "RK45"]) == dsm.NOT_RUN).all()
    assert (ds.status.sel(budget=40, sampler=["EM", "PC (snr 0.16)"]) == dsm.OK).all()
    fixed = ds.nfe.sel(budget=20).drop_sel(sampler="RK45")
    assert (fixed == 20).all()
    # exact score: a 20-NFE second-order solver is much closer than a 3-NFE Euler-Maruyama run
    exact = ds.sw_ratio.sel(problem="ring_exact")
    assert float(exact.sel(sampler="DPM-Solver++(2M)", budget=20)) < 0.6 * float(exact.sel(sampler="EM", budget=3))
    assert (ds.sw_floor > 0).all() and (ds.sw_floor_rel_sd < 1).all()
    text = dsm.write_outputs(ds, tmp_path)
    assert (tmp_path / "table.md").read_text(encoding="utf-8") == text
    for p in dsm.PROBLEMS:
        assert f"## {p}: SW / floor" in text
        assert (tmp_path / f"table_ratio_{p}.csv").stat().st_size > 0
    assert "Best fixed-NFE sampler per budget" in text
    assert (tmp_path / "figure.png").stat().st_size > 0 and (tmp_path / "figure.svg").stat().st_size > 0
    fig = dsm.plot(ds)
    axes = fig.axes
    assert [ax.get_title() for ax in axes] == list(dsm.PROBLEMS)
    assert all(ax.get_xlabel() == "NFE (score evaluations)" and ax.get_xscale() == "log" for ax in axes)
    assert axes[0].get_ylabel() == "sliced Wasserstein / floor mean"
    # one line per sampler that ran on the problem, at the NFE it spent
    em = next(line for line in axes[2].get_lines() if line.get_label() == "EM")
    np.testing.assert_array_equal(em.get_xdata(), ds.nfe.sel(problem="ring_exact", sampler="EM").values)
    np.testing.assert_allclose(em.get_ydata(), ds.sw_ratio.sel(problem="ring_exact", sampler="EM").values)
    dsm.plt.close(fig)
    with xr.open_dataset(tmp_path / "default_sampler.nc") as back:
        back.load()
    xr.testing.assert_allclose(back.sw_ratio, ds.sw_ratio)
    assert back.attrs["command"] == "python -m studies.default_sampler --tiny" and back.attrs["n_samples"] == 400


def test_checkpoints_are_reused(study):
    ds, root = study
    mtime = (root / "moons" / "last.pt").stat().st_mtime_ns
    cfg = replace(TINY, problems=("moons",), samplers=("EM",), budgets=(3,))
    again = dsm.run(cfg, root, progress=False)
    assert (root / "moons" / "last.pt").stat().st_mtime_ns == mtime  # nothing retrained
    np.testing.assert_array_equal(
        again.sw.values[0], ds.sw.sel(problem=["moons"], sampler=["EM"], budget=[3]).values[0]
    )


def test_toy_draws_are_iid():
    # make_moons spaces its points evenly along the arcs: two of its sets are closer to each other than two
    # i.i.d. sets. The study's draws are i.i.d., so two fresh sets are as far apart as two halves of one set.
    from scoresde import metrics

    draw = dsm._toy_draw("moons", 0.0, 1.0)
    fresh, halves = [], []
    for k in range(12):
        g = torch.Generator().manual_seed(k)
        fresh.append(metrics.sliced_wasserstein(draw(1000, g), draw(1000, g)))
        both = draw(2000, g)
        halves.append(metrics.sliced_wasserstein(both[:1000], both[1000:]))
    assert 0.6 < np.mean(fresh) / np.mean(halves) < 1.7, (fresh, halves)  # stratified draws: about 0.3
