#!/usr/bin/env -S python3 -m nox -f
# /// script
# dependencies = ["nox>=2025.10.14"]
# ///
"""nox sessions: tests (fast suite), tests_slow (statistical acceptance), lint (ruff), studies, docs, gallery.

Every session installs torch==2.13.0 first (the CPU build on the project's machines), so that
the plain ``torch`` requirement does not pull a multi-GB CUDA build.
"""

import shutil
from pathlib import Path

import nox

nox.needs_version = ">=2025.10.14"
# plain venv + pip: pip takes the local CPU build of torch==2.13.0; uv would download a CUDA build
nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True

TORCH = "torch==2.13.0"


def _install(session: nox.Session) -> None:
    session.install(TORCH)
    session.install("-e", ".[test]")


@nox.session(default=True)
def tests(session: nox.Session) -> None:
    """The fast test suite (slow acceptance tests deselected), a few minutes on 2 cores."""
    _install(session)
    session.run("pytest", *(session.posargs or ["-q"]))


@nox.session
def tests_slow(session: nox.Session) -> None:
    """Only the slow statistical acceptance tests (10,000 samples per SDE x sampler at defaults)."""
    _install(session)
    session.run("pytest", "-m", "slow", *(session.posargs or ["-q"]))


@nox.session(default=True)
def lint(session: nox.Session) -> None:
    """ruff (lint and format check) over the tree, and mypy (strict) over the library."""
    session.install(TORCH)
    session.install("-e", ".[dev]")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("mypy")


STUDIES = (
    "core_accuracy",
    "train_toy",
    "digits",
    "accuracy_cost",
    "default_sampler",
    "convergence",
    "likelihood",
)
#: one torch / BLAS thread per study process: small batches run fastest single-threaded on a shared machine
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


@nox.session
def studies(session: nox.Session) -> None:
    """Every study at its default size (minutes each on 2 cores); outputs in studies/output/ (git-ignored)."""
    _install(session)
    for name in session.posargs or STUDIES:
        session.run("python", "-m", f"studies.{name}", "--quiet")


def _study_has_output(name: str) -> bool:
    out = Path("studies") / "output" / name
    return (out / "table.md").is_file() and any(out.glob("*.png"))


def _build_docs(session: nox.Session, sphinx_args: list[str]) -> None:
    """The checker's own tests, ``sphinx -W --keep-going -E`` into docs/_build/html, then ``docs/check_site.py``."""
    session.run("python", "-m", "pytest", "-q", "-m", "docs", "tests/test_docs_checker.py")
    shutil.rmtree("docs/_build/html", ignore_errors=True)  # viewcode keeps stale pages in incremental builds
    session.run(
        "python", "-m", "sphinx", "-W", "--keep-going", "-E", "-b", "html", "docs", "docs/_build/html",
        *sphinx_args, env=ONE_THREAD,
    )  # fmt: skip
    session.run("python", "docs/check_site.py", "docs/_build/html")


@nox.session
def docs(session: nox.Session) -> None:
    """Build the documentation offline (warnings are errors, tutorials executed) and check it in Chromium.

    Runs first, at the small documentation size (``--docs``: a few minutes for all of them on 2 cores), every
    study in STUDIES whose outputs are missing (the gallery shows them; outputs already present, of any size,
    are reused), then the checker's own tests, ``sphinx -W --keep-going`` into docs/_build/html, and
    ``docs/check_site.py`` (headless Chromium: links, images, math, console errors). Needs Debian's
    ``chromium`` and ``chromium-driver``. ``nox -s gallery`` builds the same site from default-size studies.
    """
    session.install(TORCH)
    session.install("-e", ".[docs]")
    for name in STUDIES:
        if not _study_has_output(name):
            session.run("python", "-m", f"studies.{name}", "--docs", "--quiet", "--threads", "1", env=ONE_THREAD)
    _build_docs(session, session.posargs)


@nox.session
def gallery(session: nox.Session) -> None:
    """The full-size gallery: rerun every study in STUDIES at its default size (``nox -s gallery -- --full``:
    at full size; about an hour on 2 cores), replacing their outputs, then build and check the site as
    ``nox -s docs`` does."""
    session.install(TORCH)
    session.install("-e", ".[docs]")
    size = [a for a in session.posargs if a == "--full"]
    for name in STUDIES:
        session.run("python", "-m", f"studies.{name}", *size, "--quiet", "--threads", "1", env=ONE_THREAD)
    _build_docs(session, [a for a in session.posargs if a != "--full"])


if __name__ == "__main__":
    nox.main()
