r"""Penalties x dynamics x parameterization in sparse completion (seeds 000, 001, 004; SCIENCE.md claims 1-3, 5-7).

Claims put to the test. (1) Where the nuclear-norm minimiser fails to complete a low-rank matrix, the ratio
$R = \|W\|_*/\|W\|_F$ as a penalty recovers it. (2) The ratio works only with Adam, not with gradient descent /
gradient flow. (3) Of Adam's two parts the denominator (per-coordinate normalisation, RMSProp) matters more than
the numerator (momentum). (5) Along a successful path the loss stays near zero while the effective rank falls
(an alternating-minimisation-like path). (6) Depth 1 with the ratio and Adam does as well as a depth-3 product
without a penalty (Zhao 2022). (7) The ratio on each factor against the ratio on the product; the squared ratio
(Hoyer-square, DeepHoyer) against the ratio. And the fact behind all of them: in completion $L + \lambda R$ has no
minimiser (an unobserved entry $c\,e_ie_j^T$ with $c \to \infty$ sends $R \to 1$ at no cost), so a ratio-penalised
flow drifts, and any recovery is a transient.

Setting (`GRIDS`). Completion as in Arora et al. (`flows.completion(..., symmetric=False, truth_norm=n)`: rank-r
truth with entries ~1, m entries sampled uniformly), in the regime where the minimum-nuclear-norm completion fails
(its test error is computed per seed, cvxpy/Clarabel). The direct parameterization starts from the zero-filled
observations $W_0 = P_\Omega(W^*)$ (the seeds' "initialise by fitting the data": the data loss is 0 there, so
whatever moves $W$ is the penalty), the factored ones ($UV^T$, depth 3, width n) from Gaussian factors with
$\|W_0\|_F \approx$ `INIT` $\sqrt n$ (as the depth experiment). Dynamics (flows.DYNAMICS): gradient flow; the Adam
flow at two rate settings (a, b); RMSProp flow (Adam's denominator alone); momentum flow (its numerator alone); the
sign flow (a, b -> infinity). The adaptive flows use eps = `EPS` (not optax's 1e-8): measured on the Adam flow
with the ratio, eps 1e-3 and 1e-4 give the same best test error and time of it to two digits, while 1e-8 costs ten
times the steps in the sign-like tail (the `EpsCheck` macros re-measure that on one cell). Each run is integrated
to a time horizon that depends only on the dynamics' time scale (`HORIZONS`): the adaptive flows move every
coordinate at speed ~1, gradient flow and momentum at the speed of the gradient, and the horizons are where the
test error of every penalised run has passed its minimum and is drifting.

Measurement, on `SAVES` log-spaced times: test error $\frac{1}{n^2}\sum_{jk}(W - W^*)_{jk}^2$; its minimum over
time (the best a practitioner with an oracle stopping time gets) and when; the window of times where it is below
the nuclear minimiser's; the test error at the horizon (where the drift has got to); effective rank, data loss,
$\|W\|_F$ and $R$ along the path. Mean and min-max over seeds.

Verdicts (numbers in the macros). (1) holds when the best ratio cell's best test error is below the nuclear
minimiser's by more than the factor `SAME` for every seed (merely below, as at m = 1000 at n = 100 where both are
~0.5, is no recovery), and the end-of-horizon error says whether that is a limit or a transient.
(2) fails when gradient flow with the ratio beats the nuclear minimiser (by that factor) in every seed, or reaches a best test error
within `SAME` (a factor) of the Adam flow's: the ratio then works without Adam, and the difference is one of time
scale (the times of the bests are reported); holds when it beats it in no seed.
(3) holds over all times when RMSProp's best is below momentum's by more than `SAME`, and on a fixed budget when
the same holds of their bests within the adaptive flows' horizon. (5) holds
when along every Adam/ratio run the data loss per observed entry stays below `NEAR_MSE` up to the best time while
the effective rank falls. (6) compares depth 1 + ratio + Adam with depth 3 and gradient flow.
(7) compares the ratio on each factor with the ratio on the product (depth 3), and Hoyer-square with the ratio.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
from matplotlib.ticker import NullFormatter

import flows
from analysis import references

from ._base import Context, Experiment, finite_mean, new_figure, test_error, tex_number, tex_spread


@dataclasses.dataclass(frozen=True)
class Grid:
    """One scale: the completion problem, seeds, penalty strengths."""

    n: int
    rank: int
    m: int
    seeds: int
    strengths: tuple[float, ...]
    strength: float
    """The strength of the cells outside the sweep (the other dynamics, parameterizations, each factor)."""
    fast: float
    """The horizon of the adaptive flows (Adam, RMSProp, sign), which move every coordinate at speed ~1."""
    slow: float
    """The horizon of gradient flow and momentum, which move at the speed of the gradient."""
    factored_penalties: bool
    """Whether the U V^T and depth-3 cells include the penalties (the ratio on the product and on each factor):
    their adaptive runs are the grid's stiffest (depth 3 + ratio + Adam: 133 thousand steps at n = 20), so the
    quick grid keeps only their unpenalised gradient-flow and Adam runs."""
    nuclear_strengths: tuple[float, ...] | None = None
    """The nuclear penalty's sweep (None: `strengths`): its penalised minimiser shrinks toward 0 as lambda grows,
    and its gradient flow's stiffness grows like lambda / `NUCLEAR_EPS`."""
    others: tuple[str, ...] = ("Adam a=100", "RMSProp", "momentum", "sign")
    """The dynamics run with the ratio at `strength` besides gradient flow and Adam."""
    reference_solver: str = "CLARABEL"
    """The nuclear minimiser's solver (`analysis.references.min_nuclear`): SCS where Clarabel does not fit."""


