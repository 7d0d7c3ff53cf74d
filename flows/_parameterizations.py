r"""Parameterizations: how the parameters $\theta$ make the end-to-end matrix $W = \phi(\theta)$.

A parameterization holds only its static shape choices (depth, width); the problem's shape reaches it
when a flow initialises it. Each one answers, for a state $\theta$:

* `product`: $W = \phi(\theta)$;
* `pushforward`: $\phi'(\theta)[\dot\theta]$ (the Jacobian of the product, applied);
* `pullback`: $\phi'(\theta)^* G$, the gradient with respect to $\theta$ of $\langle G, \phi(\theta)\rangle$
  (the Jacobian transposed): gradient flow of any objective on W is $\theta' = -\phi'(\theta)^* \nabla f(W)$;
* `kernel_terms`: $\phi'(\theta)\phi'(\theta)^*$ as a sum of sandwiches $G \mapsto L\,\mathrm{op}(G)\,R$, or
  None where it has no such form (the stiff solver then forms the kernel from pullbacks);
* `conserved`: quantities $P - Q$ constant along gradient flow of any function of W alone (they come from
  the invariance of $\phi$ under a group acting on $\theta$, not from the objective);
* `init`: the initial parameters for a problem shape, a scale and a kind.

Pushforward and pullback are the linear structure the stiff solver linearises with; every
parameterization must answer them.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PyTree

from ._random import orthonormal_columns
from ._validate import check_positive, check_positive_int, check_seed

Params = PyTree[Float[Array, "..."]]
Sandwich = tuple[Float[Array, "n1 n1"], Float[Array, "n2 n2"], bool]

INIT_KINDS = ("identity", "orthogonal", "gaussian", "balanced", "zero")


class AbstractParameterization(eqx.Module):
    """$W = \\phi(\\theta)$ with its Jacobian (applied and transposed), inits and conserved quantities."""

    init_kinds: ClassVar[tuple[str, ...]]
    psd_products: ClassVar[bool] = False
    """Whether every product is symmetric positive semi-definite (then only such a truth can be reached)."""

    def check_shape(self, shape: tuple[int, int]) -> None:
        """Raise ValueError if this parameterization cannot make matrices of `shape`."""

    @abc.abstractmethod
    def params(self, rng: np.random.Generator, shape: tuple[int, int], scale: float | None, kind: str) -> Params:
        """Initial parameters (host arrays) of one of `init_kinds` at `scale`, for an n1 x n2 product (scale None:
        the zero init, the one kind without a scale)."""

    @abc.abstractmethod
    def product(self, theta: Params, /) -> Float[Array, "n1 n2"]:
        r"""$W = \phi(\theta)$."""

    @abc.abstractmethod
    def pushforward(self, theta: Params, tangent: Params, /) -> Float[Array, "n1 n2"]:
        r"""$\phi'(\theta)[\dot\theta]$."""

    @abc.abstractmethod
    def pullback(self, theta: Params, G: Float[Array, "n1 n2"], /) -> Params:
        r"""$\phi'(\theta)^* G$: the gradient with respect to $\theta$ of $\langle G, \phi(\theta) \rangle$."""

    def kernel_terms(self, theta: Params, /) -> list[Sandwich] | None:
        r"""$\phi'\phi'^*(G) = \sum L\,\mathrm{op}(G)\,R$ as (L, R, transposed) triples; None: no such form."""
        return None

    def conserved(self, theta: Params, /) -> dict[str, tuple[Array, Array]]:
        """Conserved quantities of gradient flow through this parameterization, as pairs (P, Q)."""
        return {}

    def describe(self) -> dict[str, Any]:
        """A JSON-able description (saved with trajectories)."""
        return {"name": type(self).__name__}

    def init(self, shape: tuple[int, int], scale: float | None = 1e-3, kind: str = "identity", seed: int = 0) -> Params:
        """Validated initial parameters as float64 JAX arrays (checked on the host, before anything compiles).

        `kind` is one of this parameterization's `init_kinds`; `scale` > 0, except for the zero init, which
        has none (any value, None included, is accepted and unused).
        """
        if kind not in self.init_kinds:
            name = type(self).__name__
            problem = (
                f"init kind {kind!r} does not apply to {name}" if kind in INIT_KINDS else f"unknown init kind {kind!r}"
            )
            raise ValueError(f"{problem}; {name} takes {', '.join(map(repr, self.init_kinds))}")
        seed = check_seed(seed)
        scale = None if kind == "zero" else check_positive("scale", scale)
        params = self.params(np.random.default_rng(seed), shape, scale, kind)
        return jax.tree.map(lambda x: jnp.asarray(x, dtype=jnp.float64), params)


