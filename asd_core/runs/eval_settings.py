"""What the evaluation runner needs besides the generations, read from the parameters."""

from __future__ import annotations

import dataclasses
from typing import Literal

from asd_core.ground.config import Params, default
from asd_core.learning.ensemble import TrainConfig
from asd_core.learning.predictor import LabelMode
from asd_core.policy.costs import CostSource
from asd_core.policy.fitting import (
    RiskSettings,
)

CostMode = Literal["table", "per_input"]


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
    # evaluation methods by registered name (asd_core.runs.methods); None: all of them
    methods: tuple[str, ...] | None = None
    max_lambdas: int = 60  # at most this many (change points are thinned evenly beyond it)


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
