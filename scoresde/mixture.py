r"""Gaussian mixtures: exact targets whose marginals and scores are known for every linear SDE.

If :math:`p_0 = \sum_k w_k\,\mathcal N(\mu_k, \Sigma_k)` and the forward SDE has the Gaussian
kernel :math:`x_t \mid x_0 \sim \mathcal N(s(t) x_0, \sigma(t)^2 I)`, then

.. math::
    p_t = \sum_k w_k\,\mathcal N\big(s(t)\mu_k,\ C_k(t)\big), \qquad
    C_k(t) = s(t)^2 \Sigma_k + \sigma(t)^2 I,

and the score is the responsibility-weighted sum of component scores,

.. math::
    \nabla_x \log p_t(x) = -\sum_k r_k(x, t)\, C_k(t)^{-1}\big(x - s(t)\mu_k\big), \qquad
    r_k = \operatorname{softmax}_k\big(\log w_k + \log \mathcal N(x; s\mu_k, C_k)\big).

With the eigendecomposition :math:`\Sigma_k = U_k \Lambda_k U_k^\top` (computed once),
:math:`C_k(t) = U_k (s^2 \Lambda_k + \sigma^2) U_k^\top` is diagonal in the rotated frame, so
densities and scores cost :math:`O(B K d^2)` for any number of distinct times in the batch, and
the log-sum-exp over components never overflows (VE at :math:`\sigma_{\max} = 50`) nor divides
by zero (:math:`t \to 0` with positive-definite :math:`\Sigma_k`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from ._checks import check_finite_tensor, check_positive, check_positive_int, check_time
from .sde import SDE, LinearSDE

__all__ = [
    "GaussianMixture",
    "MixtureScore",
    "TARGETS",
    "get_target",
    "eight_gaussians",
    "ring",
    "grid",
    "pinwheel",
    "random_mixture",
]


def _as_float64(name: str, value: Any) -> torch.Tensor:
    try:
        t = torch.as_tensor(
            np.asarray(value, dtype=np.float64) if not isinstance(value, torch.Tensor) else value.detach().cpu(),
            dtype=torch.float64,
        )
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be array-like of numbers: {err}") from None
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or inf")
    return t


class GaussianMixture:
    r"""A mixture :math:`\sum_k w_k \mathcal N(\mu_k, \Sigma_k)` in :math:`\mathbb R^d`.

    Parameters
    ----------
    weights : array-like, shape (K,)
        Non-negative mixture weights summing to 1 (within 1e-6; they are renormalised exactly).
    means : array-like, shape (K, d)
        Component means.
    covariances : array-like, shape (K, d, d), (K, d), (K,) or scalar
        Full symmetric positive-definite covariance matrices, or diagonal variances per
        component, or one isotropic variance per component, or one isotropic variance shared
        by all components.

    The parameters are stored in float64 on the CPU; every method follows the dtype and device
    of its input tensors (or of ``dtype``/``generator`` for sampling).
    """

    def __init__(self, weights: Any, means: Any, covariances: Any) -> None:
        w = _as_float64("weights", weights)
        mu = _as_float64("means", means)
        cov = _as_float64("covariances", covariances)
        if mu.dim() != 2:
            raise ValueError(f"means must have shape (K, d), got {tuple(mu.shape)}")
        K, d = mu.shape
        if w.shape != (K,):
            raise ValueError(f"weights must have shape (K,)=({K},) to match means, got {tuple(w.shape)}")
        if bool((w < 0).any()) or abs(float(w.sum()) - 1.0) > 1e-6:
            raise ValueError(f"weights must be non-negative and sum to 1, got sum {float(w.sum())!r}")
        if cov.dim() == 0:
            cov = cov.expand(K)
        if cov.shape == (K,):
            cov = cov[:, None].expand(K, d)
        if cov.shape == (K, d):
            cov = torch.diag_embed(cov)
        if cov.shape != (K, d, d):
            raise ValueError(
                f"covariances must have shape (K, d, d), (K, d), (K,) or () with K={K}, d={d}; got {tuple(cov.shape)}"
            )
        if not torch.allclose(cov, cov.transpose(-1, -2), rtol=1e-10, atol=1e-12):
            raise ValueError("covariances must be symmetric")
        evals, evecs = torch.linalg.eigh(cov)
        if bool((evals <= 0).any()):
            raise ValueError(
                "covariances must be positive definite; smallest eigenvalue "
                f"{float(evals.min())!r}. Add a small multiple of the identity."
            )
        self.weights = w / w.sum()
        self.means = mu
        self.covariances = cov
        self._evals = evals  # (K, d)
        self._evecs = evecs  # (K, d, d), columns are eigenvectors
        self._log_w = torch.log(self.weights)
        self._cache: dict[tuple[torch.dtype, torch.device], tuple[torch.Tensor, ...]] = {}

    # -- basic properties ---------------------------------------------------------------
    @property
    def n_components(self) -> int:
        return int(self.means.shape[0])

    @property
    def dim(self) -> int:
        return int(self.means.shape[1])

    def mean(self) -> torch.Tensor:
        r"""Overall mean :math:`\sum_k w_k \mu_k` (float64)."""
        return self.weights @ self.means

    def covariance(self) -> torch.Tensor:
        r"""Overall covariance :math:`\sum_k w_k(\Sigma_k + \mu_k\mu_k^\top) - m m^\top` (float64)."""
        m = self.mean()
        second = torch.einsum("k,kij->ij", self.weights, self.covariances)
        second = second + torch.einsum("k,ki,kj->ij", self.weights, self.means, self.means)
        return second - torch.outer(m, m)

    def params(self) -> dict[str, Any]:
        return {
            "weights": self.weights.tolist(),
            "means": self.means.tolist(),
            "covariances": self.covariances.tolist(),
        }

    def __repr__(self) -> str:
        return f"GaussianMixture(n_components={self.n_components}, dim={self.dim})"

    def _tensors(self, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, ...]:
        """The parameters in ``dtype`` on ``device``, converted once and cached.

        The copies are made outside inference mode even when the caller is inside it (``sample`` runs
        under ``torch.inference_mode()``): an inference tensor cannot be saved for backward, so a
        cached one would break a later autograd computation (``log_likelihood``) on the same mixture.
        Normal tensors work in both modes, so one cache entry serves both.
        """
        key = (dtype, torch.device(device))
        if key not in self._cache:
            with torch.inference_mode(False):
                self._cache[key] = tuple(
                    a.to(dtype=dtype, device=device) for a in (self._log_w, self.means, self._evals, self._evecs)
                )
        return self._cache[key]

    def _check_x(self, x: torch.Tensor) -> torch.Tensor:
        check_finite_tensor("x", x, min_dim=2)
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must have shape (batch, {self.dim}), got {tuple(x.shape)}")
        return x

    # -- sampling and density -----------------------------------------------------------
    def sample(
        self,
        n: int,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """Draw ``n`` exact samples, shape ``(n, d)``; the device defaults to the generator's."""
        n = check_positive_int("n", n)
        if device is None:
            device = generator.device if generator is not None else torch.device("cpu")
        device = torch.device(device)
        w = self.weights.to(device)
        k = torch.multinomial(w, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64, device=device)
        evals, evecs = self._evals.to(device), self._evecs.to(device)
        # x = mu_k + U_k sqrt(Lambda_k) z
        x = self.means.to(device)[k] + torch.einsum("nij,nj->ni", evecs[k], evals[k].sqrt() * z)
        return x.to(dtype)

    def _component_terms(
        self, x: torch.Tensor, s: torch.Tensor, sigma: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Rotated residuals y (B,K,d), variances v (B,K,d), log joint (B,K) for kernel (s, sigma)."""
        log_w, mu, evals, evecs = self._tensors(x.dtype, x.device)
        s = s.reshape(-1, 1, 1)
        sigma = sigma.reshape(-1, 1, 1)
        diff = x[:, None, :] - s * mu[None]  # (B, K, d)
        y = torch.einsum("kji,bkj->bki", evecs, diff)  # U_k^T (x - s mu_k)
        v = s**2 * evals[None] + sigma**2  # (B, K, d)
        log_joint = log_w - 0.5 * ((y.square() / v).sum(-1) + torch.log(v).sum(-1) + self.dim * math.log(2 * math.pi))
        return y, v, log_joint

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        r"""Exact log-density :math:`\log p_0(x)`, shape ``(batch,)``."""
        x = self._check_x(x)
        one = torch.ones((), dtype=x.dtype, device=x.device)
        _, _, log_joint = self._component_terms(x, one, 0 * one)
        return torch.logsumexp(log_joint, dim=-1)

    def marginal(self, sde: SDE, t: float) -> GaussianMixture:
        r"""The mixture :math:`p_t` at time ``t``: components :math:`\mathcal N(s\mu_k, s^2\Sigma_k + \sigma^2 I)`."""
        sde = _check_linear(sde)
        check_time(t, sde.T)
        _, _, s_t, sigma_t = sde.coefficients(float(t))
        s, sigma = float(s_t), float(sigma_t)
        eye = torch.eye(self.dim, dtype=torch.float64)
        return GaussianMixture(self.weights, s * self.means, s**2 * self.covariances + sigma**2 * eye)

    def score(self, sde: SDE) -> MixtureScore:
        """The exact score function ``score_fn(x, t)`` of the marginals of this mixture under ``sde``."""
        return MixtureScore(self, sde)

    def flow_map(self, sde: SDE, x: torch.Tensor, t_from: float, t_to: float) -> torch.Tensor:
        r"""Exact probability-flow ODE map of a single Gaussian :math:`\mathcal N(m, C)` from ``t_from`` to ``t_to``.

        In :math:`C`'s eigenbasis (:math:`C = U\Lambda U^\top`), with :math:`z = U^\top(x - s(t)\,m)` and the
        marginal variances :math:`v(t) = s(t)^2\lambda + \sigma(t)^2`, the flow is diagonal:
        :math:`z(t_1) = \sqrt{v(t_1)/v(t_0)}\,z(t_0)`. The closed form the ODE solvers are checked against.
        Only for one-component mixtures; computed in ``x``'s dtype and on its device.
        """
        if self.n_components != 1:
            raise ValueError(
                f"flow_map is closed-form for a single Gaussian only; this mixture has {self.n_components} components"
            )
        sde = _check_linear(sde)
        x = self._check_x(x)
        lam, U = torch.linalg.eigh(self.covariances[0])
        lam, U, m = (a.to(dtype=x.dtype, device=x.device) for a in (lam, U, self.means[0]))
        _, _, s0, sig0 = sde.coefficients(t_from, like=x.new_empty(()))
        _, _, s1, sig1 = sde.coefficients(t_to, like=x.new_empty(()))
        z0 = (x - s0 * m) @ U
        z1 = z0 * torch.sqrt((s1**2 * lam + sig1**2) / (s0**2 * lam + sig0**2))
        out: torch.Tensor = s1 * m + z1 @ U.T
        return out


def _check_linear(sde: SDE) -> LinearSDE:
    if not isinstance(sde, LinearSDE):
        raise TypeError(
            f"exact mixture marginals need a linear SDE with Gaussian kernel (VPSDE, SubVPSDE, "
            f"VESDE or a LinearSDE subclass), got {type(sde).__name__}"
        )
    return sde


class MixtureScore:
    r"""Exact score :math:`\nabla_x \log p_t(x)` of a :class:`GaussianMixture` diffused by a linear SDE.

    Callable as ``score_fn(x, t)`` with ``x`` of shape ``(batch, d)`` and ``t`` a float, a 0-d
    tensor or a ``(batch,)`` vector (each sample may have its own time). ``log_prob(x, t)``
    gives :math:`\log p_t(x)`. Computed in the dtype and on the device of ``x``.
    """

    def __init__(self, mixture: GaussianMixture, sde: SDE) -> None:
        self.mixture = mixture
        self.sde = _check_linear(sde)

    def __repr__(self) -> str:
        return f"MixtureScore({self.mixture!r}, {self.sde!r})"

    def _kernel(self, x: torch.Tensor, t: float | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _, _, s, sigma = self.sde.coefficients(t, like=x)
        return s, sigma

    def __call__(self, x: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
        x = self.mixture._check_x(x)
        s, sigma = self._kernel(x, t)
        y, v, log_joint = self.mixture._component_terms(x, s, sigma)
        r = torch.softmax(log_joint, dim=-1)  # (B, K) responsibilities
        _, _, _, evecs = self.mixture._tensors(x.dtype, x.device)
        # -sum_k r_k U_k (y_k / v_k)
        return -torch.einsum("bk,kij,bkj->bi", r, evecs, y / v)

    def log_prob(self, x: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
        r""":math:`\log p_t(x)`, shape ``(batch,)``."""
        x = self.mixture._check_x(x)
        s, sigma = self._kernel(x, t)
        _, _, log_joint = self.mixture._component_terms(x, s, sigma)
        return torch.logsumexp(log_joint, dim=-1)


# -- named 2-D targets ------------------------------------------------------------------
def ring(
    n_modes: int = 8,
    radius: float = 4 / math.sqrt(2),
    std: float = 0.5 / math.sqrt(2),
    weights: Sequence[float] | None = None,
) -> GaussianMixture:
    """``n_modes`` isotropic Gaussians of std ``std`` evenly spaced on a circle of ``radius``."""
    n_modes = check_positive_int("n_modes", n_modes)
    radius = check_positive("radius", radius, allow_zero=True)
    std = check_positive("std", std)
    ang = 2 * math.pi * np.arange(n_modes) / n_modes
    means = radius * np.stack([np.cos(ang), np.sin(ang)], axis=1)
    w = np.full(n_modes, 1.0 / n_modes) if weights is None else np.asarray(weights, dtype=float)
    return GaussianMixture(w, means, std**2)


def eight_gaussians() -> GaussianMixture:
    r"""FFJORD's ``8gaussians``: 8 equal modes on a circle of radius :math:`4/\sqrt2`, std :math:`0.5/\sqrt2`."""
    return ring(8, 4 / math.sqrt(2), 0.5 / math.sqrt(2))


def grid(n: int = 5, spacing: float = 2.0, std: float = 0.25) -> GaussianMixture:
    """``n x n`` equal isotropic Gaussians on a centred square grid (a harder, 25-mode target)."""
    n = check_positive_int("n", n)
    c = (np.arange(n) - (n - 1) / 2) * check_positive("spacing", spacing)
    means = np.stack(np.meshgrid(c, c, indexing="ij"), axis=-1).reshape(-1, 2)
    return GaussianMixture(np.full(n * n, 1.0 / n**2), means, check_positive("std", std) ** 2)


def pinwheel(
    n_arms: int = 5, radius: float = 2.0, radial_std: float = 0.8, tangential_std: float = 0.15
) -> GaussianMixture:
    """Elongated, rotated Gaussians with unequal weights: exercises full covariances."""
    n_arms = check_positive_int("n_arms", n_arms)
    ang = 2 * math.pi * np.arange(n_arms) / n_arms
    means = radius * np.stack([np.cos(ang), np.sin(ang)], axis=1)
    covs = []
    for a in ang:
        rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
        covs.append(rot @ np.diag([radial_std**2, tangential_std**2]) @ rot.T)
    w = np.arange(1, n_arms + 1, dtype=float)
    return GaussianMixture(w / w.sum(), means, np.stack(covs))


def random_mixture(dim: int = 10, weights: Sequence[float] = (0.5, 0.3, 0.2), seed: int = 1) -> GaussianMixture:
    r"""A mixture in ``dim`` dimensions with random means and full covariances (seeded, float64).

    Means :math:`\mu_k \sim \mathcal N(0, I)`, shifted so that the weighted mean is zero; covariances
    :math:`\tfrac12 A_k A_k^\top + 0.1\,I` with :math:`A_k` of i.i.d. :math:`\mathcal N(0, 1/d)` entries.
    One ``torch.Generator`` seeded with ``seed`` draws the means, then the :math:`A_k`.
    """
    dim = check_positive_int("dim", dim)
    w = torch.as_tensor(weights, dtype=torch.float64)
    g = torch.Generator().manual_seed(check_positive_int("seed", seed, minimum=0))
    K = w.numel()
    means = torch.randn(K, dim, generator=g, dtype=torch.float64)
    means = means - w @ means
    A = torch.randn(K, dim, dim, generator=g, dtype=torch.float64) / math.sqrt(dim)
    covs = 0.5 * A @ A.transpose(-1, -2) + 0.1 * torch.eye(dim, dtype=torch.float64)
    return GaussianMixture(w, means, covs)


TARGETS: dict[str, Callable[[], GaussianMixture]] = {
    "eight_gaussians": eight_gaussians,
    "grid": grid,
    "pinwheel": pinwheel,
    "gaussian": lambda: GaussianMixture([1.0], [[1.0, -0.5]], [[[1.0, 0.3], [0.3, 0.5]]]),
}


def get_target(name: str) -> GaussianMixture:
    """Build a named 2-D target: one of ``TARGETS`` (``eight_gaussians``, ``grid``, ``pinwheel``, ``gaussian``)."""
    try:
        return TARGETS[name]()
    except KeyError:
        raise ValueError(f"unknown target {name!r}; choose one of {sorted(TARGETS)}") from None
