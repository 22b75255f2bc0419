"""Verification of a draft by a deeper stage (docs/design.md §3), same-tokenizer or across tokenizers.

The verifier runs once, teacher-forced, over its own prompt + the draft written in its own
tokens, and keeps the longest prefix on which its greedy token equals the draft's token. The
accepted tokens followed by the verifier's own token at the first mismatch are, by construction,
exactly the verifier's greedy output so far (``Verdict.continuation``): the pipeline resumes
generation from there and stays lossless.

Across tokenizers (SmolLM2 → Qwen) the draft is decoded to text, cut before any trailing
partial UTF-8 character, re-encoded with the verifier's tokenizer (plus the verifier's EOS if the
draft ended with EOS) and compared the same way, with one exception. A draft cut by length or
a stop string can end inside a word the verifier writes as one token: the draft ends in "wor",
the verifier would write " world". Re-encoded alone, the tail comes out as " wor" (or " w" +
"or"), a token the verifier never writes. So the tail after the first id mismatch is compared
on text: when the verifier's own token there writes the whole remaining draft text (and
possibly more), the tail *straddles* a verifier token and the draft is accepted whole. The
verdict then counts the tail as accepted (``n_accepted == n_draft``, ``first_mismatch`` None,
``straddle`` True, ``accepted_text`` = the whole draft text) but ``accepted_ids`` stop before
the tail and ``verifier_token`` is the verifier's full token there, so generation restarts
from the shorter prefix and the verifier re-writes its own token.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace

import numpy as np

from asd_core.ground.errors import AsdError
from asd_core.models.base import Backend, Generation, GenerationParams, Scoring, Tokenizer
from asd_core.models.common import decode_text, prefix_from_scoring

REPLACEMENT = "\ufffd"  # what a lossy UTF-8 decoder writes for bytes that are not a character


@dataclass(frozen=True)
class Draft:
    """What a drafting stage hands to the stage that verifies it."""

    stage: int  # index of the stage that wrote the draft (0 = cheapest)
    token_ids: tuple[int, ...]  # the drafter's generated ids, EOS included when it wrote one
    text: str  # the drafter's decoded output, special tokens removed
    ended_with_eos: bool  # the drafter stopped on its own EOS (not on length or a stop string)
    tokenizer_key: str  # :func:`tokenizer_key` of the drafter's tokenizer (equal keys: same ids)


@dataclass(frozen=True)
class Verdict:
    """The outcome of verifying one draft; positions count verifier tokens.

    Invariant: ``continuation`` (= ``accepted_ids`` + ``verifier_token``) is the verifier's own
    greedy output for the prompt, up to floating-point near-ties of the runtime.
    """

    n_draft: int  # draft length in verifier tokens (re-encoded across tokenizers, EOS included)
    n_accepted: int  # leading draft tokens the verifier agrees with, 0..n_draft
    accepted_ids: tuple[int, ...]  # verifier ids to resume from; n_accepted of them, or fewer
    # when a straddling tail was accepted on text (``straddle``)
    first_mismatch: int | None  # position of the first rejected draft token; None: all accepted
    verifier_token: int | None  # the verifier's greedy token after accepted_ids (at the mismatch,
    # at a straddling tail, or after the whole draft); None once accepted_ids end with its EOS
    accepted_fraction: float  # n_accepted / n_draft in [0, 1]; 0.0 for an empty draft
    seconds: float  # wall-clock s: this draft's share of the score pass + re-encoding, comparison
    cross_tokenizer: bool  # the draft was re-encoded from another tokenizer
    straddle: bool  # the tail after accepted_ids was accepted on text (cross-tokenizer only)
    accepted_text: str  # accepted draft text as the verifier decodes it, straddling tail included
    finished: bool  # the verifier's output ends with EOS within ``continuation``

    @property
    def all_accepted(self) -> bool:
        """Every draft token accepted (vacuously true for an empty draft)."""
        return self.first_mismatch is None

    @property
    def continuation(self) -> tuple[int, ...]:
        """The verifier's greedy output so far: resume generation after these ids."""
        extra = () if self.verifier_token is None else (self.verifier_token,)
        return self.accepted_ids + extra


