r"""The small-initialization limit: does $W_\infty(\alpha)$ tend to the
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

Measurement. One run per alpha to $t_1 = 10^8$ by `analysis.small_init.converge` (the default solver to loss
1e-6, then its stiff extrapolation, tolerances rtol 1e-8, atol 1e-12; Tsit5 for the linear direct flow), kept in the
store (`analysis.small_init.stored`): at full scale the commuting, sensing and direct runs are those `gradflow check`
makes (its `small_init` rows), so the two read the same runs. The relative change over the last decade,
$\|W(10^8) - W(10^7)\| / \|W(10^8)\|$, says how far the end point still is from $W_\infty$ (a ninth of it for a
1/t tail). References by cvxpy/Clarabel (`analysis.references`; for commuting problems also the LP in
the common eigenbasis, which must agree). Distances $d(\alpha) = \|W_\infty - X\|_F / \|X\|_F$ and the
fitted rate $d \sim \alpha^p$ (`analysis.small_init.fitted_rate`, over the whole sweep).

Verdict per problem, from its distances: *holds* when d decreases at every step of the sweep and both d
and the last-decade change at the smallest alpha are at most `HOLDS_BELOW`; *fails* when d at the smallest
alpha exceeds `HOLDS_BELOW`, its last step in alpha left it above `STALL_RATIO` times its value one step before and
the end point sits at its limit (last-decade change under a tenth of d); *depends* otherwise.

The KKT certificate (commuting case, `analysis.closed_form.CommutingReduced`, whose state is
$s = \int_0^t r$, by `analysis.small_init.commuting_certificates`): $\nu = -4 s(\infty) / \log(1/\alpha^2)$ gives $M = \sum_i \nu_i A_i$ the eigenvalues
$1 + \log \lambda_k / \log(1/\alpha^2)$ on $W_\infty$'s eigenvalues $\lambda_k$, so the dual violation
$\max(0, \lambda_{\max}(M) - 1)$ is zero when $\lambda_{\max}(W_\infty) < 1$, and the complementarity
residual $\|W - M W\| / \|W\|$ and the duality gap $|\operatorname{tr} W - y^T \nu| / \operatorname{tr} W$
vanish like $1 / \log(1/\alpha^2)$ (`analysis.small_init.certificate`). The reduced runs must land where the full
flow lands.
"""

from __future__ import annotations

import numpy as np

import flows
from analysis import references, small_init
from analysis.checks import DIRECT_OPTIONS

from ._base import Context, Experiment, new_figure, tex_number

T1 = 1e8
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


def _problem(config: dict) -> flows.AbstractProblem:
    maker = {"commuting": flows.commuting, "sensing": flows.sensing, "completion": flows.completion}[config["problem"]]
    return maker(n=config["n"], m=config["m"], rank=config["rank"], seed=config["seed"])


