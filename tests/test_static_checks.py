"""The tree under the project's static checks: ruff's lint and format ([tool.ruff] in pyproject.toml).

Each test runs the tool installed beside this Python (requirements.lock pins it) over the whole tree, and on a
finding prints the tool's report and the command that fixes or shows it. .pre-commit-config.yaml runs the same
commands before each commit.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _run(*cmd: str) -> subprocess.CompletedProcess:
    tool = BIN / cmd[0]
    assert tool.exists(), f"{tool} is missing: `make venv` installs it (requirements.lock)"
    return subprocess.run([str(tool), *cmd[1:]], cwd=ROOT, capture_output=True, text=True)


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
