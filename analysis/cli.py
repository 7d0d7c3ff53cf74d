"""`gradflow check`: every analysis check at a size that runs in a few minutes on two cores.

Prints a table (check, measured value, threshold, pass/fail) and, below it, the details behind the numbers
(sweeps, reference solvers and tolerances, comparisons without a threshold). `--json` prints the rows
alone as a JSON list of objects with keys name, value, threshold, passed (and op, the comparison).
Exit status 1 if any check fails.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import operator
import time

import numpy as np

OPS = {"<=": operator.le, "<": operator.lt, ">=": operator.ge, ">": operator.gt}


@dataclasses.dataclass(frozen=True)
class Row:
    """One check: `value op threshold` must hold."""

    name: str
    value: float
    op: str
    threshold: float

    @property
    def passed(self) -> bool:
        return bool(np.isfinite(self.value) and OPS[self.op](self.value, self.threshold))

    def as_json(self) -> dict:
        return {"name": self.name, "value": self.value, "threshold": self.threshold, "passed": self.passed,
                "op": self.op}


def closed_form_checks(details: dict) -> list[Row]:
    import flows
    from analysis import closed_form

    t1, ts = 30.0, flows.default_ts(30.0, 40)
    commuting = flows.commuting(n=12, m=5, rank=2, seed=0)
    flow = flows.Symmetric(commuting)
    U0 = flow.init(scale=0.3, kind="gaussian", seed=1)
    full = flows.solve(flow, U0, t1=t1, ts=ts, rtol=1e-8, atol=1e-10)
    reduced = closed_form.commuting_flow(commuting, U0, t1, ts, rtol=1e-8, atol=1e-10)

    H = np.random.default_rng(3).standard_normal((7, 7))
    H = (H + H.T) / 2
    observed = flows.Symmetric(closed_form.fully_observed(H))
    V0 = observed.init(scale=0.1, kind="gaussian", seed=2)
    riccati_traj = flows.solve(observed, V0, t1=t1, ts=ts, rtol=1e-8, atol=1e-10)

    sensing = flows.sensing(n=6, m=12, rank=2, seed=0)
    direct = flows.Direct(sensing)
    W0 = direct.init(scale=0.5, kind="gaussian")
    direct_traj = flows.solve(direct, W0, t1=t1, ts=ts, rtol=1e-8, atol=1e-10)
    details["closed_form"] = "Tsit5, rtol 1e-8, atol 1e-10, 40 saved times on [0, 30]; commuting n=12 m=5, " \
                             "Riccati 7x7 indefinite H, direct sensing n=6 m=12"
    return [
        Row("closed_form.commuting_reduced_ode", closed_form.trajectory_difference(full.W, reduced.W), "<=", 1e-6),
        Row("closed_form.riccati", closed_form.trajectory_difference(riccati_traj.W, closed_form.riccati(H, V0, ts)),
            "<=", 1e-6),
        Row("closed_form.direct", closed_form.trajectory_difference(direct_traj.W, closed_form.direct_flow(sensing, W0, ts)),
            "<=", 1e-6),
    ]


def eigenbasis_checks(details: dict) -> list[Row]:
    import flows
    from analysis import eigenbasis

    t1 = 30.0
    reports = {}
    for name, problem in (("commuting", flows.commuting(n=12, m=5, rank=2, seed=0)),
                          ("gaussian", flows.sensing(n=12, m=5, rank=2, seed=0))):
        flow = flows.Symmetric(problem)
        traj = flows.solve(flow, flow.init(scale=1e-2), t1=t1, ts=flows.default_ts(t1, 40), rtol=1e-8, atol=1e-12)
        reports[name] = eigenbasis.eigenbasis_report(problem, traj)
    details["eigenbasis"] = {name: {"max_commutator": r.max_commutator, "max_misalignment": r.max_misalignment}
                             for name, r in reports.items()}
    return [
        Row("eigenbasis.commuting.commutator", reports["commuting"].max_commutator, "<=", 1e-10),
        Row("eigenbasis.commuting.misalignment", reports["commuting"].max_misalignment, "<=", 1e-10),
        Row("eigenbasis.gaussian.commutator (claim fails)", float(reports["gaussian"].commutator[-1]), ">=", 1e-2),
    ]


def _successive_ratio(values) -> float:
    values = np.asarray(values)
    return float(np.max(values[1:] / values[:-1]))


def small_init_checks(details: dict) -> list[Row]:
    import flows
    from analysis import references, small_init

    alphas = np.array([1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7])
    i6 = 5
    commuting = flows.commuting(n=12, m=5, rank=2, seed=0)
    refs = {"nuclear": references.min_nuclear_psd(commuting), "lp": references.commuting_lp(commuting)}
    c_sweep = small_init.sweep(flows.Symmetric(commuting), alphas, refs)
    reduced = small_init.commuting_certificates(commuting, alphas)
    reduced_vs_full = max(np.linalg.norm(r.W - f.W) / np.linalg.norm(f.W) for r, f in zip(reduced.runs, c_sweep.runs))

    sensing = flows.sensing(n=30, m=180, rank=2, seed=0)
    s_sweep = small_init.sweep(flows.Symmetric(sensing), alphas, {"nuclear": references.min_nuclear_psd(sensing)})

    plain = flows.sensing(n=8, m=20, rank=2, seed=0)
    frobenius = references.min_frobenius(plain)
    direct = flows.Direct(plain)
    # The direct flow is linear: no stiff tail, Tsit5 for it (the sweep and this run share the compiled solve).
    explicit = dict(t1=200.0, head_solver=flows.solver_by_name("tsit5"), tail_solver=flows.solver_by_name("tsit5"))
    from_zero = small_init.converge(direct, direct.init(kind="zero"), **explicit)
    d_sweep = small_init.sweep(direct, alphas, {"frobenius": frobenius}, **explicit)

    certs = reduced.certificates
    details["small_init"] = {
        "commuting n=12 m=5": _sweep_details(c_sweep),
        "commuting n=12 m=5, reduced ODE (certificate from s = int r)": _sweep_details(reduced),
        "sensing n=30 m=180": _sweep_details(s_sweep),
        "direct n=8 m=20": _sweep_details(d_sweep),
        "runs": "flows' default solver (rtol 1e-8, atol 1e-12) to loss 1e-6, then its linearly implicit "
                "extrapolation (Kvaerno5 for the reduced ODE; same tolerances) to t = 1e8",
    }
    return [
        Row("small_init.commuting.distance_nuclear@1e-6", c_sweep.distances["nuclear"][i6], "<=", 1e-4),
        Row("small_init.commuting.distance_lp@1e-6", c_sweep.distances["lp"][i6], "<=", 1e-4),
        Row("small_init.commuting.monotone (max d(a_k+1)/d(a_k))", _successive_ratio(c_sweep.distances["nuclear"]),
            "<", 1.0),
        Row("small_init.commuting.rate (d ~ alpha^p)", c_sweep.rates["nuclear"], ">", 0.0),
        Row("small_init.commuting.reduced_ode_W_inf_vs_full", reduced_vs_full, "<=", 1e-6),
        Row("small_init.commuting.certificate_complementarity (max ratio)",
            _successive_ratio([c.complementarity for c in certs]), "<", 1.0),
        Row("small_init.commuting.certificate_dual_violation", max(c.dual for c in certs), "<=", 1e-12),
        Row("small_init.sensing.distance_nuclear@1e-6", s_sweep.distances["nuclear"][i6], "<=", 1e-4),
        Row("small_init.sensing.monotone (max d(a_k+1)/d(a_k))", _successive_ratio(s_sweep.distances["nuclear"]),
            "<", 1.0),
        Row("small_init.direct.from_zero_to_min_frobenius", frobenius.distance(from_zero.W), "<=", 1e-8),
        # Exactly 1 in theory; the landing points carry ~1e-11 solver error, 3e-5 of d at alpha = 1e-7.
        Row("small_init.direct.rate_minus_1 (|p - 1|)", abs(d_sweep.rates["frobenius"] - 1.0), "<=", 1e-4),
    ]


def _sweep_details(sweep) -> dict:
    out = {"alphas": sweep.alphas.tolist(),
           "distances": {k: v.tolist() for k, v in sweep.distances.items()}, "rates": sweep.rates,
           "references": {k: ref.describe() for k, ref in sweep.references.items()},
           "max_last_decade_change": max(run.last_decade_change for run in sweep.runs)}
    if sweep.certificates:
        out["certificate (dual, complementarity, gap)"] = [(c.dual, c.complementarity, c.gap)
                                                           for c in sweep.certificates]
    return out


def deep_checks(details: dict) -> list[Row]:
    import flows
    from analysis import closed_form, deep

    t1, ts, options = 20.0, flows.default_ts(20.0, 40), dict(rtol=1e-10, atol=1e-12)
    problem = flows.sensing(n=6, m=20, rank=2, seed=0, symmetric=False)
    depth = 3
    flow = deep.WithSingularValues(flows.Deep(problem, depth=depth))
    factors0 = flows.Deep(problem, depth=depth).init(scale=0.5, kind="balanced", seed=1)
    traj = flows.solve(flow, flow.state(factors0), t1=t1, ts=ts, **options)
    end_to_end = deep.EndToEnd(problem, depth, traj.W[0])
    reference = flows.solve(end_to_end, end_to_end.init(), t1=t1, ts=ts, **options)
    sv = deep.singular_value_report(traj)
    factored = flows.Factored(problem)
    f_traj = flows.solve(factored, factored.init(scale=0.5, kind="gaussian", seed=1), t1=t1, ts=ts, **options)

    completion = flows.completion(n=10, m=40, rank=2, seed=0, symmetric=False)
    runs = deep.effective_rank_by_depth(completion, (1, 2, 3), end_to_end_scale=1e-3, t1=1e5,
                                        ts=flows.default_ts(1e5, 60), stop_loss=1e-12, rtol=1e-8, atol=1e-12)
    final_rank = [float(runs[d].effective_rank[-1]) for d in (1, 2, 3)]
    details["deep"] = {"sensing n=6 m=20 (asymmetric), depth 3, balanced start, rtol 1e-10": {
        "min_relative_singular_gap": sv.min_relative_gap},
        "completion n=10 m=40, W0 = 1e-3 I, run to loss 1e-12": {
            f"depth {d}": {"final_effective_rank": float(runs[d].effective_rank[-1]),
                           "min_effective_rank_over_time": float(np.nanmin(runs[d].effective_rank)),
                           "relative_error": float(runs[d].relative_error[-1])} for d in (1, 2, 3)}}
    return [
        Row("deep.end_to_end_ode", closed_form.trajectory_difference(traj.W, reference.W), "<=", 1e-7),
        Row("deep.singular_value_ode", sv.max_relative_error, "<=", 1e-7),
        Row("deep.conserved_balancedness", max(d.max() for d in traj.conserved_drift().values()), "<=", 1e-7),
        Row("conserved.factored_UtU-VtV", float(f_traj.conserved_drift()["U^T U - V^T V"].max()), "<=", 1e-7),
        Row("deep.effective_rank_falls_with_depth (max ratio)", _successive_ratio(final_rank), "<", 1.0),
    ]


def flatness_checks(details: dict) -> list[Row]:
    import flows
    from analysis import flatness

    rng = np.random.default_rng(0)
    worst = 0.0
    for problem in (flows.sensing(n=6, m=20, rank=2, seed=0, symmetric=False, n2=9),
                    flatness.nonuniform_completion(8, 30, 2, seed=0)):
        d1, d2 = problem.shape
        identity = flatness.trace_identity(problem, rng.standard_normal((d1, 3)), rng.standard_normal((d2, 3)))
        worst = max(worst, identity.relative_error)
    rows = [Row("flatness.trace_identity", worst, "<=", 1e-10)]
    details["flatness"] = {}
    for label, skew in (("uniform", 1.0), ("skewed x8", 8.0)):
        problem = flatness.nonuniform_completion(10, 45, 2, seed=0, skew=skew)
        flow = flows.Factored(problem)
        traj = flows.solve(flow, flow.init(scale=1e-3, kind="balanced"), t1=1e6, ts=np.array([0.0]), stop_loss=1e-14,
                           rtol=1e-8, atol=1e-12)
        comparison = flatness.compare_flattest(problem, (traj.states[0][-1], traj.states[1][-1]))
        D1, D2 = flatness.weights(problem)
        formula = 4 * problem.m * np.linalg.svd(D1 @ comparison.flattest.X @ D2, compute_uv=False).sum()
        rows += [Row(f"flatness.{label}.flattest_factors_str_formula",
                     abs(comparison.str_flattest - formula) / formula, "<=", 1e-8),
                 Row(f"flatness.{label}.str_flow/str_flattest", comparison.str_flow / comparison.str_flattest,
                     ">=", 1.0 - 1e-6)]
        details["flatness"][f"completion n=10 m=45 {label}, UV^T from balanced 1e-3, to loss 1e-14"] = {
            "str_flow": comparison.str_flow, "str_flattest": comparison.str_flattest,
            "distance(flow, flattest)": comparison.distance_flow_flattest,
            "distance(flow, min nuclear)": comparison.distance_flow_nuclear,
            "distance(flattest, min nuclear)": comparison.distance_flattest_nuclear,
            "distance(flattest, truth)": comparison.flattest.distance(problem.truth),
            "distance(flow, truth)": float(traj.relative_error[-1]),
            "nuclear norm (flow, min nuclear)": (float(traj.nuclear_norm[-1]), comparison.nuclear.objective),
            "reference": comparison.flattest.describe()}
    return rows


GROUPS = {"closed_form": closed_form_checks, "eigenbasis": eigenbasis_checks, "small_init": small_init_checks,
          "deep": deep_checks, "flatness": flatness_checks}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gradflow check", description=(
        "Run the analysis checks (closed forms, eigenbasis, small-init limit, deep dynamics, flatness) "
        "and print each measured value against its threshold. Exit status 1 if any fails."))
    parser.add_argument("--json", action="store_true", help="print the rows as a JSON list, nothing else")
    parser.add_argument("--only", nargs="+", choices=tuple(GROUPS), default=tuple(GROUPS), metavar="GROUP",
                        help=f"run only these groups ({', '.join(GROUPS)}; default: all)")
    return parser


def _format_table(rows: list[Row]) -> str:
    width = max(len(r.name) for r in rows)
    lines = [f"{'check':<{width}}  {'value':>11}  {'threshold':>13}  result", "-" * (width + 37)]
    for r in rows:
        lines.append(f"{r.name:<{width}}  {r.value:>11.3e}  {r.op:>2} {r.threshold:>10.3g}  "
                     f"{'pass' if r.passed else 'FAIL'}")
    return "\n".join(lines)


def check(argv: list[str]) -> int:
    """Entry point of `gradflow check`; returns the exit status."""
    args = build_parser().parse_args(argv)
    start = time.perf_counter()
    rows: list[Row] = []
    details: dict = {}
    seconds = {}
    for name in args.only:
        group_start = time.perf_counter()
        rows += GROUPS[name](details)
        seconds[name] = round(time.perf_counter() - group_start, 1)
    details["seconds per group"] = seconds
    elapsed = time.perf_counter() - start
    if args.json:
        print(json.dumps([r.as_json() for r in rows], indent=1))
    else:
        print(_format_table(rows))
        failed = sum(not r.passed for r in rows)
        print(f"\n{len(rows) - failed} of {len(rows)} checks passed in {elapsed:.0f} s")
        print("\ndetails:")
        print(json.dumps(details, indent=1, default=float))
    return 0 if all(r.passed for r in rows) else 1
