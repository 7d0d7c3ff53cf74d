"""Matrix functions shared by the analysis modules."""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array, Float


def psd_power(M: Float[Array, "n n"], p: float) -> Float[Array, "n n"]:
    r"""$M^p$ for symmetric PSD M, with exact zeros on its null space ($M^0 = I$).

    Eigenvalues below $n\,\epsilon_\text{mach}\,\lambda_\max$ are round-off of zeros and are set to 0 before
    the power: a fractional power of round-off ($(10^{-16})^{1/3} \approx 5 \cdot 10^{-6}$) is not small.
    """
    if p == 0:
        return jnp.eye(M.shape[0], dtype=M.dtype)
    lam, V = jnp.linalg.eigh(M)
    positive = lam > M.shape[0] * jnp.finfo(M.dtype).eps * jnp.max(jnp.abs(lam))
    powered = jnp.where(positive, jnp.power(jnp.where(positive, lam, 1.0), p), 0.0)
    return (V * powered) @ V.T
