r"""Linearly implicit solvers for the stiff convergence tails of gradient flows.

Near its limit a gradient flow $\theta' = -\nabla_\theta L$ is stiff: the Hessian there has a few
large eigenvalues (the directions the data pin down) and many near zero (the directions it does not),
so an explicit method must keep its step below about $3 / \lambda_{\max}$ for stability long after
the state has stopped moving. A linearly implicit method removes that limit; what it costs is a
linear solve with $I + h H$ per stage, and the point of this module is to make that solve cheap.

For $L(W) = \tfrac12 \|\mathcal{A}(W) - y\|^2$ and $W = \phi(\theta)$ the Hessian is
$H = M^T M + \phi''(\theta)^*[\,\cdot\,, S]$ with $M = \mathcal{A} \circ \phi'(\theta)$ (m x p) and
$S = \mathcal{A}^*(r)$. The second (residual) term vanishes with the residual, so near the limit
$H \approx M^T M$, the Gauss-Newton matrix, of rank at most m. Its solve goes through m x m:
$(I + h M^T M)^{-1} = I - M^T (h^{-1} I + \Theta)^{-1} M$ (Woodbury) with the kernel matrix
$\Theta = M M^T$, $\Theta_{ik} = \langle \phi'^* A_i, \phi'^* A_k \rangle$. One eigendecomposition
$\Theta = Q \Lambda Q^T$ serves every step size h, and applying the inverse costs one JVP, one VJP
(about one vector-field evaluation) and two m x m products, never an n^2 x n^2 matrix.

That eigendecomposition costs $O(m^3)$ and its basis $m^2$ memory, so beyond a few thousand
measurements the solve goes matrix-free (`ConjugateGradient`): conjugate gradients (lineax) on
$(I + h M^T M) x = b$ in parameter space, each iteration one product $x \mapsto M x$ (a pushforward
and a measurement) and one $M^T w$ (an adjoint and a pullback), about one vector-field evaluation,
with nothing of size m x m. The matrix is symmetric with eigenvalues $1 + h\lambda \ge 1$, so CG
needs no preconditioner to be safe and the residual bounds the error: $\|x - x_*\| \le \|b - (I +
h M^T M) x\|$. Its iterations grow like $\sqrt{1 + h\lambda_{\max}}$, and the extrapolation needs
many solves per step: measured on deep completion (n = 100, m = 2000; benchmarks/README.md,
`stiff_tail.py`) it takes the dense solve's steps at the dense solve's speed, both three times slower
than Tsit5 there (30,000 CG iterations for 9 stiff steps), so `flows.default_solver` takes the
matrix-free NDF (`flows.Tsit5ThenNDF`: a few conjugate-gradient iterations per step of a multistep method, not
dozens of solves per extrapolated step) for large m instead.

The integrator is extrapolation of the linearly implicit Euler method
$(I + h_j H_J)(y_{i+1} - y_i) = h_j F(y_i)$ over the harmonic sequence $h_j = \Delta t / j$,
$j = 1..k$ (Deuflhard's LIMEX / Hairer & Wanner's SEULEX family). Its $h$-expansion holds for any
fixed matrix $H_J$, so the extrapolated result has order k whether or not $H_J$ is the exact
Hessian at the current state (it is a W-method): the Gauss-Newton matrix, and one kept over many
steps while it still predicts the field, cost stability margin, never accuracy.

The Gauss-Newton matrix comes from the term (`flows.LinearisableTerm`, the flow's `gauss_newton`: J as a
`flows.AbstractGaussNewton`), and the linear solver is a parameter (`AbstractLinearSolver`): `Woodbury`,
`ConjugateGradient`, or `KrylovJacobian`, which takes the field's exact Jacobian instead (restarted GMRES on
Jacobian-vector products) and so integrates any flow, the adaptive ones (Adam, RMSProp: non-symmetric,
oscillatory Jacobians) and penalised ones included. Measured on the Adam flow's stiff phases
(benchmarks/adaptive_stiff.py) it takes a tenth of Tsit5's steps but each costs hundreds of GMRES iterations, so
it is slower there, and on the deep completion tail (`stiff_tail.py`) it is 25x slower than Tsit5; it is not a
default.

`Tsit5ThenExtrapolation` runs Tsit5 through the transient (where the Jacobian changes fast and
explicit steps are cheap) and switches to the extrapolation once stiffness holds Tsit5's step and
the time left to the stop is worth the switch;
`Tsit5ThenChebyshev` switches to the stabilised explicit `RungeKuttaChebyshev` instead (no linear
algebra: the choice for the diagonally preconditioned flows), and `Tsit5ThenNDF` to the matrix-free implicit
multistep `flows.NDF` (Newton with conjugate gradients on Jacobian products: the choice beyond a thousand
measurements).
Measurements against scipy, CVODE and gradient descent: benchmarks/README.md.
"""

