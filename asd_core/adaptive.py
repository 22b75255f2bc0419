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

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from asd_core import stopping
from asd_core.errors import AsdError
from asd_core.features import StageView
from asd_core.models.common import chat_prompt_ids
from asd_core.predictor import LABEL_COLUMNS, QualityPredictor, entry_features

CostSource = Literal[
    "measured", "flops"
]  # seconds measured, or a deterministic size × tokens proxy

if TYPE_CHECKING:
    from asd_core.pipeline import Request, Trace


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
    K, N = n_stages, len(df) // n_stages
    lat = df["latency_s"].to_numpy(float).reshape(N, K)
    prefill = df["prefill_s"].to_numpy(float).reshape(N, K)
    n_out = df["n_out"].to_numpy(float).reshape(N, K)
    rate = (lat - prefill) / np.maximum(n_out - 1, 1)  # (N, K) s per decoded token
    verify = np.stack(df["verify_s_by"].map(lambda v: np.asarray(v, float)).to_numpy()).reshape(
        N, K, K
    )
    accepted = np.stack(df["accepted_by"].map(lambda v: np.asarray(v, float)).to_numpy()).reshape(
        N, K, K
    )
    esc = np.full((N, K, K), np.nan)
    for k in range(K):
        for j in range(k + 1, K):
            todo = np.maximum(n_out[:, j] - accepted[:, k, j], 0.0)
            esc[:, k, j] = verify[:, k, j] + todo * rate[:, j]
    return lat, esc


def flops_costs(
    df: pd.DataFrame, n_stages: int, sizes: Sequence[float] = ()
) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic cost proxy: model size × tokens processed (prompt + output), per input.

    From scratch stage k processes its prompt and output; escalating k → j processes M_j's
    prompt plus the draft (verification) and the tokens it writes after the accepted prefix.
    Unitless (billions of parameters × tokens); ``sizes`` default to 1, 2, … K.
    """
    df = _by_item(df, n_stages)
    K, N = n_stages, len(df) // n_stages
    size = np.asarray(sizes if len(sizes) else np.arange(1, K + 1), float)
    n_in = df["n_in"].to_numpy(float).reshape(N, K)
    n_out = df["n_out"].to_numpy(float).reshape(N, K)
    drafted = np.stack(df["drafted_by"].map(lambda v: np.asarray(v, float)).to_numpy())
    accepted = np.stack(df["accepted_by"].map(lambda v: np.asarray(v, float)).to_numpy())
    drafted, accepted = drafted.reshape(N, K, K), accepted.reshape(N, K, K)
    scratch = size * (n_in + n_out)
    esc = np.full((N, K, K), np.nan)
    for k in range(K):
        for j in range(k + 1, K):
            todo = np.maximum(n_out[:, j] - accepted[:, k, j], 0.0)
            esc[:, k, j] = size[j] * (n_in[:, j] + drafted[:, k, j] + todo)
    return scratch, esc


def item_ids(df: pd.DataFrame) -> list[str]:
    """Item ids in the order every per-input array here uses."""
    return sorted(df["item_id"].unique().tolist())


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
    df = _by_item(df, n_stages)
    if not with_previous:
        df = df.assign(accepted_frac_prev=math.nan)
    X = predictor.features.extract_frame(df)
    stages = df["stage"].to_numpy(np.int64)
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
    df = _by_item(df, n_stages)
    first = df[df["stage"] == 0]
    X, found = entry_features(first, predictor.features, predictor.config.input_stage)
    if not found.all():
        raise AsdError("generations frame: some inputs lack the row the entry head reads")
    mean, var = predictor.predict_inputs(X)
    zeros = np.zeros(len(first), dtype=np.int64)
    return adjusted(prior, risk, mean[:, 0], var[:, 0], zeros)


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
    ):
        self.model = model
        self.lam = lam
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
        self.decision_us: list[float] = []  # per-input features + predictor + lookup, µs

    def entry(self, requests: Sequence[Request]) -> list[int]:
        out = []
        pred = self.model.predictor
        for r in requests:
            start = time.perf_counter()
            ids = chat_prompt_ids(self.entry_tokenizer, r.text)
            mean, var = pred.predict_entry(ids, r.task)
            b = belief_bin_one(self.model, 0, float(mean[0]), float(var[0]))
            action = int(self.table.action[0, b])
            self.decision_us.append((time.perf_counter() - start) * 1e6)
            out.append(action)
        return out

    def next_stage(self, stage: int, traces: Sequence[Trace]) -> list[int | None]:
        out: list[int | None] = []
        pred = self.model.predictor
        for t in traces:
            start = time.perf_counter()
            run = t.runs[-1]
            prev = run.accepted_fraction if run.from_stage == stage - 1 else math.nan
            view = StageView.from_generation(run.generation, stage, t.request.task, prev)
            mean, var = pred.predict_view(view)
            action = int(self.table.action[stage + 1, belief_bin_one(self.model, stage, mean, var)])
            self.decision_us.append((time.perf_counter() - start) * 1e6)
            out.append(None if action == stopping.STOP else action)
        return out


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
