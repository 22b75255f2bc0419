"""Every method of the evaluation in one runner, by replay, cross-fitted over folds (DESIGN §10).

``evaluate`` returns the tidy results table: one row per method × λ × seed × dataset × input
with quality, cost (seconds), depth and the fold the input was evaluated in; every input is
evaluated once per method × λ × seed, by methods fitted on the other folds. Methods:

* ``stage_k``: each stage alone; ``oracle_router``/``oracle_cascade``: the limits (from labels);
* ``random``: stage 0 or the deepest stage at random, ``lam`` = share sent deepest;
* ``static_cascade``: FrugalGPT-style, stop at the first stage whose calibrated P(accept) clears
  one threshold, tuned on the calibration split per cost budget (``lam`` = budget, a share of
  the deepest stage's cost);
* ``router``: RouteLLM-style, straight to the cheapest stage whose input-only P(accept) clears
  a threshold, tuned the same way;
* ``pair_i_j``: two-stage cascades i → j with a tuned threshold (the envelope over pairs is the
  "best pair" curve, ``stats.pooled_envelope``); ``draft_verify_deepest``: the lossless
  two-model route to the deepest stage's output (draft with the stage below, verify + continue);
* ``dp``: the adaptive policy, route then cascade, for every λ and seed; ablations
  ``dp_no_predictor`` (max-probability heuristic instead of the ensemble, no input head),
  ``dp_no_risk`` (α = 0, β = 0.5), ``dp_size_costs`` (costs ∝ model size, no reuse),
  ``dp_myopic`` and ``dp_sequential`` (no entry decision, no skips); ``dp_per_input``: the
  DP with each input's own predicted costs (``cost_mode: per_input``).

Each seed trains its own predictor ensemble (member seeds derived from the run seed); the
generations are shared, so seeds differ in what is learned, not in what the models wrote.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from asd_core import stopping
from asd_core.adaptive import (
    CostSource,
    PolicyModel,
    RiskSettings,
    belief_table,
    entry_predictions,
    fit_policy_model,
    size_based_costs,
)
from asd_core.data.splits import fold_of, is_pool_id
from asd_core.errors import AsdError
from asd_core.eval.replay import (
    Beliefs,
    ReplayData,
    Replayed,
    dp_policy,
    dp_policy_per_input,
    oracle_cascade,
    oracle_router,
    random_mixing,
    simulate,
    stage_alone,
    threshold_cascade,
    threshold_router,
    tune_threshold,
)
from asd_core.features import FeatureSet
from asd_core.predictor import LabelMode, QualityPredictor, TrainConfig, train_predictor

BUDGETS = (0.3, 0.45, 0.6, 0.75, 0.9)  # cost budgets of the tuned baselines, share of deepest
MIX_SHARES = (0.0, 0.25, 0.5, 0.75, 1.0)  # random mixing: share of inputs sent deepest


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    """What the runner needs besides the generations (read from params)."""

    lambdas: tuple[float, ...]  # λ values of the DP policies
    seeds: tuple[int, ...]  # evaluation runs; each trains its own predictor
    label_mode: LabelMode = "answer"  # acceptance label ("answer" or "token")
    risk: RiskSettings = dataclasses.field(
        default_factory=RiskSettings
    )  # shrinkage of the DP method
    n_bins: int = 20  # belief bins
    smoothing: float = 1.0  # transition pseudo-count
    stage_sizes: tuple[float, ...] = ()  # parameters (billions) per stage, for dp_size_costs
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)  # predictor training
    cost_source: CostSource = "measured"  # seconds as measured, or the size × tokens proxy
    folds: int = 5  # cross-fitting folds: each item is evaluated by methods fitted on the others


Family = Callable[[float, ReplayData, np.ndarray], Replayed]  # threshold, data, scores


def _cascade(t: float, data: ReplayData, score: np.ndarray, stages: tuple[int, ...]) -> Replayed:
    return threshold_cascade(data, score, t, stages)


def _router(t: float, data: ReplayData, score: np.ndarray) -> Replayed:
    return threshold_router(data, score, t)


def _on(run: Family, data: ReplayData, score: np.ndarray, t: float) -> Replayed:
    return run(t, data, score)


def _rows(method: str, lam: float, seed: int, data: ReplayData, r: Replayed) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "method": method,
            "lam": lam,
            "seed": seed,
            "dataset": data.tasks,
            "item_id": data.item_ids,
            "quality": r.quality,
            "cost": r.cost_s,
            "depth": r.depth,
            "path": ["→".join(map(str, p)) for p in r.paths],
        }
    )


def heuristic_scores(df: pd.DataFrame, n_stages: int) -> np.ndarray:
    """(N, K) max-probability heuristic: exp(mean log-prob) of each stage's output."""
    df = df.sort_values(["item_id", "stage"], kind="stable")
    score = df["logprobs"].map(lambda v: float(np.exp(np.mean(v))) if len(v) else 1.0)
    return score.to_numpy(float).reshape(-1, n_stages)


