"""Integrate a flow with Diffrax and return its `Trajectory`."""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from typing import Any

import diffrax
import equinox as eqx
import equinox.internal as eqxi
import jax
import jax.numpy as jnp
import numpy as np
import optimistix as optx
from jaxtyping import Array, Float, Int

from ._chebyshev import RungeKuttaChebyshev
from ._control import AbstractLandOnTimes, ArraywiseRelative, LandOnEvent, LandOnTimes, StopOnCollapse
from ._flow import AbstractFlow, FlowArgs, State
from ._merson import Merson, Tsit5ThenMerson
from ._ndf import NDF
from ._solver import AbstractFlowSolver, LinearisableTerm, lands_save_times, measured_by, report
from ._stiff import LinearlyImplicitExtrapolation, Tsit5ThenChebyshev, Tsit5ThenExtrapolation, Tsit5ThenNDF
from ._trajectory import Trajectory
from ._validate import check_choice, check_fits, check_positive, check_positive_int, check_times


class SolverError(RuntimeError):
    """The integration stopped before t1: names the time reached and what to change.

    `trajectory` is the run up to the failure where one was recorded (the states saved before it and the
    last state reached, `stats["failed"]` True and `stats["failure"]` this message), else None.
    """

    def __init__(self, message: str, t_reached: float, stats: dict, trajectory: Trajectory | None = None):
        super().__init__(message)
        self.t_reached = t_reached
        self.stats = stats
        self.trajectory = trajectory


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
    "ndf": NDF,
    "switching-ndf": Tsit5ThenNDF,
    "merson": Merson,
    "switching-merson": Tsit5ThenMerson,
}
"""Diffrax solvers by the names the command line accepts."""


def solver_by_name(name: str) -> diffrax.AbstractSolver:
    """A Diffrax solver from its lower-case name (a key of `SOLVERS`)."""
    check_choice("solver", name, tuple(SOLVERS))
    return SOLVERS[name]()


def evaluations_per_step(solver: diffrax.AbstractSolver) -> int | None:
    """Vector-field evaluations per attempted step of an explicit Runge-Kutta solver (Diffrax's, or a flows solver's
    `evaluations_per_step`), else None.

    A first-same-as-last tableau reuses its last stage as the next step's first, also after a
    rejected step (same start point). Start-up (initial step selection, the first stage) adds at
    most 3 more per solve, which `vf_evaluations` in the run statistics leaves out.
    """
    if isinstance(solver, AbstractFlowSolver):
        return solver.evaluations_per_step
    if not isinstance(solver, diffrax.AbstractERK):
        return None
    # An explicit Runge-Kutta solver's tableau is one ButcherTableau (Diffrax's AbstractERK); pyright sees the
    # class variable as declared on AbstractRungeKutta, where it may also be an IMEX solver's MultiButcherTableau.
    tableau = solver.tableau
    return len(tableau.c) + 1 - int(tableau.fsal)  # pyright: ignore[reportAttributeAccessIssue]


