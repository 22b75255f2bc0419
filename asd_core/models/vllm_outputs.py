"""Reading vLLM's outputs: per-step log-prob statistics and timings (pure numpy, no vLLM).

What :mod:`asd_core.models.vllm_backend` makes of each ``RequestOutput``, apart from the engine
code so that both stay short; none of it imports vLLM.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

# Log-probs requested per generated token: at least 20 (vLLM's default ``max_logprobs``), so the
# entropy estimate sees the head of the distribution even when only the top 5 are reported.
ENTROPY_TOP_N = 20


def topk_entropy(top_logprobs: np.ndarray, vocab_size: int) -> np.ndarray:
    """Estimated entropy (nats) of each step's distribution from its top-N log-probs.

    With head mass s = Σ p_i over the N known tokens and tail mass r = 1 − s, the entropy lies
    between two bounds: the tail as a single outcome (lower, H_head − r·log r) and the tail
    spread evenly over the V − N other tokens (upper, lower + r·log(V − N)). We return the
    midpoint. On SmolLM2-135M (339 greedy steps, N = 20) it is off by 0.023 nats on average
    (correlation 0.999 with the exact entropy), where renormalising over the top 20 is off by
    0.28. Exact whenever the tail is empty.

    Args:
        top_logprobs: (n, N) true log-probabilities of the N most probable tokens per step.
        vocab_size: V, the model's vocabulary size.
    Returns:
        (n,) float32.
    """
    x = np.asarray(top_logprobs, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] == 0:
        return np.zeros(x.shape[0] if x.ndim else 0, np.float32)
    p = np.exp(x)
    tail = np.clip(1.0 - p.sum(axis=1), 0.0, 1.0)
    tail_log = np.log(np.where(tail > 0, tail, 1.0))
    lower = -(p * x).sum(axis=1) - tail * tail_log
    upper = lower + tail * np.log(max(vocab_size - x.shape[1], 1))
    return ((lower + upper) / 2).astype(np.float32)


def rank1(row: dict[int, Any]) -> int:
    """The most probable token of one ``prompt_logprobs`` position (rank 1)."""
    return next(tok for tok, lp in row.items() if lp.rank == 1)


def step_stats(
    steps: Sequence[dict[int, Any]], tokens: list[int], top_k: int, vocab_size: int
) -> tuple[np.ndarray, ...]:
    """Per-token statistics from vLLM's per-step log-prob dicts.

    Args:
        steps: one dict per generated step, token id → ``Logprob`` (rank, logprob), holding the
            ``ENTROPY_TOP_N`` most probable tokens plus the chosen one.
        tokens: the kept tokens (n ≤ len(steps)).
        top_k: alternatives to report.
        vocab_size: the model's vocabulary size (for the entropy estimate).
    Returns:
        chosen logprob (n,), top-k ids (n, k) int64, top-k logprobs (n, k), entropy (n,) — nats,
        as ``common.token_stats`` returns them.
    """
    n, k = len(tokens), top_k
    chosen = np.zeros(n, np.float32)
    top_ids = np.zeros((n, k), np.int64)
    top_lp = np.zeros((n, k), np.float32)
    head: list[list[float]] = []
    for t, (tok, step) in enumerate(zip(tokens, steps, strict=False)):
        # most probable first; on an exact tie the chosen token goes first, so top-1 is always
        # the greedy token (vLLM's ranks do not break ties the way its argmax does)
        ranked = sorted(step.items(), key=lambda kv: (-kv[1].logprob, kv[0] != tok))
        # the chosen token is added to the top N when it ranks lower; keep only the true top N
        ranked = ranked[:ENTROPY_TOP_N]
        chosen[t] = step[tok].logprob
        top_ids[t] = [tid for tid, _ in ranked[:k]]
        top_lp[t] = [lp.logprob for _, lp in ranked[:k]]
        head.append([lp.logprob for _, lp in ranked])
    width = min((len(h) for h in head), default=0)
    entropy = topk_entropy(
        np.array([h[:width] for h in head], dtype=np.float64).reshape(n, width), vocab_size
    )
    return chosen, top_ids, top_lp, entropy


def prefill_seconds(out: Any, total: float) -> float:
    """Engine time from queueing to first token (monotonic engine clock), else ``total``."""
    m = getattr(out, "metrics", None)
    queued, first = getattr(m, "queued_ts", 0.0), getattr(m, "first_token_ts", 0.0)
    if m is None or not queued or not first or first < queued:
        return total
    return float(min(first - queued, total))
