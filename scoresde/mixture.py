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
from typing import Any, Literal, overload

import numpy as np
import torch

from ._checks import as_float64, check_finite_tensor, check_positive, check_positive_int, check_time
from .sde import SDE, LinearSDE

__all__ = [
    "GaussianMixture",
    "MixtureScore",
    "MixtureClassifier",
    "ClassConditionalScore",
    "TARGETS",
    "get_target",
    "eight_gaussians",
    "ring",
    "grid",
    "pinwheel",
    "random_mixture",
]


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
    labels : array-like of int, shape (K,), optional
        A class label per component, integers :math:`0, \dots, C-1` with every class used by at
        least one component. Labels give the class-conditional mixtures :meth:`select_class`, the
        exact noisy classifier :meth:`classifier` and the class-conditional score
        :meth:`conditional_score`; :meth:`condition` keeps them.

    The parameters are stored in float64 on the CPU; every method follows the dtype and device
    of its input tensors (or of ``dtype``/``generator`` for sampling).
    """

    def __init__(self, weights: Any, means: Any, covariances: Any, labels: Any = None) -> None:
        w = as_float64("weights", weights)
        mu = as_float64("means", means)
        cov = as_float64("covariances", covariances)
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
        self._set(w / w.sum(), mu, cov, evals, evecs, _check_labels(labels, K))

    def _set(
        self,
        weights: torch.Tensor,
        means: torch.Tensor,
        covariances: torch.Tensor,
        evals: torch.Tensor,
        evecs: torch.Tensor,
        labels: torch.Tensor | None,
    ) -> None:
        self.weights = weights
        self.means = means
        self.covariances = covariances
        self._evals = evals  # (K, d)
        self._evecs = evecs  # (K, d, d), columns are eigenvectors
        self._log_w = torch.log(self.weights)
        self.labels = labels
        #: whether some component has a zero eigenvalue (an exact conditional with noise_std = 0)
        self.singular = bool((evals == 0).any())
        self._cache: dict[tuple[torch.dtype, torch.device], tuple[torch.Tensor, ...]] = {}

    @classmethod
    def _from_eigh(
        cls,
        weights: torch.Tensor,
        means: torch.Tensor,
        evals: torch.Tensor,
        evecs: torch.Tensor,
        labels: torch.Tensor | None,
    ) -> GaussianMixture:
        """A mixture from its eigendecompositions (float64); zero eigenvalues are allowed (degenerate components)."""
        self = cls.__new__(cls)
        cov = torch.einsum("kij,kj,klj->kil", evecs, evals, evecs)
        self._set(weights / weights.sum(), means, 0.5 * (cov + cov.transpose(-1, -2)), evals, evecs, labels)
        return self

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

    @property
    def n_classes(self) -> int:
        """Number of classes :math:`C` (``ValueError`` if the mixture has no labels)."""
        return int(self._labels().max()) + 1

    def params(self) -> dict[str, Any]:
        p: dict[str, Any] = {
            "weights": self.weights.tolist(),
            "means": self.means.tolist(),
            "covariances": self.covariances.tolist(),
        }
        if self.labels is not None:
            p["labels"] = self.labels.tolist()
        return p

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
    @overload
    def sample(
        self,
        n: int,
        generator: torch.Generator | None = ...,
        dtype: torch.dtype = ...,
        device: torch.device | str | None = ...,
        return_components: Literal[False] = ...,
    ) -> torch.Tensor: ...

    @overload
    def sample(
        self,
        n: int,
        generator: torch.Generator | None = ...,
        dtype: torch.dtype = ...,
        device: torch.device | str | None = ...,
        *,
        return_components: Literal[True],
    ) -> tuple[torch.Tensor, torch.Tensor]: ...

    def sample(
        self,
        n: int,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
        return_components: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Draw ``n`` exact samples, shape ``(n, d)``; the device defaults to the generator's.

        With ``return_components=True``, returns ``(x, k)``: also the component index (int64, shape ``(n,)``)
        each sample was drawn from (the same draws, so ``x`` is the same).
        """
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
        return (x.to(dtype), k) if return_components else x.to(dtype)

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
        r"""Exact log-density :math:`\log p_0(x)`, shape ``(batch,)``.

        For a :attr:`singular` mixture (the exact conditional of :meth:`condition` with ``noise_std=0``,
        supported on the affine subspace :math:`\{x : A x = y\}`) this is the density with respect to the
        Lebesgue measure of that subspace: each component's Gaussian density over its positive-variance
        directions, and :math:`-\infty` at points off the support (a residual along a zero-variance
        direction larger than :math:`\sqrt{\epsilon}\,(1 + \|x\|_\infty)`, :math:`\epsilon` the machine
        epsilon of ``x``'s dtype).
        """
        x = self._check_x(x)
        if self.singular:
            return self._log_prob_on_support(x)
        one = torch.ones((), dtype=x.dtype, device=x.device)
        _, _, log_joint = self._component_terms(x, one, 0 * one)
        return torch.logsumexp(log_joint, dim=-1)

    def _log_prob_on_support(self, x: torch.Tensor) -> torch.Tensor:
        log_w, mu, evals, evecs = self._tensors(x.dtype, x.device)
        y = torch.einsum("kji,bkj->bki", evecs, x[:, None, :] - mu[None])  # (B, K, d) rotated residuals
        pos = evals > 0
        v = torch.where(pos, evals, torch.ones_like(evals))
        quad = torch.where(pos, y.square() / v, 0.0).sum(-1)
        logdet = torch.where(pos, torch.log(v), 0.0).sum(-1)
        rank = pos.sum(-1).to(x.dtype)
        tol = math.sqrt(torch.finfo(x.dtype).eps) * (1 + x.abs().amax(-1, keepdim=True))
        off = torch.where(pos, 0.0, y.abs()).amax(-1) > tol
        log_joint = log_w - 0.5 * (quad + logdet + rank * math.log(2 * math.pi))
        return torch.logsumexp(log_joint.masked_fill(off, -math.inf), dim=-1)

    def marginal(self, sde: SDE, t: float) -> GaussianMixture:
        r"""The mixture :math:`p_t` at time ``t``: components :math:`\mathcal N(s\mu_k, s^2\Sigma_k + \sigma^2 I)`."""
        sde = _check_linear(sde)
        check_time(t, sde.T)
        _, _, s_t, sigma_t = sde.coefficients(float(t))
        s, sigma = float(s_t), float(sigma_t)
        if self.singular:  # exact in the eigenbasis; stays singular only where sigma(t) = 0
            evals = s**2 * self._evals + sigma**2
            return GaussianMixture._from_eigh(self.weights, s * self.means, evals, self._evecs, self.labels)
        eye = torch.eye(self.dim, dtype=torch.float64)
        return GaussianMixture(
            self.weights, s * self.means, s**2 * self.covariances + sigma**2 * eye, labels=self.labels
        )

    def score(self, sde: SDE) -> MixtureScore:
        """The exact score function ``score_fn(x, t)`` of the marginals of this mixture under ``sde``."""
        return MixtureScore(self, sde)

    # -- conditioning ---------------------------------------------------------------------
    def condition(self, A: Any, y: Any, noise_std: float = 0.0) -> GaussianMixture | list[GaussianMixture]:
        r"""The exact posterior of :math:`x` given the linear observation :math:`y = A x + \sigma_y n`.

        With :math:`n \sim \mathcal N(0, I_m)` independent of :math:`x \sim p_0` and
        :math:`\sigma_y` = ``noise_std``, the posterior is again a Gaussian mixture: for each component,

        .. math::
            S_k = A \Sigma_k A^\top + \sigma_y^2 I, \qquad K_k = \Sigma_k A^\top S_k^{-1}, \qquad
            \mu_k' = \mu_k + K_k (y - A\mu_k), \qquad
            \Sigma_k' = (I - K_k A)\,\Sigma_k\,(I - K_k A)^\top + \sigma_y^2 K_k K_k^\top,

        (the Joseph form of :math:`\Sigma_k - K_k A \Sigma_k`, positive semi-definite by construction), with
        the weights updated by each component's evidence, in log space:

        .. math::
            w_k' \propto w_k\,\mathcal N(y;\ A\mu_k,\ S_k).

        :math:`S_k` is factorised by Cholesky and every inverse is a triangular solve. With
        ``noise_std=0`` the observation is exact, :math:`A x = y`: the rows of :math:`A` must be linearly
        independent, and the posterior lives on the affine subspace :math:`\{x : A x = y\}`. It is then
        computed in the orthonormal frame :math:`[Q_r, Q_n]` of the QR factorisation :math:`A^\top = Q_r R`:
        :math:`Q_r^\top x = c = R^{-\top} y` is fixed and :math:`u = Q_n^\top x` given :math:`c` is the
        Gaussian conditional (Schur complement) of each component, so the posterior covariances
        :math:`Q_n \operatorname{Cov}(u \mid c)\,Q_n^\top` have exact zero eigenvalues along the row space
        of :math:`A`. Such a mixture is :attr:`singular`: :meth:`sample` draws exactly on the subspace, its
        :meth:`score` under a linear SDE is exact wherever :math:`\sigma(t) > 0`, and :meth:`log_prob` is
        the density on the subspace.

        Parameters
        ----------
        A : array-like, shape (m, d)
            The observation matrix (masking, averaging, blurring, projection: any real matrix).
        y : array-like, shape (m,) or (B, m)
            One observation, or a batch of ``B`` observations.
        noise_std : float
            :math:`\sigma_y \ge 0`. Default 0 (exact observation).

        Returns
        -------
        GaussianMixture or list of GaussianMixture
            The posterior for ``y`` of shape ``(m,)``; a list of ``B`` posteriors, one per row, for ``y``
            of shape ``(B, m)``. Labels are kept (component :math:`k` of the posterior is the posterior of
            component :math:`k`).
        """
        A_t = as_float64("A", A)
        if A_t.dim() != 2 or A_t.shape[1] != self.dim or A_t.shape[0] == 0:
            raise ValueError(f"A must have shape (m, d) with m >= 1 and d={self.dim}, got {tuple(A_t.shape)}")
        y_t = as_float64("y", y)
        m = A_t.shape[0]
        if y_t.dim() not in (1, 2) or y_t.shape[-1] != m:
            raise ValueError(
                f"y must have shape ({m},) or (B, {m}) to match A of shape {tuple(A_t.shape)}, got {tuple(y_t.shape)}"
            )
        noise_std = check_positive("noise_std", noise_std, allow_zero=True)
        if y_t.dim() == 2:
            return [self._condition(A_t, row, noise_std) for row in y_t]
        return self._condition(A_t, y_t, noise_std)

    def _condition(self, A: torch.Tensor, y: torch.Tensor, noise_std: float) -> GaussianMixture:
        m, d = A.shape
        mu, cov = self.means, self.covariances
        S = A @ cov @ A.T + noise_std**2 * torch.eye(m, dtype=torch.float64)  # (K, m, m)
        L, info = torch.linalg.cholesky_ex(0.5 * (S + S.transpose(-1, -2)))
        if bool((info != 0).any()):
            raise ValueError(
                f"A Sigma_k A^T + noise_std^2 I is not positive definite for noise_std={noise_std!r}: with "
                f"noise_std=0 the rows of A (shape {tuple(A.shape)}) must be linearly independent (m <= d and "
                "full row rank); drop the redundant rows or give noise_std > 0"
            )
        r = y - mu @ A.T  # (K, m)
        white = torch.linalg.solve_triangular(L, r[..., None], upper=False)[..., 0]
        log_ev = -0.5 * (white.square().sum(-1) + m * math.log(2 * math.pi)) - torch.log(
            torch.diagonal(L, dim1=-2, dim2=-1)
        ).sum(-1)
        log_w = self._log_w + log_ev
        weights = torch.softmax(log_w, dim=0)
        if noise_std > 0:
            # K^T = S^{-1} A Sigma
            gain = torch.cholesky_solve(A @ cov, L).transpose(-1, -2)  # (K, d, m)
            means = mu + torch.einsum("kdm,km->kd", gain, r)
            I_KA = torch.eye(d, dtype=torch.float64) - gain @ A
            post = I_KA @ cov @ I_KA.transpose(-1, -2) + noise_std**2 * gain @ gain.transpose(-1, -2)
            evals, evecs = torch.linalg.eigh(0.5 * (post + post.transpose(-1, -2)))
            evals = evals.clamp_min(0.0)
            return GaussianMixture._from_eigh(weights, means, evals, evecs, self.labels)
        Q, R = torch.linalg.qr(A.T, mode="complete")  # A^T = Q[:, :m] R[:m]
        Qr, Qn = Q[:, :m], Q[:, m:]
        c = torch.linalg.solve_triangular(R[:m].T, y[:, None], upper=False)[:, 0]  # Qr^T x = c
        Srr = Qr.T @ cov @ Qr  # (K, m, m)
        Snr = Qn.T @ cov @ Qr  # (K, d-m, m)
        Snn = Qn.T @ cov @ Qn
        Lr = torch.linalg.cholesky(0.5 * (Srr + Srr.transpose(-1, -2)))
        G = torch.cholesky_solve(Snr.transpose(-1, -2), Lr).transpose(-1, -2)  # Snr Srr^{-1}
        u_mean = mu @ Qn + torch.einsum("knm,km->kn", G, c - mu @ Qr)
        u_cov = Snn - G @ Snr.transpose(-1, -2)
        lam, V = torch.linalg.eigh(0.5 * (u_cov + u_cov.transpose(-1, -2)))
        K = self.n_components
        means = c @ Qr.T + u_mean @ Qn.T
        evals = torch.cat([lam.clamp_min(0.0), torch.zeros(K, m, dtype=torch.float64)], dim=-1)
        evecs = torch.cat([Qn @ V, Qr.expand(K, d, m)], dim=-1)
        return GaussianMixture._from_eigh(weights, means, evals, evecs, self.labels)

    # -- labels ---------------------------------------------------------------------------
    def _labels(self) -> torch.Tensor:
        if self.labels is None:
            raise ValueError("this mixture has no class labels; build it with GaussianMixture(..., labels=...)")
        return self.labels

    def select_class(self, c: int) -> GaussianMixture:
        r"""The class-conditional mixture :math:`p_0(x \mid c)`: the components of class ``c``, reweighted.

        The result carries no labels (all its components are of class ``c``).
        """
        keep = self._labels() == _check_class(c, self.n_classes)
        w = self.weights[keep]
        return GaussianMixture._from_eigh(w / w.sum(), self.means[keep], self._evals[keep], self._evecs[keep], None)

    def classifier(self, sde: SDE) -> MixtureClassifier:
        r"""The exact noisy classifier :math:`p_t(c \mid x_t)` of this labelled mixture under ``sde``."""
        return MixtureClassifier(self, sde)

    def conditional_score(self, sde: SDE) -> ClassConditionalScore:
        r"""The exact class-conditional score ``score(x, t, c)`` :math:`= \nabla_x \log p_t(x \mid c)`."""
        return ClassConditionalScore(self, sde)

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
        if self.mixture.singular and bool((sigma == 0).any()):
            raise ValueError(
                "this mixture is singular (an exact conditional with noise_std=0, supported on {x: A x = y}), so "
                "its score is defined only where sigma(t) > 0; evaluate it at t > 0 (samplers stop at eps > 0)"
            )
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


