"""Exact solutions of flows, to check the integrator against."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

import flows


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
