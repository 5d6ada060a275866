r"""Training score networks by denoising score matching, with checkpoints that survive interruption.

One step: draw a batch :math:`x_0` (indices from the run's own ``torch.Generator``), evaluate
:func:`scoresde.losses.dsm_loss`, clip the gradient norm, take an AdamW step with linear
learning-rate warm-up (a ``torch.optim.lr_scheduler.LambdaLR``), and update the exponential moving
average of the weights (``torch.optim.swa_utils.get_ema_multi_avg_fn``),
:math:`\bar\theta \leftarrow \mu_k \bar\theta + (1 - \mu_k)\theta` with the warmed-up decay
:math:`\mu_k = \min(\mu, (1 + k)/(10 + k))` at step :math:`k`. Sampling uses the EMA weights.

A checkpoint holds the model, the EMA model, the optimizer, the learning-rate schedule, the step,
every random state and the full configuration (SDE, network, data map, loss, optimiser), so that a
checkpoint alone rebuilds the score function (:func:`load_checkpoint`), and a SHA-256 checksum of
all of it, verified on reading together with the type and range of every field
(:func:`read_checkpoint`).

Files in ``out_dir``: at every checkpoint the trainer writes ``last.pt`` first, then
``step_XXXXXXX.pt`` (the same content), then ``history.nc``; each write is atomic (temporary file,
then ``os.replace``). So at any moment, even after ``kill -9``, ``last.pt`` is the newest complete
checkpoint (its step is at least that of every ``step_XXXXXXX.pt``), and a run resumed from it
continues bit-identically on CPU. A trainer holds an exclusive lock on its ``out_dir``
(``.scoresde.lock``) so that a second run cannot write into the same directory, and removes the
temporary files that a killed run left there.

**Data-parallel training.** Under an initialised ``torch.distributed`` process group (one that the
user, or ``torchrun`` with ``scoresde train``, set up; the trainer never creates or destroys one) with
:math:`N > 1` ranks, the network is wrapped in ``torch.nn.parallel.DistributedDataParallel``. Every
rank draws the same global batch of ``batch_size`` samples and the same times and noise (the same
generator, the same draws) and evaluates the objective on all of it, but the network only on its own
rows: rank :math:`r` of a batch of :math:`n` evaluates rows :math:`[\lfloor rn/N \rfloor,
\lfloor (r+1)n/N \rfloor)` with gradient, and the outputs of the other ranks' rows are gathered
(without gradient). So the loss is that of the whole global batch on every rank, and the gradient of
rank :math:`r` is :math:`\sum_{i \in r} (\partial L/\partial F_i)(\partial F_i/\partial\theta)`;
the loss is scaled by :math:`N` before the backward pass, so that the all-reduce average of
``DistributedDataParallel`` is :math:`\partial L/\partial\theta`, the single-process gradient of the
global batch (for any loss, as long as the network treats rows independently). One rank and
:math:`N` ranks thus take the same steps up to the order of floating-point sums. Rank 0 alone writes
checkpoints, the history and progress bars (and locks ``out_dir``); the other ranks wait for it and
stop with :class:`DistributedError` if it fails (and it stops if they fail).
A rank whose process ends makes the others' next collective operation fail at once; a rank that
stops answering makes them fail after the process group's timeout. Checkpoints record the world size
and the global batch size, and load in runs of any world size; every rank of a resumed run reads the
checkpoint, so ``out_dir`` must be on a file system that all ranks see.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import math
import os
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
import xarray as xr
from torch.optim.swa_utils import get_ema_multi_avg_fn

from ._checks import check_positive, check_positive_int, check_seed
from ._distributed import (
    DistributedError,
    all_gather_rows,
    check_agree,
    collective_failed,
    raise_if_any,
    rank_failed,
    row_bounds,
)
from ._distributed import rank as dist_rank
from ._distributed import world_size as dist_world_size
from ._io import DirectoryLock, OutputDirError, atomic_path, lock_directory, remove_stale_temps
from ._progress import progress_bar
from ._registry import UnregisteredError
from .datasets import Dataset
from .losses import (
    WEIGHTINGS,
    DDPMObjective,
    DenoisingScoreMatching,
    FlowMatching,
    Objective,
    objective_config,
    objective_from_config,
)
from .sde import SDE, LinearSDE, sde_config, sde_from_config

if TYPE_CHECKING:
    from .nets import NoisyClassifier, ScoreModel

__all__ = [
    "TrainConfig",
    "Trainer",
    "train",
    "CheckpointError",
    "DistributedError",
    "OutputDirError",
    "checksum",
    "load_checkpoint",
    "read_checkpoint",
    "save_atomic",
    "train_classifier",
    "save_classifier",
    "load_classifier",
]

CHECKPOINT_FORMAT = "scoresde-checkpoint"
OBJECTIVES = ("dsm", "ddpm", "flow_matching")
#: 2: SHA-256 checksum and learning-rate scheduler state (version 1 files are still read)
CHECKPOINT_VERSION = 2
#: the files a trainer writes into its ``out_dir`` (``fnmatch`` patterns)
CHECKPOINT_FILES = ("last.pt", "step_*.pt", "history.nc")
#: sanity bound on the number of features of one sample recorded in a checkpoint
MAX_FEATURES = 2**24


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, truncated, corrupt or from another network."""


