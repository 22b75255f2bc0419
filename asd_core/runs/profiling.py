"""Latency profiling of each stage and its linear cost model (docs/design.md §3).

A stage is timed on a grid of prompt lengths ``n_in`` × output lengths ``n_out`` (tokens), one
sequence at a time. Each timed run generates exactly ``n_out`` tokens (EOS ignored) after an
``n_in``-token prompt of real text, then scores that continuation teacher-forced after a different
``n_in``-token prompt, the way a deeper stage verifies a draft. The runs of every repeat visit the
grid cells in a fresh random order (a randomised block design), so slow drift of the machine
(thermal throttling, a neighbour's job) spreads over all cells instead of posing as a length
effect. Consecutive prompts start at different places of the built-in passage, so a runtime that
reuses a cached prompt prefix (llama.cpp does) cannot make prefill look free.

The fitted model per stage is ``ĉ(n_in, n_out) = a + b·n_in + d·n_out`` seconds for generation
and ``a' + b'·(n_in + n_out)`` seconds for a scoring (verification) pass. Timings come from the
backends, which read an injectable clock; nothing here reads a clock itself.
"""

from __future__ import annotations

import gc
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from statsmodels.regression.linear_model import OLS
from tqdm import tqdm

from asd_core.ground import logs
from asd_core.ground.config import StageConfig
from asd_core.ground.errors import AsdError
from asd_core.models.base import Backend, GenerationParams, Tokenizer

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# Real English prose and Python code (written for this project), so tokenizers split it the way
# they split real prompts; repeated and cut to any length by prompt_of_length.
PASSAGE = """\
The ferry leaves the north bank at seven, when the river is still grey and the gulls argue over
the pier. Most mornings it carries the same people: a baker with two crates of bread, students
who pretend to read, and an old engineer who counts the rivets on the railing as if one might
have gone missing overnight. Nobody minds the noise of the engine. It is the kind of sound that
tells you the day has started and that the city on the other side will be there when you arrive.

def moving_average(values, window):
    \"\"\"Mean of each run of `window` consecutive values.\"\"\"
    if window <= 0:
        raise ValueError("window must be positive")
    total = sum(values[:window])
    out = [total / window]
    for i in range(window, len(values)):
        total += values[i] - values[i - window]
        out.append(total / window)
    return out

In the afternoon the light changes. Shadows of the bridges fall across the water in long bands,
and the ferry crosses them one after another, dark, bright, dark again. A child asks why the
river does not run out of water; her father explains rain, hills and the sea, then admits that
he has always found it a little surprising too. At the south pier the ropes are thrown, the
gate opens, and for a minute everyone moves at once, like a sentence finding its verb.
"""

_OFFSET_STRIDE = 37  # tokens between the start points of consecutive prompts


def prompt_of_length(tokenizer: Tokenizer, n: int, offset: int = 0) -> list[int]:
    """Exactly ``n`` token ids of the built-in passage (repeated as needed).

    ``offset`` (tokens, taken modulo the passage length) moves the starting point, so that
    successive prompts differ from their first token on.
    """
    if n <= 0:
        raise ValueError(f"prompt length must be positive, got {n}")
    one = len(tokenizer.encode(PASSAGE, add_special_tokens=False))
    if one == 0:
        raise AsdError("the tokenizer encodes the profiling passage to no tokens")
    start = offset % one
    copies = math.ceil((start + n) / one) + 1
    ids = tokenizer.encode(PASSAGE * copies, add_special_tokens=False)
    out = list(ids[start : start + n])
    if len(out) != n:  # pragma: no cover - only a tokenizer that merges across copies
        raise AsdError(f"could not build a prompt of {n} tokens (got {len(out)})")
    return out


def run_order(
    input_lengths: Sequence[int],
    output_lengths: Sequence[int],
    repeats: int,
    rng: np.random.Generator,
) -> list[tuple[int, int, int]]:
    """Timed runs as ``(n_in, n_out, repeat)``: each repeat is a random permutation of the grid."""
    cells = [(i, o) for i in input_lengths for o in output_lengths]
    runs = []
    for rep in range(repeats):
        for j in rng.permutation(len(cells)):
            runs.append((cells[j][0], cells[j][1], rep))
    return runs