GRIDS = {
    False: Grid(
        n=30,
        rank=2,
        m=200,
        seeds=3,
        strengths=(0.1, 1.0, 3.0, 10.0, 100.0),
        strength=3.0,
        fast=30.0,
        slow=3000.0,
        factored_penalties=True,
    ),
    True: Grid(
        n=15, rank=2, m=70, seeds=1, strengths=(1.0, 3.0), strength=3.0, fast=8.0, slow=600.0, factored_penalties=False
    ),
}
"""By `ctx.quick`. Full: 200 of 900 entries (22 %; the rank-2 truth has 116 degrees of freedom), where the
nuclear minimiser's test error is 0.13-0.31 over the seeds. Quick: the same contrasts at n = 15 with one seed, two
strengths and the factored cells unpenalised; 294 thousand steps in all with strengths (3, 30), of which 120
thousand in the gradient flows at 30, hence (1, 3)."""
ARORA_GRIDS = {
    False: Grid(
        n=100,
        rank=5,
        m=2000,
        seeds=3,
        strengths=(0.1, 1.0, 10.0, 100.0),
        strength=10.0,
        fast=20.0,
        slow=3000.0,
        factored_penalties=False,
        nuclear_strengths=(0.1, 1.0, 10.0),
        others=("Adam a=100", "RMSProp", "sign"),
        reference_solver="SCS",
    ),
    True: GRIDS[True],
}
"""The Arora setting (the depth experiment's problem: n = 100, rank 5, 2000 of 10^4 entries, where the nuclear
minimiser's test error is ~0.04 and depth 3's ~2e-5), the strengths three decades around the one that balances the
data and the penalty at this size (R's gradient falls like 1 / ||W||_F ~ 1 / n, so ~3x n = 30's); the nuclear
penalty's at and below it. Measured on seed 0
before the grid was fixed: the Adam flow with the ratio at lambda = 10 is best (3.7e-4) at t ~ 6 and has drifted to
0.03 by t = 15, gradient flow's best (4.1e-4) is at t ~ 1200 and it has drifted to 2.1 by t = 10^4. The factored
cells keep only their unpenalised runs, and the momentum flow is cut (time: its runs took 10 and 62 thousand steps,
the third seed had not finished after 28 minutes on a shared core). Quick: the penalties experiment's quick grid (its runs are shared)."""
ARORA_MID_GRIDS = {False: dataclasses.replace(ARORA_GRIDS[False], m=1500), True: GRIDS[True]}
"""The Arora grid at m = 1500: between the failure at 1000 and the recoveries at 2000."""
ARORA_FEW_GRIDS = {False: dataclasses.replace(ARORA_GRIDS[False], m=1000), True: GRIDS[True]}
"""The Arora grid at m = 1000 (next to the truth's 975 degrees of freedom): where the depth experiment finds the
nuclear minimiser at test error ~0.5 and depth 3 worse (~1.7), the regime in which the seeds say the ratio
recovers and the nuclear norm fails."""
EPS = 1e-3
"""eps of the adaptive flows (see the module docstring)."""
EPS_CHECK = 1e-4
INIT = 1e-3
INIT_SEED_OFFSET = 10_000
RTOL = 1e-6
"""Figure accuracy: the drift is sensitive to the tolerance late on, the best test error is not (EpsCheck)."""
SAVES = 60
MAX_STEPS = 200_000
"""A run that needs more is reported as failed (the table counts it), not waited for."""
NUCLEAR_EPS = 0.1
"""Smoothing of the nuclear penalty: singular values of the problem are ~1-10; eps = 1e-3 made the penalised
gradient flow stiff (Hessian ~ lambda / eps) and cost 35 thousand steps at lambda = 1."""
SAME = 2.0
"""Best test errors within this factor count as the same."""
NEAR_MSE = 1e-2
"""The conjecture's "near A(W) = y": data loss per observed entry (mean squared residual) at most this before the
best time, i.e. residuals ~0.1 against observed entries ~1."""

