"""The adaptive flows' stiff phases: Tsit5 against the linearly implicit extrapolation with the exact Jacobian.

The configurations are the penalties experiment's depth-3 cells under the Adam flow that exhausted 200 thousand
Tsit5 steps: completion (rank 2, ||W*||_F = n, `flows.completion(..., symmetric=False)`), W = W_3 W_2 W_1 from a
Gaussian init of scale 1e-3^(1/3) (seed 10,000 + problem seed), the smoothed ratio (eps 1e-3, delta 1) at strength
lambda on the product or on each factor, the Adam flow (a = 10, b = 1, eps = 1e-3), rtol 1e-6, atol 1e-10 (the
experiments' tolerances). Their linearisation has the eigenvalues -a/2 +- i omega, omega up to ~5e3 (measured at
n = 15, t = 8 from the dense Jacobian), which hold Tsit5's step near 3.4 / omega.

Rows: Tsit5 (what the experiments ran), and `flows.LinearlyImplicitExtrapolation(columns=k,
linear_solver=flows.KrylovJacobian())` (GMRES on I - h F'(y) by Jacobian-vector products: A(alpha)-stable, its
step not held by omega). Error: the largest relative ||W - W_ref||_F over the saved times against Tsit5 at rtol
1e-10, atol 1e-14 (`--no-reference` to skip it).

    python benchmarks/adaptive_stiff.py                            # n = 15 (m = 70, the quick grid's size) to t = 8
    python benchmarks/adaptive_stiff.py --n 30 --m 200 --t1 2 --columns 6 --no-reference   # the full grid's size

`--preconditioned` measures the diagonally preconditioned flows instead (`flows.AbstractDynamics.preconditioned`:
the sign and RMSProp flows, whose stiff eigenvalues are real), on the completion experiment's costliest runs
(n = 30, seed 4, depth 1 from the observed entries, the ratio at lambda = 10, eps 1e-3, to the experiment's horizon,
its 60 save times and rtol 1e-6; `experiments._completion`): Tsit5 against `flows.Tsit5ThenChebyshev` (their
default), one timed run each after a compiling one, interleaved. Error: the largest relative ||W - W_ref||_F over the
saved times against the Chebyshev switch at rtol 1e-9 (itself checked against Tsit5 at rtol 1e-9).

    python benchmarks/adaptive_stiff.py --preconditioned          # ~6 min

`--controllers` measures the Adam flow's default step-size controller (`flows.Adam.controller_gains`: PI, pcoeff =
icoeff = 0.3) against Diffrax's default I controller (pcoeff 0, icoeff 1), both arraywise relative and landing on the
save times, Tsit5 under both, on the completion experiment's runs at n = 30, seed 4, depth 1, lambda = 10 (the
nuclear penalty and the ratio at a = 10 and a = 100), to the horizon, at rtol 1e-6; one timed run each after a
compiling one. Error: the largest relative ||W - W_ref||_F over the saved times against the default at rtol 1e-9.

    python benchmarks/adaptive_stiff.py --controllers             # ~2 min

`--spectrum` measures the shifted systems a linearly implicit step of the Adam flow solves, on the first
configuration (n = 15) at t = 1, 3 and 8 along Tsit5's run. With the state (theta, m, v), the field's Jacobian has
the blocks J_theta,m = -D and J_theta,v = C (diagonal: the field -m^ / (sqrt(v^) + eps) holds no theta for t > 0),
J_m,theta = a H and J_v,theta = 2 b diag(g) H (H the Hessian of the penalised loss), J_m,m = -a I, J_v,v = -b I, and
no others (checked on the dense Jacobian). So (I - h J) x = r reduces, by eliminating the moments, to the parameters'
(I + E H) x_theta = r' with E = h^2 (a D / (1 + h a) - 2 b C diag(g) / (1 + h b)) diagonal, a third of the size.
Per h omega (omega the Jacobian's largest imaginary part; Tsit5's steps are held near h omega = 3.4): GMRES
iterations to a relative residual 1e-6 on the full system and on the reduced one (without a preconditioner, with a
Jacobi one, and with its eigenvalues above 10 deflated by their exact eigenvectors: what a deflation preconditioner
could reach at best), and the reduced operator's spectrum from dense eigenvalues.

    python benchmarks/adaptive_stiff.py --spectrum                # ~1 min

`--merson` measures `flows.Merson` (Merson's 4(3) pair, stable and damping on the imaginary axis up to h omega =
2 sqrt(3), where Tsit5's stability polynomial stays below 1 only to h |mu| = 1.7-2.5 at damping ratios 0.005-0.05)
against Tsit5, the Adam flow's default, and against two switches from Tsit5 to it: on Hairer's stiffness test
(`flows.AbstractTsit5Then` at threshold h rho = 1: at the other switches' 3 it did not fire on n = 30 with the nuclear
penalty, the costliest run here) and on a power iteration's h |mu| (`flows.Tsit5ThenMerson`), on this script's first
configuration's problem (with the default error control, not the first table's atol; to t = 8, 5 save times; n and
m from the command line) and on the completion experiment's Adam runs (`experiments._completion`, full grid, with its
60 save times and horizons: n = 30, seed 4, depth 1 with the nuclear penalty and the ratio at lambda = 10, a = 10 and
100; the unpenalised depth 3 and U V^T to Arora's stop; n = 100, seed 3, the nuclear penalty at lambda = 30, its
costliest), at rtol 1e-6 (the experiments') and 1e-8 (flows' default; n = 100 at 1e-6 only); one timed run after a
compiling one each. Error: the largest relative ||W - W_ref||_F over the saved times against Tsit5 at rtol 1e-10
(1e-8 at n = 100).

    python benchmarks/adaptive_stiff.py --merson                  # one core (taskset -c 1), ~30 min

`--stiffness` reads, along Tsit5's steps on the same runs (but n = 100), h |mu| by `flows.Tsit5ThenMerson`'s power
iteration (one Jacobian-vector product at every accepted step here), cos(v, J v) (minus the damping ratio of a normal
dominant pair) and Hairer's h rho: their quantiles and medians over tenths of the attempts.

    python benchmarks/adaptive_stiff.py --stiffness               # ~5 min

`--trial` counts, on `--merson`'s runs, Tsit5's attempts against `flows.Tsit5ThenMerson`'s without and with its trial
step (`trial=1.2`): attempts, trials, the switch's time and Tsit5's field evaluations over each switch's (its rejected
attempts split between its phases in proportion to their accepted steps), one run each.

    python benchmarks/adaptive_stiff.py --trial                   # one core (taskset -c 1), ~20 min

`--conditioning` measures the ratio on each factor (the first configuration's problem, `--placement "each factor"`,
to t = 8), where Tsit5 and Merson at rtol 1e-6 end 6.7e-4 and 2.7e-3 off Dopri8 at rtol 1e-10: their error at each save
time against Dopri8 at rtol 1e-12, at rtol 1e-6 to 1e-10, beside ||W|| and the flow's own amplification of a relative
perturbation of 1e-10 of the initial state.

    python benchmarks/adaptive_stiff.py --conditioning            # ~12 min
"""

