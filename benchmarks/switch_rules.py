"""The switches' rules, each against the rule it replaces.

    python benchmarks/switch_rules.py                 # sensing (1e-3, 1e-2), factored (1e-2), deep3 (0.1)
    python benchmarks/switch_rules.py --settings deep3 --repeats 5
    python benchmarks/switch_rules.py --completion    # the completion experiment's switching runs (n = 30)
    python benchmarks/switch_rules.py --reset --settings sensing factored deep3 tail   # the stiffness count's reset

`flows.Tsit5ThenExtrapolation` decides (1) when to switch: on stiffness, and only where the time left to the stop,
estimated from the loss's rate of decay, is more than `horizon` = 100 of Tsit5's current steps; and (2) when to
re-linearise: when the Gauss-Newton matrix mispredicts the field's change along the last step by more than `defect`
= 0.3 (relative). Rows: the default; `horizon` 0 (switch on stiffness alone); the re-linearisation on the state's
motion (1e-4, relative) or a doubled step (`defect` off); both of those together; Tsit5 throughout. Each until loss
1e-10 at rtol 1e-8, atol 1e-10, final state only; timed repeats interleaved, medians, one process; W err against
Dopri8 at rtol 1e-12 at each row's own final time.

`--completion`: the runs of the completion experiment (n = 30, `experiments.completion`) that the default switch
serves, the unpenalised U V^T and depth-3 products under gradient flow to Arora's training MSE, every seed, at
`horizon` 0, 30, 60, 100 (the default) and 150, and the default with the stiffness count cleared by every short step
(`reset` 1, below): wall time; for the default, 0 and `reset` 1, steps and whether each switched; the largest
difference of the default's and 0's saved W (relative to W's norm at each saved time).

`--reset`: every switch (`flows.AbstractTsit5Then`) counts the steps whose $h\rho$ exceeds its threshold and
clears the count after `reset` = 6 accepted steps below it in a row; against `reset` 1 (the count cleared by every
such step, so a step cut short by a save time or a rejection's retry clears it). Each setting's default solver (the
m = 2000 deep completion tail, `tail`, takes the NDF switch), at `--rtols` (atol = rtol / 100), saving the final state
only and at `flows.solve`'s 200 default save times: wall time, its ratio to `reset` 6's, steps, rejected steps,
where the run switched and W err.
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

import _harness as H  # noqa: I001  (first: pins threads before numpy and jax load)
import diffrax
import numpy as np
from vs_scipy import deep_setting, factored_setting

import flows

SETTINGS = {
    "sensing": lambda: H.sensing_setting(1e-3),
    "sensing-1e-2": lambda: H.sensing_setting(1e-2),
    "factored": lambda: factored_setting(1e-2),
    "deep3": lambda: deep_setting(0.1),
}


def rows() -> dict[str, diffrax.AbstractSolver]:
    by_motion = flows.LinearlyImplicitExtrapolation(defect=np.inf, refresh=1e-4, growth=2.0)
    return {
        "default": flows.Tsit5ThenExtrapolation(),
        "horizon 0": flows.Tsit5ThenExtrapolation(horizon=0.0),
        "re-linearise on motion or doubled step": flows.Tsit5ThenExtrapolation(stiff_solver=by_motion),
        "both": flows.Tsit5ThenExtrapolation(horizon=0.0, stiff_solver=by_motion),
        "Tsit5": diffrax.Tsit5(),
    }


RESET_SETTINGS = {**SETTINGS, "tail": lambda: H.completion_setting(0.1)}
"""--reset's settings: the small ones and the m = 2000 deep completion tail."""


