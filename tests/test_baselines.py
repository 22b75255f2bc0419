"""Speculative-decoding baselines: lossless against the target's own greedy output.

Tiny float32 models made on the fly stand in for the stages: a 2-layer target, and as drafters
either the target itself (every draft token is accepted) or a 1-layer model with other weights
(almost none is). Either way the output must be the target's. The vLLM path is ``slow`` and runs
only where an interpreter with vLLM is given (``ASD_VLLM_PYTHON``, else this one)::

    ASD_VLLM_PYTHON=/path/to/venv-with-vllm/bin/python pytest tests/test_baselines.py -m slow
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from asd_core.ground.config import StageConfig
from asd_core.ground.errors import AsdError
from asd_core.models.base import GenerationParams
from benchmarks import spec_decode_hf, spec_decode_vllm, spec_results

PROMPTS = [[5, 6, 7, 8, 9, 10], [40, 41, 42, 43], list(range(60, 90))]
N_NEW = 24


def _stage(name: str, source: str) -> StageConfig:
    # one thread: on a shared 2-core machine two torch threads on tiny matrices thrash
    return StageConfig(
        name=name,
        source=source,
        runtime="transformers",
        dtype="float32",
        context_length=1024,
        threads=1,
    )


TARGET = _stage("target", "tiny:layers:2,hidden:64,seed:1")
OTHER = _stage("other", "tiny:layers:1,hidden:64,seed:7")


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def reference(models: Path) -> list[list[int]]:
    """The target stage's own greedy outputs from the reference backend, one prompt at a time."""
    from asd_core.models.registry import load_backend

    backend = load_backend(TARGET, models)
    params = GenerationParams(max_new_tokens=N_NEW, ignore_eos=True)
    outs = [backend.generate([p], params)[0].token_ids for p in PROMPTS]
    backend.close()
    return outs


@pytest.fixture(scope="module")
def self_drafted(models: Path) -> list[spec_results.SpecResult]:
    params = GenerationParams(max_new_tokens=N_NEW, ignore_eos=True)
    return spec_decode_hf.assisted_generation(
        TARGET, TARGET, PROMPTS, params, models, num_assistant_tokens=5
    )


@pytest.fixture(scope="module")
def other_drafted(models: Path) -> list[spec_results.SpecResult]:
    params = GenerationParams(max_new_tokens=N_NEW, ignore_eos=True)
    return spec_decode_hf.assisted_generation(
        TARGET, OTHER, PROMPTS, params, models, schedule="heuristic"
    )


# -- pure helpers -------------------------------------------------------------------------------
@given(st.lists(st.integers(0, 3), max_size=8), st.lists(st.integers(0, 3), max_size=8))
def test_compare_tokens_finds_the_first_divergence(a: list[int], b: list[int]) -> None:
    agreement = spec_results.compare_tokens(a, b)
    assert agreement.identical == (a == b)
    assert (agreement.n_output, agreement.n_reference) == (len(a), len(b))
    k = agreement.first_divergence
    if a == b:
        assert k is None
    else:
        assert k is not None and a[:k] == b[:k]
        assert k == min(len(a), len(b)) or a[k] != b[k]


def test_steps_from_passes_reads_drafts_and_acceptances() -> None:
    # prompt of 6; pass 1 sees prompt + 3 drafts, accepts 2 (writes 3 tokens: sequence 9);
    # pass 2 sees the last token + 4 drafts (cache 8), accepts 4 (writes 5: sequence 14);
    # pass 3 sees the last token + 2 drafts (cache 13), accepts 0: 9 tokens in all
    passes = [(9, 0), (5, 8), (3, 13)]
    assert spec_results.steps_from_passes(6, 9, passes) == ([3, 4, 2], [2, 4, 0])
    assert spec_results.steps_from_passes(6, 9, []) is None
    assert spec_results.steps_from_passes(6, 30, passes) is None  # more accepted than drafted