def default_ts(t1: float, num: int = 200, t0: float = 0.0) -> np.ndarray:
    """t0 followed by `num - 1` log-spaced times from 1e-6 of the span up to t1 (the last is t1 itself): the dynamics
    of these flows span decades. `num` >= 2."""
    check_positive_int("num", num)
    if num < 2:
        raise ValueError(f"default_ts needs num >= 2 times (t0 and t1); got {num}")
    check_fits(f"{num} save times", 8 * num, "fewer save times")
    span = t1 - t0
    later = np.geomspace(span * 1e-6, span, num - 1) if num > 2 else np.array([span])
    return np.concatenate([[t0], t0 + later])


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
        ts: increasing save times in [0, t1]; default `default_ts(t1)` (0, then log-spaced). The trajectory holds
            the values at the save times the run reached, then its final state where that is not one of them: the
            stop (below), or the state at t1.
        rtol, atol: the step-size controller's tolerances, passed as arrays (changing them does not
            recompile). atol None (the default): the error of each state array is measured relative to
            that array's running size (`flows.ArraywiseRelative`), which delivers ~rtol relative accuracy
            on W at every scale of initialization; a number: Diffrax's PID controller with that absolute
            tolerance.
        stop_loss: end the run where the data loss first falls to it, located by root finding (every
            solver ends at loss = stop_loss (1 - 1e-6), on a step landed just below it, `flows.LandOnEvent`). The
            trajectory then ends there: save times past the stop are dropped and the stopping time is the
            last entry, so `traj.W[-1]` is always the final state. A run that starts at or below it stops at 0.
        solver: any Diffrax solver; default `default_solver(flow, stop_loss)`: for plain gradient flows, whose
            convergence tails are stiff, Tsit5 switching once stiff to `flows.Tsit5ThenExtrapolation()`'s
            extrapolation (up to a thousand measurements) or `flows.Tsit5ThenNDF()`'s NDF (beyond); Tsit5
            (explicit, 5th order, adaptive) for the others but the sign and RMSProp flows.
        stepsize_controller: default (None): the arraywise relative or PID controller above, its steps landing
            on `ts`, so every saved value is a step's (dense outputs are less accurate than the steps). A given
            adaptive controller is wrapped the same way only for solvers that ask for it
            (`AbstractFlowSolver.lands_save_times`); otherwise saved values are interpolated and a
            `FaithfulnessWarning` says so. `traj.stats["saved_times"]` says which.
        max_steps: the step budget (at most 2^63 - 1). Memory does not grow with it: only the states at `ts` are
            kept.
        dt0: the first step, in (0, t1]; default (None) the controller's choice. With `diffrax.ConstantStepSize`
            every step.
        progress: show a tqdm progress bar over t.

    Raises:
        ValueError: bad input, before anything compiles.
        SolverError: max_steps reached, a non-finite state, or a step size collapsed below a few hundred ulps of
            t for a hundred attempts in a row (`flows.StopOnCollapse`), with the time reached.
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
    check_saves_fit(flow, state0, len(plan.ts))
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
        if rtol >= 1.0:
            raise ValueError(f"rtol is a relative tolerance below 1; got {rtol!r}")
        if solver is not None and not isinstance(solver, diffrax.AbstractSolver):
            raise ValueError(
                f"solver must be a Diffrax solver (e.g. diffrax.Tsit5()); got {solver!r}: for one by its name, "
                "flows.solver_by_name"
            )
        if stepsize_controller is not None and not isinstance(stepsize_controller, diffrax.AbstractStepSizeController):
            raise ValueError(f"stepsize_controller must be a Diffrax step-size controller; got {stepsize_controller!r}")
        if atol is not None:
            atol = check_positive("atol", atol)
        # The compiled loop counts steps in 64-bit integers.
        max_steps = check_positive_int("max_steps", max_steps, most=np.iinfo(np.int64).max)
        if dt0 is not None:
            dt0 = check_positive("dt0", dt0)
            if dt0 > t1:
                raise ValueError(f"dt0 = {dt0:g} is larger than t1 = {t1:g}: the first step would pass t1")
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
        """Fill in the default solver (`default_solver`) and controller for this flow, and wrap the controller:

        * saved values: an adaptive controller's steps land on the save times (`flows.LandOnTimes`)
          when the controller is the default (every solver's dense output is less accurate than its steps:
          measured up to 212 rtol for Tsit5's and 50 for Dopri8's, against 1-3 rtol landed) or when the solver
          asks for it (`AbstractFlowSolver.lands_save_times`); otherwise they are interpolated, and `finish`
          says so and warns. Fixed steps must then pass through every save time.
        * `stop_loss`: an adaptive controller's steps land on the stopping loss (`flows.LandOnEvent`).
        * a collapsed step size ends the solve (`flows.StopOnCollapse`).
        """
        solver = default_solver(flow, self.stop_loss, batched) if self.solver is None else self.solver
        controller = self.controller
        land = controller is None or lands_save_times(solver)
        if controller is None:
            pcoeff, icoeff = flow.controller_gains
            controller = (
                ArraywiseRelative.make(self.rtol, error_control=_error_control, gains=(pcoeff, icoeff))
                if self.atol is None
                else diffrax.PIDController(
                    rtol=jnp.asarray(self.rtol), atol=jnp.asarray(self.atol), pcoeff=pcoeff, icoeff=icoeff
                )
            )
        if isinstance(controller, diffrax.AbstractAdaptiveStepSizeController):
            # pyright lists the base's eqx.AbstractVar fields (rtol, atol, norm), met by properties, as __init__'s.
            if self.stop_loss is not None:
                controller = LandOnEvent(controller, _stop_distance)  # pyright: ignore[reportCallIssue]
            controller = StopOnCollapse(controller)  # pyright: ignore[reportCallIssue]
            if land:
                controller = LandOnTimes(controller, jnp.asarray(self.ts))  # pyright: ignore[reportCallIssue]
        elif lands_save_times(solver) and not self.on_step_grid(controller):
            raise ValueError(
                f"{type(solver).__name__}'s dense output is only cubic, so its steps must land on the "
                f"save times: use an adaptive step-size controller, or fixed steps dt0 of which every "
                f"save time is a multiple (got {type(controller).__name__}, dt0 = {self.dt0})"
            )
        return dataclasses.replace(self, solver=measured_by(solver, controller), controller=controller)

    @property
    def ends_past_saves(self) -> bool:
        """Whether t1 lies past the last save time: a run that reaches it then ends with one more entry, its state at
        t1 (`finish`), which stored records keep apart (`flows.sweep`'s keys)."""
        return bool(self.ts[-1] < self.t1)

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
        ts_out, states, stats, result, solver_state = raw
        stopped = bool(result == diffrax.RESULTS.event_occurred)
        if not stopped and result != diffrax.RESULTS.successful:
            raise self.failure(flow, ts_out, states, stats, result)
        if stopped:
            # Saved times before the stop, then the stopping state itself (SaveAt's t1 entry).
            keep = np.flatnonzero(np.isfinite(ts_out))
            if len(keep) >= 2 and ts_out[keep[-2]] == ts_out[keep[-1]]:
                keep = np.delete(keep, -2)
        else:
            # The save times, then the state at t1 (SaveAt's t1 entry) where it is not one of them.
            keep = np.arange(len(self.ts) + int(self.ends_past_saves))
        states = jax.tree.map(lambda x: x[keep], states)
        stats: dict[str, Any] = {k: int(v) for k, v in stats.items()}
        assert self.solver is not None, "finish a resolved Plan (Plan.resolve)"
        per_step = evaluations_per_step(self.solver)
        stats |= {
            "vf_evaluations": None if per_step is None else per_step * stats["num_steps"],
            "stopped_by_loss": stopped,
            "t_final": float(ts_out[keep[-1]]),
        }
        stats |= report(self.solver, solver_state)
        # Steps land on the save times when a controller in the chain lands on every one of them (see `resolve`: the
        # default's, or one the caller passed); otherwise the solver's dense output interpolates there, which no
        # solver promises to rtol.
        interior = self.ts[(self.ts > self.ts[0]) & (self.ts < stats["t_final"])]
        landed = self.on_step_grid(self.controller) or _lands_on(self.controller, interior)
        stats["saved_times"] = "landed" if landed else "interpolated"
        if not landed and interior.size:
            warnings.warn(
                f"{interior.size} saved values lie between steps and come from {type(self.solver).__name__}'s dense "
                "output, which is not promised to rtol (measured up to ~100x less accurate than the steps); pass "
                "no stepsize_controller (the default lands the steps on the save times) to have them to rtol",
                FaithfulnessWarning,
                stacklevel=3,
            )
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

    def failure(self, flow: AbstractFlow, ts_out, states, stats, result) -> SolverError:
        """The SolverError of a failed `integrate` result, carrying the trajectory up to the failure.

        Diffrax saves the save times passed and then, in the slot after them, the last state reached
        (SaveAt's t1 entry, at the time the solve stopped); slots never reached hold inf.
        """
        keep = np.flatnonzero(np.isfinite(ts_out))
        if len(keep) >= 2 and ts_out[keep[-2]] == ts_out[keep[-1]]:
            keep = np.delete(keep, -2)
        t_reached = float(ts_out[keep[-1]]) if len(keep) else 0.0
        stats = {k: int(v) for k, v in stats.items()}
        message = _failure_message(result, t_reached, self.t1, stats, self.max_steps, self.rtol)
        finite = np.array([all(np.all(np.isfinite(leaf[i])) for leaf in jax.tree.leaves(states)) for i in keep])
        keep = keep[finite] if len(keep) else keep
        if not len(keep):
            return SolverError(message, t_reached, stats)
        assert self.solver is not None, "a failure of a resolved Plan (Plan.resolve)"
        per_step = evaluations_per_step(self.solver)
        stats |= {
            "vf_evaluations": None if per_step is None else per_step * stats["num_steps"],
            "stopped_by_loss": False,
            "t_final": float(ts_out[keep[-1]]),
            "failed": True,
            "failure": message,
        }
        config = {"flow": flow.describe()} | self.describe()
        partial = Trajectory.from_states(flow, ts_out[keep], jax.tree.map(lambda x: x[keep], states), stats, config)
        return SolverError(message, t_reached, stats, partial)


