"""The machinery of the completion experiments (penalties, span, adam_steps, each_factor): the grids, the principal
angles, the invariance the span experiment measures, the per-run summary, the Hoyer-square penalty, and the
collapse the penalty on each factor causes."""

import itertools

import diffrax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

import flows
from experiments import _completion as completion
from experiments import denominator, each_factor, span


def grid_key(config: dict) -> tuple:
    """(parameterization, penalty, strength, dynamics, override, seed): one run of the penalties grid."""
    override = ",".join(f"{k}={v:g}" for k, v in sorted(config.get("dynamics_override", {}).items()))
    return (
        config["parameterization"],
        config["penalty"],
        config["strength"],
        config["dynamics"],
        override,
        config["seed"],
    )


def each_key(config: dict) -> tuple:
    """(dynamics, delta, parameterization, penalty, strength, seed): one run of the each_factor grid."""
    return (
        config["dynamics"],
        config.get("delta", completion.RATIO["delta"]),
        config["parameterization"],
        config["penalty"],
        config["strength"],
        config["seed"],
    )


def _orthonormal(rng, n, k):
    return np.linalg.qr(rng.standard_normal((n, k)))[0]


@pytest.mark.parametrize(
    "grids, quick",
    [
        (completion.GRIDS, True),
        (completion.GRIDS, False),
        (completion.ARORA_GRIDS, False),
        (completion.ARORA_MID_GRIDS, False),
        (completion.ARORA_FEW_GRIDS, False),
    ],
)
def test_the_grid_holds_every_contrast_the_claims_need_once(grids, quick):
    grid = grids[quick]
    configs = completion.cells(grid)
    keys = [grid_key(c) for c in configs]
    assert len(keys) == len(set(keys)), "a run is declared twice"
    cells = {k[:4] for k in keys}
    for strength in grid.strengths:  # claims 1, 2 and 7 (Hoyer): the strength sweep under both dynamics
        for penalty, dynamics in itertools.product(("ratio", "Hoyer-square"), ("gradient flow", "Adam")):
            assert ("depth 1", penalty, strength, dynamics) in cells
    for strength, dynamics in itertools.product(grid.nuclear_strengths or grid.strengths, ("gradient flow", "Adam")):
        assert ("depth 1", "nuclear", strength, dynamics) in cells
    for dynamics in ("gradient flow", "Adam", *grid.others):  # claim 3: the dynamics with the ratio at one strength
        assert ("depth 1", "ratio", grid.strength, dynamics) in cells
    assert set(grid.others) <= set(completion.DYNAMICS)
    if grids is completion.GRIDS:
        assert {"gradient flow", "Adam", *grid.others} == set(completion.DYNAMICS)
    for param, dynamics in itertools.product(("UV^T", "depth 3"), ("gradient flow", "Adam")):  # claim 6
        assert (param, "none", None, dynamics) in cells
    assert (("UV^T", "ratio", grid.strength, "Adam") in cells) == grid.factored_penalties
    assert all(sum(k[:4] == cell for k in keys) == grid.seeds for cell in cells)
    if not quick:
        assert max(grid.strengths) / min(grid.strengths) >= 1e3  # the three decades
    # Every cell builds what it says; so does the penalty on each factor (its runs were cut: see `cells`).
    flow, state0 = completion.build(
        {
            **configs[0],
            "parameterization": "depth 3",
            "penalty": "ratio on each factor",
            "strength": 1.0,
            "dynamics": "Adam",
        }
    )
    assert isinstance(flow.parameterization, flows.Deep) and isinstance(flow.penalty, flows.EachFactor)
    flow, state0 = completion.build(configs[0])
    p = completion.problem(configs[0])
    W0 = np.asarray(flow.product(state0))
    np.testing.assert_array_equal(W0[np.asarray(p.rows), np.asarray(p.cols)], np.asarray(p.y))
    assert np.count_nonzero(W0) == grid.m and float(flow.loss(state0)) == 0.0


