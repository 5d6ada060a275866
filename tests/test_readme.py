"""The code printed in README.md and in the docs' quickstart runs, as printed, at a reduced size.

The fenced blocks are read from the files at test time, so an edit to the README is tested.

Python blocks (```` ```python ````): the blocks of one file are executed in order in one namespace
(a later block may use names of an earlier one), compiled with the file's name and line numbers so a
traceback points at the README line. The text is executed unchanged; what is reduced is the work of
the library's heavy entry points, which are wrapped on the ``scoresde`` namespace for the duration of
the test (:func:`small_scoresde`, settings in :data:`SMALL`): ``sd.sample`` and ``sd.reflow_data``
draw at most ``SMALL["n_samples"]`` samples with at most ``SMALL["sampler_steps"]`` sampler steps, and
``sd.train`` runs at most ``SMALL["train_steps"]`` optimiser steps; progress bars are off. Warnings
are errors while a block runs.

Command lines (```` ```bash ```` blocks of the "Command line" section): each line is run as
``python -m scoresde ...`` in a subprocess whose working directory is a temporary directory shared by
all lines (run in README order, so ``sample --checkpoint runs/moons/last.pt`` finds the checkpoint of
the earlier ``train`` line), with the small-size options of :func:`small_cli_args` added (one place
to adjust them). Each must exit 0 with nothing on stderr (no warning, no traceback) and write its
files. ``--help`` lines run as they are. A ``torchrun <options> -m scoresde ...`` line runs as
``python -m torch.distributed.run <options> -m scoresde ...`` (with ``OMP_NUM_THREADS=1``, so that
torchrun does not warn that it sets it). The set-up commands are not run (they create virtual
environments); their form is checked.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import re
import shlex
import subprocess
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import scoresde as sd
from scoresde.cli import DEFAULT_SAMPLER, SAMPLER_FALLBACK  # what `scoresde sample` uses without --sampler

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
#: pages whose ```python blocks are a quickstart (the tutorials are executed by the docs build)
QUICKSTART_PAGES = ("README.md", "docs/index.md", "docs/quickstart.md")

#: the reduced sizes of the Python blocks
SMALL = {"n_samples": 256, "sampler_steps": 20, "train_steps": 30}


# ---------------------------------------------------------------------------------------
# markdown
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Block:
    """A fenced code block: its info string, text, the line of its first code line, its section."""

    lang: str
    code: str
    line: int
    section: str


FENCE = re.compile(r"^(`{3,})\s*([^`\s]*)[^`]*$")


def fenced_blocks(path: Path) -> list[Block]:
    """The fenced code blocks of a markdown file, with the heading they stand under."""
    blocks: list[Block] = []
    section = ""
    fence: str | None = None
    lang, start, lines = "", 0, []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if fence is None:
            m = FENCE.match(line)
            if m:
                fence, lang, start, lines = m.group(1), m.group(2), number + 1, []
            elif line.startswith("#"):
                section = line.lstrip("#").strip()
        elif line.strip() == fence:
            blocks.append(Block(lang, "\n".join(lines) + "\n", start, section))
            fence = None
        else:
            lines.append(line)
    assert fence is None, f"{path}: unclosed code fence opened at line {start - 1}"
    return blocks


def test_fenced_blocks_parser(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# A\n\n```python\nx = 1\n```\n\n## B (two)\n````bash\nls\n\n```\n````\n", encoding="utf-8")
    assert fenced_blocks(page) == [Block("python", "x = 1\n", 4, "A"), Block("bash", "ls\n\n```\n", 9, "B (two)")]
    page.write_text("```python\nx = 1\n", encoding="utf-8")
    with pytest.raises(AssertionError, match="unclosed"):
        fenced_blocks(page)


# ---------------------------------------------------------------------------------------
# python blocks
# ---------------------------------------------------------------------------------------
def _small_sampler(sampler: Any) -> Any:
    """A copy of ``sampler`` with at most ``SMALL["sampler_steps"]`` steps (samplers without steps as they are)."""
    if sampler is None:  # the default of sd.sample
        sampler = sd.EulerMaruyama()
    steps = getattr(sampler, "steps", None)
    if isinstance(steps, int) and steps > SMALL["sampler_steps"]:
        sampler = copy.copy(sampler)
        sampler.steps = SMALL["sampler_steps"]
        assert sampler.params()["steps"] == SMALL["sampler_steps"]
    return sampler


def _small_shape(shape: Any) -> Any:
    return None if shape is None else (min(int(shape[0]), SMALL["n_samples"]), *shape[1:])


class Calls(list[str]):
    """The names of the wrapped calls made, in order, and the working directory of the blocks."""

    def __init__(self, cwd: Path) -> None:
        super().__init__()
        self.cwd = cwd


@pytest.fixture
def small_scoresde(monkeypatch, tmp_path) -> Iterator[Calls]:
    """Wrap scoresde's heavy entry points to run at ``SMALL`` sizes; cwd is ``tmp_path``.

    Yields the list of the wrapped calls made, so a test can check that the reduction applied.
    """
    real_sample, real_train, real_reflow = sd.sample, sd.train, sd.reflow_data
    calls = Calls(cwd=tmp_path)

    def sample(sde, score_fn, sampler=None, *, shape=None, progress=False, **kwargs):
        calls.append("sample")
        return real_sample(
            sde, score_fn, _small_sampler(sampler), shape=_small_shape(shape), progress=progress, **kwargs
        )

    def reflow_data(sde, model, shape, *, steps=50, progress=False, **kwargs):
        calls.append("reflow_data")
        steps = min(steps, SMALL["sampler_steps"])
        return real_reflow(sde, model, _small_shape(shape), steps=steps, progress=progress, **kwargs)

    def train(sde, model, data, config=None, *args, progress=False, **kwargs):
        calls.append("train")
        config = config if config is not None else sd.TrainConfig()
        config = dataclasses.replace(config, steps=min(config.steps, SMALL["train_steps"]))
        return real_train(sde, model, data, config, *args, progress=progress, **kwargs)

    monkeypatch.setattr(sd, "sample", sample)
    monkeypatch.setattr(sd, "reflow_data", reflow_data)
    monkeypatch.setattr(sd, "train", train)
    monkeypatch.chdir(tmp_path)  # files the blocks write (run.nc, ...) land here
    yield calls


def run_python_blocks(page: str) -> dict[str, Any]:
    """Execute the ```python blocks of ``page`` in order in one namespace; warnings are errors."""
    path = ROOT / page
    blocks = [b for b in fenced_blocks(path) if b.lang == "python"]
    assert blocks, f"{page} has no ```python block"
    namespace: dict[str, Any] = {"__name__": "__readme__"}
    for block in blocks:
        # padded so that tracebacks give the line numbers of the markdown file
        code = compile("\n" * (block.line - 1) + block.code, str(path), "exec")
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            exec(code, namespace)
    return namespace


