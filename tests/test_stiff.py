"""The Gauss-Newton linear algebra and the linearly implicit extrapolation solver (flows._stiff)."""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import flows
from analysis.closed_form import direct_flow


def _sensing():
    return flows.sensing(n=6, m=12, rank=1, seed=0)


def _completion():
    return flows.completion(n=6, m=15, rank=1, seed=0)


FLOWS = {
    "symmetric-sensing": lambda: flows.Flow(_sensing(), flows.Symmetric()),
    "deep-sensing": lambda: flows.Flow(_sensing(), flows.Deep(depth=3)),
    "direct-completion": lambda: flows.Flow(_completion(), flows.Direct()),
    "symmetric-completion": lambda: flows.Flow(_completion(), flows.Symmetric()),
    "factored-completion": lambda: flows.Flow(_completion(), flows.Factored(width=4)),
    "deep-completion": lambda: flows.Flow(_completion(), flows.Deep(depth=3, width=(5, 4))),
}


def _term(flow):
    """The flow's field with its Gauss-Newton linearisation, as `flows.solve` hands them to its solvers."""
    return flows.LinearisableTerm(lambda t, y, args: flow.vector_field(t, y), lambda t, y, args: flow.gauss_newton(y))


def _dense_M(flow, state):
    """M = A o phi'(theta) as a dense m x p matrix, by forward-mode autodiff (the independent reference)."""
    point, unravel = ravel_pytree(state)
    return jax.jacfwd(lambda x: flow.problem.measure(flow.product(unravel(x))))(point), point, unravel


