"""The one entry point: :func:`sample` runs a sampler and returns a labelled ``xarray.Dataset``."""

from __future__ import annotations

import datetime as _dt
import json
import operator
import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import xarray as xr

from ._checks import check_finite_tensor, check_num_threads, check_positive_int, check_seed, torch_threads
from .samplers import CountedScore, EulerMaruyama, Sampler
from .sde import SDE, ScoreFn

__all__ = ["sample", "feature_dims", "provenance"]


def feature_dims(feature_shape: Sequence[int]) -> tuple[str, ...]:
    """Dimension names for a sample's feature axes: ``feature`` for vectors, ``channel, height,
    width`` for images, ``feature_0, feature_1, ...`` otherwise."""
    n = len(feature_shape)
    if n == 1:
        return ("feature",)
    if n == 3:
        return ("channel", "height", "width")
    if n == 2:
        return ("height", "width")
    return tuple(f"feature_{i}" for i in range(n))


_SAVE_AT_TYPES = "an int (the number of saved states) or a sequence of times"


def _save_times(save_at: int | Sequence[float], T: float, eps: float) -> np.ndarray:
    """The saved times, decreasing: ``save_at`` evenly spaced from ``T`` to ``eps``, or the given times."""
    if isinstance(save_at, bool | np.bool_):
        raise TypeError(f"save_at must be {_SAVE_AT_TYPES}, got bool {save_at!r}")
    if isinstance(save_at, int | np.integer):
        n = check_positive_int("save_at", int(save_at), minimum=2)
        return np.linspace(T, eps, n)
    try:
        arr = None if isinstance(save_at, str | bytes) else np.asarray(save_at, dtype=object)
    except (TypeError, ValueError):
        arr = None
    if arr is None or arr.ndim == 0:
        raise TypeError(
            f"save_at must be {_SAVE_AT_TYPES}, got {type(save_at).__name__} {save_at!r}; to save at one time t "
            "pass [t]"
        )
    items = arr.reshape(-1).tolist()
    for v in items:
        if isinstance(v, bool | np.bool_ | str | bytes):
            raise TypeError(f"save_at times must be real numbers, got {type(v).__name__} {v!r}")
    try:
        times = np.array([float(v) for v in items], dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"save_at times must be real numbers, got {save_at!r}") from None
    if times.size == 0 or not np.all(np.isfinite(times)) or times.min() < eps or times.max() > T:
        raise ValueError(
            f"save_at times must be finite and lie in [eps={eps:g}, T={T:g}], got {times.tolist()}; "
            "for a number of evenly spaced states pass an int"
        )
    return np.sort(times)[::-1]


def _check_shape(shape: Any) -> tuple[int, ...]:
    """``shape`` as a tuple of positive ints ``(n_samples, *feature_shape)``; strings, floats and bools raise."""
    expected = "shape must be a sequence of integers (n_samples, *feature_shape)"
    if isinstance(shape, str | bytes):
        raise TypeError(f"{expected}, got {type(shape).__name__} {shape!r}")
    try:
        items = tuple(shape)
    except TypeError:
        raise TypeError(f"{expected}, got {type(shape).__name__} {shape!r}") from None
    out = []
    for s in items:
        if isinstance(s, bool | np.bool_):
            raise TypeError(f"{expected}, got the bool {s!r} in {shape!r}")
        try:
            out.append(operator.index(s))
        except TypeError:
            raise TypeError(f"{expected}, got {type(s).__name__} {s!r} in {shape!r}") from None
    if len(out) < 2 or min(out) < 1:
        raise ValueError(f"shape must be (n_samples, *feature_shape) with positive sizes, got {tuple(out)}")
    return tuple(out)


