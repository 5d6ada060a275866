"""Former name of :mod:`scoresde.time_grids` (the time grids of the fixed-step samplers), re-exported."""

from __future__ import annotations

from .time_grids import (
    GRIDS,
    KarrasSigma,
    LogSNRUniform,
    TimeGrid,
    TimeQuadratic,
    UniformTime,
    get_grid,
    invert_log_snr,
    log_coefs,
    log_snr,
    noise_level,
)

__all__ = [
    "TimeGrid",
    "UniformTime",
    "LogSNRUniform",
    "TimeQuadratic",
    "KarrasSigma",
    "GRIDS",
    "get_grid",
    "log_snr",
    "noise_level",
    "log_coefs",
    "invert_log_snr",
]
