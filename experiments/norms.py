r"""Where norms fail: Razin & Cohen 2020 (completion is where the nuclear-norm picture
breaks).

Claim. Complete $\begin{pmatrix} * & 1 \\ 1 & 0 \end{pmatrix}$ from $W_{12} = W_{21} = 1$, $W_{22} = 0$: every
completion has $\det W = -1$, and the minimum-nuclear-norm and minimum-Frobenius completions are
$W_{11} = 0$ ($\|W\|_* = 2$, $\|W\|_F = \sqrt 2$). For a deep product $W = W_N \cdots W_1$ ($N \ge 2$, width
2) from a balanced start ($W_{j+1}^T W_{j+1} = W_j W_j^T$), $\det W$ never changes sign: with
$W = U S V^T$ the end-to-end flow gives
$\frac{d}{dt} \log \det W = -N \operatorname{tr}(S^{(N-2)/N} U^T \nabla L(W) V)$, bounded. So from
$\det W(0) > 0$ the loss cannot reach 0, and as it falls, $\det W > 0$ gives
$|W_{11}| \ge W_{12} W_{21} / |W_{22}|$, while $L = \frac12 ((W_{12} - 1)^2 + (W_{21} - 1)^2 + W_{22}^2)
\ge \frac12 W_{22}^2$ gives $|W_{22}| \le \sqrt{2L}$: $|W_{11}| \ge W_{12} W_{21} / \sqrt{2L}$, and with $W_{12}, W_{21} \ge 1 - \sqrt{2L}$ exactly
$|W_{11}| \ge (1 - \sqrt{2L})^2 / \sqrt{2L}$, which is $1/\sqrt{2L}$ asymptotically (69.3 against 70.7 at
$L = 10^{-4}$). The unobserved entry, and with it every norm, diverges, and the effective rank
tends to 1: the implicit bias is towards low rank, not small norm.

Without balancedness the invariance is gone: for $N = 2$,
$\frac{d}{dt} \det W = -\det W_2 \operatorname{tr}(\operatorname{adj}(W_1) W_2^T \nabla L)
- \det W_1 \operatorname{tr}(W_1^T \operatorname{adj}(W_2) \nabla L)$, which is not zero when one factor is
singular and the other is not, so $\det W$ can cross zero; afterwards nothing stops the flow from reaching a
completion ($\det = -1$) with a finite $W_{11}$.

Setting. `flows.Problem.from_entries` with the three observations; `flows.Deep(depth, width=2)`, depths 2
and 3. Two inits, each redrawn (seed 0, 1, ...) until $\det W(0) > 0$, several draws each (`SCALES`): *balanced*
(`kind="balanced"`: the theorem's hypothesis, exact up to round-off) and *Gaussian* (i.i.d. factor entries
$N(0, 0.008^2)$, Razin's code, which is not balanced: the factors' imbalance is as large as the factors).
flows' Gaussian factors have entries $N(0, \text{scale}^2 / 2)$, so scale $= 0.008 \sqrt 2$ (`SCALE`, both
inits). Gradient flow to the stopping loss of `SCALES` (the default solver, `flows.Tsit5ThenExtrapolation`, relative
tolerance `RTOL` per state array), saved at `SAVES` log-spaced times. $\det W = \prod_j \det W_j$, from the
factors. Every run whose $\det W$ changes sign is solved again at `CHECK_RTOL`: a crossing at the same loss
(within the factor `SAME_LOSS`) is not the integrator's error.

Razin & Cohen's own setting (`RAZIN_LR`, `RAZIN_MSE`, `RAZIN_DEPTH`): gradient descent as in their code, learning
rate 5e-3 on the mean squared error over the three observed entries (a step of 5e-3 x 2/3 on L), depth 3 from their
Gaussian init, stopped at mean squared error 1e-4 ($L = 1.5 \times 10^{-4}$), every draw, against the flow from the
same init at the same loss and at its own stop. At their stop the bound is $1/\sqrt{2L} \approx 58$: an entry that
diverges as $L \to 0$ and one that settles at a finite value of that size look alike there; only the loss further
down tells them apart, which is what the flow, run to a far smaller loss, adds.

Measured along each run, against the loss: $|W_{11}|$, the bound $W_{12} W_{21} / |W_{22}|$ and
$1/\sqrt{2L}$, $\|W\|_*$, $\|W\|_F$, the effective rank, $\det W$; at the stop their values (medians over
draws), the number of draws whose $\det W$ changed sign, the loss where it did and $|\det W|$ just before.
The minimum-norm completions by `analysis.references` (cvxpy/Clarabel, numpy).

What the runs show (the values carry the numbers). From Razin's Gaussian init $\det W$
changes sign in most draws, often while the loss is still ~1 (a factor's determinant starts near zero and
drifts through it), and the flow then completes the matrix with a finite $W_{11}$: at depth 2 close to the
minimum-norm completion. From a balanced init at depth 3, $\det W$ stays positive, and $|W_{11}|$ follows
$1/\sqrt{2L}$ down to the stopping loss. At depth 2, where the bounded rate above has exponent 0, $\det W$
decays exponentially and reaches ~1e-20 at $L \sim 10^{-2}$, where the factors' round-off imbalance (1e-16
of their size, `...Imbalance`) is enough to carry it through zero; the crossing sits at the same loss at
`RTOL` and `CHECK_RTOL` (and with Tsit5 at 1e-13), so float64 rather than the integrator's tolerance ends
the theorem's regime there.

Verdicts per (init, depth): "det never changes sign" *holds* when no draw's does, else *fails*; "$|W_{11}|$
follows the bound and the norms diverge" *holds* when every draw whose sign did not change ends with
$|W_{11}| \ge W_{12} W_{21} / |W_{22}|$ and $\|W\|_* \ge$ `NORM_GROWTH` times the minimum nuclear norm,
*fails* when no draw does, *depends* in between.
"""