def _check_labels(labels: Any, K: int) -> torch.Tensor | None:
    if labels is None:
        return None
    arr = np.asarray(labels.detach().cpu() if isinstance(labels, torch.Tensor) else labels)
    if arr.shape != (K,) or not (np.issubdtype(arr.dtype, np.integer) or arr.size == 0):
        raise ValueError(f"labels must be K={K} integers, one class label per component, got {arr!r}")
    present = set(arr.tolist())
    if min(present) < 0 or present != set(range(max(present) + 1)):
        raise ValueError(
            f"labels must be the integers 0..C-1 with every class used by some component, got {sorted(present)}"
        )
    return torch.as_tensor(arr, dtype=torch.int64)


def _check_class(c: Any, n_classes: int) -> int:
    if isinstance(c, bool) or not isinstance(c, int | np.integer):
        raise TypeError(f"the class label must be an int in [0, {n_classes}), got {type(c).__name__}")
    if not 0 <= int(c) < n_classes:
        raise ValueError(f"class label {int(c)} out of range: this mixture has classes 0..{n_classes - 1}")
    return int(c)


def _class_mask(mixture: GaussianMixture, c: Any, x: torch.Tensor) -> torch.Tensor:
    """Boolean (B, K) mask of the components of class ``c`` (an int, or a (B,) integer tensor) for each sample."""
    labels = mixture._labels().to(x.device)
    C = mixture.n_classes
    if isinstance(c, torch.Tensor):
        if c.dtype.is_floating_point or c.dtype == torch.bool or c.shape not in ((), (x.shape[0],)):
            raise ValueError(
                f"c must be an int or an integer tensor of shape ({x.shape[0]},), got {c.dtype} {tuple(c.shape)}"
            )
        if bool(((c < 0) | (c >= C)).any()):
            raise ValueError(f"class labels in c must lie in 0..{C - 1}")
        return labels[None, :] == c.to(x.device).reshape(-1, 1)
    return (labels == _check_class(c, C))[None, :].expand(x.shape[0], -1)


