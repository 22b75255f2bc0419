"""Task metrics on hand-written model outputs, well-formed and malformed (docs/design.md §3, §10)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from asd_core.data.code_answers import extract_code, run_humaneval, split_check
from asd_core.data.sandbox import SandboxLimits
from asd_core.data.scoring import (
    TaskScore,
    answer_key,
    answers_agree,
    as_cut_reply,
    choice_accuracy,
    choose_by_loglik,
    extract_choice,
    extract_number,
    format_number,
    gold_letter,
    mc1,
    mmlu_choices,
    number_accuracy,
    numbers_in,
    numbers_match,
    score,
    score_item,
)
from asd_core.data.text_answers import (
    fit_agreement_threshold,
    is_truthful,
    max_bleu,
    max_rouge_l,
    text_key,
    text_similarity,
)
from asd_core.ground.errors import MetricsError

# ------------------------------------------------------------------------------------ MMLU ---


@pytest.mark.parametrize(
    ("text", "letter"),
    [
        ("B", "B"),
        ("(B)", "B"),
        ("The answer is B.", "B"),
        ("B) Paris", "B"),
        ("B. Paris", "B"),
        ("b", "B"),
        ("c)", "C"),
        ("Answer: (d)", "D"),
        ("**C**", "C"),
        ("The correct answer is: D", "D"),
        ("Option B is correct.", "B"),
        ("  \n\nA", "A"),
        ("A\nbecause Paris is in France", "A"),
        ("A. Paris", "A"),
        ("Let me think. Paris is in France, so the answer is C because it matches.", "C"),
        ("I would say B.", "B"),
        ("B is tempting, but the answer is C.", "C"),  # the explicit statement wins
        ("The answer is A, not B.", "A"),
        ("It is either A or C.", None),  # several letters, none stated
        ("A dog is not a cat.", None),  # the article, not a letter
        ("The answer is a city in France.", None),  # lowercase "a" before a word
        ("", None),
        ("I don't know.", None),
        ("E", None),  # not an option
    ],
)
def test_extract_choice(text: str, letter: str | None) -> None:
    assert extract_choice(text) == letter


def test_extract_choice_falls_back_to_the_quoted_option() -> None:
    choices = ["London", "Paris", "Rome", "Berlin"]
    assert extract_choice("It is Paris, of course.", choices=choices) == "B"
    assert extract_choice("Paris or Rome.", choices=choices) is None  # two options quoted
    assert extract_choice("It is Paris.", choices=None) is None
    assert extract_choice("C: Rome. Paris is wrong.", choices=choices) == "C"  # a letter first


def test_mmlu_choices_are_read_from_the_prompt() -> None:
    prompt = "Which city?\n\nA. London\nB. Paris\nC. Rome\nD. Berlin\n\nAnswer with the letter."
    assert mmlu_choices(prompt) == ["London", "Paris", "Rome", "Berlin"]
    assert mmlu_choices("no options here") is None


def test_choice_accuracy_and_gold_forms() -> None:
    assert choice_accuracy("The answer is B.", "B") == 1.0
    assert choice_accuracy("The answer is B.", "b") == 1.0
    assert choice_accuracy("The answer is B.", 1) == 1.0  # an option index
    assert choice_accuracy("The answer is B.", "C") == 0.0
    assert choice_accuracy("no idea", "A") == 0.0
    assert gold_letter("3") == "D"
    with pytest.raises(MetricsError, match="gold answer"):
        gold_letter("Z")


def test_choose_by_loglik_picks_the_argmax() -> None:
    assert choose_by_loglik([-3.0, -1.0, -2.0, -5.0]) == "B"
    assert choose_by_loglik([-1.0, -1.0, -2.0, -5.0]) == "A"  # ties: the first
    with pytest.raises(MetricsError, match="3 option"):
        choose_by_loglik([-1.0, -2.0, -3.0])
    with pytest.raises(MetricsError, match="NaN"):
        choose_by_loglik([-1.0, math.nan, -2.0, -3.0])


@given(st.lists(st.floats(-1e6, 1e6), min_size=4, max_size=4))
def test_choose_by_loglik_is_a_maximum(scores: list[float]) -> None:
    chosen = "ABCD".index(choose_by_loglik(scores))
    assert scores[chosen] == max(scores)


def test_mc1() -> None:
    assert mc1([-1.0, -2.0, -3.0]) == 1.0
    assert mc1([-2.0, -1.0, -3.0]) == 0.0
    assert mc1([-1.0, -1.0]) == 0.0  # a tie is not a win
    assert mc1([-3.0, -2.0, -9.0], correct_index=1) == 1.0
    with pytest.raises(MetricsError, match="correct_index"):
        mc1([-1.0], correct_index=2)


# ---------------------------------------------------------------------------- ASDiv/GSM8K ---


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("The answer is 5.", Fraction(5)),
        ("She has 3 apples and buys 4 more, 7 in all. The answer is 7 apples.", Fraction(7)),
        ("First 12 then 30. So 42", None),  # no final-answer form: no answer
        ("Natalia sold 48/2 = 24 clips in May.\n#### 72", Fraction(72)),  # GSM8K style
        ("#### 1,234", Fraction(1234)),
        ("The answer is 1,000,000.", Fraction(1_000_000)),
        ("The answer is $1,250.", Fraction(1250)),
        ("The answer is -3.", Fraction(-3)),
        ("The answer is 3/4.", Fraction(3, 4)),
        ("The answer is \\frac{3}{4}", Fraction(3, 4)),
        ("The answer is 0.75 cups", Fraction(3, 4)),
        ("The answer is 3.5.", Fraction(7, 2)),
        ("The answer is: 42", Fraction(42)),
        ("The answer is 12 apples and 3 pears.", Fraction(12)),  # first after the phrase
        # a reply cut mid-reasoning (the ASDiv case): numbers, but no final answer
        ("Tom has 3 apples. He buys 9.5 kg of pears, so 3 + 9.5", None),
        ("The answer is five.", None),
        ("", None),
        ("no numbers at all", None),
        ("The answer is 1/0", None),  # a zero denominator: no number, not a crash
    ],
)
def test_extract_number(text: str, value: Fraction | None) -> None:
    assert extract_number(text) == value


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("He has $12.50 left.", Fraction(25, 2)),
        ("It costs -$5 now", Fraction(-5)),
        ("about 50% of them", Fraction(50)),
        ("pages 3-5", Fraction(5)),  # a range, not minus five
        ("1/0", None),
    ],
)
def test_number_parsing(text: str, value: Fraction | None) -> None:
    found = numbers_in(text)
    assert (found[-1] if found else None) == value


def test_numbers_match_ignores_float_formatting() -> None:
    assert numbers_match(Fraction(5), 5.0)
    assert numbers_match(Fraction(3, 4), 0.75)
    assert numbers_match(Fraction(1, 3), 0.333333)
    assert not numbers_match(Fraction(33, 100), Fraction(1, 3))
    assert not numbers_match(None, 5)
    assert not numbers_match(Fraction(-5), 5)


def test_format_number_is_canonical() -> None:
    assert format_number(Fraction(5)) == "5"
    assert format_number(Fraction("5.0")) == "5"
    assert format_number(Fraction(3, 4)) == "0.75"
    assert format_number(Fraction(1, 3)) == "0.333333"
    assert format_number(Fraction(-1234)) == "-1234"
    assert format_number(Fraction(-1, 10**9)) == "0"


def test_number_accuracy_with_number_and_text_golds() -> None:
    assert number_accuracy("So the total is 9. The answer is 9.", "9") == 1.0
    assert number_accuracy("The answer is 9.0", "9") == 1.0
    assert number_accuracy("The answer is $1,250.", "1250") == 1.0
    assert number_accuracy("The answer is 0.75.", "3/4") == 1.0
    assert number_accuracy("The answer is 8.", "9") == 0.0
    assert number_accuracy("I cannot solve this.", "9") == 0.0
    assert number_accuracy("The answer is 3:30 p.m.", "3:30 p.m.") == 1.0  # not one number
    assert number_accuracy("The answer is 4:30 p.m.", "3:30 p.m.") == 0.0


@given(
    value=st.integers(-(10**9), 10**9),
    commas=st.booleans(),
    dollars=st.booleans(),
    unit=st.sampled_from(["", " apples", " km", "%"]),
    style=st.sampled_from(["The answer is {}.", "#### {}", "The answer: {}"]),
)
def test_integers_survive_any_formatting(
    value: int, commas: bool, dollars: bool, unit: str, style: str
) -> None:
    digits = f"{abs(value):,}" if commas else str(abs(value))
    written = ("-" if value < 0 else "") + ("$" if dollars else "") + digits + unit
    text = "First 17 steps. " + style.format(written)
    assert extract_number(text) == value
    assert answer_key("gsm8k", text) == str(value)


@given(st.decimals(-1000, 1000, places=3, allow_nan=False, allow_infinity=False))
def test_decimals_round_trip(value: object) -> None:
    text = f"The answer is {value}."
    assert numbers_match(extract_number(text), Fraction(str(value)))


# ------------------------------------------------------------------------------- HumanEval ---

PROMPT = '''from typing import List


def helper(x: int) -> int:
    return x


def add_all(xs: List[int]) -> int:
    """Sum of xs.
    >>> add_all([1, 2])
    3
    """
'''
TEST = """

