"""The stiff tail at large m: Tsit5 against the extrapolation with dense and matrix-free solves.

Deep completion (n = 100, rank 5, depth 3, W_j(0) = alpha I, alpha = 0.1 as in vs_scipy.py) until the
loss falls below 1e-10, rtol 1e-8, atol 1e-10, saving the final state only. Rows, interleaved
(A, B, C, A, B, C, ...): Tsit5; the switching solver (Tsit5, then the linearly implicit extrapolation)
with the dense Woodbury solve (`flows.Woodbury`) and with matrix-free conjugate gradients
(`flows.ConjugateGradient`); Tsit5, then Runge-Kutta-Chebyshev (`flows.Tsit5ThenChebyshev`);
`flows.solve`'s default. W err: against Dopri8 at rtol 1e-12, atol 1e-14 at
each row's own final time. CG iterations and linearisations come from a separate, counted run.

    python benchmarks/stiff_tail.py                 # m = 2000, ~12 min
    python benchmarks/stiff_tail.py --m 1000        # where the default turns to the stiff solver
    python benchmarks/stiff_tail.py --large         # n = 1000, m = 50,000: costs, then the run (1 h budget)
    python benchmarks/stiff_tail.py --krylov-variants   # the Krylov-Jacobian extrapolation, looser and shorter
    python benchmarks/stiff_tail.py --spectrum      # the tail's Hessian spectrum along the run
    python benchmarks/stiff_tail.py --exponential   # what an exponential Rosenbrock step could take in the tail

See benchmarks/README.md ("The stiff tail at large m").
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import _harness as H  # noqa: I001  (first: pins threads before numpy and jax load)
import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

import flows

ITERATIONS: dict[str, int] = {"cg": 0}


class _CountedMatrixFree(flows.ConjugateGradientSolve):
    """Adds each solve's CG iterations to ITERATIONS (an ordered io_callback: the counted run only)."""

    def conjugate_gradients(self, h, b, unravel, terms, args):
        solution = super().conjugate_gradients(h, b, unravel, terms, args)
        jax.experimental.io_callback(_add, None, solution.stats["num_steps"], ordered=True)
        return solution


def _add(n) -> None:
    ITERATIONS["cg"] += int(n)


class _Counted(flows.ConjugateGradient):
    def linearise(self, terms, t, y, args, step):
        solve = super().linearise(terms, t, y, args, step)
        return _CountedMatrixFree(**{f.name: getattr(solve, f.name) for f in dataclasses.fields(solve)})


def switching(linear_solver) -> flows.Tsit5ThenExtrapolation:
    return flows.Tsit5ThenExtrapolation(stiff_solver=flows.LinearlyImplicitExtrapolation(linear_solver=linear_solver))


METHODS = {
    "Tsit5": lambda: diffrax.Tsit5(),
    "switching, Woodbury": lambda: switching(flows.Woodbury()),
    "switching, CG": lambda: switching(flows.ConjugateGradient()),
    "switching, Krylov Jacobian": lambda: switching(flows.KrylovJacobian()),
    "switching, Chebyshev": lambda: flows.Tsit5ThenChebyshev(),
    "default": lambda: None,
}


def counted_with(setting: H.Setting, solver) -> dict:
    """The solver's report of one untimed run."""
    traj = H.solve_flows(setting, solver)
    return traj.stats | {"solver": traj.config["solver"]}


def counted(setting: H.Setting, name: str) -> dict:
    """Stats of one untimed run: the solver's report, and CG iterations for the matrix-free row."""
    solver = switching(_Counted()) if name == "switching, CG" else METHODS[name]()
    ITERATIONS["cg"] = 0
    stats = counted_with(setting, solver)
    if name == "switching, CG":
        stats["cg_iterations"] = ITERATIONS["cg"]
    return stats


