"""Class-conditional score networks, label dropout, labelled data sets and time-dependent classifiers.

The exact references are the labelled Gaussian mixtures of :mod:`scoresde.mixture`: the 8-Gaussian ring as
two classes of four neighbouring modes, whose class-conditional law puts weight 1/4 on each mode of the
class and none elsewhere, and whose exact noisy classifier is ``mixture.classifier(sde)``.
"""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import scoresde as sd
from scoresde.conditioning import ClassifierGuidance, sample_class
from scoresde.datasets import Dataset, load_dataset
from scoresde.nets import DiT, MLPClassifier, MLPScore, NoisyClassifier, ScoreModel, UNet, model_config
from scoresde.training import (
    CheckpointError,
    TrainConfig,
    Trainer,
    load_checkpoint,
    load_classifier,
    train_classifier,
)


def two_class_ring() -> sd.GaussianMixture:
    """The 8-Gaussian ring, modes 0-3 (the upper half and its right end) class 0, modes 4-7 class 1."""
    g = sd.eight_gaussians()
    return sd.GaussianMixture(g.weights, g.means, g.covariances, labels=[0, 0, 0, 0, 1, 1, 1, 1])


def nearest_mode(x: torch.Tensor, mixture: sd.GaussianMixture) -> torch.Tensor:
    return torch.cdist(x.double(), mixture.means).argmin(dim=1)


SMALL_UNET = dict(base=8, channel_mults=(1, 2), embed_dim=16, groups=4)
SMALL_DIT = dict(image_size=8, hidden=16, depth=1, heads=2, patch_size=4)


# -- networks ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["mlp", "unet", "dit"])
def test_conditional_networks_depend_on_the_label_and_round_trip(kind):
    torch.manual_seed(0)
    net, x = {
        "mlp": (MLPScore(dim=2, hidden=16, num_classes=3), torch.randn(5, 2)),
        "unet": (UNet(num_classes=3, **SMALL_UNET), torch.randn(5, 1, 8, 8)),
        "dit": (DiT(num_classes=3, **SMALL_DIT), torch.randn(5, 1, 8, 8)),
    }[kind]
    if kind == "dit":  # adaLN-Zero: an untrained DiT outputs 0 whatever the label; give it some weights
        with torch.no_grad():
            for p in net.parameters():
                p.add_(0.1 * torch.randn_like(p))
    model = ScoreModel(net, sd.VPSDE())
    t = torch.full((5,), 0.5)
    s0, s1, null = model(x, t, 0), model(x, t, 1), model(x, t)
    assert not torch.allclose(s0, s1)
    torch.testing.assert_close(null, model(x, t, 3))  # None is the null class, index num_classes
    per_sample = torch.tensor([0, 1, 0, 1, 3])
    mixed = model(x, t, per_sample)
    torch.testing.assert_close(mixed[0], s0[0])
    torch.testing.assert_close(mixed[1], s1[1])
    torch.testing.assert_close(mixed[4], null[4])
    config = model_config(model)
    assert config["network"]["num_classes"] == 3
    rebuilt = sd.nets.model_from_config(config, sd.VPSDE())
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    assert torch.equal(rebuilt(x, t, per_sample), mixed)


def test_unconditional_networks_are_unchanged_and_refuse_labels():
    torch.manual_seed(3)
    net = MLPScore(dim=2, hidden=16)
    assert "num_classes" not in net.config  # old records and new unconditional ones are the same
    model = ScoreModel(net, sd.VPSDE())
    assert model.num_classes is None and not model.conditional
    with pytest.raises(ValueError, match="unconditional"):
        model(torch.randn(3, 2), 0.5, 1)
    with pytest.raises(ValueError, match="unconditional"):
        net(torch.randn(3, 2), torch.rand(3), torch.zeros(3, dtype=torch.long))
    # a conditional network draws its other weights as the unconditional one does (label table last)
    torch.manual_seed(3)
    cond = MLPScore(dim=2, hidden=16, num_classes=4)
    for key, value in net.state_dict().items():
        assert torch.equal(cond.state_dict()[key], value)


