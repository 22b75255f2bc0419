"""Summaries of the evaluation's tidy table (one row per method × λ × seed × dataset × input): CIs per method and λ, paired tests against the deepest stage, curve statistics.

The *reference* is the deepest stage alone; every comparison is paired on inputs, because the
inputs, not the rows, are the independent units: costs and qualities of two methods on the same
prompt are correlated. Seeds are averaged per input first, so an input counts once.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pandas as pd

from asd_core.ground.frontier import (
    normalised_area,
    oracle_gap,
    saving_share,
    smallest_matching_lambda,
)
from asd_core.ground.stats import (
    CI,
    PairedTestResult,
    StatsError,
    bootstrap_ci,
    holm,
    is_binary,
    mcnemar_test,
    mean,
    quality_retention,
    speedup,
    wilcoxon_test,
)

# Columns the evaluation table must have (see summarise).
REQUIRED_COLUMNS = ("method", "lam", "seed", "dataset", "item_id", "quality", "cost", "depth")


def deepest_stage(df: pd.DataFrame) -> str:
    """Name of the deepest single stage in the table (``stage_<k>`` with the largest k)."""
    stages = {
        int(m.group(1)): name
        for name in df["method"].unique()
        if (m := re.fullmatch(r"stage_(\d+)", str(name)))
    }
    if not stages:
        raise StatsError("no 'stage_<k>' method in the table: pass reference= explicitly")
    return stages[max(stages)]


def check_table(df: pd.DataFrame) -> None:
    """Raise :class:`StatsError` (one line) unless ``df`` is a usable evaluation table."""
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise StatsError(f"evaluation table lacks column(s) {', '.join(missing)}")
    if df.empty:
        raise StatsError("evaluation table is empty")
    for col in ("method", "seed", "dataset", "item_id"):
        if df[col].isna().any():
            raise StatsError(f"evaluation table column '{col}' has missing values")
    for col in ("quality", "cost", "depth"):
        values = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=float)
        if not np.all(np.isfinite(values)):
            raise StatsError(f"evaluation table column '{col}' has NaN or non-numeric values")
        if col == "cost" and np.any(values < 0):
            raise StatsError("evaluation table column 'cost' has negative values")
    keys = ["method", "lam", "seed", "dataset", "item_id"]
    dup = df.duplicated(subset=keys)
    if dup.any():
        row = df.loc[dup, keys].iloc[0].to_dict()
        raise StatsError(f"evaluation table has duplicated rows, e.g. {row}")


def _per_input(rows: pd.DataFrame) -> pd.DataFrame:
    """Seed-averaged quality, cost and depth per input (index: item_id, sorted)."""
    return rows.groupby("item_id")[["quality", "cost", "depth"]].mean().sort_index()


def _seed_sd(rows: pd.DataFrame, col: str) -> float:
    per_seed = rows.groupby("seed")[col].mean()
    return float(per_seed.std(ddof=1)) if len(per_seed) > 1 else float("nan")


def summarise(
    df: pd.DataFrame,
    reference: str | None = None,
    oracle: str | None = "oracle_router",
    confidence: float = 0.95,
    alpha: float = 0.05,
    n_resamples: int = 2000,
    seed: int = 0,
    ci_method: str = "BCa",
) -> pd.DataFrame:
    """One row per method × λ × dataset: means with CIs, speedup, retention and paired tests.

    Seeds are averaged per input, then the inputs are the bootstrap and test units: for each
    (method, λ, dataset) the quality, cost and depth of an input are its means over the seeds
    the method ran (the reference likewise), so an input counts once however many seeds there
    are. CIs thus reflect input sampling; the spread across seeds is reported separately as the
    standard deviation of the per-seed means (``*_seed_sd``, NaN with one seed). Every method
    must cover exactly the reference's inputs of a dataset.

    Columns: method, lam (NaN for methods without λ), dataset, n_inputs, n_seeds,
    quality/_low/_high, cost/_low/_high (seconds), quality_seed_sd, cost_seed_sd, depth (mean
    final stage), speedup/_low/_high (mean reference cost ÷ mean cost), retention/_low/_high
    (mean quality ÷ mean reference quality), saving_share (:func:`saving_share`, NaN without an
    ``oracle`` method in the dataset), quality_test ("mcnemar-*" when both sides' per-input
    qualities are 0/1, else "wilcoxon" on the per-input quality differences), p_quality, p_cost
    (Wilcoxon on per-input costs), their Holm-adjusted versions p_quality_holm, p_cost_holm and
    flags significant_quality, significant_cost (adjusted p < alpha). The Holm family is one
    method's rows across datasets × λ, separately for quality and cost; reference rows are not
    tested (NaN p-values). ``ci_method="percentile"`` skips BCa's jackknife, which is O(n²) in
    the number of inputs (seconds per CI at n ≈ 14k).

    Long because: one row per method × λ × dataset with every CI and paired test spelled out.
    """
    check_table(df)
    reference = reference if reference is not None else deepest_stage(df)
    if reference not in set(df["method"]):
        raise StatsError(f"reference method '{reference}' is not in the evaluation table")
    if df.loc[df["method"] == reference, "lam"].nunique(dropna=False) > 1:
        raise StatsError(f"reference method '{reference}' has several λ values")
    boot: dict[str, Any] = dict(
        confidence=confidence, n_resamples=n_resamples, seed=seed, method=ci_method
    )

    records = []
    for dataset, data in df.groupby("dataset", sort=True):
        ref = _per_input(data[data["method"] == reference])
        if ref.empty:
            raise StatsError(f"dataset '{dataset}' has no rows of reference '{reference}'")
        oracle_rows = data[data["method"] == oracle] if oracle is not None else data.iloc[:0]
        oracle_cost = _per_input(oracle_rows)["cost"].mean() if len(oracle_rows) else np.nan
        for (method, lam), rows in data.groupby(["method", "lam"], sort=True, dropna=False):
            per = _per_input(rows)
            if not per.index.equals(ref.index):
                raise StatsError(
                    f"dataset '{dataset}': method '{method}' (λ={lam}) covers {len(per)} inputs, "
                    f"not the {len(ref)} inputs of reference '{reference}'"
                )
            records.append(
                _summary_row(per, ref, rows, oracle_cost, method == reference, boot)
                | {"method": method, "lam": lam, "dataset": dataset}
            )

    out = pd.DataFrame.from_records(records)
    for kind in ("quality", "cost"):
        out[f"p_{kind}_holm"] = np.nan
        out[f"significant_{kind}"] = False
        for _, idx in out.groupby("method").groups.items():
            adjusted, reject = holm(out.loc[idx, f"p_{kind}"], alpha=alpha)
            out.loc[idx, f"p_{kind}_holm"] = adjusted
            out.loc[idx, f"significant_{kind}"] = reject
    first = ["method", "lam", "dataset"]
    last = ["p_quality_holm", "p_cost_holm", "significant_quality", "significant_cost"]
    out = out[first + [c for c in out.columns if c not in first + last] + last]
    return out.sort_values(["dataset", "method", "lam"], ignore_index=True)


def _summary_row(
    per: pd.DataFrame,
    ref: pd.DataFrame,
    rows: pd.DataFrame,
    oracle_cost: float,
    is_reference: bool,
    boot: dict[str, Any],
) -> dict[str, object]:
    q, c = per["quality"].to_numpy(), per["cost"].to_numpy()
    q_ref, c_ref = ref["quality"].to_numpy(), ref["cost"].to_numpy()
    quality = bootstrap_ci(mean, q, **boot)
    cost = bootstrap_ci(mean, c, **boot)
    fast = speedup(c, c_ref, **boot)
    kept = quality_retention(q, q_ref, **boot)
    if is_reference:
        q_test = c_test = PairedTestResult("none", np.nan, np.nan, 0)
    else:
        binary = is_binary(q) and is_binary(q_ref)
        q_test = mcnemar_test(q, q_ref) if binary else wilcoxon_test(q, q_ref)
        c_test = wilcoxon_test(c, c_ref)
    return {
        "n_inputs": len(per),
        "n_seeds": int(rows["seed"].nunique()),
        **_ci_columns("quality", quality),
        **_ci_columns("cost", cost),
        "quality_seed_sd": _seed_sd(rows, "quality"),
        "cost_seed_sd": _seed_sd(rows, "cost"),
        "depth": float(per["depth"].mean()),
        **_ci_columns("speedup", fast),
        **_ci_columns("retention", kept),
        "saving_share": (
            saving_share(float(c.mean()), oracle_cost, float(c_ref.mean()))
            if np.isfinite(oracle_cost)
            else np.nan
        ),
        "quality_test": q_test.test,
        "p_quality": q_test.p_value,
        "p_cost": c_test.p_value,
    }


def _ci_columns(name: str, ci: CI) -> dict[str, float]:
    return {name: ci.estimate, f"{name}_low": ci.low, f"{name}_high": ci.high}


def headline(summary: pd.DataFrame, reference: str | None = None) -> pd.DataFrame:
    """Per method with a λ sweep × dataset: the smallest λ matching the reference's quality.

    ``summary`` is :func:`summarise`'s output. The reference's quality comes from its row in
    the same dataset; the chosen λ follows :func:`smallest_matching_lambda`. Columns: method,
    dataset, lam (NaN when no λ matches), matched, and that λ's quality, cost, speedup and
    retention with their CIs (NaN when unmatched).
    """
    if summary.empty:
        raise StatsError("summary table is empty")
    reference = reference if reference is not None else deepest_stage(summary)
    shown = ["quality", "cost", "speedup", "retention"]
    shown = [f"{s}{suffix}" for s in shown for suffix in ("", "_low", "_high")]
    records = []
    for dataset, data in summary.groupby("dataset", sort=True):
        r = _single_row(data, reference, dataset)
        swept = data[data["lam"].notna() & (data["method"] != reference)]
        for method, rows in swept.groupby("method", sort=True):
            lam = smallest_matching_lambda(rows["lam"], rows["quality"], float(r["quality"]))
            matched = bool(np.isfinite(lam))
            picked = rows[rows["lam"] == lam].iloc[0] if matched else None
            records.append(
                {"method": method, "dataset": dataset, "lam": lam, "matched": matched}
                | {s: (picked[s] if picked is not None else np.nan) for s in shown}
            )
    return pd.DataFrame.from_records(
        records, columns=["method", "dataset", "lam", "matched", *shown]
    )


def curve_summary(
    summary: pd.DataFrame,
    cheapest: str = "stage_0",
    reference: str | None = None,
    oracle: str | None = "oracle_router",
) -> pd.DataFrame:
    """Per method × dataset: the normalised area and the oracle gap of the method's curve.

    ``summary`` is :func:`summarise`'s output; a method's curve is its rows' (cost, quality), one
    per λ (a single point for a method without λ). Columns: method, dataset, n_points,
    area (:func:`normalised_area` between ``cheapest`` and ``reference``), oracle_gap
    (:func:`oracle_gap` ratio, NaN without the ``oracle`` method or when not reached) and
    reaches_oracle.
    """
    if summary.empty:
        raise StatsError("summary table is empty")
    reference = reference if reference is not None else deepest_stage(summary)
    records = []
    for dataset, data in summary.groupby("dataset", sort=True):
        lo = _single_row(data, cheapest, dataset)
        hi = _single_row(data, reference, dataset)
        orc = None
        if oracle is not None and (data["method"] == oracle).any():
            orc = _single_row(data, oracle, dataset)
        for method, rows in data.groupby("method", sort=True):
            c, q = rows["cost"].to_numpy(), rows["quality"].to_numpy()
            area = normalised_area(c, q, (lo["cost"], lo["quality"]), (hi["cost"], hi["quality"]))
            gap = oracle_gap(c, q, orc["cost"], orc["quality"]) if orc is not None else None
            records.append(
                {
                    "method": method,
                    "dataset": dataset,
                    "n_points": len(rows),
                    "area": area,
                    "oracle_gap": gap.ratio if gap is not None else np.nan,
                    "reaches_oracle": gap.reached if gap is not None else False,
                }
            )
    return pd.DataFrame.from_records(records)


def _single_row(summary: pd.DataFrame, method: str, dataset: object) -> pd.Series:
    rows = summary[summary["method"] == method]
    if len(rows) != 1:
        raise StatsError(
            f"dataset '{dataset}': expected one summary row of '{method}', got {len(rows)}"
        )
    return rows.iloc[0]
