"""Task metrics: pull the answer out of a model's free text and score it (docs/design.md §3, §10).

Per task, two things come out of one output:

- the *quality* (:attr:`TaskScore.correct`): MMLU and ASDiv/GSM8K accuracy against the gold
  answer, HumanEval pass@1 (greedy, so one sample), TruthfulQA "truthful" by ROUGE-L;
- the *answer key* (:func:`answer_key`, also :attr:`TaskScore.extracted`): the task-normalised
  answer the ``answer`` label mode compares between stages, which needs no gold. MMLU: the
  letter. Math: the number in canonical form ("5", "0.75", "-1234"). HumanEval: the pass/fail
  vector over the unit test's assert statements ("1101"), so two programs are "the same
  answer" when they pass and fail the same asserts. TruthfulQA: the first sentence, lowercased,
  punctuation stripped, whitespace collapsed; but two free-text answers *agree* when their
  ROUGE-L F1 reaches a threshold fitted on the calibration split to predict "same truthfulness
  verdict" (:func:`fit_agreement_threshold`), since paraphrases rarely share a first sentence. An output with no extractable answer has the
  key "", and "" agrees with nothing, not even another "" (:func:`answers_agree`): two failed
  replies are not the same answer. A reply cut by its token budget has no final answer: its
  key is "" and, for MMLU and math, it scores 0. A program that does not load (no code, a
  syntax error, no entry point) has the key "" too.

Extraction rules, most specific first:

- MMLU letter: the last explicit statement ("The answer is B", "Answer: (b)", "correct option
  is C"); else a letter opening the reply ("B", "(B)", "B) Paris", "b."); else the only letter
  A-D that stands alone anywhere ("I think B."), a capital "A" before a lowercase word being the
  article; else the only option whose text the reply quotes. Several candidates: None. The
  documented alternative, scoring each option by its log-likelihood, is :func:`choose_by_loglik`.
- Numbers: after the last GSM8K "####"; else the first number of whichever final form comes
  last: "answer is" / "answer:" (up to the end of that sentence) or LaTeX ``\\boxed{...}``
  (Qwen models box their answers out of habit, even when asked for the sentence). Nothing else
  counts: the prompt asks for a final form, and a number taken from the middle of the
  reasoning is not an answer. Thousands commas, signs, decimals, "$", units
  and fractions ("3/4" equals 0.75) are understood; numbers match within a relative 1e-6. A
  final form that states no number ("The answer is Jake's stables.", for the tenth of ASDiv
  whose gold is text) keys as its normalised text; a copied placeholder ("The answer is
  <number>.") is no answer.
- Code: the first fenced block that defines the entry point (else the first block; else the
  bare text). A block that defines the entry point is run after the whole prompt (whose
  imports and helpers it may use); anything else is taken as the function's body and appended
  to the prompt, re-indented when it came without indentation.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from fractions import Fraction
from typing import Protocol

from asd_core.data.code_answers import code_key, extract_code, run_humaneval
from asd_core.data.sandbox import SandboxLimits
from asd_core.data.tasks import TASK_FAMILIES
from asd_core.data.text_answers import is_truthful, max_bleu, max_rouge_l, normalised_text, text_key
from asd_core.ground.errors import MetricsError

LETTERS = ("A", "B", "C", "D")
NUMBER_REL_TOL = 1e-6  # relative tolerance when comparing numeric answers


@dataclass(frozen=True)
class TaskScore:
    """How good one output is for one item, and the answer it gives."""

    task: str  # task name, e.g. "mmlu"
    correct: float  # the task's quality: MMLU/ASDiv/GSM8K accuracy, HumanEval pass@1 or
    # TruthfulQA truthful, each 0.0 or 1.0
    extracted: str  # the answer key (see answer_key): letter, number, assert vector or
    # normalised text; "" when none could be extracted
    rouge_l: float | None = None  # TruthfulQA: best ROUGE-L F1 against the correct references, 0-1
    bleu: float | None = (
        None  # TruthfulQA: best sentence BLEU against the correct references, 0-100
    )
    asserts: tuple[bool, ...] | None = None  # HumanEval: pass/fail of each assert statement
    sandbox_status: str | None = None  # HumanEval: SandboxResult.status of the test run


class ItemLike(Protocol):
    """What :func:`score_item` reads from an item (``asd_core.data.tasks.Item`` has it)."""

    @property
    def task(self) -> str: ...
    @property
    def question(self) -> str: ...
    @property
    def answer(self) -> str: ...
    @property
    def references(self) -> Sequence[str]: ...
    @property
    def code_prompt(self) -> str: ...
    @property
    def test(self) -> str: ...
    @property
    def entry_point(self) -> str: ...
    @property
    def meta(self) -> Mapping[str, str]: ...


# ---------------------------------------------------------------- multiple choice (MMLU) ---


def extract_choice(
    text: str, letters: Sequence[str] = LETTERS, choices: Sequence[str] | None = None
) -> str | None:
    """The option letter a free-text reply picks, or None (rules in the module docstring).

    ``choices`` are the option texts in letter order; when given, a reply that quotes exactly
    one of them and names no letter picks that one.
    """
    text = re.sub(r"[*_`]", "", text)  # markdown emphasis: "**B**", "__B__"
    upper = "".join(letters).upper()
    lower = upper.lower()
    # a lowercase letter counts only in brackets or before punctuation ("is a city" is no answer)
    letter = rf"(?:[\(\[]\s*([{upper}{lower}])\s*[\)\]]|([{upper}])\b|([{lower}])(?=[.):;,]|\s*$))"
    explicit = re.compile(
        r"\b(?i:answer|option|choice)\s*(?:(?i:is|would be|will be|should be)\s*)?[:=]?\s*"
        rf"(?:(?i:option|choice)\s*)?{letter}"
    )
    found = [next(g for g in m.groups() if g) for m in explicit.finditer(text)]
    if found:
        return found[-1].upper()
    opening = re.match(
        rf"\s*(?:[\(\[]\s*([{upper}{lower}])\s*[\)\]]|([{upper}{lower}])(?:[.):;,]|[ \t]*(?:\n|$))"
        rf"|([{upper}])\s+(?=[A-Z0-9\"'(\-]))",
        text,
    )
    if opening:
        return next(g for g in opening.groups() if g).upper()
    standalone = re.finditer(rf"(?<![\w'])(?:\(([{upper}])\)|([{upper}]))(?![\w'])", text)
    letters_seen = {
        next(g for g in m.groups() if g)
        for m in standalone
        if not (m.group(2) == "A" and _article(text, m.start(), m.end()))
    }
    if len(letters_seen) == 1:
        return letters_seen.pop()
    if letters_seen or not choices:
        return None
    reply = normalised_text(text)
    quoted = [
        option_letter
        for option_letter, option in zip(letters, choices, strict=False)
        if normalised_text(option)
        and re.search(rf"\b{re.escape(normalised_text(option))}\b", reply)
    ]
    return quoted[0].upper() if len(quoted) == 1 else None


def _article(text: str, start: int, end: int) -> bool:
    """A capital "A" that opens a sentence before a lowercase word ("A dog ...") is a word."""
    opens = re.search(r"(?:^|[.!?:]\s)\s*$", text[:start]) is not None
    return opens and re.match(r"[ \t]+[a-z]", text[end:]) is not None


def gold_letter(answer: str | int, letters: Sequence[str] = LETTERS) -> str:
    """The gold letter from "B", "b" or an option index (1 or "1" → "B")."""
    text = str(answer).strip()
    if text.isdigit() and int(text) < len(letters):
        return letters[int(text)].upper()
    if text.upper() in (x.upper() for x in letters):
        return text.upper()
    raise MetricsError(
        f"gold answer {answer!r} is neither a letter in {''.join(letters)} nor an index"
    )


def choice_accuracy(text: str, gold: str | int, choices: Sequence[str] | None = None) -> float:
    """1.0 when the reply's letter is the gold one; an unreadable reply scores 0.0."""
    return float(extract_choice(text, choices=choices) == gold_letter(gold))


