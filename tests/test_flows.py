"""Flows under gradient flow: exact solutions, equivalences between parameterizations, invariants."""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import analysis
import flows
from flows._solve import Plan, _failure_message, integrate

RTOL, ATOL = 1e-8, 1e-12


@pytest.fixture(scope="module")
def sensing():
    return flows.sensing(n=5, m=8, rank=1, seed=0)


def _rel(a, b):
    return np.linalg.norm(a - b, axis=(-2, -1)) / np.linalg.norm(b, axis=(-2, -1))


@pytest.mark.parametrize("kind, init", [("sensing", "zero"), ("sensing", "gaussian"), ("completion", "identity")])
def test_direct_flow_matches_closed_form(kind, init):
    """W(t) = W0 - A*(G^+ (I - e^{-Gt}) r0): the integrator's relative error stays within 100 x rtol."""
    problem = (
        flows.sensing(n=5, m=8, rank=1, seed=1) if kind == "sensing" else flows.completion(n=5, m=8, rank=1, seed=1)
    )
    flow = flows.Flow(problem, flows.Direct())
    W0 = flow.init(scale=0.3, kind=init, seed=2)
    ts = np.array([0.0, 1e-3, 1e-2, 0.1, 1.0, 10.0, 50.0])
    traj = flows.solve(flow, W0, t1=50.0, ts=ts, rtol=RTOL, atol=ATOL)
    exact = np.asarray(analysis.closed_form.direct_flow(problem, W0, ts))
    assert _rel(traj.W[1:], exact[1:]).max() <= 100 * RTOL
    assert traj.loss[-1] < 1e-12  # converged: the tail of the comparison is the limit itself


def test_symmetric_is_factored_from_equal_factors_at_twice_the_time(sensing):
    """For symmetric A_i, U U^T's flow U' = -2 S U is the U V^T flow from V = U at time 2t."""
    U0 = flows.Flow(sensing, flows.Symmetric()).init(scale=0.1, kind="gaussian", seed=3)
    ts = np.array([0.0, 0.05, 0.2, 1.0, 3.0])
    sym = flows.solve(flows.Flow(sensing, flows.Symmetric()), U0, t1=3.0, ts=ts, rtol=RTOL, atol=ATOL)
    fac = flows.solve(flows.Flow(sensing, flows.Factored()), (U0, U0), t1=6.0, ts=2 * ts, rtol=RTOL, atol=ATOL)
    assert _rel(sym.W[1:], fac.W[1:]).max() <= 100 * RTOL
    np.testing.assert_allclose(fac.states[0], fac.states[1], rtol=0, atol=1e-14)  # U stays equal to V


def test_deep_depth_one_is_direct_and_depth_two_is_factored():
    problem = flows.sensing(n=4, m=6, rank=1, seed=4, symmetric=False)
    ts = np.array([0.0, 0.1, 1.0, 5.0])
    W0 = flows.Flow(problem, flows.Direct()).init(scale=0.2, kind="gaussian", seed=1)
    direct = flows.solve(flows.Flow(problem, flows.Direct()), W0, t1=5.0, ts=ts, rtol=RTOL, atol=ATOL)
    deep1 = flows.solve(flows.Flow(problem, flows.Deep(depth=1)), (W0,), t1=5.0, ts=ts, rtol=RTOL, atol=ATOL)
    assert _rel(deep1.W[1:], direct.W[1:]).max() <= 100 * RTOL

    U0, V0 = flows.Flow(problem, flows.Factored()).init(scale=0.3, kind="gaussian", seed=2)
    fac = flows.solve(flows.Flow(problem, flows.Factored()), (U0, V0), t1=5.0, ts=ts, rtol=RTOL, atol=ATOL)
    deep2 = flows.solve(flows.Flow(problem, flows.Deep(depth=2)), (V0.T, U0), t1=5.0, ts=ts, rtol=RTOL, atol=ATOL)
    assert _rel(deep2.W[1:], fac.W[1:]).max() <= 100 * RTOL


