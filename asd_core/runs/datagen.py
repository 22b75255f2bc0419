"""The generations dataset: every stage's greedy answer to every input, verified by deeper stages.

For each selected item (tasks × splits train/calibration/test) and every stage k of the
hierarchy, stage k writes its greedy answer y_k from scratch (its own chat template, the task's
token budget and stop strings), and every deeper stage j > k verifies y_k in one teacher-forced
score pass (``verify.verify_batch``, across tokenizers where needed). From that come the
acceptance labels — ``token`` (the final stage accepts all of y_k) and ``answer`` (y_k's
task-normalised answer equals the final stage's) — the soft target (accepted fraction), the
feature inputs and the measured latencies that the evaluation replays (docs/design.md). A
multiple-choice task scored by ``datagen_mc_scoring: loglik`` has no written reply: y_k is the
option stage k picks in one pass (``asd_core.decoding.choice``), and a deeper stage's
verification is its own pass (accepted when it picks the same option).

:func:`run` loads the stages, selects the items (:mod:`asd_core.runs.selection`), and writes the
shards that are missing (:mod:`asd_core.runs.shards`) into the folder described in
:mod:`asd_core.runs.generations`, after checking its manifest: a killed run resumes with no lost
and no duplicated rows.

The manifest is flat JSON: the content keys of :meth:`DatagenSpec.content` (profile, stages,
tasks, split fractions, counts per task, seed, shard and batch size, top_k, hidden states, the
per-task generation settings ``generation``, task sources) plus, once the models are loaded,
``items_digest``, ``n_items`` and ``tokenizer_keys``; then ``content_digest``, ``n_shards``,
``counts``, ``skipped_too_long``, ``stage_sources``, ``columns`` and ``provenance``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from asd_core.data import Item, load_task, pools
from asd_core.decoding.verify import tokenizer_key
from asd_core.ground import config, logs
from asd_core.ground.errors import cli_entry
from asd_core.ground.files import atomic_write_bytes, atomic_write_text
from asd_core.ground.provenance import provenance
from asd_core.models.base import Backend
from asd_core.runs.generations import (
    COLUMNS,
    MANIFEST,
    DatagenError,
    check_manifest,
    complete_shard,
    folder_lock,
    generations_dir,
    rows_to_parquet,
    shard_path,
)
from asd_core.runs.selection import (
    DatagenResult,
    DatagenSpec,
    Entry,
    Selection,
    prompt_fits,
    select_entries,
)
from asd_core.runs.shards import rows_of_shard

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from asd_core.data.sandbox import SandboxLimits

Clock = Callable[[], float]


# -- the folder -----------------------------------------------------------------------------------


def _load_items(spec: DatagenSpec, data_dir: Path) -> dict[str, list[Item]]:
    return {t: load_task(t, data_dir, spec.task_sources.get(t)) for t in spec.tasks}


def load_pool_prompts(spec: DatagenSpec, data_dir: Path) -> dict[str, list[Item]]:
    """Every pool prompt each task with a ``pool_per_task`` count may draw (fetched once).

    One-line error when a count exceeds what the pools hold, before any model is loaded.
    """
    wanted = [t for t in spec.tasks if spec.pool_per_task.get(t)]
    if not wanted:
        return {}
    found = pools.supplies(
        wanted, data_dir, spec.pools, spec.pool_sources, spec.task_sources, download=True
    )
    for task in wanted:
        pools.take(found[task], spec.pool_per_task[task], spec.seed)  # raises if too few
    return {t: list(found[t].items) for t in wanted}


def run(
    spec: DatagenSpec,
    data_dir: str | os.PathLike[str],
    models_dir: str | os.PathLike[str] = "models",
    *,
    backends: Sequence[Backend] | None = None,
    progress: bool = True,
    sandbox_limits: SandboxLimits | None = None,
    clock: Clock = time.perf_counter,
) -> DatagenResult:
    """Generate (or finish) the dataset of ``spec`` under ``<data_dir>/generations/<profile>``.

    ``backends`` may be passed already loaded (one per stage, in order; they are not closed);
    otherwise each stage is loaded from ``models_dir`` and closed at the end. Task data come
    from the packages under ``data_dir`` unless ``spec.task_sources`` names a file or hub id.

    Long because: loading, selection, manifest and shards share one lock and one clean-up.
    """
    start = clock()
    data_dir = Path(data_dir)
    folder = generations_dir(data_dir, spec.profile)
    static = spec.content()
    if not spec.tasks or not any(spec.per_split.values()):
        select_entries(spec, {})  # raises the one-line empty-selection error
    check_manifest(folder, static)  # before loading anything: a mismatch costs nothing
    items = _load_items(spec, data_dir)
    pool_prompts = load_pool_prompts(spec, data_dir)
    own = backends is None
    loaded: list[Backend] = []
    try:
        if backends is None:
            from asd_core.models.registry import load_backend

            for stage in spec.stages:
                loaded.append(load_backend(stage, Path(models_dir)))
            backends = loaded
        names = [b.stage.name for b in backends]
        if names != [s.name for s in spec.stages]:
            raise DatagenError(f"datagen: backends {names} do not match stages {spec.stages}")
        keys = [tokenizer_key(b.tokenizer) for b in backends]
        selection = select_entries(spec, items, prompt_fits(backends, spec), pool_prompts)
        shards = selection.shards(spec.shard_size)
        content = {
            **static,
            "items_digest": selection.digest(),
            "n_items": len(selection.entries),
            "tokenizer_keys": keys,
        }
        with folder_lock(folder):
            if check_manifest(folder, content) is None:
                _write_manifest(folder, content, selection, len(shards), spec)
            for stale in folder.glob(".*.tmp"):  # a killed run's half-written file
                stale.unlink(missing_ok=True)
            done, written = _write_missing_shards(
                folder, shards, backends, keys, spec, sandbox_limits, progress
            )
    finally:
        if own:
            for b in loaded:
                b.close()
    return DatagenResult(
        folder=folder,
        n_items=len(selection.entries),
        n_rows=len(selection.entries) * len(spec.stages),
        n_shards=len(shards),
        shards_written=written,
        shards_skipped=sum(done),
        skipped_too_long={k: v for k, v in selection.skipped_too_long.items() if v},
        seconds=clock() - start,
    )


def _write_manifest(
    folder: Path, content: dict[str, Any], selection: Selection, n_shards: int, spec: DatagenSpec
) -> None:
    """The folder's manifest: flat, so that runs.online reads tasks, generation and top_k."""
    digest = hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]
    manifest = {
        **content,
        "content_digest": digest,
        "n_shards": n_shards,
        "counts": selection.counts,
        "skipped_too_long": selection.skipped_too_long,
        "stage_sources": {s.name: s.source for s in spec.stages},
        "columns": {name: comment for name, (_, comment) in COLUMNS.items()},
        "provenance": provenance(content, spec.seed, notebook="02_data_generation"),
    }
    atomic_write_text(folder / MANIFEST, json.dumps(manifest, indent=2) + "\n")