@dataclass
class TrainConfig:
    r"""Optimisation settings (all recorded in checkpoints).

    ``lr`` is reached linearly over ``warmup`` steps; ``grad_clip`` bounds the global gradient
    norm (0 disables); ``ema_decay`` is :math:`\mu`; ``eps`` is the smallest training time.

    ``objective`` selects the loss: an :class:`scoresde.Objective` (a built-in one or one of your own,
    see :class:`scoresde.Objective`), or one of the shorthands

    * ``"dsm"``: continuous-time denoising score matching, :func:`scoresde.losses.dsm_loss`
      (``weighting``, ``eps``, ``reduce``), :math:`t \sim U[\varepsilon, T]`; the same as
      ``DenoisingScoreMatching(weighting, eps, reduce)``;
    * ``"ddpm"``: the same loss with :math:`t = i/N`, :math:`i \sim U\{1..N\}` on the grid of a
      :class:`scoresde.DDPMSDE`; with ``weighting="sigma2"`` and an ``"eps"`` model this is Ho et al.'s
      :math:`\|\varepsilon - \hat\varepsilon_\theta(x_i, i)\|^2`; the same as
      ``DDPMObjective(weighting, reduce)``;
    * ``"flow_matching"``: :func:`scoresde.losses.velocity_loss` for a ``"velocity"`` model (e.g. on
      :class:`scoresde.RectifiedFlow`: :math:`\|v_\theta(x_t, t) - (z - x_0)\|^2`); the same as
      ``FlowMatching(eps, reduce)``.

    ``weighting``, ``eps`` and ``reduce`` configure the shorthands only: with an :class:`~scoresde.Objective`
    they must keep their defaults (set them on the objective). A recorded objective (the dict of
    :func:`scoresde.losses.objective_config`, as read from a checkpoint) is rebuilt into its object.
    :meth:`make_objective` returns the objective object in every case, :meth:`record` the JSON-able
    settings that checkpoints hold (a shorthand stays a string there).

    ``label_dropout`` (class-conditional models only) is the probability :math:`p_{\rm uncond}` with which
    each training label is replaced by the null class, so that one network learns the conditional score
    :math:`s_\theta(x, t, c)` and the unconditional one :math:`s_\theta(x, t, \varnothing)` that
    classifier-free guidance combines (Ho & Salimans 2022); 0 trains the conditional score only, 1 the
    unconditional one only.
    """

    steps: int = 5000
    batch_size: int = 512
    lr: float = 2e-3
    weight_decay: float = 0.0
    warmup: int = 100
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    eps: float = 1e-5
    weighting: str = "sigma2"
    reduce: str = "mean"
    objective: str | Objective = "dsm"
    seed: int = 0
    checkpoint_every: int = 1000
    log_every: int = 10
    label_dropout: float = 0.0

    def __post_init__(self) -> None:
        check_positive_int("steps", self.steps, minimum=0)
        check_positive_int("batch_size", self.batch_size)
        check_positive("lr", self.lr)
        check_positive("weight_decay", self.weight_decay, allow_zero=True)
        check_positive_int("warmup", self.warmup, minimum=0)
        check_positive("grad_clip", self.grad_clip, allow_zero=True)
        if not 0.0 <= check_positive("ema_decay", self.ema_decay, allow_zero=True) < 1.0:
            raise ValueError(f"ema_decay must lie in [0, 1), got {self.ema_decay!r}")
        check_positive("eps", self.eps)
        for name in ("weighting", "reduce"):
            if not isinstance(getattr(self, name), str):
                raise TypeError(f"{name} must be a string, got {type(getattr(self, name)).__name__}")
        given: object = self.objective  # a recorded objective (a dict) is rebuilt into its object
        if isinstance(given, dict):
            self.objective = objective_from_config(given)
        elif not isinstance(given, (str, Objective)):
            raise TypeError(
                f"objective must be one of {OBJECTIVES} or a scoresde.Objective, got {type(given).__name__}"
            )
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"unknown weighting {self.weighting!r}; choose one of {WEIGHTINGS}")
        if isinstance(self.objective, str) and self.objective not in OBJECTIVES:
            raise ValueError(
                f"unknown objective {self.objective!r}; choose one of {OBJECTIVES} or pass a scoresde.Objective"
            )
        if isinstance(self.objective, Objective):
            defaults = {f.name: f.default for f in dataclasses.fields(self) if f.name in ("weighting", "eps", "reduce")}
            changed = sorted(k for k, v in defaults.items() if getattr(self, k) != v)
            if changed:
                raise ValueError(
                    f"{changed} configure the objective shorthands only; with objective={self.objective!r} set "
                    f"them on the objective (e.g. DenoisingScoreMatching(weighting=..., eps=..., reduce=...))"
                )
        if self.reduce not in ("mean", "sum"):
            raise ValueError(f"reduce must be 'mean' or 'sum', got {self.reduce!r}")
        check_seed("seed", self.seed)
        check_positive_int("checkpoint_every", self.checkpoint_every, minimum=0)
        check_positive_int("log_every", self.log_every)
        if not 0.0 <= check_positive("label_dropout", self.label_dropout, allow_zero=True) <= 1.0:
            raise ValueError(f"label_dropout must be a probability in [0, 1], got {self.label_dropout!r}")

    def make_objective(self) -> Objective:
        """The objective object: ``objective`` itself, or the built-in one a shorthand names, configured by
        ``weighting``, ``eps`` and ``reduce``."""
        if isinstance(self.objective, Objective):
            return self.objective
        if self.objective == "ddpm":
            return DDPMObjective(weighting=self.weighting, reduce=self.reduce)
        if self.objective == "flow_matching":
            return FlowMatching(eps=self.eps, reduce=self.reduce)
        return DenoisingScoreMatching(weighting=self.weighting, eps=self.eps, reduce=self.reduce)

    def record(self) -> dict[str, Any]:
        """The settings as checkpoints record them: every field, an :class:`~scoresde.Objective` as its
        :func:`~scoresde.losses.objective_config` (``TrainConfig(**config.record())`` rebuilds the config).
        ``label_dropout`` is recorded only when it is not 0, so that the records of unconditional runs are those
        written before it existed."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        if not self.label_dropout:
            del out["label_dropout"]
        if isinstance(self.objective, Objective):
            out["objective"] = objective_config(self.objective)
        return out


def save_atomic(obj: Any, path: str | os.PathLike[str]) -> Path:
    """``torch.save`` to a temporary file in the same directory, fsync, then ``os.replace``."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)


