r"""What every experiment shares: runs declared as data, measured once, read as a table.

An experiment (`Experiment`) declares its runs as `Group`s (configurations, how to build each, and the solve
options they share), the scalar and small-array measurements taken once per finished run (`measure`), and a report
(`report`) that reads a tidy `pandas.DataFrame` of runs x measurements and writes figures, tables and values. The
template `Experiment.run` sweeps every group into the one keyed store (`flows.sweep`: a run is keyed by what
computes it, so experiments that declare the same run share it), measures each finished run once and stores the
measurements beside it (keyed by the measuring code), builds the table and hands it to the report. A reproduction
from a warm store therefore reads measurements, never a trajectory.

Values for the paper are written as keyed LaTeX definitions, `\gfvalue{<experiment>/<key>}{<text>}`, and read
with `\gf{<experiment>/<key>}` (the paper's preamble defines both and stops on a key nobody wrote).
"""

from __future__ import annotations

import abc
import dataclasses
import inspect
import json
import logging
import math
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

import analysis
import flows

# fontTools warns about the embedded fonts' zero timestamps while subsetting them into PDFs: not ours to fix.
logging.getLogger("fontTools").setLevel(logging.ERROR)

STYLE = Path(__file__).with_name("gradflow.mplstyle")
"""The one matplotlib style of every figure (Okabe-Ito palette)."""

KEY = re.compile(r"[A-Za-z0-9 ./_=+,-]+")
"""The characters of a value's key (no TeX specials: keys are read inside \\csname)."""


@dataclasses.dataclass
class Tally:
    """Runs computed now, reused from the store, and failed, over a whole reproduction, and what it wrote."""

    done: int = 0
    reused: int = 0
    failed: int = 0
    notes: list[str] = dataclasses.field(default_factory=list)
    figures: list[Path] = dataclasses.field(default_factory=list)
    generated: list[Path] = dataclasses.field(default_factory=list)
    findings: list[dict] = dataclasses.field(default_factory=list)
    tables: list[tuple[str, str, list[str], list[list[str]]]] = dataclasses.field(default_factory=list)
    """(experiment, name, header, rows) of every table written."""
    figure_owners: list[tuple[str, Path]] = dataclasses.field(default_factory=list)
    """(experiment, file) of every figure written."""
    report: Path | None = None
    """The reproduction's web page, once written."""

    @property
    def settled(self) -> int:
        return self.done + self.reused + self.failed

    def count(self, status: str) -> None:
        if status == "done":
            self.done += 1
        elif status == "cached":
            self.reused += 1
        else:
            self.failed += 1


@dataclasses.dataclass(frozen=True)
class Group:
    """Runs solved with the same options: `configs` (dicts of JSON values), `build(config) -> (flow, state0)`, and
    `flows.sweep`'s keyword options (t1, ts, rtol, stop_loss, solver, max_steps, ...). `label` names the group in
    progress bars and in the table's "group" column."""

    label: str
    build: Callable[[dict], tuple]
    configs: list[dict]
    options: dict[str, Any]