from __future__ import annotations

import numpy as np
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

import flows
from analysis import references

from ._base import Experiment, Group, new_figure, tex_number

ROWS, COLS, VALUES = np.array([0, 1, 1]), np.array([1, 0, 1]), np.array([1.0, 1.0, 0.0])
"""The observations: W_12 = W_21 = 1, W_22 = 0 (zero-based indices)."""
SCALE = 0.008 * np.sqrt(2.0)
"""Razin's factor entries N(0, 0.008^2): flows' Gaussian init has entries N(0, scale^2 / 2) for width 2."""
DEPTHS = (2, 3)
INITS = ("balanced", "gaussian")
SCALES = {False: dict(draws=10, stop_loss=1e-8, t1=1e11), True: dict(draws=3, stop_loss=1e-6, t1=1e9)}
"""Draws per (init, depth), the stopping loss and the time limit, by `ctx.quick`. The slowest run, balanced
depth 3, needs t ~ 2e9 to reach L = 1e-8 (|W_11| grows like a power of t)."""
RTOL = 1e-10
"""Tighter than the project's 1e-8: at 1e-8 the balanced depth-3 runs' det W changed sign at L ~ 2e-8, at
1e-6 at L ~ 1e-7, at 1e-10 and 1e-12 not at all."""
CHECK_RTOL = 1e-12
SAME_LOSS = 2.0
SAVES = 400
FIRST_SAVE = 1e-2
NORM_GROWTH = 10.0
RAZIN_LR = 5e-3
"""Razin & Cohen's learning rate in their code (noamrazin/imp_reg_dl_not_norms; the paper's text says 3e-3), on the
mean squared error over the observed entries."""
RAZIN_MSE = 1e-4
"""Their stopping rule: mean squared error at most this."""
RAZIN_DEPTH = 3
RAZIN_HORIZON = 1.5
"""The discrete runs go to this multiple of the time the flow from the same init took to their stopping loss."""
DISCRETE_SAVES = 300


def problem() -> flows.EntryProblem:
    """The 2 x 2 completion of [[*, 1], [1, 0]]."""
    return flows.Problem.from_entries((2, 2), ROWS, COLS, VALUES)


def start(flow: flows.Flow, kind: str, draw: int):
    """The `draw`-th initial state (counting from 0, over seeds 0, 1, ...) whose product has det > 0."""
    found, seed = -1, -1
    while found < draw:
        seed += 1
        state = flow.init(scale=SCALE, kind=kind, seed=seed)
        found += int(np.linalg.det(np.asarray(flow.parameterization.product(state))) > 0)
    return state


def build(config: dict):
    flow = flows.Flow(problem(), flows.Deep(depth=config["depth"], width=2))
    return flow, start(flow, config["init"], config["draw"])


def determinant(traj: flows.Trajectory) -> np.ndarray:
    """det W(t) as the product of the factors' determinants (each factor is O(1) where W is small)."""
    return np.prod([np.linalg.det(np.asarray(factor)) for factor in traj.states], axis=0)


