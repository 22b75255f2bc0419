"""Small pure helpers shared by every backend: next-token statistics, stopping, input checks."""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from asd_core.ground.errors import AsdError
from asd_core.models.base import (
    Generation,
    GenerationParams,
    Prefix,
    StopReason,
    TokenIds,
    TokenListener,
    listening,
)


def token_stats(logits: np.ndarray, chosen: np.ndarray, top_k: int) -> tuple[np.ndarray, ...]:
    """Per-row statistics of next-token distributions.

    Args:
        logits: (n, V) float, raw next-token logits.
        chosen: (n,) int, the token actually emitted at each row.
        top_k: how many alternatives to keep.
    Returns:
        logprob of ``chosen`` (n,), top-k ids (n, k), top-k logprobs (n, k), entropy (n,) — nats.
    """
    x = np.asarray(logits, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"logits must be (n, V), got shape {x.shape}")
    n = x.shape[0]
    k = max(0, min(top_k, x.shape[1]))
    if n == 0:
        return (
            np.zeros(0, np.float32),
            np.zeros((0, k), np.int64),
            np.zeros((0, k), np.float32),
            np.zeros(0, np.float32),
        )
    # One exp over the vocabulary per row: this runs once per generated token on 150k-wide
    # rows, so it is most of a backend's per-token overhead.
    shifted = x - x.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    z = e.sum(axis=1)
    log_z = np.log(z)
    rows = np.arange(n)
    chosen_lp = shifted[rows, np.asarray(chosen, dtype=np.int64)] - log_z
    entropy = log_z - np.einsum("ij,ij->i", e, shifted) / z  # H = log Z − E_p[shifted]
    top_ids = np.stack([_top_k(row, k) for row in shifted]) if k else np.zeros((n, 0), np.int64)
    top_lp = np.take_along_axis(shifted, top_ids, axis=1) - log_z[:, None]
    return (
        chosen_lp.astype(np.float32),
        top_ids,
        top_lp.astype(np.float32),
        np.maximum(entropy, 0.0).astype(np.float32),
    )


def log_softmax_at(logits: np.ndarray, token_ids: np.ndarray) -> np.ndarray:
    """(c,) float32 log-softmax of one (V,) logits row, read at ``token_ids`` (c,), nats."""
    x = np.asarray(logits, dtype=np.float64)
    top = x.max()
    log_z = top + np.log(np.exp(x - top).sum())
    return (x[np.asarray(token_ids, dtype=np.int64)] - log_z).astype(np.float32)


def _top_k(shifted_row: np.ndarray, k: int) -> np.ndarray:
    """Ids of the ``k`` largest entries of one (V,) row whose maximum is 0, largest first.

    Only entries within a few nats of the maximum can be in the top k of a peaked
    distribution, and selecting them first is ~5x faster than a partition of all V entries.
    """
    cand = np.flatnonzero(shifted_row >= -8.0)
    if cand.size < k:  # a confident row: widen the window
        cand = np.flatnonzero(shifted_row >= -32.0)
    if cand.size < k:  # still too few: partition the whole row
        cand = np.argpartition(shifted_row, shifted_row.size - k)[-k:]
    if cand.size > 64 * k:  # many near the top: partition just those
        cand = cand[np.argpartition(shifted_row[cand], cand.size - k)[-k:]]
    order = np.argsort(-shifted_row[cand], kind="stable")[:k]
    return cand[order].astype(np.int64)


def eos_ids(*candidates: int | Iterable[int] | None) -> frozenset[int]:
    """Union of the EOS ids found in a tokenizer, a generation config and a model config."""
    out: set[int] = set()
    for c in candidates:
        if c is None:
            continue
        if isinstance(c, int):
            out.add(c)
        else:
            out.update(int(i) for i in c)
    return frozenset(out)


def hit_stop_string(text: str, stop_strings: Sequence[str]) -> bool:
    """True once ``text`` (the decoded output so far) contains any stop string."""
    return any(s and s in text for s in stop_strings)


