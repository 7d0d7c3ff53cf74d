r"""Step-size control relative to the size of each array of the state.

The flows of this project start from initializations of any scale (1e-1 to 1e-7) and grow by orders of
magnitude; moment states start at exactly zero and follow $g$ or $g^2$. A PID controller with one absolute
tolerance either admits errors of the state's own size (atol above a 1e-6 state: ~1e-4 relative per step
in the small-initialization runs, which moves the escape times of incremental learning) or, with atol near
zero, demands pure relative accuracy of every entry, which collapses the step where an entry crosses zero.

`ArraywiseRelative` measures the error of each state entry i of array a against that array's current size:
it passes when

    $|e_i| \le \text{rtol}\,(|y_i| + 10^{-2} s_a)$,   $s_a = \max(\|y_{a}(t_0)\|_\infty, \|y_{a}(t_1)\|_\infty)$,

so W is delivered to about rtol relative accuracy whatever its scale. The flow's dynamics may replace
$s_a$ by sizes entry by entry, and the root-mean-square norm over entries by another
(`AbstractDynamics.error_sizes`, `error_norm`: the Adam flow's moments are measured by the error they
cause in its field, in the max norm). It is a wrapper: it divides each entry by its size and hands the
rescaled step to a PID controller with `atol = 1e-2 rtol`, through Diffrax's public controller interface
(as `diffrax.ClipStepSizeController` wraps one); the flow's own measure reaches it as `error_control`, a
function of Diffrax's `args` that `flows.solve` supplies.

Three more wrappers serve `flows.solve`:

* `LandOnTimes` lands steps on the save times; where a save time lies just beyond a step it takes two equal steps
  to it instead of a step and a sliver.

* `LandOnEvent` lands a step on the crossing of a threshold (`stop_loss`): a step that overshoots it by more than
  a small window is rejected and retried to end at the crossing predicted by the secant of log(loss) over the
  step. The run then ends on an actual step, within the window of the threshold, and Diffrax's event root
  finding places the final time exactly on it with the dense output over a sliver of a step.
* `StopOnCollapse` ends a solve whose step size has collapsed (below a few hundred ulps of t for a hundred
  attempts in a row: a state that overflowed, or a field that is not finite) with `diffrax.RESULTS.dt_min_reached`,
  instead of spending the step budget on steps that cannot advance t.

`scaled_error` gives the norm by which one of these controllers (or Diffrax's PID) accepts a step, for a solver that
weighs a step it has not taken (`flows.Tsit5ThenMerson`'s trial).
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import ClassVar

import diffrax
import equinox as eqx
import equinox.internal as eqxi
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float


def _magnitude(y0, y1):
    """max(|y0|, |y1|) entry by entry; y0 where y1 is not finite (a trial step that overflowed, or went where the
    field is undefined): a size of inf would make the scaled error inf / inf = NaN, and the next step size NaN, where
    the step should shrink."""
    return jax.tree.map(lambda a, b: jnp.maximum(jnp.abs(a), jnp.abs(jnp.where(jnp.isfinite(b), b, a))), y0, y1)


class _Wrapper(diffrax.AbstractAdaptiveStepSizeController):
    """Delegates everything to `controller` (subclasses change `adapt_step_size`)."""

    controller: eqx.AbstractVar[diffrax.AbstractAdaptiveStepSizeController]

    @property
    def rtol(self):
        return self.controller.rtol

    @property
    def atol(self):
        return self.controller.atol

    @property
    def norm(self):  # pyright: ignore[reportIncompatibleMethodOverride]  (an eqx.AbstractVar met by a property)
        return self.controller.norm

    def wrap(self, direction):
        return eqx.tree_at(lambda c: c.controller, self, self.controller.wrap(direction))

    def scaled_error(self, t1, y0, y1_candidate, args, y_error) -> Float[Array, ""]:
        """The inner controller's `scaled_error`: the wrappers change where steps end, not how errors are measured."""
        return scaled_error(self.controller, t1, y0, y1_candidate, args, y_error)


