r"""Flow matching on the linear interpolation path (rectified flow; Liu et al. 2022, Lipman et al. 2022).

The path :math:`x_t = (1 - t)\,x_0 + t\,z`, :math:`z \sim \mathcal N(0, I)`, has the Gaussian kernel
:math:`\mathcal N((1-t)x_0, t^2 I)`: it is the :class:`RectifiedFlow` linear SDE with :math:`s(t) = 1 - t`,
:math:`\sigma(t) = t`. Its marginal velocity field

.. math:: v(x, t) = \mathbb E[z - x_0 \mid x_t = x]

transports :math:`p_0` (data, :math:`t = 0`) to :math:`p_1 = \mathcal N(0, I)` and is the
probability-flow velocity :math:`f(t)x - \tfrac12 g(t)^2 \nabla\log p_t(x)`. By Tweedie,
:math:`\mathbb E[z\mid x_t] = -t\,\nabla\log p_t` and
:math:`\mathbb E[x_0\mid x_t] = (x_t + t^2\nabla\log p_t)/(1-t)`, so

.. math:: v(x, t) = -\frac{x + t\,\nabla\log p_t(x)}{1 - t}.

Time conventions: data at ``t = 0``, noise at ``t = 1``; samplers integrate from 1 to 0.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, cast

import torch

from ._checks import broadcast_coef, check_finite_tensor, check_positive, check_positive_int
from .losses import velocity_loss
from .samplers import CountedScore, FixedStepSampler
from .schedules import TimeGrid, get_grid
from .sde import SDE, LinearSDE, ScoreFn
from .solvers import _check_linear, _OnGrid

__all__ = [
    "RectifiedFlow",
    "FlowODE",
    "velocity_field",
    "singular_at_T",
    "VelocityFn",
    "velocity",
    "flow_matching_loss",
    "reflow_data",
    "sample_flow",
    "METHODS",
]

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
METHODS = ("euler", "heun")


class RectifiedFlow(LinearSDE):
    r"""The linear SDE whose marginals are those of :math:`x_t = (1 - t)x_0 + t z` on :math:`[0, 1]`.

    .. math::
        s(t) = 1 - t, \quad \sigma(t) = t, \quad f(t) = \frac{\dot s}{s} = -\frac{1}{1-t}, \quad
        g(t)^2 = \frac{d\sigma^2}{dt} - 2 f \sigma^2 = 2t + \frac{2t^2}{1-t} = \frac{2t}{1-t},

    prior :math:`p_1 = \mathcal N(0, I)` exactly. ``f`` and ``g`` blow up at :math:`t = 1`; the marginals,
    the exact mixture score (``mixture.score(RectifiedFlow())``) and the velocity are fine there, so use
    :func:`velocity` / :func:`sample_flow` (which start at :math:`t = 1`) rather than the reverse SDE, or
    start SDE samplers at :math:`T_{\max} = 1 - 10^{-3}`. Only ``T = 1`` is supported.
    """

    def __init__(self, T: float = 1.0) -> None:
        if float(T) != 1.0:
            raise ValueError(f"RectifiedFlow is defined on [0, 1]; T must be 1.0, got {T!r}")
        super().__init__(T)

    def drift_coef(self, t: torch.Tensor) -> torch.Tensor:
        return -1.0 / (1.0 - t)

    def diffusion_coef(self, t: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(2.0 * t + 2.0 * t**2 / (1.0 - t))

    def mean_coef(self, t: torch.Tensor) -> torch.Tensor:
        return 1.0 - t

    def std(self, t: torch.Tensor) -> torch.Tensor:
        return t.clone()

    def mean_coef_dot(self, t: torch.Tensor) -> torch.Tensor:
        r""":math:`\dot s = -1` (exact; :math:`f s` is :math:`0/0` at :math:`t = 1`)."""
        return torch.full_like(t, -1.0)

    def std_dot(self, t: torch.Tensor) -> torch.Tensor:
        r""":math:`\dot\sigma = 1`."""
        return torch.ones_like(t)


def velocity(score_fn: ScoreFn, t_clip: float = 1e-4) -> VelocityFn:
    r"""The marginal velocity :math:`v(x, t) = -(x + t\,\nabla\log p_t(x)) / (1 - t)` from a score of the
    :class:`RectifiedFlow` marginals.

    The formula is :math:`0/0` at :math:`t = 1` (where :math:`\nabla\log p_1(x) = -x`); times are clamped to
    ``1 - t_clip``, an :math:`O(t_\mathrm{clip})` error since :math:`v` is smooth in :math:`t`.
    """
    t_clip = check_positive("t_clip", t_clip)

    def v(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        t = t.clamp(max=1.0 - t_clip)
        tb = broadcast_coef(t, x)
        return -(x + tb * score_fn(x, t)) / (1.0 - tb)

    return v


def flow_matching_loss(
    velocity_model: VelocityFn,
    x0: torch.Tensor,
    generator: torch.Generator | None = None,
    *,
    t: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""Conditional flow matching :math:`\mathbb E_{t\sim U[0,1], x_0, z}\|v_\theta(x_t, t) - (z - x_0)\|^2`.

    Minimised by the marginal velocity :math:`\mathbb E[z - x_0 \mid x_t]`. The squared error is averaged
    over features and batch; ``t`` (shape (batch,)) and ``z`` may be fixed.
    """
    check_finite_tensor("x0", x0, min_dim=2)
    if t is None:
        t = torch.rand(x0.shape[0], generator=generator, dtype=x0.dtype, device=x0.device)
    # the rectified-flow case of velocity_loss (target s' x0 + sigma' z = z - x0), with t drawn on [0, 1]
    return velocity_loss(RectifiedFlow(), velocity_model, x0, generator=generator, t=t, z=z)