@pytest.mark.parametrize("name", FLOWS)
def test_kernel_and_solve_match_dense_gauss_newton(name):
    # kernel_matrix (the completion ones by their sandwich/gather form) is M M^T, and GaussNewton.solve
    # inverts I + h M^T M: residuals at round-off, relative to the size of the terms.
    flow = FLOWS[name]()
    state = flow.init(scale=0.7, kind="gaussian", seed=3)
    M, point, unravel = _dense_M(flow, state)
    theta = flow.gauss_newton(state).kernel()
    np.testing.assert_allclose(theta, M @ M.T, rtol=1e-12, atol=1e-12 * np.abs(M @ M.T).max())
    # The lineax operator is J = M, and its transpose (by JAX's linear transposition) is M^T.
    operator = flow.gauss_newton(state).operator()
    w = jnp.cos(jnp.arange(M.shape[0], dtype=jnp.float64))
    np.testing.assert_allclose(ravel_pytree(operator.transpose().mv(w))[0], M.T @ w, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(operator.mv(unravel(point)), M @ point, rtol=1e-12, atol=1e-12)
    terms = _term(flow)
    linear = flows.Woodbury().linearise(terms, 0.0, state, None, jnp.inf)
    b = jnp.sin(jnp.arange(point.size, dtype=jnp.float64))
    for h in (1e-3, 0.4, 1e4):
        x = linear.solve(h, b, unravel, terms, None)
        residual = x + h * M.T @ (M @ x) - b
        assert jnp.linalg.norm(residual) <= 1e-9 * (jnp.linalg.norm(b) + h * jnp.linalg.norm(M.T @ (M @ x)))


@pytest.mark.parametrize("tolerance", [1e-6, 1e-10])
@pytest.mark.parametrize("name", ["symmetric-sensing", "deep-completion"])
def test_matrix_free_solve_matches_dense_gauss_newton(name, tolerance):
    # CG stops once its residual is below tolerance ||b||; since I + h M^T M >= I, an error is at most its
    # residual, so ||x_cg - x_dense|| <= ||r_cg|| + ||r_dense||: within tolerance ||b|| plus the dense solve's
    # round-off. The residuals are recomputed here from the dense M (lineax updates its own by recurrence). The
    # bound is relative to b at every scale of b (an absolute tolerance would be loose for a small b and out of
    # reach for a large one).
    flow = FLOWS[name]()
    state = flow.init(scale=0.7, kind="gaussian", seed=3)
    M, point, unravel = _dense_M(flow, state)
    terms = _term(flow)
    dense = flows.Woodbury().linearise(terms, 0.0, state, None, 1.0)
    free = flows.ConjugateGradient(tolerance=tolerance).linearise(terms, 0.0, state, None, 1.0)
    solve = eqx.filter_jit(lambda linear, h, b: linear.solve(h, b, unravel, terms, None))
    for scale in (1e-6, 1.0, 1e6):
        b = scale * jnp.sin(jnp.arange(point.size, dtype=jnp.float64))
        for h in (1e-3, 0.4, 1e4):
            x, x_dense = solve(free, h, b), solve(dense, h, b)
            residual, residual_dense = (jnp.linalg.norm(y + h * M.T @ (M @ y) - b) for y in (x, x_dense))
            assert residual <= 1.01 * tolerance * jnp.linalg.norm(b), (scale, h, residual)
            assert jnp.linalg.norm(x - x_dense) <= residual + residual_dense, (scale, h)


def test_matrix_free_solve_past_its_iteration_budget_is_nan():
    # A failed solve returns NaN, which the step-size controller rejects (the step shrinks), never a wrong value.
    flow = FLOWS["deep-completion"]()
    state = flow.init(scale=0.7, kind="gaussian", seed=3)
    point, unravel = ravel_pytree(state)
    b = jnp.sin(jnp.arange(point.size, dtype=jnp.float64))
    terms = _term(flow)
    linear = flows.ConjugateGradient(max_steps=2).linearise(terms, 0.0, state, None, 1.0)
    assert jnp.isnan(linear.solve(1e4, b, unravel, terms, None)).all()


def test_order_holds_with_a_frozen_jacobian():
    # Fixed steps dt = T/4, T/8 on a short non-stiff stretch: the error falls like dt^columns, also when
    # the Gauss-Newton matrix is never re-linearised (defect = refresh = growth = inf): the W-method property.
    columns = 4
    flow = flows.Flow(_sensing(), flows.Symmetric())
    state0 = flow.init(scale=0.3, kind="gaussian", seed=1)
    T = 0.02
    exact = flows.solve(flow, state0, t1=T, ts=[T], rtol=1e-13, atol=1e-15).W[-1]
    for defect, refresh, growth in ((0.3, 1e-3, 2.0), (float("inf"), float("inf"), float("inf"))):
        errors = []
        for n in (4, 8):
            traj = flows.solve(
                flow,
                state0,
                t1=T,
                ts=[T],
                stepsize_controller=diffrax.ConstantStepSize(),
                dt0=T / n,
                solver=flows.LinearlyImplicitExtrapolation(
                    columns=columns, defect=defect, refresh=refresh, growth=growth
                ),
            )
            errors.append(np.linalg.norm(traj.W[-1] - exact) / np.linalg.norm(exact))
        assert np.log2(errors[0] / errors[1]) > columns - 0.4, (defect, refresh, growth, errors)


def test_a_linear_flow_is_linearised_once_and_a_curved_one_as_its_matrix_drifts():
    # The direct flow is linear with F' = -J^* J exactly: the Gauss-Newton matrix (or the exact Jacobian, through
    # KrylovJacobianSolve.apply) predicts the field's change along every step (defect at round-off), so one
    # linearisation serves the whole run while its steps grow; re-linearising on every doubled step instead takes
    # one per doubling. On the deep flow, where the matrix drifts along the run, the default threshold re-linearises
    # some steps and not all, and a threshold of 1e-12 after every accepted step.
    problem = _sensing()
    flow = flows.Flow(problem, flows.Direct())
    options = dict(t1=1e4, ts=np.array([0.0]), stop_loss=1e-12)
    state0 = flow.init(scale=0.3, kind="gaussian", seed=1)
    lazy = flows.solve(flow, state0, solver=flows.LinearlyImplicitExtrapolation(), **options)
    assert lazy.stats["linearisations"] == 1 and lazy.loss[-1] <= 1e-12, lazy.stats
    exact = flows.LinearlyImplicitExtrapolation(linear_solver=flows.KrylovJacobian())
    jacobian = flows.solve(flow, state0, solver=exact, **options)
    assert jacobian.stats["linearisations"] == 1 and jacobian.loss[-1] <= 1e-12, jacobian.stats
    doubling = flows.LinearlyImplicitExtrapolation(defect=np.inf, growth=2.0)
    regrown = flows.solve(flow, state0, solver=doubling, **options)
    assert regrown.stats["linearisations"] > 5, regrown.stats
    deep = flows.Flow(problem, flows.Deep(depth=3))
    deep0 = deep.init(scale=0.3, kind="gaussian", seed=1)
    default = flows.solve(deep, deep0, solver=flows.LinearlyImplicitExtrapolation(), **options)
    assert 1 < default.stats["linearisations"] < default.stats["num_accepted_steps"], default.stats
    eager = flows.solve(
        deep, deep0, solver=flows.LinearlyImplicitExtrapolation(defect=1e-12), t1=5.0, ts=np.array([0.0])
    )
    assert eager.stats["linearisations"] == eager.stats["num_accepted_steps"], eager.stats


def test_direct_flow_matches_closed_form():
    # The direct flow is linear and its Gauss-Newton matrix is its exact Jacobian; rtol 1e-8 per step
    # over a run whose residual decays: W within 1e-6 (relative to ||W||) of the closed form everywhere.
    problem = _sensing()
    flow = flows.Flow(problem, flows.Direct())
    W0 = flow.init(scale=0.1)
    ts = flows.default_ts(50.0, num=30)
    traj = flows.solve(flow, W0, t1=50.0, ts=ts, solver=flows.LinearlyImplicitExtrapolation())
    exact = np.asarray(direct_flow(problem, W0, ts))
    scale = np.linalg.norm(exact, axis=(1, 2))
    assert np.max(np.linalg.norm(traj.W - exact, axis=(1, 2)) / scale) < 1e-6


@pytest.mark.parametrize(
    "solver",
    [
        flows.LinearlyImplicitExtrapolation(),
        flows.Tsit5ThenExtrapolation(),
        flows.Tsit5ThenExtrapolation(
            stiff_solver=flows.LinearlyImplicitExtrapolation(linear_solver=flows.ConjugateGradient())
        ),
    ],
    ids=["extrapolation", "switching", "switching-matrix-free"],
)
def test_symmetric_tail_matches_explicit_and_is_stiff(solver):
    # Into the stiff tail (loss < 1e-10): the states of Tsit5 at rtol 1e-11 (an explicit method, its
    # steps bounded by stability there) at every saved time, to 1e-6, in far fewer steps.
    flow = flows.Flow(_sensing(), flows.Symmetric())
    state0 = flow.init(scale=1e-2)
    fast = flows.solve(flow, state0, t1=1e5, stop_loss=1e-10, solver=solver, ts=flows.default_ts(1e5, num=40))
    exact = flows.solve(flow, state0, t1=fast.ts[-1], ts=fast.ts, rtol=1e-11, atol=1e-13)
    assert fast.loss[-1] < 1e-10
    error = np.linalg.norm(fast.W - exact.W, axis=(1, 2)) / np.linalg.norm(exact.W, axis=(1, 2)).max()
    assert error.max() < 1e-6
    assert fast.stats["num_steps"] * 5 < exact.stats["num_steps"]


@pytest.mark.parametrize("name", ["factored", "deep"])
def test_conserved_quantities(name):
    # U^T U - V^T V and W_{j+1}^T W_{j+1} - W_j W_j^T are constants of the exact flow; the linearly
    # implicit steps do not conserve them exactly, but to the solver's tolerance (rtol 1e-8, drift < 1e-6),
    # through the switch from Tsit5 into the tail.
    flow, state0 = _completion_flow(name)
    traj = flows.solve(
        flow, state0, t1=1e8, ts=flows.default_ts(1e8, 30), stop_loss=1e-10, solver=flows.Tsit5ThenExtrapolation()
    )
    assert traj.stats["switched"], traj.stats  # the drift below includes the extrapolation's steps
    for name, drift in traj.conserved_drift().items():
        assert drift.max() < 1e-6, name


class _Shifted(flows.AbstractFlow):
    problem: flows.AbstractProblem

    def init(self, scale=1e-3, kind="identity", seed=0):
        return jnp.zeros(self.problem.shape)

    def product(self, state):
        return state

    def vector_field(self, t, state):
        return -self.problem.grad(state)


@pytest.mark.parametrize(
    "flow",
    [
        _Shifted(_sensing()),  # no parameterization to linearise through
        flows.Flow(_sensing(), flows.Direct(), dynamics=flows.Adam()),  # not -grad: Gauss-Newton does not linearise it
        flows.Flow(_sensing(), flows.Direct(), penalty=flows.Nuclear(), strength=1.0),  # curvature beyond Gauss-Newton
    ],
    ids=["abstract-flow", "adam", "penalized"],
)
def test_rejects_a_flow_it_cannot_linearise(flow):
    state0 = flow.init(scale=0.1)
    with pytest.raises(ValueError, match="linearise a gradient flow of the data loss"):
        flows.solve(flow, state0, t1=1.0, solver=flows.LinearlyImplicitExtrapolation())
    assert isinstance(flows.default_solver(flow, stop_loss=1e-10), diffrax.Tsit5)


def test_default_solver_is_the_stiff_switch_for_plain_flows_with_or_without_a_stop():
    flow = flows.Flow(_sensing(), flows.Symmetric())
    for stop_loss in (1e-10, None):
        assert isinstance(flows.default_solver(flow, stop_loss=stop_loss), flows.Tsit5ThenExtrapolation)
    assert isinstance(flows.default_solver(flow, stop_loss=1e-10).stiff_solver.linear_solver, flows.Woodbury)
    # Under vmap the extrapolation throughout into a stopped tail; Tsit5 to a fixed t1, which may never turn stiff.
    assert isinstance(flows.default_solver(flow, stop_loss=1e-10, batched=True), flows.LinearlyImplicitExtrapolation)
    assert isinstance(flows.default_solver(flow, stop_loss=None, batched=True), diffrax.Tsit5)
    # Beyond STIFF_MAX_MEASUREMENTS the matrix-free NDF (benchmarks/README.md, vs_cvode.py); Tsit5 under vmap.
    many = flows.Flow(flows.completion(n=40, m=flows._solve.STIFF_MAX_MEASUREMENTS + 1, rank=1), flows.Symmetric())
    for stop_loss in (1e-10, None):
        assert isinstance(flows.default_solver(many, stop_loss=stop_loss), flows.Tsit5ThenNDF)
        assert isinstance(flows.default_solver(many, stop_loss=stop_loss, batched=True), diffrax.Tsit5)
    traj = flows.solve(flow, flow.init(scale=1e-2), t1=1e5, stop_loss=1e-10)
    assert traj.config["solver"] == "Tsit5ThenExtrapolation" and traj.loss[-1] < 1e-10


@pytest.mark.parametrize("stop_loss", [None, 1e-10])
def test_default_solver_takes_the_chebyshev_switch_for_diagonally_preconditioned_flows(stop_loss):
    # Stiff wherever a gradient entry is small, with real stiff eigenvalues (flows.AbstractDynamics.preconditioned):
    # the sign and RMSProp flows; not the Adam and momentum flows, whose momentum makes them oscillate.
    for dynamics in (flows.Sign(eps=1e-3), flows.RMSProp(eps=1e-3)):
        flow = flows.Flow(_sensing(), flows.Direct(), dynamics=dynamics)
        assert flow.preconditioned
        assert isinstance(flows.default_solver(flow, stop_loss), flows.Tsit5ThenChebyshev)
        assert isinstance(flows.default_solver(flow, stop_loss, batched=True), diffrax.Tsit5)
    for dynamics in (flows.Adam(), flows.Momentum()):
        flow = flows.Flow(_sensing(), flows.Direct(), dynamics=dynamics)
        assert not flow.preconditioned and isinstance(flows.default_solver(flow, stop_loss), diffrax.Tsit5)


def _completion_flow(name):
    """Runs into the tail where Tsit5 alone is held by stability: W = U U^T, U V^T and a depth-3 product."""
    if name == "symmetric":
        flow = flows.Flow(flows.completion(n=6, m=20, rank=1, seed=0), flows.Symmetric())
        return flow, flow.init(scale=0.3, kind="gaussian", seed=1)
    problem = flows.completion(n=6, m=20, rank=1 if name == "factored" else 2, seed=0, symmetric=False)
    if name == "factored":
        flow = flows.Flow(problem, flows.Factored())
        return flow, flow.init(scale=1e-3, kind="identity")
    flow = flows.Flow(problem, flows.Deep(depth=3))
    return flow, flow.init(scale=1e-2, kind="gaussian", seed=1)


@pytest.mark.parametrize("name", ["symmetric", "factored", "deep"])
def test_the_default_solver_switches_for_every_state_layout(name):
    # States of several arrays (U, V) and (W1, W2, W3) lay their Runge-Kutta stages out array by array; the
    # stiffness estimate must read them stage by stage (it never fired for them before: Deep took 91336 steps,
    # as many as Tsit5 alone; measured now 249 against Tsit5's 2201).
    flow, state0 = _completion_flow(name)
    options = dict(t1=1e8, ts=np.array([0.0]), stop_loss=1e-10)
    default = flows.solve(flow, state0, **options)
    assert default.stats["switched"] and 0 < default.stats["t_switch"] < default.ts[-1], default.stats
    assert default.stats["linearisations"] >= 1
    explicit = flows.solve(flow, state0, solver=diffrax.Tsit5(), **options)
    assert default.stats["num_steps"] < explicit.stats["num_steps"] / 3, (default.stats, explicit.stats)


def test_a_run_to_a_fixed_time_in_the_tail_switches_and_ends_where_the_flow_does():
    # No stop: the default still switches once stiff, in a sixth of Tsit5's steps here (measured 242 against 1415),
    # and ends within 100 rtol of a tight Dopri8 solve at t1.
    flow, state0 = _completion_flow("factored")
    options = dict(t1=3000.0, ts=np.array([0.0]))
    default = flows.solve(flow, state0, **options)
    assert default.config["solver"] == "Tsit5ThenExtrapolation" and default.stats["switched"], default.stats
    explicit = flows.solve(flow, state0, solver=diffrax.Tsit5(), **options)
    assert default.stats["num_steps"] < explicit.stats["num_steps"] / 3, (default.stats, explicit.stats)
    exact = flows.solve(flow, state0, solver=diffrax.Dopri8(), rtol=1e-13, atol=1e-15, max_steps=10**6, **options)
    assert default.ts[-1] == explicit.ts[-1] == exact.ts[-1] == 3000.0
    scale = np.linalg.norm(exact.W[-1])
    assert np.linalg.norm(default.W[-1] - exact.W[-1]) / scale < 100 * 1e-8


def test_the_horizon_counts_the_time_left_to_t1():
    # Without a stop the time left is t1 - t: a run that turns stiff (at t = 244 here, horizon 0) with fewer than
    # `horizon` of Tsit5's steps left before t1 stays with Tsit5, one with more switches where horizon 0 does; both
    # end at the same W.
    flow, state0 = _completion_flow("factored")
    at = flows.solve(flow, state0, t1=1e4, ts=np.array([0.0]), solver=flows.Tsit5ThenExtrapolation(horizon=0.0))
    t_switch = at.stats["t_switch"]
    for factor, switches in ((1.3, False), (4.0, True)):
        options = dict(t1=factor * t_switch, ts=np.array([0.0]))
        eager = flows.solve(flow, state0, solver=flows.Tsit5ThenExtrapolation(horizon=0.0), **options)
        default = flows.solve(flow, state0, solver=flows.Tsit5ThenExtrapolation(), **options)
        assert eager.stats["switched"] and eager.stats["t_switch"] == t_switch
        assert default.stats["switched"] == switches, (factor, default.stats)
        scale = np.linalg.norm(eager.W[-1])
        assert np.linalg.norm(default.W[-1] - eager.W[-1]) / scale < 100 * 1e-8


@pytest.mark.parametrize("patience", [1, 2])
def test_the_switch_is_made_on_the_step_that_brings_the_count_to_patience(patience):
    # Threshold 0: every step counts as stiff. From a first step dt0 = 1e-6 (accepted on this smooth start) the
    # switch with patience 1 switches at its end, t = 1e-6; with patience 2 at the end of a later step.
    flow, state0 = _completion_flow("factored")
    solver = flows.Tsit5ThenExtrapolation(threshold=0.0, patience=patience, horizon=0.0)
    traj = flows.solve(flow, state0, t1=1.0, ts=np.array([0.0]), solver=solver, dt0=1e-6)
    assert traj.stats["switched"]
    if patience == 1:
        assert traj.stats["t_switch"] == 1e-6
    else:
        assert traj.stats["t_switch"] > 1e-6


def test_the_stiffness_count_survives_short_steps():
    # Steps held by stability oscillate about Tsit5's limit, and each step cut short (landed on a save time, or the
    # retry after a rejection) has h rho below the threshold. With a save time every 12.5 time units this run (which
    # switches at t = 244 when only its end is saved) has a step cut short every few steps: a count cleared by every
    # such step never reaches `patience` (measured: 1016 steps to the stop, never switched); one cleared only by
    # `reset` such steps in a row switches at t = 291 (387 steps). Later than the run that saves nothing between,
    # since two steps reach each save time and where those are halved (`flows.LandOnTimes`) neither is above the
    # threshold, but within a quarter of its time.
    flow, state0 = _completion_flow("factored")
    options = dict(t1=1e8, stop_loss=1e-10)
    dense_ts = np.arange(0.0, 3000.0, 12.5)
    alone = flows.solve(flow, state0, ts=np.array([0.0]), solver=flows.Tsit5ThenExtrapolation(horizon=0.0), **options)
    saved = flows.solve(flow, state0, ts=dense_ts, solver=flows.Tsit5ThenExtrapolation(horizon=0.0), **options)
    assert alone.stats["switched"] and saved.stats["switched"], saved.stats
    assert abs(saved.stats["t_switch"] - alone.stats["t_switch"]) < 0.25 * alone.stats["t_switch"], saved.stats
    assert saved.stats["num_steps"] < 2 * alone.stats["num_steps"], (saved.stats, alone.stats)
    cleared = flows.solve(
        flow, state0, ts=dense_ts, solver=flows.Tsit5ThenExtrapolation(horizon=0.0, reset=1), **options
    )
    assert not cleared.stats["switched"] and cleared.stats["num_steps"] > 2 * saved.stats["num_steps"], cleared.stats


def test_the_horizon_is_judged_on_a_step_above_the_threshold():
    # The horizon compares the time left with `horizon` steps of the length just taken. Judged on a step cut short by
    # a save time (below the threshold, while the count held back by the horizon stands), it passes for any estimate:
    # with a save time every 12.5 that run switched at t = 162.5, a save time, where the run that saves nothing
    # between switches at t = 261; judged only on steps above the threshold it switches within a few steps of that.
    flow, state0 = _completion_flow("factored")
    options = dict(t1=1e8, stop_loss=1e-10, rtol=1e-7, solver=flows.Tsit5ThenExtrapolation())
    alone = flows.solve(flow, state0, ts=np.array([0.0]), **options)
    saved = flows.solve(flow, state0, ts=np.arange(0.0, 3000.0, 12.5), **options)
    assert alone.stats["switched"] and saved.stats["switched"], saved.stats
    assert abs(saved.stats["t_switch"] - alone.stats["t_switch"]) < 0.1 * alone.stats["t_switch"], saved.stats


@pytest.mark.parametrize("name", ["factored", "deep"])
def test_the_slope_handed_over_is_the_vector_field_at_the_step_end(name):
    # After an explicit step the switching solver holds f(y1) for the extrapolation to start from; with the
    # stages laid out wrongly that slope was a scramble of several arrays' stages (relative error ~1).
    flow, state0 = _completion_flow(name)
    solver = flows.Tsit5ThenExtrapolation()
    terms = flows.LinearisableTerm(lambda t, y, args: flow.vector_field(t, y), lambda t, y, args: flow.gauss_newton(y))
    args = None
    state = solver.init(terms, 0.0, 0.1, state0, args)
    y1, _, _, state, _ = solver.step(terms, jnp.asarray(0.0), jnp.asarray(0.1), state0, args, state, False)
    handed = state[-1][0]
    expected = ravel_pytree(flow.vector_field(0.1, y1))[0]
    np.testing.assert_allclose(handed, expected, rtol=1e-12, atol=1e-12 * np.abs(expected).max())


@pytest.mark.parametrize("name", ["factored", "deep"])
def test_the_switch_takes_tsit5s_step_and_reads_its_sixth_stage(name):
    # The switch's explicit step is Tsit5's written out stage by stage: the solution, the error estimate and the
    # stages agree with Diffrax's Tsit5 to rounding (their sums run in another order; the stages' combinations have
    # coefficients up to ~10, so a few ulps of the largest term). The field is made time-dependent, (1 + t) F(y), so
    # a stage evaluated at the wrong time shows. The error estimate cancels to ~1e-13 of the stages, so its tolerance
    # is the stages' rounding carried through sum |e_j| |k_j|, not a fraction of its own size. The stage input y6 it
    # returns is the one whose slope is stage 6, which the stiffness test differences against y7 = y1.
    flow, state0 = _completion_flow(name)

    def field(t, y):
        return jax.tree.map(lambda f: (1.0 + t) * f, flow.vector_field(t, y))

    terms = diffrax.ODETerm(lambda t, y, args: field(t, y))
    t0, t1 = jnp.asarray(0.0), jnp.asarray(0.3)
    f0 = terms.vf(t0, state0, None)
    y1, error, k, f1, y6 = flows._stiff.tsit5_step(terms, t0, t1, state0, None, f0)
    tsit5 = diffrax.Tsit5()
    expected_y1, expected_error, dense, _, _ = tsit5.step(
        terms, t0, t1, state0, None, tsit5.init(terms, t0, t1, state0, None), False
    )

    def close(a, b, scale=None):
        a, b = ravel_pytree(a)[0], ravel_pytree(b)[0]
        scale = np.abs(b).max() if scale is None else scale
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-13 * scale)

    stages = ravel_pytree(dense["k"])[0]
    close(y1, expected_y1)
    close(error, expected_error, scale=np.abs(stages).max() * np.abs(diffrax.Tsit5.tableau.b_error).sum())
    close(jax.tree.map(lambda *stages: jnp.stack(stages), *k), dense["k"])
    close(f1, field(t1, y1))
    a6 = diffrax.Tsit5.tableau.a_lower[4]
    close(y6, jax.tree.map(lambda y, ks: y + jnp.tensordot(a6, ks[: a6.size], axes=1), state0, dense["k"]))
    close(k[5], jax.tree.map(lambda f: (t1 - t0) * f, field(t1, y6)))


