"""Finite steps against their flows: orders of convergence, independent reimplementations, bookkeeping."""

import numpy as np
import pytest

import flows

PROBLEM = flows.sensing(n=5, m=12, rank=2, seed=0)
SYMMETRIC = flows.Flow(PROBLEM, flows.Symmetric())
U0 = SYMMETRIC.init(scale=0.5, kind="gaussian", seed=1)


def symmetric(dynamics):
    return flows.Flow(PROBLEM, flows.Symmetric(), dynamics=dynamics)


T, TS = 2.0, np.linspace(0, 2.0, 5)
ETAS = np.array([1e-2, 1e-3, 1e-4])
# Reference flows to rtol = 1e-12: their error is far below the smallest gap measured (~1e-8).
TIGHT = dict(rtol=1e-12, atol=1e-14)


def _gap(flow_traj, step_traj):
    params = lambda traj: traj.states["params"] if isinstance(traj.states, dict) else traj.states  # noqa: E731
    np.testing.assert_allclose(step_traj.ts, flow_traj.ts, rtol=1e-12, atol=0)
    return np.abs(params(step_traj) - params(flow_traj)).max()


def _slope(gaps, etas=ETAS):
    return np.polyfit(np.log(etas), np.log(gaps), 1)[0]


def test_gradient_descent_tracks_the_flow_to_first_order_and_the_modified_flow_to_second():
    flow = flows.solve(SYMMETRIC, U0, t1=T, ts=TS, **TIGHT)
    to_flow, to_modified = [], []
    for eta in ETAS:
        steps = flows.descend(SYMMETRIC, U0, step=eta, t1=T, ts=TS)
        to_flow.append(_gap(flow, steps))
        to_modified.append(_gap(flows.solve(symmetric(flows.Modified(eta=eta)), U0, t1=T, ts=TS, **TIGHT), steps))
    assert 0.8 <= _slope(to_flow) <= 1.2, to_flow
    assert 1.8 <= _slope(to_modified) <= 2.2, to_modified
    assert all(m < f for m, f in zip(to_modified, to_flow))


# Without momentum the steps are pre-asymptotic at eta = 1e-2 (sign-like steps overshoot by ~eta
# where the field is steep, |d field / d g| up to 1 / eps), so those two are measured one decade lower.
@pytest.mark.parametrize(
    "flow, etas",
    [
        (symmetric(flows.Adam(a=10.0, b=1.0, eps=1e-8)), ETAS),
        (symmetric(flows.Momentum(a=10.0)), ETAS),
        (symmetric(flows.RMSProp(b=2.0, eps=1e-8)), ETAS / 10),
        (symmetric(flows.Sign(eps=0.1)), ETAS / 10),
    ],
    ids=["adam", "momentum", "rmsprop", "sign"],
)
def test_adaptive_flows_are_the_small_step_limit_of_their_optimizers(flow, etas):
    """optax.adam / EMA momentum / rmsprop / sign descent at 1 - beta = rate * eta: the gap is O(eta)."""
    state0 = flow.init(scale=0.5, kind="gaussian", seed=1)
    reference = flows.solve(flow, state0, t1=T, ts=TS, **TIGHT)
    gaps = [_gap(reference, flows.descend(flow, state0, step=eta, t1=T, ts=TS)) for eta in etas]
    assert 0.8 <= _slope(gaps, etas) <= 1.2, gaps


