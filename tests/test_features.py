"""Features of a stage output (docs/design.md §4): each feature on hand-made arrays, and the vector."""

from __future__ import annotations

import math
import time

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from asd_core.ground.errors import AsdError
from asd_core.learning import features as fe
from asd_core.learning.features import FeatureSet, StageView
from asd_core.models.base import Generation
from benchmarks.features import synthetic_frame

LOG = np.log  # readability: log-probabilities written as LOG(p)


def f32(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32)


# -- single features ----------------------------------------------------------------------------
def test_prompt_length_counts_tokens():
    assert fe.prompt_length(np.array([5, 6, 7])) == 3.0
    assert fe.prompt_length(np.array([], dtype=np.int64)) == 0.0


def test_prompt_tail_entropy_reads_only_the_last_32_tokens():
    assert fe.prompt_tail_entropy(np.array([], dtype=np.int64)) == 0.0
    assert fe.prompt_tail_entropy(np.array([9] * 50)) == 0.0
    assert fe.prompt_tail_entropy(np.array([1, 1, 2, 2])) == pytest.approx(math.log(2))
    # 100 copies of one id, then 32 distinct ids: only the distinct tail counts
    prompt = np.array([7] * 100 + list(range(32)))
    assert fe.prompt_tail_entropy(prompt) == pytest.approx(math.log(32))
    # the first 8 of 40 distinct ids fall outside the window
    assert fe.prompt_tail_entropy(np.arange(40)) == pytest.approx(math.log(32))


def test_task_one_hot_and_unknown_task():
    assert fe.task_one_hot("asdiv").tolist() == [0, 0, 1, 0, 0]
    with pytest.raises(AsdError, match="unknown task 'wmt'"):
        fe.task_one_hot("wmt")


def test_length_ratio_floors_empty_prompts_at_one_token():
    assert fe.length_ratio(10, 5) == 2.0
    assert fe.length_ratio(3, 0) == 3.0
    assert fe.length_ratio(0, 7) == 0.0


def test_mean_and_min_logprob_with_floor():
    assert fe.mean_logprob(f32(-1.0, -3.0)) == pytest.approx(-2.0)
    assert fe.min_logprob(f32(-1.0, -3.0)) == pytest.approx(-3.0)
    # an impossible token (-inf) counts as the floor, so features stay finite
    assert fe.mean_logprob(f32(-np.inf, 0.0)) == pytest.approx(fe.LOGPROB_FLOOR / 2)
    assert fe.min_logprob(f32(-np.inf, 0.0)) == fe.LOGPROB_FLOOR


def test_mean_entropy():
    assert fe.mean_entropy(f32(0.5, 1.5, 1.0)) == pytest.approx(1.0)


def test_mean_top_margin_in_probability_space():
    top1 = LOG(f32(0.7, 0.9))
    top2 = LOG(f32(0.2, 0.05))
    assert fe.mean_top_margin(top1, top2) == pytest.approx(
        ((0.7 - 0.2) + (0.9 - 0.05)) / 2, abs=1e-6
    )
    # a runner-up that was not reported (-inf) has probability 0
    assert fe.mean_top_margin(LOG(f32(0.6)), f32(-np.inf)) == pytest.approx(0.6, abs=1e-6)


def test_uncertain_fraction_counts_top1_below_one_half():
    top1 = LOG(f32(0.9, 0.49, 0.51, 0.2))
    assert fe.uncertain_fraction(top1) == pytest.approx(0.5)


def test_stop_one_hot_and_unknown_reason():
    assert fe.stop_one_hot("length").tolist() == [0, 0, 1]
    with pytest.raises(AsdError, match="stop reason"):
        fe.stop_one_hot("timeout")


def test_stage_one_hot_and_out_of_range():
    assert fe.stage_one_hot(1, 3).tolist() == [0, 1, 0]
    with pytest.raises(AsdError, match="stage 3"):
        fe.stage_one_hot(3, 3)


def test_previous_acceptance_has_an_indicator_instead_of_nan():
    assert fe.previous_acceptance(0, math.nan) == (0.0, 0.0)
    assert fe.previous_acceptance(0, 0.7) == (0.0, 0.0)  # stage 0 was verified by nobody
    assert fe.previous_acceptance(1, math.nan) == (0.0, 0.0)  # e.g. the stage before was skipped
    assert fe.previous_acceptance(2, 0.25) == (0.25, 1.0)
    assert fe.previous_acceptance(1, 0.0) == (0.0, 1.0)  # a real 0, told apart by the indicator