def reset(names: list[str], rtols: list[float], repeats: int) -> None:
    print("| setting | rtol | save times | reset | ms | / reset 6 | steps | rejected | switched at | W err |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in names:
        setting = RESET_SETTINGS[name]()
        default = flows.default_solver(setting.flow, H.STOP_LOSS)
        for rtol in rtols:
            for saved, ts in (("final", H.FINAL_ONLY), ("200 default", None)):
                solves = {
                    r: functools.partial(H.solve_flows, setting, type(default)(reset=r), rtol, rtol / 100, ts)
                    for r in (6, 1)
                }
                wall, outcomes = H.compared(setting, solves, repeats)
                for r, (s, switched, err) in outcomes.items():
                    print(
                        f"| {name} | {rtol:g} | {saved} | {r} | {1e3 * wall[r]:.1f} | {wall[r] / wall[6]:.2f} | "
                        f"{s['num_steps']} | {s['num_rejected_steps']} | {switched} | {err:.1e} |",
                        flush=True,
                    )


HORIZONS = (0.0, 30.0, 60.0, 100.0, 150.0)
"""--completion's horizons; the default is 100."""


def completion(repeats: int) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from experiments._completion import SCALES, build

    scale = SCALES["n = 30"][False]
    solvers: dict = {h: flows.Tsit5ThenExtrapolation(horizon=h) for h in HORIZONS}
    solvers["reset 1"] = flows.Tsit5ThenExtrapolation(reset=1)
    default = flows.Tsit5ThenExtrapolation().horizon
    heads = " | ".join(f"horizon {h:g} ms" for h in HORIZONS)
    print(
        f"| run | {heads} | default, reset 1 ms | steps: default / 0 / reset 1 | switched: default / 0 / reset 1 | max W diff |"
    )
    print("|---|" + "---|" * (len(solvers) + 3))
    totals = dict.fromkeys(solvers, 0.0)
    for parameterization in ("UV^T", "depth 3"):
        for seed in range(scale.seeds):
            config = scale.config(
                seed, parameterization=parameterization, penalty="none", strength=None, dynamics="gradient flow"
            )
            flow, state0 = build(config)
            options = scale.options(config)
            solves = {
                h: functools.partial(flows.solve, flow, state0, solver=solver, **options)
                for h, solver in solvers.items()
            }
            trajectories, wall = H.interleaved(solves, repeats)
            for key in solvers:
                totals[key] += wall[key]
            a, b, c = trajectories[default], trajectories[0.0], trajectories["reset 1"]
            diff = np.max(
                np.linalg.norm(np.asarray(a.W) - np.asarray(b.W), axis=(1, 2))
                / np.linalg.norm(np.asarray(b.W), axis=(1, 2))
            )
            times = " | ".join(f"{1e3 * wall[key]:.0f}" for key in solvers)
            print(
                f"| {parameterization}, seed {seed} | {times} | "
                f"{a.stats['num_steps']} / {b.stats['num_steps']} / {c.stats['num_steps']} | "
                f"{a.stats['switched']} / {b.stats['switched']} / {c.stats['switched']} | {diff:.1e} |",
                flush=True,
            )
    print("| in all (s) | " + " | ".join(f"{totals[key]:.3f}" for key in solvers) + " | | | |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", nargs="+", choices=tuple(RESET_SETTINGS), default=list(SETTINGS))
    parser.add_argument("--reset", action="store_true", help="the stiffness count's reset against clearing it")
    parser.add_argument("--rtols", nargs="+", type=float, default=[1e-8], help="--reset's tolerances")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-tsit5", action="store_true", help="leave out Tsit5 throughout (slow on sensing 1e-3)")
    parser.add_argument("--completion", action="store_true", help="the completion experiment's switching runs")
    args = parser.parse_args(argv)
    if args.completion:
        completion(args.repeats)
        return 0
    if args.reset:
        reset(args.settings, args.rtols, args.repeats)
        return 0
    if set(args.settings) - set(SETTINGS):
        parser.error(
            f"the extrapolation switch's rules are measured on {', '.join(SETTINGS)}; the tail only with --reset"
        )
    for name in args.settings:
        setting = SETTINGS[name]()
        solvers = rows()
        if args.no_tsit5 or name == "sensing":
            solvers.pop("Tsit5")
        solves = {row: functools.partial(H.solve_flows, setting, solver) for row, solver in solvers.items()}
        wall, outcomes = H.compared(setting, solves, args.repeats)
        base = wall["default"]
        print(f"\n## {name}: {setting.name}\n")
        print("| rule | ms | / default | steps | rejected | switched at | linearisations | W err |")
        print("|---|---|---|---|---|---|---|---|")
        for row, (s, switched, err) in outcomes.items():
            print(
                f"| {row} | {1e3 * wall[row]:.1f} | {wall[row] / base:.2f} | {s['num_steps']} | {s['num_rejected_steps']} | "
                f"{switched} | {s.get('linearisations', '-')} | {err:.1e} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
