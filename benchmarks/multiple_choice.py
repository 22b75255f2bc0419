"""MMLU scored two ways on the same items, side by side: which should be the default?

``python -m benchmarks.multiple_choice --profile cpu --n 50`` lets every stage answer the same ``n``
MMLU items (train and calibration splits, never test) both ways, one item after the other:

- ``generate``: a written reply under the task's budget, its letter extracted
  (``eval.metrics.extract_choice``); a reply cut by the budget or with no letter scores 0;
- ``loglik``: one pass over the prompt, the most probable option letter (``asd_core.decoding.choice``).

It prints, per stage and mode, accuracy with its 95% Wilson interval, the share of replies
with no readable letter, seconds per item (median and mean) and how often the two modes pick
the same letter, and writes ``reports/tables/02_mc_scoring.csv`` with a provenance sidecar.
Run it alone: two jobs on two cores time each other.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Sequence
from typing import Final

import pandas as pd
from tqdm import tqdm

from asd_core.data.scoring import score_item
from asd_core.decoding.choice import choose
from asd_core.ground import config
from asd_core.ground.errors import cli_entry
from asd_core.ground.files import repo_path
from asd_core.ground.provenance import provenance, write_table
from asd_core.ground.stats import wilson
from asd_core.models.base import Backend, GenerationParams
from asd_core.models.common import chat_prompt_ids
from asd_core.runs.budgets import sample_items

TASK: Final = "mmlu"


def answer_both_ways(
    backend: Backend, items: Sequence, budget: int, progress: bool = True
) -> pd.DataFrame:
    """One row per item: each mode's letter, correctness and seconds."""
    rows = []
    options = ("A", "B", "C", "D")
    for item in tqdm(items, desc=backend.stage.name, disable=not progress):
        prompt = chat_prompt_ids(backend.tokenizer, item.question)
        (written,) = backend.generate([prompt], GenerationParams(budget))
        (picked,) = choose(backend, [prompt], options)
        gen = score_item(item, written.text, None, written.stop_reason == "length")
        pick = score_item(item, picked.text)
        rows.append(
            {
                "item_id": item.item_id,
                "generate_letter": gen.extracted,
                "generate_correct": gen.correct,
                "generate_s": written.total_s,
                "generate_n_out": written.n_out,
                "loglik_letter": pick.extracted,
                "loglik_correct": pick.correct,
                "loglik_s": picked.total_s,
            }
        )
    return pd.DataFrame(rows)


def summarise(per_item: pd.DataFrame, stage: str) -> list[dict]:
    """Per mode: accuracy [95% CI], unreadable share, seconds per item, agreement of modes."""
    n = len(per_item)
    same = float((per_item["generate_letter"] == per_item["loglik_letter"]).mean())
    out = []
    for mode in ("generate", "loglik"):
        wins = int(per_item[f"{mode}_correct"].sum())
        low, high = wilson(wins, n)
        seconds = per_item[f"{mode}_s"].tolist()
        out.append(
            {
                "stage_name": stage,
                "mode": mode,
                "n": n,
                "accuracy": wins / n,
                "ci_low": low,
                "ci_high": high,
                "no_letter": float((per_item[f"{mode}_letter"] == "").mean()),
                "median_s": statistics.median(seconds),
                "mean_s": statistics.fmean(seconds),
                "same_letter_both_modes": same,
            }
        )
    return out


@cli_entry
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.multiple_choice", description=__doc__
    )
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--n", type=int, default=50, help="MMLU items (train + calibration)")
    args = parser.parse_args(argv)
    params = config.load([repo_path("params/base.yaml"), repo_path(f"params/{args.profile}.yaml")])
    from asd_core.models.registry import load_backend

    items = sample_items(TASK, repo_path(params.data_dir), args.n, params.seed)
    budget = params.datagen_max_new_tokens[TASK]
    rows = []
    for stage in params.stages:
        backend = load_backend(stage, repo_path(params.models_dir))
        try:
            rows += summarise(answer_both_ways(backend, items, budget), stage.name)
        finally:
            backend.close()
    table = pd.DataFrame(rows)
    prov = provenance(
        params, params.seed, script="benchmarks.multiple_choice", n=args.n, budget=budget
    )
    write_table(table, repo_path(params.reports_dir) / "tables" / "02_mc_scoring.csv", prov)
    print(table.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