def test_empty_output_features_are_finite_and_neutral():
    empty = np.zeros(0, dtype=np.float32)
    assert fe.mean_logprob(empty) == 0.0
    assert fe.min_logprob(empty) == 0.0
    assert fe.mean_entropy(empty) == 0.0
    assert fe.mean_top_margin(empty, empty) == 1.0
    assert fe.uncertain_fraction(empty) == 0.0


# -- the vector ---------------------------------------------------------------------------------
def make_view(n_out: int = 4, stage: int = 1, prev: float = 0.5, **kw) -> StageView:
    rng = np.random.default_rng(n_out)
    top1 = LOG(rng.uniform(0.3, 1.0, n_out)).astype(np.float32)
    args = {
        "prompt_ids": np.arange(20),
        "n_out": n_out,
        "logprobs": top1,
        "entropy": rng.uniform(0, 2, n_out).astype(np.float32),
        "top1_logprob": top1,
        "top2_logprob": top1 - 1.0,
        "stop_reason": "stop",
        "stage": stage,
        "task": "humaneval",
        "accepted_frac_prev": prev,
    }
    return StageView(**{**args, **kw})


def test_vector_layout_matches_names():
    fs = FeatureSet(n_stages=3)
    assert len(set(fs.names)) == len(fs.names) == fs.n_features
    assert fs.names == tuple(n for group in fs.groups.values() for n in group)
    assert list(fs.groups) == ["input", "output", "stage", "verification"]
    x = dict(zip(fs.names, fs.extract(make_view(n_out=8, prev=0.25)), strict=True))
    assert x["prompt_len_tokens"] == 20
    assert x["task_humaneval"] == 1 and x["task_mmlu"] == 0
    assert x["out_len_ratio"] == pytest.approx(8 / 20)
    assert x["stop_stop"] == 1 and x["stop_eos"] == 0
    assert (x["stage_0"], x["stage_1"], x["stage_2"]) == (0, 1, 0)
    assert (x["prev_accepted_frac"], x["prev_verified"]) == (0.25, 1)


def test_input_features_are_the_head_of_the_vector():
    fs = FeatureSet(n_stages=2)
    view = make_view(stage=0)
    x_in = fs.input_features(view.prompt_ids, view.task)
    assert x_in.dtype == np.float32 and len(x_in) == len(fs.input_names)
    np.testing.assert_array_equal(x_in, fs.extract(view)[: len(fs.input_names)])


def test_empty_output_gives_a_finite_vector():
    x = FeatureSet(3).extract(make_view(n_out=0))
    assert x.dtype == np.float32 and np.isfinite(x).all()


@settings(max_examples=60, deadline=None)
@given(
    n_out=st.integers(0, 50),
    n_in=st.integers(0, 80),
    stage=st.integers(0, 3),
    prev=st.one_of(st.just(math.nan), st.floats(0, 1)),
    logprobs=hnp.arrays(np.float32, 50, elements=st.floats(-1e4, 0, width=32) | st.just(-np.inf)),
)
def test_vector_is_always_finite(n_out, n_in, stage, prev, logprobs):
    lp = logprobs[:n_out]
    view = StageView(
        prompt_ids=np.arange(n_in) % 7,
        n_out=n_out,
        logprobs=lp,
        entropy=np.minimum(-lp, 12.0),  # an entropy is at most log(vocabulary size)
        top1_logprob=lp,
        top2_logprob=lp - 2.0,
        stop_reason="length",
        stage=stage,
        task="mmlu",
        accepted_frac_prev=prev,
    )
    x = FeatureSet(4).extract(view)
    assert x.shape == (FeatureSet(4).n_features,) and np.isfinite(x).all()


def _generation(n_out: int, seed: int) -> Generation:
    rng = np.random.default_rng(seed)
    top = np.sort(LOG(rng.dirichlet(np.ones(6), n_out)).astype(np.float32), axis=1)[:, ::-1]
    return Generation(
        prompt_ids=rng.integers(0, 1000, 40).tolist(),
        token_ids=rng.integers(0, 1000, n_out).tolist(),
        text="t",
        logprobs=np.ascontiguousarray(top[:, 0]),
        top_ids=rng.integers(0, 1000, (n_out, 6)),
        top_logprobs=np.ascontiguousarray(top[:, :5]),
        entropy=rng.uniform(0, 3, n_out).astype(np.float32),
        stop_reason="eos",
        prefill_s=0.1,
        total_s=0.2,
        hidden_mean=rng.normal(size=16).astype(np.float32),
    )


