"""Measurement problems: adjointness, storage forms against dense references, and bad input."""

import time

import equinox as eqx
import hypothesis.strategies as st
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings

import flows
import flows._validate

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
    if kind == "rank-one":
        return flows.rank_one_sensing(n=n, m=m, rank=1, seed=seed)
    if kind == "rank-one-asymmetric":
        return flows.rank_one_sensing(n=n, m=m, rank=1, seed=seed, symmetric=False, n2=n + 1)
    rng = np.random.default_rng(seed)
    if kind == "matrices":
        return flows.Problem.from_matrices(rng.standard_normal((m, n, n + 1)), rng.standard_normal(m))
    rows, cols = np.divmod(rng.choice(n * n, size=min(m, n * n), replace=False), n)
    return flows.Problem.from_entries((n, n), rows, cols, rng.standard_normal(len(rows)))


KINDS = [
    "sensing",
    "sensing-asymmetric",
    "completion",
    "commuting",
    "rank-one",
    "rank-one-asymmetric",
    "matrices",
    "entries",
]


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


@pytest.mark.parametrize("kind", [k for k in KINDS if k not in ("completion", "entries")])
@SETTINGS
@given(n=st.integers(1, 6), m=st.integers(1, 12), seed=st.integers(0, 2**31 - 1), scale=st.floats(1e-3, 1e3))
def test_the_loss_floor_is_below_the_loss_and_equals_it_where_the_residual_is_along_y(kind, n, m, seed, scale):
    """LossFloor(W) = (<A*(u), W> - |y|)^2 / 2 <= L(W) for random W of any scale (Cauchy-Schwarz; round-off of the
    loss's size allowed); at W = 0 the residual is -y, and the floor is the loss. A floor of |<A*(u), W>| or without
    the square's half fails it."""
    problem = _problem(kind, n, m, seed)
    floor = problem.loss_floor()
    assert floor is not None
    W = jnp.asarray(scale * np.random.default_rng(seed + 1).standard_normal(problem.shape))
    loss = problem.loss(W)
    assert floor(W) <= loss * (1 + 1e-12) + 1e-300
    zero = jnp.zeros(problem.shape)
    assert float(floor(zero)) == pytest.approx(float(problem.loss(zero)), rel=1e-12)


@pytest.mark.parametrize("kind", ["sensing", "sensing-asymmetric", "commuting", "rank-one", "rank-one-asymmetric"])
def test_at_an_interpolating_w_the_floor_and_the_loss_are_within_the_floors_resolution(kind):
    """At the truth both are round-off: the floor's resolution bounds them, so a stop below it is never judged far."""
    problem = _problem(kind, 6, 20, seed=0)
    floor = problem.loss_floor()
    assert floor is not None and problem.truth is not None
    assert float(floor(problem.truth)) <= float(floor.resolution)
    assert float(problem.loss(problem.truth)) <= float(floor.resolution)
    assert float(floor.resolution) < 1e-20 * float(problem.loss(jnp.zeros(problem.shape)))


def test_the_loss_floor_is_zero_for_zero_data_and_absent_where_measuring_is_a_gather():
    problem = flows.sensing(n=3, m=5, rank=1, seed=0)
    zero = eqx.tree_at(lambda p: p.y, problem, jnp.zeros(5))
    floor = zero.loss_floor()
    assert floor is not None and float(floor(jnp.ones((3, 3)))) == 0.0
    assert flows.completion(n=4, m=6, rank=1, seed=0).loss_floor() is None


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


@pytest.mark.parametrize("kind", ["sensing", "completion", "commuting", "rank-one"])
def test_truth_interpolates_and_has_its_rank(kind):
    problem = {
        "sensing": flows.sensing,
        "completion": flows.completion,
        "commuting": flows.commuting,
        "rank-one": flows.rank_one_sensing,
    }[kind](n=8, m=30, rank=2, seed=5)
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


def _rank_one_and_dense(symmetric: bool, n: int = 5, m: int = 12, seed: int = 2):
    """A rank-one sensing problem and the dense problem of the same A_i, y and truth."""
    problem = flows.rank_one_sensing(n=n, m=m, rank=1, seed=seed, symmetric=symmetric)
    dense = flows.Problem.from_matrices(problem.matrices(), problem.y, truth=problem.truth)
    return problem, dense