def test_gradient_descent_on_the_direct_flow_matches_a_numpy_loop():
    direct = flows.Flow(PROBLEM, flows.Direct())
    W0 = direct.init(scale=0.1, kind="gaussian", seed=3)
    A, y, eta = np.asarray(PROBLEM.A), np.asarray(PROBLEM.y), 5e-3
    W, expected = np.asarray(W0).copy(), []
    for k in range(201):
        if k % 50 == 0:
            expected.append(W.copy())
        W = W - eta * np.einsum("m,mij->ij", np.einsum("mij,ij->m", A, W) - y, A)
    traj = flows.descend(direct, W0, step=eta, t1=1.0, ts=[0.0, 0.25, 0.5, 0.75, 1.0], chunk=7)
    np.testing.assert_allclose(traj.ts, [0.0, 0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(traj.W, np.stack(expected), rtol=1e-12, atol=1e-14)


def test_adam_steps_match_a_numpy_adam_and_keep_the_flow_state_form(tmp_path):
    a, b, eps, eta = 10.0, 1.0, 1e-8, 1e-2
    flow = symmetric(flows.Adam(a=a, b=b, eps=eps))
    state0 = flow.init(scale=0.5, kind="gaussian", seed=1)
    traj = flows.descend(flow, state0, step=eta, t1=0.5, ts=[0.0, 0.5])
    b1, b2 = 1 - a * eta, 1 - b * eta
    U, m, v = np.asarray(U0), np.zeros_like(U0), np.zeros_like(U0)
    for k in range(1, 51):
        R = np.einsum("mij,ij->m", np.asarray(PROBLEM.A), U @ U.T) - np.asarray(PROBLEM.y)
        S = np.einsum("m,mij->ij", R, np.asarray(PROBLEM.A))
        g = (S + S.T) @ U
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g**2
        U = U - eta * (m / (1 - b1**k)) / (np.sqrt(v / (1 - b2**k)) + eps)
    for name, expected in {"params": U, "m": m, "v": v}.items():
        np.testing.assert_allclose(traj.states[name][-1], expected, rtol=1e-10, atol=1e-14)
    loaded = flows.Trajectory.load(traj.save(tmp_path / "adam"))
    assert set(loaded.states) == {"params", "m", "v"}
    np.testing.assert_array_equal(loaded.states["m"], traj.states["m"])


def test_save_times_round_to_the_nearest_step_once_each():
    ts = [0.0, 0.0101, 0.0149, 0.02, 0.0349, 0.2]
    traj = flows.descend(SYMMETRIC, U0, step=0.01, t1=0.2, ts=ts)
    np.testing.assert_allclose(traj.ts, [0.0, 0.01, 0.02, 0.03, 0.2])
    assert traj.stats["num_steps"] == 20
    np.testing.assert_array_equal(traj.states[0], U0)
    by_chunks = flows.descend(SYMMETRIC, U0, step=0.01, t1=0.2, ts=ts, chunk=3)
    np.testing.assert_array_equal(by_chunks.states, traj.states)
    # A t1 halfway between two multiples of the step rounds to the even one (np.rint; binary fractions, so the
    # quotients are exact): 0.625 / 0.25 = 2.5 -> 2, 0.875 / 0.25 = 3.5 -> 4, past t1 by half a step.
    assert flows.descend(SYMMETRIC, U0, step=0.25, t1=0.625, ts=[0.0, 0.625]).stats["num_steps"] == 2
    past = flows.descend(SYMMETRIC, U0, step=0.25, t1=0.875, ts=[0.0, 0.875])
    assert past.stats["num_steps"] == 4 and past.ts[-1] == 1.0


def test_saving_more_states_than_fit_is_refused_before_a_step(monkeypatch):
    # Each saved state of the 5 x 5 flow takes 8 (2 * 25 + 2 * 25 + 2 * 25) = 1200 bytes (`flows._solve.saved_bytes`).
    monkeypatch.setattr(flows._validate, "available_memory", lambda: 100 * 1200)
    monkeypatch.setattr(flows._descend, "_advance", lambda *args: pytest.fail("stepped before the memory check"))
    with pytest.raises(ValueError, match="saving 101 states needs"):
        flows.descend(SYMMETRIC, U0, step=0.01, t1=1.0, ts=np.linspace(0.0, 1.0, 101))
    with pytest.raises(ValueError, match="saving 101 states needs"):
        flows.solve(SYMMETRIC, U0, t1=1.0, ts=np.linspace(0.0, 1.0, 101))


def test_bad_input_and_divergence():
    adam = symmetric(flows.Adam(a=10.0, b=1.0))
    state0 = adam.init(scale=0.5, kind="gaussian", seed=1)
    with pytest.raises(ValueError, match="Modified"):
        flows.descend(symmetric(flows.Modified(eta=0.01)), U0, step=0.01, t1=1.0)
    with pytest.raises(ValueError, match="step \\* a"):
        flows.descend(adam, state0, step=0.1, t1=1.0)
    with pytest.raises(ValueError, match="moments must be zero"):
        flows.descend(adam, {**state0, "m": state0["m"] + 1.0}, step=1e-3, t1=1.0)
    with pytest.raises(ValueError, match="state0 does not match"):
        flows.descend(adam, U0, step=1e-3, t1=1.0)
    with pytest.raises(ValueError, match="ts must"):
        flows.descend(SYMMETRIC, U0, step=1e-3, t1=1.0, ts=[0.5, 0.2])
    with pytest.raises(ValueError, match="step"):
        flows.descend(SYMMETRIC, U0, step=0.0, t1=1.0)
    with pytest.raises(ValueError, match="larger than t1"):
        flows.descend(SYMMETRIC, U0, step=2.0, t1=1.0)


def test_divergence_carries_the_run_up_to_the_last_finite_iterate(tmp_path):
    step, chunk = 0.1, 3
    with pytest.raises(flows.SolverError, match="non-finite") as err:
        flows.descend(SYMMETRIC, U0, step=step, t1=20.0, ts=[0.0, 0.1, 0.2, 20.0], chunk=chunk)
    partial = err.value.trajectory
    assert partial.stats["failed"] and partial.stats["failure"] == str(err.value)
    # Saved at steps 0, 1 and 2, then the last iterate checked finite: one chunk before the non-finite one.
    k_failed = round(err.value.t_reached / step)
    assert k_failed > 2 + chunk
    np.testing.assert_allclose(partial.ts, [0.0, 0.1, 0.2, (k_failed - chunk) * step], rtol=1e-12)
    again = flows.descend(SYMMETRIC, U0, step=step, t1=partial.ts[-1], ts=[partial.ts[-1]])
    np.testing.assert_array_equal(again.W[-1], partial.W[-1])
    assert np.isfinite(partial.W).all()
    assert flows.Trajectory.load(partial.save(tmp_path / "failed")).stats["failed"]


def test_a_single_precision_start_descends_in_float64():
    # optax casts each update to the parameters' dtype: a float32 start would descend in float32 (an integer one,
    # which the annotations refuse under the tests' type checks, would be truncated at every step).
    flow = flows.Flow(flows.sensing(n=3, m=4, rank=1, seed=0), flows.Direct())
    start = 0.25 * np.eye(3) + 0.125  # exact in float32
    reference = flows.descend(flow, start, step=0.01, t1=1.0)
    traj = flows.descend(flow, start.astype(np.float32), step=0.01, t1=1.0)
    assert traj.W.dtype == np.float64
    np.testing.assert_array_equal(traj.W, reference.W)
