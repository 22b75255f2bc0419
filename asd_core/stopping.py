"""Risk-adjusted beliefs and the dynamic-programming stopping policy (DESIGN §6, §7).

Pure numpy/scipy. The pieces, in the order the pipeline uses them:

1. :func:`risk_adjust` shrinks the ensemble's acceptance prediction (mean m, variance v) towards
   the stage's base rate and optionally takes a pessimistic quantile: p̃.
2. :func:`belief_bins` turns p̃ into a belief state b ∈ {0..B−1}; :func:`bin_values` gives each
   (stage, bin) its acceptance probability p̄; :func:`estimate_transitions` counts how beliefs
   move from one stage (or from the entry) to every deeper one.
3. :func:`solve` runs the backward recursion once per λ into a :class:`PolicyTable`; online,
   :func:`decide` is a table lookup, and :func:`decide_per_input` re-solves for one input's own
   costs (``cost_mode: per_input``).

Indexing used throughout: K stages, B bins. A *source row* r is where a decision is taken:
r = 0 is the entry (stage −1, before any model ran), r = k + 1 is "stage k has just run". Costs
C[r, j] and transitions T[r, j] go from source row r to stage j, and only j ≥ r (j deeper than
k = r − 1) is a move; the other cells are unused (NaN when this module builds them).

The entry state. Its belief e is the bin of the input-only head's prediction. It describes no
output (nothing can be returned before a model runs), so the entry has no stop option, and e is
used only to condition T[0, j][e, b'] = P(bin of p̃_j = b' | entry bin e). Because those rows are
counted from data, e need not be calibrated for any particular stage: whatever the head predicts
(say P(accept_0 | x)), the counts translate it into each stage's belief. After entering at j, the
state is stage j's own belief, so the recursion continues exactly as for escalations.

Modelling assumptions, stated once: beliefs are Markov — the belief after a jump from k depends
only on the bin at k, not on earlier bins or on the entry bin; the transition counts come from
training inputs on which every stage ran, so the belief at stage j reached by a skip or a direct
entry is assumed to be distributed like the belief at j on the full sequential path.

Ablations share the recursion through :class:`Rule`: ``Rule(skips=False, route=False)`` is the
plain sequential cascade, ``Rule(skips=False, myopic=True)`` the myopic one-step rule.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from scipy import special

from asd_core.errors import AsdError

STOP = -1  # action: return this stage's output
ENTRY = -1  # the stage index of the entry decision (before any model runs)
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


def belief_bins(p: object, n_bins: int = 20) -> np.ndarray:
    """Belief state of each probability: ``floor(p·B)``, with p = 1 in the top bin.

    Args:
        p: p̃, any shape, in [0, 1].
        n_bins: B, the number of equal-width bins.

    Returns:
        Integer array of p's shape with values in [0, B).
    """
    n_bins = _n_bins(n_bins)
    arr = _probabilities("p", p)
    return np.minimum((arr * n_bins).astype(np.intp), n_bins - 1)


def bin_values(p_tilde: object, n_bins: int = 20) -> np.ndarray:
    """p̄[k, b]: mean p̃ of the training inputs whose stage-k belief falls in bin b.

    Args:
        p_tilde: (N, K) risk-adjusted acceptance probabilities of N training inputs at K stages.
        n_bins: B.

    Returns:
        (K, B) probabilities; a bin no training input fell in gets its centre (b + 0.5)/B.
    """
    n_bins = _n_bins(n_bins)
    p = _probabilities("p_tilde", p_tilde)
    if p.ndim != 2:
        raise StoppingError(f"'p_tilde' must be a (N, K) array, got shape {p.shape}")
    n_stages = p.shape[1]
    # one bincount over (stage, bin) pairs flattened to stage·B + bin
    flat = (belief_bins(p, n_bins) + np.arange(n_stages) * n_bins).ravel()
    total = np.bincount(flat, weights=p.ravel(), minlength=n_stages * n_bins)
    count = np.bincount(flat, minlength=n_stages * n_bins)
    centres = np.tile((np.arange(n_bins) + 0.5) / n_bins, n_stages)
    values = np.where(count > 0, total / np.maximum(count, 1), centres)
    return values.reshape(n_stages, n_bins)


@functools.lru_cache(maxsize=16)
def valid_moves(n_stages: int) -> np.ndarray:
    """(K+1, K) read-only bool: ``[r, j]`` is true when stage j is deeper than row r's stage r − 1."""
    rows = np.arange(n_stages + 1)[:, None]
    mask = np.arange(n_stages)[None, :] >= rows
    mask.setflags(write=False)
    return mask


