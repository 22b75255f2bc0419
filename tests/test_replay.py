"""Replay of policies over cached generations, the DP policy model, and the evaluation runner.

A synthetic generations frame (``bench_features.synthetic_frame``) gets measured-looking costs:
stage k takes about 3^k seconds from scratch; escalating verifies in a fraction of that and
decodes only the tokens after the accepted prefix.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from asd_core.analysis import summaries
from asd_core.data.splits import fold_of
from asd_core.decoding import protocol
from asd_core.ground import belief
from asd_core.ground.errors import AsdError
from asd_core.learning.ensemble import TrainConfig
from asd_core.learning.features import FeatureSet, StageView
from asd_core.learning.predictor import train_predictor
from asd_core.policy import adaptive, baselines, costs, fitting
from asd_core.runs import eval_settings, evaluate, folds, methods, replay
from benchmarks.features import synthetic_frame, with_costs

K = 3


@pytest.fixture(scope="module")
def gens() -> pd.DataFrame:
    return with_costs(synthetic_frame(240, K, seed=3))


@pytest.fixture(scope="module")
def model(gens: pd.DataFrame) -> fitting.PolicyModel:
    train, calib = (gens[gens["split"] == s] for s in ("train", "calibration"))
    cfg = TrainConfig(max_epochs=15, patience=3, n_members=2)
    pred = train_predictor(train, calib, FeatureSet(K), "answer", cfg, seed=1)
    return fitting.fit_policy_model(pred, train, calib, fitting.RiskSettings(), n_bins=5)


def observer_of(model: fitting.PolicyModel, df: pd.DataFrame) -> adaptive.CachedObserver:
    data = replay.ReplayData.from_frame(df, K, "answer")
    pred = fitting.predictions(model.predictor, df, K)
    return adaptive.CachedObserver(pred, data.n_in[:, 0], data.n_out)


def test_replay_data_and_fixed_strategies(gens: pd.DataFrame) -> None:
    test = gens[gens["split"] == "test"]
    data = replay.ReplayData.from_frame(test, K, "answer")
    assert data.scratch_s.shape == (data.n, K) and data.escalate_s.shape == (data.n, K, K)
    assert np.isnan(data.escalate_s[:, 1, 0]).all() and (data.escalate_s[:, 0, 2] > 0).all()
    for k in range(K):
        r = replay.simulate(data, baselines.StageAlone(k, K))
        np.testing.assert_allclose(r.cost_s, data.scratch_s[:, k])
        np.testing.assert_array_equal(r.quality, data.quality[:, k])
    cheapest = baselines.cheapest_acceptable(data.label).tolist()
    labels = dict(zip(data.item_ids, cheapest, strict=True))
    router = replay.simulate(data, baselines.OracleRouter(labels, K))
    cascade = replay.simulate(data, baselines.OracleCascade(labels, K))
    np.testing.assert_array_equal(router.depth, cascade.depth)
    np.testing.assert_allclose(router.cost_s, data.scratch_s[np.arange(data.n), router.depth])
    assert all(p == tuple(range(d + 1)) for p, d in zip(cascade.paths, cascade.depth, strict=True))
    # a cascade's cost is the first stage plus each continuation
    two = replay.simulate(data, baselines.FixedDepth(2, K, start=1))
    np.testing.assert_allclose(two.cost_s, data.scratch_s[:, 1] + data.escalate_s[:, 1, 2])


def test_a_restart_costs_the_deeper_stage_from_scratch(gens: pd.DataFrame) -> None:
    class Restart:
        name = "restart"

        def entry(self, requests):
            return [0] * len(requests)

        def next_stage(self, stage, paths):
            return [protocol.Move(2, True) if stage == 0 else None for _ in paths]

    data = replay.ReplayData.from_frame(gens[gens["split"] == "test"], K, "answer")
    r = replay.simulate(data, Restart())
    np.testing.assert_allclose(r.cost_s, data.scratch_s[:, 0] + data.scratch_s[:, 2])
    assert (r.restarts == 1).all() and all(p == (0, 2) for p in r.paths)


def test_random_mixing_draws_the_same_inputs_in_replay_and_online(gens: pd.DataFrame) -> None:
    data = replay.ReplayData.from_frame(gens[gens["split"] == "test"], K, "answer")
    mix = baselines.RandomMixing([0.5, 0.0, 0.5], seed=3)
    replayed = replay.simulate(data, mix)
    online = mix.entry([replay.ReplayInput(i, "qa") for i in data.item_ids])
    np.testing.assert_array_equal(replayed.depth, online)
    assert 0 < (replayed.depth == 2).mean() < 1


def test_escalation_cost_counts_verify_and_unaccepted_tokens(gens: pd.DataFrame) -> None:
    test = gens[gens["split"] == "test"].sort_values(["item_id", "stage"])
    _, esc = costs.per_input_costs(test, K)
    first = test[test["item_id"] == test["item_id"].iloc[0]].reset_index(drop=True)
    rate = (first.latency_s[2] - first.prefill_s[2]) / max(first.n_out[2] - 1, 1)
    todo = max(first.n_out[2] - first.accepted_by[0][2], 0)
    assert esc[0, 0, 2] == pytest.approx(first.verify_s_by[0][2] + todo * rate)


def test_dp_policy_limits_in_lambda(gens: pd.DataFrame, model: fitting.PolicyModel) -> None:
    test = gens[gens["split"] == "test"]
    data = replay.ReplayData.from_frame(test, K, "answer")
    obs = observer_of(model, test)
    cheap = replay.simulate(data, adaptive.AdaptivePolicy(model, 1e-6, obs))
    dear = replay.simulate(data, adaptive.AdaptivePolicy(model, 1e6, obs))
    cheapest = int(np.argmin(model.held_out.scratch.mean(axis=0)))
    assert (cheap.depth == cheapest).all() and all(len(p) == 1 for p in cheap.paths)
    assert (dear.depth == K - 1).all()


def test_adaptive_policy_decides_from_live_features_like_its_replay(
    gens: pd.DataFrame, model: fitting.PolicyModel
) -> None:
    """Features of each output computed one at a time (as online) and the cached predictions
    give the same decisions at every λ."""
    test = gens[gens["split"] == "test"].sort_values(["item_id", "stage"])
    sub = test[test["item_id"].isin(sorted(test["item_id"].unique())[:16])]
    cached = observer_of(model, sub)
    rows = {(r["item_id"], r["stage"]): r for r in sub.to_dict("records")}

    class RowObserver:  # the live path: one output's features at a time
        def head(self, requests):
            return cached.head(requests)

        def after(self, stage, paths):
            out = []
            for t in paths:
                r = dict(rows[t.request.item_id, stage])
                if protocol.view_of(t.runs[-1]) != belief.SEQUENTIAL:
                    r["accepted_frac_prev"] = np.nan
                out.append(model.predictor.predict_view(StageView.from_row(r)))
            mean, var = zip(*out, strict=True)
            return np.array(mean), np.array(var)

        def lengths(self, path):
            return cached.lengths(path)

    data = replay.ReplayData.from_frame(sub, K, "answer")
    seen = set()
    for lam in (0.3, 1.0, 3.0, 10.0):
        a = replay.simulate(data, adaptive.AdaptivePolicy(model, lam, cached))
        b = replay.simulate(data, adaptive.AdaptivePolicy(model, lam, RowObserver()))
        assert a.paths == b.paths
        seen |= set(a.paths)
    assert any(len(p) > 1 for p in seen)  # some decision after a stage was compared


def test_per_input_costs_track_lengths_and_limits(
    gens: pd.DataFrame, model: fitting.PolicyModel
) -> None:
    ic = model.input_costs
    assert ic is not None
    short, long = ic.matrix("mmlu", 100, {2: 5.0}), ic.matrix("mmlu", 100, {2: 200.0})
    assert long[0, 2] > short[0, 2]  # a longer output costs more
    test = gens[gens["split"] == "test"]
    data = replay.ReplayData.from_frame(test, K, "answer")
    obs = observer_of(model, test)
    dear = replay.simulate(data, adaptive.AdaptivePolicy(model, 1e6, obs, cost_mode="per_input"))
    assert (dear.depth == K - 1).all()


def test_decision_overhead_and_cost_table(gens: pd.DataFrame, model: fitting.PolicyModel) -> None:
    test = gens[gens["split"] == "test"].head(30)
    over = adaptive.decision_overhead(model, 1.0, test, repeats=1)
    assert list(over["step"])[-1] == "total per decision" and (over["median_us"] > 0).all()
    table = adaptive.cost_table(model, ["a", "b", "c"])
    deepest = table[(table.origin == "from scratch") & (table.to == "c")]
    np.testing.assert_allclose(deepest["cost_rel"], 1.0)  # pooled and every task's own unit
    assert set(table["task"]) == {"all", *model.task_costs}
    both = table[(table.task == "all") & (table.origin == "escalate from a")]
    assert set(both["move"]) == {"continue", "restart"} and len(both) == 4


def test_evaluate_produces_every_method_and_summarises(
    gens: pd.DataFrame, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[set[str], set[str]]] = []  # (train, calibration) item ids of each fit

    def recording(train: pd.DataFrame, cal: pd.DataFrame, *args: object, **kw: object):
        seen.append((set(train["item_id"]), set(cal["item_id"])))
        return train_predictor(train, cal, *args, **kw)

    monkeypatch.setattr(folds, "train_predictor", recording)
    settings = eval_settings.EvalSettings(
        lambdas=(0.1, 10.0),
        seeds=(1, 2),
        train=TrainConfig(max_epochs=10, patience=3, n_members=2),
        folds=3,
    )
    results, info = evaluate.evaluate(gens, settings, K, progress=False)
    n_items = gens["item_id"].nunique()
    methods = set(results["method"])
    expected = {"stage_0", "stage_2", "oracle_router", "oracle_cascade", "oracle_router_quality",
                "random", "static_cascade", "router", "pair_0_2", "dp", "dp_no_risk",
                "dp_no_predictor", "dp_no_smoothing", "dp_size_costs", "dp_no_restart",
                "dp_myopic", "dp_sequential", "dp_per_input", "draft_verify_deepest"}  # fmt: skip
    assert expected <= methods
    # the DP curve has a dense λ grid that holds the protocol's values
    grid = info["lambda_grid"]
    assert len(grid) >= 30 and {0.1, 10.0} <= set(grid)
    assert set(results.loc[results["method"] == "dp", "lam"]) == set(grid)
    # every item exactly once per method × λ × seed, in the fold its id hashes to
    per = results.groupby(["method", "lam", "seed"], dropna=False)["item_id"].agg(
        ["count", "nunique"]
    )
    assert (per["count"] == n_items).all() and (per["nunique"] == n_items).all()
    fold_by_item = results.drop_duplicates("item_id").set_index("item_id")["fold"]
    assert all(fold_by_item[i] == fold_of(i, 3) for i in fold_by_item.index)
    # ... and evaluated by predictors that never saw it (two seeds per fold, folds in order)
    assert len(seen) == 3 * 2
    for call, (train_ids, cal_ids) in enumerate(seen):
        held_out = set(fold_by_item.index[fold_by_item == call // 2])
        assert held_out and not held_out & (train_ids | cal_ids)
        assert cal_ids and not cal_ids & train_ids
    assert (results["cost"] > 0).all() and results["quality"].between(0, 1).all()
    summary = summaries.summarise(
        results, reference="stage_2", n_resamples=200, ci_method="percentile"
    )
    assert {"speedup", "retention"} <= set(summary.columns)


def test_evaluate_refuses_missing_calibration_rows_and_empty_folds(gens: pd.DataFrame) -> None:
    no_cal = gens[gens["split"] != "calibration"]
    with pytest.raises(AsdError, match="no 'calibration' rows"):
        evaluate.evaluate(no_cal, eval_settings.EvalSettings((1.0,), (1,)), K, progress=False)
    one_item = gens[gens["item_id"] == gens["item_id"].iloc[0]]
    with pytest.raises(AsdError, match="eval_folds: fold"):
        evaluate.evaluate(
            one_item, eval_settings.EvalSettings((1.0,), (1,), folds=2), K, progress=False
        )


# -- costs from the fitted cost model ------------------------------------------------------------
def cost_table(names: list[str]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "stage": names,
            "a_s": [0.01, 0.02, 0.04],
            "b_s_per_in_token": [0.001, 0.002, 0.004],
            "d_s_per_out_token": [0.01, 0.02, 0.04],
            "score_a_s": [0.005, 0.01, 0.02],
            "score_b_s_per_token": [0.001, 0.002, 0.004],
        }
    )


def test_model_costs_follow_the_fitted_coefficients(gens: pd.DataFrame) -> None:
    names = ["s0", "s1", "s2"]
    df = costs.with_model_costs(gens, cost_table(names), names)
    row = df[(df["stage"] == 1)].iloc[0]
    assert row["model_latency_s"] == pytest.approx(0.02 + 0.002 * row["n_in"] + 0.02 * row["n_out"])
    assert row["model_decode_s"] == pytest.approx(0.02)
    own_in = df[(df["item_id"] == row["item_id"]) & (df["stage"] == 2)]["n_in"].item()
    scored = costs.scored_tokens(
        np.array([row["drafted_by"][2]]), np.array([row["accepted_by"][2]])
    )
    assert row["model_verify_s_by"][2] == pytest.approx(0.02 + 0.004 * (own_in + scored[0]))
    assert np.isnan(row["model_verify_s_by"][:2]).all()  # stages 0 and 1 do not verify stage 1
    scratch, esc = costs.per_input_costs(df, K, "model")
    assert scratch[0, 1] == pytest.approx(row["model_latency_s"])
    assert (esc[:, 0, 2] >= 0.02).all()
    with pytest.raises(AsdError, match="no row for stage 's9'"):
        costs.with_model_costs(gens, cost_table(names), ["s0", "s1", "s9"])
    with pytest.raises(AsdError, match="with_model_costs"):
        costs.per_input_costs(gens, K, "model")


def test_scored_tokens_stop_at_the_block_of_the_first_mismatch() -> None:
    drafted = np.array([100, 100, 100, 10, 0])
    accepted = np.array([0, 31, 32, 10, 0])
    # rows 0..31 hold the last prompt token and 31 draft tokens; all accepted: the whole draft
    assert costs.scored_tokens(drafted, accepted).tolist() == [31, 31, 63, 10, 0]


def test_cost_model_check_scores_the_solo_rows(gens: pd.DataFrame, tmp_path) -> None:
    names = ["s0", "s1", "s2"]
    path = tmp_path / "cost_model.csv"
    cost_table(names).to_csv(path, index=False)
    df = costs.costed(gens, "model", path, names)
    df["gen_batch"] = np.where(df.index % 2 == 0, 1, 8)
    df["latency_s"] = df["model_latency_s"] * 1.1  # measured 10% above the model, exactly
    df["verify_s_by"] = df["model_verify_s_by"]
    check = costs.cost_model_check(df, names)
    assert list(check["kind"]) == ["generation"] * 3 + ["verification"] * 2
    gen = check[check["kind"] == "generation"]
    assert (gen["median_abs_rel_err"] - 0.1 / 1.1).abs().max() < 1e-9
    ver = check[check["kind"] == "verification"]
    assert (ver["r2"] == 1.0).all() and (ver["median_abs_rel_err"] == 0).all()
    assert check["n"].sum() > 0 and (check["n"] <= (df["gen_batch"] == 1).sum()).all()
    assert costs.costed(gens, "measured", path, names) is gens
    with pytest.raises(AsdError, match="run notebook 01"):
        costs.costed(gens, "model", tmp_path / "missing.csv", names)


def test_pool_prompts_train_every_fold_and_are_never_evaluated(
    gens: pd.DataFrame, monkeypatch: pytest.MonkeyPatch
) -> None:
    train_ids = sorted(gens.loc[gens["split"] == "train", "item_id"].unique())[:20]
    renamed = {i: f"pool-test/{n:06d}" for n, i in enumerate(train_ids)}
    with_pool = gens.assign(item_id=gens["item_id"].replace(renamed))
    seen: list[set[str]] = []

    def recording(train: pd.DataFrame, cal: pd.DataFrame, *args: object, **kw: object):
        seen.append(set(train["item_id"]))
        return train_predictor(train, cal, *args, **kw)

    monkeypatch.setattr(folds, "train_predictor", recording)
    settings = eval_settings.EvalSettings(
        lambdas=(1.0,),
        seeds=(1,),
        train=TrainConfig(max_epochs=5, patience=2, n_members=1),
        folds=2,
    )
    results, _ = evaluate.evaluate(with_pool, settings, K, progress=False)
    pool_ids = set(renamed.values())
    assert not pool_ids & set(results["item_id"])
    assert results["item_id"].nunique() == gens["item_id"].nunique() - len(pool_ids)
    assert len(seen) == 2 and all(pool_ids <= ids for ids in seen)


def test_online_check_runs_only_where_the_policy_is_not_constant(
    gens: pd.DataFrame, model: fitting.PolicyModel
) -> None:
    from asd_core.runs import online

    test = gens[gens["split"] == "test"]
    data = replay.ReplayData.from_frame(test, K, "answer")
    obs = observer_of(model, test)
    candidates = [1e-6, *np.geomspace(0.05, 50, 12).tolist(), 1e6]
    chosen = online.informative_lambdas(model, data, obs, candidates, n=3)
    assert chosen and 1e-6 not in chosen  # constant there: every input stops at the cheapest
    for lam in chosen:
        paths = replay.simulate(data, adaptive.AdaptivePolicy(model, lam, obs)).paths
        assert len(set(paths)) >= 2 and any(len(p) > 1 for p in paths)
    assert online.informative_lambdas(model, data, obs, [1e-6, 2e-6], n=2) == []


def test_a_budget_missing_in_one_fold_is_missing_for_the_whole_seed() -> None:
    results = pd.DataFrame(
        {
            "method": ["router"] * 4 + ["dp"] * 2,
            "lam": [0.3, 0.3, 0.6, 0.6, 1.0, 1.0],
            "seed": [1, 2, 1, 1, 1, 1],
            "fold": [0, 0, 0, 1, 0, 1],
        }
    )
    missing = [{"method": "router", "budget": 0.3, "fold": 1, "seed": 1}]
    kept = evaluate._drop_partial_points(results, missing)
    assert list(zip(kept["method"], kept["lam"], kept["seed"], strict=True)) == [
        ("router", 0.3, 2),
        ("router", 0.6, 1),
        ("router", 0.6, 1),
        ("dp", 1.0, 1),
        ("dp", 1.0, 1),
    ]


def test_decision_table_covers_every_reached_state_and_the_entry(
    model: fitting.PolicyModel,
) -> None:
    table = adaptive.decision_table(model, [0.1, 3.0], ["a", "b", "c"])
    states = table[table["stage"] != "entry"]
    assert set(states["stage"]) == {"a", "b"}  # the last stage only stops
    assert ("a", "sequential") not in set(zip(states["stage"], states["view"], strict=True))
    assert (states["p_low"] < states["p_high"]).all()
    assert set(states["action"]) <= {"stop", "continue → b", "continue → c", "restart → b",
                                     "restart → c"}  # fmt: skip
    entry = table[table["stage"] == "entry"]
    assert (entry.groupby("lam")["n_held_out"].sum() == model.held_out.n).all()


def test_saved_fold_predictors_give_the_same_results_and_refuse_other_settings(
    gens: pd.DataFrame, tmp_path
) -> None:
    """Notebook 03's saved predictors reproduce 04's own training; a mismatch names the key."""
    cfg = TrainConfig(max_epochs=4, patience=2, n_members=1)
    settings = eval_settings.EvalSettings(
        (1.0,), (1,), train=cfg, folds=2, dense_lambdas=0, methods=("stages", "dp")
    )
    folder = folds.train_fold_predictors(gens, settings, K, tmp_path / "folds", progress=False)
    loaded = folds.load_fold_predictors(folder, gens, settings, K)
    assert set(loaded) == {(0, 1), (1, 1)}
    own, _ = evaluate.evaluate(gens, settings, K, progress=False)
    saved, _ = evaluate.evaluate(gens, settings, K, progress=False, predictors=loaded)
    pd.testing.assert_frame_equal(own, saved)
    for other, key in (
        (dataclasses.replace(settings, seeds=(2,)), "seeds"),
        (dataclasses.replace(settings, folds=3), "folds"),
        (dataclasses.replace(settings, label_mode="token"), "label_mode"),
        (dataclasses.replace(settings, train=dataclasses.replace(cfg, lr=0.01)), "train"),
    ):
        with pytest.raises(AsdError, match=f"key '{key}'"):
            folds.load_fold_predictors(folder, gens, other, K)
    with pytest.raises(AsdError, match="key 'items'"):
        folds.load_fold_predictors(
            folder, gens[gens["item_id"] != gens["item_id"].iloc[0]], settings, K
        )
    with pytest.raises(AsdError, match="run notebook 03 first"):
        folds.load_fold_predictors(tmp_path / "nothing", gens, settings, K)


def test_methods_are_looked_up_by_name() -> None:
    assert list(methods.METHODS)[:2] == ["stages", "oracles"]
    assert [m.name for m in methods.selected(("dp", "stages"))] == ["stages", "dp"]
    with pytest.raises(AsdError, match="evaluation method 'bogus' is unknown"):
        methods.selected(("bogus",))


def test_policy_file_round_trip_decides_the_same_and_refuses_other_stages(
    model: fitting.PolicyModel, gens: pd.DataFrame, tmp_path
) -> None:
    """The saved policy makes the same decisions at every λ, per-input costs included; a file
    for other stages, features or of another format is refused with the field's name."""
    from asd_core.ground.config import StageConfig
    from asd_core.policy import saved

    stages = [StageConfig(name=f"s{k}", source=f"tiny:layers:{k + 1}", runtime="transformers")
              for k in range(K)]  # fmt: skip
    path = saved.save_policy(model, tmp_path / "policy.pt", stages, {"asdiv": {"max_new_tokens": 9}},
                             {"git_commit": "abc"})  # fmt: skip
    back = saved.load_policy(path, stages, "answer")
    assert back.stage_names == ["s0", "s1", "s2"] and back.provenance["git_commit"] == "abc"
    assert back.generation == {"asdiv": {"max_new_tokens": 9}}
    test = gens[gens["split"] == "test"]
    data = replay.ReplayData.from_frame(test, K, "answer")
    for lam in (0.1, 1.0, 5.0):
        for mode in ("table", "per_input"):
            a = replay.simulate(data, adaptive.AdaptivePolicy(model, lam, observer_of(model, test),
                                                              cost_mode=mode))  # fmt: skip
            b = replay.simulate(data, adaptive.AdaptivePolicy(back.model, lam,
                                                              observer_of(back.model, test),
                                                              cost_mode=mode))  # fmt: skip
            assert a.paths == b.paths
            np.testing.assert_array_equal(a.cost_s, b.cost_s)
    other = [*stages[:2], StageConfig(name="s2", source="tiny:layers:9", runtime="transformers")]
    with pytest.raises(AsdError, match=r"field 'stages\[2\].source' is 'tiny:layers:3'"):
        saved.load_policy(path, other)
    with pytest.raises(AsdError, match="field 'stages' has 3 stages in the policy file, 2 here"):
        saved.load_policy(path, stages[:2])
    with pytest.raises(AsdError, match="label mode 'answer', expected 'token'"):
        saved.load_policy(path, stages, "token")
    state = saved.policy_state(model, stages)
    state["predictor"]["meta"]["feature_names"][0] = "renamed"
    import io

    import torch

    buf = io.BytesIO()
    torch.save(state, buf)
    (tmp_path / "renamed.pt").write_bytes(buf.getvalue())
    with pytest.raises(AsdError, match="feature #0 is 'renamed'"):
        saved.load_policy(tmp_path / "renamed.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a policy")
    with pytest.raises(AsdError, match="junk.pt: not a policy file"):
        saved.load_policy(tmp_path / "junk.pt")
    with pytest.raises(AsdError, match="policy file not found"):
        saved.load_policy(tmp_path / "none.pt")
