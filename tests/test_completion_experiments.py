"""The machinery of the completion experiments: the validation protocol (split, choice, paired verdicts), the runs
each experiment declares, the principal angles and the invariance the span experiment measures, the Hoyer-square
penalty, and the collapse the ratio on each factor causes."""

import warnings

import diffrax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.linalg

import flows
from experiments import _completion, _protocol, completion, span, steps


def _orthonormal(rng, n, k):
    return np.linalg.qr(rng.standard_normal((n, k)))[0]


# -- the protocol -------------------------------------------------------------------------------------------------


def test_the_split_holds_out_extra_entries_disjoint_from_training_and_the_same_for_every_method():
    config = {"n": 12, "m": 40, "rank": 2, "seed": 3, "held out": 0.15}
    parts = _completion.observations(config)
    assert parts.train.m == 40 and len(parts.rows) == _protocol.held_out(40) == 6
    train = set(zip(np.asarray(parts.train.rows).tolist(), np.asarray(parts.train.cols).tolist()))
    assert train.isdisjoint(zip(parts.rows.tolist(), parts.cols.tolist()))
    np.testing.assert_array_equal(parts.train.truth, _completion.problem(config).truth)
    np.testing.assert_array_equal(parts.values, np.asarray(parts.train.truth)[parts.rows, parts.cols])
    again = _completion.observations(config)  # seeded: every method of a seed gets the same split
    np.testing.assert_array_equal(again.rows, parts.rows)
    assert _completion.observations({**config, "seed": 4}).rows.tolist() != parts.rows.tolist()
    # A run built with the split trains on the training entries only.
    flow, _ = _completion.build(
        {**config, "parameterization": "depth 1", "penalty": "ratio", "strength": 1.0, "dynamics": "Adam"}
    )
    assert flow.problem.m == 40
    W = np.asarray(parts.train.truth)
    assert parts.validation_error(W) == 0.0 and parts.unobserved().sum() == 144 - 40


def test_choose_reads_the_validation_minimum_over_runs_and_times_and_flags_the_horizon():
    t = np.array([0.0, 1.0, 2.0, 3.0])
    a = {"t": t, "validation": np.array([5.0, 2.0, 3.0, 4.0]), "test": np.array([9.0, 0.5, 0.1, 0.2])}
    b = {"t": t, "validation": np.array([5.0, 4.0, 3.0, 1.0]), "test": np.array([9.0, 0.7, 0.6, 0.3])}
    choice = _protocol.choose([a, b])
    assert (choice.index, choice.t, choice.test, choice.at_horizon) == (1, 3.0, 0.3, True)
    assert choice.oracle == 0.1  # the oracle is reported, not chosen
    first = _protocol.choose([a])
    assert (first.t, first.test, first.at_horizon) == (1.0, 0.5, False)
    # The oracle ignores a candidate whose test errors are all undefined, wherever it stands.
    spoiled = {"t": t, "validation": np.full(4, 9.0), "test": np.full(4, np.nan)}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # quietly: an undefined error is not a numerical accident
        assert _protocol.choose([spoiled, a]).oracle == _protocol.choose([a, spoiled]).oracle == 0.1
        assert np.isnan(_protocol.choose([spoiled]).oracle)


