"""flows.sweep on a two-worker Dask LocalCluster against the same sweep locally.

64 runs of symmetric sensing (n = 20, m = 120, rank 2; 8 init scales alpha x 8 problem seeds) from
U_0 = alpha I until loss < 1e-10 (the default solver: the stiff switch), rtol 1e-8. Each process
runs on one thread (_harness), so the cluster's two worker processes use the machine's two cores
and the local sweep one. Each side sweeps into fresh folders: once cold (compiling: each Dask worker
compiles for itself), then --repeats times warm, alternating local and Dask; the cluster's start is
timed apart. Then every stored array of the Dask sweep is compared with the local sweep's, to the
last bit.

    PYTHONPATH=. .venv/bin/python benchmarks/sweep_dask.py          # ~2 min
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import _harness  # noqa: F401, I001  (first: pins threads before numpy and jax load)
import numpy as np
from dask.distributed import Client, LocalCluster

import flows
from flows._store import read_record

ALPHAS = np.geomspace(1e-3, 1e-1, 8).tolist()


def build(config):
    flow = flows.Flow(flows.sensing(n=20, m=120, rank=2, seed=config["seed"]), flows.Symmetric())
    return flow, flow.init(scale=config["alpha"])


def timed(folder: Path, **options) -> tuple[float, list]:
    configs = flows.grid(alpha=ALPHAS, seed=list(range(8)))
    start = time.perf_counter()
    runs = flows.sweep(build, configs, folder, t1=1e4, stop_loss=1e-10, progress=False, **options)
    seconds = time.perf_counter() - start
    assert {r.status for r in runs} == {"done"}, [r.message for r in runs if r.status != "done"]
    return seconds, runs


def identical(runs, reference) -> bool:
    """Same keys, and every stored array equal to the last bit."""
    if [r.key for r in runs] != [r.key for r in reference]:
        return False
    for run, ref in zip(runs, reference):
        arrays, ref_arrays = read_record(run.path)[0], read_record(ref.path)[0]
        if arrays.keys() != ref_arrays.keys() or not all(np.array_equal(arrays[k], ref_arrays[k]) for k in arrays):
            return False
    return True


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        with (
            LocalCluster(
                n_workers=args.workers, processes=True, threads_per_worker=1, dashboard_address=None
            ) as cluster,
            Client(cluster) as client,
        ):
            started = time.perf_counter() - start
            local_cold, local = timed(tmp / "local-cold")
            dask_cold, runs = timed(tmp / "dask-cold", executor=client)
            print(
                f"cold: local {local_cold:.2f} s, dask {dask_cold:.2f} s (+ cluster start {started:.2f} s)", flush=True
            )
            warm = {"local": [], "dask": []}
            for k in range(args.repeats):
                warm["local"].append(timed(tmp / f"local-{k}")[0])
                warm["dask"].append(timed(tmp / f"dask-{k}", executor=client)[0])
                print(f"warm {k}: local {warm['local'][-1]:.2f} s, dask {warm['dask'][-1]:.2f} s", flush=True)
        local_warm, dask_warm = (float(np.median(warm[side])) for side in ("local", "dask"))
        print(
            f"dask ({args.workers} workers) / local wall time, {len(runs)} runs: warm {dask_warm / local_warm:.2f} "
            f"(medians {dask_warm:.2f} / {local_warm:.2f} s), cold {dask_cold / local_cold:.2f}, "
            f"cold with the cluster's start {(started + dask_cold) / local_cold:.2f}"
        )
        print(f"identical to the local sweep (keys and every array, bit for bit): {identical(runs, local)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
