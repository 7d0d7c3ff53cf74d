"""The finite-step counterpart of a flow: the discrete method whose step-to-zero limit the flow is."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from ._flow import Flow, State
from ._solve import SolverError, check_saves_fit, default_ts
from ._trajectory import Trajectory
from ._validate import check_positive, check_positive_int, check_times


def descend(
    flow: Flow, state0: State, step: float, t1: float, ts=None, *, chunk: int = 10_000, progress: bool = False
) -> Trajectory:
    r"""Run the discrete counterpart of `flow`'s dynamics with step `step` from `state0`, saving at times `ts`.

    Step k is time t = k * step, so the result is directly comparable with `flows.solve`. The method is
    `flow.dynamics.optimizer(step)` applied to the objective's parameter gradient (penalty included):
    * `GradientFlow()`: gradient descent, optax.sgd(step);
    * `Adam(a, b, eps)`: optax.adam(step, b1 = 1 - a step, b2 = 1 - b step, eps);
    * `RMSProp(b, eps)`: optax.rmsprop(step, decay = 1 - b step, eps, eps_in_sqrt=False, bias_correction=True);
    * `Momentum(a)`: the debiased EMA of gradients times -step (see `Momentum`);
    * `Sign(eps)`: theta -= step * g / (|g| + eps).
    The optimizer's moments are stored under the flow's names ("m", "v"), so the states and the
    `Trajectory` have exactly the flow's form. `Modified` is refused: it is the model *of* gradient
    descent (descend the gradient flow).

    Args:
        step: the step size eta, at most t1; for the adaptive family rate * step < 1 for each rate (a, b).
        t1: the final time; the run makes round(t1 / step) steps at most (stopping at the last save).
        ts: save times in [0, t1], default `default_ts(t1)`. Each is rounded to the nearest
            multiple of `step` (the time of an actual iterate; a time halfway between two rounds to the even
            multiple, as `np.rint` does); times that round to the same step are saved once, and `traj.ts` holds the
            rounded times k * step. So where the save times end at a t1 that is not a multiple of `step`, the
            last saved time is the multiple nearest t1, which may lie past it by up to half a step.
        chunk: at most this many steps per compiled call (a `lax.fori_loop`); between calls the
            state is checked to be finite and the progress bar advances.
        progress: show a tqdm progress bar over steps.

    Raises:
        ValueError: bad input, before anything compiles.
        SolverError: the iterates became non-finite (the step is too large), with the time reached and the
            run up to the last finite iterate checked (`err.trajectory`, marked failed).
    """
    if not isinstance(flow, Flow):
        raise ValueError(f"descend runs a flows.Flow's discrete counterpart; got {type(flow).__name__}")
    step = check_positive("step", step)
    t1 = check_positive("t1", t1)
    if step > t1:
        raise ValueError(f"step = {step:g} is larger than t1 = {t1:g}: not one step would be taken; use step <= t1")
    check_positive_int("chunk", chunk)
    flow.dynamics.check_step(step)
    save_steps = _save_steps(ts, step, t1)
    flow.check_state(state0)  # also: an adaptive flow's moments start at zero, as the optimizer's do
    check_saves_fit(flow, state0, len(save_steps))
    # float64 whatever state0 came as: optax casts every update back to the parameters' dtype, so integer parameters
    # would be truncated at each step and float32 ones rounded.
    state0 = jax.tree.map(lambda leaf: jnp.asarray(leaf, dtype=jnp.float64), state0)

    step_ = jnp.asarray(step)
    params = flow.params(state0)
    opt_state = _init(flow, params, step_)
    config = {"flow": flow.describe(), "method": "descend", "step": step, "t1": t1}
    saved, times = [], []
    k = 0
    with tqdm(total=int(save_steps[-1]), disable=not progress, unit="step") as bar:
        for target in save_steps:
            while k < target:
                n = min(chunk, int(target) - k)
                last = k, flow.dynamics.state_of(params, opt_state)
                params, opt_state = _advance(flow, params, opt_state, step_, jnp.asarray(n))
                k += n
                bar.update(n)
                if not all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(jax.device_get(params))):
                    raise _diverged(flow, step, k, saved, times, last, config)
            saved.append(flow.dynamics.state_of(params, opt_state))
            times.append(k)
    stats = {"num_steps": k, "t_final": float(save_steps[-1] * step)}
    return Trajectory.from_states(flow, np.asarray(times) * step, _stack(saved), stats=stats, config=config)


def _stack(states: list) -> State:
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *states)


def _diverged(flow, step, k, saved, times, last, config) -> SolverError:
    """The SolverError of iterates that turned non-finite by step k, with the run up to the last finite
    iterate checked (`last`: its step and state) as its trajectory, marked failed."""
    message = (
        f"gradient-type iterates became non-finite by t = {k * step:.6g} (step {k}) with step = {step:g}: "
        "the step is too large for this problem; use a smaller step or a smaller init"
    )
    k_last, state_last = last
    if not times or times[-1] != k_last:
        saved, times = [*saved, state_last], [*times, k_last]
    stats = {"num_steps": k, "t_final": float(k_last * step), "failed": True, "failure": message}
    partial = Trajectory.from_states(flow, np.asarray(times) * step, _stack(saved), stats=stats, config=config)
    return SolverError(message, k * step, {"num_steps": k}, partial)


def _save_steps(ts, step: float, t1: float) -> np.ndarray:
    """The step indices of the save times: ts / step rounded to the nearest integer, duplicates once."""
    ts = check_times(default_ts(t1) if ts is None else ts, t1)
    return np.unique(np.rint(ts / step).astype(np.int64))


@eqx.filter_jit
def _init(flow, params, step):
    return flow.dynamics.optimizer(step).init(params)


@eqx.filter_jit
def _advance(flow, params, opt_state, step, n):
    optimizer = flow.dynamics.optimizer(step)

    def one_step(_, carry):
        params, opt_state = carry
        updates, opt_state = optimizer.update(flow.gradient(params), opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    return jax.lax.fori_loop(0, n, one_step, (params, opt_state))
