"""nox sessions: tests (fast suite), tests_slow (statistical acceptance), lint (ruff).

Every session installs torch==2.13.0 first (the CPU build on the project's machines), so that
the plain ``torch`` requirement does not pull a multi-GB CUDA build.
"""

import nox

nox.options.sessions = ["lint", "tests"]
nox.options.reuse_existing_virtualenvs = True

TORCH = "torch==2.13.0"


def _install(session: nox.Session) -> None:
    session.install(TORCH)
    session.install("-e", ".[test]")


@nox.session
def tests(session: nox.Session) -> None:
    """The fast test suite (slow acceptance tests deselected), a few minutes on 2 cores."""
    _install(session)
    session.run("pytest", *(session.posargs or ["-q"]))


@nox.session
def tests_slow(session: nox.Session) -> None:
    """Only the slow statistical acceptance tests (10,000 samples per SDE x sampler at defaults)."""
    _install(session)
    session.run("pytest", "-m", "slow", *(session.posargs or ["-q"]))


@nox.session
def lint(session: nox.Session) -> None:
    """ruff over the library, tests, studies and benchmarks."""
    session.install("ruff>=0.5")
    session.run("ruff", "check", ".")


STUDIES = ("core_accuracy", "train_toy", "digits")


@nox.session
def studies(session: nox.Session) -> None:
    """Every study at its default size (minutes each on 2 cores); outputs in studies/output/ (git-ignored)."""
    _install(session)
    for name in session.posargs or STUDIES:
        session.run("python", "-m", f"studies.{name}", "--quiet")
