r"""Saved values and stops against an exact flow: the balanced deep flow on full observation.

For $L(W) = \tfrac12\|W - Y\|_F^2$ with $Y = U \operatorname{diag}(y) V^T$ and a balanced start aligned with Y
($W_j(0) = Q_j \operatorname{diag}(s_0^{1/N}) Q_{j-1}^T$, $Q_0 = V$, $Q_N = U$), the factors stay aligned and
each singular value of $W = W_N \cdots W_1$ obeys the scalar ODE $\sigma' = -c N \sigma^{2 - 2/N} (\sigma - y)$
(Arora, Cohen, Hu, Luo 2019), c = 1 (c = 2 for W = U U^T, whose field is twice as fast; N = 1 is the direct flow),
solved by one quadrature and its inverse (`analysis.closed_form.balanced_singular_value`): a reference independent
of every ODE solver. The dense outputs of the solvers are measured up to 212 rtol off it between steps (depth 4,
from 1e-2); landed steps are within a few rtol.
"""

import dataclasses
import warnings
from collections.abc import Callable

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import optimistix as optx
import pytest

import flows
from analysis import closed_form
from flows._flow import FlowArgs
from flows._solve import FAR, STOP_MARGIN, STOP_ROOT_FINDER, _stop_distance

Y = np.array([1.0, 0.5, 0.25])
S0 = np.array([1.0, 0.8, 0.6])


def balanced_case(name: str, scale: float):
    """(flow, state0, exact W(t)) for one parameterization, n = 3, from singular values scale * S0."""
    rng = np.random.default_rng(0)
    problem, U, V = closed_form.aligned_target(Y, rng, symmetric=name == "symmetric")
    s0 = scale * S0
    if name == "direct":
        flow, state0, N, c = flows.Flow(problem, flows.Direct()), jnp.asarray((U * s0) @ V.T), 1, 1.0
    elif name == "symmetric":
        flow, state0, N, c = flows.Flow(problem, flows.Symmetric()), jnp.asarray(U * np.sqrt(s0)), 2, 2.0
    elif name == "factored":
        flow, N, c = flows.Flow(problem, flows.Factored()), 2, 1.0
        state0 = (jnp.asarray(U * np.sqrt(s0)), jnp.asarray(V * np.sqrt(s0)))
    else:
        N, c = int(name.removeprefix("deep")), 1.0
        flow, state0 = flows.Flow(problem, flows.Deep(depth=N)), closed_form.aligned_balanced_factors(U, V, s0, N, rng)

    def exact(ts):
        return closed_form.aligned_balanced_flow(U, Y, V, s0, N, ts, speed=c)

    return flow, state0, exact


def _relative(W, exact):
    return np.linalg.norm(W - exact, axis=(1, 2)) / np.linalg.norm(exact, axis=(1, 2))


def test_the_reference_is_the_flow():
    # The quadrature reference against Dopri8 at rtol 1e-13 (landed on the times): the two agree to ~1e-13, so the
    # reference resolves errors far below the 100 rtol the tests below allow.
    flow, state0, exact = balanced_case("deep3", 0.1)
    ts = np.array([0.0, 3.0, 30.0, 300.0])
    traj = flows.solve(flow, state0, t1=300.0, ts=ts, rtol=1e-13, solver=diffrax.Dopri8())
    assert _relative(traj.W, exact(ts)).max() < 1e-11


CASES = ["direct", "symmetric", "factored", "deep2", "deep3", "deep4"]


@pytest.mark.parametrize(
    "rtol", [1e-8, 1e-10, pytest.param(1e-6, marks=pytest.mark.slow), pytest.param(1e-12, marks=pytest.mark.slow)]
)
@pytest.mark.parametrize("name", CASES)
def test_every_saved_value_is_within_100_rtol_of_the_exact_flow(name, rtol):
    # The default solve (Tsit5, steps landed on the 40 log-spaced save times) at every saved time. Deep products
    # from 1e-2 (depth 4 is where Tsit5's dense output is off by up to 212 rtol between steps under 200 save times:
    # benchmarks/saved_values.py --defect). The ends of the tolerance range, 1e-6 and 1e-12, are slow.
    flow, state0, exact = balanced_case(name, 1e-2)
    ts = flows.default_ts(3000.0, 40)
    traj = flows.solve(flow, state0, t1=3000.0, ts=ts, rtol=rtol)
    assert traj.stats["saved_times"] == "landed"
    assert _relative(traj.W, exact(ts)).max() <= 100 * rtol


