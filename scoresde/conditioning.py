r"""Controllable generation: sampling :math:`p(x \mid c)` or :math:`p(x \mid y)` with an unconditional score.

Two kinds of methods.

*Score transforms* return a new score function ``score(x, t)`` that every sampler runs unchanged
(:class:`~scoresde.EulerMaruyama`, :class:`~scoresde.PredictorCorrector`, :class:`~scoresde.ProbabilityFlowODE`,
:class:`~scoresde.TorchSDE`, :class:`~scoresde.DDIM`, :class:`~scoresde.DPMSolverPP`, :class:`~scoresde.UniPC`,
:class:`~scoresde.AdaptiveSDE`):

* :class:`ClassifierGuidance` — :math:`s(x, t) + w\,\nabla_x \log p_t(c \mid x)`;
* :class:`ClassifierFreeGuidance` — :math:`(1 + w)\,s(x, t, c) - w\,s(x, t, \varnothing)`;
* :class:`DPS` (Chung et al. 2023) and :class:`PiGDM` (Song et al. 2023) for a linear observation
  :math:`y = A x_0 + \sigma_y n` (:class:`LinearObservation`): :math:`s(x, t) + \nabla_x \log \tilde p_t(y \mid x)`
  with a Gaussian approximation of :math:`p_t(y \mid x_t)` built on Tweedie's denoiser
  :math:`\hat x_0(x_t) = (x_t + \sigma(t)^2 s(x_t, t))/s(t)`, differentiated by autograd through the score.

*Samplers* for methods that change the loop, each wrapping or replacing a sampler:

* :class:`Replacement` — inpainting by replacement (Song et al. 2021, App. I): after every step the observed
  coordinates are replaced by a fresh draw of the forward-noised observation; with a
  :class:`~scoresde.PredictorCorrector` the replacement also follows the corrector's moves;
* :class:`RePaint` (Lugmayr et al. 2022) — replacement with resampling: jumps back ``jump_length`` steps by
  forward noising, ``resamples`` times per block;
* :class:`TwistedSMC` — the twisted diffusion sampler (Wu et al. 2023), sequential Monte Carlo with
  twisted proposals: asymptotically exact as the number of particles grows; the effective sample size of
  every step is recorded.

:func:`sample_posterior` and :func:`sample_class` are the one-call entry points; they return
:func:`scoresde.sample`'s ``xarray.Dataset`` with the observation (or label), the method and its parameters
in the attributes (``conditioning_*``, netCDF-safe). The exact answers that these methods are checked against
are :meth:`scoresde.GaussianMixture.condition` (posterior given a linear observation) and the labelled
mixture's :meth:`~scoresde.GaussianMixture.classifier` and :meth:`~scoresde.GaussianMixture.conditional_score`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import xarray as xr

from ._checks import as_float64, broadcast_coef, check_positive, check_positive_int
from ._kernels import require_linear
from .integrators.base import CountedScore, FixedStepSampler, Sampler, Trajectory, nearest_indices
from .samplers import SCIPY_METHODS, PredictorCorrector, ProbabilityFlowODE
from .sampling import sample
from .sde import SDE, LinearSDE, ScoreFn
from .solvers import DPMSolverPP, UniPC
from .time_grids import log_coefs

__all__ = [
    "LinearObservation",
    "ClassifierGuidance",
    "ClassifierFreeGuidance",
    "DPS",
    "PiGDM",
    "Replacement",
    "RePaint",
    "TwistedSMC",
    "METHODS",
    "sample_posterior",
    "sample_class",
]


# ---------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------
def _kernel(sde: SDE, t: float) -> tuple[float, float]:
    r""":math:`(s(t), \sigma(t))` as floats computed in float64."""
    log_s, log_sigma = log_coefs(sde, t)
    return math.exp(float(log_s)), math.exp(float(log_sigma))


def _kernel_like(sde: LinearSDE, t: float | torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r""":math:`s(t)`, :math:`\sigma(t)` in ``x``'s dtype, shape ``()`` or ``(batch,)`` (per-sample times)."""
    _, _, s, sigma = sde.coefficients(t, like=x)
    return s, sigma


