"""The key/value cache manager: bounds each stage's cache memory and frees what is done with.

A stage holds one key/value slot per sequence it decodes together (llama.cpp allocates them at
load: ``max_batch`` × ``context_length`` tokens). The manager admits a request into a stage's
batch only while the batch's reservations — prompt + ``max_tokens`` per request — fit the stage's
budget, so a batch never needs more cache than there is. An escalated request's verified prefix
stays where the deeper stage's verification pass left it, for that stage's ``resume`` to continue
from (``decoding.verify.escalate``); once a stage's decision about a request is made, that stage's
slot holding it is emptied, and so is every slot of a request that finished or was abandoned.

Backends that keep a cache between calls report it (``kv_usage``, ``release``: the llama.cpp
backend); the others hold their cache only inside a call and report nothing held.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class StageMemory:
    """One stage's key/value memory as ``/metrics`` shows it."""

    held_tokens: int  # tokens whose keys and values the stage's slots hold now
    bytes_per_token: int  # their size per token (0: the runtime does not say)
    capacity_tokens: int  # the most the stage can hold (its slots)
    budget_tokens: int  # what one batch may reserve

    @property
    def held_bytes(self) -> int:
        return self.held_tokens * self.bytes_per_token


class CacheManager:
    """Admission by reserved tokens and freeing of finished requests, per stage."""

    def __init__(self, backends: Sequence[Any], budget_tokens: int = 0):
        self.backends = list(backends)
        self.capacity = [self._capacity(b) for b in self.backends]
        # 0: the whole allocation; never more than it
        self.budget = [min(budget_tokens or c, c) for c in self.capacity]
        self.freed_tokens = [0] * len(self.backends)  # freed since start, per stage

    @staticmethod
    def _capacity(backend: Any) -> int:
        usage = getattr(backend, "kv_usage", None)
        if usage is not None:
            return int(usage()[2])
        return int(getattr(backend, "max_batch", 1)) * int(backend.stage.context_length)

    def reservation(self, prompt_tokens: int, max_tokens: int) -> int:
        """Tokens one request may need at a stage: its prompt and everything it may write."""
        return prompt_tokens + max_tokens

    def fits(self, stage: int, reservations: Sequence[int]) -> int:
        """How many of ``reservations`` (in order) fit the stage's budget together; at least one
        (a single request that fits the context was checked on arrival)."""
        total, n = 0, 0
        for r in reservations:
            if n and total + r > self.budget[stage]:
                break
            total, n = total + r, n + 1
        return n

    def release(self, stage: int, prompt_ids: Sequence[int]) -> None:
        """Empty the stage's slots that hold this prompt (its decision there is made)."""
        free = getattr(self.backends[stage], "release", None)
        if free is not None:
            self.freed_tokens[stage] += int(free(prompt_ids))

    def memory(self, stage: int) -> StageMemory:
        usage = getattr(self.backends[stage], "kv_usage", None)
        held, per_token = (int(usage()[0]), int(usage()[1])) if usage is not None else (0, 0)
        return StageMemory(held, per_token, self.capacity[stage], self.budget[stage])
