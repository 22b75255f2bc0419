"""The llama.cpp backend: GGUF weights on CPU through llama-cpp-python's low-level API.

Token ids go to llama.cpp directly (``self.tokenizer`` is the Hugging Face tokenizer read out of
the GGUF), so tokenisation is identical across runtimes. Instead of llama.cpp's sampler we read
the full logits row of every step, which is what the per-token statistics need; a step costs
one ``llama_decode`` of one token plus one :func:`token_stats` on that row, while the row is
still in cache.

llama.cpp's CPU kernels for a one-token step differ numerically from those for a multi-token
batch (log-probs move by up to ~0.2 nats), so ``score`` on a stage's own greedy output can
disagree with it at near-ties; only a micro-batch of 1 would be bit-exact, at decode speed.

Everything goes through :meth:`LlamaCppBackend._feed`, which appends tokens to the KV cache at
given positions and reports logits only where asked; the backend remembers which tokens the
cache holds. ``generate`` and ``score`` start from an empty cache; ``resume`` right after the
``score`` that verified a draft keeps the cache up to the accepted prefix and feeds only the
verifier's token, so escalating pays for the draft once, in the batched verification pass.
A resumed output is the same whether or not the cache was reused: on a miss the prompt and
prefix are recomputed in one batch, exactly as the verification pass computed them.

``StageConfig.exact_scoring`` feeds verified tokens one at a time, as generation does, which
makes verification and resumed outputs bit-identical to generating from scratch at decode speed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import llama_cpp
import numpy as np
from transformers import AutoTokenizer

from asd_core.config import StageConfig
from asd_core.errors import AsdError
from asd_core.models.base import (
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
# receives (index in the fed tokens of the first row, (r, V) float32 logits view)
RowsFn = Callable[[int, np.ndarray], None]

# fixed: greedy decoding never samples, but any llama.cpp sampler state stays reproducible
_SEED = 1234
_SCORE_BLOCK = 32  # rows of logits reduced at once in score(): bounds temporaries to 32 x V floats


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


@register("llamacpp")
class LlamaCppBackend:
    """A stage on llama.cpp (GGUF, CPU). Prompts are processed one after another."""

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
        kwargs: dict[str, Any] = dict(
            n_ctx=stage.context_length,
            n_threads=threads,
            n_threads_batch=threads,
            logits_all=False,
            verbose=False,
            seed=_SEED,
        )
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

        self._ctx = self.llm.ctx
        self._kv: list[int] = []  # tokens whose keys/values the cache holds, positions 0..
        self._mem = llama_cpp.llama_get_memory(self._ctx)
        self.n_vocab = self.llm.n_vocab()
        self.n_embd = self.llm.n_embd()
        self.n_batch = self.llm.n_batch
        # our own batch (one sequence): Llama._batch reserves n_ctx sequence slots per token
        self._batch: Any = llama_cpp.llama_batch_init(self.n_batch, 0, 1)
        for i in range(self.n_batch):
            self._batch.n_seq_id[i] = 1
            self._batch.seq_id[i][0] = 0
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
            {"threads": str(threads), "n_ctx": str(self.llm.n_ctx()), "n_batch": str(self.n_batch)},
        )

    # -- low level ----------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self.llm is None:  # the context is freed: a decode would crash the process
            raise AsdError(f"stage '{self.stage.name}': backend used after close()")

    def _clear(self) -> None:
        """Empty the KV cache."""
        llama_cpp.llama_memory_clear(self._mem, True)
        self._kv = []

    def _truncate(self, n: int) -> None:
        """Keep the first ``n`` cached positions, drop the rest."""
        if n == 0:
            self._clear()
            return
        llama_cpp.llama_memory_seq_rm(self._mem, 0, n, -1)
        del self._kv[n:]

    def _decode(self) -> None:
        rc = llama_cpp.llama_decode(self._ctx, self._batch)
        if rc != 0:  # 1: no KV slot (context full); < 0: internal error
            self._clear()  # the cache no longer matches self._kv
            raise AsdError(f"stage '{self.stage.name}': llama_decode failed with code {rc}")
        b = self._batch
        self._kv.extend(b.token[j] for j in range(b.n_tokens))

    def _feed(
        self, tokens: Sequence[int], pos0: int, first_out: int, on_rows: RowsFn | None = None
    ) -> None:
        """Append ``tokens`` to the KV cache at positions ``pos0, pos0+1, …`` in n_batch chunks.

        Logits are requested for ``tokens[first_out:]`` only; after each chunk ``on_rows(i, rows)``
        gets them as a (r, V) float32 view valid until the next decode, ``i`` being the index in
        ``tokens`` of the first row.
        """
        b = self._batch
        for s in range(0, len(tokens), self.n_batch):
            chunk = tokens[s : s + self.n_batch]
            for j, tok in enumerate(chunk):
                b.token[j] = tok
                b.pos[j] = pos0 + s + j
                b.logits[j] = s + j >= first_out
            b.n_tokens = len(chunk)
            self._decode()
            n_out = s + len(chunk) - max(first_out, s)
            if on_rows is not None and n_out > 0:
                ptr = llama_cpp.llama_get_logits(self._ctx)
                on_rows(max(first_out, s), np.ctypeslib.as_array(ptr, shape=(n_out, self.n_vocab)))

    def _step(self, token: int, pos: int) -> None:
        """Decode one token at ``pos``, asking for its logits (the generation hot path)."""
        b = self._batch
        b.token[0] = token
        b.pos[0] = pos
        b.logits[0] = True
        b.n_tokens = 1
        self._decode()

    def _last_logits(self) -> np.ndarray:
        """(V,) float32 view of the newest logits row, valid until the next decode."""
        return np.ctypeslib.as_array(
            llama_cpp.llama_get_logits_ith(self._ctx, -1), shape=(self.n_vocab,)
        )

    def _last_hidden(self) -> np.ndarray:
        """(d_model,) float32 view of the newest final-layer hidden state (after the last norm)."""
        ptr = llama_cpp.llama_get_embeddings_ith(self._ctx, -1)
        if not ptr:
            raise AsdError(
                f"stage '{self.stage.name}': llama.cpp returned no hidden state for this model"
            )
        return np.ctypeslib.as_array(ptr, shape=(self.n_embd,))

    # -- generation ---------------------------------------------------------------------------
    def generate(self, prompts: Sequence[TokenIds], params: GenerationParams) -> list[Generation]:
        """Greedy outputs, one prompt after another (multi-sequence batches are not built yet).

        ``prefill_s`` and ``total_s`` are those of each prompt alone. With ``ignore_eos`` the
        statistics still describe the raw logits (EOS may be the reported top-1), but the token
        written is the best non-EOS one. ``return_hidden`` averages the final-layer hidden
        state over the positions whose logits produced the output tokens, as the transformers
        backend does.
        """
        self._check_open()
        check_prompts(prompts, self.stage.context_length, params.max_new_tokens, self.stage.name)
        pooled = llama_cpp.llama_pooling_type(self._ctx) != llama_cpp.LLAMA_POOLING_TYPE_NONE
        if params.return_hidden and pooled:  # only a sequence-level embedding would come out
            raise AsdError(
                f"stage '{self.stage.name}': this GGUF pools its embeddings, so per-token "
                "hidden states are unavailable"
            )
        try:
            return [self._generate_one(list(p), params) for p in prompts]
        finally:
            if params.return_hidden:
                llama_cpp.llama_set_embeddings(self._ctx, False)

    def resume(
        self, prompts: Sequence[TokenIds], prefixes: Sequence[Prefix], params: GenerationParams
    ) -> list[Generation]:
        """Greedy outputs that start with verified prefixes (see :class:`Backend`).

        The KV cache of the last ``score`` is reused when it covers prompt + prefix; hidden
        states are not available here (they would need the prefix recomputed).
        """
        self._check_open()
        if len(prompts) != len(prefixes):
            raise AsdError(
                f"stage '{self.stage.name}': {len(prompts)} prompts but {len(prefixes)} prefixes"
            )
        if params.return_hidden:
            raise AsdError(f"stage '{self.stage.name}': resume() cannot return hidden states")
        check_prompts(prompts, self.stage.context_length, params.max_new_tokens, self.stage.name)
        return [
            self._generate_one([int(t) for t in p], params, pre)
            for p, pre in zip(prompts, prefixes, strict=True)
        ]

    def _prime(self, prompt: list[int], prefix: list[int]) -> None:
        """Leave the cache holding prompt + prefix and the logits after its last token ready.

        Reuses the cache when it already holds prompt + prefix[:-1] (from the verification
        pass); otherwise recomputes it the way ``score`` would, so either way the result is the
        same.
        """
        head = prompt + prefix[:-1]
        if len(self._kv) >= len(head) and self._kv[: len(head)] == head:
            self._truncate(len(head))
        else:
            self._clear()
            if self.stage.exact_scoring:
                self._feed(prompt, 0, len(prompt))
                for j, tok in enumerate(prefix[:-1]):
                    self._step(tok, len(prompt) + j)
            else:
                self._feed(head, 0, len(head))
        self._step(prefix[-1], len(head))

    def _generate_one(
        self, prompt: list[int], params: GenerationParams, prefix: Prefix | None = None
    ) -> Generation:
        n_max, k = params.max_new_tokens, max(0, min(params.top_k, self.n_vocab))
        decode = self._decode_text
        start = self.clock()
        if prefix is not None and prefix.token_ids:
            done = finished_prefix(prefix, self.eos, params, decode)
            if done is not None:
                return join_generation(
                    prompt, prefix, None, done[0], done[1], decode, k, 0.0, self.clock() - start
                )
        n0 = 0 if prefix is None else len(prefix.token_ids)
        logprobs = np.zeros(n_max, np.float32)
        top_ids = np.zeros((n_max, k), np.int64)
        top_lp = np.zeros((n_max, k), np.float32)
        entropy = np.zeros(n_max, np.float32)
        hidden = np.zeros(self.n_embd, np.float64) if params.return_hidden else None
        tokens: list[int] = []
        reason: StopReason = "length"
        if prefix is not None and n0:
            tokens = list(prefix.token_ids)
            logprobs[:n0] = prefix.logprobs
            top_ids[:n0] = prefix.top_ids[:, :k]
            top_lp[:n0] = prefix.top_logprobs[:, :k]
            entropy[:n0] = prefix.entropy
            self._prime(prompt, tokens)
        elif hidden is None:
            self._clear()
            self._feed(prompt, 0, len(prompt) - 1)
        else:
            # with embeddings on, llama.cpp outputs every token of a batch (logits over the
            # whole vocabulary for each): feed the prompt without them, then its last token alone
            self._clear()
            llama_cpp.llama_set_embeddings(self._ctx, False)
            self._feed(prompt[:-1], 0, len(prompt))
            llama_cpp.llama_set_embeddings(self._ctx, True)
            self._step(prompt[-1], len(prompt) - 1)
        row = self._last_logits()  # synchronises with the decode, so the stamp below is honest
        prefill = self.clock() - start
        pos = len(prompt) + n0
        while len(tokens) < n_max:
            tok = int(row.argmax())
            if params.ignore_eos and tok in self.eos:
                masked = row.copy()
                masked[self._eos_idx] = -np.inf
                tok = int(masked.argmax())
            i = len(tokens)
            # one row at a time while it is in cache: measured faster than batching rows
            lp, ti, tl, ent = token_stats(row[None, :], np.array([tok]), k)
            logprobs[i], top_ids[i], top_lp[i], entropy[i] = lp[0], ti[0], tl[0], ent[0]
            if hidden is not None:
                hidden += self._last_hidden()
            tokens.append(tok)
            if tok in self.eos and not params.ignore_eos:
                reason = "eos"
                break
            if params.stop_strings and hit_stop_string(decode(tokens), params.stop_strings):
                reason = "stop"
                break
            if len(tokens) == n_max:
                break  # the last token is never fed back: nothing would read its logits
            self._step(tok, pos)
            pos += 1
            row = self._last_logits()
        total = self.clock() - start

        n = len(tokens)
        return Generation(
            prompt_ids=prompt,
            token_ids=tokens,
            text=decode(tokens),
            logprobs=logprobs[:n],
            top_ids=top_ids[:n],
            top_logprobs=top_lp[:n],
            entropy=entropy[:n],
            stop_reason=reason,
            prefill_s=prefill,
            total_s=total,
            hidden_mean=(hidden / n).astype(np.float32) if hidden is not None and n else None,
        )

    def _decode_text(self, ids: Sequence[int]) -> str:
        return decode_text(self.tokenizer, ids)

    # -- scoring ------------------------------------------------------------------------------
    def score(
        self, prompts: Sequence[TokenIds], continuations: Sequence[TokenIds], top_k: int = 0
    ) -> list[Scoring]:
        """Teacher-forced argmax over each continuation, one sequence after another.

        The cache is left holding the last prompt + continuation, for :meth:`resume`.
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
        pairs = zip(prompts, continuations, strict=True)
        k = max(0, min(top_k, self.n_vocab))
        return [self._score_one([int(t) for t in p], [int(t) for t in c], k) for p, c in pairs]

    def _score_one(self, prompt: list[int], cont: list[int], k: int) -> Scoring:
        """One teacher-forced pass from an empty cache.

        Logits are requested only from the last prompt token on (``m + 1`` rows for ``m``
        continuation tokens) and reduced in blocks of rows, so a 150k vocabulary stays cheap.
        With ``exact_scoring`` the continuation is fed one token at a time, as in generation.
        """
        n_p, m = len(prompt), len(cont)
        argmax = np.zeros(m + 1, np.int64)  # row r predicts cont[r]; row m is what comes next
        given = np.zeros(m, np.float32)
        targets = np.asarray(cont, dtype=np.int64)
        top_ids = np.zeros((m + 1, k), np.int64) if k else None
        top_lp = np.zeros((m + 1, k), np.float32) if k else None
        ent = np.zeros(m + 1, np.float32) if k else None

        def reduce(first: int, rows: np.ndarray) -> None:
            for b0 in range(0, rows.shape[0], _SCORE_BLOCK):
                x = rows[b0 : b0 + _SCORE_BLOCK]
                r = first + b0 - (n_p - 1)  # index among the m + 1 output rows
                argmax[r : r + len(x)] = x.argmax(axis=1)
                if top_ids is not None and top_lp is not None and ent is not None:
                    _, ti, tl, e = token_stats(x, argmax[r : r + len(x)], k)
                    top_ids[r : r + len(x)], top_lp[r : r + len(x)], ent[r : r + len(x)] = ti, tl, e
                live = min(len(x), m - r)  # rows that have a given next token
                if live > 0:
                    x = x[:live]
                    top = x.max(axis=1, keepdims=True)
                    log_z = top[:, 0] + np.log(np.exp(x - top).sum(axis=1))
                    given[r : r + live] = x[np.arange(live), targets[r : r + live]] - log_z

        start = self.clock()
        self._clear()
        if self.stage.exact_scoring:
            self._feed(prompt, 0, n_p - 1, reduce)
            for j, tok in enumerate(cont):
                self._step(tok, n_p + j)
                reduce(n_p + j, self._last_logits()[None, :])
        else:
            self._feed(prompt + cont, 0, n_p - 1, reduce)
        seconds = self.clock() - start
        return Scoring(argmax[:m], given, int(argmax[m]), seconds, top_ids, top_lp, ent)

    def next_logprobs(
        self, prompts: Sequence[TokenIds], token_ids: Sequence[int]
    ) -> list[NextTokens]:
        """One prompt pass each (logits of the last position only), read at ``token_ids``."""
        self._check_open()
        check_prompts(prompts, self.stage.context_length, 0, self.stage.name)
        wanted = np.asarray(token_ids, dtype=np.int64)
        out = []
        for p in prompts:
            prompt = [int(t) for t in p]
            start = self.clock()
            self._clear()
            self._feed(prompt, 0, len(prompt) - 1)
            row = self._last_logits()
            logprobs, best = log_softmax_at(row, wanted), int(row.argmax())
            out.append(NextTokens(logprobs, best, self.clock() - start))
        return out

    def close(self) -> None:
        """Free the batch, the context and the weights; safe to call twice."""
        if self._batch is not None:
            llama_cpp.llama_batch_free(self._batch)
            self._batch = None
        if self.llm is not None:
            self.llm.close()
            self.llm = None  # type: ignore[assignment]