def crossing(traj: flows.Trajectory) -> int | None:
    """The first saved index where det W <= 0 (it is > 0 at t = 0), or None."""
    nonpositive = np.flatnonzero(determinant(traj) <= 0)
    return int(nonpositive[0]) if nonpositive.size else None


def bound(W: np.ndarray) -> np.ndarray:
    """W_12 W_21 / |W_22|: what det W > 0 forces |W_11| to exceed."""
    return W[..., 0, 1] * W[..., 1, 0] / np.abs(W[..., 1, 1])


def final_row(traj: flows.Trajectory) -> dict[str, float]:
    """The end of one run: loss, |W_11|, the bound, 1/sqrt(2L), norms and effective rank."""
    W = traj.W[-1]
    s = traj.singular_values[-1]
    return {
        "loss": float(traj.loss[-1]),
        "w11": float(abs(W[0, 0])),
        "bound": float(bound(W)),
        "loss_bound": float(1.0 / np.sqrt(2.0 * traj.loss[-1])),
        "nuclear": float(s.sum()),
        "frobenius": float(np.linalg.norm(s)),
        "erank": float(traj.effective_rank[-1]),
    }


def imbalance(traj: flows.Trajectory) -> list[float]:
    r"""The factors' imbalance at t = 0 relative to their size: $\|W_{j+1}^T W_{j+1} - W_j W_j^T\|_F /
    (\|W_{j+1}\|_F^2 + \|W_j\|_F^2)$ for each j (round-off for a balanced init, O(1) for Gaussian factors)."""
    return [
        float(np.linalg.norm(P[0] - Q[0]) / (np.linalg.norm(P[0]) + np.linalg.norm(Q[0])))
        for P, Q in traj.conserved.values()
    ]


FINAL = ("loss", "w11", "bound", "loss_bound", "nuclear", "frobenius", "erank")
"""What `final_row` measures at the end of a run."""


def same_crossing(run, check) -> bool:
    """Whether the check run (tighter tolerance) changes det W's sign at a loss within `SAME_LOSS` of the run's (both
    measured: their `loss` and `crossing`, -1 for none)."""
    i, j = int(run["crossing"]), int(check["crossing"])
    return i >= 0 and j >= 0 and abs(np.log(check["loss"][j] / run["loss"][i])) <= np.log(SAME_LOSS)


