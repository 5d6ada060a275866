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

The trainer minimises an :class:`Objective`: :class:`DenoisingScoreMatching`, :class:`DDPMObjective`,
:class:`FlowMatching`, :class:`EDMObjective`, or a subclass of your own (registered when it is defined,
recorded in checkpoints by name and parameters, never imported on loading).
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, cast

import numpy as np
import torch

from ._checks import broadcast_coef, check_finite_tensor, check_positive
from ._registry import Registry, default_name, is_abstract, recorded_params
from .sde import EDMSDE, SDE, LinearSDE
from .time_grids import invert_log_snr, noise_level

if TYPE_CHECKING:
    from .nets import ScoreModel

__all__ = [
    "dsm_loss",
    "velocity_loss",
    "WEIGHTINGS",
    "Objective",
    "DenoisingScoreMatching",
    "DDPMObjective",
    "FlowMatching",
    "EDMObjective",
    "OBJECTIVE_REGISTRY",
    "objective_config",
    "objective_from_config",
]

WEIGHTINGS = ("sigma2", "likelihood")


def dsm_loss(
    sde: SDE,
    model: Callable[..., torch.Tensor],
    x0: torch.Tensor,
    *,
    weighting: str = "sigma2",
    eps: float = 1e-5,
    reduce: str = "mean",
    generator: torch.Generator | None = None,
    t: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
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
    labels : tensor, optional
        Class labels of ``x0``, shape ``(batch,)``, for a class-conditional model: the loss is then that of
        :math:`s_\theta(x_t, t, c)`, called as ``model(x_t, t, labels)`` (the null class where a label was
        dropped). ``None``: ``model(x_t, t)``.
    """
    t, z = _times_and_noise("dsm_loss", sde, x0, eps, reduce, generator, t, z, weighting=weighting)
    mean, std = sde.marginal_prob(x0, t)
    std_b = broadcast_coef(std, x0)
    x_t = mean + std_b * z
    score = _checked(model(x_t, t) if labels is None else model(x_t, t, labels), x0)
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
    model: Callable[..., torch.Tensor],
    x0: torch.Tensor,
    *,
    eps: float = 1e-5,
    reduce: str = "mean",
    generator: torch.Generator | None = None,
    t: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
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
    ``eps``, ``reduce``, ``generator``, ``t``, ``z`` and ``labels`` are as in :func:`dsm_loss`.
    """
    t, z = _times_and_noise("velocity_loss", sde, x0, eps, reduce, generator, t, z)
    s, sigma = broadcast_coef(sde.mean_coef(t), x0), broadcast_coef(sde.std(t), x0)
    target = broadcast_coef(sde.mean_coef_dot(t), x0) * x0 + broadcast_coef(sde.std_dot(t), x0) * z
    x_t = s * x0 + sigma * z
    pred = _checked(model(x_t, t) if labels is None else model(x_t, t, labels), x0)
    return _reduce((pred - target).square(), reduce).mean()


# --------------------------------------------------------------------------------------------
# training objectives
# --------------------------------------------------------------------------------------------
class Objective(abc.ABC):
    r"""A training objective: the loss that :class:`scoresde.training.Trainer` minimises.

    **Your own objective.** Subclass it and implement :meth:`loss` (and :meth:`check` and
    :meth:`params` where needed)::

        class TruncatedDSM(scoresde.Objective):          # registered as "mymodule.TruncatedDSM"
            def __init__(self, t_max: float = 0.5) -> None:
                self.t_max = t_max
            def params(self):
                return {"t_max": self.t_max}
            def loss(self, sde, model, x0, generator, z=None):
                t = self.t_max * torch.rand(x0.shape[0], generator=generator, dtype=x0.dtype, device=x0.device)
                return dsm_loss(sde, model, x0, generator=generator, t=t.clamp_min(1e-5), z=z)

        Trainer(sde, model, data, TrainConfig(objective=TruncatedDSM(0.3)))

    Contract:

    * :meth:`loss` returns a scalar tensor with a gradient with respect to the model's parameters, drawing
      every random number from ``generator`` (the trainer's own, so that a run and its resumption from a
      checkpoint are bit-identical); ``z`` is the noise paired with ``x0`` when the data is a coupling
      (only for objectives with ``paired_noise = True``), else ``None``. An objective with
      ``conditional = True`` (every built-in one) also takes ``labels=``: the class labels of ``x0`` (a
      ``(batch,)`` int64 tensor, the null class ``num_classes`` where a label was dropped), which the trainer
      passes when the model is class-conditional; it trains ``model(x_t, t, labels)``.
    * :meth:`check` raises a clear ``TypeError`` / ``ValueError`` when the SDE and the model cannot be
      trained by this objective; the trainer calls it once, before training.
    * :meth:`params` returns the constructor arguments as numbers, strings, booleans and lists of these, so
      that ``type(obj)(**obj.params())`` rebuilds the objective.

    **Registration.** Defining a concrete subclass registers it in :data:`OBJECTIVE_REGISTRY` under
    :attr:`name`: the class keyword ``name`` (``class TruncatedDSM(Objective, name="truncated-dsm")``), a
    ``name`` class attribute, or by default ``f"{cls.__module__}.{cls.__qualname__}"``; ``register=False``
    or a class name starting with an underscore leaves it out. A checkpoint records
    ``{"name": ..., "params": ...}`` (:func:`objective_config`); loading looks the name up
    (:func:`objective_from_config`) and never imports anything, so the module that defines the class must
    be imported first.
    """

    #: the registered name (set when the class is defined)
    name: ClassVar[str]
    #: whether :meth:`loss` trains on data paired with noise (a reflow coupling)
    paired_noise: ClassVar[bool] = False
    #: whether :meth:`loss` takes ``labels=`` (the class labels of a class-conditional model's batch)
    conditional: ClassVar[bool] = False

    def __init_subclass__(cls, /, name: str | None = None, register: bool = True, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("name")
        if name is not None and own is not None and own != name:
            raise TypeError(f"{cls.__qualname__} gives two names, name={name!r} and the attribute {own!r}")
        chosen = name if name is not None else own if isinstance(own, str) else default_name(cls)
        cls.name = chosen
        if register and not cls.__name__.startswith("_") and not is_abstract(cls):
            OBJECTIVE_REGISTRY.register(cls, chosen)

    def check(self, sde: SDE, model: ScoreModel) -> None:  # noqa: B027  # optional hook: no check by default
        """Raise ``TypeError`` / ``ValueError`` if ``sde`` and ``model`` cannot be trained by this objective."""

    @abc.abstractmethod
    def loss(
        self,
        sde: SDE,
        model: ScoreModel,
        x0: torch.Tensor,
        generator: torch.Generator | None,
        z: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The loss on the batch ``x0`` (shape ``(batch, *features)``), a scalar tensor (``labels``: see the
        contract above; only objectives with ``conditional = True`` are given them)."""

    def params(self) -> dict[str, Any]:
        """Constructor arguments (JSON-like), recorded in checkpoints."""
        return {}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Objective) and type(other) is type(self) and other.params() == self.params()

    def __hash__(self) -> int:
        return hash((type(self), repr(self)))


#: every registered :class:`Objective` class by name, a read-only mapping with ``register(cls, name=None)``
#: and ``unregister(cls_or_name)``
OBJECTIVE_REGISTRY: Registry[Objective] = Registry(
    "objective",
    Objective,  # type: ignore[type-abstract]  # the base class: registered classes are its concrete subclasses
    "scoresde.OBJECTIVE_REGISTRY",
)


def _check_linear(sde: SDE, what: str) -> None:
    if not isinstance(sde, LinearSDE):
        raise TypeError(f"{what} needs a linear SDE (VPSDE, SubVPSDE, VESDE, ...), got {type(sde).__name__}")


def _check_options(weighting: str | None, eps: float | None, reduce: str) -> None:
    for label, value in (("weighting", weighting), ("reduce", reduce)):
        if value is not None and not isinstance(value, str):
            raise TypeError(f"{label} must be a string, got {type(value).__name__}")
    if weighting is not None and weighting not in WEIGHTINGS:
        raise ValueError(f"unknown weighting {weighting!r}; choose one of {WEIGHTINGS}")
    if reduce not in ("mean", "sum"):
        raise ValueError(f"reduce must be 'mean' or 'sum', got {reduce!r}")
    if eps is not None:
        check_positive("eps", eps)


class DenoisingScoreMatching(Objective, name="dsm"):
    r"""Continuous-time denoising score matching, :func:`dsm_loss` with :math:`t \sim U[\varepsilon, T]`.

    ``TrainConfig(objective="dsm", weighting=..., eps=..., reduce=...)`` is this objective.

    Parameters
    ----------
    weighting : {"sigma2", "likelihood"}
        :math:`\lambda(t) = \sigma(t)^2` or :math:`g(t)^2`.
    eps : float
        Smallest training time.
    reduce : {"mean", "sum"}
        Reduction of the squared error over the feature dimensions.
    """

    conditional = True

    def __init__(self, weighting: str = "sigma2", eps: float = 1e-5, reduce: str = "mean") -> None:
        _check_options(weighting, eps, reduce)
        self.weighting, self.eps, self.reduce = weighting, float(eps), reduce

    def params(self) -> dict[str, Any]:
        return {"weighting": self.weighting, "eps": self.eps, "reduce": self.reduce}

    def check(self, sde: SDE, model: ScoreModel) -> None:
        _check_linear(sde, "denoising score matching")

    def loss(
        self,
        sde: SDE,
        model: ScoreModel,
        x0: torch.Tensor,
        generator: torch.Generator | None,
        z: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return dsm_loss(
            sde,
            model,
            x0,
            weighting=self.weighting,
            eps=self.eps,
            reduce=self.reduce,
            generator=generator,
            z=z,
            labels=labels,
        )


class DDPMObjective(Objective, name="ddpm"):
    r"""Denoising score matching on the grid of a :class:`scoresde.DDPMSDE`: :math:`t = i/N`, :math:`i \sim U\{1..N\}`.

    With ``weighting="sigma2"`` and an ``"eps"`` model this is Ho et al.'s
    :math:`\|\varepsilon - \hat\varepsilon_\theta(x_i, i)\|^2`. ``TrainConfig(objective="ddpm",
    weighting=..., reduce=...)`` is this objective.

    Parameters
    ----------
    weighting : {"sigma2", "likelihood"}
        As in :class:`DenoisingScoreMatching`.
    reduce : {"mean", "sum"}
        As in :class:`DenoisingScoreMatching`.
    """

    conditional = True

    def __init__(self, weighting: str = "sigma2", reduce: str = "mean") -> None:
        _check_options(weighting, None, reduce)
        self.weighting, self.reduce = weighting, reduce

    def params(self) -> dict[str, Any]:
        return {"weighting": self.weighting, "reduce": self.reduce}

    def check(self, sde: SDE, model: ScoreModel) -> None:
        from .ddpm import DDPMSDE

        if not isinstance(sde, DDPMSDE):
            raise ValueError(
                f"objective='ddpm' trains on the grid of a DDPMSDE (e.g. DDPMSchedule.linear().sde()), "
                f"got {type(sde).__name__}; use objective='dsm' for continuous SDEs"
            )

    def loss(
        self,
        sde: SDE,
        model: ScoreModel,
        x0: torch.Tensor,
        generator: torch.Generator | None,
        z: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        n = int(getattr(sde, "N"))  # noqa: B009  # a DDPMSDE: see check
        t = torch.randint(1, n + 1, (x0.shape[0],), generator=generator, device=x0.device).to(x0.dtype) / n
        return dsm_loss(
            sde, model, x0, weighting=self.weighting, reduce=self.reduce, generator=generator, t=t, z=z, labels=labels
        )


class FlowMatching(Objective, name="flow_matching"):
    r"""Conditional flow matching, :func:`velocity_loss` for a ``"velocity"`` model.

    On :class:`scoresde.RectifiedFlow` the target is :math:`z - x_0`. It also trains on data paired with
    noise (a reflow coupling, ``paired_noise = True``). ``TrainConfig(objective="flow_matching", eps=...,
    reduce=...)`` is this objective.

    Parameters
    ----------
    eps : float
        Smallest training time.
    reduce : {"mean", "sum"}
        Reduction of the squared error over the feature dimensions.
    """

    paired_noise = True

    conditional = True

    def __init__(self, eps: float = 1e-5, reduce: str = "mean") -> None:
        _check_options(None, eps, reduce)
        self.eps, self.reduce = float(eps), reduce

    def params(self) -> dict[str, Any]:
        return {"eps": self.eps, "reduce": self.reduce}

    def check(self, sde: SDE, model: ScoreModel) -> None:
        _check_linear(sde, "flow matching")
        if getattr(model, "parameterization", None) != "velocity":
            raise ValueError(
                "objective='flow_matching' needs a velocity model: ScoreModel(net, sde, parameterization='velocity')"
            )

    def loss(
        self,
        sde: SDE,
        model: ScoreModel,
        x0: torch.Tensor,
        generator: torch.Generator | None,
        z: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return velocity_loss(
            cast(LinearSDE, sde),
            model.velocity,
            x0,
            eps=self.eps,
            reduce=self.reduce,
            generator=generator,
            z=z,
            labels=labels,
        )


class EDMObjective(Objective, name="edm"):
    r"""EDM's training objective (Karras et al. 2022, eq. 2 and Table 1), for any linear SDE and any model.

    With the noise level :math:`\tilde\sigma = \sigma(t)/s(t)` and the model's data prediction
    :math:`D_\theta` (:meth:`scoresde.nets.ScoreModel.data_prediction`; best with
    ``parameterization="edm"``, whose preconditioning gives every noise level unit weight on the network's
    output),

    .. math::
        \mathcal L(\theta) = \mathbb E_{\tilde\sigma, x_0, z}\,\lambda(\tilde\sigma)\,
            \big\| D_\theta\big(s(t)(x_0 + \tilde\sigma z), t\big) - x_0 \big\|^2, \qquad
        \lambda(\tilde\sigma) = \frac{\tilde\sigma^2 + \sigma_{\rm data}^2}{(\tilde\sigma\,\sigma_{\rm data})^2},
        \qquad \log\tilde\sigma \sim \mathcal N(P_{\rm mean}, P_{\rm std}^2),

    where :math:`t` is the time with :math:`\tilde\sigma(t) = \tilde\sigma` (:math:`t = \sqrt{\tilde\sigma^2 -
    \sigma_{\min}^2}` for :class:`scoresde.EDMSDE`, a bisection on :math:`\lambda(t)` otherwise). Noise
    levels outside the SDE's range :math:`[\tilde\sigma(\varepsilon), \tilde\sigma(T)]` do not exist on it:
    they are moved to the nearer end (the log-normal is truncated there). As
    :math:`D_\theta - x_0 = \tilde\sigma(z + \sigma s_\theta)`, this is denoising score matching with weight
    :math:`1 + \tilde\sigma^2/\sigma_{\rm data}^2` on the noise-prediction loss.

    Parameters
    ----------
    sigma_data : float
        :math:`\sigma_{\rm data} > 0`. Default 0.5; must equal an ``"edm"`` model's own.
    p_mean, p_std : float
        Mean and standard deviation (> 0) of :math:`\log\tilde\sigma`. Default -1.2 and 1.2.
    eps : float
        Smallest training time (bounds :math:`\tilde\sigma` below). Default 1e-5.
    reduce : {"mean", "sum"}
        Reduction of the squared error over the feature dimensions.
    """

    conditional = True

    def __init__(
        self,
        sigma_data: float = 0.5,
        p_mean: float = -1.2,
        p_std: float = 1.2,
        eps: float = 1e-5,
        reduce: str = "mean",
    ) -> None:
        _check_options(None, eps, reduce)
        self.sigma_data = check_positive("sigma_data", sigma_data)
        self.p_std = check_positive("p_std", p_std)
        given: object = p_mean
        if isinstance(given, bool) or not isinstance(given, (int, float)) or not np.isfinite(given):
            raise ValueError(f"p_mean must be a finite number, got {p_mean!r}")
        self.p_mean, self.eps, self.reduce = float(p_mean), float(eps), reduce

    def params(self) -> dict[str, Any]:
        return {
            "sigma_data": self.sigma_data,
            "p_mean": self.p_mean,
            "p_std": self.p_std,
            "eps": self.eps,
            "reduce": self.reduce,
        }

    def check(self, sde: SDE, model: ScoreModel) -> None:
        _check_linear(sde, "the EDM objective")
        if self.eps >= sde.T:
            raise ValueError(f"eps={self.eps!r} must be smaller than T={sde.T!r}")
        own = getattr(model, "sigma_data", None) if getattr(model, "parameterization", None) == "edm" else None
        if own is not None and own != self.sigma_data:
            raise ValueError(
                f"the model's EDM preconditioning has sigma_data={own!r} but the objective sigma_data="
                f"{self.sigma_data!r}; use EDMObjective(sigma_data={own!r})"
            )

    def times(self, sde: LinearSDE, sigma: torch.Tensor) -> torch.Tensor:
        r"""The times :math:`t` with :math:`\tilde\sigma(t) =` ``sigma`` (already within the SDE's range)."""
        if isinstance(sde, EDMSDE):
            return torch.sqrt(torch.clamp(sigma**2 - sde.sigma_min**2, min=0.0))
        lam = -np.log(sigma.detach().to(device="cpu", dtype=torch.float64).numpy())
        t = invert_log_snr(sde, lam, self.eps)
        return torch.from_numpy(t).to(dtype=sigma.dtype, device=sigma.device)

    def loss(
        self,
        sde: SDE,
        model: ScoreModel,
        x0: torch.Tensor,
        generator: torch.Generator | None,
        z: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        _check_linear(sde, "the EDM objective")
        lin = cast(LinearSDE, sde)
        check_finite_tensor("x0", x0, min_dim=2)
        n = torch.randn(x0.shape[0], generator=generator, dtype=x0.dtype, device=x0.device)
        hi, lo = (float(v) for v in noise_level(lin, [sde.T, self.eps]))
        t = self.times(lin, torch.exp(self.p_mean + self.p_std * n).clamp(lo, hi))
        if z is None:
            z = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
        mean, std = lin.marginal_prob(x0, t)
        sig = std / lin.mean_coef(t).to(x0.dtype)
        x_t = mean + broadcast_coef(std, x0) * z
        pred = _checked(model.data_prediction(x_t, t) if labels is None else model.data_prediction(x_t, t, labels), x0)
        weight = (sig**2 + self.sigma_data**2) / (sig * self.sigma_data) ** 2
        return (weight * _reduce((pred - x0).square(), self.reduce)).mean()


def objective_config(objective: Objective) -> dict[str, Any]:
    """The record ``{"name": registered name, "params": objective.params()}`` of an objective."""
    if not isinstance(objective, Objective):
        raise TypeError(f"expected a scoresde.Objective, got {type(objective).__name__}")
    name = OBJECTIVE_REGISTRY.name_of(type(objective))
    params = recorded_params(objective)
    return {"name": name, "params": params}


def objective_from_config(config: dict[str, Any] | str) -> Objective:
    """Rebuild an objective from :func:`objective_config` output, or from a registered name (default arguments).

    The class is looked up in :data:`OBJECTIVE_REGISTRY`, never imported: an unknown name raises
    :class:`scoresde.UnregisteredError` (a ``ValueError``) asking to import the module that defines it.
    """
    given: object = config  # read from files: may be anything
    if isinstance(given, str):
        return OBJECTIVE_REGISTRY.lookup(given)()
    if not isinstance(given, dict) or not isinstance(given.get("params"), dict) or "name" not in given:
        raise ValueError(f"cannot rebuild an objective from {config!r}; expected {{'name': name, 'params': {{...}}}}")
    cls = OBJECTIVE_REGISTRY.lookup(given["name"])
    try:
        return cls(**given["params"])
    except TypeError as err:
        raise ValueError(
            f"cannot rebuild the objective {given['name']!r} from the parameters {given['params']!r} ({err})"
        ) from None