def _lands_on(controller, times: np.ndarray) -> bool:
    """Whether `controller`, or one it wraps (`flows.LandOnEvent`, `flows.StopOnCollapse`, ...), lands its steps on
    every one of `times`: a landing on times (`flows.LandOnTimes`, or another `AbstractLandOnTimes`) or a
    `diffrax.ClipStepSizeController` whose times include them."""
    while controller is not None:
        if isinstance(controller, AbstractLandOnTimes):
            return bool(np.all(np.isin(times, np.asarray(controller.ts))))
        if isinstance(controller, diffrax.ClipStepSizeController) and controller.step_ts is not None:
            return bool(np.all(np.isin(times, np.asarray(controller.step_ts))))
        controller = getattr(controller, "controller", None)
    return False


class FaithfulnessWarning(UserWarning):
    """A solve finished, but a conserved quantity drifted by more than 100 x rtol, or saved values were interpolated
    by a dense output that does not promise rtol."""


STIFF_MAX_MEASUREMENTS = 1000
"""Up to this many measurements `default_solver` switches to the linearly implicit extrapolation with
dense Gauss-Newton solves (`flows.Woodbury`: an m x m eigendecomposition per re-linearisation), beyond
it to the matrix-free NDF (`flows.Tsit5ThenNDF`: Newton with conjugate gradients on Jacobian products, no
matrix of any size). Measured side by side (benchmarks/README.md; deep completion n = 100, rank 5, depth 3,
alpha 0.1, into loss < 1e-10): at m = 2000 the NDF switch is 1.7x faster than the Runge-Kutta-Chebyshev switch
at equal accuracy (`vs_cvode.py`), which is itself 3.8-4.2x faster than Tsit5, and the Woodbury switch 0.45x
Tsit5 (`stiff_tail.py`); at m = 1000 the Woodbury, Chebyshev and Tsit5 runs are within 1.4x of each other; in the
stiffest tails (n = 30, m = 180 sensing from alpha = 1e-3) the Woodbury switch is the fastest, its cost not growing
with the stiffness. The boundary depends on the stiffness, not on m alone; m is what is known before the solve.
Below it the switch carries the kernel's m x m eigenbasis through every explicit step, which costs about 0.5-1 ns a
number at these sizes (`switch_state.py`, p = 30,000: the switch's excess over a 3.4 ms Tsit5 step is +1.0 ms at
m = 1000 and +4.3 ms at m = 2000, of which about 0.45 ms is the switch's own at any m). The NDF switch was 1.7x faster
over the experiments' stopped runs with m <= 1000, but on the 2 x 2 runs from a balanced start at depth 3 it keeps
the conserved balancedness to 4-7e-8 at rtol 1e-10 where the extrapolation keeps 5-8e-9 (benchmarks/README.md)."""


