r"""Dynamics: how the parameter gradient $g = \nabla_\theta f$ becomes a vector field.

Gradient flow $\theta' = -g$; the Adam flow and its limits (RMSProp: no momentum; `Momentum`: no
normalisation; `Sign`: both rates infinite), which carry moment states; the modified flow of gradient
descent. Each dynamics owns its state (the parameters, plus moments), its vector field, and its
discrete counterpart: the finite-step method it is the small-step limit of, as an optax
transformation (`optimizer`), whose state reads back in the flow's form (`state_of`), so that
`flows.descend` and `flows.solve` give trajectories of one form.

Every rate and constant is a float64 array field, so changing it does not recompile a solve.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Float, PyTree

from ._validate import check_positive

# JAX arrays, or NumPy ones (a saved trajectory's states): every method accepts both.
Params = PyTree[Float[Array | np.ndarray, "..."]]
Gradient = Callable[[Params], Params]


def _scalar(value: float) -> Float[Array, ""]:
    return jnp.asarray(value, dtype=jnp.float64)


class AbstractDynamics(eqx.Module):
    """Turns the parameter gradient into a vector field, and knows its finite-step counterpart.

    `follows_gradient`: the field is exactly $-g$, so the Gauss-Newton matrix of the objective linearises it
    (the stiff solver relies on it). `keeps_symmetry`: the parameterization's conserved quantities stay
    conserved (true for any field $-\\phi'^* G$; a per-coordinate preconditioner or the modified flow's
    extra term breaks them). `preconditioned`: the field is $-D g$ with D diagonal, positive and as large as
    $1/\\epsilon$ where a coordinate's gradient is small, and no momentum. Such a flow is stiff wherever a gradient
    entry is small, from the start of a run and not only in a convergence tail, and its stiff eigenvalues are
    those of $-D H$, similar to $-D^{1/2} H D^{1/2}$: real, where the stabilised explicit Runge-Kutta-Chebyshev
    method is stable (`flows.default_solver` takes it). A momentum (the Adam flow's) turns them into
    oscillations $-a/2 \\pm i\\omega$ instead.
    """

    follows_gradient: ClassVar[bool] = False
    keeps_symmetry: ClassVar[bool] = False
    preconditioned: ClassVar[bool] = False
    error_norm: ClassVar[Callable[[Any], Any] | None] = None
    """The norm of a step's error, each entry divided by its tolerance (`flows.ArraywiseRelative`); None:
    the controller's own, the root mean square over entries."""
    controller_gains: ClassVar[tuple[float, float]] = (0, 1)
    """(pcoeff, icoeff) of the default step-size controller (`diffrax.PIDController`): an I controller, Diffrax's
    default, for fields whose explicit steps are held by accuracy; a PI controller where they are held by stability."""
    restarts: ClassVar[bool] = True
    """Whether a state reached mid-run may start a new run with the clock at 0 and continue the same trajectory: the
    field depends on the state alone, and no part of the state must start at a fixed value."""

    def init(self, params: Params) -> Any:
        """The state at t = 0 from the initial parameters."""
        return params

    def params(self, state) -> Params:
        """The parameters of a state."""
        return state

    @abc.abstractmethod
    def vector_field(self, t, state, gradient: Gradient) -> Params:
        """The right-hand side at time t, given the objective's parameter gradient as a function."""

    def error_sizes(self, t, magnitude, sizes):
        """The sizes against which `flows.ArraywiseRelative` measures the local error of each state entry.

        `magnitude`: max(|y(t0)|, |y(t1)|) entry by entry over a step ending at t; `sizes`: each state
        array's largest magnitude, the default (errors relative to each array's size). Dynamics whose field
        depends on some entries relative to their own size override this (`Adam`, `RMSProp`).
        """
        return sizes

    def check_state(self, state) -> None:
        """Raise ValueError for an initial state these dynamics cannot start from (host-side)."""

    def check_step(self, step: float) -> None:
        """Raise ValueError if the discrete counterpart cannot take steps of this size."""

    @abc.abstractmethod
    def optimizer(self, step: Float[Array, ""]) -> optax.GradientTransformation:
        """The discrete method whose step-to-zero limit these dynamics are (time t = k * step)."""

    def state_of(self, params: Params, opt_state) -> Any:
        """The flow state of the discrete method's parameters and optimizer state."""
        return params

    def describe(self) -> dict[str, Any]:
        """A JSON-able description (saved with trajectories)."""
        return {"name": type(self).__name__}


class GradientFlow(AbstractDynamics):
    r"""$\theta' = -g$; its discrete counterpart is gradient descent, optax.sgd(step)."""

    follows_gradient = True
    keeps_symmetry = True

    def vector_field(self, t, state, gradient):
        return jax.tree.map(jnp.negative, gradient(state))

    def optimizer(self, step):
        return optax.sgd(step)


class Modified(AbstractDynamics):
    r"""The modified flow of gradient descent with step $\eta$: gradient flow on $\tilde f = f + \tfrac{\eta}{4} \|\nabla_\theta f\|^2$.

    $\theta' = -\nabla_\theta \tilde f = -\big(g + \tfrac{\eta}{2} H g\big)$, $g = \nabla_\theta f$,
    $H = \nabla^2_\theta f$, f the flow's objective (penalty included). Derivation (backward error
    analysis, Barrett & Dherin 2021): seek $\theta' = f_0 + \eta f_1$ whose time-$\eta$ flow equals one
    step $\theta - \eta g$ up to $O(\eta^3)$. The flow's Taylor expansion is
    $\theta + \eta f_0 + \eta^2 (f_1 + \tfrac12 f_0' f_0) + O(\eta^3)$, so $f_0 = -g$ and
    $f_1 = -\tfrac12 f_0' f_0 = -\tfrac12 H g$. $Hg$ is the JVP of the gradient in the direction g
    (no dense Hessian). Gradient descent tracks this flow to $O(\eta^2)$, gradient flow only to $O(\eta)$.

    It is a model *of* gradient descent, so it has no discrete counterpart of its own: run
    `flows.descend` on the gradient flow with step $\eta$. The extra term is not a function of W alone,
    so the parameterization's conserved quantities are not conserved.

    Args:
        eta: the gradient-descent step this flow models.
    """

    eta: Float[Array, ""]

    def __init__(self, eta: float):
        self.eta = _scalar(check_positive("eta", eta))

    def vector_field(self, t, state, gradient):
        g, hessian_times = jax.linearize(gradient, state)
        return jax.tree.map(lambda x, h: -(x + 0.5 * self.eta * h), g, hessian_times(g))

    def check_step(self, step):
        raise ValueError(
            "Modified is the modified flow *of* gradient descent; to compare, descend the same flow "
            f"with dynamics=GradientFlow() and step = eta = {float(self.eta):g}"
        )

    def optimizer(self, step):
        raise ValueError("Modified has no discrete counterpart of its own (see check_step)")

    def describe(self):
        return {"name": "Modified", "eta": float(self.eta)}


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


def _root(vhat):
    """sqrt(vhat), read as 0 where vhat <= 0, with derivative 0 there instead of inf * 0 = NaN.

    The exact v is >= 0, but Runge-Kutta stages combine slopes with negative weights and can land a
    tiny v slightly below 0; coordinates whose gradient vanishes identically keep v = 0 exactly.
    """
    positive = vhat > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, vhat, 1.0)), 0.0)


