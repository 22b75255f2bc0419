"""What one speculative-decoding run measured, and how its output compares with the target's own.

Lossless up to floating-point near-ties: :func:`compare_tokens` checks a baseline's output against a
reference (identical, or where it first diverges), and :func:`near_tie_gap` measures how close the
target's two candidate tokens were at a divergence.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from asd_core.ground.config import StageConfig
from asd_core.ground.errors import AsdError
from asd_core.models.base import Backend, StopReason, TokenIds

Clock = Callable[[], float]


REPO = Path(__file__).resolve().parents[1]


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
