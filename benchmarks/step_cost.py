"""Where the small settings' time goes, a step at a time, and whether the step-size controller's gains buy fewer steps.

Per step (the default): on each setting at rtol 1e-8 (atol 1e-10), the default's explicit phase (to its switch, or to
its stop on factored, which does not switch) in Tsit5 steps alone (the default's switch with `patience=10**9`, which
never switches: the default's own steps there), saving the end only: with the stop set (`stop_loss`:
`flows.LandOnEvent` and the event, reached on factored only), without it, and without it under the extrapolation
switch with conjugate-gradient solves, whose stiff state is two vectors (where `flows.Woodbury`'s holds the m x m
kernel's eigenvectors and the NDF's its difference array). The three take the same steps (checked). Each attempted
step is split into
* six field evaluations (Tsit5's stages, first same as last), each priced inside a compiled loop (median of 5);
* the stop: the difference of the runs with and without it: at each step's end one evaluation of its distance
  where `flows.LandOnEvent` decides whether the step overshoots, one in the event's condition, which Diffrax
  evaluates itself without access to the controller's or the solver's state; each is the problem's `LossFloor`
  where that is far above the stop, else the data loss (priced the same way). Beside it, the same run on the problem
  without its floor (`_harness.without_floor`: the loss at every step), and the default's whole run both ways;
* the idle stiff state: the run without the stop against the same with the two-vector stiff state;
* the run's fixed cost (checks, dispatch, the host-side result: a solve of the same kind over a few steps) spread
  over the steps;
* and the rest: the integration loop itself (the stages' sums, the error norm, the step-size controller and its
  landing on the save times, the switch's stiffness test), and the fields running slower inside it than alone.
The default's own run (the whole of it, stiff phase included) is printed beside them; on factored it takes the same
steps and adds the switch's horizon test (one Jacobian-vector product of the loss at each stiff step once the
stiffness count stands) and the stop's landing.

Gains (`--gains`): the default to the stop at rtol 1e-7, 1e-8 and 1e-9 (atol = rtol / 100) under the PID controller's
(pcoeff, icoeff) pairs (the default (0, 1): integral control alone); W err against Dopri8 at rtol 1e-12 at each run's
own final time. The verdict: each pair's time at the W err the default reaches at rtol 1e-8, interpolated along that
pair's work-precision line (as vs_cvode.py does for CVODE), over the default's time.

    taskset -c 1 python benchmarks/step_cost.py                  # sensing, factored, deep3: per step, ~1 min
    taskset -c 1 python benchmarks/step_cost.py --gains          # the same three: the gains, ~3 min

Run pinned to one core (`taskset -c 1`); repeats interleave the runs; wall = median after a first (compiling) call.
"""

from __future__ import annotations

import argparse

import _harness as H  # noqa: I001  (first: pins threads before numpy and jax load)
import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
from vs_cvode import SETTINGS, atol_for, phase_end, time_at

import flows

STAGES = 6
"""Field evaluations in a step of Tsit5 (seven stages, the first the last step's)."""

GAINS = ((0.0, 1.0), (0.1, 0.8), (0.2, 0.7), (0.3, 0.4), (0.4, 0.3))
"""(pcoeff, icoeff): the default's (0, 1) first, then proportional control mixed in."""


@eqx.filter_jit
def _losses(flow, state, k):
    """`k` (traced) evaluations of the data loss in one compiled loop from `state`: x <- x + c L(x)."""
    return jax.lax.fori_loop(0, k, lambda i, x: jax.tree.map(lambda a: a + 1e-12 * flow.loss(x), x), state)