@pytest.mark.parametrize(
    "ratios, verdict",
    [
        ([0.1, 0.12, 0.09, 0.11, 0.1, 0.1], "lower"),  # better by ~10x in every seed
        ([10.0, 8.0, 12.0, 9.0, 11.0, 10.0], "higher"),
        ([1.1, 0.9, 1.0, 1.05, 0.95, 1.0], "the same"),
        ([0.05, 20.0, 0.05, 20.0, 0.05, 20.0], "not resolved"),  # the seeds disagree
    ],
)
def test_the_paired_verdict_follows_its_declared_rule(ratios, verdict):
    b = np.array([0.2, 0.1, 0.3, 0.25, 0.15, 0.2])
    p = _protocol.Paired.of(np.array(ratios) * b, b)
    assert p.verdict == verdict
    np.testing.assert_allclose(p.d, np.log10(ratios))
    assert p.low <= p.mean <= p.high
    assert p.wins == sum(r < 1 for r in ratios)
    # Exact two-sided sign test: all 6 wins has p = 2/64.
    if verdict == "lower":
        assert p.p == pytest.approx(2 / 64)
    # The interval is Student's t over the seeds.
    d = np.log10(ratios)
    half = scipy.stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))
    assert (p.low, p.high) == pytest.approx((d.mean() - half, d.mean() + half))
    # Too few seeds resolve nothing, however far apart, and have no interval.
    few = _protocol.Paired.of(np.array([0.01, 0.01]), np.array([1.0, 1.0]))
    assert few.verdict == "not resolved" and few.factor.endswith("[too few seeds]")
    with pytest.raises(ValueError, match="paired"):
        _protocol.Paired.of(b, b[:3])
    # Over the seeds both sides have: a NaN on either side leaves that seed out; none in common, no comparison.
    a = np.array(ratios) * b
    holes = _protocol.Paired.over_common(
        np.where([1, 0, 1, 1, 1, 1], a, np.nan), np.where([1, 1, 1, 0, 1, 1], b, np.nan)
    )
    assert holes is not None
    np.testing.assert_allclose(holes.d, np.log10(np.array(ratios)[[0, 2, 4, 5]]))
    assert _protocol.Paired.over_common(np.array([np.nan, 1.0]), np.array([1.0, np.nan])) is None


@pytest.mark.parametrize("name", ["completion", "completion_arora"])
@pytest.mark.parametrize("quick", [True, False])
def test_every_method_of_the_completion_experiments_has_every_strength_and_seed(name, quick):
    setting = completion.SETTINGS[name][quick]
    configs = completion.configs(setting)
    keys = [tuple(sorted(c.items(), key=str)) for c in configs]
    assert len(keys) == len(set(keys)), "a run is declared twice"
    for seed in range(setting.scale.seeds):
        runs = [c for c in configs if c["seed"] == seed]
        for d in setting.dynamics:  # the same strength grid for every dynamics
            assert sorted(c["strength"] for c in runs if (c["penalty"], c["dynamics"]) == ("ratio", d)) == sorted(
                setting.scale.strengths
            )
        for method, member in completion.METHODS.items():
            ran = setting.dynamics if method.startswith("ratio") else setting.baselines
            if "," in method and method.split(", ")[-1] not in ran:
                continue  # a flow this scale leaves out
            assert any(member(c) for c in runs), method
    assert all(c["held out"] == _protocol.VALIDATION for c in configs)
    # One horizon rule: by dynamics only, whatever the penalty.
    for c in configs:
        expected = setting.scale.slow if c["dynamics"] in ("gradient flow", "momentum") else setting.scale.fast
        assert setting.scale.options(c)["t1"] == expected


def test_the_practitioners_methods_are_the_flows_discrete_counterparts_with_fixed_betas():
    """Adam at step eta with a = 0.1 / eta, b = 0.001 / eta is optax.adam(eta, b1 = 0.9, b2 = 0.999): one step of each
    from the same point agrees."""
    rng = np.random.default_rng(0)
    theta, g = jnp.asarray(rng.standard_normal(5)), jnp.asarray(rng.standard_normal(5))
    for eta in (0.1, 0.003):
        description = steps.practitioner("Adam", eta)
        ours = flows.Adam(a=description["a"], b=description["b"], eps=description["eps"]).optimizer(jnp.asarray(eta))
        reference = optax.adam(eta, b1=steps.BETA1, b2=steps.BETA2, eps=description["eps"])
        u1, _ = ours.update(g, ours.init(theta), theta)
        u2, _ = reference.update(g, reference.init(theta), theta)
        np.testing.assert_allclose(u1, u2, rtol=1e-12)
    assert steps.practitioner("momentum", 0.5)["a"] * 0.5 == pytest.approx(1 - steps.BETA1)