def test_spec_result_derived_numbers() -> None:
    r = spec_results.SpecResult(
        runtime="x",
        target="t",
        drafter="d",
        prompt_ids=[1],
        token_ids=[1, 2, 3, 4],
        text="",
        stop_reason="length",
        seconds=2.0,
        tokens_per_s=2.0,
        target_token_ids=[1, 2, 3, 4],
        target_seconds=4.0,
        target_tokens_per_s=1.0,
        drafted_per_step=[4, 4],
        accepted_per_step=[3, 1],
    )
    assert r.verify_steps == 2
    assert r.acceptance_rate == pytest.approx(0.5)
    assert r.mean_accepted_length == pytest.approx(3.0)
    assert r.speedup == pytest.approx(2.0)
    assert spec_results.overall_ratio([r]) == pytest.approx(2.0)
    assert spec_results.compare_with_target([r])[0].identical
    no_target = spec_results.SpecResult(**{**r.__dict__, "target_token_ids": None})
    with pytest.raises(AsdError, match="no target-alone run"):
        spec_results.compare_with_target([no_target])
    assert not spec_results.compare_with_target([no_target], [[1, 2, 9]])[0].identical


# -- transformers assisted generation -----------------------------------------------------------
@pytest.mark.parametrize("which", ["self_drafted", "other_drafted"])
def test_assisted_generation_is_lossless(
    which: str, request: pytest.FixtureRequest, reference: list[list[int]]
) -> None:
    results: list[spec_results.SpecResult] = request.getfixturevalue(which)
    assert [r.token_ids for r in results] == reference
    assert [r.target_token_ids for r in results] == reference
    assert all(a.identical for a in spec_results.compare_with_target(results, reference))
    for r, prompt in zip(results, PROMPTS, strict=True):
        assert r.runtime == "transformers" and r.prompt_ids == prompt
        assert r.stop_reason == "length" and len(r.token_ids) == N_NEW
        assert r.seconds > 0 and r.target_seconds and r.target_seconds > 0
        assert r.tokens_per_s == pytest.approx(N_NEW / r.seconds)
        assert r.speedup == pytest.approx(r.tokens_per_s / (N_NEW / r.target_seconds))
        assert r.settings["dtype"] == "float32" and r.settings["batch_size"] == 1
        # every pass writes its accepted draft tokens plus one token of its own
        assert r.drafted_per_step is not None and r.accepted_per_step is not None
        assert sum(r.accepted_per_step) + len(r.accepted_per_step) == N_NEW
        assert r.runtime_metrics["target_forward_passes"] == r.verify_steps


def test_a_drafter_equal_to_the_target_is_always_accepted(
    self_drafted: list[spec_results.SpecResult],
) -> None:
    for r in self_drafted:
        assert r.accepted_per_step == r.drafted_per_step
        assert r.verify_steps is not None and r.verify_steps < N_NEW
        assert max(r.drafted_per_step or [0]) <= 5  # num_assistant_tokens
        assert r.mean_accepted_length is not None and r.mean_accepted_length > 1


def test_an_unrelated_drafter_is_mostly_rejected(
    other_drafted: list[spec_results.SpecResult],
) -> None:
    rates = [r.acceptance_rate for r in other_drafted]
    assert all(rate is not None and rate < 0.5 for rate in rates)
    assert other_drafted[0].settings["num_assistant_tokens_schedule"] == "heuristic"


def test_stop_strings_cut_both_runs_at_the_same_token(
    models: Path, reference: list[list[int]]
) -> None:
    from asd_core.models.common import decode_text
    from asd_core.models.tiny import make_tokenizer

    tok = make_tokenizer("bytes")
    full = decode_text(tok, reference[0])
    # two ASCII characters from the middle: every tokenisation of them decodes the same way
    stop = next(full[i : i + 2] for i in range(6, len(full) - 1) if full[i : i + 2].isalnum())
    params = GenerationParams(max_new_tokens=N_NEW, stop_strings=(stop,))
    # self-drafting accepts whole blocks of up to 5 tokens, so the stop string can end mid-block
    (r,) = spec_decode_hf.assisted_generation(
        TARGET, TARGET, PROMPTS[:1], params, models, num_assistant_tokens=5
    )
    assert r.stop_reason == "stop"
    assert stop in r.text and stop not in decode_text(tok, r.token_ids[:-1])
    assert r.token_ids == r.target_token_ids == reference[0][: len(r.token_ids)]
    # generation ended in the block that completed the stop string, not at max_new_tokens
    assert r.accepted_per_step is not None and len(r.token_ids) < N_NEW - 5
    assert sum(r.accepted_per_step) + len(r.accepted_per_step) <= len(r.token_ids) + 5


