"""Draft verification (docs/design.md §3) on tiny random models with two different tokenizers.

The bytes model (256 byte tokens, no merges) and the bpe model (512 tokens with trained merges)
give a cross-tokenizer hop like SmolLM2 → Qwen. The central property checked throughout is
losslessness: ``Verdict.continuation`` is exactly what the verifier writes by itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, note, settings
from hypothesis import strategies as st

from asd_core.decoding.verify import (
    Draft,
    Verdict,
    accepted_prefix,
    draft_from_generation,
    retokenize,
    strip_partial_char,
    tokenizer_key,
    verify,
    verify_batch,
)
from asd_core.ground.config import StageConfig
from asd_core.ground.errors import AsdError
from asd_core.models.base import Backend, GenerationParams, Scoring
from asd_core.models.common import chat_prompt_ids
from asd_core.models.registry import load_backend
from asd_core.models.tiny import make_tokenizer
from tests.conftest import real_gguf

AWKWARD = [
    "smile 😀 rocket 🚀 family 👩‍👩‍👧 flag 🇯🇵 skin 👍🏽",
    "数学 问题 答案 是 四十二。日本語のテキスト、한국어",
    "runs    of     spaces  and a trailing space ",
    "\ttab\t\tseparated\tvalues\n",
    "def f(x):\n    if x:\n        return [i  for i in range(x)]\n\treturn None\n",
    "combining: e\u0301 a\u0308 n\u0303 and precomposed é ä ñ",
    "line\r\nendings\rmixed\n\n\nblank",
    "nbsp\u00a0and zero\u200bwidth and rtl \u05e9\u05dc\u05d5\u05dd",
    " leading space",
    "a",
]
PROMPTS = ["What is 6 times 7?", "def add(a, b):", "Hello there", "数学 问题", "🚀 ok", "A B C D"]
texts = st.text(min_size=1, max_size=30)
TOKENIZERS = {kind: make_tokenizer(kind) for kind in ("bytes", "bpe")}  # no model: cheap


# -- fixtures and helpers -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def bytes_model(tiny_backend) -> Backend:
    """The session's tiny bytes model (layers 2, hidden 64, seed 1, float32)."""
    return tiny_backend


@pytest.fixture(scope="module")
def bpe_model(tmp_path_factory: pytest.TempPathFactory):
    stage = StageConfig(
        name="tiny-bpe",
        source="tiny:layers:2,hidden:64,seed:5,tokenizer:bpe",
        runtime="transformers",
        dtype="float32",
        context_length=1024,
    )
    backend = load_backend(stage, tmp_path_factory.mktemp("models-bpe"))
    yield backend
    backend.close()


def chat(backend, text: str) -> list[int]:
    return chat_prompt_ids(backend.tokenizer, text)


def greedy(backend: Backend, prompt: list[int], n: int) -> list[int]:
    (gen,) = backend.generate([prompt], GenerationParams(max_new_tokens=n))
    return gen.token_ids


def draft_of(backend: Backend, prompt: list[int], n: int, stage: int = 0) -> Draft:
    (gen,) = backend.generate([prompt], GenerationParams(max_new_tokens=n))
    return draft_from_generation(stage, gen, tokenizer_key(backend.tokenizer))


def text_draft(tokenizer: Any, text: str, ended_with_eos: bool = False) -> Draft:
    """``text`` as drafted in ``tokenizer``'s ids (what a drafter on that tokenizer hands over)."""
    ids = retokenize(text, tokenizer) + ([tokenizer.eos_token_id] if ended_with_eos else [])
    return Draft(
        stage=0,
        token_ids=tuple(ids),
        text=tokenizer.decode(ids, skip_special_tokens=True),
        ended_with_eos=ended_with_eos,
        tokenizer_key=tokenizer_key(tokenizer),
    )


def clean_prefix(tokenizer: Any, ids: list[int]) -> int:
    """Longest k: ids[:k] has no special token, decodes to whole characters, and re-encodes to
    itself — a greedy output that survives the decode → re-encode round trip unchanged."""
    special = set(tokenizer.all_special_ids)
    for k in range(len(ids), -1, -1):
        head = ids[:k]
        text = tokenizer.decode(head, skip_special_tokens=True)
        if not special & set(head) and "\ufffd" not in text and retokenize(text, tokenizer) == head:
            return k
    return 0