def _check_device(name: str, device: Any) -> torch.device:
    """``device`` as a ``torch.device`` that can hold data and a ``torch.Generator``, else ``ValueError``."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"{name} must be a torch device such as 'cpu' or 'cuda', got {device!r}") from None
    device = dev
    if device.type == "meta":
        where = "device='meta'" if name == "device" else f"{name} is on device 'meta', which"
        raise ValueError(f"{where} holds no data (only shapes); sample on device='cpu' or 'cuda'")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{name}={str(device)!r} requested but CUDA is not available; use device='cpu'")
    try:
        torch.Generator(device=device)
    except RuntimeError as err:
        raise ValueError(
            f"{name}={str(device)!r} cannot hold a torch.Generator ({err}); use device='cpu' or 'cuda'"
        ) from None
    return dev


def _check_capacity(sampler: Sampler, sde: SDE, save_at: Any) -> None:
    """Raise ``ValueError`` before anything is allocated if ``save_at`` asks for more states than ``sampler`` makes."""
    cap = sampler.max_saved_states(sde)
    if cap is None or isinstance(save_at, bool | str | bytes):
        return  # _save_times refuses these with its own message
    if isinstance(save_at, int | np.integer):
        n = int(save_at)
    elif hasattr(save_at, "__len__"):
        n = len(save_at)
    else:
        return
    if n > cap:
        raise ValueError(
            f"save_at={save_at if isinstance(save_at, int | np.integer) else f'<{n} times>'} asks for {n} saved "
            f"states, but {type(sampler).__name__} makes at most {cap} (the states on its grid of "
            f"{cap - 1} steps); ask for at most {cap}, or use more steps"
        )


def _netcdf_safe(value: Any) -> Any:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int | float | str | np.integer | np.floating):
        return value
    return json.dumps(value)


def provenance(sde: SDE, sampler: Sampler, score_fn: ScoreFn, **extra: Any) -> dict[str, Any]:
    """netCDF-safe attributes describing a run: SDE, sampler, score function, versions, time."""
    from ._version import __version__

    attrs: dict[str, Any] = {
        "sde": type(sde).__name__,
        "sde_params": json.dumps(sde.params()),
        "sampler": type(sampler).__name__,
        "sampler_params": json.dumps(sampler.params()),
        "score_fn": repr(score_fn),
        "scoresde_version": __version__,
        "torch_version": torch.__version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    for k, v in sde.params().items():
        attrs[f"sde_{k}"] = _netcdf_safe(v)
    for k, v in sampler.params().items():
        attrs[f"sampler_{k}"] = _netcdf_safe(v)
    attrs.update({k: _netcdf_safe(v) for k, v in extra.items()})
    return attrs


def sample(
    sde: SDE,
    score_fn: ScoreFn,
    sampler: Sampler | None = None,
    *,
    shape: Sequence[int] | None = None,
    x_T: torch.Tensor | None = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    save_at: int | Sequence[float] = 2,
    progress: bool = True,
    num_threads: int | None = None,
    divergence_bound: float | str | None = "auto",
    chunk_size: int | None = None,
    out: str | os.PathLike[str] | None = None,
) -> xr.Dataset:
    r"""Sample the reverse-time SDE (or probability-flow ODE) of ``sde`` driven by ``score_fn``.

    Starts from :math:`x_T \sim p_T` (``sde.prior_sampling``) or from the given ``x_T``,
    integrates with ``sampler`` to ``t = sampler.eps``, and returns the trajectory.

    Parameters
    ----------
    sde : SDE
        The forward SDE (e.g. :class:`~scoresde.VPSDE`).
    score_fn : callable
        ``score_fn(x, t) -> tensor like x``, :math:`\approx \nabla_x \log p_t(x)`; ``t`` is a
        ``(batch,)`` vector. Called without autograd.
    sampler : Sampler, optional
        Any sampler of the library (:class:`~scoresde.EulerMaruyama`, :class:`~scoresde.PredictorCorrector`,
        :class:`~scoresde.ProbabilityFlowODE`, :class:`~scoresde.DPMSolverPP`, ...). Default:
        ``EulerMaruyama()``, Euler–Maruyama on the reverse-time SDE with 1000 steps (1000 NFE); see the
        notes for why.
    shape : sequence of int
        ``(n_samples, *feature_shape)``, positive integers. Required unless ``x_T`` is given.
    x_T : tensor, optional
        Starting points at ``t = T``; its dtype and device override ``dtype`` and ``device``.
    seed : int
        Seeds a ``torch.Generator`` on ``device`` that draws the prior and all noise: the same
        seed gives bit-identical results on CPU. An integer in ``[0, 2**63)``; default 0.
    device, dtype :
        Where and in what precision to integrate (float32 or float64). ``device`` must hold data
        (not ``"meta"``).
    save_at : int or sequence of float
        Number of saved states, evenly spaced in time from ``T`` to ``eps`` (default 2: the
        start and the end), or the times to save (the nearest grid times for fixed-step
        samplers; exact times for scipy and torchsde).
    progress : bool
        Show a tqdm progress bar (renders in notebooks too). Default True.
    num_threads : int, optional
        Number of torch intra-op threads for this call (``torch.set_num_threads``); the previous
        value is restored afterwards, also on error. ``None`` (default) leaves torch's setting
        alone. For small tensors (low-dimensional samples, small batches), and on a machine busy
        with other work, one thread is usually faster than several, which wait on each other;
        the README's performance section gives measurements. The samples do not depend on it for
        the built-in samplers on CPU.
    divergence_bound : "auto", float or None
        Every state of the run must be finite and satisfy :math:`\|x\|_\infty \le B`, else
        :class:`~scoresde.DivergenceError` names the sampler, step, time and samples. ``"auto"``
        (default): :math:`B = 10^3(\sigma_T + \max(1, \|x_T\|_\infty))`, with :math:`\sigma_T` the
        prior's std (1 for VP, :math:`\sigma_{\max}` for VE); a number sets :math:`B`; ``None``
        disables the bound (NaN and inf still raise).
    chunk_size : int, optional
        Sample in chunks of ``chunk_size`` samples (the last one may be smaller); chunk :math:`i` draws
        its prior and noise from its own generator, seeded with :func:`~scoresde.chunk_seed` ``(seed, i)``,
        so the samples do not depend on the order of the chunks or on the number of processes (under
        ``torch.distributed``, if the caller initialised a process group, rank :math:`r` of :math:`W` runs
        the chunks :math:`i \equiv r \bmod W`). The samples differ from those of the same ``seed`` without
        chunks. ``None`` (default): one batch, one generator. See :mod:`scoresde.chunked`.
    out : path, optional
        With ``chunk_size``: stream each finished chunk into a zarr store at this path and return the
        store lazily opened (``xarray.open_zarr``), so memory holds one chunk, not the whole trajectory.
        An existing store of the same call is completed (only its missing chunks are computed); one of
        another configuration raises ``ValueError``. Needs ``pip install 'scoresde[zarr]'``.

    Returns
    -------
    xarray.Dataset
        ``x`` with dimensions ``(time, sample, *features)``, the coordinate ``time`` (SDE time of
        each saved state, decreasing; a final ``0.0`` holds the denoised state when
        ``denoise=True``), ``nfe`` (cumulative score evaluations at each saved state; ``-1``
        where the solver cannot tell), and attributes: SDE and sampler with their parameters,
        score function, total NFE, seed, eps, dtype, device, wall time, versions, the bound in force
        (``divergence_bound``, ``inf`` if disabled) and the run's largest :math:`|x|` (``max_abs_x``). The
        attributes are netCDF-safe, so ``ds.to_netcdf(path)`` round-trips. With ``chunk_size``, ``nfe``
        has dimensions ``(chunk, time)`` and the per-chunk results are variables along ``chunk``
        (``chunk_nfe``, ``chunk_wall_time_s``, ``chunk_max_abs_x``, ``chunk_divergence_bound``,
        ``chunk_done``, ...); the attributes ``nfe``, ``nfe_total``, ``wall_time_s``, ``max_abs_x`` and
        ``divergence_bound`` aggregate them (see :mod:`scoresde.chunked`).

    Notes
    -----
    Why the default is ``EulerMaruyama()``. A trained score :math:`s_\theta = s + \delta` is least
    accurate at small :math:`t`: an :math:`\varepsilon`-network's error :math:`e` becomes
    :math:`\delta = -e/\sigma(t)`. The samplers expose that error differently.

    * Euler–Maruyama converges (weak order 1) to the law :math:`q_\varepsilon` of the reverse SDE
      :math:`dx = [f - g^2 s_\theta]\,dt + g\,d\bar w`, for which Girsanov's theorem bounds the error by
      :math:`\mathrm{KL}(p_\varepsilon \| q_\varepsilon) \le \mathrm{KL}(p_T \| q_T) + \tfrac12
      \int_\varepsilon^T g(t)^2\, E_{p_t}\|\delta(x, t)\|^2\,dt`: the error enters weighted by
      :math:`g(t)^2`, which is small where :math:`\delta` is large (:math:`g^2 = \beta(t) \to \beta_{\min}`
      for VP). It needs nothing of the SDE beyond its drift and diffusion.
    * A Langevin corrector (:class:`~scoresde.PredictorCorrector`) runs an MCMC chain at every grid time
      whose stationary law is the density with score :math:`s_\theta(\cdot, t)`. The signal-to-noise rule
      (ratio :math:`r`) makes a move's step :math:`h \approx 2 r^2 \sigma_*^2` on a density of local width
      :math:`\sigma_*`, a fraction :math:`2 r^2` of its relaxation time, so :math:`N` steps of :math:`M`
      moves run about :math:`2 r^2 N M` relaxation times: enough for the chain to settle on the network's
      small-:math:`t` density, error included, instead of :math:`p_t`. With the exact score the chain
      leaves :math:`p_t` invariant up to the step's :math:`O(h)` bias, which is why predictor–corrector
      sampling is accurate on exact scores and not on trained ones.
    * A probability-flow ODE solver (:class:`~scoresde.ProbabilityFlowODE`, :class:`~scoresde.DPMSolverPP`,
      :class:`~scoresde.UniPC`) transports the error without any contraction; high-order solvers reach the
      ODE's own limit in a few tens of NFE, which is exact for an exact score, but that limit is the law
      of the network's flow, not of its SDE.

    ``python -m studies.default_sampler`` measures every sampler at matched NFE budgets on trained models
    and on exact scores. For few NFE with an exact or very accurate score, pass a high-order solver such
    as ``DPMSolverPP()``.
    """
    sampler = EulerMaruyama() if sampler is None else sampler
    if not isinstance(sampler, Sampler):
        raise TypeError(f"sampler must be a scoresde Sampler, got {type(sampler).__name__}")
    if not isinstance(sde, SDE):
        raise TypeError(f"sde must be a scoresde SDE, got {type(sde).__name__}")
    if not callable(score_fn):
        raise TypeError("score_fn must be callable as score_fn(x, t)")
    seed = check_seed("seed", seed)
    if chunk_size is not None:
        chunk_size = check_positive_int("chunk_size", chunk_size)
    elif out is not None:
        raise ValueError(
            f"out={out!r} streams the run into a zarr store chunk by chunk; give chunk_size as well (e.g. 10000)"
        )
    if out is not None and not isinstance(out, str | os.PathLike):
        raise TypeError(f"out must be a path (str or os.PathLike) of a zarr store, got {type(out).__name__}")
    num_threads = check_num_threads("num_threads", num_threads)
    checked_shape = None if shape is None else _check_shape(shape)
    if x_T is not None:
        if not isinstance(x_T, torch.Tensor):
            raise TypeError(f"x_T must be a torch.Tensor, got {type(x_T).__name__}")
        device = _check_device("x_T", x_T.device)
        check_finite_tensor("x_T", x_T, min_dim=2)
        if x_T.numel() == 0:
            raise ValueError(
                f"x_T must hold at least one sample with at least one feature, got shape {tuple(x_T.shape)}; "
                "pass starting points of shape (n_samples, *feature_shape) with positive sizes"
            )
        if checked_shape is not None and checked_shape != tuple(x_T.shape):
            raise ValueError(f"shape {checked_shape} disagrees with x_T.shape {tuple(x_T.shape)}")
        dtype = x_T.dtype
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"x_T must be float32 or float64, got {dtype}; convert it with x_T.double()")
    elif dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    elif checked_shape is None:
        raise ValueError("give shape=(n_samples, *feature_shape) or starting points x_T")
    else:
        device = _check_device("device", device)
    sampler.check(sde)
    _check_capacity(sampler, sde, save_at)
    save_times = _save_times(save_at, sde.T, sampler.eps)
    if chunk_size is not None:
        from .chunked import sample_chunked

        full_shape = tuple(x_T.shape) if x_T is not None else checked_shape
        assert full_shape is not None  # checked above: shape or x_T
        with torch_threads(num_threads):
            return sample_chunked(
                sde,
                score_fn,
                sampler,
                n=full_shape[0],
                feature_shape=full_shape[1:],
                chunk_size=chunk_size,
                x_T=x_T,
                seed=seed,
                device=device,
                dtype=dtype,
                save_times=save_times,
                divergence_bound=divergence_bound,
                progress=progress,
                out=out,
            )

    generator = torch.Generator(device=device).manual_seed(int(seed))
    counted = CountedScore(score_fn)
    start = time.perf_counter()
    with torch_threads(num_threads), torch.inference_mode():
        if x_T is None:
            assert checked_shape is not None  # checked above: shape or x_T
            x = sde.prior_sampling(checked_shape, generator=generator, dtype=dtype, device=device)
        else:
            x = x_T.detach().clone()
        traj = sampler.run(sde, counted, x, generator, save_times, progress, divergence_bound=divergence_bound)
    wall = time.perf_counter() - start

    states = torch.stack(traj.states).cpu().numpy()
    dims = ("time", "sample", *feature_dims(states.shape[2:]))
    attrs = provenance(
        sde,
        sampler,
        score_fn,
        nfe=counted.nfe,
        seed=seed,
        eps=sampler.eps,
        dtype=str(dtype).replace("torch.", ""),
        device=str(device),
        wall_time_s=round(wall, 4),
        denoised=sampler.denoise,
        divergence_bound=counted.guard.bound,
        max_abs_x=traj.stats.pop("max_abs_x"),
        **{f"stat_{k}": v for k, v in traj.stats.items()},
    )
    return xr.Dataset(
        {
            "x": (dims, states, {"long_name": "state", "description": "saved states of the reverse-time process"}),
            "nfe": (
                ("time",),
                np.asarray(traj.nfe, dtype=np.int64),
                {"long_name": "cumulative score evaluations at each saved state (-1: unknown)"},
            ),
        },
        coords={
            "time": ("time", np.asarray(traj.times, dtype=np.float64), {"long_name": "SDE time t"}),
            "sample": ("sample", np.arange(states.shape[1])),
        },
        attrs=attrs,
    )
