r"""Claim 7: the ratio on each factor, $\sum_j R(W_j)$, against the ratio on the product $R(W)$.

Setting. The penalties experiment's completion problem and factored inits (`_completion.GRIDS`: the same n, rank, m,
seeds, the small Gaussian init of scale `_completion.INIT` per product) for $W = U V^T$ and $W = W_3 W_2 W_1$,
$L + \lambda R$ with the smoothed ratio of `_completion.RATIO`, $\lambda$ over `STRENGTHS` (four decades), and no
penalty for reference, under two dynamics: gradient flow to the penalties experiment's slow horizon, and the Adam
flow (`_completion.DYNAMICS["Adam"]`) to the fast one. And, under gradient flow, the ratio on each factor with
the smoothing `DELTAS` below the product's delta = 1, down to the exact ratio (delta = 0).

Solver. These flows are stiff (200 thousand Tsit5 steps covered less than a tenth of the horizon at n = 30; the
linearly implicit extrapolation serves only the data loss): `flows.Tsit5ThenChebyshev`, the stabilised explicit
switch, which integrates a penalised flow without linearising it. Its error control is absolute, `ATOL`, not
relative to each array's size: on each factor the penalty can drive the factors to zero exponentially, and an error
relative to a vanishing factor would hold the step at round-off scale until the factors underflow (the solve then
fails); W's entries are O(1) (the truth has $\|W^*\|_F = n$), so `ATOL` is small against them.

What to expect, derived. On a factor far below the smoothing scale, $\|W_j\|_F \ll \delta$, the smoothed ratio is
$R(W_j) \approx \|W_j\|_{*,\epsilon} / \delta$: a nuclear norm, which pulls every factor toward 0 at a rate of
order $\lambda$ (and $\lambda / \epsilon$ per singular value below $\epsilon$), while the data's pull on $W_1$ is
$W_2^T W_3^T P_\Omega(r)$, of the order of the other two factors' product (on $U$ of $U V^T$: $P_\Omega(r) V$, of
the order of one factor). From a small init the data's pull is the weaker one above a threshold strength, and
then $W = 0$, a critical point of every factored objective, attracts; the threshold is higher for $U V^T$, whose
data pull carries one small factor fewer. On the product the penalty's pull on each factor carries the same small
factors as the data's, so no such collapse.
The smoothing decides this. With $s = \sqrt{\|W\|_F^2 + \delta^2}$ and $N_\epsilon$ homogeneous of degree 1 (up
to $\epsilon$), the radial part of R's gradient is $\langle \nabla R(W), W \rangle = \|W\|_* \delta^2 / s^3$, so the
penalty alone shrinks a factor of norm x at the rate $\lambda \rho\, \delta^2 / (x^2 + \delta^2)^{3/2}$ (ρ the
factor's $\|\cdot\|_* / \|\cdot\|_F$): $\lambda \rho / \delta$ for $x \ll \delta$, $\lambda \rho \delta^2 / x^3$ for
$x \gg \delta$, largest at $\delta = \sqrt{2} x$, and zero at $\delta = 0$, where R is invariant to scale (Euler)
and cannot change $\|W_j\|_F$ at all: the collapse is a product of the smoothing. Against the factors' init norms
($x \approx$ scale $\sqrt{n}$: 0.17 for $U V^T$, 0.55 for depth 3 at n = 30), delta = 1 is above the peak for both;
delta = 0.1 is near it for $U V^T$ (1.3 times delta = 1's pull) and below it for depth 3 (a twelfth); delta = 0.01
is far below it for both (a fiftieth and a thousandth). Expected: the threshold stays or falls for $U V^T$ at
delta = 0.1 and rises for depth 3, and the collapse leaves the strengths' range as delta -> 0.

Adam flow. Its Jacobian is far from symmetric (with v frozen, the linearisation along a curvature h has the
eigenvalues $-a/2 \pm \sqrt{a^2/4 - a h / (\sqrt{v} + \epsilon)}$, oscillatory once $h / (\sqrt{v} + \epsilon)
> a / 4$), outside both the extrapolation's and the Chebyshev method's assumptions; Tsit5 integrates it, with the
same absolute `ATOL` (its factors collapse too), and its step count per unit time grows as the
flow slows into a sign-like regime (200 thousand steps reached t = 15-18 of the penalties grid's 30 on depth 3
with the ratio at lambda = 3; at the strengths here, up to 1, the runs to t = 10 took 1-35 thousand steps, and
at small strengths the best test errors were still falling at t = 10, hence the penalties grid's fast horizon).

Measured: best test error over time (Arora's mean squared error over all entries), its time, $\|W\|_F$ at the
horizon, per strength, both placements, against the nuclear minimiser.
"""

