"""flows.solve's default against CVODE (SUNDIALS BDF through scikit-sundae) and LSODA, side by side in one run.

Every method integrates the same flow (`flow.vector_field`, jitted) from the same state at rtol 1e-8, atol 1e-10
until the data loss falls to 1e-10 (each its own root finding: flows' located stop, CVODE's and scipy's events),
saving the final state only; W err is against Dopri8 at rtol 1e-12 at each method's own final time.

Methods. `flows default`: `flows.solve` with its default solver. `CVODE dense`: BDF (orders 1-5), Newton with a
dense LU (LAPACK: SUNDIALS' own dense LU took 250 s on the 1800 unknowns of `factored`) of the exact Jacobian
(`jax.jacfwd` of the field, jitted), for states up to `--dense-max` unknowns.
`CVODE Krylov`: BDF, Newton-GMRES (Krylov dimension `--krylov-dim`) with exact Jacobian-vector products
(`jax.jvp`, jitted). `LSODA+jac`: scipy's LSODA with the dense Jacobian (up to `--dense-max`). The scipy and
CVODE rows call their jitted JAX functions through Python callbacks, which is how a user would couple them; the
callback overhead is part of what they cost.

    python benchmarks/vs_cvode.py                          # sensing, factored, deep3, the m = 2000 deep tail
    python benchmarks/vs_cvode.py --rtols 1e-6 1e-8 1e-10  # work-precision: every method at each rtol
    python benchmarks/vs_cvode.py --settings tail --repeats 3
    python benchmarks/vs_cvode.py --settings large --until 200 --repeats 1   # n = 1000, m = 50,000 over [0, 200]
    python benchmarks/vs_cvode.py --settings tail --rtols 1e-7 1e-8 1e-9 --phases  # where the default's time goes
    python benchmarks/vs_cvode.py --settings tail --rtols 1e-8 1e-9 --unit-costs   # CVODE's counts at JAX's prices
    python benchmarks/vs_cvode.py --settings tail --rtols 1e-7 1e-8 1e-9 --solvers switching-chebyshev  # another solver
    python benchmarks/vs_cvode.py --settings tail --rtols 1e-7 1e-8 1e-9 1e-10 --saves 200  # a trajectory's values

`--phases`: for a default that switches, its explicit phase timed alone (Tsit5 from the start to the switch, the
default's own steps there) and the rest (the stiff phase, with what the landing on the stop and the switch's tests add
to the explicit steps); with `--rtols`, what the rest may cost for the run to be 3x and 5x CVODE at equal accuracy.

`--saves N`: every method saves at `flows.default_ts(t_stop, N)` (0 and N - 1 log-spaced times, as `flows.solve` saves
by default, over the default's run to its stop at t_stop), flows on its steps, CVODE interpolating between its own; W
err is then the largest relative error over the save times before every method's stop: the accuracy of a trajectory
rather than of its end. LSODA is left out.

`--unit-costs`: a field evaluation and a Jacobian-vector product at the default's switch state (the initial state
where it does not switch), each inside one compiled loop (what a solver in JAX pays) and through CVODE's callbacks
called from Python; then each CVODE Krylov row's counts priced in the loop: what a BDF in JAX taking CVODE's steps,
Newton iterations and GMRES products would spend on them (its own vector operations left out).

Work-precision (`--rtols`, atol = rtol / 100 each): every method at every rtol, then each CVODE family's wall time
at the W err flows reached (interpolated in log error and log time between the family's two rtols that bracket it),
over flows' time: the comparison at equal accuracy, since the same rtol buys each method a different error.

Run pinned to one core (`taskset -c 1`); the harness pins BLAS and XLA to one thread. Repeats interleave the
methods (A, B, C, A, B, C); wall = median of the timed repeats after a first (compiling) call.
"""

from __future__ import annotations

import argparse
import statistics
import time

import _harness as H  # noqa: I001  (first: pins threads before numpy and jax load)
import diffrax
import jax
import numpy as np
from jax.flatten_util import ravel_pytree
from sksundae import cvode
from vs_scipy import deep_setting, factored_setting

