"""Data generation the old way and the new way on the same items, side by side in one run.

``python -m benchmarks.datagen --profile cpu --n 16`` loads the profile's stages once and
measures two things; run it alone (two jobs on two cores time each other):

1. **Decode throughput**: each stage writes 64 tokens (EOS ignored) for 1, 4, 8 and 16 real
   prompts at once; tokens per second of wall time (prompt processing included), and of
   decoding alone (the wall time of the same batch writing one token taken off), each with
   its ratio to one prompt.
2. **Items per hour of data generation** (``shards.shard_rows``, all stages and every
   verification pass) on ``n`` items per task from outside the test split:
   - *old*: one sequence at a time, every verification pass prefills the prompt again and
     scores the whole draft (data generation before batching);
   - *new*: the shard decoded as one batch (``--batch`` prompts), a verifying stage reuses
     the keys/values of the prompt it already wrote its own answer for, and stops scoring
     a draft after the block holding its first mismatch (``verify_early_exit``).
   Shards alternate between the two paths, so drift of the machine hits both alike.
   The outputs are compared row by row: equal, or diverging at a floating-point near-tie
   (the smaller top-1/top-2 log-prob gap of the two runs at the first differing token is
   below :data:`NEAR_TIE` nats), or diverging elsewhere (a bug).

Writes ``reports/tables/02_decode_throughput.csv`` and ``reports/tables/02_datagen_speed.csv``
with provenance sidecars, and prints both with the machine's CPU model.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, Final

import pandas as pd
from tqdm import tqdm

from asd_core.data.splits import split_of
from asd_core.decoding.verify import tokenizer_key
from asd_core.ground import config
from asd_core.ground.errors import cli_entry
from asd_core.ground.files import repo_path
from asd_core.ground.provenance import cpu_model, provenance, write_table
from asd_core.models.base import Backend, GenerationParams
from asd_core.models.common import chat_prompt_ids
from asd_core.runs.budgets import sample_items
from asd_core.runs.selection import DatagenSpec, Entry
from asd_core.runs.shards import prompt_reuse, shard_rows

BATCHES: Final = (1, 4, 8, 16)
N_NEW: Final = 64  # tokens written per prompt in the throughput runs
NEAR_TIE: Final = 0.25  # nats; the self-acceptance bound of tests/test_llamacpp.py


def decode_throughput(
    backends: Sequence[Backend], questions: Sequence[str], batches: Sequence[int] = BATCHES
) -> pd.DataFrame:
    """One row per stage × batch size: generated tokens per second of wall time.

    Every run writes exactly ``N_NEW`` tokens per prompt (EOS ignored), from the first
    ``batch`` of ``questions``. ``decode_tok_per_s`` leaves prompt processing out: the same
    batch writing one token is timed too, and tokens after the first are divided by the
    difference of the two wall times.
    """
    rows = []
    params = GenerationParams(max_new_tokens=N_NEW, ignore_eos=True)
    first = GenerationParams(max_new_tokens=1, ignore_eos=True)
    for backend in backends:
        prompts = [chat_prompt_ids(backend.tokenizer, q) for q in questions]
        backend.generate(prompts[:1], GenerationParams(max_new_tokens=4))  # warm-up
        base = base_decode = None
        for batch in batches:
            start = time.perf_counter()
            backend.generate(prompts[:batch], first)
            prefill = time.perf_counter() - start
            start = time.perf_counter()
            gens = backend.generate(prompts[:batch], params)
            wall = time.perf_counter() - start
            tokens = sum(g.n_out for g in gens)
            rate, decode = tokens / wall, (tokens - batch) / max(wall - prefill, 1e-9)
            base, base_decode = base or rate, base_decode or decode
            rows.append(
                {
                    "stage": backend.stage.name,
                    "batch": batch,
                    "prompt_tokens": sum(len(p) for p in prompts[:batch]),
                    "tokens": tokens,
                    "wall_s": wall,
                    "prefill_s": prefill,
                    "tok_per_s": rate,
                    "vs_batch_1": rate / base,
                    "decode_tok_per_s": decode,
                    "decode_vs_batch_1": decode / base_decode,
                }
            )
    return pd.DataFrame(rows)


def _first_divergence(a: Any, b: Any) -> tuple[int, float] | None:
    """(position, smaller top-1/top-2 gap there) of two rows' outputs, None if equal."""
    x, y = list(a["token_ids"]), list(b["token_ids"])
    if x == y:
        return None
    n = min(len(x), len(y))
    j = next((i for i in range(n) if x[i] != y[i]), n)  # n: one run stopped, the other went on
    gaps = [
        float(r["top1_logprob"][j] - r["top2_logprob"][j])
        for r in (a, b)
        if len(r["top1_logprob"]) > j
    ]
    return j, min(gaps) if gaps else float("nan")


