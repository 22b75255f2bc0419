"""llama.cpp's key/value slots, one per sequence, and the loop that decodes many sequences per call.

:meth:`Slots.run` decodes a list of sequences together: every ``llama_decode`` call carries one
new token of each generating sequence plus prompt tokens of sequences still prefilling, up to
``n_batch`` tokens. A finished sequence drops out and the next waiting one takes its slot
(continuous batching). A slot keeps its tokens after its sequence ends, so a later sequence
that may reuse a prompt starts from a slot already holding it (:meth:`Slots.admit`), and a
prefix shared by one call's sequences is prefilled once and copied (:meth:`Slots.share_prefix`).
Each decode call's wall time is shared among its sequences in proportion to the tokens each
contributed. The backend (:mod:`asd_core.models.llamacpp`) reads the logits rows through each
sequence's ``on_rows``.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import llama_cpp
import numpy as np

from asd_core.ground.errors import AsdError

Clock = Callable[[], float]

# a shared prompt prefix shorter than this is fed again: copying a slot costs about as much as
# prefilling a few tokens (it moves the whole slot, context_length cells of every layer)
MIN_SHARED = 16


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two token lists."""
    n = min(len(a), len(b))
    if n == 0:
        return 0
    diff = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
    return int(diff[0]) if diff.size else n


# (sequence, index in seq.tokens of the first row, (r, V) float32 logits view valid until the
# next decode, batch index of the first row)
RowsFn = Callable[["SlotSequence", int, np.ndarray, int], None]


@dataclass(eq=False)
class SlotSequence:
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


