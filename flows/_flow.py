r"""A flow = a problem's objective x a parameterization x dynamics: the ODE that `flows.solve` integrates.

    flow = flows.Flow(problem, flows.Deep(depth=3), penalty=flows.Ratio(), strength=1e-3,
                      dynamics=flows.Adam(a=100.0, b=1.0, eps=1e-8))

The objective is $f(\theta) = L(\phi(\theta)) + \lambda R(\theta)$ with $L(W) = \tfrac12\|\mathcal{A}(W) - y\|^2$
the problem's data loss, $\phi$ the parameterization and R the penalty (none by default); its
parameter gradient is $g = \phi'(\theta)^* \nabla L(W)$ plus the penalty's part, and the dynamics turn
g into the vector field. Every flow is an `eqx.Module` whose array fields (the problem's data, the
strength, the dynamics' rates) are traced, so one compiled solve serves every problem and setting of
the same shapes.

`AbstractFlow` is what `flows.solve` integrates: anything with an initial state, a product W(state),
a vector field and the problem whose loss it records (the analysis package defines reduced ODEs on it).
`Flow` is the one concrete flow of the three families.
"""

from __future__ import annotations

import abc
import weakref
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
from jax.core import Tracer
from jaxtyping import Array, Float, PyTree

from ._dynamics import DYNAMICS, AbstractDynamics, GradientFlow
from ._parameterizations import PARAMETERIZATIONS, AbstractParameterization
from ._penalties import PENALTIES, AbstractPenalty
from ._problems import AbstractProblem, LossFloor
from ._validate import check_finite, check_nonnegative

# JAX arrays, or NumPy ones (a saved trajectory's states): every method accepts both.
State = PyTree[Float[Array | np.ndarray, "..."]]


class AbstractFlow(eqx.Module):
    """An ODE $s' = F(t, s)$ on a state s whose end-to-end matrix is `product(s)`, for a measurement problem."""

    problem: eqx.AbstractVar[AbstractProblem]

    @abc.abstractmethod
    def init(self, scale: float = 1e-3, kind: str = "identity", seed: int = 0) -> State:
        """The initial state; validated on the host before anything compiles."""

    @abc.abstractmethod
    def product(self, state: State) -> Float[Array, "n1 n2"]:
        """The end-to-end matrix W of a state."""

    @abc.abstractmethod
    def vector_field(self, t, state: State) -> State:
        """The right-hand side F(t, state)."""

    def loss(self, state: State) -> Float[Array, ""]:
        """The data loss L(W) of the state (what trajectories record and `stop_loss` watches)."""
        return self.problem.loss(self.product(state))

    def loss_floor(self) -> LossFloor | None:
        """A lower bound of `loss` cheaper than it, as a function of W = `product(state)` (`LossFloor`; None: none),
        which the stop reads first: the problem's. A flow that overrides `loss` overrides this too."""
        return self.problem.loss_floor()

    def conserved(self, state: State) -> dict[str, tuple[Array, Array]]:
        """Conserved quantities as pairs (P, Q): P - Q is constant along the exact flow."""
        return {}

    @property
    def linearisable(self) -> bool:
        r"""Whether `gauss_newton` answers: the field is $-\phi'^*\nabla L$ (up to parts the linearly implicit
        solvers may treat explicitly), so the Gauss-Newton matrix linearises it. Known on the host, before tracing."""
        return False

    @property
    def preconditioned(self) -> bool:
        r"""Whether the field is $-D g$ with a diagonal preconditioner D that makes it stiff where gradient entries are
        small, its stiff eigenvalues real (`flows.AbstractDynamics.preconditioned`). Known on the host."""
        return False

    @property
    def controller_gains(self) -> tuple[float, float]:
        """(pcoeff, icoeff) of the default step-size controller (`flows.AbstractDynamics.controller_gains`)."""
        return (0, 1)

    def gauss_newton(self, state: State) -> "AbstractGaussNewton | None":
        r"""The field's Gauss-Newton linearisation at `state`, $F'(s) \approx -J^* J$ (`AbstractGaussNewton`), or
        None where it has none (`linearisable` False). What the linearly implicit solvers consume."""
        return None

    def error_control(self, t, magnitude, sizes) -> tuple[PyTree, Callable[[PyTree], Any] | None]:
        """The sizes each state entry's local error is measured against, and the norm of the scaled error (None:
        the controller's root mean square), for `flows.ArraywiseRelative`. `magnitude`: max(|y(t0)|, |y(t1)|)
        entry by entry over a step ending at t; `sizes`: each state array's largest magnitude (the default)."""
        return sizes, None

    def check_state(self, state0: State) -> None:
        """ValueError unless state0 has the structure and shapes of `init()`'s and is finite (host-side)."""
        expected = _init_shapes(self)
        expected_leaves, expected_def = jax.tree.flatten(expected)
        got, got_def = jax.tree.flatten(state0)
        if got_def != expected_def or any(jnp.shape(g) != e.shape for g, e in zip(got, expected_leaves)):
            raise ValueError(
                f"state0 does not match this flow: expected shapes "
                f"{jax.tree.map(lambda x: x.shape, expected)}, got {jax.tree.map(jnp.shape, state0)}"
            )
        for leaf in got:
            check_finite("state0", leaf)

    def describe(self) -> dict[str, Any]:
        """A JSON-able description (saved with trajectories)."""
        return {"flow": type(self).__name__}