def choose_by_loglik(option_logliks: Sequence[float], letters: Sequence[str] = LETTERS) -> str:
    """The letter of the most likely option (the first on ties).

    ``option_logliks``: (n_options,) log-likelihood of each option's text (or of its letter)
    after the question, in nats; normalise by length beforehand if options differ in length.
    """
    if len(option_logliks) != len(letters):
        raise MetricsError(
            f"{len(option_logliks)} option log-likelihoods for {len(letters)} letters"
        )
    if any(math.isnan(x) for x in option_logliks):
        raise MetricsError("an option log-likelihood is NaN")
    best = max(range(len(letters)), key=lambda i: (option_logliks[i], -i))
    return letters[best].upper()


def mc1(choice_scores: Sequence[float], correct_index: int = 0) -> float:
    """TruthfulQA MC1: 1.0 when the correct choice scores strictly highest.

    ``choice_scores``: (n_choices,) e.g. total log-likelihood of each choice, nats. The MC1
    file lists the single correct choice first, hence the default index.
    """
    if not 0 <= correct_index < len(choice_scores):
        raise MetricsError(f"correct_index {correct_index} outside {len(choice_scores)} choices")
    best = choice_scores[correct_index]
    others = [s for i, s in enumerate(choice_scores) if i != correct_index]
    return float(not math.isnan(best) and all(best > s for s in others))


