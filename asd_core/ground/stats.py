"""Statistics of the evaluation (DESIGN §10): bootstrap CIs, paired tests, curve areas, oracle gaps.

Pure functions over numpy arrays come first; thin pandas helpers over the evaluation's tidy table
(one row per method × λ × seed × dataset × input) close the module. The *reference* is the deepest
stage alone; every comparison is paired on inputs, because the inputs, not the rows, are the
independent units: costs and qualities of two methods on the same prompt are correlated.

Conventions. Costs are seconds per input (measured or replayed); quality is a 0/1 accuracy or pass,
or a score such as ROUGE-L. A *curve* is a method's (cost, quality) operating points, one per λ
(or threshold). Exact definitions are in the docstrings of :func:`normalised_area`,
:func:`oracle_gap`, :func:`saving_share`, :func:`smallest_matching_lambda` and :func:`summarise`.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy import stats as sps
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.proportion import proportion_confint

from asd_core.ground.errors import AsdError

# McNemar's chi-square approximation is poor with few discordant pairs; below this count the
# exact binomial test is used (the usual rule of thumb).
MCNEMAR_EXACT_BELOW = 25

# Upper bound on the elements of one batch of bootstrap (and jackknife) resamples, so memory stays
# near 32 MB per sample even for the 14,042 MMLU questions.
_BATCH_ELEMENTS = 4_000_000

# Columns the evaluation table must have (see summarise).
REQUIRED_COLUMNS = ("method", "lam", "seed", "dataset", "item_id", "quality", "cost", "depth")


class StatsError(AsdError):
    """Statistics asked of impossible input: an empty sample, NaN data, a missing column."""


# --------------------------------------------------------------------------------------------
# Bootstrap confidence intervals
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CI:
    """A point estimate with a two-sided confidence interval."""

    estimate: float  # the statistic on the full sample
    low: float  # lower bound (NaN when the interval is undefined)
    high: float  # upper bound (NaN when the interval is undefined)
    confidence: float  # nominal coverage, e.g. 0.95
    method: str  # "BCa", "percentile" (BCa degenerated), "none" (n < 2), "undefined"

    def contains(self, value: float) -> bool:
        """Whether ``value`` lies in [low, high] (False when the interval is undefined)."""
        return bool(self.low <= value <= self.high)


def mean(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Mean along ``axis`` (a vectorised statistic for :func:`bootstrap_ci`)."""
    return np.mean(x, axis=axis)


def ratio_of_means(numerator: np.ndarray, denominator: np.ndarray, axis: int = -1) -> np.ndarray:
    """mean(numerator) / mean(denominator) along ``axis`` (vectorised, for paired samples)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.mean(numerator, axis=axis) / np.mean(denominator, axis=axis)


def _as_sample(x: ArrayLike, what: str) -> np.ndarray:
    arr = np.asarray(x, dtype=float)
    if arr.ndim != 1:
        raise StatsError(f"{what} must be one-dimensional, got shape {arr.shape}")
    if arr.size == 0:
        raise StatsError(f"{what} is empty")
    if not np.all(np.isfinite(arr)):
        raise StatsError(f"{what} contains NaN or infinite values")
    return arr


def _as_generator(seed: int | np.random.Generator) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def wilson(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion (good at n ≈ 50, never outside [0, 1]); NaN at n 0."""
    if n == 0:
        return (float("nan"), float("nan"))
    low, high = proportion_confint(successes, n, alpha=1 - confidence, method="wilson")
    return float(low), float(high)


