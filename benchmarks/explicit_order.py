"""The default's explicit phase: Tsit5 (order 5, six evaluations a step) against Dopri8 (order 8, twelve), side by
side in one run, at equal accuracy.

Over each setting's explicit phase (from the start to the default's switch where it switches, to the default's stop
time where it does not), both methods at each rtol (atol = rtol / 100), saving only the end; W err against Dopri8 at
rtol 1e-12 there (the harness's cached reference). The verdict reads Dopri8's wall time at the W err Tsit5 reaches at
rtol 1e-8 (interpolated along Dopri8's work-precision line, as vs_cvode.py does for CVODE) over Tsit5's: above 1,
the higher order costs more for the same accuracy. A higher order pays only where the phase's error per step, not
its stability limit, holds the steps; the default stays with Tsit5 unless every setting says otherwise.

    python benchmarks/explicit_order.py                              # sensing, factored, deep3, the deep tail
    python benchmarks/explicit_order.py --settings tail --repeats 2 --rtols 1e-7 1e-8 1e-9

Run pinned to one core (`taskset -c 1`); repeats interleave the methods; wall = median after a first (compiling) call.
"""

from __future__ import annotations

import argparse

import _harness as H  # noqa: I001  (first: pins threads before numpy and jax load)
import diffrax
from vs_cvode import SETTINGS, atol_for, phase_end, time_at

import flows

METHODS = {"Tsit5": diffrax.Tsit5, "Dopri8": diffrax.Dopri8}


def compare(name: str, rtols: list[float], repeats: int) -> None:
    setting = SETTINGS[name]()
    t_end, what = phase_end(setting)
    print(f"\n{name}: [0, {t_end:.6g}] (to the default's {what})")
    points: dict[str, list[tuple[float, float]]] = {m: [] for m in METHODS}
    for rtol in rtols:
        runs = {
            m: (
                lambda cls=cls: flows.solve(
                    setting.flow,
                    setting.state0,
                    t1=t_end,
                    ts=[0.0, t_end],
                    rtol=rtol,
                    atol=atol_for(rtol),
                    solver=cls(),
                    max_steps=1_000_000,
                )
            )
            for m, cls in METHODS.items()
        }
        walls, outcomes = H.compared(setting, runs, repeats)
        for m, (stats, _, err) in outcomes.items():
            wall = walls[m]
            points[m].append((err, wall))
            print(
                f"  rtol {rtol:.0e}  {m:7s} {stats['num_steps']:6d} steps ({stats['num_rejected_steps']:3d} "
                f"rejected)  {wall * 1e3:9.1f} ms  W err {err:.2e}"
            )
    if H.RTOL not in rtols:
        return
    err, wall = points["Tsit5"][rtols.index(H.RTOL)]
    at = time_at(points["Dopri8"], err)
    if at is None:
        cheapest = min(points["Dopri8"], key=lambda p: p[1])
        print(
            f"  Dopri8 at Tsit5's W err {err:.1e} (rtol {H.RTOL:g}): outside its measured errors; its cheapest run "
            f"(W err {cheapest[0]:.1e}) {cheapest[1] * 1e3:.1f} ms, {cheapest[1] / wall:.2f}x Tsit5's"
        )
    else:
        print(f"  Dopri8 at Tsit5's W err {err:.1e} (rtol {H.RTOL:g}): {at * 1e3:.1f} ms, **{at / wall:.2f}x** Tsit5's")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--settings", nargs="+", default=["sensing", "factored", "deep3", "tail"], choices=SETTINGS)
    parser.add_argument("--rtols", nargs="+", type=float, default=[1e-6, 1e-7, 1e-8, 1e-9, 1e-10])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    if "large" in args.settings:
        parser.error("the n = 1000 setting runs over a window, not into a switch: not compared here")
    for name in args.settings:
        compare(name, args.rtols, args.repeats)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
