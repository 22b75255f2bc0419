"""Risk adjustment, beliefs and the stopping solver, checked against brute force on small instances."""

from __future__ import annotations

import itertools
import statistics
import time
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy import stats

from asd_core import stopping
from asd_core.errors import AsdError
from asd_core.stopping import DP, MYOPIC, SEQUENTIAL, STOP, Rule

TOL = 1e-9
RULES = [DP, SEQUENTIAL, Rule(skips=False), Rule(route=False), MYOPIC]

# -- random instances ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Instance:
    transitions: stopping.Transitions
    pbar: np.ndarray  # (K, B)
    costs: np.ndarray  # (K+1, K), NaN where there is no move
    final_is_reference: bool

    @property
    def shape(self) -> tuple[int, int]:
        return self.transitions.n_stages, self.transitions.n_bins


unit = st.floats(0.0, 1.0, allow_subnormal=False)


@st.composite
def instances(draw, max_stages: int = 3, max_bins: int = 4, max_p: float = 1.0) -> Instance:
    k = draw(st.integers(1, max_stages))
    b = draw(st.integers(1, max_bins))
    weights = draw(hnp.arrays(np.float64, (k + 1, k, b, b), elements=st.floats(0.01, 1.0)))
    probs = weights / weights.sum(axis=-1, keepdims=True)
    moves = stopping.valid_moves(k)
    probs[~moves] = np.nan
    pbar = draw(hnp.arrays(np.float64, (k, b), elements=st.floats(0.0, max_p)))
    costs = draw(hnp.arrays(np.float64, (k + 1, k), elements=st.floats(0.01, 2.0)))
    costs[~moves] = np.nan
    return Instance(stopping.Transitions(probs), pbar, costs, draw(st.booleans()))


lambdas = st.floats(0.01, 100.0)


def solve(inst: Instance, lam: float, rule: Rule = DP) -> stopping.PolicyTable:
    return stopping.solve(
        inst.transitions,
        inst.pbar,
        inst.costs,
        lam,
        rule=rule,
        final_is_reference=inst.final_is_reference,
    )


def outcome(inst: Instance, table: stopping.PolicyTable, entry: np.ndarray) -> stopping.Outcome:
    return stopping.policy_outcome(table, inst.transitions, inst.pbar, inst.costs, entry)


# -- brute force: written from the equations, sharing no code with the solver --------------------


def moves_of(n_stages: int, row: int, rule: Rule) -> list[int]:
    """Stages reachable from source row ``row`` (0 = entry, k+1 = stage k) under ``rule``."""
    if row == 0:
        return list(range(n_stages)) if rule.route else [0]
    if row == n_stages:
        return []
    return list(range(row, n_stages)) if rule.skips else [row]


def stop_value(inst: Instance, lam: float, stage: int, b: int) -> float:
    if inst.final_is_reference and stage == inst.shape[0] - 1:
        return 0.0
    return lam * (1.0 - float(inst.pbar[stage, b]))


def tree_options(inst: Instance, lam: float, rule: Rule, row: int, b: int) -> dict[int, float]:
    """Expectimax without memoisation: the value of every option at (row, b)."""
    options = {STOP: stop_value(inst, lam, row - 1, b)} if row > 0 else {}
    for j in moves_of(inst.shape[0], row, rule):
        expected = sum(
            float(inst.transitions.probs[row, j, b, b2]) * tree_value(inst, lam, rule, j + 1, b2)
            for b2 in range(inst.shape[1])
        )
        options[j] = float(inst.costs[row, j]) + expected
    return options


def tree_value(inst: Instance, lam: float, rule: Rule, row: int, b: int) -> float:
    return min(tree_options(inst, lam, rule, row, b).values())