def _digest(obj: Any, h: Any) -> None:
    """Feed a checkpoint payload (dicts, lists, tuples, tensors, numbers, strings, None) into hash ``h``."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach().to("cpu").contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)};".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().data)
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)};".encode())
        for k, v in obj.items():
            _digest(k, h)
            _digest(v, h)
    elif isinstance(obj, (list, tuple)):
        h.update(f"{'L' if isinstance(obj, list) else 'U'}{len(obj)};".encode())
        for v in obj:
            _digest(v, h)
    elif isinstance(obj, str):
        data = obj.encode("utf-8", "surrogatepass")
        h.update(f"S{len(data)};".encode() + data)
    elif isinstance(obj, bool):
        h.update(b"B1" if obj else b"B0")
    elif isinstance(obj, int):
        h.update(f"I{obj};".encode())
    elif isinstance(obj, float):
        h.update(b"F" + struct.pack("<d", obj))
    elif obj is None:
        h.update(b"N")
    elif isinstance(obj, bytes):
        h.update(f"Y{len(obj)};".encode() + obj)
    else:
        raise TypeError(f"cannot checksum a {type(obj).__name__} in a checkpoint")


def checksum(payload: dict[str, Any]) -> str:
    """SHA-256 (hex) of a checkpoint payload: every key and value except ``"sha256"``, tensors by their bytes."""
    h = hashlib.sha256()
    _digest({k: v for k, v in payload.items() if k != "sha256"}, h)
    return h.hexdigest()


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_fields(ckpt: dict[str, Any], where: str) -> None:
    """Types and ranges of every field of a checkpoint; raises :class:`CheckpointError`."""
    from .nets import PARAMETERIZATION_ALIASES, PARAMETERIZATIONS, TIME_INPUTS, check_network_config

    def fail(msg: str) -> None:
        raise CheckpointError(f"{where}: {msg}; the file is corrupt or was not written by scoresde")

    def tensor_dict(key: str) -> None:
        value = ckpt[key]
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items()
        ):
            fail(f"field {key!r} must map parameter names to tensors")

    step = ckpt["step"]
    if not _is_int(step) or step < 0:
        fail(f"field 'step' must be an integer >= 0, got {step!r}")
    tensor_dict("model")
    tensor_dict("ema")
    opt = ckpt["optimizer"]
    if not (isinstance(opt, dict) and isinstance(opt.get("state"), dict) and isinstance(opt.get("param_groups"), list)):
        fail("field 'optimizer' must be an optimizer state_dict (with 'state' and 'param_groups')")
    sched = ckpt.get("scheduler")
    if sched is not None and (not isinstance(sched, dict) or not _is_int(sched.get("last_epoch"))):
        fail("field 'scheduler' must be a learning-rate scheduler state_dict")
    if sched is not None and sched["last_epoch"] != step:
        fail(f"the learning-rate schedule is at step {sched['last_epoch']}, the checkpoint at step {step}")
    rng = ckpt["rng"]
    if not isinstance(rng, dict) or not all(
        isinstance(rng.get(k), torch.Tensor) and rng[k].dtype == torch.uint8 for k in ("generator", "torch")
    ):
        fail("field 'rng' must hold the byte-tensor states 'generator' and 'torch'")
    cfg = ckpt["config"]
    if not isinstance(cfg, dict) or not all(isinstance(cfg.get(k), dict) for k in ("sde", "model", "data", "train")):
        fail("field 'config' must hold the dicts 'sde', 'model', 'data' and 'train'")
    try:
        sde_from_config(cfg["sde"])
    except UnregisteredError as err:
        raise CheckpointError(f"{where}: unusable SDE configuration: {err}") from None
    except (TypeError, ValueError) as err:
        fail(f"unusable SDE configuration ({err})")
    train_cfg = cfg["train"]
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    if not all(isinstance(k, str) for k in train_cfg) or set(train_cfg) - known:
        fail(f"unknown training settings {sorted(map(str, set(train_cfg) - known))}")
    try:
        TrainConfig(**train_cfg)
    except UnregisteredError as err:
        raise CheckpointError(f"{where}: unusable training settings: {err}") from None
    except (TypeError, ValueError) as err:
        fail(f"unusable training settings ({err})")
    model = cfg["model"]
    if (
        model.get("parameterization") not in (*PARAMETERIZATIONS, *PARAMETERIZATION_ALIASES)
        or model.get("time_input") not in TIME_INPUTS
    ):
        fail(
            f"the model configuration needs parameterization in {PARAMETERIZATIONS} and time_input in "
            f"{TIME_INPUTS}, got {model.get('parameterization')!r} and {model.get('time_input')!r}"
        )
    try:
        check_network_config(model.get("network"))
    except UnregisteredError as err:
        raise CheckpointError(f"{where}: unusable network configuration: {err}") from None
    except (TypeError, ValueError) as err:
        fail(f"unusable network configuration ({err})")
    data = cfg["data"]
    shape = data.get("feature_shape")
    if (
        not isinstance(shape, (list, tuple))
        or not 1 <= len(shape) <= 3
        or not all(_is_int(s) and s >= 1 for s in shape)
        or math.prod(shape) > MAX_FEATURES
    ):
        fail(f"data feature_shape must be 1 to 3 positive sizes with at most {MAX_FEATURES:,} features, got {shape!r}")
    expected = model.get("feature_shape")
    if expected is not None and (
        not isinstance(expected, (list, tuple))
        or len(expected) != len(shape)
        or any(e not in (-1, s) for e, s in zip(expected, shape, strict=True))
    ):
        fail(f"the network expects feature shape {expected!r} but the data has {list(shape)}")
    if not isinstance(data.get("name"), str) or not isinstance(data.get("params"), dict):
        fail("the data configuration needs a 'name' string and a 'params' dict")
    for key in ("shift", "scale"):
        v = data.get(key)
        if not _is_number(v) or not math.isfinite(v) or (key == "scale" and v <= 0):
            fail(f"data {key} must be a finite number{' > 0' if key == 'scale' else ''}, got {v!r}")
    for key in ("world_size", "global_batch_size"):  # absent in checkpoints written before they were recorded
        value = ckpt.get(key)
        if value is not None and (not _is_int(value) or value < 1):
            fail(f"field {key!r} must be an integer >= 1, got {value!r}")
    batch = ckpt.get("global_batch_size")
    if batch is not None and batch != train_cfg.get("batch_size"):
        fail(f"the global batch size {batch!r} differs from the setting batch_size {train_cfg.get('batch_size')!r}")
    hist = ckpt["history"]
    keys = ("step", "loss", "lr", "grad_norm")
    if (
        not isinstance(hist, dict)
        or set(hist) != set(keys)
        or not all(isinstance(hist[k], list) and all(_is_number(v) for v in hist[k]) for k in keys)
        or len({len(hist[k]) for k in keys}) != 1
    ):
        fail(f"field 'history' must hold equally long lists of numbers {list(keys)}")
    if any(not _is_int(s) or not 0 < s <= step for s in hist["step"]) or hist["step"] != sorted(hist["step"]):
        fail(f"the history steps must be increasing integers in [1, {step}]")
    for key in ("data", "noise"):
        value = ckpt.get(key)
        if value is None:
            continue
        if not isinstance(value, torch.Tensor) or not value.is_floating_point() or list(value.shape[1:]) != list(shape):
            fail(f"field {key!r} must be None or a floating tensor of shape (n, {', '.join(map(str, shape))})")
    if ckpt.get("noise") is not None and (ckpt.get("data") is None or ckpt["noise"].shape != ckpt["data"].shape):
        fail("field 'noise' must come with 'data' of the same shape")
    labels = ckpt.get("labels")  # absent in checkpoints written before labels were recorded
    if labels is not None and (
        not isinstance(labels, torch.Tensor)
        or labels.dtype != torch.int64
        or ckpt.get("data") is None
        or tuple(labels.shape) != (ckpt["data"].shape[0],)
    ):
        fail("field 'labels' must be None or an int64 tensor with one label per sample of 'data'")
    num_classes = data.get("num_classes")
    if num_classes is not None and (not _is_int(num_classes) or not 1 <= num_classes <= 2**16):
        fail(f"data num_classes must be None or an integer in [1, 65536], got {num_classes!r}")


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and validate a checkpoint file: a dict with ``step``, ``config``, ``model``, ``ema``, ...

    The file is read with ``torch.load(weights_only=True)``; its SHA-256 checksum (:func:`checksum`)
    must match, and every field must have the right type and range: the step, the weights and
    optimizer states, the random states, the SDE, network, data and training configurations (the
    network within the sanity bounds of :func:`scoresde.nets.check_network_config`, checked before
    anything is allocated) and the history. Files of format version 1 (written before checksums)
    have no checksum to verify and are accepted when all the other checks pass. The fields
    ``world_size`` and ``global_batch_size`` (the number of ranks of the run that wrote the file and
    its global batch) are checked when present; files written before they were recorded lack them.

    Raises :class:`CheckpointError` (a ``ValueError``) for a missing, truncated, corrupt, foreign,
    inconsistent or newer-format file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist (or is not a file)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for truncated / corrupt archives
        raise CheckpointError(
            f"checkpoint {str(path)!r} is truncated or corrupt and cannot be read ({type(err).__name__}: {err}); "
            "use an earlier checkpoint (step_XXXXXXX.pt in the same folder)"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{str(path)!r} is not a scoresde checkpoint")
    where = f"checkpoint {str(path)!r}"
    version = ckpt.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise CheckpointError(f"{where}: format version must be an integer >= 1, got {version!r}; the file is corrupt")
    if version > CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{where} has format version {version}, newer than this scoresde ({CHECKPOINT_VERSION}); upgrade scoresde"
        )
    required = {"version", "step", "model", "ema", "optimizer", "rng", "config", "history"}
    if version >= 2:
        required |= {"sha256", "scheduler"}
    missing = required - set(ckpt)
    if missing:
        raise CheckpointError(f"{where} lacks {sorted(missing)}; it is incomplete")
    if version >= 2:
        try:
            actual = checksum(ckpt)
        except TypeError as err:
            raise CheckpointError(f"{where}: {err}; the file is corrupt") from None
        if ckpt["sha256"] != actual:
            raise CheckpointError(
                f"{where} is corrupt: its SHA-256 checksum does not match its content (stored "
                f"{str(ckpt['sha256'])[:16]}..., computed {actual[:16]}...); use an earlier checkpoint "
                "(step_XXXXXXX.pt in the same folder)"
            )
    _check_fields(ckpt, where)
    from .nets import PARAMETERIZATION_ALIASES

    model = ckpt["config"]["model"]
    # files written before the noise prediction was renamed record it as "eps"
    model["parameterization"] = PARAMETERIZATION_ALIASES.get(model["parameterization"], model["parameterization"])
    return ckpt


def _build_model(config: dict[str, Any], sde: SDE, weights: dict[str, Any] | None = None) -> ScoreModel:
    """The model of ``config``, in the floating dtype of the checkpoint's ``weights`` (e.g. float64) if given."""
    from .nets import model_from_config

    model = model_from_config(config, sde)
    dtypes = {v.dtype for v in (weights or {}).values() if isinstance(v, torch.Tensor) and v.is_floating_point()}
    if len(dtypes) == 1:
        model = model.to(dtypes.pop())
    return model