# The default at rtol 1e-8 in the default suite; the extrapolation alone and rtol 1e-10 are `slow`.
STOP_GRID = [
    pytest.param(
        solver,
        name,
        rtol,
        marks=() if solver is None and rtol == 1e-8 else pytest.mark.slow,
        id=f"{label}-{name}-{rtol:g}",
    )
    for solver, label in ((None, "default"), (flows.LinearlyImplicitExtrapolation(), "extrapolation"))
    for name in ("deep2", "deep3", "deep4")
    for rtol in (1e-8, 1e-10)
]


@pytest.mark.parametrize("solver, name, rtol", STOP_GRID)
def test_runs_into_a_stop_are_faithful_and_end_on_it(name, rtol, solver):
    # Into stop_loss: the default (the switch to the extrapolation) and the extrapolation alone (cubic dense output,
    # so its steps land on the save times and on the stop): every saved value and the final one within 100 rtol of
    # the exact flow at the same time, and the final loss is stop_loss to the stop's margin.
    flow, state0, exact = balanced_case(name, 0.1)
    ts = flows.default_ts(1e5, 40)
    traj = flows.solve(flow, state0, t1=1e5, ts=ts, rtol=rtol, stop_loss=1e-12, solver=solver)
    assert traj.stats["stopped_by_loss"] and traj.stats["saved_times"] == "landed", traj.stats
    assert traj.loss[-1] == pytest.approx(1e-12, rel=1e-5) and traj.loss[-1] <= 1e-12
    assert _relative(traj.W, exact(traj.ts)).max() <= 100 * rtol


def test_two_solvers_end_at_the_same_state_under_one_stop_loss():
    # 6 x 6 completion, U V^T from 1e-3 I, stop 1e-10: the default (switching to the extrapolation) and Tsit5 end
    # where the loss is stop_loss, so at the same W to ~rtol (the stop at the end of a step left them 1.6e-5
    # apart).
    flow = flows.Flow(flows.completion(n=6, m=20, rank=1, seed=0, symmetric=False), flows.Factored())
    state0 = flow.init(scale=1e-3)
    runs = {
        name: flows.solve(flow, state0, t1=1e6, ts=[0.0], stop_loss=1e-10, solver=solver)
        for name, solver in (("default", None), ("tsit5", diffrax.Tsit5()))
    }
    default = runs.pop("default")
    assert default.config["solver"] == "Tsit5ThenExtrapolation"
    for name, traj in runs.items():
        assert traj.loss[-1] == pytest.approx(default.loss[-1], rel=1e-6), name
        assert np.linalg.norm(traj.W[-1] - default.W[-1]) <= 100 * 1e-8 * np.linalg.norm(default.W[-1]), name


@pytest.mark.parametrize("shortest", [0.01, 0.05, 0.3])
def test_an_overshooting_step_is_retried_at_the_secant_crossing_or_at_shortest(shortest):
    # q falls from 2 q_* to 1e-3 q_* over the step [0, 1] that the inner controller accepts: the step is rejected and
    # retried to end where the secant of log q reaches q_* e^{-window / 2}, or at the fraction `shortest` of the step
    # where the secant asks for less; the inner controller's state is the one before the attempt.
    # A PI controller and a nonzero error estimate: the inner controller's own next state differs from its
    # first, so keeping the first is observable.
    landing = flows.LandOnEvent(
        controller=diffrax.PIDController(rtol=1e-6, atol=1e-8, pcoeff=0.4, icoeff=0.3),
        distance=lambda t, y, args, **kwargs: y - 1.0,
        window=1e-2,
        shortest=shortest,
    )
    terms = diffrax.ODETerm(lambda t, y, args: -y)
    y0, y1 = jnp.asarray(2.0), jnp.asarray(1e-3)
    _, state = landing.init(terms, 0.0, 1.0, y0, 1.0, None, None, 5)
    error = jnp.asarray(1e-9)
    keep, next_t0, next_t1, _, (inner, log_kept), _ = landing.adapt_step_size(0.0, 1.0, y0, y1, None, error, 5, state)
    *_, moved, _ = landing.controller.adapt_step_size(0.0, 1.0, y0, y1, None, error, 5, state[0])
    assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(moved), jax.tree.leaves(state[0])))
    secant = (np.log(2.0) + 0.5e-2) / (np.log(2.0) - np.log(1e-3))
    assert not keep and next_t0 == 0.0 and float(log_kept) == pytest.approx(np.log(2.0))
    assert float(next_t1) == pytest.approx(max(secant, shortest), rel=1e-12)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(inner), jax.tree.leaves(state[0])))


