"""GPU check: every sampler on CUDA against the CPU, same-seed identity, U-Net throughput, bf16 training.

Run on a CUDA machine (about 3-5 minutes on one modern GPU)::

    python benchmarks/gpu_check.py                  # --device cuda
    python benchmarks/gpu_check.py --device cpu --quick   # the same checks on the CPU, reduced size (< 1 min)
    python benchmarks/gpu_check.py --out gpu.md     # also write the table (.json for JSON)

1. Every sampler of the CLI's table (:data:`scoresde.cli.SAMPLERS`, so new samplers are checked as
   soon as they are registered there), on the exact 8-Gaussian ring score, float32 and float64, from
   one ``x_T`` drawn on the CPU: on the device and on the CPU. Deterministic samplers must agree to
   the solver's tolerance (fixed-step: round-off, ``ROUNDOFF[dtype]`` x max(1, max |x|); adaptive:
   ``10 (rtol + atol)`` x max(1, max |x|)); stochastic ones draw their noise from another seed and
   must agree in law: the sliced Wasserstein distance between the two end samples within the floor
   band of :func:`scoresde.metrics.metric_floor` (exact sets of the ring, floor mean + ``K_FLOOR`` sd).
   Each sampler runs on the SDE it accepts first among VP, a short DDPM chain and rectified flow.
2. The same seed twice on the device gives identical end points (bit for bit).
3. Throughput and peak device memory (``torch.cuda.max_memory_allocated``) of sampling a
   :class:`scoresde.nets.UNet` score model (untrained, 3x32x32, batch 256) with DDIM, DPM-Solver++ and
   UniPC at 10 and 20 steps.
4. 200 training steps of that U-Net through :meth:`scoresde.Trainer.train_step`, in float32 and with
   ``torch.autocast(dtype=torch.bfloat16)`` around each step (the Trainer has no autocast option; the
   script wraps its public step): steps/s, peak memory, the mean loss over the last quarter of the steps
   (finite), and the bf16 loss of the first step against the float32 one (same weights, same batch:
   they differ by bf16 rounding only; within ``LOSS_RTOL``).

It prints one table and exits 1 if any check fails (2 if the device is missing).
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass
from typing import Any

import torch

import scoresde as sd
from scoresde import cli, metrics
from scoresde.datasets import Dataset
from scoresde.nets import ScoreModel, build_network

import _common  # the benchmarks' folder is on sys.path when run as a script  # isort: skip

#: round-off bound of a fixed-step deterministic sampler, device vs CPU, relative to max(1, max |x|)
ROUNDOFF = {torch.float32: 2e-3, torch.float64: 1e-8}
K_FLOOR = 4.0  # stochastic samplers: SW <= floor mean + K_FLOOR sd
LOSS_RTOL = 0.05  # bf16 vs float32 loss of the first step (same weights, same batch)
FAST = ("ddim", "dpmsolver++", "unipc")


@dataclass(frozen=True)
class Size:
    n: int  # samples of the ring per sampler run
    steps: int  # steps of the fixed-step samplers
    floor_pairs: int
    image: int  # side of the U-Net images
    batch: int  # U-Net sampling batch
    unet_steps: tuple[int, ...]
    base: int  # U-Net base channels
    train_steps: int
    train_batch: int


FULL = Size(
    n=3000,
    steps=50,
    floor_pairs=8,
    image=32,
    batch=256,
    unet_steps=(10, 20),
    base=32,
    train_steps=200,
    train_batch=128,
)
QUICK = Size(n=500, steps=10, floor_pairs=6, image=8, batch=8, unet_steps=(10,), base=8, train_steps=20, train_batch=8)


class Table:
    """Rows of the one table: section, case, dtype, quantity, value, bound, verdict."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def add(
        self, section: str, case: str, dtype: str, quantity: str, value: float, bound: str = "", ok: bool | None = None
    ) -> None:
        self.rows.append(
            {
                "section": section,
                "case": case,
                "dtype": dtype,
                "quantity": quantity,
                "value": value,
                "bound": bound,
                "verdict": "" if ok is None else ("ok" if ok else "FAIL"),
            }
        )

    def fail(self, section: str, case: str, dtype: str, exc: BaseException) -> None:
        msg = f"{type(exc).__name__}: {exc}".replace("|", "/").replace("\n", " ")[:160]
        self.rows.append(
            {"section": section, "case": case, "dtype": dtype, "quantity": msg, "value": math.nan, "bound": ""}
        )
        self.rows[-1]["verdict"] = "FAIL"

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if r["verdict"] == "FAIL"]

    def markdown(self) -> str:
        cols = ["section", "case", "dtype", "quantity", "value", "bound", "verdict"]
        lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
        for r in self.rows:
            v = r["value"]
            value = "—" if isinstance(v, float) and math.isnan(v) else (f"{v:.4g}" if isinstance(v, float) else str(v))
            lines.append("| " + " | ".join([*(str(r[c]) for c in cols[:4]), value, r["bound"], r["verdict"]]) + " |")
        return "\n".join(lines)


