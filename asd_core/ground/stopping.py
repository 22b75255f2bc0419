"""Risk-adjusted beliefs and the dynamic-programming stopping policy (DESIGN §6, §7).

Pure numpy/scipy. The pieces, in the order the pipeline uses them:

1. :func:`risk_adjust` shrinks the ensemble's acceptance prediction (mean m, variance v) towards
   the stage's base rate and optionally takes a pessimistic quantile: p̃.
2. :func:`estimate_beliefs` cuts p̃ into quantile bins (belief states) and counts, on inputs the
   predictor never trained on, how often each bin's output was acceptable (p̄) and how beliefs
   move from one state to every deeper one; :func:`estimate_costs` gives each move its cost.
3. :func:`solve` runs the backward recursion once per λ into a :class:`PolicyTable`; online,
   :func:`decide` is a table lookup, and :func:`decide_per_input` re-solves for one input's
   own costs (``cost_mode: per_input``).
4. :func:`entry_outcomes` and :func:`entry_values` choose where an input starts.

States. A decision is taken after stage k has run, in belief bin b, and in one of two *views*
that say what the predictor could see: ``SEQUENTIAL`` when stage k verified stage k−1's draft
just before (the verification feature is present), ``DIRECT`` when it was entered, reached by
a skip or restarted (the feature is blank). Stage 0 is always direct; its sequential view
exists in the arrays but is never reached. Each (stage, view) has its own bins, because the two
views are different predictions.

Moves. From (k, v, b) the policy may stop (return y_k), or go to a deeper stage j by

* **continue**: M_j verifies y_k and decodes the rest. Lossless — the output is M_j's own
  greedy output — and cheap when much of y_k is accepted; its cost depends on the belief
  (C_cont[k, v, j, b], measured per bin). It lands in view SEQUENTIAL when j = k+1, else DIRECT.
* **restart**: M_j runs from scratch, ignoring y_k (cost C_scratch[j]); lands in view DIRECT.

The entry. Nothing has run, so there is no belief state yet: the input-only head predicts
acceptance for every stage, and the entry compares, for each stage j, the value of entering there
and then following the table — not as the Markov model predicts it, but as it turned out on the
held-out inputs whose head predictions are nearest (:func:`entry_outcomes`, :func:`entry_values`).
Knowing every stage's prediction, it knows what a router knows; a router is the special case in
which the policy stops right after the entry.

Modelling assumptions, stated once: after the entry, beliefs are Markov — the belief after a
move depends only on the state it left, not on earlier states or on the head's predictions.
Every estimate comes from held-out inputs on which every stage ran (all views can be computed
for them).

Ablations share the recursion through :class:`Rule`: ``SEQUENTIAL_RULE`` is the plain cascade
0 → 1 → … with DP stopping, ``MYOPIC`` the one-step rule, ``Rule(restart=False)`` the policy
that can only continue.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from scipy import special

from asd_core.ground.errors import AsdError

STOP = -1  # action: return this stage's output
ENTRY = -1  # the stage index of the entry decision (before any model runs)
DIRECT, SEQUENTIAL = 0, 1  # views: no verification feature / stage k−1's draft was verified
N_VIEWS = 2
VIEW_NAMES = ("direct", "sequential")
ROW_SUM_TOLERANCE = 1e-6  # how far a transition row may sum from 1 (float noise)


class StoppingError(AsdError):
    """Impossible input to risk adjustment, belief estimation or the stopping solver."""


# -- validation ---------------------------------------------------------------------------------


def _probabilities(name: str, values: object) -> np.ndarray:
    """``values`` as a float array whose entries all lie in [0, 1] (NaN rejected)."""
    arr = np.asarray(values, dtype=float)
    if not np.all((arr >= 0.0) & (arr <= 1.0)):
        raise StoppingError(f"'{name}' must hold probabilities in [0, 1]")
    return arr


def _positive(name: str, value: float, *, allow_zero: bool = False) -> float:
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


# -- risk adjustment (§6) -----------------------------------------------------------------------


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
    m = _probabilities("mean", mean)
    mu = _probabilities("prior_mean", prior_mean)
    v = np.asarray(var, dtype=float)
    if not np.all((v >= 0.0) & np.isfinite(v)):
        raise StoppingError("'var' must hold finite variances >= 0")
    alpha = _positive("alpha", alpha, allow_zero=True)
    beta = _positive("beta", beta)
    if beta > 0.5:
        raise StoppingError(f"'beta' must lie in (0, 0.5] (0.5 = posterior mean), got {beta!r}")
    n_max = _positive("n_max", n_max)
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


# -- beliefs (§7) -------------------------------------------------------------------------------


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
    arr = _probabilities("p", p).ravel()
    if arr.size == 0:
        raise StoppingError("'p' is empty: no inputs to place bin edges")
    cuts = np.unique(np.quantile(arr, np.arange(1, n_bins) / n_bins))
    cuts = cuts[cuts > arr.min()]  # a cut at the minimum would leave bin 0 empty
    return np.concatenate([cuts, np.full(n_bins - 1 - len(cuts), np.inf)])


def to_bins(p: object, edges: np.ndarray) -> np.ndarray:
    """Bin of each probability: the number of cut points ≤ p (see :func:`quantile_edges`)."""
    return np.searchsorted(edges, _probabilities("p", p), side="right").astype(np.intp)


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
        pbar = _probabilities("pbar", self.pbar)
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
    smoothing = _positive("smoothing", smoothing, allow_zero=True)
    views = [_probabilities("direct", direct), _probabilities("sequential", sequential)]
    y = _probabilities("labels", labels)
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


# -- costs --------------------------------------------------------------------------------------


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
    unit = _positive("scratch_s of the deepest stage", scratch[-1])
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
    unit = _positive("mean scratch_s of the deepest stage", scratch[:, -1].mean())
    resume = np.full((K, N_VIEWS, K, n_bins), np.nan)
    for k in range(K):
        for j in range(k + 1, K):
            for v in range(N_VIEWS):
                resume[k, v, j] = _smoothed_means(
                    np.asarray(bins[v])[:, k], escalate[:, k, j], n_bins, smoothing
                )
    return Costs(scratch.mean(axis=0) / unit, resume / unit)


# -- the solver ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """Which moves a policy may make and how far it looks ahead."""

    skips: bool = True  # a stage may jump to any deeper stage (False: only to the next one)
    route: bool = True  # the entry may start at any stage (False: always stage 0)
    myopic: bool = False  # choose by one step of lookahead (stop right after the move)
    restart: bool = True  # a deeper stage may run from scratch instead of continuing the draft


DP = Rule()  # the method: route, then cascade with skips and restarts, by the full recursion
SEQUENTIAL_RULE = Rule(skips=False, route=False, restart=False)  # ablation: plain cascade 0 → 1 → …
MYOPIC = Rule(skips=False, myopic=True)  # ablation: stop unless one more stage pays at once
NO_RESTART = Rule(restart=False)  # ablation: escalations always continue the draft


class Decision(NamedTuple):
    """What to do after a stage: STOP, or the stage to run next and whether from scratch."""

    stage: int  # STOP (−1) or the deeper stage j
    restart: bool  # True: run j from scratch; False: verify the current output and continue


@dataclass(frozen=True, eq=False)
class PolicyTable:
    """The solved policy for one λ: values and actions per state after a stage has run."""

    lam: float  # λ, cost units per unit of quality loss
    value: np.ndarray  # (K, 2, B) expected cost + λ·loss from state (k, v, b) on
    action: np.ndarray  # (K, 2, B) int: STOP or the stage to run next; stage K−1 all STOP
    restart: np.ndarray  # (K, 2, B) bool: the move to action runs it from scratch
    rule: Rule  # the moves and lookahead it was solved with
    final_is_reference: bool  # stopping at the last stage loses nothing (token/answer labels)


def _options(
    beliefs: BeliefModel, costs: Costs, rule: Rule, k: int, v: int, next_value: np.ndarray
) -> tuple[list[np.ndarray], list[tuple[int, bool]]]:
    """The move options from (k, v): per option (B,) cost + expected ``next_value``, and labels.

    Shallower stages first and continue before restart, so that ties (argmin takes the first)
    resolve to the cheaper-looking choice. ``next_value`` is (K, 2, B).
    """
    K = beliefs.n_stages
    options, labels = [], []
    for j in range(k + 1, K if rule.skips else min(k + 2, K)):
        land = SEQUENTIAL if j == k + 1 else DIRECT
        options.append(costs.resume[k, v, j] + beliefs.moves[k, v, j, land] @ next_value[j, land])
        labels.append((j, False))
        if rule.restart:
            moves = beliefs.moves[k, v, j, DIRECT]
            options.append(costs.scratch[j] + moves @ next_value[j, DIRECT])
            labels.append((j, True))
    return options, labels


def _backward(
    beliefs: BeliefModel, stop: np.ndarray, costs: Costs, rule: Rule, down_to: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The one recursion every variant shares, from the last stage back to stage ``down_to``.

    Args:
        beliefs: states and moves (K stages, B bins).
        stop: (K, 2, B) cost of stopping in each state: λ·(1 − p̄), 0 at a reference stage.
        costs: move costs.
        rule: allowed moves; ``myopic`` picks actions by one-step lookahead (stop after the
            move) but still reports each state's true expected cost under the chosen policy.
        down_to: the shallowest stage whose decisions are needed; shallower states are left
            NaN / STOP.

    Returns:
        value, action and restart, each (K, 2, B), as in :class:`PolicyTable`.
    """
    K, _, B = stop.shape
    value = np.full((K, N_VIEWS, B), np.nan)
    action = np.full((K, N_VIEWS, B), STOP, dtype=np.intp)
    restart = np.zeros((K, N_VIEWS, B), dtype=bool)
    value[K - 1] = stop[K - 1]  # the last stage can only stop
    columns = np.arange(B)
    for k in range(K - 2, down_to - 1, -1):
        for v in range(N_VIEWS):
            true_q, labels = _options(beliefs, costs, rule, k, v, value)
            true_q, labels = [stop[k, v], *true_q], [(STOP, False), *labels]
            chosen_q = true_q
            if rule.myopic:
                chosen_q = [stop[k, v], *_options(beliefs, costs, rule, k, v, stop)[0]]
            best = np.argmin(np.stack(chosen_q), axis=0)
            value[k, v] = np.stack(true_q)[best, columns]
            action[k, v] = [labels[i][0] for i in best]
            restart[k, v] = [labels[i][1] for i in best]
    return value, action, restart