class Slots:
    """A llama.cpp context with one key/value slot per sequence (llama.cpp sequence ids)."""

    def __init__(
        self,
        ctx: Any,
        name: str,
        max_batch: int,
        n_batch: int,
        n_vocab: int,
        n_embd: int,
        reuse_prompts: Callable[[], bool],
        clock: Clock = time.perf_counter,
    ):
        self.ctx: Any = ctx
        self.name = name  # the stage's, for error messages
        self.max_batch = max_batch
        self.n_batch = n_batch  # tokens per llama_decode call
        self.n_vocab = n_vocab
        self.n_embd = n_embd
        self.reuse_prompts = reuse_prompts  # read at each admission: the stage may change
        self.clock = clock
        self.mem = llama_cpp.llama_get_memory(ctx)
        self.batch: Any = llama_cpp.llama_batch_init(n_batch, 0, 1)
        self.cached: list[list[int]] = [[] for _ in range(max_batch)]  # tokens per slot
        self.last_use = [0] * max_batch  # admission counter per slot (least recent first)
        self.uses = 0
        self.shared_slot: int | None = None  # holds this call's shared prompt prefix
        self.tokens_fed = 0  # tokens decoded since load (what prompt reuse saves shows here)

    def check_open(self) -> None:
        if self.ctx is None:  # the context is freed: a decode would crash the process
            raise AsdError(f"stage '{self.name}': backend used after close()")

    def clear(self) -> None:
        """Empty every slot."""
        llama_cpp.llama_memory_clear(self.mem, True)
        self.cached = [[] for _ in range(self.max_batch)]

    def admit(self, seq: SlotSequence, busy: set[int]) -> None:
        """Give ``seq`` a free slot: one holding its whole prompt if reuse is allowed, else the
        least recently used; drop the slot's tokens after what can be kept."""
        free = [s for s in range(self.max_batch) if s not in busy]
        slot, keep = min(free, key=lambda s: self.last_use[s]), 0
        if seq.reuse and self.reuse_prompts():
            for s in free:
                common = common_prefix(self.cached[s], seq.tokens)
                if common >= seq.n_prompt and min(common, seq.want_from) > keep:
                    slot, keep = s, min(common, seq.want_from)  # rows wanted must be computed
        src = self.shared_slot
        if seq.share and src is not None:
            common = min(common_prefix(self.cached[src], seq.tokens), seq.want_from)
            if common >= MIN_SHARED:
                if src in free:
                    slot, keep = src, common
                else:  # slots are separate buffers: copy the whole slot, keep the prefix
                    slot = min((s for s in free if s != src), key=lambda s: self.last_use[s])
                    llama_cpp.llama_memory_seq_cp(self.mem, src, slot, -1, -1)
                    self.cached[slot] = list(self.cached[src])
                    keep = common
        llama_cpp.llama_memory_seq_rm(self.mem, slot, keep, -1)
        del self.cached[slot][keep:]
        self.uses += 1
        self.last_use[slot] = self.uses
        seq.slot, seq.n_fed = slot, keep

    def plan(self, active: Sequence[SlotSequence]) -> list[tuple[SlotSequence, int]]:
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

    def share_prefix(self, seqs: Sequence[SlotSequence]) -> None:
        """Prefill the prompt prefix all ``seqs`` share once, for them to copy (see the module
        docstring); its time is split evenly among them."""
        self.shared_slot = None
        if len(seqs) < 2 or not self.reuse_prompts():
            return
        first = seqs[0].tokens
        n = min(min(common_prefix(first, s.tokens), s.want_from) for s in seqs[1:])
        if n < MIN_SHARED:
            return
        warm = SlotSequence(first[:n], n, n, n, False, lambda *_: None)
        self.run([warm])
        self.shared_slot = warm.slot
        for s in seqs:
            s.share, s.seconds = True, s.seconds + warm.seconds / len(seqs)

    def run_sharing(self, seqs: Sequence[SlotSequence]) -> None:
        """:meth:`run` after :meth:`share_prefix`; the shared slot is forgotten after."""
        try:
            self.share_prefix(seqs)
            self.run(seqs)
        finally:
            self.shared_slot = None

    def run(self, seqs: Sequence[SlotSequence]) -> None:
        """Decode ``seqs`` together until each has fed all its tokens or set ``done``."""
        queue, active = deque(seqs), list[SlotSequence]()
        b = self.batch
        while queue or active:
            while queue and len(active) < self.max_batch:
                seq = queue.popleft()
                self.admit(seq, {a.slot for a in active})
                active.append(seq)
            plan = self.plan(active)
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
            rc = llama_cpp.llama_decode(self.ctx, b)
            if rc != 0:  # 1: no KV slot (context full); < 0: internal error
                self.clear()  # the slots no longer match self.cached
                raise AsdError(f"stage '{self.name}': llama_decode failed with code {rc}")
            llama_cpp.llama_synchronize(self.ctx)
            share = (self.clock() - start) / j
            for (seq, count), first in zip(plan, firsts, strict=True):
                t0 = self.clock()
                seq.seconds += share * count
                self.cached[seq.slot].extend(seq.tokens[seq.n_fed : seq.n_fed + count])
                lo = max(seq.n_fed, seq.want_from)
                seq.n_fed += count
                if seq.n_fed > lo:
                    if seq.first_row_s is None:
                        seq.first_row_s = seq.seconds
                    ith = first + lo - (seq.n_fed - count)
                    ptr = llama_cpp.llama_get_logits_ith(self.ctx, ith)
                    rows = np.ctypeslib.as_array(ptr, shape=(seq.n_fed - lo, self.n_vocab))
                    seq.on_rows(seq, lo, rows, ith)
                seq.seconds += self.clock() - t0
            active = [s for s in active if not (s.done or s.n_fed == len(s.tokens))]

    def hidden_at(self, batch_index: int) -> np.ndarray:
        """(d_model,) float32 view of the final-layer hidden state of one batch row."""
        ptr = llama_cpp.llama_get_embeddings_ith(self.ctx, batch_index)
        if not ptr:
            raise AsdError(
                f"stage '{self.name}': llama.cpp returned no hidden state for this model"
            )
        return np.ctypeslib.as_array(ptr, shape=(self.n_embd,))

    def close(self) -> None:
        """Free the batch and the context (idempotent)."""
        if self.batch is not None:
            llama_cpp.llama_batch_free(self.batch)
            self.batch = None
        if self.ctx is not None:
            llama_cpp.llama_free(self.ctx)
            self.ctx = None