def samplers(steps: int) -> dict[str, sd.Sampler]:
    """Every sampler of :data:`scoresde.cli.SAMPLERS`, at its CLI defaults and ``steps`` where it takes steps."""
    out = {}
    for name, spec in cli.SAMPLERS.items():
        kwargs = {**spec.fixed, **spec.defaults}
        if "steps" in spec.options:
            kwargs["steps"] = steps
        out[name] = spec.load()(**kwargs)
    return out


def sdes() -> dict[str, sd.SDE]:
    return {"VP": sd.VPSDE(), "DDPM-50": sd.DDPMSchedule.linear(T=50).sde(), "RF": sd.RectifiedFlow()}


def pick_sde(sampler: sd.Sampler, target: sd.GaussianMixture) -> tuple[str, sd.SDE]:
    """The first SDE of :func:`sdes` that ``sampler`` accepts (a tiny CPU run; the others raise ValueError)."""
    errors = []
    for name, sde in sdes().items():
        try:
            sd.sample(sde, target.score(sde), sampler, shape=(4, 2), seed=0, progress=False)
        except ValueError as exc:
            errors.append(f"{name}: {exc}")
            continue
        return name, sde
    raise ValueError("the sampler accepts none of the SDEs: " + "; ".join(errors))


def end(ds: Any) -> torch.Tensor:
    return torch.from_numpy(ds["x"].values[-1])


