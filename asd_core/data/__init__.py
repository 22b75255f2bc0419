"""Evaluation datasets: packaged files, loaders, prompt formats and stable splits (docs/design.md §10)."""

from asd_core.data.loaders import load_task
from asd_core.data.splits import SPLITS, Split, mix, select, split_counts, split_of
from asd_core.data.tasks import TASKS, Item, TaskSpec, get_task

__all__ = [
    "SPLITS",
    "TASKS",
    "Item",
    "Split",
    "TaskSpec",
    "get_task",
    "load_task",
    "mix",
    "select",
    "split_counts",
    "split_of",
]