def default_solver(flow: AbstractFlow, stop_loss: float | None, batched: bool = False) -> diffrax.AbstractSolver:
    """The solver `solve` (and `sweep`) uses when given none.

    For a gradient flow of the data loss (`flow.linearisable`: its Gauss-Newton linearisation is then the Hessian up
    to the residual term), which turns stiff in its convergence tail, with or without a stop: Tsit5 until the run
    turns stiff (and, for the extrapolation, until the time left to the stop or to t1 is worth its linearisations:
    `Tsit5ThenExtrapolation.horizon`), then the linearly implicit extrapolation with dense solves
    (`Tsit5ThenExtrapolation`) up to `STIFF_MAX_MEASUREMENTS` measurements and the matrix-free NDF (`Tsit5ThenNDF`)
    beyond. A run that never turns stiff takes Tsit5's steps in the switch (measured from 6 % slower to 1.22x faster
    than Tsit5 alone); one into the tail to a fixed t1 gains what a stopped one does, 4-140x on the measured
    settings (benchmarks/README.md, `no_stop.py`). Tsit5 for every
    other flow but the preconditioned ones (below). `batched` (runs under vmap: `sweep`'s batches of several), with
    a stop: `LinearlyImplicitExtrapolation` instead of the first switch, since vmap turns its lax.cond into running
    both solvers at every step, and Tsit5 instead of the second (not measured under vmap); without a stop Tsit5: a
    run to a fixed t1 may never turn stiff, and the batch would pay the extrapolation's dense solves from its first
    step.

    A flow preconditioned by a diagonal (`flow.preconditioned`: the sign and RMSProp flows) is stiff wherever a
    gradient entry is small, whatever the stop, with real stiff eigenvalues: Tsit5, then Runge-Kutta-Chebyshev
    (`Tsit5ThenChebyshev`; Tsit5 batched). Measured on the completion experiment's costliest runs at rtol 1e-6
    (benchmarks/README.md, `adaptive_stiff.py --preconditioned`): 6.8x (sign) and 11x (RMSProp) faster than Tsit5,
    0.55 and 3.2 rtol off a tight reference where Tsit5, whose steps stability holds far below what accuracy needs, is
    0.18 and 0.02 rtol off.

    The Adam flow keeps Tsit5: `Merson`, stable on the imaginary axis near which its oscillatory stiff eigenvalues lie,
    is faster only on runs whose Tsit5 steps stability holds, slower where accuracy does; `Tsit5ThenMerson`, which
    switches to it where a power iteration sees the oscillation hold Tsit5's steps, saves up to 2.4x Tsit5's
    evaluations on the runs that switch, but spends 4 % more where accuracy then holds Merson's steps (the ratio
    penalty's runs at rtol 1e-8) and 2 % more on the runs that never switch (its Jacobian-vector products); a trial
    step before the switch (its `trial`) avoids the first and loses elsewhere (benchmarks/README.md,
    `adaptive_stiff.py --merson` and `--trial`).
    """
    if flow.preconditioned:
        return diffrax.Tsit5() if batched else Tsit5ThenChebyshev()
    if not flow.linearisable or (batched and stop_loss is None):
        return diffrax.Tsit5()
    if flow.problem.m <= STIFF_MAX_MEASUREMENTS:
        return LinearlyImplicitExtrapolation() if batched else Tsit5ThenExtrapolation()
    return diffrax.Tsit5() if batched else Tsit5ThenNDF()


