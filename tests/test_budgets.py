"""Token budgets from measured output lengths: the table and the budget rule."""

from __future__ import annotations

import math

import pandas as pd

from asd_core.runs import budgets


def records(stage: int, name: str, task: str, lengths: list[int], cap: int) -> list[dict]:
    return [
        {"stage": stage, "stage_name": name, "task": task, "n_out": n,
         "stop_reason": "length" if n >= cap else "eos"}
        for n in lengths
    ]  # fmt: skip


def test_budget_doubles_the_deepest_p99_and_ignores_a_rambling_stage() -> None:
    cap = 1024
    rows = (
        records(2, "deep", "asdiv", [100] * 99 + [150], cap)
        + records(1, "mid", "asdiv", [120] * 99 + [260], cap)
        + records(0, "small", "asdiv", [cap] * 60 + [50] * 40, cap)  # reaches any cap
    )
    table = budgets.length_table(pd.DataFrame(rows), cap)
    small = table[table["stage_name"] == "small"].iloc[0]
    assert small["stopped_by_cap"] == 0.6 and small["max"] == cap
    deep = table[table["stage_name"] == "deep"].iloc[0]
    assert deep["p50"] == 100 and 100 < deep["p99"] < 150
    budget, rambling = budgets.propose_budgets(table, deepest=2)["asdiv"]
    mid = table[table["stage_name"] == "mid"].iloc[0]
    wanted = max(2 * deep["p99"], 1.2 * mid["p99"])  # 201 and 146: rounded up to 16s
    assert budget == 16 * math.ceil(wanted / 16) == 208
    assert rambling == ["small"]


def test_replies_that_reach_the_cap_do_not_set_the_budget() -> None:
    cap = 1024
    rows = records(2, "deep", "truthfulqa", [10] * 49 + [30], cap) + records(
        0,
        "small",
        "truthfulqa",
        [20] * 48 + [cap] * 2,
        cap,  # two loops: 4%, still sound
    )
    table = budgets.length_table(pd.DataFrame(rows), cap)
    small = table[table["stage_name"] == "small"].iloc[0]
    assert small["p99"] == cap and small["p99_own"] == 20  # the loops are left out
    budget, rambling = budgets.propose_budgets(table, deepest=2)["truthfulqa"]
    deep_own = table[table["stage_name"] == "deep"].iloc[0]["p99_own"]
    assert budget == 16 * math.ceil(max(2 * deep_own, 1.2 * 20) / 16) < 100
    assert rambling == []
