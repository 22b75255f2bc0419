"""Method names, display labels and ordering, the analysis settings, and the results table notebook 05 reads.

Method names follow the runner: ``stage_k``, ``oracle_router``, ``oracle_cascade``,
``draft_verify_deepest``, ``random``, ``static_cascade``, ``router``, ``pair_i_j``, ``dp`` and the
``dp_*`` ablations. ``best_pair`` is a pseudo-method: every ``pair_i_j`` point pooled, whose
upper envelope is the best two-stage pair at each cost.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from asd_core.analysis import summaries
from asd_core.ground import stats
from asd_core.ground.config import Params, default
from asd_core.ground.errors import AsdError

ORACLE = "oracle_router"  # the yardstick of oracle gaps and saving shares


CHEAPEST = "stage_0"  # anchors the normalised area at 0


BEST_PAIR = "best_pair"  # pseudo-method: all pair_i_j points pooled


ROUTER = "router"  # the baseline the DP's area is compared with, paired


ABLATIONS = (
    "dp",
    "dp_no_risk",
    "dp_no_predictor",
    "dp_no_smoothing",
    "dp_size_costs",
    "dp_no_restart",
    "dp_myopic",
    "dp_sequential",
    "dp_per_input",
)


AREA_METHODS = ("dp", "static_cascade", "router", BEST_PAIR)  # compared in the headline table


CURVE_BASELINES = ("random", "static_cascade", "router", BEST_PAIR)  # curves on the Pareto figure


SINGLE_POINTS = (
    "oracle_router",
    "oracle_router_quality",
    "oracle_cascade",
    "draft_verify_deepest",
)  # besides stage_k


# Display order of methods in tables and legends; unknown names follow, sorted.
_ORDER = (
    *SINGLE_POINTS,
    "dp",
    "static_cascade",
    "router",
    BEST_PAIR,
    "random",
    *ABLATIONS[1:],  # the DP itself is listed above
)


_LABELS = {
    "dp": "DP policy (ours)",
    "dp_no_risk": "DP, no risk adjustment",
    "dp_no_predictor": "DP, no predictor (max-prob.)",
    "dp_no_smoothing": "DP, raw counts (no smoothing)",
    "dp_size_costs": "DP, size-based costs",
    "dp_no_restart": "DP, continue only (no restarts)",
    "dp_myopic": "myopic stopping",
    "dp_sequential": "sequential cascade (no entry, no skips)",
    "dp_per_input": "DP, per-input costs",
    "static_cascade": "static cascade (FrugalGPT-style)",
    "router": "router (RouteLLM-style)",
    BEST_PAIR: "best two-stage pair (envelope)",
    "random": "random mixing",
    "oracle_router": "oracle router (agreement label)",
    "oracle_router_quality": "oracle router (ground truth)",
    "oracle_cascade": "oracle cascade",
    "draft_verify_deepest": "draft + verify (deepest output)",
}


class AnalysisError(AsdError):
    """A results table or setting the analysis cannot use."""


@dataclass(frozen=True)
class AnalysisSettings:
    """Notebook 05's parameters, checked on construction (defaults: the parameters')."""

    n_resamples: int = default("analysis_bootstrap_resamples")  # bootstrap resamples per CI
    alpha: float = default("analysis_alpha")  # Holm family-wise error rate; CIs are 1 − alpha
    ci_method: str = default("analysis_ci_method")  # "percentile" (fast), "BCa" or "basic"
    headline_method: str = default("headline_method")  # the method the headline table reports

    @classmethod
    def from_params(cls, params: Params) -> AnalysisSettings:
        return cls(
            params.analysis_bootstrap_resamples,
            params.analysis_alpha,
            params.analysis_ci_method,
            params.headline_method,
        )

    def __post_init__(self) -> None:
        if not isinstance(self.n_resamples, int) or self.n_resamples < 1:
            raise AnalysisError(
                f"key 'analysis_bootstrap_resamples': must be a positive integer (got {self.n_resamples!r})"
            )
        if not isinstance(self.alpha, float) or not 0.0 < self.alpha < 1.0:
            raise AnalysisError(
                f"key 'analysis_alpha': must be a float in (0, 1) (got {self.alpha!r})"
            )
        if self.ci_method not in ("percentile", "BCa", "basic"):
            raise AnalysisError(
                f"key 'analysis_ci_method': must be 'percentile', 'BCa' or 'basic' (got {self.ci_method!r})"
            )
        if not isinstance(self.headline_method, str) or not self.headline_method:
            raise AnalysisError(
                f"key 'headline_method': must be a method name (got {self.headline_method!r})"
            )

    @property
    def confidence(self) -> float:
        """Nominal coverage of every CI."""
        return 1.0 - self.alpha

    def content(self) -> dict[str, Any]:
        """The settings under their parameter names, for the provenance digest."""
        return {
            "analysis_bootstrap_resamples": self.n_resamples,
            "analysis_alpha": self.alpha,
            "analysis_ci_method": self.ci_method,
            "headline_method": self.headline_method,
        }


def load_results(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Notebook 04's results table, checked (:func:`summaries.check_table`)."""
    path = Path(path)
    if not path.is_file():
        raise AnalysisError(f"{path}: results table not found (run notebook 04 first)")
    df = pd.read_parquet(path)
    try:
        summaries.check_table(df)
    except stats.StatsError as err:
        raise AnalysisError(f"{path}: {err}") from None
    return df


def label(method: str) -> str:
    """A human-readable name for a method."""
    if m := re.fullmatch(r"stage_(\d+)", method):
        return f"stage {m.group(1)} alone"
    if m := re.fullmatch(r"pair_(\d+)_(\d+)", method):
        return f"pair {m.group(1)}→{m.group(2)}"
    return _LABELS.get(method, method)


def order_key(method: str) -> tuple[int, int, str]:
    if m := re.fullmatch(r"stage_(\d+)", method):
        return (0, int(m.group(1)), method)
    if method in _ORDER:
        return (1, _ORDER.index(method), method)
    return (2, 0, method)


def ordered(methods: Sequence[str] | set[str]) -> list[str]:
    """Methods in display order: stages, oracles, ours, baselines, ablations, the rest."""
    return sorted(set(methods), key=order_key)


def stage_index(method: str) -> int | None:
    m = re.fullmatch(r"stage_(\d+)", method)
    return int(m.group(1)) if m else None


def lam_label(method: str, lam: float) -> str:
    """What ``lam`` means for a method: λ (DP), share sent deepest (random), or a cost budget."""
    if method == "dp" or method.startswith("dp_"):
        return f"λ={lam:g}"
    if method == "random":
        return f"deepest share={lam:g}"
    return f"budget={lam:g}"


def summary_row(summary: pd.DataFrame, method: str) -> pd.Series | None:
    rows = summary[summary["method"] == method]
    return rows.iloc[0] if len(rows) == 1 else None


def datasets_in(df: pd.DataFrame, datasets: Sequence[str] | None) -> list[str]:
    present = sorted(map(str, df["dataset"].unique()))
    if datasets is None:
        return present
    missing = [d for d in datasets if d not in present]
    if missing:
        raise AnalysisError(
            f"dataset(s) {', '.join(missing)} not in the table ({', '.join(present)})"
        )
    return list(datasets)
