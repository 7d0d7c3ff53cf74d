"""The experiments and the paper: every experiment runs end to end at its quick scale (the long ones under
`-m slow`), writes the values the paper reads (freshly, here), the same keys as at full scale, and resumes without
recomputing; the result table agrees with a direct computation from the trajectories."""

import re
from pathlib import Path

import numpy as np
import pytest

import experiments
import flows
from experiments import _completion, completion
from experiments._base import Context, Experiment, Group
from gradflow import main

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT / "paper" / "main.tex"


def generated_keys(folder: Path, experiment: str) -> set[str]:
    text = (folder / f"{experiment}.tex").read_text()
    return set(re.findall(r"\\gfvalue\{([^}]*)\}", text))


def used_keys() -> set[str]:
    """The keys the paper reads (comments left out)."""
    text = re.sub(r"(?<!\\)%.*", "", PAPER.read_text())
    return set(re.findall(r"\\gf\{([^}]*)\}", text))


@pytest.fixture(scope="session")
def shared_store(tmp_path_factory):
    """One store for every experiment's quick runs (also across xdist workers: the runs they share are computed by
    whichever worker gets there first, and a second writer of a run writes the same record atomically)."""
    return tmp_path_factory.getbasetemp().parent / "quick-store"


def test_the_paper_reads_only_keyed_values_of_the_experiments():
    used = used_keys()
    assert used, "the paper reads no generated value"
    namespaces = {key.split("/", 1)[0] for key in used}
    assert namespaces <= set(experiments.EXPERIMENTS), namespaces - set(experiments.EXPERIMENTS)
    # No hand-made macro names left: every number comes through \gf{...}.
    assert not re.search(r"\\newcommand\{\\[A-Z][a-z]+[A-Z]", PAPER.read_text())


# The quick runs of these take from 40 s (steps) to four minutes each on two cores (`make quick` runs them all): `slow`.
LONG = {"completion", "completion_arora", "small_init", "depth", "span", "norms", "steps"}


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in LONG else n for n in experiments.EXPERIMENTS]
)
def test_every_experiment_runs_at_its_quick_scale_and_writes_what_the_paper_reads(name, shared_store, tmp_path):
    tally, _ = experiments.reproduce([name], quick=True, store=shared_store, out=tmp_path, progress=False)
    assert tally.failed == 0, tally.notes
    fresh = generated_keys(tmp_path / "generated", name)
    committed = generated_keys(ROOT / "paper" / "generated", name)
    assert fresh == committed  # the same keys at both scales: the paper builds from either
    missing = {key for key in used_keys() if key.startswith(name + "/")} - fresh
    assert not missing, f"the paper reads values {name} does not write: {sorted(missing)}"
    figures = list((tmp_path / "figures").iterdir()) if (tmp_path / "figures").exists() else []
    assert all(p.stat().st_size > 5000 for p in figures)
    assert {p.stem for p in figures if p.suffix == ".png"} == {p.stem for p in figures if p.suffix == ".pdf"}


def test_a_warm_reproduction_recomputes_nothing_and_reads_no_trajectory(tmp_path, monkeypatch):
    store = tmp_path / "store"
    cold, _ = experiments.reproduce(["closed_forms"], quick=True, store=store, out=tmp_path / "out", progress=False)
    assert cold.failed == 0 and cold.done > 0

    def no_trajectories(path):
        raise AssertionError(f"a warm reproduction loaded the trajectory at {path}")

    monkeypatch.setattr(flows.Trajectory, "load", staticmethod(no_trajectories))
    warm, _ = experiments.reproduce(["closed_forms"], quick=True, store=store, out=tmp_path / "out", progress=False)
    assert warm.done == 0 and warm.reused == cold.done + cold.reused
    monkeypatch.undo()
    fresh, _ = experiments.reproduce(
        ["closed_forms"], quick=True, store=store, out=tmp_path / "out", progress=False, fresh=True
    )
    assert fresh.done == cold.done and fresh.reused == 0


