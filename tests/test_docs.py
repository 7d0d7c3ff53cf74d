"""The API reference site builds from the docstrings with warnings as errors (`make docs`)."""

import subprocess
import sys
from pathlib import Path

import flows

ROOT = Path(__file__).resolve().parents[1]


def test_the_docs_build_strictly_and_document_the_public_api(tmp_path):
    site = tmp_path / "site"
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    page = (site / "api" / "flows" / "index.html").read_text()
    for name in flows.__all__:
        assert f'id="flows.{name}"' in page, name
    # A member's Args section is rendered as its parameters (the command line reads the same lines).
    assert "first-moment rate" in page
    assert (site / "examples" / "index.html").exists() and (site / "cli" / "index.html").exists()
