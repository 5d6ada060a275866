"""User code trains and is checkpointed without editing the library.

An SDE, a network and a training objective defined here, outside the package, train with ``Trainer``,
are checkpointed, reload with ``load_checkpoint`` (identical outputs), resume bit-identically, and
sample with ``scoresde.sample``. Loading never imports code named in a file: a checkpoint whose class
is not registered (its module not imported) is refused with a message that names the module.
"""

from __future__ import annotations

import math
import sys
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import scoresde as sd
from scoresde.datasets import load_dataset
from scoresde.losses import Objective, dsm_loss, objective_config
from scoresde.nets import NETWORK_REGISTRY, MLPScore, ScoreModel, ScoreNetwork, network_config
from scoresde.sde import SDE_REGISTRY, sde_config, sde_from_config
from scoresde.training import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    TrainConfig,
    Trainer,
    checksum,
    load_checkpoint,
    read_checkpoint,
    save_atomic,
)

# -- the user's classes ---------------------------------------------------------------------------


class TheirCorrector(sd.Corrector):
    """A user's corrector: ``steps`` Langevin moves x <- x + delta s(x, t) + sqrt(2 delta) z with a fixed delta."""

    name = "their_langevin"

    def __init__(self, delta: float, steps: int = 1) -> None:
        super().__init__(steps=steps)
        self.delta = delta

    def update(self, rsde: Any, x: torch.Tensor, t: float, t_next: float, generator: torch.Generator) -> torch.Tensor:
        for _ in range(self.steps):
            score = rsde.score_fn(x, torch.full((x.shape[0],), t, dtype=x.dtype))
            noise = torch.randn(x.shape, generator=generator, dtype=x.dtype)
            x = x + self.delta * score + math.sqrt(2 * self.delta) * noise
        return x