DYNAMICS = {
    "gradient flow": {"name": "gradient"},
    "Adam": {"name": "adam", "a": 10.0, "b": 1.0, "eps": EPS},
    "Adam a=100": {"name": "adam", "a": 100.0, "b": 1.0, "eps": EPS},
    "RMSProp": {"name": "rmsprop", "b": 1.0, "eps": EPS},
    "momentum": {"name": "momentum", "a": 10.0},
    "sign": {"name": "sign", "eps": EPS},
}
"""The dynamics, by the names the table uses (flow descriptions)."""
SLOW = ("gradient flow", "momentum")
TRAIN_MSE = 1e-6
NUCLEAR_HORIZON = 0.1
"""Of the slow horizon, for the nuclear-penalised gradient flow: it converges (its objective is convex in W) well
before, and its tail to 3000 cost 110 thousand Tsit5 steps at lambda = 10 for nothing."""


def stop_loss(config: dict) -> float | None:
    """Unpenalised runs stop at Arora's training MSE `TRAIN_MSE` (they converge to an interpolant, and the tail
    past it is stiff and says nothing); penalised runs are followed to their horizon."""
    return config["m"] * TRAIN_MSE / 2 if config["penalty"] == "none" else None


def horizon(grid: Grid, config: dict) -> float:
    """The time a run is integrated to: the grid's slow or fast horizon by dynamics."""
    if config["dynamics"] not in SLOW:
        return grid.fast
    return grid.slow * (NUCLEAR_HORIZON if config["penalty"] == "nuclear" else 1.0)


RATIO = {"eps": 1e-3, "delta": 1.0}
"""The ratio's smoothing. delta = 1 caps its gradient at O(1) near a small init, where the exact ratio's
gradient is O(1 / ||W||_F) (a 1e4-fold stiffness at init 1e-3 with lambda = 10, measured as a run that did not
finish); where W has grown to ||W||_F ~ ||W*||_F = n it changes R by a factor 1 + O(1 / ||W||_F^2) (< 1e-3)."""
PENALTIES = {
    "none": None,
    "nuclear": {"name": "nuclear", "eps": NUCLEAR_EPS},
    "ratio": {"name": "ratio", **RATIO},
    "Hoyer-square": {"name": "hoyer-square", **RATIO},
    "ratio on each factor": {"name": "each-factor", "penalty": {"name": "ratio", **RATIO}},
}
PARAMETERIZATIONS = {
    "depth 1": {"name": "direct"},
    "UV^T": {"name": "factored"},
    "depth 3": {"name": "deep", "depth": 3},
}


def cells(grid: Grid) -> list[dict]:
    """The grid, cut where a contrast is settled elsewhere (see the paper's findings section):

    * depth 1 (direct W): ratio, nuclear and Hoyer-square under gradient flow and Adam at every strength, the
      ratio under the other dynamics at `grid.strength` (no penalty leaves W_0 in place: its error is W_0's);
    * U V^T and depth 3: no penalty under gradient flow and Adam; (`grid.factored_penalties`) U V^T with the ratio
      under Adam at `grid.strength`. Cut, measured: depth 3 with the ratio under Adam, on the product and on each
      factor, stalled in a sign-like stiff regime (200 thousand steps reached t = 14.7-17.9 of 30, two seeds each,
      6 minutes a run on a shared core); the penalised U V^T and depth-3 gradient-flow runs are not here: depth 3
      with the ratio under gradient flow is stiff too (seed 0 at n = 30: 200 thousand Tsit5 steps reached t = 224
      of 3000; at n = 15 diffrax's Kvaerno5 with a dense Jacobian took 46 s on the product, where the test error
      grew to 1.8e3 by t = 600, and over 400 s on each factor, when it was stopped). The `each_factor` experiment
      runs the depth-3 ones with the Runge-Kutta-Chebyshev switch (the same product run: 6.9 s, the same 1.8e3).
    """
    out = [("depth 1", "none", None, "gradient flow")]
    for s in grid.strengths:
        out += [("depth 1", p, s, d) for p in ("ratio", "Hoyer-square") for d in ("gradient flow", "Adam")]
    out += [
        ("depth 1", "nuclear", s, d)
        for s in grid.nuclear_strengths or grid.strengths
        for d in ("gradient flow", "Adam")
    ]
    out += [("depth 1", "ratio", grid.strength, d) for d in grid.others]
    for param in ("UV^T", "depth 3"):
        out += [(param, "none", None, d) for d in ("gradient flow", "Adam")]
    out += [("UV^T", "ratio", grid.strength, "Adam")] * grid.factored_penalties
    return [
        {
            "n": grid.n,
            "rank": grid.rank,
            "m": grid.m,
            "seed": seed,
            "parameterization": param,
            "penalty": pen,
            "strength": s,
            "dynamics": d,
        }
        for param, pen, s, d in out
        for seed in range(grid.seeds)
    ]


def problem(config: dict) -> flows.EntryProblem:
    return flows.completion(
        n=config["n"],
        m=config["m"],
        rank=config["rank"],
        seed=config["seed"],
        symmetric=False,
        truth_norm=float(config["n"]),
    )


def observed(p: flows.EntryProblem) -> np.ndarray:
    """$P_\\Omega(W^*)$: the observations in place, zeros elsewhere (the direct parameterization's init)."""
    W = np.zeros(p.shape)
    W[np.asarray(p.rows), np.asarray(p.cols)] = np.asarray(p.y)
    return W