def test_near_tie_gap_weighs_the_two_tokens(tiny_backend, reference: list[list[int]]) -> None:
    prompt, ref = PROMPTS[0], reference[0]
    altered = [*ref[:5], (ref[5] + 1) % 200, *ref[6:]]
    gap = spec_results.near_tie_gap(tiny_backend, prompt, altered, ref)
    assert gap is not None and math.isfinite(gap) and gap > 0
    assert spec_results.near_tie_gap(tiny_backend, prompt, ref, ref) is None
    assert (
        spec_results.near_tie_gap(tiny_backend, prompt, ref[:10], ref) is None
    )  # a prefix: no pair


def test_drafter_with_another_tokenizer_is_refused(models: Path) -> None:
    bpe = _stage("bpe", "tiny:layers:1,hidden:64,seed:1,tokenizer:bpe")
    with pytest.raises(AsdError, match="different tokenizers"):
        spec_decode_hf.assisted_generation(
            TARGET, bpe, PROMPTS[:1], GenerationParams(max_new_tokens=2), models
        )


def test_on_runtime_keeps_or_overrides_the_dtype() -> None:
    stage = StageConfig(name="q", source="package:x", runtime="llamacpp")
    assert spec_results.on_runtime(stage, "vllm").model_dump() == {
        **stage.model_dump(),
        "runtime": "vllm",
    }
    assert spec_results.on_runtime(stage, "transformers", "float32").dtype == "float32"


# -- vLLM spec decode (slow: two engines in a child process) ------------------------------------
VLLM_PYTHON = os.environ.get("ASD_VLLM_PYTHON", sys.executable)


@pytest.mark.slow
def test_vllm_spec_decode_matches_the_target_alone(models: Path, tmp_path: Path) -> None:
    if not spec_decode_vllm.has_vllm(VLLM_PYTHON):
        pytest.skip(f"{VLLM_PYTHON} has no vllm (set ASD_VLLM_PYTHON)")
    params = GenerationParams(max_new_tokens=N_NEW, ignore_eos=True)
    results = spec_decode_vllm.vllm_spec_decode(
        TARGET,
        OTHER,
        PROMPTS[:2],
        params,
        models,
        vllm_python=VLLM_PYTHON,
        num_speculative_tokens=3,
        log_path=tmp_path / "child.log",
    )
    assert all(a.identical for a in spec_results.compare_with_target(results))
    for r in results:
        assert r.runtime == "vllm" and len(r.token_ids) == N_NEW and r.stop_reason == "length"
        assert r.target_tokens_per_s and r.target_tokens_per_s > 0 and r.tokens_per_s > 0
        assert r.settings["speculative_config"]["num_speculative_tokens"] == 3
        # per-request metrics and the engine's aggregate counters tell the same story
        assert r.drafted_per_step and r.accepted_per_step is not None
        assert all(d == 3 for d in r.drafted_per_step)
        m = r.runtime_metrics
        assert m["vllm:spec_decode_num_drafts"] == r.verify_steps
        assert m["vllm:spec_decode_num_draft_tokens"] == sum(r.drafted_per_step)
        assert m["vllm:spec_decode_num_accepted_tokens"] == sum(r.accepted_per_step)


def test_too_long_prompts_fail_before_any_model_loads(tmp_path: Path) -> None:
    params = GenerationParams(max_new_tokens=1020)
    with pytest.raises(AsdError, match="context length"):
        spec_decode_hf.assisted_generation(TARGET, OTHER, PROMPTS[:1], params, tmp_path)
    with pytest.raises(AsdError, match="context length"):
        spec_decode_vllm.vllm_spec_decode(TARGET, OTHER, PROMPTS[:1], params, tmp_path)
    assert not any(tmp_path.iterdir())  # nothing built or converted
