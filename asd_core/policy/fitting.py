"""From a trained predictor to everything the DP needs: risk-adjusted beliefs, belief tables and costs counted on held-out inputs.

Honest beliefs: the belief states, their values and how they move are counted on *held-out* inputs
(the calibration split: rows the ensemble never trained on), with exactly the features each
decision has — after an entry, a skip or a restart the verification feature is blank (view
``DIRECT``), after a sequential step it is present (``SEQUENTIAL``). Costs come from the same
inputs; continuing a draft is costed per belief bin. :func:`fit_policy_model` returns them as one
:class:`PolicyModel`, which :class:`~asd_core.policy.adaptive.AdaptivePolicy` decides with.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from asd_core.ground import belief, stopping
from asd_core.ground.config import Params, default
from asd_core.ground.errors import AsdError
from asd_core.learning.features import VERIFICATION_NAMES, previous_acceptance
from asd_core.learning.predictor import LABEL_COLUMNS, QualityPredictor, entry_features
from asd_core.policy.costs import (
    CostSource,
    InputCostModel,
    by_item,
    fit_input_costs,
    item_ids,
    per_input_column,
    per_input_costs,
)


@dataclass(frozen=True)
class RiskSettings:
    """Bayesian shrinkage of the ensemble's predictions (defaults: the parameters')."""

    alpha: float = default("risk_alpha")  # prior strength in pseudo-observations; 0 = none
    beta: float = default("risk_beta")  # 0.5: posterior mean; lower: that quantile (risk-averse)
    n_max: float = default("risk_n_max")  # cap on the effective sample size

    @classmethod
    def from_params(cls, params: Params) -> RiskSettings:
        return cls(params.risk_alpha, params.risk_beta, params.risk_n_max)


@dataclass
class PolicyModel:
    """Everything a DP policy needs: the predictor and what was counted on held-out inputs."""

    predictor: QualityPredictor  # calibrated ensemble + input-only head
    risk: RiskSettings  # shrinkage applied to every prediction
    prior: np.ndarray  # (K,) μ_k, base acceptance rate of each stage on the training split
    beliefs: belief.BeliefModel  # bins, bin values and moves (held-out inputs)
    costs: belief.Costs  # normalised move costs over every held-out input (all tasks pooled)
    # per task: its held-out inputs' costs, normalised by that task's deepest stage, so that λ
    # means the same on a one-token multiple-choice answer and a 300-token derivation
    task_costs: dict[str, belief.Costs]
    held_out: stopping.HeldOut  # the held-out inputs the entry is decided from
    scratch_s: np.ndarray  # (K,) mean seconds of each stage from scratch (held-out inputs)
    escalate_s: np.ndarray  # (K, K) mean seconds to continue k → j (verify + decode), j > k
    neighbours: int = 25  # held-out inputs the entry compares an input with
    input_costs: InputCostModel | None = None  # for cost_mode "per_input"
    info: dict[str, Any] = field(default_factory=dict)  # sizes, for reports

    @property
    def n_stages(self) -> int:
        return len(self.prior)

    @property
    def n_bins(self) -> int:
        return self.beliefs.n_bins


def adjusted(
    prior: np.ndarray, risk: RiskSettings, mean: np.ndarray, var: np.ndarray, stage: np.ndarray
) -> np.ndarray:
    """Risk-adjusted beliefs p̃ of predictions (mean, var) for the given stages, one shape."""
    return belief.risk_adjust(
        np.clip(mean, 0.0, 1.0),
        np.maximum(var, 0.0),
        prior[stage],
        risk.alpha,
        risk.beta,
        risk.n_max,
    )


@dataclass(frozen=True)
class Predictions:
    """The predictor's outputs for N inputs on which every stage ran, items sorted by id."""

    item_ids: list[str]  # (N,)
    mean: np.ndarray  # (2, N, K) calibrated P(accept) after each stage, per view (DIRECT, SEQ)
    var: np.ndarray  # (2, N, K) ensemble variance of ``mean``
    head: np.ndarray  # (N, K) the input-only head's P(accept_k) before anything runs
    head_var: np.ndarray  # (N, K) its variance

    def beliefs(self, prior: np.ndarray, risk: RiskSettings) -> np.ndarray:
        """(2, N, K) risk-adjusted beliefs p̃ per view."""
        stages = np.broadcast_to(np.arange(self.mean.shape[2]), self.mean.shape)
        return adjusted(prior, risk, self.mean, self.var, stages)


