r"""Finite steps with the ratio penalty: budgets in steps, and whether the benefit is a finite-step effect.

Two questions the flow limit cannot answer, under the validation protocol of `_protocol` (the completion
experiment's problems, splits, penalty and strength grid; depth 1 from the zero-filled training entries).

(A) Budgets in steps (claims 2 and 3 about speed). A practitioner pays in steps, each method at its own largest
stable step size. The methods, as they are run in practice: gradient descent; Adam with $\beta_1 = 0.9$,
$\beta_2 = 0.999$ (in flows' rates $a = 0.1/\eta$, $b = 0.001/\eta$, `Adam`'s discrete counterpart); RMSProp with
the same $\beta_2$ (Adam's denominator alone); momentum with the same $\beta_1$ (its debiased numerator alone); eps
as in the flows. Each runs `BUDGETS` steps. A step size is *stable* when every strength's run of the first
`STABILITY_SEEDS` seeds stays finite and ends with an objective below its start; the method's *largest stable step*
is measured on its grid (`STEP_SIZES`, from the largest down to the first stable one), not assumed, and every seed
runs there (a seed's run that diverges there is left out of its choice). At it, the strength and the stopping step
(within the budget, and within a tenth of it) are chosen on validation. Verdicts: claim 2 *holds on a step budget*
when gradient descent is *higher* than Adam (`_protocol.Paired`), claim 3 when momentum is *higher* than RMSProp;
*fails* when *the same* or *lower*; *not resolved* otherwise.

(B) Finite steps against their flows (claim 8). Discrete Adam with the flow's rates tied to the step,
$\beta_1 = 1 - a\eta$, $\beta_2 = 1 - b\eta$ (a = 10, b = 1: the Adam flow as $\eta \to 0$), and gradient descent,
at decreasing steps `LIMIT_STEPS`, to the flows' horizons, the strength and stop chosen on validation, against the
flows themselves (the same runs as the completion experiment's). Verdict: *a property of the flow* when the smallest
step is *the same* as the flow and no step is *lower* than the flow; *a finite-step effect* when some step is
*lower*; *not resolved* otherwise.
"""

from __future__ import annotations

import dataclasses
import inspect

import jax
import matplotlib.ticker
import numpy as np
import pandas as pd

import flows

from ._base import Context, Experiment, Group, new_figure, tex_count, tex_number
from ._completion import COLOURS, DYNAMICS, SAVES, SCALES, Scale, build, observations
from ._protocol import CONFIDENCE, Paired, Split, choose

BUDGETS = {False: 10_000, True: 2_000}
"""Steps of every discrete run of part (A), by quick."""
STEP_SIZES = {
    "gradient descent": (2.0, 1.0, 0.5, 0.25, 0.125, 0.0625),
    "Adam": (0.3, 0.1, 0.03, 0.01, 0.003, 0.001),
    "RMSProp": (0.3, 0.1, 0.03, 0.01, 0.003, 0.001),
    "momentum": (2.0, 1.0, 0.5, 0.25, 0.125, 0.0625),
}
"""Each method's step sizes, largest first (gradient descent's stability limit is near 2 / the largest curvature of
the data loss, which is 1 on observed entries, plus the penalty's; the adaptive methods move each coordinate by about
the step size)."""
STABILITY_SEEDS = 2
"""The seeds whose runs at every strength decide whether a step size is stable."""
BETA1, BETA2 = 0.9, 0.999
HEADERS = {
    "budget": ["A vs B", "of the budget", "A / B: geometric mean [95\\,\\% CI]", "B lower in", "A is"],
    "limit": ["method", "step $\\eta$", "test error (median)", "step / flow: geometric mean [interval]", "step is"],
}
LIMIT_STEPS = {"Adam": (0.05, 0.01, 0.002), "gradient flow": (1.0, 0.2, 0.05)}
"""Part (B): the steps of discrete Adam (a = 10, so a eta < 1) and of gradient descent, largest first."""


@dataclasses.dataclass(frozen=True)
class Setting:
    """One scale (the completion experiment's problems, seeds, strengths and horizons), the methods of part (A) and
    how many of each one's step sizes (largest first), and part (B)'s steps of each dynamics' discrete counterpart."""

    scale: Scale
    methods: tuple[str, ...]
    step_sizes: int
    limit_steps: dict[str, tuple[float, ...]]


