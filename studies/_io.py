"""Small helpers shared by the studies: output folders, provenance, tables and atomic writes.

Every file is written to a temporary file in its destination folder and then moved into place with
:func:`os.replace`, so an interrupted run never leaves a truncated netCDF, figure or table behind.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shlex
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import xarray as xr

from scoresde._io import atomic_path

from ._sweep import EXTRA, workers_type

__all__ = [
    "study_parser",
    "size",
    "report",
    "prepare",
    "output_dir",
    "provenance",
    "atomic_path",
    "write_text",
    "write_netcdf",
    "save_figure",
    "save_figures",
    "write_csv",
    "markdown_table",
    "write_tables",
]


def study_parser(
    study: str,
    doc: str | None,
    full_help: str,
    default_out: Path,
    threads_help: str = "torch intra-op threads (default 1)",
    sweep: bool = False,
    docs_help: str = "the documentation build's small size (every figure and table, smaller sweeps)",
    docs_size: bool = True,
) -> argparse.ArgumentParser:
    """The options every study has (``--full``, ``--docs``, ``--out``, ``--quiet``, ``--threads``); add a study's
    own to it.

    ``study`` is the module (``"studies.<name>"``), ``doc`` its docstring (the first paragraph describes it).
    ``--full`` and ``--docs`` exclude each other; :func:`size` names the size they select. A study without a
    documentation size (``docs_size=False``) refuses ``--docs`` with a usage error that says so.
    With ``sweep=True`` (a study whose cells run through :class:`studies._sweep.Sweep`) also ``--workers N``
    (a local dask cluster of ``N`` processes; default 1, in-process) and ``--scheduler ADDRESS`` (a running
    cluster), which exclude each other.
    """
    ap = argparse.ArgumentParser(prog=f"python -m {study}", description=(doc or "").split("\n\n")[0])
    sizes = ap.add_mutually_exclusive_group()
    sizes.add_argument("--full", action="store_true", help=full_help)
    if docs_size:
        sizes.add_argument("--docs", action="store_true", help=docs_help)
    else:
        sizes.add_argument("--docs", action=_NoDocsSize, nargs=0, default=False, help="(no documentation size)")
    ap.add_argument("--out", type=Path, default=default_out, help=f"output folder (default {default_out})")
    ap.add_argument("--quiet", action="store_true", help="no progress bars and no printed tables (errors only)")
    ap.add_argument("--threads", type=int, default=1, help=threads_help)
    if not sweep:
        return ap
    where = ap.add_mutually_exclusive_group()
    where.add_argument(
        "--workers",
        type=workers_type,
        default=1,
        help=f"run the independent cells on a local dask cluster of this many processes, one thread each "
        f"(default 1: in-process, without dask; needs {EXTRA} otherwise); the results do not depend on it",
    )
    where.add_argument(
        "--scheduler",
        default=None,
        metavar="ADDRESS",
        help="run the cells on the dask cluster behind this scheduler (tcp://host:port) instead",
    )
    return ap


class _NoDocsSize(argparse.Action):
    """``--docs`` of a study that has no documentation size: a usage error (exit status 2) naming the sizes."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: Any, values: Any, option: Any = None) -> None:
        parser.error("there is no --docs size for this study; run it at its default size or with --full")


def size(args: argparse.Namespace) -> str:
    """The size the options of :func:`study_parser` select: ``"full"``, ``"docs"`` or ``"default"``."""
    return "full" if args.full else "docs" if args.docs else "default"


def report(args: argparse.Namespace, text: str) -> None:
    """Print ``text`` (a study's markdown tables) unless ``--quiet``."""
    if not args.quiet:
        print(text)


def prepare(args: argparse.Namespace) -> Path:
    """Apply ``--threads`` (at least 1) and create the ``--out`` folder; return it."""
    torch.set_num_threads(max(1, args.threads))
    return output_dir(args.out)


def output_dir(path: str | os.PathLike[str]) -> Path:
    """Create ``path`` (and its parents) if needed and return it as a :class:`~pathlib.Path`."""
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    return out