def test_largest_angle_is_the_known_rotation_and_agrees_with_scipy():
    n = 6
    e = np.eye(n)
    for theta in (1e-9, 1e-4, 0.3, np.pi / 2):
        A = e[:, :2]
        B = np.column_stack([e[:, 0], np.cos(theta) * e[:, 1] + np.sin(theta) * e[:, 4]])
        assert span.largest_angle(A, B) == pytest.approx(theta, rel=1e-12, abs=1e-15)
    rng = np.random.default_rng(0)
    for _ in range(5):
        A, B = _orthonormal(rng, n, 3), _orthonormal(rng, n, 3)
        assert span.largest_angle(A, B) == pytest.approx(float(np.max(scipy.linalg.subspace_angles(A, B))), rel=1e-10)
    # A different basis of the same subspace: angle zero.
    A = _orthonormal(rng, n, 3)
    assert span.largest_angle(A, A @ _orthonormal(rng, 3, 3)) <= 1e-14


def test_top_subspace_angles_of_a_known_matrix():
    rng = np.random.default_rng(1)
    U, V = _orthonormal(rng, 7, 7), _orthonormal(rng, 5, 5)
    W = U[:, :5] @ np.diag([9.0, 5.0, 1.0, 0.5, 0.1]) @ V.T
    assert span.largest_angle(U[:, :2], span.top_subspace(W, 2, "left")) <= 1e-12
    assert span.largest_angle(V[:, :2], span.top_subspace(W, 2, "right")) <= 1e-12
    Ws = np.stack([W, W + 0.0, U[:, 2:4] @ V[:, :2].T])  # the last one's left top-2 space is orthogonal
    got = span.angles(Ws, W, 2)
    assert got["left"][0] <= 1e-12 and got["left"][2] == pytest.approx(np.pi / 2)


def test_the_pure_penalty_gradient_flow_keeps_the_singular_frame_and_the_adam_flow_turns_it():
    """The span experiment's derivation: W' = -grad R(W) keeps every singular vector; the Adam flow does not."""
    config = {"n": 8, "rank": 2, "m": 20, "seed": 0, "strength": 1.0}
    angle = {}
    for dynamics in ("gradient flow", "Adam"):
        flow, state0 = span.build_pure({**config, "dynamics": dynamics})
        traj = flows.solve(flow, state0, t1=3.0, ts=np.linspace(0.0, 3.0, 7), rtol=1e-10)
        W = np.asarray(traj.W)
        assert np.linalg.norm(W[-1] - W[0]) > 1e-2 * np.linalg.norm(W[0])  # the penalty did move W
        got = span.angles(W, W[0], config["rank"])
        angle[dynamics] = max(got["left"].max(), got["right"].max())
    # Tsit5 at rtol 1e-10 over ~30 steps: local errors not aligned with the frame add to < 1e-8.
    assert angle["gradient flow"] <= 1e-8
    assert angle["Adam"] >= 1e-2


def test_summary_reads_best_window_and_budget_from_a_curve():
    t = np.array([0.0, 1.0, 2.0, 4.0, 8.0, 16.0])
    error = np.array([0.8, 0.5, 0.05, 0.02, 0.3, 2.0])
    curve = {
        "t": t,
        "error": error,
        "erank": np.array([9.0, 7.0, 3.0, 2.0, 2.0, 1.5]),
        "mse": np.array([0.0, 1e-3, 2e-3, 1e-3, 0.1, 0.5]),
        "norm": np.ones(6),
        "ratio": np.ones(6),
    }
    row = completion.summary(curve, nuclear_error=0.1, budget=4.0)
    assert (row["best"], row["t_best"], row["end"]) == (0.02, 4.0, 2.0)
    assert (row["window_start"], row["window_end"]) == (2.0, 4.0)
    assert row["budget"] == pytest.approx(0.02) and row["mse_max_before_best"] == 2e-3
    assert np.isnan(completion.summary(curve, nuclear_error=0.01, budget=4.0)["window_start"])


