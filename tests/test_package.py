"""The package as users get it: the wheel built from this tree, installed into a fresh environment outside it.

The wheel is built from a copy of the tree's files (tracked and untracked-but-not-ignored, as a clone with the
working changes has them), so nothing a previous build left in build/ can hide a module missing from the package
list. It is installed into a new virtual environment with no access to the source tree. From there the command line
runs a tiny problem, lists the paper's experiments, and every public name of flows, analysis, experiments and
gradflow is imported.

In the default suite the wheel goes in alone and the new environment reads its dependencies from this one's
site-packages (a path line, which runs none of that folder's own .pth files, so the editable install of the tree
stays out), and requirements.lock is checked against pyproject's ranges. The slow tests let pip resolve the
dependencies from pyproject's ranges (`test_wheel_resolves_its_dependencies`, about 50 s with pip's cache) and
from their lower bounds (`test_wheel_at_lower_bounds`: the bounds are the versions this package has been run with,
not guesses).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SHIPPED = ("flows", "analysis", "experiments", "gradflow")  # every file under these folders goes into the wheel


def _run(cmd, **kwargs) -> subprocess.CompletedProcess:
    """Run a command; on failure, the assertion shows its output."""
    result = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, (
        f"{' '.join(map(str, cmd))} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    )
    return result


def _source_files() -> list[str]:
    """The tree's files as a clone with the working changes has them (git: tracked, or untracked and not ignored)."""
    listed = _run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT).stdout
    return sorted(f for f in listed.split("\0") if f and (ROOT / f).is_file())


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel that `pip wheel .` builds (build isolation on: the build requirements come from pyproject)."""
    tree = tmp_path_factory.mktemp("tree")
    for name in _source_files():
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, tree / name)
    out = tmp_path_factory.mktemp("wheel")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", out, tree])
    (built,) = out.glob("gradflow-*.whl")
    return built


def _install(wheel: Path, venv: Path, *pip_args) -> Path:
    """A fresh virtual environment with the wheel installed by this environment's pip (and its cache), nothing
    byte-compiled at install (two thirds of the install's time; what runs compiles its modules as it imports them)."""
    _run([sys.executable, "-m", "venv", "--without-pip", venv])
    python = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--quiet", "--no-compile", *pip_args, wheel])
    return python


def _outside_env(venv: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["MPLBACKEND"] = "Agg"
    return env


# Run in the fresh environment: every module comes from it, every public name imports, the style file loads.
_IMPORT_ALL = """
import importlib, json, sys
from pathlib import Path
import matplotlib.style
site = Path(sys.argv[1]).resolve()
report = {}
for name in sys.argv[2:]:
    module = importlib.import_module(name)
    assert site in Path(module.__file__).resolve().parents, f"{name} imported from {module.__file__}, not {site}"
    names = module.__all__
    for public in names:
        getattr(module, public)
    report[name] = len(names)
import experiments
matplotlib.style.use(experiments.STYLE)
print(json.dumps(report))
"""


def _check_installed(python: Path, tmp: Path) -> None:
    venv = python.parent.parent
    env = _outside_env(venv)
    site = _run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], cwd=tmp, env=env).stdout
    report = json.loads(_run([python, "-c", _IMPORT_ALL, site.strip(), *SHIPPED], cwd=tmp, env=env).stdout)
    assert set(report) == set(SHIPPED) and all(count > 0 for count in report.values())

    gradflow = venv / "bin" / "gradflow"
    assert (
        _run([gradflow, "--version"], cwd=tmp, env=env).stdout.strip() == f"gradflow {PYPROJECT['project']['version']}"
    )
    listing = _run([gradflow, "reproduce", "--list"], cwd=tmp, env=env).stdout
    assert "closed_forms" in listing and "completion" in listing, listing
    _run(
        [gradflow, "run", "--n", "4", "--m", "12", "--rank", "1", "--t1", "5", "--points", "5", "--out", "run"],
        cwd=tmp,
        env=env,
    )
    meta = json.loads((tmp / "run" / "meta.json").read_text())
    assert meta["versions"]["gradflow"] == PYPROJECT["project"]["version"], meta["versions"]
    assert (tmp / "run" / "arrays.npz").is_file() and (tmp / "run" / "figure.png").is_file()


def test_wheel_holds_every_module_and_data_file(wheel):
    """Every file of the packages' folders in the tree (module or data) is in the wheel, and nothing else of
    theirs: a module left out of the package list or a data file left out of package-data fails here."""
    with zipfile.ZipFile(wheel) as archive:
        shipped = {n for n in archive.namelist() if not n.startswith("gradflow-")}
        dist_info = {n for n in archive.namelist() if n.startswith("gradflow-") and ".dist-info/" in n}
    in_tree = {f for f in _source_files() if f.split("/")[0] in SHIPPED}
    assert in_tree - shipped == set(), f"in the tree but not in the wheel: {sorted(in_tree - shipped)}"
    assert shipped - in_tree == set(), f"in the wheel but not in the tree: {sorted(shipped - in_tree)}"
    assert any(n.endswith("/licenses/LICENSE") for n in dist_info), sorted(dist_info)