def evaluate_policy(inst: Instance, lam: float, policy: dict[tuple[int, int], int]) -> np.ndarray:
    """Exact expected cost + λ·loss of a deterministic policy from every (row, bin)."""
    n_stages, n_bins = inst.shape
    value = np.zeros((n_stages + 1, n_bins))
    value[n_stages] = [stop_value(inst, lam, n_stages - 1, b) for b in range(n_bins)]
    for row in range(n_stages - 1, -1, -1):
        for b in range(n_bins):
            a = policy[row, b]
            if a == STOP:
                value[row, b] = stop_value(inst, lam, row - 1, b)
            else:
                value[row, b] = (
                    inst.costs[row, a] + inst.transitions.probs[row, a, b] @ value[a + 1]
                )
    return value


def all_policies(inst: Instance, rule: Rule):
    n_stages, n_bins = inst.shape
    states = [(row, b) for row in range(n_stages) for b in range(n_bins)]
    choices = [([STOP] if row > 0 else []) + moves_of(n_stages, row, rule) for row, _ in states]
    for combo in itertools.product(*choices):
        yield dict(zip(states, combo, strict=True))


# -- the solver against brute force --------------------------------------------------------------


@settings(max_examples=80, deadline=None)
@given(instances(), lambdas, st.sampled_from(RULES[:4]))
def test_solver_equals_tree_search(inst: Instance, lam: float, rule: Rule) -> None:
    table = solve(inst, lam, rule)
    n_stages, n_bins = inst.shape
    for row in range(n_stages + 1):
        for b in range(n_bins):
            options = tree_options(inst, lam, rule, row, b) if row < n_stages else {}
            best = min(options.values()) if options else stop_value(inst, lam, n_stages - 1, b)
            assert table.value[row, b] == pytest.approx(best, rel=TOL, abs=TOL)
            chosen = int(table.action[row, b])
            if row == n_stages:
                assert chosen == STOP
            else:  # the decision is one of the optimal options (ties may go either way)
                assert options[chosen] == pytest.approx(best, rel=TOL, abs=TOL)


@settings(max_examples=20, deadline=None)
@given(instances(max_bins=3), st.floats(0.05, 20.0), st.sampled_from([DP, SEQUENTIAL]))
def test_solver_equals_best_of_every_policy(inst: Instance, lam: float, rule: Rule) -> None:
    table = solve(inst, lam, rule)
    best = np.full(table.value.shape, np.inf)
    for policy in all_policies(inst, rule):
        best = np.minimum(best, evaluate_policy(inst, lam, policy))
    np.testing.assert_allclose(table.value, best, rtol=TOL, atol=TOL)
    solver_policy = {(r, b): int(table.action[r, b]) for r, b in np.ndindex(table.action.shape)}
    np.testing.assert_allclose(evaluate_policy(inst, lam, solver_policy), best, rtol=TOL, atol=TOL)


@settings(max_examples=60, deadline=None)
@given(instances(), lambdas)
def test_myopic_rule_looks_one_step_and_reports_its_true_value(inst: Instance, lam: float) -> None:
    table = solve(inst, lam, MYOPIC)
    n_stages, n_bins = inst.shape
    for row, b in itertools.product(range(n_stages), range(n_bins)):
        one_step = {STOP: stop_value(inst, lam, row - 1, b)} if row > 0 else {}
        for j in moves_of(n_stages, row, MYOPIC):
            stops = [stop_value(inst, lam, j, b2) for b2 in range(n_bins)]
            one_step[j] = inst.costs[row, j] + inst.transitions.probs[row, j, b] @ stops
        chosen = int(table.action[row, b])
        assert one_step[chosen] == pytest.approx(min(one_step.values()), rel=TOL, abs=TOL)
    policy = {(r, b): int(table.action[r, b]) for r, b in np.ndindex(table.action.shape)}
    np.testing.assert_allclose(table.value, evaluate_policy(inst, lam, policy), rtol=TOL)
    assert np.all(table.value >= solve(inst, lam, DP).value - TOL)  # DP is never worse


@settings(max_examples=60, deadline=None)
@given(instances(), lambdas, st.sampled_from(RULES), st.data())
def test_forward_outcome_agrees_with_backward_value(inst, lam, rule, data) -> None:
    n_bins = inst.shape[1]
    weights = data.draw(hnp.arrays(np.float64, n_bins, elements=st.floats(0.01, 1.0)))
    entry = weights / weights.sum()
    table = solve(inst, lam, rule)
    result = outcome(inst, table, entry)
    assert result.cost + lam * result.loss == pytest.approx(entry @ table.value[0], rel=TOL)
    assert result.depth.sum() == pytest.approx(1.0)