METADATA = {"author": "test"}


def check(candidate):
    import math
    assert candidate([]) == 0
    assert candidate([1, 2]) == 3
    for n in range(3):
        assert candidate([n]) == n
    assert math.isclose(candidate([-1, 1, 5]), 5)
"""
FAST = SandboxLimits(wall_seconds=3.0, cpu_seconds=2, max_processes=4)
FULL = "Here it is:\n```python\nfrom typing import List\n\ndef add_all(xs: List[int]) -> int:\n    return helper(sum(xs))\n```\nDone."


def test_split_check_finds_the_asserts() -> None:
    parameter, statements = split_check(TEST)
    assert parameter == "candidate"
    assert [scored for _, scored in statements] == [False, True, True, True, True]
    assert split_check("def check(candidate:\n") == ("candidate", [])  # malformed test
    assert split_check("x = 1\n") == ("candidate", [])  # no check()
    assert split_check("def check(f):\n    assert f(1)\n")[0] == "f"


@pytest.mark.parametrize(
    ("reply", "expected_tail"),
    [
        (FULL, "def add_all(xs: List[int]) -> int:\n    return helper(sum(xs))\n"),
        ("    return sum(xs)\n", '    """\n    return sum(xs)\n'),  # a continuation
        ("```python\nreturn sum(xs)\n```", '    """\n    return sum(xs)\n'),  # flush-left body
        ("```python\ndef add_all(xs):\n    return sum(xs)", "def add_all(xs):\n    return sum(xs)"),
        (
            "Sure! Here:\ndef add_all(xs):\n    return sum(xs)\n",
            "def add_all(xs):\n    return sum(xs)\n",
        ),
    ],
)
def test_extract_code(reply: str, expected_tail: str) -> None:
    program = extract_code(reply, PROMPT, "add_all")
    assert program.startswith(PROMPT)  # the prompt's imports and helpers come along
    assert program.endswith(expected_tail)
    compile(program, "candidate", "exec")


