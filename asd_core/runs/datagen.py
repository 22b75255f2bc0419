"""The generations dataset: every stage's greedy answer to every input, verified by deeper stages.

For each selected item (tasks × splits train/calibration/test) and every stage k of the
hierarchy, stage k writes its greedy answer y_k from scratch (its own chat template, the task's
token budget and stop strings), and every deeper stage j > k verifies y_k in one teacher-forced
score pass (``verify.verify_batch``, across tokenizers where needed). From that come the
acceptance labels of DESIGN §3 — ``token`` (the final stage accepts all of y_k) and ``answer``
(y_k's task-normalised answer equals the final stage's) — the soft target (accepted fraction),
the feature inputs of DESIGN §4 and the measured latencies that the evaluation replays (§10).
A multiple-choice task scored by ``datagen_mc_scoring: loglik`` has no written reply: y_k is
the option stage k picks in one pass (``asd_core.decoding.choice``), and a deeper stage's verification
is its own pass (accepted when it picks the same option).

Layout (one folder per profile; relative folders are the caller's business)::

    <data_dir>/generations/<profile>/manifest.json        written first: what the rows depend on
    <data_dir>/generations/<profile>/shard-00000.parquet  ``shard_size`` items × K stages each

Items come in one fixed order (a seeded shuffle of every task and split, so any prefix of the
shards is a fair mix) and are cut into shards. A shard is generated as a unit — batches never
cross shards, so numerics, which depend on batch composition, are the same whether or not the
run was interrupted — and written atomically (temp file + rename). A restarted run checks that
the manifest matches its own parameters (a different profile or content parameter is an error
naming the key, and nothing is overwritten), skips complete shards and carries on: no lost and
no duplicated rows. A lock file stops two runs from writing the same folder at once.

The manifest is flat JSON: the content keys of :meth:`DatagenSpec.content` (profile, stages,
tasks, split fractions, counts per task, seed, shard and batch size, top_k, hidden states, the
per-task generation settings ``generation``, task sources) plus, once the models are loaded,
``items_digest``, ``n_items`` and ``tokenizer_keys``; then ``content_digest``, ``n_shards``,
``counts``, ``skipped_too_long``, ``stage_sources``, ``columns`` and ``provenance``.

Items whose prompt does not fit a stage's context (with room for the output and for a draft
re-encoded up to twice as long) are skipped when sampling, deterministically, and counted in the
manifest. A split smaller than the requested count gives all its items.

Row schema: :data:`COLUMNS` (name → Arrow type, comment), one row per (item, stage). The columns
ending in ``_s`` or ``_s_by`` (:data:`TIMING_COLUMNS`) are wall-clock measurements and the only
ones that differ between two runs with the same parameters.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import hashlib
import io
import json
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from asd_core.data import SPLITS, Item, Split, get_task, load_task, pools, split_of
from asd_core.data.scoring import (
    TASK_FAMILIES,
    TEXT_AGREEMENT,
    MetricsError,
    TaskScore,
    answer_key,
    answers_agree,
    fit_agreement_threshold,
    mmlu_choices,
    score_item,
    text_similarity,
)
from asd_core.data.splits import DEFAULT_FRACTIONS, check_fractions, task_seed
from asd_core.decoding.choice import choice_verdict, respond
from asd_core.decoding.verify import Verdict, draft_from_generation, tokenizer_key, verify_batch
from asd_core.ground import config
from asd_core.ground.config import StageConfig
from asd_core.ground.errors import AsdError, cli_entry
from asd_core.ground.files import atomic_write_bytes, atomic_write_text
from asd_core.ground.provenance import provenance
from asd_core.models.base import Backend, Generation, GenerationParams
from asd_core.models.common import chat_prompt_ids

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from asd_core.data.sandbox import SandboxLimits

Clock = Callable[[], float]

SCHEMA_VERSION = "1"  # bump when a column is added, removed or changes meaning
MANIFEST = "manifest.json"
SHARD_GLOB = "shard-*.parquet"
DRAFT_HEADROOM = 2  # a prompt fits when prompt + DRAFT_HEADROOM × max_new_tokens ≤ context
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
        "task-normalised answer key of y_k (eval.metrics.answer_key); '' = none (cut or unreadable)",
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


# -- what to generate -----------------------------------------------------------------------------
@dataclass(frozen=True)
class DatagenSpec:
    """Everything that decides the rows of a generations dataset (and nothing that does not)."""

    profile: str  # params profile; names the output folder
    stages: tuple[StageConfig, ...]  # the hierarchy, cheapest first
    tasks: tuple[str, ...]  # tasks to draw items from (params key ``tasks``)
    train_per_task: int  # items of each task from the predictor-train split (at most)
    calibration_per_task: int  # items of each task from the calibration split (at most)
    test_per_task: int  # items of each task from the test split (at most)
    seed: int = 0  # draws the item sample and the item order
    shard_size: int = 8  # items per Parquet shard: a kill loses at most one shard's work
    batch_size: int = 1  # prompts per generate/score call (within a shard and task)
    solo_every: int = 0  # > 0: every n-th shard (0, n, 2n, …) runs one sequence at a time and
    # without prompt reuse, so its times check the cost model of one sequence alone
    top_k: int = 2  # alternatives kept per generated token (features need top-1 and top-2)
    return_hidden: bool = False  # also store each output's mean final-layer hidden state
    max_new_tokens: Mapping[str, int] = field(default_factory=dict)  # task -> token budget;
    # every task needs one (measured: asd_core.runs.budgets)
    stop_strings: Mapping[str, Sequence[str]] = field(default_factory=dict)  # task -> stop
    # strings instead of the task's own
    mc_scoring: str = "loglik"  # multiple choice: "loglik" (one pass, asd_core.decoding.choice) or
    # "generate" (a written reply, letter extracted)
    task_sources: Mapping[str, str] = field(default_factory=dict)  # task -> file or hub id
    # instead of the packaged data
    split_fractions: tuple[float, float, float] = DEFAULT_FRACTIONS  # train/calibration/test
    # shares of the stable item-id hash (params key ``split_fractions``)
    pool_per_task: Mapping[str, int] = field(default_factory=dict)  # task -> unlabelled
    # training prompts drawn from its family's pools (asd_core.data.pools); split "train",
    # ids "pool-…", never evaluated
    pools: tuple[str, ...] | None = None  # draw from these pools only (None: the packaged ones)
    pool_sources: Mapping[str, str] = field(default_factory=dict)  # pool -> file or hub id
    verify_early_exit: bool = True  # a verifier may stop scoring after the block holding the
    # first rejected token; False scores whole drafts (the old path, for the benchmark)

    def __post_init__(self) -> None:
        object.__setattr__(self, "stages", tuple(self.stages))
        object.__setattr__(self, "tasks", tuple(self.tasks))
        object.__setattr__(self, "task_sources", dict(self.task_sources))
        object.__setattr__(self, "max_new_tokens", dict(self.max_new_tokens))
        stops = {t: tuple(v) for t, v in self.stop_strings.items()}
        object.__setattr__(self, "stop_strings", stops)
        object.__setattr__(self, "split_fractions", check_fractions(self.split_fractions))
        object.__setattr__(self, "pool_per_task", dict(self.pool_per_task))
        object.__setattr__(self, "pool_sources", dict(self.pool_sources))
        if self.pools is not None:
            object.__setattr__(self, "pools", tuple(self.pools))
        if not self.profile:
            raise DatagenError("datagen: 'profile' is empty")
        if not self.stages:
            raise DatagenError("datagen: 'stages' is empty")
        for task in self.tasks:
            get_task(task)  # unknown task: one line naming it
        if len(set(self.tasks)) != len(self.tasks):
            raise DatagenError(f"tasks: a task is listed twice in {list(self.tasks)}")
        minimum = {
            "train_per_task": 0,
            "calibration_per_task": 0,
            "test_per_task": 0,
            "seed": 0,
            "shard_size": 1,
            "batch_size": 1,
            "solo_every": 0,
            "top_k": 2,
        }
        for key, low in minimum.items():
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise DatagenError(f"datagen_{key}: must be an integer ≥ {low}, got {value!r}")
        for task in self.tasks:
            budget = self.max_new_tokens.get(task)
            if budget is None:
                raise DatagenError(
                    f"datagen_max_new_tokens: no token budget for task '{task}' "
                    "(measure one: python -m asd_core.runs.budgets)"
                )
            if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
                raise DatagenError(
                    f"datagen_max_new_tokens.{task}: must be an integer ≥ 1, got {budget!r}"
                )
        if self.mc_scoring not in ("loglik", "generate"):
            raise DatagenError(
                f"datagen_mc_scoring: must be 'loglik' or 'generate', got {self.mc_scoring!r}"
            )
        unknown = sorted(set(self.task_sources) - set(self.tasks))
        if unknown:
            raise DatagenError(f"datagen_task_sources: '{unknown[0]}' is not in tasks")
        for task, n in self.pool_per_task.items():
            if task not in self.tasks:
                raise DatagenError(f"datagen_pool_per_task: '{task}' is not in tasks")
            if isinstance(n, bool) or not isinstance(n, int) or n < 0:
                raise DatagenError(
                    f"datagen_pool_per_task.{task}: must be an integer ≥ 0, got {n!r}"
                )

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> DatagenSpec:
        """The spec of flat notebook (or YAML) parameters.

        Reads ``profile``, ``seed``, ``stages``, ``tasks`` and ``split_fractions`` (shared with
        the other notebooks) and every ``datagen_<field>`` key; other keys are ignored.
        """
        stages = list(params["stages"])
        if stages and not isinstance(stages[0], StageConfig):
            stages = config.validate_subset(stages=stages)["stages"]
        prefix = "datagen_"
        own = {k.removeprefix(prefix): v for k, v in params.items() if k.startswith(prefix)}
        unknown = sorted(set(own) - set(DATAGEN_KEYS))
        if unknown:
            raise DatagenError(f"notebook parameters: key '{prefix}{unknown[0]}': unknown key")
        shared = {k: params[k] for k in ("seed", "tasks", "split_fractions") if k in params}
        if "tasks" not in shared:
            raise DatagenError("notebook parameters: key 'tasks' is missing")
        shared["tasks"] = tuple(shared["tasks"])
        if "split_fractions" in shared:
            shared["split_fractions"] = tuple(shared["split_fractions"])
        return cls(profile=params["profile"], stages=tuple(stages), **shared, **own)

    @property
    def per_split(self) -> dict[Split, int]:
        return {
            "train": self.train_per_task,
            "calibration": self.calibration_per_task,
            "test": self.test_per_task,
        }

    def generation_params(self, task: str) -> GenerationParams:
        """Greedy settings for ``task``: its budget, stop strings and (loglik) options."""
        spec = get_task(task)
        return GenerationParams(
            max_new_tokens=self.max_new_tokens[task],
            stop_strings=tuple(self.stop_strings.get(task, spec.stop_strings)),
            top_k=self.top_k,
            return_hidden=self.return_hidden,
            options=spec.options if self.mc_scoring == "loglik" else (),
        )

    def content(self) -> dict[str, Any]:
        """What the rows depend on, as JSON: compared with a folder's manifest key by key."""
        return {
            "schema_version": SCHEMA_VERSION,
            "profile": self.profile,
            # threads change speed only; everything else can change what a stage writes
            "stages": [s.model_dump(mode="json", exclude={"threads"}) for s in self.stages],
            "tasks": list(self.tasks),
            "split_fractions": list(self.split_fractions),
            "per_task": dict(self.per_split),
            "seed": self.seed,
            "shard_size": self.shard_size,
            "batch_size": self.batch_size,
            "solo_every": self.solo_every,
            "top_k": self.top_k,
            "return_hidden": self.return_hidden,
            "generation": {
                t: {
                    "max_new_tokens": self.generation_params(t).max_new_tokens,
                    "stop_strings": list(self.generation_params(t).stop_strings),
                    "options": list(self.generation_params(t).options),
                }
                for t in self.tasks
            },
            "task_sources": {t: self.task_sources.get(t, "package") for t in self.tasks},
            "pool_per_task": {t: n for t, n in self.pool_per_task.items() if n},
            "pools": None if self.pools is None else list(self.pools),
            "pool_sources": dict(self.pool_sources),
            "verify_early_exit": self.verify_early_exit,
        }


