"""Replay of policies over cached generations, the DP policy model, and the evaluation runner.

A synthetic generations frame (``bench_features.synthetic_frame``) gets measured-looking costs:
stage k takes about 3^k seconds from scratch; escalating verifies in a fraction of that and
decodes only the tokens after the accepted prefix.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from asd_core import adaptive, stats, stopping
from asd_core.bench_features import synthetic_frame
from asd_core.errors import AsdError
from asd_core.eval import replay, runner
from asd_core.features import FeatureSet
from asd_core.predictor import TrainConfig, train_predictor
from tests.tolerance import F32_ULPS, ulps

K = 3
SPLITS = ("train", "calibration", "test")


def with_costs(df: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    df = df.copy()
    n = len(df)
    df["n_out"] = df["token_ids"].map(len)
    df["n_in"] = df["prompt_ids"].map(len)
    base = 3.0 ** df["stage"].to_numpy()
    df["prefill_s"] = 0.1 * base
    df["latency_s"] = df["prefill_s"] + 0.02 * base * df["n_out"] + rng.uniform(0, 0.01, n)
    drafted, accepted, verify = [], [], []
    for stage, n_out in zip(df["stage"], df["n_out"], strict=True):
        d = [-1] * K
        a = [-1] * K
        v = [np.nan] * K
        for j in range(stage + 1, K):
            d[j] = int(n_out)
            a[j] = int(rng.integers(0, n_out + 1))
            v[j] = 0.05 * 3.0**j
        drafted.append(d)
        accepted.append(a)
        verify.append(v)
    df["drafted_by"], df["accepted_by"], df["verify_s_by"] = drafted, accepted, verify
    df["correct"] = (rng.random(n) < 0.3 + 0.25 * df["stage"].to_numpy()).astype(float)
    items = sorted(df["item_id"].unique())
    split = {it: SPLITS[i % 3] for i, it in enumerate(items)}
    df["split"] = df["item_id"].map(split)
    return df


@pytest.fixture(scope="module")
def gens() -> pd.DataFrame:
    return with_costs(synthetic_frame(240, K, seed=3))


@pytest.fixture(scope="module")
def model(gens: pd.DataFrame) -> adaptive.PolicyModel:
    train, calib = (gens[gens["split"] == s] for s in ("train", "calibration"))
    cfg = TrainConfig(max_epochs=15, patience=3, n_members=2)
    pred = train_predictor(train, calib, FeatureSet(K), "answer", cfg, seed=1)
    return adaptive.fit_policy_model(pred, train, adaptive.RiskSettings())


def test_replay_data_and_fixed_strategies(gens: pd.DataFrame) -> None:
    test = gens[gens["split"] == "test"]
    data = replay.ReplayData.from_frame(test, K, "answer")
    assert data.scratch_s.shape == (data.n, K) and data.escalate_s.shape == (data.n, K, K)
    assert np.isnan(data.escalate_s[:, 1, 0]).all() and (data.escalate_s[:, 0, 2] > 0).all()
    for k in range(K):
        r = replay.stage_alone(data, k)
        np.testing.assert_allclose(r.cost_s, data.scratch_s[:, k])
        np.testing.assert_array_equal(r.quality, data.quality[:, k])
    router, cascade = replay.oracle_router(data), replay.oracle_cascade(data)
    np.testing.assert_array_equal(router.depth, cascade.depth)
    np.testing.assert_allclose(router.cost_s, data.scratch_s[np.arange(data.n), router.depth])
    assert all(p == tuple(range(d + 1)) for p, d in zip(cascade.paths, cascade.depth, strict=True))


def test_escalation_cost_counts_verify_and_unaccepted_tokens(gens: pd.DataFrame) -> None:
    test = gens[gens["split"] == "test"].sort_values(["item_id", "stage"])
    _, esc = adaptive.per_input_costs(test, K)
    first = test[test["item_id"] == test["item_id"].iloc[0]].reset_index(drop=True)
    rate = (first.latency_s[2] - first.prefill_s[2]) / max(first.n_out[2] - 1, 1)
    todo = max(first.n_out[2] - first.accepted_by[0][2], 0)
    assert esc[0, 0, 2] == pytest.approx(first.verify_s_by[0][2] + todo * rate)


def test_dp_policy_limits_in_lambda(gens: pd.DataFrame, model: adaptive.PolicyModel) -> None:
    test = gens[gens["split"] == "test"]
    data = replay.ReplayData.from_frame(test, K, "answer")
    beliefs = replay.Beliefs.of(model, test)
    cheap = stopping.solve(model.transitions, model.pbar, model.costs, 1e-6)
    dear = stopping.solve(model.transitions, model.pbar, model.costs, 1e6)
    assert (replay.dp_policy(data, beliefs, cheap, model.n_bins).depth == 0).all()
    assert (replay.dp_policy(data, beliefs, dear, model.n_bins).depth == K - 1).all()


def test_adaptive_policy_decides_like_its_replay(
    gens: pd.DataFrame, model: adaptive.PolicyModel
) -> None:
    """The online decision after stage k uses the same beliefs as replay on the same rows."""
    test = gens[gens["split"] == "test"].sort_values(["item_id", "stage"])
    beliefs = replay.Beliefs.of(model, test)
    table = stopping.solve(model.transitions, model.pbar, model.costs, 1.0)
    rows = test.to_dict("records")
    for r in rows[: 3 * K]:
        from asd_core.features import StageView

        view = StageView.from_row(r)
        mean, var = model.predictor.predict_view(view)
        p = adaptive.adjusted(
            model.prior, model.risk, np.array([mean]), np.array([var]), np.array([view.stage])
        )
        i = sorted(test["item_id"].unique()).index(r["item_id"])
        # one row online vs the whole test split in replay: float32 members, ~F32_ULPS apart
        assert p[0] == pytest.approx(
            beliefs.sequential[i, r["stage"]], abs=ulps(np.float32, F32_ULPS)
        )
        b = int(stopping.belief_bins(p, model.n_bins)[0])
        assert stopping.decide(table, r["stage"], b) == stopping.decide(
            table,
            r["stage"],
            int(stopping.belief_bins(beliefs.sequential[i : i + 1, r["stage"]], model.n_bins)[0]),
        )


@pytest.mark.parametrize("beta", [0.5, 0.2])
def test_scalar_belief_bin_equals_the_vectorised_one(
    model: adaptive.PolicyModel, beta: float
) -> None:
    import dataclasses

    m = dataclasses.replace(model, risk=adaptive.RiskSettings(alpha=7.0, beta=beta, n_max=500.0))
    rng = np.random.default_rng(0)
    for _ in range(300):
        stage, mean, var = int(rng.integers(0, K)), float(rng.random()), float(rng.random() * 0.05)
        p = adaptive.adjusted(m.prior, m.risk, np.array([mean]), np.array([var]), np.array([stage]))
        expected = int(stopping.belief_bins(p, m.n_bins)[0])
        assert adaptive.belief_bin_one(m, stage, mean, var) == expected


def test_per_input_costs_track_lengths_and_limits(
    gens: pd.DataFrame, model: adaptive.PolicyModel
) -> None:
    ic = model.input_costs
    assert ic is not None
    short, long = ic.matrix("mmlu", 100, {2: 5.0}), ic.matrix("mmlu", 100, {2: 200.0})
    assert long[0, 2] > short[0, 2]  # a longer output costs more
    test = gens[gens["split"] == "test"]
    data = replay.ReplayData.from_frame(test, K, "answer")
    beliefs = replay.Beliefs.of(model, test)
    dear = replay.dp_policy_per_input(data, beliefs, model, 1e6, stopping.DP)
    assert (dear.depth == K - 1).all()


def test_decision_overhead_and_cost_table(gens: pd.DataFrame, model: adaptive.PolicyModel) -> None:
    test = gens[gens["split"] == "test"].head(30)
    over = adaptive.decision_overhead(model, 1.0, test, repeats=1)
    assert list(over["step"])[-1] == "total per decision" and (over["median_us"] > 0).all()
    table = adaptive.cost_table(model, ["a", "b", "c"])
    assert table[(table.origin == "from scratch") & (table.to == "c")][
        "cost_rel"
    ].item() == pytest.approx(1.0)


def test_evaluate_produces_every_method_and_summarises(gens: pd.DataFrame) -> None:
    settings = runner.EvalSettings(
        lambdas=(0.1, 10.0), seeds=(1,), train=TrainConfig(max_epochs=10, patience=3, n_members=2)
    )
    results, _ = runner.evaluate(gens, settings, K, progress=False)
    n_test = gens[gens["split"] == "test"]["item_id"].nunique()
    methods = set(results["method"])
    expected = {"stage_0", "stage_2", "oracle_router", "oracle_cascade", "random", "static_cascade",
                "router", "pair_0_2", "dp", "dp_no_risk", "dp_no_predictor", "dp_size_costs",
                "dp_myopic", "dp_sequential", "dp_per_input", "draft_verify_deepest"}  # fmt: skip
    assert expected <= methods
    per = results.groupby(["method", "lam", "seed"], dropna=False)["item_id"].count()
    assert (per == n_test).all()
    assert (results["cost"] > 0).all() and results["quality"].between(0, 1).all()
    summary = stats.summarise(results, reference="stage_2", n_resamples=200, ci_method="percentile")
    assert {"speedup", "retention"} <= set(summary.columns)


def test_evaluate_refuses_missing_split(gens: pd.DataFrame) -> None:
    with pytest.raises(AsdError, match="no 'test' rows"):
        runner.evaluate(
            gens[gens["split"] != "test"], runner.EvalSettings((1.0,), (1,)), K, progress=False
        )