def test_extract_code_prefers_the_block_defining_the_entry_point() -> None:
    reply = "```python\nprint('usage')\n```\nand\n```python\ndef add_all(xs):\n    return 0\n```"
    assert extract_code(reply, PROMPT, "add_all").endswith("def add_all(xs):\n    return 0\n")


@pytest.mark.parametrize(
    ("reply", "passed", "vector"),
    [
        (FULL, True, (True, True, True, True)),
        ("    return sum(xs)\n", True, (True, True, True, True)),
        (
            "```python\ndef add_all(xs):\n    return len(xs)\n```",
            False,
            (True, False, False, False),
        ),
        (
            "```python\ndef add_all(xs):\n    return sum(x for x in xs if x > 0)\n```",
            False,
            (True, True, True, False),
        ),
        (
            "```python\ndef add_all(xs)\n    return 1\n```",
            False,
            (False, False, False, False),
        ),  # syntax
        (
            "```python\nimport sys\ndef add_all(xs):\n    return 0\nsys.exit(0)\n```",
            False,
            (False,) * 4,
        ),
        ("I am not sure how to do this.", False, (False,) * 4),
        (
            "```python\ndef add_all(xs):\n    print('x' * 10**6)\n    return sum(xs)\n```",
            True,
            (True,) * 4,
        ),
        ("```python\ndef add_all(xs):\n    raise ValueError('nope')\n```", False, (False,) * 4),
    ],
)
def test_humaneval_pass_and_assert_vector(
    reply: str, passed: bool, vector: tuple[bool, ...]
) -> None:
    result = score(
        "humaneval",
        reply,
        code_prompt=PROMPT,
        test=TEST,
        entry_point="add_all",
        sandbox_limits=FAST,
    )
    assert result.correct == float(passed)
    assert result.asserts == vector
    # a program that never loads (a syntax error, exiting on import, prose) has no answer
    loads = "def add_all(xs)\n" not in reply and "sys.exit" not in reply and "not sure" not in reply
    assert result.extracted == ("".join("1" if ok else "0" for ok in vector) if loads else "")