@settings(max_examples=40, deadline=None)
@given(
    batch=st.integers(1, 6),
    kind=st.sampled_from(["too_big", "negative", "float", "bool", "wrong_length", "two_dim", "list"]),
    dtype=st.sampled_from([torch.int64, torch.int32, torch.int16, torch.uint8]),
)
def test_bad_labels_are_refused_naming_the_argument(batch, kind, dtype):
    model = ScoreModel(MLPScore(dim=2, hidden=8, num_classes=3), sd.VPSDE())
    x = torch.zeros(batch, 2)
    if kind == "negative" and dtype == torch.uint8:
        kind = "too_big"
    c = {
        "too_big": torch.full((batch,), 4, dtype=dtype),
        "negative": torch.full((batch,), -1, dtype=dtype),
        "float": torch.zeros(batch),
        "bool": torch.zeros(batch, dtype=torch.bool),
        "wrong_length": torch.zeros(batch + 1, dtype=dtype),
        "two_dim": torch.zeros(batch, 1, dtype=dtype),
        "list": [0] * batch,
    }[kind]
    error = TypeError if kind in ("float", "bool", "list") else ValueError
    with pytest.raises(error, match=r"\bc\b"):
        model(x, 0.5, c)
    # and the good ones of every integer dtype work: a (batch,) tensor, a 0-d tensor, an int
    good = torch.arange(batch, dtype=dtype) % 4
    assert model(x, 0.5, good).shape == (batch, 2)
    assert model(x, 0.5, torch.tensor(2, dtype=dtype)).shape == (batch, 2)
    torch.testing.assert_close(model(x, 0.5, 2), model(x, 0.5, torch.full((batch,), 2, dtype=dtype)))


@pytest.mark.parametrize("value", [0, -1, 1.5, True, "3"])
def test_num_classes_is_checked(value):
    with pytest.raises((TypeError, ValueError), match="num_classes"):
        MLPScore(num_classes=value)


# -- data sets ------------------------------------------------------------------------------------------
def test_labelled_data_sets():
    digits = load_dataset("digits")
    assert digits.num_classes == 10 and digits.labels.shape == (1797,)
    from sklearn.datasets import load_digits

    assert np.array_equal(digits.labels.numpy(), load_digits().target)
    ring = load_dataset("eight_gaussians", n=4000)
    assert ring.num_classes == 8 and ring.labels.dtype == torch.int64 and ring.labels.shape == (4000,)
    mixture = sd.eight_gaussians()
    # the label is the component the point was drawn from: nearly always the nearest mode (modes 2.8 apart, std 0.35)
    agree = (nearest_mode(ring.unscale(ring.data), mixture) == ring.labels).double().mean()
    assert agree > 0.99
    two = load_dataset(two_class_ring(), n=4000)
    assert two.num_classes == 2
    assert ((nearest_mode(two.unscale(two.data), mixture) >= 4).long() == two.labels).double().mean() > 0.99
    moons = load_dataset("moons", n=2000)
    x = moons.unscale(moons.data)
    assert moons.num_classes == 2
    assert float(x[moons.labels == 0, 1].mean()) > 0.5  # the upper moon: y = sin(theta), mean 2/pi
    assert float(x[moons.labels == 1, 1].mean()) < 0.0  # the lower one: y = 1/2 - sin(theta), mean -0.14
    assert load_dataset("swiss_roll", n=100).labels is None
    arr = load_dataset(np.random.default_rng(0).normal(size=(10, 2)), labels=np.arange(10) % 3)
    assert arr.num_classes == 3
    with pytest.raises(TypeError, match="labels"):
        load_dataset(np.zeros((10, 2)), labels=np.zeros(10))
    with pytest.raises(ValueError, match="labels"):
        load_dataset(np.zeros((10, 2)), labels=np.zeros(9, dtype=int))
    with pytest.raises(ValueError, match="labels"):
        load_dataset("moons", n=10, labels=np.zeros(10, dtype=int))


def test_toy_points_are_unchanged_by_labels():
    """The labelled draw returns the very points of the unlabelled one (same seed, same order)."""
    from scoresde.datasets import toy_sample

    for name in ("moons", "eight_gaussians"):
        x = toy_sample(name, 500, seed=4)
        d = load_dataset(name, n=500, seed=4, dtype=torch.float64)
        np.testing.assert_allclose(d.unscale(d.data).numpy(), x, rtol=0, atol=1e-12)