def compare_rows(old: Sequence[dict[str, Any]], new: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """How the new path's rows differ from the old path's, output by output."""
    by_key = {(r["item_id"], r["stage"]): r for r in old}
    equal = near = other = 0
    worst = 0.0
    for r in new:
        found = _first_divergence(by_key[(r["item_id"], r["stage"])], r)
        if found is None:
            equal += 1
        elif found[1] < NEAR_TIE:
            near += 1
            worst = max(worst, found[1])
        else:
            other += 1
    same_verdicts = sum(
        list(by_key[(r["item_id"], r["stage"])]["accepted_by"]) == list(r["accepted_by"])
        for r in new
    )
    return {
        "outputs": len(new),
        "equal": equal,
        "near_ties": near,
        "largest_near_tie_gap": worst,
        "other_differences": other,
        "same_accepted_counts": same_verdicts,
    }


def _fed(backends: Sequence[Backend]) -> int:
    return sum(int(getattr(b, "tokens_fed", 0)) for b in backends)


def datagen_speed(
    backends: Sequence[Backend],
    spec: DatagenSpec,
    shards: Sequence[Sequence[Entry]],
    batch: int,
    progress: bool = True,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Both paths over the same shards, alternating; (per-path table, output comparison)."""
    keys = [tokenizer_key(b.tokenizer) for b in backends]
    paths = {
        "old": (replace(spec, batch_size=1, verify_early_exit=False), False),
        "new": (replace(spec, batch_size=batch, verify_early_exit=True), True),
    }
    rows: dict[str, list[dict[str, Any]]] = {"old": [], "new": []}
    seconds = {"old": 0.0, "new": 0.0}
    fed = {"old": 0, "new": 0}
    for entries in tqdm(shards, desc="shards (old, new)", disable=not progress):
        for name, (path_spec, reuse) in paths.items():
            with prompt_reuse(backends, reuse):
                before, start = _fed(backends), time.perf_counter()
                rows[name] += shard_rows(backends, keys, entries, path_spec)
                seconds[name] += time.perf_counter() - start
                fed[name] += _fed(backends) - before
    n_items = sum(len(s) for s in shards)
    table = pd.DataFrame(
        [
            {
                "path": name,
                "batch": 1 if name == "old" else batch,
                "reuse_prompts": name == "new",
                "early_exit": name == "new",
                "items": n_items,
                "seconds": seconds[name],
                "items_per_hour": 3600 * n_items / seconds[name],
                "tokens_fed": fed[name],
            }
            for name in ("old", "new")
        ]
    )
    table["vs_old"] = table["items_per_hour"] / table["items_per_hour"].iloc[0]
    return table, compare_rows(rows["old"], rows["new"])


@cli_entry
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.datagen", description=__doc__)
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--n", type=int, default=16, help="items per task (train + calibration)")
    parser.add_argument("--batch", type=int, default=8, help="prompts per batch on the new path")
    parser.add_argument("--skip-throughput", action="store_true")
    args = parser.parse_args(argv)
    params = config.load([repo_path("params/base.yaml"), repo_path(f"params/{args.profile}.yaml")])
    from asd_core.models.registry import load_backend

    data_dir = repo_path(params.data_dir)
    spec = DatagenSpec.from_params(params.model_dump())
    wide = max(max(BATCHES), args.batch)
    backends = [
        load_backend(s.model_copy(update={"max_batch": wide}), repo_path(params.models_dir))
        for s in spec.stages
    ]
    tables = repo_path(params.reports_dir) / "tables"
    prov = provenance(params, params.seed, script="benchmarks.datagen", n=args.n)
    try:
        print(f"CPU: {cpu_model()}")
        if not args.skip_throughput:
            questions = [it.question for it in sample_items("humaneval", data_dir, 16, params.seed)]
            tp = decode_throughput(backends, questions)
            write_table(tp, tables / "02_decode_throughput.csv", prov)
            print(tp.to_string(index=False, float_format=lambda x: f"{x:.2f}"))
        shards = []
        for task in spec.tasks:
            items = sample_items(task, data_dir, args.n, params.seed)
            entries = [Entry(it, split_of(it.item_id, spec.split_fractions)) for it in items]
            shards += [entries[i : i + args.batch] for i in range(0, len(entries), args.batch)]
        speed, same = datagen_speed(backends, spec, shards, args.batch)
    finally:
        for b in backends:
            b.close()
    write_table(speed, tables / "02_datagen_speed.csv", {**prov, "comparison": same})
    print(speed.to_string(index=False, float_format=lambda x: f"{x:.2f}"))
    print("outputs, new vs old:", ", ".join(f"{k} {v}" for k, v in same.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
