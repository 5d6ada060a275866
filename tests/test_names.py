"""Renamed public names keep working: new spellings are the recorded ones, old ones are accepted."""

import numpy as np
import pytest
import torch

import scoresde as sd
from scoresde.integrators.fixed_grid import Euler


def test_annealed_langevin_is_the_recorded_name_and_ald_an_alias():
    sde, target = sd.VESDE(), sd.eight_gaussians()
    kw = dict(shape=(64, 2), seed=3, progress=False)
    new = sd.sample(sde, target.score(sde), sd.PredictorCorrector("none", "annealed_langevin", steps=5), **kw)
    old = sd.sample(sde, target.score(sde), sd.PredictorCorrector("none", "ald", steps=5), **kw)
    assert torch.equal(torch.as_tensor(new["x"].values), torch.as_tensor(old["x"].values))
    assert sd.PredictorCorrector("none", "ald").params()["corrector"] == "annealed_langevin"
    assert sd.samplers.CORRECTOR_ALIASES == {"ald": "annealed_langevin"}


def test_zero_signal_at_T_is_declared_by_the_new_attribute_and_the_old_one_is_honoured():
    rf = sd.RectifiedFlow()
    assert sd.FlowODE.handles_zero_signal_at_T and not sd.EulerMaruyama.handles_zero_signal_at_T
    with pytest.raises(ValueError, match="s\\(T\\) = 0"):
        Euler(steps=4).check(rf)

    class OldStyle(Euler):
        singular_T_ok = True  # the attribute's former name, on a user subclass

    OldStyle(steps=4).check(rf)  # accepted


def test_ddpm_ancestral_runs_the_base_constructor():
    s = sd.DDPMAncestral()
    assert s.eps == 0.0 and s.denoise is False and not hasattr(s, "steps")
    with pytest.raises(ValueError, match="eps"):
        sd.EulerMaruyama(eps=0.0)  # eps = 0 stays refused where the last step cannot land on the data


def test_time_points_is_the_grid_method_and_grid_its_former_name():
    sde = sd.VPSDE()
    s = sd.EulerMaruyama(steps=4)
    assert s.time_points(sde).tolist() == s.grid(sde).tolist() == np.linspace(1.0, 1e-3, 5).tolist()

    class OldGrid(sd.samplers.FixedStepSampler):  # a user sampler written against the former name
        nfe_per_step = 1

        def grid(self, sde):
            return np.array([sde.T, 0.5, self.eps])

        def step(self, state, sde, x, t, t_next, generator):
            return x

    assert OldGrid(steps=2).time_points(sde).tolist() == [1.0, 0.5, 1e-3]
    ds = sd.sample(
        sde, sd.eight_gaussians().score(sde), OldGrid(steps=2), shape=(8, 2), seed=0, save_at=3, progress=False
    )
    assert ds["time"].values.tolist() == [1.0, 0.5, 1e-3]


def test_time_grids_module_and_its_former_name():
    import scoresde.schedules as old
    import scoresde.time_grids as new

    assert old.__all__ == new.__all__
    assert all(getattr(old, name) is getattr(new, name) for name in new.__all__)
    assert sd.TimeGrid.__module__ == "scoresde.time_grids"
