r"""Finite steps against the flow where the ratio helps (SCIENCE.md claim 8): is the benefit a finite-step effect?

Claim to settle. The seeds saw the ratio penalty work with (discrete) Adam at practical step sizes. Either the
benefit is a property of the Adam flow (then discrete Adam converges to it as eta -> 0 and the benefit stays), or
it is a finite-step effect (then it fades as eta -> 0), or neither.

Setting: the penalties experiment's depth-1 cell with the ratio at its `grid.strength`, under the Adam flow
(a, b, eps as there) and under gradient flow, against optax's Adam with $\beta_1 = 1 - a\eta$, $\beta_2 = 1 - b\eta$
(the matched rates, `flows.descend`) and gradient descent, at steps from the largest the rates allow down to
where they meet the flows, over each dynamics' horizon, saved at the same times. The flow runs are the penalties
experiment's (shared through its store).

Measurement: best test error over time and its time, for each eta, beside the flow's. Verdict: *a property of the
flow* when the smallest steps' best test errors are within `penalties.SAME` of the flow's and every step's best is
no lower than the flow's by more than that factor; *a finite-step effect* when some step's best is lower than the
flow's by more than the factor; *neither* otherwise.
"""

from __future__ import annotations

import numpy as np

import flows

from . import penalties
from ._base import Context, Experiment, new_figure, test_error, tex_number

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

    def run(self, ctx: Context) -> None:
        grid = penalties.GRIDS[ctx.quick]
        steps = QUICK_STEPS if ctx.quick else STEPS
        base = {
            "n": grid.n,
            "rank": grid.rank,
            "m": grid.m,
            "parameterization": "depth 1",
            "penalty": "ratio",
            "strength": grid.strength,
        }
        results = {}
        for d, etas in steps.items():
            t1 = penalties.horizon(grid, {**base, "dynamics": d})
            ts = flows.default_ts(t1, penalties.SAVES)
            configs = [{**base, "dynamics": d, "seed": s} for s in range(grid.seeds)]
            runs = ctx.sweep(
                penalties.STORE,
                penalties.build,
                configs,
                t1=t1,
                ts=ts,
                rtol=penalties.RTOL,
                max_steps=penalties.MAX_STEPS,
            )
            for run in runs:
                if run.status == "failed":
                    continue
                traj = run.load()
                seed = run.config["seed"]
                results[d, None, seed] = _best(test_error(traj.W, traj.truth), np.asarray(traj.ts))
                for eta in etas:

                    def compute(config=run.config, eta=eta):
                        flow, state0 = penalties.build(config)
                        steps_traj = flows.descend(flow, state0, step=eta, t1=t1, ts=ts)
                        return {"error": test_error(steps_traj.W, steps_traj.truth), "t": np.asarray(steps_traj.ts)}

                    stored = ctx.cached(
                        self.name, {"config": run.config, "step": eta, "t1": t1, "saves": len(ts)}, compute
                    )
                    results[d, eta, seed] = _best(stored["error"], stored["t"])
        self._figure(ctx, grid, steps, results)
        self._macros(ctx, grid, steps, results)

    @staticmethod
    def _mean(results, d, eta, seeds, index=0) -> float:
        values = [results[d, eta, s][index] for s in seeds if (d, eta, s) in results]
        return float(np.mean(values)) if values else float("nan")

    def _figure(self, ctx, grid, steps, results) -> None:
        seeds = range(grid.seeds)
        fig, axes = new_figure(2, width=3.3, height=2.7)
        labels = {"Adam": ("optax Adam", "Adam flow"), "gradient flow": ("gradient descent", "gradient flow")}
        for d, etas in steps.items():
            colour = penalties.COLOURS[d]
            for ax, index in zip(axes, (0, 1)):
                ax.plot(
                    etas,
                    [self._mean(results, d, eta, seeds, index) for eta in etas],
                    "o-",
                    color=colour,
                    label=labels[d][0],
                )
                ax.axhline(self._mean(results, d, None, seeds, index), color=colour, linestyle="--", label=labels[d][1])
        axes[0].set(
            xscale="log",
            yscale="log",
            xlabel=r"step size $\eta$",
            ylabel="best test error over time",
            title=f"depth 1 + ratio, $\\lambda$ = {grid.strength:g}",
        )
        axes[1].set(
            xscale="log",
            yscale="log",
            xlabel=r"step size $\eta$",
            ylabel=r"time of the best, $t = k\eta$",
            title="when it is reached",
        )
        for ax in axes:
            ax.legend(fontsize="small")
        ctx.figure(fig, "adam_steps")

    def _macros(self, ctx, grid, steps, results) -> None:
        seeds = range(grid.seeds)
        macros = {}
        for d, tag in (("Adam", "Adam"), ("gradient flow", "GD")):
            etas = steps[d]
            flow_best = self._mean(results, d, None, seeds)
            bests = [self._mean(results, d, eta, seeds) for eta in etas]
            smallest = bests[-1]
            lower = min(bests) < flow_best / penalties.SAME
            meets = max(smallest, flow_best) <= penalties.SAME * min(smallest, flow_best)
            macros |= {
                f"AdamSteps{tag}FlowBest": tex_number(flow_best),
                f"AdamSteps{tag}FlowTBest": tex_number(self._mean(results, d, None, seeds, 1)),
                f"AdamSteps{tag}LargestEta": tex_number(etas[0]),
                f"AdamSteps{tag}SmallestEta": tex_number(etas[-1]),
                f"AdamSteps{tag}LargestBest": tex_number(bests[0]),
                f"AdamSteps{tag}SmallestBest": tex_number(smallest),
                f"AdamSteps{tag}LargestTBest": tex_number(self._mean(results, d, etas[0], seeds, 1)),
                f"AdamSteps{tag}LargestIterations": tex_number(self._mean(results, d, etas[0], seeds, 1) / etas[0]),
                f"AdamSteps{tag}Verdict": (
                    "a finite-step effect" if lower else "a property of the flow" if meets else "neither"
                ),
            }
        ctx.macros(self.name, macros)