def check_consistent(v: Verdict) -> None:
    """Field relations every verdict satisfies."""
    assert 0 <= v.n_accepted <= v.n_draft
    assert v.accepted_fraction == (v.n_accepted / v.n_draft if v.n_draft else 0.0)
    assert 0.0 <= v.accepted_fraction <= 1.0
    assert (v.first_mismatch is None) == (v.n_accepted == v.n_draft)
    if v.first_mismatch is not None:
        assert v.first_mismatch == v.n_accepted == len(v.accepted_ids)
    if v.straddle:
        assert v.cross_tokenizer and v.first_mismatch is None
        assert len(v.accepted_ids) < v.n_draft
    else:
        assert len(v.accepted_ids) == v.n_accepted
    assert (v.verifier_token is None) <= v.finished
    assert v.seconds > 0


def check_lossless(verifier: Backend, prompt: list[int], v: Verdict) -> None:
    """The continuation is the verifier's own greedy output, token for token."""
    assert greedy(verifier, prompt, len(v.continuation)) == list(v.continuation)


# -- pure helpers -------------------------------------------------------------------------------
@given(st.lists(st.integers(0, 5), max_size=12), st.lists(st.integers(0, 5), max_size=12))
def test_accepted_prefix_is_the_agreeing_prefix(a: list[int], b: list[int]) -> None:
    m = min(len(a), len(b))
    n = accepted_prefix(a[:m], b[:m])
    assert 0 <= n <= m
    assert a[:n] == b[:n]
    assert n == m or a[n] != b[n]


def test_accepted_prefix_treats_eos_ids_alike() -> None:
    assert accepted_prefix([1, 2, 7], [1, 2, 8]) == 2
    assert accepted_prefix([1, 2, 7], [1, 2, 8], eos={7, 8}) == 3
    assert accepted_prefix([], []) == 0
    with pytest.raises(ValueError, match="2 draft ids but 1"):
        accepted_prefix([1, 2], [1])


@pytest.mark.parametrize("kind", ["bytes", "bpe"])
@pytest.mark.parametrize("text", AWKWARD)
def test_retokenize_round_trips_awkward_text(kind: str, text: str) -> None:
    tok = TOKENIZERS[kind]
    ids = retokenize(text, tok)
    assert tok.decode(ids) == text
    assert not set(ids) & set(tok.all_special_ids)  # nothing added


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40))
def test_retokenize_round_trips_any_text(text: str) -> None:
    for tok in TOKENIZERS.values():
        assert tok.decode(retokenize(text, tok)) == text


@pytest.mark.parametrize("kind", ["bytes", "bpe"])
def test_strip_partial_char_drops_a_cut_character(kind: str) -> None:
    tok = TOKENIZERS[kind]
    text = "ok 数🚀"
    ids = retokenize(text, tok)
    full = len(text.encode())
    cut_texts = [tok.decode(ids[:k]) for k in range(len(ids) + 1)]
    stripped = [strip_partial_char(t) for t in cut_texts]
    assert stripped[-1] == text and len(ids) <= full
    for s in stripped:
        assert "\ufffd" not in s and text.startswith(s)  # only whole characters survive
    assert strip_partial_char("abc") == "abc" and strip_partial_char("") == ""
    assert strip_partial_char("ab\ufffd\ufffd") == "ab"


def test_tokenizer_key_tells_tokenizers_apart() -> None:
    keys = {kind: tokenizer_key(tok) for kind, tok in TOKENIZERS.items()}
    assert keys["bytes"] != keys["bpe"]
    assert tokenizer_key(make_tokenizer("bpe")) == keys["bpe"]  # a fresh copy: same key


# -- same tokenizer -----------------------------------------------------------------------------
@settings(max_examples=12, deadline=None)
@given(texts, st.integers(1, 12))
def test_own_greedy_output_is_accepted_whole(bytes_model, text: str, n: int) -> None:
    prompt = chat(bytes_model, text)
    draft = draft_of(bytes_model, prompt, n)
    v = verify(bytes_model, prompt, draft, same_tokenizer=True)
    check_consistent(v)
    assert v.all_accepted and v.n_accepted == v.n_draft == len(draft.token_ids)
    assert v.accepted_ids == draft.token_ids and not v.cross_tokenizer and not v.straddle
    if draft.ended_with_eos:
        assert v.finished and v.verifier_token is None
    else:  # the token it would write next
        assert v.verifier_token == greedy(bytes_model, prompt, n + 1)[n]
    check_lossless(bytes_model, prompt, v)


