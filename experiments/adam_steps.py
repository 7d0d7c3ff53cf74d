r"""Finite steps against the flow where the ratio helps (claim 8): is the benefit a finite-step effect?

Claim to settle. The ratio penalty was seen to work with (discrete) Adam at practical step sizes. Either the
benefit is a property of the Adam flow (then discrete Adam converges to it as eta -> 0 and the benefit stays), or
it is a finite-step effect (then it fades as eta -> 0), or neither.

Setting: the penalties experiment's depth-1 cell with the ratio at its `grid.strength`, under the Adam flow
(a, b, eps as there) and under gradient flow, against optax's Adam with $\beta_1 = 1 - a\eta$, $\beta_2 = 1 - b\eta$
(the matched rates, `flows.descend`) and gradient descent, at steps from the largest the rates allow down to
where they meet the flows, over each dynamics' horizon, saved at the same times. The flow runs are the penalties
experiment's (the same runs in the store).

Measurement: best test error over time and its time, for each eta, beside the flow's. Verdict: *a property of the
flow* when the smallest steps' best test errors are within `_completion.SAME` of the flow's and every step's best is
no lower than the flow's by more than that factor; *a finite-step effect* when some step's best is lower than the
flow's by more than the factor; *neither* otherwise.
"""

from __future__ import annotations

import numpy as np

import flows

from ._base import Experiment, Group, new_figure, test_error, tex_number
from ._completion import COLOURS, GRIDS, SAME, build, ratio_configs, solve_options

STEPS = {"Adam": (0.05, 0.02, 0.01, 0.005, 0.002, 0.001), "gradient flow": (0.5, 0.2, 0.1, 0.05, 0.02)}
"""Step sizes by the flow they are the steps of: Adam needs a eta < 1 (a = 10); gradient descent on this problem
diverges above eta ~ 1 (the data loss's Hessian has eigenvalue 1 on observed entries; the penalty adds little)."""
QUICK_STEPS = {"Adam": (0.05, 0.01, 0.002), "gradient flow": (0.5, 0.1, 0.02)}


def _best(error: np.ndarray, ts: np.ndarray) -> tuple[float, float]:
    i = int(np.argmin(error))
    return float(error[i]), float(ts[i])


class AdamSteps(Experiment):
    name = "adam_steps"
    title = "discrete Adam and gradient descent with the ratio against their flows: a finite-step effect?"

    def groups(self, quick):
        grid = GRIDS[quick]
        steps = QUICK_STEPS if quick else STEPS
        return [
            Group(f"{d} (flow)", build, ratio_configs(grid, d), solve_options(grid, ratio_configs(grid, d)[0]))
            for d in steps
        ]

    def measure(self, traj, config):
        return {"t": np.asarray(traj.ts), "error": test_error(traj.W, traj.truth)}

    def report(self, ctx, results):
        grid = GRIDS[ctx.quick]
        steps = QUICK_STEPS if ctx.quick else STEPS
        outcome = {}
        for _, row in results[results["status"] != "failed"].iterrows():
            d, seed = row["dynamics"], row["seed"]
            outcome[d, None, seed] = _best(row["error"], row["t"])
            flow, state0 = build(ratio_configs(grid, d)[seed])
            for eta in steps[d]:

                def compute(flow=flow, state0=state0, eta=eta, ts=row["t"]):
                    traj = flows.descend(flow, state0, step=eta, t1=float(ts[-1]), ts=ts)
                    return {"error": test_error(traj.W, traj.truth), "t": np.asarray(traj.ts)}

                inputs = {"descend": flow, "state0": state0, "step": eta, "ts": row["t"]}
                stored = ctx.cached(inputs, compute)
                outcome[d, eta, seed] = _best(stored["error"], stored["t"])
        self._figure(ctx, grid, steps, outcome)
        self._values(ctx, grid, steps, outcome)

    @staticmethod
    def _mean(outcome, d, eta, seeds, index=0) -> float:
        values = [outcome[d, eta, s][index] for s in seeds if (d, eta, s) in outcome]
        return float(np.mean(values)) if values else float("nan")

    def _figure(self, ctx, grid, steps, outcome) -> None:
        seeds = range(grid.seeds)
        fig, axes = new_figure(2, width=3.3, height=2.7)
        labels = {"Adam": ("optax Adam", "Adam flow"), "gradient flow": ("gradient descent", "gradient flow")}
        for d, etas in steps.items():
            colour = COLOURS[d]
            for ax, index in zip(axes, (0, 1)):
                ax.plot(
                    etas,
                    [self._mean(outcome, d, eta, seeds, index) for eta in etas],
                    "o-",
                    color=colour,
                    label=labels[d][0],
                )
                ax.axhline(self._mean(outcome, d, None, seeds, index), color=colour, linestyle="--", label=labels[d][1])
        titles = (f"depth 1 + ratio, $\\lambda$ = {grid.strength:g}", "when it is reached")
        for ax, ylabel, title in zip(axes, ("best test error over time", r"time of the best, $t = k\eta$"), titles):
            ax.set(xscale="log", yscale="log", xlabel=r"step size $\eta$", ylabel=ylabel, title=title)
        for ax in axes:
            ax.legend(fontsize="small")
        ctx.figure(fig, "adam_steps")

    def _values(self, ctx, grid, steps, outcome) -> None:
        seeds = range(grid.seeds)
        values = {}
        for d, kind in (("Adam", "Adam"), ("gradient flow", "gradient descent")):
            etas = steps[d]
            flow_best = self._mean(outcome, d, None, seeds)
            bests = [self._mean(outcome, d, eta, seeds) for eta in etas]
            smallest = bests[-1]
            lower = min(bests) < flow_best / SAME
            meets = max(smallest, flow_best) <= SAME * min(smallest, flow_best)
            verdict = "a finite-step effect" if lower else "a property of the flow" if meets else "neither"
            values |= {
                f"{kind}/flow best": tex_number(flow_best),
                f"{kind}/flow t_best": tex_number(self._mean(outcome, d, None, seeds, 1)),
                f"{kind}/largest eta": tex_number(etas[0]),
                f"{kind}/smallest eta": tex_number(etas[-1]),
                f"{kind}/largest eta best": tex_number(bests[0]),
                f"{kind}/smallest eta best": tex_number(smallest),
                f"{kind}/largest eta t_best": tex_number(self._mean(outcome, d, etas[0], seeds, 1)),
                f"{kind}/largest eta iterations": tex_number(self._mean(outcome, d, etas[0], seeds, 1) / etas[0]),
                f"{kind}/verdict": verdict,
            }
            ctx.finding(
                f"claim 8: the ratio's benefit under {kind} is a finite-step effect",
                verdict,
                f"flow {values[f'{kind}/flow best']}, smallest step {values[f'{kind}/smallest eta best']}",
            )
        ctx.values(self.name, values)
