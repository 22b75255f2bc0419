"""Load benchmark of the server against a real peer, side by side in one run (loopback only).

    python -m benchmarks.serving --profile cpu                      # the table in the README
    python -m benchmarks.serving --profile cpu --requests 12 --clients 2 --lambdas 0.3 3

``--clients`` concurrent clients send ``--requests`` test-split prompts (ASDiv, HumanEval,
TruthfulQA in turn; each task's stop strings, its token budget capped at ``--max-tokens``) to:

* the adaptive server at each λ of ``--lambdas``;
* the same server forced to the deepest stage (the request names that stage as its model);
* llama-cpp-python's own OpenAI-compatible server on the deepest stage's GGUF (one process, its
  default settings, greedy) — the peer a user would otherwise run.

Per configuration: wall time, requests/s, completion tokens/s, p50/p99 latency, the share of
answers from each stage, and task quality (each answer scored like the evaluation's, with a
bootstrap 95% CI); then the throughput and quality ratios against the peer. Every configuration
sees the same prompts in the same order. ``--time-limit`` bounds each configuration (requests not
sent by then are left out and counted). Writes ``reports/tables/serving_benchmark.{csv,md}`` with
provenance sidecars.
"""

from __future__ import annotations

import argparse
import concurrent.futures as futures
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from asd_core.data import load_task
from asd_core.data.scoring import score_item
from asd_core.data.splits import split_of
from asd_core.data.tasks import Item, get_task
from asd_core.ground import config, provenance, stats
from asd_core.ground.errors import AsdError, cli_entry
from asd_core.ground.files import REPO_ROOT
from asd_core.serve.demo import start_server, stop_server
from asd_core.serve.settings import load_settings

TASKS = ("asdiv", "humaneval", "truthfulqa")


@dataclass(frozen=True)
class Prompt:
    item: Item
    max_tokens: int
    stop: tuple[str, ...]


def test_prompts(params: config.Params, n: int, cap: int, data_dir: Path) -> list[Prompt]:
    """``n`` test-split items, the tasks in turn, each with its stop strings and budget."""
    by_task = {
        t: [i for i in load_task(t, data_dir) if split_of(i.item_id, params.split_fractions) == "test"]
        for t in TASKS
    }  # fmt: skip
    budgets = {str(t): int(v) for t, v in params.datagen_max_new_tokens.items()}
    out: list[Prompt] = []
    for k in range(n):
        task = TASKS[k % len(TASKS)]
        item = by_task[task][k // len(TASKS)]
        budget = min(budgets.get(task, cap), cap)
        out.append(Prompt(item, budget, get_task(task).stop_strings))
    return out


def _one(url: str, model: str, p: Prompt, extra: dict[str, Any]) -> dict[str, Any]:
    import httpx

    body = {
        "model": model,
        "messages": [{"role": "user", "content": p.item.question}],
        "max_tokens": p.max_tokens,
        "temperature": 0.0,
        "stop": list(p.stop) or None,
        **extra,
    }
    start = time.perf_counter()
    r = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=3600)
    seconds = time.perf_counter() - start
    r.raise_for_status()
    data = r.json()
    text = data["choices"][0]["message"]["content"] or ""
    ext = data.get("asd", {})
    return {
        "item_id": p.item.item_id,
        "task": p.item.task,
        "latency_s": seconds,
        "completion_tokens": int(data.get("usage", {}).get("completion_tokens", 0)),
        "depth": ext.get("depth_name", "peer"),
        "text": text,
    }


def load(
    url: str, model: str, prompts: Sequence[Prompt], clients: int, extra: dict[str, Any],
    time_limit_s: float,
) -> tuple[pd.DataFrame, float, int]:  # fmt: skip
    """Answers of every prompt sent within the time limit, the wall time, and how many were not."""
    start = time.perf_counter()
    rows, skipped = [], 0
    with futures.ThreadPoolExecutor(clients) as pool:
        pending = []
        for p in prompts:
            if time.perf_counter() - start > time_limit_s:
                skipped += 1
                continue
            pending.append(pool.submit(_one, url, model, p, extra))
            while sum(not f.done() for f in pending) >= clients:
                time.sleep(0.01)
        rows = [f.result() for f in pending]
    return pd.DataFrame(rows), time.perf_counter() - start, skipped


