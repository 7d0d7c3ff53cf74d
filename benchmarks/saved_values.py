"""What landing the steps on the save times costs, and what it buys: Tsit5 under the default controller (steps
landed on `ts`) against the same solver and controller interpolating at `ts` (the controller passed explicitly, which
`solve` does not clip for Diffrax's solvers), side by side in one process.

Flows (the default 200 log-spaced save times over [0, t1], Tsit5, each flow's default controller gains): U U^T
sensing (n = 30, m = 180, from 1e-3 I, t1 = 100), depth 3 and depth 4 on the same sensing problem from Gaussian
factors of scale 0.3 (t1 = 300), and the Adam flow (a = 10, b = 1, eps = 1e-8) of U U^T from 1e-3 I (t1 = 10): whole
runs, their tails included, where Tsit5's steps are held by stability. Error: the largest ||W - W_ref||_F /
||W_ref||_F over the saved times in units of rtol, W_ref from Dopri8 at rtol 1e-12 with its steps landed.

    python benchmarks/saved_values.py --rtols 1e-8

`--explicit`: runs that stop at loss 1e-8 before their tails turn stiff, where every step is held by accuracy (the
default solver's explicit phase; its stiff phase lands on the save times whatever the controller): U V^T completion
(n = 30, m = 180, from 1e-3) and depths 2, 3 and 4 on the same problem from balanced factors of scale 0.3, t1 = 1e4;
the save times past either run's stop are left out of the error.

    taskset -c 1 python benchmarks/saved_values.py --explicit --rtols 1e-8 1e-10 --repeats 5

`--landing`: how the steps land on the save times. `flows.LandOnTimes` (the default: a save time within 1.5
proposed steps is reached in two equal steps) against `diffrax.ClipStepSizeController` (the step clipped to it,
which leaves a sliver where a save time lies just beyond a step) and against dividing the whole way to each save time
into equal steps no longer than proposed (`Divided`, here only), everything else the default solve's, on
vs_cvode.py's settings (sensing, factored, deep3, the deep completion tail) to their stop at loss 1e-10, saving at
`flows.default_ts(t_stop, 200)` with t_stop the default's own stop when saving the final state only (vs_cvode.py's
`--saves 200` times, whose references it caches). Error: the largest ||W - W_ref||_F / ||W_ref||_F over the saved
times, in units of rtol; t_switch: where the switching solver switched.

    taskset -c 1 python benchmarks/saved_values.py --landing --rtols 1e-8 1e-10

`--defect`: the dense output's error, and its defect. Between steps Tsit5's dense output u has the defect
delta = u' - f(u); from the step's start t_k, where u is the step's own value, e = u - z for z the flow through u(t_k)
obeys e' = J e + delta, e(t_k) = 0, so e(s) is the integral of delta over [t_k, s] up to terms of order h ||J|| e.
`CorrectedTsit5` is Diffrax's Tsit5 whose dense output is u minus that integral (3-point Gauss-Legendre: three field
evaluations per value), its steps Tsit5's own. Tsit5 interpolating, the same corrected, and Tsit5 landed (the
default), on `--explicit`'s runs to their stop and on depth 4 from the balanced start of singular values
1e-2 (1, 0.8, 0.6) aligned with a fully observed 3 x 3 target, to t1 = 3000 (against its closed form,
`analysis.closed_form.aligned_balanced_flow`); with `--tails`, on the whole runs above, whose tails' steps are held
by stability (h ||J|| at Tsit5's limit, where the neglected term is largest). Per run: the largest error of each, and
the integral (the interpolated and corrected values' difference) against the interpolated value's error.

    taskset -c 1 python benchmarks/saved_values.py --defect --rtols 1e-8 1e-10 1e-12
    taskset -c 1 python benchmarks/saved_values.py --defect --tails --rtols 1e-8 --repeats 1
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
from typing import ClassVar

import _harness as H  # noqa: I001  (first: pins threads before numpy and jax load)
import diffrax
import jax
import jax.numpy as jnp
import numpy as np

import flows
from analysis import closed_form

STOP = 1e-8
"""`--explicit`'s stopping loss: the runs end before their stiff tails, in the default's explicit phase."""


def whole_runs():
    """(name, flow, state0, t1, stop_loss): runs to a fixed t1, tails included (Tsit5's steps there are held by
    stability, not accuracy)."""
    problem = flows.sensing(n=30, m=180, rank=2, seed=0)
    sym = flows.Flow(problem, flows.Symmetric())
    yield "U U^T, 1e-3", sym, sym.init(scale=1e-3), 100.0, None
    for depth in (3, 4):
        deep = flows.Flow(problem, flows.Deep(depth=depth))
        yield f"depth {depth}, 0.3", deep, deep.init(scale=0.3, kind="gaussian", seed=1), 300.0, None
    adam = flows.Flow(problem, flows.Symmetric(), dynamics=flows.Adam(a=10.0, b=1.0, eps=1e-8))
    yield "Adam U U^T, 1e-3", adam, adam.init(scale=1e-3), 10.0, None


def explicit_runs():
    """Runs that end at loss `STOP` before their tails turn stiff: every step is held by accuracy, as in the default's
    explicit phase, where the landing's extra steps are paid."""
    problem = flows.completion(n=30, m=180, rank=2, seed=0)
    factored = flows.Flow(problem, flows.Factored())
    yield "U V^T, 1e-3", factored, factored.init(scale=1e-3), 1e4, STOP
    for depth in (2, 3, 4):
        deep = flows.Flow(problem, flows.Deep(depth=depth))
        yield f"depth {depth}, balanced 0.3", deep, deep.init(scale=0.3, kind="balanced"), 1e4, STOP


