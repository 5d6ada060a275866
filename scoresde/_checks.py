"""Argument checks shared by the library: clear errors that name the argument and the fix."""

from __future__ import annotations

import math
import operator
from collections.abc import Iterator
from contextlib import contextmanager
from numbers import Real
from typing import Any

import numpy as np
import torch

__all__ = [
    "check_finite_tensor",
    "check_positive",
    "check_positive_int",
    "check_time",
    "broadcast_coef",
    "check_seed",
    "check_tolerances",
    "tolerance_floor",
    "SEED_LIMIT",
    "check_num_threads",
    "torch_threads",
]


def check_positive(name: str, value: float, *, allow_zero: bool = False) -> float:
    """Return ``value`` as a float, or raise ``ValueError`` if it is not a finite positive number."""
    given: object = value  # callers may pass anything; the checks below are what make it a float
    if isinstance(given, bool) or not isinstance(given, Real):
        raise TypeError(f"{name} must be a real number, got {type(given).__name__}")
    value = float(given)
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be finite and {bound}, got {value!r}")
    return value


def check_positive_int(name: str, value: int, *, minimum: int = 1) -> int:
    """Return ``value`` if it is an integer ``>= minimum``, else raise ``ValueError``."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, got bool")
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}") from None
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value}")
    return int(value)


def check_finite_tensor(name: str, x: torch.Tensor, *, min_dim: int = 1) -> torch.Tensor:
    """Raise if ``x`` is not a floating tensor with at least ``min_dim`` dims and finite entries."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(
            f"{name} must be a floating-point tensor (float32 or float64), got {x.dtype}; "
            f"convert it with {name}.float() or {name}.double()"
        )
    if x.dim() < min_dim:
        raise ValueError(f"{name} must have at least {min_dim} dimension(s) (batch first), got shape {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or inf values; clean the input before passing it")
    return x


def check_time(t: float | torch.Tensor, T: float, *, name: str = "t", lower: float = 0.0) -> None:
    """Raise ``ValueError`` unless every entry of ``t`` is finite and lies in ``[lower, T]``."""
    if isinstance(t, torch.Tensor):
        if t.dim() > 1:
            raise ValueError(f"{name} must be a scalar or a 1-D batch vector, got shape {tuple(t.shape)}")
        if t.numel() == 0:
            raise ValueError(f"{name} must not be empty")
        bad = ~torch.isfinite(t) | (t < lower) | (t > T)
        if bool(bad.any()):
            raise ValueError(
                f"{name} must lie in [{lower:g}, T={T:g}]; got values in [{float(t.min()):g}, {float(t.max()):g}]"
            )
        return
    given: object = t  # callers may pass anything; the checks below are what make it a float
    if isinstance(given, bool) or not isinstance(given, Real):
        raise TypeError(f"{name} must be a float or a tensor, got {type(given).__name__}")
    t = float(given)
    if not math.isfinite(t) or t < lower or t > T:
        raise ValueError(f"{name} must lie in [{lower:g}, T={T:g}], got {t!r}")


def broadcast_coef(c: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Reshape a time coefficient of shape ``()`` or ``(batch,)`` to broadcast against ``x``."""
    if c.dim() == 0:
        return c
    return c.reshape(c.shape[0], *([1] * (x.dim() - 1)))


#: seeds are drawn into a ``torch.Generator``, whose seed is a signed 64-bit integer
SEED_LIMIT = 2**63


def check_seed(name: str, seed: int) -> int:
    """Return ``seed`` as an int if it lies in ``[0, 2**63)``, else raise ``TypeError``/``ValueError``.

    ``torch.Generator.manual_seed`` wraps larger values (``2**63`` gives the stream of ``0``) and
    overflows past ``2**64``, so every seed the library accepts is checked here, with one message.
    """
    if isinstance(seed, bool):
        raise TypeError(f"{name} must be an integer in [0, 2**63), got bool")
    try:
        seed = operator.index(seed)
    except TypeError:
        raise TypeError(f"{name} must be an integer in [0, 2**63), got {type(seed).__name__}") from None
    if not 0 <= seed < SEED_LIMIT:
        raise ValueError(f"{name} must be an integer in [0, 2**63), got {seed}")
    return int(seed)


def check_num_threads(name: str, num_threads: int | None) -> int | None:
    """Return ``None`` or a positive int thread count, else raise ``TypeError``/``ValueError``."""
    if num_threads is None:
        return None
    return check_positive_int(name, num_threads)


@contextmanager
def torch_threads(num_threads: int | None) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(num_threads)``; restore the previous value after it.

    ``None`` leaves torch's intra-op thread pool alone. The previous value comes back also when the
    block raises, so a library call changes no global state.
    """
    if num_threads is None:
        yield
        return
    num_threads = check_positive_int("num_threads", num_threads)
    previous = torch.get_num_threads()
    torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def tolerance_floor(dtype: torch.dtype) -> float:
    r"""Smallest ``rtol`` and ``atol`` accepted for data of ``dtype``: :math:`\max(100\,\epsilon_{64}, \epsilon_d)`.

    Adaptive solvers control their error in float64 (scipy) or in the state's dtype, and cannot
    resolve relative errors below :math:`100\,\epsilon_{64} \approx 2.2\times10^{-14}`; the score is
    evaluated in ``dtype``, whose machine epsilon :math:`\epsilon_d` (:math:`1.2\times10^{-7}` for
    float32) bounds the accuracy of every evaluation. Smaller tolerances only make the solver take
    ever smaller steps.
    """
    return max(100 * torch.finfo(torch.float64).eps, torch.finfo(dtype).eps)


def check_tolerances(rtol: float, atol: float, dtype: torch.dtype) -> tuple[float, float]:
    """``(rtol, atol)`` as positive floats of at least :func:`tolerance_floor` of ``dtype``, else ``ValueError``."""
    rtol, atol = check_positive("rtol", rtol), check_positive("atol", atol)
    floor = tolerance_floor(dtype)
    for name, tol in (("rtol", rtol), ("atol", atol)):
        if tol < floor:
            raise ValueError(
                f"{name}={tol:g} is below the resolution of the computation: for {str(dtype).replace('torch.', '')} "
                f"data {name} must be >= {floor:.3g} (max of 100 eps of float64 and eps of x's dtype); "
                "use a larger tolerance, or float64 data for tolerances below float32's eps"
            )
    return rtol, atol


def as_float64(name: str, value: Any) -> torch.Tensor:
    """``value`` (a tensor or array-like of numbers) as a float64 CPU tensor; ``TypeError`` / ``ValueError``
    naming ``name`` if it is not numeric or holds NaN or inf."""
    try:
        t = torch.as_tensor(
            value.detach().cpu() if isinstance(value, torch.Tensor) else np.asarray(value, dtype=np.float64),
            dtype=torch.float64,
        )
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be array-like of numbers: {err}") from None
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or inf")
    return t