@pytest.mark.parametrize("page", QUICKSTART_PAGES)
def test_python_blocks_run(page, small_scoresde):
    ns = run_python_blocks(page)
    assert "sample" in small_scoresde  # every quickstart samples: the reduction was in effect
    ds = ns["ds"]
    assert ds["x"].dims[:2] == ("time", "sample")
    assert ds.sizes["sample"] <= SMALL["n_samples"]
    if page == "README.md":  # what the tour's comments say of the run it saved
        import xarray as xr

        with xr.open_dataset(small_scoresde.cwd / "run.nc") as run:
            assert run["x"].dims == ("time", "sample", "feature")
            assert run.sizes["time"] == 11
            assert run["time"].values[0] == 1.0 and run["time"].values[-1] == pytest.approx(1e-3)
            assert run.attrs["nfe"] > 0 and "sampler_params" in run.attrs
        assert (small_scoresde.cwd / "run.png").stat().st_size > 0


def test_small_scoresde_reduces_and_restores(small_scoresde):
    sde = sd.VPSDE()
    target = sd.eight_gaussians()
    ds = sd.sample(sde, target.score(sde), sd.EulerMaruyama(), shape=(10_000, 2))
    assert ds.sizes["sample"] == SMALL["n_samples"]
    assert ds.attrs["nfe"] == SMALL["sampler_steps"]
    small = sd.EulerMaruyama(steps=5)
    assert _small_sampler(small) is small  # fewer steps than the limit: unchanged
    assert small_scoresde == ["sample"]


def test_small_scoresde_is_undone():
    import scoresde.sampling

    assert sd.sample is scoresde.sampling.sample  # the fixture's wrappers do not outlive their test


# ---------------------------------------------------------------------------------------
# command lines
# ---------------------------------------------------------------------------------------
#: toy data sets generated with --n-data points (the others are fixed data sets)
TOY_DATA = ("moons", "swiss_roll", "checkerboard", "eight_gaussians", "ring", "grid", "pinwheel")


