r"""The small-initialization limit: where flows from $\alpha$-scaled inits converge, as $\alpha \to 0$.

Running to convergence. The fit happens in time $O(\log(1/\alpha))$, but the last stretch is algebraic, not
exponential: a spurious eigen-direction of $W = U U^T$ of size $\sigma$ is pulled in at a rate proportional
to $\sigma$ itself, so it decays like 1/t, and reaching $W_\infty$ to 1e-6 takes t ~ 1e5..1e7 while the
fitted directions keep the problem stiff (explicit steps stay ~1e-3). `converge` therefore integrates in
two legs: flows' default solver into a tail (Tsit5 switching to the linearly implicit extrapolation) until
the loss falls to `head_loss`, then a stiff one (that extrapolation, also for the flow carrying the residual
integral; Kvaerno5 for flows it cannot linearise) out to `t1`, steps growing with t, saving at every decade. Its estimate of how far
the end point still is from $W_\infty$ is the change over the last decade (for a 1/t tail the remaining
distance is a ninth of it).

References (analysis.references): the minimum-trace PSD interpolant (cvxpy/Clarabel), for commuting
problems the LP in the common eigenbasis, for the direct flow the minimum-Frobenius interpolant.

The KKT certificate: $W \succeq 0$, $\mathcal{A}(W) = y$, and $\nu$ with
$\sum_i \nu_i A_i \preceq I$ and $W = (\sum_i \nu_i A_i) W$ prove W is a minimum-trace PSD interpolant. For
the symmetric flow on commuting measurements $W_\infty = \alpha^2 E^2$, $E = \exp(-2 \sum_i s_i A_i)$, with
$s = \int_0^\infty r\,dt$ (see analysis.closed_form.CommutingReduced), so on W's eigenvalues $\lambda_k$

    $\nu = -4 s / \log(1/\alpha^2)$ gives $(\sum_i \nu_i A_i)$ the eigenvalues $1 + \log\lambda_k / \log(1/\alpha^2)$:

equal to 1 up to $O(1/\log(1/\alpha))$ where $\lambda_k$ is of order 1, and below 1 where $\lambda_k \to 0$.
The residuals therefore vanish, slowly, like $1/\log(1/\alpha)$. `ResidualIntegral` carries s along any
flow, so the same construction is measured on non-commuting problems, where it is only a conjecture.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import time

import diffrax
import jax
import jax.numpy as jnp
import numpy as np

import flows

from ._bases import AbstractCarried
from .closed_form import CommutingReduced
from .references import Reference


class ResidualIntegral(AbstractCarried):
    r"""A flow augmented with $s(t) = \int_0^t r(\tau)\,d\tau$: state (inner state, s), $s' = r(W)$.

    Linearisable where the inner flow is: s' depends on the inner state alone, so the Gauss-Newton matrix of the
    inner flow with a zero block for s (`flows.PaddedGaussNewton`) is a valid matrix for the linearly implicit
    solvers, which then step s explicitly."""

    def carried_init(self, inner_state):
        """s(0) = 0."""
        return jnp.zeros(self.problem.m)

    def carried_field(self, W, s):
        return self.problem.residual(W)

    @property
    def linearisable(self) -> bool:
        return self.flow.linearisable

    def gauss_newton(self, state):
        inner = self.flow.gauss_newton(state[0])
        if inner is None:
            return None
        return flows.PaddedGaussNewton(inner, jax.ShapeDtypeStruct(state[1].shape, state[1].dtype))


@dataclasses.dataclass(frozen=True)
class Converged:
    """The end of a run to convergence and what it cost."""

    W: np.ndarray
    state: object
    t_final: float
    loss: float
    last_decade_change: float
    steps: dict[str, int]
    seconds: float
    reused: bool = False
    """Whether it was read from a store (`stored`) instead of computed."""

    def describe(self) -> dict:
        return {
            "t_final": self.t_final,
            "loss": self.loss,
            "last_decade_change": self.last_decade_change,
            "steps": self.steps,
            "seconds": self.seconds,
        }


def converge(
    flow: flows.AbstractFlow,
    state0,
    *,
    t1: float = 1e8,
    head_loss: float = 1e-6,
    head_t1: float = 1e4,
    rtol: float = 1e-8,
    atol: float = 1e-12,
    head_solver: diffrax.AbstractSolver | None = None,
    tail_solver: diffrax.AbstractSolver | None = None,
    max_steps: int = 1_000_000,
) -> Converged:
    """Run `flow` from `state0` to t1 in two legs (see the module docstring) and return its end point.

    The tail leg restarts the clock (the flows are autonomous); `t_final` is the total time. Default
    solvers: `flows.default_solver(flow, head_loss)` for the head; for the tail the linearly implicit
    extrapolation where the flow answers its Gauss-Newton linearisation (`flow.linearisable`: plain
    gradient flows, and `ResidualIntegral` around one), else Kvaerno5 (a dense Jacobian: small states only).
    """
    dynamics = getattr(flow, "dynamics", None)
    if dynamics is not None and not dynamics.restarts:
        raise ValueError(
            f"converge restarts the clock between its two legs, which {type(dynamics).__name__}'s state does not "
            "allow (its moments start at zero and its bias corrections read the time): run it with flows.solve"
        )
    head_solver, tail_solver = solvers(flow, head_loss, head_solver, tail_solver)
    start = time.perf_counter()
    head = flows.solve(
        flow,
        state0,
        t1=head_t1,
        ts=np.array([0.0]),
        rtol=rtol,
        atol=atol,
        stop_loss=head_loss,
        solver=head_solver,
        max_steps=max_steps,
    )
    if not head.stats["stopped_by_loss"]:
        raise flows.SolverError(
            f"the loss did not fall below head_loss = {head_loss:g} by t = {head_t1:g} "
            f"(loss {head.loss[-1]:.3g}); raise head_t1 or head_loss",
            head_t1,
            head.stats,
        )
    t_head = head.stats["t_final"]
    span = t1 - t_head
    decades = np.geomspace(1.0, span, max(2, int(np.ceil(np.log10(span))) + 1))
    tail = flows.solve(
        flow, _last(head.states), t1=span, ts=decades, rtol=rtol, atol=atol, solver=tail_solver, max_steps=max_steps
    )
    W = tail.W
    change = float(np.linalg.norm(W[-1] - W[-2]) / np.linalg.norm(W[-1]))
    return Converged(
        W=W[-1],
        state=_last(tail.states),
        t_final=t_head + float(tail.ts[-1]),
        loss=float(tail.loss[-1]),
        last_decade_change=change,
        steps={
            "head": head.stats["num_steps"],
            "tail": tail.stats["num_steps"],
            "tail_rejected": tail.stats["num_rejected_steps"],
        },
        seconds=time.perf_counter() - start,
    )


def solvers(
    flow: flows.AbstractFlow,
    head_loss: float,
    head_solver: diffrax.AbstractSolver | None = None,
    tail_solver: diffrax.AbstractSolver | None = None,
) -> tuple[diffrax.AbstractSolver, diffrax.AbstractSolver]:
    """`converge`'s two solvers, the defaults filled in: `flows.default_solver(flow, head_loss)` for the head; for
    the tail the linearly implicit extrapolation where the flow answers its Gauss-Newton linearisation, else
    Kvaerno5."""
    head = flows.default_solver(flow, head_loss) if head_solver is None else head_solver
    if tail_solver is None:
        tail_solver = flows.LinearlyImplicitExtrapolation() if flow.linearisable else diffrax.Kvaerno5()
    return head, tail_solver


def stored(store, flow: flows.AbstractFlow, state0, *, fresh: bool = False, **options) -> Converged:
    """`converge(flow, state0, **options)`, computed once and kept in the store `store` (`flows.cached`, keyed by
    the flow, its initial state and the options with the default solvers filled in, so that a change of a default
    solver's settings computes the run again), so `gradflow check` and the small-init experiment read the same
    runs. `fresh` computes it again."""
    head_loss = options.get("head_loss", inspect.signature(converge).parameters["head_loss"].default)
    head_solver, tail_solver = solvers(flow, head_loss, options.get("head_solver"), options.get("tail_solver"))
    options = options | {"head_solver": head_solver, "tail_solver": tail_solver}
    # The code that computes the run joins the key: changing it computes the run again.
    code = [inspect.getsource(function) for function in (converge, solvers)]
    inputs = {"converge": flow, "state0": state0, "options": options, "code": code}

    def compute() -> dict[str, np.ndarray]:
        run = converge(flow, state0, **options)
        leaves, structure = flows.encode_tree(run.state)
        numbers = {k: v for k, v in run.describe().items() if k != "steps"}
        return {
            "W": run.W,
            "structure": np.asarray(json.dumps(structure)),
            "numbers": np.asarray(json.dumps(numbers)),
            "steps": np.asarray(json.dumps(run.steps)),
            **{f"leaf_{i}": leaf for i, leaf in enumerate(leaves)},
        }

    arrays, reused = flows.cached(store, inputs, compute, fresh=fresh)
    leaves = [arrays[f"leaf_{i}"] for i in range(sum(k.startswith("leaf_") for k in arrays))]
    numbers = json.loads(str(arrays["numbers"]))
    return Converged(
        W=arrays["W"],
        state=flows.decode_tree(json.loads(str(arrays["structure"])), leaves),
        steps=json.loads(str(arrays["steps"])),
        reused=reused,
        **numbers,
    )


def _last(states):
    return jax.tree.map(lambda x: x[-1], states)


@dataclasses.dataclass(frozen=True)
class Certificate:
    r"""Residuals of the KKT certificate $\nu = -c\, s / \log(1/\alpha^2)$ for $W$.

    dual: $\max(0, \lambda_\max(\sum \nu_i A_i) - 1)$; complementarity: $\|W - (\sum \nu_i A_i) W\|_F / \|W\|_F$;
    feasibility: $\|\mathcal{A}(W) - y\| / \|y\|$; gap: $|\operatorname{tr} W - y^T \nu| / \operatorname{tr} W$.
    """

    nu: np.ndarray
    dual: float
    complementarity: float
    feasibility: float
    gap: float


def certificate(problem: flows.AbstractProblem, W, s, alpha: float, exponent: float = 4.0) -> Certificate:
    r"""The KKT certificate from $s = \int_0^\infty r$: $\nu = -\,$`exponent`$\; s / \log(1/\alpha^2)$.

    `exponent` is 4 for the symmetric flow ($W = \alpha^2 e^{-4 \sum s_i A_i}$ in the commuting case).
    """
    W = np.asarray(W)
    nu = -exponent * np.asarray(s) / np.log(1.0 / alpha**2)
    M = np.asarray(problem.adjoint(jnp.asarray(nu)))
    M = 0.5 * (M + M.T)
    y = np.asarray(problem.y)
    trace = float(np.trace(W))
    return Certificate(
        nu=nu,
        dual=max(0.0, float(np.linalg.eigvalsh(M)[-1]) - 1.0),
        complementarity=float(np.linalg.norm(W - M @ W) / np.linalg.norm(W)),
        feasibility=float(np.linalg.norm(np.asarray(problem.residual(W))) / np.linalg.norm(y)),
        gap=abs(trace - float(y @ nu)) / trace,
    )


@dataclasses.dataclass(frozen=True)
class Sweep:
    """W_inf(alpha) against references over a sweep of alpha (decreasing)."""

    alphas: np.ndarray
    distances: dict[str, np.ndarray]
    rates: dict[str, float]
    certificates: list[Certificate]
    runs: list[Converged]
    references: dict[str, Reference]

    def monotone(self, name: str) -> bool:
        """Whether the distance to reference `name` decreases strictly as alpha decreases."""
        return bool(np.all(np.diff(self.distances[name]) < 0))


def fitted_rate(alphas, distances) -> float:
    r"""The slope p of $\log d = p \log \alpha + c$ by least squares: $d \sim \alpha^p$."""
    return float(np.polyfit(np.log(np.asarray(alphas)), np.log(np.asarray(distances)), 1)[0])


def sweep(
    flow: flows.AbstractFlow,
    alphas,
    references: dict[str, Reference],
    *,
    kind: str = "identity",
    certificate_exponent: float | None = None,
    store=None,
    fresh: bool = False,
    **converge_options,
) -> Sweep:
    r"""Run `flow` from `flow.init(scale=alpha, kind=kind)` to convergence for each alpha.

    Measures the relative distance of $W_\infty(\alpha)$ to each reference and fits its rate in alpha. With
    `certificate_exponent` set (4 for the symmetric flow), the flow carries $s = \int r$ (`ResidualIntegral`)
    and the certificate of `certificate` is built at each alpha. That makes the tail's implicit solves
    larger (state + m); for commuting problems `commuting_certificates` gets s far more cheaply. With `store`,
    each run is kept there (`stored`); `fresh` computes each again.
    """
    alphas = _check_alphas(alphas)
    carried = flow if certificate_exponent is None else ResidualIntegral(flow)
    runs, certificates = [], []
    for alpha in alphas:
        run = _converge(store, carried, carried.init(scale=float(alpha), kind=kind), converge_options, fresh)
        runs.append(run)
        if certificate_exponent is not None:
            certificates.append(certificate(flow.problem, run.W, run.state[1], float(alpha), certificate_exponent))
    return _measure(alphas, runs, certificates, references)


def commuting_certificates(
    problem: flows.CommutingProblem,
    alphas,
    references: dict[str, Reference] | None = None,
    store=None,
    fresh: bool = False,
    **converge_options,
) -> Sweep:
    r"""The symmetric flow from $\alpha^2 I$ on commuting measurements through its reduced ODE.

    `closed_form.CommutingReduced` integrates $s = \int_0^t r$ itself (m numbers), so $s(\infty)$ and the
    certificate come with the run at the cost of an m-dimensional solve; its $W_\infty = E W_0 E$ can be
    compared with the full flow's. With `store`, each run is kept there (`stored`); `fresh` computes each again.
    """
    alphas = _check_alphas(alphas)
    runs, certificates = [], []
    for alpha in alphas:
        reduced = CommutingReduced(problem, float(alpha) ** 2 * np.eye(problem.shape[0]))
        run = _converge(store, reduced, reduced.init(), converge_options, fresh)
        runs.append(run)
        certificates.append(certificate(problem, run.W, run.state, float(alpha), 4.0))
    return _measure(alphas, runs, certificates, references or {})


def _converge(store, flow, state0, options, fresh: bool = False) -> Converged:
    if store is None:
        return converge(flow, state0, **options)
    return stored(store, flow, state0, fresh=fresh, **options)


def _check_alphas(alphas) -> np.ndarray:
    alphas = np.asarray(alphas, dtype=np.float64)
    if alphas.ndim != 1 or alphas.size < 2 or np.any(np.diff(alphas) >= 0) or np.any(alphas <= 0):
        raise ValueError("alphas must be a decreasing 1-d array of at least two positive scales")
    return alphas


def _measure(alphas, runs, certificates, references) -> Sweep:
    distances = {name: np.array([ref.distance(run.W) for run in runs]) for name, ref in references.items()}
    rates = {name: fitted_rate(alphas, d) for name, d in distances.items()}
    return Sweep(
        alphas=alphas, distances=distances, rates=rates, certificates=certificates, runs=runs, references=references
    )
