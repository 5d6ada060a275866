r"""Ho et al.'s ancestral sampler of a DDPM chain through :func:`scoresde.sample`: :class:`DDPMAncestral`."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch

from .._kernels import ddpm_step, randn_like, time_vector
from ..ddpm import DDPMSDE, VARIANCES
from ..sde import SDE
from .base import CountedScore, FixedStepSampler

__all__ = ["DDPMAncestral"]


@dataclass
class _Chain:
    """Per-run state: the counted score, the chain's length and its betas and reverse variances."""

    score_fn: CountedScore
    N: int
    betas: list[float]
    variances: list[float]


class DDPMAncestral(FixedStepSampler):
    r"""Ho et al.'s ancestral sampler (Algorithm 2) through :func:`scoresde.sample`, for a :class:`~scoresde.DDPMSDE`.

    From :math:`x_N \sim \mathcal N(0, I)`, for :math:`i = N, \dots, 1` with :math:`t_i = i/N`:

    .. math::
        x_{i-1} = \frac{x_i + \beta_i\,s_\theta(x_i, t_i)}{\sqrt{\alpha_i}} + \sigma_i z,
        \qquad \sigma_i^2 = \beta_i \text{ or } \tilde\beta_i,

    which is :meth:`scoresde.DDPMSchedule.p_mean` with :math:`\hat\varepsilon = -\sqrt{1-\bar\alpha_i}\,s_\theta`;
    no noise is added on the last step, which ends at :math:`t = 0` (``eps = 0``). NFE = N.
    For continuous VP SDEs use ``PredictorCorrector(predictor="ancestral")`` instead.

    Parameters
    ----------
    variance : {"beta", "beta_tilde"}
        The reverse variance :math:`\sigma_i^2`.
    """

    #: the chain ends at t = 0 (the data) itself
    eps_may_be_zero = True

    def __init__(self, variance: str = "beta") -> None:
        if variance not in VARIANCES:
            raise ValueError(f"variance must be one of {VARIANCES}, got {variance!r}")
        # the number of steps is the chain's N (a property of the SDE): ``steps`` is a placeholder that
        # :meth:`time_points`, :meth:`max_saved_states` and :meth:`expected_nfe` do not use
        super().__init__(steps=1, eps=0.0, denoise=False)
        del self.steps
        self.variance = variance

    @property
    def nfe_per_step(self) -> int | None:
        """One score evaluation per step of the chain."""
        return 1

    def time_points(self, sde: SDE) -> np.ndarray:
        r"""The chain's times :math:`t_i = i/N`, :math:`i = N, \dots, 0`."""
        n = cast(DDPMSDE, sde).N  # check() accepts a DDPMSDE only
        return np.arange(n, -1, -1, dtype=np.float64) / n

    def prepare(self, sde: SDE, score_fn: CountedScore) -> _Chain:
        sch = cast(DDPMSDE, sde).schedule
        return _Chain(score_fn, sch.T, sch.betas.tolist(), sch.p_variance(self.variance).tolist())

    def step(
        self, chain: _Chain, sde: SDE, x: torch.Tensor, t: float, t_next: float, generator: torch.Generator
    ) -> torch.Tensor:
        i = round(t * chain.N)  # the grid holds t_i = i/N exactly
        score = chain.score_fn(x, time_vector(t, x))
        z = randn_like(x, generator) if i > 1 else None
        return ddpm_step(x, score, chain.betas[i - 1], math.sqrt(chain.variances[i - 1]), z)

    def params(self) -> dict[str, Any]:
        return {"variance": self.variance, "eps": self.eps}

    def max_saved_states(self, sde: SDE) -> int | None:
        r"""``N + 1``: the chain's states :math:`x_N, \dots, x_0`."""
        return sde.N + 1 if isinstance(sde, DDPMSDE) else None

    def expected_nfe(self, sde: SDE) -> int | None:
        """``N``, one score evaluation per step of the chain."""
        return sde.N if isinstance(sde, DDPMSDE) else None

    def check(self, sde: SDE) -> None:
        if not isinstance(sde, DDPMSDE):
            raise ValueError(
                f"DDPMAncestral runs the chain of a DDPMSDE (e.g. DDPMSchedule.linear().sde()), got "
                f"{type(sde).__name__}; for a continuous VP SDE use PredictorCorrector(predictor='ancestral')"
            )