def test_a_shallow_step_lands_within_its_share_of_the_fall_and_the_retry_is_kept():
    # log q falls linearly from log 1.1 to log 0.99 over [0, 1] (by 0.105): the step ends 0.01 below the threshold,
    # inside the 5 % window but beyond 5 % of its own fall, so it is rejected; the retry ends where the secant reaches
    # half of what the retry is allowed, and is kept. A window alone keeps the first step, its root 9.5 % of the step
    # before its end.
    def q(t):
        return 1.1 * (0.99 / 1.1) ** t

    landing = flows.LandOnEvent(
        controller=diffrax.PIDController(rtol=1e-6, atol=1e-8),
        distance=lambda t, y, args, **kwargs: y - 1.0,
        window=0.05,
    )
    terms = diffrax.ODETerm(lambda t, y, args: -y)
    y0 = jnp.asarray(q(0.0))
    _, state = landing.init(terms, 0.0, 1.0, y0, 1.0, None, None, 5)
    error = jnp.asarray(1e-9)
    keep, _, next_t1, _, _, _ = landing.adapt_step_size(0.0, 1.0, y0, jnp.asarray(q(1.0)), None, error, 5, state)
    log0, fall = np.log(1.1), np.log(1.1 / 0.99)
    target = 0.5 * 0.05 * log0 / (1 - 0.5 * 0.05)
    assert not keep and float(next_t1) == pytest.approx((log0 + target) / fall, rel=1e-12)
    retry = float(next_t1)
    kept, *_ = landing.adapt_step_size(0.0, retry, y0, jnp.asarray(q(retry)), None, error, 5, state)
    assert kept
    alone = dataclasses.replace(landing, share=1.0)
    kept, *_ = alone.adapt_step_size(0.0, 1.0, y0, jnp.asarray(q(1.0)), None, error, 5, state)
    assert kept


class _Proposes(diffrax.AbstractAdaptiveStepSizeController):
    """Accepts every step and proposes a step of `h` from its end."""

    h: float
    rtol: float = 1.0
    atol: float = 1.0
    norm: Callable = staticmethod(lambda tree: 0.0)

    def wrap(self, direction):
        return self

    def init(self, terms, t0, t1, y0, dt0, args, func, error_order):
        return t0 + self.h, None

    def adapt_step_size(self, t0, t1, y0, y1_candidate, args, y_error, error_order, controller_state):
        return True, t1, t1 + self.h, False, None, diffrax.RESULTS.successful


def test_a_save_time_just_beyond_a_step_is_reached_in_two_equal_steps_not_a_sliver():
    # Proposals of 0.25 toward the save time 0.8125: from 0.5 it is 0.3125 away, within 1.5 proposals, so two steps of
    # 0.15625 (clipping: 0.25 to 0.75, then a sliver of 0.0625); from 1.5625 the save time 2.0 is 0.4375 away, beyond
    # 1.5 proposals, so a step of 0.25 and then the remaining 0.1875 (a step of three quarters, no sliver).
    landing = flows.LandOnTimes(_Proposes(0.25), jnp.asarray([0.0, 0.8125, 2.0]))
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(lambda t, y, args: -y),
        diffrax.Tsit5(),
        0.0,
        2.5,
        None,
        jnp.asarray(1.0),
        saveat=diffrax.SaveAt(steps=True),
        stepsize_controller=landing,
    )
    ts = np.asarray(sol.ts)[np.isfinite(np.asarray(sol.ts))]
    expected = [0.25, 0.5, 0.65625, 0.8125, 1.0625, 1.3125, 1.5625, 1.8125, 2.0, 2.25, 2.5]
    np.testing.assert_array_equal(ts, expected)