def test_hoyer_square_is_the_squared_ratio_with_its_gradient():
    W = jnp.asarray(np.random.default_rng(2).standard_normal((6, 4)))
    hoyer, ratio = flows.HoyerSquare(eps=1e-10, delta=0.0), flows.Ratio(eps=1e-10, delta=0.0)
    U, s, Vt = np.linalg.svd(np.asarray(W), full_matrices=False)
    F, R = np.linalg.norm(s), s.sum() / np.linalg.norm(s)
    assert float(hoyer(W)) == pytest.approx(R**2, rel=1e-9)
    np.testing.assert_allclose(hoyer.grad(W), 2 * R * (U @ Vt / F - s.sum() * np.asarray(W) / F**3), atol=1e-9)
    assert float(hoyer(3.0 * W)) == pytest.approx(float(hoyer(W)), rel=1e-12)
    assert (
        flows.Flow.from_description(
            flows.completion(4, 6, 1),
            {"parameterization": {"name": "direct"}, "penalty": hoyer.describe(), "strength": 1.0},
        ).penalty.describe()
        == hoyer.describe()
    )
    np.testing.assert_allclose(float(ratio(W)) ** 2, float(hoyer(W)), rtol=1e-12)


@pytest.mark.parametrize("quick", [True, False])
def test_the_each_factor_grid_holds_both_placements_at_every_strength_dynamics_and_smoothing(quick):
    grid = completion.GRIDS[quick]
    configs = each_factor.configs(grid) + each_factor.configs(grid, "Adam") + each_factor.delta_configs(grid)
    keys = [each_key(c) for c in configs]
    assert len(keys) == len(set(keys))
    ratio_delta = completion.RATIO["delta"]
    for dynamics, param, seed in itertools.product(each_factor.DYNAMICS, ("UV^T", "depth 3"), range(grid.seeds)):
        for strength, placement in itertools.product(each_factor.STRENGTHS, each_factor.PLACEMENTS):
            assert (dynamics, ratio_delta, param, placement, strength, seed) in keys
            for delta in each_factor.DELTAS:  # the smoothing sweep: on each factor, gradient flow
                assert (("gradient flow", delta, param, placement, strength, seed) in keys) == (
                    placement == "ratio on each factor"
                )
                assert ("Adam", delta, param, placement, strength, seed) not in keys
        assert (dynamics, ratio_delta, param, "none", None, seed) in keys
    assert max(each_factor.STRENGTHS) / min(each_factor.STRENGTHS) >= 1e3
    assert 0.0 in each_factor.DELTAS and ratio_delta not in each_factor.DELTAS
    assert set(each_factor.DYNAMICS) <= set(completion.DYNAMICS)
    assert set(each_factor.PARAMETERIZATIONS) <= set(completion.PARAMETERIZATIONS)


def test_delta_reaches_the_ratio_on_each_factor_and_nothing_else():
    config = {**each_factor.configs(completion.GRIDS[True])[0], "parameterization": "depth 3", "strength": 1.0}
    flow, _ = completion.build({**config, "penalty": "ratio on each factor", "delta": 0.25})
    assert float(flow.penalty.penalty.delta) == 0.25
    flow, _ = completion.build({**config, "penalty": "ratio on each factor"})
    assert float(flow.penalty.penalty.delta) == completion.RATIO["delta"]
    with pytest.raises(ValueError, match="delta applies to the ratio"):
        completion.build({**config, "penalty": "nuclear", "delta": 0.25})