def _sequential_scores(
    predictor: QualityPredictor, model: PolicyModel, df: pd.DataFrame
) -> np.ndarray:
    """(N, K) calibrated P(accept) on the sequential path (no risk adjustment)."""
    return belief_table(predictor, model.prior, RiskSettings(alpha=0.0), df, model.n_stages)


def _heuristic_model(
    model: PolicyModel, train: pd.DataFrame, n_bins: int, smoothing: float
) -> PolicyModel:
    """The no-predictor ablation: beliefs from the heuristic, one entry bin for everyone."""
    K = model.n_stages
    h = heuristic_scores(train, K)
    bins = stopping.belief_bins(h, n_bins)
    entry = np.full(len(h), stopping.belief_bins(np.array([model.prior[0]]), n_bins)[0])
    trans = stopping.estimate_transitions(bins, entry, n_bins, smoothing)
    return dataclasses.replace(model, transitions=trans, pbar=stopping.bin_values(h, n_bins))


def evaluate(
    generations: pd.DataFrame,
    settings: EvalSettings,
    n_stages: int,
    progress: bool = True,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The tidy results table and side information (predictors' metrics, policy tables).

    Cross-fitted: items are dealt into ``settings.folds`` folds by a stable hash of their id
    (``data.splits.fold_of``). For each fold, every learned method is fitted on the other folds
    (their ``calibration`` rows calibrate and tune thresholds, the rest train) and evaluated
    on this fold, so every item is evaluated exactly once per method × λ × seed, by methods
    that never saw it. The ``fold`` column says which. Unlabelled pool prompts
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
    info: dict[str, Any] = {"deepest_cost_s": deepest_cost, "folds": {}}
    out: list[pd.DataFrame] = []
    bar = tqdm(
        total=settings.folds * len(settings.seeds),
        desc="evaluation (fold × seed)",
        disable=not progress,
    )
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
        frames, info["folds"][f] = _evaluate_fold(parts, settings, K, bar)
        out += [frame.assign(fold=f) for frame in frames]
    bar.close()
    results = pd.concat(out, ignore_index=True)
    results["cost_rel"] = results["cost"] / deepest_cost
    results.attrs["cost_source"] = src
    return results, info


def _evaluate_fold(
    splits: dict[str, pd.DataFrame], settings: EvalSettings, K: int, bar: Any
) -> tuple[list[pd.DataFrame], dict[str, Any]]:
    """Every method on one fold's ``test`` items, learned from its ``train``/``calibration``."""
    src, sizes = settings.cost_source, settings.stage_sizes
    test = ReplayData.from_frame(splits["test"], K, settings.label_mode, src, sizes)
    cal = ReplayData.from_frame(splits["calibration"], K, settings.label_mode, src, sizes)
    out: list[pd.DataFrame] = []
    cal_deepest = cal.scratch_s[:, -1].mean()
    seed0 = settings.seeds[0]
    for k in range(K):
        out.append(_rows(f"stage_{k}", np.nan, seed0, test, stage_alone(test, k)))
    out.append(_rows("oracle_router", np.nan, seed0, test, oracle_router(test)))
    out.append(_rows("oracle_cascade", np.nan, seed0, test, oracle_cascade(test)))
    if K >= 2:
        two = simulate(test, [K - 2] * test.n, lambda i, s, p: K - 1 if s == K - 2 else None)
        out.append(_rows("draft_verify_deepest", np.nan, seed0, test, two))
    info: dict[str, Any] = {"n_test_items": test.n, "seeds": {}}
    for seed in settings.seeds:
        bar.update(1)
        for share in MIX_SHARES:
            out.append(_rows("random", share, seed, test, random_mixing(test, share, seed)))
        predictor = train_predictor(
            splits["train"],
            splits["calibration"],
            FeatureSet(K),
            settings.label_mode,
            settings.train,
            seed,
        )
        model = fit_policy_model(
            predictor,
            splits["train"],
            settings.risk,
            settings.n_bins,
            settings.smoothing,
            src,
            sizes,
        )
        beliefs = Beliefs.of(model, splits["test"])
        info["seeds"][seed] = {"costs": model.costs.tolist(), "prior": model.prior.tolist()}
        # tuned baselines: thresholds chosen on the calibration split, applied to the test split
        s_cal, s_test = (
            _sequential_scores(predictor, model, splits[p]) for p in ("calibration", "test")
        )
        e_cal, e_test = (
            entry_predictions(predictor, splits[p], K)[0] for p in ("calibration", "test")
        )
        families: dict[str, tuple[Family, np.ndarray, np.ndarray]] = {
            "static_cascade": (functools.partial(_cascade, stages=tuple(range(K))), s_cal, s_test),
            "router": (_router, e_cal, e_test),
        }
        for i in range(K - 1):
            for j in range(i + 1, K):
                families[f"pair_{i}_{j}"] = (
                    functools.partial(_cascade, stages=(i, j)),
                    s_cal,
                    s_test,
                )
        for name, (run, sc, st) in families.items():
            tuned = tune_threshold(functools.partial(_on, run, cal, sc), cal_deepest, BUDGETS)
            for budget, t in tuned.items():
                out.append(_rows(name, budget, seed, test, run(t, test, st)))
        # the DP policy and its ablations, every λ
        no_risk = fit_policy_model(
            predictor,
            splits["train"],
            RiskSettings(alpha=0.0),
            settings.n_bins,
            settings.smoothing,
            src,
            sizes,
        )
        heur_model = _heuristic_model(model, splits["train"], settings.n_bins, settings.smoothing)
        h_test = heuristic_scores(splits["test"], K)
        h_beliefs = Beliefs(
            sequential=h_test,
            direct=h_test,
            entry=np.full(test.n, model.prior[0]),
        )
        by_size = settings.stage_sizes or tuple(float(k + 1) for k in range(K))
        variants = {
            "dp": (model, beliefs, stopping.DP, model.costs),
            "dp_no_risk": (
                no_risk,
                Beliefs.of(no_risk, splits["test"]),
                stopping.DP,
                no_risk.costs,
            ),
            "dp_no_predictor": (heur_model, h_beliefs, stopping.DP, heur_model.costs),
            "dp_size_costs": (model, beliefs, stopping.DP, size_based_costs(by_size)),
            "dp_myopic": (model, beliefs, stopping.MYOPIC, model.costs),
            "dp_sequential": (model, beliefs, stopping.SEQUENTIAL, model.costs),
        }
        for lam in settings.lambdas:
            for name, (m, b, rule, costs) in variants.items():
                table = stopping.solve(m.transitions, m.pbar, costs, lam, rule=rule)
                out.append(_rows(name, lam, seed, test, dp_policy(test, b, table, m.n_bins)))
            per_input = dp_policy_per_input(test, beliefs, model, lam, stopping.DP)
            out.append(_rows("dp_per_input", lam, seed, test, per_input))
    return out, info


def results_settings(params: Any, stage_sizes: Sequence[float] = ()) -> EvalSettings:
    """:class:`EvalSettings` from validated parameters (a Params or a dict)."""
    values = params.model_dump() if hasattr(params, "model_dump") else dict(params)
    return EvalSettings(
        lambdas=tuple(values["lambdas"]),
        seeds=tuple(values.get("eval_seeds", [1, 2, 3, 4, 5])),
        label_mode=values.get("label_mode", "answer"),
        risk=RiskSettings(
            values.get("risk_alpha", 10.0),
            values.get("risk_beta", 0.5),
            values.get("risk_n_max", 1000.0),
        ),
        n_bins=values.get("belief_bins", 20),
        smoothing=values.get("transition_smoothing", 1.0),
        stage_sizes=tuple(stage_sizes),
        train=TrainConfig.from_params(values),
        cost_source=values.get("cost_source", "measured"),
        folds=values.get("eval_folds", 5),
    )
