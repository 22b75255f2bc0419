"""The online pipeline (docs/design.md §8): route, then cascade, in batches, with a per-input trace.

A :class:`~asd_core.decoding.protocol.Policy` picks each input's starting stage (the entry decision) and,
after every stage, whether to stop or move to a deeper one. Inputs are grouped by the stage they
are at; each stage runs once on its group (per task, since tasks differ in generation settings)
and only the inputs that escalate join the group of the stage they move to. A move either
continues — the deeper stage verifies the latest draft and writes the rest itself
(``verify.escalate``) — or restarts, generating from scratch; either way the output at any depth
is what that stage alone would have written. A multiple-choice request (``GenerationParams.options``) is answered by
each stage's own choice pass (``asd_core.decoding.choice``), which also verifies the previous choice.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tqdm.auto import tqdm

from asd_core.decoding.choice import choice_verdict, respond
from asd_core.decoding.protocol import Move
from asd_core.decoding.verify import draft_from_generation, escalate, tokenizer_key
from asd_core.ground.errors import AsdError
from asd_core.ground.stopping import Decision
from asd_core.models.base import Backend, Generation, GenerationParams, TokenListener, listening
from asd_core.models.common import chat_prompt_ids

Clock = Callable[[], float]


@dataclass(frozen=True)
class Request:
    """One input to answer."""

    item_id: str  # stable id of the input (dataset item id, or a server's request id)
    task: str  # task name; decides the generation settings and the features' task id
    text: str  # the user message (each stage applies its own chat template), or the raw prompt
    params: GenerationParams  # greedy generation settings for this task
    messages: tuple[tuple[str, str], ...] = ()  # a whole chat as (role, content) turns; empty:
    # one user turn holding ``text``
    raw: bool = False  # ``text`` is a completion prompt, tokenised as it is (no chat template)


def request_prompt_ids(tokenizer: Any, request: Request | Any) -> list[int]:
    """The request as ``tokenizer``'s model reads it: chat template, or raw text."""
    if getattr(request, "raw", False):
        return list(tokenizer.encode(request.text, add_special_tokens=True))
    turns = getattr(request, "messages", ())
    if not turns:
        return chat_prompt_ids(tokenizer, request.text)
    enc = tokenizer.apply_chat_template(
        [{"role": r, "content": c} for r, c in turns], add_generation_prompt=True, tokenize=True
    )
    return list(enc["input_ids"] if hasattr(enc, "keys") else enc)


@dataclass
class StageRun:
    """What one stage did for one input."""

    stage: int  # stage index, 0 = cheapest
    prompt_ids: list[int]  # the stage's tokenised chat prompt
    generation: Generation  # the stage's full greedy output (accepted prefix included)
    from_stage: int | None  # stage whose draft was verified; None = generated from scratch (an
    # entry or a restart)
    n_draft: int  # draft length in this stage's tokens (0 from scratch)
    n_accepted: int  # draft tokens this stage accepted
    accepted_fraction: float  # n_accepted / n_draft; NaN when nothing was verified
    verify_s: float  # wall-clock s of the verification pass (0 from scratch)
    generate_s: float  # wall-clock s of generating (from scratch, or after the accepted prefix)

    @property
    def latency_s(self) -> float:
        """Seconds this stage spent on the input."""
        return self.verify_s + self.generate_s

    @property
    def text(self) -> str:
        return self.generation.text


@dataclass
class Trace:
    """Everything the pipeline did for one input."""

    request: Request  # the input
    entry_stage: int  # stage the entry decision picked
    runs: list[StageRun] = field(default_factory=list)  # stages in the order they ran
    decision_s: float = 0.0  # wall-clock s spent in policy decisions for this input (its share)

    @property
    def path(self) -> list[int]:
        """Stages that ran, in order (skipped stages are absent)."""
        return [r.stage for r in self.runs]

    @property
    def depth(self) -> int:
        """The stage whose output is returned."""
        return self.runs[-1].stage

    @property
    def output(self) -> Generation:
        return self.runs[-1].generation

    @property
    def latency_s(self) -> float:
        """End-to-end seconds for this input: every stage it went through plus decisions."""
        return sum(r.latency_s for r in self.runs) + self.decision_s

    def row(self) -> dict[str, Any]:
        """A flat record for tables (one row per input)."""
        acc = AcceptanceMetrics.of(self)
        return {
            "item_id": self.request.item_id,
            "task": self.request.task,
            "entry_stage": self.entry_stage,
            "depth": self.depth,
            "path": "→".join(map(str, self.path)),
            "text": self.output.text,
            "n_out": self.output.n_out,
            "stop_reason": self.output.stop_reason,
            "latency_s": self.latency_s,
            "decision_s": self.decision_s,
            **{f"stage{r.stage}_s": r.latency_s for r in self.runs},
            **{f"stage{r.stage}_accepted": r.n_accepted for r in self.runs},
            "acceptance_rate": acc.acceptance_rate,
            "mean_accepted_length": acc.mean_accepted_length,
        }


