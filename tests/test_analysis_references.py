"""Convex references: the minimum-nuclear-norm interpolant by both solvers, against known answers."""

import numpy as np
import pytest

import flows
from analysis import references


@pytest.fixture(scope="module")
def completion():
    return flows.completion(n=8, m=40, rank=1, seed=3, symmetric=False, truth_norm=8.0)


def test_a_fully_observed_matrix_is_its_own_minimiser():
    problem = flows.completion(n=5, m=25, rank=2, seed=0, symmetric=False)
    for solver in ("CLARABEL", "SCS"):
        reference = references.min_nuclear(problem, solver=solver)
        # The only interpolant: both solvers run to 1e-8 or tighter relative gaps.
        assert reference.distance(problem.truth) < 1e-6, solver


def test_scs_and_clarabel_agree_on_a_sparse_completion(completion):
    clarabel = references.min_nuclear(completion, solver="CLARABEL")
    scs = references.min_nuclear(completion, solver="SCS")
    # Interpolants (feasibility at the solvers' tolerances) with the nuclear norm as objective, at most the truth's
    # (the truth is feasible). The objectives agree to the solvers' gaps (1e-8 relative); the minimisers only to
    # ~sqrt of that, the objective being flat to first order along its face (measured 1.7e-5 here).
    for reference in (clarabel, scs):
        assert reference.feasibility < 1e-7
        assert reference.objective == pytest.approx(np.linalg.svd(reference.X, compute_uv=False).sum(), rel=1e-6)
        assert reference.objective <= np.linalg.svd(np.asarray(completion.truth), compute_uv=False).sum() + 1e-6
        assert reference.iterations > 0
    assert scs.objective == pytest.approx(clarabel.objective, rel=1e-8)
    assert scs.distance(clarabel.X) < 1e-4


def test_the_identity_weighted_minimiser_is_the_minimum_nuclear_norm(completion):
    weighted = references.min_weighted_nuclear(completion, np.eye(8), np.eye(8))
    assert weighted.distance(references.min_nuclear(completion).X) < 1e-6


def test_an_unknown_solver_is_refused(completion):
    with pytest.raises(ValueError, match="solver must be one of"):
        references.min_nuclear(completion, solver="MOSEK")
