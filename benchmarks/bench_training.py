"""Speed benchmark: ``Trainer`` throughput against a minimal hand-written PyTorch training loop.

Requirement (CPU): training throughput (steps/s) of ``scoresde.Trainer`` versus a minimal
hand-written loop with the same model, batch and loss, EMA and logging included, measured side by
side in one run: ``ratio = trainer wall time / hand-loop wall time`` (= hand steps/s / trainer
steps/s) must be <= 1.10.

The setting: ``ScoreModel(build_network("mlp", dim=2), VPSDE())`` (default MLP, eps
parameterisation) on ``load_dataset("eight_gaussians")`` (20,000 points), batch 512, the default
``TrainConfig`` (AdamW lr 2e-3 with 100-step linear warm-up, gradient clipping at 1.0, EMA 0.999
with warm-up, a history entry every 10 steps), no ``out_dir`` (no checkpoints). Optionally the same
for the default U-Net on scikit-learn's 8x8 digits, batch 64.

Variants, each started from the same initial weights and seed:

* ``Trainer.train``: ``Trainer(sde, model, data, TrainConfig(batch_size=...)).train(steps=N,
  progress=False)``; only the ``train`` call is timed (construction is not);
* ``hand loop (clip + EMA)``: what a competent user writes by hand: ``torch.randint`` indices,
  ``scoresde.dsm_loss`` (the same loss function, same generator), ``zero_grad`` / ``backward`` /
  ``clip_grad_norm_`` / ``AdamW.step`` and the same EMA update (``torch.optim.swa_utils.get_ema_multi_avg_fn``
  with the same warmed-up decay); no learning-rate warm-up, no logging, no host syncs of its own;
* ``hand loop, bare``: the same without clipping and without EMA, to show what those two cost.

Before timing, a hand loop *with* the trainer's learning-rate warm-up is checked to reproduce the
trainer's weights bit for bit after a few steps, so both do exactly the same arithmetic.

Repetitions are interleaved: every round runs each variant once for ``N`` steps (the order rotates
from round to round); the trainer's ratio is taken per round against the hand loop of the same
round, and the table shows medians over the rounds. A second table times, in isolation, each
piece of bookkeeping that ``Trainer.train_step`` / ``train`` does beyond the hand loop.
This is a measurement, not a test: the exit code is 0.

Usage::

    python benchmarks/bench_training.py                   # MLP 7 x 300 steps, U-Net 7 x 30 steps
    python benchmarks/bench_training.py --quick           # smoke check: MLP 2 x 100, U-Net 1 x 5
    python benchmarks/bench_training.py --threads 1 --steps 500 --repeats 7 --no-unet
    python benchmarks/bench_training.py --out results.md  # also write the tables (.json: as JSON)
"""

from __future__ import annotations

import argparse
import copy
import gc
import math
import os
import statistics
import sys
import time
import timeit
from collections.abc import Callable
from typing import Any

import torch
from _common import environment, write_result  # benchmarks/ is sys.path[0] when a script runs
from torch.optim.swa_utils import get_ema_multi_avg_fn

import scoresde as sd
from scoresde.losses import dsm_loss
from scoresde.training import TrainConfig, Trainer

TARGET_RATIO = 1.10
TRAINER = "Trainer.train"
HAND = "hand loop (clip + EMA)"
BARE = "hand loop, bare (no clip, no EMA)"
VARIANTS = (TRAINER, HAND, BARE)


# ---------------------------------------------------------------------------------------
# the set-ups
# ---------------------------------------------------------------------------------------
class Setup:
    """One model / data / batch combination: a template model (fixed initial weights) and data."""

    def __init__(self, name: str, network: str, data: str, batch: int, net_kwargs: dict[str, Any]) -> None:
        self.name = name
        self.sde = sd.VPSDE()
        self.data = sd.load_dataset(data)
        self.batch = batch
        torch.manual_seed(0)
        self.template = sd.ScoreModel(sd.build_network(network, **net_kwargs), self.sde)
        self.n_params = sum(p.numel() for p in self.template.parameters())
        self.description = (
            f"{network} {net_kwargs or '(defaults)'}, {self.n_params:,} parameters, "
            f"data {data} {tuple(self.data.data.shape)}, batch {batch}"
        )

    def config(self) -> TrainConfig:
        return TrainConfig(batch_size=self.batch)

    def trainer(self) -> Trainer:
        return Trainer(self.sde, copy.deepcopy(self.template), self.data, self.config())