@dataclass(frozen=True)
class AcceptanceMetrics:
    """Per-request acceptance of drafts by the stages that verified them."""

    hops: int  # verifications performed (escalations that had a draft)
    drafted: int  # draft tokens offered, counted in the verifiers' tokens
    accepted: int  # draft tokens accepted
    acceptance_rate: float  # accepted / drafted; NaN when nothing was drafted
    mean_accepted_length: float  # accepted tokens per hop; NaN without hops

    @classmethod
    def of(cls, trace: Trace) -> AcceptanceMetrics:
        hops = [r for r in trace.runs if r.from_stage is not None]
        drafted = sum(r.n_draft for r in hops)
        accepted = sum(r.n_accepted for r in hops)
        return cls(
            hops=len(hops),
            drafted=drafted,
            accepted=accepted,
            acceptance_rate=accepted / drafted if drafted else math.nan,
            mean_accepted_length=accepted / len(hops) if hops else math.nan,
        )


class Pipeline:
    """A hierarchy of loaded stages (cheapest first) that answers requests under a policy."""

    def __init__(
        self, backends: Sequence[Backend], *, batch_size: int = 8, clock: Clock = time.perf_counter
    ):
        if not backends:
            raise AsdError("pipeline: no stages")
        if batch_size < 1:
            raise AsdError(f"pipeline: batch_size must be ≥ 1, got {batch_size}")
        self.backends = list(backends)
        self.batch_size = batch_size  # inputs per backend call (progress advances per call)
        self.clock = clock
        self.keys = [tokenizer_key(b.tokenizer) for b in self.backends]  # same key: same ids

    @property
    def n_stages(self) -> int:
        return len(self.backends)

    def prompt_ids(self, stage: int, request: Request) -> list[int]:
        """The request in ``stage``'s chat template; too long for its context is an error."""
        backend = self.backends[stage]
        ids = request_prompt_ids(backend.tokenizer, request)
        limit = backend.stage.context_length
        if len(ids) + request.params.max_new_tokens > limit:
            raise AsdError(
                f"input '{request.item_id}': {len(ids)} prompt tokens + "
                f"{request.params.max_new_tokens} new tokens exceed stage "
                f"'{backend.stage.name}' context length {limit}"
            )
        return ids

    def _next(self, stage: int, choice: Move | None, item_id: str) -> Move | None:
        if choice is None:
            return None
        if not isinstance(choice, Decision) or not stage < choice.stage < self.n_stages:
            raise AsdError(
                f"policy sent input '{item_id}' from stage {stage} to {choice!r}; "
                f"it must go deeper, to one of {stage + 1}..{self.n_stages - 1}"
            )
        return choice

    def enter(self, requests: Sequence[Request], policy: Any) -> list[Trace]:
        """One :class:`Trace` per request, at the stage the policy's entry decision picked."""
        n = len(requests)
        if n == 0:
            return []
        start = self.clock()
        entries = list(policy.entry(requests))
        share = (self.clock() - start) / n
        if len(entries) != n:
            raise AsdError(f"policy '{policy.name}': {len(entries)} entry stages for {n} inputs")
        for req, s in zip(requests, entries, strict=True):
            if not 0 <= s < self.n_stages:
                raise AsdError(
                    f"policy '{policy.name}' sent input '{req.item_id}' to stage {s}; "
                    f"stages are 0..{self.n_stages - 1}"
                )
        return [Trace(r, int(s), decision_s=share) for r, s in zip(requests, entries, strict=True)]

    def decide(self, stage: int, traces: Sequence[Trace], policy: Any) -> list[Move | None]:
        """The policy's move after ``stage`` for each trace (None: stop), checked and timed."""
        if not traces:
            return []
        start = self.clock()
        choices = list(policy.next_stage(stage, traces))
        share = (self.clock() - start) / len(traces)
        if len(choices) != len(traces):
            raise AsdError(
                f"policy '{policy.name}': {len(choices)} decisions for {len(traces)} inputs"
            )
        moves = []
        for t, c in zip(traces, choices, strict=True):
            t.decision_s += share
            moves.append(self._next(stage, c, t.request.item_id))
        return moves

    def run(self, requests: Sequence[Request], policy: Any, progress: bool = False) -> list[Trace]:
        """Answer ``requests`` under ``policy``; one :class:`Trace` per request, in order."""
        traces = self.enter(requests, policy)
        at: dict[int, list[int]] = defaultdict(list)
        for i, t in enumerate(traces):
            at[t.entry_stage].append(i)
        fresh: set[int] = set()  # inputs whose next stage restarts instead of continuing
        for stage in range(self.n_stages):
            idx = at.pop(stage, [])
            if not idx:
                continue
            with tqdm(
                total=len(idx),
                desc=f"{policy.name}: stage {stage}",
                disable=not progress,
                unit="input",
            ) as bar:
                for c in range(0, len(idx), self.batch_size):
                    chunk = idx[c : c + self.batch_size]
                    self.run_stage(stage, [traces[i] for i in chunk], [i in fresh for i in chunk])
                    bar.update(len(chunk))
            moves = self.decide(stage, [traces[i] for i in idx], policy)
            for i, nxt in zip(idx, moves, strict=True):
                fresh.discard(i)
                if nxt is not None:
                    at[nxt.stage].append(i)
                    if nxt.restart:
                        fresh.add(i)
        return traces

    def run_stage(
        self,
        stage: int,
        traces: Sequence[Trace],
        restart: Sequence[bool],
        listeners: Sequence[TokenListener | None] | None = None,
    ) -> None:
        """Run ``stage`` on its batch: verify + continue where a draft exists (unless the move
        restarts), else generate. ``listeners[i]`` (optional) hears ``traces[i]``'s tokens as
        the stage writes them, where its runtime reports them (``models.base.listening``).

        Long because: a choice, a generation from scratch and an escalation each append a run.
        """
        backend = self.backends[stage]
        groups: dict[tuple[GenerationParams, bool], list[int]] = defaultdict(list)
        for i, (t, fresh) in enumerate(zip(traces, restart, strict=True)):
            groups[(t.request.params, bool(t.runs) and not fresh)].append(i)
        heard = list(listeners) if listeners is not None else [None] * len(traces)
        for (params, has_draft), members in groups.items():
            group = [traces[i] for i in members]
            hear = [heard[i] for i in members]
            prompts = [self.prompt_ids(stage, t.request) for t in group]
            if params.options:  # a choice: verified by this stage's own choice pass
                for t, p, g in zip(group, prompts, respond(backend, prompts, params), strict=True):
                    if not has_draft:
                        t.runs.append(StageRun(stage, p, g, None, 0, 0, math.nan, 0.0, g.total_s))
                        continue
                    prev = t.runs[-1]
                    v = choice_verdict(
                        prev.generation, g, self.keys[prev.stage] != self.keys[stage]
                    )
                    frac = v.accepted_fraction
                    t.runs.append(
                        StageRun(stage, p, g, prev.stage, 1, v.n_accepted, frac, v.seconds, 0.0)
                    )
                continue
            if not has_draft:
                with listening(backend, _fan_out(hear)):
                    gens = backend.generate(prompts, params)
                for t, p, g in zip(group, prompts, gens, strict=True):
                    t.runs.append(StageRun(stage, p, g, None, 0, 0, math.nan, 0.0, g.total_s))
                continue
            last = [t.runs[-1] for t in group]
            drafts = [
                draft_from_generation(r.stage, r.generation, self.keys[r.stage]) for r in last
            ]
            same = [self.keys[r.stage] == self.keys[stage] for r in last]
            with listening(backend, _fan_out(hear)):
                escalations = escalate(backend, prompts, drafts, same, params)
            for t, p, r, e in zip(group, prompts, last, escalations, strict=True):
                v = e.verdict
                t.runs.append(
                    StageRun(
                        stage,
                        p,
                        e.output,
                        r.stage,
                        v.n_draft,
                        v.n_accepted,
                        v.accepted_fraction if v.n_draft else math.nan,
                        e.verify_s,
                        e.resume_s,
                    )
                )


def _fan_out(listeners: Sequence[TokenListener | None]) -> TokenListener | None:
    """One listener for a backend call that passes each sequence's tokens to its own."""
    if not any(listeners):
        return None

    def hear(index: int, tokens: Sequence[int]) -> bool:
        own = listeners[index] if index < len(listeners) else None
        return True if own is None else own(index, tokens)

    return hear
