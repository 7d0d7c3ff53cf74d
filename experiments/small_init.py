r"""The small-initialization limit (seed 002; claim 9 of SCIENCE.md): does $W_\infty(\alpha)$ tend to the
minimum-nuclear-norm interpolant as $\alpha \to 0$?

Claim. The symmetric flow $W = U U^T$, $U' = -2 \mathcal{A}^*(r) U$ from $U_0 = \alpha I$ ($W_0 = \alpha^2 I$)
converges, as $\alpha \to 0$, to the minimum-trace PSD interpolant
$X_* = \arg\min \{\operatorname{tr} X : \mathcal{A}(X) = y, X \succeq 0\}$: proven for commuting measurements,
conjectured in general (Gunasekar et al. 2017), proven under RIP for Gaussian sensing (Li, Ma, Zhang 2018),
false in some completion problems (Razin & Cohen 2020). The direct flow $W' = -\mathcal{A}^*(r)$ from
$W_0 = \alpha I$ lands at $X_F + (I - P) W_0$ ($X_F$ the minimum-Frobenius interpolant, P the projection
onto span$\{A_i\}$), so its distance to $X_F$ is exactly linear in alpha.

Setting. Problems (rank-2 truths of unit Frobenius norm, seed 0; `SETTINGS`): commuting measurements;
Gaussian sensing with m = 3 n r (full scale; an RIP regime) and with m = 1.5 n r; symmetric completion with
many and with few observed entries; the direct flow on a small sensing problem. The two sparse problems
are chosen where $X_*$ is not the rank-2 truth $W^*$, so "tends to $X_*$" and "tends to the lowest-rank
interpolant" predict different limits; with more measurements $X_* = W^*$ and the test cannot tell them
apart, and with too many the PSD interpolants are a single point and the test is void (the reason
Gaussian sensing at quick scale uses n = 16, m = 64: at n = 10, m = 40 every alpha lands on $W^*$).

Measurement. One solve per alpha to $t_1 = 10^8$ (`flows.Tsit5ThenExtrapolation`, relative tolerance
1e-8 on each state array), saved at t = 0 and every decade; the relative change over the last decade,
$\|W(10^8) - W(10^7)\| / \|W(10^8)\|$, says how far the end point still is from $W_\infty$ (a ninth of it
for a 1/t tail). References by cvxpy/Clarabel (`analysis.references`; for commuting problems also the LP in
the common eigenbasis, which must agree). Distances $d(\alpha) = \|W_\infty - X\|_F / \|X\|_F$ and the
fitted rate $d \sim \alpha^p$ (`analysis.small_init.fitted_rate`, over the whole sweep).

Verdict per problem, from its distances: *holds* when d decreases at every step of the sweep and both d
and the last-decade change at the smallest alpha are at most `HOLDS_BELOW`; *fails* when d at the smallest
alpha exceeds `HOLDS_BELOW`, its last step in alpha cut it by less than the factor `STALL_RATIO` and the
end point sits at its limit (last-decade change under a tenth of d); *depends* otherwise.

The KKT certificate (commuting case, `analysis.closed_form.CommutingReduced`, whose state is
$s = \int_0^t r$): $\nu = -4 s(\infty) / \log(1/\alpha^2)$ gives $M = \sum_i \nu_i A_i$ the eigenvalues
$1 + \log \lambda_k / \log(1/\alpha^2)$ on $W_\infty$'s eigenvalues $\lambda_k$, so the dual violation
$\max(0, \lambda_{\max}(M) - 1)$ is zero when $\lambda_{\max}(W_\infty) < 1$, and the complementarity
residual $\|W - M W\| / \|W\|$ and the duality gap $|\operatorname{tr} W - y^T \nu| / \operatorname{tr} W$
vanish like $1 / \log(1/\alpha^2)$ (`analysis.small_init.certificate`). The reduced runs (Kvaerno5: the
reduced field is not a Gauss-Newton linearisable gradient flow) must land where the full flow lands.
"""

from __future__ import annotations

import numpy as np

import flows
from analysis import references, small_init
from analysis.closed_form import CommutingReduced

from ._base import Context, Experiment, new_figure, tex_number

T1 = 1e8
TS = np.concatenate([[0.0], np.geomspace(1.0, T1, 9)])
RTOL = 1e-8
ALPHAS = {False: 10.0 ** -np.arange(1, 8), True: 10.0 ** -np.arange(1, 5)}
"""Init scales by `ctx.quick`: 1e-1 .. 1e-7 (full), 1e-1 .. 1e-4 (quick)."""
REPORT_ALPHA = 1e-6
"""The alpha whose distances the text quotes (the smallest alpha where the sweep does not reach it)."""
HOLDS_BELOW = 1e-3
STALL_RATIO = 0.8

