r"""Sparse completion in Arora et al.'s setting, shared by the experiments that run on it (depth, the penalties grids,
span, adam_steps, denominator, each_factor): the problems and their seeds, the inits, the nuclear-norm reference
(solved once per problem), the cells of the penalties x dynamics x parameterization grid, how each run is built
and measured, and the verdict rules the claims share.

Problems. `flows.completion(n, m, rank, seed, symmetric=False, truth_norm=n)`: $W^* = Z_1 Z_2^T$ with Gaussian
factors scaled to $\|W^*\|_F = n$ (entries ~1), m entries sampled uniformly without replacement. Factored
parameterizations of depth N (width n) start from Gaussian factors with entries $N(0, s^2 / n)$,
$s = \text{init}^{1/N}$ (Arora's per-layer std $\text{init}^{1/N} n^{-1/2}$), so $\|W_0\|_F \approx \text{init}
\sqrt n$; their draws use seed `INIT_SEED_OFFSET` + the problem seed, so the init's normals are not the truth's.
The direct parameterization of the penalties grid starts from the zero-filled observations $P_\Omega(W^*)$ (the
data loss is 0 there, so whatever moves W is the penalty). Unpenalised runs stop at Arora's training MSE
`TRAIN_MSE` (mean over observed entries), $L = \frac12 \|r\|^2 \le m\,\text{TRAIN\_MSE} / 2$.

Measurement (`curve`), on the saved times of a run: test error $\frac{1}{n^2}\sum_{jk}(W - W^*)_{jk}^2$ (Arora's,
the squared relative Frobenius error), data loss per observed entry, effective rank, $\|W\|_F$ and
$R = \|W\|_*/\|W\|_F$; `summary` reads the best test error over time and when, the window below the nuclear
minimiser's, the error at the horizon and within a budget.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

import flows
from analysis import references

from ._base import Context, finite_mean, test_error
from ._protocol import Split, held_out, split

INIT_SEED_OFFSET = 10_000
TRAIN_MSE = 1e-6
"""Arora's stopping rule: training MSE (mean over observed entries) at most this."""


def problem(config: dict) -> flows.EntryProblem:
    """The completion problem of a configuration's n, m, rank and seed."""
    return flows.completion(
        n=config["n"],
        m=config["m"],
        rank=config["rank"],
        seed=config["seed"],
        symmetric=False,
        truth_norm=float(config["n"]),
    )


def stop_at_train_mse(m: int) -> float:
    """The data loss $L = \\frac12\\|r\\|^2$ at Arora's training MSE over m observed entries."""
    return m * TRAIN_MSE / 2


def observed(p: flows.EntryProblem) -> np.ndarray:
    """$P_\\Omega(W^*)$: the observations in place, zeros elsewhere (the direct parameterization's init)."""
    W = np.zeros(p.shape)
    W[np.asarray(p.rows), np.asarray(p.cols)] = np.asarray(p.y)
    return W


def factor_init(flow: flows.Flow, init: float, depth: int, seed: int):
    """Gaussian factors of scale init^(1/depth) (module docstring), drawn with the problem's seed offset."""
    return flow.init(scale=init ** (1.0 / depth), kind="gaussian", seed=INIT_SEED_OFFSET + seed)


def nuclear_minimiser(ctx: Context, p: flows.AbstractProblem, solver: str = "SCS") -> dict[str, np.ndarray]:
    """`analysis.references.min_nuclear` of `p` (X, objective, iterations, feasibility), solved once per problem
    and solver in the store and shared by every experiment on that problem."""

    def solve() -> dict[str, np.ndarray]:
        reference = references.min_nuclear(p, solver=solver)
        return {
            "X": reference.X,
            "objective": reference.objective,
            "iterations": reference.iterations,
            "feasibility": reference.feasibility,
        }

    options = references.CVXPY_OPTIONS[solver]
    return ctx.cached({"reference": "min_nuclear", "problem": p, "solver": solver, "options": options}, solve)


