"""Replay: run any policy over cached real generations of the test split (DESIGN §10).

Generation is greedy, so what each stage writes for an input does not depend on how the input
got there (the pipeline is lossless): a policy's path, output and quality on an input follow
from the cached outputs of every stage, and its cost from their measured times (from scratch:
the stage's own latency; escalating k → j: the measured verification pass plus M_j's decode
time for the tokens after the accepted prefix, see ``adaptive.per_input_costs``). This makes
λ sweeps, seeds and ablations cheap; ``online`` runs confirm them on the real pipeline.

Everything works on a :class:`ReplayData` of per-input arrays (items sorted by id).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from asd_core import stopping
from asd_core.adaptive import (
    AdaptivePolicy,
    CostSource,
    PolicyModel,
    belief_tables,
    entry_beliefs,
    item_ids,
    per_input_costs,
    per_input_decision,
)
from asd_core.errors import AsdError
from asd_core.predictor import LABEL_COLUMNS

# (input index, current stage, previous stage or None) → next stage or None (stop)
NextFn = Callable[[int, int, int | None], int | None]


@dataclass
class ReplayData:
    """Per-input arrays of one split's generations, items sorted by id."""

    item_ids: list[str]  # (N,) input ids
    tasks: np.ndarray  # (N,) task name of each input
    scratch_s: np.ndarray  # (N, K) seconds of each stage from scratch
    escalate_s: np.ndarray  # (N, K, K) seconds to escalate k → j (j > k), NaN elsewhere
    quality: np.ndarray  # (N, K) task quality of each stage's output (accuracy, pass, truthful)
    label: np.ndarray  # (N, K) 0/1 acceptance label (the params' label mode)
    n_out: np.ndarray  # (N, K) generated tokens
    n_in: np.ndarray  # (N, K) prompt tokens as each stage tokenises them

    @property
    def n(self) -> int:
        return len(self.item_ids)

    @property
    def n_stages(self) -> int:
        return self.scratch_s.shape[1]

    @classmethod
    def from_frame(
        cls,
        df: pd.DataFrame,
        n_stages: int,
        label_mode: str,
        cost_source: CostSource = "measured",
        sizes: Sequence[float] = (),
    ) -> ReplayData:
        scratch, esc = per_input_costs(df, n_stages, cost_source, sizes)
        df = df.sort_values(["item_id", "stage"], kind="stable")
        shape = (-1, n_stages)
        return cls(
            item_ids=item_ids(df),
            tasks=df["task"].to_numpy()[::n_stages],
            scratch_s=scratch,
            escalate_s=esc,
            quality=df["correct"].to_numpy(float).reshape(shape),
            label=df[LABEL_COLUMNS[label_mode]].to_numpy(float).reshape(shape),
            n_out=df["n_out"].to_numpy(float).reshape(shape),
            n_in=df["n_in"].to_numpy(float).reshape(shape),
        )


@dataclass
class Replayed:
    """One policy's outcome on every input."""

    depth: np.ndarray  # (N,) stage whose output is returned
    cost_s: np.ndarray  # (N,) seconds spent (all stages run, escalations included)
    quality: np.ndarray  # (N,) task quality of the returned output
    paths: list[tuple[int, ...]]  # stages run per input, in order


def simulate(data: ReplayData, entry: Sequence[int], next_stage: NextFn) -> Replayed:
    """Follow a policy on every input: enter, then stop or jump deeper, summing measured costs."""
    K = data.n_stages
    depth = np.zeros(data.n, np.int64)
    cost = np.zeros(data.n)
    paths = []
    for i in range(data.n):
        s, prev = int(entry[i]), None
        if not 0 <= s < K:
            raise AsdError(f"replay: entry stage {s} for input {data.item_ids[i]} is not a stage")
        total, path = data.scratch_s[i, s], [s]
        while True:
            nxt = next_stage(i, s, prev)
            if nxt is None:
                break
            if not s < nxt < K:
                raise AsdError(f"replay: move {s} → {nxt} for input {data.item_ids[i]}")
            total += data.escalate_s[i, s, nxt]
            prev, s = s, nxt
            path.append(s)
        depth[i], cost[i] = s, total
        paths.append(tuple(path))
    return Replayed(depth, cost, data.quality[np.arange(data.n), depth], paths)


# -- fixed strategies ----------------------------------------------------------------------------
def stage_alone(data: ReplayData, k: int) -> Replayed:
    return simulate(data, [k] * data.n, lambda i, s, p: None)


def cheapest_acceptable(data: ReplayData) -> np.ndarray:
    """(N,) first stage whose output is acceptable (the last always is)."""
    lab = data.label.astype(bool).copy()
    lab[:, -1] = True
    return lab.argmax(axis=1)


def oracle_router(data: ReplayData) -> Replayed:
    return simulate(data, cheapest_acceptable(data).tolist(), lambda i, s, p: None)


def oracle_cascade(data: ReplayData) -> Replayed:
    target = cheapest_acceptable(data)
    return simulate(data, [0] * data.n, lambda i, s, p: s + 1 if s < target[i] else None)


def random_mixing(data: ReplayData, share_deepest: float, seed: int) -> Replayed:
    """Each input to the deepest stage with probability ``share_deepest``, else to stage 0."""
    rng = np.random.default_rng(seed)
    deep = rng.random(data.n) < share_deepest
    return simulate(data, np.where(deep, data.n_stages - 1, 0).tolist(), lambda i, s, p: None)