DATAGEN_KEYS = (  # DatagenSpec fields set by ``datagen_<field>`` params keys
    "train_per_task",
    "calibration_per_task",
    "test_per_task",
    "shard_size",
    "batch_size",
    "solo_every",
    "top_k",
    "return_hidden",
    "max_new_tokens",
    "stop_strings",
    "mc_scoring",
    "task_sources",
    "pool_per_task",
    "pools",
    "pool_sources",
    "verify_early_exit",
)


@dataclass(frozen=True)
class Entry:
    """One selected item and the split it was drawn from."""

    item: Item  # the input and its references (none for a pool prompt)
    split: Split  # train, calibration or test; a pool prompt is always train


@dataclass(frozen=True)
class Selection:
    """The items to generate for, in dataset order, and what sampling left out."""

    entries: tuple[Entry, ...]  # every item, in the fixed order the shards follow
    skipped_too_long: dict[str, int]  # "<task>/<split>" -> items passed over for their length
    counts: dict[str, int]  # "<task>/<split>" (split "pool": unlabelled prompts) -> selected

    def shards(self, shard_size: int) -> list[tuple[Entry, ...]]:
        """Consecutive runs of at most ``shard_size`` entries of one task each.

        One task per shard lets every stage decode the whole shard as one batch (the task
        decides the generation settings).
        """
        out: list[list[Entry]] = []
        for entry in self.entries:
            if not out or len(out[-1]) == shard_size or out[-1][0].item.task != entry.item.task:
                out.append([])
            out[-1].append(entry)
        return [tuple(shard) for shard in out]

    def digest(self) -> str:
        blob = "\n".join(f"{x.item.item_id}\t{x.split}" for x in self.entries).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