def _smoothed(description: dict, delta: float | None) -> dict:
    """A penalty's description with the ratio's smoothing `delta` in place of `RATIO`'s (None: as it is)."""
    if delta is None:
        return description
    if "penalty" in description:  # a penalty on each factor: its matrix penalty
        return {**description, "penalty": _smoothed(description["penalty"], delta)}
    if "delta" not in description:
        raise ValueError(f"delta applies to the ratio and Hoyer-square, not {description['name']}")
    return {**description, "delta": delta}


def build(config: dict):
    """The flow of one cell and its initial state (see the module docstring); an optional `config["delta"]` sets the
    ratio's smoothing (the each_factor experiment's sweep)."""
    p = problem(config)
    description = {
        "parameterization": PARAMETERIZATIONS[config["parameterization"]],
        "dynamics": {**DYNAMICS[config["dynamics"]], **config.get("dynamics_override", {})},
    }
    if config["penalty"] != "none":
        description |= {
            "penalty": _smoothed(PENALTIES[config["penalty"]], config.get("delta")),
            "strength": config["strength"],
        }
    flow = flows.Flow.from_description(p, description)
    if config["parameterization"] == "depth 1":
        return flow, flow.dynamics.init(jnp.asarray(observed(p)))
    depth = PARAMETERIZATIONS[config["parameterization"]].get("depth", 2)
    return flow, flow.init(scale=INIT ** (1.0 / depth), kind="gaussian", seed=INIT_SEED_OFFSET + config["seed"])


def path(traj: flows.Trajectory, m: int) -> dict[str, np.ndarray]:
    """What is plotted and tabulated of one run, per saved time."""
    sigma = traj.singular_values
    return {
        "t": np.asarray(traj.ts),
        "error": test_error(traj.W, traj.truth),
        "mse": 2 * np.asarray(traj.loss) / m,
        "erank": np.asarray(traj.effective_rank),
        "norm": np.linalg.norm(sigma, axis=-1),
        "ratio": sigma.sum(-1) / np.linalg.norm(sigma, axis=-1),
    }


def summary(curve: dict, nuclear_error: float, budget: float) -> dict[str, float]:
    """Best test error and when, the window below the nuclear minimiser's error, the error at the horizon, the best
    within the time budget `budget` (the adaptive flows' horizon: a fixed budget with an oracle stopping time), and
    the largest data loss per observed entry before the best time (the conjecture's "near A(W) = y")."""
    error, ts = curve["error"], curve["t"]
    best = int(np.argmin(error))
    below = np.flatnonzero(error < nuclear_error)
    return {
        "best": float(error[best]),
        "t_best": float(ts[best]),
        "end": float(error[-1]),
        "budget": float(error[ts <= budget].min()),
        "window_start": float(ts[below[0]]) if below.size else np.nan,
        "window_end": float(ts[below[-1]]) if below.size else np.nan,
        "erank_best": float(curve["erank"][best]),
        "erank_start": float(curve["erank"][0]),
        "mse_max_before_best": float(curve["mse"][: best + 1].max()),
        "norm_end": float(curve["norm"][-1]),
        "ratio_end": float(curve["ratio"][-1]),
    }


def _mean(rows: list[dict], key: str) -> float:
    return finite_mean([r[key] for r in rows])


def _stat(rows: list[dict] | None, key: str) -> str:
    """The mean over seeds as a LaTeX number, "n/a" for a cell that is not there."""
    return tex_number(_mean(rows, key)) if rows else "n/a"


def verdict_same(a: float, b: float) -> str:
    """'same' when within the factor SAME, else which is lower."""
    return "same" if max(a, b) <= SAME * min(a, b) else ("lower" if a < b else "higher")


STORE = "penalties"
"""The store folder of every run of a penalties grid (both experiments below, span and adam_steps): runs are keyed
by their configuration, so grids that share cells share their runs."""


def nuclear_errors(ctx: Context, grid: Grid) -> dict[int, float]:
    """The minimum-nuclear-norm completion's test error per seed of `grid`, cached in `STORE` (shared by every
    experiment on the grid's problems)."""
    out = {}
    for seed in range(grid.seeds):
        p = problem({"n": grid.n, "m": grid.m, "rank": grid.rank, "seed": seed})
        X = ctx.cached(
            STORE,
            {
                "reference": "min-nuclear",
                "solver": grid.reference_solver,
                "n": grid.n,
                "m": grid.m,
                "rank": grid.rank,
                "seed": seed,
            },
            lambda p=p: {"X": references.min_nuclear(p, solver=grid.reference_solver).X},
        )["X"]
        out[seed] = float(test_error(X, p.truth))
    return out


