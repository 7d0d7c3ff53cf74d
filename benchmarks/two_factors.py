"""Whether flows of two factors (U V^T, W_2 W_1) with at most 1000 measurements should take the NDF switch into the tail.

`flows.default_solver` takes the extrapolation switch (`flows.Tsit5ThenExtrapolation`, `flows.Woodbury` solves) into
the tail of every plain gradient flow with m <= 1000 measurements, and the NDF switch (`flows.Tsit5ThenNDF`) beyond.
On factored sensing the NDF switch is the faster (`vs_cvode.py`); this measures whether the number of factors, which
is known before the solve, could choose it.

    taskset -c 1 python benchmarks/two_factors.py                # sensing, and small completions with long tails
    taskset -c 1 python benchmarks/two_factors.py --completion   # the completion experiment's unpenalised runs (n = 30)
    taskset -c 1 python benchmarks/two_factors.py --norms        # the norms experiment's 2 x 2 runs (depth 2 and 3)

Default: U V^T sensing (`vs_scipy.factored_setting`, n = 30, m = 180) from alpha I at alpha = 1e-3, 1e-2, 1e-1,
problem seeds 0 and 1; W_2 W_1 (`vs_scipy.deep_setting`, depth 2) at 1e-2 and 1e-1; beside them one factor, U U^T
(`_harness.sensing_setting`) at 1e-3 and 1e-2, and three, deep3 at 0.1; then U V^T completions small enough that
their stiff tails are long (`flows.completion`, rank 1, from alpha I: 6 x 6 with m = 20 at 1e-3, seeds 0 and 1, and at
1e-2; 10 x 10 with m = 40 at 1e-3; the first is the stop's example in `flows.solve`'s tests). Each solver until loss
1e-10 at rtol 1e-7, 1e-8, 1e-9 (atol = rtol / 100, as vs_cvode.py), final state only, W err against Dopri8 at rtol
1e-12 at each run's own final time. The verdict: the NDF switch's time at the W err the default reaches at rtol 1e-8,
read off its own work-precision line (`vs_cvode.time_at`), over the default's time ("outside" where its errors do not
bracket it). The largest drift of the conserved quantities (`Trajectory.conserved_drift`) at rtol 1e-8, in units of
rtol, and where each switched ("-": not at all).

`--completion`: the completion experiment's unpenalised gradient-flow runs (U V^T and depth 3, every seed, its own
options: rtol 1e-6 under the arraywise relative error, its stop and save times), each solver once compiled and then
timed; the largest distance between the two trajectories' W at the save times both reached (relative to W's norm
there) in units of rtol, each one's largest conserved drift in units of rtol, and the sums of the times.

`--norms`: the norms experiment's runs (the 2 x 2 completion of Razin & Cohen, depths 2 and 3, balanced and Gaussian
inits, every draw, at its rtol 1e-10 and its stop): time, the largest conserved drift in units of rtol, the first saved
time where det W <= 0 (the experiment's sign change; "-" for none) and the final |W_11|, for each solver.

Run pinned to one core (`taskset -c 1`); repeats interleave the two solvers; wall = median after a first (compiling)
call.
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

import _harness as H  # noqa: I001  (first: pins threads before numpy and jax load)
import numpy as np
from vs_cvode import time_at
from vs_scipy import deep_setting, factored_setting

import flows

SETTINGS = {
    "U V^T 1e-3, seed 0": lambda: factored_setting(1e-3, seed=0),
    "U V^T 1e-3, seed 1": lambda: factored_setting(1e-3, seed=1),
    "U V^T 1e-2, seed 0": lambda: factored_setting(1e-2, seed=0),
    "U V^T 1e-2, seed 1": lambda: factored_setting(1e-2, seed=1),
    "U V^T 1e-1, seed 0": lambda: factored_setting(1e-1, seed=0),
    "U V^T 1e-1, seed 1": lambda: factored_setting(1e-1, seed=1),
    "W2 W1 1e-2": lambda: deep_setting(1e-2, depth=2),
    "W2 W1 1e-1": lambda: deep_setting(1e-1, depth=2),
    "U U^T 1e-3": lambda: H.sensing_setting(1e-3),
    "U U^T 1e-2": lambda: H.sensing_setting(1e-2),
    "deep3 0.1": lambda: deep_setting(0.1),
    "U V^T 6x6 m=20 1e-3, seed 0": lambda: small_completion(6, 20, 1e-3, 0),
    "U V^T 6x6 m=20 1e-3, seed 1": lambda: small_completion(6, 20, 1e-3, 1),
    "U V^T 6x6 m=20 1e-2, seed 0": lambda: small_completion(6, 20, 1e-2, 0),
    "U V^T 10x10 m=40 1e-3, seed 0": lambda: small_completion(10, 40, 1e-3, 0),
}
"""Sensing (n = 30, m = 180): two factors, then one and three beside them; then small U V^T completions."""


def small_completion(n: int, m: int, alpha: float, seed: int) -> H.Setting:
    """U V^T completion of a rank-1 n x n matrix from m entries, from U_0 = V_0 = alpha I."""
    flow = flows.Flow(flows.completion(n=n, m=m, rank=1, seed=seed, symmetric=False), flows.Factored())
    return H.Setting(f"factored completion n={n} m={m} r=1 alpha={alpha:g} seed={seed}", flow, flow.init(scale=alpha))


RTOLS = (1e-7, 1e-8, 1e-9)
SOLVERS = {"default": None, "NDF switch": flows.Tsit5ThenNDF()}


def drift(stats: dict) -> float:
    """The largest drift of a run's conserved quantities, from its statistics (0 where it has none)."""
    return max(stats["conserved_drift"].values(), default=0.0)