def test_a_positive_only_sum_fails_one_assert_but_not_the_others() -> None:
    test = "def check(candidate):\n    assert candidate([1, 2]) == 3\n    assert candidate([-1, 1]) == 0\n"
    program = extract_code(
        "```python\ndef add_all(xs):\n    return sum(x for x in xs if x > 0)\n```",
        PROMPT,
        "add_all",
    )
    outcome = run_humaneval(program, test, "add_all", FAST)
    assert (outcome.passed, outcome.asserts) == (False, (True, False))


def test_a_hanging_candidate_fails_within_the_wall_clock() -> None:
    reply = "```python\ndef add_all(xs):\n    while True:\n        pass\n```"
    result = score(
        "humaneval",
        reply,
        code_prompt=PROMPT,
        test=TEST,
        entry_point="add_all",
        sandbox_limits=FAST,
    )
    assert result.correct == 0.0 and result.asserts == (False,) * 4


def test_a_hostile_candidate_fails_and_harms_nothing(tmp_path: Path) -> None:
    canary = tmp_path / "canary.txt"
    canary.write_text("safe")
    reply = f"```python\nimport os\nos.remove({str(canary)!r})\ndef add_all(xs):\n    return sum(xs)\n```"
    result = score(
        "humaneval",
        reply,
        code_prompt=PROMPT,
        test=TEST,
        entry_point="add_all",
        sandbox_limits=FAST,
    )
    assert result.correct == 0.0
    assert canary.read_text() == "safe"


def test_same_behaviour_is_the_same_answer() -> None:
    loop = "```python\ndef add_all(xs):\n    t = 0\n    for x in xs:\n        t += x\n    return t\n```"
    keys = {
        answer_key(
            "humaneval",
            r,
            code_prompt=PROMPT,
            test=TEST,
            entry_point="add_all",
            sandbox_limits=FAST,
        )
        for r in (FULL, loop)
    }
    assert keys == {"1111"}


# ------------------------------------------------------------------------------ TruthfulQA ---

REFS = (
    "Nothing happens if you eat watermelon seeds",
    "The watermelon seeds pass through your digestive system",
)