from __future__ import annotations

import diffrax
import numpy as np
import pandas as pd

import flows

from ._base import Experiment, Group, finite_mean, new_figure, tex_number, tex_spread
from ._completion import GRIDS, MAX_STEPS, RATIO, RTOL, SAVES, Grid, build, curve, nuclear_errors, verdict_same

STRENGTHS = (1e-3, 1e-2, 1e-1, 1.0)
"""Four decades of lambda; the penalties grid's own strength (3) behaves as 1 (measured at n = 15)."""
PARAMETERIZATIONS = {"UV^T": "UVT", "depth 3": "depth 3"}
"""The factored parameterizations (`_completion.PARAMETERIZATIONS`) and their value keys."""
PLACEMENTS = {"ratio": "on the product", "ratio on each factor": "on each factor"}
DYNAMICS = ("gradient flow", "Adam")
DELTAS = (0.1, 0.0)
"""The smoothing of the ratio on each factor below `_completion.RATIO`'s, under gradient flow: near the peak of the
pull for U V^T's factors, and none (the exact ratio; delta = 0.01 gave the same as 0 at n = 15)."""
DELTA = RATIO["delta"]
ATOL = 1e-10
"""The solver's absolute tolerance (see the module docstring), with the penalties experiment's rtol."""
COLLAPSED = 1e-6
r"""A run whose $\|W\|_F$ at the horizon is below this fraction of $\|W^*\|_F$ has collapsed to W = 0."""


def configs(grid: Grid, dynamics: str = "gradient flow") -> list[dict]:
    """Both placements at every strength, and no penalty, under `dynamics` with the ratio's own smoothing."""
    base = {"n": grid.n, "rank": grid.rank, "m": grid.m, "dynamics": dynamics}
    cells = [("none", None)] + [(p, s) for s in STRENGTHS for p in PLACEMENTS]
    return [
        {**base, "parameterization": param, "penalty": p, "strength": s, "seed": seed}
        for param in PARAMETERIZATIONS
        for p, s in cells
        for seed in range(grid.seeds)
    ]


def delta_configs(grid: Grid) -> list[dict]:
    """The ratio on each factor at every strength and smoothing of `DELTAS`, under gradient flow."""
    return [{**c, "delta": delta} for delta in DELTAS for c in configs(grid) if c["penalty"] == "ratio on each factor"]


def _tex_name(param: str) -> str:
    return param.replace("UV^T", "$UV^T$")


class Cells:
    """The finished runs by cell; a cell is None unless every seed finished (a failed seed is reported, not averaged
    away: an n/a in the tables, a gap in the figures)."""

    def __init__(self, results: pd.DataFrame, seeds: int):
        done = results[results["status"] != "failed"].copy()
        done["delta"] = done["delta"].fillna(DELTA) if "delta" in done else DELTA
        done["strength"] = done["strength"].astype(float)
        self.done, self.seeds = done, seeds

    def __call__(self, dynamics, param, pen, s, delta=DELTA) -> pd.DataFrame | None:
        d = self.done
        chosen = (d["dynamics"] == dynamics) & (d["parameterization"] == param) & (d["penalty"] == pen)
        chosen &= (d["delta"] == delta) & (d["strength"].isna() if s is None else d["strength"] == s)
        rows = d[chosen].sort_values("seed")
        return rows if len(rows) == self.seeds else None


def _mean_best(rows: pd.DataFrame | None) -> float:
    """The mean over seeds of the best test error over time; NaN for a missing cell."""
    return np.nan if rows is None else finite_mean([e.min() for e in rows["error"]])


