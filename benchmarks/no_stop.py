"""Runs to a fixed final time, without a stop: Tsit5 against the default's switch into a stiff solver.

`flows.default_solver` gives a plain gradient flow of the data loss (`flow.linearisable`) the switch into a stiff
solver with or without `stop_loss`: `flows.Tsit5ThenExtrapolation` up to 1000 measurements, `flows.Tsit5ThenNDF`
beyond. This measures what that is worth on runs to a fixed t1 (the trajectory figures' runs), and what it costs on
runs that end before their tail turns stiff, where the switch takes Tsit5's steps throughout.

    taskset -c 1 python benchmarks/no_stop.py                  # every case, 3 repeats, ~8 min
    taskset -c 1 python benchmarks/no_stop.py --cases sensing  # the cases whose names hold a word

The cases: vs_cvode.py's settings (sensing U U^T from 1e-3, factored U V^T from 1e-2, deep3 from 0.1: n = 30, m = 180;
the deep completion tail, n = 100, m = 2000, depth 3 from 0.1) and the same completion with m = 1000, each to a t1
before its tail turns stiff and to one in the tail (sensing's 419 and factored's 1.13 and deep3's 4.23 are where they
reach loss 1e-10). Each method at rtol 1e-8 with the default arraywise relative error, final state only; repeats
interleave the two after a first (compiling) call, wall = median. W err: against Dopri8 at rtol 1e-12 at t1 where
that reference is cheap ("-" elsewhere); apart: the two methods' final W apart, relative, in units of rtol.
"""

from __future__ import annotations

import argparse
import sys

import _harness as H  # noqa: I001  (first: pins threads before numpy and jax load)
import diffrax
import numpy as np
from vs_scipy import deep_setting, factored_setting

import flows

RTOL = 1e-8

CASES = {
    # name: (setting, t1, whether a Dopri8 reference at t1 is cheap)
    "sensing to 0.4": (lambda: H.sensing_setting(1e-3), 0.4, True),
    "sensing to 2": (lambda: H.sensing_setting(1e-3), 2.0, True),
    "sensing to 419": (lambda: H.sensing_setting(1e-3), 419.45, False),
    "factored to 1.13": (lambda: factored_setting(1e-2), 1.13, True),
    "factored to 10": (lambda: factored_setting(1e-2), 10.0, True),
    "deep3 to 1": (lambda: deep_setting(0.1), 1.0, True),
    "deep3 to 4.23": (lambda: deep_setting(0.1), 4.23, True),
    "deep3 to 20": (lambda: deep_setting(0.1), 20.0, True),
    "completion m=1000 to 100": (lambda: H.completion_setting(0.1, m=1000), 100.0, False),
    "completion m=1000 to 3000": (lambda: H.completion_setting(0.1, m=1000), 3000.0, False),
    "tail m=2000 to 500": (lambda: H.completion_setting(0.1), 500.0, False),
    "tail m=2000 to 20000": (lambda: H.completion_setting(0.1), 20000.0, False),
}


def case(name: str, repeats: int) -> str:
    make, t1, cheap = CASES[name]
    setting = make()
    default = flows.default_solver(setting.flow, stop_loss=None)

    def run(solver):
        return lambda: flows.solve(
            setting.flow, setting.state0, t1=t1, ts=H.FINAL_ONLY, rtol=RTOL, solver=solver, max_steps=10_000_000
        )

    trajectories, wall = H.interleaved({"Tsit5": run(diffrax.Tsit5()), "default": run(default)}, repeats)
    finals = {key: np.asarray(traj.W[-1]) for key, traj in trajectories.items()}
    ref = H.reference(setting, np.array([t1]))[t1] if cheap else None
    cells = []
    for key, traj in trajectories.items():
        err = "-" if ref is None else f"{H.relative_error(finals[key], ref):.1e}"
        cells.append(f"{wall[key] * 1e3:.1f} ms, {traj.stats['num_steps']} steps, W err {err}")
    default_stats = trajectories["default"].stats
    apart = H.relative_error(finals["default"], finals["Tsit5"]) / RTOL
    return (
        f"| {name} | {type(default).__name__}, switched at {H.switched_at(default_stats)} | "
        + " | ".join(cells)
        + f" | {apart:.2g} | **{wall['Tsit5'] / wall['default']:.2f}x** |"
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=None, help="words: the cases whose names hold one (default all)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    names = [n for n in CASES if args.cases is None or any(word in n for word in args.cases)]
    print(
        "| run (no stop) | the default | Tsit5 | the default | apart (rtol) | Tsit5 / default |\n|---|---|---|---|---|---|"
    )
    for name in names:
        print(case(name, args.repeats), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
