"""The adaptive flows under the default solver (the sign and RMSProp flows: Tsit5, then Runge-Kutta-Chebyshev) and
under the linearly implicit extrapolation with the field's exact Jacobian (`flows.KrylovJacobian`), against Dopri8 at
rtol 1e-12: every saved value within 100 rtol; the momentum flow through a convergence tail.

The extrapolation with exact Jacobian-vector products and GMRES needs nothing from the flow but its field, so it
integrates flows the Gauss-Newton solvers cannot (preconditioned dynamics, penalties); its cost is measured in
benchmarks/adaptive_stiff.py.
"""

import numpy as np
import pytest

import flows

PROBLEM = flows.sensing(n=6, m=18, rank=2, seed=0)
RTOL = 1e-8


def _max_relative_error(traj, reference):
    return float(np.max(np.linalg.norm(traj.W - reference.W, axis=(1, 2)) / np.linalg.norm(reference.W, axis=(1, 2))))


@pytest.mark.parametrize(
    "dynamics, t1",
    [
        (flows.RMSProp(b=1.0, eps=1e-3), 2.0),
        (flows.Sign(eps=1e-3), 2.0),
        pytest.param(flows.RMSProp(b=1.0, eps=1e-8), 3.0, marks=pytest.mark.slow),
        pytest.param(flows.RMSProp(b=1.0, eps=1e-3), 10.0, marks=pytest.mark.slow),
    ],
    ids=["rmsprop", "sign", "rmsprop-eps1e-8", "rmsprop-t10"],
)
def test_preconditioned_flows_are_accurate_at_every_saved_time(dynamics, t1):
    # The flows turn stiff as gradient entries shrink (the field is -g / (sqrt(vhat) + eps), or -g / (|g| + eps)),
    # and the default solver switches to Runge-Kutta-Chebyshev (at t = 0.55 and 0.34 here). Measured against Dopri8 at
    # rtol 1e-12 (11, 44 and 68 thousand steps in the three at eps = 1e-3): the default 1.05, 5.8 and 0.93 rtol off
    # in 4.3, 5.5 and 6.4 thousand steps; Tsit5 throughout 0.09, 5.8 and 0.09 rtol in 8.5, 59 and 89 thousand.
    flow = flows.Flow(PROBLEM, flows.Symmetric(), dynamics=dynamics)
    state0 = flow.init(scale=1e-2, kind="gaussian", seed=1)
    ts = flows.default_ts(t1, 30)
    reference = flows.solve(flow, state0, t1=t1, ts=ts, rtol=1e-12, solver=flows.solver_by_name("dopri8"))
    traj = flows.solve(flow, state0, t1=t1, ts=ts, rtol=RTOL)
    assert traj.config["solver"] == "Tsit5ThenChebyshev" and traj.stats["switched"]
    assert _max_relative_error(traj, reference) <= 100 * RTOL


@pytest.mark.parametrize(
    "dynamics",
    [
        pytest.param(flows.Adam(a=10.0, b=1.0, eps=1e-3), id="adam"),
        pytest.param(flows.RMSProp(b=1.0, eps=1e-3), id="rmsprop", marks=pytest.mark.slow),
    ],
)
def test_extrapolation_with_the_exact_jacobian_integrates_adaptive_flows(dynamics):
    # Penalised too (the ratio on the product): nothing here has a Gauss-Newton linearisation. At rtol 1e-6 (a third of
    # the steps of rtol 1e-8; Adam: 184 steps, 83 linearisations) the saved values were measured 0.015 rtol off the
    # reference, whose own error (rtol 1e-10) is far below the bound.
    rtol = 1e-6
    flow = flows.Flow(PROBLEM, flows.Deep(depth=2), penalty=flows.Ratio(), strength=0.1, dynamics=dynamics)
    state0 = flow.init(scale=0.1, kind="gaussian", seed=1)
    ts = flows.default_ts(1.0, 8)
    reference = flows.solve(flow, state0, t1=1.0, ts=ts, rtol=1e-10, solver=flows.solver_by_name("dopri8"))
    solver = flows.LinearlyImplicitExtrapolation(columns=6, linear_solver=flows.KrylovJacobian())
    traj = flows.solve(flow, state0, t1=1.0, ts=ts, rtol=rtol, solver=solver)
    assert traj.stats["saved_times"] == "landed" and traj.stats["linearisations"] >= 1
    assert _max_relative_error(traj, reference) <= 100 * rtol


