"""The tree under the project's static checks: ruff's lint and format ([tool.ruff] in pyproject.toml) and
pyright's type check of flows/ ([tool.pyright]).

Each test runs the tool installed beside this Python (requirements.lock pins it) over the whole tree, and on a
finding prints the tool's report and the command that fixes or shows it. .pre-commit-config.yaml runs the same
commands before each commit.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PYRIGHT = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pyright"]


def _run(*cmd: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    tool = BIN / cmd[0]
    assert tool.exists(), f"{tool} is missing: `make venv` installs it (requirements.lock)"
    return subprocess.run([str(tool), *cmd[1:]], cwd=ROOT, capture_output=True, text=True, env=env)


def test_ruff_lint_is_clean():
    result = _run("ruff", "check", "--output-format", "concise", "--no-fix", ".")
    assert result.returncode == 0, (
        f"ruff finds lint errors:\n{result.stdout}{result.stderr}\n"
        "Fix with `.venv/bin/ruff check --fix .` (the findings marked [*]); the others by hand "
        "(`.venv/bin/ruff rule CODE` explains a rule; the rule set is [tool.ruff.lint] in pyproject.toml)."
    )


def test_ruff_format_is_clean():
    result = _run("ruff", "format", "--check", ".")
    assert result.returncode == 0, (
        f"files not formatted as `ruff format` writes them:\n{result.stdout}{result.stderr}\n"
        "Fix with `.venv/bin/ruff format .`"
    )


def test_pyright_finds_no_type_errors_in_flows():
    # This environment's Python (its packages); no query to PyPI for a newer pyright.
    env = os.environ | {"PYRIGHT_PYTHON_IGNORE_WARNINGS": "1"}
    result = _run("pyright", "--pythonpath", sys.executable, env=env)
    assert result.returncode == 0, (
        f"pyright finds type errors in {', '.join(PYRIGHT['include'])}:\n{result.stdout}{result.stderr}\n"
        "Show them with `.venv/bin/pyright` (settings: [tool.pyright] in pyproject.toml). Fix the annotation or the "
        "code; where pyright cannot follow (an eqx.AbstractVar met by a property, numpy's stubs), a "
        "`# pyright: ignore[rule]` on the line, with the reason."
    )