_INIT_SHAPES: dict[int, tuple[weakref.ref, PyTree]] = {}


def _init_shapes(flow: AbstractFlow) -> PyTree:
    """`jax.eval_shape(flow.init)`, kept while `flow` lives: a flow is immutable, and tracing its init is most of what
    checking an initial state costs (0.7-0.9 ms, near a third of a small solve's fixed cost: benchmarks/README.md)."""
    key = id(flow)
    kept = _INIT_SHAPES.get(key)
    if kept is not None and kept[0]() is flow:
        return kept[1]
    shapes = jax.eval_shape(flow.init)
    _INIT_SHAPES[key] = (weakref.ref(flow, lambda ref: _forget(key, ref)), shapes)
    return shapes


def _forget(key: int, ref: weakref.ref) -> None:
    kept = _INIT_SHAPES.get(key)
    if kept is not None and kept[0] is ref:
        _INIT_SHAPES.pop(key, None)


class Flow(AbstractFlow):
    """The flow of `dynamics` on the objective L(W) + strength * penalty through `parameterization`.

    Args:
        problem: the measurement problem (its data loss is the objective's first term).
        parameterization: `Direct()`, `Symmetric(width)`, `Factored(width)`, `Deep(depth, width)`, or any
            `AbstractParameterization`.
        penalty: a penalty (`Nuclear`, `Ratio`, `Frobenius`, `EachFactor(...)`) or None (default).
        strength: lambda >= 0; required with a penalty, refused without one.
        dynamics: `GradientFlow()` (default), `Adam`, `RMSProp`, `Momentum`, `Sign`, `Modified`.
    """

    problem: AbstractProblem
    parameterization: AbstractParameterization
    penalty: AbstractPenalty | None
    strength: Float[Array, ""] | None
    dynamics: AbstractDynamics

    def __init__(
        self,
        problem: AbstractProblem,
        parameterization: AbstractParameterization,
        *,
        penalty: AbstractPenalty | None = None,
        strength: float | None = None,
        dynamics: AbstractDynamics | None = None,
    ):
        for name, value, kind in (
            ("problem", problem, AbstractProblem),
            ("parameterization", parameterization, AbstractParameterization),
        ):
            if not isinstance(value, kind):
                raise ValueError(
                    f"{name} must be a flows {kind.__name__.removeprefix('Abstract').lower()}; "
                    f"got {type(value).__name__}"
                )
        dynamics = GradientFlow() if dynamics is None else dynamics
        if not isinstance(dynamics, AbstractDynamics):
            raise ValueError(
                f"dynamics must be a flows dynamics (GradientFlow, Adam, ...); got {type(dynamics).__name__}"
            )
        lam: Float[Array, ""] | None = None
        if penalty is None:
            if strength is not None:
                raise ValueError("strength is given but there is no penalty; pass penalty=... or drop strength")
        else:
            if not isinstance(penalty, AbstractPenalty):
                raise ValueError(
                    f"penalty must be a flows penalty (Nuclear, Ratio, Frobenius, EachFactor); "
                    f"got {type(penalty).__name__}"
                )
            if strength is None:
                raise ValueError("a penalty needs its strength: pass strength=lambda (>= 0)")
            lam = jnp.asarray(check_nonnegative("strength", strength), dtype=jnp.float64)
        parameterization.check_shape(problem.shape)
        if parameterization.psd_products:
            _check_psd_truth(problem, parameterization)
        self.problem = problem
        self.parameterization = parameterization
        self.penalty = penalty
        self.strength = lam
        self.dynamics = dynamics

    @classmethod
    def from_description(cls, problem: AbstractProblem, description: dict[str, Any]) -> "Flow":
        """The flow that `describe()` gave, on `problem`: the inverse of `describe`.

        Each family member is a dict {"name": ..., **constructor arguments}, its name a key of
        `flows.PARAMETERIZATIONS`, `PENALTIES` or `DYNAMICS` or the class name (case-insensitive):

            Flow.from_description(problem, {"parameterization": {"name": "deep", "depth": 3},
                                            "penalty": {"name": "ratio", "eps": 1e-3}, "strength": 1e-2,
                                            "dynamics": {"name": "adam", "a": 10.0}})

        Missing entries take the constructor's defaults (no penalty, gradient flow).
        """
        if not isinstance(description, dict) or "parameterization" not in description:
            raise ValueError(f"a flow description is a dict with a 'parameterization' entry; got {description!r}")
        unknown = set(description) - {"flow", "parameterization", "penalty", "strength", "dynamics"}
        if unknown:
            raise ValueError(f"unknown entries in the flow description: {sorted(unknown)}")
        penalty, dynamics = description.get("penalty"), description.get("dynamics")
        return cls(
            problem,
            _member("parameterization", PARAMETERIZATIONS, description["parameterization"]),
            penalty=None if penalty is None else _member("penalty", PENALTIES, penalty),
            strength=description.get("strength"),
            dynamics=None if dynamics is None else _member("dynamics", DYNAMICS, dynamics),
        )

    def init(self, scale=1e-3, kind="identity", seed=0):
        """The parameterization's init of `kind` at `scale` (see its `params`), and the dynamics' moments at 0."""
        return self.dynamics.init(self.parameterization.init(self.problem.shape, scale, kind, seed))

    def params(self, state: State) -> State:
        """The parameters theta of a state (the state itself, or its "params" under adaptive dynamics)."""
        return self.dynamics.params(state)

    def product(self, state):
        return self.parameterization.product(self.params(state))

    def gradient(self, theta: State) -> State:
        r"""$\nabla_\theta f$: $\phi'(\theta)^* \nabla L(W)$, plus the penalty's part."""
        W = self.parameterization.product(theta)
        G = self.problem.grad(W)
        if self.penalty is None:
            return self.parameterization.pullback(theta, G)
        assert self.strength is not None, "a penalty comes with its strength (__init__)"
        return self.penalty.objective_gradient(self.parameterization, theta, W, G, self.strength)

    def objective(self, state: State) -> Float[Array, ""]:
        r"""$f = L(W) + \lambda R$ at a state (`loss` is the data loss alone)."""
        theta = self.params(state)
        value = self.problem.loss(self.parameterization.product(theta))
        if self.penalty is None:
            return value
        assert self.strength is not None, "a penalty comes with its strength (__init__)"
        return value + self.strength * self.penalty.value(self.parameterization, theta)

    def vector_field(self, t, state):
        return self.dynamics.vector_field(t, state, self.gradient)

    def conserved(self, state):
        if not self.dynamics.keeps_symmetry or (self.penalty is not None and not self.penalty.keeps_symmetry):
            return {}
        return self.parameterization.conserved(self.params(state))

    @property
    def linearisable(self) -> bool:
        return self.dynamics.follows_gradient and self.penalty is None

    @property
    def preconditioned(self) -> bool:
        return self.dynamics.preconditioned

    @property
    def controller_gains(self) -> tuple[float, float]:
        return self.dynamics.controller_gains

    def gauss_newton(self, state):
        if not self.linearisable:
            return None
        return GaussNewton(self.problem, self.parameterization, self.params(state))

    def error_control(self, t, magnitude, sizes):
        return self.dynamics.error_sizes(t, magnitude, sizes), self.dynamics.error_norm

    def check_state(self, state0):
        super().check_state(state0)
        self.dynamics.check_state(state0)
        if self.penalty is not None:
            self.penalty.check_start(self.parameterization, self.params(state0))

    def describe(self):
        return {
            "flow": "Flow",
            "parameterization": self.parameterization.describe(),
            "penalty": None if self.penalty is None else self.penalty.describe(),
            "strength": None if self.strength is None else float(self.strength),
            "dynamics": self.dynamics.describe(),
        }


