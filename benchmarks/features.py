"""Decision-overhead benchmark: feature extraction and one ensemble prediction per input.

``python -m benchmarks.features`` prints the median time per input of

- ``StageView.from_generation`` (building the view from a live backend output),
- ``FeatureSet.extract`` (docs/design.md §4 asks < 0.3 ms),
- one calibrated ensemble prediction for a single input (``QualityPredictor.predict``),
- the input-only head for a single prompt (``QualityPredictor.predict_entry``),

on synthetic stage outputs of realistic length (no model is loaded). The predictor is trained
for a couple of epochs on a synthetic generations frame: its timing does not depend on how
well it learned. :func:`synthetic_frame` is also the fixture of the predictor tests.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from asd_core.ground.errors import cli_entry
from asd_core.learning.features import STOP_REASONS, TASKS, FeatureSet, StageView


def synthetic_frame(
    n_items: int, n_stages: int = 3, seed: int = 0, hidden_dim: int = 0
) -> pd.DataFrame:
    """A generations frame (one row per input × stage) whose labels follow its features.

    Each input has a latent difficulty; a stage's confidence falls with difficulty and rises
    with depth, drives its log-probs, entropies and margins, and (with noise) its acceptance
    label. The final stage is always accepted. ``hidden_dim`` > 0 adds a ``hidden_mean`` column.
    """
    rng = np.random.default_rng(seed)
    rows: list[dict[str, Any]] = []
    for i in range(n_items):
        difficulty = rng.normal()
        task = TASKS[i % len(TASKS)]
        n_in = int(rng.integers(20, 300))
        prev_conf = math.nan
        for k in range(n_stages):
            prompt = rng.integers(0, 5000, n_in, dtype=np.int32)  # each stage tokenises anew
            conf = 1.0 / (1.0 + math.exp(-(1.0 - 2.0 * difficulty + 0.8 * k)))
            n_out = int(rng.integers(0, 40)) if i % 17 else 0  # a few empty outputs
            top1 = np.log(np.clip(rng.beta(8 * conf + 0.5, 8 * (1 - conf) + 0.5, n_out), 1e-4, 1))
            runner_up = (1 - np.exp(top1)) * rng.uniform(0.3, 0.9, n_out)
            top2 = np.log(np.maximum(runner_up, 1e-9))
            final = k == n_stages - 1
            accepted = final or rng.random() < conf**2
            rows.append(
                {
                    "item_id": f"item{i:05d}",
                    "task": task,
                    "split": "train",
                    "stage": k,
                    "n_stages": n_stages,
                    "prompt_ids": prompt,
                    "token_ids": rng.integers(0, 5000, n_out, dtype=np.int32),
                    "text": "x" * n_out,
                    "logprobs": top1.astype(np.float32),
                    "entropy": (-top1 + rng.uniform(0, 0.3, n_out)).astype(np.float32),
                    "top1_logprob": top1.astype(np.float32),
                    "top2_logprob": top2.astype(np.float32),
                    "stop_reason": STOP_REASONS[int(rng.integers(0, 3))],
                    "hidden_mean": rng.normal(conf, 1.0, hidden_dim + 8 * k).astype(np.float32)
                    if hidden_dim
                    else None,
                    "accepted_frac_prev": prev_conf if k else math.nan,
                    "label_token": int(final or (accepted and rng.random() < 0.3)),
                    "label_answer": int(accepted),
                    "accepted_frac_final": 1.0 if final else float(conf * rng.uniform(0.5, 1)),
                }
            )
            prev_conf = float(np.clip(conf + rng.normal(0, 0.1), 0, 1))
    return pd.DataFrame(rows)


def with_costs(df: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """``df`` with measured-looking costs, correctness and splits (replay and server tests).

    Stage k takes about 3^k seconds from scratch; escalating verifies in a fraction of that and
    decodes only the tokens after the accepted prefix; items go to the three splits in turn.
    """
    K = int(df["stage"].max()) + 1
    rng = np.random.default_rng(seed)
    df = df.copy()
    n = len(df)
    df["n_out"] = df["token_ids"].map(len)
    df["n_in"] = df["prompt_ids"].map(len)
    base = 3.0 ** df["stage"].to_numpy()
    df["prefill_s"] = 0.1 * base
    df["latency_s"] = df["prefill_s"] + 0.02 * base * df["n_out"] + rng.uniform(0, 0.01, n)
    drafted, accepted, verify = [], [], []
    for stage, n_out in zip(df["stage"], df["n_out"], strict=True):
        d = [-1] * K
        a = [-1] * K
        v = [np.nan] * K
        for j in range(stage + 1, K):
            d[j] = int(n_out)
            a[j] = int(rng.integers(0, n_out + 1))
            v[j] = 0.05 * 3.0**j
        drafted.append(d)
        accepted.append(a)
        verify.append(v)
    df["drafted_by"], df["accepted_by"], df["verify_s_by"] = drafted, accepted, verify
    df["correct"] = (rng.random(n) < 0.3 + 0.25 * df["stage"].to_numpy()).astype(float)
    items = sorted(df["item_id"].unique())
    split = {it: ("train", "calibration", "test")[i % 3] for i, it in enumerate(items)}
    df["split"] = df["item_id"].map(split)
    return df


def median_seconds(
    fn: Callable[[], Any], repeats: int, clock: Callable[[], float] = time.perf_counter
) -> float:
    """Median wall-clock seconds of ``fn()`` over ``repeats`` calls (after 10 warm-up calls)."""
    for _ in range(10):
        fn()
    times = np.empty(repeats)
    for r in range(repeats):
        start = clock()
        fn()
        times[r] = clock() - start
    return float(np.median(times))


def run(
    repeats: int = 2000,
    n_in: int = 256,
    n_out: int = 64,
    n_stages: int = 3,
    n_members: int = 5,
    seed: int = 0,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, float]:
    """Median milliseconds per input of each decision step (see the module docstring)."""
    from asd_core.learning.ensemble import TrainConfig
    from asd_core.learning.predictor import train_predictor
    from asd_core.models.base import Generation

    df = synthetic_frame(200, n_stages, seed)
    config = TrainConfig(n_members=n_members, max_epochs=2)
    predictor = train_predictor(df[:150], df[150:], FeatureSet(n_stages), config=config, seed=seed)

    rng = np.random.default_rng(seed)
    top = np.sort(np.log(rng.dirichlet(np.ones(5), n_out)).astype(np.float32), axis=1)[:, ::-1]
    gen = Generation(
        prompt_ids=rng.integers(0, 50_000, n_in).tolist(),
        token_ids=rng.integers(0, 50_000, n_out).tolist(),
        text="",
        logprobs=top[:, 0].copy(),
        top_ids=rng.integers(0, 50_000, (n_out, 5)),
        top_logprobs=np.ascontiguousarray(top),
        entropy=rng.uniform(0, 3, n_out).astype(np.float32),
        stop_reason="eos",
        prefill_s=0.0,
        total_s=0.0,
    )
    view = StageView.from_generation(gen, stage=1, task="mmlu", accepted_frac_prev=0.8)
    x = predictor.features.extract(view)[None]
    stage = np.array([1])
    ms = {
        "view_from_generation_ms": median_seconds(
            lambda: StageView.from_generation(gen, 1, "mmlu", 0.8), repeats, clock
        ),
        "extract_ms": median_seconds(lambda: predictor.features.extract(view), repeats, clock),
        "predict_ms": median_seconds(lambda: predictor.predict(x, stage), repeats, clock),
        "predict_entry_ms": median_seconds(
            lambda: predictor.predict_entry(gen.prompt_ids, "mmlu"), repeats, clock
        ),
    }
    return {key: 1e3 * value for key, value in ms.items()}


@cli_entry
def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.features",
        description="Time feature extraction and one ensemble prediction per input.",
    )
    parser.add_argument("--repeats", type=int, default=2000, help="timed calls per step")
    parser.add_argument("--n-in", type=int, default=256, help="prompt tokens")
    parser.add_argument("--n-out", type=int, default=64, help="generated tokens")
    parser.add_argument("--stages", type=int, default=3, help="stages in the hierarchy")
    parser.add_argument("--members", type=int, default=5, help="ensemble members")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    results = run(args.repeats, args.n_in, args.n_out, args.stages, args.members)
    print(
        f"median per input ({args.repeats} repeats, n_in={args.n_in}, n_out={args.n_out}, "
        f"K={args.stages}, {args.members} members):"
    )
    for key, value in results.items():
        print(f"  {key.removesuffix('_ms'):<22} {value:8.4f} ms")


if __name__ == "__main__":
    main()