@dataclass(frozen=True)
class DatagenResult:
    """What :func:`run` did."""

    folder: Path  # the dataset folder
    n_items: int  # items in the dataset
    n_rows: int  # rows (items × stages)
    n_shards: int  # shards in the dataset
    shards_written: int  # shards generated by this call
    shards_skipped: int  # shards found complete and kept
    skipped_too_long: dict[str, int]  # "<task>/<split>" -> items left out for their length
    seconds: float  # wall-clock s of this call, model loading included


# -- selection ------------------------------------------------------------------------------------
def sample_fitting(
    pool: Sequence[Item], n: int, seed: int, fits: Callable[[Item], bool]
) -> tuple[list[Item], int]:
    """The first ``n`` items of a seeded permutation of ``pool`` that ``fits`` accepts.

    Returned in pool order with the number of items passed over. When every item fits this is
    ``asd_core.data.select`` exactly (same permutation), so a larger ``n`` only adds items.
    """
    chosen: list[int] = []
    passed = 0
    for i in np.random.default_rng(seed).permutation(len(pool)):
        if len(chosen) == n:
            break
        if fits(pool[i]):
            chosen.append(int(i))
        else:
            passed += 1
    return [pool[i] for i in sorted(chosen)], passed


def select_entries(
    spec: DatagenSpec,
    items_by_task: Mapping[str, Sequence[Item]],
    fits: Callable[[Item], bool] = lambda item: True,
    pool_prompts: Mapping[str, Sequence[Item]] | None = None,
) -> Selection:
    """Sample every task × split, and ``spec.pool_per_task`` prompts of each task's supply in
    ``pool_prompts`` (the train split), then shuffle them all into one order (seeded)."""
    pooled: list[Entry] = []
    skipped: dict[str, int] = {}
    counts: dict[str, int] = {}
    for task in spec.tasks:
        n = spec.pool_per_task.get(task, 0)
        if n:
            supply = (pool_prompts or {}).get(task, ())
            chosen, passed = sample_fitting(supply, n, task_seed(spec.seed, f"{task}/pool"), fits)
            if len(chosen) < n:
                raise DatagenError(
                    f"datagen_pool_per_task.{task}: asks for {n} prompts; its pools hold "
                    f"{len(supply)}, of which {len(supply) - passed} fit the context"
                )
            counts[f"{task}/pool"], skipped[f"{task}/pool"] = n, passed
            pooled += [Entry(it, "train") for it in chosen]
        for split in SPLITS:
            n = spec.per_split[split]
            pool = [
                it
                for it in items_by_task.get(task, ())
                if split_of(it.item_id, spec.split_fractions) == split
            ]
            seed = task_seed(spec.seed, f"{task}/{split}")
            chosen, passed = sample_fitting(pool, n, seed, fits) if n else ([], 0)
            counts[f"{task}/{split}"] = len(chosen)
            skipped[f"{task}/{split}"] = passed
            pooled += [Entry(it, split) for it in chosen]
    if not pooled:
        raise DatagenError(
            f"datagen: the selection is empty (tasks {list(spec.tasks)}, per task "
            f"{spec.per_split}); ask for at least one item of a non-empty split"
        )
    return Selection(_shard_order(pooled, spec), skipped, counts)


