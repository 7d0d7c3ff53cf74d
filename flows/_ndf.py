r"""A matrix-free implicit multistep solver for the stiff tails of gradient flows: the numerical differentiation
formulas (NDF) of orders 1 to 5, with Newton-Krylov corrector solves.

The method is Shampine & Reichelt's (The MATLAB ODE Suite, 1997; MATLAB's ode15s) in their fixed-leading-coefficient
form. The past solution is held as the array of scaled backward differences $D_0 = y_n$, $D_j = \nabla^j y_n$ at the
current step size h. With $\gamma_j = \sum_{i \le j} 1/i$ and the NDF constants $\kappa_k$ (0 for BDF), a step of
order k predicts $y^{(0)} = \sum_{j \le k} D_j$ and solves for the correction $d = y_{n+1} - y^{(0)}$:

$$(1 - \kappa_k)\gamma_k\, d - h F(y^{(0)} + d) + \sum_{j=1}^{k} \gamma_j D_j = 0,$$

by Newton iterations $(I - c J)\, \delta = c F(y) - \psi - d$ with $c = h / ((1 - \kappa_k)\gamma_k)$ and
$\psi = \sum_{j=1}^k \gamma_j D_j / ((1 - \kappa_k)\gamma_k)$. J is the field's Jacobian at the predictor, applied
by forward difference quotients $(F(y^{(0)} + \sigma v) - F(y^{(0)})) / \sigma$ (one field evaluation each, as
CVODE's Krylov solvers do; exact Jacobian-vector products cost twice as much on these flows and gave nothing
measurable), and each linear solve is conjugate gradients (`conjugate_gradients`): for a gradient flow
$J = -\nabla^2 L$ is symmetric and, in a convergence tail, $I - cJ \succeq I$. The local error is
$(\kappa_k \gamma_k + 1/(k+1))\, d$.
A step-size change rescales $D_1..D_k$ by their $(R U)^T$ matrices and the last correction $D_{k+1}$ by
$\rho^{k+1}$ (`rescaling`), so the step may change at every step, as Diffrax's step-size controllers ask.

The order starts at 1 and, after k + 1 steps at order k, moves to whichever of k - 1, k, k + 1 has the smallest
error estimate for the step just taken ($\|C_{k-1} D_k\|$, $\|C_k d\|$, $\|C_{k+1} \nabla^{k+2} y_{n+1}\|$), each
raised to $1/(j+1)$: the order that allows the longest next step when the step just taken was at the tolerance.
Newton and Krylov tolerances are relative, so the solver needs no tolerance of its own: Newton stops when its
update, times its contraction rate, is below `newton_tolerance` of the correction d, and conjugate gradients when
the residual is below `krylov_tolerance` of the update they have built (2-norms over the whole state): since
$I - cJ \succeq I$ the update's error is at most the residual, so each update is within that fraction of itself. A
residual relative to the right-hand side would bound the error only by a fraction of the right-hand side, which in a
stiff step is far larger than the update (its stiff components are divided by $1 + c|\lambda|$): errors in the slow
components would pass, and over a long tail they move conserved quantities (benchmarks/README.md). With the residual
relative to the update, 0.2 (the default) took the deep completion tail to its stop in 0.90x, 0.93x and 0.98x the
time of 0.05 at rtol 1e-7, 1e-8 and 1e-9, with fewer Krylov products and a W as close to the exact flow or closer;
0.4 lost accuracy at rtol 1e-7 and 1e-8 (benchmarks/README.md). The rate is
measured from the second iteration on; a step's first iteration is judged by the rate carried from earlier steps,
which is measured again (a second iteration forced) every 20 steps and after an order change, as CVODE re-measures
its own at least every 20 steps. A corrector that does not converge in `newton_iterations` (or diverges, or
meets a non-finite value) rejects the step with an infinite error, so the controller shrinks it.

The order of the error estimate the controller sees is fixed (`error_order`, 5: that of order 4, where these tails
are crossed); the order changes from step to step inside the solver.

It suits flows whose Jacobian is symmetric with a non-positive spectrum (gradient flows of the data loss, penalised
or not) in their stiff tails, where steps grow to hundreds of the explicit stability limit while the state barely
moves. Measured on the deep completion tail: benchmarks/README.md (`vs_cvode.py`). Over very long tails where the
state's norm grows without bound (2 x 2 completion, m = 3, balanced depth 3, to t ~ 2e9 at rtol 1e-10) it keeps
det W's sign, but its balancedness drifts by 4-7e-8, above the faithfulness report's 100 rtol (which warns), where
the extrapolation switch keeps 5-8e-9 (benchmarks/README.md, `switch_state.py`'s section).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, Float, Int

from ._solver import AbstractFlowSolver, Hermite

_MAX_ORDER = 5
_ROWS = _MAX_ORDER + 3  # D_0 .. D_{k+2} at the highest order
_REMEASURE = 20  # steps after which the Newton contraction rate carried between steps is measured again
# Shampine & Reichelt's NDF constants kappa_k (k = 1..5; index 0 unused); kappa_5 = 0 (order 5 is BDF5).
_KAPPA = np.array([0.0, -0.1850, -1.0 / 9.0, -0.0823, -0.0415, 0.0])
_GAMMA = np.concatenate([[0.0], np.cumsum(1.0 / np.arange(1, _MAX_ORDER + 1))])
_ALPHA = (1.0 - _KAPPA) * _GAMMA
# Error constants C_k = kappa_k gamma_k + 1/(k+1), k = 0..5, and C_6 = 1/7 for the order-6 estimate order 5 never uses.
_ERROR = np.append(_KAPPA * _GAMMA + 1.0 / np.arange(1, _MAX_ORDER + 2), 1.0 / (_MAX_ORDER + 2))


def rescaling(order: Int[Array, ""], ratio: Float[Array, ""]) -> Float[Array, "rows rows"]:
    r"""The matrix taking the differences $D_0..D_{k+2}$ at step h to those at step ratio h: $(R(\rho) U)^T$ on
    $D_1..D_k$ with $R(\rho)_{ij} = \prod_{l=1}^{i} (l - 1 - \rho j) / l$ and $U = R(1)$ (i, j = 1..k) (Shampine &
    Reichelt, section 2.3); $\rho^{k+1}$ on $D_{k+1}$, the last correction, whose leading term is $h^{k+1} y^{(k+1)}$
    (the order-(k+1) error estimate differences the next correction against it); the identity on the other rows."""
    i = np.arange(1, _MAX_ORDER + 1)[:, None]
    j = np.arange(1, _MAX_ORDER + 1)[None, :]
    block = (i <= order) & (j <= order)

    def r(rho):
        return jnp.where(block, jnp.cumprod((i - 1 - rho * j) / i, axis=0), 0.0)

    change = (r(ratio) @ r(jnp.ones_like(ratio))).T
    change = jnp.where(block, change, np.eye(_MAX_ORDER))
    matrix = jnp.eye(_ROWS, dtype=change.dtype).at[1 : _MAX_ORDER + 1, 1 : _MAX_ORDER + 1].set(change)
    return matrix.at[order + 1, order + 1].set(ratio ** (order + 1))


def update(order: Int[Array, ""]) -> Float[Array, "rows rows"]:
    r"""The matrix B of the difference array's update after a step of order k with correction d:
    $D' = B D + \mathbb{1}_{j \le k+2}\, d$, that is $D'_j = \sum_{l=j}^{k} D_l + d$ ($j \le k$), $D'_{k+1} = d$,
    $D'_{k+2} = d - D_{k+1}$, the rows beyond unchanged."""
    i = np.arange(_ROWS)[:, None]
    j = np.arange(_ROWS)[None, :]
    summed = (i <= order) & (j >= i) & (j <= order)
    return jnp.where(
        i <= order, summed, jnp.where(i == order + 2, -1.0 * (j == order + 1), jnp.where(i == order + 1, 0.0, i == j))
    ).astype(float)