def test_save_times_are_landed_on_whatever_the_controller():
    # A user's PID controller without step_ts: the stiff solvers' steps still land on the save times (their
    # dense output is only cubic: 1.3e-3 off at the saved times before). Error <= 100 rtol against a tight run.
    flow = flows.Flow(_sensing(), flows.Symmetric())
    state0 = flow.init(scale=0.3, kind="gaussian", seed=1)
    ts = np.linspace(0.0, 20.0, 9)
    reference = flows.solve(flow, state0, t1=20.0, ts=ts, rtol=1e-12, solver=flows.solver_by_name("dopri8"))
    for solver in (flows.LinearlyImplicitExtrapolation(), flows.Tsit5ThenExtrapolation()):
        traj = flows.solve(
            flow,
            state0,
            t1=20.0,
            ts=ts,
            solver=solver,
            stepsize_controller=diffrax.PIDController(rtol=1e-8, atol=1e-10),
        )
        assert traj.stats["saved_times"] == "landed"
        error = np.linalg.norm(traj.W - reference.W, axis=(1, 2)) / np.linalg.norm(reference.W, axis=(1, 2))
        assert error.max() <= 100 * 1e-8, (type(solver).__name__, error.max())
    with pytest.raises(ValueError, match="adaptive step-size controller, or fixed steps"):
        flows.solve(
            flow,
            state0,
            t1=1.0,
            ts=[0.0, 0.25, 1.0],
            solver=flows.LinearlyImplicitExtrapolation(),
            stepsize_controller=diffrax.ConstantStepSize(),
            dt0=0.1,
        )
    fixed = flows.solve(
        flow,
        state0,
        t1=1.0,
        ts=[0.0, 0.5, 1.0],
        solver=flows.LinearlyImplicitExtrapolation(),
        stepsize_controller=diffrax.ConstantStepSize(),
        dt0=0.1,
    )
    assert fixed.stats["saved_times"] == "landed"