class Penalties(Experiment):
    """The grid at one pair of scales (`grids`, by `ctx.quick`); its figures are named after the experiment and its
    macros carry `prefix` (the code writes them as "Pen..." and the prefix replaces that)."""

    def __init__(self, name: str, title: str, grids: dict[bool, Grid], prefix: str):
        self.name, self.title, self.grids, self.prefix = name, title, grids, prefix

    def run(self, ctx: Context) -> None:
        grid = self.grids[ctx.quick]
        configs = cells(grid)
        check = {
            **configs[0],
            "parameterization": "depth 1",
            "penalty": "ratio",
            "strength": grid.strength,
            "dynamics": "Adam",
            "seed": 0,
        }
        configs.append({**check, "dynamics_override": {"eps": EPS_CHECK}})
        nuclear_error = nuclear_errors(ctx, grid)
        curves, failed = {}, []
        plans = sorted({(horizon(grid, c), stop_loss(c) or 0.0) for c in configs})
        for t1, stop in plans:
            group = [c for c in configs if (horizon(grid, c), stop_loss(c) or 0.0) == (t1, stop)]
            for run in ctx.sweep(
                STORE,
                build,
                group,
                t1=t1,
                ts=flows.default_ts(t1, SAVES),
                rtol=RTOL,
                max_steps=MAX_STEPS,
                stop_loss=stop or None,
            ):
                key = _key(run.config)
                if run.status == "failed":
                    failed.append(key)
                else:
                    curves[key] = path(run.load(), grid.m)
        budget = grid.fast
        rows = {key: summary(curve, nuclear_error[key[-1]], budget) for key, curve in curves.items()}
        cellwise: dict[tuple, list[dict]] = {}
        for key, row in rows.items():
            cellwise.setdefault(key[:-1], []).append(row)
        # A cell counts only with every seed finished (a failed seed is reported, not averaged away).
        cellwise = {k: v for k, v in cellwise.items() if len(v) == grid.seeds or k[4]}  # k[4]: the one-seed eps check

        def best_strength(param, penalty, dynamics):
            """The strength of the sweep with the lowest mean best test error (None: no finished cell)."""
            options = [
                (k[2], _mean(v, "best"))
                for k, v in cellwise.items()
                if k[:2] == (param, penalty) and k[3] == dynamics and k[4] == ""
            ]
            return min(options, key=lambda o: o[1])[0] if options else None

        nuclear = list(nuclear_error.values())
        _figures(ctx, self.name.replace("_", "-"), grid, curves, cellwise, best_strength, nuclear)
        macros = _numbers(ctx, self.name, grid, cellwise, best_strength, nuclear, failed)
        ctx.macros(self.name, {self.prefix + name.removeprefix("Pen"): value for name, value in macros.items()})


def _key(config: dict) -> tuple:
    """(parameterization, penalty, strength, dynamics, override, seed): one run."""
    override = ",".join(f"{k}={v:g}" for k, v in sorted(config.get("dynamics_override", {}).items()))
    return (
        config["parameterization"],
        config["penalty"],
        config["strength"],
        config["dynamics"],
        override,
        config["seed"],
    )


COLOURS = {"gradient flow": "C0", "Adam": "C1", "Adam a=100": "C5", "RMSProp": "C2", "momentum": "C3", "sign": "C4"}


def _band(ax, runs: list[dict], key: str, colour: str, label: str, x: str = "t") -> None:
    """Mean over seeds with the min-max band (runs share their save times)."""
    values = np.array([r[key] for r in runs])
    ax.plot(runs[0][x], values.mean(0), color=colour, label=label)
    if len(runs) > 1:
        ax.fill_between(runs[0][x], values.min(0), values.max(0), color=colour, alpha=0.2, linewidth=0)


