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
from typing import Any

import torch

from ._checks import broadcast_coef, check_finite_tensor, check_positive, check_positive_int
from ._kernels import time_vector
from .integrators.flow import METHODS, FlowODE, singular_at_T, velocity_field
from .integrators.ode import euler_heun_step
from .losses import velocity_loss
from .sde import LinearSDE, ScoreFn

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

    def v(y: torch.Tensor, t: float) -> torch.Tensor:
        return velocity_model(y, time_vector(t, y))

    for t0, t1 in zip(ts[:-1], ts[1:], strict=True):
        x = euler_heun_step(v, x, t0, t1, method == "heun")
    return x


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
