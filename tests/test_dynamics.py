"""Penalized flows, the Adam family and its limits, the modified flow: properties of the ODEs themselves."""

import json

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flows
from flows._cli import main

PROBLEM = flows.sensing(n=5, m=12, rank=2, seed=0)
SYMMETRIC = flows.Symmetric(PROBLEM)
U0 = SYMMETRIC.init(scale=0.5, kind="gaussian", seed=1)
PENALTIES = [flows.Nuclear(eps=1e-2), flows.Ratio(eps=1e-2, delta=1e-2), flows.Frobenius()]
PARAMETERIZATIONS = [flows.Direct(PROBLEM), SYMMETRIC, flows.Factored(PROBLEM), flows.Deep(PROBLEM, depth=3)]


def _params(flow, seed=2):
    return flow.init(scale=0.5, kind="gaussian", seed=seed)


def _max_diff(a, b):
    return max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@eqx.filter_jit
def _field_and_autodiff_gradient(flow, state):
    """The flow's field, and -grad_theta of its objective by reverse-mode autodiff through the product."""
    return flow.vector_field(0.0, state, None), jax.tree.map(
        jnp.negative, jax.grad(lambda s: flow.objective(flow.product(s)))(state))


@pytest.mark.parametrize("inner", PARAMETERIZATIONS, ids=lambda f: type(f).__name__)
def test_penalized_field_is_gradient_flow_of_the_penalized_objective(inner):
    state = _params(inner)
    for penalty in PENALTIES:
        flow = flows.Penalized(inner, penalty, strength=0.3)
        field, autodiff = _field_and_autodiff_gradient(flow, state)
        assert _max_diff(field, autodiff) <= 1e-12 * max(1.0, _max_diff(field, jax.tree.map(jnp.zeros_like, field)))
    # Penalties nest and add up.
    nested = flows.Penalized(flows.Penalized(inner, PENALTIES[0], 0.3), PENALTIES[1], 0.2)
    field, autodiff = _field_and_autodiff_gradient(nested, state)
    assert _max_diff(field, autodiff) <= 1e-12 * max(1.0, _max_diff(field, jax.tree.map(jnp.zeros_like, field)))


@pytest.mark.parametrize("inner, penalty", [(flows.Factored(PROBLEM), flows.Nuclear(eps=1e-2)),
                                            (flows.Deep(PROBLEM, depth=3), flows.Ratio(eps=1e-2, delta=1e-2))],
                         ids=["UV^T-nuclear", "deep3-ratio"])
def test_penalty_on_W_keeps_the_conserved_quantities(inner, penalty):
    flow = flows.Penalized(inner, penalty, strength=0.5)
    traj = flows.solve(flow, _params(inner), t1=2.0, ts=np.linspace(0, 2.0, 5), rtol=1e-10, atol=1e-12)
    assert traj.conserved, "the penalized flow reports its inner flow's conserved quantities"
    for name, drift in traj.conserved_drift().items():
        # Local errors of a few hundred steps at rtol = 1e-10, relative to the size of P and Q.
        assert drift.max() <= 1e-8, name
    # The penalty acts: the flow differs from the unpenalized one.
    plain = flows.solve(inner, _params(inner), t1=2.0, ts=np.linspace(0, 2.0, 5), rtol=1e-10, atol=1e-12)
    assert np.abs(plain.W[-1] - traj.W[-1]).max() > 1e-3


def test_nonsensical_wrapping_orders_are_refused():
    adam = flows.Adam(SYMMETRIC, a=10, b=1)
    modified = flows.Modified(SYMMETRIC, eta=1e-2)
    for make in (lambda: flows.Penalized(adam, flows.Ratio(), 1e-2), lambda: flows.Adam(adam),
                 lambda: flows.Adam(modified), lambda: flows.Modified(adam, eta=1e-2),
                 lambda: flows.RMSProp(flows.Sign(SYMMETRIC)), lambda: flows.Penalized(modified, flows.Nuclear(), 1.0)):
        with pytest.raises(ValueError, match="wraps a parameterization"):
            make()
    with pytest.raises(ValueError, match="penalty"):
        flows.Penalized(SYMMETRIC, "ratio", 1e-2)
    for make in (lambda: flows.Adam(SYMMETRIC, a=0.0), lambda: flows.Adam(SYMMETRIC, eps=0.0),
                 lambda: flows.Penalized(SYMMETRIC, flows.Ratio(), -1.0), lambda: flows.Penalized(SYMMETRIC, flows.Ratio(), None),
                 lambda: flows.Modified(SYMMETRIC, eta=-1)):
        with pytest.raises(ValueError, match="a must|eps must|strength must|eta must"):
            make()


