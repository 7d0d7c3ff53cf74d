r"""Wrappers around a parameterization: a penalized objective, adaptive dynamics, the modified flow.

Order of wrapping: dynamics outside, objective inside,

    flows.Adam(flows.Penalized(flows.Symmetric(problem), flows.Ratio(), strength=1e-2), a=10, b=1, eps=1e-8)

`Penalized` is itself a parameterization (gradient flow of a different objective through the same
W(theta)), so it can be wrapped by `Adam`, `RMSProp`, `Momentum`, `Sign` or `Modified`; those
change the dynamics and accept only a parameterization inside (a penalty on an Adam flow, or Adam
of Adam, is refused with a ValueError).

Every rate and constant is a float64 array field, so changing it does not recompile a solve.
"""

from __future__ import annotations

import abc
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Float

from ._flows import AbstractFlow, AbstractParameterization
from ._penalties import AbstractPenalty
from ._problems import AbstractProblem
from ._validate import check_nonnegative, check_positive


def _scalar(value: float) -> Float[Array, ""]:
    return jnp.asarray(value, dtype=jnp.float64)


def _check_inner(wrapper: str, flow) -> None:
    if not isinstance(flow, AbstractParameterization):
        raise ValueError(
            f"{wrapper} wraps a parameterization (Direct, Symmetric, Factored, Deep, or a Penalized one); "
            f"got {type(flow).__name__}. Wrap dynamics outside the penalty: "
            "Adam(Penalized(Symmetric(problem), penalty, strength), ...)")


class _SameState(AbstractFlow):
    """A wrapper whose state is its inner flow's state: problem, init and product are the inner flow's."""

    flow: eqx.AbstractVar[AbstractParameterization]

    @property
    def problem(self) -> AbstractProblem:
        return self.flow.problem

    def init(self, scale=1e-3, kind="identity", seed=0):
        return self.flow.init(scale=scale, kind=kind, seed=seed)

    def product(self, state):
        return self.flow.product(state)


class Penalized(_SameState, AbstractParameterization):
    r"""Gradient flow of $L(W) + \lambda R(W)$ through the inner parameterization $W = \phi(\theta)$.

    $\theta' = -\phi'(\theta)^* \big(\nabla L(W) + \lambda \nabla R(W)\big)$: the inner flow's
    pullback applied to the penalized gradient on W. Penalties nest (a Penalized flow may wrap
    another), adding up.

    Conserved quantities of the inner flow stay conserved: they come from the invariance of
    $W = \phi(\theta)$ under a group acting on $\theta$, not from the loss. For $W = UV^T$ and any
    G on W, $U' = -GV$, $V' = -G^T U$ give $(U^T U)' = -U^T G V - V^T G^T U = (V^T V)'$; for deep
    products the same computation holds at each junction. So `conserved` delegates.

    `loss` stays the data loss (what trajectories record and `stop_loss` watches); the penalized
    objective is `objective(W)`.
    """

    flow: AbstractParameterization
    penalty: AbstractPenalty
    strength: Float[Array, ""]

    def __init__(self, flow: AbstractParameterization, penalty: AbstractPenalty, strength: float):
        _check_inner("Penalized", flow)
        if not isinstance(penalty, AbstractPenalty):
            raise ValueError(f"penalty must be a flows penalty (Nuclear, Ratio, Frobenius); got {type(penalty).__name__}")
        self.flow = flow
        self.penalty = penalty
        self.strength = _scalar(check_nonnegative("strength", strength))

    def pullback(self, state, G):
        return self.flow.pullback(state, G)

    def objective(self, W: Float[Array, "n1 n2"]) -> Float[Array, ""]:
        r"""$L(W) + \lambda R(W)$ (plus the penalties of inner Penalized flows)."""
        inner = self.flow.objective(W) if isinstance(self.flow, Penalized) else self.problem.loss(W)
        return inner + self.strength * self.penalty(W)

    def objective_grad(self, W: Float[Array, "n1 n2"]) -> Float[Array, "n1 n2"]:
        r"""$\nabla L(W) + \lambda \nabla R(W)$ (plus the penalties of inner Penalized flows)."""
        inner = self.flow.objective_grad(W) if isinstance(self.flow, Penalized) else self.problem.grad(W)
        return inner + self.strength * self.penalty.grad(W)

    def gradient(self, state):
        return self.pullback(state, self.objective_grad(self.product(state)))

    def conserved(self, state):
        return self.flow.conserved(state)

    def describe(self):
        return {"flow": "Penalized", "inner": self.flow.describe(), **self.penalty.describe(),
                "strength": float(self.strength)}


