r"""The span claim (claim 4): does the penalty keep W in its row and column spaces?

Claim. The gradients of the nuclear norm and of the ratio lie in the span of W (its row and column spaces), so
gradient descent on the penalty cannot leave them; Adam's per-coordinate normalisation can.

What is invariant (derived). Any spectral penalty $R(W) = f(\sigma(W))$ has $\nabla R = U \operatorname{diag}(
\partial f / \partial \sigma) V^T$ in W's own singular frame. So the pure-penalty gradient flow
$W' = -\lambda \nabla R(W)$ is solved by $W(t) = U_0 \operatorname{diag}(\sigma(t)) V_0^T$ with
$\sigma' = -\lambda\, \partial f/\partial\sigma$ (and by uniqueness, only by it): every singular vector of $W_0$
is invariant, not just the column and row spaces. That is much more than the seed's claim, and also less: from
the init $W_0 = P_\Omega(W^*)$, which is full rank, "W's row and column spaces" are all of
$\mathbb{R}^n$ and constrain nothing; what the invariance freezes is the singular frame, in particular the top-r
singular subspaces, which must turn from $W_0$'s to $W^*$'s for recovery. With the data loss the field gains
$-P_\Omega(W - W^*)$, which is not spectral: nothing of the frame stays invariant, under gradient flow or
otherwise. Under the Adam / RMSProp flows even the pure-penalty field $-\hat m / (\sqrt{\hat v} + \epsilon)$ is
an elementwise function of $U D V^T$, not of that form: the frame turns.

Measurement. The largest principal angle between the top-r left singular subspaces of $W(t)$ and $W_0$ (and the
right ones), and between $W(t)$'s and $W^*$'s, against time: for the pure penalty (no data) and for data +
penalty, under gradient flow, RMSProp flow and Adam flow, on the completion experiment's problems (`SETTINGS`: all
observed entries, depth 1 from $P_\Omega(W^*)$, the ratio at one strength), every seed. The claim is about the
geometry of the path, so no choice is made on any error: there is nothing to tune. Verdict: the frame is kept when
the largest angle over every seed stays below `FROZEN` (round-off) and turned when it exceeds `TURNED`; the claim
*holds for the penalty alone* when gradient flow keeps it and Adam turns it, and *fails for the penalised loss* when
gradient flow with the data turns it.
"""

from __future__ import annotations

import numpy as np
from jaxtyping import Float

import flows

from ._base import Experiment, Group, new_figure, tex_number
from ._completion import COLOURS, MAX_STEPS, PENALTIES, RTOL, SAVES, SCALES, build, observed, problem
from ._completion import DYNAMICS as RATES

DYNAMICS = ("gradient flow", "RMSProp", "Adam")
FROZEN = 1e-6
"""A largest angle at most this (radians) is round-off: the frame did not turn."""
TURNED = 1e-2
"""A largest angle above this turned the frame."""
SETTINGS = {quick: SCALES["n = 30"][quick] for quick in (False, True)}
"""By quick: the completion experiment's problems (all of their observed entries), seeds and horizons."""
STRENGTH = 3.0
"""The ratio's strength, in the middle of the completion experiment's grid."""
PURE_HORIZON = 1.0
"""Of the pure-penalty runs: the pure penalty's frame is frozen or not from the start, so a short horizon shows it
(the pure-ratio flows' tails, singular values shrinking into the smoothing eps, are stiff)."""


def top_subspace(W: Float[np.ndarray, "n1 n2"], k: int, side: str) -> np.ndarray:
    """Orthonormal basis of the top-k left ("left") or right ("right") singular subspace of W."""
    U, _, Vt = np.linalg.svd(W)
    return U[:, :k] if side == "left" else Vt[:k].T


def largest_angle(A: np.ndarray, B: np.ndarray) -> float:
    r"""The largest principal angle between the column spaces of orthonormal A and B (same number of columns):
    $\arcsin \|(I - A A^T) B\|_2$, accurate also for small angles (the arccos of the smallest cosine is not)."""
    residual = B - A @ (A.T @ B)
    return float(np.arcsin(min(1.0, np.linalg.norm(residual, 2))))