def _flow(setting: dict) -> flows.Flow:
    """The symmetric or the direct flow of a setting's problem."""
    problem = _problem(_problem_config(setting))
    return flows.Flow(problem, flows.Direct() if setting["flow"] == "direct" else flows.Symmetric())


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

    def report(self, ctx: Context, results) -> None:
        alphas = ALPHAS[ctx.quick]
        settings = SETTINGS[ctx.quick]
        store = ctx.store / "results"

        def counted(sweep):
            for run in sweep.runs:
                ctx.tally.count("cached" if run.reused else "done")
            return sweep

        by_case = {}
        for case, setting in settings.items():
            options = DIRECT_OPTIONS if setting["flow"] == "direct" else {}
            sweep = small_init.sweep(_flow(setting), alphas, {}, store=store, fresh=ctx.fresh, **options)
            by_case[case] = counted(sweep).runs
        commuting = _problem(_problem_config(settings["commuting"]))
        reduced_sweep = counted(small_init.commuting_certificates(commuting, alphas, store=store, fresh=ctx.fresh))

        results = {}
        for case, setting in settings.items():
            problem = _problem(_problem_config(setting))
            if setting["flow"] == "direct":
                reference = references.min_frobenius(problem)
                X, objective, feasibility = reference.X, reference.objective, reference.feasibility
            else:
                stored = ctx.cached(
                    {
                        "reference": "min_nuclear_psd",
                        "problem": problem,
                        "options": references.CVXPY_OPTIONS["CLARABEL"],
                    },
                    lambda problem=problem: _reference(references.min_nuclear_psd(problem)),
                    code=(_reference, references),
                )
                X, objective, feasibility = stored["X"], float(stored["objective"]), float(stored["feasibility"])
            W = np.array([run.W for run in by_case[case]])
            change = np.array([run.last_decade_change for run in by_case[case]])
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
                final_loss=np.array([run.loss for run in by_case[case]]),
                rate=small_init.fitted_rate(alphas, d),
                verdict=verdict(d, change),
            )

        lp = ctx.cached(
            {"reference": "commuting_lp", "problem": commuting, "options": references.HIGHS_OPTIONS},
            lambda: _reference(references.commuting_lp(commuting)),
            code=(_reference, references),
        )
        sdp_vs_lp = float(np.linalg.norm(results["commuting"]["X"] - lp["X"]) / np.linalg.norm(lp["X"]))
        certificates = reduced_sweep.certificates
        top = np.array([np.linalg.eigvalsh(np.asarray(commuting.adjoint(c.nu)))[-1] for c in certificates])
        reduced_vs_full = max(
            float(np.linalg.norm(r.W - f.W) / np.linalg.norm(f.W))
            for r, f in zip(reduced_sweep.runs, by_case["commuting"])
        )
        complementarity = np.array([c.complementarity for c in certificates])
        gap = np.array([c.gap for c in certificates])
        log_scale = np.log(1.0 / alphas**2)

        self._distance_figure(ctx, alphas, results)
        self._certificate_figure(
            ctx, alphas, complementarity, gap, 1.0 - top, np.array([c.feasibility for c in certificates]), log_scale
        )

        report = int(np.argmin(np.abs(np.log(alphas / REPORT_ALPHA))))
        values = {
            "alpha max": tex_number(alphas[0]),
            "alpha min": tex_number(alphas[-1]),
            "alpha report": tex_number(alphas[report]),
            "t1": tex_number(T1),
            "direct t1": tex_number(DIRECT_OPTIONS["t1"]),
            "rtol": tex_number(RTOL),
            "holds below": tex_number(HOLDS_BELOW),
            "stall ratio": tex_number(STALL_RATIO),
        }
        for case, res in results.items():
            key = case
            values |= {
                f"{key}/n": str(res["setting"]["n"]),
                f"{key}/m": str(res["setting"]["m"]),
                f"{key}/distance": tex_number(res["distance"][report]),
                f"{key}/distance min": tex_number(res["distance"][-1]),
                f"{key}/rate": tex_number(res["rate"]),
                f"{key}/last change": tex_number(float(res["change"].max())),
                f"{key}/last change at min": tex_number(float(res["change"][-1])),
                f"{key}/verdict": res["verdict"],
            }
            if res["setting"]["flow"] == "symmetric":
                values |= {
                    f"{key}/truth distance min": tex_number(res["truth_distance"][-1]),
                    f"{key}/reference truth": tex_number(res["reference_truth"]),
                    f"{key}/trace excess min": tex_number(res["trace_excess"][-1]),
                }
        values |= {
            "reference feasibility": tex_number(max(r["reference_feasibility"] for r in results.values())),
            "final loss max": tex_number(max(float(r["final_loss"].max()) for r in results.values())),
            "sdp vs lp": tex_number(sdp_vs_lp),
            "reduced vs full": tex_number(reduced_vs_full),
            "certificate/dual max": tex_number(max(c.dual for c in certificates)),
            "certificate/slack min": tex_number(float((1.0 - top).min())),
            "certificate/complementarity": tex_number(complementarity[report]),
            "certificate/gap": tex_number(gap[report]),
            "certificate/feasibility max": tex_number(max(c.feasibility for c in certificates)),
            "certificate/complementarity rate": tex_number(small_init.fitted_rate(alphas, complementarity)),
            "certificate/log law spread": tex_number(
                float((complementarity * log_scale).max() / (complementarity * log_scale).min())
            ),
        }
        ctx.values(self.name, values)
        for case, res in results.items():
            reference = "the minimum-Frobenius interpolant" if case == "direct" else "the minimum-trace PSD interpolant"
            ctx.finding(
                f"small init ({_label(res['setting'])}): W_{{inf}}(alpha) tends to {reference}",
                res["verdict"],
                f"distance {res['distance'][-1]:.2g} at alpha = {alphas[-1]:g}",
            )
        reported = tex_number(alphas[report])
        ctx.table(
            self.name,
            "summary",
            "lrrrrrrl",
            [
                "problem",
                f"$d(\\alpha = {reported})$",
                r"$d(\alpha_{\min})$",
                r"$d_{W^*}(\alpha_{\min})$",
                "rate $p$",
                r"$\Delta(\alpha_{\min})$",
                r"$\max_\alpha \Delta$",
                "verdict",
            ],
            [
                [
                    _label(r["setting"]) + (" (direct)" if r["setting"]["flow"] == "direct" else ""),
                    tex_number(r["distance"][report]),
                    tex_number(r["distance"][-1]),
                    "" if r["setting"]["flow"] == "direct" else tex_number(r["truth_distance"][-1]),
                    tex_number(r["rate"]),
                    tex_number(float(r["change"][-1])),
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
