"""Progress bars: ``tqdm.auto`` throttled, silent in a Jupyter kernel without ipywidgets.

Every long loop of the library goes through :func:`progress_bar`, so a bar updates at most every
``MININTERVAL`` seconds (a notebook saved after a run keeps a handful of outputs, not one per
step) and ``progress=False`` silences it. In a Jupyter kernel the bar is a widget when
``ipywidgets`` is installed (``pip install scoresde[notebook]``); without it the bar is disabled
rather than falling back to text written to stderr at every update.
"""

from __future__ import annotations

import sys
from functools import lru_cache
from typing import Any

__all__ = ["progress_bar", "MININTERVAL"]

#: seconds between two redraws of a bar
MININTERVAL = 0.5


def _in_jupyter_kernel() -> bool:
    if "ipykernel" not in sys.modules:
        return False
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - ipykernel depends on IPython
        return False
    shell = get_ipython()
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


@lru_cache(maxsize=1)
def _widgets_available() -> bool:
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        return False
    return True


def progress_bar(iterable: Any = None, *, disable: bool = False, **kwargs: Any) -> Any:
    """A ``tqdm`` bar (``tqdm.auto`` flavour) with ``mininterval`` = :data:`MININTERVAL`, ``leave=False``.

    ``disable=True`` (a caller's ``progress=False``) gives a bar that draws nothing. Other keyword
    arguments go to ``tqdm``.
    """
    kwargs.setdefault("mininterval", MININTERVAL)
    kwargs.setdefault("leave", False)
    in_kernel = _in_jupyter_kernel()
    if in_kernel and _widgets_available():
        from tqdm.auto import tqdm  # type: ignore[import-untyped]  # tqdm ships no type information
    else:
        # tqdm.auto must not even be imported in a kernel without ipywidgets: the import itself warns
        # ("IProgress not found") on stderr; there the text bar is disabled rather than written to stderr
        from tqdm.std import tqdm  # type: ignore[import-untyped]  # tqdm ships no type information

        disable = disable or in_kernel
    return tqdm(iterable, disable=disable, **kwargs)