def cut_output(
    tokens: list[int],
    eos: frozenset[int],
    stop_strings: Sequence[str],
    decode: Callable[[list[int]], str],
    ignore_eos: bool,
    max_new_tokens: int,
) -> tuple[list[int], StopReason]:
    """Cut a runtime's raw output where greedy generation really ended, the same for all runtimes.

    Ends at the first EOS (kept) unless ``ignore_eos``, or at the token whose decoded prefix
    first contains a stop string (kept), whichever comes first; else at ``max_new_tokens``.
    Prefixes are decoded whole (not incrementally) so every runtime cuts at the same token.
    """
    end = len(tokens)
    if not ignore_eos:
        end = next((i + 1 for i, t in enumerate(tokens) if t in eos), end)
    if stop_strings and hit_stop_string(decode(tokens[:end]), stop_strings):
        first = next(
            i for i in range(end) if hit_stop_string(decode(tokens[: i + 1]), stop_strings)
        )
        return tokens[: first + 1], "stop"
    if end < len(tokens) or (not ignore_eos and tokens and tokens[end - 1] in eos):
        return tokens[:end], "eos"
    return tokens[:max_new_tokens], "length"


def check_prompts(
    prompts: Sequence[Sequence[int]], context_length: int, max_new_tokens: int, stage: str
) -> None:
    """Reject inputs a runtime would choke on deep inside, with one clear line."""
    for i, ids in enumerate(prompts):
        if len(ids) == 0:
            raise AsdError(f"stage '{stage}': prompt {i} is empty (no tokens)")
        if len(ids) + max_new_tokens > context_length:
            raise AsdError(
                f"stage '{stage}': prompt {i} has {len(ids)} tokens + {max_new_tokens} new tokens, "
                f"more than the context length {context_length}"
            )


def cpu_threads(requested: int) -> int:
    """Threads to use: ``requested`` or, when 0, the cores this process may run on."""
    if requested > 0:
        return requested
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def chat_prompt_ids(tokenizer: Any, text: str) -> list[int]:
    """Token ids of a one-turn user chat in ``tokenizer``'s template, generation prompt appended."""
    enc = tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True
    )
    # transformers 5 returns a BatchEncoding here, older releases a plain list
    return list(enc["input_ids"] if hasattr(enc, "keys") else enc)


def decode_text(tokenizer: Any, ids: Sequence[int]) -> str:
    """The text of ``ids`` with special tokens (EOS, chat markers) removed."""
    return str(tokenizer.decode(list(ids), skip_special_tokens=True))


# -- resuming after a verified prefix ------------------------------------------------------------
def prefix_from_scoring(scoring: Any, token_ids: Sequence[int]) -> Prefix:
    """The :class:`Prefix` of ``token_ids`` (n ≤ m + 1 ids) read off a ``score(top_k>0)`` pass.

    Each id must be the scorer's own argmax at its row (a verified prefix plus the verifier's
    token), so its log-probability is that row's top-1 log-probability.
    """
    n = len(token_ids)
    if scoring.top_ids is None or scoring.top_logprobs is None or scoring.entropy is None:
        raise ValueError("the scoring pass carries no statistics: call score(..., top_k > 0)")
    if n > len(scoring.entropy):
        raise ValueError(f"prefix of {n} tokens but the pass has {len(scoring.entropy)} rows")
    return Prefix(
        token_ids=[int(t) for t in token_ids],
        logprobs=scoring.top_logprobs[:n, 0].astype(np.float32),
        top_ids=scoring.top_ids[:n],
        top_logprobs=scoring.top_logprobs[:n],
        entropy=scoring.entropy[:n],
    )


def empty_prefix(top_k: int) -> Prefix:
    """A prefix of zero tokens (resume then equals generating from scratch)."""
    return Prefix(
        [],
        np.zeros(0, np.float32),
        np.zeros((0, top_k), np.int64),
        np.zeros((0, top_k), np.float32),
        np.zeros(0, np.float32),
    )