# -- limits and monotonicity in λ ---------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(instances(), st.sampled_from(RULES))
def test_tiny_lambda_stops_at_the_cheapest_stage(inst: Instance, rule: Rule) -> None:
    table = solve(inst, 1e-6 * np.nanmin(inst.costs), rule)
    entry = int(table.action[0, 0])
    reachable = moves_of(inst.shape[0], 0, rule)
    cheapest = min(inst.costs[0, j] for j in reachable)
    assert inst.costs[0, entry] == pytest.approx(cheapest, abs=1e-6)
    assert np.all(table.action[1:] == STOP)


def test_tiny_lambda_with_increasing_costs_runs_stage_zero_only() -> None:
    inst = realistic_instance(np.random.default_rng(0), n_stages=3, n_bins=5)
    table = solve(inst, 1e-6)
    assert np.all(table.action[0] == 0)
    assert np.all(table.action[1:] == STOP)


@settings(max_examples=60, deadline=None)
@given(instances(max_p=0.99), st.sampled_from(RULES[:4]))
def test_huge_lambda_always_ends_at_the_deepest_stage(inst: Instance, rule: Rule) -> None:
    inst = Instance(inst.transitions, inst.pbar, inst.costs, final_is_reference=True)
    table = solve(inst, 1e6 * np.nanmax(inst.costs) / 0.01, rule)
    n_stages, n_bins = inst.shape
    entry = np.full(n_bins, 1.0 / n_bins)
    np.testing.assert_allclose(outcome(inst, table, entry).depth[-1], 1.0)
    assert np.all(table.action[1:n_stages] != STOP)


@settings(max_examples=40, deadline=None)
@given(instances(), st.sampled_from(RULES[:4]))
def test_cost_rises_and_loss_falls_with_lambda(inst: Instance, rule: Rule) -> None:
    # For optimal policies at λ1 < λ2: c1 + λ1·l1 ≤ c2 + λ1·l2 and c2 + λ2·l2 ≤ c1 + λ2·l1, so
    # (λ2 − λ1)(l2 − l1) ≤ 0: loss cannot rise and cost cannot fall, whatever the ties.
    n_bins = inst.shape[1]
    entry = np.full(n_bins, 1.0 / n_bins)
    results = [outcome(inst, solve(inst, lam, rule), entry) for lam in np.geomspace(0.01, 1e3, 25)]
    costs = np.array([r.cost for r in results])
    losses = np.array([r.loss for r in results])
    assert np.all(np.diff(costs) >= -1e-9)
    assert np.all(np.diff(losses) <= 1e-9)


@settings(max_examples=40, deadline=None)
@given(instances(), st.sampled_from([SEQUENTIAL, Rule(skips=False, route=False, myopic=True)]))
def test_next_stage_rules_stop_less_as_lambda_grows(inst: Instance, rule: Rule) -> None:
    # Entering at stage 0 and moving only to the next stage, the stop region shrinks as λ grows,
    # so the depth reached rises on every path.
    n_stages, n_bins = inst.shape
    entry = np.full(n_bins, 1.0 / n_bins)
    tables = [solve(inst, lam, rule) for lam in np.geomspace(0.01, 1e3, 25)]
    for low, high in itertools.pairwise(tables):
        assert not np.any((high.action[1:] == STOP) & (low.action[1:] != STOP))
    depths = [outcome(inst, t, entry).depth @ np.arange(n_stages) for t in tables]
    assert np.all(np.diff(depths) >= -1e-9)


