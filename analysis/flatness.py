r"""Flatness of factorizations: the scaled Hessian trace of $f(L, R) = \|\mathcal{A}(L R^T) - b\|^2$.

Derivation (L is d1 x k, R is d2 x k). With $r = \mathcal{A}(LR^T) - b$ and $S = \mathcal{A}^*(r)$, the second
directional derivative along $(\Delta L, \Delta R)$ is

    $D^2 f[\Delta, \Delta] = 2 \|\mathcal{A}(\Delta L\, R^T + L\, \Delta R^T)\|^2 + 4 \langle S, \Delta L\, \Delta R^T \rangle$.

The residual term pairs a direction in L with one in R, so it vanishes on every coordinate direction and
drops out of the trace. For $\Delta L = e_a e_p^T$: $\langle A_i, e_a e_p^T R^T \rangle = (A_i R)_{ap}$, so the
L-block trace is $2 \sum_i \|A_i R\|_F^2 = 2 \operatorname{tr}(R^T (\sum_i A_i^T A_i) R)$; likewise the R-block
trace is $2 \operatorname{tr}(L^T (\sum_i A_i A_i^T) L)$. With
$D_1 = (\tfrac{1}{m d_2} \sum_i A_i A_i^T)^{1/2}$ (d1 x d1) and $D_2 = (\tfrac{1}{m d_1} \sum_i A_i^T A_i)^{1/2}$
(d2 x d2):

    $\operatorname{tr} \nabla^2_{LL} f = 2 m d_1 \|D_2 R\|_F^2$,  $\operatorname{tr} \nabla^2_{RR} f = 2 m d_2 \|D_1 L\|_F^2$,

so the plain trace is $2m (d_1 \|D_2 R\|^2 + d_2 \|D_1 L\|^2)$, and Ding et al.'s
$2m(\|D_1 L\|^2 + \|D_2 R\|^2)$ is the *scaled* trace
$\operatorname{str} = \operatorname{tr}\nabla^2_{LL} f / d_1 + \operatorname{tr}\nabla^2_{RR} f / d_2$ (each block's
trace divided by the row dimension of its factor). Note the crossing: the curvature along L is set by R
and $D_2$, and vice versa; $D_1$ pairs with L only in the sum.

Flattest interpolant: $\min_{LR^T = X} \|D_1 L\|_F^2 + \|D_2 R\|_F^2 = 2 \|D_1 X D_2\|_*$ (substitute
$L' = D_1 L$, $R' = D_2 R$), so the minimum of str over interpolants is $4m \min \|D_1 X D_2\|_*$ subject to
$\mathcal{A}(X) = b$, attained at $L = D_1^{-1} P \Sigma^{1/2}$, $R = D_2^{-1} Q \Sigma^{1/2}$ for
$D_1 X D_2 = P \Sigma Q^T$. (The plain trace has weights $\sqrt{d_2} D_1$, $\sqrt{d_1} D_2$: the same minimizer.)
For completion $D_1$, $D_2$ are diagonal, the square roots of the row and column sampling rates.
"""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import flows

from . import references
from ._linalg import psd_power


def weights(problem: flows.AbstractProblem) -> tuple[np.ndarray, np.ndarray]:
    r"""$D_1 = (\sum_i A_i A_i^T / (m d_2))^{1/2}$ and $D_2 = (\sum_i A_i^T A_i / (m d_1))^{1/2}$."""
    d1, d2 = problem.shape
    m = problem.m
    if isinstance(problem, flows.EntryProblem):
        rows = np.bincount(np.asarray(problem.rows), minlength=d1)
        cols = np.bincount(np.asarray(problem.cols), minlength=d2)
        return np.diag(np.sqrt(rows / (m * d2))), np.diag(np.sqrt(cols / (m * d1)))
    A = np.asarray(problem.matrices())
    return (
        np.asarray(psd_power(jnp.asarray(np.einsum("mij,mkj->ik", A, A) / (m * d2)), 0.5)),
        np.asarray(psd_power(jnp.asarray(np.einsum("mji,mjk->ik", A, A) / (m * d1)), 0.5)),
    )


def _objective(problem):
    def f(L, R):
        r = problem.residual(L @ R.T)
        return jnp.vdot(r, r)

    return f


@eqx.filter_jit
def _block_traces(problem, L, R):
    """Traces of the two diagonal Hessian blocks of f, one Hessian-vector product per coordinate."""
    f = _objective(problem)

    def trace_of(block, x):
        def curvature(e):
            tangent = (e, jnp.zeros_like(R)) if block == 0 else (jnp.zeros_like(L), e)
            _, hvp = jax.jvp(jax.grad(f, argnums=(0, 1)), (L, R), tangent)
            return jnp.vdot(e, hvp[block])

        basis = jnp.eye(x.size).reshape(x.size, *x.shape)
        return jnp.sum(jax.vmap(curvature)(basis))

    return trace_of(0, L), trace_of(1, R)