import flows

SETTINGS = {
    "sensing": lambda: H.sensing_setting(1e-3),
    "factored": lambda: factored_setting(1e-2),
    "deep3": lambda: deep_setting(0.1),
    "tail": lambda: H.completion_setting(0.1),
    "large": lambda: H.completion_setting(0.1, n=1000, m=50_000),
}
"""The settings: vs_scipy.py's sensing (alpha 1e-3), factored and deep3, the m = 2000 deep-completion tail
(stiff_tail.py's), and n = 1000, m = 50,000 (3e6 unknowns: compared over a window [0, --until])."""


def atol_for(rtol: float) -> float:
    """The absolute tolerance paired with `rtol` in every row: the harness's ratio, atol = rtol / 100."""
    return rtol * H.ATOL / H.RTOL


class CVODERunner:
    """The flow's field, loss, dense Jacobian and Jacobian-vector product, jitted, as CVODE's callbacks."""

    def __init__(self, setting: H.Setting, dense: bool):
        flow = setting.flow
        x0, unravel = ravel_pytree(setting.state0)
        self.x0 = np.asarray(x0)

        def field(x):
            return ravel_pytree(flow.vector_field(0.0, unravel(x)))[0]

        self._f = jax.jit(field)
        self._jvp = jax.jit(lambda x, v: jax.jvp(field, (x,), (v,))[1])
        self._jac = jax.jit(jax.jacfwd(field)) if dense else None
        self._loss = jax.jit(lambda x: flow.loss(unravel(x)))
        self._product = jax.jit(lambda x: flow.product(unravel(x)))
        self.jvps = 0
        jax.block_until_ready((self._f(x0), self._jvp(x0, x0), self._loss(x0), self._product(x0)))
        if dense:
            jax.block_until_ready(self._jac(x0))

    def rhs(self, t, y, yp):
        yp[:] = self._f(y)

    def jac(self, t, y, yp, JJ):
        JJ[:, :] = self._jac(y)

    def jtimes(self, t, y, yp, v, Jv):
        self.jvps += 1
        Jv[:] = self._jvp(y, v)

    def run(
        self, linsolver: str, krylov_dim: int, until: float | None, rtol: float = H.RTOL, ts: np.ndarray | None = None
    ) -> H.Outcome:
        """CVODE to the stop (or to `until`), returning the values at `ts` (its own interpolation between its steps)
        where given, else the final state."""
        loss = self._loss

        def event(t, y, events):  # a plain function: CVODE keeps its state on it
            events[0] = loss(y) - H.STOP_LOSS * (1 - 1e-6)

        event.terminal, event.direction = [True], [-1]
        self.event = event
        options = dict(method="BDF", rtol=rtol, atol=atol_for(rtol), max_num_steps=10_000_000)
        if until is None:
            options |= dict(eventsfn=event, num_events=1)
        if linsolver == "dense":
            options |= dict(linsolver="lapackdense", jacfn=self.jac)
        else:
            options |= dict(linsolver="gmres", krylov_dim=krylov_dim, jactimes=cvode.CVODEJacTimes(None, self.jtimes))
        self.jvps = 0
        end = H.T_MAX if until is None else until
        result = cvode.CVODE(self.rhs, **options).solve([0.0, 0.5 * end, end] if ts is None else ts, self.x0)
        x = result.y[-1]
        trajectory = None
        if ts is not None:
            trajectory = (np.asarray(result.t), np.stack([np.asarray(self._product(y)) for y in result.y]))
        return H.Outcome(
            t_final=float(result.t[-1]),
            W_final=np.asarray(self._product(x)),
            loss_final=float(self._loss(x)),
            steps=-1,
            evaluations=int(result.nfev),
            jacobians=int(result.njev) if linsolver == "dense" else self.jvps,
            note="" if result.success else str(result.message),
            trajectory=trajectory,
        )


