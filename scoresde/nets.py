r"""Score networks: time-conditioned MLP, U-Net and diffusion transformer, and the score wrapper.

A *network* maps a batch ``x`` of shape ``(batch, *feature_shape)`` and a conditioning vector
``c`` of shape ``(batch,)`` to a tensor shaped like ``x``. It knows nothing about the SDE: the
conditioning scalar is usually the time :math:`t` itself, or :math:`\tfrac14\log\sigma(t)`
(EDM's :math:`c_{\text{noise}}`), and :class:`ScoreModel` decides which one and turns the
network's output into a score,

.. math::
    s_\theta(x, t) = -\frac{\hat\varepsilon_\theta(x, t)}{\sigma(t)} \quad\text{("noise")},
    \qquad
    s_\theta(x, t) = \frac{F_\theta(x, t)}{\sigma(t)} \quad\text{("score", scale\_by\_sigma)},

where :math:`\sigma(t)` is the std of the perturbation kernel
:math:`x_t \mid x_0 \sim \mathcal N(s(t) x_0, \sigma(t)^2 I)`. A :class:`ScoreModel` is a
``score_fn(x, t)`` for the samplers.

Every network

* is a :class:`torch.nn.Module` whose parameters are drawn from the global torch RNG at
  construction only (so ``torch.manual_seed(k)`` before construction fixes them) and that keeps
  no other state;
* follows its own parameter dtype and device (``net.double()``, ``net.to(device)``); the time
  vector may come in any floating dtype and is cast to the network's dtype;
* validates ``x``'s feature shape and ``t``'s shape with shape comparisons only (no
  host-device synchronisation);
* records its constructor arguments in ``net.config``, so that
  ``build_network(**network_config(net))`` rebuilds the same architecture.
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Sequence
from typing import Any, TypeVar, cast

import torch
import torch.nn.functional as F
from torch import nn

from ._checks import broadcast_coef, check_positive, check_positive_int
from ._labels import check_class_labels, check_num_classes
from ._registry import Registry, check_arguments, check_record, finite_numbers, init_signature
from .sde import SDE, LinearSDE

__all__ = [
    "GaussianFourierProjection",
    "TimeEmbedding",
    "LabelEmbedding",
    "MLPScore",
    "MLPClassifier",
    "NoisyClassifier",
    "UNet",
    "DiT",
    "ScoreNetwork",
    "ScoreModel",
    "NETWORKS",
    "NETWORK_REGISTRY",
    "PARAMETERIZATIONS",
    "PARAMETERIZATION_ALIASES",
    "TIME_INPUTS",
    "build_network",
    "network_config",
    "model_config",
    "model_from_config",
    "check_network_config",
    "MAX_NETWORK_ELEMENTS",
]

PARAMETERIZATIONS = ("noise", "score", "velocity", "edm")
#: former names of parameterisations, still read (from checkpoints, the command line and ``ScoreModel``)
PARAMETERIZATION_ALIASES = {"eps": "noise"}
TIME_INPUTS = ("t", "log_sigma")


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def _check_t(t: torch.Tensor, batch: int) -> torch.Tensor:
    """Return ``t`` as a ``(batch,)`` tensor; accept a 0-d or one-element tensor (shape checks only)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"t must be a torch.Tensor of shape (batch,), got {type(t).__name__}")
    if t.dim() > 1 or t.numel() not in (1, batch):
        raise ValueError(
            f"t must have shape ({batch},) (one time per sample of x) or be a scalar, got shape {tuple(t.shape)}"
        )
    return t.reshape(-1).expand(batch) if t.numel() == 1 else t


def _check_fraction(name: str, value: float) -> float:
    given: object = value  # callers may pass anything; checked here
    if isinstance(given, bool) or not isinstance(given, (int, float)) or not 0.0 <= float(given) < 1.0:
        raise ValueError(f"{name} must be a number in [0, 1), got {value!r}")
    return float(value)


def _pair(name: str, value: int | Sequence[int]) -> tuple[int, int]:
    given: object = value  # callers may pass anything; checked here
    if isinstance(given, Sequence) and not isinstance(given, str):
        if len(given) != 2:
            raise ValueError(f"{name} must be an int or a pair (H, W), got {value!r}")
        return check_positive_int(name, given[0]), check_positive_int(name, given[1])
    v = check_positive_int(name, cast(int, value))  # not a pair: an int, or check_positive_int rejects it
    return v, v


