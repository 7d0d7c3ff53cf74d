r"""Sparse completion in Arora et al.'s setting, shared by the experiments that run on it (completion, steps, span,
depth): the problems and their seeds, the held-out entries, the inits, the nuclear-norm reference (solved once per
problem), and how a run is built.

Problems. `flows.completion(n, m, rank, seed, symmetric=False, truth_norm=n)`: $W^* = Z_1 Z_2^T$ with Gaussian
factors scaled to $\|W^*\|_F = n$ (entries ~1), m entries sampled uniformly without replacement; with a validation
fraction (`observations`) that many more entries are drawn and held out (`_protocol.split`). Factored
parameterizations of depth N (width n) start from Gaussian factors with entries $N(0, s^2 / n)$,
$s = \text{init}^{1/N}$ (Arora's per-layer std $\text{init}^{1/N} n^{-1/2}$), so $\|W_0\|_F \approx \text{init}
\sqrt n$; their draws use seed `INIT_SEED_OFFSET` + the problem seed, so the init's normals are not the truth's.
The direct parameterization starts from the zero-filled training entries $P_\Omega(W^*)$ (the data loss is 0 there,
so whatever moves W is the penalty). Unpenalised runs stop at Arora's training MSE `TRAIN_MSE` (mean over the
training entries), $L = \frac12 \|r\|^2 \le m\,\text{TRAIN\_MSE} / 2$.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

import flows
from analysis import references

from ._base import Context
from ._protocol import VALIDATION, Split, held_out, split


@dataclasses.dataclass(frozen=True)
class Scale:
    """One scale of the completion experiments: the problem (n x n, rank, m training entries), the seeds, the
    penalty strengths (one grid for every penalty and dynamics), and the two horizons (`horizon`)."""

    label: str
    """Its name in value keys and file names (the same at both scales of a reproduction)."""
    n: int
    rank: int
    m: int
    seeds: int
    strengths: tuple[float, ...]
    fast: float
    """The horizon of the adaptive flows, which move each coordinate at speed ~1."""
    slow: float
    """The horizon of gradient flow and the momentum flow, which move at the speed of the gradient."""
    solver: str = "CLARABEL"
    """The nuclear minimiser's solver (SCS where Clarabel's interior point does not fit)."""

    def config(self, seed: int, **cell) -> dict:
        """A run's configuration: this scale's problem at `seed`, its held-out entries, and the cell (parameterization,
        penalty, strength, dynamics)."""
        return {"n": self.n, "rank": self.rank, "m": self.m, "seed": seed, "held out": VALIDATION, **cell}

    def horizon(self, dynamics: str) -> float:
        """One horizon rule for every penalty: by the dynamics' time scale."""
        return self.slow if dynamics in GRADIENT_SPEED else self.fast

    def options(self, config: dict) -> dict:
        """`flows.sweep`'s options for a run: to its horizon, `SAVES` log-spaced saves, `RTOL`, `MAX_STEPS`; an
        unpenalised run stops at Arora's training MSE; a penalised gradient flow is integrated with the Runge-Kutta-
        Chebyshev switch, whose stabilised explicit steps follow the stiffness the penalty adds (the nuclear norm's
        curvature grows like lambda / eps) without linearising it."""
        t1 = self.horizon(config["dynamics"])
        options = dict(t1=t1, ts=flows.default_ts(t1, SAVES), rtol=RTOL, max_steps=MAX_STEPS)
        if config["penalty"] == "none":
            options["stop_loss"] = stop_at_train_mse(self.m)
        elif config["dynamics"] == "gradient flow":
            options["solver"] = flows.Tsit5ThenChebyshev()
        return options


GRADIENT_SPEED = ("gradient flow", "momentum")
SCALES = {
    "n = 30": {
        False: Scale(
            label="n30", n=30, rank=2, m=200, seeds=10, strengths=(0.3, 1.0, 3.0, 10.0), fast=30.0, slow=3000.0
        ),
        True: Scale(label="n30", n=15, rank=2, m=70, seeds=2, strengths=(1.0, 3.0), fast=8.0, slow=600.0),
    },
    "n = 100": {
        False: Scale(
            label="n100",
            n=100,
            rank=5,
            m=2000,
            seeds=5,
            strengths=(1.0, 3.0, 10.0, 30.0),
            fast=20.0,
            slow=3000.0,
            solver="SCS",
        ),
        True: Scale(
            label="n100", n=20, rank=2, m=100, seeds=2, strengths=(1.0, 3.0), fast=8.0, slow=600.0, solver="SCS"
        ),
    },
}
"""By name and quick. n = 30: 200 of 900 entries (22 %; the rank-2 truth has 116 degrees of freedom), where the
nuclear minimiser fails; n = 100: Arora et al.'s 2000 of 10^4 entries, rank 5. The strengths balance the data and
the penalty at each size (R's gradient falls like 1 / ||W||_F ~ 1 / n) and span a decade or more around that."""
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
    inputs = {"reference": "min_nuclear", "problem": p, "solver": solver, "options": options}
    return ctx.cached(inputs, solve, code=(solve, references))