def next_order(order: Int[Array, ""], held: Int[Array, ""], estimates: Float[Array, "3"]) -> Int[Array, ""]:
    r"""The order of the next step: after `held` >= k + 1 steps at order k, the one of k - 1, k, k + 1 whose error
    estimate $E_j$ for the step just taken (`estimates`, inf where an order is out of range) allows the longest next
    step, $\max_j (E_j / E_k)^{-1/(j+1)}$: each order's step scaled so that its estimate meets what order k's did.
    Only the ratios to $E_k$ matter, so the choice does not depend on the tolerance. Before k + 1 steps, or where
    $E_k$ is not finite, the order stays."""
    relative = estimates / jnp.where(estimates[1] > 0, estimates[1], 1.0)
    exponents = 1.0 / (order + jnp.arange(3)).astype(estimates.dtype)
    factors = jnp.where(jnp.isfinite(relative), jnp.where(relative > 0, relative, 1e-300) ** -exponents, 0.0)
    change = (held >= order + 1) & jnp.isfinite(estimates[1])
    return jnp.where(change, order + jnp.argmax(factors) - 1, order)


def conjugate_gradients(
    matvec: Callable[[Float[Array, " p"]], Float[Array, " p"]], b: Float[Array, " p"], relative, max_steps: int
) -> tuple[Float[Array, " p"], Int[Array, ""]]:
    r"""Conjugate gradients on a symmetric positive definite $A x = b$ from x = 0, until $\|b - A x\|_2 \le$
    `relative` $\|x\|_2$ (x the current iterate; b = 0 gives x = 0 at once) or `max_steps` iterations; the solution and
    the iterations (one product each). Where $A \succeq I$ the error is at most the residual, so the solution is then
    within `relative` of itself. NaN where a direction of non-positive curvature shows that A is not positive
    definite.

    Not lineax.CG: it tests convergence on elementwise scales of both the residual and the update at every
    iteration, which doubles an iteration's cost on these vectors (0.88 against 0.44 ms for five iterations on
    30,000 entries, a tenth of the deep completion tail's run); this test reuses the residual norm the iteration
    computes anyway, and one dot product of the iterate.
    """

    def iterating(carry):
        i, x, _, _, squared, curved = carry
        return (i < max_steps) & (squared > relative**2 * (x @ x)) & curved

    def iteration(carry):
        i, x, r, p, squared, _ = carry
        ap = matvec(p)
        curvature = p @ ap
        curved = (curvature > 0) & jnp.isfinite(curvature)
        step = squared / jnp.where(curved, curvature, 1.0)
        x = jnp.where(curved, x + step * p, jnp.nan)
        r = r - step * ap
        new_squared = r @ r
        return i + 1, x, r, r + (new_squared / squared) * p, new_squared, curved

    initial = (jnp.array(0), jnp.zeros_like(b), b, b, b @ b, jnp.array(True))
    iterations, x, *_ = jax.lax.while_loop(iterating, iteration, initial)
    return x, iterations


