"""Goal 4: wall time and steps of flows.solve against n, and memory against the number of steps.

Setting: symmetric matrix completion, rank 5, m = min(5 n r ln n, n^2 / 2) observed entries (the
formula asks for more than all entries below n ~ 150, hence the cap), ||W*||_F = 1, the flow
W = U U^T with U n x n from U_0 = 1e-3 I, run until the loss falls below 1e-10 at rtol 1e-8. Each n
runs in its own process (so its peak memory is its own); the solver is the one flows.solve picks by
default (`flows.default_solver`), printed per row.

    python benchmarks/scaling.py --n 30 100 300 1000 --figure figures/scaling.png
    python benchmarks/scaling.py --memory 100        # peak memory against the number of steps

Prints one row per n (seconds, steps, evaluations per second, peak RSS) and the fitted exponents
time ~ n^a, steps ~ n^b; writes the log-log figure and benchmarks/scaling.json.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RANK = 5


def measurements(n: int) -> int:
    return min(math.ceil(5 * n * RANK * math.log(n)), n * n // 2)


def one(n: int, t1: float, stop_loss: float | None, max_steps: int, solver: str) -> dict:
    """Solve at size n in this process; returns its numbers (run as `scaling.py --one N`).

    A run longer than a minute is timed once, compile included (then a small share of it).
    """
    import _harness as H  # noqa: F401  (pins threads before jax loads)

    import flows

    flow = flows.Flow(flows.completion(n=n, m=measurements(n), rank=RANK, seed=0), flows.Symmetric())
    state0 = flow.init(scale=1e-3)
    kwargs = dict(
        t1=t1,
        stop_loss=stop_loss,
        max_steps=max_steps,
        ts=[0.0, t1],
        solver=None if solver == "default" else flows.solver_by_name(solver),
    )
    traj, first = H.clock(lambda: flows.solve(flow, state0, **kwargs))
    seconds, compile_s = first, float("nan")
    if first < 60:
        traj, seconds = H.clock(lambda: flows.solve(flow, state0, **kwargs))
        compile_s = first - seconds
    return dict(
        n=n,
        m=measurements(n),
        solver=traj.config["solver"],
        seconds=seconds,
        compile=compile_s,
        steps=traj.stats["num_steps"],
        rejected=traj.stats["num_rejected_steps"],
        t_final=float(traj.ts[-1]),
        loss=float(traj.loss[-1]),
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    )


def spawn(
    n: int,
    solver: str,
    t1: float,
    stop_loss: float | None = None,
    max_steps: int = 10_000_000,
    timeout: float = 3 * 3600,
) -> dict:
    cmd = [
        sys.executable,
        str(HERE / "scaling.py"),
        "--one",
        str(n),
        "--max-steps",
        str(max_steps),
        "--solver",
        solver,
        "--t1",
        str(t1),
    ]
    if stop_loss is not None:
        cmd += ["--stop-loss", str(stop_loss)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"n = {n} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def fit(xs, ys) -> float:
    import numpy as np

    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


def figure(rows, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    ns = np.array([r["n"] for r in rows])
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for key, label, marker in (("seconds", "wall time (s)", "o"), ("steps", "steps", "s")):
        ys = np.array([r[key] for r in rows])
        a = fit(ns, ys)
        ax.loglog(ns, ys, marker=marker, label=f"{label}: slope {a:.2f}")
        ax.loglog(ns, np.exp(np.polyval(np.polyfit(np.log(ns), np.log(ys), 1), np.log(ns))), "k:", lw=0.8)
    ax.set_xlabel("n (matrix is n x n)")
    ax.set_ylabel("wall time (s) / steps")
    ax.set_title(
        f"flows.solve ({rows[0]['solver']}), U U^T completion, rank {RANK}, "
        f"m = min(5nr ln n, n^2/2), t in [0, {rows[0]['t_final']:g}]",
        fontsize=8,
    )
    ax.legend()
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, nargs="*", default=[30, 100, 300, 1000])
    parser.add_argument("--figure", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=HERE / "scaling.json")
    parser.add_argument(
        "--solver",
        default="tsit5",
        help="tsit5 (default: one solver at every n, so the exponent means something), "
        "extrapolation, or default (flows.default_solver's pick)",
    )
    parser.add_argument("--memory", type=int, default=None, help="n for the memory-against-steps check")
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--t1", type=float, default=1000.0, help="horizon (default 1000)")
    parser.add_argument("--stop-loss", type=float, default=None, help="stop there instead (t1 becomes 1e9)")
    parser.add_argument("--max-steps", type=int, default=10_000_000, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.one is not None:
        print(json.dumps(one(args.one, args.t1, args.stop_loss, args.max_steps, args.solver)))
        return 0
    t1 = 1e9 if args.stop_loss is not None else args.t1
    if args.memory is not None:
        print(f"n = {args.memory}: peak memory of the whole process against the horizon (steps)")
        print(f"{'t1':>10}{'steps':>10}{'peak RSS MB':>13}")
        rows = [spawn(args.memory, args.solver, t1=horizon) for horizon in (1e2, 1e3, 1e4, 1e5)]
        for r in rows:
            print(f"{r['t_final']:10.4g}{r['steps']:10d}{r['peak_rss_mb']:13.0f}", flush=True)
        return 0
    rows = []
    print(
        f"{'n':>6}{'m':>8}  {'solver':<30}{'seconds':>10}{'compile':>9}{'steps':>9}{'t final':>10}{'loss':>10}"
        f"{'RSS MB':>8}"
    )
    for n in args.n:
        r = spawn(n, args.solver, t1=t1, stop_loss=args.stop_loss)
        rows.append(r)
        print(
            f"{r['n']:6d}{r['m']:8d}  {r['solver']:<30}{r['seconds']:10.2f}{r['compile']:9.2f}{r['steps']:9d}"
            f"{r['t_final']:10.4g}{r['loss']:10.2e}{r['peak_rss_mb']:8.0f}",
            flush=True,
        )
    if len(rows) >= 2:
        ns = [r["n"] for r in rows]
        print(
            f"fitted: seconds ~ n^{fit(ns, [r['seconds'] for r in rows]):.2f}, "
            f"steps ~ n^{fit(ns, [r['steps'] for r in rows]):.2f}"
        )
    args.json.write_text(json.dumps(rows, indent=2))
    if args.figure:
        figure(rows, args.figure)
    return 0


if __name__ == "__main__":
    sys.exit(main())
