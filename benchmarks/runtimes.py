"""Runtime benchmark: every stage of a profile on every runtime, measured side by side.

    python -m benchmarks.runtimes --profile cpu            # all runtimes that are installed
    python -m benchmarks.runtimes --profile cpu --runtimes llamacpp,transformers

Each (stage, runtime) cell runs in its own process, so load time and peak RSS are that cell's
alone: load seconds, greedy tok/s for 1 prompt and for a batch of 8 (EOS ignored so every run
writes exactly ``--new-tokens``), teacher-forced scoring tok/s over a 256-token continuation,
peak RSS, and the wrapper's overhead against calling the runtime's own greedy generation on the
same prompt (interleaved repeats, ratio of medians). A last cell loads all stages of the profile
in one process and reports the peak RSS. Results are cached per cell under
``artifacts/bench/<profile>/`` (a killed run resumes) and written to
``reports/tables/runtime_benchmark.csv`` with a provenance sidecar and a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from asd_core.ground import config, files
from asd_core.ground.config import StageConfig
from asd_core.ground.errors import AsdError, cli_entry
from asd_core.models.common import chat_prompt_ids

REPO = Path(__file__).resolve().parents[1]
PROMPTS = [
    "Write a Python function that returns the n-th Fibonacci number.",
    "A shop sells pens at 3 dollars each. How much do 14 pens cost? Answer with a number.",
    "What is the capital of Australia? Explain briefly.",
    "Which planet is known as the Red Planet? A) Venus B) Mars C) Jupiter D) Saturn",
    "Summarise in two sentences why the sky looks blue.",
    "Write a SQL query that counts orders per customer in a table orders(customer_id, id).",
    "If a train travels 60 km in 45 minutes, what is its speed in km/h?",
    "Explain what a hash map is to a beginner programmer.",
]


def peak_rss_gib() -> float:
    """Peak resident memory of this process plus its waited-for children, GiB."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return (own + kids) / 2**20  # ru_maxrss is KiB on Linux


def _direct_generate(backend: Any, prompt: list[int], n: int) -> Callable[[], None]:
    """The runtime's own greedy generation of exactly ``n`` tokens, no wrapper around it."""
    runtime = backend.info.runtime
    if runtime == "transformers":
        import torch

        ids = torch.tensor([prompt])

        def run_hf() -> None:
            with torch.inference_mode():
                backend.model.generate(
                    input_ids=ids,
                    attention_mask=torch.ones_like(ids),
                    max_new_tokens=n,
                    min_new_tokens=n,
                    do_sample=False,
                    pad_token_id=backend.pad_id,
                )

        return run_hf
    if runtime == "llamacpp":
        from asd_core.models.common import cpu_threads
        from asd_core.models.llamacpp_load import load_llama

        # the backend's own wrapper object only holds the weights (its context is 16 tokens):
        # llama.cpp's generation gets a context of its own, one sequence, the backend's threads
        threads = cpu_threads(backend.stage.threads)
        llm = load_llama(
            backend.info.weights, n_ctx=len(prompt) + n + 16, n_batch=512, verbose=False,
            n_threads=threads, n_threads_batch=threads,
        )  # fmt: skip

        def run_llama() -> None:
            llm.reset()
            for i, _ in enumerate(llm.generate(prompt, top_k=1, temp=0.0, reset=True)):
                if i + 1 >= n:
                    break

        return run_llama
    if runtime == "vllm":
        from vllm import SamplingParams, TokensPrompt

        sp = SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True)

        def run_vllm() -> None:
            backend.llm.generate([TokensPrompt(prompt_token_ids=prompt)], sp, use_tqdm=False)

        return run_vllm
    raise AsdError(f"no direct baseline for runtime {runtime}")


