"""The generations dataset on disk: its row schema, the manifest, the shards, and loading them back.

Layout (one folder per profile; relative folders are the caller's business)::

    <data_dir>/generations/<profile>/manifest.json        written first: what the rows depend on
    <data_dir>/generations/<profile>/shard-00000.parquet  ``shard_size`` items × K stages each

A shard is written atomically (temp file + rename). A restarted run checks that the manifest
matches its own parameters (:func:`check_manifest`: a different profile or content parameter is an
error naming the key, and nothing is overwritten) and skips complete shards. A lock file stops
two runs from writing the same folder at once.

Row schema: :data:`COLUMNS` (name → Arrow type, comment), one row per (item, stage). The columns
ending in ``_s`` or ``_s_by`` (:data:`TIMING_COLUMNS`) are wall-clock measurements and the only
ones that differ between two runs with the same parameters.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from asd_core.data.tasks import TASK_FAMILIES
from asd_core.data.text_answers import TEXT_AGREEMENT, fit_agreement_threshold
from asd_core.ground.errors import AsdError

SCHEMA_VERSION = "1"  # bump when a column is added, removed or changes meaning


MANIFEST = "manifest.json"


SHARD_GLOB = "shard-*.parquet"


_F32 = pa.list_(pa.float32())


_I32 = pa.list_(pa.int32())


# name -> (Arrow type, what it holds). Lists "_by" have length K: index j = verification of this
# row's output by stage j; -1 / NaN where j ≤ stage (nothing deeper verified it).
COLUMNS: dict[str, tuple[pa.DataType, str]] = {
    "item_id": (pa.string(), "dataset item id '<task>/<row:06d>'"),
    "task": (pa.string(), "task name (asd_core.data.TASKS)"),
    "split": (pa.string(), "train, calibration or test (stable hash of item_id)"),
    "stage": (pa.int32(), "k, 0 = cheapest stage"),
    "n_stages": (pa.int32(), "K, stages in the hierarchy"),
    "stage_name": (pa.string(), "the stage's name in params"),
    "prompt_ids": (_I32, "(n_in,) the task prompt in stage k's chat template and tokens"),
    "token_ids": (_I32, "(n_out,) y_k, stage k's greedy output ids, EOS included when written"),
    "text": (pa.string(), "y_k decoded, special tokens removed"),
    "logprobs": (_F32, "(n_out,) log p(chosen token), nats"),
    "entropy": (_F32, "(n_out,) entropy of each next-token distribution, nats"),
    "top1_logprob": (_F32, "(n_out,) largest log-prob at each step, nats"),
    "top2_logprob": (_F32, "(n_out,) second largest log-prob at each step, nats"),
    "stop_reason": (pa.string(), "eos, stop (a stop string) or length"),
    "hidden_mean": (_F32, "(d_model,) mean final-layer hidden state; null unless requested"),
    "n_in": (pa.int32(), "prompt tokens"),
    "n_out": (pa.int32(), "generated tokens"),
    "gen_batch": (
        pa.int32(),
        "prompts in the generate call that wrote y_k; the timings are that call's",
    ),
    "latency_s": (pa.float64(), "wall-clock s of generating y_k from scratch (Generation.total_s)"),
    "prefill_s": (pa.float64(), "wall-clock s until the first token's logits were ready"),
    "accepted_frac_prev": (pa.float64(), "fraction of y_{k-1} stage k accepted; NaN for k = 0"),
    "label_token": (pa.int8(), "1 if the final stage accepts all of y_k (1 for the final stage)"),
    "label_answer": (
        pa.int8(),
        "1 if answer is non-empty and equals the final stage's (1 for the final stage)",
    ),
    "accepted_frac_final": (pa.float64(), "fraction of y_k the final stage accepts (soft target)"),
    "answer": (
        pa.string(),
        "task-normalised answer key of y_k (data.scoring.answer_key); '' = none (cut or unreadable)",
    ),
    "correct": (pa.float64(), "task quality of y_k against the gold reference, 0/1; NaN: no gold"),
    "rouge_l": (pa.float64(), "TruthfulQA best ROUGE-L F1 against the references; else NaN"),
    "similarity_final": (
        pa.float64(),
        "free-text tasks: ROUGE-L F1 of y_k against the final stage's output; else NaN",
    ),
    "bleu": (pa.float64(), "TruthfulQA best sentence BLEU (0-100); else NaN"),
    "drafted_by": (_I32, "(K,) len(y_k) in stage j's tokens (re-encoded across tokenizers)"),
    "accepted_by": (_I32, "(K,) leading tokens of y_k stage j accepts"),
    "verify_s_by": (pa.list_(pa.float64()), "(K,) wall-clock s of stage j's verification of y_k"),
}


SCHEMA = pa.schema([pa.field(name, kind) for name, (kind, _) in COLUMNS.items()])


TIMING_COLUMNS = tuple(c for c in COLUMNS if c.endswith(("_s", "_s_by")))


class DatagenError(AsdError):
    """Impossible generation parameters, an empty selection, or a folder that does not match."""


def rows_to_parquet(rows: Sequence[Mapping[str, Any]]) -> bytes:
    """The Parquet file (bytes) of ``rows`` under :data:`SCHEMA`."""
    table = pa.Table.from_pylist(list(rows), schema=SCHEMA)
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def generations_dir(data_dir: str | os.PathLike[str], profile: str) -> Path:
    """``<data_dir>/generations/<profile>``."""
    return Path(data_dir) / "generations" / profile


def shard_path(folder: Path, index: int) -> Path:
    return folder / f"shard-{index:05d}.parquet"


def _first_difference(old: Any, new: Any, path: str) -> str | None:
    """Dotted path of the first place two JSON values differ (None when equal)."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in list(old) + [k for k in new if k not in old]:
            where = f"{path}.{key}" if path else str(key)
            if key not in old or key not in new:
                return where
            found = _first_difference(old[key], new[key], where)
            if found:
                return found
        return None
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        for i, (a, b) in enumerate(zip(old, new, strict=True)):
            found = _first_difference(a, b, f"{path}[{i}]")
            if found:
                return found
        return None
    return None if old == new else path