# -- adaptive (per-coordinate preconditioned) dynamics -------------------------------------------


def _debiased(moment, rate, t, limit):
    r"""The bias-corrected moment $\hat m = m / (1 - e^{-\text{rate}\, t})$, with its limit at t = 0.

    The moments start at zero, so at t = 0 this is 0/0; its limit is the moment's target at t = 0
    (g or g^2), because $m(t) = \text{rate}\, t\, g(0) + O(t^2)$ and $1 - e^{-\text{rate}\,t} =
    \text{rate}\, t + O(t^2)$. That limit is returned where the denominator is 0 (only at t = 0,
    where the state is the initial one); elsewhere `expm1` keeps the denominator exact to rounding
    even at rate * t ~ 1e-16, and m, integrated from 0, is accurate relative to its size.
    """
    c = -jnp.expm1(-rate * t)
    return jnp.where(c > 0, moment / jnp.where(c > 0, c, 1.0), limit)


class AbstractAdaptive(AbstractFlow):
    r"""Per-coordinate preconditioned dynamics on the parameters of a gradient flow.

    The state is a dict: "params" (the inner flow's state) and the moment states named in
    `moment_names`, each a pytree like "params" that starts at zero (the bias correction assumes
    it; `init` does so). $g = \nabla_\theta$ of the inner flow's objective. `product` and `loss`
    read "params". No conserved quantities: a per-coordinate preconditioner breaks the symmetry
    behind them.

    `optimizer(step)` is the finite-step counterpart (an optax transformation, used by
    `flows.descend`) with $1 - \beta = \text{rate} \cdot \text{step}$, and `moments(opt_state)`
    reads its moments back in this flow's names, so both give states of the same form.
    """

    flow: eqx.AbstractVar[AbstractParameterization]
    moment_names: ClassVar[tuple[str, ...]]
    rate_names: ClassVar[tuple[str, ...]]
    constant_names: ClassVar[tuple[str, ...]]

    @property
    def problem(self) -> AbstractProblem:
        return self.flow.problem

    def init(self, scale=1e-3, kind="identity", seed=0):
        params = self.flow.init(scale=scale, kind=kind, seed=seed)
        return {"params": params, **{name: jax.tree.map(jnp.zeros_like, params) for name in self.moment_names}}

    def product(self, state):
        return self.flow.product(state["params"])

    def vector_field(self, t, state, args):
        g = self.flow.gradient(state["params"])
        return self.field(t, state, g)

    @abc.abstractmethod
    def field(self, t, state: dict, g) -> dict:
        """The right-hand side given the parameter gradient g."""

    def rates(self) -> dict[str, Float[Array, ""]]:
        """The moment rates by name; a finite step needs rate * step < 1."""
        return {name: getattr(self, name) for name in self.rate_names}

    @abc.abstractmethod
    def optimizer(self, step: Float[Array, ""]) -> optax.GradientTransformation:
        """The discrete method whose step-to-zero limit this flow is."""

    @abc.abstractmethod
    def moments(self, opt_state) -> dict:
        """The optimizer's moment states under this flow's names."""

    def describe(self):
        return {"flow": type(self).__name__, "inner": self.flow.describe(),
                **{name: float(getattr(self, name)) for name in self.constant_names}}


def _root(vhat):
    """sqrt(vhat), read as 0 where vhat <= 0, with derivative 0 there instead of inf * 0 = NaN.

    The exact v is >= 0, but Runge-Kutta stages combine slopes with negative weights and can land a
    tiny v slightly below 0; coordinates whose gradient vanishes identically keep v = 0 exactly.
    """
    positive = vhat > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, vhat, 1.0)), 0.0)


def _ema_field(rate, target, moment):
    return jax.tree.map(lambda x, m: rate * (x - m), target, moment)


def _square(tree):
    return jax.tree.map(jnp.square, tree)


