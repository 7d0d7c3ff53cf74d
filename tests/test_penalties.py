"""Penalties on the end-to-end matrix: closed-form gradients, their derivatives, and the ratio flow."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flows
from flows._penalties import smoothed_nuclear, smoothed_nuclear_grad

SHAPES = [(5, 5), (6, 4), (3, 7)]
PENALTIES = {
    "nuclear": flows.Nuclear(eps=1e-2),
    "ratio": flows.Ratio(eps=1e-2, delta=1e-2),
    "ratio_scale_invariant": flows.Ratio(eps=1e-2, delta=0.0),
    "frobenius": flows.Frobenius(),
}


def _random(shape, seed):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape))


def _relative(a, b):
    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


@eqx.filter_jit
def _probe(penalty, W, E, h):
    """Everything the tests compare, in one compiled call per penalty type and shape.

    fd_*: central differences along E with step h (truncation O(h^2), rounding O(1e-16 / h)).
    """
    grad = penalty.grad(W)
    return {
        "value": penalty(W),
        "grad": grad,
        "directional": jnp.vdot(grad, E),
        "fd_value": (penalty(W + h * E) - penalty(W - h * E)) / (2 * h),
        "jvp": jax.jvp(penalty.grad, (W,), (E,))[1],
        "fd_grad": (penalty.grad(W + h * E) - penalty.grad(W - h * E)) / (2 * h),
        "hessian": jax.hessian(penalty)(W),
    }


def _svd_gradient(name, W):
    """The gradient from numpy's SVD: U diag(s / sqrt(s^2 + eps^2)) V^T for the nuclear norm, and the chain
    rule through Z = W / sqrt(|W|^2 + delta^2) for the ratio (independent of the Gram-matrix eigh)."""
    W = np.asarray(W)
    if name == "frobenius":
        return W

    def nuclear(X, eps):
        U, s, Vt = np.linalg.svd(X, full_matrices=False)
        return (U * (s / np.sqrt(s**2 + eps**2))) @ Vt

    penalty = PENALTIES[name]
    if name == "nuclear":
        return nuclear(W, float(penalty.eps))
    scale = np.sqrt(np.sum(W**2) + float(penalty.delta) ** 2)
    Z = W / scale
    G = nuclear(Z, float(penalty.eps))
    return (G - np.sum(G * Z) * Z) / scale


def _check_hessian_symmetric(hessian):
    # A wrong custom JVP rule for the gradient (e.g. a sign or a missing transpose in Daleckii-Krein) makes
    # forward-over-reverse asymmetric; the exact Hessian is symmetric.
    H = np.asarray(hessian).reshape(int(np.sqrt(hessian.size)), -1)
    np.testing.assert_allclose(H, H.T, rtol=1e-9, atol=1e-9 * np.abs(H).max())


@pytest.mark.parametrize("name", PENALTIES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("seed", [0, 1])
def test_gradient_and_its_jvp_match_finite_differences(name, shape, seed):
    # At random points of unit scale h = 1e-5 puts both FD errors near 1e-10, far below 1e-6.
    out = _probe(PENALTIES[name], _random(shape, seed), _random(shape, seed + 100), 1e-5)
    assert abs(float(out["directional"] - out["fd_value"])) <= 1e-6 * abs(float(out["fd_value"]))
    assert _relative(out["jvp"], out["fd_grad"]) <= 1e-6
    # The closed-form gradient (eigh of the Gram matrix) against numpy's SVD; the Hessian is symmetric.
    W = _random(shape, seed)
    np.testing.assert_allclose(out["grad"], _svd_gradient(name, W), rtol=1e-10, atol=1e-12)
    _check_hessian_symmetric(out["hessian"])


def test_nuclear_eps_derivatives_match_finite_differences():
    W, eps, h = _random((5, 4), 3), jnp.asarray(0.3), 1e-5
    d_value = jax.grad(smoothed_nuclear, argnums=1)(W, eps)
    fd_value = (smoothed_nuclear(W, eps + h) - smoothed_nuclear(W, eps - h)) / (2 * h)
    assert float(d_value) == pytest.approx(float(fd_value), rel=1e-6)
    d_grad = jax.jacfwd(smoothed_nuclear_grad, argnums=1)(W, eps)
    assert _relative(d_grad, (smoothed_nuclear_grad(W, eps + h) - smoothed_nuclear_grad(W, eps - h)) / (2 * h)) <= 1e-6


SINGULAR_POINTS = {
    "alpha_I": 0.3 * jnp.eye(5),
    "tiny_alpha_I": 1e-6 * jnp.eye(5),
    "rank_deficient": jnp.diag(jnp.array([1.0, 1.0, 0.5, 0.0, 0.0])),
    "rank_one_wide": jnp.outer(jnp.arange(1.0, 4.0), jnp.ones(6)),
    "zero": jnp.zeros((5, 5)),
    "zero_wide": jnp.zeros((3, 6)),
}


@pytest.mark.parametrize("name", ["nuclear", "ratio", "frobenius"])
@pytest.mark.parametrize("point", SINGULAR_POINTS)
def test_finite_with_finite_derivatives_at_repeated_and_zero_singular_values(name, point):
    W = SINGULAR_POINTS[point]
    # h |E| well below the smoothing scale (eps for Nuclear, eps * delta = 1e-4 for Ratio at W = 0):
    # truncation ~ (h |E| / scale)^2 ~ 1e-9, rounding ~ 1e-16 / h ~ 1e-7 of an O(1) gradient.
    out = _probe(PENALTIES[name], W, _random(W.shape, 7), 1e-9)
    for value in out.values():
        assert np.all(np.isfinite(value))
    # Not merely finite: right. The smoothed penalties are analytic here, so central differences apply.
    assert _relative(out["jvp"], out["fd_grad"]) <= 1e-6
    _check_hessian_symmetric(out["hessian"])


def test_nuclear_closed_forms():
    eps, alpha = 1e-2, 0.3
    # At alpha * I: gradient alpha / sqrt(alpha^2 + eps^2) I, value n (sqrt(alpha^2 + eps^2) - eps).
    W = alpha * jnp.eye(4)
    np.testing.assert_allclose(flows.Nuclear(eps).grad(W), alpha / np.hypot(alpha, eps) * np.eye(4), rtol=1e-14)
    assert float(flows.Nuclear(eps)(W)) == pytest.approx(4 * (np.hypot(alpha, eps) - eps), rel=1e-14)
    # Against numpy's SVD at a random point: 0 <= ||W||_* - R <= rank * eps and the U V^T limit.
    W = _random((6, 4), 5)
    U, s, Vt = np.linalg.svd(np.asarray(W), full_matrices=False)
    gap = s.sum() - float(flows.Nuclear(eps)(W))
    assert 0 <= gap <= 4 * eps
    np.testing.assert_allclose(flows.Nuclear(1e-9).grad(W), U @ Vt, atol=1e-12)


def test_ratio_matches_the_exact_ratio_and_is_scale_invariant():
    W = _random((6, 4), 6)
    U, s, Vt = np.linalg.svd(np.asarray(W), full_matrices=False)
    F = np.linalg.norm(s)
    exact = flows.Ratio(eps=1e-10, delta=0.0)
    assert float(exact(W)) == pytest.approx(s.sum() / F, rel=1e-9)
    np.testing.assert_allclose(exact.grad(W), U @ Vt / F - s.sum() * np.asarray(W) / F**3, atol=1e-9)
    ratio = flows.Ratio(eps=1e-2, delta=0.0)
    for c in (1e-3, 7.0, 1e4):
        assert float(ratio(c * W)) == pytest.approx(float(ratio(W)), rel=1e-13)
        np.testing.assert_allclose(ratio.grad(c * W), ratio.grad(W) / c, rtol=1e-11, atol=1e-15 / c)
    assert abs(float(jnp.vdot(ratio.grad(W), W))) <= 1e-14 * float(jnp.linalg.norm(ratio.grad(W)) * F)


@pytest.mark.parametrize(
    "make",
    [
        lambda: flows.Nuclear(eps=0.0),
        lambda: flows.Nuclear(eps=-1.0),
        lambda: flows.Ratio(eps=0.0),
        lambda: flows.Ratio(delta=-1e-3),
        lambda: flows.Ratio(delta=float("nan")),
        lambda: flows.Ratio(delta=None),
        lambda: flows.Ratio(delta="abc"),
    ],
)
def test_bad_parameters_are_refused(make, unchecked_types):
    with pytest.raises(ValueError, match="eps|delta"):
        make()


def test_pure_ratio_penalty_direct_flow_conserves_the_frobenius_norm():
    """With no data (A = 0), W' = -grad R(W) and <grad R, W> = 0: ||W||_F stays put while R decreases."""
    n = 5
    no_data = flows.Problem.from_matrices(np.zeros((1, n, n)), np.zeros(1))
    flow = flows.Flow(no_data, flows.Direct(), penalty=flows.Ratio(eps=1e-2, delta=0.0), strength=1.0)
    traj = flows.solve(flow, _random((n, n), 11), t1=0.5, ts=np.linspace(0, 0.5, 11), rtol=1e-11, atol=1e-13)
    norms = np.linalg.norm(traj.W, axis=(1, 2))
    # Tsit5's local errors at rtol = 1e-11 are not orthogonal to W; over ~100 steps they add to < 1e-9.
    assert np.max(np.abs(norms / norms[0] - 1)) <= 1e-8
    R = np.array([float(flow.penalty(W)) for W in traj.W])
    assert np.all(np.diff(R) < 0) and R[-1] < 0.99 * R[0]


def test_the_unsmoothed_ratio_is_refused_where_it_starts_undefined():
    problem = flows.sensing(n=3, m=4, rank=1, seed=0)
    flow = flows.Flow(problem, flows.Direct(), penalty=flows.Ratio(delta=0.0), strength=1.0)
    for run in (
        lambda: flows.solve(flow, flow.init(kind="zero"), t1=1.0),
        lambda: flows.descend(flow, flow.init(kind="zero"), step=0.1, t1=1.0),
    ):
        with pytest.raises(ValueError, match="undefined at W = 0"):
            run()
    hoyer = flows.Flow(problem, flows.Direct(), penalty=flows.HoyerSquare(delta=0.0), strength=1.0)
    with pytest.raises(ValueError, match="undefined at W = 0"):
        hoyer.check_state(hoyer.init(kind="zero"))
    flow.check_state(flow.init(scale=0.1))  # defined away from 0
    smoothed = flows.Flow(problem, flows.Direct(), penalty=flows.Ratio(delta=1e-3), strength=1.0)
    smoothed.check_state(smoothed.init(kind="zero"))