def methods(
    setting: H.Setting,
    dense_max: int,
    krylov_dim: int,
    until: float | None,
    rtols,
    solvers: tuple[str, ...] = (),
    ts: np.ndarray | None = None,
) -> dict:
    """label -> (family, rtol, run): every method at every rtol (atol = rtol / 100; LSODA at RTOL only); each name in
    `solvers` (a key of `flows.SOLVERS`) adds `flows.solve` with that solver as another flows family. `ts`: every
    method saves its values there (flows on its steps, CVODE interpolating), LSODA left out."""
    saving = dict(ts=H.FINAL_ONLY if ts is None else ts)
    size = ravel_pytree(setting.state0)[0].size
    dense = size <= dense_max
    runner = CVODERunner(setting, dense)
    out = {}
    for rtol in rtols:
        at = "" if len(rtols) == 1 else f" @{rtol:.0e}"
        if until is None:
            out["flows default" + at] = (
                "flows default",
                rtol,
                lambda r=rtol: H.run_flows(setting, rtol=r, atol=atol_for(r), **saving),
            )
        else:
            out["flows default" + at] = ("flows default", rtol, lambda r=rtol: _flows_window(setting, until, r))
        for name in solvers if until is None else ():
            out[f"flows {name}" + at] = (
                f"flows {name}",
                rtol,
                lambda r=rtol, name=name: H.run_flows(
                    setting, flows.solver_by_name(name), rtol=r, atol=atol_for(r), **saving
                ),
            )
        if dense:
            out["CVODE dense" + at] = (
                "CVODE dense",
                rtol,
                lambda r=rtol: runner.run("dense", krylov_dim, until, r, ts),
            )
        out["CVODE Krylov" + at] = ("CVODE Krylov", rtol, lambda r=rtol: runner.run("gmres", krylov_dim, until, r, ts))
        if dense and until is None and rtol == H.RTOL and ts is None:
            field = H.FlatField(setting)
            field.compile(jacobian=True)
            out["LSODA+jac" + at] = ("LSODA+jac", rtol, lambda: H.run_scipy(field, "LSODA", jac=True))
    return out


def time_at(pts: list[tuple[float, float]], err: float) -> float | None:
    """A family's wall time at W err `err`, interpolated linearly in (log err, log time) between the two nearest of
    its measured (W err, wall s) points that bracket it (its work-precision line); None outside its measured range."""
    pts = sorted((e, w) for e, w in pts if np.isfinite(e) and e > 0)
    if not pts or not pts[0][0] <= err <= pts[-1][0]:
        return None
    below = max((p for p in pts if p[0] <= err), key=lambda p: p[0])
    above = min((p for p in pts if p[0] >= err), key=lambda p: p[0])
    if below[0] == above[0]:
        return below[1]
    frac = np.log(err / below[0]) / np.log(above[0] / below[0])
    return float(np.exp(np.log(below[1]) + frac * np.log(above[1] / below[1])))


def equal_accuracy(points: dict[str, list[tuple[float, float]]], ours: list[tuple[float, float]]) -> list[str]:
    """Each family's wall time at the accuracy flows reached (`time_at`), over flows' wall time at it.

    `points`: family -> [(W err, wall s)] over its rtols; `ours`: flows' [(W err, wall s)]. Outside the family's
    measured range no ratio is given.
    """
    lines = []
    for family, pts in points.items():
        errors = sorted(e for e, _ in pts if np.isfinite(e) and e > 0)
        for err, wall in ours:
            at = time_at(pts, err)
            if at is None:
                span = f"{errors[0]:.1e}..{errors[-1]:.1e}" if errors else "none"
                lines.append(f"  {family} at W err {err:.1e}: outside its measured errors ({span})")
                continue
            lines.append(f"  {family} at W err {err:.1e}: {at:.3g} s, **{at / wall:.2f}x** flows' {wall:.3g} s")
    return lines


