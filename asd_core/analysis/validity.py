"""Baseline validity: each stage alone, per task, beside the published figure for its model.

The cascade can only be judged if every stage scores like itself. :func:`validity_table` puts
each stage's task quality (all generated items, every split) with a 95% Wilson interval next to
the published figure for the same model and benchmark (``asd_core/data/published_figures.csv``:
value, protocol, source, and the documented difference between their protocol and ours), and
says whether that figure lies inside our interval — or, if not, why the two need not agree.

Our protocol, for the record: instruct models with their own chat template, zero-shot, greedy,
on the Q4 GGUF weights of the ``cpu`` profile; MMLU by the most probable option letter (or the
letter of a written reply); HumanEval pass@1 of the greedy program; ASDiv exact final answer;
TruthfulQA a generated sentence judged truthful by ROUGE-L against the references.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from asd_core.ground.stats import wilson

if TYPE_CHECKING:
    from matplotlib.figure import Figure

PUBLISHED = Path(__file__).resolve().parents[1] / "data" / "published_figures.csv"
CONFIDENCE = 0.95  # of every interval in the table


def read_published(path: str | Path = PUBLISHED) -> pd.DataFrame:
    """The published figures: one row per (model, task), value NaN where nothing is published."""
    return pd.read_csv(path, dtype={"model": str, "task": str}, keep_default_na=True)


def model_of(source: str) -> str:
    """The published-figures key of a stage source: a package asset or hub id, lowercased.

    ``package:qwen2.5-coder-1.5b-instruct`` and ``Qwen/Qwen2.5-Coder-1.5B-Instruct`` both give
    ``qwen2.5-coder-1.5b-instruct``; a local file gives its stem.
    """
    name = source.removeprefix("package:").rstrip("/").rsplit("/", 1)[-1]
    return name.removesuffix(".gguf").lower()


def validity_table(
    df: pd.DataFrame, stage_sources: Sequence[str], published: pd.DataFrame | None = None
) -> pd.DataFrame:
    """Per task × stage: quality with its CI beside the published figure, and the verdict.

    ``df`` is a generations frame (``generations.load_generations``); ``stage_sources[k]`` is stage
    k's ``source`` (it names the model). Quality is the mean of ``correct`` (0/1) over every
    item that has a gold answer.
    """
    pub = read_published() if published is None else published
    pub = pub.set_index(["model", "task"])
    rows = []
    for (task, stage, name), g in df.groupby(["task", "stage", "stage_name"], sort=True):
        scored = g["correct"].dropna()
        n, wins = len(scored), int(round(scored.sum()))
        low, high = wilson(wins, n, CONFIDENCE)
        model = model_of(stage_sources[int(stage)])
        ref: Mapping[str, Any] = (
            pub.loc[(model, task)].to_dict() if (model, task) in pub.index else {}
        )
        value = float(ref.get("value", np.nan))
        inside = bool(low <= value <= high) if np.isfinite(value) else None
        rows.append(
            {
                "task": task,
                "stage": int(stage),
                "stage_name": name,
                "model": model,
                "n": n,
                "quality": wins / n if n else np.nan,
                "ci_low": low,
                "ci_high": high,
                "stopped_by_length": float((g["stop_reason"] == "length").mean()),
                "published": value,
                "published_benchmark": ref.get("benchmark", ""),
                "published_variant": ref.get("variant", ""),
                "published_shots": ref.get("shots", np.nan),
                "published_protocol": ref.get("protocol", ""),
                "source": ref.get("source", ""),
                "url": ref.get("url", ""),
                "inside_ci": inside,
                "verdict": _verdict(inside, ref),
            }
        )
    return pd.DataFrame(rows)


def _verdict(inside: bool | None, ref: Mapping[str, Any]) -> str:
    difference = str(ref.get("difference", "") or "").strip()
    if inside is None:
        return difference or "no published figure"
    if inside:
        return "inside our CI"
    return f"outside our CI: {difference}" if difference else "outside our CI: unexplained"


def validity_html(table: pd.DataFrame, title: str = "Baseline validity") -> str:
    """A readable page of the table: one block per task, published figures linked to sources."""
    parts = [
        '<!doctype html><html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:system-ui,sans-serif;margin:2em;max-width:72em}"
        "table{border-collapse:collapse;margin-bottom:1.5em}td,th{padding:.3em .6em;"
        "border-bottom:1px solid #ddd;text-align:left;vertical-align:top}"
        "th{background:#f4f4f4}.in{color:#176317}.out{color:#9a4b00}.num{text-align:right}"
        "</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        "<p>Each stage alone: task quality over every generated item with its 95% Wilson "
        "interval, beside the published figure for the same model. Our protocol: instruct "
        "models, zero-shot, greedy, Q4 GGUF weights. A published figure outside our interval "
        "comes with the documented difference between the two protocols.</p>",
    ]
    for task, rows in table.groupby("task", sort=True):
        parts.append(
            f"<h2>{html.escape(str(task))}</h2><table><tr><th>stage</th><th>n</th>"
            "<th>quality [95% CI]</th><th>cut by budget</th><th>published</th>"
            "<th>verdict</th></tr>"
        )
        for r in rows.itertuples():
            pub = "—"
            if np.isfinite(r.published):
                label = f"{r.published:.3f} ({r.published_benchmark}, {r.published_variant})"
                pub = f'<a href="{html.escape(str(r.url))}">{html.escape(label)}</a>'
                pub += f"<br><small>{html.escape(str(r.source))}</small>"
            css = "in" if r.inside_ci is True else "out" if r.inside_ci is False else ""
            parts.append(
                f"<tr><td>{html.escape(str(r.stage_name))}</td><td class=num>{r.n}</td>"
                f"<td class=num>{r.quality:.3f} [{r.ci_low:.3f}, {r.ci_high:.3f}]</td>"
                f"<td class=num>{r.stopped_by_length:.1%}</td><td>{pub}</td>"
                f'<td class="{css}">{html.escape(str(r.verdict))}</td></tr>'
            )
        parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts)


def plot_validity(table: pd.DataFrame) -> Figure:
    """One panel per task: each stage's quality and CI (bars), the published figure (diamond)."""
    import matplotlib.pyplot as plt

    tasks = sorted(table["task"].unique())
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.2 * len(tasks), 3.2), sharey=True)
    for ax, task in zip(np.atleast_1d(axes), tasks, strict=True):
        rows = table[table["task"] == task].sort_values("stage")
        x = np.arange(len(rows))
        err = np.vstack([rows["quality"] - rows["ci_low"], rows["ci_high"] - rows["quality"]])
        ax.bar(x, rows["quality"], color="#8fb3d9", width=0.6, label="ours (95% CI)")
        ax.errorbar(x, rows["quality"], yerr=err, fmt="none", ecolor="#1f3b5a", capsize=4)
        pub = rows["published"].to_numpy(float)
        ax.scatter(x, pub, marker="D", color="#c0392b", zorder=3, label="published")
        ax.set_xticks(x, rows["stage_name"], rotation=20, ha="right", fontsize=8)
        ax.set_title(task)
        ax.set_ylim(0, 1)
        ax.grid(axis="y", alpha=0.3)
    np.atleast_1d(axes)[0].set_ylabel("quality (accuracy / pass@1 / truthful)")
    np.atleast_1d(axes)[-1].legend(loc="upper right", fontsize=8)
    fig.suptitle("Each stage alone vs its published figure", fontsize=10)
    fig.tight_layout()
    return fig