SETTINGS = {
    False: (
        Setting(SCALES["n = 30"][False], ("gradient descent", "Adam", "RMSProp", "momentum"), 6, LIMIT_STEPS),
        Setting(SCALES["n = 100"][False], (), 0, {"Adam": (0.05, 0.01)}),
    ),
    True: (
        Setting(
            SCALES["n = 30"][True],
            ("gradient descent", "Adam", "RMSProp", "momentum"),
            3,
            {"Adam": (0.05, 0.01), "gradient flow": (1.0, 0.2)},
        ),
        Setting(SCALES["n = 100"][True], (), 0, {"Adam": (0.05, 0.01)}),
    ),
}
"""By quick. At n = 100 part (A) is not run (a step of the ratio's gradient costs an SVD of W; the budgets of every
method at every step size and strength are beyond this project's compute), and part (B) for discrete Adam only, at
two steps (the smallest, 0.002, takes ten thousand steps of a 100 x 100 SVD each to the horizon: minutes a run on a
shared core)."""


def practitioner(method: str, step: float) -> dict:
    """A discrete method with fixed betas as a flow description's dynamics, at step `step`."""
    eps = DYNAMICS["Adam"]["eps"]
    return {
        "gradient descent": {"name": "gradient"},
        "Adam": {"name": "adam", "a": (1 - BETA1) / step, "b": (1 - BETA2) / step, "eps": eps},
        "RMSProp": {"name": "rmsprop", "b": (1 - BETA2) / step, "eps": eps},
        "momentum": {"name": "momentum", "a": (1 - BETA1) / step},
    }[method]


def base(scale: Scale, seed: int, strength: float, dynamics: str) -> dict:
    return scale.config(seed, parameterization="depth 1", penalty="ratio", strength=strength, dynamics=dynamics)


def discrete(ctx: Context, config: dict, step: float, t1: float, override: dict | None = None) -> dict:
    """One discrete run (the configuration's flow's discrete counterpart at `step`, its dynamics replaced by
    `override`) saved at `SAVES` log-spaced times up to t1, measured as the flows are; stored once."""
    flow, state0 = build(config)
    if override is not None:
        params = flow.params(state0)
        flow = flows.Flow.from_description(flow.problem, {**flow.describe(), "dynamics": override})
        state0 = flow.dynamics.init(params)
    ts = flows.default_ts(t1, SAVES)
    parts = observations(config)

    def compute() -> dict[str, np.ndarray]:
        try:
            traj = flows.descend(flow, state0, step=step, t1=t1, ts=ts)
        except flows.SolverError:
            return {"diverged": np.asarray(True)}
        objective = jax.vmap(flow.objective)(traj.states)
        return {
            "diverged": np.asarray(False),
            "t": np.asarray(traj.ts),
            **parts.errors(np.asarray(traj.W)),
            "objective": np.asarray(objective),
        }

    # Keyed by what computes the run and by what measures it: the held-out entries and the measuring code.
    measuring = [inspect.getsource(f) for f in (discrete, Split.errors, Split.test_error, Split.validation_error)]
    held = (parts.rows, parts.cols, parts.values)
    return ctx.cached(
        {"descend": flow, "state0": state0, "step": step, "ts": ts, "held out": held, "measuring": measuring}, compute
    )