def bootstrap_ci(
    statistic: Callable[..., ArrayLike],
    *samples: ArrayLike,
    paired: bool = True,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int | np.random.Generator = 0,
    method: str = "BCa",
) -> CI:
    """Bootstrap confidence interval of ``statistic(*samples)`` with :func:`scipy.stats.bootstrap`.

    ``samples`` are 1-D arrays, shape (n,) each (equal n when ``paired``: resampling then draws
    the same input indices for every sample). ``statistic`` takes the samples and returns a
    scalar; give it an ``axis`` keyword (as :func:`mean` and :func:`ratio_of_means` have) to let
    scipy vectorise it. BCa is the default; when BCa degenerates (constant data, a statistic that
    never changes under resampling) the percentile interval of the *same* bootstrap distribution
    is returned instead, with ``method="percentile"``. No warning escapes. Edge cases:
    n = 1 gives NaN bounds (``"none"``); a statistic that is NaN/infinite on the data or on some
    resample (e.g. a ratio whose denominator resamples to 0) gives NaN bounds (``"undefined"``).
    """
    if not samples:
        raise StatsError("bootstrap_ci needs at least one sample")
    if not 0.0 < confidence < 1.0:
        raise StatsError(f"confidence must be in (0, 1), got {confidence}")
    if n_resamples < 1:
        raise StatsError(f"n_resamples must be positive, got {n_resamples}")
    data = tuple(_as_sample(s, f"sample {i}") for i, s in enumerate(samples))
    sizes = {len(s) for s in data}
    if paired and len(sizes) > 1:
        raise StatsError(f"paired samples must have equal lengths, got {sorted(sizes)}")

    with np.errstate(all="ignore"):
        estimate = float(np.asarray(statistic(*data)))
    if not np.isfinite(estimate):
        return CI(estimate, np.nan, np.nan, confidence, "undefined")
    if min(sizes) < 2:
        return CI(estimate, np.nan, np.nan, confidence, "none")

    batch = max(1, _BATCH_ELEMENTS // max(sizes))
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        res = sps.bootstrap(
            data,
            statistic,
            n_resamples=n_resamples,
            batch=batch,
            paired=paired,
            confidence_level=confidence,
            method=method,
            rng=_as_generator(seed),
        )
        if not np.all(np.isfinite(res.bootstrap_distribution)):
            return CI(estimate, np.nan, np.nan, confidence, "undefined")
        low, high = res.confidence_interval
        if np.isfinite(low) and np.isfinite(high):
            return CI(estimate, float(low), float(high), confidence, method)
        # BCa's acceleration is 0/0 on degenerate data: reuse the distribution, percentile it.
        res = sps.bootstrap(
            data,
            statistic,
            n_resamples=0,
            batch=batch,
            paired=paired,
            confidence_level=confidence,
            method="percentile",
            bootstrap_result=res,
        )
    low, high = res.confidence_interval
    return CI(estimate, float(low), float(high), confidence, "percentile")


def speedup(
    cost: ArrayLike,
    reference_cost: ArrayLike,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int | np.random.Generator = 0,
    method: str = "BCa",
) -> CI:
    """Speedup = mean(reference_cost) / mean(cost), with a paired bootstrap CI over inputs.

    ``cost``, ``reference_cost``: shape (n,), seconds, aligned by input. > 1 means faster than
    the reference. The other arguments are :func:`bootstrap_ci`'s.
    """
    return bootstrap_ci(
        ratio_of_means,
        reference_cost,
        cost,
        confidence=confidence,
        n_resamples=n_resamples,
        seed=seed,
        method=method,
    )


def quality_retention(
    quality: ArrayLike,
    reference_quality: ArrayLike,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int | np.random.Generator = 0,
    method: str = "BCa",
) -> CI:
    """Retention = mean(quality) / mean(reference_quality), with a paired bootstrap CI over inputs.

    Shapes (n,), aligned by input. 1 means the reference's quality is kept in full.
    """
    return bootstrap_ci(
        ratio_of_means,
        quality,
        reference_quality,
        confidence=confidence,
        n_resamples=n_resamples,
        seed=seed,
        method=method,
    )


# --------------------------------------------------------------------------------------------
# Paired tests against the reference, and the Holm correction
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PairedTestResult:
    """Outcome of one two-sided paired test of a method against the reference."""

    test: str  # "mcnemar-exact", "mcnemar-chi2", "wilcoxon", or "none" (nothing to test)
    statistic: float  # the test statistic (NaN for "none")
    p_value: float  # two-sided p-value
    n: int  # informative pairs: discordant pairs (McNemar) or non-zero differences (Wilcoxon)


def _paired(x: ArrayLike, y: ArrayLike, what: str) -> tuple[np.ndarray, np.ndarray]:
    a, b = _as_sample(x, what), _as_sample(y, f"reference {what}")
    if a.shape != b.shape:
        raise StatsError(f"paired {what} arrays differ in length: {a.size} vs {b.size}")
    return a, b


def is_binary(x: ArrayLike) -> bool:
    """Whether every value is exactly 0 or 1."""
    return bool(np.isin(np.asarray(x, dtype=float), (0.0, 1.0)).all())


def mcnemar_test(quality: ArrayLike, reference_quality: ArrayLike) -> PairedTestResult:
    """McNemar's test of paired 0/1 outcomes, shapes (n,), aligned by input.

    Only discordant pairs inform it: b = method right & reference wrong, c = the reverse. Exact
    binomial test when b + c < :data:`MCNEMAR_EXACT_BELOW`, else chi-square with continuity
    correction. With no discordant pair the methods agree everywhere: p = 1.
    """
    a, b = _paired(quality, reference_quality, "quality")
    if not (is_binary(a) and is_binary(b)):
        raise StatsError("McNemar's test needs 0/1 quality values")
    m, r = a.astype(bool), b.astype(bool)
    table = [[np.sum(m & r), np.sum(m & ~r)], [np.sum(~m & r), np.sum(~m & ~r)]]
    discordant = int(table[0][1] + table[1][0])
    if discordant == 0:
        return PairedTestResult("mcnemar-exact", 0.0, 1.0, 0)
    exact = discordant < MCNEMAR_EXACT_BELOW
    res = mcnemar(table, exact=exact, correction=True)
    name = "mcnemar-exact" if exact else "mcnemar-chi2"
    return PairedTestResult(name, float(res.statistic), float(res.pvalue), discordant)


def wilcoxon_test(
    values: ArrayLike, reference_values: ArrayLike, zero_method: str = "wilcox"
) -> PairedTestResult:
    """Wilcoxon signed-rank test of paired values (latency, or a score), shapes (n,).

    Differences ``values - reference_values`` that are exactly zero are dropped (``"wilcox"``,
    the textbook convention; pass ``"pratt"`` to rank them). scipy picks the exact null
    distribution for small samples without ties, the normal approximation otherwise. All-zero
    differences mean no evidence of a difference: p = 1.
    """
    a, b = _paired(values, reference_values, "values")
    d = a - b
    nonzero = int(np.count_nonzero(d))
    if nonzero == 0:
        return PairedTestResult("wilcoxon", 0.0, 1.0, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = sps.wilcoxon(d, zero_method=zero_method)
    return PairedTestResult("wilcoxon", float(res.statistic), float(res.pvalue), nonzero)


def holm(p_values: ArrayLike, alpha: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Holm step-down correction of one family of p-values, shape (m,).

    Returns ``(adjusted, reject)``: adjusted p-values, shape (m,), and whether each hypothesis is
    rejected at family-wise error rate ``alpha``. NaN p-values (untested rows) stay NaN, are not
    rejected and do not count towards the family size.
    """
    p = np.asarray(p_values, dtype=float).reshape(-1)
    tested = np.isfinite(p)
    if np.any((p[tested] < 0) | (p[tested] > 1)):
        raise StatsError("p-values must lie in [0, 1]")
    adjusted = np.full(p.shape, np.nan)
    reject = np.zeros(p.shape, dtype=bool)
    if tested.any():
        rej, adj, _, _ = multipletests(p[tested], alpha=alpha, method="holm")
        adjusted[tested], reject[tested] = adj, rej
    return adjusted, reject


# --------------------------------------------------------------------------------------------
# Quality-vs-cost curves: envelopes and the normalised area
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Oracle gap, share of the oracle's saving, and the headline λ
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Helpers over the evaluation table
# --------------------------------------------------------------------------------------------


def deepest_stage(df: pd.DataFrame) -> str:
    """Name of the deepest single stage in the table (``stage_<k>`` with the largest k)."""
    stages = {
        int(m.group(1)): name
        for name in df["method"].unique()
        if (m := re.fullmatch(r"stage_(\d+)", str(name)))
    }
    if not stages:
        raise StatsError("no 'stage_<k>' method in the table: pass reference= explicitly")
    return stages[max(stages)]


def check_table(df: pd.DataFrame) -> None:
    """Raise :class:`StatsError` (one line) unless ``df`` is a usable evaluation table."""
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise StatsError(f"evaluation table lacks column(s) {', '.join(missing)}")
    if df.empty:
        raise StatsError("evaluation table is empty")
    for col in ("method", "seed", "dataset", "item_id"):
        if df[col].isna().any():
            raise StatsError(f"evaluation table column '{col}' has missing values")
    for col in ("quality", "cost", "depth"):
        values = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=float)
        if not np.all(np.isfinite(values)):
            raise StatsError(f"evaluation table column '{col}' has NaN or non-numeric values")
        if col == "cost" and np.any(values < 0):
            raise StatsError("evaluation table column 'cost' has negative values")
    keys = ["method", "lam", "seed", "dataset", "item_id"]
    dup = df.duplicated(subset=keys)
    if dup.any():
        row = df.loc[dup, keys].iloc[0].to_dict()
        raise StatsError(f"evaluation table has duplicated rows, e.g. {row}")


def _per_input(rows: pd.DataFrame) -> pd.DataFrame:
    """Seed-averaged quality, cost and depth per input (index: item_id, sorted)."""
    return rows.groupby("item_id")[["quality", "cost", "depth"]].mean().sort_index()


def _seed_sd(rows: pd.DataFrame, col: str) -> float:
    per_seed = rows.groupby("seed")[col].mean()
    return float(per_seed.std(ddof=1)) if len(per_seed) > 1 else float("nan")


def summarise(
    df: pd.DataFrame,
    reference: str | None = None,
    oracle: str | None = "oracle_router",
    confidence: float = 0.95,
    alpha: float = 0.05,
    n_resamples: int = 2000,
    seed: int = 0,
    ci_method: str = "BCa",
) -> pd.DataFrame:
    """One row per method × λ × dataset: means with CIs, speedup, retention and paired tests.

    Seeds are averaged per input, then the inputs are the bootstrap and test units: for each
    (method, λ, dataset) the quality, cost and depth of an input are its means over the seeds
    the method ran (the reference likewise), so an input counts once however many seeds there
    are. CIs thus reflect input sampling; the spread across seeds is reported separately as the
    standard deviation of the per-seed means (``*_seed_sd``, NaN with one seed). Every method
    must cover exactly the reference's inputs of a dataset.

    Columns: method, lam (NaN for methods without λ), dataset, n_inputs, n_seeds,
    quality/_low/_high, cost/_low/_high (seconds), quality_seed_sd, cost_seed_sd, depth (mean
    final stage), speedup/_low/_high (mean reference cost ÷ mean cost), retention/_low/_high
    (mean quality ÷ mean reference quality), saving_share (:func:`saving_share`, NaN without an
    ``oracle`` method in the dataset), quality_test ("mcnemar-*" when both sides' per-input
    qualities are 0/1, else "wilcoxon" on the per-input quality differences), p_quality, p_cost
    (Wilcoxon on per-input costs), their Holm-adjusted versions p_quality_holm, p_cost_holm and
    flags significant_quality, significant_cost (adjusted p < alpha). The Holm family is one
    method's rows across datasets × λ, separately for quality and cost; reference rows are not
    tested (NaN p-values). ``ci_method="percentile"`` skips BCa's jackknife, which is O(n²) in
    the number of inputs (seconds per CI at n ≈ 14k).
    """
    check_table(df)
    reference = reference if reference is not None else deepest_stage(df)
    if reference not in set(df["method"]):
        raise StatsError(f"reference method '{reference}' is not in the evaluation table")
    if df.loc[df["method"] == reference, "lam"].nunique(dropna=False) > 1:
        raise StatsError(f"reference method '{reference}' has several λ values")
    boot: dict[str, Any] = dict(
        confidence=confidence, n_resamples=n_resamples, seed=seed, method=ci_method
    )

    records = []
    for dataset, data in df.groupby("dataset", sort=True):
        ref = _per_input(data[data["method"] == reference])
        if ref.empty:
            raise StatsError(f"dataset '{dataset}' has no rows of reference '{reference}'")
        oracle_rows = data[data["method"] == oracle] if oracle is not None else data.iloc[:0]
        oracle_cost = _per_input(oracle_rows)["cost"].mean() if len(oracle_rows) else np.nan
        for (method, lam), rows in data.groupby(["method", "lam"], sort=True, dropna=False):
            per = _per_input(rows)
            if not per.index.equals(ref.index):
                raise StatsError(
                    f"dataset '{dataset}': method '{method}' (λ={lam}) covers {len(per)} inputs, "
                    f"not the {len(ref)} inputs of reference '{reference}'"
                )
            records.append(
                _summary_row(per, ref, rows, oracle_cost, method == reference, boot)
                | {"method": method, "lam": lam, "dataset": dataset}
            )

    out = pd.DataFrame.from_records(records)
    for kind in ("quality", "cost"):
        out[f"p_{kind}_holm"] = np.nan
        out[f"significant_{kind}"] = False
        for _, idx in out.groupby("method").groups.items():
            adjusted, reject = holm(out.loc[idx, f"p_{kind}"], alpha=alpha)
            out.loc[idx, f"p_{kind}_holm"] = adjusted
            out.loc[idx, f"significant_{kind}"] = reject
    first = ["method", "lam", "dataset"]
    last = ["p_quality_holm", "p_cost_holm", "significant_quality", "significant_cost"]
    out = out[first + [c for c in out.columns if c not in first + last] + last]
    return out.sort_values(["dataset", "method", "lam"], ignore_index=True)


def _summary_row(
    per: pd.DataFrame,
    ref: pd.DataFrame,
    rows: pd.DataFrame,
    oracle_cost: float,
    is_reference: bool,
    boot: dict[str, Any],
) -> dict[str, object]:
    q, c = per["quality"].to_numpy(), per["cost"].to_numpy()
    q_ref, c_ref = ref["quality"].to_numpy(), ref["cost"].to_numpy()
    quality = bootstrap_ci(mean, q, **boot)
    cost = bootstrap_ci(mean, c, **boot)
    fast = speedup(c, c_ref, **boot)
    kept = quality_retention(q, q_ref, **boot)
    if is_reference:
        q_test = c_test = PairedTestResult("none", np.nan, np.nan, 0)
    else:
        binary = is_binary(q) and is_binary(q_ref)
        q_test = mcnemar_test(q, q_ref) if binary else wilcoxon_test(q, q_ref)
        c_test = wilcoxon_test(c, c_ref)
    return {
        "n_inputs": len(per),
        "n_seeds": int(rows["seed"].nunique()),
        **_ci_columns("quality", quality),
        **_ci_columns("cost", cost),
        "quality_seed_sd": _seed_sd(rows, "quality"),
        "cost_seed_sd": _seed_sd(rows, "cost"),
        "depth": float(per["depth"].mean()),
        **_ci_columns("speedup", fast),
        **_ci_columns("retention", kept),
        "saving_share": (
            saving_share(float(c.mean()), oracle_cost, float(c_ref.mean()))
            if np.isfinite(oracle_cost)
            else np.nan
        ),
        "quality_test": q_test.test,
        "p_quality": q_test.p_value,
        "p_cost": c_test.p_value,
    }


def _ci_columns(name: str, ci: CI) -> dict[str, float]:
    return {name: ci.estimate, f"{name}_low": ci.low, f"{name}_high": ci.high}


def headline(summary: pd.DataFrame, reference: str | None = None) -> pd.DataFrame:
    """Per method with a λ sweep × dataset: the smallest λ matching the reference's quality.

    ``summary`` is :func:`summarise`'s output. The reference's quality comes from its row in
    the same dataset; the chosen λ follows :func:`smallest_matching_lambda`. Columns: method,
    dataset, lam (NaN when no λ matches), matched, and that λ's quality, cost, speedup and
    retention with their CIs (NaN when unmatched).
    """
    if summary.empty:
        raise StatsError("summary table is empty")
    reference = reference if reference is not None else deepest_stage(summary)
    shown = ["quality", "cost", "speedup", "retention"]
    shown = [f"{s}{suffix}" for s in shown for suffix in ("", "_low", "_high")]
    records = []
    for dataset, data in summary.groupby("dataset", sort=True):
        r = _single_row(data, reference, dataset)
        swept = data[data["lam"].notna() & (data["method"] != reference)]
        for method, rows in swept.groupby("method", sort=True):
            lam = smallest_matching_lambda(rows["lam"], rows["quality"], float(r["quality"]))
            matched = bool(np.isfinite(lam))
            picked = rows[rows["lam"] == lam].iloc[0] if matched else None
            records.append(
                {"method": method, "dataset": dataset, "lam": lam, "matched": matched}
                | {s: (picked[s] if picked is not None else np.nan) for s in shown}
            )
    return pd.DataFrame.from_records(
        records, columns=["method", "dataset", "lam", "matched", *shown]
    )


def curve_summary(
    summary: pd.DataFrame,
    cheapest: str = "stage_0",
    reference: str | None = None,
    oracle: str | None = "oracle_router",
) -> pd.DataFrame:
    """Per method × dataset: the normalised area and the oracle gap of the method's curve.

    ``summary`` is :func:`summarise`'s output; a method's curve is its rows' (cost, quality), one
    per λ (a single point for a method without λ). Columns: method, dataset, n_points,
    area (:func:`normalised_area` between ``cheapest`` and ``reference``), oracle_gap
    (:func:`oracle_gap` ratio, NaN without the ``oracle`` method or when not reached) and
    reaches_oracle.
    """
    if summary.empty:
        raise StatsError("summary table is empty")
    reference = reference if reference is not None else deepest_stage(summary)
    records = []
    for dataset, data in summary.groupby("dataset", sort=True):
        lo = _single_row(data, cheapest, dataset)
        hi = _single_row(data, reference, dataset)
        orc = None
        if oracle is not None and (data["method"] == oracle).any():
            orc = _single_row(data, oracle, dataset)
        for method, rows in data.groupby("method", sort=True):
            c, q = rows["cost"].to_numpy(), rows["quality"].to_numpy()
            area = normalised_area(c, q, (lo["cost"], lo["quality"]), (hi["cost"], hi["quality"]))
            gap = oracle_gap(c, q, orc["cost"], orc["quality"]) if orc is not None else None
            records.append(
                {
                    "method": method,
                    "dataset": dataset,
                    "n_points": len(rows),
                    "area": area,
                    "oracle_gap": gap.ratio if gap is not None else np.nan,
                    "reaches_oracle": gap.reached if gap is not None else False,
                }
            )
    return pd.DataFrame.from_records(records)


def _single_row(summary: pd.DataFrame, method: str, dataset: object) -> pd.Series:
    rows = summary[summary["method"] == method]
    if len(rows) != 1:
        raise StatsError(
            f"dataset '{dataset}': expected one summary row of '{method}', got {len(rows)}"
        )
    return rows.iloc[0]
