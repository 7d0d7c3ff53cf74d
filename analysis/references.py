r"""Convex references for where flows converge: the interpolants theory says they pick.

Each returns a `Reference`: the matrix, its objective, the solver with the options it ran under, and the
measured relative feasibility $\|\mathcal{A}(X) - y\| / \|y\|$, so a comparison can state how exact the
reference itself is.

* `min_nuclear_psd`: $\min \operatorname{tr} X$ s.t. $\mathcal{A}(X) = y$, $X \succeq 0$ (cvxpy, Clarabel).
* `min_nuclear`: $\min \|X\|_*$ s.t. $\mathcal{A}(X) = y$ (cvxpy; Clarabel, or SCS for large completions).
* `min_weighted_nuclear`: $\min \|D_1 X D_2\|_*$ s.t. $\mathcal{A}(X) = y$ (cvxpy; Clarabel or SCS).
* `commuting_lp`: for $A_i = Q \operatorname{diag}(d_i) Q^T$ the PSD problem restricted to the common
  eigenbasis, $\min 1^T \lambda$ s.t. $D \lambda = y$, $\lambda \ge 0$ (HiGHS via scipy.optimize.linprog).
  Pinching $X \mapsto Q \operatorname{diag}(\operatorname{diag}(Q^T X Q)) Q^T$ keeps trace, PSD-ness and
  every measurement, so this LP has the same optimal value as the SDP.
* `min_frobenius`: $\min \|X\|_F$ s.t. $\mathcal{A}(X) = y$, i.e. $\mathcal{A}^*(G^+ y)$ (numpy lstsq).
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

import cvxpy as cp
import numpy as np
import scipy.optimize

import flows

CLARABEL_OPTIONS = {"tol_gap_abs": 1e-10, "tol_gap_rel": 1e-10, "tol_feas": 1e-10, "max_iter": 500}
"""Clarabel's interior point run to 1e-10 gaps (its defaults are 1e-8): the comparisons need the reference
an order or two below the 1e-6..1e-4 distances they resolve. SCS at its defaults (1e-4) would not do."""

SCS_OPTIONS = {"eps_abs": 1e-8, "eps_rel": 1e-8, "max_iters": 100_000}
"""SCS (first-order, ADMM) at 1e-8, for problems Clarabel's interior point cannot hold: the nuclear-norm
completion at n = 100 is an SDP on the 200 x 200 PSD cone, where Clarabel ran over 10 minutes and 20 GB before
it was stopped while SCS takes seconds (at m = 2000 its eps 1e-6 and 1e-9 answers gave the same test error to 8
digits)."""

CVXPY_OPTIONS = {"CLARABEL": CLARABEL_OPTIONS, "SCS": SCS_OPTIONS}

HIGHS_OPTIONS = {"primal_feasibility_tolerance": 1e-10, "dual_feasibility_tolerance": 1e-10}


@dataclasses.dataclass(frozen=True)
class Reference:
    """A convex reference solution and how it was obtained."""

    X: np.ndarray
    objective: float
    solver: str
    options: dict[str, Any]
    status: str
    feasibility: float
    iterations: int | None = None
    """The solver's iteration count (None for a direct solve)."""

    def distance(self, W) -> float:
        r"""$\|W - X\|_F / \|X\|_F$."""
        return float(np.linalg.norm(np.asarray(W) - self.X) / np.linalg.norm(self.X))

    def describe(self) -> dict[str, Any]:
        return {
            "solver": self.solver,
            "options": self.options,
            "status": self.status,
            "objective": self.objective,
            "feasibility": self.feasibility,
            "iterations": self.iterations,
        }


def _feasibility(problem: flows.AbstractProblem, X: np.ndarray) -> float:
    r = np.asarray(problem.residual(np.asarray(X)))
    return float(np.linalg.norm(r) / np.linalg.norm(np.asarray(problem.y)))


def _measurement_constraint(problem: flows.AbstractProblem, X: cp.Expression) -> cp.Constraint:
    y = np.asarray(problem.y)
    if isinstance(problem, flows.EntryProblem):
        return X[np.asarray(problem.rows), np.asarray(problem.cols)] == y
    A = np.asarray(problem.matrices()).reshape(problem.m, -1)
    return A @ cp.vec(X, order="C") == y