def test_a_run_that_starts_below_stop_loss_stops_at_once():
    flow = flows.Flow(flows.sensing(n=4, m=8, rank=1, seed=0), flows.Symmetric())
    traj = flows.solve(flow, flow.init(scale=0.1), t1=10.0, stop_loss=1e6)
    assert traj.stats["stopped_by_loss"] and list(traj.ts) == [0.0]


def _without_floor(flow: flows.Flow) -> flows.Flow:
    """The same flow on a copy of its dense problem that offers no `LossFloor` (the stop reads the loss alone)."""

    class NoFloor(flows.DenseProblem):
        def loss_floor(self):
            return None

    p = flow.problem
    plain = NoFloor(y=p.y, truth=p.truth, shape=p.shape, symmetric=p.symmetric, A=p.A)
    return dataclasses.replace(flow, problem=plain)


@pytest.mark.parametrize("solver", [None, diffrax.Tsit5()], ids=["default", "tsit5"])
def test_the_loss_floor_leaves_every_stop_where_the_loss_alone_puts_it(solver):
    # 6 x 6 factored sensing from 1e-2 I to 1e-10: the floor is far above the stop at the start (the stop's distance
    # is +inf there), and the run takes the same steps to the same final time and state, to the last bit.
    flow = flows.Flow(flows.sensing(n=6, m=20, rank=1, seed=0, symmetric=False), flows.Factored())
    state0 = flow.init(scale=1e-2)
    floor = flow.loss_floor()
    assert floor is not None and float(floor(flow.product(state0))) > FAR * 1e-10
    assert np.isposinf(_stop_distance(0.0, state0, FlowArgs(flow, jnp.asarray(1e-10), None, floor)))
    with_floor, alone = (
        flows.solve(f, state0, t1=1e3, ts=[0.0], stop_loss=1e-10, solver=solver) for f in (flow, _without_floor(flow))
    )
    assert with_floor.stats["stopped_by_loss"] and with_floor.stats["num_steps"] == alone.stats["num_steps"]
    assert with_floor.ts[-1] == alone.ts[-1]
    for a, b in zip(jax.tree.leaves(with_floor.states), jax.tree.leaves(alone.states)):
        np.testing.assert_array_equal(a, b)


class _AlwaysFar(flows.DenseProblem):
    """A dense problem with a bogus floor, always far above any stop: the floor of a zero direction, offset 1000."""

    def loss_floor(self):
        return flows.LossFloor(jnp.zeros(self.shape), jnp.asarray(1e3))


def _always_far(p: flows.DenseProblem) -> _AlwaysFar:
    return _AlwaysFar(y=p.y, truth=p.truth, shape=p.shape, symmetric=p.symmetric, A=p.A)


def test_the_stop_reads_the_flows_floor():
    # A floor that is always far above the stop (a bogus one: the floor of a zero direction with offset 1000): the
    # run passes the stop's loss without stopping and ends at t1, so `flows.solve` hands its stop the flow's floor
    # and believes it.
    flow = flows.Flow(flows.sensing(n=4, m=8, rank=1, seed=0), flows.Symmetric())
    bogus = dataclasses.replace(flow, problem=_always_far(flow.problem))
    stopped, passed = (flows.solve(f, f.init(scale=0.1), t1=50.0, ts=[0.0], stop_loss=1e-8) for f in (flow, bogus))
    assert stopped.stats["stopped_by_loss"] and stopped.loss[-1] == pytest.approx(1e-8, rel=1e-5)
    assert not passed.stats["stopped_by_loss"] and passed.ts[-1] == 50.0 and passed.loss[-1] < 0.1 * 1e-8


def test_a_batched_sweep_reads_the_loss_alone(tmp_path):
    # The same bogus floor in a vmapped batch of two: the batch's stop reads the loss at every step and stops both runs
    # at their stop (in a batch the floor spares little and changes the round-off: `flows._solve.integrate`).
    flow = flows.Flow(_always_far(flows.sensing(n=4, m=8, rank=1, seed=0)), flows.Symmetric())
    runs = flows.sweep(
        lambda config: (flow, flow.init(scale=config["alpha"])),
        flows.grid(alpha=[0.1, 0.2]),
        tmp_path,
        t1=50.0,
        ts=[0.0],
        stop_loss=1e-8,
        batch_size=2,
        progress=False,
    )
    for run in runs:
        traj = run.load()
        assert traj.stats["stopped_by_loss"] and traj.loss[-1] == pytest.approx(1e-8, rel=1e-5)


