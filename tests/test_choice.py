"""Multiple-choice stages: one pass, the most probable option letter, statistics over options."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from asd_core.decoding import choice
from asd_core.ground.errors import AsdError
from asd_core.models.base import GenerationParams
from asd_core.models.common import chat_prompt_ids
from tests.tolerance import TINY_LOGPROB_TOL

LETTERS = ("A", "B", "C", "D")
QUESTIONS = [
    "Which is a prime?\n\nA. 4\nB. 6\nC. 7\nD. 9\n\nReply with a single letter.",
    "Pick one.\n\nA. red\nB. blue\nC. green\nD. black",
    "数学 问题\n\nA. 一\nB. 二\nC. 三\nD. 四",
]


def prompts(backend) -> list[list[int]]:
    return [chat_prompt_ids(backend.tokenizer, q) for q in QUESTIONS]


def test_next_logprobs_equal_a_one_token_scoring_pass(tiny_backend) -> None:
    ids = choice.option_token_ids(tiny_backend.tokenizer, LETTERS)
    for p, nxt in zip(
        prompts(tiny_backend), tiny_backend.next_logprobs(prompts(tiny_backend), ids), strict=True
    ):
        scored = [tiny_backend.score([p], [[t]])[0] for t in ids]
        want = np.array([s.logprobs[0] for s in scored])
        np.testing.assert_allclose(nxt.logprobs, want, atol=TINY_LOGPROB_TOL)
        assert nxt.argmax == scored[0].argmax_ids[0]  # the greedy token after the prompt
        assert nxt.seconds > 0


def test_choice_is_the_most_probable_letter_with_option_statistics(tiny_backend) -> None:
    ids = choice.option_token_ids(tiny_backend.tokenizer, LETTERS)
    ps = prompts(tiny_backend)
    raw = tiny_backend.next_logprobs(ps, ids)
    gens = choice.choose(tiny_backend, ps, LETTERS, top_k=4)
    for nxt, g in zip(raw, gens, strict=True):
        best = int(np.argmax(nxt.logprobs))
        assert g.text == LETTERS[best] and g.token_ids == [ids[best]] and g.n_out == 1
        probs = np.exp(g.top_logprobs[0])
        assert probs.sum() == pytest.approx(1.0, abs=1e-5)  # renormalised over the options
        assert list(g.top_ids[0]) == [ids[i] for i in np.argsort(-nxt.logprobs, kind="stable")]
        assert g.logprobs[0] == pytest.approx(np.log(probs.max()), abs=1e-6)
        assert g.entropy[0] == pytest.approx(-(probs * np.log(probs)).sum(), abs=1e-5)
        assert 0.0 <= g.entropy[0] <= np.log(4) + 1e-6
        assert g.stop_reason == "stop" and g.total_s == g.prefill_s > 0


def test_respond_dispatches_on_options(tiny_backend) -> None:
    ps = prompts(tiny_backend)[:1]
    (picked,) = choice.respond(tiny_backend, ps, GenerationParams(8, options=LETTERS))
    (written,) = choice.respond(tiny_backend, ps, GenerationParams(8))
    assert picked.text in LETTERS and picked.n_out == 1
    assert written.token_ids == tiny_backend.generate(ps, GenerationParams(8))[0].token_ids


def test_verdict_accepts_the_same_option_only(tiny_backend) -> None:
    (a,) = choice.choose(tiny_backend, prompts(tiny_backend)[:1], LETTERS)
    same = choice.choice_verdict(a, a, cross_tokenizer=False)
    assert same.all_accepted and same.n_accepted == same.n_draft == 1
    assert same.accepted_fraction == 1.0 and same.seconds == a.total_s
    ids = dict(zip(LETTERS, choice.option_token_ids(tiny_backend.tokenizer, LETTERS), strict=True))
    letter = "B" if a.text != "B" else "C"
    other = dataclasses.replace(a, text=letter, token_ids=[ids[letter]])
    v = choice.choice_verdict(a, other, cross_tokenizer=True)
    assert not v.all_accepted and v.n_accepted == 0 and v.first_mismatch == 0
    assert v.verifier_token == ids[letter] and v.accepted_fraction == 0.0


def test_options_sharing_a_first_token_are_refused(tiny_backend) -> None:
    with pytest.raises(AsdError, match="share a first token"):
        choice.option_token_ids(tiny_backend.tokenizer, ("Alpha", "Alpha beta"))
