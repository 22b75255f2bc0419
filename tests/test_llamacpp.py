"""The llama.cpp backend on the embedded GGUF weights: shapes, units, stopping, errors, exactness.

SmolLM2-135M (98 MB) runs in the ``integration`` tests; the Qwen2.5-Coder GGUFs only in ``slow``
ones. Exactness is measured on short real chat prompts and printed (``pytest -s`` shows it):

* self-acceptance — scoring a stage's own greedy output accepts it, except at near-ties;
* runtime agreement — llama.cpp greedy vs transformers greedy on the float32 weights
  dequantised from the same GGUF, with the top-1/top-2 gap of both runtimes at each divergence.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("llama_cpp")

from asd_core.ground.config import StageConfig  # noqa: E402
from asd_core.ground.errors import AsdError  # noqa: E402
from asd_core.models import llamacpp_slots  # noqa: E402
from asd_core.models.base import Backend, GenerationParams  # noqa: E402
from asd_core.models.common import chat_prompt_ids
from asd_core.models.llamacpp import LlamaCppBackend  # noqa: E402
from asd_core.models.registry import load_backend  # noqa: E402
from tests.conftest import real_gguf  # noqa: E402

SMOL = "smollm2-135m-instruct"
QWEN = ["qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-1.5b-instruct"]

# Short real prompts of the kinds the benchmarks use: code, arithmetic, trivia, multiple choice.
PROMPTS = [
    "Write a Python function `is_prime(n)` that returns True when n is a prime number.",
    "What is 17 * 23? Answer with the number only.",
    "A train travels 120 km in 1.5 hours. What is its average speed in km/h?",
    "What is the capital of Australia?",
    "Who wrote the novel 'Pride and Prejudice'?",
    "Which planet is known as the Red Planet?\nA) Venus\nB) Mars\nC) Jupiter\nD) Saturn\n"
    "Answer with the letter.",
    "Which gas do plants absorb from the air for photosynthesis?\nA) Oxygen\nB) Nitrogen\n"
    "C) Carbon dioxide\nD) Helium\nAnswer with the letter.",
    "Explain what this code prints:\n\nfor i in range(3):\n    print(i * 2)",
]

# Both thresholds below bound the top-1/top-2 log-prob gap at a greedy flip, in whichever of
# the two passes has the smaller gap. A flip can only happen where the gap is below the sum of
# the log-prob shifts between the two passes, so the thresholds follow the measured shifts
# (printed by the tests) and the gaps measured at flips. Real bugs (an off-by-one position, a
# wrong template or tokenisation) flip tokens at gaps of several nats.
#
# Self-acceptance: llama.cpp runs a one-token decode step through different CPU kernels than a
# multi-token batch (only n_ubatch=1 reproduces generation bit for bit), which shifts log-probs
# by a median 0.005 / p90 0.06 / max 0.19 nats (SmolLM2; Qwen 0.5B: 0.0005 / 0.03 / 0.10).
# A flip needs a gap below the two passes' shifts, so the bound must cover the largest shift,
# not the largest flip seen so far: flips measured on PROMPTS x 64 tokens had a smaller gap of
# at most 0.063 nats on one machine and 0.139 on another (SmolLM2, same build flags).
SELF_GAP = 0.25
# Runtime agreement: Q4 matmuls in llama.cpp quantise activations to 8 bits, transformers runs
# float32, which shifts log-probs by a median 0.005 / p90 0.055 / max 0.165 nats (SmolLM2).
# Divergences measured on PROMPTS x 48 tokens, 3 models: smaller gap at most 0.103 nats.
RUNTIME_GAP = 0.25


def stage(asset: str, context_length: int = 2048) -> StageConfig:
    return StageConfig(
        name=asset.split("-")[0],
        source=f"package:{asset}",
        runtime="llamacpp",
        context_length=context_length,
    )


def chat(tokenizer, text: str) -> list[int]:
    return chat_prompt_ids(tokenizer, text)


def top2_gaps(backend: LlamaCppBackend, prompt: list[int], cont: list[int]) -> np.ndarray:
    """(len(cont),) top-1 minus top-2 log-prob of the scoring pass, nats."""
    (sc,) = backend.score([prompt], [cont], top_k=2)
    assert sc.top_logprobs is not None
    return (sc.top_logprobs[:, 0] - sc.top_logprobs[:, 1])[: len(cont)]


def self_acceptance(backend: LlamaCppBackend, n_new: int) -> tuple[int, list[dict[str, float]]]:
    """Score each prompt's own greedy output: (prompts accepted whole, one record per mismatch)."""
    whole, mismatches = 0, []
    for i, text in enumerate(PROMPTS):
        prompt = chat(backend.tokenizer, text)
        (gen,) = backend.generate([prompt], GenerationParams(max_new_tokens=n_new))
        (sc,) = backend.score([prompt], [gen.token_ids])
        bad = np.nonzero(sc.argmax_ids != np.asarray(gen.token_ids))[0]
        whole += len(bad) == 0
        if len(bad):
            score_gap = top2_gaps(backend, prompt, gen.token_ids)
            for pos in bad:
                gen_gap = float(gen.top_logprobs[pos, 0] - gen.top_logprobs[pos, 1])
                mismatches.append(
                    {
                        "prompt": i,
                        "pos": int(pos),
                        "gen_gap": gen_gap,
                        "score_gap": float(score_gap[pos]),
                    }
                )
    return whole, mismatches