def _check_psd_truth(problem: AbstractProblem, parameterization: AbstractParameterization) -> None:
    """ValueError if the problem's truth (where it has one, on the host) is not symmetric positive semi-definite:
    a parameterization whose products all are cannot reach it."""
    truth = problem.truth
    if truth is None or isinstance(truth, Tracer):
        return
    truth = np.asarray(truth)
    scale = np.linalg.norm(truth)
    name = type(parameterization).__name__
    asymmetry = np.linalg.norm(truth - truth.T) / scale if scale > 0 else 0.0
    if asymmetry > 1e-10:
        raise ValueError(
            f"{name} makes symmetric positive semi-definite W, and this problem's truth is not symmetric "
            f"(||W* - W*^T||_F / ||W*||_F = {asymmetry:.2g}): use a symmetric problem, or Factored, Deep or Direct"
        )
    lowest = np.linalg.eigvalsh(truth)[0]
    if lowest < -1e-10 * scale:
        raise ValueError(
            f"{name} makes positive semi-definite W, and this problem's truth has the negative eigenvalue "
            f"{lowest:.3g}: use Factored, Deep or Direct"
        )


def _member(family: str, table: dict[str, type], description):
    """One family member from {"name": ..., **arguments}; nested descriptions (EachFactor's) built alike."""
    if not isinstance(description, dict) or "name" not in description:
        raise ValueError(f"a {family} description is a dict with a 'name'; got {description!r}")
    name = str(description["name"]).lower()
    matches = [c for key, c in table.items() if name in (key, c.__name__.lower())]
    if not matches:
        raise ValueError(f"unknown {family} {description['name']!r}; choose one of {', '.join(map(repr, table))}")
    arguments = {
        k: _member(family, table, v) if isinstance(v, dict) else v for k, v in description.items() if k != "name"
    }
    try:
        return matches[0](**arguments)
    except TypeError as err:
        raise ValueError(f"bad arguments for {family} {description['name']!r}: {err}") from None


