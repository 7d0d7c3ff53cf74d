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
from flows._validate import check_finite, check_positive_int

from ._carried import AbstractCarried


def _psd_power(M, p):
    r"""$M^p$ for symmetric PSD M via eigh (round-off negatives clipped; $M^0 = I$)."""
    lam, V = jnp.linalg.eigh(M)
    return (V * jnp.power(jnp.clip(lam, 0.0), p)) @ V.T


class EndToEnd(flows.AbstractFlow):
    r"""The end-to-end ODE of a depth-N product from a balanced start; the state is W, from `W0`.

    $W' = -\sum_{j=1}^N (W W^T)^{(j-1)/N} \nabla L(W) (W^T W)^{(N-j)/N}$ (fractional powers by eigh, which
    needs no derivative: the ODE is integrated with explicit solvers). Depth 1 is the direct flow.
    """

    problem: flows.AbstractProblem
    W0: Float[Array, "n1 n2"]
    depth: int = eqx.field(static=True)

    def __init__(self, problem: flows.AbstractProblem, depth: int, W0: Float[Array, "n1 n2"]):
        check_positive_int("depth", depth)
        W0 = np.asarray(W0, dtype=np.float64)
        if W0.shape != problem.shape:
            raise ValueError(f"W0 must have shape {problem.shape}; got {W0.shape}")
        check_finite("W0", W0)
        self.problem = problem
        self.W0 = jnp.asarray(W0)
        self.depth = depth

    def init(self, scale=None, kind=None, seed=None):
        """W0 of the constructor (the product of a balanced factor state); the arguments must be left unset."""
        if scale is not None or kind is not None or seed is not None:
            raise ValueError("EndToEnd starts from the W0 given at construction; init takes no arguments")
        return self.W0

    def product(self, W):
        return W

    def vector_field(self, t, W, args):
        G = self.problem.grad(W)
        N = self.depth
        left, right = W @ W.T, W.T @ W
        return -sum(_psd_power(left, (j - 1) / N) @ G @ _psd_power(right, (N - j) / N) for j in range(1, N + 1))

    def describe(self):
        return {"flow": "EndToEnd", "depth": self.depth}


class WithSingularValues(AbstractCarried):
    r"""The deep factor flow with the singular-value ODE integrated alongside: state (factors, sigma).

    $\sigma_k' = -N \sigma_k^{2-2/N} \langle \nabla L(W), u_k v_k^T \rangle$, with $u_k, v_k$ the singular
    vectors of the current product (their joint sign cancels). Valid while the singular values stay
    distinct; sigma starts at the singular values of the initial product, in descending order.
    """

    def __check_init__(self):
        if not isinstance(self.flow, flows.Deep):
            raise ValueError(f"flow must be a Deep flow; got {type(self.flow).__name__}")

    def init(self, scale=1e-3, kind="balanced", seed=0):
        return self.state(self.flow.init(scale=scale, kind=kind, seed=seed))

    def state(self, factors):
        """The joint state of given factors: sigma from the singular values of their product."""
        return factors, jnp.linalg.svd(self.flow.product(factors), compute_uv=False)

    def carried_field(self, W, sigma):
        U, _, Vt = jnp.linalg.svd(W, full_matrices=False)
        drive = jnp.einsum("ik,ij,kj->k", U, self.problem.grad(W), Vt)
        N = self.flow.depth
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
    return SingularValueReport(max_relative_error=float(np.max(np.abs(integrated - measured) / measured)),
                               min_relative_gap=float(np.min(gaps)))


def effective_rank_by_depth(problem: flows.AbstractProblem, depths, end_to_end_scale: float, t1: float, ts=None,
                            **solve_options) -> dict[int, flows.Trajectory]:
    r"""Deep flows of each depth from identity factors $\alpha^{1/N} I$, so every depth starts at $W_0 = \alpha I$
    ($\alpha$ = `end_to_end_scale`); their trajectories carry `effective_rank` over time.

    Depth sharpens the bias towards low rank (Arora, Cohen, Hu, Luo 2019): singular values are picked up
    one at a time, and the deeper the product, the lower the effective rank where it lands.
    """
    runs = {}
    for depth in depths:
        flow = flows.Deep(problem, depth=depth)
        runs[depth] = flows.solve(flow, flow.init(scale=end_to_end_scale ** (1.0 / depth)), t1=t1, ts=ts,
                                  **solve_options)
    return runs
