"""Score networks: shapes, dtypes, time conditioning, adaLN-Zero identity, score parameterisations, configs."""

import pytest
import torch
from torch import nn

import scoresde as sd
from scoresde.nets import (
    DiT,
    GaussianFourierProjection,
    MLPScore,
    ScoreModel,
    TimeEmbedding,
    UNet,
    build_network,
    check_network_config,
    model_config,
    model_from_config,
    network_config,
)

# small-but-representative configurations keep the file fast
SMALL_UNET = dict(base=8, channel_mults=(1, 2), embed_dim=16, groups=4)
SMALL_DIT = dict(hidden=32, depth=2, heads=2)


def _perturb(module: nn.Module, std: float = 0.1) -> nn.Module:
    """Add noise to every parameter, so zero-initialised layers (DiT's adaLN-Zero) become non-trivial."""
    gen = torch.Generator().manual_seed(123)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(std * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return module


NET_CASES = [
    pytest.param(lambda: MLPScore(), (2,), id="mlp"),
    pytest.param(lambda: MLPScore(dim=5, hidden=16, layers=1, embed_dim=8), (5,), id="mlp-d5"),
    pytest.param(lambda: UNet(**SMALL_UNET), (1, 8, 8), id="unet-1x8x8"),
    pytest.param(lambda: UNet(**SMALL_UNET), (1, 28, 28), id="unet-1x28x28"),
    pytest.param(lambda: UNet(channels=3, **SMALL_UNET), (3, 8, 8), id="unet-3x8x8"),
    pytest.param(
        lambda: UNet(base=8, channel_mults=(1, 2, 2, 2), embed_dim=16, groups=4), (1, 28, 28), id="unet-1x28x28-padded"
    ),
    pytest.param(lambda: UNet(channels=2, **SMALL_UNET), (2, 7, 9), id="unet-2x7x9-odd"),
    pytest.param(lambda: DiT(**SMALL_DIT), (1, 8, 8), id="dit-1x8x8"),
    pytest.param(lambda: DiT(image_size=28, patch_size=4, **SMALL_DIT), (1, 28, 28), id="dit-1x28x28-p4"),
    pytest.param(lambda: DiT(image_size=(8, 12), channels=2, **SMALL_DIT), (2, 8, 12), id="dit-2x8x12"),
]


@pytest.mark.parametrize("make, feature_shape", NET_CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batch", [1, 3])
def test_output_shape_and_dtype(make, feature_shape, dtype, batch):
    torch.manual_seed(0)
    net = _perturb(make()).to(dtype)
    x = torch.randn(batch, *feature_shape, dtype=dtype)
    t = torch.rand(batch, dtype=torch.float64)  # any float dtype for t: cast to the network's
    out = net(x, t)
    assert out.shape == x.shape and out.dtype == dtype
    assert torch.isfinite(out).all()


def test_default_networks_run():
    torch.manual_seed(0)
    assert MLPScore()(torch.randn(4, 2), torch.rand(4)).shape == (4, 2)
    assert UNet()(torch.randn(2, 1, 8, 8), torch.rand(2)).shape == (2, 1, 8, 8)
    assert DiT()(torch.randn(2, 1, 8, 8), torch.rand(2)).shape == (2, 1, 8, 8)


@pytest.mark.parametrize("make, feature_shape", NET_CASES[:1] + NET_CASES[2:3] + NET_CASES[7:8])
def test_output_depends_on_time(make, feature_shape):
    torch.manual_seed(0)
    net = _perturb(make())
    x = torch.randn(1, *feature_shape).expand(2, *feature_shape)
    out = net(x, torch.tensor([0.1, 0.9]))
    assert (out[0] - out[1]).abs().max() > 1e-4
    # a scalar t is broadcast over the batch
    torch.testing.assert_close(net(x, torch.tensor(0.1))[0], out[0])


def test_fourier_features_are_fixed_buffers():
    torch.manual_seed(0)
    proj = GaussianFourierProjection(16, scale=3.0)
    assert list(proj.parameters()) == [] and "W" in proj.state_dict()
    t = torch.tensor([0.0, 0.25])
    emb = proj(t)
    assert emb.shape == (2, 16)
    w = proj.W
    arg = 2 * torch.pi * 0.25 * w
    torch.testing.assert_close(emb[1], torch.cat([torch.sin(arg), torch.cos(arg)]))
    torch.testing.assert_close(emb[0], torch.cat([torch.zeros(8), torch.ones(8)]))
    # W is not trained: no parameter of a network contains it, and optimisation leaves it untouched
    net = MLPScore(hidden=8, layers=1, embed_dim=8)
    w0 = net.time_embed.fourier.W.clone()
    assert all(p is not net.time_embed.fourier.W for p in net.parameters())
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    net(torch.randn(4, 2), torch.rand(4)).square().mean().backward()
    opt.step()
    assert torch.equal(net.time_embed.fourier.W, w0)
    with pytest.raises(ValueError, match="even"):
        GaussianFourierProjection(7)
    assert TimeEmbedding(8)(torch.rand(5)).shape == (5, 8)


def test_dit_blocks_are_identity_at_init():
    torch.manual_seed(0)
    net = DiT(**SMALL_DIT)
    x, t = torch.randn(3, 1, 8, 8), torch.rand(3)
    emb = torch.nn.functional.silu(net.time_embed(t))
    h = net.embed(x)
    for blk in net.blocks:
        out = blk(h, emb)
        assert torch.equal(out, h)  # gated residuals are exactly zero
        h = out
    # with a non-trivial final layer, the whole net is final(patch embedding) at init
    _perturb(net.final)
    _perturb(net.patch_embed)
    _perturb(net.time_embed)
    emb = torch.nn.functional.silu(net.time_embed(t))
    expected = net.unpatchify(net.final(net.embed(x), emb))
    torch.testing.assert_close(net(x, t), expected, rtol=0, atol=0)
    # the untrained DiT outputs zero (zero-initialised final layer), like the reference DiT
    assert torch.equal(DiT(**SMALL_DIT)(x, t), torch.zeros_like(x))


def test_dit_patchify_roundtrip():
    net = DiT(image_size=(4, 6), channels=3, patch_size=2, hidden=8, depth=1, heads=2)
    x = torch.randn(2, 3, 4, 6)
    p = 2
    # row-major patches of shape (p, p, C) flattened
    tokens = x.reshape(2, 3, 2, p, 3, p).permute(0, 2, 4, 3, 5, 1).reshape(2, 6, p * p * 3)
    assert torch.equal(net.unpatchify(tokens), x)


def test_dit_rejects_indivisible_image_size():
    with pytest.raises(ValueError, match="divisible by patch_size"):
        DiT(image_size=28, patch_size=3)
    with pytest.raises(ValueError, match="heads"):
        DiT(hidden=30, heads=4)


def test_unet_rejects_bad_groups():
    with pytest.raises(ValueError, match="groups"):
        UNet(base=12, groups=8)


@pytest.mark.parametrize(
    "net, x",
    [
        (MLPScore(dim=2), torch.randn(4, 3)),
        (MLPScore(dim=2), torch.randn(4, 2, 1)),
        (UNet(**SMALL_UNET), torch.randn(2, 3, 8, 8)),
        (UNet(**SMALL_UNET), torch.randn(2, 64)),
        (DiT(**SMALL_DIT), torch.randn(2, 1, 16, 16)),
        (DiT(**SMALL_DIT), torch.randn(2, 3, 8, 8)),
    ],
    ids=["mlp-dim", "mlp-ndim", "unet-channels", "unet-ndim", "dit-size", "dit-channels"],
)
def test_bad_shapes_raise_naming_x(net, x):
    with pytest.raises(ValueError, match=r"x must have shape") as err:
        net(x, torch.rand(x.shape[0]))
    assert str(tuple(x.shape)) in str(err.value)


def test_bad_t_shape_raises():
    net = MLPScore(hidden=8, layers=1, embed_dim=8)
    with pytest.raises(ValueError, match="t must have shape"):
        net(torch.randn(4, 2), torch.rand(3))
    with pytest.raises(ValueError, match="t must have shape"):
        net(torch.randn(4, 2), torch.rand(4, 1))


# -- ScoreModel ------------------------------------------------------------------------------
from conftest import SDES  # noqa: E402


@pytest.mark.parametrize("sde", SDES, ids=repr)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_noise_parameterization_exact(sde, dtype):
    torch.manual_seed(0)
    net = MLPScore(hidden=16, layers=2, embed_dim=8).to(dtype)
    model = ScoreModel(net, sde, "noise")
    x = torch.randn(5, 2, dtype=dtype)
    t = torch.linspace(0.05, 1.0, 5, dtype=dtype)
    sigma = sde.std(t)
    eps = net(x, t)
    score = model(x, t)
    assert score.dtype == dtype
    torch.testing.assert_close(score, -eps / sigma[:, None], rtol=0, atol=0)
    torch.testing.assert_close(model.epsilon(x, t), eps, rtol=0, atol=0)
    # epsilon = -sigma * score
    torch.testing.assert_close(model.epsilon(x, t), -sigma[:, None] * score)
    torch.testing.assert_close(model.sigma(x, t), sigma)


@pytest.mark.parametrize("scale_by_sigma", [True, False])
def test_score_parameterization(scale_by_sigma):
    torch.manual_seed(0)
    sde = sd.VESDE()
    net = UNet(**SMALL_UNET).double()
    model = ScoreModel(net, sde, "score", scale_by_sigma=scale_by_sigma)
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    t = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    sigma = sde.std(t)[:, None, None, None]
    out = net(x, t)
    expected = out / sigma if scale_by_sigma else out
    torch.testing.assert_close(model(x, t), expected, rtol=0, atol=0)
    torch.testing.assert_close(model.epsilon(x, t), -sigma * model(x, t))


def test_score_parameterization_defaults_and_validation():
    sde = sd.VPSDE()
    net = MLPScore(hidden=8, layers=1, embed_dim=8)
    assert ScoreModel(net, sde, "score").scale_by_sigma is True
    assert ScoreModel(net, sde).parameterization == "noise"
    with pytest.raises(ValueError, match=r"parameterization.*'noise', 'score'"):
        ScoreModel(net, sde, "x0")
    with pytest.raises(ValueError, match="scale_by_sigma"):
        ScoreModel(net, sde, "noise", scale_by_sigma=True)
    with pytest.raises(ValueError, match="time_input"):
        ScoreModel(net, sde, time_input="sigma")
    with pytest.raises(ValueError, match="x must have shape"):
        ScoreModel(net, sde)(torch.randn(4, 3), torch.rand(4))


def test_former_name_eps_is_noise_with_a_deprecation_warning():
    """``parameterization="eps"`` (the former name) builds the ``"noise"`` model, warns, and records "noise"."""
    torch.manual_seed(0)
    sde = sd.VPSDE()
    net = MLPScore(hidden=8, layers=1, embed_dim=8)
    with pytest.warns(DeprecationWarning, match="'eps' is the former name of 'noise'"):
        old = ScoreModel(net, sde, "eps")
    new = ScoreModel(net, sde, "noise")
    assert old.parameterization == "noise" and old.config == new.config
    x, t = torch.randn(4, 2), torch.rand(4) * 0.9 + 0.1
    assert torch.equal(old(x, t), new(x, t))
    assert model_from_config({**model_config(new), "parameterization": "eps"}, sde).parameterization == "noise"


def test_log_sigma_time_input():
    torch.manual_seed(0)
    sde = sd.VESDE()
    net = MLPScore(hidden=16, layers=2, embed_dim=8)
    model = ScoreModel(net, sde, "noise", time_input="log_sigma")
    x, t = torch.randn(4, 2), torch.rand(4) * 0.9 + 0.1
    sigma = sde.std(t)
    torch.testing.assert_close(model.epsilon(x, t), net(x, torch.log(sigma) / 4))


def test_generic_sde_uses_marginal_prob():
    torch.manual_seed(0)
    sde = sd.VPSDE()
    net = MLPScore(hidden=8, layers=1, embed_dim=8)
    rsde = sde.reverse(lambda x, t: torch.zeros_like(x))  # not a LinearSDE; marginals are the base's
    x, t = torch.randn(4, 2), torch.rand(4) * 0.9 + 0.1
    torch.testing.assert_close(ScoreModel(net, rsde)(x, t), ScoreModel(net, sde)(x, t))


def test_score_model_drives_a_sampler():
    torch.manual_seed(0)
    sde = sd.VPSDE()
    model = ScoreModel(MLPScore(hidden=16, layers=1, embed_dim=8), sde).eval()
    with torch.no_grad():
        drift, diffusion = sde.reverse(model).sde(torch.randn(6, 2), 0.5)
    assert drift.shape == (6, 2) and diffusion.shape == (6,)
    # a scalar time works too
    assert model(torch.randn(6, 2), 0.5).shape == (6, 2)


# -- configs, determinism, gradients ---------------------------------------------------------
@pytest.mark.parametrize(
    "net",
    [
        MLPScore(dim=3, hidden=16, layers=2, embed_dim=8, fourier_scale=4.0),
        UNet(channels=2, base=8, channel_mults=[1, 2, 2], num_res_blocks=2, embed_dim=16, groups=4, dropout=0.1),
        DiT(image_size=(8, 4), channels=2, patch_size=2, hidden=16, depth=2, heads=2, mlp_ratio=2.0),
    ],
    ids=["mlp", "unet", "dit"],
)
def test_config_round_trip(net):
    config = network_config(net)
    assert config["name"] in ("mlp", "unet", "dit")
    rebuilt = build_network(**config)
    assert type(rebuilt) is type(net)
    rebuilt.load_state_dict(net.state_dict(), strict=True)
    assert network_config(rebuilt) == config
    x = torch.randn(2, *{"mlp": (3,), "unet": (2, 5, 5), "dit": (2, 8, 4)}[config["name"]])
    t = torch.rand(2)
    net.eval(), rebuilt.eval()
    assert torch.equal(net(x, t), rebuilt(x, t))
    config["name"] = "resnet"
    with pytest.raises(ValueError, match=r"'dit', 'mlp', 'unet'"):
        build_network(**config)
    with pytest.raises(TypeError):
        network_config(nn.Linear(2, 2))


@pytest.mark.parametrize("name", ["mlp", "unet", "dit"])
def test_deterministic_construction(name):
    kwargs = {"mlp": {}, "unet": SMALL_UNET, "dit": SMALL_DIT}[name]
    torch.manual_seed(7)
    a = build_network(name, **kwargs)
    torch.manual_seed(7)
    b = build_network(name, **kwargs)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    torch.manual_seed(8)
    c = build_network(name, **kwargs)
    assert not torch.equal(c.time_embed.fourier.W, a.time_embed.fourier.W)


def test_gradients_flow_and_training_reduces_loss():
    torch.manual_seed(0)
    net = MLPScore(hidden=32, layers=2, embed_dim=16)
    x, t = torch.randn(64, 2), torch.rand(64)
    target = torch.stack([torch.sin(3 * x[:, 0]) * t, x[:, 1] ** 2 - t], dim=1)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = (net(x, t) - target).square().mean()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize(
    "make, shape",
    [(lambda: UNet(**SMALL_UNET), (2, 1, 8, 8)), (lambda: DiT(**SMALL_DIT), (2, 1, 8, 8))],
    ids=["unet", "dit"],
)
def test_image_net_gradients_reach_every_parameter(make, shape):
    torch.manual_seed(0)
    net = make()
    model = ScoreModel(net, sd.VPSDE())
    x = torch.randn(shape)
    # denoising score-matching loss in the eps parameterisation
    t = torch.rand(shape[0]) * 0.9 + 0.1
    z = torch.randn(shape)
    mean, std = sd.VPSDE().marginal_prob(x, t)
    xt = mean + std[:, None, None, None] * z
    (model.epsilon(xt, t) - z).square().mean().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None, name
    # the output layer always receives a non-zero gradient (for DiT, it is the zero-initialised final linear)
    out_layer = net.final.linear if isinstance(net, DiT) else net.conv_out
    assert out_layer.weight.grad.abs().max() > 0


# -- networks of one's own ---------------------------------------------------------------------------
class _Concat(nn.Module):
    def __init__(self, dim: int, width: int) -> None:
        super().__init__()
        self.lin = nn.Linear(dim + 1, width)
        self.out = nn.Linear(width, dim)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.lin(torch.cat([x, c[:, None].to(x.dtype)], dim=1))))