def _timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure_cell(
    stage: StageConfig, models_dir: str, new_tokens: int, repeats: int
) -> dict[str, Any]:
    """All numbers for one stage on one runtime (run inside a fresh process)."""
    from asd_core.models.base import GenerationParams
    from asd_core.models.registry import load_backend

    start = time.perf_counter()
    backend = load_backend(stage, models_dir)
    load_s = time.perf_counter() - start
    prompts = [chat_prompt_ids(backend.tokenizer, t) for t in PROMPTS]
    params = GenerationParams(max_new_tokens=new_tokens, ignore_eos=True)
    backend.generate([prompts[0]], GenerationParams(max_new_tokens=8, ignore_eos=True))  # warm-up

    direct = _direct_generate(backend, prompts[0], new_tokens)
    wrapped_s, direct_s, first_tokens = [], [], []
    for _ in range(repeats):  # interleaved so drift hits both sides alike
        t0 = time.perf_counter()
        (gen,) = backend.generate([prompts[0]], params)
        wrapped_s.append(time.perf_counter() - t0)
        first_tokens = gen.token_ids[:48]
        direct_s.append(_timed(direct))
    batch_s = _timed(lambda: backend.generate(prompts, params))

    continuation = (gen.token_ids * 3)[:256] if gen.token_ids else [0] * 256
    score_s = statistics.median(
        _timed(lambda: backend.score([prompts[1]], [continuation])) for _ in range(repeats)
    )
    backend.close()
    return {
        "stage": stage.name,
        "runtime": stage.runtime,
        "dtype": stage.dtype if stage.runtime != "llamacpp" else "gguf",
        "load_s": load_s,
        "gen_tok_s_1": new_tokens / statistics.median(wrapped_s),
        "gen_tok_s_8": len(prompts) * new_tokens / batch_s,
        "score_tok_s": len(continuation) / score_s,
        "wrapper_overhead": statistics.median(wrapped_s) / statistics.median(direct_s) - 1.0,
        "peak_rss_gib": peak_rss_gib(),
        "first_tokens": first_tokens,
    }


def measure_all_loaded(stages: Sequence[StageConfig], models_dir: str) -> dict[str, Any]:
    """Peak RSS with every stage loaded in one process (each generates a little)."""
    from asd_core.models.base import GenerationParams
    from asd_core.models.registry import load_backend

    backends = [load_backend(s, models_dir) for s in stages]
    for b in backends:
        b.generate([chat_prompt_ids(b.tokenizer, PROMPTS[0])], GenerationParams(max_new_tokens=16))
    rss = peak_rss_gib()
    for b in backends:
        b.close()
    return {
        "stage": "+".join(s.name for s in stages),
        "runtime": stages[0].runtime,
        "peak_rss_gib": rss,
    }


def _child(args: argparse.Namespace) -> None:
    payload = json.loads(args.child)
    if payload["kind"] == "all":
        stages = [StageConfig(**s) for s in payload["stages"]]
        result = measure_all_loaded(stages, payload["models_dir"])
    else:
        stage = StageConfig(**payload["stage"])
        result = measure_cell(
            stage, payload["models_dir"], payload["new_tokens"], payload["repeats"]
        )
    print("RESULT " + json.dumps(result), flush=True)


def _spawn(payload: dict[str, Any], python: str, log: Path) -> dict[str, Any] | None:
    env = dict(
        os.environ,
        VLLM_ENABLE_V1_MULTIPROCESSING=os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING", "0"),
    )
    cmd = [python, "-m", "benchmarks.runtimes", "--child", json.dumps(payload)]
    with open(log, "w") as fh:
        proc = subprocess.run(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=fh, text=True, env=env)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return dict(json.loads(line[len("RESULT ") :]))
    tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
    print(
        f"[bench]   failed (exit {proc.returncode}): {tail[0][:200]} — full log {log}", flush=True
    )
    return None