# ----------------------------------------------------------------- numbers (ASDiv, GSM8K) ---

_NUMBER = re.compile(
    r"(?<![\w.])(?P<neg>[-\u2212])?\$?(?P<neg2>-)?"
    r"(?P<num>(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|\.\d+)"
    r"(?:\s?/\s?(?P<den>\d+(?:\.\d+)?)(?![\d/]))?"
)
_ANSWER_PHRASE = re.compile(
    r"\banswer\s*(?:is|:|=|would be|will be|should be|of)?\s*[:=]?", re.IGNORECASE
)
_BOXED = re.compile(r"\\boxed\s*\{((?:[^{}]|\{[^{}]*\})*)\}")  # one level of nested braces


def _to_fraction(match: re.Match[str]) -> Fraction | None:
    value = Fraction(match["num"].replace(",", ""))
    if match["den"]:
        denominator = Fraction(match["den"])
        if denominator == 0:
            return None
        value /= denominator
    return -value if match["neg"] or match["neg2"] else value


def numbers_in(text: str) -> list[Fraction]:
    """Every number written in ``text``, in order (fractions, commas, $, signs understood)."""
    text = re.sub(r"\\d?frac\{([^{}]*)\}\{([^{}]*)\}", r"\1/\2", text)  # LaTeX \frac{3}{4}
    return [v for m in _NUMBER.finditer(text) if (v := _to_fraction(m)) is not None]


def extract_number(text: str) -> Fraction | None:
    """The final numeric answer in a reply, exactly (rules in the module docstring)."""
    if "####" in text:
        after = numbers_in(text.rsplit("####", 1)[1])
        if after:
            return after[0]
    phrases = list(_ANSWER_PHRASE.finditer(text))
    boxes = list(_BOXED.finditer(text))
    stated: list[Fraction] = []
    if boxes and (not phrases or boxes[-1].start() >= phrases[-1].start()):
        stated = numbers_in(boxes[-1].group(1))
    elif phrases:
        sentence = re.split(r"\n|(?<=[^\d])\.(?:\s|$)", text[phrases[-1].end() :], maxsplit=1)[0]
        stated = numbers_in(sentence)
    return stated[0] if stated else None


def parse_gold_number(gold: str) -> Fraction | None:
    """The gold answer as a number when it is exactly one ("9", "$1,250", "3/4 cup"), else None."""
    found = numbers_in(gold)
    return found[0] if len(found) == 1 else None


def format_number(value: Fraction) -> str:
    """Canonical text of a number: integers bare, others to at most 6 decimals."""
    if value.denominator == 1:
        return str(value.numerator)
    text = f"{float(value):.6f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def numbers_match(predicted: Fraction | float | None, gold: Fraction | float) -> bool:
    """Equal up to float formatting: 5 == 5.0, 3/4 == 0.75, 1/3 == 0.333333."""
    if predicted is None:
        return False
    return math.isclose(float(predicted), float(gold), rel_tol=NUMBER_REL_TOL, abs_tol=1e-9)


def number_accuracy(text: str, gold: str) -> float:
    """1.0 when the reply's final answer equals the gold one.

    A gold answer that is not a single number (a time, a name) is compared as normalised text
    with what follows the reply's last "answer is" (or its last line).
    """
    gold_value = parse_gold_number(gold)
    if gold_value is not None:
        return float(numbers_match(extract_number(text), gold_value))
    wanted = normalised_text(gold)
    return float(bool(wanted) and wanted == normalised_text(_stated_answer(text)))


def _stated_answer(text: str) -> str:
    boxes, phrases = list(_BOXED.finditer(text)), list(_ANSWER_PHRASE.finditer(text))
    if boxes and (not phrases or boxes[-1].start() >= phrases[-1].start()):
        return boxes[-1].group(1).strip()
    tail = text[phrases[-1].end() :] if phrases else text.strip().rsplit("\n", 1)[-1]
    return tail.strip().split("\n", 1)[0].rstrip(".")


# what a reply copies from the prompt's instructions instead of answering ("The answer is N.")
_PLACEHOLDERS = frozenset({"", "n", "x", "number", "the number", "final answer"})


def number_key(text: str) -> str:
    """The canonical final number; for a non-numeric final answer ("Jake's stables", about a
    tenth of ASDiv) its normalised text, prefixed "text:"; "" without a final form."""
    value = extract_number(text)
    if value is not None:
        return format_number(value)
    if _BOXED.search(text) is None and _ANSWER_PHRASE.search(text) is None:
        return ""
    stated = normalised_text(_stated_answer(text))
    return "" if stated in _PLACEHOLDERS else f"text:{stated}"


# ----------------------------------------------------------------------- code (HumanEval) ---