def _figures(ctx, stem, grid, curves, cellwise, best_strength, nuclear) -> None:
    seeds = range(grid.seeds)

    def runs(param, penalty, strength, dynamics):
        return [curves[k] for k in ((param, penalty, strength, dynamics, "", s) for s in seeds) if k in curves]

    # Test error against time: depth 1 with the ratio at each dynamics' best strength, and the references.
    fig, axes = new_figure(2, width=3.4, height=2.8)
    for ax, names in zip(axes, (("gradient flow", "momentum"), ("Adam", "Adam a=100", "RMSProp", "sign"))):
        for d in names:
            s = best_strength("depth 1", "ratio", d)
            if s is not None:
                _band(ax, runs("depth 1", "ratio", s, d), "error", COLOURS[d], f"{d}, $\\lambda$ = {s:g}")
        ax.axhline(np.mean(nuclear), color="k", linestyle="--", label="min. nuclear norm")
        ax.set(
            xscale="log",
            yscale="log",
            xlabel="time $t$ (flow units)",
            ylabel="test error (MSE, all entries)",
            xlim=(1e-2, None),
        )
        ax.legend(fontsize="small", loc="lower left")
    axes[0].set_title("depth 1 + ratio: gradient-speed flows")
    axes[1].set_title("depth 1 + ratio: adaptive flows")
    ctx.figure(fig, f"{stem}-time")

    # Best test error against strength: every dynamics with the ratio; nuclear and Hoyer-square.
    fig, (ax,) = new_figure(1, width=6.0, height=3.0)
    for penalty, style in (("ratio", "-o"), ("nuclear", ":s"), ("Hoyer-square", "--^")):
        for d in DYNAMICS:
            points = sorted(
                (k[2], _mean(v, "best"))
                for k, v in cellwise.items()
                if k[:2] == ("depth 1", penalty) and k[3] == d and k[4] == ""
            )
            if points:
                ax.plot(*zip(*points), style, color=COLOURS[d], label=f"{penalty}, {d}", markersize=4)
    ax.axhline(np.mean(nuclear), color="k", linestyle="--", label="min. nuclear norm")
    ax.set(
        xscale="log",
        yscale="log",
        xlabel=r"penalty strength $\lambda$",
        ylabel="best test error over time",
        title="depth 1: strength sweep (mean over seeds)",
    )
    ticks = sorted(set(grid.strengths) | set(grid.nuclear_strengths or ()))
    ax.set_xticks(ticks, [f"{v:g}" for v in ticks])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.legend(fontsize="x-small", loc="center left", bbox_to_anchor=(1.02, 0.5))
    ctx.figure(fig, f"{stem}-strength")

    # The drift (item 4) and the path (item 6): gradient flow and Adam with the ratio at their best strengths.
    fig, axes = new_figure(4, width=3.0, height=2.6, rows=2)
    for d in ("gradient flow", "Adam"):
        s = best_strength("depth 1", "ratio", d)
        if s is None:
            continue
        group = runs("depth 1", "ratio", s, d)
        label = f"{d}, $\\lambda$ = {s:g}"
        _band(axes[0], group, "norm", COLOURS[d], label)
        _band(axes[1], group, "ratio", COLOURS[d], label)
        _band(axes[2], group, "error", COLOURS[d], label)
        for curve in group:
            axes[3].plot(curve["erank"][1:], np.maximum(curve["mse"][1:], 1e-16), color=COLOURS[d], alpha=0.8)
            best = int(np.argmin(curve["error"]))
            axes[3].plot(curve["erank"][best], max(curve["mse"][best], 1e-16), "o", color=COLOURS[d])
    axes[0].axhline(grid.n, color="k", linestyle=":", label=r"$\|W^*\|_F$")
    axes[1].axhline(1.0, color="k", linestyle=":", label="infimum 1")
    axes[2].axhline(np.mean(nuclear), color="k", linestyle="--", label="min. nuclear norm")
    for ax, ylabel in zip(axes[:3], (r"$\|W\|_F$", r"$R = \|W\|_*/\|W\|_F$", "test error")):
        ax.set(xscale="log", xlabel="time $t$", ylabel=ylabel, xlim=(1e-2, None))
        ax.legend(fontsize="x-small")
    axes[0].set_yscale("log")
    axes[2].set_yscale("log")
    axes[3].set(
        yscale="log",
        xlabel="effective rank",
        ylabel="data loss per observed entry",
        title="path (dot: best test error)",
    )
    ctx.figure(fig, f"{stem}-drift")