def test_expected_depth_can_fall_as_lambda_rises_when_routing() -> None:
    # Not a theorem with routing: here a larger λ buys a cheap draft first on good-looking inputs,
    # because the draft's own belief sharpens the choice of what follows; some then stop at it.
    probs = np.full((4, 3, 2, 2), np.nan)
    first = [0.4, 0.9], [0.1, 0.7], [0.2, 0.4], [0.1, 0.1], [0.4, 0.4], [0.3, 0.3]
    for (r, j), p in zip(
        zip(*np.nonzero(stopping.valid_moves(3)), strict=True), first, strict=True
    ):
        probs[r, j] = np.column_stack([p, 1.0 - np.array(p)])
    pbar = np.array([[0.0, 0.6], [0.6, 0.8], [1.0, 1.0]])
    costs = np.array([[0.2, 0.3, 1.0], [np.nan, 0.21, 0.56], [np.nan, np.nan, 0.88], [np.nan] * 3])
    inst = Instance(stopping.Transitions(probs), pbar, costs, final_is_reference=True)
    entry = np.array([0.5, 0.5])
    low, high = (outcome(inst, solve(inst, lam), entry) for lam in (0.8, 0.9))
    assert high.cost > low.cost and high.loss < low.loss
    assert high.depth @ np.arange(3) < low.depth @ np.arange(3)


# -- the ablations -------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(instances(), lambdas)
def test_sequential_cascade_never_skips(inst: Instance, lam: float) -> None:
    table = solve(inst, lam, SEQUENTIAL)
    n_stages = inst.shape[0]
    assert np.all(table.action[0] == 0)
    for row in range(1, n_stages + 1):
        assert set(table.action[row].tolist()) <= {STOP, row}


@settings(max_examples=60, deadline=None)
@given(instances(), lambdas)
def test_more_freedom_is_never_worse(inst: Instance, lam: float) -> None:
    full = solve(inst, lam, DP).value
    no_skips = solve(inst, lam, Rule(skips=False)).value
    no_route = solve(inst, lam, Rule(route=False)).value
    sequential = solve(inst, lam, SEQUENTIAL).value
    assert np.all(full <= no_skips + TOL)
    assert np.all(full <= no_route + TOL)
    assert np.all(no_skips <= sequential + TOL)
    assert np.all(no_route <= sequential + TOL)


# -- table lookups and per-input re-solves ------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(instances(), lambdas, st.sampled_from(RULES), st.data())
def test_per_input_decision_equals_full_solve(inst, lam, rule, data) -> None:
    n_stages, n_bins = inst.shape
    stage = data.draw(st.integers(-1, n_stages - 1))
    belief = data.draw(st.integers(0, n_bins - 1))
    table = solve(inst, lam, rule)
    fast = stopping.decide_per_input(
        inst.transitions,
        inst.pbar,
        inst.costs,
        lam,
        stage,
        belief,
        rule=rule,
        final_is_reference=inst.final_is_reference,
    )
    assert fast == stopping.decide(table, stage, belief) == table.action[stage + 1, belief]


def realistic_instance(rng: np.random.Generator, n_stages: int, n_bins: int) -> Instance:
    """Transitions counted from synthetic training data, costs increasing with depth."""
    p = rng.beta(2.0, 2.0, size=(2000, n_stages))
    entry = rng.beta(2.0, 2.0, size=2000)
    transitions = stopping.estimate_transitions(
        stopping.belief_bins(p, n_bins), stopping.belief_bins(entry, n_bins), n_bins
    )
    scratch = np.geomspace(0.1, 1.0, n_stages)
    escalate = np.triu(np.tile(0.8 * scratch, (n_stages, 1)), 1)
    costs = stopping.cost_matrix(scratch, escalate)
    return Instance(transitions, stopping.bin_values(p, n_bins), costs, True)


def test_per_input_resolve_is_fast() -> None:
    # Target 0.1 ms for K = 3, B = 20; asserted at 10× to stay quiet on a busy machine.
    inst = realistic_instance(np.random.default_rng(1), n_stages=3, n_bins=20)
    times = []
    for _ in range(300):
        start = time.perf_counter()
        stopping.decide_per_input(inst.transitions, inst.pbar, inst.costs, 2.0, -1, 7)
        times.append(time.perf_counter() - start)
    assert statistics.median(times) < 1e-3


