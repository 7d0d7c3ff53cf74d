r"""Claim 7 (seed 004): the ratio on each factor, $\sum_j R(W_j)$, against the ratio on the product $R(W)$.

Setting. The penalties experiment's completion problem and factored inits (`penalties.GRIDS`: the same n, rank, m,
seeds, the small Gaussian init of scale `penalties.INIT` per product) for $W = U V^T$ and $W = W_3 W_2 W_1$,
gradient flow of $L + \lambda R$ with the smoothed ratio of `penalties.RATIO`, $\lambda$ over `STRENGTHS` (four
decades), and no penalty for reference, to the penalties experiment's slow horizon.

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
Measured: best test error over time (Arora's mean squared error over all entries), its time, $\|W\|_F$ at the
horizon, per strength, both placements, against the nuclear minimiser.
"""

from __future__ import annotations

import numpy as np

import flows
from . import penalties
from ._base import Context, Experiment, finite_mean, new_figure, test_error, tex_number, tex_spread

STRENGTHS = (1e-3, 1e-2, 1e-1, 1.0)
"""Four decades of lambda; the penalties grid's own strength (3) behaves as 1 (measured at n = 15)."""
PARAMETERIZATIONS = {"UV^T": "Factored", "depth 3": ""}
"""The factored parameterizations (`penalties.PARAMETERIZATIONS`) and their macros' infix (depth 3: none)."""
PLACEMENTS = {"ratio": "on the product", "ratio on each factor": "on each factor"}
ATOL = 1e-10
"""The solver's absolute tolerance (see the module docstring), with the penalties experiment's rtol."""
COLLAPSED = 1e-6
r"""A run whose $\|W\|_F$ at the horizon is below this fraction of $\|W^*\|_F$ has collapsed to W = 0."""


def _configs(grid: penalties.Grid) -> list[dict]:
    base = {"n": grid.n, "rank": grid.rank, "m": grid.m, "dynamics": "gradient flow"}
    cells = [("none", None)] + [(p, s) for s in STRENGTHS for p in PLACEMENTS]
    return [{**base, "parameterization": param, "penalty": p, "strength": s, "seed": seed}
            for param in PARAMETERIZATIONS for p, s in cells for seed in range(grid.seeds)]


