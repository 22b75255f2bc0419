"""Profiling: exact prompt lengths, the timed grid, and a cost fit that recovers a known law."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import pytest

from asd_core.ground import provenance
from asd_core.ground.config import StageConfig
from asd_core.ground.errors import AsdError
from asd_core.models.base import Generation, GenerationParams, Scoring, StageInfo
from asd_core.runs import profiling


class FakeClock:
    """A clock that only moves when told to."""

    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


class CharTokenizer:
    """One token per character (code point mod 50,000)."""

    eos_token_id = None

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [ord(c) % 50_000 for c in text]

    def decode(self, token_ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return "".join(chr(i) for i in token_ids)


class LinearBackend:
    """A backend whose clock advances by a known linear law.

    Generation: prefill (first token included) takes a + b·n_in + d, each further token d, so
    gen_s = a + b·n_in + d·n_out. Scoring takes sa + sb·(n_in + n_out). ``jitter`` adds a
    deterministic ±jitter seconds to every generation.
    """

    def __init__(self, name="fake", a=0.05, b=2e-4, d=0.01, sa=0.02, sb=5e-5, jitter=0.0, short=0):
        self.stage = StageConfig(name=name, source="fake", runtime="transformers")
        self.tokenizer = CharTokenizer()
        self.info = StageInfo(name, "transformers", "<fake>", "float32", 0.0)
        self.clock = FakeClock()
        self.a, self.b, self.d, self.sa, self.sb = a, b, d, sa, sb
        self.jitter = jitter
        self.short = short  # tokens to drop from every output (a backend that ignores ignore_eos)
        self.generated: list[tuple[list[int], int]] = []  # (prompt, max_new_tokens) per call
        self.scored: list[tuple[list[int], list[int]]] = []
        self.closed = False
        self._calls = 0

    def generate(self, prompts, params: GenerationParams) -> list[Generation]:
        assert params.ignore_eos
        out = []
        for p in prompts:
            self._calls += 1
            n_out = params.max_new_tokens - self.short
            start = self.clock()
            self.clock.advance(self.a + self.b * len(p) + self.d)
            prefill = self.clock() - start
            wobble = self.jitter * (1 if self._calls % 2 else -1)
            self.clock.advance(self.d * (n_out - 1) + wobble)
            self.generated.append((list(p), params.max_new_tokens))
            out.append(
                Generation(
                    prompt_ids=list(p),
                    token_ids=[7] * n_out,
                    text="x" * n_out,
                    logprobs=np.zeros(n_out, np.float32),
                    top_ids=np.zeros((n_out, 1), np.int64),
                    top_logprobs=np.zeros((n_out, 1), np.float32),
                    entropy=np.zeros(n_out, np.float32),
                    stop_reason="length",
                    prefill_s=prefill,
                    total_s=self.clock() - start,
                )
            )
        return out

    def score(self, prompts, continuations) -> list[Scoring]:
        out = []
        for p, c in zip(prompts, continuations, strict=True):
            start = self.clock()
            self.clock.advance(self.sa + self.sb * (len(p) + len(c)))
            self.scored.append((list(p), list(c)))
            out.append(
                Scoring(
                    np.zeros(len(c), np.int64),
                    np.zeros(len(c), np.float32),
                    0,
                    self.clock() - start,
                )
            )
        return out

    def close(self) -> None:
        self.closed = True


IN, OUT = [16, 64, 128], [4, 16, 32]


# -- prompts --------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 5, 100, 4321])
@pytest.mark.parametrize("offset", [0, 37, 10_000])
def test_prompt_of_length_is_exact_real_text(n: int, offset: int) -> None:
    tok = CharTokenizer()
    ids = profiling.prompt_of_length(tok, n, offset=offset)
    assert len(ids) == n
    text = tok.decode(ids)
    assert text in profiling.PASSAGE * (n // len(profiling.PASSAGE) + 3)


def test_prompt_of_length_with_a_bpe_tokenizer() -> None:
    from asd_core.models.tiny import make_tokenizer

    tok = make_tokenizer("bpe")
    for n in (3, 50, 700):
        for offset in (0, 74):
            assert len(profiling.prompt_of_length(tok, n, offset=offset)) == n
    assert profiling.prompt_of_length(tok, 20, 0) != profiling.prompt_of_length(tok, 20, 37)


def test_prompt_of_length_rejects_nonpositive() -> None:
    with pytest.raises(ValueError, match="positive"):
        profiling.prompt_of_length(CharTokenizer(), 0)


# -- the timed grid -------------------------------------------------------------------------------


def test_run_order_is_seeded_blocked_and_complete() -> None:
    a = profiling.run_order(IN, OUT, 3, np.random.default_rng(5))
    b = profiling.run_order(IN, OUT, 3, np.random.default_rng(5))
    c = profiling.run_order(IN, OUT, 3, np.random.default_rng(6))
    assert a == b != c
    cells = sorted((i, o) for i in IN for o in OUT)
    for rep in range(3):
        block = [(i, o) for i, o, r in a if r == rep]
        assert sorted(block) == cells  # each repeat visits every cell once
    assert [(i, o) for i, o, _ in a[:9]] != [(i, o) for i in IN for o in OUT]  # not grid order


def test_measure_stage_rows_warmup_and_exact_lengths() -> None:
    be = LinearBackend()
    df = profiling.measure_stage(be, IN, OUT, repeats=2, warmup=2, progress=False, rng=1)
    assert list(df.columns) == [
        "stage", "runtime", "n_in", "n_out", "repeat", "order", "gen_s", "prefill_s", "score_s",
    ]  # fmt: skip
    assert len(df) == len(IN) * len(OUT) * 2
    assert (df.groupby(["n_in", "n_out"]).size() == 2).all()
    assert list(df["order"]) == list(range(len(df)))
    # warm-up runs come first, on the largest cell, and are not in the table
    assert len(be.generated) == len(df) + 2
    assert [(len(p), m) for p, m in be.generated[:2]] == [(max(IN), max(OUT))] * 2
    timed = be.generated[2:]
    assert [(len(p), m) for p, m in timed] == list(zip(df["n_in"], df["n_out"], strict=True))
    # scoring gets an n_out-token continuation after an n_in-token prompt
    assert [(len(p), len(c)) for p, c in be.scored[2:]] == list(
        zip(df["n_in"], df["n_out"], strict=True)
    )
    expected = 0.05 + 2e-4 * df["n_in"] + 0.01 * df["n_out"]
    np.testing.assert_allclose(df["gen_s"], expected, rtol=1e-9)
    np.testing.assert_allclose(df["score_s"], 0.02 + 5e-5 * (df["n_in"] + df["n_out"]), rtol=1e-9)
    assert (df["prefill_s"] < df["gen_s"]).all()


def test_measure_stage_uses_fresh_prompts() -> None:
    """No two timed prompts share a start, so a prefix cache cannot make prefill free."""
    be = LinearBackend()
    profiling.measure_stage(be, [32, 64], [4, 8], repeats=2, warmup=1, progress=False)
    prompts = [tuple(p[:8]) for p, _ in be.generated] + [tuple(p[:8]) for p, _ in be.scored]
    assert len(set(prompts)) == len(prompts)


def test_measure_stage_is_reproducible_given_the_seed() -> None:
    a = profiling.measure_stage(LinearBackend(), IN, OUT, 2, 0, progress=False, rng=3)
    b = profiling.measure_stage(LinearBackend(), IN, OUT, 2, 0, progress=False, rng=3)
    pd.testing.assert_frame_equal(a, b)


def test_measure_stage_rejects_outputs_of_the_wrong_length() -> None:
    with pytest.raises(AsdError, match="exactly 16 tokens"):
        profiling.measure_stage(LinearBackend(short=1), [8, 9], [16, 17], 1, 0, progress=False)


def test_measure_stages_loads_and_closes_each_stage() -> None:
    made: list[LinearBackend] = []

    def load(stage: StageConfig, models_dir) -> LinearBackend:
        be = LinearBackend(name=stage.name, d=0.01 * (len(made) + 1))
        made.append(be)
        return be

    stages = [StageConfig(name=n, source="fake", runtime="transformers") for n in ("s0", "s1")]
    df = profiling.measure_stages(
        stages, "models", [8, 16], [2, 4], 1, 0, seed=0, progress=False, load=load
    )
    assert [b.closed for b in made] == [True, True]
    assert list(df["stage"].unique()) == ["s0", "s1"]
    assert sorted(df["stage_index"].unique()) == [0, 1]


def test_measure_stages_closes_a_stage_that_fails() -> None:
    made: list[LinearBackend] = []

    def load(stage: StageConfig, models_dir) -> LinearBackend:
        made.append(LinearBackend(short=1))
        return made[-1]

    stages = [StageConfig(name="s0", source="fake", runtime="transformers")]
    with pytest.raises(AsdError):
        profiling.measure_stages(
            stages, "m", [8, 16], [2, 4], 1, 0, seed=0, progress=False, load=load
        )
    assert made[0].closed


def test_measure_stage_on_a_tiny_transformers_model(tiny_backend) -> None:
    df = profiling.measure_stage(tiny_backend, [8, 24], [2, 5], repeats=1, warmup=1, progress=False)
    assert len(df) == 4
    assert (df[["gen_s", "prefill_s", "score_s"]] > 0).all().all()
    assert (df["prefill_s"] <= df["gen_s"]).all()
    assert set(df["runtime"]) == {"transformers"}


# -- the cost model -------------------------------------------------------------------------------


def _profile(**law) -> pd.DataFrame:
    return profiling.measure_stage(LinearBackend(**law), IN, OUT, 2, 0, progress=False, rng=0)


def test_fit_recovers_a_known_linear_law() -> None:
    [fit] = profiling.fit_cost_model(_profile(a=0.05, b=2e-4, d=0.01, sa=0.02, sb=5e-5))
    assert fit.stage == "fake" and fit.runtime == "transformers" and fit.n == 18
    assert fit.a_s == pytest.approx(0.05, abs=1e-9)
    assert fit.b_s_per_in_token == pytest.approx(2e-4, abs=1e-11)
    assert fit.d_s_per_out_token == pytest.approx(0.01, abs=1e-11)
    assert fit.r2 == pytest.approx(1.0, abs=1e-9)
    assert fit.score_a_s == pytest.approx(0.02, abs=1e-9)
    assert fit.score_b_s_per_token == pytest.approx(5e-5, abs=1e-11)
    assert fit.score_r2 == pytest.approx(1.0, abs=1e-9)
    assert fit.residuals.shape == fit.fitted.shape == (18,)
    assert np.abs(fit.residuals).max() < 1e-9
    assert float(fit.predict(100, 10)) == pytest.approx(0.05 + 0.02 + 0.1)
    assert float(fit.predict_score(100, 10)) == pytest.approx(0.02 + 5e-5 * 110)


def test_fit_with_noise_has_r2_below_one_and_residuals_sum_to_zero() -> None:
    [fit] = profiling.fit_cost_model(_profile(jitter=0.003))
    assert 0.9 < fit.r2 < 1.0
    assert fit.d_s_per_out_token == pytest.approx(0.01, rel=0.1)
    assert abs(fit.residuals.sum()) < 1e-9
    np.testing.assert_allclose(fit.fitted + fit.residuals, _profile(jitter=0.003)["gen_s"])
    assert fit.d_se > 0


def test_fit_keeps_stage_order_and_rejects_a_degenerate_grid() -> None:
    cheap = _profile(d=0.001).assign(stage="cheap", stage_index=0)
    deep = _profile(d=0.02).assign(stage="deep", stage_index=1)
    fits = profiling.fit_cost_model(pd.concat([deep, cheap]))
    assert [f.stage for f in fits] == ["cheap", "deep"]
    one_length = profiling.measure_stage(LinearBackend(), [16, 16], [4, 8], 2, 0, progress=False)
    with pytest.raises(ValueError, match="at least two distinct"):
        profiling.fit_cost_model(one_length)
    with pytest.raises(AsdError):
        profiling.fit_cost_model(cheap.iloc[:0])


def test_cost_table_columns_and_normalisation() -> None:
    cheap = _profile(a=0.01, b=1e-4, d=0.002).assign(stage="cheap", stage_index=0)
    deep = _profile(a=0.1, b=1e-3, d=0.02).assign(stage="deep", stage_index=1)
    fits = profiling.fit_cost_model(pd.concat([cheap, deep]))
    table = profiling.cost_table(fits)
    for column in [
        "stage", "a_s", "b_s_per_in_token", "d_s_per_out_token", "r2", "n",
        "score_a_s", "score_b_s_per_token", "score_r2", "rel_cost",
    ]:  # fmt: skip
        assert column in table.columns
    n_in, n_out = np.mean(IN), np.mean(OUT)
    assert table["typical_n_in"].iloc[0] == pytest.approx(n_in)
    expected = (0.01 + 1e-4 * n_in + 0.002 * n_out) / (0.1 + 1e-3 * n_in + 0.02 * n_out)
    assert table["rel_cost"].tolist() == pytest.approx([expected, 1.0])
    assert profiling.cost_table(fits, n_in=10, n_out=1)["rel_cost"].iloc[0] == pytest.approx(
        (0.01 + 1e-3 + 0.002) / (0.1 + 1e-2 + 0.02)
    )


def test_throughput_matches_the_law() -> None:
    df = _profile(a=0.05, b=2e-4, d=0.01, sa=0.02, sb=5e-5)
    [row] = profiling.throughput(df).to_dict("records")
    assert row["decode_tok_s"] == pytest.approx(100.0)  # 1 / d
    assert row["gen_tok_s"] == pytest.approx(df["n_out"].sum() / df["gen_s"].sum())
    assert row["prefill_tok_s"] == pytest.approx(df["n_in"].sum() / df["prefill_s"].sum())
    tokens = (df["n_in"] + df["n_out"]).sum()
    assert row["score_tok_s"] == pytest.approx(tokens / (0.02 * len(df) + 5e-5 * tokens))
    assert row["score_over_decode"] == pytest.approx(row["score_tok_s"] / 100.0)


def test_plots_have_one_panel_per_stage_and_save(tmp_path) -> None:
    import matplotlib.pyplot as plt

    frames = [
        _profile(d=d).assign(stage=f"s{k}", stage_index=k) for k, d in enumerate((0.01, 0.03))
    ]
    df = pd.concat(frames, ignore_index=True)
    fits = profiling.fit_cost_model(df)
    figs = [
        profiling.plot_latency_fit(df, fits),
        profiling.plot_residuals(fits),
        profiling.plot_throughput(profiling.throughput(df)),
    ]
    try:
        assert [len(f.axes) for f in figs] == [4, 2, 1]
        prov = provenance.provenance({"seed": 0}, 0)
        for i, fig in enumerate(figs):
            path = provenance.save_figure(fig, tmp_path / f"f{i}.png", prov)
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    finally:
        for fig in figs:
            plt.close(fig)


def test_a_disturbed_cost_model_is_caught() -> None:
    from asd_core.ground.errors import AsdError

    cost = pd.DataFrame(
        {
            "stage": ["small", "mid", "big"],
            "runtime": ["llamacpp"] * 3,
            "d_s_per_out_token": [0.01, 0.046, 0.037],  # the big stage "decodes faster"
            "r2": [0.98, 0.29, 0.98],
        }
    )
    problems = profiling.cost_model_problems(cost)
    assert len(problems) == 2
    assert "'mid'" in problems[0] and "R² = 0.29" in problems[0]
    assert "'big' decodes faster" in problems[1]
    assert profiling.check_cost_model(cost, 0.8, strict=False) == problems
    with pytest.raises(AsdError, match="re-run notebook 01") as err:
        profiling.check_cost_model(cost, 0.8, strict=True)
    assert "\n" not in str(err.value)
    fine = cost.assign(d_s_per_out_token=[0.01, 0.03, 0.08], r2=0.95)
    assert profiling.cost_model_problems(fine) == []