class Adam(AbstractAdaptive):
    r"""The continuous Adam flow (Barakat & Bianchi 2021), per coordinate of the parameters:

    $m' = a (g - m)$, $v' = b (g^2 - v)$, $\theta' = -\hat m / (\sqrt{\hat v} + \epsilon)$,
    $\hat m = m / (1 - e^{-a t})$, $\hat v = v / (1 - e^{-b t})$, $m(0) = v(0) = 0$.

    It is the small-step limit of optax.adam(eta, 1 - a eta, 1 - b eta, eps), with an O(eta) gap.
    The 0/0 of the bias correction at t = 0 is evaluated as its limit (see `_debiased`):
    $\hat m(0) = g(\theta_0)$, $\hat v(0) = g(\theta_0)^2$, so the flow starts at $-g/(|g| + \epsilon)$.
    Limits: `RMSProp` (a -> infinity), `Sign` (a, b -> infinity), and with eps -> infinity a
    time-rescaled `Momentum`. With eps -> 0 the flow is invariant to scaling the loss (scaling L by
    c is the same as eps -> eps / c). The defaults a = 100, b = 1 are optax.adam's b1 = 0.9,
    b2 = 0.999 at step 1e-3. eps > 0 is required (at eps = 0 a coordinate with g = 0 is 0/0).
    """

    flow: AbstractParameterization
    a: Float[Array, ""]
    b: Float[Array, ""]
    eps: Float[Array, ""]
    moment_names: ClassVar[tuple[str, ...]] = ("m", "v")
    rate_names: ClassVar[tuple[str, ...]] = ("a", "b")
    constant_names: ClassVar[tuple[str, ...]] = ("a", "b", "eps")

    def __init__(self, flow: AbstractParameterization, a: float = 100.0, b: float = 1.0, eps: float = 1e-8):
        _check_inner("Adam", flow)
        self.flow = flow
        self.a = _scalar(check_positive("a", a))
        self.b = _scalar(check_positive("b", b))
        self.eps = _scalar(check_positive("eps", eps))

    def field(self, t, state, g):
        g2 = _square(g)
        mhat = jax.tree.map(lambda m, x: _debiased(m, self.a, t, x), state["m"], g)
        vhat = jax.tree.map(lambda v, x: _debiased(v, self.b, t, x), state["v"], g2)
        return {"params": jax.tree.map(lambda m, v: -m / (_root(v) + self.eps), mhat, vhat),
                "m": _ema_field(self.a, g, state["m"]), "v": _ema_field(self.b, g2, state["v"])}

    def optimizer(self, step):
        return optax.adam(step, b1=1 - self.a * step, b2=1 - self.b * step, eps=self.eps)

    def moments(self, opt_state):
        return {"m": optax.tree_utils.tree_get(opt_state, "mu"), "v": optax.tree_utils.tree_get(opt_state, "nu")}


class RMSProp(AbstractAdaptive):
    r"""Adam without momentum (its a -> infinity limit): $v' = b (g^2 - v)$, $\theta' = -g / (\sqrt{\hat v} + \epsilon)$.

    $\hat v = v / (1 - e^{-b t})$, $v(0) = 0$. The limit of
    optax.rmsprop(eta, decay=1 - b eta, eps, eps_in_sqrt=False, bias_correction=True).
    """

    flow: AbstractParameterization
    b: Float[Array, ""]
    eps: Float[Array, ""]
    moment_names: ClassVar[tuple[str, ...]] = ("v",)
    rate_names: ClassVar[tuple[str, ...]] = ("b",)
    constant_names: ClassVar[tuple[str, ...]] = ("b", "eps")

    def __init__(self, flow: AbstractParameterization, b: float = 1.0, eps: float = 1e-8):
        _check_inner("RMSProp", flow)
        self.flow = flow
        self.b = _scalar(check_positive("b", b))
        self.eps = _scalar(check_positive("eps", eps))

    def field(self, t, state, g):
        g2 = _square(g)
        vhat = jax.tree.map(lambda v, x: _debiased(v, self.b, t, x), state["v"], g2)
        return {"params": jax.tree.map(lambda x, v: -x / (_root(v) + self.eps), g, vhat),
                "v": _ema_field(self.b, g2, state["v"])}

    def optimizer(self, step):
        return optax.rmsprop(step, decay=1 - self.b * step, eps=self.eps, eps_in_sqrt=False, bias_correction=True)

    def moments(self, opt_state):
        return {"v": optax.tree_utils.tree_get(opt_state, "nu")}