def _coefficient(table: np.ndarray, k) -> Float[Array, ""]:
    return jnp.asarray(table)[k]


class NDF(AbstractFlowSolver):
    r"""The variable-order numerical differentiation formulas, orders 1 to `max_order` (see the module docstring),
    matrix-free: Newton iterations with conjugate gradients on forward-difference Jacobian products.

    Its state: the slope F at the current point (first same as last with the switching solvers, which hand it
    over), the difference array (8 x the state's size), the step it is scaled to, the order, the steps taken at
    that order, the Newton contraction rate, and counts over the accepted steps.
    """

    max_order: int = eqx.field(static=True, default=_MAX_ORDER)
    newton_iterations: int = eqx.field(static=True, default=4)
    newton_tolerance: float = eqx.field(static=True, default=0.1)
    krylov_tolerance: float = eqx.field(static=True, default=0.2)
    max_krylov: int = eqx.field(static=True, default=50)

    term_structure = diffrax.ODETerm
    interpolation_cls = Hermite
    lands_save_times = True
    # The last correction's rescaling, the re-measured Newton rate and the Krylov residual relative to the update
    # change what its stored runs hold: their keys carry this revision (flows._keys).
    key_revision: ClassVar[int] = 2

    def __check_init__(self):
        if not 1 <= self.max_order <= _MAX_ORDER:
            raise ValueError(f"max_order must be 1 to {_MAX_ORDER}; got {self.max_order}")

    def order(self, terms):
        return self.max_order

    def error_order(self, terms):
        return min(self.max_order, 4) + 1

    def init(self, terms, t0, t1, y0, args):
        y, _ = ravel_pytree(y0)
        f0 = ravel_pytree(terms.vf(t0, y0, args))[0]
        zero = jnp.zeros((), y.dtype)
        # h = 0: no difference array yet; the first step builds it from y0 and f0 (order 1).
        counts = dict(newton=jnp.array(0), products=jnp.array(0), highest=jnp.array(0))
        one = jnp.ones((), y.dtype)
        # The Newton contraction rate and the steps since it was measured: stale from the start.
        newton = (one, jnp.array(_REMEASURE))
        return f0, jnp.zeros((_ROWS, y.size), y.dtype), zero, jnp.array(1), jnp.array(0), newton, counts

    def report(self, solver_state) -> dict:
        """Counts over the accepted steps (Diffrax keeps the state of accepted steps only): Newton iterations (a field
        evaluation each, the first at the predictor), Krylov (Jacobian) products (a field evaluation each), and the
        highest order used (None before a step)."""
        counts = solver_state[-1]
        highest = int(counts["highest"])
        return {
            "newton_iterations": int(counts["newton"]),
            "krylov_products": int(counts["products"]),
            "highest_order": highest if highest > 0 else None,
        }

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        f0, D, h_old, k, held, (rate, rate_age), counts = solver_state
        y0_flat, unravel = ravel_pytree(y0)
        dtype = y0_flat.dtype
        if made_jump is not False:
            f0 = jax.lax.cond(made_jump, lambda: ravel_pytree(terms.vf(t0, y0, args))[0], lambda: f0)
            h_old = jnp.where(made_jump, 0.0, h_old)
        h = t1 - t0
        rows = jnp.arange(_ROWS)

        def start():
            return jnp.zeros_like(D).at[0].set(y0_flat).at[1].set(h * f0), jnp.array(1), jnp.array(0)

        def rescale():
            return rescaling(k, jnp.asarray(h / h_old)).astype(dtype) @ D, k, held

        D, k, held = jax.lax.cond(h_old == 0, start, rescale)

        def vf(y):
            return ravel_pytree(terms.vf(t1, unravel(y), args))[0]

        alpha = _coefficient(_ALPHA, k)
        gamma = jnp.where((rows >= 1) & (rows <= k), jnp.asarray(np.append(_GAMMA, [0.0, 0.0]))[rows], 0.0)
        predicted, psi = jnp.stack([(rows <= k).astype(dtype), gamma / alpha]) @ D
        c = h / alpha
        # The carried rate is measured again (Newton's first test then fails, so a second iteration measures it)
        # every `_REMEASURE` steps and after an order change, as CVODE resets its rate at least every 20 steps. CVODE
        # also resets it where c moved by 30 %; under a controller that changes the step at every step that more than
        # doubled the deep completion tail's rejected steps (17 against 7) and cost its stiff phase a quarter more
        # (0.73 against 0.575 s; benchmarks/README.md).
        rate = jnp.where(rate_age >= _REMEASURE, 1.0, rate)
        f_predicted = vf(predicted)
        shift = jnp.sqrt(jnp.finfo(dtype).eps) * (1.0 + jnp.linalg.norm(predicted))

        def product(v):
            norm = jnp.linalg.norm(v)
            sigma = shift / jnp.where(norm > 0, norm, 1.0)
            return (vf(predicted + sigma * v) - f_predicted) / sigma

        def newton(carry):
            i, d, last, rate_, _, _, products = carry
            f = jax.lax.cond(i == 0, lambda: f_predicted, lambda: vf(predicted + d))
            b = c * f - psi - d
            residual = jnp.linalg.norm(b)
            delta, iterations = conjugate_gradients(
                lambda v: v - c * product(v), b, self.krylov_tolerance, self.max_krylov
            )
            size = jnp.linalg.norm(delta)
            # The contraction rate: measured from the second iteration on, carried from earlier steps before.
            rate_ = jnp.where(i > 0, jnp.maximum(0.3 * rate_, size / jnp.where(last > 0, last, 1.0)), rate_)
            d = d + delta
            # A non-finite field value leaves conjugate gradients at zero (their loop never starts), not NaN.
            failed = ~jnp.isfinite(size) | ~jnp.isfinite(residual) | ((i > 0) & (rate_ >= 1.0))
            converged = ~failed & (size * jnp.minimum(1.0, rate_) <= self.newton_tolerance * jnp.linalg.norm(d))
            return i + 1, d, size, rate_, converged, failed, products + iterations

        def iterating(carry):
            i, *_, converged, failed, _ = carry
            return (i < self.newton_iterations) & ~converged & ~failed

        zero = jnp.zeros((), dtype)
        initial = (
            jnp.array(0),
            jnp.zeros_like(predicted),
            zero,
            rate,
            jnp.array(False),
            jnp.array(False),
            jnp.array(0),
        )
        iterations, d, _, rate, converged, _, products = jax.lax.while_loop(iterating, newton, initial)
        rate_age = jnp.where(iterations > 1, 0, rate_age + 1)

        y1 = predicted + d
        error_k = _coefficient(_ERROR, k) * d
        converged = converged & jnp.all(jnp.isfinite(y1))
        # The differences at y_{n+1}, for an accepted step (Diffrax keeps the old state on rejection), in one pass
        # over D: D_j <- D_j + ... + D_k + d for j <= k, D_{k+1} <- d, D_{k+2} <- d - D_{k+1}.
        D = update(k).astype(dtype) @ D + (rows <= k + 2).astype(dtype)[:, None] * d[None, :]
        held = held + 1
        # The order for the next step, from the estimates of orders k - 1, k and k + 1 for the step just taken.
        candidates = jnp.stack(
            [
                jnp.where(k > 1, _coefficient(_ERROR, k - 1) * jnp.linalg.norm(D[k]), jnp.inf),
                jnp.linalg.norm(error_k),
                jnp.where(k < self.max_order, _coefficient(_ERROR, k + 1) * jnp.linalg.norm(D[k + 2]), jnp.inf),
            ]
        )
        new_k = next_order(k, held, candidates)
        held = jnp.where(new_k != k, 0, held)
        rate_age = jnp.where(new_k != k, _REMEASURE, rate_age)
        # h F(y_{n+1}) from the corrector equation: (1 - kappa) gamma_k (d + psi).
        f1 = jnp.where(h != 0, alpha * (d + psi) / jnp.where(h != 0, h, 1.0), f0)
        counts = dict(
            newton=counts["newton"] + iterations,
            products=counts["products"] + products,
            highest=jnp.maximum(counts["highest"], k),
        )
        new_state = (f1, D, h, new_k, held, (rate, rate_age), counts)
        error = jnp.where(converged, error_k, jnp.inf)
        y1 = jnp.where(converged, y1, y0_flat)
        dense_info = dict(y0=y0, y1=unravel(y1), k0=unravel(h * f0), k1=unravel(h * f1))  # pyright: ignore[reportArgumentType]
        return unravel(y1), unravel(error), dense_info, new_state, diffrax.RESULTS.successful
