"""Arora, Cohen, Hu & Luo (2019) at a small scale: deeper products complete a low-rank matrix from fewer entries.

    python examples/depth_table.py            # n = 20, rank 2, m = 80 .. 200 entries, 3 seeds
    python examples/depth_table.py --quick    # n = 10, rank 1, m = 30, 1 seed

The truth is Z1 Z2^T scaled to ||W*||_F = n (entries about 1, as in Arora et al.). Gradient flow on
W = W_N ... W_1 (depth 1 is W itself) from identity factors alpha^(1/N) I, so every depth starts at
W_0 = alpha I = 1e-6 I, runs until the loss falls below 1e-10 ||W*||^2; the table gives the relative error to
the truth there, against the minimum-nuclear-norm completion (cvxpy). Depth 1 changes only the observed entries, so it
cannot complete anything; Arora et al. found depth 2 near the nuclear-norm minimiser and deeper products lower
(compare the columns: this small table prints errors to the truth, not distances to the minimiser).
"""

import argparse

import numpy as np

import flows
from analysis import references


def error(problem, depth: int, alpha: float = 1e-6) -> float:
    """The relative error to the truth where the depth-`depth` flow from W_0 = alpha I fits the data."""
    parameterization = flows.Direct() if depth == 1 else flows.Deep(depth=depth)
    flow = flows.Flow(problem, parameterization)
    stop = 1e-10 * np.linalg.norm(problem.truth) ** 2
    traj = flows.solve(flow, flow.init(scale=alpha ** (1 / depth)), t1=1e6, ts=[0.0], stop_loss=stop)
    if not traj.stats["stopped_by_loss"]:
        raise RuntimeError(f"depth {depth} did not fit the data by t = 1e6 (loss {traj.loss[-1]:.2g})")
    return float(traj.relative_error[-1])


def main(n: int, rank: int, ms, depths=(1, 2, 3), seeds=(0, 1, 2)) -> dict:
    table = {}
    for m in ms:
        errors = {name: [] for name in ["nuclear", *(f"depth {d}" for d in depths)]}
        for seed in seeds:
            problem = flows.completion(n=n, m=m, rank=rank, seed=seed, symmetric=False, truth_norm=n)
            errors["nuclear"].append(references.min_nuclear(problem).distance(problem.truth))
            for depth in depths:
                errors[f"depth {depth}"].append(error(problem, depth))
        table[m] = {name: float(np.mean(values)) for name, values in errors.items()}
    print(f"completion of a rank-{rank} {n} x {n} matrix: relative error, mean over {len(seeds)} seed(s)")
    print(f"{'m':>5s} " + " ".join(f"{name:>10s}" for name in table[ms[0]]))
    for m, row in table.items():
        print(f"{m:5d} " + " ".join(f"{value:10.2e}" for value in row.values()))
    return table


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a small problem, for a test")
    args = parser.parse_args()
    main(10, 1, [30], seeds=(0,)) if args.quick else main(20, 2, [80, 120, 200])
