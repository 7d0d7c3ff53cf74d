"""Runge-Kutta-Chebyshev: its stages against the closed form of its stability polynomial, its order, and the
Chebyshev switch on the flows (plain, penalised) against a tight reference."""

import diffrax
import jax.numpy as jnp
import numpy as np
import pytest
from numpy.polynomial import chebyshev

import flows
from flows._chebyshev import _DAMPING, stability_bound, stages


def _one_step(field, y0, h):
    """One step from t = 0 (after the first step's power iterations) and the solver state after it."""
    solver = flows.RungeKuttaChebyshev()
    terms = diffrax.ODETerm(lambda t, y, args: field(t, y))
    state = solver.init(terms, 0.0, h, y0, None)
    y1, error, _, state, _ = solver.step(terms, jnp.asarray(0.0), jnp.asarray(h), y0, None, state, False)
    return np.asarray(y1), np.asarray(error), state


def _polynomial(s: int, z: np.ndarray) -> np.ndarray:
    r"""The s-stage method's stability function in closed form (Sommeijer, Shampine & Verwer 1998):
    $R_s(z) = a_s + b_s T_s(w_0 + w_1 z)$, $b_s = T_s''(w_0) / T_s'(w_0)^2$, $a_s = 1 - b_s T_s(w_0)$."""
    T = chebyshev.Chebyshev.basis(s)
    w0 = 1.0 + _DAMPING / s**2
    w1 = T.deriv(1)(w0) / T.deriv(2)(w0)
    b = T.deriv(2)(w0) / T.deriv(1)(w0) ** 2
    return 1.0 - b * T(w0) + b * T(w0 + w1 * z)


@pytest.mark.parametrize("h", [0.002, 0.05, 1.0, 20.0])
def test_a_step_applies_the_damped_chebyshev_polynomial(h):
    # y' = lambda y on a spread of lambda in [-100, 0]: one step multiplies each component by R_s(h lambda), with
    # s from the power iteration's estimate of 100 (x 1.2; 30 iterations at a gap of 0.8 leave 0.8^60 ~ 1e-6 in the
    # estimate). Wrong recurrence coefficients (a_j for a_{j-1}, another damping) are off by O(1) here; the stability
    # function does not depend on b_0 = b_1 = b_2, which the stage-time test below checks.
    lam = -np.concatenate([np.linspace(0.0, 80.0, 40), [100.0]])
    y1, _, state = _one_step(lambda t, y: lam * y, jnp.ones_like(lam), h)
    rho = float(state[2])
    assert rho == pytest.approx(1.2 * 100.0, rel=1e-5)
    s = int(stages(jnp.asarray(h * rho), 400))
    assert state[3] == s and s >= 2
    np.testing.assert_allclose(y1, _polynomial(s, h * lam), rtol=1e-10, atol=1e-12)
    # Stable on the whole spectrum: the safety margin keeps h * 100 inside [-beta_s, 0].
    assert h * 100.0 <= float(stability_bound(s)) and np.all(np.abs(y1) <= 1.0 + 1e-12)


@pytest.mark.parametrize("s", [2, 3, 10, 57, 400])
def test_the_polynomial_is_second_order_and_stable_on_its_interval(s):
    # R_s(z) = 1 + z + z^2 / 2 + O(z^3), and |R_s| <= 1 on [-beta_s, 0] with beta_s >= 0.65 (s^2 - 1).
    beta = float(stability_bound(s))
    assert beta >= 0.65 * (s**2 - 1)
    assert np.max(np.abs(_polynomial(s, np.linspace(-beta, 0.0, 20001)))) <= 1.0 + 1e-12
    z = np.array([1e-3, -1e-3])
    np.testing.assert_allclose(_polynomial(s, z), 1.0 + z + z**2 / 2, rtol=0, atol=s**4 * 1e-9)
    assert int(stages(jnp.asarray(0.99 * beta / 1.0), 10_000)) <= s + 1


def test_time_dependent_terms_are_integrated_to_second_order():
    # A stiff decaying component forces many stages; the second integrates y' = 1 + 3 t + 2 t^2. Order 2 with the
    # right stage times c_j integrates the linear part exactly; the quadratic part costs O(h^3). Stage times of
    # j / s instead of c_j ~ j^2 / s^2 leave an O(h^2) error in the linear part.
    def field(t, y):
        return jnp.stack([-1e4 * y[0], 1.0 + 3.0 * t + 2.0 * t**2])

    errors = []
    for h in (0.1, 0.05):
        y1, _, state = _one_step(field, jnp.array([1.0, 0.0]), h)
        assert int(state[3]) > 20
        errors.append(y1[1] - (h + 1.5 * h**2 + 2.0 * h**3 / 3))
    # Local error C h^3 with C depending mildly on s (stages grow with h): between 2^2 and 2^4 per halving.
    assert 4.0 < errors[0] / errors[1] < 16.0, errors
    y1, _, _ = _one_step(lambda t, y: jnp.stack([-1e4 * y[0], 1.0 + 3.0 * t]), jnp.array([1.0, 0.0]), 0.1)
    assert y1[1] == pytest.approx(0.1 + 1.5 * 0.01, rel=1e-13)


