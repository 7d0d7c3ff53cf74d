"""Penalized flows, the Adam family and its limits, the modified flow: properties of the ODEs themselves."""

import json

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flows
from gradflow import main

PROBLEM = flows.sensing(n=5, m=12, rank=2, seed=0)
SYMMETRIC = flows.Flow(PROBLEM, flows.Symmetric())
U0 = SYMMETRIC.init(scale=0.5, kind="gaussian", seed=1)
PENALTIES = [flows.Nuclear(eps=1e-2), flows.Ratio(eps=1e-2, delta=1e-2), flows.Frobenius()]
PARAMETERIZATIONS = [
    flows.Flow(PROBLEM, flows.Direct()),
    SYMMETRIC,
    flows.Flow(PROBLEM, flows.Factored()),
    flows.Flow(PROBLEM, flows.Deep(depth=3)),
]


def _params(flow, seed=2):
    return flow.init(scale=0.5, kind="gaussian", seed=seed)


def _max_diff(a, b):
    return max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def flow_of(parameterization=None, **options):
    return flows.Flow(PROBLEM, flows.Symmetric() if parameterization is None else parameterization, **options)


@eqx.filter_jit
def _field_and_autodiff_gradient(flow, state):
    """The flow's field, and -grad_theta of its objective by reverse-mode autodiff (an independent computation)."""
    return flow.vector_field(0.0, state), jax.tree.map(jnp.negative, jax.grad(flow.objective)(state))


def _scale(tree):
    return max(1.0, max(float(jnp.abs(x).max()) for x in jax.tree.leaves(tree)))


@pytest.mark.parametrize(
    "parameterization",
    [flows.Direct(), flows.Symmetric(), flows.Factored(), flows.Deep(depth=3)],
    ids=lambda p: type(p).__name__,
)
def test_penalized_field_is_gradient_flow_of_the_penalized_objective(parameterization):
    # Fails if a penalty's closed-form gradient or the fused pullback were wrong (e.g. the penalty gradient
    # pulled back twice, or added on theta instead of on W).
    state = _params(flow_of(parameterization))
    for penalty in PENALTIES + [flows.EachFactor(p) for p in PENALTIES]:
        flow = flow_of(parameterization, penalty=penalty, strength=0.3)
        field, autodiff = _field_and_autodiff_gradient(flow, state)
        assert _max_diff(field, autodiff) <= 1e-12 * _scale(field), penalty


def test_each_factor_penalty_penalises_the_factors_not_the_product():
    # Frobenius on each factor of the direct parameterization is the same as on W; on U V^T it is
    # (|U|^2 + |V|^2) / 2, which at a balanced point is the nuclear norm of W (not |W|^2 / 2).
    direct = flow_of(flows.Direct(), penalty=flows.EachFactor(flows.Frobenius()), strength=1.0)
    W = _params(direct)
    np.testing.assert_allclose(direct.objective(W), PROBLEM.loss(W) + 0.5 * jnp.vdot(W, W), rtol=1e-14)
    factored = flow_of(flows.Factored(), penalty=flows.EachFactor(flows.Frobenius()), strength=1.0)
    U, V = factored.init(scale=0.7, kind="balanced", seed=3)
    penalty = factored.objective((U, V)) - PROBLEM.loss(U @ V.T)
    np.testing.assert_allclose(penalty, np.linalg.svd(np.asarray(U @ V.T), compute_uv=False).sum(), rtol=1e-10)


