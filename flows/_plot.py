"""Figures of trajectories: one run, or several overlaid on shared axes (a flow and its discrete steps).

Four panels against time on a log axis (t = 0 left out): the data loss (with the penalty's term and the
objective when the run is penalised), the leading singular values of W (the truth's dashed), the effective
rank, and the error to the truth. The title is the configuration the runs share, read from their saved
`config`; each overlaid run is labelled by what sets it apart. Legends sit outside the axes.
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import NullFormatter, ScalarFormatter

from ._dynamics import DYNAMICS, GradientFlow
from ._flow import _member
from ._parameterizations import PARAMETERIZATIONS
from ._penalties import PENALTIES
from ._store import write_figure
from ._trajectory import Trajectory

TINY = np.finfo(float).tiny


def plot_trajectory(
    traj: Trajectory | Sequence[Trajectory],
    path: str | os.PathLike | None = None,
    *,
    labels: Sequence[str] | None = None,
    title: str | None = None,
    max_singular_values: int = 10,
) -> Figure:
    """Draw one trajectory, or overlay several on shared axes; saved to `path` if given.

    Args:
        traj: a `Trajectory` or a sequence of them (e.g. `flows.solve`'s and `flows.descend`'s at
            several steps, from one initial state).
        path: where to save the figure (its suffix picks the format: .png, .pdf, .svg).
        labels: one legend entry per trajectory; default: the parts of each run's configuration that
            differ between the runs (the method: the flow's solver or the step size, the dynamics, ...).
        title: default: the configuration the runs share (problem, parameterization, initialization,
            objective, dynamics, method), from their `config`.
        max_singular_values: how many of the leading singular values of W to draw per run.
    """
    runs = [traj] if isinstance(traj, Trajectory) else list(traj)
    if not runs or not all(isinstance(r, Trajectory) for r in runs):
        raise ValueError("plot_trajectory takes a flows.Trajectory or a non-empty sequence of them")
    if labels is not None and len(labels) != len(runs):
        raise ValueError(f"labels must give one entry per trajectory: {len(runs)}, got {len(labels)}")
    aspects = [describe_run(r) for r in runs]
    shared = {k: v for k, v in aspects[0].items() if all(a.get(k) == v for a in aspects)}
    if labels is None and len(runs) > 1:
        labels = [
            ", ".join(v for k, v in a.items() if k not in shared) or f"run {i + 1}" for i, a in enumerate(aspects)
        ]
    title = _lines(list(shared.values())) if title is None else title
    overlay = len(runs) > 1
    colours = [f"C{i % 10}" for i in range(len(runs))]
    # Overlaid runs that agree would hide each other: each is drawn thinner than the one before, on top of it.
    widths = np.linspace(2.8, 1.0, len(runs)) if overlay else [1.4]

    # Runs of one truth share its dashed lines (grey); runs of different truths each get their own, in their colour.
    references = [(r.truth, c) for r, c in zip(runs, colours) if r.truth is not None]
    shared_truth = all(np.array_equal(other, references[0][0]) for other, _ in references)
    references = [(references[0][0], "0.45")] if references and shared_truth else references
    dashed = "" if not references else " (dashed: truth)" if shared_truth else " (dashed: each run's truth)"
    fig = Figure(figsize=(11, 7.6 if overlay else 7.2), layout="constrained")
    (loss_ax, sv_ax), (rank_ax, error_ax) = fig.subplots(2, 2, sharex=True)

    penalised = False
    for run, colour, lw in zip(runs, colours, widths):
        t, keep = _times(run)
        colour = colour if overlay else "k"
        loss_ax.loglog(t, np.maximum(run.loss[keep], TINY), color=colour, lw=lw)
        penalty = penalty_values(run)
        if penalty is not None:
            penalised = True
            loss_ax.loglog(t, np.maximum(penalty[keep], TINY), color=colour, lw=lw, ls="--")
            loss_ax.loglog(t, run.loss[keep] + penalty[keep], color=colour, lw=lw, ls=":")
        _mark_failure(loss_ax, run, colour if overlay else "C3")
    loss_ax.set(ylabel=r"$\frac{1}{2}\|\mathcal{A}(W) - y\|^2$", title="loss")
    if penalised:
        loss_ax.set(title="loss, penalty and objective", ylabel="value")
        styles = [("-", r"data loss $L$"), ("--", r"penalty $\lambda R$"), (":", r"objective $L + \lambda R$")]
        handles = [Line2D([], [], color="k", ls=ls, label=text) for ls, text in styles]
        loss_ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1), borderaxespad=0)

    k = min(max_singular_values, min(runs[0].W.shape[1:]))
    shades = _shades(k)
    for run, colour, lw in zip(runs, colours, widths):
        t, keep = _times(run)
        sv = run.singular_values[keep][:, :k]
        for j in range(sv.shape[1]):
            sv_ax.loglog(
                t,
                np.maximum(sv[:, j], TINY),
                color=colour if overlay else shades[j],
                lw=0.6 * lw if overlay else lw,
                label=None if overlay else rf"$\sigma_{{{j + 1}}}$",
            )
    for reference, colour in references:
        for s in np.linalg.svd(reference, compute_uv=False)[:k]:
            if s > 1e-12 * np.abs(reference).max():
                sv_ax.axhline(s, color=colour, lw=0.8, ls="--")
    sv_ax.set(ylabel="singular values of W", title=f"leading {k} singular values{dashed}")
    if not overlay:
        sv_ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), borderaxespad=0, ncols=1 + (k > 10))

    for run, colour, lw in zip(runs, colours, widths):
        t, keep = _times(run)
        rank_ax.semilogx(t, run.effective_rank[keep], color=colour if overlay else "C0", lw=lw)
    for reference, colour in references:
        rank = Trajectory(ts=np.zeros(1), states=None, W=reference[None], loss=np.zeros(1)).effective_rank[0]
        rank_ax.axhline(rank, color=colour, lw=0.8, ls="--")
    rank_ax.set(xlabel="time t", ylabel="effective rank", title=f"effective rank{dashed}")

    if not references:
        error_ax.text(0.5, 0.5, "no ground truth", ha="center", va="center", transform=error_ax.transAxes)
        error_ax.set(xlabel="time t", title="error to the truth")
    else:
        for run, colour, lw in zip(runs, colours, widths):
            if run.truth is not None:
                t, keep = _times(run)
                error_ax.loglog(t, run.relative_error[keep], color=colour if overlay else "C3", lw=lw)
        error_ax.set(xlabel="time t", ylabel=r"$\|W - W^*\|_F / \|W^*\|_F$", title="error to the truth")
    for ax in (loss_ax, sv_ax, rank_ax, error_ax):
        ax.grid(True, which="major", alpha=0.3)
    _readable_within_a_decade(fig.axes)

    if overlay and labels is not None:  # labels are set above whenever runs overlay
        # Long labels (runs that differ in several ways) one per row, wrapped to the figure's width, not clipped.
        long = max(len(label) for label in labels) > 40
        handles = [
            Line2D([], [], color=c, lw=lw, label=textwrap.fill(label, 110) if long else label)
            for c, lw, label in zip(colours, widths, labels)
        ]
        fig.legend(handles=handles, loc="outside lower center", ncols=1 if long else min(len(runs), 3), frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    if path is not None:
        write_figure(fig, path, dpi=130)
    return fig


def _readable_within_a_decade(axes) -> None:
    """Log axes that span a decade or two at most (a run that failed early, a loss that barely moved) label their
    minor ticks, which run into each other on the time axis and repeat one value on the others: the time axis keeps
    its decade labels only, and a value axis within a decade turns linear with an offset, so that its labels
    differ."""
    for ax in axes:
        left, right = ax.get_xlim()
        if ax.get_xscale() == "log" and right < 100 * left:
            ax.xaxis.set_minor_formatter(NullFormatter())
        low, high = ax.get_ylim()
        if ax.get_yscale() == "log" and 0 < low and high < 10 * low:  # no quotient: low may be subnormal
            ax.set_yscale("linear")
            ax.yaxis.set_major_formatter(ScalarFormatter(useOffset=True))


def describe_run(traj: Trajectory) -> dict[str, str]:
    """A run's configuration as short texts by aspect: problem (its saved description, else the matrix's shape),
    parameterization, init, objective, dynamics, method (the flow's solver and rtol, or the discrete step), and
    its failure where it failed."""
    config, stats = traj.config, traj.stats
    flow = config.get("flow") or {}
    aspects: dict[str, str] = {}
    problem = config.get("problem")
    if not problem:
        aspects["problem"] = f"{traj.W.shape[1]} x {traj.W.shape[2]} W" + (
            "" if traj.truth is None else " with a truth"
        )
    else:
        rest = {k: v for k, v in problem.items() if k not in ("kind", "symmetric")}
        symmetry = "" if problem.get("symmetric", True) else " asymmetric"
        aspects["problem"] = f"{problem.get('kind', 'problem')}{symmetry} " + " ".join(
            f"{k}={_value(v)}" for k, v in rest.items() if v is not None
        )
    if flow.get("parameterization"):
        aspects["parameterization"] = member_text(flow["parameterization"])
    init = config.get("init")
    if init:
        scale = "" if init.get("scale") is None else f" scale {_value(init['scale'])}"
        aspects["init"] = f"{init.get('kind', '')} init{scale}"
    if "parameterization" in flow:
        penalty = flow.get("penalty")
        aspects["objective"] = (
            "objective L" if not penalty else f"objective L + {_value(flow.get('strength'))} {member_text(penalty)}"
        )
        aspects["dynamics"] = member_text(flow.get("dynamics") or {"name": "GradientFlow"})
    elif flow.get("flow"):
        aspects["flow"] = flow["flow"]
    if config.get("method") == "descend":
        aspects["method"] = f"discrete steps of {_value(config['step'])}"
    elif config.get("solver"):
        aspects["method"] = f"flow ({config['solver']}, rtol {_value(config.get('rtol'))})"
    if stats.get("failed"):
        aspects["failed"] = f"failed at t = {_value(stats.get('t_final'))}"
    return aspects


def member_text(description: dict[str, Any]) -> str:
    """A family member's description as its constructor call, e.g. "Deep(depth=3)" (None arguments left out)."""
    arguments = []
    for key, value in description.items():
        if key == "name" or value is None:
            continue
        arguments.append(member_text(value) if isinstance(value, dict) else f"{key}={_value(value)}")
    return f"{description['name']}({', '.join(arguments)})" if arguments else str(description["name"])


def penalty_values(traj: Trajectory) -> np.ndarray | None:
    r"""$\lambda R(\theta(t))$ at the saved states of a penalised run, from its saved flow description; None for a
    run without a penalty (or whose members are not in the registries)."""
    flow = traj.config.get("flow") or {}
    if not flow.get("penalty") or flow.get("strength") is None:
        return None
    try:
        penalty = _member("penalty", PENALTIES, flow["penalty"])
        parameterization = _member("parameterization", PARAMETERIZATIONS, flow["parameterization"])
        dynamics = _member("dynamics", DYNAMICS, flow["dynamics"]) if flow.get("dynamics") else GradientFlow()
    except ValueError:
        return None
    values = jax.jit(jax.vmap(lambda state: penalty.value(parameterization, dynamics.params(state))))(traj.states)
    return flow["strength"] * np.asarray(values)


def _lines(parts: list[str], width: int = 110) -> str:
    """The parts joined by commas, broken into lines between parts (a part longer than a line gets its own)."""
    lines = [""]
    for part in parts:
        if lines[-1] and len(lines[-1]) + len(part) + 2 > width:
            lines[-1] += ","
            lines.append(part)
        else:
            lines[-1] += f", {part}" if lines[-1] else part
    return "\n".join(lines)


def _times(run: Trajectory) -> tuple[np.ndarray, np.ndarray]:
    keep = run.ts > 0
    return run.ts[keep], keep


def _mark_failure(ax, run: Trajectory, colour: str) -> None:
    if run.stats.get("failed") and len(run.ts) and run.ts[-1] > 0:
        ax.axvline(run.ts[-1], color=colour, lw=0.8, ls="-.")
        ax.annotate(
            "failed",
            (run.ts[-1], 1),
            xycoords=("data", "axes fraction"),
            color=colour,
            fontsize=7,
            ha="right",
            va="top",
        )


def _shades(k: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    return [cmap(0.9 * j / max(k - 1, 1)) for j in range(k)]


def _value(value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)
