"""The flatness weights and the non-uniform sampling (the trace identity at a non-interpolant and where the UV^T
flow lands against the flattest interpolant are rows of analysis.checks.flatness_checks)."""

import numpy as np

import flows
from analysis import flatness


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