@settings(max_examples=12, deadline=None)
@given(texts, st.integers(0, 11), st.integers(1, 255))
def test_draft_differing_at_j_is_accepted_up_to_j(
    bytes_model, text: str, j: int, shift: int
) -> None:
    prompt = chat(bytes_model, text)
    own = greedy(bytes_model, prompt, 12)
    j = min(j, len(own) - 1)
    vocab = len(bytes_model.tokenizer)
    wrong = (own[j] + shift) % vocab
    draft_ids = own[:j] + [wrong] + own[j + 1 :]
    draft = Draft(0, tuple(draft_ids), "", False, tokenizer_key(bytes_model.tokenizer))
    v = verify(bytes_model, prompt, draft, same_tokenizer=True)
    check_consistent(v)
    assert v.n_accepted == v.first_mismatch == j
    assert list(v.accepted_ids) == own[:j] and v.verifier_token == own[j]
    check_lossless(bytes_model, prompt, v)


# -- across tokenizers --------------------------------------------------------------------------
@settings(max_examples=12, deadline=None)
@given(texts, st.integers(1, 16))
def test_bytes_draft_verified_by_bpe_is_lossless(bytes_model, bpe_model, text: str, n: int) -> None:
    draft = draft_of(bytes_model, chat(bytes_model, text), n)
    prompt = chat(bpe_model, text)
    v = verify(bpe_model, prompt, draft, same_tokenizer=False)
    note(f"draft {draft.text!r}: {v}")
    check_consistent(v)
    expected = retokenize(strip_partial_char(draft.text), bpe_model.tokenizer)
    assert v.n_draft == len(expected) + draft.ended_with_eos and v.cross_tokenizer
    assert v.accepted_text == bpe_model.tokenizer.decode(
        expected[: v.n_accepted] if not v.straddle else expected, skip_special_tokens=True
    )
    check_lossless(bpe_model, prompt, v)


@pytest.mark.parametrize("direction", ["bpe-verifies", "bytes-verifies"])
@settings(max_examples=10, deadline=None)
@given(text=texts)
def test_verifier_text_drafted_in_other_tokenizer_is_accepted_whole(
    bytes_model, bpe_model, direction: str, text: str
) -> None:
    verifier, drafter = (
        (bpe_model, bytes_model) if direction == "bpe-verifies" else (bytes_model, bpe_model)
    )
    prompt = chat(verifier, text)
    own = greedy(verifier, prompt, 16)
    k = clean_prefix(verifier.tokenizer, own)  # the part a text round trip keeps intact
    note(f"greedy {own}, clean prefix {k}")
    draft = text_draft(drafter.tokenizer, verifier.tokenizer.decode(own[:k]))
    v = verify(verifier, prompt, draft, same_tokenizer=False)
    check_consistent(v)
    assert v.all_accepted and v.n_accepted == v.n_draft == k and not v.straddle
    assert list(v.accepted_ids) == own[:k]
    assert v.verifier_token == greedy(verifier, prompt, k + 1)[k]
    assert v.accepted_text == draft.text


def test_bytes_verifier_accepts_long_texts(bytes_model, bpe_model) -> None:
    """Any valid text is canonical in the bytes tokenizer, so whole outputs round trip."""
    accepted = []
    for text in PROMPTS:
        prompt = chat(bytes_model, text)
        own = greedy(bytes_model, prompt, 16)
        k = clean_prefix(bytes_model.tokenizer, own)
        draft = text_draft(bpe_model.tokenizer, bytes_model.tokenizer.decode(own[:k]))
        v = verify(bytes_model, prompt, draft, same_tokenizer=False)
        assert v.all_accepted and v.n_accepted == k
        accepted.append(k)
    assert max(accepted) >= 4, accepted


