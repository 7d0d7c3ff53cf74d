"""Deep products: where the end-to-end and singular-value ODEs apply and where they do not (the agreement
itself is a row of analysis.checks.deep_checks)."""

import numpy as np
import pytest

import flows
from analysis import closed_form, deep

DEPTH = 3
T1 = 20.0
TS = flows.default_ts(T1, 40)
OPTIONS = dict(rtol=1e-10, atol=1e-12)


@pytest.fixture(scope="module")
def problem():
    return flows.sensing(n=6, m=20, rank=2, seed=0, symmetric=False)


def run_both(problem, factors0, depth=DEPTH, width=None, **options):
    """The factor flow (with the singular-value ODE alongside) and the end-to-end ODE from its product."""
    flow = deep.WithSingularValues(flows.Flow(problem, flows.Deep(depth=depth, width=width)))
    traj = flows.solve(flow, flow.state(factors0), t1=T1, ts=TS, **(OPTIONS | options))
    end_to_end = deep.EndToEnd(problem, depth, flow.product(flow.state(factors0)))
    return traj, flows.solve(end_to_end, end_to_end.init(), t1=T1, ts=TS, **(OPTIONS | options))


def test_unbalanced_start_breaks_the_end_to_end_ode(problem):
    """Both ODEs need balancedness: from an unbalanced start with the same product they are wrong."""
    W1, W2, W3 = flows.Flow(problem, flows.Deep(depth=DEPTH)).init(scale=0.5, kind="balanced", seed=1)
    traj, reference = run_both(problem, (2.0 * W1, W2, 0.5 * W3))
    assert closed_form.trajectory_difference(traj.W, reference.W) > 1e-2
    assert deep.singular_value_report(traj).max_relative_error > 1e-2


def test_end_to_end_ode_at_a_singular_product():
    """A 4 x 5 product through hidden width 3 has rank <= 3: W W^T has a zero eigenvalue, whose fractional
    powers must be exact zeros (round-off 1e-16 to the power 1/3 is 5e-6, an error in the field), and stay
    zeros when the solver's truncation errors lift it above round-off."""
    problem = flows.sensing(n=4, n2=5, m=12, rank=2, seed=1, symmetric=False)
    factors0 = flows.Flow(problem, flows.Deep(depth=3, width=3)).init(scale=0.6, kind="balanced", seed=2)
    # At rtol 1e-12 the run finishes (with round-off powers it hit max_steps at t = 0.13) and agrees with the
    # factor flow to a few rtol (measured 2e-12 each against a 1e-13 reference).
    traj, reference = run_both(problem, factors0, width=3, rtol=1e-12, atol=1e-14)
    assert np.linalg.svd(traj.W[-1], compute_uv=False)[-1] < 1e-12 * np.abs(traj.W[-1]).max()  # singular
    assert reference.ts[-1] == T1
    assert closed_form.trajectory_difference(traj.W, reference.W) <= 100 * 1e-12
    # At rtol 1e-10 both solves are accurate to a few rtol (measured 1.8e-10 and 2.8e-10 against that reference);
    # with the zero eigenvalues left to a round-off threshold, W's null singular value, lifted by truncation
    # errors past it, entered the field as sigma^(2/3) and the end-to-end solve drifted 1.5e-7 off.
    traj, reference = run_both(problem, factors0, width=3)
    assert closed_form.trajectory_difference(traj.W, reference.W) <= 100 * OPTIONS["rtol"]


def test_bad_input(problem):
    with pytest.raises(ValueError, match="W0"):
        deep.EndToEnd(problem, 2, np.eye(5))
    with pytest.raises(ValueError, match="depth"):
        deep.EndToEnd(problem, 0, np.eye(6))
    with pytest.raises(ValueError, match="init takes no arguments"):
        deep.EndToEnd(problem, 2, np.eye(6)).init(scale=0.1)
    with pytest.raises(ValueError, match="Deep"):
        deep.WithSingularValues(flows.Flow(problem, flows.Direct()))
    with pytest.raises(ValueError, match="Deep"):
        deep.WithSingularValues(flows.Flow(problem, flows.Deep(depth=2), dynamics=flows.Adam()))
