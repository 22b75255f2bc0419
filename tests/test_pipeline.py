"""The batched pipeline and its built-in policies on a three-stage hierarchy of tiny models.

Stage 0 uses the BPE tokenizer and stages 1-2 the byte tokenizer, so the 0→1 hop crosses
tokenizers as SmolLM2 → Qwen does. The invariant (docs/design.md §8): output at depth d equals M_d alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pytest

from asd_core.decoding.pipeline import AcceptanceMetrics, Pipeline, Request, Trace
from asd_core.decoding.protocol import Move, continue_to
from asd_core.ground.config import StageConfig
from asd_core.ground.errors import AsdError
from asd_core.models.base import GenerationParams
from asd_core.models.common import chat_prompt_ids
from asd_core.models.registry import load_backend
from asd_core.policy.baselines import (
    AlwaysDeepest,
    FixedDepth,
    OracleCascade,
    OracleRouter,
    RandomMixing,
    cheapest_acceptable,
)

SPECS = [
    "layers:1,hidden:64,seed:5,tokenizer:bpe",
    "layers:2,hidden:64,seed:2",
    "layers:2,hidden:64,seed:1",
]
TEXTS = [
    "What is 6 times 7?",
    "def add(a, b):",
    "数学 问题",
    "🚀 ok",
    "",
    "A B C D",
    "tabs\tand  spaces",
]
QA = GenerationParams(max_new_tokens=10)
CODE = GenerationParams(max_new_tokens=14, stop_strings=("\n\n",))


@pytest.fixture(scope="module")
def pipe(tmp_path_factory: pytest.TempPathFactory):
    d = tmp_path_factory.mktemp("models-pipe")
    backends = [
        load_backend(
            StageConfig(
                name=f"s{k}",
                source=f"tiny:{spec}",
                runtime="transformers",
                dtype="float32",
                context_length=256,
            ),
            d,
        )
        for k, spec in enumerate(SPECS)
    ]
    yield Pipeline(backends)
    for b in backends:
        b.close()


def requests() -> list[Request]:
    return [
        Request(f"item{i}", "code" if i % 2 else "qa", t, CODE if i % 2 else QA)
        for i, t in enumerate(TEXTS)
    ]


def alone(pipe: Pipeline, stage: int, req: Request) -> list[int]:
    b = pipe.backends[stage]
    (g,) = b.generate([chat_prompt_ids(b.tokenizer, req.text)], req.params)
    return g.token_ids


@pytest.mark.parametrize("depth", [0, 1, 2])
def test_output_at_forced_depth_equals_that_stage_alone(pipe: Pipeline, depth: int) -> None:
    reqs = requests()
    traces = pipe.run(reqs, FixedDepth(depth, 3))
    for req, t in zip(reqs, traces, strict=True):
        assert t.depth == depth and t.path == list(range(depth + 1))
        assert t.output.token_ids == alone(pipe, depth, req), req.text


def test_skipping_a_stage_verifies_the_latest_draft(pipe: Pipeline) -> None:
    class SkipOne:
        name = "skip"

        def entry(self, reqs: Sequence[Request]) -> list[int]:
            return [0] * len(reqs)

        def next_stage(self, stage: int, traces: Sequence[Trace]) -> list[Move | None]:
            return [continue_to(2) if stage == 0 else None for _ in traces]

    reqs = requests()
    for req, t in zip(reqs, pipe.run(reqs, SkipOne()), strict=True):
        assert t.path == [0, 2]
        assert t.runs[1].from_stage == 0
        assert t.output.token_ids == alone(pipe, 2, req)


def test_a_restart_runs_the_deeper_stage_from_scratch(pipe: Pipeline) -> None:
    class Restart:
        name = "restart"

        def entry(self, reqs: Sequence[Request]) -> list[int]:
            return [0] * len(reqs)

        def next_stage(self, stage: int, traces: Sequence[Trace]) -> list[Move | None]:
            # input 0 restarts at stage 1, the others continue; then all stop
            return [Move(1, t.request.item_id == "item0") if stage == 0 else None for t in traces]

    reqs = requests()
    for req, t in zip(reqs, pipe.run(reqs, Restart()), strict=True):
        assert t.path == [0, 1]
        restarted = req.item_id == "item0"
        assert (t.runs[1].from_stage is None) == restarted
        assert (t.runs[1].verify_s == 0.0) == restarted
        assert t.output.token_ids == alone(pipe, 1, req)


def test_routing_straight_to_a_stage_generates_from_scratch(pipe: Pipeline) -> None:
    reqs = requests()
    for req, t in zip(reqs, pipe.run(reqs, AlwaysDeepest(3)), strict=True):
        assert t.path == [2] and t.runs[0].from_stage is None
        assert math.isnan(t.runs[0].accepted_fraction)
        assert t.output.token_ids == alone(pipe, 2, req)


def test_batched_run_equals_one_at_a_time(pipe: Pipeline) -> None:
    reqs = requests()
    policy = FixedDepth(2, 3)
    batched = pipe.run(reqs, policy)
    single = [pipe.run([r], policy)[0] for r in reqs]
    for a, b in zip(batched, single, strict=True):
        assert a.output.token_ids == b.output.token_ids
        assert [r.n_accepted for r in a.runs] == [r.n_accepted for r in b.runs]


def test_trace_and_acceptance_metrics_are_consistent(pipe: Pipeline) -> None:
    traces = pipe.run(requests(), FixedDepth(2, 3))
    for t in traces:
        assert t.latency_s >= sum(r.latency_s for r in t.runs) > 0
        assert t.decision_s >= 0
        acc = AcceptanceMetrics.of(t)
        assert acc.hops == 2
        assert acc.accepted == sum(r.n_accepted for r in t.runs[1:])
        assert acc.drafted == sum(r.n_draft for r in t.runs[1:])
        if acc.drafted:
            assert 0.0 <= acc.acceptance_rate <= 1.0
        row = t.row()
        assert row["depth"] == 2 and row["path"] == "0→1→2"
        for r in t.runs[1:]:
            assert 0 <= r.n_accepted <= r.n_draft


def test_oracles_follow_their_labels(pipe: Pipeline) -> None:
    reqs = requests()
    labels = np.array([[i % 3 == 0, i % 3 == 1, True] for i in range(len(reqs))])
    cheapest = cheapest_acceptable(labels)
    table = {r.item_id: int(c) for r, c in zip(reqs, cheapest, strict=True)}
    routed = pipe.run(reqs, OracleRouter(table, 3))
    cascaded = pipe.run(reqs, OracleCascade(table, 3))
    for r, a, b in zip(reqs, routed, cascaded, strict=True):
        assert a.path == [table[r.item_id]]
        assert b.path == list(range(table[r.item_id] + 1))
        assert a.output.token_ids == b.output.token_ids  # lossless either way


def test_cheapest_acceptable_treats_the_last_stage_as_acceptable() -> None:
    labels = np.array([[0, 0, 0], [0, 1, 1], [1, 1, 1], [1, 0, 0]])
    assert cheapest_acceptable(labels).tolist() == [2, 1, 0, 0]


def test_random_mixing_is_reproducible_and_follows_the_weights() -> None:
    reqs = [Request(f"x{i}", "qa", "q", QA) for i in range(3000)]
    policy = RandomMixing([0.5, 0.3, 0.2], seed=7)
    entries = policy.entry(reqs)
    assert entries == RandomMixing([0.5, 0.3, 0.2], seed=7).entry(list(reversed(reqs)))[::-1]
    shares = np.bincount(entries, minlength=3) / len(reqs)
    np.testing.assert_allclose(shares, [0.5, 0.3, 0.2], atol=0.03)
    assert entries != RandomMixing([0.5, 0.3, 0.2], seed=8).entry(reqs)
    with pytest.raises(AsdError, match="weights"):
        RandomMixing([0, 0], seed=1)


def test_bad_policies_and_inputs_are_clear(pipe: Pipeline) -> None:
    class Backwards:
        name = "backwards"

        def entry(self, reqs: Sequence[Request]) -> list[int]:
            return [1] * len(reqs)

        def next_stage(self, stage: int, traces: Sequence[Trace]) -> list[Move | None]:
            return [continue_to(0) for _ in traces]

    with pytest.raises(AsdError, match="must go deeper"):
        pipe.run(requests()[:1], Backwards())
    with pytest.raises(AsdError, match="outside"):
        FixedDepth(3, 3)
    with pytest.raises(AsdError, match="no label for input 'item0'"):
        pipe.run(requests()[:1], OracleRouter({}, 3))
    long = Request("long", "qa", "word " * 400, QA)
    with pytest.raises(AsdError, match="input 'long'.*context length 256"):
        pipe.run([long], FixedDepth(1, 3))
    assert pipe.run([], FixedDepth(1, 3)) == []


MC = GenerationParams(max_new_tokens=4, options=("A", "B", "C", "D"))


@pytest.mark.parametrize("depth", [0, 1, 2])
def test_a_choice_at_any_depth_is_that_stage_own_choice(pipe: Pipeline, depth: int) -> None:
    from asd_core.decoding.choice import choose

    reqs = [
        Request(f"mc{i}", "mmlu", f"{t}\n\nA. x\nB. y\nC. z\nD. w", MC) for i, t in enumerate(TEXTS)
    ]
    traces = pipe.run(reqs, FixedDepth(depth, 3))
    for req, t in zip(reqs, traces, strict=True):
        b = pipe.backends[depth]
        (own,) = choose(b, [chat_prompt_ids(b.tokenizer, req.text)], MC.options)
        assert t.output.text == own.text and t.output.n_out == 1
        for prev, run in zip(t.runs, t.runs[1:], strict=False):
            assert run.from_stage == prev.stage and run.n_draft == 1
            assert run.n_accepted == int(prev.generation.text == run.generation.text)
            assert run.generate_s == 0.0 and run.verify_s == run.generation.total_s