def test_parquet_row_and_live_generation_give_identical_vectors(tmp_path):
    """The datagen row of a Generation, through Parquet, extracts to the same bytes."""
    gens = [_generation(12, 1), _generation(0, 2), _generation(5, 3)]
    stages, prevs = [0, 1, 2], [math.nan, 0.75, 0.0]
    rows = []
    for k, (gen, prev) in enumerate(zip(gens, prevs, strict=True)):
        rows.append(
            {
                "item_id": "a",
                "task": "truthfulqa",
                "stage": k,
                "prompt_ids": np.asarray(gen.prompt_ids, dtype=np.int32),
                "token_ids": np.asarray(gen.token_ids, dtype=np.int32),
                "logprobs": gen.logprobs,
                "entropy": gen.entropy,
                "top1_logprob": gen.top_logprobs[:, 0].copy(),
                "top2_logprob": gen.top_logprobs[:, 1].copy(),
                "stop_reason": gen.stop_reason,
                "hidden_mean": None if k == 1 else gen.hidden_mean,
                "accepted_frac_prev": prev,
            }
        )
    path = tmp_path / "gen.parquet"
    pd.DataFrame(rows).to_parquet(path)
    df = pd.read_parquet(path)
    fs = FeatureSet(3)
    offline = fs.extract_frame(df)
    online = np.stack(
        [
            fs.extract(
                StageView.from_generation(g, stage=k, task="truthfulqa", accepted_frac_prev=p)
            )
            for g, k, p in zip(gens, stages, prevs, strict=True)
        ]
    )
    np.testing.assert_array_equal(offline, online)
    assert offline.dtype == np.float32 and offline.shape == (3, fs.n_features)


def test_view_from_generation_without_a_runner_up():
    gen = _generation(4, 5)
    gen.top_logprobs = gen.top_logprobs[:, :1]
    view = StageView.from_generation(gen, stage=0, task="mmlu")
    assert np.isneginf(view.top2_logprob).all()
    assert np.isfinite(FeatureSet(2).extract(view)).all()


def test_hidden_group_projects_each_stage_with_its_own_pca():
    df = synthetic_frame(40, n_stages=2, seed=3, hidden_dim=48)
    fs = FeatureSet(2, use_hidden=True)
    with pytest.raises(AsdError, match="not fitted"):
        fs.extract(StageView.from_row(df.iloc[0]))
    fitted = fs.fit_hidden(df)
    assert fitted.n_features == FeatureSet(2).n_features + fe.HIDDEN_DIMS
    assert fitted.names[-1] == "hidden_pc31"
    X = fitted.extract_frame(df)
    assert np.isfinite(X).all()
    # stage 1 states are wider (56 dims): the PCA per stage copes, and the mean maps to 0
    assert fitted.hidden is not None
    assert fitted.hidden.components[1].shape == (fe.HIDDEN_DIMS, 56)
    np.testing.assert_allclose(fitted.hidden.project(fitted.hidden.means[1], 1), 0, atol=1e-5)
    with pytest.raises(AsdError, match="no hidden_mean"):
        fitted.extract(StageView.from_row({**df.iloc[0].to_dict(), "hidden_mean": None}))


def test_extract_is_fast():
    """docs/design.md §4 budget is 0.3 ms per input; a loose guard against per-row pandas creeping in."""
    fs = FeatureSet(3)
    view = make_view(n_out=64, prompt_ids=np.arange(300))
    times = []
    for _ in range(300):
        start = time.perf_counter()
        fs.extract(view)
        times.append(time.perf_counter() - start)
    assert np.median(times) < 1e-3


def test_benchmark_runs_and_reports_each_step():
    from benchmarks.features import run

    result = run(repeats=5, n_in=64, n_out=16, n_members=1)
    assert set(result) == {
        "view_from_generation_ms",
        "extract_ms",
        "predict_ms",
        "predict_entry_ms",
    }
    assert all(0 < v < 100 for v in result.values())
