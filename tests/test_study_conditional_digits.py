"""The conditional digits study (studies/conditional_digits.py) at a tiny size: the Dataset, the table and the files."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import xarray as xr

from studies import conditional_digits as cd

# a logistic regression fit on the digits and a U-Net sampled for 10 classes: tens of seconds on a busy machine
pytestmark = pytest.mark.slow

TINY = replace(cd.DEFAULT, steps=3, batch_size=16, n_per_class=2, ddim_steps=3, hidden=8, weights=(0.0, 2.0))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> xr.Dataset:
    return cd.run(TINY, tmp_path_factory.mktemp("ckpt"), progress=False)


def test_dataset(tiny):
    assert tiny.x_data.shape == (2, 10, 2, 1, 8, 8)
    assert tiny.accuracy.dims == ("weight", "class") and list(tiny.weight.values) == [0.0, 2.0]
    # the accuracy is the fraction of each class's digits that the classifier assigns to that class
    expected = (tiny.predicted.values == np.arange(10)[None, :, None]).mean(axis=2)
    np.testing.assert_array_equal(tiny.accuracy.values, expected)
    assert tiny.attrs["real_accuracy_all"] > 0.9  # LogisticRegression on real held-out digits
    assert (tiny.nn_generated.values >= 0).all() and (tiny.nn_real.values > 0).all()


def test_table_and_files(tiny, tmp_path):
    table = cd.make_table(tiny)
    assert list(table["digits"]) == ["generated, w = 0", "generated, w = 2", "real, held out"]
    assert table["accuracy (all)"].between(0, 1).all()
    fig = cd.samples_figure(tiny, 2.0, per_class=2)
    assert fig.axes[0].get_ylabel() == "class"
    out = tmp_path / "out"
    argv = ["--steps", "2", "--n-per-class", "1", "--hidden", "8", "--out", str(out), "--quiet"]
    assert cd.main(argv) == 0
    for name in ("conditional_digits.nc", "samples.png", "samples.svg", "table.md", "table.csv"):
        assert (out / name).is_file(), name