@pytest.mark.parametrize(
    "make, init",
    [
        (lambda p: flows.Flow(p, flows.Factored()), "gaussian"),
        (lambda p: flows.Flow(p, flows.Factored(width=3)), "balanced"),
        (lambda p: flows.Flow(p, flows.Deep(depth=3)), "balanced"),
        (lambda p: flows.Flow(p, flows.Deep(depth=4, width=(3, 6, 4))), "gaussian"),
    ],
)
def test_conserved_quantities_drift_below_1e7_over_a_run_to_convergence(sensing, make, init):
    flow = make(sensing)
    traj = flows.solve(flow, flow.init(scale=0.5, kind=init, seed=0), t1=1e4, stop_loss=1e-14, rtol=1e-10, atol=1e-12)
    assert traj.stats["stopped_by_loss"] and traj.loss[-1] < 1e-14
    drift = traj.conserved_drift()
    assert drift and max(d.max() for d in drift.values()) <= 1e-7


def test_inits_have_their_stated_form(sensing):
    np.testing.assert_allclose(
        flows.Flow(sensing, flows.Symmetric()).product(flows.Flow(sensing, flows.Symmetric()).init(1e-2)),
        1e-4 * np.eye(5),
        atol=1e-18,
    )
    deep = flows.Flow(sensing, flows.Deep(depth=3, width=(4, 7)))
    factors = deep.init(scale=0.5, kind="balanced", seed=1)
    assert [f.shape for f in factors] == [(4, 5), (7, 4), (5, 7)]
    for P, Q in deep.conserved(factors).values():
        np.testing.assert_allclose(P, Q, atol=1e-14)
    U, V = flows.Flow(sensing, flows.Factored()).init(scale=0.5, kind="balanced", seed=1)
    np.testing.assert_allclose(U.T @ U, V.T @ V, atol=1e-14)
    U = flows.Flow(sensing, flows.Symmetric()).init(scale=2.0, kind="orthogonal", seed=1)
    np.testing.assert_allclose(U.T @ U, 4.0 * np.eye(5), atol=1e-13)


def test_stop_loss_ends_the_trajectory_at_the_stop(sensing):
    flow = flows.Flow(sensing, flows.Symmetric())
    ts = flows.default_ts(1e3, 50)
    traj = flows.solve(flow, flow.init(1e-2), t1=1e3, ts=ts, stop_loss=1e-6)
    assert traj.stats["stopped_by_loss"]
    t_stop = traj.ts[-1]
    assert t_stop < 1e3 and traj.loss[-1] < 1e-6 and traj.loss[-2] >= 1e-6
    np.testing.assert_array_equal(traj.ts[:-1], ts[ts < t_stop])
    assert traj.W.shape == (len(traj.ts), 5, 5) and jax.tree.leaves(traj.states)[0].shape[0] == len(traj.ts)
    np.testing.assert_allclose(traj.W[-1], flow.product(traj.states[-1]))


def _compiled_memory(flow, state0, ts, max_steps):
    """XLA's memory analysis of the compiled solve: (temporaries, outputs) in bytes."""
    plan = Plan.make(float(ts[-1]), ts, max_steps=max_steps).resolve(flow)
    arrays, static = eqx.partition((flow, state0, plan.arrays()), eqx.is_array)

    def run(arrays):
        flow, state0, traced = eqx.combine(arrays, static)
        return integrate(flow, state0, *traced, **plan.static())

    analysis = jax.jit(run).lower(arrays).compile().memory_analysis()
    return analysis.temp_size_in_bytes, analysis.output_size_in_bytes


