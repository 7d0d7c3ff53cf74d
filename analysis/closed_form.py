r"""Exact solutions of flows, to check the integrator against.

* `direct_flow`: the direct flow $W' = -\mathcal{A}^*(r)$, solved in the eigenbasis of the Gram matrix.
* `CommutingReduced` / `commuting_flow`: the symmetric flow $U' = -(S + S^T) U$ on commuting measurements,
  collapsed to an m-dimensional ODE.
* `riccati`: the symmetric flow on a fully observed symmetric target H, in closed form.
* `aligned_target`, `aligned_balanced_factors`, `balanced_singular_value` / `aligned_balanced_flow`: a depth-N
  product from a balanced start aligned with a fully observed target, each singular value by one quadrature.
* `trajectory_difference`: how far a flow's trajectory is from one of these, over all saved times.
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float
from scipy import integrate, optimize

import flows
from flows._validate import check_nonnegative, check_positive, check_positive_int

from ._bases import AbstractFromMatrix, checked_matrix


def direct_flow(problem: flows.AbstractProblem, W0: Float[Array, "n1 n2"], ts) -> Float[Array, "T n1 n2"]:
    r"""The direct flow $W' = -\mathcal{A}^*(r)$ in closed form.

    The residual obeys $r' = -G r$ with $G_{ij} = \langle A_i, A_j \rangle$, so with $G = V \Lambda V^T$,
    $W(t) = W_0 - \mathcal{A}^*\big(V \varphi_t(\Lambda) V^T r_0\big)$, $\varphi_t(g) = (1 - e^{-g t}) / g$
    (= t at g = 0; expm1 keeps it accurate for small g t).
    """
    ts = np.asarray(ts, dtype=np.float64)
    W0 = jnp.asarray(W0)
    g, V = jnp.linalg.eigh(problem.gram())
    # Eigenvalues at round-off level are zeros of G: their residual component never moves.
    g = jnp.where(g > g.max() * problem.m * jnp.finfo(g.dtype).eps, g, 0.0)
    coeffs = V.T @ problem.residual(W0)

    def at(t):
        phi = jnp.where(g > 0, -jnp.expm1(-g * t) / jnp.where(g > 0, g, 1.0), t)
        return W0 - problem.adjoint(V @ (phi * coeffs))

    return jax.vmap(at)(jnp.asarray(ts))


class CommutingReduced(AbstractFromMatrix):
    r"""The symmetric flow on commuting measurements, reduced to $s(t) = \int_0^t r(\tau)\,d\tau \in \mathbb{R}^m$.

    With $A_i = Q \operatorname{diag}(d_i) Q^T$ every $S(t) = \mathcal{A}^*(r(t))$ is diagonal in Q, so the
    $S(t)$ commute and $U' = -(S + S^T) U = -2 S U$ integrates to $U(t) = E(t) U_0$ with
    $E(t) = \exp(-2 \sum_i s_i(t) A_i) = Q \operatorname{diag}(e^{-2 D^T s}) Q^T$ ($D$ = `spectra`, m x n).
    Then $W(t) = E W_0 E$ and, with $\hat W_0 = Q^T W_0 Q$,

        $s_i' = r_i = \langle A_i, E W_0 E \rangle - y_i = \sum_k d_{ik}\, e^{-4 (D^T s)_k}\, (\hat W_0)_{kk} - y_i$,

    an m-dimensional ODE (the exponential is taken in the common eigenbasis, never as a dense expm).
    Only the diagonal of $\hat W_0$ drives s; the whole of it enters the product. The state is s, with
    s(0) = 0; `W0` is fixed at construction.
    """

    problem: flows.CommutingProblem
    rotated0: Float[Array, "n n"]

    def __init__(self, problem: flows.CommutingProblem, W0: Float[Array, "n n"]):
        if not isinstance(problem, flows.CommutingProblem):
            raise ValueError(f"problem must be a CommutingProblem; got {type(problem).__name__}")
        W0 = checked_matrix("W0", W0, problem.shape)
        self.problem = problem
        self.rotated0 = problem.basis.T @ jnp.asarray(W0) @ problem.basis

    def start(self):
        """s(0) = 0 (the initial matrix is the constructor's W0)."""
        return jnp.zeros(self.problem.m)

    def _exponent(self, s):
        return -2.0 * (s @ self.problem.spectra)

    def product(self, s):
        e = jnp.exp(self._exponent(s))
        Q = self.problem.basis
        return Q @ (e[:, None] * self.rotated0 * e[None, :]) @ Q.T

    def vector_field(self, t, s):
        return self.problem.spectra @ (jnp.exp(2.0 * self._exponent(s)) * jnp.diagonal(self.rotated0)) - self.problem.y

    def describe(self):
        return {"flow": "CommutingReduced"}


def commuting_flow(
    problem: flows.CommutingProblem, U0: Float[Array, "n k"], t1: float, ts=None, **solve_options
) -> flows.Trajectory:
    r"""The symmetric flow from $U_0$ on commuting measurements, via the reduced ODE of `CommutingReduced`.

    `solve_options` go to `flows.solve` (rtol, atol, solver, stop_loss, ...). The trajectory's `states`
    are s(t); its `W` are $E(t) U_0 U_0^T E(t)$.
    """
    U0 = jnp.asarray(U0)
    reduced = CommutingReduced(problem, U0 @ U0.T)
    return flows.solve(reduced, reduced.init(), t1=t1, ts=ts, **solve_options)


def fully_observed(H: Float[Array, "n n"]) -> flows.EntryProblem:
    r"""Every entry of a symmetric H observed: $L(W) = \tfrac12 \|W - H\|_F^2$, $\mathcal{A}^*(r) = W - H$."""
    H = np.asarray(H, dtype=np.float64)
    if H.ndim != 2 or H.shape[0] != H.shape[1] or not np.allclose(H, H.T):
        raise ValueError(f"H must be a square symmetric matrix; got shape {H.shape}")
    rows, cols = np.divmod(np.arange(H.size), H.shape[1])
    return flows.Problem.from_entries(H.shape, rows, cols, H[rows, cols])


def riccati(H: Float[Array, "n n"], U0: Float[Array, "n n"], ts) -> Float[Array, "T n n"]:
    r"""The symmetric flow on a fully observed symmetric H, in closed form, from an invertible $U_0$.

    With $L = \tfrac12 \|U U^T - H\|_F^2$ the flow is $U' = -2 (U U^T - H) U$, i.e. the matrix Riccati
    equation $W' = 2 H W + 2 W H - 4 W^2$. With $X(t) = e^{2 t H} U_0$ and $K(t) = I + U_0^T A_t U_0$,
    $A_t = 4 \int_0^t e^{4 s H} ds$, one has $K' = 4 X^T X$, so $W = X K^{-1} X^T$ satisfies
    $W' = 2HW + 2WH - X K^{-1} K' K^{-1} X^T = 2HW + 2WH - 4W^2$:

        $W(t) = e^{2tH} U_0 \big(I + U_0^T A_t U_0\big)^{-1} U_0^T e^{2tH}$.

    (The form with $e^{tH}$ and $A_t = 2\int_0^t e^{2sH} ds$ is this formula at time t/2, i.e. the
    loss $\tfrac14\|UU^T - H\|^2$.) Evaluated as written, K spans $e^{4 t (h_\max - h_\min)}$ and the solve
    loses every digit within a few time units. For invertible $U_0$ the inverse $Y = W^{-1}$ obeys the
    linear equation $Y' = 4 I - 2 (H Y + Y H)$; in the eigenbasis $H = V \operatorname{diag}(h) V^T$,

        $\hat Y_{ij}(t) = e^{-2 (h_i + h_j) t} \hat Y_{ij}(0) + \delta_{ij} (1 - e^{-4 h_i t}) / h_i$

    ($= 4t$ at $h_i = 0$), which is the formula above inverted. $\hat Y$ is graded (huge along $h < 0$, where
    W decays), so it is inverted after scaling it to unit diagonal, which keeps W accurate to a few ulps
    relative to its own scale in each eigen-direction.
    """
    H = jnp.asarray(H)
    U0 = jnp.asarray(U0)
    if U0.shape != H.shape:
        raise ValueError(f"U0 must be square of the shape of H, {H.shape}, and invertible; got {U0.shape}")
    h, V = jnp.linalg.eigh(H)
    Z_inv = jnp.linalg.inv(V.T @ U0)
    Y0 = Z_inv.T @ Z_inv

    def at(t):
        decay = jnp.exp(-2.0 * t * h)
        source = jnp.where(h != 0, -jnp.expm1(-4.0 * t * h) / jnp.where(h != 0, h, 1.0), 4.0 * t)
        Y = decay[:, None] * Y0 * decay[None, :] + jnp.diag(source)
        d = 1.0 / jnp.sqrt(jnp.diagonal(Y))
        W_hat = d[:, None] * jnp.linalg.inv(d[:, None] * Y * d[None, :]) * d[None, :]
        return V @ W_hat @ V.T

    return jax.vmap(at)(jnp.asarray(np.asarray(ts, dtype=np.float64)))


def aligned_target(y, rng: np.random.Generator, symmetric: bool = False):
    r"""(problem, U, V): every entry of $Y = U \operatorname{diag}(y) V^T$ observed, U and V random orthogonal from
    `rng` (two draws; V = U where `symmetric`, the second draw made all the same)."""
    y = np.asarray(y, dtype=np.float64)
    if y.ndim != 1 or y.size == 0 or not np.all(np.isfinite(y) & (y > 0)):
        raise ValueError(f"y must be a vector of positive singular values; got {y!r}")
    n = y.size
    U, V = (np.linalg.qr(rng.standard_normal((n, n)))[0] for _ in range(2))
    V = U if symmetric else V
    rows, cols = np.divmod(np.arange(n * n), n)
    return flows.Problem.from_entries((n, n), rows, cols, ((U * y) @ V.T)[rows, cols]), U, V


def aligned_balanced_factors(U, V, s0, depth: int, rng: np.random.Generator) -> tuple[Float[Array, "n n"], ...]:
    r"""$W_j(0) = Q_j \operatorname{diag}(s_0^{1/N}) Q_{j-1}^T$, j = 1..N, with $Q_0 = V$, $Q_N = U$ (orthogonal n x n)
    and $Q_1 .. Q_{N-1}$ random orthogonal (from `rng`): balanced ($W_{j+1}^T W_{j+1} = W_j W_j^T$), with product
    $U \operatorname{diag}(s_0) V^T$, aligned with a target $U \operatorname{diag}(y) V^T$."""
    depth = check_positive_int("depth", depth)
    U, V, s0 = (np.asarray(a, dtype=np.float64) for a in (U, V, s0))
    n = s0.size
    if s0.shape != (n,) or not np.all(np.isfinite(s0) & (s0 > 0)):
        raise ValueError(f"s0 must be a vector of positive singular values; got {s0!r}")
    for name, Q in (("U", U), ("V", V)):
        if Q.shape != (n, n) or not np.allclose(Q.T @ Q, np.eye(n), rtol=0.0, atol=1e-10):
            raise ValueError(f"{name} must be an orthogonal {n} x {n} matrix (s0 has {n} values); got shape {Q.shape}")
    Q = [V] + [np.linalg.qr(rng.standard_normal((n, n)))[0] for _ in range(depth - 1)] + [U]
    return tuple(jnp.asarray((Q[j + 1] * s0 ** (1.0 / depth)) @ Q[j].T) for j in range(depth))


def balanced_singular_value(t: float, s0: float, y: float, depth: int, speed: float = 1.0) -> float:
    r"""$\sigma(t)$ of $\sigma' = -c N \sigma^{2 - 2/N} (\sigma - y)$, $\sigma(0) = s_0 \in (0, y)$: a singular value of
    the depth-N product on $L = \tfrac12 \|W - Y\|_F^2$ from a balanced start aligned with Y (Arora, Cohen, Hu and
    Luo 2019), c = `speed` (1; 2 for $W = U U^T$, whose field is twice as fast; N = 1: the direct flow).

    In the logit $x = \log(\sigma / (y - \sigma))$, $dt = \sigma^{2/N - 1} / (c N y)\, dx$: t(x) is one quadrature
    (to 2e-14 relative) and x(t) its inverse (Brent, to 1e-15), independent of every ODE solver."""
    if not 0 < s0 < y < np.inf:
        raise ValueError(f"the start must lie in (0, y), y finite; got s0 = {s0}, y = {y}")
    depth, speed, t = check_positive_int("depth", depth), check_positive("speed", speed), check_nonnegative("t", t)
    x0 = np.log(s0 / (y - s0))

    def time_to(x):
        def rate(z):
            return (y / (1.0 + np.exp(-z))) ** (2.0 / depth - 1.0) / (speed * depth * y)

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", integrate.IntegrationWarning)
            return integrate.quad(rate, x0, x, epsabs=0.0, epsrel=2e-14, limit=500)[0]

    if t == 0:
        return s0
    hi = x0 + 1.0
    while time_to(hi) < t:
        hi = x0 + 2.0 * (hi - x0)
    x = optimize.brentq(lambda x: time_to(x) - t, x0, hi, xtol=1e-15, rtol=1e-15, maxiter=500)
    return y / (1.0 + np.exp(-x))


def aligned_balanced_flow(U, y, V, s0, depth: int, ts, speed: float = 1.0) -> np.ndarray:
    r"""$W(t) = U \operatorname{diag}(\sigma(t)) V^T$ at `ts` for the target $Y = U \operatorname{diag}(y) V^T$ and
    the aligned balanced start of singular values `s0` (`balanced_singular_value` for each)."""
    U, V, y, s0 = (np.asarray(a, dtype=np.float64) for a in (U, V, y, s0))
    if y.ndim != 1 or s0.shape != y.shape or U.shape[1:] != y.shape or V.shape[1:] != y.shape:
        raise ValueError(
            f"y and s0 must be vectors of one length r, U and V have r columns; got y {y.shape}, s0 {s0.shape}, "
            f"U {U.shape}, V {V.shape}"
        )
    return np.stack([(U * [balanced_singular_value(t, s, yk, depth, speed) for s, yk in zip(s0, y)]) @ V.T for t in ts])


def trajectory_difference(W: Float[Array, "T n1 n2"], reference: Float[Array, "T n1 n2"]) -> float:
    r"""$\max_t \|W(t) - W_\text{ref}(t)\|_F / \|W_\text{ref}(t)\|_F$ over the saved times."""
    W = np.asarray(W)
    reference = np.asarray(reference)
    if W.shape != reference.shape:
        raise ValueError(f"trajectories differ in shape: {W.shape} vs {reference.shape}")
    diff = np.linalg.norm(W - reference, axis=(-2, -1))
    return float(np.max(diff / np.linalg.norm(reference, axis=(-2, -1))))