def mlp_setup(batch: int = 512) -> Setup:
    return Setup("MLP", "mlp", "eight_gaussians", batch, {"dim": 2})


def unet_setup(batch: int = 64) -> Setup:
    return Setup("U-Net", "unet", "digits", batch, {})


class HandLoop:
    """The hand-written loop's state: model, EMA copy, AdamW, generator (seeded like the trainer's)."""

    def __init__(self, setup: Setup) -> None:
        cfg = setup.config()
        self.cfg = cfg
        self.sde = setup.sde
        self.x = setup.data.data
        self.batch = setup.batch
        self.model = copy.deepcopy(setup.template)
        self.ema = copy.deepcopy(self.model).eval()
        for p in self.ema.parameters():
            p.requires_grad_(False)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.step = 0

    def run(self, steps: int, clip: bool = True, ema: bool = True, warmup: bool = False) -> None:
        """``steps`` training steps; ``warmup`` sets the trainer's warmed-up lr (equivalence check only)."""
        cfg, sde, x, model, opt, gen = self.cfg, self.sde, self.x, self.model, self.opt, self.gen
        params = list(model.parameters())
        ema_params = list(self.ema.parameters())
        n = x.shape[0]
        model.train()
        for _ in range(steps):
            k = self.step
            if warmup:
                opt.param_groups[0]["lr"] = cfg.lr * min(1.0, (k + 1) / cfg.warmup)
            idx = torch.randint(0, n, (self.batch,), generator=gen)
            loss = dsm_loss(sde, model, x[idx], weighting=cfg.weighting, eps=cfg.eps, reduce=cfg.reduce, generator=gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if clip:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            if ema:
                with torch.no_grad():
                    get_ema_multi_avg_fn(min(cfg.ema_decay, (1 + k) / (10 + k)))(ema_params, params, None)
            self.step += 1


def check_equivalence(setup: Setup, steps: int = 12) -> bool:
    """The hand loop with the trainer's lr warm-up gives bit-identical weights and EMA weights."""
    tr = setup.trainer()
    tr.train(steps=steps, progress=False)
    hand = HandLoop(setup)
    hand.run(steps, warmup=True)
    pairs = [
        *zip(tr.model.parameters(), hand.model.parameters(), strict=True),
        *zip(tr.ema.parameters(), hand.ema.parameters(), strict=True),
    ]
    return all(torch.equal(a, b) for a, b in pairs)


# ---------------------------------------------------------------------------------------
# the measurements
# ---------------------------------------------------------------------------------------
class Meter:
    """Wall time and process CPU time (all threads) over a ``with`` block."""

    def __enter__(self) -> Meter:
        gc.collect()
        self._w, self._c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self._w
        self.cpu = time.process_time() - self._c


def time_variant(setup: Setup, variant: str, steps: int) -> Meter:
    """A fresh trainer / hand loop (untimed), then ``steps`` timed steps."""
    if variant == TRAINER:
        tr = setup.trainer()
        with Meter() as m:
            tr.train(steps=steps, progress=False)
        assert tr.step == steps and len(tr.history["step"]) == math.ceil(steps / tr.config.log_every)
    else:
        hand = HandLoop(setup)
        with Meter() as m:
            hand.run(steps, clip=variant == HAND, ema=variant == HAND)
    return m


def run_setup(setup: Setup, steps: int, repeats: int) -> dict[str, Any]:
    print(f"  {setup.name}: {setup.description}", flush=True)
    same = check_equivalence(setup)
    print(
        f"    hand loop with the trainer's lr warm-up reproduces the trainer's weights bit for bit: {same}", flush=True
    )
    warm = max(5, steps // 10)
    for v in VARIANTS:  # warm-up: code paths, allocator, AdamW state creation
        time_variant(setup, v, warm)

    load_start = os.getloadavg()[0]
    rounds: list[dict[str, Meter]] = []
    for r in range(repeats):
        order = VARIANTS[r % len(VARIANTS) :] + VARIANTS[: r % len(VARIANTS)]
        rec = {v: time_variant(setup, v, steps) for v in order}
        rounds.append(rec)
        print(
            f"    round {r + 1}/{repeats}: "
            + ", ".join(
                f"{v} {1e3 * rec[v].wall / steps:.3f} ms/step (CPU {1e3 * rec[v].cpu / steps:.3f})" for v in VARIANTS
            )
            + f"; ratio {rec[TRAINER].wall / rec[HAND].wall:.3f}",
            flush=True,
        )

    med = statistics.median
    rows = []
    for v in VARIANTS:
        walls = [rec[v].wall for rec in rounds]
        ratios = [rec[v].wall / rec[HAND].wall for rec in rounds]
        cpu_ratios = [rec[v].cpu / rec[HAND].cpu for rec in rounds]
        rows.append(
            {
                "variant": v,
                "steps_per_s": steps / med(walls),
                "ms_per_step": 1e3 * med(walls) / steps,
                "ratio": med(ratios),
                "cpu_ratio": med(cpu_ratios),
                "ratios": ratios,
                "ms_per_step_each_round": [1e3 * w / steps for w in walls],
            }
        )
    # a run more than 1.5x slower than the fastest run of its variant was disturbed by other load
    disturbed = sum(any(rec[v].wall > 1.5 * min(r[v].wall for r in rounds) for v in VARIANTS) for rec in rounds)
    return {
        "setup": setup.name,
        "description": setup.description,
        "steps": steps,
        "repeats": repeats,
        "equivalent": same,
        "rows": rows,
        "disturbed_rounds": disturbed,
        "loadavg_1min_start_end": [load_start, os.getloadavg()[0]],
    }


def overheads(setup: Setup, number: int = 20_000) -> list[dict[str, Any]]:
    """Per-step cost (microseconds) of each piece of ``Trainer.train_step`` / ``train`` bookkeeping
    that the hand loop does not do, each timed in isolation on a trained trainer."""
    tr = setup.trainer()
    tr.train(steps=20, progress=False)
    params = list(tr.model.parameters())
    loss = torch.tensor(1.0, requires_grad=True) * 1.0
    norm = torch.nn.utils.clip_grad_norm_(params, tr.config.grad_clip)
    from tqdm.auto import tqdm

    bar = tqdm(total=10**9, disable=True, leave=False)
    hist: dict[str, list[float]] = {k: [] for k in ("step", "loss", "lr", "grad_norm")}

    def set_lr() -> None:
        for group in tr.optimizer.param_groups:
            group["lr"] = tr.lr_at(tr.step)

    def grad_params() -> None:
        [p for p in tr.model.parameters() if p.grad is not None]  # noqa: B018

    def buffers_copy() -> None:
        with torch.no_grad():
            for b_ema, b in zip(tr.ema.buffers(), tr.model.buffers(), strict=True):
                b_ema.copy_(b)

    def loss_float() -> None:
        value = float(loss.detach())
        math.isfinite(value)

    def history(k: list[int] = [0]) -> None:  # noqa: B006 - a counter
        k[0] += 1
        if k[0] % 10 == 0:
            hist["step"].append(k[0])
            hist["loss"].append(1.0)
            hist["lr"].append(tr.lr_at(k[0] - 1))
            hist["grad_norm"].append(1.0)
            bar.set_postfix(loss=f"{1.0:.4f}", refresh=False)
        bar.update(1)

    def ema_lists() -> None:
        list(tr.ema.parameters())
        list(tr.model.parameters())

    pieces: list[tuple[str, Callable[[], Any]]] = [
        ("`model.train()` every step", tr.model.train),
        ("lr warm-up: `lr_at` + set every param group", set_lr),
        ("`[p for p in parameters() if p.grad is not None]`", grad_params),
        ("`float(clip_grad_norm_(...))` (the float only)", lambda: float(norm)),
        ("EMA decay `ema_decay_at` + parameter lists", lambda: (tr.ema_decay_at(tr.step), ema_lists())),
        ("EMA buffer copy loop", buffers_copy),
        ("`float(loss.detach())` + `isfinite`", loss_float),
        ("history append (1 in 10 steps) + disabled tqdm update", history),
    ]
    out = []
    for label, fn in pieces:
        fn()
        best = min(timeit.repeat(fn, number=number, repeat=3)) / number
        out.append({"piece": label, "us_per_step": 1e6 * best})
    bar.close()
    return out


# ---------------------------------------------------------------------------------------
# reporting
# ---------------------------------------------------------------------------------------
def markdown(res: dict[str, Any]) -> str:
    env = res["environment"]
    lines = [
        f"scoresde {env['scoresde']}, torch {env['torch']}, Python {env['python']}, threads {env['torch_threads']}, "
        f"CPU {env['cpu']} ({env['cpus_available']} available), MALLOC_*: "
        + (
            ", ".join(f"{k}={v}" for k, v in env["malloc_env"].items())
            if isinstance(env["malloc_env"], dict)
            else "unset"
        ),
        "VPSDE, default TrainConfig (AdamW lr 2e-3, warm-up 100, clip 1.0, EMA 0.999, log every 10), "
        "no checkpoints; ratio = wall time / wall time of the hand loop (clip + EMA) of the same round "
        "(= hand steps/s / steps/s), median over interleaved rounds",
        "",
        "| model | variant | steps | rounds | steps/s | ms / step | ratio vs hand loop | CPU-time ratio "
        "| per-round ratios | 1-min load start / end |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for s in res["setups"]:
        load = " / ".join(f"{v:.2f}" for v in s["loadavg_1min_start_end"])
        for row in s["rows"]:
            ratio = f"{row['ratio']:.3f}"
            if row["variant"] == TRAINER:
                ok = row["ratio"] <= TARGET_RATIO
                ratio += f" **{'PASS' if ok else 'FAIL'}** (<= {TARGET_RATIO:.2f})"
            lines.append(
                f"| {s['setup']} | {row['variant']} | {s['steps']} | {s['repeats']} | {row['steps_per_s']:.1f} "
                f"| {row['ms_per_step']:.3f} | {ratio} | {row['cpu_ratio']:.3f} "
                f"| {', '.join(f'{v:.3f}' for v in row['ratios'])} | {load} |"
            )
    for s in res["setups"]:
        if s["disturbed_rounds"]:
            lines.append(
                f"\n**{s['setup']}: {s['disturbed_rounds']} of {s['repeats']} round(s) had a run more "
                "than 1.5x slower than the fastest of its variant: other load on the machine; "
                "the medians are less reliable, re-run when it is idle.**"
            )
    lines += [
        "",
        "Models: "
        + "; ".join(
            f"{s['setup']}: {s['description']} (hand loop with lr warm-up "
            f"bit-identical to the trainer: {s['equivalent']})"
            for s in res["setups"]
        ),
    ]
    if res.get("overheads"):
        hand_ms = next(r["ms_per_step"] for r in res["setups"][0]["rows"] if r["variant"] == HAND)
        total = sum(o["us_per_step"] for o in res["overheads"])
        lines += [
            "",
            f"Bookkeeping of `Trainer.train_step` / `train` beyond the hand loop, each timed alone "
            f"({res['setups'][0]['setup']}; best of 3 x 20,000 calls):",
            "",
            "| piece | us / step | % of a hand-loop step |",
            "|---|---:|---:|",
        ]
        for o in res["overheads"]:
            lines.append(f"| {o['piece']} | {o['us_per_step']:.2f} | {100 * o['us_per_step'] / (1e3 * hand_ms):.2f} |")
        lines.append(f"| **total** | {total:.2f} | {100 * total / (1e3 * hand_ms):.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--steps", type=int, default=None, help="MLP steps per run (default 300; --quick: 100)")
    p.add_argument("--repeats", type=int, default=None, help="interleaved rounds (default 7; --quick: 2)")
    p.add_argument("--batch", type=int, default=512, help="MLP batch size (default 512)")
    p.add_argument("--unet-steps", type=int, default=None, help="U-Net steps per run (default 30; --quick: 5)")
    p.add_argument("--unet-batch", type=int, default=64, help="U-Net batch size (default 64)")
    p.add_argument("--no-unet", action="store_true", help="skip the U-Net rows")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--quick", action="store_true", help="smoke check: MLP 2 x 100 steps, U-Net 1 x 5")
    p.add_argument("--out", default=None, help="also write the results: .json as JSON, otherwise markdown")
    args = p.parse_args(argv)

    steps = args.steps or (100 if args.quick else 300)
    repeats = args.repeats or (2 if args.quick else 7)
    unet_steps = args.unet_steps or (5 if args.quick else 30)
    unet_repeats = 1 if args.quick and not args.repeats else repeats
    if args.threads:
        torch.set_num_threads(args.threads)

    print(
        f"scoresde training benchmark: MLP {repeats} x {steps} steps (batch {args.batch})"
        + ("" if args.no_unet else f", U-Net {unet_repeats} x {unet_steps} steps (batch {args.unet_batch})")
        + f", {torch.get_num_threads()} torch thread(s)",
        flush=True,
    )
    mlp = mlp_setup(args.batch)
    setups = [run_setup(mlp, steps, repeats)]
    if not args.no_unet:
        setups.append(run_setup(unet_setup(args.unet_batch), unet_steps, unet_repeats))
    res = {"setups": setups, "overheads": overheads(mlp, 2_000 if args.quick else 20_000), "environment": environment()}
    table = markdown(res)
    print()
    print(table)
    write_result(args.out, res, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
