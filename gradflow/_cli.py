"""The `gradflow` command line: a thin layer over `flows`, `analysis` and `experiments`.

`run` integrates one flow, or with `--step` runs its discrete counterpart; its family flags come from the
families' registries (`gradflow._families`). `plot` overlays saved runs. `check` runs the analysis checks,
`reproduce` the paper's experiments. Everything a command is given is checked before anything is computed;
a user error (a bad value, flags that do not fit together, an unusable path) or a failed solve prints one line
on stderr and exits with status 2; Ctrl-C prints one line and exits with status 130, SIGTERM likewise with 143
(`gradflow._interrupt`).
"""

from __future__ import annotations

import argparse
import contextlib
import html
import inspect
import json
import math
import re
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

from ._families import families
from ._interrupt import end_quietly_once_finished, interruptible

PROBLEMS = {
    "sensing": "sensing",
    "completion": "completion",
    "commuting": "commuting",
    "rank-one-sensing": "rank_one_sensing",
}
"""The problem constructors of `flows` by the names the command line accepts."""

FIGURE_FORMATS = (".png", ".pdf", ".svg", ".jpg", ".jpeg")

RUN_EPILOG = """\
examples:
  gradflow run --problem sensing --n 30 --m 180 --rank 2 --parameterization symmetric --scale 1e-3 --t1 100
  gradflow run --problem completion --n 30 --m 180 --rank 2 --parameterization deep --depth 3 --init balanced \\
      --scale 0.3 --t1 1e4 --stop-loss 1e-10 --out runs/deep3
  gradflow run --problem completion --n 30 --m 180 --parameterization symmetric --penalty ratio --strength 1e-3 \\
      --dynamics adam --a 10 --b 1 --scale 0.1 --t1 3
  gradflow run --n 30 --m 180 --rank 2 --scale 0.1 --t1 50 --out runs/flow
  gradflow run --n 30 --m 180 --rank 2 --scale 0.1 --t1 50 --step 0.002 --out runs/gd   # gradient descent
  gradflow plot runs/flow runs/gd --out overlay.png

Writes OUT/arrays.npz + OUT/meta.json (the trajectory and its full configuration; load it with
flows.Trajectory.load(OUT)) and a figure (loss, singular values, effective rank, error to the truth against
time). A solve that fails saves its run up to the failure, marked failed, draws it, and exits with status 2.
"""

# The integration flags of a flow run (refused with --step), with the defaults of flows.solve where it has one.
INTEGRATION = ("rtol", "atol", "stop_loss", "max_steps", "solver")


