"""A resumable sweep over init scale and seed, solved by Dask worker processes.

    python examples/dask_sweep.py --out runs/examples            # 2 workers, 4 scales x 4 seeds
    python examples/dask_sweep.py --quick --out runs/examples    # 1 worker, 2 scales x 1 seed

`flows.sweep` keys each run by what computes it and saves it atomically under `out`, so running the script
again reuses every finished run (status "cached") and computes only what is missing, locally or on a cluster:
pass a scheduler's address ("tcp://host:8786") instead of the local cluster's client to use one.
"""

import argparse
from pathlib import Path

import numpy as np

import flows


def build(config):
    """One run of the grid, built on the worker: the problem is cheap to make, so it is made there."""
    flow = flows.Flow(flows.sensing(n=20, m=100, rank=2, seed=config["seed"]), flows.Symmetric())
    return flow, flow.init(scale=config["alpha"])


def main(alphas, seeds, workers: int, out: Path) -> dict:
    from dask.distributed import Client, LocalCluster

    with LocalCluster(n_workers=workers, threads_per_worker=1) as cluster, Client(cluster) as client:
        runs = flows.sweep(
            build,
            flows.grid(alpha=alphas, seed=seeds),
            out=out / "dask-sweep",
            t1=1e4,
            stop_loss=1e-10,
            executor=client,
        )
    errors = {}
    for run in runs:
        traj = run.load()
        errors.setdefault(run.config["alpha"], []).append(traj.relative_error[-1])
    print(f"symmetric sensing n=20 m=100 rank 2, {len(seeds)} seed(s): error to the truth where the loss hits 1e-10")
    for alpha, values in errors.items():
        print(f"  alpha = {alpha:7.0e}: mean {np.mean(values):.2e}")
    statuses = [r.status for r in runs]
    print(f"{statuses.count('done')} runs computed now, {statuses.count('cached')} reused from {out / 'dask-sweep'}")
    return {"runs": runs, "errors": errors}


if __name__ == "__main__":  # the workers are processes that import this file: keep the work under this guard
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a small grid on one worker, for a test")
    parser.add_argument("--out", type=Path, default=Path("runs/examples"), help="folder for the run store")
    args = parser.parse_args()
    if args.quick:
        main([1e-2, 1e-3], [0], 1, args.out)
    else:
        main([1e-1, 1e-2, 1e-3, 1e-4], [0, 1, 2, 3], 2, args.out)