# -- training -------------------------------------------------------------------------------------------
def _trainer(label_dropout: float, steps: int, out_dir=None, seed: int = 0) -> Trainer:
    data = load_dataset(two_class_ring(), n=4000, seed=seed)
    torch.manual_seed(seed)
    model = ScoreModel(MLPScore(dim=2, hidden=64, num_classes=2), sd.VPSDE())
    cfg = TrainConfig(steps=steps, batch_size=256, lr=3e-3, warmup=20, ema_decay=0.99, label_dropout=label_dropout)
    return Trainer(sd.VPSDE(), model, data, cfg, out_dir=out_dir)


def _class_weights(model, data, label, n=1000, weight=0.0):
    ds = sample_class(
        sd.VPSDE(), model, label, sampler=sd.EulerMaruyama(100), weight=weight, shape=(n, 2), seed=1, progress=False
    )
    x = data.unscale(torch.as_tensor(ds["x"].isel(time=-1).values))
    return torch.bincount(nearest_mode(x, sd.eight_gaussians()), minlength=8).double() / n


@pytest.mark.slow
def test_conditional_mlp_samples_each_class():
    """For each class the samples' mode weights are near the exact conditional: 1/4 on each mode of the class."""
    tr = _trainer(label_dropout=0.2, steps=600)
    tr.train(progress=False)
    model = tr.ema
    for label in (0, 1):
        w = _class_weights(model, tr.data, label)
        own = w[4 * label : 4 * label + 4]
        assert float(own.sum()) > 0.9, (label, w)
        assert float((own - 0.25).abs().max()) < 0.12, (label, w)
    # the null class learnt the unconditional law: both halves of the ring
    w = _class_weights(model, tr.data, None)
    assert 0.3 < float(w[:4].sum()) < 0.7, w


def test_label_dropout_zero_and_one():
    """Dropout 1 feeds only the null class (the label-embedding rows of the classes get no gradient); dropout 0
    never feeds it."""
    for p, trained_rows in ((0.0, [0, 1]), (1.0, [2])):
        tr = _trainer(label_dropout=p, steps=3)
        table = tr.model.net.label_embed.embed.weight.detach().clone()
        tr.train(progress=False)
        changed = (tr.model.net.label_embed.embed.weight.detach() != table).any(dim=1).nonzero().flatten().tolist()
        assert changed == trained_rows, (p, changed)
    # dropout 0 and 1 train differently from the same start; 0 < p < 1 draws its mask from the run's generator
    a, b = _trainer(0.3, 5), _trainer(0.3, 5)
    a.train(progress=False), b.train(progress=False)
    for (k, va), vb in zip(a.model.state_dict().items(), b.model.state_dict().values(), strict=True):
        assert torch.equal(va, vb), k


def test_conditional_checkpoint_round_trip(tmp_path):
    tr = _trainer(label_dropout=0.1, steps=4, out_dir=tmp_path)
    tr.train(progress=False)
    tr.close()
    sde, ema, data_cfg = load_checkpoint(tmp_path / "last.pt")
    assert ema.num_classes == 2 and data_cfg["num_classes"] == 2
    x, t = torch.randn(6, 2), torch.full((6,), 0.3)
    c = torch.tensor([0, 1, 2, 0, 1, 2])
    torch.testing.assert_close(ema(x, t, c), tr.ema(x, t, c), rtol=0, atol=0)
    # resuming continues bit-identically, with the stored data and labels
    cont = Trainer.from_checkpoint(tmp_path / "last.pt", steps=6)
    assert torch.equal(cont.data.labels, tr.data.labels)
    cont.train(progress=False)
    cont.close()
    ref = _trainer(label_dropout=0.1, steps=6)
    ref.train(progress=False)
    for (k, va), vb in zip(cont.model.state_dict().items(), ref.model.state_dict().values(), strict=True):
        assert torch.equal(va, vb), k


