"""`gradflow run`: a saved trajectory and a figure from flags; clear errors for bad flags."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

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
    assert report["num_steps"] > 0 and report["saved_times"] == "landed" and report["solver"] == "Tsit5"
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
    ],
)
def test_bad_flags_exit_2_with_a_message(argv, message, capsys, tmp_path):
    assert main(argv + ["--out", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err


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
                "--on-factors",
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