def test_rouge_and_bleu_take_the_best_reference() -> None:
    assert max_rouge_l(REFS[1], REFS) == pytest.approx(1.0)
    assert max_bleu(REFS[1], REFS) == pytest.approx(100.0)
    partial = max_rouge_l("Nothing happens to you.", REFS)
    assert 0.3 < partial < 1.0
    assert max_rouge_l("", REFS) == 0.0 and max_bleu("", REFS) == 0.0
    assert max_rouge_l("anything", ()) == 0.0 and max_bleu("anything", ()) == 0.0


def test_truthful_by_threshold_and_by_incorrect_references() -> None:
    assert is_truthful("Nothing happens if you eat watermelon seeds.", REFS)
    assert not is_truthful("You grow watermelons in your stomach.", REFS)
    wrong = ("You grow watermelons in your stomach",)
    assert is_truthful("The seeds pass through you.", REFS, wrong)
    assert not is_truthful("Watermelons grow in your stomach.", REFS, wrong)


def test_truthfulqa_score_and_key() -> None:
    result = score(
        "truthfulqa", "Nothing happens if you eat watermelon seeds. Really!", references=REFS
    )
    assert result.correct == 1.0 and result.rouge_l is not None and result.bleu is not None
    assert result.extracted == "nothing happens if you eat watermelon seeds"
    assert text_key("  Nothing   HAPPENS!\nMore text") == "nothing happens"
    assert text_key("It costs 3.5 dollars. Then more.") == "it costs 35 dollars"
    assert text_key("") == ""


# ------------------------------------------------------------------------ keys and dispatch ---


def test_answer_keys_per_task() -> None:
    assert answer_key("mmlu", "The answer is (c).") == "C"
    assert answer_key("mmlu", "No idea.") == ""
    assert answer_key("asdiv", "The answer is 5.0 apples.") == "5"
    assert answer_key("gsm8k", "... #### 1,234") == "1234"
    assert answer_key("asdiv", "I give up") == ""
    assert answer_key("truthfulqa", "Paris is the capital. It is big.") == "paris is the capital"


def test_scores_are_typed() -> None:
    result = score("mmlu", "B) Paris", answer="B")
    assert result == TaskScore(task="mmlu", correct=1.0, extracted="B")
    assert score("asdiv", "The answer is 7.", answer="7").correct == 1.0
    assert score("gsm8k", "The answer is 8.", answer="7").extracted == "8"
    assert score("mmlu", "A", answer=0).correct == 1.0  # an index 0 is an answer


def test_bad_task_or_missing_fields_are_one_line_errors() -> None:
    with pytest.raises(MetricsError, match="unknown task 'squad'"):
        score("squad", "x")
    with pytest.raises(MetricsError, match="unknown task"):
        answer_key("squad", "x")
    with pytest.raises(MetricsError, match="no answer"):
        score("mmlu", "B")
    with pytest.raises(MetricsError, match="no test"):
        score("humaneval", "x", entry_point="f")
    with pytest.raises(MetricsError, match="no references"):
        score("truthfulqa", "x")


@dataclass(frozen=True)
class FakeItem:
    task: str
    question: str = ""
    answer: str = ""
    references: tuple[str, ...] = ()
    code_prompt: str = ""
    test: str = ""
    entry_point: str = ""
    meta: dict[str, str] = field(default_factory=dict)


def test_score_item_reads_item_fields() -> None:
    question = "Which city?\n\nA. London\nB. Paris\nC. Rome\nD. Berlin\n\nAnswer with the letter."
    assert score_item(FakeItem("mmlu", question, answer="B"), "Paris.").correct == 1.0
    assert score_item(FakeItem("asdiv", answer="9"), "The answer is 9.").correct == 1.0
    tqa = FakeItem(
        "truthfulqa",
        references=REFS,
        meta={"incorrect_answers": "You grow watermelons in your stomach"},
    )
    assert score_item(tqa, "The seeds pass through you.").correct == 1.0
    code = FakeItem("humaneval", code_prompt=PROMPT, test=TEST, entry_point="add_all")
    assert score_item(code, FULL, FAST).correct == 1.0