def summarise(name: str, df: pd.DataFrame, wall_s: float, skipped: int, items: dict[str, Item],
              seed: int) -> dict[str, Any]:  # fmt: skip
    quality = np.array(
        [score_item(items[i], t).correct for i, t in zip(df["item_id"], df["text"], strict=True)]
    )
    ci = stats.bootstrap_ci(stats.mean, quality, n_resamples=1000, seed=seed, method="percentile")
    shares = df["depth"].value_counts(normalize=True).round(3).to_dict()
    return {
        "config": name,
        "requests": len(df),
        "not_sent": skipped,
        "wall_s": wall_s,
        "requests_per_s": len(df) / wall_s,
        "tokens_per_s": float(df["completion_tokens"].sum()) / wall_s,
        "p50_s": float(df["latency_s"].quantile(0.5)),
        "p99_s": float(df["latency_s"].quantile(0.99)),
        "depths": "; ".join(f"{k} {v:.0%}" for k, v in sorted(shares.items())),
        "quality": float(quality.mean()),
        "quality_low": ci.low,
        "quality_high": ci.high,
    }


def start_peer(
    gguf: str, context: int, timeout_s: float = 600.0
) -> tuple[subprocess.Popen[str], str]:
    """llama-cpp-python's server on ``gguf``, through :mod:`benchmarks.llama_server` (the same
    CPU weight buffers as our llama.cpp stages), on a free loopback port."""
    import socket

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "benchmarks.llama_server", "--model", gguf, "--host", "127.0.0.1",
           "--port", str(port), "--n_ctx", str(context), "--verbose", "False"]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AsdError(f"llama-cpp-python's server exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}/v1/models", timeout=5).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.5)
    proc.kill()
    raise AsdError("llama-cpp-python's server did not start")


@cli_entry
def main(argv: Sequence[str] | None = None) -> None:
    """Long because: the configurations run one after another, then one table of ratios."""
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.serving", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--serving", default="params/serving.yaml")
    ap.add_argument("--requests", type=int, default=24)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--lambdas", type=float, nargs="+", default=[0.3, 3.0])
    ap.add_argument("--max-tokens", type=int, default=192, help="cap on each task's token budget")
    ap.add_argument("--time-limit", type=float, default=1800.0, help="seconds per configuration")
    args = ap.parse_args(argv)
    params = config.load(
        [REPO_ROOT / "params/base.yaml", REPO_ROOT / f"params/{args.profile}.yaml"]
    )
    settings = load_settings(args.serving)
    prompts = test_prompts(params, args.requests, args.max_tokens, REPO_ROOT / params.data_dir)
    items = {p.item.item_id: p.item for p in prompts}
    deepest = settings.stages[-1]
    rows = []
    proc, url = start_server(args.serving)
    try:
        for lam in args.lambdas:
            df, wall, skipped = load(url, settings.model_name, prompts, args.clients, {"lambda": lam}, args.time_limit)  # fmt: skip
            rows.append(summarise(f"asd λ={lam:g}", df, wall, skipped, items, params.seed))
            print(rows[-1], flush=True)
        df, wall, skipped = load(url, deepest.name, prompts, args.clients, {}, args.time_limit)
        rows.append(summarise(f"asd forced {deepest.name}", df, wall, skipped, items, params.seed))
        print(rows[-1], flush=True)
    finally:
        stop_server(proc)
    from asd_core.models.registry import resolve

    gguf = resolve(deepest, REPO_ROOT / settings.models_dir, "gguf").weights
    peer, peer_url = start_peer(gguf, deepest.context_length)
    try:
        df, wall, skipped = load(peer_url, "peer", prompts, args.clients, {}, args.time_limit)
        rows.append(summarise(f"llama-cpp-python server, {deepest.name}", df, wall, skipped, items, params.seed))  # fmt: skip
        print(rows[-1], flush=True)
    finally:
        peer.terminate()
        peer.wait(timeout=60)
    table = pd.DataFrame(rows)
    ref = table.iloc[-1]
    table["throughput_vs_peer"] = table["requests_per_s"] / ref["requests_per_s"]
    table["quality_vs_peer"] = table["quality"] - ref["quality"]
    prov = provenance.provenance(params, params.seed, command=" ".join(["python -m benchmarks.serving", *sys.argv[1:]]))  # fmt: skip
    out = REPO_ROOT / params.reports_dir / "tables" / "serving_benchmark.csv"
    provenance.write_table(table, out, prov)
    provenance.write_html(
        table.to_markdown(index=False, floatfmt=".3f"), out.with_suffix(".md"), prov
    )
    print(table.to_markdown(index=False, floatfmt=".3f"))


if __name__ == "__main__":
    main()