def main(explicit: bool, rtols: list[float], repeats: int) -> int:
    runs = explicit_runs() if explicit else whole_runs()
    ends = f"to loss {STOP:g}" if explicit else "to t1"
    print(f"# Tsit5, 200 log-spaced save times, {ends}; wall: median of {repeats} after a compiling call\n")
    print(
        "| flow | rtol | landed: steps | wall s | err / rtol | interpolated: steps | wall s | err / rtol | "
        "steps ratio | wall ratio |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, flow, state0, t1, stop in runs:
        ts = flows.default_ts(t1)
        reference = flows.solve(
            flow, state0, t1=t1, ts=ts, rtol=1e-12, stop_loss=stop, solver=diffrax.Dopri8(), max_steps=10_000_000
        )
        for rtol in rtols:
            controller = flows.ArraywiseRelative.make(
                rtol, error_control=flows._solve._error_control, gains=flow.controller_gains
            )
            common = dict(t1=t1, ts=ts, rtol=rtol, stop_loss=stop, solver=diffrax.Tsit5())
            solves = {
                "landed": lambda: flows.solve(flow, state0, **common),
                "interpolated": lambda: flows.solve(flow, state0, **common, stepsize_controller=controller),
            }
            out, seconds = H.interleaved(solves, repeats)
            cells = []
            for label in solves:
                traj = out[label]
                # The save times both runs reached, without a stopped run's last entry (its own stopping time).
                k = min(len(traj.ts), len(reference.ts)) - (0 if stop is None else 1)
                assert np.array_equal(traj.ts[:k], reference.ts[:k])
                err = H.largest_relative_error(traj.W[:k], reference.W[:k])
                cells.append(f"{traj.stats['num_steps']} | {seconds[label]:.3g} | {err / rtol:.1f}")
            steps = out["landed"].stats["num_steps"] / out["interpolated"].stats["num_steps"]
            wall = seconds["landed"] / seconds["interpolated"]
            print(f"| {name} | {rtol:g} | " + " | ".join(cells) + f" | {steps:.2f} | {wall:.2f} |", flush=True)
    return 0


GAUSS = np.polynomial.legendre.leggauss(3)
"""The defect's quadrature over [t_k, s]: Gauss-Legendre nodes and weights on [-1, 1]."""


def defect_integral(interpolation, field, start, end):
    """The integral over [start, end] of the defect u' - f(u) of the dense output u = `interpolation`, by `GAUSS`."""

    def defect(x):
        t = 0.5 * (end - start) * x + 0.5 * (start + end)
        return jax.tree.map(jnp.subtract, interpolation.derivative(t), field(t, interpolation.evaluate(t)))

    parts = [jax.tree.map(lambda d, w=w: 0.5 * (end - start) * w * d, defect(x)) for x, w in zip(*GAUSS)]
    return jax.tree.map(lambda *d: sum(d), *parts)


class _Corrected(diffrax.AbstractPath):
    """Tsit5's dense output over a step minus its defect's integral from the step's start: u(s) - int delta."""

    t0: float
    t1: float
    tsit5: diffrax.AbstractPath
    args: flows._solve.FlowArgs

    def __init__(self, *, t0, t1, y0, y1, k, args):
        self.t0, self.t1, self.args = t0, t1, args
        self.tsit5 = diffrax.Tsit5.interpolation_cls(t0=t0, t1=t1, y0=y0, y1=y1, k=k)

    def evaluate(self, t0, t1=None, left=True):
        if t1 is not None:
            return jax.tree.map(jnp.subtract, self.evaluate(t1), self.evaluate(t0))
        integral = defect_integral(self.tsit5, self.args.flow.vector_field, self.t0, t0)
        return jax.tree.map(jnp.subtract, self.tsit5.evaluate(t0), integral)


class CorrectedTsit5(diffrax.AbstractAdaptiveSolver):
    """Diffrax's Tsit5 whose dense output (the save times between steps, the stop's root) is `_Corrected`: three
    field evaluations per value, the step's own values unchanged. At a step's end the corrected value differs from
    the step's own by about its local error, so a stop located on it may end that much above the threshold."""

    tsit5: diffrax.Tsit5 = diffrax.Tsit5()
    term_structure: ClassVar = diffrax.AbstractTerm
    interpolation_cls: ClassVar = _Corrected

    def order(self, terms):
        return self.tsit5.order(terms)

    def init(self, terms, t0, t1, y0, args):
        return self.tsit5.init(terms, t0, t1, y0, args)

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        y1, error, dense_info, solver_state, result = self.tsit5.step(terms, t0, t1, y0, args, solver_state, made_jump)
        return y1, error, dict(dense_info, args=args), solver_state, result

    def func(self, terms, t0, y0, args):
        return self.tsit5.func(terms, t0, y0, args)


def aligned_deep4():
    """(flow, state0, exact W(ts)): depth 4 on every entry of a 3 x 3 target Y = U diag(1, 0.5, 0.25) V^T from the
    balanced start aligned with it, singular values 1e-2 (1, 0.8, 0.6) (`analysis.closed_form.aligned_balanced_flow`)."""
    y, s0, depth = np.array([1.0, 0.5, 0.25]), 1e-2 * np.array([1.0, 0.8, 0.6]), 4
    rng = np.random.default_rng(0)
    problem, U, V = closed_form.aligned_target(y, rng)
    state0 = closed_form.aligned_balanced_factors(U, V, s0, depth, rng)
    return (
        flows.Flow(problem, flows.Deep(depth=depth)),
        state0,
        lambda ts: closed_form.aligned_balanced_flow(U, y, V, s0, depth, ts),
    )


def defect_runs(tails: bool):
    """`whole_runs` (`tails`), or `explicit_runs` and the aligned depth-4 flow; each with its exact W(ts) or None."""
    if tails:
        for name, flow, state0, t1, stop in whole_runs():
            yield name, flow, state0, t1, stop, None
        return
    for name, flow, state0, t1, stop in explicit_runs():
        yield name, flow, state0, t1, stop, None
    flow, state0, exact = aligned_deep4()
    yield "depth 4, aligned balanced 1e-2, to t = 3000", flow, state0, 3000.0, None, exact


def defect(tails: bool, rtols: list[float], repeats: int) -> int:
    ends = "to t1" if tails else f"to loss {STOP:g} (the aligned flow to t = 3000)"
    print(f"# 200 log-spaced save times, {ends}; errors in rtol; wall: median of {repeats} after a compiling call\n")
    print(
        "| flow | rtol | steps | interpolated: largest err | integral / err where err > 1 rtol: median (range) "
        "| corrected: largest err | landed: steps, err | wall s: interpolated, corrected, landed | corrected / landed |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name, flow, state0, t1, stop, exact in defect_runs(tails):
        ts = flows.default_ts(t1)
        if exact is None:
            reference = flows.solve(
                flow, state0, t1=t1, ts=ts, rtol=1e-12, stop_loss=stop, solver=diffrax.Dopri8(), max_steps=10_000_000
            )
            ref_ts, ref_W = reference.ts, reference.W
        else:
            ref_ts, ref_W = np.asarray(ts), exact(ts)
        for rtol in rtols:
            controller = flows.ArraywiseRelative.make(
                rtol, error_control=flows._solve._error_control, gains=flow.controller_gains
            )
            common = dict(t1=t1, ts=ts, rtol=rtol, stop_loss=stop)
            solves = {
                "interpolated": lambda: flows.solve(
                    flow, state0, **common, solver=diffrax.Tsit5(), stepsize_controller=controller
                ),
                "corrected": lambda: flows.solve(
                    flow, state0, **common, solver=CorrectedTsit5(), stepsize_controller=controller
                ),
                "landed": lambda: flows.solve(flow, state0, **common, solver=diffrax.Tsit5()),
            }
            out, seconds = H.interleaved(solves, repeats)
            # The save times every run reached, without a stopped run's last entry (its own stopping time).
            k = min(len(traj.ts) for traj in out.values())
            k = min(k, len(ref_ts)) - (0 if stop is None else 1)
            assert all(np.array_equal(traj.ts[:k], ref_ts[:k]) for traj in out.values())
            norms = np.linalg.norm(ref_W[:k], axis=(1, 2))
            err = {
                label: np.linalg.norm(traj.W[:k] - ref_W[:k], axis=(1, 2)) / norms / rtol for label, traj in out.items()
            }
            # The same steps: the interpolated and corrected values differ by the integral alone.
            assert out["interpolated"].stats["num_steps"] == out["corrected"].stats["num_steps"]
            integral = np.linalg.norm(out["interpolated"].W[:k] - out["corrected"].W[:k], axis=(1, 2)) / norms / rtol
            off = err["interpolated"] > 1
            ratio = integral[off] / err["interpolated"][off]
            ratios = f"{np.median(ratio):.3g} ({ratio.min():.3g} .. {ratio.max():.3g})" if ratio.size else "-"
            walls = ", ".join(f"{seconds[label]:.3g}" for label in solves)
            print(
                f"| {name} | {rtol:g} | {out['interpolated'].stats['num_steps']} | "
                f"{err['interpolated'].max():.3g} | {ratios} | {err['corrected'].max():.3g} | "
                f"{out['landed'].stats['num_steps']}, {err['landed'].max():.3g} | {walls} | "
                f"{seconds['corrected'] / seconds['landed']:.2f} |",
                flush=True,
            )
    return 0


class Divided(flows._control.AbstractLandOnTimes):
    """The way to the next of `ts` divided into equal steps no longer than the inner controller proposes."""

    controller: diffrax.AbstractAdaptiveStepSizeController
    ts: jax.Array

    def _toward(self, t0, t1, target) -> jax.Array:
        steps = jnp.maximum(jnp.ceil((target - t0) / (t1 - t0) * (1.0 - 1e-12)), 1.0)
        return jnp.where(steps <= 1.0, target, t0 + (target - t0) / steps)


def landings(plan) -> dict:
    """`plan` (the default: `flows.LandOnTimes` outermost) and the same with each other landing in its place."""
    default = plan.controller
    assert isinstance(default, flows.LandOnTimes), "the default plan lands with flows.LandOnTimes outermost"
    inner, ts = default.controller, default.ts
    return {
        "clipped": dataclasses.replace(plan, controller=diffrax.ClipStepSizeController(inner, step_ts=ts)),
        # pyright lists the inner controller's eqx.AbstractVar fields (rtol, atol, norm), met by properties, as __init__'s.
        "divided": dataclasses.replace(plan, controller=Divided(inner, ts)),  # pyright: ignore[reportCallIssue]
        "default": plan,
    }


def landing(names: list[str], rtols: list[float], repeats: int, atol: float | None) -> int:
    from vs_cvode import SETTINGS

    control = "arraywise relative" if atol is None else f"atol = {atol:g} rtol"
    print(
        f"# 200 save times over each run to loss {H.STOP_LOSS:g}, {control}; wall: median of {repeats} after a "
        "compiling call\n"
    )
    print("| setting | rtol | landing | steps (rejected) | t_switch | wall s | err / rtol | time / clipped's |")
    print("|---|---|---|---|---|---|---|---|")
    for name in names:
        setting = SETTINGS[name]()
        ts = np.asarray(flows.default_ts(H.run_flows(setting).t_final, 200))
        reference = H.reference(setting, ts[1:])
        for rtol in rtols:
            tolerance = None if atol is None else atol * rtol
            plan = flows._solve.Plan.make(
                H.T_MAX, ts, rtol=rtol, atol=tolerance, stop_loss=H.STOP_LOSS, max_steps=3_000_000
            )
            plan = plan.resolve(setting.flow)
            plans = landings(plan)

            def run(plan):
                raw = flows._solve._integrate(setting.flow, setting.state0, *plan.arrays(), **plan.static())
                return plan.finish(setting.flow, jax.device_get(raw))

            out, seconds = H.interleaved({label: functools.partial(run, p) for label, p in plans.items()}, repeats)
            for label in plans:
                traj = out[label]
                errors = [
                    H.relative_error(W, reference[float(t)]) for t, W in zip(traj.ts, traj.W) if float(t) in reference
                ]
                stats = traj.stats
                switch = stats.get("t_switch")
                ratio = seconds[label] / seconds["clipped"]
                print(
                    f"| {name} | {rtol:g} | {label} | {stats['num_accepted_steps']} ({stats['num_rejected_steps']}) | "
                    f"{'-' if switch is None else f'{switch:.4g}'} | {seconds[label]:.3g} | "
                    f"{max(errors) / rtol:.1f} | {ratio:.2f}x |",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    import warnings

    warnings.simplefilter("ignore", flows.FaithfulnessWarning)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--landing", action="store_true", help="the landings against each other (see above)")
    parser.add_argument("--explicit", action="store_true", help="runs that stop before their tails (see above)")
    parser.add_argument("--defect", action="store_true", help="the dense output's error and its defect (see above)")
    parser.add_argument("--tails", action="store_true", help="--defect on the whole runs, tails included")
    parser.add_argument("--settings", nargs="+", default=["sensing", "factored", "deep3", "tail"])
    parser.add_argument("--rtols", nargs="+", type=float, default=[1e-8])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--atol",
        type=float,
        default=None,
        help="atol = this x rtol (vs_cvode.py's runs: 0.01); default: none, the default arraywise relative control",
    )
    args = parser.parse_args()
    if args.landing:
        raise SystemExit(landing(args.settings, args.rtols, args.repeats, args.atol))
    if args.defect:
        raise SystemExit(defect(args.tails, args.rtols, args.repeats))
    raise SystemExit(main(args.explicit, args.rtols, args.repeats))