def _numbers(ctx, name, grid, cellwise, best_strength, nuclear, failed) -> dict[str, str]:
    """Writes the grid's table; returns the macros (named "Pen...")."""

    def cell(param, penalty, dynamics, strength="best", override=""):
        s = best_strength(param, penalty, dynamics) if strength == "best" else strength
        return s, cellwise.get((param, penalty, s, dynamics, override))

    table_rows, macros = [], {}
    order = [("depth 1", "none", d) for d in ("gradient flow",)]
    order += [("depth 1", pen, d) for pen in ("nuclear", "ratio", "Hoyer-square") for d in DYNAMICS]
    order += [
        (param, pen, d) for param in ("UV^T", "depth 3") for pen in ("none", "ratio") for d in ("gradient flow", "Adam")
    ]
    order += [("depth 3", "ratio on each factor", d) for d in ("gradient flow", "Adam")]
    for param, pen, d in order:
        s, rows = cell(param, pen, d, "best" if pen != "none" else None)
        if rows is None:
            continue
        beats = sum(r["best"] < nuclear_r for r, nuclear_r in zip(rows, nuclear))
        window = (
            f"{tex_number(_mean(rows, 'window_start'))}--{tex_number(_mean(rows, 'window_end'))}" if beats else "--"
        )
        table_rows.append(
            [
                param.replace("UV^T", "$UV^T$"),
                pen,
                d,
                "--" if s is None else tex_number(s),
                tex_spread([r["best"] for r in rows]),
                tex_number(_mean(rows, "t_best")),
                tex_spread([r["budget"] for r in rows]),
                tex_spread([r["end"] for r in rows]),
                f"{beats}/{len(rows)}",
                window,
            ]
        )
    ctx.table(
        name,
        "grid",
        "lllrlrllrl",
        [
            "param.",
            "penalty",
            "dynamics",
            r"$\lambda$",
            "best test error",
            r"$t_{\mathrm{best}}$",
            f"best, $t \\le {grid.fast:g}$",
            "at horizon",
            "$<$ nuc.",
            "window",
        ],
        table_rows,
    )

    names = {
        "gradient flow": "GF",
        "Adam": "Adam",
        "Adam a=100": "AdamFast",
        "RMSProp": "RMSProp",
        "momentum": "Momentum",
        "sign": "Sign",
    }
    # Every macro is written at every scale ("n/a" for a cell the grid lacks), so the paper builds from either.
    for d, tag in names.items():
        s, rows = cell("depth 1", "ratio", d)
        macros |= {
            f"Pen{tag}Strength": tex_number(s) if rows else "n/a",
            **{
                f"Pen{tag}{name}": _stat(rows, key)
                for name, key in (
                    ("Best", "best"),
                    ("TBest", "t_best"),
                    ("End", "end"),
                    ("Budget", "budget"),
                    ("NormEnd", "norm_end"),
                    ("RatioEnd", "ratio_end"),
                )
            },
            f"Pen{tag}Beats": str(sum(r["best"] < nu for r, nu in zip(rows or [], nuclear))),
        }
    for pen, tag in (("nuclear", "Nuc"), ("Hoyer-square", "Hoyer")):
        for d, dtag in (("gradient flow", "GF"), ("Adam", "Adam")):
            s, rows = cell("depth 1", pen, d)
            macros |= {
                f"Pen{tag}{dtag}Best": _stat(rows, "best"),
                f"Pen{tag}{dtag}Strength": tex_number(s) if rows else "n/a",
            }
    for param, ptag in (("UV^T", "Factored"), ("depth 3", "Deep")):
        for pen, etag in (("none", "None"), ("ratio", "Ratio"), ("ratio on each factor", "Each")):
            for d, dtag in (("gradient flow", "GF"), ("Adam", "Adam")):
                _, rows = cell(param, pen, d, None if pen == "none" else grid.strength)
                macros |= {
                    f"Pen{ptag}{etag}{dtag}Best": _stat(rows, "best"),
                    f"Pen{ptag}{etag}{dtag}End": _stat(rows, "end"),
                    f"Pen{ptag}{etag}{dtag}TBest": _stat(rows, "t_best"),
                }
    _, start = cell("depth 1", "none", "gradient flow", None)
    _, eps_default = cell("depth 1", "ratio", "Adam", grid.strength)
    _, eps_check = cell("depth 1", "ratio", "Adam", grid.strength, f"eps={EPS_CHECK:g}")
    macros |= {
        "PenN": str(grid.n),
        "PenRank": str(grid.rank),
        "PenM": str(grid.m),
        "PenSeeds": str(grid.seeds),
        "PenFraction": f"{100 * grid.m / grid.n**2:.0f}",
        "PenEps": tex_number(EPS),
        "PenRtol": tex_number(RTOL),
        "PenInit": tex_number(INIT),
        "PenNuclearEps": tex_number(NUCLEAR_EPS),
        "PenStrengths": ", ".join(f"{s:g}" for s in grid.strengths),
        "PenStrength": tex_number(grid.strength),
        "PenHorizonSlow": tex_number(grid.slow),
        "PenHorizonFast": tex_number(grid.fast),
        "PenHorizonNuclear": tex_number(grid.slow * NUCLEAR_HORIZON),
        "PenNuclearMean": tex_number(float(np.mean(nuclear))),
        "PenNuclearMin": tex_number(float(np.min(nuclear))),
        "PenNuclearMax": tex_number(float(np.max(nuclear))),
        "PenSame": tex_number(SAME),
        "PenFailed": str(len(failed)),
        "PenMaxSteps": f"{MAX_STEPS:,}".replace(",", "{,}"),
        "PenStartError": _stat(start, "end"),
        "PenStartERank": _stat(start, "erank_start"),
        "PenEpsCheck": tex_number(EPS_CHECK),
        "PenEpsCheckBest": _stat(eps_check, "best"),
        "PenEpsCheckTBest": _stat(eps_check, "t_best"),
        "PenEpsDefaultBest": _stat(eps_default[:1] if eps_default else None, "best"),
        "PenEpsDefaultTBest": _stat(eps_default[:1] if eps_default else None, "t_best"),
    }
    return macros | _verdicts(cell, nuclear, grid.strength)


def verdict_three(rmsprop: list[dict], momentum: list[dict]) -> str:
    """Claim 3 from the two cells' `summary` rows: the denominator (RMSProp flow) beats the numerator (momentum flow)
    by more than the factor `SAME` in the mean best test error over time, within the budget, or both."""
    over_time = _mean(rmsprop, "best") * SAME < _mean(momentum, "best")
    budget = _mean(rmsprop, "budget") * SAME < _mean(momentum, "budget")
    return "holds" if over_time and budget else "holds on a fixed time budget only" if budget else "fails"


