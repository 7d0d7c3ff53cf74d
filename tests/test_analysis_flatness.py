"""The scaled Hessian trace of f(L, R) = ||A(L R^T) - b||^2 and the flattest interpolant."""

import numpy as np
import pytest

import flows
from analysis import flatness


@pytest.mark.parametrize("problem", [
    flows.sensing(n=6, m=20, rank=2, seed=0, symmetric=False, n2=9),  # rectangular: d1 != d2 tells the D's apart
    flatness.nonuniform_completion(8, 30, 2, seed=0),
], ids=["sensing", "completion"])
def test_trace_identity(problem):
    """HVP traces of both Hessian blocks and str against 2m(||D1 L||^2 + ||D2 R||^2), at a non-interpolant."""
    d1, d2 = problem.shape
    rng = np.random.default_rng(1)
    identity = flatness.trace_identity(problem, rng.standard_normal((d1, 3)), rng.standard_normal((d2, 3)))
    assert identity.relative_error <= 1e-10
    # SCIENCE.md's pairing is the scaled trace; the plain trace carries the other factor's dimension.
    plain = identity.trace_LL + identity.trace_RR
    assert abs(plain - identity.formula_scaled) / plain > 1e-2


def test_completion_weights_are_sampling_rates():
    problem = flatness.nonuniform_completion(8, 30, 2, seed=0)
    D1, D2 = flatness.weights(problem)
    dense = flows.Problem.from_matrices(problem.matrices(), problem.y)  # the generic formula on the same A_i
    D1_dense, D2_dense = flatness.weights(dense)
    np.testing.assert_allclose(D1, D1_dense, atol=1e-14)
    np.testing.assert_allclose(D2, D2_dense, atol=1e-14)


def test_nonuniform_sampling_is_skewed():
    counts = np.bincount(np.asarray(flatness.nonuniform_completion(20, 150, 2, seed=0, skew=8.0).rows), minlength=20)
    assert counts[-5:].sum() > 3 * counts[:5].sum()


@pytest.fixture(scope="module", params=[1.0, 8.0], ids=["uniform", "skewed"])
def landing(request):
    problem = flatness.nonuniform_completion(10, 45, 2, seed=0, skew=request.param)
    flow = flows.Factored(problem)
    traj = flows.solve(flow, flow.init(scale=1e-3, kind="balanced"), t1=1e6, ts=np.array([0.0]), stop_loss=1e-14,
                       rtol=1e-8, atol=1e-12)
    return problem, traj, flatness.compare_flattest(problem, (traj.states[0][-1], traj.states[1][-1]))


def test_flattest_factorization_attains_the_formula(landing):
    problem, _, comparison = landing
    D1, D2 = flatness.weights(problem)
    formula = 4 * problem.m * np.linalg.svd(D1 @ comparison.flattest.X @ D2, compute_uv=False).sum()
    assert comparison.str_flattest == pytest.approx(formula, rel=1e-8)


def test_flow_is_no_flatter_than_the_flattest_interpolant(landing):
    problem, traj, comparison = landing
    assert traj.loss[-1] < 1e-14  # an interpolant up to ~1e-7 residual
    assert comparison.str_flow >= comparison.str_flattest * (1 - 1e-6)
    assert traj.conserved_drift()["U^T U - V^T V"].max() <= 1e-7  # balanced start stays balanced