def test_old_checkpoints_load_unconditional(tmp_path):
    """A checkpoint written before labels existed (no num_classes, no label fields) still loads."""
    data = load_dataset("eight_gaussians", n=500)
    model = ScoreModel(MLPScore(dim=2, hidden=8), sd.VPSDE())
    tr = Trainer(sd.VPSDE(), model, data, TrainConfig(steps=2, batch_size=16), out_dir=tmp_path)
    tr.train(progress=False)
    tr.close()
    ckpt = torch.load(tmp_path / "last.pt", weights_only=True)
    assert "labels" not in ckpt  # a named data set regenerates its labels
    ckpt["config"]["data"].pop("num_classes")
    assert "label_dropout" not in ckpt["config"]["train"]  # recorded only when not 0
    ckpt["sha256"] = sd.training.checksum(ckpt)
    torch.save(ckpt, tmp_path / "old.pt")
    _, ema, _ = load_checkpoint(tmp_path / "old.pt")
    assert ema.num_classes is None
    bad = dict(ckpt, labels=torch.zeros(3))
    bad["sha256"] = sd.training.checksum(bad)
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="labels"):
        load_checkpoint(tmp_path / "bad.pt")


def test_conditional_training_refuses_what_it_cannot_do():
    model = ScoreModel(MLPScore(dim=2, hidden=8, num_classes=2), sd.VPSDE())
    unlabelled = load_dataset("swiss_roll", n=100)
    with pytest.raises(ValueError, match="no labels"):
        Trainer(sd.VPSDE(), model, unlabelled, TrainConfig(steps=1))
    with pytest.raises(ValueError, match="num_classes=8"):
        Trainer(sd.VPSDE(), model, load_dataset("eight_gaussians", n=100), TrainConfig(steps=1))
    plain = ScoreModel(MLPScore(dim=2, hidden=8), sd.VPSDE())
    with pytest.raises(ValueError, match="label_dropout"):
        Trainer(sd.VPSDE(), plain, load_dataset("moons", n=100), TrainConfig(steps=1, label_dropout=0.1))
    with pytest.raises(ValueError, match="label_dropout"):
        TrainConfig(label_dropout=1.5)

    class NoLabels(sd.Objective, register=False):
        def loss(self, sde, model, x0, generator, z=None):
            return sd.dsm_loss(sde, model, x0, generator=generator)

    with pytest.raises(TypeError, match="class labels"):
        Trainer(sd.VPSDE(), model, load_dataset("moons", n=100), TrainConfig(steps=1, objective=NoLabels()))


@pytest.mark.parametrize("objective", ["dsm", "edm", "ddpm"])
def test_objectives_feed_the_labels(objective):
    """Every built-in objective trains s(x, t, c): its loss differs with the labels (for the same draws)."""
    sde = sd.DDPMSchedule.linear(T=50).sde() if objective == "ddpm" else sd.VPSDE()
    obj = TrainConfig(objective="ddpm").make_objective() if objective == "ddpm" else None
    obj = obj or (sd.EDMObjective() if objective == "edm" else sd.DenoisingScoreMatching())
    torch.manual_seed(0)
    model = ScoreModel(MLPScore(dim=2, hidden=16, num_classes=2), sde)
    x0 = torch.randn(64, 2)
    losses = []
    for labels in (torch.zeros(64, dtype=torch.long), torch.ones(64, dtype=torch.long), None):
        g = torch.Generator().manual_seed(0)
        losses.append(float(obj.loss(sde, model, x0, g, labels=labels).detach()))
    assert losses[0] != losses[1] and losses[2] not in losses[:2]


