r"""Flows: a parameterization of the end-to-end matrix W, an objective on W, and dynamics.

Every flow is an `eqx.Module` whose array fields are traced, so one compiled solve serves every
problem of the same shapes. A flow's state is a pytree built from tuples, dicts and arrays only
(that is what lets `Trajectory.load` rebuild it without pickling).

The four parameterizations here all run plain gradient flow $\theta' = -\nabla_\theta L(W(\theta))$,
computed as the pullback (vector-Jacobian product) of $\nabla_W L$ through $W(\theta)$.
Wrappers (penalties, adaptive dynamics) change the objective or the dynamics and keep the rest.
"""

from __future__ import annotations

import abc
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PyTree

from ._problems import AbstractProblem
from ._validate import check_choice, check_positive, check_positive_int

State = PyTree[Float[Array, "..."]]


class AbstractFlow(eqx.Module):
    """An ODE $\\theta' = F(t, \\theta)$ on parameters whose end-to-end matrix is `product(theta)`."""

    problem: eqx.AbstractVar[AbstractProblem]

    @abc.abstractmethod
    def init(self, scale: float = 1e-3, kind: str = "identity", seed: int = 0) -> State:
        """The initial state; validated on the host before anything compiles."""

    @abc.abstractmethod
    def product(self, state: State) -> Float[Array, "n1 n2"]:
        """The end-to-end matrix W of a state."""

    @abc.abstractmethod
    def vector_field(self, t, state: State, args) -> State:
        """The right-hand side F(t, state)."""

    def loss(self, state: State) -> Float[Array, ""]:
        """The data loss L(W) of the state (what trajectories record and `stop_loss` watches)."""
        return self.problem.loss(self.product(state))

    def conserved(self, state: State) -> dict[str, tuple[Array, Array]]:
        """Conserved quantities as pairs (P, Q): P - Q is constant along the exact flow."""
        return {}

    def describe(self) -> dict[str, Any]:
        """A JSON-able description (saved with trajectories)."""
        return {"flow": type(self).__name__}


class AbstractParameterization(AbstractFlow):
    r"""Gradient flow of the data loss through a parameterization $W = \phi(\theta)$.

    $\theta' = -\phi'(\theta)^* \nabla L(W)$ where $\phi'(\theta)^*$ is the pullback (`pullback`).
    """

    @abc.abstractmethod
    def pullback(self, state: State, G: Float[Array, "n1 n2"]) -> State:
        r"""$\phi'(\theta)^* G$: the gradient w.r.t. the parameters of $\langle G, \phi(\theta) \rangle$."""

    def gradient(self, state: State) -> State:
        """Gradient of the data loss with respect to the parameters."""
        return self.pullback(state, self.problem.grad(self.product(state)))

    def vector_field(self, t, state, args):
        return jax.tree.map(jnp.negative, self.gradient(state))


INIT_KINDS = ("identity", "orthogonal", "gaussian", "balanced", "zero")


def _check_init(flow_name: str, scale, kind: str, seed, allowed: tuple[str, ...]) -> float:
    check_choice("init kind", kind, INIT_KINDS)
    if kind not in allowed:
        raise ValueError(f"init kind {kind!r} does not apply to {flow_name}; choose one of "
                         f"{', '.join(map(repr, allowed))}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed must be an integer; got {seed!r}")
    return check_positive("scale", scale)


def _factor(rng: np.random.Generator, kind: str, rows: int, cols: int, scale: float) -> np.ndarray:
    """One factor of operator norm about `scale`.

    identity: scale * I (rectangular); orthogonal: scale * a random partial isometry;
    gaussian: i.i.d. N(0, scale^2 / cols), so the factor's norm does not grow with its size.
    """
    if kind == "identity":
        return scale * np.eye(rows, cols)
    if kind == "orthogonal":
        return scale * _partial_isometry(rng, rows, cols)
    return scale * rng.standard_normal((rows, cols)) / np.sqrt(cols)