class QuadraticVP(sd.LinearSDE):
    r"""A VP SDE with :math:`\beta(t) = b_0 + b_1 t^2`, written against ``LinearSDE`` directly.

    :math:`f = -\beta/2`, :math:`g = \sqrt\beta`, :math:`\log s = -\tfrac12(b_0 t + b_1 t^3/3)`,
    :math:`\sigma^2 = 1 - s^2`.
    """

    def __init__(self, b0: float = 0.1, b1: float = 15.0, T: float = 1.0) -> None:
        super().__init__(T)
        self.b0, self.b1 = float(b0), float(b1)

    def params(self) -> dict[str, Any]:
        return {"b0": self.b0, "b1": self.b1, "T": self.T}

    def beta(self, t: torch.Tensor) -> torch.Tensor:
        return self.b0 + self.b1 * t**2

    def drift_coef(self, t: torch.Tensor) -> torch.Tensor:
        return -0.5 * self.beta(t)

    def diffusion_coef(self, t: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(self.beta(t))

    def mean_coef(self, t: torch.Tensor) -> torch.Tensor:
        return torch.exp(-0.5 * (self.b0 * t + self.b1 * t**3 / 3))

    def std(self, t: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(-torch.expm1(-(self.b0 * t + self.b1 * t**3 / 3)))


class TinyNet(ScoreNetwork):
    """A small MLP conditioned on ``c`` by concatenation."""

    def __init__(self, dim: int = 2, width: int = 32, depth: int = 2) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(depth):
            layers += [nn.Linear(dim + 1 if i == 0 else width, width), nn.SiLU()]
        self.body = nn.Sequential(*layers, nn.Linear(width, dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.body(torch.cat([x, c[:, None].to(x.dtype)], dim=1))
        return out


class TruncatedDSM(Objective):
    r"""Denoising score matching with :math:`t \sim U[\varepsilon, t_{\max}]` only."""

    def __init__(self, t_max: float = 0.7, eps: float = 1e-3) -> None:
        self.t_max, self.eps = float(t_max), float(eps)

    def params(self) -> dict[str, Any]:
        return {"t_max": self.t_max, "eps": self.eps}

    def check(self, sde: sd.SDE, model: ScoreModel) -> None:
        if not self.eps < self.t_max <= sde.T:
            raise ValueError(f"TruncatedDSM needs eps < t_max <= T = {sde.T}, got t_max={self.t_max}")

    def loss(self, sde, model, x0, generator, z=None):  # type: ignore[no-untyped-def]
        u = torch.rand(x0.shape[0], generator=generator, dtype=x0.dtype, device=x0.device)
        return dsm_loss(sde, model, x0, generator=generator, t=self.eps + (self.t_max - self.eps) * u, z=z)


@contextmanager
def unregistered(registry: Any, cls: type):
    """Take ``cls`` out of ``registry`` for the block (as if its module had not been imported)."""
    name = registry.name_of(cls)
    registry.unregister(cls)
    try:
        yield name
    finally:
        registry.register(cls, name)


def _train(tmp_path, steps=20, objective: Any = "dsm", out="run", every=10):
    sde = QuadraticVP(b0=0.2, b1=12.0)
    torch.manual_seed(0)
    model = ScoreModel(TinyNet(dim=2, width=32), sde)
    data = load_dataset("eight_gaussians", n=512, seed=0)
    cfg = TrainConfig(steps=steps, batch_size=64, warmup=5, checkpoint_every=every, objective=objective)
    with Trainer(sde, model, data, cfg, out_dir=tmp_path / out) as tr:
        tr.train(progress=False)
    return tr


# -- the acceptance test --------------------------------------------------------------------------
def test_user_sde_and_network_train_checkpoint_reload_resume_and_sample(tmp_path):
    tr = _train(tmp_path)
    assert sde_config(tr.sde) == {"class": f"{__name__}.QuadraticVP", "params": {"b0": 0.2, "b1": 12.0, "T": 1.0}}
    assert tr.model_config["network"] == {"name": f"{__name__}.TinyNet", "dim": 2, "width": 32, "depth": 2}
    run = tmp_path / "run"
    assert {p.name for p in run.glob("*.pt")} == {"last.pt", "step_0000010.pt", "step_0000020.pt"}

    sde, model, data_cfg = load_checkpoint(run / "last.pt")
    assert type(sde) is QuadraticVP and sde.params() == tr.sde.params()
    assert type(model.net) is TinyNet and network_config(model.net) == tr.model_config["network"]
    assert data_cfg["name"] == "eight_gaussians"
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(1))
    t = torch.linspace(0.05, 1.0, 16)
    with torch.no_grad():
        assert torch.equal(model(x, t), tr.ema(x, t))

    # resumed from the step-10 checkpoint, the run ends bit-identical to the uninterrupted one
    with Trainer.from_checkpoint(run / "step_0000010.pt", out_dir=tmp_path / "resumed") as again:
        assert type(again.sde) is QuadraticVP and type(again.model.net) is TinyNet
        again.train(progress=False)
    for a, b in zip(again.model.state_dict().values(), tr.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)

    sampler = sd.PredictorCorrector(steps=20)
    ds = sd.sample(sde, model, sampler, shape=(64, 2), seed=0, progress=False)
    ref = sd.sample(tr.sde, tr.ema, sd.PredictorCorrector(steps=20), shape=(64, 2), seed=0, progress=False)
    final = ds["x"].isel(time=-1).values
    assert final.shape == (64, 2) and np.isfinite(final).all()
    np.testing.assert_array_equal(final, ref["x"].isel(time=-1).values)

    # the reloaded model on the user's SDE, sampled with the user's own corrector
    theirs = sd.PredictorCorrector(steps=20, corrector=TheirCorrector(delta=1e-3, steps=2))
    ds = sd.sample(sde, model, theirs, shape=(64, 2), seed=0, progress=False)
    assert ds.attrs["nfe"] == 20 * (1 + 2) and ds.attrs["sampler_corrector"] == "their_langevin"
    again = sd.sample(sde, model, theirs, shape=(64, 2), seed=0, progress=False)
    np.testing.assert_array_equal(ds["x"].values, again["x"].values)
    assert np.isfinite(ds["x"].values).all()
    assert not np.array_equal(ds["x"].isel(time=-1).values, final)  # the corrector did something


def test_user_sde_is_a_consistent_linear_sde():
    """The test SDE itself is right: (sigma^2)' = 2 f sigma^2 + g^2 and s' = f s (by autograd)."""
    sde = QuadraticVP(b0=0.2, b1=12.0)
    t = torch.linspace(0.05, 1.0, 9, dtype=torch.float64, requires_grad=True)
    (ds,) = torch.autograd.grad(sde.mean_coef(t).sum(), t)
    (dv,) = torch.autograd.grad((sde.std(t) ** 2).sum(), t)
    with torch.no_grad():
        f, g, s, sigma = sde.coefficients(t.detach(), like=t.detach())
        torch.testing.assert_close(ds, f * s, rtol=1e-12, atol=0)
        torch.testing.assert_close(dv, 2 * f * sigma**2 + g**2, rtol=1e-12, atol=0)


def test_user_objective_trains_records_and_resumes(tmp_path):
    objective = TruncatedDSM(t_max=0.6)
    tr = _train(tmp_path, objective=objective)
    ckpt = read_checkpoint(tmp_path / "run" / "step_0000010.pt")
    record = {"name": f"{__name__}.TruncatedDSM", "params": {"t_max": 0.6, "eps": 1e-3}}
    assert ckpt["config"]["train"]["objective"] == record == objective_config(objective)
    with Trainer.from_checkpoint(tmp_path / "run" / "step_0000010.pt", out_dir=tmp_path / "resumed") as again:
        assert type(again.objective) is TruncatedDSM and again.objective == objective
        again.train(progress=False)
    for a, b in zip(again.model.state_dict().values(), tr.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    # the objective is what trained: the plain DSM run ends elsewhere
    plain = _train(tmp_path, objective="dsm", out="plain")
    assert not torch.equal(plain.model.net.body[0].weight, tr.model.net.body[0].weight)


def test_user_objective_check_and_loss_contract(tmp_path):
    with pytest.raises(ValueError, match="t_max <= T"):
        _train(tmp_path, objective=TruncatedDSM(t_max=2.0))

    class NotScalar(TruncatedDSM):
        def loss(self, sde, model, x0, generator, z=None):  # type: ignore[no-untyped-def]
            return (model(x0, torch.full((x0.shape[0],), 0.5)) + x0).square().mean(dim=1)

    try:
        with pytest.raises(ValueError, match=r"shape \(64,\) at step 1; it must return a scalar"):
            _train(tmp_path, objective=NotScalar(), out="bad")
    finally:
        sd.OBJECTIVE_REGISTRY.unregister(NotScalar)
    with pytest.raises(ValueError, match="set them on the objective"):
        TrainConfig(objective=TruncatedDSM(), weighting="likelihood")


@pytest.mark.parametrize(
    ("registry", "cls", "what"),
    [
        (SDE_REGISTRY, QuadraticVP, "SDE"),
        (NETWORK_REGISTRY, TinyNet, "network"),
        (sd.OBJECTIVE_REGISTRY, TruncatedDSM, "objective"),
    ],
)
def test_loading_without_the_user_class_says_which_module_to_import(tmp_path, registry, cls, what):
    _train(tmp_path, steps=2, every=0, objective=TruncatedDSM())
    path = tmp_path / "run" / "last.pt"
    with unregistered(registry, cls) as name:
        assert name == f"{__name__}.{cls.__qualname__}"
        for load in (read_checkpoint, load_checkpoint, Trainer.from_checkpoint):
            with pytest.raises(CheckpointError, match=rf"unknown {what} '{name}'.*import the module") as err:
                load(path)
            assert f"the module is '{__name__}'" in str(err.value) and "corrupt" not in str(err.value)
    load_checkpoint(path)  # registered again: loads


def test_a_name_in_a_checkpoint_is_never_imported(tmp_path, monkeypatch):
    """A checkpoint naming a module that exists on sys.path is refused without importing it."""
    marker = tmp_path / "imported"
    (tmp_path / "scoresde_test_trap.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('x')\nclass Trap: pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    _train(tmp_path, steps=2, every=0)
    ckpt = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    for key in ("sde", "network", "objective"):
        bad = {**ckpt, "config": {**ckpt["config"], "train": dict(ckpt["config"]["train"])}}
        bad["config"]["model"] = {**ckpt["config"]["model"], "network": dict(ckpt["config"]["model"]["network"])}
        if key == "sde":
            bad["config"]["sde"] = {"class": "scoresde_test_trap.Trap", "params": {}}
        elif key == "network":
            bad["config"]["model"]["network"]["name"] = "scoresde_test_trap.Trap"
        else:
            bad["config"]["train"]["objective"] = {"name": "scoresde_test_trap.Trap", "params": {}}
        bad["sha256"] = checksum(bad)
        save_atomic(bad, tmp_path / f"{key}.pt")
        with pytest.raises(CheckpointError, match="unknown .* 'scoresde_test_trap.Trap'"):
            load_checkpoint(tmp_path / f"{key}.pt")
    assert not marker.exists() and "scoresde_test_trap" not in sys.modules


def test_v2_checkpoint_with_builtin_names_still_loads_and_records_are_unchanged(tmp_path):
    """A payload in the format written before user classes existed loads, and today's records equal it."""
    torch.manual_seed(0)
    net = MLPScore(dim=2, hidden=16, layers=1, embed_dim=8)
    sde = sd.VPSDE()
    model = ScoreModel(net, sde)
    data = load_dataset("eight_gaussians", n=64, seed=1)
    trainer = Trainer(sde, model, data, TrainConfig(steps=1, batch_size=8, checkpoint_every=0))
    sde_rec = {"class": "VPSDE", "params": {"beta_min": 0.1, "beta_max": 20.0, "T": 1.0}}
    net_rec = {"name": "mlp", "dim": 2, "hidden": 16, "layers": 1, "embed_dim": 8, "fourier_scale": 16.0}
    model_rec = {
        "network": net_rec,
        "parameterization": "noise",
        "scale_by_sigma": False,
        "time_input": "t",
        "feature_shape": [2],
    }
    train_rec = {
        "steps": 1, "batch_size": 8, "lr": 2e-3, "weight_decay": 0.0, "warmup": 100, "grad_clip": 1.0,
        "ema_decay": 0.999, "eps": 1e-5, "weighting": "sigma2", "reduce": "mean", "objective": "dsm", "seed": 0,
        "checkpoint_every": 0, "log_every": 10,
    }  # fmt: skip
    full = trainer.full_config()
    assert full["sde"] == sde_rec and full["model"] == model_rec and full["train"] == train_rec
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": 2,
        "step": 0,
        "model": model.state_dict(),
        "ema": model.state_dict(),
        "optimizer": trainer.optimizer.state_dict(),
        "scheduler": trainer.scheduler.state_dict(),
        "rng": {"generator": torch.Generator().manual_seed(0).get_state(), "torch": torch.get_rng_state()},
        "config": {"sde": sde_rec, "model": model_rec, "data": data.config(), "train": train_rec},
        "history": {"step": [], "loss": [], "lr": [], "grad_norm": []},
        "data": None,
        "noise": None,
    }
    payload["sha256"] = checksum(payload)
    save_atomic(payload, tmp_path / "v2.pt")
    sde2, model2, _ = load_checkpoint(tmp_path / "v2.pt")
    assert type(sde2) is sd.VPSDE and type(model2.net) is MLPScore
    x, t = torch.randn(4, 2), torch.full((4,), 0.3)
    with torch.no_grad():
        assert torch.equal(model2(x, t), model.eval()(x, t))
    with Trainer.from_checkpoint(tmp_path / "v2.pt", out_dir=tmp_path / "cont") as again:
        assert again.config.objective == "dsm"
        again.train(progress=False)
    assert again.step == 1 and math.isfinite(again.history["loss"][-1])


# -- the registries -------------------------------------------------------------------------------
def test_sde_registry_names_and_rules():
    assert SDE_REGISTRY["VPSDE"] is sd.VPSDE and SDE_REGISTRY["DDPMSDE"] is sd.DDPMSDE
    assert SDE_REGISTRY[f"{__name__}.QuadraticVP"] is QuadraticVP
    assert "LinearSDE" not in SDE_REGISTRY and "VariancePreservingSDE" not in SDE_REGISTRY  # abstract

    class Named(QuadraticVP, name="quadratic-vp-for-test"):
        pass

    class _Private(QuadraticVP):
        pass

    class Off(QuadraticVP, register=False):
        pass

    try:
        assert sde_from_config(sde_config(Named(b0=0.3))).params() == Named(b0=0.3).params()
        assert type(sde_from_config({"class": "quadratic-vp-for-test", "params": {}})) is Named
        for cls in (_Private, Off):
            with pytest.raises(TypeError, match="is not registered"):
                sde_config(cls())
        with pytest.raises(TypeError, match="belongs to"):

            class Clash(QuadraticVP, name="VPSDE"):
                pass

    finally:
        SDE_REGISTRY.unregister(Named)
    with pytest.raises(sd.UnregisteredError, match="import the module"):
        sde_from_config({"class": "quadratic-vp-for-test", "params": {}})


def test_sde_params_must_rebuild_the_sde():
    class Forgetful(QuadraticVP):
        def __init__(self, width: float, T: float = 1.0) -> None:
            super().__init__(T=T)
            self.width = width

        def params(self) -> dict[str, Any]:
            return {"T": self.T}  # forgets width

    class Opaque(QuadraticVP):
        def params(self) -> dict[str, Any]:
            return {"b0": torch.tensor(0.1)}

    try:
        with pytest.raises(TypeError, match="not arguments of"):
            sde_config(Forgetful(2.0))
        with pytest.raises(TypeError, match="is a Tensor"):
            sde_config(Opaque())
    finally:
        SDE_REGISTRY.unregister(Forgetful)
        SDE_REGISTRY.unregister(Opaque)
