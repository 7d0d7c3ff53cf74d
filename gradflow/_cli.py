"""The `gradflow` command line: a thin layer over `flows` and `analysis`.

`run` integrates one flow (its flags map one to one onto the problem, the parameterization, the
objective and the dynamics); `check` runs the analysis checks. User errors (bad values, unusable
paths) print one line on stderr and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

PROBLEMS = ("sensing", "completion", "commuting")
PARAMETERIZATION_CHOICES = ("direct", "symmetric", "factored", "deep")
PENALTY_CHOICES = ("none", "nuclear", "ratio", "hoyer-square", "frobenius")
DYNAMICS_CHOICES = ("gradient", "adam", "rmsprop", "momentum", "sign", "modified")

RUN_EPILOG = """\
examples:
  gradflow run --problem sensing --n 30 --m 180 --rank 2 --parameterization symmetric --scale 1e-3 --t1 100
  gradflow run --problem completion --n 30 --m 180 --rank 2 --parameterization deep --depth 3 --init balanced \\
      --scale 0.3 --t1 1e4 --stop-loss 1e-10 --out runs/deep3
  gradflow run --problem completion --n 30 --m 180 --parameterization symmetric --penalty ratio --strength 1e-3 \\
      --dynamics adam --a 10 --b 1 --t1 100

