"""Belief states for the stopping rule: risk-adjusted predictions, quantile bins, bin values, belief moves and move costs (pure numpy/scipy).

A belief is the risk-adjusted probability p̃ that a stage's output is acceptable (:func:`risk_adjust`). It is cut into quantile bins per (stage, view), and on held-out inputs on which every stage ran :func:`estimate_beliefs` counts how often each bin's output was acceptable and how beliefs move from one state to every deeper one; :func:`estimate_costs` gives each move its cost. :mod:`asd_core.ground.stopping` solves the policy over these states.

Views. A stage's output is seen in one of two views that say what the predictor could see: ``SEQUENTIAL`` when the stage verified the draft of the stage right below it just before (the verification feature is present), ``DIRECT`` when it was entered, reached by a skip or restarted (the feature is blank). Each (stage, view) has its own bins, because the two views are different predictions.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import special

from asd_core.ground.errors import AsdError

DIRECT, SEQUENTIAL = 0, 1  # views: no verification feature / stage k−1's draft was verified
N_VIEWS = 2
VIEW_NAMES = ("direct", "sequential")
ROW_SUM_TOLERANCE = 1e-6  # how far a transition row may sum from 1 (float noise)


class StoppingError(AsdError):
    """Impossible input to risk adjustment, belief estimation or the stopping solver."""


def checked_probabilities(name: str, values: object) -> np.ndarray:
    """``values`` as a float array whose entries all lie in [0, 1] (NaN rejected)."""
    arr = np.asarray(values, dtype=float)
    if not np.all((arr >= 0.0) & (arr <= 1.0)):
        raise StoppingError(f"'{name}' must hold probabilities in [0, 1]")
    return arr


def checked_positive(name: str, value: float, *, allow_zero: bool = False) -> float:
    """``value`` as a finite float > 0 (or ≥ 0)."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise StoppingError(f"'{name}' must be a number, got {value!r}") from None
    if not math.isfinite(x) or x < 0.0 or (x == 0.0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise StoppingError(f"'{name}' must be a finite number {bound}, got {value!r}")
    return x


def _bins(name: str, values: object, n_bins: int) -> np.ndarray:
    """``values`` as an integer array of bin indices in [0, n_bins)."""
    arr = np.asarray(values)
    if arr.size and (
        not np.issubdtype(arr.dtype, np.integer) or arr.min() < 0 or arr.max() >= n_bins
    ):
        raise StoppingError(f"'{name}' must hold integer bins in [0, {n_bins})")
    return arr.astype(np.intp)


def _n_bins(n_bins: int) -> int:
    if isinstance(n_bins, bool) or not isinstance(n_bins, int | np.integer) or n_bins < 1:
        raise StoppingError(f"'n_bins' must be an integer >= 1, got {n_bins!r}")
    return int(n_bins)


def effective_sample_size(mean: np.ndarray, var: np.ndarray, n_max: float) -> np.ndarray:
    """Pseudo-observations behind an ensemble prediction, n = m(1−m)/v − 1, clipped to [1, n_max].

    A Beta(n·m, n·(1−m)) has mean m and variance m(1−m)/(n+1); solving for n gives the formula.
    v = 0 (members agree exactly) means as confident as allowed: n_max. Shapes broadcast;
    unitless.
    """
    mean = np.asarray(mean, dtype=float)
    spread = mean * (1.0 - mean)
    var = np.asarray(var, dtype=float)
    safe_var = np.where(var > 0.0, var, 1.0)
    with np.errstate(over="ignore"):  # a tiny variance overflows to inf, which the clip caps
        n = np.where(var > 0.0, spread / safe_var - 1.0, n_max)
    return np.clip(n, 1.0, n_max)


def risk_adjust(
    mean: object,
    var: object,
    prior_mean: object,
    alpha: float,
    beta: float = 0.5,
    n_max: float = 1000.0,
) -> np.ndarray:
    """Risk-adjusted acceptance probability p̃ from an ensemble's mean and variance.

    Args:
        mean: m, the ensemble's mean predicted acceptance probability, any shape, in [0, 1].
        var: v, the ensemble's variance of that prediction, broadcastable to ``mean``, ≥ 0.
        prior_mean: μ_k, the stage's base acceptance rate, broadcastable, in [0, 1].
        alpha: α ≥ 0, prior strength in pseudo-observations (0 = no shrinkage).
        beta: β ∈ (0, 0.5]. β = 0.5 is risk-neutral and returns the posterior mean
            (n·m + α·μ)/(n + α) — not the median, so that α = 0, β = 0.5 returns m exactly (the
            "no adjustment" ablation). β < 0.5 is risk-averse: the β-quantile of the posterior
            Beta(n·m + α·μ, n·(1−m) + α·(1−μ)), capped at the posterior mean, because a very
            skewed posterior (tiny second parameter) can put its low quantiles above its mean and
            risk aversion must never raise a belief.
        n_max: cap on the effective sample size n (see :func:`effective_sample_size`), ≥ 1.

    Returns:
        p̃ with the broadcast shape of the inputs, in [0, 1]; never NaN (m ∈ {0, 1} and v = 0 are
        handled: a posterior with a zero parameter is a point mass at 0 or 1).
    """
    m = checked_probabilities("mean", mean)
    mu = checked_probabilities("prior_mean", prior_mean)
    v = np.asarray(var, dtype=float)
    if not np.all((v >= 0.0) & np.isfinite(v)):
        raise StoppingError("'var' must hold finite variances >= 0")
    alpha = checked_positive("alpha", alpha, allow_zero=True)
    beta = checked_positive("beta", beta)
    if beta > 0.5:
        raise StoppingError(f"'beta' must lie in (0, 0.5] (0.5 = posterior mean), got {beta!r}")
    n_max = checked_positive("n_max", n_max)
    if n_max < 1.0:
        raise StoppingError(f"'n_max' must be >= 1, got {n_max!r}")

    n = effective_sample_size(m, v, n_max)
    a = n * m + alpha * mu
    b = n * (1.0 - m) + alpha * (1.0 - mu)
    # (n·m + α·μ)/(n + α) written as a shrinkage step, so that α = 0 returns m bit for bit
    posterior_mean = m + alpha * (mu - m) / (n + alpha)
    if beta == 0.5:
        return np.asarray(posterior_mean)
    # betaincinv is the Beta quantile function (what scipy.stats.beta.ppf calls), without the
    # distribution-object overhead; it is undefined at a zero parameter, where the mass is a point.
    safe = (a > 0.0) & (b > 0.0)
    quantile = special.betaincinv(np.where(safe, a, 1.0), np.where(safe, b, 1.0), beta)
    quantile = np.where(safe, quantile, np.where(a > 0.0, 1.0, 0.0))
    return np.asarray(np.minimum(quantile, posterior_mean))


def quantile_edges(p: object, n_bins: int) -> np.ndarray:
    """Cut points that split ``p`` into ``n_bins`` bins of (nearly) equal counts.

    Args:
        p: (N,) probabilities, N ≥ 1.
        n_bins: B.

    Returns:
        (B−1,) increasing cut points; a value x falls in bin ``#(edges ≤ x)``. Tied values cannot
        be split, so repeated cut points are dropped and the tail padded with +inf: a bin no
        value reaches stays empty, never an invented state.
    """
    n_bins = _n_bins(n_bins)
    arr = checked_probabilities("p", p).ravel()
    if arr.size == 0:
        raise StoppingError("'p' is empty: no inputs to place bin edges")
    cuts = np.unique(np.quantile(arr, np.arange(1, n_bins) / n_bins))
    cuts = cuts[cuts > arr.min()]  # a cut at the minimum would leave bin 0 empty
    return np.concatenate([cuts, np.full(n_bins - 1 - len(cuts), np.inf)])


def to_bins(p: object, edges: np.ndarray) -> np.ndarray:
    """Bin of each probability: the number of cut points ≤ p (see :func:`quantile_edges`)."""
    return np.searchsorted(edges, checked_probabilities("p", p), side="right").astype(np.intp)


def _smoothed_rows(
    source: np.ndarray, target: np.ndarray, n_bins: int, smoothing: float
) -> tuple[np.ndarray, np.ndarray]:
    """(B, B) P(target bin | source bin), shrunk towards the target's marginal, and the counts.

    Row b = (counts[b] + s·marginal) / (n_b + s): with few inputs in a source bin the row stays
    close to what is known about the target overall, instead of the uniform guess an add-one
    prior would make; an empty row (n_b + s = 0) is the marginal itself.
    """
    counts = np.bincount(source * n_bins + target, minlength=n_bins * n_bins).reshape(
        n_bins, n_bins
    )
    marginal = np.bincount(target, minlength=n_bins) / len(target)
    total = counts.sum(axis=1, keepdims=True) + smoothing
    rows = (counts + smoothing * marginal) / np.where(total > 0, total, 1.0)
    rows = np.where(total > 0, rows, marginal)
    return rows, counts


def _smoothed_means(
    bins: np.ndarray, values: np.ndarray, n_bins: int, smoothing: float
) -> np.ndarray:
    """(B,) mean of ``values`` per bin, shrunk towards the overall mean by ``smoothing``."""
    overall = float(values.mean())
    total = np.bincount(bins, weights=values, minlength=n_bins)
    count = np.bincount(bins, minlength=n_bins)
    denom = count + smoothing
    return np.where(
        denom > 0, (total + smoothing * overall) / np.where(denom > 0, denom, 1), overall
    )


@dataclass(frozen=True, eq=False)
class BeliefModel:
    """Belief states and how they move, estimated on held-out inputs (validated, read-only)."""

    # (K, 2, B−1) cut points of p̃ per (stage, view); see quantile_edges
    edges: np.ndarray
    # (K, 2, B) P(output acceptable | stage, view, bin), counted and smoothed
    pbar: np.ndarray
    # (K, 2, K, 2, B, B) moves[k, v, j, w, b, b'] = P(bin b' at (j, w) | bin b at (k, v)); j > k
    moves: np.ndarray
    # (K, 2, B) held-out inputs per state; None when the model was given directly
    counts: np.ndarray | None = None

    def __post_init__(self) -> None:
        pbar = checked_probabilities("pbar", self.pbar)
        if pbar.ndim != 3 or pbar.shape[1] != N_VIEWS or min(pbar.shape) < 1:
            raise StoppingError(f"'pbar' must have shape (K, 2, B), got {pbar.shape}")
        K, _, B = pbar.shape
        shapes = {
            "edges": (K, N_VIEWS, B - 1),
            "moves": (K, N_VIEWS, K, N_VIEWS, B, B),
        }
        arrays = {"pbar": pbar}
        for name, shape in shapes.items():
            arr = np.array(getattr(self, name), dtype=float)
            if arr.shape != shape:
                raise StoppingError(f"'{name}' must have shape {shape}, got {arr.shape}")
            arrays[name] = arr
        deeper = np.triu(np.ones((K, K), bool), 1)
        blocks = arrays["moves"].transpose(0, 2, 1, 3, 4, 5)[deeper]
        if not np.all((blocks >= 0.0) & (blocks <= 1.0)):
            raise StoppingError("'moves' must hold probabilities in [0, 1]")
        if not np.allclose(blocks.sum(axis=-1), 1.0, rtol=0.0, atol=ROW_SUM_TOLERANCE):
            raise StoppingError("'moves' rows must each sum to 1")
        if self.counts is not None:
            arrays["counts"] = np.array(self.counts, dtype=float)
            if arrays["counts"].shape != pbar.shape:
                raise StoppingError(f"'counts' must have the shape of 'pbar' {pbar.shape}")
        for name, arr in arrays.items():
            arr.setflags(write=False)
            object.__setattr__(self, name, arr)

    @property
    def n_stages(self) -> int:
        """K, the number of stages."""
        return int(self.pbar.shape[0])

    @property
    def n_bins(self) -> int:
        """B, bins per (stage, view)."""
        return int(self.pbar.shape[2])

    def bins(self, p_tilde: object, view: int) -> np.ndarray:
        """(N, K) bins of (N, K) beliefs p̃ seen in ``view`` (DIRECT or SEQUENTIAL)."""
        p = np.asarray(p_tilde, dtype=float)
        if p.ndim != 2 or p.shape[1] != self.n_stages:
            raise StoppingError(f"'p_tilde' must be a (N, {self.n_stages}) array, got {p.shape}")
        cols = [to_bins(p[:, k], self.edges[k, view]) for k in range(self.n_stages)]
        return np.stack(cols, axis=1) if cols else np.zeros(p.shape, np.intp)

    def bin_of(self, stage: int, view: int, p: float) -> int:
        """The bin of one belief (the online hot path: no numpy dispatch)."""
        return bisect.bisect_right(self.edges[stage, view].tolist(), p)


def estimate_beliefs(
    sequential: object,
    direct: object,
    labels: object,
    n_bins: int = 10,
    smoothing: float = 1.0,
) -> BeliefModel:
    """Bins, bin values and belief moves, counted on N held-out inputs on which every stage ran.

    Args:
        sequential: (N, K) p̃ after stage k with the verification of y_{k−1} (column 0 equals
            ``direct``'s: stage 0 has nothing to verify).
        direct: (N, K) p̃ after stage k with the verification feature blank.
        labels: (N, K) 0/1 acceptance labels of each stage's output.
        n_bins: B, the most bins per (stage, view); quantile cut points, ties merged.
        smoothing: s ≥ 0, pseudo-inputs that pull a sparse bin's value towards the stage's
            rate and its transition row towards the target's marginal (0 = raw counts).

    Returns:
        The :class:`BeliefModel`; ``counts`` holds the inputs behind each state.
    """
    n_bins = _n_bins(n_bins)
    smoothing = checked_positive("smoothing", smoothing, allow_zero=True)
    views = [
        checked_probabilities("direct", direct),
        checked_probabilities("sequential", sequential),
    ]
    y = checked_probabilities("labels", labels)
    if views[0].ndim != 2 or views[0].shape[0] == 0 or views[0].shape[1] < 1:
        raise StoppingError(f"'direct' must be a non-empty (N, K) array, got {views[0].shape}")
    for name, arr in (("sequential", views[1]), ("labels", y)):
        if arr.shape != views[0].shape:
            raise StoppingError(f"'{name}' must have shape {views[0].shape}, got {arr.shape}")
    K = views[0].shape[1]
    edges = np.array(
        [[quantile_edges(views[v][:, k], n_bins) for v in range(N_VIEWS)] for k in range(K)]
    )
    bins = [
        np.stack([to_bins(views[v][:, k], edges[k, v]) for k in range(K)], axis=1)
        for v in range(N_VIEWS)
    ]  # bins[v]: (N, K)
    pbar = np.zeros((K, N_VIEWS, n_bins))
    counts = np.zeros((K, N_VIEWS, n_bins))
    for k in range(K):
        for v in range(N_VIEWS):
            pbar[k, v] = _smoothed_means(bins[v][:, k], y[:, k], n_bins, smoothing)
            counts[k, v] = np.bincount(bins[v][:, k], minlength=n_bins)
    moves = np.full((K, N_VIEWS, K, N_VIEWS, n_bins, n_bins), np.nan)
    for k in range(K):
        for j in range(k + 1, K):
            for v in range(N_VIEWS):
                for w in range(N_VIEWS):
                    moves[k, v, j, w] = _smoothed_rows(
                        bins[v][:, k], bins[w][:, j], n_bins, smoothing
                    )[0]
    return BeliefModel(edges, pbar, moves, counts)


@dataclass(frozen=True, eq=False)
class Costs:
    """What each move costs, normalised so that the deepest stage run alone costs 1."""

    scratch: np.ndarray  # (K,) run stage j from scratch: the entry's moves and every restart
    # (K, 2, K, B) continue from (k, v, b) to j > k: verify y_k with M_j and decode the rest; NaN
    # where j ≤ k
    resume: np.ndarray

    def __post_init__(self) -> None:
        scratch = np.array(self.scratch, dtype=float)
        if scratch.ndim != 1 or scratch.size < 1:
            raise StoppingError(f"'scratch' must be a (K,) array, got shape {scratch.shape}")
        K = scratch.size
        resume = np.array(self.resume, dtype=float)
        if resume.ndim != 4 or resume.shape[:3] != (K, N_VIEWS, K) or resume.shape[3] < 1:
            raise StoppingError(f"'resume' must have shape ({K}, 2, {K}, B), got {resume.shape}")
        moves = resume.transpose(0, 2, 1, 3)[np.triu(np.ones((K, K), bool), 1)]
        if not (np.all(np.isfinite(scratch) & (scratch >= 0.0)) and np.all(np.isfinite(moves))):
            raise StoppingError("'scratch' and 'resume' must be finite costs >= 0")
        if np.any(moves < 0.0):
            raise StoppingError("'scratch' and 'resume' must be finite costs >= 0")
        for name, arr in (("scratch", scratch), ("resume", resume)):
            arr.setflags(write=False)
            object.__setattr__(self, name, arr)

    @property
    def n_bins(self) -> int:
        return int(self.resume.shape[3])


def flat_costs(scratch_s: object, escalate_s: object, n_bins: int) -> Costs:
    """:class:`Costs` whose continue costs do not depend on the belief.

    Args:
        scratch_s: (K,) seconds (or any unit) of each stage from scratch; the last must be > 0.
        escalate_s: (K, K) cost of continuing from k to j; only the strict upper triangle is read.
        n_bins: B.
    """
    scratch = np.asarray(scratch_s, dtype=float)
    escalate = np.asarray(escalate_s, dtype=float)
    if scratch.ndim != 1 or scratch.size < 1:
        raise StoppingError(f"'scratch_s' must be a (K,) array, got shape {scratch.shape}")
    K = scratch.size
    if escalate.shape != (K, K):
        raise StoppingError(f"'escalate_s' must have shape ({K}, {K}), got {escalate.shape}")
    unit = checked_positive("scratch_s of the deepest stage", scratch[-1])
    deeper = np.triu(np.ones((K, K), bool), 1)
    resume = np.where(deeper, escalate, np.nan)[:, None, :, None] / unit
    return Costs(scratch / unit, np.broadcast_to(resume, (K, N_VIEWS, K, _n_bins(n_bins))))


def estimate_costs(
    scratch_s: object,
    escalate_s: object,
    bins: Sequence[np.ndarray],
    n_bins: int,
    smoothing: float = 1.0,
) -> Costs:
    """Mean costs on N inputs; continuing is averaged per belief state it starts from.

    Args:
        scratch_s: (N, K) seconds of each stage from scratch.
        escalate_s: (N, K, K) seconds to continue from k to j (verify y_k, decode the rest).
        bins: per view (DIRECT, SEQUENTIAL) the (N, K) belief bins of the inputs.
        n_bins: B.
        smoothing: pseudo-inputs pulling a sparse bin's mean towards the overall mean.
    """
    scratch = np.asarray(scratch_s, dtype=float)
    escalate = np.asarray(escalate_s, dtype=float)
    if scratch.ndim != 2 or scratch.shape[0] == 0:
        raise StoppingError(f"'scratch_s' must be a non-empty (N, K) array, got {scratch.shape}")
    N, K = scratch.shape
    if escalate.shape != (N, K, K):
        raise StoppingError(f"'escalate_s' must have shape ({N}, {K}, {K}), got {escalate.shape}")
    if len(bins) != N_VIEWS or any(np.shape(b) != (N, K) for b in bins):
        raise StoppingError(f"'bins' must hold two ({N}, {K}) arrays (direct, sequential)")
    unit = checked_positive("mean scratch_s of the deepest stage", scratch[:, -1].mean())
    resume = np.full((K, N_VIEWS, K, n_bins), np.nan)
    for k in range(K):
        for j in range(k + 1, K):
            for v in range(N_VIEWS):
                resume[k, v, j] = _smoothed_means(
                    np.asarray(bins[v])[:, k], escalate[:, k, j], n_bins, smoothing
                )
    return Costs(scratch.mean(axis=0) / unit, resume / unit)
