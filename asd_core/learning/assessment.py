"""How good is a quality predictor: metrics, confidence intervals, baselines (docs/design.md §5, §10).

Metrics of probabilities ``p`` against 0/1 labels ``y``: AUC (NaN when the labels hold one
class), Brier score, expected calibration error over 15 equal-width bins, and the per-bin data of
a reliability diagram. Confidence intervals are percentile bootstraps over inputs
(:func:`asd_core.ground.stats.bootstrap_ci`, (y, p) resampled in pairs, seeded), evaluated on
all resamples at once by batched forms of the metrics (the AUC by its rank-sum identity).

Baselines on the same rows: logistic regression on the same (standardised) features, one model
per stage, and the max-probability heuristic exp(mean token log-prob) of the draft, i.e. the
geometric-mean probability of its tokens. :func:`compare_predictors` puts the ensemble, its
uncalibrated mean, the input-only head and both baselines side by side (stage × method × metric,
with CIs) for notebook 03; :func:`feature_ablation` retrains with one feature group dropped at
a time.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy import stats as sps
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from asd_core.ground import stats
from asd_core.ground.errors import AsdError
from asd_core.learning.ensemble import TrainConfig, fit_ensemble
from asd_core.learning.features import FeatureSet
from asd_core.learning.predictor import (
    LABEL_COLUMNS,
    LabelMode,
    QualityPredictor,
    entry_features,
    output_split,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

N_BINS = 15  # equal-width probability bins of ECE and the reliability diagram
Metric = Callable[[np.ndarray, np.ndarray], float]
BatchedMetric = Callable[..., np.ndarray]


# -- metrics ------------------------------------------------------------------------------------
# Each metric has a batched form over the last axis (``y``, ``p`` of shape (..., N) → (...,)) so
# that the bootstrap evaluates all resamples in a few array operations.
def auc_batched(y: np.ndarray, p: np.ndarray, axis: int = -1) -> np.ndarray:
    """AUC along ``axis`` by the rank-sum (Mann–Whitney) identity, ties at half; NaN for one class.

    Equal to ``roc_auc_score`` on each slice.
    """
    y = np.moveaxis(np.asarray(y, dtype=np.float64), axis, -1)
    ranks = sps.rankdata(np.moveaxis(np.asarray(p, dtype=np.float64), axis, -1), axis=-1)
    n_pos = y.sum(axis=-1)
    n_neg = y.shape[-1] - n_pos
    with np.errstate(invalid="ignore", divide="ignore"):
        return ((ranks * y).sum(axis=-1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def brier_batched(y: np.ndarray, p: np.ndarray, axis: int = -1) -> np.ndarray:
    """Mean squared error of ``p`` against 0/1 ``y`` along ``axis``."""
    return np.mean(
        (np.asarray(p, dtype=np.float64) - np.asarray(y, dtype=np.float64)) ** 2, axis=axis
    )


def _bin_sums(y: np.ndarray, p: np.ndarray, n_bins: int) -> tuple[np.ndarray, ...]:
    """Per equal-width bin of p along the last axis: (count, sum of p, sum of y), each (..., n_bins)."""
    p = np.asarray(p, dtype=np.float64)
    lead = p.shape[:-1]
    idx = np.minimum((p * n_bins).astype(np.int64), n_bins - 1)  # p = 1 joins the last bin
    # one bincount for every slice at once: slice r uses bins r·n_bins … r·n_bins + n_bins − 1
    flat = (idx + n_bins * np.arange(int(np.prod(lead))).reshape(*lead, 1)).ravel()
    size = n_bins * int(np.prod(lead))

    def per_bin(weights: np.ndarray | None) -> np.ndarray:
        return np.bincount(flat, weights, minlength=size).reshape(*lead, n_bins)

    y = np.broadcast_to(np.asarray(y, dtype=np.float64), p.shape)
    return per_bin(None), per_bin(p.ravel()), per_bin(y.ravel())


def ece_batched(y: np.ndarray, p: np.ndarray, axis: int = -1, n_bins: int = N_BINS) -> np.ndarray:
    """Expected calibration error along ``axis``: Σ_b (n_b / N) · |mean p in b − rate of y = 1 in b|."""
    y = np.moveaxis(np.asarray(y), axis, -1)
    p = np.moveaxis(np.asarray(p), axis, -1)
    _, sum_p, sum_y = _bin_sums(y, p, n_bins)
    return np.abs(sum_p - sum_y).sum(axis=-1) / p.shape[-1]


def auc(y: np.ndarray, p: np.ndarray) -> float:
    """Area under the ROC curve of scores ``p`` (N,) for labels ``y`` (N,); NaN with one class."""
    y = np.asarray(y)
    if len(np.unique(y)) < 2:
        return math.nan
    return float(roc_auc_score(y, p))


def brier(y: np.ndarray, p: np.ndarray) -> float:
    """Mean squared error of probabilities ``p`` (N,) against 0/1 labels ``y`` (N,)."""
    return float(brier_batched(y, p)) if len(y) else math.nan


def ece(y: np.ndarray, p: np.ndarray, n_bins: int = N_BINS) -> float:
    """Expected calibration error over ``n_bins`` equal-width bins of ``p`` (N,)."""
    return float(ece_batched(y, p, n_bins=n_bins)) if len(y) else math.nan


def reliability_table(y: np.ndarray, p: np.ndarray, n_bins: int = N_BINS) -> pd.DataFrame:
    """Reliability-diagram data: one row per bin.

    Columns: bin_low, bin_high (edges), mean_predicted, observed (frequency of y = 1; NaN for
    an empty bin) and count.
    """
    count, sum_p, sum_y = _bin_sums(y, p, n_bins)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return pd.DataFrame(
            {
                "bin_low": edges[:-1],
                "bin_high": edges[1:],
                "mean_predicted": np.where(count > 0, sum_p / count, np.nan),
                "observed": np.where(count > 0, sum_y / count, np.nan),
                "count": count,
            }
        )


# name → (point estimate, batched form for the bootstrap)
METRICS: dict[str, tuple[Metric, BatchedMetric]] = {
    "auc": (auc, auc_batched),
    "brier": (brier, brier_batched),
    "ece": (ece, ece_batched),
}


def metric_ci(
    metric: str,
    y: np.ndarray,
    p: np.ndarray,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> stats.CI:
    """Percentile bootstrap CI of metric ``metric`` ("auc", "brier", "ece") over inputs.

    (y, p) pairs are resampled together (:func:`asd_core.ground.stats.bootstrap_ci`). Resamples
    where the metric is undefined (AUC of a one-class resample) are left out; with fewer than 2
    inputs, or no defined resample, the interval is (NaN, NaN).
    """
    y = np.asarray(y)
    p = np.asarray(p)
    if len(y) < 2 or n_resamples < 1:
        return stats.CI(METRICS[metric][0](y, p), math.nan, math.nan, confidence, "none")
    return stats.bootstrap_ci(
        METRICS[metric][1],
        y,
        p,
        paired=True,
        confidence=confidence,
        n_resamples=n_resamples,
        seed=seed,
        method="percentile",
        drop_undefined=True,
        batch_elements=2_000_000,
    )


def metric_rows(
    y: np.ndarray, p: np.ndarray, n_resamples: int = 1000, seed: int = 0
) -> list[dict[str, float | str]]:
    """One record per metric: metric, value, ci_low, ci_high (CIs NaN when n_resamples = 0)."""
    rows: list[dict[str, float | str]] = []
    for name, (point, _) in METRICS.items():
        ci = metric_ci(name, y, p, n_resamples, seed=seed)
        rows.append({"metric": name, "value": point(y, p), "ci_low": ci.low, "ci_high": ci.high})
    return rows


# -- baselines ----------------------------------------------------------------------------------
class LogisticBaseline:
    """Logistic regression on standardised features, one model per stage.

    A stage whose training labels hold one class predicts that class's rate.
    """

    def __init__(self, n_stages: int):
        self.n_stages = n_stages
        self.models: list[Pipeline | float] = []  # a fitted pipeline, or a constant probability

    def fit(self, X: np.ndarray, stages: np.ndarray, y: np.ndarray) -> LogisticBaseline:
        self.models = []
        for k in range(self.n_stages):
            rows = stages == k
            if len(np.unique(y[rows])) < 2:
                self.models.append(float(y[rows].mean()) if rows.any() else 0.5)
                continue
            model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
            self.models.append(model.fit(X[rows], y[rows]))
        return self

    def predict(self, X: np.ndarray, stages: np.ndarray) -> np.ndarray:
        """(N,) P(accept) of rows ``X`` (N, F) of stages (N,)."""
        out = np.empty(len(X), dtype=np.float64)
        for k in np.unique(stages):
            rows = stages == k
            model = self.models[int(k)]
            if isinstance(model, float):
                out[rows] = model
            else:
                out[rows] = model.predict_proba(X[rows])[:, 1]
        return out


def max_prob_heuristic(X: np.ndarray, names: Sequence[str]) -> np.ndarray:
    """(N,) exp(mean token log-prob): the geometric-mean probability of the draft's tokens."""
    return np.exp(X[:, list(names).index("out_mean_logprob")].astype(np.float64))