def _stop_costs(beliefs: BeliefModel, lam: float, final_is_reference: bool) -> np.ndarray:
    """(K, 2, B) cost of stopping: λ·(1 − p̄), zero at the last stage when it is the reference."""
    stop = lam * (1.0 - np.asarray(beliefs.pbar))
    if final_is_reference:
        stop[-1] = 0.0
    return stop


def _check_costs(beliefs: BeliefModel, costs: Costs) -> None:
    if costs.scratch.shape != (beliefs.n_stages,) or costs.n_bins != beliefs.n_bins:
        raise StoppingError(
            f"'costs' are for {costs.scratch.shape[0]} stages and {costs.n_bins} bins, the "
            f"beliefs for {beliefs.n_stages} and {beliefs.n_bins}"
        )


def solve(
    beliefs: BeliefModel,
    costs: Costs,
    lam: float,
    *,
    rule: Rule = DP,
    final_is_reference: bool = True,
) -> PolicyTable:
    """Minimise expected cost + λ·expected quality loss by backward induction, O(K²·B²).

    V[K−1, v, b] = λ·(1 − p̄[K−1, v, b]), or 0 when ``final_is_reference`` (token/answer labels);
    V[k, v, b] = min{ λ·(1 − p̄[k, v, b]),
                      min_{j>k} C_cont[k, v, j, b] + Σ_b' T[k, v, j, w_j][b, b']·V[j, w_j, b'],
                      min_{j>k} C_scratch[j] + Σ_b' T[k, v, j, DIRECT][b, b']·V[j, DIRECT, b'] }
    with w_j = SEQUENTIAL for j = k+1, else DIRECT. The entry is not part of the table: see
    :func:`entry_outcomes`.

    Args:
        beliefs: states, bin values and moves.
        costs: move costs (unit: the deepest stage alone).
        lam: λ > 0, cost units per unit of quality loss.
        rule: moves and lookahead (:data:`DP`, :data:`SEQUENTIAL_RULE`, :data:`MYOPIC`, …).
        final_is_reference: the labels measure agreement with the last stage.
    """
    lam = _positive("lam", lam)
    _check_costs(beliefs, costs)
    stop = _stop_costs(beliefs, lam, final_is_reference)
    arrays = _backward(beliefs, stop, costs, rule)
    for arr in arrays:
        arr.setflags(write=False)
    value, action, restart = arrays
    return PolicyTable(lam, value, action, restart, rule, final_is_reference)


