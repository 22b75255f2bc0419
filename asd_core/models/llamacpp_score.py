"""Reading a llama.cpp scoring pass: one scored sequence's logits rows reduced as they arrive.

:class:`ScoreReader` is the ``on_rows`` of a sequence that ``LlamaCppBackend.score`` feeds
teacher-forced: it keeps the argmax of every row, the log-probability of each given token and,
when asked, the top-k statistics, and it can end the sequence at the first disagreement.
"""

from __future__ import annotations

import numpy as np

from asd_core.models.base import Scoring
from asd_core.models.common import token_stats
from asd_core.models.llamacpp_slots import SlotSequence

SCORE_BLOCK = 32  # rows of logits reduced at once: bounds temporaries to 32 x V floats


class ScoreReader:
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

    def __call__(self, seq: SlotSequence, index: int, rows: np.ndarray, ith: int) -> None:
        for b0 in range(0, rows.shape[0], SCORE_BLOCK):
            x = rows[b0 : b0 + SCORE_BLOCK]
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