def test_the_error_estimate_is_the_local_error_of_the_returned_solution():
    # y' = -y^2 + cos(t) (one step from y = 1, s = 2): the estimate is O(h^3), within a factor 2 of the true local error
    # against Dopri8 at rtol 1e-13, and the controller is told so (error order 3, not the method's order 2).
    def field(t, y):
        return -(y**2) + jnp.cos(t)

    ratios, errors = [], []
    for h in (0.02, 0.01):
        y1, estimate, _ = _one_step(field, jnp.array([1.0]), h)
        exact = diffrax.diffeqsolve(
            diffrax.ODETerm(lambda t, y, args: field(t, y)),
            diffrax.Dopri8(),
            0.0,
            h,
            h / 10,
            jnp.array([1.0]),
            stepsize_controller=diffrax.PIDController(rtol=1e-13, atol=1e-15),
        ).ys[-1]
        errors.append(abs(float(y1[0] - exact[0])))
        ratios.append(abs(float(estimate[0])) / errors[-1])
    assert all(0.5 < r < 2.0 for r in ratios), ratios
    assert 6.0 < errors[0] / errors[1] < 10.0, errors
    assert flows.RungeKuttaChebyshev().error_order(None) == 3


def test_a_step_beyond_the_largest_stage_count_is_rejected_outright():
    # h rho past beta_400 ~ 1e5: no stage count is stable, so the step returns an infinite error (and its start)
    # instead of running 400 stages into an overflow.
    lam = -np.array([1e6, 1.0])
    y1, error, state = _one_step(lambda t, y: lam * y, jnp.ones(2), 1.0)
    assert np.all(np.isinf(error)) and np.array_equal(y1, np.ones(2))


def test_a_zero_jacobian_takes_the_fewest_stages_not_a_nan():
    # y' = 0 y + 1: J v = 0, so the power iteration has nothing to normalise (it divided by zero, and 0 x NaN made
    # the next step's estimate NaN); rho = 0.
    solution = diffrax.diffeqsolve(
        diffrax.ODETerm(lambda t, y, args: 0.0 * y + 1.0),
        flows.RungeKuttaChebyshev(),
        0.0,
        1.0,
        0.1,
        jnp.zeros(3),
        stepsize_controller=diffrax.PIDController(rtol=1e-8, atol=1e-8),
        saveat=diffrax.SaveAt(t1=True, solver_state=True),
    )
    np.testing.assert_allclose(solution.ys[-1], 1.0, rtol=1e-14)
    assert float(solution.solver_state[2]) == 0.0 and int(solution.solver_state[3]) == 2 * solution.stats["num_steps"]


def test_the_chebyshev_switch_reaches_a_stiff_tail_in_fewer_steps_and_as_accurately():
    # Sensing from a small init into loss < 1e-10, a tail where Tsit5 is held by stability (74,657 steps measured;
    # the Chebyshev switch 1314). The run switches, takes under a tenth of Tsit5's steps, and ends within 100 rtol
    # of an independent stiff reference: the extrapolation (order 8) at rtol 1e-12, at the same final time.
    flow = flows.Flow(flows.sensing(n=8, m=24, rank=2, seed=0), flows.Symmetric())
    state0 = flow.init(scale=1e-3)
    options = dict(t1=1e8, ts=np.array([0.0]), stop_loss=1e-10)
    chebyshev_run = flows.solve(flow, state0, solver=flows.Tsit5ThenChebyshev(), **options)
    assert chebyshev_run.stats["switched"] and chebyshev_run.stats["stages"] > 0, chebyshev_run.stats
    assert chebyshev_run.loss[-1] < 1e-10 and chebyshev_run.config["solver"] == "Tsit5ThenChebyshev"
    explicit = flows.solve(flow, state0, solver=diffrax.Tsit5(), **options)
    assert chebyshev_run.stats["num_steps"] < explicit.stats["num_steps"] / 10, (chebyshev_run.stats, explicit.stats)
    t_final = chebyshev_run.ts[-1]
    reference = flows.solve(
        flow, state0, t1=t_final, ts=np.array([0.0, t_final]), rtol=1e-12, solver=flows.LinearlyImplicitExtrapolation()
    )
    error = np.linalg.norm(chebyshev_run.W[-1] - reference.W[-1]) / np.linalg.norm(reference.W[-1])
    assert error <= 100 * 1e-8, error


def test_the_chebyshev_switch_integrates_a_penalised_flow():
    # No linearisation needed: a nuclear-penalised deep flow (its Hessian is beyond Gauss-Newton, so the
    # extrapolation refuses it), at the saved times within 100 rtol of Dopri8 at rtol 1e-12. Order 2 with an error
    # estimate of the solution it returns: the error grows with the steps taken (measured 4.2e-11 at t = 400, the switch
    # at t = 254; 4.4e-6 at t = 1000 after 2643 steps, where Tsit5 keeps 4.8e-9).
    problem = flows.completion(n=6, m=20, rank=2, seed=0, symmetric=False)
    flow = flows.Flow(problem, flows.Deep(depth=3), penalty=flows.Nuclear(), strength=1e-3)
    state0 = flow.init(scale=1e-2, kind="gaussian", seed=1)
    ts = np.array([0.0, 100.0, 300.0, 400.0])
    traj = flows.solve(flow, state0, t1=400.0, ts=ts, solver=flows.solver_by_name("switching-chebyshev"))
    assert traj.stats["saved_times"] == "landed" and traj.stats["switched"] and traj.stats["t_switch"] < 300.0
    reference = flows.solve(flow, state0, t1=400.0, ts=ts, rtol=1e-12, solver=flows.solver_by_name("dopri8"))
    error = np.linalg.norm(traj.W - reference.W, axis=(1, 2)) / np.linalg.norm(reference.W, axis=(1, 2))
    assert error.max() <= 100 * 1e-8, error
