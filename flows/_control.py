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
(as `diffrax.ClipStepSizeController` wraps one); the flow reaches it through Diffrax's `args`
(`flows.solve` passes `FlowArgs`).
"""

from __future__ import annotations

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp

from ._flow import FlowArgs


def _magnitude(y0, y1):
    """max(|y0|, |y1|) entry by entry; y0 where y1 is NaN (a step into a region where the field is undefined)."""
    return jax.tree.map(lambda a, b: jnp.maximum(jnp.abs(a), jnp.abs(jnp.where(jnp.isnan(b), a, b))), y0, y1)


class ArraywiseRelative(diffrax.AbstractAdaptiveStepSizeController):
    """Error control relative to each state array's running size (see the module docstring).

    `controller` is the PID controller that takes the decisions on the rescaled step; its atol is the
    relative floor (1e-2 rtol, `ArraywiseRelative.make`).
    """

    controller: diffrax.PIDController

    @classmethod
    def make(cls, rtol) -> "ArraywiseRelative":
        """Arraywise relative control at tolerance rtol (an array: changing it does not recompile)."""
        rtol = jnp.asarray(rtol)
        # pyright reads the base class's abstract rtol, atol and norm as fields; the properties below define them.
        return cls(diffrax.PIDController(rtol=rtol, atol=1e-2 * rtol))  # pyright: ignore[reportCallIssue]

    @property
    def rtol(self):
        return self.controller.rtol

    @property
    def atol(self):
        return self.controller.atol

    @property
    def norm(self):  # pyright: ignore[reportIncompatibleMethodOverride]  (an eqx.AbstractVar, met by a property)
        return self.controller.norm

    def wrap(self, direction):
        return eqx.tree_at(lambda c: c.controller, self, self.controller.wrap(direction))

    def init(self, terms, t0, t1, y0, dt0, args, func, error_order):
        # The initial step is chosen from y0 and f(y0) unscaled: with atol = rtol above a small y0 that is
        # h0 ~ 0.01 |y0| / |f(y0)|, already relative to the state's size.
        return self.controller.init(terms, t0, t1, y0, dt0, args, func, error_order)

    def adapt_step_size(self, t0, t1, y0, y1_candidate, args, y_error, error_order, controller_state):
        magnitude = _magnitude(y0, y1_candidate)
        sizes = jax.tree.map(lambda x: jnp.max(x, initial=0.0), magnitude)
        controller = self.controller
        if isinstance(args, FlowArgs):  # what `flows.solve` passes; the flow may measure some entries its own way
            sizes, norm = args.flow.error_control(t1, magnitude, sizes)
            if norm is not None:
                controller = eqx.tree_at(lambda c: c.norm, controller, norm)
        # A size 0: the entry is 0 at both ends of the step, and so is its error.
        sizes = jax.tree.map(lambda s: jnp.where(s > 0, s, 1.0), sizes)
        scaled = lambda tree: jax.tree.map(lambda x, s: x / s, tree, sizes)  # noqa: E731
        return controller.adapt_step_size(
            t0, t1, scaled(y0), scaled(y1_candidate), args, scaled(y_error), error_order, controller_state
        )
