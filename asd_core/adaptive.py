"""The learned policy: predictor → risk adjustment → belief bin → DP table (DESIGN §5–§7).

:func:`fit_policy_model` turns a trained :class:`~asd_core.predictor.QualityPredictor` and the
predictor-train split of the generations dataset into everything the solver needs: per-stage
prior acceptance rates μ_k, belief transitions between every pair of stages (and from the
entry head), bin values p̄ and the measured cost matrix. :class:`AdaptivePolicy` then makes the
pipeline's two decisions for one λ by table lookup; :func:`belief_table` gives the same
beliefs for a whole generations frame, so replay (``asd_core.eval.replay``) and the online
pipeline decide from the same numbers.

One convention matters for skips: the verification feature of stage k (the fraction of y_{k−1}
that M_k accepted) exists only when stage k−1 ran right before k. After an entry at k or a
skip into k it is missing (NaN, with its indicator off), both online and in replay.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from asd_core import stopping
from asd_core.errors import AsdError
from asd_core.features import VERIFICATION_NAMES, StageView, previous_acceptance
from asd_core.models.base import VERIFY_BLOCK
from asd_core.models.common import chat_prompt_ids
from asd_core.predictor import LABEL_COLUMNS, QualityPredictor, entry_features

# seconds as measured in data generation, seconds predicted by the cost model fitted on
# single-sequence runs (notebook 01; see with_model_costs), or a deterministic size × tokens proxy
CostSource = Literal["measured", "model", "flops"]

if TYPE_CHECKING:
    from asd_core.pipeline import Request, StageRun, Trace


@dataclass(frozen=True)
class RiskSettings:
    """Bayesian shrinkage of the ensemble's predictions (DESIGN §6)."""

    alpha: float = 10.0  # prior strength in pseudo-observations; 0 = no shrinkage
    beta: float = 0.5  # 0.5: posterior mean; lower: that quantile (risk-averse)
    n_max: float = 1000.0  # cap on the effective sample size


@dataclass
class PolicyModel:
    """Everything a DP policy needs, estimated on the predictor-train split."""

    predictor: QualityPredictor  # calibrated ensemble + input-only head
    risk: RiskSettings  # shrinkage applied to every prediction
    prior: np.ndarray  # (K,) μ_k, base acceptance rate of each stage on the training split
    n_bins: int  # B, belief bins
    transitions: stopping.Transitions  # belief moves entry→j and k→j for every j > k
    pbar: np.ndarray  # (K, B) mean adjusted belief of the training inputs in each bin
    costs: np.ndarray  # (K+1, K) normalised costs: row 0 from scratch, row k+1 escalating from k
    scratch_s: np.ndarray  # (K,) mean seconds of each stage from scratch (training split)
    escalate_s: np.ndarray  # (K, K) mean seconds to escalate k → j (verify + continue), j > k
    input_costs: InputCostModel | None = None  # for cost_mode "per_input"
    info: dict[str, Any] = field(default_factory=dict)  # sizes, for reports

    @property
    def n_stages(self) -> int:
        return len(self.prior)


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


# -- beliefs -------------------------------------------------------------------------------------
def adjusted(
    prior: np.ndarray, risk: RiskSettings, mean: np.ndarray, var: np.ndarray, stage: np.ndarray
) -> np.ndarray:
    """Risk-adjusted beliefs p̃ of predictions (mean, var) for the given stages, one shape."""
    return stopping.risk_adjust(
        np.clip(mean, 0.0, 1.0),
        np.maximum(var, 0.0),
        prior[stage],
        risk.alpha,
        risk.beta,
        risk.n_max,
    )


def belief_table(
    predictor: QualityPredictor,
    prior: np.ndarray,
    risk: RiskSettings,
    df: pd.DataFrame,
    n_stages: int,
    with_previous: bool = True,
) -> np.ndarray:
    """(N, K) adjusted beliefs of every input after every stage, items sorted.

    ``with_previous`` False blanks the verification feature (the stage was entered directly or
    by a skip, so it never verified y_{k−1}).
    """
    X, stages = _row_features(predictor, df, n_stages)
    if not with_previous:
        _blank_verification(predictor, X)
    return _believe(predictor, prior, risk, X, stages, n_stages)