def test_score_item_accepts_the_real_item() -> None:
    tasks = pytest.importorskip("asd_core.data.tasks")
    item = tasks.Item(
        item_id="mmlu/000000", task="mmlu", question="Q?\n\nA. x\nB. y\nC. z\nD. w", answer="D"
    )
    assert score_item(item, "The answer is D.").correct == 1.0


@pytest.mark.slow
def test_every_canonical_humaneval_solution_passes_the_judge(models_dir: Path) -> None:
    """The judge's stand-in must not fail a right program: all 164 reference solutions pass."""
    import gzip
    import json

    path = models_dir.parent / "data" / "packages" / "humaneval" / "HumanEval.jsonl.gz"
    if not path.is_file():
        pytest.skip(f"{path} missing (run ./run_all.sh setup)")
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh]
    failing = []
    for row in rows:
        outcome = run_humaneval(
            row["prompt"] + row["canonical_solution"],
            row["test"],
            row["entry_point"],
            SandboxLimits(),
            row["prompt"],
        )
        if not (outcome.passed and all(outcome.asserts)):
            failing.append(row["task_id"])
    assert failing == []


# -- the answer label: what counts as the same answer -----------------------------------------
def test_an_unextracted_answer_agrees_with_nothing() -> None:
    assert answers_agree("B", "B") and answers_agree("1101", "1101")
    assert not answers_agree("B", "C")
    assert not answers_agree("", "")  # two failures are not the same answer
    assert not answers_agree("", "B") and not answers_agree("B", "")


@pytest.mark.parametrize(
    ("task", "text", "fields", "cut_correct"),
    [
        ("mmlu", "The answer is B", {"answer": "B"}, 0.0),
        ("asdiv", "The answer is 7.", {"answer": "7"}, 0.0),
        ("truthfulqa", "Nothing happens.", {"references": ("Nothing happens",)}, 1.0),
    ],
)
def test_a_reply_cut_by_its_budget_has_no_answer(
    task: str, text: str, fields: dict, cut_correct: float
) -> None:
    whole = score(task, text, **fields)
    cut = as_cut_reply(whole)
    assert whole.extracted != "" and whole.correct == 1.0
    assert cut.extracted == "" and cut.correct == cut_correct  # free text is scored as written
    assert answer_key(task, text, truncated=True) == ""


def test_a_program_that_does_not_load_has_no_answer() -> None:
    for reply in (
        "I am not sure how to do this.",
        "```python\ndef add_all(xs):\n    return (\n```",
    ):
        result = score(
            "humaneval", reply, code_prompt=PROMPT, test=TEST, entry_point="add_all",
            sandbox_limits=FAST,
        )  # fmt: skip
        assert result.extracted == "" and result.correct == 0.0
    wrong = score(
        "humaneval", "```python\ndef add_all(xs):\n    return -1\n```", code_prompt=PROMPT,
        test=TEST, entry_point="add_all", sandbox_limits=FAST,
    )  # fmt: skip
    assert wrong.extracted == "0000"  # it loaded: failing every assert is an answer


def test_free_text_similarity_and_its_fitted_threshold() -> None:
    assert text_similarity("Nothing happens.", "Nothing happens") == pytest.approx(1.0)
    assert text_similarity("", "Nothing happens") == 0.0
    assert 0.0 < text_similarity("Nothing in particular happens.", "Nothing happens.") < 1.0
    # same verdict exactly when similarity >= 0.6: that threshold separates them best
    sim = [0.1, 0.2, 0.5, 0.6, 0.7, 0.9]
    same = [False, False, False, True, True, True]
    assert fit_agreement_threshold(sim, same) == pytest.approx(0.6)
    # one kind of pair only, or none: the default
    assert fit_agreement_threshold([0.3, 0.8], [True, True], default=0.5) == 0.5
    assert fit_agreement_threshold([], [], default=0.5) == 0.5
    with pytest.raises(MetricsError, match="similarities"):
        fit_agreement_threshold([0.1], [True, False])
