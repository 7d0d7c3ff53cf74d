"""The shared-eigenbasis claim along the UU^T flow from alpha^2 I, and its failure without commuting A_i."""

import numpy as np
import pytest

import flows
from analysis import eigenbasis

T1 = 30.0


def run(problem, alpha=1e-2):
    flow = flows.Symmetric(problem)
    return flows.solve(flow, flow.init(scale=alpha), t1=T1, ts=flows.default_ts(T1, 40), rtol=1e-8, atol=1e-12)


def test_commuting_flow_keeps_the_common_eigenbasis():
    problem = flows.commuting(n=12, m=5, rank=2, seed=0)
    traj = run(problem)
    report = eigenbasis.eigenbasis_report(problem, traj)
    assert traj.loss[-1] < 1e-4 * traj.loss[0]  # the flow has fitted: W is far from alpha^2 I
    assert report.max_commutator <= 1e-10
    assert report.max_misalignment <= 1e-10


def test_noncommuting_flow_leaves_every_eigenbasis():
    problem = flows.sensing(n=12, m=5, rank=2, seed=0)
    report = eigenbasis.eigenbasis_report(problem, run(problem))
    # At t = 0 W = alpha^2 I commutes with everything; the claim fails once W moves.
    assert report.commutator[0] <= 1e-12
    assert report.commutator[-1] > 1e-2
    assert report.misalignment[-1] > 1e-2


def test_reference_basis_needs_symmetric_measurements():
    with pytest.raises(ValueError, match="symmetric"):
        eigenbasis.reference_basis(flows.sensing(n=4, m=3, rank=1, symmetric=False))
    problem = flows.commuting(n=4, m=3, rank=1)
    np.testing.assert_array_equal(eigenbasis.reference_basis(problem), np.asarray(problem.basis))
