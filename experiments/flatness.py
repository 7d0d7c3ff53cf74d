r"""Flat minima (Ding, Drusvyatskiy, Fazel, Harchaoui): where the $UV^T$ flow lands against the flattest
interpolant, under uniform and non-uniform sampling, and the bounds (7) and (8) of the flatness report.

Claims. For $f(L, R) = \|\mathcal{A}(L R^T) - b\|^2$ the scaled Hessian trace is
$\operatorname{str} D^2 f(L, R) = 2m (\|D_1 L\|_F^2 + \|D_2 R\|_F^2)$ with
$D_1 = (\sum_i A_i A_i^T / (m d_2))^{1/2}$, $D_2 = (\sum_i A_i^T A_i / (m d_1))^{1/2}$ (for completion: the
square roots of the row and column sampling rates); the flattest interpolant minimises the weighted nuclear
norm $\|D_1 X D_2\|_*$ subject to $\mathcal{A}(X) = b$, and its str is $4m \|D_1 X_\flat D_2\|_*$
(analysis.flatness). Question: does gradient flow on $W = U V^T$ from a small balanced init land at (or
near) the flattest interpolant? With $\alpha_1 I \preceq D_i \preceq \alpha_2 I$ ($i = 1, 2$) and
$\kappa = \alpha_2 / \alpha_1$, Ding et al.'s theorem says the flattest pair $(L_\flat, R_\flat)$ is

    (7) nearly norm-minimal:
        $\|L_\flat\|_F^2 + \|R_\flat\|_F^2 \le \kappa^2 \min_{\mathcal{A}(LR^T) = b} (\|L\|_F^2 + \|R\|_F^2)$,
    (8) nearly balanced: $\|L_\flat^T L_\flat - R_\flat^T R_\flat\|_* \le 2 (\kappa^2 - 1) \|M_\natural\|_*$.

What is measured for them, derived again. The minimum in (7) over factorizations of width $k \ge$ rank is
$2 \min \{\|X\|_* : \mathcal{A}(X) = b\}$ (since $\|X\|_* = \min_{LR^T = X} (\|L\|^2 + \|R\|^2)/2$), so (7)'s
ratio is $(\|L_\flat\|^2 + \|R_\flat\|^2) / (2 \|X_{\mathrm{nuc}}\|_*)$, against $\kappa^2$. In (8), $M_\natural$ is
the ground truth ($b = \mathcal{A}(M_\natural)$): their lemma bounds the imbalance by
$(1 - \kappa^{-2}) (\|L_\flat\|^2 + \|R_\flat\|^2)$; the step behind (7) gives
$\|L_\flat\|^2 + \|R_\flat\|^2 \le \kappa^2 (\|L\|^2 + \|R\|^2)$ for every interpolant $(L, R)$; and the balanced
factorization of $M_\natural$ has $\|L\|^2 + \|R\|^2 = 2 \|M_\natural\|_*$. Hence the bound
$2 (\kappa^2 - 1) \|M_\natural\|_*$, and (8)'s ratio is
$\|L_\flat^T L_\flat - R_\flat^T R_\flat\|_* / \|M_\natural\|_*$, against $2(\kappa^2 - 1)$. Here $\alpha_1$,
$\alpha_2$ are the extreme eigenvalues of $D_1$ and $D_2$ together, and $(L_\flat, R_\flat)$ is
`analysis.flatness.flattest_factors` of the cvxpy/Clarabel reference (width n, so the convex relaxation is
exact). The flow's own pair is balanced ($U^T U - V^T V$ is conserved and zero at a
balanced start), so (8) is trivial for it; its norm ratio is reported beside the flattest pair's.

Setting. Completion of an n x n rank-2 truth (unit Frobenius norm) from m entries sampled without
replacement with probability proportional to $p_j q_k$, rates rising geometrically by the factor `skew` across
rows and columns (`analysis.flatness.nonuniform_completion`; skew 1 is uniform), several seeds per skew at
full scale. The flow $U' = -\mathcal{A}^*(r) V$, $V' = -\mathcal{A}^*(r)^T U$ (width n) from a balanced init of
scale `INIT_SCALE`, one solve to $t_1 = 10^8$ (`flows.Tsit5ThenExtrapolation`, relative tolerance 1e-8 per
state array) saved on a log grid; str along it by Hessian-vector products (`analysis.flatness.scaled_trace`);
the end point against the flattest and the minimum-nuclear-norm interpolants
(`analysis.flatness.compare_flattest`).

Verdicts, from the numbers: curvature *holds* when $\operatorname{str}_{\mathrm{flow}} / \operatorname{str}_\flat \le$
1 + `CURVATURE_SLACK` in every run; location *holds* when the flow's end point is within `SAME_POINT`
(relative Frobenius distance) of the flattest interpolant in every run; bound (7) or (8) *holds* when its
measured ratio is at most its bound in every run.
"""

