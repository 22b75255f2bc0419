"""The dynamic-programming stopping policy over belief states (docs/design.md, "The policy").

Pure numpy. The belief states themselves — risk-adjusted predictions p̃, their quantile bins,
bin values p̄, belief moves and move costs — come from :mod:`asd_core.ground.belief`. Here:

1. :func:`solve` runs the backward recursion once per λ into a :class:`PolicyTable`; online,
   :func:`decide` is a table lookup, and :func:`decide_per_input` re-solves for one input's
   own costs (``cost_mode: per_input``).
2. :func:`entry_outcomes` and :func:`entry_values` choose where an input starts.

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

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from asd_core.ground.belief import (
    DIRECT,
    N_VIEWS,
    SEQUENTIAL,
    BeliefModel,
    Costs,
    StoppingError,
    checked_positive,
    checked_probabilities,
)

STOP = -1  # action: return this stage's output
ENTRY = -1  # the stage index of the entry decision (before any model runs)


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
    lam = checked_positive("lam", lam)
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
    lam = checked_positive("lam", lam)
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
        head = checked_probabilities("head", self.head)
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
    lam = checked_positive("lam", lam)
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
    first = checked_probabilities("start", start)
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