class Steps(Experiment):
    name = "steps"
    title = "budgets in steps at each method's largest stable step (claims 2, 3) and finite steps against the flows (8)"

    def groups(self, quick):
        """The flows of part (B) (shared with the completion experiment by their keys)."""
        out = []
        for setting in SETTINGS[quick]:
            for d in setting.limit_steps:
                configs = [
                    base(setting.scale, s, lam, d)
                    for s in range(setting.scale.seeds)
                    for lam in setting.scale.strengths
                ]
                out.append(
                    Group(
                        f"n = {setting.scale.n}, {d} (flow)",
                        build,
                        configs,
                        setting.scale.options(configs[0]),
                    )
                )
        return out

    def measure(self, traj, config):
        """The flows' errors as the discrete runs' (`Split.errors`)."""
        return {"t": np.asarray(traj.ts), **observations(config).errors(np.asarray(traj.W))}

    def report(self, ctx, results):
        budget = BUDGETS[ctx.quick]
        values = {
            "budget": tex_count(budget),
            "beta1": f"{BETA1:g}",
            "beta2": f"{BETA2:g}",
            "stability seeds": str(STABILITY_SEEDS),
            **{f"grid/{method}": ", ".join(f"{step:g}" for step in steps) for method, steps in STEP_SIZES.items()},
        }
        for setting in SETTINGS[ctx.quick]:
            key = setting.scale.label
            if setting.methods:
                budgets, stable = self._budgets(ctx, setting)
                values |= self._budget_values(ctx, setting, key, budgets, stable)
            values |= self._limit_values(ctx, setting, key, results[results["n"] == setting.scale.n])
        ctx.values(self.name, values)

    # -- (A) ------------------------------------------------------------------------------------------------
    def _budgets(self, ctx, setting) -> tuple[dict, dict]:
        """Per method: the largest stable step, and per seed and budget the validation-chosen test error there."""
        runs, stable = {}, {}

        def run(method, step, seeds):
            for s in seeds:
                for lam in setting.scale.strengths:
                    if (method, step, s, lam) not in runs:
                        config = base(setting.scale, s, lam, "gradient flow")
                        t1 = BUDGETS[ctx.quick] * step
                        runs[method, step, s, lam] = discrete(ctx, config, step, t1, practitioner(method, step))
            return [runs[method, step, s, lam] for s in seeds for lam in setting.scale.strengths]

        trial = range(min(STABILITY_SEEDS, setting.scale.seeds))
        for method in setting.methods:
            stable[method] = next(
                (
                    step
                    for step in STEP_SIZES[method][: setting.step_sizes]
                    if all(_settled(r) for r in run(method, step, trial))
                ),
                None,
            )
            if stable[method] is not None:
                run(method, stable[method], range(setting.scale.seeds))
        budgets = {}
        for method, step in stable.items():
            if step is None:
                continue
            for fraction, label in ((1.0, "budget"), (0.1, "tenth")):
                limit = fraction * BUDGETS[ctx.quick] * step * (1 + 1e-9)
                per_seed = []
                for s in range(setting.scale.seeds):
                    candidates = []
                    for lam in setting.scale.strengths:
                        r = runs[method, step, s, lam]
                        if bool(r["diverged"]):
                            continue
                        keep = r["t"] <= limit
                        candidates.append({k: r[k][keep] for k in ("t", "validation", "test")})
                    per_seed.append(choose(candidates).test if candidates else np.nan)
                budgets[method, label] = np.array(per_seed)
        return budgets, stable

    def _budget_values(self, ctx, setting, key, budgets, stable) -> dict[str, str]:
        values = {f"{key}/seeds": str(setting.scale.seeds)}
        for method in setting.methods:
            step = stable[method]
            values[f"{key}/{method}/largest stable step"] = "none" if step is None else f"{step:g}"
            for label in ("budget", "tenth"):
                e = budgets.get((method, label))
                values[f"{key}/{method}/{label}/median"] = "n/a" if e is None else tex_number(float(np.nanmedian(e)))
        # A method stable at its grid's largest step might be stable at a larger one: the grid, not the method, set it.
        capped = [method for method in setting.methods if stable[method] == STEP_SIZES[method][0]]
        values[f"{key}/capped by the grid"] = " and ".join(capped) if capped else "none"
        rows = []
        for claim, (a, b), rule in ((2, ("gradient descent", "Adam"), "two"), (3, ("momentum", "RMSProp"), "three")):
            for label in ("budget", "tenth"):
                p = None
                if (a, label) in budgets and (b, label) in budgets:  # a seed whose every run diverged is left out
                    p = Paired.over_common(budgets[a, label], budgets[b, label])
                if p is None:
                    values |= {
                        f"{key}/{what}": "n/a"
                        for what in (
                            f"verdict/{rule}/{label}",
                            f"compare/{rule}/{label}",
                            f"compare/{rule}/{label}/wins",
                        )
                    }
                    continue
                verdict = {
                    "higher": "holds on a step budget",
                    "the same": "fails",
                    "lower": "fails",
                    "not resolved": "not resolved",
                }[p.verdict]
                values |= {
                    f"{key}/verdict/{rule}/{label}": verdict,
                    f"{key}/compare/{rule}/{label}": p.factor,
                    f"{key}/compare/{rule}/{label}/wins": str(p.losses),
                }
                rows.append(
                    [
                        f"{a} vs {b}",
                        "all" if label == "budget" else "a tenth",
                        p.factor,
                        f"{p.losses}/{len(p.d)}",
                        p.verdict,
                    ]
                )
                if label == "budget":
                    ctx.finding(
                        f"claim {claim} on a budget of {BUDGETS[ctx.quick]} steps (n = {setting.scale.n}): {a} slower than {b}",
                        verdict,
                        f"{a} / {b}: {p.factor}",
                    )
        self._table(ctx, "budget", setting, rows)
        return values

    # -- (B) ------------------------------------------------------------------------------------------------
    def _limit_values(self, ctx, setting, key, flows_table: pd.DataFrame) -> dict[str, str]:
        values, rows = {}, []
        for d, steps in setting.limit_steps.items():
            t1 = setting.scale.horizon(d)
            flow_errors = []
            for s in range(setting.scale.seeds):
                runs = flows_table[(flows_table["dynamics"] == d) & (flows_table["seed"] == s)]
                finished = runs[runs["status"] != "failed"]
                # A failed candidate makes the flow n/a for the seed, as in the completion experiment.
                complete = len(finished) == len(runs) and len(runs) > 0
                candidates = [{k: r[k] for k in ("t", "validation", "test")} for _, r in finished.iterrows()]
                flow_errors.append(choose(candidates).test if complete else np.nan)
            flow_errors = np.array(flow_errors)
            by_step, diverged = {}, dict.fromkeys(steps, 0)
            for step in steps:
                per_seed = []
                for s in range(setting.scale.seeds):
                    candidates = [
                        discrete(ctx, base(setting.scale, s, lam, d), step, t1) for lam in setting.scale.strengths
                    ]
                    finished = [c for c in candidates if not bool(c["diverged"])]
                    diverged[step] += len(candidates) - len(finished)
                    per_seed.append(choose(finished).test if finished else np.nan)
                by_step[step] = np.array(per_seed)
            # One claim reads every step's comparison: each interval at the Bonferroni-widened confidence.
            confidence = 1 - (1 - CONFIDENCE) / len(steps)
            paired = {
                step: Paired.of(e, flow_errors, confidence)
                for step, e in by_step.items()
                if np.all(np.isfinite(e)) and np.all(np.isfinite(flow_errors))
            }
            smallest = paired.get(steps[-1])
            lower = any(p.verdict == "lower" for p in paired.values())
            verdict = (
                "a finite-step effect"
                if lower
                else "a property of the flow"
                if smallest is not None and smallest.verdict == "the same"
                else "not resolved"
            )
            name = "discrete Adam" if d == "Adam" else "gradient descent"
            values |= {
                f"{key}/limit/{name}/verdict": verdict,
                f"{key}/limit/{name}/flow median": tex_number(float(np.median(flow_errors))),
                f"{key}/limit/{name}/steps": ", ".join(f"{s:g}" for s in steps),
                f"{key}/limit/{name}/diverged": str(sum(diverged.values())),
            }
            for which, step in (("largest", steps[0]), ("smallest", steps[-1])):
                p = paired.get(step)
                values |= {
                    f"{key}/limit/{name}/{which}/step": f"{step:g}",
                    f"{key}/limit/{name}/{which}/median": tex_number(float(np.median(by_step[step]))),
                    f"{key}/limit/{name}/{which}/factor": "n/a" if p is None else p.factor,
                    f"{key}/limit/{name}/{which}/verdict": "n/a" if p is None else p.verdict,
                }
            rows.append([name, "the flow", tex_number(float(np.median(flow_errors))), "--", "--"])
            rows += [
                [
                    name,
                    f"{step:g}",
                    tex_number(float(np.median(by_step[step]))),
                    paired[step].factor if step in paired else "n/a",
                    paired[step].verdict if step in paired else "n/a",
                ]
                for step in steps
            ]
            ctx.finding(
                f"claim 8 (n = {setting.scale.n}): the ratio's result under {name} is a finite-step effect",
                verdict,
                f"smallest step / flow: {smallest.factor if smallest else 'n/a'}",
            )
            self._limit_figure(ctx, setting, name, steps, by_step, flow_errors)
        self._table(ctx, "limit", setting, rows)
        return values

    def _table(self, ctx, kind: str, setting, rows) -> None:
        ctx.table(self.name, f"{kind}-{setting.scale.label}", "lllll", HEADERS[kind], rows)

    @staticmethod
    def _limit_figure(ctx, setting, name, steps, by_step, flow_errors) -> None:
        fig, (ax,) = new_figure(1, width=3.4, height=2.7)
        colour = COLOURS["Adam"] if name == "discrete Adam" else COLOURS["gradient flow"]
        for s in range(setting.scale.seeds):
            ax.plot(steps, [by_step[step][s] for step in steps], "-", color=colour, lw=0.6, alpha=0.5)
            ax.plot([min(steps) / 3], [flow_errors[s]], "_", color="k", ms=8)
        ax.plot(steps, [np.median(by_step[step]) for step in steps], "o-", color=colour, label=f"{name} (median)")
        ax.plot([min(steps) / 3], [np.median(flow_errors)], "D", color="k", label="the flow (median)")
        ax.set(
            xscale="log",
            yscale="log",
            xlabel=r"step size $\eta$",
            ylabel="test error at the validation-chosen point",
            title=f"$n = {setting.scale.n}$",
        )
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xticks([min(steps) / 3, *steps], ["flow", *(f"{step:g}" for step in steps)])
        fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncols=2, fontsize="small")
        ctx.figure(fig, f"steps-limit-{name.split()[-1].lower()}-{setting.scale.label}")


def _settled(run: dict) -> bool:
    """A stable run: finite throughout and its objective lower at the end than at the start."""
    return (
        not bool(run["diverged"])
        and bool(np.all(np.isfinite(run["objective"])))
        and (run["objective"][-1] < run["objective"][0])
    )
