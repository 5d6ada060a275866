"""Fast deterministic samplers on any time grid (re-exported from :mod:`scoresde.integrators`).

* :class:`Euler`, :class:`Heun` — the probability-flow ODE stepped in :math:`t`,
  :mod:`scoresde.integrators.fixed_grid`;
* :class:`DDIM`, :class:`DPMSolverPP`, :class:`UniPC` and ``SOLVERS`` (name -> class) — the exponential
  integrators in data-prediction form, :mod:`scoresde.integrators.exponential`;
* :class:`DPMSolverPPSinglestep` — DPM-Solver++ single-step (2S, 3S), :mod:`scoresde.integrators.singlestep`;
* :class:`AdaptiveDPMSolver` — DPM-Solver-12 / -23 with error control, :mod:`scoresde.integrators.dpm_adaptive`.
"""

from __future__ import annotations

from .integrators.dpm_adaptive import AdaptiveDPMSolver
from .integrators.exponential import DDIM, SOLVERS, DPMSolverPP, UniPC
from .integrators.fixed_grid import Euler, Heun
from .integrators.singlestep import DPMSolverPPSinglestep

__all__ = ["Euler", "Heun", "DDIM", "DPMSolverPP", "DPMSolverPPSinglestep", "AdaptiveDPMSolver", "UniPC", "SOLVERS"]