class FlowArgs(eqx.Module):
    """What `flows.solve` passes as Diffrax's `args`: the flow, the `stop_loss` threshold its event watches (None:
    no event), the run's final time `t1` (None: not known) and the problem's `LossFloor` the event reads first (None:
    the loss alone). Only `flows.solve`'s own functions (its term, event and error measure) read it."""

    flow: AbstractFlow
    stop_loss: Float[Array, ""] | None
    t1: Float[Array, ""] | None = None
    floor: LossFloor | None = None


class AbstractGaussNewton(eqx.Module):
    r"""A flow's Gauss-Newton linearisation at one state: the linear map J from state tangents to $\mathbb{R}^m$ with
    $F'(s) \approx -J^* J$.

    For gradient flow of $L(\phi(\theta))$, $L(W) = \tfrac12\|\mathcal{A}(W) - y\|^2$, the Jacobian is $-H$ with
    $H = J^* J + \phi''(\theta)^*[\,\cdot\,, \mathcal{A}^*(r)]$ and $J = \mathcal{A} \circ \phi'(\theta)$; the
    second term vanishes with the residual r, so near a limit $H \approx J^* J$ (symmetric, PSD, of rank at most m).
    The linearly implicit solvers need J applied (`mv`), transposed (`transpose_mv`) and, for dense solves through
    m x m, the kernel $J J^*$ (`kernel`); `operator` is J as a lineax operator.
    """

    @abc.abstractmethod
    def mv(self, tangent: State) -> Float[Array, " m"]:
        r"""$J \dot s$."""

    @abc.abstractmethod
    def transpose_mv(self, w: Float[Array, " m"]) -> State:
        r"""$J^* w$, a state tangent."""

    @abc.abstractmethod
    def kernel(self) -> Float[Array, "m m"]:
        r"""$\Theta = J J^*$, $\Theta_{ik} = \langle J^* e_i, J^* e_k \rangle$."""

    @abc.abstractmethod
    def tangent_structure(self) -> PyTree[jax.ShapeDtypeStruct]:
        """The shapes and dtypes of a state tangent (J's input)."""

    def operator(self) -> lx.FunctionLinearOperator:
        """J as a lineax operator on state tangents (its transpose by JAX's linear transposition)."""
        return lx.FunctionLinearOperator(self.mv, self.tangent_structure())


