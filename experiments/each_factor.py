r"""Claim 7 (seed 004): the ratio on each factor, $\sum_j R(W_j)$, against the ratio on the product $R(W)$.

Setting. The penalties experiment's completion problem and factored inits (`penalties.GRIDS`: the same n, rank, m,
seeds, the small Gaussian init of scale `penalties.INIT` per product) for $W = U V^T$ and $W = W_3 W_2 W_1$,
$L + \lambda R$ with the smoothed ratio of `penalties.RATIO`, $\lambda$ over `STRENGTHS` (four decades), and no
penalty for reference, under two dynamics: gradient flow to the penalties experiment's slow horizon, and the Adam
flow (`penalties.DYNAMICS["Adam"]`) to the fast one. And, under gradient flow, the ratio on each factor with
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

import flows

from . import penalties
from ._base import Context, Experiment, finite_mean, new_figure, test_error, tex_number, tex_spread

STRENGTHS = (1e-3, 1e-2, 1e-1, 1.0)
"""Four decades of lambda; the penalties grid's own strength (3) behaves as 1 (measured at n = 15)."""
PARAMETERIZATIONS = {"UV^T": "Factored", "depth 3": ""}
"""The factored parameterizations (`penalties.PARAMETERIZATIONS`) and their macros' infix (depth 3: none)."""
PLACEMENTS = {"ratio": "on the product", "ratio on each factor": "on each factor"}
DYNAMICS = {"gradient flow": "", "Adam": "Adam"}
"""The dynamics (`penalties.DYNAMICS`) and their macros' infix (gradient flow: none)."""
DELTAS = {0.1: "Tenth", 0.0: "Zero"}
"""The smoothing of the ratio on each factor below `penalties.RATIO`'s, under gradient flow, and macro names: near
the peak of the pull for U V^T's factors, and none (the exact ratio; delta = 0.01 gave the same as 0 at n = 15)."""
ATOL = 1e-10
"""The solver's absolute tolerance (see the module docstring), with the penalties experiment's rtol."""
COLLAPSED = 1e-6
r"""A run whose $\|W\|_F$ at the horizon is below this fraction of $\|W^*\|_F$ has collapsed to W = 0."""


def _configs(grid: penalties.Grid, dynamics: str = "gradient flow") -> list[dict]:
    """Both placements at every strength, and no penalty, under `dynamics` with the ratio's own smoothing."""
    base = {"n": grid.n, "rank": grid.rank, "m": grid.m, "dynamics": dynamics}
    cells = [("none", None)] + [(p, s) for s in STRENGTHS for p in PLACEMENTS]
    return [
        {**base, "parameterization": param, "penalty": p, "strength": s, "seed": seed}
        for param in PARAMETERIZATIONS
        for p, s in cells
        for seed in range(grid.seeds)
    ]


def _delta_configs(grid: penalties.Grid) -> list[dict]:
    """The ratio on each factor at every strength and smoothing of `DELTAS`, under gradient flow."""
    return [{**c, "delta": delta} for delta in DELTAS for c in _configs(grid) if c["penalty"] == "ratio on each factor"]


def _key(config: dict) -> tuple:
    """(dynamics, delta, parameterization, penalty, strength, seed): one run."""
    return (
        config["dynamics"],
        config.get("delta", penalties.RATIO["delta"]),
        config["parameterization"],
        config["penalty"],
        config["strength"],
        config["seed"],
    )


def _cell(
    curves: dict,
    seeds: int,
    dynamics: str,
    param: str,
    pen: str,
    s: float | None,
    delta: float = penalties.RATIO["delta"],
) -> list[dict] | None:
    """The runs of one cell (a `_key` without its seed), or None unless every seed finished (a failed seed is
    reported, not averaged away: an n/a in the tables, a gap in the figures)."""
    rows = [c for k, c in curves.items() if k[:5] == (dynamics, delta, param, pen, s)]
    return rows if len(rows) == seeds else None


