"""Run-time checks of flows' type and jaxtyping shape annotations in every test.

flows is imported here, before any test module imports it, through jaxtyping's import hook: every function
and class of flows is checked by beartype on each call (under `jax.jit`, once per trace), so a shape
annotation that does not hold fails the test that exercises it. beartype follows PEP 484's numeric tower
(an int is a float), as the static checkers do. The suite runs with XLA's backend optimisation off (below).
"""

import gc
import os

# XLA's backend optimisation off for the suite (and the command-line runs it starts, which inherit the environment):
# the tests are bound by compile time, which this cuts by a sixth; the generated code computes the same operations,
# and what the tests assert holds to tolerances far above the rounding that instruction selection can change.
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_backend_optimization_level=0".strip()

import jax  # noqa: E402
import jaxtyping  # noqa: E402
import pytest  # noqa: E402

TYPECHECKER = "beartype.beartype(conf=beartype.BeartypeConf(is_pep484_tower=True))"

with jaxtyping.install_import_hook("flows", TYPECHECKER):
    import flows  # noqa: F401


@pytest.fixture
def unchecked_types():
    """The run-time type checks off, for a test of flows' own validation of ill-typed input (what users get)."""
    jaxtyping.config.update("jaxtyping_disable", True)
    try:
        yield
    finally:
        jaxtyping.config.update("jaxtyping_disable", False)


@pytest.fixture(autouse=True, scope="module")
def _compiled_programs_released_per_module():
    """Every compiled program released after each test module. XLA's CPU code lives in three memory mappings per
    compiled kernel (a switching solve compiles about 140), and a process may hold at most vm.max_map_count (65530
    by default) mappings: one worker of `pytest -n 2` keeping every program of the suite reached 62,000, and the
    suite in one process crashed at its 240th test, in XLA's compiler. A module's tests still share their programs."""
    yield
    jax.clear_caches()
    gc.collect()
