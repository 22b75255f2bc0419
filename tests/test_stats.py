"""Tests of asd_core.ground.stats on hand-made cases, synthetic evaluation tables and properties."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sps

from asd_core.analysis.summaries import curve_summary, deepest_stage, headline, summarise
from asd_core.ground.errors import AsdError
from asd_core.ground.frontier import (
    cost_at_quality,
    envelope_quality,
    normalised_area,
    oracle_gap,
    pareto_front,
    pooled_envelope,
    saving_share,
    smallest_matching_lambda,
    upper_hull,
)
from asd_core.ground.stats import (
    bootstrap_ci,
    holm,
    mcnemar_test,
    mean,
    quality_retention,
    ratio_of_means,
    speedup,
    wilcoxon_test,
)


@pytest.fixture
def no_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def one_line_error(excinfo: pytest.ExceptionInfo[AsdError]) -> str:
    message = str(excinfo.value)
    assert "\n" not in message and message
    return message


# ---------------------------------------------------------------- bootstrap CIs


def test_ci_contains_estimate_and_shrinks_with_n():
    rng = np.random.default_rng(1)
    widths = []
    for n in (40, 400, 4000):
        x = rng.normal(3.0, 2.0, size=n)
        ci = bootstrap_ci(mean, x, n_resamples=1000, seed=0)
        assert ci.estimate == pytest.approx(x.mean())
        assert ci.low < ci.estimate < ci.high
        assert ci.method == "BCa" and ci.confidence == 0.95
        widths.append(ci.high - ci.low)
    # Width scales like 1/sqrt(n): each tenfold n shrinks it about 3.2 times.
    assert widths[0] / widths[1] == pytest.approx(math.sqrt(10), rel=0.35)
    assert widths[1] / widths[2] == pytest.approx(math.sqrt(10), rel=0.35)


def test_ci_coverage_is_near_nominal():
    rng = np.random.default_rng(7)
    hits = 0
    reps = 120
    for _ in range(reps):
        x = rng.exponential(1.0, size=60)  # skewed, true mean 1
        hits += bootstrap_ci(mean, x, n_resamples=500, seed=rng).contains(1.0)
    assert 0.85 <= hits / reps <= 1.0


def test_ci_reproducible_and_confidence_widens():
    x = np.random.default_rng(0).normal(size=100)
    a = bootstrap_ci(mean, x, seed=3, n_resamples=500)
    assert a == bootstrap_ci(mean, x, seed=3, n_resamples=500)
    wide = bootstrap_ci(mean, x, seed=3, n_resamples=500, confidence=0.99)
    assert wide.low < a.low and wide.high > a.high


def test_ci_non_vectorised_statistic_works():
    x = np.random.default_rng(0).normal(size=30)
    ci = bootstrap_ci(lambda s: float(np.median(s)), x, n_resamples=200)
    assert ci.estimate == pytest.approx(np.median(x))
    assert ci.low <= ci.estimate <= ci.high


def test_ci_constant_data_falls_back_to_percentile(no_warnings):
    ci = bootstrap_ci(mean, np.ones(20), n_resamples=300)
    assert ci.method == "percentile"
    assert ci.low == 1.0 and ci.high == 1.0 and ci.estimate == 1.0
    # Rounding makes resampled means of 0.7 differ in the last bit; either way the CI is a point.
    ci = bootstrap_ci(mean, np.full(20, 0.7), n_resamples=300)
    assert ci.low == pytest.approx(0.7) and ci.high == pytest.approx(0.7)


def test_ci_single_input_has_no_interval(no_warnings):
    ci = bootstrap_ci(mean, [2.5])
    assert ci.estimate == 2.5 and ci.method == "none"
    assert math.isnan(ci.low) and math.isnan(ci.high)
    assert not ci.contains(2.5)


def test_ci_undefined_statistic_gives_nan_bounds(no_warnings):
    num = np.zeros(30)
    num[0] = 1.0
    den = np.zeros(30)
    den[:2] = 1.0  # many resamples draw neither of the two non-zero denominators
    ci = bootstrap_ci(ratio_of_means, num, den, n_resamples=500)
    assert ci.method == "undefined" and ci.estimate == pytest.approx(0.5)
    assert math.isnan(ci.low) and math.isnan(ci.high)
    zero = bootstrap_ci(ratio_of_means, np.ones(5), np.zeros(5))
    assert zero.method == "undefined" and math.isinf(zero.estimate)


@pytest.mark.parametrize(
    "samples, kwargs",
    [
        ((), {}),
        (([],), {}),
        (([1.0, np.nan],), {}),
        (([1.0, 2.0], [1.0]), {"paired": True}),
        (([[1.0, 2.0]],), {}),
        (([1.0, 2.0],), {"confidence": 1.0}),
        (([1.0, 2.0],), {"n_resamples": 0}),
    ],
)
def test_ci_bad_input_raises_one_line(samples, kwargs):
    with pytest.raises(AsdError) as excinfo:
        bootstrap_ci(mean, *samples, **kwargs)
    one_line_error(excinfo)


def test_speedup_and_retention():
    rng = np.random.default_rng(2)
    ref_cost = rng.uniform(1.0, 3.0, size=200)
    exact = speedup(ref_cost / 2.0, ref_cost, n_resamples=300)
    assert exact.estimate == pytest.approx(2.0)
    assert exact.low == pytest.approx(2.0) and exact.high == pytest.approx(2.0)

    cost = ref_cost * rng.uniform(0.3, 0.7, size=200)
    s = speedup(cost, ref_cost, n_resamples=500)
    assert s.estimate == pytest.approx(ref_cost.mean() / cost.mean())
    assert 1.0 < s.low < s.estimate < s.high
    # Pairing matters: costs correlated across methods make the paired CI much narrower.
    unpaired = bootstrap_ci(ratio_of_means, ref_cost, cost, paired=False, n_resamples=500)
    assert s.high - s.low < 0.5 * (unpaired.high - unpaired.low)

    ref_q = (rng.uniform(size=200) < 0.8).astype(float)
    q = ref_q * (rng.uniform(size=200) < 0.9)
    r = quality_retention(q, ref_q, n_resamples=500)
    assert r.estimate == pytest.approx(q.mean() / ref_q.mean())
    assert r.low < r.estimate <= r.high <= 1.0


# ---------------------------------------------------------------- paired tests


def table_pairs(both: int, only_method: int, only_ref: int, neither: int):
    m = [1] * both + [1] * only_method + [0] * only_ref + [0] * neither
    r = [1] * both + [0] * only_method + [1] * only_ref + [0] * neither
    return np.array(m, float), np.array(r, float)


def test_mcnemar_exact_small_and_chi2_large():
    res = mcnemar_test(*table_pairs(10, 3, 0, 7))
    assert res.test == "mcnemar-exact" and res.n == 3
    assert res.p_value == pytest.approx(0.25)  # 2 · P(Bin(3, 1/2) ≤ 0)

    res = mcnemar_test(*table_pairs(50, 30, 10, 50))
    assert res.test == "mcnemar-chi2" and res.n == 40
    # Edwards' continuity correction: (|b − c| − 1)² / (b + c) = 19² / 40.
    assert res.statistic == pytest.approx(361 / 40)
    assert res.p_value == pytest.approx(sps.chi2.sf(361 / 40, df=1))


def test_mcnemar_no_discordant_pairs(no_warnings):
    res = mcnemar_test([1, 0, 1], [1, 0, 1])
    assert res.p_value == 1.0 and res.n == 0


def test_mcnemar_rejects_scores():
    with pytest.raises(AsdError) as excinfo:
        mcnemar_test([0.5, 1.0], [1.0, 1.0])
    assert "0/1" in one_line_error(excinfo)


def test_wilcoxon_known_cases(no_warnings):
    res = wilcoxon_test([2.0, 3, 4, 5, 6], [1.0] * 5)  # all five differences positive
    assert res.p_value == pytest.approx(2 / 2**5) and res.statistic == 0 and res.n == 5
    # d = 1, −2, 3, 4, 5: W− = 2; subsets of {1..5} summing to ≤ 2 are {}, {1}, {2}.
    res = wilcoxon_test([1.0, -2, 3, 4, 5], np.zeros(5))
    assert res.statistic == 2 and res.p_value == pytest.approx(2 * 3 / 32)
    res = wilcoxon_test([0.0, 0, 1, 2, 3], np.zeros(5))  # zeros are dropped
    assert res.n == 3 and res.p_value == pytest.approx(2 / 2**3)


def test_wilcoxon_all_zero_differences(no_warnings):
    res = wilcoxon_test([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    assert res.p_value == 1.0 and res.n == 0


def test_paired_tests_reject_unequal_lengths():
    with pytest.raises(AsdError):
        wilcoxon_test([1.0, 2.0], [1.0])
    with pytest.raises(AsdError):
        mcnemar_test([1.0, 0.0], [1.0])


def test_holm_matches_hand_computation():
    # Sorted: 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06, 0.04·1 = 0.04 → max-accumulated 0.06.
    adjusted, reject = holm([0.01, 0.04, 0.03, 0.005], alpha=0.05)
    np.testing.assert_allclose(adjusted, [0.03, 0.06, 0.06, 0.02])
    assert reject.tolist() == [True, False, False, True]


def test_holm_leaves_untested_rows_out():
    adjusted, reject = holm([0.01, np.nan, 0.04])
    np.testing.assert_allclose(adjusted[[0, 2]], [0.02, 0.04])
    assert math.isnan(adjusted[1]) and not reject[1]
    with pytest.raises(AsdError):
        holm([0.5, 1.5])


# statsmodels runs gc.collect() inside every Holm call (~0.1 s in a big process): few examples.
@settings(max_examples=15, deadline=None)
@given(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=12))
def test_holm_properties(p):
    adjusted, reject = holm(p)
    assert np.all(adjusted >= np.asarray(p) - 1e-12) and np.all(adjusted <= 1.0)
    np.testing.assert_array_equal(reject, adjusted < 0.05 + 1e-12)


# ---------------------------------------------------------------- curves


def test_pareto_front_known_points():
    cost = [1.0, 2.0, 2.0, 3.0, 0.5, 4.0]
    quality = [0.5, 0.4, 0.7, 0.7, 0.2, 0.9]
    assert pareto_front(cost, quality).tolist() == [4, 0, 2, 5]


def test_upper_hull_skips_points_below_the_chord():
    # (2, 0.3) is Pareto-optimal but mixing (1, 0.2) with (3, 0.8) beats it at cost 2.
    cost, quality = [1.0, 2.0, 3.0, 4.0], [0.2, 0.3, 0.8, 0.9]
    assert pareto_front(cost, quality).tolist() == [0, 1, 2, 3]
    assert upper_hull(cost, quality).tolist() == [0, 2, 3]
    assert envelope_quality(cost, quality, [2.0])[0] == pytest.approx(0.5)
    assert upper_hull([1.0, 2.0, 3.0], [0.25, 0.5, 0.75]).tolist() == [0, 2]  # collinear
    assert upper_hull([2.0], [0.5]).tolist() == [0]


def test_envelope_interpolates_and_extends_flat_to_the_right():
    cost, quality = [1.0, 3.0, 2.0], [0.2, 0.8, 0.1]  # (2, 0.1) is dominated
    e = envelope_quality(cost, quality, [0.5, 1.0, 2.0, 3.0, 10.0])
    assert math.isnan(e[0])
    np.testing.assert_allclose(e[1:], [0.2, 0.5, 0.8, 0.8])


points = st.lists(st.tuples(st.floats(0.0, 10.0), st.floats(0.0, 1.0)), min_size=1, max_size=15)


@settings(max_examples=80, deadline=None)
@given(points)
def test_front_and_envelope_properties(pts):
    c, q = np.array(pts).T
    front = pareto_front(c, q)
    fc, fq = c[front], q[front]
    assert np.all(np.diff(fc) > 0) and np.all(np.diff(fq) > 0)
    for i in range(len(c)):  # every point is weakly dominated by a front point
        assert np.any((fc <= c[i]) & (fq >= q[i]))
    for j in front:  # and no front point is strictly dominated
        assert not np.any((c <= c[j]) & (q >= q[j]) & ((c < c[j]) | (q > q[j])))
    hull = upper_hull(c, q)
    assert set(hull) <= set(front) and hull[0] == front[0] and hull[-1] == front[-1]
    e = envelope_quality(c, q, c)
    assert np.all(e >= q - 1e-12)
    grid = np.linspace(c.min(), c.max() + 1, 50)
    values = envelope_quality(c, q, grid)
    assert np.all(np.diff(values) >= -1e-12)  # non-decreasing
    assert np.all(np.diff(values, 2) <= 1e-9)  # concave


def test_pooled_envelope_picks_the_best_source():
    curves = {
        "pair_0_1": ([1.0, 2.0], [0.3, 0.5]),
        "pair_0_2": ([1.5, 3.0], [0.45, 0.9]),
        "pair_1_2": ([2.5], [0.6]),
    }
    env = pooled_envelope(curves)
    assert env["method"].tolist() == ["pair_0_1", "pair_0_2", "pair_0_1", "pair_1_2", "pair_0_2"]
    np.testing.assert_allclose(env["cost"], [1.0, 1.5, 2.0, 2.5, 3.0])
    with pytest.raises(AsdError):
        pooled_envelope({})


CHEAP, DEEP = (1.0, 0.4), (5.0, 0.8)


def test_area_zero_for_cheapest_and_one_for_deepest_quality_everywhere():
    assert normalised_area([1.0, 2.0, 6.0], [0.4, 0.4, 0.4], CHEAP, DEEP) == pytest.approx(0.0)
    assert normalised_area([1.0, 3.0, 5.0], [0.8, 0.8, 0.8], CHEAP, DEEP) == pytest.approx(1.0)


def test_area_known_shapes():
    # The deepest stage alone and random mixing both trace the chord: 0.5.
    assert normalised_area([5.0], [0.8], CHEAP, DEEP) == pytest.approx(0.5)
    assert normalised_area([2.0, 3.0, 5.0], [0.5, 0.6, 0.8], CHEAP, DEEP) == pytest.approx(0.5)
    # Deepest quality at mid cost: ramp (area 1/4 of the range) then flat at 1 (1/2) = 0.75.
    assert normalised_area([3.0], [0.8], CHEAP, DEEP) == pytest.approx(0.75)
    # A point dearer than the deepest stage counts only through mixing with the cheapest stage:
    # the line from (1, 0.4) to (9, 0.8) averages 0.5 over costs [1, 5], i.e. 0.25 normalised.
    assert normalised_area([9.0], [0.8], CHEAP, DEEP) == pytest.approx(0.25)
    # Better than the deepest stage everywhere scores above 1.
    assert normalised_area([1.0], [0.9], CHEAP, DEEP) == pytest.approx(1.25)


def test_area_degenerate_normalisation_is_nan():
    assert math.isnan(normalised_area([2.0], [0.5], (1.0, 0.5), (3.0, 0.5)))
    assert math.isnan(normalised_area([2.0], [0.5], (3.0, 0.4), (3.0, 0.8)))
    with pytest.raises(AsdError):
        normalised_area([1.0, 2.0], [0.5], CHEAP, DEEP)
    with pytest.raises(AsdError):
        normalised_area([np.nan], [0.5], CHEAP, DEEP)


@settings(max_examples=80, deadline=None)
@given(points, st.tuples(st.floats(0.0, 10.0), st.floats(0.0, 1.0)))
def test_area_bounded_and_monotone_in_points(pts, extra):
    c = np.array([p[0] for p in pts]) * 0.4 + 1.0  # costs in [1, 5]
    q = np.array([p[1] for p in pts]) * 0.4 + 0.4  # qualities in [0.4, 0.8]
    area = normalised_area(c, q, CHEAP, DEEP)
    assert -1e-9 <= area <= 1 + 1e-9
    more = normalised_area(np.append(c, extra[0]), np.append(q, extra[1]), CHEAP, DEEP)
    assert more >= area - 1e-9


# ---------------------------------------------------------------- oracle and headline λ


def test_oracle_gap():
    me = oracle_gap([0.6], [0.9], oracle_cost=0.6, oracle_quality=0.9)
    assert me.ratio == pytest.approx(1.0) and me.reached
    # Mixing λ values counts: a dominated-by-the-chord point (2.5, 0.6) does not lower the gap.
    gap = oracle_gap([1.0, 2.5, 3.0], [0.5, 0.6, 0.9], oracle_cost=1.5, oracle_quality=0.7)
    assert gap.matched_cost == pytest.approx(2.0) and gap.ratio == pytest.approx(4 / 3)
    never = oracle_gap([1.0, 3.0], [0.5, 0.85], oracle_cost=1.5, oracle_quality=0.9)
    assert not never.reached and math.isnan(never.ratio) and math.isnan(never.matched_cost)
    close = oracle_gap([1.0, 3.0], [0.5, 0.85], 1.5, 0.9, tolerance=0.05)
    assert close.reached and close.ratio == pytest.approx(2.0)
    assert cost_at_quality([1.0, 3.0], [0.5, 0.9], 0.1) == pytest.approx(1.0)
    with pytest.raises(AsdError):
        oracle_gap([1.0], [0.5], oracle_cost=0.0, oracle_quality=0.5)


def test_saving_share():
    assert saving_share(0.4, oracle_cost=0.4, reference_cost=1.0) == pytest.approx(1.0)
    assert saving_share(2.0, oracle_cost=2.0, reference_cost=4.0) == pytest.approx(1.0)
    assert saving_share(4.0, oracle_cost=2.0, reference_cost=4.0) == pytest.approx(0.0)
    assert saving_share(3.0, oracle_cost=2.0, reference_cost=4.0) == pytest.approx(0.5)
    assert saving_share(5.0, oracle_cost=2.0, reference_cost=4.0) == pytest.approx(-0.5)
    assert math.isnan(saving_share(3.0, oracle_cost=4.0, reference_cost=4.0))


def test_smallest_matching_lambda_keeps_95_percent_of_the_reference():
    lams, q = [5.0, 0.1, 1.0, 0.5], [0.95, 0.5, 0.76, 0.75]
    assert smallest_matching_lambda(lams, q, 0.8) == 1.0  # 0.76 = 95% of 0.8; 0.75 is not
    assert smallest_matching_lambda(lams, q, 0.8, share=0.9) == 0.5
    assert math.isnan(smallest_matching_lambda([0.1, 1.0], [0.5, 0.6], 0.8))
    with pytest.raises(AsdError):
        smallest_matching_lambda([0.1], [0.9], float("nan"))


# ---------------------------------------------------------------- the evaluation table

STAGE_COST = (0.1, 0.4, 1.0)
STAGE_ACC = (0.4, 0.6, 0.8)
THRESHOLDS = {0.5: 0.7, 2.0: 0.3, 8.0: 0.0}  # λ → share of inputs the policy stops at stage 0


def synthetic_table(n_items: int = 80, seeds=(0, 1, 2), rng_seed: int = 0) -> pd.DataFrame:
    """Nested correctness (a deeper stage is right whenever a shallower one is), noisy costs."""
    rng = np.random.default_rng(rng_seed)
    rows = []
    for dataset in ("asdiv", "mmlu"):
        difficulty = rng.uniform(size=n_items)
        correct = np.array([difficulty < a for a in STAGE_ACC], dtype=float)
        cost = np.array(STAGE_COST)[:, None] * rng.uniform(0.8, 1.2, size=(3, n_items))

        def add(method, lam, seed, depth, quality, seconds, dataset=dataset):
            for i in range(n_items):
                rows.append(
                    (method, lam, seed, dataset, f"{dataset}-{i}", quality[i], seconds[i], depth[i])
                )

        for seed in seeds:
            for k in range(3):
                add(f"stage_{k}", np.nan, seed, np.full(n_items, k), correct[k], cost[k])
            first_right = np.where(correct[0] == 1, 0, np.where(correct[1] == 1, 1, 0))
            oracle_cost = cost[first_right, np.arange(n_items)]
            add("oracle_router", np.nan, seed, first_right, correct[2], oracle_cost)
            noise = np.random.default_rng(seed).uniform(-0.3, 0.3, size=n_items)
            for lam, share in THRESHOLDS.items():
                stop = difficulty + noise < share * STAGE_ACC[0] / 0.7
                depth = np.where(stop, 0, 2)
                quality = np.where(stop, correct[0], correct[2])
                add("asd", lam, seed, depth, quality, cost[0] + np.where(stop, 0.0, cost[2]))
    columns = ["method", "lam", "seed", "dataset", "item_id", "quality", "cost", "depth"]
    return pd.DataFrame(rows, columns=columns)


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    return synthetic_table()


@pytest.fixture(scope="module")
def summary(table) -> pd.DataFrame:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return summarise(table, n_resamples=300)


def test_summary_shape_and_reference_row(summary):
    assert len(summary) == 2 * (3 + 1 + len(THRESHOLDS))
    assert summary["lam"].isna().sum() == 2 * 4
    ref = summary[summary["method"] == "stage_2"].iloc[0]
    assert ref["speedup"] == pytest.approx(1.0) and ref["retention"] == pytest.approx(1.0)
    assert ref["speedup_low"] == pytest.approx(1.0) and ref["speedup_high"] == pytest.approx(1.0)
    assert math.isnan(ref["p_quality"]) and math.isnan(ref["p_cost_holm"])
    assert not ref["significant_cost"]
    assert (summary["n_inputs"] == 80).all() and (summary["n_seeds"] == 3).all()


def test_summary_values_match_hand_computation(table, summary):
    data = table[table["dataset"] == "asdiv"]
    row = summary[(summary["dataset"] == "asdiv") & (summary["method"] == "stage_0")].iloc[0]
    s0, s2 = data[data["method"] == "stage_0"], data[data["method"] == "stage_2"]
    assert row["quality"] == pytest.approx(s0["quality"].mean())
    assert row["cost"] == pytest.approx(s0["cost"].mean())
    assert row["speedup"] == pytest.approx(s2["cost"].mean() / s0["cost"].mean())
    assert row["retention"] == pytest.approx(s0["quality"].mean() / s2["quality"].mean())
    assert row["quality_low"] < row["quality"] < row["quality_high"]
    assert row["speedup_low"] < row["speedup"] < row["speedup_high"]
    assert row["quality_seed_sd"] == pytest.approx(0.0)  # stages are deterministic
    # Deterministic 0/1 quality → McNemar; stage 0 is right only where stage 2 is right.
    q0, q2 = s0["quality"].to_numpy(), s2["quality"].to_numpy()
    discordant = int(((q2 == 1) & (q0 == 0)).sum() / 3)
    assert discordant >= 25
    assert row["quality_test"] == "mcnemar-chi2"
    assert row["p_quality"] == pytest.approx(sps.chi2.sf((discordant - 1) ** 2 / discordant, 1))
    assert row["significant_quality"] and row["significant_cost"]


def test_summary_seed_averaged_quality_uses_wilcoxon(summary):
    asd = summary[summary["method"] == "asd"]
    varies = asd["quality_seed_sd"] > 0  # seeds disagree on some input: no longer 0/1 per input
    assert varies.sum() >= 2
    assert (asd.loc[varies, "quality_test"] == "wilcoxon").all()
    for _, rows in asd.groupby("dataset"):  # a larger λ escalates more
        assert rows.sort_values("lam")["depth"].is_monotonic_increasing


def test_summary_holm_is_per_method(summary):
    for method, rows in summary[summary["method"] != "stage_2"].groupby("method"):
        for kind in ("quality", "cost"):
            adjusted, reject = holm(rows[f"p_{kind}"])
            np.testing.assert_allclose(rows[f"p_{kind}_holm"], adjusted, err_msg=method)
            assert rows[f"significant_{kind}"].tolist() == reject.tolist()


def test_summary_saving_share(summary):
    oracle = summary[summary["method"] == "oracle_router"]
    np.testing.assert_allclose(oracle["saving_share"], 1.0)
    ref = summary[summary["method"] == "stage_2"]
    np.testing.assert_allclose(ref["saving_share"], 0.0)


def test_headline_and_curve_summary(summary):
    top = headline(summary)
    assert len(top) == 2 and top["method"].eq("asd").all()
    for _, row in top.iterrows():
        data = summary[summary["dataset"] == row["dataset"]]
        ref = data[data["method"] == "stage_2"].iloc[0]
        asd = data[data["method"] == "asd"]
        expected = asd.loc[asd["quality"] >= 0.95 * ref["quality"] - 1e-12, "lam"].min()
        if np.isfinite(expected):
            assert row["matched"] and row["lam"] == expected
            assert row["speedup"] == asd.loc[asd["lam"] == expected, "speedup"].iloc[0]
        else:
            assert not row["matched"] and math.isnan(row["lam"])

    curves = curve_summary(summary).set_index(["dataset", "method"])
    for dataset in ("asdiv", "mmlu"):
        assert curves.loc[(dataset, "stage_0"), "area"] == pytest.approx(0.0)
        assert curves.loc[(dataset, "stage_2"), "area"] == pytest.approx(0.5)
        assert curves.loc[(dataset, "oracle_router"), "oracle_gap"] == pytest.approx(1.0)
        assert curves.loc[(dataset, "asd"), "n_points"] == len(THRESHOLDS)
        assert not curves.loc[(dataset, "stage_0"), "reaches_oracle"]


def test_summarise_constant_and_single_input_tables(no_warnings):
    tiny = synthetic_table(n_items=1, seeds=(0,))
    out = summarise(tiny, n_resamples=50)
    assert out["quality_low"].isna().all() and (out["n_inputs"] == 1).all()
    constant = synthetic_table(n_items=10, seeds=(0, 1)).assign(quality=1.0)
    out = summarise(constant, n_resamples=100, ci_method="percentile")
    np.testing.assert_allclose(out["retention"], 1.0)
    np.testing.assert_allclose(out["quality_low"], 1.0)
    assert (out.loc[out["method"] != "stage_2", "p_quality"] == 1.0).all()


def test_deepest_stage_is_numeric_not_lexical():
    df = pd.DataFrame({"method": ["stage_2", "stage_10", "asd", "stage_9"]})
    assert deepest_stage(df) == "stage_10"
    with pytest.raises(AsdError):
        deepest_stage(pd.DataFrame({"method": ["asd"]}))


@pytest.mark.parametrize(
    "mutate, needle",
    [
        (lambda df: df.iloc[:0], "empty"),
        (lambda df: df.drop(columns="cost"), "cost"),
        (lambda df: df.assign(quality=np.where(df.index == 3, np.nan, df["quality"])), "quality"),
        (lambda df: pd.concat([df, df.iloc[:1]]), "duplicated"),
        (lambda df: df.assign(cost=-df["cost"]), "negative"),
        (lambda df: df.assign(item_id=df["item_id"].where(df.index != 0)), "item_id"),
        (lambda df: df.drop(index=df.index[df["method"] == "asd"][:1]), "inputs"),
        (lambda df: df[(df["method"] != "stage_2") | (df["dataset"] != "mmlu")], "mmlu"),
    ],
)
def test_summarise_bad_tables_raise_one_line(mutate, needle):
    df = mutate(synthetic_table(n_items=5, seeds=(0,)))
    with pytest.raises(AsdError) as excinfo:
        summarise(df, n_resamples=20)
    assert needle in one_line_error(excinfo)


def test_summarise_unknown_reference():
    with pytest.raises(AsdError) as excinfo:
        summarise(synthetic_table(n_items=5, seeds=(0,)), reference="stage_7")
    assert "stage_7" in one_line_error(excinfo)
