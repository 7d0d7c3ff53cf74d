"""The API's refusals and failure reports: a failed solve keeps its run, flows that cannot fit are refused,
init kinds are checked against the parameterization."""

import warnings

import jax.numpy as jnp
import numpy as np
import pytest
from test_flows import _BlowUp  # W' = W^2 entrywise: from W = 1 it blows up at t = 1

import flows

SENSING = flows.sensing(n=5, m=12, rank=2, seed=0)


def test_a_failed_solve_carries_its_run_up_to_the_time_reached(tmp_path):
    flow = flows.Flow(SENSING, flows.Symmetric())
    state0 = flow.init(1e-2)
    ts = flows.default_ts(100.0, 200)
    with pytest.raises(flows.SolverError, match="max_steps = 20") as err:
        flows.solve(flow, state0, t1=100.0, ts=ts, max_steps=20)
    partial = err.value.trajectory
    assert partial.stats["failed"] and partial.stats["failure"] == str(err.value)
    assert partial.stats["num_steps"] == 20 and err.value.stats["num_steps"] == 20
    # The save times passed, then the last state reached, at the time reached.
    passed = ts[ts < err.value.t_reached]
    np.testing.assert_array_equal(partial.ts[:-1], passed)
    assert partial.ts[-1] == err.value.t_reached > passed[-1]
    # That last state is the solve's own state there: the same solve to t1 = t_reached lands on it.
    reference = flows.solve(flow, state0, t1=err.value.t_reached, ts=[0.0, err.value.t_reached])
    np.testing.assert_allclose(partial.W[-1], reference.W[-1], rtol=1e-6)
    loaded = flows.Trajectory.load(partial.save(tmp_path / "failed"))
    assert loaded.stats["failed"] and len(loaded.ts) == len(partial.ts)


def test_a_blow_up_keeps_the_finite_states_before_it():
    blow = flows.Flow(SENSING, flows.Direct(), dynamics=_BlowUp())
    with pytest.raises(flows.SolverError, match="blowing up") as err:
        flows.solve(blow, jnp.ones((5, 5)), t1=2.0, max_steps=5000)
    partial = err.value.trajectory
    assert abs(partial.ts[-1] - 1.0) < 1e-3 and np.isfinite(partial.W).all()
    # W(t) = 1 / (1 - t) entrywise: the saved states are the exact solution to the solver's tolerance.
    early = partial.ts < 0.9
    np.testing.assert_allclose(partial.W[early, 0, 0], 1 / (1 - partial.ts[early]), rtol=1e-6)


@pytest.mark.parametrize(
    "problem",
    [
        flows.sensing(n=4, m=6, rank=1, seed=0, symmetric=False),
        flows.completion(n=5, m=12, rank=2, seed=0, symmetric=False),
    ],
    ids=["sensing", "completion"],
)
def test_a_psd_parameterization_of_an_asymmetric_truth_is_refused(problem):
    with pytest.raises(ValueError, match="not symmetric"):
        flows.Flow(problem, flows.Symmetric())
    flows.Flow(problem, flows.Factored())  # U V^T fits any truth


def test_a_psd_parameterization_of_an_indefinite_truth_is_refused():
    A = np.random.default_rng(0).standard_normal((6, 3, 3))
    A = A + A.transpose(0, 2, 1)
    truth = np.diag([1.0, -0.5, 0.0])
    problem = flows.Problem.from_matrices(A, np.einsum("mij,ij->m", A, truth), truth=truth)
    with pytest.raises(ValueError, match="negative eigenvalue -0.5"):
        flows.Flow(problem, flows.Symmetric())
    flows.Flow(flows.completion(n=5, m=12, rank=2, seed=0), flows.Symmetric())  # a PSD truth is fine


def test_init_kinds_are_those_of_the_parameterization():
    symmetric = flows.Flow(SENSING, flows.Symmetric())
    with pytest.raises(
        ValueError, match="unknown init kind 'bogus'; Symmetric takes 'identity', 'orthogonal', 'gaussian'$"
    ):
        symmetric.init(kind="bogus")
    with pytest.raises(ValueError, match="'zero' does not apply to Symmetric"):
        symmetric.init(kind="zero")


@pytest.mark.parametrize("scale", [None, 0, 1e-3])
def test_the_zero_init_takes_no_scale(scale):
    direct = flows.Flow(SENSING, flows.Direct())
    np.testing.assert_array_equal(direct.init(scale, kind="zero"), np.zeros((5, 5)))
    if not scale:
        with pytest.raises(ValueError, match="scale must be a positive"):
            direct.init(scale, kind="identity")


def test_an_initial_state_is_checked_against_its_own_flows_shapes(monkeypatch):
    """The shapes of `init()` are kept per flow object (tracing init is most of a check's cost): each flow traces
    once, checks against its own shapes, refuses a state of another flow's, ignores an entry left under its id by
    another object, and its kept shapes go with it."""
    import gc
    import weakref

    import jax

    from flows._flow import _INIT_SHAPES

    traced = []
    eval_shape = jax.eval_shape
    monkeypatch.setattr(jax, "eval_shape", lambda fn, *a: traced.append(None) or eval_shape(fn, *a))
    narrow, wide = (flows.Flow(SENSING, flows.Factored(width=w)) for w in (2, 4))
    for _ in range(2):  # the second round reads the kept shapes
        narrow.check_state(narrow.init(1e-2))
        wide.check_state(wide.init(1e-2))
        with pytest.raises(ValueError, match="state0 does not match"):
            narrow.check_state(wide.init(1e-2))
        with pytest.raises(ValueError, match="state0 does not match"):
            wide.check_state(narrow.init(1e-2))
    assert len(traced) == 2
    # An entry under narrow's id that holds another object's shapes (as one left by a collected object whose id
    # was reused would) is not read.
    _INIT_SHAPES[id(narrow)] = (weakref.ref(wide), _INIT_SHAPES[id(wide)][1])
    narrow.check_state(narrow.init(1e-2))
    assert len(traced) == 3
    kept = id(narrow)
    assert kept in _INIT_SHAPES
    del narrow
    gc.collect()
    assert kept not in _INIT_SHAPES


def test_a_run_whose_product_overflows_reports_nan_metrics_without_lapack_noise(capfd):
    # Gradient descent past its stable step: the last iterate checked is finite but U U^T overflows. Its singular
    # values are undefined (NaN) and no LAPACK routine sees the inf (LAPACK prints to the process's stdout).
    flow = flows.Flow(flows.sensing(n=30, m=180, rank=2, seed=0), flows.Symmetric())
    with pytest.raises(flows.SolverError, match="non-finite") as err:
        flows.descend(flow, flow.init(scale=0.1), step=0.01, t1=1.0, ts=np.linspace(0.0, 1.0, 101), chunk=1)
    partial = err.value.trajectory
    overflowed = ~np.isfinite(partial.W).all(axis=(1, 2))
    assert overflowed[-1] and not overflowed[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        values, error = partial.singular_values, partial.relative_error
        partial.conserved_drift()
    assert np.isnan(values[overflowed]).all() and np.isinf(error[overflowed]).all()
    finite = ~overflowed
    np.testing.assert_allclose(values[finite], np.linalg.svd(partial.W[finite], compute_uv=False), rtol=1e-14)
    assert "DLASCL" not in capfd.readouterr().out
