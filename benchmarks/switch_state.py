"""What each switching solver's explicit steps cost before it switches, against plain Tsit5, as the measurements grow.

    taskset -c 1 python benchmarks/switch_state.py                     # m = 250, 500, 1000, 2000; ~4 min
    taskset -c 1 python benchmarks/switch_state.py --ms 1000 --repeats 7

A switching solver (`flows.AbstractTsit5Then`) carries its stiff solver's state through every explicit step: Diffrax
keeps or discards the whole solver state after each step (a select over all of it), and the switch puts the idle state
back after its lax.cond (a second select, fused with Diffrax's). The stiff states differ in size: the
Runge-Kutta-Chebyshev switch holds a few copies of the state (p numbers each), the NDF switch its difference array
(8 p), the extrapolation switch its Gauss-Newton kernel's eigenbasis (m x m, with m the measurements). Each switch
is run here with its stiffness threshold out of reach, so it never switches and takes Tsit5's steps (its explicit step
is Tsit5's with the stages written out, `flows._stiff.tsit5_step`, so the steps agree to rounding, not to the bit);
the rows give the time per step and its excess over Tsit5's. A row for Tsit5 with the switches' written-out step and
Diffrax's own interpolant separates the step from the switch.

Deep completion as in `vs_cvode.py`'s tail (n = 100, rank 5, depth 3, W_j(0) = 0.1 I; p = 30,000), over [0, 200]
(before any switch), rtol 1e-8, atol 1e-10, final state only; one process, timed repeats interleaved, medians.
"""

from __future__ import annotations

import argparse
import statistics

import _harness as H  # noqa: I001  (first: pins threads before numpy and jax load)
import diffrax
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

import flows
from flows._stiff import tsit5_step

NEVER = 1e300
"""A stiffness threshold no step reaches: the switch never fires."""


class WrittenOutTsit5(diffrax.Tsit5):
    """Tsit5 whose step is the switches' own (`flows._stiff.tsit5_step`: the stages written out one by one), with
    Diffrax's state and quartic interpolant: Diffrax's stage loop against the written-out stages, without a switch."""

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        first, f0 = solver_state
        f0 = jax.lax.cond(first | made_jump, lambda: terms.vf(t0, y0, args), lambda: f0)
        y1, error, k, f1, _ = tsit5_step(terms, t0, t1, y0, args, f0)
        dense = dict(y0=y0, y1=y1, k=jax.tree.map(lambda *stages: jnp.stack(stages), *k))
        return y1, error, dense, (False, f1), diffrax.RESULTS.successful


def switches() -> dict[str, diffrax.AbstractSolver]:
    return {
        "Tsit5": diffrax.Tsit5(),
        "Tsit5, stages written out": WrittenOutTsit5(),
        "Chebyshev switch": flows.Tsit5ThenChebyshev(threshold=NEVER),
        "NDF switch": flows.Tsit5ThenNDF(threshold=NEVER),
        "extrapolation switch": flows.Tsit5ThenExtrapolation(threshold=NEVER),
    }


def stiff_state_numbers(setting: H.Setting, solver) -> int:
    """How many numbers the solver's state holds (its shapes only; nothing is computed)."""
    if not isinstance(solver, flows.AbstractTsit5Then):
        return 0
    terms = H.flow_term(setting.flow)
    shapes = jax.eval_shape(lambda: solver.init(terms, 0.0, 1.0, setting.state0, None))
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(shapes))


def measure(m: int, t1: float, repeats: int) -> None:
    setting = H.completion_setting(0.1, n=100, m=m)
    p = ravel_pytree(setting.state0)[0].size
    solvers = switches()

    def run(solver):
        return flows.solve(setting.flow, setting.state0, t1=t1, ts=[0.0, t1], rtol=H.RTOL, atol=H.ATOL, solver=solver)

    steps = {}
    for name, solver in solvers.items():  # compile, and check that no switch fired
        traj = run(solver)
        assert not traj.stats.get("switched", False), (name, traj.stats)
        steps[name] = traj.stats["num_steps"]
    times: dict[str, list[float]] = {name: [] for name in solvers}
    for _ in range(repeats):
        for name, solver in solvers.items():
            times[name].append(H.clock(lambda solver=solver: run(solver))[1])
    base = statistics.median(times["Tsit5"]) / steps["Tsit5"]
    print(f"\nm = {m} (m^2 = {m * m:,}; p = {p:,}), over [0, {t1:g}]:")
    print("| solver | numbers in its state | steps | per step | excess over Tsit5 |")
    print("|---|---|---|---|---|")
    for name, solver in solvers.items():
        per_step = statistics.median(times[name]) / steps[name]
        print(
            f"| {name} | {stiff_state_numbers(setting, solver):,} | {steps[name]} | {per_step * 1e6:.0f} us | "
            f"{(per_step - base) * 1e6:+.0f} us |",
            flush=True,
        )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ms", type=int, nargs="+", default=[250, 500, 1000, 2000], help="measurements")
    parser.add_argument("--t1", type=float, default=200.0)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    for m in args.ms:
        measure(m, args.t1, args.repeats)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
