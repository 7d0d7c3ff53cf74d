r"""A flow with a quantity integrated alongside it: state (inner state, carried), W from the inner state."""

from __future__ import annotations

import abc

import flows


class AbstractCarried(flows.AbstractFlow):
    r"""`flow` with an extra state c carried along: $\theta' = F(\theta)$, $c' = $ `carried_field(W, c)`.

    The product, the conserved quantities and the problem are the inner flow's; subclasses say how c
    starts (`init`) and moves (`carried_field`, given the current product W).
    """

    flow: flows.AbstractFlow
    problem: flows.AbstractProblem

    def __init__(self, flow: flows.AbstractFlow):
        self.flow = flow
        self.problem = flow.problem

    @abc.abstractmethod
    def carried_field(self, W, carried):
        """The carried quantity's derivative at product W."""

    def product(self, state):
        return self.flow.product(state[0])

    def vector_field(self, t, state, args):
        inner, carried = state
        return self.flow.vector_field(t, inner, args), self.carried_field(self.flow.product(inner), carried)

    def conserved(self, state):
        return self.flow.conserved(state[0])

    def describe(self):
        return {"flow": type(self).__name__, "inner": self.flow.describe()}