def angles(Ws: np.ndarray, reference: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """Largest principal angles (left and right top-k subspaces) of each W(t) against `reference`."""
    out = {}
    for side in ("left", "right"):
        R = top_subspace(reference, k, side)
        out[side] = np.array([largest_angle(R, top_subspace(W, k, side)) for W in Ws])
    return out


def no_data(config: dict) -> flows.Problem:
    """A problem with no measurement (A = 0): the flow is the penalty's alone."""
    n = config["n"]
    return flows.Problem.from_matrices(np.zeros((1, n, n)), np.zeros(1))


def build_pure(config: dict):
    """The pure-penalty flow (ratio, no data) from the penalties grid's direct init P_Omega(W*)."""
    description = {
        "parameterization": {"name": "direct"},
        "dynamics": RATES[config["dynamics"]],
        "penalty": PENALTIES["ratio"],
        "strength": config["strength"],
    }
    flow = flows.Flow.from_description(no_data(config), description)
    return flow, flow.dynamics.init(np.asarray(observed(problem(config))))


class Span(Experiment):
    name = "span"
    title = "the span claim: principal angles of W(t)'s top singular subspaces, pure penalty and with data"

    def groups(self, quick):
        setting = SETTINGS[quick]
        out = []
        for d in DYNAMICS:
            cell = dict(parameterization="depth 1", penalty="ratio", strength=STRENGTH, dynamics=d)
            configs = [setting.config(seed, **cell) for seed in range(setting.seeds)]
            configs = [{k: v for k, v in c.items() if k != "held out"} for c in configs]  # every entry observed
            for kind, label, how, t1 in (
                ("data", "with data", build, setting.horizon(d)),
                ("pure", "penalty only", build_pure, PURE_HORIZON),
            ):
                options = dict(t1=t1, ts=flows.default_ts(t1, SAVES), rtol=RTOL, max_steps=MAX_STEPS)
                out.append(Group(f"{d}, {label}", how, [c | {"kind": kind} for c in configs], options))
        return out

    def measure(self, traj, config):
        W = np.asarray(traj.W)
        truth = np.asarray(problem(config).truth)
        return {
            "t": np.asarray(traj.ts),
            **{f"init_{k}": v for k, v in angles(W, W[0], config["rank"]).items()},
            **{f"truth_{k}": v for k, v in angles(W, truth, config["rank"]).items()},
        }

    def report(self, ctx, results):
        grid = SETTINGS[ctx.quick]
        done = results[results["status"] != "failed"]
        curves = {(row["kind"], row["dynamics"], row["seed"]): row for _, row in done.iterrows()}
        self._figure(ctx, grid, curves)
        self._values(ctx, grid, curves)

    @staticmethod
    def _figure(ctx, grid, curves) -> None:
        fig, axes = new_figure(3, width=3.1, height=2.7)
        panels = (
            (axes[0], "pure", "init", "penalty only: vs. $W_0$"),
            (axes[1], "data", "init", "data + penalty: vs. $W_0$"),
            (axes[2], "data", "truth", r"data + penalty: vs. $W^*$"),
        )
        for ax, kind, against, title in panels:
            for d in DYNAMICS:
                group = [c for (k, dd, _), c in curves.items() if (k, dd) == (kind, d)]
                for i, c in enumerate(group):
                    ax.plot(
                        c["t"][1:],
                        np.maximum(np.maximum(c[f"{against}_left"], c[f"{against}_right"])[1:], 1e-16),
                        color=COLOURS[d],
                        label=d if i == 0 else None,
                        alpha=0.8,
                    )
            ax.set(
                xscale="log",
                yscale="log",
                xlabel="time $t$",
                title=title,
                xlim=(1e-3, None),
                ylabel=f"largest principal angle (rad), top-{grid.rank}",
            )
        fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncols=len(DYNAMICS))
        ctx.figure(fig, "span")

    def _values(self, ctx, grid, curves) -> None:
        values = {
            "rank": str(grid.rank),
            "seeds": str(grid.seeds),
            "strength": tex_number(STRENGTH),
            "frozen": tex_number(FROZEN),
            "turned": tex_number(TURNED),
        }
        worst = {}
        for kind, kkey in (("pure", "penalty only"), ("data", "with data")):
            for d in DYNAMICS:
                group = [c for (k, dd, _), c in curves.items() if (k, dd) == (kind, d)]
                if not group:
                    continue
                worst[kind, d] = max(float(np.max(np.maximum(c["init_left"], c["init_right"]))) for c in group)
                final_truth = float(np.mean([max(c["truth_left"][-1], c["truth_right"][-1]) for c in group]))
                best_truth = float(np.mean([np.min(np.maximum(c["truth_left"], c["truth_right"])) for c in group]))
                values |= {
                    f"{kkey}/{d}/max angle to init": tex_number(worst[kind, d]),
                    f"{kkey}/{d}/best angle to truth": tex_number(best_truth),
                    f"{kkey}/{d}/end angle to truth": tex_number(final_truth),
                }
        if all((k, d) in worst for k in ("pure", "data") for d in ("gradient flow", "Adam")):
            frozen = worst["pure", "gradient flow"] <= FROZEN and worst["pure", "Adam"] > TURNED
            turns = worst["data", "gradient flow"] > TURNED
            verdict = ("holds for the penalty alone" if frozen else "fails for the penalty alone") + (
                ", fails for the penalised loss" if turns else ", holds for the penalised loss"
            )
        else:
            verdict = "n/a"
        values["verdict"] = verdict
        ctx.finding(
            "claim 4: the penalty's gradient flow keeps W in its singular frame, Adam's does not",
            verdict,
            f"largest angle: penalty alone {values.get('penalty only/gradient flow/max angle to init')} "
            f"(gradient flow), with data {values.get('with data/gradient flow/max angle to init')}",
        )
        ctx.values(self.name, values)