def time_once(backend: Backend, n_in: int, n_out: int, k: int) -> tuple[float, float, float]:
    """One run: ``(gen_s, prefill_s, score_s)`` in seconds, as the backend's clock measured them.

    ``k`` numbers the run; it picks distinct prompt start points for generation and scoring.
    """
    tok = backend.tokenizer
    prompt = prompt_of_length(tok, n_in, offset=2 * k * _OFFSET_STRIDE)
    params = GenerationParams(max_new_tokens=n_out, ignore_eos=True)
    [gen] = backend.generate([prompt], params)
    if gen.n_out != n_out:
        raise AsdError(
            f"stage '{backend.stage.name}': asked for exactly {n_out} tokens (ignore_eos) "
            f"but the backend returned {gen.n_out}"
        )
    other = prompt_of_length(tok, n_in, offset=(2 * k + 1) * _OFFSET_STRIDE)
    [sc] = backend.score([other], [gen.token_ids])
    return gen.total_s, gen.prefill_s, sc.seconds


def measure_stage(
    backend: Backend,
    input_lengths: Sequence[int],
    output_lengths: Sequence[int],
    repeats: int,
    warmup: int,
    progress: bool = True,
    rng: np.random.Generator | int = 0,
) -> pd.DataFrame:
    """Time one loaded stage on the grid; one tidy row per timed run.

    ``warmup`` untimed runs on the largest cell come first. ``rng`` (a Generator or a seed)
    draws the run order. Columns: stage, runtime, n_in, n_out (tokens), repeat, order (position
    in the timed sequence), gen_s, prefill_s, score_s (seconds).
    """
    gen = np.random.default_rng(rng)
    runs = run_order(input_lengths, output_lengths, repeats, gen)
    name = backend.stage.name
    runtime = backend.stage.runtime
    for w in range(warmup):
        time_once(backend, max(input_lengths), max(output_lengths), k=w)
    rows = []
    done = logs.Progress(log, f"profile {name}", len(runs), unit="runs")
    with tqdm(total=len(runs), desc=f"profile {name}", unit="run", disable=not progress) as bar:
        for order, (n_in, n_out, rep) in enumerate(runs):
            gen_s, prefill_s, score_s = time_once(backend, n_in, n_out, k=warmup + order)
            rows.append((name, runtime, n_in, n_out, rep, order, gen_s, prefill_s, score_s))
            bar.update()
            done.update()
    columns = ["stage", "runtime", "n_in", "n_out", "repeat", "order"]
    return pd.DataFrame(rows, columns=[*columns, "gen_s", "prefill_s", "score_s"])


def measure_stages(
    stages: Sequence[StageConfig],
    models_dir: str | Path,
    input_lengths: Sequence[int],
    output_lengths: Sequence[int],
    repeats: int,
    warmup: int,
    seed: int,
    progress: bool = True,
    load: Callable[[StageConfig, Path], Backend] | None = None,
) -> pd.DataFrame:
    """Load, time and close each stage in turn (one model in memory at a time).

    Stage ``k`` draws its run order from ``default_rng([seed, k])``. ``load`` defaults to
    :func:`asd_core.models.registry.load_backend`. Adds a ``stage_index`` column (0 = cheapest).
    """
    if load is None:
        from asd_core.models.registry import load_backend

        load = load_backend
    frames = []
    for k, stage in enumerate(stages):
        backend = load(stage, Path(models_dir))
        try:
            df = measure_stage(
                backend,
                input_lengths,
                output_lengths,
                repeats,
                warmup,
                progress=progress,
                rng=np.random.default_rng([seed, k]),
            )
        finally:
            backend.close()
            del backend
            gc.collect()
        frames.append(df.assign(stage_index=k))
    return pd.concat(frames, ignore_index=True)


# -- cost model ---------------------------------------------------------------------------------


def design_matrix(*columns: np.ndarray) -> np.ndarray:
    """``(n, 1 + len(columns))`` float matrix: an intercept column, then each ``(n,)`` column."""
    cols = [np.asarray(c, dtype=float) for c in columns]
    return np.column_stack([np.ones_like(cols[0]), *cols])


@dataclass(frozen=True)
class LinearFit:
    """Ordinary least squares of ``y`` on a design matrix ``X`` of shape ``(n, p)``."""

    coef: np.ndarray  # (p,) coefficients, units of y per unit of each column
    se: np.ndarray  # (p,) standard errors of coef, same units
    r2: float  # coefficient of determination, unitless
    fitted: np.ndarray  # (n,) predictions, units of y
    residuals: np.ndarray  # (n,) y − fitted, units of y