# -- the penalties grid --------------------------------------------------------------------------------------------


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
    """Whether the U V^T cells include the ratio under Adam (the grid's stiffest penalised cells)."""
    nuclear_strengths: tuple[float, ...] | None = None
    """The nuclear penalty's sweep (None: `strengths`): its penalised minimiser shrinks toward 0 as lambda grows,
    and its gradient flow's stiffness grows like lambda / `NUCLEAR_EPS`."""
    others: tuple[str, ...] = ("Adam a=100", "RMSProp", "momentum", "sign")
    """The dynamics run with the ratio at `strength` besides gradient flow and Adam."""
    reference_solver: str = "CLARABEL"
    """The nuclear minimiser's solver (`nuclear_minimiser`): SCS where Clarabel does not fit."""


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
"""By quick. Full: 200 of 900 entries (22 %; the rank-2 truth has 116 degrees of freedom), where the nuclear
minimiser's test error is 0.13-0.31 over the seeds. Quick: the same contrasts at n = 15 with one seed, two
strengths and the factored cells unpenalised."""
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
"""The Arora setting (n = 100, rank 5, 2000 of 10^4 entries, where the nuclear minimiser's test error is ~0.04 and
depth 3's ~2e-5), the strengths three decades around the one that balances the data and the penalty at this size
(R's gradient falls like 1 / ||W||_F ~ 1 / n, so ~3x n = 30's); the nuclear penalty's at and below it. The factored
cells keep only their unpenalised runs, and the momentum flow runs in its own experiment (`denominator`). Quick: the
n = 30 grid's quick grid (its runs are shared)."""
ARORA_MID_GRIDS = {False: dataclasses.replace(ARORA_GRIDS[False], m=1500), True: GRIDS[True]}
"""The Arora grid at m = 1500: between the failure at 1000 and the recoveries at 2000."""
ARORA_FEW_GRIDS = {False: dataclasses.replace(ARORA_GRIDS[False], m=1000), True: GRIDS[True]}
"""The Arora grid at m = 1000 (next to the truth's 975 degrees of freedom), where the depth experiment finds the
nuclear minimiser at test error ~0.5."""

EPS = 1e-3
"""eps of the adaptive flows: on the Adam flow with the ratio, eps 1e-3 and 1e-4 give the same best test error and
time of it to two digits, while 1e-8 costs ten times the steps in the sign-like tail (penalties' eps check)."""
EPS_CHECK = 1e-4
INIT = 1e-3
RTOL = 1e-6
"""Figure accuracy: the drift is sensitive to the tolerance late on, the best test error is not."""
SAVES = 60
MAX_STEPS = 200_000
"""A run that needs more is reported as failed (the tables count it), not waited for."""
NUCLEAR_EPS = 0.1
"""Smoothing of the nuclear penalty: singular values of the problem are ~1-10; eps = 1e-3 makes the penalised
gradient flow stiff (Hessian ~ lambda / eps)."""
SAME = 2.0
"""Best test errors within this factor count as the same."""
NEAR_MSE = 1e-2
"""The conjecture's "near A(W) = y": data loss per observed entry (mean squared residual) at most this before the
best time, i.e. residuals ~0.1 against observed entries ~1."""
NUCLEAR_HORIZON = 0.1
"""Of the slow horizon, for the nuclear-penalised gradient flow, whose objective is convex in W."""

DYNAMICS = {
    "gradient flow": {"name": "gradient"},
    "Adam": {"name": "adam", "a": 10.0, "b": 1.0, "eps": EPS},
    "Adam a=100": {"name": "adam", "a": 100.0, "b": 1.0, "eps": EPS},
    "RMSProp": {"name": "rmsprop", "b": 1.0, "eps": EPS},
    "momentum": {"name": "momentum", "a": 10.0},
    "sign": {"name": "sign", "eps": EPS},
}
"""The dynamics, by the names the tables use (flow descriptions)."""
SLOW = ("gradient flow", "momentum")
RATIO = {"eps": 1e-3, "delta": 1.0}
"""The ratio's smoothing. delta = 1 caps its gradient at O(1) near a small init, where the exact ratio's gradient is
O(1 / ||W||_F) (a 1e4-fold stiffness at init 1e-3 with lambda = 10); where W has grown to ||W||_F ~ ||W*||_F = n it
changes R by a factor 1 + O(1 / ||W||_F^2) (< 1e-3)."""
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
COLOURS = {"gradient flow": "C0", "Adam": "C1", "Adam a=100": "C5", "RMSProp": "C2", "momentum": "C3", "sign": "C4"}


def stop_loss(config: dict) -> float | None:
    """Unpenalised runs stop at Arora's training MSE (they converge to an interpolant, and the tail past it is stiff
    and says nothing); penalised runs are followed to their horizon."""
    return stop_at_train_mse(config["m"]) if config["penalty"] == "none" else None


def horizon(grid: Grid, config: dict) -> float:
    """The time a run is integrated to: the grid's slow or fast horizon by dynamics."""
    if config["dynamics"] not in SLOW:
        return grid.fast
    return grid.slow * (NUCLEAR_HORIZON if config["penalty"] == "nuclear" else 1.0)


def solve_options(grid: Grid, config: dict, **extra) -> dict:
    """`flows.sweep`'s options for a cell of the grid: its horizon, `SAVES` log-spaced saves, `RTOL`, `MAX_STEPS`,
    the stop of an unpenalised run; `extra` overrides."""
    t1 = horizon(grid, config)
    return (
        dict(t1=t1, ts=flows.default_ts(t1, SAVES), rtol=RTOL, max_steps=MAX_STEPS, stop_loss=stop_loss(config)) | extra
    )


