"""Per-task token budgets chosen from measured output lengths, not guessed.

Every stage of a profile answers ``n`` items per task (drawn from the train and calibration
splits, never test) greedily with a generous cap and each task's stop strings; the output
length and stop reason of every reply are kept. A budget that cuts a stage's answers makes
them unscoreable (a cut reply has no final answer), so the table reports, per stage and task,
the length percentiles and the share that reached the cap, and proposes a budget per task:

    budget = max(2 × p99_own of the deepest stage, 1.2 × p99_own of every stage that ended on
    its own on ≥ 95% of the items), rounded up to a multiple of 16

where ``p99_own`` is the 99th percentile over the replies that ended on their own (EOS or a
stop string). A reply that reached the generous cap is a loop, not a long answer: its length
says nothing but "the cap", and with 50 items one such reply would be the p99. So the deepest
stage has room to spare, the few runaway replies of a sound stage are cut (and counted), and
a stage that rambles to any cap on more than 5% of the items does not decide the budget; its
truncation rate is reported with that reason.

    python -m asd_core.runs.budgets --profile cpu --n 50 --cap 1024

Replies go to ``artifacts/budgets/<profile>/<stage>--<task>.jsonl`` (one file per stage and
task, written atomically, so a killed run resumes where it stopped); the table to
``reports/tables/02_output_lengths.csv`` with a provenance sidecar.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from asd_core.data import load_task, split_of
from asd_core.data.tasks import Item, get_task
from asd_core.ground import config
from asd_core.ground.errors import cli_entry
from asd_core.ground.files import atomic_write_text, repo_path
from asd_core.ground.provenance import provenance, write_table
from asd_core.models.base import GenerationParams, Tokenizer
from asd_core.models.common import chat_prompt_ids

ROUND_TO = 16  # budgets are multiples of this many tokens
# the budgets before they were measured, to save what they cut as test fixtures
OLD_BUDGETS = {"mmlu": 16, "humaneval": 256, "asdiv": 128, "truthfulqa": 48, "gsm8k": 192}


def sample_items(task: str, data_dir: Path, n: int, seed: int) -> list:
    """``n`` items of ``task`` from outside the test split, the same for every stage."""
    pool = [it for it in load_task(task, data_dir) if split_of(it.item_id) != "test"]
    order = np.random.default_rng(seed).permutation(len(pool))[: min(n, len(pool))]
    return [pool[i] for i in sorted(order)]


def length_table(records: pd.DataFrame, cap: int) -> pd.DataFrame:
    """Per stage × task: items, output-length percentiles (tokens), share stopped by the cap.

    ``p99_own`` is over the replies that ended on their own (0 when none did).
    """
    own = records["n_out"].where(records["stop_reason"] != "length")  # NaN: reached the cap
    grouped = records.assign(n_own=own).groupby(["stage", "stage_name", "task"], sort=True)
    return (
        grouped.agg(
            n=("n_out", "size"),
            p50=("n_out", lambda s: float(np.percentile(s, 50))),
            p90=("n_out", lambda s: float(np.percentile(s, 90))),
            p99=("n_out", lambda s: float(np.percentile(s, 99))),
            max=("n_out", "max"),
            p99_own=("n_own", lambda s: float(np.nanpercentile(s, 99)) if s.notna().any() else 0.0),
            stopped_by_cap=("stop_reason", lambda s: float((s == "length").mean())),
        )
        .reset_index()
        .assign(cap=cap)
    )


def propose_budgets(table: pd.DataFrame, deepest: int, rambling_share: float = 0.05) -> dict:
    """The budget rule of the module docstring: task -> (budget, stages ignored as rambling)."""
    out = {}
    for task, rows in table.groupby("task"):
        deep = rows[rows["stage"] == deepest]
        wanted = [2 * float(deep["p99_own"].iloc[0])] if len(deep) else []
        rambling = rows[rows["stopped_by_cap"] > rambling_share]
        sound = rows["stopped_by_cap"] <= rambling_share
        wanted += [1.2 * p for p in rows.loc[sound, "p99_own"]]
        budget = int(ROUND_TO * math.ceil(max(wanted, default=ROUND_TO) / ROUND_TO))
        out[str(task)] = (budget, list(rambling["stage_name"]))
    return out


def measure(
    params: config.Params, n: int, cap: int, tasks: Sequence[str], progress: bool = True
) -> pd.DataFrame:
    """Replies of every stage to ``n`` items per task (resumable); one row per reply."""
    from asd_core.models.registry import load_backend

    out_dir = repo_path(params.artifacts_dir) / "budgets" / params.profile
    out_dir.mkdir(parents=True, exist_ok=True)
    data_dir = repo_path(params.data_dir)
    items = {t: sample_items(t, data_dir, n, params.seed) for t in tasks}
    records = []
    # deepest first: its lengths set the budgets, and a stage that rambles takes longest
    for k, stage in reversed(list(enumerate(params.stages))):
        todo = [t for t in tasks if not (out_dir / f"{stage.name}--{t}.jsonl").is_file()]
        backend = load_backend(stage, repo_path(params.models_dir)) if todo else None
        try:
            for task in tasks:
                path = out_dir / f"{stage.name}--{task}.jsonl"
                if backend is not None and not path.is_file():
                    stops = params.datagen_stop_strings.get(task, get_task(task).stop_strings)  # type: ignore[call-overload]
                    gen = GenerationParams(cap, tuple(stops))
                    lines = []
                    bar = tqdm(items[task], desc=f"{stage.name} {task}", disable=not progress)
                    for item in bar:
                        prompt = chat_prompt_ids(backend.tokenizer, item.question)
                        if len(prompt) + cap > stage.context_length:
                            continue  # as data generation does: a prompt that cannot fit
                        (g,) = backend.generate([prompt], gen)
                        lines.append(
                            json.dumps(
                                {
                                    "item_id": item.item_id,
                                    "text": g.text,
                                    "n_out": g.n_out,
                                    "stop_reason": g.stop_reason,
                                }
                            )
                        )
                    atomic_write_text(path, "\n".join(lines) + "\n")
                for line in path.read_text(encoding="utf-8").splitlines():
                    rec = json.loads(line)
                    records.append({"stage": k, "stage_name": stage.name, "task": task, **rec})
        finally:
            if backend is not None:
                backend.close()
    return pd.DataFrame.from_records(records)


FIXTURE_FIELDS = ("answer", "references", "code_prompt", "test", "entry_point", "meta")


def fixture_rows(
    records: pd.DataFrame,
    items: dict[str, Item],
    tokenizers: dict[str, Tokenizer],
    old_budgets: dict[str, int],
    per_cell: int = 12,
    seed: int = 0,
) -> list[dict]:
    """Saved real replies for the tests: ``per_cell`` per stage × task, hard cases first.

    Each cell keeps every reply that reached the measuring cap (up to a third of the cell),
    replies with no extractable answer (malformed; up to a third), and, as truncated cases,
    up to two replies cut at ``old_budgets[task]`` tokens — greedy decoding writes a prefix of
    its longer self, so the first B tokens of a reply (as its tokenizer encodes the text) are
    what a budget of B wrote. The rest are drawn at random. Every row carries what scoring
    needs (the item's gold fields), so the fixture stands alone.

    Long because: choosing the hard cases and writing every field a test reads are one pass.
    """
    from asd_core.data.scoring import score_item

    rng = np.random.default_rng(seed)
    out: list[dict] = []
    for (stage, task), cell in records.groupby(["stage_name", "task"], sort=True):
        cell = cell.reset_index(drop=True)
        capped = [i for i in cell.index if cell.at[i, "stop_reason"] == "length"]
        scores = {  # replies as written; a capped one has no answer by definition
            i: score_item(items[cell.at[i, "item_id"]], cell.at[i, "text"], None)
            for i in cell.index
            if i not in capped
        }
        unread = [i for i, s in scores.items() if not s.extracted]
        chosen = capped[: per_cell // 3] + unread[: per_cell // 3]
        rest = [i for i in rng.permutation(len(cell)) if i not in chosen]
        tok, budget = tokenizers[str(stage)], old_budgets.get(str(task), 0)
        cut = [i for i in rest if budget and cell.at[i, "n_out"] > budget][:2]
        rest = [i for i in rest if i not in cut]
        chosen += [int(i) for i in rest[: max(per_cell - len(chosen) - len(cut), 0)]]
        for i in chosen + cut:
            rec = cell.loc[i]
            text, n_out, reason = str(rec["text"]), int(rec["n_out"]), str(rec["stop_reason"])
            if i in cut:
                ids = tok.encode(text, add_special_tokens=False)[:budget]
                text, n_out, reason = tok.decode(ids, skip_special_tokens=True), budget, "length"
            item = items[str(rec["item_id"])]
            scored = scores.get(i) if i not in cut else None
            scored = scored or score_item(item, text, None, reason == "length")
            refs = {f: getattr(item, f) for f in FIXTURE_FIELDS}
            refs["references"], refs["meta"] = list(item.references), dict(item.meta)
            out.append(
                {
                    "stage_name": str(stage),
                    "task": str(task),
                    "item_id": item.item_id,
                    "question": item.question,
                    "text": text,
                    "n_out": n_out,
                    "stop_reason": reason,
                    "cut_at_budget": budget if i in cut else None,
                    "expected_answer": scored.extracted,  # as scored when saved (reviewed)
                    "expected_correct": scored.correct,
                    **refs,
                }
            )
    return out


@cli_entry
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m asd_core.runs.budgets", description=__doc__)
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--n", type=int, default=50, help="items per task (train + calibration)")
    parser.add_argument("--cap", type=int, default=1024, help="generous token cap while measuring")
    parser.add_argument("--tasks", nargs="*", default=None)
    parser.add_argument(
        "--fixtures",
        default=None,
        help="also write saved replies for the tests to this JSON-lines file",
    )
    args = parser.parse_args(argv)
    params = config.load([repo_path("params/base.yaml"), repo_path(f"params/{args.profile}.yaml")])
    tasks = args.tasks or list(params.tasks)
    records = measure(params, args.n, args.cap, tasks)
    table = length_table(records, args.cap)
    prov = provenance(params, params.seed, script="asd_core.runs.budgets", n=args.n, cap=args.cap)
    write_table(table, repo_path(params.reports_dir) / "tables" / "02_output_lengths.csv", prov)
    print(table.to_string(index=False))
    for task, (budget, rambling) in propose_budgets(table, len(params.stages) - 1).items():
        note = f" (ignored, they reach any cap: {', '.join(rambling)})" if rambling else ""
        print(f"{task}: budget {budget}{note}")
    if args.fixtures:
        from asd_core.models.registry import load_tokenizer

        data_dir = repo_path(params.data_dir)
        items = {it.item_id: it for t in tasks for it in load_task(t, data_dir)}
        models_dir = repo_path(params.models_dir)
        tokenizers = {s.name: load_tokenizer(s, models_dir) for s in params.stages}
        rows = fixture_rows(records, items, tokenizers, OLD_BUDGETS, seed=params.seed)
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        atomic_write_text(Path(args.fixtures), text)
        print(f"{len(rows)} saved replies -> {args.fixtures}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
