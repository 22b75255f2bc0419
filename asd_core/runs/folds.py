"""Cross-fitting: the folds items are dealt into, and everything learned on the other folds for one fold and seed.

Items are dealt into folds by a stable hash of their id (``data.splits.fold_of``). For a fold, the
other folds' ``calibration`` rows calibrate, give the DP its beliefs and tune thresholds, and the
rest train; unlabelled pool prompts join every fold's training rows and are never evaluated.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from asd_core.ground import belief, stopping
from asd_core.learning.features import FeatureSet
from asd_core.learning.predictor import QualityPredictor, train_predictor
from asd_core.policy.adaptive import CachedObserver
from asd_core.policy.costs import size_based_costs
from asd_core.policy.fitting import (
    PolicyModel,
    Predictions,
    RiskSettings,
    fit_policy_model,
    predictions,
)
from asd_core.runs.eval_settings import CostMode, EvalSettings
from asd_core.runs.replay import ReplayData


@dataclasses.dataclass
class Fitted:
    """Everything learned for one fold × seed, and the observers that replay reads."""

    predictor: QualityPredictor
    # name → (policy model, rule, costs replacing the model's or None, cost mode)
    variants: dict[str, tuple[PolicyModel, stopping.Rule, belief.Costs | None, CostMode]]
    # "test" / "calibration" / "heuristic_test": calibrated predictions, looked up
    observers: dict[str, CachedObserver]


def heuristic_scores(df: pd.DataFrame, n_stages: int) -> np.ndarray:
    """(N, K) max-probability heuristic: exp(mean log-prob) of each stage's output."""
    df = df.sort_values(["item_id", "stage"], kind="stable")
    score = df["logprobs"].map(lambda v: float(np.exp(np.mean(v))) if len(v) else 1.0)
    return score.to_numpy(float).reshape(-1, n_stages)


def heuristic_predictions(df: pd.DataFrame, n_stages: int, prior: np.ndarray) -> Predictions:
    """The no-predictor ablation's "predictions": the heuristic in both views, no input head
    (every input looks the same before it runs, so the entry compares it with all held-out
    inputs)."""
    h = heuristic_scores(df, n_stages)
    ids = sorted(df["item_id"].unique().tolist())
    return Predictions(
        item_ids=ids,
        mean=np.stack([h, h]),
        var=np.zeros((2, *h.shape)),
        head=np.tile(prior, (len(h), 1)),
        head_var=np.zeros(h.shape),
    )


def _observer(pred: Predictions, data: ReplayData, input_stage: int) -> CachedObserver:
    return CachedObserver(pred, data.n_in[:, input_stage], data.n_out)


def fit_fold(
    splits: dict[str, pd.DataFrame],
    data: dict[str, ReplayData],
    settings: EvalSettings,
    K: int,
    seed: int,
) -> Fitted:
    """Train the predictor and fit every DP variant for one fold and seed."""
    src, sizes, B, s = (
        settings.cost_source,
        settings.stage_sizes,
        settings.n_bins,
        settings.smoothing,
    )
    predictor = train_predictor(
        splits["train"],
        splits["calibration"],
        FeatureSet(K),
        settings.label_mode,
        settings.train,
        seed,
    )
    held = predictions(predictor, splits["calibration"], K)
    test = predictions(predictor, splits["test"], K)

    def fit(
        risk: RiskSettings, smoothing: float, pred: Predictions, neighbours: int
    ) -> PolicyModel:
        return fit_policy_model(
            predictor,
            splits["train"],
            splits["calibration"],
            risk,
            B,
            smoothing,
            src,
            sizes,
            neighbours,
            held=pred,
        )

    model = fit(settings.risk, s, held, settings.neighbours)
    heur_held = heuristic_predictions(splits["calibration"], K, model.prior)
    n_held = len(heur_held.item_ids)
    by_size = settings.stage_sizes or tuple(float(k + 1) for k in range(K))
    variants: dict[str, tuple[PolicyModel, stopping.Rule, belief.Costs | None, CostMode]] = {
        "dp": (model, stopping.DP, None, "table"),
        "dp_no_risk": (
            fit(RiskSettings(alpha=0.0), s, held, settings.neighbours),
            stopping.DP,
            None,
            "table",
        ),
        "dp_no_smoothing": (
            fit(settings.risk, 0.0, held, settings.neighbours),
            stopping.DP,
            None,
            "table",
        ),
        "dp_no_predictor": (fit(settings.risk, s, heur_held, n_held), stopping.DP, None, "table"),
        "dp_size_costs": (model, stopping.DP, size_based_costs(by_size, B), "table"),
        "dp_no_restart": (model, stopping.NO_RESTART, None, "table"),
        "dp_myopic": (model, stopping.MYOPIC, None, "table"),
        "dp_sequential": (model, stopping.SEQUENTIAL_RULE, None, "table"),
        "dp_per_input": (model, stopping.DP, None, "per_input"),
    }
    s0 = predictor.config.input_stage
    observers = {
        "test": _observer(test, data["test"], s0),
        "calibration": _observer(held, data["calibration"], s0),
        "heuristic_test": _observer(
            heuristic_predictions(splits["test"], K, model.prior), data["test"], s0
        ),
    }
    return Fitted(predictor, variants, observers)