def saved_bytes(flow: AbstractFlow, state0: State, times: int) -> int:
    """Host memory of a trajectory of `times` saved states: the states, their products W (twice: on the device
    and the host) and the conserved pairs (at most two n x n matrices per state array)."""
    n1, n2 = flow.problem.shape
    state = sum(int(np.size(leaf)) for leaf in jax.tree.leaves(state0))
    return 8 * times * (2 * state + 2 * n1 * n2 + 2 * len(jax.tree.leaves(state0)) * max(n1, n2) ** 2)


def check_saves_fit(flow: AbstractFlow, state0: State, times: int) -> None:
    """ValueError, before anything is computed, if a trajectory of `times` saved states (`saved_bytes`) does not fit
    in the available memory (`solve`'s and `descend`'s saves alike)."""
    check_fits(
        f"saving {times} states", saved_bytes(flow, state0, times), "save fewer times (ts), or a smaller problem"
    )


def check_flow(flow) -> None:
    """ValueError unless `flow` is something `solve` integrates."""
    if not isinstance(flow, AbstractFlow):
        raise ValueError(f"flow must be a flows.Flow (or another flows.AbstractFlow); got {type(flow).__name__}")


def _failure_message(result, t_reached, t1, stats, max_steps, rtol) -> str:
    steps = int(stats["num_steps"])
    rejected = int(stats["num_rejected_steps"])
    if result == diffrax.RESULTS.max_steps_reached and 2 * rejected <= steps:
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


def _gauss_newton(t, state, args: FlowArgs):
    return args.flow.gauss_newton(state)


def _error_control(args: FlowArgs, t, magnitude, sizes):
    return args.flow.error_control(t, magnitude, sizes)


STOP_MARGIN = 1e-6
"""The stop is placed where the loss is stop_loss (1 - STOP_MARGIN): the final loss then reads below stop_loss
however it is recomputed (the loss of a nearly interpolating W is known to ~eps / |r| relative)."""


FAR = 10.0
"""The loss is not computed where its floor (`FlowArgs.floor`) is more than FAR times the stop's level (and above
its `resolution`): the step that crosses the stop starts where the floor is below that unless the loss falls by a
factor of FAR or more in one step (`_stop_distance`)."""