def check_samplers(device: torch.device, size: Size, table: Table) -> None:
    """Sections 1 and 2: device vs CPU, and same-seed identity on the device."""
    target = sd.eight_gaussians()
    floor = metrics.metric_floor(metrics.sliced_wasserstein, target.sample, size.n, pairs=size.floor_pairs, seed=0)
    sw_bound = floor.mean + K_FLOOR * floor.std
    for name, sampler in samplers(size.steps).items():
        try:
            sde_name, sde = pick_sde(sampler, target)
        except Exception as exc:
            table.fail("agreement", name, "", exc)
            continue
        case = f"{name} ({sde_name})"
        score = target.score(sde)
        for dtype in (torch.float32, torch.float64):
            dt = str(dtype).removeprefix("torch.")
            try:
                x_T = sde.prior_sampling((size.n, 2), generator=torch.Generator().manual_seed(1), dtype=dtype)
                cpu = end(sd.sample(sde, score, sampler, x_T=x_T, seed=2, progress=False))
                seed = 3 if sampler.stochastic else 2
                runs = [
                    end(sd.sample(sde, score, sampler, x_T=x_T.to(device), seed=seed, progress=False)) for _ in range(2)
                ]
                scale = max(1.0, float(cpu.abs().max()))
                if sampler.stochastic:
                    sw = metrics.sliced_wasserstein(runs[0].double(), cpu.double())
                    table.add(
                        "agreement",
                        case,
                        dt,
                        f"SW {device.type} vs cpu (other seed)",
                        sw,
                        f"≤ {sw_bound:.3g}",
                        sw <= sw_bound,
                    )
                else:
                    rtol = getattr(sampler, "rtol", None)
                    if rtol is not None and sampler.expected_nfe(sde) is None:  # error-controlled step sizes
                        tol, how = 10 * (rtol + getattr(sampler, "atol", rtol)) * scale, "10 (rtol+atol)"
                    else:
                        tol, how = ROUNDOFF[dtype] * scale, "round-off"
                    diff = float((runs[0].double() - cpu.double()).abs().max())
                    table.add(
                        "agreement", case, dt, f"max |{device.type} - cpu|", diff, f"≤ {tol:.2g} ({how})", diff <= tol
                    )
                same = torch.equal(runs[0], runs[1]) and bool(torch.isfinite(runs[0]).all())
                table.add(
                    "identity",
                    case,
                    dt,
                    "same seed twice: max abs diff",
                    float((runs[0] - runs[1]).abs().max()),
                    "0",
                    same,
                )
            except Exception as exc:
                table.fail("agreement", case, dt, exc)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_mib(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else math.nan


def unet(size: Size) -> torch.nn.Module:
    return build_network("unet", channels=3, base=size.base, channel_mults=(1, 2, 2), groups=min(8, size.base))


def check_throughput(device: torch.device, size: Size, table: Table) -> None:
    """Section 3: samples/s and peak memory of the U-Net score model with the fast samplers."""
    sde = sd.VPSDE()
    torch.manual_seed(0)
    model = ScoreModel(unet(size), sde).to(device).eval()
    shape = (size.batch, 3, size.image, size.image)
    for name in FAST:
        spec = cli.SAMPLERS[name]
        for steps in size.unet_steps:
            case = f"U-Net 3x{size.image}x{size.image}, batch {size.batch}, {name} {steps} steps"
            try:
                sampler = spec.load()(**{**spec.fixed, **spec.defaults, "steps": steps})
                sd.sample(sde, model, sampler, shape=shape, device=device, seed=0, progress=False)  # warm-up
                _sync(device)
                _peak_reset(device)
                start = time.perf_counter()
                ds = sd.sample(sde, model, sampler, shape=shape, device=device, seed=0, progress=False)
                _sync(device)
                wall = time.perf_counter() - start
                ok = bool(torch.isfinite(end(ds)).all())
                table.add("throughput", case, "float32", "samples/s", size.batch / wall, "finite", ok)
                table.add("throughput", case, "float32", "peak memory [MiB]", _peak_mib(device))
            except Exception as exc:
                table.fail("throughput", case, "float32", exc)


def _train(device: torch.device, size: Size, autocast: torch.dtype | None) -> tuple[list[float], float, float]:
    sde = sd.VPSDE()
    torch.manual_seed(0)
    model = ScoreModel(unet(size), sde)
    g = torch.Generator().manual_seed(0)
    data = Dataset(data=torch.randn(1024, 3, size.image, size.image, generator=g), name="gaussian")
    cfg = sd.TrainConfig(steps=size.train_steps, batch_size=size.train_batch, warmup=10, seed=0)
    trainer = sd.Trainer(sde, model, data, cfg, device=device)
    losses = []
    _sync(device)
    _peak_reset(device)
    start = time.perf_counter()
    with torch.autocast(device.type, dtype=autocast or torch.bfloat16, enabled=autocast is not None):
        for _ in range(size.train_steps):
            losses.append(trainer.train_step()[0])
    _sync(device)
    return losses, size.train_steps / (time.perf_counter() - start), _peak_mib(device)


def check_training(device: torch.device, size: Size, table: Table) -> None:
    """Section 4: float32 and bf16-autocast training steps of the U-Net."""
    case = f"U-Net 3x{size.image}x{size.image}, batch {size.train_batch}, {size.train_steps} steps"
    results = {}
    for label, dtype in (("float32", None), ("bf16 autocast", torch.bfloat16)):
        try:
            losses, rate, peak = _train(device, size, dtype)
        except Exception as exc:
            table.fail("training", case, label, exc)
            continue
        tail = losses[-max(1, len(losses) // 4) :]
        results[label] = losses[0]
        mean = sum(tail) / len(tail)
        table.add("training", case, label, "steps/s", rate)
        table.add("training", case, label, "peak memory [MiB]", peak)
        table.add("training", case, label, "mean loss, last quarter", mean, "finite", math.isfinite(mean))
    if len(results) == 2:
        rel = abs(results["bf16 autocast"] - results["float32"]) / abs(results["float32"])
        table.add(
            "training",
            case,
            "bf16 vs float32",
            "first-step loss, relative difference",
            rel,
            f"≤ {LOSS_RTOL:g}",
            rel <= LOSS_RTOL,
        )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--device", default="cuda", help="device to check against the CPU (default cuda)")
    ap.add_argument("--quick", action="store_true", help="reduced size (the CPU smoke run)")
    ap.add_argument("--only", choices=("samplers", "throughput", "training"), action="append", help="run only these")
    ap.add_argument("--out", default=None, help="also write the table (.md) or the rows (.json) here")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_check: CUDA is not available on this machine; run with --device cpu for the CPU checks")
        return 2
    size = QUICK if args.quick else FULL
    parts = args.only or ["samplers", "throughput", "training"]
    table = Table()
    start = time.perf_counter()
    if "samplers" in parts:
        check_samplers(device, size, table)
    if "throughput" in parts:
        check_throughput(device, size, table)
    if "training" in parts:
        check_training(device, size, table)
    env = _common.environment()
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    head = f"# GPU check on {device} ({'quick' if args.quick else 'full'} size, {time.perf_counter() - start:.0f} s)"
    text = "\n\n".join([head, ", ".join(f"{k}={v}" for k, v in env.items()), table.markdown()])
    failed = table.failed
    text += f"\n\n{len(failed)} of {sum(r['verdict'] != '' for r in table.rows)} checks failed\n"
    print(text)
    _common.write_result(args.out, {"environment": env, "rows": table.rows}, text)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
