"""Quality predictor (docs/design.md §5): ensemble training, calibration, persistence, metrics, baselines."""

from __future__ import annotations

import json
import math
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import expit
from sklearn.metrics import roc_auc_score

from asd_core.ground.errors import AsdError
from asd_core.learning import assessment as cal
from asd_core.learning import features as fe
from asd_core.learning.calibration import Calibration, fit_stage_calibration
from asd_core.learning.ensemble import Split, TrainConfig, fit_ensemble
from asd_core.learning.features import FeatureSet, StageView
from asd_core.learning.predictor import QualityPredictor, entry_features, meta_path, train_predictor
from benchmarks.features import synthetic_frame
from tests.tolerance import F32_ULPS, ulps

SMALL = TrainConfig(n_members=3, max_epochs=25, patience=5, batch_size=64)


def separable(n: int, seed: int) -> Split:
    """Two heads with different rules: head 0 accepts x0 > 0, head 1 accepts x1 > 0."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 4)).astype(np.float32)
    stages = rng.integers(0, 2, n)
    y = np.where(stages == 0, X[:, 0] > 0, X[:, 1] > 0).astype(np.float32)
    return Split(X, stages, y)


@pytest.fixture(scope="module")
def ensemble():
    return fit_ensemble(separable(400, 1), separable(150, 2), 2, SMALL, seed=7)


@pytest.fixture(scope="module")
def frames():
    df = synthetic_frame(160, n_stages=3, seed=11)
    items = df["item_id"].unique()
    split = {
        i: ("train" if j < 100 else "calib" if j < 130 else "test") for j, i in enumerate(items)
    }
    part = df["item_id"].map(split)
    return df[part == "train"], df[part == "calib"], df[part == "test"]


@pytest.fixture(scope="module")
def predictor(frames):
    train, calib, _ = frames
    return train_predictor(train, calib, FeatureSet(3), "answer", SMALL, seed=3)


# -- the ensemble -------------------------------------------------------------------------------
def test_learns_a_separable_problem_on_the_right_heads(ensemble):
    test = separable(400, 3)
    mean, _ = ensemble.predict(test.X, test.stages)
    for k in (0, 1):
        rows = test.stages == k
        assert roc_auc_score(test.y[rows], mean[rows]) > 0.9
    # reading stage-0 rows on head 1 (the other rule) loses the signal
    rows = test.stages == 0
    wrong, _ = ensemble.predict(test.X[rows], np.ones(rows.sum(), dtype=np.int64))
    assert roc_auc_score(test.y[rows], wrong) < 0.75


def test_members_disagree(ensemble):
    test = separable(200, 4)
    _, var = ensemble.predict(test.X, test.stages)
    assert (var >= 0).all() and var.mean() > 0
    assert ensemble.member_probs(test.X, test.stages).shape == (3, 200)


def test_numpy_inference_equals_torch_forward(ensemble):
    test = separable(50, 5)
    with torch.no_grad():
        expected = np.stack([m(torch.from_numpy(test.X)).numpy() for m in ensemble.members])
    # numpy and torch float32 kernels: logits of magnitude up to ~10 round differently
    tol = ulps(np.float32, F32_ULPS)
    np.testing.assert_allclose(ensemble.logits(test.X), expected, rtol=tol, atol=tol)


def test_same_seed_same_ensemble_and_other_seed_differs():
    train, calib, test = separable(200, 1), separable(80, 2), separable(50, 3)
    config = TrainConfig(n_members=2, max_epochs=5, patience=5)
    a = fit_ensemble(train, calib, 2, config, seed=5).member_probs(test.X, test.stages)
    b = fit_ensemble(train, calib, 2, config, seed=5).member_probs(test.X, test.stages)
    c = fit_ensemble(train, calib, 2, config, seed=6).member_probs(test.X, test.stages)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_training_restores_global_torch_state():
    threads = torch.get_num_threads()
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    fit_ensemble(separable(60, 1), separable(30, 2), 2, TrainConfig(n_members=1, max_epochs=2), 0)
    assert torch.equal(torch.rand(3), expected)
    assert torch.get_num_threads() == threads


def test_bad_config_is_one_line():
    with pytest.raises(AsdError, match="key 'n_members'"):
        TrainConfig(n_members=0)


# -- calibration --------------------------------------------------------------------------------
def overconfident(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from σ(z) but predicted as σ(3z): far too sure of itself."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.5, n)
    y = (rng.random(n) < expit(z)).astype(np.float64)
    return expit(3 * z), y


@pytest.mark.parametrize("method", ["temperature", "isotonic"])
def test_calibration_lowers_ece_on_held_out_rows(method):
    p_fit, y_fit = overconfident(3000, 1)
    p_test, y_test = overconfident(3000, 2)
    mapping = fit_stage_calibration(p_fit, y_fit, method)
    assert mapping.method == method
    before, after = cal.ece(y_test, p_test), cal.ece(y_test, mapping.apply(p_test))
    assert after < 0.5 * before
    if method == "temperature":
        assert mapping.temperature == pytest.approx(3.0, rel=0.2)


def test_one_class_stage_gets_the_identity_map():
    p = np.linspace(0.1, 0.9, 20)
    calib = Calibration.fit(p, np.ones(20), np.full(20, 2), 3, "temperature")
    assert [c.method for c in calib.stages] == ["identity"] * 3
    np.testing.assert_array_equal(calib.apply(p, np.full(20, 2)), p)


# -- the full predictor -------------------------------------------------------------------------
def test_predictor_end_to_end(predictor, frames):
    _, _, test = frames
    fs = predictor.features
    X = fs.extract_frame(test)
    mean, var = predictor.predict(X, test["stage"].to_numpy())
    assert mean.shape == var.shape == (len(test),)
    assert ((mean >= 0) & (mean <= 1)).all() and var.mean() > 0
    view = StageView.from_row(test.iloc[1])
    single, single_var = predictor.predict_view(view)
    # one row vs a batch through float32 members: probabilities round ~F32_ULPS apart, and the
    # variance of the members moves by about 2·sd·(that rounding)
    tol = ulps(np.float32, F32_ULPS)
    assert single == pytest.approx(mean[1], abs=tol)
    assert single_var == pytest.approx(var[1], abs=2 * math.sqrt(var[1]) * tol + tol**2)
    # the entry head: one probability per stage, final stage (always accepted) near 1
    first = test[test["stage"] == 0].iloc[0]
    entry, entry_var = predictor.predict_entry(first["prompt_ids"], first["task"])
    assert entry.shape == entry_var.shape == (3,)
    assert entry[2] > entry[0] and entry[2] > 0.9


def test_entry_features_come_from_the_input_stage_row(frames):
    train, _, _ = frames
    fs = FeatureSet(3)
    X, found = entry_features(train, fs, input_stage=0)
    assert found.all()
    row = train.iloc[4]  # some stage; its input's stage-0 prompt sets its features
    ref = train[(train["item_id"] == row["item_id"]) & (train["stage"] == 0)].iloc[0]
    np.testing.assert_array_equal(X[4], fs.input_features(ref["prompt_ids"], ref["task"]))
    X1, found1 = entry_features(train[train["stage"] > 0], fs, input_stage=0)
    assert not found1.any() and np.isnan(X1).all()


def test_save_load_round_trip(predictor, frames, tmp_path):
    _, _, test = frames
    path = predictor.save(tmp_path / "pred" / "predictor.pt")
    meta = json.loads(meta_path(path).read_text())
    assert meta["feature_names"] == list(predictor.features.names)
    assert meta["label_mode"] == "answer" and meta["feature_version"] == fe.FEATURE_VERSION
    loaded = QualityPredictor.load(path, FeatureSet(3), label_mode="answer")
    X = predictor.features.extract_frame(test)
    s = test["stage"].to_numpy()
    for a, b in zip(predictor.predict(X, s), loaded.predict(X, s), strict=True):
        np.testing.assert_array_equal(a, b)
    prompt = test["prompt_ids"].iloc[0]
    np.testing.assert_array_equal(
        predictor.predict_entry(prompt, "mmlu")[0], loaded.predict_entry(prompt, "mmlu")[0]
    )
    assert loaded.output_model.calibration == predictor.output_model.calibration
    assert loaded.config == predictor.config and loaded.info == predictor.info


def test_load_refuses_other_features(predictor, tmp_path, monkeypatch):
    path = predictor.save(tmp_path / "predictor.pt")
    with pytest.raises(AsdError) as err:
        QualityPredictor.load(path, FeatureSet(4))
    message = str(err.value)
    assert "\n" not in message and "predictor.json" in message
    assert "'prev_accepted_frac'" in message and "'stage_3'" in message
    with pytest.raises(AsdError, match="label mode 'answer'"):
        QualityPredictor.load(path, FeatureSet(3), label_mode="token")
    monkeypatch.setattr(fe, "FEATURE_VERSION", "999")
    with pytest.raises(AsdError, match="predictor.json.*feature version '1'"):
        QualityPredictor.load(path, FeatureSet(3))


def test_load_refuses_missing_or_inconsistent_files(predictor, tmp_path):
    with pytest.raises(AsdError, match="nothere.json: predictor file not found"):
        QualityPredictor.load(tmp_path / "nothere.pt")
    path = predictor.save(tmp_path / "p.pt")
    path.write_bytes(path.read_bytes()[:-10])  # as if a save died between the two files
    with pytest.raises(AsdError, match="p.pt: weights do not match p.json"):
        QualityPredictor.load(path)
    meta_path(path).write_text("{not json")
    with pytest.raises(AsdError, match="p.json: not a predictor file"):
        QualityPredictor.load(path)


def test_empty_or_incomplete_frames_are_refused(frames):
    train, calib, _ = frames
    with pytest.raises(AsdError, match="training frame is empty"):
        train_predictor(train.iloc[:0], calib, FeatureSet(3), config=SMALL)
    with pytest.raises(AsdError, match="calibration frame lacks column.*label_token"):
        train_predictor(train, calib.drop(columns="label_token"), FeatureSet(3), "token", SMALL)
    with pytest.raises(AsdError, match="unknown label mode"):
        train_predictor(train, calib, FeatureSet(3), "soft", SMALL)  # type: ignore[arg-type]


# -- metrics ------------------------------------------------------------------------------------
def test_metrics_on_hand_made_values():
    y = np.array([0, 1, 1, 1])
    p = np.array([0.1, 0.1, 0.9, 0.9])
    assert cal.brier(y, p) == pytest.approx((0.01 + 0.81 + 0.01 + 0.01) / 4)
    # bin of 0.1: mean p 0.1, rate 0.5; bin of 0.9: mean p 0.9, rate 1 → (2·0.4 + 2·0.1) / 4
    assert cal.ece(y, p) == pytest.approx(0.25)
    assert cal.auc(y, p) == pytest.approx(roc_auc_score(y, p))
    table = cal.reliability_table(y, p)
    assert len(table) == cal.N_BINS and table["count"].sum() == 4
    assert table.loc[1, "observed"] == 0.5 and math.isnan(table.loc[5, "observed"])
    assert cal.ece(np.array([1, 1]), np.array([1.0, 1.0])) == 0.0  # p = 1 falls in the last bin


def test_one_class_auc_is_nan_not_a_crash():
    y, p = np.ones(10), np.linspace(0, 1, 10)
    assert math.isnan(cal.auc(y, p))
    ci = cal.metric_ci("auc", y, p, n_resamples=50)
    assert math.isnan(ci.low) and math.isnan(ci.high)
    assert not math.isnan(cal.brier(y, p))


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(5, 60), ties=st.booleans())
def test_batched_auc_equals_sklearn(seed, n, ties):
    rng = np.random.default_rng(seed)
    y = np.r_[0, 1, rng.integers(0, 2, n - 2)]
    p = rng.random(n)
    if ties:
        p = np.round(p, 1)
    assert cal.auc_batched(y, p) == pytest.approx(roc_auc_score(y, p))
    assert cal.ece_batched(np.stack([y, y]), np.stack([p, p]))[1] == pytest.approx(cal.ece(y, p))


def test_bootstrap_intervals_contain_the_estimate_and_are_seeded():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    p = np.clip(0.3 * y + rng.random(300) * 0.7, 0, 1)
    for row in cal.metric_rows(y, p, n_resamples=300, seed=1):
        assert row["ci_low"] <= row["value"] <= row["ci_high"]
        assert row["ci_low"] < row["ci_high"]
    assert cal.metric_ci("ece", y, p, 200, seed=4) == cal.metric_ci("ece", y, p, 200, seed=4)


# -- baselines, comparison, ablation, figure ----------------------------------------------------
def test_compare_predictors_table(predictor, frames):
    train, _, test = frames
    table = cal.compare_predictors(predictor, train, test, n_resamples=100)
    assert set(table["method"]) == set(cal.METHODS)
    assert set(table["stage"]) == {"0", "1", "2", "drafts"}
    assert set(table["metric"]) == {"auc", "brier", "ece"}
    assert len(table) == 4 * len(cal.METHODS) * 3
    final_auc = table[(table["stage"] == "2") & (table["metric"] == "auc")]
    assert final_auc["value"].isna().all()  # the final stage is always accepted
    pooled = table[(table["stage"] == "drafts") & (table["metric"] == "auc")].set_index("method")
    assert pooled.loc["ensemble", "value"] > 0.75
    assert pooled.loc["logistic", "value"] > 0.75
    # the pooled rows leave the final stage (always accepted) out
    n = table[table["metric"] == "auc"].groupby("stage")["n"].first()
    assert n["drafts"] == n["0"] + n["1"]


def test_logistic_baseline_and_max_prob():
    data = separable(300, 8)
    model = cal.LogisticBaseline(3).fit(data.X, data.stages, data.y)
    p = model.predict(data.X, data.stages)
    assert cal.auc(data.y[data.stages == 1], p[data.stages == 1]) > 0.95
    assert (model.predict(data.X[:4], np.full(4, 2)) == 0.5).all()  # no rows: uninformed
    fs = FeatureSet(2)
    X = np.zeros((2, fs.n_features), dtype=np.float32)
    X[:, fs.names.index("out_mean_logprob")] = [0.0, math.log(0.25)]
    np.testing.assert_allclose(cal.max_prob_heuristic(X, fs.names), [1.0, 0.25], rtol=1e-6)


def test_feature_ablation_drops_each_group(frames):
    train, calib, test = frames
    config = TrainConfig(n_members=1, max_epochs=3, patience=2)
    table = cal.feature_ablation(train, calib, test, FeatureSet(3), config=config)
    fs = FeatureSet(3)
    assert list(pd.unique(table["dropped"])) == ["none", *fs.groups]
    n = table.drop_duplicates("dropped").set_index("dropped")["n_features"]
    assert n["none"] == fs.n_features
    assert n["output"] == fs.n_features - len(fs.groups["output"])


def test_plot_reliability_returns_a_figure():
    import matplotlib.pyplot as plt

    p, y = overconfident(200, 3)
    fig = cal.plot_reliability(y, {"raw": p, "half": 0.5 * p}, title="stage 0")
    assert len(fig.axes) == 2 and "ECE" in fig.axes[0].get_legend().get_texts()[1].get_text()
    plt.close(fig)


def test_hidden_features_survive_save_and_load(tmp_path):
    df = synthetic_frame(60, n_stages=2, seed=5, hidden_dim=40)
    train, calib = df[df["item_id"] < "item00040"], df[df["item_id"] >= "item00040"]
    config = TrainConfig(n_members=1, max_epochs=2)
    pred = train_predictor(train, calib, FeatureSet(2, use_hidden=True), config=config)
    assert pred.features.hidden is not None and pred.features.names[-1] == "hidden_pc31"
    loaded = QualityPredictor.load(pred.save(tmp_path / "h.pt"), FeatureSet(2, use_hidden=True))
    X = loaded.features.extract_frame(calib)
    np.testing.assert_array_equal(X, pred.features.extract_frame(calib))
    s = calib["stage"].to_numpy()
    np.testing.assert_array_equal(loaded.predict(X, s)[0], pred.predict(X, s)[0])
    with pytest.raises(AsdError, match="'hidden_pc00' in the file but '\\(none\\)' here"):
        QualityPredictor.load(tmp_path / "h.pt", FeatureSet(2))


def test_config_from_params_and_non_finite_features(frames):
    config = TrainConfig.from_params(
        {"predictor_hidden_sizes": [32], "predictor_members": 2, "seed": 1}
    )
    assert config == TrainConfig(hidden_sizes=(32,), n_members=2)
    train, calib, _ = frames
    broken = train.copy()
    broken.at[broken.index[3], "entropy"] = np.array([np.nan, 1.0], dtype=np.float32)
    with pytest.raises(AsdError, match="non-finite feature 'out_mean_entropy' for item"):
        train_predictor(broken, calib, FeatureSet(3), config=SMALL)


def test_calibration_is_kept_only_where_it_lowers_held_out_ece() -> None:
    from asd_core.learning.calibration import fit_stage_calibration

    rng = np.random.default_rng(0)
    truth = rng.random(4000)
    y = (rng.random(4000) < truth).astype(float)
    # over-confident scores: a temperature fixes them, and does better on held-out halves
    sharp = 1 / (1 + np.exp(-4 * np.log(truth / (1 - truth))))
    assert fit_stage_calibration(sharp, y, "temperature").method == "temperature"
    # scores that are already calibrated: nothing to gain, so the map is left out
    kept = [fit_stage_calibration(truth, y, m).method for m in ("temperature", "isotonic")]
    assert kept.count("identity") >= 1
    assert fit_stage_calibration(sharp[:3], y[:3], "temperature").method == "identity"
