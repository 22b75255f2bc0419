"""The learned policy: predictor → risk adjustment → belief state → DP table (DESIGN §5–§7).

:func:`fit_policy_model` turns a trained :class:`~asd_core.learning.predictor.QualityPredictor` into
everything the solver needs. Honest beliefs: the belief states, their values and how they move
are counted on *held-out* inputs (the calibration split: rows the ensemble never trained on),
with exactly the features each decision has — after an entry, a skip or a restart the
verification feature is blank (view ``DIRECT``), after a sequential step it is present
(``SEQUENTIAL``). Costs come from the same inputs; continuing a draft is costed per belief bin.

:class:`AdaptivePolicy` makes the pipeline's decisions for one λ: the entry compares, per
stage, what entering there did for the most similar held-out inputs (by the input-only head's
predictions for every stage), then each step is a table lookup. It reads predictions through
an *observer*: :class:`LiveObserver` computes them from live outputs (the online pipeline),
:class:`CachedObserver` looks them up (replay), so both drive the same policy object.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import pandas as pd

from asd_core.decoding.protocol import Move, PathLike, RequestLike, view_of
from asd_core.ground import belief, stopping
from asd_core.ground.errors import AsdError
from asd_core.learning.features import VERIFICATION_NAMES, StageView, previous_acceptance
from asd_core.learning.predictor import LABEL_COLUMNS, QualityPredictor, entry_features
from asd_core.models.base import VERIFY_BLOCK
from asd_core.models.common import chat_prompt_ids

# seconds as measured in data generation, seconds predicted by the cost model fitted on
# single-sequence runs (notebook 01; see with_model_costs), or a deterministic size × tokens proxy
CostSource = Literal["measured", "model", "flops"]


@dataclass(frozen=True)
class RiskSettings:
    """Bayesian shrinkage of the ensemble's predictions (DESIGN §6)."""

    alpha: float = 10.0  # prior strength in pseudo-observations; 0 = no shrinkage
    beta: float = 0.5  # 0.5: posterior mean; lower: that quantile (risk-averse)
    n_max: float = 1000.0  # cap on the effective sample size


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


# -- measured costs ------------------------------------------------------------------------------
def _by_item(df: pd.DataFrame, n_stages: int) -> pd.DataFrame:
    """``df`` sorted by (item, stage), checked to hold every stage of every item once."""
    if len(df) == 0:
        raise AsdError("the generations frame is empty: no (input, stage) rows")
    counts = df.groupby("item_id")["stage"].nunique()
    if (counts != n_stages).any() or len(df) != len(counts) * n_stages:
        bad = counts[counts != n_stages].index[:1].tolist() or ["(duplicated rows)"]
        raise AsdError(
            f"generations frame: every item needs exactly one row per stage 0..{n_stages - 1}; "
            f"see item {bad[0]}"
        )
    return df.sort_values(["item_id", "stage"], kind="stable").reset_index(drop=True)


def per_input_costs(
    df: pd.DataFrame, n_stages: int, source: CostSource = "measured", sizes: Sequence[float] = ()
) -> tuple[np.ndarray, np.ndarray]:
    """Cost per input: (N, K) from scratch and (N, K, K) escalations k → j (j > k).

    ``source`` "measured" (the default) gives seconds; "flops" a deterministic proxy for
    profiles whose timings are noise (``smoke``): see :func:`flops_costs`.

    Escalating y_k to stage j costs the verification pass (measured, ``verify_s_by[j]`` of the
    stage-k row) plus one decode step of M_j per token it writes after the accepted prefix,
    at this input's own decode rate of M_j (its from-scratch generation time after prefill per
    token). Items come in sorted order (see :func:`item_ids`).
    """
    if source == "flops":
        return flops_costs(df, n_stages, sizes)
    df = _by_item(df, n_stages)
    n_out = _per_input(df, "n_out", n_stages)
    accepted = _per_pair(df, "accepted_by", n_stages)
    if source == "model":
        missing = [c for c in MODEL_COST_COLUMNS if c not in df.columns]
        if missing:
            raise AsdError(
                f"cost_source 'model': the generations lack '{missing[0]}'; add the cost model "
                "of notebook 01 first (adaptive.with_model_costs)"
            )
        lat, rate = (_per_input(df, c, n_stages) for c in ("model_latency_s", "model_decode_s"))
        return lat, _escalations(
            _per_pair(df, "model_verify_s_by", n_stages), rate, n_out, accepted
        )
    lat, prefill = (_per_input(df, c, n_stages) for c in ("latency_s", "prefill_s"))
    rate = (lat - prefill) / np.maximum(n_out - 1, 1)  # (N, K) s per decoded token
    verify = _per_pair(df, "verify_s_by", n_stages)
    return lat, _escalations(verify, rate, n_out, accepted)


