"""Replay: run any policy over cached real generations (docs/design.md §10).

Generation is greedy, so what each stage writes for an input does not depend on how the input
got there (continuing a draft and restarting both give the stage's own output): a policy's path,
output and quality on an input follow from the cached outputs of every stage, and its cost from
their per-input costs (from scratch: the stage's own latency; continuing k → j: the
verification pass plus M_j's decode time for the tokens after the accepted prefix, see
``costs.per_input_costs``). This makes λ sweeps, seeds and ablations cheap; ``online`` runs
confirm them on the real pipeline.

:func:`simulate` drives the very policy objects the pipeline drives (``asd_core.policy.baselines``,
``asd_core.policy.adaptive``), stage by stage in batches as the pipeline does; it only replaces running
a model by looking its output up.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from asd_core.decoding.protocol import Policy
from asd_core.ground.errors import AsdError
from asd_core.ground.stopping import Decision
from asd_core.learning.predictor import LABEL_COLUMNS
from asd_core.policy.costs import CostSource, item_ids, per_input_costs


@dataclass
class ReplayData:
    """Per-input arrays of one split's generations, items sorted by id."""

    item_ids: list[str]  # (N,) input ids
    tasks: np.ndarray  # (N,) task name of each input
    scratch_s: np.ndarray  # (N, K) seconds of each stage from scratch
    escalate_s: np.ndarray  # (N, K, K) seconds to continue k → j (j > k), NaN elsewhere
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
    label: np.ndarray  # (N,) acceptance label of the returned output (what methods are tuned on)
    paths: list[tuple[int, ...]]  # stages run per input, in order
    restarts: np.ndarray  # (N,) moves that ran a deeper stage from scratch


@dataclass(frozen=True)
class ReplayInput:
    """An input as a policy sees it in replay (no text: observers look predictions up)."""

    item_id: str
    task: str
    text: str = ""


@dataclass(frozen=True)
class ReplayRun:
    stage: int
    from_stage: int | None  # the stage whose output it continued; None from scratch


@dataclass
class ReplayPath:
    request: ReplayInput
    runs: list[ReplayRun] = field(default_factory=list)


def simulate(data: ReplayData, policy: Policy) -> Replayed:
    """Drive ``policy`` over every input as the pipeline would, summing the cached costs."""
    K = data.n_stages
    requests = [ReplayInput(i, str(t)) for i, t in zip(data.item_ids, data.tasks, strict=True)]
    entries = list(policy.entry(requests))
    if len(entries) != data.n:
        raise AsdError(f"policy '{policy.name}': {len(entries)} entry stages for {data.n} inputs")
    cost = np.zeros(data.n)
    restarts = np.zeros(data.n, np.int64)
    paths = []
    at: dict[int, list[int]] = defaultdict(list)
    for i, s in enumerate(entries):
        if not 0 <= s < K:
            raise AsdError(f"replay: entry stage {s} for input {data.item_ids[i]} is not a stage")
        paths.append(ReplayPath(requests[i], [ReplayRun(int(s), None)]))
        cost[i] = data.scratch_s[i, s]
        at[int(s)].append(i)
    for stage in range(K):
        idx = at.pop(stage, [])
        if not idx:
            continue
        moves = list(policy.next_stage(stage, [paths[i] for i in idx]))
        if len(moves) != len(idx):
            raise AsdError(f"policy '{policy.name}': {len(moves)} decisions for {len(idx)} inputs")
        for i, m in zip(idx, moves, strict=True):
            if m is None:
                continue
            if not isinstance(m, Decision) or not stage < m.stage < K:
                raise AsdError(f"replay: move {stage} → {m!r} for input {data.item_ids[i]}")
            cost[i] += (
                data.scratch_s[i, m.stage] if m.restart else data.escalate_s[i, stage, m.stage]
            )
            restarts[i] += int(m.restart)
            paths[i].runs.append(ReplayRun(m.stage, None if m.restart else stage))
            at[m.stage].append(i)
    depth = np.array([p.runs[-1].stage for p in paths], dtype=np.int64)
    return Replayed(
        depth=depth,
        cost_s=cost,
        quality=data.quality[np.arange(data.n), depth],
        label=data.label[np.arange(data.n), depth],
        paths=[tuple(r.stage for r in p.runs) for p in paths],
        restarts=restarts,
    )


def tune_threshold(
    run: Callable[[float], Replayed], reference_cost: float, budgets: Sequence[float]
) -> dict[float, float]:
    """Per cost budget (share of the deepest stage's mean cost), the best threshold.

    Among thresholds on a grid whose mean cost stays within the budget, the one with the highest
    mean acceptance label — the target the DP optimises too — ties to the cheaper. Run on the
    calibration split; applied to the test split. A budget that no threshold meets gets NaN:
    the baseline has no point there.
    """
    grid = np.linspace(0.0, 1.0, 41)
    outcomes = [(t, run(float(t))) for t in grid]
    chosen = {}
    for b in budgets:
        ok = [
            (r.label.mean(), -r.cost_s.mean(), t)
            for t, r in outcomes
            if r.cost_s.mean() <= b * reference_cost
        ]
        chosen[b] = float(max(ok)[2]) if ok else float("nan")
    return chosen
