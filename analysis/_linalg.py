"""Matrix functions shared by the analysis modules."""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array, Float


def psd_power(M: Float[Array, "n n"], p: float, rank: int | None = None) -> Float[Array, "n n"]:
    r"""$M^p$ for symmetric PSD M, with exact zeros on its null space ($M^0 = I$).

    The null space: the eigenvectors of the eigenvalues below $n\,\epsilon_\text{mach}\,\lambda_\max$ (round-off
    of zeros: a fractional power of round-off, $(10^{-16})^{1/3} \approx 5 \cdot 10^{-6}$, is not small), or,
    given `rank`, of all but the `rank` largest eigenvalues (for an M whose rank is known exactly, when its
    zero eigenvalues may have been lifted above round-off, e.g. by a solver's truncation errors).
    """
    if p == 0:
        return jnp.eye(M.shape[0], dtype=M.dtype)
    lam, V = jnp.linalg.eigh(M)
    if rank is None:
        positive = lam > M.shape[0] * jnp.finfo(M.dtype).eps * jnp.max(jnp.abs(lam))
    else:
        positive = (jnp.arange(M.shape[0]) >= M.shape[0] - rank) & (lam > 0)  # eigh sorts ascending
    powered = jnp.where(positive, jnp.power(jnp.where(positive, lam, 1.0), p), 0.0)
    return (V * powered) @ V.T
