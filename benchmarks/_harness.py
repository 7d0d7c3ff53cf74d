"""Shared pieces of the benchmarks: the settings, timing, scipy and gradient-descent runners, the
tight-tolerance reference, and exact counts of vector-field evaluations.

Import this module before numpy or jax anywhere in a benchmark: it pins BLAS and XLA to one thread
each. The machine the numbers come from is shared (2 cores, several jobs); threaded BLAS under that
contention made a 180 x 180 eigendecomposition ten times slower, and every method here, scipy's
included, then runs on one core. Set GRADFLOW_BENCH_THREADS=keep to leave the environment alone.
"""

from __future__ import annotations

import os

if os.environ.get("GRADFLOW_BENCH_THREADS") != "keep":
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    ).strip()

import dataclasses  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any

import diffrax  # noqa: E402
import equinox as eqx  # noqa: E402
import jax  # noqa: E402
import jax.experimental  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.flatten_util import ravel_pytree  # noqa: E402

import flows  # noqa: E402

STOP_LOSS = 1e-10
RTOL, ATOL = 1e-8, 1e-10
T_MAX = 1e6  # the runs end at STOP_LOSS, long before this
CACHE = Path(__file__).parent / ".cache"


# -- settings --------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Setting:
    """A named flow and initial state (what every method integrates); `spec` rebuilds it elsewhere:
    (name of a setting function here, its keyword arguments)."""

    name: str
    flow: Any
    state0: Any
    spec: tuple[str, dict] = ("", {})

    @property
    def key(self) -> str:
        return self.name.replace(" ", "_").replace("=", "")


def sensing_setting(alpha: float, n: int = 30, m: int = 180, rank: int = 2, seed: int = 0) -> Setting:
    """The sensing setting: symmetric Gaussian sensing, W = U U^T from U_0 = alpha I."""
    flow = flows.Flow(flows.sensing(n=n, m=m, rank=rank, seed=seed), flows.Symmetric())
    return Setting(
        f"sensing n={n} m={m} r={rank} alpha={alpha:g}",
        flow,
        flow.init(scale=alpha),
        ("sensing_setting", dict(alpha=alpha, n=n, m=m, rank=rank, seed=seed)),
    )


def completion_setting(
    alpha: float, n: int = 100, m: int = 2000, rank: int = 5, depth: int = 3, truth_norm: float = 1.0, seed: int = 0
) -> Setting:
    """Arora et al.'s completion setting: a depth-N product from W_j(0) = alpha I."""
    flow = flows.Flow(flows.completion(n=n, m=m, rank=rank, seed=seed, truth_norm=truth_norm), flows.Deep(depth=depth))
    return Setting(
        f"completion n={n} m={m} r={rank} depth={depth} norm={truth_norm:g} alpha={alpha:g}",
        flow,
        flow.init(scale=alpha),
        ("completion_setting", dict(alpha=alpha, n=n, m=m, rank=rank, depth=depth, truth_norm=truth_norm, seed=seed)),
    )


# -- timing ----------------------------------------------------------------------------------------
@dataclasses.dataclass
class Timing:
    """Wall times of one method: the first call (compile + run) and the repeats after it."""

    first: float
    runs: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.runs)

    @property
    def compile(self) -> float:
        return max(self.first - self.median, 0.0)

    def spread(self) -> str:
        return f"{min(self.runs):.3g}-{max(self.runs):.3g}"