def join_generation(
    prompt: Sequence[int],
    prefix: Prefix,
    new: Generation | None,
    tokens: list[int],
    reason: StopReason,
    decode: Callable[[list[int]], str],
    top_k: int,
    prefill_s: float,
    total_s: float,
) -> Generation:
    """One :class:`Generation` for prefix + newly generated tokens, cut to ``tokens`` (n ids)."""
    n = len(tokens)

    def cat(a: np.ndarray, b: np.ndarray | None) -> np.ndarray:
        a = a[:, :top_k] if a.ndim == 2 else a
        if b is None:
            return a[:n]
        b = b[:, :top_k] if b.ndim == 2 else b
        return np.concatenate([a, b])[:n]

    return Generation(
        prompt_ids=list(prompt),
        token_ids=tokens,
        text=decode(tokens),
        logprobs=cat(prefix.logprobs, None if new is None else new.logprobs),
        top_ids=cat(prefix.top_ids, None if new is None else new.top_ids),
        top_logprobs=cat(prefix.top_logprobs, None if new is None else new.top_logprobs),
        entropy=cat(prefix.entropy, None if new is None else new.entropy),
        stop_reason=reason,
        prefill_s=prefill_s,
        total_s=total_s,
        hidden_mean=None if new is None else new.hidden_mean,
    )


def finished_prefix(
    prefix: Prefix,
    eos: frozenset[int],
    params: GenerationParams,
    decode: Callable[[list[int]], str],
) -> tuple[list[int], StopReason] | None:
    """Where generation ends inside ``prefix`` already (EOS, stop string, length), else None."""
    ids = prefix.token_ids
    if not ids:
        return None
    tokens, reason = cut_output(
        ids, eos, params.stop_strings, decode, params.ignore_eos, params.max_new_tokens
    )
    if reason != "length" or len(ids) >= params.max_new_tokens:
        return tokens, reason
    return None


def _after_prefixes(
    listener: TokenListener, index: Sequence[int], prefixes: Sequence[Sequence[int]]
) -> TokenListener:
    """``listener`` for a call on a subset of sequences that continue ``prefixes``: sequence
    ``j`` of the call is the caller's ``index[j]``, and its output so far starts with its prefix."""

    def heard(j: int, tokens: Sequence[int]) -> bool:
        return listener(index[j], [*prefixes[j], *tokens])

    return heard


def resume_by_generating(
    backend: Any, prompts: Sequence[TokenIds], prefixes: Sequence[Prefix], params: GenerationParams
) -> list[Generation]:
    """``resume`` for runtimes that cache prefixes themselves (vLLM) or not at all.

    Generates after prompt + prefix as a new prompt, then re-cuts the joined output so that a
    stop string spanning the boundary ends it where a from-scratch run would have.
    """
    if len(prompts) != len(prefixes):
        raise AsdError(
            f"stage '{backend.stage.name}': {len(prompts)} prompts but {len(prefixes)} prefixes"
        )
    decode = functools.partial(decode_text, backend.tokenizer)
    out: list[Generation | None] = [None] * len(prompts)
    todo: list[int] = []
    for i, (p, pre) in enumerate(zip(prompts, prefixes, strict=True)):
        done = finished_prefix(pre, backend.eos, params, decode)
        if done is not None:
            out[i] = join_generation(p, pre, None, done[0], done[1], decode, params.top_k, 0.0, 0.0)
        else:
            todo.append(i)
    by_budget: dict[int, list[int]] = {}
    for i in todo:
        by_budget.setdefault(params.max_new_tokens - len(prefixes[i].token_ids), []).append(i)
    listener = getattr(backend, "listener", None)
    for budget, idx in by_budget.items():
        sub = dataclasses.replace(params, max_new_tokens=budget)
        # the caller's listener hears the whole output: prefix first, in the caller's order
        shifted = listener and _after_prefixes(listener, idx, [prefixes[i].token_ids for i in idx])
        with listening(backend, shifted):
            gens = backend.generate([list(prompts[i]) + prefixes[i].token_ids for i in idx], sub)
        for i, g in zip(idx, gens, strict=True):
            pre = prefixes[i]
            joined = pre.token_ids + g.token_ids
            tokens, reason = cut_output(
                joined,
                backend.eos,
                params.stop_strings,
                decode,
                params.ignore_eos,
                params.max_new_tokens,
            )
            out[i] = join_generation(
                prompts[i], pre, g, tokens, reason, decode, params.top_k, g.prefill_s, g.total_s
            )
    return [g for g in out if g is not None]
