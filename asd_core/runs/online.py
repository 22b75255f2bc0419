"""Online confirmation of the replayed λ sweep (docs/design.md §10): the real pipeline, real models.

For a few λ values the adaptive policy runs through :class:`~asd_core.decoding.pipeline.Pipeline` on test
inputs; each input's path and depth are compared with what replay over the cached generations
decided, its measured latency with the replayed cost, and its output with the cached output of
the stage it ended at (losslessness of the escalations, up to near-ties).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from asd_core.data import load_task
from asd_core.decoding.pipeline import Pipeline, Request
from asd_core.ground.config import StageConfig
from asd_core.ground.errors import AsdError
from asd_core.models.base import GenerationParams
from asd_core.models.registry import load_backend
from asd_core.policy.adaptive import AdaptivePolicy, CachedObserver, LiveObserver
from asd_core.policy.fitting import PolicyModel, predictions
from asd_core.runs.replay import ReplayData, simulate

# one row per (λ, input) of the online check
ONLINE_COLUMNS = (
    "lam",
    "item_id",
    "task",
    "online_path",
    "replay_path",
    "online_depth",
    "replay_depth",
    "depth_agrees",
    "path_agrees",
    "online_s",
    "replay_s",
    "decision_s",
    "output_equals_cached",
)
AGREEMENT_COLUMNS = (
    "lam",
    "inputs",
    "depth_agreement",
    "path_agreement",
    "outputs_equal_cached",
    "online_s",
    "replay_s",
    "distinct_paths",
    "escalations",
    "online_over_replay",
)


def pick_inputs(test_df: pd.DataFrame, n: int, seed: int) -> list[str]:
    """``n`` test item ids (all when fewer), a seeded sample in sorted order."""
    ids = sorted(test_df["item_id"].unique())
    if n >= len(ids):
        return ids
    chosen = np.random.default_rng(seed).choice(len(ids), size=n, replace=False)
    return [ids[i] for i in sorted(chosen)]


def requests_for(
    manifest: Mapping[str, Any], data_dir: str | Path, item_ids: Sequence[str]
) -> list[Request]:
    """The pipeline requests of these items, with the settings data generation recorded."""
    wanted = set(item_ids)
    by_id = {}
    sources = manifest.get("task_sources", {})
    for task in manifest["tasks"]:
        source = sources.get(task, "package")
        for it in load_task(task, data_dir, None if source == "package" else source):
            if it.item_id in wanted:
                by_id[it.item_id] = it
    missing = sorted(wanted - set(by_id))
    if missing:
        raise AsdError(f"online run: item '{missing[0]}' is not in the task data any more")
    settings = {
        t: GenerationParams(
            max_new_tokens=g["max_new_tokens"],
            stop_strings=tuple(g["stop_strings"]),
            top_k=int(manifest.get("top_k", 2)),
            options=tuple(g.get("options", ())),
        )
        for t, g in manifest["generation"].items()
    }
    return [Request(i, by_id[i].task, by_id[i].question, settings[by_id[i].task]) for i in item_ids]


def informative_lambdas(
    model: PolicyModel,
    data: ReplayData,
    observer: CachedObserver,
    candidates: Sequence[float],
    n: int,
    cost_mode: Literal["table", "per_input"] = "table",
) -> list[float]:
    """Up to ``n`` λ from ``candidates`` at which the replayed policy is not constant on these
    inputs: at least two different paths and at least one escalation. Agreement at a λ where
    every input takes the same path could not fail, so only these λ confirm anything.

    Spread over the informative ones (lowest, highest, then evenly between); an empty list when
    no candidate qualifies.
    """
    good = []
    for lam in sorted(candidates):
        policy = AdaptivePolicy(model, lam, observer, cost_mode=cost_mode)
        paths = simulate(data, policy).paths
        if len(set(paths)) >= 2 and any(len(p) > 1 for p in paths):
            good.append(float(lam))
    if len(good) <= n:
        return good
    pick = np.linspace(0, len(good) - 1, n).round().astype(int)
    return [good[i] for i in sorted(set(pick.tolist()))]


def confirm(
    stages: Sequence[StageConfig],
    manifest: Mapping[str, Any],
    model: PolicyModel,
    candidate_lambdas: Sequence[float],
    n_lambdas: int,
    test_df: pd.DataFrame,
    n_inputs: int,
    data_dir: str | Path,
    models_dir: str | Path,
    label_mode: str,
    seed: int = 0,
    progress: bool = True,
    cost_mode: Literal["table", "per_input"] = "table",
) -> pd.DataFrame:
    """One row per (λ, input): online vs replayed path, depth, seconds, and output identity.

    The λ are chosen by :func:`informative_lambdas` among ``candidate_lambdas``. When none
    qualifies the check could not fail anywhere, so nothing runs: the result is empty and a
    warning names the reason.

    Long because: λ selection, the online runs and the per-input comparison are one protocol.
    """
    K = len(stages)
    if not candidate_lambdas or n_inputs == 0 or n_lambdas == 0:
        return pd.DataFrame(columns=list(ONLINE_COLUMNS))
    ids = pick_inputs(test_df, n_inputs, seed)
    sub = test_df[test_df["item_id"].isin(ids)]
    data = ReplayData.from_frame(sub, K, label_mode)
    s0 = model.predictor.config.input_stage
    cached = CachedObserver(predictions(model.predictor, sub, K), data.n_in[:, s0], data.n_out)
    lambdas = informative_lambdas(model, data, cached, candidate_lambdas, n_lambdas, cost_mode)
    if not lambdas:
        logging.getLogger(__name__).warning(
            "online check skipped: at none of %d λ does the replayed policy take two different "
            "paths with an escalation on the %d inputs (raise online_inputs)",
            len(candidate_lambdas),
            data.n,
        )
        return pd.DataFrame(columns=list(ONLINE_COLUMNS))
    outputs = {(r.item_id, r.stage): list(r.token_ids) for r in sub.itertuples()}
    requests = requests_for(manifest, data_dir, data.item_ids)
    backends = [load_backend(s, models_dir) for s in stages]
    rows = []
    try:
        pipe = Pipeline(backends)
        live = LiveObserver(model.predictor, backends[s0].tokenizer)
        for lam in lambdas:
            online = AdaptivePolicy(model, lam, live, cost_mode=cost_mode)
            traces = pipe.run(requests, online, progress=progress)
            replayed = simulate(data, AdaptivePolicy(model, lam, cached, cost_mode=cost_mode))
            for i, t in enumerate(traces):
                rows.append(
                    {
                        "lam": lam,
                        "item_id": t.request.item_id,
                        "task": t.request.task,
                        "online_path": "→".join(map(str, t.path)),
                        "replay_path": "→".join(map(str, replayed.paths[i])),
                        "online_depth": t.depth,
                        "replay_depth": int(replayed.depth[i]),
                        "depth_agrees": t.depth == int(replayed.depth[i]),
                        "path_agrees": tuple(t.path) == replayed.paths[i],
                        "online_s": t.latency_s,
                        "replay_s": float(replayed.cost_s[i]),
                        "decision_s": t.decision_s,
                        "output_equals_cached": t.output.token_ids
                        == outputs[(t.request.item_id, t.depth)],
                    }
                )
    finally:
        for b in backends:
            b.close()
    return pd.DataFrame(rows, columns=list(ONLINE_COLUMNS))


def agreement_summary(online: pd.DataFrame) -> pd.DataFrame:
    """Per λ: decision agreement, output identity, the latency gap online ÷ replayed, and how
    varied the decisions were (distinct paths, escalations); no rows when nothing ran."""
    if online.empty:
        return pd.DataFrame(columns=list(AGREEMENT_COLUMNS))
    return (
        online.groupby("lam")
        .agg(
            inputs=("item_id", "size"),
            depth_agreement=("depth_agrees", "mean"),
            path_agreement=("path_agrees", "mean"),
            outputs_equal_cached=("output_equals_cached", "mean"),
            online_s=("online_s", "sum"),
            replay_s=("replay_s", "sum"),
            distinct_paths=("replay_path", "nunique"),
            escalations=("replay_path", lambda p: int(p.str.contains("→").sum())),
        )
        .assign(online_over_replay=lambda d: d["online_s"] / d["replay_s"])
        .reset_index()
    )