@torch.no_grad()
def sample_flow(
    velocity_model: VelocityFn,
    shape: tuple[int, ...],
    steps: int = 100,
    generator: torch.Generator | None = None,
    method: str = "euler",
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    x1: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""Integrate :math:`dx/dt = v(x, t)` from :math:`t = 1` (:math:`x \sim \mathcal N(0, I)`) to 0.

    Uniform grid of ``steps`` steps; ``"euler"`` (``steps`` velocity calls) or ``"heun"`` (explicit
    trapezoid, ``2 * steps`` calls, second order). ``x1`` fixes the starting noise.
    """
    steps = check_positive_int("steps", steps)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if x1 is None:
        if device is None and generator is not None:
            device = generator.device
        x = torch.randn(*shape, generator=generator, dtype=dtype, device=device)
    else:
        x = x1.clone()
    ts = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64).tolist()
    b = x.shape[0]
    for t0, t1 in zip(ts[:-1], ts[1:], strict=True):
        dt = t1 - t0
        v0 = velocity_model(x, torch.full((b,), t0, dtype=x.dtype, device=x.device))
        x_e = x + dt * v0
        if method == "euler":
            x = x_e
        else:
            v1 = velocity_model(x_e, torch.full((b,), t1, dtype=x.dtype, device=x.device))
            x = x + 0.5 * dt * (v0 + v1)
    return x


class FlowODE(_OnGrid, FixedStepSampler):
    r"""Integrate the flow :math:`dx/dt = v(x, t)` from ``T`` to ``eps`` through :func:`scoresde.sample`.

    The velocity is the model's own (:meth:`scoresde.ScoreModel.velocity`, e.g. a flow-matching model)
    when ``score_fn`` is a :class:`~scoresde.ScoreModel` for the same SDE; otherwise it is built from the
    score, :math:`v = \dot s\,\hat x_0 + \dot\sigma\,\hat\varepsilon` with
    :math:`\hat\varepsilon = -\sigma\nabla\log p_t` and :math:`\hat x_0 = (x + \sigma^2\nabla\log p_t)/s`,
    which is the probability-flow drift :math:`f x - \tfrac12 g^2\nabla\log p_t` written without
    :math:`f` and :math:`g`. Where :math:`s(T) = 0` (:class:`RectifiedFlow`) a score-based velocity is
    evaluated at :math:`\min(t, T - t_\mathrm{clip})` instead of :math:`T` (an :math:`O(t_\mathrm{clip})`
    change of the first step); a velocity model is evaluated at ``T`` itself.

    Parameters
    ----------
    steps : int
        Number of steps on the grid.
    method : {"euler", "heun"}
        Euler (order 1, ``steps`` NFE) or Heun's explicit trapezoid (order 2, ``2 * steps`` NFE).
    grid : str or TimeGrid
        Time grid (``"uniform"``, ``"logsnr"``, ``"karras"``; see :mod:`scoresde.schedules`).
    eps : float
        End time.
    t_clip : float
        See above. Default 1e-4.
    """

    stochastic = False
    singular_T_ok = True

    def __init__(
        self,
        steps: int = 100,
        method: str = "euler",
        grid: str | TimeGrid = "uniform",
        eps: float = 1e-3,
        t_clip: float = 1e-4,
    ) -> None:
        super().__init__(steps, eps, denoise=False)
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        self.method = method
        self.time_grid = get_grid(grid)
        self.t_clip = check_positive("t_clip", t_clip)

    def params(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "method": self.method,
            "grid": repr(self.time_grid),
            "eps": self.eps,
            "t_clip": self.t_clip,
        }

    @property
    def nfe_per_step(self) -> int | None:
        """1 (``"euler"``) or 2 (``"heun"``) velocity evaluations per step."""
        return 1 if self.method == "euler" else 2

    def check(self, sde: SDE) -> None:
        super().check(sde)
        _check_linear(self, sde)
        self._check_grid(sde)

    def prepare(self, sde: SDE, score_fn: CountedScore) -> Callable[[torch.Tensor, float], torch.Tensor]:
        # check() accepts linear SDEs only
        return velocity_field(cast(LinearSDE, sde), score_fn, self.t_clip)

    def step(
        self,
        v: Callable[[torch.Tensor, float], torch.Tensor],
        sde: SDE,
        x: torch.Tensor,
        t: float,
        t_next: float,
        generator: torch.Generator,
    ) -> torch.Tensor:
        dt = t_next - t
        v0 = v(x, t)
        if self.method == "euler":
            return x + dt * v0
        v1 = v(x + dt * v0, t_next)
        return x + (0.5 * dt) * (v0 + v1)


class _VelocityModel(Protocol):
    """A model with a ``velocity(x, t)`` method, such as a :class:`~scoresde.ScoreModel`."""

    def velocity(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor: ...


def _vec(t: float, x: torch.Tensor) -> torch.Tensor:
    return torch.full((x.shape[0],), t, dtype=x.dtype, device=x.device)


def singular_at_T(sde: SDE) -> bool:
    """Whether :math:`s(T) = 0` (the path ends in pure noise, as for :class:`RectifiedFlow`)."""
    return isinstance(sde, LinearSDE) and float(sde.mean_coef(torch.tensor(sde.T, dtype=torch.float64))) == 0.0


def velocity_field(
    sde: LinearSDE, score_fn: ScoreFn, t_clip: float = 1e-4
) -> Callable[[torch.Tensor, float], torch.Tensor]:
    r"""The probability-flow velocity :math:`v(x, t)` (a callable of a state and a float time) for ``sde``.

    * If ``score_fn`` (or the function a :class:`~scoresde.samplers.CountedScore` wraps) has a
      ``velocity`` method and an ``sde`` equal to ``sde`` (a :class:`~scoresde.ScoreModel`), that is used;
      calls are counted on the ``CountedScore``.
    * Otherwise :math:`v = \dot s\,\hat x_0 + \dot\sigma\,\hat\varepsilon
      = \frac{\dot s}{s}(x + \sigma^2 s_\theta) - \dot\sigma\sigma\, s_\theta`, evaluated at
      :math:`\min(t, T - t_\mathrm{clip})` when :math:`s(T) = 0` (it is :math:`0/0` there).
    """
    inner = score_fn.score_fn if isinstance(score_fn, CountedScore) else score_fn
    model_sde = getattr(inner, "sde", None)
    same_sde = type(model_sde) is type(sde) and model_sde.params() == sde.params()
    if callable(getattr(inner, "velocity", None)) and same_sde:

        def v_model(x: torch.Tensor, t: float) -> torch.Tensor:
            # inner has a callable ``velocity`` (checked above)
            out = cast(_VelocityModel, inner).velocity(x, _vec(t, x))
            if isinstance(score_fn, CountedScore):
                score_fn.nfe += 1
                return score_fn.checked(x, out, "score_fn.velocity")
            return out

        return v_model

    t_max = sde.T - t_clip if singular_at_T(sde) else sde.T

    def v_score(x: torch.Tensor, t: float) -> torch.Tensor:
        t = min(t, t_max)
        tt = torch.tensor(t, dtype=torch.float64)
        s, sigma = float(sde.mean_coef(tt)), float(sde.std(tt))
        s_dot, sigma_dot = float(sde.mean_coef_dot(tt)), float(sde.std_dot(tt))
        score = score_fn(x, _vec(t, x))
        return (s_dot / s) * (x + sigma**2 * score) - (sigma_dot * sigma) * score

    return v_score


@torch.no_grad()
def reflow_data(
    sde: LinearSDE,
    model: ScoreFn,
    shape: tuple[int, ...],
    *,
    steps: int = 50,
    method: str = "heun",
    eps: float = 1e-4,
    seed: int = 0,
    data_map: Any = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> Any:
    r"""A reflow coupling (Liu, Gong & Liu 2022, "rectification"): pairs :math:`(x_0, z)` joined by the model's flow.

    Draws :math:`z \sim p_T`, integrates :math:`dx/dt = v_\theta(x, t)` from :math:`T` to ``eps`` with
    :class:`FlowODE` (``steps``, ``method``) and returns a :class:`scoresde.Dataset` of the end points
    with ``noise = z``. Training a velocity model on it (``TrainConfig(objective="flow_matching")``) fits
    the straight interpolation between coupled pairs, so the new flow's paths are straighter and few-step
    Euler sampling more accurate. ``data_map`` (a :class:`~scoresde.Dataset` or its ``config()``) supplies
    the map back to data space; ``shape`` is ``(n, *features)``.
    """
    from .datasets import Dataset
    from .sampling import sample

    ds = sample(
        sde,
        model,
        FlowODE(steps, method, eps=eps),
        shape=shape,
        seed=seed,
        dtype=dtype,
        device=device,
        save_at=2,
        progress=progress,
    )
    x0 = torch.from_numpy(ds["x"].values[-1]).to(device)
    z = torch.from_numpy(ds["x"].values[0]).to(device)
    cfg = data_map.config() if hasattr(data_map, "config") else dict(data_map or {})
    params = {
        "steps": steps,
        "method": method,
        "eps": eps,
        "seed": seed,
        "n": int(shape[0]),
        "source": cfg.get("name", "model"),
    }
    return Dataset(x0, "reflow", cfg.get("shift", 0.0), cfg.get("scale", 1.0), params, noise=z)
