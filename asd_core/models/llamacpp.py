"""The llama.cpp backend: GGUF weights on CPU through llama-cpp-python's low-level API.

Token ids go to llama.cpp directly (``self.tokenizer`` is the Hugging Face tokenizer read out of
the GGUF), so tokenisation is identical across runtimes. Instead of llama.cpp's sampler we read
the full logits row of every step, which is what the per-token statistics need.

**Batching.** The context holds ``StageConfig.max_batch`` sequences, each in its own key/value
slot (llama.cpp sequence id). :meth:`LlamaCppBackend._run` decodes a list of sequences
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
from collections import deque
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
from asd_core.models.registry import register, resolve

Clock = Callable[[], float]

# fixed: greedy decoding never samples, but any llama.cpp sampler state stays reproducible
_SEED = 1234
_SCORE_BLOCK = 32  # rows of logits reduced at once in score(): bounds temporaries to 32 x V floats
_N_BATCH = 512  # tokens per llama_decode call (llama.cpp's default)
# a shared prompt prefix shorter than this is fed again: copying a slot costs about as much as
# prefilling a few tokens (it moves the whole slot, context_length cells of every layer)
_MIN_SHARED = 16


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two token lists."""
    n = min(len(a), len(b))
    if n == 0:
        return 0
    diff = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
    return int(diff[0]) if diff.size else n


# (sequence, index in seq.tokens of the first row, (r, V) float32 logits view valid until the
# next decode, batch index of the first row)
RowsFn = Callable[["_Seq", int, np.ndarray, int], None]


