"""What locating the stop costs, and what the landing's two settings change.

    python benchmarks/stop_landing.py                       # sensing (1e-3, 1e-2), factored (1e-2), deep3 (0.1)
    python benchmarks/stop_landing.py --settings deep3 --repeats 7

With `stop_loss`, `flows.solve` lands a step within `window` (in log loss) below the stop and rejects a step that
overshoots further, retrying it to end where the secant of log loss through the step's ends reaches the middle of
the window, at least the fraction `shortest` of the step (`flows.LandOnEvent`); the event's root finding then places
the stop on the dense output of that last step. Each rejection costs a step, and a stiff solver's steps are long and
costly. Rows, each until loss 1e-10 at rtol 1e-8, atol 1e-10, final state only, with the default solver:

* `window w, shortest s, share f`: the landing with those settings (the default: 0.05, 0.05 and 0.05);
* `default landing, no switch tests` (where the default does not switch): its solver with the stiffness threshold
  out of reach, so it never tests whether the rest is worth switching (a Jacobian-vector product of the loss at
  each step once Tsit5 is held by stability);
* `no stop`: the same solver to the default row's final time, fixed, with no stop to locate (the cost of the run
  without the landing; an extrapolation switch then switches on stiffness alone, as the default did where it
  switched, and makes no switch tests where it did not).

Timed repeats interleaved, medians, one process. W err: against Dopri8 at rtol 1e-12 at each row's own final time;
W - default: the final W's distance from the default row's, relative; both relative to the reference's norm.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import sys

import _harness as H  # noqa: I001  (first: pins threads before numpy and jax load)
import equinox as eqx
import jax
import numpy as np
from switch_rules import SETTINGS

import flows
from flows._solve import Plan, _integrate

VARIANTS = ((0.05, 0.05, 0.05), (0.05, 0.05, 1.0), (0.01, 0.05, 1.0), (0.01, 1e-3, 1.0), (0.2, 0.05, 0.05))
"""(window, shortest, share) of each landing row; the first is `flows.LandOnEvent`'s default, the third its landing
before `share` (a 1 % window alone; `share` 1 is the window alone)."""


def with_landing(controller, **changes):
    """`controller` (a chain of wrappers, as `flows.solve` builds it) with its `flows.LandOnEvent` given `changes`."""
    if isinstance(controller, flows.LandOnEvent):
        return dataclasses.replace(controller, **changes)
    if not hasattr(controller, "controller"):
        raise ValueError(f"no flows.LandOnEvent in the controller chain (it ends at {type(controller).__name__})")
    return eqx.tree_at(lambda c: c.controller, controller, with_landing(controller.controller, **changes))


def landed(setting: H.Setting, window: float, shortest: float, share: float, solver=None) -> flows.Trajectory:
    """`flows.solve` until the stop with `solver` (None: the default), its landing given `window`, `shortest` and
    `share`."""
    plan = Plan.make(
        H.T_MAX, H.FINAL_ONLY, rtol=H.RTOL, atol=H.ATOL, stop_loss=H.STOP_LOSS, solver=solver, max_steps=3_000_000
    ).resolve(setting.flow)
    landing = with_landing(plan.controller, window=window, shortest=shortest, share=share)
    plan = dataclasses.replace(plan, controller=landing)
    raw = _integrate(setting.flow, setting.state0, *plan.arrays(), **plan.static())
    return plan.finish(setting.flow, jax.device_get(raw))


def unswitched(setting: H.Setting, default: flows.Trajectory):
    """Where the default did not switch, its solver without the switch's tests (never stiff enough to ask whether
    the rest is worth switching: no time-to-stop estimates); None where it switched."""
    solver = flows.default_solver(setting.flow, H.STOP_LOSS)
    if default.stats.get("switched", True):
        return None
    return dataclasses.replace(solver, threshold=np.inf)


def unstopped(setting: H.Setting, default: flows.Trajectory) -> functools.partial:
    """The default solver to the default run's final time with no stop: switching on stiffness alone where the
    default switched (horizon 0: without the stop its horizon would weigh the time left to this t1 instead), without
    the switch's tests where it did not (`unswitched`)."""
    solver = unswitched(setting, default) or flows.default_solver(setting.flow, H.STOP_LOSS)
    if getattr(solver, "horizon", 0.0) and default.stats["switched"]:
        solver = dataclasses.replace(solver, horizon=0.0)
    t1 = float(default.ts[-1])
    return functools.partial(
        flows.solve, setting.flow, setting.state0, t1=t1, ts=[0.0, t1], rtol=H.RTOL, atol=H.ATOL, solver=solver
    )


def table(name: str, setting: H.Setting, repeats: int) -> None:
    label = {v: f"window {v[0]:g}, shortest {v[1]:g}, share {v[2]:g}" for v in VARIANTS}
    solves = {label[v]: functools.partial(landed, setting, *v) for v in VARIANTS}
    default = label[VARIANTS[0]]
    first = solves[default]()
    quiet = unswitched(setting, first)
    if quiet is not None:
        solves["default landing, no switch tests"] = functools.partial(landed, setting, *VARIANTS[0], quiet)
    solves["no stop"] = unstopped(setting, first)
    trajectories, wall = H.interleaved(solves, repeats)
    finals = {row: float(traj.ts[-1]) for row, traj in trajectories.items()}
    ref = H.reference(setting, np.array(sorted(set(finals.values()))))
    W_default = np.asarray(trajectories[default].W[-1])
    print(f"\n## {name}: {setting.name}\n")
    print("| landing | ms | / default | steps | rejected | switched at | t final | loss | W err | W - default |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row, traj in trajectories.items():
        s = traj.stats
        switched = f"{s['t_switch']:.4g}" if s.get("switched") else "-"
        W = np.asarray(traj.W[-1])
        err = H.relative_error(W, ref[finals[row]])
        apart = H.relative_error(W, W_default)
        print(
            f"| {row} | {1e3 * wall[row]:.1f} | {wall[row] / wall[default]:.2f} | {s['num_steps']} | "
            f"{s['num_rejected_steps']} | {switched} | {finals[row]:.7g} | {float(traj.loss[-1]):.4g} | {err:.1e} | "
            f"{apart:.1e} |",
            flush=True,
        )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", nargs="+", choices=tuple(SETTINGS), default=list(SETTINGS))
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    for name in args.settings:
        table(name, SETTINGS[name](), args.repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
