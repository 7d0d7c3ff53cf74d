"""Measurement problems: adjointness, storage forms against dense references, and bad input."""

import hypothesis.strategies as st
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings

import flows

SETTINGS = settings(max_examples=20, deadline=None)


def _problem(kind: str, n: int, m: int, seed: int):
    if kind == "sensing":
        return flows.sensing(n=n, m=m, rank=1, seed=seed)
    if kind == "sensing-asymmetric":
        return flows.sensing(n=n, m=m, rank=1, seed=seed, symmetric=False, n2=n + 1)
    if kind == "completion":
        return flows.completion(n=n, m=min(m, n * n), rank=1, seed=seed, symmetric=False, n2=n + 2)
    if kind == "commuting":
        return flows.commuting(n=n, m=m, rank=1, seed=seed)
    rng = np.random.default_rng(seed)
    if kind == "matrices":
        return flows.Problem.from_matrices(rng.standard_normal((m, n, n + 1)), rng.standard_normal(m))
    rows, cols = np.divmod(rng.choice(n * n, size=min(m, n * n), replace=False), n)
    return flows.Problem.from_entries((n, n), rows, cols, rng.standard_normal(len(rows)))


KINDS = ["sensing", "sensing-asymmetric", "completion", "commuting", "matrices", "entries"]


@pytest.mark.parametrize("kind", KINDS)
@SETTINGS
@given(n=st.integers(1, 6), m=st.integers(1, 12), seed=st.integers(0, 2**31 - 1))
def test_adjoint_identity(kind, n, m, seed):
    """<A(W), r> = <W, A*(r)> for random W and r, to round-off."""
    problem = _problem(kind, n, m, seed)
    rng = np.random.default_rng(seed + 1)
    W = jnp.asarray(rng.standard_normal(problem.shape))
    r = jnp.asarray(rng.standard_normal(problem.m))
    lhs = jnp.vdot(problem.measure(W), r)
    rhs = jnp.vdot(W, problem.adjoint(r))
    scale = jnp.linalg.norm(problem.measure(W)) * jnp.linalg.norm(r) + 1.0
    assert abs(lhs - rhs) <= 1e-12 * scale


@pytest.mark.parametrize("kind", KINDS)
def test_operator_matches_dense_matrices(kind):
    """measure / adjoint / gram agree with the dense stack of A_i, whatever the storage."""
    problem = _problem(kind, 4, 7, seed=3)
    A = np.asarray(problem.matrices())
    W = np.random.default_rng(0).standard_normal(problem.shape)
    r = np.random.default_rng(1).standard_normal(problem.m)
    np.testing.assert_allclose(problem.measure(W), np.einsum("mij,ij->m", A, W), atol=1e-12)
    np.testing.assert_allclose(problem.adjoint(r), np.einsum("m,mij->ij", r, A), atol=1e-12)
    np.testing.assert_allclose(problem.gram(), A.reshape(problem.m, -1) @ A.reshape(problem.m, -1).T, atol=1e-12)
    np.testing.assert_allclose(problem.grad(W), np.einsum("m,mij->ij", problem.residual(W), A), atol=1e-12)


@pytest.mark.parametrize("kind", ["sensing", "completion", "commuting"])
def test_truth_interpolates_and_has_its_rank(kind):
    problem = {"sensing": flows.sensing, "completion": flows.completion, "commuting": flows.commuting}[kind](
        n=8, m=30, rank=2, seed=5)
    truth = np.asarray(problem.truth)
    assert problem.loss(problem.truth) <= 1e-25
    s = np.linalg.svd(truth, compute_uv=False)
    assert s[1] > 1e-3 and s[2] < 1e-12 * s[0]
    assert np.isclose(np.linalg.norm(truth), 1.0)
    np.testing.assert_allclose(truth, truth.T, atol=1e-14)
    assert np.linalg.eigvalsh(truth).min() > -1e-12


def test_commuting_measurements_commute_and_completion_is_cheap():
    problem = flows.commuting(n=6, m=4, rank=2, seed=0)
    A = np.asarray(problem.matrices())
    for i in range(4):
        for j in range(4):
            np.testing.assert_allclose(A[i] @ A[j], A[j] @ A[i], atol=1e-12)
    big = flows.completion(n=1000, m=10_000, rank=5, seed=0)
    assert big.rows.shape == (10_000,)
    assert not any(leaf.size > 10**6 for leaf in (big.rows, big.cols, big.y))  # no m x n x n stack


def test_seeds_reproduce_and_differ():
    a, b, c = (flows.sensing(n=5, m=6, rank=1, seed=s) for s in (0, 0, 1))
    np.testing.assert_array_equal(a.A, b.A)
    assert not np.allclose(a.A, c.A)


BAD_PROBLEMS = [
    (lambda: flows.sensing(n=4, m=6, rank=5), "rank"),
    (lambda: flows.sensing(n=4, m=0, rank=1), "m must be"),
    (lambda: flows.sensing(n=0, m=3, rank=1), "n must be"),
    (lambda: flows.sensing(n=4, m=3, rank=1, symmetric=True, n2=5), "square"),
    (lambda: flows.completion(n=3, m=10, rank=1), "exceed"),
    (lambda: flows.completion(n=3, m=2.5, rank=1), "m must be"),
    (lambda: flows.commuting(n=3, m=2, rank=4), "rank"),
    (lambda: flows.Problem.from_matrices(np.ones((2, 3)), np.ones(2)), "shape"),
    (lambda: flows.Problem.from_matrices(np.ones((2, 3, 3)), np.ones(3)), "y must have shape"),
    (lambda: flows.Problem.from_matrices(np.full((2, 3, 3), np.nan), np.ones(2)), "non-finite"),
    (lambda: flows.Problem.from_matrices(np.ones((2, 3, 3)), [1.0, np.inf]), "non-finite"),
    (lambda: flows.Problem.from_matrices(np.zeros((0, 3, 3)), np.ones(0)), "m = 0"),
    (lambda: flows.Problem.from_entries((3, 3), [0, 5], [0, 1], [1.0, 2.0]), "out of range"),
    (lambda: flows.Problem.from_entries((3, 3), [0, 0], [1, 1], [1.0, 2.0]), "twice"),
    (lambda: flows.Problem.from_entries((3, 3), [], [], []), "m = 0"),
    (lambda: flows.Problem.from_entries((3, 3), [0], [1], [np.nan]), "non-finite"),
    (lambda: flows.Problem.from_entries((3,), [0], [1], [1.0]), "shape"),
]


@pytest.mark.parametrize("make, message", BAD_PROBLEMS)
def test_bad_problem_input(make, message):
    with pytest.raises(ValueError, match=message):
        make()