@pytest.mark.parametrize("make", [lambda f: flows.Adam(f, a=10, b=1, eps=1e-8), lambda f: flows.RMSProp(f, b=1, eps=1e-8),
                                  lambda f: flows.Momentum(f, a=10), lambda f: flows.Sign(f, eps=1e-8)],
                         ids=["adam", "rmsprop", "momentum", "sign"])
def test_bias_correction_at_t0_is_the_limit_not_nan(make):
    """At t = 0 the moments are 0 and 1 - e^{-at} = 0; the field takes the limit mhat = g, vhat = g^2."""
    flow = make(SYMMETRIC)
    state = flow.init(scale=0.5, kind="gaussian", seed=1)
    g = SYMMETRIC.gradient(state["params"])
    field = flow.vector_field(jnp.asarray(0.0), state, None)
    expected = -g if isinstance(flow, flows.Momentum) else -g / (jnp.abs(g) + flow.eps)
    np.testing.assert_allclose(field["params"], expected, rtol=1e-14)
    # Just after 0 the state has moved by one Euler step and the field is continuous with the limit.
    t = 1e-9
    nudged = jax.tree.map(lambda x, dx: x + t * dx, state, field)
    np.testing.assert_allclose(flow.vector_field(jnp.asarray(t), nudged, None)["params"], expected, rtol=1e-6)


def test_solve_refuses_nonzero_initial_moments():
    """The bias correction's t = 0 limit assumes m(0) = v(0) = 0 (descend refuses the same)."""
    adam = flows.Adam(SYMMETRIC, a=10.0, b=1.0)
    state0 = adam.init(scale=0.5, kind="gaussian", seed=1)
    with pytest.raises(ValueError, match="moments must be zero"):
        flows.solve(adam, {**state0, "v": state0["v"] + 1.0}, t1=1.0)


def test_adam_field_and_its_jacobian_are_finite_where_v_vanishes_or_dips_below_zero():
    """Coordinates with g = 0 keep v = 0 exactly, and Runge-Kutta stages can dip a tiny v below 0."""
    for flow in (flows.RMSProp(SYMMETRIC, b=1.0, eps=1e-8), flows.Adam(SYMMETRIC, a=10.0, b=1.0, eps=1e-8)):
        state = flow.init(scale=0.5, kind="gaussian", seed=1)
        state["v"] = state["v"].at[0].set(-1e-30).at[1].set(0.0)
        field = flow.vector_field(jnp.asarray(1.0), state, None)
        jacobian = jax.jacfwd(lambda s: flow.vector_field(jnp.asarray(1.0), s, None))(state)  # noqa: B023
        assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves((field, jacobian)))


def test_adam_with_tiny_eps_is_invariant_to_scaling_the_loss_and_gradient_flow_rescales_time():
    # A and y times 10 multiply L by exactly 100.
    scaled = flows.Problem.from_matrices(10 * np.asarray(PROBLEM.A), 10 * np.asarray(PROBLEM.y), truth=PROBLEM.truth)
    ts, tol = np.linspace(0, 2.0, 5), dict(rtol=1e-10, atol=1e-12)
    adam, adam_scaled = (flows.Adam(flows.Symmetric(p), a=10.0, b=1.0, eps=1e-14) for p in (PROBLEM, scaled))
    state0 = adam.init(scale=0.5, kind="gaussian", seed=1)
    one, hundred = flows.solve(adam, state0, t1=2.0, ts=ts, **tol), flows.solve(adam_scaled, state0, t1=2.0, ts=ts, **tol)
    # Same ODE for theta up to eps / |g| ~ 1e-13; the two solves differ by their own local errors (~100 rtol).
    assert np.abs(one.states["params"] - hundred.states["params"]).max() <= 1e-8
    np.testing.assert_allclose(hundred.loss, 100 * one.loss, rtol=1e-7)
    gf, gf_scaled = flows.Symmetric(PROBLEM), flows.Symmetric(scaled)
    one = flows.solve(gf, U0, t1=2.0, ts=ts, **tol)
    fast = flows.solve(gf_scaled, U0, t1=2.0 / 100, ts=ts / 100, **tol)
    assert np.abs(one.states - fast.states).max() <= 1e-8
    # ... and without the time change the two gradient flows are far apart.
    slow = flows.solve(gf_scaled, U0, t1=2.0, ts=ts, **tol)
    assert np.abs(one.states - slow.states).max() > 1e-2