def test_straddling_tail_is_accepted_on_text(bpe_model) -> None:
    """A draft cut inside a multi-character verifier token is accepted whole, on text."""
    tok = bpe_model.tokenizer
    found = 0
    for text in PROMPTS:
        prompt = chat(bpe_model, text)
        own = greedy(bpe_model, prompt, 16)
        k = clean_prefix(tok, own)
        for j in range(k):
            piece = tok.decode(own[j : j + 1])
            if len(piece) < 2 or "\ufffd" in piece:  # a whole multi-character token only
                continue
            cut = tok.decode(own[:j]) + piece[:-1]
            if retokenize(cut, tok)[:j] != own[:j]:
                continue
            v = verify(
                bpe_model, prompt, text_draft(TOKENIZERS["bytes"], cut), same_tokenizer=False
            )
            check_consistent(v)
            assert v.straddle and v.all_accepted and v.accepted_fraction == 1.0
            assert list(v.accepted_ids) == own[:j] and v.verifier_token == own[j]
            assert v.accepted_text == cut
            check_lossless(bpe_model, prompt, v)
            found += 1
    if not found:
        pytest.skip("the random model wrote no multi-character token")


# -- scripted verifier: exact control over the verifier's greedy output ---------------------------
class Scripted:
    """A verifier whose greedy output is ``target`` whatever it was fed (then EOS forever)."""

    def __init__(self, tokenizer: Any, target: Sequence[int]):
        self.tokenizer = tokenizer
        self.target = list(target)
        self.eos = frozenset({tokenizer.eos_token_id})
        self.stage = StageConfig(name="scripted", source="x", runtime="transformers")
        self.calls = 0

    def _at(self, i: int) -> int:
        return self.target[i] if i < len(self.target) else self.tokenizer.eos_token_id

    def score(
        self,
        prompts: Sequence[Sequence[int]],
        continuations: Sequence[Sequence[int]],
        top_k: int = 0,
        until_mismatch: bool = False,
    ):
        self.calls += 1
        return [
            Scoring(
                argmax_ids=np.array([self._at(i) for i in range(len(c))], dtype=np.int64),
                logprobs=np.zeros(len(c), np.float32),
                next_argmax=self._at(len(c)),
                seconds=1e-3,
            )
            for c in continuations
        ]


def cross(verifier: Any, draft: Draft) -> Verdict:
    """Verify ``draft`` across tokenizers with a scripted verifier (the prompt does not matter)."""
    return verify(verifier, [1], draft, same_tokenizer=False)


def test_scripted_straddle_in_one_and_in_two_tokens() -> None:
    bpe, byte = TOKENIZERS["bpe"], TOKENIZERS["bytes"]
    target = retokenize("Hello world! The answer is 42.", bpe)
    verifier = Scripted(bpe, target)
    world = retokenize(" world", bpe)
    assert len(world) == 1, "the bpe corpus should have merged ' world'"
    n_hello = len(retokenize("Hello", bpe))
    for cut in ("Hello wor", "Hello w", "Hello world"):
        v = cross(verifier, text_draft(byte, cut))
        check_consistent(v)
        assert v.all_accepted and v.accepted_text == cut
        assert v.straddle == (cut != "Hello world")
        # the verifier re-writes " world" itself after a straddle, and goes on after it otherwise
        assert list(v.continuation) == target[: n_hello + (1 if v.straddle else 2)]
    # the tail does not fit the verifier's token: a plain mismatch
    v = cross(verifier, text_draft(byte, "Hello wax"))
    assert not v.straddle and v.first_mismatch == n_hello and v.verifier_token == world[0]
    # a draft that ended with EOS has no straddling tail: its text is complete
    v = cross(verifier, text_draft(byte, "Hello wor", True))
    assert not v.straddle and v.first_mismatch == n_hello
    assert v.n_draft == len(retokenize("Hello wor", bpe)) + 1


def test_scripted_eos_draft_accepted_whole_and_finished() -> None:
    bpe, byte = TOKENIZERS["bpe"], TOKENIZERS["bytes"]
    target = retokenize("The answer is 42.", bpe) + [bpe.eos_token_id]
    verifier = Scripted(bpe, target)
    v = cross(verifier, text_draft(byte, "The answer is 42.", True))
    check_consistent(v)
    assert v.all_accepted and v.finished and v.verifier_token is None
    assert list(v.continuation) == target and v.accepted_text == "The answer is 42."
    # the verifier wants to stop where the draft goes on: EOS is its token, output finished
    v = cross(verifier, text_draft(byte, "The answer is 42. Or 43"))
    assert v.first_mismatch == len(target) - 1 and v.verifier_token == bpe.eos_token_id
    assert v.finished and list(v.continuation) == target


