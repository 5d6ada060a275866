"""Checkpoint integrity: a checksum over the whole payload, and every field checked before use."""

import zipfile

import pytest
import torch

import scoresde as sd
from scoresde import cli
from scoresde.datasets import load_dataset
from scoresde.nets import MAX_NETWORK_ELEMENTS, ScoreModel, build_network, check_network_config, network_config
from scoresde.training import CheckpointError, TrainConfig, checksum, load_checkpoint, read_checkpoint, train


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    sde = sd.VPSDE()
    torch.manual_seed(0)
    model = ScoreModel(build_network("mlp", dim=2, hidden=64, layers=2, embed_dim=16), sde)
    train(sde, model, load_dataset("moons", n=300), TrainConfig(steps=10, batch_size=32, warmup=3), out_dir=out,
          progress=False)  # fmt: skip
    return out / "last.pt"


def _flip(raw: bytes, offset: int, n: int = 1024) -> bytes:
    b = bytearray(raw)
    b[offset : offset + n] = bytes(x ^ 0xFF for x in b[offset : offset + n])
    return bytes(b)


def test_flipped_bytes_are_detected(good, tmp_path):
    raw = good.read_bytes()
    z = zipfile.ZipFile(good)
    big = max(z.infolist(), key=lambda i: i.file_size)  # a tensor's storage: torch.load reads it silently
    start = raw.find(z.read(big))
    assert start > 0 and big.file_size >= 2048
    for offset in (start + big.file_size // 2 - 512, len(raw) // 2):
        (tmp_path / "flip.pt").write_bytes(_flip(raw, offset))
        with pytest.raises(CheckpointError, match="corrupt"):
            read_checkpoint(tmp_path / "flip.pt")
    (tmp_path / "flip.pt").write_bytes(_flip(raw, start + big.file_size // 2 - 512))
    with pytest.raises(CheckpointError, match="SHA-256 checksum does not match"):
        load_checkpoint(tmp_path / "flip.pt")


def test_the_checksum_covers_every_field(good):
    ckpt = torch.load(good, weights_only=True)
    assert ckpt["sha256"] == checksum(ckpt)
    for key in ckpt:
        if key in ("sha256", "data", "noise"):
            continue
        changed = dict(ckpt)
        changed[key] = None
        assert checksum(changed) != ckpt["sha256"], key
    tweaked = torch.load(good, weights_only=True)
    name = next(iter(tweaked["ema"]))
    tweaked["ema"][name].view(-1)[0] = torch.nextafter(tweaked["ema"][name].view(-1)[0], torch.tensor(1e9))
    assert checksum(tweaked) != ckpt["sha256"]


def _edit(good, path, edit, rehash=True):
    ckpt = torch.load(good, weights_only=True)
    edit(ckpt)
    if rehash:
        ckpt["sha256"] = checksum(ckpt)
    torch.save(ckpt, path)
    return path


def _set(*keys, value):
    def edit(ckpt):
        d = ckpt
        for k in keys[:-1]:
            d = d[k]
        d[keys[-1]] = value

    return edit


BAD_FIELDS = [
    (_set("step", value=-5), "'step' must be an integer >= 0"),
    (_set("step", value=True), "'step' must be an integer >= 0"),
    (_set("step", value=2.0), "'step' must be an integer >= 0"),
    (_set("version", value="abc"), "format version must be an integer"),
    (_set("version", value=0), "format version must be an integer"),
    (_set("version", value=99), "newer than this scoresde"),
    (_set("model", value=[1, 2]), "'model' must map parameter names to tensors"),
    (_set("optimizer", value={"state": {}}), "optimizer state_dict"),
    (_set("scheduler", "last_epoch", value=3), "learning-rate schedule is at step 3"),
    (_set("rng", "generator", value=torch.zeros(3)), "byte-tensor states"),
    (_set("config", "sde", value={"class": "NoSuchSDE", "params": {}}), "unusable SDE configuration"),
    (_set("config", "train", "lr", value=-1.0), "unusable training settings"),
    (_set("config", "train", "seed", value=2**63), "unusable training settings"),
    (_set("config", "train", "bogus", value=1), "unknown training settings"),
    (_set("config", "model", "parameterization", value="x0"), "parameterization"),
    (_set("config", "model", "network", "hidden", value=10**6), r"hidden = 1000000 is out of range"),
    (_set("config", "model", "network", "layers", value=10**5), r"layers = 100000 is out of range"),
    (_set("config", "model", "network", "name", value="resnet"), "unknown network"),
    (_set("config", "data", "feature_shape", value=[2**13, 2**13]), "feature_shape"),
    (_set("config", "data", "feature_shape", value=[3]), "network expects feature shape"),
    (_set("config", "data", "scale", value=float("nan")), "data scale must be a finite number > 0"),
    (_set("history", "loss", value=[1.0, 2.0]), "equally long lists"),
    (_set("history", "step", value=[50]), "history steps"),
    (_set("data", value=torch.zeros(5, 3)), "'data' must be None or a floating tensor of shape"),
]


@pytest.mark.parametrize("edit, match", BAD_FIELDS)
def test_every_field_is_checked(good, tmp_path, edit, match):
    path = _edit(good, tmp_path / "bad.pt", edit)
    with pytest.raises(CheckpointError, match=match):
        read_checkpoint(path)


def test_a_stripped_checksum_is_refused(good, tmp_path):
    path = _edit(good, tmp_path / "bad.pt", lambda c: c.pop("sha256"), rehash=False)
    with pytest.raises(CheckpointError, match=r"lacks \['sha256'\]"):
        read_checkpoint(path)


def test_network_sanity_bounds_are_checked_without_allocating():
    for name in ("mlp", "unet", "dit"):
        net = build_network(name)
        state = torch.get_rng_state()
        assert check_network_config(network_config(net)) == sum(t.numel() for t in (*net.parameters(), *net.buffers()))
        assert torch.equal(state, torch.get_rng_state())  # built on the meta device: no random numbers drawn
    # 4 x 60000^2 weights: each field is in range, the total is not (and nothing is allocated)
    with pytest.raises(ValueError, match=f"more than the sanity bound {MAX_NETWORK_ELEMENTS:,}"):
        check_network_config({"name": "mlp", "hidden": 60_000, "layers": 4})
    with pytest.raises(ValueError, match="has no argument"):
        check_network_config({"name": "mlp", "width": 3})
    with pytest.raises(TypeError, match="must hold numbers"):
        check_network_config({"name": "mlp", "hidden": [None]})


def test_cli_refuses_a_huge_network_with_exit_2(good, tmp_path, capsys):
    path = _edit(good, tmp_path / "huge.pt", _set("config", "model", "network", "hidden", value=10**6))
    code = cli.main(["sample", "--checkpoint", str(path), "--out", str(tmp_path / "s"), "--quiet", "--n-samples", "10"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "hidden = 1000000 is out of range" in err and "Traceback" not in err
