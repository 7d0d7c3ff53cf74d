r"""What the project's own solvers share: the term they integrate and what they say about themselves.

`LinearisableTerm` is a Diffrax `ODETerm` that also answers the field's Gauss-Newton linearisation at a state
(`AbstractFlow.gauss_newton`) and, where the run ends at a loss, how much flow time is left until it gets there: the
linearly implicit solvers declare it as their `term_structure` and call `gauss_newton(terms, t, y, args)`, and the
switching solvers `time_to_stop(terms, t, y, f, args)`, so they get what they need through Diffrax's term API, not
by inspecting the flow. `flows.solve` integrates every flow through one. (Inside `diffeqsolve` Diffrax hands a
solver its terms wrapped for the direction of integration; `gauss_newton` reads the term inside. The flows are
integrated forward in time, where that wrapping leaves the field and its linearisation as they are.)

`AbstractFlowSolver` is the interface `flows.solve` reads from a solver, instead of checking its class:

* `lands_save_times`: whether its steps must land on the save times because its dense output is not accurate to
  the tolerance (the stiff solvers' cubic Hermite interpolant): `solve` then clips the steps to `ts` whatever
  step-size controller it was given;
* `report(solver_state)`: what its final state says about the run (switch time, linearisations, stages), merged
  into the trajectory's statistics;
* `measured_by(controller)`: the solver for a run under that step-size controller (`Tsit5ThenMerson` judges a trial
  step by the run's error measure; the others are themselves);
* `evaluations_per_step`: the field evaluations an attempted step costs where that is fixed (`Merson`'s 5), which
  the statistics' `vf_evaluations` counts; None where it varies.

Diffrax's own solvers are read as `lands_save_times = False` and report nothing; their evaluations per step come from
their Butcher tableau.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import diffrax
import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float, PyTree


class LinearisableTerm(diffrax.ODETerm):
    r"""$F(t, y, args)\,dt$ with the field's Gauss-Newton linearisation `linearisation(t, y, args)` (an
    `flows.AbstractGaussNewton`, or None where the field has none) and `remaining(t, y, f, args)`: an estimate of
    the flow time from (t, y), where the field is f, to the run's stop (inf where the run has none)."""

    linearisation: Callable = eqx.field(static=True)
    remaining: Callable = eqx.field(static=True, default=lambda t, y, f, args: jnp.inf)  # no stop

    def gauss_newton(self, t, y, args):
        """The Gauss-Newton linearisation at (t, y); ValueError (at trace time) where the field has none."""
        linear = self.linearisation(t, y, args)
        if linear is None:
            raise ValueError(
                "the linearly implicit solvers linearise a gradient flow of the data loss (its Gauss-Newton "
                "matrix): use a flow whose `gauss_newton` answers, e.g. a Flow with GradientFlow() dynamics and no "
                "penalty; for other flows use flows.LinearlyImplicitExtrapolation(linear_solver=flows.KrylovJacobian()) "
                "(exact Jacobian-vector products) or flows.RungeKuttaChebyshev (on the command line: --solver chebyshev)"
            )
        return linear


class AbstractFlowSolver(diffrax.AbstractAdaptiveSolver):
    """A solver of this project: it says whether its steps must land on the save times, and reports its state."""

    lands_save_times: ClassVar[bool]
    evaluations_per_step: ClassVar[int | None] = None
    """Field evaluations per attempted step where that is fixed (the run's `vf_evaluations`); None where it varies."""

    def report(self, solver_state) -> dict:
        """What the final solver state says about the run (host-side values)."""
        return {}

    def func(self, terms, t0, y0, args):
        """The field at (t0, y0), which Diffrax's initial step-size selection evaluates."""
        return terms.vf(t0, y0, args)

    def measured_by(self, controller: diffrax.AbstractStepSizeController) -> "AbstractFlowSolver":
        """This solver for a run whose steps `controller` accepts or rejects (`flows.solve` passes the run's own):
        itself, unless it weighs steps it has not taken by the run's error measure (`Tsit5ThenMerson`)."""
        return self


class Hermite(diffrax.AbstractLocalInterpolation):
    """The cubic Hermite interpolant through $(y_0, k_0 = h F(y_0))$ and $(y_1, k_1 = h F(y_1))$.

    Diffrax builds the interpolant after every step, and uses it only where a save time or an event falls inside the
    step; its coefficients are computed in `evaluate`, so a step that saves nothing computes none."""

    t0: Float[Array, ""]
    t1: Float[Array, ""]
    y0: PyTree
    y1: PyTree
    k0: PyTree
    k1: PyTree

    def evaluate(self, t0, t1=None, left=True):
        hermite = diffrax.ThirdOrderHermitePolynomialInterpolation(
            t0=self.t0, t1=self.t1, y0=self.y0, y1=self.y1, k0=self.k0, k1=self.k1
        )
        return hermite.evaluate(t0, t1, left)


def _linearisable(terms) -> LinearisableTerm | None:
    """The `LinearisableTerm` inside `terms` (Diffrax's wrappers looked through), or None."""
    term = terms
    while not isinstance(term, LinearisableTerm) and isinstance(getattr(term, "term", None), diffrax.AbstractTerm):
        term = term.term
    return term if isinstance(term, LinearisableTerm) else None


def gauss_newton(terms, t, y, args):
    """The Gauss-Newton linearisation of the `LinearisableTerm` in `terms` (see the module docstring)."""
    term = _linearisable(terms)
    if term is None:
        raise ValueError(
            f"the linearly implicit solvers need a flows.LinearisableTerm (as flows.solve builds); got {type(terms)}"
        )
    return term.gauss_newton(t, y, args)


def time_to_stop(terms, t, y, f, args) -> Float[Array, ""]:
    """The `LinearisableTerm`'s estimate of the flow time left until the run's stop (inf for other terms)."""
    term = _linearisable(terms)
    return jnp.asarray(jnp.inf) if term is None else jnp.asarray(term.remaining(t, y, f, args))


def lands_save_times(solver: diffrax.AbstractSolver) -> bool:
    """Whether `solver` asks for its steps to land on the save times (see the module docstring)."""
    return isinstance(solver, AbstractFlowSolver) and solver.lands_save_times


def measured_by(
    solver: diffrax.AbstractSolver, controller: diffrax.AbstractStepSizeController
) -> diffrax.AbstractSolver:
    """`solver` for a run under `controller` (Diffrax's solvers as they are; see the module docstring)."""
    return solver.measured_by(controller) if isinstance(solver, AbstractFlowSolver) else solver


def report(solver: diffrax.AbstractSolver, solver_state) -> dict:
    """The solver's own report of its final state (empty for Diffrax's solvers)."""
    return solver.report(solver_state) if isinstance(solver, AbstractFlowSolver) else {}