def _shard_order(pooled: Sequence[Entry], spec: DatagenSpec) -> tuple[Entry, ...]:
    """A seeded shuffle of ``pooled`` laid out as one-task blocks of ``spec.shard_size``,
    the tasks taking turns (so a partial run still covers every task)."""
    blocks: dict[str, list[list[Entry]]] = {}
    for i in np.random.default_rng(spec.seed).permutation(len(pooled)):
        task = blocks.setdefault(pooled[i].item.task, [[]])
        if len(task[-1]) == spec.shard_size:
            task.append([])
        task[-1].append(pooled[i])
    rounds = max(len(b) for b in blocks.values())
    laid = [b[r] for r in range(rounds) for b in blocks.values() if r < len(b)]
    return tuple(entry for block in laid for entry in block)


def prompt_fits(backends: Sequence[Backend], spec: DatagenSpec) -> Callable[[Item], bool]:
    """Does an item's prompt leave room for the output (and a re-encoded draft) at every stage?"""

    def fits(item: Item) -> bool:
        budget = spec.generation_params(item.task).max_new_tokens
        return all(
            len(chat_prompt_ids(b.tokenizer, item.question)) + DRAFT_HEADROOM * budget
            <= b.stage.context_length
            for b in backends
        )

    return fits


# -- one shard ------------------------------------------------------------------------------------
def _chunks(idx: Sequence[int], size: int) -> Iterator[list[int]]:
    for i in range(0, len(idx), size):
        yield list(idx[i : i + size])