def cells(grid: Grid) -> list[dict]:
    """The grid's configurations:

    * depth 1 (direct W): ratio, nuclear and Hoyer-square under gradient flow and Adam at every strength, the
      ratio under the other dynamics at `grid.strength` (no penalty leaves W_0 in place: its error is W_0's);
    * U V^T and depth 3: no penalty under gradient flow and Adam; (`grid.factored_penalties`) U V^T with the ratio
      under Adam at `grid.strength`. The ratio on the factored products under both dynamics, on the product and on
      each factor, is the `each_factor` experiment's (with its stiff solver).
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


def ratio_configs(grid: Grid, dynamics: str) -> list[dict]:
    """The grid's depth-1 cell with the ratio at `grid.strength` under `dynamics`, every seed."""
    return [
        {
            "n": grid.n,
            "rank": grid.rank,
            "m": grid.m,
            "seed": seed,
            "parameterization": "depth 1",
            "penalty": "ratio",
            "strength": grid.strength,
            "dynamics": dynamics,
        }
        for seed in range(grid.seeds)
    ]


def _smoothed(description: dict, delta: float | None) -> dict:
    """A penalty's description with the ratio's smoothing `delta` in place of `RATIO`'s (None: as it is)."""
    if delta is None:
        return description
    if "penalty" in description:  # a penalty on each factor: its matrix penalty
        return {**description, "penalty": _smoothed(description["penalty"], delta)}
    if "delta" not in description:
        raise ValueError(f"delta applies to the ratio and Hoyer-square, not {description['name']}")
    return {**description, "delta": delta}


def observations(config: dict) -> Split | None:
    """With `config["validation"]` (a fraction of m): the problem's m training entries and that many more held out
    (`_protocol.split`); None without."""
    if "validation" not in config:
        return None
    held = held_out(config["m"], config["validation"])
    return split(problem({**config, "m": config["m"] + held}), config["seed"], held)


def training(config: dict) -> flows.EntryProblem:
    """The problem a run trains on: `problem(config)`, or its training entries when some are held out."""
    parts = observations(config)
    return problem(config) if parts is None else parts.train


def build(config: dict):
    """The flow of one cell and its initial state (module docstring); optional `config["delta"]` sets the ratio's
    smoothing, `config["dynamics_override"]` replaces rates of the dynamics, and `config["validation"]` holds out
    that fraction of the entries (`training`)."""
    p = training(config)
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
    return flow, factor_init(flow, INIT, depth, config["seed"])


def curve(traj: flows.Trajectory, config: dict) -> dict[str, np.ndarray]:
    """What is plotted and tabulated of one run, per saved time, and its step count."""
    sigma = traj.singular_values
    norm = np.linalg.norm(sigma, axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):  # R is undefined at W = 0 (a collapsed run): NaN
        ratio = sigma.sum(-1) / norm
    return {
        "t": np.asarray(traj.ts),
        "error": test_error(traj.W, traj.truth),
        "mse": 2 * np.asarray(traj.loss) / config["m"],
        "erank": np.asarray(traj.effective_rank),
        "norm": norm,
        "ratio": ratio,
        "steps": traj.stats["num_steps"],
    }


def summary(curve: dict, nuclear_error: float, budget: float) -> dict[str, float]:
    """Best test error and when, the window below the nuclear minimiser's error, the error at the horizon, the best
    within the time budget `budget` (a fixed budget with an oracle stopping time), and the largest data loss per
    observed entry before the best time (the conjecture's "near A(W) = y")."""
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


def mean(rows, key: str) -> float:
    """The mean of `key` over a cell's rows (dicts or a DataFrame), failed (NaN) left out."""
    return finite_mean([r[key] for r in rows] if isinstance(rows, list) else rows[key])


def verdict_same(a: float, b: float) -> str:
    """'same' when within the factor SAME, else which is lower."""
    return "same" if max(a, b) <= SAME * min(a, b) else ("lower" if a < b else "higher")


def verdict_three(rmsprop, momentum) -> str:
    """Claim 3 from the two cells' summary rows: the denominator (RMSProp flow) beats the numerator (momentum flow)
    by more than the factor `SAME` in the mean best test error over time, within the budget, or both."""
    over_time = mean(rmsprop, "best") * SAME < mean(momentum, "best")
    budget = mean(rmsprop, "budget") * SAME < mean(momentum, "budget")
    return "holds" if over_time and budget else "holds on a fixed time budget only" if budget else "fails"


def nuclear_errors(ctx: Context, grid: Grid) -> dict[int, float]:
    """The minimum-nuclear-norm completion's test error per seed of `grid`."""
    out = {}
    for seed in range(grid.seeds):
        p = problem({"n": grid.n, "m": grid.m, "rank": grid.rank, "seed": seed})
        out[seed] = float(test_error(nuclear_minimiser(ctx, p, grid.reference_solver)["X"], p.truth))
    return out


def band(ax, curves: list[dict], key: str, colour: str, label: str, x: str = "t") -> None:
    """Mean over seeds with the min-max band (runs share their save times)."""
    values = np.array([c[key] for c in curves])
    ax.plot(curves[0][x], values.mean(0), color=colour, label=label)
    if len(curves) > 1:
        ax.fill_between(curves[0][x], values.min(0), values.max(0), color=colour, alpha=0.2, linewidth=0)
