"""Where a solved policy changes with λ, and a dense λ grid with a point between every two changes.

Between consecutive change points the policy does not move, so one λ per interval traces every
distinct policy (:func:`dense_lambdas`); :func:`breakpoints` finds the change points by
bisection on any signature of the solved tables (:func:`signature`: their actions).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterable, Sequence

import numpy as np

from asd_core.ground.belief import StoppingError, checked_positive
from asd_core.ground.stopping import PolicyTable


def breakpoints(
    signature: Callable[[float], Hashable],
    lo: float,
    hi: float,
    n_grid: int = 120,
    rel_tol: float = 1e-3,
) -> list[float]:
    """The λ in [lo, hi] at which ``signature(λ)`` (e.g. a solved table's actions) changes.

    A log-spaced grid finds every interval whose ends differ; bisection in log λ narrows each to
    ``rel_tol``. A change that reverts between two grid points is missed, so ``n_grid`` sets
    the resolution. Returns the sorted change points (the upper end of each narrowed interval).
    """
    lo, hi = checked_positive("lo", lo), checked_positive("hi", hi)
    if hi <= lo:
        raise StoppingError(f"'hi' must exceed 'lo', got {lo!r}..{hi!r}")
    grid = np.geomspace(lo, hi, n_grid)
    seen = [signature(float(x)) for x in grid]
    out = []
    for a, b, sa, sb in zip(grid[:-1], grid[1:], seen[:-1], seen[1:], strict=True):
        if sa == sb:
            continue
        left, right = float(a), float(b)
        while right / left > 1.0 + rel_tol:
            mid = math.sqrt(left * right)
            if signature(mid) == sa:
                left = mid
            else:
                right = mid
        out.append(right)
    return out


def dense_lambdas(
    changes: Sequence[float], lo: float, hi: float, at_least: int = 30, extra: Iterable[float] = ()
) -> list[float]:
    """A λ grid with one point inside every interval where the policy is constant.

    Between consecutive change points the policy does not move, so one λ per interval (its
    geometric midpoint) traces every distinct policy; log-spaced points fill the grid up to
    ``at_least`` values, and ``extra`` (e.g. the research protocol's six λ) are kept as given.
    Sorted, unique to 1e-9 relative.
    """
    lo, hi = checked_positive("lo", lo), checked_positive("hi", hi)
    cuts = sorted(c for c in changes if lo < c < hi)
    ends = [lo, *cuts, hi]
    points = [math.sqrt(a * b) for a, b in zip(ends[:-1], ends[1:], strict=True)]
    points += [float(x) for x in extra]
    fill = max(at_least - len(points), 0)
    while True:
        grid = _unique_sorted([*points, *np.geomspace(lo, hi, fill + 2)[1:-1].tolist()])
        if len(grid) >= at_least or fill > 10 * at_least:
            return grid
        fill += at_least - len(grid)


def _unique_sorted(values: Iterable[float]) -> list[float]:
    """Sorted values, each at least 1e-9 (relative) above the one before."""
    out: list[float] = []
    for x in sorted(values):
        if not out or x > out[-1] * (1 + 1e-9):
            out.append(x)
    return out


def signature(table: PolicyTable) -> bytes:
    """A solved table's decisions as bytes (its actions and restarts), to compare across λ."""
    return table.action.tobytes() + table.restart.tobytes()