def measures(controller) -> bool:
    """Whether `scaled_error` can measure steps under `controller`: Diffrax's `PIDController` (also inside its
    `ClipStepSizeController`) and this module's controllers around one."""
    while isinstance(controller, (_Wrapper, diffrax.ClipStepSizeController)):
        controller = controller.controller
    return isinstance(controller, diffrax.PIDController)


def scaled_error(
    controller: diffrax.AbstractAdaptiveStepSizeController, t1, y0, y1_candidate, args, y_error
) -> Float[Array, ""]:
    r"""The norm of a step's error estimate by which `controller` accepts the step (below 1), for a solver that
    weighs a step it has not taken (`flows.Tsit5ThenMerson`'s trial step). For a `diffrax.PIDController` its own
    measure, $\|e / (\text{atol} + \text{rtol} \max(|y_0|, |y_1|))\|$ in its norm, with $y_0$ for a candidate that
    is not a number, as Diffrax's (a step at the PID's `dtmin`, which it keeps whatever its error, is not special
    here); this module's wrappers and Diffrax's `ClipStepSizeController` measure as the controller they wrap,
    `ArraywiseRelative` on the rescaled step. TypeError for a controller `measures` rejects."""
    if isinstance(controller, _Wrapper):
        return controller.scaled_error(t1, y0, y1_candidate, args, y_error)
    if isinstance(controller, diffrax.ClipStepSizeController):
        return scaled_error(controller.controller, t1, y0, y1_candidate, args, y_error)
    if not isinstance(controller, diffrax.PIDController):
        raise TypeError(f"no error measure for {type(controller).__name__}")

    def scale(a, b, e):
        b = jnp.where(jnp.isnan(b).any(), a, b)
        return e / (controller.atol + controller.rtol * jnp.maximum(jnp.abs(a), jnp.abs(b)))

    return jnp.asarray(controller.norm(jax.tree.map(scale, y0, y1_candidate, y_error)))


class ArraywiseRelative(_Wrapper):
    """Error control relative to each state array's running size (see the module docstring).

    `controller` is the PID controller that takes the decisions on the rescaled step; its atol is the
    relative floor (1e-2 rtol, `ArraywiseRelative.make`). `error_control(args, t, magnitude, sizes) -> (sizes,
    norm)`, if given, lets the system being solved measure some entries its own way (`AbstractFlow.error_control`;
    norm None: the controller's root mean square).
    """

    controller: diffrax.PIDController
    error_control: Callable | None = eqx.field(static=True, default=None)

    @classmethod
    def make(
        cls, rtol, error_control: Callable | None = None, gains: tuple[float, float] = (0, 1)
    ) -> "ArraywiseRelative":
        """Arraywise relative control at tolerance rtol (an array: changing it does not recompile); `gains`: the PID
        controller's (pcoeff, icoeff)."""
        rtol = jnp.asarray(rtol)
        pid = diffrax.PIDController(rtol=rtol, atol=1e-2 * rtol, pcoeff=gains[0], icoeff=gains[1])
        # pyright lists the base's eqx.AbstractVar fields (rtol, atol, norm), met here by properties, as __init__'s.
        return cls(pid, error_control)  # pyright: ignore[reportCallIssue]

    def init(self, terms, t0, t1, y0, dt0, args, func, error_order):
        # The initial step is chosen from y0 and f(y0) unscaled: with atol = rtol above a small y0 that is
        # h0 ~ 0.01 |y0| / |f(y0)|, already relative to the state's size.
        return self.controller.init(terms, t0, t1, y0, dt0, args, func, error_order)

    def adapt_step_size(self, t0, t1, y0, y1_candidate, args, y_error, error_order, controller_state):
        controller, (y0, y1_candidate, y_error) = self._rescaled(t1, y0, y1_candidate, args, y_error)
        return controller.adapt_step_size(t0, t1, y0, y1_candidate, args, y_error, error_order, controller_state)

    def scaled_error(self, t1, y0, y1_candidate, args, y_error):
        controller, (y0, y1_candidate, y_error) = self._rescaled(t1, y0, y1_candidate, args, y_error)
        return scaled_error(controller, t1, y0, y1_candidate, args, y_error)

    def _rescaled(self, t1, y0, y1_candidate, args, y_error):
        """The PID controller (with the flow's norm, if it has one) and (y0, y1_candidate, y_error) divided entry by
        entry by their sizes."""
        magnitude = _magnitude(y0, y1_candidate)
        sizes = jax.tree.map(lambda x: jnp.max(x, initial=0.0), magnitude)
        controller = self.controller
        if self.error_control is not None:
            sizes, norm = self.error_control(args, t1, magnitude, sizes)
            if norm is not None:
                controller = eqx.tree_at(lambda c: c.norm, controller, norm)
        # A size 0: the entry is 0 at both ends of the step, and so is its error.
        sizes = jax.tree.map(lambda s: jnp.where(s > 0, s, 1.0), sizes)
        scaled = lambda tree: jax.tree.map(lambda x, s: x / s, tree, sizes)  # noqa: E731
        return controller, (scaled(y0), scaled(y1_candidate), scaled(y_error))


