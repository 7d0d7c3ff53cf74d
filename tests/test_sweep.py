"""flows.sweep: batched and sharded solves of a grid, saved per run, resumable after a kill."""

import collections
import concurrent.futures
import inspect
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import numpy as np
import pytest

import flows

ROOT = Path(__file__).resolve().parents[1]
T1 = 5.0
ATOL = inspect.signature(flows.sweep).parameters["atol"].default
"""sweep's default absolute tolerance, given to `solve` and `Plan` here so that they solve what sweep solves."""


def build(config):
    """Symmetric sensing, n = config['n'] (default 5), init scale alpha; depth > 1 makes it a deep product."""
    n = config.get("n", 5)
    problem = flows.sensing(n=n, m=2 * n, rank=1, seed=config.get("seed", 0))
    depth = config.get("depth", 1)
    flow = flows.Flow(problem, flows.Symmetric()) if depth == 1 else flows.Flow(problem, flows.Deep(depth=depth))
    return flow, flow.init(scale=config["alpha"])


def assert_matches_solve(run, **options):
    # Same solver, same options, one run at a time: the batched solve takes the same steps, so the two
    # agree to round-off (vmap may sum in another order; 1e-9 is that, grown over the run, and still
    # a tenth of the solver's rtol).
    traj = run.load()
    flow, state0 = build(run.config)
    solver = {cls.__name__: cls for cls in flows.SOLVERS.values()}[traj.config["solver"]]()
    alone = flows.solve(flow, state0, t1=T1, solver=solver, **{"atol": ATOL} | options)
    np.testing.assert_allclose(traj.ts, alone.ts, rtol=1e-12)
    np.testing.assert_allclose(traj.W, alone.W, rtol=1e-9, atol=1e-9 * np.abs(alone.W).max())
    assert traj.stats["num_steps"] == alone.stats["num_steps"]


def mtimes(runs):
    return {run.key: (run.path / "arrays.npz").stat().st_mtime_ns for run in runs if run.status != "failed"}


