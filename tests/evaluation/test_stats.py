"""Bootstrap intervals and paired differences, checked against exact enumeration and hand computations."""

from __future__ import annotations

import itertools
from collections import Counter
from fractions import Fraction

import numpy as np
import pytest

from dreamrelation.evaluation.report import bootstrap_ci, bootstrap_means, paired_bootstrap


def exact_two_level(cells: dict[str, list[float]]) -> dict[Fraction, Fraction]:
    """Exact distribution of the two-level bootstrap mean by enumerating every resample.

    ``cells``: outer unit -> its inner units' values (one video each). Written independently of the
    vectorised implementation: plain loops over ``itertools.product`` with exact fractions.
    """
    outers = list(cells)
    dist: Counter[Fraction] = Counter()
    outer_p = Fraction(1, len(outers) ** len(outers))
    for drawn in itertools.product(outers, repeat=len(outers)):
        inner_draws = [list(itertools.product(cells[o], repeat=len(cells[o]))) for o in drawn]
        inner_p = Fraction(1, int(np.prod([len(d) for d in inner_draws])))
        for combo in itertools.product(*inner_draws):
            values = [Fraction(v).limit_denominator(1000) for part in combo for v in part]
            dist[sum(values) / len(values)] += outer_p * inner_p
    return dict(dist)


def exact_quantile(dist: dict[Fraction, Fraction], q: float) -> float:
    """Smallest atom whose CDF reaches ``q`` (asserting the CDF is not within 0.003 of ``q`` anywhere)."""
    cdf = Fraction(0)
    for x in sorted(dist):
        cdf += dist[x]
        assert abs(float(cdf) - q) > 0.003, "ambiguous quantile: choose other values"
        if cdf >= q:
            return float(x)
    raise AssertionError("unreachable")


def test_one_level_hand_computation():
    # two clusters with differences 0 and 1: resample means 0 (p 1/4), 0.5 (p 1/2), 1 (p 1/4)
    result = paired_bootstrap([1.0, 1.0], [1.0, 0.0], clusters=["p1", "p2"], n_boot=20000)
    assert result.diff == 0.5
    assert (result.low, result.high, result.significant) == (0.0, 1.0, False)
    reps = bootstrap_means([0.0, 1.0], clusters=["p1", "p2"], n_boot=20000)
    freq = {v: np.mean(reps == v) for v in (0.0, 0.5, 1.0)}
    assert freq[0.0] == pytest.approx(0.25, abs=0.015) and freq[0.5] == pytest.approx(0.5, abs=0.015)


def test_two_level_matches_exact_enumeration():
    # outer = training seed, inner = prompt; seed "s3" has one prompt, the others two (unequal sizes)
    cells = {"s1": [0.9, 0.2], "s2": [-0.4, 0.1], "s3": [0.3]}
    a, b, clusters = [], [], []
    for seed, values in cells.items():
        for j, v in enumerate(values):
            a.append(v + 0.25)  # b is 0.25 everywhere: differences are the cell values
            b.append(0.25)
            clusters.append((seed, f"prompt{j}"))
    n_boot = 200_000
    reps = bootstrap_means(np.subtract(a, b), clusters, n_boot=n_boot, seed=3)
    dist = exact_two_level(cells)
    for atom, p in dist.items():
        observed = np.mean(np.isclose(reps, float(atom)))
        assert observed == pytest.approx(float(p), abs=4 * np.sqrt(float(p) * (1 - float(p)) / n_boot) + 1e-4)
    result = paired_bootstrap(a, b, clusters, n_boot=n_boot, seed=3)
    assert result.diff == pytest.approx(np.mean([v for vs in cells.values() for v in vs]))
    assert result.low == pytest.approx(exact_quantile(dist, 0.025), abs=1e-9)
    assert result.high == pytest.approx(exact_quantile(dist, 0.975), abs=1e-9)


def test_one_level_variance_is_the_plug_in_formula():
    # equal-size clusters: Var*(mean) = (1/n) * mean((c_i - mean c)^2) of the cluster means c_i
    rng = np.random.default_rng(1)
    cluster_values = rng.random((12, 4))
    values = cluster_values.reshape(-1)
    clusters = np.repeat(np.arange(12), 4).tolist()
    reps = bootstrap_means(values, clusters, n_boot=40000, seed=0)
    c = cluster_values.mean(axis=1)
    assert reps.mean() == pytest.approx(values.mean(), abs=3e-3)
    assert reps.var() == pytest.approx(np.mean((c - c.mean()) ** 2) / 12, rel=0.05)


