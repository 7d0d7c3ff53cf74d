"""flows.sweep one run at a time against vmap-batched, side by side in one process.

Four runs of symmetric sensing (n = 30, m = 180, rank 2) from U_0 = alpha I, alpha in {5e-3, 1e-2,
2e-2, 3e-2}, rtol 1e-8, on one device: (a) Tsit5 over t in [0, 20], (b) into the tail, until loss
< 1e-10 (the default solver: the switch one at a time, the extrapolation batched). Each sweep runs
--repeats times into a fresh folder, alternating batch sizes, after one untimed pass each (compile);
median wall times and their ratio. The result set sweep's default batch size on CPUs to one run.

    python benchmarks/sweep_batching.py
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time

import _harness as H  # noqa: F401, I001  (first: pins threads before numpy and jax load)
import numpy as np

import flows

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
    args = parser.parse_args(argv)
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


if __name__ == "__main__":
    sys.exit(main())