def _options(argv: list[str]) -> dict[str, str | None]:
    """``--opt value`` / ``--flag`` pairs of an argument list (after the sub-command)."""
    opts: dict[str, str | None] = {}
    i = 1
    while i < len(argv):
        assert argv[i].startswith("-"), f"unexpected positional argument {argv[i]!r} in {argv}"
        if i + 1 < len(argv) and not argv[i + 1].startswith("-"):
            opts[argv[i]], i = argv[i + 1], i + 2
        else:
            opts[argv[i]], i = None, i + 1
    return opts


def small_cli_args(argv: list[str]) -> list[str]:
    """A README command line (without ``scoresde``) with the options that make it small and quiet.

    Options of the line itself that are set here are replaced; the rest are kept.
    """
    command, opts = argv[0], _options(argv)
    small: dict[str, str | None] = {"--quiet": None}
    if command == "sample":
        small["--n-samples"] = "200"
        sampler = opts.get("--sampler") or DEFAULT_SAMPLER.get(str(opts.get("--sde")), SAMPLER_FALLBACK)
        if sampler == "ode":  # adaptive RK45: --steps is ignored (with a warning)
            small.update({"--rtol": "1e-3", "--atol": "1e-3"})
        elif sampler != "ddpm":  # the DDPM chain has its own N
            small["--steps"] = "20"
        if "--chunk-size" in opts:  # several chunks, so that every rank of a torchrun line has some
            small["--chunk-size"] = "50"
    elif command == "train":
        small.update({"--steps": "30", "--batch-size": "32"})
        if opts.get("--data") in TOY_DATA:
            small["--n-data"] = "2000"
    merged = {**opts, **small}
    out = [command]
    for key, value in merged.items():
        out += [key] if value is None else [key, value]
    return out


def test_small_cli_args():
    assert small_cli_args(["sample", "--sde", "ve", "--sampler", "ode", "--n-samples", "20000", "--seed", "3"]) == [
        "sample",
        "--sde",
        "ve",
        "--sampler",
        "ode",
        "--n-samples",
        "200",
        "--seed",
        "3",
        "--quiet",
        "--rtol",
        "1e-3",
        "--atol",
        "1e-3",
    ]
    assert small_cli_args(["sample", "--sde", "ddpm"]) == ["sample", "--sde", "ddpm", "--quiet", "--n-samples", "200"]
    assert small_cli_args(["train", "--data", "digits", "--steps", "5000"])[:4] == [
        "train",
        "--data",
        "digits",
        "--steps",
    ]
    assert "--n-data" not in small_cli_args(["train", "--data", "digits"])


def readme_cli_lines() -> list[tuple[int, str]]:
    """(line number, text) of every command of the ```bash blocks of README's "Command line" section."""
    lines = []
    for block in fenced_blocks(README):
        if block.section == "Command line" and block.lang == "bash":
            lines += [(block.line + i, text) for i, text in enumerate(block.code.splitlines()) if text.strip()]
    return lines


def quickstart_cli_lines() -> list[tuple[int, str]]:
    """(line number, text) of the ``scoresde`` commands in the ```bash blocks of the docs' quickstart
    (its ``pip install`` lines are not run)."""
    lines = []
    for block in fenced_blocks(ROOT / "docs" / "quickstart.md"):
        if block.lang == "bash":
            lines += [(block.line + i, t) for i, t in enumerate(block.code.splitlines()) if t.startswith("scoresde")]
    return lines


def _expected_files(argv: list[str]) -> list[str]:
    """The files a README command writes (relative to its working directory)."""
    opts = _options(argv)
    if argv[0] == "sample":
        out = opts.get("--out") or "out"
        if out.endswith(".zarr"):
            return [f"{out}/zarr.json", f"{out}/x/zarr.json"]
        return [f"{out}/samples.nc", f"{out}/samples.png"]
    out = opts.get("--out") or f"runs/{opts['--data']}"
    return [f"{out}/last.pt", f"{out}/history.nc", f"{out}/loss.png"]