from __future__ import annotations

import numpy as np

import flows
from analysis import flatness

from ._base import Context, Experiment, Group, new_figure, tex_number

T1 = 1e8
TS = np.concatenate([[0.0], np.geomspace(1e-2, T1, 41)])
"""Saved times: 0, then four per decade from 1e-2 (1e7 and 1e8 among them: the last-decade change)."""
DECADE_BEFORE = int(np.argmin(np.abs(np.log(TS[1:] / (T1 / 10))))) + 1
"""The index of t = t1 / 10 in `TS`."""
RTOL = 1e-8
INIT_SCALE = 1e-3
RANK = 2
SETTINGS = {
    False: dict(n=20, m=160, skews=[1.0, 4.0, 16.0], seeds=[0, 1, 2]),
    True: dict(n=12, m=60, skews=[1.0, 4.0, 16.0], seeds=[0]),
}
"""Completion sizes, sampling skews and seeds by `ctx.quick`."""
CURVATURE_SLACK = 0.1
SAME_POINT = 1e-2


def _problem(config: dict) -> flows.EntryProblem:
    problem = flatness.nonuniform_completion(
        config["n"], config["m"], config["rank"], seed=config["seed"], skew=config["skew"]
    )
    observed = [np.unique(np.asarray(index)).size for index in (problem.rows, problem.cols)]
    if min(observed) < config["n"]:
        raise ValueError(
            f"{config}: a row or column has no observed entry, so D_1 or D_2 is singular and the "
            "flattest factors do not exist; choose another seed or a larger m"
        )
    return problem


def build(config: dict):
    """The UV^T flow on one sampled completion problem, from a balanced init of scale `INIT_SCALE`."""
    flow = flows.Flow(_problem(config), flows.Factored())
    return flow, flow.init(scale=config["scale"], kind="balanced", seed=config["seed"])


def _nuclear(X) -> float:
    return float(np.linalg.svd(np.asarray(X), compute_uv=False).sum())