from __future__ import annotations

import argparse
import functools
from typing import ClassVar

import _harness as H  # noqa: I001  (first: pins threads before numpy and jax load)
import diffrax
import equinox as eqx
import jax
import numpy as np
import optax
import scipy.sparse.linalg as spla
from jax.flatten_util import ravel_pytree

import flows


def build(n: int, m: int, strength: float, placement: str, seed: int = 0):
    problem = flows.completion(n=n, m=m, rank=2, seed=seed, symmetric=False, truth_norm=float(n))
    ratio = {"name": "ratio", "eps": 1e-3, "delta": 1.0}
    penalty = ratio if placement == "product" else {"name": "each-factor", "penalty": ratio}
    flow = flows.Flow.from_description(
        problem,
        {
            "parameterization": {"name": "deep", "depth": 3},
            "dynamics": {"name": "adam", "a": 10.0, "b": 1.0, "eps": 1e-3},
            "penalty": penalty,
            "strength": strength,
        },
    )
    return flow, flow.init(scale=1e-3 ** (1.0 / 3.0), kind="gaussian", seed=10_000 + seed)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=15)
    parser.add_argument("--m", type=int, default=70)
    parser.add_argument("--strength", type=float, default=3.0)
    parser.add_argument("--placement", choices=("product", "each factor"), default="product")
    parser.add_argument("--t1", type=float, default=8.0)
    parser.add_argument("--columns", type=int, nargs="+", default=[4, 6])
    parser.add_argument("--max-steps", type=int, default=200_000)
    parser.add_argument("--no-reference", action="store_true")
    parser.add_argument("--preconditioned", action="store_true", help="the sign and RMSProp flows (see the docstring)")
    parser.add_argument("--controllers", action="store_true", help="the Adam flow's PI controller against I")
    parser.add_argument("--spectrum", action="store_true", help="the shifted systems' Krylov iterations (see above)")
    parser.add_argument("--merson", action="store_true", help="Merson's pair on the Adam flow (see above)")
    parser.add_argument("--stiffness", action="store_true", help="h |mu| along Tsit5's steps (see above)")
    parser.add_argument("--conditioning", action="store_true", help="error against the flow's sensitivity (above)")
    parser.add_argument("--trial", action="store_true", help="the switch with and without its trial step (above)")
    args = parser.parse_args(argv)
    if args.trial:
        trial(build(args.n, args.m, args.strength, args.placement))
        return 0
    if args.merson:
        merson(build(args.n, args.m, args.strength, args.placement))
        return 0
    if args.stiffness:
        stiffness(build(args.n, args.m, args.strength, args.placement))
        return 0
    if args.conditioning:
        conditioning(*build(args.n, args.m, args.strength, "each factor"), t1=args.t1)
        return 0
    if args.controllers:
        controllers()
        return 0
    if args.spectrum:
        spectrum(*build(args.n, args.m, args.strength, args.placement), times=(1.0, 3.0, 8.0))
        return 0
    if args.preconditioned:
        for dynamics in ("sign", "RMSProp"):
            preconditioned(dynamics)
        return 0
    flow, state0 = build(args.n, args.m, args.strength, args.placement)
    ts = np.linspace(0.0, args.t1, 5)
    print(
        f"# depth 3, n = {args.n}, m = {args.m}, ratio on the {args.placement} at lambda = {args.strength:g}, Adam "
        f"(a = 10, b = 1, eps = 1e-3), to t = {args.t1:g}, rtol 1e-6, atol 1e-10",
        flush=True,
    )
    solvers = {"Tsit5": diffrax.Tsit5()}
    for k in args.columns:
        solvers[f"extrapolation k = {k}, KrylovJacobian"] = flows.LinearlyImplicitExtrapolation(
            columns=k, linear_solver=flows.KrylovJacobian()
        )
    results = {}
    for name, solver in solvers.items():
        try:
            traj, seconds = H.clock(
                lambda: flows.solve(
                    flow, state0, t1=args.t1, ts=ts, rtol=1e-6, atol=1e-10, solver=solver, max_steps=args.max_steps
                )
            )
        except flows.SolverError as err:
            print(f"| {name} | failed: {err} |", flush=True)
            continue
        results[name] = (traj, seconds)
    reference = None
    if not args.no_reference:
        reference = flows.solve(
            flow, state0, t1=args.t1, ts=ts, rtol=1e-10, atol=1e-14, solver=diffrax.Tsit5(), max_steps=10_000_000
        ).W
    print("\n| solver | wall s (with compile) | steps | rejected | linearisations | W err | Tsit5 / this |")
    print("|---|---|---|---|---|---|---|")
    tsit5 = results["Tsit5"][1] if "Tsit5" in results else float("nan")
    for name, (traj, seconds) in results.items():
        err = "-"
        if reference is not None:
            err = f"{H.largest_relative_error(traj.W, reference):.1e}"
        print(
            f"| {name} | {seconds:.1f} | {traj.stats['num_steps']} | {traj.stats['num_rejected_steps']} | "
            f"{traj.stats.get('linearisations', '-')} | {err} | {tsit5 / seconds:.2f} |",
            flush=True,
        )
    return 0


