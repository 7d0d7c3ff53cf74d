"""Sparse completion: final error of gradient flow and the Adam flow, with and without penalties.

    python -m analysis.sparse_completion            # prints the markdown table (a few minutes, 2 cores)

One problem: a 30 x 30 PSD matrix of rank 2 (||W*||_F = 1), 180 of its 900 entries observed (20%,
uniformly, `flows.completion(n=30, m=180, rank=2, seed=0)`). For each parameterization (W = U U^T,
and the depth-3 product W = W_3 W_2 W_1), each dynamics (gradient flow; the Adam flow with
a = 100, b = 1, eps = 1e-8, i.e. optax.adam's defaults at step 1e-3) and each penalty (none; the
smoothed nuclear norm; the ratio ||W||_*/||W||_F) it integrates the flow from W_0 = 1e-6 I and
reports ||W - W*||_F / ||W*||_F at t1, with the data loss and ||W||_F there. Settings are in
`SETTINGS`: t1 = 1e5 for gradient flow (the depth-3 flow escapes W_0 only near t ~ 500 and its
tail is slow), t1 = 10 for the Adam flow (its sign-like start fits the data by t ~ 1; the tail with
eps = 1e-8 is stiff, so longer runs cost many steps).

Reading the ratio column: in completion L + lambda ||W||_* / ||W||_F has no minimizer. Adding
c e_i e_j^T at an unobserved entry (i, j) leaves L unchanged and sends the ratio to 1 as c grows,
below its value ~1.3 at the rank-2 truth. A flow that finds that direction drifts to infinity
slowly (the ratio's gradient is O(lambda / ||W||)); the Adam flow, which normalises each
coordinate, finds it fast. Such a cell reports where the drift has got to at t1 (the norm column
shows it), not a limit, and the drifting trajectory is sensitive to the solver tolerance.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time

import numpy as np

import flows


@dataclasses.dataclass(frozen=True)
class Settings:
    n: int = 30
    m: int = 180
    rank: int = 2
    seed: int = 0
    # identity inits giving W_0 = 1e-6 I for both: U_0 = 1e-3 I, and W_j = 1e-2 I for depth 3
    symmetric_scale: float = 1e-3
    deep_scale: float = 1e-2
    depth: int = 3
    strength: float = 1e-4
    nuclear_eps: float = 1e-3
    ratio_eps: float = 1e-3
    ratio_delta: float = 1e-3
    a: float = 100.0
    b: float = 1.0
    adam_eps: float = 1e-8
    t1_gradient: float = 1e5
    t1_adam: float = 10.0
    rtol: float = 1e-6
    atol: float = 1e-9
    max_steps: int = 400_000


SETTINGS = Settings()
PENALTY_NAMES = ("none", "nuclear", "ratio")


def build(settings: Settings, parameterization: str, dynamics: str, penalty: str):
    """The flow and its initial state for one cell of the table."""
    problem = flows.completion(n=settings.n, m=settings.m, rank=settings.rank, seed=settings.seed)
    deep = parameterization != "UU^T"
    penalties = {"none": None, "nuclear": flows.Nuclear(eps=settings.nuclear_eps),
                 "ratio": flows.Ratio(eps=settings.ratio_eps, delta=settings.ratio_delta)}
    flow = flows.Flow(problem, flows.Deep(depth=settings.depth) if deep else flows.Symmetric(),
                      penalty=penalties[penalty], strength=None if penalty == "none" else settings.strength,
                      dynamics=flows.Adam(a=settings.a, b=settings.b, eps=settings.adam_eps)
                      if dynamics == "Adam flow" else flows.GradientFlow())
    return flow, flow.init(scale=settings.deep_scale if deep else settings.symmetric_scale, kind="identity")


def run(settings: Settings = SETTINGS, log=sys.stderr) -> list[dict]:
    rows = []
    for parameterization in ("UU^T", f"depth {settings.depth}"):
        for dynamics in ("gradient flow", "Adam flow"):
            for penalty in PENALTY_NAMES:
                flow, state0 = build(settings, parameterization, dynamics, penalty)
                t1 = settings.t1_adam if dynamics == "Adam flow" else settings.t1_gradient
                start = time.perf_counter()
                traj = flows.solve(flow, state0, t1=t1, ts=flows.default_ts(t1, 40), rtol=settings.rtol,
                                   atol=settings.atol, max_steps=settings.max_steps)
                rows.append({"parameterization": parameterization, "dynamics": dynamics, "penalty": penalty,
                             "t1": t1, "error": float(traj.relative_error[-1]), "loss": float(traj.loss[-1]),
                             "norm": float(np.linalg.norm(traj.W[-1])), "min_error": float(traj.relative_error.min()),
                             "effective_rank": float(traj.effective_rank[-1]), "steps": traj.stats["num_steps"],
                             "seconds": time.perf_counter() - start})
                print(f"{parameterization:8s} {dynamics:14s} {penalty:8s} error {rows[-1]['error']:.3e} "
                      f"({rows[-1]['steps']} steps, {rows[-1]['seconds']:.1f} s)", file=log, flush=True)
    return rows


def table(rows: list[dict]) -> str:
    """Markdown: one row per parameterization and dynamics, one column per penalty.

    Each cell: the relative error at t1, then the data loss and ||W||_F there (||W*||_F = 1).
    """
    lines = ["| parameterization | dynamics | t1 | " + " | ".join(f"{p} penalty" for p in PENALTY_NAMES) + " |",
             "|---|---|---|" + "---|" * len(PENALTY_NAMES)]
    keys = dict.fromkeys((r["parameterization"], r["dynamics"], r["t1"]) for r in rows)
    for parameterization, dynamics, t1 in keys:
        cells = {r["penalty"]: r for r in rows if (r["parameterization"], r["dynamics"]) == (parameterization, dynamics)}
        lines.append(f"| {parameterization} | {dynamics} | {t1:g} | " + " | ".join(
            f"{cells[p]['error']:.2e} (loss {cells[p]['loss']:.0e}, norm {cells[p]['norm']:.2f})"
            for p in PENALTY_NAMES) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.sparse_completion", description=__doc__.split("\n\n")[0])
    parser.parse_args(argv)
    settings = SETTINGS
    rows = run(settings)
    print(f"Final relative error ||W - W*||_F / ||W*||_F at t1 (data loss and ||W||_F there in brackets). Completion n = {settings.n}, "
          f"rank {settings.rank}, m = {settings.m} observed ({settings.m / settings.n**2:.0%}), seed {settings.seed}; "
          f"W_0 = 1e-6 I; penalty strength {settings.strength:g} (nuclear eps {settings.nuclear_eps:g}; ratio eps "
          f"{settings.ratio_eps:g}, delta {settings.ratio_delta:g}); Adam a = {settings.a:g}, b = {settings.b:g}, "
          f"eps = {settings.adam_eps:g}; rtol {settings.rtol:g}.\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
