"""`gradflow check`: the table, --json, and the exit status, through the console script's entry point."""

import json

from analysis import checks
from gradflow import main


def test_check_json_rows(capsys):
    assert main(["check", "--only", "eigenbasis", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [row["name"] for row in rows] == [r.name for r in checks.eigenbasis_checks().rows]
    for row in rows:
        assert set(row) == {"name", "value", "threshold", "passed", "op"}
        assert row["passed"] is True
        assert checks.OPS[row["op"]](row["value"], row["threshold"])


def test_gradflow_check_prints_a_table(capsys):
    assert main(["check", "--only", "eigenbasis"]) == 0
    out = capsys.readouterr().out
    assert "eigenbasis.commuting.commutator" in out and "pass" in out
    assert "6 of 6 checks passed" in out


def test_failing_row_sets_exit_status(capsys, monkeypatch):
    monkeypatch.setitem(
        checks.GROUPS, "eigenbasis", lambda: checks.CheckResult([checks.Row("synthetic", 2.0, "<=", 1.0)], {})
    )
    assert main(["check", "--only", "eigenbasis"]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_unknown_group_is_refused(capsys):
    assert main(["check", "--only", "nonsense"]) == 2
    err = capsys.readouterr().err
    assert "unknown check group 'nonsense'" in err and err.count("\n") == 1


def test_a_store_of_another_kind_is_refused_before_any_group_runs(capsys, monkeypatch, tmp_path):
    monkeypatch.setitem(checks.GROUPS, "eigenbasis", lambda: (_ for _ in ()).throw(AssertionError("a group ran")))
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "notes.txt").write_text("not a store")
    assert main(["check", "--only", "eigenbasis", "small_init", "--store", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "not a gradflow store" in err and err.count("\n") == 1
