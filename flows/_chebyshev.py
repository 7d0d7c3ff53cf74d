r"""A stabilised explicit solver for the stiff tails of gradient flows: Runge-Kutta-Chebyshev.

Near its limit a gradient flow $\theta' = -\nabla L(\theta)$ has the Jacobian $-\nabla^2 L$: symmetric,
its spectrum on the negative real axis in $[-\rho, 0]$. An explicit method with a fixed tableau is
stable for $h \rho$ up to a constant (3.5 for Tsit5), so its work grows like $\rho$ per unit time. The
s-stage Runge-Kutta-Chebyshev method of Sommeijer, Shampine & Verwer (1998) spends its s stages on
stability instead of order: its stability polynomial is a shifted, damped Chebyshev polynomial, stable on
$[-\beta_s, 0]$ with $\beta_s \approx 0.653\, s^2$, so a step of size h costs $s \approx \sqrt{1.54\, h\rho}$
evaluations and the work grows like $\sqrt{\rho\, \Delta t}$, with no linear algebra at all. It has order
2, which decides where it pays: in a tail, where the state barely moves and the step is held by stability,
not by accuracy. Its error estimate is that of the solution it returns (no local extrapolation, unlike
Tsit5's), so the global error grows with the number of steps along the directions the flow does not
contract: it suits tails crossed in hundreds of steps, not long runs at order-2 step sizes (measured in
tests/test_chebyshev.py and benchmarks/README.md).

The stages (with $T_j$ the Chebyshev polynomials, $w_0 = 1 + \epsilon / s^2$, $\epsilon = 2/13$,
$w_1 = T_s'(w_0) / T_s''(w_0)$, $b_j = T_j''(w_0) / T_j'(w_0)^2$ for $j \ge 2$, $b_0 = b_1 = b_2$,
$a_j = 1 - b_j T_j(w_0)$):

$$Y_0 = y_n,\quad Y_1 = Y_0 + \tilde\mu_1 h F_0,\quad
Y_j = (1 - \mu_j - \nu_j) Y_0 + \mu_j Y_{j-1} + \nu_j Y_{j-2} + \tilde\mu_j h F(Y_{j-1}) + \tilde\gamma_j h F_0,$$

$\tilde\mu_1 = b_1 w_1$, $\mu_j = 2 b_j w_0 / b_{j-1}$, $\nu_j = -b_j / b_{j-2}$, $\tilde\mu_j = 2 b_j w_1 / b_{j-1}$,
$\tilde\gamma_j = -a_{j-1} \tilde\mu_j$, and $y_{n+1} = Y_s$. The error estimate is theirs,
$\tfrac{1}{15}\,[12 (y_n - y_{n+1}) + 6 h (F(y_n) + F(y_{n+1}))]$, first same as last.

The spectral radius $\rho$ comes from power iteration on the Jacobian by Jacobian-vector products,
warm-started from the previous step's vector, so a few iterations per step follow its drift.
"""

from __future__ import annotations

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, Float

from ._solver import AbstractFlowSolver, Hermite

# The damping of the Chebyshev polynomial (theirs): it keeps the stability polynomial below 1 - epsilon / 3
# in magnitude away from 0, at the price of a 2 epsilon / 15 shorter interval.
_DAMPING = 2.0 / 13.0


def stages(h_rho: Float[Array, ""], max_stages: int) -> Array:
    r"""The fewest stages (at least 2, at most `max_stages`) whose interval $[-\beta_s, 0]$ holds $h\rho$
    ($\beta_s \ge 0.65 (s^2 - 1)$; Sommeijer, Shampine & Verwer's choice $s = 1 + \lfloor\sqrt{1 + 1.54\,h\rho}\rfloor$)."""
    return jnp.clip(1 + jnp.floor(jnp.sqrt(1.0 + 1.54 * h_rho)), 2, max_stages).astype(int)


