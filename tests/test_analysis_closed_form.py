"""Closed forms: input checks (the trajectories against them are rows of analysis.checks.closed_form_checks)."""

import numpy as np
import pytest

import flows
from analysis import closed_form


def test_bad_input():
    with pytest.raises(ValueError, match="CommutingProblem"):
        closed_form.CommutingReduced(flows.sensing(n=4, m=3, rank=1), np.eye(4))
    with pytest.raises(ValueError, match="W0"):
        closed_form.CommutingReduced(flows.commuting(n=4, m=3, rank=1), np.eye(3))
    with pytest.raises(ValueError, match="U0"):
        closed_form.riccati(np.eye(4), np.ones((4, 2)), [0.0, 1.0])
    with pytest.raises(ValueError, match="symmetric"):
        closed_form.fully_observed(np.arange(4.0).reshape(2, 2))
