"""Every analysis check, from the one source `gradflow check` prints: each group's rows must all pass."""

import json

import numpy as np
import pytest

from analysis import checks


@pytest.mark.parametrize(
    "group", [pytest.param(g, marks=pytest.mark.slow) if g == "small_init" else g for g in checks.GROUPS]
)
def test_every_check_of_the_group_passes(group):
    result = checks.GROUPS[group]()
    assert result.rows, f"group {group} has no rows"
    failed = [f"{r.name}: {r.value:.3e} {r.op} {r.threshold:g}" for r in result.rows if not r.passed]
    assert not failed, failed
    json.dumps(result.details, default=float)  # the details are printable as JSON


def test_a_row_fails_on_nan_and_on_the_wrong_side():
    assert not checks.Row("nan", float("nan"), "<=", 1.0).passed
    assert not checks.Row("over", 2.0, "<=", 1.0).passed
    assert checks.Row("under", 0.5, "<", 1.0).passed and not checks.Row("equal", 1.0, "<", 1.0).passed
    assert checks.Row("at", 1.0, ">=", 1.0).passed
    assert np.isnan(checks.Row("nan", float("nan"), ">", 0.0).as_json()["value"])