def test_scripted_verifier_output_ends_at_its_eos() -> None:
    """Draft text that spells out the EOS token: nothing after the verifier's EOS counts."""
    bpe = TOKENIZERS["bpe"]
    target = retokenize("Hi", bpe) + [bpe.eos_token_id]
    v = cross(Scripted(bpe, target), Draft(0, (), "Hi<|im_end|> more", False, "other"))
    check_consistent(v)
    assert v.first_mismatch == v.n_accepted == len(target) and v.n_draft > len(target)
    assert v.finished and v.verifier_token is None and list(v.continuation) == target


def test_scripted_partial_character_is_not_drafted() -> None:
    bpe, byte = TOKENIZERS["bpe"], TOKENIZERS["bytes"]
    target = retokenize("答案 是 四十二", bpe)
    verifier = Scripted(bpe, target)
    ids = retokenize("答案 是 四", byte)[:-1]  # cut inside the last character
    text = byte.decode(ids)
    assert text.endswith("\ufffd")
    draft = Draft(0, tuple(ids), text, False, tokenizer_key(byte))
    v = cross(verifier, draft)
    check_consistent(v)
    assert v.all_accepted and "\ufffd" not in v.accepted_text
    assert v.accepted_text == "答案 是 "


# -- empty drafts, batches, errors ----------------------------------------------------------------
@pytest.mark.parametrize("same", [True, False])
def test_empty_draft_gives_the_first_verifier_token(bpe_model, same: bool) -> None:
    prompt = chat(bpe_model, "q")
    first = greedy(bpe_model, prompt, 1)[0]
    key = tokenizer_key(bpe_model.tokenizer)
    for draft in (Draft(0, (), "", False, key), Draft(0, (3,), "\ufffd", False, "other")):
        if same and draft.token_ids:
            continue
        v = verify(bpe_model, prompt, draft, same_tokenizer=same)
        check_consistent(v)
        assert v.n_draft == v.n_accepted == 0 and v.accepted_fraction == 0.0
        assert v.first_mismatch is None and v.accepted_ids == () and v.accepted_text == ""
        assert v.verifier_token == first and v.continuation == (first,)


def test_empty_text_that_ended_with_eos_is_just_eos(bpe_model) -> None:
    prompt = chat(bpe_model, "q")
    v = verify(bpe_model, prompt, Draft(0, (2,), "", True, "other"), same_tokenizer=False)
    check_consistent(v)
    assert v.n_draft == 1 and v.accepted_text == ""
    check_lossless(bpe_model, prompt, v)


def test_batch_is_one_score_call_and_equals_one_at_a_time(bytes_model, bpe_model) -> None:
    prompts = [chat(bpe_model, t) for t in PROMPTS[:4]]
    drafts = [
        draft_of(bpe_model, prompts[0], 8, stage=1),  # same tokenizer
        draft_of(bytes_model, chat(bytes_model, PROMPTS[1]), 8),  # across
        Draft(0, (), "", False, "other"),  # empty
        draft_of(bytes_model, chat(bytes_model, PROMPTS[3]), 12),
    ]
    same = [True, False, False, False]
    calls = []

    class Counting:
        def __init__(self, inner: Backend):
            self.inner = inner

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

        def score(self, p, c, top_k=0, until_mismatch=False):
            calls.append((len(p), until_mismatch))
            return self.inner.score(p, c, top_k, until_mismatch)

    batch = verify_batch(Counting(bpe_model), prompts, drafts, same)
    assert calls == [(4, True)]  # the runtime may stop after the first mismatch ...
    whole = verify_batch(Counting(bpe_model), prompts, drafts, same, until_mismatch=False)
    assert calls[1] == (4, False)  # ... unless whole drafts are asked for (the old path)
    assert [v.n_accepted for v in whole] == [v.n_accepted for v in batch]
    single = [
        verify(bpe_model, p, d, same_tokenizer=s)
        for p, d, s in zip(prompts, drafts, same, strict=True)
    ]
    for b, s in zip(batch, single, strict=True):
        check_consistent(b)
        assert b.continuation == s.continuation and b.n_accepted == s.n_accepted
        assert b.accepted_text == s.accepted_text and b.straddle == s.straddle
    assert verify_batch(bpe_model, [], [], True) == []


