"""Performance, drawn from the benchmarks' saved results (reproduce does not rerun the benchmarks).

`benchmarks/vs_scipy.py --json benchmarks/results/vs_scipy-<setting>.json` times flows.solve against scipy's
LSODA (with the jitted Jacobian) on the same ODE to the same accuracy; `benchmarks/scaling.py` writes
benchmarks/scaling.json (wall time and steps against n). This experiment draws both and writes the ratios
as values; the benchmarks' own README says how each number is measured.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ._base import Experiment, new_figure, slope, tex_number, timings

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _timing_rows() -> list[list[str]]:
    """The measured wall times as table rows, "--" where a scale has not been measured from an empty store."""
    table = timings()

    def text(seconds) -> str:
        if seconds is None:
            return "--"
        return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"

    return [[name.replace("_", "\\_"), text(t.get("quick")), text(t.get("full"))] for name, t in sorted(table.items())]


DEFAULT_ROW = "flows switching"
"""vs_scipy's row of the solver `flows.solve` picks by default for its sensing settings (`Tsit5ThenExtrapolation`),
saving the final state only, as scipy returns it."""


def _vs_scipy() -> list[dict]:
    """Each saved vs_scipy report with the default solver's row and LSODA+jac, both accurate: the setting, their
    wall times (medians of the timed repeats) and ratio, their final W's relative errors against the report's
    Dopri8 reference, and the number of timed repeats both have."""
    reports = []
    for path in sorted((BENCHMARKS / "results").glob("vs_scipy-*.json")):
        report = json.loads(path.read_text())
        methods = report["methods"]
        if DEFAULT_ROW not in methods:
            raise ValueError(f"{path.name} has no '{DEFAULT_ROW}' row (the default solver's): rows {sorted(methods)}")
        ours, lsoda = methods[DEFAULT_ROW], methods.get("scipy LSODA+jac")
        if lsoda is None or not (ours["ok"] and lsoda["ok"]):
            continue
        reports.append(
            {
                "setting": report["setting"],
                "method": DEFAULT_ROW,
                "wall": ours["wall"],
                "lsoda": lsoda["wall"],
                "speedup": ours["speedup_vs_lsoda_jac"],
                "error": ours["W_error"],
                "lsoda error": lsoda["W_error"],
                "repeats": min(len(ours["runs"]), len(lsoda["runs"])),
            }
        )
    return reports


def _speedup(x: float) -> str:
    """A speed-up as the figure, the table and the text all show it."""
    return f"{x:.1f}"


def _slope(x: float) -> str:
    """A scaling slope as the figure's legend and the text both show it."""
    return f"{x:.2f}"


class Performance(Experiment):
    name = "performance"
    title = "speed against scipy LSODA and scaling with n (from the saved benchmark results)"

    def report(self, ctx, results) -> None:
        comparisons = _vs_scipy()
        scaling = json.loads((BENCHMARKS / "scaling.json").read_text())
        fig, (left, right) = new_figure(2, width=3.4, height=2.8)
        if comparisons:
            labels = [c["setting"].replace(" r=", "\nr=").replace(" alpha", "\nalpha") for c in comparisons]
            x = np.arange(len(comparisons))
            left.bar(x - 0.2, [c["lsoda"] for c in comparisons], 0.4, label="scipy LSODA + jitted Jacobian")
            left.bar(x + 0.2, [c["wall"] for c in comparisons], 0.4, label="flows.solve (default solver)")
            for xi, c in zip(x, comparisons):
                left.annotate(f"{_speedup(c['speedup'])}x", (xi + 0.2, c["wall"]), ha="center", va="bottom", fontsize=7)
            left.set_xticks(x, labels, fontsize=6)
            left.set_yscale("log")
            # Log-scale bars start at the axis' bottom: a decade below the shortest, so every bar's height shows.
            left.set_ylim(bottom=0.1 * min(min(c["wall"], c["lsoda"]) for c in comparisons))
            left.legend(loc="upper center", bbox_to_anchor=(0.5, -0.3))
        left.set(ylabel="wall time to loss $< 10^{-10}$ (s)", title="against scipy (same accuracy)")
        ns = np.array([r["n"] for r in scaling])
        for key, label, marker in (("seconds", "wall time (s)", "o"), ("steps", "steps", "s")):
            ys = np.array([r[key] for r in scaling])
            right.loglog(ns, ys, marker=marker, label=f"{label}: slope {_slope(slope(ns, ys))}")
        right.set(
            xlabel="$n$ (completion of an $n \\times n$ matrix, $U U^T$)",
            ylabel="wall time (s) / steps",
            title=f"scaling ({scaling[0]['solver']}, $t \\in [0, {scaling[0]['t_final']:g}]$)",
        )
        right.legend(loc="upper center", bbox_to_anchor=(0.5, -0.3))
        ctx.figure(fig, "performance")

        values = {
            "scaling slope": f"\\ensuremath{{{_slope(slope(ns, [r['seconds'] for r in scaling]))}}}",
            "scaling max n": str(int(ns.max())),
            "settings": str(len(comparisons)),
        }
        if comparisons:
            speedups = [c["speedup"] for c in comparisons]
            values |= {
                "speedup min": f"\\ensuremath{{{_speedup(min(speedups))}}}",
                "speedup max": f"\\ensuremath{{{_speedup(max(speedups))}}}",
                "error max": tex_number(max(c["error"] for c in comparisons)),
                "lsoda error max": tex_number(max(c["lsoda error"] for c in comparisons)),
                "repeats": str(min(c["repeats"] for c in comparisons)),
            }
            ctx.table(
                self.name,
                "vs-scipy",
                "lrrr",
                ["setting", "LSODA+jac (s)", "flows (s)", "speed-up"],
                [
                    [
                        c["setting"].replace("alpha", "$\\alpha$"),
                        f"{c['lsoda']:.2f}",
                        f"{c['wall']:.2f}",
                        _speedup(c["speedup"]),
                    ]
                    for c in comparisons
                ],
            )
        ctx.values(self.name, values)
        ctx.table(self.name, "timings", "lrr", ["experiment", "quick", "full"], _timing_rows())
