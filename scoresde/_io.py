"""Safe output files: atomic writes, exclusive output directories, clean-up of stale temporary files.

* :func:`atomic_path`: readers see the old file or the complete new one, never a partial write;
* :func:`lock_directory`: one run at a time writes into an output directory (``fcntl.flock`` on a
  lock file in it, so the lock dies with the process, even under ``kill -9``);
* :func:`remove_stale_temps`: the temporary files that a killed run left behind (``.{name}.*.tmp``);
* :func:`check_writable_dir`: a directory that exists (or can be created) and can be written, checked
  before any work starts.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import os
import tempfile
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "atomic_path",
    "temp_pattern",
    "remove_stale_temps",
    "check_writable_dir",
    "OutputDirError",
    "DirectoryLock",
    "lock_directory",
    "LOCK_NAME",
]

#: the lock file that :func:`lock_directory` creates in an output directory
LOCK_NAME = ".scoresde.lock"


class OutputDirError(ValueError):
    """An output directory that cannot be used: not a directory, not writable, or in use by another run."""


def temp_pattern(name: str) -> str:
    """The ``fnmatch`` pattern of the temporary files that :func:`atomic_path` creates for ``name``."""
    return f".{name}.*.tmp"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success fsync it and ``os.replace`` it onto ``path``.

    The temporary file (``.{name}.XXXXXXXX.tmp``, see :func:`temp_pattern`) lives in the same directory
    (so the rename is atomic), gets the usual 0644 permissions (``mkstemp`` creates 0600), and is
    removed if the block raises, including on ``KeyboardInterrupt`` and ``SystemExit``. A process killed
    outright (``SIGKILL``) cannot remove it: :func:`remove_stale_temps` does at the next start.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def remove_stale_temps(directory: str | os.PathLike[str], names: Iterable[str]) -> list[Path]:
    """Remove the temporary files of :func:`atomic_path` for the file names (or ``fnmatch`` patterns) ``names``.

    Call it only while holding the directory's lock (:func:`lock_directory`): then no other run can
    be writing them, and every such file was left by a run that was killed. Returns the removed paths.
    """
    directory = Path(directory)
    patterns = [temp_pattern(n) for n in names]
    removed = []
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return []
    for entry in entries:
        if any(fnmatch.fnmatchcase(entry.name, p) for p in patterns) and entry.is_file(follow_symlinks=False):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
    return removed


def check_writable_dir(directory: str | os.PathLike[str], what: str = "output directory") -> Path:
    """Create ``directory`` if needed and check that files can be created in it; raise :class:`OutputDirError`."""
    directory = Path(directory)
    try:
        if directory.exists() and not directory.is_dir():
            raise OutputDirError(f"{what} {str(directory)!r} exists and is not a directory")
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputDirError(f"cannot create {what} {str(directory)!r}: {err.strerror or err}") from None
    if not os.access(directory, os.W_OK | os.X_OK):
        raise OutputDirError(
            f"{what} {str(directory)!r} is not writable (permissions {_mode(directory)}); "
            "choose another directory or make it writable (chmod u+wx)"
        )
    return directory


def _mode(path: Path) -> str:
    try:
        return oct(path.stat().st_mode & 0o777)
    except OSError:
        return "unknown"


@dataclass
class _Held:
    fd: int
    count: int
    path: Path


class DirectoryLock:
    """An exclusive lock on an output directory, shared by every holder in this process.

    The lock is ``fcntl.flock(LOCK_EX | LOCK_NB)`` on ``directory/.scoresde.lock``: another *process*
    that asks for it gets :class:`OutputDirError` at once; inside one process the lock is
    re-entrant (counted), so that e.g. the command line and the :class:`~scoresde.Trainer` it creates
    can both hold it. ``flock`` locks vanish with their process, so a killed run never leaves a
    stale lock; the lock file itself is removed when the last holder releases it.
    """

    _held: dict[tuple[int, int], _Held] = {}  # keyed by (st_dev, st_ino) of the directory
    _mutex = threading.Lock()

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = check_writable_dir(directory)
        self._key: tuple[int, int] | None = None
        self._entry: _Held | None = None
        with self._mutex:
            st = os.stat(self.directory)
            key = (st.st_dev, st.st_ino)
            held = self._held.get(key)
            if held is not None:
                held.count += 1
            else:
                held = self._held[key] = _Held(self._acquire(), 1, self.directory / LOCK_NAME)
            self._key, self._entry = key, held

    def _acquire(self) -> int:
        import fcntl

        lock = self.directory / LOCK_NAME
        for _ in range(100):  # the holder may remove the lock file between our open and flock: retry
            try:
                fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as err:
                raise OutputDirError(
                    f"cannot create the lock file {str(lock)!r} in output directory {str(self.directory)!r}: "
                    f"{err.strerror or err}; choose a writable directory"
                ) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                os.close(fd)
                if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise OutputDirError(
                        f"output directory {str(self.directory)!r} is in use by another scoresde run "
                        f"(it holds {LOCK_NAME}); wait for it to finish or choose another directory"
                    ) from None
                raise
            try:
                same = os.fstat(fd).st_ino == os.stat(lock).st_ino
            except FileNotFoundError:
                same = False
            if same:
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
                return fd
            os.close(fd)  # we locked a lock file that its holder had just removed
        raise OutputDirError(f"could not lock output directory {str(self.directory)!r}")  # pragma: no cover

    @property
    def held(self) -> bool:
        """Whether this holder still holds the lock (false after :meth:`release` or a forced release)."""
        return self._key is not None and self._held.get(self._key) is self._entry

    def release(self, force: bool = False) -> None:
        """Give the lock up (idempotent); the last holder in this process unlocks and removes the lock file.

        ``force=True`` unlocks the directory for every holder in this process (the owner of a run,
        e.g. the command line, when the run ends); their later releases do nothing.
        """
        with self._mutex:
            key, entry = self._key, self._entry
            self._key = self._entry = None
            if key is None or self._held.get(key) is not entry or entry is None:
                return  # released already, or forcibly by the owner of the run
            entry.count = 0 if force else entry.count - 1
            if entry.count == 0:
                del self._held[key]
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)  # while still locked: a waiting run then retries on a new file
                os.close(entry.fd)  # closing the descriptor releases the flock

    def __enter__(self) -> DirectoryLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.release()


def lock_directory(directory: str | os.PathLike[str]) -> DirectoryLock:
    """Check that ``directory`` is writable (creating it) and lock it for this process; see :class:`DirectoryLock`."""
    return DirectoryLock(directory)
