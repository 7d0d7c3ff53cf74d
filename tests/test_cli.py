"""`gradflow run`: a saved trajectory and a figure from flags; clear errors for bad flags."""

import json

import numpy as np
import pytest

import flows
from flows._cli import main


def test_run_saves_a_trajectory_and_a_figure(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["run", "--problem", "completion", "--n", "6", "--m", "20", "--rank", "1", "--flow", "deep",
                 "--depth", "2", "--init", "balanced", "--scale", "0.3", "--t1", "20", "--points", "20",
                 "--out", str(out), "--quiet"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out.split("saved")[0])
    traj = flows.Trajectory.load(out)
    assert np.isclose(summary["loss"], traj.loss[-1]) and len(traj.ts) == 20
    assert traj.config["problem"]["kind"] == "completion" and traj.config["flow"]["depth"] == 2
    assert (out / "figure.png").stat().st_size > 10_000


@pytest.mark.parametrize("argv, message", [
    (["run", "--n", "3", "--rank", "5", "--quiet"], "rank"),
    (["run", "--scale", "-1", "--quiet"], "scale"),
    (["run", "--problem", "completion", "--n", "3", "--m", "10", "--quiet"], "exceed"),
    (["run", "--solver", "rk4000", "--quiet"], "unknown solver"),
    (["run", "--flow", "symmetric", "--init", "balanced", "--quiet"], "does not apply"),
])
def test_bad_flags_exit_2_with_a_message(argv, message, capsys, tmp_path):
    assert main(argv + ["--out", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err


def test_help_and_unknown_choices(capsys):
    with pytest.raises(SystemExit) as exit_help:
        main(["run", "--help"])
    assert exit_help.value.code == 0 and "examples:" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_bad:
        main(["run", "--flow", "spiral"])
    assert exit_bad.value.code == 2