def parts(name: str, repeats: int) -> None:
    setting = SETTINGS[name]()
    t_end, what = phase_end(setting)
    # The default's own switch, never switching; and the same explicit steps carrying a two-vector stiff state.
    never = type(flows.default_solver(setting.flow, H.STOP_LOSS))(patience=10**9)
    small = flows.Tsit5ThenExtrapolation(
        patience=10**9, stiff_solver=flows.LinearlyImplicitExtrapolation(linear_solver=flows.ConjugateGradient())
    )

    alone = H.without_floor(setting)

    def explicit(stop_loss, solver=never, t1=t_end, flow=setting.flow):
        return flows.solve(
            flow,
            setting.state0,
            t1=t1,
            ts=[0.0, t1],
            rtol=H.RTOL,
            atol=H.ATOL,
            stop_loss=stop_loss,
            solver=solver,
            max_steps=3_000_000,
        )

    runs = {
        "default (whole run)": lambda: H.solve_flows(setting),
        "default, loss alone": lambda: H.solve_flows(alone),
        "with the stop": lambda: explicit(H.STOP_LOSS),
        "stop, loss alone": lambda: explicit(H.STOP_LOSS, flow=alone.flow),
        "without": lambda: explicit(None),
        "without, CG": lambda: explicit(None, small),
        "a few steps": lambda: explicit(H.STOP_LOSS, t1=1e-6 * t_end),
    }
    trajs, wall = H.interleaved(runs, repeats)
    compared = ("with the stop", "stop, loss alone", "without", "without, CG")
    counts = {label: (trajs[label].stats["num_steps"], trajs[label].stats["num_rejected_steps"]) for label in compared}
    if len(set(counts.values())) != 1:
        raise RuntimeError(f"{name}: the compared runs took different steps ({counts}): the split would not hold")
    field = H.priced(H.evaluations, setting.flow, setting.state0)
    loss = H.priced(_losses, setting.flow, setting.state0)
    print(f"\n{name}: the explicit steps to the default's {what} at t = {t_end:.6g}, rtol {H.RTOL:g}")
    for label, traj in trajs.items():
        steps = traj.stats["num_steps"]
        print(
            f"  {label:20s} {steps:5d} steps ({traj.stats['num_rejected_steps']:3d} rejected), {wall[label] * 1e3:7.1f} "
            f"ms, {wall[label] / steps * 1e6:7.1f} us a step"
        )
    steps = counts["with the stop"][0]
    per_step = wall["with the stop"] / steps
    fields = STAGES * field
    stop = (wall["with the stop"] - wall["without"]) / steps
    idle = (wall["without"] - wall["without, CG"]) / steps
    fixed = wall["a few steps"] / steps
    rest = per_step - fields - stop - idle - fixed
    shares = ", ".join(
        f"{label} {part * 1e6:.1f} us ({part / per_step:.0%})"
        for label, part in (
            ("fields", fields),
            ("the stop", stop),
            ("the idle stiff state", idle),
            ("the run's fixed cost", fixed),
            ("the rest", rest),
        )
    )
    print(f"  a step with the stop, {per_step * 1e6:.1f} us: {shares}")
    print(f"  one field evaluation {field * 1e6:.1f} us, one loss evaluation {loss * 1e6:.1f} us (compiled loops)")
    floor = wall["stop, loss alone"] / steps - per_step
    whole = wall["default (whole run)"] / wall["default, loss alone"]
    print(
        f"  the stop reading the loss alone (no floor): {(stop + floor) * 1e6:.1f} us a step "
        f"({(stop + floor) / (per_step + floor):.0%} of its step); the default's whole run with the floor over the same "
        f"reading the loss alone: {whole:.3f}x"
    )


def gains(name: str, rtols: list[float], repeats: int) -> None:
    setting = SETTINGS[name]()
    print(f"\n{name}: the default to its stop under (pcoeff, icoeff)")
    points: dict[tuple[float, float], list[tuple[float, float]]] = {g: [] for g in GAINS}
    for rtol in rtols:

        def run(g, rtol=rtol):
            controller = diffrax.PIDController(
                rtol=jnp.asarray(rtol), atol=jnp.asarray(atol_for(rtol)), pcoeff=g[0], icoeff=g[1]
            )
            return H.solve_flows(setting, None, rtol, atol_for(rtol), stepsize_controller=controller)

        walls, outcomes = H.compared(setting, {g: (lambda g=g: run(g)) for g in GAINS}, repeats)
        for g, (stats, _, err) in outcomes.items():
            wall = walls[g]
            points[g].append((err, wall))
            print(
                f"  rtol {rtol:.0e}  {str(g):10s} {stats['num_steps']:5d} steps "
                f"({stats['num_rejected_steps']:3d} rejected)  {wall * 1e3:7.1f} ms  W err {err:.2e}"
            )
    if H.RTOL not in rtols:
        return
    err, wall = points[GAINS[0]][rtols.index(H.RTOL)]
    for g in GAINS[1:]:
        at = time_at(points[g], err)
        verdict = "outside its measured errors" if at is None else f"{at * 1e3:.1f} ms, **{at / wall:.2f}x**"
        print(f"  {g} at the default's W err {err:.1e} (rtol {H.RTOL:g}): {verdict} the default's {wall * 1e3:.1f} ms")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--settings", nargs="+", default=["sensing", "factored", "deep3"], choices=SETTINGS)
    parser.add_argument("--gains", action="store_true", help="the controller's gains instead of the per-step parts")
    parser.add_argument("--rtols", nargs="+", type=float, default=[1e-7, 1e-8, 1e-9])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    if "large" in args.settings:
        parser.error("the n = 1000 setting runs over a window, not to a stop: not measured here")
    for name in args.settings:
        if args.gains:
            gains(name, args.rtols, args.repeats)
        else:
            parts(name, args.repeats)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