@pytest.mark.parametrize(
    "parameterization, penalty",
    [(flows.Factored(), flows.Nuclear(eps=1e-2)), (flows.Deep(depth=3), flows.Ratio(eps=1e-2, delta=1e-2))],
    ids=["UV^T-nuclear", "deep3-ratio"],
)
def test_penalty_on_W_keeps_the_conserved_quantities(parameterization, penalty):
    flow = flow_of(parameterization, penalty=penalty, strength=0.5)
    state0 = _params(flow)
    traj = flows.solve(flow, state0, t1=2.0, ts=np.linspace(0, 2.0, 5), rtol=1e-10, atol=1e-12)
    assert traj.conserved, "the penalized flow reports its parameterization's conserved quantities"
    for name, drift in traj.conserved_drift().items():
        # Local errors of a few hundred steps at rtol = 1e-10, relative to the size of P and Q.
        assert drift.max() <= 1e-8, name
    # The penalty acts: the flow differs from the unpenalized one.
    plain = flows.solve(flow_of(parameterization), state0, t1=2.0, ts=np.linspace(0, 2.0, 5), rtol=1e-10, atol=1e-12)
    assert np.abs(plain.W[-1] - traj.W[-1]).max() > 1e-3
    # A penalty on the factors breaks the symmetry: no conserved quantities are claimed.
    assert flow_of(parameterization, penalty=flows.EachFactor(penalty), strength=0.5).conserved(state0) == {}


def test_bad_compositions_are_refused(unchecked_types):
    for make, message in [
        (lambda: flows.Flow(PROBLEM, flows.Symmetric(), penalty="ratio", strength=1e-2), "penalty must"),
        (lambda: flows.Flow(PROBLEM, flows.Symmetric(), penalty=flows.Ratio()), "needs its strength"),
        (lambda: flows.Flow(PROBLEM, flows.Symmetric(), strength=1.0), "no penalty"),
        (lambda: flows.Flow(PROBLEM, flows.Symmetric(), penalty=flows.Ratio(), strength=-1.0), "strength must"),
        (lambda: flows.Flow(PROBLEM, flows.Symmetric(), dynamics="adam"), "dynamics must"),
        (lambda: flows.Flow(PROBLEM, "deep"), "parameterization must"),
        (lambda: flows.Flow(flows.sensing(n=4, m=3, rank=1, symmetric=False, n2=5), flows.Symmetric()), "square"),
        (lambda: flows.EachFactor(flows.EachFactor(flows.Ratio())), "matrix penalty"),
        (lambda: flows.Adam(a=0.0), "a must"),
        (lambda: flows.Adam(eps=0.0), "eps must"),
        (lambda: flows.Modified(eta=-1), "eta must"),
        (lambda: flows.Deep(depth=0), "depth must"),
        (lambda: flows.Deep(depth=3, width=(2,)), "hidden widths"),
        (lambda: flows.Symmetric(width=0), "width must"),
        (
            lambda: flows.Flow.from_description(PROBLEM, {"parameterization": {"name": "spiral"}}),
            "unknown parameterization",
        ),
        (
            lambda: flows.Flow.from_description(PROBLEM, {"parameterization": {"name": "deep", "height": 2}}),
            "bad arguments",
        ),
    ]:
        with pytest.raises(ValueError, match=message):
            make()


def test_descriptions_round_trip_through_json():
    for flow in [
        flow_of(
            flows.Deep(depth=3, width=(4, 3)),
            penalty=flows.EachFactor(flows.Ratio()),
            strength=1e-2,
            dynamics=flows.Adam(a=10.0),
        ),
        flow_of(flows.Direct(), dynamics=flows.Modified(eta=0.1)),
        flow_of(dynamics=flows.Sign(eps=0.5)),
    ]:
        description = json.loads(json.dumps(flow.describe()))
        rebuilt = flows.Flow.from_description(PROBLEM, description)
        assert rebuilt.describe() == description
        state = _params(flow)
        assert _max_diff(rebuilt.vector_field(0.5, state), flow.vector_field(0.5, state)) == 0.0


@pytest.mark.parametrize(
    "dynamics",
    [flows.Adam(a=10, b=1, eps=1e-8), flows.RMSProp(b=1, eps=1e-8), flows.Momentum(a=10), flows.Sign(eps=1e-8)],
    ids=["adam", "rmsprop", "momentum", "sign"],
)
def test_bias_correction_at_t0_is_the_limit_not_nan(dynamics):
    """At t = 0 the moments are 0 and 1 - e^{-at} = 0; the field takes the limit mhat = g, vhat = g^2."""
    flow = flow_of(dynamics=dynamics)
    state = flow.init(scale=0.5, kind="gaussian", seed=1)
    g = SYMMETRIC.gradient(state["params"])
    field = flow.vector_field(jnp.asarray(0.0), state)
    expected = -g if isinstance(dynamics, flows.Momentum) else -g / (jnp.abs(g) + dynamics.eps)
    np.testing.assert_allclose(field["params"], expected, rtol=1e-14)
    # Just after 0 the state has moved by one Euler step and the field is continuous with the limit.
    t = 1e-9
    nudged = jax.tree.map(lambda x, dx: x + t * dx, state, field)
    np.testing.assert_allclose(flow.vector_field(jnp.asarray(t), nudged)["params"], expected, rtol=1e-6)