# -- pure helpers -------------------------------------------------------------------------------
def accepted_prefix(
    draft_ids: Sequence[int], argmax_ids: Sequence[int] | np.ndarray, eos: Collection[int] = ()
) -> int:
    """Length of the longest prefix on which the draft agrees with the verifier's argmax.

    Args:
        draft_ids: (m,) draft token ids, in the verifier's vocabulary.
        argmax_ids: (m,) the verifier's greedy token at each draft position (teacher-forced).
        eos: the verifier's EOS ids; any two of them agree (both end the output).
    Returns:
        n in 0..m: draft_ids[:n] == argmax_ids[:n] and, if n < m, position n disagrees.
    """
    if len(draft_ids) != len(argmax_ids):
        raise ValueError(f"{len(draft_ids)} draft ids but {len(argmax_ids)} argmax ids")
    for i, (d, a) in enumerate(zip(draft_ids, argmax_ids, strict=True)):
        if d != a and not (d in eos and a in eos):
            return i
    return len(draft_ids)


def retokenize(text: str, tokenizer: Tokenizer) -> list[int]:
    """(n,) ids of ``text`` in ``tokenizer``'s vocabulary, no BOS/EOS or other specials added."""
    return list(tokenizer.encode(text, add_special_tokens=False))


def strip_partial_char(text: str) -> str:
    """``text`` without trailing U+FFFD characters.

    A byte-level draft cut at max_new_tokens can end inside a multi-byte UTF-8 character; the
    lossy decode writes U+FFFD for those bytes, which is not text the drafter wrote (and would
    re-encode to the three bytes of U+FFFD itself). A genuine trailing U+FFFD is indistinguishable
    and dropped too, which only shortens the draft.
    """
    return text.rstrip(REPLACEMENT)


def tokenizer_key(tokenizer: Tokenizer) -> str:
    """A short fingerprint of a tokenizer's vocabulary: equal keys mean ids mean the same text.

    Hashes the full token → id map when the tokenizer exposes one (Hugging Face ``get_vocab``,
    ~0.1 s for 150k tokens: compute it once per stage), else falls back to the class and length.
    """
    get_vocab = getattr(tokenizer, "get_vocab", None)
    if get_vocab is None:
        return f"{type(tokenizer).__name__}:{id(tokenizer)}"  # unknown kind: equal only to itself
    vocab: dict[str, int] = get_vocab()
    digest = hashlib.sha256()
    for token, idx in sorted(vocab.items(), key=lambda kv: kv[1]):
        digest.update(f"{idx}\t{token}\n".encode("utf-8", "surrogatepass"))
    return f"{len(vocab)}:{digest.hexdigest()[:16]}"


def draft_from_generation(stage: int, gen: Generation, key: str) -> Draft:
    """The :class:`Draft` of one :class:`Generation` of stage ``stage`` (tokenizer key ``key``)."""
    return Draft(
        stage=stage,
        token_ids=tuple(gen.token_ids),
        text=gen.text,
        ended_with_eos=gen.stop_reason == "eos",
        tokenizer_key=key,
    )


# -- verification -------------------------------------------------------------------------------
def _draft_in_verifier_ids(verifier: Backend, draft: Draft, same_tokenizer: bool) -> list[int]:
    """(m,) the draft in the verifier's vocabulary (re-encoded text + EOS across tokenizers)."""
    if same_tokenizer:
        return list(draft.token_ids)
    ids = retokenize(strip_partial_char(draft.text), verifier.tokenizer)
    if draft.ended_with_eos:
        eos = verifier.tokenizer.eos_token_id
        if eos is None:
            raise AsdError(
                f"stage '{verifier.stage.name}': its tokenizer has no EOS token, so a draft that "
                "ended with EOS cannot be verified across tokenizers"
            )
        ids.append(int(eos))
    return ids