def _ratio_momentum_run():
    """The completion experiments' momentum-flow run (n = 30, seed 2, the ratio at lambda = 10, depth 1) that converges
    to a stationary point: its moment decays to 1e-7 of the parameters by t = 2500."""
    from experiments import _completion

    scale = _completion.SCALES["n = 30"][False]
    config = scale.config(2, parameterization="depth 1", penalty="ratio", strength=10.0, dynamics="momentum")
    return _completion.build(config)


def test_momentum_flow_keeps_its_step_through_a_convergence_tail():
    # The moment is measured by its effect on the parameters (flows.Momentum.error_sizes). Measured against its own
    # size instead, the same solve takes 37 thousand steps to t = 2000 (and 400 thousand are not enough to t = 3000)
    # as the moment decays; with it, 9.3 thousand.
    flow, state0 = _ratio_momentum_run()
    traj = flows.solve(flow, state0, t1=2000.0, ts=flows.default_ts(2000.0, 20), rtol=1e-6, max_steps=15_000)
    assert traj.stats["num_steps"] < 15_000
    assert np.linalg.norm(traj.states["m"][-1]) < 1e-5 * np.linalg.norm(traj.W[-1])


@pytest.mark.slow
def test_momentum_flow_through_its_tail_is_accurate_at_every_saved_time():
    # Measured: 13.8 thousand steps to t = 3000 at rtol 1e-6, at most 0.3 rtol off the rtol 1e-10 solve (17 thousand).
    flow, state0 = _ratio_momentum_run()
    ts = flows.default_ts(3000.0, 30)
    reference = flows.solve(flow, state0, t1=3000.0, ts=ts, rtol=1e-10, max_steps=100_000)
    traj = flows.solve(flow, state0, t1=3000.0, ts=ts, rtol=1e-6, max_steps=100_000)
    assert _max_relative_error(traj, reference) <= 100 * 1e-6


def test_the_adam_flows_pi_controller_rejects_fewer_steps_than_an_i_controller_for_the_same_trajectory():
    # The Adam flow's Tsit5 steps are held by stability (eigenvalues -a/2 +- i omega), where an I controller's steps
    # overshoot the limit and are rejected in turn. Measured on this run (the completion experiment's quick grid,
    # n = 15, seed 0, the ratio at lambda = 3, to t = 2, rtol 1e-6): the default PI controller 882 steps, 29
    # rejected, 1.6e-8 off the rtol 1e-10 solve; the I controller 864 steps, 131 rejected, 3.8e-8 off; 2.2e-8 apart.
    import diffrax
    import jax.numpy as jnp

    from experiments import _completion
    from flows._solve import _error_control

    scale = _completion.SCALES["n = 30"][True]
    config = scale.config(0, parameterization="depth 1", penalty="ratio", strength=3.0, dynamics="Adam")
    flow, state0 = _completion.build(config)
    options = scale.options(config) | {"t1": 2.0, "ts": flows.default_ts(2.0, 20)}
    i_controller = diffrax.ClipStepSizeController(
        flows.ArraywiseRelative.make(options["rtol"], _error_control), step_ts=jnp.asarray(options["ts"])
    )
    pi = flows.solve(flow, state0, **options)
    i = flows.solve(flow, state0, **options, stepsize_controller=i_controller)
    assert pi.stats["num_rejected_steps"] * 3 < i.stats["num_rejected_steps"]
    assert _max_relative_error(pi, i) <= 100 * options["rtol"]
