"""The adaptive flows (RMSProp, Adam) under the default solver and under the linearly implicit extrapolation with the
field's exact Jacobian (`flows.KrylovJacobian`), against Dopri8 at rtol 1e-12: every saved value within 100 rtol.

The extrapolation with exact Jacobian-vector products and GMRES needs nothing from the flow but its field, so it
integrates flows the Gauss-Newton solvers cannot (preconditioned dynamics, penalties); its cost is measured in
benchmarks/adaptive_stiff.py.
"""

import numpy as np
import pytest

import flows

PROBLEM = flows.sensing(n=6, m=18, rank=2, seed=0)
RTOL = 1e-8


def _max_relative_error(traj, reference):
    return float(np.max(np.linalg.norm(traj.W - reference.W, axis=(1, 2)) / np.linalg.norm(reference.W, axis=(1, 2))))


@pytest.mark.parametrize(
    "eps, t1",
    [(1e-3, 2.0), pytest.param(1e-8, 3.0, marks=pytest.mark.slow), pytest.param(1e-3, 10.0, marks=pytest.mark.slow)],
)
def test_rmsprop_flow_is_accurate_at_every_saved_time(eps, t1):
    # The flow turns stiff as its gradients shrink (the field is -g / (sqrt(vhat) + eps), sign-like): Dopri8 at rtol
    # 1e-12 takes 47 thousand steps to t = 3 at eps = 1e-8 and 68 thousand to t = 10 at eps = 1e-3 (hence `slow`);
    # the default solver was measured 0.09 rtol off it in both.
    flow = flows.Flow(PROBLEM, flows.Symmetric(), dynamics=flows.RMSProp(b=1.0, eps=eps))
    state0 = flow.init(scale=1e-2, kind="gaussian", seed=1)
    ts = flows.default_ts(t1, 30)
    reference = flows.solve(flow, state0, t1=t1, ts=ts, rtol=1e-12, solver=flows.solver_by_name("dopri8"))
    traj = flows.solve(flow, state0, t1=t1, ts=ts, rtol=RTOL)
    assert _max_relative_error(traj, reference) <= 100 * RTOL


@pytest.mark.parametrize(
    "dynamics",
    [
        pytest.param(flows.Adam(a=10.0, b=1.0, eps=1e-3), id="adam"),
        pytest.param(flows.RMSProp(b=1.0, eps=1e-3), id="rmsprop", marks=pytest.mark.slow),
    ],
)
def test_extrapolation_with_the_exact_jacobian_integrates_adaptive_flows(dynamics):
    # Penalised too (the ratio on the product): nothing here has a Gauss-Newton linearisation.
    flow = flows.Flow(PROBLEM, flows.Deep(depth=2), penalty=flows.Ratio(), strength=0.1, dynamics=dynamics)
    state0 = flow.init(scale=0.1, kind="gaussian", seed=1)
    ts = flows.default_ts(1.0, 8)
    reference = flows.solve(flow, state0, t1=1.0, ts=ts, rtol=1e-12, solver=flows.solver_by_name("dopri8"))
    solver = flows.LinearlyImplicitExtrapolation(columns=6, linear_solver=flows.KrylovJacobian())
    traj = flows.solve(flow, state0, t1=1.0, ts=ts, rtol=RTOL, solver=solver)
    assert traj.stats["saved_times"] == "landed" and traj.stats["linearisations"] >= 1
    assert _max_relative_error(traj, reference) <= 100 * RTOL
