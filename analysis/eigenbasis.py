r"""The shared-eigenbasis claim: from $W_0 = \alpha^2 I$ with commuting $A_i$, W(t) is a function of the $A_i$.

Then W commutes with every $A_i$ and is diagonal in their common eigenbasis Q for all t. Measured along a
trajectory by two numbers per saved time:

* commutator: $\max_i \|W A_i - A_i W\|_F / (\|W\|_F \|A_i\|_F)$;
* misalignment: $\|\operatorname{offdiag}(Q^T W Q)\|_F / \|W\|_F$, zero exactly when the columns of Q are
  eigenvectors of W (this avoids matching eigenvectors, which are not unique where eigenvalues repeat,
  as they do at $\alpha^2 I$).

For non-commuting sensing there is no common basis; the misalignment is then measured against the
eigenbasis of $A_1$, the basis the claim would force W to share.
"""

from __future__ import annotations

import dataclasses

import numpy as np

import flows


@dataclasses.dataclass(frozen=True)
class EigenbasisReport:
    """Commutators and misalignment over time (arrays of length T) and their maxima over t > 0."""

    ts: np.ndarray
    commutator: np.ndarray
    misalignment: np.ndarray

    @property
    def max_commutator(self) -> float:
        return float(np.max(self.commutator))

    @property
    def max_misalignment(self) -> float:
        return float(np.max(self.misalignment))


def reference_basis(problem: flows.AbstractProblem) -> np.ndarray:
    """The common eigenbasis Q of a `CommutingProblem`; for any other symmetric problem, that of A_1."""
    if isinstance(problem, flows.CommutingProblem):
        return np.asarray(problem.basis)
    if not problem.symmetric:
        raise ValueError("the eigenbasis claim is about symmetric measurements; this problem is not symmetric")
    return np.linalg.eigh(np.asarray(problem.matrices()[0]))[1]


def eigenbasis_report(problem: flows.AbstractProblem, traj: flows.Trajectory) -> EigenbasisReport:
    """Commutators with every A_i and misalignment with `reference_basis` along a trajectory."""
    A = np.asarray(problem.matrices())
    W = traj.W
    W_norm = np.linalg.norm(W, axis=(-2, -1))
    # [W, A_i] for every t and i at once: (T, m, n, n) would be large, so loop over i.
    commutator = np.zeros(len(W))
    for Ai in A:
        C = W @ Ai - Ai @ W
        commutator = np.maximum(commutator, np.linalg.norm(C, axis=(-2, -1)) / (W_norm * np.linalg.norm(Ai)))
    Q = reference_basis(problem)
    rotated = Q.T @ W @ Q
    off = rotated - np.einsum("tii->ti", rotated)[:, :, None] * np.eye(W.shape[-1])
    return EigenbasisReport(ts=traj.ts, commutator=commutator, misalignment=np.linalg.norm(off, axis=(-2, -1)) / W_norm)