class LandOnEvent(_Wrapper):
    r"""Lands a step on the downward crossing of `distance(t, y, args)` through 0 (see the module docstring).

    `distance` is $q(y) / q_* - 1$ for a positive quantity q falling to its threshold $q_*$ (`flows.solve`: the
    data loss and `stop_loss`). A step the inner controller accepts, falling from $\log q_0$ to $\log q_1$ across
    the threshold, is rejected when it ends more than
    $w = \max(\min(\text{window}, \text{share}\,(\log q_0 - \log q_1)), \text{floor})$ below it in log q, and retried
    to end where the secant of $\log q$ through the step's two ends reaches half of what the retry will be allowed
    (at least the fraction `shortest` of the step, at most 95 %). The inner controller's state is kept as it was
    before the rejected attempt.

    The event's root finding then places the stop on the last step's dense output, within the last `share` of the
    step's fall and at most `window` below the threshold (`share` = 1: the window alone). Both bounds matter: a
    stiff solver's step falls by many units of log q while its state barely moves, so `window` alone keeps its root
    finding accurate, and a tight window there costs rejected steps (each a costly step); an explicit step falls by
    a fraction of a unit, so a `window` of several percent could leave the root a quarter of the step from its end,
    where the cubic dense output is least accurate, and `share` keeps it near the end.

    `distance(t, y, args, **kwargs)` may return +inf where it can tell cheaply that q is far above its threshold,
    and must return the exact value when called with `exact=True`: an end of the step at +inf cannot overshoot, and a
    start at +inf is evaluated exactly where the step could overshoot (`flows.solve`'s distance, through the flow's
    `LossFloor`).

    `floor` (1e-8 in log q) is about what the loss can resolve: on 4 x 4 sensing a loss of 1e-14 moves by 1.4e-9 of
    itself when the state moves by one ulp (its residuals cancel). Without it, a step that ends just above the threshold (log0 within a few
    ulps, or within that rounding) would leave the next step a band of share / (1 - share) log0 to end in: every
    retry would overshoot, and the step would shrink until `StopOnCollapse` ended the run as failed instead of
    stopped. It changes no decision where a crossing step falls by more than floor / share (2e-7 in log q).

    Locating the stop costs each step an evaluation of the distance here and one in the event (of the loss's floor,
    where that is far above the stop), and each rejection a step (benchmarks/README.md, `stop_landing.py`, against
    the same run to its final time without a stop). With `window` = 5 % and no `share` the switching runs there took
    0.86-0.89x the time of a 1 % window (sensing 14
    rejected steps against 17, deep3 16 against 19), their final W within 2.6e-10 of the exact flow's at rtol
    1e-8 as before, but factored sensing, stopped in Tsit5's phase, ended 2.0e-8 from it against 4.0e-9: its last
    step crossed the threshold a quarter of a step from its end. `share` = 5 % keeps factored's root within the
    last 5 % of its step and leaves the stiff steps' landing to `window`. In an algebraic tail, where a long step
    falls by little, any window alone can leave the root early in the step: the norms experiment's balanced depth-3
    run ended at |W_11| = 7073.0 (7072.3 at a tenth of the tolerance) where, with `share`, it ends at 7071.11 (7071.10).
    """

    controller: diffrax.AbstractAdaptiveStepSizeController
    distance: Callable = eqx.field(static=True)
    window: float = eqx.field(static=True, default=5e-2)
    shortest: float = eqx.field(static=True, default=0.05)
    share: float = eqx.field(static=True, default=0.05)
    floor: ClassVar[float] = 1e-8

    def __check_init__(self):
        if not 0.0 < self.share <= 1.0:
            raise ValueError(
                f"share is a fraction of the step's fall in (0, 1] (1: the window alone); got {self.share}"
            )

    def init(self, terms, t0, t1, y0, dt0, args, func, error_order):
        next_t1, state = self.controller.init(terms, t0, t1, y0, dt0, args, func, error_order)
        # The log-distance at the current step's start, carried: one evaluation of the distance per attempt.
        return next_t1, (state, jnp.log1p(self.distance(t0, y0, args)))

    def adapt_step_size(self, t0, t1, y0, y1_candidate, args, y_error, error_order, controller_state):
        inner, log0 = controller_state
        keep, next_t0, next_t1, made_jump, state, result = self.controller.adapt_step_size(
            t0, t1, y0, y1_candidate, args, y_error, error_order, inner
        )
        log1 = jnp.log1p(self.distance(t1, y1_candidate, args))
        # Only a kept step that ends below the threshold by more than `floor` can overshoot, and only then do the
        # decisions below read the start's value: a start certified far above the threshold (inf) is evaluated there.
        # Under vmap the predicate is the batch's, and each run keeps its own value where it needs none.
        needed = jnp.isposinf(log0) & keep & (log1 < -self.floor)
        log0 = jax.lax.cond(
            eqxi.unvmap_any(needed),
            lambda: jnp.where(needed, jnp.log1p(self.distance(t0, y0, args, exact=True)), log0),
            lambda: log0,
        )
        allowed = jnp.maximum(jnp.minimum(self.window, self.share * (log0 - log1)), self.floor)
        overshoot = keep & (log0 > 0) & (log1 < -allowed)
        # A retry that falls by log0 + target is allowed max(min(window, share (log0 + target)), floor); the target is
        # half of it.
        target = jnp.maximum(
            jnp.minimum(0.5 * self.window, 0.5 * self.share * log0 / (1.0 - 0.5 * self.share)), 0.5 * self.floor
        )
        theta = jnp.clip((log0 + target) / jnp.where(overshoot, log0 - log1, 1.0), self.shortest, 0.95)
        state = jax.tree.map(lambda old, new: jnp.where(overshoot, old, new), inner, state)
        keep = keep & ~overshoot
        return (
            keep,
            jnp.where(overshoot, t0, next_t0),
            jnp.where(overshoot, t0 + theta * (t1 - t0), next_t1),
            made_jump & ~overshoot,
            (state, jnp.where(keep, log1, log0)),
            result,
        )


