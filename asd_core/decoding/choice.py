"""Multiple-choice stages: the option a model picks in one pass, handed on as a one-token output.

With ``datagen_mc_scoring: loglik`` a stage does not write a reply to an MMLU question. One
teacher-forced pass over the prompt gives its next-token distribution, and its answer is the
option whose first token (the letter) is most probable — the usual way MMLU is scored. Its
output in the cascade is that option, one token long, with statistics over the options only:

- ``logprobs``: log p(chosen option), renormalised over the options;
- ``top_ids`` / ``top_logprobs``: the options' first tokens and renormalised log-probs, best first;
- ``entropy``: the entropy of the distribution over the options,

so the generic output features (mean log-prob, top-1/top-2 margin, entropy) read as the option
distribution's top probability, margin and entropy, and the task's answer extraction reads the
letter. A deeper stage "verifies" a draft by running its own pass: the draft is accepted when
both pick the same option, and the output at any depth is that stage's own choice, as in
generation (the cascade stays lossless).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from asd_core.decoding.verify import Verdict
from asd_core.ground.errors import AsdError
from asd_core.models.base import Backend, Generation, GenerationParams, TokenIds, Tokenizer


def option_token_ids(tokenizer: Tokenizer, options: Sequence[str]) -> list[int]:
    """(c,) the first token of each option as a reply would start with it.

    Two options that share their first token could not be told apart in one pass: an error.
    """
    firsts = []
    for option in options:
        ids = tokenizer.encode(option, add_special_tokens=False)
        if not ids:
            raise AsdError(f"multiple choice: option {option!r} encodes to no tokens")
        firsts.append(int(ids[0]))
    if len(set(firsts)) != len(firsts):
        raise AsdError(f"multiple choice: options {list(options)} share a first token")
    return firsts


def option_distribution(logprobs: np.ndarray) -> np.ndarray:
    """(c,) float64 log-probabilities renormalised over the options (they sum to 1 in p)."""
    x = np.asarray(logprobs, dtype=np.float64)
    top = x.max()
    return x - (top + np.log(np.exp(x - top).sum()))


def choose(
    backend: Backend, prompts: Sequence[TokenIds], options: Sequence[str], top_k: int = 2
) -> list[Generation]:
    """Each prompt's most probable option as a one-token :class:`Generation` (module docstring).

    Ties go to the earlier option. ``top_k`` alternatives are kept (at most the number of
    options); ``prefill_s`` and ``total_s`` are both the pass's seconds.
    """
    ids = np.asarray(option_token_ids(backend.tokenizer, options), dtype=np.int64)
    k = max(1, min(top_k, len(ids)))
    out = []
    for prompt, nxt in zip(prompts, backend.next_logprobs(prompts, ids.tolist()), strict=True):
        lp = option_distribution(nxt.logprobs)
        order = np.argsort(-lp, kind="stable")
        best = int(order[0])
        entropy = float(-(np.exp(lp) * lp).sum())
        out.append(
            Generation(
                prompt_ids=[int(t) for t in prompt],
                token_ids=[int(ids[best])],
                text=options[best],
                logprobs=np.array([lp[best]], np.float32),
                top_ids=ids[order[:k]][None, :],
                top_logprobs=lp[order[:k]].astype(np.float32)[None, :],
                entropy=np.array([max(entropy, 0.0)], np.float32),
                stop_reason="stop",
                prefill_s=nxt.seconds,
                total_s=nxt.seconds,
            )
        )
    return out


def respond(
    backend: Backend, prompts: Sequence[TokenIds], params: GenerationParams
) -> list[Generation]:
    """A stage's outputs: its choice among ``params.options`` when there are any, else its
    greedy generation."""
    if params.options:
        return choose(backend, prompts, params.options, params.top_k)
    return backend.generate(prompts, params)


def choice_verdict(draft: Generation, own: Generation, cross_tokenizer: bool) -> Verdict:
    """A deeper stage's verdict on a shallower stage's choice: accepted iff the same option.

    ``own`` is the verifying stage's :func:`choose` output for the same question; the pass
    that produced it is the verification, so its seconds are the verdict's.
    """
    same = draft.text == own.text
    return Verdict(
        n_draft=1,
        n_accepted=int(same),
        accepted_ids=tuple(own.token_ids) if same else (),
        first_mismatch=None if same else 0,
        verifier_token=None if same else int(own.token_ids[0]),
        accepted_fraction=float(same),
        seconds=own.total_s,
        cross_tokenizer=cross_tokenizer,
        straddle=False,
        accepted_text=own.text if same else "",
        finished=True,
    )