def _denominator(b, eps, t, v):
    r"""$\sqrt{v} + \epsilon \sqrt{c_b}$, $c_b = 1 - e^{-bt}$: the field's denominator in v's units.

    It is $\sqrt{c_b}\,(\sqrt{\hat v} + \epsilon)$, finite at every t > 0 (no bias correction to divide by).
    """
    return jnp.sqrt(v) + eps * jnp.sqrt(-jnp.expm1(-b * t))


def _max_norm(tree) -> Float[Array, ""]:
    """The largest |entry| of a pytree."""
    return jnp.max(jnp.stack([jnp.max(jnp.abs(x), initial=0.0) for x in jax.tree.leaves(tree)]))


def _ema_field(rate, target, moment):
    return jax.tree.map(lambda x, m: rate * (x - m), target, moment)


def _square(tree):
    return jax.tree.map(jnp.square, tree)


class AbstractAdaptive(AbstractDynamics):
    r"""Per-coordinate preconditioned dynamics: the state is a dict of "params" and the moments.

    The moment states named in `moment_names` are pytrees like "params" that start at zero (the
    bias correction assumes it; `init` does so and `check_state` insists). The finite-step
    counterpart has $1 - \beta = \text{rate} \cdot \text{step}$ for each rate in `rate_names`;
    `moments(opt_state)` reads its moments back under this flow's names.
    """

    moment_names: ClassVar[tuple[str, ...]]
    rate_names: ClassVar[tuple[str, ...]]
    constant_names: ClassVar[tuple[str, ...]]
    restarts = False  # the moments start at zero, and the bias corrections read the time since
    # The max norm, not the RMS: a per-coordinate preconditioner moves each coordinate at its own O(1)
    # speed, so one coordinate's error counts in full, not sqrt(N) times diluted among N entries. Measured
    # (Adam, UU^T sensing from 1e-6, rtol 1e-8): a coordinate sliding along g_i = 0 leaves that ridge with
    # its error amplified ~40x, and the RMS norm ended 1.7e-6 off the reference, the max norm 1.5e-7.
    error_norm = staticmethod(_max_norm)

    def init(self, params):
        return {"params": params, **{name: jax.tree.map(jnp.zeros_like, params) for name in self.moment_names}}

    def params(self, state):
        return state["params"]

    def vector_field(self, t, state, gradient):
        return self.field(t, state, gradient(state["params"]))

    @abc.abstractmethod
    def field(self, t, state: dict, g) -> dict:
        """The right-hand side given the parameter gradient g."""

    @abc.abstractmethod
    def moments(self, opt_state) -> dict:
        """The optimizer's moment states under this flow's names."""

    def state_of(self, params, opt_state):
        return {"params": params, **self.moments(opt_state)}

    def check_state(self, state):
        # The bias correction 1 / (1 - e^{-rate t}) and its t = 0 limit assume moments that start at 0.
        if any(np.any(np.asarray(leaf) != 0) for name in self.moment_names for leaf in jax.tree.leaves(state[name])):
            raise ValueError(
                "state0's moments must be zero (as flow.init makes them): the bias correction "
                "assumes moments that start from zero at t = 0"
            )

    def check_step(self, step):
        for name in self.rate_names:
            rate = float(getattr(self, name))
            if not rate * step < 1:
                raise ValueError(
                    f"step * {name} = {step * rate:g} must be < 1 (the optimizer's decay is "
                    f"1 - {name} * step); use a smaller step"
                )

    def describe(self):
        return {"name": type(self).__name__, **{name: float(getattr(self, name)) for name in self.constant_names}}


