"""Study cells on dask (studies/_sweep.py): the same Dataset and table text from 2 worker processes as
in-process, a failing cell named by its parameters, bad --workers refused, dask optional."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import xarray as xr

pytest.importorskip("distributed")

from studies import _sweep  # noqa: E402
from studies import convergence as cv  # noqa: E402
from studies import core_accuracy as ca  # noqa: E402
from studies import likelihood as lk  # noqa: E402

# 2 SDEs x 3 chunks (the last one short) = 6 cells
CONV = replace(cv.DEFAULT, sdes=("VP", "VE"), steps=(8, 16), ref_steps=32, n_paths=25, chunk=10, ode_ref_tol=1e-6)
# 2 SDEs x (1 exact-trace + 2 Hutchinson cells)
LIK = replace(lk.DEFAULT, n=4, sdes=("VP", "VE"), tols=(1e-6,), probes=(1, 2), targets=("2-D",))
# part 1 of the core-accuracy study: 3 SDEs x 8 cells
GAUSS = replace(ca.DEFAULT, steps=(10, 20), tols=(1e-3, 1e-5), n_ode=20, n_em=200, em_check_steps=(5, 10))
WALL = ["wall_time", "hutch_wall_time"]


@pytest.fixture(scope="module")
def cluster():
    """A local cluster of 2 worker processes, one thread each, shared by the tests of this module."""
    with _sweep.Sweep(workers=2, threads=1) as sweep:
        yield sweep


def test_convergence_on_two_workers_is_the_in_process_run(cluster):
    local = cv.run_convergence(CONV, progress=False)
    dist = cv.run_convergence(CONV, progress=False, sweep=cluster)
    xr.testing.assert_identical(dist, local)
    checks = {"a check": 1.0}
    for key, (title, df, md) in cv.make_tables(local, checks).items():
        title2, df2, md2 = cv.make_tables(dist, checks)[key]
        assert (title2, md2) == (title, md)
        pd.testing.assert_frame_equal(df2, df)


def test_core_accuracy_gaussian_part_on_two_workers_is_the_in_process_run(cluster):
    local = ca.run_gaussian(GAUSS, progress=False)
    dist = ca.run_gaussian(GAUSS, progress=False, sweep=cluster)
    xr.testing.assert_identical(dist, local)
    assert int(local.rk45_nfe.min()) > 0 and bool(local.mc_mean.notnull().all())


def _outputs(out: Path) -> tuple[str, dict[str, pd.DataFrame], xr.Dataset]:
    """table.md without its provenance line (command, date, wall time), the CSVs without wall-time
    columns, the Dataset without wall times and run-specific attributes."""
    lines = (out / "table.md").read_text(encoding="utf-8").splitlines()
    assert lines[2].startswith("`python -m studies.likelihood")
    csvs = {p.name: pd.read_csv(p).drop(columns="wall_s", errors="ignore") for p in sorted(out.glob("*.csv"))}
    ds = xr.load_dataset(out / "likelihood.nc").drop_vars(WALL)
    for key in ("command", "created", "study_wall_time_s"):
        ds.attrs.pop(key)
    return "\n".join(lines[:2] + lines[3:]), csvs, ds


def test_likelihood_main_with_a_scheduler_writes_the_in_process_tables(cluster, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(lk, "DEFAULT", LIK)
    address = cluster._cluster.scheduler_address
    assert lk.main(["--out", str(tmp_path / "local"), "--quiet"]) == 0
    assert lk.main(["--out", str(tmp_path / "dask"), "--quiet", "--scheduler", address]) == 0
    text, csvs, ds = _outputs(tmp_path / "local")
    text2, csvs2, ds2 = _outputs(tmp_path / "dask")
    assert text2 == text
    assert "## Acceptance" in text and "## Hutchinson" in text
    assert csvs2.keys() == csvs.keys() and len(csvs) == 3
    for name in csvs:
        pd.testing.assert_frame_equal(csvs2[name], csvs[name])
    xr.testing.assert_identical(ds2, ds)


@pytest.mark.parametrize("where", ["in-process", "dask"])
def test_a_failing_cell_is_named_by_its_parameters(cluster, where):
    sweep = cluster if where == "dask" else _sweep.Sweep()
    cells = [
        {"cfg": LIK, "target": "2-D", "sde": "VP", "tol": 1e-3},
        {"cfg": LIK, "target": "2-D", "sde": "nope", "tol": 1e-3},
    ]
    with pytest.raises(_sweep.CellError) as info:
        sweep.map(lk.exact_trace_cell, cells, progress=False, desc="likelihood exact trace")
    msg = str(info.value)
    assert "likelihood exact trace: cell 2 of 2" in msg
    assert "cfg=<Config>, target='2-D', sde='nope', tol=0.001" in msg
    assert "KeyError" in msg and "'nope'" in msg


@pytest.mark.parametrize("value", ["0", "-2", "two", "1.5", ""])
def test_bad_workers_are_refused(value, capsys):
    with pytest.raises(SystemExit):
        cv.parse_args(["--workers", value])
    assert "--workers must be an integer >= 1" in capsys.readouterr().err


def test_workers_and_scheduler_exclude_each_other(capsys):
    with pytest.raises(SystemExit):
        lk.parse_args(["--workers", "2", "--scheduler", "tcp://127.0.0.1:8786"])
    assert "not allowed with argument" in capsys.readouterr().err
    with pytest.raises(ValueError, match="not both"):
        _sweep.Sweep(workers=2, scheduler="tcp://127.0.0.1:8786")
    for bad in (0, -1, 2.0, True, "2"):
        with pytest.raises(ValueError, match="workers must be an integer >= 1"):
            _sweep.Sweep(workers=bad)


def test_one_worker_runs_without_dask_and_more_need_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed now raises ImportError
    with _sweep.Sweep.from_args(cv.parse_args(["--workers", "1"])) as sweep:
        assert not sweep.distributed
        cells = [{"number": 2.567, "ndigits": 1}, {"number": 7.25, "ndigits": 0}]
        assert sweep.map(round, cells, progress=False) == [2.6, 7.0]
    with pytest.raises(ImportError, match=r"scoresde\[studies\]"):
        _sweep.Sweep(workers=2).__enter__()
