r"""Denoising score matching in continuous time (Song et al. 2021, eq. 7).

For a linear SDE with kernel :math:`x_t = s(t) x_0 + \sigma(t) z`, the conditional score is
:math:`\nabla \log p_{0t}(x_t \mid x_0) = -z / \sigma(t)`, and the loss

.. math::
    \mathcal L(\theta) = \mathbb E_{t \sim U[\varepsilon, T]}\,\mathbb E_{x_0, z}\,
        \lambda(t)\, \big\| s_\theta(x_t, t) + z / \sigma(t) \big\|^2

is minimised by the true score :math:`\nabla \log p_t` (Vincent 2011). Weightings:

* ``"sigma2"``: :math:`\lambda = \sigma(t)^2`, i.e. :math:`\| \sigma s_\theta + z \|^2`, the
  noise-prediction (epsilon) loss of DDPM;
* ``"likelihood"``: :math:`\lambda = g(t)^2`, which makes the loss an upper bound on the negative
  log-likelihood (Song et al. 2021b, *Maximum likelihood training of score-based diffusion models*).

As in score_sde, the squared norm is reduced over the feature dimensions by ``reduce="mean"`` or
``"sum"`` and then averaged over the batch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import torch

from ._checks import broadcast_coef, check_finite_tensor, check_positive
from .sde import SDE, LinearSDE

__all__ = ["dsm_loss", "velocity_loss", "WEIGHTINGS"]

WEIGHTINGS = ("sigma2", "likelihood")


def dsm_loss(
    sde: SDE,
    model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x0: torch.Tensor,
    *,
    weighting: str = "sigma2",
    eps: float = 1e-5,
    reduce: str = "mean",
    generator: torch.Generator | None = None,
    t: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""Continuous-time denoising score-matching loss, a scalar tensor.

    Parameters
    ----------
    sde : SDE
        A linear SDE (VP, sub-VP, VE): the kernel :math:`\mathcal N(s x_0, \sigma^2 I)` is used.
    model : callable
        The score model :math:`s_\theta(x, t)` (e.g. :class:`scoresde.nets.ScoreModel`).
    x0 : tensor, shape ``(batch, *features)``
        Clean data.
    weighting : {"sigma2", "likelihood"}
        :math:`\lambda(t) = \sigma(t)^2` or :math:`g(t)^2`.
    eps : float
        Times are drawn uniformly in :math:`[\varepsilon, T]`; default 1e-5.
    reduce : {"mean", "sum"}
        How the squared error is reduced over the feature dimensions (then averaged over the batch).
    generator : torch.Generator, optional
        Draws ``t`` and ``z`` (reproducible training).
    t, z : tensor, optional
        Fix the times (shape (batch,)) and noise (shape of ``x0``) instead of drawing them.
    """
    t, z = _times_and_noise("dsm_loss", sde, x0, eps, reduce, generator, t, z, weighting=weighting)
    mean, std = sde.marginal_prob(x0, t)
    std_b = broadcast_coef(std, x0)
    score = _checked(model(mean + std_b * z, t), x0)
    if weighting == "sigma2":
        err = (score * std_b + z).square()
    else:
        err = (score + z / std_b).square()
    per_sample = _reduce(err, reduce)
    if weighting == "likelihood":
        g = cast(LinearSDE, sde).diffusion_coef(t)  # a LinearSDE: checked in _times_and_noise
        per_sample = per_sample * g**2
    return per_sample.mean()


def _times_and_noise(
    name: str,
    sde: SDE,
    x0: torch.Tensor,
    eps: float,
    reduce: str,
    generator: torch.Generator | None,
    t: torch.Tensor | None,
    z: torch.Tensor | None,
    weighting: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate the common arguments; draw ``t ~ U[eps, T]`` (unless given), then ``z ~ N(0, I)`` (unless given)."""
    if not isinstance(sde, LinearSDE):
        raise TypeError(f"{name} needs a linear SDE (VPSDE, SubVPSDE, VESDE, ...), got {type(sde).__name__}")
    if weighting is not None and weighting not in WEIGHTINGS:
        raise ValueError(f"unknown weighting {weighting!r}; choose one of {WEIGHTINGS}")
    if reduce not in ("mean", "sum"):
        raise ValueError(f"reduce must be 'mean' or 'sum', got {reduce!r}")
    eps = check_positive("eps", eps)
    if eps >= sde.T:
        raise ValueError(f"eps={eps!r} must be smaller than T={sde.T!r}")
    check_finite_tensor("x0", x0, min_dim=2)
    if t is None:
        u = torch.rand(x0.shape[0], generator=generator, dtype=x0.dtype, device=x0.device)
        t = u * (sde.T - eps) + eps
    if z is None:
        z = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
    return t, z


def _checked(out: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    if out.shape != x0.shape:
        raise ValueError(f"model returned shape {tuple(out.shape)}, expected {tuple(x0.shape)} (the shape of x)")
    return out


def _reduce(err: torch.Tensor, reduce: str) -> torch.Tensor:
    """Per-sample mean or sum of the squared error over the feature dimensions."""
    err = err.reshape(err.shape[0], -1)
    return err.mean(dim=1) if reduce == "mean" else err.sum(dim=1)


def velocity_loss(
    sde: LinearSDE,
    model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x0: torch.Tensor,
    *,
    eps: float = 1e-5,
    reduce: str = "mean",
    generator: torch.Generator | None = None,
    t: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""Conditional flow matching on the SDE's Gaussian path (Lipman et al. 2022; Liu et al. 2022).

    .. math::
        \mathcal L(\theta) = \mathbb E_{t \sim U[\varepsilon, T]}\,\mathbb E_{x_0, z}
            \big\| v_\theta(x_t, t) - (\dot s(t)\,x_0 + \dot\sigma(t)\,z) \big\|^2,
        \qquad x_t = s(t)\,x_0 + \sigma(t)\,z,

    minimised by the marginal velocity :math:`\mathbb E[\dot s x_0 + \dot\sigma z \mid x_t]`, which is the
    probability-flow drift :math:`f x - \tfrac12 g^2\nabla\log p_t`. For :class:`scoresde.RectifiedFlow`
    (:math:`s = 1 - t`, :math:`\sigma = t`) the target is :math:`z - x_0`. ``model`` is the velocity
    network :math:`v_\theta(x, t)` (e.g. ``ScoreModel(..., parameterization="velocity").velocity``).
    ``eps``, ``reduce``, ``generator``, ``t`` and ``z`` are as in :func:`dsm_loss`.
    """
    t, z = _times_and_noise("velocity_loss", sde, x0, eps, reduce, generator, t, z)
    s, sigma = broadcast_coef(sde.mean_coef(t), x0), broadcast_coef(sde.std(t), x0)
    target = broadcast_coef(sde.mean_coef_dot(t), x0) * x0 + broadcast_coef(sde.std_dot(t), x0) * z
    pred = _checked(model(s * x0 + sigma * z, t), x0)
    return _reduce((pred - target).square(), reduce).mean()
