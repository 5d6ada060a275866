"""Conversion of sample sets (torch tensors, NumPy arrays, xarray DataArrays) to torch tensors.

Shared by :mod:`scoresde.metrics` and :mod:`scoresde.plotting`: one place decides which containers,
dtypes and shapes a sample set may have, and names the argument in every error.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["as_samples", "common_dtype_device"]


def _from_dataarray(name: str, a: Any) -> np.ndarray:
    dims = tuple(a.dims)
    if "time" in dims:
        raise ValueError(
            f"{name} has a 'time' dimension (dims {dims}); pass one state of the run, e.g. {name}.isel(time=-1)"
        )
    if "sample" in dims and dims[0] != "sample":
        a = a.transpose("sample", ...)
    return np.asarray(a.values)


def as_samples(name: str, a: Any, *, min_samples: int = 1, finite: bool = True) -> torch.Tensor:
    """Return the sample set ``a`` of shape ``(n, *feature_shape)`` as a detached floating torch tensor.

    ``a`` may be a :class:`torch.Tensor` (its dtype and device are kept), a NumPy array or
    anything :func:`numpy.asarray` converts to a numeric array (its dtype is kept: float64 stays
    float64, float32 stays float32), or an :class:`xarray.DataArray` (its values; a ``sample``
    dimension is moved first, a ``time`` dimension is refused). Integer inputs become float64
    (exact for integers up to :math:`2^{53}`). Boolean, complex and non-numeric inputs, scalars,
    fewer than ``min_samples`` samples, and (unless ``finite=False``) NaN or infinite entries raise
    an error naming ``name``.
    """
    import xarray as xr

    if isinstance(a, xr.Dataset):
        raise TypeError(f"{name} must be a sample array, got an xarray.Dataset; pass one variable, e.g. ds['x']")
    if isinstance(a, xr.DataArray):
        a = _from_dataarray(name, a)
    if isinstance(a, torch.Tensor):
        t = a.detach()
        if t.dtype == torch.bool or t.is_complex():
            raise TypeError(f"{name} must hold real numbers (a floating or integer dtype), got dtype {t.dtype}")
    else:
        try:
            arr = np.asarray(a)
        except (TypeError, ValueError) as err:
            raise TypeError(
                f"{name} must be a torch.Tensor, NumPy array or xarray.DataArray of numbers, "
                f"got {type(a).__name__} ({err})"
            ) from None
        if arr.dtype.kind not in "iuf":
            raise TypeError(
                f"{name} must hold real numbers (a floating or integer dtype), got {type(a).__name__} "
                f"with dtype {arr.dtype}"
            )
        if not arr.dtype.isnative:
            arr = arr.astype(arr.dtype.newbyteorder("="))
        if not arr.flags.writeable:
            arr = arr.copy()
        t = torch.from_numpy(arr)
    if not t.is_floating_point():
        t = t.to(torch.float64)
    if t.ndim == 0:
        raise ValueError(f"{name} must have shape (n, *feature_shape), got a scalar")
    if t.shape[0] < min_samples:
        raise ValueError(f"{name} must contain at least {min_samples} samples, got {t.shape[0]}")
    if t[0].numel() == 0:
        raise ValueError(f"{name} has an empty feature shape {tuple(t.shape[1:])}")
    if finite and not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).reshape(t.shape[0], -1).any(1).sum())
        raise ValueError(f"{name} contains NaN or infinite values (in {bad} of {t.shape[0]} samples)")
    return t


def common_dtype_device(named: dict[str, Any], converted: dict[str, torch.Tensor]) -> tuple[torch.dtype, torch.device]:
    """Dtype and device for computing on several converted sample sets.

    The dtype is the promotion (:func:`torch.promote_types`) of the inputs' dtypes, with half
    precision computed in float32. The device is that of the torch inputs (NumPy and xarray
    inputs live on the CPU and follow them); torch inputs on different devices raise.
    """
    dtype = torch.float32
    for t in converted.values():
        dtype = torch.promote_types(dtype, t.dtype)
    if dtype not in (torch.float32, torch.float64):
        dtype = torch.float32
    devices = {name: converted[name].device for name, a in named.items() if isinstance(a, torch.Tensor)}
    if len(set(devices.values())) > 1:
        desc = ", ".join(f"{name} on {dev}" for name, dev in devices.items())
        raise ValueError(f"the sample sets are on different devices ({desc}); move them to one device")
    device = next(iter(devices.values())) if devices else torch.device("cpu")
    return dtype, device
