"""Read a task's rows — from its package files, a local file or the hub — into Items.

Everything goes through the ``datasets`` library (``load_dataset("csv" | "json" | "parquet")``
for files, a repository id for the hub), loaded into memory. Local and packaged files are
prepared in a throw-away cache folder, so nothing is left in the user's home; hub downloads
are kept under ``<data_dir>/hub-cache``.

Sources use different schemas for the same task (the MMLU CSVs have A-D columns, the hub's
``cais/mmlu`` a ``choices`` list); each is mapped to the task's canonical row
(``TaskSpec.columns``) before the prompt is written.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asd_core.data import packages
from asd_core.data.tasks import LETTERS, Item, get_task
from asd_core.ground.errors import AsdError

Row = dict[str, Any]

FILE_BUILDERS = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
_COMPRESSIONS = {".gz", ".bz2", ".xz", ".zst"}

# (config, split) of the hub datasets we know; other ids take "id[:config][@split]", split test
HUB_DEFAULTS: dict[str, tuple[str | None, str]] = {
    "cais/mmlu": ("all", "test"),
    "openai_humaneval": (None, "test"),
    "openai/openai_humaneval": (None, "test"),
    "EleutherAI/asdiv": (None, "validation"),
    "gsm8k": ("main", "test"),
    "openai/gsm8k": ("main", "test"),
    "truthful_qa": ("generation", "validation"),
    "truthfulqa/truthful_qa": ("generation", "validation"),
}


@dataclass(frozen=True)
class Schema:
    """A source layout of a task's rows and how to turn one row into the canonical row."""

    columns: tuple[str, ...]  # source columns this layout is recognised by
    to_canonical: Callable[[Row], Row]  # source row -> canonical row (TaskSpec.columns keys)


def _mmlu_from_choices(row: Row) -> Row:
    # cais/mmlu: choices is a list of 4 options, answer an index (ClassLabel) 0-3
    choices = list(row["choices"])
    if len(choices) != len(LETTERS):
        raise ValueError(f"choices has {len(choices)} options, expected 4")
    answer = row["answer"]
    letter = LETTERS[int(answer)] if str(answer).strip().isdigit() else str(answer).strip()
    return {**row, **dict(zip(LETTERS, choices, strict=True)), "answer": letter}


def _truthfulqa_from_hub(row: Row) -> Row:
    # truthful_qa "generation": best_answer plus a list of correct_answers
    best = row.get("best_answer")
    return {**row, "answer": [best, *row["correct_answers"]] if best else row["correct_answers"]}


def _asdiv_from_body(row: Row) -> Row:
    return {**row, "passage": row["body"]}  # EleutherAI/asdiv names the passage "body"


SCHEMAS: dict[str, tuple[Schema, ...]] = {  # most specific first; identity schemas last
    "mmlu": (Schema(("question", "choices", "answer"), _mmlu_from_choices),),
    "asdiv": (Schema(("body", "question", "answer"), _asdiv_from_body),),
    "truthfulqa": (Schema(("question", "correct_answers"), _truthfulqa_from_hub),),
}


def load_task(
    name: str, data_dir: str | Path = "data", source: str | Path | None = None
) -> list[Item]:
    """All items of task ``name``, in source order.

    ``source`` None reads the task's package files under ``data_dir`` (fetched on first use,
    sha256-checked on every load); otherwise a local .csv/.json/.jsonl/.parquet file (optionally
    compressed) or a Hugging Face hub id such as ``openai/gsm8k`` or ``id:config@split``.
    """
    spec = get_task(name)
    if source is None:
        rows, origin = _package_rows(name, Path(data_dir)), str(packages.task_dir(data_dir, name))
    elif _is_local(str(source)):
        rows, origin = _file_rows(name, Path(source)), str(source)
    else:
        rows, origin = _hub_rows(name, str(source), Path(data_dir)), f"hub dataset '{source}'"
    if not rows:
        raise AsdError(f"task '{name}': {origin} has no rows")
    canonical = _to_canonical(name, spec.columns, rows, origin)
    return [spec.make_item(row, i) for i, row in enumerate(canonical)]


def _to_canonical(task: str, required: tuple[str, ...], rows: list[Row], origin: str) -> list[Row]:
    present = set(rows[0])
    schema = next(
        (s for s in SCHEMAS.get(task, ()) if set(s.columns) <= present),
        Schema(required, dict),
    )
    missing = [c for c in schema.columns if c not in present]
    if missing:
        raise AsdError(
            f"task '{task}': {origin} has no column '{missing[0]}' "
            f"(needs {', '.join(required)}; found {', '.join(sorted(present))})"
        )
    out = []
    for i, row in enumerate(rows):
        try:
            canonical = schema.to_canonical(row)
        except (ValueError, TypeError, IndexError, KeyError) as exc:
            raise AsdError(f"task '{task}': {origin} row {i}: {exc}") from None
        if task == "mmlu" and str(canonical["answer"]).strip().upper() not in LETTERS:
            raise AsdError(
                f"task 'mmlu': {origin} row {i}: answer {canonical['answer']!r} is not one of A-D"
            )
        out.append(canonical)
    return out


