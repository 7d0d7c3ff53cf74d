"""The `gradflow` command line: a thin layer over the Python API.

`run` integrates one flow; `check` and `reproduce` live in `analysis` (which builds on `flows`),
so they are imported only when called.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

PROBLEMS = ("sensing", "completion", "commuting")
FLOWS = ("direct", "symmetric", "factored", "deep")
PENALTY_CHOICES = ("none", "nuclear", "ratio", "frobenius")
DYNAMICS = ("gradient", "adam", "rmsprop", "momentum", "sign", "modified")

RUN_EPILOG = """\
examples:
  gradflow run --problem sensing --n 30 --m 180 --rank 2 --flow symmetric --scale 1e-3 --t1 100
  gradflow run --problem completion --n 30 --m 180 --rank 2 --flow deep --depth 3 --init balanced \\
      --scale 0.3 --t1 1e4 --stop-loss 1e-10 --out runs/deep3
  gradflow run --problem completion --n 30 --m 180 --flow symmetric --penalty ratio --strength 1e-3 \\
      --dynamics adam --a 10 --b 1 --t1 100

Writes OUT/arrays.npz + OUT/meta.json (the trajectory and its full configuration; load it with
flows.Trajectory.load(OUT)) and a figure (loss, singular values, error to the truth against time).
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gradflow", description=(
        "Gradient-flow simulator for implicit regularization in matrix factorization."))
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="integrate one flow, save its trajectory and draw it",
                              description="Integrate one gradient flow from a small initialization.",
                              epilog=RUN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = run.add_argument_group("problem")
    g.add_argument("--problem", choices=PROBLEMS, default="sensing",
                   help="Gaussian sensing, matrix completion, or commuting measurements (default: sensing)")
    g.add_argument("--n", type=int, default=20, help="the matrix is n x n (default: 20)")
    g.add_argument("--m", type=int, default=120, help="number of measurements / observed entries (default: 120)")
    g.add_argument("--rank", type=int, default=2, help="rank of the ground truth (default: 2)")
    g.add_argument("--asymmetric", action="store_true",
                   help="non-symmetric measurements and truth Z1 Z2^T (default: symmetric, PSD truth)")
    g.add_argument("--seed", type=int, default=0, help="seed of the problem and of random inits (default: 0)")
    g = run.add_argument_group("flow")
    g.add_argument("--flow", choices=FLOWS, default="symmetric",
                   help="direct W, symmetric U U^T, factored U V^T, or deep W_N...W_1 (default: symmetric)")
    g.add_argument("--depth", type=int, default=3, help="number of factors of the deep flow (default: 3)")
    g.add_argument("--width", type=int, default=None, help="inner width of the factors (default: n)")
    g.add_argument("--scale", type=float, default=1e-3, help="init scale alpha per factor (default: 1e-3)")
    g.add_argument("--init", default="identity", choices=("identity", "orthogonal", "gaussian", "balanced", "zero"),
                   help="init kind (default: identity; zero is for the direct flow)")
    g = run.add_argument_group("objective and dynamics")
    g.add_argument("--penalty", choices=PENALTY_CHOICES, default="none",
                   help="penalty R on the end-to-end W: smoothed nuclear norm, the ratio ||W||_*/||W||_F, "
                        "or 1/2 ||W||_F^2 (default: none)")
    g.add_argument("--strength", type=float, default=1e-2, help="lambda in L + lambda R (default: 1e-2)")
    g.add_argument("--penalty-eps", type=float, default=1e-3,
                   help="smoothing of the nuclear norm (nuclear, ratio; default: 1e-3)")
    g.add_argument("--penalty-delta", type=float, default=1e-3,
                   help="smoothing of ||W||_F in the ratio; 0 keeps it exactly scale invariant (default: 1e-3)")
    g.add_argument("--dynamics", choices=DYNAMICS, default="gradient",
                   help="gradient flow, the Adam flow, its RMSProp / momentum-only / sign limits, or the "
                        "modified flow of gradient descent with step --eta (default: gradient)")
    g.add_argument("--a", type=float, default=100.0, help="first-moment rate: 1 - beta1 = a * step (default: 100)")
    g.add_argument("--b", type=float, default=1.0, help="second-moment rate: 1 - beta2 = b * step (default: 1)")
    g.add_argument("--eps", type=float, default=1e-8, help="Adam / RMSProp / sign-flow eps (default: 1e-8)")
    g.add_argument("--eta", type=float, default=1e-2, help="gradient-descent step the modified flow models (default: 1e-2)")
    g = run.add_argument_group("integration")
    g.add_argument("--t1", type=float, default=100.0, help="final time (default: 100)")
    g.add_argument("--rtol", type=float, default=1e-8, help="relative tolerance (default: 1e-8)")
    g.add_argument("--atol", type=float, default=1e-10, help="absolute tolerance (default: 1e-10)")
    g.add_argument("--stop-loss", type=float, default=None, help="stop once the loss falls below this")
    g.add_argument("--max-steps", type=int, default=1_000_000, help="step budget (default: 1e6)")
    g.add_argument("--solver", default="tsit5", help="Diffrax solver: tsit5, dopri5, dopri8, kvaerno5, ...")
    g.add_argument("--points", type=int, default=200, help="saved times, log-spaced (default: 200)")
    g = run.add_argument_group("output")
    g.add_argument("--out", default="runs/latest", help="output folder (default: runs/latest)")
    g.add_argument("--figure", default=None, help="figure path (default: OUT/figure.png)")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    run.set_defaults(handler=cmd_run)

    for name in ("check", "reproduce"):
        sub = commands.add_parser(name, help=f"see `gradflow {name} --help`", add_help=False)
        sub.add_argument("rest", nargs=argparse.REMAINDER)
        sub.set_defaults(handler=_delegate(name))
    return parser


