r"""Finite steps against the flow (seed 001): how far gradient descent and discrete Adam stray from their flows.

Claims. Gradient descent with step $\eta$ tracks gradient flow to $O(\eta)$ and the modified flow
$\theta' = -(g + \tfrac{\eta}{2} H g)$ (backward error analysis) to $O(\eta^2)$; optax's Adam with
$1 - \beta_1 = a\eta$, $1 - \beta_2 = b\eta$ tracks the Adam flow to $O(\eta)$. Measured as the largest
difference of the parameters over saved times on $[0, 2]$, against flows solved at rtol $10^{-12}$, for a
range of $\eta$; the slopes of $\log$ error against $\log \eta$ are the orders.
"""

from __future__ import annotations

import numpy as np

import flows

from ._base import Context, Experiment, new_figure, slope, tex_number

T1 = 2.0
TS = np.linspace(0.0, T1, 9)
PROBLEM = dict(n=5, m=12, rank=2, seed=0)
ADAM = dict(a=10.0, b=1.0, eps=1e-8)
TIGHT = dict(rtol=1e-12, solver="dopri8")


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

    def run(self, ctx: Context) -> None:
        # Powers of two: every saved time (multiples of 1/4) is then exactly a whole number of steps, so the
        # gaps are measured at the same times (a step count rounded to the nearest would shift them by up to eta/2).
        etas = 2.0 ** -np.arange(7, 11 if ctx.quick else 14)
        gradient, adam = {"name": "gradient"}, {"name": "adam", **ADAM}
        configs = [{"dynamics": gradient}, {"dynamics": adam}]
        configs += [{"dynamics": {"name": "modified", "eta": float(eta)}} for eta in etas]
        runs = ctx.sweep(
            self.name, build, configs, t1=T1, ts=TS, rtol=TIGHT["rtol"], solver=flows.solver_by_name(TIGHT["solver"])
        )
        flow_params = {
            f"{r.config['dynamics']['name']}{r.config['dynamics'].get('eta', '')}": _params(r.load().states)
            for r in runs
        }

        def steps(dynamics, eta):
            flow, state0 = build({"dynamics": dynamics})
            return {"params": _params(flows.descend(flow, state0, step=float(eta), t1=T1, ts=TS).states)}

        gaps = {"gd-flow": [], "gd-modified": [], "adam": []}
        for eta in etas:
            gd = ctx.cached(self.name, {"descend": gradient, "eta": float(eta)}, lambda: steps(gradient, eta))["params"]  # noqa: B023
            adam_steps = ctx.cached(self.name, {"descend": adam, "eta": float(eta)}, lambda: steps(adam, eta))["params"]  # noqa: B023
            gaps["gd-flow"].append(np.abs(gd - flow_params["gradient"]).max())
            gaps["gd-modified"].append(np.abs(gd - flow_params[f"modified{float(eta)}"]).max())
            gaps["adam"].append(np.abs(adam_steps - flow_params["adam"]).max())
        orders = {k: slope(etas, v) for k, v in gaps.items()}

        fig, (ax,) = new_figure(1, width=3.6, height=2.8)
        labels = {
            "gd-flow": "gradient descent vs gradient flow",
            "gd-modified": "gradient descent vs modified flow",
            "adam": "discrete Adam vs Adam flow",
        }
        for (key, gap), marker in zip(gaps.items(), "osd"):
            ax.loglog(etas, gap, marker=marker, label=f"{labels[key]} (slope {orders[key]:.2f})")
        ax.set(
            xlabel=r"step size $\eta$",
            ylabel=r"$\max_t \|\theta_\eta(t) - \theta(t)\|_\infty$",
            title="finite steps against the flows",
        )
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2))
        ctx.figure(fig, "finite_steps")

        at = int(np.argmin(np.abs(np.log(etas / 1e-3))))
        ctx.macros(
            self.name,
            {
                "StepsOrderGDFlow": tex_number(orders["gd-flow"], 3),
                "StepsOrderGDModified": tex_number(orders["gd-modified"], 3),
                "StepsOrderAdam": tex_number(orders["adam"], 3),
                "StepsGapGDFlowAtMilli": tex_number(gaps["gd-flow"][at]),
                "StepsGapGDModifiedAtMilli": tex_number(gaps["gd-modified"][at]),
                "StepsGapAdamAtMilli": tex_number(gaps["adam"][at]),
                "StepsEtaMin": f"\\ensuremath{{2^{{-{int(-np.log2(etas[-1]))}}}}}",
                "StepsEtaMax": f"\\ensuremath{{2^{{-{int(-np.log2(etas[0]))}}}}}",
                "StepsEtaMilli": f"\\ensuremath{{2^{{-{int(-np.log2(etas[at]))}}}}}",
            },
        )