def test_bad_inputs_are_clear(bpe_model) -> None:
    d = Draft(0, (5,), "x", False, "k")
    with pytest.raises(AsdError, match="2 prompts but 1 drafts"):
        verify_batch(bpe_model, [[5], [6]], [d], True)
    with pytest.raises(AsdError, match="1 same_tokenizer flags but 2 drafts"):
        verify_batch(bpe_model, [[5], [6]], [d, d], [True])
    with pytest.raises(AsdError, match="empty"):
        verify(bpe_model, [], d, same_tokenizer=True)
    with pytest.raises(AsdError, match="context length"):
        verify(bpe_model, [5] * 1000, Draft(0, (5,) * 100, "", False, "k"), same_tokenizer=True)


# -- real weights: SmolLM2 drafts, Qwen2.5-Coder-0.5B verifies ------------------------------------
REAL_PROMPTS = [
    "What is the capital of Australia?",
    "What is 17 * 23? Answer with the number only.",
    "Write a Python function `square(x)` that returns x squared.",
]


@pytest.mark.integration
def test_smollm2_to_qwen_hop(models_dir: Path) -> None:
    """SmolLM2's drafts verified by Qwen; Qwen's own text, drafted in SmolLM2's tokens (whole,
    and cut inside its last multi-character token), is accepted whole (pytest -s prints all)."""

    def stage(asset: str) -> StageConfig:
        return StageConfig(
            name=asset, source=f"package:{asset}", runtime="llamacpp", context_length=1024
        )

    smol_name, qwen_name = "smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct"
    real_gguf(models_dir, smol_name)
    real_gguf(models_dir, qwen_name)
    smol = load_backend(stage(smol_name), models_dir)
    try:
        gens = smol.generate(
            [chat(smol, t) for t in REAL_PROMPTS], GenerationParams(max_new_tokens=24)
        )
        smol_tok, key = smol.tokenizer, tokenizer_key(smol.tokenizer)
    finally:
        smol.close()
    qwen = load_backend(stage(qwen_name), models_dir)
    qtok: Any = qwen.tokenizer
    try:
        prompts = [chat(qwen, t) for t in REAL_PROMPTS]
        drafts = [draft_from_generation(0, g, key) for g in gens]
        verdicts = verify_batch(qwen, prompts, drafts, same_tokenizer=False)
        for p, d, v in zip(prompts, drafts, verdicts, strict=True):
            check_consistent(v)
            own = greedy(qwen, p, len(v.continuation))
            print(
                f"\n{v.n_accepted}/{v.n_draft} accepted ({v.accepted_fraction:.2f}, "
                f"{v.seconds * 1e3:.0f} ms, straddle={v.straddle}): draft {d.text!r} "
                f"-> accepted {v.accepted_text!r}; Qwen writes {qtok.decode(own)!r}"
            )
            # lossless up to llama.cpp's batch-vs-step near-ties (see test_llamacpp.py)
            assert own == list(v.continuation)
        assert sum(v.n_accepted for v in verdicts) > 0

        straddles = 0
        for p in prompts:
            (gen,) = qwen.generate([p], GenerationParams(max_new_tokens=16))
            own_ids = gen.token_ids[:-1] if gen.stop_reason == "eos" else gen.token_ids
            whole = text_draft(smol_tok, gen.text, ended_with_eos=gen.stop_reason == "eos")
            v = verify(qwen, p, whole, same_tokenizer=False)
            assert v.all_accepted and not v.straddle and v.accepted_text == gen.text
            long = [i for i, t in enumerate(own_ids) if len(qtok.decode([t]).strip()) >= 2]
            if not long:  # digits are one token each in Qwen: nothing to cut inside
                continue
            j = long[-1]
            straddles += 1
            cut = qtok.decode(own_ids[:j]) + qtok.decode([own_ids[j]])[:-1]
            v = verify(qwen, p, text_draft(smol_tok, cut), same_tokenizer=False)
            print(f"cut {cut!r}: straddle={v.straddle}, then {qtok.decode([v.verifier_token])!r}")
            assert v.all_accepted and v.straddle and v.verifier_token == own_ids[j]
        assert straddles > 0
    finally:
        qwen.close()