@pytest.mark.parametrize("delta", [0.0, 0.3, 1.0])
def test_the_ratio_shrinks_radially_as_derived_and_not_at_all_when_exact(delta):
    # each_factor's derivation: <grad R(W), W> = (delta^2 / s^2) sum_k sigma_k^2 / sqrt(sigma_k^2 + eps^2), the
    # sigma_k of W / s, s^2 = ||W||_F^2 + delta^2; zero at delta = 0 (R is invariant to scale).
    eps = 1e-3
    W = np.random.default_rng(3).standard_normal((7, 5)) * 0.2
    s = np.sqrt(np.sum(W**2) + delta**2)
    sigma = np.linalg.svd(W / s, compute_uv=False)
    expected = delta**2 / s**2 * np.sum(sigma**2 / np.sqrt(sigma**2 + eps**2))
    grad = np.asarray(flows.Ratio(eps=eps, delta=delta).grad(jnp.asarray(W)))
    radial = float(np.sum(grad * W))
    assert abs(radial - expected) <= 1e-12 * np.linalg.norm(grad) * np.linalg.norm(W), (radial, expected)
    if delta > 0:
        assert radial > 0.01 * np.linalg.norm(grad) * np.linalg.norm(W)  # a real shrinkage, not round-off


def test_the_ratio_on_each_factor_collapses_small_factors_and_on_the_product_or_exact_does_not():
    # Derived in experiments/each_factor.py: far below the smoothing delta = 1 the ratio on a factor is a nuclear
    # norm / delta, whose pull (order lambda) beats the data's (the other factors' product, ~1e-6 here), so W -> 0;
    # on the product the penalty's pull carries the same small factors as the data's. lambda = 1, t = 1.
    grid = completion.GRIDS[True]
    config = {**each_factor.configs(grid)[0], "parameterization": "depth 3", "strength": 1.0}
    # With the exact ratio (delta = 0) on each factor the penalty cannot shrink a factor (its gradient is orthogonal
    # to it), and the same run does not collapse.
    norms = {}
    for placement, delta in [*((p, None) for p in each_factor.PLACEMENTS), ("ratio on each factor", 0.0)]:
        flow, state0 = completion.build({**config, "penalty": placement, **({} if delta is None else {"delta": delta})})
        traj = flows.solve(
            flow,
            state0,
            t1=1.0,
            ts=np.array([0.0, 1.0]),
            rtol=completion.RTOL,
            atol=each_factor.ATOL,
            solver=diffrax.Tsit5(),
        )
        norms[placement, delta] = np.linalg.norm(traj.W, axis=(1, 2))
    on_product, on_each, on_each_exact = (
        norms["ratio", None],
        norms["ratio on each factor", None],
        norms["ratio on each factor", 0.0],
    )
    assert on_each[-1] < 1e-8 * on_each[0], on_each
    assert on_product[-1] > 0.5 * on_product[0], on_product
    assert on_each_exact[-1] > 0.5 * on_each_exact[0], on_each_exact


@pytest.mark.parametrize("quick", [True, False])
def test_the_denominator_runs_are_the_penalties_grids_own_cells(quick):
    # Claim 3 at n = 100: the RMSProp and momentum flows with the ratio, as the penalties grids declare them (the
    # RMSProp runs share their keys); the Arora grid cuts momentum, which is what this experiment adds.
    grid = denominator.GRIDS[quick]
    configs = [c for d in denominator.DYNAMICS for c in denominator.configs(grid, d)]
    cells = completion.cells(grid)
    assert {c["dynamics"] for c in configs} == {"RMSProp", "momentum"}
    assert len(configs) == 2 * grid.seeds
    for c in configs:
        assert (c in cells) == (quick or c["dynamics"] == "RMSProp"), c
        assert completion.horizon(grid, c) == (grid.slow if c["dynamics"] == "momentum" else grid.fast)


def test_claim_three_reads_the_budget_and_the_flow_limit():
    def rows(best, budget):
        return [{"best": best, "budget": budget}] * 3

    fast_and_good, slow = rows(1e-3, 1e-3), rows(1e-1, 1.0)
    assert completion.verdict_three(fast_and_good, slow) == "holds"
    assert completion.verdict_three(rows(1e-3, 1e-3), rows(1.5e-3, 1.0)) == "holds on a fixed time budget only"
    assert completion.verdict_three(rows(1e-3, 1e-3), rows(1.5e-3, 1.5e-3)) == "fails"
    assert completion.verdict_three(slow, fast_and_good) == "fails"
