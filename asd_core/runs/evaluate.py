"""Every method of the evaluation in one runner, by replay, cross-fitted over folds.

``evaluate`` returns the tidy results table: one row per method × λ × seed × dataset × input
with quality, cost (seconds), depth, path and the fold the input was evaluated in; every input
is evaluated once per method × λ × seed, by methods fitted on the other folds
(:mod:`asd_core.runs.folds`). The methods are registered by name in :mod:`asd_core.runs.methods`:

* ``stage_k``: each stage alone; ``oracle_router``/``oracle_cascade``: the limits on the
  acceptance label the learned methods are tuned on, ``oracle_router_quality``: on ground truth
  (the cheapest stage with the best task quality);
* ``random``: stage 0 or the deepest stage at random, ``lam`` = share sent deepest;
* ``static_cascade``: FrugalGPT-style, stop at the first stage whose calibrated P(accept) clears
  one threshold, tuned on the calibration split per cost budget (``lam`` = budget, a share of
  the deepest stage's cost); a budget no threshold meets in some fold is listed in
  ``info["missing"]`` and left out of that seed's results (it would cover only some inputs);
* ``router``: RouteLLM-style, straight to the cheapest stage whose input-only P(accept) clears
  a threshold, tuned the same way;
* ``pair_i_j``: two-stage cascades i → j with a tuned threshold (the envelope over pairs is the
  "best pair" curve, ``frontier.pooled_envelope``); ``draft_verify_deepest``: the lossless
  two-model route to the deepest stage's output (draft with the stage below, verify + continue);
* ``dp``: the adaptive policy, route then cascade with restarts, on a dense λ grid placed where
  the solved policies change (:func:`lambda_grid`); ablations ``dp_no_predictor``
  (max-probability heuristic, no input head), ``dp_no_risk`` (α = 0, β = 0.5),
  ``dp_no_smoothing`` (raw counts), ``dp_size_costs`` (costs ∝ model size, no reuse),
  ``dp_no_restart``, ``dp_myopic``, ``dp_sequential`` (no entry decision, no skips, no
  restarts) and ``dp_per_input`` (each input's own predicted costs).

Tuned thresholds, the DP's targets and both label oracles use the same acceptance label
(``label_mode``); every method is scored on ground-truth task quality.

Each seed trains its own predictor ensemble (member seeds derived from the run seed); the
generations are shared, so seeds differ in what is learned, not in what the models wrote.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from asd_core.data.splits import is_pool_id
from asd_core.ground import lambda_search, logs, stopping
from asd_core.learning.predictor import QualityPredictor
from asd_core.policy.adaptive import AdaptivePolicy, CachedObserver
from asd_core.policy.fitting import (
    PolicyModel,
)
from asd_core.runs import methods
from asd_core.runs.eval_settings import EvalSettings
from asd_core.runs.folds import Fitted, fit_fold, fold_frames
from asd_core.runs.replay import ReplayData, Replayed, simulate

log = logging.getLogger(__name__)


def _rows(method: str, lam: float, seed: int, data: ReplayData, r: Replayed) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "method": method,
            "lam": lam,
            "seed": seed,
            "dataset": data.tasks,
            "item_id": data.item_ids,
            "quality": r.quality,
            "label": r.label,
            "cost": r.cost_s,
            "depth": r.depth,
            "tokens": data.n_out[np.arange(data.n), r.depth],  # of the returned output
            "restarts": r.restarts,
            "path": ["→".join(map(str, p)) for p in r.paths],
        }
    )


def lambda_grid(fitted: Sequence[Fitted], settings: EvalSettings) -> list[float]:
    """The λ values of the DP curves: one inside every interval where some fold's solved ``dp``
    policy (its table and its entry choices on the held-out inputs) stays constant, thinned
    evenly to ``max_lambdas``, filled to ``dense_lambdas``, plus the protocol's ``lambdas``."""
    extra = [float(x) for x in settings.lambdas]
    if settings.dense_lambdas <= 0:
        return sorted(set(extra))
    lo, hi = min(extra) / 10.0, max(extra) * 10.0
    changes: list[float] = []
    for f in fitted:
        model = f.variants["dp"][0]
        held = model.held_out
        near = stopping.nearest(held.head, held.head, model.neighbours, held.tasks, held.tasks)

        def signature(
            lam: float,
            model: PolicyModel = model,
            near: np.ndarray = near,
            observer: CachedObserver = f.observers["calibration"],
        ) -> bytes:
            policy = AdaptivePolicy(model, lam, observer)
            values = stopping.entry_values(policy.entry_cost, policy.entry_loss, lam, near)
            tables = b"".join(lambda_search.signature(t) for _, t in sorted(policy.tables.items()))
            return tables + stopping.decide_entries(values).tobytes()

        changes += lambda_search.breakpoints(signature, lo, hi, n_grid=60)
    changes.sort()
    budget = max(settings.max_lambdas - len(extra) - 1, 1)
    if len(changes) > budget:
        keep = np.linspace(0, len(changes) - 1, budget).round().astype(int)
        changes = [changes[i] for i in sorted(set(keep.tolist()))]
    return lambda_search.dense_lambdas(changes, lo, hi, settings.dense_lambdas, extra)


