"""Lossless two-model speculative decoding of the deepest stage: the baselines of docs/design.md §10.

A drafter (usually the next-smaller stage) proposes tokens and the target verifies them in one
forward pass, keeping its own greedy choice at the first mismatch, so the output is the target's
own greedy output and only the speed changes. Two runtimes implement it:

- transformers *assisted generation* (``model.generate(..., assistant_model=...)``), batch size
  1 as transformers requires, in this process: :func:`assisted_generation`;
- vLLM with a draft model in ``speculative_config``, in a child process under an interpreter
  that has vLLM (it often lives in its own virtual environment): :func:`vllm_spec_decode`.

Both also run the target alone on the same prompts, in the same process, dtype and batch shape,
so each prompt gets a side-by-side tokens/s ratio and a reference output with the same numerics.
:func:`compare_tokens` checks a baseline's output against any reference (identical, or where it
first diverges), and :func:`near_tie_gap` measures how close the target's two candidate tokens
were at a divergence: lossless up to floating-point near-ties (README, "Runtimes").

    python -m benchmarks.spec_decode --profile cpu --n-prompts 4 --vllm-python /path/to/python
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from asd_core.ground.errors import AsdError, cli_entry
from asd_core.models.base import GenerationParams
from benchmarks.spec_decode_hf import assisted_generation
from benchmarks.spec_decode_vllm import _vllm_child, has_vllm, vllm_spec_decode
from benchmarks.spec_results import (
    REPO,
    SpecResult,
    compare_with_target,
    overall_ratio,
    summary_rows,
)

# -- transformers: assisted generation --------------------------------------------------------


# -- vLLM: speculative_config with a draft model ----------------------------------------------


# -- CLI ----------------------------------------------------------------------------------------


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


@cli_entry
def main(argv: Sequence[str] | None = None) -> None:
    """Long because: the argument parser and the side-by-side report of both runtimes."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.spec_decode",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--n-prompts", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--target", help="target stage name (default: the deepest)")
    parser.add_argument("--drafter", help="drafter stage name (default: the one before)")
    parser.add_argument("--runtimes", default="transformers,vllm")
    parser.add_argument("--dtype", help="override both stages' dtype, e.g. float32")
    parser.add_argument("--num-speculative-tokens", type=int, default=4, help="vLLM draft length")
    parser.add_argument("--vllm-python", default=sys.executable, help="interpreter that has vLLM")
    parser.add_argument(
        "--no-iomp", action="store_true", help="do not preload Intel OpenMP for the vLLM child"
    )
    parser.add_argument("--json", help="also write every result to this JSON file")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        payload = json.loads(args.child)
        rows = _vllm_child(payload)
        Path(payload["out"]).write_text(json.dumps(rows))
        return

    from asd_core.ground import config
    from asd_core.models.common import chat_prompt_ids
    from asd_core.models.registry import resolve
    from benchmarks.runtimes import PROMPTS

    params_cfg = config.load(
        [REPO / "params" / "base.yaml", REPO / "params" / f"{args.profile}.yaml"]
    )
    stages = {s.name: s for s in params_cfg.stages}
    names = [s.name for s in params_cfg.stages]
    if len(names) < 2:
        raise AsdError(f"profile '{args.profile}': needs two stages for a drafter and a target")
    target_name = args.target or names[-1]
    if target_name not in stages:
        raise AsdError(f"--target {target_name}: no such stage (stages: {', '.join(names)})")
    drafter_name = args.drafter or names[names.index(target_name) - 1]
    if drafter_name not in stages or drafter_name == target_name:
        raise AsdError(f"--drafter {drafter_name}: pick another stage of {', '.join(names)}")
    if not 1 <= args.n_prompts <= len(PROMPTS):
        raise AsdError(f"--n-prompts {args.n_prompts}: must be 1..{len(PROMPTS)}")
    target, drafter = stages[target_name], stages[drafter_name]
    models_dir = REPO / params_cfg.models_dir

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve(target, models_dir, "hf").tokenizer)
    prompts = [chat_prompt_ids(tok, t) for t in PROMPTS[: args.n_prompts]]
    params = GenerationParams(max_new_tokens=args.new_tokens)
    results: list[SpecResult] = []
    for runtime in args.runtimes.split(","):
        print(f"[baselines] {runtime}: {drafter_name} drafts for {target_name}", flush=True)
        if runtime == "transformers":
            results += assisted_generation(
                target, drafter, prompts, params, models_dir, dtype=args.dtype
            )
        elif runtime == "vllm":
            if not has_vllm(args.vllm_python):
                print(f"[baselines] skipped vllm: {args.vllm_python} has no vllm", flush=True)
                continue
            results += vllm_spec_decode(
                target,
                drafter,
                prompts,
                params,
                models_dir,
                vllm_python=args.vllm_python,
                num_speculative_tokens=args.num_speculative_tokens,
                dtype=args.dtype,
                preload_iomp=not args.no_iomp,
            )
        else:
            raise AsdError(f"--runtimes: unknown runtime '{runtime}' (transformers, vllm)")

    rows = summary_rows(results)
    head = list(rows[0]) if rows else []
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for row in rows:
        print("| " + " | ".join(_fmt(v) for v in row.values()) + " |")
    for runtime in dict.fromkeys(r.runtime for r in results):
        mine = [r for r in results if r.runtime == runtime]
        print(
            f"[baselines] {runtime}: speculative ÷ target alone = {_fmt(overall_ratio(mine))} "
            f"over {len(mine)} prompts; identical outputs "
            f"{sum(a.identical for a in compare_with_target(mine))}/{len(mine)}"
        )
    if args.json:
        from asd_core.ground.files import atomic_write_text

        atomic_write_text(args.json, json.dumps([asdict(r) for r in results], indent=1))


if __name__ == "__main__":
    main()
