r"""An explicit solver for oscillatory flows: Merson's 4(3) Runge-Kutta pair.

A flow with a momentum (the Adam flow) couples its moment's relaxation at rate $a$ with the Hessian, and its
linearisation has the stiff eigenvalues $\mu = -a/2 \pm i\omega$: lightly damped oscillations, with damping ratio
$\zeta = (a/2)/|\mu|$ of 0.0065 and 0.0009 on the stiffest mode of a measured run at t = 3 and 8 (n = 15, a = 10;
benchmarks/README.md). An explicit step of size h is stable on such a mode when its stability polynomial satisfies
$|R(h\mu)| \le 1$. Tsit5's reaches only $h|\mu| = 1.71$ along the ray of $\zeta = 0.005$ (1.92 at 0.01, 2.50 at
0.05; on the imaginary axis itself $|R(iy)| > 1$ from $y = 0.48$ on: 1.026 at 2, 1.56 at 3.4), and there its steps
are held ($h|\mu| = 1.27$ on average at t = 8 on that run, where Merson's reach 3.38). Merson's pair (5 stages,
order 4; Hairer, Norsett & Wanner, *Solving ODEs I*, II.4) has

$$R(z) = 1 + z + \tfrac{z^2}{2} + \tfrac{z^3}{6} + \tfrac{z^4}{24} + \tfrac{z^5}{144},\qquad
|R(iy)|^2 = 1 - \frac{y^8\,(12 - y^2)}{20736},$$

so it is stable on the whole segment $|y| \le 2\sqrt{3} \approx 3.46$ of the imaginary axis (3.44 along $\zeta =
0.05$) and damps the oscillation inside it ($|R(3i)| = 0.23$), at 5 evaluations a step against Tsit5's 6. (From
$\zeta \approx 0.25$ on, Tsit5's interval is the longer.) It has order 4 against Tsit5's 5, so where accuracy holds the
steps Tsit5 takes fewer evaluations. Measured on the completion experiment's Adam runs (benchmarks/README.md,
`adaptive_stiff.py --merson`): 1.35-2.4x Tsit5's speed where stability holds Tsit5's steps (rtol 1e-6), 0.74-0.92x
where accuracy does; so it is a choice for long stiff runs, not the default. `Tsit5ThenMerson` takes Tsit5 until a
power iteration on Jacobian-vector products sees the oscillation hold Tsit5's steps, then Merson.
"""

from __future__ import annotations

import dataclasses

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, Float, PyTree

from ._control import measures, scaled_error
from ._solver import AbstractFlowSolver, Hermite
from ._stiff import tsit5_step


class Merson(AbstractFlowSolver):
    r"""Merson's 4(3) explicit Runge-Kutta pair: stable and dissipative on the imaginary axis up to $|h\lambda| =
    2\sqrt{3}$ (module docstring): for the Adam flow's runs whose Tsit5 steps stability holds, at loose tolerances
    (`solver=flows.Merson()`, on the command line `--solver merson`; not the default, see the module docstring).

    With $k_i = h F(Y_i)$: $Y_1 = y_0$, $Y_2 = y_0 + k_1/3$, $Y_3 = y_0 + (k_1 + k_2)/6$, $Y_4 = y_0 + (k_1 + 3 k_3)/8$,
    $Y_5 = y_0 + (k_1 - 3 k_3 + 4 k_4)/2$ (at $t_0 + h\,(0, 1/3, 1/3, 1/2, 1)$); $y_1 = y_0 + (k_1 + 4 k_4 + k_5)/6$,
    order 4; the embedded $y_0 + (3 k_1 + 9 k_3 + 12 k_4 + 6 k_5)/30$ has order 3, and their difference
    $(2 k_1 - 9 k_3 + 8 k_4 - k_5)/30$ is the error estimate, $O(h^4)$. $F(y_1)$ is evaluated at the step's end: the
    dense output's end slope and the next step's $k_1$ (first same as last), so a step costs 5 evaluations, a
    rejected one too."""

    term_structure = diffrax.ODETerm
    interpolation_cls = Hermite
    # The cubic Hermite dense output is of order 3, below the steps' 4: saved values land.
    lands_save_times = True
    evaluations_per_step = 5

    def order(self, terms):
        return 4

    def error_order(self, terms):
        # The difference of the order-4 and order-3 solutions: O(h^4).
        return 4

    def init(self, terms, t0, t1, y0, args):
        return (ravel_pytree(terms.vf(t0, y0, args))[0],)

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        (f0,) = solver_state
        if made_jump is not False:
            f0 = jax.lax.cond(made_jump, lambda: ravel_pytree(terms.vf(t0, y0, args))[0], lambda: f0)
        y1, error, f1, unravel = merson_step(terms, t0, t1, y0, args, f0)
        # h * f is a JAX array; numpy's stubs type the product of a scalar-like h as possibly an ndarray.
        h = t1 - t0
        dense_info = dict(y0=y0, y1=unravel(y1), k0=unravel(h * f0), k1=unravel(h * f1))  # pyright: ignore[reportArgumentType]
        return unravel(y1), unravel(error), dense_info, (f1,), diffrax.RESULTS.successful