@dataclass(frozen=True, eq=False)
class Transitions:
    """How beliefs move from each source row to every deeper stage.

    Validated on construction (valid blocks row-stochastic); the arrays are made read-only.
    """

    # (K+1, K, B, B): probs[r, j, b, b'] = P(stage-j bin = b' | bin b at source row r), where row 0
    # is the entry (its bin comes from the input-only head) and row k+1 is stage k; only blocks
    # with j ≥ r are moves, the others are NaN
    probs: np.ndarray
    # (K+1, K, B, B) training pairs behind each probability before smoothing; None when the
    # probabilities were given directly
    counts: np.ndarray | None = None

    def __post_init__(self) -> None:
        probs = np.array(self.probs, dtype=float)
        if (
            probs.ndim != 4
            or probs.shape[0] != probs.shape[1] + 1
            or probs.shape[2:]
            != (
                probs.shape[2],
                probs.shape[2],
            )
        ):
            raise StoppingError(
                f"'transitions' must have shape (K+1, K, B, B), got {np.shape(self.probs)}"
            )
        if probs.shape[1] < 1 or probs.shape[2] < 1:
            raise StoppingError("'transitions' needs at least one stage and one bin")
        blocks = probs[valid_moves(probs.shape[1])]  # (moves, B, B)
        if not np.all((blocks >= 0.0) & (blocks <= 1.0)):
            raise StoppingError("'transitions' must hold probabilities in [0, 1]")
        if not np.allclose(blocks.sum(axis=-1), 1.0, rtol=0.0, atol=ROW_SUM_TOLERANCE):
            raise StoppingError("'transitions' rows must each sum to 1")
        probs.setflags(write=False)
        object.__setattr__(self, "probs", probs)
        if self.counts is not None:
            counts = np.array(self.counts, dtype=float)
            if counts.shape != probs.shape:
                raise StoppingError(f"'counts' must have the shape of 'probs' {probs.shape}")
            counts.setflags(write=False)
            object.__setattr__(self, "counts", counts)

    @property
    def n_stages(self) -> int:
        """K, the number of stages."""
        return int(self.probs.shape[1])

    @property
    def n_bins(self) -> int:
        """B, the number of belief bins."""
        return int(self.probs.shape[2])


def estimate_transitions(
    stage_bins: object, entry_bins: object, n_bins: int = 20, smoothing: float = 1.0
) -> Transitions:
    """Count belief moves in training data, for every source row and every deeper stage.

    Args:
        stage_bins: (N, K) belief bin of each training input after each stage (all stages ran).
        entry_bins: (N,) belief bin of each input from the input-only head.
        n_bins: B.
        smoothing: pseudo-count added to every cell before normalising (1 = add-one).

    Returns:
        :class:`Transitions` with probs[r, j, b, :] = (counts + smoothing) / row total for
        j ≥ r (skips included), NaN elsewhere.
    """
    n_bins = _n_bins(n_bins)
    smoothing = _positive("smoothing", smoothing)
    stage = np.asarray(stage_bins)
    entry = np.asarray(entry_bins)
    if stage.ndim != 2 or stage.shape[1] < 1:
        raise StoppingError(f"'stage_bins' must be a (N, K) array, got shape {stage.shape}")
    if entry.shape != (stage.shape[0],):
        raise StoppingError(
            f"'entry_bins' must have shape ({stage.shape[0]},) to match 'stage_bins', "
            f"got {entry.shape}"
        )
    if stage.shape[0] == 0:
        raise StoppingError("'stage_bins' is empty: no training inputs to count transitions from")
    stage = _bins("stage_bins", stage, n_bins)
    entry = _bins("entry_bins", entry, n_bins)
    n_stages = stage.shape[1]
    sources = np.column_stack([entry, stage])  # (N, K+1): source row r's bin per input
    counts = np.zeros((n_stages + 1, n_stages, n_bins, n_bins))
    for r, j in zip(*np.nonzero(valid_moves(n_stages)), strict=True):
        pairs = sources[:, r] * n_bins + stage[:, j]
        counts[r, j] = np.bincount(pairs, minlength=n_bins * n_bins).reshape(n_bins, n_bins)
    smoothed = counts + smoothing
    probs = smoothed / smoothed.sum(axis=-1, keepdims=True)
    probs[~valid_moves(n_stages)] = np.nan
    return Transitions(probs=probs, counts=counts)