class GaussNewton(AbstractGaussNewton):
    r"""$J = \mathcal{A} \circ \phi'(\theta)$ of a `Flow` through its parameterization (state = parameters $\theta$):
    `mv` is a pushforward and a measurement, `transpose_mv` an adjoint and a pullback, `kernel` the problem's own
    form of $J J^*$ (completion from the parameterization's sandwich form of $\phi'\phi'^*$ by gathers, $O(m^2)$;
    otherwise from the m pullbacks of the $A_i$)."""

    problem: AbstractProblem
    parameterization: AbstractParameterization
    theta: PyTree[Float[Array, "..."]]

    def mv(self, tangent):
        return self.problem.measure(self.parameterization.pushforward(self.theta, tangent))

    def transpose_mv(self, w):
        return self.parameterization.pullback(self.theta, self.problem.adjoint(w))

    def kernel(self):
        parameterization, theta = self.parameterization, self.theta
        return self.problem.kernel(lambda G: parameterization.pullback(theta, G), parameterization.kernel_terms(theta))

    def tangent_structure(self):
        return jax.eval_shape(lambda: self.theta)


class PaddedGaussNewton(AbstractGaussNewton):
    r"""The linearisation of a state (s, c) whose first part has the Gauss-Newton linearisation `inner` and whose
    second part c (a quantity carried along, of the shapes of `carried`) is left to the solver's explicit steps:
    $J(\dot s, \dot c) = J_{inner} \dot s$, so the Gauss-Newton matrix has a zero block for c. A linearly implicit
    W-method keeps its order with any such matrix; its stability then rests on c's own field not being stiff."""

    inner: AbstractGaussNewton
    carried: PyTree[jax.ShapeDtypeStruct] = eqx.field(static=True)

    def mv(self, tangent):
        return self.inner.mv(tangent[0])

    def transpose_mv(self, w):
        return self.inner.transpose_mv(w), jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), self.carried)

    def kernel(self):
        return self.inner.kernel()

    def tangent_structure(self):
        return self.inner.tangent_structure(), self.carried
