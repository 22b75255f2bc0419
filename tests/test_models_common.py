"""Pure helpers behind every backend, and stage-source resolution."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from asd_core.ground.config import StageConfig
from asd_core.ground.errors import AsdError, ConfigError
from asd_core.models import registry
from asd_core.models.common import check_prompts, eos_ids, hit_stop_string, token_stats
from asd_core.models.tiny import TinySpec
from tests.tolerance import F32_ULPS, ulps


@settings(max_examples=50, deadline=None)
@given(
    arrays(
        np.float32,
        st.tuples(st.integers(1, 5), st.integers(2, 40)),
        elements=st.floats(-30, 30, width=32),
    )
)
def test_token_stats_match_definitions(logits: np.ndarray) -> None:
    chosen = logits.argmax(axis=1)
    lp, top_ids, top_lp, ent = token_stats(logits, chosen, top_k=3)
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    # float32 log-softmax two ways: rounding scales with the largest |logit| (≤ 30 here), and
    # the entropy sums up to 40 such terms
    tol = ulps(np.float32, F32_ULPS, scale=30.0)
    np.testing.assert_allclose(lp, np.log(p[np.arange(len(p)), chosen]), atol=tol)
    np.testing.assert_allclose(ent, -(p * np.log(np.clip(p, 1e-30, 1))).sum(1), atol=40 * tol)
    assert (lp <= 1e-6).all() and (ent >= -1e-5).all()
    assert (np.diff(top_lp, axis=1) <= 1e-6).all()  # sorted, most probable first
    np.testing.assert_allclose(top_lp[:, 0], lp, atol=1e-5)  # greedy token is the top-1


def test_token_stats_empty_and_uniform() -> None:
    lp, ids, tlp, ent = token_stats(np.zeros((0, 7)), np.zeros(0, int), 3)
    assert lp.shape == (0,) and ids.shape == (0, 3) and ent.shape == (0,)
    _, _, _, ent = token_stats(np.zeros((1, 8)), np.array([0]), 3)
    assert ent[0] == pytest.approx(np.log(8), rel=1e-5)


def test_eos_and_stop_helpers() -> None:
    assert eos_ids(2, [2, 5], None) == {2, 5}
    assert hit_stop_string("a\n```\n", ["```"]) and not hit_stop_string("abc", ["", "x"])


def test_check_prompts_rejects_empty_and_overlong() -> None:
    check_prompts([[1, 2, 3]], 10, 7, "s")
    with pytest.raises(AsdError, match="prompt 0 is empty"):
        check_prompts([[]], 10, 1, "s")
    with pytest.raises(AsdError, match="more than the context length 10"):
        check_prompts([[1], [1] * 8], 10, 3, "s")


def test_tiny_spec_parsing() -> None:
    spec = TinySpec.parse("tiny:layers:3,hidden:64,seed:7,tokenizer:bpe")
    assert (spec.layers, spec.hidden, spec.seed, spec.tokenizer) == (3, 64, 7, "bpe")
    for bad in ("tiny:layers", "tiny:depth:2", "tiny:hidden:48,heads:2", "tiny:tokenizer:word"):
        with pytest.raises(ConfigError):
            TinySpec.parse(bad)


def _stage(source: str, runtime: str = "transformers") -> StageConfig:
    return StageConfig(name="s", source=source, runtime=runtime)  # type: ignore[arg-type]


def test_resolve_sources(tmp_path: Path) -> None:
    hub = registry.resolve(_stage("Qwen/Qwen2.5-7B-Instruct", "vllm"), tmp_path, "hf")
    assert hub.weights == "Qwen/Qwen2.5-7B-Instruct" and not hub.is_gguf
    online_gguf = registry.resolve(_stage("org/repo:model.Q4.gguf", "llamacpp"), tmp_path, "gguf")
    assert online_gguf.is_gguf and online_gguf.tokenizer == "org/repo"
    with pytest.raises(AsdError, match="not found"):
        registry.resolve(_stage(str(tmp_path / "missing.gguf"), "llamacpp"), tmp_path, "gguf")
    with pytest.raises(AsdError, match="not a model folder"):
        registry.resolve(_stage(str(tmp_path)), tmp_path, "hf")
    with pytest.raises(ConfigError, match="tiny models run on"):
        registry.resolve(_stage("tiny:layers:1", "llamacpp"), tmp_path, "gguf")
    with pytest.raises(AsdError, match="unknown embedded model"):
        registry.resolve(_stage("package:nope"), tmp_path, "hf")


def test_unknown_runtime_module_is_clear() -> None:
    stage = StageConfig.model_construct(name="s", source="x", runtime="onnx")
    with pytest.raises(ConfigError, match="unknown runtime 'onnx'"):
        registry.load_backend(stage)


@pytest.mark.parametrize("scale", [0.05, 3.0, 40.0, 2000.0])
def test_top_k_matches_a_full_sort_for_flat_and_peaked_rows(scale: float) -> None:
    rng = np.random.default_rng(int(scale * 10))
    logits = (rng.standard_normal((3, 50_000)) * scale).astype(np.float32)
    _, top_ids, top_lp, _ = token_stats(logits, logits.argmax(1), top_k=7)
    expected = np.argsort(-logits, axis=1, kind="stable")[:, :7]
    np.testing.assert_array_equal(
        np.take_along_axis(logits, top_ids, 1), np.take_along_axis(logits, expected, 1)
    )
    assert (np.diff(top_lp, axis=1) <= 0).all()


def test_cut_output_rules() -> None:
    from asd_core.models.common import cut_output

    letters = {1: "a", 2: "b", 3: "c", 9: ""}  # 9 is EOS and decodes to nothing

    def decode(ids: list[int]) -> str:
        return "".join(letters[i] for i in ids)

    eos = frozenset({9})
    assert cut_output([1, 2, 9, 3], eos, (), decode, False, 10) == ([1, 2, 9], "eos")
    assert cut_output([1, 2, 9, 3], eos, (), decode, True, 3) == ([1, 2, 9], "length")
    assert cut_output([1, 2, 3, 1], eos, ("bc",), decode, False, 10) == ([1, 2, 3], "stop")
    assert cut_output([1, 9, 2, 3], eos, ("bc",), decode, False, 10) == ([1, 9], "eos")
    assert cut_output([1, 9, 2, 3], eos, ("bc",), decode, True, 10) == ([1, 9, 2, 3], "stop")
    assert cut_output([1, 2], eos, ("zz",), decode, False, 10) == ([1, 2], "length")
    assert cut_output([], eos, ("zz",), decode, False, 10) == ([], "length")
