"""The learned policy: predictor → risk adjustment → belief state → DP table (docs/design.md).

:func:`~asd_core.policy.fitting.fit_policy_model` counts everything the solver needs on held-out
inputs; :class:`AdaptivePolicy` makes the pipeline's decisions for one λ: the entry compares, per
stage, what entering there did for the most similar held-out inputs (by the input-only head's
predictions for every stage), then each step is a table lookup. It reads predictions through
an *observer*: :class:`LiveObserver` computes them from live outputs (the online pipeline),
:class:`CachedObserver` looks them up (replay), so both drive the same policy object.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from typing import Any, Literal, Protocol

import numpy as np
import pandas as pd

from asd_core.decoding.pipeline import request_prompt_ids
from asd_core.decoding.protocol import Move, PathLike, RequestLike, view_of
from asd_core.ground import belief, stopping
from asd_core.ground.errors import AsdError
from asd_core.learning.features import StageView
from asd_core.learning.predictor import QualityPredictor
from asd_core.policy.fitting import PolicyModel, Predictions, adjusted


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
            ids = request_prompt_ids(self.entry_tokenizer, r)
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

    def forget(self, item_id: str) -> None:
        """Drop what was kept about a finished input (a server sees endless new ones)."""
        self.n_in.pop(item_id, None)


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
                d = stopping.decide(table, stage, view, b)
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
    belief_bin: int,
    task: str,
    n_in: float,
    known: dict[int, float],
) -> stopping.Decision:
    """The DP decision with this input's own costs (re-solved from ``stage`` on).

    ``known`` holds the output lengths of the stages that ran; the others are predicted per task.
    """
    assert model.input_costs is not None
    costs = model.input_costs.costs(task, n_in, known, model.n_bins)
    return stopping.decide_per_input(model.beliefs, costs, lam, stage, view, belief_bin, rule=rule)


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
            stopping.decide(table, v.stage, view, b)
            t3 = time.perf_counter()
            parts["features"].append((t1 - t0) * 1e6)
            parts["predictor"].append((t2 - t1) * 1e6)
            parts["adjust_and_lookup"].append((t3 - t2) * 1e6)
    total = [sum(x) for x in zip(*parts.values(), strict=True)]
    rows = [{"step": k, "median_us": float(np.median(v))} for k, v in parts.items()]
    rows.append({"step": "total per decision", "median_us": float(np.median(total))})
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

    Long because: one row per (λ, stage, view, bin) with its range, action and counts.
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