FULL = {
    "commuting": dict(problem="commuting", flow="symmetric", n=12, m=5),
    "sensing": dict(problem="sensing", flow="symmetric", n=30, m=180),
    "sensing-sparse": dict(problem="sensing", flow="symmetric", n=30, m=90),
    "completion": dict(problem="completion", flow="symmetric", n=20, m=120),
    "completion-sparse": dict(problem="completion", flow="symmetric", n=20, m=80),
    "direct": dict(problem="sensing", flow="direct", n=8, m=20),
}
# Quick: the two dense problems smaller; the rest as at full scale.
SETTINGS = {
    False: FULL,
    True: FULL
    | {
        "sensing": dict(problem="sensing", flow="symmetric", n=16, m=64),
        "completion": dict(problem="completion", flow="symmetric", n=10, m=40),
    },
}
"""Problem settings by `ctx.quick` (rank 2, seed 0 for all)."""
RANK, SEED = 2, 0

MACRO = {
    "commuting": "Commuting",
    "sensing": "Sensing",
    "sensing-sparse": "SensingSparse",
    "completion": "Completion",
    "completion-sparse": "CompletionSparse",
    "direct": "Direct",
}


def _problem(config: dict) -> flows.AbstractProblem:
    maker = {"commuting": flows.commuting, "sensing": flows.sensing, "completion": flows.completion}[config["problem"]]
    return maker(n=config["n"], m=config["m"], rank=config["rank"], seed=config["seed"])


def build(config: dict):
    """The run of one configuration: the symmetric or direct flow from alpha-scaled identity, or the commuting
    problem's reduced ODE from W_0 = alpha^2 I."""
    problem = _problem(config)
    alpha = config["alpha"]
    if config["flow"] == "reduced":
        reduced = CommutingReduced(problem, alpha**2 * np.eye(problem.shape[0]))
        return reduced, reduced.init()
    flow = flows.Flow(problem, flows.Direct() if config["flow"] == "direct" else flows.Symmetric())
    return flow, flow.init(scale=alpha, kind="identity")


def _problem_config(setting: dict) -> dict:
    return {"problem": setting["problem"], "n": setting["n"], "m": setting["m"], "rank": RANK, "seed": SEED}


def _label(setting: dict) -> str:
    return f"{setting['problem']}, $n={setting['n']}$, $m={setting['m']}$"


def verdict(distances, changes) -> str:
    """holds / fails / depends from the distances (alpha decreasing) and last-decade changes (module docstring)."""
    d, change = np.asarray(distances), np.asarray(changes)
    if np.all(np.diff(d) < 0) and d[-1] <= HOLDS_BELOW and change[-1] <= HOLDS_BELOW:
        return "holds"
    if d[-1] > HOLDS_BELOW and d[-1] / d[-2] > STALL_RATIO and change[-1] < 0.1 * d[-1]:
        return "fails"
    return "depends"