from __future__ import annotations

import abc
from typing import ClassVar

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import optax
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, Bool, Float, PyTree

from ._chebyshev import RungeKuttaChebyshev
from ._flow import AbstractGaussNewton
from ._ndf import NDF
from ._solver import AbstractFlowSolver, Hermite, LinearisableTerm, gauss_newton, report, time_to_stop


def _flat(tree) -> Float[Array, " p"]:
    return ravel_pytree(tree)[0]


class AbstractShiftedSolve(eqx.Module):
    r"""$(I + h H_J) x = b$ for a matrix $H_J \approx -F'$ taken at (`time`, `point`, the flat state) for steps near
    `step` (the Gauss-Newton matrix $J^* J$, or the exact Jacobian). `step` NaN: none taken yet (the first step
    takes one).

    It holds arrays computed at that point, never the term's or the flow's own: the solves take the linearisation
    (or the field) from the `terms` and `args` they are given. A solver's state is carried through every step of
    the integration loop, the stiff solver's through a switching solver's explicit steps too: a problem's measurement
    operator carried there (m n^2 numbers for sensing) would cost each of a switching run's explicit steps 15-20 % on
    30 x 30 sensing, the stiff branch idle (benchmarks/README.md)."""

    point: eqx.AbstractVar[Float[Array, " p"]]
    time: eqx.AbstractVar[Float[Array, ""]]
    step: eqx.AbstractVar[Float[Array, ""]]

    @abc.abstractmethod
    def solve(self, h, b: Float[Array, " p"], unravel, terms, args) -> Float[Array, " p"]:
        r"""$(I + h H_J)^{-1} b$, $H_J$ from `terms`, `args` at (`time`, `point`); NaN where the solve failed (the
        step is then rejected and shrinks)."""

    @abc.abstractmethod
    def apply(self, v: Float[Array, " p"], unravel, terms, args) -> Float[Array, " p"]:
        r"""$H_J v$."""


class AbstractGaussNewtonSolve(AbstractShiftedSolve):
    r"""Solves with the Gauss-Newton matrix $H_J = J^* J$ of the linearisation at (`time`, `point`)."""

    def apply(self, v, unravel, terms, args):
        linear = gauss_newton(terms, self.time, unravel(self.point), args)
        return _flat(linear.transpose_mv(linear.mv(unravel(v))))


class WoodburySolve(AbstractGaussNewtonSolve):
    r"""$H_J = J^* J$ through the m x m kernel (Woodbury): `basis`, `eigenvalues` are $\Theta = J J^* = Q \Lambda
    Q^T$ at the point."""

    point: Float[Array, " p"]
    time: Float[Array, ""]
    basis: Float[Array, "m m"]
    eigenvalues: Float[Array, " m"]
    step: Float[Array, ""]

    @classmethod
    def at(cls, linear: AbstractGaussNewton, point: Float[Array, " p"], time, step) -> "WoodburySolve":
        """The solves with `linear`, the linearisation at (`time`, `point`)."""
        eigenvalues, basis = jnp.linalg.eigh(linear.kernel())
        # Theta is PSD; clip round-off so 1 + h lambda > 0 for every h.
        return cls(
            point=point,
            time=jnp.asarray(time, point.dtype),
            basis=basis,
            eigenvalues=jnp.maximum(eigenvalues, 0.0),
            step=jnp.asarray(step, point.dtype),
        )

    @classmethod
    def pending(cls, linear: AbstractGaussNewton, point: Float[Array, " p"], time) -> "WoodburySolve":
        """No linearisation yet (its step is NaN): the first step takes one."""
        m = jax.eval_shape(linear.kernel).shape[0]
        return cls(
            point=point,
            time=jnp.asarray(time, point.dtype),
            basis=jnp.zeros((m, m), point.dtype),
            eigenvalues=jnp.zeros(m, point.dtype),
            step=jnp.asarray(jnp.nan, point.dtype),
        )

    def solve(self, h, b, unravel, terms, args):
        r"""$(I + h J^* J)^{-1} b = b - J^* Q \,\mathrm{diag}(h / (1 + h\lambda))\, Q^T J b$."""
        linear = gauss_newton(terms, self.time, unravel(self.point), args)
        w = self.basis @ (h / (1.0 + h * self.eigenvalues) * (self.basis.T @ linear.mv(unravel(b))))
        return b - _flat(linear.transpose_mv(w))