Writes OUT/arrays.npz + OUT/meta.json (the trajectory and its full configuration; load it with
flows.Trajectory.load(OUT)) and a figure (loss, singular values, error to the truth against time).
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gradflow", description=("Gradient-flow simulator for implicit regularization in matrix factorization.")
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser(
        "run",
        help="integrate one flow, save its trajectory and draw it",
        description="Integrate one flow: problem x parameterization x objective x dynamics.",
        epilog=RUN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    g = run.add_argument_group("problem")
    g.add_argument(
        "--problem",
        choices=PROBLEMS,
        default="sensing",
        help="Gaussian sensing, matrix completion, or commuting measurements (default: sensing)",
    )
    g.add_argument("--n", type=int, default=20, help="the matrix is n x n (default: 20)")
    g.add_argument("--m", type=int, default=120, help="number of measurements / observed entries (default: 120)")
    g.add_argument("--rank", type=int, default=2, help="rank of the ground truth (default: 2)")
    g.add_argument(
        "--asymmetric",
        action="store_true",
        help="non-symmetric measurements and truth Z1 Z2^T (default: symmetric, PSD truth)",
    )
    g.add_argument("--seed", type=int, default=0, help="seed of the problem and of random inits (default: 0)")
    g = run.add_argument_group("parameterization")
    g.add_argument(
        "--parameterization",
        choices=PARAMETERIZATION_CHOICES,
        default="symmetric",
        help="direct W, symmetric U U^T, factored U V^T, or deep W_N...W_1 (default: symmetric)",
    )
    g.add_argument("--depth", type=int, default=3, help="number of factors of the deep product (default: 3)")
    g.add_argument("--width", type=int, default=None, help="inner width of the factors (default: n)")
    g.add_argument("--scale", type=float, default=1e-3, help="init scale alpha per factor (default: 1e-3)")
    g.add_argument(
        "--init",
        default="identity",
        choices=("identity", "orthogonal", "gaussian", "balanced", "zero"),
        help="init kind (default: identity; zero is for the direct parameterization)",
    )
    g = run.add_argument_group("objective: the data loss plus strength x penalty")
    g.add_argument(
        "--penalty",
        choices=PENALTY_CHOICES,
        default="none",
        help="penalty R: smoothed nuclear norm, the ratio ||W||_*/||W||_F, its square (Hoyer-square), or "
        "1/2 ||W||_F^2 (default: none)",
    )
    g.add_argument(
        "--on-factors",
        action="store_true",
        help="apply the penalty to each factor (sum_j R(W_j)) instead of the product W",
    )
    g.add_argument("--strength", type=float, default=1e-2, help="lambda in L + lambda R (default: 1e-2)")
    g.add_argument(
        "--penalty-eps", type=float, default=1e-3, help="smoothing of the nuclear norm (nuclear, ratio; default: 1e-3)"
    )
    g.add_argument(
        "--penalty-delta",
        type=float,
        default=1e-3,
        help="smoothing of ||W||_F in the ratio; 0 keeps it exactly scale invariant (default: 1e-3)",
    )
    g = run.add_argument_group("dynamics")
    g.add_argument(
        "--dynamics",
        choices=DYNAMICS_CHOICES,
        default="gradient",
        help="gradient flow, the Adam flow, its RMSProp / momentum-only / sign limits, or the "
        "modified flow of gradient descent with step --eta (default: gradient)",
    )
    g.add_argument("--a", type=float, default=100.0, help="first-moment rate: 1 - beta1 = a * step (default: 100)")
    g.add_argument("--b", type=float, default=1.0, help="second-moment rate: 1 - beta2 = b * step (default: 1)")
    g.add_argument("--eps", type=float, default=1e-8, help="Adam / RMSProp / sign-flow eps (default: 1e-8)")
    g.add_argument(
        "--eta", type=float, default=1e-2, help="gradient-descent step the modified flow models (default: 1e-2)"
    )
    g = run.add_argument_group("integration")
    g.add_argument("--t1", type=float, default=100.0, help="final time (default: 100)")
    g.add_argument("--rtol", type=float, default=1e-8, help="relative tolerance (default: 1e-8)")
    g.add_argument(
        "--atol",
        type=float,
        default=None,
        help="absolute tolerance (default: none; errors are measured relative to each state array's size)",
    )
    g.add_argument("--stop-loss", type=float, default=None, help="stop once the loss falls below this")
    g.add_argument("--max-steps", type=int, default=1_000_000, help="step budget (default: 1e6)")
    g.add_argument(
        "--solver",
        default="default",
        help="'default' (flows.default_solver: the stiff switch into a --stop-loss tail) or a Diffrax "
        "solver: tsit5, dopri5, dopri8, kvaerno5, extrapolation, switching, ...",
    )
    g.add_argument("--points", type=int, default=200, help="saved times, log-spaced (default: 200)")
    g = run.add_argument_group("output")
    g.add_argument("--out", default="runs/latest", help="output folder (default: runs/latest)")
    g.add_argument("--figure", default=None, help="figure path (default: OUT/figure.png)")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    run.set_defaults(handler=cmd_run)

    check = commands.add_parser(
        "check",
        help="run the analysis checks and print their numbers",
        description=(
            "Run the analysis checks (closed forms, eigenbasis, small-init "
            "limit, deep dynamics, flatness) and print each measured value "
            "against its threshold. Exit status 1 if any fails."
        ),
    )
    check.add_argument("--json", action="store_true", help="print the rows as a JSON list, nothing else")
    check.add_argument(
        "--only",
        nargs="+",
        default=None,
        metavar="GROUP",
        help="run only these groups (default: all; see the list in the error for a bad name)",
    )
    check.set_defaults(handler=cmd_check)

    reproduce = commands.add_parser(
        "reproduce",
        help="regenerate every figure and table of the paper",
        description=(
            "Run the experiments of the paper: each sweeps its runs into a "
            "keyed store (resumable: nothing finished is recomputed), then "
            "writes its figures (PDF + PNG) and LaTeX macros and tables."
        ),
    )
    reproduce.add_argument("--only", nargs="+", default=None, metavar="NAME", help="run only these experiments")
    reproduce.add_argument(
        "--quick",
        action="store_true",
        help="the small grids (minutes on two cores); writes runs/quick/{figures,generated}",
    )
    reproduce.add_argument("--list", action="store_true", help="list the experiments and exit")
    reproduce.add_argument("--store", default=None, help="the run store (default: runs/, or runs/quick with --quick)")
    reproduce.add_argument(
        "--out",
        default=None,
        help="write OUT/figures and OUT/generated (default: figures/ and paper/generated/, "
        "or runs/quick/... with --quick)",
    )
    reproduce.add_argument(
        "--scheduler",
        default=None,
        metavar="ADDRESS",
        help="solve the runs on a Dask cluster: its scheduler's address (e.g. tcp://host:8786); "
        "the store must be on a filesystem every worker shares",
    )
    reproduce.add_argument("--quiet", action="store_true", help="no progress bars")
    reproduce.set_defaults(handler=cmd_reproduce)
    return parser


def make_problem(args):
    import flows

    symmetric = not args.asymmetric
    if args.problem == "sensing":
        return flows.sensing(n=args.n, m=args.m, rank=args.rank, seed=args.seed, symmetric=symmetric)
    if args.problem == "completion":
        return flows.completion(n=args.n, m=args.m, rank=args.rank, seed=args.seed, symmetric=symmetric)
    if args.asymmetric:
        raise ValueError("commuting measurements are symmetric; drop --asymmetric")
    return flows.commuting(n=args.n, m=args.m, rank=args.rank, seed=args.seed)


def flow_description(args) -> dict:
    """The `flows.Flow.from_description` of the flags: one group of flags per family."""
    parameterization = {"name": args.parameterization}
    if args.parameterization == "deep":
        parameterization["depth"] = args.depth
    if args.parameterization != "direct":
        parameterization["width"] = args.width
    description = {
        "parameterization": parameterization,
        "dynamics": {
            "name": args.dynamics,
            **{
                "adam": {"a": args.a, "b": args.b, "eps": args.eps},
                "rmsprop": {"b": args.b, "eps": args.eps},
                "momentum": {"a": args.a},
                "sign": {"eps": args.eps},
                "modified": {"eta": args.eta},
            }.get(args.dynamics, {}),
        },
    }
    if args.penalty != "none":
        penalty = {
            "name": args.penalty,
            **{
                "nuclear": {"eps": args.penalty_eps},
                "ratio": {"eps": args.penalty_eps, "delta": args.penalty_delta},
                "hoyer-square": {"eps": args.penalty_eps, "delta": args.penalty_delta},
            }.get(args.penalty, {}),
        }
        description |= {
            "penalty": {"name": "each-factor", "penalty": penalty} if args.on_factors else penalty,
            "strength": args.strength,
        }
    return description


def cmd_run(args) -> int:
    import flows

    if args.points < 2:
        raise ValueError(f"--points must be at least 2; got {args.points}")
    problem = make_problem(args)
    flow = flows.Flow.from_description(problem, flow_description(args))
    state0 = flow.init(scale=args.scale, kind=args.init, seed=args.seed)
    solver = None if args.solver == "default" else flows.solver_by_name(args.solver)
    out = _writable_folder(args.out)
    figure = Path(args.figure) if args.figure else out / "figure.png"
    _writable_folder(figure.parent)
    traj = flows.solve(
        flow,
        state0,
        t1=args.t1,
        ts=flows.default_ts(args.t1, args.points),
        rtol=args.rtol,
        atol=args.atol,
        stop_loss=args.stop_loss,
        solver=solver,
        max_steps=args.max_steps,
        progress=not args.quiet,
    )
    traj.config["problem"] = {
        "kind": args.problem,
        "n": args.n,
        "m": args.m,
        "rank": args.rank,
        "seed": args.seed,
        "symmetric": not args.asymmetric,
    }
    traj.config["init"] = {"scale": args.scale, "kind": args.init, "seed": args.seed}
    traj.save(out)
    title = f"{args.parameterization}, {args.problem} n={args.n} m={args.m} rank={args.rank}, alpha={args.scale:g}"
    if args.penalty != "none" or args.dynamics != "gradient":
        title += f", {args.dynamics} dynamics, penalty {args.penalty}"
    flows.plot_trajectory(traj, figure, title=title)
    summary = {
        "t_final": traj.ts[-1],
        "loss": traj.loss[-1],
        "steps": traj.stats["num_steps"],
        "rejected": traj.stats["num_rejected_steps"],
        "vf_evaluations": traj.stats["vf_evaluations"] or float("nan"),
        "effective_rank": traj.effective_rank[-1],
    }
    if traj.truth is not None:
        summary["relative_error"] = traj.relative_error[-1]
    print(json.dumps({k: float(v) for k, v in summary.items()}, indent=1))
    print("faithfulness:", json.dumps(traj.faithfulness(), indent=1))
    print(f"saved {out} and {figure}")
    return 0


def _writable_folder(path) -> Path:
    """`path` as a folder that exists and can be written to, or ValueError naming it."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"cannot create the folder {path}: {err.strerror or err}") from None
    if not path.is_dir():
        raise ValueError(f"{path} exists and is not a folder")
    if not os.access(path, os.W_OK):
        raise ValueError(f"cannot write to {path}: permission denied")
    return path


def cmd_check(args) -> int:
    from analysis import checks

    groups = list(checks.GROUPS) if args.only is None else args.only
    unknown = [g for g in groups if g not in checks.GROUPS]
    if unknown:
        raise ValueError(f"unknown check group {unknown[0]!r}; choose from {', '.join(checks.GROUPS)}")
    start = time.perf_counter()
    rows: list = []
    details: dict = {}
    seconds = {}
    for name in groups:
        group_start = time.perf_counter()
        result = checks.GROUPS[name]()
        rows += result.rows
        details[name] = result.details
        seconds[name] = round(time.perf_counter() - group_start, 1)
    details["seconds per group"] = seconds
    if args.json:
        print(json.dumps([r.as_json() for r in rows], indent=1))
    else:
        print(checks.format_table(rows))
        failed = sum(not r.passed for r in rows)
        print(f"\n{len(rows) - failed} of {len(rows)} checks passed in {time.perf_counter() - start:.0f} s")
        print("\ndetails:")
        print(json.dumps(details, indent=1, default=float))
    return 0 if all(r.passed for r in rows) else 1


def cmd_reproduce(args) -> int:
    import experiments

    if args.list:
        for name, experiment in experiments.EXPERIMENTS.items():
            print(f"{name:16s} {experiment.title}")
        return 0
    out = None if args.out is None else _writable_folder(args.out)
    tally, seconds = experiments.reproduce(
        args.only, quick=args.quick, store=args.store, out=out, progress=not args.quiet, executor=args.scheduler
    )
    folders = sorted({str(p.parent) for p in tally.figures + tally.generated})
    print(
        f"reproduce{' --quick' if args.quick else ''}: {tally.done} runs done, {tally.reused} reused, "
        f"{tally.failed} failed in {seconds:.0f} s; {len(tally.figures)} figure files and "
        f"{len(tally.generated)} LaTeX files written to {', '.join(folders) or 'nowhere'}"
    )
    return 1 if tally.failed else 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (ValueError, OSError) as err:
        print(f"gradflow {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
