"""benchmarks/gpu_check.py: the CPU run at the reduced size passes and prints its table; a failing
check exits 1; a missing CUDA device is reported, and the CUDA run itself only where CUDA exists."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from scoresde import cli

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def _run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT
    )


@pytest.fixture(scope="module")
def gpu_check():
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import gpu_check

        yield gpu_check
    finally:
        sys.path.remove(str(SCRIPT.parent))


@pytest.mark.slow  # ~15-35 s; test_a_failing_check_exits_1 runs the script's training check by default
def test_cpu_quick_run_passes_and_prints_the_table():
    res = _run("--device", "cpu", "--quick")
    assert res.returncode == 0, res.stdout + res.stderr
    out = res.stdout
    assert "| section | case | dtype | quantity | value | bound | verdict |" in out
    assert "FAIL" not in out and "0 of " in out and " checks failed" in out
    for name in cli.SAMPLERS:  # every sampler of the CLI's table, both dtypes, both checks
        rows = [line for line in out.splitlines() if line.startswith(f"| agreement | {name} (")]
        assert len(rows) == 2, (name, rows)
        assert sum(line.startswith(f"| identity | {name} (") for line in out.splitlines()) == 2
    for fast in ("ddim", "dpmsolver++", "unipc"):
        assert f"{fast} 10 steps | float32 | samples/s" in out
    assert "| bf16 autocast | mean loss, last quarter |" in out
    assert "first-step loss, relative difference" in out


def test_a_failing_check_exits_1(gpu_check, monkeypatch, capsys):
    monkeypatch.setattr(gpu_check, "LOSS_RTOL", 0.0)  # bf16 and float32 losses always differ a little
    assert gpu_check.main(["--device", "cpu", "--quick", "--only", "training"]) == 1
    out = capsys.readouterr().out
    assert "| FAIL |" in out and "1 of 3 checks failed" in out


def test_an_exception_is_a_failed_row(gpu_check):
    table = gpu_check.Table()
    table.fail("agreement", "x", "float32", ValueError("bad | input\nhere"))
    assert table.failed and "ValueError: bad / input here" in table.markdown()


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available")
def test_missing_cuda_is_reported():
    res = _run("--device", "cuda", "--only", "training")
    assert res.returncode == 2
    assert "CUDA is not available" in res.stdout and "--device cpu" in res.stdout


@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_run_passes():
    res = _run(timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