class Momentum(AbstractAdaptive):
    r"""Adam's numerator alone, no normalisation: $m' = a (g - m)$, $\theta' = -\hat m$, $\hat m = m / (1 - e^{-a t})$.

    The bias-corrected exponential average of past gradients, so that Adam, RMSProp and this flow
    differ by exactly one ingredient each. Its discrete counterpart is an EMA momentum with
    debiasing, optax.chain(optax.ema(1 - a eta, debias=True), optax.scale(-eta)); plain
    optax.sgd(momentum=beta) accumulates $g + \beta m$ without the $(1 - \beta)$ factor or the bias
    correction, so it would need a rescaled learning rate and would follow the uncorrected flow.
    As a -> infinity this is gradient flow.
    """

    flow: AbstractParameterization
    a: Float[Array, ""]
    moment_names: ClassVar[tuple[str, ...]] = ("m",)
    rate_names: ClassVar[tuple[str, ...]] = ("a",)
    constant_names: ClassVar[tuple[str, ...]] = ("a",)

    def __init__(self, flow: AbstractParameterization, a: float = 100.0):
        _check_inner("Momentum", flow)
        self.flow = flow
        self.a = _scalar(check_positive("a", a))

    def field(self, t, state, g):
        mhat = jax.tree.map(lambda m, x: _debiased(m, self.a, t, x), state["m"], g)
        return {"params": jax.tree.map(jnp.negative, mhat), "m": _ema_field(self.a, g, state["m"])}

    def optimizer(self, step):
        return optax.chain(optax.ema(1 - self.a * step, debias=True), optax.scale(-step))

    def moments(self, opt_state):
        return {"m": optax.tree_utils.tree_get(opt_state, "ema")}


class Sign(AbstractAdaptive):
    r"""The sign flow $\theta' = -g / (|g| + \epsilon)$, elementwise: Adam's a, b -> infinity limit.

    eps > 0 is required: at eps = 0 the field is discontinuous where a coordinate of g changes sign.
    The finite-step counterpart is the Euler step of this field (smoothed sign descent). The state
    is {"params": theta}, with no moments, to match the rest of the family.
    """

    flow: AbstractParameterization
    eps: Float[Array, ""]
    moment_names: ClassVar[tuple[str, ...]] = ()
    rate_names: ClassVar[tuple[str, ...]] = ()
    constant_names: ClassVar[tuple[str, ...]] = ("eps",)

    def __init__(self, flow: AbstractParameterization, eps: float = 1e-8):
        _check_inner("Sign", flow)
        self.flow = flow
        self.eps = _scalar(check_positive("eps", eps))

    def field(self, t, state, g):
        return {"params": jax.tree.map(lambda x: -x / (jnp.abs(x) + self.eps), g)}

    def optimizer(self, step):
        return optax.stateless(lambda g, params: jax.tree.map(lambda x: -step * x / (jnp.abs(x) + self.eps), g))

    def moments(self, opt_state):
        return {}


# -- finite steps ---------------------------------------------------------------------------------


class Modified(_SameState):
    r"""The modified flow of gradient descent with step $\eta$: gradient flow on $\tilde L = L + \tfrac{\eta}{4} \|\nabla_\theta L\|^2$.

    $\theta' = -\nabla_\theta \tilde L = -\big(g + \tfrac{\eta}{2} H g\big)$, $g = \nabla_\theta L$,
    $H = \nabla^2_\theta L$, with L the inner flow's objective as a function of its parameters
    (penalty included). Derivation (backward error analysis, Barrett & Dherin 2021): seek
    $\theta' = f_0 + \eta f_1$ whose time-$\eta$ flow equals one step
    $\theta - \eta g$ up to $O(\eta^3)$. The flow's Taylor expansion is
    $\theta + \eta f_0 + \eta^2 (f_1 + \tfrac12 f_0' f_0) + O(\eta^3)$, so $f_0 = -g$ and
    $f_1 = -\tfrac12 f_0' f_0 = -\tfrac12 H g$. $Hg$ is the JVP of the gradient in the direction g
    (no dense Hessian). Gradient descent tracks this flow to $O(\eta^2)$, gradient flow only to $O(\eta)$.

    The extra term is not a function of W alone, so the inner flow's conserved quantities are not
    conserved here (the objective keeps only the orthogonal part of their symmetry).
    """

    flow: AbstractParameterization
    eta: Float[Array, ""]

    def __init__(self, flow: AbstractParameterization, eta: float):
        _check_inner("Modified", flow)
        self.flow = flow
        self.eta = _scalar(check_positive("eta", eta))

    def vector_field(self, t, state, args):
        g, hessian_times = jax.linearize(self.flow.gradient, state)
        Hg = hessian_times(g)
        return jax.tree.map(lambda x, h: -(x + 0.5 * self.eta * h), g, Hg)

    def describe(self):
        return {"flow": "Modified", "inner": self.flow.describe(), "eta": float(self.eta)}