def _lookup(record: Any, path: str) -> Any:
    for part in path.replace("[", ".[").split("."):
        if not part:
            continue
        if part.startswith("["):
            index = int(part[1:-1])
            record = record[index] if isinstance(record, list) and index < len(record) else None
        else:
            record = record.get(part) if isinstance(record, dict) else None
    return record


def _short(value: Any, width: int = 60) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= width else text[: width - 1] + "…"


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The folder's manifest, None when it has none; unreadable is an error naming the file."""
    path = folder / MANIFEST
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatagenError(f"{path}: unreadable manifest ({type(exc).__name__})") from None
    if not isinstance(record, dict) or "schema_version" not in record:
        raise DatagenError(f"{path}: not a generations manifest (no 'schema_version')")
    return record


def check_manifest(folder: Path, content: Mapping[str, Any]) -> dict[str, Any] | None:
    """Compare ``content`` with the folder's manifest, key by key, over the keys ``content`` has.

    Raises one line naming the folder and the first differing key; returns the manifest (None
    when the folder has none, which is only allowed while it holds no shards either).
    """
    manifest = read_manifest(folder)
    if manifest is None:
        if any(folder.glob(SHARD_GLOB)):
            raise DatagenError(f"{folder}: has shards but no {MANIFEST}; move it aside")
        return None
    stored = manifest
    current = json.loads(json.dumps(dict(content)))
    key = _first_difference({k: stored.get(k) for k in current}, current, "")
    if key is not None:
        raise DatagenError(
            f"{folder}: was generated with a different '{key}' "
            f"({_short(_lookup(stored, key))} there, {_short(_lookup(current, key))} now); "
            "use another data_dir or profile, or remove the folder"
        )
    return manifest


@contextlib.contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on the folder; the kernel drops it when the process dies."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "a") as fh:  # "a": never touch an existing file
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DatagenError(f"{folder}: another data-generation run is writing it") from None
        yield


def complete_shard(path: Path, item_ids: Sequence[str], n_stages: int) -> bool:
    """Is ``path`` a finished shard holding exactly these items? Missing: False; wrong: error."""
    if not path.is_file():
        return False
    try:
        ids = pq.read_table(path, columns=["item_id"]).column("item_id").to_pylist()
    except (OSError, pa.ArrowException) as exc:
        raise DatagenError(f"{path}: unreadable shard ({type(exc).__name__}); remove it") from None
    expected = [item_id for item_id in item_ids for _ in range(n_stages)]
    if ids != expected:
        raise DatagenError(f"{path}: holds other items than the manifest's order; remove it")
    return True


def load_generations(folder: str | os.PathLike[str]) -> pd.DataFrame:
    """Every row of a generations folder, shard by shard, in dataset order.

    ``df.attrs`` carries the ``manifest`` and ``complete`` (every shard present). A missing
    folder, or one without rows yet, is a one-line error.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DatagenError(f"{folder}: no generations folder (run notebook 02_data_generation)")
    manifest = read_manifest(folder)
    paths = sorted(folder.glob(SHARD_GLOB))
    if not paths:
        raise DatagenError(f"{folder}: no generated rows yet (no {SHARD_GLOB} files)")
    try:
        table = pa.concat_tables(pq.read_table(p, schema=SCHEMA) for p in paths)
    except (OSError, pa.ArrowException) as exc:
        raise DatagenError(f"{folder}: unreadable shard ({type(exc).__name__}: {exc})") from None
    if table.num_rows == 0:
        raise DatagenError(f"{folder}: the shards hold no rows")
    df = refit_text_agreement(table.to_pandas())
    df.attrs["manifest"] = manifest
    df.attrs["complete"] = manifest is not None and len(paths) == manifest.get("n_shards")
    return df


def final_stage_value(df: pd.DataFrame, column: str) -> pd.Series:
    """For every row, ``column`` of the final stage's row of the same item."""
    final = df[df["stage"] == df["n_stages"] - 1].set_index("item_id")[column]
    return df["item_id"].map(final)


def refit_text_agreement(df: pd.DataFrame) -> pd.DataFrame:
    """``label_answer`` of free-text rows under the threshold fitted on the calibration split.

    Generation labels free-text answers with the default threshold; here the threshold is
    chosen on the calibration rows (where both answers have a truthfulness verdict) to best
    predict "same verdict as the final stage", and every free-text row is relabelled with it.
    ``df.attrs["text_agreement"]`` records the threshold and how many pairs chose it.
    """
    text = df["task"].map(TASK_FAMILIES).eq("text") & (df["stage"] < df["n_stages"] - 1)
    if not text.any():
        df.attrs["text_agreement"] = {"threshold": TEXT_AGREEMENT, "pairs": 0}
        return df
    final_correct = final_stage_value(df, "correct")
    known = text & df["split"].eq("calibration") & df["correct"].notna() & final_correct.notna()
    same = (df.loc[known, "correct"] == final_correct[known]).to_numpy()
    threshold = fit_agreement_threshold(df.loc[known, "similarity_final"].to_numpy(), same)
    agree = (df["similarity_final"] >= threshold) & df["answer"].ne("")
    df.loc[text, "label_answer"] = agree[text].astype("int8")
    df.attrs["text_agreement"] = {"threshold": threshold, "pairs": int(known.sum())}
    return df