@dataclasses.dataclass(frozen=True)
class TraceIdentity:
    """Hessian traces by HVPs against the formulas of the module docstring."""

    trace_LL: float
    trace_RR: float
    scaled_trace: float
    formula_scaled: float
    formula_LL: float
    formula_RR: float

    @property
    def relative_error(self) -> float:
        """The worst of the three relative disagreements (two blocks, and the scaled trace)."""
        return max(
            abs(self.trace_LL - self.formula_LL) / abs(self.formula_LL),
            abs(self.trace_RR - self.formula_RR) / abs(self.formula_RR),
            abs(self.scaled_trace - self.formula_scaled) / abs(self.formula_scaled),
        )


def trace_identity(problem: flows.AbstractProblem, L, R) -> TraceIdentity:
    r"""Measure $\operatorname{tr}\nabla^2_{LL} f$, $\operatorname{tr}\nabla^2_{RR} f$ and str at (L, R) against the formulas."""
    d1, d2 = problem.shape
    L, R = jnp.asarray(L), jnp.asarray(R)
    tLL, tRR = (float(x) for x in _block_traces(problem, L, R))
    D1, D2 = weights(problem)
    nL = float(np.linalg.norm(D1 @ np.asarray(L)) ** 2)
    nR = float(np.linalg.norm(D2 @ np.asarray(R)) ** 2)
    m = problem.m
    return TraceIdentity(
        trace_LL=tLL,
        trace_RR=tRR,
        scaled_trace=tLL / d1 + tRR / d2,
        formula_scaled=2 * m * (nL + nR),
        formula_LL=2 * m * d1 * nR,
        formula_RR=2 * m * d2 * nL,
    )


def scaled_trace(problem: flows.AbstractProblem, L, R) -> float:
    """str D^2 f at (L, R), measured by Hessian-vector products."""
    d1, d2 = problem.shape
    tLL, tRR = _block_traces(problem, jnp.asarray(L), jnp.asarray(R))
    return float(tLL) / d1 + float(tRR) / d2


def flattest_factors(X, D1, D2) -> tuple[np.ndarray, np.ndarray]:
    r"""The factorization $L R^T = X$ minimizing $\|D_1 L\|^2 + \|D_2 R\|^2$."""
    P, sigma, Qt = np.linalg.svd(D1 @ X @ D2, full_matrices=False)
    root = np.sqrt(sigma)
    return np.linalg.solve(D1, P * root), np.linalg.solve(D2, Qt.T * root)


def nonuniform_completion(n: int, m: int, rank: int, seed: int = 0, skew: float = 4.0) -> flows.EntryProblem:
    """Completion of an n x n rank-`rank` truth (Z1 Z2^T, unit Frobenius norm) with `m` entries, sampled
    without replacement with probability proportional to p_j q_k, p and q rising geometrically by a factor
    `skew` from the first to the last row (column). skew = 1 is uniform sampling."""
    rng = np.random.default_rng(seed)
    truth = flows.low_rank_truth(rng, n, n, rank, symmetric=False, truth_norm=1.0)
    rate = np.geomspace(1.0, skew, n)
    p = np.outer(rate, rate).ravel()
    flat = np.sort(rng.choice(n * n, size=m, replace=False, p=p / p.sum()))
    rows, cols = np.divmod(flat, n)
    return flows.Problem.from_entries((n, n), rows, cols, truth[rows, cols], truth=truth)


@dataclasses.dataclass(frozen=True)
class FlatnessComparison:
    """Where the UV^T flow lands against the flattest and the minimum-nuclear-norm interpolants."""

    str_flow: float
    str_flattest: float
    distance_flow_flattest: float
    distance_flow_nuclear: float
    distance_flattest_nuclear: float
    flattest: references.Reference
    nuclear: references.Reference


def compare_flattest(problem: flows.AbstractProblem, factors) -> FlatnessComparison:
    r"""Compare the end point (U, V) of a UV^T flow with the flattest interpolant.

    `str_flattest` is $4m \|D_1 X_\flat D_2\|_*$, checked against the HVP trace at `flattest_factors`;
    str at the flow's factors can only be larger (they interpolate too, up to the flow's residual).
    """
    U, V = (np.asarray(x) for x in factors)
    D1, D2 = weights(problem)
    flattest = references.min_weighted_nuclear(problem, D1, D2)
    nuclear = references.min_nuclear(problem)
    L, R = flattest_factors(flattest.X, D1, D2)
    W = U @ V.T
    return FlatnessComparison(
        str_flow=scaled_trace(problem, U, V),
        str_flattest=scaled_trace(problem, L, R),
        distance_flow_flattest=flattest.distance(W),
        distance_flow_nuclear=nuclear.distance(W),
        distance_flattest_nuclear=nuclear.distance(flattest.X),
        flattest=flattest,
        nuclear=nuclear,
    )
