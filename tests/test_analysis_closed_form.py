"""Closed forms against the integrated flows, over whole trajectories."""

import numpy as np
import pytest

import flows
from analysis import closed_form

# Tsit5 at rtol 1e-8: the global error over these O(10)-long runs stays within a few hundred rtol,
# so 1e-6 is the bound the issue asks for with room; a Dopri8 run at rtol 1e-12 must do 100x better.
T1 = 30.0
TS = flows.default_ts(T1, 40)


@pytest.fixture(scope="module")
def commuting():
    problem = flows.commuting(n=12, m=5, rank=2, seed=0)
    flow = flows.Symmetric(problem)
    return problem, flow, flow.init(scale=0.3, kind="gaussian", seed=1)


@pytest.mark.parametrize("solver, rtol, bound", [("tsit5", 1e-8, 1e-6), ("dopri8", 1e-12, 1e-8)])
def test_commuting_reduced_ode_matches_full_flow(commuting, solver, rtol, bound):
    problem, flow, U0 = commuting
    options = dict(rtol=rtol, atol=rtol * 1e-2, solver=flows.solver_by_name(solver))
    full = flows.solve(flow, U0, t1=T1, ts=TS, **options)
    reduced = closed_form.commuting_flow(problem, U0, T1, TS, **options)
    assert full.loss[-1] < 1e-3 * full.loss[0]  # the run covers the fit, not just the start
    assert closed_form.trajectory_difference(full.W, reduced.W) <= bound


def test_commuting_reduced_state_is_time_integrated_residual(commuting):
    """s(t) = int_0^t r: its derivative at the saved states equals the residual of the full flow's W."""
    problem, flow, U0 = commuting
    reduced = closed_form.commuting_flow(problem, U0, T1, TS, rtol=1e-10, atol=1e-12)
    model = closed_form.CommutingReduced(problem, U0 @ U0.T)
    for s, W in zip(reduced.states[::10], reduced.W[::10]):
        np.testing.assert_allclose(model.vector_field(0.0, s, None), problem.residual(W), rtol=1e-9, atol=1e-12)


def test_riccati_matches_full_flow():
    H = np.random.default_rng(3).standard_normal((7, 7))
    H = (H + H.T) / 2  # indefinite: W tends to H's positive part while the rest decays
    problem = closed_form.fully_observed(H)
    flow = flows.Symmetric(problem)
    U0 = flow.init(scale=0.1, kind="gaussian", seed=2)
    traj = flows.solve(flow, U0, t1=T1, ts=TS, rtol=1e-8, atol=1e-10)
    positive = (lambda h, V: (V * np.clip(h, 0, None)) @ V.T)(*np.linalg.eigh(H))
    assert np.linalg.norm(traj.W[-1] - positive) < 1e-3 * np.linalg.norm(positive)  # the run nears the limit
    assert closed_form.trajectory_difference(traj.W, closed_form.riccati(H, U0, TS)) <= 1e-6


def test_direct_flow_matches_full_flow(commuting):
    problem = flows.sensing(n=6, m=12, rank=2, seed=0)
    flow = flows.Direct(problem)
    W0 = flow.init(scale=0.5, kind="gaussian")
    traj = flows.solve(flow, W0, t1=T1, ts=TS, rtol=1e-8, atol=1e-10)
    assert closed_form.trajectory_difference(traj.W, closed_form.direct_flow(problem, W0, TS)) <= 1e-6


def test_bad_input():
    with pytest.raises(ValueError, match="CommutingProblem"):
        closed_form.CommutingReduced(flows.sensing(n=4, m=3, rank=1), np.eye(4))
    with pytest.raises(ValueError, match="W0"):
        closed_form.CommutingReduced(flows.commuting(n=4, m=3, rank=1), np.eye(3))
    with pytest.raises(ValueError, match="U0"):
        closed_form.riccati(np.eye(4), np.ones((4, 2)), [0.0, 1.0])
    with pytest.raises(ValueError, match="symmetric"):
        closed_form.fully_observed(np.arange(4.0).reshape(2, 2))