def predictions(predictor: QualityPredictor, df: pd.DataFrame, n_stages: int) -> Predictions:
    """:class:`Predictions` of a generations frame: both views of every output, and the head."""
    df = by_item(df, n_stages)
    X = predictor.features.extract_frame(df)
    stages = df["stage"].to_numpy(np.int64)
    sequential = predictor.predict(X, stages)
    cols = [predictor.features.names.index(n) for n in VERIFICATION_NAMES]
    X[:, cols] = previous_acceptance(1, math.nan)  # as a stage entered directly sees it
    direct = predictor.predict(X, stages)
    head, head_var = entry_predictions(predictor, df, n_stages)
    return Predictions(
        item_ids=item_ids(df),
        mean=np.stack([direct[0], sequential[0]]).reshape(2, -1, n_stages),
        var=np.stack([direct[1], sequential[1]]).reshape(2, -1, n_stages),
        head=head,
        head_var=head_var,
    )


def entry_predictions(
    predictor: QualityPredictor, df: pd.DataFrame, n_stages: int
) -> tuple[np.ndarray, np.ndarray]:
    """(N, K) input-only P(accept_k) and (N, K) variance per input, items sorted.

    The head reads the prompt as stage ``input_stage`` tokenised it, so it looks that row up.
    """
    df = by_item(df, n_stages)
    X, found = entry_features(df, predictor.features, predictor.config.input_stage)
    if not found.all():
        raise AsdError("generations frame: some inputs lack the row the entry head reads")
    first = (df["stage"] == 0).to_numpy()  # one row per item, in item order
    return predictor.predict_inputs(X[first])


def fit_policy_model(
    predictor: QualityPredictor,
    train_df: pd.DataFrame,
    held_df: pd.DataFrame,
    risk: RiskSettings,
    n_bins: int = 10,
    smoothing: float = 1.0,
    cost_source: CostSource = "measured",
    sizes: Sequence[float] = (),
    neighbours: int = 25,
    held: Predictions | None = None,
) -> PolicyModel:
    """Priors from the training split; beliefs, costs and the entry's data from held-out rows.

    Args:
        predictor: trained on ``train_df`` (never on ``held_df``).
        train_df: the predictor's training rows (base rates μ_k, per-input cost fit).
        held_df: held-out rows on which every stage ran (the calibration split).
        held: ``predictions(predictor, held_df, K)`` when already computed.

    Long because: beliefs, costs per task and the entry's held-out inputs come from one pass.
    """
    K = predictor.features.n_stages
    train = by_item(train_df, K)
    label = LABEL_COLUMNS[predictor.label_mode]
    prior = train.groupby("stage")[label].mean().reindex(range(K)).to_numpy(float)
    prior = np.clip(np.nan_to_num(prior, nan=0.5), 0.0, 1.0)
    df = by_item(held_df, K)
    pred = held if held is not None else predictions(predictor, df, K)
    p_tilde = pred.beliefs(prior, risk)
    labels = per_input_column(df, label, K)
    beliefs = belief.estimate_beliefs(
        p_tilde[belief.SEQUENTIAL], p_tilde[belief.DIRECT], labels, n_bins, smoothing
    )
    bins = np.stack([beliefs.bins(p_tilde[v], v) for v in range(belief.N_VIEWS)])
    scratch, esc = per_input_costs(df, K, cost_source, sizes)
    costs = belief.estimate_costs(scratch, esc, list(bins), n_bins, smoothing)
    tasks = df["task"].to_numpy()[::K].astype(str)
    task_costs, unit = {}, np.ones(len(tasks))
    for task in sorted(set(tasks)):
        rows = tasks == task
        task_costs[task] = belief.estimate_costs(
            scratch[rows], esc[rows], [b[rows] for b in bins], n_bins, smoothing
        )
        unit[rows] = scratch[rows, -1].mean()
    upper = np.triu(np.ones((K, K), bool), 1)  # only moves to deeper stages exist
    escalate_s = np.zeros((K, K))
    escalate_s[upper] = esc[:, upper].mean(axis=0)
    return PolicyModel(
        predictor=predictor,
        risk=risk,
        prior=prior,
        beliefs=beliefs,
        costs=costs,
        task_costs=task_costs,
        held_out=stopping.HeldOut(
            pred.head, bins, labels, scratch / unit[:, None], esc / unit[:, None, None], tasks
        ),
        scratch_s=scratch.mean(axis=0),
        escalate_s=escalate_s,
        neighbours=neighbours,
        input_costs=fit_input_costs(train, K, cost_source, sizes),
        info={"train_inputs": len(train) // K, "held_out_inputs": len(df) // K},
    )