def _generate_stage(
    backend: Backend, prompts: Sequence[list[int]], entries: Sequence[Entry], spec: DatagenSpec
) -> tuple[list[Generation], list[int]]:
    """Stage outputs for a shard: batches per task (settings differ), in shard order."""
    gens: list[Generation | None] = [None] * len(entries)
    batch_of = [0] * len(entries)
    for task in dict.fromkeys(e.item.task for e in entries):
        idx = [i for i, e in enumerate(entries) if e.item.task == task]
        for chunk in _chunks(idx, spec.batch_size):
            out = respond(backend, [prompts[i] for i in chunk], spec.generation_params(task))
            for i, g in zip(chunk, out, strict=True):
                gens[i], batch_of[i] = g, len(chunk)
    return [g for g in gens if g is not None], batch_of


def _quality(entry: Entry, text: str, limits: SandboxLimits | None, truncated: bool) -> TaskScore:
    """Score ``text`` against the gold reference; without one, just its answer key."""
    item = entry.item
    try:
        return score_item(item, text, limits, truncated)
    except MetricsError:
        if item.answer or item.references:  # a gold exists, so this is a real error
            raise
    key = answer_key(
        item.task,
        text,
        code_prompt=item.code_prompt,
        test=item.test,
        entry_point=item.entry_point,
        choices=mmlu_choices(item.question) if item.task == "mmlu" else None,
        sandbox_limits=limits,
        truncated=truncated,
    )
    return TaskScore(item.task, math.nan, key)


def _agrees(key: str, final_key: str, similarity: float | None) -> bool:
    """The answer label before any refit: the same key, or (free text) close enough text."""
    if similarity is None:
        return answers_agree(key, final_key)
    return similarity >= TEXT_AGREEMENT and key != ""  # refit on load: refit_text_agreement


def _fraction(accepted: int, drafted: int, empty: float) -> float:
    return accepted / drafted if drafted else empty