def test_a_drifting_conserved_quantity_is_reported_and_warned():
    flow = flows.Flow(flows.completion(n=6, m=15, rank=1, seed=0, symmetric=False), flows.Factored())
    state0 = flow.init(scale=0.5, kind="gaussian", seed=0)
    faithful = flows.solve(flow, state0, t1=5.0, rtol=1e-10)
    drift = faithful.faithfulness()["conserved_drift"]["U^T U - V^T V"]
    assert drift <= 100 * 1e-10 and faithful.stats["conserved_drift"]["U^T U - V^T V"] == drift
    # Fixed Euler steps conserve U^T U - V^T V only to O(h): the run says so. (Saved at the ends only, which are
    # steps: no values come from Euler's dense output, which would be warned about too.)
    with pytest.warns(flows.FaithfulnessWarning, match="drifted by more than 100 x rtol"):
        loose = flows.solve(
            flow,
            state0,
            t1=5.0,
            ts=np.array([0.0, 5.0]),
            solver=diffrax.Euler(),
            stepsize_controller=diffrax.ConstantStepSize(),
            dt0=0.05,
        )
    assert loose.faithfulness()["conserved_drift"]["U^T U - V^T V"] > 1e-6


def test_time_to_stop_is_exact_where_the_loss_decays_exponentially():
    # One measurement, W itself the state: the residual obeys r' = -|A|^2 r, so L(t) = L(0) exp(-2 |A|^2 t) and
    # the time to loss s is log(L / s) / (2 |A|^2) exactly; the estimate (the current rate of decay extrapolated)
    # must give it to round-off, and the located stop of a tight solve must land there.
    from flows._flow import FlowArgs
    from flows._solve import _time_to_stop

    problem = flows.sensing(n=4, m=1, rank=1, seed=2, symmetric=False)
    flow = flows.Flow(problem, flows.Direct())
    state0 = flow.init(scale=0.5, kind="gaussian", seed=0)
    A = jax.grad(lambda W: problem.measure(W)[0])(jnp.zeros((4, 4)))
    stop = 1e-9
    exact = float(jnp.log(flow.loss(state0) / stop) / (2 * jnp.vdot(A, A)))
    estimate = float(_time_to_stop(0.0, state0, flow.vector_field(0.0, state0), FlowArgs(flow, jnp.asarray(stop))))
    assert estimate == pytest.approx(exact, rel=1e-12)
    traj = flows.solve(flow, state0, t1=10 * exact, ts=np.array([0.0]), stop_loss=stop, rtol=1e-10, atol=1e-12)
    assert traj.ts[-1] == pytest.approx(exact, rel=1e-6)
    field = flow.vector_field(0.0, state0)
    assert float(_time_to_stop(0.0, state0, field, FlowArgs(flow, None))) == np.inf
    # The run's end comes first where t1 is nearer: the time left is t1 - t, with a stop or without.
    assert float(_time_to_stop(2.0, state0, field, FlowArgs(flow, None, jnp.asarray(7.0)))) == 5.0
    half = jnp.asarray(exact / 2)
    assert float(_time_to_stop(0.0, state0, field, FlowArgs(flow, jnp.asarray(stop), half))) == exact / 2
    assert float(_time_to_stop(0.0, state0, field, FlowArgs(flow, jnp.asarray(stop), 2 * half))) == pytest.approx(
        exact, rel=1e-12
    )