def _stop_distance(t, y, args: FlowArgs, exact: bool = False, **kwargs):
    """loss / (stop_loss (1 - STOP_MARGIN)) - 1: positive before the stop, crossing 0 downward at it.

    Where the flow's `LossFloor` of W exceeds FAR times that level and its resolution, +inf instead (unless `exact`):
    the distance is then certainly positive, and its value is needed neither by the event's sign test nor by
    `flows.LandOnEvent`, which asks for the exact value where it needs one. Every step's decisions are those of the
    loss alone (the same runs to the last bit: tests/test_faithful.py). The root finding on the step that crosses the
    stop bisects where it meets +inf (`BracketedSecant`), and so follows another path to the same root, to its
    tolerance, where the floor is above FAR times the stop somewhere on that step (a loss falling tenfold within it).
    The floor costs W and one inner product instead of m: 0.22-0.38 of the loss on the benchmarks' dense sensing
    (n = 30, m = 180), where the default's runs take about 0.95x (factored), 0.97x (deep3) and 0.98x (U U^T) the time
    of reading the loss at every step (benchmarks/README.md, `step_cost.py`). Under vmap the loss is skipped where
    every run of the batch is far from its stop (`sweep`'s batches integrate without the floor: `integrate`)."""
    assert args.stop_loss is not None, "the stop's event is only built with a stop_loss"
    level = args.stop_loss * (1.0 - STOP_MARGIN)
    distance = lambda: args.flow.loss(y) / level - 1.0  # noqa: E731
    if exact or args.floor is None:
        return distance()
    far = args.floor(args.flow.product(y)) > FAR * jnp.maximum(level, args.floor.resolution)
    infinite = jnp.full((), jnp.inf, jnp.result_type(level, float))
    # Under vmap the predicate is the whole batch's, so the loss is skipped only where every run is far.
    return jax.lax.cond(eqxi.unvmap_all(far), lambda: infinite, lambda: jnp.where(far, infinite, distance()))


def _time_to_stop(t, y, f, args: FlowArgs):
    r"""The flow time left until the run ends: at its final time t1, or earlier where the loss reaches stop_loss,
    estimated as if its current relative rate of decay held: $\log(L / L_{stop}) / (-\dot L / L)$ with
    $\dot L = \langle \nabla L, f \rangle$ (one Jacobian-vector product of the loss). In a linear convergence tail
    dominated by one mode, where the loss decays like $e^{-2\lambda t}$, that estimate is the time left; where the
    decay slows ahead (while faster modes die out, entering a plateau, in an algebraic tail) it underestimates, and on
    a plateau it overestimates. 0 at or below the stop; without a stop, or where the loss is not decreasing, the time
    to t1 (inf where t1 is not known)."""
    left = jnp.inf if args.t1 is None else args.t1 - t
    if args.stop_loss is None:
        return jnp.asarray(left)
    loss, rate = jax.jvp(args.flow.loss, (y,), (f,))
    estimate = jnp.where(rate < 0, jnp.maximum(jnp.log(loss / args.stop_loss), 0.0) * loss / -rate, jnp.inf)
    return jnp.minimum(estimate, left)


def _below_at_start(t, y, args: FlowArgs, t0, **kwargs):
    """A run that starts at or below stop_loss stops there (a sign change of `_stop_distance` never comes)."""
    stop_loss = args.stop_loss
    assert stop_loss is not None, "the stop's event is only built with a stop_loss"
    return jax.lax.cond(t <= t0, lambda: args.flow.loss(y) <= stop_loss, lambda: jnp.array(False))


class _BracketState(eqx.Module):
    lower: Float[Array, ""]
    upper: Float[Array, ""]
    f_lower: Float[Array, ""]
    f_upper: Float[Array, ""]
    retained: Int[Array, ""]


