r"""Claim 3 (seed 000) at the Arora scale: "it is the denominator that matters more than the numerator".

Adam's flow has two parts: the momentum of the numerator ($m' = a (g - m)$) and the per-coordinate normalisation of
the denominator ($v' = b (g^2 - v)$). The RMSProp flow keeps only the denominator, the momentum flow only the
numerator (`penalties.DYNAMICS`). The penalties experiment compares them at n = 30; at n = 100 its grids cut the
momentum flow for time (its runs move at the speed of the gradient and oscillate: the linearisation's eigenvalues
are $-a/2 \pm \sqrt{a^2/4 - a h}$ for a curvature h, oscillatory for h > a / 4, and the ratio's smoothed nuclear
norm makes h large, so Tsit5 takes tens of thousands of steps to the slow horizon). This experiment runs just that
contrast there.

Setting. The Arora grid's problem at m = 2000 (`penalties.ARORA_GRIDS`: n = 100, rank 5, 3 seeds), depth 1 from
$P_\Omega(W^*)$, the ratio at the grid's strength, the RMSProp flow to the fast horizon and the momentum flow to the
slow one (`penalties.horizon`), in the penalties experiments' store: the RMSProp runs are the penalties grids' own
(same keys, reused where made), the momentum runs get a larger step budget (`MOMENTUM_MAX_STEPS`). Quick: the
penalties quick grid's cells (its momentum runs are recomputed here: the step budget is part of a run's key).
Measured: best test error over time and within the fast horizon (the budget), against the nuclear minimiser;
the verdict by `penalties.verdict_three`.
"""

from __future__ import annotations

import flows

from . import penalties
from ._base import Context, Experiment, finite_mean, tex_number, tex_spread

GRIDS = {False: penalties.ARORA_GRIDS[False], True: penalties.GRIDS[True]}
DYNAMICS = {"RMSProp": "RMSProp", "momentum": "Momentum"}
"""The two halves of Adam (`penalties.DYNAMICS`) and their macros' infix."""
MOMENTUM_MAX_STEPS = 400_000
"""The momentum flow's step budget, twice the penalties grids': with theirs one seed of the Arora grid stopped at
t = 2944 of 3000 (the seeds took 10, 56 and over 200 thousand steps)."""


def _configs(grid: penalties.Grid) -> list[dict]:
    return [
        {
            "n": grid.n,
            "rank": grid.rank,
            "m": grid.m,
            "seed": seed,
            "parameterization": "depth 1",
            "penalty": "ratio",
            "strength": grid.strength,
            "dynamics": d,
        }
        for d in DYNAMICS
        for seed in range(grid.seeds)
    ]


class Denominator(Experiment):
    name = "denominator"
    title = "claim 3 at n = 100: the RMSProp flow (denominator) against the momentum flow (numerator), with the ratio"

    def run(self, ctx: Context) -> None:
        grid = GRIDS[ctx.quick]
        nuclear_error = penalties.nuclear_errors(ctx, grid)
        rows, failed, steps = {d: [] for d in DYNAMICS}, [], {d: [] for d in DYNAMICS}
        for dynamics in DYNAMICS:  # one sweep per dynamics: their horizons and step budgets differ
            group = [c for c in _configs(grid) if c["dynamics"] == dynamics]
            t1 = penalties.horizon(grid, group[0])
            for run in ctx.sweep(
                penalties.STORE,
                penalties.build,
                group,
                t1=t1,
                ts=flows.default_ts(t1, penalties.SAVES),
                rtol=penalties.RTOL,
                stop_loss=None,
                max_steps=MOMENTUM_MAX_STEPS if dynamics == "momentum" else penalties.MAX_STEPS,
            ):
                if run.status == "failed":
                    failed.append((dynamics, run.config["seed"]))
                    continue
                traj = run.load()
                rows[dynamics].append(
                    penalties.summary(penalties.path(traj, grid.m), nuclear_error[run.config["seed"]], grid.fast)
                )
                steps[dynamics].append(traj.stats["num_steps"])
        # A cell counts only with every seed finished (a failed seed is reported, not averaged away).
        complete = {d: r for d, r in rows.items() if len(r) == grid.seeds}
        table = []
        for d in DYNAMICS:
            cells = [
                f"${tex_spread([r[k] for r in rows[d]])}$" if rows[d] else "n/a"
                for k in ("best", "t_best", "budget", "end")
            ]
            table.append(
                [d, f"{len(rows[d])}/{grid.seeds}", *cells, f"${tex_spread(steps[d])}$" if steps[d] else "n/a"]
            )
        ctx.table(
            self.name,
            "grid",
            "lllllll",
            [
                "dynamics",
                "seeds",
                "best test error",
                "at time",
                rf"best for $t \le {tex_number(grid.fast)}$",
                "at the horizon",
                "steps",
            ],
            table,
        )
        macros = {
            "DenomN": str(grid.n),
            "DenomM": str(grid.m),
            "DenomSeeds": str(grid.seeds),
            "DenomStrength": tex_number(grid.strength),
            "DenomFast": tex_number(grid.fast),
            "DenomSlow": tex_number(grid.slow),
            "DenomFailed": str(len(failed)),
            "DenomNuclear": tex_number(finite_mean(list(nuclear_error.values()))),
            "DenomVerdict": (
                penalties.verdict_three(complete["RMSProp"], complete["momentum"])
                if len(complete) == len(DYNAMICS)
                else "n/a"
            ),
        }
        for d, infix in DYNAMICS.items():
            macros |= {
                f"Denom{infix}{name}": tex_number(finite_mean([r[key] for r in complete[d]]))
                if d in complete
                else "n/a"
                for name, key in (("Best", "best"), ("TBest", "t_best"), ("Budget", "budget"), ("End", "end"))
            }
        ctx.macros(self.name, macros)