class Adam(AbstractAdaptive):
    r"""The continuous Adam flow (Barakat & Bianchi 2021), per coordinate of the parameters:

    $m' = a (g - m)$, $v' = b (g^2 - v)$, $\theta' = -\hat m / (\sqrt{\hat v} + \epsilon)$,
    $\hat m = m / (1 - e^{-a t})$, $\hat v = v / (1 - e^{-b t})$, $m(0) = v(0) = 0$.

    It is the small-step limit of optax.adam(eta, 1 - a eta, 1 - b eta, eps), with an O(eta) gap.
    The 0/0 of the bias correction at t = 0 is evaluated as its limit (see `_debiased`):
    $\hat m(0) = g(\theta_0)$, $\hat v(0) = g(\theta_0)^2$, so the flow starts at $-g/(|g| + \epsilon)$.

    Limits. a -> infinity: `RMSProp` ($\hat m$ follows g at once). a, b -> infinity: `Sign`.
    eps -> infinity: time-rescaled gradient flow. In the slow time $\tau = t / \epsilon$ the field is
    $d\theta/d\tau = -\hat m / (\sqrt{\hat v}/\epsilon + 1)$ while the moments relax at the rates
    $a\epsilon$ and $b\epsilon$, which go to infinity: $\hat m \to g$ and $\sqrt{\hat v}/\epsilon \to 0$, so
    $\theta_\text{Adam}(t) \to \theta_\text{GF}(t / \epsilon)$, with a gap of order $1/\epsilon$ (not
    `Momentum`: its moment keeps its finite rate). eps -> 0: invariant to scaling the loss (scaling L
    by c is the same as eps -> eps / c). The defaults a = 100, b = 1 are optax.adam's b1 = 0.9,
    b2 = 0.999 at step 1e-3. eps > 0 is required (at eps = 0 a coordinate with g = 0 is 0/0).

    Args:
        a: first-moment rate; the discrete Adam's 1 - beta1 = a * step.
        b: second-moment rate; the discrete Adam's 1 - beta2 = b * step.
        eps: added to the root of the second moment in the denominator (> 0).
    """

    a: Float[Array, ""]
    b: Float[Array, ""]
    eps: Float[Array, ""]
    moment_names = ("m", "v")
    rate_names = ("a", "b")
    constant_names = ("a", "b", "eps")
    controller_gains = (0.3, 0.3)
    r"""A PI controller: the moment turns the stiff eigenvalues into oscillations $-a/2 \pm i\omega$ that hold Tsit5's
    steps at its stability limit, where an I controller's steps overshoot and are rejected in turn. Over the
    experiments' 231 Adam-flow runs (benchmarks/README.md): 19 % of attempts rejected under the I controller, 5 % under
    this one, and 9 % fewer attempts in all (14 % fewer on the stiffest runs, a few more on short ones)."""

    def __init__(self, a: float = 100.0, b: float = 1.0, eps: float = 1e-8):
        self.a = _scalar(check_positive("a", a))
        self.b = _scalar(check_positive("b", b))
        self.eps = _scalar(check_positive("eps", eps))

    def field(self, t, state, g):
        g2 = _square(g)
        mhat = jax.tree.map(lambda m, x: _debiased(m, self.a, t, x), state["m"], g)
        vhat = jax.tree.map(lambda v, x: _debiased(v, self.b, t, x), state["v"], g2)
        return {
            "params": jax.tree.map(lambda m, v: -m / (_root(v) + self.eps), mhat, vhat),
            "m": _ema_field(self.a, g, state["m"]),
            "v": _ema_field(self.b, g2, state["v"]),
        }

    def error_sizes(self, t, magnitude, sizes):
        r"""Each moment entry measured by the error it causes in the field $F = -\hat m / (\sqrt{\hat v} + \epsilon)$.

        Why not each array's size: F is sign-like, O(1) in every coordinate whatever its gradient, so
        the moments span the squared dynamic range of g across coordinates. From init scale 1e-6, a
        coordinate held at $g_i \approx 0$ (the field slides along $g_i = 0$) keeps $\hat v_i \sim 10^{-12}$
        while $\max \hat v \sim 10$: an error relative to the array's size leaves its $v_i$, hence its
        $F_i$, unresolved, and the trajectory leaves that ridge at the wrong time (2e-4 off at rtol 1e-8).

        With $c_r = 1 - e^{-rt}$ and $D = \sqrt{v} + \epsilon \sqrt{c_b} = \sqrt{c_b}(\sqrt{\hat v} + \epsilon)$
        (`_denominator`):
        * $\partial F_i / \partial m_i = -\sqrt{c_b} / (c_a D_i)$. An error in m relaxes at rate a, so it
          moves $\theta$ by $\delta F / a$, while $\theta$ itself is of size $\|\theta\|_\infty + \|F\|_\infty / a$
          over that time: m is measured against $(c_a / \sqrt{c_b})\, D_i\, (\|F\|_\infty + a \|\theta\|_\infty)$
          (per array). Early, F dominates (F to rtol relative to its own size); in the convergence tail
          $F \to 0$ and $\theta$ does (m relative to the round-off of g would collapse the step).
        * $\partial F_i / \partial v_i = -F_i / (2 \sqrt{v_i} D_i)$ and $|F_i| \le C \sqrt{v_i} / D_i$ ($\hat m$ and
          $\hat v$ average g and g^2 with comparable weights; C = sqrt(a / b) bounds their ratio), so v is
          measured against $D_i^2$: relative to $v_i$ itself where $\sqrt{\hat v_i} \gg \epsilon$, and to
          $c_b \epsilon^2$ below, where F no longer depends on v.
        """
        d = jax.tree.map(lambda v: _denominator(self.b, self.eps, t, v), magnitude["v"])
        c_a = -jnp.expm1(-self.a * t)
        c_b = -jnp.expm1(-self.b * t)
        unit = jax.tree.map(lambda x: c_a / jnp.sqrt(c_b) * x, d)  # m_i / unit_i = -F_i
        m = jax.tree.map(
            lambda u, m, p: u * (jnp.max(m / u, initial=0.0) + self.a * p), unit, magnitude["m"], sizes["params"]
        )
        return {"params": sizes["params"], "m": m, "v": jax.tree.map(jnp.square, d)}

    def optimizer(self, step):
        return optax.adam(step, b1=1 - self.a * step, b2=1 - self.b * step, eps=self.eps)

    def moments(self, opt_state):
        return {"m": optax.tree_utils.tree_get(opt_state, "mu"), "v": optax.tree_utils.tree_get(opt_state, "nu")}