def test_the_result_table_agrees_with_the_trajectories(tmp_path):
    """The completion experiment's measurements, read from the table, against a direct computation from each run."""
    ctx = Context(quick=True, store=tmp_path, figures=tmp_path / "f", generated=tmp_path / "g", progress=False)
    group = experiments.EXPERIMENTS["completion"].groups(True)[0]

    class TwoRuns(Experiment):
        name = "two runs"

        def groups(self, quick):
            return [Group(group.label, group.build, group.configs[:2], group.options)]

        measure = staticmethod(completion.curve)

        def report(self, ctx, results):
            pass

    table = TwoRuns().results(ctx)
    assert len(table) == 2 and set(table["status"]) == {"done"}
    for _, row in table.iterrows():
        traj = flows.Trajectory.load(ctx.runs / row["key"])
        config = {k: row[k] for k in ("n", "m", "rank", "seed", "held out")}
        parts = _completion.observations(config)
        held = np.array([W[parts.rows, parts.cols] for W in traj.W])
        np.testing.assert_array_equal(row["t"], traj.ts)
        # The test error is over every entry but the held-out ones, which the choices saw.
        kept = np.ones(traj.W.shape[1:], dtype=bool)
        kept[parts.rows, parts.cols] = False
        assert kept.sum() == row["n"] ** 2 - len(parts.rows)
        test = np.array([np.sum(((W - traj.truth) ** 2)[kept]) / kept.sum() for W in traj.W])
        np.testing.assert_allclose(row["test"], test, rtol=1e-13)
        np.testing.assert_allclose(row["validation"], np.mean((held - parts.values) ** 2, axis=1), rtol=1e-14)
        sigma = np.linalg.svd(traj.W, compute_uv=False)
        np.testing.assert_allclose(row["norm"], np.linalg.norm(traj.W, axis=(1, 2)), rtol=1e-12)
        np.testing.assert_allclose(row["ratio"], sigma.sum(-1) / np.linalg.norm(sigma, axis=-1), rtol=1e-12)
        np.testing.assert_allclose(row["train"], 2 * traj.loss / row["m"], rtol=1e-14)
        outside = np.ones(traj.W.shape[1:], dtype=bool)
        outside[np.asarray(parts.train.rows), np.asarray(parts.train.cols)] = False
        np.testing.assert_allclose(row["unobserved"], np.abs(traj.W[:, outside]).max(axis=1), rtol=1e-14)
        assert row["steps"] == traj.stats["num_steps"]


def test_two_experiments_share_a_run_by_what_it_computes_and_a_changed_constant_recomputes(tmp_path, monkeypatch):
    """steps declares the completion experiment's Adam-flow ratio runs under its own configurations: the same runs. A
    constant of the shared setting changed under the same configuration (the adaptive flows' eps) recomputes."""
    ctx = Context(quick=True, store=tmp_path, figures=tmp_path / "f", generated=tmp_path / "g", progress=False)
    ours = next(g for g in experiments.EXPERIMENTS["steps"].groups(True) if "Adam" in g.label)
    ours = Group(ours.label, ours.build, ours.configs[:2], ours.options)
    setting = completion.SETTINGS["completion"][True]
    theirs = [
        c for c in completion.configs(setting) if (c["penalty"], c["dynamics"]) == ("ratio", "Adam") and c["seed"] == 0
    ]
    first = ctx.sweep(ours)
    assert {r.status for r in first} == {"done"}
    shared = ctx.sweep(Group("completion", _completion.build, theirs, setting.scale.options(theirs[0])))
    assert {r.status for r in shared} == {"cached"} and {r.key for r in shared} == {r.key for r in first}
    monkeypatch.setitem(_completion.DYNAMICS, "Adam", {**_completion.DYNAMICS["Adam"], "eps": 2e-3})
    changed = ctx.sweep(ours)
    assert {r.status for r in changed} == {"done"} and {r.key for r in changed}.isdisjoint(r.key for r in first)