# -- costs --------------------------------------------------------------------------------------


def cost_matrix(scratch_s: object, escalate_s: object) -> np.ndarray:
    """The solver's cost matrix, normalised so that the deepest stage run alone costs 1.

    Args:
        scratch_s: (K,) seconds to run stage j from scratch (the entry's moves).
        escalate_s: (K, K) seconds to escalate from stage k to a deeper stage j: verify y_k with
            M_j and decode the rest. Cheaper than scratch because the accepted prefix is reused.
            Only the strict upper triangle (j > k) is read.

    Returns:
        (K+1, K) unitless costs C: row 0 = scratch_s, row k+1 = escalate_s[k]; NaN where j ≤ k.
    """
    scratch = np.asarray(scratch_s, dtype=float)
    escalate = np.asarray(escalate_s, dtype=float)
    if scratch.ndim != 1 or scratch.size < 1:
        raise StoppingError(f"'scratch_s' must be a (K,) array, got shape {scratch.shape}")
    n_stages = scratch.size
    if escalate.shape != (n_stages, n_stages):
        raise StoppingError(
            f"'escalate_s' must have shape ({n_stages}, {n_stages}), got {escalate.shape}"
        )
    costs = np.vstack([scratch, escalate])
    moves = valid_moves(n_stages)
    if not np.all(np.isfinite(costs[moves]) & (costs[moves] >= 0.0)):
        raise StoppingError("'scratch_s' and 'escalate_s' must be finite seconds >= 0")
    if scratch[-1] <= 0.0:
        raise StoppingError("'scratch_s' of the deepest stage must be > 0 (it is the unit)")
    return np.where(moves, costs / scratch[-1], np.nan)


# -- the solver ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """Which moves a policy may make and how far it looks ahead."""

    skips: bool = True  # a stage may jump to any deeper stage (False: only to the next one)
    route: bool = True  # the entry may start at any stage (False: always stage 0)
    myopic: bool = False  # choose by one step of lookahead (stop right after the move)


DP = Rule()  # the method: route, then cascade with skips, by the full recursion
SEQUENTIAL = Rule(skips=False, route=False)  # ablation: plain cascade 0 → 1 → … with DP stopping
MYOPIC = Rule(skips=False, myopic=True)  # ablation: stop unless one more stage pays at once


@dataclass(frozen=True, eq=False)
class PolicyTable:
    """The solved policy for one λ: values and actions per (source row, belief bin)."""

    lam: float  # λ, cost units per unit of quality loss
    value: np.ndarray  # (K+1, B) expected cost + λ·loss from here on, row 0 = entry, k+1 = stage k
    action: np.ndarray  # (K+1, B) int: STOP or the stage to run next; row K (last stage) all STOP
    rule: Rule  # the moves and lookahead it was solved with
    final_is_reference: bool  # stopping at the last stage loses nothing (token/answer labels)


@functools.lru_cache(maxsize=64)
def _move_lists(n_stages: int, rule: Rule) -> tuple[tuple[slice, np.ndarray], ...]:
    """Per source row: (the stages it may move to, as a slice; the action label of each option).

    Reachable stages always form a contiguous range, so the recursion reads views, not copies.
    Options are ordered stop first, then shallower stages first, so that ties (argmin takes the
    first) resolve to the cheaper-looking choice.
    """
    rows = []
    for r in range(n_stages + 1):
        if r == 0:
            targets = slice(0, n_stages if rule.route else 1)
        else:  # the last stage (r = n_stages) gets an empty range: it can only stop
            targets = slice(r, n_stages if rule.skips else min(r + 1, n_stages))
        labels = np.arange(targets.start, targets.stop, dtype=np.intp)
        if r > 0:
            labels = np.concatenate([[STOP], labels]).astype(np.intp)
        labels.setflags(write=False)
        rows.append((targets, labels))
    return tuple(rows)


