"""transformers' assisted generation: the target verifies the drafter's tokens in one forward pass (batch size 1, as transformers requires), beside the target alone."""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from asd_core.ground.config import StageConfig
from asd_core.ground.errors import AsdError
from asd_core.models.base import GenerationParams, StopReason, TokenIds
from asd_core.models.common import check_prompts, cut_output, decode_text, hit_stop_string
from benchmarks.spec_results import Clock, SpecResult, _result, on_runtime, steps_from_passes

# transformers 5's own defaults for an assistant model, pinned here so a library upgrade cannot
# silently change the baseline: draft up to 20 tokens, stop drafting early once the assistant's
# top-1 probability drops below 0.4 (that threshold then adapts to the observed acceptances).
ASSISTANT_TOKENS = 20


ASSISTANT_SCHEDULE = "constant"


ASSISTANT_CONFIDENCE = 0.4


def assisted_generation(
    target: StageConfig,
    drafter: StageConfig,
    prompts: Sequence[TokenIds],
    params: GenerationParams,
    models_dir: str | Path = "models",
    *,
    dtype: str | None = None,
    num_assistant_tokens: int = ASSISTANT_TOKENS,
    schedule: str = ASSISTANT_SCHEDULE,
    confidence_threshold: float = ASSISTANT_CONFIDENCE,
    with_target_alone: bool = True,
    clock: Clock = time.perf_counter,
) -> list[SpecResult]:
    """Target greedy outputs through transformers assisted generation, one prompt at a time.

    Both stages are loaded as transformers checkpoints (``registry.resolve(..., "hf")``; the
    embedded GGUF stages are converted once) in their stage dtype, or ``dtype`` for both
    (``"float32"`` for exactness checks). ``schedule`` is transformers'
    ``num_assistant_tokens_schedule``: ``"constant"``, ``"heuristic"`` (+2 draft tokens after a
    fully accepted draft, −1 otherwise, carried over to the next prompt) or
    ``"heuristic_transient"`` (reset for every prompt); ``confidence_threshold`` ends a draft
    early when the assistant's top-1 probability falls below it (0 turns that off).

    Only ``max_new_tokens``, ``stop_strings`` and ``ignore_eos`` of ``params`` are used.
    Acceptance statistics are not reported by transformers; they are read off the target's
    forward passes (:func:`steps_from_passes`).

    Long because: the target alone and with its assistant run in the same process, side by side.
    """
    from asd_core.models.hf import TransformersBackend

    if not prompts:
        return []
    check_prompts(prompts, target.context_length, params.max_new_tokens, target.name)
    tgt = TransformersBackend(on_runtime(target, "transformers", dtype), models_dir, clock=clock)
    drf = TransformersBackend(on_runtime(drafter, "transformers", dtype), models_dir, clock=clock)
    try:
        if tgt.tokenizer.get_vocab() != drf.tokenizer.get_vocab():
            raise AsdError(
                f"stages '{target.name}' and '{drafter.name}': different tokenizers; "
                "assisted generation here needs a drafter with the target's vocabulary"
            )
        assistant_cfg = drf.model.generation_config
        assistant_cfg.num_assistant_tokens = num_assistant_tokens
        assistant_cfg.num_assistant_tokens_schedule = schedule
        assistant_cfg.assistant_confidence_threshold = confidence_threshold
        settings = {
            "dtype": str(tgt.model.dtype).removeprefix("torch."),
            "drafter_dtype": str(drf.model.dtype).removeprefix("torch."),
            "num_assistant_tokens": num_assistant_tokens,
            "num_assistant_tokens_schedule": schedule,
            "assistant_confidence_threshold": confidence_threshold,
            "max_new_tokens": params.max_new_tokens,
            "batch_size": 1,
        }
        # the first calls of a fresh model pay one-off set-up; keep it out of the timings, and
        # keep the warm-up from moving the heuristic schedule's draft length
        warm = GenerationParams(max_new_tokens=4, ignore_eos=True)
        _hf_generate(tgt, prompts[0], warm, clock)
        _hf_generate(tgt, prompts[0], warm, clock, assistant=drf.model)
        assistant_cfg.num_assistant_tokens = num_assistant_tokens

        results = []
        for prompt in prompts:
            alone: tuple[list[int], float] | None = None
            if with_target_alone:
                raw, seconds, _ = _hf_generate(tgt, prompt, params, clock)
                alone = (_cut(tgt, raw, params)[0], seconds)
            raw, seconds, passes = _hf_generate(tgt, prompt, params, clock, assistant=drf.model)
            tokens, reason = _cut(tgt, raw, params)
            steps = steps_from_passes(len(prompt), len(raw), passes)
            if steps is None:
                _warn_unreadable_passes()
            results.append(
                _result(
                    "transformers",
                    target,
                    drafter,
                    prompt,
                    tokens,
                    decode_text(tgt.tokenizer, tokens),
                    reason,
                    seconds,
                    alone,
                    steps,
                    {"target_forward_passes": len(passes)},
                    settings,
                )
            )
        return results
    finally:
        tgt.close()
        drf.close()


