"""Gunasekar et al. (2017): from a small initialization, gradient flow on W = U U^T finds the minimum-nuclear-norm
(for PSD W: minimum-trace) solution of an under-determined sensing problem.

    python examples/small_init_limit.py            # n = 20, 100 measurements, alpha = 1e-1 .. 1e-4
    python examples/small_init_limit.py --quick    # n = 8, 24 measurements, alpha = 1e-1 .. 1e-2

Each run starts from U_0 = alpha I and goes to convergence (analysis.small_init.converge: the default solver
into the tail, then its stiff part out to t = 1e8, since the last stretch is algebraic). The distance of the
limit W_inf(alpha) to the minimum-trace PSD interpolant (analysis.references.min_nuclear_psd, cvxpy) falls
like a power of alpha, whose fitted exponent is printed.
"""

import argparse

import numpy as np

import flows
from analysis import references, small_init


def main(n: int, m: int, alphas) -> small_init.Sweep:
    problem = flows.sensing(n=n, m=m, rank=2, seed=0)
    nuclear = references.min_nuclear_psd(problem)
    flow = flows.Flow(problem, flows.Symmetric())
    result = small_init.sweep(flow, np.asarray(alphas), {"min-trace PSD": nuclear})
    print(f"symmetric sensing n={n} m={m} rank 2: ||W_inf(alpha) - X_nuc||_F / ||X_nuc||_F")
    for alpha, distance, run in zip(result.alphas, result.distances["min-trace PSD"], result.runs):
        print(f"  alpha = {alpha:7.0e}   distance {distance:.2e}   (loss {run.loss:.1e} at t = {run.t_final:.0e})")
    print(f"distance ~ alpha^p with p = {result.rates['min-trace PSD']:.2f}")
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a small problem, for a test")
    args = parser.parse_args()
    main(8, 24, [1e-1, 1e-2]) if args.quick else main(20, 100, [1e-1, 1e-2, 1e-3, 1e-4])