def test_solve_refuses_nonzero_initial_moments():
    """The bias correction's t = 0 limit assumes m(0) = v(0) = 0 (descend refuses the same)."""
    adam = flow_of(dynamics=flows.Adam(a=10.0, b=1.0))
    state0 = adam.init(scale=0.5, kind="gaussian", seed=1)
    with pytest.raises(ValueError, match="moments must be zero"):
        flows.solve(adam, {**state0, "v": state0["v"] + 1.0}, t1=1.0)


def test_adam_field_and_its_jacobian_are_finite_where_v_vanishes_or_dips_below_zero():
    """Coordinates with g = 0 keep v = 0 exactly, and Runge-Kutta stages can dip a tiny v below 0."""
    for dynamics in (flows.RMSProp(b=1.0, eps=1e-8), flows.Adam(a=10.0, b=1.0, eps=1e-8)):
        flow = flow_of(dynamics=dynamics)
        state = flow.init(scale=0.5, kind="gaussian", seed=1)
        state["v"] = state["v"].at[0].set(-1e-30).at[1].set(0.0)
        field = flow.vector_field(jnp.asarray(1.0), state)
        jacobian = jax.jacfwd(lambda s: flow.vector_field(jnp.asarray(1.0), s))(state)  # noqa: B023
        assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves((field, jacobian)))


def test_adam_with_tiny_eps_is_invariant_to_scaling_the_loss_and_gradient_flow_rescales_time():
    # A and y times 10 multiply L by exactly 100.
    scaled = flows.Problem.from_matrices(10 * np.asarray(PROBLEM.A), 10 * np.asarray(PROBLEM.y), truth=PROBLEM.truth)
    ts, tol = np.linspace(0, 2.0, 5), dict(rtol=1e-10, atol=1e-12)
    adam, adam_scaled = (
        flows.Flow(p, flows.Symmetric(), dynamics=flows.Adam(a=10.0, b=1.0, eps=1e-14)) for p in (PROBLEM, scaled)
    )
    state0 = adam.init(scale=0.5, kind="gaussian", seed=1)
    one, hundred = (
        flows.solve(adam, state0, t1=2.0, ts=ts, **tol),
        flows.solve(adam_scaled, state0, t1=2.0, ts=ts, **tol),
    )
    # Same ODE for theta up to eps / |g| ~ 1e-13; the two solves differ by their own local errors (~100 rtol).
    assert np.abs(one.states["params"] - hundred.states["params"]).max() <= 1e-8
    np.testing.assert_allclose(hundred.loss, 100 * one.loss, rtol=1e-7)
    gf, gf_scaled = flows.Flow(PROBLEM, flows.Symmetric()), flows.Flow(scaled, flows.Symmetric())
    one = flows.solve(gf, U0, t1=2.0, ts=ts, **tol)
    fast = flows.solve(gf_scaled, U0, t1=2.0 / 100, ts=ts / 100, **tol)
    assert np.abs(one.states - fast.states).max() <= 1e-8
    # ... and without the time change the two gradient flows are far apart.
    slow = flows.solve(gf_scaled, U0, t1=2.0, ts=ts, **tol)
    assert np.abs(one.states - slow.states).max() > 1e-2


def _slope(x, y) -> float:
    return float(np.polyfit(np.log(x), np.log(y), 1)[0])


TOL = dict(rtol=1e-10, atol=1e-12)


