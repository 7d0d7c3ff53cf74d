"""The small-initialization limit against convex references, and the KKT certificate."""

import numpy as np
import pytest

import flows
from analysis import references, small_init

# Six decades. W_inf(alpha) is reached with the two-leg run of small_init.converge (Tsit5 to loss 1e-6,
# then Kvaerno5 to t = 1e8 at rtol 1e-8); its last-decade change is asserted tiny below, so the
# distances are those of the limit, not of a run stopped early.
ALPHAS = np.array([1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7])


def at(sweep, alpha):
    return int(np.flatnonzero(sweep.alphas == alpha)[0])


@pytest.fixture(scope="module")
def commuting_sweep():
    problem = flows.commuting(n=12, m=5, rank=2, seed=0)
    refs = {"nuclear": references.min_nuclear_psd(problem), "lp": references.commuting_lp(problem)}
    return small_init.sweep(flows.Symmetric(problem), ALPHAS, refs)


def test_runs_reach_their_limit(commuting_sweep):
    for run in commuting_sweep.runs:
        assert run.last_decade_change < 1e-10
        assert run.loss < 1e-20


def test_references_agree(commuting_sweep):
    """The SDP (Clarabel) and the LP in the common eigenbasis (HiGHS) are two solutions of one problem."""
    nuclear, lp = commuting_sweep.references["nuclear"], commuting_sweep.references["lp"]
    assert nuclear.objective == pytest.approx(lp.objective, rel=1e-8)
    assert lp.distance(nuclear.X) < 1e-6
    assert nuclear.feasibility < 1e-8 and lp.feasibility < 1e-12


@pytest.mark.parametrize("name", ["nuclear", "lp"])
def test_commuting_limit_is_min_trace(commuting_sweep, name):
    distances = commuting_sweep.distances[name]
    assert commuting_sweep.monotone(name), distances
    assert distances[at(commuting_sweep, 1e-6)] <= 1e-4
    assert commuting_sweep.rates[name] > 0.5  # a power of alpha, not a logarithmic crawl


def test_commuting_certificate_residuals_vanish(commuting_sweep):
    """Residuals of nu = -4 s / log(1/alpha^2) fall with alpha (like 1/log(1/alpha), see small_init)."""
    certs = commuting_sweep.certificates
    complementarity = np.array([c.complementarity for c in certs])
    gap = np.array([c.gap for c in certs])
    assert np.all(np.diff(complementarity) < 0) and np.all(np.diff(gap) < 0)
    assert all(c.dual <= 1e-12 for c in certs)  # W's eigenvalues are below 1 here: sum nu_i A_i <= I holds
    # The 1/log(1/alpha) law: complementarity * log(1/alpha^2) stays within a factor 2 over six decades.
    scaled = complementarity * np.log(1.0 / ALPHAS**2)
    assert scaled.max() / scaled.min() < 2.0


def test_sensing_limit_is_min_nuclear():
    problem = flows.sensing(n=10, m=30, rank=2, seed=0)
    nuclear = references.min_nuclear_psd(problem)
    alphas = np.array([1e-1, 1e-3, 1e-5, 1e-6, 1e-7])
    sweep = small_init.sweep(flows.Symmetric(problem), alphas, {"nuclear": nuclear}, exponent=None)
    assert sweep.monotone("nuclear"), sweep.distances["nuclear"]
    assert sweep.distances["nuclear"][at(sweep, 1e-6)] <= 1e-4


@pytest.fixture(scope="module")
def direct_problem():
    return flows.sensing(n=8, m=20, rank=2, seed=0)


def test_direct_flow_from_zero_is_min_frobenius(direct_problem):
    flow = flows.Direct(direct_problem)
    traj = flows.solve(flow, flow.init(kind="zero"), t1=200.0, ts=np.array([0.0, 200.0]), rtol=1e-10, atol=1e-14)
    assert references.min_frobenius(direct_problem).distance(traj.W[-1]) <= 1e-8


def test_direct_flow_limit_is_linear_in_alpha(direct_problem):
    """From alpha I the direct flow lands at X_F + alpha P_null(I): distance exactly proportional to alpha."""
    sweep = small_init.sweep(flows.Direct(direct_problem), ALPHAS, {"frobenius": references.min_frobenius(direct_problem)},
                             exponent=None, t1=200.0, tail_solver=flows.solver_by_name("tsit5"))
    assert sweep.rates["frobenius"] == pytest.approx(1.0, abs=1e-6)


def test_sweep_rejects_bad_alphas(direct_problem):
    with pytest.raises(ValueError, match="alphas"):
        small_init.sweep(flows.Direct(direct_problem), [1e-3, 1e-2], {})


@pytest.mark.slow
def test_sensing_paper_size():
    """The issue's setting: Gaussian sensing n = 30, rank 2, m = 180, alpha over six decades."""
    problem = flows.sensing(n=30, m=180, rank=2, seed=0)
    nuclear = references.min_nuclear_psd(problem)
    sweep = small_init.sweep(flows.Symmetric(problem), ALPHAS, {"nuclear": nuclear})
    print({"alphas": ALPHAS.tolist(), "distances": sweep.distances["nuclear"].tolist(), "rate": sweep.rates["nuclear"],
           "runs": [r.describe() for r in sweep.runs], "certificates": [(c.dual, c.complementarity, c.gap) for c in sweep.certificates]})
    assert sweep.monotone("nuclear"), sweep.distances["nuclear"]
    assert sweep.distances["nuclear"][at(sweep, 1e-6)] <= 1e-4