def clock(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    out = jax.block_until_ready(fn())
    return out, time.perf_counter() - start


def interleaved(solves: dict, repeats: int) -> tuple[dict, dict]:
    """Each zero-argument solve once (compiling), then `repeats` timed rounds through all of them in turn: (the first
    trajectories, the median seconds), both by key."""
    trajectories = {key: solve() for key, solve in solves.items()}
    seconds: dict = {key: [] for key in solves}
    for _ in range(repeats):
        for key, solve in solves.items():
            seconds[key].append(clock(solve)[1])
    return trajectories, {key: float(np.median(v)) for key, v in seconds.items()}


def switched_at(stats: dict) -> str:
    """Where a switching solver's run switched, from its statistics ("-" where it did not)."""
    return f"{stats['t_switch']:.4g}" if stats.get("switched") else "-"


def compared(setting: "Setting", solves: dict, repeats: int) -> tuple[dict, dict]:
    """`interleaved`, then for each solve its statistics, where it switched (`switched_at`) and its final W's error
    against Dopri8 at its own final time (`reference`): (the median seconds, those three), both by key."""
    trajectories, wall = interleaved(solves, repeats)
    finals = {key: float(traj.ts[-1]) for key, traj in trajectories.items()}
    ref = reference(setting, np.array(sorted(set(finals.values()))))
    outcomes = {
        key: (traj.stats, switched_at(traj.stats), relative_error(np.asarray(traj.W[-1]), ref[finals[key]]))
        for key, traj in trajectories.items()
    }
    return wall, outcomes


# -- the flow's own solver -------------------------------------------------------------------------
@dataclasses.dataclass
class Outcome:
    """What a method reached: its final time and state, steps and evaluation counts."""

    t_final: float
    W_final: np.ndarray
    loss_final: float
    steps: int
    rejected: int | None = None
    evaluations: int | None = None
    jacobians: int | None = None
    solves: int | None = None
    saved: int | None = None
    note: str = ""
    trajectory: tuple[np.ndarray, np.ndarray] | None = None
    """The saved times and W at each, where the comparison reads more than the final state."""


FINAL_ONLY = [0.0]
"""Save times for the timed runs: the start, and then the final state (the stop, or the state at t1), as scipy
returns it."""


def solve_flows(
    setting: Setting, solver=None, rtol: float = RTOL, atol: float = ATOL, ts=FINAL_ONLY, **kwargs
) -> flows.Trajectory:
    """flows.solve until STOP_LOSS; by default saving only the final state (`ts=None`: its 200 default times)."""
    return flows.solve(
        setting.flow,
        setting.state0,
        t1=T_MAX,
        ts=ts,
        rtol=rtol,
        atol=atol,
        stop_loss=STOP_LOSS,
        solver=solver,
        max_steps=kwargs.pop("max_steps", 3_000_000),
        **kwargs,
    )


def without_floor(setting: Setting) -> Setting:
    """The setting on a copy of its problem that offers no `flows.LossFloor`: the stop evaluates the loss at every
    step, as it does on problems without one."""
    problem = setting.flow.problem
    plain = type(type(problem).__name__, (type(problem),), {"loss_floor": lambda self: None})
    copy = plain(**{field.name: getattr(problem, field.name) for field in dataclasses.fields(problem)})
    return dataclasses.replace(setting, flow=dataclasses.replace(setting.flow, problem=copy))


def run_flows(
    setting: Setting, solver=None, rtol: float = RTOL, atol: float = ATOL, ts=FINAL_ONLY, **kwargs
) -> Outcome:
    """`solve_flows`, what the comparisons read of it."""
    traj = solve_flows(setting, solver, rtol, atol, ts, **kwargs)
    return Outcome(
        t_final=float(traj.ts[-1]),
        W_final=traj.W[-1],
        loss_final=float(traj.loss[-1]),
        steps=traj.stats["num_steps"],
        rejected=traj.stats["num_rejected_steps"],
        saved=len(traj.ts),
        trajectory=(np.asarray(traj.ts), np.asarray(traj.W)),
    )


class Counter:
    """Host-side counters bumped from inside jitted code (ordered io_callback: exact, but slow)."""

    def __init__(self):
        self.counts: dict[str, int] = {}

    def bump(self, name: str) -> None:
        jax.experimental.io_callback(lambda: self._add(name), None, ordered=True)

    def _add(self, name: str) -> None:
        self.counts[name] = self.counts.get(name, 0) + 1


class _CountingGradientFlow(flows.GradientFlow):
    """Gradient flow whose vector field bumps the counter's 'vf' (the counter rides along as a static field)."""

    counter: Counter = eqx.field(static=True)

    def vector_field(self, t, state, gradient):
        self.counter.bump("vf")
        return super().vector_field(t, state, gradient)


def counting_flow(flow: flows.Flow, counter: Counter) -> flows.Flow:
    """The same gradient flow with its vector-field evaluations counted."""
    return flows.Flow(flow.problem, flow.parameterization, dynamics=_CountingGradientFlow(counter))


class _CountedWoodburySolve(flows.WoodburySolve):
    counter: Counter = eqx.field(static=True)

    def solve(self, h, b, unravel, terms, args):
        self.counter.bump("solve")
        return super().solve(h, b, unravel, terms, args)


class CountingWoodbury(flows.Woodbury):
    """`flows.Woodbury` whose linearisations ('jacobian') and solves ('solve') bump `counter`: passed to the solver
    as its linear solver (a parameter), nothing patched."""

    counter: Counter = eqx.field(static=True)

    def linearise(self, terms, t, y, args, step):
        self.counter.bump("jacobian")
        return self._counted(super().linearise(terms, t, y, args, step))

    def pending(self, terms, t, y, args):
        return self._counted(super().pending(terms, t, y, args))

    def _counted(self, solve):
        fields = {f.name: getattr(solve, f.name) for f in dataclasses.fields(solve)}
        return _CountedWoodburySolve(**fields, counter=self.counter)


def counted_solver(solver, counter: Counter):
    """The same solver with its Woodbury linear solver (if it has one, directly or as a switch's stiff solver)
    replaced by a `CountingWoodbury`."""
    for where in (lambda s: s.linear_solver, lambda s: s.stiff_solver.linear_solver):
        try:
            current = where(solver)
        except AttributeError:
            continue
        if isinstance(current, flows.Woodbury):
            return eqx.tree_at(where, solver, CountingWoodbury(counter))
    return solver


def count_flows(setting: Setting, solver=None, ts=FINAL_ONLY, **kwargs) -> dict[str, int]:
    """Run flows.solve once with the vector field and the Gauss-Newton linearisations and solves instrumented:
    exact counts of 'vf', 'jacobian' and 'solve' (rejected steps included)."""
    counter = Counter()
    flow = counting_flow(setting.flow, counter)
    solver = flows.default_solver(setting.flow, STOP_LOSS) if solver is None else solver
    flows.solve(
        flow,
        setting.state0,
        t1=T_MAX,
        ts=ts,
        rtol=RTOL,
        atol=ATOL,
        stop_loss=STOP_LOSS,
        solver=counted_solver(solver, counter),
        max_steps=3_000_000,
        **kwargs,
    )
    return counter.counts


# -- scipy -----------------------------------------------------------------------------------------
class FlatField:
    """The flow's vector field on a flat vector, jitted, as scipy.integrate.solve_ivp wants it."""

    def __init__(self, setting: Setting):
        flow = setting.flow
        x0, unravel = ravel_pytree(setting.state0)
        self.x0 = np.asarray(x0)
        self.unravel = unravel
        field = lambda x: ravel_pytree(flow.vector_field(0.0, unravel(x)))[0]  # noqa: E731
        self._f = jax.jit(field)
        self._jac = jax.jit(jax.jacfwd(field))
        self._loss = jax.jit(lambda x: flow.loss(unravel(x)))
        self._product = jax.jit(lambda x: flow.product(unravel(x)))

    def compile(self, jacobian: bool = True) -> float:
        """Compile the vector field, the loss and (if asked) the dense Jacobian; returns the seconds taken."""
        start = time.perf_counter()
        jax.block_until_ready((self._f(self.x0), self._loss(self.x0), self._product(self.x0)))
        if jacobian:
            jax.block_until_ready(self._jac(self.x0))
        return time.perf_counter() - start

    def f(self, t, x):
        return np.asarray(self._f(x))

    def jac(self, t, x):
        return np.asarray(self._jac(x))

    def loss(self, x) -> float:
        return float(self._loss(x))

    def product(self, x) -> np.ndarray:
        return np.asarray(self._product(x))


def run_scipy(field: FlatField, method: str, jac: bool = False, time_limit: float | None = None) -> Outcome:
    """solve_ivp at RTOL/ATOL until the loss falls below STOP_LOSS (a terminal event)."""
    from scipy.integrate import solve_ivp

    deadline = None if time_limit is None else time.perf_counter() + time_limit

    class TooSlow(Exception):
        pass

    def f(t, x):
        if deadline is not None and time.perf_counter() > deadline:
            raise TooSlow
        return field.f(t, x)

    def converged(t, x):
        # A hair under STOP_LOSS: the event is root-found, so the run ends *at* this loss, not past it.
        return field.loss(x) - STOP_LOSS * (1 - 1e-6)

    converged.terminal = True
    extra = {"jac": field.jac} if jac else {}
    try:
        sol = solve_ivp(f, (0.0, T_MAX), field.x0, method=method, rtol=RTOL, atol=ATOL, events=converged, **extra)
    except TooSlow:
        return Outcome(
            t_final=float("nan"),
            W_final=np.full((1, 1), np.nan),
            loss_final=float("nan"),
            steps=-1,
            note=f"stopped at the {time_limit:g} s limit",
        )
    x = sol.y[:, -1]
    return Outcome(
        t_final=float(sol.t[-1]),
        W_final=field.product(x),
        loss_final=field.loss(x),
        steps=len(sol.t) - 1,
        evaluations=int(sol.nfev),
        jacobians=int(sol.njev),
        note="" if sol.status == 1 else sol.message,
    )


def run_scipy_apart(
    setting: Setting, method: str, jac: bool = False, time_limit: float = 900.0
) -> tuple[Outcome, float]:
    """`run_scipy` in a child process, killed at `time_limit` seconds; returns (outcome, seconds of the solve).

    For systems too large for scipy's stiff methods: LSODA's dense LU runs inside Fortran, where no
    Python-level check can stop it.
    """
    import subprocess
    import sys
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        job = json.dumps(dict(spec=setting.spec, method=method, jac=jac, out=tmp))
        try:
            subprocess.run([sys.executable, __file__, job], check=True, capture_output=True, timeout=time_limit + 60)
        except subprocess.TimeoutExpired:
            return Outcome(
                t_final=float("nan"),
                W_final=np.full((1, 1), np.nan),
                loss_final=float("nan"),
                steps=-1,
                note=f"killed at the {time_limit:g} s limit",
            ), float("nan")
        result = json.loads((Path(tmp) / "outcome.json").read_text())
        W = np.load(Path(tmp) / "W.npy")
    seconds = result.pop("seconds")
    return Outcome(W_final=W, **result), seconds


def _scipy_child(job: dict) -> None:
    setting = globals()[job["spec"][0]](**job["spec"][1])
    field = FlatField(setting)
    field.compile(jacobian=job["jac"])
    outcome, seconds = clock(lambda: run_scipy(field, job["method"], jac=job["jac"]))
    np.save(Path(job["out"]) / "W.npy", outcome.W_final)
    fields = {f.name: getattr(outcome, f.name) for f in dataclasses.fields(outcome) if f.name != "W_final"}
    (Path(job["out"]) / "outcome.json").write_text(json.dumps(fields | {"seconds": seconds}))


# -- the reference ---------------------------------------------------------------------------------
def reference(setting: Setting, times: np.ndarray, rtol: float = 1e-12, atol: float = 1e-14) -> dict[float, np.ndarray]:
    """W at `times` from Dopri8 at tight tolerances, cached in benchmarks/.cache (keyed by setting)."""
    CACHE.mkdir(exist_ok=True)
    path = CACHE / f"reference_{_digest(setting)}.npz"
    known: dict[float, np.ndarray] = {}
    if path.exists():
        with np.load(path) as data:
            known = dict(zip(data["ts"].tolist(), data["W"]))
    missing = sorted({float(t) for t in times if np.isfinite(t)} - set(known))
    if missing:
        traj = flows.solve(
            setting.flow,
            setting.state0,
            t1=missing[-1],
            ts=np.asarray(missing),
            rtol=rtol,
            atol=atol,
            solver=diffrax.Dopri8(),
            max_steps=50_000_000,
        )
        known.update(zip(missing, traj.W))
        ts = sorted(known)
        np.savez(path, ts=np.asarray(ts), W=np.stack([known[t] for t in ts]))
    return {float(t): known[float(t)] for t in times if np.isfinite(t)}


def _digest(setting: Setting) -> str:
    leaves = [np.asarray(x) for x in jax.tree.leaves((setting.flow, setting.state0)) if eqx.is_array(x)]
    h = hashlib.sha256(json.dumps(setting.flow.describe(), sort_keys=True).encode())
    for leaf in leaves:
        h.update(np.ascontiguousarray(leaf).tobytes())
    return f"{setting.key}_{h.hexdigest()[:12]}"


def relative_error(W: np.ndarray, W_ref: np.ndarray) -> float:
    return float(np.linalg.norm(W - W_ref) / np.linalg.norm(W_ref))


def largest_relative_error(Ws, W_refs) -> float:
    """The largest `relative_error` over paired saved values (a trajectory's against its reference's)."""
    return max(relative_error(W, W_ref) for W, W_ref in zip(Ws, W_refs, strict=True))


# -- unit costs ------------------------------------------------------------------------------------
def flow_term(flow: flows.Flow) -> flows.LinearisableTerm:
    """The flow's field and Gauss-Newton linearisation as the term a solver steps (args: None)."""
    return flows.LinearisableTerm(lambda t, y, args: flow.vector_field(t, y), lambda t, y, args: flow.gauss_newton(y))


@eqx.filter_jit
def evaluations(flow, state, k, t: float = 0.0):
    """`k` (traced: pass an array) evaluations of the flow's field at time t in one compiled loop from `state`,
    raveled: x <- x + c F(x), which is also exactly a gradient-descent step (c = the step)."""
    point, unravel = ravel_pytree(state)
    field = lambda i, x: x + 1e-12 * ravel_pytree(flow.vector_field(t, unravel(x)))[0]  # noqa: E731
    return jax.lax.fori_loop(0, k, field, point)


@eqx.filter_jit
def products(flow, state, k, t: float = 0.0):
    """`k` (traced) products of the field's Jacobian at the fixed point `state` (time t) in one compiled loop, raveled:
    v <- v + c J v, a Krylov iteration's unit of work."""
    point, unravel = ravel_pytree(state)

    def field(y):
        return ravel_pytree(flow.vector_field(t, unravel(y)))[0]

    return jax.lax.fori_loop(0, k, lambda i, v: v + 1e-12 * jax.jvp(field, (point,), (v,))[1], point)


def priced(fn, flow, state, k: int = 2000, repeats: int = 5) -> float:
    """Seconds per call of `fn(flow, state, k)`'s loop body: the median of `repeats` timings of k calls."""
    jax.block_until_ready(fn(flow, state, jnp.asarray(2)))  # compile: the count is traced, not static
    return statistics.median(clock(lambda: fn(flow, state, jnp.asarray(k)))[1] for _ in range(repeats)) / k


def unit_costs(setting: Setting, repeats: int = 2000) -> dict[str, float]:
    """Seconds per jitted vector-field evaluation (`evaluations`), Gauss-Newton linearisation and Gauss-Newton
    solve, each timed inside one compiled loop (no dispatch cost), at the initial state."""
    flow = setting.flow
    point, unravel = ravel_pytree(setting.state0)
    terms = flow_term(flow)

    @eqx.filter_jit
    def linearisations(flow, point, k):
        def body(i, x):
            return (
                x
                + 1e-12 * flows.Woodbury().linearise(flow_term(flow), 0.0, unravel(x), None, jnp.inf).eigenvalues.sum()
            )

        return jax.lax.fori_loop(0, k, body, point)

    @eqx.filter_jit
    def solves(linear, point, k):
        return jax.lax.fori_loop(0, k, lambda i, x: linear.solve(0.5, x, unravel, terms, None), point)

    linear = flows.Woodbury().linearise(terms, 0.0, setting.state0, None, jnp.inf)
    out = {}
    for name, fn, args, k in (
        ("vf", evaluations, (flow, setting.state0), repeats),
        ("jacobian", linearisations, (flow, point), 3),
        ("solve", solves, (linear, point), repeats),
    ):
        jax.block_until_ready(fn(*args, jnp.asarray(2)))  # compile: the count is traced, not static
        out[name] = clock(lambda: fn(*args, jnp.asarray(k)))[1] / k
    return out


# -- gradient descent ------------------------------------------------------------------------------
def descend(setting: Setting, step: float, iterations: np.ndarray):
    """Gradient descent (`flows.descend`): W after each of the increasing iteration counts `iterations`, and
    the final state."""
    iterations = np.asarray(iterations)
    traj = flows.descend(
        setting.flow, setting.state0, step=step, t1=float(iterations[-1] * step), ts=iterations * step, chunk=10_000_000
    )
    return traj.W, jax.tree.map(lambda x: x[-1], traj.states)


if __name__ == "__main__":  # the child of run_scipy_apart
    import sys

    _scipy_child(json.loads(sys.argv[1]))