def _certified(t, y, args, exact=False, **kwargs):
    """q / q_* - 1 for q = y, q_* = 1, but +inf where q > 10 unless `exact` (as `flows.solve`'s stop distance)."""
    return y - 1.0 if exact else jnp.where(y > 10.0, jnp.inf, y - 1.0)


@pytest.mark.parametrize("y1", [1e-3, 0.99, 0.5, 500.0], ids=["overshoot", "within", "share", "far"])
def test_a_landing_from_a_start_far_above_the_stop_decides_as_from_its_exact_value(y1):
    # q falls from 2000 q_* (a start certified far above: +inf) to y1 over one accepted step: the landing asks for the
    # start's exact value and rejects, retries or keeps exactly as with the exact distance; a step that ends far
    # above (500) keeps the certificate.
    landings = [
        flows.LandOnEvent(controller=diffrax.PIDController(rtol=1e-6, atol=1e-8), distance=d)
        for d in (_certified, lambda t, y, args, **kwargs: y - 1.0)
    ]
    terms = diffrax.ODETerm(lambda t, y, args: -y)
    y0, error = jnp.asarray(2000.0), jnp.asarray(1e-9)
    outputs = []
    for landing in landings:
        _, state = landing.init(terms, 0.0, 1.0, y0, 1.0, None, None, 5)
        outputs.append(landing.adapt_step_size(0.0, 1.0, y0, jnp.asarray(y1), None, error, 5, state))
    (keep, t0, t1, jump, (inner, log), result), exact = outputs
    assert bool(keep) == bool(exact[0]) and np.isfinite(t1)
    for a, b in zip(
        jax.tree.leaves((keep, t0, t1, jump, inner, result)), jax.tree.leaves(exact[:4] + exact[4][:1] + exact[5:])
    ):
        np.testing.assert_array_equal(a, b)
    assert np.isposinf(log) if y1 > 10 else float(log) == float(exact[4][1])


def test_the_stops_root_finding_bisects_a_value_known_only_to_be_positive():
    # exp(-10 t) - 1/2 on [0, 1], +inf where it is above 0.2 (t < 0.036, the bracket's lower end among them): the
    # root log(2) / 10 to the finder's tolerance, as from the exact values (a search that ended at a non-finite value
    # would return the bracket's upper end, 1).
    def certified(t, args):
        value = jnp.exp(-10.0 * t) - 0.5
        return jnp.where(value > 0.2, jnp.inf, value)

    for fn in (certified, lambda t, args: jnp.exp(-10.0 * t) - 0.5):
        root = optx.root_find(fn, STOP_ROOT_FINDER, jnp.asarray(1.0), options=dict(lower=0.0, upper=1.0), throw=False)
        assert float(root.value) == pytest.approx(np.log(2.0) / 10.0, rel=1e-12)


def test_interpolated_saves_are_reported_and_warned():
    # Diffrax's own solver under a given controller interpolates; the switches land their steps whatever the
    # controller (`AbstractFlowSolver.lands_save_times`).
    flow, state0, _ = balanced_case("deep3", 1e-2)
    controller = diffrax.PIDController(rtol=1e-8, atol=1e-10)
    options = dict(t1=10.0, ts=flows.default_ts(10.0, 10), stepsize_controller=controller)
    with pytest.warns(flows.FaithfulnessWarning, match="dense output, which is not promised"):
        traj = flows.solve(flow, state0, solver=diffrax.Tsit5(), **options)
    assert traj.stats["saved_times"] == "interpolated"
    with warnings.catch_warnings():
        warnings.simplefilter("error", flows.FaithfulnessWarning)
        traj = flows.solve(flow, state0, **options)
    assert traj.config["solver"] == "Tsit5ThenExtrapolation" and traj.stats["saved_times"] == "landed"


