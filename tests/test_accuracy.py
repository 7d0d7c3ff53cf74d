"""The default tolerances deliver ~rtol relative accuracy on W at every saved time, whatever the init scale.

Against references at rtol 1e-12 (Dopri8, errors measured relative to each state array's size, so the
reference's absolute tolerance sits 12 orders below the state whatever its scale). With one absolute
atol = 1e-10 these runs were up to 2.6e-4 off at init scale 1e-6 (UU^T) and 2e-4 (depth 3). The Adam flow
from 1e-6 was 2.1e-4 off with its moments measured against their arrays' sizes (a coordinate sliding along
g_i = 0 keeps v_i ~ 1e-12 of max v ~ 10): `Adam.error_sizes` measures them by the error they cause in its field.
"""

import numpy as np
import pytest

import flows

PROBLEM = flows.sensing(n=8, m=24, rank=2, seed=0)
CASES = {
    "UU^T": (flows.Flow(PROBLEM, flows.Symmetric()), 40.0, 1.0),
    # Per-factor scale alpha^(2/3), so that W_0 is of the order alpha^2 as for UU^T.
    "deep3": (flows.Flow(PROBLEM, flows.Deep(depth=3)), 400.0, 2.0 / 3.0),
    "adam": (flows.Flow(PROBLEM, flows.Symmetric(), dynamics=flows.Adam(a=10.0, b=1.0, eps=1e-8)), 10.0, 1.0),
}
RTOL = 1e-8


def _max_relative_error(traj, reference):
    return float(np.max(np.linalg.norm(traj.W - reference.W, axis=(1, 2)) / np.linalg.norm(reference.W, axis=(1, 2))))


# The smallest scale of each flow runs in the default suite; the rest (a few minutes of references) is `slow`.
SLOW = pytest.mark.slow
GRID = [
    pytest.param(name, alpha, marks=() if alpha == 1e-6 else SLOW, id=f"{name}-{alpha:g}")
    for name in CASES
    for alpha in (1e-2, 1e-4, 1e-6)
]


@pytest.mark.parametrize("name, alpha", GRID)
def test_relative_accuracy_at_every_init_scale(name, alpha):
    flow, t1, power = CASES[name]
    state0 = flow.init(scale=alpha**power, kind="gaussian", seed=1)
    ts = flows.default_ts(t1, 40)
    reference = flows.solve(flow, state0, t1=t1, ts=ts, rtol=1e-12, solver=flows.solver_by_name("dopri8"))
    traj = flows.solve(flow, state0, t1=t1, ts=ts, rtol=RTOL)
    assert _max_relative_error(traj, reference) <= 100 * RTOL