class CliSession:
    """Runs the README's command lines in order, once each, in one working directory."""

    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd
        self.lines = readme_cli_lines()
        self.results: dict[int, tuple[list[str], subprocess.CompletedProcess[str]]] = {}
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        self.env.pop("PYTHONWARNINGS", None)

    def run(self, index: int) -> tuple[list[str], subprocess.CompletedProcess[str]]:
        """The result of line ``index``, after running the earlier lines it may depend on."""
        for i in range(index + 1):
            if i not in self.results:
                number, text = self.lines[i]
                argv = shlex.split(text, comments=True)
                launcher, env = [sys.executable], self.env
                if argv[0] == "torchrun":  # torchrun OPTIONS -m scoresde ...: the same launcher, as a module
                    m = argv.index("-m")
                    assert argv[m + 1] == "scoresde", f"README.md:{number}: {text!r} does not run scoresde"
                    launcher = [sys.executable, "-m", "torch.distributed.run", *argv[1:m]]
                    argv, env = argv[m + 1 :], {**self.env, "OMP_NUM_THREADS": "1"}
                assert argv[0] == "scoresde", f"README.md:{number}: {text!r} is not a scoresde command"
                args = argv[1:] if "--help" in argv else small_cli_args(argv[1:])
                out = _options(args).get("--out")
                assert out is None or not Path(out).is_absolute(), f"README.md:{number}: --out {out} is absolute"
                proc = subprocess.run(
                    [*launcher, "-m", "scoresde", *args],
                    cwd=self.cwd,
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=300,
                )
                self.results[i] = (args, proc)
        return self.results[index]


@pytest.fixture(scope="module")
def cli_session(tmp_path_factory) -> CliSession:
    return CliSession(tmp_path_factory.mktemp("readme-cli"))


def test_readme_has_cli_lines():
    lines = readme_cli_lines()
    assert len(lines) >= 2, lines
    assert any("--help" in text for _, text in lines)
    assert quickstart_cli_lines(), "the quickstart shows no scoresde command"


@pytest.mark.parametrize("number,text", quickstart_cli_lines())
def test_quickstart_cli_line_runs(number, text, tmp_path):
    argv = shlex.split(text, comments=True)
    args = small_cli_args(argv[1:])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    env.pop("PYTHONWARNINGS", None)
    proc = subprocess.run(
        [sys.executable, "-m", "scoresde", *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    where = f"docs/quickstart.md:{number}: scoresde {shlex.join(args)}\n{proc.stdout}\n{proc.stderr}"
    assert proc.returncode == 0 and proc.stderr == "", where
    missing = [f for f in _expected_files(args) if not (tmp_path / f).is_file()]
    assert not missing, f"{where}\nmissing files {missing}"


@pytest.mark.parametrize(
    "index",
    range(len(readme_cli_lines())),
    ids=[shlex.join(shlex.split(t, comments=True)) for _, t in readme_cli_lines()],
)
def test_cli_line_runs(index, cli_session):
    number, text = cli_session.lines[index]
    args, proc = cli_session.run(index)
    where = f"README.md:{number}: scoresde {shlex.join(args)}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    assert proc.returncode == 0, where
    assert proc.stderr == "", where  # no warning, no traceback, no progress bar (--quiet)
    if "--help" in args:
        assert proc.stdout.startswith(f"usage: scoresde {args[0]}"), where
        return
    missing = [f for f in _expected_files(args) if not (cli_session.cwd / f).is_file()]
    assert not missing, f"{where}\nmissing files {missing}"


# ---------------------------------------------------------------------------------------
# set-up commands (checked, not run)
# ---------------------------------------------------------------------------------------
def test_setup_is_two_commands_of_the_documented_form():
    import tomllib

    blocks = [b for b in fenced_blocks(README) if b.section.startswith("Set-up")]
    assert blocks and blocks[0].section == "Set-up (two commands)"
    assert [b.lang for b in blocks] == ["bash", "bash"], blocks
    commands = [b.code.strip() for b in blocks]
    assert all("\n" not in c for c in commands), commands
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    extras = pyproject["project"]["optional-dependencies"]
    readme = README.read_text(encoding="utf-8")
    for command, (install, run) in zip(
        commands, [(".", "scoresde sample"), (".[test]", "python -m pytest")], strict=True
    ):
        parts = [p.strip() for p in command.split("&&")]
        assert len(parts) == 5, command
        venv, activate, torch_pin, editable, last = parts
        assert venv == "python3 -m venv .venv" and activate == ". .venv/bin/activate", command
        pin = re.fullmatch(r"pip install (torch==\d+\.\d+\.\d+)", torch_pin)
        assert pin, command
        assert f"`{pin.group(1)}` is installed first" in readme  # the sentence that explains the pin
        assert shlex.split(editable) == ["pip", "install", "-e", install], command
        extra = re.fullmatch(r"\.\[(\w+)\]", install)
        assert extra is None or extra.group(1) in extras, f"no extra {install} in pyproject.toml"
        assert last == run, command
    from scoresde.cli import build_parser

    build_parser().parse_args(shlex.split(commands[0].split("&&")[-1])[1:])  # a valid scoresde command line
