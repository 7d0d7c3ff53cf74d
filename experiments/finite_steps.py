r"""Finite steps against the flow: how far gradient descent and discrete Adam stray from their flows.

Claims. Gradient descent with step $\eta$ tracks gradient flow to $O(\eta)$ and the modified flow
$\theta' = -(g + \tfrac{\eta}{2} H g)$ (backward error analysis) to $O(\eta^2)$; optax's Adam with
$1 - \beta_1 = a\eta$, $1 - \beta_2 = b\eta$ tracks the Adam flow to $O(\eta)$. Measured as the largest
difference of the parameters over saved times on $[0, 2]$, against flows solved at rtol $10^{-12}$, for a
range of $\eta$; the slopes of $\log$ error against $\log \eta$ are the orders. Verdict per pair: *holds* when
the fitted slope is within 0.1 of the order the theory gives.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

import flows

from ._base import Experiment, Group, new_figure, slope, tex_number

T1 = 2.0
TS = np.linspace(0.0, T1, 9)
PROBLEM = dict(n=5, m=12, rank=2, seed=0)
ADAM = dict(a=10.0, b=1.0, eps=1e-8)
TIGHT = dict(rtol=1e-12, solver="dopri8")
GRADIENT = {"name": "gradient"}
ADAM_FLOW = {"name": "adam", **ADAM}


def _flow(dynamics: dict) -> flows.Flow:
    return flows.Flow.from_description(
        flows.sensing(**PROBLEM), {"parameterization": {"name": "symmetric"}, "dynamics": dynamics}
    )


def build(config):
    flow = _flow(config["dynamics"])
    return flow, flow.init(scale=0.5, kind="gaussian", seed=1)


def _params(states):
    return states["params"] if isinstance(states, dict) else states


class FiniteSteps(Experiment):
    name = "finite_steps"
    title = "gradient descent and discrete Adam against their flows (orders 1 and 2)"

    @staticmethod
    def etas(quick: bool) -> np.ndarray:
        # Powers of two: every saved time (multiples of 1/4) is then exactly a whole number of steps, so the
        # gaps are measured at the same times (a step count rounded to the nearest would shift them by up to eta/2).
        return 2.0 ** -np.arange(7, 11 if quick else 14)

    def groups(self, quick):
        configs = [{"dynamics": GRADIENT}, {"dynamics": ADAM_FLOW}]
        configs += [{"dynamics": {"name": "modified", "eta": float(eta)}} for eta in self.etas(quick)]
        options = dict(t1=T1, ts=TS, rtol=TIGHT["rtol"], solver=flows.solver_by_name(TIGHT["solver"]))
        return [Group("flows", build, configs, options)]

    def measure(self, traj, config):
        return {"params": _params(traj.states)}

    def report(self, ctx, results):
        etas = self.etas(ctx.quick)
        flow_params = {
            f"{row['dynamics.name']}{row['dynamics.eta'] if pd.notna(row.get('dynamics.eta')) else ''}": row["params"]
            for _, row in results.iterrows()
        }

        def steps(dynamics, eta):
            flow, state0 = build({"dynamics": dynamics})
            return ctx.cached(
                {"descend": flow, "state0": state0, "step": float(eta), "t1": T1, "ts": TS},
                lambda: {"params": _params(flows.descend(flow, state0, step=float(eta), t1=T1, ts=TS).states)},
                code=(_params,),
            )["params"]

        gaps = {"gd-flow": [], "gd-modified": [], "adam": []}
        for eta in etas:
            gd, adam_steps = steps(GRADIENT, eta), steps(ADAM_FLOW, eta)
            gaps["gd-flow"].append(np.abs(gd - flow_params["gradient"]).max())
            gaps["gd-modified"].append(np.abs(gd - flow_params[f"modified{float(eta)}"]).max())
            gaps["adam"].append(np.abs(adam_steps - flow_params["adam"]).max())
        orders = {k: slope(etas, v) for k, v in gaps.items()}
        # One text per slope, two decimals (orders are compared with 1 and 2 to within 0.1): the legend, the paper's
        # values and the findings read the same digits.
        shown = {k: f"{v:.2f}" for k, v in orders.items()}

        fig, (ax,) = new_figure(1, width=3.6, height=2.8)
        labels = {
            "gd-flow": "gradient descent vs gradient flow",
            "gd-modified": "gradient descent vs modified flow",
            "adam": "discrete Adam vs Adam flow",
        }
        for (key, gap), marker in zip(gaps.items(), "osd"):
            ax.loglog(etas, gap, marker=marker, label=f"{labels[key]} (slope {shown[key]})")
        ax.set(
            xlabel=r"step size $\eta$",
            ylabel=r"$\max_t \|\theta_\eta(t) - \theta(t)\|_\infty$",
            title="finite steps against the flows",
        )
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2))
        ctx.figure(fig, "finite_steps")

        at = int(np.argmin(np.abs(np.log(etas / 1e-3))))
        ctx.values(
            self.name,
            {
                "order/gd flow": f"\\ensuremath{{{shown['gd-flow']}}}",
                "order/gd modified": f"\\ensuremath{{{shown['gd-modified']}}}",
                "order/adam": f"\\ensuremath{{{shown['adam']}}}",
                "gap at milli/gd flow": tex_number(gaps["gd-flow"][at]),
                "gap at milli/gd modified": tex_number(gaps["gd-modified"][at]),
                "gap at milli/adam": tex_number(gaps["adam"][at]),
                "eta min": f"\\ensuremath{{2^{{-{int(-np.log2(etas[-1]))}}}}}",
                "eta max": f"\\ensuremath{{2^{{-{int(-np.log2(etas[0]))}}}}}",
                "eta milli": f"\\ensuremath{{2^{{-{int(-np.log2(etas[at]))}}}}}",
            },
        )
        for key, expected in (("gd-flow", 1), ("gd-modified", 2), ("adam", 1)):
            ctx.finding(
                f"finite steps: {labels[key]} to order {expected}",
                "holds" if abs(orders[key] - expected) <= 0.1 else "fails",
                f"slope {shown[key]}",
            )