def _warn_unreadable_passes() -> None:
    import transformers

    warnings.warn(
        f"transformers {transformers.__version__}: the target's forward passes do not fit "
        "assisted generation as steps_from_passes reads it; acceptance counts left empty",
        stacklevel=3,
    )


def _hf_generate(
    backend: Any,
    prompt: TokenIds,
    params: GenerationParams,
    clock: Clock,
    assistant: Any = None,
) -> tuple[list[int], float, list[tuple[int, int]]]:
    """One greedy ``generate`` call: raw new tokens, seconds, and the target's forward passes.

    The target alone and assisted generation go through this same call (only
    ``assistant_model`` differs), so their timings compare like for like.
    """
    import torch

    passes: list[tuple[int, int]] = []

    def record(_module: Any, _args: Any, kwargs: dict[str, Any]) -> None:
        ids, cache = kwargs.get("input_ids"), kwargs.get(backend.cache_kw)
        cached = int(cache.get_seq_length()) if cache is not None else 0
        passes.append((int(ids.shape[1]) if ids is not None else 0, cached))

    ids = torch.tensor([list(prompt)], dtype=torch.long, device=backend.device)
    kwargs: dict[str, Any] = {}
    if params.stop_strings:
        kwargs["stopping_criteria"] = _stop_string_criteria(backend.tokenizer, len(prompt), params)
    if params.ignore_eos:
        kwargs["min_new_tokens"] = params.max_new_tokens
    if assistant is not None:
        kwargs["assistant_model"] = assistant
    hook = backend.model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        with torch.inference_mode():
            start = clock()
            out = backend.model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=params.max_new_tokens,
                do_sample=False,
                num_beams=1,
                eos_token_id=sorted(backend.eos),
                pad_token_id=backend.pad_id,
                temperature=None,
                top_p=None,
                top_k=None,
                **kwargs,
            )
            seconds = clock() - start
    finally:
        hook.remove()
    return out[0, len(prompt) :].tolist(), seconds, passes


def _stop_string_criteria(tokenizer: Any, prompt_len: int, params: GenerationParams) -> Any:
    """Stop once the decoded output contains a stop string, wherever in the last block it ends.

    transformers' own ``stop_strings`` cannot be used here: with an assistant model it raises
    (the assistant's ``generate`` gets the stop strings but no tokenizer), and it only sees a
    stop string that ends on the last token of an accepted block (transformers issue #48039).
    This criterion decodes the whole output as ``cut_output`` does, so both runs stop where
    the cut falls.
    """
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class ContainsStopString(StoppingCriteria):
        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            done = [
                hit_stop_string(
                    decode_text(tokenizer, row[prompt_len:].tolist()), params.stop_strings
                )
                for row in input_ids
            ]
            return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([ContainsStopString()])


def _cut(backend: Any, raw: list[int], params: GenerationParams) -> tuple[list[int], StopReason]:
    return cut_output(
        raw,
        backend.eos,
        params.stop_strings,
        lambda t: decode_text(backend.tokenizer, t),
        params.ignore_eos,
        params.max_new_tokens,
    )
