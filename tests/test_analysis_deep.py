"""Deep products from a balanced start: end-to-end ODE, singular-value ODE, conserved quantities."""

import numpy as np
import pytest

import flows
from analysis import closed_form, deep

DEPTH = 3
T1 = 20.0
TS = flows.default_ts(T1, 40)
# rtol 1e-10 (atol 1e-12 on O(0.1..1) entries): each side carries ~1e-10-level error over these runs,
# so agreement to the 1e-7 has three orders to spare, while a wrong power or factor fails by O(1).
OPTIONS = dict(rtol=1e-10, atol=1e-12)


@pytest.fixture(scope="module")
def problem():
    return flows.sensing(n=6, m=20, rank=2, seed=0, symmetric=False)


def run_both(problem, factors0):
    """The factor flow (with the singular-value ODE alongside) and the end-to-end ODE from its product."""
    flow = deep.WithSingularValues(flows.Deep(problem, depth=DEPTH))
    traj = flows.solve(flow, flow.state(factors0), t1=T1, ts=TS, **OPTIONS)
    end_to_end = deep.EndToEnd(problem, DEPTH, flow.product(flow.state(factors0)))
    return traj, flows.solve(end_to_end, end_to_end.init(), t1=T1, ts=TS, **OPTIONS)


@pytest.fixture(scope="module")
def balanced(problem):
    return run_both(problem, flows.Deep(problem, depth=DEPTH).init(scale=0.5, kind="balanced", seed=1))


def test_end_to_end_ode_matches_factor_flow(balanced):
    traj, reference = balanced
    assert traj.loss[-1] < 1e-3 * traj.loss[0]
    assert closed_form.trajectory_difference(traj.W, reference.W) <= 1e-7


def test_balancedness_is_conserved(balanced):
    traj, _ = balanced
    drift = traj.conserved_drift()
    assert len(drift) == DEPTH - 1
    assert max(d.max() for d in drift.values()) <= 1e-7


def test_singular_value_ode(balanced):
    report = deep.singular_value_report(balanced[0])
    assert report.min_relative_gap > 1e-2  # distinct throughout: the ODE applies
    assert report.max_relative_error <= 1e-7


def test_unbalanced_start_breaks_the_end_to_end_ode(problem):
    """Both ODEs need balancedness: from an unbalanced start with the same product they are wrong."""
    W1, W2, W3 = flows.Deep(problem, depth=DEPTH).init(scale=0.5, kind="balanced", seed=1)
    traj, reference = run_both(problem, (2.0 * W1, W2, 0.5 * W3))
    assert closed_form.trajectory_difference(traj.W, reference.W) > 1e-2
    assert deep.singular_value_report(traj).max_relative_error > 1e-2


def test_conserved_quantity_of_factored_flow(problem):
    flow = flows.Factored(problem)
    traj = flows.solve(flow, flow.init(scale=0.5, kind="gaussian", seed=1), t1=T1, ts=TS, **OPTIONS)
    assert traj.loss[-1] < 1e-3 * traj.loss[0]
    assert traj.conserved_drift()["U^T U - V^T V"].max() <= 1e-7


def test_bad_input(problem):
    with pytest.raises(ValueError, match="W0"):
        deep.EndToEnd(problem, 2, np.eye(5))
    with pytest.raises(ValueError, match="depth"):
        deep.EndToEnd(problem, 0, np.eye(6))
    with pytest.raises(ValueError, match="Deep"):
        deep.WithSingularValues(flows.Direct(problem))
