"""Measurement problems: the linear operator A, the data y and the loss L(W) = 1/2 ||A(W) - y||^2.

Every constructor estimates the memory it is about to allocate and, beyond what the machine has
available, refuses before allocating anything: a ValueError with the size in GiB and what to use
instead (`check_fits`).
"""

from __future__ import annotations

import abc

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, Float, Int

from ._random import orthonormal_columns
from ._validate import check_finite, check_fits, check_nonnegative, check_positive, check_positive_int, check_seed

FLOAT = 8
"""Bytes per float64 entry, for the memory estimates the constructors check before allocating."""

DENSE_ALTERNATIVE = (
    "use flows.rank_one_sensing (rank-one measurements a_i b_i^T, O(m n) memory) or "
    "flows.completion (index lists) instead"
)
"""What to use instead of a dense measurement stack that does not fit."""


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
    def measure(self, W: Float[Array | np.ndarray, "n1 n2"]) -> Float[Array, " m"]:
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

    def residual(self, W: Float[Array | np.ndarray, "n1 n2"]) -> Float[Array, " m"]:
        return self.measure(W) - self.y

    def loss(self, W: Float[Array | np.ndarray, "n1 n2"]) -> Float[Array, ""]:
        r = self.residual(W)
        return 0.5 * jnp.vdot(r, r)

    def grad(self, W: Float[Array | np.ndarray, "n1 n2"]) -> Float[Array, "n1 n2"]:
        r"""$\nabla L(W) = \mathcal{A}^*(\mathcal{A}(W) - y)$."""
        return self.adjoint(self.residual(W))

    def loss_floor(self) -> "LossFloor | None":
        r"""A lower bound of the loss cheaper than the loss (`LossFloor`), or None where measuring W costs no more
        than the bound does. It assumes the loss above ($\tfrac12 \|r\|^2$ with `measure` linear and `adjoint` its
        adjoint): a problem that changes the loss returns None or its own bound."""
        return LossFloor.of(self)

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
        shape = np.shape(A)
        if len(shape) == 3:
            # A float64 copy unless A is one already, and the finiteness check's mask of one byte per entry.
            copy = 0 if getattr(A, "dtype", None) == np.float64 else FLOAT
            check_fits(
                f"Problem.from_matrices of {shape[0]} dense {shape[1]} x {shape[2]} matrices",
                np.prod(shape, dtype=np.int64) * (copy + 1),
                DENSE_ALTERNATIVE,
            )
        if np.iscomplexobj(A) or np.iscomplexobj(y):
            raise ValueError("A and y must be real: the flows are real, and a complex part would be dropped")
        A = np.asarray(A, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        if A.ndim != 3:
            raise ValueError(f"A must have shape (m, n1, n2); got shape {A.shape}")
        if A.shape[0] == 0:
            raise ValueError("A has m = 0 measurements; at least one is needed")
        if A.shape[1] == 0 or A.shape[2] == 0:
            raise ValueError(f"the measured matrix must have n1, n2 >= 1; A has shape {A.shape}")
        if y.shape != (A.shape[0],):
            raise ValueError(f"y must have shape (m,) = ({A.shape[0]},) to match A; got {y.shape}")
        check_finite("A", A)
        check_finite("y", y)
        if symmetric is None:
            symmetric = _symmetric_stack(A)
        elif symmetric and not _symmetric_stack(A):
            raise ValueError("symmetric=True needs square, symmetric A_i")
        return DenseProblem(
            A=jnp.asarray(A),
            y=jnp.asarray(y),
            truth=_as_truth(truth, A.shape[1:]),
            shape=(A.shape[1], A.shape[2]),
            symmetric=symmetric,
        )

    @staticmethod
    def from_entries(shape, rows, cols, values, truth=None) -> "EntryProblem":
        """A completion problem: observe W[rows[i], cols[i]] = values[i]."""
        shape = _check_shape(shape)
        rows = np.asarray(rows)
        cols = np.asarray(cols)
        values = np.asarray(values, dtype=np.float64)
        if not (rows.ndim == cols.ndim == values.ndim == 1 and rows.shape == cols.shape == values.shape):
            raise ValueError(
                "rows, cols and values must be 1-d arrays of one length; got shapes "
                f"{rows.shape}, {cols.shape}, {values.shape}"
            )
        m = rows.shape[0]
        if m == 0:
            raise ValueError("no entries observed (m = 0); at least one is needed")
        if not (np.issubdtype(rows.dtype, np.integer) and np.issubdtype(cols.dtype, np.integer)):
            raise ValueError("rows and cols must be integer indices")
        if rows.min() < 0 or rows.max() >= shape[0] or cols.min() < 0 or cols.max() >= shape[1]:
            raise ValueError(f"entry indices out of range for shape {shape}")
        _check_entry_count(m, shape)
        # The flat indices and np.unique's sorted copy and flags, the stored arrays; a dense truth if given.
        truth_bytes = 0 if truth is None else _truth_bytes(*shape)
        check_fits(f"Problem.from_entries of {m} entries", 6 * FLOAT * m + truth_bytes, "use fewer entries")
        # int64: rows * n2 overflows int32 indices once n1 n2 > 2^31.
        if len(np.unique(rows.astype(np.int64) * shape[1] + cols)) != m:
            raise ValueError("an entry is observed twice; pass each (row, col) once")
        check_finite("values", values)
        return EntryProblem(
            rows=jnp.asarray(rows, dtype=jnp.int32),
            cols=jnp.asarray(cols, dtype=jnp.int32),
            y=jnp.asarray(values),
            truth=_as_truth(truth, shape),
            shape=shape,
            symmetric=False,
        )


class LossFloor(eqx.Module):
    r"""A lower bound of a problem's loss at the cost of one inner product of $n_1 \times n_2$ matrices.

    For the unit vector $u = y / \|y\|$, Cauchy-Schwarz gives
    $L(W) = \tfrac12 \|\mathcal{A}(W) - y\|^2 \ge \tfrac12 \langle u, \mathcal{A}(W) - y \rangle^2
    = \tfrac12 (\langle \mathcal{A}^*(u), W \rangle - \|y\|)^2$, where $\mathcal{A}(W)$ costs m such inner
    products on dense measurements. It equals the loss while the residual points along y (at W = 0) and falls behind
    it as the residual turns away from y: on the benchmarks' sensing flows from small initialisations (n = 30,
    m = 180) it stays above ten times a stop of 1e-10 until the loss is about 3e4 (U V^T), 1e5 (depth 3) and 1e7
    (U U^T) times the stop. `flows.solve` reads it to skip the loss where the stop is far (`FlowArgs.floor`)."""

    direction: Float[Array, "n1 n2"]
    r"""$\mathcal{A}^*(u)$."""
    offset: Float[Array, ""]
    r"""$\|y\|$."""

    @property
    def resolution(self) -> Float[Array, ""]:
        r"""$(n_1 n_2 \, \epsilon \, \|y\|)^2$: generously, what the floor and the loss are known to near an
        interpolating W, where both are round-off ($\langle \mathcal{A}^*(u), W \rangle$ and
        $\mathcal{A}(W)$ cancel against y); below it the floor tells nothing (inf where $\|y\|$ overflows)."""
        return (self.direction.size * jnp.finfo(self.direction.dtype).eps * self.offset) ** 2

    @classmethod
    def of(cls, problem: "AbstractProblem") -> "LossFloor":
        norm = jnp.linalg.norm(problem.y)
        # y = 0: the bound (<0, W> - 0)^2 / 2 = 0, true and never above a positive threshold.
        unit = problem.y / jnp.where(norm > 0, norm, 1.0)
        return cls(problem.adjoint(unit), norm)

    def __call__(self, W: Float[Array, "n1 n2"]) -> Float[Array, ""]:
        return 0.5 * (jnp.vdot(self.direction, W) - self.offset) ** 2


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

    def loss_floor(self):
        # Measuring is a gather of m entries: the loss costs no more than the bound's inner product.
        return None

    def kernel(self, pullback, terms):
        r"""From the sandwich form by gathers, $O(m^2)$: $\Theta_{ik} = \sum (L\,\mathrm{op}(E_k)\,R)_{a_i b_i}$."""
        if terms is None:
            return super().kernel(pullback, terms)
        a, b = self.rows, self.cols
        theta = jnp.zeros((self.m, self.m))
        for L, R, transposed in terms:
            if transposed:
                theta = theta + L[a[:, None], b[None, :]] * R[a[None, :], b[:, None]]
            else:
                theta = theta + L[a[:, None], a[None, :]] * R[b[None, :], b[:, None]]
        return theta

    def gram(self):
        # <E_ab, E_cd> = 1 exactly where the entries coincide: I for distinct entries (as the public constructors
        # ensure), without forming the m x n1 x n2 stack.
        same = (self.rows[:, None] == self.rows[None, :]) & (self.cols[:, None] == self.cols[None, :])
        return same.astype(jnp.float64)


class RankOneProblem(AbstractProblem):
    r"""Rank-one measurements $A_i = a_i b_i^T$, stored as the vectors: $O(m (n_1 + n_2))$ memory, never m x n1 x n2.

    With the $a_i$, $b_i$ the rows of `left` (m, n1) and `right` (m, n2):
    $\mathcal{A}(W)_i = a_i^T W b_i$ and $\mathcal{A}^*(r) = \sum_i r_i a_i b_i^T = A^T \operatorname{diag}(r) B$,
    each $O(m n_1 n_2)$ time as with the dense stack, from $n_1 n_2 / (n_1 + n_2)$ times less memory.
    `right` is None for the symmetric kind $A_i = a_i a_i^T$ (then `symmetric`)."""

    left: Float[Array, "m n1"]
    right: Float[Array, "m n2"] | None

    @property
    def vectors(self) -> tuple[Float[Array, "m n1"], Float[Array, "m n2"]]:
        """(A, B): the $a_i$ and the $b_i$ as rows (B is A for the symmetric kind)."""
        return self.left, self.left if self.right is None else self.right

    def measure(self, W):
        a, b = self.vectors
        return jnp.einsum("mj,mj->m", a @ W, b)

    def adjoint(self, r):
        a, b = self.vectors
        return (a.T * r) @ b

    def matrices(self):
        a, b = self.vectors
        return a[:, :, None] * b[:, None, :]

    def kernel(self, pullback, terms):
        r"""From the sandwich form, $O(m n^2 + m^2 n)$ per term: $L A_k R = (L a_k)(R^T b_k)^T$ gives
        $\Theta_{ik} = \sum (a_i^T L a_k)(b_k^T R b_i)$, and a transposed term ($\mathrm{op}(A_k) = b_k a_k^T$)
        $(a_i^T L b_k)(a_k^T R b_i)$."""
        if terms is None:
            return super().kernel(pullback, terms)
        a, b = self.vectors
        theta = jnp.zeros((self.m, self.m))
        for L, R, transposed in terms:
            if transposed:
                theta = theta + (a @ L @ b.T) * (a @ R @ b.T).T
            else:
                theta = theta + (a @ L @ a.T) * (b @ R.T @ b.T)
        return theta

    def gram(self):
        # <a_i b_i^T, a_j b_j^T> = (a_i . a_j)(b_i . b_j), without the dense stack.
        a, b = self.vectors
        return (a @ a.T) * (b @ b.T)


Problem = AbstractProblem
"""The public name of the problem type; `Problem.from_matrices` and `Problem.from_entries` build one."""


def _check_shape(shape) -> tuple[int, int]:
    try:
        n1, n2 = shape
    except (TypeError, ValueError):
        raise ValueError(f"shape must be a pair (n1, n2); got {shape!r}") from None
    return check_positive_int("shape[0]", n1), check_positive_int("shape[1]", n2)


def _symmetric_stack(A: np.ndarray) -> bool:
    """Whether every A_i is square and symmetric, one at a time (np.allclose of the whole stack would
    hold several copies of it)."""
    return A.shape[1] == A.shape[2] and all(np.allclose(Ai, Ai.T) for Ai in A)


def _as_truth(truth, shape):
    if truth is None:
        return None
    truth = np.asarray(truth, dtype=np.float64)
    if truth.shape != tuple(shape):
        raise ValueError(f"truth must have shape {tuple(shape)}; got {truth.shape}")
    check_finite("truth", truth)
    return jnp.asarray(truth)


def check_sizes(
    kind: str, n: int, m: int, rank: int, n2: int | None = None, symmetric: bool = True, truth_norm: float = 1.0
) -> tuple[int, int]:
    """The shared checks of the random problem constructors; returns the shape (n1, n2)."""
    n = check_positive_int("n", n)
    n2 = check_positive_int("n2", n if n2 is None else n2)
    check_positive_int("m", m)
    check_positive_int("rank", rank)
    if rank > min(n, n2):
        raise ValueError(f"rank = {rank} exceeds min(n1, n2) = {min(n, n2)}")
    if symmetric and n2 != n:
        raise ValueError(f"symmetric {kind} needs a square matrix (n2 = n)")
    check_positive("truth_norm", truth_norm)
    return n, n2


def _check_entry_count(m: int, shape: tuple[int, int]) -> None:
    if m > shape[0] * shape[1]:
        raise ValueError(
            f"m = {m} observations exceed the {shape[0] * shape[1]} entries of a {shape[0]} x {shape[1]} matrix"
        )


def _truth_bytes(n1: int, n2: int) -> int:
    """The peak of `low_rank_truth` and `_as_truth`: the product and two scaled copies of it."""
    return 3 * FLOAT * n1 * n2


def low_rank_truth(
    rng: np.random.Generator, n1: int, n2: int, rank: int, symmetric: bool, truth_norm: float
) -> np.ndarray:
    """W* = Z Z^T (PSD) or Z1 Z2^T with Gaussian factors, scaled to ||W*||_F = truth_norm."""
    Z1 = rng.standard_normal((n1, rank))
    Z2 = Z1 if symmetric else rng.standard_normal((n2, rank))
    W = Z1 @ Z2.T
    return truth_norm * W / np.linalg.norm(W)


def sensing(
    n: int,
    m: int,
    rank: int,
    seed: int = 0,
    symmetric: bool = True,
    n2: int | None = None,
    truth_norm: float = 1.0,
    noise: float = 0.0,
) -> DenseProblem:
    r"""Gaussian matrix sensing.

    $A_i$ has i.i.d. N(0, 1) entries, symmetrised to $(G + G^T)/2$ when `symmetric` (then the truth is
    PSD, $W^* = Z Z^T$ scaled to $\|W^*\|_F$ = `truth_norm`); otherwise $W^* = Z_1 Z_2^T$ of shape
    (n, n2). $y = \mathcal{A}(W^*) + \text{noise} \cdot \xi$. More measurements than unknowns is allowed
    (an over-determined problem is still a valid one). The m dense $n_1 \times n_2$ matrices take
    $8 m n_1 n_2$ bytes (n = 1000, m = 20,000: 149 GiB, refused where it does not fit):
    `rank_one_sensing` is the $O(m n)$ alternative.
    """
    n1, n2 = check_sizes("sensing", n, m, rank, n2, symmetric, truth_norm)
    noise = check_nonnegative("noise", noise)
    check_fits(
        f"Gaussian sensing with m = {m} dense {n1} x {n2} measurement matrices",
        FLOAT * m * n1 * n2 + _truth_bytes(n1, n2),
        DENSE_ALTERNATIVE,
    )
    rng = np.random.default_rng(check_seed(seed))
    truth = low_rank_truth(rng, n1, n2, rank, symmetric, truth_norm)
    A = rng.standard_normal((m, n1, n2))
    if symmetric:
        # (G + G^T) / 2 in place, one n x n temporary at a time (the same values as out of place).
        for Ai in A:
            Ai += Ai.T
        A *= 0.5
    y = np.einsum("mij,ij->m", A, truth) + noise * rng.standard_normal(m)
    return DenseProblem(
        A=jnp.asarray(A), y=jnp.asarray(y), truth=jnp.asarray(truth), shape=(n1, n2), symmetric=symmetric
    )


def completion(
    n: int, m: int, rank: int, seed: int = 0, symmetric: bool = True, n2: int | None = None, truth_norm: float = 1.0
) -> EntryProblem:
    """Matrix completion: `m` entries of a rank-`rank` truth, sampled uniformly without replacement.

    The truth is PSD (Z Z^T) when `symmetric`, else Z1 Z2^T of shape (n, n2); ||W*||_F = `truth_norm`.
    Stored as index lists, so n = 1000 with 10^4 observations costs O(m) per measurement.
    """
    n1, n2 = check_sizes("completion", n, m, rank, n2, symmetric, truth_norm)
    _check_entry_count(m, (n1, n2))
    # The dense truth, the index draw (a permutation of all n1 n2 entries once m > n1 n2 / 50) and the index lists.
    check_fits(
        f"completion of a dense {n1} x {n2} truth",
        _truth_bytes(n1, n2) + FLOAT * (n1 * n2 + 6 * m),
        "use a smaller n (the truth is a dense n1 x n2 matrix)",
    )
    rng = np.random.default_rng(check_seed(seed))
    truth = low_rank_truth(rng, n1, n2, rank, symmetric, truth_norm)
    flat = np.sort(rng.choice(n1 * n2, size=m, replace=False))
    rows, cols = np.divmod(flat, n2)
    return EntryProblem(
        rows=jnp.asarray(rows, dtype=jnp.int32),
        cols=jnp.asarray(cols, dtype=jnp.int32),
        y=jnp.asarray(truth[rows, cols]),
        truth=jnp.asarray(truth),
        shape=(n1, n2),
        symmetric=False,
    )


def commuting(n: int, m: int, rank: int, seed: int = 0, truth_norm: float = 1.0) -> CommutingProblem:
    r"""Symmetric measurements that commute: $A_i = Q \operatorname{diag}(d_i) Q^T$, one random orthogonal Q.

    $d_i$ has i.i.d. N(0, 1) entries; the truth is PSD of rank `rank`, $W^* = Q_r D Q_r^T$ in the same
    eigenbasis (a generic PSD truth would only be seen through its diagonal in that basis).
    """
    check_sizes("commuting", n, m, rank, truth_norm=truth_norm)
    # The spectra, and the basis with its QR's workspace and the truth.
    check_fits(
        f"commuting measurements with m = {m} spectra of length {n}",
        FLOAT * (m * n + 6 * n * n + 2 * m),
        "use a smaller n or m",
    )
    rng = np.random.default_rng(check_seed(seed))
    Q = orthonormal_columns(rng, n, n)
    spectra = rng.standard_normal((m, n))
    eig = np.zeros(n)
    eig[rng.choice(n, size=rank, replace=False)] = rng.uniform(0.5, 1.5, size=rank)
    eig *= truth_norm / np.linalg.norm(eig)
    truth = (Q * eig) @ Q.T
    return CommutingProblem(
        basis=jnp.asarray(Q),
        spectra=jnp.asarray(spectra),
        y=jnp.asarray(spectra @ eig),
        truth=jnp.asarray(truth),
        shape=(n, n),
        symmetric=True,
    )


def rank_one_sensing(
    n: int,
    m: int,
    rank: int,
    seed: int = 0,
    symmetric: bool = True,
    n2: int | None = None,
    truth_norm: float = 1.0,
    noise: float = 0.0,
) -> RankOneProblem:
    r"""Rank-one sensing: $A_i = a_i b_i^T$, or $a_i a_i^T$ when `symmetric`, $a_i, b_i$ with i.i.d. N(0, 1) entries.

    Stored as the vectors (`RankOneProblem`): $O(m (n_1 + n_2))$ memory where `sensing`'s dense stack
    takes $O(m n_1 n_2)$; at n = 1000, m = 20,000 that is 0.15 GiB against 149 GiB. The truth is drawn
    as in `sensing` (PSD $Z Z^T$ when `symmetric`, else $Z_1 Z_2^T$ of shape (n, n2), $\|W^*\|_F$ =
    `truth_norm`) and $y = \mathcal{A}(W^*) + \text{noise} \cdot \xi$. For independent $a_i, b_i$,
    $\mathbb{E} \langle A_i, W \rangle^2 = \|W\|_F^2$, as for Gaussian sensing; for $a_i a_i^T$ it is
    $(\operatorname{tr} W)^2 + 2 \|W\|_F^2$.
    """
    n1, n2 = check_sizes("rank-one sensing", n, m, rank, n2, symmetric, truth_norm)
    noise = check_nonnegative("noise", noise)
    vectors = m * (n1 if symmetric else n1 + n2)
    # The vectors, the m x n2 product A W* that measures the truth, and the truth.
    check_fits(
        f"rank-one sensing with m = {m} measurements of {n1} x {n2} matrices",
        FLOAT * (vectors + m * n2 + 2 * m) + _truth_bytes(n1, n2),
        "use a smaller m or n",
    )
    rng = np.random.default_rng(check_seed(seed))
    truth = low_rank_truth(rng, n1, n2, rank, symmetric, truth_norm)
    left = rng.standard_normal((m, n1))
    right = None if symmetric else rng.standard_normal((m, n2))
    y = np.einsum("mj,mj->m", left @ truth, left if right is None else right) + noise * rng.standard_normal(m)
    return RankOneProblem(
        left=jnp.asarray(left),
        right=None if symmetric else jnp.asarray(right),
        y=jnp.asarray(y),
        truth=jnp.asarray(truth),
        shape=(n1, n2),
        symmetric=symmetric,
    )