# ---------------------------------------------------------------------- text (TruthfulQA) ---


# ------------------------------------------------------------------------------ dispatch ---


def answers_agree(key: str, other: str) -> bool:
    """The ``answer`` label rule: both answers were extracted and are the same answer."""
    return key != "" and key == other


def _family(task: str) -> str:
    if task not in TASK_FAMILIES:
        raise MetricsError(f"unknown task '{task}' for scoring; known: {', '.join(TASK_FAMILIES)}")
    return TASK_FAMILIES[task]


def _require(task: str, **fields: object) -> None:
    for name, value in fields.items():
        if not value:
            raise MetricsError(f"task '{task}': item has no {name} to score against")


def answer_key(
    task: str,
    text: str,
    *,
    code_prompt: str = "",
    test: str = "",
    entry_point: str = "",
    choices: Sequence[str] | None = None,
    sandbox_limits: SandboxLimits | None = None,
    truncated: bool = False,
) -> str:
    """The task-normalised answer of ``text`` for the ``answer`` label mode (module docstring).

    Needs no gold answer. For HumanEval it runs the sandbox; when the score is wanted too, call
    :func:`score` once and use ``TaskScore.extracted``. ``truncated``: the reply was cut by its
    token budget, so it has no answer ("").
    """
    family = _family(task)
    if truncated:
        return ""
    if family == "choice":
        return extract_choice(text, choices=choices) or ""
    if family == "number":
        return number_key(text)
    if family == "code":
        _require(task, test=test, entry_point=entry_point)
        program = extract_code(text, code_prompt, entry_point)
        return code_key(run_humaneval(program, test, entry_point, sandbox_limits, code_prompt))
    return text_key(text)


def score(
    task: str,
    text: str,
    *,
    answer: str | int = "",
    references: Sequence[str] = (),
    incorrect_references: Sequence[str] = (),
    code_prompt: str = "",
    test: str = "",
    entry_point: str = "",
    choices: Sequence[str] | None = None,
    sandbox_limits: SandboxLimits | None = None,
) -> TaskScore:
    """Score one output of ``task`` given the item's reference fields (as in ``Item``)."""
    family = _family(task)
    if family == "choice":
        _require(task, answer=str(answer).strip())
        letter = extract_choice(text, choices=choices)
        return TaskScore(task, float(letter == gold_letter(answer)), letter or "")
    if family == "number":
        _require(task, answer=str(answer).strip())
        return TaskScore(task, number_accuracy(text, str(answer)), number_key(text))
    if family == "code":
        _require(task, test=test, entry_point=entry_point)
        program = extract_code(text, code_prompt, entry_point)
        outcome = run_humaneval(program, test, entry_point, sandbox_limits, code_prompt)
        return TaskScore(
            task,
            float(outcome.passed),
            code_key(outcome),
            asserts=outcome.asserts,
            sandbox_status=outcome.sandbox.status,
        )
    _require(task, references=references)
    return TaskScore(
        task,
        float(is_truthful(text, references, incorrect_references)),
        text_key(text),
        rouge_l=max_rouge_l(text, references),
        bleu=max_bleu(text, references),
    )


def as_cut_reply(result: TaskScore) -> TaskScore:
    """The score of a reply its token budget cut: it has no final answer.

    Its answer key is "" and MMLU and math score it 0; code and free text keep the score of
    what was written.
    """
    unanswered = _family(result.task) in ("choice", "number")
    return replace(result, extracted="", correct=0.0 if unanswered else result.correct)


def mmlu_choices(question: str, letters: Sequence[str] = LETTERS) -> list[str] | None:
    """The option texts of an MMLU prompt whose options are lines "A. text", or None."""
    found = dict(re.findall(rf"^([{''.join(letters)}])\.\s+(.*)$", question, re.MULTILINE))
    return [found[x] for x in letters] if all(x in found for x in letters) else None


def score_item(
    item: ItemLike,
    text: str,
    sandbox_limits: SandboxLimits | None = None,
    truncated: bool = False,
) -> TaskScore:
    """:func:`score` for anything with ``Item``'s fields. ``extracted`` is the answer key.

    TruthfulQA incorrect references are read from ``meta["incorrect_answers"]`` when present
    (texts separated by ";").
    """
    incorrect = item.meta.get("incorrect_answers", "")
    result = score(
        item.task,
        text,
        answer=item.answer,
        references=item.references,
        incorrect_references=[x.strip() for x in incorrect.split(";") if x.strip()],
        code_prompt=item.code_prompt,
        test=item.test,
        entry_point=item.entry_point,
        choices=mmlu_choices(item.question) if item.task == "mmlu" else None,
        sandbox_limits=sandbox_limits,
    )
    return as_cut_reply(result) if truncated else result