@dataclasses.dataclass
class Context:
    """Where one reproduction reads and writes, and at which scale.

    quick: the small grids (same figures, minutes on two cores); store: the keyed store of runs, references and
    measurements (`flows.open_store`); figures, generated: where figures (PDF + PNG) and LaTeX go; executor: a
    concurrent.futures-style executor (a Dask client) for the sweeps, or None for this process; fresh: compute
    everything again (each run once per reproduction, also where experiments share it).
    """

    quick: bool
    store: Path
    figures: Path
    generated: Path
    progress: bool = True
    executor: Any = None
    fresh: bool = False
    tally: Tally = dataclasses.field(default_factory=Tally)
    computed: set[str] = dataclasses.field(default_factory=set)
    """Keys computed in this reproduction (what `fresh` reuses)."""
    measured_now: set[Path] = dataclasses.field(default_factory=set)
    """Measurement records written in this reproduction (what `fresh` reuses)."""
    experiment: str = ""
    """The experiment being run (names progress bars)."""
    position: str = ""
    """Its place in the reproduction, "3/15"."""

    @property
    def runs(self) -> Path:
        return self.store / "runs"

    def reusable(self, key: str) -> bool:
        return not self.fresh or key in self.computed

    def sweep(self, group: Group, reuse: bool = True) -> list[flows.Run]:
        """`flows.sweep` of a group into the store; statuses tallied, resumed runs' notes kept; `reuse=False`
        computes the group's runs again."""
        extra = {} if self.executor is None else {"executor": self.executor}

        def settled(run: flows.Run) -> None:
            self.tally.count(run.status)
            if run.status == "done":
                self.computed.add(run.key)
            if run.note:
                self.tally.notes.append(f"{self.experiment} ({group.label}): run {run.key}: {run.note}")

        desc = f"[{self.position}] {self.experiment}: {group.label}" if self.position else group.label
        return flows.sweep(
            group.build,
            group.configs,
            self.runs,
            progress=self.progress,
            desc=desc,
            reuse=self.reusable if reuse else False,
            on_run=settled,
            **extra,
            **group.options,
        )

    def cached(
        self, inputs: Any, compute: Callable[[], dict[str, Any]], code: tuple[Any, ...] = ()
    ) -> dict[str, np.ndarray]:
        """Arrays computed once for `inputs` (anything `flows.fingerprint` keys: problems, flows, settings) and
        stored in the store's `results` folder: reference solutions, discrete runs. The source of the functions or
        modules in `code` (what computes or reduces the arrays) joins the key, so that changing them computes the
        arrays again."""
        if code:
            inputs = {"inputs": inputs, "code": [inspect.getsource(function) for function in code]}
        key = flows.fingerprint({"schema": flows.SCHEMA, "inputs": inputs})
        arrays, reused = flows.cached(self.store / "results", inputs, compute, fresh=not self.reusable(key))
        self.computed.add(key)
        self.tally.count("cached" if reused else "done")
        return arrays

    def measured(self, run: flows.Run, measure: Callable, version: str) -> dict[str, Any]:
        """`measure(trajectory, config)` of a finished run, computed once and stored beside the run under a key of
        the run and the measuring code (`version`); scalars come back as floats."""
        path = run.path / ("measured-" + flows.fingerprint({"run": run.key, "code": version, "config": run.config}, 16))
        if not self.fresh or path in self.measured_now:
            try:
                arrays, _ = flows.read_record(path)
                return {k: _value(v) for k, v in arrays.items()}
            except (FileNotFoundError, flows.CorruptRecordError):
                pass
        values = measure(run.load(), run.config)
        flows.write_record(path, {k: np.asarray(v) for k, v in values.items()}, {"run": run.key})
        self.measured_now.add(path)
        return {k: _value(np.asarray(v)) for k, v in values.items()}

    def figure(self, fig: Figure, name: str) -> None:
        """Save a figure as vector PDF and PNG under `figures/` (name without extension)."""
        self.figures.mkdir(parents=True, exist_ok=True)
        # No creation dates: the same numbers make the same files.
        for suffix, metadata in ((".pdf", {"CreationDate": None, "ModDate": None}), (".png", {"Software": None})):
            path = self.figures / (name + suffix)
            flows.write_figure(fig, path, metadata=metadata)
            self.tally.figures.append(path)
            self.tally.figure_owners.append((self.experiment, path))

    def values(self, experiment: str, values: dict[str, str]) -> None:
        r"""Write generated/<experiment>.tex: one `\gfvalue{<experiment>/<key>}{<text>}` per value."""
        lines = [f"% generated by `gradflow reproduce{' --quick' if self.quick else ''}` ({experiment}); do not edit"]
        for key, value in values.items():
            if not KEY.fullmatch(key):
                raise ValueError(f"a value's key holds letters, digits, spaces and ./_=+,- only; got {key!r}")
            if not isinstance(value, str):
                raise TypeError(f"{experiment}/{key}: values are LaTeX text; got {type(value).__name__}")
            lines.append(f"\\gfvalue{{{experiment}/{key}}}{{{value}}}")
        self._write(f"{experiment}.tex", "\n".join(lines) + "\n")

    def table(self, experiment: str, name: str, columns: str, header: list[str], rows: list[list[str]]) -> None:
        r"""Write generated/<experiment>-<name>.tex: a booktabs tabular (\input it in the paper)."""
        body = [f"\\begin{{tabular}}{{{columns}}}", "\\toprule", " & ".join(header) + " \\\\", "\\midrule"]
        body += [" & ".join(row) + " \\\\" for row in rows]
        body += ["\\bottomrule", "\\end{tabular}"]
        self._write(f"{experiment}-{name}.tex", "\n".join(body) + "\n")
        self.tally.tables.append((experiment, name, header, rows))

    def finding(self, claim: str, verdict: str, number: str = "") -> None:
        """One claim's verdict and the number that decides it, for the reproduction's summary and report."""
        self.tally.findings.append(
            {"experiment": self.experiment, "claim": claim, "verdict": verdict, "number": number}
        )

    def _write(self, filename: str, text: str) -> None:
        self.generated.mkdir(parents=True, exist_ok=True)
        path = self.generated / filename
        tmp = path.with_name(f".{path.name}.tmp")  # written whole, then renamed: never a half file
        tmp.write_text(text)
        tmp.replace(path)
        self.tally.generated.append(path)


