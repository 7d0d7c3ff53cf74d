"""flows.sweep on Dask: a LocalCluster of two worker processes against the local sweep.

The same keys and the same arrays to the last bit; a sweep whose client is closed midway resumes
and recomputes only what is missing; a worker process killed while saving loses only that run,
which Dask reschedules.
"""

import concurrent.futures
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from dask.distributed import Client, LocalCluster

import flows
import flows._store as store

T1 = 5.0


def build(config):
    """Symmetric sensing, n = 5, from U_0 = alpha I. config["sleep"]: seconds to wait first;
    config["die"]: a marker path: while it does not exist, the worker creates it and kills its own
    process in the middle of saving the run (arrays written, metadata not). The driver builds every run too (for
    its key): only a worker dies, and only a worker sleeps."""
    if on_worker():
        time.sleep(config.get("sleep", 0))
    if "die" in config and on_worker() and not os.path.exists(config["die"]):
        Path(config["die"]).touch()
        write = store.atomic_write

        def dying_write(target, payload):
            write(target, payload)
            if target.name == store.ARRAYS:
                os._exit(17)

        store.atomic_write = dying_write
    flow = flows.Flow(flows.sensing(n=5, m=10, rank=1, seed=config["seed"]), flows.Symmetric())
    return flow, flow.init(scale=config["alpha"])


def on_worker() -> bool:
    from distributed import get_worker

    try:
        get_worker()
    except ValueError:
        return False
    return True


@pytest.fixture(scope="module")
def cluster():
    with LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=":0") as cluster:
        yield cluster


def assert_identical(runs, reference):
    """Same keys, and every stored array equal to the last bit."""
    assert [r.key for r in runs] == [r.key for r in reference]
    for run, ref in zip(runs, reference):
        arrays, meta = store.read_record(run.path)
        ref_arrays, ref_meta = store.read_record(ref.path)
        assert arrays.keys() == ref_arrays.keys()
        for name in arrays:
            np.testing.assert_array_equal(arrays[name], ref_arrays[name], err_msg=f"{run.config}: {name}")
        assert meta["config"] == ref_meta["config"]


def complete(folder: Path) -> dict[str, int]:
    """The runs with a complete record in `folder`: their keys and the modification times of their arrays."""
    found = {}
    for path in folder.iterdir():
        try:
            store.read_record(path)
        except (FileNotFoundError, store.CorruptRecordError):
            continue
        found[path.name] = (path / store.ARRAYS).stat().st_mtime_ns
    return found


def test_dask_sweep_matches_local_sweep(cluster, tmp_path):
    configs = flows.grid(alpha=[0.05, 0.1, 0.2], seed=[0, 1])
    # By scheduler address: the sweep connects its own client.
    runs = flows.sweep(build, configs, tmp_path / "dask", t1=T1, executor=cluster.scheduler_address, progress=False)
    assert [r.config for r in runs] == configs and {r.status for r in runs} == {"done"}
    local = flows.sweep(build, configs, tmp_path / "local", t1=T1, progress=False)
    assert_identical(runs, local)
    # One store: a local sweep over the Dask sweep's folder finds everything done.
    again = flows.sweep(build, configs, tmp_path / "dask", t1=T1, progress=False)
    assert {r.status for r in again} == {"cached"}


def test_closed_client_mid_sweep_resumes(cluster, tmp_path):
    # Ten runs of 0.3 s each (after compiling) on two workers; the client is closed once two are saved.
    configs = flows.grid(alpha=[0.05, 0.1, 0.15, 0.2, 0.25], seed=[0, 1], sleep=[0.3])
    outcome = {}

    def driver(client):
        try:
            flows.sweep(build, configs, tmp_path / "dask", t1=T1, executor=client, progress=False)
        except BaseException as err:  # noqa: BLE001 (what the closed client raised, checked below)
            outcome["error"] = err

    client = Client(cluster)
    thread = threading.Thread(target=driver, args=(client,))
    thread.start()
    deadline = time.monotonic() + 120
    while len(list(tmp_path.glob(f"dask/*/{store.META}"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    client.close()
    thread.join(timeout=60)
    assert not thread.is_alive()
    assert isinstance(outcome.get("error"), concurrent.futures.CancelledError), outcome

    # Tasks the closed client left running on the workers may still save theirs (a run the resumed
    # sweep may then find done, or write a second time: the same arrays).
    saved = complete(tmp_path / "dask")
    assert len(saved) >= 2
    with Client(cluster) as client:
        runs = flows.sweep(build, configs, tmp_path / "dask", t1=T1, executor=client, progress=False)
    cached = {r.key for r in runs if r.status == "cached"}
    assert cached >= set(saved) and len(cached) < len(configs)
    assert {r.status for r in runs if r.key not in cached} == {"done"}
    assert complete(tmp_path / "dask").items() >= saved.items()  # the saved runs were not written again
    assert_identical(runs, flows.sweep(build, configs, tmp_path / "local", t1=T1, progress=False))


def test_worker_killed_mid_run_loses_only_that_run(cluster, tmp_path):
    marker = tmp_path / "died"
    configs = [{"alpha": 0.1, "seed": 0}, {"alpha": 0.2, "seed": 1, "die": str(marker)}, {"alpha": 0.3, "seed": 0}]
    with Client(cluster) as client:
        # A plain concurrent.futures executor of the client works as well as the client.
        runs = flows.sweep(build, configs, tmp_path / "dask", t1=T1, executor=client.get_executor(), progress=False)
        assert marker.exists()  # the worker did die: a task ran with the marker absent
        assert {r.status for r in runs} == {"done"}
        client.wait_for_workers(2, timeout=60)  # the nanny restarted the killed one
    local = flows.sweep(build, configs, tmp_path / "local", t1=T1, progress=False)
    assert_identical(runs, local)