def ols(X: np.ndarray, y: np.ndarray) -> LinearFit:
    """Least-squares fit of ``y`` (n,) on ``X`` (n, p); raises if ``X`` is rank deficient."""
    X = np.asarray(X, dtype=float)
    y = np.asarray(y, dtype=float)
    if X.shape[0] <= X.shape[1] or np.linalg.matrix_rank(X) < X.shape[1]:
        raise ValueError(
            f"cannot fit {X.shape[1]} coefficients from {X.shape[0]} runs: vary input and output "
            "lengths (at least two distinct values each) and time more runs"
        )
    res = OLS(y, X).fit()
    return LinearFit(
        coef=np.asarray(res.params, dtype=float),
        se=np.asarray(res.bse, dtype=float),
        r2=float(res.rsquared),
        fitted=np.asarray(res.fittedvalues, dtype=float),
        residuals=np.asarray(res.resid, dtype=float),
    )


@dataclass(frozen=True, eq=False)
class CostFit:
    """One stage's fitted costs.

    Generation ``a + b·n_in + d·n_out`` and scoring ``a' + b'·(n_in + n_out)``, in seconds.
    """

    stage: str  # stage name, as in params
    runtime: str  # runtime that was timed
    a_s: float  # fixed cost of one generate call, seconds
    b_s_per_in_token: float  # prefill cost, seconds per prompt token
    d_s_per_out_token: float  # decode cost, seconds per generated token
    a_se: float  # standard error of a_s, seconds
    b_se: float  # standard error of b_s_per_in_token, seconds/token
    d_se: float  # standard error of d_s_per_out_token, seconds/token
    r2: float  # R² of the generation fit, unitless
    n: int  # timed runs in both fits
    n_in: np.ndarray  # (n,) prompt length of each run, tokens
    n_out: np.ndarray  # (n,) generated length of each run, tokens
    fitted: np.ndarray  # (n,) predicted generation time, seconds
    residuals: np.ndarray  # (n,) measured − predicted generation time, seconds
    score_a_s: float  # fixed cost of one scoring (verification) pass, seconds
    score_b_s_per_token: float  # scoring cost, seconds per token of prompt + continuation
    score_r2: float  # R² of the scoring fit, unitless
    score_fitted: np.ndarray  # (n,) predicted scoring time, seconds
    score_residuals: np.ndarray  # (n,) measured − predicted scoring time, seconds

    def predict(self, n_in: float | np.ndarray, n_out: float | np.ndarray) -> np.ndarray:
        """Predicted generation seconds for prompts of ``n_in`` and outputs of ``n_out`` tokens."""
        return np.asarray(self.a_s + self.b_s_per_in_token * n_in + self.d_s_per_out_token * n_out)

    def predict_score(self, n_in: float | np.ndarray, n_out: float | np.ndarray) -> np.ndarray:
        """Predicted seconds to score an ``n_out``-token continuation after ``n_in`` tokens."""
        return np.asarray(self.score_a_s + self.score_b_s_per_token * (np.add(n_in, n_out)))


def _stage_order(df: pd.DataFrame) -> list[str]:
    """Stage names cheapest first: by ``stage_index`` when present, else first appearance."""
    if "stage_index" in df.columns:
        return list(df.sort_values("stage_index", kind="stable")["stage"].unique())
    return list(pd.unique(df["stage"]))


def fit_stage(df: pd.DataFrame) -> CostFit:
    """Fit both cost models to the timed runs of one stage (columns as from measure_stage)."""
    n_in = df["n_in"].to_numpy(dtype=float)
    n_out = df["n_out"].to_numpy(dtype=float)
    gen = ols(design_matrix(n_in, n_out), df["gen_s"].to_numpy(dtype=float))
    score = ols(design_matrix(n_in + n_out), df["score_s"].to_numpy(dtype=float))
    return CostFit(
        stage=str(df["stage"].iloc[0]),
        runtime=str(df["runtime"].iloc[0]),
        a_s=float(gen.coef[0]),
        b_s_per_in_token=float(gen.coef[1]),
        d_s_per_out_token=float(gen.coef[2]),
        a_se=float(gen.se[0]),
        b_se=float(gen.se[1]),
        d_se=float(gen.se[2]),
        r2=gen.r2,
        n=len(df),
        n_in=n_in,
        n_out=n_out,
        fitted=gen.fitted,
        residuals=gen.residuals,
        score_a_s=float(score.coef[0]),
        score_b_s_per_token=float(score.coef[1]),
        score_r2=score.r2,
        score_fitted=score.fitted,
        score_residuals=score.residuals,
    )


