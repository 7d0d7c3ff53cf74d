"""Measurement problems: the linear operator A, the data y and the loss L(W) = 1/2 ||A(W) - y||^2."""

from __future__ import annotations

import abc

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, Float, Int

from ._random import orthonormal_columns

from ._validate import check_finite, check_positive_int


class AbstractProblem(eqx.Module):
    r"""A linear measurement problem on n1 x n2 matrices.

    $\mathcal{A}(W)_i = \langle A_i, W \rangle$ for $i = 1..m$, residual $r = \mathcal{A}(W) - y$,
    loss $L(W) = \tfrac12 \|r\|^2$ (un-normalised, so time units match the seed literature) and
    gradient $\nabla L(W) = \mathcal{A}^*(r) = \sum_i r_i A_i$.

    Concrete problems differ only in how they store $\mathcal{A}$. `truth` is the ground truth
    where the constructor made one (NaN-free array), else None.
    """

    y: Float[Array, " m"]
    truth: Float[Array, "n1 n2"] | None
    shape: tuple[int, int] = eqx.field(static=True)
    symmetric: bool = eqx.field(static=True)

    @abc.abstractmethod
    def measure(self, W: Float[Array, "n1 n2"]) -> Float[Array, " m"]:
        r"""$\mathcal{A}(W)$."""

    @abc.abstractmethod
    def adjoint(self, r: Float[Array, " m"]) -> Float[Array, "n1 n2"]:
        r"""$\mathcal{A}^*(r) = \sum_i r_i A_i$."""

    @abc.abstractmethod
    def matrices(self) -> Float[Array, "m n1 n2"]:
        """The measurement matrices A_i, densely (for references and small problems only)."""

    @property
    def m(self) -> int:
        return self.y.shape[0]

    def residual(self, W: Float[Array, "n1 n2"]) -> Float[Array, " m"]:
        return self.measure(W) - self.y

    def loss(self, W: Float[Array, "n1 n2"]) -> Float[Array, ""]:
        r = self.residual(W)
        return 0.5 * jnp.vdot(r, r)

    def grad(self, W: Float[Array, "n1 n2"]) -> Float[Array, "n1 n2"]:
        r"""$\nabla L(W) = \mathcal{A}^*(\mathcal{A}(W) - y)$."""
        return self.adjoint(self.residual(W))

    def kernel(self, pullback, terms) -> Float[Array, "m m"]:
        r"""$\Theta_{ik} = \langle \phi'^* A_i, \phi'^* A_k \rangle$ given `pullback` $G \mapsto \phi'^* G$.

        `terms` is the parameterization's sandwich form of $\phi'\phi'^*$ (or None), for problems that can
        use it; this default forms the m pullbacks of the dense $A_i$, $O(m^2 p)$.
        """
        rows = jax.vmap(lambda A: ravel_pytree(pullback(A))[0])(self.matrices())
        return rows @ rows.T

    def gram(self) -> Float[Array, "m m"]:
        r"""$G_{ij} = \langle A_i, A_j \rangle$; the residual of the direct flow obeys $r' = -G r$."""
        A = self.matrices().reshape(self.m, -1)
        return A @ A.T

    # The public constructors of the contract: Problem.from_matrices / Problem.from_entries.
    @staticmethod
    def from_matrices(A, y, truth=None, symmetric: bool | None = None) -> "DenseProblem":
        """A problem from dense measurement matrices A (m, n1, n2) and data y (m,)."""
        A = np.asarray(A, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        if A.ndim != 3:
            raise ValueError(f"A must have shape (m, n1, n2); got shape {A.shape}")
        if A.shape[0] == 0:
            raise ValueError("A has m = 0 measurements; at least one is needed")
        if y.shape != (A.shape[0],):
            raise ValueError(f"y must have shape (m,) = ({A.shape[0]},) to match A; got {y.shape}")
        check_finite("A", A)
        check_finite("y", y)
        if symmetric is None:
            symmetric = A.shape[1] == A.shape[2] and bool(np.allclose(A, A.transpose(0, 2, 1)))
        elif symmetric and (A.shape[1] != A.shape[2] or not np.allclose(A, A.transpose(0, 2, 1))):
            raise ValueError("symmetric=True needs square, symmetric A_i")
        return DenseProblem(A=jnp.asarray(A), y=jnp.asarray(y), truth=_as_truth(truth, A.shape[1:]),
                            shape=(A.shape[1], A.shape[2]), symmetric=symmetric)

    @staticmethod
    def from_entries(shape, rows, cols, values, truth=None) -> "EntryProblem":
        """A completion problem: observe W[rows[i], cols[i]] = values[i]."""
        shape = _check_shape(shape)
        rows = np.asarray(rows)
        cols = np.asarray(cols)
        values = np.asarray(values, dtype=np.float64)
        if not (rows.ndim == cols.ndim == values.ndim == 1 and rows.shape == cols.shape == values.shape):
            raise ValueError("rows, cols and values must be 1-d arrays of one length; got shapes "
                             f"{rows.shape}, {cols.shape}, {values.shape}")
        m = rows.shape[0]
        if m == 0:
            raise ValueError("no entries observed (m = 0); at least one is needed")
        if not (np.issubdtype(rows.dtype, np.integer) and np.issubdtype(cols.dtype, np.integer)):
            raise ValueError("rows and cols must be integer indices")
        if rows.min() < 0 or rows.max() >= shape[0] or cols.min() < 0 or cols.max() >= shape[1]:
            raise ValueError(f"entry indices out of range for shape {shape}")
        _check_entry_count(m, shape)
        if len(np.unique(rows * shape[1] + cols)) != m:
            raise ValueError("an entry is observed twice; pass each (row, col) once")
        check_finite("values", values)
        return EntryProblem(rows=jnp.asarray(rows, dtype=jnp.int32), cols=jnp.asarray(cols, dtype=jnp.int32),
                            y=jnp.asarray(values), truth=_as_truth(truth, shape), shape=shape, symmetric=False)


class DenseProblem(AbstractProblem):
    """Measurements stored as a dense stack A of shape (m, n1, n2)."""

    A: Float[Array, "m n1 n2"]

    def measure(self, W):
        return jnp.einsum("mij,ij->m", self.A, W)

    def adjoint(self, r):
        return jnp.einsum("m,mij->ij", r, self.A)

    def matrices(self):
        return self.A


class CommutingProblem(AbstractProblem):
    r"""Symmetric measurements sharing one eigenbasis: $A_i = Q \operatorname{diag}(d_i) Q^T$.

    Stored in that form, so $\mathcal{A}(W)_i = \sum_k d_{ik} (Q^T W Q)_{kk}$ costs one rotation.
    """

    basis: Float[Array, "n n"]
    spectra: Float[Array, "m n"]

    def measure(self, W):
        return self.spectra @ jnp.einsum("ik,ij,jk->k", self.basis, W, self.basis)

    def adjoint(self, r):
        return (self.basis * (r @ self.spectra)) @ self.basis.T

    def matrices(self):
        return jnp.einsum("ik,mk,jk->mij", self.basis, self.spectra, self.basis)


class EntryProblem(AbstractProblem):
    """Matrix completion: A_i = e_{rows[i]} e_{cols[i]}^T, kept as index lists, never dense."""

    rows: Int[Array, " m"]
    cols: Int[Array, " m"]

    def measure(self, W):
        return W[self.rows, self.cols]

    def adjoint(self, r):
        return jnp.zeros(self.shape, r.dtype).at[self.rows, self.cols].add(r)

    def matrices(self):
        return jnp.zeros((self.m, *self.shape)).at[jnp.arange(self.m), self.rows, self.cols].set(1.0)

    def kernel(self, pullback, terms):
        r"""From the sandwich form by gathers, $O(m^2)$: $\Theta_{ik} = \sum (L\,\mathrm{op}(E_k)\,R)_{a_i b_i}$."""
        if terms is None:
            return super().kernel(pullback, terms)
        a, b = self.rows, self.cols
        theta = 0.0
        for L, R, transposed in terms:
            if transposed:
                theta = theta + L[a[:, None], b[None, :]] * R[a[None, :], b[:, None]]
            else:
                theta = theta + L[a[:, None], a[None, :]] * R[b[None, :], b[:, None]]
        return theta

    def gram(self):
        # Distinct entries are orthonormal: G = I without forming the m x n1 x n2 stack.
        return jnp.eye(self.m)


Problem = AbstractProblem
"""The public name of the problem type; `Problem.from_matrices` and `Problem.from_entries` build one."""


def _check_shape(shape) -> tuple[int, int]:
    try:
        n1, n2 = (int(s) for s in shape)
    except (TypeError, ValueError):
        raise ValueError(f"shape must be a pair (n1, n2); got {shape!r}") from None
    check_positive_int("shape[0]", n1)
    check_positive_int("shape[1]", n2)
    return n1, n2


def _as_truth(truth, shape):
    if truth is None:
        return None
    truth = np.asarray(truth, dtype=np.float64)
    if truth.shape != tuple(shape):
        raise ValueError(f"truth must have shape {tuple(shape)}; got {truth.shape}")
    check_finite("truth", truth)
    return jnp.asarray(truth)


def check_sizes(kind: str, n: int, m: int, rank: int, n2: int | None = None, symmetric: bool = True,
                truth_norm: float = 1.0) -> tuple[int, int]:
    """The shared checks of the random problem constructors; returns the shape (n1, n2)."""
    check_positive_int("n", n)
    n2 = n if n2 is None else n2
    check_positive_int("n2", n2)
    check_positive_int("m", m)
    check_positive_int("rank", rank)
    if rank > min(n, n2):
        raise ValueError(f"rank = {rank} exceeds min(n1, n2) = {min(n, n2)}")
    if symmetric and n2 != n:
        raise ValueError(f"symmetric {kind} needs a square matrix (n2 = n)")
    if not (np.isfinite(truth_norm) and truth_norm > 0):
        raise ValueError(f"truth_norm must be a positive finite number; got {truth_norm}")
    return n, n2


def _check_entry_count(m: int, shape: tuple[int, int]) -> None:
    if m > shape[0] * shape[1]:
        raise ValueError(f"m = {m} observations exceed the {shape[0] * shape[1]} entries of a "
                         f"{shape[0]} x {shape[1]} matrix")


def low_rank_truth(rng: np.random.Generator, n1: int, n2: int, rank: int, symmetric: bool,
                   truth_norm: float) -> np.ndarray:
    """W* = Z Z^T (PSD) or Z1 Z2^T with Gaussian factors, scaled to ||W*||_F = truth_norm."""
    Z1 = rng.standard_normal((n1, rank))
    Z2 = Z1 if symmetric else rng.standard_normal((n2, rank))
    W = Z1 @ Z2.T
    return truth_norm * W / np.linalg.norm(W)


def sensing(n: int, m: int, rank: int, seed: int = 0, symmetric: bool = True, n2: int | None = None,
            truth_norm: float = 1.0, noise: float = 0.0) -> DenseProblem:
    r"""Gaussian matrix sensing.

    $A_i$ has i.i.d. N(0, 1) entries, symmetrised to $(G + G^T)/2$ when `symmetric` (then the truth is
    PSD, $W^* = Z Z^T$ scaled to $\|W^*\|_F$ = `truth_norm`); otherwise $W^* = Z_1 Z_2^T$ of shape
    (n, n2). $y = \mathcal{A}(W^*) + \text{noise} \cdot \xi$. More measurements than unknowns is allowed
    (an over-determined problem is still a valid one).
    """
    n1, n2 = check_sizes("sensing", n, m, rank, n2, symmetric, truth_norm)
    if not (np.isfinite(noise) and noise >= 0):
        raise ValueError(f"noise must be a non-negative finite number; got {noise}")
    rng = np.random.default_rng(seed)
    truth = low_rank_truth(rng, n1, n2, rank, symmetric, truth_norm)
    G = rng.standard_normal((m, n1, n2))
    A = 0.5 * (G + G.transpose(0, 2, 1)) if symmetric else G
    y = np.einsum("mij,ij->m", A, truth) + noise * rng.standard_normal(m)
    return DenseProblem(A=jnp.asarray(A), y=jnp.asarray(y), truth=jnp.asarray(truth), shape=(n1, n2),
                        symmetric=symmetric)


def completion(n: int, m: int, rank: int, seed: int = 0, symmetric: bool = True, n2: int | None = None,
               truth_norm: float = 1.0) -> EntryProblem:
    """Matrix completion: `m` entries of a rank-`rank` truth, sampled uniformly without replacement.

    The truth is PSD (Z Z^T) when `symmetric`, else Z1 Z2^T of shape (n, n2); ||W*||_F = `truth_norm`.
    Stored as index lists, so n = 1000 with 10^4 observations costs O(m) per measurement.
    """
    n1, n2 = check_sizes("completion", n, m, rank, n2, symmetric, truth_norm)
    _check_entry_count(m, (n1, n2))
    rng = np.random.default_rng(seed)
    truth = low_rank_truth(rng, n1, n2, rank, symmetric, truth_norm)
    flat = np.sort(rng.choice(n1 * n2, size=m, replace=False))
    rows, cols = np.divmod(flat, n2)
    return EntryProblem(rows=jnp.asarray(rows, dtype=jnp.int32), cols=jnp.asarray(cols, dtype=jnp.int32),
                        y=jnp.asarray(truth[rows, cols]), truth=jnp.asarray(truth), shape=(n1, n2),
                        symmetric=False)


def commuting(n: int, m: int, rank: int, seed: int = 0, truth_norm: float = 1.0) -> CommutingProblem:
    r"""Symmetric measurements that commute: $A_i = Q \operatorname{diag}(d_i) Q^T$, one random orthogonal Q.

    $d_i$ has i.i.d. N(0, 1) entries; the truth is PSD of rank `rank`, $W^* = Q_r D Q_r^T$ in the same
    eigenbasis (a generic PSD truth would only be seen through its diagonal in that basis).
    """
    check_sizes("commuting", n, m, rank, truth_norm=truth_norm)
    rng = np.random.default_rng(seed)
    Q = orthonormal_columns(rng, n, n)
    spectra = rng.standard_normal((m, n))
    eig = np.zeros(n)
    eig[rng.choice(n, size=rank, replace=False)] = rng.uniform(0.5, 1.5, size=rank)
    eig *= truth_norm / np.linalg.norm(eig)
    truth = (Q * eig) @ Q.T
    return CommutingProblem(basis=jnp.asarray(Q), spectra=jnp.asarray(spectra), y=jnp.asarray(spectra @ eig),
                            truth=jnp.asarray(truth), shape=(n, n), symmetric=True)
