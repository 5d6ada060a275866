r"""Forward SDEs with Gaussian marginals and their time reversals.

Every SDE here is an Itô process on ``[0, T]``

.. math::  dx = f(x, t)\,dt + g(t)\,dw,

written in the vocabulary of Song et al. (2021, *Score-Based Generative Modeling through
Stochastic Differential Equations*): ``sde``, ``marginal_prob``, ``prior_sampling``,
``prior_logp``, ``discretize`` and ``reverse``.

The three classical SDEs (VP, sub-VP, VE) are *linear*, :math:`f(x, t) = f(t)\,x`, so that the
perturbation kernel is Gaussian,

.. math::  x_t \mid x_0 \sim \mathcal N\big(s(t)\,x_0,\ \sigma(t)^2 I\big),

with :math:`s(t) = \exp\int_0^t f` (``mean_coef``) and :math:`\sigma(t)` (``std``). Knowing
:math:`s` and :math:`\sigma` is enough to write the exact score of any Gaussian-mixture data
distribution at any time (see :class:`scoresde.GaussianMixture`).

Conventions
-----------
* ``x`` has shape ``(batch, *feature_shape)``; ``t`` is a Python float, a 0-d tensor, or a
  vector of shape ``(batch,)``. Results follow the dtype and device of ``x``.
* ``diffusion`` is returned with shape ``(batch,)`` (one scalar per sample), as in score_sde.
* A *score function* is a callable ``score_fn(x, t) -> tensor shaped like x`` approximating
  :math:`\nabla_x \log p_t(x)`; it receives ``t`` as a vector of shape ``(batch,)``.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable
from typing import Any

import torch

from ._checks import broadcast_coef, check_finite_tensor, check_positive, check_time
from ._registry import Registry, UnregisteredError, is_abstract, recorded_params

__all__ = [
    "SDE",
    "LinearSDE",
    "VariancePreservingSDE",
    "VPSDE",
    "SubVPSDE",
    "VESDE",
    "EDMSDE",
    "ReverseSDE",
    "ScoreFn",
    "SDES",
    "SDE_REGISTRY",
    "UnregisteredError",
    "sde_config",
    "sde_from_config",
]

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _as_time(t: float | torch.Tensor, x: torch.Tensor, T: float) -> torch.Tensor:
    """Validate ``t`` and return it as a tensor in ``x``'s dtype and device (0-d or ``(batch,)``)."""
    check_time(t, T)
    if isinstance(t, torch.Tensor):
        t = t.to(dtype=x.dtype, device=x.device)
        if t.dim() == 1 and t.shape[0] not in (1, x.shape[0]):
            raise ValueError(
                f"t has {t.shape[0]} entries but x has batch size {x.shape[0]}; pass one time per sample or a scalar"
            )
        return t
    return torch.tensor(float(t), dtype=x.dtype, device=x.device)


def _batch_vector(c: torch.Tensor, batch: int) -> torch.Tensor:
    """Expand a 0-d or ``(1,)``/``(batch,)`` coefficient to shape ``(batch,)``."""
    return c.reshape(-1).expand(batch) if c.numel() == 1 else c