# -- side by side -------------------------------------------------------------------------------
METHODS = ("ensemble", "ensemble_uncalibrated", "logistic", "max_prob", "input_only")


def score_methods(
    predictor: QualityPredictor, train_df: pd.DataFrame, test_df: pd.DataFrame
) -> pd.DataFrame:
    """Every method's P(accept) for each labelled test row.

    Columns: item_id, stage, y, ensemble_var, then one column per name in :data:`METHODS`
    (``input_only`` is NaN for inputs without a row of the input head's stage). The logistic
    baseline is fitted on ``train_df``.
    """
    column = LABEL_COLUMNS[predictor.label_mode]
    feats = predictor.features
    train = output_split(train_df, feats, column)
    has_label = test_df[column].notna().to_numpy()
    labelled = test_df[has_label]
    test = output_split(labelled, feats, column)
    mean, var = predictor.predict(test.X, test.stages)
    raw, _ = predictor.output_model.predict(test.X, test.stages, calibrated=False)
    # an input's prompt features may sit on a row whose own label is missing
    X_in, found = (
        a[has_label] for a in entry_features(test_df, feats, predictor.config.input_stage)
    )
    entry = np.full(len(labelled), np.nan)
    if found.any():
        all_heads, _ = predictor.predict_inputs(X_in[found])
        entry[found] = all_heads[np.arange(found.sum()), test.stages[found]]
    return pd.DataFrame(
        {
            "item_id": labelled["item_id"].to_numpy(),
            "stage": test.stages,
            "y": test.y.astype(np.int64),
            "ensemble_var": var,
            "ensemble": mean,
            "ensemble_uncalibrated": raw,
            "logistic": LogisticBaseline(feats.n_stages)
            .fit(train.X, train.stages, train.y)
            .predict(test.X, test.stages),
            "max_prob": max_prob_heuristic(test.X, feats.names),
            "input_only": entry,
        }
    )