def _straddles(tok: Tokenizer, ids: list[int], n: int, token: int) -> bool:
    """Does the verifier's ``token`` at position ``n`` write all of the draft's text after n?

    Both texts are decoded with the shared prefix ``ids[:n]`` so that byte-level pieces and
    leading-space conventions join up identically; only the tail differs.
    """
    draft_text = decode_text(tok, ids)
    verifier_text = decode_text(tok, ids[:n] + [token])
    head = decode_text(tok, ids[:n])
    return len(draft_text) > len(head) and verifier_text.startswith(draft_text)


def _verdict(
    verifier: Backend,
    ids: list[int],
    argmax: np.ndarray,
    next_argmax: int,
    draft: Draft,
    cross: bool,
    eos: frozenset[int],
) -> Verdict:
    """Compare one draft (``ids``, (m,)) with the verifier's teacher-forced ``argmax`` (m,)."""
    tok = verifier.tokenizer
    m = len(ids)
    greedy = [int(t) for t in argmax] + [int(next_argmax)]  # (m + 1,) verifier's own tokens
    n = accepted_prefix(ids, greedy[:m], eos)
    # The verifier's output ends at its first EOS: draft tokens after it are not accepted (only
    # possible when re-encoded text spells out an EOS token).
    ended = next((i + 1 for i, t in enumerate(greedy[:n]) if t in eos), None)
    n = n if ended is None else ended
    # Accepted ids are the verifier's own tokens (equal to the draft's, but for which EOS id).
    accepted = greedy[:n]
    straddle = (
        cross
        and ended is None
        and n < m
        and not draft.ended_with_eos  # the drafter finished its text: no tail is cut short
        and greedy[n] not in eos
        and _straddles(tok, ids, n, greedy[n])
    )
    n_accepted = m if straddle else n
    token = None if ended is not None else greedy[n]
    finished = ended is not None or token in eos
    text_ids = ids if straddle else accepted
    return Verdict(
        n_draft=m,
        n_accepted=n_accepted,
        accepted_ids=tuple(accepted),
        first_mismatch=None if n_accepted == m else n,
        verifier_token=token,
        accepted_fraction=n_accepted / m if m else 0.0,
        seconds=0.0,  # set by the caller, who holds the clock
        cross_tokenizer=cross,
        straddle=straddle,
        accepted_text=decode_text(tok, text_ids),
        finished=finished,
    )


def _flags(
    what: str,
    prompts: Sequence[Sequence[int]],
    drafts: Sequence[Draft],
    same_tokenizer: bool | Sequence[bool],
) -> list[bool]:
    """One same-tokenizer flag per draft, after checking the batch lines up."""
    if len(prompts) != len(drafts):
        raise AsdError(f"{what}: {len(prompts)} prompts but {len(drafts)} drafts")
    same = (
        [same_tokenizer] * len(drafts) if isinstance(same_tokenizer, bool) else list(same_tokenizer)
    )
    if len(same) != len(drafts):
        raise AsdError(f"{what}: {len(same)} same_tokenizer flags but {len(drafts)} drafts")
    return same


def verify_batch(
    verifier: Backend,
    prompts: Sequence[Sequence[int]],
    drafts: Sequence[Draft],
    same_tokenizer: bool | Sequence[bool],
    until_mismatch: bool = True,
) -> list[Verdict]:
    """Verify a batch of drafts with one ``score`` call.

    Args:
        verifier: the verifying stage's backend.
        prompts: B prompts, each already in the verifier's ids (its own chat template).
        drafts: B drafts, from any shallower stages.
        same_tokenizer: one flag for all drafts or B flags (drafts from several stages can join
            one verifier's batch); True means draft ids are already verifier ids.
        until_mismatch: let the runtime stop scoring a draft after the block holding its
            first rejected token (nothing later is read). False scores every draft token, as
            data generation did before (the old path of its benchmark).
    Returns:
        B verdicts, in order.
    """
    return _verify_scored(verifier, prompts, drafts, same_tokenizer, 0, until_mismatch)[0]