def test_identical_inputs_and_constant_shift():
    rng = np.random.default_rng(2)
    a = rng.random(40)
    clusters = [(s, p) for s in range(2) for p in range(20)]
    assert tuple(paired_bootstrap(a, a, clusters, n_boot=500)) == (0.0, 0.0, 0.0, False)
    shifted = paired_bootstrap(a + 0.125, a, clusters, n_boot=500)
    assert (shifted.diff, shifted.low, shifted.high) == pytest.approx((0.125, 0.125, 0.125), abs=1e-12)
    assert shifted.significant


def test_strata_are_not_resampled():
    # two relations with constant but different differences: resampling within strata keeps the mean fixed
    a = [1.0] * 4 + [0.0] * 4
    strata = ["r1"] * 4 + ["r2"] * 4
    clusters = [(0, p) for p in range(4)] * 2
    result = paired_bootstrap(a, [0.0] * 8, clusters, n_boot=500, strata=strata)
    assert (result.diff, result.low, result.high) == (0.5, 0.5, 0.5)
    pooled = paired_bootstrap(a, [0.0] * 8, [(0, p) for p in range(8)], n_boot=2000)
    assert pooled.low < 0.5 < pooled.high  # without strata the relation mix varies


def test_deterministic_and_validated():
    a, b = [0.1, 0.7, 0.3, 0.9], [0.2, 0.1, 0.3, 0.4]
    assert paired_bootstrap(a, b, n_boot=300, seed=5) == paired_bootstrap(a, b, n_boot=300, seed=5)
    with pytest.raises(ValueError):
        paired_bootstrap(a, b[:3])
    with pytest.raises(ValueError):
        paired_bootstrap(a, b, clusters=[0, 1])
    # one cluster: a point-mass bootstrap must not be called significant
    single = paired_bootstrap(a, b, clusters=[("s", "p")] * 4)
    assert single.diff == pytest.approx(0.25) and np.isnan(single.low) and not single.significant


def test_bootstrap_ci_stays_in_the_data_range():
    values = [0.0] * 29 + [0.9]  # a t-interval would go below 0
    mean, low, high = bootstrap_ci(values, n_boot=4000)
    assert mean == pytest.approx(0.03)
    assert low == 0.0 and 0.03 < high <= 0.9
    assert bootstrap_ci([np.nan]) == pytest.approx((np.nan,) * 3, nan_ok=True)


def test_summarise_wilson_for_binary_and_bootstrap_in_range():
    from dreamrelation.evaluation.report import wilson_interval
    from dreamrelation.evaluation.toy_study import summarise

    # 1 hit of 12 and a bounded score with one large value: the old t-interval went below 0 for both
    scores = [
        {
            "relation_correct": i == 0,
            "appearance": 1.0,
            "leakage": 0.9 if i == 0 else 0.0,
            "temporal_consistency": 0.95,
        }
        for i in range(12)
    ]
    row = summarise(scores)
    assert row["n"] == 12 and row["relation_correct"] == pytest.approx(1 / 12)
    # Wilson by hand: centre (p + z^2/2n) / (1 + z^2/n), half z sqrt(p(1-p)/n + z^2/4n^2) / (1 + z^2/n)
    z, n, p = 1.96, 12, 1 / 12
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert row["relation_correct_ci95"] == pytest.approx([centre - half, centre + half])
    assert tuple(row["relation_correct_ci95"]) == pytest.approx(wilson_interval(1, 12))
    low, high = row["leakage_ci95"]
    assert low == 0.0 and 0.0 < row["leakage"] < high <= 0.9
    assert row["appearance_ci95"] == [1.0, 1.0]


def test_format_interval():
    from dreamrelation.evaluation.report import format_interval

    assert format_interval(0.41234, [0.351, 0.47]) == "0.412 [0.35, 0.47]"
    assert format_interval(0.125, [-0.04, 0.29], signed=True) == "+0.125 [-0.04, +0.29]"
    assert format_interval(0.1, [None, None]) == "0.100"
    assert format_interval(-0.1, [float("nan"), 0.0], signed=True) == "-0.100"
