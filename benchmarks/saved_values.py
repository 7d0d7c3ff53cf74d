"""What landing the steps on the save times costs, and what it buys: the default solve (steps landed on `ts`)
against the same solver and controller interpolating at `ts` (the controller passed explicitly, which `solve`
does not clip), side by side in one process.

Flows (the default 200 log-spaced save times over [0, t1], rtol 1e-8, Tsit5): U U^T sensing (n = 30, m = 180,
from 1e-3 I, t1 = 100), depth 3 and depth 4 on the same sensing problem from Gaussian factors of scale 0.3
(t1 = 300), and the Adam flow (a = 10, b = 1, eps = 1e-8) of U U^T from 1e-3 I (t1 = 10). Error: the largest
||W - W_ref||_F / ||W_ref||_F over the saved times in units of rtol, W_ref from Dopri8 at rtol 1e-12 with its
steps landed.

    python benchmarks/saved_values.py
"""

from __future__ import annotations

import _harness as H  # noqa: I001  (first: pins threads before numpy and jax load)
import diffrax
import numpy as np

import flows

RTOL = 1e-8


def cases():
    problem = flows.sensing(n=30, m=180, rank=2, seed=0)
    sym = flows.Flow(problem, flows.Symmetric())
    yield "U U^T, 1e-3", sym, sym.init(scale=1e-3), 100.0
    for depth in (3, 4):
        deep = flows.Flow(problem, flows.Deep(depth=depth))
        yield f"depth {depth}, 0.3", deep, deep.init(scale=0.3, kind="gaussian", seed=1), 300.0
    adam = flows.Flow(problem, flows.Symmetric(), dynamics=flows.Adam(a=10.0, b=1.0, eps=1e-8))
    yield "Adam U U^T, 1e-3", adam, adam.init(scale=1e-3), 10.0


def main() -> int:
    print(f"# rtol {RTOL:g}, Tsit5, 200 log-spaced save times; wall: median of 3 after a compiling call\n")
    print(
        "| flow | landed: steps | wall s | err / rtol | interpolated: steps | wall s | err / rtol | steps ratio | wall ratio |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name, flow, state0, t1 in cases():
        ts = flows.default_ts(t1)
        reference = flows.solve(flow, state0, t1=t1, ts=ts, rtol=1e-12, solver=diffrax.Dopri8(), max_steps=10_000_000)
        controller = flows.ArraywiseRelative.make(RTOL, error_control=flows._solve._error_control)
        runs = {
            "landed": lambda: flows.solve(flow, state0, t1=t1, ts=ts, rtol=RTOL),
            "interpolated": lambda: flows.solve(flow, state0, t1=t1, ts=ts, rtol=RTOL, stepsize_controller=controller),
        }
        out = {}
        for fn in runs.values():
            fn()
        times = {label: [] for label in runs}
        for _ in range(3):
            for label, fn in runs.items():
                traj, seconds = H.clock(fn)
                times[label].append(seconds)
                out[label] = traj
        cells = []
        for label in runs:
            traj = out[label]
            err = np.max(np.linalg.norm(traj.W - reference.W, axis=(1, 2)) / np.linalg.norm(reference.W, axis=(1, 2)))
            cells.append(f"{traj.stats['num_steps']} | {np.median(times[label]):.3g} | {err / RTOL:.1f}")
        steps = out["landed"].stats["num_steps"] / out["interpolated"].stats["num_steps"]
        wall = np.median(times["landed"]) / np.median(times["interpolated"])
        print(f"| {name} | " + " | ".join(cells) + f" | {steps:.2f} | {wall:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    import warnings

    warnings.simplefilter("ignore", flows.FaithfulnessWarning)
    raise SystemExit(main())