def test_reproduce_lists_and_refuses_unknown_names(capsys, tmp_path):
    assert main(["reproduce", "--list"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in experiments.EXPERIMENTS)
    assert main(["reproduce", "--only", "depth", "norms", "--list"]) == 0
    rows = capsys.readouterr().out.splitlines()[1:-1]
    assert [row.split()[0] for row in rows] == ["norms", "depth"]  # in the reproduction's order
    # Refused before anything is made: the store and output folders it would have made are not left behind.
    store, out = tmp_path / "a" / "store", tmp_path / "b" / "out"
    for argv in (["--quick"], ["--list"], ["--store", str(store), "--out", str(out)]):
        assert main(["reproduce", "--only", "nonsense", *argv]) == 2
        err = capsys.readouterr().err
        assert "unknown experiment 'nonsense'" in err and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_a_failing_experiment_is_named_in_the_error(tmp_path, monkeypatch, capsys):
    class Fails(Experiment):
        name = "fails"
        title = "raises in its report"

        def groups(self, quick):
            return []

        def report(self, ctx, results):
            raise ValueError("no convergence")

    class Finishes(Experiment):
        name = "finishes"
        title = "writes one value"

        def groups(self, quick):
            return []

        def report(self, ctx, results):
            ctx.values("finishes", {"answer": "42"})

    monkeypatch.setitem(experiments.EXPERIMENTS, "fails", Fails())
    monkeypatch.setitem(experiments.EXPERIMENTS, "finishes", Finishes())
    out = tmp_path / "o"
    argv = ["reproduce", "--only", "fails", "finishes", "--quick", "--store", str(tmp_path / "s"), "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "error: experiment fails: no convergence (1 of 2 experiments finished and wrote" in err, err
    # The experiment after the failing one still ran: its value and the report are written.
    assert "42" in "".join(p.read_text() for p in (out / "generated").iterdir())
    assert (out / "report.html").exists()


def test_cached_arrays_are_computed_again_when_the_code_that_computes_them_changes(tmp_path):
    ctx = Context(quick=True, store=tmp_path, figures=tmp_path / "f", generated=tmp_path / "g", progress=False)

    def double(x):
        return 2 * x

    def triple(x):
        return 3 * x

    for code, expected in ((double, 2.0), (double, 2.0), (triple, 3.0)):
        got = ctx.cached({"what": "scaled"}, lambda code=code: {"y": code(np.ones(1))}, code=(code,))
        assert float(got["y"][0]) == expected
    assert (ctx.tally.done, ctx.tally.reused) == (2, 1)


def test_measurements_are_keyed_by_the_analysis_and_flows_code_they_call(monkeypatch):
    from experiments import _base

    before = _base.measuring_code(type(experiments.EXPERIMENTS["closed_forms"]))
    read = Path.read_text

    def edited(path, *args, **kwargs):
        text = read(path, *args, **kwargs)
        return text + "# edited\n" if path.name in ("closed_form.py", "_trajectory.py") else text

    monkeypatch.setattr(Path, "read_text", edited)
    assert _base.measuring_code(type(experiments.EXPERIMENTS["closed_forms"])) != before


def test_no_experiment_imports_another():
    """Experiments share settings through the private modules only."""
    names = {path.stem for path in (ROOT / "experiments").glob("*.py") if not path.stem.startswith("_")}
    for path in (ROOT / "experiments").glob("*.py"):
        if path.stem.startswith("_"):
            continue
        imported = set(re.findall(r"^from \.(\w+) import|^from \. import (\w+)", path.read_text(), re.M))
        imported = {a or b for a, b in imported}
        assert not imported & names, f"{path.name} imports {imported & names}"


def test_tex_number_rounds_before_it_chooses_the_digits():
    """Two significant digits, the decade read after rounding: 0.9996 is 1.0 (not 1.00), 0.00999 is 0.010 (not
    1.0e-2 beside 0.011), 9.99e-9 is 1.0e-8; integers above 10 are kept; undefined values are n/a."""
    from experiments._base import tex_number

    cases = {
        0.9996: r"\ensuremath{1.0}",
        0.00999: r"\ensuremath{0.010}",
        0.0123: r"\ensuremath{0.012}",
        9.99e-9: r"\ensuremath{1.0\times 10^{-8}}",
        1.8e-6: r"\ensuremath{1.8\times 10^{-6}}",
        7073.2: r"\ensuremath{7073}",
        0.0: r"\ensuremath{0}",
    }
    for x, text in cases.items():
        assert tex_number(x) == text, (x, tex_number(x))
    assert tex_number(float("nan")) == tex_number(None) == "n/a"


def test_performance_reads_the_default_solvers_row_not_the_fastest(tmp_path, monkeypatch):
    """The paper says "the default solver": its row is read even where another flows row is faster, and a report
    whose default or LSODA row missed the accuracy (ok false) is left out."""
    import json

    from experiments import performance

    def report(setting, rows):
        # Each row's error and repeat count differ from every other's, so reading the wrong row shows.
        methods = {
            name: {
                "wall": wall,
                "ok": ok,
                "speedup_vs_lsoda_jac": 2.0 / wall,
                "W_error": wall * 1e-9,
                "runs": [wall] * int(10 * wall),
            }
            for name, (wall, ok) in rows.items()
        }
        return {"setting": setting, "methods": methods}

    results = tmp_path / "results"
    results.mkdir()
    faster_other = {"flows Tsit5": (0.1, True), performance.DEFAULT_ROW: (0.5, True), "scipy LSODA+jac": (2.0, True)}
    inaccurate = {performance.DEFAULT_ROW: (0.2, False), "scipy LSODA+jac": (2.0, True)}
    inaccurate_lsoda = {performance.DEFAULT_ROW: (0.2, True), "scipy LSODA+jac": (2.0, False)}
    for name, rows in (("a", faster_other), ("b", inaccurate), ("c", inaccurate_lsoda)):
        (results / f"vs_scipy-{name}.json").write_text(json.dumps(report(name, rows)))
    monkeypatch.setattr(performance, "BENCHMARKS", tmp_path)
    (row,) = performance._vs_scipy()
    assert (row["setting"], row["wall"], row["lsoda"], row["speedup"]) == ("a", 0.5, 2.0, 4.0)
    # The errors are each row's own; the repeats, the fewer of the two rows'.
    assert (row["error"], row["lsoda error"], row["repeats"]) == (0.5e-9, 2.0e-9, 5)
    # A report without the default's row (a renamed row) is an error, not a comparison silently left out.
    (results / "vs_scipy-d.json").write_text(json.dumps(report("d", {"scipy LSODA+jac": (2.0, True)})))
    with pytest.raises(ValueError, match="vs_scipy-d.json has no 'flows switching' row"):
        performance._vs_scipy()


def test_performance_reads_the_row_vs_scipy_writes_for_the_default(monkeypatch):
    from experiments import performance

    monkeypatch.setenv("GRADFLOW_BENCH_THREADS", "keep")  # the benchmarks' harness leaves the environment alone
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import vs_scipy

    assert performance.DEFAULT_ROW == vs_scipy.FAST
    assert vs_scipy.FLOWS_SOLVERS[vs_scipy.FAST] is type(
        flows.default_solver(vs_scipy.H.sensing_setting(1e-3).flow, 1e-10)
    )