def test_a_given_controller_that_clips_to_the_save_times_lands_and_is_reported_so():
    # The caller's clipping controller sits inside the collapse guard solve wraps around it; its steps land, so no
    # warning. Clipping to some of the save times only is still interpolation.
    flow, state0, _ = balanced_case("deep3", 1e-2)
    ts = flows.default_ts(10.0, 10)
    pid = diffrax.PIDController(rtol=1e-8, atol=1e-10)
    with warnings.catch_warnings():
        warnings.simplefilter("error", flows.FaithfulnessWarning)
        clipped = diffrax.ClipStepSizeController(pid, step_ts=jnp.asarray(ts))
        traj = flows.solve(flow, state0, t1=10.0, ts=ts, solver=diffrax.Tsit5(), stepsize_controller=clipped)
    assert traj.stats["saved_times"] == "landed"
    with pytest.warns(flows.FaithfulnessWarning, match="dense output, which is not promised"):
        partly = diffrax.ClipStepSizeController(pid, step_ts=jnp.asarray(ts[::2]))
        traj = flows.solve(flow, state0, t1=10.0, ts=ts, solver=diffrax.Tsit5(), stepsize_controller=partly)
    assert traj.stats["saved_times"] == "interpolated"


def test_a_collapsed_step_size_ends_the_solve_early():
    # W = 1e400-ish overflows at once: every step is rejected and the step size collapses. The solve ends after
    # ~100 collapsed attempts (not a million), with SolverError naming the time reached.
    flow = flows.Flow(flows.sensing(n=4, m=8, rank=1, seed=0), flows.Symmetric())
    with pytest.raises(flows.SolverError, match="step size collapsed") as caught:
        flows.solve(flow, flow.init(scale=1e200), t1=1.0)
    assert caught.value.t_reached == 0.0 and caught.value.stats["num_steps"] < 1000


def test_an_overflowing_trial_step_is_shrunk_not_taken_for_a_collapse():
    # A trial step that overflows holds inf (and NaN) entries, and its error is inf (Diffrax's loop turns NaN errors
    # into inf). The array's size must stay that of the step's start (an inf size would make the scaled error
    # inf / inf = NaN and the next step NaN), so the controller shrinks the step by its smallest factor.
    control = flows.ArraywiseRelative.make(1e-8)
    terms = diffrax.ODETerm(lambda t, y, args: -y)
    y0 = jnp.asarray([1.0, 2.0])
    y1 = jnp.asarray([jnp.inf, jnp.nan])
    _, state = control.init(terms, 0.0, 1.0, y0, 0.1, None, None, 5)
    error = jnp.asarray([jnp.inf, jnp.inf])
    keep, next_t0, next_t1, *_ = control.adapt_step_size(0.0, 0.1, y0, y1, None, error, 5, state)
    assert not keep and next_t0 == 0.0 and 0.0 < float(next_t1) < 0.1
    # A whole solve through such steps: 4 x 4 sensing from 13 I, whose first trial steps overflow, finishes and
    # agrees with the plain PID controller's run (an absolute tolerance, so sizes play no part) at the save times.
    flow = flows.Flow(flows.sensing(n=4, m=6, rank=1, seed=0), flows.Symmetric())
    ts = np.array([0.0, 1.0, 10.0])
    ours = flows.solve(flow, flow.init(13.0), t1=10.0, ts=ts, max_steps=20_000)
    assert ours.stats["num_rejected_steps"] > 0
    plain = flows.solve(flow, flow.init(13.0), t1=10.0, ts=ts, rtol=1e-12, atol=1e-12, max_steps=200_000)
    np.testing.assert_allclose(ours.W, plain.W, rtol=0, atol=100 * 1e-8 * np.abs(plain.W).max())