def _by_stage(stages: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """(label, row mask) per stage present, then "drafts": every stage but the last pooled.

    The last stage is the reference (its label is always 1), so pooling it in would add a block
    of certain positives that any score ranks well and inflate the pooled AUC.
    """
    groups = [(str(int(k)), stages == k) for k in np.unique(stages)]
    return [*groups, ("drafts", stages < stages.max())]


def compare_predictors(
    predictor: QualityPredictor,
    train_df: pd.DataFrame,
    test_df: pd.DataFrame,
    n_resamples: int = 1000,
    seed: int = 0,
    scores: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """AUC, Brier and ECE with bootstrap 95% CIs of every method, per stage and pooled.

    Columns: stage ("0", "1", …, "drafts" = every stage but the last), method, metric, value, ci_low, ci_high, n (inputs),
    positive_rate. AUC is NaN where the labels hold one class (the final stage). Pass
    ``scores`` from :func:`score_methods` to reuse them.
    """
    if scores is None:
        scores = score_methods(predictor, train_df, test_df)
    if scores.empty:
        raise AsdError("the test frame has no labelled rows to evaluate the predictor on")
    records = []
    stages = scores["stage"].to_numpy()
    for stage, rows in _by_stage(stages):
        for method in METHODS:
            part = scores.loc[rows, ["y", method]].dropna()
            y, p = part["y"].to_numpy(), part[method].to_numpy(dtype=np.float64)
            base = {"stage": stage, "method": method, "n": len(y)}
            base["positive_rate"] = float(y.mean()) if len(y) else math.nan
            for record in metric_rows(y, p, n_resamples, seed):
                records.append({**base, **record})
    cols = ["stage", "method", "metric", "value", "ci_low", "ci_high", "n", "positive_rate"]
    return pd.DataFrame.from_records(records)[cols]


def feature_ablation(
    train_df: pd.DataFrame,
    calib_df: pd.DataFrame,
    test_df: pd.DataFrame,
    features: FeatureSet,
    label_mode: LabelMode = "answer",
    config: TrainConfig | None = None,
    seed: int = 0,
    n_resamples: int = 0,
) -> pd.DataFrame:
    """Retrain the (calibrated) output ensemble with each feature group dropped in turn.

    Columns: dropped ("none" = all features, else the group name), n_features, stage, metric,
    value, ci_low, ci_high (CIs only when ``n_resamples`` > 0).
    """
    config = config or TrainConfig()
    column = LABEL_COLUMNS[label_mode]
    if features.use_hidden and features.hidden is None:
        features = features.fit_hidden(train_df)
    train, calib, test = (
        output_split(df, features, column) for df in (train_df, calib_df, test_df)
    )
    if len(test) == 0:
        raise AsdError("the test frame has no labelled rows to evaluate the ablation on")
    names = features.names
    records = []
    for dropped, group in [("none", ()), *features.groups.items()]:
        keep = [i for i, name in enumerate(names) if name not in group]
        ensemble = fit_ensemble(
            train.subset(keep), calib.subset(keep), features.n_stages, config, seed
        )
        p, _ = ensemble.predict(test.X[:, keep], test.stages)
        for stage, rows in _by_stage(test.stages):
            for record in metric_rows(test.y[rows], p[rows], n_resamples, seed):
                records.append(
                    {"dropped": dropped, "n_features": len(keep), "stage": stage, **record}
                )
    return pd.DataFrame.from_records(records)


# -- figure -------------------------------------------------------------------------------------
def plot_reliability(
    y: np.ndarray, probs: Mapping[str, np.ndarray], n_bins: int = N_BINS, title: str = ""
) -> Figure:
    """Reliability diagram of one or more methods on the same labels ``y`` (N,).

    Top: observed frequency vs mean predicted probability per bin (the diagonal is perfect
    calibration), legend with each method's ECE. Bottom: inputs per bin.
    """
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(5, 5.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    top.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfect")
    width = 1.0 / n_bins / max(len(probs), 1)
    for i, (method, p) in enumerate(probs.items()):
        table = reliability_table(y, p, n_bins)
        shown = table[table["count"] > 0]
        top.plot(
            shown["mean_predicted"],
            shown["observed"],
            marker="o",
            ms=4,
            label=f"{method} (ECE {ece(y, p, n_bins):.3f})",
        )
        bottom.bar(table["bin_low"] + (i + 0.5) * width, table["count"], width=width, label=method)
    top.set(ylabel="observed acceptance rate", xlim=(0, 1), ylim=(0, 1), title=title)
    top.legend(fontsize=7, loc="upper left")
    bottom.set(xlabel="predicted probability", ylabel="inputs")
    fig.tight_layout()
    return fig