class EachFactor(Experiment):
    name = "each_factor"
    title = "claim 7: the ratio on each factor against the ratio on the product (U V^T and depth 3, gradient flow)"

    def run(self, ctx: Context) -> None:
        grid = penalties.GRIDS[ctx.quick]
        configs = _configs(grid)
        nuclear_error = penalties.nuclear_errors(ctx, grid)  # the penalties experiment's cached references
        runs = ctx.sweep(self.name, penalties.build, configs, t1=grid.slow, ts=flows.default_ts(grid.slow, penalties.SAVES),
                         rtol=penalties.RTOL, atol=ATOL, solver=flows.Tsit5ThenChebyshev(), max_steps=penalties.MAX_STEPS)
        curves, failed = {}, []
        for run in runs:
            c = run.config
            key = (c["parameterization"], c["penalty"], c["strength"], c["seed"])
            if run.status == "failed":
                failed.append(key)
                continue
            traj = run.load()
            curves[key] = {"t": np.asarray(traj.ts), "error": test_error(traj.W, traj.truth),
                           "norm": np.linalg.norm(np.asarray(traj.W), axis=(1, 2)), "steps": traj.stats["num_steps"]}
        self._figure(ctx, curves, nuclear_error)
        self._outputs(ctx, grid, curves, nuclear_error, failed)

    @staticmethod
    def _figure(ctx, curves, nuclear_error) -> None:
        fig, axes = new_figure(3, width=3.2, height=3.5)
        shades = dict(zip(STRENGTHS, ("C0", "C2", "C1", "C3")))
        for (param, pen, s, seed), c in curves.items():
            if (param, seed) != ("depth 3", 0):
                continue
            style = dict(color="k", ls="-", label="no penalty") if pen == "none" else dict(
                color=shades[s], ls="-" if pen == "ratio" else "--",
                label=rf"{PLACEMENTS[pen]}, $\lambda$ = {s:g}")
            axes[0].plot(c["t"][1:], c["error"][1:], **style)
            axes[1].plot(c["t"][1:], c["norm"][1:], **style)
        axes[0].axhline(nuclear_error[0], color="0.5", ls=":", label="nuclear minimiser")
        axes[0].set(xscale="log", yscale="log", xlabel="time $t$", ylabel="test error", title="depth 3, seed 0")
        # Collapsed runs fall to 1e-70 and below: the axis stops at 1e-10 (below it, W = 0 to the tolerance).
        axes[1].set(xscale="log", yscale="log", xlabel="time $t$", ylabel=r"$\|W\|_F$", title="depth 3, seed 0",
                    ylim=(1e-10, None))
        for param, colour in (("depth 3", "0.25"), ("UV^T", "C5")):
            for pen, marker in (("ratio", "-o"), ("ratio on each factor", "--s")):
                best = [finite_mean([c["error"].min() for (q, p, s, _), c in curves.items() if (q, p, s) == (param, pen, strength)])
                        for strength in STRENGTHS]
                axes[2].plot(STRENGTHS, best, marker, color=colour, label=f"{param.replace('UV^T', '$UV^T$')}, {PLACEMENTS[pen]}")
            none = finite_mean([c["error"].min() for (q, p, _, _), c in curves.items() if (q, p) == (param, "none")])
            axes[2].axhline(none, color=colour, lw=0.8, label=f"{param.replace('UV^T', '$UV^T$')}, no penalty")
        axes[2].axhline(finite_mean(list(nuclear_error.values())), color="0.5", ls=":")
        axes[2].set(xscale="log", yscale="log", xlabel=r"strength $\lambda$", ylabel="best test error (mean over seeds)",
                    title="both, mean over seeds")
        handles, labels = axes[0].get_legend_handles_labels()
        right = axes[2].get_legend_handles_labels()
        fig.legend(handles + right[0], labels + right[1], loc="outside lower center", ncols=4, fontsize="x-small")
        ctx.figure(fig, "each_factor")

    @staticmethod
    def _outputs(ctx, grid, curves, nuclear_error, failed) -> None:
        def cell(param, pen, s):
            rows = [c for (q, p, st, _), c in curves.items() if (q, p, st) == (param, pen, s)]
            return rows if len(rows) == grid.seeds else None

        def collapsed(rows):
            return all(c["norm"][-1] < COLLAPSED * grid.n for c in rows)

        table = []
        for param in PARAMETERIZATIONS:
            for pen, s in [("none", None)] + [(p, s) for s in STRENGTHS for p in PLACEMENTS]:
                rows = cell(param, pen, s)
                name = "no penalty" if pen == "none" else rf"{PLACEMENTS[pen]}, $\lambda = {tex_number(s)}$"
                name = f"{param.replace('UV^T', '$UV^T$')}, {name}"
                if rows is None:
                    table.append([name, "n/a", "n/a", "n/a", "n/a"])
                    continue
                table.append([name, f"${tex_spread([c['error'].min() for c in rows])}$",
                              f"${tex_spread([c['t'][np.argmin(c['error'])] for c in rows])}$",
                              f"${tex_spread([c['norm'][-1] for c in rows])}$",
                              f"${tex_spread([c['steps'] for c in rows])}$"])
        ctx.table("each_factor", "grid", "lllll", ["penalty", "best test error", "at time", r"$\|W\|_F$ at the end",
                                                   "steps"], table)

        macros = {"EachStrengths": ", ".join(tex_number(s) for s in STRENGTHS), "EachAtol": tex_number(ATOL),
                  "EachStrengthCount": str(len(STRENGTHS)), "EachSeeds": str(grid.seeds), "EachN": str(grid.n),
                  "EachHorizon": tex_number(grid.slow), "EachFailed": str(len(failed)),
                  "EachNuclear": tex_number(finite_mean(list(nuclear_error.values())))}
        for param, infix in PARAMETERIZATIONS.items():
            def best_over_strengths(pen):
                means = {s: finite_mean([c["error"].min() for c in cell(param, pen, s)])
                         for s in STRENGTHS if cell(param, pen, s)}
                return min(means.items(), key=lambda kv: kv[1]) if means else (None, np.nan)

            each_strength, each_best = best_over_strengths("ratio on each factor")
            product_strength, product_best = best_over_strengths("ratio")
            collapse = [s for s in STRENGTHS if cell(param, "ratio on each factor", s)
                        and collapsed(cell(param, "ratio on each factor", s))]
            none = cell(param, "none", None)
            tag = f"Each{infix}"
            macros |= {f"{tag}None": tex_number(finite_mean([c["error"].min() for c in none])) if none else "n/a",
                       f"{tag}BestEach": tex_number(each_best),
                       f"{tag}BestEachStrength": tex_number(each_strength or np.nan),
                       f"{tag}BestProduct": tex_number(product_best),
                       f"{tag}BestProductStrength": tex_number(product_strength or np.nan),
                       f"{tag}CollapseFrom": tex_number(min(collapse)) if collapse else "n/a",
                       f"{tag}CollapseCount": str(len(collapse)),
                       f"{tag}Verdict": penalties.verdict_same(each_best, product_best)}
        ctx.macros("each_factor", macros)