class AbstractLandOnTimes(_Wrapper):
    """Lands steps on the times `ts` (increasing): every step the inner controller proposes, from t0 to t1, becomes
    the step from t0 to `_toward(t0, t1, target)`, which ends on `target`, the next of `ts` after t0, or before it,
    never after t1. Past the last of `ts` the step is as proposed."""

    ts: eqx.AbstractVar[Float[Array, " times"]]

    @abc.abstractmethod
    def _toward(self, t0, t1, target) -> Float[Array, ""]:
        """The end of the step from t0 that the inner controller proposed to end at t1, with `target` ahead."""

    def _land(self, t0, t1) -> Float[Array, ""]:
        ahead = jnp.searchsorted(self.ts, t0, side="right")
        target = self.ts[jnp.minimum(ahead, self.ts.size - 1)]
        return jnp.where(ahead < self.ts.size, self._toward(t0, t1, target), t1)

    def init(self, terms, t0, t1, y0, dt0, args, func, error_order):
        next_t1, state = self.controller.init(terms, t0, t1, y0, dt0, args, func, error_order)
        return self._land(t0, next_t1), state

    def adapt_step_size(self, t0, t1, y0, y1_candidate, args, y_error, error_order, controller_state):
        keep, next_t0, next_t1, made_jump, state, result = self.controller.adapt_step_size(
            t0, t1, y0, y1_candidate, args, y_error, error_order, controller_state
        )
        return keep, next_t0, self._land(next_t0, next_t1), made_jump, state, result