def belief_tables(
    predictor: QualityPredictor,
    prior: np.ndarray,
    risk: RiskSettings,
    df: pd.DataFrame,
    n_stages: int,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`belief_table` with and without the verification feature, extracting features once."""
    X, stages = _row_features(predictor, df, n_stages)
    sequential = _believe(predictor, prior, risk, X, stages, n_stages)
    _blank_verification(predictor, X)
    return sequential, _believe(predictor, prior, risk, X, stages, n_stages)


def _row_features(
    predictor: QualityPredictor, df: pd.DataFrame, n_stages: int
) -> tuple[np.ndarray, np.ndarray]:
    """(N·K, F) features and (N·K,) stages of every row, items sorted."""
    df = _by_item(df, n_stages)
    return predictor.features.extract_frame(df), df["stage"].to_numpy(np.int64)


def _blank_verification(predictor: QualityPredictor, X: np.ndarray) -> None:
    """Rewrite the verification group in place as :func:`previous_acceptance` has it when missing."""
    cols = [predictor.features.names.index(n) for n in VERIFICATION_NAMES]
    X[:, cols] = previous_acceptance(1, math.nan)


def _believe(
    predictor: QualityPredictor,
    prior: np.ndarray,
    risk: RiskSettings,
    X: np.ndarray,
    stages: np.ndarray,
    n_stages: int,
) -> np.ndarray:
    mean, var = predictor.predict(X, stages)
    return adjusted(prior, risk, mean, var, stages).reshape(-1, n_stages)


def entry_beliefs(
    predictor: QualityPredictor,
    prior: np.ndarray,
    risk: RiskSettings,
    df: pd.DataFrame,
    n_stages: int,
) -> np.ndarray:
    """(N,) adjusted entry belief of every input (input-only head, stage-0 acceptance)."""
    mean, var = entry_predictions(predictor, df, n_stages)
    return adjusted(prior, risk, mean[:, 0], var[:, 0], np.zeros(len(mean), dtype=np.int64))


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


def fit_policy_model(
    predictor: QualityPredictor,
    train_df: pd.DataFrame,
    risk: RiskSettings,
    n_bins: int = 20,
    smoothing: float = 1.0,
    cost_source: CostSource = "measured",
    sizes: Sequence[float] = (),
) -> PolicyModel:
    """Estimate priors, transitions, bin values and costs on the predictor-train split."""
    K = predictor.features.n_stages
    df = _by_item(train_df, K)
    label = LABEL_COLUMNS[predictor.label_mode]
    prior = df.groupby("stage")[label].mean().reindex(range(K)).to_numpy(float)
    prior = np.clip(np.nan_to_num(prior, nan=0.5), 0.0, 1.0)
    beliefs = belief_table(predictor, prior, risk, df, K)
    entry = entry_beliefs(predictor, prior, risk, df, K)
    transitions = stopping.estimate_transitions(
        stopping.belief_bins(beliefs, n_bins),
        stopping.belief_bins(entry, n_bins),
        n_bins,
        smoothing,
    )
    scratch, esc = per_input_costs(df, K, cost_source, sizes)
    upper = np.triu(np.ones((K, K), bool), 1)  # only moves to deeper stages exist
    escalate_s = np.zeros((K, K))
    escalate_s[upper] = esc[:, upper].mean(axis=0)
    scratch_s = scratch.mean(axis=0)
    return PolicyModel(
        predictor=predictor,
        risk=risk,
        prior=prior,
        n_bins=n_bins,
        transitions=transitions,
        pbar=stopping.bin_values(beliefs, n_bins),
        costs=stopping.cost_matrix(scratch_s, escalate_s),
        scratch_s=scratch_s,
        escalate_s=escalate_s,
        input_costs=fit_input_costs(df, K, cost_source, sizes),
        info={"train_inputs": len(df) // K},
    )


def size_based_costs(sizes: Sequence[float]) -> np.ndarray:
    """(K+1, K) costs proportional to model size, no reuse (the constant-cost ablation)."""
    s = np.asarray(sizes, float)
    return stopping.cost_matrix(s, np.tile(s, (len(s), 1)))


# -- the policy ----------------------------------------------------------------------------------
def belief_bin_one(model: PolicyModel, stage: int, mean: float, var: float) -> int:
    """The belief bin of one prediction: :func:`adjusted` then ``floor(p̃·B)``, for scalars.

    The hot path of an online decision; it takes numpy's per-call overhead out of the scalar
    case and is tested equal to the vectorised functions the replay uses.
    """
    r = model.risk
    m = min(max(mean, 0.0), 1.0)
    if r.beta == 0.5:  # posterior mean, closed form (DESIGN §6)
        n = r.n_max if var <= 0.0 else min(max(m * (1.0 - m) / var - 1.0, 1.0), r.n_max)
        p = m + r.alpha * (float(model.prior[stage]) - m) / (n + r.alpha) if r.alpha else m
    else:
        p = float(adjusted(model.prior, r, np.array([m]), np.array([var]), np.array([stage]))[0])
    return min(int(p * model.n_bins), model.n_bins - 1)


class AdaptivePolicy:
    """Route, then cascade: the DP policy for one λ, plugged into the pipeline."""

    def __init__(
        self,
        model: PolicyModel,
        lam: float,
        entry_tokenizer: Any,
        rule: stopping.Rule = stopping.DP,
        costs: np.ndarray | None = None,
        name: str | None = None,
        cost_mode: Literal["table", "per_input"] = "table",
    ):
        if cost_mode == "per_input" and model.input_costs is None:
            raise AsdError("cost_mode per_input needs a policy model with an input cost model")
        self.model = model
        self.lam = lam
        self.rule = rule
        self.cost_mode = cost_mode
        self.entry_tokenizer = entry_tokenizer  # stage input_stage's tokenizer (entry features)
        self.table = stopping.solve(
            model.transitions,
            model.pbar,
            model.costs if costs is None else costs,
            lam,
            rule=rule,
            final_is_reference=True,
        )
        self.name = name or f"dp_lam{lam:g}"
        self._n_in: dict[str, int] = {}  # prompt tokens per input, as the entry stage counts them

    def entry(self, requests: Sequence[Request]) -> list[int]:
        out = []
        pred = self.model.predictor
        for r in requests:
            ids = chat_prompt_ids(self.entry_tokenizer, r.text)
            mean, var = pred.predict_entry(ids, r.task)
            self._n_in[r.item_id] = len(ids)
            b = belief_bin_one(self.model, 0, float(mean[0]), float(var[0]))
            out.append(self._decide(stopping.ENTRY, b, r, ()))
        return out

    def _decide(self, stage: int, b: int, request: Request, runs: Sequence[StageRun]) -> int:
        """Table lookup, or (per_input) a re-solve with this input's predicted costs."""
        if self.cost_mode == "table":
            return int(self.table.action[stage + 1, b])
        known = {r.stage: float(r.generation.n_out) for r in runs}
        n_in = self._n_in.get(request.item_id, len(runs[0].prompt_ids) if runs else 0)
        return per_input_decision(
            self.model, self.lam, self.rule, stage, b, request.task, n_in, known
        )

    def next_stage(self, stage: int, traces: Sequence[Trace]) -> list[int | None]:
        out: list[int | None] = []
        pred = self.model.predictor
        for t in traces:
            run = t.runs[-1]
            prev = run.accepted_fraction if run.from_stage == stage - 1 else math.nan
            view = StageView.from_generation(run.generation, stage, t.request.task, prev)
            mean, var = pred.predict_view(view)
            action = self._decide(
                stage, belief_bin_one(self.model, stage, mean, var), t.request, t.runs
            )
            out.append(None if action == stopping.STOP else action)
        return out


def per_input_decision(
    model: PolicyModel,
    lam: float,
    rule: stopping.Rule,
    stage: int,
    belief: int,
    task: str,
    n_in: float,
    known: dict[int, float],
) -> int:
    """The DP decision with this input's own cost matrix (re-solved from ``stage`` on)."""
    assert model.input_costs is not None
    costs = model.input_costs.matrix(task, n_in, known)
    return stopping.decide_per_input(
        model.transitions, model.pbar, costs, lam, stage, belief, rule=rule
    )


def decision_overhead(
    model: PolicyModel, lam: float, df: pd.DataFrame, repeats: int = 3
) -> pd.DataFrame:
    """Median µs per decision of features + predictor + risk adjustment + DP lookup.

    Times the exact per-output path the pipeline takes after a stage (from a generations row
    instead of a live Generation), over every row of ``df``, best of ``repeats`` passes.
    """
    table = stopping.solve(model.transitions, model.pbar, model.costs, lam)
    views = [StageView.from_row(r) for r in df.to_dict("records")]
    pred, feats = model.predictor, model.predictor.features
    parts: dict[str, list[float]] = {"features": [], "predictor": [], "adjust_and_lookup": []}
    for _ in range(repeats):
        for v in views:
            t0 = time.perf_counter()
            x = feats.extract(v)
            t1 = time.perf_counter()
            mean, var = pred.predict(x[None], np.array([v.stage]))
            t2 = time.perf_counter()
            int(table.action[v.stage + 1, belief_bin_one(model, v.stage, mean[0], var[0])])
            t3 = time.perf_counter()
            parts["features"].append((t1 - t0) * 1e6)
            parts["predictor"].append((t2 - t1) * 1e6)
            parts["adjust_and_lookup"].append((t3 - t2) * 1e6)
    total = [sum(x) for x in zip(*parts.values(), strict=True)]
    rows = [{"step": k, "median_us": float(np.median(v))} for k, v in parts.items()]
    rows.append({"step": "total per decision", "median_us": float(np.median(total))})
    return pd.DataFrame(rows)


def cost_table(model: PolicyModel, stage_names: Sequence[str]) -> pd.DataFrame:
    """The solver's cost matrix as a table: one row per origin (scratch or a stage), seconds too."""
    K = model.n_stages
    rows = []
    for r in range(K + 1):
        origin = "from scratch" if r == 0 else f"escalate from {stage_names[r - 1]}"
        for j in range(K):
            if r == 0 or j > r - 1:
                secs = model.scratch_s[j] if r == 0 else model.escalate_s[r - 1, j]
                rows.append(
                    {
                        "origin": origin,
                        "to": stage_names[j],
                        "seconds": float(secs),
                        "cost_rel": float(model.costs[r, j]),
                    }
                )
    return pd.DataFrame(rows)
