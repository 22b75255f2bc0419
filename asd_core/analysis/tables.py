"""The paper's tables: the headline per task, accuracy and latency per method, and their display as text and HTML.

Table functions return DataFrames with numeric estimates and CI bounds as columns ``x``,
``x_low``, ``x_high``, which :func:`display_table` turns into "est [low, high]" text and
:func:`write_csv_and_html` writes as CSV + HTML with provenance.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from asd_core.analysis import summaries
from asd_core.analysis.curve_stats import CurvePoints, Statistic, resampled_statistics, saving_share
from asd_core.analysis.names import AREA_METHODS, ORACLE, AnalysisError, order_key, summary_row
from asd_core.ground import frontier, stats
from asd_core.ground.provenance import write_html, write_table


def headline_table(
    results: pd.DataFrame,
    summary: pd.DataFrame,
    curves: pd.DataFrame,
    method: str = "dp",
    confidence: float = 0.95,
    n_resamples: int = 1000,
    seed: int = 0,
    reference: str | None = None,
    oracle: str = ORACLE,
    compare: Sequence[str] = AREA_METHODS,
) -> pd.DataFrame:
    """Per dataset: ``method`` at the smallest λ matching the deepest stage's quality.

    The λ is :func:`operating_points`' (the smallest λ whose quality is at least the lower bound
    of the deepest stage's CI; if none matches, ``matched`` is False and the speedup, retention
    and saving share are NaN). Columns: dataset, method, lam, matched, n_inputs,
    quality/_low/_high, reference_quality/_low/_high, speedup/_low/_high and retention/_low/_high
    (from ``summary``), saving_share/_low/_high (share of the oracle router's saving, bootstrapped
    here, the λ held fixed), oracle_gap/_low/_high (of the method's whole curve, from ``curves``),
    and area_<m>/_low/_high for every ``compare`` method (from ``curves`` = :func:`curve_table`,
    which must use the same ``seed`` and ``n_resamples`` for the CIs to be paired), with
    dp_minus_router/_low/_high (the paired area difference). Also quality_diff/_low/_high (the
    method's quality minus the deepest stage's at that λ, paired bootstrap), the efficiency
    figures tokens_per_s (output tokens of the returned answers per second of cost) and
    s_per_quality (mean cost per unit of mean quality) beside the deepest stage's, and
    ``reason`` naming why a figure is NaN.

    Long because: one row per task gathers a dozen statistics, each with its CI and reason.
    """
    reference = reference or summaries.deepest_stage(summary)
    if not (summary["method"] == method).any():
        raise AnalysisError(f"headline method '{method}' is not in the summary table")
    points = operating_points(summary, reference)
    records = []
    for dataset, data in summary.groupby("dataset", sort=True):
        ref = summary_row(data, reference)
        pick = points[(points["method"] == method) & (points["dataset"] == dataset)]
        if ref is None or pick.empty:
            continue
        lam, matched = float(pick["lam"].iloc[0]), bool(pick["matched"].iloc[0])
        row = select_rows(data, method, str(dataset), lam).iloc[0]
        rec: dict[str, Any] = {
            "dataset": dataset,
            "method": method,
            "lam": lam,
            "matched": matched,
            "n_inputs": int(row["n_inputs"]),
        }
        for name in ("quality", "speedup", "retention"):
            keep = name == "quality" or matched
            for suffix in ("", "_low", "_high"):
                rec[name + suffix] = row[name + suffix] if keep else np.nan
        for suffix in ("", "_low", "_high"):
            rec["reference_quality" + suffix] = ref["quality" + suffix]
        undefined = stats.CI(np.nan, np.nan, np.nan, confidence, "undefined")
        share = diff = undefined
        data_rows = results[results["dataset"] == dataset]
        pts = CurvePoints.of(data_rows, str(dataset))
        col, orc, hi = pts.column(method, lam), pts.column(oracle), pts.column(reference)
        reasons = [] if matched else ["no λ keeps 95% of the deepest stage's quality"]
        if col is not None and hi is not None:
            wanted = {"diff": _difference(col, hi)}
            if matched and orc is not None:
                wanted["share"] = saving_share(col, orc, hi)
            cis = resampled_statistics(pts, wanted, confidence, n_resamples, seed)
            diff, share = cis["diff"], cis.get("share", undefined)
            if orc is not None and pts.cost[:, orc].mean() >= pts.cost[:, hi].mean():
                reasons.append("the oracle router saves nothing: no saving share")
        rec |= {
            "saving_share": share.estimate,
            "saving_share_low": share.low,
            "saving_share_high": share.high,
            "quality_diff": diff.estimate,
            "quality_diff_low": diff.low,
            "quality_diff_high": diff.high,
        }
        rec |= _efficiency(data_rows, method, lam, "")
        rec |= _efficiency(data_rows, reference, float("nan"), "reference_")
        if rec["s_per_quality"] != rec["s_per_quality"]:  # NaN
            reasons.append("quality 0: no cost per quality point")
        mine = curves[(curves["dataset"] == dataset) & (curves["method"] == method)]
        for suffix in ("", "_low", "_high"):
            rec["oracle_gap" + suffix] = (
                mine["oracle_gap" + suffix].iloc[0] if len(mine) else np.nan
            )
        for name in compare:
            c = curves[(curves["dataset"] == dataset) & (curves["method"] == name)]
            for suffix in ("", "_low", "_high"):
                rec[f"area_{name}{suffix}"] = c["area" + suffix].iloc[0] if len(c) else np.nan
        for suffix in ("", "_low", "_high"):
            rec["dp_minus_router" + suffix] = (
                mine["area_vs_router" + suffix].iloc[0]
                if len(mine) and "area_vs_router" in mine
                else np.nan
            )
        rec["reason"] = "; ".join(reasons)
        records.append(rec)
    return pd.DataFrame.from_records(records)


def _difference(col: int, ref: int) -> Statistic:
    def f(q: np.ndarray, c: np.ndarray) -> float:
        return float(q[col] - q[ref])

    return f


def _efficiency(rows: pd.DataFrame, method: str, lam: float, prefix: str) -> dict[str, float]:
    """Tokens per second of cost and seconds per unit of quality at one operating point."""
    picked = rows[rows["method"] == method]
    picked = (
        picked[picked["lam"].isna()] if pd.isna(lam) else picked[np.isclose(picked["lam"], lam)]
    )
    cost, quality = float(picked["cost"].sum()), float(picked["quality"].mean())
    tokens = float(picked["tokens"].sum()) if "tokens" in picked else float("nan")
    return {
        f"{prefix}tokens_per_s": tokens / cost if cost > 0 else float("nan"),
        f"{prefix}s_per_quality": float(picked["cost"].mean()) / quality
        if quality > 0
        else float("nan"),
    }


def accuracy_latency_table(
    summary: pd.DataFrame, points: pd.DataFrame | None = None
) -> pd.DataFrame:
    """Quality, latency, speedup and retention with CIs and significance marks, per dataset.

    One row per method at its operating point (:func:`operating_points`). ``quality_mark`` /
    ``latency_mark`` are "*" when the Holm-adjusted paired test against the deepest stage alone
    (McNemar for 0/1 quality, Wilcoxon signed-rank for scores and latency; ``summarise``'s
    ``significant_*`` flags) rejects. Latency is the mean seconds per input.
    """
    points = points if points is not None else operating_points(summary)
    records = []
    for p in points.itertuples(index=False):
        row = select_rows(summary, str(p.method), str(p.dataset), float(p.lam)).iloc[0]
        records.append(
            {
                "dataset": p.dataset,
                "method": p.method,
                "lam": p.lam,
                "operating_point": p.rule,
                "n_inputs": int(row["n_inputs"]),
                "quality": row["quality"],
                "quality_low": row["quality_low"],
                "quality_high": row["quality_high"],
                "quality_test": row["quality_test"],
                "p_quality_holm": row["p_quality_holm"],
                "quality_mark": "*" if bool(row["significant_quality"]) else "",
                "latency_s": row["cost"],
                "latency_s_low": row["cost_low"],
                "latency_s_high": row["cost_high"],
                "p_latency_holm": row["p_cost_holm"],
                "latency_mark": "*" if bool(row["significant_cost"]) else "",
                "speedup": row["speedup"],
                "speedup_low": row["speedup_low"],
                "speedup_high": row["speedup_high"],
                "retention": row["retention"],
                "retention_low": row["retention_low"],
                "retention_high": row["retention_high"],
                "depth": row["depth"],
            }
        )
    return pd.DataFrame.from_records(records)


_HEADERS = {"lam": "λ / budget", "cost": "cost (s)", "latency_s": "latency (s)", "n_inputs": "n"}


def _fmt(value: Any, kind: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, (float, np.floating)) and math.isinf(value):
        return "∞" if value > 0 else "−∞"
    base = "area" if kind.startswith("area") else kind
    if base in _FORMATS:
        return _FORMATS[base](float(value))
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (float, np.floating)):
        return f"{value:.3g}"
    return str(value)


def display_table(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` as text for reading: "est [low, high]" for every ``x``/``x_low``/``x_high`` triple.

    A ``<x>_mark`` column (e.g. "*") is appended to its estimate; NaN shows as "—", +inf as "∞";
    columns are renamed for reading ("lam" → "λ / budget", underscores → spaces).
    """
    out = pd.DataFrame(index=df.index)
    skip: set[str] = set()
    mark_of = {"quality": "quality_mark", "latency_s": "latency_mark", "cost": "cost_mark"}
    for col in df.columns:
        if col in skip:
            continue
        low, high = f"{col}_low", f"{col}_high"
        mark = mark_of.get(col, f"{col}_mark")
        if low in df.columns and high in df.columns:
            skip |= {low, high}
            text = [
                f"{_fmt(v, col)} [{_fmt(lo, col)}, {_fmt(hi, col)}]"
                if not pd.isna(lo)
                else _fmt(v, col)
                for v, lo, hi in zip(df[col], df[low], df[high], strict=True)
            ]
        else:
            text = [_fmt(v, col) for v in df[col]]
        if mark in df.columns and mark != col:
            skip.add(mark)
            text = [
                t + (f" {m}" if m else "") for t, m in zip(text, df[mark].fillna(""), strict=True)
            ]
        out[_HEADERS.get(col, col.replace("_", " "))] = text
    return out


_PAGE_CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto;
       max-width: 1400px; padding: 0 1em; color: #222; }
h1 { font-size: 1.3em; } p.caption { color: #555; max-width: 70em; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; }
th, td { padding: 4px 10px; border-bottom: 1px solid #ddd; text-align: left; white-space: nowrap; }
th { background: #f3f3f3; position: sticky; top: 0; }
tr:hover td { background: #fafafa; }
"""


def html_page(df: pd.DataFrame, title: str, caption: str = "") -> str:
    """A standalone HTML page holding ``display_table(df)``: inline CSS, no external assets."""
    import html

    table = display_table(df).to_html(index=False, border=0, classes="asd-table", escape=True)
    cap = f'<p class="caption">{html.escape(caption)}</p>\n' if caption else ""
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_PAGE_CSS}</style></head>\n"
        f"<body>\n<h1>{html.escape(title)}</h1>\n{cap}{table}\n</body></html>\n"
    )


def write_csv_and_html(
    df: pd.DataFrame,
    stem: str | os.PathLike[str],
    provenance: Mapping[str, Any],
    title: str,
    caption: str = "",
) -> tuple[Path, Path]:
    """Write ``<stem>.csv`` (numbers) and ``<stem>.html`` (readable), each with a provenance sidecar."""
    stem = Path(stem)
    csv = write_table(df, stem.with_suffix(".csv"), provenance)
    html = write_html(html_page(df, title, caption), stem.with_suffix(".html"), provenance)
    return csv, html


def operating_points(summary: pd.DataFrame, reference: str | None = None) -> pd.DataFrame:
    """Each method's operating point per dataset: which λ a table or figure shows.

    Single-point methods: their one row. Methods with a λ sweep: the smallest λ whose quality
    keeps 95% of the deepest stage's (:func:`frontier.smallest_matching_lambda`); when none does,
    the λ of highest quality. Columns: method, dataset, lam, matched, rule.
    """
    reference = reference or summaries.deepest_stage(summary)
    records = []
    for dataset, data in summary.groupby("dataset", sort=True):
        ref = summary_row(data, reference)
        if ref is None:
            raise AnalysisError(f"dataset '{dataset}': no single summary row of '{reference}'")
        for method, rows in data.groupby("method", sort=False):
            swept = rows[rows["lam"].notna()]
            if swept.empty or method == reference:
                lam, matched, rule = rows["lam"].iloc[0], False, "single point"
            else:
                lam = frontier.smallest_matching_lambda(
                    swept["lam"], swept["quality"], float(ref["quality"])
                )
                matched = bool(np.isfinite(lam))
                if matched:
                    rule = "smallest λ (or budget, share) keeping 95% of the deepest stage"
                else:
                    lam = float(swept.sort_values(["quality", "lam"]).iloc[-1]["lam"])
                    rule = "highest quality (none keeps 95%)"
            records.append(
                {"method": method, "dataset": dataset, "lam": lam, "matched": matched, "rule": rule}
            )
    out = pd.DataFrame.from_records(
        records, columns=["method", "dataset", "lam", "matched", "rule"]
    )
    out["_k"] = out["method"].map(order_key)
    return out.sort_values(["dataset", "_k"]).drop(columns="_k").reset_index(drop=True)


def select_rows(df: pd.DataFrame, method: str, dataset: str, lam: float) -> pd.DataFrame:
    rows = df[(df["method"] == method) & (df["dataset"] == dataset)]
    return rows[rows["lam"].isna()] if pd.isna(lam) else rows[np.isclose(rows["lam"], lam)]


# How estimates of each column family are written; "×" and "%" carry the unit.
_FORMATS: dict[str, Callable[[float], str]] = {
    "quality": lambda v: f"{v:.3f}",
    "reference_quality": lambda v: f"{v:.3f}",
    "cost": lambda v: f"{v:.3g}",
    "latency_s": lambda v: f"{v:.3g}",
    "speedup": lambda v: f"{v:.2f}×",
    "retention": lambda v: f"{v:.1%}",
    "saving_share": lambda v: f"{v:.1%}",
    "oracle_gap": lambda v: f"{v:.2f}×",
    "area": lambda v: f"{v:.3f}",
}