def _lock() -> dict[str, str]:
    """requirements.lock's pins, by normalised name (PEP 503)."""
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version.strip()
    return pins


def test_the_lock_pins_every_direct_dependency_within_pyproject():
    """Every direct dependency (and the test extra's) is pinned in requirements.lock at a version pyproject admits."""
    pins = _lock()
    requirements = [Requirement(r) for r in PYPROJECT["project"]["dependencies"]]
    requirements += [Requirement(r) for r in PYPROJECT["project"]["optional-dependencies"]["test"]]
    for requirement in requirements:
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement.name} is not pinned in requirements.lock"
        assert requirement.specifier.contains(pins[name]), f"{name}=={pins[name]} is outside {requirement}"


def test_wheel_installs_and_runs_outside_the_tree(wheel, tmp_path):
    """The installed wheel runs the command line and imports every public name of its four packages, from a folder
    outside the tree with no PYTHONPATH; its dependencies are this environment's (see the module docstring)."""
    python = _install(wheel, tmp_path / "venv", "--no-deps")
    purelib = _run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]).stdout.strip()
    here = {sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}
    (Path(purelib) / "dependencies.pth").write_text("\n".join(sorted(here)) + "\n")
    work = tmp_path / "work"
    work.mkdir()
    _check_installed(python, work)


@pytest.mark.slow
def test_wheel_resolves_its_dependencies(wheel, tmp_path):
    """As above, with the dependencies resolved by pip from pyproject's ranges into the new environment."""
    python = _install(wheel, tmp_path / "venv")
    work = tmp_path / "work"
    work.mkdir()
    _check_installed(python, work)


def _lower_bounds() -> list[str]:
    """pyproject's direct dependencies, each pinned at its lower bound (`name>=x` -> `name==x`)."""
    pins = []
    for requirement in PYPROJECT["project"]["dependencies"]:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*>=\s*([0-9][A-Za-z0-9.]*)(,.*)?", requirement)
        assert match, f"{requirement!r}: every direct dependency needs a lower bound (name>=version)"
        pins.append(f"{match[1]}=={match[2]}")
    return pins


# The APIs of the dependencies beyond what `gradflow run` touches: the stiff switch (lineax), finite steps (optax),
# a sharded sweep (jax.shard_map), a convex reference (cvxpy) and a sweep farmed out to a Dask cluster.
_EXERCISE = """
import flows, analysis.references
from dask.distributed import Client, LocalCluster

problem = flows.sensing(n=4, m=10, rank=1, seed=0)
flow = flows.Flow(problem, flows.Symmetric())
state0 = flow.init(scale=1e-2)
assert flows.solve(flow, state0, t1=1e3, stop_loss=1e-10).stats["switched"]  # into the stiff solver
adam = flows.Flow(problem, flows.Deep(depth=3), penalty=flows.Ratio(), strength=1e-3, dynamics=flows.Adam())
flows.descend(adam, adam.init(scale=1e-1), step=1e-3, t1=0.1)
analysis.references.min_nuclear(problem)

def build(config):
    flow = flows.Flow(flows.sensing(n=4, m=10, rank=1, seed=config["seed"]), flows.Symmetric())
    return flow, flow.init(scale=1e-2)

if __name__ == "__main__":
    assert len(flows.sweep(build, flows.grid(seed=[0, 1]), out="local", t1=10.0)) == 2
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False) as cluster, Client(cluster) as client:
        assert len(flows.sweep(build, flows.grid(seed=[2, 3]), out="farmed", t1=10.0, executor=client)) == 2
"""


@pytest.mark.slow
def test_wheel_at_lower_bounds(wheel, tmp_path):
    """As above, with every direct dependency at the lowest version pyproject admits, and a run through the APIs
    of the dependencies that `gradflow run` leaves out (minutes: it downloads the old releases once)."""
    constraints = tmp_path / "lower-bounds.txt"
    constraints.write_text("\n".join(_lower_bounds()) + "\n")
    python = _install(wheel, tmp_path / "venv", "--constraint", constraints)
    work = tmp_path / "work"
    work.mkdir()
    versions = "import sys; from importlib.metadata import version; print(' '.join(version(n) for n in sys.argv[1:]))"
    pins = dict(pin.split("==") for pin in _lower_bounds())
    installed = _run([python, "-c", versions, *pins], cwd=work).stdout.split()
    assert dict(zip(pins, installed)) == pins
    _check_installed(python, work)
    (work / "exercise.py").write_text(_EXERCISE)
    _run([python, "exercise.py"], cwd=work, env=_outside_env(python.parent.parent))


def test_version_is_set_in_one_place():
    """pyproject holds the version; CITATION.cff repeats it and CHANGELOG.md has its entry."""
    version = PYPROJECT["project"]["version"]
    citation = (ROOT / "CITATION.cff").read_text()
    assert re.search(rf"^version: {re.escape(version)}$", citation, re.MULTILINE), "CITATION.cff's version"
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert re.search(rf"^## \[{re.escape(version)}\] - \d{{4}}-\d{{2}}-\d{{2}}$", changelog, re.MULTILINE)
    assert re.search(r"^## \[Unreleased\]$", changelog, re.MULTILINE)