# -- span ---------------------------------------------------------------------------------------------------------


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


# -- penalties -------------------------------------------------------------------------------------------------


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
    # Far below the smoothing delta = 1 the ratio on a factor is a nuclear norm / delta, whose pull (order lambda)
    # beats the data's (the other factors' product, ~1e-6 here), so W -> 0; on the product the penalty's pull carries
    # the same small factors as the data's; with the exact ratio (delta = 0) the penalty cannot shrink a factor (its
    # gradient is orthogonal to it). lambda = 1, t = 1, depth 3 from Gaussian factors of scale 1e-3^(1/3).
    problem = _completion.problem({"n": 15, "m": 70, "rank": 2, "seed": 0})
    ratio = dict(_completion.RATIO)
    penalties = {
        "product": flows.Ratio(**ratio),
        "each": flows.EachFactor(flows.Ratio(**ratio)),
        "each, exact": flows.EachFactor(flows.Ratio(eps=ratio["eps"], delta=0.0)),
    }
    norms = {}
    for name, penalty in penalties.items():
        flow = flows.Flow(problem, flows.Deep(depth=3), penalty=penalty, strength=1.0)
        state0 = _completion.factor_init(flow, _completion.INIT, 3, 0)
        traj = flows.solve(flow, state0, t1=1.0, ts=np.array([0.0, 1.0]), rtol=1e-6, atol=1e-10, solver=diffrax.Tsit5())
        norms[name] = np.linalg.norm(traj.W, axis=(1, 2))
    assert norms["each"][-1] < 1e-8 * norms["each"][0], norms
    assert norms["product"][-1] > 0.5 * norms["product"][0], norms
    assert norms["each, exact"][-1] > 0.5 * norms["each, exact"][0], norms


def test_lag_gap_is_the_largest_relative_gap_at_common_saved_times():
    # Pairs by strength and seed, ratio runs at depth 1 only; compared at the saved times both runs hold.
    import pandas as pd

    def row(dynamics, strength, seed, t, test, penalty="ratio"):
        return dict(
            dynamics=dynamics,
            strength=strength,
            seed=seed,
            t=np.asarray(t),
            test=np.asarray(test),
            penalty=penalty,
            parameterization="depth 1",
        )

    rows = [
        row("gradient flow", 1.0, 0, [0.0, 1.0, 2.0], [1.0, 0.5, 0.25]),
        row("momentum", 1.0, 0, [0.0, 1.0, 2.0, 3.0], [1.0, 0.52, 0.25, 9.0]),  # 4 % at t = 1; t = 3 unpaired
        row("gradient flow", 3.0, 1, [0.0, 1.0], [1.0, 0.1]),
        row("momentum", 3.0, 1, [0.0, 1.0], [1.0, 0.099]),  # 1 %
        row("momentum", 3.0, 2, [0.0, 1.0], [1.0, 5.0]),  # no gradient-flow partner
        row("gradient flow", 1.0, 0, [0.0], [1.0], penalty="nuclear"),
    ]
    assert completion.lag_gap(pd.DataFrame(rows)) == "4"
    assert completion.lag_gap(pd.DataFrame(rows[2:3] + rows[4:])) == "n/a"


@pytest.mark.parametrize("end", [0.4996, 0.5004, 0.498, 1.996, 2.004, 2.03])
def test_an_interval_end_beside_the_band_never_prints_as_its_edge(end):
    # The verdict turns on which side of 1 / SAME or SAME an end lies: an end off the edge must not print as it.
    edges = {_protocol.SAME, 1 / _protocol.SAME}
    text = _protocol.beside_band(end)
    assert all(text != _protocol.beside_band(edge) for edge in edges)
    assert float(text.removeprefix("\\ensuremath{").removesuffix("}")) == pytest.approx(end, rel=5e-4)
    assert _protocol.beside_band(0.013) == "\\ensuremath{0.013}"  # far from the band: two digits, as everywhere
