"""The baseline-validity table: Wilson intervals, the published figure, a verdict that can fail."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from asd_core.analysis import validity

PUBLISHED = pd.DataFrame(
    [
        {"model": "m-small", "task": "mmlu", "benchmark": "MMLU", "value": 0.30, "variant": "instruct",
         "shots": 0, "protocol": "letter", "source": "card", "url": "u", "difference": ""},
        {"model": "m-big", "task": "mmlu", "benchmark": "MMLU", "value": 0.90, "variant": "base",
         "shots": 5, "protocol": "5-shot", "source": "paper", "url": "u",
         "difference": "base model, 5-shot"},
        {"model": "m-big", "task": "asdiv", "benchmark": "", "value": math.nan, "variant": "",
         "shots": math.nan, "protocol": "", "source": "", "url": "", "difference": "not published"},
    ]
)  # fmt: skip


def generations(task: str, stage: int, name: str, correct: list[int], cut: int = 0) -> list[dict]:
    return [
        {"task": task, "stage": stage, "stage_name": name, "item_id": f"{task}/{i:06d}",
         "correct": float(c), "stop_reason": "length" if i < cut else "eos"}
        for i, c in enumerate(correct)
    ]  # fmt: skip


@pytest.fixture()
def table() -> pd.DataFrame:
    df = pd.DataFrame(
        generations("mmlu", 0, "small", [1] * 15 + [0] * 35, cut=5)
        + generations("mmlu", 1, "big", [1] * 30 + [0] * 20)
        + generations("asdiv", 1, "big", [1] * 40 + [0] * 10)
    )
    return validity.validity_table(df, ["package:m-small", "Org/M-Big"], PUBLISHED)


def test_quality_and_wilson_interval(table: pd.DataFrame) -> None:
    small = table[(table["task"] == "mmlu") & (table["stage"] == 0)].iloc[0]
    assert small["n"] == 50 and small["quality"] == pytest.approx(0.30)
    # Wilson 95% for 15/50, by hand: centre (p + z²/2n) / (1 + z²/n), half-width below
    z, n, p = 1.959964, 50, 0.3
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert small["ci_low"] == pytest.approx(centre - half, abs=1e-4)
    assert small["ci_high"] == pytest.approx(centre + half, abs=1e-4)
    assert small["stopped_by_length"] == pytest.approx(0.1)


def test_verdicts_inside_outside_and_unpublished(table: pd.DataFrame) -> None:
    verdict = {(r.task, r.stage_name): r for r in table.itertuples()}
    assert verdict[("mmlu", "small")].inside_ci is True
    assert verdict[("mmlu", "small")].verdict == "inside our CI"
    big = verdict[("mmlu", "big")]  # 0.60 [0.46, 0.72] against a published 0.90
    assert big.inside_ci is False and big.verdict == "outside our CI: base model, 5-shot"
    none = verdict[("asdiv", "big")]
    assert none.inside_ci is None and none.verdict == "not published" and math.isnan(none.published)


def test_model_names_from_sources() -> None:
    assert validity.model_of("package:qwen2.5-coder-1.5b-instruct") == "qwen2.5-coder-1.5b-instruct"
    assert validity.model_of("Qwen/Qwen2.5-Coder-1.5B-Instruct") == "qwen2.5-coder-1.5b-instruct"
    assert validity.model_of("/models/SmolLM2-135M-Instruct.gguf") == "smollm2-135m-instruct"


def test_shipped_published_figures_cover_the_cpu_hierarchy() -> None:
    pub = validity.read_published()
    models = {"smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-1.5b-instruct"}
    for model in models:
        for task in ("mmlu", "humaneval", "asdiv", "truthfulqa"):
            rows = pub[(pub["model"] == model) & (pub["task"] == task)]
            assert len(rows) == 1, (model, task)
            row = rows.iloc[0]
            assert row["difference"], (model, task)  # every comparison says what differs
            if not math.isnan(row["value"]):
                assert 0 < row["value"] < 1 and row["source"] and row["url"].startswith("https://")


def test_html_page_has_one_block_per_task(table: pd.DataFrame) -> None:
    page = validity.validity_html(table)
    assert page.count("<h2>") == 2 and "outside our CI: base model, 5-shot" in page
    assert "0.300 [" in page and 'href="u"' in page