class UserNet(sd.ScoreNetwork):
    def __init__(self, dim: int, width: int = 8, *, scale: float = 1.0, **extra: int) -> None:
        super().__init__()
        self.core = _Concat(dim, width)
        self.scale = scale

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.scale * self.core(x, c)


def test_user_network_config_is_captured_and_rebuilds():
    net = UserNet(3, scale=2.0, tag=5)
    config = network_config(net)
    assert config == {"name": f"{__name__}.UserNet", "dim": 3, "width": 8, "scale": 2.0, "tag": 5}
    rebuilt = build_network(**config)
    assert type(rebuilt) is UserNet
    rebuilt.load_state_dict(net.state_dict(), strict=True)
    x, t = torch.randn(4, 3), torch.rand(4)
    assert torch.equal(rebuilt(x, t), net(x, t))
    assert check_network_config(config) == sum(p.numel() for p in net.parameters())
    # the built-ins keep their own normalised records
    assert network_config(MLPScore(fourier_scale=4)) == {
        "name": "mlp", "dim": 2, "hidden": 128, "layers": 3, "embed_dim": 64, "fourier_scale": 4.0,
    }  # fmt: skip


def test_subclass_of_a_builtin_records_its_own_name_and_arguments():
    class WideMLP(MLPScore):
        def __init__(self, dim: int = 2) -> None:
            super().__init__(dim=dim, hidden=16, layers=1, embed_dim=8)

    try:
        assert network_config(WideMLP()) == {"name": f"{__name__}.{WideMLP.__qualname__}", "dim": 2}
    finally:
        sd.NETWORK_REGISTRY.unregister(WideMLP)


