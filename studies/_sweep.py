"""Run a study's independent cells in-process or on a ``dask.distributed`` cluster.

A study sweeps over cells (SDE x sampler x grid x NFE x seed ...). Each cell is a call
``fn(**params)`` of a module-level function that is a pure function of its parameters: it seeds its
own generators from them and touches no shared state. :class:`Sweep` runs a list of such cells and
returns their results *in the order of the list*, whatever order they finish in, so that the study
gathers them into its Dataset exactly as an in-process loop would: one worker or many give the same
numbers, bit for bit.

* ``workers=1`` and no scheduler (the default): a plain loop in this process; dask is not imported.
* ``workers=n > 1``: a :class:`distributed.LocalCluster` of ``n`` worker processes with one thread each.
* ``scheduler="tcp://host:port"``: the cluster behind that scheduler (started by ``dask scheduler``
  and ``dask worker``, which must be able to import ``studies`` and ``scoresde``).

Every cell runs with ``torch.set_num_threads(threads)`` (the study's ``--threads``), in the workers too,
so that reductions split the same way as in-process. A cell that raises stops the sweep with a
:class:`CellError` that names the cell's parameters; the remaining cells are cancelled.

To put a study on it: write the body of its loop as a module-level function of the loop's parameters
that returns plain data (numbers, numpy arrays, dicts of them), build the list of parameter dicts in
the loop's order, call ``sweep.map(fn, cells)`` and fill the arrays from the returned list; in
``main`` open ``with Sweep.from_args(args) as sweep:`` (the options come from
:func:`studies._io.study_parser`).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

__all__ = ["CellError", "Sweep", "run_cells", "workers_type", "describe"]

#: the optional extra that provides dask.distributed
EXTRA = "scoresde[studies]"


class CellError(RuntimeError):
    """A cell of a sweep raised; the message names the study, the cell's index and parameters."""


def workers_type(text: str) -> int:
    """argparse type of ``--workers``: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--workers must be an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"--workers must be an integer >= 1, got {value}")
    return value


def describe(params: Mapping[str, Any]) -> str:
    """``name=value, ...`` for the parameters of a cell (dataclass configurations by their class name)."""
    parts = []
    for key, value in params.items():
        if hasattr(value, "__dataclass_fields__"):
            value = f"<{type(value).__name__}>"
        else:
            value = repr(value)
        parts.append(f"{key}={value}")
    return ", ".join(parts)


def _importable(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` itself, or, when it was defined in a study run as ``python -m studies.<name>`` (module
    ``__main__``), the same function imported from ``studies.<name>`` so that workers import it by name
    instead of receiving a pickled copy of the main module's globals."""
    if getattr(fn, "__module__", None) != "__main__":
        return fn
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    if spec is None or not spec.name:
        raise ValueError(
            f"cell function {fn.__qualname__!r} is defined in a script run by path; run the study as "
            "'python -m studies.<name>' so that dask workers can import it"
        )
    return getattr(importlib.import_module(spec.name), fn.__qualname__)


def _call(fn: Callable[..., Any], params: Mapping[str, Any], threads: int | None) -> Any:
    if threads is not None:
        torch.set_num_threads(threads)
    return fn(**params)


def _failure(study: str, index: int, total: int, params: Mapping[str, Any], exc: BaseException) -> CellError:
    return CellError(
        f"{study}: cell {index + 1} of {total} ({describe(params)}) raised {type(exc).__name__}: {exc}. "
        "Rerun that cell alone with --workers 1 to debug it in-process."
    )