def _solve_cvxpy(problem: flows.AbstractProblem, objective, X, constraints, solver: str) -> Reference:
    if solver not in CVXPY_OPTIONS:
        raise ValueError(f"solver must be one of {sorted(CVXPY_OPTIONS)}; got {solver!r}")
    program = cp.Problem(cp.Minimize(objective), constraints)
    with warnings.catch_warnings():
        # "Solution may be inaccurate": Clarabel stalls a little short of 1e-10 on these rank-deficient
        # SDPs (status optimal_inaccurate, ~1e-9 gaps); the status and measured feasibility are recorded.
        warnings.filterwarnings("ignore", message="Solution may be inaccurate", category=UserWarning)
        program.solve(solver=solver, **CVXPY_OPTIONS[solver])
    if X.value is None or program.status not in (cp.OPTIMAL, cp.OPTIMAL_INACCURATE):
        raise RuntimeError(f"cvxpy/{solver} did not solve the reference problem: status {program.status}")
    X_value = np.asarray(X.value)
    return Reference(
        X=X_value,
        objective=float(program.value),
        solver=solver,
        options=dict(CVXPY_OPTIONS[solver]),
        status=program.status,
        feasibility=_feasibility(problem, X_value),
        iterations=int(program.solver_stats.num_iters),
    )


def min_nuclear_psd(problem: flows.AbstractProblem) -> Reference:
    r"""The minimum-trace PSD interpolant: $\min \operatorname{tr} X$ s.t. $\mathcal{A}(X) = y$, $X \succeq 0$."""
    if problem.shape[0] != problem.shape[1]:
        raise ValueError(f"a PSD interpolant needs a square problem; got shape {problem.shape}")
    X = cp.Variable(problem.shape, PSD=True)
    return _solve_cvxpy(problem, cp.trace(X), X, [_measurement_constraint(problem, X)], "CLARABEL")


def min_nuclear(problem: flows.AbstractProblem, solver: str = "CLARABEL") -> Reference:
    r"""The minimum-nuclear-norm interpolant $\min \|X\|_*$ s.t. $\mathcal{A}(X) = y$ (`solver`: "CLARABEL"
    or "SCS", options in `CVXPY_OPTIONS`)."""
    X = cp.Variable(problem.shape)
    return _solve_cvxpy(problem, cp.normNuc(X), X, [_measurement_constraint(problem, X)], solver)


def min_weighted_nuclear(
    problem: flows.AbstractProblem, D1: np.ndarray, D2: np.ndarray, solver: str = "CLARABEL"
) -> Reference:
    r"""$\min \|D_1 X D_2\|_*$ s.t. $\mathcal{A}(X) = y$ (D1, D2 symmetric positive definite weights)."""
    X = cp.Variable(problem.shape)
    return _solve_cvxpy(
        problem, cp.normNuc(np.asarray(D1) @ X @ np.asarray(D2)), X, [_measurement_constraint(problem, X)], solver
    )


def commuting_lp(problem: flows.CommutingProblem) -> Reference:
    r"""$\min 1^T \lambda$ s.t. $D \lambda = y$, $\lambda \ge 0$; returns $X = Q \operatorname{diag}(\lambda) Q^T$."""
    if not isinstance(problem, flows.CommutingProblem):
        raise ValueError(f"problem must be a CommutingProblem; got {type(problem).__name__}")
    D = np.asarray(problem.spectra)
    result = scipy.optimize.linprog(
        np.ones(D.shape[1]), A_eq=D, b_eq=np.asarray(problem.y), bounds=(0, None), method="highs", options=HIGHS_OPTIONS
    )
    if result.status != 0:
        raise RuntimeError(f"linprog did not solve the commuting LP: {result.message}")
    Q = np.asarray(problem.basis)
    X = (Q * result.x) @ Q.T
    return Reference(
        X=X,
        objective=float(result.fun),
        solver="HiGHS (scipy.optimize.linprog)",
        options=dict(HIGHS_OPTIONS),
        status=result.message,
        feasibility=_feasibility(problem, X),
        iterations=int(result.nit),
    )


def min_frobenius(problem: flows.AbstractProblem) -> Reference:
    r"""The minimum-Frobenius-norm interpolant, the least-norm solution of the m x (n1 n2) linear system."""
    A = np.asarray(problem.matrices()).reshape(problem.m, -1)
    x, *_ = np.linalg.lstsq(A, np.asarray(problem.y), rcond=None)
    X = x.reshape(problem.shape)
    return Reference(
        X=X,
        objective=float(np.linalg.norm(x)),
        solver="numpy.linalg.lstsq",
        options={"rcond": None},
        status="least-norm solution",
        feasibility=_feasibility(problem, X),
    )