def path(text: str) -> str:
    """A path flag's value, refused when empty: an unset shell variable would otherwise name the current folder."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path (an unset variable?); name a file or folder")
    return text


class Parser(argparse.ArgumentParser):
    """argparse with its errors on one line (the usage is one --help away)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    import flows

    parser = Parser(
        prog="gradflow", description="Gradient-flow simulator for implicit regularization in matrix factorization."
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser(
        "run",
        help="integrate one flow (or, with --step, run its discrete counterpart), save it and draw it",
        description="Integrate one flow: problem x parameterization x objective x dynamics; with --step, run "
        "the dynamics' discrete counterpart (gradient descent, Adam, ...) instead.",
        epilog=RUN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    g = run.add_argument_group("problem")
    g.add_argument("--problem", choices=PROBLEMS, default="sensing", help="the measurements (default: sensing)")
    g.add_argument("--n", type=int, default=20, help="the matrix is n x n2 (default: 20)")
    g.add_argument("--n2", type=int, default=None, help="columns of the matrix (default: n)")
    g.add_argument("--m", type=int, default=120, help="number of measurements / observed entries (default: 120)")
    g.add_argument("--rank", type=int, default=2, help="rank of the ground truth (default: 2)")
    g.add_argument(
        "--symmetric",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="symmetric measurements and a PSD truth Z Z^T, or (--no-symmetric) a truth Z1 Z2^T (default: symmetric)",
    )
    g.add_argument("--noise", type=float, default=None, help="std of Gaussian noise on y (sensing; default: 0)")
    g.add_argument("--seed", type=int, default=0, help="seed of the problem and of random inits (default: 0)")

    registry = families()
    blurbs = {
        "parameterization": "how the parameters make W",
        "penalty": "the objective is the data loss L plus strength x penalty R",
        "dynamics": "how the parameter gradient becomes the vector field",
    }
    for family in registry:
        group = family.add_to(run, blurbs[family.name])
        if family.name == "penalty":
            group.add_argument(
                "--strength", type=float, default=None, help="lambda in L + lambda R (required with a penalty)"
            )
    kinds = list(dict.fromkeys(kind for cls in flows.PARAMETERIZATIONS.values() for kind in cls.init_kinds))
    g = run.add_argument_group("initialization")
    g.add_argument(
        "--init",
        default="identity",
        choices=kinds,
        help="init kind; each parameterization takes some: "
        + "; ".join(f"{key} {', '.join(cls.init_kinds)}" for key, cls in flows.PARAMETERIZATIONS.items())
        + " (default: identity)",
    )
    g.add_argument(
        "--scale", type=float, default=None, help="init scale alpha per factor (default: 1e-3; none for zero)"
    )

    defaults = inspect.signature(flows.solve).parameters
    g = run.add_argument_group("integration (a flow run)")
    g.add_argument("--t1", type=float, default=100.0, help="final time (default: 100)")
    g.add_argument("--points", type=int, default=200, help="saved times, 0 then log-spaced (default: 200)")
    g.add_argument(
        "--rtol", type=float, default=None, help=f"relative tolerance (default: {defaults['rtol'].default:g})"
    )
    g.add_argument(
        "--atol",
        type=float,
        default=None,
        help="absolute tolerance (default: none; errors are measured relative to each state array's size)",
    )
    g.add_argument("--stop-loss", type=float, default=None, help="stop once the loss falls below this")
    g.add_argument(
        "--max-steps", type=int, default=None, help=f"step budget (default: {defaults['max_steps'].default:g})"
    )
    g.add_argument(
        "--solver",
        default=None,
        metavar="SOLVER",
        help="'default' (flows.default_solver: for gradient flows the switch into a stiff solver once the tail turns "
        "stiff) or one of flows.SOLVERS: " + ", ".join(flows.SOLVERS),
    )
    g = run.add_argument_group("discrete steps")
    g.add_argument(
        "--step",
        type=float,
        default=None,
        metavar="ETA",
        help="run the dynamics' discrete counterpart (flows.descend: gradient descent, Adam, RMSProp, ...) with "
        "this step size to t1, instead of integrating the flow; meta.json records the step",
    )
    g = run.add_argument_group("output")
    g.add_argument("--out", type=path, default="runs/latest", help="output folder (default: runs/latest)")
    g.add_argument(
        "--figure", type=path, default=None, help=f"figure path, {'/'.join(FIGURE_FORMATS)} (default: OUT/figure.png)"
    )
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    run.set_defaults(handler=cmd_run)

    plot = commands.add_parser(
        "plot",
        help="overlay saved runs on shared axes",
        description="Draw saved runs (folders written by `gradflow run` or flows.Trajectory.save) on shared "
        "axes: loss, singular values, effective rank, error to the truth. The title is what the runs share, "
        "each legend entry what sets a run apart (e.g. the flow and its discrete steps).",
    )
    plot.add_argument("runs", type=path, nargs="+", metavar="RUN_DIR", help="saved runs")
    plot.add_argument("--out", type=path, required=True, help=f"figure path, {'/'.join(FIGURE_FORMATS)}")
    plot.add_argument("--labels", nargs="+", default=None, help="one legend entry per run (default: from configs)")
    plot.add_argument("--title", default=None, help="default: the configuration the runs share")
    plot.set_defaults(handler=cmd_plot)

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
    check.add_argument(
        "--store",
        type=path,
        default=None,
        help="keep the small-initialization runs in this store and reuse them (gradflow reproduce's runs/ holds the "
        "small_init experiment's: the same runs)",
    )
    check.set_defaults(handler=cmd_check)

    reproduce = commands.add_parser(
        "reproduce",
        help="regenerate every figure and table of the paper",
        description=(
            "Run the experiments of the paper: each sweeps its runs into a "
            "keyed store (resumable: nothing finished is recomputed), then "
            "writes its figures (PDF + PNG), LaTeX values and tables, and report.html "
            "(every figure, table and verdict on one page); the verdicts are printed at the end."
        ),
    )
    reproduce.add_argument("--only", nargs="+", default=None, metavar="NAME", help="run only these experiments")
    reproduce.add_argument(
        "--quick",
        action="store_true",
        help="the small grids (minutes on two cores); writes runs/quick/{figures,generated,report.html}",
    )
    reproduce.add_argument(
        "--fresh", action="store_true", help="compute every run, reference and measurement again (each once)"
    )
    reproduce.add_argument(
        "--list", action="store_true", help="list the experiments with their measured quick and full times, and exit"
    )
    reproduce.add_argument(
        "--store", type=path, default=None, help="the run store (default: runs/, or runs/quick with --quick)"
    )
    reproduce.add_argument(
        "--out",
        type=path,
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


# -- gradflow run ---------------------------------------------------------------------------------------------


def make_problem(args):
    """The problem of the flags; a flag its constructor does not take is refused."""
    import flows

    make = getattr(flows, PROBLEMS[args.problem])
    takes = inspect.signature(make).parameters
    given = {"n": args.n, "m": args.m, "rank": args.rank, "seed": args.seed}
    optional = {"n2": args.n2, "symmetric": args.symmetric, "noise": args.noise}
    for name, value in optional.items():
        if value is None:
            continue
        if name not in takes:
            flag = {"symmetric": "--symmetric/--no-symmetric"}.get(name, f"--{name}")
            raise ValueError(f"{flag} does not apply to --problem {args.problem}")
        given[name] = value
    return make(**given), given


def check_flags(args) -> None:
    """ValueError for numbers out of range and flags that do not fit together, before anything is built."""
    import flows
    from flows._validate import check_positive

    check_positive("--t1", args.t1)
    if args.points < 2:
        raise ValueError(f"--points must be at least 2; got {args.points}")
    if args.step is not None:
        step = check_positive("--step", args.step)
        if step > args.t1:
            raise ValueError(f"--step {step:g} is larger than --t1 {args.t1:g}: not one step would be taken")
        given = [f"--{name.replace('_', '-')}" for name in INTEGRATION if getattr(args, name) is not None]
        if given:
            raise ValueError(f"{given[0]} does not apply to a discrete run (--step): it sets the flow's integration")
    if args.penalty == "none" and args.strength is not None:
        raise ValueError("--strength does not apply without a penalty: choose --penalty, or drop --strength")
    if args.penalty != "none" and args.strength is None:
        raise ValueError(f"--penalty {args.penalty} needs its --strength (lambda >= 0)")
    if args.init == "zero" and args.scale is not None:
        raise ValueError("--scale does not apply to --init zero (W_0 = 0 has no scale)")
    if args.solver not in (None, "default"):
        flows.solver_by_name(args.solver)


def writable_folder(path, what: str = "folder") -> Path:
    """`path` as a folder that exists and takes new files (tried by writing one), or ValueError naming it."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"the {what} {path} exists and is not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".gradflow-probe-"):
            pass
    except OSError as err:
        raise ValueError(f"cannot write to the {what} {path}: {err.strerror or err}") from None
    return path


def missing_folders(path) -> list[Path]:
    """The folders of `path` (itself, then its parents) that do not exist yet, deepest first."""
    missing = []
    for folder in (Path(path), *Path(path).parents):
        if folder.exists():
            break
        missing.append(folder)
    return missing


def remove_if_empty(folders: list[Path]) -> None:
    """Remove those of `folders` that are empty, deepest first: the ones a command made for output it never wrote."""
    for folder in sorted(folders, key=lambda folder: len(folder.absolute().parts), reverse=True):
        try:
            folder.rmdir()
        except OSError:
            pass


@contextlib.contextmanager
def made_for_output(*paths) -> Iterator[list[Path]]:
    """The folders of `paths` (None skipped) that do not exist yet, removed again, if still empty, when the command
    ends with an error before writing there (a Ctrl-C is `interruptible`'s, through its `cleanup`)."""
    made = [folder for path in paths if path is not None for folder in missing_folders(path)]
    try:
        yield made
    except BaseException:
        remove_if_empty(made)
        raise


def abandon(made: list[Path]) -> None:
    """What a command interrupted by Ctrl-C leaves behind, removed: the temporary files of its writes in flight
    (records, figures and tables are renamed into place only when whole) and the folders made for it, if empty."""
    store = sys.modules.get("flows._store")  # not loaded: nothing was written
    if store is not None:
        store.discard_temporaries()
    remove_if_empty(made)


def figure_path(path) -> Path:
    """A figure path whose folder takes files and whose suffix matplotlib writes, or ValueError."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"the figure {path} is a folder")
    if path.suffix.lower() not in FIGURE_FORMATS:
        raise ValueError(f"the figure {path} needs one of the suffixes {', '.join(FIGURE_FORMATS)}")
    writable_folder(path.parent, "figure's folder")
    return path


def holds_a_run(folder: Path) -> bool:
    """Whether `folder` holds a saved run (`flows.Trajectory.save`): a `meta.json` that is a JSON object with a
    record's format and configuration, or, where a save was interrupted before its `meta.json`, an `arrays.npz`
    holding a trajectory's times, W and loss (only the archive's directory is read)."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
        if isinstance(meta, dict) and {"format", "config"} <= meta.keys():
            return True
    except (OSError, ValueError):
        pass
    try:
        import numpy as np

        with np.load(folder / "arrays.npz", allow_pickle=False) as arrays:
            return {"ts", "W", "loss"} <= set(arrays.files)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):  # none, not NumPy's, empty, a broken archive
        return False


def check_overwrites(out: Path, default_figure: bool) -> bool:
    """Whether `out` holds a run, which the new one replaces, its figure included; ValueError if saving a run into
    `out` would overwrite files that are not a run's: `out` may be new, hold a run or hold other files, but not an
    `arrays.npz`, a `meta.json` or, where the figure is drawn at its default `out/figure.png`, a `figure.png` of its
    own. A figure named with `--figure` is the user's choice of file."""
    if holds_a_run(out):
        return True
    written = ["arrays.npz", "meta.json"] + (["figure.png"] if default_figure else [])
    for name in written:
        if (out / name).exists():
            raise ValueError(
                f"the output folder {out} holds {name}, which is not a saved run's and which the run would "
                "overwrite: choose another --out"
            )
    return False


def cmd_run(args) -> int:
    registry = families()
    check_flags(args)
    with made_for_output(args.out, Path(args.figure).parent if args.figure else None) as made:
        out = writable_folder(args.out, "output folder")
        figure = figure_path(args.figure) if args.figure else out / "figure.png"
        replacing = check_overwrites(out, default_figure=args.figure is None)
        return interruptible(
            lambda: _run(args, registry, out, figure, made, replacing),
            lambda: f"before the run started; nothing was saved to {out}",
            cleanup=lambda: abandon(made),
        )


def _run(args, registry, out: Path, figure: Path, made: list[Path], replacing: bool) -> int:
    import flows

    problem, problem_config = make_problem(args)
    parameterization, penalty, dynamics = (family.build(args) for family in registry)
    flow = flows.Flow(
        problem,
        parameterization,
        penalty=penalty,
        strength=None if penalty is None else args.strength,
        dynamics=dynamics,
    )
    scale = None if args.init == "zero" else 1e-3 if args.scale is None else args.scale
    state0 = flow.init(scale=scale, kind=args.init, seed=args.seed)
    ts = flows.default_ts(args.t1, args.points)
    if args.step is not None:
        flow.dynamics.check_step(args.step)

        def compute():
            return flows.descend(flow, state0, step=args.step, t1=args.t1, ts=ts, progress=not args.quiet)

        what = "discrete run"
    else:
        solve = {name: getattr(args, name) for name in INTEGRATION if getattr(args, name) is not None}
        if "solver" in solve:
            solve["solver"] = None if solve["solver"] == "default" else flows.solver_by_name(solve["solver"])
        what = "solve"

        def compute():
            return flows.solve(flow, state0, t1=args.t1, ts=ts, progress=not args.quiet, **solve)

    extra = {
        "problem": {"kind": args.problem, **problem_config},
        "init": {"scale": scale, "kind": args.init, "seed": args.seed},
    }
    stage = {"now": "compute", "start": time.perf_counter()}

    def work():
        try:
            traj = compute()
        except flows.SolverError as err:
            if err.trajectory is None:
                raise
            traj = err.trajectory
        traj.config.update(extra)
        stage["now"] = "save"
        traj.save(out)
        if replacing:  # the replaced run's figure, drawn beside it, is not this run's
            (out / "figure.png").unlink(missing_ok=True)
        stage["now"] = "plot"
        # Made again if a run beside this one, refused or interrupted, removed it while it was empty.
        figure.parent.mkdir(parents=True, exist_ok=True)
        flows.plot_trajectory(traj, figure)
        return traj

    def describe():
        if stage["now"] == "compute":
            elapsed = time.perf_counter() - stage["start"]
            return f"the {what} had not finished after {elapsed:.0f} s; nothing was saved to {out}"
        if stage["now"] == "save":
            replaced = "" if out in made else " (a run saved there before may be incomplete now)"
            return f"while saving to {out}{replaced}; run the same command again"
        return f"the run is saved in {out}; its figure was not drawn (gradflow plot {out} --out {figure})"

    traj = interruptible(work, describe)
    if traj.stats.get("failed"):
        print(
            f"gradflow run: error: {traj.stats['failure'].rstrip('.')}. The run up to t = {traj.ts[-1]:.6g} is saved in {out} "
            f"(marked failed) and drawn in {figure}.",
            file=sys.stderr,
        )
        return 2
    print(json.dumps(summary(traj), indent=1, allow_nan=False))
    print("faithfulness:", json.dumps(_finite(traj.faithfulness()), indent=1, allow_nan=False))
    print(f"saved {out} and {figure}")
    return 0


def summary(traj) -> dict:
    """The run's end point as JSON numbers (null where a value is undefined, never NaN)."""
    values = {
        "t_final": traj.ts[-1],
        "loss": traj.loss[-1],
        "steps": traj.stats.get("num_steps"),
        "rejected": traj.stats.get("num_rejected_steps"),
        "vf_evaluations": traj.stats.get("vf_evaluations"),
        "effective_rank": traj.effective_rank[-1],
    }
    if traj.truth is not None:
        values["relative_error"] = traj.relative_error[-1]
    if "method" in traj.config:
        values.pop("rejected")
        values.pop("vf_evaluations")
    return _finite(values)


def _finite(value):
    """JSON-able with no NaN or infinity: those become None (null), nested dicts and lists alike."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    if not math.isfinite(number):
        return None
    return int(number) if isinstance(value, int) or (hasattr(value, "dtype") and value.dtype.kind in "iu") else number


# -- gradflow plot --------------------------------------------------------------------------------------------


def cmd_plot(args) -> int:
    import flows

    if args.labels is not None and len(args.labels) != len(args.runs):
        raise ValueError(f"--labels gives {len(args.labels)} entries for {len(args.runs)} runs")
    with made_for_output(Path(args.out).parent) as made:
        out = figure_path(args.out)
        runs = []
        for folder in args.runs:
            if not Path(folder).is_dir():
                raise ValueError(f"{folder} is not a saved run (no such folder)")
            try:
                runs.append(flows.Trajectory.load(folder))
            except flows.CorruptRecordError as err:
                raise ValueError(f"{folder} is not a readable saved run: {err}") from None
        interruptible(
            lambda: flows.plot_trajectory(runs, out, labels=args.labels, title=args.title),
            lambda: f"the figure {out} was not written",
            cleanup=lambda: abandon(made),
        )
    print(f"saved {out}")
    return 0


# -- gradflow check, gradflow reproduce -----------------------------------------------------------------------


def cmd_check(args) -> int:
    import flows
    from analysis import checks

    groups = list(checks.GROUPS) if args.only is None else args.only
    unknown = [g for g in groups if g not in checks.GROUPS]
    if unknown:
        raise ValueError(f"unknown check group {unknown[0]!r}; choose from {', '.join(checks.GROUPS)}")
    store = None
    if args.store is not None and "small_init" in groups:
        # Opened (its schema checked) before any group runs, not when the group that uses it comes.
        store = flows.open_store(writable_folder(args.store, "store") / "results")
    start = time.perf_counter()
    rows: list = []
    details: dict = {}
    seconds = {}
    done: list[str] = []

    def work():
        for name in groups:
            group_start = time.perf_counter()
            result = checks.GROUPS[name](store=store) if name == "small_init" else checks.GROUPS[name]()
            rows.extend(result.rows)
            details[name] = result.details
            seconds[name] = round(time.perf_counter() - group_start, 1)
            done.append(name)

    kept = f"; the small-init runs it finished are kept in {args.store}" if store is not None else ""
    interruptible(work, lambda: f"{len(done)} of {len(groups)} check groups had run{kept}")
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

    unknown = [name for name in args.only or [] if name not in experiments.EXPERIMENTS]
    if unknown:
        raise ValueError(f"unknown experiment {unknown[0]!r}; choose from {', '.join(experiments.EXPERIMENTS)}")
    if args.list:
        chosen = {name: e for name, e in experiments.EXPERIMENTS.items() if args.only is None or name in args.only}
        print(list_experiments(chosen, experiments.timings()))
        return 0
    with made_for_output(args.store, args.out) as made:
        return _reproduce(args, experiments, made)


def _reproduce(args, experiments, made: list[Path]) -> int:
    store = None if args.store is None else writable_folder(args.store, "store")
    out = None if args.out is None else writable_folder(args.out, "output folder")
    tally = experiments.Tally()
    declared = experiments.declared(args.only, quick=args.quick)

    def progress() -> str:
        return (
            f"{tally.done} runs computed and {tally.reused} reused are kept ({tally.settled} settled; the "
            f"experiments declare {declared} up front, and more from their results); run the same command to resume"
        )

    tally, seconds = interruptible(
        lambda: experiments.reproduce(
            args.only,
            quick=args.quick,
            store=store,
            out=out,
            progress=not args.quiet,
            executor=args.scheduler,
            fresh=args.fresh,
            tally=tally,
        ),
        progress,
        cleanup=lambda: abandon(made),
    )
    for note in tally.notes:
        print(f"resumed: {note}")
    if tally.findings:
        print(format_findings(tally.findings))
    folders = sorted({str(p.parent) for p in tally.figures + tally.generated})
    print(
        f"reproduce{' --quick' if args.quick else ''}: {tally.done} runs done, {tally.reused} reused, "
        f"{tally.failed} failed in {seconds:.0f} s; {len(tally.figures)} figure files and "
        f"{len(tally.generated)} LaTeX files written to {', '.join(folders) or 'nowhere'}; the report: {tally.report}"
    )
    return 1 if tally.failed else 0


def list_experiments(table: dict, timings: dict) -> str:
    """One line per experiment: its name, measured quick and full wall times, and what it does."""

    def seconds(name: str, scale: str) -> str:
        value = timings.get(name, {}).get(scale)
        return "--" if value is None else f"{value:.0f} s" if value < 120 else f"{value / 60:.0f} min"

    width = max(len(name) for name in table)
    lines = [f"{'experiment':{width}s}  {'quick':>7s}  {'full':>7s}  what it does"]
    lines += [
        f"{name:{width}s}  {seconds(name, 'quick'):>7s}  {seconds(name, 'full'):>7s}  {experiment.title}"
        for name, experiment in table.items()
    ]
    return "\n".join(lines) + "\n(times measured by the last reproduction that computed all of an experiment's runs)"


def format_findings(findings: list[dict]) -> str:
    """The verdicts, one line each, as plain text."""
    from experiments._report import plain

    def text(tex: str) -> str:
        return re.sub(r"<[^>]+>", "", html.unescape(plain(tex)))

    return "\n".join(
        ["findings:"]
        + [
            f"  [{f['experiment']}] {text(f['claim'])}: {f['verdict']}"
            + (f" ({text(f['number'])})" if f["number"] else "")
            for f in findings
        ]
    )


def program() -> int:
    """The `gradflow` program (its console script and `python -m gradflow`): `main` on the process's arguments. A
    Ctrl-C or SIGTERM after the command has finished, while the process exits, ends it with one line, and 130 (143)
    where the command succeeded, the command's own status where it failed."""
    status = main()
    end_quietly_once_finished(status)
    return status


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # Ctrl-C while the libraries load and the flags are checked: nothing has started.
    return interruptible(lambda: _dispatch(argv), lambda: "before anything was computed", cleanup=lambda: abandon([]))


def _dispatch(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (ValueError, OSError) as err:
        print(f"gradflow {args.command}: error: {err}", file=sys.stderr)
        return 2
    except MemoryError as err:
        print(f"gradflow {args.command}: error: out of memory ({err or 'an allocation failed'})", file=sys.stderr)
        return 2
    except RuntimeError as err:
        import flows

        if not isinstance(err, flows.SolverError):
            raise
        print(f"gradflow {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(program())