def gmres_iterations(A, b, M=None) -> str:
    """GMRES (restart 200) iterations to a relative residual 1e-6, or how far it got in 4000."""
    count = [0]

    def counted(_):
        count[0] += 1

    _, info = spla.gmres(
        A, b, rtol=1e-6, atol=0.0, restart=200, maxiter=20, M=M, callback=counted, callback_type="pr_norm"
    )
    return str(count[0]) if info == 0 else f"> {count[0]}"


def spectrum(flow, state0, times) -> None:
    """The Adam flow's shifted systems, full and reduced to the parameters, at `times` along Tsit5's run; and what a
    Jacobian-vector product at a fixed point costs against a field evaluation (the unit of a Krylov iteration)."""
    print(
        "| t | omega | h omega | GMRES: full | reduced | reduced, Jacobi | reduced, deflated | reduced: |eigenvalues| "
        "| of them > 10 |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    for t in times:
        traj = flows.solve(flow, state0, t1=t, ts=[0.0, t], rtol=1e-6, atol=1e-10, max_steps=400_000)
        state = jax.tree.map(lambda a: a[-1], traj.states)
        flat, unravel = ravel_pytree(state)
        J = np.asarray(jax.jacfwd(lambda v: ravel_pytree(flow.vector_field(t, unravel(v)))[0])(flat))
        omega = np.abs(np.linalg.eigvals(J).imag).max()
        offsets = np.cumsum([0] + [ravel_pytree(state[k])[0].size for k in sorted(state)])
        block = {k: slice(a, b) for k, a, b in zip(sorted(state), offsets[:-1], offsets[1:])}
        P, M, V = block["params"], block["m"], block["v"]
        diagonal = {
            (i, j): np.diag(J[block[i], block[j]])
            for i, j in (("params", "m"), ("params", "v"), ("m", "m"), ("v", "v"))
        }
        for (i, j), d in diagonal.items():
            assert np.array_equal(J[block[i], block[j]], np.diag(d)), f"block {i}, {j} is not diagonal"
        for i, j in (("params", "params"), ("m", "v"), ("v", "m")):
            assert not J[block[i], block[j]].any(), f"block {i}, {j} is not zero"
        p = P.stop - P.start
        for h_omega in (3.4, 10.0, 30.0, 100.0):
            h = h_omega / omega
            full = gmres_iterations(np.eye(J.shape[0]) - h * J, rng.standard_normal(J.shape[0]))
            m_part = (h * diagonal["params", "m"])[:, None] * (h * J[M, P]) / (1.0 - h * diagonal["m", "m"])[:, None]
            v_part = (h * diagonal["params", "v"])[:, None] * (h * J[V, P]) / (1.0 - h * diagonal["v", "v"])[:, None]
            reduced = np.eye(p) - m_part - v_part
            r = rng.standard_normal(p)
            plain = gmres_iterations(reduced, r)
            scale = np.diag(reduced)
            jacobi = gmres_iterations(reduced, r, M=spla.LinearOperator((p, p), matvec=lambda x, s=scale: x / s))
            values, vectors = np.linalg.eig(reduced)
            # The eigenvalues above 10 deflated with the exact eigenvectors Z (and left ones W, W^T Z = I):
            # preconditioning by I + Z (1 / lambda - 1) W^T maps them to 1 and leaves the rest of the spectrum.
            top = np.abs(values) > 10
            Z, W = vectors[:, top], np.linalg.inv(vectors)[top]
            deflate = spla.LinearOperator(
                (p, p), matvec=lambda x, Z=Z, W=W, c=1 / values[top] - 1: (x + Z @ (c * (W @ x))).real
            )
            deflated = gmres_iterations(reduced, r, M=deflate)
            print(
                f"| {t:g} | {omega:.4g} | {h_omega:g} | {full} | {plain} | {jacobi} | {deflated} | "
                f"{np.abs(values).min():.3g} .. {np.abs(values).max():.3g} | {top.sum()} of {p} |",
                flush=True,
            )
    field = H.priced(functools.partial(H.evaluations, t=t), flow, state)
    product = H.priced(functools.partial(H.products, t=t), flow, state)
    print(
        f"\nAt t = {t:g}: a field evaluation {field * 1e6:.1f} us, a Jacobian-vector product at a fixed point "
        f"{product * 1e6:.1f} us ({product / field:.2f} of a field)"
    )


def completion_run(size: str, seed: int, parameterization: str, penalty: str, strength: float, dynamics: str):
    """(flow, initial state, `flows.solve` options) of one of the completion experiment's runs (`experiments._completion`,
    full grid): its problem, init, horizon, save times, rtol and budget."""
    from experiments import _completion

    scale = _completion.SCALES[size][False]
    config = scale.config(
        seed, parameterization=parameterization, penalty=penalty, strength=strength, dynamics=dynamics
    )
    return (*_completion.build(config), scale.options(config))


def preconditioned(dynamics: str) -> None:
    """Tsit5 against the Chebyshev switch on the completion experiment's costliest run of `dynamics`."""
    flow, state0, options = completion_run("n = 30", 4, "depth 1", "ratio", 10.0, dynamics)
    t1, ts = options["t1"], options["ts"]

    def run(solver, rtol=options["rtol"]):
        return flows.solve(flow, state0, t1=t1, ts=ts, rtol=rtol, solver=solver, max_steps=3_000_000)

    print(
        f"\n# {dynamics} flow, completion n = 30, seed 4, depth 1, ratio lambda = 10, to t = {t1:g}, "
        f"rtol {options['rtol']:g}",
        flush=True,
    )
    solvers = {"Tsit5": diffrax.Tsit5, "Tsit5ThenChebyshev (default)": flows.Tsit5ThenChebyshev}
    timings = {name: H.Timing(first=H.clock(lambda: run(make()))[1], runs=[]) for name, make in solvers.items()}
    trajs = {}
    for name, make in solvers.items():
        trajs[name], seconds = H.clock(lambda: run(make()))
        timings[name].runs.append(seconds)
    reference = run(flows.Tsit5ThenChebyshev(), rtol=1e-9).W
    check = run(diffrax.Tsit5(), rtol=1e-9).W

    def err(W):
        return H.largest_relative_error(W, reference)

    print(f"reference: the switch at rtol 1e-9; Tsit5 at rtol 1e-9 is {err(check):.1e} off it")
    print("| solver | wall s | compile s | steps | rejected | switch at t | RKC stages | W err | Tsit5 / this |")
    print("|---|---|---|---|---|---|---|---|---|")
    tsit5 = timings["Tsit5"].median
    for name, traj in trajs.items():
        t, stats = timings[name], traj.stats
        switch = "-" if stats.get("t_switch") is None else f"{stats['t_switch']:.3g}"
        print(
            f"| {name} | {t.median:.1f} | {t.compile:.1f} | {stats['num_steps']} | {stats['num_rejected_steps']} | "
            f"{switch} | {stats.get('stages', '-')} | "
            f"{err(traj.W):.1e} | {tsit5 / t.median:.2f} |",
            flush=True,
        )


class HairerThenMerson(flows.AbstractTsit5Then):
    """Tsit5, then Merson's pair once Hairer's stiffness test (`flows.AbstractTsit5Then`) has seen `patience` steps
    with h rho above `threshold`: the switch the other stiff phases use, measured against Merson throughout. Its
    threshold is 1, not their 3: h rho estimates the dominant eigenvalue along the difference of Tsit5's last two
    stages, where the barely excited oscillations hardly show, and stays below 2 where stability holds the steps. Its
    step-size controller sees Tsit5's order 5 in both phases (`flows.AbstractTsit5Then`), Merson alone its own 4."""

    stiff_solver: flows.Merson = flows.Merson()
    threshold: float = eqx.field(static=True, default=1.0)
    patience: int = eqx.field(static=True, default=15)
    reset: int = eqx.field(static=True, default=6)
    horizon: ClassVar[float] = 0.0


def adam_runs(first_configuration) -> dict:
    """The Adam flow's runs: label -> (flow, initial state, options without solver and rtol, the rtols measured)."""

    def cell(*run):
        # The experiments' options without their solver and rtol (the rows' own).
        flow, state0, options = completion_run(*run)
        return flow, state0, {key: value for key, value in options.items() if key not in ("solver", "rtol")}

    flow, state0 = first_configuration
    # (flow, initial state, options, the rtols measured): n = 100 at the experiments' rtol only (a run takes minutes).
    return {
        "n = 15, depth 3, ratio (the first configuration's run)": (
            flow,
            state0,
            dict(t1=8.0, ts=np.linspace(0.0, 8.0, 5), max_steps=400_000),
            (1e-6, 1e-8),
        ),
        "n = 30, nuclear, lambda = 10": (
            *cell("n = 30", 4, "depth 1", "nuclear", 10.0, "Adam"),
            (1e-6, 1e-8),
        ),
        "n = 30, ratio, lambda = 10": (*cell("n = 30", 4, "depth 1", "ratio", 10.0, "Adam"), (1e-6, 1e-8)),
        "n = 30, ratio, lambda = 10, a = 100": (
            *cell("n = 30", 4, "depth 1", "ratio", 10.0, "Adam a=100"),
            (1e-6, 1e-8),
        ),
        "n = 30, depth 3, to the stop": (*cell("n = 30", 4, "depth 3", "none", 0.0, "Adam"), (1e-6, 1e-8)),
        "n = 30, U V^T, to the stop": (*cell("n = 30", 4, "UV^T", "none", 0.0, "Adam"), (1e-6, 1e-8)),
        "n = 100, nuclear, lambda = 30": (*cell("n = 100", 3, "depth 1", "nuclear", 30.0, "Adam"), (1e-6,)),
    }


def merson(first_configuration) -> None:
    """Tsit5, Merson's pair and two switches between them on the Adam flow's runs, at rtol 1e-6 and 1e-8."""
    runs = adam_runs(first_configuration)
    solvers = {
        "Tsit5 (default)": diffrax.Tsit5,
        "Merson": flows.Merson,
        "Tsit5, then Merson (Hairer's test, h rho = 1)": HairerThenMerson,
        "Tsit5, then Merson (power iteration; flows.Tsit5ThenMerson)": flows.Tsit5ThenMerson,
    }
    print("| run | rtol | solver | wall s | compile s | steps | rejected | switch at t | W err | Tsit5 / this |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for label, (flow, state0, options, rtols) in runs.items():
        reference_rtol = 1e-8 if flow.problem.shape[0] >= 100 else 1e-10
        reference = flows.solve(
            flow, state0, **(options | {"rtol": reference_rtol, "max_steps": 10_000_000}), solver=diffrax.Tsit5()
        )
        for rtol in rtols:
            timings, trajs = {}, {}
            for name, make in solvers.items():
                timings[name] = H.Timing(
                    first=H.clock(lambda: flows.solve(flow, state0, **options, rtol=rtol, solver=make()))[1], runs=[]
                )
                trajs[name], seconds = H.clock(lambda: flows.solve(flow, state0, **options, rtol=rtol, solver=make()))
                timings[name].runs.append(seconds)
            tsit5 = timings["Tsit5 (default)"].median
            for name, traj in trajs.items():
                # A stopped run's trajectory ends at its own stop: compared over the save times both reached.
                stopped = traj.stats["stopped_by_loss"] or reference.stats["stopped_by_loss"]
                k = min(len(traj.W), len(reference.W)) - int(stopped)
                err = H.largest_relative_error(traj.W[:k], reference.W[:k])
                switch = traj.stats.get("t_switch")
                print(
                    f"| {label} | {rtol:g} | {name} | {timings[name].median:.2f} | {timings[name].compile:.1f} | "
                    f"{traj.stats['num_steps']} | {traj.stats['num_rejected_steps']} | "
                    f"{'-' if switch is None else f'{switch:.3g}'} | {err:.1e} | {tsit5 / timings[name].median:.2f} |",
                    flush=True,
                )


def trial(first_configuration) -> None:
    """Tsit5 against `flows.Tsit5ThenMerson` without and with its trial step (`trial=1.2`) on the Adam flow's runs
    (`--merson`'s), in attempts and field evaluations (`switch_evaluations`), one run each."""
    print(
        "| run | rtol | Tsit5: attempts | the switch (`flows.Tsit5ThenMerson()`): attempts, at t, Tsit5's evaluations "
        "/ its | with `trial=1.2`: attempts, trials, at t, Tsit5's evaluations / its |"
    )
    print("|---|---|---|---|---|")
    for label, (flow, state0, options, rtols) in adam_runs(first_configuration).items():
        for rtol in rtols:
            tsit5, untried, tried = (
                flows.solve(flow, state0, **options, rtol=rtol, solver=solver).stats
                for solver in (diffrax.Tsit5(), flows.Tsit5ThenMerson(), flows.Tsit5ThenMerson(trial=1.2))
            )
            untried_evals, tried_evals = (
                switch_evaluations(stats, flows.Tsit5ThenMerson.every) for stats in (untried, tried)
            )
            base = 6 * tsit5["num_steps"]

            def at(stats):
                return "-" if stats["t_switch"] is None else f"{stats['t_switch']:.3g}"

            print(
                f"| {label} | {rtol:g} | {tsit5['num_steps']} | {untried['num_steps']}, {at(untried)}, "
                f"**{base / untried_evals:.2f}x** | {tried['num_steps']}, {tried['trials']}, {at(tried)}, "
                f"**{base / tried_evals:.2f}x** |",
                flush=True,
            )


def switch_evaluations(stats: dict, every: int) -> float:
    """A `flows.Tsit5ThenMerson` run's field evaluations: 6 an attempt in Tsit5's phase, 5 in Merson's (its rejected
    attempts split in proportion to the phases' accepted steps), a Jacobian-vector product (0.9 of an evaluation,
    `--spectrum`) every `every` accepted Tsit5 steps, 4 a trial step (those of the rejected attempts at the step that
    tries, which the solver's state does not keep, are not counted)."""
    attempts, accepted = stats["num_steps"], stats["num_steps"] - stats["num_rejected_steps"]
    merson = stats["merson_steps"] * attempts / max(accepted, 1)
    products = (accepted - stats["merson_steps"]) / every
    return 6 * (attempts - merson) + 5 * merson + 0.9 * products + 4 * stats["trials"]


def conditioning(flow, state0, t1: float) -> None:
    """The ratio on each factor: Tsit5's and Merson's relative W error at each save time against Dopri8 at rtol 1e-12,
    beside ||W|| and the flow's own amplification of a relative perturbation of 1e-10 of the initial state."""
    ts = np.linspace(0.0, t1, 5)

    def run(solver, rtol, state=state0):
        traj, seconds = H.clock(
            lambda: flows.solve(flow, state, t1=t1, ts=ts, rtol=rtol, solver=solver, max_steps=5_000_000)
        )
        return traj, seconds

    reference, _ = run(diffrax.Dopri8(), 1e-12)
    leaves, treedef = jax.tree.flatten(state0)
    rng = np.random.default_rng(0)
    perturbed = jax.tree.unflatten(
        treedef, [leaf * (1.0 + 1e-10 * rng.standard_normal(np.shape(leaf))) for leaf in leaves]
    )
    rows = {"||W|| (Dopri8, rtol 1e-12)": np.linalg.norm(reference.W, axis=(1, 2))}
    rows["the same from a start perturbed by 1e-10 (relative)"] = [
        H.relative_error(W, W_ref) for W, W_ref in zip(run(diffrax.Dopri8(), 1e-12, perturbed)[0].W, reference.W)
    ]
    for solver, rtol in [
        (diffrax.Dopri8(), 1e-10),
        (diffrax.Tsit5(), 1e-6),
        (diffrax.Tsit5(), 1e-8),
        (diffrax.Tsit5(), 1e-10),
        (flows.Merson(), 1e-6),
        (flows.Merson(), 1e-8),
    ]:
        traj, seconds = run(solver, rtol)
        name = f"{type(solver).__name__} at rtol {rtol:g} ({traj.stats['num_steps']} steps, {seconds:.0f} s)"
        rows[name] = [H.relative_error(W, W_ref) for W, W_ref in zip(traj.W, reference.W)]
    print("| | " + " | ".join(f"t = {t:g}" for t in ts) + " |")
    print("|---|" + "---|" * len(ts))
    for name, values in rows.items():
        print(f"| {name} | " + " | ".join(f"{v:.1e}" for v in values) + " |", flush=True)


READINGS: list[list[float]] = []


class StiffnessReader(flows.AbstractFlowSolver):
    """Tsit5 (its stages written out, `flows._stiff.tsit5_step`) reading, at every attempted step, h |mu| by
    `flows.Tsit5ThenMerson`'s power iteration (advanced on every accepted step), cos(v, J v) (minus the damping
    ratio on a normal dominant pair) and Hairer's h rho (`flows.AbstractTsit5Then`), appended to `READINGS` on the
    host."""

    term_structure = diffrax.ODETerm
    interpolation_cls = flows._solver.Hermite
    lands_save_times = True

    def order(self, terms):
        return 5

    def init(self, terms, t0, t1, y0, args):
        return terms.vf(t0, y0, args), *flows._merson.power_start(terms, t0, y0, args)

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        f0, v, last = solver_state
        y1, error, k, f1, y6 = flows._stiff.tsit5_step(terms, t0, t1, y0, args, f0)
        new_v, norm, modulus = flows._merson.power_step(terms, t1, y1, args, v, last)
        jax.debug.callback(
            lambda *x: READINGS.append([float(a) for a in x]),
            t0,
            (t1 - t0) * modulus,
            optax.tree_utils.tree_vdot(v, new_v),
            flows._stiff.stiffness_estimate(k, y1, y6),
        )
        dense = dict(y0=y0, y1=y1, k0=k[0], k1=k[6])
        return y1, error, dense, (f1, new_v, norm), diffrax.RESULTS.successful


def stiffness(first_configuration) -> None:
    """h |mu| (the power iteration's), cos(v, J v) and Hairer's h rho along Tsit5's steps on the Adam flow's runs."""
    print("| run | rtol | attempts | h abs(mu): 10 / 50 / 90 % | by tenths of the attempts: h abs(mu), cos, h rho |")
    print("|---|---|---|---|---|")
    for label, (flow, state0, options, rtols) in adam_runs(first_configuration).items():
        if flow.problem.shape[0] >= 100:
            continue  # minutes a run with the host callback
        for rtol in rtols:
            READINGS.clear()
            flows.solve(flow, state0, **options, rtol=rtol, solver=StiffnessReader())
            t, h_mu, cos, h_rho = np.array(READINGS).T
            tenths = np.array_split(np.arange(len(t)), 10)
            profile = "; ".join(
                f"t = {t[i[0]]:.3g}: {np.median(h_mu[i]):.2f}, {np.median(cos[i]):+.3f}, {np.median(h_rho[i]):.2f}"
                for i in tenths
            )
            quantiles = " / ".join(f"{q:.2f}" for q in np.quantile(h_mu[10:], [0.1, 0.5, 0.9]))
            print(f"| {label} | {rtol:g} | {len(t)} | {quantiles} | {profile} |", flush=True)


def controllers() -> None:
    """The Adam flow's default (PI) step-size controller against an I controller on three completion runs."""
    import jax.numpy as jnp

    from flows._solve import _error_control

    print("| run | controller | wall s | compile s | steps | rejected | W err | I / PI steps |")
    print("|---|---|---|---|---|---|---|---|")
    for penalty, dynamics in (("nuclear", "Adam"), ("ratio", "Adam"), ("ratio", "Adam a=100")):
        flow, state0, options = completion_run("n = 30", 4, "depth 1", penalty, 10.0, dynamics)
        i_controller = diffrax.ClipStepSizeController(
            flows.ArraywiseRelative.make(options["rtol"], _error_control, gains=(0, 1)),
            step_ts=jnp.asarray(options["ts"]),
        )
        variants = {"PI (default)": {}, "I": {"stepsize_controller": i_controller}}
        timings, trajs = {}, {}
        for name, extra in variants.items():
            timings[name] = H.Timing(first=H.clock(lambda: flows.solve(flow, state0, **options, **extra))[1], runs=[])
            trajs[name], seconds = H.clock(lambda: flows.solve(flow, state0, **options, **extra))
            timings[name].runs.append(seconds)
        reference = flows.solve(flow, state0, **(options | {"rtol": 1e-9})).W
        steps = {name: traj.stats["num_steps"] for name, traj in trajs.items()}
        for name, traj in trajs.items():
            err = H.largest_relative_error(traj.W, reference)
            print(
                f"| {penalty}, {dynamics} | {name} | {timings[name].median:.1f} | {timings[name].compile:.1f} | "
                f"{steps[name]} | {traj.stats['num_rejected_steps']} | {err:.1e} | "
                f"{steps['I'] / steps['PI (default)']:.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    raise SystemExit(main())
