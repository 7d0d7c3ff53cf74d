"""The small-initialization machinery (the limits and certificates themselves are rows of
analysis.checks.small_init_checks)."""

import numpy as np
import pytest

import flows
from analysis import references, small_init


@pytest.mark.slow  # ~20 s alone; ResidualIntegral is also a row of analysis.checks.closed_form_checks
def test_carried_residual_integral_matches_the_reduced_ode():
    """`ResidualIntegral` (s = int r carried along the full flow, any problem) against the commuting
    reduced ODE, whose state is s itself: two computations of the same certificate."""
    problem = flows.commuting(n=12, m=5, rank=2, seed=0)
    alphas = np.array([1e-2, 1e-4])
    carried = small_init.sweep(flows.Flow(problem, flows.Symmetric()), alphas, {}, certificate_exponent=4.0)
    reduced = small_init.commuting_certificates(problem, alphas)
    # The carried flow's tail runs on the linearly implicit extrapolation (its Gauss-Newton matrix padded with a zero
    # block for s), the reduced ODE's on Kvaerno5; both at rtol 1e-8 to t = 1e8: measured 8e-8 relative to |nu|.
    for c, r in zip(carried.certificates, reduced.certificates):
        assert np.linalg.norm(c.nu - r.nu) <= 1e-6 * np.linalg.norm(r.nu)


def test_sweep_rejects_bad_alphas():
    with pytest.raises(ValueError, match="alphas"):
        small_init.sweep(flows.Flow(flows.sensing(n=8, m=20, rank=2, seed=0), flows.Direct()), [1e-3, 1e-2], {})


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_sensing_limit_on_other_draws(seed):
    """Not a property of one draw: the same setting with other seeds, alpha = 1e-2 and 1e-6."""
    problem = flows.sensing(n=30, m=180, rank=2, seed=seed)
    sweep = small_init.sweep(
        flows.Flow(problem, flows.Symmetric()), [1e-2, 1e-6], {"nuclear": references.min_nuclear_psd(problem)}
    )
    distances = sweep.distances["nuclear"]
    assert distances[1] <= 1e-4 and distances[1] < distances[0], distances


def test_a_stored_limit_is_keyed_by_the_solvers_it_ran_with_defaults_included(tmp_path, monkeypatch):
    # gradflow check and the small-init experiment share these runs through the store: a run computed with the
    # default tail solver is reused under the same default given explicitly, and computed again when the default
    # itself changes its settings (a key of the options as passed would hand back the old run).
    flow = flows.Flow(flows.sensing(n=4, m=8, rank=1, seed=0), flows.Symmetric())
    state0 = flow.init(scale=1e-2)
    options = dict(t1=1e3, head_loss=1e-4)
    first = small_init.stored(tmp_path, flow, state0, **options)
    assert not first.reused
    assert small_init.stored(tmp_path, flow, state0, **options).reused
    explicit = small_init.stored(tmp_path, flow, state0, tail_solver=flows.LinearlyImplicitExtrapolation(), **options)
    assert explicit.reused
    default = flows.LinearlyImplicitExtrapolation
    monkeypatch.setattr(flows, "LinearlyImplicitExtrapolation", lambda: default(defect=0.5))
    changed = small_init.stored(tmp_path, flow, state0, **options)
    assert not changed.reused
    # The same limit to the solves' accuracy (rtol 1e-8 each: 100 rtol).
    np.testing.assert_allclose(changed.W, first.W, rtol=0, atol=1e-6 * np.linalg.norm(first.W))


def test_a_stored_limit_is_computed_again_when_fresh_or_when_its_code_changes(tmp_path, monkeypatch):
    flow = flows.Flow(flows.sensing(n=4, m=8, rank=1, seed=0), flows.Symmetric())
    options = dict(t1=1e3, head_loss=1e-4)
    runs = [
        small_init.sweep(flow, [1e-1, 1e-2], {}, store=tmp_path, fresh=fresh, **options).runs[1]
        for fresh in (False, False, True)
    ]
    assert [run.reused for run in runs] == [False, True, False]
    reduced = flows.commuting(n=3, m=3, rank=1, seed=0)
    runs = [
        small_init.commuting_certificates(reduced, [1e-1, 1e-2], store=tmp_path, fresh=f).runs[1] for f in (False, True)
    ]
    assert [run.reused for run in runs] == [False, False]
    # The key holds `converge`'s source: another version of it computes again.
    source = small_init.inspect.getsource

    def edited(function):
        return source(function) + ("# edited\n" if function is small_init.converge else "")

    monkeypatch.setattr(small_init.inspect, "getsource", edited)
    again = small_init.stored(tmp_path, flow, flow.init(scale=1e-2, kind="identity"), **options)
    assert not again.reused


def test_converge_refuses_a_flow_whose_clock_cannot_restart():
    flow = flows.Flow(flows.sensing(n=4, m=8, rank=1, seed=0), flows.Symmetric(), dynamics=flows.Adam())
    with pytest.raises(ValueError, match="restarts the clock"):
        small_init.converge(flow, flow.init(scale=1e-2), t1=1e3, head_loss=1e-4)