def policy_tables(
    beliefs: BeliefModel,
    costs: Costs,
    lambdas: Iterable[float],
    *,
    rule: Rule = DP,
    final_is_reference: bool = True,
) -> dict[float, PolicyTable]:
    """One :func:`solve` per λ, keyed by λ."""
    return {
        float(lam): solve(beliefs, costs, lam, rule=rule, final_is_reference=final_is_reference)
        for lam in lambdas
    }


def _check_state(n_stages: int, n_bins: int, stage: int, view: int, belief: int) -> None:
    if not 0 <= stage < n_stages:
        raise StoppingError(f"'stage' must lie in [0, {n_stages - 1}], got {stage!r}")
    if view not in (DIRECT, SEQUENTIAL):
        raise StoppingError(f"'view' must be DIRECT (0) or SEQUENTIAL (1), got {view!r}")
    if not 0 <= belief < n_bins:
        raise StoppingError(f"'belief' must lie in [0, {n_bins}), got {belief!r}")


def decide(table: PolicyTable, stage: int, view: int, belief: int) -> Decision:
    """The move after ``stage`` has run, seen in ``view``, in belief bin ``belief``."""
    K, _, B = table.action.shape
    _check_state(K, B, stage, view, belief)
    return Decision(
        int(table.action[stage, view, belief]), bool(table.restart[stage, view, belief])
    )


