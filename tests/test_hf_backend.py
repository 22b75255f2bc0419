"""The transformers reference backend on tiny random models (shapes, units, exactness, errors)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asd_core.ground.errors import AsdError
from asd_core.models.base import Backend, GenerationParams
from asd_core.models.common import chat_prompt_ids
from tests.tolerance import TINY_LOGPROB_TOL


def _chat(backend, text: str) -> list[int]:
    return chat_prompt_ids(backend.tokenizer, text)


def test_satisfies_protocol(tiny_backend) -> None:
    assert isinstance(tiny_backend, Backend)
    assert tiny_backend.info.runtime == "transformers"


def test_generation_shapes_and_units(tiny_backend) -> None:
    prompt = _chat(tiny_backend, "What is 6 times 7?")
    (gen,) = tiny_backend.generate([prompt], GenerationParams(max_new_tokens=12, top_k=4))
    n = gen.n_out
    assert 1 <= n <= 12
    assert gen.logprobs.shape == (n,) and gen.entropy.shape == (n,)
    assert gen.top_ids.shape == (n, 4) and gen.top_logprobs.shape == (n, 4)
    assert (gen.logprobs <= 0).all() and (gen.entropy >= 0).all()
    assert (gen.top_ids[:, 0] == np.array(gen.token_ids)).all()  # greedy = top-1
    assert 0 < gen.prefill_s <= gen.total_s
    assert gen.stop_reason in {"eos", "stop", "length"}


def test_ignore_eos_gives_exact_length(tiny_backend) -> None:
    prompt = _chat(tiny_backend, "hi")
    (gen,) = tiny_backend.generate([prompt], GenerationParams(max_new_tokens=9, ignore_eos=True))
    assert gen.n_out == 9 and gen.stop_reason == "length"


def test_hidden_state_is_pooled(tiny_backend) -> None:
    (gen,) = tiny_backend.generate(
        [_chat(tiny_backend, "x")], GenerationParams(max_new_tokens=4, return_hidden=True)
    )
    assert gen.hidden_mean is not None and gen.hidden_mean.shape == (64,)


def test_stop_string_cuts_output(tiny_backend) -> None:
    prompt = _chat(tiny_backend, "count")
    (free,) = tiny_backend.generate([prompt], GenerationParams(max_new_tokens=16, ignore_eos=True))
    pieces = [tiny_backend.tokenizer.decode([t]) for t in free.token_ids]
    candidates = [s for s in pieces[2:] if s.isascii() and s.isprintable() and s.strip()]
    if not candidates:
        pytest.skip("random model wrote no printable token")
    stop = candidates[0]
    (cut,) = tiny_backend.generate(
        [prompt], GenerationParams(max_new_tokens=16, stop_strings=(stop,), ignore_eos=True)
    )
    assert cut.stop_reason == "stop" and stop in cut.text
    assert cut.token_ids == free.token_ids[: cut.n_out]


def test_batch_equals_one_at_a_time(tiny_backend) -> None:
    prompts = [_chat(tiny_backend, t) for t in ("a", "longer question here?", "def f(x):")]
    params = GenerationParams(max_new_tokens=10)
    batch = tiny_backend.generate(prompts, params)
    single = [tiny_backend.generate([p], params)[0] for p in prompts]
    assert [g.token_ids for g in batch] == [g.token_ids for g in single]


@settings(max_examples=15, deadline=None)
@given(st.text(min_size=1, max_size=40))
def test_own_greedy_output_is_accepted_whole(tiny_backend, text: str) -> None:
    prompt = _chat(tiny_backend, text)
    (gen,) = tiny_backend.generate([prompt], GenerationParams(max_new_tokens=8))
    (sc,) = tiny_backend.score([prompt], [gen.token_ids])
    assert sc.argmax_ids.tolist() == gen.token_ids
    # a scoring pass and decode steps are different float32 kernels over the same logits
    np.testing.assert_allclose(sc.logprobs, gen.logprobs, atol=TINY_LOGPROB_TOL)


def test_score_zero_length_continuation(tiny_backend) -> None:
    prompt = _chat(tiny_backend, "q")
    (gen,) = tiny_backend.generate([prompt], GenerationParams(max_new_tokens=1))
    (sc,) = tiny_backend.score([prompt], [[]])
    assert sc.argmax_ids.shape == (0,) and sc.next_argmax == gen.token_ids[0]


def test_bad_inputs_are_clear(tiny_backend) -> None:
    with pytest.raises(AsdError, match="empty"):
        tiny_backend.generate([[]], GenerationParams(max_new_tokens=2))
    with pytest.raises(AsdError, match="context length"):
        tiny_backend.generate([[5] * 1020], GenerationParams(max_new_tokens=8))
    with pytest.raises(AsdError, match="context length"):
        tiny_backend.score([[5] * 1000], [[5] * 100])
    with pytest.raises(AsdError, match="2 prompts but 1"):
        tiny_backend.score([[5], [6]], [[1]])
