"""Integrate a flow with Diffrax and return its `Trajectory`."""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._chebyshev import RungeKuttaChebyshev
from ._control import ArraywiseRelative
from ._flow import AbstractFlow, FlowArgs, State
from ._stiff import AbstractTsit5Then, LinearlyImplicitExtrapolation, Tsit5ThenChebyshev, Tsit5ThenExtrapolation
from ._trajectory import Trajectory
from ._validate import check_choice, check_fits, check_positive, check_positive_int, check_times


class SolverError(RuntimeError):
    """The integration stopped before t1: names the time reached and what to change."""

    def __init__(self, message: str, t_reached: float, stats: dict):
        super().__init__(message)
        self.t_reached = t_reached
        self.stats = stats


SOLVERS = {
    "tsit5": diffrax.Tsit5,
    "dopri5": diffrax.Dopri5,
    "dopri8": diffrax.Dopri8,
    "bosh3": diffrax.Bosh3,
    "heun": diffrax.Heun,
    "kvaerno3": diffrax.Kvaerno3,
    "kvaerno5": diffrax.Kvaerno5,
    "extrapolation": LinearlyImplicitExtrapolation,
    "switching": Tsit5ThenExtrapolation,
    "chebyshev": RungeKuttaChebyshev,
    "switching-chebyshev": Tsit5ThenChebyshev,
}
"""Diffrax solvers by the names the command line accepts."""


def solver_by_name(name: str) -> diffrax.AbstractSolver:
    """A Diffrax solver from its lower-case name (a key of `SOLVERS`)."""
    check_choice("solver", name, tuple(SOLVERS))
    return SOLVERS[name]()


def evaluations_per_step(solver: diffrax.AbstractSolver | None) -> int | None:
    """Vector-field evaluations per attempted step of an explicit Runge-Kutta solver, else None.

    A first-same-as-last tableau reuses its last stage as the next step's first, also after a
    rejected step (same start point). Start-up (initial step selection, the first stage) adds at
    most 3 more per solve, which `vf_evaluations` in the run statistics leaves out.
    """
    if not isinstance(solver, diffrax.AbstractERK) or not isinstance(solver.tableau, diffrax.ButcherTableau):
        return None
    return len(solver.tableau.c) + 1 - int(solver.tableau.fsal)


def default_ts(t1: float, num: int = 200, t0: float = 0.0) -> np.ndarray:
    """t0 followed by `num - 1` log-spaced times up to t1: the dynamics of these flows span decades."""
    span = t1 - t0
    return np.concatenate([[t0], t0 + np.geomspace(span * 1e-6, span, num - 1)])


def solve(
    flow: AbstractFlow,
    state0: State,
    t1: float,
    ts=None,
    *,
    rtol: float = 1e-8,
    atol: float | None = None,
    stop_loss: float | None = None,
    solver: diffrax.AbstractSolver | None = None,
    stepsize_controller: diffrax.AbstractStepSizeController | None = None,
    max_steps: int = 1_000_000,
    dt0: float | None = None,
    progress: bool = False,
) -> Trajectory:
    r"""Integrate `flow` from `state0` at t = 0 to `t1`, saving at `ts`.

    Args:
        ts: increasing save times in [0, t1]; default `default_ts(t1)` (0, then log-spaced).
        rtol, atol: the step-size controller's tolerances, passed as arrays (changing them does not
            recompile). atol None (the default): the error of each state array is measured relative to
            that array's running size (`flows.ArraywiseRelative`), which delivers ~rtol relative accuracy
            on W at every scale of initialization; a number: Diffrax's PID controller with that absolute
            tolerance.
        stop_loss: end the run at the end of the first step where the data loss falls below it.
            The trajectory then ends there: save times past the stop are dropped and the stopping
            time is the last entry, so `traj.W[-1]` is always the final state.
        solver: any Diffrax solver; default `default_solver(flow, stop_loss)`: Tsit5 (explicit,
            5th order, adaptive), or for runs into the stiff convergence tail (stop_loss set) of
            plain gradient flows `flows.Tsit5ThenExtrapolation()` (up to a thousand measurements)
            or `flows.Tsit5ThenChebyshev()` (beyond). With the default controller, the stiff
            solvers' steps land on `ts` (their stiff steps interpolate only cubically).
        max_steps: the step budget. Memory does not grow with it: only the states at `ts` are kept.
        progress: show a tqdm progress bar over t.

    Raises:
        ValueError: bad input, before anything compiles.
        SolverError: max_steps reached or a non-finite state, with the time reached.
    """
    check_flow(flow)
    plan = Plan.make(
        t1,
        ts,
        rtol=rtol,
        atol=atol,
        stop_loss=stop_loss,
        solver=solver,
        stepsize_controller=stepsize_controller,
        max_steps=max_steps,
        dt0=dt0,
    ).resolve(flow)
    flow.check_state(state0)
    check_fits(
        f"saving {len(plan.ts)} states",
        saved_bytes(flow, state0, len(plan.ts)),
        "save fewer times (ts), or a smaller problem",
    )
    return plan.finish(flow, jax.device_get(_integrate(flow, state0, *plan.arrays(), **plan.static(progress))))


