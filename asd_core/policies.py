"""Policies: where an input enters the hierarchy and, after each stage, stop or jump (DESIGN §7).

A policy has two decisions, both batched:

* ``entry(requests) -> list[int]``: the starting stage of each input, from the input alone;
* ``next_stage(stage, traces) -> list[int | None]``: after ``stage`` ran on these inputs, None to
  stop and return its output, or a deeper stage to jump to (skipping the ones between).

The built-ins here are the fixed strategies and the oracles used as baselines and limits; the
learned policy (predictor + DP) lives in ``asd_core.stopping``/``asd_core.predictor`` and plugs
in through the same two methods.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from asd_core.errors import AsdError

if TYPE_CHECKING:
    from asd_core.pipeline import Request, Trace


@runtime_checkable
class Policy(Protocol):
    """The pipeline's decision interface."""

    name: str  # label used in traces, tables and progress bars

    def entry(self, requests: Sequence[Request]) -> list[int]:
        """Starting stage of each request."""
        ...

    def next_stage(self, stage: int, traces: Sequence[Trace]) -> list[int | None]:
        """After ``stage``: None to stop, or a deeper stage, per input."""
        ...


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

    def entry(self, requests: Sequence[Request]) -> list[int]:
        return [self.start] * len(requests)

    def next_stage(self, stage: int, traces: Sequence[Trace]) -> list[int | None]:
        return [stage + 1 if stage < self.depth else None for _ in traces]


class AlwaysDeepest(FixedDepth):
    """The deepest stage alone: the reference every speed-up is measured against."""

    def __init__(self, n_stages: int):
        super().__init__(n_stages - 1, n_stages, route=True)
        self.name = "deepest"


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

    def entry(self, requests: Sequence[Request]) -> list[int]:
        draws = [_unit_hash(r.item_id, self.seed) for r in requests]
        last = len(self.cdf) - 1
        return [min(int(np.searchsorted(self.cdf, u, side="right")), last) for u in draws]

    def next_stage(self, stage: int, traces: Sequence[Trace]) -> list[int | None]:
        return [None for _ in traces]


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

    def __init__(self, cheapest: Mapping[str, int], n_stages: int):
        super().__init__(cheapest, n_stages, "oracle_router")

    def entry(self, requests: Sequence[Request]) -> list[int]:
        return [self.target(r.item_id) for r in requests]

    def next_stage(self, stage: int, traces: Sequence[Trace]) -> list[int | None]:
        return [None for _ in traces]


class OracleCascade(_Oracle):
    """Stages in order from 0, stopping at the cheapest acceptable one: the cascade limit."""

    def __init__(self, cheapest: Mapping[str, int], n_stages: int):
        super().__init__(cheapest, n_stages, "oracle_cascade")

    def entry(self, requests: Sequence[Request]) -> list[int]:
        return [0 for _ in requests]

    def next_stage(self, stage: int, traces: Sequence[Trace]) -> list[int | None]:
        return [stage + 1 if stage < self.target(t.request.item_id) else None for t in traces]


def cheapest_acceptable(labels: np.ndarray) -> np.ndarray:
    """Index of the first stage whose output is acceptable, per input.

    Args:
        labels: (N, K) 0/1 acceptance labels (DESIGN §3); the last stage is always acceptable.
    Returns:
        (N,) int64 in 0..K−1.
    """
    lab = np.asarray(labels).astype(bool).copy()
    if lab.ndim != 2 or lab.shape[1] == 0:
        raise AsdError(f"labels must be (inputs, stages), got shape {lab.shape}")
    lab[:, -1] = True
    return lab.argmax(axis=1).astype(np.int64)
