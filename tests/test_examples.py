"""Every script in examples/ runs at its --quick size and shows what its docstring says."""

import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run_example(name, monkeypatch, capsys, *args) -> str:
    """The example run as a script (its __main__ block) in this process, its printed output."""
    monkeypatch.setattr(sys, "argv", [str(EXAMPLES / name), "--quick", *args])
    runpy.run_path(str(EXAMPLES / name), run_name="__main__")
    return capsys.readouterr().out


def numbers(pattern: str, text: str) -> list[float]:
    return [float(x) for x in re.findall(pattern, text)]


def test_every_example_is_tested():
    tested = {
        "five_flows.py",
        "test_closed_form.py",
        "small_init_limit.py",
        "depth_table.py",
        "gd_vs_flow.py",
        "perturbed_rerun.py",
    }
    assert {p.name for p in EXAMPLES.glob("*.py")} == tested | {"dask_sweep.py"}


def test_five_flows(monkeypatch, capsys):
    out = run_example("five_flows.py", monkeypatch, capsys)
    errors = dict(re.findall(r"^(\w[\w ]*?)\s{2,}.*?\s(\S+e[-+]\d+)\s+\S+$", out, flags=re.M))
    assert len(out.strip().splitlines()) == 7
    # From a small init the factorised flows head for the low-rank truth; the direct flow cannot leave the span.
    assert float(errors["symmetric"]) < 0.1 * float(errors["direct"])


def test_closed_form_example_passes():
    module = runpy.run_path(str(EXAMPLES / "test_closed_form.py"))
    import flows

    for problem in (flows.sensing(n=6, m=20, rank=2, seed=0), flows.completion(n=6, m=20, rank=2)):
        module["test_direct_flow_residual_is_a_matrix_exponential"](problem)


def test_small_init_limit(monkeypatch, capsys):
    out = run_example("small_init_limit.py", monkeypatch, capsys)
    distances = numbers(r"distance (\d\S*)", out)
    assert len(distances) == 2 and distances[1] < 0.3 * distances[0]


def test_depth_table(monkeypatch, capsys):
    out = run_example("depth_table.py", monkeypatch, capsys)
    row = numbers(r"\s(\d\.\d\de[-+]\d+)", out.strip().splitlines()[-1])
    nuclear, depth1, depth2, depth3 = row
    assert depth3 < min(nuclear, depth1, depth2)


def test_gd_vs_flow(monkeypatch, capsys, tmp_path):
    out = run_example("gd_vs_flow.py", monkeypatch, capsys, "--out", str(tmp_path))
    (ratio,) = numbers(r"ratio to the previous step's (\S+)", out)
    assert 1.8 < ratio < 2.2  # halving the step halves the gap: first order
    assert (tmp_path / "gd_vs_flow.png").stat().st_size > 20_000


def test_dask_sweep_resumes(tmp_path):
    command = [sys.executable, str(EXAMPLES / "dask_sweep.py"), "--quick", "--out", str(tmp_path)]
    first = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=EXAMPLES.parent)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "2 runs computed now, 0 reused" in first.stdout
    again = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=EXAMPLES.parent)
    assert "0 runs computed now, 2 reused" in again.stdout
    assert numbers(r"mean (\S+)", again.stdout) == numbers(r"mean (\S+)", first.stdout)


@pytest.mark.parametrize("name", sorted(p.name for p in EXAMPLES.glob("*.py")))
def test_examples_explain_themselves(name):
    """Each example opens with what it shows and how to run it."""
    text = (EXAMPLES / name).read_text()
    assert text.startswith('"""') and ("python examples/" in text or "pytest examples/" in text)


def test_perturbed_rerun(monkeypatch, capsys):
    # A 1e-12 perturbation of the identity init moves W through the transitions by far more than itself (measured
    # at the quick size: 1.0, a share of W); of a Gaussian init by at most the integration's error at the default
    # rtol 1e-8: about itself where the solver's steps stay as they were (8.6e-12 under the suite's XLA flags), about
    # rtol where the perturbation changes them (8.4e-9 without those flags).
    out = run_example("perturbed_rerun.py", monkeypatch, capsys)
    largest = dict(re.findall(r"^(identity|gaussian)\s+(\S+)", out, flags=re.M))
    assert float(largest["identity"]) > 1e-2 and float(largest["gaussian"]) < 1e-7, out
