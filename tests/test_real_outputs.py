"""Answer extraction, labels and the truncation figure on saved real replies of the three models.

``tests/fixtures/real_outputs.jsonl`` holds replies of SmolLM2-135M, Qwen-Coder-0.5B and
Qwen-Coder-1.5B (Q4 GGUF, llama.cpp, greedy) to MMLU, HumanEval, ASDiv and TruthfulQA items,
saved by ``python -m asd_core.runs.budgets --fixtures``: at least ten per model and task, including
replies that ran to the cap, replies with no extractable answer, and replies cut at the old
budgets (the first B tokens of a longer reply, which is what a budget of B wrote). Each row
carries its item's gold fields and the answer key and score it had when it was saved.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from asd_core.analysis.generation_summaries import summary_table
from asd_core.data.scoring import answers_agree, score_item
from asd_core.data.tasks import Item

FIXTURE = Path(__file__).parent / "fixtures" / "real_outputs.jsonl"
MODELS = ("smollm2-135m", "qwen-coder-0.5b", "qwen-coder-1.5b")
TASKS = ("mmlu", "humaneval", "asdiv", "truthfulqa")
ROWS = [json.loads(line) for line in FIXTURE.read_text(encoding="utf-8").splitlines()]


def item(row: dict) -> Item:
    return Item(
        item_id=row["item_id"],
        task=row["task"],
        question=row["question"],
        answer=row["answer"],
        references=tuple(row["references"]),
        code_prompt=row["code_prompt"],
        test=row["test"],
        entry_point=row["entry_point"],
        meta=row["meta"],
    )


@pytest.fixture(scope="module")
def scored() -> list[tuple[dict, object]]:
    return [(r, score_item(item(r), r["text"], None, r["stop_reason"] == "length")) for r in ROWS]


def test_every_model_and_task_has_ten_replies_with_hard_cases() -> None:
    cells = pd.DataFrame(ROWS).groupby(["stage_name", "task"]).size()
    assert {(m, t) for m in MODELS for t in TASKS} <= set(cells.index)
    assert (cells >= 10).all(), cells[cells < 10]
    by_task = pd.DataFrame(ROWS).groupby("task")
    assert all((g["stop_reason"] == "length").any() for _, g in by_task)  # truncated ones
    assert any(r["expected_answer"] == "" and r["stop_reason"] != "length" for r in ROWS)


def test_extraction_and_scores_are_as_saved(scored) -> None:
    for row, got in scored:
        where = f"{row['stage_name']} {row['item_id']}: {row['text'][-80:]!r}"
        assert got.extracted == row["expected_answer"], where
        assert got.correct == pytest.approx(row["expected_correct"], nan_ok=True), where


def test_a_cut_reply_has_no_answer_and_scores_zero(scored) -> None:
    cut = [(r, s) for r, s in scored if r["stop_reason"] == "length"]
    assert cut
    for row, got in cut:
        assert got.extracted == "", row["item_id"]
        if row["task"] in ("mmlu", "asdiv"):
            assert got.correct == 0.0


def test_math_answers_need_the_final_form(scored) -> None:
    for row, got in scored:
        if row["task"] != "asdiv" or row["stop_reason"] == "length":
            continue
        text = row["text"]
        has_form = "answer" in text.lower() or "\\boxed" in text or "####" in text
        if not has_form:
            assert got.extracted == "", (row["item_id"], text[-80:])


def test_labels_agree_only_on_equal_extracted_answers(scored) -> None:
    by_item: dict[str, list] = {}
    for row, got in scored:
        if row["task"] != "truthfulqa":  # free text agrees by ROUGE-L, tested in test_datagen
            by_item.setdefault(row["item_id"], []).append(got.extracted)
    pairs = [(a, b) for keys in by_item.values() for a in keys for b in keys]
    assert pairs
    for a, b in pairs:
        assert answers_agree(a, b) == (a == b != "")


def test_truncation_figure_of_the_summary_table() -> None:
    df = pd.DataFrame(ROWS).assign(
        stage=lambda d: d["stage_name"].map({m: k for k, m in enumerate(MODELS)}),
        n_in=1, latency_s=1.0, prefill_s=0.5, label_token=1, label_answer=1,
        accepted_frac_final=1.0, accepted_frac_prev=float("nan"), correct=0.0,
    )  # fmt: skip
    summary = summary_table(df).set_index(["task", "stage_name"])
    for (stage, task), g in df.groupby(["stage_name", "task"]):
        want = (g["stop_reason"] == "length").mean()
        assert summary.loc[(task, stage), "stopped_by_length"] == pytest.approx(want)