def _load_state(module: torch.nn.Module, state: dict[str, Any], what: str, path: Any) -> None:
    try:
        module.load_state_dict(state, strict=True)
    except (RuntimeError, KeyError) as err:
        first = str(err).splitlines()[0]
        raise CheckpointError(
            f"checkpoint {str(path)!r}: the {what} weights do not fit this network ({first}); "
            "it was written for a different network configuration"
        ) from None


def load_checkpoint(
    path: str | os.PathLike[str], ema: bool = True, device: str | torch.device = "cpu"
) -> tuple[LinearSDE, ScoreModel, dict[str, Any]]:
    """Rebuild ``(sde, score_model, data_config)`` from a checkpoint alone.

    ``score_model`` is the EMA model (``ema=True``, the default) or the raw one, in eval mode on
    ``device``; it is a score function ``score_model(x, t)`` for :func:`scoresde.sample`.
    ``data_config["shift"]`` and ``["scale"]`` map model space back to data space.
    """
    ckpt = read_checkpoint(path)
    cfg = ckpt["config"]
    sde = sde_from_config(cfg["sde"])
    model = _build_model(cfg["model"], sde, ckpt["ema" if ema else "model"])
    _load_state(model, ckpt["ema" if ema else "model"], "EMA" if ema else "model", path)
    model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return sde, model, cfg["data"]