def test_decide_looks_up_the_table() -> None:
    inst = realistic_instance(np.random.default_rng(2), n_stages=3, n_bins=4)
    tables = stopping.policy_tables(inst.transitions, inst.pbar, inst.costs, [0.5, 5.0])
    assert sorted(tables) == [0.5, 5.0]
    table = tables[5.0]
    assert stopping.decide(table, -1, 3) == table.action[0, 3]
    assert stopping.decide(table, 2, 0) == STOP
    with pytest.raises(AsdError, match="'stage'"):
        stopping.decide(table, 3, 0)
    with pytest.raises(AsdError, match="'belief'"):
        stopping.decide(table, 0, 4)


# -- risk adjustment ----------------------------------------------------------------------------


ensemble = st.tuples(unit, st.floats(0.0, 0.3), unit)  # (mean, var, prior mean)
prior_strength = st.one_of(st.just(0.0), st.floats(0.01, 50.0))  # α


@given(st.lists(ensemble, min_size=1, max_size=20), st.floats(1.0, 1e4))
def test_no_adjustment_at_alpha_zero_and_beta_half(rows, n_max) -> None:
    mean, var, prior = map(np.array, zip(*rows, strict=True))
    out = stopping.risk_adjust(mean, var, prior, alpha=0.0, beta=0.5, n_max=n_max)
    np.testing.assert_array_equal(out, mean)


@given(st.lists(ensemble, min_size=1, max_size=20), prior_strength, st.floats(0.01, 0.49))
def test_quantile_mode_is_more_pessimistic_than_the_mean(rows, alpha, beta) -> None:
    mean, var, prior = map(np.array, zip(*rows, strict=True))
    neutral = stopping.risk_adjust(mean, var, prior, alpha)
    averse = stopping.risk_adjust(mean, var, prior, alpha, beta=beta)
    assert np.all(averse <= neutral) and np.all((averse >= 0) & (averse <= 1))
    assert np.all(stopping.risk_adjust(mean, var, prior, alpha, beta=beta / 2) <= averse)
    # below the posterior mean the answer is exactly the posterior's β-quantile
    n = stopping.effective_sample_size(mean, var, 1000.0)
    a, b = n * mean + alpha * prior, n * (1 - mean) + alpha * (1 - prior)
    inner = (a > 0) & (b > 0)
    ppf = stats.beta.ppf(beta, a[inner], b[inner])
    below = ppf < neutral[inner]
    np.testing.assert_allclose(averse[inner][below], ppf[below], rtol=1e-9, atol=1e-12)
    # and it is strictly lower whenever the mean lies above the β-quantile by a visible margin
    # near 0 or 1 the posterior is a point mass to float precision and its quantiles equal the mean
    visible = (neutral[inner] > 1e-9) & (neutral[inner] < 1 - 1e-9)
    strict = visible & (stats.beta.cdf(neutral[inner], a[inner], b[inner]) > beta + 1e-6)
    assert np.all(averse[inner][strict] < neutral[inner][strict])


@given(st.lists(ensemble, min_size=1, max_size=20), prior_strength)
def test_posterior_mean_shrinks_towards_the_prior(rows, alpha) -> None:
    mean, var, prior = map(np.array, zip(*rows, strict=True))
    out = stopping.risk_adjust(mean, var, prior, alpha)
    assert np.all(np.abs(out - prior) <= np.abs(mean - prior) + 1e-12)
    assert np.all(
        (np.minimum(mean, prior) - 1e-12 <= out) & (out <= np.maximum(mean, prior) + 1e-12)
    )


