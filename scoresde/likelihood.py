r"""Exact log-likelihoods through the probability-flow ODE (Song et al. 2021, App. D.2).

The probability-flow ODE of a forward SDE :math:`dx = f(x, t)\,dt + g(t)\,dw`,

.. math::  \frac{dx}{dt} = \tilde f(x, t) = f(x, t) - \tfrac12 g(t)^2\, s_\theta(x, t),

transports :math:`p_t` to :math:`p_{t'}` deterministically, and along its solutions the
instantaneous change of variables (Chen et al. 2018) gives
:math:`\frac{d}{dt}\log p_t(x(t)) = -\nabla\cdot\tilde f(x(t), t)`. Integrating from
:math:`\varepsilon` to :math:`T`,

.. math::
    \log p_\varepsilon(x(\varepsilon)) = \log p_T(x(T))
        + \int_\varepsilon^T \nabla\cdot\tilde f(x(t), t)\,dt .

:func:`log_likelihood` solves the augmented ODE

.. math::
    \frac{d}{dt}\begin{bmatrix} x \\ \Delta \end{bmatrix}
    = \begin{bmatrix} \tilde f(x, t) \\ \nabla\cdot\tilde f(x, t) \end{bmatrix},
    \qquad x(\varepsilon) = x_{\text{data}},\ \Delta(\varepsilon) = 0,

*forward* in time from :math:`\varepsilon` to :math:`T` and returns
``log_prob = prior_logp(x(T)) + Delta(T)``, where ``prior_logp`` is the SDE's prior
(:math:`\mathcal N(0, I)` for VP / sub-VP, :math:`\mathcal N(0, \sigma_{\max}^2 I)` for VE). Two
approximations remain besides the solver error:

* it is the density of :math:`p_\varepsilon`, not :math:`p_0` (the ODE is singular at 0): for
  small ``eps`` (default 1e-5) they agree to the smoothing by :math:`\mathcal N(0, \sigma(\varepsilon)^2 I)`;
* the prior replaces the true :math:`p_T`. For Gaussian-mixture data this mismatch is of order
  :math:`s(T)^2\|\mu\|^2` (VP, when the data mean is zero; :math:`s(T)\|\bar\mu\|\,\|x_T\|` otherwise)
  or :math:`\|\mu\|^2/\sigma_{\max}^2` (VE). ``LikelihoodResult.latent`` holds :math:`x(T)`, so
  that an exact :math:`\log p_T` can be substituted when it is known.

Divergence
----------
``"exact"``: the trace of the Jacobian :math:`\partial\tilde f / \partial x` by autograd, one
backward pass per feature dimension (:math:`\partial_i \tilde f_i` from the gradient of
:math:`\sum_b \tilde f_{b,i}`): exact, and fine for low dimension. It assumes that the samples of
a batch do not interact (no batch statistics in the model).

``"hutchinson"``: the Skilling–Hutchinson estimator :math:`\nabla\cdot\tilde f \approx v^\top J v`
with :math:`\mathbb E[vv^\top] = I`, ``v`` Rademacher or Gaussian, one backward pass per probe.
As in FFJORD and score_sde, each probe is drawn once (from a ``torch.Generator`` seeded with
``seed``) and held fixed for the whole solve, so the integrand is a smooth function of time.
The ``K = probes`` probes are integrated as ``K`` separate augmented coordinates; each gives an
unbiased estimate of :math:`\log p_\varepsilon(x)` (the trajectory :math:`x(t)` does not depend on
the probe), and the result is their mean with standard error
:math:`\mathrm{std}/\sqrt K` (sample std, ``K - 1`` degrees of freedom; ``None`` for ``K = 1``).

Bits per dimension
------------------
``bits_per_dim = -log_prob / (D ln 2)`` with :math:`D` the number of features per sample. For
data on a grid of bin width :math:`w` (e.g. 8-bit images scaled to ``[0, 1]``: :math:`w = 1/256`;
scaled to ``[-1, 1]``: :math:`w = 2/256`), pass ``dequantize=w`` and give ``x`` at the lower edge
of each bin: the likelihood is evaluated at the uniformly dequantised point
:math:`x + u`, :math:`u \sim U[0, w)^D` (drawn from the seeded generator), and

.. math::
    \text{bpd} = -\frac{\log p(x + u) + D\log w}{D\ln 2},

a one-sample estimate of an upper bound (by Jensen) on the discrete model's bits per dimension
(with :math:`w = 1/256` this is score_sde's ``-log p / (D ln 2) + 8``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch

from ._checks import (
    check_finite_tensor,
    check_num_threads,
    check_positive,
    check_positive_int,
    check_seed,
    check_tolerances,
    tolerance_floor,
    torch_threads,
)
from .integrators.base import CountedScore
from .integrators.flow import singular_at_T, velocity_field
from .integrators.ode import SCIPY_METHODS, TORCHDIFFEQ_METHODS, import_torchdiffeq, solve_ode
from .sde import SDE, LinearSDE, ScoreFn

__all__ = ["log_likelihood", "LikelihoodResult", "DIVERGENCES", "PROBE_NOISES", "MAX_NFE", "tolerance_floor"]

DIVERGENCES = ("exact", "hutchinson")
PROBE_NOISES = ("rademacher", "gaussian")
#: default cap on score evaluations of one solve (correct runs at rtol = atol = 1e-9 take a few hundred)
MAX_NFE = 5000


class _DifferentiableScore(CountedScore):
    """A :class:`CountedScore` that checks each output: a tensor shaped like ``x`` with an autograd graph to ``x``."""

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = super().__call__(x, t)
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"score_fn must return a torch.Tensor, got {type(out).__name__}")
        if out.shape != x.shape:
            raise ValueError(
                f"score_fn returned shape {tuple(out.shape)} for x of shape {tuple(x.shape)}; "
                "it must return a tensor shaped like x"
            )
        if x.requires_grad and not out.requires_grad:
            raise ValueError(
                "score_fn's output has no autograd graph back to x (detached, computed under torch.no_grad() or "
                "torch.inference_mode(), or through NumPy), so the divergence of the probability-flow drift "
                "cannot be computed; log_likelihood needs score_fn to be differentiable in x"
            )
        return out


def _first_bad(rows: torch.Tensor, limit: int = 5) -> str:
    """``"[i, j, ...] (n of B)"`` for the True entries of a ``(B,)`` mask."""
    idx = torch.nonzero(rows).reshape(-1).tolist()
    more = ", ..." if len(idx) > limit else ""
    return f"[{', '.join(map(str, idx[:limit]))}{more}] ({len(idx)} of {rows.numel()})"


@dataclass
class LikelihoodResult:
    r"""What :func:`log_likelihood` returns; tensors have shape ``(batch,)`` unless stated.

    Attributes
    ----------
    log_prob : tensor
        :math:`\log p_\varepsilon(x)` in nats (at the dequantised points when ``dequantize`` is
        given), ``prior_logp + delta_logp``; for Hutchinson the mean over probes.
    std_error : tensor or None
        Standard error of ``log_prob`` over the Hutchinson probes (``std / sqrt(K)``); ``None`` for
        the exact divergence or a single probe.
    bits_per_dim : tensor
        ``-log_prob / (D ln 2)``, or with ``dequantize=w`` the discrete-data figure
        ``-(log_prob + D log w) / (D ln 2)``.
    nfe : int
        Number of score-function evaluations (forward passes on the batch).
    prior_logp : tensor
        :math:`\log p_T(x(T))` under the SDE's prior.
    delta_logp : tensor
        :math:`\int_\varepsilon^T \nabla\cdot\tilde f\,dt` (mean over probes for Hutchinson).
    solver_message : str
        scipy's message.
    latent : tensor
        :math:`x(T)`, shaped like ``x``.
    estimates : tensor or None
        Hutchinson only: the per-probe estimates of ``log_prob``, shape ``(batch, K)``.
    """

    log_prob: torch.Tensor
    std_error: torch.Tensor | None
    bits_per_dim: torch.Tensor
    nfe: int
    prior_logp: torch.Tensor
    delta_logp: torch.Tensor
    solver_message: str
    latent: torch.Tensor
    estimates: torch.Tensor | None = None


def _probe_noise(
    shape: tuple[int, ...], noise: str, generator: torch.Generator, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    if noise == "gaussian":
        return torch.randn(shape, generator=generator, dtype=dtype, device=device)
    bits = torch.randint(0, 2, shape, generator=generator, device=device)
    return bits.to(dtype).mul_(2).sub_(1)


def _check_args(
    sde: Any,
    score_fn: Any,
    x: Any,
    eps: Any,
    method: Any,
    rtol: Any,
    atol: Any,
    divergence: Any,
    probes: Any,
    noise: Any,
    seed: Any,
    dequantize: Any,
    max_nfe: Any,
    num_threads: Any,
) -> tuple[float, float, float, int, int, float | None, int, int | None]:
    """Validate the arguments of :func:`log_likelihood` (any values) and return the checked numbers
    ``(eps, rtol, atol, probes, seed, dequantize, max_nfe, num_threads)``."""
    if not isinstance(sde, SDE):
        raise TypeError(f"sde must be a scoresde.SDE, got {type(sde).__name__}")
    if sde.reversed:
        raise ValueError("sde must be a forward SDE (e.g. VPSDE()), not a reversed one")
    if not callable(score_fn):
        raise TypeError("score_fn must be callable as score_fn(x, t)")
    check_finite_tensor("x", x, min_dim=2)
    if x.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"x must be float32 or float64, got {x.dtype}; convert it with x.float() or x.double()")
    if x.shape[0] == 0 or x[0].numel() == 0:
        raise ValueError(f"x must hold at least one sample with at least one feature, got shape {tuple(x.shape)}")
    eps = check_positive("eps", eps)
    if eps >= sde.T:
        raise ValueError(f"eps must lie in (0, T={sde.T:g}), got {eps!r}")
    if method not in SCIPY_METHODS + TORCHDIFFEQ_METHODS:
        raise ValueError(
            f"method must be one of scipy's solve_ivp methods {list(SCIPY_METHODS)} or torchdiffeq's "
            f"{list(TORCHDIFFEQ_METHODS)}, got {method!r}"
        )
    if method in TORCHDIFFEQ_METHODS:
        import_torchdiffeq(f"log_likelihood(method={method!r})")
    rtol, atol = check_tolerances(rtol, atol, x.dtype)
    if divergence not in DIVERGENCES:
        raise ValueError(f"divergence must be one of {list(DIVERGENCES)}, got {divergence!r}")
    probes = check_positive_int("probes", probes)
    if noise not in PROBE_NOISES:
        raise ValueError(f"noise must be one of {list(PROBE_NOISES)}, got {noise!r}")
    seed = check_seed("seed", seed)
    if dequantize is not None:
        dequantize = check_positive("dequantize", dequantize)
    max_nfe = check_positive_int("max_nfe", max_nfe)
    num_threads = check_num_threads("num_threads", num_threads)
    return eps, rtol, atol, probes, seed, dequantize, max_nfe, num_threads


def log_likelihood(
    sde: SDE,
    score_fn: ScoreFn,
    x: torch.Tensor,
    *,
    eps: float = 1e-5,
    method: str = "RK45",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    divergence: str = "exact",
    probes: int = 1,
    noise: str = "rademacher",
    seed: int = 0,
    dequantize: float | None = None,
    prior_logp: Callable[[torch.Tensor], torch.Tensor] | None = None,
    max_nfe: int = MAX_NFE,
    num_threads: int | None = None,
    progress: bool = False,
) -> LikelihoodResult:
    r"""Log-likelihood of ``x`` under the probability-flow ODE of ``sde`` driven by ``score_fn``.

    Solves :math:`\frac{d}{dt}[x, \Delta] = [\tilde f(x, t), \nabla\cdot\tilde f(x, t)]` with
    :math:`\tilde f = f - \tfrac12 g^2 s_\theta` forward from ``eps`` to ``T`` and returns
    :math:`\log p_\varepsilon(x) = \log p_T(x(T)) + \Delta(T)` (see the module docstring for the
    derivation, the divergence estimators and bits per dimension).

    Parameters
    ----------
    sde : SDE
        The forward SDE (VP, sub-VP, VE, ...); its ``prior_logp`` stands in for :math:`\log p_T`.
    score_fn : callable
        ``score_fn(x, t) -> tensor like x`` with ``t`` of shape ``(batch,)``. It is called under
        ``torch.enable_grad()`` and must be differentiable in ``x``: an output without an autograd
        graph back to ``x`` (detached, or computed under ``torch.no_grad()``) raises ``ValueError``.
    x : tensor, shape ``(batch, *features)``
        Data points (finite). The model is evaluated in ``x``'s dtype and on its device; results
        follow them too.
    eps : float
        Start time in ``(0, T)``: the result is :math:`\log p_\varepsilon`. Default 1e-5.
    prior_logp : callable, optional
        Replaces ``sde.prior_logp`` for :math:`\log p_T` at the latent :math:`x(T)` (float64, on the
        CPU), e.g. the exact ``mixture.marginal(sde, T).log_prob`` to remove the prior-mismatch
        bias from an accuracy study.
    method, rtol, atol :
        ``scipy.integrate.solve_ivp`` method (any of ``SCIPY_METHODS``) or torchdiffeq's (any of
        ``TORCHDIFFEQ_METHODS``, needs ``scoresde[torchdiffeq]``) and tolerances. The whole batch and
        its log-density increments form one flat float64 system (a NumPy array on the CPU for scipy, a
        tensor on ``x``'s device for torchdiffeq), so error control is joint. Implicit methods
        difference the augmented system: small problems only.
        Both tolerances must be at least :func:`tolerance_floor` of ``x``'s dtype,
        :math:`\max(100\,\epsilon_{64}, \epsilon_{\text{dtype}})`.
    divergence : {"exact", "hutchinson"}
        Trace of the Jacobian by ``D`` backward passes, or the Hutchinson estimate with
        ``probes`` backward passes per evaluation.
    probes : int
        Number of independent fixed Hutchinson probes ``K`` (ignored for ``"exact"``). ``K >= 2``
        gives a standard error.
    noise : {"rademacher", "gaussian"}
        Distribution of the Hutchinson probes.
    seed : int
        Seeds the ``torch.Generator`` (on ``x``'s device) that draws, in this order, the
        dequantisation noise and the probes: a fixed seed gives identical results. An integer in
        ``[0, 2**63)``.
    dequantize : float, optional
        Bin width ``w`` of discrete data: evaluate at ``x + U[0, w)`` and report discrete bits
        per dimension.
    max_nfe : int
        Most score evaluations the solve may take (default ``MAX_NFE`` = 5000, far above what a
        well-behaved solve needs even at tight tolerances); reaching it raises ``RuntimeError``. A
        solve that needs many more evaluations usually means a stiff or wrong score (e.g. a much
        too large scale), not a hard density. Raise it for very tight tolerances or implicit methods.
    num_threads : int, optional
        Number of torch intra-op threads for the call (``torch.set_num_threads``), restored
        afterwards, also on error; ``None`` (default) leaves torch's setting alone. For small
        batches, and on a machine busy with other work, one thread is usually faster.
    progress : bool
        Show a progress bar over ``t``.

    Returns
    -------
    LikelihoodResult

    Raises
    ------
    ValueError, TypeError
        For invalid arguments (the message names the argument).
    RuntimeError
        If the solver fails, if the state, the drift or its divergence become NaN or infinite (the
        message names the time and the first samples concerned), or after ``max_nfe`` score
        evaluations.
    """
    eps, rtol, atol, probes, seed, dequantize, max_nfe, num_threads = _check_args(
        sde, score_fn, x, eps, method, rtol, atol, divergence, probes, noise, seed, dequantize, max_nfe, num_threads
    )
    # autograd must work even when called under torch.inference_mode() or torch.no_grad()
    with torch.inference_mode(False), torch_threads(num_threads):
        return _log_likelihood(
            sde,
            score_fn,
            x.detach().clone(),
            eps,
            method,
            rtol,
            atol,
            divergence,
            probes,
            noise,
            seed,
            dequantize,
            progress,
            prior_logp,
            max_nfe,
        )


def _log_likelihood(
    sde: SDE,
    score_fn: ScoreFn,
    x: torch.Tensor,
    eps: float,
    method: str,
    rtol: float,
    atol: float,
    divergence: str,
    probes: int,
    noise: str,
    seed: int,
    dequantize: float | None,
    progress: bool,
    prior_logp: Callable[[torch.Tensor], torch.Tensor] | None = None,
    max_nfe: int = MAX_NFE,
) -> LikelihoodResult:
    shape, dtype, device = x.shape, x.dtype, x.device
    B = shape[0]
    D = x[0].numel()
    T = float(sde.T)

    generator = torch.Generator(device=device).manual_seed(seed)
    if dequantize is not None:
        x = x + dequantize * torch.rand(shape, generator=generator, dtype=dtype, device=device)

    hutch = divergence == "hutchinson"
    K = probes if hutch else 1
    v = _probe_noise((K, *shape), noise, generator, dtype, device) if hutch else None

    counted = _DifferentiableScore(score_fn)
    if singular_at_T(sde) or getattr(score_fn, "parameterization", None) == "velocity":
        # rectified flow (f infinite at T) and flow-matching models: the velocity form of the same drift
        # s(T) = 0 needs a LinearSDE, and so does a velocity-parameterised model
        velocity = velocity_field(cast(LinearSDE, sde), counted)

        def pf_drift(xt: torch.Tensor, t: float) -> torch.Tensor:
            return velocity(xt, t)
    else:
        ode = sde.reverse(counted, probability_flow=True)

        def pf_drift(xt: torch.Tensor, t: float) -> torch.Tensor:
            return ode.sde(xt, t)[0]

    n_x = B * D

    def drift_and_div(xt: torch.Tensor, t: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Drift (B, *features) and divergence (B, K) at one time, detached."""
        with torch.enable_grad():
            xt = xt.requires_grad_(True)
            drift = pf_drift(xt, t)
            if not drift.requires_grad:
                raise ValueError(
                    f"the probability-flow drift at t={t:.6g} has no autograd graph back to x (a detached model "
                    "output?); log_likelihood needs score_fn to be differentiable in x"
                )
            if v is not None:  # Hutchinson (v holds the probes exactly when hutch)
                divs = []
                for k in range(K):
                    (grad,) = torch.autograd.grad(drift, xt, grad_outputs=v[k], retain_graph=k < K - 1)
                    divs.append((grad * v[k]).reshape(B, -1).sum(dim=1))
                div = torch.stack(divs, dim=1)
            else:
                flat = drift.reshape(B, -1)
                div = torch.zeros(B, dtype=dtype, device=device)
                for i in range(D):
                    (grad,) = torch.autograd.grad(flat[:, i].sum(), xt, retain_graph=i < D - 1)
                    div = div + grad.reshape(B, -1)[:, i]
                div = div[:, None]
        return drift.detach(), div.detach()

    def fun_torch(t: float, state: torch.Tensor) -> torch.Tensor:
        """The augmented right-hand side at a flat float64 state (on any device), float64 on its device."""
        t = float(t)
        if not math.isfinite(t):
            raise RuntimeError(f"log_likelihood: the solver produced a non-finite time t={t} (after {counted.nfe} NFE)")
        t = min(max(t, eps), T)
        if counted.nfe >= max_nfe:
            raise RuntimeError(
                f"log_likelihood: no solution after max_nfe={max_nfe} score evaluations (reached t={t:.6g} of "
                f"[{eps:g}, {T:g}]); a correct score needs far fewer, so check score_fn (a wrong scale makes the "
                "probability-flow ODE stiff), or raise max_nfe for very tight tolerances or implicit methods"
            )
        if not bool(torch.isfinite(state).all()):
            bad = ~torch.isfinite(state.cpu())
            rows = bad[:n_x].reshape(B, D).any(dim=1) | bad[n_x:].reshape(B, K).any(dim=1)
            raise RuntimeError(
                f"log_likelihood: the ODE state became NaN or infinite at t={t:.6g} for samples {_first_bad(rows)}; "
                "the probability-flow ODE diverged: check score_fn near these points and this time"
            )
        xt = state[:n_x].to(dtype=dtype, device=device).reshape(shape)
        drift, div = drift_and_div(xt, t)
        if not bool(torch.isfinite(drift).all() & torch.isfinite(div).all()):
            bad_drift = ~torch.isfinite(drift.reshape(B, -1)).all(dim=1).cpu()
            what = "drift (from score_fn)" if bool(bad_drift.any()) else "divergence of the drift"
            rows = bad_drift if bool(bad_drift.any()) else ~torch.isfinite(div).all(dim=1).cpu()
            raise RuntimeError(
                f"log_likelihood: the probability-flow {what} is NaN or infinite at t={t:.6g} for samples "
                f"{_first_bad(rows)}; check score_fn (and its gradient) at these points and this time"
            )
        return torch.cat([drift.reshape(-1), div.reshape(-1)]).to(dtype=torch.float64, device=state.device)

    def fun(t: float, y: np.ndarray) -> np.ndarray:
        return fun_torch(t, torch.from_numpy(y)).cpu().numpy()

    if method in TORCHDIFFEQ_METHODS:
        y0_t = torch.cat([x.reshape(-1).to(torch.float64), torch.zeros(B * K, dtype=torch.float64, device=device)])
        sol = solve_ode(
            fun_torch, (eps, T), y0_t, method=method, rtol=rtol, atol=atol, desc="log_likelihood", progress=progress
        )
        if sol.status != 0:
            raise RuntimeError(f"torchdiffeq's {method} failed near t={float(sol.t[-1]):.6g}: {sol.message}")
        y_end = sol.ys[-1].cpu()
    else:
        y0 = np.concatenate([x.reshape(-1).to(device="cpu", dtype=torch.float64).numpy(), np.zeros(B * K)])
        sol = solve_ode(
            fun, (eps, T), y0, method=method, rtol=rtol, atol=atol, desc="log_likelihood", progress=progress
        )
        if sol.status != 0:
            raise RuntimeError(f"solve_ivp({method}) failed: {sol.message}")
        y_end = torch.from_numpy(np.ascontiguousarray(sol.y[:, -1]))
    latent64 = y_end[:n_x].reshape(shape)
    deltas = y_end[n_x:].reshape(B, K)  # float64, on the CPU
    prior = (sde.prior_logp if prior_logp is None else prior_logp)(latent64).to(torch.float64).reshape(B)
    estimates = prior[:, None] + deltas
    log_prob = estimates.mean(dim=1)
    std_error = estimates.std(dim=1, correction=1) / math.sqrt(K) if hutch and K > 1 else None
    bpd = -log_prob / (D * math.log(2))
    if dequantize is not None:
        bpd = bpd - math.log2(dequantize)

    def out(a: torch.Tensor) -> torch.Tensor:
        return a.to(dtype=dtype, device=device)

    return LikelihoodResult(
        log_prob=out(log_prob),
        std_error=None if std_error is None else out(std_error),
        bits_per_dim=out(bpd),
        nfe=counted.nfe,
        prior_logp=out(prior),
        delta_logp=out(deltas.mean(dim=1)),
        solver_message=str(sol.message),
        latent=out(latent64),
        estimates=out(estimates) if hutch else None,
    )