def test_rank_one_is_stored_as_vectors():
    symmetric = flows.rank_one_sensing(n=6, m=9, rank=2, seed=0)
    assert symmetric.symmetric and symmetric.right is None and symmetric.left.shape == (9, 6)
    A = np.asarray(symmetric.matrices())
    np.testing.assert_array_equal(A, A.transpose(0, 2, 1))
    assert np.all(np.linalg.eigvalsh(A)[:, :-1] > -1e-12)  # a_i a_i^T: PSD of rank one
    asymmetric = flows.rank_one_sensing(n=6, m=9, rank=2, seed=0, symmetric=False, n2=4)
    assert not asymmetric.symmetric and asymmetric.left.shape == (9, 6) and asymmetric.right.shape == (9, 4)
    assert np.linalg.matrix_rank(np.asarray(asymmetric.matrices())[0]) == 1
    np.testing.assert_array_equal(flows.rank_one_sensing(n=6, m=9, rank=2, seed=0).left, symmetric.left)
    noisy = flows.rank_one_sensing(n=6, m=9, rank=2, seed=0, noise=0.1)
    assert 0 < np.abs(np.asarray(noisy.y) - np.asarray(symmetric.y)).max() < 1.0


FLOWS_ON_RANK_ONE = {
    "direct": (False, flows.Direct),
    "symmetric": (True, flows.Symmetric),
    "symmetric, square a_i b_i^T": (False, flows.Symmetric),  # the transposed sandwich terms with a_i != b_i
    "factored": (False, flows.Factored),
    "deep": (False, lambda: flows.Deep(depth=3)),
}


@pytest.mark.parametrize("name", FLOWS_ON_RANK_ONE)
def test_rank_one_kernel_matches_dense(name):
    """The kernel from the sandwich form against the default dense path (m pullbacks of the dense A_i),
    at a generic state; both are sums of the same products, so they agree to round-off."""
    symmetric, parameterization = FLOWS_ON_RANK_ONE[name]
    problem, dense = _rank_one_and_dense(symmetric)
    # The kernel is structure alone: the truth (asymmetric for a_i b_i^T, which U U^T cannot reach) is dropped.
    problem, dense = (eqx.tree_at(lambda p: p.truth, p, None) for p in (problem, dense))
    flow, dense_flow = flows.Flow(problem, parameterization()), flows.Flow(dense, parameterization())
    state = flow.init(scale=0.7, kind="gaussian", seed=3)
    theta = flow.gauss_newton(state).kernel()
    reference = dense_flow.gauss_newton(state).kernel()
    assert theta.shape == (problem.m, problem.m)
    np.testing.assert_allclose(theta, reference, rtol=1e-12, atol=1e-12 * np.abs(reference).max())


def test_rank_one_flow_matches_dense():
    """The same flow on both storages: at rtol 1e-10 each solve is ~1e-10 accurate, so they agree to 1e-8
    relative; a wrong operator would change W at O(1). (The stiff solver's kernel: the test above.)"""
    problem, dense = _rank_one_and_dense(symmetric=True, m=14)
    flow, dense_flow = flows.Flow(problem, flows.Symmetric()), flows.Flow(dense, flows.Symmetric())
    rank_one, reference = (
        flows.solve(f, f.init(scale=0.1), t1=2.0, ts=np.linspace(0.0, 2.0, 9), rtol=1e-10, atol=1e-12)
        for f in (flow, dense_flow)
    )
    scale = np.abs(reference.W).max()
    np.testing.assert_allclose(rank_one.W, reference.W, rtol=1e-8, atol=1e-8 * scale)
    assert rank_one.loss[-1] < 1e-2 * rank_one.loss[0]  # the flow moved: the comparison is not of two inits


def test_rank_one_asymmetric_vector_field_matches_dense():
    """a_i b_i^T with a_i != b_i: the factored flow's vector field on both storages, at generic states, to round-off."""
    problem, dense = _rank_one_and_dense(symmetric=False)
    flow, dense_flow = flows.Flow(problem, flows.Factored()), flows.Flow(dense, flows.Factored())
    for seed in range(3):
        state = flow.init(scale=0.7, kind="gaussian", seed=seed)
        for got, want in zip(flow.vector_field(0.0, state), dense_flow.vector_field(0.0, state)):
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12 * np.abs(want).max())


def test_too_large_for_memory_is_refused_at_once():
    """n = 1000, m = 20,000 Gaussian sensing would take 149 GiB: refused before the generator draws anything."""
    available = flows._validate.available_memory()
    if available is not None and available > 160 * 2**30:
        pytest.skip("this machine has room for the 149 GiB")
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"149 GiB.*rank_one_sensing"):
        flows.sensing(n=1000, m=20_000, rank=2)
    assert time.perf_counter() - start < 1.0


