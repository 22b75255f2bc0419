"""The reference backend: Hugging Face transformers, any device.

Generation uses ``model.generate`` (greedy, left-padded batches) with raw logits kept, so the
per-token statistics describe the model's own distribution even when EOS is suppressed for
profiling. Scoring runs one teacher-forced forward pass per sequence and keeps only the logits
it needs (``logits_to_keep``), so a 150k-token vocabulary never materialises for the prompt.

The last scored sequence's key/value cache is kept: ``resume`` right after the ``score`` that
verified a draft crops it to the accepted prefix and generates from there (transformers'
``cache`` argument, ``past_key_values`` before 5.24: :func:`cache_keyword`), so the draft is
paid for once, in the verification pass. With
``StageConfig.exact_scoring`` verified tokens are fed one at a time, as generation does.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    DynamicCache,
    LogitsProcessor,
    LogitsProcessorList,
)

from asd_core.ground.config import StageConfig
from asd_core.ground.errors import AsdError
from asd_core.models.base import (
    Generation,
    GenerationParams,
    NextTokens,
    Prefix,
    Scoring,
    StageInfo,
    TokenIds,
    TokenListener,
)
from asd_core.models.common import (
    check_prompts,
    cpu_threads,
    cut_output,
    decode_text,
    eos_ids,
    finished_prefix,
    join_generation,
    log_softmax_at,
    token_stats,
)
from asd_core.models.registry import register, resolve

Clock = Callable[[], float]


class _StepClock(LogitsProcessor):
    """Records the time each decoding step's logits arrive (the first one ends prefill), and
    reports each row's tokens so far to a listener (``models.base.listening``)."""

    def __init__(
        self, clock: Clock, width: int = 0, report: Callable[[int, list[int]], Any] | None = None
    ):
        self.clock = clock
        self.stamps: list[float] = []
        self.width = width  # padded prompt width: what follows it was generated
        self.report = report

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self.stamps.append(self.clock())
        if self.report is not None and input_ids.shape[1] > self.width:
            for b, row in enumerate(input_ids[:, self.width :].tolist()):
                self.report(b, row)
        return scores


def cache_keyword(model: Any) -> str:
    """The name under which ``model.forward`` and ``generate`` take a key/value cache.

    transformers 5.24 renamed ``past_key_values`` to ``cache`` (the old name is deprecated and
    removed in a later release); the supported range spans both, so ask the model.
    """
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _torch_dtype(name: str) -> torch.dtype | str:
    if name == "auto":
        return "auto"
    return getattr(torch, name)


