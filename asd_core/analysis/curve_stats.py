"""Curve statistics with CIs over inputs: the normalised area under the quality–cost curve, the oracle gap and the share of the oracle's saving.

These are statistics of a whole curve, which :func:`asd_core.analysis.summaries.summarise` does not
bootstrap: one set of input resamples per dataset is drawn (seeded), every (method, λ) point's
mean quality and cost is recomputed on each, and the statistic is evaluated on those means
(:func:`asd_core.ground.stats.resampled_means`). Seeds are averaged per input first, as in
``summarise``, so an input counts once. A chosen operating point (the headline λ) is held fixed
across resamples: the CI is conditional on the choice.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from asd_core.analysis import summaries
from asd_core.analysis.names import BEST_PAIR, CHEAPEST, ORACLE, ROUTER, AnalysisError, ordered
from asd_core.ground import frontier, stats


@dataclass(frozen=True)
class CurvePoints:
    """Every (method, λ) point of one dataset, per input (seed-averaged)."""

    keys: list[tuple[str, float]]  # (method, lam) per column; lam NaN for single points
    quality: np.ndarray  # (n_inputs, n_points) quality per input
    cost: np.ndarray  # (n_inputs, n_points) seconds per input

    @classmethod
    def of(cls, data: pd.DataFrame, dataset: str) -> CurvePoints:
        point = data["method"].astype(str) + "|" + data["lam"].map(repr)
        table = (
            data.assign(point=point)
            .groupby(["point", "item_id"])[["quality", "cost"]]
            .mean()
            .unstack("point")
        )
        names = list(table["quality"].columns)
        first = data.assign(point=point).drop_duplicates("point").set_index("point")
        keys = [(str(first.at[p, "method"]), float(first.at[p, "lam"])) for p in names]
        q, c = table["quality"].to_numpy(float), table["cost"].to_numpy(float)
        gaps = np.isnan(q).any(axis=0) | np.isnan(c).any(axis=0)
        if gaps.any():
            method, lam = keys[int(np.argmax(gaps))]
            raise AnalysisError(
                f"dataset '{dataset}': method '{method}' (λ={lam}) does not cover every input"
            )
        return cls(keys, q, c)

    def columns(self, method: str) -> np.ndarray:
        """Column indices of a method's points (``best_pair``: every pair's)."""
        if method == BEST_PAIR:
            hit = [i for i, (m, _) in enumerate(self.keys) if re.fullmatch(r"pair_\d+_\d+", m)]
        else:
            hit = [i for i, (m, _) in enumerate(self.keys) if m == method]
        return np.asarray(hit, dtype=int)

    def column(self, method: str, lam: float = float("nan")) -> int | None:
        """The column of one point, or None."""
        for i, (m, other) in enumerate(self.keys):
            if m == method and ((math.isnan(lam) and math.isnan(other)) or np.isclose(other, lam)):
                return i
        return None


Statistic = Callable[
    [np.ndarray, np.ndarray], float
]  # (mean quality, mean cost) per point -> value


def resampled_statistics(
    points: CurvePoints,
    statistics: Mapping[str, Statistic],
    confidence: float,
    n_resamples: int,
    seed: int,
) -> dict[str, stats.CI]:
    """Percentile CIs of statistics of the points' mean quality and cost, resampling inputs.

    Every statistic sees the same resamples (:func:`asd_core.ground.stats.bootstrap_of_means`),
    so CIs of different methods are paired.
    """
    return stats.bootstrap_of_means(
        (points.quality, points.cost), statistics, confidence, n_resamples, seed
    )


def _area(points: CurvePoints, cols: np.ndarray, lo: int, hi: int) -> Statistic:
    def f(q: np.ndarray, c: np.ndarray) -> float:
        return frontier.normalised_area(c[cols], q[cols], (c[lo], q[lo]), (c[hi], q[hi]))

    return f


def _area_difference(
    points: CurvePoints, cols: np.ndarray, others: np.ndarray, lo: int, hi: int
) -> Statistic:
    mine, theirs = _area(points, cols, lo, hi), _area(points, others, lo, hi)

    def f(q: np.ndarray, c: np.ndarray) -> float:
        return mine(q, c) - theirs(q, c)

    return f


def _gap(cols: np.ndarray, orc: int) -> Statistic:
    def f(q: np.ndarray, c: np.ndarray) -> float:
        if not c[orc] > 0:
            return float("nan")
        gap = frontier.oracle_gap(c[cols], q[cols], c[orc], q[orc])
        return gap.ratio if gap.reached else float("inf")

    return f


def saving_share(col: int, orc: int, hi: int) -> Statistic:
    def f(q: np.ndarray, c: np.ndarray) -> float:
        return frontier.saving_share(c[col], c[orc], c[hi])

    return f


def _anchors(points: CurvePoints, dataset: str, cheapest: str, reference: str) -> tuple[int, int]:
    lo, hi = points.column(cheapest), points.column(reference)
    if lo is None or hi is None:
        missing = cheapest if lo is None else reference
        raise AnalysisError(f"dataset '{dataset}': no single-point rows of '{missing}'")
    return lo, hi


def curve_table(
    results: pd.DataFrame,
    methods: Sequence[str] | None = None,
    confidence: float = 0.95,
    n_resamples: int = 1000,
    seed: int = 0,
    cheapest: str = CHEAPEST,
    reference: str | None = None,
    oracle: str = ORACLE,
) -> pd.DataFrame:
    """Per method × dataset: normalised area and oracle gap of its curve, with percentile CIs.

    ``results`` is the tidy results table. A method's curve is its (mean cost, mean quality)
    points, one per λ; ``best_pair`` pools every ``pair_i_j``. The area is
    :func:`frontier.normalised_area` between ``cheapest`` and ``reference`` (the same number as
    :func:`summaries.curve_summary`); the oracle gap is :func:`frontier.oracle_gap`'s ratio against
    ``oracle`` (+inf when the curve never reaches the oracle's quality, NaN without an oracle).
    Columns: method, dataset, n_points, n_inputs, area/_low/_high, area_vs_router/_low/_high
    (the method's area minus the router's on the same resamples: a paired CI), oracle_gap/_low/
    _high, reaches_oracle, and ``reason`` saying why a figure is undefined (NaN).

    Long because: one pass per dataset builds every method's statistics on the same resamples.
    """
    summaries.check_table(results)
    reference = reference or summaries.deepest_stage(results)
    present = set(map(str, results["method"].unique()))
    if methods is None:
        methods = ordered(
            present | ({BEST_PAIR} if any(m.startswith("pair_") for m in present) else set())
        )
    records = []
    for dataset, data in results.groupby("dataset", sort=True):
        points = CurvePoints.of(data, str(dataset))
        lo, hi = _anchors(points, str(dataset), cheapest, reference)
        orc = points.column(oracle)
        statistics: dict[str, Statistic] = {}
        shown = []
        router = points.columns(ROUTER)
        for name in methods:
            cols = points.columns(name)
            if cols.size == 0:
                continue
            shown.append((name, cols.size))
            statistics[f"area:{name}"] = _area(points, cols, lo, hi)
            if router.size:
                statistics[f"vs:{name}"] = _area_difference(points, cols, router, lo, hi)
            if orc is not None:
                statistics[f"gap:{name}"] = _gap(cols, orc)
        cis = resampled_statistics(points, statistics, confidence, n_resamples, seed)
        undefined = stats.CI(np.nan, np.nan, np.nan, confidence, "undefined")
        q_mean, c_mean = points.quality.mean(axis=0), points.cost.mean(axis=0)
        for name, n_points in shown:
            area = cis[f"area:{name}"]
            versus = cis.get(f"vs:{name}", undefined)
            gap = cis.get(f"gap:{name}", undefined)
            reasons = []
            if q_mean[hi] == q_mean[lo]:
                reasons.append("area undefined: the deepest stage is no better than stage 0")
            elif q_mean[hi] < q_mean[lo]:
                reasons.append("area inverted: the deepest stage is worse than stage 0")
            if orc is None:
                reasons.append("no oracle router")
            else:
                if math.isinf(gap.estimate):
                    reasons.append("never reaches the oracle router's quality")
                if c_mean[orc] >= c_mean[hi]:
                    reasons.append("the oracle router saves nothing")
            records.append(
                {
                    "method": name,
                    "dataset": dataset,
                    "n_points": n_points,
                    "n_inputs": points.quality.shape[0],
                    "area": area.estimate,
                    "area_low": area.low,
                    "area_high": area.high,
                    "area_vs_router": versus.estimate,
                    "area_vs_router_low": versus.low,
                    "area_vs_router_high": versus.high,
                    "oracle_gap": gap.estimate,
                    "oracle_gap_low": gap.low,
                    "oracle_gap_high": gap.high,
                    "reaches_oracle": bool(np.isfinite(gap.estimate)),
                    "reason": "; ".join(reasons),
                }
            )
    return pd.DataFrame.from_records(records)
