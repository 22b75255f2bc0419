"""HumanEval answers: the program in a reply, its run against the unit test in the sandbox, and its answer key.

The answer key is the pass/fail vector over the unit test's assert statements ("1101"), so two
programs are "the same answer" when they pass and fail the same asserts. A program that does not
load (no code, a syntax error, no entry point) has the key "". Verdicts come from a judge process
(:mod:`asd_core.data.judge`) that runs the test itself and reaches the program only through a pipe
of plain values, so a program cannot print its own "pass".
"""

from __future__ import annotations

import ast
import functools
import json
import re
import secrets
import textwrap
from dataclasses import dataclass
from pathlib import Path

from asd_core.data import judge
from asd_core.data.sandbox import SOCKET_GUARD, SandboxLimits, SandboxResult, run_python


@dataclass(frozen=True)
class CodeOutcome:
    """One HumanEval program run against its unit test."""

    loaded: bool  # the program compiled, ran, and defined a callable entry point
    passed: bool  # check(entry_point) ran without an exception: pass@1 for a greedy sample
    asserts: tuple[bool, ...]  # each top-level assert statement of check(), run on its own
    sandbox: SandboxResult  # the sandboxed process that ran both


def extract_code(text: str, code_prompt: str, entry_point: str) -> str:
    """The program to test: prompt + the reply's code (rules in the module docstring)."""
    blocks = re.findall(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)(?:```|\Z)", text, re.DOTALL | re.I)
    defines = re.compile(rf"^\s*(?:async\s+)?def\s+{re.escape(entry_point)}\s*\(", re.MULTILINE)
    if blocks:
        code = next((b for b in blocks if defines.search(b)), blocks[0])
    else:
        code = _strip_prose(text)
    prompt = code_prompt if code_prompt.endswith("\n") else code_prompt + "\n"
    if entry_point and defines.search(code):
        return f"{_runnable_prompt(prompt)}\n{textwrap.dedent(code)}"
    # a body only: as written, or indented under the prompt's signature if it came flush left
    for body in (code, textwrap.indent(textwrap.dedent(code), "    ")):
        if _parses(prompt + body):
            return prompt + body
    return prompt + code


def _strip_prose(text: str) -> str:
    """Bare text: drop prose lines before the first line that looks like code."""
    if _parses(text):
        return text
    start = re.search(r"^(?:def |async def |class |import |from |@)", text, re.MULTILINE)
    return text[start.start() :] if start else text


def _runnable_prompt(prompt: str) -> str:
    """The prompt as a module (its stub ends in a docstring, a valid body); else its imports."""
    if _parses(prompt):
        return prompt
    imports = re.findall(r"^(?:from\s+\S+\s+)?import\s+.+$", prompt, re.MULTILINE)
    return "\n".join(imports) + "\n"


def _parses(source: str) -> bool:
    try:  # compile, not ast.parse: only the compiler rejects a "return" outside a function
        compile(source, "<candidate>", "exec", dont_inherit=True)
    except (SyntaxError, ValueError):
        return False
    return True


def split_check(test: str) -> tuple[str, list[tuple[str, bool]]]:
    """The ``check`` function's parameter name and its top-level statements.

    Each statement comes as (source, contains an assert). Statements without an assert (set-up
    such as ``import math`` or ``xs = [...]``) run in order but are not scored. An unparsable
    test or one without ``check`` gives ("candidate", []).
    """
    try:
        module = ast.parse(test)
    except (SyntaxError, ValueError):
        return "candidate", []
    check = next(
        (n for n in module.body if isinstance(n, ast.FunctionDef) and n.name == "check"), None
    )
    if check is None:
        return "candidate", []
    parameter = check.args.args[0].arg if check.args.args else "candidate"
    statements = [
        (ast.unparse(node), any(isinstance(n, ast.Assert) for n in ast.walk(node)))
        for node in check.body
    ]
    return parameter, statements


def run_humaneval(
    program: str,
    test: str,
    entry_point: str,
    limits: SandboxLimits | None = None,
    prompt: str = "",
) -> CodeOutcome:
    """Run ``check(entry_point)`` of ``test`` against ``program`` in one sandbox.

    The verdict comes from the judge process (:mod:`asd_core.data.judge`), which runs the test
    itself and reaches the program only through a pipe to a second process, so a program
    cannot write its own verdict. ``prompt`` is the item's code prompt: its helpers (some
    tests call them) run on the judge's side. The judge then runs each of check's top-level
    statements on its own and reports which asserts pass. Time budgets are shares of
    ``limits.wall_seconds``: loading 20%, the full check 35%, the single statements 35%
    together; each runs under an alarm so one hang costs only its share.
    """
    limits = limits or SandboxLimits()
    parameter, statements = split_check(test)
    n_scored = sum(scored for _, scored in statements)
    mark = f"@asd-{secrets.token_hex(8)}"
    params = {
        "mark": mark,
        "program": program,
        "prompt": _runnable_prompt(prompt) if prompt else "",
        "test": test,
        "entry_point": entry_point,
        "parameter": parameter,
        "statements": statements,
        "seconds": [
            0.2 * limits.wall_seconds,
            0.35 * limits.wall_seconds,
            0.35 * limits.wall_seconds / max(1, len(statements)),
        ],
        "guard": SOCKET_GUARD,
    }
    source = (
        _judge_source()
        + f"\n{judge.PARAMS_MARKER}\njudge_main(json.loads({json.dumps(params)!r}))\n"
    )
    result = run_python(source, limits)
    checked = loaded = False
    asserts = [False] * n_scored
    for line in result.stdout.splitlines():
        fields = line.split()
        if len(fields) < 3 or fields[0] != mark:
            continue
        if fields[1] == "loaded":
            loaded = fields[2] == "1"
        elif fields[1] == "check":
            checked = fields[2] == "1"
        elif fields[1] == "assert" and len(fields) == 4 and fields[2].isdigit():
            index = int(fields[2])
            if index < n_scored:
                asserts[index] = fields[3] == "1"
    return CodeOutcome(loaded=loaded, passed=checked, asserts=tuple(asserts), sandbox=result)


@functools.cache
def _judge_source() -> str:
    return Path(judge.__file__).read_text(encoding="utf-8")


def code_key(outcome: CodeOutcome) -> str:
    """The assert vector as "1"/"0" characters; "P"/"F" for a test with no asserts to split.

    "" (no answer) when the program did not load.
    """
    if not outcome.loaded:
        return ""
    if outcome.asserts:
        return "".join("1" if ok else "0" for ok in outcome.asserts)
    return "P" if outcome.passed else "F"