def work_precision(names: list[str], repeats: int) -> None:
    print(
        "| setting | default: ms, W err, switch | NDF switch at rtol 1e-7 / 1e-8 / 1e-9: ms, W err | "
        "NDF switch's switch | drift / rtol: default, NDF | NDF / default at equal accuracy |"
    )
    print("|---|---|---|---|---|---|")
    for name in names:
        setting = SETTINGS[name]()
        solves = {
            (solver, rtol): functools.partial(H.solve_flows, setting, SOLVERS[solver], rtol, rtol / 100)
            for solver in SOLVERS
            for rtol in RTOLS
        }
        wall, outcomes = H.compared(setting, solves, repeats)
        err = {key: e for key, (_, _, e) in outcomes.items()}
        base = ("default", 1e-8)
        at = time_at([(err["NDF switch", r], wall["NDF switch", r]) for r in RTOLS], err[base])
        verdict = "outside" if at is None else f"**{at / wall[base]:.2f}x**"
        ndf = " / ".join(f"{1e3 * wall['NDF switch', r]:.1f}, {err['NDF switch', r]:.1e}" for r in RTOLS)
        drifts = ", ".join(f"{drift(outcomes[s, 1e-8][0]) / 1e-8:.2g}" for s in SOLVERS)
        print(
            f"| {name} | {1e3 * wall[base]:.1f}, {err[base]:.1e}, {outcomes[base][1]} | {ndf} | "
            f"{outcomes['NDF switch', 1e-8][1]} | {drifts} | {verdict} |",
            flush=True,
        )


def experiment_runs(runs, repeats: int, columns) -> dict:
    """Each run (label, flow, state0, solve options) under both solvers, interleaved: the printed row's cells from
    `columns(trajectories, options)`, and the summed medians by solver."""
    totals = dict.fromkeys(SOLVERS, 0.0)
    for label, flow, state0, options in runs:
        solves = {s: functools.partial(flows.solve, flow, state0, solver=v, **options) for s, v in SOLVERS.items()}
        trajectories, wall = H.interleaved(solves, repeats)
        for s in SOLVERS:
            totals[s] += wall[s]
        times = " | ".join(f"{1e3 * wall[s]:.0f}" for s in SOLVERS)
        print(
            f"| {label} | {times} | {wall['NDF switch'] / wall['default']:.2f} | {columns(trajectories, options)} |",
            flush=True,
        )
    return totals


def completion(repeats: int) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from experiments._completion import SCALES, build

    scale = SCALES["n = 30"][False]

    def runs():
        for parameterization in ("UV^T", "depth 3"):
            for seed in range(scale.seeds):
                config = scale.config(
                    seed, parameterization=parameterization, penalty="none", strength=None, dynamics="gradient flow"
                )
                flow, state0 = build(config)
                yield f"{parameterization}, seed {seed}", flow, state0, scale.options(config)

    def columns(trajectories, options):
        a, b = trajectories["default"], trajectories["NDF switch"]
        rtol = options["rtol"]
        # The save times both reached (each run's stop, located by each, is its own last time).
        both = np.intersect1d(a.ts, b.ts)
        Wa, Wb = a.W[np.searchsorted(a.ts, both)], b.W[np.searchsorted(b.ts, both)]
        gap = np.max(np.linalg.norm(Wa - Wb, axis=(1, 2)) / np.linalg.norm(Wb, axis=(1, 2)))
        return (
            f"{H.switched_at(a.stats)} / {H.switched_at(b.stats)} | {gap / rtol:.2g} | "
            f"{drift(a.stats) / rtol:.2g} / {drift(b.stats) / rtol:.2g}"
        )

    print(
        "| run | default ms | NDF switch ms | NDF / default | switched: default / NDF | largest W gap / rtol | "
        "drift / rtol: default / NDF |"
    )
    print("|---|---|---|---|---|---|---|")
    totals = experiment_runs(runs(), repeats, columns)
    print(
        f"| in all (s) | {totals['default']:.3f} | {totals['NDF switch']:.3f} | "
        f"{totals['NDF switch'] / totals['default']:.2f} | | | |"
    )


def norms(repeats: int) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from experiments import norms as N

    scale = N.SCALES[False]

    def runs():
        for depth in N.DEPTHS:
            for init in N.INITS:
                for draw in range(scale["draws"]):
                    flow, state0 = N.build({"init": init, "depth": depth, "draw": draw})
                    yield f"depth {depth}, {init}, draw {draw}", flow, state0, N.Norms.options(False, N.RTOL)

    def columns(trajectories, options):
        cells = []
        for s in SOLVERS:
            traj = trajectories[s]
            j = N.crossing(traj)
            sign = "-" if j is None else f"{traj.ts[j]:.3g}"
            cells.append(f"{drift(traj.stats) / options['rtol']:.2g}, {sign}, {abs(traj.W[-1][0, 0]):.6g}")
        return " | ".join(cells)

    print(
        "| run | default ms | NDF switch ms | NDF / default | default: drift / rtol, det W <= 0 at, |W_11| | "
        "NDF switch: the same |"
    )
    print("|---|---|---|---|---|---|")
    totals = experiment_runs(runs(), repeats, columns)
    print(
        f"| in all (s) | {totals['default']:.3f} | {totals['NDF switch']:.3f} | "
        f"{totals['NDF switch'] / totals['default']:.2f} | | |"
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", nargs="+", choices=tuple(SETTINGS), default=list(SETTINGS))
    parser.add_argument("--completion", action="store_true", help="the completion experiment's unpenalised runs")
    parser.add_argument("--norms", action="store_true", help="the norms experiment's 2 x 2 runs")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    if args.completion:
        completion(args.repeats)
    elif args.norms:
        norms(args.repeats)
    else:
        work_precision(args.settings, args.repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
