"""What each input and each move costs: measured seconds, the single-sequence cost model, a size proxy.

Data generation batches its stages, so a measured second is a share of a batch. Replay therefore
costs every input with the model fitted in notebook 01 on one-sequence runs
(:func:`with_model_costs`: a prompt term, a decode term and, for verification, a scoring term), and
:func:`cost_model_check` validates that model on the rows that were run one sequence at a time.
:func:`per_input_costs` turns a generations frame into per-input cost arrays for replay;
:class:`InputCostModel` predicts one input's costs from its prompt length (``cost_mode: per_input``).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from asd_core.ground import belief
from asd_core.ground.errors import AsdError
from asd_core.models.base import VERIFY_BLOCK

# seconds as measured in data generation, seconds predicted by the cost model fitted on
# single-sequence runs (notebook 01; see with_model_costs), or a deterministic size × tokens proxy
CostSource = Literal["measured", "model", "flops"]


def by_item(df: pd.DataFrame, n_stages: int) -> pd.DataFrame:
    """``df`` sorted by (item, stage), checked to hold every stage of every item once."""
    if len(df) == 0:
        raise AsdError("the generations frame is empty: no (input, stage) rows")
    counts = df.groupby("item_id")["stage"].nunique()
    if (counts != n_stages).any() or len(df) != len(counts) * n_stages:
        bad = counts[counts != n_stages].index[:1].tolist() or ["(duplicated rows)"]
        raise AsdError(
            f"generations frame: every item needs exactly one row per stage 0..{n_stages - 1}; "
            f"see item {bad[0]}"
        )
    return df.sort_values(["item_id", "stage"], kind="stable").reset_index(drop=True)


def per_input_costs(
    df: pd.DataFrame, n_stages: int, source: CostSource = "measured", sizes: Sequence[float] = ()
) -> tuple[np.ndarray, np.ndarray]:
    """Cost per input: (N, K) from scratch and (N, K, K) escalations k → j (j > k).

    ``source`` "measured" (the default) gives seconds; "flops" a deterministic proxy for
    profiles whose timings are noise (``smoke``): see :func:`flops_costs`.

    Escalating y_k to stage j costs the verification pass (measured, ``verify_s_by[j]`` of the
    stage-k row) plus one decode step of M_j per token it writes after the accepted prefix,
    at this input's own decode rate of M_j (its from-scratch generation time after prefill per
    token). Items come in sorted order (see :func:`item_ids`).
    """
    if source == "flops":
        return flops_costs(df, n_stages, sizes)
    df = by_item(df, n_stages)
    n_out = per_input_column(df, "n_out", n_stages)
    accepted = _per_pair(df, "accepted_by", n_stages)
    if source == "model":
        missing = [c for c in MODEL_COST_COLUMNS if c not in df.columns]
        if missing:
            raise AsdError(
                f"cost_source 'model': the generations lack '{missing[0]}'; add the cost model "
                "of notebook 01 first (costs.with_model_costs)"
            )
        lat, rate = (
            per_input_column(df, c, n_stages) for c in ("model_latency_s", "model_decode_s")
        )
        return lat, _escalations(
            _per_pair(df, "model_verify_s_by", n_stages), rate, n_out, accepted
        )
    lat, prefill = (per_input_column(df, c, n_stages) for c in ("latency_s", "prefill_s"))
    rate = (lat - prefill) / np.maximum(n_out - 1, 1)  # (N, K) s per decoded token
    verify = _per_pair(df, "verify_s_by", n_stages)
    return lat, _escalations(verify, rate, n_out, accepted)


MODEL_COST_COLUMNS = ("model_latency_s", "model_decode_s", "model_verify_s_by")


_COEFFICIENTS = (
    "a_s",
    "b_s_per_in_token",
    "d_s_per_out_token",
    "score_a_s",
    "score_b_s_per_token",
)


def scored_tokens(drafted: np.ndarray, accepted: np.ndarray) -> np.ndarray:
    """Draft tokens a verification pass feeds: up to the end of the block of
    :data:`VERIFY_BLOCK` rows holding the first mismatch, the whole draft if all is accepted."""
    blocks = (np.maximum(accepted, 0) // VERIFY_BLOCK + 1) * VERIFY_BLOCK
    return np.minimum(drafted, blocks - 1)


def with_model_costs(
    df: pd.DataFrame, cost_model: pd.DataFrame, stage_names: Sequence[str]
) -> pd.DataFrame:
    """``df`` with each row's costs as the cost model of notebook 01 predicts them.

    ``cost_model`` is ``tables/cost_model.csv`` (one row per stage, fitted on runs of one
    sequence at a time); ``stage_names`` maps stage indices to its ``stage`` column. Adds
    ``model_latency_s`` (a + b·n_in + d·n_out), ``model_decode_s`` (d, s per token) and
    ``model_verify_s_by`` (per verifying stage j: a'_j + b'_j·(n_in_j + tokens scored), NaN
    where j does not verify this row): what ``cost_source: model`` replays with, so per-input
    costs stay those of one sequence alone when generation ran batched.
    """
    table = cost_model.set_index("stage")
    for name in stage_names:
        if name not in table.index:
            raise AsdError(f"cost model: no row for stage '{name}' (re-run notebook 01)")
    coef = table.loc[list(stage_names), list(_COEFFICIENTS)].to_numpy(float)  # (K, 5)
    a, b, d, sa, sb = coef.T
    K = len(stage_names)
    out = by_item(df, K)
    k = out["stage"].to_numpy()
    n_in, n_out = out["n_in"].to_numpy(float), out["n_out"].to_numpy(float)
    own_in = per_input_column(out, "n_in", K)  # (N, K): each verifier's own prompt length
    drafted, accepted = _per_pair(out, "drafted_by", K), _per_pair(out, "accepted_by", K)
    scored = scored_tokens(drafted, accepted)
    verify = sa + sb * (own_in[:, None, :] + scored)  # (N, K, K): row k's draft verified by j
    verify = np.where(drafted >= 0, verify, np.nan)
    out = out.assign(
        model_latency_s=a[k] + b[k] * n_in + d[k] * n_out,
        model_decode_s=d[k],
        model_verify_s_by=list(verify.reshape(-1, K)),
    )
    return out


def costed(
    df: pd.DataFrame,
    cost_source: CostSource,
    cost_model_csv: str | os.PathLike[str],
    stage_names: Sequence[str],
) -> pd.DataFrame:
    """``df`` ready for ``cost_source``: with :func:`with_model_costs`' columns when it is
    "model" (the cost model read from ``cost_model_csv``, notebook 01's table), else as is."""
    if cost_source != "model":
        return df
    path = Path(cost_model_csv)
    if not path.is_file():
        raise AsdError(f"{path}: no cost model (run notebook 01_profiling first)")
    out = with_model_costs(df, pd.read_csv(path), stage_names)
    out.attrs = dict(df.attrs)
    return out


def cost_model_check(df: pd.DataFrame, stage_names: Sequence[str]) -> pd.DataFrame:
    """How well the cost model predicts the rows timed one sequence at a time (``gen_batch`` 1).

    One row per stage and kind — ``generation``, and ``verification`` of shallower stages'
    drafts by that stage — with the number of timings, R² of measured on predicted seconds
    and the median absolute relative error. ``df`` carries :func:`with_model_costs`' columns.
    """
    solo = df[df["gen_batch"] == 1]
    stage = solo["stage"].to_numpy()
    gen_y, gen_hat = solo["latency_s"].to_numpy(float), solo["model_latency_s"].to_numpy(float)
    rows = [
        _fit_row(name, "generation", gen_y[stage == j], gen_hat[stage == j])
        for j, name in enumerate(stage_names)
    ]
    K = len(stage_names)

    def by_verifier(column: str) -> np.ndarray:
        values = [np.asarray(v, float) for v in solo[column]]
        return np.stack(values) if values else np.zeros((0, K))

    ver_y, ver_hat = by_verifier("verify_s_by"), by_verifier("model_verify_s_by")
    for j in range(1, K):
        ok = np.isfinite(ver_y[:, j]) & np.isfinite(ver_hat[:, j])
        rows.append(_fit_row(stage_names[j], "verification", ver_y[ok, j], ver_hat[ok, j]))
    return pd.DataFrame(rows)


def check_cost_model(
    df: pd.DataFrame, cost_model_csv: str | os.PathLike[str], stage_names: Sequence[str]
) -> pd.DataFrame:
    """:func:`cost_model_check` against the cost model in ``cost_model_csv``; an empty table
    when notebook 01 has not written one (the check needs it; nothing else here does)."""
    if not Path(cost_model_csv).is_file():
        logging.getLogger(__name__).warning(
            "no cost model at %s (notebook 01 writes it): check skipped", cost_model_csv
        )
        return pd.DataFrame(columns=["stage", "kind", "n", "r2", "median_abs_rel_err"])
    return cost_model_check(costed(df, "model", cost_model_csv, stage_names), stage_names)


def _fit_row(stage: str, kind: str, y: np.ndarray, yhat: np.ndarray) -> dict[str, Any]:
    """n, R² and median |relative error| of measured ``y`` against predicted ``yhat``."""
    n = len(y)
    if n < 2:
        return {
            "stage": stage,
            "kind": kind,
            "n": n,
            "r2": math.nan,
            "median_abs_rel_err": math.nan,
        }
    ss_res = float(np.sum((y - yhat) ** 2))
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    return {
        "stage": stage,
        "kind": kind,
        "n": n,
        "r2": 1.0 - ss_res / ss_tot if ss_tot > 0 else math.nan,
        "median_abs_rel_err": float(np.median(np.abs(y - yhat) / np.maximum(y, 1e-9))),
    }


def flops_costs(
    df: pd.DataFrame, n_stages: int, sizes: Sequence[float] = ()
) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic cost proxy: model size × tokens processed (prompt + output), per input.

    From scratch stage k processes its prompt and output; escalating k → j processes M_j's
    prompt plus the draft (verification) and the tokens it writes after the accepted prefix.
    Unitless (billions of parameters × tokens); ``sizes`` default to 1, 2, … K.
    """
    df = by_item(df, n_stages)
    K = n_stages
    size = np.asarray(sizes if len(sizes) else np.arange(1, K + 1), float)  # (K,)
    n_in, n_out = per_input_column(df, "n_in", K), per_input_column(df, "n_out", K)
    verify = size * (n_in[:, None, :] + _per_pair(df, "drafted_by", K))
    unit = np.broadcast_to(size, n_out.shape)
    return size * (n_in + n_out), _escalations(verify, unit, n_out, _per_pair(df, "accepted_by", K))


def per_input_column(df: pd.DataFrame, column: str, n_stages: int) -> np.ndarray:
    """(N, K) float values of a per-row column of an item-sorted frame."""
    return df[column].to_numpy(float).reshape(-1, n_stages)


def _per_pair(df: pd.DataFrame, column: str, n_stages: int) -> np.ndarray:
    """(N, K, K) float values of a list column indexed by the verifying stage j (row k)."""
    values = np.stack(df[column].map(lambda v: np.asarray(v, float)).to_numpy())
    return values.reshape(-1, n_stages, n_stages)


def _escalations(
    verify: np.ndarray, unit: np.ndarray, n_out: np.ndarray, accepted: np.ndarray
) -> np.ndarray:
    """(N, K, K) escalation costs k → j: verification + ``unit`` (N, K) per token M_j writes
    after the accepted prefix; NaN where j ≤ k (no such move)."""
    todo = np.maximum(n_out[:, None, :] - accepted, 0.0)
    K = n_out.shape[1]
    deeper = np.triu(np.ones((K, K), bool), 1)
    return np.where(deeper, verify + todo * unit[:, None, :], np.nan)


def item_ids(df: pd.DataFrame) -> list[str]:
    """Item ids in the order every per-input array here uses."""
    return sorted(df["item_id"].unique().tolist())


@dataclass
class InputCostModel:
    """ĉ for one input from its lengths (docs/design.md §3, §7 ``cost_mode: per_input``).

    Fitted by least squares on the training split's per-input costs (either source):
    from scratch ĉ_j = a_j + b_j·n_in + d_j·n_out; verification of a draft by j costs
    v_j + w_j·(n_in + draft length); continuing costs d_j per token M_j writes after the
    accepted prefix. Output lengths not yet known are predicted by the training mean per
    (task, stage); the accepted share of M_j's output after stage k by the mean f̄_kj.
    """

    scratch_coef: np.ndarray  # (K, 3) a, b, d per stage (cost units, per token)
    verify_coef: np.ndarray  # (K, 2) v, w per verifying stage
    accepted_share: np.ndarray  # (K, K) mean share of M_j's output accepted from y_k, j > k
    n_out_mean: dict[tuple[str, int], float]  # (task, stage) → mean output tokens
    n_out_default: np.ndarray  # (K,) mean output tokens per stage, for unseen tasks
    norm: float  # the table's normaliser: mean cost of the deepest stage from scratch

    def n_out(self, task: str, stage: int) -> float:
        return self.n_out_mean.get((task, stage), float(self.n_out_default[stage]))

    def matrix(self, task: str, n_in: float, known: dict[int, float]) -> np.ndarray:
        """(K+1, K) normalised costs for this input; ``known`` maps stages to their real n_out."""
        K = len(self.scratch_coef)
        out = {k: known.get(k, self.n_out(task, k)) for k in range(K)}
        c = np.zeros((K + 1, K))
        for j in range(K):
            a, b, d = self.scratch_coef[j]
            c[0, j] = a + b * n_in + d * out[j]
            for k in range(j):
                v, w = self.verify_coef[j]
                todo = out[j] * (1.0 - self.accepted_share[k, j])
                c[k + 1, j] = v + w * (n_in + out[k]) + d * todo
        return np.maximum(c, 1e-9) / self.norm

    def costs(self, task: str, n_in: float, known: dict[int, float], n_bins: int) -> belief.Costs:
        """:meth:`matrix` as the solver's :class:`~asd_core.ground.belief.Costs` (flat over beliefs)."""
        c = self.matrix(task, n_in, known)
        K = len(c) - 1
        resume = np.where(np.triu(np.ones((K, K), bool), 1), c[1:], np.nan)
        return belief.Costs(c[0], np.broadcast_to(resume[:, None, :, None], (K, 2, K, n_bins)))


def fit_input_costs(
    df: pd.DataFrame, n_stages: int, source: CostSource, sizes: Sequence[float]
) -> InputCostModel:
    """Least-squares fit of :class:`InputCostModel` on a generations frame (training split)."""
    df = by_item(df, n_stages)
    K, N = n_stages, len(df) // n_stages
    scratch, esc = per_input_costs(df, K, source, sizes)
    n_in, n_out = per_input_column(df, "n_in", K), per_input_column(df, "n_out", K)
    accepted = _per_pair(df, "accepted_by", K)
    scratch_coef = np.zeros((K, 3))
    verify_coef = np.zeros((K, 2))
    share = np.zeros((K, K))
    for j in range(K):
        X = np.column_stack([np.ones(N), n_in[:, j], n_out[:, j]])
        scratch_coef[j] = np.linalg.lstsq(X, scratch[:, j], rcond=None)[0]
        d = scratch_coef[j, 2]
        rows_x, rows_y = [], []
        for k in range(j):
            share[k, j] = float(
                np.mean(np.clip(accepted[:, k, j], 0, None) / np.maximum(n_out[:, j], 1))
            )
            todo = np.maximum(n_out[:, j] - accepted[:, k, j], 0.0)
            rows_x.append(np.column_stack([np.ones(N), n_in[:, j] + n_out[:, k]]))
            rows_y.append(esc[:, k, j] - d * todo)  # the verification part of the escalation
        if rows_x:
            verify_coef[j] = np.linalg.lstsq(np.vstack(rows_x), np.concatenate(rows_y), rcond=None)[
                0
            ]
    means = df.groupby(["task", "stage"])["n_out"].mean()
    return InputCostModel(
        scratch_coef=scratch_coef,
        verify_coef=verify_coef,
        accepted_share=share,
        n_out_mean={(str(t), int(k)): float(v) for (t, k), v in means.items()},
        n_out_default=n_out.mean(axis=0),
        norm=float(scratch[:, -1].mean()),
    )


def size_based_costs(sizes: Sequence[float], n_bins: int) -> belief.Costs:
    """Costs proportional to model size, no reuse of drafts (the constant-cost ablation)."""
    s = np.asarray(sizes, float)
    return belief.flat_costs(s, np.tile(s, (len(s), 1)), n_bins)
