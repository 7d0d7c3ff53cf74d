"""A closed form checked in pytest: the direct gradient flow's residual is r(t) = exp(-G t) r(0).

    pytest examples/test_closed_form.py

For W' = -grad L(W) = -A^*(r) the residual r = A(W) - y obeys the linear ODE r' = -A(A^*(r)) = -G r, with
G_ij = <A_i, A_j> the Gram matrix of the measurements, so r(t) = expm(-G t) r(0) exactly. The solve runs at
rtol 1e-10 with a tiny absolute floor; its residual is compared with SciPy's matrix exponential. Adapt it to
your own flow: replace the problem, the flow and the closed form.
"""

import numpy as np
import pytest
import scipy.linalg

import flows


@pytest.mark.parametrize("problem", [flows.sensing(n=6, m=20, rank=2, seed=0), flows.completion(n=6, m=20, rank=2)])
def test_direct_flow_residual_is_a_matrix_exponential(problem):
    flow = flows.Flow(problem, flows.Direct())
    ts = np.array([0.0, 0.01, 0.1, 1.0])
    traj = flows.solve(flow, flow.init(scale=0.3, kind="gaussian", seed=1), t1=1.0, ts=ts, rtol=1e-10, atol=1e-14)

    G = np.asarray(problem.gram())
    r0 = np.asarray(problem.residual(traj.W[0]))
    expected = np.stack([scipy.linalg.expm(-G * t) @ r0 for t in ts])
    measured = np.stack([np.asarray(problem.residual(W)) for W in traj.W])

    # The solver's error is about rtol = 1e-10 relative to W, and r inherits it times the norm of A (a few here):
    # 1e-9 of ||r(0)|| (about 1e-12 is measured). A wrong sign or factor in the flow is off by O(1).
    assert np.abs(measured - expected).max() <= 1e-9 * np.linalg.norm(r0)
    # And the check can fail: at t = 1 the residual has moved far from where it started.
    assert np.linalg.norm(measured[-1] - r0) > 0.1 * np.linalg.norm(r0)