def _partial_isometry(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    """A Haar-random matrix with orthonormal columns (rows >= cols) or rows (rows < cols)."""
    k, l = max(rows, cols), min(rows, cols)
    Q, R = np.linalg.qr(rng.standard_normal((k, l)))
    Q = Q * np.sign(np.diag(R))
    return Q if rows >= cols else Q.T


def _balanced_factors(rng: np.random.Generator, dims: tuple[int, ...], scale: float) -> list[np.ndarray]:
    r"""Factors $W_1..W_N$ (W_j of shape dims[j] x dims[j-1]) with $W_{j+1}^T W_{j+1} = W_j W_j^T$.

    A Gaussian end-to-end target $G = U S V^T$ (entries N(0, 1/n2), rank r = min over dims) is split
    as $W_1 = Q_1 S^{1/N} V^T$, $W_j = Q_j S^{1/N} Q_{j-1}^T$, $W_N = U S^{1/N} Q_{N-1}^T$ with
    $Q_j$ random orthonormal columns, times `scale` each: the product is $\text{scale}^N G_r$.
    """
    N = len(dims) - 1
    r = min(dims)
    G = rng.standard_normal((dims[-1], dims[0])) / np.sqrt(dims[0])
    U, S, Vt = np.linalg.svd(G, full_matrices=False)
    root = S[:r] ** (1.0 / N)
    left = [Vt[:r].T] + [_partial_isometry(rng, d, r) for d in dims[1:-1]] + [U[:, :r]]
    return [scale * (left[j + 1] * root) @ left[j].T for j in range(N)]


def _as_jax(tree):
    return jax.tree.map(lambda x: jnp.asarray(x, dtype=jnp.float64), tree)


class Direct(AbstractParameterization):
    r"""The direct flow $W' = -\nabla L(W) = -\mathcal{A}^*(r)$; the state is W itself."""

    problem: AbstractProblem

    def init(self, scale=1e-3, kind="identity", seed=0):
        """identity: scale * I; gaussian: N(0, scale^2 / n2) entries; zero: W = 0 (scale unused)."""
        scale = _check_init("Direct", scale, kind, seed, ("identity", "gaussian", "zero"))
        n1, n2 = self.problem.shape
        if kind == "zero":
            return jnp.zeros((n1, n2))
        return _as_jax(_factor(np.random.default_rng(seed), kind, n1, n2, scale))

    def product(self, state):
        return state

    def pullback(self, state, G):
        return G


class Symmetric(AbstractParameterization):
    r"""$W = U U^T$ with U of shape (n, width): $U' = -(S + S^T) U$, $S = \mathcal{A}^*(r)$.

    For symmetric $A_i$ this is $U' = -2 S U$ and $W' = -2 (S W + W S)$: twice as fast as the
    UV^T flow started from V = U.
    """

    problem: AbstractProblem
    width: int = eqx.field(static=True)

    def __init__(self, problem: AbstractProblem, width: int | None = None):
        n1, n2 = problem.shape
        if n1 != n2:
            raise ValueError(f"Symmetric (W = U U^T) needs a square problem; got shape {problem.shape}")
        width = n1 if width is None else width
        check_positive_int("width", width)
        self.problem = problem
        self.width = width

    def init(self, scale=1e-3, kind="identity", seed=0):
        """U_0 = one factor (identity, orthogonal, gaussian) of shape (n, width): W_0 = scale^2 I for identity."""
        scale = _check_init("Symmetric", scale, kind, seed, ("identity", "orthogonal", "gaussian"))
        return _as_jax(_factor(np.random.default_rng(seed), kind, self.problem.shape[0], self.width, scale))

    def product(self, U):
        return U @ U.T

    def pullback(self, U, G):
        return (G + G.T) @ U

    def describe(self):
        return {"flow": "Symmetric", "width": self.width}


class Deep(AbstractParameterization):
    r"""The deep product $W = W_N \cdots W_1$ ($W_1$ acts first), state the tuple $(W_1, \dots, W_N)$.

    $W_j' = -(W_N \cdots W_{j+1})^T \nabla L(W) (W_{j-1} \cdots W_1)^T$. Conserved for each j:
    $W_{j+1}^T W_{j+1} - W_j W_j^T$. `width` is one hidden width or a sequence of depth - 1 of them.
    """

    problem: AbstractProblem
    dims: tuple[int, ...] = eqx.field(static=True)

    def __init__(self, problem: AbstractProblem, depth: int = 3, width: int | tuple[int, ...] | None = None):
        check_positive_int("depth", depth)
        n1, n2 = problem.shape
        if width is None:
            hidden = (min(n1, n2),) * (depth - 1)
        elif isinstance(width, (int, np.integer)) and not isinstance(width, bool):
            hidden = (int(width),) * (depth - 1)
        else:
            hidden = tuple(width)
            if len(hidden) != depth - 1:
                raise ValueError(f"width must give depth - 1 = {depth - 1} hidden widths; got {len(hidden)}")
        for w in hidden:
            check_positive_int("width", w)
        self.problem = problem
        self.dims = (n2, *hidden, n1)

    @property
    def depth(self) -> int:
        return len(self.dims) - 1

    def init(self, scale=1e-3, kind="identity", seed=0):
        """Each factor from `kind` at `scale` (so W_0 = scale^N I for identity); balanced: see `_balanced_factors`."""
        scale = _check_init("Deep", scale, kind, seed, ("identity", "orthogonal", "gaussian", "balanced"))
        rng = np.random.default_rng(seed)
        if kind == "balanced":
            return _as_jax(tuple(_balanced_factors(rng, self.dims, scale)))
        return _as_jax(tuple(_factor(rng, kind, self.dims[j + 1], self.dims[j], scale) for j in range(self.depth)))

    def product(self, factors):
        W = factors[0]
        for Wj in factors[1:]:
            W = Wj @ W
        return W

    def pullback(self, factors, G):
        return jax.vjp(self.product, factors)[1](G)[0]

    def conserved(self, factors):
        return {f"W{j + 2}^T W{j + 2} - W{j + 1} W{j + 1}^T": (factors[j + 1].T @ factors[j + 1], factors[j] @ factors[j].T)
                for j in range(self.depth - 1)}

    def describe(self):
        return {"flow": "Deep", "depth": self.depth, "dims": list(self.dims)}


class Factored(AbstractParameterization):
    r"""$W = U V^T$, U (n1, width), V (n2, width): $U' = -\mathcal{A}^*(r) V$, $V' = -\mathcal{A}^*(r)^T U$.

    Conserved: $U^T U - V^T V$. The state is the tuple (U, V).
    """

    problem: AbstractProblem
    width: int = eqx.field(static=True)

    def __init__(self, problem: AbstractProblem, width: int | None = None):
        width = min(problem.shape) if width is None else width
        check_positive_int("width", width)
        self.problem = problem
        self.width = width

    def init(self, scale=1e-3, kind="identity", seed=0):
        """U_0, V_0 each one factor of `kind` at `scale`; balanced: U_0^T U_0 = V_0^T V_0 (W_0 = scale^2 G_r)."""
        scale = _check_init("Factored", scale, kind, seed, ("identity", "orthogonal", "gaussian", "balanced"))
        rng = np.random.default_rng(seed)
        n1, n2 = self.problem.shape
        if kind == "balanced":
            V_t, U = _balanced_factors(rng, (n2, self.width, n1), scale)
            return _as_jax((U, V_t.T))
        return _as_jax((_factor(rng, kind, n1, self.width, scale), _factor(rng, kind, n2, self.width, scale)))

    def product(self, state):
        U, V = state
        return U @ V.T

    def pullback(self, state, G):
        U, V = state
        return (G @ V, G.T @ U)

    def conserved(self, state):
        U, V = state
        return {"U^T U - V^T V": (U.T @ U, V.T @ V)}

    def describe(self):
        return {"flow": "Factored", "width": self.width}
