"""Every method of the evaluation in one runner, by replay, cross-fitted over folds (DESIGN §10).

``evaluate`` returns the tidy results table: one row per method × λ × seed × dataset × input
with quality, cost (seconds), depth, path and the fold the input was evaluated in; every input
is evaluated once per method × λ × seed, by methods fitted on the other folds. Methods (each a
policy object from ``asd_core.policy.baselines`` or ``asd_core.policy.adaptive``, the same the online pipeline
runs), looked up by name in :data:`METHODS`:

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
  "best pair" curve, ``curves.pooled_envelope``); ``draft_verify_deepest``: the lossless
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

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from asd_core.data.splits import fold_of, is_pool_id
from asd_core.decoding.protocol import Policy
from asd_core.ground import belief, lambda_search, stopping
from asd_core.ground.config import Params, default
from asd_core.ground.errors import AsdError
from asd_core.learning.ensemble import TrainConfig
from asd_core.learning.features import FeatureSet
from asd_core.learning.predictor import LabelMode, QualityPredictor, train_predictor
from asd_core.policy.adaptive import AdaptivePolicy, CachedObserver
from asd_core.policy.baselines import (
    FixedDepth,
    OracleCascade,
    OracleRouter,
    RandomMixing,
    StageAlone,
    ThresholdCascade,
    ThresholdRouter,
    cheapest_acceptable,
)
from asd_core.policy.costs import CostSource, size_based_costs
from asd_core.policy.fitting import (
    PolicyModel,
    Predictions,
    RiskSettings,
    fit_policy_model,
    predictions,
)
from asd_core.runs.replay import ReplayData, Replayed, simulate, tune_threshold

CostMode = Literal["table", "per_input"]
BUDGETS = (0.3, 0.45, 0.6, 0.75, 0.9)  # cost budgets of the tuned baselines, share of deepest
MIX_SHARES = (0.0, 0.25, 0.5, 0.75, 1.0)  # random mixing: share of inputs sent deepest


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    """What the runner needs besides the generations (read from params)."""

    lambdas: tuple[float, ...]  # λ values of the research protocol (always in the grid)
    # the rest default to the parameters' (config.Params is the one source of defaults)
    seeds: tuple[int, ...] = tuple(default("eval_seeds"))  # runs; each trains its own predictor
    label_mode: LabelMode = default("label_mode")  # acceptance label ("answer" or "token")
    risk: RiskSettings = dataclasses.field(default_factory=RiskSettings)  # the DP's shrinkage
    n_bins: int = default("belief_bins")  # belief bins per (stage, view), quantile-cut
    smoothing: float = default("belief_smoothing")  # pseudo-inputs pulling sparse bins
    neighbours: int = default("entry_neighbours")  # held-out inputs the entry compares with
    stage_sizes: tuple[float, ...] = ()  # parameters (billions) per stage, for dp_size_costs
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)  # predictor training
    cost_source: CostSource = default("cost_source")  # measured seconds, the model, or flops
    folds: int = default("eval_folds")  # cross-fitting: items evaluated by the other folds' fits
    dense_lambdas: int = default("dense_lambdas")  # at least this many λ on the DP curves
    max_lambdas: int = 60  # at most this many (change points are thinned evenly beyond it)


# -- one fold's fitted pieces --------------------------------------------------------------------
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


def _cascade(
    threshold: float, observer: CachedObserver, stages: tuple[int, ...], name: str
) -> Policy:
    return ThresholdCascade(threshold, stages, observer, name)


def _router(threshold: float, observer: CachedObserver) -> Policy:
    return ThresholdRouter(threshold, observer, "router")


def _replay_threshold(
    data: ReplayData,
    make: Callable[[float, CachedObserver], Policy],
    observer: CachedObserver,
    threshold: float,
) -> Replayed:
    return simulate(data, make(threshold, observer))


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


def _dp_policy(fitted: Fitted, name: str, lam: float, observer: CachedObserver) -> AdaptivePolicy:
    model, rule, costs, mode = fitted.variants[name]
    return AdaptivePolicy(model, lam, observer, rule=rule, costs=costs, name=name, cost_mode=mode)


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
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The tidy results table and side information (λ grid, costs, missing budgets).

    Cross-fitted: items are dealt into ``settings.folds`` folds by a stable hash of their id
    (``data.splits.fold_of``). For each fold, every learned method is fitted on the other folds
    (their ``calibration`` rows calibrate, give the DP its beliefs and tune thresholds; the rest
    train) and evaluated on this fold, so every item is evaluated exactly once per method × λ ×
    seed, by methods that never saw it. The ``fold`` column says which. Unlabelled pool prompts
    (``data.splits.is_pool_id``) are never evaluated: they join every fold's training rows.
    """
    K = n_stages
    pool = generations["item_id"].map(lambda i: is_pool_id(str(i))).to_numpy(bool)
    extra_train, generations = generations[pool], generations[~pool]
    fold = generations["item_id"].map(lambda i: fold_of(str(i), settings.folds)).to_numpy()
    for f in range(settings.folds):
        if not (fold == f).any():
            raise AsdError(
                f"eval_folds: fold {f} of {settings.folds} holds no item; use fewer folds"
            )
    src, sizes = settings.cost_source, settings.stage_sizes
    everything = ReplayData.from_frame(generations, K, settings.label_mode, src, sizes)
    deepest_cost = float(everything.scratch_s[:, -1].mean())
    info: dict[str, Any] = {"deepest_cost_s": deepest_cost, "folds": {}, "missing": []}
    folds: list[tuple[dict[str, pd.DataFrame], dict[str, ReplayData]]] = []
    for f in range(settings.folds):
        rest = generations[fold != f]
        parts = {
            "train": pd.concat([rest[rest["split"] != "calibration"], extra_train]),
            "calibration": rest[rest["split"] == "calibration"],
            "test": generations[fold == f],
        }
        for name, part in parts.items():
            if part.empty:
                raise AsdError(f"evaluation: fold {f} leaves no '{name}' rows")
        data = {
            p: ReplayData.from_frame(parts[p], K, settings.label_mode, src, sizes)
            for p in ("calibration", "test")
        }
        folds.append((parts, data))
    work = [(f, seed) for f in range(settings.folds) for seed in settings.seeds]
    fitted: dict[tuple[int, int], Fitted] = {}
    for f, seed in tqdm(work, desc="fitting (fold × seed)", disable=not progress):
        fitted[f, seed] = fit_fold(folds[f][0], folds[f][1], settings, K, seed)
    grid = lambda_grid(list(fitted.values()), settings)
    info["lambda_grid"] = grid
    out: list[pd.DataFrame] = []
    for f, seed in tqdm(work, desc="replay (fold × seed)", disable=not progress):
        frames, missing, fold_info = _evaluate_fold(
            folds[f][1], fitted[f, seed], settings, K, seed, grid
        )
        out += [frame.assign(fold=f) for frame in frames]
        info["missing"] += [{**m, "fold": f, "seed": seed} for m in missing]
        info["folds"].setdefault(f, {"n_test_items": folds[f][1]["test"].n, "seeds": {}})
        info["folds"][f]["seeds"][seed] = fold_info
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
    """Every method on one fold's test inputs, from what was fitted on the other folds."""
    test, cal = data["test"], data["calibration"]
    out: list[pd.DataFrame] = []
    missing: list[dict[str, Any]] = []

    def run(policy: Policy, lam: float, on: ReplayData = test) -> None:
        out.append(_rows(policy.name, lam, seed, on, simulate(on, policy)))

    if seed == settings.seeds[0]:  # nothing learned: one copy is enough
        for k in range(K):
            run(StageAlone(k, K), math.nan)
        labels = dict(zip(test.item_ids, cheapest_acceptable(test.label).tolist(), strict=True))
        best = test.quality >= test.quality.max(axis=1, keepdims=True)
        by_quality = dict(zip(test.item_ids, best.argmax(axis=1).tolist(), strict=True))
        run(OracleRouter(labels, K), math.nan)
        run(OracleCascade(labels, K), math.nan)
        run(OracleRouter(by_quality, K, name="oracle_router_quality"), math.nan)
        if K >= 2:
            draft = FixedDepth(K - 1, K, start=K - 2)
            draft.name = "draft_verify_deepest"
            run(draft, math.nan)
    for share in MIX_SHARES:
        mix = RandomMixing([1.0 - share, *([0.0] * (K - 2)), share], seed)
        mix.name = "random"
        run(mix, share)
    # tuned baselines: thresholds chosen on the calibration inputs, applied to the test inputs
    score_cal, score_test = fitted.observers["calibration"], fitted.observers["test"]
    families: dict[str, Callable[[float, CachedObserver], Policy]] = {
        "static_cascade": functools.partial(
            _cascade, stages=tuple(range(K)), name="static_cascade"
        ),
        "router": _router,
    }
    for i in range(K - 1):
        for j in range(i + 1, K):
            families[f"pair_{i}_{j}"] = functools.partial(
                _cascade, stages=(i, j), name=f"pair_{i}_{j}"
            )
    cal_deepest = float(cal.scratch_s[:, -1].mean())
    for name, make in families.items():
        on_cal = functools.partial(_replay_threshold, cal, make, score_cal)
        tuned = tune_threshold(on_cal, cal_deepest, BUDGETS)
        for budget, t in tuned.items():
            if math.isnan(t):
                missing.append({"method": name, "budget": budget})
                continue
            run(make(t, score_test), budget)
    # the DP policy and its ablations on the dense λ grid
    for name in fitted.variants:
        observer = fitted.observers["heuristic_test" if name == "dp_no_predictor" else "test"]
        for lam in grid:
            run(_dp_policy(fitted, name, lam, observer), lam)
    model = fitted.variants["dp"][0]
    fold_info = {
        "prior": model.prior.tolist(),
        "scratch_rel": model.costs.scratch.tolist(),
        "held_out_inputs": model.held_out.n,
    }
    return out, missing, fold_info


def results_settings(params: Params) -> EvalSettings:
    """:class:`EvalSettings` from a notebook's validated parameters."""
    return EvalSettings(
        lambdas=tuple(params.lambdas),
        seeds=tuple(params.eval_seeds),
        label_mode=params.label_mode,
        risk=RiskSettings.from_params(params),
        n_bins=params.belief_bins,
        smoothing=params.belief_smoothing,
        neighbours=params.entry_neighbours,
        dense_lambdas=params.dense_lambdas,
        stage_sizes=tuple(params.stage_sizes),
        train=TrainConfig.from_params(params),
        cost_source=params.cost_source,
        folds=params.eval_folds,
    )
