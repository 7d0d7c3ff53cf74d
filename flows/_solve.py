"""Integrate a flow with Diffrax and return its `Trajectory`."""

from __future__ import annotations

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._dynamics import AbstractAdaptive
from ._flows import AbstractFlow, State
from ._trajectory import Trajectory
from ._validate import check_choice, check_finite, check_positive, check_positive_int, check_times


class SolverError(RuntimeError):
    """The integration stopped before t1: names the time reached and what to change."""

    def __init__(self, message: str, t_reached: float, stats: dict):
        super().__init__(message)
        self.t_reached = t_reached
        self.stats = stats


SOLVERS = {
    "tsit5": diffrax.Tsit5, "dopri5": diffrax.Dopri5, "dopri8": diffrax.Dopri8, "bosh3": diffrax.Bosh3,
    "heun": diffrax.Heun, "kvaerno3": diffrax.Kvaerno3, "kvaerno5": diffrax.Kvaerno5,
}
"""Diffrax solvers by the names the command line accepts."""


def solver_by_name(name: str) -> diffrax.AbstractSolver:
    """A Diffrax solver from its lower-case name (a key of `SOLVERS`)."""
    check_choice("solver", name, tuple(SOLVERS))
    return SOLVERS[name]()


def evaluations_per_step(solver: diffrax.AbstractSolver) -> int | None:
    """Vector-field evaluations per attempted step of an explicit Runge-Kutta solver, else None.

    A first-same-as-last tableau reuses its last stage as the next step's first, also after a
    rejected step (same start point). Start-up (initial step selection, the first stage) adds at
    most 3 more per solve, which `vf_evaluations` in the run statistics leaves out.
    """
    if not isinstance(solver, diffrax.AbstractERK):
        return None
    return len(solver.tableau.c) + 1 - int(solver.tableau.fsal)


def default_ts(t1: float, num: int = 200, t0: float = 0.0) -> np.ndarray:
    """t0 followed by `num - 1` log-spaced times up to t1: the dynamics of these flows span decades."""
    span = t1 - t0
    return np.concatenate([[t0], t0 + np.geomspace(span * 1e-6, span, num - 1)])


def solve(flow: AbstractFlow, state0: State, t1: float, ts=None, *, rtol: float = 1e-8, atol: float = 1e-10,
          stop_loss: float | None = None, solver: diffrax.AbstractSolver | None = None,
          stepsize_controller: diffrax.AbstractStepSizeController | None = None, max_steps: int = 1_000_000,
          dt0: float | None = None, progress: bool = False) -> Trajectory:
    r"""Integrate `flow` from `state0` at t = 0 to `t1`, saving at `ts`.

    Args:
        ts: increasing save times in [0, t1]; default `default_ts(t1)` (0, then log-spaced).
        rtol, atol: the step-size controller's tolerances (an adaptive PID controller by default).
            They are passed as arrays, so changing them does not recompile.
        stop_loss: end the run at the end of the first step where the data loss falls below it.
            The trajectory then ends there: save times past the stop are dropped and the stopping
            time is the last entry, so `traj.W[-1]` is always the final state.
        solver: any Diffrax solver; default Tsit5 (explicit, 5th order, adaptive).
        max_steps: the step budget. Memory does not grow with it: only the states at `ts` are kept.
        progress: show a tqdm progress bar over t.

    Raises:
        ValueError: bad input, before anything compiles.
        SolverError: max_steps reached or a non-finite state, with the time reached.
    """
    if not isinstance(flow, AbstractFlow):
        raise ValueError(f"flow must be a flows flow (Direct, Symmetric, ...); got {type(flow).__name__}")
    t1 = check_positive("t1", t1)
    rtol = check_positive("rtol", rtol)
    atol = check_positive("atol", atol)
    check_positive_int("max_steps", max_steps)
    if stop_loss is not None:
        stop_loss = check_positive("stop_loss", stop_loss)
    ts = check_times(default_ts(t1) if ts is None else ts, t1)
    _check_state(flow, state0)
    solver = diffrax.Tsit5() if solver is None else solver
    if stepsize_controller is None:
        stepsize_controller = diffrax.PIDController(rtol=jnp.asarray(rtol), atol=jnp.asarray(atol))

    sol = _integrate(flow, state0, jnp.asarray(t1), jnp.asarray(ts), dt0,
                     None if stop_loss is None else jnp.asarray(stop_loss), solver=solver,
                     controller=stepsize_controller, max_steps=max_steps, progress=progress)
    ts_out, states, stats, result = jax.device_get(sol)
    stopped = bool(result == diffrax.RESULTS.event_occurred)
    n_saved = len(ts)
    if result != diffrax.RESULTS.successful and not stopped:
        finite = np.isfinite(ts_out)
        t_reached = float(ts_out[finite][-1])
        raise SolverError(_failure_message(result, t_reached, t1, stats, max_steps, rtol), t_reached, stats)
    if stopped:
        # Saved times before the stop, then the stopping state itself (SaveAt's t1 entry).
        keep = np.flatnonzero(np.isfinite(ts_out))
        if len(keep) >= 2 and ts_out[keep[-2]] == ts_out[keep[-1]]:
            keep = np.delete(keep, -2)
    else:
        keep = np.arange(n_saved)
    states = jax.tree.map(lambda x: x[keep], states)
    stats = {k: int(v) for k, v in stats.items()}
    per_step = evaluations_per_step(solver)
    stats |= {"vf_evaluations": None if per_step is None else per_step * stats["num_steps"],
              "stopped_by_loss": stopped, "t_final": float(ts_out[keep[-1]])}
    config = {"flow": flow.describe(), "solver": type(solver).__name__, "rtol": rtol, "atol": atol,
              "t1": t1, "stop_loss": stop_loss, "max_steps": max_steps}
    return Trajectory.from_states(flow, ts_out[keep], states, stats=stats, config=config)