def test_risk_adjust_numbers_and_edge_cases() -> None:
    # m = 0.8, v = 0.01: n = 0.16/0.01 − 1 = 15; α = 5, μ = 0.5: (12 + 2.5)/20
    assert stopping.risk_adjust(0.8, 0.01, 0.5, 5.0) == pytest.approx(14.5 / 20)
    mean = np.array([0.0, 1.0, 0.0, 1.0, 0.3, 0.7])
    var = np.array([0.0, 0.0, 0.2, 0.2, 0.0, 0.5])
    for alpha, beta in [(0.0, 0.5), (0.0, 0.1), (3.0, 0.1), (3.0, 0.5)]:
        out = stopping.risk_adjust(mean, var, 0.6, alpha, beta)
        assert np.all(np.isfinite(out)) and np.all((out >= 0) & (out <= 1))
    # zero-parameter posteriors are point masses; v = 0 means n = n_max
    np.testing.assert_array_equal(stopping.risk_adjust([0.0, 1.0], 0.0, 0.5, 0.0, 0.1), [0, 1])
    assert stopping.risk_adjust(0.3, 0.0, 0.9, 10.0, n_max=90.0) == pytest.approx((27 + 9) / 100)
    # broadcasting a per-stage prior over a batch
    assert stopping.risk_adjust(np.full((4, 3), 0.5), 0.01, [0.2, 0.5, 0.9], 2.0).shape == (4, 3)


# -- beliefs and transitions --------------------------------------------------------------------


def test_belief_bins_and_bin_values() -> None:
    np.testing.assert_array_equal(
        stopping.belief_bins([0.0, 0.049, 0.05, 0.5, 0.999, 1.0], 20), [0, 0, 1, 10, 19, 19]
    )
    p = np.array([[0.1, 0.9], [0.2, 0.95], [0.3, 1.0]])
    values = stopping.bin_values(p, n_bins=4)
    np.testing.assert_allclose(values[0], [0.15, 0.3, 0.625, 0.875])  # bins 2, 3 empty → centres
    np.testing.assert_allclose(values[1], [0.125, 0.375, 0.625, 0.95])


def test_estimate_transitions_counts_every_deeper_stage_with_add_one() -> None:
    stage_bins = np.array([[0, 1, 1], [0, 1, 0], [1, 0, 1]])
    entry_bins = np.array([1, 1, 0])
    t = stopping.estimate_transitions(stage_bins, entry_bins, n_bins=2)
    assert t.probs.shape == (4, 3, 2, 2) and (t.n_stages, t.n_bins) == (3, 2)
    assert np.all(np.isnan(t.probs[~stopping.valid_moves(3)]))
    # stage 0 → stage 2 (a skip): from bin 0, one input to bin 1 and one to bin 0
    np.testing.assert_array_equal(t.counts[1, 2], [[1, 1], [0, 1]])
    np.testing.assert_allclose(t.probs[1, 2], [[2 / 4, 2 / 4], [1 / 3, 2 / 3]])
    # entry → stage 1: entry bin 1 reached stage-1 bin 1 twice; entry bin 0 reached bin 0 once
    np.testing.assert_allclose(t.probs[0, 1], [[2 / 3, 1 / 3], [1 / 4, 3 / 4]])
    assert t.counts[stopping.valid_moves(3)].sum() == 6 * 3
    np.testing.assert_allclose(t.probs[stopping.valid_moves(3)].sum(axis=-1), 1.0)


def test_cost_matrix_normalises_to_the_deepest_stage() -> None:
    costs = stopping.cost_matrix([0.5, 1.0, 2.0], [[9, 0.6, 1.6], [9, 9, 1.2], [9, 9, 9]])
    np.testing.assert_allclose(costs[0], [0.25, 0.5, 1.0])
    np.testing.assert_allclose(costs[1:][np.triu_indices(3, 1)], [0.3, 0.8, 0.6])
    assert np.all(np.isnan(costs[~stopping.valid_moves(3)]))


# -- bad input ----------------------------------------------------------------------------------


def _good():
    return realistic_instance(np.random.default_rng(3), n_stages=3, n_bins=4)


