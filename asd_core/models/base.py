"""The one interface every runtime implements, and the typed results it hands over.

A backend holds one stage's model. ``generate`` writes greedy continuations and reports, per
generated token, what the features of docs/design.md §4 need; ``score`` runs the model teacher-forced
over a given continuation and reports, per position, the model's own greedy token — which is
all that verification (docs/design.md §3) needs. Generation and scoring of one stage use the same
runtime and weights, so a draft equal to the stage's own output is accepted whole.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

from asd_core.ground.config import StageConfig

StopReason = Literal["eos", "stop", "length"]
# rows an early-exit verification pass scores per step: it stops after the block holding the
# first mismatch (``Backend.score(until_mismatch=True)``; replay costs it the same way)
VERIFY_BLOCK = 32
TokenIds = Sequence[int]
# called by a runtime that supports it after each token it writes, with the sequence's index in
# the call and its output so far (a resumed prefix included); returning False ends that sequence
# early (its caller has gone). What a server streams and cancels through (:func:`listening`).
TokenListener = Callable[[int, Sequence[int]], bool]


@dataclass(frozen=True)
class GenerationParams:
    """How to generate; always greedy (temperature 0)."""

    max_new_tokens: int  # hard cap on generated tokens
    stop_strings: tuple[str, ...] = ()  # stop once the decoded output contains one of these
    top_k: int = 5  # alternatives reported per generated token (top-k ids and logprobs)
    ignore_eos: bool = False  # keep going past EOS (profiling needs exact output lengths)
    return_hidden: bool = False  # also return the mean-pooled final-layer hidden state
    options: tuple[str, ...] = ()  # multiple choice: pick one of these in one pass instead of
    # writing (asd_core.decoding.choice.respond dispatches; a backend's generate ignores this)


@dataclass
class Generation:
    """One prompt's greedy output with per-token statistics.

    ``n`` below is the number of generated tokens; the EOS token, when produced, is included
    in ``token_ids`` (it is part of the model's greedy output and is verified like any other).
    """

    prompt_ids: list[int]  # tokens fed to the model
    token_ids: list[int]  # generated tokens, length n
    text: str  # decoded generated text, special tokens removed
    logprobs: np.ndarray  # (n,) float32, log p(chosen token), nats
    top_ids: np.ndarray  # (n, k) int64, the k most probable tokens at each step
    top_logprobs: np.ndarray  # (n, k) float32, their log-probabilities, nats
    entropy: np.ndarray  # (n,) float32, entropy of the next-token distribution, nats
    stop_reason: StopReason  # why generation ended
    prefill_s: float  # wall-clock seconds until the first token's logits were ready
    total_s: float  # wall-clock seconds for the whole prompt, including prefill
    hidden_mean: np.ndarray | None = None  # (d_model,) float32 when requested

    @property
    def n_out(self) -> int:
        return len(self.token_ids)


@dataclass
class Scoring:
    """A teacher-forced pass of the model over prompt + continuation (``m`` tokens).

    With ``score(..., top_k=k)``, k > 0, the pass also reports the next-token statistics of
    every row, the last one included: what :class:`Prefix` needs to resume generation after a
    verified prefix without recomputing it.
    """

    argmax_ids: np.ndarray  # (m,) int64, the model's greedy token at each continuation position
    # (-1 after an early stop: ``score(until_mismatch=True)``)
    logprobs: np.ndarray  # (m,) float32, log p(given continuation token), nats (NaN if not scored)
    next_argmax: int  # the model's greedy token after the whole continuation (what it writes next;
    # -1 after an early stop)
    seconds: float  # wall-clock seconds of this sequence's share of the pass
    top_ids: np.ndarray | None = None  # (m + 1, k) int64, most probable tokens of each row
    top_logprobs: np.ndarray | None = None  # (m + 1, k) float32, their log-probabilities, nats
    entropy: np.ndarray | None = None  # (m + 1,) float32, next-token entropy of each row, nats


@dataclass
class NextTokens:
    """The model's next-token distribution right after a prompt, read at given tokens.

    What a multiple-choice stage needs (``asd_core.decoding.choice``): one pass over the prompt, then the
    log-probability of each option's first token.
    """

    logprobs: np.ndarray  # (c,) float32, log p(token_ids[i]) under the full distribution, nats
    argmax: int  # the model's greedy next token over the whole vocabulary
    seconds: float  # wall-clock seconds of this prompt's pass


@dataclass
class Prefix:
    """Output tokens already known to be the model's own greedy choice, with their statistics.

    Built from a verification pass (``asd_core.decoding.verify``): ``resume`` starts the output with these
    tokens and generates only what follows, reusing the prompt's and prefix's computation where
    the runtime keeps it.
    """

    token_ids: list[int]  # (n,) the model's greedy tokens right after the prompt
    logprobs: np.ndarray  # (n,) float32, their log-probabilities, nats
    top_ids: np.ndarray  # (n, k) int64, the k most probable tokens at each step
    top_logprobs: np.ndarray  # (n, k) float32, their log-probabilities, nats
    entropy: np.ndarray  # (n,) float32, next-token entropy at each step, nats


@dataclass
class StageInfo:
    """What a loaded backend reports about itself (for provenance and the README)."""

    name: str
    runtime: str
    weights: str  # resolved file or folder or hub id
    dtype: str
    load_s: float  # seconds to construct the backend
    extra: dict[str, str] = field(default_factory=dict)


@runtime_checkable
class Tokenizer(Protocol):
    """The subset of a Hugging Face tokenizer the core uses."""

    eos_token_id: int | None

    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...

    def decode(self, token_ids: Sequence[int], skip_special_tokens: bool = ...) -> str: ...


@runtime_checkable
class Backend(Protocol):
    """One stage's model on one runtime."""

    stage: StageConfig
    tokenizer: Tokenizer
    info: StageInfo
    eos: frozenset[int]  # ids that end generation (the same set on every runtime of a model)

    def generate(self, prompts: Sequence[TokenIds], params: GenerationParams) -> list[Generation]:
        """Greedy continuations of tokenised prompts, one :class:`Generation` each."""
        ...

    def score(
        self,
        prompts: Sequence[TokenIds],
        continuations: Sequence[TokenIds],
        top_k: int = 0,
        until_mismatch: bool = False,
    ) -> list[Scoring]:
        """Teacher-forced argmax and log-probs of each continuation after its prompt.

        ``top_k`` > 0 also fills the per-row statistics (:class:`Scoring`). ``until_mismatch``
        allows a runtime to stop scoring a continuation some rows after the first position
        where its greedy token differs (all rows up to and including that one are filled;
        later ones hold -1 / NaN); a runtime may also score everything.
        """
        ...

    def next_logprobs(
        self, prompts: Sequence[TokenIds], token_ids: Sequence[int]
    ) -> list[NextTokens]:
        """Log-probabilities of ``token_ids`` as the next token after each prompt (one pass each)."""
        ...

    def resume(
        self, prompts: Sequence[TokenIds], prefixes: Sequence[Prefix], params: GenerationParams
    ) -> list[Generation]:
        """Greedy outputs that start with the given prefixes (verified, not re-generated).

        ``Generation.token_ids`` include the prefix and count against ``max_new_tokens``; EOS,
        stop strings and the length cap apply to the prefix too. Timing covers only the work
        done here.
        """
        ...

    def close(self) -> None:
        """Free the model (and engine processes, if any)."""
        ...


@contextmanager
def listening(backend: Any, listener: TokenListener | None) -> Iterator[bool]:
    """Attach ``listener`` to ``backend`` for the calls inside the block (blocks nest: the
    listener before it is back afterwards).

    Yields whether the backend reports tokens as it writes them (one with a ``listener``
    attribute); one that does not simply returns its outputs when done.
    """
    if listener is None or not hasattr(backend, "listener"):
        yield False
        return
    before = backend.listener
    backend.listener = listener
    try:
        yield True
    finally:
        backend.listener = before
