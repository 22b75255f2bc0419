"""Pipeline benchmark (issue 3): lossless escalation, its cost, acceptance, baselines, batching.

    python -m benchmarks.pipeline --profile cpu                  # the table in the README
    python -m benchmarks.pipeline --profile cpu --baselines --vllm-python <python with vLLM>

Real test-split prompts from several tasks go through the profile's hierarchy, all in one run:

(a) output at forced depth d (cascade 0→…→d, each hop verify + continue) is identical to M_d
    alone, for batched verification and for ``exact_scoring``; each exception is listed with
    M_d's own top-1/top-2 log-prob margin at the first differing token (a near-tie is small);
(b) time to escalate from d−1 (verify + continue) ÷ M_d from scratch, per hop;
(c) acceptance per hop: accepted tokens ÷ drafted tokens up to the first mismatch, mean
    accepted length, share of drafts accepted whole;
(d) with ``--baselines``: tokens/s of our route to the deepest stage's output (draft with the
    stage below, then escalate) vs transformers assisted generation and vLLM speculative
    decoding on the same pair;
(e) throughput of the batched cascade ÷ the same cascade run one input at a time.

Writes ``reports/tables/pipeline_benchmark.{csv,md}`` and ``pipeline_benchmark_items.csv``
with provenance sidecars.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from asd_core.data import TASKS, load_task, mix
from asd_core.decoding.pipeline import Pipeline, Request, Trace
from asd_core.ground import config, files, provenance
from asd_core.ground.errors import cli_entry
from asd_core.models.base import Backend, GenerationParams
from asd_core.models.registry import load_backend
from asd_core.policy.baselines import FixedDepth
from benchmarks import spec_decode_hf, spec_decode_vllm, spec_results

REPO = Path(__file__).resolve().parents[1]
NEAR_TIE_NATS = 0.5  # margins below this are within the observed batched-vs-single logit noise


def bench_requests(
    data_dir: str | Path,
    tasks: Sequence[str],
    n_per_task: int,
    seed: int,
    max_new_tokens: int,
    budgets: Mapping[str, int],
) -> list[Request]:
    """Test-split prompts, ``n_per_task`` per task: each task's stop strings and its budget
    from ``budgets`` (params ``datagen_max_new_tokens``), capped at ``max_new_tokens``."""
    items = mix({t: load_task(t, data_dir) for t in tasks}, "test", n_per_task, seed)
    return [
        Request(
            it.item_id,
            it.task,
            it.question,
            GenerationParams(
                max_new_tokens=min(budgets[it.task], max_new_tokens),
                stop_strings=TASKS[it.task].stop_strings,
            ),
        )
        for it in items
    ]


def first_difference(a: Sequence[int], b: Sequence[int]) -> int | None:
    """Index of the first position where ``a`` and ``b`` differ (a length difference counts)."""
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def _set_exact(backends: Sequence[Backend], exact: bool) -> None:
    for b in backends:
        b.stage = b.stage.model_copy(update={"exact_scoring": exact})


def hop_rows(mode: str, cascade: Sequence[Trace], alone: dict[int, list[Trace]]) -> pd.DataFrame:
    """One row per (input, hop d−1 → d) of a cascade, compared with M_d alone."""
    by_id = {d: {x.request.item_id: x for x in traces} for d, traces in alone.items()}
    rows = []
    for t in cascade:
        for run in t.runs[1:]:
            ref = by_id[run.stage][t.request.item_id]
            ref_gen = ref.output
            diff = first_difference(run.generation.token_ids, ref_gen.token_ids)
            margin = np.nan
            if diff is not None and diff < ref_gen.n_out and ref_gen.top_logprobs.shape[1] >= 2:
                margin = float(ref_gen.top_logprobs[diff, 0] - ref_gen.top_logprobs[diff, 1])
            rows.append(
                {
                    "mode": mode,
                    "item_id": t.request.item_id,
                    "task": t.request.task,
                    "hop": f"{run.from_stage}→{run.stage}",
                    "identical": diff is None,
                    "first_difference": diff,
                    "margin_at_difference": margin,
                    "n_draft": run.n_draft,
                    "n_accepted": run.n_accepted,
                    "accepted_whole": run.n_draft > 0 and run.n_accepted == run.n_draft,
                    "n_out": run.generation.n_out,
                    "escalate_s": run.latency_s,
                    "verify_s": run.verify_s,
                    "continue_s": run.generate_s,
                    "scratch_s": ref.runs[0].latency_s,
                }
            )
    return pd.DataFrame(rows)


def summarise_hops(hops: pd.DataFrame) -> pd.DataFrame:
    """(a)-(c) per mode and hop."""
    out = []
    for (mode, hop), g in hops.groupby(["mode", "hop"], sort=True):
        exc = g[~g.identical]
        out.append(
            {
                "mode": mode,
                "hop": hop,
                "n": len(g),
                "(a) identical": f"{g.identical.mean():.1%}",
                "(a) exceptions: max margin nats": (
                    f"{exc.margin_at_difference.max():.3f}" if len(exc) else "-"
                ),
                "(b) escalate ÷ scratch (sum)": g.escalate_s.sum() / g.scratch_s.sum(),
                "(b) median per input": float((g.escalate_s / g.scratch_s).median()),
                "(c) accepted ÷ drafted": g.n_accepted.sum() / max(g.n_draft.sum(), 1),
                "(c) mean accepted length": g.n_accepted.mean(),
                "(c) accepted whole": f"{g.accepted_whole.mean():.1%}",
            }
        )
    return pd.DataFrame(out)


def _throughput(traces: Sequence[Trace], seconds: float) -> float:
    return sum(t.output.n_out for t in traces) / seconds


def run(args: argparse.Namespace) -> None:
    """Long because: the side-by-side runs share prompts, warm-up and the comparison."""
    params = config.load([REPO / "params" / "base.yaml", REPO / "params" / f"{args.profile}.yaml"])
    reqs = bench_requests(
        REPO / params.data_dir,
        args.tasks,
        args.n_per_task,
        params.seed,
        args.max_new_tokens,
        {str(t): n for t, n in params.datagen_max_new_tokens.items()},
    )
    print(f"[bench] {len(reqs)} prompts from {', '.join(args.tasks)}", flush=True)
    backends = [load_backend(s, REPO / params.models_dir) for s in params.stages]
    pipe = Pipeline(backends)
    deepest = len(backends) - 1
    try:
        alone = {
            d: pipe.run(reqs, FixedDepth(d, len(backends), route=True), progress=True)
            for d in range(1, deepest + 1)
        }
        hops, walls, traces_by_mode = [], {}, {}
        for mode in ("batched", "exact"):
            _set_exact(backends, mode == "exact")
            start = time.perf_counter()
            traces = pipe.run(reqs, FixedDepth(deepest, len(backends)), progress=True)
            walls[mode] = time.perf_counter() - start
            traces_by_mode[mode] = traces
            hops.append(hop_rows(mode, traces, alone))
        _set_exact(backends, False)
        start = time.perf_counter()
        single = [pipe.run([r], FixedDepth(deepest, len(backends)))[0] for r in reqs]
        one_at_a_time = time.perf_counter() - start
    finally:
        for b in backends:
            b.close()
    items = pd.concat(hops, ignore_index=True)
    table = summarise_hops(items)
    batched = traces_by_mode["batched"]
    extra: dict[str, Any] = {
        "(e) batched cascade tok/s": _throughput(batched, walls["batched"]),
        "(e) one-at-a-time tok/s": _throughput(single, one_at_a_time),
    }
    extra["(e) ratio"] = extra["(e) batched cascade tok/s"] / extra["(e) one-at-a-time tok/s"]
    same = sum(
        a.output.token_ids == b.output.token_ids for a, b in zip(batched, single, strict=True)
    )
    extra["(e) outputs identical batched vs single"] = f"{same}/{len(reqs)}"
    if args.baselines:
        extra |= baseline_ratios(params, reqs, args)
    # the command as typed from the repository root (no machine paths in a committed sidecar)
    command = " ".join(["python -m benchmarks.pipeline", *sys.argv[1:]])
    prov = provenance.provenance(params, params.seed, command=command)
    tables = REPO / params.reports_dir / "tables"
    provenance.write_table(table, tables / "pipeline_benchmark.csv", prov)
    provenance.write_table(items, tables / "pipeline_benchmark_items.csv", prov)
    md = (
        table.to_markdown(index=False, floatfmt=".3f")
        + "\n\n"
        + "\n".join(
            f"- {k}: {v:.3f}" if isinstance(v, float) else f"- {k}: {v}" for k, v in extra.items()
        )
    )
    exc = items[~items.identical]
    if len(exc):
        md += "\n\nExceptions to (a):\n\n" + exc[
            ["mode", "hop", "item_id", "first_difference", "margin_at_difference"]
        ].to_markdown(index=False, floatfmt=".4f")
    files.atomic_write_text(tables / "pipeline_benchmark.md", md + "\n")
    print(md)


def baseline_ratios(
    params: config.Params, reqs: Sequence[Request], args: argparse.Namespace
) -> dict[str, Any]:
    """(d): our route to the deepest stage's output vs two-model speculative decoding.

    Same prompts and settings for all (``--baseline-tokens`` new tokens, no stop strings):
    ours drafts with the stage below the deepest and escalates (verify + continue) on the
    profile's runtime; the baselines run transformers assisted generation and vLLM
    speculative decoding with the same two models, each beside its own target alone.
    """

    models = REPO / params.models_dir
    target, drafter = params.stages[-1], params.stages[-2]
    gp = GenerationParams(max_new_tokens=args.baseline_tokens)
    sub = [dataclasses.replace(r, params=gp) for r in reqs[: args.baseline_prompts]]
    K = len(params.stages)
    backends = [load_backend(s, models) for s in params.stages]
    try:
        pipe = Pipeline(backends)
        prompts = [pipe.prompt_ids(K - 1, r) for r in sub]
        ours = pipe.run(sub, FixedDepth(K - 1, K, start=K - 2))
        alone = pipe.run(sub, FixedDepth(K - 1, K, route=True))
    finally:
        for b in backends:
            b.close()
    out: dict[str, Any] = {"(d) prompts × new tokens": f"{len(sub)} × {gp.max_new_tokens}"}
    out["(d) ours tok/s"] = _throughput(ours, sum(t.latency_s for t in ours))
    out["(d) ours ÷ target alone"] = out["(d) ours tok/s"] / _throughput(
        alone, sum(t.latency_s for t in alone)
    )
    runs = {
        "transformers assisted": spec_decode_hf.assisted_generation(
            target, drafter, prompts, gp, models
        )
    }
    if args.vllm_python:
        runs["vLLM spec decode"] = spec_decode_vllm.vllm_spec_decode(
            target, drafter, prompts, gp, models, vllm_python=args.vllm_python
        )
    for name, res in runs.items():
        tps = sum(len(r.token_ids) for r in res) / sum(r.seconds for r in res)
        alone_tps = sum(len(r.target_token_ids or []) for r in res) / sum(
            r.target_seconds or 0.0 for r in res
        )
        same = sum(a.identical for a in spec_results.compare_with_target(res))
        out[f"(d) {name} tok/s"] = tps
        out[f"(d) {name} ÷ its target alone"] = tps / alone_tps
        out[f"(d) {name}: outputs identical to its target"] = f"{same}/{len(res)}"
        out[f"(d) ours ÷ {name}"] = out["(d) ours tok/s"] / tps
    return out


@cli_entry
def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.pipeline",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--tasks", nargs="+", default=["mmlu", "asdiv", "humaneval"])
    parser.add_argument("--n-per-task", type=int, default=12)
    parser.add_argument("--max-new-tokens", type=int, default=128, help="cap on task budgets")
    parser.add_argument("--baselines", action="store_true", help="also run (d)")
    parser.add_argument("--baseline-prompts", type=int, default=8)
    parser.add_argument("--baseline-tokens", type=int, default=64)
    parser.add_argument("--vllm-python", default=None, help="interpreter that has vLLM, for (d)")
    run(parser.parse_args(argv))


if __name__ == "__main__":
    main()