class BracketedSecant(optx.AbstractRootFinder):
    r"""The root of a scalar function of t in a bracket [lower, upper] where it changes sign (Diffrax's event root
    finding passes the last step as `options`): regula falsi with the Illinois modification (the value kept at an
    end retained twice in a row is halved, so both ends converge), a bisection where the secant leaves the bracket.
    It stops when the bracket is narrower than atol + rtol |t|; the size of f is not asked for, since near a stop
    the loss is only known to its round-off. A value of +inf (`_stop_distance` far above the stop) is a positive
    value of unknown size, bisected; a NaN ends the search. f may be a pytree of scalars (several events): their
    sum is used, which is the triggered event's value (Diffrax zeroes the others)."""

    rtol: float
    atol: float
    norm: Callable = optx.max_norm

    def _value(self, fn, y, args) -> tuple[Float[Array, ""], Any]:
        out, aux = fn(y, args)
        return jnp.asarray(sum(jax.tree.leaves(out))), aux

    def init(self, fn, y, args, options, f_struct, aux_struct, tags):
        lower, upper = jnp.asarray(options["lower"], y.dtype), jnp.asarray(options["upper"], y.dtype)
        f_lower, f_upper = self._value(fn, lower, args)[0], self._value(fn, upper, args)[0]
        return _BracketState(lower, upper, f_lower, f_upper, jnp.array(0))

    def step(self, fn, y, args, options, state, tags):
        s = state
        secant = (s.lower * s.f_upper - s.upper * s.f_lower) / jnp.where(
            s.f_upper != s.f_lower, s.f_upper - s.f_lower, 1.0
        )
        inside = jnp.isfinite(secant) & (secant > s.lower) & (secant < s.upper) & (s.f_upper != s.f_lower)
        t = jnp.where(inside, secant, 0.5 * (s.lower + s.upper))
        f, aux = self._value(fn, t, args)
        same_as_lower = jnp.sign(f) == jnp.sign(s.f_lower)
        # The end that moves takes (t, f); the other is retained, its value halved if retained twice in a row.
        retained = jnp.where(same_as_lower, jnp.minimum(s.retained, 0) - 1, jnp.maximum(s.retained, 0) + 1)
        f_upper = jnp.where(same_as_lower, jnp.where(retained <= -2, 0.5 * s.f_upper, s.f_upper), f)
        f_lower = jnp.where(same_as_lower, f, jnp.where(retained >= 2, 0.5 * s.f_lower, s.f_lower))
        lower = jnp.where(same_as_lower, t, s.lower)
        upper = jnp.where(same_as_lower, s.upper, t)
        done = f == 0
        lower, upper = jnp.where(done, t, lower), jnp.where(done, t, upper)
        return t, _BracketState(lower, upper, f_lower, f_upper, retained), aux

    def terminate(self, fn, y, args, options, state, tags):
        narrow = state.upper - state.lower <= self.atol + self.rtol * jnp.abs(state.upper)
        return narrow | jnp.isnan(state.f_lower + state.f_upper), optx.RESULTS.successful

    def postprocess(self, fn, y, aux, args, options, state, tags, result):
        # The end of the bracket past the crossing (the loss at or below the stop).
        return state.upper, aux, {}


STOP_ROOT_FINDER = BracketedSecant(rtol=1e-13, atol=0.0)
"""The stop's root finding on the dense output over the last step (see `BracketedSecant`)."""


def integrate(flow, state0, t1, ts, dt0, stop_loss, *, solver, controller, max_steps, progress, loss_floor=True):
    """diffrax.diffeqsolve of one flow: (saved times, saved states, statistics, result code, final solver state);
    traceable, so `sweep` can vmap it.

    The flow travels in Diffrax's `args` (`FlowArgs`); the term (`LinearisableTerm`) gives the linearly implicit
    solvers its Gauss-Newton linearisation. With `stop_loss` the run ends at the first downward crossing of the
    loss through it, located by Diffrax's event root finding on `_stop_distance` (a step lands just below it
    first: `flows.LandOnEvent`), which skips the loss where the flow's `LossFloor` shows the stop far unless
    `loss_floor` is False. `sweep`'s vmapped batches pass False: a batch skips the loss only where all its runs are
    far, which spares no more than the timing noise (0.95-1.07x the time on batches of four of the benchmarks' dense
    sensing: benchmarks/sweep_batching.py --floor), and the batched program with the floor's conditionals rounds
    differently (stops 1e-16 to 1e-9 apart, relative), where alone a run reads the floor and the loss to the same
    steps and bits."""
    event = None
    if stop_loss is not None:
        event = diffrax.Event(
            cond_fn=(_below_at_start, _stop_distance), root_finder=STOP_ROOT_FINDER, direction=(None, False)
        )
    sol = diffrax.diffeqsolve(
        LinearisableTerm(_field, _gauss_newton, _time_to_stop),
        solver,
        t0=jnp.zeros_like(t1),
        t1=t1,
        dt0=dt0,
        y0=state0,
        args=FlowArgs(flow, stop_loss, t1, flow.loss_floor() if stop_loss is not None and loss_floor else None),
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