def test_memory_is_set_by_saved_times_not_steps(sensing):
    # Compiled memory does not grow with the step budget (1e3 vs 1e6 steps), and the output grows with the
    # saved times only. Saving every step (SaveAt(steps=True)) would make both grow with max_steps.
    flow = flows.Flow(sensing, flows.Symmetric())
    state0 = flow.init(1e-2)
    few = _compiled_memory(flow, state0, np.linspace(0, 50.0, 4), max_steps=1_000)
    many_steps = _compiled_memory(flow, state0, np.linspace(0, 50.0, 4), max_steps=1_000_000)
    assert many_steps == few
    more_times = _compiled_memory(flow, state0, np.linspace(0, 50.0, 104), max_steps=1_000)
    state_bytes = state0.size * 8
    assert more_times[1] - few[1] >= 100 * state_bytes  # the 100 extra saved states
    assert more_times[1] - few[1] <= 100 * (state_bytes + 64)  # and little besides


def test_trajectory_metrics_on_known_matrices():
    """Effective rank exp(entropy of sigma / sum sigma): n for I, 1 for rank one, 2 for two equal values."""
    W = np.stack([np.eye(5), np.outer(np.arange(5.0), np.ones(5)), np.diag([3.0, 3.0, 0, 0, 0]), np.zeros((5, 5))])
    truth = np.diag([3.0, 3.0, 0, 0, 0])
    traj = flows.Trajectory(ts=np.arange(4.0), states=W, W=W, loss=np.zeros(4), truth=truth)
    np.testing.assert_allclose(traj.effective_rank[:3], [5.0, 1.0, 2.0], rtol=1e-12)
    assert np.isnan(traj.effective_rank[3])
    np.testing.assert_allclose(traj.nuclear_norm, [5.0, np.linalg.norm(W[1]), 6.0, 0.0], rtol=1e-12)
    np.testing.assert_allclose(traj.relative_error, np.linalg.norm(W - truth, axis=(1, 2)) / np.sqrt(18.0))


def test_trajectory_records_the_flow(sensing):
    # W, the loss and the conserved pair recomputed in numpy from the saved states and the dense A_i: a
    # trajectory that recorded another state's product, or the penalized objective as the loss, fails.
    flow = flows.Flow(sensing, flows.Factored(), penalty=flows.Frobenius(), strength=0.1)
    traj = flows.solve(flow, flow.init(0.3, kind="gaussian"), t1=10.0, ts=np.array([0.0, 1.0, 10.0]))
    U, V = (np.asarray(x) for x in traj.states)
    W = np.einsum("tik,tjk->tij", U, V)
    np.testing.assert_allclose(traj.W, W, rtol=1e-13, atol=1e-15)
    A, y = np.asarray(sensing.A), np.asarray(sensing.y)
    residual = np.einsum("mij,tij->tm", A, W) - y
    np.testing.assert_allclose(traj.loss, 0.5 * np.sum(residual**2, axis=1), rtol=1e-12)
    P, Q = traj.conserved["U^T U - V^T V"]
    np.testing.assert_allclose(P, np.einsum("tki,tkj->tij", U, U), rtol=1e-13)
    np.testing.assert_allclose(Q, np.einsum("tki,tkj->tij", V, V), rtol=1e-13)


def test_save_load_roundtrip_and_corruption(tmp_path, sensing):
    flow = flows.Flow(sensing, flows.Deep(depth=3))
    traj = flows.solve(flow, flow.init(0.3, "balanced"), t1=1.0, ts=np.array([0.0, 0.5, 1.0]))
    path = traj.save(tmp_path / "run")
    loaded = flows.Trajectory.load(path)
    for name in ("ts", "W", "loss", "truth"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(traj, name))
    assert isinstance(loaded.states, tuple) and len(loaded.states) == 3
    for a, b in zip(loaded.states, traj.states):
        np.testing.assert_array_equal(a, b)
    assert loaded.conserved_drift().keys() == traj.conserved_drift().keys()
    meta = (path / "meta.json").read_text()
    assert '"Deep"' in meta and '"diffrax"' in meta and '"rtol"' in meta
    (path / "arrays.npz").write_bytes((path / "arrays.npz").read_bytes()[:-10])
    with pytest.raises(flows.CorruptTrajectoryError):
        flows.Trajectory.load(path)


class _BlowUp(flows.AbstractDynamics):
    """W' = W^2 entrywise: from W = 1 it blows up at t = 1."""

    def vector_field(self, t, state, gradient):
        return state**2

    def optimizer(self, step):
        return optax.sgd(step)


