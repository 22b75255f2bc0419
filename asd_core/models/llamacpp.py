"""The llama.cpp backend: GGUF weights on CPU through llama-cpp-python's low-level API.

Token ids go to llama.cpp directly (``self.tokenizer`` is the Hugging Face tokenizer read out of
the GGUF), so tokenisation is identical across runtimes. Instead of llama.cpp's sampler we read
the full logits row of every step, which is what the per-token statistics need.

**Batching.** The context holds ``StageConfig.max_batch`` sequences, each in its own key/value
slot (llama.cpp sequence id). :meth:`asd_core.models.llamacpp_slots.Slots.run` decodes a list of sequences
together: every ``llama_decode`` call carries one new token of each generating sequence plus
prompt tokens of sequences still prefilling, up to ``n_batch`` tokens. A finished sequence
drops out and the next waiting one takes its slot (continuous batching), so a long output never
holds the others back. ``generate``, ``score``, ``resume`` and ``next_logprobs`` all go through
it.

**Prompt reuse.** A slot keeps its tokens after its sequence ends. ``score`` and ``resume``
start from a slot that already holds the whole prompt (left there by this stage's own
generation or by the verification pass just before) and feed only what follows, so verifying
a draft of a prompt this stage has processed costs the draft tokens, not the prompt again.
``generate`` and ``next_logprobs`` never start from what an earlier call left, so their
outputs never depend on what ran before; but within one call of several prompts that open with
the same tokens (the chat template's system turn and the task's instructions: 32–71 tokens of
the `cpu` tasks' prompts), that shared prefix is prefilled once in one slot and copied into
the others' slots (a whole-slot copy, then the tail is dropped), and its time is shared among
them. ``StageConfig.reuse_prompts: false`` turns both kinds of reuse off.

**Numerics.** llama.cpp's CPU kernels give each row of a multi-token batch the same result
whatever the other rows are, but a one-token decode goes through other kernels (log-probs move
by up to ~0.2 nats). So a sequence decoded beside others can differ from the same sequence
decoded alone at near-ties, and ``score`` on a stage's own greedy output can disagree with it
at near-ties; only a micro-batch of one token would be bit-exact, at decode speed.
``StageConfig.exact_scoring`` feeds verified tokens one at a time, as generation does.

**Time.** Each decode call's wall time is shared among the sequences in it in proportion to
the tokens each contributed, plus each sequence's own bookkeeping: ``prefill_s``, ``total_s``
and ``Scoring.seconds`` are a sequence's share of the work, and they add up to the wall time.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import llama_cpp
import numpy as np
from transformers import AutoTokenizer

from asd_core.ground.config import StageConfig
from asd_core.ground.errors import AsdError
from asd_core.models.base import (
    VERIFY_BLOCK,
    Generation,
    GenerationParams,
    NextTokens,
    Prefix,
    Scoring,
    StageInfo,
    StopReason,
    TokenIds,
    TokenListener,
)
from asd_core.models.common import (
    check_prompts,
    cpu_threads,
    decode_text,
    eos_ids,
    finished_prefix,
    hit_stop_string,
    join_generation,
    log_softmax_at,
    token_stats,
)
from asd_core.models.llamacpp_load import load_llama
from asd_core.models.llamacpp_score import ScoreReader
from asd_core.models.llamacpp_slots import RowsFn, Slots, SlotSequence, common_prefix
from asd_core.models.registry import register, resolve

Clock = Callable[[], float]

# fixed: greedy decoding never samples, but any llama.cpp sampler state stays reproducible
_SEED = 1234
_N_BATCH = 512  # tokens per llama_decode call (llama.cpp's default)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


@dataclass(eq=False)
class _Writer:
    """What one generating sequence has written so far, with per-token statistics."""

    prompt: list[int]
    params: GenerationParams
    k: int
    tokens: list[int] = field(default_factory=list)
    logprobs: list[np.ndarray] = field(default_factory=list)  # (1,) each
    top_ids: list[np.ndarray] = field(default_factory=list)  # (1, k) each
    top_lp: list[np.ndarray] = field(default_factory=list)  # (1, k) each
    entropy: list[np.ndarray] = field(default_factory=list)  # (1,) each
    hidden: np.ndarray | None = None  # (d_model,) float64 running sum
    reason: StopReason = "length"


@register("llamacpp")
class LlamaCppBackend:
    """A stage on llama.cpp (GGUF, CPU), decoding up to ``stage.max_batch`` sequences at once."""

    def __init__(
        self,
        stage: StageConfig,
        models_dir: Path | str = "models",
        *,
        clock: Clock = time.perf_counter,
    ):
        """Long because: loading weights, tokenizer and a multi-slot context, each with its own error."""
        self.stage = stage
        self.clock = clock
        start = clock()
        src = resolve(stage, models_dir, "gguf")  # embedded files are sha256-checked here
        threads = cpu_threads(stage.threads)
        # the wrapper only loads the weights; the context below is ours (one slot per sequence)
        kwargs: dict[str, Any] = dict(n_ctx=16, n_batch=16, verbose=False, seed=_SEED)
        try:
            self.llm = load_llama(src.weights, **kwargs)  # a local file or "repo:file.gguf"
        except Exception as exc:  # llama.cpp reports every load failure as a bare ValueError
            raise AsdError(
                f"stage '{stage.name}': llama.cpp cannot load {src.weights} ({_first_line(exc)})"
            ) from None
        try:
            # typed Any like the transformers backend: HF's stubs type decode() as str | list[str]
            self.tokenizer: Any
            if Path(src.weights).is_file():
                self.tokenizer = AutoTokenizer.from_pretrained(src.tokenizer)
            else:  # hub GGUF repos rarely carry tokenizer files: read it out of the GGUF
                gguf = Path(self.llm.model_path)
                self.tokenizer = AutoTokenizer.from_pretrained(
                    str(gguf.parent), gguf_file=gguf.name
                )
        except (OSError, ValueError) as exc:
            self.llm.close()
            raise AsdError(
                f"stage '{stage.name}': cannot load the tokenizer {src.tokenizer} "
                f"({_first_line(exc)})"
            ) from None

        self.max_batch = stage.max_batch
        self.listener: TokenListener | None = None  # see asd_core.models.base.listening
        cp = llama_cpp.llama_context_default_params()
        # a slot per sequence, each of the full context length. A shared (unified) buffer
        # decoded 8 sequences faster (Qwen-Coder-0.5B: 56 against 44 tok/s), but a sequence's
        # log-probs then depend on where other sequences' tokens sit in it, so the same prompt
        # gave different outputs after different histories; separate slots do not
        cp.n_ctx = stage.context_length * self.max_batch
        cp.n_batch = cp.n_ubatch = _N_BATCH
        cp.n_seq_max = self.max_batch
        cp.kv_unified = False
        cp.n_threads = cp.n_threads_batch = threads
        cp.embeddings = False
        ctx = llama_cpp.llama_init_from_model(self.llm._model.model, cp)
        if not ctx:
            self.llm.close()
            raise AsdError(
                f"stage '{stage.name}': llama.cpp cannot make a context of {cp.n_ctx} tokens "
                f"({self.max_batch} sequences x {stage.context_length}); lower max_batch"
            )
        self.n_vocab = self.llm.n_vocab()
        self.n_embd = self.llm.n_embd()
        self.slots = Slots(
            ctx,
            stage.name,
            self.max_batch,
            _N_BATCH,
            self.n_vocab,
            self.n_embd,
            lambda: self.stage.reuse_prompts,
            clock,
        )
        # EOS = the tokenizer's EOS and the GGUF's declared EOS: the same set the transformers
        # backend uses on a checkpoint converted from this file, so both runtimes stop at the
        # same token. llama.cpp's wider end-of-generation scan is not used: for Qwen it also
        # flags FIM separators and `</s>`, an ordinary BPE token that code and HTML contain.
        vocab = self.llm._model.vocab
        self.eos = eos_ids(self.tokenizer.eos_token_id, llama_cpp.llama_vocab_eos(vocab))
        self._eos_idx = np.array(sorted(t for t in self.eos if t < self.n_vocab), dtype=np.int64)
        self.info = StageInfo(
            stage.name,
            "llamacpp",
            src.weights,
            src.asset.quantization if src.asset else "gguf",
            clock() - start,
            {
                "threads": str(threads),
                "n_ctx": str(stage.context_length),
                "n_batch": str(_N_BATCH),
                "max_batch": str(self.max_batch),
            },
        )

    # -- generation ---------------------------------------------------------------------------
    def generate(self, prompts: Sequence[TokenIds], params: GenerationParams) -> list[Generation]:
        """Greedy outputs of all prompts, decoded together (see the module docstring).

        With ``ignore_eos`` the statistics still describe the raw logits (EOS may be the
        reported top-1), but the token written is the best non-EOS one. ``return_hidden``
        averages the final-layer hidden state over the positions whose logits produced the
        output tokens, as the transformers backend does (llama.cpp then computes logits for
        every prompt token too, which makes the prefill slower).
        """
        self.slots.check_open()
        check_prompts(prompts, self.stage.context_length, params.max_new_tokens, self.stage.name)
        pooled = llama_cpp.llama_pooling_type(self.slots.ctx) != llama_cpp.LLAMA_POOLING_TYPE_NONE
        if params.return_hidden and pooled:  # only a sequence-level embedding would come out
            raise AsdError(
                f"stage '{self.stage.name}': this GGUF pools its embeddings, so per-token "
                "hidden states are unavailable"
            )
        return self._write([[int(t) for t in p] for p in prompts], [None] * len(prompts), params)

    def resume(
        self, prompts: Sequence[TokenIds], prefixes: Sequence[Prefix], params: GenerationParams
    ) -> list[Generation]:
        """Greedy outputs that start with verified prefixes (see :class:`Backend`).

        A slot that holds the prompt and prefix (the verification pass just left it) is reused;
        either way the last prefix token is fed on its own, so the result does not depend on
        whether the cache was reused. Hidden states are not available here.
        """
        self.slots.check_open()
        if len(prompts) != len(prefixes):
            raise AsdError(
                f"stage '{self.stage.name}': {len(prompts)} prompts but {len(prefixes)} prefixes"
            )
        if params.return_hidden:
            raise AsdError(f"stage '{self.stage.name}': resume() cannot return hidden states")
        check_prompts(prompts, self.stage.context_length, params.max_new_tokens, self.stage.name)
        return self._write([[int(t) for t in p] for p in prompts], list(prefixes), params)

    def _write(
        self, prompts: list[list[int]], prefixes: list[Prefix | None], params: GenerationParams
    ) -> list[Generation]:
        k = max(0, min(params.top_k, self.n_vocab))
        decode = self._decode_text
        out: list[Generation | None] = [None] * len(prompts)
        seqs: list[SlotSequence] = []
        writers: list[tuple[int, _Writer, SlotSequence]] = []
        for i, (prompt, prefix) in enumerate(zip(prompts, prefixes, strict=True)):
            pre = list(prefix.token_ids) if prefix is not None else []
            w = _Writer(prompt, params, k)
            if prefix is not None and pre:
                done = finished_prefix(prefix, self.eos, params, decode)
                if done is not None:
                    out[i] = join_generation(
                        prompt, prefix, None, done[0], done[1], decode, k, 0, 0
                    )
                    continue
                w.tokens = pre
                w.logprobs = [np.asarray(prefix.logprobs, np.float32)]
                w.top_ids = [np.asarray(prefix.top_ids)[:, :k]]
                w.top_lp = [np.asarray(prefix.top_logprobs, np.float32)[:, :k]]
                w.entropy = [np.asarray(prefix.entropy, np.float32)]
            if params.return_hidden:
                w.hidden = np.zeros(self.n_embd, np.float64)
            tokens = prompt + pre
            last = len(tokens) - 1
            # generated tokens go one per call; a prefix's last token too (as after a
            # verification pass), and with exact scoring the whole prefix, as generation wrote it
            step_from = last if pre and not self.stage.exact_scoring else len(prompt)
            seq = SlotSequence(
                tokens=tokens,
                n_prompt=len(prompt),
                want_from=last,
                step_from=step_from,
                reuse=bool(pre),
                on_rows=self._writer_rows(w, i),
            )
            seqs.append(seq)
            writers.append((i, w, seq))
        if params.return_hidden:
            llama_cpp.llama_set_embeddings(self.slots.ctx, True)
        try:
            if any(s.reuse for s in seqs):  # resume: prompts + prefixes come from the slots
                self.slots.run(seqs)
            else:
                self.slots.run_sharing(seqs)
        finally:
            if params.return_hidden:
                llama_cpp.llama_set_embeddings(self.slots.ctx, False)
        for i, w, seq in writers:
            out[i] = self._generation(w, seq)
        return [g for g in out if g is not None]

    def _writer_rows(self, w: _Writer, index: int) -> RowsFn:
        """The logits reader of sequence ``index`` of a call: choose, record, stop or go on."""
        params, n_max = w.params, w.params.max_new_tokens

        def on_rows(seq: SlotSequence, index: int, rows: np.ndarray, ith: int) -> None:
            row = rows[-1]  # only the newest token's row is requested
            tok = int(row.argmax())
            if params.ignore_eos and tok in self.eos:
                masked = row.copy()
                masked[self._eos_idx] = -np.inf
                tok = int(masked.argmax())
            # one row at a time while it is in cache: measured faster than batching rows
            lp, ti, tl, ent = token_stats(row[None, :], np.array([tok]), w.k)
            w.logprobs.append(lp)
            w.top_ids.append(ti)
            w.top_lp.append(tl)
            w.entropy.append(ent)
            if w.hidden is not None:
                w.hidden += self.slots.hidden_at(ith + len(rows) - 1)
            w.tokens.append(tok)
            listener = self.listener
            if listener is not None and not listener(index, w.tokens):
                w.reason, seq.done = "stop", True  # its caller has gone: free the slot
            elif tok in self.eos and not params.ignore_eos:
                w.reason, seq.done = "eos", True
            elif params.stop_strings and hit_stop_string(
                self._decode_text(w.tokens), params.stop_strings
            ):
                w.reason, seq.done = "stop", True
            elif len(w.tokens) >= n_max:
                seq.done = True  # the last token is never fed back: nothing would read its logits
            else:
                seq.tokens.append(tok)

        return on_rows

    def _generation(self, w: _Writer, seq: SlotSequence) -> Generation:
        n = len(w.tokens)

        def cat(parts: list[np.ndarray], shape: tuple[int, ...], dtype: Any) -> np.ndarray:
            return np.concatenate(parts)[:n] if parts else np.zeros(shape, dtype)

        hidden = None
        if w.hidden is not None and n:
            hidden = (w.hidden / n).astype(np.float32)
        return Generation(
            prompt_ids=w.prompt,
            token_ids=w.tokens,
            text=self._decode_text(w.tokens),
            logprobs=cat(w.logprobs, (0,), np.float32),
            top_ids=cat(w.top_ids, (0, w.k), np.int64),
            top_logprobs=cat(w.top_lp, (0, w.k), np.float32),
            entropy=cat(w.entropy, (0,), np.float32),
            stop_reason=w.reason,
            prefill_s=seq.first_row_s if seq.first_row_s is not None else seq.seconds,
            total_s=seq.seconds,
            hidden_mean=hidden,
        )

    def _decode_text(self, ids: Sequence[int]) -> str:
        return decode_text(self.tokenizer, ids)

    # -- scoring ------------------------------------------------------------------------------
    def score(
        self,
        prompts: Sequence[TokenIds],
        continuations: Sequence[TokenIds],
        top_k: int = 0,
        until_mismatch: bool = False,
    ) -> list[Scoring]:
        """Teacher-forced argmax over each continuation, all sequences in one batched run.

        Logits are read only from the last prompt token on (``m + 1`` rows for ``m``
        continuation tokens) and reduced in blocks of rows, so a 150k vocabulary stays cheap.
        A slot that holds the prompt already is reused (the prompt is not fed again).
        ``until_mismatch`` feeds each continuation in blocks of ``VERIFY_BLOCK`` tokens and
        stops after the block where the model's greedy token first differs from it (see
        :class:`Scoring`): verification reads nothing after that.
        """
        self.slots.check_open()
        name = self.stage.name
        if len(prompts) != len(continuations):
            raise AsdError(
                f"stage '{name}': {len(prompts)} prompts but {len(continuations)} continuations"
            )
        check_prompts(prompts, self.stage.context_length, 0, name)
        for p, c in zip(prompts, continuations, strict=True):
            if len(p) + len(c) > self.stage.context_length:
                raise AsdError(
                    f"stage '{name}': prompt + continuation is {len(p) + len(c)} tokens, "
                    f"more than the context length {self.stage.context_length}"
                )
        k = max(0, min(top_k, self.n_vocab))
        readers, seqs = [], []
        for p, c in zip(prompts, continuations, strict=True):
            prompt, cont = [int(t) for t in p], [int(t) for t in c]
            reader = ScoreReader(len(prompt), cont, k, self.eos if until_mismatch else None)
            exact = self.stage.exact_scoring
            seqs.append(
                SlotSequence(
                    tokens=prompt + cont,
                    n_prompt=len(prompt),
                    want_from=len(prompt) - 1,
                    step_from=len(prompt) if exact else len(prompt) + len(cont),
                    reuse=True,
                    on_rows=reader,
                    chunk=VERIFY_BLOCK if until_mismatch else 0,
                )
            )
            readers.append(reader)
        self.slots.run(seqs)
        return [r.result(s.seconds) for r, s in zip(readers, seqs, strict=True)]

    def next_logprobs(
        self, prompts: Sequence[TokenIds], token_ids: Sequence[int]
    ) -> list[NextTokens]:
        """One prompt pass each (logits of the last position only), read at ``token_ids``."""
        self.slots.check_open()
        check_prompts(prompts, self.stage.context_length, 0, self.stage.name)
        wanted = np.asarray(token_ids, dtype=np.int64)
        found: dict[int, tuple[np.ndarray, int]] = {}

        def reader(seq: SlotSequence, index: int, rows: np.ndarray, ith: int) -> None:
            found[id(seq)] = (log_softmax_at(rows[-1], wanted), int(rows[-1].argmax()))

        seqs = []
        for p in prompts:
            prompt = [int(t) for t in p]
            seqs.append(
                SlotSequence(prompt, len(prompt), len(prompt) - 1, len(prompt), False, reader)
            )
        self.slots.run_sharing(seqs)
        return [NextTokens(*found[id(s)], s.seconds) for s in seqs]

    @property
    def tokens_fed(self) -> int:
        """Tokens decoded since load (what prompt reuse saves shows here)."""
        return self.slots.tokens_fed

    # -- key/value memory (what a server's cache manager reads and frees) ----------------------
    def kv_usage(self) -> tuple[int, int, int]:
        """(tokens held in the slots, bytes one token's keys and values take, slot capacity).

        Bytes assume llama.cpp's default 16-bit cache: layers × KV heads × head size × 2 × 2.
        """
        model = self.llm._model.model
        heads = llama_cpp.llama_model_n_head(model)
        head_dim = self.n_embd // max(heads, 1)
        per_token = (
            2
            * 2
            * llama_cpp.llama_model_n_layer(model)
            * (llama_cpp.llama_model_n_head_kv(model) * head_dim)
        )
        held = sum(len(c) for c in self.slots.cached)
        return held, per_token, self.max_batch * self.stage.context_length

    def release(self, prompt_ids: Sequence[int]) -> int:
        """Empty the slots that hold ``prompt_ids`` (its request is done); tokens freed."""
        self.slots.check_open()
        prompt = [int(t) for t in prompt_ids]
        freed = 0
        for slot, cached in enumerate(self.slots.cached):
            if cached and common_prefix(cached, prompt) >= len(prompt):
                llama_cpp.llama_memory_seq_rm(self.slots.mem, slot, 0, -1)
                freed += len(cached)
                self.slots.cached[slot] = []
        return freed

    def close(self) -> None:
        """Free the batch, the context and the weights; safe to call twice."""
        self.slots.close()
        if self.llm is not None:
            self.llm.close()
            self.llm = None