def _variant(stage: StageConfig, runtime: str) -> StageConfig:
    """The same model on another runtime (bf16 for transformers and vLLM)."""
    dtype = stage.dtype if stage.runtime == runtime else "bfloat16"
    return stage.model_copy(update={"runtime": runtime, "dtype": dtype})


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    head = "| stage | runtime | load s | gen tok/s (1) | gen tok/s (8) | score tok/s | peak RSS GiB | wrapper overhead |"
    lines = [head, "|" + "---|" * 8]
    for r in rows:
        if "gen_tok_s_1" not in r:
            lines.append(
                f"| {r['stage']} (all loaded) | {r['runtime']} | | | | | {r['peak_rss_gib']:.2f} | |"
            )
            continue
        lines.append(
            f"| {r['stage']} | {r['runtime']} | {r['load_s']:.1f} | {r['gen_tok_s_1']:.1f} | "
            f"{r['gen_tok_s_8']:.1f} | {r['score_tok_s']:.0f} | {r['peak_rss_gib']:.2f} | "
            f"{100 * r['wrapper_overhead']:+.1f}% |"
        )
    return "\n".join(lines)


@cli_entry
def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.runtimes",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--runtimes", default="llamacpp,transformers,vllm")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--vllm-python", default=sys.executable, help="interpreter that has vLLM")
    parser.add_argument("--fresh", action="store_true", help="ignore cached cells")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return _child(args)

    params = config.load([REPO / "params" / "base.yaml", REPO / "params" / f"{args.profile}.yaml"])
    models_dir = str(REPO / params.models_dir)
    cache = REPO / params.artifacts_dir / "bench" / args.profile
    cache.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    cells = [(s, r) for s in params.stages for r in args.runtimes.split(",")]
    for i, (stage, runtime) in enumerate(cells, start=1):
        variant = _variant(stage, runtime)
        out = cache / f"{stage.name}--{runtime}.json"
        print(f"[bench] {i}/{len(cells)} {stage.name} on {runtime}", flush=True)
        if out.is_file() and not args.fresh:
            rows.append(json.loads(out.read_text()))
            continue
        payload = {
            "kind": "cell",
            "stage": variant.model_dump(),
            "models_dir": models_dir,
            "new_tokens": args.new_tokens,
            "repeats": args.repeats,
        }
        python = args.vllm_python if runtime == "vllm" else sys.executable
        result = _spawn(payload, python, cache / f"{stage.name}--{runtime}.log")
        if result is not None:
            out.write_text(json.dumps(result))
            rows.append(result)
    print(f"[bench] all {len(params.stages)} stages loaded together", flush=True)
    together = _spawn(
        {
            "kind": "all",
            "stages": [s.model_dump() for s in params.stages],
            "models_dir": models_dir,
        },
        sys.executable,
        cache / "all.log",
    )
    if together:
        rows.append(together)
    _report(rows, params)


def _report(rows: list[dict[str, Any]], params: config.Params) -> None:
    import pandas as pd

    from asd_core.ground import provenance

    by_stage: dict[str, dict[str, list[int]]] = {}
    for r in rows:
        if "first_tokens" in r:
            by_stage.setdefault(r["stage"], {})[r["runtime"]] = r["first_tokens"]
    agreement = []
    for stage, runs in by_stage.items():
        names = sorted(runs)
        for a in range(len(names)):
            for b in range(a + 1, len(names)):
                x, y = runs[names[a]], runs[names[b]]
                same = next(
                    (i for i, (p, q) in enumerate(zip(x, y, strict=False)) if p != q),
                    min(len(x), len(y)),
                )
                agreement.append(
                    f"{stage}: {names[a]} vs {names[b]} agree on the first {same} of {min(len(x), len(y))} greedy tokens"
                )
    table = pd.DataFrame([{k: v for k, v in r.items() if k != "first_tokens"} for r in rows])
    dest = REPO / params.reports_dir / "tables" / "runtime_benchmark.csv"
    prov = provenance.provenance(params, params.seed, benchmark="bench_runtimes")
    provenance.write_table(table, dest, prov)
    md = markdown_table(rows) + "\n\n" + "\n".join(f"- {line}" for line in agreement) + "\n"
    files.atomic_write_text(dest.with_suffix(".md"), md)
    print(md)
    print(f"[bench] wrote {dest} and {dest.with_suffix('.md')}")


if __name__ == "__main__":
    main()