def test_solver_failures_name_the_time_reached(sensing):
    flow = flows.Flow(sensing, flows.Symmetric())
    with pytest.raises(flows.SolverError, match=r"max_steps = 20 at t = .* Raise max_steps"):
        flows.solve(flow, flow.init(1e-2), t1=100.0, max_steps=20)
    blow = flows.Flow(sensing, flows.Direct(), dynamics=_BlowUp())
    with pytest.raises(flows.SolverError, match=r"failed at t = \S+ of t1 = 2: .*non-finite or blowing up") as err:
        flows.solve(blow, jnp.ones((5, 5)), t1=2.0, max_steps=5000)
    assert abs(err.value.t_reached - 1.0) < 1e-3


def _no_compile(*args, **kwargs):
    raise AssertionError("the solve was compiled before the input was checked")


BAD_SOLVES = [
    (lambda f, s: flows.solve(f, s, t1=-1.0), "t1"),
    (lambda f, s: flows.solve(f, s, t1=1.0, rtol=0.0), "rtol"),
    (lambda f, s: flows.solve(f, s, t1=1.0, ts=[0.0, 2.0]), "ts"),
    (lambda f, s: flows.solve(f, s, t1=1.0, ts=[0.5, 0.1]), "ts"),
    (lambda f, s: flows.solve(f, s, t1=1.0, stop_loss=-1.0), "stop_loss"),
    (lambda f, s: flows.solve(f, s[:, :3], t1=1.0), "state0"),
    (lambda f, s: flows.solve(f, s.at[0, 0].set(jnp.nan), t1=1.0), "non-finite"),
    (lambda f, s: flows.solve(f, (s, s), t1=1.0), "state0"),
    (lambda f, s: flows.solve(f, s, t1=1.0, max_steps=0), "max_steps"),
    (lambda f, s: flows.solve(f, s, t1=1.0, max_steps=2**63), "max_steps must be at most"),  # past int64
    (lambda f, s: flows.solve(f, s, t1=1.0, rtol=2.0), "below 1"),
    (lambda f, s: flows.solve(f, s, t1=1.0, dt0=-0.1), "dt0"),
    (lambda f, s: flows.solve(f, s, t1=1.0, dt0=0.0), "dt0"),
    (lambda f, s: flows.solve(f, s, t1=1.0, dt0=float("nan")), "dt0"),
    (lambda f, s: flows.solve(f, s, t1=1.0, dt0=2.0), "larger than t1"),
    (lambda f, s: flows.default_ts(1.0, 1), "num >= 2"),
    (lambda f, s: f.init(scale=0.0), "scale"),
    (lambda f, s: f.init(scale=-1e-3), "scale"),
    (lambda f, s: f.init(scale=float("nan")), "scale"),
    (lambda f, s: f.init(kind="spiral"), "unknown init kind"),
    (lambda f, s: f.init(kind="balanced"), "does not apply"),
    (lambda f, s: flows.solver_by_name("euler-maruyama"), "unknown solver"),
    (lambda f, s: flows.Flow(f.problem, flows.Deep(depth=0)), "depth"),
    (lambda f, s: flows.Flow(f.problem, flows.Deep(depth=3, width=(2,))), "hidden widths"),
    (lambda f, s: flows.Flow(f.problem, flows.Symmetric(width=0)), "width"),
    (lambda f, s: flows.Flow(f.problem, flows.Symmetric(width=(3, 4))), "a list of widths is Deep.s"),
    (lambda f, s: flows.Flow(flows.sensing(n=3, m=2, rank=1, symmetric=False, n2=4), flows.Symmetric()), "square"),
]