def decide_per_input(
    beliefs: BeliefModel,
    costs: Costs,
    lam: float,
    stage: int,
    view: int,
    belief: int,
    *,
    rule: Rule = DP,
    final_is_reference: bool = True,
) -> Decision:
    """:func:`decide` for one input with its own costs (``cost_mode: per_input``).

    Solves only the stages from ``stage`` to the last; ~0.1 ms for K = 3, B = 10.
    """
    lam = _positive("lam", lam)
    _check_costs(beliefs, costs)
    _check_state(beliefs.n_stages, beliefs.n_bins, stage, view, belief)
    stop = _stop_costs(beliefs, lam, final_is_reference)
    _, action, restart = _backward(beliefs, stop, costs, rule, down_to=stage)
    return Decision(int(action[stage, view, belief]), bool(restart[stage, view, belief]))


# -- the entry, from held-out inputs -------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class HeldOut:
    """N held-out inputs on which every stage ran: what the entry is estimated on."""

    head: np.ndarray  # (N, K) the input-only head's prediction for each stage
    bins: np.ndarray  # (2, N, K) belief bin of each stage's output, per view (DIRECT, SEQUENTIAL)
    labels: np.ndarray  # (N, K) 0/1 acceptance label of each stage's output
    scratch: np.ndarray  # (N, K) cost of each stage from scratch, in the tables' unit
    resume: np.ndarray  # (N, K, K) cost of continuing from k to j > k (NaN elsewhere)
    tasks: np.ndarray | None = None  # (N,) task of each input: entries compare within a task

    def __post_init__(self) -> None:
        head = _probabilities("head", self.head)
        if head.ndim != 2 or head.shape[0] == 0:
            raise StoppingError(f"'head' must be a non-empty (N, K) array, got {head.shape}")
        N, K = head.shape
        shapes = {"bins": (N_VIEWS, N, K), "labels": (N, K), "scratch": (N, K), "resume": (N, K, K)}
        if self.tasks is not None:
            shapes["tasks"] = (N,)
        for name, shape in shapes.items():
            if np.shape(getattr(self, name)) != shape:
                raise StoppingError(
                    f"'{name}' must have shape {shape}, got {np.shape(getattr(self, name))}"
                )

    @property
    def n(self) -> int:
        return int(self.head.shape[0])