class EachFactor(Experiment):
    name = "each_factor"
    title = (
        "claim 7: the ratio on each factor against the ratio on the product (U V^T and depth 3, gradient flow "
        "and Adam flow, the smoothing delta)"
    )

    def groups(self, quick):
        grid = GRIDS[quick]
        options = dict(rtol=RTOL, atol=ATOL, max_steps=MAX_STEPS)
        return [
            Group(
                "gradient flow",
                build,
                configs(grid) + delta_configs(grid),
                dict(t1=grid.slow, ts=flows.default_ts(grid.slow, SAVES), solver=flows.Tsit5ThenChebyshev(), **options),
            ),
            Group(
                "Adam flow",
                build,
                configs(grid, "Adam"),
                dict(t1=grid.fast, ts=flows.default_ts(grid.fast, SAVES), solver=diffrax.Tsit5(), **options),
            ),
        ]

    def measure(self, traj, config):
        return curve(traj, config)

    def report(self, ctx, results):
        grid = GRIDS[ctx.quick]
        nuclear_error = nuclear_errors(ctx, grid)
        nuclear_mean = finite_mean(list(nuclear_error.values()))
        cell = Cells(results, grid.seeds)
        # The factors' norms at init (mean over factors and seeds), against which the smoothing delta is set.
        init_norms = {
            param: finite_mean(
                [
                    np.linalg.norm(np.asarray(factor))
                    for c in configs(grid)
                    if c["parameterization"] == param and c["penalty"] == "none"
                    for factor in build(c)[1]
                ]
            )
            for param in PARAMETERIZATIONS
        }
        self._figure(ctx, cell, nuclear_error, nuclear_mean)
        self._figure_adam_delta(ctx, grid, cell, nuclear_mean)
        self._outputs(ctx, grid, cell, nuclear_mean, int((results["status"] == "failed").sum()), init_norms)

    @staticmethod
    def _figure(ctx, cell, nuclear_error, nuclear_mean) -> None:
        fig, axes = new_figure(3, width=3.2, height=3.5)
        shades = dict(zip(STRENGTHS, ("C0", "C2", "C1", "C3")))
        d = cell.done
        shown = d[
            (d["dynamics"] == "gradient flow")
            & (d["delta"] == DELTA)
            & (d["parameterization"] == "depth 3")
            & (d["seed"] == 0)
        ]
        for _, c in shown.iterrows():
            pen, s = c["penalty"], c["strength"]
            style = (
                dict(color="k", ls="-", label="no penalty")
                if pen == "none"
                else dict(
                    color=shades[s], ls="-" if pen == "ratio" else "--", label=rf"{PLACEMENTS[pen]}, $\lambda$ = {s:g}"
                )
            )
            axes[0].plot(c["t"][1:], c["error"][1:], **style)
            axes[1].plot(c["t"][1:], c["norm"][1:], **style)
        axes[0].axhline(nuclear_error[0], color="0.5", ls=":", label="nuclear minimiser")
        axes[0].set(xscale="log", yscale="log", xlabel="time $t$", ylabel="test error", title="depth 3, seed 0")
        # Collapsed runs fall to 1e-70 and below: the axis stops at 1e-10 (below it, W = 0 to the tolerance).
        axes[1].set(
            xscale="log",
            yscale="log",
            xlabel="time $t$",
            ylabel=r"$\|W\|_F$",
            title="depth 3, seed 0",
            ylim=(1e-10, None),
        )
        _best_against_strength(axes[2], cell, "gradient flow")
        axes[2].axhline(nuclear_mean, color="0.5", ls=":")
        axes[2].set(title="both, mean over seeds")
        handles, labels = axes[0].get_legend_handles_labels()
        right = axes[2].get_legend_handles_labels()
        fig.legend(handles + right[0], labels + right[1], loc="outside lower center", ncols=4, fontsize="x-small")
        ctx.figure(fig, "each_factor")

    @staticmethod
    def _figure_adam_delta(ctx, grid, cell, nuclear_mean) -> None:
        fig, axes = new_figure(3, width=3.2, height=3.6)
        _best_against_strength(axes[0], cell, "Adam")
        axes[0].axhline(nuclear_mean, color="0.5", ls=":", label="nuclear minimiser")
        axes[0].set(title="Adam flow, mean over seeds")
        floor = 1e-12  # collapsed runs end near 1e-60: drawn at the floor
        # Thinner lines and smaller markers for smaller delta, so that coinciding curves all show.
        smoothings = zip((DELTA, *DELTAS), ("C3", "C1", "C0"), (2.4, 1.6, 0.8), strict=True)
        for delta, colour, width in smoothings:
            for param, marker in (("depth 3", "-o"), ("UV^T", "--s")):
                cells = [cell("gradient flow", param, "ratio on each factor", s, delta) for s in STRENGTHS]
                style = dict(
                    color=colour,
                    lw=width,
                    ms=2 + 2 * width,
                    label=rf"{_tex_name(param)}, each factor, $\delta$ = {delta:g}",
                )
                axes[1].plot(STRENGTHS, [_mean_best(rows) for rows in cells], marker, **style)
                axes[2].plot(
                    STRENGTHS,
                    [
                        np.nan if rows is None else finite_mean([max(n[-1], floor) for n in rows["norm"]])
                        for rows in cells
                    ],
                    marker,
                    **style,
                )
        axes[1].axhline(nuclear_mean, color="0.5", ls=":")
        labels = (
            ("best test error (mean over seeds)", r"gradient flow, smoothing $\delta$"),
            (rf"$\|W\|_F$ at $t = {grid.slow:g}$ (floor {floor:g})", r"collapse: $W \to 0$"),
        )
        for ax, (ylabel, title) in zip(axes[1:], labels):
            ax.set(xscale="log", yscale="log", xlabel=r"strength $\lambda$", ylabel=ylabel, title=title)
        left, right = axes[0].get_legend_handles_labels(), axes[2].get_legend_handles_labels()
        fig.legend(left[0] + right[0], left[1] + right[1], loc="outside lower center", ncols=4, fontsize="x-small")
        ctx.figure(fig, "each_factor-adam-delta")

    def _outputs(self, ctx, grid, cell, nuclear_mean, failed, init_norms) -> None:
        def collapsed(rows):
            return all(n[-1] < COLLAPSED * grid.n for n in rows["norm"])

        def spread(rows, of):
            return f"${tex_spread([of(c) for _, c in rows.iterrows()])}$"

        table = []
        for dynamics in DYNAMICS:
            for param in PARAMETERIZATIONS:
                for pen, s in [("none", None)] + [(p, s) for s in STRENGTHS for p in PLACEMENTS]:
                    rows = cell(dynamics, param, pen, s)
                    name = "no penalty" if pen == "none" else rf"{PLACEMENTS[pen]}, $\lambda = {tex_number(s)}$"
                    name = [dynamics, f"{_tex_name(param)}, {name}"]
                    if rows is None:
                        table.append(name + ["n/a"] * 4)
                        continue
                    table.append(
                        name
                        + [
                            spread(rows, lambda c: c["error"].min()),
                            spread(rows, lambda c: c["t"][np.argmin(c["error"])]),
                            spread(rows, lambda c: c["norm"][-1]),
                            spread(rows, lambda c: c["steps"]),
                        ]
                    )
        ctx.table(
            self.name,
            "grid",
            "llllll",
            ["dynamics", "penalty", "best test error", "at time", r"$\|W\|_F$ at the end", "steps"],
            table,
        )

        smoothing = []
        for param in PARAMETERIZATIONS:
            for delta in (DELTA, *DELTAS):
                row = [_tex_name(param), f"${tex_number(delta)}$"]
                for s in STRENGTHS:
                    rows = cell("gradient flow", param, "ratio on each factor", s, delta)
                    row.append(
                        "n/a"
                        if rows is None
                        else "collapses"
                        if collapsed(rows)
                        else spread(rows, lambda c: c["error"].min())
                    )
                smoothing.append(row)
        ctx.table(
            self.name,
            "delta",
            "ll" + "l" * len(STRENGTHS),
            ["", r"$\delta$", *(rf"$\lambda = {tex_number(s)}$" for s in STRENGTHS)],
            smoothing,
        )

        # Penalised Adam-flow runs whose best test error is at their last save (the horizon).
        d = cell.done
        adam_runs = d[(d["dynamics"] == "Adam") & (d["penalty"] != "none")]
        adam_at_horizon = sum(int(np.argmin(e)) == len(e) - 1 for e in adam_runs["error"])
        values = {
            "strengths": ", ".join(tex_number(s) for s in STRENGTHS),
            "atol": tex_number(ATOL),
            "strength count": str(len(STRENGTHS)),
            "seeds": str(grid.seeds),
            "n": str(grid.n),
            "horizon": tex_number(grid.slow),
            "failed": str(failed),
            "nuclear": tex_number(nuclear_mean),
            "Adam/horizon": tex_number(grid.fast),
            "Adam/at horizon": str(adam_at_horizon),
            "Adam/runs": str(len(adam_runs)),
            "deltas": ", ".join(tex_number(d) for d in DELTAS),
        }

        def best_over_strengths(dynamics, param, pen, delta=DELTA):
            means = {
                s: _mean_best(cell(dynamics, param, pen, s, delta))
                for s in STRENGTHS
                if cell(dynamics, param, pen, s, delta) is not None
            }
            return min(means.items(), key=lambda kv: kv[1]) if means else (None, np.nan)

        def collapse_values(key, dynamics, param, delta=DELTA):
            """Where each factor collapses: "n/a" unless every strength's cell finished (a missing cell is not "no
            collapse"), else from which strength, and at how many."""
            cells = [cell(dynamics, param, "ratio on each factor", s, delta) for s in STRENGTHS]
            if any(rows is None for rows in cells):
                return {f"{key}/collapses": "n/a (a strength's cell has a failed run)", f"{key}/collapse count": "n/a"}
            collapse = [s for s, rows in zip(STRENGTHS, cells) if collapsed(rows)]
            phrase = rf"from $\lambda = {tex_number(min(collapse))}$" if collapse else "at none of the strengths"
            return {f"{key}/collapses": phrase, f"{key}/collapse count": str(len(collapse))}

        for dynamics in DYNAMICS:
            for param, pkey in PARAMETERIZATIONS.items():
                each_strength, each_best = best_over_strengths(dynamics, param, "ratio on each factor")
                product_strength, product_best = best_over_strengths(dynamics, param, "ratio")
                none = cell(dynamics, param, "none", None)
                key = f"{dynamics}/{pkey}"
                if dynamics == "gradient flow":
                    values[f"{pkey}/init norm"] = tex_number(init_norms[param])
                verdict = verdict_same(each_best, product_best)
                values |= {
                    f"{key}/none": tex_number(_mean_best(none)) if none is not None else "n/a",
                    f"{key}/best each": tex_number(each_best),
                    f"{key}/best each strength": tex_number(each_strength or np.nan),
                    f"{key}/best product": tex_number(product_best),
                    f"{key}/best product strength": tex_number(product_strength or np.nan),
                    f"{key}/verdict": verdict,
                    **collapse_values(key, dynamics, param),
                }
                ctx.finding(
                    f"claim 7 ({param}, {dynamics}): the ratio on each factor against on the product",
                    f"each factor {verdict}",
                    f"{values[key + '/best each']} against {values[key + '/best product']}",
                )
        for param, pkey in PARAMETERIZATIONS.items():
            for delta in DELTAS:
                each_strength, each_best = best_over_strengths("gradient flow", param, "ratio on each factor", delta)
                key = f"delta {delta:g}/{pkey}"
                values |= {
                    f"{key}/best each": tex_number(each_best),
                    f"{key}/best each strength": tex_number(each_strength or np.nan),
                    **collapse_values(key, "gradient flow", param, delta),
                }
        ctx.values(self.name, values)


def _best_against_strength(ax, cell, dynamics) -> None:
    """Best test error (mean over seeds) against lambda, both placements and factorizations, and no penalty."""
    for param, colour in (("depth 3", "0.25"), ("UV^T", "C5")):
        name = _tex_name(param)
        for pen, marker in (("ratio", "-o"), ("ratio on each factor", "--s")):
            best = [_mean_best(cell(dynamics, param, pen, s)) for s in STRENGTHS]
            ax.plot(STRENGTHS, best, marker, color=colour, label=f"{name}, {PLACEMENTS[pen]}")
        none = _mean_best(cell(dynamics, param, "none", None))
        ax.axhline(none, color=colour, lw=0.8, label=f"{name}, no penalty")
    ax.set(xscale="log", yscale="log", xlabel=r"strength $\lambda$", ylabel="best test error (mean over seeds)")