@pytest.mark.parametrize("growing", [True, False])
def test_an_arrays_size_is_its_larger_end_of_the_step(growing):
    # Errors are relative to each array's size, max |y| over the array and over both ends of the step, with a floor
    # of 1e-2 rtol of that size for entries near 0 (`ArraywiseRelative`). An array growing tenfold in a step (a
    # saddle's escape from a small start) or shrinking tenfold has size 10 either way, so an error of 1e-7 in an
    # entry that stays 0 reads 1e-7 / (1e-2 rtol 10) = 1 at rtol 1e-6, 0.71 in the root mean square over the two
    # entries: kept. Sized by the smaller end (or, growing, by the step's start) it would read 7.1: rejected.
    rtol = 1e-6
    control = flows.ArraywiseRelative.make(rtol)
    terms = diffrax.ODETerm(lambda t, y, args: y)
    small, large = jnp.asarray([1.0, 0.0]), jnp.asarray([10.0, 0.0])
    y0, y1 = (small, large) if growing else (large, small)
    _, state = control.init(terms, 0.0, 1.0, y0, 0.1, None, None, 5)
    keep, *_ = control.adapt_step_size(0.0, 0.1, y0, y1, None, jnp.asarray([0.0, 1e-7]), 5, state)
    assert keep
    keep, *_ = control.adapt_step_size(0.0, 0.1, y0, y1, None, jnp.asarray([0.0, 2e-7]), 5, state)
    assert not keep  # 1.41: the floor is 1e-2 rtol of the size, not more


def test_the_collapse_floor_does_not_grow_with_t1():
    # "Run until the stop" with a huge t1: near t = 0 the floor is the smaller of 1e-12 t1 and the first step, so the
    # run stops where it stops with t1 = 1e4 (at t1 = 1e25, 1e-12 t1 alone made ordinary first steps "collapsed").
    flow = flows.Flow(flows.sensing(n=4, m=6, rank=1, seed=0), flows.Symmetric())
    runs = [flows.solve(flow, flow.init(1e-3), t1=t1, ts=[0.0], stop_loss=1e-10) for t1 in (1e4, 1e25)]
    assert all(run.stats["stopped_by_loss"] for run in runs)
    assert runs[0].ts[-1] == pytest.approx(runs[1].ts[-1], rel=1e-12)
    assert runs[0].stats["num_steps"] == runs[1].stats["num_steps"]


def test_a_step_size_that_is_not_a_number_counts_as_collapsed():
    guard = flows.StopOnCollapse(_Proposes(float("nan")), patience=3)
    terms = diffrax.ODETerm(lambda t, y, args: -y)
    y = jnp.asarray(1.0)
    _, state = guard.init(terms, 0.0, 1.0, y, None, None, None, 5)
    results = []
    for _ in range(3):
        *_, state, result = guard.adapt_step_size(0.0, 0.5, y, y, None, y, 5, state)
        results.append(result == diffrax.RESULTS.dt_min_reached)
    assert [bool(r) for r in results] == [False, False, True]


@pytest.mark.parametrize("ulps", [1, 2, 64])
def test_a_step_ending_within_rounding_above_the_stop_still_stops(ulps):
    # stop_loss set so that the step landed on a save time ends `ulps` above the threshold: the next step must end at
    # most `floor` below it, not within share / (1 - share) of those few ulps, which no retry can meet.
    flow = flows.Flow(flows.sensing(n=4, m=6, rank=1, seed=0), flows.Symmetric())
    state0 = flow.init(0.1)
    ts = flows.default_ts(50.0, 60)
    reference = flows.solve(flow, state0, t1=50.0, ts=ts, solver=diffrax.Tsit5())
    loss = float(reference.loss[40])
    stop = loss * (1 - ulps * 2.2e-16) / (1 - STOP_MARGIN)
    traj = flows.solve(flow, state0, t1=50.0, ts=ts, stop_loss=stop, solver=diffrax.Tsit5(), max_steps=20_000)
    assert traj.stats["stopped_by_loss"] and traj.ts[-1] == pytest.approx(ts[40], rel=1e-9)


def test_the_faithfulness_report_gives_each_conserved_quantitys_largest_drift():
    # U^T U - V^T V moved at the middle save time and back at the end: the report holds the largest drift over the
    # trajectory (the middle one), not the last (zero), nor the first.
    flow = flows.Flow(flows.sensing(n=4, m=8, rank=1, seed=0, symmetric=False), flows.Factored())
    U, V = flow.init(scale=0.5, kind="gaussian", seed=1)
    states = (jnp.stack([U, 1.1 * U, U]), jnp.stack([V, V, V]))
    traj = flows.Trajectory.from_states(flow, np.array([0.0, 1.0, 2.0]), states)
    ((name, drift),) = traj.conserved_drift().items()
    assert drift[0] == drift[2] == 0.0 and drift[1] > 0.01
    assert traj.faithfulness()["conserved_drift"] == {name: float(drift[1])}