def _value(array: np.ndarray):
    return float(array) if array.ndim == 0 and array.dtype.kind in "fiub" else array


class Experiment(abc.ABC):
    """One claim of the paper: its runs (`groups`), what is measured of each (`measure`), its report."""

    name: str
    """Short name (`gradflow reproduce --only NAME`), also the generated file and the values' namespace."""
    title: str
    """One line for `gradflow reproduce --list`."""

    def groups(self, quick: bool) -> list[Group]:
        """The runs, by groups of shared solve options (none by default)."""
        return []

    def followups(self, quick: bool, results: pd.DataFrame) -> list[Group]:
        """Runs declared from the table of the `groups`' runs (e.g. saved around another run's stopping time);
        none by default."""
        return []

    def measure(self, traj: flows.Trajectory, config: dict) -> dict[str, Any]:
        """Scalars and small arrays of one finished run, stored beside it (nothing by default)."""
        return {}

    @abc.abstractmethod
    def report(self, ctx: Context, results: pd.DataFrame) -> None:
        """Figures, tables and values from the table of runs x measurements (`results`)."""

    def run(self, ctx: Context) -> pd.DataFrame:
        """Sweep, measure, tabulate and report; returns the table."""
        results = self.results(ctx)
        self.report(ctx, results)
        return results

    def results(self, ctx: Context) -> pd.DataFrame:
        """One row per configuration: its flattened configuration, `group`, `status`, `key`, `message`, and its
        measurements (NaN for a failed run)."""
        version = measuring_code(type(self))

        def table(groups: list[Group]) -> pd.DataFrame:
            rows = []
            for group in groups:
                for run in ctx.sweep(group):
                    row = {**flatten(run.config), "group": group.label, "status": run.status, "key": run.key}
                    row["message"] = run.message
                    if run.status != "failed":
                        try:
                            measured = ctx.measured(run, self.measure, version)
                        except flows.CorruptRecordError as err:  # complete by its size, spoiled inside: compute again
                            ctx.tally.notes.append(f"{self.name} ({group.label}): run {run.key}: {err}; computed again")
                            (again,) = ctx.sweep(dataclasses.replace(group, configs=[run.config]), reuse=False)
                            measured = ctx.measured(again, self.measure, version)
                        if clash := set(measured) & set(row):
                            raise ValueError(f"{self.name}: measurements named like configuration columns: {clash}")
                        row |= measured
                    rows.append(row)
            return pd.DataFrame(rows)

        results = table(self.groups(ctx.quick))
        more = self.followups(ctx.quick, results)
        return pd.concat([results, table(more)], ignore_index=True) if more else results


def measuring_code(cls: type) -> str:
    """The source the measurements of an experiment class depend on: its module, the shared private modules
    (`experiments/_*.py`), and the `analysis` and `flows` packages its measurements call (closed forms, flatness,
    a trajectory's singular values). Any change to them measures again (cheap), so no stored measurement is stale."""
    package = Path(__file__).parent
    texts = [inspect.getsource(sys.modules[cls.__module__])]
    texts += [path.read_text() for path in sorted(package.glob("_*.py")) if path.name != "__init__.py"]
    for library in (analysis, flows):
        texts += [path.read_text() for path in sorted(Path(library.__file__).parent.glob("*.py"))]
    return flows.fingerprint(texts)


