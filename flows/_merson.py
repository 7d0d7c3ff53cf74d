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
where accuracy does; so it is a choice for long stiff runs, not the default.
"""

from __future__ import annotations

import diffrax
import jax
from jax.flatten_util import ravel_pytree

from ._solver import AbstractFlowSolver, Hermite


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
        y0_flat, unravel = ravel_pytree(y0)
        if made_jump is not False:
            f0 = jax.lax.cond(made_jump, lambda: ravel_pytree(terms.vf(t0, y0, args))[0], lambda: f0)
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
        # h * f is a JAX array; numpy's stubs type the product of a scalar-like h as possibly an ndarray.
        dense_info = dict(y0=y0, y1=unravel(y1), k0=unravel(k1), k1=unravel(h * f1))  # pyright: ignore[reportArgumentType]
        return unravel(y1), unravel(error), dense_info, (f1,), diffrax.RESULTS.successful