def entry_outcomes(
    tables: PolicyTable | Mapping[str, PolicyTable], held: HeldOut, follow: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """What entering at each stage and then following the table did on each held-out input.

    Walks every input's own recorded bins, labels and costs (not the Markov model), so the
    result reflects how beliefs really moved for inputs like it.

    Args:
        tables: the solved policy after the entry, or one per task (looked up by
            ``held.tasks``; the key "" serves a task without its own).
        held: the held-out inputs.
        follow: False stops right after the entry (the one-step lookahead of a myopic rule).

    Returns:
        cost (N, K) and loss (N, K): column j is the outcome of entering at stage j.
    """
    N, K = held.head.shape
    cost = np.zeros((N, K))
    loss = np.zeros((N, K))
    for i in range(N):
        if isinstance(tables, PolicyTable):
            table = tables
        else:
            task = "" if held.tasks is None else str(held.tasks[i])
            table = tables[task] if task in tables else tables[""]
        for j in range(K):
            k, v, total = j, DIRECT, float(held.scratch[i, j])
            while follow:
                nxt, fresh = (
                    table.action[k, v, held.bins[v, i, k]],
                    table.restart[k, v, held.bins[v, i, k]],
                )
                if nxt == STOP:
                    break
                total += held.scratch[i, nxt] if fresh else held.resume[i, k, nxt]
                k, v = int(nxt), DIRECT if fresh or nxt != k + 1 else SEQUENTIAL
            cost[i, j] = total
            reference = table.final_is_reference and k == K - 1
            loss[i, j] = 0.0 if reference else 1.0 - float(held.labels[i, k])
    return cost, loss


def nearest(
    points: object,
    queries: object,
    k: int,
    point_groups: Sequence[str] | np.ndarray | None = None,
    query_groups: Sequence[str] | np.ndarray | None = None,
) -> np.ndarray:
    """(M, k') indices of the k' = min(k, N) points nearest to each query (Euclidean).

    With groups (tasks), a query's neighbours come from its own group first: costs differ
    by an order of magnitude between tasks, so an input is compared with inputs of its task
    (other groups fill in only when its own has fewer than k points).

    Args:
        points: (N, K) head predictions of the held-out inputs.
        queries: (M, K) head predictions of the inputs to decide for.
        k: neighbours per query, ≥ 1.
        point_groups, query_groups: (N,) and (M,) group labels, or None.
    """
    p = np.asarray(points, dtype=float)
    q = np.asarray(queries, dtype=float)
    if q.ndim != 2 or p.ndim != 2 or q.shape[1] != p.shape[1]:
        raise StoppingError(
            f"'queries' must be (M, {p.shape[-1]}) like 'points', got {q.shape} and {p.shape}"
        )
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise StoppingError(f"'k' must be an integer >= 1, got {k!r}")
    k = min(int(k), p.shape[0])
    dist = ((q[:, None, :] - p[None, :, :]) ** 2).sum(axis=-1)  # (M, N)
    if point_groups is not None and query_groups is not None:
        other = np.asarray(query_groups)[:, None] != np.asarray(point_groups)[None, :]
        dist = dist + np.where(other, 1e6, 0.0)  # beyond any distance within [0, 1]^K
    idx = np.argpartition(dist, k - 1, axis=1)[:, :k]
    return np.asarray(idx, dtype=np.intp)


def entry_values(
    cost: np.ndarray, loss: np.ndarray, lam: float, neighbours: np.ndarray, route: bool = True
) -> np.ndarray:
    """(M, K) value of entering each stage: mean cost + λ·loss over each query's neighbours.

    ``route`` False bars every stage but 0 (value +inf). The entry goes to the argmin, ties to
    the shallower stage.
    """
    lam = _positive("lam", lam)
    values = (cost + lam * loss)[np.asarray(neighbours)].mean(axis=1)  # (M, K)
    if not route:
        values[:, 1:] = np.inf
    return values


def decide_entries(values: np.ndarray) -> np.ndarray:
    """(M,) the starting stage of each query: argmin of :func:`entry_values`."""
    return np.argmin(np.asarray(values), axis=1).astype(np.intp)


# -- what a policy does on average (under the model) ----------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """A policy's expected behaviour from a distribution of starting states (under the model)."""

    cost: float  # expected compute cost after the start, in units of the deepest stage alone
    loss: float  # expected quality loss, probability that the returned output is not accepted
    depth: np.ndarray  # (K,) probability of returning each stage's output


def policy_outcome(
    table: PolicyTable, beliefs: BeliefModel, costs: Costs, start: object
) -> Outcome:
    """Push a distribution of starting states forward through the policy (the Markov model).

    A forward pass, independent of the recursion: cost + λ·loss = Σ start · value[:, DIRECT].

    Args:
        start: (K, B) probability of starting at (stage j, DIRECT, bin b), summing to 1.
    """
    _check_costs(beliefs, costs)
    K, B = beliefs.n_stages, beliefs.n_bins
    if table.action.shape != (K, N_VIEWS, B):
        raise StoppingError("'table' was solved for a different number of stages or bins")
    first = _probabilities("start", start)
    if first.shape != (K, B) or not np.isclose(first.sum(), 1.0):
        raise StoppingError(f"'start' must be a ({K}, {B}) distribution summing to 1")
    mass = np.zeros((K, N_VIEWS, B))
    mass[:, DIRECT] = first
    loss_if_stop = 1.0 - np.asarray(beliefs.pbar)
    if table.final_is_reference:
        loss_if_stop[-1] = 0.0
    cost = loss = 0.0
    depth = np.zeros(K)
    for k in range(K):  # moves only go deeper, so stage k's mass is final here
        for v in range(N_VIEWS):
            for b in range(B):
                m = mass[k, v, b]
                a, fresh = int(table.action[k, v, b]), bool(table.restart[k, v, b])
                if a == STOP:
                    depth[k] += m
                    loss += m * loss_if_stop[k, v, b]
                    continue
                land = DIRECT if fresh or a != k + 1 else SEQUENTIAL
                cost += m * (costs.scratch[a] if fresh else costs.resume[k, v, a, b])
                mass[a, land] += m * beliefs.moves[k, v, a, land, b]
    return Outcome(cost=float(cost), loss=float(loss), depth=depth)


# -- where the policy changes with λ ------------------------------------------------------------


def breakpoints(
    signature: Callable[[float], Hashable],
    lo: float,
    hi: float,
    n_grid: int = 120,
    rel_tol: float = 1e-3,
) -> list[float]:
    """The λ in [lo, hi] at which ``signature(λ)`` (e.g. a solved table's actions) changes.

    A log-spaced grid finds every interval whose ends differ; bisection in log λ narrows each to
    ``rel_tol``. A change that reverts between two grid points is missed, so ``n_grid`` sets
    the resolution. Returns the sorted change points (the upper end of each narrowed interval).
    """
    lo, hi = _positive("lo", lo), _positive("hi", hi)
    if hi <= lo:
        raise StoppingError(f"'hi' must exceed 'lo', got {lo!r}..{hi!r}")
    grid = np.geomspace(lo, hi, n_grid)
    seen = [signature(float(x)) for x in grid]
    out = []
    for a, b, sa, sb in zip(grid[:-1], grid[1:], seen[:-1], seen[1:], strict=True):
        if sa == sb:
            continue
        left, right = float(a), float(b)
        while right / left > 1.0 + rel_tol:
            mid = math.sqrt(left * right)
            if signature(mid) == sa:
                left = mid
            else:
                right = mid
        out.append(right)
    return out


def dense_lambdas(
    changes: Sequence[float], lo: float, hi: float, at_least: int = 30, extra: Iterable[float] = ()
) -> list[float]:
    """A λ grid with one point inside every interval where the policy is constant.

    Between consecutive change points the policy does not move, so one λ per interval (its
    geometric midpoint) traces every distinct policy; log-spaced points fill the grid up to
    ``at_least`` values, and ``extra`` (e.g. the research protocol's six λ) are kept as given.
    Sorted, unique to 1e-9 relative.
    """
    lo, hi = _positive("lo", lo), _positive("hi", hi)
    cuts = sorted(c for c in changes if lo < c < hi)
    ends = [lo, *cuts, hi]
    points = [math.sqrt(a * b) for a, b in zip(ends[:-1], ends[1:], strict=True)]
    points += [float(x) for x in extra]
    fill = max(at_least - len(points), 0)
    while True:
        grid = _unique_sorted([*points, *np.geomspace(lo, hi, fill + 2)[1:-1].tolist()])
        if len(grid) >= at_least or fill > 10 * at_least:
            return grid
        fill += at_least - len(grid)


def _unique_sorted(values: Iterable[float]) -> list[float]:
    """Sorted values, each at least 1e-9 (relative) above the one before."""
    out: list[float] = []
    for x in sorted(values):
        if not out or x > out[-1] * (1 + 1e-9):
            out.append(x)
    return out


def signature(table: PolicyTable) -> bytes:
    """A solved table's decisions as bytes (its actions and restarts), to compare across λ."""
    return table.action.tobytes() + table.restart.tobytes()