class ConjugateGradientSolve(AbstractGaussNewtonSolve):
    r"""$H_J = J^* J$ applied, never formed: conjugate gradients (lineax) on $(I + h J^* J) x = b$.

    Stops when the residual and the last update are both below `tolerance` $\|b\|$ (2-norms; lineax's
    rule). Since $I + h J^* J \succeq I$, the error is at most the residual: $\|x - x_*\| \le$
    `tolerance` $\|b\|$. At most `max_steps` iterations, else NaN.
    """

    point: Float[Array, " p"]
    time: Float[Array, ""]
    step: Float[Array, ""]
    tolerance: Float[Array, ""]
    max_steps: int = eqx.field(static=True)

    def conjugate_gradients(self, h, b: Float[Array, " p"], unravel, terms, args) -> lx.Solution:
        """The lineax solution of $(I + h J^* J) x = b$ (its `stats["num_steps"]`: the iterations)."""
        linear = gauss_newton(terms, self.time, unravel(self.point), args)
        # Linearised once per solve, so what depends on the state alone (a deep product's partial products)
        # is computed once, not at every iteration.
        _, apply = jax.linearize(lambda x: linear.mv(unravel(x)), b)
        _, transpose = jax.linearize(lambda w: _flat(linear.transpose_mv(w)), apply(b))
        operator = lx.FunctionLinearOperator(
            lambda x: x + h * transpose(apply(x)), jax.eval_shape(lambda: b), tags=lx.positive_semidefinite_tag
        )
        cg = lx.CG(rtol=0.0, atol=self.tolerance * jnp.linalg.norm(b), norm=jnp.linalg.norm, max_steps=self.max_steps)
        return lx.linear_solve(operator, b, cg, throw=False)

    def solve(self, h, b, unravel, terms, args):
        solution = self.conjugate_gradients(h, b, unravel, terms, args)
        return jnp.where(solution.result == lx.RESULTS.successful, solution.value, jnp.nan)


class KrylovJacobianSolve(AbstractShiftedSolve):
    r"""$H_J = -F'(t_J, y_J)$, the exact Jacobian of the field at (`time`, `point`), applied by Jacobian-vector
    products (the field linearised once per solve), solved by restarted GMRES to `tolerance` $\|b\|$; NaN past
    `max_steps` iterations. For any field: non-symmetric and oscillatory Jacobians included."""

    point: Float[Array, " p"]
    time: Float[Array, ""]
    step: Float[Array, ""]
    tolerance: Float[Array, ""]
    restart: int = eqx.field(static=True)
    max_steps: int = eqx.field(static=True)

    def gmres(self, h, b: Float[Array, " p"], unravel, terms, args) -> lx.Solution:
        _, jvp = jax.linearize(lambda x: _flat(terms.vf(self.time, unravel(x), args)), self.point)
        operator = lx.FunctionLinearOperator(lambda x: x - h * jvp(x), jax.eval_shape(lambda: b))
        solver = lx.GMRES(
            rtol=0.0,
            atol=self.tolerance * jnp.linalg.norm(b),
            norm=jnp.linalg.norm,
            restart=self.restart,
            stagnation_iters=self.restart,
            max_steps=self.max_steps,
        )
        return lx.linear_solve(operator, b, solver, throw=False)

    def solve(self, h, b, unravel, terms, args):
        solution = self.gmres(h, b, unravel, terms, args)
        return jnp.where(solution.result == lx.RESULTS.successful, solution.value, jnp.nan)

    def apply(self, v, unravel, terms, args):
        tangent = jax.jvp(lambda x: _flat(terms.vf(self.time, unravel(x), args)), (self.point,), (v,))[1]
        return -tangent


class AbstractLinearSolver(eqx.Module):
    """How a linearly implicit solver solves its shifted systems $(I + h H_J) x = b$: a parameter of the solver.
    It takes its matrix from the term at (t, y): the Gauss-Newton linearisation (`gauss_newton`, from a
    `LinearisableTerm`) or the field itself; `term_structure` is the term it needs."""

    term_structure: ClassVar[type]

    @abc.abstractmethod
    def linearise(self, terms, t, y, args, step) -> AbstractShiftedSolve:
        """Prepare the solves at (t, y) for steps near `step`."""

    @abc.abstractmethod
    def pending(self, terms, t, y, args) -> AbstractShiftedSolve:
        """A placeholder of the same structure (step NaN): the first step linearises."""