def _verdicts(cell, nuclear, strength) -> dict[str, str]:
    """The claims' verdicts from the cells (see the module docstring for the rules); "n/a" where a cell is missing."""
    out = dict.fromkeys(
        [
            "PenVerdictOne",
            "PenBestDynamics",
            "PenVerdictTwo",
            "PenVerdictTwoBudget",
            "PenVerdictThree",
            "PenRMSPropBudgetBest",
            "PenMomentumBudgetBest",
            "PenConjectureMSE",
            "PenConjectureERankStart",
            "PenConjectureERankBest",
            "PenVerdictFive",
            "PenVerdictSix",
            "PenVerdictSevenEachGF",
            "PenVerdictSevenEachAdam",
            "PenVerdictSevenHoyerGF",
            "PenVerdictSevenHoyerAdam",
        ],
        "n/a",
    )
    ratio = {d: cell("depth 1", "ratio", d)[1] for d in DYNAMICS}
    ratio = {d: rows for d, rows in ratio.items() if rows}
    if not ratio:
        return out
    best_d = min(ratio, key=lambda d: _mean(ratio[d], "best"))
    rows = ratio[best_d]
    # Recovery where the nuclear norm fails: below its minimiser by more than the factor SAME, not merely below.
    recovers = [SAME * r["best"] < nu for r, nu in zip(rows, nuclear)]
    drifts = any(r["end"] > SAME * r["best"] for r in rows)
    out["PenVerdictOne"] = (
        "holds as a transient"
        if all(recovers) and drifts
        else "holds"
        if all(recovers)
        else "depends on the seed"
        if any(recovers)
        else "fails"
    )
    out["PenBestDynamics"] = best_d
    if "gradient flow" in ratio and "Adam" in ratio:
        gf, adam = _mean(ratio["gradient flow"], "best"), _mean(ratio["Adam"], "best")
        gf_budget = _mean(ratio["gradient flow"], "budget")
        gf_beats = [SAME * r["best"] < nu for r, nu in zip(ratio["gradient flow"], nuclear)]
        out["PenVerdictTwo"] = (
            "fails in the flow limit"
            if all(gf_beats) or verdict_same(gf, adam) != "higher"
            else "depends on the seed"
            if any(gf_beats)
            else "holds"
        )
        out["PenVerdictTwoBudget"] = "holds" if gf_budget > SAME * adam else "fails"
    if "RMSProp" in ratio and "momentum" in ratio:
        out["PenRMSPropBudgetBest"] = tex_number(_mean(ratio["RMSProp"], "budget"))
        out["PenMomentumBudgetBest"] = tex_number(_mean(ratio["momentum"], "budget"))
        out["PenVerdictThree"] = verdict_three(ratio["RMSProp"], ratio["momentum"])
    if "Adam" in ratio:
        adam_rows = ratio["Adam"]
        near = max(r["mse_max_before_best"] for r in adam_rows)
        fell = all(r["erank_best"] < r["erank_start"] for r in adam_rows)
        out["PenConjectureMSE"] = tex_number(near)
        out["PenConjectureERankStart"] = tex_number(_mean(adam_rows, "erank_start"))
        out["PenConjectureERankBest"] = tex_number(_mean(adam_rows, "erank_best"))
        out["PenVerdictFive"] = "holds" if fell and near <= NEAR_MSE else "fails"
        _, deep = cell("depth 3", "none", "gradient flow", None)
        if deep:
            out["PenVerdictSix"] = {
                "same": "holds",
                "lower": "holds (depth 1 + ratio + Adam is better)",
                "higher": "fails",
            }[verdict_same(_mean(adam_rows, "best"), _mean(deep, "end"))]
    for d, tag in (("gradient flow", "GF"), ("Adam", "Adam")):
        _, product = cell("depth 3", "ratio", d, strength)
        _, each = cell("depth 3", "ratio on each factor", d, strength)
        if product and each:
            out[f"PenVerdictSevenEach{tag}"] = verdict_same(_mean(each, "best"), _mean(product, "best"))
        _, hoyer = cell("depth 1", "Hoyer-square", d)
        if hoyer and d in ratio:
            out[f"PenVerdictSevenHoyer{tag}"] = verdict_same(_mean(hoyer, "best"), _mean(ratio[d], "best"))
    return out


EXPERIMENT = Penalties(
    "penalties",
    "penalties x dynamics x depth in sparse completion: the ratio, Adam's two halves, "
    "drift and the seeds' claims 1-3, 5-7",
    GRIDS,
    "Pen",
)
ARORA_EXPERIMENT = Penalties(
    "penalties_arora",
    "the penalties grid at the Arora scale (n = 100, rank 5, m = 2000): claims 1-3, 5-7 against depth",
    ARORA_GRIDS,
    "PenArora",
)
ARORA_MID_EXPERIMENT = Penalties(
    "penalties_arora_mid", "the Arora-scale penalties grid at m = 1500", ARORA_MID_GRIDS, "PenAroraMid"
)
ARORA_FEW_EXPERIMENT = Penalties(
    "penalties_arora_few",
    "the Arora-scale penalties grid with fewer entries (m = 1000), where the nuclear norm and depth fail",
    ARORA_FEW_GRIDS,
    "PenAroraFew",
)
