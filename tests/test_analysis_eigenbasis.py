"""The reference eigenbasis (the claim along the flow is a row of analysis.checks.eigenbasis_checks)."""

import numpy as np
import pytest

import flows
from analysis import eigenbasis


def test_reference_basis_needs_symmetric_measurements():
    with pytest.raises(ValueError, match="symmetric"):
        eigenbasis.reference_basis(flows.sensing(n=4, m=3, rank=1, symmetric=False))
    problem = flows.commuting(n=4, m=3, rank=1)
    np.testing.assert_array_equal(eigenbasis.reference_basis(problem), np.asarray(problem.basis))
