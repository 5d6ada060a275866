"""scoresde.evaluation: the metrics that ``scoresde sample`` reports."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

import scoresde as sd
from scoresde import cli, evaluation, metrics


def test_cli_re_exports_the_evaluation_names():
    assert cli.evaluate is evaluation.evaluate
    assert cli.Evaluation is evaluation.Evaluation
    assert cli.expected_mode_fractions is evaluation.expected_mode_fractions
    assert cli.mode_limit is evaluation.mode_limit
    assert cli._score_error is evaluation.score_error
    assert cli._model_space_oracle is evaluation.model_space_oracle
    assert cli.FLOOR_PAIRS == evaluation.FLOOR_PAIRS and cli.SW_PROJECTIONS == evaluation.SW_PROJECTIONS
    with pytest.raises(AttributeError):
        _ = cli.no_such_name


def test_mode_limit():
    assert evaluation.mode_limit(1) == pytest.approx(3.0)
    assert evaluation.mode_limit(8) > evaluation.mode_limit(2) > 3.0


def test_expected_mode_fractions_well_separated_is_cheap_and_exact():
    # eight_gaussians at t = 1e-3: about 1e-3 of each component's mass lies in a neighbour's cell
    ref = sd.eight_gaussians().marginal(sd.VPSDE(), 1e-3)
    e, m = evaluation.expected_mode_fractions(ref, 20_000, torch.Generator().manual_seed(0))
    np.testing.assert_allclose(e, ref.weights.double().numpy(), atol=1e-3)
    assert m == 8 * evaluation.MODE_BATCH  # one stratified batch suffices


def test_expected_mode_fractions_overlapping_modes():
    # pinwheel at VP t = 0.3 overlaps: e != w. Compare with a large plain Monte Carlo estimate.
    ref = sd.pinwheel().marginal(sd.VPSDE(), 0.3)
    n = 2000
    e, m = evaluation.expected_mode_fractions(ref, n, torch.Generator().manual_seed(1))
    assert e.sum() == pytest.approx(1.0, abs=1e-12)
    big = 400_000
    plain = metrics.mode_fractions(ref.sample(big, torch.Generator().manual_seed(2), dtype=torch.float64), ref.means)
    plain = plain.numpy()
    w = ref.weights.double().numpy()
    assert np.abs(plain - w).max() > 0.01  # the weights would be the wrong reference here
    # the stratified estimate stops at MC error <= 0.1 binomial se at n; plain MC error ~ 1e-3 / 2 at 400k
    se = np.sqrt(e * (1 - e) / n)
    assert np.all(np.abs(e - plain) <= 0.1 * se * 4 + 4 * np.sqrt(plain * (1 - plain) / big))
    assert m > 5 * evaluation.MODE_BATCH  # more than one batch was needed
    # reproducible
    e2, m2 = evaluation.expected_mode_fractions(ref, n, torch.Generator().manual_seed(1))
    assert m2 == m and np.array_equal(e, e2)


def test_evaluate_exact_samples_and_the_attrs(capsys):
    ref = sd.eight_gaussians().marginal(sd.VESDE(), 1e-3)
    x = ref.sample(400, torch.Generator().manual_seed(7), dtype=torch.float64)
    ev = evaluation.evaluate(x, ref, seed=0, reference_desc="p_t")
    assert ev.modes is not None and ev.exact.shape == (400, 2)
    attrs = evaluation.metric_attrs(ev)
    assert attrs["metric_sw2"] == ev.sw > 0
    assert attrs["metric_sw2_floor_pairs"] == evaluation.FLOOR_PAIRS == len(ev.floor.values)
    assert attrs["metric_sw2_floor_threshold"] == pytest.approx(ev.floor.mean + 3 * ev.floor.std)
    assert attrs["metric_sw2_within_floor"] == int(ev.sw <= attrs["metric_sw2_floor_threshold"])
    assert attrs["metric_mode_expected_draws"] == ev.reference_draws > 0
    assert attrs["metric_mode_z"].shape == (8,) and attrs["metric_sw2_reference"] == "400 exact samples of p_t"
    # the floor is that of metric_floor with the documented seeds (same numbers as before the move)
    floor = metrics.metric_floor(
        "sliced_wasserstein", lambda m, g: ref.sample(m, g, dtype=torch.float64), 400, pairs=8, seed=1, projections=500
    )
    assert floor.values == ev.floor.values
    lines = evaluation.report_lines(ev)
    assert lines[0].startswith("  SW2") and "floor" in lines[1] and lines[2].startswith("  modes")


def test_evaluate_against_data_has_no_mode_check():
    data = torch.from_numpy(sd.datasets.toy_sample("moons", 1000, 0))
    x = torch.from_numpy(sd.datasets.toy_sample("moons", 200, 5))

    def draw(m, g):
        return torch.from_numpy(sd.datasets.toy_sample("moons", m, int(torch.randint(0, 2**31, (1,), generator=g))))

    ev = evaluation.evaluate_against_data(x, data, draw, seed=0, data_desc="moons")
    assert ev.modes is None and ev.exact is None
    attrs = evaluation.metric_attrs(ev)
    assert not any(k.startswith("metric_mode") for k in attrs)
    assert attrs["metric_sw2_reference"] == "200 random points of moons"
    assert len(evaluation.report_lines(ev)) == 2


def test_cached_floor_equals_the_computed_one(tmp_path):
    ref = sd.grid().marginal(sd.VPSDE(), 1e-3)
    fresh, hit = evaluation.cached_floor(ref, 200, seed=3)
    assert not hit and list(tmp_path.iterdir()) == []
    first, hit1 = evaluation.cached_floor(ref, 200, seed=3, cache_dir=tmp_path)
    second, hit2 = evaluation.cached_floor(ref, 200, seed=3, cache_dir=tmp_path)
    assert (hit1, hit2) == (False, True)
    assert first == second == fresh  # values, mean and std bit for bit
    (path,) = tmp_path.iterdir()
    # another seed, n or reference is another entry
    evaluation.cached_floor(ref, 200, seed=4, cache_dir=tmp_path)
    evaluation.cached_floor(ref, 201, seed=3, cache_dir=tmp_path)
    evaluation.cached_floor(sd.grid().marginal(sd.VPSDE(), 2e-3), 200, seed=3, cache_dir=tmp_path)
    assert len(list(tmp_path.iterdir())) == 4
    # a corrupt or inconsistent entry is recomputed and replaced
    for bad in ("{not json", '{"metric": "sliced_wasserstein", "values": [1.0, 2.0]}'):
        path.write_text(bad)
        again, hit = evaluation.cached_floor(ref, 200, seed=3, cache_dir=tmp_path)
        assert not hit and again == fresh
    assert evaluation.cached_floor(ref, 200, seed=3, cache_dir=tmp_path)[1]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("SCORESDE_NO_CACHE", raising=False)
    monkeypatch.setenv("SCORESDE_CACHE_DIR", str(tmp_path))
    assert evaluation.default_cache_dir() == tmp_path
    monkeypatch.setenv("SCORESDE_CACHE_DIR", "")
    assert evaluation.default_cache_dir() is None
    monkeypatch.delenv("SCORESDE_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    if sys.platform.startswith("linux"):
        assert evaluation.default_cache_dir() == tmp_path / "xdg" / "scoresde" / "floors"
    monkeypatch.setenv("SCORESDE_NO_CACHE", "1")
    assert evaluation.default_cache_dir() is None
