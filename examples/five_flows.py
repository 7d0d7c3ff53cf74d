"""The five flows of gradflow on one matrix-completion problem, and where each one lands.

    python examples/five_flows.py            # n = 30, 300 observed entries of a rank-2 PSD matrix
    python examples/five_flows.py --quick    # n = 10, 50 entries, a tenth of the time (seconds)

One flow is a parameterization x an objective x dynamics. From a small initialization the plain factored flows
reach zero loss at a low-rank W close to the truth (the direct flow, W itself, changes only the observed entries
and fills in nothing); the ratio penalty ||W||_* / ||W||_F pushes further towards low rank, and the Adam flow
integrates Adam's small-step limit of the same objective.
"""

import argparse

import flows


def five_flows(problem):
    """The mission's five flows on `problem`: (flow, init scale per factor, final time)."""
    deep = flows.Deep(depth=3)
    ratio = dict(penalty=flows.Ratio(), strength=1e-3)
    adam = flows.Adam(a=100.0, b=1.0, eps=1e-8)
    return {
        "direct  W' = -grad L(W)": (flows.Flow(problem, flows.Direct()), 1e-6, 1e3),
        "symmetric  W = U U^T": (flows.Flow(problem, flows.Symmetric()), 1e-3, 1e3),
        "deep  W = W3 W2 W1": (flows.Flow(problem, deep), 0.1, 1e3),
        "deep + ratio penalty": (flows.Flow(problem, deep, **ratio), 0.1, 1e3),
        # Adam's normalised steps move every coordinate at speed ~1: it gets there in far less time.
        "deep + ratio, Adam flow": (flows.Flow(problem, deep, **ratio, dynamics=adam), 0.1, 10.0),
    }


def main(n: int, m: int, horizon: float = 1.0) -> dict:
    """Each flow to its final time times `horizon` (Tsit5, relative tolerance 1e-8)."""
    problem = flows.completion(n=n, m=m, rank=2, seed=0)
    results = {}
    print(f"completion n={n} m={m} rank 2")
    print(f"{'flow':26s} {'t1':>8s} {'loss':>9s} {'error to truth':>15s} {'effective rank':>15s}")
    for name, (flow, scale, t1) in five_flows(problem).items():
        t1 *= horizon
        traj = flows.solve(flow, flow.init(scale=scale), t1=t1, ts=flows.default_ts(t1, 50))
        results[name] = traj
        print(
            f"{name:26s} {traj.ts[-1]:8.3g} {traj.loss[-1]:9.2e} {traj.relative_error[-1]:15.2e} "
            f"{traj.effective_rank[-1]:15.2f}"
        )
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a small problem, for a test")
    args = parser.parse_args()
    main(n=10, m=50, horizon=0.1) if args.quick else main(n=30, m=300)
