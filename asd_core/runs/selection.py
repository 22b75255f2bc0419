"""What data generation generates: the spec read from the parameters, and the items it selects.

Items come in one fixed order (a seeded shuffle of every task and split, so any prefix of the
shards is a fair mix) and are cut into shards. Items whose prompt does not fit a stage's context
(with room for the output and for a draft re-encoded up to twice as long) are skipped when
sampling, deterministically, and counted in the manifest. A split smaller than the requested
count gives all its items.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from asd_core.data import SPLITS, Item, Split, get_task, split_of
from asd_core.data.splits import check_fractions, task_seed
from asd_core.ground import config
from asd_core.ground.config import StageConfig
from asd_core.models.base import Backend, GenerationParams
from asd_core.models.common import chat_prompt_ids
from asd_core.runs.generations import SCHEMA_VERSION, DatagenError

if TYPE_CHECKING:
    pass


DRAFT_HEADROOM = 2  # a prompt fits when prompt + DRAFT_HEADROOM × max_new_tokens ≤ context


@dataclass(frozen=True)
class DatagenSpec:
    """Everything that decides the rows of a generations dataset (and nothing that does not)."""

    profile: str  # params profile; names the output folder
    stages: tuple[StageConfig, ...]  # the hierarchy, cheapest first
    tasks: tuple[str, ...]  # tasks to draw items from (params key ``tasks``)
    train_per_task: int  # items of each task from the predictor-train split (at most)
    calibration_per_task: int  # items of each task from the calibration split (at most)
    test_per_task: int  # items of each task from the test split (at most)
    # the defaults below are the parameters' (config.Params is the one source of defaults)
    seed: int = 0  # draws the item sample and the item order
    shard_size: int = config.default(
        "datagen_shard_size"
    )  # items per Parquet shard: a kill loses at most one shard's work
    batch_size: int = config.default(
        "datagen_batch_size"
    )  # prompts per generate/score call (within a shard and task)
    solo_every: int = config.default(
        "datagen_solo_every"
    )  # > 0: every n-th shard (0, n, 2n, …) runs one sequence at a time and
    # without prompt reuse, so its times check the cost model of one sequence alone
    top_k: int = config.default(
        "datagen_top_k"
    )  # alternatives kept per generated token (features need top-1 and top-2)
    return_hidden: bool = config.default(
        "datagen_return_hidden"
    )  # also store each output's mean final-layer hidden state
    max_new_tokens: Mapping[str, int] = field(default_factory=dict)  # task -> token budget;
    # every task needs one (measured: asd_core.runs.budgets)
    stop_strings: Mapping[str, Sequence[str]] = field(default_factory=dict)  # task -> stop
    # strings instead of the task's own
    mc_scoring: str = config.default(
        "datagen_mc_scoring"
    )  # multiple choice: "loglik" (one pass, asd_core.decoding.choice) or
    # "generate" (a written reply, letter extracted)
    task_sources: Mapping[str, str] = field(default_factory=dict)  # task -> file or hub id
    # instead of the packaged data
    split_fractions: tuple[float, float, float] = tuple(
        config.default("split_fractions")
    )  # train/calibration/test
    # shares of the stable item-id hash (params key ``split_fractions``)
    pool_per_task: Mapping[str, int] = field(default_factory=dict)  # task -> unlabelled
    # training prompts drawn from its family's pools (asd_core.data.pools); split "train",
    # ids "pool-…", never evaluated
    pools: tuple[str, ...] | None = None  # draw from these pools only (None: the packaged ones)
    pool_sources: Mapping[str, str] = field(default_factory=dict)  # pool -> file or hub id
    verify_early_exit: bool = config.default(
        "datagen_verify_early_exit"
    )  # a verifier may stop scoring after the block holding the
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
    def from_params(cls, params: config.Params | Mapping[str, Any]) -> DatagenSpec:
        """The spec of flat notebook (or YAML) parameters.

        Reads ``profile``, ``seed``, ``stages``, ``tasks`` and ``split_fractions`` (shared with
        the other notebooks) and every ``datagen_<field>`` key; other keys are ignored.
        """
        if isinstance(params, config.Params):
            params = params.present()
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
