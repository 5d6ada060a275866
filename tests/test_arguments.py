"""Argument checks of :func:`scoresde.sample`: seeds, shapes, save_at, device, x_T, num_threads.

Every bad value raises a ``TypeError``/``ValueError`` whose message names the argument; nothing is
silently truncated (``shape=(8, 2.7)`` used to become ``(8, 2)``), reinterpreted (``save_at=True``
used to mean the time 1.0) or wrapped (``seed=2**63`` used to give the samples of ``seed=0``).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import scoresde as sd

SDE = sd.VPSDE()
SCORE = sd.eight_gaussians().score(SDE)


def run(**kwargs):
    kwargs.setdefault("progress", False)
    return sd.sample(SDE, SCORE, sd.EulerMaruyama(steps=2), **kwargs)


# -- seeds ------------------------------------------------------------------------------------
@settings(max_examples=30, deadline=None)
@given(
    st.one_of(
        st.integers(max_value=-1),
        st.integers(min_value=2**63),
        st.floats(allow_nan=True),
        st.booleans(),
        st.text(max_size=3),
        st.none(),
    )
)
def test_bad_seeds_are_refused(seed):
    with pytest.raises((TypeError, ValueError), match=r"seed must be an integer in \[0, 2\*\*63\)"):
        run(shape=(2, 2), seed=seed)


def test_seed_2_to_the_63_no_longer_aliases_seed_0():
    with pytest.raises(ValueError, match="seed"):
        run(shape=(3, 2), seed=2**63)
    with pytest.raises(ValueError, match="seed"):  # used to be torch's 'Overflow when unpacking long long'
        run(shape=(3, 2), seed=2**64)


@settings(max_examples=10, deadline=None)
@given(st.sampled_from([0, 1, 2**32, 2**62, 2**63 - 1]))
def test_seeds_at_the_ends_of_the_range_work(seed):
    ds = run(shape=(3, 2), seed=seed)
    again = run(shape=(3, 2), seed=np.int64(seed))
    np.testing.assert_array_equal(ds.x.values, again.x.values)
    assert ds.attrs["seed"] == seed


def test_seed_2_to_the_63_minus_1_differs_from_seed_0():
    a = run(shape=(3, 2), seed=2**63 - 1).x.values
    b = run(shape=(3, 2), seed=0).x.values
    assert not np.array_equal(a, b)


# -- shape ------------------------------------------------------------------------------------
_non_integers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True), st.booleans(), st.text(min_size=1, max_size=2), st.none()
)


@settings(max_examples=40, deadline=None)
@given(
    st.one_of(
        # a non-integer entry somewhere in an otherwise valid shape
        st.tuples(st.integers(1, 4), _non_integers),
        st.tuples(_non_integers, st.integers(1, 4)),
        st.tuples(st.integers(1, 4), st.integers(1, 4), _non_integers),
        # strings (used to be read character by character), scalars
        st.text(min_size=1, max_size=4),
        st.integers(1, 10),
        st.floats(),
    )
)
def test_shape_with_non_integers_is_refused(shape):
    with pytest.raises(TypeError, match="shape must be a sequence of integers"):
        run(shape=shape)


@settings(max_examples=30, deadline=None)
@given(
    st.one_of(
        st.lists(st.integers(1, 3), max_size=1),  # no feature axis
        st.lists(st.integers(-3, 3), min_size=2, max_size=4).filter(lambda s: min(s) < 1),
    )
)
def test_shape_with_too_few_axes_or_non_positive_sizes_is_refused(shape):
    with pytest.raises(ValueError, match="shape must be"):
        run(shape=shape)


def test_shape_examples_that_used_to_be_truncated():
    with pytest.raises(TypeError, match=r"got float 2\.7 in \(8, 2\.7\)"):
        run(shape=(8, 2.7))
    with pytest.raises(TypeError, match="got str '82'"):
        run(shape="82")


@pytest.mark.parametrize("shape", [(3, 2), [3, 2], torch.Size([3, 2]), np.array([3, 2]), (np.int64(3), 2)])
def test_integer_shapes_of_any_sequence_type_work(shape):
    assert run(shape=shape).x.shape == (2, 3, 2)


# -- save_at ----------------------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(
    st.one_of(
        st.booleans(),
        st.lists(st.booleans(), min_size=1, max_size=3),
        st.lists(st.floats(0.1, 0.9), min_size=1, max_size=2).map(lambda v: [*v, True]),
        st.text(max_size=4),
        st.lists(st.text(max_size=3), min_size=1, max_size=2),
        st.floats(),  # a bare float is neither a count nor a sequence
    )
)
def test_save_at_bools_strings_and_scalars_are_refused(save_at):
    with pytest.raises(TypeError, match="save_at"):
        run(shape=(2, 2), save_at=save_at)


@settings(max_examples=40, deadline=None)
@given(
    st.one_of(
        st.integers(max_value=1),
        st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=1, max_size=3).filter(
            lambda v: not all(1e-3 <= t <= 1.0 for t in v)
        ),
        st.just([]),
    )
)
def test_save_at_counts_below_2_and_times_outside_the_interval_are_refused(save_at):
    with pytest.raises(ValueError, match="save_at"):
        run(shape=(2, 2), save_at=save_at)


def test_save_at_true_used_to_mean_time_one():
    with pytest.raises(TypeError, match="got bool True"):
        run(shape=(2, 2), save_at=True)


@settings(max_examples=20, deadline=None)
@given(st.lists(st.floats(1e-3, 1.0), min_size=1, max_size=3))
def test_valid_save_at_times_are_kept_in_every_container(times):
    a = run(shape=(2, 2), save_at=times)
    b = run(shape=(2, 2), save_at=np.asarray(times))
    c = run(shape=(2, 2), save_at=torch.tensor(times, dtype=torch.float64))
    np.testing.assert_array_equal(a.time.values, b.time.values)
    np.testing.assert_array_equal(a.time.values, c.time.values)


# -- device and x_T ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("device", "match"),
    [
        ("bogus", r"device must be a torch device such as 'cpu' or 'cuda', got 'bogus'"),
        ("meta", r"device='meta' holds no data"),
        (3.5, r"device must be a torch device"),
    ],
)
def test_bad_device_is_named(device, match):
    with pytest.raises(ValueError, match=match):
        run(shape=(2, 2), device=device)


def test_x_T_on_the_meta_device_is_named():
    with pytest.raises(ValueError, match=r"x_T is on device 'meta'"):
        run(x_T=torch.zeros(2, 2, device="meta"))


@pytest.mark.parametrize("shape", [(0, 2), (3, 0), (0, 1, 4, 4)])
def test_empty_x_T_is_named(shape):
    with pytest.raises(ValueError, match=r"x_T must hold at least one sample with at least one feature"):
        run(x_T=torch.zeros(shape))


def test_x_T_not_a_tensor():
    with pytest.raises(TypeError, match="x_T must be a torch.Tensor"):
        run(x_T=np.zeros((2, 2)))


# -- num_threads ------------------------------------------------------------------------------
def _spy(seen):
    def score(x, t):
        seen.append(torch.get_num_threads())
        return SCORE(x, t)

    return score


@pytest.mark.parametrize("n", [1, 2])
def test_num_threads_applies_during_the_call_and_is_restored(n):
    before = torch.get_num_threads()
    seen: list[int] = []
    sd.sample(SDE, _spy(seen), sd.EulerMaruyama(steps=3), shape=(2, 2), num_threads=n, progress=False)
    assert seen and set(seen) == {n}
    assert torch.get_num_threads() == before


def test_num_threads_none_leaves_the_setting_alone():
    before = torch.get_num_threads()
    seen: list[int] = []
    sd.sample(SDE, _spy(seen), sd.EulerMaruyama(steps=3), shape=(2, 2), progress=False)
    assert set(seen) == {before} and torch.get_num_threads() == before


def test_num_threads_is_restored_when_the_score_raises():
    before = torch.get_num_threads()
    other = 2 if before != 2 else 1

    def boom(x, t):
        assert torch.get_num_threads() == other
        raise KeyError("score failed")

    with pytest.raises(KeyError, match="score failed"):
        sd.sample(SDE, boom, sd.EulerMaruyama(steps=3), shape=(2, 2), num_threads=other, progress=False)
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_bad_num_threads_is_refused(bad):
    before = torch.get_num_threads()
    with pytest.raises((TypeError, ValueError), match="num_threads"):
        run(shape=(2, 2), num_threads=bad)
    assert torch.get_num_threads() == before


def test_samples_are_bit_identical_for_one_and_two_threads():
    """20,000 2-D samples (enough elements for torch to split element-wise ops over threads)."""
    sampler = sd.EulerMaruyama(steps=5)
    kw = dict(shape=(20_000, 2), seed=3, progress=False)
    one = sd.sample(SDE, SCORE, sampler, num_threads=1, **kw)
    two = sd.sample(SDE, SCORE, sampler, num_threads=2, **kw)
    np.testing.assert_array_equal(one.x.values, two.x.values)


# -- tolerances of the adaptive samplers ------------------------------------------------------
@pytest.mark.parametrize(
    "make", [lambda tol: sd.ProbabilityFlowODE(rtol=tol, atol=tol), lambda tol: sd.AdaptiveSDE(rtol=tol, atol=tol)]
)
def test_adaptive_samplers_refuse_tolerances_below_the_resolution(make):
    """rtol = atol = 1e-300 used to hang scipy (and drive AdaptiveSDE to NaN): refused up front instead."""
    with pytest.raises(ValueError, match=r"rtol=1e-300 is below the resolution .* must be >= 2.22e-14"):
        make(1e-300)
    sampler = make(1e-9)  # fine for float64 data, below float32's resolution
    sde = sd.VPSDE()
    score = sd.eight_gaussians().score(sde)
    with pytest.raises(ValueError, match=r"for float32 data rtol must be >= 1.19e-07"):
        sd.sample(sde, score, sampler, shape=(2, 2), progress=False)