class Woodbury(AbstractLinearSolver):
    """The Gauss-Newton solves through the m x m kernel (`WoodburySolve`): an $O(m^3)$ eigendecomposition per
    linearisation, then cheap solves; for up to a few thousand measurements."""

    term_structure = LinearisableTerm

    def linearise(self, terms, t, y, args, step):
        return WoodburySolve.at(gauss_newton(terms, t, y, args), _flat(y), t, step)

    def pending(self, terms, t, y, args):
        return WoodburySolve.pending(gauss_newton(terms, t, y, args), _flat(y), t)


class ConjugateGradient(AbstractLinearSolver):
    r"""The Gauss-Newton solves matrix-free (`ConjugateGradientSolve`), for any m.

    `tolerance` bounds each solve's error relative to its right-hand side $h_j F(y_i)$. Measured on
    deep completion (n = 100, m = 2000) over a step of $\Delta t = 1280$ in the tail: the extrapolated
    step is off the exact-solve step by 4.7e-11 (relative to the state) at 1e-10, 3.5e-9 at 1e-8 (about
    25 times the solves' own errors: the tableau amplifies them), so 1e-10 keeps the solves' part of
    the error well under rtol = 1e-8, and the run takes the dense solve's steps exactly.
    """

    tolerance: Float[Array, ""] = eqx.field(converter=jnp.asarray, default=1e-10)
    max_steps: int = eqx.field(static=True, default=2000)
    term_structure = LinearisableTerm

    def linearise(self, terms, t, y, args, step):
        point = _flat(y)
        return ConjugateGradientSolve(
            point=point,
            time=jnp.asarray(t, point.dtype),
            step=jnp.asarray(step, point.dtype),
            tolerance=self.tolerance,
            max_steps=self.max_steps,
        )

    def pending(self, terms, t, y, args):
        return self.linearise(terms, t, y, args, jnp.nan)


class KrylovJacobian(AbstractLinearSolver):
    """The solves with the field's exact Jacobian, matrix-free (`KrylovJacobianSolve`): restarted GMRES on
    Jacobian-vector products. Needs no linearisation from the flow, so it serves every flow (adaptive dynamics,
    penalties)."""

    tolerance: Float[Array, ""] = eqx.field(converter=jnp.asarray, default=1e-10)
    restart: int = eqx.field(static=True, default=40)
    max_steps: int = eqx.field(static=True, default=4000)
    term_structure = diffrax.ODETerm

    def linearise(self, terms, t, y, args, step):
        point = _flat(y)
        return KrylovJacobianSolve(
            point=point,
            time=jnp.asarray(t, point.dtype),
            step=jnp.asarray(step, point.dtype),
            tolerance=self.tolerance,
            restart=self.restart,
            max_steps=self.max_steps,
        )

    def pending(self, terms, t, y, args):
        return self.linearise(terms, t, y, args, jnp.nan)


