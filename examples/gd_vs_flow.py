"""Gradient descent against its gradient flow: the gap closes linearly in the step, and an overlay figure shows it.

    python examples/gd_vs_flow.py --out runs/examples            # n = 20, steps 0.2, 0.1, 0.05
    python examples/gd_vs_flow.py --quick --out runs/examples    # n = 8

Gradient descent with step eta is the Euler method of the flow, so at a fixed time its iterate is O(eta) away
from the flow's state: halving the step halves the gap (the printed ratios are about 2). `flows.descend` runs
the discrete counterpart of any flow's dynamics (optax's sgd here, Adam for the Adam flow) and returns a
Trajectory of the same form as `flows.solve`'s; `flows.plot_trajectory` overlays them on shared axes. The same
from the command line:

    gradflow run --problem completion --n 20 --m 120 --scale 0.1 --t1 20 --out runs/flow
    gradflow run --problem completion --n 20 --m 120 --scale 0.1 --t1 20 --step 0.1 --out runs/gd-0.1
    gradflow plot runs/flow runs/gd-0.1 --out overlay.png
"""

import argparse
from pathlib import Path

import numpy as np

import flows


def main(n: int, m: int, steps, out: Path) -> dict:
    problem = flows.completion(n=n, m=m, rank=2, seed=0)
    flow = flows.Flow(problem, flows.Symmetric())
    state0 = flow.init(scale=0.1)
    t1 = 20.0
    # Save times on the coarsest step's grid (so on every step's: each step halves the one before).
    ts = np.unique(np.rint(flows.default_ts(t1, 60) / steps[0])) * steps[0]
    exact = flows.solve(flow, state0, t1=t1, ts=ts, rtol=1e-10)
    runs = [exact]
    print(f"gradient descent on W = U U^T, completion n={n} m={m}, against the flow up to t = {t1:g}")
    gaps = []
    for step in steps:
        gd = flows.descend(flow, state0, step=step, t1=t1, ts=ts)
        gaps.append(float(np.max(np.linalg.norm(gd.W - exact.W, axis=(1, 2)))))
        ratio = "" if len(gaps) == 1 else f"   ratio to the previous step's {gaps[-2] / gaps[-1]:.2f}"
        print(f"  step {step:7.4f}: max_t ||W_gd - W_flow||_F = {gaps[-1]:.3e}{ratio}")
        runs.append(gd)
    out.mkdir(parents=True, exist_ok=True)
    figure = out / "gd_vs_flow.png"
    flows.plot_trajectory(runs, figure)
    print(f"overlay: {figure}")
    return {"steps": list(steps), "gaps": gaps, "figure": figure}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a small problem, for a test")
    parser.add_argument("--out", type=Path, default=Path("runs/examples"), help="folder for the figure")
    args = parser.parse_args()
    if args.quick:
        main(8, 40, [0.1, 0.05], args.out)
    else:
        main(20, 120, [0.2, 0.1, 0.05], args.out)