class _RowSlicedNet(torch.nn.Module):
    """The network of a data-parallel run: ``ddp`` (the wrapped network) on this rank's rows of every batch.

    Called with a whole batch of ``n`` rows, rank ``r`` of ``world`` evaluates rows
    ``[r n // world, (r + 1) n // world)`` with gradient; the rows of the other ranks are gathered
    from them (without gradient) to complete the output.
    """

    def __init__(self, ddp: torch.nn.Module, rank: int, world: int) -> None:
        super().__init__()
        self.ddp = ddp
        self.rank, self.world = rank, world
        self.where = ""

    def forward(self, x: torch.Tensor, c: Any, *labels: Any) -> torch.Tensor:
        n = x.shape[0]
        bounds = row_bounds(n, self.world)
        lo, hi = bounds[self.rank], bounds[self.rank + 1]

        def rows(v: Any) -> Any:
            return v[lo:hi] if isinstance(v, torch.Tensor) and v.dim() >= 1 and v.shape[0] == n else v

        own = self.ddp(x[lo:hi], rows(c), *(rows(v) for v in labels))
        if not isinstance(own, torch.Tensor) or own.shape[:1] != (hi - lo,):
            got = f"shape {tuple(own.shape)}" if isinstance(own, torch.Tensor) else type(own).__name__
            raise ValueError(f"the network returned {got} for {hi - lo} input rows{self.where}; it must keep the rows")
        sizes = [b - a for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        blocks = all_gather_rows(own, sizes, f"gathering the network outputs{self.where}")
        blocks[self.rank] = own
        return torch.cat(blocks)


class Trainer:
    """Trainer for score, DDPM and flow-matching models: AdamW, warm-up, gradient clipping, EMA, atomic checkpoints.

    The loss is chosen by ``config.objective`` (see :class:`TrainConfig`). A class-conditional model (its
    network has ``num_classes``) trains on the data's labels (``data.labels``; the objective's loss gets
    ``labels=``), each replaced by the null class with probability ``config.label_dropout``; an unconditional
    model ignores labels.

    Parameters
    ----------
    sde : SDE
        A linear SDE.
    model : torch.nn.Module
        A :class:`scoresde.nets.ScoreModel` (its configuration is stored in checkpoints).
    data : Dataset
        From :func:`scoresde.datasets.load_dataset` (model space).
    config : TrainConfig
    out_dir : path, optional
        Where checkpoints (``last.pt`` and ``step_XXXXXXX.pt``) and ``history.nc`` go. It is created
        if needed and must be writable (checked here, before any training); the trainer locks it
        against other processes (:class:`OutputDirError` if another run holds it) until
        :meth:`close`, the end of a ``with`` block, or until the trainer is garbage-collected, and
        removes the temporary files that a killed run left behind.
    device : str or torch.device

    Notes
    -----
    Under an initialised ``torch.distributed`` process group with more than one rank, every rank
    constructs its trainer with the same arguments and trains with ``DistributedDataParallel`` (see
    the module's documentation): ``batch_size`` is the global batch, split over the ranks; only rank
    0 locks and writes ``out_dir``. :attr:`rank` and :attr:`world_size` are this process's rank and the
    number of ranks (0 and 1 without a process group).
    """

    #: seconds the whole :func:`~scoresde.training.train` call took (set only by that function)
    wall_time_s: float

    def __init__(
        self,
        sde: LinearSDE,
        model: ScoreModel,
        data: Dataset,
        config: TrainConfig | None = None,
        out_dir: str | os.PathLike[str] | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        from .nets import model_config

        self.config = config or TrainConfig()
        self.rank, self.world_size = dist_rank(), dist_world_size()
        if self.config.batch_size < self.world_size:
            raise ValueError(
                f"batch_size={self.config.batch_size} is the global batch, split over the {self.world_size} ranks; "
                f"it must be at least the number of ranks"
            )
        self.sde = sde
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.model_config = model_config(model)
        expected = tuple(self.model_config.get("feature_shape") or data.feature_shape)
        got = tuple(data.feature_shape)
        if len(got) != len(expected) or any(e not in (-1, g) for e, g in zip(expected, got, strict=False)):
            raise ValueError(
                f"data has feature shape {data.feature_shape} but the network expects {expected}; "
                "choose a network for this data (mlp for vectors, unet/dit for images)"
            )
        self._coupled = data.noise is not None
        self.objective = self.config.make_objective()
        self._check_objective(sde, model)
        self._check_labels(model, data)
        self.data = data
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self._lock: DirectoryLock | None = None
        if self.out_dir is not None and self.rank == 0:  # rank 0 alone writes into out_dir
            self._lock = lock_directory(self.out_dir)  # OutputDirError: not writable or in use
            remove_stale_temps(self.out_dir, CHECKPOINT_FILES)
        self.ema = copy.deepcopy(self.model).eval()
        for p in self.ema.parameters():
            p.requires_grad_(False)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=self.config.lr, weight_decay=self.config.weight_decay
        )
        self.scheduler = self._make_scheduler()
        self.generator = torch.Generator(device=self.device).manual_seed(self.config.seed)
        self.step = 0
        self.history: dict[str, list[float]] = {"step": [], "loss": [], "lr": [], "grad_norm": []}
        self._x = data.data.to(self.device)
        self._z = None if data.noise is None else data.noise.to(self.device)
        self._labels = (
            data.labels.to(self.device) if model.num_classes is not None and data.labels is not None else None
        )
        # cached once: rebuilding these lists every step cost ~2% of a small-MLP step
        self._params = list(self.model.parameters())
        self._ema_params = list(self.ema.parameters())
        self._buffer_pairs = list(zip(self.ema.buffers(), self.model.buffers(), strict=True))
        self._sliced: _RowSlicedNet | None = None
        if self.world_size > 1:
            self._sliced = self._data_parallel_net()

    def _data_parallel_net(self) -> _RowSlicedNet:
        """``model.net`` in ``DistributedDataParallel`` (which makes every rank start from rank 0's weights)."""
        from torch.nn.parallel import DistributedDataParallel

        ids = None
        if self.device.type == "cuda":
            index: int | None = self.device.index  # None for a bare "cuda" (torch's stubs say int)
            ids = [index if index is not None else torch.cuda.current_device()]
        try:
            ddp = DistributedDataParallel(self.model.net, device_ids=ids)
        except RuntimeError as err:
            raise collective_failed("setting up DistributedDataParallel", err) from err
        return _RowSlicedNet(ddp, self.rank, self.world_size)

    def _make_scheduler(self, last_epoch: int = -1) -> torch.optim.lr_scheduler.LambdaLR:
        """The linear warm-up ``LambdaLR``; ``last_epoch=k - 1`` continues it at step ``k``."""
        warmup = self.config.warmup

        def factor(step: int) -> float:
            return 1.0 if warmup == 0 else min(1.0, (step + 1) / warmup)

        return torch.optim.lr_scheduler.LambdaLR(self.optimizer, factor, last_epoch=last_epoch)

    # -- the output directory ------------------------------------------------------------
    def close(self) -> None:
        """Release the lock on ``out_dir`` (idempotent); a later checkpoint locks it again while writing."""
        if self._lock is not None:
            self._lock.release()

    def __enter__(self) -> Trainer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_objective(self, sde: SDE, model: ScoreModel) -> None:
        if self._coupled and not self.objective.paired_noise:
            raise ValueError(
                "data with paired noise (a reflow coupling) trains with objective='flow_matching' only "
                f"(an objective with paired_noise = True), not {self.objective!r}"
            )
        self.objective.check(sde, model)

    def _check_labels(self, model: ScoreModel, data: Dataset) -> None:
        """A class-conditional model needs labelled data with no more classes than it has, and an objective
        that takes labels."""
        classes = model.num_classes
        if classes is None:
            if self.config.label_dropout:
                raise ValueError(
                    f"label_dropout={self.config.label_dropout} applies to class-conditional models only; this "
                    "network has no num_classes"
                )
            return
        if data.labels is None:
            raise ValueError(
                f"the model is class-conditional (num_classes={classes}) but the data set {data.name!r} has no "
                "labels; load a labelled data set (digits, moons, a mixture) or pass labels= to load_dataset"
            )
        if data.num_classes is not None and data.num_classes > classes:
            raise ValueError(
                f"the data has {data.num_classes} classes but the network num_classes={classes}; build the "
                f"network with num_classes={data.num_classes}"
            )
        if not self.objective.conditional:
            raise TypeError(
                f"{self.objective!r} takes no class labels (its class attribute conditional is False), so it "
                "cannot train a class-conditional model; use a built-in objective or accept labels= in its loss"
            )

    def _batch_labels(self, idx: torch.Tensor) -> torch.Tensor | None:
        """The labels of the batch, each replaced by the null class with probability ``label_dropout``."""
        if self._labels is None:
            return None
        labels = self._labels[idx]
        p = self.config.label_dropout
        if p == 0:
            return labels
        null = cast(int, self.model.num_classes)
        if p == 1:
            return torch.full_like(labels, null)
        drop = torch.rand(labels.shape, generator=self.generator, device=self.device) < p
        return torch.where(drop, torch.full_like(labels, null), labels)

    def _objective_loss(self, x0: torch.Tensor, z: torch.Tensor | None, labels: torch.Tensor | None) -> object:
        if labels is None:
            return self.objective.loss(self.sde, self.model, x0, self.generator, z)  # user code: checked
        return self.objective.loss(self.sde, self.model, x0, self.generator, z, labels=labels)

    def _loss(
        self, x0: torch.Tensor, z: torch.Tensor | None = None, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        if self._sliced is None:
            loss = self._objective_loss(x0, z, labels)
        else:  # data-parallel: the objective sees the whole batch, the network computes this rank's rows
            net = self.model.net
            self._sliced.where = f" at step {self.step + 1}"
            self.model.net = self._sliced
            try:
                loss = self._objective_loss(x0, z, labels)
            finally:
                self.model.net = net
        if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
            got = f"a tensor of shape {tuple(loss.shape)}" if isinstance(loss, torch.Tensor) else type(loss).__name__
            raise ValueError(
                f"{self.objective!r}.loss returned {got} at step {self.step + 1}; it must return a scalar (0-d) tensor"
            )
        return loss

    # -- configuration -----------------------------------------------------------------
    def full_config(self) -> dict[str, Any]:
        return {
            "sde": sde_config(self.sde),
            "model": self.model_config,
            "data": self.data.config(),
            "train": self.config.record(),
        }

    # -- one step ---------------------------------------------------------------------
    def lr_at(self, step: int) -> float:
        """Learning rate of step ``step`` (0-based) as the scheduler sets it: ``lr * min(1, (step + 1) / warmup)``."""
        if self.config.warmup == 0:
            return self.config.lr
        return self.config.lr * min(1.0, (step + 1) / self.config.warmup)

    def ema_decay_at(self, step: int) -> float:
        """EMA decay with warm-up, ``min(ema_decay, (1 + step) / (10 + step))``, so early weights fade fast."""
        return min(self.config.ema_decay, (1 + step) / (10 + step))

    def train_step(self) -> tuple[float, float]:
        cfg = self.config
        idx = torch.randint(0, self._x.shape[0], (cfg.batch_size,), generator=self.generator, device=self.device)
        if not self.model.training:
            self.model.train()
        labels = self._batch_labels(idx)
        if self._sliced is None:
            loss = self._loss(self._x[idx], None if self._z is None else self._z[idx], labels)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]  # torch leaves Tensor.backward unannotated
        else:
            try:
                loss = self._loss(self._x[idx], None if self._z is None else self._z[idx], labels)
                self.optimizer.zero_grad(set_to_none=True)
                # DistributedDataParallel averages the ranks' gradients: scaled by N, the average is their sum
                (loss * self.world_size).backward()  # type: ignore[no-untyped-call]
            except DistributedError:
                raise
            except RuntimeError as err:  # DistributedDataParallel's own collectives (buffers, gradients) fail so
                raise rank_failed(f"step {self.step + 1}", err) from err
        if cfg.grad_clip > 0:  # clip_grad_norm_ skips parameters without a gradient
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self._params, cfg.grad_clip))
        else:
            grads = [p.grad for p in self._params if p.grad is not None]
            grad_norm = float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])))
        self.optimizer.step()
        self.scheduler.step()
        # torch leaves get_ema_multi_avg_fn unannotated
        ema_update = get_ema_multi_avg_fn(self.ema_decay_at(self.step))  # type: ignore[no-untyped-call]
        ema_update(self._ema_params, self._params, None)
        with torch.no_grad():
            for b_ema, b in self._buffer_pairs:
                b_ema.copy_(b)
        self.step += 1
        value = float(loss.detach())
        if not math.isfinite(value):
            raise FloatingPointError(f"loss became {value} at step {self.step}; lower lr or check the data")
        return value, grad_norm

    # -- loop ---------------------------------------------------------------------------
    def train(self, steps: int | None = None, progress: bool = True) -> Trainer:
        """Train until ``steps`` (default ``config.steps``) total steps, checkpointing as configured."""
        total = self.config.steps if steps is None else check_positive_int("steps", steps, minimum=0)
        self._check_ranks_agree(total)
        bar = progress_bar(total=total, initial=self.step, desc="train", disable=not progress or self.rank != 0)
        every = self.config.checkpoint_every
        try:
            while self.step < total:
                loss, gnorm = self.train_step()
                if self.step % self.config.log_every == 0 or self.step == total:
                    self.history["step"].append(self.step)
                    self.history["loss"].append(loss)
                    self.history["lr"].append(self.lr_at(self.step - 1))
                    self.history["grad_norm"].append(gnorm)
                    bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
                bar.update(1)
                if self.out_dir is not None and every and self.step % every == 0:
                    self.save_checkpoint()
        finally:
            bar.close()
        if self.out_dir is not None and (not every or self.step % every != 0):
            self.save_checkpoint()
        return self

    def _check_ranks_agree(self, total: int) -> None:
        """Under a process group: raise :class:`DistributedError` unless every rank starts from the same state."""
        if self.world_size == 1:
            return
        import json

        h = hashlib.sha256()
        _digest({"generator": self.generator.get_state(), "data": self._x, "model": self.model.state_dict()}, h)
        settings = json.dumps([repr(self.config), repr(self.sde), self.model_config, self.data.config()], default=str)
        state = (self.step, total, settings, h.hexdigest())
        check_agree(state, "the step, settings, data, weights and random state at the start of training")

    def _on_main(self, what: str, write: Any) -> Any:
        """``write()`` on rank 0 only (its result, ``None`` elsewhere); every rank then waits for it and raises if it
        failed."""
        if self.world_size == 1:
            return write()
        result, error = None, None
        if self.rank == 0:
            try:
                result = write()
            except Exception as err:  # every rank must hear of it: re-raised below (on rank 0 as itself)
                error = err
        raise_if_any(error, what)
        return result

    # -- checkpoints ---------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """The checkpoint payload, with its SHA-256 checksum under ``"sha256"`` (:func:`checksum`)."""
        # not regenerable from a name: user arrays, mixture objects, couplings
        stored = self.data.name in ("array", "gaussian_mixture") or self.data.noise is not None
        data = self.data.data if stored else None
        payload = {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "step": self.step,
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": {"generator": self.generator.get_state(), "torch": torch.get_rng_state()},
            "config": self.full_config(),
            "history": {k: list(v) for k, v in self.history.items()},
            "data": data,
            "noise": self.data.noise,
            "world_size": self.world_size,
            "global_batch_size": self.config.batch_size,
        }
        if stored and self.data.labels is not None:  # the labels of stored data (named sets regenerate theirs)
            payload["labels"] = self.data.labels
        payload["sha256"] = checksum(payload)
        return payload

    def save_checkpoint(self, path: str | os.PathLike[str] | None = None) -> Path:
        """Write ``last.pt``, then ``step_XXXXXXX.pt``, then ``history.nc``, each atomically (or only ``path``).

        ``last.pt`` comes first so that it is always the newest complete checkpoint in ``out_dir``.
        Returns the path of ``step_XXXXXXX.pt`` (or ``path``). Under a process group every rank calls it;
        rank 0 writes, the others wait for it.
        """
        if path is None:
            out_dir = self.out_dir
            if out_dir is None:
                raise ValueError("no out_dir set: pass a path")

            def write() -> None:
                with lock_directory(out_dir):  # re-entrant: held already unless close() was called
                    state = self.state()
                    save_atomic(state, out_dir / "last.pt")
                    save_atomic(state, out_dir / f"step_{self.step:07d}.pt")
                    self._write_history(out_dir)

            self._on_main(f"writing the checkpoint of step {self.step} to {str(out_dir)!r} on rank 0", write)
            return out_dir / f"step_{self.step:07d}.pt"
        given = Path(path)
        self._on_main(f"writing the checkpoint {str(given)!r} on rank 0", lambda: save_atomic(self.state(), given))
        return given

    def load_state(self, ckpt: dict[str, Any], path: Any = "<memory>") -> None:
        _load_state(self.model, ckpt["model"], "model", path)
        _load_state(self.ema, ckpt["ema"], "EMA", path)
        step = int(ckpt["step"])
        try:
            self.optimizer.load_state_dict(ckpt["optimizer"])
            if ckpt.get("scheduler") is not None:
                self.scheduler.load_state_dict(ckpt["scheduler"])
            else:  # format version 1: no scheduler state; the warm-up is a function of the step alone
                for group in self.optimizer.param_groups:
                    group["initial_lr"] = self.config.lr
                self.scheduler = self._make_scheduler(last_epoch=step - 1)
        except (ValueError, KeyError, TypeError) as err:
            raise CheckpointError(f"checkpoint {str(path)!r}: optimizer state does not fit ({err})") from None
        try:
            self.generator.set_state(ckpt["rng"]["generator"])
            torch.set_rng_state(ckpt["rng"]["torch"])
        except (RuntimeError, TypeError) as err:
            raise CheckpointError(f"checkpoint {str(path)!r}: unusable random state ({err})") from None
        self.step = step
        self.history = {k: list(v) for k, v in ckpt["history"].items()}

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike[str],
        data: Dataset | None = None,
        out_dir: str | os.PathLike[str] | None = None,
        device: str | torch.device = "cpu",
        steps: int | None = None,
    ) -> Trainer:
        """Rebuild a trainer from a checkpoint alone and continue where it stopped.

        Named data sets are regenerated from their recorded configuration; user arrays are stored
        in the checkpoint. ``steps`` overrides the configured total number of steps. ``out_dir``
        (default: the checkpoint's folder) must be writable and is locked (see :class:`Trainer`).
        """
        from .datasets import load_dataset

        ckpt = read_checkpoint(path)
        cfg = ckpt["config"]
        sde = sde_from_config(cfg["sde"])
        model = _build_model(cfg["model"], sde, ckpt["model"])
        train_cfg = dict(cfg["train"])
        if steps is not None:
            train_cfg["steps"] = steps
        if data is None:
            d = cfg["data"]
            if ckpt.get("data") is not None:
                data = Dataset(
                    ckpt["data"],
                    d["name"],
                    d["shift"],
                    d["scale"],
                    d["params"],
                    noise=ckpt.get("noise"),
                    labels=ckpt.get("labels"),
                    num_classes=d.get("num_classes") if ckpt.get("labels") is not None else None,
                )
            else:
                p = d["params"]
                dtype = next((v.dtype for v in model.parameters() if v.is_floating_point()), torch.float32)
                data = load_dataset(
                    d["name"], n=p.get("n", 20_000), seed=p.get("seed", 0), scaling=p["scaling"], dtype=dtype
                )
        trainer = cls(
            sde,
            model,
            data,
            TrainConfig(**train_cfg),
            out_dir=out_dir if out_dir is not None else Path(path).parent,
            device=device,
        )
        trainer.load_state(ckpt, path)
        return trainer

    # -- history -----------------------------------------------------------------------
    def history_dataset(self) -> xr.Dataset:
        """Loss history as an ``xarray.Dataset`` over the ``step`` dimension, with the configuration."""
        import json

        from ._version import __version__

        h = self.history
        return xr.Dataset(
            {k: ("step", np.asarray(h[k], dtype=np.float64)) for k in ("loss", "lr", "grad_norm")},
            coords={"step": np.asarray(h["step"], dtype=np.int64)},
            attrs={
                "config": json.dumps(self.full_config()),
                "scoresde_version": __version__,
                "torch_version": torch.__version__,
            },
        )

    def write_history(self) -> Path:
        """Write ``out_dir/history.nc`` atomically (under a process group: rank 0 writes, the others wait)."""
        out_dir = self.out_dir
        if out_dir is None:
            raise ValueError("no out_dir set")
        self._on_main(f"writing {str(out_dir / 'history.nc')!r} on rank 0", lambda: self._write_history(out_dir))
        return out_dir / "history.nc"

    def _write_history(self, out_dir: Path) -> None:
        with lock_directory(out_dir), atomic_path(out_dir / "history.nc") as tmp:
            self.history_dataset().to_netcdf(tmp)


