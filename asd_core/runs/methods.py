"""The evaluation's methods, registered by name the way backends are: each yields the policies
it evaluates on one fold's test inputs.

A method is a function of a :class:`FoldContext` (the fold's test and calibration inputs, what
was fitted on the other folds, the settings, the seed and the DP's λ grid) that returns the
policies to replay, each with its curve coordinate (λ, a cost budget or a share; NaN for a
single point), and the budgets it could not meet. ``@evaluation_method(name)`` registers one;
:func:`selected` looks them up in registration order, which is the order of the results rows.
Every policy is an object from :mod:`asd_core.policy`, the same the online pipeline runs.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from asd_core.decoding.protocol import Policy
from asd_core.ground.errors import AsdError
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
from asd_core.runs.eval_settings import EvalSettings
from asd_core.runs.folds import Fitted
from asd_core.runs.replay import ReplayData, Replayed, simulate, tune_threshold

BUDGETS = (0.3, 0.45, 0.6, 0.75, 0.9)  # cost budgets of the tuned baselines, share of deepest
MIX_SHARES = (0.0, 0.25, 0.5, 0.75, 1.0)  # random mixing: share of inputs sent deepest


@dataclass(frozen=True)
class FoldContext:
    """What a method sees of one fold × seed."""

    test: ReplayData  # this fold's inputs: what the policies are evaluated on
    calibration: ReplayData  # the other folds' calibration inputs: what thresholds are tuned on
    fitted: Fitted  # predictor, DP variants and observers fitted on the other folds
    settings: EvalSettings
    n_stages: int
    seed: int
    grid: Sequence[float]  # λ of the DP curves


@dataclass
class MethodRuns:
    """The policies a method evaluates on one fold, and the budgets it could not meet."""

    policies: list[tuple[Policy, float]] = field(default_factory=list)  # (policy, curve x)
    missing: list[dict[str, Any]] = field(default_factory=list)  # {"method", "budget"}


MethodFn = Callable[[FoldContext], MethodRuns]


@dataclass(frozen=True)
class EvalMethod:
    name: str
    run: MethodFn
    once: bool  # learns nothing: evaluated on the first seed only


METHODS: dict[str, EvalMethod] = {}


def evaluation_method(name: str, *, once: bool = False) -> Callable[[MethodFn], MethodFn]:
    """Register ``fn`` as the evaluation method ``name`` (``once``: the first seed only)."""

    def register(fn: MethodFn) -> MethodFn:
        if name in METHODS:
            raise AsdError(f"evaluation method '{name}' is registered twice")
        METHODS[name] = EvalMethod(name, fn, once)
        return fn

    return register


def selected(names: Sequence[str] | None) -> list[EvalMethod]:
    """The methods named (all, in registration order, for None); an unknown name is an error."""
    if names is None:
        return list(METHODS.values())
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise AsdError(f"evaluation method '{unknown[0]}' is unknown; known: {', '.join(METHODS)}")
    return [m for m in METHODS.values() if m.name in names]


@evaluation_method("stages", once=True)
def stages_alone(ctx: FoldContext) -> MethodRuns:
    """``stage_k``: each stage alone."""
    K = ctx.n_stages
    return MethodRuns([(StageAlone(k, K), math.nan) for k in range(K)])


@evaluation_method("oracles", once=True)
def oracles(ctx: FoldContext) -> MethodRuns:
    """``oracle_router``/``oracle_cascade`` on the acceptance label the learned methods are tuned
    on; ``oracle_router_quality`` on ground truth (the cheapest stage with the best quality)."""
    K, test = ctx.n_stages, ctx.test
    labels = dict(zip(test.item_ids, cheapest_acceptable(test.label).tolist(), strict=True))
    best = test.quality >= test.quality.max(axis=1, keepdims=True)
    by_quality = dict(zip(test.item_ids, best.argmax(axis=1).tolist(), strict=True))
    return MethodRuns(
        [
            (OracleRouter(labels, K), math.nan),
            (OracleCascade(labels, K), math.nan),
            (OracleRouter(by_quality, K, name="oracle_router_quality"), math.nan),
        ]
    )


@evaluation_method("draft_verify_deepest", once=True)
def draft_verify_deepest(ctx: FoldContext) -> MethodRuns:
    """The lossless two-model route to the deepest stage: draft with the stage below, verify."""
    K = ctx.n_stages
    if K < 2:
        return MethodRuns()
    draft = FixedDepth(K - 1, K, start=K - 2)
    draft.name = "draft_verify_deepest"
    return MethodRuns([(draft, math.nan)])


@evaluation_method("random")
def random_mixing(ctx: FoldContext) -> MethodRuns:
    """``random``: stage 0 or the deepest stage at random; the curve x is the share sent deepest."""
    K = ctx.n_stages
    runs = MethodRuns()
    for share in MIX_SHARES:
        mix = RandomMixing([1.0 - share, *([0.0] * (K - 2)), share], ctx.seed)
        mix.name = "random"
        runs.policies.append((mix, share))
    return runs


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


@evaluation_method("thresholds")
def tuned_thresholds(ctx: FoldContext) -> MethodRuns:
    """``static_cascade`` (FrugalGPT-style), ``router`` (RouteLLM-style) and the two-stage
    ``pair_i_j`` cascades, each with thresholds tuned on the calibration inputs per cost budget
    (the curve x); a budget no threshold meets is reported missing, never filled in."""
    K, cal = ctx.n_stages, ctx.calibration
    score_cal, score_test = ctx.fitted.observers["calibration"], ctx.fitted.observers["test"]
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
    runs = MethodRuns()
    for name, make in families.items():
        on_cal = functools.partial(_replay_threshold, cal, make, score_cal)
        tuned = tune_threshold(on_cal, cal_deepest, BUDGETS)
        for budget, t in tuned.items():
            if math.isnan(t):
                runs.missing.append({"method": name, "budget": budget})
                continue
            runs.policies.append((make(t, score_test), budget))
    return runs


def dp_policy(fitted: Fitted, name: str, lam: float, observer: CachedObserver) -> AdaptivePolicy:
    """The fitted DP variant ``name`` at ``lam``, reading predictions through ``observer``."""
    model, rule, costs, mode = fitted.variants[name]
    return AdaptivePolicy(model, lam, observer, rule=rule, costs=costs, name=name, cost_mode=mode)


@evaluation_method("dp")
def dp_and_ablations(ctx: FoldContext) -> MethodRuns:
    """``dp`` and its ablations (every fitted variant) on the dense λ grid."""
    runs = MethodRuns()
    fitted = ctx.fitted
    for name in fitted.variants:
        observer = fitted.observers["heuristic_test" if name == "dp_no_predictor" else "test"]
        for lam in ctx.grid:
            runs.policies.append((dp_policy(fitted, name, lam, observer), lam))
    return runs