def _verify_scored(
    verifier: Backend,
    prompts: Sequence[Sequence[int]],
    drafts: Sequence[Draft],
    same_tokenizer: bool | Sequence[bool],
    top_k: int,
    until_mismatch: bool = True,
) -> tuple[list[Verdict], list[Scoring]]:
    """:func:`verify_batch`, also returning the scoring passes (with statistics if top_k > 0)."""
    same = _flags("verify", prompts, drafts, same_tokenizer)
    if not drafts:
        return [], []
    eos = verifier.eos
    conts, prep_s = [], []
    for d, s in zip(drafts, same, strict=True):
        start = time.perf_counter()
        conts.append(_draft_in_verifier_ids(verifier, d, s))
        prep_s.append(time.perf_counter() - start)
    # nothing after the first disagreement is read, so the runtime may stop scoring there
    scorings = verifier.score(prompts, conts, top_k, until_mismatch=until_mismatch)
    verdicts = []
    for ids, sc, d, s, prep in zip(conts, scorings, drafts, same, prep_s, strict=True):
        start = time.perf_counter()
        v = _verdict(verifier, ids, sc.argmax_ids, sc.next_argmax, d, not s, eos)
        verdicts.append(replace(v, seconds=prep + sc.seconds + time.perf_counter() - start))
    return verdicts, scorings


def verify(
    verifier: Backend, prompt_ids: Sequence[int], draft: Draft, *, same_tokenizer: bool
) -> Verdict:
    """Verify one draft after the verifier's own ``prompt_ids``; see :func:`verify_batch`.

    An empty draft (zero tokens, or nothing left after re-encoding) gives n_accepted 0,
    first_mismatch None and the verifier's first token after the prompt.
    """
    (v,) = verify_batch(verifier, [prompt_ids], [draft], same_tokenizer)
    return v


# -- escalation: verify, then continue ----------------------------------------------------------
@dataclass
class Escalation:
    """A deeper stage's output obtained from a shallower stage's draft (docs/design.md §1, §3)."""

    verdict: Verdict  # how much of the draft the deeper stage accepted
    output: Generation  # the deeper stage's full greedy output: accepted prefix + its own tokens
    verify_s: float  # wall-clock s of the verification pass (re-encoding and comparison included)
    resume_s: float  # wall-clock s of generating the rest after the accepted prefix


def escalate(
    verifier: Backend,
    prompts: Sequence[Sequence[int]],
    drafts: Sequence[Draft],
    same_tokenizer: bool | Sequence[bool],
    params: GenerationParams,
) -> list[Escalation]:
    """Verify each draft, keep the accepted prefix and let the verifier write the rest.

    Lossless: ``output`` equals the verifier's own greedy output (``verifier.generate``) up to
    floating-point near-ties of batched scoring (none with ``exact_scoring``). Inputs go in
    groups of the verifier's ``max_batch`` (1 when it has none): a runtime with one key/value
    slot per sequence then finds, in ``resume``, the cache each input's verification pass left.
    An empty draft is verified vacuously and the verifier writes everything.
    """
    same = _flags("escalate", prompts, drafts, same_tokenizer)
    top_k = max(params.top_k, 1)
    group = max(1, int(getattr(verifier, "max_batch", 1)))
    heard = getattr(verifier, "listener", None)  # indexes the whole call: offset each group's
    results = []
    for lo in range(0, len(prompts), group):
        part = slice(lo, lo + group)
        ps = list(prompts[part])
        verdicts, scorings = _verify_scored(verifier, ps, drafts[part], same[part], top_k)
        prefixes = [
            prefix_from_scoring(sc, v.continuation)
            for v, sc in zip(verdicts, scorings, strict=True)
        ]
        start = time.perf_counter()
        if heard is not None:
            verifier.listener = lambda i, tokens, lo=lo: heard(lo + i, tokens)  # type: ignore[attr-defined]
        try:
            outputs = verifier.resume(ps, prefixes, params)
        finally:
            if heard is not None:
                verifier.listener = heard  # type: ignore[attr-defined]
        wall = time.perf_counter() - start
        for v, out in zip(verdicts, outputs, strict=True):
            # several at once: each output's own share, as the backend times it
            results.append(Escalation(v, out, v.seconds, wall if len(ps) == 1 else out.total_s))
    return results