def test_sign_flow_is_the_large_rate_limit_of_adam():
    # The gap closes like 1/rate: the fitted slope is -1 (a rate^-0.66 convergence, or none, fails).
    eps, ts = 0.1, np.linspace(0, 0.2, 5)
    sign = flows.solve(flow_of(dynamics=flows.Sign(eps=eps)), {"params": U0}, t1=0.2, ts=ts, **TOL)
    rates = np.array([100.0, 300.0, 1000.0, 3000.0])
    errors = []
    for rate in rates:
        adam = flow_of(dynamics=flows.Adam(a=rate, b=rate, eps=eps))
        traj = flows.solve(adam, adam.init(scale=0.5, kind="gaussian", seed=1), t1=0.2, ts=ts, **TOL)
        errors.append(np.abs(traj.states["params"] - sign.states["params"]).max())
    assert -1.15 <= _slope(rates, errors) <= -0.85, errors


def test_the_default_sign_flow_reaches_its_minimiser_within_a_modest_budget():
    # Its stiffness where a gradient entry crosses zero grows like 1/eps: at the default eps a small run to
    # t = 10 takes 7,900 steps (Tsit5, then Runge-Kutta-Chebyshev); at 1e-8 100,000 steps reach t = 0.38.
    problem = flows.sensing(n=10, m=40, rank=2, seed=0)
    flow = flows.Flow(problem, flows.Symmetric(), dynamics=flows.Sign())
    traj = flows.solve(flow, flow.init(scale=1e-3), t1=10.0, ts=np.array([0.0, 10.0]), max_steps=30_000)
    assert traj.relative_error[-1] < 1e-3  # 3.9e-4 (0.4 eps; at eps = 1e-2, 2.9e-3)


def test_rmsprop_is_the_large_momentum_rate_limit_of_adam():
    # a -> infinity: mhat follows g at once; the gap closes like 1/a (slope -1).
    ts = np.linspace(0, 1.0, 5)
    rmsprop = flows.solve(
        flow_of(dynamics=flows.RMSProp(b=2.0, eps=1e-2)), {"params": U0, "v": 0 * U0}, t1=1.0, ts=ts, **TOL
    )
    rates = np.array([300.0, 1000.0, 3000.0, 10000.0])
    errors = []
    for a in rates:
        adam = flow_of(dynamics=flows.Adam(a=a, b=2.0, eps=1e-2))
        traj = flows.solve(adam, adam.init(scale=0.5, kind="gaussian", seed=1), t1=1.0, ts=ts, **TOL)
        errors.append(np.abs(traj.states["params"] - rmsprop.states["params"]).max())
    assert -1.15 <= _slope(rates, errors) <= -0.85, errors


def test_adam_with_large_eps_is_gradient_flow_in_slow_time():
    # theta_Adam(eps * T) -> theta_GF(T) with a gap O(1/eps), not momentum's flow (docstring of Adam).
    T, ts = 1.0, np.linspace(0, 1.0, 5)
    gradient = flows.solve(SYMMETRIC, U0, t1=T, ts=ts, **TOL)
    epsilons = np.array([1e2, 1e3, 1e4])
    errors = []
    for eps in epsilons:
        adam = flow_of(dynamics=flows.Adam(a=1.0, b=1.0, eps=eps))
        traj = flows.solve(adam, adam.init(scale=0.5, kind="gaussian", seed=1), t1=eps * T, ts=eps * ts, **TOL)
        errors.append(np.abs(traj.states["params"] - gradient.states).max())
    assert -1.15 <= _slope(epsilons, errors) <= -0.85, errors
    assert errors[-1] < 1e-3


@pytest.mark.parametrize(
    "parameterization, penalty",
    [(flows.Symmetric(), None), (flows.Deep(depth=3), flows.Ratio(1e-2, 1e-2))],
    ids=["symmetric", "penalized-deep3-ratio"],
)
def test_modified_field_is_gradient_flow_of_the_modified_objective(parameterization, penalty):
    """-(g + eta/2 H g) from a JVP equals reverse-over-reverse autodiff of f + eta/4 ||grad f||^2."""
    eta = 0.05
    strength = None if penalty is None else 0.3
    plain = flow_of(parameterization, penalty=penalty, strength=strength)
    flow = flow_of(parameterization, penalty=penalty, strength=strength, dynamics=flows.Modified(eta=eta))
    state = _params(plain)

    def total(s):
        g = jax.grad(plain.objective)(s)
        return plain.objective(s) + eta / 4 * sum(jnp.vdot(x, x) for x in jax.tree.leaves(g))

    field = flow.vector_field(0.0, state)
    autodiff = jax.tree.map(jnp.negative, jax.grad(total)(state))
    assert _max_diff(field, autodiff) <= 1e-11 * _scale(field)