def train(
    sde: LinearSDE,
    model: ScoreModel,
    data: Dataset,
    config: TrainConfig | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
    resume: bool = True,
) -> Trainer:
    """Train ``model`` on ``data``; resume from ``out_dir/last.pt`` if it exists and ``resume``.

    ``out_dir`` is locked against other processes during the run (see :class:`Trainer`) and
    released when this returns. Returns the :class:`Trainer` (``trainer.ema`` is the EMA score
    model, ``trainer.history_dataset()`` the loss history).
    """
    start = time.perf_counter()
    last = Path(out_dir) / "last.pt" if out_dir is not None else None
    if resume and last is not None and last.exists():
        trainer = Trainer.from_checkpoint(
            last, data=data, out_dir=out_dir, device=device, steps=(config or TrainConfig()).steps
        )
    else:
        trainer = Trainer(sde, model, data, config, out_dir=out_dir, device=device)
    try:
        trainer.train(progress=progress)
    finally:
        trainer.close()
    trainer.wall_time_s = time.perf_counter() - start
    return trainer


# --------------------------------------------------------------------------------------------
# time-dependent classifiers
# --------------------------------------------------------------------------------------------
CLASSIFIER_FORMAT = "scoresde-classifier"
CLASSIFIER_VERSION = 1


def train_classifier(
    sde: LinearSDE,
    classifier: torch.nn.Module,
    data: Dataset,
    config: TrainConfig | None = None,
    out_path: str | os.PathLike[str] | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> NoisyClassifier:
    r"""Train a time-dependent classifier :math:`p_\theta(c \mid x_t, t)` of the noisy samples of ``sde``.

    The loss is the cross-entropy on perturbed data,

    .. math::
        \mathcal L(\theta) = \mathbb E_{t \sim U[\varepsilon, T]}\,\mathbb E_{(x_0, c)}\,
            \mathbb E_{x_t \sim \mathcal N(s(t) x_0, \sigma(t)^2 I)}\big[-\log p_\theta(c \mid x_t, t)\big],

    minimised by the exact noisy classifier :math:`p_t(c \mid x_t)` (the posterior of the class given the
    diffused sample), whose gradient classifier guidance adds to the score
    (:class:`scoresde.conditioning.ClassifierGuidance`, which takes the returned classifier as it is).

    Parameters
    ----------
    sde : LinearSDE
        Any linear SDE (its perturbation kernel draws :math:`x_t`).
    classifier : NoisyClassifier or nn.Module
        A :class:`scoresde.nets.NoisyClassifier`, or a network ``net(x, t) -> (batch, C)`` logits with
        ``num_classes`` (e.g. :class:`scoresde.nets.MLPClassifier`), which is wrapped into one.
    data : Dataset
        Labelled data in model space (:func:`scoresde.datasets.load_dataset`: digits, moons, mixtures).
    config : TrainConfig, optional
        ``steps``, ``batch_size``, ``lr``, ``weight_decay``, ``warmup``, ``grad_clip``, ``ema_decay``,
        ``eps`` (:math:`\varepsilon`) and ``seed`` are used as by :class:`Trainer` (AdamW, linear warm-up,
        gradient clipping, EMA); the score-matching settings (``objective``, ``weighting``, ``reduce``,
        ``label_dropout``) must keep their defaults.
    out_path : path, optional
        Where to write the trained classifier (:func:`save_classifier`, atomically).
    device : str or torch.device
    progress : bool
        Show a progress bar.

    Returns
    -------
    NoisyClassifier
        The EMA classifier in eval mode, with its loss history in ``history`` (``{"step": [...], "loss": [...]}``).
    """
    from .nets import NoisyClassifier

    cfg = config or TrainConfig()
    defaults = TrainConfig()
    changed = [
        k for k in ("objective", "weighting", "reduce", "label_dropout") if getattr(cfg, k) != getattr(defaults, k)
    ]
    if changed:
        raise ValueError(f"{changed} are score-matching settings; train_classifier trains by cross-entropy")
    if not isinstance(sde, LinearSDE):
        raise TypeError(f"train_classifier needs a linear SDE (VPSDE, SubVPSDE, VESDE, ...), got {type(sde).__name__}")
    if cfg.eps >= sde.T:
        raise ValueError(f"eps={cfg.eps!r} must be smaller than T={sde.T!r}")
    clf = classifier if isinstance(classifier, NoisyClassifier) else NoisyClassifier(classifier, sde)
    if data.labels is None or data.num_classes is None:
        raise ValueError(
            f"train_classifier needs labelled data; the data set {data.name!r} has no labels (load digits, moons "
            "or a mixture, or pass labels= to load_dataset)"
        )
    if data.num_classes > clf.num_classes:
        raise ValueError(
            f"the data has {data.num_classes} classes but the classifier num_classes={clf.num_classes}; build "
            f"it with num_classes={data.num_classes}"
        )
    device = torch.device(device)
    clf = clf.to(device).train()
    ema = copy.deepcopy(clf).eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    params = list(clf.parameters())
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 1.0 if cfg.warmup == 0 else min(1.0, (step + 1) / cfg.warmup)
    )
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    x_all, y_all = data.data.to(device), data.labels.to(device)
    history: dict[str, list[float]] = {"step": [], "loss": []}
    for step in progress_bar(range(cfg.steps), desc="train classifier", disable=not progress):
        idx = torch.randint(0, x_all.shape[0], (cfg.batch_size,), generator=generator, device=device)
        x0, y = x_all[idx], y_all[idx]
        u = torch.rand(x0.shape[0], generator=generator, dtype=x0.dtype, device=device)
        t = u * (sde.T - cfg.eps) + cfg.eps
        z = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=device)
        mean, std = sde.marginal_prob(x0, t)
        x_t = mean + std.reshape(-1, *([1] * (x0.dim() - 1))) * z
        loss = torch.nn.functional.cross_entropy(clf.logits(x_t, t), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]  # torch leaves Tensor.backward unannotated
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        optimizer.step()
        scheduler.step()
        decay = min(cfg.ema_decay, (1 + step) / (10 + step))
        get_ema_multi_avg_fn(decay)(list(ema.parameters()), params, None)  # type: ignore[no-untyped-call]
        value = float(loss.detach())
        if not math.isfinite(value):
            raise FloatingPointError(f"the classifier's loss became {value} at step {step + 1}; lower lr")
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            history["step"].append(step + 1)
            history["loss"].append(value)
    ema.history = history
    if out_path is not None:
        save_classifier(ema, out_path, train_config=cfg, data=data)
    return ema