def test_the_switch_waits_for_a_remainder_worth_its_linearisations():
    # horizon: the switch is made only when the estimated time to the stop is more than `horizon` of Tsit5's
    # current steps: the default (100) switches later than horizon 0, and asked for more than the whole run (1e3
    # steps here) it never switches, and ends at the same located stop as the switching run, the final states
    # within 100 rtol of each other.
    flow, state0 = _completion_flow("factored")
    options = dict(t1=1e8, ts=np.array([0.0]), stop_loss=1e-10, rtol=1e-8, atol=1e-10)
    switching = flows.solve(flow, state0, solver=flows.Tsit5ThenExtrapolation(horizon=0.0), **options)
    assert switching.stats["switched"]
    default = flows.solve(flow, state0, solver=flows.Tsit5ThenExtrapolation(), **options)
    assert default.stats["switched"] and default.stats["t_switch"] > switching.stats["t_switch"], default.stats
    waiting = flows.solve(flow, state0, solver=flows.Tsit5ThenExtrapolation(horizon=1e3), **options)
    assert not waiting.stats["switched"] and waiting.stats["linearisations"] == 0
    assert waiting.loss[-1] <= 1e-10 and waiting.ts[-1] == pytest.approx(switching.ts[-1], rel=1e-6)
    scale = np.linalg.norm(switching.W[-1])
    assert np.linalg.norm(waiting.W[-1] - switching.W[-1]) / scale < 100 * 1e-8