def table(setting: H.Setting, repeats: int, skip: list[str]) -> None:
    names = [name for name in METHODS if name not in skip]
    timings: dict[str, H.Timing] = {}
    outcomes: dict[str, H.Outcome] = {}
    for name in names:  # first calls: compile + run
        outcomes[name], first = H.clock(lambda: H.run_flows(setting, METHODS[name]()))
        timings[name] = H.Timing(first=first, runs=[])
        print(f"  first call {name}: {first:.2f} s", flush=True)
    for _ in range(repeats):
        for name in names:
            outcomes[name], seconds = H.clock(lambda: H.run_flows(setting, METHODS[name]()))
            timings[name].runs.append(seconds)
    stats = {name: counted(setting, name) for name in names}
    reference = H.reference(setting, np.array([o.t_final for o in outcomes.values()]))
    tsit5 = timings["Tsit5"].median if "Tsit5" in timings else float("nan")
    print(
        f"\n{setting.name}: rtol {H.RTOL:g}, atol {H.ATOL:g}, until loss < {H.STOP_LOSS:g}; "
        f"{repeats} timed repeats, interleaved\n"
    )
    print(
        "| method | solver | wall s | spread | compile s | steps | rejected | switch at t | linearisations | "
        "CG iterations | RKC stages | t final | loss | W err | Tsit5 / this |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name in names:
        o, t, s = outcomes[name], timings[name], stats[name]
        err = H.relative_error(o.W_final, reference[o.t_final])
        t_switch = s.get("t_switch")
        print(
            f"| {name} | {s['solver']} | {t.median:.3g} | {t.spread()} | {t.compile:.3g} | {o.steps} | {o.rejected} | "
            f"{'-' if t_switch is None else f'{t_switch:.4g}'} | {s.get('linearisations', '-')} | "
            f"{s.get('cg_iterations', '-')} | {s.get('stages', '-')} | {o.t_final:.5g} | {o.loss_final:.2e} | {err:.1e} | "
            f"{tsit5 / t.median:.2f} |",
            flush=True,
        )


def variants(setting: H.Setting) -> None:
    """The Woodbury switch's own knobs against Tsit5: extrapolation columns (order) and re-linearisation (the default's
    `defect`; or `refresh` 1e-4 with `growth` 2; or `refresh` 1e-2 alone: only the state's motion re-linearises), one
    timed run each after a compiling one."""
    rows = {
        "Tsit5": lambda: diffrax.Tsit5(),
        "switch, default (columns 8, defect 0.3)": lambda: switching(flows.Woodbury()),
        "switch, columns 8, refresh 1e-4, growth 2": lambda: flows.Tsit5ThenExtrapolation(
            stiff_solver=flows.LinearlyImplicitExtrapolation(defect=np.inf, refresh=1e-4, growth=2.0)
        ),
    }
    # refresh 1e-4 with growth off: 71 (columns 4) and 34 (columns 5) linearisations, 135 s and 69 s; not rerun.
    for columns in (8, 5, 4):
        rows[f"switch, columns {columns}, refresh 1e-2, growth off"] = lambda c=columns: flows.Tsit5ThenExtrapolation(
            stiff_solver=flows.LinearlyImplicitExtrapolation(columns=c, defect=np.inf, refresh=1e-2, growth=np.inf)
        )
    print(f"\n{setting.name}: rtol {H.RTOL:g}, atol {H.ATOL:g}, until loss < {H.STOP_LOSS:g}\n")
    print("| solver | wall s | Tsit5 / this | steps | rejected | linearisations | t final | loss |")
    print("|---|---|---|---|---|---|---|---|")
    tsit5 = None
    for name, make in rows.items():
        H.clock(lambda: H.run_flows(setting, make()))
        outcome, seconds = H.clock(lambda: H.run_flows(setting, make()))
        stats = counted_with(setting, make())
        tsit5 = tsit5 or seconds
        print(
            f"| {name} | {seconds:.3g} | {tsit5 / seconds:.2f} | {outcome.steps} | {outcome.rejected} | "
            f"{stats.get('linearisations', '-')} | {outcome.t_final:.5g} | {outcome.loss_final:.2e} |",
            flush=True,
        )


def krylov_variants(setting: H.Setting) -> None:
    """The extrapolation with the field's exact Jacobian (`flows.KrylovJacobian`) under looser GMRES residuals and
    fewer extrapolation columns (fewer shifted solves a step: columns (columns + 1) / 2), against the default; one
    run each, its compile included (these rows take minutes)."""
    rows = {"default": lambda: None}
    for tolerance, columns in ((1e-4, 8), (1e-4, 4)):
        rows[f"switching, Krylov Jacobian, residual {tolerance:g}, columns {columns}"] = lambda t=tolerance, c=columns: (
            flows.Tsit5ThenExtrapolation(
                stiff_solver=flows.LinearlyImplicitExtrapolation(
                    columns=c, linear_solver=flows.KrylovJacobian(tolerance=t)
                )
            )
        )
    print(f"\n{setting.name}: rtol {H.RTOL:g}, atol {H.ATOL:g}, until loss < {H.STOP_LOSS:g}\n")
    print("| solver | wall s (with compile) | steps | rejected | t final | W err |")
    print("|---|---|---|---|---|---|")
    for name, make in rows.items():
        outcome, seconds = H.clock(lambda: H.run_flows(setting, make()))
        reference = H.reference(setting, np.array([outcome.t_final]))[outcome.t_final]
        print(
            f"| {name} | {seconds:.3g} | {outcome.steps} | {outcome.rejected} | {outcome.t_final:.6g} | "
            f"{H.relative_error(outcome.W_final, reference):.1e} |",
            flush=True,
        )


def spectrum(setting: H.Setting, times: list[float], k: int) -> None:
    """The k largest eigenvalues of the Hessian of the loss (minus the field's Jacobian: symmetric for a gradient
    flow) at the default solve's states at `times`, by Lanczos (scipy's eigsh) on Jacobian-vector products: how the
    tail's stiffness is spread and whether it moves along the tail."""
    from scipy.sparse.linalg import LinearOperator, eigsh

    traj = flows.solve(
        setting.flow, setting.state0, t1=times[-1], ts=times, rtol=H.RTOL, atol=H.ATOL, max_steps=3_000_000
    )
    picks = sorted({0, 9, 99, k // 2 - 1, k - 1})
    print(f"\n{setting.name}: the {k} largest Hessian eigenvalues; columns: their ranks\n")
    print("| t | " + " | ".join(f"#{j + 1}" for j in picks) + " | Lanczos s |")
    print("|---" * (len(picks) + 2) + "|")
    for i, t in enumerate(times):
        point, unravel = ravel_pytree(jax.tree.map(lambda a: a[i], traj.states))
        _, jvp = jax.linearize(lambda x: ravel_pytree(setting.flow.vector_field(t, unravel(x)))[0], point)
        hvp = jax.jit(lambda v: -jvp(v))
        operator = LinearOperator(
            (point.size, point.size), matvec=lambda v: np.asarray(hvp(jnp.asarray(v))), dtype=np.float64
        )
        start = time.perf_counter()
        values = np.sort(eigsh(operator, k=k, which="LA", return_eigenvectors=False, tol=1e-6, ncv=2 * k + 100))
        seconds = time.perf_counter() - start
        values = values[::-1]
        print(f"| {t:g} | " + " | ".join(f"{values[j]:.3g}" for j in picks) + f" | {seconds:.0f} |", flush=True)


def _phi_columns(hessenberg: np.ndarray, p: int) -> np.ndarray:
    r"""$\varphi_p(H) e_1$ for a k x k matrix H, from the exponential of the (k + p) x (k + p) matrix
    $\begin{pmatrix} H & e_1 & 0 \\ 0 & 0 & I_{p-1} \\ 0 & 0 & 0 \end{pmatrix}$, whose column k + p - 1 holds it in its first k rows
    (Saad 1992; Sidje's Expokit)."""
    from scipy.linalg import expm

    k = hessenberg.shape[0]
    augmented = np.zeros((k + p, k + p))
    augmented[:k, :k] = hessenberg
    augmented[0, k] = 1.0
    augmented[np.arange(k, k + p - 1), np.arange(k + 1, k + p)] = 1.0
    return expm(augmented)[:k, k + p - 1]


def _krylov_phi(apply, v: np.ndarray, p: int, tol: float = 1e-10, most: int = 400) -> tuple[np.ndarray, int]:
    r"""$\varphi_p(A) v$ by Arnoldi on $x \mapsto A x$ (`apply`, twice-orthogonalised), and the Krylov dimension it
    took: every second dimension, until the approximation moves by less than `tol` of its norm."""
    beta = float(np.linalg.norm(v))
    basis = np.zeros((most + 1, v.size))
    basis[0] = v / beta
    hessenberg = np.zeros((most + 1, most))
    previous = None
    for j in range(most):
        w = np.array(apply(basis[j]))
        for _ in range(2):
            c = basis[: j + 1] @ w
            w -= basis[: j + 1].T @ c
            hessenberg[: j + 1, j] += c
        hessenberg[j + 1, j] = np.linalg.norm(w)
        exhausted = hessenberg[j + 1, j] < 1e-14 * beta
        if not exhausted:
            basis[j + 1] = w / hessenberg[j + 1, j]
        if exhausted or (j + 1) % 2 == 0 or j + 1 == most:
            current = beta * _phi_columns(hessenberg[: j + 1, : j + 1], p)
            converged = previous is not None and np.linalg.norm(
                current - np.pad(previous, (0, current.size - previous.size))
            ) <= tol * np.linalg.norm(current)
            if exhausted or converged or j + 1 == most:
                return basis[: j + 1].T @ current, j + 1
            previous = current
    raise AssertionError("unreachable")


def exponential(setting: H.Setting, times: list[float], steps: list[float]) -> None:
    r"""One step of the exponential Rosenbrock method exprb32 (Hochbruck, Ostermann & Schweitzer 2009) at states of the
    tail, for several step sizes h: $U = y + h\varphi_1(hJ)F(y)$, $y_1 = U + 2h\varphi_3(hJ)D$ with the nonlinear
    remainder $D = F(U) - F(y) - J(U - y)$, and $2h\varphi_3(hJ)D$ its error estimate. The method is exact on the
    linear part, so its steps are held by D alone; each $\varphi$ costs a Krylov space of Jacobian-vector products.
    Prints, per (t, h): the Krylov dimensions of both products and the error estimate relative to the state (a step
    at rtol 1e-8 needs it below ~1e-8). States: the field integrated at rtol 1e-10 to t."""
    flow = setting.flow
    traj = flows.solve(flow, setting.state0, t1=times[-1], ts=times, rtol=1e-10, atol=1e-12, max_steps=3_000_000)
    print(f"\n{setting.name}: exprb32 steps from the tail's states\n")
    print("| t | h | Krylov dimension, phi_1 / phi_3 | Jacobian-vector products per unit time | error / state |")
    print("|---|---|---|---|---|")
    for i, t in enumerate(times):
        y0 = jax.tree.map(lambda x: jnp.asarray(x[i]), traj.states)
        point, unravel = ravel_pytree(y0)
        field = jax.jit(lambda y: ravel_pytree(flow.vector_field(0.0, unravel(y)))[0])
        jvp = jax.jit(lambda v: jax.jvp(field, (point,), (v,))[1])
        f0 = np.asarray(field(point))
        size = float(np.linalg.norm(point))
        for h in steps:
            g1, k1 = _krylov_phi(lambda v: h * jvp(jnp.asarray(v)), f0, 1)
            U = np.asarray(point) + h * g1
            D = np.asarray(field(jnp.asarray(U))) - f0 - np.asarray(jvp(jnp.asarray(U - np.asarray(point))))
            g3, k3 = _krylov_phi(lambda v: h * jvp(jnp.asarray(v)), D, 3)
            error = float(np.linalg.norm(2 * h * g3)) / size
            print(f"| {t:g} | {h:g} | {k1} / {k3} | {(k1 + k3 + 1) / h:.3g} | {error:.2e} |", flush=True)


def large(n: int, m: int, depth: int, alpha: float, repeats: int) -> None:
    """Per-evaluation costs at scale: one vector-field evaluation, one CG iteration (x -> x + h M^T M x)."""
    setting = H.completion_setting(alpha, n=n, m=m, depth=depth)
    flow = setting.flow
    point, unravel = ravel_pytree(setting.state0)
    # Exactly 10 CG iterations: a tolerance never met, max_steps 10.
    terms = H.flow_term(flow)
    linear = flows.ConjugateGradient(tolerance=1e-300, max_steps=10).linearise(terms, 0.0, setting.state0, None, 1.0)

    @eqx.filter_jit
    def evaluation(flow, x):
        return ravel_pytree(flow.vector_field(0.0, unravel(x)))[0]

    @eqx.filter_jit
    def iterations(linear, b):
        return linear.conjugate_gradients(1.0, b, unravel, terms, None).value

    b = evaluation(flow, point)
    jax.block_until_ready(iterations(linear, b))
    vf = min(H.clock(lambda: evaluation(flow, point))[1] for _ in range(repeats))
    cg = min(H.clock(lambda: iterations(linear, b))[1] for _ in range(repeats)) / 10
    print(
        f"{setting.name}: {point.size} parameters; one vector-field evaluation {vf:.3g} s, one CG iteration "
        f"{cg:.3g} s ({cg / vf:.2f} evaluations)",
        flush=True,
    )


def drive(n: int, m: int, depth: int, alpha: float, budget: float) -> None:
    """The default solver toward loss < 1e-10 in chunks t in [T, 2T] (the flow is autonomous, so each chunk
    restarts from the last one's final state), reporting each, until the loss or the wall-time budget is met."""
    setting = H.completion_setting(alpha, n=n, m=m, depth=depth)
    flow, state, t, horizon = setting.flow, setting.state0, 0.0, 25.0
    start = time.perf_counter()
    print(
        f"{setting.name}, default solver ({type(flows.default_solver(flow, H.STOP_LOSS)).__name__}), "
        f"loss {float(flow.loss(state)):.3e} at t = 0",
        flush=True,
    )
    while time.perf_counter() - start < budget:
        chunk = time.perf_counter()
        traj = flows.solve(
            flow,
            state,
            t1=horizon - t,
            ts=[horizon - t],
            rtol=H.RTOL,
            atol=H.ATOL,
            stop_loss=H.STOP_LOSS,
            max_steps=3_000_000,
        )
        state, t = jax.tree.map(lambda x: x[-1], traj.states), t + float(traj.ts[-1])
        print(
            f"  t = {t:.6g}: loss {traj.loss[-1]:.3e}, {traj.stats['num_steps']} steps, "
            f"{time.perf_counter() - chunk:.0f} s (total {time.perf_counter() - start:.0f} s)",
            flush=True,
        )
        if traj.loss[-1] < H.STOP_LOSS:
            return
        horizon *= 2


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--m", type=int, default=2000, help="observed entries (default 2000)")
    parser.add_argument("--alpha", type=float, default=0.1)
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per method after the first")
    parser.add_argument("--skip", nargs="*", default=[], help="rows to leave out")
    parser.add_argument(
        "--variants",
        action="store_true",
        help="the Woodbury switch's columns and re-linearisation against Tsit5 (at --m)",
    )
    parser.add_argument(
        "--krylov-variants",
        action="store_true",
        help="the Krylov-Jacobian extrapolation with looser residuals and fewer columns (at --m)",
    )
    parser.add_argument(
        "--spectrum",
        action="store_true",
        help="the 400 largest Hessian eigenvalues at t = 1014, 5000, 20,000 along the default solve (at --m)",
    )
    parser.add_argument(
        "--exponential",
        action="store_true",
        help="exprb32 steps of several sizes from the tail's states at t = 1014 and 5000 (at --m)",
    )
    parser.add_argument(
        "--large",
        action="store_true",
        help="n = 1000, m = 50,000: per-evaluation costs, then the default solver toward the loss",
    )
    parser.add_argument("--budget", type=float, default=3600.0, help="--large: wall seconds for the run (default 3600)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    if args.variants:
        variants(H.completion_setting(args.alpha, m=args.m))
    elif args.krylov_variants:
        krylov_variants(H.completion_setting(args.alpha, m=args.m))
    elif args.spectrum:
        spectrum(H.completion_setting(args.alpha, m=args.m), [1014.0, 5000.0, 20000.0], 400)
    elif args.exponential:
        exponential(H.completion_setting(args.alpha, m=args.m), [1014.0, 5000.0], [20.0, 100.0, 500.0, 2000.0])
    elif args.large:
        large(1000, 50_000, 3, args.alpha, args.repeats + 1)
        drive(1000, 50_000, 3, args.alpha, args.budget)
    else:
        table(H.completion_setting(args.alpha, m=args.m), args.repeats, args.skip)
    print(f"\n({time.perf_counter() - start:.0f} s in all)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