@dataclasses.dataclass(frozen=True)
class Plan:
    """A validated solve, everything but the flow and its initial state: what `solve` and `sweep` share.

    `solver` and `controller` may be None (the defaults, which depend on the flow) until `resolve`.
    """

    t1: float
    ts: np.ndarray
    rtol: float
    atol: float | None
    stop_loss: float | None
    solver: diffrax.AbstractSolver | None
    controller: diffrax.AbstractStepSizeController | None
    max_steps: int
    dt0: float | None

    @classmethod
    def make(
        cls,
        t1,
        ts=None,
        *,
        rtol=1e-8,
        atol=None,
        stop_loss=None,
        solver=None,
        stepsize_controller=None,
        max_steps=1_000_000,
        dt0=None,
    ) -> "Plan":
        """Check every argument (ValueError naming it) and fill in the defaults of `solve`."""
        t1 = check_positive("t1", t1)
        rtol = check_positive("rtol", rtol)
        if atol is not None:
            atol = check_positive("atol", atol)
        check_positive_int("max_steps", max_steps)
        if stop_loss is not None:
            stop_loss = check_positive("stop_loss", stop_loss)
        ts = check_times(default_ts(t1) if ts is None else ts, t1)
        return cls(
            t1=t1,
            ts=ts,
            rtol=rtol,
            atol=atol,
            stop_loss=stop_loss,
            solver=solver,
            controller=stepsize_controller,
            max_steps=max_steps,
            dt0=dt0,
        )

    def resolve(self, flow: AbstractFlow, batched: bool = False) -> "Plan":
        """Fill in the default solver (`default_solver`) and controller for this flow."""
        solver = default_solver(flow, self.stop_loss, batched) if self.solver is None else self.solver
        controller = self.controller
        if controller is None:
            controller = (
                ArraywiseRelative.make(self.rtol)
                if self.atol is None
                else diffrax.PIDController(rtol=jnp.asarray(self.rtol), atol=jnp.asarray(self.atol))
            )
        if isinstance(solver, STIFF):
            # The extrapolation's steps are accurate to high order but its dense output is cubic: its steps
            # land on the save times instead of interpolating there, whatever controller was given.
            if isinstance(controller, diffrax.AbstractAdaptiveStepSizeController):
                controller = diffrax.ClipStepSizeController(controller, step_ts=jnp.asarray(self.ts))
            elif not self.on_step_grid(controller):
                raise ValueError(
                    f"{type(solver).__name__}'s dense output is only cubic, so its steps must land on the "
                    f"save times: use an adaptive step-size controller, or fixed steps dt0 of which every "
                    f"save time is a multiple (got {type(controller).__name__}, dt0 = {self.dt0})"
                )
        return dataclasses.replace(self, solver=solver, controller=controller)

    def on_step_grid(self, controller) -> bool:
        """Whether fixed steps of dt0 from t = 0 pass through every save time."""
        if not isinstance(controller, diffrax.ConstantStepSize) or self.dt0 is None:
            return False
        steps = self.ts / self.dt0
        return bool(np.all(np.abs(steps - np.rint(steps)) <= 1e-9 * np.maximum(1.0, steps)))

    def arrays(self) -> tuple:
        """The traced arguments of `integrate` after (flow, state0)."""
        return (
            jnp.asarray(self.t1),
            jnp.asarray(self.ts),
            None if self.dt0 is None else jnp.asarray(self.dt0),
            None if self.stop_loss is None else jnp.asarray(self.stop_loss),
        )

    def static(self, progress: bool = False) -> dict:
        """The keyword arguments of `integrate`."""
        return dict(solver=self.solver, controller=self.controller, max_steps=self.max_steps, progress=progress)

    def describe(self) -> dict:
        """The JSON-able solve options (saved with trajectories, part of a sweep run's key)."""
        solver = "default" if self.solver is None else type(self.solver).__name__
        return {
            "solver": solver,
            "rtol": self.rtol,
            "atol": "arraywise relative" if self.atol is None else self.atol,
            "t1": self.t1,
            "stop_loss": self.stop_loss,
            "max_steps": self.max_steps,
        }

    def finish(self, flow: AbstractFlow, raw) -> Trajectory:
        """The Trajectory of one host-side `integrate` result, or SolverError if it failed."""
        stats: dict[str, Any]
        ts_out, states, stats, result, solver_state = raw
        stopped = bool(result == diffrax.RESULTS.event_occurred)
        if result != diffrax.RESULTS.successful and not stopped:
            finite = np.isfinite(ts_out)
            t_reached = float(ts_out[finite][-1]) if finite.any() else 0.0
            raise SolverError(
                _failure_message(result, t_reached, self.t1, stats, self.max_steps, self.rtol), t_reached, stats
            )
        if stopped:
            # Saved times before the stop, then the stopping state itself (SaveAt's t1 entry).
            keep = np.flatnonzero(np.isfinite(ts_out))
            if len(keep) >= 2 and ts_out[keep[-2]] == ts_out[keep[-1]]:
                keep = np.delete(keep, -2)
        else:
            keep = np.arange(len(self.ts))
        states = jax.tree.map(lambda x: x[keep], states)
        stats = {k: int(v) for k, v in stats.items()}
        per_step = evaluations_per_step(self.solver)
        stats |= {
            "vf_evaluations": None if per_step is None else per_step * stats["num_steps"],
            "stopped_by_loss": stopped,
            "t_final": float(ts_out[keep[-1]]),
        }
        if isinstance(self.solver, STIFF):
            stats |= self.solver.report(solver_state)
        # Steps land on the save times when the controller clips to them (always for the stiff solvers,
        # whose dense output is only cubic); otherwise the solver's own dense output interpolates there.
        landed = isinstance(self.controller, diffrax.ClipStepSizeController) or self.on_step_grid(self.controller)
        stats["saved_times"] = "landed" if landed else "interpolated"
        config = {"flow": flow.describe()} | self.describe()
        traj = Trajectory.from_states(flow, ts_out[keep], states, stats=stats, config=config)
        drift = {name: float(d.max()) for name, d in traj.conserved_drift().items()}
        traj.stats["conserved_drift"] = drift
        bound = 100 * self.rtol
        drifted = {name: d for name, d in drift.items() if d > bound}
        if drifted:
            warnings.warn(
                f"conserved quantities drifted by more than 100 x rtol = {bound:.1e}: "
                + ", ".join(f"{name}: {d:.2e}" for name, d in drifted.items())
                + "; the trajectory is less faithful than its tolerance (tighten rtol, or check the "
                "solver)",
                FaithfulnessWarning,
                stacklevel=3,
            )
        return traj


