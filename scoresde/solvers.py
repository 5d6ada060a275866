"""Fast deterministic samplers on any time grid (re-exported from :mod:`scoresde.integrators`).

* :class:`Euler`, :class:`Heun` — the probability-flow ODE stepped in :math:`t`,
  :mod:`scoresde.integrators.fixed_grid`;
* :class:`DDIM`, :class:`DPMSolverPP`, :class:`UniPC` and ``SOLVERS`` (name -> class) — the exponential
  integrators in data-prediction form, :mod:`scoresde.integrators.exponential`.
"""

from __future__ import annotations

from .integrators.exponential import DDIM, SOLVERS, DPMSolverPP, UniPC
from .integrators.fixed_grid import Euler, Heun

__all__ = ["Euler", "Heun", "DDIM", "DPMSolverPP", "UniPC", "SOLVERS"]