class LinearlyImplicitExtrapolation(AbstractFlowSolver):
    r"""Extrapolated linearly implicit Euler with a Gauss-Newton matrix (see the module docstring).

    Each step of size $\Delta t$ runs j substeps of $(I + h_j H_J)(y_{i+1} - y_i) = h_j F(y_i)$,
    $h_j = \Delta t / j$, for j = 1..`columns`, and extrapolates (Aitken-Neville) to order `columns`;
    the difference to order `columns` - 1 is the error estimate.

    $H_J$ is kept while it predicts the field along the steps: after a step $\delta = y_1 - y_0$ the
    linear model says $F(y_1) - F(y_0) \approx -H_J \delta$, and when its relative defect
    $\|F(y_1) - F(y_0) + H_J \delta\| / \|F(y_1) - F(y_0)\|$ exceeds `defect` the next step re-linearises
    (one product $H_J \delta$ a step, about one field evaluation). The W-method keeps its order for any
    $H_J$ but stays stable and accurate only while $\Delta t\,\|H - H_J\|$ is small, and the defect
    measures $(H - H_J)$ where the solution moves: in the algebraic tails of small-init runs the small
    curvatures (W's eigenvalues of 1e-4 falling to 1e-5) drift by large factors while the state moves by
    as little, so a threshold on the state's movement sees them only when tight (1e-4, with a doubled step as a
    second trigger), and the defect sees them directly; in a linear
    convergence tail nothing drifts and one matrix serves steps that grow a hundredfold. Two further
    triggers, off by default: the state moved by more than `refresh` (relative, in the 2-norm) since the
    linearisation, or $\Delta t$ grown by more than the factor `growth` since then. Measured
    (benchmarks/README.md, `switch_rules.py`, `implicit_attempts.py --tail`): the same steps as refresh 1e-4 with
    growth 2 on each setting there, with fewer linearisations where the tail is linear (deep3: 0.74x the time).
    Limits: the defect is measured along the step, mostly in the slow directions, and only after accepted steps
    (Diffrax restores the solver state after a rejection), so a step rejected on a stale matrix is retried on the
    same matrix at a smaller size; `growth` (e.g. 1e3) adds a backstop. Under vmap (`flows.sweep`'s batches) the
    re-linearisation's `lax.cond` runs both branches, so batched runs pay for a linearisation at every step
    whatever the rule.
    Dense output is cubic Hermite, far less accurate than the steps (`lands_save_times`: `flows.solve` makes the
    steps land on the save times whatever the step-size controller). Costs per step:
    columns (columns - 1) / 2 + 1 vector-field evaluations and columns (columns + 1) / 2 Gauss-Newton
    solves, made by `linear_solver` (any `AbstractLinearSolver`): `Woodbury()` (dense through the m x m kernel,
    the default) or `ConjugateGradient()` (matrix-free, any m). The linearisation comes from the term
    (`LinearisableTerm.gauss_newton`, the flow's `gauss_newton`).
    """

    columns: int = eqx.field(static=True, default=8)
    defect: Float[Array, ""] = eqx.field(converter=jnp.asarray, default=0.3)
    refresh: Float[Array, ""] = eqx.field(converter=jnp.asarray, default=jnp.inf)
    growth: Float[Array, ""] = eqx.field(converter=jnp.asarray, default=jnp.inf)
    linear_solver: AbstractLinearSolver = Woodbury()

    interpolation_cls = Hermite
    lands_save_times = True

    @property
    def term_structure(self):
        return self.linear_solver.term_structure

    def order(self, terms):
        return self.columns

    def init(self, terms, t0, t1, y0, args):
        f0 = ravel_pytree(terms.vf(t0, y0, args))[0]
        return f0, self.linear_solver.pending(terms, t0, y0, args), jnp.array(0), jnp.array(False)

    def report(self, solver_state) -> dict:
        """What the run's final solver state says about it (host-side): the number of linearisations."""
        return {"linearisations": int(solver_state[2])}

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        f0, linear, linearisations, drifted = solver_state
        y0_flat, unravel = ravel_pytree(y0)
        if made_jump is not False:
            f0 = jax.lax.cond(made_jump, lambda: ravel_pytree(terms.vf(t0, y0, args))[0], lambda: f0)
        dt = t1 - t0
        stale = (
            jnp.isnan(linear.step)
            | drifted
            | (dt > self.growth * linear.step)
            | (jnp.linalg.norm(y0_flat - linear.point) > self.refresh * jnp.linalg.norm(y0_flat))
        )
        linear = jax.lax.cond(stale, lambda: self.linear_solver.linearise(terms, t0, y0, args, dt), lambda: linear)
        linearisations = linearisations + stale

        def vf(t, y):
            return ravel_pytree(terms.vf(t, unravel(y), args))[0]

        def column(j, previous):
            """Row j of the Aitken-Neville tableau from j substeps of size dt / j and row j - 1."""
            h = dt / j
            y = y0_flat + linear.solve(h, h * f0, unravel, terms, args)
            y = jax.lax.fori_loop(
                1, j, lambda i, y: y + linear.solve(h, h * vf(t0 + i * h, y), unravel, terms, args), y
            )

            def extrapolate(i, row):
                ratio = jnp.where(i < j, j / jnp.maximum(j - i, 1) - 1.0, 1.0)
                return row.at[i].set(jnp.where(i < j, row[i - 1] + (row[i - 1] - previous[i - 1]) / ratio, 0.0))

            return jax.lax.fori_loop(1, self.columns, extrapolate, jnp.zeros_like(previous).at[0].set(y))

        table = jax.lax.fori_loop(1, self.columns + 1, column, jnp.zeros((self.columns, y0_flat.size), y0_flat.dtype))
        y1 = table[-1]
        error = table[-1] - table[-2]
        f1 = vf(t1, y1)
        change = f1 - f0
        miss = jnp.linalg.norm(change + linear.apply(y1 - y0_flat, unravel, terms, args))
        drifted = miss > self.defect * jnp.linalg.norm(change)
        # dt * f is a JAX array; numpy's stubs type the product of a scalar-like dt as possibly an ndarray.
        dense_info = dict(y0=y0, y1=unravel(y1), k0=unravel(dt * f0), k1=unravel(dt * f1))  # pyright: ignore[reportArgumentType]
        return (
            unravel(y1),
            unravel(error),
            dense_info,
            (f1, linear, linearisations, drifted),
            diffrax.RESULTS.successful,
        )