@pytest.mark.parametrize("call, message", BAD_SOLVES)
def test_bad_input_is_refused_before_compiling(monkeypatch, sensing, call, message):
    monkeypatch.setattr(flows._solve, "_integrate", _no_compile)
    flow = flows.Flow(sensing, flows.Symmetric())
    with pytest.raises(ValueError, match=message):
        call(flow, flow.init(1e-2))


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda f, s: flows.solve(f, s, t1=1.0, solver="tsit5"), "flows.solver_by_name"),
        (lambda f, s: flows.solve(f, s, t1=1.0, stepsize_controller=1e-3), "step-size controller"),
    ],
)
def test_a_solver_or_controller_of_another_type_is_refused_before_compiling(
    monkeypatch, sensing, call, message, unchecked_types
):
    test_bad_input_is_refused_before_compiling(monkeypatch, sensing, call, message)


def test_other_solvers_agree(sensing):
    flow = flows.Flow(sensing, flows.Symmetric())
    ts = np.array([0.0, 0.5, 2.0])
    ref = flows.solve(flow, flow.init(0.1), t1=2.0, ts=ts, rtol=1e-10, atol=1e-12)
    alt = flows.solve(flow, flow.init(0.1), t1=2.0, ts=ts, rtol=1e-10, atol=1e-12, solver=diffrax.Dopri8())
    assert _rel(alt.W[1:], ref.W[1:]).max() < 1e-8


def test_changing_tolerances_times_and_data_does_not_recompile(caplog, sensing):
    flow = flows.Flow(sensing, flows.Symmetric())
    ts = np.array([0.0, 1.0, 2.0])
    flows.solve(flow, flow.init(1e-2), t1=2.0, ts=ts, rtol=1e-8, stop_loss=1e-3)
    other = flows.Flow(flows.sensing(n=5, m=8, rank=1, seed=9), flows.Symmetric())
    with jax.log_compiles(), caplog.at_level("WARNING"):
        flows.solve(other, other.init(1e-1), t1=3.0, ts=ts + 0.5, rtol=1e-6, stop_loss=1e-5)
    assert not [r for r in caplog.records if "Compiling" in r.getMessage() and "integrate" in r.getMessage()]
    # An absolute tolerance is another controller (one compile), then its value is data too.
    flows.solve(flow, flow.init(1e-2), t1=2.0, ts=ts, rtol=1e-8, atol=1e-10, stop_loss=1e-3)
    caplog.clear()
    with jax.log_compiles(), caplog.at_level("WARNING"):
        flows.solve(other, other.init(1e-1), t1=3.0, ts=ts + 0.5, rtol=1e-6, atol=1e-9, stop_loss=1e-5)
    assert not [r for r in caplog.records if "Compiling" in r.getMessage() and "integrate" in r.getMessage()]
    with jax.log_compiles(), caplog.at_level("WARNING"):
        flows.solve(other, other.init(1e-1), t1=3.0, ts=np.linspace(0.0, 1.0, 7))  # shapes no other test uses
    assert [r for r in caplog.records if "Compiling" in r.getMessage() and "integrate" in r.getMessage()]


class _Counted(flows.GradientFlow):
    """Gradient flow that counts its vector-field evaluations on the host, exactly."""

    calls = [0]

    def vector_field(self, t, U, gradient):
        jax.debug.callback(lambda: self.calls.__setitem__(0, self.calls[0] + 1))
        return super().vector_field(t, U, gradient)


@pytest.mark.parametrize("name", ["tsit5", "dopri8", "heun", "merson"])
def test_vf_evaluation_count_matches_an_exact_count(sensing, name):
    _Counted.calls[0] = 0
    flow = flows.Flow(sensing, flows.Symmetric(), dynamics=_Counted())
    traj = flows.solve(flow, flow.init(1e-2), t1=2.0, ts=np.array([0.0, 2.0]), solver=flows.solver_by_name(name))
    assert traj.stats["num_rejected_steps"] > 0  # rejected steps are counted too
    assert 0 <= _Counted.calls[0] - traj.stats["vf_evaluations"] <= 3  # start-up evaluations left out