def _check_state(flow: AbstractFlow, state0: State) -> None:
    expected, expected_def = jax.tree.flatten(jax.eval_shape(flow.init))
    got, got_def = jax.tree.flatten(state0)
    if got_def != expected_def or any(jnp.shape(g) != e.shape for g, e in zip(got, expected)):
        raise ValueError(f"state0 does not match {type(flow).__name__}: expected shapes "
                         f"{jax.tree.map(lambda x: x.shape, jax.eval_shape(flow.init))}, "
                         f"got {jax.tree.map(jnp.shape, state0)}")
    for leaf in got:
        check_finite("state0", leaf)
    # The bias correction 1 / (1 - e^{-rate t}) and its t = 0 limit assume moments that start at 0.
    if isinstance(flow, AbstractAdaptive) and any(np.any(np.asarray(leaf) != 0) for name in flow.moment_names
                                                  for leaf in jax.tree.leaves(state0[name])):
        raise ValueError("state0's moments must be zero (as flow.init makes them): the bias correction "
                         "assumes moments that start from zero at t = 0")


def _failure_message(result, t_reached, t1, stats, max_steps, rtol) -> str:
    steps = int(stats["num_steps"])
    rejected = int(stats["num_rejected_steps"])
    if result == diffrax.RESULTS.max_steps_reached and rejected < steps // 2:
        return (f"the solver reached max_steps = {max_steps} at t = {t_reached:.8g} of t1 = {t1:.6g} "
                f"({steps} steps). Raise max_steps, shorten t1, set stop_loss, or use a stiff solver "
                "for the convergence tail.")
    return (f"the solve failed at t = {t_reached:.8g} of t1 = {t1:.6g}: {rejected} of {steps} steps were "
            "rejected as the step size collapsed, so the state is non-finite or blowing up there. Check "
            f"the problem scale and init, shorten t1, or loosen rtol = {rtol:g}.")


@eqx.filter_jit
def _integrate(flow, state0, t1, ts, dt0, stop_loss, *, solver, controller, max_steps, progress):
    event = None
    if stop_loss is not None:
        event = diffrax.Event(cond_fn=lambda t, y, args, **kwargs: flow.loss(y) < args)
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(flow.vector_field), solver, t0=jnp.zeros_like(t1), t1=t1, dt0=dt0, y0=state0,
        args=stop_loss, saveat=diffrax.SaveAt(ts=ts, t1=True), stepsize_controller=controller,
        event=event, max_steps=max_steps, throw=False, adjoint=diffrax.ForwardMode(),
        progress_meter=diffrax.TqdmProgressMeter(refresh_steps=5000) if progress else diffrax.NoProgressMeter())
    return sol.ts, sol.ys, sol.stats, sol.result
