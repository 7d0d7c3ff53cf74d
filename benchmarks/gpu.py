"""The accelerator measurements: one run, a sweep at several batch sizes, and the large runs, on whatever device JAX
has (it says which). On a CPU it measures the same things there.

    python benchmarks/gpu.py                        # Arora's completion, one run; 16 seeds at batch 1, 8, 16
    python benchmarks/gpu.py --batches 1 4 8 16 32 --seeds 32
    python benchmarks/gpu.py --large                # also n = 1000, m = 50,000 to loss 1e-10, and n = 4000,
                                                    # m = 800,000 to loss 1e-8 (accelerators: minutes)
    python benchmarks/gpu.py --floor                # instead: the stop's loss floor against the loss alone

Settings: deep completion (`flows.completion`, rank 5, ||W*||_F = 1, W = W_3 W_2 W_1 from W_j(0) = 0.1 I), rtol 1e-8,
the default solver and controller, until the loss falls to `--stop` (1e-10), saving the final state. The sweep
runs 16 problem seeds through `flows.sweep` into a fresh temporary folder per batch size (its first batch compiles:
the per-run time reported excludes the first batch's compile by timing a second, identical sweep into another
fresh folder). Run it with XLA_PYTHON_CLIENT_PREALLOCATE=false when other processes share the device.

`--floor`: the benchmarks' dense sensing (U U^T from 1e-3, U V^T from 1e-2, depth 3 from 0.1; n = 30, m = 180) to
loss 1e-10, one run at a time, with the stop's `flows.LossFloor` and reading the loss alone
(`_harness.without_floor`), 7 interleaved repeats: the medians, their ratio, and whether the two runs end at the same
steps, time and W to the last bit (the floor is measured on CPUs in `step_cost.py`; on accelerators not yet).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("GRADFLOW_BENCH_THREADS", "keep")  # the device's host as it is: `_harness` pins nothing
import _harness as H  # noqa: E402, I001
import jax  # noqa: E402
import numpy as np  # noqa: E402
from vs_scipy import deep_setting, factored_setting  # noqa: E402

import flows  # noqa: E402


def build(config):
    problem = flows.completion(n=config["n"], m=config["m"], rank=5, seed=config["seed"], truth_norm=1.0)
    flow = flows.Flow(problem, flows.Deep(depth=3))
    return flow, flow.init(scale=0.1)


def one_run(n: int, m: int, stop: float) -> None:
    flow, state0 = build({"n": n, "m": m, "seed": 0})
    for label in ("first (compile + run)", "second"):
        start = time.perf_counter()
        traj = flows.solve(flow, state0, t1=1e6, ts=[0.0], stop_loss=stop)
        seconds = time.perf_counter() - start
        print(
            f"n = {n}, m = {m}, depth 3 to loss {stop:g}, {label}: {seconds:.2f} s, {traj.stats['num_steps']} steps "
            f"({traj.config['solver']}), t = {traj.ts[-1]:.6g}, loss {traj.loss[-1]:.3g}",
            flush=True,
        )


def sweep(n: int, m: int, stop: float, seeds: int, batches: list[int]) -> None:
    configs = flows.grid(n=[n], m=[m], seed=list(range(seeds)))
    for batch in batches:
        times = []
        for _ in range(2):  # the first sweep compiles; the second, into a fresh folder, is timed per run
            with tempfile.TemporaryDirectory() as out:
                start = time.perf_counter()
                runs = flows.sweep(
                    build, configs, out, t1=1e6, ts=[0.0], stop_loss=stop, batch_size=batch, progress=False
                )
                times.append(time.perf_counter() - start)
                assert {r.status for r in runs} == {"done"}, [r.message for r in runs if r.status == "failed"]
        print(
            f"sweep of {seeds} runs at batch {batch}: {times[1] / seeds:.3f} s a run "
            f"({times[1]:.1f} s; first sweep with compile {times[0]:.1f} s)",
            flush=True,
        )


def floor(repeats: int) -> None:
    for setting in (H.sensing_setting(1e-3), factored_setting(1e-2), deep_setting(0.1)):
        pair = {"the floor": setting, "the loss alone": H.without_floor(setting)}
        outcomes, wall = H.interleaved({label: lambda s=s: H.run_flows(s) for label, s in pair.items()}, repeats)
        read, alone = (wall[label] for label in pair)
        a, b = outcomes.values()
        same = a.steps == b.steps and a.t_final == b.t_final and np.array_equal(a.W_final, b.W_final)
        print(
            f"{setting.name}: the floor {read * 1e3:.1f} ms, the loss alone {alone * 1e3:.1f} ms, ratio "
            f"{read / alone:.3f}; {a.steps} and {b.steps} steps, the same to the last bit: {same}",
            flush=True,
        )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stop", type=float, default=1e-10)
    parser.add_argument("--seeds", type=int, default=16)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 16])
    parser.add_argument("--large", action="store_true")
    parser.add_argument("--floor", action="store_true", help="the stop's loss floor against the loss alone")
    args = parser.parse_args(argv)
    devices = jax.devices()
    print(
        f"JAX {jax.__version__} on {len(devices)} {devices[0].platform} device(s): {devices[0].device_kind}", flush=True
    )
    if args.floor:
        floor(repeats=7)
        return 0
    one_run(100, 2000, args.stop)
    sweep(100, 2000, args.stop, args.seeds, args.batches)
    if args.large:
        for n, m, stop in ((1000, 50_000, 1e-10), (4000, 800_000, 1e-8)):
            flow, state0 = build({"n": n, "m": m, "seed": 0})
            start = time.perf_counter()
            traj = flows.solve(flow, state0, t1=1e6, ts=[0.0], stop_loss=stop, max_steps=100_000)
            print(
                f"n = {n}, m = {m}, depth 3 to loss {stop:g}: {time.perf_counter() - start:.1f} s including compile, "
                f"{traj.stats['num_steps']} steps, t = {traj.ts[-1]:.6g}, loss {traj.loss[-1]:.3g}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