def test_sign_flow_is_the_large_rate_limit_of_adam():
    eps, ts = 0.1, np.linspace(0, 0.2, 5)
    tol = dict(rtol=1e-10, atol=1e-12)
    sign = flows.solve(flows.Sign(SYMMETRIC, eps=eps), {"params": U0}, t1=0.2, ts=ts, **tol)
    errors = []
    for rate in (30.0, 100.0, 300.0, 1000.0):
        adam = flows.Adam(SYMMETRIC, a=rate, b=rate, eps=eps)
        traj = flows.solve(adam, adam.init(scale=0.5, kind="gaussian", seed=1), t1=0.2, ts=ts, **tol)
        errors.append(np.abs(traj.states["params"] - sign.states["params"]).max())
    assert np.all(np.diff(errors) < 0), errors
    # The gap closes like 1/rate: over a factor 33 in the rates it shrinks by more than 10.
    assert errors[-1] < errors[0] / 10, errors


@pytest.mark.parametrize("inner", [SYMMETRIC, flows.Penalized(flows.Deep(PROBLEM, depth=3), flows.Ratio(1e-2, 1e-2), 0.3)],
                         ids=["symmetric", "penalized-deep3-ratio"])
def test_modified_field_is_gradient_flow_of_the_modified_objective(inner):
    """-(g + eta/2 H g) from a JVP equals reverse-over-reverse autodiff of L + eta/4 ||grad L||^2."""
    eta = 0.05
    flow = flows.Modified(inner, eta=eta)
    state = _params(inner)

    def objective(s):
        return inner.objective(inner.product(s)) if isinstance(inner, flows.Penalized) else inner.loss(s)

    def total(s):
        g = jax.grad(objective)(s)
        return objective(s) + eta / 4 * sum(jnp.vdot(x, x) for x in jax.tree.leaves(g))

    field = flow.vector_field(0.0, state, None)
    autodiff = jax.tree.map(jnp.negative, jax.grad(total)(state))
    scale = max(float(jnp.abs(x).max()) for x in jax.tree.leaves(field))
    assert _max_diff(field, autodiff) <= 1e-11 * scale


def test_descriptions_are_json_and_cli_runs_a_penalized_adam_flow(tmp_path, capsys):
    flow = flows.Adam(flows.Penalized(flows.Deep(PROBLEM, depth=3), flows.Ratio(), 1e-2), a=10, b=1, eps=1e-8)
    description = json.loads(json.dumps(flow.describe()))
    assert description["flow"] == "Adam" and description["inner"]["penalty"] == "Ratio"
    out = tmp_path / "run"
    code = main(["run", "--problem", "sensing", "--n", "5", "--m", "12", "--flow", "symmetric", "--scale", "0.3",
                 "--penalty", "nuclear", "--strength", "1e-2", "--dynamics", "adam", "--a", "10", "--t1", "1",
                 "--points", "5", "--quiet", "--out", str(out)])
    assert code == 0
    traj = flows.Trajectory.load(out)
    assert set(traj.states) == {"params", "m", "v"}
    assert traj.config["flow"]["flow"] == "Adam" and traj.config["flow"]["inner"]["penalty"] == "Nuclear"
    assert traj.loss[-1] < traj.loss[0]