MAKERS = {
    "sensing": lambda: flows.sensing(n=4, m=6, rank=1),
    "rank-one": lambda: flows.rank_one_sensing(n=4, m=6, rank=1),
    "completion": lambda: flows.completion(n=4, m=6, rank=1),
    "commuting": lambda: flows.commuting(n=4, m=6, rank=1),
    "from_matrices": lambda: flows.Problem.from_matrices(np.ones((6, 4, 4)), np.ones(6)),
    "from_entries": lambda: flows.Problem.from_entries((4, 4), [0, 1], [2, 3], [1.0, 2.0]),
}


@pytest.mark.parametrize("kind", MAKERS)
def test_every_constructor_checks_memory(kind, monkeypatch):
    """With almost no memory available every constructor refuses, naming the size and an alternative."""
    MAKERS[kind]()
    monkeypatch.setattr(flows._validate, "available_memory", lambda: 1)
    with pytest.raises(ValueError, match=r"needs \S+ GiB of memory and 9.31e-10 GiB is available: use"):
        MAKERS[kind]()


def test_entries_of_a_large_matrix_are_told_apart():
    # (65536, 5) and (0, 5) in a 70000 x 65536 matrix: as int32 flat indices both are 5 (65536^2 = 2^32).
    rows = np.asarray([65536, 0], dtype=np.int32)
    problem = flows.Problem.from_entries((70_000, 65_536), rows, np.asarray([5, 5], dtype=np.int32), [1.0, 2.0])
    assert problem.m == 2


BAD_PROBLEMS = [
    (lambda: flows.sensing(n=4, m=6, rank=5), "rank"),
    (lambda: flows.sensing(n=4, m=0, rank=1), "m must be"),
    (lambda: flows.sensing(n=0, m=3, rank=1), "n must be"),
    (lambda: flows.sensing(n=4, m=3, rank=1, symmetric=True, n2=5), "square"),
    (lambda: flows.completion(n=3, m=10, rank=1), "exceed"),
    (lambda: flows.completion(n=3, m=2.5, rank=1), "m must be"),
    (lambda: flows.commuting(n=3, m=2, rank=4), "rank"),
    (lambda: flows.rank_one_sensing(n=3, m=2, rank=4), "rank"),
    (lambda: flows.rank_one_sensing(n=3, m=2, rank=1, n2=4), "square"),
    (lambda: flows.rank_one_sensing(n=3, m=2, rank=1, noise=-1.0), "noise"),
    (lambda: flows.sensing(n=3, m=2, rank=1, noise=np.nan), "noise"),
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
def test_bad_problem_input(make, message, unchecked_types):
    with pytest.raises(ValueError, match=message):
        make()


def test_sizes_and_seeds_are_checked_and_numpy_integers_key_as_ints():
    # Values of the wrong type are ValueErrors (the tests' type checks would stop them at the annotations first).
    for check, value in [
        (lambda v: flows._validate.check_positive("truth_norm", v), "a"),
        (lambda v: flows._validate.check_positive("truth_norm", v), None),
        (flows._validate.check_seed, 1.5),
        (flows._validate.check_seed, "a"),
    ]:
        with pytest.raises(ValueError):
            check(value)
    with pytest.raises(ValueError, match="seed"):
        flows.sensing(n=3, m=4, rank=1, seed=-1)
    with pytest.raises(ValueError, match="shape"):
        flows.Problem.from_entries((3.9, 2.2), [0], [1], [1.0])
    with pytest.raises(ValueError, match="n1, n2 >= 1"):
        flows.Problem.from_matrices(np.zeros((2, 0, 3)), [0.0, 0.0])
    with pytest.raises(ValueError, match="real"):
        flows.Problem.from_matrices(np.ones((2, 2, 2)) * (1 + 1j), [0.0, 0.0])
    # The same problem and parameterization whether their sizes come as Python or NumPy integers: one key.
    entries = flows.Problem.from_entries((np.int64(3), np.int64(2)), [0], [1], [1.0])
    assert entries.shape == (3, 2) and all(type(n) is int for n in entries.shape)
    assert flows.fingerprint(entries) == flows.fingerprint(flows.Problem.from_entries((3, 2), [0], [1], [1.0]))
    assert flows.fingerprint(flows.Deep(depth=3, width=np.int64(4))) == flows.fingerprint(flows.Deep(depth=3, width=4))


def test_the_gram_matrix_of_completion_counts_repeated_entries():
    # The public constructors refuse repeats; built directly, G_ij = <A_i, A_j> is 1 where entries coincide.
    problem = flows.EntryProblem(
        y=jnp.zeros(3), truth=None, shape=(2, 2), symmetric=False, rows=jnp.array([0, 0, 1]), cols=jnp.array([1, 1, 0])
    )
    dense = problem.matrices().reshape(3, -1)
    np.testing.assert_array_equal(problem.gram(), dense @ dense.T)