INIT = 1e-3
"""The factored products' init scale (Arora's default)."""
EPS = 1e-3
"""eps of the adaptive flows (optax's default 1e-8 makes their sign-like regime, where a coordinate's gradient is
near zero, far stiffer); small against the penalised gradient's entries at the strengths used."""
RTOL = 1e-6
"""Figure accuracy: the drift is sensitive to the tolerance late on, the best test error is not."""
SAVES = 60
MAX_STEPS = 400_000
"""A run that needs more is reported as failed (the tables count it), not waited for."""
NUCLEAR_EPS = 0.1
"""Smoothing of the nuclear penalty: singular values of the problem are ~1-10; eps = 1e-3 makes the penalised
gradient flow stiff (Hessian ~ lambda / eps)."""
DYNAMICS = {
    "gradient flow": {"name": "gradient"},
    "Adam": {"name": "adam", "a": 10.0, "b": 1.0, "eps": EPS},
    "Adam a=100": {"name": "adam", "a": 100.0, "b": 1.0, "eps": EPS},
    "RMSProp": {"name": "rmsprop", "b": 1.0, "eps": EPS},
    "momentum": {"name": "momentum", "a": 10.0},
    "sign": {"name": "sign", "eps": EPS},
}
"""The dynamics, by the names the tables use (flow descriptions)."""
RATIO = {"eps": 1e-3, "delta": 1.0}
"""The ratio's smoothing. delta = 1 caps its gradient at O(1) near a small init, where the exact ratio's gradient is
O(1 / ||W||_F) (a 1e4-fold stiffness at init 1e-3 with lambda = 10); where W has grown to ||W||_F ~ ||W*||_F = n it
changes R by a factor 1 + O(1 / ||W||_F^2) (< 1e-3)."""
PENALTIES = {
    "none": None,
    "nuclear": {"name": "nuclear", "eps": NUCLEAR_EPS},
    "ratio": {"name": "ratio", **RATIO},
}
PARAMETERIZATIONS = {
    "depth 1": {"name": "direct"},
    "UV^T": {"name": "factored"},
    "depth 3": {"name": "deep", "depth": 3},
}
COLOURS = {"gradient flow": "C0", "Adam": "C1", "Adam a=100": "C5", "RMSProp": "C2", "momentum": "C3", "sign": "C4"}


def observations(config: dict) -> Split | None:
    """With `config["held out"]` (a fraction of m): the problem's m training entries and that many more held out
    (`_protocol.split`); None without."""
    if "held out" not in config:
        return None
    held = held_out(config["m"], config["held out"])
    return split(problem({**config, "m": config["m"] + held}), config["seed"], held)


def every_observation(config: dict) -> flows.EntryProblem:
    """The problem of every observed entry of a configuration: its training entries and its held-out ones."""
    if "held out" not in config:
        return problem(config)
    return problem({**config, "m": config["m"] + held_out(config["m"], config["held out"])})


def training(config: dict) -> flows.EntryProblem:
    """The problem a run trains on: `problem(config)`, or its training entries when some are held out."""
    parts = observations(config)
    return problem(config) if parts is None else parts.train


def build(config: dict):
    """The flow of one configuration (its parameterization, penalty, strength, dynamics, seed) and its initial state
    (module docstring); `config["held out"]` holds out that fraction of m more entries (`training`)."""
    p = training(config)
    description = {
        "parameterization": PARAMETERIZATIONS[config["parameterization"]],
        "dynamics": DYNAMICS[config["dynamics"]],
    }
    if config["penalty"] != "none":
        description |= {
            "penalty": PENALTIES[config["penalty"]],
            "strength": config["strength"],
        }
    flow = flows.Flow.from_description(p, description)
    if config["parameterization"] == "depth 1":
        return flow, flow.dynamics.init(jnp.asarray(observed(p)))
    depth = PARAMETERIZATIONS[config["parameterization"]].get("depth", 2)
    return flow, factor_init(flow, INIT, depth, config["seed"])
