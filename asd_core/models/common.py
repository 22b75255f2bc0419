"""Small pure helpers shared by every backend: next-token statistics, stopping, input checks."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

import numpy as np

from asd_core.errors import AsdError


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
    shifted = x - x.max(axis=1, keepdims=True)
    log_z = np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    logp = shifted - log_z
    chosen_lp = logp[np.arange(n), np.asarray(chosen, dtype=np.int64)]
    if k:
        part = np.argpartition(-logp, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(logp, part, axis=1), axis=1, kind="stable")
        top_ids = np.take_along_axis(part, order, axis=1).astype(np.int64)
        top_lp = np.take_along_axis(logp, top_ids, axis=1)
    else:
        top_ids, top_lp = np.zeros((n, 0), np.int64), np.zeros((n, 0), np.float32)
    entropy = -(np.exp(logp) * logp).sum(axis=1)
    return (
        chosen_lp.astype(np.float32),
        top_ids,
        top_lp.astype(np.float32),
        entropy.astype(np.float32),
    )


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