@dataclass(eq=False)
class _Seq:
    """One sequence in flight: the tokens its slot must hold and what reads its logits rows."""

    tokens: list[int]  # prompt (+ prefix or continuation, + tokens generated so far)
    n_prompt: int  # leading tokens that are the prompt
    want_from: int  # logits rows are read for tokens[want_from:]
    step_from: int  # tokens[step_from:] are fed one per decode call
    reuse: bool  # may start from a slot that already holds the whole prompt
    on_rows: RowsFn
    share: bool = False  # may start from a copy of this call's shared-prefix slot
    chunk: int = 0  # > 0: feed at most this many tokens past want_from per decode call
    slot: int = -1  # llama.cpp sequence id while admitted
    n_fed: int = 0  # leading tokens already in the slot's cache
    seconds: float = 0.0  # this sequence's share of the work so far, s
    first_row_s: float | None = None  # seconds when its first logits row was ready
    done: bool = False  # set by on_rows to stop early (generation ended)


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
        self.stage = stage
        self.clock = clock
        start = clock()
        src = resolve(stage, models_dir, "gguf")  # embedded files are sha256-checked here
        threads = cpu_threads(stage.threads)
        # the wrapper only loads the weights; the context below is ours (one slot per sequence)
        kwargs: dict[str, Any] = dict(n_ctx=16, n_batch=16, verbose=False, seed=_SEED)
        try:
            if Path(src.weights).is_file():
                self.llm = llama_cpp.Llama(src.weights, **kwargs)
            else:  # "repo:file.gguf" on the hub
                repo, filename = src.weights.split(":", 1)
                self.llm = llama_cpp.Llama.from_pretrained(repo, filename, **kwargs)
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
        self.n_batch = _N_BATCH
        cp = llama_cpp.llama_context_default_params()
        # a slot per sequence, each of the full context length. A shared (unified) buffer
        # decoded 8 sequences faster (Qwen-Coder-0.5B: 56 against 44 tok/s), but a sequence's
        # log-probs then depend on where other sequences' tokens sit in it, so the same prompt
        # gave different outputs after different histories; separate slots do not
        cp.n_ctx = stage.context_length * self.max_batch
        cp.n_batch = cp.n_ubatch = self.n_batch
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
        self._ctx: Any = ctx
        self._mem = llama_cpp.llama_get_memory(self._ctx)
        self._cached: list[list[int]] = [[] for _ in range(self.max_batch)]  # tokens per slot
        self._last_use = [0] * self.max_batch  # admission counter per slot (least recent first)
        self._uses = 0
        self._shared_slot: int | None = None  # holds this call's shared prompt prefix
        self.tokens_fed = 0  # tokens decoded since load (what prompt reuse saves shows here)
        self.n_vocab = self.llm.n_vocab()
        self.n_embd = self.llm.n_embd()
        self._batch: Any = llama_cpp.llama_batch_init(self.n_batch, 0, 1)
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
                "n_batch": str(self.n_batch),
                "max_batch": str(self.max_batch),
            },
        )

    # -- the batched decode loop --------------------------------------------------------------
    def _check_open(self) -> None:
        if self._ctx is None:  # the context is freed: a decode would crash the process
            raise AsdError(f"stage '{self.stage.name}': backend used after close()")

    def _clear(self) -> None:
        """Empty every slot."""
        llama_cpp.llama_memory_clear(self._mem, True)
        self._cached = [[] for _ in range(self.max_batch)]

    def _admit(self, seq: _Seq, busy: set[int]) -> None:
        """Give ``seq`` a free slot: one holding its whole prompt if reuse is allowed, else the
        least recently used; drop the slot's tokens after what can be kept."""
        free = [s for s in range(self.max_batch) if s not in busy]
        slot, keep = min(free, key=lambda s: self._last_use[s]), 0
        if seq.reuse and self.stage.reuse_prompts:
            for s in free:
                common = _common_prefix(self._cached[s], seq.tokens)
                if common >= seq.n_prompt and min(common, seq.want_from) > keep:
                    slot, keep = s, min(common, seq.want_from)  # rows wanted must be computed
        src = self._shared_slot
        if seq.share and src is not None:
            common = min(_common_prefix(self._cached[src], seq.tokens), seq.want_from)
            if common >= _MIN_SHARED:
                if src in free:
                    slot, keep = src, common
                else:  # slots are separate buffers: copy the whole slot, keep the prefix
                    slot = min((s for s in free if s != src), key=lambda s: self._last_use[s])
                    llama_cpp.llama_memory_seq_cp(self._mem, src, slot, -1, -1)
                    self._cached[slot] = list(self._cached[src])
                    keep = common
        llama_cpp.llama_memory_seq_rm(self._mem, slot, keep, -1)
        del self._cached[slot][keep:]
        self._uses += 1
        self._last_use[slot] = self._uses
        seq.slot, seq.n_fed = slot, keep

    def _plan(self, active: Sequence[_Seq]) -> list[tuple[_Seq, int]]:
        """(sequence, tokens to feed) for the next decode call, at most ``n_batch`` tokens.

        One-token steps go first, so a long prompt never stalls the sequences that are writing.
        """
        room, plan = self.n_batch, []
        for seq in sorted(active, key=lambda s: len(s.tokens) - s.n_fed > 1):
            if room == 0:
                break
            count = min(len(seq.tokens) - seq.n_fed, room)
            if seq.chunk:
                count = min(count, max(seq.want_from, seq.n_fed) + seq.chunk - seq.n_fed)
            if seq.n_fed >= seq.step_from:
                count = min(count, 1)
            else:
                count = min(count, seq.step_from - seq.n_fed)
            plan.append((seq, count))
            room -= count
        return plan

    def _share_prefix(self, seqs: Sequence[_Seq]) -> None:
        """Prefill the prompt prefix all ``seqs`` share once, for them to copy (see the module
        docstring); its time is split evenly among them."""
        self._shared_slot = None
        if len(seqs) < 2 or not self.stage.reuse_prompts:
            return
        first = seqs[0].tokens
        n = min(min(_common_prefix(first, s.tokens), s.want_from) for s in seqs[1:])
        if n < _MIN_SHARED:
            return
        warm = _Seq(first[:n], n, n, n, False, lambda *_: None)
        self._run([warm])
        self._shared_slot = warm.slot
        for s in seqs:
            s.share, s.seconds = True, s.seconds + warm.seconds / len(seqs)

    def _run_sharing(self, seqs: Sequence[_Seq]) -> None:
        """:meth:`_run` after :meth:`_share_prefix`; the shared slot is forgotten after."""
        try:
            self._share_prefix(seqs)
            self._run(seqs)
        finally:
            self._shared_slot = None

    def _run(self, seqs: Sequence[_Seq]) -> None:
        """Decode ``seqs`` together until each has fed all its tokens or set ``done``."""
        queue, active = deque(seqs), list[_Seq]()
        b = self._batch
        while queue or active:
            while queue and len(active) < self.max_batch:
                seq = queue.popleft()
                self._admit(seq, {a.slot for a in active})
                active.append(seq)
            plan = self._plan(active)
            j, firsts = 0, []
            for seq, count in plan:
                firsts.append(j)
                for t in range(seq.n_fed, seq.n_fed + count):
                    b.token[j] = seq.tokens[t]
                    b.pos[j] = t
                    b.n_seq_id[j] = 1
                    b.seq_id[j][0] = seq.slot
                    b.logits[j] = t >= seq.want_from
                    j += 1
            b.n_tokens = j
            self.tokens_fed += j
            start = self.clock()
            rc = llama_cpp.llama_decode(self._ctx, b)
            if rc != 0:  # 1: no KV slot (context full); < 0: internal error
                self._clear()  # the slots no longer match self._cached
                raise AsdError(f"stage '{self.stage.name}': llama_decode failed with code {rc}")
            llama_cpp.llama_synchronize(self._ctx)
            share = (self.clock() - start) / j
            for (seq, count), first in zip(plan, firsts, strict=True):
                t0 = self.clock()
                seq.seconds += share * count
                self._cached[seq.slot].extend(seq.tokens[seq.n_fed : seq.n_fed + count])
                lo = max(seq.n_fed, seq.want_from)
                seq.n_fed += count
                if seq.n_fed > lo:
                    if seq.first_row_s is None:
                        seq.first_row_s = seq.seconds
                    ith = first + lo - (seq.n_fed - count)
                    ptr = llama_cpp.llama_get_logits_ith(self._ctx, ith)
                    rows = np.ctypeslib.as_array(ptr, shape=(seq.n_fed - lo, self.n_vocab))
                    seq.on_rows(seq, lo, rows, ith)
                seq.seconds += self.clock() - t0
            active = [s for s in active if not (s.done or s.n_fed == len(s.tokens))]

    def _hidden_at(self, batch_index: int) -> np.ndarray:
        """(d_model,) float32 view of the final-layer hidden state of one batch row."""
        ptr = llama_cpp.llama_get_embeddings_ith(self._ctx, batch_index)
        if not ptr:
            raise AsdError(
                f"stage '{self.stage.name}': llama.cpp returned no hidden state for this model"
            )
        return np.ctypeslib.as_array(ptr, shape=(self.n_embd,))

    # -- generation ---------------------------------------------------------------------------
    def generate(self, prompts: Sequence[TokenIds], params: GenerationParams) -> list[Generation]:
        """Greedy outputs of all prompts, decoded together (see the module docstring).

        With ``ignore_eos`` the statistics still describe the raw logits (EOS may be the
        reported top-1), but the token written is the best non-EOS one. ``return_hidden``
        averages the final-layer hidden state over the positions whose logits produced the
        output tokens, as the transformers backend does (llama.cpp then computes logits for
        every prompt token too, which makes the prefill slower).
        """
        self._check_open()
        check_prompts(prompts, self.stage.context_length, params.max_new_tokens, self.stage.name)
        pooled = llama_cpp.llama_pooling_type(self._ctx) != llama_cpp.LLAMA_POOLING_TYPE_NONE
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
        self._check_open()
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
        seqs: list[_Seq] = []
        writers: list[tuple[int, _Writer, _Seq]] = []
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
            seq = _Seq(
                tokens=tokens,
                n_prompt=len(prompt),
                want_from=last,
                step_from=step_from,
                reuse=bool(pre),
                on_rows=self._writer_rows(w),
            )
            seqs.append(seq)
            writers.append((i, w, seq))
        if params.return_hidden:
            llama_cpp.llama_set_embeddings(self._ctx, True)
        try:
            if any(s.reuse for s in seqs):  # resume: prompts + prefixes come from the slots
                self._run(seqs)
            else:
                self._run_sharing(seqs)
        finally:
            if params.return_hidden:
                llama_cpp.llama_set_embeddings(self._ctx, False)
        for i, w, seq in writers:
            out[i] = self._generation(w, seq)
        return [g for g in out if g is not None]

    def _writer_rows(self, w: _Writer) -> RowsFn:
        """The logits reader of one generating sequence: choose, record, stop or go on."""
        params, n_max = w.params, w.params.max_new_tokens

        def on_rows(seq: _Seq, index: int, rows: np.ndarray, ith: int) -> None:
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
                w.hidden += self._hidden_at(ith + len(rows) - 1)
            w.tokens.append(tok)
            if tok in self.eos and not params.ignore_eos:
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

    def _generation(self, w: _Writer, seq: _Seq) -> Generation:
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
        self._check_open()
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
            reader = _ScoreReader(len(prompt), cont, k, self.eos if until_mismatch else None)
            exact = self.stage.exact_scoring
            seqs.append(
                _Seq(
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
        self._run(seqs)
        return [r.result(s.seconds) for r, s in zip(readers, seqs, strict=True)]

    def next_logprobs(
        self, prompts: Sequence[TokenIds], token_ids: Sequence[int]
    ) -> list[NextTokens]:
        """One prompt pass each (logits of the last position only), read at ``token_ids``."""
        self._check_open()
        check_prompts(prompts, self.stage.context_length, 0, self.stage.name)
        wanted = np.asarray(token_ids, dtype=np.int64)
        found: dict[int, tuple[np.ndarray, int]] = {}

        def reader(seq: _Seq, index: int, rows: np.ndarray, ith: int) -> None:
            found[id(seq)] = (log_softmax_at(rows[-1], wanted), int(rows[-1].argmax()))

        seqs = []
        for p in prompts:
            prompt = [int(t) for t in p]
            seqs.append(_Seq(prompt, len(prompt), len(prompt) - 1, len(prompt), False, reader))
        self._run_sharing(seqs)
        return [NextTokens(*found[id(s)], s.seconds) for s in seqs]

    def close(self) -> None:
        """Free the batch, the context and the weights; safe to call twice."""
        if self._batch is not None:
            llama_cpp.llama_batch_free(self._batch)
            self._batch = None
        if self._ctx is not None:
            llama_cpp.llama_free(self._ctx)
            self._ctx = None
        if self.llm is not None:
            self.llm.close()
            self.llm = None  # type: ignore[assignment]


class _ScoreReader:
    """Reduces one scored sequence's logits rows to argmax, given-token log-probs and stats."""

    def __init__(self, n_prompt: int, cont: list[int], k: int, stop_eos: frozenset[int] | None):
        m = len(cont)
        self.n_prompt, self.m, self.k = n_prompt, m, k
        self.stop_eos = stop_eos  # set: stop at the first disagreement (any two EOS agree)
        self.n_rows = 0  # rows read so far
        self.targets = np.asarray(cont, dtype=np.int64)
        self.argmax = np.zeros(m + 1, np.int64)  # row r predicts cont[r]; row m: what comes next
        self.given = np.zeros(m, np.float32)
        self.top_ids = np.zeros((m + 1, k), np.int64) if k else None
        self.top_lp = np.zeros((m + 1, k), np.float32) if k else None
        self.ent = np.zeros(m + 1, np.float32) if k else None

    def __call__(self, seq: _Seq, index: int, rows: np.ndarray, ith: int) -> None:
        for b0 in range(0, rows.shape[0], _SCORE_BLOCK):
            x = rows[b0 : b0 + _SCORE_BLOCK]
            r = index + b0 - (self.n_prompt - 1)  # index among the m + 1 output rows
            self.argmax[r : r + len(x)] = x.argmax(axis=1)
            if self.top_ids is not None and self.top_lp is not None and self.ent is not None:
                _, ti, tl, e = token_stats(x, self.argmax[r : r + len(x)], self.k)
                self.top_ids[r : r + len(x)], self.top_lp[r : r + len(x)] = ti, tl
                self.ent[r : r + len(x)] = e
            live = min(len(x), self.m - r)  # rows that have a given next token
            if live > 0:
                x = x[:live]
                top = x.max(axis=1, keepdims=True)
                log_z = top[:, 0] + np.log(np.exp(x - top).sum(axis=1))
                self.given[r : r + live] = x[np.arange(live), self.targets[r : r + live]] - log_z
        self.n_rows = index + rows.shape[0] - (self.n_prompt - 1)
        if self.stop_eos is not None:
            lo = self.n_rows - rows.shape[0]
            hi = min(self.n_rows, self.m)
            got, want = self.argmax[lo:hi], self.targets[lo:hi]
            eos = self.stop_eos
            if any(a != t and not (a in eos and t in eos) for a, t in zip(got, want, strict=True)):
                seq.done = True

    def result(self, seconds: float) -> Scoring:
        m, n = self.m, self.n_rows
        if n < m + 1:  # stopped early: the rows never computed
            self.argmax[n:] = -1
            self.given[n:] = np.nan
            for stat in (self.top_ids, self.top_lp, self.ent):
                if stat is not None:
                    stat[n:] = -1 if stat.dtype.kind == "i" else np.nan
        return Scoring(
            self.argmax[:m],
            self.given,
            int(self.argmax[m]),
            seconds,
            self.top_ids,
            self.top_lp,
            self.ent,
        )