def threshold_cascade(
    data: ReplayData, score: np.ndarray, threshold: float, stages: Sequence[int]
) -> Replayed:
    """Run ``stages`` in order, stopping at the first whose score ≥ threshold (FrugalGPT-style).

    ``score`` is (N, K), e.g. the predictor's calibrated P(accept) on the sequential path.
    """
    order = list(stages)
    nxt = {a: b for a, b in zip(order, order[1:], strict=False)}
    return simulate(
        data,
        [order[0]] * data.n,
        lambda i, s, p: None if s == order[-1] or score[i, s] >= threshold else nxt[s],
    )


def threshold_router(data: ReplayData, entry_score: np.ndarray, threshold: float) -> Replayed:
    """Straight to the cheapest stage whose input-only P(accept) ≥ threshold (RouteLLM-style).

    ``entry_score`` is (N, K) from the predictor's input-only head.
    """
    ok = entry_score >= threshold
    ok[:, -1] = True
    return simulate(data, ok.argmax(axis=1).tolist(), lambda i, s, p: None)


def tune_threshold(
    run: Callable[[float], Replayed], reference_cost: float, budgets: Sequence[float]
) -> dict[float, float]:
    """Per cost budget (share of the deepest stage's mean cost), the best threshold.

    Among thresholds on a grid whose mean cost stays within the budget, the one with the highest
    mean quality (ties: cheaper). Run on the calibration split; applied to the test split.
    """
    grid = np.linspace(0.0, 1.0, 41)
    outcomes = [(t, run(float(t))) for t in grid]
    chosen = {}
    for b in budgets:
        ok = [
            (r.quality.mean(), -r.cost_s.mean(), t)
            for t, r in outcomes
            if r.cost_s.mean() <= b * reference_cost
        ]
        chosen[b] = float(max(ok)[2]) if ok else 1.0
    return chosen


# -- the DP policy -------------------------------------------------------------------------------
@dataclass
class Beliefs:
    """Adjusted beliefs of every input on one split, for table-lookup replay."""

    sequential: np.ndarray  # (N, K) after stage k when k−1 ran right before it
    direct: np.ndarray  # (N, K) after stage k entered directly or by a skip (no verification)
    entry: np.ndarray  # (N,) before any model, from the input-only head

    @classmethod
    def of(cls, model: PolicyModel, df: pd.DataFrame) -> Beliefs:
        K, pred, prior, risk = model.n_stages, model.predictor, model.prior, model.risk
        sequential, direct = belief_tables(pred, prior, risk, df, K)
        return cls(sequential, direct, entry_beliefs(pred, prior, risk, df, K))


def dp_policy(
    data: ReplayData,
    beliefs: Beliefs,
    table: stopping.PolicyTable,
    n_bins: int,
) -> Replayed:
    """Replay a solved policy table: the same lookups :class:`AdaptivePolicy` makes online."""
    seq = stopping.belief_bins(beliefs.sequential, n_bins)
    direct = stopping.belief_bins(beliefs.direct, n_bins)
    entry = [
        stopping.decide(table, stopping.ENTRY, int(b))
        for b in stopping.belief_bins(beliefs.entry, n_bins)
    ]

    def nxt(i: int, s: int, prev: int | None) -> int | None:
        b = seq[i, s] if prev == s - 1 else direct[i, s]
        a = stopping.decide(table, s, int(b))
        return None if a == stopping.STOP else a

    return simulate(data, entry, nxt)


def dp_policy_per_input(
    data: ReplayData, beliefs: Beliefs, model: PolicyModel, lam: float, rule: stopping.Rule
) -> Replayed:
    """Replay the DP policy with ``cost_mode: per_input``: each input's own cost matrix."""
    B, s0 = model.n_bins, model.predictor.config.input_stage
    seq, direct = (
        stopping.belief_bins(beliefs.sequential, B),
        stopping.belief_bins(beliefs.direct, B),
    )
    entry_bins = stopping.belief_bins(beliefs.entry, B)
    tasks = [str(t) for t in data.tasks]
    known: list[dict[int, float]] = [{} for _ in range(data.n)]

    def decide(i: int, stage: int, b: int) -> int:
        return per_input_decision(model, lam, rule, stage, b, tasks[i], data.n_in[i, s0], known[i])

    entry = [decide(i, stopping.ENTRY, int(entry_bins[i])) for i in range(data.n)]

    def nxt(i: int, s: int, prev: int | None) -> int | None:
        known[i][s] = float(data.n_out[i, s])
        b = seq[i, s] if prev == s - 1 else direct[i, s]
        a = decide(i, s, int(b))
        return None if a == stopping.STOP else a

    return simulate(data, entry, nxt)


def replay_adaptive(policy: AdaptivePolicy, data: ReplayData, beliefs: Beliefs) -> Replayed:
    """Replay exactly what ``policy`` (one λ) would decide online."""
    if policy.cost_mode == "per_input":
        return dp_policy_per_input(data, beliefs, policy.model, policy.lam, policy.rule)
    return dp_policy(data, beliefs, policy.table, policy.model.n_bins)