def _is_local(source: str) -> bool:
    path = Path(source)
    suffixes = [s.lower() for s in path.suffixes]
    return (
        path.exists()
        or bool(set(suffixes) & set(FILE_BUILDERS))
        or source.startswith((".", "/", "~"))
    )


def _builder_for(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    while suffixes and suffixes[-1] in _COMPRESSIONS:
        suffixes.pop()
    if not suffixes or suffixes[-1] not in FILE_BUILDERS:
        raise AsdError(f"{path}: unsupported file type (use {', '.join(FILE_BUILDERS)})")
    return FILE_BUILDERS[suffixes[-1]]


def _file_rows(task: str, path: Path) -> list[Row]:
    path = path.expanduser()
    if not path.is_file():
        raise AsdError(f"task '{task}': data file {path} not found")
    if path.stat().st_size == 0:
        raise AsdError(f"task '{task}': {path} is empty")
    builder = _builder_for(path)
    # keep option texts such as "None" or "NA" as written instead of reading them as missing
    options = {"keep_default_na": False, "na_filter": False} if builder == "csv" else {}
    splits = _read(task, builder, str(path), [str(path)], **options)
    return splits["train"]


def _package_rows(task: str, data_dir: Path) -> list[Row]:
    package = packages.get_package(task)
    paths = packages.fetch([task], data_dir)[task]
    origin = str(packages.task_dir(data_dir, task))
    if task != "mmlu":
        return _read(task, "json", origin, [str(p) for p in paths])["train"]
    # one split per subject file, so every row keeps its subject; read as strings so an
    # option such as "None" or "2" stays text
    from datasets import Features, Value

    columns = ["question", *LETTERS, "answer"]
    subjects = [f.name.removesuffix("_test.csv") for f in package.files]
    splits = _read(
        task,
        "csv",
        origin,
        dict(zip(subjects, map(str, paths), strict=True)),
        column_names=columns,
        features=Features({c: Value("string") for c in columns}),
        keep_default_na=False,
        na_filter=False,
    )
    return [{**row, "subject": s} for s in subjects for row in splits[s]]


def _read(
    task: str, builder: str, origin: str, data_files: Any, **options: Any
) -> dict[str, list[Row]]:
    """Rows of every split ``datasets`` builds from ``data_files``, via a throw-away cache."""
    import datasets

    try:
        with _quiet_datasets(), tempfile.TemporaryDirectory(prefix="asd-datasets-") as cache:
            loaded = datasets.load_dataset(
                builder, data_files=data_files, keep_in_memory=True, cache_dir=cache, **options
            )
            return {split: ds.to_list() for split, ds in loaded.items()}
    except Exception as exc:  # datasets, pyarrow and pandas each raise their own types
        if "corresponds to no data" in str(exc):  # datasets' words for a header-only file
            raise AsdError(f"task '{task}': {origin} has no rows") from None
        raise AsdError(f"task '{task}': could not read {origin}: {_reason(exc)}") from None


def parse_hub_id(source: str) -> tuple[str, str | None, str]:
    """``"repo[:config][@split]"`` -> (repo, config, split), defaults from HUB_DEFAULTS."""
    rest, _, split = source.partition("@")
    repo, _, config = rest.partition(":")
    default_config, default_split = HUB_DEFAULTS.get(repo, (None, "test"))
    return repo, config or default_config, split or default_split


def _hub_rows(task: str, source: str, data_dir: Path) -> list[Row]:
    import datasets

    repo, config, split = parse_hub_id(source)
    try:
        with _quiet_datasets():
            ds = datasets.load_dataset(
                repo,
                config,
                split=split,
                keep_in_memory=True,
                cache_dir=str(data_dir / "hub-cache"),
            )
        return list(ds.to_list())
    except Exception as exc:  # offline, unknown id, missing config/split: all one line
        raise AsdError(
            f"task '{task}': could not load '{source}' from the Hugging Face hub "
            f"({_reason(exc)}); offline? pass a local .csv/.jsonl/.parquet file instead"
        ) from None


def _reason(exc: BaseException) -> str:
    """The root cause of a library error (``datasets`` wraps it), as ``Type: first line``."""
    root = exc
    while root.__cause__ is not None:
        root = root.__cause__
    msg = (str(root).strip().splitlines() or [""])[0]
    return f"{type(root).__name__}: {msg}" if msg else type(root).__name__


@contextmanager
def _quiet_datasets() -> Iterator[None]:
    """Hide ``datasets``' per-split progress bars (57 for MMLU) and its log lines on failure.

    Its logger reports a bad file on stderr before raising, which would add a second line to
    our one-line error. The user's settings are restored afterwards.
    """
    import datasets

    was_enabled = datasets.is_progress_bar_enabled()
    verbosity = datasets.logging.get_verbosity()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)
    try:
        yield
    finally:
        datasets.logging.set_verbosity(verbosity)
        if was_enabled:
            datasets.enable_progress_bars()