class AbstractTsit5Then(AbstractFlowSolver):
    r"""Tsit5 while the flow is not stiff, `stiff_solver` from the moment it is.

    Stiffness is detected as in Hairer & Wanner's DOPRI5: Tsit5's sixth and seventh stages both sit
    at the step's end, so $\rho = \|f(y_7) - f(y_6)\| / \|y_7 - y_6\|$ estimates the dominant
    eigenvalue along the step. The accepted steps with $h\rho$ above `threshold` (Tsit5 is stable up to 3.5 on the
    negative axis) are counted, and `reset` accepted steps below it in a row clear the count; on the step that brings
    the count to `patience` the step size is held by stability, not accuracy, and the run switches for good. The
    transient, where the Jacobian changes fast and explicit steps are cheap, then costs the stiff solver nothing.

    The count survives a few steps below the threshold, as in Hairer & Wanner's code (`reset` = 6): steps held by
    stability oscillate about the limit, and a step cut short (the retry after a rejection, a step landed on a save
    time) has $h\rho$ below the threshold while $\rho$ is as large. Cleared by every such step, the count rarely
    reaches `patience` where save times are dense: on 6 x 6 factored completion with a save time every 12.5 time
    units the run never switched (1016 steps against 387; tests/test_stiff.py), and the deep completion tail with
    the default save times switched at t = 1224 instead of 985 at rtol 1e-8 (benchmarks/README.md).

    A stiff solver that pays to start (the extrapolation's linearisations) is not worth it for a short
    remainder: the run switches only if the flow time left until it ends, as the term estimates it
    (`flows.LinearisableTerm`: the time to t1, or less where the loss's current rate of decay, extrapolated,
    reaches the stop sooner), is more than `horizon` of
    Tsit5's current steps (the step just taken, one above the threshold, so not one cut short); until then the test
    is repeated at every further step above the threshold while the count stands (one Jacobian-vector product of
    the loss each, with a stop). `horizon` 0 switches on stiffness alone.

    The step-size controller sees Tsit5's order (5) in both phases. The stiff solver's state starts
    with the slope $F(y)$ at its first step (first same as last), which the switch hands over; its dense
    information is (y0, y1, k0, k1), and its term structure is the switch's.

    The dense output of both phases is the cubic Hermite interpolant through the step's ends and slopes. The
    switch lands its steps on the save times, so the interpolant serves only the stop's root finding: a stop
    reached in the explicit phase is the interpolant's value where the loss crosses `stop_loss`, which
    `flows.LandOnEvent` keeps within the last 5 % of the step's own fall in log loss, near the step's end, where
    the cubic is as accurate as Tsit5's own quartic interpolant. Measured against Dopri8 at rtol 1e-13 at the same
    time, with a switch that never switches beside `diffrax.Tsit5`, stop 1e-10, rtol 1e-8 and 1e-10: 6 x 6 factored
    completion from 0.1, 1e-2 and 1e-3 I, 0.32-1.35 rtol against 0.32-1.33 (the steps' own error); its momentum
    flows (a = 0.3, 1, 3: an oscillating loss) 0.002-0.27 rtol against 0.002-0.11. Tsit5's interpolant would
    carry all seven stages out of every step: on the deep completion tail (30,000 unknowns) that cost 0.07 s of
    1.5 s (benchmarks/README.md).
    """

    stiff_solver: eqx.AbstractVar[AbstractFlowSolver]
    threshold: eqx.AbstractVar[float]
    patience: eqx.AbstractVar[int]
    reset: eqx.AbstractVar[int]
    horizon: eqx.AbstractVar[float]

    interpolation_cls = Hermite
    lands_save_times = True
    # The explicit phase's steps are Tsit5's in another order of summation (`tsit5_step`), a stop located in it is
    # found on the Hermite interpolant, and the stiffness count survives `reset` - 1 steps below the threshold in a
    # row, the switch made only on a step above it: stored runs of an earlier revision switched elsewhere, so their
    # keys carry this revision (flows._keys).
    key_revision: ClassVar[int] = 3

    @property
    def term_structure(self):
        return self.stiff_solver.term_structure

    def order(self, terms):
        return 5

    def init(self, terms, t0, t1, y0, args):
        # Tsit5's state is the slope at the current point (first same as last).
        explicit = terms.vf(t0, y0, args)
        stiff = self.stiff_solver.init(terms, t0, t1, y0, args)
        streak = (jnp.array(0), jnp.array(0))
        return jnp.array(False), streak, jnp.asarray(jnp.inf, dtype=jnp.result_type(t0)), explicit, stiff

    def report(self, solver_state) -> dict:
        """Whether and when the run switched, and the stiff solver's report (host-side)."""
        switched, _, t_switch, _, stiff_state = solver_state
        return {
            "switched": bool(switched),
            "t_switch": float(t_switch) if bool(switched) else None,
            **report(self.stiff_solver, stiff_state),
        }

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        switched, streak, t_switch, explicit_state, stiff_state = solver_state

        def explicit():
            f0 = explicit_state
            if made_jump is not False:
                f0 = jax.lax.cond(made_jump, lambda: terms.vf(t0, y0, args), lambda: f0)
            y1, error, k, f1, y6 = tsit5_step(terms, t0, t1, y0, args, f0)
            h_rho = stiffness_estimate(k, y1, y6)
            # (stiff steps counted, accepted steps below the threshold in a row since the last stiff one)
            counted, calm = streak
            stiff_step = h_rho > self.threshold
            calm = jnp.where(stiff_step, 0, calm + 1)
            counted = jnp.where(stiff_step, counted + 1, jnp.where(calm >= self.reset, 0, counted))
            switch = stiff_step & (counted >= self.patience)
            if self.horizon > 0:

                def worth() -> Array:
                    return time_to_stop(terms, t1, y1, f1, args) > self.horizon * (t1 - t0)

                switch = jax.lax.cond(switch, worth, lambda: jnp.array(False))
            # The slope the stiff solver starts from if the run switches now.
            handed = (ravel_pytree(f1)[0], *_idle(stiff_state[1:]))
            dense = dict(y0=y0, y1=y1, k0=k[0], k1=k[6])
            new_state = (switch, (counted, calm), jnp.where(switch, t1, t_switch), f1, handed)
            return y1, error, dense, new_state, diffrax.RESULTS.successful

        def stiff():
            y1, error, dense, new_stiff, result = self.stiff_solver.step(
                terms, t0, t1, y0, args, stiff_state, made_jump
            )
            dense = dict(y0=y0, y1=y1, k0=dense["k0"], k1=dense["k1"])
            # The switch is for good: Tsit5's state is carried along unused.
            return y1, error, dense, (jnp.array(True), streak, t_switch, _idle(explicit_state), new_stiff), result

        y1, error, dense, (switch, streak, t_switch, new_explicit, new_stiff), result = jax.lax.cond(
            switched, stiff, explicit
        )
        # Each branch returns zeros for the state it leaves idle, put back here by a select that is fused with Diffrax's
        # own (accepted step or not). A state passed through the conditional instead is copied out of it and then
        # selected, at every step: a read and a write of it more (`benchmarks/switch_state.py`).
        new_explicit = _restore(~switched, new_explicit, explicit_state)
        new_stiff = (new_stiff[0], *_restore(switched, new_stiff[1:], stiff_state[1:]))
        return y1, error, dense, (switch, streak, t_switch, new_explicit, new_stiff), result