def _mean_best(rows: list[dict] | None) -> float:
    """The mean over seeds of the best test error over time; NaN for a missing cell."""
    return np.nan if rows is None else finite_mean([c["error"].min() for c in rows])


def _tex_name(param: str) -> str:
    return param.replace("UV^T", "$UV^T$")


class EachFactor(Experiment):
    name = "each_factor"
    title = (
        "claim 7: the ratio on each factor against the ratio on the product (U V^T and depth 3, gradient flow "
        "and Adam flow, the smoothing delta)"
    )

    def run(self, ctx: Context) -> None:
        grid = penalties.GRIDS[ctx.quick]
        nuclear_error = penalties.nuclear_errors(ctx, grid)  # the penalties experiment's cached references
        nuclear_mean = finite_mean(list(nuclear_error.values()))
        options = dict(rtol=penalties.RTOL, atol=ATOL, max_steps=penalties.MAX_STEPS)
        runs = ctx.sweep(
            self.name,
            penalties.build,
            _configs(grid) + _delta_configs(grid),
            t1=grid.slow,
            ts=flows.default_ts(grid.slow, penalties.SAVES),
            solver=flows.Tsit5ThenChebyshev(),
            **options,
        )
        runs += ctx.sweep(
            self.name,
            penalties.build,
            _configs(grid, "Adam"),
            t1=grid.fast,
            ts=flows.default_ts(grid.fast, penalties.SAVES),
            solver=diffrax.Tsit5(),
            **options,
        )
        curves, failed = {}, []
        for run in runs:
            if run.status == "failed":
                failed.append(_key(run.config))
                continue
            traj = run.load()
            curves[_key(run.config)] = {
                "t": np.asarray(traj.ts),
                "error": test_error(traj.W, traj.truth),
                "norm": np.linalg.norm(np.asarray(traj.W), axis=(1, 2)),
                "steps": traj.stats["num_steps"],
            }
        # The factors' norms at init (mean over factors and seeds), against which the smoothing delta is set.
        init_norms = {
            param: finite_mean(
                [
                    np.linalg.norm(np.asarray(factor))
                    for c in _configs(grid)
                    if c["parameterization"] == param and c["penalty"] == "none"
                    for factor in penalties.build(c)[1]
                ]
            )
            for param in PARAMETERIZATIONS
        }
        self._figure(ctx, curves, nuclear_error, nuclear_mean, grid.seeds)
        self._figure_adam_delta(ctx, grid, curves, nuclear_mean)
        self._outputs(ctx, grid, curves, nuclear_mean, failed, init_norms)

    @staticmethod
    def _figure(ctx, curves, nuclear_error, nuclear_mean, seeds) -> None:
        fig, axes = new_figure(3, width=3.2, height=3.5)
        shades = dict(zip(STRENGTHS, ("C0", "C2", "C1", "C3")))
        for (dynamics, delta, param, pen, s, seed), c in curves.items():
            if (dynamics, delta, param, seed) != ("gradient flow", penalties.RATIO["delta"], "depth 3", 0):
                continue
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
        _best_against_strength(axes[2], curves, "gradient flow", seeds)
        axes[2].axhline(nuclear_mean, color="0.5", ls=":")
        axes[2].set(title="both, mean over seeds")
        handles, labels = axes[0].get_legend_handles_labels()
        right = axes[2].get_legend_handles_labels()
        fig.legend(handles + right[0], labels + right[1], loc="outside lower center", ncols=4, fontsize="x-small")
        ctx.figure(fig, "each_factor")

    @staticmethod
    def _figure_adam_delta(ctx, grid, curves, nuclear_mean) -> None:
        fig, axes = new_figure(3, width=3.2, height=3.6)
        _best_against_strength(axes[0], curves, "Adam", grid.seeds)
        axes[0].axhline(nuclear_mean, color="0.5", ls=":", label="nuclear minimiser")
        axes[0].set(title="Adam flow, mean over seeds")
        floor = 1e-12  # collapsed runs end near 1e-60: drawn at the floor
        # Thinner lines and smaller markers for smaller delta, so that coinciding curves all show.
        smoothings = zip((penalties.RATIO["delta"], *DELTAS), ("C3", "C1", "C0"), (2.4, 1.6, 0.8), strict=True)
        for delta, colour, width in smoothings:
            for param, marker in (("depth 3", "-o"), ("UV^T", "--s")):
                cells = [
                    _cell(curves, grid.seeds, "gradient flow", param, "ratio on each factor", s, delta)
                    for s in STRENGTHS
                ]
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
                        np.nan if rows is None else finite_mean([max(c["norm"][-1], floor) for c in rows])
                        for rows in cells
                    ],
                    marker,
                    **style,
                )
        axes[1].axhline(nuclear_mean, color="0.5", ls=":")
        axes[1].set(
            xscale="log",
            yscale="log",
            xlabel=r"strength $\lambda$",
            ylabel="best test error (mean over seeds)",
            title=r"gradient flow, smoothing $\delta$",
        )
        axes[2].set(
            xscale="log",
            yscale="log",
            xlabel=r"strength $\lambda$",
            ylabel=rf"$\|W\|_F$ at $t = {grid.slow:g}$ (floor {floor:g})",
            title=r"collapse: $W \to 0$",
        )
        left, right = axes[0].get_legend_handles_labels(), axes[2].get_legend_handles_labels()
        fig.legend(left[0] + right[0], left[1] + right[1], loc="outside lower center", ncols=4, fontsize="x-small")
        ctx.figure(fig, "each_factor-adam-delta")

    @staticmethod
    def _outputs(ctx, grid, curves, nuclear_mean, failed, init_norms) -> None:
        def cell(dynamics, param, pen, s, delta=penalties.RATIO["delta"]):
            return _cell(curves, grid.seeds, dynamics, param, pen, s, delta)

        def collapsed(rows):
            return all(c["norm"][-1] < COLLAPSED * grid.n for c in rows)

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
                            f"${tex_spread([c['error'].min() for c in rows])}$",
                            f"${tex_spread([c['t'][np.argmin(c['error'])] for c in rows])}$",
                            f"${tex_spread([c['norm'][-1] for c in rows])}$",
                            f"${tex_spread([c['steps'] for c in rows])}$",
                        ]
                    )
        ctx.table(
            "each_factor",
            "grid",
            "llllll",
            ["dynamics", "penalty", "best test error", "at time", r"$\|W\|_F$ at the end", "steps"],
            table,
        )

        smoothing = []
        for param in PARAMETERIZATIONS:
            for delta in (penalties.RATIO["delta"], *DELTAS):
                row = [_tex_name(param), f"${tex_number(delta)}$"]
                for s in STRENGTHS:
                    rows = cell("gradient flow", param, "ratio on each factor", s, delta)
                    row.append(
                        "n/a"
                        if rows is None
                        else "collapses"
                        if collapsed(rows)
                        else f"${tex_spread([c['error'].min() for c in rows])}$"
                    )
                smoothing.append(row)
        ctx.table(
            "each_factor",
            "delta",
            "ll" + "l" * len(STRENGTHS),
            ["", r"$\delta$", *(rf"$\lambda = {tex_number(s)}$" for s in STRENGTHS)],
            smoothing,
        )

        # Penalised Adam-flow runs whose best test error is at their last save (the horizon).
        adam_runs = [c for k, c in curves.items() if k[0] == "Adam" and k[3] != "none"]
        adam_at_horizon = sum(int(np.argmin(c["error"])) == len(c["error"]) - 1 for c in adam_runs)
        macros = {
            "EachStrengths": ", ".join(tex_number(s) for s in STRENGTHS),
            "EachAtol": tex_number(ATOL),
            "EachStrengthCount": str(len(STRENGTHS)),
            "EachSeeds": str(grid.seeds),
            "EachN": str(grid.n),
            "EachHorizon": tex_number(grid.slow),
            "EachFailed": str(len(failed)),
            "EachNuclear": tex_number(nuclear_mean),
            "EachAdamHorizon": tex_number(grid.fast),
            "EachAdamAtHorizon": str(adam_at_horizon),
            "EachAdamRuns": str(len(adam_runs)),
            "EachDeltas": ", ".join(tex_number(d) for d in DELTAS),
        }

        def best_over_strengths(dynamics, param, pen, delta=penalties.RATIO["delta"]):
            means = {
                s: _mean_best(cell(dynamics, param, pen, s, delta))
                for s in STRENGTHS
                if cell(dynamics, param, pen, s, delta)
            }
            return min(means.items(), key=lambda kv: kv[1]) if means else (None, np.nan)

        def collapse_macros(tag, dynamics, param, delta=penalties.RATIO["delta"]):
            """Where each factor collapses: "n/a" unless every strength's cell finished (a missing cell is not "no
            collapse"), else from which strength, and at how many."""
            cells = [cell(dynamics, param, "ratio on each factor", s, delta) for s in STRENGTHS]
            if any(rows is None for rows in cells):
                return {f"{tag}Collapses": "n/a (a strength's cell has a failed run)", f"{tag}CollapseCount": "n/a"}
            collapse = [s for s, rows in zip(STRENGTHS, cells) if collapsed(rows)]
            phrase = rf"from $\lambda = {tex_number(min(collapse))}$" if collapse else "at none of the strengths"
            return {f"{tag}Collapses": phrase, f"{tag}CollapseCount": str(len(collapse))}

        for dynamics, dynamics_infix in DYNAMICS.items():
            for param, infix in PARAMETERIZATIONS.items():
                each_strength, each_best = best_over_strengths(dynamics, param, "ratio on each factor")
                product_strength, product_best = best_over_strengths(dynamics, param, "ratio")
                none = cell(dynamics, param, "none", None)
                tag = f"Each{dynamics_infix}{infix}"
                if dynamics == "gradient flow":
                    macros[f"{tag}InitNorm"] = tex_number(init_norms[param])
                macros |= {
                    f"{tag}None": tex_number(_mean_best(none)) if none else "n/a",
                    f"{tag}BestEach": tex_number(each_best),
                    f"{tag}BestEachStrength": tex_number(each_strength or np.nan),
                    f"{tag}BestProduct": tex_number(product_best),
                    f"{tag}BestProductStrength": tex_number(product_strength or np.nan),
                    f"{tag}Verdict": penalties.verdict_same(each_best, product_best),
                    **collapse_macros(tag, dynamics, param),
                }
        for param, infix in PARAMETERIZATIONS.items():
            for delta, name in DELTAS.items():
                each_strength, each_best = best_over_strengths("gradient flow", param, "ratio on each factor", delta)
                tag = f"Each{infix}Delta{name}"
                macros |= {
                    f"{tag}BestEach": tex_number(each_best),
                    f"{tag}BestEachStrength": tex_number(each_strength or np.nan),
                    **collapse_macros(tag, "gradient flow", param, delta),
                }
        ctx.macros("each_factor", macros)


def _best_against_strength(ax, curves, dynamics, seeds) -> None:
    """Best test error (mean over seeds) against lambda, both placements and factorizations, and no penalty."""
    for param, colour in (("depth 3", "0.25"), ("UV^T", "C5")):
        name = _tex_name(param)
        for pen, marker in (("ratio", "-o"), ("ratio on each factor", "--s")):
            best = [_mean_best(_cell(curves, seeds, dynamics, param, pen, s)) for s in STRENGTHS]
            ax.plot(STRENGTHS, best, marker, color=colour, label=f"{name}, {PLACEMENTS[pen]}")
        none = _mean_best(_cell(curves, seeds, dynamics, param, "none", None))
        ax.axhline(none, color=colour, lw=0.8, label=f"{name}, no penalty")
    ax.set(xscale="log", yscale="log", xlabel=r"strength $\lambda$", ylabel="best test error (mean over seeds)")
