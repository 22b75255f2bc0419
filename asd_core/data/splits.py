"""Predictor-train / calibration / test splits by a stable hash of the item id (docs/design.md §10).

An item's split depends only on its id, the fractions and a salt — never on which other items
were loaded, the order they came in, or the Python process (``hash()`` is salted per process,
sha256 is not) — so the three splits can never mix, however the data is sampled.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from typing import Literal, get_args

import numpy as np

from asd_core.data.tasks import Item
from asd_core.ground.errors import AsdError

Split = Literal["train", "calibration", "test"]
SPLITS: tuple[Split, ...] = get_args(Split)
DEFAULT_FRACTIONS = (0.6, 0.2, 0.2)


def check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    """The (train, calibration, test) fractions, or a one-line AsdError if they are impossible."""
    values = tuple(float(f) for f in fractions)
    if len(values) != 3:
        raise AsdError(
            f"split fractions must be 3 numbers (train, calibration, test), got {values}"
        )
    if any(not math.isfinite(f) or f < 0 for f in values):
        raise AsdError(f"split fractions must be finite and non-negative, got {values}")
    if not math.isclose(sum(values), 1.0, abs_tol=1e-9):
        raise AsdError(f"split fractions must sum to 1, got {values} (sum {sum(values):g})")
    return values


def unit_hash(text: str) -> float:
    """A uniform number in [0, 1) fixed by ``text`` alone (first 64 bits of its sha256)."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") / 2.0**64


def split_of(
    item_id: str, fractions: Sequence[float] = DEFAULT_FRACTIONS, salt: str = "asd"
) -> Split:
    """The split ``item_id`` belongs to; changing ``salt`` draws an independent partition."""
    train, calibration, _ = check_fractions(fractions)
    u = unit_hash(f"{salt}\x00{item_id}")
    if u < train:
        return "train"
    return "calibration" if u < train + calibration else "test"


POOL_ID_PREFIX = "pool-"  # ids of unlabelled pool prompts (asd_core.data.pools): train only


def is_pool_id(item_id: str) -> bool:
    """Is ``item_id`` an unlabelled training prompt from a pool (never an evaluation item)?"""
    return item_id.startswith(POOL_ID_PREFIX)


def fold_of(item_id: str, n_folds: int, salt: str = "fold") -> int:
    """The cross-fitting fold (0..n_folds-1) of ``item_id``: a stable hash, like the splits,
    drawn independently of them."""
    if n_folds < 2:
        raise AsdError(f"eval_folds: cross-fitting needs at least 2 folds, got {n_folds}")
    return min(int(unit_hash(f"{salt}\x00{item_id}") * n_folds), n_folds - 1)


def _check_split(split: str) -> Split:
    if split not in SPLITS:
        raise AsdError(f"unknown split '{split}'; known: {', '.join(SPLITS)}")
    return split


def split_counts(
    items: Sequence[Item], fractions: Sequence[float] = DEFAULT_FRACTIONS, salt: str = "asd"
) -> dict[Split, int]:
    counts = dict.fromkeys(SPLITS, 0)
    for item in items:
        counts[split_of(item.item_id, fractions, salt)] += 1
    return counts


def select(
    items: Sequence[Item],
    split: str,
    n: int | None = None,
    seed: int = 0,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    salt: str = "asd",
) -> list[Item]:
    """A deterministic sample of ``n`` items of ``split`` (all when ``n`` is None), in source order.

    The sample is the first ``n`` of a seeded permutation, so with the same seed a larger ``n``
    only adds items: a run can grow without changing what was already evaluated.
    """
    wanted = _check_split(split)
    check_fractions(fractions)
    pool = [it for it in items if split_of(it.item_id, fractions, salt) == wanted]
    if n is None:
        return pool
    if n < 0 or n > len(pool):
        tasks = ", ".join(sorted({it.task for it in items})) or "no items"
        raise AsdError(
            f"n={n}: split '{split}' has {len(pool)} items ({tasks}); ask for at most that"
        )
    chosen = np.random.default_rng(seed).permutation(len(pool))[:n]
    return [pool[i] for i in sorted(chosen)]


def task_seed(seed: int, task: str) -> int:
    """A per-task seed, so tasks of equal size are not sampled at the same positions."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{task}".encode()).digest()[:8], "big")


def mix(
    items_by_task: Mapping[str, Sequence[Item]],
    split: str,
    n_per_task: int | None,
    seed: int = 0,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    salt: str = "asd",
) -> list[Item]:
    """``n_per_task`` items of ``split`` from every task, shuffled together (seeded).

    Shuffling means any prefix of the list is a fair mix of tasks, so a run that stops early
    still covers all of them.
    """
    pooled: list[Item] = []
    for task, items in items_by_task.items():
        pooled += select(items, split, n_per_task, task_seed(seed, task), fractions, salt)
    order = np.random.default_rng(seed).permutation(len(pooled))
    return [pooled[i] for i in order]
