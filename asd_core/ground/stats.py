"""Statistics over inputs: the bootstrap, Wilson intervals, paired tests and the Holm correction.

Every interval in the repository comes from here. :func:`bootstrap_ci` is the bootstrap of one
statistic of one or more samples (scipy's, BCa by default); :func:`bootstrap_of_means` draws one
set of input resamples and evaluates many statistics of column means on it, so that the curve
statistics of different methods are paired. The inputs, not the rows, are the independent units:
every comparison is paired on inputs. Curves and their areas are in
:mod:`asd_core.ground.frontier`; the summaries of the evaluation table in
:mod:`asd_core.analysis.summaries`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
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
    arr = np.asarray(x)
    if not np.issubdtype(arr.dtype, np.floating):  # a float32 sample keeps its precision
        arr = arr.astype(float)
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
    drop_undefined: bool = False,
    batch_elements: int = _BATCH_ELEMENTS,
) -> CI:
    """Bootstrap confidence interval of ``statistic(*samples)`` with :func:`scipy.stats.bootstrap`.

    ``samples`` are 1-D arrays, shape (n,) each (equal n when ``paired``: resampling then draws
    the same input indices for every sample). ``statistic`` takes the samples and returns a
    scalar; give it an ``axis`` keyword (as :func:`mean` and :func:`ratio_of_means` have) to let
    scipy vectorise it. BCa is the default; when BCa degenerates (constant data, a statistic that
    never changes under resampling) the percentile interval of the *same* bootstrap distribution
    is returned instead, with ``method="percentile"``. No warning escapes. Edge cases:
    n = 1 gives NaN bounds (``"none"``); a statistic that is NaN/infinite on the data or on some
    resample (e.g. a ratio whose denominator resamples to 0) gives NaN bounds (``"undefined"``),
    unless ``drop_undefined``: then such resamples are left out and the percentile interval of the
    rest is returned (an AUC is undefined on a resample with one class only, which says nothing
    about the others). ``batch_elements`` bounds the memory of one batch of resamples; the draws
    do not depend on it.

    Long because: the edge cases (n = 1, undefined statistics, BCa degenerating) are handled in place.
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

    batch = max(1, batch_elements // max(sizes))
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
        distribution = np.asarray(res.bootstrap_distribution, dtype=np.float64)
        if not np.all(np.isfinite(distribution)):
            if not drop_undefined or not np.isfinite(distribution).any():
                return CI(estimate, np.nan, np.nan, confidence, "undefined")
            low, high = res.confidence_interval
            if not (np.isfinite(low) and np.isfinite(high)):
                tail = 50.0 * (1.0 - confidence)
                low, high = np.nanpercentile(distribution, [tail, 100.0 - tail])
            return CI(estimate, float(low), float(high), confidence, "percentile")
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


def bootstrap_of_means(
    samples: tuple[np.ndarray, ...],
    statistics: Mapping[str, Callable[..., float]],
    confidence: float = 0.95,
    n_resamples: int = 1000,
    seed: int = 0,
) -> dict[str, CI]:
    """Percentile CIs of statistics of column means, every statistic on the same input resamples.

    Args:
        samples: arrays of shape (n, m_i), one row per input (the same n in each); a resample
            draws n rows with replacement, the same rows for every array.
        statistics: name → f(mean_0, mean_1, ...), each mean of shape (m_i,), returning a float.
        confidence, n_resamples, seed: as in :func:`bootstrap_ci`.

    One resample is a weight vector over inputs, so a batch of resamples is one matrix product
    with each sample; every statistic then sees the same resamples, which pairs their CIs.
    Resamples on which a statistic is NaN are dropped while they are at most the tail mass
    (1 − confidence)/2 of all, else the bounds are NaN (``"undefined"``); +inf is ordered like
    any value. Fewer than 2 inputs give NaN bounds (``"none"``).
    """
    n = samples[0].shape[0]
    if any(s.shape[0] != n for s in samples):
        raise StatsError("bootstrap_of_means needs the same number of inputs in every sample")
    full = {k: f(*(s.mean(axis=0) for s in samples)) for k, f in statistics.items()}
    if n < 2:
        return {k: CI(v, np.nan, np.nan, confidence, "none") for k, v in full.items()}
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {k: [] for k in statistics}
    batch = max(1, _BATCH_ELEMENTS // n)
    for start in range(0, n_resamples, batch):
        b = min(batch, n_resamples - start)
        idx = rng.integers(0, n, size=(b, n))
        weights = np.bincount((np.arange(b)[:, None] * n + idx).ravel(), minlength=b * n)
        weights = weights.reshape(b, n) / n
        means = [weights @ s for s in samples]
        for k, f in statistics.items():
            draws[k].extend(f(*(m[i] for m in means)) for i in range(b))
    tail = (1.0 - confidence) / 2.0
    out = {}
    for k, values in draws.items():
        arr = np.asarray(values, dtype=float)
        undefined = np.isnan(arr)
        # A few undefined resamples (e.g. stage 0 and the deepest tie, so an area is 0/0) are
        # dropped; more than the tail mass and no interval can be trusted.
        if np.isnan(full[k]) or undefined.mean() > tail:
            out[k] = CI(full[k], np.nan, np.nan, confidence, "undefined")
            continue
        low, high = np.quantile(arr[~undefined], [tail, 1.0 - tail], method="inverted_cdf")
        out[k] = CI(full[k], float(low), float(high), confidence, "percentile")
    return out


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