class _LabelledTerms:
    """Shared by the classifier and the class-conditional score: component terms and per-component scores."""

    def __init__(self, mixture: GaussianMixture, sde: SDE) -> None:
        mixture._labels()
        self.mixture = mixture
        self.sde = _check_linear(sde)
        self._score = MixtureScore(mixture, sde)

    def _terms(self, x: torch.Tensor, t: float | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """log joint (B, K) and the negative component scores U_k (y_k / v_k), (B, K, d)."""
        x = self.mixture._check_x(x)
        s, sigma = self._score._kernel(x, t)
        y, v, log_joint = self.mixture._component_terms(x, s, sigma)
        _, _, _, evecs = self.mixture._tensors(x.dtype, x.device)
        return log_joint, torch.einsum("kij,bkj->bki", evecs, y / v)


class MixtureClassifier(_LabelledTerms):
    r"""The exact noisy classifier of a labelled :class:`GaussianMixture` diffused by a linear SDE.

    With :math:`r_k(x, t)` the responsibilities of the components of :math:`p_t` (see the module docstring),

    .. math::
        p_t(c \mid x) = \sum_{k:\ \ell_k = c} r_k(x, t), \qquad
        \nabla_x \log p_t(c \mid x) = \nabla_x \log p_t(x \mid c) - \nabla_x \log p_t(x)
        = \sum_k \big(r_k - r^c_k\big)\, C_k(t)^{-1}\big(x - s(t)\mu_k\big),

    with :math:`r^c_k = r_k\,[\ell_k = c] / \sum_{j:\ \ell_j = c} r_j` the responsibilities within class :math:`c`.
    ``classifier(x, t)`` returns the log-probabilities :math:`\log p_t(c \mid x)` of every class, shape
    ``(batch, C)``, as any time-dependent classifier does; :meth:`grad_log_prob` the closed-form gradient.
    """

    def __repr__(self) -> str:
        return f"MixtureClassifier({self.mixture!r}, {self.sde!r})"

    def __call__(self, x: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
        log_joint, _ = self._terms(x, t)
        onehot = (
            self.mixture._labels().to(x.device)[None, :]
            == torch.arange(self.mixture.n_classes, device=x.device)[:, None]
        )
        masked = log_joint[:, None, :].masked_fill(~onehot[None], -math.inf)  # (B, C, K)
        return torch.logsumexp(masked, dim=-1) - torch.logsumexp(log_joint, dim=-1, keepdim=True)

    def grad_log_prob(self, x: torch.Tensor, t: float | torch.Tensor, c: int | torch.Tensor) -> torch.Tensor:
        r""":math:`\nabla_x \log p_t(c \mid x)`, shape ``(batch, d)``; ``c`` an int or a ``(batch,)`` integer tensor."""
        log_joint, comp = self._terms(x, t)
        mask = _class_mask(self.mixture, c, x)
        r = torch.softmax(log_joint, dim=-1)
        rc = torch.softmax(log_joint.masked_fill(~mask, -math.inf), dim=-1)
        return torch.einsum("bk,bki->bi", r - rc, comp)


class ClassConditionalScore(_LabelledTerms):
    r"""The exact class-conditional score :math:`\nabla_x \log p_t(x \mid c)` of a labelled mixture.

    Callable as ``score(x, t, c)``: ``c`` an int, a ``(batch,)`` integer tensor, or ``None`` for the
    unconditional score :math:`\nabla_x \log p_t(x)` (the "null" label of classifier-free guidance).
    :math:`p_t(x \mid c)` is the diffused mixture of the components of class :math:`c`, reweighted
    (:meth:`GaussianMixture.select_class`), so the score is :math:`-\sum_k r^c_k\,C_k(t)^{-1}(x - s\mu_k)`.
    """

    def __repr__(self) -> str:
        return f"ClassConditionalScore({self.mixture!r}, {self.sde!r})"

    def __call__(self, x: torch.Tensor, t: float | torch.Tensor, c: int | torch.Tensor | None = None) -> torch.Tensor:
        log_joint, comp = self._terms(x, t)
        if c is not None:
            log_joint = log_joint.masked_fill(~_class_mask(self.mixture, c, x), -math.inf)
        return -torch.einsum("bk,bki->bi", torch.softmax(log_joint, dim=-1), comp)


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