def factor(rng: np.random.Generator, kind: str, rows: int, cols: int, scale: float) -> np.ndarray:
    """One factor of operator norm about `scale`.

    identity: scale * I (rectangular); orthogonal: scale * a Haar-random partial isometry;
    gaussian: i.i.d. N(0, scale^2 / cols), so the factor's norm does not grow with its size.
    """
    if kind == "identity":
        return scale * np.eye(rows, cols)
    if kind == "orthogonal":
        return scale * _partial_isometry(rng, rows, cols)
    return scale * rng.standard_normal((rows, cols)) / np.sqrt(cols)


def _partial_isometry(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    """Orthonormal columns (rows >= cols) or rows (rows < cols), Haar-distributed."""
    return orthonormal_columns(rng, rows, cols) if rows >= cols else orthonormal_columns(rng, cols, rows).T


def balanced_factors(rng: np.random.Generator, dims: tuple[int, ...], scale: float) -> list[np.ndarray]:
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
    left = [Vt[:r].T] + [orthonormal_columns(rng, d, r) for d in dims[1:-1]] + [U[:, :r]]
    return [scale * (left[j + 1] * root) @ left[j].T for j in range(N)]


def _count(value):
    """A NumPy integer as the Python int it equals (a static field's value enters keys and descriptions); anything
    else as it is (the parameterization's own checks judge it)."""
    return int(value) if isinstance(value, np.integer) else value


def _width(width) -> int | None:
    if isinstance(width, (list, tuple, np.ndarray)):
        raise ValueError(
            f"width is one positive integer here (the factors' inner dimension); got {width!r}: a list of widths is "
            "Deep's, one per hidden layer"
        )
    return None if width is None else check_positive_int("width", width)


def _widths(width):
    """One width or a sequence of them (kept as a tuple, so the field is hashable)."""
    if isinstance(width, (list, tuple, np.ndarray)):
        return tuple(_count(w) for w in width)
    return _count(width)


class Direct(AbstractParameterization):
    r"""The matrix itself, $W = \theta$: gradient flow is $W' = -\nabla f(W)$."""

    init_kinds = ("identity", "gaussian", "zero")

    def params(self, rng, shape, scale, kind):
        """identity: scale * I; gaussian: N(0, scale^2 / n2) entries; zero: W = 0 (scale unused)."""
        if kind == "zero":
            return np.zeros(shape)
        assert scale is not None, "only the zero init has no scale"
        return factor(rng, kind, *shape, scale)

    def product(self, theta):
        return theta

    def pushforward(self, theta, tangent):
        return tangent

    def pullback(self, theta, G):
        return G

    def kernel_terms(self, theta):
        n1, n2 = theta.shape
        return [(jnp.eye(n1), jnp.eye(n2), False)]


class Symmetric(AbstractParameterization):
    r"""$W = U U^T$ with U of shape (n, width) (default width n): $\phi'^*(G) = (G + G^T) U$.

    For symmetric $A_i$ gradient flow is $U' = -2 S U$, $S = \mathcal{A}^*(r)$, and $W' = -2 (S W + W S)$:
    twice as fast as the UV^T flow started from V = U. Needs a square problem.

    Args:
        width: columns of U (default n).
    """

    width: int | None = eqx.field(static=True, default=None, converter=_width)
    init_kinds = ("identity", "orthogonal", "gaussian")
    psd_products = True

    def check_shape(self, shape):
        if shape[0] != shape[1]:
            raise ValueError(f"Symmetric (W = U U^T) needs a square problem; got shape {shape}")

    def params(self, rng, shape, scale, kind):
        """U_0 = one factor of `kind` of shape (n, width): W_0 = scale^2 I for identity."""
        assert scale is not None, "only the zero init has no scale"
        return factor(rng, kind, shape[0], shape[0] if self.width is None else self.width, scale)

    def product(self, U):
        return U @ U.T

    def pushforward(self, U, dU):
        return dU @ U.T + U @ dU.T

    def pullback(self, U, G):
        return (G + G.T) @ U

    def kernel_terms(self, U):
        # phi'(phi'^*(G)) = (G + G^T) W + W (G + G^T)
        W = U @ U.T
        eye = jnp.eye(W.shape[0])
        return [(eye, W, False), (W, eye, False), (eye, W, True), (W, eye, True)]

    def describe(self):
        return {"name": "Symmetric", "width": self.width}


class Factored(AbstractParameterization):
    r"""$W = U V^T$, U (n1, width), V (n2, width) (default width min(n1, n2)); the state is (U, V).

    $\phi'^*(G) = (G V, G^T U)$. Conserved: $U^T U - V^T V$.

    Args:
        width: columns of U and of V (default min(n1, n2)).
    """

    width: int | None = eqx.field(static=True, default=None, converter=_width)
    init_kinds = ("identity", "orthogonal", "gaussian", "balanced")

    def params(self, rng, shape, scale, kind):
        """U_0, V_0 each one factor of `kind` at `scale`; balanced: U_0^T U_0 = V_0^T V_0 (W_0 = scale^2 G_r)."""
        assert scale is not None, "only the zero init has no scale"
        n1, n2 = shape
        width = min(shape) if self.width is None else self.width
        if kind == "balanced":
            V_t, U = balanced_factors(rng, (n2, width, n1), scale)
            return U, V_t.T
        return factor(rng, kind, n1, width, scale), factor(rng, kind, n2, width, scale)

    def product(self, theta):
        U, V = theta
        return U @ V.T

    def pushforward(self, theta, tangent):
        (U, V), (dU, dV) = theta, tangent
        return dU @ V.T + U @ dV.T

    def pullback(self, theta, G):
        U, V = theta
        return G @ V, G.T @ U

    def kernel_terms(self, theta):
        U, V = theta
        return [(jnp.eye(U.shape[0]), V @ V.T, False), (U @ U.T, jnp.eye(V.shape[0]), False)]

    def conserved(self, theta):
        U, V = theta
        return {"U^T U - V^T V": (U.T @ U, V.T @ V)}

    def describe(self):
        return {"name": "Factored", "width": self.width}


class Deep(AbstractParameterization):
    r"""The deep product $W = W_N \cdots W_1$ ($W_1$ acts first), state the tuple $(W_1, \dots, W_N)$.

    $\phi'^*(G)_j = (W_N \cdots W_{j+1})^T G (W_{j-1} \cdots W_1)^T$. Conserved for each j:
    $W_{j+1}^T W_{j+1} - W_j W_j^T$. `width` is one hidden width or a sequence of depth - 1 of them
    (default min(n1, n2)).

    Args:
        depth: the number of factors N.
        width: the hidden width, or depth - 1 hidden widths (default min(n1, n2)).
    """

    depth: int = eqx.field(static=True, default=3, converter=_count)
    width: int | tuple[int, ...] | None = eqx.field(static=True, default=None, converter=_widths)
    init_kinds = ("identity", "orthogonal", "gaussian", "balanced")

    def __check_init__(self):
        check_positive_int("depth", self.depth)
        if isinstance(self.width, tuple):
            if len(self.width) != self.depth - 1:
                raise ValueError(f"width must give depth - 1 = {self.depth - 1} hidden widths; got {len(self.width)}")
            for w in self.width:
                check_positive_int("width", w)
        elif self.width is not None:
            check_positive_int("width", self.width)

    def dims(self, shape: tuple[int, int]) -> tuple[int, ...]:
        """(n2, hidden widths..., n1): W_j has shape dims[j] x dims[j - 1]."""
        n1, n2 = shape
        if self.width is None:
            hidden = (min(n1, n2),) * (self.depth - 1)
        elif isinstance(self.width, tuple):
            hidden = self.width
        else:
            hidden = (self.width,) * (self.depth - 1)
        return (n2, *hidden, n1)

    def params(self, rng, shape, scale, kind):
        """Each factor from `kind` at `scale` (so W_0 = scale^N I for identity); balanced: see `balanced_factors`."""
        assert scale is not None, "only the zero init has no scale"
        dims = self.dims(shape)
        if kind == "balanced":
            return tuple(balanced_factors(rng, dims, scale))
        return tuple(factor(rng, kind, dims[j + 1], dims[j], scale) for j in range(self.depth))

    def product(self, factors):
        W = factors[0]
        for Wj in factors[1:]:
            W = Wj @ W
        return W

    def pushforward(self, factors, tangents):
        return jax.jvp(self.product, (factors,), (tangents,))[1]

    def pullback(self, factors, G):
        return jax.vjp(self.product, factors)[1](G)[0]

    def kernel_terms(self, factors):
        # phi'phi'^*(G) = sum_j P_{>j} P_{>j}^T G P_{<j}^T P_{<j}
        terms = []
        for j in range(len(factors)):
            left = jnp.eye(factors[-1].shape[0])
            for Wk in reversed(factors[j + 1 :]):
                left = left @ Wk
            right = jnp.eye(factors[0].shape[1])
            for Wk in factors[:j]:
                right = Wk @ right
            terms.append((left @ left.T, right.T @ right, False))
        return terms

    def conserved(self, factors):
        return {
            f"W{j + 2}^T W{j + 2} - W{j + 1} W{j + 1}^T": (factors[j + 1].T @ factors[j + 1], factors[j] @ factors[j].T)
            for j in range(self.depth - 1)
        }

    def describe(self):
        width = list(self.width) if isinstance(self.width, tuple) else self.width
        return {"name": "Deep", "depth": self.depth, "width": width}


PARAMETERIZATIONS = {"direct": Direct, "symmetric": Symmetric, "factored": Factored, "deep": Deep}
"""Parameterizations by the names the command line accepts."""