def flatten(config: dict, prefix: str = "") -> dict[str, Any]:
    """Nested configuration dicts as flat columns: {"dynamics": {"name": "adam"}} -> {"dynamics.name": "adam"}."""
    out = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out |= flatten(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def complete(results: pd.DataFrame, by: list[str], seeds: int, seed: str = "seed") -> pd.DataFrame:
    """The rows of the cells (groups of `by`) in which all `seeds` seeds finished: a cell with a failed or missing
    seed is left out (reported, never averaged over what finished)."""
    finished = results[results["status"] != "failed"]
    counts = finished.groupby(by, dropna=False)[seed].transform("nunique")
    return finished[counts == seeds]


def new_figure(panels: int = 1, width: float = 3.3, height: float = 2.6, rows: int = 1) -> tuple[Figure, Any]:
    """A figure with `panels` axes in `rows` rows (the house style applies: `reproduce` runs every experiment
    inside it, since matplotlib reads the style when lines are drawn and figures saved)."""
    columns = -(-panels // rows)
    fig = Figure(figsize=(width * columns, height * rows))
    return fig, fig.subplots(rows, columns, squeeze=False).ravel()


def tex_number(x: float, digits: int = 2) -> str:
    r"""A number for LaTeX text or math: 0.0123 -> 0.012, 1.8e-06 -> 1.8\times 10^{-6}, wrapped in \ensuremath."""
    if x is None or not np.isfinite(x):
        return "n/a"
    if x == 0:
        return "\\ensuremath{0}"
    if abs(x) < 10:  # rounded first, so that 0.9996 is 1.0 and 0.00999 is 0.010 (larger numbers keep their integers)
        x = float(f"{x:.{digits - 1}e}")
    exponent = int(math.floor(math.log10(abs(x))))
    if -2 <= exponent <= 3:
        decimals = max(0, digits - 1 - exponent)
        return f"\\ensuremath{{{x:.{decimals}f}}}"
    mantissa = x / 10**exponent
    if abs(round(mantissa, digits - 1)) >= 10:  # 9.99e-9 rounds to 10.0: write 1.0e-8
        mantissa, exponent = mantissa / 10, exponent + 1
    return f"\\ensuremath{{{mantissa:.{digits - 1}f}\\times 10^{{{exponent}}}}}"


def tex_count(n: int) -> str:
    r"""A count for LaTeX text or math, thousands grouped: 97810 -> 97{,}810, wrapped in \ensuremath."""
    return f"\\ensuremath{{{int(n):,}}}".replace(",", "{,}")


def finite_mean(values) -> float:
    """Mean over the finished runs (NaN marks a failed or missing one); NaN when there are none (a value "n/a")."""
    values = np.asarray(values, dtype=float)
    finished = values[np.isfinite(values)]
    return float(finished.mean()) if finished.size else float("nan")


def tex_spread(values) -> str:
    """Mean [min, max] over seeds as LaTeX numbers, NaN (failed runs) left out; a single value alone."""
    values = np.asarray(values, dtype=float)
    if values.size == 1:
        return tex_number(float(values[0]))
    return f"{tex_number(np.nanmean(values))} [{tex_number(np.nanmin(values))}, {tex_number(np.nanmax(values))}]"


def test_error(W, truth) -> np.ndarray:
    """Arora et al.'s test error: the mean over all entries of (W - W*)^2 (per matrix of a stack)."""
    return np.mean((np.asarray(W) - np.asarray(truth)) ** 2, axis=(-2, -1))


def slope(x, y) -> float:
    """Least-squares slope of log y against log x."""
    return float(np.polyfit(np.log(np.asarray(x, dtype=float)), np.log(np.asarray(y, dtype=float)), 1)[0])


def relative_difference(W, reference) -> np.ndarray:
    """||W(t) - W_ref(t)||_F / ||W_ref(t)||_F at each saved time."""
    return np.linalg.norm(np.asarray(W) - np.asarray(reference), axis=(-2, -1)) / np.linalg.norm(
        np.asarray(reference), axis=(-2, -1)
    )


TIMINGS = Path(__file__).with_name("timings.json")
"""Each experiment's wall time, by scale, measured by the last reproduction into the default folders that computed
all of its runs (a cold store); `gradflow reproduce --list` and the performance experiment read them."""


def timings() -> dict[str, dict[str, float]]:
    """The measured wall times, {experiment: {"quick": s, "full": s}} (those measured so far)."""
    try:
        return json.loads(TIMINGS.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def record_timing(name: str, quick: bool, seconds: float) -> None:
    table = timings()
    table.setdefault(name, {})["quick" if quick else "full"] = round(seconds, 1)
    try:
        flows.atomic_write(TIMINGS, (json.dumps(table, indent=1, sort_keys=True) + "\n").encode())
    except OSError:  # an installed, read-only package: the timing is not kept
        pass