def phase_end(setting: H.Setting) -> tuple[float, str]:
    """Where the default's explicit phase ends: its switch time, or its stop time where it does not switch."""
    stats = (traj := H.solve_flows(setting)).stats
    if stats.get("switched"):
        return float(stats["t_switch"]), "switch"
    return float(traj.ts[-1]), "stop"


def unit_costs(setting: H.Setting, repeats: int = 500) -> dict[str, float]:
    """Seconds per field evaluation and per Jacobian-vector product at the default's switch state (the initial state
    where it does not switch): `f` and `jvp` inside one compiled loop, `f callback` and `jvp callback` through
    `CVODERunner.rhs` and `.jtimes` called from Python (numpy in and out, as CVODE calls them); medians of 5."""
    t, end = phase_end(setting)
    state = setting.state0
    if end == "switch":
        traj = flows.solve(setting.flow, setting.state0, t1=t, ts=[0.0, t], rtol=H.RTOL, atol=H.ATOL)
        state = jax.tree.map(lambda a: a[-1], traj.states)
    x, unravel = ravel_pytree(state)
    v = jax.random.normal(jax.random.key(0), x.shape, dtype=x.dtype)

    def field(y):
        return ravel_pytree(setting.flow.vector_field(0.0, unravel(y)))[0]

    @jax.jit
    def products(y, w, k):
        return jax.lax.fori_loop(0, k, lambda i, u: w + 1e-3 * jax.jvp(field, (y,), (u,))[1], w)

    runner = CVODERunner(setting, dense=False)
    xn, vn = np.asarray(x), np.asarray(v)
    out = np.empty_like(xn)
    timed = {
        "f": lambda k: H.evaluations(setting.flow, state, jax.numpy.asarray(k)),
        "jvp": lambda k: products(x, v, k),
        "f callback": lambda k: [runner.rhs(0.0, xn, out) for _ in range(k)],
        "jvp callback": lambda k: [runner.jtimes(0.0, xn, None, vn, out) for _ in range(k)],
    }
    prices = {}
    for name, fn in timed.items():
        H.clock(lambda: fn(2))  # compile
        prices[name] = statistics.median(H.clock(lambda: fn(repeats))[1] / repeats for _ in range(5))
    return prices


def _flows_window(setting: H.Setting, until: float, rtol: float = H.RTOL) -> H.Outcome:
    traj = flows.solve(setting.flow, setting.state0, t1=until, ts=[0.0, until], rtol=rtol, atol=atol_for(rtol))
    return H.Outcome(
        t_final=until,
        W_final=traj.W[-1],
        loss_final=float(traj.loss[-1]),
        steps=traj.stats["num_steps"],
        rejected=traj.stats["num_rejected_steps"],
    )


def phases(
    setting: H.Setting, total: float, cvode: float | None, repeats: int, goals: tuple[float, ...] = (3.0, 5.0)
) -> None:
    """Where the default's time goes when it switches, at the harness's rtol: its explicit phase timed alone
    (`flows.solve` with Tsit5 from the start to the switch, which takes the default's own steps there), the rest of
    `total` (the default's median: the stiff phase, and what the landing on the stop and the switch's tests add to
    the explicit steps), and what the rest may cost for the run to be each of `goals` times `cvode` (CVODE's time at
    the default's accuracy, None where not measured)."""
    stats = H.solve_flows(setting).stats
    if not stats.get("switched"):
        print(
            f"\nPhases: the default does not switch here ({type(flows.default_solver(setting.flow, H.STOP_LOSS)).__name__})"
        )
        return
    t_switch = stats["t_switch"]

    def explicit():
        return flows.solve(
            setting.flow,
            setting.state0,
            t1=t_switch,
            ts=[0.0, t_switch],
            rtol=H.RTOL,
            atol=H.ATOL,
            solver=diffrax.Tsit5(),
        )

    traj, _ = H.clock(explicit)
    seconds = statistics.median(H.clock(explicit)[1] for _ in range(max(repeats, 1)))
    rest = total - seconds
    work = ", ".join(
        f"{stats[key]} {key}"
        for key in ("stages", "linearisations", "newton_iterations", "krylov_products")
        if key in stats
    )
    print(
        f"\nPhases of the default at rtol {H.RTOL:g}: Tsit5 to the switch at t = {t_switch:.5g}, "
        f"{traj.stats['num_steps']} steps, {seconds:.3g} s; the rest (the stiff phase to the stop) {rest:.3g} s ({work})"
    )
    for goal in goals if cvode is not None else ():
        allowed = cvode / goal - seconds
        if allowed <= 0:
            verdict = f"the explicit phase alone takes more ({seconds:.3g} s against {cvode / goal:.3g} s)"
        elif allowed >= rest:
            verdict = f"met: the rest may take {allowed:.3g} s"
        else:
            verdict = f"the rest may take {allowed:.3g} s, {rest / allowed:.2f}x less than now"
        print(f"  for {goal:g}x CVODE's {cvode:.3g} s at equal accuracy: {verdict}")