# -- costs from the fitted cost model ------------------------------------------------------------
MODEL_COST_COLUMNS = ("model_latency_s", "model_decode_s", "model_verify_s_by")
_COEFFICIENTS = (
    "a_s",
    "b_s_per_in_token",
    "d_s_per_out_token",
    "score_a_s",
    "score_b_s_per_token",
)


def scored_tokens(drafted: np.ndarray, accepted: np.ndarray) -> np.ndarray:
    """Draft tokens a verification pass feeds: up to the end of the block of
    :data:`VERIFY_BLOCK` rows holding the first mismatch, the whole draft if all is accepted."""
    blocks = (np.maximum(accepted, 0) // VERIFY_BLOCK + 1) * VERIFY_BLOCK
    return np.minimum(drafted, blocks - 1)


def with_model_costs(
    df: pd.DataFrame, cost_model: pd.DataFrame, stage_names: Sequence[str]
) -> pd.DataFrame:
    """``df`` with each row's costs as the cost model of notebook 01 predicts them.

    ``cost_model`` is ``tables/cost_model.csv`` (one row per stage, fitted on runs of one
    sequence at a time); ``stage_names`` maps stage indices to its ``stage`` column. Adds
    ``model_latency_s`` (a + b·n_in + d·n_out), ``model_decode_s`` (d, s per token) and
    ``model_verify_s_by`` (per verifying stage j: a'_j + b'_j·(n_in_j + tokens scored), NaN
    where j does not verify this row): what ``cost_source: model`` replays with, so per-input
    costs stay those of one sequence alone when generation ran batched.
    """
    table = cost_model.set_index("stage")
    for name in stage_names:
        if name not in table.index:
            raise AsdError(f"cost model: no row for stage '{name}' (re-run notebook 01)")
    coef = table.loc[list(stage_names), list(_COEFFICIENTS)].to_numpy(float)  # (K, 5)
    a, b, d, sa, sb = coef.T
    K = len(stage_names)
    out = _by_item(df, K)
    k = out["stage"].to_numpy()
    n_in, n_out = out["n_in"].to_numpy(float), out["n_out"].to_numpy(float)
    own_in = _per_input(out, "n_in", K)  # (N, K): each verifier's own prompt length
    drafted, accepted = _per_pair(out, "drafted_by", K), _per_pair(out, "accepted_by", K)
    scored = scored_tokens(drafted, accepted)
    verify = sa + sb * (own_in[:, None, :] + scored)  # (N, K, K): row k's draft verified by j
    verify = np.where(drafted >= 0, verify, np.nan)
    out = out.assign(
        model_latency_s=a[k] + b[k] * n_in + d[k] * n_out,
        model_decode_s=d[k],
        model_verify_s_by=list(verify.reshape(-1, K)),
    )
    return out


def costed(
    df: pd.DataFrame,
    cost_source: CostSource,
    cost_model_csv: str | os.PathLike[str],
    stage_names: Sequence[str],
) -> pd.DataFrame:
    """``df`` ready for ``cost_source``: with :func:`with_model_costs`' columns when it is
    "model" (the cost model read from ``cost_model_csv``, notebook 01's table), else as is."""
    if cost_source != "model":
        return df
    path = Path(cost_model_csv)
    if not path.is_file():
        raise AsdError(f"{path}: no cost model (run notebook 01_profiling first)")
    out = with_model_costs(df, pd.read_csv(path), stage_names)
    out.attrs = dict(df.attrs)
    return out


def cost_model_check(df: pd.DataFrame, stage_names: Sequence[str]) -> pd.DataFrame:
    """How well the cost model predicts the rows timed one sequence at a time (``gen_batch`` 1).

    One row per stage and kind — ``generation``, and ``verification`` of shallower stages'
    drafts by that stage — with the number of timings, R² of measured on predicted seconds
    and the median absolute relative error. ``df`` carries :func:`with_model_costs`' columns.
    """
    solo = df[df["gen_batch"] == 1]
    stage = solo["stage"].to_numpy()
    gen_y, gen_hat = solo["latency_s"].to_numpy(float), solo["model_latency_s"].to_numpy(float)
    rows = [
        _fit_row(name, "generation", gen_y[stage == j], gen_hat[stage == j])
        for j, name in enumerate(stage_names)
    ]
    K = len(stage_names)

    def by_verifier(column: str) -> np.ndarray:
        values = [np.asarray(v, float) for v in solo[column]]
        return np.stack(values) if values else np.zeros((0, K))

    ver_y, ver_hat = by_verifier("verify_s_by"), by_verifier("model_verify_s_by")
    for j in range(1, K):
        ok = np.isfinite(ver_y[:, j]) & np.isfinite(ver_hat[:, j])
        rows.append(_fit_row(stage_names[j], "verification", ver_y[ok, j], ver_hat[ok, j]))
    return pd.DataFrame(rows)


def check_cost_model(
    df: pd.DataFrame, cost_model_csv: str | os.PathLike[str], stage_names: Sequence[str]
) -> pd.DataFrame:
    """:func:`cost_model_check` against the cost model in ``cost_model_csv``; an empty table
    when notebook 01 has not written one (the check needs it; nothing else here does)."""
    if not Path(cost_model_csv).is_file():
        logging.getLogger(__name__).warning(
            "no cost model at %s (notebook 01 writes it): check skipped", cost_model_csv
        )
        return pd.DataFrame(columns=["stage", "kind", "n", "r2", "median_abs_rel_err"])
    return cost_model_check(costed(df, "model", cost_model_csv, stage_names), stage_names)


def _fit_row(stage: str, kind: str, y: np.ndarray, yhat: np.ndarray) -> dict[str, Any]:
    """n, R² and median |relative error| of measured ``y`` against predicted ``yhat``."""
    n = len(y)
    if n < 2:
        return {
            "stage": stage,
            "kind": kind,
            "n": n,
            "r2": math.nan,
            "median_abs_rel_err": math.nan,
        }
    ss_res = float(np.sum((y - yhat) ** 2))
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    return {
        "stage": stage,
        "kind": kind,
        "n": n,
        "r2": 1.0 - ss_res / ss_tot if ss_tot > 0 else math.nan,
        "median_abs_rel_err": float(np.median(np.abs(y - yhat) / np.maximum(y, 1e-9))),
    }


def flops_costs(
    df: pd.DataFrame, n_stages: int, sizes: Sequence[float] = ()
) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic cost proxy: model size × tokens processed (prompt + output), per input.

    From scratch stage k processes its prompt and output; escalating k → j processes M_j's
    prompt plus the draft (verification) and the tokens it writes after the accepted prefix.
    Unitless (billions of parameters × tokens); ``sizes`` default to 1, 2, … K.
    """
    df = _by_item(df, n_stages)
    K = n_stages
    size = np.asarray(sizes if len(sizes) else np.arange(1, K + 1), float)  # (K,)
    n_in, n_out = _per_input(df, "n_in", K), _per_input(df, "n_out", K)
    verify = size * (n_in[:, None, :] + _per_pair(df, "drafted_by", K))
    unit = np.broadcast_to(size, n_out.shape)
    return size * (n_in + n_out), _escalations(verify, unit, n_out, _per_pair(df, "accepted_by", K))


def _per_input(df: pd.DataFrame, column: str, n_stages: int) -> np.ndarray:
    """(N, K) float values of a per-row column of an item-sorted frame."""
    return df[column].to_numpy(float).reshape(-1, n_stages)


def _per_pair(df: pd.DataFrame, column: str, n_stages: int) -> np.ndarray:
    """(N, K, K) float values of a list column indexed by the verifying stage j (row k)."""
    values = np.stack(df[column].map(lambda v: np.asarray(v, float)).to_numpy())
    return values.reshape(-1, n_stages, n_stages)


def _escalations(
    verify: np.ndarray, unit: np.ndarray, n_out: np.ndarray, accepted: np.ndarray
) -> np.ndarray:
    """(N, K, K) escalation costs k → j: verification + ``unit`` (N, K) per token M_j writes
    after the accepted prefix; NaN where j ≤ k (no such move)."""
    todo = np.maximum(n_out[:, None, :] - accepted, 0.0)
    K = n_out.shape[1]
    deeper = np.triu(np.ones((K, K), bool), 1)
    return np.where(deeper, verify + todo * unit[:, None, :], np.nan)


def item_ids(df: pd.DataFrame) -> list[str]:
    """Item ids in the order every per-input array here uses."""
    return sorted(df["item_id"].unique().tolist())


# -- per-input costs (cost_mode: per_input) ------------------------------------------------------
@dataclass
class InputCostModel:
    """ĉ for one input from its lengths (DESIGN §3, §7 ``cost_mode: per_input``).

    Fitted by least squares on the training split's per-input costs (either source):
    from scratch ĉ_j = a_j + b_j·n_in + d_j·n_out; verification of a draft by j costs
    v_j + w_j·(n_in + draft length); continuing costs d_j per token M_j writes after the
    accepted prefix. Output lengths not yet known are predicted by the training mean per
    (task, stage); the accepted share of M_j's output after stage k by the mean f̄_kj.
    """

    scratch_coef: np.ndarray  # (K, 3) a, b, d per stage (cost units, per token)
    verify_coef: np.ndarray  # (K, 2) v, w per verifying stage
    accepted_share: np.ndarray  # (K, K) mean share of M_j's output accepted from y_k, j > k
    n_out_mean: dict[tuple[str, int], float]  # (task, stage) → mean output tokens
    n_out_default: np.ndarray  # (K,) mean output tokens per stage, for unseen tasks
    norm: float  # the table's normaliser: mean cost of the deepest stage from scratch

    def n_out(self, task: str, stage: int) -> float:
        return self.n_out_mean.get((task, stage), float(self.n_out_default[stage]))

    def matrix(self, task: str, n_in: float, known: dict[int, float]) -> np.ndarray:
        """(K+1, K) normalised costs for this input; ``known`` maps stages to their real n_out."""
        K = len(self.scratch_coef)
        out = {k: known.get(k, self.n_out(task, k)) for k in range(K)}
        c = np.zeros((K + 1, K))
        for j in range(K):
            a, b, d = self.scratch_coef[j]
            c[0, j] = a + b * n_in + d * out[j]
            for k in range(j):
                v, w = self.verify_coef[j]
                todo = out[j] * (1.0 - self.accepted_share[k, j])
                c[k + 1, j] = v + w * (n_in + out[k]) + d * todo
        return np.maximum(c, 1e-9) / self.norm

    def costs(self, task: str, n_in: float, known: dict[int, float], n_bins: int) -> belief.Costs:
        """:meth:`matrix` as the solver's :class:`~asd_core.ground.belief.Costs` (flat over beliefs)."""
        c = self.matrix(task, n_in, known)
        K = len(c) - 1
        resume = np.where(np.triu(np.ones((K, K), bool), 1), c[1:], np.nan)
        return belief.Costs(c[0], np.broadcast_to(resume[:, None, :, None], (K, 2, K, n_bins)))


def fit_input_costs(
    df: pd.DataFrame, n_stages: int, source: CostSource, sizes: Sequence[float]
) -> InputCostModel:
    """Least-squares fit of :class:`InputCostModel` on a generations frame (training split)."""
    df = _by_item(df, n_stages)
    K, N = n_stages, len(df) // n_stages
    scratch, esc = per_input_costs(df, K, source, sizes)
    n_in, n_out = _per_input(df, "n_in", K), _per_input(df, "n_out", K)
    accepted = _per_pair(df, "accepted_by", K)
    scratch_coef = np.zeros((K, 3))
    verify_coef = np.zeros((K, 2))
    share = np.zeros((K, K))
    for j in range(K):
        X = np.column_stack([np.ones(N), n_in[:, j], n_out[:, j]])
        scratch_coef[j] = np.linalg.lstsq(X, scratch[:, j], rcond=None)[0]
        d = scratch_coef[j, 2]
        rows_x, rows_y = [], []
        for k in range(j):
            share[k, j] = float(
                np.mean(np.clip(accepted[:, k, j], 0, None) / np.maximum(n_out[:, j], 1))
            )
            todo = np.maximum(n_out[:, j] - accepted[:, k, j], 0.0)
            rows_x.append(np.column_stack([np.ones(N), n_in[:, j] + n_out[:, k]]))
            rows_y.append(esc[:, k, j] - d * todo)  # the verification part of the escalation
        if rows_x:
            verify_coef[j] = np.linalg.lstsq(np.vstack(rows_x), np.concatenate(rows_y), rcond=None)[
                0
            ]
    means = df.groupby(["task", "stage"])["n_out"].mean()
    return InputCostModel(
        scratch_coef=scratch_coef,
        verify_coef=verify_coef,
        accepted_share=share,
        n_out_mean={(str(t), int(k)): float(v) for (t, k), v in means.items()},
        n_out_default=n_out.mean(axis=0),
        norm=float(scratch[:, -1].mean()),
    )


# -- predictions and beliefs --------------------------------------------------------------------
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
    df = _by_item(df, n_stages)
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
    df = _by_item(df, n_stages)
    X, found = entry_features(df, predictor.features, predictor.config.input_stage)
    if not found.all():
        raise AsdError("generations frame: some inputs lack the row the entry head reads")
    first = (df["stage"] == 0).to_numpy()  # one row per item, in item order
    return predictor.predict_inputs(X[first])


# -- fitting the policy --------------------------------------------------------------------------
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
    """
    K = predictor.features.n_stages
    train = _by_item(train_df, K)
    label = LABEL_COLUMNS[predictor.label_mode]
    prior = train.groupby("stage")[label].mean().reindex(range(K)).to_numpy(float)
    prior = np.clip(np.nan_to_num(prior, nan=0.5), 0.0, 1.0)
    df = _by_item(held_df, K)
    pred = held if held is not None else predictions(predictor, df, K)
    p_tilde = pred.beliefs(prior, risk)
    labels = _per_input(df, label, K)
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


def size_based_costs(sizes: Sequence[float], n_bins: int) -> belief.Costs:
    """Costs proportional to model size, no reuse of drafts (the constant-cost ablation)."""
    s = np.asarray(sizes, float)
    return belief.flat_costs(s, np.tile(s, (len(s), 1)), n_bins)


# -- observers: where a policy's predictions come from ------------------------------------------
class Observer(Protocol):
    """What a learned policy can know about its inputs, online or in replay."""

    def head(self, requests: Sequence[RequestLike]) -> np.ndarray:
        """(N, K) the input-only head's P(accept_k) for each request."""
        ...

    def after(self, stage: int, paths: Sequence[PathLike]) -> tuple[np.ndarray, np.ndarray]:
        """(N,) calibrated P(accept) of each path's current output and (N,) its variance, with
        the features its view allows."""
        ...

    def lengths(self, path: PathLike) -> tuple[float, dict[int, float]]:
        """Prompt tokens (as the entry stage counts them) and output tokens of the stages that
        ran: what a per-input cost model reads."""
        ...


class LiveObserver:
    """Predictions from live outputs: features of the prompt and of the generation just made."""

    def __init__(self, predictor: QualityPredictor, entry_tokenizer: Any):
        self.predictor = predictor
        self.entry_tokenizer = entry_tokenizer  # stage input_stage's tokenizer
        self.n_in: dict[str, int] = {}  # prompt tokens per input, as the entry stage counts them

    def head(self, requests: Sequence[RequestLike]) -> np.ndarray:
        rows = []
        for r in requests:
            ids = chat_prompt_ids(self.entry_tokenizer, r.text)
            self.n_in[r.item_id] = len(ids)
            rows.append(self.predictor.predict_entry(ids, r.task)[0])
        return np.asarray(rows, dtype=float).reshape(len(requests), -1)

    def after(self, stage: int, paths: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
        """``paths`` are the pipeline's traces: their last run holds the live generation."""
        means, variances = [], []
        for t in paths:
            run = t.runs[-1]
            sequential = view_of(run) == belief.SEQUENTIAL
            prev = run.accepted_fraction if sequential else math.nan
            view = StageView.from_generation(run.generation, stage, t.request.task, prev)
            mean, var = self.predictor.predict_view(view)
            means.append(mean)
            variances.append(var)
        return np.asarray(means, dtype=float), np.asarray(variances, dtype=float)

    def lengths(self, path: Any) -> tuple[float, dict[int, float]]:
        known = {r.stage: float(r.generation.n_out) for r in path.runs}
        item = path.request.item_id
        return float(self.n_in.get(item, len(path.runs[0].prompt_ids))), known


class CachedObserver:
    """Predictions looked up from a :class:`Predictions` of cached generations (replay)."""

    def __init__(
        self, cached: Predictions, n_in: np.ndarray | None = None, n_out: np.ndarray | None = None
    ):
        self.cached = cached
        self.index = {item: i for i, item in enumerate(cached.item_ids)}
        n = len(cached.item_ids)
        self.n_in = np.zeros(n) if n_in is None else np.asarray(n_in, float)  # (N,) entry stage
        self.n_out = np.zeros(cached.head.shape) if n_out is None else np.asarray(n_out, float)

    def _rows(self, items: Iterable[str]) -> np.ndarray:
        return np.fromiter((self.index[i] for i in items), dtype=np.intp)

    def head(self, requests: Sequence[RequestLike]) -> np.ndarray:
        return self.cached.head[self._rows(r.item_id for r in requests)]

    def after(self, stage: int, paths: Sequence[PathLike]) -> tuple[np.ndarray, np.ndarray]:
        rows = self._rows(t.request.item_id for t in paths)
        views = np.fromiter((view_of(t.runs[-1]) for t in paths), dtype=np.intp)
        return self.cached.mean[views, rows, stage], self.cached.var[views, rows, stage]

    def lengths(self, path: PathLike) -> tuple[float, dict[int, float]]:
        i = self.index[path.request.item_id]
        return float(self.n_in[i]), {r.stage: float(self.n_out[i, r.stage]) for r in path.runs}


# -- the policy ----------------------------------------------------------------------------------
class AdaptivePolicy:
    """Route, then cascade: the DP policy for one λ, for the pipeline and for replay alike."""

    def __init__(
        self,
        model: PolicyModel,
        lam: float,
        observer: Observer,
        rule: stopping.Rule = stopping.DP,
        costs: belief.Costs | None = None,
        name: str | None = None,
        cost_mode: Literal["table", "per_input"] = "table",
    ):
        if cost_mode == "per_input" and model.input_costs is None:
            raise AsdError("cost_mode per_input needs a policy model with an input cost model")
        self.model = model
        self.lam = lam
        self.rule = rule
        self.cost_mode = cost_mode
        self.observer = observer
        # one table per task (its own costs), "" for a task the held-out inputs lack; a cost
        # override (the size ablation) serves every task
        by_task = {"": model.costs, **model.task_costs} if costs is None else {"": costs}
        self.tables = {
            task: stopping.solve(model.beliefs, c, lam, rule=rule, final_is_reference=True)
            for task, c in by_task.items()
        }
        self.table = self.tables[""]
        self.name = name or f"dp_lam{lam:g}"
        # what entering each stage did for each held-out input, under its task's table; a
        # myopic rule chooses its entry by stopping right after it
        self.entry_cost, self.entry_loss = stopping.entry_outcomes(
            self.tables, model.held_out, follow=not rule.myopic
        )

    def table_for(self, task: str) -> stopping.PolicyTable:
        """The solved table of ``task`` (the pooled one for a task without its own)."""
        return self.tables.get(task, self.table)

    def entry(self, requests: Sequence[RequestLike]) -> list[int]:
        if not requests:
            return []
        head = self.observer.head(requests)
        held = self.model.held_out
        tasks = [r.task for r in requests]
        near = stopping.nearest(held.head, head, self.model.neighbours, held.tasks, tasks)
        values = stopping.entry_values(
            self.entry_cost, self.entry_loss, self.lam, near, route=self.rule.route
        )
        return stopping.decide_entries(values).tolist()

    def next_stage(self, stage: int, paths: Sequence[PathLike]) -> list[Move | None]:
        if not paths:
            return []
        mean, var = self.observer.after(stage, paths)
        p = adjusted(self.model.prior, self.model.risk, mean, var, np.full(len(mean), stage))
        out: list[Move | None] = []
        for t, p_tilde in zip(paths, p.tolist(), strict=True):
            view = view_of(t.runs[-1])
            b = self.model.beliefs.bin_of(stage, view, p_tilde)
            if self.cost_mode == "table":
                table = self.table_for(t.request.task)
                d = stopping.Decision(
                    int(table.action[stage, view, b]), bool(table.restart[stage, view, b])
                )
            else:
                n_in, known = self.observer.lengths(t)
                d = per_input_decision(
                    self.model, self.lam, self.rule, stage, view, b, t.request.task, n_in, known
                )
            out.append(None if d.stage == stopping.STOP else d)
        return out


def per_input_decision(
    model: PolicyModel,
    lam: float,
    rule: stopping.Rule,
    stage: int,
    view: int,
    belief: int,
    task: str,
    n_in: float,
    known: dict[int, float],
) -> stopping.Decision:
    """The DP decision with this input's own costs (re-solved from ``stage`` on).

    ``known`` holds the output lengths of the stages that ran; the others are predicted per task.
    """
    assert model.input_costs is not None
    costs = model.input_costs.costs(task, n_in, known, model.n_bins)
    return stopping.decide_per_input(model.beliefs, costs, lam, stage, view, belief, rule=rule)


def decision_overhead(
    model: PolicyModel, lam: float, df: pd.DataFrame, repeats: int = 3
) -> pd.DataFrame:
    """Median µs per decision of features + predictor + risk adjustment + DP lookup.

    Times the exact per-output path the pipeline takes after a stage (from a generations row
    instead of a live Generation), over every row of ``df``, best of ``repeats`` passes.
    """
    table = stopping.solve(model.beliefs, model.costs, lam)
    views = [StageView.from_row(r) for r in df.to_dict("records")]
    pred, feats = model.predictor, model.predictor.features
    parts: dict[str, list[float]] = {"features": [], "predictor": [], "adjust_and_lookup": []}
    for _ in range(repeats):
        for v in views:
            view = belief.SEQUENTIAL if math.isfinite(v.accepted_frac_prev) else belief.DIRECT
            t0 = time.perf_counter()
            x = feats.extract(v)
            t1 = time.perf_counter()
            mean, var = pred.predict(x[None], np.array([v.stage]))
            t2 = time.perf_counter()
            p = adjusted(model.prior, model.risk, mean, var, np.array([v.stage]))
            b = model.beliefs.bin_of(v.stage, view, float(p[0]))
            int(table.action[v.stage, view, b])
            t3 = time.perf_counter()
            parts["features"].append((t1 - t0) * 1e6)
            parts["predictor"].append((t2 - t1) * 1e6)
            parts["adjust_and_lookup"].append((t3 - t2) * 1e6)
    total = [sum(x) for x in zip(*parts.values(), strict=True)]
    rows = [{"step": k, "median_us": float(np.median(v))} for k, v in parts.items()]
    rows.append({"step": "total per decision", "median_us": float(np.median(total))})
    return pd.DataFrame(rows)


def cost_table(model: PolicyModel, stage_names: Sequence[str]) -> pd.DataFrame:
    """Mean costs of every move relative to the deepest stage alone, pooled and per task.

    Continuing is shown as its mean over belief bins weighted by the held-out inputs in them,
    beside restarting (running the deeper stage from scratch), so the two can be compared.
    Seconds are given for the pooled rows (each task has its own unit).
    """
    K = model.n_stages
    unit = float(model.scratch_s[-1]) / float(model.costs.scratch[-1])
    counts = np.asarray(model.beliefs.counts)
    rows = []
    for task, costs in [("all", model.costs), *sorted(model.task_costs.items())]:
        seconds = unit if task == "all" else math.nan

        def row(
            origin: str, to: str, move: str, rel: float, task: str = task, seconds: float = seconds
        ) -> dict[str, Any]:
            return {
                "task": task,
                "origin": origin,
                "to": to,
                "move": move,
                "seconds": rel * seconds,
                "cost_rel": rel,
            }

        for j in range(K):
            rows.append(row("from scratch", stage_names[j], "scratch", float(costs.scratch[j])))
        for k in range(K):
            w = counts[k, belief.DIRECT] / max(counts[k, belief.DIRECT].sum(), 1)
            for j in range(k + 1, K):
                origin = f"escalate from {stage_names[k]}"
                resume = float(costs.resume[k, belief.DIRECT, j] @ w)
                rows.append(row(origin, stage_names[j], "continue", resume))
                rows.append(row(origin, stage_names[j], "restart", float(costs.scratch[j])))
    return pd.DataFrame(rows)


def decision_table(
    model: PolicyModel, lambdas: Sequence[float], stage_names: Sequence[str]
) -> pd.DataFrame:
    """What the solved policy does in every belief state at every λ, and where inputs enter.

    The states' actions are those of the table with every task's costs pooled; the entry rows
    use each input's own task's table. One row per (λ, stage, view, bin) with the bin's range
    of p̃ on the held-out inputs
    (``p_low``, ``p_high``; empty bins are left out), its held-out count and the action
    ("stop", "continue → j", "restart → j"); plus rows with ``stage`` = "entry" giving the share
    of held-out inputs the entry sends to each stage. The decision-boundary figure draws it.
    """
    K, held = model.n_stages, model.held_out
    near = stopping.nearest(held.head, held.head, model.neighbours, held.tasks, held.tasks)
    counts = np.asarray(model.beliefs.counts)
    rows: list[dict[str, Any]] = []
    for lam in lambdas:
        table = stopping.solve(model.beliefs, model.costs, lam)
        for k in range(K - 1):
            for v in range(belief.N_VIEWS):
                if k == 0 and v == belief.SEQUENTIAL:
                    continue  # never reached: stage 0 verifies nothing
                edges = np.concatenate([[0.0], model.beliefs.edges[k, v], [1.0]])
                present = [b for b in range(model.n_bins) if counts[k, v, b] > 0]
                # a bin reaches up to the next bin that holds inputs: no gaps for empty ones
                upper = {b: edges[n] for b, n in zip(present, present[1:], strict=False)}
                for b in present:
                    j, fresh = int(table.action[k, v, b]), bool(table.restart[k, v, b])
                    action = (
                        "stop"
                        if j == stopping.STOP
                        else f"{'restart' if fresh else 'continue'} → {stage_names[j]}"
                    )
                    rows.append(
                        {
                            "lam": float(lam),
                            "stage": stage_names[k],
                            "view": belief.VIEW_NAMES[v],
                            "bin": b,
                            "p_low": float(edges[b]),
                            "p_high": float(min(upper.get(b, 1.0), 1.0)),
                            "n_held_out": int(counts[k, v, b]),
                            "action": action,
                        }
                    )
        tables = {t: stopping.solve(model.beliefs, c, lam) for t, c in model.task_costs.items()}
        cost, loss = stopping.entry_outcomes({"": table, **tables}, held)
        entered = stopping.decide_entries(stopping.entry_values(cost, loss, lam, near))
        for j in range(K):
            rows.append(
                {
                    "lam": float(lam),
                    "stage": "entry",
                    "view": "",
                    "bin": j,
                    "p_low": np.nan,
                    "p_high": np.nan,
                    "n_held_out": int((entered == j).sum()),
                    "action": f"enter {stage_names[j]}",
                }
            )
    return pd.DataFrame(rows)
