r"""Sweeps: a grid of configurations solved as batched, sharded solves that resume where they stopped.

    runs = flows.sweep(build, flows.grid(alpha=[1e-2, 1e-3], seed=[0, 1, 2]), out="runs/alpha", t1=1e3)

`build(config) -> (flow, state0)` turns one configuration (a dict of JSON values) into what
`flows.solve` integrates, so anything a flow can be built from (init scale, seed, depth, size, a
penalty's strength) is a sweep axis. Configurations whose flows and states have the same structure
and shapes are solved together: stacked, `vmap`-ed and split across every JAX device with
`jax.shard_map` (each device runs its own share, with no synchronisation between steps). Each finished
run is saved with `Trajectory.save` (atomic, checksummed) under `out/<key>`, `out` a store
(`flows.open_store`). The key is a content hash (`flows.fingerprint`) of what determines the run: the built
flow (its description and the bytes of its arrays: problem data, rates, strength), the initial state, and the
resolved solve (solver and step-size controller with all their settings, tolerances, save times, budget), so a
run is reused exactly when it would be computed the same way: a changed flow or initial state under the same
configuration is computed again, and two sweeps (or two configurations) that build the same run share it.
`build` is therefore called for every configuration, finished or not. A killed sweep loses only the batch in
flight; a partial or corrupt save fails its checksum and is recomputed (`Run.note` says so). A run whose solve
fails is recorded (`out/<key>/failed.json`) without touching the others of its batch, and reused as failed unless it
was recorded under another `FAILURE_REVISION` (then it is retried).

With `executor=` the pending runs are farmed out instead, one task per run, to a Dask cluster or any
`concurrent.futures` executor:

    with dask.distributed.Client(cluster) as client:
        runs = flows.sweep(build, configs, out="/shared/runs/alpha", t1=1e3, executor=client)

Each worker builds, solves and saves its run into the same store (`out` must be a path every worker
sees: a shared filesystem), under the same key and in the same files as the local sweep, so local and
distributed sweeps resume each other. The driver accepts a run only once its files pass their
checksum. Dask reschedules the task of a worker that dies, so a killed worker loses only its run in
flight; closing the client (or interrupting the driver) stops the sweep, and running it again
computes only what is missing. Each run is solved as the local sweep solves a batch of one (its
default on CPUs), so the two give the same arrays to the last bit on the same hardware.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import itertools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec

from ._flow import AbstractFlow
from ._keys import SCHEMA, fingerprint
from ._solve import Plan, SolverError, _integrate, integrate
from ._store import CorruptRecordError, open_store, peek_record, read_record, remove_temporaries, write_json
from ._trajectory import Trajectory
from ._validate import check_positive_int

FAILED = "failed.json"

FAILURE_REVISION = 2
"""What a failure record was recorded under: how a solve handles a trial step that overflows (the step shrinks) and
when it counts the step size as collapsed (`flows.StopOnCollapse`, `flows.LandOnEvent`'s floor). A run that failed under
another revision may finish now, so its record is retried, not reused; a finished run's result does not depend on it."""


def grid(**axes) -> list[dict[str, Any]]:
    """Every combination of the given axes: `grid(alpha=[1e-2, 1e-3], seed=[0, 1])` has 4 configurations."""
    for name, values in axes.items():
        if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
            raise ValueError(f"grid axis {name!r} must be a sequence of values; got {values!r}")
    names = list(axes)
    return [dict(zip(names, combo)) for combo in itertools.product(*(list(axes[n]) for n in names))]


@dataclasses.dataclass(frozen=True)
class Run:
    """One configuration of a sweep: where it is saved and how it ended.

    status: "done" (computed now), "cached" (found complete on disk) or "failed" (`message` says why).
    note: what resuming found in its folder, when it was not a clean start (a corrupt record replaced,
    temporary files of an interrupted write removed).
    """

    config: dict[str, Any]
    key: str
    path: Path
    status: str
    message: str = ""
    note: str = ""

    def load(self) -> Trajectory:
        """The saved trajectory (checked against its checksum)."""
        if self.status == "failed":
            raise ValueError(f"run {self.key} ({self.config}) failed: {self.message}")
        return Trajectory.load(self.path)


def sweep(
    build: Callable[[dict], tuple[AbstractFlow, Any]],
    configs,
    out,
    t1: float,
    ts=None,
    *,
    rtol: float = 1e-8,
    atol: float | None = None,
    stop_loss: float | None = None,
    solver=None,
    stepsize_controller=None,
    max_steps: int = 1_000_000,
    dt0: float | None = None,
    batch_size: int | None = None,
    devices=None,
    executor=None,
    progress: bool = True,
    desc: str = "sweep",
    reuse: bool | Callable[[str], bool] = True,
    on_run: Callable[[Run], None] | None = None,
) -> list[Run]:
    """Solve `build(config)` for every configuration, as `flows.solve` would with these options.

    Args:
        build: configuration -> (flow, initial state).
        configs: a list of dicts of JSON values (numbers, strings, booleans, lists), e.g. from `grid`.
        out: the store (`flows.open_store`) holding one folder per run, named by the run's key.
        batch_size: runs solved together per compiled call; a kill loses at most one batch. Rounded
            up to a multiple of the number of devices. Default: one run per device on CPUs, where
            vmap made the solves slower, not faster (benchmarks/sweep_batching.py); 8 per device on
            accelerators. Batches of more than one run resolve the default solver for batching
            (`flows.default_solver(..., batched=True)`), which is part of their keys, and their stop
            reads the loss at every step, not the flows' `LossFloor` (which changes no run alone, but
            would change a batch's round-off).
        devices: the JAX devices to shard over (default all of `jax.devices()`).
        executor: farm the runs out, one task each, instead of solving them here: a
            `dask.distributed.Client` (the way to a cluster), a Dask scheduler's address (a client is
            connected for the sweep), or any `concurrent.futures.Executor`. `build` must then be
            picklable (a module-level function; Dask's cloudpickle also takes closures), and `out` a
            path every worker can write. Not with `batch_size` or `devices`, which shape local batches.
        progress: a tqdm bar over runs (finished runs, also with an executor), labelled `desc`.
        reuse: whether a finished run found in the store is reused (True), recomputed (False), or a
            function of its key saying which.
        on_run: called with each run as it is settled (reused, done or failed), in the order they settle.

    Returns:
        One `Run` per configuration, in order. Configurations that build the same run share it.
    """
    plan = Plan.make(
        t1,
        ts,
        rtol=rtol,
        atol=atol,
        stop_loss=stop_loss,
        solver=solver,
        stepsize_controller=stepsize_controller,
        max_steps=max_steps,
        dt0=dt0,
    )
    configs = list(configs)
    if not configs:
        raise ValueError("configs is empty: nothing to sweep")
    if executor is None:
        devices = list(jax.devices() if devices is None else devices)
        if not devices:
            raise ValueError("devices is empty")
        if batch_size is None:
            batch_size = len(devices) * (1 if all(d.platform == "cpu" for d in devices) else 8)
        check_positive_int("batch_size", batch_size)
        batch_size = -(-batch_size // len(devices)) * len(devices)
    elif batch_size is not None or devices is not None:
        raise ValueError(
            "batch_size and devices shape the local sweep's batches; with an executor each run is one task"
        )
    texts = [check_config(config) for config in configs]
    if len(set(texts)) != len(texts):
        raise ValueError("configs holds the same configuration twice")
    # Checked now, made once every configuration is built: one that cannot be built leaves no store behind.
    out = open_store(out, create=False)
    # batch_size is set above whenever there is no executor
    batched = executor is None and batch_size > 1  # pyright: ignore[reportOptionalOperand]
    reused = reuse if callable(reuse) else (lambda key: bool(reuse))

    runs: dict[int, Run] = {}
    settle = (lambda run: None) if on_run is None else on_run
    # Each distinct run once: its key, its first configuration, the configurations that share it.
    first: dict[str, int] = {}
    sharing: dict[str, list[int]] = {}
    keys: list[str] = []
    pending: dict[Any, list[tuple[int, AbstractFlow, Any, Plan, str]]] = {}
    farmed: list[tuple[int, dict, str]] = []
    for i, config in enumerate(configs):
        flow, state0 = _built(build, config)
        resolved = plan.resolve(flow, batched=batched)
        key = run_key(flow, state0, resolved)
        keys.append(key)
        sharing.setdefault(key, []).append(i)
        if key in first:
            continue
        first[key] = i
        finished, note = _finished(config, key, out / key) if reused(key) else (None, "")
        if finished is not None:
            runs[i] = finished
        else:
            left = remove_temporaries(out / key)
            if left:
                note = (note + "; " if note else "") + f"removed {len(left)} temporary file(s) of an interrupted write"
            if executor is not None:
                farmed.append((i, config, key))
            else:
                pending.setdefault(_signature(flow, state0), []).append((i, flow, state0, resolved, key))
        if note:
            runs[i] = (
                dataclasses.replace(runs[i], note=note) if i in runs else Run(config, key, out / key, "", "", note)
            )

    open_store(out)
    from tqdm.auto import tqdm

    def done(i: int, run: Run) -> None:
        note = runs[i].note if i in runs else ""
        runs[i] = dataclasses.replace(run, note=note) if note else run
        settle(runs[i])
        bar.update(len(sharing[run.key]))

    with tqdm(total=len(configs), disable=not progress, unit="run", desc=desc) as bar:
        for key, i in first.items():
            if i in runs and runs[i].status:
                settle(runs[i])
                bar.update(len(sharing[key]))
        if executor is not None:
            with _executor(executor) as executor:
                _farm_out(executor, build, plan, farmed, out, done)
        else:
            mesh = Mesh(np.asarray(devices), ("runs",))
            for group in pending.values():
                # batch_size and devices are set above whenever there is no executor
                width = min(batch_size, -(-len(group) // len(devices)) * len(devices))  # pyright: ignore[reportArgumentType]
                for start in range(0, len(group), width):
                    batch = group[start : start + width]
                    resolved = batch[0][3]
                    for (i, flow, _, _, key), outcome in zip(batch, _solve_batch(resolved, batch, width, mesh)):
                        done(i, _record(configs[i], key, out / key, flow, resolved, outcome))
    return [dataclasses.replace(runs[first[key]], config=configs[i]) for i, key in enumerate(keys)]


def check_config(config) -> str:
    """`config` as canonical JSON; ValueError unless it is a dict of JSON values (what a sweep records beside its run)."""
    if not isinstance(config, dict):
        raise ValueError(f"a sweep configuration must be a dict; got {type(config).__name__}")
    try:
        return json.dumps(config, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise ValueError(f"a sweep configuration must hold JSON values only; {config!r}: {err}") from None


def run_key(flow: AbstractFlow, state0, plan: Plan) -> str:
    """The folder name of a run: a content hash of the built flow, its initial state and the resolved solve (solver
    and controller with their settings, tolerances, save times, budget) under the store's `SCHEMA`."""
    key = {"schema": SCHEMA, "flow": flow, "state0": state0, "solve": plan}
    if plan.ends_past_saves:
        # Its record holds one entry more where the run reaches t1 (its state there): a layout of its own.
        key["final"] = "t1"
    return fingerprint(key)


def _finished(config: dict, key: str, path: Path, verify: bool = False) -> tuple[Run | None, str]:
    """The run already on disk, if complete (a record of this key, or a failure record of it), and a note on what was
    found there otherwise (a corrupt record). A record counts as complete by its metadata and its arrays' size
    (`peek_record`: resuming reads no trajectory), or with `verify` by its checksum too."""
    failed = path / FAILED
    if failed.exists():
        try:
            record = json.loads(failed.read_text())
        except (OSError, json.JSONDecodeError):
            return None, f"replaced an unreadable failure record ({failed})"
        if record.get("key") != key:
            return None, f"replaced a failure record of another key ({failed})"
        if record.get("revision", 1) != FAILURE_REVISION:
            return None, f"retried a failure recorded under another failure revision ({failed})"
        return Run(config, key, path, "failed", record.get("message", "")), ""
    try:
        meta = read_record(path)[1] if verify else peek_record(path)
    except FileNotFoundError:
        return None, ""
    except CorruptRecordError as err:
        return None, f"replaced a corrupt record ({err})"
    if meta.get("config", {}).get("sweep_key") != key:
        return None, f"replaced a record of another key at {path}"
    return Run(config, key, path, "cached"), ""


def _built(build, config: dict) -> tuple[AbstractFlow, Any]:
    """`build(config)`, checked: a flow and a valid initial state of it."""
    flow, state0 = build(config)
    if not isinstance(flow, AbstractFlow):
        raise ValueError(f"build({config}) must return (flow, state0); got a {type(flow).__name__} first")
    flow.check_state(state0)
    return flow, state0


def _signature(flow, state0):
    """Runs batch together when their flows and states agree in structure, shapes and static fields, and in the values
    of the leaves that are not arrays (a Python float field, say): a batch is stacked from its arrays, and takes
    everything else from its first run (`_stack`)."""
    leaves, treedef = jax.tree.flatten((flow, state0))
    return treedef, tuple(
        (jnp.shape(x), jnp.result_type(x)) if eqx.is_array(x) else ("value", fingerprint(x)) for x in leaves
    )


def _solve_batch(plan: Plan, batch, width: int, mesh: Mesh) -> list:
    """Solve a batch with vmap, sharded over the mesh; one host-side result per run.

    The batch is padded to `width` runs (a multiple of the device count) by repeating its last run,
    so every batch of a group reuses one compiled solve and every device gets the same share. A batch
    of one is solved without vmap (as `solve` does, sharing its compiled function): under vmap the
    switching solver's lax.cond would run both of its solvers at every step.
    """
    if width == 1:
        ((_, flow, state, _, _),) = batch
        return [_solve_alone(plan, flow, state)]
    flows_ = [flow for _, flow, _, _, _ in batch]
    states = [state for _, _, state, _, _ in batch]
    flows_ += [flows_[-1]] * (width - len(batch))
    states += [states[-1]] * (width - len(batch))
    raw = _batched(_stack(flows_), _stack(states), plan.arrays(), plan.static(), mesh=mesh)
    raw = jax.device_get(raw)
    return [jax.tree.map(lambda x: x[k], raw) for k in range(len(batch))]


def _solve_alone(plan: Plan, flow, state):
    """One run's host-side result, solved as `solve` solves it (sharing its compiled function)."""
    return jax.device_get(_integrate(flow, state, *plan.arrays(), **plan.static()))


def _stack(trees):
    arrays = [eqx.filter(t, eqx.is_array) for t in trees]
    static = eqx.filter(trees[0], eqx.is_array, inverse=True)
    return eqx.combine(jax.tree.map(lambda *xs: jnp.stack(xs), *arrays), static)


@eqx.filter_jit
def _batched(flows_, states, arrays, options, *, mesh):
    """vmap of `integrate` over the leading axis of (flows_, states), that axis split over the mesh; the stop reads
    the loss at every step, not the flows' `LossFloor` (see `integrate`)."""
    batched, batched_static = eqx.partition((flows_, states), eqx.is_array)
    shared, shared_static = eqx.partition((arrays, options), eqx.is_array)

    def local(batched, shared):
        arrays, options = eqx.combine(shared, shared_static)

        def one(batched):
            flow, state0 = eqx.combine(batched, batched_static)
            return integrate(flow, state0, *arrays, **options, loss_floor=False)

        return jax.vmap(one)(batched)

    return jax.shard_map(
        local,
        mesh=mesh,
        in_specs=(PartitionSpec("runs"), PartitionSpec()),
        out_specs=PartitionSpec("runs"),
        check_vma=False,
    )(batched, shared)


def _record(config, key, path: Path, flow, plan: Plan, raw) -> Run:
    try:
        traj = plan.finish(flow, raw)
    except SolverError as err:
        path.mkdir(parents=True, exist_ok=True)
        record = {
            "key": key,
            "config": config,
            "message": str(err),
            "t_reached": err.t_reached,
            "revision": FAILURE_REVISION,
        }
        write_json(path / FAILED, record)
        return Run(config, key, path, "failed", str(err))
    (path / FAILED).unlink(missing_ok=True)
    traj = dataclasses.replace(traj, config=traj.config | {"sweep_key": key, "sweep_config": config})
    traj.save(path)
    return Run(config, key, path, "done")


ATTEMPTS = 3
"""Times an executor's run is submitted before its files failing their checksum is an error."""


@contextlib.contextmanager
def _executor(executor):
    """The `concurrent.futures` executor of what `sweep` accepts: a Dask client's (tasks not to be
    deduplicated: pure=False), a client connected to a scheduler address for the sweep, or the executor itself."""
    if isinstance(executor, str):
        from distributed import Client

        with Client(executor) as client:
            yield client.get_executor(pure=False)
    elif hasattr(executor, "get_executor"):
        yield executor.get_executor(pure=False)
    elif callable(getattr(executor, "submit", None)):
        yield executor
    else:
        raise ValueError(
            "executor must be a dask.distributed.Client, a Dask scheduler address or a "
            f"concurrent.futures.Executor; got {type(executor).__name__}"
        )


def _farm_out(executor, build, plan: Plan, work: list[tuple[int, dict, str]], out: Path, done) -> None:
    """Submit each run as one task (`_run_task`) and hand it to `done(i, run)` as it finishes.

    A run counts only once its files on disk pass their checksum; one that does not (a second writer
    of the same run, a worker presumed dead that was not) is submitted again, at most `ATTEMPTS` times.
    Whatever stops the loop (a task's exception, a closed client, an interrupt) cancels the rest.
    """

    def submit(i, config, key):
        # Workers may run elsewhere (another working directory): they get the absolute path.
        return executor.submit(_run_task, build, config, key, (out / key).absolute(), plan)

    futures = {submit(*job): job for job in work}
    attempts = {i: 1 for i, _, _ in work}
    try:
        while futures:
            finished, _ = concurrent.futures.wait(futures, return_when=concurrent.futures.FIRST_COMPLETED)
            for future in finished:
                i, config, key = job = futures.pop(future)
                run = dataclasses.replace(future.result(), path=out / key)
                if _finished(config, key, run.path, verify=True)[0] is None:
                    if not run.path.exists():
                        raise ValueError(
                            f"run {key} ({config}) was saved by a worker but {run.path} does not exist here: the store "
                            f"must be on a file system that the workers and this process share"
                        )
                    if attempts[i] == ATTEMPTS:
                        raise ValueError(
                            f"run {key} ({config}) was saved {ATTEMPTS} times and its files at "
                            f"{run.path} failed their checksum every time"
                        )
                    attempts[i] += 1
                    futures[submit(*job)] = job
                    continue
                done(i, run)
    finally:
        for future in futures:
            future.cancel()


def _run_task(build, config: dict, key: str, path: Path, plan: Plan) -> Run:
    """One run on an executor's worker: build it, solve it alone (as the local sweep's batches of one)
    and save it under `path`."""
    flow, state0 = _built(build, config)
    resolved = plan.resolve(flow)
    if run_key(flow, state0, resolved) != key:
        raise ValueError(
            f"build({config}) made another run on this worker than on the driver (key {run_key(flow, state0, resolved)} "
            f"against {key}): build must be deterministic, and the workers must run the driver's code"
        )
    return _record(config, key, path, flow, resolved, _solve_alone(resolved, flow, state0))