class FaithfulnessWarning(UserWarning):
    """A solve finished, but a conserved quantity drifted by more than 100 x rtol."""


STIFF = (LinearlyImplicitExtrapolation, RungeKuttaChebyshev, AbstractTsit5Then)
"""The solvers whose stiff steps interpolate only cubically: the default controller lands them on `ts`."""

STIFF_MAX_MEASUREMENTS = 1000
"""Up to this many measurements `default_solver` switches to the linearly implicit extrapolation with
dense Gauss-Newton solves (`flows.Woodbury`: an m x m eigendecomposition per re-linearisation), beyond
it to Runge-Kutta-Chebyshev, which needs no linear algebra. Measured side by side
(benchmarks/stiff_tail.py, deep completion n = 100, rank 5, depth 3, alpha 0.1, into loss < 1e-10;
benchmarks/README.md): at m = 2000 `Tsit5ThenChebyshev` is 3.8-4.2x faster than Tsit5 and the Woodbury
switch 0.45x; at m = 1000 the three are within 1.4x of each other; in the stiffest tails (n = 30,
m = 180 sensing from alpha = 1e-3) the Woodbury switch is 3x faster than the Chebyshev switch and 100x
faster than Tsit5, its cost not growing with the stiffness. The boundary depends on the stiffness, not
on m alone; m is what is known before the solve."""


