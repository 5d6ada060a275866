r"""Training data: 2-D toy sets, scikit-learn's bundled 8x8 digits, and user arrays.

A :class:`Dataset` holds a float tensor ``data`` of shape ``(n, *features)`` already mapped to
the range the SDE expects, and the affine map that did it,

.. math::  x_{\text{model}} = (x_{\text{data}} - \text{shift}) / \text{scale},

recorded in checkpoints and undone at sampling time (:meth:`Dataset.unscale`). Toy sets are
standardised to zero mean and unit overall variance; digits (pixel values 0..16) are mapped to
:math:`[-1, 1]`. Nothing is downloaded: the digits ship inside scikit-learn.

Labelled sets carry class labels (``Dataset.labels``, an int64 tensor of shape ``(n,)``, and
``Dataset.num_classes``) for class-conditional training: the digits their digit 0..9, the moons their
moon (0 the upper, 1 the lower), the Gaussian mixtures the component each point was drawn from (or the
mixture's own class labels, ``GaussianMixture(..., labels=...)``, e.g. the 8-Gaussian ring as two
classes of four modes). The other toy sets and user arrays have none unless ``labels=`` is given.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ._checks import check_positive_int
from ._labels import check_class_labels, check_num_classes
from .mixture import TARGETS, GaussianMixture

__all__ = ["Dataset", "load_dataset", "TOY_DATASETS", "DATASETS", "toy_sample"]


@dataclass
class Dataset:
    """Training data in model space, with the affine map back to data space and its provenance.

    ``noise`` optionally pairs every sample with a latent (a coupling, e.g. from
    :func:`scoresde.flow.reflow_data`); flow-matching training then uses these pairs instead of
    independent noise.

    ``labels`` optionally gives every sample a class ``0..num_classes - 1`` (an integer tensor of shape
    ``(n,)``; ``num_classes`` defaults to ``labels.max() + 1``), which a class-conditional model trains on.
    """

    data: torch.Tensor
    name: str
    shift: float = 0.0
    scale: float = 1.0
    params: dict[str, Any] = field(default_factory=dict)
    noise: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    num_classes: int | None = None

    def __post_init__(self) -> None:
        if self.noise is not None and tuple(self.noise.shape) != tuple(self.data.shape):
            raise ValueError(
                f"noise must have the shape of data {tuple(self.data.shape)}, got {tuple(self.noise.shape)}"
            )
        self.num_classes = check_num_classes("num_classes", self.num_classes)
        if self.labels is None:
            if self.num_classes is not None:
                raise ValueError("num_classes was given without labels; pass labels= (one class per sample)")
            return
        given: object = self.labels  # callers may pass anything; check_class_labels refuses what is not labels
        if isinstance(given, torch.Tensor) and not given.dtype.is_floating_point and given.numel():
            top = int(given.max()) + 1 if self.num_classes is None else self.num_classes
        else:
            top = self.num_classes or 1
        self.labels = check_class_labels(
            "labels", self.labels, len(self), top, self.data.device, allow_null=False
        ).cpu()
        self.num_classes = top

    @property
    def feature_shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape[1:])

    def __len__(self) -> int:
        return int(self.data.shape[0])

    def unscale(self, x: torch.Tensor) -> torch.Tensor:
        """Map model-space samples back to data space: ``x * scale + shift``."""
        return x * self.scale + self.shift

    def config(self) -> dict[str, Any]:
        """What a checkpoint records to rebuild the data map (not the data itself)."""
        return {
            "name": self.name,
            "shift": self.shift,
            "scale": self.scale,
            "feature_shape": list(self.feature_shape),
            "n": len(self),
            "params": self.params,
            "coupled": self.noise is not None,
            "num_classes": self.num_classes,
        }


# -- 2-D toy generators (numpy Generator for reproducibility) -----------------------------
def _sklearn_seed(rng: np.random.Generator) -> int:
    """An integer seed for scikit-learn's ``random_state`` drawn from ``rng``."""
    return int(rng.integers(0, 2**32 - 1))


def _moons(n: int, rng: np.random.Generator, noise: float = 0.05) -> np.ndarray:
    """The points of :func:`_labelled_moons`."""
    return _labelled_moons(n, rng, noise)[0]


