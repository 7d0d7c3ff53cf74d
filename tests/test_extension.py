"""A parameterization and a penalty defined here, in the test file only, run through every part of flows:
every dynamics, every penalty, `solve` (the default solver's stiff path included), `descend` and `sweep`.
Nothing under flows/ knows them."""

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flows


class Scaled(NamedTuple):
    """W = U diag(d) V^T: a NamedTuple state (the store must round-trip it)."""

    U: jax.Array
    d: jax.Array
    V: jax.Array


class ScaledFactors(flows.AbstractParameterization):
    r"""$W = U \operatorname{diag}(d) V^T = \sum_k d_k u_k v_k^T$.

    Gradient flow: $u_k' = -d_k G v_k$, $d_k' = -u_k^T G v_k$, $v_k' = -d_k G^T u_k$, so
    $(|u_k|^2)' = -2 d_k u_k^T G v_k = (d_k^2)'$: $|u_k|^2 - d_k^2$ and $|v_k|^2 - d_k^2$ are conserved.
    """

    width: int = eqx.field(static=True, default=2)
    init_kinds = ("identity", "gaussian")

    def params(self, rng, shape, scale, kind):
        n1, n2 = shape
        if kind == "identity":
            return Scaled(scale * np.eye(n1, self.width), scale * np.ones(self.width), scale * np.eye(n2, self.width))
        return Scaled(
            scale * rng.standard_normal((n1, self.width)),
            scale * (1 + rng.random(self.width)),
            scale * rng.standard_normal((n2, self.width)),
        )

    def product(self, theta):
        return (theta.U * theta.d) @ theta.V.T

    def pushforward(self, theta, tangent):
        U, d, V = theta
        dU, dd, dV = tangent
        return (dU * d) @ V.T + (U * dd) @ V.T + (U * d) @ dV.T

    def pullback(self, theta, G):
        U, d, V = theta
        return Scaled(G @ V * d, jnp.einsum("ik,ij,jk->k", U, G, V), G.T @ U * d)

    def conserved(self, theta):
        U, d, V = theta
        return {"|u_k|^2 - d_k^2": (jnp.sum(U**2, axis=0), d**2), "|v_k|^2 - d_k^2": (jnp.sum(V**2, axis=0), d**2)}


class SmoothedL1(flows.AbstractMatrixPenalty):
    r"""$R(W) = \sum_{ij} (\sqrt{W_{ij}^2 + \epsilon^2} - \epsilon)$, $\nabla R = W / \sqrt{W^2 + \epsilon^2}$."""

    eps: float = 1e-2

    def __call__(self, W):
        return jnp.sum(jnp.sqrt(W**2 + self.eps**2) - self.eps)

    def grad(self, W):
        return W / jnp.sqrt(W**2 + self.eps**2)


PROBLEM = flows.completion(n=6, m=20, rank=1, seed=0, symmetric=False)
DYNAMICS = {
    "gradient": flows.GradientFlow(),
    "adam": flows.Adam(a=10.0, b=1.0, eps=1e-8),
    "rmsprop": flows.RMSProp(b=1.0, eps=1e-8),
    "momentum": flows.Momentum(a=10.0),
    "sign": flows.Sign(eps=1e-2),
    "modified": flows.Modified(eta=1e-2),
}
PENALTIES = {
    "none": None,
    "nuclear": flows.Nuclear(eps=1e-2),
    "ratio": flows.Ratio(),
    "frobenius": flows.Frobenius(),
    "each-factor": flows.EachFactor(flows.Frobenius()),
    "smoothed-l1": SmoothedL1(),
}


def make(penalty="none", dynamics="gradient"):
    return flows.Flow(
        PROBLEM,
        ScaledFactors(width=2),
        penalty=PENALTIES[penalty],
        strength=None if penalty == "none" else 1e-2,
        dynamics=DYNAMICS[dynamics],
    )


@pytest.mark.parametrize("dynamics", list(DYNAMICS))
@pytest.mark.parametrize("penalty", ["none", "smoothed-l1"])
def test_every_dynamics_solves_and_descends(dynamics, penalty):
    flow = make(penalty, dynamics)
    state0 = flow.init(scale=0.5, kind="gaussian", seed=1)
    traj = flows.solve(flow, state0, t1=2.0, ts=np.linspace(0, 2.0, 5), rtol=1e-8, atol=1e-10)
    assert np.all(np.isfinite(traj.W)) and traj.loss[-1] < 0.9 * traj.loss[0]
    assert isinstance(flow.params(traj.states), Scaled)
    if dynamics == "modified":
        return  # a model of gradient descent, not a method: descend refuses it (tests/test_descend.py)
    steps = flows.descend(flow, state0, step=1e-3, t1=2.0, ts=np.linspace(0, 2.0, 5))
    # Finite steps track the flow to O(step) (the gap at step 1e-3 over t = 2 is ~1e-3 of W's scale).
    assert np.abs(steps.W - traj.W).max() <= 2e-2 * np.abs(traj.W).max()