class LandOnTimes(AbstractLandOnTimes):
    r"""Lands steps on the times `ts` (increasing; the save times), so that every saved value is a step's, without
    slivers.

    From t, with the next of the times $t_s$ ahead and the inner controller's proposal h: where $t_s - t \le h$ the step
    ends on $t_s$; where $h < t_s - t \le (1 + \theta) h$, with $\theta$ = `sliver`, it ends halfway there, so the two
    steps to $t_s$ are equal; otherwise it is h. Clipping the step to $t_s$ alone (`diffrax.ClipStepSizeController`)
    leaves, before a save time that lies just beyond a step, a sliver of a step: it costs a whole step for a fraction
    of one, the inner controller then proposes the next step from it (at most its `factormax` times it), and a
    multistep solver rescales its history to it and back. A step is never longer than proposed: stretched to reach
    $t_s$, a rejected step could be proposed again within the stretch and repeated without end.

    Measured with the 200 default save times (benchmarks/README.md, `saved_values.py --landing`): the deep
    completion tail's run takes 0.85x and 0.91x the time of clipping at rtol 1e-8 and 1e-10, its stiff multistep
    phase the most; the small settings there 0.94-1.03x. Halving is used only for the last stretch: dividing the
    whole way to $t_s$ into equal steps shortens every step by up to half, which hides a step held by stability from
    the switching solvers' stiffness test ($h\rho$ on the step taken) and delayed their switch by up to a quarter of
    the run to it.
    """

    controller: diffrax.AbstractAdaptiveStepSizeController
    ts: Float[Array, " times"]
    sliver: float = eqx.field(static=True, default=0.5)

    def _toward(self, t0, t1, target) -> Float[Array, ""]:
        distance = target - t0
        halve = distance <= (1.0 + self.sliver) * (t1 - t0)
        return jnp.where(distance <= t1 - t0, target, jnp.where(halve, t0 + 0.5 * distance, t1))


class StopOnCollapse(_Wrapper):
    """Ends the solve with `diffrax.RESULTS.dt_min_reached` once the next step size has been below `ulps` units in
    the last place of t, or not a number, for `patience` attempts in a row.

    Near t = 0, where t has no last place to speak of, the reference is the smaller of 1e-12 of the solve's span and
    its first step: a solve may legitimately start with steps of 1e-18 (the adaptive flows' bias corrections ask for
    them), and a span alone would make the floor grow with t1 (at t1 = 1e25, 0.57 time units: ordinary first steps
    would count as collapsed)."""

    controller: diffrax.AbstractAdaptiveStepSizeController
    ulps: float = eqx.field(static=True, default=256.0)
    patience: int = eqx.field(static=True, default=100)

    def init(self, terms, t0, t1, y0, dt0, args, func, error_order):
        next_t1, state = self.controller.init(terms, t0, t1, y0, dt0, args, func, error_order)
        span = jnp.minimum(1e-12 * jnp.maximum(jnp.abs(t0), jnp.abs(t1)), jnp.abs(next_t1 - t0))
        return next_t1, (state, jnp.asarray(span, jnp.result_type(t0)), jnp.array(0))

    def adapt_step_size(self, t0, t1, y0, y1_candidate, args, y_error, error_order, controller_state):
        inner, span, streak = controller_state
        keep, next_t0, next_t1, made_jump, inner, result = self.controller.adapt_step_size(
            t0, t1, y0, y1_candidate, args, y_error, error_order, inner
        )
        floor = self.ulps * jnp.finfo(jnp.result_type(t0)).eps * jnp.maximum(jnp.abs(next_t0), span)
        # Written so that a step size of NaN counts as collapsed: it never recovers.
        streak = jnp.where(next_t1 - next_t0 >= floor, 0, streak + 1)
        result = diffrax.RESULTS.where(streak >= self.patience, diffrax.RESULTS.dt_min_reached, result)
        return keep, next_t0, next_t1, made_jump, (inner, span, streak), result
