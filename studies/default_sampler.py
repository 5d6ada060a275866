"""Which sampler is the most accurate per NFE, on trained score networks and on exact scores.

The evidence for the default of :func:`scoresde.sample` and of ``scoresde sample``. Three problems under
the VP SDE (eps = 1e-3):

* ``moons`` — the default MLP score network (``ScoreModel(build_network("mlp", dim=2), VPSDE())``,
  ``torch.manual_seed(0)``) trained with :class:`scoresde.TrainConfig` (``train_steps`` steps, otherwise
  defaults) on ``n_data`` points of the two-moons set, standardised as ``scoresde train`` does;
* ``eight_gaussians`` — the same network trained on the FFJORD 8-Gaussian ring, standardised;
* ``ring_exact`` — the 8-Gaussian ring (unscaled) with its exact closed-form score.

Every problem has an exact sampler of its marginal p_eps at t = eps: ``x = s(eps) x_0 + sigma(eps) z`` with
``x_0`` a fresh i.i.d. draw of the data distribution (in model space; see :func:`_toy_draw`) and
``z ~ N(0, I)``. For every sampler of ``samplers`` (names of :data:`SAMPLERS`: a factory from an NFE budget
to a sampler that spends exactly that budget, or ``None`` where it cannot) x NFE budget x problem,
``n_samples`` samples (``n_samples_exact`` on the exact problem; seed ``seed_sample``) are compared with a
fixed exact reference set of p_eps by the sliced Wasserstein distance (SW2, 500 projections), and SW is
divided by its floor: the mean of ``floor_pairs`` SW2 values of fresh exact sets of p_eps against the same
reference (``metrics.metric_floor(..., reference=ref)``). A ratio near 1 is as good as exact samples; the
floor's relative standard deviation is reported with it. Adaptive RK45 runs at one tolerance per budget
(:data:`RK45_TOLS`) and records the NFE it spent. Deterministic solvers run the budgets up to
``ode_max_nfe`` only (they have converged there).

Usage::

    python -m studies.default_sampler                 # default size (trains 2 models of 3,000 steps)
    python -m studies.default_sampler --full          # 5,000 training steps, 20,000 samples, 16 floor pairs
    python -m studies.default_sampler --docs          # the documentation build's size: 300 steps, 1,000 samples
    python -m studies.default_sampler --out DIR --quiet --threads N

Checkpoints go to ``<out>/checkpoints/<problem>/`` and are reused by later runs (a checkpoint of at least
``train_steps`` steps is used as it is, a shorter one is trained on up to ``train_steps``). Writes
``default_sampler.nc`` (one xarray Dataset with provenance attributes), ``figure.png/.svg`` (SW / floor
against NFE per problem, :func:`plot`), ``table.md`` (printed unless ``--quiet``: SW / floor per sampler and NFE
budget, one table per problem, and the best sampler per budget) and one CSV per table.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
import xarray as xr  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

import scoresde as sd  # noqa: E402
from scoresde import metrics  # noqa: E402
from scoresde.datasets import load_dataset, toy_sample  # noqa: E402
from scoresde.nets import ScoreModel, build_network  # noqa: E402
from scoresde.training import TrainConfig, load_checkpoint, read_checkpoint, train  # noqa: E402

from . import _io  # noqa: E402

STUDY = "studies.default_sampler"
DEFAULT_OUT = Path(__file__).resolve().parent / "output" / "default_sampler"

EPS = 1e-3
PROJECTIONS = 500
#: problem -> (toy set, trained?) ; the exact problems use the unscaled mixture and its closed-form score
PROBLEMS: dict[str, tuple[str, bool]] = {
    "moons": ("moons", True),
    "eight_gaussians": ("eight_gaussians", True),
    "ring_exact": ("eight_gaussians", False),
}
#: RK45 tolerance (rtol = atol) per NFE budget; the NFE it spends is recorded
RK45_TOLS: dict[int, float] = {10: 3e-1, 20: 1e-1, 50: 1e-2, 100: 1e-3, 200: 1e-4, 500: 1e-5, 1000: 1e-6}

OK, UNSUPPORTED, DIVERGED, NOT_RUN = 1, 0, -1, -2
FLAG = {
    "flag_values": np.array([NOT_RUN, DIVERGED, UNSUPPORTED, OK], np.int8),
    "flag_meanings": "not_run diverged unsupported ok",
}
#: deterministic samplers (probability-flow ODE solvers): run at budgets up to ``Config.ode_max_nfe`` only
DETERMINISTIC = {"DDIM", "Heun", "DPM-Solver++(2M)", "DPM-Solver++(3M)", "UniPC-3", "RK45"}


def _per(nfe: int, per_step: int, build: Callable[[int], sd.Sampler]) -> sd.Sampler | None:
    """``build(nfe // per_step)`` where the budget is a whole number of steps, else ``None``."""
    return build(nfe // per_step) if nfe % per_step == 0 and nfe >= per_step else None


def _rk45(nfe: int) -> sd.Sampler | None:
    tol = RK45_TOLS.get(nfe)
    return None if tol is None else sd.ProbabilityFlowODE("RK45", rtol=tol, atol=tol, eps=EPS)


#: sampler name -> factory(NFE budget) -> a sampler spending exactly that budget (``None``: cannot). Add an
#: entry to study a new sampler; ``Config.samplers`` selects the ones run.
SAMPLERS: dict[str, Callable[[int], sd.Sampler | None]] = {
    "EM": lambda n: sd.EulerMaruyama(n, eps=EPS),
    "PC (snr 0.16)": lambda n: _per(n, 2, lambda k: sd.PredictorCorrector(steps=k, eps=EPS)),
    "PC (snr 0.08)": lambda n: _per(n, 2, lambda k: sd.PredictorCorrector(steps=k, snr=0.08, eps=EPS)),
    "PC (snr 0.05)": lambda n: _per(n, 2, lambda k: sd.PredictorCorrector(steps=k, snr=0.05, eps=EPS)),
    "PC (snr 0.01)": lambda n: _per(n, 2, lambda k: sd.PredictorCorrector(steps=k, snr=0.01, eps=EPS)),
    "PC (ald)": lambda n: _per(n, 2, lambda k: sd.PredictorCorrector(steps=k, corrector="ald", eps=EPS)),
    "reverse diffusion": lambda n: sd.PredictorCorrector(steps=n, corrector="none", eps=EPS),
    "ancestral": lambda n: sd.PredictorCorrector("ancestral", "none", steps=n, eps=EPS),
    "DDIM": lambda n: sd.DDIM(n, eps=EPS),
    "DDIM (eta 1)": lambda n: sd.DDIM(n, eta=1.0, eps=EPS),
    "Heun": lambda n: _per(n, 2, lambda k: sd.Heun(k, eps=EPS)),
    "DPM-Solver++(2M)": lambda n: sd.DPMSolverPP(2, n, eps=EPS) if n >= 2 else None,
    "DPM-Solver++(3M)": lambda n: sd.DPMSolverPP(3, n, eps=EPS) if n >= 3 else None,
    "UniPC-3": lambda n: sd.UniPC(3, n, eps=EPS) if n >= 3 else None,
    "RK45": _rk45,
}


@dataclass(frozen=True)
class Config:
    """Sizes, sweeps and seeds of one run."""

    problems: tuple[str, ...] = tuple(PROBLEMS)
    samplers: tuple[str, ...] = (
        "EM",
        "PC (snr 0.16)",
        "PC (snr 0.05)",
        "reverse diffusion",
        "ancestral",
        "DDIM (eta 1)",
        "DDIM",
        "Heun",
        "DPM-Solver++(2M)",
        "UniPC-3",
        "RK45",
    )
    budgets: tuple[int, ...] = (20, 50, 200, 1000)  # NFE budgets
    train_steps: int = 3000
    n_data: int = 20_000
    n_samples: int = 10_000  # samples per run on the trained problems
    n_samples_exact: int = 20_000  # on the exact problem (cheap score; the ring's floor varies with its mode weights)
    ode_max_nfe: int = 200  # deterministic samplers converge well below this on these problems
    floor_pairs: int = 8
    seed_model: int = 0  # torch.manual_seed before building each network
    seed_data: int = 0  # load_dataset seed (as `scoresde train`)
    seed_sample: int = 0  # prior draw and noise of every sampler
    seed_reference: int = 12345  # the exact reference set of p_eps
    seed_floor: int = 1  # metric_floor's base seed

    def __post_init__(self) -> None:
        unknown = set(self.problems) - set(PROBLEMS) | set(self.samplers) - set(SAMPLERS)
        if unknown:
            raise ValueError(f"unknown names {sorted(unknown)}; problems: {list(PROBLEMS)}, samplers: {list(SAMPLERS)}")
        if not self.budgets or min(self.budgets) < 1:
            raise ValueError(f"budgets must be positive NFE counts, got {self.budgets}")


DEFAULT = Config()
FULL = replace(
    DEFAULT,
    samplers=tuple(SAMPLERS),
    budgets=(20, 50, 100, 200, 500, 1000),
    train_steps=5000,
    n_samples=20_000,
    n_samples_exact=40_000,
    floor_pairs=16,
)
#: the documentation build's size (``--docs``): the default samplers, three budgets, short training runs and
#: fewer samples (the floor is correspondingly higher)
DOCS = replace(
    DEFAULT, budgets=(20, 50, 100), train_steps=300, n_data=5_000, n_samples=1_000, n_samples_exact=2_000, floor_pairs=4
)


# ---------------------------------------------------------------------------------------
# problems
# ---------------------------------------------------------------------------------------
@dataclass
class Problem:
    """A score function with an exact sampler of its target's marginal p_eps (model space)."""

    name: str
    score_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    draw_x0: Callable[[int, torch.Generator], torch.Tensor]  # fresh points of the data distribution
    description: str
    trained: bool = True

    def draw_eps(self, sde: sd.LinearSDE) -> Callable[[int, torch.Generator], torch.Tensor]:
        """``draw(m, generator)``: ``m`` exact samples of p_eps, ``s(eps) x_0 + sigma(eps) z`` (float64)."""
        t = torch.tensor(EPS, dtype=torch.float64)
        s, sigma = float(sde.mean_coef(t)), float(sde.std(t))

        def draw(m: int, generator: torch.Generator) -> torch.Tensor:
            x0 = self.draw_x0(m, generator)
            return s * x0 + sigma * torch.randn(x0.shape, generator=generator, dtype=torch.float64)

        return draw


def _toy_draw(name: str, shift: float, scale: float, pool: int = 16) -> Callable[[int, torch.Generator], torch.Tensor]:
    """``draw(m, generator)``: ``m`` i.i.d. points of the toy set in model space.

    Some generators are stratified (``make_moons`` spaces its points evenly along the arcs before adding
    noise), so two of their sets lie closer to each other than two i.i.d. sets would, and a floor made of
    them is out of reach for any sampler. The points are therefore drawn with replacement from a set of
    ``pool * m`` generated points, which is i.i.d. from a distribution within the generator's spacing of
    the toy set's.
    """

    def draw(m: int, generator: torch.Generator) -> torch.Tensor:
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        points = torch.from_numpy(toy_sample(name, pool * m, seed))
        idx = torch.randint(0, pool * m, (m,), generator=generator)
        return (points[idx] - shift) / scale

    return draw


def train_model(name: str, sde: sd.LinearSDE, cfg: Config, ckpt_dir: Path, progress: bool) -> Problem:
    """Train (or resume up to ``cfg.train_steps``) the default MLP on the standardised toy set; the EMA model."""
    data = load_dataset(name, n=cfg.n_data, seed=cfg.seed_data)
    last = ckpt_dir / "last.pt"
    if not (last.exists() and int(read_checkpoint(last)["step"]) >= cfg.train_steps):  # else reuse it as it is
        torch.manual_seed(cfg.seed_model)
        model = ScoreModel(build_network("mlp", dim=2), sde)
        train(sde, model, data, TrainConfig(steps=cfg.train_steps), out_dir=ckpt_dir, progress=progress, resume=True)
    _, ema, _ = load_checkpoint(last, ema=True)
    shift, scale = float(data.shift), float(data.scale)
    desc = f"MLP trained {cfg.train_steps} steps on {cfg.n_data} points of {name} (standardised)"
    return Problem(name, ema, _toy_draw(name, shift, scale), desc)


def exact_problem(name: str, sde: sd.LinearSDE) -> Problem:
    """The named mixture (unscaled) with its closed-form score."""
    mix = sd.get_target(name)
    return Problem(
        f"{name} (exact)",
        mix.score(sde),
        lambda m, g: mix.sample(m, g, dtype=torch.float64),
        f"exact score of {name}",
        trained=False,
    )


# ---------------------------------------------------------------------------------------
# runs
# ---------------------------------------------------------------------------------------
def run_problem(problem: Problem, sde: sd.LinearSDE, cfg: Config, bar: tqdm) -> dict[str, np.ndarray]:
    """SW to the reference, NFE, wall time and status of every sampler x budget; the floor values."""
    n = cfg.n_samples if problem.trained else cfg.n_samples_exact
    draw = problem.draw_eps(sde)
    ref = draw(n, torch.Generator().manual_seed(cfg.seed_reference))
    floor = metrics.metric_floor(
        "sliced_wasserstein",
        draw,
        n,
        pairs=cfg.floor_pairs,
        seed=cfg.seed_floor,
        reference=ref,
        projections=PROJECTIONS,
    )
    shape = (len(cfg.samplers), len(cfg.budgets))
    out = {k: np.full(shape, np.nan) for k in ("sw", "nfe", "wall_time")}
    out["status"] = np.full(shape, UNSUPPORTED, np.int8)
    for i, name in enumerate(cfg.samplers):
        for j, budget in enumerate(cfg.budgets):
            bar.set_postfix_str(f"{problem.name}: {name} @ {budget}")
            sampler = SAMPLERS[name](budget)
            if name in DETERMINISTIC and budget > cfg.ode_max_nfe:
                out["status"][i, j] = NOT_RUN
            elif sampler is not None:
                try:
                    ds = sd.sample(sde, problem.score_fn, sampler, shape=(n, 2), seed=cfg.seed_sample, progress=False)
                except sd.DivergenceError:
                    out["status"][i, j] = DIVERGED
                else:
                    x = torch.from_numpy(ds["x"].values[-1]).double()
                    out["sw"][i, j] = metrics.sliced_wasserstein(x, ref, projections=PROJECTIONS)
                    out["nfe"][i, j] = ds.attrs["nfe"]
                    out["wall_time"][i, j] = ds.attrs["wall_time_s"]
                    out["status"][i, j] = OK
            bar.update()
    out["floor"] = np.asarray(floor.values, dtype=np.float64)
    return out


def run(
    cfg: Config,
    ckpt_root: Path,
    progress: bool = True,
    argv: Sequence[str] = (),
    size: str = "custom",
) -> xr.Dataset:
    """Train the models (or reuse their checkpoints under ``ckpt_root``), run every sampler, return the Dataset."""
    start = time.perf_counter()
    sde = sd.VPSDE()
    problems: list[Problem] = []
    for key in cfg.problems:
        name, trained = PROBLEMS[key]
        problems.append(train_model(name, sde, cfg, ckpt_root / key, progress) if trained else exact_problem(name, sde))
    results = []
    total = len(problems) * len(cfg.samplers) * len(cfg.budgets)
    with tqdm(total=total, desc="sampling", disable=not progress, leave=False) as bar:
        for p in problems:
            results.append(run_problem(p, sde, cfg, bar))
    stack = {k: np.stack([r[k] for r in results]) for k in results[0]}
    floor_mean = stack["floor"].mean(axis=1)
    dims = ("problem", "sampler", "budget")
    ds = xr.Dataset(
        {
            "sw": (dims, stack["sw"], {"long_name": f"SW2 ({PROJECTIONS} projections) to the exact reference set"}),
            "sw_ratio": (dims, stack["sw"] / floor_mean[:, None, None], {"long_name": "sw / floor mean"}),
            "nfe": (dims, stack["nfe"], {"long_name": "score evaluations of the run"}),
            "wall_time": (dims, stack["wall_time"], {"long_name": "sampling wall time", "units": "s"}),
            "status": (dims, stack["status"], {"long_name": "run status", **FLAG}),
            "sw_floor": (
                ("problem", "pair"),
                stack["floor"],
                {"long_name": "SW2 of fresh exact sets of p_eps to the same reference (metric_floor, reference=ref)"},
            ),
            "sw_floor_mean": (("problem",), floor_mean, {"long_name": "floor mean"}),
            "sw_floor_rel_sd": (
                ("problem",),
                stack["floor"].std(axis=1, ddof=1) / floor_mean,
                {"long_name": "floor standard deviation / floor mean"},
            ),
        },
        coords={
            "problem": list(cfg.problems),
            "sampler": list(cfg.samplers),
            "budget": ("budget", list(cfg.budgets), {"long_name": "NFE budget"}),
            "pair": np.arange(cfg.floor_pairs),
            "problem_description": ("problem", [p.description for p in problems]),
        },
    )
    ds.attrs = _io.provenance(
        STUDY,
        argv,
        size=size,
        **{k: v for k, v in asdict(cfg).items() if k not in ("problems", "samplers")},
        sde=repr(sde),
        eps=EPS,
        projections=PROJECTIONS,
        rk45_tols=RK45_TOLS,
        checkpoints=str(ckpt_root),
        study_wall_time_s=round(time.perf_counter() - start, 1),
    )
    return ds


# ---------------------------------------------------------------------------------------
# tables
# ---------------------------------------------------------------------------------------
def _names(ds: xr.Dataset, dim: str) -> list[str]:
    return [str(v) for v in ds[dim].values]


def ratio_table(ds: xr.Dataset, problem: str) -> pd.DataFrame:
    """Rows: samplers; columns: ``NFE <budget>`` with SW / floor (NaN where the sampler cannot spend it)."""
    sub = ds.sel(problem=problem)
    rows = []
    for s in _names(ds, "sampler"):
        row: dict[str, object] = {"sampler": s}
        for b in ds.budget.values:
            row[f"NFE {int(b)}"] = float(sub.sw_ratio.sel(sampler=s, budget=b))
        rk = sub.nfe.sel(sampler=s)
        if s == "RK45":
            row["sampler"] = "RK45 (NFE: " + ", ".join("—" if math.isnan(v) else str(int(v)) for v in rk.values) + ")"
        rows.append(row)
    return pd.DataFrame(rows)


def best_table(ds: xr.Dataset, exclude: Sequence[str] = ("RK45",)) -> pd.DataFrame:
    """Per problem and budget: the sampler with the smallest SW / floor among the fixed-NFE ones, and its ratio."""
    rows = []
    for p in _names(ds, "problem"):
        for b in ds.budget.values:
            r = ds.sw_ratio.sel(problem=p, budget=b).drop_sel(sampler=[s for s in exclude if s in ds.sampler])
            if bool(np.isfinite(r).any()):
                k = int(np.nanargmin(r.values))
                rows.append({"problem": p, "NFE": int(b), "best": str(r.sampler.values[k]), "SW / floor": float(r[k])})
    return pd.DataFrame(rows)


def make_tables(ds: xr.Dataset) -> dict[str, tuple[str, pd.DataFrame, str]]:
    """``{key: (title, raw DataFrame for the CSV, markdown)}``."""
    tables: dict[str, tuple[str, pd.DataFrame, str]] = {}
    for p in _names(ds, "problem"):
        df = ratio_table(ds, p)
        fmt = {c: ".2f" for c in df.columns if c.startswith("NFE")}
        rel = float(ds.sw_floor_rel_sd.sel(problem=p))
        desc = str(ds.problem_description.sel(problem=p).values)
        title = f"{p}: SW / floor ({desc}; floor sd / mean = {rel:.2f})"
        tables[f"ratio_{p}"] = (title, df, _io.markdown_table(df, fmt))
    best = best_table(ds)
    tables["best"] = ("Best fixed-NFE sampler per budget", best, _io.markdown_table(best, {"SW / floor": ".2f"}))
    return tables


# ---------------------------------------------------------------------------------------
# figure
# ---------------------------------------------------------------------------------------
def plot(ds: xr.Dataset) -> plt.Figure:
    """SW / floor mean against the NFE each run spent, one panel per problem and one line per sampler
    (deterministic solvers dashed); the floor (1) and its mean + 3 sd dotted. Drawn from the Dataset alone."""
    problems = _names(ds, "problem")
    fig, axes = plt.subplots(1, len(problems), figsize=(5.0 * len(problems), 4.6), squeeze=False, sharey=True)
    colors = plt.get_cmap("tab20")(np.linspace(0, 1, max(ds.sizes["sampler"], 2)))
    for ax, p in zip(axes[0], problems, strict=True):
        sub = ds.sel(problem=p)
        for k, s in enumerate(_names(ds, "sampler")):
            r = sub.sel(sampler=s)
            ok = r.status.values == OK
            if not ok.any():
                continue
            x, y = r.nfe.values[ok], r.sw_ratio.values[ok]
            order = np.argsort(x, kind="stable")
            ls = "--" if s in DETERMINISTIC else "-"
            ax.plot(x[order], y[order], ls=ls, marker="o", ms=3, lw=1.2, color=colors[k], label=s)
        ax.axhline(1.0, color="0.4", lw=0.8)
        ax.axhline(1.0 + 3.0 * float(sub.sw_floor_rel_sd), color="0.4", ls=":", lw=0.8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.grid(True, which="both", lw=0.3, alpha=0.5)
        ax.set_title(p, fontsize=10)
        ax.set_xlabel("NFE (score evaluations)")
    axes[0, 0].set_ylabel("sliced Wasserstein / floor mean")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=6, fontsize=8, frameon=False)
    fig.suptitle(
        f"SW to exact p_eps over its floor vs NFE ({ds.attrs.get('size', '')} size, n = {ds.attrs.get('n_samples', '')}"
        f" trained / {ds.attrs.get('n_samples_exact', '')} exact; solid: stochastic, dashed: deterministic; "
        "dotted: floor mean + 3 sd)",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    return fig


# ---------------------------------------------------------------------------------------
# entry point
# ---------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = _io.study_parser(
        STUDY,
        __doc__,
        "5,000 training steps, 20,000 samples, 16 floor pairs, six NFE budgets",
        DEFAULT_OUT,
        threads_help="torch intra-op threads (default 1: small batches run fastest single-threaded on a "
        "shared machine)",
    )
    ap.add_argument("--samplers", nargs="+", default=None, help=f"a subset of {list(SAMPLERS)}")
    ap.add_argument("--budgets", nargs="+", type=int, default=None, help="NFE budgets")
    ap.add_argument("--problems", nargs="+", default=None, help=f"a subset of {list(PROBLEMS)}")
    ap.add_argument("--samples", type=int, default=None, help="number of samples on the trained problems")
    ap.add_argument("--train-steps", type=int, default=None, help="training steps of each model")
    return ap.parse_args(argv)


def write_outputs(ds: xr.Dataset, out: Path) -> str:
    """Write the netCDF, the figure (``figure.png/.svg``, :func:`plot`) and the tables; return the markdown."""
    _io.write_netcdf(ds, out / "default_sampler.nc")
    _io.save_figures(out, {"figure": plot(ds)})
    return _io.write_tables(
        out,
        f"Accuracy per NFE of every sampler on trained and exact scores ({ds.attrs['size']} size)",
        ds.attrs,
        f"{ds.attrs['study_wall_time_s']:.0f} s in all",
        make_tables(ds),
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the study, write the outputs, print the tables (unless ``--quiet``); returns 0."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    out = _io.prepare(args)
    size = _io.size(args)
    cfg = {"full": FULL, "docs": DOCS}.get(size, DEFAULT)
    if args.samplers is not None:
        cfg = replace(cfg, samplers=tuple(args.samplers))
    if args.budgets is not None:
        cfg = replace(cfg, budgets=tuple(args.budgets))
    if args.problems is not None:
        cfg = replace(cfg, problems=tuple(args.problems))
    if args.samples is not None:
        cfg = replace(cfg, n_samples=args.samples)
    if args.train_steps is not None:
        cfg = replace(cfg, train_steps=args.train_steps)
    ds = run(cfg, out / "checkpoints", progress=not args.quiet, argv=argv, size=size)
    _io.report(args, write_outputs(ds, out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
