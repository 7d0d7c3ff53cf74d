"""flows.sweep one run at a time against vmap-batched, side by side in one process.

Four runs of symmetric sensing (n = 30, m = 180, rank 2) from U_0 = alpha I, alpha in {5e-3, 1e-2,
2e-2, 3e-2}, rtol 1e-8, on one device: (a) Tsit5 over t in [0, 20], (b) into the tail, until loss
< 1e-10 (the default solver: the switch one at a time, the extrapolation batched). Each sweep runs
--repeats times into a fresh folder, alternating batch sizes, after one untimed pass each (compile);
median wall times and their ratio. The result set sweep's default batch size on CPUs to one run.

`--floor`: whether a batch's stop should read the flows' `LossFloor` (a batch skips the loss only where every run
is far from its stop). Batches of four (U U^T sensing from the alphas above, factored U V^T and deep3 from ten
times them, n = 30, m = 180, each until loss < 1e-10 under the batched default) through `jax.vmap` of flows'
`integrate`, as `sweep` solves a batch, with `loss_floor` True and False, the repeats interleaved: median times,
their ratio, and how far apart the two put each run's stop.

    python benchmarks/sweep_batching.py
    python benchmarks/sweep_batching.py --floor      # ~2 min
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time

import _harness as H  # noqa: I001  (first: pins threads before numpy and jax load)
import equinox as eqx
import numpy as np
from vs_scipy import deep_setting, factored_setting

import flows
from flows._solve import Plan, integrate
from flows._sweep import _stack

ALPHAS = (5e-3, 1e-2, 2e-2, 3e-2)


def build(config):
    flow = flows.Flow(flows.sensing(n=30, m=180, rank=2, seed=0), flows.Symmetric())
    return flow, flow.init(scale=config["alpha"])


def timed_sweep(batch_size: int, options: dict) -> tuple[float, list]:
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        runs = flows.sweep(
            build, [{"alpha": a} for a in ALPHAS], folder, batch_size=batch_size, progress=False, **options
        )
        seconds = time.perf_counter() - start
        trajs = [run.load() for run in runs]
    return seconds, trajs


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--floor", action="store_true", help="a batch's stop with and without the loss floor")
    args = parser.parse_args(argv)
    if args.floor:
        return floor_in_batches(args.repeats)
    settings = {
        "Tsit5, t in [0, 20]": dict(t1=20.0, solver=flows.solver_by_name("tsit5")),
        "default solver, until loss < 1e-10": dict(t1=1e6, stop_loss=1e-10),
    }
    for name, options in settings.items():
        times = {1: [], len(ALPHAS): []}
        for batch_size in times:
            _, trajs = timed_sweep(batch_size, options)
            print(
                f"# {name}, batch {batch_size}: {trajs[0].config['solver']}, steps "
                f"{[t.stats['num_steps'] for t in trajs]}",
                flush=True,
            )
        for _ in range(args.repeats):
            for batch_size in times:
                times[batch_size].append(timed_sweep(batch_size, options)[0])
        one, batched = (float(np.median(times[b])) for b in times)
        print(
            f"{name}: one at a time {one:.2f} s, batched x{len(ALPHAS)} {batched:.2f} s, "
            f"batched / one {batched / one:.2f}",
            flush=True,
        )
    return 0


def floor_in_batches(repeats: int) -> int:
    settings = {
        "U U^T": [H.sensing_setting(a) for a in ALPHAS],
        "factored": [factored_setting(10 * a) for a in ALPHAS],
        "deep3": [deep_setting(10 * a) for a in ALPHAS],
    }
    for name, runs in settings.items():
        plan = Plan.make(1e6, [0.0], stop_loss=1e-10).resolve(runs[0].flow, batched=True)
        flows_, states = _stack([r.flow for r in runs]), _stack([r.state0 for r in runs])
        solves = {
            floor: eqx.filter_jit(
                eqx.filter_vmap(
                    lambda f, y, floor=floor: integrate(f, y, *plan.arrays(), **plan.static(), loss_floor=floor)
                )
            )
            for floor in (True, False)
        }
        outputs, wall = H.interleaved(
            {floor: lambda s=solve: s(flows_, states) for floor, solve in solves.items()}, repeats
        )
        stops = {floor: np.asarray(out[0][:, -1]) for floor, out in outputs.items()}
        read, alone = wall[True], wall[False]
        apart = float(np.max(np.abs(stops[True] - stops[False]) / stops[False]))
        print(
            f"{name}, a batch of {len(runs)} ({type(plan.solver).__name__}, stops at t = "
            f"{', '.join(f'{t:.4g}' for t in stops[False])}): the floor read {read:.3f} s, the loss alone "
            f"{alone:.3f} s, ratio {read / alone:.3f}; stops apart by {apart:.1e} (relative)",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
