"""The data-generation benchmark's comparison of old and new rows (pure; no model needed)."""

from __future__ import annotations

import numpy as np

from benchmarks.datagen import NEAR_TIE, compare_rows


def row(item: str, stage: int, tokens: list[int], gaps: list[float], accepted=(-1, 3)) -> dict:
    top1 = np.zeros(len(tokens), np.float32)
    return {
        "item_id": item,
        "stage": stage,
        "token_ids": tokens,
        "top1_logprob": top1,
        "top2_logprob": top1 - np.asarray(gaps, np.float32),
        "accepted_by": list(accepted),
    }


def test_equal_near_tie_and_real_differences_are_told_apart() -> None:
    old = [
        row("a", 0, [1, 2, 3], [2.0, 2.0, 2.0]),
        row("b", 0, [1, 2, 3], [2.0, 0.05, 2.0]),
        row("c", 0, [1, 2, 3], [2.0, 2.0, 2.0]),
    ]
    new = [
        row("a", 0, [1, 2, 3], [2.0, 2.0, 2.0]),
        row("b", 0, [1, 9, 9, 9], [2.0, 0.08, 1.0, 1.0]),  # flips where both runs are close
        row("c", 0, [4, 2, 3], [2.0, 2.0, 2.0], accepted=(-1, 0)),  # flips at a wide gap: a bug
    ]
    got = compare_rows(old, new)
    assert got["outputs"] == 3 and got["equal"] == 1
    assert got["near_ties"] == 1 and got["largest_near_tie_gap"] == np.float32(0.05)
    assert got["other_differences"] == 1
    assert got["same_accepted_counts"] == 2
    assert 0.05 < NEAR_TIE < 2.0


def test_an_output_that_stops_earlier_diverges_at_its_last_token() -> None:
    old = [row("a", 1, [1, 2, 3], [2.0, 2.0, 0.01])]
    new = [row("a", 1, [1, 2], [2.0, 2.0])]  # the other run wrote EOS at a near-tie later
    got = compare_rows(old, new)
    assert got["equal"] == 0 and got["near_ties"] == 1  # the gap where only one run went on