class Sweep:
    """Where a study's cells run: in this process, on a local cluster, or behind a scheduler.

    Parameters
    ----------
    workers : int
        Worker processes of a local cluster (one thread each); 1 runs in-process without dask.
    scheduler : str, optional
        Address of a running dask scheduler (``tcp://host:port``); excludes ``workers > 1``.
    threads : int, optional
        ``torch.set_num_threads`` for every cell (``None``: leave the thread count as it is).
    processes : bool
        Local cluster with worker processes (default) or threads in this process; torch's thread
        count is per process, so with threads the ``threads`` setting is shared by all workers.

    Use it as a context manager: the cluster (if any) starts on entry and stops on exit.
    """

    def __init__(
        self, workers: int = 1, scheduler: str | None = None, threads: int | None = None, processes: bool = True
    ) -> None:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
        if scheduler is not None and workers != 1:
            raise ValueError(
                f"give either a scheduler address ({scheduler!r}) or a number of local workers ({workers}), not both: "
                "the cluster behind a scheduler has its own workers"
            )
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise ValueError(f"threads must be an integer >= 1 or None, got {threads!r}")
        self.workers, self.scheduler, self.threads, self.processes = workers, scheduler, threads, processes
        self._client: Any = None
        self._cluster: Any = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Sweep:
        """From the ``--workers``, ``--scheduler`` and ``--threads`` options of :func:`studies._io.study_parser`."""
        return cls(workers=args.workers, scheduler=args.scheduler, threads=max(1, args.threads))

    @property
    def distributed(self) -> bool:
        """Whether the cells run through dask."""
        return self.workers > 1 or self.scheduler is not None

    def __enter__(self) -> Sweep:
        if not self.distributed:
            return self
        try:
            from distributed import Client, LocalCluster
        except ImportError as exc:
            raise ImportError(
                f"running a study on several workers or a scheduler needs dask.distributed: pip install '{EXTRA}' "
                "(or run with --workers 1)"
            ) from exc
        if self.scheduler is not None:
            try:
                self._client = Client(self.scheduler, timeout="20s")
            except (OSError, TimeoutError, ValueError) as exc:
                raise ConnectionError(
                    f"cannot reach the dask scheduler at --scheduler {self.scheduler!r} ({exc}); start one with "
                    "'dask scheduler' and workers with 'dask worker ADDRESS', or run with --workers N"
                ) from exc
        else:
            self._cluster = LocalCluster(
                n_workers=self.workers, threads_per_worker=1, processes=self.processes, dashboard_address=None
            )
            self._client = Client(self._cluster)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._client is not None:
            self._client.close()
        if self._cluster is not None:
            self._cluster.close()
        self._client = self._cluster = None

    def map(
        self,
        fn: Callable[..., Any],
        cells: Sequence[Mapping[str, Any]],
        progress: bool = True,
        desc: str = "cells",
    ) -> list[Any]:
        """``[fn(**cell) for cell in cells]``, in that order, run where this sweep runs.

        ``desc`` names the study (or part) in the progress bar and in a :class:`CellError`.
        """
        cells = [dict(c) for c in cells]
        total = len(cells)
        bar = tqdm(total=total, desc=desc, disable=not progress, leave=False, mininterval=0.5)
        with bar:
            if not self.distributed:
                results = []
                for i, params in enumerate(cells):
                    try:
                        results.append(_call(fn, params, self.threads))
                    except Exception as exc:
                        raise _failure(desc, i, total, params, exc) from exc
                    bar.update()
                return results
            if self._client is None:
                raise RuntimeError("a distributed Sweep must be entered (use 'with Sweep(...) as sweep:') first")
            from distributed import as_completed

            fn = _importable(fn)
            tag = uuid.uuid4().hex[:8]  # keys unique across calls on one long-lived cluster
            futures = [
                self._client.submit(_call, fn, params, self.threads, pure=False, key=f"{desc}-{tag}-{i}")
                for i, params in enumerate(cells)
            ]
            index = {f.key: i for i, f in enumerate(futures)}
            out: list[Any] = [None] * total
            try:
                for fut in as_completed(futures):
                    i = index[fut.key]
                    if fut.status == "error":
                        exc = fut.exception()
                        raise _failure(desc, i, total, cells[i], exc) from exc
                    out[i] = fut.result()
                    bar.update()
            finally:
                self._client.cancel([f for f in futures if not f.done()])
            return out


def run_cells(
    fn: Callable[..., Any],
    cells: Sequence[Mapping[str, Any]],
    *,
    workers: int = 1,
    scheduler: str | None = None,
    threads: int | None = None,
    progress: bool = True,
    desc: str = "cells",
) -> list[Any]:
    """One-shot :meth:`Sweep.map`: start the cluster, run ``cells`` through ``fn``, stop the cluster."""
    with Sweep(workers=workers, scheduler=scheduler, threads=threads) as sweep:
        return sweep.map(fn, cells, progress=progress, desc=desc)
