"""Every figure and table of the paper, declared once; `gradflow reproduce` runs them.

    gradflow reproduce --quick            # the small grids, minutes on two cores: runs/quick/{figures,generated}
    gradflow reproduce                    # the paper's scale: figures/ and paper/generated/
    gradflow reproduce --only depth --list

Each experiment (a module here) sweeps its grid of runs into a keyed store (`runs/` by default), so an
interrupted reproduction resumes and recomputes nothing finished, then draws its figures and writes its
numbers as LaTeX macros and tables.
"""

from __future__ import annotations

import time
from pathlib import Path

import matplotlib.style

from . import penalties
from ._base import STYLE, Context, Experiment, Tally
from .adam_steps import AdamSteps
from .closed_forms import ClosedForms
from .denominator import Denominator
from .depth import Depth
from .each_factor import EachFactor
from .finite_steps import FiniteSteps
from .flatness import Flatness
from .norms import Norms
from .performance import Performance
from .small_init import SmallInit
from .span import Span

EXPERIMENTS: dict[str, Experiment] = {
    e.name: e
    for e in (
        ClosedForms(),
        SmallInit(),
        Depth(),
        Norms(),
        FiniteSteps(),
        Flatness(),
        penalties.EXPERIMENT,
        Span(),
        AdamSteps(),
        penalties.ARORA_EXPERIMENT,
        penalties.ARORA_MID_EXPERIMENT,
        penalties.ARORA_FEW_EXPERIMENT,
        Denominator(),
        EachFactor(),
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
) -> tuple[Tally, float]:
    """Run the named experiments (all by default); returns the tally of runs and outputs and the wall time.

    Full scale writes figures/ and paper/generated/ (committed); quick writes runs/quick/figures and
    runs/quick/generated, or OUT/figures and OUT/generated with `out`.
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
    else:
        figures, generated = Path(out) / "figures", Path(out) / "generated"
    store = Path("runs/quick" if quick else "runs") if store is None else Path(store)
    ctx = Context(quick=quick, store=store, figures=figures, generated=generated, progress=progress, executor=executor)
    start = time.perf_counter()
    with matplotlib.style.context(STYLE):
        for name in names:
            EXPERIMENTS[name].run(ctx)
    return ctx.tally, time.perf_counter() - start


__all__ = ["EXPERIMENTS", "Context", "Experiment", "Tally", "reproduce"]