def print_mismatches(mismatches: list[dict[str, float]]) -> None:
    for m in mismatches:
        gaps = f"{m['gen_gap']:.3f} (generate) / {m['score_gap']:.3f} (score)"
        print(f"  prompt {m['prompt']} pos {m['pos']}: top-1/top-2 gap {gaps}")


def float32_reference(asset: str, models_dir: Path) -> Backend:
    """The transformers backend on float32 weights dequantised from the same GGUF, in memory.

    Same dequantisation as ``assets.hf_checkpoint`` (transformers' GGUF reader), without writing
    a float32 folder (6 GB for the 1.5B model) and without ``accelerate``, which transformers
    demands for ``from_pretrained(gguf_file=…)`` only.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    from asd_core.models import assets
    from asd_core.models.hf import TransformersBackend

    gguf = real_gguf(models_dir, asset)
    config = AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    tensors = load_gguf_checkpoint(str(gguf), return_tensors=True, model_to_load=model)["tensors"]
    missing, unexpected = model.load_state_dict(
        {k: torch.as_tensor(v) for k, v in tensors.items()}, strict=False
    )
    assert not unexpected and set(missing) <= {
        "lm_head.weight"
    }  # lm_head is tied to the embeddings
    model.tie_weights()
    tokenizer = AutoTokenizer.from_pretrained(
        assets.tokenizer_dir(assets.get_asset(asset), models_dir)
    )
    # one thread: torch's two-thread barriers slow down ~5x when another process holds a core
    ref_stage = StageConfig(
        name="ref", source="<in memory>", runtime="transformers", dtype="float32", threads=1
    )
    return TransformersBackend(ref_stage, models_dir, model=model, tokenizer=tokenizer)


def runtime_agreement(
    backend: LlamaCppBackend, reference: Backend, n_new: int
) -> tuple[int, list[dict[str, Any]], np.ndarray]:
    """Greedy tokens of both runtimes, prompt by prompt.

    Returns the prompts equal throughout, one record per diverging prompt (at its first
    divergence: later tokens follow different prefixes) and the |log-prob| differences of the
    chosen token over the shared prefixes, nats.
    """
    same, shifts = 0, []
    divergences: list[dict[str, Any]] = []
    params = GenerationParams(max_new_tokens=n_new)
    for i, text in enumerate(PROMPTS):
        prompt = chat(backend.tokenizer, text)
        (a,) = backend.generate([prompt], params)
        (b,) = reference.generate([prompt], params)
        n = min(a.n_out, b.n_out)
        diff = [j for j in range(n) if a.token_ids[j] != b.token_ids[j]]
        j = diff[0] if diff else n
        shifts.append(np.abs(a.logprobs[:j] - b.logprobs[:j]))
        if not diff and a.n_out == b.n_out:
            same += 1
        elif not diff:  # one runtime stopped on a token the other's EOS set lacks
            divergences.append({"prompt": i, "pos": n, "eos_set": True})
        else:
            divergences.append(
                {
                    "prompt": i,
                    "pos": j,
                    "eos_set": False,
                    "llamacpp_gap": float(a.top_logprobs[j, 0] - a.top_logprobs[j, 1]),
                    "transformers_gap": float(b.top_logprobs[j, 0] - b.top_logprobs[j, 1]),
                }
            )
    return same, divergences, np.concatenate(shifts)


# -- errors that need no weights ---------------------------------------------------------------
def test_missing_gguf_is_one_line_error(tmp_path: Path) -> None:
    bad = StageConfig(name="x", source=str(tmp_path / "nope.gguf"), runtime="llamacpp")
    with pytest.raises(AsdError, match="not found") as err:
        LlamaCppBackend(bad, tmp_path)
    assert "\n" not in str(err.value)


def test_corrupt_gguf_is_one_line_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.gguf"
    path.write_bytes(b"GGUF" + bytes(range(256)) * 64)
    with pytest.raises(AsdError, match="cannot load") as err:
        LlamaCppBackend(StageConfig(name="x", source=str(path), runtime="llamacpp"), tmp_path)
    assert "\n" not in str(err.value)


# -- SmolLM2 -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def smol(models_dir: Path):
    real_gguf(models_dir, SMOL)
    backend = load_backend(stage(SMOL), models_dir)
    yield backend
    backend.close()


@pytest.mark.integration
def test_satisfies_protocol(smol) -> None:
    assert isinstance(smol, LlamaCppBackend) and isinstance(smol, Backend)
    assert smol.info.runtime == "llamacpp" and smol.info.dtype == "Q4_1"
    assert smol.tokenizer.eos_token_id in smol.eos


@pytest.mark.integration
def test_generation_shapes_and_units(smol) -> None:
    prompt = chat(smol.tokenizer, PROMPTS[3])
    (gen,) = smol.generate([prompt], GenerationParams(max_new_tokens=24, top_k=4))
    n = gen.n_out
    assert 1 <= n <= 24 and gen.prompt_ids == prompt
    assert gen.logprobs.shape == (n,) and gen.entropy.shape == (n,)
    assert gen.top_ids.shape == (n, 4) and gen.top_logprobs.shape == (n, 4)
    assert gen.logprobs.dtype == np.float32 and gen.top_ids.dtype == np.int64
    assert (gen.logprobs <= 0).all() and (gen.entropy >= 0).all()
    assert (np.diff(gen.top_logprobs, axis=1) <= 0).all()
    assert (gen.top_ids[:, 0] == np.asarray(gen.token_ids)).all()  # greedy = top-1
    np.testing.assert_allclose(gen.top_logprobs[:, 0], gen.logprobs, atol=1e-6)
    assert 0 < gen.prefill_s <= gen.total_s
    assert gen.text == smol.tokenizer.decode(gen.token_ids, skip_special_tokens=True)
    if gen.stop_reason == "eos":
        assert gen.token_ids[-1] in smol.eos  # EOS is part of the output
    assert gen.hidden_mean is None


@pytest.mark.integration
def test_max_new_tokens_is_respected(smol) -> None:
    prompt = chat(smol.tokenizer, PROMPTS[0])  # a long answer
    (gen,) = smol.generate([prompt], GenerationParams(max_new_tokens=7))
    assert gen.n_out == 7 and gen.stop_reason == "length"


@pytest.mark.integration
def test_ignore_eos_gives_exact_length_and_raw_statistics(smol) -> None:
    prompt = chat(smol.tokenizer, PROMPTS[5])  # a short answer that ends with EOS
    (free,) = smol.generate([prompt], GenerationParams(max_new_tokens=32))
    assert free.stop_reason == "eos"
    (full,) = smol.generate(
        [prompt], GenerationParams(max_new_tokens=free.n_out + 6, ignore_eos=True)
    )
    assert full.n_out == free.n_out + 6 and full.stop_reason == "length"
    assert not set(full.token_ids) & smol.eos
    k = free.n_out - 1  # where the model wanted to stop: EOS stays top-1 in the statistics
    assert full.token_ids[:k] == free.token_ids[:k]
    assert full.top_ids[k, 0] == free.token_ids[k] and full.token_ids[k] != free.token_ids[k]
    assert full.logprobs[k] < full.top_logprobs[k, 0]


@pytest.mark.integration
def test_stop_string_cuts_output(smol) -> None:
    prompt = chat(smol.tokenizer, PROMPTS[0])
    (free,) = smol.generate([prompt], GenerationParams(max_new_tokens=40))
    stop = "(n"  # "is_prime(n" appears in the written function
    assert stop in free.text
    (cut,) = smol.generate(
        [prompt], GenerationParams(max_new_tokens=40, stop_strings=("zzz", stop))
    )
    assert cut.stop_reason == "stop" and stop in cut.text
    assert cut.token_ids == free.token_ids[: cut.n_out]
    assert stop not in smol.tokenizer.decode(cut.token_ids[:-1], skip_special_tokens=True)


def batch_divergences(batch: list[Any], single: list[Any]) -> tuple[int, list[dict[str, float]]]:
    """Outputs equal throughout, and the top-1/top-2 gap of both runs at each first divergence."""
    same, found = 0, []
    for i, (a, b) in enumerate(zip(batch, single, strict=True)):
        n = min(a.n_out, b.n_out)
        diff = [j for j in range(n) if a.token_ids[j] != b.token_ids[j]]
        if not diff and a.n_out == b.n_out:
            same += 1
            continue
        j = diff[0] if diff else n - 1
        gaps = [float(g.top_logprobs[j, 0] - g.top_logprobs[j, 1]) for g in (a, b)]
        found.append({"prompt": i, "pos": j, "gap": min(gaps)})
    return same, found


@pytest.mark.integration
def test_batch_equals_one_at_a_time_up_to_near_ties(smol) -> None:
    prompts = [chat(smol.tokenizer, t) for t in PROMPTS]
    params = GenerationParams(max_new_tokens=32)
    batch = smol.generate(prompts, params)
    single = [smol.generate([p], params)[0] for p in prompts]
    same, found = batch_divergences(batch, single)
    print(f"\n[llamacpp {SMOL}] batch of {len(prompts)} vs one at a time: {same} equal")
    for d in found:
        print(f"  prompt {d['prompt']} pos {d['pos']}: top-1/top-2 gap {d['gap']:.3f}")
    assert all(d["gap"] < SELF_GAP for d in found)
    assert same >= len(prompts) // 2
    for a, b in zip(batch, single, strict=True):  # same statistics where the tokens agree
        n = next((j for j in range(min(a.n_out, b.n_out)) if a.token_ids[j] != b.token_ids[j]), 0)
        np.testing.assert_allclose(a.logprobs[:n], b.logprobs[:n], atol=0.3)
        assert 0 < a.prefill_s <= a.total_s


@pytest.mark.integration
def test_more_prompts_than_slots_take_turns(models_dir: Path) -> None:
    two = LlamaCppBackend(stage(SMOL).model_copy(update={"max_batch": 2}), models_dir)
    try:
        prompts = [chat(two.tokenizer, t) for t in PROMPTS[:5]]
        params = GenerationParams(max_new_tokens=16)
        start = time.perf_counter()
        batch = two.generate(prompts, params)
        wall = time.perf_counter() - start
        single = [two.generate([p], params)[0] for p in prompts]
    finally:
        two.close()
    same, found = batch_divergences(batch, single)
    assert all(d["gap"] < SELF_GAP for d in found) and same >= 3
    # each output's time is its share of the decode calls: the shares add up to the wall time
    assert sum(g.total_s for g in batch) == pytest.approx(wall, rel=0.2)


@pytest.mark.integration
def test_scoring_batched_equals_alone(smol) -> None:
    prompts = [chat(smol.tokenizer, t) for t in PROMPTS[:4]]
    gens = smol.generate(prompts, GenerationParams(max_new_tokens=20, ignore_eos=True))
    conts = [g.token_ids[: 12 + i] for i, g in enumerate(gens)]
    batch = smol.score(prompts, conts, top_k=2)
    for p, c, b in zip(prompts, conts, batch, strict=True):
        (alone,) = smol.score([p], [c], top_k=2)
        np.testing.assert_allclose(b.logprobs, alone.logprobs, atol=0.3)
        assert b.top_logprobs is not None
        gap = b.top_logprobs[:, 0] - b.top_logprobs[:, 1]
        differ = np.append(b.argmax_ids, b.next_argmax) != np.append(
            alone.argmax_ids, alone.next_argmax
        )
        assert (gap[differ] < SELF_GAP).all()


@pytest.mark.integration
def test_verification_reuses_the_prompt_it_generated_for(models_dir: Path) -> None:
    backend = LlamaCppBackend(stage(SMOL), models_dir)
    try:
        prompt = chat(backend.tokenizer, PROMPTS[0])
        (gen,) = backend.generate([prompt], GenerationParams(max_new_tokens=24))
        draft = gen.token_ids[:10] + [gen.token_ids[10] + 1] + gen.token_ids[11:]
        before = backend.tokens_fed
        (reused,) = backend.score([prompt], [draft])
        fed_reused = backend.tokens_fed - before
        backend.stage = backend.stage.model_copy(update={"reuse_prompts": False})
        before = backend.tokens_fed
        (fresh,) = backend.score([prompt], [draft])
        fed_fresh = backend.tokens_fed - before
    finally:
        backend.close()
    assert fed_reused == len(draft) + 1  # the last prompt token (its row is needed) + the draft
    assert fed_fresh == len(prompt) + len(draft)
    # the reused keys/values come from a pass of another shape: the same greedy tokens, and
    # log-probs within the kernels' rounding where they matter (measured: up to 0.26 nats on
    # tokens above e^-10 after the wrong token on an idle machine, 0.36 with both cores busy,
    # 0.47 on one at e^-26)
    np.testing.assert_array_equal(reused.argmax_ids, fresh.argmax_ids)
    likely = fresh.logprobs > -10
    np.testing.assert_allclose(reused.logprobs[likely], fresh.logprobs[likely], atol=0.5)


@pytest.mark.integration
def test_scoring_until_the_first_mismatch_stops_there(smol) -> None:
    prompt = chat(smol.tokenizer, PROMPTS[0])
    (gen,) = smol.generate([prompt], GenerationParams(max_new_tokens=120, ignore_eos=True))
    draft = list(gen.token_ids)
    draft[5] = (draft[5] + 1) % smol.n_vocab  # the verifier disagrees at row 5 at the latest
    smol.stage = smol.stage.model_copy(update={"reuse_prompts": False})
    try:
        before = smol.tokens_fed
        (early,) = smol.score([prompt], [draft], top_k=2, until_mismatch=True)
        fed = smol.tokens_fed - before
        (full,) = smol.score([prompt], [draft], top_k=2)
    finally:
        smol.stage = smol.stage.model_copy(update={"reuse_prompts": True})
    first = int(np.flatnonzero(full.argmax_ids != np.asarray(draft))[0])
    assert first <= 5
    assert fed == len(prompt) + 31  # the prompt, then 32 rows of logits, not the whole draft
    n = 32  # rows computed: the last prompt token's and 31 draft tokens'
    # the same rows from passes of other shapes: equal greedy tokens, log-probs within rounding
    np.testing.assert_array_equal(early.argmax_ids[:n], full.argmax_ids[:n])
    np.testing.assert_allclose(early.logprobs[:n], full.logprobs[:n], atol=0.3)
    assert (early.argmax_ids[n:] == -1).all() and np.isnan(early.logprobs[n:]).all()
    assert early.next_argmax == -1


@pytest.mark.integration
def test_hidden_state_is_pooled(smol) -> None:
    prompt = chat(smol.tokenizer, PROMPTS[4])
    (plain,) = smol.generate([prompt], GenerationParams(max_new_tokens=8))
    (gen,) = smol.generate([prompt], GenerationParams(max_new_tokens=8, return_hidden=True))
    assert gen.hidden_mean is not None and gen.hidden_mean.shape == (smol.n_embd,)
    assert gen.hidden_mean.dtype == np.float32 and np.isfinite(gen.hidden_mean).all()
    assert gen.token_ids == plain.token_ids
    (again,) = smol.generate([prompt], GenerationParams(max_new_tokens=8))  # embeddings off again
    np.testing.assert_array_equal(again.logprobs, plain.logprobs)


@pytest.mark.integration
def test_score_zero_length_continuation(smol) -> None:
    prompt = chat(smol.tokenizer, PROMPTS[1])
    (gen,) = smol.generate([prompt], GenerationParams(max_new_tokens=3))
    (sc,) = smol.score([prompt], [[]])
    assert sc.argmax_ids.shape == (0,) and sc.logprobs.shape == (0,)
    assert sc.next_argmax == gen.token_ids[0] and sc.seconds > 0


@pytest.mark.integration
def test_score_units_and_next_token(smol) -> None:
    prompt = chat(smol.tokenizer, PROMPTS[2])
    (gen,) = smol.generate([prompt], GenerationParams(max_new_tokens=10, ignore_eos=True))
    cont = gen.token_ids[:6]
    (sc,) = smol.score([prompt], [cont])
    assert sc.argmax_ids.shape == (6,) and sc.argmax_ids.dtype == np.int64
    assert sc.logprobs.shape == (6,) and (sc.logprobs <= 0).all()
    np.testing.assert_allclose(sc.logprobs, gen.logprobs[:6], atol=0.3)  # kernels differ a little
    two = smol.score([prompt, prompt], [cont, cont[:2]])
    np.testing.assert_array_equal(two[0].argmax_ids, sc.argmax_ids)
    assert two[1].next_argmax == sc.argmax_ids[2]


@pytest.mark.integration
def test_score_chunking_does_not_change_results(smol, monkeypatch: pytest.MonkeyPatch) -> None:
    prompt = chat(smol.tokenizer, PROMPTS[0])
    (gen,) = smol.generate([prompt], GenerationParams(max_new_tokens=30, ignore_eos=True))
    (whole,) = smol.score([prompt], [gen.token_ids])  # one chunk
    # chunks of 7 put the first logits row mid-chunk and split the continuation; no chunk has a
    # single token, which llama.cpp would run through its (slightly different) one-token kernels
    assert (len(prompt) + 30) % 7 != 1
    monkeypatch.setattr(smol.slots, "n_batch", 7)
    (chunked,) = smol.score([prompt], [gen.token_ids])
    np.testing.assert_array_equal(chunked.argmax_ids, whole.argmax_ids)
    np.testing.assert_array_equal(chunked.logprobs, whole.logprobs)
    assert chunked.next_argmax == whole.next_argmax


@pytest.mark.integration
def test_bad_inputs_raise_asd_error(smol) -> None:
    params = GenerationParams(max_new_tokens=8)
    with pytest.raises(AsdError, match="empty"):
        smol.generate([[]], params)
    with pytest.raises(AsdError, match="context length"):
        smol.generate([[1] * 2045], params)
    with pytest.raises(AsdError, match="empty"):
        smol.score([[]], [[1]])
    with pytest.raises(AsdError, match="context length"):
        smol.score([[1] * 2000], [[1] * 49])
    with pytest.raises(AsdError, match="continuations"):
        smol.score([[1]], [])


@pytest.mark.integration
def test_close_frees_and_guards(models_dir: Path) -> None:
    backend = LlamaCppBackend(stage(SMOL, context_length=64), models_dir)
    prompt = chat(backend.tokenizer, "hi")
    backend.close()
    backend.close()  # idempotent
    with pytest.raises(AsdError, match="after close"):
        backend.generate([prompt], GenerationParams(max_new_tokens=2))
    with pytest.raises(AsdError, match="after close"):
        backend.score([prompt], [[1]])


@pytest.mark.integration
def test_own_greedy_output_is_accepted(smol) -> None:
    whole, mismatches = self_acceptance(smol, 64)
    print(f"\n[llamacpp {SMOL}] self-acceptance: {whole}/{len(PROMPTS)} outputs accepted whole")
    print_mismatches(mismatches)
    assert all(min(m["gen_gap"], m["score_gap"]) < SELF_GAP for m in mismatches)
    assert whole >= len(PROMPTS) // 2


@pytest.mark.integration
def test_agrees_with_transformers_float32(smol, models_dir: Path) -> None:
    check_runtime_agreement(smol, SMOL, models_dir)


def check_runtime_agreement(backend: LlamaCppBackend, asset: str, models_dir: Path) -> None:
    """5b: greedy agreement with transformers float32, and the same pooled hidden state."""
    reference = float32_reference(asset, models_dir)
    try:
        same, divergences, shifts = runtime_agreement(backend, reference, 48)
        cosines = []
        for text in PROMPTS[:3]:
            prompt = chat(backend.tokenizer, text)
            params = GenerationParams(max_new_tokens=6, ignore_eos=True, return_hidden=True)
            (a,), (b,) = backend.generate([prompt], params), reference.generate([prompt], params)
            if a.token_ids == b.token_ids:  # same positions pooled
                assert a.hidden_mean is not None and b.hidden_mean is not None
                cos = a.hidden_mean @ b.hidden_mean
                cosines.append(cos / np.linalg.norm(a.hidden_mean) / np.linalg.norm(b.hidden_mean))
    finally:
        reference.close()
    n = len(PROMPTS)
    print(f"\n[llamacpp {asset}] vs transformers float32: {same}/{n} prompts agree on 48 tokens")
    for d in divergences:
        where = f"  prompt {d['prompt']} pos {d['pos']}:"
        if d["eos_set"]:
            print(where, "one runtime stopped on an EOS the other lacks")
        else:
            gaps = (
                f"{d['llamacpp_gap']:.3f} (llama.cpp) / {d['transformers_gap']:.3f} (transformers)"
            )
            print(where, "top-1/top-2 gap", gaps)
    q = np.round(np.quantile(shifts, [0.5, 0.9, 1.0]), 3).tolist()
    print("  |dlogprob| of chosen tokens on shared prefixes (median, p90, max):", q)
    print("  cosine of pooled hidden states:", np.round(cosines, 4).tolist())
    assert all(
        d["eos_set"] or min(d["llamacpp_gap"], d["transformers_gap"]) < RUNTIME_GAP
        for d in divergences
    )
    # both are the final hidden state after the last norm; Q4 activation rounding moves it little
    assert cosines and min(cosines) > 0.99


# -- Qwen2.5-Coder -------------------------------------------------------------------------------
@pytest.fixture(scope="module", params=QWEN)
def qwen(request: pytest.FixtureRequest, models_dir: Path):
    real_gguf(models_dir, request.param)
    backend = LlamaCppBackend(stage(request.param), models_dir)
    yield request.param, backend
    backend.close()


@pytest.mark.slow
def test_qwen_generation_and_self_acceptance(qwen) -> None:
    asset, backend = qwen
    assert backend.info.dtype == "Q4_K_M"
    whole, mismatches = self_acceptance(backend, 64)
    print(f"\n[llamacpp {asset}] self-acceptance: {whole}/{len(PROMPTS)} outputs accepted whole")
    print_mismatches(mismatches)
    assert all(min(m["gen_gap"], m["score_gap"]) < SELF_GAP for m in mismatches)


@pytest.mark.slow
def test_qwen_agrees_with_transformers_float32(qwen, models_dir: Path) -> None:
    asset, backend = qwen
    check_runtime_agreement(backend, asset, models_dir)


@pytest.mark.integration
def test_next_logprobs_match_scoring_and_a_one_letter_choice(smol) -> None:
    from asd_core.decoding.choice import choose, option_token_ids

    letters = ("A", "B", "C", "D")
    ids = option_token_ids(smol.tokenizer, letters)
    prompt = chat(smol.tokenizer, PROMPTS[5])  # a multiple-choice question
    (nxt,) = smol.next_logprobs([prompt], ids)
    scored = [smol.score([prompt], [[t]])[0].logprobs[0] for t in ids]
    np.testing.assert_allclose(nxt.logprobs, scored, atol=1e-4)  # same pass, same logits
    (first,) = smol.generate([prompt], GenerationParams(max_new_tokens=1))
    assert nxt.argmax == first.token_ids[0]
    (picked,) = choose(smol, [prompt], letters)
    assert picked.text == letters[int(np.argmax(nxt.logprobs))]


@pytest.mark.integration
def test_a_shared_prompt_prefix_is_prefilled_once_and_copied(models_dir: Path) -> None:
    backend = LlamaCppBackend(stage(SMOL).model_copy(update={"max_batch": 3}), models_dir)
    task = "Answer the following question truthfully in one short sentence.\n\nQuestion: "
    questions = ["What is the capital of France?", "Why is the sky blue?", "Who wrote Hamlet?"]
    try:
        prompts = [chat(backend.tokenizer, task + q) for q in questions + ["What is rust?"]]
        shared = min(llamacpp_slots.common_prefix(prompts[0], p) for p in prompts[1:])
        params = GenerationParams(max_new_tokens=16, top_k=2, ignore_eos=True)  # equal lengths
        outputs, fed = {}, {}
        for reuse in (False, True):
            backend.stage = backend.stage.model_copy(update={"reuse_prompts": reuse})
            before = backend.tokens_fed
            outputs[reuse] = backend.generate(prompts, params)  # 4 prompts, 3 slots: one waits
            fed[reuse] = backend.tokens_fed - before
        letters = [backend.tokenizer.encode(x)[0] for x in "ABCD"]
        backend.stage = backend.stage.model_copy(update={"reuse_prompts": True})
        choices = backend.next_logprobs(prompts, letters)
        backend.stage = backend.stage.model_copy(update={"reuse_prompts": False})
        alone = backend.next_logprobs(prompts, letters)
    finally:
        backend.close()
    assert shared >= llamacpp_slots.MIN_SHARED
    # prefilled once, not 4 times; the prompt that waited for a slot may take over the shared
    # slot itself and keep more (its question starts like the first one's)
    most = sum(llamacpp_slots.common_prefix(prompts[0], p) for p in prompts[1:])
    assert (len(prompts) - 1) * shared <= fed[False] - fed[True] <= most
    same, found = batch_divergences(outputs[True], outputs[False])
    print(f"\n[llamacpp {SMOL}] shared prefix of {shared} tokens: {same} of 4 outputs equal")
    assert all(d["gap"] < SELF_GAP for d in found) and same >= 3
    for a, b in zip(choices, alone, strict=True):
        np.testing.assert_allclose(a.logprobs, b.logprobs, atol=0.05)
    assert all(g.prefill_s > 0 for g in outputs[True])


def test_extra_weight_buffers_are_off_where_the_cpu_advertises_amx(monkeypatch) -> None:
    """AMX advertised in a VM without the tile state crashes every multi-token batch."""
    from asd_core.models.llamacpp_load import extra_buffers_allowed

    monkeypatch.delenv("ASD_LLAMA_EXTRA_BUFFERS", raising=False)
    assert extra_buffers_allowed("flags : fpu avx2 avx512f") is True
    assert extra_buffers_allowed("flags : fpu avx512f amx_bf16 amx_tile amx_int8") is False
    monkeypatch.setenv("ASD_LLAMA_EXTRA_BUFFERS", "1")
    assert extra_buffers_allowed("flags : amx_tile") is True
    monkeypatch.setenv("ASD_LLAMA_EXTRA_BUFFERS", "0")
    assert extra_buffers_allowed("flags : avx2") is False
