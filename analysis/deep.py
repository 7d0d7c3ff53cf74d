r"""Deep products $W = W_N \cdots W_1$: end-to-end dynamics, singular values, effective rank, conservation.

From a balanced start ($W_{j+1}^T W_{j+1} = W_j W_j^T$, conserved by the factor flow) the end-to-end matrix
obeys its own ODE (Arora, Cohen, Hazan 2018)

    $W' = -\sum_{j=1}^N (W W^T)^{(j-1)/N}\, \nabla L(W)\, (W^T W)^{(N-j)/N}$,

and, where the singular values are distinct, each obeys (Arora, Cohen, Hu, Luo 2019)

    $\sigma_k' = u_k^T W' v_k = -N \sigma_k^{2 - 2/N} \langle \nabla L(W), u_k v_k^T \rangle$.

`EndToEnd` integrates the first as a flow of its own; `WithSingularValues` integrates the second alongside
the factor flow, so its $\sigma_k(t)$ can be compared with the singular values of the product.
"""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

import flows

from ._bases import AbstractCarried, AbstractFromMatrix, checked_matrix
from ._linalg import psd_power


class EndToEnd(AbstractFromMatrix):
    r"""The end-to-end ODE of a depth-N product from a balanced start; the state is W, from `W0`.

    $W' = -\sum_{j=1}^N (W W^T)^{(j-1)/N} \nabla L(W) (W^T W)^{(N-j)/N}$ (fractional powers by eigh,
    `psd_power`; no derivative is needed: the ODE is integrated with explicit solvers). Depth 1 is the
    direct flow.

    The powers keep the `rank` = rank(W0) largest eigenvalues and set the rest to exact zeros. The exact
    flow keeps that rank (each singular value obeys $\sigma' = -N \sigma^{2-2/N} \langle \nabla L, u v^T \rangle$:
    zeros stay zeros), but at a zero singular value the field is only Hölder ($(\sigma^2)^{1/3} = \sigma^{2/3}$
    at depth 3), and a solver's W is singular only up to its accumulated truncation error. A round-off
    threshold ($n \epsilon_\text{mach} \lambda_\max$, i.e. $\sigma / \sigma_\max > 3 \cdot 10^{-8}$) lets that error
    through once it grows past it: measured on a 4 x 5 product of width 3 at rtol 1e-10, W drifted 1.5e-7
    off the factor flow (2.5e-13 at rtol 1e-12, where the drift stays below the threshold).
    """

    problem: flows.AbstractProblem
    W0: Float[Array, "n1 n2"]
    depth: int = eqx.field(static=True)
    rank: int = eqx.field(static=True)

    def __init__(self, problem: flows.AbstractProblem, depth: int, W0: Float[Array, "n1 n2"]):
        if isinstance(depth, bool) or not isinstance(depth, (int, np.integer)) or depth < 1:
            raise ValueError(f"depth must be a positive integer; got {depth!r}")
        W0 = checked_matrix("W0", W0, problem.shape)
        self.problem = problem
        self.W0 = jnp.asarray(W0)
        self.depth = depth
        self.rank = int(np.linalg.matrix_rank(W0))  # singular values above max(n1, n2) eps sigma_max

    def start(self):
        """W0 of the constructor (the product of a balanced factor state)."""
        return self.W0

    def product(self, W):
        return W

    def vector_field(self, t, W):
        G = self.problem.grad(W)
        N = self.depth
        left, right = W @ W.T, W.T @ W
        return -sum(
            psd_power(left, (j - 1) / N, self.rank) @ G @ psd_power(right, (N - j) / N, self.rank)
            for j in range(1, N + 1)
        )

    def describe(self):
        return {"flow": "EndToEnd", "depth": self.depth}


class WithSingularValues(AbstractCarried):
    r"""The deep factor flow with the singular-value ODE integrated alongside: state (factors, sigma).

    $\sigma_k' = -N \sigma_k^{2-2/N} \langle \nabla L(W), u_k v_k^T \rangle$, with $u_k, v_k$ the singular
    vectors of the current product (their joint sign cancels). Valid while the singular values stay
    distinct; sigma starts at the singular values of the initial product, in descending order.
    """

    def __check_init__(self):
        # The ODE is that of gradient flow of the data loss through a deep product.
        if not (
            isinstance(self.flow, flows.Flow)
            and isinstance(self.flow.parameterization, flows.Deep)
            and self.flow.linearisable
        ):
            raise ValueError(
                "flow must be the gradient flow of a Deep product without a penalty; got "
                f"{self.flow.describe() if isinstance(self.flow, flows.Flow) else type(self.flow).__name__}"
            )

    def init(self, scale=1e-3, kind="balanced", seed=0):
        return super().init(scale=scale, kind=kind, seed=seed)

    def carried_init(self, factors):
        """sigma(0): the singular values of the initial product."""
        return jnp.linalg.svd(self.flow.product(factors), compute_uv=False)

    def carried_field(self, W, sigma):
        U, _, Vt = jnp.linalg.svd(W, full_matrices=False)
        drive = jnp.einsum("ik,ij,kj->k", U, self.problem.grad(W), Vt)
        N = self.flow.parameterization.depth
        return -N * sigma ** (2.0 - 2.0 / N) * drive


@dataclasses.dataclass(frozen=True)
class SingularValueReport:
    """Integrated against measured singular values: max relative error, and the smallest relative gap."""

    max_relative_error: float
    min_relative_gap: float


def singular_value_report(traj: flows.Trajectory) -> SingularValueReport:
    r"""$\max_{t,k} |\sigma_k^{ODE}(t) - \sigma_k(W(t))| / \sigma_k(W(t))$ for a `WithSingularValues` trajectory.

    `min_relative_gap` is $\min_{t,k} (\sigma_k - \sigma_{k+1}) / \sigma_k$ of the measured values: the
    ODE is only claimed where it is clearly positive.
    """
    measured = traj.singular_values
    integrated = np.asarray(traj.states[1])
    gaps = (measured[:, :-1] - measured[:, 1:]) / measured[:, :-1]
    return SingularValueReport(
        max_relative_error=float(np.max(np.abs(integrated - measured) / measured)), min_relative_gap=float(np.min(gaps))
    )


def effective_rank_by_depth(
    problem: flows.AbstractProblem, depths, end_to_end_scale: float, t1: float, ts=None, **solve_options
) -> dict[int, flows.Trajectory]:
    r"""Deep flows of each depth from identity factors $\alpha^{1/N} I$, so every depth starts at $W_0 = \alpha I$
    ($\alpha$ = `end_to_end_scale`); their trajectories carry `effective_rank` over time.

    Depth sharpens the bias towards low rank (Arora, Cohen, Hu, Luo 2019): singular values are picked up
    one at a time, and the deeper the product, the lower the effective rank where it lands.
    """
    runs = {}
    for depth in depths:
        flow = flows.Flow(problem, flows.Deep(depth=depth))
        runs[depth] = flows.solve(
            flow, flow.init(scale=end_to_end_scale ** (1.0 / depth)), t1=t1, ts=ts, **solve_options
        )
    return runs
