"""Risk adjustment, beliefs and the stopping solver, checked against brute force on small instances."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from asd_core.ground import belief, lambda_search, stopping
from asd_core.ground.belief import DIRECT, SEQUENTIAL
from asd_core.ground.errors import AsdError
from asd_core.ground.stopping import DP, MYOPIC, NO_RESTART, SEQUENTIAL_RULE, STOP, Rule

TOL = 1e-9
RULES = [DP, SEQUENTIAL_RULE, Rule(skips=False), Rule(route=False), NO_RESTART, MYOPIC]
VIEWS = (DIRECT, SEQUENTIAL)

# -- random instances ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Instance:
    beliefs: belief.BeliefModel
    costs: belief.Costs
    final_is_reference: bool

    @property
    def shape(self) -> tuple[int, int]:
        return self.beliefs.n_stages, self.beliefs.n_bins


unit = st.floats(0.0, 1.0, allow_subnormal=False)


def _stochastic(draw, shape: tuple[int, ...]) -> np.ndarray:
    weights = draw(hnp.arrays(np.float64, shape, elements=st.floats(0.01, 1.0)))
    return weights / weights.sum(axis=-1, keepdims=True)


@st.composite
def instances(draw, max_stages: int = 3, max_bins: int = 3, max_p: float = 1.0) -> Instance:
    k = draw(st.integers(1, max_stages))
    b = draw(st.integers(1, max_bins))
    moves = _stochastic(draw, (k, 2, k, 2, b, b))
    for src, dst in itertools.product(range(k), repeat=2):
        if dst <= src:
            moves[src, :, dst] = np.nan
    pbar = draw(hnp.arrays(np.float64, (k, 2, b), elements=st.floats(0.0, max_p)))
    edges = np.tile(np.linspace(0, 1, b + 1)[1:-1], (k, 2, 1))
    beliefs = belief.BeliefModel(edges, pbar, moves)
    scratch = draw(hnp.arrays(np.float64, k, elements=st.floats(0.01, 2.0)))
    resume = draw(hnp.arrays(np.float64, (k, 2, k, b), elements=st.floats(0.01, 2.0)))
    for src, dst in itertools.product(range(k), repeat=2):
        if dst <= src:
            resume[src, :, dst] = np.nan
    return Instance(beliefs, belief.Costs(scratch, resume), draw(st.booleans()))


lambdas = st.floats(0.01, 100.0)


def solve(inst: Instance, lam: float, rule: Rule = DP) -> stopping.PolicyTable:
    return stopping.solve(
        inst.beliefs, inst.costs, lam, rule=rule, final_is_reference=inst.final_is_reference
    )


# -- brute force: written from the equations, sharing no code with the solver --------------------


def moves_of(inst: Instance, stage: int, rule: Rule) -> list[tuple[int, bool]]:
    """(target, restart) moves from ``stage`` under ``rule``."""
    n_stages = inst.shape[0]
    last = n_stages if rule.skips else min(stage + 2, n_stages)
    out = []
    for j in range(stage + 1, last):
        out.append((j, False))
        if rule.restart:
            out.append((j, True))
    return out


def landing(stage: int, target: int, restart: bool) -> int:
    return SEQUENTIAL if target == stage + 1 and not restart else DIRECT


def stop_value(inst: Instance, lam: float, stage: int, view: int, b: int) -> float:
    if inst.final_is_reference and stage == inst.shape[0] - 1:
        return 0.0
    return lam * (1.0 - float(inst.beliefs.pbar[stage, view, b]))


def move_cost(inst: Instance, stage: int, view: int, b: int, target: int, restart: bool) -> float:
    if restart:
        return float(inst.costs.scratch[target])
    return float(inst.costs.resume[stage, view, target, b])


def tree_options(inst, lam, rule, stage, view, b) -> dict[tuple[int, bool], float]:
    """Expectimax without memoisation: the value of every option at (stage, view, b)."""
    options = {(STOP, False): stop_value(inst, lam, stage, view, b)}
    for j, fresh in moves_of(inst, stage, rule):
        w = landing(stage, j, fresh)
        row = inst.beliefs.moves[stage, view, j, w, b]
        expected = sum(
            float(row[b2]) * tree_value(inst, lam, rule, j, w, b2) for b2 in range(inst.shape[1])
        )
        options[j, fresh] = move_cost(inst, stage, view, b, j, fresh) + expected
    return options


def tree_value(inst, lam, rule, stage, view, b) -> float:
    return min(tree_options(inst, lam, rule, stage, view, b).values())


def evaluate_policy(inst: Instance, lam: float, policy: dict) -> np.ndarray:
    """Exact expected cost + λ·loss of a deterministic policy from every state (K, 2, B)."""
    n_stages, n_bins = inst.shape
    value = np.zeros((n_stages, 2, n_bins))
    for stage in range(n_stages - 1, -1, -1):
        for view, b in itertools.product(VIEWS, range(n_bins)):
            j, fresh = policy.get((stage, view, b), (STOP, False))
            if j == STOP:
                value[stage, view, b] = stop_value(inst, lam, stage, view, b)
                continue
            w = landing(stage, j, fresh)
            value[stage, view, b] = (
                move_cost(inst, stage, view, b, j, fresh)
                + inst.beliefs.moves[stage, view, j, w, b] @ value[j, w]
            )
    return value


def all_policies(inst: Instance, rule: Rule):
    n_stages, n_bins = inst.shape
    states = [(k, v, b) for k in range(n_stages - 1) for v in VIEWS for b in range(n_bins)]
    choices = [[(STOP, False), *moves_of(inst, k, rule)] for k, _, _ in states]
    for combo in itertools.product(*choices):
        yield dict(zip(states, combo, strict=True))


def table_policy(table: stopping.PolicyTable) -> dict:
    return {
        (k, v, b): (int(table.action[k, v, b]), bool(table.restart[k, v, b]))
        for k, v, b in np.ndindex(table.action.shape)
    }


# -- the solver against brute force --------------------------------------------------------------


@settings(max_examples=80, deadline=None)
@given(instances(), lambdas, st.sampled_from(RULES[:5]))
def test_solver_equals_tree_search(inst: Instance, lam: float, rule: Rule) -> None:
    table = solve(inst, lam, rule)
    n_stages, n_bins = inst.shape
    for k, v, b in itertools.product(range(n_stages), VIEWS, range(n_bins)):
        options = tree_options(inst, lam, rule, k, v, b)
        best = min(options.values())
        assert table.value[k, v, b] == pytest.approx(best, rel=TOL, abs=TOL)
        chosen = (int(table.action[k, v, b]), bool(table.restart[k, v, b]))
        if k == n_stages - 1:
            assert chosen == (STOP, False)
        else:  # the decision is one of the optimal options (ties may go either way)
            assert options[chosen] == pytest.approx(best, rel=TOL, abs=TOL)


@settings(max_examples=20, deadline=None)
@given(instances(max_stages=2, max_bins=2), st.floats(0.05, 20.0), st.sampled_from(RULES[:5]))
def test_solver_equals_best_of_every_policy(inst: Instance, lam: float, rule: Rule) -> None:
    table = solve(inst, lam, rule)
    best = np.full(table.value.shape, np.inf)
    for policy in all_policies(inst, rule):
        best = np.minimum(best, evaluate_policy(inst, lam, policy))
    np.testing.assert_allclose(table.value, best, rtol=TOL, atol=TOL)
    np.testing.assert_allclose(
        evaluate_policy(inst, lam, table_policy(table)), best, rtol=TOL, atol=TOL
    )


@settings(max_examples=60, deadline=None)
@given(instances(), lambdas)
def test_myopic_rule_looks_one_step_and_reports_its_true_value(inst: Instance, lam: float) -> None:
    table = solve(inst, lam, MYOPIC)
    n_stages, n_bins = inst.shape
    for k, v, b in itertools.product(range(n_stages - 1), VIEWS, range(n_bins)):
        one_step = {(STOP, False): stop_value(inst, lam, k, v, b)}
        for j, fresh in moves_of(inst, k, MYOPIC):
            w = landing(k, j, fresh)
            stops = [stop_value(inst, lam, j, w, b2) for b2 in range(n_bins)]
            one_step[j, fresh] = (
                move_cost(inst, k, v, b, j, fresh) + inst.beliefs.moves[k, v, j, w, b] @ stops
            )
        chosen = (int(table.action[k, v, b]), bool(table.restart[k, v, b]))
        assert one_step[chosen] == pytest.approx(min(one_step.values()), rel=TOL, abs=TOL)
    np.testing.assert_allclose(
        table.value, evaluate_policy(inst, lam, table_policy(table)), rtol=TOL, atol=TOL
    )
    assert np.all(table.value >= solve(inst, lam, DP).value - TOL)  # DP is never worse


def starts(draw_data, inst: Instance) -> np.ndarray:
    weights = draw_data.draw(hnp.arrays(np.float64, inst.shape, elements=st.floats(0.01, 1.0)))
    return weights / weights.sum()


@settings(max_examples=60, deadline=None)
@given(instances(), lambdas, st.sampled_from(RULES[:5]), st.data())
def test_forward_outcome_agrees_with_backward_value(inst, lam, rule, data) -> None:
    start = starts(data, inst)
    table = solve(inst, lam, rule)
    result = stopping.policy_outcome(table, inst.beliefs, inst.costs, start)
    expected = float((start * table.value[:, DIRECT]).sum())
    assert result.cost + lam * result.loss == pytest.approx(expected, rel=TOL, abs=TOL)
    assert result.depth.sum() == pytest.approx(1.0)


# -- limits and monotonicity in λ ---------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(instances(), st.sampled_from(RULES))
def test_tiny_lambda_always_stops(inst: Instance, rule: Rule) -> None:
    resume = inst.costs.resume[np.isfinite(inst.costs.resume)]
    table = solve(inst, 1e-7 * np.concatenate([inst.costs.scratch, resume]).min(), rule)
    assert np.all(table.action == STOP)


@settings(max_examples=60, deadline=None)
@given(instances(max_p=0.99), st.sampled_from(RULES[:5]), st.data())
def test_huge_lambda_always_ends_at_the_deepest_stage(inst: Instance, rule: Rule, data) -> None:
    inst = Instance(inst.beliefs, inst.costs, final_is_reference=True)
    table = solve(inst, 1e8, rule)
    result = stopping.policy_outcome(table, inst.beliefs, inst.costs, starts(data, inst))
    np.testing.assert_allclose(result.depth[-1], 1.0)
    assert np.all(table.action[: inst.shape[0] - 1] != STOP)


@settings(max_examples=40, deadline=None)
@given(instances(), st.sampled_from(RULES[:5]), st.data())
def test_cost_rises_and_loss_falls_with_lambda(inst: Instance, rule: Rule, data) -> None:
    # For optimal policies at λ1 < λ2: c1 + λ1·l1 ≤ c2 + λ1·l2 and c2 + λ2·l2 ≤ c1 + λ2·l1, so
    # (λ2 − λ1)(l2 − l1) ≤ 0: loss cannot rise and cost cannot fall, whatever the ties.
    start = starts(data, inst)
    results = [
        stopping.policy_outcome(solve(inst, lam, rule), inst.beliefs, inst.costs, start)
        for lam in np.geomspace(0.01, 1e3, 25)
    ]
    costs = np.array([r.cost for r in results])
    losses = np.array([r.loss for r in results])
    assert np.all(np.diff(costs) >= -1e-9)
    assert np.all(np.diff(losses) <= 1e-9)


# -- the ablations -------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(instances(), lambdas)
def test_sequential_cascade_never_skips_routes_or_restarts(inst: Instance, lam: float) -> None:
    table = solve(inst, lam, SEQUENTIAL_RULE)
    for k in range(inst.shape[0]):
        assert set(table.action[k].ravel().tolist()) <= {STOP, k + 1}
    assert not table.restart.any()
    assert not solve(inst, lam, NO_RESTART).restart.any()


@settings(max_examples=60, deadline=None)
@given(instances(), lambdas)
def test_more_freedom_is_never_worse(inst: Instance, lam: float) -> None:
    full = solve(inst, lam, DP)
    weaker = [solve(inst, lam, r) for r in (Rule(skips=False), Rule(route=False), NO_RESTART)]
    sequential = solve(inst, lam, SEQUENTIAL_RULE)
    for table in weaker:
        assert np.all(full.value <= table.value + TOL)
        assert np.all(table.value <= sequential.value + TOL)


@settings(max_examples=40, deadline=None)
@given(instances(), lambdas)
def test_restart_is_taken_only_when_it_pays(inst: Instance, lam: float) -> None:
    table = solve(inst, lam, DP)
    n_stages, n_bins = inst.shape
    for k, v, b in itertools.product(range(n_stages - 1), VIEWS, range(n_bins)):
        if table.restart[k, v, b]:
            options = tree_options(inst, lam, DP, k, v, b)
            j = int(table.action[k, v, b])
            assert options[j, True] <= options[j, False] + TOL


def test_restart_wins_when_continuing_costs_more_than_scratch() -> None:
    # one bin, two stages: continuing y_0 costs 1.3 of stage 1 alone, restarting 1.0
    moves = np.full((2, 2, 2, 2, 1, 1), np.nan)
    moves[0, :, 1, :] = 1.0
    beliefs = belief.BeliefModel(
        np.zeros((2, 2, 0)), np.array([[[0.0], [0.0]], [[1.0], [1.0]]]), moves
    )
    resume = np.full((2, 2, 2, 1), np.nan)
    resume[0, :, 1] = 1.3
    costs = belief.Costs(np.array([0.2, 1.0]), resume)
    table = stopping.solve(beliefs, costs, lam=5.0)
    assert stopping.decide(table, 0, DIRECT, 0) == (1, True)
    cheap = belief.Costs(np.array([0.2, 1.0]), np.where(np.isnan(resume), np.nan, 0.4))
    assert stopping.decide(stopping.solve(beliefs, cheap, lam=5.0), 0, DIRECT, 0) == (1, False)


# -- table lookups and per-input re-solves ------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(instances(), lambdas, st.sampled_from(RULES), st.data())
def test_per_input_decision_equals_full_solve(inst, lam, rule, data) -> None:
    n_stages, n_bins = inst.shape
    stage = data.draw(st.integers(0, n_stages - 1))
    view = data.draw(st.sampled_from(VIEWS))
    belief = data.draw(st.integers(0, n_bins - 1))
    table = solve(inst, lam, rule)
    kw = {"rule": rule, "final_is_reference": inst.final_is_reference}
    fast = stopping.decide_per_input(inst.beliefs, inst.costs, lam, stage, view, belief, **kw)
    assert fast == stopping.decide(table, stage, view, belief)


def synthetic(rng: np.random.Generator, n: int, n_stages: int) -> dict[str, np.ndarray]:
    """Beliefs of n inputs that carry signal about labels and about each other."""
    skill = rng.normal(size=(n, 1))
    direct = 1 / (1 + np.exp(-(skill + rng.normal(size=(n, n_stages)) + np.arange(n_stages))))
    sequential = np.clip(direct + rng.normal(0, 0.05, size=direct.shape), 0, 1)
    sequential[:, 0] = direct[:, 0]
    labels = (rng.random((n, n_stages)) < sequential).astype(float)
    labels[:, -1] = 1.0
    return {"sequential": sequential, "direct": direct, "labels": labels}


def realistic_instance(rng: np.random.Generator, n_stages: int, n_bins: int) -> Instance:
    """Beliefs counted from synthetic held-out data, costs increasing with depth."""
    data = synthetic(rng, 2000, n_stages)
    beliefs = belief.estimate_beliefs(**data, n_bins=n_bins)
    scratch = np.geomspace(0.1, 1.0, n_stages)
    escalate = np.triu(np.tile(0.8 * scratch, (n_stages, 1)), 1)
    return Instance(beliefs, belief.flat_costs(scratch, escalate, n_bins), True)


def test_decide_looks_up_the_table() -> None:
    inst = realistic_instance(np.random.default_rng(2), n_stages=3, n_bins=4)
    tables = stopping.policy_tables(inst.beliefs, inst.costs, [0.5, 5.0])
    assert sorted(tables) == [0.5, 5.0]
    table = tables[5.0]
    assert stopping.decide(table, 0, DIRECT, 3) == (table.action[0, 0, 3], table.restart[0, 0, 3])
    assert stopping.decide(table, 2, SEQUENTIAL, 0) == (STOP, False)
    with pytest.raises(AsdError, match="'stage'"):
        stopping.decide(table, 3, DIRECT, 0)
    with pytest.raises(AsdError, match="'belief'"):
        stopping.decide(table, 0, DIRECT, 4)
    with pytest.raises(AsdError, match="'view'"):
        stopping.decide(table, 0, 2, 0)


def entry_world(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """Stage 0 never acceptable, stage 1 for half the inputs, stage 2 always; only the head's
    prediction for stage 1 tells the halves apart before anything runs."""
    good_at_1 = rng.random(n) < 0.5
    labels = np.column_stack([np.zeros(n), good_at_1, np.ones(n)]).astype(float)
    noise = rng.normal(0, 0.05, size=(n, 3))
    p = np.clip(labels * 0.8 + 0.1 + noise, 0, 1)
    head = p.copy()
    head[:, 0] = np.clip(0.3 + noise[:, 0], 0, 1)  # stage 0's head is uninformative
    return {"labels": labels, "p": p, "head": head, "good_at_1": good_at_1}


def held_out_of(world: dict, beliefs: belief.BeliefModel, scratch, resume) -> stopping.HeldOut:
    n = len(world["labels"])
    bins = np.stack([beliefs.bins(world["p"], v) for v in VIEWS])
    return stopping.HeldOut(
        head=world["head"],
        bins=bins,
        labels=world["labels"],
        scratch=np.tile(scratch, (n, 1)),
        resume=np.tile(resume, (n, 1, 1)),
    )


def test_informed_entry_routes_by_each_stages_own_prediction() -> None:
    # At a middling λ the inputs stage 1 can answer go there and the rest straight to stage 2:
    # a choice that needs the head's stage-1 prediction, which the Markov state after entering
    # stage 0 would have forgotten.
    rng = np.random.default_rng(5)
    world = entry_world(rng, 2000)
    beliefs = belief.estimate_beliefs(world["p"], world["p"], world["labels"], n_bins=4)
    scratch, resume = np.array([0.1, 0.3, 1.0]), np.full((3, 3), 0.95)
    costs = belief.flat_costs(scratch, resume, 4)
    held = held_out_of(world, beliefs, scratch, resume)
    table = stopping.solve(beliefs, costs, lam=2.0)
    cost, loss = stopping.entry_outcomes(table, held)
    queries = entry_world(np.random.default_rng(6), 500)
    neighbours = stopping.nearest(held.head, queries["head"], 25)
    chosen = stopping.decide_entries(stopping.entry_values(cost, loss, 2.0, neighbours))
    good = queries["good_at_1"]
    assert np.mean(chosen[good] == 1) > 0.95
    assert np.mean(chosen[~good] == 2) > 0.95
    # without routing every input starts at stage 0
    barred = stopping.entry_values(cost, loss, 2.0, neighbours, route=False)
    assert np.all(stopping.decide_entries(barred) == 0)


def test_entry_outcomes_walk_each_inputs_own_record() -> None:
    # two stages, one bin: the table continues 0 → 1 from the direct view, so entering at 0
    # costs scratch_0 + resume_01 and returns stage 1's output
    moves = np.full((2, 2, 2, 2, 1, 1), np.nan)
    moves[0, :, 1, :] = 1.0
    beliefs = belief.BeliefModel(np.zeros((2, 2, 0)), np.full((2, 2, 1), 0.5), moves)
    resume = np.full((2, 2, 2, 1), np.nan)
    resume[0, :, 1] = 0.1
    table = stopping.solve(beliefs, belief.Costs(np.array([0.2, 1.0]), resume), lam=10.0)
    assert stopping.decide(table, 0, DIRECT, 0) == (1, False)
    held = stopping.HeldOut(
        head=np.array([[0.5, 0.5], [0.1, 0.9]]),
        bins=np.zeros((2, 2, 2), np.intp),
        labels=np.array([[0.0, 1.0], [1.0, 1.0]]),
        scratch=np.array([[0.2, 1.0], [0.3, 2.0]]),
        resume=np.array([[[np.nan, 0.1], [np.nan, np.nan]], [[np.nan, 0.4], [np.nan, np.nan]]]),
    )
    cost, loss = stopping.entry_outcomes(table, held)
    np.testing.assert_allclose(cost, [[0.3, 1.0], [0.7, 2.0]])
    np.testing.assert_allclose(loss, 0.0)  # stage 1 is the reference
    cost, loss = stopping.entry_outcomes(table, held, follow=False)
    np.testing.assert_allclose(cost, held.scratch)
    np.testing.assert_allclose(loss, [[1.0, 0.0], [0.0, 0.0]])
    values = stopping.entry_values(cost, loss, 10.0, np.array([[0], [1], [0]]))
    np.testing.assert_allclose(values, [[10.2, 1.0], [0.3, 2.0], [10.2, 1.0]])
    assert stopping.decide_entries(values).tolist() == [1, 0, 1]
    np.testing.assert_array_equal(
        np.sort(stopping.nearest(held.head, [[0.45, 0.5], [0.0, 1.0]], 5), axis=1), [[0, 1], [0, 1]]
    )
    assert stopping.nearest(held.head, [[0.45, 0.5], [0.0, 1.0]], 1).ravel().tolist() == [0, 1]
    # within a task first: the query near point 0 but of point 1's task gets point 1
    same = stopping.nearest(held.head, [[0.45, 0.5]], 1, ["a", "b"], ["b"])
    assert same.ravel().tolist() == [1]
    # one table per task: a task without its own uses the "" table
    tasks = stopping.HeldOut(**{**held.__dict__, "tasks": np.array(["a", "z"])})
    per_task = stopping.entry_outcomes({"": table, "a": table}, tasks)
    np.testing.assert_allclose(per_task[0], stopping.entry_outcomes(table, held)[0])


# -- beliefs, bins and costs --------------------------------------------------------------------


def test_quantile_edges_split_evenly_and_merge_ties() -> None:
    p = np.linspace(0.0, 1.0, 101)
    edges = belief.quantile_edges(p, 4)
    np.testing.assert_allclose(edges, [0.25, 0.5, 0.75])
    np.testing.assert_array_equal(np.bincount(belief.to_bins(p, edges)), [25, 25, 25, 26])
    tied = np.array([0.2] * 8 + [0.9, 0.95])
    edges = belief.quantile_edges(tied, 5)
    assert np.isinf(edges).sum() >= 2  # ties cannot be split: fewer real bins
    bins = belief.to_bins(tied, edges)
    assert bins[:8].tolist() == [0] * 8 and len(set(bins)) == len(edges[np.isfinite(edges)]) + 1
    assert np.all(belief.quantile_edges(np.full(5, 0.4), 3) == np.inf)


def test_estimate_beliefs_counts_on_held_out_rows_and_smooths_to_the_marginal() -> None:
    rng = np.random.default_rng(3)
    data = synthetic(rng, 3000, 3)
    raw = belief.estimate_beliefs(**data, n_bins=5, smoothing=0.0)
    # bin values are the labels' rates per bin: rising with the belief
    for k in range(2):
        for v in VIEWS:
            rates = raw.pbar[k, v]
            assert np.all(np.diff(rates) > -0.05) and rates[-1] > rates[0] + 0.2
            assert raw.counts[k, v].sum() == 3000
    bins = raw.bins(data["direct"], DIRECT)
    for b in range(5):
        in_bin = bins[:, 0] == b
        assert raw.pbar[0, DIRECT, b] == pytest.approx(data["labels"][in_bin, 0].mean())
    # rows are stochastic and move the mass as the data did
    assert np.allclose(raw.moves[0, DIRECT, 2, DIRECT].sum(-1), 1.0)
    # smoothing pulls a row towards the target's marginal, never towards uniform
    few = {key: value[:30] for key, value in data.items()}
    smooth = belief.estimate_beliefs(**few, n_bins=5, smoothing=1000.0)
    target = smooth.bins(few["direct"], DIRECT)[:, 2]
    marginal = np.bincount(target, minlength=5) / 30
    np.testing.assert_allclose(
        smooth.moves[0, DIRECT, 2, DIRECT], np.tile(marginal, (5, 1)), atol=0.02
    )
    # the scalar bin lookup equals the vectorised one
    for i in range(50):
        for k in range(3):
            assert (
                smooth.bin_of(k, SEQUENTIAL, few["sequential"][i % 30, k])
                == (smooth.bins(few["sequential"], SEQUENTIAL)[i % 30, k])
            )


def test_estimate_costs_average_continuing_per_belief_bin() -> None:
    scratch = np.array([[1.0, 2.0], [1.0, 4.0], [1.0, 2.0], [1.0, 4.0]])
    escalate = np.full((4, 2, 2), np.nan)
    escalate[:, 0, 1] = [0.5, 1.5, 0.5, 3.5]
    bins = [np.array([[0, 0], [1, 0], [0, 0], [1, 0]])] * 2
    costs = belief.estimate_costs(scratch, escalate, bins, n_bins=2, smoothing=0.0)
    np.testing.assert_allclose(costs.scratch, [1 / 3, 1.0])  # unit: mean of the deepest, 3 s
    np.testing.assert_allclose(costs.resume[0, DIRECT, 1], [0.5 / 3, 2.5 / 3])
    flat = belief.flat_costs([0.5, 1.0, 2.0], [[9, 0.6, 1.6], [9, 9, 1.2], [9, 9, 9]], 3)
    np.testing.assert_allclose(flat.scratch, [0.25, 0.5, 1.0])
    np.testing.assert_allclose(flat.resume[0, SEQUENTIAL, 2], [0.8] * 3)
    assert np.isnan(flat.resume[1, DIRECT, 0]).all()


def test_breakpoints_find_every_change_and_dense_lambdas_cover_them() -> None:
    inst = realistic_instance(np.random.default_rng(4), n_stages=3, n_bins=6)

    def sig(lam: float) -> bytes:
        return lambda_search.signature(solve(inst, lam))

    changes = lambda_search.breakpoints(sig, 0.01, 100.0)
    assert len(changes) >= 3
    grid = lambda_search.dense_lambdas(changes, 0.01, 100.0, at_least=30, extra=[1.0, 5.0])
    assert len(grid) >= 30 and {1.0, 5.0} <= set(grid)
    # every constant piece holds a grid point, and the policy really changes at each break
    ends = [0.01, *changes, 100.0]
    for a, b in itertools.pairwise(ends):
        assert any(a < x < b for x in grid)
    for c in changes:
        assert sig(c * 0.99) != sig(c * 1.01)


# -- bad input ----------------------------------------------------------------------------------


def _good():
    return realistic_instance(np.random.default_rng(3), n_stages=3, n_bins=4)


def _data():
    return synthetic(np.random.default_rng(0), 50, 3)


BAD_CALLS = {
    "lam zero": (lambda i: stopping.solve(i.beliefs, i.costs, 0.0), "'lam'"),
    "lam negative": (lambda i: stopping.solve(i.beliefs, i.costs, -1.0), "'lam'"),
    "lam nan": (lambda i: stopping.solve(i.beliefs, i.costs, float("nan")), "'lam'"),
    "lambdas": (lambda i: stopping.policy_tables(i.beliefs, i.costs, [1.0, -2.0]), "'lam'"),
    "per-input lam": (
        lambda i: stopping.decide_per_input(i.beliefs, i.costs, 0.0, 0, DIRECT, 0),
        "'lam'",
    ),
    "costs for other bins": (
        lambda i: stopping.solve(i.beliefs, belief.flat_costs([1, 2, 3], np.ones((3, 3)), 5), 1.0),
        "'costs'",
    ),
    "pbar above 1": (
        lambda i: belief.BeliefModel(i.beliefs.edges, i.beliefs.pbar + 1.0, i.beliefs.moves),
        "'pbar'",
    ),
    "moves shape": (
        lambda i: belief.BeliefModel(i.beliefs.edges, i.beliefs.pbar, i.beliefs.moves[:2]),
        "'moves'",
    ),
    "moves not stochastic": (
        lambda i: belief.BeliefModel(i.beliefs.edges, i.beliefs.pbar, i.beliefs.moves * 0.5),
        "'moves'",
    ),
    "moves negative": (
        lambda i: belief.BeliefModel(i.beliefs.edges, i.beliefs.pbar, -i.beliefs.moves),
        "'moves'",
    ),
    "resume negative": (
        lambda i: belief.Costs(i.costs.scratch, i.costs.resume - 5.0),
        "'resume'",
    ),
    "resume shape": (lambda i: belief.Costs(i.costs.scratch, i.costs.resume[:2]), "'resume'"),
    "scratch zero unit": (lambda i: belief.flat_costs([1.0, 0.0], np.ones((2, 2)), 2), "deepest"),
    "escalate shape": (lambda i: belief.flat_costs([0.1, 1.0], [[0, 1]], 2), "'escalate_s'"),
    "mean above 1": (lambda i: belief.risk_adjust(1.5, 0.01, 0.5, 1.0), "'mean'"),
    "mean nan": (lambda i: belief.risk_adjust(float("nan"), 0.01, 0.5, 1.0), "'mean'"),
    "prior below 0": (lambda i: belief.risk_adjust(0.5, 0.01, -0.1, 1.0), "'prior_mean'"),
    "var negative": (lambda i: belief.risk_adjust(0.5, -0.01, 0.5, 1.0), "'var'"),
    "alpha negative": (lambda i: belief.risk_adjust(0.5, 0.01, 0.5, -1.0), "'alpha'"),
    "beta above half": (lambda i: belief.risk_adjust(0.5, 0.01, 0.5, 1.0, 0.9), "'beta'"),
    "beta zero": (lambda i: belief.risk_adjust(0.5, 0.01, 0.5, 1.0, 0.0), "'beta'"),
    "n_max below 1": (lambda i: belief.risk_adjust(0.5, 0.01, 0.5, 1.0, n_max=0.5), "'n_max'"),
    "p outside": (lambda i: belief.quantile_edges([0.2, 1.2], 3), "'p'"),
    "p empty": (lambda i: belief.quantile_edges([], 3), "'p'"),
    "n_bins zero": (lambda i: belief.quantile_edges([0.2], 0), "'n_bins'"),
    "labels shape": (
        lambda i: belief.estimate_beliefs(**{**_data(), "labels": np.ones((50, 2))}),
        "'labels'",
    ),
    "direct empty": (
        lambda i: belief.estimate_beliefs(*(np.zeros((0, 3)),) * 3),
        "'direct'",
    ),
    "smoothing negative": (
        lambda i: belief.estimate_beliefs(**_data(), smoothing=-1.0),
        "'smoothing'",
    ),
    "beliefs of other stages": (lambda i: i.beliefs.bins(np.zeros((4, 2)), DIRECT), "'p_tilde'"),
    "start shape": (
        lambda i: stopping.policy_outcome(
            stopping.solve(i.beliefs, i.costs, 1.0), i.beliefs, i.costs, [[0.5, 0.5]]
        ),
        "'start'",
    ),
    "held-out shapes": (
        lambda i: stopping.HeldOut(
            np.full((2, 3), 0.5),
            np.zeros((2, 2, 2)),
            np.ones((2, 3)),
            np.ones((2, 3)),
            np.ones((2, 3, 3)),
        ),
        "'bins'",
    ),
    "nearest dims": (lambda i: stopping.nearest(np.ones((3, 2)), np.ones((1, 3)), 2), "'queries'"),
    "nearest k": (lambda i: stopping.nearest(np.ones((3, 2)), np.ones((1, 2)), 0), "'k'"),
    "breakpoints range": (lambda i: lambda_search.breakpoints(lambda x: 0, 2.0, 1.0), "'hi'"),
}


@pytest.mark.parametrize("name", sorted(BAD_CALLS))
def test_bad_input_raises_one_line(name: str) -> None:
    call, key = BAD_CALLS[name]
    with pytest.raises(AsdError) as err:
        call(_good())
    message = str(err.value)
    assert key in message and "\n" not in message
