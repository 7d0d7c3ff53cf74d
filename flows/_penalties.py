r"""Penalties: smoothed nuclear norm, the ratio $\|W\|_* / \|W\|_F$ and Frobenius on W, or on each factor.

Values and gradients come in closed form from one symmetric eigendecomposition of the smaller Gram
matrix ($W^T W$ or $W W^T$). Autodiff through `eigh`/`svd` is NaN at repeated eigenvalues, and
$W = \alpha I$ has nothing else, so the nuclear-norm primitives carry custom JVPs: the value's
tangent is $\langle \nabla R, dW \rangle$ and the gradient's tangent is the Daleckii-Krein formula,
whose divided differences are written in a closed form with no cancellation and no branch.
Second derivatives (Hessian-vector products for implicit solvers and the modified flow) are
therefore finite everywhere the smoothed penalties are defined, W = 0 and repeated singular values
included.

Accuracy: the Gram matrix squares the singular values, so a singular value below about
$10^{-8} \sigma_{\max}$ is resolved only to $\sim 10^{-8} \sigma_{\max}$; the smoothing `eps` must
sit above that level to be meaningful (it does by default).
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ._validate import check_nonnegative, check_positive


class AbstractPenalty(eqx.Module):
    r"""A penalty $R(\theta)$ on the parameters, added to the data loss: $f = L(W) + \lambda R$.

    What a flow needs of it: its value and the fused gradient of the whole objective with respect to the
    parameters, given the data loss's gradient G on W (`objective_gradient`), so that a penalty on W
    costs one pullback, not two. `keeps_symmetry` says whether the parameterization's conserved
    quantities survive the penalty (they do for any function of W alone).
    """

    keeps_symmetry: ClassVar[bool]

    @abc.abstractmethod
    def value(self, parameterization, theta) -> Float[Array, ""]:
        r"""$R(\theta)$."""

    @abc.abstractmethod
    def objective_gradient(
        self,
        parameterization,
        theta,
        W: Float[Array | np.ndarray, "n1 n2"],
        G: Float[Array, "n1 n2"],
        strength: Float[Array, ""],
    ):
        r"""$\nabla_\theta \big(\langle G, \phi(\theta)\rangle + \lambda R(\theta)\big)$ at $W = \phi(\theta)$."""

    def describe(self) -> dict[str, Any]:
        """A JSON-able description (saved with trajectories)."""
        return {"name": type(self).__name__}

    def check_start(self, parameterization, theta) -> None:
        """ValueError where the penalty's gradient is undefined at the initial parameters (host-side, before anything
        compiles); most penalties are defined everywhere."""


class AbstractMatrixPenalty(AbstractPenalty):
    """A penalty R(W) on the end-to-end matrix: `penalty(W)` is its value, `penalty.grad(W)` its gradient."""

    keeps_symmetry = True

    @abc.abstractmethod
    def __call__(self, W: Float[Array | np.ndarray, "n1 n2"]) -> Float[Array, ""]:
        """R(W)."""

    @abc.abstractmethod
    def grad(self, W: Float[Array | np.ndarray, "n1 n2"]) -> Float[Array | np.ndarray, "n1 n2"]:
        r"""$\nabla R(W)$, in closed form (differentiable again: see the module docstring)."""

    def value(self, parameterization, theta):
        return self(parameterization.product(theta))

    def objective_gradient(self, parameterization, theta, W, G, strength):
        return parameterization.pullback(theta, G + strength * self.grad(W))


class EachFactor(AbstractPenalty):
    r"""A matrix penalty applied to each parameter array: $R(\theta) = \sum_j R_0(W_j)$.

    For the deep product $\theta = (W_1, \dots, W_N)$ it penalises every factor; for W = U V^T both U and V;
    for the direct parameterization it is $R_0(W)$ itself. The gradient is $\nabla R_0$ on each array.
    Not a function of W alone, so the parameterization's conserved quantities do not survive it.

    Args:
        penalty: the matrix penalty R_0 applied to each factor.
    """

    penalty: AbstractMatrixPenalty
    keeps_symmetry = False

    def __check_init__(self):
        if not isinstance(self.penalty, AbstractMatrixPenalty):
            raise ValueError(
                "EachFactor applies a matrix penalty (Nuclear, Ratio, Frobenius) to each factor; "
                f"got {type(self.penalty).__name__}"
            )

    def value(self, parameterization, theta):
        return sum((self.penalty(leaf) for leaf in jax.tree.leaves(theta)), start=jnp.zeros(()))

    def objective_gradient(self, parameterization, theta, W, G, strength):
        return jax.tree.map(
            lambda g, x: g + strength * self.penalty.grad(x), parameterization.pullback(theta, G), theta
        )

    def describe(self):
        return {"name": "EachFactor", "penalty": self.penalty.describe()}


class Frobenius(AbstractMatrixPenalty):
    r"""$R(W) = \tfrac12 \|W\|_F^2$, $\nabla R = W$ (weight decay on the end-to-end matrix)."""

    def __call__(self, W):
        return 0.5 * jnp.vdot(W, W)

    def grad(self, W):
        return W


class Nuclear(AbstractMatrixPenalty):
    r"""The smoothed nuclear norm $R(W) = \sum_k \big(\sqrt{\sigma_k^2 + \epsilon^2} - \epsilon\big)$.

    $\nabla R = W (W^T W + \epsilon^2 I)^{-1/2}$, which is $U V^T$ on singular values $\gg \epsilon$
    and $W / \epsilon$ on those $\ll \epsilon$. $R \to \|W\|_*$ as $\epsilon \to 0$, with
    $0 \le \|W\|_* - R \le \operatorname{rank}(W)\,\epsilon$. `eps` > 0 is required: the exact
    nuclear norm has no gradient at rank-deficient W (and a small init is nearly rank-deficient).

    Args:
        eps: smoothing of the nuclear norm, sum_k sqrt(sigma_k^2 + eps^2) - eps (> 0).
    """

    eps: Float[Array, ""]

    def __init__(self, eps: float = 1e-3):
        self.eps = jnp.asarray(check_positive("eps", eps), dtype=jnp.float64)

    def __call__(self, W):
        return smoothed_nuclear(W, self.eps)

    def grad(self, W):
        return smoothed_nuclear_grad(W, self.eps)

    def describe(self):
        return {"name": "Nuclear", "eps": float(self.eps)}


class Ratio(AbstractMatrixPenalty):
    r"""The ratio $\|W\|_* / \|W\|_F$ (the seed's $L_{*/F}$), smoothed so that it stays scale invariant.

    $R(W) = N_\epsilon(W / s)$ with $N_\epsilon$ the smoothed nuclear norm of `Nuclear` and
    $s = \sqrt{\|W\|_F^2 + \delta^2}$. At $\epsilon = \delta = 0$ this is exactly $\|W\|_*/\|W\|_F$.
    Smoothing the *normalised* matrix keeps $R(cW) = R(W)$ exactly when $\delta = 0$, for every
    $\epsilon$ (smoothing $\|W\|_*$ with an absolute $\epsilon$ would not), so $\langle \nabla R, W
    \rangle = 0$ and the pure-penalty direct flow conserves $\|W\|_F$. $\delta > 0$ makes R smooth at
    W = 0 (where the ratio is undefined), at the price of invariance at scales $\|W\|_F \lesssim \delta$;
    it also caps the gradient, $\|\nabla R\| = O(1/\delta)$, which is otherwise $O(1/\|W\|_F)$: stiff
    near a small initialization.

    $\nabla R = \big(G - \langle G, Z \rangle Z\big) / s$ with $Z = W / s$ and $G = \nabla N_\epsilon(Z)$;
    at $\epsilon = \delta = 0$ that is $U V^T / \|W\|_F - \|W\|_* W / \|W\|_F^3$.

    Args:
        eps: smoothing of the nuclear norm of the normalised W / s (> 0).
        delta: smoothing of the norm, s = sqrt(||W||_F^2 + delta^2); 0 keeps the ratio exactly scale invariant.
    """

    eps: Float[Array, ""]
    delta: Float[Array, ""]

    def __init__(self, eps: float = 1e-3, delta: float = 1e-3):
        self.eps = jnp.asarray(check_positive("eps", eps), dtype=jnp.float64)
        self.delta = jnp.asarray(check_nonnegative("delta", delta), dtype=jnp.float64)

    def _normalise(self, W):
        # sqrt of the sum of squares, not jnp.linalg.norm: its derivative is finite at W = 0 when delta > 0.
        s = jnp.sqrt(jnp.vdot(W, W) + self.delta**2)
        return W / s, s

    def __call__(self, W):
        Z, _ = self._normalise(W)
        return smoothed_nuclear(Z, self.eps)

    def grad(self, W):
        Z, s = self._normalise(W)
        G = smoothed_nuclear_grad(Z, self.eps)
        return (G - jnp.vdot(G, Z) * Z) / s

    def describe(self):
        return {"name": "Ratio", "eps": float(self.eps), "delta": float(self.delta)}

    def check_start(self, parameterization, theta):
        if float(self.delta) == 0.0 and not np.any(np.asarray(parameterization.product(theta))):
            raise ValueError(
                "the ratio ||W||_* / ||W||_F with delta = 0 is undefined at W = 0, where this run starts: start from a "
                "nonzero W, or smooth it with delta > 0"
            )


class HoyerSquare(AbstractMatrixPenalty):
    r"""The squared ratio $R(W)^2$, $R$ = `Ratio` (DeepHoyer's Hoyer-square, on singular values): $\nabla R^2 = 2 R \nabla R$.

    Scale invariant like the ratio; its gradient is the ratio's times $2R \in [2, 2\sqrt{\operatorname{rank}}]$,
    so the two differ only in how much harder the squared one pushes where $W$ is far from rank one.

    Args:
        eps: smoothing of the ratio's nuclear norm (> 0), as in `Ratio`.
        delta: smoothing of the ratio's Frobenius norm, as in `Ratio`.
    """

    ratio: Ratio

    def __init__(self, eps: float = 1e-3, delta: float = 1e-3):
        self.ratio = Ratio(eps=eps, delta=delta)

    def __call__(self, W):
        return self.ratio(W) ** 2

    def grad(self, W):
        return 2 * self.ratio(W) * self.ratio.grad(W)

    def describe(self):
        return {"name": "HoyerSquare", "eps": float(self.ratio.eps), "delta": float(self.ratio.delta)}

    def check_start(self, parameterization, theta):
        self.ratio.check_start(parameterization, theta)


PENALTIES = {
    "nuclear": Nuclear,
    "ratio": Ratio,
    "hoyer-square": HoyerSquare,
    "frobenius": Frobenius,
    "each-factor": EachFactor,
}
"""Penalties by the names the command line accepts."""


# -- the smoothed nuclear norm and its gradient, with exact derivatives ---------------------------
#
# For a tall W (n1 >= n2) write C = W^T W = V diag(l) V^T, a = l + eps^2 (all > 0 when eps > 0) and
# h(l) = (l + eps^2)^{-1/2}. Then N(W) = sum_k (sqrt(a_k) - eps) and grad N = W h(C). A wide W is the
# transpose of a tall one: N(W) = N(W^T) and grad N(W) = grad N(W^T)^T.


def _gram_spectrum(W, eps):
    l, V = jnp.linalg.eigh(W.T @ W)
    l = jnp.maximum(l, 0.0)  # round-off can make zero eigenvalues slightly negative
    return l, V, l + eps**2


@jax.custom_jvp
def _nuclear_tall(W, eps):
    l, _, a = _gram_spectrum(W, eps)
    # sqrt(l + eps^2) - eps without cancellation when l << eps^2
    return jnp.sum(l / (jnp.sqrt(a) + eps))


@_nuclear_tall.defjvp
def _nuclear_tall_jvp(primals, tangents):
    W, eps = primals
    dW, deps = tangents
    l, _, a = _gram_spectrum(W, eps)
    # The gradient through its own custom JVP, so that second derivatives of N are finite too.
    G = _nuclear_grad_tall(W, eps)
    # dN/deps = sum_k (eps / sqrt(a_k) - 1) = -sum_k l_k / (sqrt(a_k) (sqrt(a_k) + eps))
    dN_deps = -jnp.sum(l / (jnp.sqrt(a) * (jnp.sqrt(a) + eps)))
    return jnp.sum(l / (jnp.sqrt(a) + eps)), jnp.vdot(G, dW) + dN_deps * deps


@jax.custom_jvp
def _nuclear_grad_tall(W, eps):
    _, V, a = _gram_spectrum(W, eps)
    return W @ ((V / jnp.sqrt(a)) @ V.T)


@_nuclear_grad_tall.defjvp
def _nuclear_grad_tall_jvp(primals, tangents):
    r"""$d(W h(C)) = dW\,h(C) + W\,V \big(D \circ V^T dC\, V + \operatorname{diag}(\partial_\epsilon h)\,d\epsilon\big) V^T$.

    $dC = W^T dW + dW^T W$. Daleckii-Krein: $D_{ij} = (h(l_i) - h(l_j)) / (l_i - l_j)$, which for
    $h = (l + \epsilon^2)^{-1/2}$ is exactly $-1 / (\sqrt{a_i a_j} (\sqrt{a_i} + \sqrt{a_j}))$: no
    cancellation at nearby eigenvalues, and $h'(l_i) = -a_i^{-3/2}/2$ on the diagonal.
    $\partial_\epsilon h = -\epsilon a^{-3/2}$.
    """
    W, eps = primals
    dW, deps = tangents
    _, V, a = _gram_spectrum(W, eps)
    root = jnp.sqrt(a)
    H = (V / root) @ V.T
    D = -1.0 / (jnp.outer(root, root) * (root[:, None] + root[None, :]))
    WdW = W.T @ dW
    inner = D * (V.T @ (WdW + WdW.T) @ V) + jnp.diag(-eps / a**1.5 * deps)
    return W @ H, dW @ H + W @ (V @ inner @ V.T)


def smoothed_nuclear(W: Float[Array | np.ndarray, "n1 n2"], eps: Float[Array, ""]) -> Float[Array, ""]:
    r"""$\sum_k (\sqrt{\sigma_k(W)^2 + \epsilon^2} - \epsilon)$, differentiable in W and eps (eps > 0)."""
    return _nuclear_tall(W, eps) if W.shape[0] >= W.shape[1] else _nuclear_tall(W.T, eps)


def smoothed_nuclear_grad(W: Float[Array | np.ndarray, "n1 n2"], eps: Float[Array, ""]) -> Float[Array, "n1 n2"]:
    r"""$W (W^T W + \epsilon^2 I)^{-1/2}$ (eps > 0), with an exact custom JVP."""
    return _nuclear_grad_tall(W, eps) if W.shape[0] >= W.shape[1] else _nuclear_grad_tall(W.T, eps).T