class SmallInit(Experiment):
    name = "small_init"
    title = "the small-initialization limit: W_inf(alpha) against the minimum-nuclear-norm interpolant, KKT certificate"

    def run(self, ctx: Context) -> None:
        alphas = ALPHAS[ctx.quick]
        settings = SETTINGS[ctx.quick]
        configs = [
            {"case": case, **_problem_config(s), "flow": s["flow"], "alpha": float(a)}
            for case, s in settings.items()
            for a in alphas
        ]
        runs = ctx.sweep(
            self.name, build, configs, t1=T1, ts=TS, rtol=RTOL, atol=None, solver=flows.Tsit5ThenExtrapolation()
        )
        reduced_configs = [
            {"case": "reduced", **_problem_config(settings["commuting"]), "flow": "reduced", "alpha": float(a)}
            for a in alphas
        ]
        reduced_runs = ctx.sweep(
            self.name,
            build,
            reduced_configs,
            t1=T1,
            ts=TS,
            rtol=RTOL,
            atol=None,
            solver=flows.solver_by_name("kvaerno5"),
        )
        by_case: dict[str, list[flows.Trajectory]] = {case: [] for case in settings}
        for run in runs:  # in the order of configs: alpha decreasing within each case
            by_case[run.config["case"]].append(run.load())

        results = {}
        for case, setting in settings.items():
            problem = _problem(_problem_config(setting))
            if setting["flow"] == "direct":
                reference = references.min_frobenius(problem)
                X, objective, feasibility = reference.X, reference.objective, reference.feasibility
            else:
                stored = ctx.cached(
                    self.name,
                    {"reference": "min_nuclear_psd", **_problem_config(setting)},
                    lambda: _reference(references.min_nuclear_psd(problem)),
                )
                X, objective, feasibility = stored["X"], float(stored["objective"]), float(stored["feasibility"])
            W = np.array([traj.W[-1] for traj in by_case[case]])
            change = np.array([np.linalg.norm(t.W[-1] - t.W[-2]) / np.linalg.norm(t.W[-1]) for t in by_case[case]])
            truth = np.asarray(problem.truth)
            d = np.linalg.norm(W - X, axis=(1, 2)) / np.linalg.norm(X)
            results[case] = dict(
                setting=setting,
                X=X,
                distance=d,
                change=change,
                reference_feasibility=feasibility,
                truth_distance=np.linalg.norm(W - truth, axis=(1, 2)) / np.linalg.norm(truth),
                trace_excess=np.trace(W, axis1=1, axis2=2) / objective - 1.0,
                reference_truth=float(np.linalg.norm(X - truth) / np.linalg.norm(truth)),
                final_loss=np.array([t.loss[-1] for t in by_case[case]]),
                rate=small_init.fitted_rate(alphas, d),
                verdict=verdict(d, change),
            )

        commuting = _problem(_problem_config(settings["commuting"]))
        lp = ctx.cached(
            self.name,
            {"reference": "commuting_lp", **_problem_config(settings["commuting"])},
            lambda: _reference(references.commuting_lp(commuting)),
        )
        sdp_vs_lp = float(np.linalg.norm(results["commuting"]["X"] - lp["X"]) / np.linalg.norm(lp["X"]))
        reduced = [run.load() for run in reduced_runs]
        certificates = [
            small_init.certificate(commuting, t.W[-1], t.states[-1], float(a), 4.0) for t, a in zip(reduced, alphas)
        ]
        top = np.array([np.linalg.eigvalsh(np.asarray(commuting.adjoint(c.nu)))[-1] for c in certificates])
        reduced_vs_full = max(
            float(np.linalg.norm(r.W[-1] - f.W[-1]) / np.linalg.norm(f.W[-1]))
            for r, f in zip(reduced, by_case["commuting"])
        )
        complementarity = np.array([c.complementarity for c in certificates])
        gap = np.array([c.gap for c in certificates])
        log_scale = np.log(1.0 / alphas**2)

        self._distance_figure(ctx, alphas, results)
        self._certificate_figure(
            ctx, alphas, complementarity, gap, 1.0 - top, np.array([c.feasibility for c in certificates]), log_scale
        )

        report = int(np.argmin(np.abs(np.log(alphas / REPORT_ALPHA))))
        macros = {
            "SmallInitAlphaMax": tex_number(alphas[0]),
            "SmallInitAlphaMin": tex_number(alphas[-1]),
            "SmallInitAlphaReport": tex_number(alphas[report]),
            "SmallInitTOne": tex_number(T1),
            "SmallInitRtol": tex_number(RTOL),
            "SmallInitHoldsBelow": tex_number(HOLDS_BELOW),
            "SmallInitStallRatio": tex_number(STALL_RATIO),
        }
        for case, res in results.items():
            key = "SmallInit" + MACRO[case]
            macros |= {
                key + "N": str(res["setting"]["n"]),
                key + "M": str(res["setting"]["m"]),
                key + "Distance": tex_number(res["distance"][report]),
                key + "DistanceMin": tex_number(res["distance"][-1]),
                key + "Rate": tex_number(res["rate"]),
                key + "LastChange": tex_number(float(res["change"].max())),
                key + "LastChangeAtMin": tex_number(float(res["change"][-1])),
                key + "Verdict": res["verdict"],
            }
            if res["setting"]["flow"] == "symmetric":
                macros |= {
                    key + "TruthDistanceMin": tex_number(res["truth_distance"][-1]),
                    key + "ReferenceTruth": tex_number(res["reference_truth"]),
                    key + "TraceExcessMin": tex_number(res["trace_excess"][-1]),
                }
        macros |= {
            "SmallInitReferenceFeasibility": tex_number(max(r["reference_feasibility"] for r in results.values())),
            "SmallInitFinalLossMax": tex_number(max(float(r["final_loss"].max()) for r in results.values())),
            "SmallInitSdpVsLp": tex_number(sdp_vs_lp),
            "SmallInitReducedVsFull": tex_number(reduced_vs_full),
            "SmallInitCertDualMax": tex_number(max(c.dual for c in certificates)),
            "SmallInitCertSlackMin": tex_number(float((1.0 - top).min())),
            "SmallInitCertComplementarity": tex_number(complementarity[report]),
            "SmallInitCertGap": tex_number(gap[report]),
            "SmallInitCertFeasibilityMax": tex_number(max(c.feasibility for c in certificates)),
            "SmallInitCertComplementarityRate": tex_number(small_init.fitted_rate(alphas, complementarity)),
            "SmallInitCertLogLawSpread": tex_number(
                float((complementarity * log_scale).max() / (complementarity * log_scale).min())
            ),
        }
        ctx.macros(self.name, macros)
        reported = tex_number(alphas[report])
        ctx.table(
            self.name,
            "summary",
            "llrrrrrl",
            [
                "problem",
                "reference",
                f"$d(\\alpha = {reported})$",
                r"$d(\alpha_{\min})$",
                r"$d_{W^*}(\alpha_{\min})$",
                "rate $p$",
                "last-decade change (max)",
                "verdict",
            ],
            [
                [
                    _label(r["setting"]) + (" (direct)" if r["setting"]["flow"] == "direct" else ""),
                    "min. Frobenius" if r["setting"]["flow"] == "direct" else "min. trace PSD",
                    tex_number(r["distance"][report]),
                    tex_number(r["distance"][-1]),
                    "" if r["setting"]["flow"] == "direct" else tex_number(r["truth_distance"][-1]),
                    tex_number(r["rate"]),
                    tex_number(float(r["change"].max())),
                    r["verdict"],
                ]
                for r in results.values()
            ],
        )

    @staticmethod
    def _distance_figure(ctx: Context, alphas, results) -> None:
        fig, (left, right) = new_figure(2, width=3.6, height=3.0)
        for i, (_case, res) in enumerate(results.items()):
            colour = f"C{i}"
            if res["setting"]["flow"] == "direct":
                left.loglog(
                    alphas,
                    res["distance"],
                    "s--",
                    color=colour,
                    label=f"direct flow from $\\alpha I$ vs min. Frobenius ({_label(res['setting'])}): "
                    f"{res['verdict']}",
                )
                continue
            left.loglog(
                alphas, res["distance"], "o-", color=colour, label=f"{_label(res['setting'])}: {res['verdict']}"
            )
            right.loglog(alphas, res["truth_distance"], "o-", color=colour, label=_label(res["setting"]))
        left.set(
            xlabel=r"init scale $\alpha$ ($W_0 = \alpha^2 I$)",
            ylabel=r"$\|W_\infty - X\|_F / \|X\|_F$",
            title=r"distance to $X$ = min.-trace PSD interpolant",
        )
        right.set(
            xlabel=r"init scale $\alpha$ ($W_0 = \alpha^2 I$)",
            ylabel=r"$\|W_\infty - W^*\|_F / \|W^*\|_F$",
            title=r"distance to the rank-2 truth $W^*$",
        )
        for ax in (left, right):
            ax.invert_xaxis()
        fig.legend(*left.get_legend_handles_labels(), loc="outside lower center", ncols=2)
        ctx.figure(fig, "small_init")

    @staticmethod
    def _certificate_figure(ctx: Context, alphas, complementarity, gap, slack, feasibility, log_scale) -> None:
        fig, (left, right) = new_figure(2, width=3.6, height=3.0)
        curves = [
            (complementarity, "o-", r"complementarity $\|W - MW\|_F / \|W\|_F$"),
            (gap, "s-", r"gap $|\mathrm{tr}\,W - y^T\nu| / \mathrm{tr}\,W$"),
            (slack, "^-", r"dual slack $1 - \lambda_{\max}(M)$"),
        ]
        for values, style, label in curves:
            left.loglog(alphas, values, style, label=label)
            right.semilogx(alphas, values * log_scale, style, label=label)
        level = float(np.exp(np.mean(np.log(complementarity * log_scale))))
        left.loglog(alphas, level / log_scale, ":", color="0.4", label=r"$c / \log(1/\alpha^2)$, $c$ fitted")
        left.set(
            xlabel=r"init scale $\alpha$ ($W_0 = \alpha^2 I$)",
            ylabel="residual",
            title=r"residuals of $\nu = -4 s_\infty / \log(1/\alpha^2)$",
        )
        exponent = int(np.floor(np.log10(feasibility.max())))
        left.text(
            0.03,
            0.03,
            f"feasibility $\\|\\mathcal{{A}}(W) - y\\| / \\|y\\| < 10^{{{exponent + 1}}}$",
            transform=left.transAxes,
            fontsize=7.5,
        )
        right.set(
            xlabel=r"init scale $\alpha$ ($W_0 = \alpha^2 I$)",
            ylabel=r"residual $\times \log(1/\alpha^2)$",
            title=r"the $1/\log(1/\alpha^2)$ law (flat if it holds)",
        )
        right.set_ylim(bottom=0)
        for ax in (left, right):
            ax.invert_xaxis()
        fig.legend(*left.get_legend_handles_labels(), loc="outside lower center", ncols=2)
        ctx.figure(fig, "small_init_certificate")


def _reference(reference: references.Reference) -> dict[str, np.ndarray]:
    return {
        "X": reference.X,
        "objective": np.asarray(reference.objective),
        "feasibility": np.asarray(reference.feasibility),
    }