_TSIT5 = diffrax.Tsit5.tableau


def stiffness_estimate(k: list[PyTree], y1: PyTree, y6: PyTree) -> Float[Array, ""]:
    r"""Hairer's $h\rho = \|k_7 - k_6\| / \|y_7 - y_6\|$ from a Tsit5 step (`tsit5_step`'s stages and its last two
    stage inputs, both at the step's end): h times the dominant eigenvalue along their difference
    (`AbstractTsit5Then`)."""
    tree = optax.tree_utils
    return tree.tree_norm(tree.tree_sub(k[6], k[5])) / tree.tree_norm(tree.tree_sub(y1, y6))


def tsit5_step(terms, t0, t1, y0: PyTree, args, f0: PyTree) -> tuple[PyTree, PyTree, list[PyTree], PyTree, PyTree]:
    r"""One step of Tsit5 (Diffrax's tableau) from the slope $f_0 = F(y_0)$, its stages written out one by one:
    $y_{i+1} = y_0 + \sum_{j \le i} a_{ij} k_j$ with $k_j = h F(y_j)$, $y_7 = y_1$ the solution (first same as last),
    the error estimate $\sum_j e_j k_j$. Returns $(y_1$, the error estimate, $[k_1 .. k_7]$, $F(y_1)$, $y_6)$; stages 6
    and 7 both sit at the step's end, which the stiffness test reads.

    Each stage's input combines only the stages before it, with the tableau's nonzero coefficients. Diffrax's own
    stage loop combines its whole stage buffer at every stage, which on the deep completion tail's 30,000 unknowns
    costs 0.75-0.88 ms a step more, 17-18 % of its step (benchmarks/README.md, `switch_state.py`)."""
    control = terms.contr(t0, t1)
    h = t1 - t0
    k = [terms.prod(f0, control)]
    fi = f0  # the loop over the six stages always rebinds it; bound here for the static checker
    stage_inputs = []
    for a, c in zip(_TSIT5.a_lower, _TSIT5.c):
        yi = jax.tree.map(lambda y, *ks: y + sum(float(w) * kj for w, kj in zip(a, ks) if w != 0), y0, *k)
        fi = terms.vf(t1 if c == 1 else t0 + float(c) * h, yi, args)
        stage_inputs.append(yi)
        k.append(terms.prod(fi, control))
    error = jax.tree.map(lambda *ks: sum(float(w) * kj for w, kj in zip(_TSIT5.b_error, ks) if w != 0), *k)
    return stage_inputs[-1], error, k, fi, stage_inputs[-2]