def test_sweep_solves_saves_and_resumes(tmp_path):
    configs = flows.grid(alpha=[1e-2, 1e-1], seed=[0, 1, 2])
    runs = flows.sweep(build, configs, tmp_path, t1=T1, stop_loss=1e-6, batch_size=4, progress=False)
    assert [r.config for r in runs] == configs
    assert {r.status for r in runs} == {"done"}
    # A batch into the tail (stop_loss) gets the stiff solver without the switch (see default_solver).
    assert runs[0].load().config["solver"] == "LinearlyImplicitExtrapolation"
    for run in runs:
        assert_matches_solve(run, stop_loss=1e-6)
    before = mtimes(runs)

    again = flows.sweep(build, configs, tmp_path, t1=T1, stop_loss=1e-6, batch_size=4, progress=False)
    assert {r.status for r in again} == {"cached"}
    assert mtimes(again) == before

    # A corrupt array file and a half-written run (arrays without meta) are found and recomputed.
    corrupt, partial = runs[1], runs[4]
    data = (corrupt.path / "arrays.npz").read_bytes()
    (corrupt.path / "arrays.npz").write_bytes(data[: len(data) // 2])
    (partial.path / "meta.json").unlink()
    third = flows.sweep(build, configs, tmp_path, t1=T1, stop_loss=1e-6, batch_size=4, progress=False)
    assert [r.status for r in third] == ["cached", "done", "cached", "cached", "done", "cached"]
    assert_matches_solve(third[1], stop_loss=1e-6)
    assert_matches_solve(third[4], stop_loss=1e-6)

    # Other solve options are other runs: nothing is reused across them.
    other = flows.sweep(build, configs[:2], tmp_path, t1=T1, rtol=1e-7, progress=False)
    assert {r.status for r in other} == {"done"}
    assert not {r.key for r in other} & {r.key for r in runs}


ON_CPU = pytest.mark.skipif(
    jax.default_backend() != "cpu",
    reason="about sweep's CPU default (one run per device) and runs solved on CPU; the accelerator default batches",
)


@ON_CPU
def test_cpu_default_is_one_run_at_a_time_without_vmap(tmp_path):
    """On one CPU device the default batch is one run, solved as `solve` solves it: the switching
    solver (which batched runs do not get) and the same result to the last bit."""
    configs = flows.grid(alpha=[1e-2, 1e-1])
    runs = flows.sweep(build, configs, tmp_path, t1=T1, stop_loss=1e-6, progress=False)
    for run in runs:
        traj = run.load()
        assert traj.config["solver"] == "Tsit5ThenExtrapolation"
        flow, state0 = build(run.config)
        alone = flows.solve(flow, state0, t1=T1, stop_loss=1e-6, atol=ATOL)
        np.testing.assert_array_equal(traj.W, alone.W)


def test_shapes_batch_apart(tmp_path):
    # Depth and size change the state's structure and shapes: one batch each, same answers as solve.
    configs = [{"alpha": 0.3, "depth": 1, "n": 4}, {"alpha": 0.3, "depth": 3, "n": 5}]
    runs = flows.sweep(build, configs, tmp_path, t1=T1, progress=False)
    assert {r.status for r in runs} == {"done"}
    for run in runs:
        assert_matches_solve(run)


def test_a_failed_run_does_not_sink_its_batch(tmp_path):
    # alpha = 1e80 makes W = 1e160 I: the residual overflows and the solve cannot proceed.
    configs = flows.grid(alpha=[0.1, 1e80, 0.2])
    runs = flows.sweep(build, configs, tmp_path, t1=T1, max_steps=3000, progress=False)
    assert [r.status for r in runs] == ["done", "failed", "done"]
    assert "of t1 = 5" in runs[1].message
    record = json.loads((runs[1].path / "failed.json").read_text())
    assert record["config"] == {"alpha": 1e80} and record["t_reached"] < T1
    with pytest.raises(ValueError, match="failed"):
        runs[1].load()
    assert_matches_solve(runs[0], max_steps=3000)
    assert_matches_solve(runs[2], max_steps=3000)
    again = flows.sweep(build, configs, tmp_path, t1=T1, max_steps=3000, progress=False)
    assert [r.status for r in again] == ["cached", "failed", "cached"]
    # A failure recorded under another revision of how solves fail is retried, not reused.
    (runs[1].path / "failed.json").write_text(json.dumps(record | {"revision": 1}))
    retried = flows.sweep(build, configs, tmp_path, t1=T1, max_steps=3000, progress=False)
    assert [r.status for r in retried] == ["cached", "failed", "cached"] and "retried" in retried[1].note
    assert json.loads((runs[1].path / "failed.json").read_text())["revision"] == flows._sweep.FAILURE_REVISION


def test_bad_input(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        flows.sweep(build, [], tmp_path, t1=T1)
    with pytest.raises(ValueError, match="JSON"):
        flows.sweep(build, [{"alpha": object()}], tmp_path, t1=T1)
    with pytest.raises(ValueError, match="twice"):
        flows.sweep(build, [{"alpha": 0.1}, {"alpha": 0.1}], tmp_path, t1=T1)
    with pytest.raises(ValueError, match="batch_size"):
        flows.sweep(build, [{"alpha": 0.1}], tmp_path, t1=T1, batch_size=0)
    with pytest.raises(ValueError, match="t1"):
        flows.sweep(build, [{"alpha": 0.1}], tmp_path, t1=-1.0)
    with pytest.raises(ValueError, match="flow"):
        flows.sweep(lambda c: (None, None), [{"alpha": 0.1}], tmp_path, t1=T1)
    with pytest.raises(ValueError, match="sequence"):
        flows.grid(alpha=0.1)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        with pytest.raises(ValueError, match="batch_size and devices"):
            flows.sweep(build, [{"alpha": 0.1}], tmp_path, t1=T1, executor=pool, batch_size=2)
        with pytest.raises(ValueError, match="flow"):  # raised on the worker, re-raised here
            flows.sweep(lambda c: (None, None), [{"alpha": 0.1}], tmp_path, t1=T1, executor=pool)
    with pytest.raises(ValueError, match="executor must be"):
        flows.sweep(build, [{"alpha": 0.1}], tmp_path, t1=T1, executor=object())


def test_a_changed_flow_or_init_under_the_same_configuration_is_computed_again(tmp_path):
    """The key is what computes the run, not the configuration's label: a build that now makes another initial
    state, or another flow, for the same configurations recomputes; an unchanged one is reused, also by a second
    sweep whose configurations name it differently (another experiment sharing the run)."""
    configs = flows.grid(alpha=[0.1, 0.2])
    first = flows.sweep(build, configs, tmp_path, t1=T1, progress=False)
    assert [r.status for r in first] == ["done", "done"]

    def other_init(config):  # the same flow, another init kind under the same configuration
        flow, _ = build(config)
        return flow, flow.init(scale=config["alpha"], kind="orthogonal", seed=3)

    def other_flow(config):  # another rate of the same family: a penalty's strength
        flow, state0 = build(config)
        return flows.Flow(flow.problem, flows.Symmetric(), penalty=flows.Frobenius(), strength=1e-3), state0

    for changed in (other_init, other_flow):
        again = flows.sweep(changed, configs, tmp_path, t1=T1, progress=False)
        assert [r.status for r in again] == ["done", "done"], changed.__name__
        assert {r.key for r in again}.isdisjoint(r.key for r in first)
    renamed = [{"init scale": c["alpha"], "experiment": "another"} for c in configs]
    shared = flows.sweep(lambda c: build({"alpha": c["init scale"]}), renamed, tmp_path, t1=T1, progress=False)
    assert [r.status for r in shared] == ["cached", "cached"] and [r.key for r in shared] == [r.key for r in first]
    assert [r.config for r in shared] == renamed
    # Solve options are part of the key too: a tighter tolerance or another solver is another run.
    tighter = flows.sweep(build, configs, tmp_path, t1=T1, rtol=1e-9, progress=False)
    dopri = flows.sweep(build, configs, tmp_path, t1=T1, solver=flows.solver_by_name("dopri5"), progress=False)
    assert {r.status for r in tighter + dopri} == {"done"}
    # Two configurations that build the same run share it, solved once.
    twins = flows.sweep(
        lambda c: build({"alpha": 0.3}), [{"name": "a"}, {"name": "b"}], tmp_path, t1=T1, progress=False
    )
    assert twins[0].key == twins[1].key and [r.config for r in twins] == [{"name": "a"}, {"name": "b"}]
    # reuse=False recomputes what is there.
    fresh = flows.sweep(build, configs, tmp_path, t1=T1, reuse=False, progress=False)
    assert [r.status for r in fresh] == ["done", "done"] and [r.key for r in fresh] == [r.key for r in first]


def test_stores_of_another_schema_are_refused_and_records_are_shared_readable(tmp_path):
    old = tmp_path / "old"
    (old / "0123456789abcdef0123").mkdir(parents=True)  # a run folder of a store without schema
    with pytest.raises(flows.StoreSchemaError, match="schema"):
        flows.sweep(build, [{"alpha": 0.1}], old, t1=T1, progress=False)
    marked = tmp_path / "marked"
    marked.mkdir()
    (marked / "store.json").write_text(json.dumps({"schema": flows.SCHEMA - 1}))
    with pytest.raises(flows.StoreSchemaError, match=f"schema {flows.SCHEMA - 1}"):
        flows.sweep(build, [{"alpha": 0.1}], marked, t1=T1, progress=False)
    (run,) = flows.sweep(build, [{"alpha": 0.1}], tmp_path / "new", t1=T1, progress=False)
    umask = os.umask(0)
    os.umask(umask)
    for path in (run.path / "arrays.npz", run.path / "meta.json", tmp_path / "new" / "store.json"):
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    with pytest.raises(FileNotFoundError, match="no record"):
        flows.Trajectory.load(tmp_path / "missing")


def test_resume_names_what_it_replaced_and_removes_temporary_files(tmp_path):
    configs = flows.grid(alpha=[0.1, 0.2])
    first = flows.sweep(build, configs, tmp_path, t1=T1, progress=False)
    (first[0].path / "arrays.npz").write_bytes(b"spoiled")
    settled = []
    again = flows.sweep(build, configs, tmp_path, t1=T1, progress=False, on_run=settled.append)
    assert [r.status for r in again] == ["done", "cached"]
    assert "corrupt" in again[0].note and again[1].note == ""
    assert sorted(r.key for r in settled) == sorted(r.key for r in again)
    # An interrupted write's temporary file beside a run that must be computed is removed, and said; a fresh one
    # (another writer's, in flight) is left alone.
    (first[0].path / "meta.json").unlink()
    stale, fresh = first[0].path / ".tmp-arrays.npz.xyz", first[0].path / ".tmp-meta.json.abc"
    stale.write_bytes(b"x")
    fresh.write_bytes(b"y")
    old = time.time() - 2 * flows._store.STALE_TEMPORARY
    os.utime(stale, (old, old))
    third = flows.sweep(build, configs, tmp_path, t1=T1, progress=False)
    assert third[0].status == "done" and "temporary" in third[0].note
    assert not stale.exists() and fresh.exists()


class CorruptingSaves(concurrent.futures.ThreadPoolExecutor):
    """Runs each task, then spoils the arrays file of its run for the first `times` saves of that run, as
    a second writer of the same run (a worker presumed dead that was not) could leave it."""

    def __init__(self, times: int):
        super().__init__(max_workers=2)
        self.times = times
        self.saves = collections.Counter()

    def submit(self, fn, *args):
        def task():
            run = fn(*args)
            self.saves[run.key] += 1
            if run.status == "done" and self.saves[run.key] <= self.times:
                data = (run.path / "arrays.npz").read_bytes()
                (run.path / "arrays.npz").write_bytes(data[: len(data) // 2])
            return run

        return super().submit(task)


def test_executor_sweep_accepts_only_checked_files(tmp_path):
    """Farmed out to a thread pool: same keys and arrays as the local sweep; a run whose files fail their
    checksum is submitted again (at most 3 times), and a failed run is recorded as locally."""
    configs = flows.grid(alpha=[0.1, 1e80, 0.2])
    with CorruptingSaves(times=2) as pool:
        runs = flows.sweep(build, configs, tmp_path / "pool", t1=T1, max_steps=3000, executor=pool, progress=False)
    assert [r.status for r in runs] == ["done", "failed", "done"]
    assert pool.saves == {runs[0].key: 3, runs[1].key: 1, runs[2].key: 3}
    local = flows.sweep(build, configs, tmp_path / "local", t1=T1, max_steps=3000, progress=False)
    assert [r.key for r in runs] == [r.key for r in local]
    for run, ref in zip(runs[::2], local[::2]):
        np.testing.assert_array_equal(run.load().W, ref.load().W)
    assert runs[1].message == local[1].message
    with CorruptingSaves(times=3) as pool, pytest.raises(ValueError, match="checksum"):
        flows.sweep(build, configs[:1], tmp_path / "spoiled", t1=T1, max_steps=3000, executor=pool, progress=False)


def _run_child(script: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    # Host devices in the child (also on a machine with an accelerator): JAX_PLATFORMS=cpu.
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu", **(env_extra or {}))
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )


@ON_CPU  # the child sweeps on CPU; the resumed runs are compared step for step with the parent's solves
def test_killed_sweep_resumes(tmp_path):
    # A child process runs a sweep one run per batch and is killed (SIGKILL, from inside, so the moment is
    # known) in the middle of saving its fourth run: arrays written, meta not. Resuming here recomputes
    # that run and the unstarted ones and leaves the three finished ones untouched.
    configs = flows.grid(alpha=[0.05, 0.1, 0.15, 0.2, 0.25, 0.3])
    child = _run_child(f"""
        import os, signal
        import flows, flows._store as store
        from tests.test_sweep import build
        write, calls = store.atomic_write, [0]
        def dying_write(target, payload):
            write(target, payload)
            calls[0] += 1
            if calls[0] == 7:  # runs 1-3 wrote arrays + meta; this is run 4's arrays
                os.kill(os.getpid(), signal.SIGKILL)
        store.atomic_write = dying_write
        flows.sweep(build, {configs!r}, {str(tmp_path)!r}, t1={T1}, batch_size=1, progress=False)
    """)
    assert child.returncode == -9, child.stderr
    survivors = {}
    for config in configs:
        flow, state0 = build(config)
        path = tmp_path / flows._sweep.run_key(flow, state0, flows._solve.Plan.make(T1, atol=ATOL).resolve(flow))
        if (path / "meta.json").exists():
            survivors[str(path)] = (path / "arrays.npz").stat().st_mtime_ns
    assert len(survivors) == 3
    runs = flows.sweep(build, configs, tmp_path, t1=T1, batch_size=1, progress=False)
    assert [r.status for r in runs] == ["cached"] * 3 + ["done"] * 3
    for run in runs:
        if str(run.path) in survivors:
            assert (run.path / "arrays.npz").stat().st_mtime_ns == survivors[str(run.path)]
        assert_matches_solve(run)


def test_sharded_over_four_devices_matches_one(tmp_path):
    # XLA_FLAGS must be set before jax is imported, hence the child process. Six runs over four devices
    # (padded to eight) against the same six on one device.
    child = _run_child(
        f"""
        import jax, numpy as np, flows
        from tests.test_sweep import build
        assert len(jax.devices()) == 4, jax.devices()
        configs = flows.grid(alpha=[0.05, 0.1, 0.2], seed=[0, 1])
        sharded = flows.sweep(build, configs, {str(tmp_path / "four")!r}, t1={T1}, progress=False)
        single = flows.sweep(build, configs, {str(tmp_path / "one")!r}, t1={T1}, devices=jax.devices()[:1],
                             progress=False)
        for a, b in zip(sharded, single):
            ta, tb = a.load(), b.load()
            np.testing.assert_allclose(ta.W, tb.W, rtol=1e-9, atol=1e-12)
            assert ta.stats["num_steps"] == tb.stats["num_steps"]
        print("ok", len(sharded))
    """,
        {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"},
    )
    assert child.returncode == 0, child.stderr
    assert "ok 6" in child.stdout


def test_a_record_that_cannot_be_written_whole_leaves_the_previous_one_whole(tmp_path):
    from flows._store import write_record

    write_record(tmp_path / "r", {"x": np.arange(3.0)}, {"what": "first"})
    with pytest.raises(ValueError, match="must be JSON"):
        write_record(tmp_path / "r", {"x": np.arange(4.0)}, {"what": {1, 2}})
    with pytest.raises(ValueError, match="not Python objects"):
        write_record(tmp_path / "r", {"x": np.array([None, 1.0])}, {"what": "objects"})
    arrays, meta = flows.read_record(tmp_path / "r")
    assert meta["what"] == "first" and list(arrays["x"]) == [0.0, 1.0, 2.0]
    # Metadata that passes the checksum but is no record's, or arrays that do not decode, are a corrupt record.
    (tmp_path / "r" / "meta.json").write_text("[1, 2]")
    with pytest.raises(flows.CorruptRecordError):
        flows.read_record(tmp_path / "r")


def test_a_saved_run_missing_its_parts_is_a_corrupt_trajectory(tmp_path):
    flow, state0 = build({"alpha": 0.1})
    traj = flows.solve(flow, state0, t1=1.0)
    traj.save(tmp_path / "t")
    arrays, meta = flows.read_record(tmp_path / "t")
    del arrays["W"]
    flows.write_record(tmp_path / "t", arrays, meta)
    with pytest.raises(flows.CorruptTrajectoryError, match="KeyError"):
        flows.Trajectory.load(tmp_path / "t")


def test_a_figure_is_written_whole_or_not_at_all(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure()
    target = tmp_path / "f.png"
    flows.write_figure(fig, target)
    before = target.read_bytes()

    class Breaks:
        def savefig(self, buffer, **options):
            buffer.write(b"half a figure")
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        flows.write_figure(Breaks(), target)
    assert target.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["f.png"]
    plt.close(fig)


def test_a_sweep_that_cannot_build_its_runs_leaves_no_store_behind(tmp_path):
    def broken(config):
        if config["seed"] == 1:
            raise ValueError("no such problem")
        return build(config)

    configs = flows.grid(alpha=[1e-2], seed=[0, 1])
    with pytest.raises(ValueError, match="no such problem"):
        flows.sweep(broken, configs, tmp_path / "new" / "store", t1=1.0, progress=False)
    assert not (tmp_path / "new").exists()  # the store is made once every configuration is built
    # An existing store, and an empty folder that was there before, stay.
    flows.sweep(build, configs[:1], tmp_path / "kept", t1=1.0, progress=False)
    (tmp_path / "empty").mkdir()
    for store in ("kept", "empty"):
        with pytest.raises(ValueError, match="no such problem"):
            flows.sweep(broken, configs, tmp_path / store, t1=1.0, progress=False)
    assert len(list((tmp_path / "kept").iterdir())) == 2 and list((tmp_path / "empty").iterdir()) == []