def _write_missing_shards(
    folder: Path,
    shards: Sequence[Sequence[Entry]],
    backends: Sequence[Backend],
    keys: Sequence[str],
    spec: DatagenSpec,
    sandbox_limits: SandboxLimits | None,
    progress: bool,
) -> tuple[list[bool], int]:
    """Write every shard not already complete; (which were complete, how many were written)."""
    done = [
        complete_shard(shard_path(folder, s), [e.item.item_id for e in entries], len(backends))
        for s, entries in enumerate(shards)
    ]
    total = sum(len(e) for e in shards)
    already = sum(len(e) for e, d in zip(shards, done, strict=True) if d)
    what = f"generations ({spec.profile})"
    bar = tqdm(
        total=total,
        initial=already,
        desc=what,
        unit="item",
        disable=not progress,
        dynamic_ncols=True,
    )
    lines = logs.Progress(log, what, total, done=already, every_s=0.0)  # one line per shard
    written = 0
    for s, entries in enumerate(shards):
        if done[s]:
            continue
        rows = rows_of_shard(backends, keys, entries, spec, s, sandbox_limits)
        atomic_write_bytes(shard_path(folder, s), rows_to_parquet(rows))
        written += 1
        bar.update(len(entries))
        lines.update(len(entries))
    bar.close()
    return done, written


# -- command line ---------------------------------------------------------------------------------
@cli_entry
def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m asd_core.runs.datagen",
        description="Generate (or resume) a generations dataset from a JSON spec: the fields "
        "of DatagenSpec, stages as a list of stage mappings.",
    )
    parser.add_argument("spec", help="JSON file with the DatagenSpec fields")
    parser.add_argument("--data-dir", default="data", help="datasets folder (default: data)")
    parser.add_argument("--models-dir", default="models", help="weights folder (default: models)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        raw = json.loads(Path(args.spec).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatagenError(f"{args.spec}: unreadable spec ({type(exc).__name__})") from None
    if not isinstance(raw, dict) or "stages" not in raw:
        raise DatagenError(f"{args.spec}: must be a JSON object with 'stages'")
    stages = config.validate_subset(stages=raw.pop("stages"))["stages"]
    try:
        spec = DatagenSpec(stages=stages, **raw)
    except TypeError as exc:
        raise DatagenError(f"{args.spec}: {exc}") from None
    result = run(spec, args.data_dir, args.models_dir, progress=not args.no_progress)
    print(
        f"ok: {result.folder}: {result.n_items} items, {result.n_rows} rows in "
        f"{result.n_shards} shards ({result.shards_written} written, {result.shards_skipped} "
        f"kept) in {result.seconds:.0f} s"
    )


if __name__ == "__main__":
    main()