def _idle(state: PyTree) -> PyTree:
    """Zeros in place of a state a branch of the switch does not advance (`_restore` puts it back)."""
    return jax.tree.map(jnp.zeros_like, state)


def _restore(advanced: Bool[Array, ""], new: PyTree, old: PyTree) -> PyTree:
    """`new` where its branch advanced it, else `old`."""
    return jax.tree.map(lambda a, b: jnp.where(advanced, a, b), new, old)


class Tsit5ThenExtrapolation(AbstractTsit5Then):
    """Tsit5, then the linearly implicit extrapolation (`LinearlyImplicitExtrapolation`) once the flow is
    stiff: for gradient flows of the data loss whose Gauss-Newton solves are cheap (`flows.Woodbury` up to
    about a thousand measurements), and the stiffest tails (small initialisations), where its cost does not
    grow with the stiffness.

    `horizon` = 100: the shortest stiff phase measured (benchmarks/README.md, `switch_rules.py`: factored sensing,
    n = 30, m = 180, to the stop on one linearisation) cost what about 100 of Tsit5's steps cost there; a
    remainder estimated shorter is left to Tsit5. Over the completion experiment's switching runs the horizon
    changes little (0.95x the time of horizon 0 in all, where nine of its ten U V^T runs stay with Tsit5).
    """

    stiff_solver: LinearlyImplicitExtrapolation = LinearlyImplicitExtrapolation()
    threshold: float = eqx.field(static=True, default=3.0)
    patience: int = eqx.field(static=True, default=15)
    reset: int = eqx.field(static=True, default=6)
    horizon: float = eqx.field(static=True, default=100.0)
    # The horizon counts the time left to t1 as well as to the stop: stored runs of revision 3, which counted the
    # time to the stop alone, may have switched where this one does not (flows._keys).
    key_revision: ClassVar[int] = 4


class Tsit5ThenChebyshev(AbstractTsit5Then):
    """Tsit5, then the stabilised explicit `RungeKuttaChebyshev` once the flow is stiff: no linear algebra,
    so any number of measurements and any gradient flow (penalised too); its cost grows like the square
    root of the stiffness per step. Where the tail is only mildly stiff (Tsit5 held near $h\rho = 3$) the
    order-2 steps are held by accuracy instead, and it can take more steps than Tsit5 alone. Where it wins and
    loses: benchmarks/README.md (stiff_tail.py)."""

    stiff_solver: RungeKuttaChebyshev = RungeKuttaChebyshev()
    threshold: float = eqx.field(static=True, default=3.0)
    patience: int = eqx.field(static=True, default=15)
    reset: int = eqx.field(static=True, default=6)
    horizon: ClassVar[float] = 0.0


class Tsit5ThenNDF(AbstractTsit5Then):
    """Tsit5, then the matrix-free implicit multistep `NDF` (orders 1 to 5, Newton with conjugate gradients on
    forward-difference Jacobian products) once the flow is stiff: no dense linear algebra, so any number of
    measurements, and steps held by accuracy alone. Measured on the deep completion tail (n = 100, m = 2000):
    benchmarks/README.md (`vs_cvode.py`)."""

    stiff_solver: NDF = NDF()
    threshold: float = eqx.field(static=True, default=3.0)
    patience: int = eqx.field(static=True, default=15)
    reset: int = eqx.field(static=True, default=6)
    horizon: ClassVar[float] = 0.0
