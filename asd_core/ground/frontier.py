"""Quality-against-cost curves: Pareto fronts, upper envelopes, the normalised area, the oracle gap, the share of the oracle's saving and the headline λ (pure numpy).

A *curve* is a method's (cost, quality) operating points, one per λ (or threshold); costs are
seconds per input, quality a 0/1 accuracy or pass, or a score such as ROUGE-L. Exact definitions
are in the docstrings of :func:`normalised_area`, :func:`oracle_gap`, :func:`saving_share` and
:func:`smallest_matching_lambda`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from asd_core.ground.stats import StatsError


def _curve(cost: ArrayLike, quality: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    c = np.asarray(cost, dtype=float).reshape(-1)
    q = np.asarray(quality, dtype=float).reshape(-1)
    if c.shape != q.shape:
        raise StatsError(f"a curve needs as many costs as qualities, got {c.size} and {q.size}")
    if c.size == 0:
        raise StatsError("a curve needs at least one (cost, quality) point")
    if not (np.all(np.isfinite(c)) and np.all(np.isfinite(q))):
        raise StatsError("a curve contains NaN or infinite cost or quality")
    return c, q


def pareto_front(cost: ArrayLike, quality: ArrayLike) -> np.ndarray:
    """Indices of the Pareto-optimal points, in increasing cost (and strictly increasing quality).

    ``cost``, ``quality``: shape (m,). A point is kept when no other point is at most as costly
    and at least as good, being strictly better in one; of exact duplicates the first is kept.
    """
    c, q = _curve(cost, quality)
    order = np.lexsort((-q, c))  # by cost, then best quality first among equal costs
    keep, best = [], -np.inf
    for i in order:
        if q[i] > best:
            keep.append(i)
            best = q[i]
    return np.asarray(keep, dtype=int)


def upper_hull(cost: ArrayLike, quality: ArrayLike) -> np.ndarray:
    """Indices of the vertices of the upper concave envelope, in increasing cost and quality.

    ``cost``, ``quality``: shape (m,). The vertices are the Pareto points (:func:`pareto_front`)
    that lie strictly above the chord of their neighbours. Randomly mixing two operating points
    (run policy A on a share p of the inputs, B on the rest) achieves, in expectation, any point
    on the segment between them, so this concave envelope (the ROC-convex-hull argument) is what
    a family of operating points can achieve. Unlike a line through every Pareto point, it can
    only rise when an operating point is added.
    """
    c, q = _curve(cost, quality)
    hull: list[int] = []
    for i in pareto_front(c, q):
        # Drop the last vertex while it lies on or below the chord from its predecessor to i.
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            if (c[b] - c[a]) * (q[i] - q[a]) - (q[b] - q[a]) * (c[i] - c[a]) >= 0:
                hull.pop()
            else:
                break
        hull.append(int(i))
    return np.asarray(hull, dtype=int)


def envelope_quality(cost: ArrayLike, quality: ArrayLike, at: ArrayLike) -> np.ndarray:
    """The best quality a set of operating points achieves at the costs ``at``; shape of ``at``.

    The envelope is piecewise linear through the :func:`upper_hull` vertices (mixing
    neighbouring operating points), flat after the best vertex (a larger budget never hurts),
    and NaN below the cheapest point, which no operating point reaches. It is non-decreasing
    and concave on its domain.
    """
    c, q = _curve(cost, quality)
    hull = upper_hull(c, q)
    hc, hq = c[hull], q[hull]
    x = np.asarray(at, dtype=float)
    out = np.interp(x, hc, hq)
    return np.where(x < hc[0], np.nan, out)


def pooled_envelope(curves: Mapping[str, tuple[ArrayLike, ArrayLike]]) -> pd.DataFrame:
    """The Pareto front of several methods' curves pooled: the best quality achievable per cost.

    ``curves`` maps a method name to its ``(cost, quality)`` arrays. Used for the best-two-stage-
    pair baseline: pass every pair's curve. Returns columns ``method`` (the source of each front
    point), ``cost``, ``quality``, sorted by cost: the Pareto front of real operating points.
    Feed its cost/quality to :func:`envelope_quality` or :func:`normalised_area`, which add
    mixing between them.
    """
    if not curves:
        raise StatsError("pooled_envelope needs at least one curve")
    parts = []
    for name, (cost, quality) in curves.items():
        c, q = _curve(cost, quality)
        parts.append(pd.DataFrame({"method": name, "cost": c, "quality": q}))
    pooled = pd.concat(parts, ignore_index=True)
    front = pareto_front(pooled["cost"].to_numpy(), pooled["quality"].to_numpy())
    return pooled.iloc[front].reset_index(drop=True)


def normalised_area(
    cost: ArrayLike,
    quality: ArrayLike,
    cheapest: tuple[float, float],
    deepest: tuple[float, float],
) -> float:
    """Normalised area under a method's quality-vs-cost curve (APGR-style); a float.

    Inspiration: RouteLLM's APGR averages, over the share of calls routed to the strong model,
    the fraction of the weak-to-strong quality gap that a router recovers, so the weak model
    scores 0, the strong model's quality everywhere scores 1 and a random router about 0.5.
    Here the horizontal axis is measured cost instead of a call share, so cascades (which may
    run several stages per input) and routers share one scale.

    Definition. ``cheapest = (c_lo, q_lo)`` and ``deepest = (c_hi, q_hi)`` are the cheapest and
    the deepest stage alone. The method's points ``(cost, quality)``, shape (m,), get the
    cheapest stage's point added as an anchor (every cascade or router family contains "always
    stop at stage 0" as its λ → 0 limit, and is free to mix with it). E(c) is the best quality
    these points achieve at cost c, mixing allowed (:func:`envelope_quality`: the upper concave
    envelope, flat beyond its best point). The score is the mean of (E(c) − q_lo) / (q_hi − q_lo) over c uniform in
    [c_lo, c_hi], integrated exactly. So: 0 for a curve at the cheapest stage's quality; 1 for a
    curve at the deepest stage's quality at every cost; 0.5 for random mixing of the two stages,
    and likewise for the deepest stage alone (its single point gives the same chord). A point
    costlier than c_hi counts only through the segment leading to it (mixing it with cheaper
    points); qualities above q_hi may push the score above 1. NaN when q_hi == q_lo or
    c_hi <= c_lo (no gap to recover, or no cost range).
    """
    c, q = _curve(cost, quality)
    c_lo, q_lo = map(float, cheapest)
    c_hi, q_hi = map(float, deepest)
    if not all(np.isfinite([c_lo, q_lo, c_hi, q_hi])):
        raise StatsError("the cheapest and deepest points must be finite")
    if q_hi == q_lo or c_hi <= c_lo:
        return float("nan")
    c, q = np.append(c, c_lo), np.append(q, q_lo)
    vertices = c[upper_hull(c, q)]
    # E is linear between hull vertices, so the trapezoid rule on these breakpoints is exact.
    inner = vertices[(vertices > c_lo) & (vertices < c_hi)]
    grid = np.concatenate(([c_lo], inner, [c_hi]))
    e = envelope_quality(c, q, grid)
    mean_quality = np.trapezoid(e, grid) / (c_hi - c_lo)
    return float((mean_quality - q_lo) / (q_hi - q_lo))


def cost_at_quality(cost: ArrayLike, quality: ArrayLike, target: float) -> float:
    """Least cost at which a curve's envelope reaches quality ``target``; NaN if it never does.

    Inverts :func:`envelope_quality` (mixing allowed); a target at or below the cheapest point's
    quality costs that point's cost.
    """
    c, q = _curve(cost, quality)
    hull = upper_hull(c, q)
    hc, hq = c[hull], q[hull]
    if target > hq[-1]:
        return float("nan")
    return float(np.interp(target, hq, hc))


@dataclass(frozen=True)
class OracleGap:
    """How much more a method pays than the oracle router for the oracle's quality.

    ``ratio`` and ``matched_cost`` are NaN when ``reached`` is False.
    """

    ratio: float  # matched_cost / oracle_cost, ≥ 1 unless the method beats the oracle
    matched_cost: float  # the method's least cost (seconds) at the oracle's quality
    oracle_cost: float  # the oracle router's cost (seconds)
    reached: bool  # False when the method's curve never reaches the oracle's quality


def oracle_gap(
    cost: ArrayLike,
    quality: ArrayLike,
    oracle_cost: float,
    oracle_quality: float,
    tolerance: float = 0.0,
) -> OracleGap:
    """Cost at matched quality ÷ the oracle router's cost.

    The method's curve ``(cost, quality)``, shape (m,), is interpolated along its upper
    envelope (:func:`cost_at_quality`, so mixing two λ values counts) to the quality
    ``oracle_quality - tolerance``. When its best quality stays below that, the
    gap is NaN and ``reached`` is False. The oracle's own point gives exactly 1.
    """
    if not oracle_cost > 0:
        raise StatsError(f"the oracle's cost must be positive, got {oracle_cost}")
    matched = cost_at_quality(cost, quality, oracle_quality - tolerance)
    reached = bool(np.isfinite(matched))
    return OracleGap(matched / oracle_cost, matched, float(oracle_cost), reached)


def saving_share(cost: float, oracle_cost: float, reference_cost: float) -> float:
    """Share of the oracle router's saving that a method achieves; a float.

    With costs relative to the deepest stage alone (mean costs, seconds ÷ ``reference_cost``),
    share = (1 − cost_rel) / (1 − oracle_cost_rel) = (reference − cost) / (reference − oracle).
    1 for the oracle, 0 for the deepest stage alone, negative for a method dearer than the
    reference. NaN when the oracle saves nothing (oracle_cost == reference_cost).
    """
    if not reference_cost > 0:
        raise StatsError(f"the reference cost must be positive, got {reference_cost}")
    rel, oracle_rel = cost / reference_cost, oracle_cost / reference_cost
    if oracle_rel == 1.0:
        return float("nan")
    return float((1.0 - rel) / (1.0 - oracle_rel))


MATCH_SHARE = 0.95  # "matched quality": at least this share of the deepest stage's quality


def smallest_matching_lambda(
    lams: ArrayLike, quality: ArrayLike, reference_quality: float, share: float = MATCH_SHARE
) -> float:
    """The smallest λ whose quality keeps ``share`` of the deepest stage's; NaN if none does.

    ``lams``, ``quality``: shape (m,), one mean quality per λ; ``reference_quality`` is the
    deepest stage's point estimate. "Matches" means quality ≥ share × reference (beating the
    deepest stage is no failure to match it); the uncertainty of the match is reported beside
    it as the paired CI of the difference, not folded into the rule. The smallest λ is the
    cheapest policy that keeps the quality.
    """
    lam = np.asarray(lams, dtype=float).reshape(-1)
    q = np.asarray(quality, dtype=float).reshape(-1)
    if lam.shape != q.shape or lam.size == 0:
        raise StatsError(f"need one quality per λ, got {lam.size} λ and {q.size} qualities")
    if not (np.all(np.isfinite(lam)) and np.all(np.isfinite(q))):
        raise StatsError("λ values and qualities must be finite")
    if not np.isfinite(reference_quality):
        raise StatsError("the reference quality must be finite")
    if not 0.0 < share <= 1.0:
        raise StatsError(f"'share' must lie in (0, 1], got {share!r}")
    ok = q >= share * reference_quality - 1e-12
    return float(lam[ok].min()) if ok.any() else float("nan")