def test_user_network_rules_and_bounds():
    with pytest.raises(TypeError, match="argument called 'name'"):

        class Named(sd.ScoreNetwork):
            def __init__(self, name: str = "x") -> None:
                super().__init__()

    with pytest.raises(TypeError, match="belongs to"):

        class Clash(sd.ScoreNetwork, name="mlp"):
            pass

    class Starred(sd.ScoreNetwork):
        def __init__(self, *sizes: int) -> None:
            super().__init__()
            self.lin = nn.Linear(sizes[0], sizes[0])

    class Huge(sd.ScoreNetwork):
        def __init__(self, width: int = 2) -> None:
            super().__init__()
            self.lin = nn.Linear(width, width)

    try:
        with pytest.raises(TypeError, match=r"through \*sizes"):
            network_config(Starred(3))
        name = sd.NETWORK_REGISTRY.name_of(Huge)
        with pytest.raises(ValueError, match="more than the sanity bound"):
            check_network_config({"name": name, "width": 40_000})  # 1.6e9 parameters, counted on the meta device
        with pytest.raises(ValueError, match="not arguments of"):
            check_network_config({"name": name, "depth": 3})
        with pytest.raises(TypeError, match="a checkpoint records only"):
            check_network_config({"name": name, "width": object()})
        with pytest.raises(ValueError, match="must be finite"):
            check_network_config({"name": name, "width": float("nan")})
        with pytest.raises(TypeError, match="not a scoresde.nets.ScoreNetwork"):
            model_config(ScoreModel(_Concat(2, 4), sd.VPSDE()))
    finally:
        sd.NETWORK_REGISTRY.unregister(Starred)
        sd.NETWORK_REGISTRY.unregister(Huge)