def _backward(
    probs: np.ndarray,
    stop: np.ndarray,
    costs: np.ndarray,
    rule: Rule,
    down_to: int = ENTRY,
) -> tuple[np.ndarray, np.ndarray]:
    """The one recursion every variant shares, from the last stage back to stage ``down_to``.

    Args:
        probs: (K+1, K, B, B) transition probabilities (see :class:`Transitions`).
        stop: (K, B) cost of stopping at stage k in bin b: λ·(1 − p̄), 0 at a reference stage.
        costs: (K+1, K) move costs C[r, j].
        rule: allowed moves; ``myopic`` picks actions by one-step lookahead (stop after the
            move) but still reports each state's true expected cost under the chosen policy.
        down_to: the shallowest stage whose decisions are needed (ENTRY = all of them);
            shallower rows are left NaN / STOP.

    Returns:
        value (K+1, B) and action (K+1, B) by source row, as in :class:`PolicyTable`.
    """
    n_stages, n_bins = stop.shape
    value = np.full((n_stages + 1, n_bins), np.nan)
    action = np.full((n_stages + 1, n_bins), STOP, dtype=np.intp)
    value[n_stages] = stop[-1]  # the last stage can only stop
    columns = np.arange(n_bins)
    moves = _move_lists(n_stages, rule)
    for r in range(n_stages - 1, down_to, -1):
        targets, labels = moves[r]
        first = 1 if r > 0 else 0  # a stage that has run can stop (option 0); the entry cannot
        block = probs[r, targets]  # (J, B, B)
        move_cost = costs[r, targets, None]  # (J, 1)
        true_q = np.empty((len(labels), n_bins))  # (options, B)
        true_q[first:] = move_cost + (block @ value[1:][targets, :, None])[..., 0]
        chosen_q = true_q
        if rule.myopic:
            chosen_q = np.empty_like(true_q)
            chosen_q[first:] = move_cost + (block @ stop[targets, :, None])[..., 0]
        if first:
            true_q[0] = chosen_q[0] = stop[r - 1]
        best = np.argmin(chosen_q, axis=0)
        action[r] = labels[best]
        value[r] = true_q[best, columns]
    return value, action


def _stop_costs(
    pbar: object, lam: float, shape: tuple[int, int], final_is_reference: bool
) -> np.ndarray:
    """(K, B) cost of stopping: λ·(1 − p̄[k, b]), zero at the last stage when it is the reference."""
    p = _probabilities("pbar", pbar)
    if p.shape != shape:
        raise StoppingError(
            f"'pbar' must have shape {shape} to match the transitions, got {p.shape}"
        )
    stop = lam * (1.0 - p)
    if final_is_reference:
        stop[-1] = 0.0
    return stop


def _checked_costs(costs: object, n_stages: int) -> np.ndarray:
    """``costs`` as a (K+1, K) float array with finite entries ≥ 0 wherever a move exists."""
    c = np.asarray(costs, dtype=float)
    if c.shape != (n_stages + 1, n_stages):
        raise StoppingError(
            f"'costs' must have shape ({n_stages + 1}, {n_stages}) to match the transitions, "
            f"got {c.shape}"
        )
    moves = c[valid_moves(n_stages)]
    if not np.all(np.isfinite(moves) & (moves >= 0.0)):
        raise StoppingError("'costs' must be finite and >= 0 for every move")
    return c


def solve(
    transitions: Transitions,
    pbar: object,
    costs: object,
    lam: float,
    *,
    rule: Rule = DP,
    final_is_reference: bool = True,
) -> PolicyTable:
    """Minimise expected cost + λ·expected quality loss by backward induction, O(K²·B²).

    V_{K−1}(b) = λ·(1 − p̄[K−1, b]), or 0 when ``final_is_reference`` (token/answer labels);
    V_k(b) = min{ λ·(1 − p̄[k, b]), min_{j>k} C[k+1, j] + Σ_b' T[k+1, j][b, b']·V_j(b') };
    entry: V_{−1}(e) = min_j C[0, j] + Σ_b' T[0, j][e, b']·V_j(b') — it must start somewhere.

    Args:
        transitions: belief moves, K stages and B bins.
        pbar: (K, B) acceptance probability of each (stage, bin), see :func:`bin_values`.
        costs: (K+1, K) move costs, see :func:`cost_matrix` (unit: the deepest stage alone).
        lam: λ > 0, cost units per unit of quality loss.
        rule: moves and lookahead (:data:`DP`, :data:`SEQUENTIAL`, :data:`MYOPIC`, …).
        final_is_reference: the labels measure agreement with the last stage.

    Returns:
        The :class:`PolicyTable`.
    """
    lam = _positive("lam", lam)
    n_stages, n_bins = transitions.n_stages, transitions.n_bins
    stop = _stop_costs(pbar, lam, (n_stages, n_bins), final_is_reference)
    c = _checked_costs(costs, n_stages)
    value, action = _backward(transitions.probs, stop, c, rule)
    value.setflags(write=False)
    action.setflags(write=False)
    return PolicyTable(lam, value, action, rule, final_is_reference)


