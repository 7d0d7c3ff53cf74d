"""Closed forms: input checks (the trajectories against them are rows of analysis.checks.closed_form_checks)."""

import numpy as np
import pytest

import flows
from analysis import closed_form


def test_bad_input():
    with pytest.raises(ValueError, match="CommutingProblem"):
        closed_form.CommutingReduced(flows.sensing(n=4, m=3, rank=1), np.eye(4))
    with pytest.raises(ValueError, match="W0"):
        closed_form.CommutingReduced(flows.commuting(n=4, m=3, rank=1), np.eye(3))
    with pytest.raises(ValueError, match="U0"):
        closed_form.riccati(np.eye(4), np.ones((4, 2)), [0.0, 1.0])
    with pytest.raises(ValueError, match="symmetric"):
        closed_form.fully_observed(np.arange(4.0).reshape(2, 2))


def test_bad_balanced_start():
    with pytest.raises(ValueError, match=r"\(0, y\)"):
        closed_form.balanced_singular_value(1.0, s0=1.0, y=0.5, depth=3)
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="depth"):
            closed_form.balanced_singular_value(1.0, s0=0.1, y=0.5, depth=bad)
    with pytest.raises(ValueError, match="speed"):
        closed_form.balanced_singular_value(1.0, s0=0.1, y=0.5, depth=2, speed=-1.0)
    with pytest.raises(ValueError, match="t must"):
        closed_form.balanced_singular_value(-1.0, s0=0.1, y=0.5, depth=2)
    with pytest.raises(ValueError, match="one length"):
        closed_form.aligned_balanced_flow(np.eye(3), [1.0, 0.5], np.eye(3), [0.1, 0.1, 0.1], 2, [0.0])
    with pytest.raises(ValueError, match="speed"):
        closed_form.balanced_singular_value(1.0, s0=0.1, y=0.5, depth=2, speed=np.inf)
    rng = np.random.default_rng(0)
    for bad_y in ([1.0, -0.5], [[1.0]], [np.nan]):
        with pytest.raises(ValueError, match="y must"):
            closed_form.aligned_target(bad_y, rng)
    for U, s0 in ((np.eye(3), [0.1, np.nan, 0.1]), (np.eye(3), [0.1, 0.1]), (2 * np.eye(3), [0.1] * 3), (1.0, [0.1])):
        with pytest.raises(ValueError, match="s0 must|orthogonal"):
            closed_form.aligned_balanced_factors(U, np.eye(len(s0)), s0, 3, rng)


def test_the_aligned_start_is_balanced_with_the_chosen_product():
    # W_{j+1}^T W_{j+1} = W_j W_j^T (the balancedness the closed form assumes) and W_3 W_2 W_1 = U diag(s0) V^T.
    rng = np.random.default_rng(1)
    _, U, V = closed_form.aligned_target([1.0, 0.5, 0.25], rng)
    s0 = np.array([0.3, 0.2, 0.1])
    W = [np.asarray(w) for w in closed_form.aligned_balanced_factors(U, V, s0, 3, rng)]
    for lower, upper in zip(W, W[1:]):
        np.testing.assert_allclose(upper.T @ upper, lower @ lower.T, atol=1e-14)
    np.testing.assert_allclose(W[2] @ W[1] @ W[0], (U * s0) @ V.T, atol=1e-14)


@pytest.mark.parametrize("depth, speed", [(1, 1.0), (2, 1.0), (4, 1.0), (2, 2.0)])
def test_a_balanced_singular_value_solves_its_ode(depth, speed):
    # sigma' = -c N sigma^(2 - 2/N) (sigma - y) by a central difference of the closed form (step 1e-4: truncation
    # ~1e-8 relative, the quadrature's 1e-14 / 1e-4 ~ 1e-10), from 0.01 to y = 0.5: at t = 0.5, 2 and 5 the rates
    # are 2e-3 .. 0.3 at c = 1 (the plateau of depth 4, the rise of depth 2, the approach of depth 1); c = 2 as for U U^T.
    y, s0 = 0.5, 0.01
    for t in (0.5, 2.0, 5.0):
        step = 1e-4
        left, mid, right = (closed_form.balanced_singular_value(t + d, s0, y, depth, speed) for d in (-step, 0.0, step))
        rate = -speed * depth * mid ** (2.0 - 2.0 / depth) * (mid - y)
        assert (right - left) / (2 * step) == pytest.approx(rate, rel=1e-6)
