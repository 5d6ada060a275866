r"""The reverse-time SDE through ``torchsde.sdeint``: :class:`TorchSDE`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from .._checks import check_positive_int
from .._guard import DivergenceGuard
from .._progress import progress_bar
from ..sde import SDE, ReverseSDE
from .base import CountedScore, Sampler, Trajectory

__all__ = ["TorchSDE", "TORCHSDE_METHODS"]


TORCHSDE_METHODS = ("euler", "milstein", "srk", "heun", "midpoint", "reversible_heun")


class TorchsdeReverse(torch.nn.Module):
    r"""The reverse SDE in :math:`u = T - t`: :math:`dy = -\bar f(y, T - u)\,du + g(T - u)\,dW_u`.

    Noise is additive (``g`` depends on time only), given as the product ``g_prod = g * v``
    so that no ``(batch, d, d)`` matrix is ever built. For additive noise Itô and
    Stratonovich coincide.
    """

    noise_type = "additive"

    def __init__(
        self, rsde: ReverseSDE, shape: torch.Size, sde_type: str, guard: DivergenceGuard | None = None, h: float = 1.0
    ) -> None:
        super().__init__()
        self.rsde, self.shape, self.sde_type = rsde, shape, sde_type
        self.T = rsde.T
        self._last: tuple[float, torch.Tensor, torch.Tensor] | None = None
        self.guard = DivergenceGuard("TorchSDE") if guard is None else guard
        self.h = h

    def f(self, u: float | torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # torchsde's additive SRA1 step evaluates the drift at (t0, y0) twice (stages 1 and 2); the
        # second call returns the cached value: 2 NFE per step instead of 3, bit-identical results
        # (the same tensor object at the same time; torchsde never updates its states in place, and
        # inference tensors carry no version counter to check that with)
        u = float(u)
        last = self._last
        if last is not None and last[0] == u and last[1] is y:
            return last[2]
        # the state torchsde asks about at u (a step's result, or a stage of one): step floor(u / h)
        self.guard.check(y, int(u / self.h * (1 + 1e-9)), self.T - u)
        drift, _ = self.rsde.sde(y.reshape(self.shape), self.T - u)
        out = -drift.reshape(y.shape)
        self._last = (u, y, out)
        return out

    def g_prod(self, u: float | torch.Tensor, y: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        _, diffusion = self.rsde.base.sde(y[:1].reshape(1, *self.shape[1:]), self.T - float(u))
        return diffusion[0] * v

    def f_and_g_prod(
        self, u: float | torch.Tensor, y: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.f(u, y), self.g_prod(u, y, v)


class TorchSDE(Sampler):
    r"""The reverse-time SDE through ``torchsde.sdeint`` with a fixed step.

    ``sdeint`` needs increasing times, so the reverse SDE is integrated in :math:`u = T - t`
    (:math:`u: 0 \to T - \varepsilon`), with drift :math:`-\bar f(y, T - u)` and diffusion
    :math:`g(T - u)` (additive noise). Each sample is flattened to a vector (torchsde wants
    2-D states) and reshaped back.

    ``sdeint`` checks shapes by evaluating the drift at :math:`(0, x_T)` before integrating; that
    evaluation is reused by the first step (cached), so NFE = N (euler) or 2N (srk). The Brownian
    motion is a ``torchsde.BrownianInterval`` whose entropy is drawn from the run's generator, so a
    seed gives bit-identical results on CPU.

    Parameters
    ----------
    method : str
        ``"euler"``, ``"milstein"`` (identical to Euler for additive noise), ``"srk"`` (the
        additive-noise SRA1 scheme, strong order 1.5; torchsde 0.2.6 asks for the drift 3 times
        per step, one of them a repeat that is answered from a one-entry cache), ``"heun"``,
        ``"midpoint"`` or ``"reversible_heun"`` (the last three are Stratonovich schemes; for
        additive noise the Stratonovich and Itô SDEs coincide).
    steps : int
        Number of steps of size :math:`(T - \varepsilon)/N`. Default 200 (400 NFE with srk).
    brownian : callable, optional
        Builds the Brownian motion instead of the default: called as ``brownian(t0=0.0, t1=T - eps,
        size=(batch, D), dtype=..., device=..., dt=h, levy_area_approximation=...)`` (the keywords
        of ``torchsde.BrownianInterval``, so ``functools.partial(torchsde.BrownianInterval,
        entropy=...)`` works) and must return a torchsde Brownian motion in :math:`u = T - t`.
        ``levy_area_approximation`` is ``"space-time"`` for ``"srk"`` (it must then answer
        ``return_U=True``), else ``"none"``. The steps query :math:`(u_k, u_{k+1})` with
        :math:`u_k = k h (1 + 10^{-9})`, the last one clipped to :math:`T - \varepsilon`. Use it to
        drive runs with different ``steps`` by one Brownian path (a ``BrownianInterval`` with
        a fixed entropy but a different ``dt`` gives the same :math:`W(T - \varepsilon)` but a
        different path in between). The run's generator is then not used.
    """

    def __init__(
        self,
        method: str = "srk",
        steps: int = 200,
        eps: float = 1e-3,
        denoise: bool = False,
        brownian: Callable[..., Any] | None = None,
    ) -> None:
        super().__init__(eps, denoise)
        if method not in TORCHSDE_METHODS:
            raise ValueError(f"unknown torchsde method {method!r}; choose one of {list(TORCHSDE_METHODS)}")
        if brownian is not None and not callable(brownian):
            raise TypeError(f"brownian must be callable (a Brownian-motion factory), got {type(brownian).__name__}")
        self.method = method
        self.steps = check_positive_int("steps", steps)
        self.brownian = brownian

    #: drift evaluations per step of the torchsde methods (additive noise; the srk repeat is cached)
    NFE_PER_STEP: dict[str, int] = {"euler": 1, "milstein": 1, "srk": 2, "heun": 2, "midpoint": 2}

    @property
    def nfe_per_step(self) -> int | None:
        """Score evaluations per step of ``method`` (``None`` where torchsde does not fix it)."""
        return self.NFE_PER_STEP.get(self.method)

    def expected_nfe(self, sde: SDE) -> int | None:
        """``steps * nfe_per_step``, plus one for the denoising step."""
        n = self.nfe_per_step
        return None if n is None else self.steps * n + int(self.denoise)

    def params(self) -> dict[str, Any]:
        p: dict[str, Any] = {"method": self.method, "steps": self.steps, **super().params()}
        if self.brownian is not None:
            p["brownian"] = getattr(self.brownian, "__name__", type(self.brownian).__name__)
        return p

    def integrate(
        self,
        sde: SDE,
        score_fn: CountedScore,
        x: torch.Tensor,
        generator: torch.Generator,
        save_times: np.ndarray,
        progress: bool,
    ) -> Trajectory:
        import torchsde

        shape = x.shape
        sde_type = "stratonovich" if self.method in ("heun", "midpoint", "reversible_heun") else "ito"
        span = sde.T - self.eps
        h = span / self.steps
        model = TorchsdeReverse(sde.reverse(score_fn), shape, sde_type, score_fn.guard, h)
        # save times, in u = T - t, always containing 0 and the end
        u = np.unique(np.clip(sde.T - np.concatenate([save_times, [sde.T, self.eps]]), 0.0, span))
        ts = torch.tensor(u, dtype=torch.float64, device=x.device)
        levy = "space-time" if self.method == "srk" else "none"
        y0 = x.reshape(shape[0], -1)
        if self.brownian is not None:
            bm = self.brownian(
                t0=0.0, t1=span, size=y0.shape, dtype=x.dtype, device=x.device, dt=h, levy_area_approximation=levy
            )
        else:
            entropy = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
            bm = torchsde.BrownianInterval(
                t0=0.0,
                t1=span,
                size=y0.shape,
                dtype=x.dtype,
                device=x.device,
                entropy=entropy,
                dt=h,
                levy_area_approximation=levy,
            )
        # a step a hair longer than h makes sdeint take exactly `steps` steps: its last step
        # is clipped to ts[-1], and no extra ~1e-16 step appears from rounding
        with progress_bar(total=1, desc=f"TorchSDE[{self.method}]", disable=not progress) as bar:
            ys = torchsde.sdeint(model, y0, ts, bm=bm, method=self.method, dt=h * (1 + 1e-9))
            bar.update(1)
        score_fn.guard.check(ys[-1], self.steps - 1, self.eps)
        traj = Trajectory(stats={"torchsde_method": self.method})
        for j, uj in enumerate(u):
            traj.save(sde.T - uj, ys[j].reshape(shape), score_fn.nfe if j == len(u) - 1 else -1)
        return traj