def provenance(study: str, argv: Sequence[str], **extra: Any) -> dict[str, Any]:
    """netCDF-safe attributes: study, command line, versions, date, host; ``extra`` is JSON-encoded
    unless it is already a string or a number."""
    import scipy

    import scoresde

    attrs: dict[str, Any] = {
        "study": study,
        "command": shlex.join(["python", "-m", study, *argv]),
        "scoresde_version": scoresde.__version__,
        "torch_version": torch.__version__,
        "numpy_version": np.__version__,
        "scipy_version": scipy.__version__,
        "xarray_version": xr.__version__,
        "python_version": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count() or 0,
        "torch_threads": torch.get_num_threads(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    for key, value in extra.items():
        ok = isinstance(value, str | int | float) and not isinstance(value, bool)
        attrs[key] = value if ok else json.dumps(value)
    return attrs


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Atomically write ``text`` (UTF-8) to ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_netcdf(ds: xr.Dataset, path: str | os.PathLike[str]) -> Path:
    """Atomically write ``ds`` to ``path`` as netCDF-4 (zlib-compressed data variables)."""
    encoding = {name: {"zlib": True, "complevel": 4} for name, var in ds.data_vars.items() if var.dtype.kind in "fiu"}
    with atomic_path(path) as tmp:
        ds.to_netcdf(tmp, engine="netcdf4", format="NETCDF4", encoding=encoding)
    return Path(path)


def save_figure(
    fig: Any, stem: str | os.PathLike[str], formats: Sequence[str] = ("png", "svg"), dpi: int = 150
) -> list[Path]:
    """Atomically save a matplotlib figure as ``stem.<fmt>`` for every format; return the paths."""
    paths = []
    for fmt in formats:
        path = Path(f"{stem}.{fmt}")
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=fmt, dpi=dpi, bbox_inches="tight")
        paths.append(path)
    return paths


def save_figures(out: str | os.PathLike[str], figures: Mapping[str, Any]) -> None:
    """Save each ``{stem: figure}`` as ``out/stem.png`` and ``.svg`` (:func:`save_figure`), then close it."""
    import matplotlib.pyplot as plt

    for stem, fig in figures.items():
        save_figure(fig, Path(out) / stem)
        plt.close(fig)


def write_tables(
    out: str | os.PathLike[str],
    heading: str,
    attrs: Mapping[str, Any],
    timing: str,
    tables: Mapping[str, tuple[str, pd.DataFrame, str]],
    extra: Sequence[str] = (),
) -> str:
    """Write ``table_<key>.csv`` for every table and ``table.md``; return the markdown.

    ``table.md`` holds ``# heading``, a provenance line (command, versions, date, then ``timing``), one
    ``## title`` section per table with a non-empty markdown rendering, then the ``extra`` paragraphs.
    """
    out = Path(out)
    parts = [
        f"# {heading}\n",
        f"`{attrs['command']}` — scoresde {attrs['scoresde_version']}, torch {attrs['torch_version']}, "
        f"{attrs['created']}, {timing}\n",
    ]
    for key, (title, df, md) in tables.items():
        write_csv(df, out / f"table_{key}.csv")
        if md:
            parts.append(f"## {title}\n\n{md}\n")
    parts.extend(extra)
    text = "\n".join(parts)
    write_text(out / "table.md", text)
    return text


def write_csv(df: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Atomically write ``df`` (raw values, full precision) to ``path`` as CSV without the index."""
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)
    return Path(path)


def markdown_table(df: pd.DataFrame, formats: Mapping[str, str | Callable[[Any], str]] | None = None) -> str:
    """Render ``df`` as a GitHub markdown table; ``formats`` maps a column to a format spec
    (``".3g"``) or to a function of the value. Missing values print as an em dash."""
    formats = formats or {}

    def cell(col: str, value: Any) -> str:
        if value is None or (isinstance(value, float) and np.isnan(value)):
            return "—"
        fmt = formats.get(col)
        if callable(fmt):
            return fmt(value)
        return format(value, fmt) if fmt else str(value)

    header = "| " + " | ".join(map(str, df.columns)) + " |"
    rule = "|" + "|".join("---" for _ in df.columns) + "|"
    body = [
        "| " + " | ".join(cell(c, v) for c, v in zip(df.columns, row, strict=True)) + " |"
        for row in df.itertuples(index=False, name=None)
    ]
    return "\n".join([header, rule, *body])
