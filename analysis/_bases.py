r"""Bases for the analysis package's own ODEs: a flow with a quantity carried alongside, and an ODE from a
fixed initial matrix. Both are `flows.AbstractFlow`s, so `flows.solve` integrates them."""

from __future__ import annotations

import abc

import numpy as np
from jaxtyping import Array, Float

import flows


class AbstractCarried(flows.AbstractFlow):
    r"""`flow` with an extra state c carried along: $s' = F(s)$, $c' = $ `carried_field(W, c)`.

    The product, the conserved quantities and the problem are the inner flow's; subclasses say how c
    starts (`carried_init`, given the inner state) and moves (`carried_field`, given the current product W).
    """

    flow: flows.AbstractFlow
    problem: flows.AbstractProblem

    def __init__(self, flow: flows.AbstractFlow):
        self.flow = flow
        self.problem = flow.problem

    @abc.abstractmethod
    def carried_init(self, inner_state):
        """The carried quantity at t = 0."""

    @abc.abstractmethod
    def carried_field(self, W, carried):
        """The carried quantity's derivative at product W."""

    def init(self, scale=1e-3, kind="identity", seed=0):
        return self.state(self.flow.init(scale=scale, kind=kind, seed=seed))

    def state(self, inner_state):
        """The joint state (inner state, carried quantity) of a given inner state."""
        return inner_state, self.carried_init(inner_state)

    def product(self, state):
        return self.flow.product(state[0])

    def vector_field(self, t, state):
        inner, carried = state
        return self.flow.vector_field(t, inner), self.carried_field(self.flow.product(inner), carried)

    def conserved(self, state):
        return self.flow.conserved(state[0])

    def describe(self):
        return {"flow": type(self).__name__, "inner": self.flow.describe()}


def checked_matrix(name: str, W0, shape: tuple[int, int]) -> np.ndarray:
    """W0 as a float64 array of `shape` with finite entries, or ValueError naming it."""
    W0 = np.asarray(W0, dtype=np.float64)
    if W0.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}; got {W0.shape}")
    if not np.all(np.isfinite(W0)):
        raise ValueError(f"{name} has non-finite entries (NaN or inf)")
    return W0


class AbstractFromMatrix(flows.AbstractFlow):
    """An ODE that starts from a matrix fixed at construction: `init` takes no arguments."""

    def init(self, scale=None, kind=None, seed=None):
        """The state at t = 0, set by the constructor's W0; the arguments must be left unset."""
        if scale is not None or kind is not None or seed is not None:
            raise ValueError(f"{type(self).__name__} starts from the W0 given at construction; init takes no arguments")
        return self.start()

    @abc.abstractmethod
    def start(self) -> Float[Array, "..."]:
        """The state at t = 0."""
