"""Output directories: one run at a time, writable up front, no temporary file left behind."""

import fcntl
import os
import signal
from pathlib import Path

import pytest
import xarray as xr

from scoresde import cli
from scoresde._io import LOCK_NAME, OutputDirError, atomic_path, lock_directory, remove_stale_temps

SAMPLE = ["sample", "--n-samples", "200", "--sampler", "em", "--steps", "5", "--quiet"]


def _sample(out, *extra):
    return cli.main([*SAMPLE, "--out", str(out), *extra])


def _temps(directory):
    return sorted(p.name for p in Path(directory).iterdir() if p.name.endswith(".tmp"))


def test_a_second_run_into_a_locked_directory_fails_with_exit_2(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    with open(out / LOCK_NAME, "w") as fh:  # the lock of a run in another process
        fcntl.flock(fh, fcntl.LOCK_EX)
        assert _sample(out) == 2
        assert cli.main(["train", "--data", "moons", "--steps", "2", "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("is in use by another scoresde run") == 2, err
    assert not (out / "samples.nc").exists() and not (out / "last.pt").exists()
    assert _sample(out) == 0  # the other run is gone: the lock is free again
    assert not (out / LOCK_NAME).exists()  # main() released and removed its lock


def test_the_lock_is_held_for_the_whole_run(tmp_path, monkeypatch):
    out = tmp_path / "out"
    seen = []
    to_netcdf = xr.Dataset.to_netcdf

    def probe(self, path, *a, **k):  # while the CLI writes samples.nc, another process cannot lock
        with open(out / LOCK_NAME) as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                seen.append("free")
            except BlockingIOError:
                seen.append("locked")
        return to_netcdf(self, path, *a, **k)

    monkeypatch.setattr(xr.Dataset, "to_netcdf", probe)
    assert _sample(out) == 0
    assert seen == ["locked"]


def test_sigterm_during_a_write_removes_the_temporary_file(tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    to_netcdf = xr.Dataset.to_netcdf
    before = signal.getsignal(signal.SIGTERM)

    def terminated_mid_write(self, path, *a, **k):
        to_netcdf(self, path, *a, **k)
        assert Path(path).name.startswith(".samples.nc.") and Path(path).exists()
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("SIGTERM did not interrupt the write")

    monkeypatch.setattr(xr.Dataset, "to_netcdf", terminated_mid_write)
    assert _sample(out) == 128 + signal.SIGTERM
    assert "terminated" in capsys.readouterr().err
    assert _temps(out) == [] and not (out / "samples.nc").exists()
    assert signal.getsignal(signal.SIGTERM) is before  # the caller's handler is back


def test_stale_temporary_files_of_a_killed_run_are_removed(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    stale = [".samples.nc.k3j2h1.tmp", ".samples.png.abcd.tmp"]
    other = [".notes.txt.abcd.tmp", "mine.tmp", "samples.nc.tmp"]
    for name in stale + other:
        (out / name).write_bytes(b"x")
    assert _sample(out) == 0
    assert _temps(out) == sorted(n for n in other if n.endswith(".tmp"))
    train_out = tmp_path / "train"
    train_out.mkdir()
    for name in (".last.pt.a1.tmp", ".step_0000004.pt.b2.tmp", ".history.nc.c3.tmp", ".loss.png.d4.tmp"):
        (train_out / name).write_bytes(b"x")
    assert cli.main(["train", "--data", "moons", "--n-data", "200", "--steps", "4", "--checkpoint-every", "2",
                     "--hidden", "8", "--batch-size", "16", "--out", str(train_out), "--quiet"]) == 0  # fmt: skip
    assert _temps(train_out) == []


def test_unwritable_output_directory_exit_2(tmp_path, monkeypatch, capsys):
    out = tmp_path / "ro"
    out.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, m, **k: False if Path(p) == out else real_access(p, m, **k))
    assert _sample(out) == 2
    assert "is not writable" in capsys.readouterr().err
    monkeypatch.undo()
    # a directory whose entries cannot even be looked up (Path.is_dir raises PermissionError)
    real_is_dir = Path.is_dir

    def no_lookup(self):
        if self.parent == out:
            raise PermissionError(13, "Permission denied", str(self))
        return real_is_dir(self)

    monkeypatch.setattr(Path, "is_dir", no_lookup)
    assert _sample(out) == 2
    err = capsys.readouterr().err
    assert "argument --out" in err and "Permission denied" in err and "Traceback" not in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root bypasses directory permissions")
@pytest.mark.parametrize("mode", [0o500, 0o555, 0o600])
def test_read_only_directory_modes_exit_2(tmp_path, mode, capsys):
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(mode)
    try:
        assert _sample(out) == 2
        assert "argument --out" in capsys.readouterr().err
    finally:
        out.chmod(0o755)


def test_lock_is_reentrant_in_one_process_and_exclusive_across(tmp_path):
    with lock_directory(tmp_path) as a, lock_directory(tmp_path) as b:
        assert a.held and b.held
        with open(tmp_path / LOCK_NAME) as fh, pytest.raises(BlockingIOError):
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        b.release()
        assert (tmp_path / LOCK_NAME).exists()  # a still holds it
    assert not (tmp_path / LOCK_NAME).exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputDirError, match="not a directory"):
        lock_directory(tmp_path / "file")


def test_atomic_path_cleans_up_on_interrupt_and_remove_stale_temps(tmp_path):
    with pytest.raises(KeyboardInterrupt), atomic_path(tmp_path / "a.nc") as tmp:
        tmp.write_bytes(b"partial")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
    (tmp_path / ".a.nc.x1.tmp").write_bytes(b"")
    (tmp_path / ".step_0000001.pt.x2.tmp").write_bytes(b"")
    (tmp_path / ".b.nc.x3.tmp").write_bytes(b"")
    removed = remove_stale_temps(tmp_path, ["a.nc", "step_*.pt"])
    assert sorted(p.name for p in removed) == [".a.nc.x1.tmp", ".step_0000001.pt.x2.tmp"]
    assert _temps(tmp_path) == [".b.nc.x3.tmp"]


def test_a_forced_release_ends_every_holder_and_later_locks_are_independent(tmp_path):
    owner, inner = lock_directory(tmp_path), lock_directory(tmp_path)
    owner.release(force=True)
    assert not owner.held and not inner.held and not (tmp_path / LOCK_NAME).exists()
    again = lock_directory(tmp_path)
    inner.release()  # a stale holder must not release the new lock
    assert again.held and (tmp_path / LOCK_NAME).exists()
    again.release()
    assert not (tmp_path / LOCK_NAME).exists()
