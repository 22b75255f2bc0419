"""One shard of the generations: every stage answers every item, every deeper stage verifies each answer.

A shard is generated as a unit — batches never cross shards, so numerics, which depend on batch
composition, are the same whether or not the run was interrupted. :func:`shard_rows` returns its
rows in the schema of :data:`asd_core.runs.generations.COLUMNS`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from asd_core.data.scoring import TaskScore, answer_key, answers_agree, mmlu_choices, score_item
from asd_core.data.tasks import TASK_FAMILIES
from asd_core.data.text_answers import TEXT_AGREEMENT, text_similarity
from asd_core.decoding.choice import choice_verdict, respond
from asd_core.decoding.verify import Verdict, draft_from_generation, verify_batch
from asd_core.ground.errors import MetricsError
from asd_core.models.base import Backend, Generation
from asd_core.models.common import chat_prompt_ids
from asd_core.runs.selection import DatagenSpec, Entry

if TYPE_CHECKING:
    from asd_core.data.sandbox import SandboxLimits


def _chunks(idx: Sequence[int], size: int) -> Iterator[list[int]]:
    for i in range(0, len(idx), size):
        yield list(idx[i : i + size])


def _generate_stage(
    backend: Backend, prompts: Sequence[list[int]], entries: Sequence[Entry], spec: DatagenSpec
) -> tuple[list[Generation], list[int]]:
    """Stage outputs for a shard: batches per task (settings differ), in shard order."""
    gens: list[Generation | None] = [None] * len(entries)
    batch_of = [0] * len(entries)
    for task in dict.fromkeys(e.item.task for e in entries):
        idx = [i for i, e in enumerate(entries) if e.item.task == task]
        for chunk in _chunks(idx, spec.batch_size):
            out = respond(backend, [prompts[i] for i in chunk], spec.generation_params(task))
            for i, g in zip(chunk, out, strict=True):
                gens[i], batch_of[i] = g, len(chunk)
    return [g for g in gens if g is not None], batch_of


def _quality(entry: Entry, text: str, limits: SandboxLimits | None, truncated: bool) -> TaskScore:
    """Score ``text`` against the gold reference; without one, just its answer key."""
    item = entry.item
    try:
        return score_item(item, text, limits, truncated)
    except MetricsError:
        if item.answer or item.references:  # a gold exists, so this is a real error
            raise
    key = answer_key(
        item.task,
        text,
        code_prompt=item.code_prompt,
        test=item.test,
        entry_point=item.entry_point,
        choices=mmlu_choices(item.question) if item.task == "mmlu" else None,
        sandbox_limits=limits,
        truncated=truncated,
    )
    return TaskScore(item.task, math.nan, key)


def _agrees(key: str, final_key: str, similarity: float | None) -> bool:
    """The answer label before any refit: the same key, or (free text) close enough text."""
    if similarity is None:
        return answers_agree(key, final_key)
    return similarity >= TEXT_AGREEMENT and key != ""  # refit on load: refit_text_agreement


def _fraction(accepted: int, drafted: int, empty: float) -> float:
    return accepted / drafted if drafted else empty


def shard_rows(
    backends: Sequence[Backend],
    keys: Sequence[str],
    entries: Sequence[Entry],
    spec: DatagenSpec,
    sandbox_limits: SandboxLimits | None = None,
) -> list[dict[str, Any]]:
    """All rows of one shard: K per entry, entry by entry, stage by stage.

    Every stage generates for the whole shard first; then each deeper stage j verifies each
    shallower stage's outputs in batches of ``spec.batch_size`` (one score pass per draft).

    Long because: one row per (item, stage) assembles generation, verification and scores.
    """
    K = len(backends)
    n = len(entries)
    prompts = [[chat_prompt_ids(b.tokenizer, e.item.question) for e in entries] for b in backends]
    gens, batch_of = zip(
        *(_generate_stage(b, prompts[k], entries, spec) for k, b in enumerate(backends)),
        strict=True,
    )
    # verdicts[k][j][i]: stage j's verification of stage k's output for entry i
    verdicts: list[dict[int, list[Verdict]]] = [{} for _ in range(K)]
    chosen = [bool(spec.generation_params(e.item.task).options) for e in entries]
    for j in range(1, K):
        for k in range(j):
            drafts = [draft_from_generation(k, g, keys[k]) for g in gens[k]]
            out: list[Verdict | None] = [None] * n
            for i in range(n):  # a choice is verified by the verifier's own choice pass
                if chosen[i]:
                    out[i] = choice_verdict(gens[k][i], gens[j][i], keys[k] != keys[j])
            todo = [i for i in range(n) if not chosen[i]]
            for chunk in _chunks(todo, spec.batch_size):
                found = verify_batch(
                    backends[j],
                    [prompts[j][i] for i in chunk],
                    [drafts[i] for i in chunk],
                    keys[k] == keys[j],
                    spec.verify_early_exit,
                )
                for i, v in zip(chunk, found, strict=True):
                    out[i] = v
            verdicts[k][j] = [v for v in out if v is not None]
    rows: list[dict[str, Any]] = []
    for i, entry in enumerate(entries):
        scores = [
            _quality(entry, gens[k][i].text, sandbox_limits, gens[k][i].stop_reason == "length")
            for k in range(K)
        ]
        free_text = TASK_FAMILIES.get(entry.item.task) == "text"
        similarity = [
            text_similarity(gens[k][i].text, gens[K - 1][i].text) if free_text else None
            for k in range(K)
        ]
        for k in range(K):
            g: Generation = gens[k][i]
            by = verdicts[k]
            drafted = [by[j][i].n_draft if j in by else -1 for j in range(K)]
            accepted = [by[j][i].n_accepted if j in by else -1 for j in range(K)]
            final = K - 1
            if k == final:
                label_token, frac_final = 1, 1.0
            else:
                label_token = int(by[final][i].all_accepted)
                # an empty draft is accepted vacuously, as label_token says
                frac_final = _fraction(accepted[final], drafted[final], 1.0)
            prev = verdicts[k - 1][k][i] if k else None
            top = np.asarray(g.top_logprobs, dtype=np.float32)  # (n_out, top_k), top_k ≥ 2
            rows.append(
                {
                    "item_id": entry.item.item_id,
                    "task": entry.item.task,
                    "split": entry.split,
                    "stage": k,
                    "n_stages": K,
                    "stage_name": backends[k].stage.name,
                    "prompt_ids": prompts[k][i],
                    "token_ids": list(g.token_ids),
                    "text": g.text,
                    "logprobs": np.asarray(g.logprobs, dtype=np.float32),
                    "entropy": np.asarray(g.entropy, dtype=np.float32),
                    "top1_logprob": top[:, 0],
                    "top2_logprob": top[:, 1],
                    "stop_reason": g.stop_reason,
                    "hidden_mean": None
                    if g.hidden_mean is None
                    else np.asarray(g.hidden_mean, dtype=np.float32),
                    "n_in": len(prompts[k][i]),
                    "n_out": g.n_out,
                    "gen_batch": batch_of[k][i],
                    "latency_s": float(g.total_s),
                    "prefill_s": float(g.prefill_s),
                    # NaN for an empty draft, as the online pipeline reports it
                    "accepted_frac_prev": math.nan
                    if prev is None
                    else _fraction(prev.n_accepted, prev.n_draft, math.nan),
                    "label_token": label_token,
                    "label_answer": int(
                        k == final
                        or _agrees(scores[k].extracted, scores[final].extracted, similarity[k])
                    ),
                    "accepted_frac_final": frac_final,
                    "answer": scores[k].extracted,
                    "correct": float(scores[k].correct),
                    "rouge_l": math.nan if scores[k].rouge_l is None else scores[k].rouge_l,
                    "bleu": math.nan if scores[k].bleu is None else scores[k].bleu,
                    "similarity_final": math.nan if similarity[k] is None else similarity[k],
                    "drafted_by": drafted,
                    "accepted_by": accepted,
                    "verify_s_by": [by[j][i].seconds if j in by else math.nan for j in range(K)],
                }
            )
    return rows


def rows_of_shard(
    backends: Sequence[Backend],
    keys: Sequence[str],
    entries: Sequence[Entry],
    spec: DatagenSpec,
    index: int,
    sandbox_limits: SandboxLimits | None,
) -> list[dict[str, Any]]:
    """Shard ``index``'s rows: batched, or one sequence at a time on the solo shards."""
    if not (spec.solo_every and index % spec.solo_every == 0):
        return shard_rows(backends, keys, entries, spec, sandbox_limits)
    with prompt_reuse(backends, False):
        solo = dataclasses.replace(spec, batch_size=1)
        return shard_rows(backends, keys, entries, solo, sandbox_limits)


@contextlib.contextmanager
def prompt_reuse(backends: Sequence[Backend], enabled: bool) -> Iterator[None]:
    """Run the block with every stage's ``reuse_prompts`` set to ``enabled``, then restore it."""
    stages = [b.stage for b in backends]
    try:
        for b in backends:
            b.stage = b.stage.model_copy(update={"reuse_prompts": enabled})
        yield
    finally:
        for b, stage in zip(backends, stages, strict=True):
            b.stage = stage