def shard_rows(
    backends: Sequence[Backend],
    keys: Sequence[str],
    entries: Sequence[Entry],
    spec: DatagenSpec,
    sandbox_limits: SandboxLimits | None = None,
) -> list[dict[str, Any]]:
    """All rows of one shard: K per entry, entry by entry, stage by stage.

    Every stage generates for the whole shard first; then each deeper stage j verifies each
    shallower stage's outputs in batches of ``spec.batch_size`` (one score pass per draft).
    """
    K = len(backends)
    n = len(entries)
    prompts = [[chat_prompt_ids(b.tokenizer, e.item.question) for e in entries] for b in backends]
    gens, batch_of = zip(
        *(_generate_stage(b, prompts[k], entries, spec) for k, b in enumerate(backends)),
        strict=True,
    )
    # verdicts[k][j][i]: stage j's verification of stage k's output for entry i
    verdicts: list[dict[int, list[Verdict]]] = [{} for _ in range(K)]
    chosen = [bool(spec.generation_params(e.item.task).options) for e in entries]
    for j in range(1, K):
        for k in range(j):
            drafts = [draft_from_generation(k, g, keys[k]) for g in gens[k]]
            out: list[Verdict | None] = [None] * n
            for i in range(n):  # a choice is verified by the verifier's own choice pass
                if chosen[i]:
                    out[i] = choice_verdict(gens[k][i], gens[j][i], keys[k] != keys[j])
            todo = [i for i in range(n) if not chosen[i]]
            for chunk in _chunks(todo, spec.batch_size):
                found = verify_batch(
                    backends[j],
                    [prompts[j][i] for i in chunk],
                    [drafts[i] for i in chunk],
                    keys[k] == keys[j],
                    spec.verify_early_exit,
                )
                for i, v in zip(chunk, found, strict=True):
                    out[i] = v
            verdicts[k][j] = [v for v in out if v is not None]
    rows: list[dict[str, Any]] = []
    for i, entry in enumerate(entries):
        scores = [
            _quality(entry, gens[k][i].text, sandbox_limits, gens[k][i].stop_reason == "length")
            for k in range(K)
        ]
        free_text = TASK_FAMILIES.get(entry.item.task) == "text"
        similarity = [
            text_similarity(gens[k][i].text, gens[K - 1][i].text) if free_text else None
            for k in range(K)
        ]
        for k in range(K):
            g: Generation = gens[k][i]
            by = verdicts[k]
            drafted = [by[j][i].n_draft if j in by else -1 for j in range(K)]
            accepted = [by[j][i].n_accepted if j in by else -1 for j in range(K)]
            final = K - 1
            if k == final:
                label_token, frac_final = 1, 1.0
            else:
                label_token = int(by[final][i].all_accepted)
                # an empty draft is accepted vacuously, as label_token says
                frac_final = _fraction(accepted[final], drafted[final], 1.0)
            prev = verdicts[k - 1][k][i] if k else None
            top = np.asarray(g.top_logprobs, dtype=np.float32)  # (n_out, top_k), top_k ≥ 2
            rows.append(
                {
                    "item_id": entry.item.item_id,
                    "task": entry.item.task,
                    "split": entry.split,
                    "stage": k,
                    "n_stages": K,
                    "stage_name": backends[k].stage.name,
                    "prompt_ids": prompts[k][i],
                    "token_ids": list(g.token_ids),
                    "text": g.text,
                    "logprobs": np.asarray(g.logprobs, dtype=np.float32),
                    "entropy": np.asarray(g.entropy, dtype=np.float32),
                    "top1_logprob": top[:, 0],
                    "top2_logprob": top[:, 1],
                    "stop_reason": g.stop_reason,
                    "hidden_mean": None
                    if g.hidden_mean is None
                    else np.asarray(g.hidden_mean, dtype=np.float32),
                    "n_in": len(prompts[k][i]),
                    "n_out": g.n_out,
                    "gen_batch": batch_of[k][i],
                    "latency_s": float(g.total_s),
                    "prefill_s": float(g.prefill_s),
                    # NaN for an empty draft, as the online pipeline reports it
                    "accepted_frac_prev": math.nan
                    if prev is None
                    else _fraction(prev.n_accepted, prev.n_draft, math.nan),
                    "label_token": label_token,
                    "label_answer": int(
                        k == final
                        or _agrees(scores[k].extracted, scores[final].extracted, similarity[k])
                    ),
                    "accepted_frac_final": frac_final,
                    "answer": scores[k].extracted,
                    "correct": float(scores[k].correct),
                    "rouge_l": math.nan if scores[k].rouge_l is None else scores[k].rouge_l,
                    "bleu": math.nan if scores[k].bleu is None else scores[k].bleu,
                    "similarity_final": math.nan if similarity[k] is None else similarity[k],
                    "drafted_by": drafted,
                    "accepted_by": accepted,
                    "verify_s_by": [by[j][i].seconds if j in by else math.nan for j in range(K)],
                }
            )
    return rows


def _shard(
    backends: Sequence[Backend],
    keys: Sequence[str],
    entries: Sequence[Entry],
    spec: DatagenSpec,
    index: int,
    sandbox_limits: SandboxLimits | None,
) -> list[dict[str, Any]]:
    """Shard ``index``'s rows: batched, or one sequence at a time on the solo shards."""
    if not (spec.solo_every and index % spec.solo_every == 0):
        return shard_rows(backends, keys, entries, spec, sandbox_limits)
    with prompt_reuse(backends, False):
        solo = dataclasses.replace(spec, batch_size=1)
        return shard_rows(backends, keys, entries, solo, sandbox_limits)


@contextlib.contextmanager
def prompt_reuse(backends: Sequence[Backend], enabled: bool) -> Iterator[None]:
    """Run the block with every stage's ``reuse_prompts`` set to ``enabled``, then restore it."""
    stages = [b.stage for b in backends]
    try:
        for b in backends:
            b.stage = b.stage.model_copy(update={"reuse_prompts": enabled})
        yield
    finally:
        for b, stage in zip(backends, stages, strict=True):
            b.stage = stage


def rows_to_parquet(rows: Sequence[Mapping[str, Any]]) -> bytes:
    """The Parquet file (bytes) of ``rows`` under :data:`SCHEMA`."""
    table = pa.Table.from_pylist(list(rows), schema=SCHEMA)
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


