"""Continuation after verification (docs/design.md §1, §3): the escalated output is the verifier's own.

Tiny random models stand in for the hierarchy: two byte-level models with different weights
(same tokenizer) and a BPE model (another tokenizer). The central property is the lossless
identity: escalating a draft to stage j returns exactly what stage j writes by itself.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asd_core.decoding.verify import Draft, draft_from_generation, escalate, tokenizer_key
from asd_core.ground.config import StageConfig
from asd_core.ground.errors import AsdError
from asd_core.models.base import Backend, GenerationParams
from asd_core.models.common import chat_prompt_ids, empty_prefix
from asd_core.models.registry import load_backend
from tests.conftest import real_gguf
from tests.tolerance import TINY_LOGPROB_TOL

texts = st.text(min_size=1, max_size=24)


def tiny(name: str, spec: str, exact: bool = False) -> StageConfig:
    return StageConfig(
        name=name,
        source=f"tiny:{spec}",
        runtime="transformers",
        dtype="float32",
        context_length=512,
        exact_scoring=exact,
    )


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory):
    d = tmp_path_factory.mktemp("models-cont")
    out = {
        "draft": load_backend(tiny("draft", "layers:2,hidden:64,seed:2"), d),
        "target": load_backend(tiny("target", "layers:2,hidden:64,seed:1"), d),
        "target_exact": load_backend(tiny("target-x", "layers:2,hidden:64,seed:1", True), d),
        "bpe": load_backend(tiny("bpe", "layers:2,hidden:64,seed:5,tokenizer:bpe"), d),
    }
    yield out
    for b in out.values():
        b.close()


def own(backend: Backend, prompt: list[int], params: GenerationParams):
    (g,) = backend.generate([prompt], params)
    return g


def draft(backend: Backend, prompt: list[int], params: GenerationParams, stage: int = 0) -> Draft:
    return draft_from_generation(
        stage, own(backend, prompt, params), tokenizer_key(backend.tokenizer)
    )


@settings(max_examples=15, deadline=None)
@given(texts, st.integers(1, 24), st.sampled_from(["target", "target_exact"]))
def test_escalated_output_equals_the_verifiers_own(models, text: str, n: int, which: str) -> None:
    target, drafter = models[which], models["draft"]
    params = GenerationParams(max_new_tokens=n)
    prompt_t = chat_prompt_ids(target.tokenizer, text)
    d = draft(drafter, chat_prompt_ids(drafter.tokenizer, text), params)
    (esc,) = escalate(target, [prompt_t], [d], True, params)
    ref = own(target, prompt_t, params)
    assert esc.output.token_ids == ref.token_ids
    assert esc.output.stop_reason == ref.stop_reason
    assert esc.output.text == ref.text
    # the statistics of the accepted tokens come from the verification pass, the rest from
    # decoding: both describe the same distributions
    np.testing.assert_allclose(esc.output.logprobs, ref.logprobs, atol=TINY_LOGPROB_TOL)
    np.testing.assert_allclose(esc.output.entropy, ref.entropy, atol=TINY_LOGPROB_TOL)
    np.testing.assert_array_equal(esc.output.top_ids[:, 0], ref.top_ids[:, 0])
    assert esc.verdict.n_accepted <= esc.verdict.n_draft


@settings(max_examples=10, deadline=None)
@given(texts, st.integers(1, 20))
def test_cross_tokenizer_escalation_is_lossless(models, text: str, n: int) -> None:
    target, drafter = models["bpe"], models["target"]
    params = GenerationParams(max_new_tokens=n)
    d = draft(drafter, chat_prompt_ids(drafter.tokenizer, text), params)
    prompt_t = chat_prompt_ids(target.tokenizer, text)
    (esc,) = escalate(target, [prompt_t], [d], False, params)
    assert esc.output.token_ids == own(target, prompt_t, params).token_ids


def test_own_output_as_draft_is_accepted_whole_and_not_regenerated(models) -> None:
    target = models["target"]
    params = GenerationParams(max_new_tokens=16)
    prompt = chat_prompt_ids(target.tokenizer, "accept me")
    d = draft(target, prompt, params)
    (esc,) = escalate(target, [prompt], [d], True, params)
    assert esc.verdict.all_accepted and esc.verdict.n_accepted == len(d.token_ids)
    assert esc.output.token_ids == list(d.token_ids)


def test_zero_token_draft_means_generating_from_scratch(models) -> None:
    target = models["target"]
    params = GenerationParams(max_new_tokens=12)
    prompt = chat_prompt_ids(target.tokenizer, "nothing drafted")
    empty = Draft(0, (), "", False, tokenizer_key(target.tokenizer))
    (esc,) = escalate(target, [prompt], [empty], True, params)
    assert esc.verdict.n_draft == 0 and esc.verdict.accepted_fraction == 0.0
    assert esc.output.token_ids == own(target, prompt, params).token_ids


def test_stop_string_inside_the_accepted_prefix_ends_the_output(models) -> None:
    target = models["target"]
    prompt = chat_prompt_ids(target.tokenizer, "stop early")
    ref = own(target, prompt, GenerationParams(max_new_tokens=20))
    stop = ref.text[3:5]
    if not stop or stop not in ref.text:
        pytest.skip("tiny output too short for a stop string")
    params = GenerationParams(max_new_tokens=20, stop_strings=(stop,))
    d = draft_from_generation(0, ref, tokenizer_key(target.tokenizer))  # no stop string applied
    (esc,) = escalate(target, [prompt], [d], True, params)
    expected = own(target, prompt, params)
    assert esc.output.token_ids == expected.token_ids
    assert esc.output.stop_reason == "stop"


def test_resume_with_empty_prefix_is_generate(models) -> None:
    target = models["target"]
    params = GenerationParams(max_new_tokens=8)
    prompt = chat_prompt_ids(target.tokenizer, "plain")
    (g,) = target.resume([prompt], [empty_prefix(params.top_k)], params)
    assert g.token_ids == own(target, prompt, params).token_ids


def test_bad_escalation_inputs_are_clear(models) -> None:
    target = models["target"]
    params = GenerationParams(max_new_tokens=8)
    prompt = chat_prompt_ids(target.tokenizer, "x")
    d = draft(target, prompt, params)
    with pytest.raises(AsdError, match="2 prompts but 1 drafts"):
        escalate(target, [prompt, prompt], [d], True, params)
    with pytest.raises(AsdError, match="empty"):
        escalate(target, [[]], [d], True, params)
    too_long = [1] * 600
    with pytest.raises(AsdError, match="context length"):
        escalate(target, [too_long], [d], True, params)


# -- real stages ---------------------------------------------------------------------------------
QUESTIONS = [
    "Write a Python function that checks whether a number is prime.",
    "What is the capital of Australia? Answer in one sentence.",
    "A farmer has 17 sheep, buys 5 more and sells 3. How many are left? The answer is",
    "Explain what a hash map is in two sentences.",
]


def _qwen(models_dir: Path, asset: str, exact: bool) -> Backend:
    real_gguf(models_dir, asset)
    stage = StageConfig(
        name=asset,
        source=f"package:{asset}",
        runtime="llamacpp",
        context_length=2048,
        exact_scoring=exact,
    )
    return load_backend(stage, models_dir)


@pytest.mark.slow
def test_real_qwen_escalation_is_bit_exact_with_exact_scoring(models_dir: Path) -> None:
    """0.5B drafts, 1.5B verifies one token at a time and continues: identical to 1.5B alone."""
    small = _qwen(models_dir, "qwen2.5-coder-0.5b-instruct", False)
    big = _qwen(models_dir, "qwen2.5-coder-1.5b-instruct", True)
    try:
        params = GenerationParams(max_new_tokens=48)
        for q in QUESTIONS:
            prompt = chat_prompt_ids(big.tokenizer, q)
            d = draft(small, prompt, params, stage=1)
            (esc,) = escalate(big, [prompt], [d], True, params)
            assert esc.output.token_ids == own(big, prompt, params).token_ids, q
    finally:
        small.close()
        big.close()