def _denoised_residual(
    score_fn: ScoreFn, sde: LinearSDE, obs: LinearObservation, xg: torch.Tensor, t: float | torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""Score at ``xg``, the residual :math:`y - A\hat x_0(xg)` (batch, m) and :math:`r_t^2` (``()`` or (batch,))."""
    s, sigma = _kernel_like(sde, t, xg)
    A, y = obs.tensors(xg)
    score = score_fn(xg, _time_tensor(t, xg))
    x0 = (xg + broadcast_coef(sigma**2, xg) * score) / broadcast_coef(s, xg)
    residual = y - x0.reshape(xg.shape[0], -1) @ A.T
    return score, residual, sigma**2 / (s**2 + sigma**2)


def _time_tensor(t: float | torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``t`` as a normal (non-inference) tensor: a copy of a tensor, or a ``(batch,)`` vector of a float."""
    if isinstance(t, torch.Tensor):
        return t.clone()
    return torch.full((x.shape[0],), float(t), dtype=x.dtype, device=x.device)


def _grad_enabled_input(x: torch.Tensor) -> torch.Tensor:
    """A normal (non-inference) leaf copy of ``x`` that requires grad; call inside ``inference_mode(False)``."""
    return x.detach().clone().requires_grad_(True)


def _json(value: Any) -> str:
    return json.dumps(value)


# ---------------------------------------------------------------------------------------
# the observation
# ---------------------------------------------------------------------------------------
class LinearObservation:
    r"""A linear Gaussian observation :math:`y = A x_0 + \sigma_y n`, :math:`n \sim \mathcal N(0, I_m)`.

    Parameters
    ----------
    A : array-like, shape (m, D)
        The observation matrix; it acts on the flattened features (:math:`D` = product of the feature shape).
    y : array-like, shape ``(m,)`` or ``(n, m)``
        The observation, shared by every sample, or one per sample of the batch.
    noise_std : float
        :math:`\sigma_y \ge 0`; 0 is an exact observation :math:`A x_0 = y`. Default 0.

    Notes
    -----
    :meth:`inpainting` builds the observation of a set of coordinates (a mask), which :class:`Replacement`
    and :class:`RePaint` need. ``A`` and ``y`` are stored in float64 and used in the dtype and on the device
    of the samples.
    """

    def __init__(self, A: Any, y: Any, noise_std: float = 0.0) -> None:
        self.A = as_float64("A", A)
        if self.A.dim() != 2 or min(self.A.shape) == 0:
            raise ValueError(f"A must be a non-empty matrix of shape (m, D), got {tuple(self.A.shape)}")
        self.y = as_float64("y", y)
        m = self.A.shape[0]
        if self.y.dim() not in (1, 2) or self.y.shape[-1] != m:
            raise ValueError(
                f"y must have shape ({m},) or (n, {m}) to match A of shape {tuple(self.A.shape)}, "
                f"got {tuple(self.y.shape)}"
            )
        self.noise_std = check_positive("noise_std", noise_std, allow_zero=True)
        self.mask: torch.Tensor | None = None
        self._cache: dict[tuple[torch.dtype, torch.device], tuple[torch.Tensor, torch.Tensor]] = {}

    @classmethod
    def inpainting(cls, mask: Any, values: Any, noise_std: float = 0.0) -> LinearObservation:
        r"""The observation of the coordinates where ``mask`` is true: :math:`y = x_0[\text{mask}]`.

        ``mask`` is a boolean array of the feature shape; ``values`` has the feature shape (its entries
        outside the mask are ignored) or holds the :math:`m` observed values in row-major order.
        """
        m = torch.as_tensor(np.asarray(mask.cpu() if isinstance(mask, torch.Tensor) else mask))
        if m.dtype != torch.bool:
            raise TypeError(f"mask must be a boolean array, got {m.dtype}")
        if not bool(m.any()):
            raise ValueError(
                "mask observes nothing (every entry is False); use scoresde.sample for unconditional samples"
            )
        flat = m.reshape(-1)
        v = as_float64("values", values)
        if v.shape == m.shape:
            y = v.reshape(-1)[flat]
        elif v.shape == (int(flat.sum()),):
            y = v
        else:
            raise ValueError(
                f"values must have the mask's shape {tuple(m.shape)} or hold its {int(flat.sum())} observed entries, "
                f"got shape {tuple(v.shape)}"
            )
        A = torch.eye(flat.numel(), dtype=torch.float64)[flat]
        obs = cls(A, y, noise_std)
        obs.mask = m
        return obs

    @property
    def dim(self) -> int:
        """:math:`D`, the number of features."""
        return int(self.A.shape[1])

    def tensors(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``A`` (m, D) and ``y`` (n or 1, m) in ``x``'s dtype and on its device (cached; outside inference mode)."""
        key = (x.dtype, x.device)
        if key not in self._cache:
            with torch.inference_mode(False):
                y = self.y if self.y.dim() == 2 else self.y[None]
                self._cache[key] = (self.A.to(x.dtype).to(x.device), y.to(x.dtype).to(x.device))
        return self._cache[key]

    def check_batch(self, x: torch.Tensor) -> None:
        """Raise ``ValueError`` unless ``x`` (batch first) has :math:`D` features and a batch that ``y`` matches."""
        D = int(np.prod(x.shape[1:]))
        if D != self.dim:
            raise ValueError(
                f"the observation's A has {self.dim} columns but the samples have {D} features (shape "
                f"{tuple(x.shape[1:])}); A acts on the flattened features"
            )
        if self.y.dim() == 2 and self.y.shape[0] != x.shape[0]:
            raise ValueError(
                f"y holds {self.y.shape[0]} observations (one per sample) but the batch has {x.shape[0]} samples"
            )

    def attrs(self) -> dict[str, Any]:
        """netCDF-safe attributes: ``A`` (or the mask), ``y`` and ``noise_std`` as JSON / numbers."""
        out: dict[str, Any] = {"conditioning_noise_std": self.noise_std, "conditioning_y": _json(self.y.tolist())}
        if self.mask is not None:
            out["conditioning_mask"] = _json(self.mask.to(torch.int64).tolist())
        else:
            out["conditioning_A"] = _json(self.A.tolist())
        return out

    def __repr__(self) -> str:
        kind = f"mask of {int(self.mask.sum())} entries" if self.mask is not None else f"A {tuple(self.A.shape)}"
        return f"LinearObservation({kind}, y {tuple(self.y.shape)}, noise_std={self.noise_std!r})"


def _check_observation(observation: Any) -> LinearObservation:
    if not isinstance(observation, LinearObservation):
        raise TypeError(
            "observation must be a scoresde.conditioning.LinearObservation (LinearObservation(A, y, noise_std) or "
            f"LinearObservation.inpainting(mask, values)), got {type(observation).__name__}"
        )
    return observation


# ---------------------------------------------------------------------------------------
# classifier guidance and classifier-free guidance
# ---------------------------------------------------------------------------------------
class ClassifierGuidance:
    r"""Classifier guidance: :math:`\tilde s(x, t) = s(x, t) + w\,\nabla_x \log p_t(c \mid x)`.

    With the exact score and the exact noisy classifier, :math:`w = 1` gives the class-conditional score
    :math:`\nabla_x \log p_t(x \mid c)` (Bayes' rule); :math:`w > 1` sharpens towards the class.

    Parameters
    ----------
    score_fn : callable
        The unconditional score ``score_fn(x, t)``.
    classifier : callable
        A time-dependent classifier ``classifier(x, t) -> (batch, C)`` log-probabilities (e.g.
        :meth:`scoresde.GaussianMixture.classifier`, or a network returning ``log_softmax`` outputs). Its
        gradient is taken by autograd, unless it has a ``grad_log_prob(x, t, c)`` method (the exact one does).
    label : int or torch.Tensor
        The class :math:`c`, or one class per sample (a ``(batch,)`` integer tensor).
    weight : float
        The guidance weight :math:`w \ge 0`. Default 1.
    """

    def __init__(self, score_fn: ScoreFn, classifier: Callable[..., torch.Tensor], label: Any, weight: float = 1.0):
        given: tuple[object, object] = (score_fn, classifier)  # callers may pass anything
        if not all(callable(f) for f in given):
            raise TypeError("score_fn and classifier must be callable as f(x, t)")
        self.score_fn, self.classifier, self.label = score_fn, classifier, label
        self.weight = check_positive("weight", weight, allow_zero=True)

    def params(self) -> dict[str, Any]:
        label = self.label.tolist() if isinstance(self.label, torch.Tensor) else self.label
        return {
            "method": "classifier_guidance",
            "label": label,
            "weight": self.weight,
            "classifier": repr(self.classifier),
        }

    def __repr__(self) -> str:
        return (
            f"ClassifierGuidance({self.score_fn!r}, {self.classifier!r}, label={self.label!r}, weight={self.weight!r})"
        )

    def grad_log_prob(self, x: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
        r""":math:`\nabla_x \log p_t(c \mid x)` (closed form if the classifier has one, else autograd)."""
        grad_fn = getattr(self.classifier, "grad_log_prob", None)
        if grad_fn is not None:
            closed: torch.Tensor = grad_fn(x, t, self.label)
            return closed
        with torch.inference_mode(False), torch.enable_grad():
            xg = _grad_enabled_input(x)
            logp: object = self.classifier(xg, _time_tensor(t, xg))
            if not isinstance(logp, torch.Tensor) or logp.dim() != 2 or logp.shape[0] != x.shape[0]:
                raise ValueError(
                    f"classifier(x, t) must return (batch, C) log-probabilities, got "
                    f"{tuple(logp.shape) if isinstance(logp, torch.Tensor) else type(logp).__name__}"
                )
            label = torch.as_tensor(self.label, device=x.device).reshape(-1, 1).expand(x.shape[0], 1)
            (grad,) = torch.autograd.grad(logp.gather(1, label).sum(), xg)
        return grad.detach()

    def __call__(self, x: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
        s = self.score_fn(x, _time_tensor(t, x) if not isinstance(t, torch.Tensor) else t)
        if self.weight == 0:
            return s
        return s + self.weight * self.grad_log_prob(x, t).to(s.dtype)


class ClassifierFreeGuidance:
    r"""Classifier-free guidance: :math:`\tilde s(x, t) = (1 + w)\,s(x, t, c) - w\,s(x, t, \varnothing)`.

    Parameters
    ----------
    score_fn : callable
        A conditional score ``score_fn(x, t, c)``; ``c = null`` gives the unconditional score (e.g.
        :meth:`scoresde.GaussianMixture.conditional_score`, whose null label is ``None``).
    label : int or torch.Tensor
        The class :math:`c`, or a ``(batch,)`` integer tensor.
    weight : float
        :math:`w \ge 0`. :math:`w = 0` returns ``score_fn(x, t, c)`` itself (one evaluation); otherwise
        each call evaluates the score twice.
    null : any
        The unconditional label. Default ``None``.
    """

    def __init__(self, score_fn: Callable[..., torch.Tensor], label: Any, weight: float = 0.0, null: Any = None):
        if not callable(score_fn):
            raise TypeError("score_fn must be callable as score_fn(x, t, c)")
        self.score_fn, self.label, self.null = score_fn, label, null
        self.weight = check_positive("weight", weight, allow_zero=True)

    def params(self) -> dict[str, Any]:
        label = self.label.tolist() if isinstance(self.label, torch.Tensor) else self.label
        return {"method": "classifier_free_guidance", "label": label, "weight": self.weight, "null": repr(self.null)}

    def __repr__(self) -> str:
        return f"ClassifierFreeGuidance({self.score_fn!r}, label={self.label!r}, weight={self.weight!r})"

    def __call__(self, x: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
        cond = self.score_fn(x, t, self.label)
        if self.weight == 0:
            return cond
        return (1 + self.weight) * cond - self.weight * self.score_fn(x, t, self.null)


# ---------------------------------------------------------------------------------------
# linear inverse problems: DPS and PiGDM
# ---------------------------------------------------------------------------------------
class _TweedieGuidance:
    r"""Base: :math:`s + \text{scale}\,\nabla_x \log \tilde p_t(y \mid x)` through Tweedie's denoiser."""

    method = ""

    def __init__(self, score_fn: ScoreFn, sde: SDE, observation: LinearObservation, scale: float = 1.0) -> None:
        if not callable(score_fn):
            raise TypeError("score_fn must be callable as score_fn(x, t)")
        self.score_fn = score_fn
        self.sde = require_linear(sde, type(self).__name__)
        self.observation = _check_observation(observation)
        self.scale = check_positive("scale", scale, allow_zero=True)

    def params(self) -> dict[str, Any]:
        return {"method": self.method, "scale": self.scale}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.score_fn!r}, {self.sde!r}, {self.observation!r}, scale={self.scale!r})"

    def log_likelihood(self, residual: torch.Tensor, r2: torch.Tensor) -> torch.Tensor:
        r""":math:`\log \tilde p_t(y \mid x)` up to a constant, from the residual :math:`y - A\hat x_0` (batch, m)."""
        raise NotImplementedError

    def __call__(self, x: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
        self.observation.check_batch(x)
        with torch.inference_mode(False), torch.enable_grad():
            xg = _grad_enabled_input(x)
            score, residual, r2 = _denoised_residual(self.score_fn, self.sde, self.observation, xg, t)
            (grad,) = torch.autograd.grad(self.log_likelihood(residual, r2).sum(), xg)
        return score.detach() + self.scale * grad.detach()


class DPS(_TweedieGuidance):
    r"""Diffusion posterior sampling (Chung et al. 2023) for :math:`y = A x_0 + \sigma_y n`.

    .. math::
        \tilde s(x, t) = s(x, t) - \frac{\zeta}{2\sigma_y^2}\,
        \nabla_x \big\|y - A\,\hat x_0(x)\big\|^2, \qquad \hat x_0(x) = \frac{x + \sigma(t)^2 s(x, t)}{s(t)},

    the score of :math:`p_t(x)\,\mathcal N(y;\ A\hat x_0(x),\ \sigma_y^2 I)`: the likelihood is evaluated at
    the posterior mean :math:`E[x_0 \mid x_t]` only, ignoring :math:`\operatorname{Cov}[x_0 \mid x_t]`.
    The gradient goes through the score by autograd (one score evaluation with its backward pass per
    call). ``scale`` is :math:`\zeta` (1: the Gaussian likelihood itself). Needs ``noise_std > 0``.
    """

    method = "dps"

    def __init__(self, score_fn: ScoreFn, sde: SDE, observation: LinearObservation, scale: float = 1.0) -> None:
        super().__init__(score_fn, sde, observation, scale)
        if self.observation.noise_std == 0:
            raise ValueError(
                "DPS's likelihood N(y; A x0_hat, noise_std^2 I) needs noise_std > 0; for an exact observation use "
                "PiGDM, TwistedSMC, or Replacement/RePaint for a mask, or give a small noise_std"
            )

    def log_likelihood(self, residual: torch.Tensor, r2: torch.Tensor) -> torch.Tensor:
        return -0.5 * residual.square().sum(-1) / self.observation.noise_std**2


class PiGDM(_TweedieGuidance):
    r"""Pseudoinverse-guided diffusion (Song et al. 2023, :math:`\Pi`GDM) for :math:`y = A x_0 + \sigma_y n`.

    .. math::
        \tilde s(x, t) = s(x, t) + \zeta\,\nabla_x \log \mathcal N\big(y;\ A\hat x_0(x),\
        r_t^2 A A^\top + \sigma_y^2 I\big), \qquad r_t^2 = \frac{\sigma(t)^2}{s(t)^2 + \sigma(t)^2},

    i.e. the vector-Jacobian product
    :math:`\big((y - A\hat x_0)^\top (r_t^2 A A^\top + \sigma_y^2 I)^{-1} A\, \partial \hat x_0/\partial x\big)^\top`
    (by autograd through the score): :math:`p(x_0 \mid x_t)` approximated by a Gaussian of variance
    :math:`r_t^2`, exact for a standard-normal :math:`x_0`. Works with ``noise_std = 0`` (full-row-rank
    :math:`A`). ``scale`` is :math:`\zeta` (default 1).
    """

    method = "pigdm"

    def log_likelihood(self, residual: torch.Tensor, r2: torch.Tensor) -> torch.Tensor:
        return _twist_log_likelihood(self.observation, residual, r2)


def _twist_log_likelihood(obs: LinearObservation, residual: torch.Tensor, r2: torch.Tensor) -> torch.Tensor:
    r""":math:`\log \mathcal N(y;\ A\hat x_0,\ r_t^2 AA^\top + \sigma_y^2 I)` per sample, normalised (batch,)."""
    A, _ = obs.tensors(residual)
    m = A.shape[0]
    r2 = r2.reshape(-1, 1, 1)  # (1 or batch, 1, 1)
    cov = r2 * (A @ A.T) + obs.noise_std**2 * torch.eye(m, dtype=A.dtype, device=A.device)
    L, info = torch.linalg.cholesky_ex(cov)
    if bool((info != 0).any()):
        raise ValueError(
            "r_t^2 A A^T + noise_std^2 I is singular: with noise_std=0 the rows of A must be linearly independent "
            "(m <= D and full row rank); drop redundant rows or give noise_std > 0"
        )
    L = L.expand(residual.shape[0], m, m)
    white = torch.linalg.solve_triangular(L, residual[..., None], upper=False)[..., 0]
    logdet = torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1)
    out: torch.Tensor = -0.5 * white.square().sum(-1) - logdet - 0.5 * m * math.log(2 * math.pi)
    return out


# ---------------------------------------------------------------------------------------
# replacement and RePaint
# ---------------------------------------------------------------------------------------
def _check_fixed_step(sampler: Any, who: str) -> FixedStepSampler:
    if not isinstance(sampler, FixedStepSampler) or (
        isinstance(sampler, ProbabilityFlowODE) and getattr(sampler, "method", None) in SCIPY_METHODS
    ):
        raise ValueError(
            f"{who} changes the state between steps, so it needs a fixed-step sampler on a time grid "
            f"(EulerMaruyama, PredictorCorrector, DDIM, DPMSolverPP, UniPC, Euler, Heun, ProbabilityFlowODE('heun')); "
            f"got {type(sampler).__name__}"
            + (f"({sampler.method!r})" if isinstance(sampler, ProbabilityFlowODE) else "")
            + ", which integrates adaptively or in an external library"
        )
    if sampler.denoise:
        raise ValueError(
            f"{who} ends with the observation in place; the final Tweedie step would change the observed "
            "coordinates: give the sampler denoise=False"
        )
    return sampler


class _Replacing:
    """The replacement move shared by :class:`Replacement` and :class:`RePaint`."""

    observation: LinearObservation
    inner: FixedStepSampler

    def _setup(self, observation: Any, who: str) -> None:
        self.observation = _check_observation(observation)
        if self.observation.mask is None:
            raise ValueError(
                f"{who} replaces observed coordinates, so it needs an inpainting observation "
                "(LinearObservation.inpainting(mask, values)); for a general A use DPS, PiGDM or TwistedSMC"
            )
        if self.observation.noise_std != 0:
            raise ValueError(f"{who} puts the observed values in place exactly: give noise_std=0")

    def replace(self, sde: SDE, x: torch.Tensor, t: float, generator: torch.Generator, exact: bool) -> torch.Tensor:
        r"""``x`` with the observed coordinates set to :math:`s(t)\,y + \sigma(t) z` (or :math:`y` if ``exact``)."""
        self.observation.check_batch(x)
        assert self.observation.mask is not None  # checked by _setup
        mask = self.observation.mask.to(x.device).reshape(-1)
        A, y = self.observation.tensors(x)
        flat = x.reshape(x.shape[0], -1).clone()
        if exact:
            known = y.expand(x.shape[0], -1)
        else:
            s, sigma = _kernel(sde, t)
            z = torch.randn((x.shape[0], y.shape[-1]), generator=generator, dtype=x.dtype, device=x.device)
            known = s * y + sigma * z
        flat[:, mask] = known
        return flat.reshape(x.shape)

    def inner_step(
        self, state: Any, sde: SDE, x: torch.Tensor, t: float, t_next: float, generator: torch.Generator, last: bool
    ) -> torch.Tensor:
        inner = self.inner
        if isinstance(inner, PredictorCorrector):
            x = inner.corrector.update(state, x, t, t_next, generator)
            if inner.corrector.nfe:
                x = self.replace(sde, x, t, generator, exact=False)
            x = inner.predictor.update(state, x, t, t_next, generator)
        else:
            x = inner.step(state, sde, x, t, t_next, generator)
        return self.replace(sde, x, t_next, generator, exact=last)


class Replacement(_Replacing, FixedStepSampler):
    r"""Inpainting by replacement (Song et al. 2021, App. I) on top of a fixed-step ``sampler``.

    With the observed coordinates :math:`\Omega` and their values :math:`y`, every step of ``sampler``
    from :math:`t_i` to :math:`t_{i+1}` is followed by

    .. math:: x_{t_{i+1}}[\Omega] \leftarrow s(t_{i+1})\,y + \sigma(t_{i+1})\,z, \qquad z \sim \mathcal N(0, I),

    a fresh draw of :math:`p_{t_{i+1}}(x[\Omega] \mid x_0[\Omega] = y)`; the start at :math:`T` is replaced
    likewise and the last step puts :math:`y` itself in place, so the samples carry the observation exactly.
    With a :class:`~scoresde.PredictorCorrector`, the replacement also follows the corrector's moves (the
    Langevin-corrected variant). The unobserved coordinates see the observation only through the
    unconditional score of the joint state, so the method is an approximation of :math:`p(x \mid y)`.

    Parameters
    ----------
    sampler : FixedStepSampler
        The sampler whose steps are used (``denoise=False``).
    observation : LinearObservation
        From :meth:`LinearObservation.inpainting` (``noise_std=0``).
    """

    def __init__(self, sampler: FixedStepSampler, observation: LinearObservation) -> None:
        self.inner = _check_fixed_step(sampler, "Replacement")
        self._setup(observation, "Replacement")
        FixedStepSampler.__init__(self, sampler.steps, sampler.eps, denoise=False)
        self.stochastic = True

    def params(self) -> dict[str, Any]:
        return {"method": "replacement", "inner": repr(self.inner), **self.inner.params()}

    def check(self, sde: SDE) -> None:
        require_linear(sde, "Replacement")
        self.inner.check(sde)

    def time_points(self, sde: SDE) -> np.ndarray:
        return self.inner.time_points(sde)

    @property
    def nfe_per_step(self) -> int | None:
        return self.inner.nfe_per_step

    def max_saved_states(self, sde: SDE) -> int | None:
        return self.inner.max_saved_states(sde)

    def prepare(self, sde: SDE, score_fn: CountedScore) -> Any:
        self._end = float(self.time_points(sde)[-1])
        return self.inner.prepare(sde, score_fn)

    def step(
        self, state: Any, sde: SDE, x: torch.Tensor, t: float, t_next: float, generator: torch.Generator
    ) -> torch.Tensor:
        return self.inner_step(state, sde, x, t, t_next, generator, last=t_next == self._end)

    def integrate(
        self,
        sde: SDE,
        score_fn: CountedScore,
        x: torch.Tensor,
        generator: torch.Generator,
        save_times: np.ndarray,
        progress: bool,
    ) -> Trajectory:
        x = self.replace(sde, x, sde.T, generator, exact=False)
        return super().integrate(sde, score_fn, x, generator, save_times, progress)


def repaint_schedule(steps: int, jump_length: int, resamples: int) -> list[int]:
    """The grid indices RePaint visits (0 = ``T``, ``steps`` = ``eps``): Lugmayr et al.'s schedule.

    Going down one step at a time; on reaching a block boundary (every ``jump_length`` steps counted from
    the end, the last block excepted) it jumps back up ``jump_length`` steps, ``resamples - 1`` times.
    """
    jumps = {j: resamples - 1 for j in range(0, steps - jump_length, jump_length)}
    r, seq = steps, [steps]
    while r >= 1:
        r -= 1
        seq.append(r)
        if jumps.get(r, 0) > 0:
            jumps[r] -= 1
            for _ in range(jump_length):
                r += 1
                seq.append(r)
    return [steps - r for r in seq]


class RePaint(_Replacing, Sampler):
    r"""RePaint (Lugmayr et al. 2022): replacement with resampling, on top of a single-step ``sampler``.

    Down-steps are :class:`Replacement`'s (a step of ``sampler``, then the observed coordinates replaced by
    :math:`s(t)y + \sigma(t)z`). Every ``jump_length`` steps, the state jumps back up ``jump_length`` grid
    steps by the forward transitions of the SDE,

    .. math::
        x_{t_{i-1}} = \frac{s(t_{i-1})}{s(t_i)}\,x_{t_i} + \sqrt{\sigma(t_{i-1})^2 - \frac{s(t_{i-1})^2}{s(t_i)^2}
        \sigma(t_i)^2}\;z,

    and goes down again, ``resamples`` times in all per block (see :func:`repaint_schedule`), which lets
    the unobserved coordinates harmonise with the observed ones. ``resamples = 1`` is :class:`Replacement`.
    NFE: the number of down-steps times the sampler's NFE per step.

    Parameters
    ----------
    sampler : FixedStepSampler
        A single-step sampler (not a multistep DPMSolverPP/UniPC, whose history a jump back invalidates).
    observation : LinearObservation
        From :meth:`LinearObservation.inpainting`.
    jump_length : int
        Grid steps per jump (:math:`j`). Default 10.
    resamples : int
        Passes per block (:math:`r`). Default 10.
    """

    def __init__(
        self, sampler: FixedStepSampler, observation: LinearObservation, jump_length: int = 10, resamples: int = 10
    ) -> None:
        self.inner = _check_fixed_step(sampler, "RePaint")
        if isinstance(sampler, DPMSolverPP | UniPC) and sampler.order > 1:
            raise ValueError(
                f"RePaint jumps back in time, which invalidates the history of earlier steps that "
                f"{type(sampler).__name__}(order={sampler.order}) extrapolates from; use order=1, DDIM, "
                "EulerMaruyama or PredictorCorrector"
            )
        self._setup(observation, "RePaint")
        super().__init__(sampler.eps, denoise=False)
        self.jump_length = check_positive_int("jump_length", jump_length)
        self.resamples = check_positive_int("resamples", resamples)
        steps = getattr(sampler, "steps", None)
        if steps is not None and self.jump_length > steps:
            raise ValueError(f"jump_length={jump_length} exceeds the sampler's {steps} steps")

    def params(self) -> dict[str, Any]:
        return {
            "method": "repaint",
            "jump_length": self.jump_length,
            "resamples": self.resamples,
            "inner": repr(self.inner),
            **self.inner.params(),
        }

    def check(self, sde: SDE) -> None:
        require_linear(sde, "RePaint")
        self.inner.check(sde)

    def _schedule(self, sde: SDE) -> tuple[np.ndarray, list[int]]:
        grid = self.inner.time_points(sde)
        return grid, repaint_schedule(len(grid) - 1, self.jump_length, self.resamples)

    def expected_nfe(self, sde: SDE) -> int | None:
        n = self.inner.nfe_per_step
        if n is None:
            return None
        _, seq = self._schedule(sde)
        return n * sum(1 for a, b in zip(seq, seq[1:], strict=False) if b == a + 1)

    def max_saved_states(self, sde: SDE) -> int | None:
        return len(self.inner.time_points(sde))

    def integrate(
        self,
        sde: SDE,
        score_fn: CountedScore,
        x: torch.Tensor,
        generator: torch.Generator,
        save_times: np.ndarray,
        progress: bool,
    ) -> Trajectory:
        from ._progress import progress_bar

        grid, seq = self._schedule(sde)
        N = len(grid) - 1
        save_idx = set(nearest_indices(grid, save_times))
        last_visit = {i: pos for pos, i in enumerate(seq)}
        state = self.inner.prepare(sde, score_fn)
        guard = score_fn.guard
        traj = Trajectory()
        x = self.replace(sde, x, float(grid[0]), generator, exact=False)
        if 0 in save_idx and last_visit[0] == 0:
            traj.save(grid[0], x, score_fn.nfe)
        for pos in progress_bar(range(1, len(seq)), desc="RePaint", disable=not progress):
            i, j = seq[pos - 1], seq[pos]
            t, t_to = float(grid[i]), float(grid[j])
            guard.current_step = pos - 1
            if j == i + 1:
                x = self.inner_step(state, sde, x, t, t_to, generator, last=j == N and pos == len(seq) - 1)
            else:  # forward transition from t to t_to > t
                s_i, sig_i = _kernel(sde, t)
                s_j, sig_j = _kernel(sde, t_to)
                a = s_j / s_i
                z = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
                x = a * x + math.sqrt(max(sig_j**2 - a**2 * sig_i**2, 0.0)) * z
            guard.check(x, pos - 1, t, t_to)
            if j in save_idx and last_visit[j] == pos:
                traj.save(grid[j], x, score_fn.nfe)
        return traj


# ---------------------------------------------------------------------------------------
# twisted sequential Monte Carlo
# ---------------------------------------------------------------------------------------
class TwistedSMC(Sampler):
    r"""The twisted diffusion sampler (Wu et al. 2023): sequential Monte Carlo for :math:`p(x \mid y)`.

    The batch is split into groups of ``particles`` particles, each an independent particle system. With the
    twisting function :math:`\tilde p_t(y \mid x) = \mathcal N(y;\ A\hat x_0(x),\ r_t^2 AA^\top + \sigma_y^2 I)`
    (:class:`PiGDM`'s, :math:`r_t^2 = \sigma^2/(s^2 + \sigma^2)`) and :math:`\tilde s = s + \nabla_x \log \tilde p_t`,
    each step from :math:`t` to :math:`t' = t + \Delta t` (:math:`\Delta t < 0`) proposes by Euler–Maruyama on the
    twisted reverse SDE,

    .. math::
        x' = x + \big(f(x, t) - g^2 \tilde s(x, t)\big)\Delta t + g\sqrt{|\Delta t|}\,z,

    and multiplies each particle's weight by

    .. math::
        \frac{p(x' \mid x)\,\tilde p_{t'}(y \mid x')}{q(x' \mid x)\,\tilde p_t(y \mid x)}, \qquad
        \log\frac{p(x' \mid x)}{q(x' \mid x)} = -g\sqrt{|\Delta t|}\,\langle z, \nabla\log\tilde p_t\rangle
        - \tfrac12 g^2 |\Delta t|\,\|\nabla \log \tilde p_t\|^2,

    :math:`p` the untwisted Euler–Maruyama transition (initial weights :math:`\tilde p_T(y \mid x_T)`). A group is
    resampled (multinomial) when its effective sample size :math:`(\sum w)^2/\sum w^2` falls below
    ``ess_threshold * particles``, and once more at the end, so the returned particles are equally weighted.
    The target at ``eps`` is :math:`p_\varepsilon(x)\,\tilde p_\varepsilon(y \mid x)`, which tends to
    :math:`p_\varepsilon(x \mid y)` as :math:`\sigma(\varepsilon) \to 0`: the method is asymptotically exact as
    ``particles`` and ``steps`` grow. Every step costs one score evaluation with its backward pass
    (``steps + 1`` NFE). The run's ESS per step (mean over groups, before resampling) is in
    ``Trajectory.stats["ess"]`` (the Dataset's ``ess`` variable through :func:`sample_posterior`), the
    number of resampling events in ``stats["resampled"]``. Saved intermediate states are the particles at
    those times; resampling permutes them, so rows of different times are not one particle's path.

    Parameters
    ----------
    observation : LinearObservation
    particles : int
        Particles per group (the accuracy knob); the batch size must be a multiple of it. Default 64.
    steps : int
        Euler–Maruyama steps on the uniform grid. Default 500.
    ess_threshold : float
        Resample a group when its ESS is below this fraction of ``particles`` (in [0, 1]; 1 resamples every
        step). Default 0.5.
    eps : float
        Final time. Default 1e-3.
    """

    def __init__(
        self,
        observation: LinearObservation,
        particles: int = 64,
        steps: int = 500,
        ess_threshold: float = 0.5,
        eps: float = 1e-3,
    ) -> None:
        super().__init__(eps, denoise=False)
        self.observation = _check_observation(observation)
        self.particles = check_positive_int("particles", particles)
        self.steps = check_positive_int("steps", steps)
        self.ess_threshold = check_positive("ess_threshold", ess_threshold, allow_zero=True)
        if self.ess_threshold > 1:
            raise ValueError(f"ess_threshold must lie in [0, 1], got {ess_threshold!r}")

    def params(self) -> dict[str, Any]:
        return {
            "method": "smc",
            "particles": self.particles,
            "steps": self.steps,
            "ess_threshold": self.ess_threshold,
            "eps": self.eps,
        }

    def check(self, sde: SDE) -> None:
        super().check(sde)
        require_linear(sde, "TwistedSMC")

    def expected_nfe(self, sde: SDE) -> int | None:
        return self.steps + 1

    def max_saved_states(self, sde: SDE) -> int | None:
        return self.steps + 1

    def _twist(
        self, sde: SDE, score_fn: CountedScore, x: torch.Tensor, t: float
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        r"""Score, :math:`\log \tilde p_t(y \mid x)` (batch,) and its gradient at ``x``."""
        lin = require_linear(sde, "TwistedSMC")
        with torch.inference_mode(False), torch.enable_grad():
            xg = _grad_enabled_input(x)
            tv = torch.full((x.shape[0],), t, dtype=x.dtype, device=x.device)
            score, residual, r2 = _denoised_residual(score_fn, lin, self.observation, xg, tv)
            log_twist = _twist_log_likelihood(self.observation, residual, r2)
            (grad,) = torch.autograd.grad(log_twist.sum(), xg)
        return score.detach(), log_twist.detach(), grad.detach()

    def integrate(
        self,
        sde: SDE,
        score_fn: CountedScore,
        x: torch.Tensor,
        generator: torch.Generator,
        save_times: np.ndarray,
        progress: bool,
    ) -> Trajectory:
        from ._progress import progress_bar

        self.observation.check_batch(x)
        n, K = x.shape[0], self.particles
        if n % K:
            raise ValueError(
                f"TwistedSMC runs groups of particles={K}: the batch of {n} samples must be a multiple of it"
            )
        if self.observation.y.dim() == 2:
            raise ValueError("TwistedSMC conditions every particle on one observation: give y of shape (m,)")
        G = n // K
        grid = np.linspace(sde.T, self.eps, self.steps + 1)
        save_idx = set(nearest_indices(grid, save_times))
        guard = score_fn.guard
        traj = Trajectory()
        score, log_tw, grad = self._twist(sde, score_fn, x, float(grid[0]))
        log_w = log_tw.to(torch.float64)  # weights accumulate in float64 whatever x's dtype
        ess_trace: list[float] = []
        resampled = 0

        def ess(lw: torch.Tensor) -> torch.Tensor:
            lw = lw.reshape(G, K)
            return torch.exp(2 * torch.logsumexp(lw, 1) - torch.logsumexp(2 * lw, 1))

        def resample(lw: torch.Tensor, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
            probs = torch.softmax(lw.reshape(G, K).to(torch.float64), dim=1)
            idx = torch.multinomial(probs, K, replacement=True, generator=generator)
            flat = (idx + K * torch.arange(G, device=idx.device)[:, None]).reshape(-1)
            return tuple(a[flat] for a in tensors)

        if 0 in save_idx:
            traj.save(grid[0], x, score_fn.nfe)
        for i in progress_bar(range(self.steps), desc="TwistedSMC", disable=not progress):
            t, t_next = float(grid[i]), float(grid[i + 1])
            guard.current_step = i
            dt = t_next - t
            drift, g = sde.sde(x, t)
            g = g.reshape(-1, *([1] * (x.dim() - 1)))
            z = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
            x = x + (drift - g**2 * (score + grad)) * dt + g * math.sqrt(-dt) * z
            guard.check(x, i, t, t_next)
            gflat = g.reshape(-1)
            log_ratio = -gflat * math.sqrt(-dt) * (z * grad).reshape(n, -1).sum(-1) - 0.5 * gflat**2 * (-dt) * (
                grad.reshape(n, -1).square().sum(-1)
            )
            score, log_tw_next, grad = self._twist(sde, score_fn, x, t_next)
            log_w = log_w + (log_ratio + log_tw_next - log_tw).to(torch.float64)
            log_tw = log_tw_next
            e = ess(log_w)
            ess_trace.append(float(e.mean()))
            last = i == self.steps - 1
            if last or bool((e < self.ess_threshold * K).any()):
                if last:
                    x, score, grad, log_tw = resample(log_w, x, score, grad, log_tw)
                    log_w = torch.zeros_like(log_w)
                else:  # resample the groups that need it
                    need = (e < self.ess_threshold * K).repeat_interleave(K)
                    xr_, sr, gr, lr = resample(log_w, x, score, grad, log_tw)
                    x = torch.where(need.reshape(-1, *([1] * (x.dim() - 1))), xr_, x)
                    score = torch.where(need.reshape(-1, *([1] * (x.dim() - 1))), sr, score)
                    grad = torch.where(need.reshape(-1, *([1] * (x.dim() - 1))), gr, grad)
                    log_tw = torch.where(need, lr, log_tw)
                    log_w = torch.where(need, torch.zeros_like(log_w), log_w)
                resampled += 1
            if i + 1 in save_idx:
                traj.save(grid[i + 1], x, score_fn.nfe)
        traj.stats["ess"] = ess_trace
        traj.stats["resampled"] = resampled
        return traj


# ---------------------------------------------------------------------------------------
# one-call entry points
# ---------------------------------------------------------------------------------------
#: method name of :func:`sample_posterior` -> what it builds
METHODS: dict[str, str] = {
    "dps": "DPS score transform, run by `sampler`",
    "pigdm": "PiGDM score transform, run by `sampler`",
    "replacement": "Replacement around `sampler` (inpainting)",
    "repaint": "RePaint around `sampler` (inpainting)",
    "smc": "TwistedSMC (its own Euler-Maruyama loop; `sampler` must be None)",
}


def _run(sde: SDE, score_fn: ScoreFn, sampler: Sampler | None, attrs: dict[str, Any], **kwargs: Any) -> xr.Dataset:
    ds = sample(sde, score_fn, sampler, **kwargs)
    stats_ess = ds.attrs.get("stat_ess")
    if stats_ess is not None:
        ess = np.asarray(json.loads(stats_ess), dtype=np.float64)
        ds["ess"] = (("step",), ess, {"long_name": "effective sample size per step (mean over particle groups)"})
    ds.attrs.update(attrs)
    return ds


def sample_posterior(
    sde: SDE,
    score_fn: ScoreFn,
    observation: LinearObservation,
    method: str = "pigdm",
    sampler: Sampler | None = None,
    *,
    n: int | None = None,
    shape: Any = None,
    **kwargs: Any,
) -> xr.Dataset:
    r"""Sample :math:`p(x_0 \mid y)` for the linear observation :math:`y = A x_0 + \sigma_y n` with an
    unconditional score, by one of the :data:`METHODS`.

    Parameters
    ----------
    sde, score_fn :
        The forward (linear) SDE and the unconditional score ``score_fn(x, t)``.
    observation : LinearObservation
        ``LinearObservation(A, y, noise_std)`` or ``LinearObservation.inpainting(mask, values)``.
    method : str
        ``"dps"`` (:class:`DPS`), ``"pigdm"`` (:class:`PiGDM`, default), ``"replacement"``
        (:class:`Replacement`), ``"repaint"`` (:class:`RePaint`) or ``"smc"`` (:class:`TwistedSMC`).
    sampler : Sampler, optional
        The sampler that runs the guided score (``dps``, ``pigdm``; default :class:`~scoresde.EulerMaruyama`
        with 1000 steps) or that the loop method wraps (``replacement``, ``repaint``; default
        ``EulerMaruyama()``). Must be ``None`` for ``"smc"``, which runs its own loop.
    n : int, optional
        Number of samples when the observation's features are a vector: ``shape = (n, D)``.
    shape :
        ``(n, *feature_shape)``, instead of ``n``.
    **kwargs :
        The method's parameters (``scale`` for dps/pigdm; ``jump_length``, ``resamples`` for repaint;
        ``particles``, ``steps``, ``ess_threshold`` for smc), then :func:`scoresde.sample`'s keyword
        arguments (``seed``, ``dtype``, ``device``, ``save_at``, ``progress``, ...).

    Returns
    -------
    xarray.Dataset
        :func:`scoresde.sample`'s Dataset; its attributes also hold ``conditioning_method``,
        ``conditioning_params`` (JSON) and the observation (``conditioning_A`` or ``conditioning_mask``,
        ``conditioning_y``, ``conditioning_noise_std``); ``smc`` adds the variable ``ess`` (dimension ``step``).
    """
    from .samplers import EulerMaruyama

    observation = _check_observation(observation)
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {sorted(METHODS)}")
    own = {
        "dps": ("scale",),
        "pigdm": ("scale",),
        "replacement": (),
        "repaint": ("jump_length", "resamples"),
        "smc": ("particles", "steps", "ess_threshold", "eps"),
    }[method]
    mkw = {k: kwargs.pop(k) for k in own if k in kwargs}
    if shape is None and n is not None:
        shape = (check_positive_int("n", n), observation.dim)
    run: Sampler
    fn: ScoreFn = score_fn
    if method in ("dps", "pigdm"):
        fn = (DPS if method == "dps" else PiGDM)(score_fn, sde, observation, **mkw)
        run = EulerMaruyama() if sampler is None else sampler
        params = {**fn.params()}
    elif method == "replacement":
        run = Replacement(EulerMaruyama() if sampler is None else sampler, observation)  # type: ignore[arg-type]
        params = run.params()
    elif method == "repaint":
        run = RePaint(EulerMaruyama() if sampler is None else sampler, observation, **mkw)  # type: ignore[arg-type]
        params = run.params()
    else:
        if sampler is not None:
            raise ValueError("method='smc' runs its own twisted Euler-Maruyama loop: leave sampler=None")
        run = TwistedSMC(observation, **mkw)
        params = run.params()
    attrs = {"conditioning_method": method, "conditioning_params": _json(params), **observation.attrs()}
    return _run(sde, fn, run, attrs, shape=shape, **kwargs)


def sample_class(
    sde: SDE,
    score_fn: Callable[..., torch.Tensor],
    label: Any,
    method: str = "classifier_free",
    sampler: Sampler | None = None,
    *,
    weight: float = 0.0,
    classifier: Callable[..., torch.Tensor] | None = None,
    null: Any = None,
    shape: Any = None,
    **kwargs: Any,
) -> xr.Dataset:
    r"""Sample the class :math:`c` = ``label`` by guidance; every sampler runs the guided score.

    ``method="classifier"``: :class:`ClassifierGuidance` of the unconditional ``score_fn(x, t)`` by
    ``classifier(x, t)`` with weight ``weight``; ``method="classifier_free"`` (default):
    :class:`ClassifierFreeGuidance` of the conditional ``score_fn(x, t, c)`` with weight ``weight`` and
    unconditional label ``null``. ``sampler`` defaults to :func:`scoresde.sample`'s; ``shape`` and the other
    keyword arguments go to :func:`scoresde.sample`. The attributes hold ``conditioning_method``,
    ``conditioning_params`` (JSON: label, weight) and ``conditioning_label``.
    """
    if method == "classifier":
        if classifier is None:
            raise ValueError("method='classifier' needs classifier=<callable (x, t) -> (batch, C) log-probabilities>")
        fn: Any = ClassifierGuidance(score_fn, classifier, label, weight)
    elif method == "classifier_free":
        if classifier is not None:
            raise ValueError("classifier-free guidance uses no classifier; pass method='classifier' to use one")
        fn = ClassifierFreeGuidance(score_fn, label, weight, null)
    else:
        raise ValueError(f"unknown method {method!r}; choose 'classifier' or 'classifier_free'")
    lab = label.tolist() if isinstance(label, torch.Tensor) else label
    attrs = {"conditioning_method": method, "conditioning_params": _json(fn.params()), "conditioning_label": _json(lab)}
    return _run(sde, fn, sampler, attrs, shape=shape, **kwargs)