class SDE(abc.ABC):
    r"""Abstract forward SDE :math:`dx = f(x, t)\,dt + g(t)\,dw` on :math:`[0, T]`.

    Subclasses implement :meth:`sde`, :meth:`marginal_prob`, :meth:`prior_sampling` and
    :meth:`prior_logp`. :meth:`discretize` defaults to the Euler–Maruyama step and
    :meth:`reverse` builds the reverse-time SDE or the probability-flow ODE.
    """

    #: ``True`` for objects that describe a process running backwards in time.
    reversed: bool = False

    def __init__(self, T: float = 1.0) -> None:
        self.T = check_positive("T", T)

    # -- the model -----------------------------------------------------------------------
    @abc.abstractmethod
    def sde(self, x: torch.Tensor, t: float | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(drift, diffusion)``: ``f(x, t)`` shaped like ``x`` and ``g(t)`` of shape ``(batch,)``."""

    @abc.abstractmethod
    def marginal_prob(self, x0: torch.Tensor, t: float | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r"""Return mean (shaped like ``x0``) and std (shape ``(batch,)``) of :math:`p_{0t}(x_t \mid x_0)`."""

    @abc.abstractmethod
    def prior_sampling(
        self,
        shape: tuple[int, ...],
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """Draw samples of shape ``shape`` from the prior :math:`p_T`."""

    @abc.abstractmethod
    def prior_logp(self, z: torch.Tensor) -> torch.Tensor:
        """Log-density of the prior at ``z``, one value per sample (shape ``(batch,)``)."""

    # -- derived -------------------------------------------------------------------------
    def discretize(self, x: torch.Tensor, t: float | torch.Tensor, dt: float) -> tuple[torch.Tensor, torch.Tensor]:
        r"""Discrete forward transition over :math:`[t - \Delta t, t]`: :math:`x_t \approx x + f + G z`.

        The default is Euler–Maruyama, :math:`f = f(x, t)\,\Delta t`, :math:`G = g(t)\sqrt{\Delta t}`.
        The reverse-diffusion predictor uses it backwards (Song et al. 2021, eq. 46).

        Returns ``(f, G)`` with ``f`` shaped like ``x`` and ``G`` of shape ``(batch,)``.
        """
        dt = self._check_dt(t, dt)
        drift, diffusion = self.sde(x, t)
        return drift * dt, diffusion * math.sqrt(dt)

    def reverse(self, score_fn: ScoreFn, probability_flow: bool = False) -> ReverseSDE:
        r"""The time reversal driven by ``score_fn`` (Anderson 1982; Song et al. 2021, eq. 6 and 13).

        .. math::
            dx = [f(x, t) - g(t)^2 \nabla_x \log p_t(x)]\,dt + g(t)\,d\bar w

        run from :math:`t = T` to 0, or with ``probability_flow=True`` the ODE
        :math:`dx/dt = f(x, t) - \tfrac12 g(t)^2 \nabla_x \log p_t(x)` that shares the marginals.
        """
        return ReverseSDE(self, score_fn, probability_flow)

    def params(self) -> dict[str, Any]:
        """Constructor parameters, for provenance records and ``repr``."""
        return {"T": self.T}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"

    def _check_dt(self, t: float | torch.Tensor, dt: float) -> float:
        dt = check_positive("dt", dt)
        tmin = float(t.min()) if isinstance(t, torch.Tensor) else float(t)
        if tmin - dt < -1e-12 * self.T:
            raise ValueError(f"dt={dt!r} steps below t=0 from t={tmin!r}; use dt <= t")
        return dt


class LinearSDE(SDE):
    r"""An SDE with linear drift :math:`f(x, t) = f(t)\,x` and state-independent diffusion :math:`g(t)`.

    Its perturbation kernel is :math:`\mathcal N(s(t) x_0, \sigma(t)^2 I)` where
    :math:`\dot s = f s` and :math:`\frac{d}{dt}\sigma^2 = 2 f \sigma^2 + g^2`. Subclasses
    implement the four scalar functions ``drift_coef`` (:math:`f`), ``diffusion_coef``
    (:math:`g`), ``mean_coef`` (:math:`s`) and ``std`` (:math:`\sigma`) on time tensors, and
    ``prior_std``.

    **Your own SDE.** Subclass it (or :class:`VariancePreservingSDE`, which needs only ``beta`` and
    ``log_mean_coef``), implement the four functions, call ``super().__init__(T)``, and override
    :meth:`~SDE.params` to return the constructor arguments as a dict of numbers, strings and lists
    (``type(sde)(**sde.params())`` must rebuild the SDE). Defining the class registers it in
    :data:`SDE_REGISTRY`, so that it samples, trains and is checkpointed like the built-in SDEs::

        class CosineVP(scoresde.VariancePreservingSDE):            # registered as "mymodule.CosineVP"
            def __init__(self, s: float = 0.008, T: float = 1.0) -> None:
                super().__init__(T)
                self.s = s
            def params(self):
                return {"s": self.s, "T": self.T}
            def beta(self, t): ...
            def log_mean_coef(self, t): ...

    Registration happens in ``__init_subclass__`` for every concrete subclass, under the class
    keyword ``name`` (``class CosineVP(VariancePreservingSDE, name="cosine-vp")``) or by default
    ``f"{cls.__module__}.{cls.__qualname__}"`` (the plain class name for the library's own SDEs).
    ``register=False`` or a name starting with an underscore leaves a class out. A checkpoint records
    the name and ``params()`` (:func:`sde_config`); :func:`sde_from_config` looks the name up and never
    imports anything, so the module that defines the class must be imported before loading.
    """

    prior_std: float = 1.0

    def __init_subclass__(cls, /, name: str | None = None, register: bool = True, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if register and not cls.__name__.startswith("_") and not is_abstract(cls):
            SDE_REGISTRY.register(cls, name)
        elif name is not None:
            raise TypeError(f"{cls.__qualname__} is not registered (abstract, private or register=False); drop name=")

    @abc.abstractmethod
    def drift_coef(self, t: torch.Tensor) -> torch.Tensor:
        r""":math:`f(t)` in :math:`f(x, t) = f(t) x`."""

    @abc.abstractmethod
    def diffusion_coef(self, t: torch.Tensor) -> torch.Tensor:
        r""":math:`g(t)`."""

    @abc.abstractmethod
    def mean_coef(self, t: torch.Tensor) -> torch.Tensor:
        r""":math:`s(t) = \exp\int_0^t f(u)\,du`, the mean scaling of the perturbation kernel."""

    @abc.abstractmethod
    def std(self, t: torch.Tensor) -> torch.Tensor:
        r""":math:`\sigma(t)`, the standard deviation of the perturbation kernel."""

    def sde(self, x: torch.Tensor, t: float | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = _as_time(t, x, self.T)
        drift = broadcast_coef(self.drift_coef(t), x) * x
        return drift, _batch_vector(self.diffusion_coef(t), x.shape[0])

    def marginal_prob(self, x0: torch.Tensor, t: float | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = _as_time(t, x0, self.T)
        mean = broadcast_coef(self.mean_coef(t), x0) * x0
        return mean, _batch_vector(self.std(t), x0.shape[0])

    def prior_sampling(
        self,
        shape: tuple[int, ...],
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        if device is None and generator is not None:
            device = generator.device
        z = torch.randn(*shape, generator=generator, dtype=dtype, device=device)
        return z.mul_(self.prior_std) if self.prior_std != 1.0 else z

    def prior_logp(self, z: torch.Tensor) -> torch.Tensor:
        r"""Gaussian prior log-density.

        .. math:: \log \mathcal N(z; 0, \sigma_T^2 I) = -\tfrac{N}{2}\log(2\pi\sigma_T^2) - \|z\|^2 / (2\sigma_T^2)
        """
        check_finite_tensor("z", z)
        n = z[0].numel()
        sq = z.reshape(z.shape[0], -1).square().sum(dim=1)
        var = self.prior_std**2
        return -0.5 * n * math.log(2 * math.pi * var) - sq / (2 * var)

    def mean_coef_dot(self, t: torch.Tensor) -> torch.Tensor:
        r""":math:`\dot s(t) = f(t)\,s(t)`; subclasses override it where a closed form is better behaved."""
        return self.drift_coef(t) * self.mean_coef(t)

    def std_dot(self, t: torch.Tensor) -> torch.Tensor:
        r""":math:`\dot\sigma(t) = \big(g(t)^2 + 2 f(t)\,\sigma(t)^2\big) / (2\sigma(t))`, from
        :math:`\tfrac{d}{dt}\sigma^2 = 2f\sigma^2 + g^2` (infinite where :math:`\sigma = 0`)."""
        sigma = self.std(t)
        return (self.diffusion_coef(t) ** 2 + 2.0 * self.drift_coef(t) * sigma**2) / (2.0 * sigma)

    def coefficients(
        self, t: float | torch.Tensor, like: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return ``(f, g, s, sigma)`` at ``t`` as tensors (dtype/device of ``like``, else float64)."""
        like = torch.empty(0, dtype=torch.float64) if like is None else like
        t = _as_time(t, like.reshape(-1, 1) if like.dim() == 0 else like, self.T)
        return self.drift_coef(t), self.diffusion_coef(t), self.mean_coef(t), self.std(t)


def _load_library_sdes() -> None:
    """Import the library's own modules that define SDEs (a fixed list), so that their classes are registered."""
    from . import ddpm, flow  # noqa: F401


#: every registered :class:`LinearSDE` class by name (see :class:`LinearSDE`), a read-only mapping with
#: ``register(cls, name=None)`` and ``unregister(cls_or_name)``
SDE_REGISTRY: Registry[LinearSDE] = Registry(
    "SDE",
    LinearSDE,  # type: ignore[type-abstract]  # the base class: registered classes are its concrete subclasses
    "scoresde.SDE_REGISTRY",
    _load_library_sdes,
)


class VariancePreservingSDE(LinearSDE):
    r"""The VP family: :math:`f = -\tfrac12\beta(t)`, :math:`g = \sqrt{\beta(t)}`, :math:`s = e^{\log s(t)}`,
    :math:`\sigma^2 = 1 - s^2`, and the exact transition as ``discretize``.

    Subclasses give :meth:`beta` and :meth:`log_mean_coef` (:math:`\log s = -\tfrac12\int_0^t\beta`):
    :class:`VPSDE` (linear :math:`\beta`) and :class:`scoresde.DDPMSDE` (a DDPM chain's :math:`\beta`);
    subclass it for another schedule :math:`\beta(t)`.
    """

    @abc.abstractmethod
    def beta(self, t: torch.Tensor) -> torch.Tensor:
        r""":math:`\beta(t)`."""

    @abc.abstractmethod
    def log_mean_coef(self, t: torch.Tensor) -> torch.Tensor:
        r""":math:`\log s(t) = -\tfrac12\int_0^t \beta`."""

    def drift_coef(self, t: torch.Tensor) -> torch.Tensor:
        return -0.5 * self.beta(t)

    def diffusion_coef(self, t: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(self.beta(t))

    def mean_coef(self, t: torch.Tensor) -> torch.Tensor:
        return torch.exp(self.log_mean_coef(t))

    def std(self, t: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(-torch.expm1(2.0 * self.log_mean_coef(t)))

    def discretize(self, x: torch.Tensor, t: float | torch.Tensor, dt: float) -> tuple[torch.Tensor, torch.Tensor]:
        r"""The exact transition over :math:`[t - \Delta t, t]`: :math:`f = (\sqrt{\alpha} - 1)x`,
        :math:`G = \sqrt{1 - \alpha}` with :math:`\alpha = s(t)^2 / s(t - \Delta t)^2` (the DDPM step)."""
        dt = self._check_dt(t, dt)
        t = _as_time(t, x, self.T)
        # log alpha_i = 2 (log s(t) - log s(t - dt)), beta_i = 1 - alpha_i
        log_alpha = 2.0 * (self.log_mean_coef(t) - self.log_mean_coef(t - dt))
        f = broadcast_coef(torch.expm1(0.5 * log_alpha), x) * x
        G = torch.sqrt(-torch.expm1(log_alpha))
        return f, _batch_vector(G, x.shape[0])


class VPSDE(VariancePreservingSDE):
    r"""Variance-preserving SDE (continuous DDPM), Song et al. 2021 eq. 11.

    .. math::
        \beta(t) = \beta_{\min} + t(\beta_{\max} - \beta_{\min}), \quad
        dx = -\tfrac12 \beta(t)\,x\,dt + \sqrt{\beta(t)}\,dw,

        s(t) = \exp\!\Big(-\tfrac14 t^2 (\beta_{\max} - \beta_{\min}) - \tfrac12 t\,\beta_{\min}\Big),
        \quad \sigma(t)^2 = 1 - s(t)^2, \quad p_T \approx \mathcal N(0, I).

    ``discretize`` is the exact Gaussian transition, which over one step of the grid is the
    DDPM update :math:`x_i = \sqrt{1 - \beta_i}\,x_{i-1} + \sqrt{\beta_i}\,z` with
    :math:`1 - \beta_i = s(t_i)^2 / s(t_{i-1})^2`.
    """

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, T: float = 1.0) -> None:
        super().__init__(T)
        self.beta_min = check_positive("beta_min", beta_min)
        self.beta_max = check_positive("beta_max", beta_max)
        if self.beta_max < self.beta_min:
            raise ValueError(f"beta_max must be >= beta_min, got beta_min={beta_min!r}, beta_max={beta_max!r}")

    def params(self) -> dict[str, Any]:
        return {"beta_min": self.beta_min, "beta_max": self.beta_max, "T": self.T}

    def beta(self, t: torch.Tensor) -> torch.Tensor:
        r""":math:`\beta(t) = \beta_{\min} + t(\beta_{\max} - \beta_{\min})`."""
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def log_mean_coef(self, t: torch.Tensor) -> torch.Tensor:
        r""":math:`\log s(t) = -\tfrac14 t^2(\beta_{\max}-\beta_{\min}) - \tfrac12 t\beta_{\min}`."""
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min


class SubVPSDE(VPSDE):
    r"""Sub-variance-preserving SDE, Song et al. 2021 eq. 29.

    .. math::
        dx = -\tfrac12\beta(t)\,x\,dt
             + \sqrt{\beta(t)\big(1 - e^{-2\beta_{\min} t - (\beta_{\max}-\beta_{\min}) t^2}\big)}\,dw,

        s(t) \text{ as for VP}, \quad \sigma(t) = 1 - s(t)^2, \quad p_T \approx \mathcal N(0, I).

    Its variance is bounded by the VP variance at every ``t``. ``discretize`` is Euler–Maruyama.
    """

    def diffusion_coef(self, t: torch.Tensor) -> torch.Tensor:
        # 1 - exp(-2 b0 t - (b1 - b0) t^2) = 1 - s(t)^4
        return torch.sqrt(self.beta(t) * -torch.expm1(4.0 * self.log_mean_coef(t)))

    def std(self, t: torch.Tensor) -> torch.Tensor:
        return -torch.expm1(2.0 * self.log_mean_coef(t))

    def discretize(self, x: torch.Tensor, t: float | torch.Tensor, dt: float) -> tuple[torch.Tensor, torch.Tensor]:
        return SDE.discretize(self, x, t, dt)


class VESDE(LinearSDE):
    r"""Variance-exploding SDE (continuous SMLD / NCSN), Song et al. 2021 eq. 9.

    .. math::
        \sigma(t) = \sigma_{\min}\,(\sigma_{\max}/\sigma_{\min})^{t}, \quad
        dx = \sigma(t)\sqrt{2\log(\sigma_{\max}/\sigma_{\min})}\,dw,

        s(t) = 1, \quad p_T \approx \mathcal N(0, \sigma_{\max}^2 I).

    As in score_sde, the kernel std is :math:`\sigma(t)` itself, so :math:`p_0` is the data
    smoothed by :math:`\mathcal N(0, \sigma_{\min}^2 I)`; the moment ODE
    :math:`\frac{d}{dt}\sigma^2 = g^2` holds exactly. ``discretize`` is the exact transition
    :math:`G = \sqrt{\sigma(t)^2 - \sigma(t - \Delta t)^2}` (the SMLD noise increment).
    """

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, T: float = 1.0) -> None:
        super().__init__(T)
        self.sigma_min = check_positive("sigma_min", sigma_min)
        self.sigma_max = check_positive("sigma_max", sigma_max)
        if self.sigma_max <= self.sigma_min:
            raise ValueError(f"sigma_max must be > sigma_min, got sigma_min={sigma_min!r}, sigma_max={sigma_max!r}")
        self.prior_std = self.sigma_max

    def params(self) -> dict[str, Any]:
        return {"sigma_min": self.sigma_min, "sigma_max": self.sigma_max, "T": self.T}

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        r""":math:`\sigma(t) = \sigma_{\min} (\sigma_{\max}/\sigma_{\min})^{t/T}`."""
        return self.sigma_min * torch.exp((t / self.T) * math.log(self.sigma_max / self.sigma_min))

    def drift_coef(self, t: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(t)

    def diffusion_coef(self, t: torch.Tensor) -> torch.Tensor:
        return self.sigma(t) * math.sqrt(2 * math.log(self.sigma_max / self.sigma_min) / self.T)

    def mean_coef(self, t: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(t)

    def std(self, t: torch.Tensor) -> torch.Tensor:
        return self.sigma(t)

    def sde(self, x: torch.Tensor, t: float | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = _as_time(t, x, self.T)
        return torch.zeros_like(x), _batch_vector(self.diffusion_coef(t), x.shape[0])

    def discretize(self, x: torch.Tensor, t: float | torch.Tensor, dt: float) -> tuple[torch.Tensor, torch.Tensor]:
        dt = self._check_dt(t, dt)
        t = _as_time(t, x, self.T)
        G = torch.sqrt(self.sigma(t) ** 2 - self.sigma(torch.clamp(t - dt, min=0.0)) ** 2)
        return torch.zeros_like(x), _batch_vector(G, x.shape[0])


class EDMSDE(LinearSDE):
    r"""The variance-exploding SDE in EDM's parameterisation (Karras et al. 2022): the time is the noise level.

    .. math::
        \sigma(t) = \sqrt{t^2 + \sigma_{\min}^2}, \quad s(t) = 1, \quad f = 0, \quad g(t) = \sqrt{2t},
        \quad dx = \sqrt{2t}\,dw, \qquad t \in [0, T],\ T = \sigma_{\max},

    so that with the default :math:`\sigma_{\min} = 0`, :math:`\sigma(t) = t`, :math:`t = 0` is the data
    itself and the probability-flow ODE is EDM's :math:`dx/dt = -t\,\nabla_x\log p_t(x)` (eq. 4 with
    :math:`\sigma(t) = t`). A :math:`\sigma_{\min} > 0` smooths :math:`p_0` by
    :math:`\mathcal N(0, \sigma_{\min}^2 I)`, as :class:`VESDE` does; :math:`\frac{d}{dt}\sigma^2 = g^2` holds
    for every :math:`\sigma_{\min}`. The prior is :math:`\mathcal N(0, \sigma(T)^2 I)`. ``discretize`` is the
    exact transition :math:`G = \sqrt{\sigma(t)^2 - \sigma(t - \Delta t)^2} = \sqrt{2t\Delta t - \Delta t^2}`.

    The score is infinite at :math:`t = 0` when :math:`\sigma_{\min} = 0`: samplers stop at ``eps > 0``, and the
    data-prediction solvers reach :math:`\sigma = 0` with ``to_zero=True``.

    Parameters
    ----------
    sigma_max : float
        :math:`T = \sigma_{\max} > 0`. Default 80 (EDM's).
    sigma_min : float
        :math:`\sigma_{\min} \ge 0`, below ``sigma_max``. Default 0.
    """

    def __init__(self, sigma_max: float = 80.0, sigma_min: float = 0.0) -> None:
        sigma_max = check_positive("sigma_max", sigma_max)
        super().__init__(T=sigma_max)
        self.sigma_max = sigma_max
        self.sigma_min = check_positive("sigma_min", sigma_min, allow_zero=True)
        if self.sigma_min >= self.sigma_max:
            raise ValueError(f"sigma_min must be < sigma_max, got sigma_min={sigma_min!r}, sigma_max={sigma_max!r}")
        self.prior_std = math.hypot(self.sigma_max, self.sigma_min)

    def params(self) -> dict[str, Any]:
        return {"sigma_max": self.sigma_max, "sigma_min": self.sigma_min}

    def drift_coef(self, t: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(t)

    def diffusion_coef(self, t: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(2.0 * t)

    def mean_coef(self, t: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(t)

    def std(self, t: torch.Tensor) -> torch.Tensor:
        r""":math:`\sigma(t) = \sqrt{t^2 + \sigma_{\min}^2}` (:math:`= t` for :math:`\sigma_{\min} = 0`)."""
        return t.abs() if self.sigma_min == 0 else torch.hypot(t, torch.full_like(t, self.sigma_min))

    def std_dot(self, t: torch.Tensor) -> torch.Tensor:
        r""":math:`\dot\sigma = t/\sigma(t)` (1 for :math:`\sigma_{\min} = 0`, also at :math:`t = 0`)."""
        return torch.ones_like(t) if self.sigma_min == 0 else t / self.std(t)

    def sde(self, x: torch.Tensor, t: float | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = _as_time(t, x, self.T)
        return torch.zeros_like(x), _batch_vector(self.diffusion_coef(t), x.shape[0])

    def discretize(self, x: torch.Tensor, t: float | torch.Tensor, dt: float) -> tuple[torch.Tensor, torch.Tensor]:
        dt = self._check_dt(t, dt)
        t = _as_time(t, x, self.T)
        G = torch.sqrt(torch.clamp(2.0 * t * dt - dt**2, min=0.0))
        return torch.zeros_like(x), _batch_vector(G, x.shape[0])


class ReverseSDE(SDE):
    r"""The time reversal of ``base`` driven by a score function (or its probability-flow ODE).

    Drifts keep score_sde's convention: they are written in the original time variable and the
    process is integrated with negative steps :math:`dt < 0` from ``T`` to 0. For a forward
    ``base``

    .. math::
        \bar f(x, t) = f(x, t) - c\,g(t)^2\,s_\theta(x, t), \qquad
        \bar g(t) = \begin{cases} g(t) & \text{SDE } (c = 1) \\ 0 & \text{ODE } (c = \tfrac12)\end{cases}

    Reversing a reversed process flips the sign of the score term, so
    ``sde.reverse(s).reverse(s)`` has the drift and diffusion of ``sde``. Marginals and prior are
    those of ``base``.
    """

    def __init__(self, base: SDE, score_fn: ScoreFn, probability_flow: bool = False) -> None:
        if not callable(score_fn):
            raise TypeError("score_fn must be callable as score_fn(x, t)")
        super().__init__(base.T)
        self.base = base
        self.score_fn = score_fn
        self.probability_flow = bool(probability_flow)
        self.reversed = not base.reversed
        self._sign = 1.0 if base.reversed else -1.0
        self._c = 0.5 if self.probability_flow else 1.0

    def params(self) -> dict[str, Any]:
        return {"base": repr(self.base), "probability_flow": self.probability_flow}

    def _vec_t(self, x: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
        t = _as_time(t, x, self.T)
        return _batch_vector(t, x.shape[0])

    def sde(self, x: torch.Tensor, t: float | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        drift, diffusion = self.base.sde(x, t)
        score = self.score_fn(x, self._vec_t(x, t))
        drift = drift + (self._sign * self._c) * broadcast_coef(diffusion**2, x) * score
        if self.probability_flow:
            diffusion = torch.zeros_like(diffusion)
        return drift, diffusion

    def discretize(self, x: torch.Tensor, t: float | torch.Tensor, dt: float) -> tuple[torch.Tensor, torch.Tensor]:
        r"""Reverse of the base transition: :math:`\bar f = f - c\,G^2 s_\theta`, :math:`\bar G = G` or 0."""
        f, G = self.base.discretize(x, t, dt)
        score = self.score_fn(x, self._vec_t(x, t))
        f = f + (self._sign * self._c) * broadcast_coef(G**2, x) * score
        if self.probability_flow:
            G = torch.zeros_like(G)
        return f, G

    def marginal_prob(self, x0: torch.Tensor, t: float | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.base.marginal_prob(x0, t)

    def prior_sampling(
        self,
        shape: tuple[int, ...],
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        return self.base.prior_sampling(shape, generator=generator, dtype=dtype, device=device)

    def prior_logp(self, z: torch.Tensor) -> torch.Tensor:
        return self.base.prior_logp(z)


SDES: dict[str, type[LinearSDE]] = {"vp": VPSDE, "subvp": SubVPSDE, "ve": VESDE, "edm": EDMSDE}


def sde_config(sde: SDE) -> dict[str, Any]:
    """A JSON-able description ``{"class": name, "params": sde.params()}`` that :func:`sde_from_config` rebuilds.

    ``name`` is the name the SDE's class is registered under in :data:`SDE_REGISTRY` (see
    :class:`LinearSDE`). Raises ``TypeError`` for an SDE that is not a registered :class:`LinearSDE`, or
    whose ``params()`` are not JSON-like or not arguments of its constructor.
    """
    if not isinstance(sde, LinearSDE):
        raise TypeError(
            f"only linear SDEs (subclasses of scoresde.LinearSDE) can be recorded, got {type(sde).__name__}"
        )
    name = SDE_REGISTRY.name_of(type(sde))
    params = recorded_params(sde)
    return {"class": name, "params": params}


def sde_from_config(config: dict[str, Any] | str) -> LinearSDE:
    """Build an SDE from :func:`sde_config` output or a short name (``"vp"``, ``"subvp"``, ``"ve"``, ``"edm"``).

    The class is looked up by its registered name in :data:`SDE_REGISTRY`; nothing is imported. A name
    that is not registered raises :class:`UnregisteredError` (a ``ValueError``) asking to import the
    module that defines the class first; other unusable configurations raise ``ValueError``.
    """
    if isinstance(config, str):
        if config.lower() not in SDES:
            raise ValueError(f"unknown SDE {config!r}; choose one of {sorted(SDES)}")
        return SDES[config.lower()]()
    given: object = config  # read from files: may be anything
    if not isinstance(given, dict) or not isinstance(given.get("params"), dict) or "class" not in given:
        raise ValueError(f"cannot rebuild an SDE from {config!r}; expected {{'class': name, 'params': {{...}}}}")
    cls = SDE_REGISTRY.lookup(config["class"])
    try:
        return cls(**config["params"])
    except TypeError as err:
        raise ValueError(
            f"cannot rebuild the SDE {config['class']!r} from the parameters {config['params']!r} ({err})"
        ) from None