def _labelled_moons(n: int, rng: np.random.Generator, noise: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    r"""Two interleaved half circles, as :func:`sklearn.datasets.make_moons` draws them, but i.i.d.

    Each point is on the upper moon :math:`(\cos\theta, \sin\theta)` or the lower one
    :math:`(1 - \cos\theta, \tfrac12 - \sin\theta)` with probability 1/2,
    :math:`\theta \sim U(0, \pi)`, plus Gaussian noise of standard deviation ``noise``.
    (``make_moons`` puts exactly ``n // 2`` points on each moon at evenly spaced angles: a stratified
    set, whose distance to another such set is far below that of two i.i.d. samples, so it cannot
    serve as the reference distribution of a statistical floor.) Returns the points and their moon
    (0 the upper, 1 the lower).
    """
    theta = rng.uniform(0.0, np.pi, size=n)
    lower = rng.integers(0, 2, size=n).astype(bool)
    x = np.stack([np.cos(theta), np.sin(theta)], axis=1)
    x[lower] = np.stack([1.0 - np.cos(theta[lower]), 0.5 - np.sin(theta[lower])], axis=1)
    return x + noise * rng.standard_normal((n, 2)), lower.astype(np.int64)


def _swiss_roll(n: int, rng: np.random.Generator, noise: float = 0.5) -> np.ndarray:
    r"""The 2-D swiss roll :math:`(t \cos t, t \sin t)`, :math:`t = 1.5\pi(1 + 2u)`, :math:`u \sim U(0, 1)`.

    The two outer coordinates of :func:`sklearn.datasets.make_swiss_roll`, each with Gaussian
    noise of standard deviation ``noise``.
    """
    from sklearn.datasets import make_swiss_roll

    x, _ = make_swiss_roll(n_samples=n, noise=noise, random_state=_sklearn_seed(rng))
    return np.ascontiguousarray(x[:, [0, 2]], dtype=np.float64)


def _checkerboard(n: int, rng: np.random.Generator) -> np.ndarray:
    x1 = rng.uniform(size=n) * 4 - 2
    x2 = rng.uniform(size=n) - rng.integers(0, 2, n) * 2.0
    x2 = x2 + np.floor(x1) % 2
    return np.stack([x1, x2], 1) * 2


def _mixture(name: str, labelled: bool = False) -> Any:
    def gen(n: int, rng: np.random.Generator) -> Any:
        g = torch.Generator().manual_seed(int(rng.integers(0, 2**62)))
        x, k = TARGETS[name]().sample(n, g, dtype=torch.float64, return_components=True)
        return (x.numpy(), k.numpy()) if labelled else x.numpy()

    return gen


TOY_DATASETS = {
    "moons": _moons,
    "swiss_roll": _swiss_roll,
    "checkerboard": _checkerboard,
    **{name: _mixture(name) for name in TARGETS},
}
DATASETS = (*TOY_DATASETS, "digits")
#: the toy sets with labels: generators of the same points (the same draws) and their labels
_LABELLED_TOYS = {"moons": _labelled_moons, **{name: _mixture(name, labelled=True) for name in TARGETS}}


def toy_sample(name: str, n: int, seed: int = 0) -> np.ndarray:
    """``n`` raw (unscaled) points of the named 2-D toy set, float64, shape (n, 2), in random order.

    The points are i.i.d. draws in random order (a final permutation drawn from the same seed),
    so any leading slice ``x[:k]`` is a sample of the whole distribution (both moons, every
    mode). The same ``seed`` gives the same points in the same order.
    """
    return _toy(name, n, seed)[0]


def _toy(name: str, n: int, seed: int) -> tuple[np.ndarray, np.ndarray | None]:
    """The points of :func:`toy_sample` and their labels (``None`` for a set without labels)."""
    if name not in TOY_DATASETS:
        raise ValueError(f"unknown toy dataset {name!r}; choose one of {sorted(TOY_DATASETS)}")
    rng = np.random.default_rng(seed)
    n = check_positive_int("n", n)
    if name in _LABELLED_TOYS:
        x, labels = _LABELLED_TOYS[name](n, rng)
    else:
        x, labels = TOY_DATASETS[name](n, rng), None
    x = np.asarray(x, dtype=np.float64)
    order = rng.permutation(x.shape[0])
    points: np.ndarray = x[order]
    return points, None if labels is None else np.asarray(labels, dtype=np.int64)[order]


def _from_array(name: str, x: Any) -> torch.Tensor:
    try:
        import xarray as xr

        if isinstance(x, xr.DataArray):
            x = x.values
    except ImportError:  # pragma: no cover - xarray is a dependency
        pass
    if isinstance(x, torch.Tensor):
        t = x.detach().cpu()
    else:
        try:
            t = torch.as_tensor(np.asarray(x))
        except (TypeError, ValueError) as err:
            raise TypeError(f"data must be a tensor, NumPy array or xarray.DataArray: {err}") from None
    if not (t.is_floating_point() or t.dtype in (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)):
        raise TypeError(f"data must be numeric, got dtype {t.dtype}")
    t = t.to(torch.float64)
    if t.dim() < 2 or t.shape[0] < 2:
        raise ValueError(f"data must have shape (n_samples >= 2, *features), got {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).reshape(t.shape[0], -1).any(1).sum())
        raise ValueError(f"data ({name}) contains NaN or inf in {bad} sample(s); remove or impute them first")
    return t


def load_dataset(
    data: str | Any,
    n: int = 20_000,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    scaling: str = "auto",
    labels: Any = None,
) -> Dataset:
    """Load a named dataset or wrap a user array, mapped to model space.

    Parameters
    ----------
    data : str or array-like
        ``"moons"``, ``"swiss_roll"``, ``"checkerboard"``, any name of ``scoresde.TARGETS``
        (``"eight_gaussians"``...), ``"digits"`` (scikit-learn's 1,797 8x8 images, shape
        (n, 1, 8, 8)), a :class:`~scoresde.GaussianMixture`, or a tensor / NumPy array /
        ``xarray.DataArray`` of shape ``(n, *features)``.
    n : int
        Number of points to draw from a generated toy set (ignored for fixed data).
    seed : int
        Seed of the toy generator.
    scaling : {"auto", "standardize", "minmax", "none"}
        ``auto``: ``minmax`` to [-1, 1] for images (digits), ``standardize`` otherwise
        (zero mean, unit overall standard deviation). ``none`` keeps the data as it is.
    labels : array-like of int, optional
        Class labels of a user array (``0..C-1``). Named sets and mixtures carry their own (see the module
        documentation): the digits, the moons, and the mixtures (the component, or the mixture's labels).

    Returns
    -------
    Dataset
        With ``labels`` and ``num_classes`` set where the data has labels.
    """
    if scaling not in ("auto", "standardize", "minmax", "none"):
        raise ValueError(f"scaling must be 'auto', 'standardize', 'minmax' or 'none', got {scaling!r}")
    params: dict[str, Any] = {}
    if isinstance(data, str):
        name = data
        if name == "digits":
            from sklearn.datasets import load_digits

            digits = load_digits()
            raw = torch.as_tensor(digits.images, dtype=torch.float64)[:, None]  # (1797, 1, 8, 8)
            lab: torch.Tensor | None = torch.as_tensor(digits.target, dtype=torch.int64)
            num_classes: int | None = 10
            auto = "minmax"
            params["range"] = [0.0, 16.0]
        elif name in TOY_DATASETS:
            points, toy_labels = _toy(name, n, seed)
            raw = torch.as_tensor(points)
            lab = None if toy_labels is None else torch.as_tensor(toy_labels)
            num_classes = None
            if name == "moons":
                num_classes = 2
            elif name in TARGETS:
                num_classes = TARGETS[name]().n_components
            auto = "standardize"
            params.update(n=n, seed=seed)
        else:
            raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS)} or pass an array")
    elif isinstance(data, GaussianMixture):
        name = "gaussian_mixture"
        raw, comp = data.sample(
            check_positive_int("n", n), torch.Generator().manual_seed(seed), dtype=torch.float64, return_components=True
        )
        if data.labels is None:
            lab, num_classes = comp, data.n_components
        else:
            lab, num_classes = data.labels[comp], data.n_classes
        auto = "standardize"
        params.update(n=n, seed=seed, mixture=data.params())
    else:
        name = "array"
        raw = _from_array(name, data)
        lab, num_classes = None, None
        auto = "minmax" if raw.dim() == 4 else "standardize"
    mode = auto if scaling == "auto" else scaling
    if mode == "standardize":
        shift = float(raw.mean())
        scale = float(raw.std()) or 1.0
    elif mode == "minmax":
        lo, hi = params.get("range", [float(raw.min()), float(raw.max())])
        shift, scale = (lo + hi) / 2, ((hi - lo) / 2) or 1.0
    else:
        shift, scale = 0.0, 1.0
    params["scaling"] = mode
    if labels is not None:
        if name != "array":
            raise ValueError(f"labels= applies to user arrays only; the data set {name!r} carries its own labels")
        lab = _user_labels(labels, raw.shape[0])
    return Dataset(((raw - shift) / scale).to(dtype), name, shift, scale, params, labels=lab, num_classes=num_classes)


def _user_labels(labels: Any, n: int) -> torch.Tensor:
    """User labels as an int64 tensor of shape (n,): integer values only, one per sample."""
    if not isinstance(labels, torch.Tensor):
        arr = np.asarray(labels)
        if arr.dtype.kind not in "iu":
            raise TypeError(f"labels must be integer class labels, got dtype {arr.dtype}")
        labels = torch.as_tensor(arr)
    if labels.dim() != 1 or labels.shape[0] != n:
        raise ValueError(f"labels must have shape ({n},) (one class per sample of data), got {tuple(labels.shape)}")
    out: torch.Tensor = labels
    return out
