"""Closed forms against the integrated flows, and the eigenbasis claim along the flow.

Claims. (a) The symmetric flow on commuting measurements collapses to an m-dimensional ODE for
s = int r (analysis.closed_form.CommutingReduced); the direct flow and the fully observed symmetric flow
(a matrix Riccati equation) have exact solutions. The integrator must agree with all three over whole
trajectories, to its tolerance. (b) From W_0 = alpha^2 I the flow commutes with every A_i when the A_i
commute, and not otherwise.
"""

from __future__ import annotations

import numpy as np

import flows
from analysis import closed_form, eigenbasis

from ._base import Experiment, Group, new_figure, relative_difference, tex_number

T1 = 30.0
RTOL = 1e-8
COMMUTING = dict(n=12, m=5, rank=2, seed=0)
H_SEED = 3


def _indefinite_h() -> np.ndarray:
    H = np.random.default_rng(H_SEED).standard_normal((7, 7))
    return (H + H.T) / 2


def _problem(case: str):
    if case in ("commuting", "reduced", "eigen-commuting"):
        return flows.commuting(**COMMUTING)
    if case == "riccati":
        return closed_form.fully_observed(_indefinite_h())
    if case == "direct":
        return flows.sensing(n=6, m=12, rank=2, seed=0)
    return flows.sensing(**COMMUTING)  # eigen-gaussian


def _start(case: str):
    """The flow and initial state of each case; the reduced ODE starts from the full flow's U0 U0^T."""
    problem = _problem(case)
    if case == "direct":
        flow = flows.Flow(problem, flows.Direct())
        return flow, flow.init(scale=0.5, kind="gaussian")
    flow = flows.Flow(problem, flows.Symmetric())
    if case.startswith("eigen"):
        return flow, flow.init(scale=1e-2)
    U0 = (
        flow.init(scale=0.1, kind="gaussian", seed=2)
        if case == "riccati"
        else flow.init(scale=0.3, kind="gaussian", seed=1)
    )
    if case == "reduced":
        reduced = closed_form.CommutingReduced(problem, U0 @ U0.T)
        return reduced, reduced.init()
    return flow, U0


def build(config):
    return _start(config["case"])


CASES = ("commuting", "reduced", "riccati", "direct", "eigen-commuting", "eigen-gaussian")
TS = flows.default_ts(T1, 60)
COMPARED = {"commuting": "reduced commuting ODE", "riccati": "Riccati closed form", "direct": "direct flow closed form"}


class ClosedForms(Experiment):
    name = "closed_forms"
    title = "closed forms (reduced commuting ODE, Riccati, direct flow) and the eigenbasis claim"

    def groups(self, quick):
        return [Group("closed forms", build, [{"case": c} for c in CASES], dict(t1=T1, ts=TS, rtol=RTOL))]

    def measure(self, traj, config):
        case = config["case"]
        if case == "riccati":
            return {
                "difference": relative_difference(traj.W, closed_form.riccati(_indefinite_h(), _start(case)[1], TS))
            }
        if case == "direct":
            return {
                "difference": relative_difference(traj.W, closed_form.direct_flow(_problem(case), _start(case)[1], TS))
            }
        if case.startswith("eigen"):
            report = eigenbasis.eigenbasis_report(_problem(case), traj)
            return {"commutator": report.commutator, "misalignment": report.misalignment}
        return {"W": traj.W}  # the commuting flow and its reduced ODE, compared with each other (12 x 12)

    def report(self, ctx, results):
        by = results.set_index("case")
        differences = {
            COMPARED["commuting"]: relative_difference(by.at["commuting", "W"], by.at["reduced", "W"]),
            COMPARED["riccati"]: by.at["riccati", "difference"],
            COMPARED["direct"]: by.at["direct", "difference"],
        }
        fig, (left, right) = new_figure(2)
        positive = TS > 0
        for label, d in differences.items():
            left.loglog(TS[positive], np.maximum(d[positive], 1e-17), label=label)
        left.axhline(RTOL, color="0.5", lw=0.8, ls="--", label="rtol")
        left.set(
            xlabel="time $t$",
            ylabel=r"$\|W - W_{\mathrm{exact}}\|_F / \|W_{\mathrm{exact}}\|_F$",
            title="integrated flow against exact solutions",
        )
        # Room above the curves for the legend, which would cover them anywhere inside their range.
        top = max(RTOL, max(float(np.max(d[positive])) for d in differences.values()))
        left.set_ylim(top=1e6 * top)
        left.legend(loc="upper left", fontsize="small")
        for name in ("commuting", "gaussian"):
            right.loglog(
                TS[positive],
                np.maximum(by.at[f"eigen-{name}", "commutator"][positive], 1e-17),
                label=f"{'Gaussian' if name == 'gaussian' else 'commuting'} $A_i$ (max over $i$)",
            )
        right.set(
            xlabel="time $t$",
            ylabel=r"$\|[W, A_i]\|_F / (\|W\|_F \|A_i\|_F)$",
            title=r"commutators along the flow from $\alpha^2 I$",
        )
        right.legend(loc="center right")
        ctx.figure(fig, "closed_forms")

        worst = {label: float(d.max()) for label, d in differences.items()}
        ratio = max(worst.values()) / RTOL
        ctx.values(
            self.name,
            {
                "rtol": tex_number(RTOL),
                "reduced/max": tex_number(worst[COMPARED["commuting"]]),
                "riccati/max": tex_number(worst[COMPARED["riccati"]]),
                "direct/max": tex_number(worst[COMPARED["direct"]]),
                "worst over rtol": tex_number(ratio, 2),
                "eigen/commuting/max": tex_number(float(by.at["eigen-commuting", "commutator"].max())),
                "eigen/gaussian/final": tex_number(float(by.at["eigen-gaussian", "commutator"][-1])),
                "eigen/gaussian/misalignment": tex_number(float(by.at["eigen-gaussian", "misalignment"][-1])),
            },
        )
        ctx.finding(
            "the integrator matches three closed forms to its tolerance",
            "holds" if ratio <= 100 else "fails",
            f"worst difference {ratio:.2g} x rtol",
        )