class RMSProp(AbstractAdaptive):
    r"""Adam without momentum (its a -> infinity limit): $v' = b (g^2 - v)$, $\theta' = -g / (\sqrt{\hat v} + \epsilon)$.

    $\hat v = v / (1 - e^{-b t})$, $v(0) = 0$. The limit of
    optax.rmsprop(eta, decay=1 - b eta, eps, eps_in_sqrt=False, bias_correction=True).

    Args:
        b: second-moment rate; the discrete method's decay is 1 - b * step.
        eps: added to the root of the second moment in the denominator (> 0).
    """

    b: Float[Array, ""]
    eps: Float[Array, ""]
    preconditioned = True
    moment_names = ("v",)
    rate_names = ("b",)
    constant_names = ("b", "eps")

    def __init__(self, b: float = 1.0, eps: float = 1e-8):
        self.b = _scalar(check_positive("b", b))
        self.eps = _scalar(check_positive("eps", eps))

    def field(self, t, state, g):
        g2 = _square(g)
        vhat = jax.tree.map(lambda v, x: _debiased(v, self.b, t, x), state["v"], g2)
        return {
            "params": jax.tree.map(lambda x, v: -x / (_root(v) + self.eps), g, vhat),
            "v": _ema_field(self.b, g2, state["v"]),
        }

    def error_sizes(self, t, magnitude, sizes):
        """v measured against the square of the field's denominator in v's units, as for `Adam` (see there)."""
        return {
            "params": sizes["params"],
            "v": jax.tree.map(lambda v: jnp.square(_denominator(self.b, self.eps, t, v)), magnitude["v"]),
        }

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

    Args:
        a: rate of the gradients' exponential average; the discrete method's 1 - beta = a * step.
    """

    a: Float[Array, ""]
    moment_names = ("m",)
    rate_names = ("a",)
    constant_names = ("a",)
    error_norm = None  # no preconditioner: each array's RMS, as for gradient flow
    # Its moment's error is measured by its effect on the parameters (`error_sizes`), which changes what its stored
    # runs hold: their keys carry this revision (flows._keys).
    key_revision: ClassVar[int] = 1

    def __init__(self, a: float = 100.0):
        self.a = _scalar(check_positive("a", a))

    def field(self, t, state, g):
        mhat = jax.tree.map(lambda m, x: _debiased(m, self.a, t, x), state["m"], g)
        return {"params": jax.tree.map(jnp.negative, mhat), "m": _ema_field(self.a, g, state["m"])}

    def error_sizes(self, t, magnitude, sizes):
        r"""m measured by the error it causes in the parameters, not by its own size alone.

        An error $\delta m$ relaxes at rate a while it moves $\theta' = -m / c_a$ ($c_a = 1 - e^{-at}$), so it
        displaces $\theta$ by $\int_0^\infty \delta m\, e^{-as} / c_a\, ds = \delta m / (a c_a)$: m is measured
        against $s_m + a\, c_a\, s_\theta$ (s: each array's size; $\theta$'s error budget scaled back to m, plus
        m's own, which dominates while m carries the gradient). Against $s_m$ alone the step collapses in a
        convergence tail: there m decays like the gradient (1e-7 of $\theta$ at t = 2500 in a ratio-penalised
        completion run at n = 30) and its local errors would have to shrink with it, down to round-off.
        """
        c_a = -jnp.expm1(-self.a * t)
        return {
            "params": sizes["params"],
            "m": jax.tree.map(lambda m, p: m + self.a * c_a * p, sizes["m"], sizes["params"]),
        }

    def optimizer(self, step):
        return optax.chain(optax.ema(1 - self.a * step, debias=True), optax.scale(-step))

    def moments(self, opt_state):
        return {"m": optax.tree_utils.tree_get(opt_state, "ema")}


class Sign(AbstractAdaptive):
    r"""The sign flow $\theta' = -g / (|g| + \epsilon)$, elementwise: Adam's a, b -> infinity limit.

    eps > 0 is required: at eps = 0 the field is discontinuous where a coordinate of g changes sign.
    Near such a coordinate the field is $-g / \epsilon$, so the flow is stiff there with rates of order
    $\|\nabla^2 L\| / \epsilon$, and a run's cost grows as eps shrinks (10 x 10 sensing from 1e-3 I to
    t = 10: 7,900 steps at 1e-3, 60,000 at 1e-5; at 1e-8, 100,000 steps reach t = 0.38). The default is
    the completion experiment's 1e-3, not Adam's 1e-8. The finite-step counterpart is the Euler step of this field
    (smoothed sign descent). The state is {"params": theta}, with no moments, to match the rest of the
    family.

    Args:
        eps: smoothing of the sign, g / (|g| + eps) (> 0); the smaller, the stiffer the flow.
    """

    eps: Float[Array, ""]
    preconditioned = True  # D = eps / (|g| + eps)^2
    moment_names = ()
    rate_names = ()
    constant_names = ("eps",)

    def __init__(self, eps: float = 1e-3):
        self.eps = _scalar(check_positive("eps", eps))

    def field(self, t, state, g):
        return {"params": jax.tree.map(lambda x: -x / (jnp.abs(x) + self.eps), g)}

    def optimizer(self, step):
        return optax.stateless(lambda g, params: jax.tree.map(lambda x: -step * x / (jnp.abs(x) + self.eps), g))

    def moments(self, opt_state):
        return {}


DYNAMICS = {
    "gradient": GradientFlow,
    "adam": Adam,
    "rmsprop": RMSProp,
    "momentum": Momentum,
    "sign": Sign,
    "modified": Modified,
}
"""Dynamics by the names the command line accepts."""