def merson_step(terms, t0, t1, y0: PyTree, args, f0: Float[Array, " n"]):
    """One step of Merson's pair (`Merson`) on the flattened state from the slope $f_0 = F(y_0)$: returns $(y_1$, the
    error estimate, $F(y_1)$, all flat, and the map back to the state's pytree)."""
    y0_flat, unravel = ravel_pytree(y0)
    h = t1 - t0

    def k(c, y):
        return h * ravel_pytree(terms.vf(t0 + c * h, unravel(y), args))[0]

    k1 = h * f0
    k2 = k(1 / 3, y0_flat + k1 / 3)
    k3 = k(1 / 3, y0_flat + (k1 + k2) / 6)
    k4 = k(1 / 2, y0_flat + (k1 + 3 * k3) / 8)
    k5 = k(1, y0_flat + (k1 - 3 * k3 + 4 * k4) / 2)
    y1 = y0_flat + (k1 + 4 * k4 + k5) / 6
    error = (2 * k1 - 9 * k3 + 8 * k4 - k5) / 30
    f1 = ravel_pytree(terms.vf(t1, unravel(y1), args))[0]
    return y1, error, f1, unravel


class Tsit5ThenMerson(AbstractFlowSolver):
    r"""Tsit5, then Merson's pair (`Merson`) once a lightly damped oscillation's stability holds Tsit5's steps: for
    the Adam flow's long runs (`solver=flows.Tsit5ThenMerson()`, on the command line `--solver switching-merson`; not
    the default: benchmarks/README.md, `adaptive_stiff.py --merson`).

    The dominant eigenvalue $\mu$ of the field's Jacobian $J$ is followed by a power iteration across the accepted
    steps, one Jacobian-vector product at the end of every `every`-th: $w = J v$, $v \leftarrow w / \|w\|$. On a
    dominant pair $\mu, \bar\mu$, $J^2 = 2\,\mathrm{Re}(\mu) J - |\mu|^2$ on its plane, so two consecutive norms give
    $|\mu| \approx (\|w_k\|\,\|w_{k+1}\|)^{1/2}$ for any vector of the plane where $|\mathrm{Re}\,\mu| \ll |\mu|$;
    on a dominant real eigenvalue they give $|\mu|$ too. On the Adam flow's runs (benchmarks/README.md,
    `adaptive_stiff.py --stiffness`) it reads what Hairer's test (`AbstractTsit5Then`: along the difference of
    Tsit5's last two stages) misses where the oscillation is barely excited: Tsit5's steps held at $h|\mu|$ =
    1.3-2.7 on modes of damping ratio 0.005-0.1, just inside Tsit5's stability boundary along those rays (1.71 at
    0.005, 2.50 at 0.05), where Hairer's estimate reads 0.05-1 over long stretches; on the runs whose steps accuracy
    holds, $h|\mu|$ stays below 1.

    A measurement with $h|\mu|$ above `threshold` counts for the switch, one below it against (the count does not
    fall below 0); at `patience` the run switches to Merson's pair for good, and measures no more. Both solvers start
    a step from the slope at its start (first same as last), so the switch hands it over and costs nothing more; the
    step-size controller sees order 5 in both phases. The dense output is the cubic Hermite interpolant through the
    step's ends and slopes; the steps land on the save times.

    Tsit5 held does not promise that Merson is faster: where accuracy holds Merson's order-4 steps below Tsit5's it
    is not (the Adam flow's ratio-penalty runs at rtol 1e-8: 4 % more evaluations than Tsit5). With `trial` set, the
    switch is tried first: one step of Merson's pair over `trial` times the current step, from its start, judged by
    the run's own error measure (`flows.scaled_error` of `controller`, which `flows.solve` supplies through
    `measured_by`; without one, the trial is not taken) on its error off the dominant pair's plane (the span of the
    last two iterates, a Euclidean projection on the flat state: under Tsit5, held at its stability boundary, that
    oscillation stays excited, and its error alone fails the trial where Merson takes 0.67x Tsit5's evaluations,
    tests/test_merson.py); failed, the count starts again. Merson's 5 evaluations a step against Tsit5's 6 break
    even at 5/6 of Tsit5's step; `trial=1.2` passed below an error of 1, where the controller settles near 0.6, asks
    Merson's steps to be about 1.05 times Tsit5's, a margin of about 1.26. The step it stretches is the attempted one,
    which landing on a save time or the stop may have shortened; under vmap (a batched sweep) the trial's branch
    runs on every step. Measured on the Adam flow's runs (benchmarks/README.md, `adaptive_stiff.py --trial`) with
    `trial=1.2`: it declines on those ratio-penalty runs (at most 2 % more than Tsit5, the Jacobian-vector
    products), but its trials also fail where Merson would win (n = 100 at rtol 1e-6: 1.24x fewer evaluations than
    Tsit5 against 1.84x without it; at `trial=1.0` they pass on the ratio-penalty runs too). So it is off by default
    (None)."""

    threshold: float = eqx.field(static=True, default=1.2)
    patience: int = eqx.field(static=True, default=15)
    every: int = eqx.field(static=True, default=8)
    trial: float | None = eqx.field(static=True, default=None)
    controller: diffrax.AbstractAdaptiveStepSizeController | None = None

    term_structure = diffrax.ODETerm
    interpolation_cls = Hermite
    lands_save_times = True

    def order(self, terms):
        return 5

    def measured_by(self, controller):
        """With `controller` as the trial step's judge, unless it has one, takes no trial, or the run's steps are
        not adaptive (their size is then the caller's, and stability alone decides). ValueError for an adaptive
        controller whose error measure `flows.scaled_error` does not know."""
        adaptive = isinstance(controller, diffrax.AbstractAdaptiveStepSizeController)
        if self.controller is not None or self.trial is None or not adaptive:
            return self
        if not measures(controller):
            raise ValueError(
                f"Tsit5ThenMerson's trial step is judged by the run's error measure, which flows.scaled_error does "
                f"not know for {type(controller).__name__}: use a diffrax.PIDController (or flows' default), or "
                f"trial=None"
            )
        return dataclasses.replace(self, controller=controller)

    def init(self, terms, t0, t1, y0, args):
        f0 = terms.vf(t0, y0, args)
        v, norm = power_start(terms, t0, y0, args)
        # (slope, iterate, |J v| at the last product, accepted steps, count, switched, time of the switch, trial
        # steps, Merson's accepted steps)
        never = jnp.asarray(jnp.inf, dtype=jnp.result_type(t0))
        zero = jnp.array(0)
        return f0, v, norm, zero, zero, jnp.array(False), never, zero, zero

    def report(self, solver_state) -> dict:
        """Whether and when the run switched to Merson's pair, the trial steps taken and the steps accepted in
        Merson's phase (host-side)."""
        *_, switched, t_switch, trials, merson_steps = solver_state
        return {
            "switched": bool(switched),
            "t_switch": float(t_switch) if bool(switched) else None,
            "trials": int(trials),
            "merson_steps": int(merson_steps),
        }

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        f0, v, last, steps, count, switched, t_switch, trials, merson_steps = solver_state
        if made_jump is not False:
            f0 = jax.lax.cond(made_jump, lambda: terms.vf(t0, y0, args), lambda: f0)
        h = t1 - t0

        def tsit5():
            y1, error, _, f1, _ = tsit5_step(terms, t0, t1, y0, args, f0)
            return y1, error, f1

        def merson():
            y1, error, f1, unravel = merson_step(terms, t0, t1, y0, args, ravel_pytree(f0)[0])
            # The stages are JAX arrays; numpy's stubs type their sums with the scalar-like h as possibly ndarrays.
            return unravel(y1), unravel(error), unravel(f1)  # pyright: ignore[reportArgumentType]

        y1, error, f1 = jax.lax.cond(switched, merson, tsit5)

        def measure():
            new_v, norm, modulus = power_step(terms, t1, y1, args, v, last)
            above = h * modulus > self.threshold
            return new_v, norm, jnp.where(above, count + 1, jnp.maximum(count - 1, 0))

        # In the Tsit5 phase, on every `every`-th accepted step (the Jacobian changes slowly between them).
        new_v, norm, count = jax.lax.cond(~switched & (steps % self.every == 0), measure, lambda: (v, last, count))
        ready = ~switched & (count >= self.patience)
        if self.trial is None or self.controller is None:
            switch, tried = ready, jnp.array(False)
        else:
            controller, stretch = self.controller, self.trial

            def merson_passes():
                # Merson's pair over `trial` times this step, from its start, judged by the run's own error measure
                # on its error off the dominant pair's plane (spanned by the last two iterates), which Merson damps.
                end = t0 + stretch * h
                y, error_, _, unravel = merson_step(terms, t0, end, y0, args, ravel_pytree(f0)[0])
                # The stages are JAX arrays; numpy's stubs type their sums with the scalar-like h as possibly ndarrays.
                error_ = _off_plane(error_, ravel_pytree(v)[0], ravel_pytree(new_v)[0])  # pyright: ignore[reportArgumentType]
                return scaled_error(controller, end, y0, unravel(y), args, unravel(error_)) < 1.0  # pyright: ignore[reportArgumentType]

            passes = jax.lax.cond(ready, merson_passes, lambda: jnp.array(False))
            switch, tried = ready & passes, ready
            # Declined: the count starts again, so the next trial comes `patience` measurements later at the soonest.
            count = jnp.where(ready & ~passes, 0, count)
        state = (
            f1,
            new_v,
            norm,
            steps + 1,
            count,
            switched | switch,
            jnp.where(switch, t1, t_switch),
            trials + tried,
            merson_steps + switched,
        )
        control = terms.contr(t0, t1)
        dense_info = dict(y0=y0, y1=y1, k0=terms.prod(f0, control), k1=terms.prod(f1, control))
        return y1, error, dense_info, state, diffrax.RESULTS.successful


