"""The reference policies: fixed strategies, tuned threshold baselines and the oracles (§7).

They implement the interface of :mod:`asd_core.decoding.protocol`, so the online pipeline and
replay drive them exactly as they drive the learned DP policy (:mod:`asd_core.policy.adaptive`);
learned baselines read their predictions from an observer.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np

from asd_core.decoding.protocol import Move, PathLike, RequestLike, continue_to
from asd_core.ground.errors import AsdError


def _check_stage(value: int, n_stages: int, what: str) -> int:
    if not 0 <= value < n_stages:
        raise AsdError(f"{what}: stage {value} is outside 0..{n_stages - 1}")
    return value


class FixedDepth:
    """Always end at stage ``depth``: cascade from ``start`` through every stage up to it, or
    (``route``) go straight there."""

    def __init__(self, depth: int, n_stages: int, route: bool = False, start: int = 0):
        self.depth = _check_stage(depth, n_stages, "fixed depth")
        self.start = self.depth if route else _check_stage(start, n_stages, "start")
        if self.start > self.depth:
            raise AsdError(f"fixed depth: start {start} is deeper than depth {depth}")
        self.route = route
        self.name = f"{'route' if route else 'cascade'}_{self.start}_to_{depth}"

    def entry(self, requests: Sequence[RequestLike]) -> list[int]:
        return [self.start] * len(requests)

    def next_stage(self, stage: int, paths: Sequence[PathLike]) -> list[Move | None]:
        return [continue_to(stage + 1) if stage < self.depth else None for _ in paths]


class AlwaysDeepest(FixedDepth):
    """The deepest stage alone: the reference every speed-up is measured against."""

    def __init__(self, n_stages: int):
        super().__init__(n_stages - 1, n_stages, route=True)
        self.name = "deepest"


class StageAlone(FixedDepth):
    """Stage ``k`` alone."""

    def __init__(self, k: int, n_stages: int):
        super().__init__(k, n_stages, route=True)
        self.name = f"stage_{k}"


def _unit_hash(item_id: str, seed: int) -> float:
    """A uniform number in [0, 1) fixed by (item id, seed): same input, same draw, any order."""
    digest = hashlib.sha256(f"{seed}:{item_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


class RandomMixing:
    """Send each input straight to a stage drawn with fixed probabilities (a cost-mixing baseline).

    The draw depends only on the item id and the seed, so replay and online runs agree.
    """

    def __init__(self, weights: Sequence[float], seed: int):
        w = np.asarray(weights, dtype=float)
        if w.ndim != 1 or len(w) == 0 or (w < 0).any() or w.sum() <= 0:
            raise AsdError(f"random mixing: weights must be non-negative, not all zero: {weights}")
        self.cdf = np.cumsum(w / w.sum())
        self.seed = seed
        self.name = "random_" + "_".join(f"{x:.2f}" for x in w / w.sum())

    def entry(self, requests: Sequence[RequestLike]) -> list[int]:
        draws = [_unit_hash(r.item_id, self.seed) for r in requests]
        last = len(self.cdf) - 1
        return [min(int(np.searchsorted(self.cdf, u, side="right")), last) for u in draws]

    def next_stage(self, stage: int, paths: Sequence[PathLike]) -> list[Move | None]:
        return [None for _ in paths]


class Scores(Protocol):
    """Where a threshold baseline reads its scores (an observer of ``asd_core.policy.adaptive``)."""

    def head(self, requests: Sequence[RequestLike]) -> np.ndarray: ...

    def after(self, stage: int, paths: Sequence[PathLike]) -> tuple[np.ndarray, np.ndarray]: ...


class ThresholdCascade:
    """Run ``stages`` in order, stopping at the first whose P(accept) ≥ threshold (FrugalGPT).

    Each step continues the previous output (verify, decode the rest), so the score after a
    sequential step reads the verification feature; the first stage is entered directly.
    """

    def __init__(self, threshold: float, stages: Sequence[int], scores: Scores, name: str):
        self.threshold = float(threshold)
        self.order = list(stages)
        self.following = dict(zip(self.order, self.order[1:], strict=False))
        self.scores = scores
        self.name = name

    def entry(self, requests: Sequence[RequestLike]) -> list[int]:
        return [self.order[0]] * len(requests)

    def next_stage(self, stage: int, paths: Sequence[PathLike]) -> list[Move | None]:
        if stage == self.order[-1] or not paths:
            return [None for _ in paths]
        score, _ = self.scores.after(stage, paths)
        nxt = self.following[stage]
        return [None if s >= self.threshold else continue_to(nxt) for s in score.tolist()]


class ThresholdRouter:
    """Straight to the cheapest stage whose input-only P(accept) ≥ threshold (RouteLLM-style)."""

    def __init__(self, threshold: float, scores: Scores, name: str = "router"):
        self.threshold = float(threshold)
        self.scores = scores
        self.name = name

    def entry(self, requests: Sequence[RequestLike]) -> list[int]:
        if not requests:
            return []
        ok = self.scores.head(requests) >= self.threshold
        ok[:, -1] = True
        return ok.argmax(axis=1).tolist()

    def next_stage(self, stage: int, paths: Sequence[PathLike]) -> list[Move | None]:
        return [None for _ in paths]


class _Oracle:
    def __init__(self, cheapest: Mapping[str, int], n_stages: int, name: str):
        for item, s in cheapest.items():
            _check_stage(s, n_stages, f"oracle label of '{item}'")
        self.cheapest = dict(cheapest)
        self.name = name

    def target(self, item_id: str) -> int:
        try:
            return self.cheapest[item_id]
        except KeyError:
            raise AsdError(f"{self.name}: no label for input '{item_id}'") from None


class OracleRouter(_Oracle):
    """Each input straight to its cheapest acceptable stage (from labels): the router limit."""

    def __init__(self, cheapest: Mapping[str, int], n_stages: int, name: str = "oracle_router"):
        super().__init__(cheapest, n_stages, name)

    def entry(self, requests: Sequence[RequestLike]) -> list[int]:
        return [self.target(r.item_id) for r in requests]

    def next_stage(self, stage: int, paths: Sequence[PathLike]) -> list[Move | None]:
        return [None for _ in paths]


class OracleCascade(_Oracle):
    """Stages in order from 0, stopping at the cheapest acceptable one: the cascade limit."""

    def __init__(self, cheapest: Mapping[str, int], n_stages: int, name: str = "oracle_cascade"):
        super().__init__(cheapest, n_stages, name)

    def entry(self, requests: Sequence[RequestLike]) -> list[int]:
        return [0 for _ in requests]

    def next_stage(self, stage: int, paths: Sequence[PathLike]) -> list[Move | None]:
        return [
            continue_to(stage + 1) if stage < self.target(t.request.item_id) else None
            for t in paths
        ]


def cheapest_acceptable(labels: np.ndarray) -> np.ndarray:
    """Index of the first stage whose output is acceptable, per input.

    Args:
        labels: (N, K) 0/1 acceptance labels (docs/design.md §3); the last stage is always acceptable.
    Returns:
        (N,) int64 in 0..K−1.
    """
    lab = np.asarray(labels).astype(bool).copy()
    if lab.ndim != 2 or lab.shape[1] == 0:
        raise AsdError(f"labels must be (inputs, stages), got shape {lab.shape}")
    lab[:, -1] = True
    return lab.argmax(axis=1).astype(np.int64)