@register("transformers")
class TransformersBackend:
    """A stage on transformers. ``model``/``tokenizer`` may be injected (tests, notebooks)."""

    def __init__(
        self,
        stage: StageConfig,
        models_dir: Path | str = "models",
        *,
        model: Any = None,
        tokenizer: Any = None,
        device: str | None = None,
        clock: Clock = time.perf_counter,
    ):
        self.stage = stage
        self.clock = clock
        start = clock()
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if self.device == "cpu":
            torch.set_num_threads(cpu_threads(stage.threads))
        weights = "<injected>"
        if model is None or tokenizer is None:
            src = resolve(stage, models_dir, "hf")
            weights = src.weights
            try:
                tokenizer = tokenizer or AutoTokenizer.from_pretrained(src.tokenizer)
                model = model or AutoModelForCausalLM.from_pretrained(
                    src.weights, dtype=_torch_dtype(stage.dtype)
                )
            except OSError as exc:
                raise AsdError(
                    f"stage '{stage.name}': cannot load {src.weights} ({str(exc).splitlines()[0]})"
                ) from None
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.cache_kw = cache_keyword(self.model)
        self._kv: tuple[list[int], Any] | None = None  # (tokens, cache) of the last score pass
        self.listener: TokenListener | None = None  # see asd_core.models.base.listening
        gen_cfg = getattr(self.model, "generation_config", None)
        self.eos = eos_ids(tokenizer.eos_token_id, getattr(gen_cfg, "eos_token_id", None))
        self.pad_id = (
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(self.eos)
        )
        self.info = StageInfo(
            stage.name,
            "transformers",
            weights,
            str(self.model.dtype),
            clock() - start,
            {"device": self.device},
        )

    # -- generation ---------------------------------------------------------------------------
    def _decode(self, tokens: Sequence[int]) -> str:
        return decode_text(self.tokenizer, tokens)

    @torch.inference_mode()
    def generate(self, prompts: Sequence[TokenIds], params: GenerationParams) -> list[Generation]:
        """Greedy outputs for a batch; timing fields are those of the whole batch."""
        check_prompts(prompts, self.stage.context_length, params.max_new_tokens, self.stage.name)
        return self._generate(prompts, params)

    def _reporter(
        self, stream: tuple[int, list[int]] | None
    ) -> Callable[[int, list[int]], Any] | None:
        """What the step clock calls with each row's new tokens: the listener, with the row's
        index in the caller's batch (``stream``: offset, resumed prefix), cut at EOS."""
        listener = self.listener
        if listener is None:
            return None
        offset, lead = stream if stream is not None else (0, [])

        def report(row: int, new: list[int]) -> None:
            cut = next((i + 1 for i, t in enumerate(new) if t in self.eos), len(new))
            listener(offset + row, lead + new[:cut])  # generate cannot drop one row: go on

        return report

    def _generate(
        self,
        prompts: Sequence[TokenIds],
        params: GenerationParams,
        cache: Any = None,
        stream: tuple[int, list[int]] | None = None,
    ) -> list[Generation]:
        """``model.generate`` on a left-padded batch; ``cache`` holds all but each last token.

        Long because: the decode loop keeps per-token statistics, stop strings and timing together.
        """
        if not prompts:
            return []
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, p in enumerate(prompts):  # left padding keeps every row's last token aligned
            ids[i, width - len(p) :] = torch.tensor(list(p), dtype=torch.long)
            mask[i, width - len(p) :] = 1
        step_clock = _StepClock(self.clock, width, self._reporter(stream))
        kwargs: dict[str, Any] = {}
        if params.stop_strings:
            kwargs |= {"stop_strings": list(params.stop_strings), "tokenizer": self.tokenizer}
        if params.ignore_eos:
            kwargs["min_new_tokens"] = params.max_new_tokens
        if cache is not None:
            kwargs[self.cache_kw] = cache
        start = self.clock()
        out = self.model.generate(
            input_ids=ids.to(self.device),
            attention_mask=mask.to(self.device),
            max_new_tokens=params.max_new_tokens,
            do_sample=False,
            num_beams=1,
            eos_token_id=sorted(self.eos),
            pad_token_id=self.pad_id,
            logits_processor=LogitsProcessorList([step_clock]),
            output_logits=True,
            output_hidden_states=params.return_hidden,
            return_dict_in_generate=True,
            temperature=None,
            top_p=None,
            top_k=None,
            **kwargs,
        )
        total = self.clock() - start
        prefill = (step_clock.stamps[0] - start) if step_clock.stamps else total
        new_tokens = out.sequences[:, width:].cpu().tolist()
        logits = (
            torch.stack(out.logits, dim=1).float().cpu().numpy() if out.logits else None
        )  # (B, T, V)
        results = []
        for b, p in enumerate(prompts):
            tokens, reason = cut_output(
                new_tokens[b],
                self.eos,
                params.stop_strings,
                self._decode,
                params.ignore_eos,
                params.max_new_tokens,
            )
            n = len(tokens)
            rows = logits[b, :n] if logits is not None else np.zeros((0, 1), np.float32)
            lp, top_ids, top_lp, ent = token_stats(
                rows, np.asarray(tokens, dtype=np.int64), params.top_k
            )
            hidden = None
            if params.return_hidden and n:
                steps = [out.hidden_states[t][-1][b, -1, :].float() for t in range(n)]
                hidden = torch.stack(steps).mean(dim=0).cpu().numpy()
            results.append(
                Generation(
                    prompt_ids=list(p),
                    token_ids=tokens,
                    text=self._decode(tokens),
                    logprobs=lp,
                    top_ids=top_ids,
                    top_logprobs=top_lp,
                    entropy=ent,
                    stop_reason=reason,
                    prefill_s=prefill,
                    total_s=total,
                    hidden_mean=hidden,
                )
            )
        return results

    @torch.inference_mode()
    def resume(
        self, prompts: Sequence[TokenIds], prefixes: Sequence[Prefix], params: GenerationParams
    ) -> list[Generation]:
        """Greedy outputs that start with verified prefixes (see :class:`Backend`), one by one."""
        if len(prompts) != len(prefixes):
            raise AsdError(
                f"stage '{self.stage.name}': {len(prompts)} prompts but {len(prefixes)} prefixes"
            )
        check_prompts(prompts, self.stage.context_length, params.max_new_tokens, self.stage.name)
        return [
            self._resume_one(list(p), pre, params, i)
            for i, (p, pre) in enumerate(zip(prompts, prefixes, strict=True))
        ]

    def _resume_one(
        self, prompt: list[int], prefix: Prefix, params: GenerationParams, index: int = 0
    ) -> Generation:
        ids = [int(t) for t in prefix.token_ids]
        if not ids:
            return self._generate([prompt], params, stream=(index, []))[0]
        start = self.clock()
        done = finished_prefix(prefix, self.eos, params, self._decode)
        if done is not None:
            return join_generation(
                prompt,
                prefix,
                None,
                done[0],
                done[1],
                self._decode,
                params.top_k,
                0.0,
                self.clock() - start,
            )
        head = prompt + ids[:-1]
        if self._kv is not None and self._kv[0][: len(head)] == head:
            cache = self._kv[1]
            surplus = len(self._kv[0]) - len(head)
            if surplus:  # transformers 5 crops by a negative count of tokens to remove
                cache.crop(-surplus)
        else:  # recompute as the verification pass would have
            cache = DynamicCache(config=self.model.config)
            self._forward(prompt, ids[:-1], cache, keep=0)
        self._kv = None  # generation extends the cache past what it records
        primed = self.clock()
        budget = params.max_new_tokens - len(ids)
        sub = GenerationParams(budget, params.stop_strings, params.top_k, params.ignore_eos)
        new = self._generate([head + ids[-1:]], sub, cache, stream=(index, ids))[0]
        tokens, reason = cut_output(
            ids + new.token_ids,
            self.eos,
            params.stop_strings,
            self._decode,
            params.ignore_eos,
            params.max_new_tokens,
        )
        return join_generation(
            prompt,
            prefix,
            new,
            tokens,
            reason,
            self._decode,
            params.top_k,
            primed - start + new.prefill_s,
            self.clock() - start,
        )

    def _forward(self, prompt: list[int], cont: list[int], cache: Any, keep: int) -> torch.Tensor:
        """Feed prompt + cont into ``cache``; (keep, V) float logits of the last ``keep`` rows.

        The prompt goes in one pass; the continuation too, or one token at a time with
        ``exact_scoring`` (the kernels generation uses).
        """
        dev = self.device
        if not self.stage.exact_scoring or not cont:
            seq = torch.tensor([prompt + cont], dtype=torch.long, device=dev)
            out = self.model(
                input_ids=seq, use_cache=True, logits_to_keep=keep, **{self.cache_kw: cache}
            )
            return out.logits[0].float() if keep else out.logits[0, :0].float()
        seq = torch.tensor([prompt], dtype=torch.long, device=dev)
        rows = [
            self.model(input_ids=seq, use_cache=True, logits_to_keep=1, **{self.cache_kw: cache})
            .logits[0, -1]
            .float()
        ]
        for tok in cont:
            step = torch.tensor([[tok]], dtype=torch.long, device=dev)
            rows.append(
                self.model(
                    input_ids=step, use_cache=True, logits_to_keep=1, **{self.cache_kw: cache}
                )
                .logits[0, -1]
                .float()
            )
        return torch.stack(rows)[len(rows) - keep :] if keep else rows[0][:0]

    # -- scoring ------------------------------------------------------------------------------
    @torch.inference_mode()
    def score(
        self,
        prompts: Sequence[TokenIds],
        continuations: Sequence[TokenIds],
        top_k: int = 0,
        until_mismatch: bool = False,  # scores everything: one pass costs the same either way
    ) -> list[Scoring]:
        """Teacher-forced argmax over each continuation, one forward pass per sequence.

        The last sequence's cache is kept for :meth:`resume`.
        """
        if len(prompts) != len(continuations):
            raise AsdError(
                f"stage '{self.stage.name}': {len(prompts)} prompts but {len(continuations)} continuations"
            )
        check_prompts(prompts, self.stage.context_length, 0, self.stage.name)
        results = []
        for p, c in zip(prompts, continuations, strict=True):
            m = len(c)
            if len(p) + m > self.stage.context_length:
                raise AsdError(
                    f"stage '{self.stage.name}': prompt + continuation is {len(p) + m} tokens, more than the context length {self.stage.context_length}"
                )
            start = self.clock()
            cache = DynamicCache(config=self.model.config)
            logits = self._forward(list(p), list(c), cache, keep=m + 1)  # (m+1, V)
            self._kv = (list(p) + list(c), cache)
            seconds = self.clock() - start
            logp = torch.log_softmax(logits, dim=-1)
            argmax = logits.argmax(dim=-1).cpu().numpy().astype(np.int64)
            cont = torch.tensor(list(c), dtype=torch.long, device=self.device)
            given = (
                logp[torch.arange(m, device=self.device), cont].cpu().numpy().astype(np.float32)
                if m
                else np.zeros(0, np.float32)
            )
            stats: tuple[Any, ...] = (None, None, None)
            if top_k > 0:
                _, ti, tl, ent = token_stats(logits.cpu().numpy(), argmax, top_k)
                stats = (ti, tl, ent)
            results.append(
                Scoring(
                    argmax_ids=argmax[:m],
                    logprobs=given,
                    next_argmax=int(argmax[m]),
                    seconds=seconds,
                    top_ids=stats[0],
                    top_logprobs=stats[1],
                    entropy=stats[2],
                )
            )
        return results

    @torch.inference_mode()
    def next_logprobs(
        self, prompts: Sequence[TokenIds], token_ids: Sequence[int]
    ) -> list[NextTokens]:
        """One forward pass per prompt (logits of its last position), read at ``token_ids``."""
        check_prompts(prompts, self.stage.context_length, 0, self.stage.name)
        wanted = np.asarray(token_ids, dtype=np.int64)
        out = []
        for p in prompts:
            start = self.clock()
            cache = DynamicCache(config=self.model.config)
            row = self._forward(list(p), [], cache, keep=1)[-1].cpu().numpy()
            logprobs, best = log_softmax_at(row, wanted), int(row.argmax())
            out.append(NextTokens(logprobs, best, self.clock() - start))
        return out

    def close(self) -> None:
        self.model = None
        self._kv = None
