r"""Claim 3 at the Arora scale: "it is the denominator that matters more than the numerator".

Adam's flow has two parts: the momentum of the numerator ($m' = a (g - m)$) and the per-coordinate normalisation of
the denominator ($v' = b (g^2 - v)$). The RMSProp flow keeps only the denominator, the momentum flow only the
numerator (`_completion.DYNAMICS`). The penalties experiment compares them at n = 30; at n = 100 its grids leave the
momentum flow out (its runs move at the speed of the gradient and oscillate: the linearisation's eigenvalues
are $-a/2 \pm \sqrt{a^2/4 - a h}$ for a curvature h, oscillatory for h > a / 4, and the ratio's smoothed nuclear
norm makes h large, so Tsit5 takes tens of thousands of steps to the slow horizon). This experiment runs just that
contrast there.

Setting. The Arora grid's problem at m = 2000 (`_completion.ARORA_GRIDS`: n = 100, rank 5, 3 seeds), depth 1 from
$P_\Omega(W^*)$, the ratio at the grid's strength, the RMSProp flow to the fast horizon and the momentum flow to the
slow one (`_completion.horizon`): the RMSProp runs are the penalties grids' own (the same runs in the store), the
momentum runs get a larger step budget (`MOMENTUM_MAX_STEPS`). Quick: the penalties quick grid's cells (its
momentum runs are computed again here: the step budget is part of a run's key).
Measured: best test error over time and within the fast horizon (the budget), against the nuclear minimiser;
the verdict by `_completion.verdict_three`.
"""

from __future__ import annotations

import pandas as pd

from ._base import Experiment, Group, complete, finite_mean, tex_number, tex_spread
from ._completion import ARORA_GRIDS, build, curve, mean, nuclear_errors, ratio_configs, solve_options, summary
from ._completion import verdict_three
from ._completion import GRIDS as PENALTIES_GRIDS

GRIDS = {False: ARORA_GRIDS[False], True: PENALTIES_GRIDS[True]}
DYNAMICS = ("RMSProp", "momentum")
"""The two halves of Adam (`_completion.DYNAMICS`)."""
MOMENTUM_MAX_STEPS = 400_000
"""The momentum flow's step budget, twice the penalties grids': with theirs one seed of the Arora grid stopped at
t = 2944 of 3000 (the seeds took 10, 56 and over 200 thousand steps)."""


class Denominator(Experiment):
    name = "denominator"
    title = "claim 3 at n = 100: the RMSProp flow (denominator) against the momentum flow (numerator), with the ratio"

    def groups(self, quick):
        grid = GRIDS[quick]
        budget = {"momentum": dict(max_steps=MOMENTUM_MAX_STEPS)}
        return [
            Group(d, build, ratio_configs(grid, d), solve_options(grid, ratio_configs(grid, d)[0], **budget.get(d, {})))
            for d in DYNAMICS
        ]

    def measure(self, traj, config):
        return curve(traj, config)

    def report(self, ctx, results):
        grid = GRIDS[ctx.quick]
        nuclear_error = nuclear_errors(ctx, grid)
        done = results[results["status"] != "failed"]
        done = done.join(
            pd.DataFrame(
                [summary(row, nuclear_error[row["seed"]], grid.fast) for _, row in done.iterrows()], index=done.index
            )
        )
        # A cell counts only with every seed finished (a failed seed is reported, not averaged away).
        whole = complete(done, ["dynamics"], grid.seeds)
        table = []
        for d in DYNAMICS:
            rows = done[done["dynamics"] == d]
            cells = [f"${tex_spread(rows[k])}$" if len(rows) else "n/a" for k in ("best", "t_best", "budget", "end")]
            steps = f"${tex_spread(rows['steps'])}$" if len(rows) else "n/a"
            table.append([d, f"{len(rows)}/{grid.seeds}", *cells, steps])
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
        cell = {d: whole[whole["dynamics"] == d] for d in DYNAMICS}
        ready = all(len(c) for c in cell.values())
        verdict = verdict_three(cell["RMSProp"], cell["momentum"]) if ready else "n/a"
        values = {
            "n": str(grid.n),
            "m": str(grid.m),
            "seeds": str(grid.seeds),
            "strength": tex_number(grid.strength),
            "fast": tex_number(grid.fast),
            "slow": tex_number(grid.slow),
            "failed": str(int((results["status"] == "failed").sum())),
            "nuclear": tex_number(finite_mean(list(nuclear_error.values()))),
            "verdict": verdict,
        }
        for d in DYNAMICS:
            values |= {
                f"{d}/{k}": tex_number(mean(cell[d], k)) if len(cell[d]) else "n/a"
                for k in ("best", "t_best", "budget", "end")
            }
        ctx.values(self.name, values)
        ctx.finding(
            f"claim 3 (n = {grid.n}): the denominator matters more than the numerator",
            verdict,
            f"RMSProp flow {values['RMSProp/best']} at t = {values['RMSProp/t_best']}, momentum flow "
            f"{values['momentum/best']} at t = {values['momentum/t_best']}",
        )