def _delegate(name: str):
    def handler(args) -> int:
        try:
            import analysis.cli as analysis_cli
        except ImportError as err:
            print(f"gradflow {name}: not available in this version ({err})", file=sys.stderr)
            return 2
        command = getattr(analysis_cli, name, None)
        if command is None:
            print(f"gradflow {name}: not available in this version", file=sys.stderr)
            return 2
        return command(args.rest)
    return handler


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


def make_flow(args, problem):
    import flows

    if args.flow == "direct":
        return flows.Direct(problem)
    if args.flow == "symmetric":
        return flows.Symmetric(problem, width=args.width)
    if args.flow == "factored":
        return flows.Factored(problem, width=args.width)
    return flows.Deep(problem, depth=args.depth, width=args.width)


def wrap_flow(args, flow):
    """The penalty (objective) inside, then the dynamics outside."""
    import flows

    if args.penalty == "nuclear":
        flow = flows.Penalized(flow, flows.Nuclear(eps=args.penalty_eps), strength=args.strength)
    elif args.penalty == "ratio":
        flow = flows.Penalized(flow, flows.Ratio(eps=args.penalty_eps, delta=args.penalty_delta), strength=args.strength)
    elif args.penalty == "frobenius":
        flow = flows.Penalized(flow, flows.Frobenius(), strength=args.strength)
    if args.dynamics == "adam":
        return flows.Adam(flow, a=args.a, b=args.b, eps=args.eps)
    if args.dynamics == "rmsprop":
        return flows.RMSProp(flow, b=args.b, eps=args.eps)
    if args.dynamics == "momentum":
        return flows.Momentum(flow, a=args.a)
    if args.dynamics == "sign":
        return flows.Sign(flow, eps=args.eps)
    if args.dynamics == "modified":
        return flows.Modified(flow, eta=args.eta)
    return flow


def cmd_run(args) -> int:
    import flows
    from flows._plot import plot_trajectory

    problem = make_problem(args)
    flow = wrap_flow(args, make_flow(args, problem))
    state0 = flow.init(scale=args.scale, kind=args.init, seed=args.seed)
    solver = flows.solver_by_name(args.solver)
    if args.points < 2:
        raise ValueError(f"--points must be at least 2; got {args.points}")
    traj = flows.solve(flow, state0, t1=args.t1, ts=flows.default_ts(args.t1, args.points), rtol=args.rtol,
                       atol=args.atol, stop_loss=args.stop_loss, solver=solver, max_steps=args.max_steps,
                       progress=not args.quiet)
    traj.config["problem"] = {"kind": args.problem, "n": args.n, "m": args.m, "rank": args.rank,
                              "seed": args.seed, "symmetric": not args.asymmetric}
    traj.config["init"] = {"scale": args.scale, "kind": args.init, "seed": args.seed}
    out = traj.save(args.out)
    figure = Path(args.figure) if args.figure else out / "figure.png"
    figure.parent.mkdir(parents=True, exist_ok=True)
    title = f"{args.flow} flow, {args.problem} n={args.n} m={args.m} rank={args.rank}, alpha={args.scale:g}"
    if args.penalty != "none" or args.dynamics != "gradient":
        title += f", {args.dynamics} dynamics, penalty {args.penalty}"
    plot_trajectory(traj, figure, title=title)
    summary = {"t_final": traj.ts[-1], "loss": traj.loss[-1], "steps": traj.stats["num_steps"],
               "rejected": traj.stats["num_rejected_steps"],
               "vf_evaluations": traj.stats["vf_evaluations"] or float("nan"), "effective_rank": traj.effective_rank[-1]}
    if traj.truth is not None:
        summary["relative_error"] = traj.relative_error[-1]
    print(json.dumps({k: float(v) for k, v in summary.items()}, indent=1))
    print(f"saved {out} and {figure}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in ("check", "reproduce"):
        # Delegated commands parse their own options: argparse's REMAINDER rejects a leading "--flag".
        args = argparse.Namespace(command=argv[0], rest=argv[1:], handler=_delegate(argv[0]))
    else:
        args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except ValueError as err:
        print(f"gradflow {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