# --------------------------------------------------------------------------------------------
# time embedding
# --------------------------------------------------------------------------------------------
class GaussianFourierProjection(nn.Module):
    r"""Random Fourier features of a scalar (Tancik et al. 2020; Song et al. 2021).

    .. math::
        \gamma(t) = \big[\sin(2\pi t\,W),\ \cos(2\pi t\,W)\big] \in \mathbb R^{\text{embed\_dim}},
        \qquad W \sim \mathcal N(0, \text{scale}^2 I_{\text{embed\_dim}/2}).

    ``W`` is drawn once at construction and stored as a (non-trainable) buffer, so it is saved in
    the ``state_dict`` and follows ``.to(dtype/device)`` but is never optimised.

    Input ``t`` of shape ``(B,)``; output of shape ``(B, embed_dim)`` in the buffer's dtype.

    Parameters
    ----------
    embed_dim : int
        Output dimension (even).
    scale : float
        Standard deviation of the frequencies; larger values resolve finer changes in ``t``.
    """

    W: torch.Tensor

    def __init__(self, embed_dim: int, scale: float = 16.0) -> None:
        super().__init__()
        embed_dim = check_positive_int("embed_dim", embed_dim, minimum=2)
        if embed_dim % 2:
            raise ValueError(f"embed_dim must be even (sin and cos halves), got {embed_dim}")
        self.embed_dim = embed_dim
        self.scale = check_positive("scale", scale)
        self.register_buffer("W", torch.randn(embed_dim // 2) * self.scale)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        if t.dim() != 1:
            raise ValueError(f"t must have shape (batch,), got {tuple(t.shape)}")
        proj = t.to(dtype=self.W.dtype, device=self.W.device)[:, None] * self.W[None, :] * (2 * math.pi)
        return torch.cat([torch.sin(proj), torch.cos(proj)], dim=-1)

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, scale={self.scale}"


class TimeEmbedding(nn.Module):
    r"""Embedding of the conditioning scalar: Fourier features followed by a 2-layer SiLU MLP.

    .. math::
        e(c) = W_2\,\operatorname{SiLU}\big(W_1\,\gamma(c) + b_1\big) + b_2,

    with :math:`\gamma` the :class:`GaussianFourierProjection`. The scalar :math:`c` is whatever
    the network is conditioned on: :math:`t` or :math:`\tfrac14\log\sigma(t)`; that choice is
    made by :class:`ScoreModel` (``time_input``), which knows the SDE, so that networks stay
    SDE-agnostic. Consumers apply ``SiLU`` and their own linear projection to ``e(c)``.

    Parameters
    ----------
    embed_dim : int
        Fourier feature and output dimension.
    fourier_scale : float
        ``scale`` of the Fourier features.
    """

    def __init__(self, embed_dim: int, fourier_scale: float = 16.0) -> None:
        super().__init__()
        self.fourier = GaussianFourierProjection(embed_dim, fourier_scale)
        self.mlp = nn.Sequential(nn.Linear(embed_dim, embed_dim), nn.SiLU(), nn.Linear(embed_dim, embed_dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """Map ``t`` of shape ``(B,)`` to an embedding of shape ``(B, embed_dim)``."""
        emb: torch.Tensor = self.mlp(self.fourier(t))
        return emb


class LabelEmbedding(nn.Module):
    r"""Learned embedding of a class label with a null class: :math:`E[y] \in \mathbb R^{\text{embed\_dim}}`.

    Classes are ``0..num_classes - 1``; the extra index ``num_classes`` is the null class
    :math:`\varnothing` (no label), so one network learns both :math:`s(x, t, c)` and
    :math:`s(x, t, \varnothing)` for classifier-free guidance (Ho & Salimans 2022). A conditional
    network adds :math:`E[y]` to its time embedding :math:`e(t)` before the ``SiLU``.

    Parameters
    ----------
    num_classes : int
        Number of classes :math:`C`; the table has :math:`C + 1` rows.
    embed_dim : int
        Embedding dimension (that of the time embedding it is added to).
    """

    def __init__(self, num_classes: int, embed_dim: int) -> None:
        super().__init__()
        self.num_classes = check_positive_int("num_classes", num_classes)
        self.embed = nn.Embedding(self.num_classes + 1, check_positive_int("embed_dim", embed_dim))

    def forward(self, labels: Any, batch: int) -> torch.Tensor:
        """``labels``: ``None`` (the null class), an int, or a ``(batch,)`` integer tensor -> ``(batch, embed_dim)``."""
        device = self.embed.weight.device
        emb: torch.Tensor = self.embed(check_class_labels("labels", labels, batch, self.num_classes, device))
        return emb

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes} (+ null class {self.num_classes})"


def _embedding(
    time_embed: nn.Module, label_embed: LabelEmbedding | None, t: torch.Tensor, labels: Any, batch: int
) -> torch.Tensor:
    """``SiLU(e(t) + E[labels])`` of a conditional network, ``SiLU(e(t))`` of an unconditional one (which
    refuses labels)."""
    emb: torch.Tensor = time_embed(_check_t(t, batch))
    if label_embed is not None:
        emb = emb + label_embed(labels, batch).to(emb.dtype)
    elif labels is not None:
        raise ValueError(
            "labels were given to an unconditional network; build it with num_classes=C to condition on a class"
        )
    return F.silu(emb)


# --------------------------------------------------------------------------------------------
# the base class of recordable networks
# --------------------------------------------------------------------------------------------
_Net = TypeVar("_Net", bound="ScoreNetwork")


class ScoreNetwork(nn.Module):
    r"""Base class of the networks that checkpoints record: ``net(x, c) -> tensor shaped like x``.

    **Your own network.** Subclass ``ScoreNetwork`` instead of :class:`torch.nn.Module`, give the
    constructor arguments that are numbers, strings, booleans or lists of these, and call
    ``super().__init__()`` first::

        class MyNet(scoresde.nets.ScoreNetwork):        # registered as "mymodule.MyNet"
            def __init__(self, dim: int = 2, width: int = 64) -> None:
                super().__init__()
                self.body = nn.Sequential(nn.Linear(dim + 1, width), nn.SiLU(), nn.Linear(width, dim))

            def forward(self, x, c):                     # c: the conditioning vector, shape (batch,)
                return self.body(torch.cat([x, c[:, None].to(x.dtype)], dim=1))

        model = scoresde.ScoreModel(MyNet(dim=2), sde)   # trains, checkpoints and reloads like MLPScore

    **Registration.** Defining a subclass registers it in :data:`NETWORK_REGISTRY` under the class
    keyword ``name`` (``class MyNet(ScoreNetwork, name="my-net")``) or by default
    ``f"{cls.__module__}.{cls.__qualname__}"``; ``register=False`` or a class name starting with an
    underscore leaves it out. The built-in :class:`MLPScore`, :class:`UNet` and :class:`DiT` are
    registered as ``"mlp"``, ``"unet"`` and ``"dit"``.

    **Configuration.** :attr:`config` is ``{"name": registered name, **arguments}``, the arguments the
    constructor was called with, bound to its signature with the defaults filled in, so that
    ``type(net)(**arguments)`` builds the same architecture (the weights come from the
    ``state_dict``). A constructor may set ``self.config`` itself (a dict whose ``"name"`` is the
    class's registered name, as the built-in networks do to record their normalised arguments);
    a config whose ``"name"`` belongs to another class (set by a base class's constructor) is
    ignored in favour of the arguments. A constructor argument called ``name`` is not allowed.

    **Loading.** A checkpoint holds the registered name and the arguments; loading looks the name up
    in :data:`NETWORK_REGISTRY` (nothing is imported: the module that defines the class must be
    imported first), checks the arguments against the constructor's signature, builds the network
    once on the ``meta`` device to check its size against :data:`MAX_NETWORK_ELEMENTS` (so the
    constructor must work on the meta device, as every ``torch.nn`` layer does), then builds it.
    """

    def __new__(cls: type[_Net], *args: Any, **kwargs: Any) -> _Net:
        self = super().__new__(cls)
        object.__setattr__(self, "_init_arguments", (args, kwargs))  # before nn.Module.__init__ runs
        return self

    def __init_subclass__(cls, /, name: str | None = None, register: bool = True, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" in init_signature(cls).parameters:
            raise TypeError(
                f"{cls.__qualname__}.__init__ has an argument called 'name'; rename it (the network record's "
                "'name' is the class's registered name)"
            )
        if register and not cls.__name__.startswith("_"):
            NETWORK_REGISTRY.register(cls, name)
        elif name is not None:
            raise TypeError(f"{cls.__qualname__} is not registered (private or register=False); drop name=")

    @property
    def config(self) -> dict[str, Any]:
        """``{"name": registered name, **constructor arguments}`` (a copy); see :class:`ScoreNetwork`."""
        name = NETWORK_REGISTRY.name_of(type(self))
        explicit = self.__dict__.get("_explicit_config")
        if isinstance(explicit, dict) and explicit.get("name") == name:
            return dict(explicit)
        args, kwargs = self.__dict__.get("_init_arguments", ((), {}))
        signature = init_signature(type(self))
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        out: dict[str, Any] = {"name": name}
        for param in list(signature.parameters.values())[1:]:
            value = bound.arguments[param.name]
            if param.kind is inspect.Parameter.VAR_POSITIONAL:
                if value:
                    raise TypeError(
                        f"{type(self).__qualname__} got positional arguments through *{param.name}, which a "
                        "checkpoint cannot record; give them names"
                    )
            elif param.kind is inspect.Parameter.VAR_KEYWORD:
                out.update(value)
            else:
                out[param.name] = value
        return out

    @config.setter
    def config(self, value: dict[str, Any]) -> None:
        self.__dict__["_explicit_config"] = dict(value)


#: every registered :class:`ScoreNetwork` class by name (see :class:`ScoreNetwork`), a read-only mapping with
#: ``register(cls, name=None)`` and ``unregister(cls_or_name)``
NETWORK_REGISTRY: Registry[ScoreNetwork] = Registry("network", ScoreNetwork, "scoresde.NETWORK_REGISTRY")


# --------------------------------------------------------------------------------------------
# MLP
# --------------------------------------------------------------------------------------------
class MLPScore(ScoreNetwork, name="mlp"):
    r"""Time-conditioned MLP for vector data ``(B, dim)``.

    With :math:`e = \operatorname{SiLU}(\text{TimeEmbedding}(t))` and :math:`h_0 = x`,

    .. math::
        h_{\ell} = \operatorname{SiLU}\big(A_\ell h_{\ell-1} + B_\ell e\big), \quad \ell = 1..L,
        \qquad F_\theta(x, t) = A_{\text{out}} h_L,

    i.e. the time embedding is projected and added to the pre-activation of every hidden layer.

    Parameters
    ----------
    dim : int
        Data dimension; input and output are ``(B, dim)``.
    hidden : int
        Width of the hidden layers.
    layers : int
        Number of hidden (time-conditioned) layers ``L``.
    embed_dim : int
        Dimension of the time embedding (even).
    fourier_scale : float
        Scale of the Fourier features.
    num_classes : int, optional
        Number of classes :math:`C` of a class-conditional network (a :class:`LabelEmbedding` with a null
        class ``C``, added to the time embedding: :math:`e = \operatorname{SiLU}(e(t) + E[y])`); ``None``
        (default): unconditional.
    """

    def __init__(
        self,
        dim: int = 2,
        hidden: int = 128,
        layers: int = 3,
        embed_dim: int = 64,
        fourier_scale: float = 16.0,
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        dim = check_positive_int("dim", dim)
        hidden = check_positive_int("hidden", hidden)
        layers = check_positive_int("layers", layers)
        embed_dim = check_positive_int("embed_dim", embed_dim)
        fourier_scale = check_positive("fourier_scale", fourier_scale)
        num_classes = check_num_classes("num_classes", num_classes)
        self.config = dict(
            name="mlp", dim=dim, hidden=hidden, layers=layers, embed_dim=embed_dim, fourier_scale=fourier_scale
        )
        if num_classes is not None:  # recorded only when set, so unconditional records are as before
            self.config = {**self.config, "num_classes": num_classes}
        self.dim = dim
        self.num_classes = num_classes
        self.time_embed = TimeEmbedding(embed_dim, fourier_scale)
        self.linears = nn.ModuleList(nn.Linear(dim if i == 0 else hidden, hidden) for i in range(layers))
        self.time_proj = nn.ModuleList(nn.Linear(embed_dim, hidden) for _ in range(layers))
        self.out = nn.Linear(hidden, dim)
        self.label_embed = LabelEmbedding(num_classes, embed_dim) if num_classes is not None else None

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: Any = None) -> torch.Tensor:
        """``x`` of shape ``(B, dim)``, ``t`` of shape ``(B,)``, ``labels`` (conditional networks) -> ``(B, dim)``."""
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(
                f"x must have shape (batch, {self.dim}) for MLPScore(dim={self.dim}), got {tuple(x.shape)}"
            )
        emb = _embedding(self.time_embed, self.label_embed, t, labels, x.shape[0])
        h = x
        for lin, proj in zip(self.linears, self.time_proj, strict=True):
            h = F.silu(lin(h) + proj(emb))
        out: torch.Tensor = self.out(h)
        return out


# --------------------------------------------------------------------------------------------
# U-Net
# --------------------------------------------------------------------------------------------
class _ResBlock(nn.Module):
    r"""Pre-activation residual block with the time embedding as a per-channel bias.

    .. math::
        h = \mathrm{Conv}\big(\mathrm{SiLU}(\mathrm{GN}(x))\big) + P\,\mathrm{SiLU}(e),
        \qquad
        y = \mathrm{skip}(x) + \mathrm{Conv}\big(\mathrm{Drop}(\mathrm{SiLU}(\mathrm{GN}(h)))\big)
    """

    def __init__(self, in_ch: int, out_ch: int, embed_dim: int, groups: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.time_proj = nn.Linear(embed_dim, out_ch)
        self.norm2 = nn.GroupNorm(groups, out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time_proj(emb)[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        out: torch.Tensor = self.skip(x) + h
        return out


class UNet(ScoreNetwork, name="unet"):
    r"""Small time-conditioned U-Net for images ``(B, C, H, W)`` (DDPM / NCSN++ style, no attention).

    Level :math:`i` works at resolution :math:`(H, W)/2^i` with ``base * channel_mults[i]``
    channels and ``num_res_blocks`` residual blocks (GroupNorm, SiLU, 3x3 conv, the time
    embedding :math:`P\,\operatorname{SiLU}(e(t))` added as a per-channel bias). Levels are joined
    by stride-2 convolutions on the way down and nearest-neighbour upsampling + conv on the way
    up; every down-path activation is concatenated to the matching up-path block (skip
    connections). Inputs whose sides are not multiples of :math:`2^{L-1}` (``L`` levels) are
    zero-padded at the bottom/right and the output is cropped back, so any ``H, W`` works
    (e.g. 28x28 with ``channel_mults=(1, 2, 2)`` runs at 28, 14, 7 without padding).

    Parameters
    ----------
    channels : int
        Image channels ``C``.
    base : int
        Channel width of the first level.
    channel_mults : sequence of int
        Width multiplier of each level; ``len(channel_mults) - 1`` downsamplings.
    num_res_blocks : int
        Residual blocks per level on the down path (one more on the up path).
    embed_dim : int
        Dimension of the time embedding (even).
    groups : int
        GroupNorm groups; every ``base * mult`` must be divisible by it.
    dropout : float
        Dropout rate inside the residual blocks.
    fourier_scale : float
        Scale of the Fourier features.
    num_classes : int, optional
        Number of classes :math:`C` of a class-conditional network (a :class:`LabelEmbedding` with a null
        class ``C``, added to the time embedding of every residual block); ``None`` (default): unconditional.
    """

    def __init__(
        self,
        channels: int = 1,
        base: int = 32,
        channel_mults: Sequence[int] = (1, 2),
        num_res_blocks: int = 1,
        embed_dim: int = 128,
        groups: int = 8,
        dropout: float = 0.0,
        fourier_scale: float = 16.0,
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        channels = check_positive_int("channels", channels)
        base = check_positive_int("base", base)
        given: object = channel_mults  # callers may pass anything; checked here
        if isinstance(given, (str, bytes)) or not isinstance(given, Sequence) or not given:
            raise ValueError(f"channel_mults must be a non-empty sequence of positive ints, got {channel_mults!r}")
        mults = tuple(check_positive_int("channel_mults[i]", m) for m in channel_mults)
        num_res_blocks = check_positive_int("num_res_blocks", num_res_blocks)
        embed_dim = check_positive_int("embed_dim", embed_dim)
        groups = check_positive_int("groups", groups)
        dropout = _check_fraction("dropout", dropout)
        fourier_scale = check_positive("fourier_scale", fourier_scale)
        num_classes = check_num_classes("num_classes", num_classes)
        chans = [base * m for m in mults]
        if any(c % groups for c in chans):
            raise ValueError(
                f"every level width base * mult = {chans} must be divisible by groups={groups}; "
                "change base, channel_mults or groups"
            )
        self.config = dict(
            name="unet", channels=channels, base=base, channel_mults=mults, num_res_blocks=num_res_blocks,
            embed_dim=embed_dim, groups=groups, dropout=dropout, fourier_scale=fourier_scale,
        )  # fmt: skip
        if num_classes is not None:  # recorded only when set, so unconditional records are as before
            self.config = {**self.config, "num_classes": num_classes}
        self.channels = channels
        self.num_classes = num_classes
        self.levels = len(mults)

        def block(i: int, o: int) -> _ResBlock:
            return _ResBlock(i, o, embed_dim, groups, dropout)

        self.time_embed = TimeEmbedding(embed_dim, fourier_scale)
        self.conv_in = nn.Conv2d(channels, chans[0], 3, padding=1)
        ch = chans[0]
        skip_chs = [ch]
        self.down_blocks = nn.ModuleList()
        self.downsamplers = nn.ModuleList()
        for i, c in enumerate(chans):
            blocks = nn.ModuleList()
            for _ in range(num_res_blocks):
                blocks.append(block(ch, c))
                ch = c
                skip_chs.append(ch)
            self.down_blocks.append(blocks)
            if i < self.levels - 1:
                self.downsamplers.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
                skip_chs.append(ch)
        self.mid = nn.ModuleList([block(ch, ch), block(ch, ch)])
        self.up_blocks = nn.ModuleList()
        self.upsamplers = nn.ModuleList()
        for i in reversed(range(self.levels)):
            blocks = nn.ModuleList()
            for _ in range(num_res_blocks + 1):
                blocks.append(block(ch + skip_chs.pop(), chans[i]))
                ch = chans[i]
            self.up_blocks.append(blocks)
            if i > 0:
                self.upsamplers.append(nn.Conv2d(ch, ch, 3, padding=1))
        self.norm_out = nn.GroupNorm(groups, ch)
        self.conv_out = nn.Conv2d(ch, channels, 3, padding=1)
        self.label_embed = LabelEmbedding(num_classes, embed_dim) if num_classes is not None else None

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: Any = None) -> torch.Tensor:
        """``x`` of shape ``(B, channels, H, W)``, ``t`` of shape ``(B,)``, ``labels`` (conditional networks) ->
        shaped like ``x``."""
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise ValueError(
                f"x must have shape (batch, {self.channels}, H, W) for UNet(channels={self.channels}), "
                f"got {tuple(x.shape)}"
            )
        emb = _embedding(self.time_embed, self.label_embed, t, labels, x.shape[0])
        H, W = x.shape[-2:]
        m = 2 ** (self.levels - 1)
        pad_h, pad_w = (-H) % m, (-W) % m
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        h: torch.Tensor = self.conv_in(x)
        skips = [h]
        for i, blocks in enumerate(self.down_blocks):
            for blk in cast(nn.ModuleList, blocks):
                h = blk(h, emb)
                skips.append(h)
            if i < self.levels - 1:
                h = self.downsamplers[i](h)
                skips.append(h)
        for blk in self.mid:
            h = blk(h, emb)
        for j, blocks in enumerate(self.up_blocks):
            for blk in cast(nn.ModuleList, blocks):
                h = blk(torch.cat([h, skips.pop()], dim=1), emb)
            if j < self.levels - 1:
                h = self.upsamplers[j](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        h = self.conv_out(F.silu(self.norm_out(h)))
        return h[..., :H, :W] if (pad_h or pad_w) else h


# --------------------------------------------------------------------------------------------
# DiT
# --------------------------------------------------------------------------------------------
def _sincos_1d(dim: int, pos: torch.Tensor) -> torch.Tensor:
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    out = pos.reshape(-1, 1) * omega[None, :]
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)


def _sincos_2d(dim: int, gh: int, gw: int) -> torch.Tensor:
    r"""Fixed 2-D sin-cos positional embedding (MAE / DiT), shape ``(gh * gw, dim)``, row-major.

    Half of the channels encode the row, half the column, each as
    :math:`[\sin(p\,\omega_k), \cos(p\,\omega_k)]` with :math:`\omega_k = 10000^{-2k/(\text{dim}/2)}`.
    """
    rows, cols = torch.meshgrid(
        torch.arange(gh, dtype=torch.float64), torch.arange(gw, dtype=torch.float64), indexing="ij"
    )
    return torch.cat([_sincos_1d(dim // 2, rows), _sincos_1d(dim // 2, cols)], dim=1)


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale[:, None, :]) + shift[:, None, :]


class _Attention(nn.Module):
    def __init__(self, hidden: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.proj = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        proj: torch.Tensor = self.proj(out.transpose(1, 2).reshape(B, N, D))
        return proj


class _DiTBlock(nn.Module):
    r"""Transformer block with adaLN-Zero conditioning (Peebles & Xie 2023).

    With :math:`(\beta_1, \gamma_1, \alpha_1, \beta_2, \gamma_2, \alpha_2) = M\,\operatorname{SiLU}(e)`,

    .. math::
        h \leftarrow h + \alpha_1 \odot \operatorname{Attn}\big(\operatorname{LN}(h)(1 + \gamma_1) + \beta_1\big),
        \qquad
        h \leftarrow h + \alpha_2 \odot \operatorname{MLP}\big(\operatorname{LN}(h)(1 + \gamma_2) + \beta_2\big).

    ``M`` is zero-initialised, so the gates :math:`\alpha` vanish and the block is the identity at
    initialisation.
    """

    def __init__(self, hidden: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.attn = _Attention(hidden, heads)
        self.norm2 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        mlp_hidden = max(1, int(hidden * mlp_ratio))
        self.mlp = nn.Sequential(
            nn.Linear(hidden, mlp_hidden), nn.GELU(approximate="tanh"), nn.Linear(mlp_hidden, hidden)
        )
        self.adaLN = nn.Linear(hidden, 6 * hidden)
        nn.init.zeros_(self.adaLN.weight)
        nn.init.zeros_(self.adaLN.bias)

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """``h``: tokens ``(B, N, hidden)``; ``emb``: ``SiLU`` of the time embedding ``(B, hidden)``."""
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN(emb).chunk(6, dim=1)
        h = h + gate1[:, None, :] * self.attn(_modulate(self.norm1(h), shift1, scale1))
        out: torch.Tensor = h + gate2[:, None, :] * self.mlp(_modulate(self.norm2(h), shift2, scale2))
        return out


class _FinalLayer(nn.Module):
    r"""adaLN + linear to patch pixels: :math:`W(\operatorname{LN}(h)(1 + \gamma) + \beta)`; all zero-initialised."""

    def __init__(self, hidden: int, out_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.adaLN = nn.Linear(hidden, 2 * hidden)
        self.linear = nn.Linear(hidden, out_dim)
        for layer in (self.adaLN, self.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN(emb).chunk(2, dim=1)
        out: torch.Tensor = self.linear(_modulate(self.norm(h), shift, scale))
        return out


class DiT(ScoreNetwork, name="dit"):
    r"""Small diffusion transformer (Peebles & Xie 2023) for images ``(B, C, H, W)``.

    1. *Patchify*: a ``patch_size``-strided convolution maps the image to
       :math:`N = (H/p)(W/p)` tokens of width ``hidden``, plus a fixed 2-D sin-cos positional
       embedding.
    2. ``depth`` transformer blocks conditioned by adaLN-Zero on :math:`e = \operatorname{SiLU}(
       \text{TimeEmbedding}(t))`: per-block shift/scale/gate
       :math:`(\beta, \gamma, \alpha)` of the pre-norms and the residual branches, from a
       zero-initialised linear map, so every block is the identity at initialisation.
    3. Final adaLN + linear to :math:`p^2 C` values per token, then *unpatchify* back to
       ``(B, C, H, W)``. As in DiT the final modulation and linear layer are zero-initialised,
       so the untrained network outputs 0 (for ``"noise"``: a zero score).

    Parameters
    ----------
    image_size : int or (int, int)
        Image side (or ``(H, W)``); must be divisible by ``patch_size``.
    channels : int
        Image channels ``C``.
    patch_size : int
        Side ``p`` of the square patches.
    hidden : int
        Token width (divisible by ``heads`` and by 4).
    depth : int
        Number of transformer blocks.
    heads : int
        Attention heads.
    mlp_ratio : float
        Width of the block MLP relative to ``hidden``.
    fourier_scale : float
        Scale of the Fourier features of the time embedding (of dimension ``hidden``).
    num_classes : int, optional
        Number of classes :math:`C` of a class-conditional network (a :class:`LabelEmbedding` with a null
        class ``C`` of width ``hidden``, added to the time embedding that drives every adaLN modulation, as
        in DiT); ``None`` (default): unconditional.
    """

    pos_embed: torch.Tensor

    def __init__(
        self,
        image_size: int | Sequence[int] = 8,
        channels: int = 1,
        patch_size: int = 2,
        hidden: int = 128,
        depth: int = 4,
        heads: int = 4,
        mlp_ratio: float = 4.0,
        fourier_scale: float = 16.0,
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        H, W = _pair("image_size", image_size)
        channels = check_positive_int("channels", channels)
        p = check_positive_int("patch_size", patch_size)
        hidden = check_positive_int("hidden", hidden)
        depth = check_positive_int("depth", depth)
        heads = check_positive_int("heads", heads)
        mlp_ratio = check_positive("mlp_ratio", mlp_ratio)
        fourier_scale = check_positive("fourier_scale", fourier_scale)
        num_classes = check_num_classes("num_classes", num_classes)
        if H % p or W % p:
            raise ValueError(
                f"image_size={(H, W) if H != W else H} is not divisible by patch_size={p}; choose a patch size "
                "that divides the image side (e.g. 2 or 4 for 28x28)"
            )
        if hidden % heads:
            raise ValueError(f"hidden={hidden} must be divisible by heads={heads}")
        if hidden % 4:
            raise ValueError(f"hidden={hidden} must be divisible by 4 (2-D sin-cos positional embedding)")
        self.config = dict(
            name="dit", image_size=H if H == W else (H, W), channels=channels, patch_size=p, hidden=hidden,
            depth=depth, heads=heads, mlp_ratio=mlp_ratio, fourier_scale=fourier_scale,
        )  # fmt: skip
        if num_classes is not None:  # recorded only when set, so unconditional records are as before
            self.config = {**self.config, "num_classes": num_classes}
        self.num_classes = num_classes
        self.image_size = (H, W)
        self.channels = channels
        self.patch_size = p
        self.grid = (H // p, W // p)
        self.patch_embed = nn.Conv2d(channels, hidden, p, stride=p)
        self.register_buffer("pos_embed", _sincos_2d(hidden, *self.grid).float()[None], persistent=False)
        self.time_embed = TimeEmbedding(hidden, fourier_scale)
        self.blocks = nn.ModuleList(_DiTBlock(hidden, heads, mlp_ratio) for _ in range(depth))
        self.final = _FinalLayer(hidden, p * p * channels)
        self.label_embed = LabelEmbedding(num_classes, hidden) if num_classes is not None else None

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Patch tokens plus positional embedding: ``(B, C, H, W) -> (B, N, hidden)``."""
        patches: torch.Tensor = self.patch_embed(x)
        return patches.flatten(2).transpose(1, 2) + self.pos_embed

    def unpatchify(self, tokens: torch.Tensor) -> torch.Tensor:
        """``(B, N, p*p*C) -> (B, C, H, W)`` (inverse of the row-major patch layout)."""
        (gh, gw), p, C = self.grid, self.patch_size, self.channels
        x = tokens.reshape(tokens.shape[0], gh, gw, p, p, C)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(tokens.shape[0], C, gh * p, gw * p)

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: Any = None) -> torch.Tensor:
        """``x`` of shape ``(B, channels, H, W)``, ``t`` of shape ``(B,)``, ``labels`` (conditional networks) ->
        shaped like ``x``."""
        expected = (self.channels, *self.image_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"x must have shape (batch, {', '.join(map(str, expected))}) for this DiT, got {tuple(x.shape)}"
            )
        emb = _embedding(self.time_embed, self.label_embed, t, labels, x.shape[0])
        h = self.embed(x)
        for blk in self.blocks:
            h = blk(h, emb)
        return self.unpatchify(self.final(h, emb))


# --------------------------------------------------------------------------------------------
# time-dependent classifier
# --------------------------------------------------------------------------------------------
class MLPClassifier(ScoreNetwork, name="classifier_mlp"):
    r"""Time-conditioned MLP classifier: logits :math:`f_\theta(x, t) \in \mathbb R^C` of a noisy sample.

    The body of :class:`MLPScore` (the time embedding added to every hidden pre-activation) on the
    flattened sample, with a linear head to ``num_classes`` logits, so that
    :math:`\log p_\theta(c \mid x, t) = \operatorname{log\_softmax}(f_\theta(x, t))_c`
    (:class:`NoisyClassifier` wraps it into a classifier ``(x, t) -> (batch, C)`` log-probabilities).

    Parameters
    ----------
    features : int
        Number of features of one sample: ``x`` of shape ``(B, *shape)`` with ``prod(shape) = features``
        (2 for 2-D points, 64 for 8x8 digits) is flattened.
    num_classes : int
        Number of classes :math:`C >= 2`.
    hidden, layers, embed_dim, fourier_scale
        As in :class:`MLPScore`.
    """

    def __init__(
        self,
        features: int = 2,
        num_classes: int = 2,
        hidden: int = 128,
        layers: int = 3,
        embed_dim: int = 64,
        fourier_scale: float = 16.0,
    ) -> None:
        super().__init__()
        self.features = check_positive_int("features", features)
        self.num_classes = check_positive_int("num_classes", num_classes, minimum=2)
        hidden = check_positive_int("hidden", hidden)
        layers = check_positive_int("layers", layers)
        embed_dim = check_positive_int("embed_dim", embed_dim)
        fourier_scale = check_positive("fourier_scale", fourier_scale)
        self.config = dict(
            name="classifier_mlp", features=self.features, num_classes=self.num_classes, hidden=hidden,
            layers=layers, embed_dim=embed_dim, fourier_scale=fourier_scale,
        )  # fmt: skip
        self.time_embed = TimeEmbedding(embed_dim, fourier_scale)
        self.linears = nn.ModuleList(nn.Linear(self.features if i == 0 else hidden, hidden) for i in range(layers))
        self.time_proj = nn.ModuleList(nn.Linear(embed_dim, hidden) for _ in range(layers))
        self.out = nn.Linear(hidden, self.num_classes)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``x`` of shape ``(B, *shape)`` with ``features`` entries per sample, ``t`` of shape ``(B,)`` -> logits
        ``(B, num_classes)``."""
        if x.dim() < 2 or math.prod(x.shape[1:]) != self.features:
            raise ValueError(
                f"x must have shape (batch, ...) with {self.features} features per sample for "
                f"MLPClassifier(features={self.features}), got {tuple(x.shape)}"
            )
        emb = F.silu(self.time_embed(_check_t(t, x.shape[0])))
        h = x.reshape(x.shape[0], -1)
        for lin, proj in zip(self.linears, self.time_proj, strict=True):
            h = F.silu(lin(h) + proj(emb))
        out: torch.Tensor = self.out(h)
        return out


class NoisyClassifier(nn.Module):
    r"""A time-dependent classifier :math:`\log p_\theta(c \mid x_t, t)` of the samples of a diffusion.

    Calling it returns ``log_softmax(net(x, t))`` of shape ``(batch, num_classes)``: the log-probabilities
    that :class:`scoresde.conditioning.ClassifierGuidance` takes (its gradient by autograd), trained by
    :func:`scoresde.training.train_classifier` on :math:`x_t \sim p_{0t}(x_t \mid x_0)`.

    Parameters
    ----------
    net : ScoreNetwork
        A network ``net(x, t) -> (batch, C)`` logits with a ``num_classes`` attribute (:class:`MLPClassifier`).
    sde : SDE
        The forward SDE whose noisy samples it classifies (recorded with it).
    """

    def __init__(self, net: nn.Module, sde: SDE) -> None:
        super().__init__()
        if not isinstance(net, nn.Module):
            raise TypeError(f"net must be a torch.nn.Module, got {type(net).__name__}")
        num_classes = getattr(net, "num_classes", None)
        if num_classes is None:
            raise ValueError(f"net must have a num_classes attribute (e.g. MLPClassifier), got {type(net).__name__}")
        if not hasattr(sde, "marginal_prob"):
            raise TypeError(f"sde must be a scoresde SDE with marginal_prob, got {type(sde).__name__}")
        self.net, self.sde = net, sde
        self.num_classes = check_positive_int("net.num_classes", num_classes, minimum=2)
        #: the loss history of its training (:func:`scoresde.training.train_classifier`), empty lists if untrained
        self.history: dict[str, list[float]] = {"step": [], "loss": []}

    def extra_repr(self) -> str:
        return f"sde={self.sde!r}, num_classes={self.num_classes}"

    def logits(self, x: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
        """The network's logits at ``(x, t)``, shape ``(batch, num_classes)``; ``t`` a number or ``(batch,)``."""
        if not isinstance(t, torch.Tensor):
            t = torch.tensor(float(t), dtype=x.dtype, device=x.device)
        t = _check_t(t, x.shape[0]).to(device=x.device)
        out: object = self.net(x, t)
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != (x.shape[0], self.num_classes):
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"the classifier network returned {got}, expected ({x.shape[0]}, {self.num_classes})")
        return out

    def forward(self, x: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
        r""":math:`\log p_\theta(c \mid x, t)` for every class, shape ``(batch, num_classes)``."""
        return F.log_softmax(self.logits(x, t), dim=-1)


# --------------------------------------------------------------------------------------------
# factory
# --------------------------------------------------------------------------------------------
NETWORKS: dict[str, type[nn.Module]] = {"mlp": MLPScore, "unet": UNet, "dit": DiT}


def build_network(name: str, **kwargs: Any) -> nn.Module:
    """Construct a network by its registered name: ``"mlp"`` (:class:`MLPScore`), ``"unet"`` (:class:`UNet`),
    ``"dit"`` (:class:`DiT`), or the name of a :class:`ScoreNetwork` subclass of your own.

    ``build_network(**network_config(net))`` rebuilds ``net``'s architecture, so that
    ``load_state_dict(net.state_dict())`` (strict) succeeds on the result. An unknown name raises
    :class:`~scoresde.UnregisteredError` (a ``ValueError``).
    """
    return NETWORK_REGISTRY.lookup(name)(**kwargs)


def network_config(net: nn.Module) -> dict[str, Any]:
    """The constructor arguments of ``net`` including its registered ``name`` (a copy), for :func:`build_network`.

    ``net`` must be a :class:`ScoreNetwork` (the built-in networks are); its :attr:`ScoreNetwork.config`
    must hold only numbers, strings, booleans, ``None`` and lists and dicts of these.
    """
    if not isinstance(net, ScoreNetwork):
        raise TypeError(
            f"{type(net).__name__} is not a scoresde.nets.ScoreNetwork, so it has no network config that a "
            f"checkpoint can record: subclass ScoreNetwork instead of torch.nn.Module, or use one of "
            f"{[c.__name__ for c in NETWORKS.values()]}"
        )
    config = net.config
    check_record(f"the configuration of {type(net).__qualname__}", config)
    return config


# --------------------------------------------------------------------------------------------
# score parameterisation
# --------------------------------------------------------------------------------------------
class ScoreModel(nn.Module):
    r"""Wrap a network into a score function :math:`s_\theta(x, t) \approx \nabla_x \log p_t(x)`.

    With :math:`\sigma(t)` the std of the SDE's perturbation kernel and :math:`c(t)` the
    network's conditioning input (``time_input``: :math:`t`, or :math:`\tfrac14 \log\sigma(t)`),

    ========================  =============================================  ==================================
    parameterization          score :math:`s_\theta`                         noise :math:`\hat\varepsilon_\theta`
    ========================  =============================================  ==================================
    ``"noise"``               :math:`-F_\theta(x, c) / \sigma(t)`            :math:`F_\theta(x, c)`
    ``"score"``               :math:`F_\theta(x, c) / \sigma(t)`             :math:`-F_\theta(x, c)`
    ``"score"`` (no scaling)  :math:`F_\theta(x, c)`                         :math:`-\sigma(t) F_\theta(x, c)`
    ``"velocity"``            :math:`-\hat\varepsilon_\theta / \sigma(t)`     :math:`(s F_\theta - \dot s x)/D(t)`
    ========================  =============================================  ==================================

    using :math:`x_t = s(t) x_0 + \sigma(t)\varepsilon \Rightarrow \nabla \log p_{0t} = -\varepsilon/\sigma`.

    With ``"edm"`` the network is preconditioned as in Karras et al. (2022, Table 1), in the scaled state
    :math:`\tilde x = x/s(t)` and noise level :math:`\tilde\sigma = \sigma(t)/s(t)` of any linear SDE:
    the data prediction is

    .. math::
        D_\theta(x, t) = c_{\rm skip}\,\tilde x
            + c_{\rm out}\,F_\theta\big(c_{\rm in}\,\tilde x,\ c_{\rm noise}\big),

        c_{\rm skip} = \frac{\sigma_{\rm data}^2}{\tilde\sigma^2 + \sigma_{\rm data}^2}, \quad
        c_{\rm out} = \frac{\tilde\sigma\,\sigma_{\rm data}}{\sqrt{\tilde\sigma^2 + \sigma_{\rm data}^2}}, \quad
        c_{\rm in} = \frac{1}{\sqrt{\tilde\sigma^2 + \sigma_{\rm data}^2}}, \quad
        c_{\rm noise} = \tfrac14\log\tilde\sigma,

    and the score :math:`s_\theta = (s D_\theta - x)/\sigma^2`, computed as
    :math:`-x/\big(s^2(\tilde\sigma^2 + \sigma_{\rm data}^2)\big) + \sigma_{\rm data} F_\theta /
    \big(\sigma\sqrt{\tilde\sigma^2 + \sigma_{\rm data}^2}\big)` (no cancellation at small :math:`\sigma`).
    The network's conditioning input is :math:`c_{\rm noise}` (``time_input="log_sigma"``, the default for
    ``"edm"``) or :math:`t`.
    With ``"velocity"`` (flow matching) the network predicts the velocity of the path,
    :math:`F_\theta \approx \mathbb E[\dot s x_0 + \dot\sigma\varepsilon \mid x_t]`; solving
    :math:`x = s\hat x_0 + \sigma\hat\varepsilon`, :math:`F = \dot s\hat x_0 + \dot\sigma\hat\varepsilon` for
    :math:`\hat\varepsilon` gives the column above with :math:`D = s\dot\sigma - \dot s\sigma > 0`
    (linear SDEs only). For every parameterisation
    :meth:`velocity` returns :math:`\dot s\hat x_0 + \dot\sigma\hat\varepsilon`, which equals the
    probability-flow drift :math:`f x - \tfrac12 g^2 s_\theta`.
    Calling the module returns the score, so a ``ScoreModel`` is a ``score_fn(x, t)`` for the
    samplers; :meth:`epsilon` returns the noise prediction.

    Parameters
    ----------
    net : nn.Module
        A network ``net(x, c) -> tensor shaped like x`` (see :func:`build_network`).
    sde : SDE
        The forward SDE; :math:`\sigma(t)` is ``sde.std(t)`` for a :class:`~scoresde.LinearSDE`,
        else ``sde.marginal_prob(zeros, t)[1]``.
    parameterization : {"noise", "score", "velocity", "edm"}
        What the network predicts (``"velocity"`` and ``"edm"`` need a :class:`~scoresde.LinearSDE`):
        the noise :math:`\varepsilon`, the (scaled) score, the flow velocity or EDM's preconditioned data
        prediction. ``"eps"``, the former name of ``"noise"``, is accepted with a ``DeprecationWarning`` and
        recorded as ``"noise"``.
    scale_by_sigma : bool, optional
        Only for ``"score"`` (default ``True``): divide the network output by :math:`\sigma(t)`
        (score_sde's ``scale_by_sigma``). Must be left unset (or ``False``) for the others.
    time_input : {"t", "log_sigma"}, optional
        Conditioning scalar passed to the network: :math:`t`, or :math:`\tfrac14\log\sigma(t)`
        (:math:`\tfrac14\log\tilde\sigma` for ``"edm"``). Default ``"t"``, ``"log_sigma"`` for ``"edm"``.
    sigma_data : float, optional
        Only for ``"edm"``: the data's standard deviation :math:`\sigma_{\rm data} > 0` in the
        preconditioning. Default 0.5 (EDM's).

    Notes
    -----
    :math:`\sigma(0) = 0` for VP and sub-VP, so the score (and ``log_sigma``) are infinite at
    ``t = 0``; samplers stop at a small ``eps > 0``. No value checks are made here (they would
    synchronise with the device).
    """

    def __init__(
        self,
        net: nn.Module,
        sde: SDE,
        parameterization: str = "noise",
        scale_by_sigma: bool | None = None,
        time_input: str | None = None,
        sigma_data: float | None = None,
    ) -> None:
        super().__init__()
        if parameterization in PARAMETERIZATION_ALIASES:
            new = PARAMETERIZATION_ALIASES[parameterization]
            warnings.warn(
                f"parameterization={parameterization!r} is the former name of {new!r}; pass {new!r}",
                DeprecationWarning,
                stacklevel=2,
            )
            parameterization = new
        if time_input is None:
            time_input = "log_sigma" if parameterization == "edm" else "t"
        if not isinstance(net, nn.Module):
            raise TypeError(f"net must be a torch.nn.Module, got {type(net).__name__}")
        if not hasattr(sde, "marginal_prob"):
            raise TypeError(f"sde must be a scoresde SDE with marginal_prob, got {type(sde).__name__}")
        if parameterization not in PARAMETERIZATIONS:
            raise ValueError(f"unknown parameterization {parameterization!r}; choose one of {list(PARAMETERIZATIONS)}")
        if time_input not in TIME_INPUTS:
            raise ValueError(f"unknown time_input {time_input!r}; choose one of {list(TIME_INPUTS)}")
        if parameterization in ("velocity", "edm") and not isinstance(sde, LinearSDE):
            raise TypeError(f"parameterization={parameterization!r} needs a linear SDE, got {type(sde).__name__}")
        if parameterization == "edm":
            self.sigma_data = check_positive("sigma_data", 0.5 if sigma_data is None else sigma_data)
        elif sigma_data is not None:
            raise ValueError(f"sigma_data applies to parameterization='edm' only, not {parameterization!r}")
        if parameterization in ("noise", "velocity", "edm"):
            if scale_by_sigma:
                raise ValueError(f"scale_by_sigma applies to parameterization='score' only, not {parameterization!r}")
            scale_by_sigma = False
        elif scale_by_sigma is None:
            scale_by_sigma = True
        self.net = net
        self.sde = sde
        #: the number of classes of a class-conditional network (its ``num_classes``), ``None`` if unconditional
        self.num_classes: int | None = check_num_classes("net.num_classes", getattr(net, "num_classes", None))
        self.parameterization = parameterization
        self.scale_by_sigma = bool(scale_by_sigma)
        self.time_input = time_input
        self.config: dict[str, Any] = dict(
            parameterization=parameterization, scale_by_sigma=self.scale_by_sigma, time_input=time_input
        )
        if parameterization == "edm":
            self.config["sigma_data"] = self.sigma_data

    def extra_repr(self) -> str:
        return f"sde={self.sde!r}, " + ", ".join(f"{k}={v!r}" for k, v in self.config.items())

    # -- pieces ----------------------------------------------------------------------------
    def _time(self, x: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
        """``t`` as a ``(batch,)`` tensor on ``x``'s device in the wider of its and ``x``'s float dtype."""
        if not isinstance(t, torch.Tensor):
            t = torch.tensor(float(t), dtype=x.dtype, device=x.device)
        t = _check_t(t, x.shape[0])
        dtype = torch.promote_types(t.dtype, x.dtype) if t.is_floating_point() else x.dtype
        return t.to(dtype=dtype, device=x.device)

    def sigma(self, x: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
        r""":math:`\sigma(t)` of shape ``(batch,)`` in ``x``'s dtype."""
        return self._sigma(x, self._time(x, t))

    def _sigma(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if isinstance(self.sde, LinearSDE):
            sigma = self.sde.std(t)
        else:
            sigma = self.sde.marginal_prob(t.new_zeros(t.shape[0], 1), t)[1]
        return sigma.reshape(-1).expand(x.shape[0]).to(x.dtype)

    @property
    def conditional(self) -> bool:
        """Whether the network takes a class label (``num_classes`` is set)."""
        return self.num_classes is not None

    def _net(self, x: torch.Tensor, c_in: torch.Tensor, labels: Any) -> torch.Tensor:
        """The network at ``(x, c_in)``, given the class ``labels`` if it is conditional (``None``: the null class)."""
        if self.num_classes is None:
            if labels is not None:
                raise ValueError(
                    "c (a class label) was given to an unconditional model; train a class-conditional network "
                    "(num_classes=C) to condition on a class, or call the model as model(x, t)"
                )
            out: torch.Tensor = self.net(x, c_in)
            return out
        labels = check_class_labels("c", labels, x.shape[0], self.num_classes, x.device)
        out = self.net(x, c_in, labels)
        return out

    def _output(
        self, x: torch.Tensor, t: float | torch.Tensor, labels: Any = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Network output ``F`` and ``sigma`` broadcast against ``x``."""
        t = self._time(x, t)
        sigma = self._sigma(x, t)
        c = t if self.time_input == "t" else 0.25 * torch.log(sigma)
        return self._net(x, c, labels), broadcast_coef(sigma, x)

    def _path(self, x: torch.Tensor, t: float | torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``(s, sigma, s_dot, sigma_dot)`` broadcast against ``x`` (linear SDEs)."""
        t = self._time(x, t)
        # s(t), sigma(t) and their derivatives exist for linear SDEs (a velocity model has one, see __init__)
        sde = cast(LinearSDE, self.sde)
        return tuple(
            broadcast_coef(c.reshape(-1).expand(x.shape[0]).to(x.dtype), x)
            for c in (sde.mean_coef(t), sde.std(t), sde.mean_coef_dot(t), sde.std_dot(t))
        )

    def _edm(self, x: torch.Tensor, t: float | torch.Tensor, labels: Any = None) -> tuple[torch.Tensor, ...]:
        r"""EDM preconditioning: ``(F, x / s, s, sigma, sigma / s, sqrt(sigma_t^2 + sigma_data^2))``, the last
        five broadcast against ``x``; ``F`` is the network's output at :math:`(c_{in}\tilde x, c_{noise})`."""
        t = self._time(x, t)
        sigma_v = self._sigma(x, t)
        s_v = cast(LinearSDE, self.sde).mean_coef(t).reshape(-1).expand(x.shape[0]).to(x.dtype)
        sig_v = sigma_v / s_v
        norm_v = torch.sqrt(sig_v**2 + self.sigma_data**2)
        s, sigma, sig, norm = (broadcast_coef(c, x) for c in (s_v, sigma_v, sig_v, norm_v))
        x_scaled = x / s
        c = t if self.time_input == "t" else 0.25 * torch.log(sig_v)
        return self._net(x_scaled / norm, c, labels), x_scaled, s, sigma, sig, norm

    def _velocity_eps(self, x: torch.Tensor, v: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
        s, sigma, s_dot, sigma_dot = self._path(x, t)
        return (s * v - s_dot * x) / (s * sigma_dot - s_dot * sigma)

    # -- outputs ---------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, t: float | torch.Tensor, c: Any = None) -> torch.Tensor:
        r"""The score :math:`s_\theta(x, t)`, or :math:`s_\theta(x, t, c)` of a class-conditional model, shaped
        like ``x``.

        ``c`` (conditional models only): ``None`` (the null class :math:`\varnothing`, i.e. the unconditional
        score that the model learnt by label dropout), one class for every sample (an int), or a ``(batch,)``
        integer tensor of classes ``0..num_classes - 1`` (``num_classes`` is the null class). An unconditional
        model raises ``ValueError`` if given ``c``.
        """
        if self.parameterization == "edm":
            out, _, s, sigma, _, norm = self._edm(x, t, c)
            return (self.sigma_data / (sigma * norm)) * out - x / (s * norm) ** 2
        out, sigma = self._output(x, t, c)
        if self.parameterization == "noise":
            return -out / sigma
        if self.parameterization == "velocity":
            return -self._velocity_eps(x, out, t) / sigma
        return out / sigma if self.scale_by_sigma else out

    def epsilon(self, x: torch.Tensor, t: float | torch.Tensor, c: Any = None) -> torch.Tensor:
        r"""Noise prediction :math:`\hat\varepsilon_\theta(x, t) = -\sigma(t)\,s_\theta(x, t)`, shaped like ``x``
        (``c`` as in :meth:`forward`)."""
        if self.parameterization == "edm":
            out, _, s, sigma, _, norm = self._edm(x, t, c)
            return (sigma / (s * norm) ** 2) * x - (self.sigma_data / norm) * out
        out, sigma = self._output(x, t, c)
        if self.parameterization == "noise":
            return out
        if self.parameterization == "velocity":
            return self._velocity_eps(x, out, t)
        return -out if self.scale_by_sigma else -sigma * out

    def data_prediction(self, x: torch.Tensor, t: float | torch.Tensor, c: Any = None) -> torch.Tensor:
        r"""Data prediction :math:`D_\theta(x, t) = \big(x + \sigma(t)^2 s_\theta(x, t)\big)/s(t)
        = \big(x - \sigma(t)\hat\varepsilon_\theta\big)/s(t)` (Tweedie's formula; for ``"edm"`` the
        preconditioned :math:`c_{\rm skip}\tilde x + c_{\rm out} F_\theta`), shaped like ``x``. Linear SDEs only.
        ``c`` as in :meth:`forward`."""
        if self.parameterization == "edm":
            out, x_scaled, _, _, sig, norm = self._edm(x, t, c)
            return (self.sigma_data / norm) ** 2 * x_scaled + (sig * self.sigma_data / norm) * out
        if not isinstance(self.sde, LinearSDE):
            raise TypeError(f"data_prediction needs a linear SDE (it divides by s(t)), got {type(self.sde).__name__}")
        tt = self._time(x, t)
        s = broadcast_coef(self.sde.mean_coef(tt).reshape(-1).expand(x.shape[0]).to(x.dtype), x)
        return (x - broadcast_coef(self._sigma(x, tt), x) * self.epsilon(x, t, c)) / s

    def velocity(self, x: torch.Tensor, t: float | torch.Tensor, c: Any = None) -> torch.Tensor:
        r"""Flow velocity :math:`\hat v = \dot s\,\hat x_0 + \dot\sigma\,\hat\varepsilon` with
        :math:`\hat x_0 = (x - \sigma\hat\varepsilon)/s` (the network output for ``"velocity"``); ``c`` as in
        :meth:`forward`."""
        if self.parameterization == "velocity":
            return self._output(x, t, c)[0]
        eps = self.epsilon(x, t, c)
        s, sigma, s_dot, sigma_dot = self._path(x, t)
        return s_dot * (x - sigma * eps) / s + sigma_dot * eps


def _feature_shape(net_config: dict[str, Any]) -> list[int] | None:
    """The sample shape a built-in network accepts (``-1`` marks a free size: the U-Net takes any H x W);
    ``None`` for other networks."""
    name = net_config["name"]
    if not _is_builtin(name):
        return None
    if name == "mlp":
        return [int(net_config.get("dim", 2))]
    if name == "dit":
        size = net_config.get("image_size", 8)
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        return [int(net_config.get("channels", 1)), int(h), int(w)]
    if name == "unet":
        return [int(net_config.get("channels", 1)), -1, -1]
    return None


#: sanity bounds for network configurations read from files (checkpoints), checked before anything is
#: allocated: parameters plus buffers (2**30 float32 numbers are 4 GiB), and sizes of single fields
MAX_NETWORK_ELEMENTS = 2**30
_MAX_COUNT = 1024  # layers, depth, num_res_blocks, len(channel_mults)
_MAX_SIZE = 2**16  # every other integer field: widths, dimensions, image sides, patch size


def _is_builtin(name: Any) -> bool:
    """Whether ``name`` is the registered name of one of the built-in networks (:data:`NETWORKS`)."""
    return isinstance(name, str) and name in NETWORKS and NETWORK_REGISTRY.get(name) is NETWORKS[name]


def _check_user_fields(name: str, kwargs: dict[str, Any]) -> None:
    """Types and sizes of the arguments of a network that is not built in: JSON-like, finite, bounded."""
    check_record(f"the configuration of network {name!r}", kwargs)
    finite_numbers(f"network {name!r}", kwargs)

    def bounded(key: str, value: Any) -> None:
        if isinstance(value, (str, list, tuple, dict)) and len(value) > _MAX_SIZE:
            raise ValueError(f"network field {key} has {len(value):,} entries, more than {_MAX_SIZE:,}")
        children = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else ()
        for v in children:
            bounded(key, v)

    for key, value in kwargs.items():
        bounded(key, value)


def check_network_config(config: Any) -> int:
    """Check a network configuration (as in :func:`network_config`) without allocating it; return its size.

    The configuration must name a registered network (:data:`NETWORK_REGISTRY`; nothing is imported to
    find it) and hold only its constructor arguments. For the built-in networks (:data:`NETWORKS`),
    counts (``layers``, ``depth``, ``num_res_blocks``, ``len(channel_mults)``) must be at most 1024 and
    every other integer at most ``2**16``; for other networks, the arguments must be numbers (finite),
    strings, booleans, ``None`` and lists and dicts of these with at most ``2**16`` entries each. The
    network is then built on the ``meta`` device (no memory, no random numbers drawn), and its
    parameters plus buffers must number at most :data:`MAX_NETWORK_ELEMENTS`. Returns that number.
    Raises ``TypeError`` / ``ValueError`` naming the field (:class:`~scoresde.UnregisteredError` for a
    name that is not registered).
    """
    if not isinstance(config, dict):
        raise TypeError(f"a network configuration must be a dict, got {type(config).__name__}")
    name = config.get("name")
    cls = NETWORK_REGISTRY.lookup(name)
    kwargs = {k: v for k, v in config.items() if k != "name"}
    if _is_builtin(name):
        _check_builtin_fields(cast(str, name), config)
    else:
        _check_user_fields(str(name), kwargs)
        try:
            check_arguments(f"the arguments of network {name!r}", cls, kwargs)
        except TypeError as err:
            raise ValueError(str(err)) from None
    try:
        with torch.device("meta"):
            net = cls(**kwargs)
    except (TypeError, ValueError):
        raise
    except Exception as err:  # a constructor of one's own may fail on the meta device in any way
        raise ValueError(
            f"network {name!r} cannot be built on the meta device to check its size ({type(err).__name__}: "
            f"{err}); its constructor must work under torch.device('meta') (every torch.nn layer does)"
        ) from None
    size = sum(t.numel() for t in (*net.parameters(), *net.buffers()))
    if size > MAX_NETWORK_ELEMENTS:
        raise ValueError(
            f"network {name!r} with {kwargs} would have {size:,} parameters and buffers, more than the "
            f"sanity bound {MAX_NETWORK_ELEMENTS:,}"
        )
    return size


def _check_builtin_fields(name: str, config: dict[str, Any]) -> None:
    """The field checks of the built-in networks: known arguments only, bounded integers, finite numbers."""
    allowed = set(inspect.signature(NETWORKS[name].__init__).parameters) - {"self"}
    unknown = sorted(set(config) - allowed - {"name"}, key=str)
    if unknown:
        raise ValueError(f"network {name!r} has no argument(s) {unknown}; expected some of {sorted(allowed)}")
    for key, value in config.items():
        values = value if isinstance(value, (list, tuple)) else [value]
        if isinstance(value, (list, tuple)) and len(value) > _MAX_COUNT:
            raise ValueError(f"network field {key} has {len(value)} entries, more than {_MAX_COUNT}")
        for v in values:
            if isinstance(v, bool) or not isinstance(v, (int, float, str)):
                raise TypeError(f"network field {key} must hold numbers, got {type(v).__name__}")
            if isinstance(v, float) and not math.isfinite(v):
                raise ValueError(f"network field {key} must be finite, got {v!r}")
            limit = _MAX_COUNT if key in ("layers", "depth", "num_res_blocks") else _MAX_SIZE
            if isinstance(v, int) and not 0 < v <= limit:
                raise ValueError(f"network field {key} = {v} is out of range: expected an integer in [1, {limit}]")
    if isinstance(config.get("mlp_ratio"), (int, float)) and config["mlp_ratio"] > _MAX_COUNT:
        raise ValueError(f"network field mlp_ratio = {config['mlp_ratio']} is out of range (at most {_MAX_COUNT})")


def model_config(model: ScoreModel) -> dict[str, Any]:
    """Everything needed to rebuild a :class:`ScoreModel` (given its SDE): network and parameterisation.

    The network must be a :class:`ScoreNetwork` (see :func:`network_config`). One that is not built in is
    checked here as a checkpoint would be checked on loading (:func:`check_network_config`), so that a
    network whose record could not be loaded is refused before training rather than after.
    """
    if not isinstance(model, ScoreModel):
        raise TypeError(f"expected a scoresde.nets.ScoreModel, got {type(model).__name__}")
    net = network_config(model.net)
    if not _is_builtin(net["name"]):
        check_network_config(net)
    return {"network": net, **model.config, "feature_shape": _feature_shape(net)}


def model_from_config(config: dict[str, Any], sde: SDE) -> ScoreModel:
    """Rebuild the :class:`ScoreModel` described by :func:`model_config` (weights not included).

    The network configuration is checked first (:func:`check_network_config`), so that a configuration
    read from a file cannot ask for an absurd allocation; the network class is looked up by name in
    :data:`NETWORK_REGISTRY`, never imported.
    """
    check_network_config(config["network"])
    net_cfg = dict(config["network"])
    net = build_network(net_cfg.pop("name"), **net_cfg)
    # records written before the noise prediction was renamed call it "eps"
    param = PARAMETERIZATION_ALIASES.get(config["parameterization"], config["parameterization"])
    return ScoreModel(
        net,
        sde,
        parameterization=param,
        scale_by_sigma=config["scale_by_sigma"] if param == "score" else None,
        time_input=config["time_input"],
        sigma_data=config.get("sigma_data") if param == "edm" else None,
    )