class Norms(Experiment):
    name = "norms"
    title = "where norms fail (Razin & Cohen 2020): the 2 x 2 completion, |W_11| and the norms against the loss"

    @staticmethod
    def options(quick: bool, rtol: float) -> dict:
        scale = SCALES[quick]
        ts = np.concatenate([[0.0], np.geomspace(FIRST_SAVE, scale["t1"], SAVES)])
        return dict(t1=scale["t1"], ts=ts, stop_loss=scale["stop_loss"], rtol=rtol)

    def groups(self, quick):
        draws = SCALES[quick]["draws"]
        configs = [{"init": i, "depth": d, "draw": k} for i in INITS for d in DEPTHS for k in range(draws)]
        return [Group("runs", build, configs, self.options(quick, RTOL))]

    def followups(self, quick, results):
        """Every run whose det W changed sign, again at `CHECK_RTOL`."""
        crossed = results[results["crossing"] >= 0]
        configs = [
            {"init": r["init"], "depth": int(r["depth"]), "draw": int(r["draw"]), "check": True}
            for _, r in crossed.iterrows()
        ]
        return (
            [Group("sign changes, again at a tighter tolerance", build, configs, self.options(quick, CHECK_RTOL))]
            if configs
            else []
        )

    def measure(self, traj, config):
        j = crossing(traj)
        s = traj.singular_values
        return {
            "t": np.asarray(traj.ts),
            "loss": np.asarray(traj.loss),
            "w11": np.abs(traj.W[:, 0, 0]),
            "bound": bound(traj.W),
            "det": determinant(traj),
            "nuclear": s.sum(axis=1),
            "frobenius": np.linalg.norm(s, axis=1),
            "erank": np.asarray(traj.effective_rank),
            "crossing": -1 if j is None else j,
            "imbalance": max(imbalance(traj)),
            **{f"final/{k}": v for k, v in final_row(traj).items()},
        }

    def report(self, ctx, results):
        scale = SCALES[ctx.quick]
        check = results["check"].fillna(False).astype(bool) if "check" in results else False
        key = ["init", "depth", "draw"]
        runs = {tuple(r[key]): r for _, r in results[~check].iterrows()}
        checks = {tuple(r[key]): r for _, r in results[check].iterrows()} if "check" in results else {}

        p = problem()
        stored = ctx.cached(
            {
                "references": ("min_nuclear", "min_frobenius"),
                "problem": p,
                "options": references.CVXPY_OPTIONS["CLARABEL"],
            },
            lambda: {"nuclear": references.min_nuclear(p).X, "frobenius": references.min_frobenius(p).X},
            code=(references,),
        )
        min_nuclear = float(np.linalg.svd(stored["nuclear"], compute_uv=False).sum())
        min_frobenius = float(np.linalg.norm(stored["frobenius"]))

        summary = {}
        for init in INITS:
            for depth in DEPTHS:
                keys = [(init, depth, k) for k in range(scale["draws"])]
                rows = {k: {name: runs[k][f"final/{name}"] for name in FINAL} for k in keys}
                changed = [k for k in keys if runs[k]["crossing"] >= 0]
                follows = [
                    rows[k]["w11"] >= rows[k]["bound"] and rows[k]["nuclear"] >= NORM_GROWTH * min_nuclear
                    for k in keys
                    if runs[k]["crossing"] < 0
                ]
                summary[init, depth] = {
                    "median": {name: float(np.median([row[name] for row in rows.values()])) for name in FINAL},
                    "changed": len(changed),
                    "draws": len(keys),
                    "robust": sum(same_crossing(runs[k], checks[k]) for k in changed),
                    "cross_loss": [float(runs[k]["loss"][int(runs[k]["crossing"])]) for k in changed],
                    "det_before": [float(abs(runs[k]["det"][int(runs[k]["crossing"]) - 1])) for k in changed],
                    "imbalance": float(np.median([runs[k]["imbalance"] for k in keys])),
                    "sign_verdict": "holds" if not changed else "fails",
                    "bound_verdict": ("holds" if follows and all(follows) else "depends" if any(follows) else "fails"),
                }

        self._figure(ctx, runs, summary, min_nuclear, min_frobenius)
        values_discrete = self._discrete(ctx, runs, scale)
        values = {
            "draws": str(scale["draws"]),
            "stop loss": tex_number(scale["stop_loss"]),
            "rtol": tex_number(RTOL),
            "check rtol": tex_number(CHECK_RTOL),
            "scale": tex_number(SCALE / np.sqrt(2.0)),
            "min nuclear": tex_number(min_nuclear),
            "min frobenius": tex_number(min_frobenius),
            "min nuclear W11": tex_number(abs(float(stored["nuclear"][0, 0]))),
            "loss bound at 1e-4": tex_number(1.0 / np.sqrt(2.0 * 1e-4)),
            "exact bound at 1e-4": tex_number((1.0 - np.sqrt(2.0 * 1e-4)) ** 2 / np.sqrt(2.0 * 1e-4)),
            "bound loss": tex_number(1e-4),
        } | values_discrete
        for (init, depth), s in summary.items():
            key = f"{init}/depth {depth}"
            m = s["median"]
            values |= {
                f"{key}/final loss": tex_number(m["loss"]),
                f"{key}/W11": tex_number(m["w11"]),
                f"{key}/bound": tex_number(m["bound"]),
                f"{key}/loss bound": tex_number(m["loss_bound"]),
                f"{key}/nuclear": tex_number(m["nuclear"]),
                f"{key}/frobenius": tex_number(m["frobenius"]),
                f"{key}/erank": tex_number(m["erank"]),
                f"{key}/sign changed": "never" if not s["changed"] else f"{s['changed']} of {s['draws']}",
                f"{key}/sign robust": f"{s['robust']} of {s['changed']}",
                f"{key}/cross loss": tex_number(float(np.median(s["cross_loss"]))) if s["changed"] else "n/a",
                f"{key}/det before": tex_number(float(np.median(s["det_before"]))) if s["changed"] else "n/a",
                f"{key}/imbalance": tex_number(s["imbalance"]),
                f"{key}/verdict sign": s["sign_verdict"],
                f"{key}/verdict bound": s["bound_verdict"],
            }
            ctx.finding(
                f"Razin & Cohen ({init} init, depth {depth}): det W never changes sign",
                s["sign_verdict"],
                f"{s['changed']} of {s['draws']} draws changed sign",
            )
        ctx.values(self.name, values)
        ctx.table(
            self.name,
            "summary",
            "llrrrrrrrl",
            [
                "init",
                "depth",
                "final $L$",
                r"$|W_{11}|$",
                r"$\frac{W_{12} W_{21}}{|W_{22}|}$",
                r"$\frac{1}{\sqrt{2L}}$",
                r"$\|W\|_*$",
                "eff.\\ rank",
                r"$\det W$ changed sign",
                "verdicts (sign; bound)",
            ],
            [
                [
                    init,
                    str(depth),
                    tex_number(s["median"]["loss"]),
                    tex_number(s["median"]["w11"]),
                    tex_number(s["median"]["bound"]),
                    tex_number(s["median"]["loss_bound"]),
                    tex_number(s["median"]["nuclear"]),
                    tex_number(s["median"]["erank"]),
                    f"{s['changed']} of {s['draws']}",
                    f"{s['sign_verdict']}; {s['bound_verdict']}",
                ]
                for (init, depth), s in summary.items()
            ],
        )

    def _discrete(self, ctx, runs, scale) -> dict[str, str]:
        """Razin & Cohen's own setting: gradient descent on the mean squared error at their learning rate, from their
        Gaussian init, stopped at their MSE; against the flow from the same init at the same loss and at its stop."""
        step = RAZIN_LR * 2 / len(VALUES)  # GD on (1/m) sum r^2 at lr is GD on L = 1/2 sum r^2 at lr 2/m
        stop = RAZIN_MSE * len(VALUES) / 2
        rows = []
        for k in range(scale["draws"]):
            flow_run = runs["gaussian", RAZIN_DEPTH, k]
            reached = np.flatnonzero(flow_run["loss"] <= stop)
            if not reached.size:
                continue
            t1 = RAZIN_HORIZON * float(flow_run["t"][reached[0]])
            flow, state0 = build({"init": "gaussian", "depth": RAZIN_DEPTH, "draw": k})

            def compute(flow=flow, state0=state0, t1=t1):
                traj = flows.descend(flow, state0, step=step, t1=t1, ts=np.geomspace(step, t1, DISCRETE_SAVES))
                return {
                    "loss": np.asarray(traj.loss),
                    "w11": np.abs(traj.W[:, 0, 0]),
                    "det": determinant(traj),
                    "bound": bound(traj.W),
                }

            d = ctx.cached(
                {"descend": flow, "state0": state0, "step": step, "t1": t1, "saves": DISCRETE_SAVES},
                compute,
                code=(compute, determinant, bound),
            )
            at = np.flatnonzero(d["loss"] <= stop)
            if not at.size:
                continue
            i = at[0]
            # The flow at the same loss (interpolated in log-log along its saved path), and at its own stop.
            order = np.argsort(flow_run["loss"])
            w11_flow = float(
                np.exp(np.interp(np.log(d["loss"][i]), np.log(flow_run["loss"][order]), np.log(flow_run["w11"][order])))
            )
            rows.append(
                {
                    "w11": float(d["w11"][i]),
                    "loss": float(d["loss"][i]),
                    "flow": w11_flow,
                    "flow end": float(flow_run["w11"][-1]),
                    "flow end loss": float(flow_run["loss"][-1]),
                    "crossed": bool(np.any(d["det"][: i + 1] <= 0)),
                    "bound": float(d["bound"][i]),
                    "steps": float(d["loss"].size),
                }
            )
        if not rows:
            return {f"razin/{k}": "n/a" for k in ("draws", "w11", "flow w11", "flow end w11", "crossed", "lr", "mse")}
        median = {k: float(np.median([r[k] for r in rows])) for k in ("w11", "flow", "flow end", "flow end loss")}
        return {
            "razin/draws": str(len(rows)),
            "razin/lr": tex_number(RAZIN_LR),
            "razin/mse": tex_number(RAZIN_MSE),
            "razin/depth": str(RAZIN_DEPTH),
            "razin/w11": tex_number(median["w11"]),
            "razin/flow w11": tex_number(median["flow"]),
            "razin/flow end w11": tex_number(median["flow end"]),
            "razin/flow end loss": tex_number(median["flow end loss"]),
            "razin/bound at stop": tex_number(1.0 / np.sqrt(2 * stop)),
            "razin/stop loss": tex_number(stop),
            "razin/crossed": f"{sum(r['crossed'] for r in rows)} of {len(rows)}",
            "razin/relative gap": tex_number(float(np.median([abs(r["w11"] / r["flow"] - 1) for r in rows]))),
        }

    @staticmethod
    def _figure(ctx, runs, summary, min_nuclear, min_frobenius) -> None:
        fig, axes = new_figure(6, width=3.0, height=2.6, rows=2)
        colours = {(i, d): f"C{2 * INITS.index(i) + DEPTHS.index(d)}" for i in INITS for d in DEPTHS}
        label = {key: f"{key[0].capitalize()} init, depth {key[1]}" for key in colours}
        loss_grid = np.geomspace(min(r["loss"][-1] for r in runs.values()), 1.0, 100)
        for ax, init in zip(axes[:2], INITS):
            for (i, d, k), run in runs.items():
                if i != init:
                    continue
                ax.loglog(run["loss"], run["w11"], color=colours[i, d], lw=1.0)
                if k == 0:
                    ax.loglog(run["loss"], run["bound"], color=colours[i, d], ls="--", lw=0.9)
                j = int(run["crossing"])
                if j >= 0:
                    ax.plot(run["loss"][j], run["w11"][j], "x", color="k", ms=5)
            ax.loglog(loss_grid, 1.0 / np.sqrt(2.0 * loss_grid), ":", color="k")
            ax.set(
                xlabel="loss $L$",
                ylabel=r"$|W_{11}|$ (the unobserved entry)",
                title=f"{init.capitalize()} init, all {summary[init, DEPTHS[0]]['draws']} draws",
            )
            ax.legend(
                handles=[
                    Line2D([], [], color="k", label=r"$|W_{11}|$"),
                    Line2D([], [], color="k", ls="--", label=r"$W_{12} W_{21} / |W_{22}|$ (draw 0)"),
                    Line2D([], [], color="k", ls=":", label=r"$1/\sqrt{2L}$"),
                    Line2D([], [], color="k", ls="", marker="x", label=r"$\det W$ changes sign"),
                ],
                loc="lower right",
            )
        norms, erank, det, bars = axes[2:]
        for (i, d), colour in colours.items():
            run = runs[i, d, 0]
            norms.loglog(run["loss"], run["nuclear"], color=colour)
            norms.loglog(run["loss"], run["frobenius"], color=colour, ls="--", lw=0.9)
            erank.semilogx(run["loss"], run["erank"], color=colour, label=label[i, d])
            value = run["det"]
            det.loglog(run["loss"], np.where(value > 0, value, np.nan), color=colour)
            det.loglog(run["loss"], np.where(value < 0, -value, np.nan), color=colour, ls=":")
        norms.axhline(min_nuclear, color="0.5", lw=0.8)
        norms.axhline(min_frobenius, color="0.5", lw=0.8, ls="--")
        norms.set(xlabel="loss $L$", ylabel="norm of $W$", title="norms (draw 0)")
        norms.legend(
            handles=[
                Line2D([], [], color="k", label=r"$\|W\|_*$"),
                Line2D([], [], color="k", ls="--", label=r"$\|W\|_F$"),
                Line2D([], [], color="0.5", label=r"minimum-$\|W\|_*$ completion"),
                Line2D([], [], color="0.5", ls="--", label=r"minimum-$\|W\|_F$ completion"),
            ],
            loc="lower right",
        )
        erank.set(xlabel="loss $L$", ylabel="effective rank of $W$", title="effective rank (draw 0)")
        det.set(xlabel="loss $L$", ylabel=r"$|\det W|$", title=r"$\det W$ (draw 0)")
        det.legend(
            handles=[
                Line2D([], [], color="k", label=r"$\det W > 0$"),
                Line2D([], [], color="k", ls=":", label=r"$\det W < 0$"),
            ],
            loc="lower right",
        )
        keys = list(summary)
        positions = np.arange(len(keys))
        bars.bar(positions, [summary[k]["changed"] for k in keys], color=[colours[k] for k in keys])
        bars.bar(positions, [summary[k]["robust"] for k in keys], fill=False, hatch="//", edgecolor="k", lw=0)
        bars.set_xticks(positions, [f"{i}\ndepth {d}" for i, d in keys], fontsize=7)
        bars.yaxis.set_major_locator(MaxNLocator(integer=True))
        bars.set(
            ylabel="draws",
            ylim=(0, max(s["draws"] for s in summary.values())),
            xlabel=f"hatched: the same crossing at rtol {CHECK_RTOL:g}",
            title=r"draws where $\det W$ changed sign",
        )
        for ax in axes[:5]:
            ax.invert_xaxis()
        fig.legend(*erank.get_legend_handles_labels(), loc="outside lower center", ncols=4)
        ctx.figure(fig, "norms")