@pytest.mark.parametrize("penalty", list(PENALTIES))
def test_every_penalty_is_gradient_flow_of_its_objective(penalty):
    # The composed field against -grad of the composed objective by autodiff through the test's own product:
    # the flow uses only the parameterization's pullback and the penalty's closed-form gradient.
    flow = make(penalty)
    state = flow.init(scale=0.7, kind="gaussian", seed=2)
    field = flow.vector_field(0.0, state)
    autodiff = jax.grad(flow.objective)(state)
    for x, g in zip(jax.tree.leaves(field), jax.tree.leaves(autodiff)):
        np.testing.assert_allclose(x, -g, rtol=1e-12, atol=1e-12)
    traj = flows.solve(flow, state, t1=2.0, ts=np.linspace(0, 2.0, 5), rtol=1e-10, atol=1e-12)
    objective = [float(flow.objective(jax.tree.map(lambda x: x[k], traj.states))) for k in range(5)]  # noqa: B023
    assert np.all(np.diff(objective) < 0)  # gradient flow decreases its objective
    if PENALTIES[penalty] is None or PENALTIES[penalty].keeps_symmetry:
        assert max(d.max() for d in traj.conserved_drift().values()) <= 1e-8
    else:
        assert traj.conserved == {}


def test_the_default_solver_takes_the_stiff_path_and_keeps_the_conserved_quantities():
    flow = make()
    state0 = flow.init(scale=0.3, kind="gaussian", seed=3)
    assert isinstance(flows.default_solver(flow, stop_loss=1e-12), flows.Tsit5ThenExtrapolation)
    stiff = flows.solve(flow, state0, t1=1e5, stop_loss=1e-12, rtol=1e-9, atol=1e-12)
    assert stiff.config["solver"] == "Tsit5ThenExtrapolation" and stiff.loss[-1] < 1e-12
    assert max(d.max() for d in stiff.conserved_drift().values()) <= 1e-7
    # The Gauss-Newton matrix of this parameterization (from its pushforward and pullback) against the dense
    # Jacobian of the measurements by forward-mode autodiff.
    point, unravel = jax.flatten_util.ravel_pytree(state0)
    M = jax.jacfwd(lambda x: PROBLEM.measure(flow.product(unravel(x))))(point)
    np.testing.assert_allclose(flow.gauss_newton(state0).kernel(), M @ M.T, rtol=1e-12, atol=1e-12)
    # The extrapolation alone lands where an explicit solve does.
    t1 = 50.0
    implicit = flows.solve(
        flow,
        state0,
        t1=t1,
        ts=np.array([0.0, t1]),
        solver=flows.LinearlyImplicitExtrapolation(),
        rtol=1e-10,
        atol=1e-12,
    )
    explicit = flows.solve(flow, state0, t1=t1, ts=np.array([0.0, t1]), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(implicit.W[-1], explicit.W[-1], atol=1e-7)


def build(config):
    flow = make(config["penalty"], config["dynamics"])
    return flow, flow.init(scale=config["alpha"], kind="gaussian", seed=0)


def test_sweep_saves_and_reloads_the_new_parameterization(tmp_path):
    configs = flows.grid(alpha=[0.3, 0.5], penalty=["none", "smoothed-l1"], dynamics=["gradient", "adam"])
    runs = flows.sweep(build, configs, tmp_path, t1=1.0, ts=np.linspace(0, 1.0, 3), progress=False)
    assert [r.status for r in runs] == ["done"] * len(configs)
    for run in runs:
        flow, state0 = build(run.config)
        traj = run.load()
        assert isinstance(flow.params(traj.states), Scaled)  # the NamedTuple came back as itself
        alone = flows.solve(flow, state0, t1=1.0, ts=np.linspace(0, 1.0, 3))
        np.testing.assert_allclose(traj.W, alone.W, rtol=1e-9, atol=1e-12)
    again = flows.sweep(build, configs, tmp_path, t1=1.0, ts=np.linspace(0, 1.0, 3), progress=False)
    assert [r.status for r in again] == ["cached"] * len(configs)


def test_a_batch_never_mixes_runs_whose_fields_differ_outside_their_arrays(tmp_path):
    # SmoothedL1's eps is a Python float, not an array: a batch is stacked from its runs' arrays and takes the rest
    # from its first run, so runs that differ in eps must not batch together (each would get the first's eps).
    problem = flows.completion(n=4, m=8, rank=1, seed=0, symmetric=False)

    def smoothed(config):
        flow = flows.Flow(problem, flows.Factored(), penalty=SmoothedL1(eps=config["eps"]), strength=0.5)
        return flow, flow.init(scale=0.3, kind="gaussian", seed=0)

    ts = np.linspace(0, 5.0, 3)
    runs = flows.sweep(smoothed, flows.grid(eps=[1e-2, 10.0]), tmp_path, t1=5.0, ts=ts, batch_size=2, progress=False)
    finals = []
    for run in runs:
        flow, state0 = smoothed(run.config)
        alone = flows.solve(flow, state0, t1=5.0, ts=ts)
        np.testing.assert_allclose(run.load().W, alone.W, rtol=1e-9, atol=1e-12)
        finals.append(alone.W[-1])
    assert not np.allclose(finals[0], finals[1])
