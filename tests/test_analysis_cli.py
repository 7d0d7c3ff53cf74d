"""`gradflow check`: the table, --json, and the exit status."""

import json

import pytest

from analysis import cli
from flows._cli import main


def test_check_json_rows(capsys):
    assert cli.check(["--only", "eigenbasis", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [row["name"] for row in rows][:2] == ["eigenbasis.commuting.commutator", "eigenbasis.commuting.misalignment"]
    for row in rows:
        assert set(row) == {"name", "value", "threshold", "passed", "op"}
        assert row["passed"] is True
        assert cli.OPS[row["op"]](row["value"], row["threshold"])


def test_gradflow_check_prints_a_table(capsys):
    """Through the console script's parser (a leading --option must reach analysis.cli)."""
    assert main(["check", "--only", "eigenbasis"]) == 0
    out = capsys.readouterr().out
    assert "eigenbasis.commuting.commutator" in out and "pass" in out
    assert "3 of 3 checks passed" in out


def test_failing_row_sets_exit_status(capsys, monkeypatch):
    monkeypatch.setitem(cli.GROUPS, "eigenbasis", lambda details: [cli.Row("synthetic", 2.0, "<=", 1.0)])
    assert cli.check(["--only", "eigenbasis"]) == 1
    assert "FAIL" in capsys.readouterr().out
    assert not cli.Row("nan", float("nan"), "<=", 1.0).passed


def test_unknown_group_is_refused(capsys):
    with pytest.raises(SystemExit):
        cli.check(["--only", "nonsense"])