def test_a_trajectory_that_cannot_fit_is_refused_before_solving(monkeypatch):
    # 100,000 saved states of a 200 x 200 flow need ~180 GiB: refused with the size and the alternative,
    # before anything is compiled (a compile here would fail the monkeypatched _integrate).
    flow = flows.Flow(flows.completion(n=200, m=2000, rank=2), flows.Symmetric())
    monkeypatch.setattr(flows._solve, "_integrate", _no_compile)
    with pytest.raises(ValueError, match=r"saving 100000 states needs \d+ GiB .* save fewer times"):
        flows.solve(flow, flow.init(1e-3), t1=1.0, ts=np.linspace(0, 1, 100_000))


class _ModuleState(eqx.Module):
    """A state of an Equinox module with a static field: the store rebuilds both."""

    U: jax.Array
    moments: tuple
    label: str = eqx.field(static=True)
    widths: tuple = eqx.field(static=True)


def test_store_round_trips_module_states(tmp_path):
    states = _ModuleState(
        U=np.arange(18.0).reshape(2, 3, 3),
        moments=(np.ones((2, 3)), {"v": np.zeros((2, 1))}),
        label="adam",
        widths=(3, (1, 2)),
    )
    W = np.zeros((2, 3, 3))
    traj = flows.Trajectory(ts=np.array([0.0, 1.0]), states=states, W=W, loss=np.zeros(2))
    loaded = flows.Trajectory.load(traj.save(tmp_path / "module"))
    assert type(loaded.states) is _ModuleState
    assert loaded.states.label == "adam" and loaded.states.widths == (3, (1, 2))
    np.testing.assert_array_equal(loaded.states.U, states.U)
    assert isinstance(loaded.states.moments, tuple) and set(loaded.states.moments[1]) == {"v"}
    assert jax.tree.structure(loaded.states) == jax.tree.structure(states)


def test_default_save_times_end_at_t1_for_every_count():
    for num in (2, 3, 200):
        ts = flows.default_ts(100.0, num)
        assert len(ts) == num and ts[0] == 0.0 and ts[-1] == 100.0 and np.all(np.diff(ts) > 0)


def test_a_run_that_reaches_t1_past_its_last_save_time_ends_with_its_state_there(sensing):
    # With or without a stop it has not reached, the trajectory ends where the run ended: the save times, then t1.
    flow = flows.Flow(sensing, flows.Symmetric())
    full = flows.solve(flow, flow.init(1e-2), t1=2.0, ts=[0.0, 1.0, 2.0])
    for stop_loss in (None, 1e-30):
        traj = flows.solve(flow, flow.init(1e-2), t1=2.0, ts=[0.0, 1.0], stop_loss=stop_loss)
        assert not traj.stats["stopped_by_loss"] and list(traj.ts) == [0.0, 1.0, 2.0] and traj.stats["t_final"] == 2.0
        np.testing.assert_allclose(traj.W, full.W, rtol=0, atol=1e-6 * np.abs(full.W).max())
    # sweep keeps such records apart from the layout without the last entry.
    plan = Plan.make(2.0, [0.0, 1.0]).resolve(flow)
    plain = {"schema": flows.SCHEMA, "flow": flow, "state0": flow.init(1e-2), "solve": plan}
    assert flows._sweep.run_key(flow, flow.init(1e-2), plan) != flows.fingerprint(plain)
    plan = Plan.make(2.0, [0.0, 2.0]).resolve(flow)
    plain["solve"] = plan
    assert flows._sweep.run_key(flow, flow.init(1e-2), plan) == flows.fingerprint(plain)


def test_a_budget_spent_on_mostly_accepted_steps_reads_as_the_budget():
    # Two rejected of five steps is not a collapse: the message names max_steps.
    stats = {"num_steps": 5, "num_rejected_steps": 2}
    message = _failure_message(diffrax.RESULTS.max_steps_reached, 0.1, 1e300, stats, 5, 1e-8)
    assert "reached max_steps = 5" in message
    stats = {"num_steps": 5, "num_rejected_steps": 3}
    message = _failure_message(diffrax.RESULTS.max_steps_reached, 0.1, 1e300, stats, 5, 1e-8)
    assert "collapsed" in message
