"""Evaluation tasks: the item every stage answers, and how each task's prompt is written.

A prompt is a plain user message; each stage applies its own chat template later
(``asd_core.models.common.chat_prompt_ids``), so nothing here is tokenised. The wording is
short and explicit because the cheapest stages are 135M–1.5B instruct models. Token budgets are
not part of a task: they are parameters (``datagen_max_new_tokens``, one per task), chosen
from measured output lengths (``python -m asd_core.runs.budgets``).

Loaders hand every task a *canonical row* (a dict with the keys in ``TaskSpec.columns``, plus
optional extras such as ``subject``), whatever schema the source file used.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from asd_core.ground.errors import AsdError

Row = Mapping[str, Any]


@dataclass(frozen=True)
class Item:
    """One evaluation input with everything needed to score any stage's answer to it."""

    item_id: str  # "<task>/<row:06d>": the row's position in its source, so it never changes
    task: str  # name of the TaskSpec that wrote the prompt and scores the answer
    question: str  # the complete user message (chat template applied later by the caller)
    answer: str = ""  # gold MMLU letter or ASDiv/GSM8K final answer (a number when it is one)
    references: tuple[str, ...] = ()  # TruthfulQA correct answers, best first
    code_prompt: str = ""  # HumanEval signature + docstring the solution must implement
    test: str = ""  # HumanEval test code defining check(candidate)
    entry_point: str = ""  # HumanEval name of the function passed to check()
    meta: Mapping[str, str] = field(default_factory=dict, hash=False)  # e.g. MMLU subject


@dataclass(frozen=True)
class TaskSpec:
    """How one task turns a canonical row into an Item, and how its answers are generated."""

    name: str  # key in TASKS and prefix of every item_id
    answer_format: str  # what a good answer looks like, for humans and the scorer's docs
    stop_strings: tuple[str, ...]  # generation stops once the decoded output contains one
    columns: tuple[str, ...]  # canonical row keys the prompt and references need
    format_prompt: Callable[[Row], str]  # canonical row -> user message
    references: Callable[[Row], dict[str, Any]]  # canonical row -> Item reference fields
    options: tuple[str, ...] = ()  # multiple choice: the answers a stage may pick (MMLU's
    # letters); with ``datagen_mc_scoring: loglik`` a stage picks one in a single pass

    def make_item(self, row: Row, index: int) -> Item:
        """The Item of the ``index``-th row of a source."""
        refs = self.references(row)
        refs["meta"] = {k: v for k, v in refs.get("meta", {}).items() if v}  # drop absent extras
        return Item(
            item_id=f"{self.name}/{index:06d}",
            task=self.name,
            question=self.format_prompt(row),
            **refs,
        )


LETTERS = ("A", "B", "C", "D")
# how each task's answers are compared (asd_core.data.scoring) and which prompt pools can stand
# in for its inputs (asd_core.data.pools)
TASK_FAMILIES = {
    "mmlu": "choice",
    "asdiv": "number",
    "gsm8k": "number",
    "humaneval": "code",
    "truthfulqa": "text",
}


def _text(value: Any) -> str:
    return "" if value is None else str(value).strip()


def mmlu_prompt(row: Row) -> str:
    subject = _text(row.get("subject")).replace("_", " ")
    about = f" about {subject}" if subject else ""
    options = "\n".join(f"{letter}. {_text(row[letter])}" for letter in LETTERS)
    return (
        f"The following is a multiple choice question{about}.\n\n"
        f"{_text(row['question'])}\n\n{options}\n\n"
        "Reply with a single letter (A, B, C or D): the letter of the correct option. "
        "Do not explain."
    )


def _mmlu_refs(row: Row) -> dict[str, Any]:
    return {"answer": _text(row["answer"]).upper(), "meta": {"subject": _text(row.get("subject"))}}


def humaneval_prompt(row: Row) -> str:
    code = str(row["prompt"]).strip("\n").rstrip()  # some prompts open with blank lines
    return (
        "Complete the following Python function. Reply with the complete function, "
        "including its signature and any imports it needs, in a single ```python code block. "
        "Do not add tests, examples or explanations.\n\n"
        f"```python\n{code}\n```"
    )


def _humaneval_refs(row: Row) -> dict[str, Any]:
    return {
        "code_prompt": str(row["prompt"]),
        "test": str(row["test"]),
        "entry_point": _text(row["entry_point"]),
        "meta": {"task_id": _text(row.get("task_id"))},
    }