def error(o: H.Outcome, reference: dict[float, np.ndarray], common: np.ndarray | None) -> float:
    """W err: relative, at the final state against the reference at the method's own final time, or the largest over
    the save times `common`."""
    if common is None:
        return H.relative_error(o.W_final, reference[o.t_final]) if o.t_final in reference else float("nan")
    assert o.trajectory is not None
    at = dict(zip(o.trajectory[0].tolist(), o.trajectory[1]))
    return max(H.relative_error(at[t], reference[t]) for t in common.tolist())


def table(name: str, setting: H.Setting, args) -> None:
    size = ravel_pytree(setting.state0)[0].size
    print(
        f"\n## {name}: {setting.name}, {size} unknowns, default solver "
        f"{type(flows.default_solver(setting.flow, H.STOP_LOSS)).__name__}",
        flush=True,
    )
    save_ts = None
    if args.saves is not None:
        # Log-spaced over the run, as `flows.solve` saves over [0, t1] by default, with t1 the default's stop here.
        save_ts = np.asarray(flows.default_ts(H.run_flows(setting).t_final, args.saves))
    runs = methods(setting, args.dense_max, args.krylov_dim, args.until, args.rtols, tuple(args.solvers), save_ts)
    timings, outcomes = {}, {}
    for label, (_, _, fn) in runs.items():
        outcomes[label], first = H.clock(fn)
        timings[label] = H.Timing(first=first, runs=[])
        print(f"  first call {label}: {first:.2f} s", flush=True)
    for _ in range(args.repeats):
        for label, (_, _, fn) in runs.items():
            outcomes[label], seconds = H.clock(fn)
            timings[label].runs.append(seconds)
    common = None
    if save_ts is not None:
        # The save times before every method's stop (t = 0 left out: every method starts there exactly); the final
        # states are not compared, so the reference is needed at these times only.
        stop = min(o.t_final for o in outcomes.values())
        common = save_ts[(save_ts > 0) & (save_ts < stop)]
        reference = H.reference(setting, common)
        print(f"\nW err: the largest over the {common.size} save times before every method's stop")
    elif args.until is None:
        reference = H.reference(setting, np.array([o.t_final for o in outcomes.values() if np.isfinite(o.t_final)]))
    else:
        reference = H.reference(setting, np.array([args.until]), rtol=1e-10, atol=1e-12)
    base = "flows default" + ("" if len(args.rtols) == 1 else f" @{H.RTOL:.0e}")
    ours = timings[base].median if base in timings else timings[next(iter(timings))].median
    print("\n| method | rtol | wall s | spread | f evals | jacobians / JVPs | t final | loss | W err | this / flows |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    points: dict[str, list[tuple[float, float]]] = {}
    for label, o in outcomes.items():
        family, rtol, _ = runs[label]
        err = error(o, reference, common)
        t = timings[label]
        points.setdefault(family, []).append((err, t.median))
        print(
            f"| {family} | {rtol:.0e} | {t.median:.3g} | {t.spread()} | {o.evaluations or '-'} | "
            f"{o.jacobians or '-'} | {o.t_final:.6g} | {o.loss_final:.3g} | {err:.1e} | {t.median / ours:.2f} |"
            + (f" {o.note}" if o.note else ""),
            flush=True,
        )
    best_cvode = None
    if len(args.rtols) > 1:
        ours = {family: points.pop(family) for family in list(points) if family.startswith("flows")}
        for family, ours_points in ours.items():
            print(f"\nAt equal accuracy with {family} (each family's time at its W err, from its work-precision line):")
            for line in equal_accuracy(points, ours_points):
                print(line, flush=True)
    if args.unit_costs:
        prices = unit_costs(setting)
        print(
            "\nUnit costs: "
            + ", ".join(f"{name} {seconds * 1e3:.3g} ms" for name, seconds in prices.items())
            + "\nCVODE Krylov's counts priced in a compiled loop (a BDF in JAX with CVODE's steps; vector operations left out):"
        )
        for label, o in outcomes.items():
            family, rtol, _ = runs[label]
            if family == "CVODE Krylov" and o.evaluations is not None and o.jacobians is not None:
                priced = o.evaluations * prices["f"] + o.jacobians * prices["jvp"]
                print(
                    f"  rtol {rtol:.0e}: {o.evaluations} f + {o.jacobians} JVPs = {priced:.3g} s (CVODE's wall {timings[label].median:.3g} s)"
                )
    if args.phases and args.until is None:
        if len(args.rtols) > 1:
            # CVODE's best time at the accuracy the default reached at the harness's rtol.
            err = H.relative_error(outcomes[base].W_final, reference[outcomes[base].t_final])
            at = [time_at(pts, err) for family, pts in points.items() if family.startswith("CVODE")]
            best_cvode = min((a for a in at if a is not None), default=None)
        phases(setting, timings[base].median, best_cvode, args.repeats)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--settings", nargs="+", choices=tuple(SETTINGS), default=["sensing", "factored", "deep3", "tail"]
    )
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--dense-max", type=int, default=3000)
    parser.add_argument("--krylov-dim", type=int, default=20)
    parser.add_argument(
        "--rtols", nargs="+", type=float, default=[H.RTOL], help="a work-precision table: every method at each rtol"
    )
    parser.add_argument(
        "--solvers",
        nargs="+",
        default=[],
        choices=tuple(flows.SOLVERS),
        help="add flows with these solvers (flows.SOLVERS names) as more flows families",
    )
    parser.add_argument("--until", type=float, default=None, help="compare over [0, until] instead of to the stop")
    parser.add_argument(
        "--saves",
        type=int,
        default=None,
        help="every method saves at N log-spaced times over the run (flows.default_ts); W err is the largest over them",
    )
    parser.add_argument(
        "--phases",
        action="store_true",
        help="time the default's explicit phase alone, and say what the rest may cost for 3x and 5x CVODE",
    )
    parser.add_argument(
        "--unit-costs",
        action="store_true",
        help="price a field evaluation and a JVP in a compiled loop and through callbacks; CVODE's counts at those prices",
    )
    args = parser.parse_args(argv)
    if args.phases and H.RTOL not in args.rtols:
        parser.error(f"--phases times the default at rtol {H.RTOL:g}: include it in --rtols")
    if args.saves is not None and (args.until is not None or args.phases or args.saves < 2):
        parser.error("--saves (at least 2) compares runs to the stop: not with --until or --phases")
    print(
        f"# rtol {H.RTOL:g}, atol {H.ATOL:g}, "
        + (f"until loss {H.STOP_LOSS:g}" if args.until is None else f"over [0, {args.until:g}]")
        + f"; {args.repeats} timed repeats, interleaved",
        flush=True,
    )
    start = time.perf_counter()
    for name in args.settings:
        table(name, SETTINGS[name](), args)
    print(f"\n# {time.perf_counter() - start:.0f} s in all")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