def power_start(terms, t0, y0: PyTree, args) -> tuple[PyTree, Float[Array, ""]]:
    r"""The power iteration's first iterate $v = J u / \|J u\|$ from a fixed random unit $u$ (a run is reproducible),
    and $\|J u\|$ (`Tsit5ThenMerson`)."""
    flat, unravel = ravel_pytree(y0)
    u = unravel(jax.random.normal(jax.random.key(0), flat.shape, flat.dtype))
    u = _unit(u, u)
    w = _product(terms, t0, y0, args, u)
    return _unit(w, u), optax.tree_utils.tree_norm(w)


def power_step(
    terms, t, y: PyTree, args, v: PyTree, last: Float[Array, ""]
) -> tuple[PyTree, Float[Array, ""], Float[Array, ""]]:
    r"""One step of the power iteration at (t, y): $w = J v$; returns $w / \|w\|$ ($v$ where $w$ vanishes), $\|w\|$,
    and the dominant modulus $|\mu| \approx (\|w\|\,$`last`$)^{1/2}$ from the previous step's norm
    (`Tsit5ThenMerson`)."""
    w = _product(terms, t, y, args, v)
    norm = optax.tree_utils.tree_norm(w)
    return _unit(w, v), norm, jnp.sqrt(norm * last)


def _product(terms, t, y: PyTree, args, v: PyTree) -> PyTree:
    """$J v$: the field's Jacobian at (t, y) along v."""
    return jax.jvp(lambda x: terms.vf(t, x, args), (y,), (v,))[1]


def _unit(w: PyTree, fallback: PyTree) -> PyTree:
    """w / |w|, or `fallback` where w vanishes (a field at rest along it)."""
    norm = optax.tree_utils.tree_norm(w)
    return jax.tree.map(lambda a, b: jnp.where(norm > 0, a / jnp.where(norm > 0, norm, 1.0), b), w, fallback)


def _off_plane(x: Float[Array, " n"], a: Float[Array, " n"], b: Float[Array, " n"]) -> Float[Array, " n"]:
    """x less its orthogonal projection on span(a, b) (a a unit vector; b where it is independent of a)."""
    x = x - jnp.dot(a, x) * a
    b = b - jnp.dot(a, b) * a
    size = jnp.linalg.norm(b)
    q = b / jnp.where(size > 1e-8, size, jnp.inf)
    return x - jnp.dot(q, x) * q