# -- classifiers ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("sde", [sd.VPSDE(), sd.VESDE(sigma_max=10.0)], ids=repr)
def test_trained_classifier_approaches_the_exact_one(sde, tmp_path):
    mixture = two_class_ring()
    data = load_dataset(mixture, n=4000, scaling="none")
    torch.manual_seed(0)
    net = MLPClassifier(features=2, num_classes=2, hidden=64, layers=2)
    cfg = TrainConfig(steps=400, batch_size=256, lr=3e-3, warmup=20, ema_decay=0.99)
    clf = train_classifier(sde, net, data, cfg, out_path=tmp_path / "clf.pt", progress=False)
    exact = mixture.classifier(sde)
    g = torch.Generator().manual_seed(5)
    errors = {}
    for t in (0.05, 0.3, 0.7):
        x0 = mixture.sample(2000, g)
        mean, std = sde.marginal_prob(x0, torch.full((2000,), t))
        x = mean + std[:, None] * torch.randn(x0.shape, generator=g)
        p_hat = clf(x, t).exp()
        p = exact(x.double(), t).exp()
        errors[t] = float((p_hat.double() - p).abs().mean())
    assert max(errors.values()) < 0.08, errors
    # reloaded it is the same classifier, and it plugs into classifier guidance
    again = load_classifier(tmp_path / "clf.pt")
    x = torch.randn(7, 2)
    torch.testing.assert_close(again(x, 0.4), clf(x, 0.4), rtol=0, atol=0)
    guided = ClassifierGuidance(mixture.score(sde), again, label=1, weight=1.0)
    grad = guided.grad_log_prob(x, 0.4)
    assert grad.shape == (7, 2) and torch.isfinite(grad).all()