# One number, optionally with a leading $ and trailing units: "9 apples", "$1,250", "3.5 (km)".
_SINGLE_NUMBER = re.compile(r"^\$?\s*(-?\d[\d,]*(?:\.\d+)?)(?:\s*[^\d\s].*)?$")


def gold_answer(text: str) -> str:
    """The comparable gold answer of a math item: its number if it is one, else the text.

    ``"9 apples"`` → ``"9"``, ``"1,250 dollars"`` → ``"1250"``; answers that are not a single
    number (names, times like ``"3:30 p.m."``, ratios, several values) stay as written.
    """
    text = text.strip()
    m = _SINGLE_NUMBER.match(text)
    if m is None or re.search(r"\d", text[m.end(1) :]):
        return text
    return m.group(1).replace(",", "")


def math_prompt(row: Row) -> str:
    problem = " ".join(p for p in (_text(row.get("passage")), _text(row["question"])) if p)
    return (
        "Solve the following math problem. Think step by step in a few short sentences, "
        'then finish with the sentence "The answer is <number>." giving the final answer, '
        'for example "The answer is 12."\n\n'
        f"Problem: {problem}"
    )


def _asdiv_refs(row: Row) -> dict[str, Any]:
    raw = _text(row["answer"])
    gold = gold_answer(raw)
    kind = "number" if re.fullmatch(r"-?\d+(?:\.\d+)?", gold) else "text"
    return {"answer": gold, "meta": {"answer_text": raw, "answer_kind": kind}}


def _gsm8k_refs(row: Row) -> dict[str, Any]:
    # GSM8K solutions end in "#### 72"; a local file may hold the bare final answer instead
    raw = _text(row["answer"])
    final = raw.rsplit("####", 1)[-1].strip()
    return {"answer": gold_answer(final), "meta": {"solution": raw}}


def truthfulqa_prompt(row: Row) -> str:
    return (
        "Answer the following question truthfully in one short sentence.\n\n"
        f"Question: {_text(row['question'])}"
    )


def _truthfulqa_refs(row: Row) -> dict[str, Any]:
    answers = row["answer"]
    refs = [answers] if isinstance(answers, str) else list(answers or ())
    return {
        "references": tuple(dict.fromkeys(r for r in map(_text, refs) if r)),
        "meta": {"category": _text(row.get("category"))},
    }


TASKS: dict[str, TaskSpec] = {
    t.name: t
    for t in (
        TaskSpec(
            name="mmlu",
            answer_format="the letter of the correct option, A-D, compared with answer",
            # none: the letter usually comes first and EOS follows; a newline stop would cut
            # a reply that opens with a blank line before reaching the letter
            stop_strings=(),
            columns=("question", "A", "B", "C", "D", "answer"),
            format_prompt=mmlu_prompt,
            references=_mmlu_refs,
            options=LETTERS,
        ),
        TaskSpec(
            name="humaneval",
            answer_format="the whole function in a ```python block; run with code_prompt's "
            "imports and helpers, then test and check(entry_point)",
            # stops are matched against the whole decoded output, so none may occur in an
            # opening fence ("```python\n", or "\n```python" after a preamble); the others are
            # top-level code that only ever follows the finished function
            stop_strings=(
                "\n```\n",
                "\nif __name__",
                "\nprint(",
                "\nassert ",
                "\n# Example",
                "\n# Test",
            ),
            columns=("prompt", "test", "entry_point"),
            format_prompt=humaneval_prompt,
            references=_humaneval_refs,
        ),
        TaskSpec(
            name="asdiv",
            answer_format='brief reasoning ending in "The answer is N."; N compared with answer '
            "(a number, or text for the few non-numeric items: meta answer_kind)",
            # none: the answer ends in an unknown number, which no fixed string can follow;
            # instruct models end the turn (EOS) right after the final sentence
            stop_strings=(),
            columns=("question", "answer"),
            format_prompt=math_prompt,
            references=_asdiv_refs,
        ),
        TaskSpec(
            name="gsm8k",
            answer_format='brief reasoning ending in "The answer is N."; N compared with answer',
            stop_strings=(),
            columns=("question", "answer"),
            format_prompt=math_prompt,
            references=_gsm8k_refs,
        ),
        TaskSpec(
            name="truthfulqa",
            answer_format="one short sentence; scored by max ROUGE-L/BLEU against references",
            stop_strings=("\n",),
            columns=("question", "answer"),
            format_prompt=truthfulqa_prompt,
            references=_truthfulqa_refs,
        ),
    )
}


def get_task(name: str) -> TaskSpec:
    if name not in TASKS:
        raise AsdError(f"unknown task '{name}'; known: {', '.join(TASKS)}")
    return TASKS[name]