def policy_tables(
    transitions: Transitions,
    pbar: object,
    costs: object,
    lambdas: Iterable[float],
    *,
    rule: Rule = DP,
    final_is_reference: bool = True,
) -> dict[float, PolicyTable]:
    """One :func:`solve` per λ, keyed by λ."""
    return {
        float(lam): solve(
            transitions, pbar, costs, lam, rule=rule, final_is_reference=final_is_reference
        )
        for lam in lambdas
    }


def decide(table: PolicyTable, stage: int, belief: int) -> int:
    """The action after ``stage`` (ENTRY = −1: before any model) in belief bin ``belief``.

    Returns STOP or the index of the stage to run next.
    """
    n_rows, n_bins = table.action.shape
    if not ENTRY <= stage < n_rows - 1:
        raise StoppingError(f"'stage' must lie in [-1, {n_rows - 2}], got {stage!r}")
    if not 0 <= belief < n_bins:
        raise StoppingError(f"'belief' must lie in [0, {n_bins}), got {belief!r}")
    return int(table.action[stage + 1, belief])


def decide_per_input(
    transitions: Transitions,
    pbar: object,
    costs: object,
    lam: float,
    stage: int,
    belief: int,
    *,
    rule: Rule = DP,
    final_is_reference: bool = True,
) -> int:
    """:func:`decide` for one input with its own cost matrix (``cost_mode: per_input``).

    ``costs`` is (K+1, K), built from ĉ_j(n_in, predicted n_out) for this input. Solves only the
    rows from ``stage`` to the last; ~20–60 µs for K = 3, B = 20 (a table lookup is ~0.2 µs).
    """
    lam = _positive("lam", lam)
    n_stages, n_bins = transitions.n_stages, transitions.n_bins
    if not ENTRY <= stage < n_stages:
        raise StoppingError(f"'stage' must lie in [-1, {n_stages - 1}], got {stage!r}")
    if not 0 <= belief < n_bins:
        raise StoppingError(f"'belief' must lie in [0, {n_bins}), got {belief!r}")
    stop = _stop_costs(pbar, lam, (n_stages, n_bins), final_is_reference)
    c = _checked_costs(costs, n_stages)
    _, action = _backward(transitions.probs, stop, c, rule, down_to=stage)
    return int(action[stage + 1, belief])


# -- what a policy does on average --------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """A policy's expected behaviour over a distribution of entry beliefs (under the model)."""

    cost: float  # expected compute cost, in units of the deepest stage alone
    loss: float  # expected quality loss, probability that the returned output is not accepted
    depth: np.ndarray  # (K,) probability of returning each stage's output


def policy_outcome(
    table: PolicyTable,
    transitions: Transitions,
    pbar: object,
    costs: object,
    entry_probs: object,
) -> Outcome:
    """Push the entry belief distribution forward through the policy.

    A forward pass, independent of the backward recursion: cost + λ·loss equals
    entry_probs · value[0].

    Args:
        entry_probs: (B,) distribution of the entry bin (e.g. its frequency in training data).
    """
    n_stages, n_bins = transitions.n_stages, transitions.n_bins
    p = _probabilities("pbar", pbar)
    if p.shape != (n_stages, n_bins):
        raise StoppingError(f"'pbar' must have shape {(n_stages, n_bins)}, got {p.shape}")
    c = _checked_costs(costs, n_stages)
    if table.action.shape != (n_stages + 1, n_bins):
        raise StoppingError("'table' was solved for a different number of stages or bins")
    mass = np.zeros((n_stages + 1, n_bins))
    mass[0] = _probabilities("entry_probs", entry_probs)
    if mass[0].shape != (n_bins,) or not np.isclose(mass[0].sum(), 1.0):
        raise StoppingError(f"'entry_probs' must be a ({n_bins},) distribution summing to 1")
    loss_if_stop = 1.0 - p
    if table.final_is_reference:
        loss_if_stop[-1] = 0.0
    cost = loss = 0.0
    depth = np.zeros(n_stages)
    for r in range(n_stages + 1):  # moves only go deeper, so row r's mass is final here
        for b in range(n_bins):
            a = int(table.action[r, b])
            if a == STOP:
                depth[r - 1] += mass[r, b]
                loss += mass[r, b] * loss_if_stop[r - 1, b]
            else:
                cost += mass[r, b] * c[r, a]
                mass[a + 1] += mass[r, b] * transitions.probs[r, a, b]
    return Outcome(cost=float(cost), loss=float(loss), depth=depth)