def fit_cost_model(df: pd.DataFrame) -> list[CostFit]:
    """One :class:`CostFit` per stage, cheapest stage first."""
    if df.empty:
        raise AsdError("no profiling runs to fit a cost model to")
    return [fit_stage(df[df["stage"] == name]) for name in _stage_order(df)]


def throughput(df: pd.DataFrame) -> pd.DataFrame:
    """Tokens per second per stage, as ratios of summed tokens to summed seconds.

    Columns: stage, runtime, gen_tok_s (n_out / gen_s, prefill included), decode_tok_s
    ((n_out − 1) / (gen_s − prefill_s): the first token comes with prefill), prefill_tok_s
    (n_in / prefill_s), score_tok_s ((n_in + n_out) / score_s), and score_over_decode
    (score_tok_s / decode_tok_s: how much faster a stage checks tokens than it writes them).
    """

    def ratio(num: float, den: float) -> float:
        return num / den if den > 0 else float("nan")

    rows = []
    for name in _stage_order(df):
        s = df[df["stage"] == name]
        decode = ratio(float((s["n_out"] - 1).sum()), float((s["gen_s"] - s["prefill_s"]).sum()))
        score = ratio(float((s["n_in"] + s["n_out"]).sum()), float(s["score_s"].sum()))
        rows.append(
            {
                "stage": name,
                "runtime": s["runtime"].iloc[0],
                "gen_tok_s": ratio(float(s["n_out"].sum()), float(s["gen_s"].sum())),
                "decode_tok_s": decode,
                "prefill_tok_s": ratio(float(s["n_in"].sum()), float(s["prefill_s"].sum())),
                "score_tok_s": score,
                "score_over_decode": ratio(score, decode),
            }
        )
    return pd.DataFrame(rows)


def cost_table(
    fits: Sequence[CostFit], n_in: float | None = None, n_out: float | None = None
) -> pd.DataFrame:
    """The fitted coefficients as a table, one row per stage, cheapest first.

    ``rel_cost`` is each stage's predicted generation cost of a typical input (``n_in``,
    ``n_out`` tokens; by default the mean lengths profiled on the deepest stage) divided by
    the deepest (last) stage's: the normalisation the stopping solver uses (deepest = 1).
    """
    if not fits:
        raise AsdError("no cost fits to tabulate")
    deepest = fits[-1]
    n_in = float(np.mean(deepest.n_in)) if n_in is None else float(n_in)
    n_out = float(np.mean(deepest.n_out)) if n_out is None else float(n_out)
    ref = float(deepest.predict(n_in, n_out))
    rows = []
    for f in fits:
        cost = float(f.predict(n_in, n_out))
        rows.append(
            {
                "stage": f.stage,
                "runtime": f.runtime,
                "a_s": f.a_s,
                "b_s_per_in_token": f.b_s_per_in_token,
                "d_s_per_out_token": f.d_s_per_out_token,
                "r2": f.r2,
                "n": f.n,
                "score_a_s": f.score_a_s,
                "score_b_s_per_token": f.score_b_s_per_token,
                "score_r2": f.score_r2,
                "typical_n_in": n_in,
                "typical_n_out": n_out,
                "typical_cost_s": cost,
                "rel_cost": cost / ref if ref > 0 else float("nan"),
            }
        )
    return pd.DataFrame(rows)


def cost_model_problems(cost: pd.DataFrame, min_r2: float = 0.8) -> list[str]:
    """What makes a fitted cost model untrustworthy, one line each (empty when none).

    ``cost`` is :func:`cost_table`'s output, cheapest stage first. Two signs that the timings
    were disturbed (another job on the same cores, say) rather than measured: a generation fit
    that explains less than ``min_r2`` of the variance, and a deeper stage that decodes a token
    faster than a shallower one on the same runtime (the stages are ordered by size).
    """
    problems = [
        f"stage '{r.stage}': the latency fit explains only R² = {r.r2:.2f} (< {min_r2:g})"
        for r in cost.itertuples()
        if not r.r2 >= min_r2
    ]
    rows = list(cost.itertuples())
    for shallow, deep in zip(rows[:-1], rows[1:], strict=True):
        if shallow.runtime == deep.runtime and deep.d_s_per_out_token < shallow.d_s_per_out_token:
            problems.append(
                f"stage '{deep.stage}' decodes faster ({1 / deep.d_s_per_out_token:.1f} tok/s) "
                f"than the smaller '{shallow.stage}' ({1 / shallow.d_s_per_out_token:.1f} tok/s)"
            )
    return problems