# -- the folder -----------------------------------------------------------------------------------
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
def _folder_lock(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on the folder; the kernel drops it when the process dies."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "a") as fh:  # "a": never touch an existing file
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DatagenError(f"{folder}: another data-generation run is writing it") from None
        yield


def _complete_shard(path: Path, entries: Sequence[Entry], n_stages: int) -> bool:
    """Is ``path`` a finished shard holding exactly these entries? Missing: False; wrong: error."""
    if not path.is_file():
        return False
    try:
        ids = pq.read_table(path, columns=["item_id"]).column("item_id").to_pylist()
    except (OSError, pa.ArrowException) as exc:
        raise DatagenError(f"{path}: unreadable shard ({type(exc).__name__}); remove it") from None
    expected = [e.item.item_id for e in entries for _ in range(n_stages)]
    if ids != expected:
        raise DatagenError(f"{path}: holds other items than the manifest's order; remove it")
    return True


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
        with _folder_lock(folder):
            if check_manifest(folder, content) is None:
                manifest = {  # flat: eval.online reads tasks, generation, top_k from here
                    **content,
                    "content_digest": hashlib.sha256(
                        json.dumps(content, sort_keys=True).encode()
                    ).hexdigest()[:16],
                    "n_shards": len(shards),
                    "counts": selection.counts,
                    "skipped_too_long": selection.skipped_too_long,
                    "stage_sources": {s.name: s.source for s in spec.stages},
                    "columns": {name: comment for name, (_, comment) in COLUMNS.items()},
                    "provenance": provenance(content, spec.seed, notebook="02_data_generation"),
                }
                atomic_write_text(folder / MANIFEST, json.dumps(manifest, indent=2) + "\n")
            for stale in folder.glob(".*.tmp"):  # a killed run's half-written file
                stale.unlink(missing_ok=True)
            done = [
                _complete_shard(shard_path(folder, s), entries, len(backends))
                for s, entries in enumerate(shards)
            ]
            bar = tqdm(
                total=len(selection.entries),
                initial=sum(len(e) for e, d in zip(shards, done, strict=True) if d),
                desc=f"generations ({spec.profile})",
                unit="item",
                disable=not progress,
                dynamic_ncols=True,
            )
            written = 0
            for s, entries in enumerate(shards):
                if done[s]:
                    continue
                rows = _shard(backends, keys, entries, spec, s, sandbox_limits)
                atomic_write_bytes(shard_path(folder, s), rows_to_parquet(rows))
                written += 1
                bar.update(len(entries))
            bar.close()
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


def _final_stage_value(df: pd.DataFrame, column: str) -> pd.Series:
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
    final_correct = _final_stage_value(df, "correct")
    known = text & df["split"].eq("calibration") & df["correct"].notna() & final_correct.notna()
    same = (df.loc[known, "correct"] == final_correct[known]).to_numpy()
    threshold = fit_agreement_threshold(df.loc[known, "similarity_final"].to_numpy(), same)
    agree = (df["similarity_final"] >= threshold) & df["answer"].ne("")
    df.loc[text, "label_answer"] = agree[text].astype("int8")
    df.attrs["text_agreement"] = {"threshold": threshold, "pairs": int(known.sum())}
    return df


def agreement_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per task × non-final stage: how often the answer label says "agrees", against quality.

    The 2×2 table of agreement (``label_answer``) against "both this stage and the final stage
    are correct", over items with a gold answer: a label that means agreement should rarely
    agree when one of the two answers is wrong.
    """
    rows = df[df["stage"] < df["n_stages"] - 1].assign(
        final_correct=_final_stage_value(df, "correct")
    )
    rows = rows[rows["correct"].notna() & rows["final_correct"].notna()]
    both = (rows["correct"] == 1) & (rows["final_correct"] == 1)
    agree = rows["label_answer"] == 1
    cells = rows.assign(
        agree_both_correct=agree & both,
        agree_not_both=agree & ~both,
        differ_both_correct=~agree & both,
        differ_not_both=~agree & ~both,
        agree=agree,
        unextracted=rows["answer"].eq(""),
    )
    return (
        cells.groupby(["task", "stage", "stage_name"], sort=True)
        .agg(
            n=("item_id", "size"),
            agreement_rate=("agree", "mean"),
            unextracted_rate=("unextracted", "mean"),
            agree_both_correct=("agree_both_correct", "sum"),
            agree_not_both=("agree_not_both", "sum"),
            differ_both_correct=("differ_both_correct", "sum"),
            differ_not_both=("differ_not_both", "sum"),
        )
        .reset_index()
    )


# -- summaries for notebook 02 --------------------------------------------------------------------
def summary_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per task × stage: items, mean output length, latency, acceptance and task quality."""
    out = (
        df.groupby(["task", "stage", "stage_name"], sort=True)
        .agg(
            n=("item_id", "size"),
            mean_n_in=("n_in", "mean"),
            mean_n_out=("n_out", "mean"),
            mean_latency_s=("latency_s", "mean"),
            p90_latency_s=("latency_s", lambda s: s.quantile(0.9)),
            token_accept_rate=("label_token", "mean"),
            answer_accept_rate=("label_answer", "mean"),
            accepted_frac_final=("accepted_frac_final", "mean"),
            accepted_frac_prev=("accepted_frac_prev", "mean"),
            correct=("correct", "mean"),
            stopped_by_length=("stop_reason", lambda s: (s == "length").mean()),
        )
        .reset_index()
    )
    return out


def hop_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per task and hop k → j: drafted/accepted tokens, whole-draft acceptance, verify time."""
    records = []
    for row in df[
        ["task", "stage", "n_stages", "drafted_by", "accepted_by", "verify_s_by"]
    ].itertuples():
        for j in range(row.stage + 1, row.n_stages):
            records.append(
                {
                    "task": row.task,
                    "from_stage": row.stage,
                    "to_stage": j,
                    "drafted": int(row.drafted_by[j]),
                    "accepted": int(row.accepted_by[j]),
                    "verify_s": float(row.verify_s_by[j]),
                }
            )
    hops = pd.DataFrame.from_records(
        records, columns=["task", "from_stage", "to_stage", "drafted", "accepted", "verify_s"]
    )
    hops["whole"] = hops["accepted"] == hops["drafted"]
    grouped = hops.groupby(["task", "from_stage", "to_stage"], sort=True)
    out = grouped.agg(
        n=("drafted", "size"),
        mean_drafted=("drafted", "mean"),
        mean_accepted=("accepted", "mean"),
        whole_draft_rate=("whole", "mean"),
        mean_verify_s=("verify_s", "mean"),
    ).reset_index()
    totals = grouped[["accepted", "drafted"]].sum().reset_index()
    out["token_accept_rate"] = totals["accepted"] / totals["drafted"].where(totals["drafted"] > 0)
    return out


def plot_acceptance(summary: pd.DataFrame) -> Figure:
    """Bars per task and stage: answer-mode and token-mode acceptance and accepted fraction."""
    import matplotlib.pyplot as plt

    metrics = [
        ("answer_accept_rate", "label (answer mode)"),
        ("token_accept_rate", "label (token mode)"),
        ("accepted_frac_final", "accepted fraction"),
    ]
    tasks = sorted(summary["task"].unique())
    stages = sorted(summary["stage"].unique())
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.6 * len(metrics), 3.8), squeeze=False)
    width = 0.8 / len(stages)
    x = np.arange(len(tasks))
    for ax, (column, title) in zip(axes[0], metrics, strict=True):
        for i, k in enumerate(stages):
            part = summary[summary["stage"] == k].set_index("task").reindex(tasks)
            name = part["stage_name"].dropna().iloc[0] if part["stage_name"].notna().any() else k
            ax.bar(
                x + (i - (len(stages) - 1) / 2) * width, part[column], width, label=f"{k}: {name}"
            )
        ax.set_xticks(x, tasks, rotation=20)
        ax.set(ylim=(0, 1.05), title=title, ylabel="rate vs the final stage")
    axes[0, 0].legend(fontsize=7, title="stage")
    fig.tight_layout()
    return fig


def plot_latency(df: pd.DataFrame) -> Figure:
    """Distribution of generation latency per stage (log scale), one box per task."""
    import matplotlib.pyplot as plt

    stages = sorted(df["stage"].unique())
    tasks = sorted(df["task"].unique())
    fig, axes = plt.subplots(1, len(stages), figsize=(4.2 * len(stages), 3.6), squeeze=False)
    for ax, k in zip(axes[0], stages, strict=True):
        part = df[df["stage"] == k]
        data = [part.loc[part["task"] == t, "latency_s"].to_numpy() for t in tasks]
        ax.boxplot(data, tick_labels=tasks)
        ax.set_yscale("log")
        ax.tick_params(axis="x", rotation=20)
        ax.set(title=f"stage {k}: {part['stage_name'].iloc[0]}", ylabel="generation latency (s)")
    fig.tight_layout()
    return fig


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