class Flatness(Experiment):
    name = "flatness"
    title = "flat minima: the scaled Hessian trace along UV^T flows, the flattest interpolant, bounds (7) and (8)"

    def groups(self, quick):
        setting = SETTINGS[quick]
        configs = [
            {"n": setting["n"], "m": setting["m"], "rank": RANK, "skew": skew, "seed": seed, "scale": INIT_SCALE}
            for skew in setting["skews"]
            for seed in setting["seeds"]
        ]
        return [
            Group(
                "UV^T flows",
                build,
                configs,
                dict(t1=T1, ts=TS, rtol=RTOL, atol=None, solver=flows.Tsit5ThenExtrapolation()),
            )
        ]

    def measure(self, traj, config):
        """The end point (U, V, W), the last-decade change, the final loss; along the first seed's runs the scaled
        Hessian trace at every saved time."""
        U, V = (np.asarray(x) for x in traj.states)
        W = traj.W[-1]
        out = {
            "ts": np.asarray(traj.ts),
            "U": U[-1],
            "V": V[-1],
            "W": W,
            "loss": float(traj.loss[-1]),
            "change": float(np.linalg.norm(W - traj.W[DECADE_BEFORE]) / np.linalg.norm(W)),
        }
        if config["seed"] == 0:
            problem = _problem(config)
            out["str_t"] = np.array([flatness.scaled_trace(problem, u, v) for u, v in zip(U, V)])
        return out

    def report(self, ctx, results):
        setting = SETTINGS[ctx.quick]
        rows = [self._compare(ctx, run) for _, run in results.iterrows()]
        traces = {row["skew"]: row for row in rows if row["seed"] == setting["seeds"][0]}

        self._trajectory_figure(ctx, traces)
        skews = np.array(setting["skews"])
        per_skew = {
            key: np.array([[r[key] for r in rows if r["skew"] == s] for s in skews])
            for key in (
                "kappa",
                "str_ratio",
                "d_flow_flat",
                "d_flow_nuc",
                "d_flat_nuc",
                "d_flow_truth",
                "norm_flat",
                "norm_flow",
                "bound7",
                "imbalance_flat",
                "bound8",
                "imbalance_flow",
            )
        }
        self._landing_figure(ctx, skews, per_skew)
        self._bounds_figure(ctx, rows)

        ratio7 = np.array([r["norm_flat"] / r["bound7"] for r in rows])
        ratio8 = np.array([r["imbalance_flat"] / r["bound8"] for r in rows])
        str_ratio = np.array([r["str_ratio"] for r in rows])
        d_flow_flat = np.array([r["d_flow_flat"] for r in rows])
        nearer = sum(r["d_flow_flat"] < r["d_flow_nuc"] for r in rows)
        first, last = 0, len(skews) - 1
        ctx.values(
            self.name,
            {
                "n": str(setting["n"]),
                "m": str(setting["m"]),
                "rank": str(RANK),
                "seeds": str(len(setting["seeds"])),
                "runs": str(len(rows)),
                "skew max": tex_number(skews[last]),
                "init scale": tex_number(INIT_SCALE),
                "t1": tex_number(T1),
                "rtol": tex_number(RTOL),
                "curvature slack": tex_number(CURVATURE_SLACK),
                "same point": tex_number(SAME_POINT),
                "kappa min": tex_number(float(per_skew["kappa"].min())),
                "kappa max": tex_number(float(per_skew["kappa"].max())),
                "str ratio/uniform": tex_number(float(per_skew["str_ratio"][first].mean()), 3),
                "str ratio/skewed": tex_number(float(per_skew["str_ratio"][last].mean()), 3),
                "str ratio/max": tex_number(float(str_ratio.max()), 3),
                "distance to flattest/uniform": tex_number(float(per_skew["d_flow_flat"][first].mean())),
                "distance to flattest/skewed": tex_number(float(per_skew["d_flow_flat"][last].mean())),
                "distance to nuclear/uniform": tex_number(float(per_skew["d_flow_nuc"][first].mean())),
                "distance to nuclear/skewed": tex_number(float(per_skew["d_flow_nuc"][last].mean())),
                "flattest to nuclear/uniform": tex_number(float(per_skew["d_flat_nuc"][first].mean())),
                "flattest to nuclear/skewed": tex_number(float(per_skew["d_flat_nuc"][last].mean())),
                "distance to truth/uniform": tex_number(float(per_skew["d_flow_truth"][first].mean())),
                "distance to truth/skewed": tex_number(float(per_skew["d_flow_truth"][last].mean())),
                "distance to flattest/min": tex_number(float(d_flow_flat.min())),
                "nearer flattest": str(nearer),
                "verdict/curvature": "holds" if str_ratio.max() <= 1 + CURVATURE_SLACK else "fails",
                "verdict/location": "holds" if d_flow_flat.max() <= SAME_POINT else "fails",
                "bound 7/max": tex_number(float(ratio7.max())),
                "bound 8/max": tex_number(float(ratio8.max())),
                "verdict/bound 7": "holds" if ratio7.max() <= 1 else "fails",
                "verdict/bound 8": "holds" if ratio8.max() <= 1 else "fails",
                "norm ratio/flattest max": tex_number(float(max(r["norm_flat"] / r["norm_min"] for r in rows)), 3),
                "norm ratio/flow max": tex_number(float(max(r["norm_flow"] / r["norm_min"] for r in rows)), 3),
                "flow imbalance max": tex_number(float(max(r["imbalance_flow"] for r in rows))),
                "str formula error": tex_number(float(max(r["formula_error"] for r in rows))),
                "last change max": tex_number(float(max(r["change"] for r in rows))),
                "final loss max": tex_number(float(max(r["loss"] for r in rows))),
            },
        )
        ctx.finding(
            "flat minima: the U V^T flow lands as flat as the flattest interpolant (within the slack)",
            "holds" if str_ratio.max() <= 1 + CURVATURE_SLACK else "fails",
            f"largest str ratio {str_ratio.max():.3f}",
        )
        ctx.finding(
            "flat minima: the U V^T flow lands at the flattest interpolant",
            "holds" if d_flow_flat.max() <= SAME_POINT else "fails",
            f"largest distance {d_flow_flat.max():.2g}",
        )
        ctx.table(
            self.name,
            "summary",
            "rrrrrrrrr",
            [
                "skew",
                r"$\kappa$",
                r"$\mathrm{str}_{\mathrm{flow}} / \mathrm{str}_\flat$",
                r"$d(W, X_\flat)$",
                r"$d(W, X_{\mathrm{nuc}})$",
                r"$d(X_\flat, X_{\mathrm{nuc}})$",
                r"$d(W, W^*)$",
                "(7) ratio",
                "(8) ratio",
            ],
            [
                [
                    tex_number(s),
                    tex_number(per_skew["kappa"][i].mean()),
                    tex_number(per_skew["str_ratio"][i].mean(), 3),
                    tex_number(per_skew["d_flow_flat"][i].mean()),
                    tex_number(per_skew["d_flow_nuc"][i].mean()),
                    tex_number(per_skew["d_flat_nuc"][i].mean()),
                    tex_number(per_skew["d_flow_truth"][i].mean()),
                    tex_number(float((per_skew["norm_flat"][i] / per_skew["bound7"][i]).max())),
                    tex_number(float((per_skew["imbalance_flat"][i] / per_skew["bound8"][i]).max())),
                ]
                for i, s in enumerate(skews)
            ],
        )

    @staticmethod
    def _compare(ctx, run) -> dict:
        """Everything measured on one run's end point against the convex references (cached per end point)."""
        config = {k: run[k] for k in ("n", "m", "rank", "skew", "seed")}
        problem = _problem(config)
        U, V, W = run["U"], run["V"], run["W"]

        def compare():
            c = flatness.compare_flattest(problem, (U, V))
            return {
                "str_flow": c.str_flow,
                "str_flattest": c.str_flattest,
                "X_flat": c.flattest.X,
                "X_nuc": c.nuclear.X,
                "d_flow_flat": c.distance_flow_flattest,
                "d_flow_nuc": c.distance_flow_nuclear,
                "d_flat_nuc": c.distance_flattest_nuclear,
            }

        c = ctx.cached(
            {"compare_flattest": problem, "factors": (U, V)}, compare, code=(compare, flatness.compare_flattest)
        )
        D1, D2 = flatness.weights(problem)
        spectrum = np.concatenate([np.linalg.eigvalsh(D1), np.linalg.eigvalsh(D2)])
        kappa = float(spectrum.max() / spectrum.min())
        L, R = flatness.flattest_factors(c["X_flat"], D1, D2)
        truth = np.asarray(problem.truth)
        norm_min = 2 * _nuclear(c["X_nuc"])
        truth_nuclear = _nuclear(truth)
        return {
            "skew": config["skew"],
            "seed": config["seed"],
            "ts": run["ts"],
            "str_t": run.get("str_t"),
            "kappa": kappa,
            "str_flow": float(c["str_flow"]),
            "str_flattest": float(c["str_flattest"]),
            "str_ratio": float(c["str_flow"] / c["str_flattest"]),
            "formula_error": abs(float(c["str_flattest"]) - 4 * problem.m * _nuclear(D1 @ c["X_flat"] @ D2))
            / float(c["str_flattest"]),
            "d_flow_flat": float(c["d_flow_flat"]),
            "d_flow_nuc": float(c["d_flow_nuc"]),
            "d_flat_nuc": float(c["d_flat_nuc"]),
            "d_flow_truth": float(np.linalg.norm(W - truth) / np.linalg.norm(truth)),
            "norm_min": norm_min,
            "norm_flat": float(np.sum(L**2) + np.sum(R**2)),
            "norm_flow": float(np.sum(U**2) + np.sum(V**2)),
            "bound7": kappa**2 * norm_min,
            "imbalance_flat": _nuclear(L.T @ L - R.T @ R) / truth_nuclear,
            "bound8": 2 * (kappa**2 - 1),
            "imbalance_flow": _nuclear(U.T @ U - V.T @ V) / truth_nuclear,
            "change": float(run["change"]),
            "loss": float(run["loss"]),
        }

    @staticmethod
    def _trajectory_figure(ctx: Context, traces: dict) -> None:
        fig, (left, right) = new_figure(2, width=3.6, height=2.9)
        for i, (skew, row) in enumerate(traces.items()):
            colour, positive = f"C{i}", row["ts"] > 0
            label = f"skew {skew:g} ($\\kappa = {row['kappa']:.2f}$)"
            left.loglog(row["ts"][positive], row["str_t"][positive], color=colour, label=label)
            left.axhline(row["str_flattest"], color=colour, ls="--", lw=0.9)
            right.semilogx(row["ts"][positive], row["str_t"][positive] / row["str_flattest"], color=colour, label=label)
        left.plot([], [], color="0.4", ls="--", lw=0.9, label=r"flattest interpolant $4m\|D_1 X_\flat D_2\|_*$")
        left.set(
            xlabel="time $t$", ylabel=r"$\mathrm{str}\, D^2 f(U(t), V(t))$", title="scaled Hessian trace along the flow"
        )
        ends = np.array([row["str_t"][-1] / row["str_flattest"] for row in traces.values()])
        right.axhline(1.0, color="0.4", ls="--", lw=0.9)
        right.set_ylim(1.0 - 0.5 * (ends.max() - 1.0), 1.0 + 1.5 * (ends.max() - 1.0))
        right.set(
            xlabel="time $t$",
            ylabel=r"$\mathrm{str}(t) / \mathrm{str}_\flat$",
            title="late times, relative to the flattest",
        )
        fig.legend(*left.get_legend_handles_labels(), loc="outside lower center", ncols=3)
        ctx.figure(fig, "flatness_trajectory")

    @staticmethod
    def _landing_figure(ctx: Context, skews, per_skew: dict) -> None:
        fig, (left, right) = new_figure(2, width=3.6, height=2.9)

        # Mean over seeds, bars from the least to the largest; the right panel's series are shifted apart in x.
        def spread(ax, values, style, label, colour=None, shift=0.0):
            mean = values.mean(axis=1)
            ax.errorbar(
                skews * 2.0**shift,
                mean,
                yerr=[mean - values.min(axis=1), values.max(axis=1) - mean],
                fmt=style,
                capsize=2,
                label=label,
                color=colour,
            )

        spread(left, per_skew["str_ratio"], "o-", r"$\mathrm{str}_{\mathrm{flow}} / \mathrm{str}_\flat$")
        left.axhline(1.0, color="0.4", ls="--", lw=0.9, label="flattest (= 1)")
        left.set_xscale("log", base=2)
        left.set(
            xlabel="sampling skew (rate ratio, last to first row)",
            ylabel="scaled trace ratio",
            title="curvature where the flow lands",
        )
        left.legend(loc="best")
        for i, (key, label) in enumerate(
            [
                ("d_flow_flat", r"flow to flattest $X_\flat$"),
                ("d_flow_nuc", r"flow to min. nuclear $X_{\mathrm{nuc}}$"),
                ("d_flat_nuc", r"$X_\flat$ to $X_{\mathrm{nuc}}$"),
                ("d_flow_truth", r"flow to truth $W^*$"),
            ]
        ):
            spread(right, per_skew[key], "os^v"[i] + "-", label, f"C{i}", shift=0.06 * (i - 1.5))
        right.set_xscale("log", base=2)
        right.set_yscale("log")
        right.set(
            xlabel="sampling skew (rate ratio, last to first row)",
            ylabel="relative Frobenius distance",
            title="where the flow lands",
        )
        right.legend(loc="best")
        ctx.figure(fig, "flatness_landing")

    @staticmethod
    def _bounds_figure(ctx: Context, rows: list[dict]) -> None:
        fig, (left, right) = new_figure(2, width=3.6, height=2.9)
        kappa = np.array([r["kappa"] for r in rows])
        grid = np.linspace(kappa.min() / 1.05, kappa.max() * 1.05, 100)
        worst_flow = max(r["imbalance_flow"] for r in rows)
        exponent = int(np.floor(np.log10(worst_flow))) + 1 if worst_flow > 0 else None
        panels = (
            (
                left,
                grid**2,
                r"bound (7): $\kappa^2$",
                [r["norm_flat"] / r["norm_min"] for r in rows],
                r"$(\|L\|_F^2 + \|R\|_F^2) / \min_{\mathcal{S}}(\|L\|_F^2 + \|R\|_F^2)$",
                "(7) near norm-minimality",
            ),
            (
                right,
                2 * (grid**2 - 1),
                r"bound (8): $2(\kappa^2 - 1)$",
                [r["imbalance_flat"] for r in rows],
                r"$\|L^T L - R^T R\|_* / \|M_\natural\|_*$",
                "(8) near balancedness",
            ),
        )
        for ax, bound, bound_label, flattest, ylabel, title in panels:
            ax.plot(grid, bound, color="0.4", ls="--", label=bound_label)
            ax.plot(kappa, flattest, "o", label=r"flattest pair $(L_\flat, R_\flat)$")
            ax.set_yscale("log")
            ax.set(xlabel=r"$\kappa = \alpha_2 / \alpha_1$ of $D_1, D_2$", ylabel=ylabel, title=title)
        left.plot(kappa, [r["norm_flow"] / r["norm_min"] for r in rows], "s", mfc="none", label=r"flow's end $(U, V)$")
        flow_label = (
            "flow's end: exactly balanced" if exponent is None else f"flow's end: $< 10^{{{exponent}}}$ (conserved)"
        )
        right.plot([], [], " ", label=flow_label)
        left.legend(loc="upper left")
        right.legend(loc="best")
        ctx.figure(fig, "flatness_bounds")
