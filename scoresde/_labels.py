"""Class-label checks shared by the conditional networks, the data sets and the trainer."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["check_class_labels", "check_num_classes"]


def check_num_classes(name: str, value: Any) -> int | None:
    """``None`` (an unconditional network) or an integer ``>= 1``; anything else raises naming ``name``."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be None (unconditional) or a positive int, got {type(value).__name__}")
    if int(value) < 1:
        raise ValueError(f"{name} must be None (unconditional) or an integer >= 1, got {int(value)}")
    return int(value)


def check_class_labels(
    name: str,
    labels: Any,
    batch: int,
    num_classes: int,
    device: torch.device,
    *,
    allow_null: bool = True,
) -> torch.Tensor:
    """Return ``labels`` as an int64 tensor of shape ``(batch,)`` on ``device``.

    ``labels`` is ``None`` (every sample gets the null class ``num_classes``, if ``allow_null``), one class
    for every sample (a Python or NumPy integer, or a 0-d integer tensor), or a ``(batch,)`` integer tensor.
    Classes are ``0..num_classes - 1``, and ``num_classes`` itself is the null class (classifier-free
    guidance) where ``allow_null``. Floating, boolean or complex labels, other shapes and labels out of
    range raise ``TypeError`` / ``ValueError`` naming ``name``.
    """
    top = num_classes if allow_null else num_classes - 1
    valid = f"0..{num_classes - 1}" + (f", or {num_classes} for the null class" if allow_null else "")
    if labels is None:
        if not allow_null:
            raise ValueError(f"{name} is required (integer class labels in {valid})")
        return torch.full((batch,), num_classes, dtype=torch.int64, device=device)
    if isinstance(labels, bool) or isinstance(labels, np.bool_):
        raise TypeError(f"{name} must be integer class labels, got bool")
    if isinstance(labels, (int, np.integer)):
        value = int(labels)
        if not 0 <= value <= top:
            raise ValueError(f"{name}={value} is out of range: expected a class in {valid}")
        return torch.full((batch,), value, dtype=torch.int64, device=device)
    if not isinstance(labels, torch.Tensor):
        raise TypeError(
            f"{name} must be an int or an integer torch.Tensor of shape ({batch},), got {type(labels).__name__}"
        )
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise TypeError(
            f"{name} must hold integer class labels, got dtype {labels.dtype}; convert with {name}.long() if the "
            "values are whole numbers"
        )
    if labels.dim() == 0:
        labels = labels.reshape(1).expand(batch)
    elif tuple(labels.shape) != (batch,):
        raise ValueError(
            f"{name} must have shape ({batch},) (one class per sample) or be a scalar, got shape {tuple(labels.shape)}"
        )
    if labels.numel() and bool(((labels < 0) | (labels > top)).any()):
        bad = labels[(labels < 0) | (labels > top)]
        raise ValueError(f"{name} holds class {int(bad[0])}, out of range: expected classes in {valid}")
    out: torch.Tensor = labels.to(device=device, dtype=torch.int64)
    return out