def default_solver(flow: AbstractFlow, stop_loss: float | None, batched: bool = False) -> diffrax.AbstractSolver:
    """The solver `solve` (and `sweep`) uses when given none.

    For a run into the convergence tail (`stop_loss` set, where these flows turn stiff) of a gradient
    flow of the data loss (`flow.linearisable`: its Gauss-Newton linearisation is then the Hessian up
    to the residual term): Tsit5 until the run turns stiff, then the linearly implicit extrapolation
    with dense solves (`Tsit5ThenExtrapolation`) up to `STIFF_MAX_MEASUREMENTS` measurements and
    Runge-Kutta-Chebyshev (`Tsit5ThenChebyshev`) beyond. Tsit5 otherwise. `batched` (runs under vmap:
    `sweep`'s batches of several): `LinearlyImplicitExtrapolation` instead of the first switch, since
    vmap turns its lax.cond into running both solvers at every step, and Tsit5 instead of the second
    (not measured under vmap).
    """
    if stop_loss is None or not flow.linearisable:
        return diffrax.Tsit5()
    if flow.problem.m <= STIFF_MAX_MEASUREMENTS:
        return LinearlyImplicitExtrapolation() if batched else Tsit5ThenExtrapolation()
    return diffrax.Tsit5() if batched else Tsit5ThenChebyshev()


def saved_bytes(flow: AbstractFlow, state0: State, times: int) -> int:
    """Host memory of a trajectory of `times` saved states: the states, their products W (twice: on the device
    and the host) and the conserved pairs (at most two n x n matrices per state array)."""
    n1, n2 = flow.problem.shape
    state = sum(int(np.size(leaf)) for leaf in jax.tree.leaves(state0))
    return 8 * times * (2 * state + 2 * n1 * n2 + 2 * len(jax.tree.leaves(state0)) * max(n1, n2) ** 2)


def check_flow(flow) -> None:
    """ValueError unless `flow` is something `solve` integrates."""
    if not isinstance(flow, AbstractFlow):
        raise ValueError(f"flow must be a flows.Flow (or another flows.AbstractFlow); got {type(flow).__name__}")


def _failure_message(result, t_reached, t1, stats, max_steps, rtol) -> str:
    steps = int(stats["num_steps"])
    rejected = int(stats["num_rejected_steps"])
    if result == diffrax.RESULTS.max_steps_reached and rejected < steps // 2:
        return (
            f"the solver reached max_steps = {max_steps} at t = {t_reached:.8g} of t1 = {t1:.6g} "
            f"({steps} steps). Raise max_steps, shorten t1, set stop_loss, or use a stiff solver "
            "for the convergence tail."
        )
    return (
        f"the solve failed at t = {t_reached:.8g} of t1 = {t1:.6g}: {rejected} of {steps} steps were "
        "rejected as the step size collapsed, so the state is non-finite or blowing up there. Check "
        f"the problem scale and init, shorten t1, or loosen rtol = {rtol:g}."
    )


def _field(t, state, args: FlowArgs):
    return args.flow.vector_field(t, state)


def integrate(flow, state0, t1, ts, dt0, stop_loss, *, solver, controller, max_steps, progress):
    """diffrax.diffeqsolve of one flow: (saved times, saved states, statistics, result code, final solver state);
    traceable, so
    `sweep` can vmap it. The flow travels in Diffrax's `args` (`FlowArgs`): that is how the stiff solvers reach the
    structure they linearise (its parameterization and problem)."""
    event = None
    if stop_loss is not None:
        event = diffrax.Event(cond_fn=lambda t, y, args, **kwargs: args.flow.loss(y) < args.stop_loss)
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(_field),
        solver,
        t0=jnp.zeros_like(t1),
        t1=t1,
        dt0=dt0,
        y0=state0,
        args=FlowArgs(flow, stop_loss),
        saveat=diffrax.SaveAt(ts=ts, t1=True, solver_state=True),
        stepsize_controller=controller,
        event=event,
        max_steps=max_steps,
        throw=False,
        adjoint=diffrax.ForwardMode(),
        progress_meter=diffrax.TqdmProgressMeter(refresh_steps=5000) if progress else diffrax.NoProgressMeter(),
    )
    return sol.ts, sol.ys, sol.stats, sol.result, sol.solver_state


_integrate = eqx.filter_jit(integrate)