def save_classifier(
    classifier: NoisyClassifier,
    path: str | os.PathLike[str],
    train_config: TrainConfig | None = None,
    data: Dataset | None = None,
) -> Path:
    """Write a :class:`scoresde.nets.NoisyClassifier` atomically: its SDE, network record and weights (and, if
    given, the training settings and the data's configuration), with a SHA-256 checksum."""
    from .nets import NoisyClassifier, check_network_config, network_config

    if not isinstance(classifier, NoisyClassifier):
        raise TypeError(f"classifier must be a scoresde.nets.NoisyClassifier, got {type(classifier).__name__}")
    net_cfg = network_config(classifier.net)
    check_network_config(net_cfg)
    payload: dict[str, Any] = {
        "format": CLASSIFIER_FORMAT,
        "version": CLASSIFIER_VERSION,
        "sde": sde_config(classifier.sde),
        "network": net_cfg,
        "weights": classifier.net.state_dict(),
        "train": None if train_config is None else train_config.record(),
        "data": None if data is None else data.config(),
        "history": dict(getattr(classifier, "history", {"step": [], "loss": []})),
    }
    payload["sha256"] = checksum(payload)
    return save_atomic(payload, path)


def load_classifier(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> NoisyClassifier:
    """Rebuild the :class:`scoresde.nets.NoisyClassifier` that :func:`save_classifier` wrote, in eval mode.

    The file is read with ``torch.load(weights_only=True)``; its checksum must match and its network record
    pass :func:`scoresde.nets.check_network_config` before anything is allocated. Raises
    :class:`CheckpointError` for a missing, corrupt or foreign file.
    """
    from .nets import NoisyClassifier, build_network, check_network_config

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"classifier file {str(path)!r} does not exist (or is not a file)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for truncated / corrupt archives
        raise CheckpointError(f"classifier file {str(path)!r} is truncated or corrupt ({type(err).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != CLASSIFIER_FORMAT:
        raise CheckpointError(f"{str(path)!r} is not a scoresde classifier file")
    if payload.get("version") != CLASSIFIER_VERSION:
        raise CheckpointError(f"{str(path)!r} has classifier format version {payload.get('version')!r}, not 1")
    try:
        ok = payload.get("sha256") == checksum(payload)
    except TypeError:
        ok = False
    if not ok:
        raise CheckpointError(f"classifier file {str(path)!r} is corrupt: its SHA-256 checksum does not match")
    try:
        sde = sde_from_config(payload["sde"])
        check_network_config(payload["network"])
    except (TypeError, ValueError, KeyError) as err:
        raise CheckpointError(f"classifier file {str(path)!r}: unusable configuration ({err})") from None
    net_cfg = dict(payload["network"])
    net = build_network(net_cfg.pop("name"), **net_cfg)
    weights = payload["weights"]
    dtypes = {v.dtype for v in weights.values() if isinstance(v, torch.Tensor) and v.is_floating_point()}
    if len(dtypes) == 1:
        net = net.to(dtypes.pop())
    _load_state(net, weights, "classifier", path)
    clf = NoisyClassifier(net, sde).to(device).eval()
    for p in clf.parameters():
        p.requires_grad_(False)
    clf.history = payload.get("history") or {"step": [], "loss": []}
    return clf
