"""Every figure and table of the paper, declared once; `gradflow reproduce` runs them.

    gradflow reproduce --quick            # the small grids, minutes on two cores: runs/quick/{figures,generated}
    gradflow reproduce                    # the paper's scale: figures/ and paper/generated/
    gradflow reproduce --only depth --list

Each experiment (a module here) declares its runs, what it measures of each and its report (`_base.Experiment`).
Runs live in one keyed store (`runs/` by default, `runs/quick/` for --quick), shared by every experiment that
declares the same run, so an interrupted reproduction resumes and recomputes nothing finished. Experiments share
settings through the private modules (`_*.py`), never by importing each other.
"""

from __future__ import annotations

import time
from pathlib import Path

import matplotlib.style

import flows

from . import completion
from ._base import STYLE, Context, Experiment, Tally, record_timing, timings
from ._report import write_report
from .closed_forms import ClosedForms
from .depth import Depth
from .finite_steps import FiniteSteps
from .flatness import Flatness
from .norms import Norms
from .performance import Performance
from .small_init import SmallInit
from .span import Span
from .steps import Steps

EXPERIMENTS: dict[str, Experiment] = {
    e.name: e
    for e in (
        *completion.EXPERIMENTS,
        Steps(),
        Span(),
        Norms(),
        Depth(),
        ClosedForms(),
        FiniteSteps(),
        SmallInit(),
        Flatness(),
        Performance(),
    )
}
"""The experiments by name, in the paper's order."""


def reproduce(
    names: list[str] | None = None,
    *,
    quick: bool = False,
    store: Path | None = None,
    out: Path | None = None,
    progress: bool = True,
    executor=None,
    fresh: bool = False,
    tally: Tally | None = None,
) -> tuple[Tally, float]:
    """Run the named experiments (all by default); returns the tally of runs and outputs and the wall time.

    Full scale writes figures/ and paper/generated/ (committed) and runs/report.html; quick writes
    runs/quick/figures, runs/quick/generated and runs/quick/report.html, or OUT/figures, OUT/generated and
    OUT/report.html with `out`. The report is one self-contained page of every figure, table and verdict written.
    `fresh` computes every run, reference and measurement again (each once). `tally` is filled as runs settle (pass
    one to watch a reproduction's progress from another thread). An experiment that fails (a ValueError or a
    `flows.SolverError`) leaves the others to run; the reproduction then ends with a ValueError naming each that failed.
    """
    names = list(EXPERIMENTS) if names is None else names
    unknown = [n for n in names if n not in EXPERIMENTS]
    if unknown:
        raise ValueError(f"unknown experiment {unknown[0]!r}; choose from {', '.join(EXPERIMENTS)}")
    if out is None:
        figures, generated = (
            (Path("runs/quick/figures"), Path("runs/quick/generated"))
            if quick
            else (Path("figures"), Path("paper/generated"))
        )
        report = Path("runs/quick/report.html" if quick else "runs/report.html")
    else:
        figures, generated, report = Path(out) / "figures", Path(out) / "generated", Path(out) / "report.html"
    canonical = out is None and store is None  # the reproduction whose timings are kept
    store = Path("runs/quick" if quick else "runs") if store is None else Path(store)
    ctx = Context(
        quick=quick,
        store=store,
        figures=figures,
        generated=generated,
        progress=progress,
        executor=executor,
        fresh=fresh,
        tally=Tally() if tally is None else tally,
    )
    start = time.perf_counter()
    broken = []  # an experiment that fails leaves the others to finish; the error names every one that failed
    with matplotlib.style.context(STYLE):
        for i, name in enumerate(names, 1):
            ctx.experiment, ctx.position = name, f"{i}/{len(names)}"
            reused, began = ctx.tally.reused, time.perf_counter()
            try:
                EXPERIMENTS[name].run(ctx)
            except OSError as err:  # the store or an output folder: every later experiment would fail alike
                raise ValueError(f"experiment {name}: {err}") from err
            except (ValueError, flows.SolverError) as err:
                broken.append(f"experiment {name}: {err}")
                continue
            if canonical and ctx.tally.reused == reused:  # nothing reused: a cold measurement of its cost
                record_timing(name, quick, time.perf_counter() - began)
    seconds = time.perf_counter() - start
    scale = "quick" if quick else "full-scale"
    write_report(ctx.tally, report, title=f"gradflow: a {scale} reproduction ({', '.join(names)})", seconds=seconds)
    ctx.tally.report = report
    if broken:
        finished = len(names) - len(broken)
        raise ValueError(
            "; ".join(broken)
            + f" ({finished} of {len(names)} experiments finished and wrote their outputs; the report: {report})"
        )
    return ctx.tally, seconds


def declared(names: list[str] | None = None, *, quick: bool = False) -> int:
    """How many runs the named experiments declare up front (their `groups`; runs declared from others' results come
    on top)."""
    names = list(EXPERIMENTS) if names is None else names
    return sum(len(group.configs) for name in names if name in EXPERIMENTS for group in EXPERIMENTS[name].groups(quick))


__all__ = ["EXPERIMENTS", "Context", "Experiment", "Tally", "declared", "reproduce", "timings"]