BAD_CALLS = {
    "lam zero": (lambda i: stopping.solve(i.transitions, i.pbar, i.costs, 0.0), "'lam'"),
    "lam negative": (lambda i: stopping.solve(i.transitions, i.pbar, i.costs, -1.0), "'lam'"),
    "lam nan": (lambda i: stopping.solve(i.transitions, i.pbar, i.costs, float("nan")), "'lam'"),
    "lambdas": (
        lambda i: stopping.policy_tables(i.transitions, i.pbar, i.costs, [1.0, -2.0]),
        "'lam'",
    ),
    "per-input lam": (
        lambda i: stopping.decide_per_input(i.transitions, i.pbar, i.costs, 0.0, 0, 0),
        "'lam'",
    ),
    "pbar above 1": (
        lambda i: stopping.solve(i.transitions, i.pbar + 1.0, i.costs, 1.0),
        "'pbar'",
    ),
    "pbar shape": (lambda i: stopping.solve(i.transitions, i.pbar[:2], i.costs, 1.0), "'pbar'"),
    "costs shape": (lambda i: stopping.solve(i.transitions, i.pbar, i.costs[:3], 1.0), "'costs'"),
    "costs negative": (
        lambda i: stopping.solve(i.transitions, i.pbar, np.nan_to_num(i.costs) - 5, 1.0),
        "'costs'",
    ),
    "transitions shape": (
        lambda i: stopping.Transitions(np.ones((3, 3, 2, 2)) / 2),
        "'transitions'",
    ),
    "transitions not stochastic": (
        lambda i: stopping.Transitions(np.nan_to_num(i.transitions.probs) * 0.5),
        "'transitions'",
    ),
    "transitions negative": (
        lambda i: stopping.Transitions(-np.nan_to_num(i.transitions.probs)),
        "'transitions'",
    ),
    "mean above 1": (lambda i: stopping.risk_adjust(1.5, 0.01, 0.5, 1.0), "'mean'"),
    "mean nan": (lambda i: stopping.risk_adjust(float("nan"), 0.01, 0.5, 1.0), "'mean'"),
    "prior below 0": (lambda i: stopping.risk_adjust(0.5, 0.01, -0.1, 1.0), "'prior_mean'"),
    "var negative": (lambda i: stopping.risk_adjust(0.5, -0.01, 0.5, 1.0), "'var'"),
    "alpha negative": (lambda i: stopping.risk_adjust(0.5, 0.01, 0.5, -1.0), "'alpha'"),
    "beta above half": (lambda i: stopping.risk_adjust(0.5, 0.01, 0.5, 1.0, 0.9), "'beta'"),
    "beta zero": (lambda i: stopping.risk_adjust(0.5, 0.01, 0.5, 1.0, 0.0), "'beta'"),
    "n_max below 1": (lambda i: stopping.risk_adjust(0.5, 0.01, 0.5, 1.0, n_max=0.5), "'n_max'"),
    "p outside": (lambda i: stopping.belief_bins([0.2, 1.2]), "'p'"),
    "n_bins zero": (lambda i: stopping.belief_bins([0.2], 0), "'n_bins'"),
    "p_tilde 1-d": (lambda i: stopping.bin_values([0.2, 0.3]), "'p_tilde'"),
    "entry shape": (
        lambda i: stopping.estimate_transitions([[0, 1], [1, 1]], [0], n_bins=2),
        "'entry_bins'",
    ),
    "bins out of range": (
        lambda i: stopping.estimate_transitions([[0, 2]], [0], n_bins=2),
        "'stage_bins'",
    ),
    "empty data": (
        lambda i: stopping.estimate_transitions(np.zeros((0, 2), int), [], n_bins=2),
        "empty",
    ),
    "escalate shape": (lambda i: stopping.cost_matrix([0.1, 1.0], [[0, 1]]), "'escalate_s'"),
    "entry probs": (
        lambda i: stopping.policy_outcome(
            stopping.solve(i.transitions, i.pbar, i.costs, 1.0),
            i.transitions,
            i.pbar,
            i.costs,
            [0.5, 0.5, 0.5, 0.5],
        ),
        "'entry_probs'",
    ),
}


@pytest.mark.parametrize("name", sorted(BAD_CALLS))
def test_bad_input_raises_one_line(name: str) -> None:
    call, key = BAD_CALLS[name]
    with pytest.raises(AsdError) as err:
        call(_good())
    message = str(err.value)
    assert key in message and "\n" not in message