def stability_bound(s) -> Float[Array, ""]:
    r"""$\beta_s = (w_0 + 1)\, T_s''(w_0) / T_s'(w_0)$: the method with s stages is stable on $[-\beta_s, 0]$."""
    w0 = 1.0 + _DAMPING / s**2
    _, d1, d2 = _chebyshev(s, w0)
    return (w0 + 1.0) * d2 / d1


def _chebyshev(s, w0):
    """$T_s(w_0), T_s'(w_0), T_s''(w_0)$ by the three-term recurrence."""

    def next_(j, c):
        (t1, d1, e1), (t0, d0, e0) = c
        return (2 * w0 * t1 - t0, 2 * t1 + 2 * w0 * d1 - d0, 4 * d1 + 2 * w0 * e1 - e0), (t1, d1, e1)

    one, zero = jnp.ones_like(w0), jnp.zeros_like(w0)
    return jax.lax.fori_loop(1, s, next_, ((w0, one, zero), (one, zero, zero)))[0]


class RungeKuttaChebyshev(AbstractFlowSolver):
    r"""The second-order Runge-Kutta-Chebyshev method (see the module docstring), s stages chosen per step
    from the spectral radius: $s \approx \sqrt{1.54\, h\rho}$ with $\rho$ = `safety` x the power-iteration
    estimate, at most `max_stages` (a step beyond $h\rho = \beta_{s_{\max}} \approx 0.65\, s_{\max}^2$ is
    rejected outright). `power_iterations` Jacobian-vector products per step refine $\rho$ (warm-started);
    the first step runs `initial_power_iterations`.

    For flows whose Jacobian has a real, non-positive spectrum (gradient flows, penalised or not); dynamics
    with a strongly non-symmetric Jacobian (momentum) are outside its stability region.
    """

    safety: float = 1.2
    max_stages: int = eqx.field(static=True, default=400)
    power_iterations: int = eqx.field(static=True, default=1)
    initial_power_iterations: int = eqx.field(static=True, default=30)

    term_structure = diffrax.ODETerm
    interpolation_cls = Hermite
    lands_save_times = True

    def order(self, terms):
        return 2

    def error_order(self, terms):
        # The estimate is of the returned order-2 solution's own local error, O(h^3) (as diffrax.ImplicitEuler's).
        return 3

    def init(self, terms, t0, t1, y0, args):
        y, _ = ravel_pytree(y0)
        f0 = ravel_pytree(terms.vf(t0, y0, args))[0]
        # A fixed start for the power iteration (not F itself: near a limit F lies in the slow directions), and the
        # fixed direction it is nudged along at every step (see `step`), drawn once here, not per step.
        vector = jax.random.normal(jax.random.key(0), y.shape, y.dtype)
        noise = jax.random.normal(jax.random.key(1), y.shape, y.dtype)
        return (
            f0,
            vector / jnp.linalg.norm(vector),
            jnp.asarray(jnp.nan, y.dtype),
            jnp.array(0),
            noise / jnp.linalg.norm(noise),
        )

    def report(self, solver_state) -> dict:
        """What the final solver state says (host-side): the last spectral-radius estimate (None before the
        first step) and the stages of the accepted steps (Diffrax keeps the state of accepted steps only)."""
        rho = float(solver_state[2])
        return {"spectral_radius": None if np.isnan(rho) else rho, "stages": int(solver_state[3])}

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        f0, vector, rho, spent, noise = solver_state
        y0_flat, unravel = ravel_pytree(y0)
        if made_jump is not False:
            f0 = jax.lax.cond(made_jump, lambda: ravel_pytree(terms.vf(t0, y0, args))[0], lambda: f0)

        def vf(t, y):
            return ravel_pytree(terms.vf(t, unravel(y), args))[0]

        _, jvp = jax.linearize(lambda y: vf(t0, y), y0_flat)

        def power(_, carry):
            v, _ = carry
            w = jvp(v)
            norm = jnp.linalg.norm(w)
            # J v = 0 (a flat direction, or a zero Jacobian): keep v; rho = 0 then asks for the fewest stages.
            return jnp.where(norm > 0, w / jnp.where(norm > 0, norm, 1.0), v), norm

        # Each iteration's norm ||J v|| (|v| = 1) is the estimate; the last one's is kept. A small fixed random
        # component restores directions the exact products have zeroed (a decoupled Jacobian whose weak direction
        # later turns stiffest: without it the estimate never sees it).
        iterations = jnp.where(jnp.isnan(rho), self.initial_power_iterations, self.power_iterations)
        vector = vector + 1e-8 * noise
        vector, norm = jax.lax.fori_loop(0, iterations, power, (vector / jnp.linalg.norm(vector), jnp.zeros_like(rho)))
        rho = self.safety * norm
        h = t1 - t0
        # Beyond the largest stage count's interval the step cannot be stable: reject it outright (infinite error)
        # rather than run max_stages stages into an overflow; the controller shrinks h.
        beyond = h * rho > stability_bound(self.max_stages)
        s = jnp.where(beyond, 2, stages(h * rho, self.max_stages))

        w0 = 1.0 + _DAMPING / s**2
        _, ds, es = _chebyshev(s, w0)
        w1 = ds / es
        # T_2 = 2 w^2 - 1: b_2 = T_2'' / T_2'^2 = 1 / (4 w0^2), c_2 = w1 T_2'' / T_2' = w1 / w0, c_1 = c_2 / T_2'.
        b2 = 1.0 / (4.0 * w0**2)
        c1 = w1 / w0 / (4.0 * w0)
        y1 = y0_flat + b2 * w1 * h * f0  # mu~_1 = b_1 w1, b_1 = b_2

        def stage(j, carry):
            # Carried: Y_{j-1}, Y_{j-2}, c_{j-1}; b_{j-1}, b_{j-2}; T, T', T'' at j - 1 and j - 2.
            y_prev, y_prev2, c_prev, b_prev, b_prev2, cheb, cheb2 = carry
            t_prev, d_prev, e_prev = cheb
            t_prev2, d_prev2, e_prev2 = cheb2
            tj = 2 * w0 * t_prev - t_prev2
            dj = 2 * t_prev + 2 * w0 * d_prev - d_prev2
            ej = 4 * d_prev + 2 * w0 * e_prev - e_prev2
            bj = ej / dj**2
            mu, nu = 2 * bj * w0 / b_prev, -bj / b_prev2
            mu_tilde = 2 * bj * w1 / b_prev
            gamma_tilde = -(1.0 - b_prev * t_prev) * mu_tilde
            yj = (
                (1 - mu - nu) * y0_flat
                + mu * y_prev
                + nu * y_prev2
                + mu_tilde * h * vf(t0 + c_prev * h, y_prev)
                + gamma_tilde * h * f0
            )
            cj = w1 * ej / dj
            return yj, y_prev, cj, bj, b_prev, (tj, dj, ej), cheb

        one, zero = jnp.ones_like(w0), jnp.zeros_like(w0)
        # Start at j = 2 with j - 1 = 1 (T_1 = w0, T_1' = 1, T_1'' = 0) and j - 2 = 0; b_1 = b_0 = b_2.
        carry = (y1, y0_flat, c1, b2, b2, (w0, one, zero), (one, zero, zero))
        y_end = jax.lax.fori_loop(2, s + 1, stage, carry)[0]
        # An overflow to inf would slip past Diffrax's NaN check: make it NaN, which rejects the step.
        y_end = jnp.where(jnp.isfinite(y_end), y_end, jnp.nan)
        f1 = vf(t1, y_end)
        error = jnp.where(beyond, jnp.inf, (12.0 * (y0_flat - y_end) + 6.0 * h * (f0 + f1)) / 15.0)
        y_end = jnp.where(beyond, y0_flat, y_end)
        # h * f is a JAX array; numpy's stubs type the product of a scalar-like h as possibly an ndarray.
        dense_info = dict(y0=y0, y1=unravel(y_end), k0=unravel(h * f0), k1=unravel(h * f1))  # pyright: ignore[reportArgumentType]
        new_state = (f1, vector, rho, spent + s, noise)
        return unravel(y_end), unravel(error), dense_info, new_state, diffrax.RESULTS.successful
