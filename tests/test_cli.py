"""The command line: `gradflow run` (flows and discrete steps, saved and drawn), `gradflow plot`, clear errors for
bad flags and paths checked before anything is computed, failed solves saved, Ctrl-C."""

import functools
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

import experiments
import flows
from gradflow import main

ROOT = Path(__file__).resolve().parents[1]


def test_run_saves_a_trajectory_and_a_figure(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(
        [
            "run",
            "--problem",
            "completion",
            "--n",
            "6",
            "--m",
            "20",
            "--rank",
            "1",
            "--parameterization",
            "deep",
            "--depth",
            "2",
            "--init",
            "balanced",
            "--scale",
            "0.3",
            "--t1",
            "20",
            "--points",
            "20",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert code == 0
    out_text = capsys.readouterr().out
    summary = json.loads(out_text.split("faithfulness:")[0])
    report = json.loads(out_text.split("faithfulness:")[1].rsplit("\nsaved ", 1)[0])
    assert report["num_steps"] > 0 and report["saved_times"] == "landed"
    assert report["solver"] == "Tsit5ThenExtrapolation"  # the default for a gradient flow of the data loss
    assert set(report["conserved_drift"]) == {"W2^T W2 - W1 W1^T"}
    traj = flows.Trajectory.load(out)
    assert np.isclose(summary["loss"], traj.loss[-1]) and len(traj.ts) == 20
    assert traj.config["problem"]["kind"] == "completion" and traj.config["flow"]["parameterization"]["depth"] == 2
    assert (out / "figure.png").stat().st_size > 10_000


@pytest.mark.parametrize(
    "argv, message",
    [
        (["run", "--n", "3", "--rank", "5", "--quiet"], "rank"),
        (["run", "--scale", "-1", "--quiet"], "scale"),
        (["run", "--problem", "completion", "--n", "3", "--m", "10", "--quiet"], "exceed"),
        (["run", "--solver", "rk4000", "--quiet"], "unknown solver"),
        (["run", "--parameterization", "symmetric", "--init", "balanced", "--quiet"], "does not apply"),
        (["run", "--penalty", "ratio", "--strength", "-1", "--quiet"], "strength"),
        (["run", "--points", "100000000000", "--quiet"], "save times"),
        (["run", "--max-steps", str(2**63), "--quiet"], "max_steps must be at most"),
        (["run", "--rtol", "2", "--quiet"], "below 1"),
    ],
)
def test_bad_flags_exit_2_with_a_message(argv, message, capsys, tmp_path):
    # The output and figure folders a refused run made are not left behind (the problem is checked once they are
    # made); an empty folder that was there before stays.
    out = tmp_path / "new" / "run"
    assert main(argv + ["--out", str(out), "--figure", str(tmp_path / "figures" / "run.png")]) == 2
    assert message in capsys.readouterr().err
    assert sorted(tmp_path.iterdir()) == []
    (tmp_path / "before").mkdir()
    assert main(argv + ["--out", str(tmp_path / "before")]) == 2
    assert sorted(tmp_path.iterdir()) == [tmp_path / "before"]


def test_help_and_unknown_choices(capsys):
    with pytest.raises(SystemExit) as exit_help:
        main(["run", "--help"])
    assert exit_help.value.code == 0 and "examples:" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_bad:
        main(["run", "--parameterization", "spiral"])
    assert exit_bad.value.code == 2


def test_run_into_the_tail_uses_the_default_solver(tmp_path, capsys):
    # --solver defaults to the library's default: with --stop-loss that is the stiff switch.
    out = tmp_path / "tail"
    assert (
        main(
            [
                "run",
                "--n",
                "6",
                "--m",
                "12",
                "--rank",
                "1",
                "--scale",
                "1e-2",
                "--t1",
                "1e5",
                "--stop-loss",
                "1e-10",
                "--points",
                "10",
                "--quiet",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    traj = flows.Trajectory.load(out)
    assert traj.config["solver"] == "Tsit5ThenExtrapolation" and traj.loss[-1] < 1e-10


def test_penalty_on_each_factor_maps_to_each_factor(tmp_path, capsys):
    out = tmp_path / "factors"
    assert (
        main(
            [
                "run",
                "--n",
                "5",
                "--m",
                "10",
                "--rank",
                "1",
                "--parameterization",
                "factored",
                "--penalty",
                "ratio",
                "--each-factor",
                "--strength",
                "1e-3",
                "--scale",
                "0.3",
                "--t1",
                "1",
                "--points",
                "5",
                "--quiet",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    penalty = flows.Trajectory.load(out).config["flow"]["penalty"]
    assert penalty["name"] == "EachFactor" and penalty["penalty"]["name"] == "Ratio"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere; the unwritable-folder case needs a user")
def test_unwritable_out_is_one_line_and_exit_2_not_a_traceback(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "gradflow",
            "run",
            "--n",
            "4",
            "--m",
            "6",
            "--rank",
            "1",
            "--t1",
            "1",
            "--quiet",
            "--out",
            str(locked / "run"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr and done.stderr.count("\n") == 1


def test_out_that_is_a_file_is_one_line_and_exit_2_through_the_console_script(tmp_path):
    occupied = tmp_path / "file"
    occupied.write_text("not a folder")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "gradflow",
            "run",
            "--n",
            "4",
            "--m",
            "6",
            "--rank",
            "1",
            "--t1",
            "1",
            "--quiet",
            "--out",
            str(occupied),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and done.stderr.count("\n") == 1
    assert "is not a folder" in done.stderr or "cannot create" in done.stderr


SMALL = ["--n", "6", "--m", "20", "--rank", "1", "--scale", "0.3", "--t1", "5", "--points", "12", "--quiet"]


def _strict_json(text):
    """json.loads that refuses NaN and infinities (Python's json writes them; JSON has no such tokens)."""

    def refuse(token):
        raise ValueError(f"not JSON: {token}")

    return json.loads(text, parse_constant=refuse)


def _no_compute(monkeypatch):
    for name in ("solve", "descend", "plot_trajectory"):

        @functools.wraps(getattr(flows, name))
        def computed(*args, **kwargs):
            raise AssertionError("computed before the flags were checked")

        monkeypatch.setattr(flows, name, computed)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--strength", "5"], "--strength does not apply without a penalty"),
        (["--penalty", "ratio"], "--penalty ratio needs its --strength"),
        (["--depth", "7"], "--depth does not apply to --parameterization symmetric (it is an argument of deep)"),
        (["--a", "10"], "--a does not apply to --dynamics gradient"),
        (["--dynamics", "rmsprop", "--a", "10"], "--a does not apply to --dynamics rmsprop"),
        (["--penalty-eps", "1e-2"], "--penalty-eps does not apply without a penalty"),
        (["--each-factor"], "--each-factor does not apply without a penalty"),
        (["--dynamics", "modified"], "--dynamics modified needs --eta"),
        (["--no-symmetric"], "Symmetric makes symmetric positive semi-definite W"),
        (["--problem", "commuting", "--no-symmetric"], "--symmetric/--no-symmetric does not apply"),
        (
            ["--parameterization", "direct", "--init", "zero", "--scale", "1e-3"],
            "--scale does not apply to --init zero",
        ),
        (["--init", "bogus"], "invalid choice"),
        (["--t1", "0"], "--t1 must be a positive"),
        (["--step", "0.1", "--rtol", "1e-6"], "--rtol does not apply to a discrete run"),
        (["--step", "0.1", "--solver", "dopri5"], "--solver does not apply to a discrete run"),
        (["--step", "10", "--t1", "5"], "larger than --t1"),
        (["--step", "0.01", "--dynamics", "modified", "--eta", "0.01"], "Modified is the modified flow"),
        (["--step", "0.1", "--dynamics", "adam", "--a", "100"], "step * a = 10 must be < 1"),
    ],
)
def test_flags_that_do_not_fit_are_refused_before_computing(argv, message, tmp_path, capsys, monkeypatch):
    _no_compute(monkeypatch)
    try:
        code = main(["run", *argv, "--out", str(tmp_path / "run"), "--quiet"])
    except SystemExit as exit_:  # argparse's own refusal of a choice
        code = exit_.code
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") <= 2, err


def test_paths_are_checked_before_computing(tmp_path, capsys, monkeypatch):
    _no_compute(monkeypatch)
    occupied = tmp_path / "file"
    occupied.write_text("")
    monkeypatch.chdir(tmp_path)  # an empty path would name it
    cases = [
        (["run", "--out", ""], "argument --out: an empty path"),
        (["run", "--figure", " "], "argument --figure: an empty path"),
        (["plot", "", "--out", "o.png"], "an empty path"),
        (["plot", str(tmp_path), "--out", ""], "argument --out: an empty path"),
        (["check", "--store", ""], "argument --store: an empty path"),
        (["reproduce", "--out", ""], "argument --out: an empty path"),
        (["run", "--out", str(occupied)], "exists and is not a folder"),
        (["run", "--out", "/proc/gradflow-run"], "cannot write to the output folder /proc/gradflow-run"),
        (["run", "--out", str(tmp_path / "a"), "--figure", "/proc/x.png"], "cannot write to the figure's folder /proc"),
        (["run", "--out", str(tmp_path / "a"), "--figure", str(tmp_path / "x.txt")], "needs one of the suffixes"),
        (["run", "--out", str(tmp_path / "a"), "--figure", str(tmp_path)], "is a folder"),
        (["plot", str(tmp_path), "--out", "/proc/x.png"], "cannot write to the figure's folder /proc"),
        (["plot", str(tmp_path / "missing"), "--out", str(tmp_path / "o.png")], "no such folder"),
        (["plot", str(tmp_path), "--out", str(tmp_path / "o.png")], "is not a readable saved run"),
    ]
    for argv, message in cases:
        try:
            code = main(argv)
        except SystemExit as exit_:  # argparse's own refusal of a flag's value
            code = exit_.code
        assert code == 2, argv
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, (argv, err)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["file"]


@pytest.mark.parametrize("store", ["file", "/proc/gradflow-store"])
def test_reproduce_checks_its_store_before_running(store, tmp_path, capsys, monkeypatch):
    import experiments

    monkeypatch.setattr(experiments, "reproduce", lambda *a, **k: pytest.fail("ran before the store was checked"))
    if store == "file":
        store = tmp_path / "file"
        store.write_text("")
    assert main(["reproduce", "--quick", "--store", str(store)]) == 2
    err = capsys.readouterr().err
    assert ("is not a folder" in err or "cannot write to the store" in err) and err.count("\n") == 1, err


def test_a_failed_solve_is_saved_marked_failed_and_drawn(tmp_path, capsys):
    out = tmp_path / "failed"
    assert main(["run", *SMALL, "--t1", "1e4", "--max-steps", "30", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "max_steps = 30 at t = " in err and f"is saved in {out} (marked failed)" in err
    partial = flows.Trajectory.load(out)
    assert partial.stats["failed"] and 0 < partial.ts[-1] < 1e4 and partial.stats["num_steps"] == 30
    assert f"t = {partial.ts[-1]:.6g}" in err
    assert (out / "figure.png").stat().st_size > 10_000


def test_a_run_saved_over_another_leaves_none_of_the_other_runs_figure(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    assert main(["run", *SMALL, "--t1", "1", "--out", str(out), "--quiet"]) == 0
    assert (out / "figure.png").exists()
    drawn = []
    monkeypatch.setattr(flows, "plot_trajectory", lambda traj, path: drawn.append((traj, path)))
    elsewhere = tmp_path / "elsewhere.png"
    assert main(["run", *SMALL, "--t1", "1", "--seed", "1", "--out", str(out), "--figure", str(elsewhere)]) == 0
    # The figure in the folder was drawn from the seed-0 run, which the seed-1 run replaced.
    assert not (out / "figure.png").exists() and drawn[0][1] == elsewhere
    assert flows.Trajectory.load(out).config["init"]["seed"] == 1
    # A folder that held no run keeps a figure.png of its own.
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "figure.png").write_text("mine")
    assert main(["run", *SMALL, "--t1", "1", "--out", str(mine), "--figure", str(elsewhere)]) == 0
    assert (mine / "figure.png").read_text() == "mine"


def test_a_folder_whose_files_a_run_would_overwrite_is_refused_before_computing(tmp_path, capsys, monkeypatch):
    _no_compute(monkeypatch)
    cases = [
        ("figure.png", "mine"),
        ("arrays.npz", "mine"),
        ("arrays.npz", ""),  # empty: np.load raises EOFError
        ("arrays.npz", "PK\x03\x04 not a whole archive"),  # zipfile.BadZipFile
        ("meta.json", '{"title": "mine"}'),
    ]
    for i, (name, text) in enumerate(cases):
        folder = tmp_path / f"{i}-{name}"
        folder.mkdir()
        (folder / name).write_text(text)
        assert main(["run", *SMALL, "--out", str(folder)]) == 2
        err = capsys.readouterr().err
        assert f"holds {name}, which is not a saved run's" in err and err.count("\n") == 1, err
        assert (folder / name).read_text() == text
    # A figure named with --figure is the user's choice, even in the folder; other files are no obstacle.
    from gradflow._cli import check_overwrites

    check_overwrites(tmp_path / "0-figure.png", default_figure=False)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "notes.txt").write_text("mine")
    check_overwrites(tmp_path / "notes", default_figure=True)


def test_a_save_interrupted_before_its_meta_json_can_be_run_again(tmp_path, capsys):
    # A save writes arrays.npz, then meta.json: a Ctrl-C (or a full disk) between them leaves a run's arrays and the
    # previous run's figure, and the line says "run the same command again".
    out = tmp_path / "run"
    assert main(["run", *SMALL, "--t1", "1", "--out", str(out)]) == 0
    (out / "meta.json").unlink()
    assert main(["run", *SMALL, "--t1", "1", "--seed", "1", "--out", str(out)]) == 0
    assert flows.Trajectory.load(out).config["init"]["seed"] == 1 and (out / "figure.png").exists()


def test_step_runs_the_discrete_counterpart_and_saves_it_like_a_flow(tmp_path, capsys):
    out = tmp_path / "adam-steps"
    argv = ["--dynamics", "adam", "--a", "10", "--step", "0.01", "--out", str(out)]
    assert main(["run", *SMALL, *argv]) == 0
    summary = _strict_json(capsys.readouterr().out.split("faithfulness:")[0])
    run = flows.Trajectory.load(out)
    assert run.config["method"] == "descend" and run.config["step"] == 0.01
    assert json.loads((out / "meta.json").read_text())["config"]["step"] == 0.01
    problem = flows.sensing(n=6, m=20, rank=1, seed=0)
    flow = flows.Flow(problem, flows.Symmetric(), dynamics=flows.Adam(a=10.0))
    expected = flows.descend(flow, flow.init(scale=0.3), step=0.01, t1=5.0, ts=flows.default_ts(5.0, 12))
    np.testing.assert_array_equal(run.W, expected.W)
    assert summary["steps"] == 500 and "vf_evaluations" not in summary
    assert (out / "figure.png").stat().st_size > 10_000


def test_plot_overlays_a_flow_and_its_discrete_steps(tmp_path, capsys):
    folders = [tmp_path / "flow", tmp_path / "gd-0.01", tmp_path / "gd-0.02"]
    assert main(["run", *SMALL, "--out", str(folders[0])]) == 0
    for folder, step in zip(folders[1:], ("0.01", "0.02")):
        assert main(["run", *SMALL, "--step", step, "--out", str(folder)]) == 0
    figure = tmp_path / "overlay.png"
    assert main(["plot", *map(str, folders), "--out", str(figure)]) == 0
    assert figure.stat().st_size > 20_000
    runs = [flows.Trajectory.load(f) for f in folders]
    fig = flows.plot_trajectory(runs)
    # Shared axes: each panel holds every run; the legend names what sets the runs apart, the title the rest.
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == ["flow (Tsit5ThenExtrapolation, rtol 1e-08)", "discrete steps of 0.01", "discrete steps of 0.02"]
    title = " ".join(fig.get_suptitle().split())
    assert "sensing n=6 m=20 rank=1" in title and "Symmetric" in title and "GradientFlow" in title
    assert "rtol" not in title
    loss_ax = fig.axes[0]
    assert len(loss_ax.get_lines()) == 3


def test_overlaid_runs_of_different_truths_each_draw_their_own(tmp_path):
    def run(seed, scale=0.3):
        flow = flows.Flow(flows.sensing(n=6, m=20, rank=1, seed=seed), flows.Symmetric())
        return flows.solve(flow, flow.init(scale=scale), t1=1.0, ts=flows.default_ts(1.0, 5))

    def dashed(ax):
        return [(line.get_ydata()[0], line.get_color()) for line in ax.get_lines() if line.get_linestyle() == "--"]

    # One truth (two inits): its singular value and effective rank once, grey. Two truths: each run's, its colour.
    for runs, expected in (
        ([run(0), run(0, scale=0.1)], ["0.45"]),
        ([run(0), run(1)], ["C0", "C1"]),
    ):
        fig = flows.plot_trajectory(runs)
        sv_ax, rank_ax = fig.axes[1], fig.axes[2]
        assert [colour for _, colour in dashed(sv_ax)] == expected == [colour for _, colour in dashed(rank_ax)]
        truths = [np.linalg.svd(r.truth, compute_uv=False)[0] for r in runs[: len(expected)]]
        np.testing.assert_allclose([value for value, _ in dashed(sv_ax)], truths, rtol=1e-12)
        assert ("each run's truth" in sv_ax.get_title()) == (len(expected) == 2)


def test_the_figure_of_a_penalised_run_draws_the_penalty_and_the_objective(tmp_path, capsys):
    out = tmp_path / "ratio"
    argv = ["--parameterization", "deep", "--depth", "2", "--penalty", "ratio", "--strength", "0.01", "--points", "6"]
    assert main(["run", *SMALL, *argv, "--out", str(out)]) == 0
    run = flows.Trajectory.load(out)
    penalty = flows._plot.penalty_values(run)
    flow = flows.Flow(
        flows.sensing(n=6, m=20, rank=1, seed=0), flows.Deep(depth=2), penalty=flows.Ratio(), strength=0.01
    )
    states = [tuple(leaf[i] for leaf in run.states) for i in range(len(run.ts))]
    expected = [float(flow.objective(s) - flow.loss(s)) for s in states]
    np.testing.assert_allclose(penalty, expected, rtol=1e-12)
    fig = flows.plot_trajectory(run)
    loss_ax = fig.axes[0]
    assert len(loss_ax.get_lines()) == 3 and loss_ax.get_legend() is not None
    title = " ".join(fig.get_suptitle().split())
    assert (
        "Deep(depth=2)" in title
        and "0.01 Ratio(eps=0.001, delta=0.001)" in title
        and "identity init scale 0.3" in title
    )


def test_the_summary_is_json_with_null_for_undefined_values():
    from gradflow._cli import summary

    zero = flows.Trajectory(ts=np.array([0.0, 1.0]), states=None, W=np.zeros((2, 3, 3)), loss=np.ones(2))
    assert _strict_json(json.dumps(summary(zero), allow_nan=False))["effective_rank"] is None


def test_a_new_family_member_gets_its_choice_and_flags_from_the_registry(tmp_path, capsys, monkeypatch):
    class Slow(flows.GradientFlow):
        """Gradient flow slowed down by a constant factor.

        Args:
            factor: the field is -g / factor.
        """

        factor: float = 2.0

        def vector_field(self, t, state, gradient):
            return flows.GradientFlow.vector_field(self, t, state, gradient) / self.factor

    monkeypatch.setitem(flows.DYNAMICS, "slow", Slow)
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "slow (Slow)" in help_text and "--factor FACTOR slow: the field is -g / factor (default 2)" in help_text
    out = tmp_path / "slow"
    assert main(["run", *SMALL, "--dynamics", "slow", "--factor", "4", "--out", str(out)]) == 0
    assert main(["run", *SMALL, "--factor", "4", "--out", str(out)]) == 2
    assert "--factor does not apply to --dynamics gradient" in capsys.readouterr().err


def _start(argv):
    """`gradflow run` in a subprocess, its stderr collected line by line as it comes."""
    process = subprocess.Popen(
        [sys.executable, "-m", "gradflow", "run", *argv],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines = []
    reader = threading.Thread(target=lambda: lines.extend(process.stderr), daemon=True)
    reader.start()
    return process, lines, reader


@pytest.mark.parametrize(
    "quiet, sent_signal",
    [(True, signal.SIGINT), pytest.param(False, signal.SIGINT, marks=pytest.mark.slow), (True, signal.SIGTERM)],
    ids=["quiet", "progress-bar", "sigterm"],
)
def test_ctrl_c_or_sigterm_stops_a_run_at_once_with_one_line_and_128_plus_its_number(quiet, sent_signal, tmp_path):
    # SIGTERM (a batch system's time limit, `kill`) the same way, with its own word and 128 + 15.
    # A solve that would take far longer than this test: tight tolerance to t = 1e6.
    out = tmp_path / "long"
    argv = ["--n", "10", "--m", "40", "--t1", "1e6", "--rtol", "1e-12", "--solver", "tsit5", "--max-steps", "10**9"]
    argv = [a if a != "10**9" else str(10**9) for a in argv] + ["--out", str(out)] + (["--quiet"] if quiet else [])
    process, lines, reader = _start(argv)
    deadline = time.monotonic() + 120
    if quiet:
        # The output folder is made once the flags are checked, just before the flow is built and compiled.
        while not out.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(3)  # past building the problem and the flow: compiling or solving
    else:
        while not any("%|" in line for line in lines) and time.monotonic() < deadline:  # the solve's progress bar
            time.sleep(0.2)
    assert process.poll() is None, "the run ended before it was interrupted"
    sent = time.monotonic()
    process.send_signal(sent_signal)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail("Ctrl-C did not stop the run within 30 s")
    waited = time.monotonic() - sent
    reader.join(timeout=5)
    text = "".join(lines)
    assert process.returncode == 128 + sent_signal and waited < 5, (process.returncode, waited, text[-500:])
    assert "Traceback" not in text
    word = "interrupted" if sent_signal == signal.SIGINT else "terminated"
    assert lines[-1].startswith(f"{word}: the solve had not finished after ") and lines[-1].endswith(
        f"nothing was saved to {out}\n"
    )
    assert not out.exists(), "the output folder the run made is left behind, empty"


# The program's last moments: a signal that arrives in an exit handler, after the command has finished.
AT_EXIT = """
import atexit, os, signal, sys, time
from gradflow._cli import program

sent = getattr(signal, sys.argv[1])
atexit.register(lambda: (os.kill(os.getpid(), sent), time.sleep(30)))
sys.argv = ["gradflow", *sys.argv[2:]]
sys.exit(program())
"""


@pytest.mark.parametrize(
    "sent_signal, command, status",
    [
        (signal.SIGINT, "reproduce --list", 0),
        (signal.SIGTERM, "reproduce --list", 0),
        (signal.SIGINT, "run --t1 -1", 2),
    ],
    ids=["sigint", "sigterm", "after-a-failure"],
)
def test_a_signal_after_the_command_has_finished_ends_it_with_one_line_saying_so(sent_signal, command, status):
    done = subprocess.run(
        [sys.executable, "-c", AT_EXIT, sent_signal.name, *command.split()],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    word = "interrupted" if sent_signal == signal.SIGINT else "terminated"
    line = f"{word}: the command had finished with exit status {status}; what it printed and saved is complete\n"
    # A failure's status stands; a success ends as the signal's.
    assert done.returncode == (status or 128 + sent_signal), (done.returncode, done.stderr[-2000:])
    assert done.stderr.endswith(line) and done.stderr.count("\n") == (1 if status == 0 else 2), done.stderr
    if status == 0:
        assert "completion" in done.stdout  # the command's own output came out whole before the line


def _documented_runs() -> list[str]:
    """Every `gradflow run` command of the README, the docs and `gradflow run --help`, continuation lines joined."""
    from gradflow._cli import RUN_EPILOG

    texts = [(ROOT / "README.md").read_text(), RUN_EPILOG] + [
        p.read_text() for p in sorted((ROOT / "docs").glob("*.md"))
    ]
    lines = [line.strip() for text in texts for line in re.sub(r"\\\n\s*", " ", text).splitlines()]
    commands = {
        " ".join(line.removeprefix("gradflow run ").split("#")[0].split())
        for line in lines
        if line.startswith("gradflow run --")
    }
    return sorted(commands - {"--help"})


@pytest.mark.parametrize("command", _documented_runs())
def test_every_documented_run_passes_its_checks(command, tmp_path, monkeypatch, capsys):
    _no_compute(monkeypatch)  # reaching the solve means every flag was accepted and the flow and its init built
    with pytest.raises(AssertionError, match="computed before the flags were checked"):
        main(["run", *command.split(), "--out", str(tmp_path / "run"), "--quiet"])


@pytest.mark.slow
def test_the_documented_penalised_adam_run_learns(tmp_path, capsys):
    # docs/cli.md's example: from --scale 0.1 the ratio-penalised Adam flow reaches a relative error of 0.03 by t = 3
    # (from the default 1e-3 it stays at 0.9999998: the penalty's gradient outweighs the data's near W = 0).
    argv = "--problem completion --n 30 --m 180 --penalty ratio --strength 1e-3 --dynamics adam --a 10 --scale 0.1"
    assert main(["run", *argv.split(), "--t1", "3", "--out", str(tmp_path / "adam"), "--quiet"]) == 0
    assert flows.Trajectory.load(tmp_path / "adam").relative_error[-1] < 0.1


# A figure's write that blocks after its temporary file is made (its sync never returns), under the command line's
# interruptible call with its cleanup, in a folder the command made.
BLOCKED_WRITE = """
import os, sys, time
from pathlib import Path
from flows._store import atomic_write
from gradflow._cli import abandon
from gradflow._interrupt import interruptible

folder = Path(sys.argv[1])
folder.mkdir()

def blocked(fd):
    print("writing", flush=True)
    time.sleep(600)

os.fsync = blocked
interruptible(lambda: atomic_write(folder / "figure.png", b"png"), lambda: "the figure was not written",
              cleanup=lambda: abandon([folder]))
"""


def test_ctrl_c_in_the_middle_of_a_write_leaves_no_temporary_file(tmp_path):
    """`os._exit` skips the write's own clean-up: the command's cleanup removes its temporary file, and then the
    folder made for it, now empty."""
    folder = tmp_path / "figures"
    process = subprocess.Popen(
        [sys.executable, "-c", BLOCKED_WRITE, str(folder)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout.readline() == "writing\n", process.communicate(timeout=30)[1][-500:]
    assert [p.name[: len(".tmp-figure.png.")] for p in folder.iterdir()] == [".tmp-figure.png."]
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=30)
    assert process.returncode == 130 and err == "interrupted: the figure was not written\n", err[-500:]
    assert not folder.exists()


@pytest.mark.parametrize("quiet", [True, pytest.param(False, marks=pytest.mark.slow)], ids=["quiet", "progress-bar"])
def test_ctrl_c_stops_a_reproduction_with_its_count_and_a_second_run_resumes(quiet, tmp_path):
    """`gradflow reproduce`: a real SIGINT once some runs are saved ends it at once with one line naming what is kept,
    exit 130; the same command again computes only what was missing."""
    store, out = tmp_path / "store", tmp_path / "out"
    argv = ["reproduce", "--only", "closed_forms", "--quick", "--store", str(store), "--out", str(out)]
    process = subprocess.Popen(
        [sys.executable, "-m", "gradflow", *argv, *(["--quiet"] if quiet else [])],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stderr), daemon=True)
    reader.start()
    deadline = time.monotonic() + 300
    while not list(store.glob("runs/*/meta.json")) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.1)
    assert process.poll() is None, "the reproduction ended before it was interrupted"
    sent = time.monotonic()
    process.send_signal(signal.SIGINT)
    process.wait(timeout=30)
    waited = time.monotonic() - sent
    reader.join(timeout=5)
    text = "".join(lines)
    assert process.returncode == 130 and waited < 5, (process.returncode, waited, text[-500:])
    assert "Traceback" not in text
    saved = len(list(store.glob("runs/*/meta.json")))
    last = lines[-1]
    assert (
        last.startswith("interrupted: ") and "and more from their results); run the same command to resume" in last
    ), last
    computed = int(re.search(r"interrupted: (\d+) runs computed", last).group(1))
    assert 1 <= computed <= saved
    again = subprocess.run(
        [sys.executable, "-m", "gradflow", *argv, "--quiet"], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert again.returncode == 0, again.stderr[-500:]
    done, reused = map(int, re.search(r"(\d+) runs done, (\d+) reused", again.stdout).groups())
    assert reused >= saved and done + reused == experiments.declared(["closed_forms"], quick=True)
    assert "findings:" in again.stdout and (out / "report.html").exists()


def test_reproduce_list_gives_each_experiment_its_measured_times(capsys, monkeypatch):
    import experiments

    monkeypatch.setattr(experiments, "timings", lambda: {"closed_forms": {"quick": 12.3, "full": 4000.0}})
    assert main(["reproduce", "--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    header, row = lines[0], next(line for line in lines if line.startswith("closed_forms"))
    assert header.index("quick") < header.index("full") and "12 s" in row and "67 min" in row
    assert all(line.split()[0] in experiments.EXPERIMENTS for line in lines[1:-1])
    # The columns line up: every row's quick time ends where the header's "quick" ends.
    end = header.index("quick") + len("quick")
    assert all(line[end - 1] != " " for line in lines[1:-1])


def test_a_refused_plot_leaves_no_folder_behind(tmp_path, capsys):
    figure = tmp_path / "new" / "deep" / "fig.png"
    assert main(["plot", str(tmp_path / "missing"), "--out", str(figure)]) == 2
    assert "no such folder" in capsys.readouterr().err
    run = tmp_path / "run"
    argv = ["run", "--n", "4", "--m", "6", "--rank", "1", "--t1", "1", "--points", "5", "--quiet", "--out", str(run)]
    assert main(argv) == 0
    capsys.readouterr()
    assert main(["plot", str(run), "--out", str(tmp_path / "new" / "deep" / "fig.xyz")]) == 2
    assert "needs one of the suffixes" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_width_flags_reach_the_parameterization(tmp_path, capsys):
    # --width is one flag for every member that takes a width: Symmetric's int, Deep's int or list ("3,2").
    for argv, width in (
        (["--width", "3"], 3),
        (["--parameterization", "factored", "--width", "3"], 3),
        (["--parameterization", "deep", "--width", "3,2"], [3, 2]),
    ):
        out = tmp_path / "_".join(argv).replace(",", "-")
        assert (
            main(["run", "--n", "4", "--m", "8", "--rank", "1", "--t1", "1", "--quiet", *argv, "--out", str(out)]) == 0
        )
        assert flows.Trajectory.load(out).config["flow"]["parameterization"]["width"] == width
    capsys.readouterr()
    assert main(["run", "--n", "4", "--m", "8", "--width", "3,2", "--quiet", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "width is one positive integer here" in err and "Deep's" in err and err.count("\n") == 1


def test_a_run_within_a_decade_is_plotted_with_labels_that_differ():
    # A run over [1e-5, 1e-4] whose loss barely moves: log axes would label their minor ticks, overlapping in time and
    # repeating one value in the loss. The loss axis turns linear (distinct labels), the time axis keeps its decades.
    from matplotlib.ticker import NullFormatter

    problem = flows.sensing(n=4, m=8, rank=1, seed=0)
    flow = flows.Flow(problem, flows.Symmetric())
    traj = flows.solve(flow, flow.init(1e-3), t1=1e-4, ts=np.geomspace(1e-5, 1e-4, 8))
    fig = flows.plot_trajectory(traj)
    loss_ax = fig.axes[0]
    assert loss_ax.get_yscale() == "linear"
    fig.canvas.draw()
    labels = [t.get_text() for t in loss_ax.get_yticklabels() if t.get_text()]
    assert len(labels) == len(set(labels)) > 2
    assert isinstance(loss_ax.xaxis.get_minor_formatter(), NullFormatter)


def test_a_log_axis_down_to_a_subnormal_limit_is_judged_without_overflow():
    # The within-a-decade test on a value axis from 5e-324 (a zero loss drawn at the smallest positive float) to 1:
    # far more than a decade, so it stays logarithmic; a quotient high / low overflowed there.
    from matplotlib.figure import Figure

    ax = Figure().subplots()
    ax.loglog([1.0, 10.0], [5e-324, 1.0])
    ax.set_ylim(5e-324, 1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        flows._plot._readable_within_a_decade([ax])
    assert ax.get_yscale() == "log"
