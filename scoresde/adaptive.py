"""The adaptive-step reverse-SDE sampler :class:`AdaptiveSDE` (re-exported from
:mod:`scoresde.integrators.adaptive`)."""

from __future__ import annotations

from .integrators.adaptive import AdaptiveSDE

__all__ = ["AdaptiveSDE"]