def test_classifier_checks_and_file_errors(tmp_path):
    data = load_dataset("moons", n=200)
    net = MLPClassifier(features=2, num_classes=2, hidden=8, layers=1)
    with pytest.raises(ValueError, match="labelled"):
        train_classifier(sd.VPSDE(), net, load_dataset("swiss_roll", n=50), TrainConfig(steps=1), progress=False)
    with pytest.raises(ValueError, match="num_classes=10"):
        train_classifier(sd.VPSDE(), net, load_dataset("digits"), TrainConfig(steps=1), progress=False)
    with pytest.raises(ValueError, match="score-matching"):
        train_classifier(sd.VPSDE(), net, data, TrainConfig(steps=1, label_dropout=0.5), progress=False)
    clf = train_classifier(sd.VPSDE(), net, data, TrainConfig(steps=2, batch_size=8), tmp_path / "c.pt", progress=False)
    assert isinstance(clf, NoisyClassifier) and clf.history["step"] == [2]
    with pytest.raises(ValueError, match="features"):
        clf(torch.zeros(3, 3), 0.5)
    raw = (tmp_path / "c.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError):
        load_classifier(tmp_path / "cut.pt")
    payload = torch.load(tmp_path / "c.pt", weights_only=True)
    payload["weights"]["out.bias"] += 1.0
    torch.save(payload, tmp_path / "tampered.pt")
    with pytest.raises(CheckpointError, match="checksum"):
        load_classifier(tmp_path / "tampered.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_classifier(tmp_path / "missing.pt")


def test_digit_classifier_takes_images():
    """An MLP classifier flattens 8x8 digit images: logits of shape (batch, 10), log-probabilities summing to 1."""
    net = MLPClassifier(features=64, num_classes=10, hidden=16, layers=1)
    clf = NoisyClassifier(net, sd.VPSDE())
    out = clf(torch.zeros(4, 1, 8, 8), torch.rand(4))
    assert out.shape == (4, 10)
    torch.testing.assert_close(out.exp().sum(1), torch.ones(4))
    assert math.isclose(float(Dataset(torch.zeros(3, 2), "x", labels=torch.tensor([0, 2, 1])).num_classes), 3)


# -- CLI ------------------------------------------------------------------------------------------------
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _cli(*argv: str) -> int:
    from scoresde import cli

    return cli.main([*argv])


@pytest.fixture(scope="module")
def conditional_digits(tmp_path_factory):
    out = tmp_path_factory.mktemp("cdigits")
    code = _cli(
        "train", "--data", "digits", "--conditional", "--label-dropout", "0.2", "--hidden", "8",
        "--steps", "3", "--batch-size", "8", "--out", str(out), "-q",
    )  # fmt: skip
    assert code == 0
    return out / "last.pt"


def _open(path):
    import xarray as xr

    with xr.open_dataset(path) as ds:
        return ds.load()


def test_cli_trains_a_conditional_unet(conditional_digits):
    ckpt = torch.load(conditional_digits, weights_only=True)
    assert ckpt["config"]["model"]["network"]["name"] == "unet"
    assert ckpt["config"]["model"]["network"]["num_classes"] == 10
    assert ckpt["config"]["train"]["label_dropout"] == 0.2


def test_cli_refuses_label_options_without_labels(tmp_path, capsys):
    assert _cli("train", "--data", "moons", "--label-dropout", "0.1", "--steps", "1", "--out", str(tmp_path / "a")) == 2
    assert "--conditional" in capsys.readouterr().err
    assert _cli("train", "--data", "swiss_roll", "--conditional", "--steps", "1", "--out", str(tmp_path / "b")) != 0
    assert "labelled data" in capsys.readouterr().err


def test_cli_samples_a_class_with_guidance(conditional_digits, tmp_path):
    out = tmp_path / "class3"
    args = ["--class", "3", "--guidance", "2.0", "--sampler", "ddim", "--steps", "4", "--n-samples", "6"]
    assert _cli("sample", "--checkpoint", str(conditional_digits), *args, "--out", str(out), "-q") == 0
    ds = _open(out / "samples.nc")
    assert ds.attrs["class_label"] == 3 and ds.attrs["guidance_weight"] == 2.0
    assert ds.attrs["conditioning_method"] == "classifier_free"
    assert ds["x_data"].shape == (6, 1, 8, 8)
    assert (out / "samples.png").read_bytes()[:8] == PNG_MAGIC
    assert (
        _cli("sample", "--checkpoint", str(conditional_digits), "--class", "10", "--out", str(tmp_path / "x")) == 2
    )  # out of range for the 10 digit classes
    assert (
        _cli("sample", "--checkpoint", str(conditional_digits), "--guidance", "1", "--out", str(tmp_path / "y")) == 2
    )  # --guidance without --class


def test_cli_inpainting_by_replacement_honours_the_observation(conditional_digits, tmp_path):
    out = tmp_path / "inpaint"
    args = ["--inpaint", "half", "--truth", "5", "--sampler", "em", "--steps", "5", "--n-samples", "4"]
    assert _cli("sample", "--checkpoint", str(conditional_digits), *args, "--out", str(out), "-q") == 0
    ds = _open(out / "samples.nc")
    from sklearn.datasets import load_digits

    truth = load_digits().images[5]
    np.testing.assert_allclose(ds["truth"].values[0], truth, atol=1e-5)
    # replacement puts the observed pixels (the top half) back exactly
    np.testing.assert_allclose(ds["x_data"].values[:, 0, :4, :], np.broadcast_to(truth[:4], (4, 4, 8)), atol=1e-5)
    assert np.isnan(ds["observation"].values[0, 4:]).all()
    assert ds.attrs["conditioning_method"] == "replacement" and ds.attrs["inverse_problem"] == "inpaint"
    assert (out / "samples.png").read_bytes()[:8] == PNG_MAGIC


def test_cli_super_resolution(conditional_digits, tmp_path):
    out = tmp_path / "sr"
    args = ["--super-resolution", "4", "--sampler", "em", "--steps", "5", "--n-samples", "3"]
    assert _cli("sample", "--checkpoint", str(conditional_digits), *args, "--out", str(out), "-q") == 0
    ds = _open(out / "samples.nc")
    from sklearn.datasets import load_digits

    truth = load_digits().images[0]
    pooled = truth.reshape(4, 2, 4, 2).mean(axis=(1, 3))  # y = A x: the 2 x 2 block averages
    np.testing.assert_allclose(ds["observation"].values[0], np.kron(pooled, np.ones((2, 2))), atol=1e-5)
    assert ds.attrs["conditioning_method"] == "pigdm" and ds.attrs["clip_denoised"].startswith("[-1, 1]")
    assert ds["x_data"].shape == (3, 1, 8, 8) and np.isfinite(ds["x_data"].values).all()
    assert (out / "samples.png").read_bytes()[:8] == PNG_MAGIC
    assert (
        _cli(
            "sample",
            "--checkpoint",
            str(conditional_digits),
            "--super-resolution",
            "4",
            "--posterior-method",
            "replacement",
            "--out",
            str(tmp_path / "z"),
        )
        == 2
    )  # replacement needs a mask: it cannot solve super-resolution
    assert (
        _cli("sample", "--checkpoint", str(conditional_digits), "--super-resolution", "3", "--out", str(tmp_path / "w"))
        == 2
    )  # 3 does not divide 8
