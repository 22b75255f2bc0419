"""Cross-fitting: the folds items are dealt into, and everything learned on the other folds for one fold and seed.

Items are dealt into folds by a stable hash of their id (``data.splits.fold_of``). For a fold, the
other folds' ``calibration`` rows calibrate, give the DP its beliefs and tune thresholds, and the
rest train; unlabelled pool prompts join every fold's training rows and are never evaluated.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from asd_core.data.splits import fold_of, is_pool_id
from asd_core.ground import belief, logs, stopping
from asd_core.ground.errors import AsdError
from asd_core.ground.files import atomic_write_text
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

log = logging.getLogger(__name__)


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


def fold_frames(generations: pd.DataFrame, n_folds: int) -> list[dict[str, pd.DataFrame]]:
    """Per fold, its ``train``, ``calibration`` (both from the other folds) and ``test`` rows.

    Unlabelled pool prompts join every fold's training rows and are never tested.
    """
    pool = generations["item_id"].map(lambda i: is_pool_id(str(i))).to_numpy(bool)
    extra_train, generations = generations[pool], generations[~pool]
    fold = generations["item_id"].map(lambda i: fold_of(str(i), n_folds)).to_numpy()
    for f in range(n_folds):
        if not (fold == f).any():
            raise AsdError(f"eval_folds: fold {f} of {n_folds} holds no item; use fewer folds")
    out = []
    for f in range(n_folds):
        rest = generations[fold != f]
        parts = {
            "train": pd.concat([rest[rest["split"] != "calibration"], extra_train]),
            "calibration": rest[rest["split"] == "calibration"],
            "test": generations[fold == f],
        }
        for name, part in parts.items():
            if part.empty:
                raise AsdError(f"evaluation: fold {f} leaves no '{name}' rows")
        out.append(parts)
    return out


def fold_predictor(
    splits: dict[str, pd.DataFrame], settings: EvalSettings, K: int, seed: int
) -> QualityPredictor:
    """The predictor of one fold and seed, trained on the fold's train and calibration rows."""
    return train_predictor(
        splits["train"],
        splits["calibration"],
        FeatureSet(K),
        settings.label_mode,
        settings.train,
        seed,
    )


def fit_fold(
    splits: dict[str, pd.DataFrame],
    data: dict[str, ReplayData],
    settings: EvalSettings,
    K: int,
    seed: int,
    predictor: QualityPredictor | None = None,
) -> Fitted:
    """Fit every DP variant for one fold and seed (training the predictor unless given).

    Long because: the nine DP variants are listed in one table, each with its rule and costs.
    """
    src, sizes, B, s = (
        settings.cost_source,
        settings.stage_sizes,
        settings.n_bins,
        settings.smoothing,
    )
    predictor = predictor or fold_predictor(splits, settings, K, seed)
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


# -- the fold predictors notebook 03 trains and notebook 04 loads --------------------------------
MANIFEST = "fold_predictors.json"


def _items_digest(frame: pd.DataFrame) -> str:
    ids = sorted(frame["item_id"].astype(str).unique())
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16]


def predictors_manifest(
    generations: pd.DataFrame, settings: EvalSettings, K: int
) -> dict[str, Any]:
    """What the fold predictors depend on, compared key by key when they are loaded."""
    frames = fold_frames(generations, settings.folds)
    features = FeatureSet(K)
    return {
        "n_stages": K,
        "folds": settings.folds,
        "seeds": list(settings.seeds),
        "label_mode": settings.label_mode,
        "train": dataclasses.asdict(settings.train),
        "features": list(features.names),
        "feature_version": features.version,
        "items": {
            **{
                str(f): {p: _items_digest(parts[p]) for p in ("train", "calibration")}
                for f, parts in enumerate(frames)
            },
        },
    }


def predictor_file(folder: Path, fold: int, seed: int) -> Path:
    """Fold ``fold``'s predictor for ``seed``."""
    return folder / f"fold{fold}-seed{seed}.pt"


def train_fold_predictors(
    generations: pd.DataFrame,
    settings: EvalSettings,
    K: int,
    folder: str | os.PathLike[str],
    progress: bool = True,
) -> Path:
    """Train and save the predictor of every fold × seed, then the manifest (written last, so
    a killed run leaves no manifest and the next one trains again)."""
    folder = Path(folder)
    (folder / MANIFEST).unlink(missing_ok=True)
    frames = fold_frames(generations, settings.folds)
    work = [(f, seed) for f in range(settings.folds) for seed in settings.seeds]
    done = logs.Progress(log, "fold predictors", len(work), unit="folds × seeds", every_s=0.0)
    for f, seed in tqdm(work, desc="fold predictors (fold × seed)", disable=not progress):
        fold_predictor(frames[f], settings, K, seed).save(predictor_file(folder, f, seed))
        done.update()
    manifest = predictors_manifest(generations, settings, K)
    atomic_write_text(folder / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    return folder


def load_fold_predictors(
    folder: str | os.PathLike[str], generations: pd.DataFrame, settings: EvalSettings, K: int
) -> dict[tuple[int, int], QualityPredictor]:
    """The fold predictors notebook 03 saved, by (fold, seed); refuses (one line naming the key)
    a folder made for other stages, features, folds, seeds, labels, training settings or items."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise AsdError(f"{path}: no fold predictors here (run notebook 03 first)")
    saved = json.loads(path.read_text(encoding="utf-8"))
    # through JSON, as it was saved: tuples become lists
    wanted = json.loads(json.dumps(predictors_manifest(generations, settings, K)))
    for key, value in wanted.items():
        if saved.get(key) != value:
            raise AsdError(
                f"{path}: key '{key}' differs from this run's ({saved.get(key)!r} there); "
                "run notebook 03 again"
            )
    features = FeatureSet(K)
    keys = [(f, seed) for f in range(settings.folds) for seed in settings.seeds]
    return {
        key: QualityPredictor.load(predictor_file(folder, *key), features, settings.label_mode)
        for key in keys
    }