def check_cost_model(cost: pd.DataFrame, min_r2: float, strict: bool) -> list[str]:
    """:func:`cost_model_problems`; with ``strict`` any problem stops with one line, because
    replay would cost every input with the disturbed model."""
    problems = cost_model_problems(cost, min_r2)
    if problems and strict:
        raise AsdError(
            "cost model: " + "; ".join(problems) + " — re-run notebook 01 with the machine idle "
            "(or set profile_strict: false)"
        )
    return problems


# -- figures ------------------------------------------------------------------------------------


def plot_latency_fit(df: pd.DataFrame, fits: Sequence[CostFit]) -> Figure:
    """Measured latency with fitted lines, one column per stage.

    Top row: generation seconds vs n_out, one colour per n_in, lines ``a + b·n_in + d·n_out``.
    Bottom row: scoring seconds vs n_in + n_out, line ``a' + b'·(n_in + n_out)``.
    """
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(fits), figsize=(4.2 * len(fits), 7), squeeze=False)
    lengths = sorted(df["n_in"].unique())
    colours = plt.get_cmap("viridis")(np.linspace(0, 0.85, len(lengths)))
    for col, fit in enumerate(fits):
        s = df[df["stage"] == fit.stage]
        top, bottom = axes[0, col], axes[1, col]
        grid = np.linspace(0, s["n_out"].max(), 50)
        for n_in, colour in zip(lengths, colours, strict=True):
            cell = s[s["n_in"] == n_in]
            top.scatter(cell["n_out"], cell["gen_s"], color=colour, s=18, label=f"n_in={n_in}")
            top.plot(grid, fit.predict(n_in, grid), color=colour, lw=1)
        top.set(
            title=f"{fit.stage}  (R²={fit.r2:.3f})",
            xlabel="output tokens n_out",
            ylabel="generation time (s)",
        )
        top.legend(fontsize=7)
        total = s["n_in"] + s["n_out"]
        bottom.scatter(total, s["score_s"], s=18, color="tab:orange")
        line = np.linspace(0, total.max(), 50)
        bottom.plot(line, fit.predict_score(line, 0), color="tab:orange", lw=1)
        bottom.set(
            title=f"scoring  (R²={fit.score_r2:.3f})",
            xlabel="tokens scored n_in + n_out",
            ylabel="scoring time (s)",
        )
    fig.tight_layout()
    return fig


def plot_residuals(fits: Sequence[CostFit]) -> Figure:
    """Residual (measured − fitted, seconds) vs fitted seconds, one panel per stage."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(fits), figsize=(4.2 * len(fits), 3.6), squeeze=False)
    for ax, fit in zip(axes[0], fits, strict=True):
        ax.scatter(fit.fitted, fit.residuals, s=18, label="generation")
        ax.scatter(fit.score_fitted, fit.score_residuals, s=18, marker="x", label="scoring")
        ax.axhline(0, color="grey", lw=0.8)
        ax.set(title=fit.stage, xlabel="fitted time (s)", ylabel="residual (s)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_throughput(tp: pd.DataFrame) -> Figure:
    """Grouped bars (log scale) of decode, prefill and scoring tokens per second per stage."""
    import matplotlib.pyplot as plt

    kinds = [("decode_tok_s", "decode"), ("prefill_tok_s", "prefill"), ("score_tok_s", "scoring")]
    x = np.arange(len(tp))
    width = 0.8 / len(kinds)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.8 * len(tp) + 2), 3.8))
    for i, (column, label) in enumerate(kinds):
        ax.bar(x + (i - (len(kinds) - 1) / 2) * width, tp[column], width, label=label)
    ax.set_xticks(x, tp["stage"])
    ax.set_yscale("log")
    ax.set(ylabel="tokens per second", title="generation vs scoring throughput")
    ax.legend()
    fig.tight_layout()
    return fig