def test_cli_runs_a_penalized_adam_flow(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(
        [
            "run",
            "--problem",
            "sensing",
            "--n",
            "5",
            "--m",
            "12",
            "--parameterization",
            "symmetric",
            "--scale",
            "0.3",
            "--penalty",
            "nuclear",
            "--strength",
            "1e-2",
            "--dynamics",
            "adam",
            "--a",
            "10",
            "--t1",
            "1",
            "--points",
            "5",
            "--quiet",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    traj = flows.Trajectory.load(out)
    assert set(traj.states) == {"params", "m", "v"}
    assert traj.config["flow"]["dynamics"]["name"] == "Adam" and traj.config["flow"]["penalty"]["name"] == "Nuclear"
    assert traj.loss[-1] < traj.loss[0]


def test_adam_measures_its_moments_by_what_they_move_in_its_field():
    # Adam.error_sizes: v against D^2, D = sqrt(v) + eps sqrt(c_b) = sqrt(c_b) (sqrt(vhat) + eps); m against
    # c_a (sqrt(vhat) + eps) (||F||_inf + a s_theta), where F = -mhat / (sqrt(vhat) + eps) is the field's own
    # parameter component (read here from `field`). Early (c_a, c_b far from 1) and with sqrt(vhat) ~ eps, where
    # a wrong power of c_b in either would show.
    dynamics = flows.Adam(a=10.0, b=1.0, eps=1e-3)
    t = 0.01
    c_a, c_b = 1 - np.exp(-10.0 * t), 1 - np.exp(-1.0 * t)
    theta = jnp.array([0.5, -2.0, 1.0])
    m = jnp.array([3e-4, -1e-4, 2e-5])
    v = c_b * jnp.array([1e-6, 4e-6, 1e-8])  # vhat = v / c_b, sqrt(vhat) 1e-3, 2e-3, 1e-4
    state = {"params": (theta,), "m": (m,), "v": (v,)}
    F = dynamics.field(t, state, (jnp.zeros(3),))["params"][0]
    magnitude = jax.tree.map(jnp.abs, state)
    sizes = jax.tree.map(lambda x: jnp.max(jnp.abs(x)), state)
    got = dynamics.error_sizes(t, magnitude, sizes)
    denominator = np.sqrt(np.asarray(v) / c_b) + 1e-3
    expected_m = c_a * denominator * (np.max(np.abs(F)) + 10.0 * 2.0)
    np.testing.assert_allclose(got["m"][0], expected_m, rtol=1e-12)
    np.testing.assert_allclose(got["v"][0], c_b * denominator**2, rtol=1e-12)
    np.testing.assert_array_equal(got["params"][0], sizes["params"][0])


def test_momentum_measures_its_moment_by_the_parameters_it_moves():
    # An error dm relaxes at rate a while it moves theta' = -m / c_a: it displaces theta by dm / (a c_a), so m is
    # measured against s_m + a c_a s_theta (Momentum.error_sizes). Early, c_a = 1 - exp(-a t) is far below 1.
    dynamics = flows.Momentum(a=10.0)
    t = 0.01
    c_a = 1 - np.exp(-10.0 * t)
    state = {"params": (jnp.array([0.5, -2.0]),), "m": (jnp.array([3e-4, -1e-4]),)}
    sizes = jax.tree.map(lambda x: jnp.max(jnp.abs(x)), state)
    got = dynamics.error_sizes(t, jax.tree.map(jnp.abs, state), sizes)
    np.testing.assert_allclose(got["m"][0], 3e-4 + 10.0 * c_a * 2.0, rtol=1e-12)
    np.testing.assert_array_equal(got["params"][0], sizes["params"][0])