# -- the evaluation ------------------------------------------------------------------------------
def evaluate(
    generations: pd.DataFrame,
    settings: EvalSettings,
    n_stages: int,
    progress: bool = True,
    predictors: Mapping[tuple[int, int], QualityPredictor] | None = None,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The tidy results table and side information (λ grid, costs, missing budgets).

    ``predictors`` (fold, seed) → the predictor saved by notebook 03
    (:func:`asd_core.runs.folds.load_fold_predictors`); without them each fold trains its own.

    Cross-fitted: items are dealt into ``settings.folds`` folds by a stable hash of their id
    (``data.splits.fold_of``). For each fold, every learned method is fitted on the other folds
    (their ``calibration`` rows calibrate, give the DP its beliefs and tune thresholds; the rest
    train) and evaluated on this fold, so every item is evaluated exactly once per method × λ ×
    seed, by methods that never saw it. The ``fold`` column says which. Unlabelled pool prompts
    (``data.splits.is_pool_id``) are never evaluated: they join every fold's training rows.
    """
    K = n_stages
    parts_of_folds = fold_frames(generations, settings.folds)
    pool = generations["item_id"].map(lambda i: is_pool_id(str(i))).to_numpy(bool)
    tested = generations[~pool]  # every item is tested in exactly one fold
    src, sizes = settings.cost_source, settings.stage_sizes
    everything = ReplayData.from_frame(tested, K, settings.label_mode, src, sizes)
    deepest_cost = float(everything.scratch_s[:, -1].mean())
    info: dict[str, Any] = {"deepest_cost_s": deepest_cost, "folds": {}, "missing": []}
    folds: list[tuple[dict[str, pd.DataFrame], dict[str, ReplayData]]] = []
    for parts in parts_of_folds:
        data = {
            p: ReplayData.from_frame(parts[p], K, settings.label_mode, src, sizes)
            for p in ("calibration", "test")
        }
        folds.append((parts, data))
    work = [(f, seed) for f in range(settings.folds) for seed in settings.seeds]
    fitted: dict[tuple[int, int], Fitted] = {}
    fitting_log = logs.Progress(log, "fitting", len(work), unit="folds × seeds", every_s=0.0)
    for f, seed in tqdm(work, desc="fitting (fold × seed)", disable=not progress):
        given = predictors.get((f, seed)) if predictors else None
        fitted[f, seed] = fit_fold(folds[f][0], folds[f][1], settings, K, seed, given)
        fitting_log.update()
    grid = lambda_grid(list(fitted.values()), settings)
    info["lambda_grid"] = grid
    out: list[pd.DataFrame] = []
    replay_log = logs.Progress(log, "replay", len(work), unit="folds × seeds", every_s=0.0)
    for f, seed in tqdm(work, desc="replay (fold × seed)", disable=not progress):
        frames, missing, fold_info = _evaluate_fold(
            folds[f][1], fitted[f, seed], settings, K, seed, grid
        )
        out += [frame.assign(fold=f) for frame in frames]
        info["missing"] += [{**m, "fold": f, "seed": seed} for m in missing]
        info["folds"].setdefault(f, {"n_test_items": folds[f][1]["test"].n, "seeds": {}})
        info["folds"][f]["seeds"][seed] = fold_info
        replay_log.update()
    results = _drop_partial_points(pd.concat(out, ignore_index=True), info["missing"])
    results["cost_rel"] = results["cost"] / deepest_cost
    results.attrs["cost_source"] = src
    return results, info


def _drop_partial_points(results: pd.DataFrame, missing: list[dict[str, Any]]) -> pd.DataFrame:
    """Drop a tuned baseline's budget in a seed when some fold found no threshold for it.

    Such a point would cover only part of the inputs and could not be compared with the others
    item by item; it is missing as a whole (``missing`` keeps the folds that lacked it).
    """
    if not missing:
        return results
    gone = {(m["method"], float(m["budget"]), m["seed"]) for m in missing}
    keys = zip(results["method"], results["lam"].astype(float), results["seed"], strict=True)
    keep = np.fromiter((k not in gone for k in keys), dtype=bool, count=len(results))
    return results[keep].reset_index(drop=True)


def _evaluate_fold(
    data: dict[str, ReplayData],
    fitted: Fitted,
    settings: EvalSettings,
    K: int,
    seed: int,
    grid: Sequence[float],
) -> tuple[list[pd.DataFrame], list[dict[str, Any]], dict[str, Any]]:
    """Every selected method (:mod:`asd_core.runs.methods`) on one fold's test inputs."""
    test = data["test"]
    ctx = methods.FoldContext(test, data["calibration"], fitted, settings, K, seed, grid)
    out: list[pd.DataFrame] = []
    missing: list[dict[str, Any]] = []
    for method in methods.selected(settings.methods):
        if method.once and seed != settings.seeds[0]:  # nothing learned: one copy is enough
            continue
        runs = method.run(ctx)
        out += [_rows(p.name, x, seed, test, simulate(test, p)) for p, x in runs.policies]
        missing += runs.missing
    model = fitted.variants["dp"][0]
    fold_info = {
        "prior": model.prior.tolist(),
        "scratch_rel": model.costs.scratch.tolist(),
        "held_out_inputs": model.held_out.n,
    }
    return out, missing, fold_info
