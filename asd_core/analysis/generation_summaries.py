"""Notebook 02's summaries of the generations: acceptance and quality per task and stage, answer agreement, the hops between stages, and their figures."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from asd_core.runs.generations import final_stage_value

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def agreement_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per task × non-final stage: how often the answer label says "agrees", against quality.

    The 2×2 table of agreement (``label_answer``) against "both this stage and the final stage
    are correct", over items with a gold answer: a label that means agreement should rarely
    agree when one of the two answers is wrong.
    """
    rows = df[df["stage"] < df["n_stages"] - 1].assign(
        final_correct=final_stage_value(df, "correct")
    )
    rows = rows[rows["correct"].notna() & rows["final_correct"].notna()]
    both = (rows["correct"] == 1) & (rows["final_correct"] == 1)
    agree = rows["label_answer"] == 1
    cells = rows.assign(
        agree_both_correct=agree & both,
        agree_not_both=agree & ~both,
        differ_both_correct=~agree & both,
        differ_not_both=~agree & ~both,
        agree=agree,
        unextracted=rows["answer"].eq(""),
    )
    return (
        cells.groupby(["task", "stage", "stage_name"], sort=True)
        .agg(
            n=("item_id", "size"),
            agreement_rate=("agree", "mean"),
            unextracted_rate=("unextracted", "mean"),
            agree_both_correct=("agree_both_correct", "sum"),
            agree_not_both=("agree_not_both", "sum"),
            differ_both_correct=("differ_both_correct", "sum"),
            differ_not_both=("differ_not_both", "sum"),
        )
        .reset_index()
    )


def summary_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per task × stage: items, mean output length, latency, acceptance and task quality."""
    out = (
        df.groupby(["task", "stage", "stage_name"], sort=True)
        .agg(
            n=("item_id", "size"),
            mean_n_in=("n_in", "mean"),
            mean_n_out=("n_out", "mean"),
            mean_latency_s=("latency_s", "mean"),
            p90_latency_s=("latency_s", lambda s: s.quantile(0.9)),
            token_accept_rate=("label_token", "mean"),
            answer_accept_rate=("label_answer", "mean"),
            accepted_frac_final=("accepted_frac_final", "mean"),
            accepted_frac_prev=("accepted_frac_prev", "mean"),
            correct=("correct", "mean"),
            stopped_by_length=("stop_reason", lambda s: (s == "length").mean()),
        )
        .reset_index()
    )
    return out


def hop_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per task and hop k → j: drafted/accepted tokens, whole-draft acceptance, verify time."""
    records = []
    for row in df[
        ["task", "stage", "n_stages", "drafted_by", "accepted_by", "verify_s_by"]
    ].itertuples():
        for j in range(row.stage + 1, row.n_stages):
            records.append(
                {
                    "task": row.task,
                    "from_stage": row.stage,
                    "to_stage": j,
                    "drafted": int(row.drafted_by[j]),
                    "accepted": int(row.accepted_by[j]),
                    "verify_s": float(row.verify_s_by[j]),
                }
            )
    hops = pd.DataFrame.from_records(
        records, columns=["task", "from_stage", "to_stage", "drafted", "accepted", "verify_s"]
    )
    hops["whole"] = hops["accepted"] == hops["drafted"]
    grouped = hops.groupby(["task", "from_stage", "to_stage"], sort=True)
    out = grouped.agg(
        n=("drafted", "size"),
        mean_drafted=("drafted", "mean"),
        mean_accepted=("accepted", "mean"),
        whole_draft_rate=("whole", "mean"),
        mean_verify_s=("verify_s", "mean"),
    ).reset_index()
    totals = grouped[["accepted", "drafted"]].sum().reset_index()
    out["token_accept_rate"] = totals["accepted"] / totals["drafted"].where(totals["drafted"] > 0)
    return out


def plot_acceptance(summary: pd.DataFrame) -> Figure:
    """Bars per task and stage: answer-mode and token-mode acceptance and accepted fraction."""
    import matplotlib.pyplot as plt

    metrics = [
        ("answer_accept_rate", "label (answer mode)"),
        ("token_accept_rate", "label (token mode)"),
        ("accepted_frac_final", "accepted fraction"),
    ]
    tasks = sorted(summary["task"].unique())
    stages = sorted(summary["stage"].unique())
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.6 * len(metrics), 3.8), squeeze=False)
    width = 0.8 / len(stages)
    x = np.arange(len(tasks))
    for ax, (column, title) in zip(axes[0], metrics, strict=True):
        for i, k in enumerate(stages):
            part = summary[summary["stage"] == k].set_index("task").reindex(tasks)
            name = part["stage_name"].dropna().iloc[0] if part["stage_name"].notna().any() else k
            ax.bar(
                x + (i - (len(stages) - 1) / 2) * width, part[column], width, label=f"{k}: {name}"
            )
        ax.set_xticks(x, tasks, rotation=20)
        ax.set(ylim=(0, 1.05), title=title, ylabel="rate vs the final stage")
    axes[0, 0].legend(fontsize=7, title="stage")
    fig.tight_layout()
    return fig


def plot_latency(df: pd.DataFrame) -> Figure:
    """Distribution of generation latency per stage (log scale), one box per task."""
    import matplotlib.pyplot as plt

    stages = sorted(df["stage"].unique())
    tasks = sorted(df["task"].unique())
    fig, axes = plt.subplots(1, len(stages), figsize=(4.2 * len(stages), 3.6), squeeze=False)
    for ax, k in zip(axes[0], stages, strict=True):
        part = df[df["stage"] == k]
        data = [part.loc[part["task"] == t, "latency_s"].to_numpy() for t in tasks]
        ax.boxplot(data, tick_labels=tasks)
        ax.set_yscale("log")
        ax.tick_params(axis="x", rotation=20)
        ax.set(title=f"stage {k}: {part['stage_name'].iloc[0]}", ylabel="generation latency (s)")
    fig.tight_layout()
    return fig
