"""Figures and tables of the paper (docs/design.md §10, §12): what notebooks 04 and 05 show.

Inputs are notebook 04's tidy results table (one row per method × λ × seed × dataset × input, see
:mod:`asd_core.runs.evaluate`) and :func:`asd_core.analysis.summaries.summarise`'s summary of it. Figure
functions return a matplotlib ``Figure``; table functions return DataFrames with numeric
estimates and CI bounds as columns ``x``, ``x_low``, ``x_high``, which :func:`display_table`
turns into "est [low, high]" text and :func:`write_csv_and_html` writes as CSV + HTML.

Curve statistics that ``summarise`` does not bootstrap (the normalised area, the oracle gap, the
share of the oracle's saving) get percentile CIs over inputs here: one set of input resamples per
dataset is drawn (seeded), every (method, λ) point's mean quality and cost is recomputed on each,
and the statistic is evaluated on those means. Seeds are averaged per input first, as in
``summarise``, so an input counts once. A chosen operating point (the headline λ) is held fixed
across resamples: the CI is conditional on the choice.

Method names follow the runner: ``stage_k``, ``oracle_router``, ``oracle_cascade``,
``draft_verify_deepest``, ``random``, ``static_cascade``, ``router``, ``pair_i_j``, ``dp`` and the
``dp_*`` ablations. ``best_pair`` is a pseudo-method: every ``pair_i_j`` point pooled, whose
upper envelope is the best two-stage pair at each cost.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from asd_core.analysis.names import (
    ABLATIONS,
    AREA_METHODS,
    ORACLE,
    AnalysisError,
    datasets_in,
    label,
    lam_label,
    ordered,
    stage_index,
)
from asd_core.analysis.style import (
    error_bars,
    figure_legend,
    method_colour,
    method_palette,
    panel_grid,
    plain_log_ticks,
)
from asd_core.analysis.tables import select_rows

if TYPE_CHECKING:
    from matplotlib.figure import Figure


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------


def online_vs_replay(online: pd.DataFrame) -> Figure:
    """Online seconds vs replayed seconds per input, one colour per λ, with the y = x line.

    ``online`` is notebook 04's ``04_online.csv`` (columns lam, online_s, replay_s,
    depth_agrees, …). The legend gives each λ's share of inputs whose final stage agrees.
    """
    import matplotlib.pyplot as plt

    need = ("lam", "online_s", "replay_s", "depth_agrees")
    missing = [c for c in need if c not in online.columns]
    if missing:
        raise AnalysisError(f"online table lacks column(s) {', '.join(missing)}")
    if online.empty:
        raise AnalysisError("online table is empty: nothing ran online")
    fig, ax = plt.subplots(figsize=(6.0, 5.2))
    pal = method_palette()
    for i, (lam, g) in enumerate(online.groupby("lam", sort=True)):
        agree = g["depth_agrees"].astype(float).mean()
        ax.scatter(
            g["replay_s"],
            g["online_s"],
            s=22,
            alpha=0.75,
            color=pal[i % len(pal)],
            label=f"λ = {lam:g}: final stage agrees on {agree:.0%} (n = {len(g)})",
        )
    both = np.concatenate([online["replay_s"].to_numpy(float), online["online_s"].to_numpy(float)])
    lo, hi = float(np.nanmin(both)), float(np.nanmax(both))
    if lo > 0 and hi / lo > 20:
        ax.set_xscale("log")
        ax.set_yscale("log")
    ax.plot([lo, hi], [lo, hi], color="0.3", lw=1, ls="--", label="y = x")
    plain_log_ticks(ax)
    overall = online["depth_agrees"].astype(float).mean()
    ax.set(
        xlabel="replayed latency per input (s)",
        ylabel="online latency per input (s)",
        title=f"Online run vs replay: final stage agrees on {overall:.1%} of inputs",
    )
    ax.legend(fontsize=8, frameon=False)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def decision_boundaries(decisions: pd.DataFrame) -> Figure:
    """The solved policy at a glance: its action in every belief state across λ.

    ``decisions`` is :func:`asd_core.policy.adaptive.decision_table`. One panel per (stage, view)
    where a decision is taken: x is λ (log), y the belief p̃ (each bin drawn over its range on
    the held-out inputs), the colour the action; a last panel shows where the entry sends the
    held-out inputs at each λ.

    Long because: one heat map per (stage, view) with its axes, ticks and colour legend.
    """
    from matplotlib.patches import Patch

    need = {"lam", "stage", "view", "p_low", "p_high", "action", "n_held_out"}
    if not need <= set(decisions.columns):
        raise AnalysisError(
            f"decision table lacks column(s) {sorted(need - set(decisions.columns))}"
        )
    states = decisions[decisions["stage"] != "entry"]
    entry = decisions[decisions["stage"] == "entry"]
    panels = list(dict.fromkeys(zip(states["stage"], states["view"], strict=True)))
    lams = np.sort(decisions["lam"].unique())
    # each λ owns the span between the geometric midpoints to its neighbours
    mids = np.sqrt(lams[1:] * lams[:-1]) if len(lams) > 1 else np.array([])
    left = np.concatenate([[lams[0] / 1.5], mids]) if len(lams) else lams
    right = np.concatenate([mids, [lams[-1] * 1.5]]) if len(lams) else lams
    span = dict(zip(lams.tolist(), zip(left, right, strict=True), strict=True))
    actions = sorted(set(states["action"]), key=lambda a: (a != "stop", a.startswith("restart"), a))
    pal = method_palette()
    colour = {a: ("0.85" if a == "stop" else pal[i % len(pal)]) for i, a in enumerate(actions)}
    fig, axes = panel_grid(len(panels) + 1, 3, 4.6, 3.4)
    for ax, (stage, view) in zip(axes.flat, panels, strict=False):
        rows = states[(states["stage"] == stage) & (states["view"] == view)]
        for r in rows.itertuples():
            x0, x1 = span[float(r.lam)]
            ax.fill_between([x0, x1], r.p_low, r.p_high, color=colour[r.action], lw=0)
        ax.set_xscale("log")
        plain_log_ticks(ax)
        ax.set(
            xlim=(left[0], right[-1]),
            ylim=(0, 1),
            title=f"after {stage} ({view})",
            xlabel="λ",
            ylabel="belief p̃ (bins of held-out inputs)",
        )
    ax = axes.flat[len(panels)]
    names = list(dict.fromkeys(entry["action"]))
    bottom = np.zeros(len(lams))
    for i, name in enumerate(names):
        share = np.array(
            [
                entry[(entry["lam"] == lam) & (entry["action"] == name)]["n_held_out"].sum()
                / max(entry[entry["lam"] == lam]["n_held_out"].sum(), 1)
                for lam in lams
            ]
        )
        # one step per λ over the span it owns, edge to edge
        xs = np.concatenate([left, right[-1:]])
        ax.fill_between(
            xs,
            np.append(bottom, bottom[-1]),
            np.append(bottom + share, (bottom + share)[-1]),
            step="post",
            color=pal[(i + 5) % len(pal)],
            label=name,
            lw=0,
        )
        bottom += share
    ax.set_xscale("log")
    plain_log_ticks(ax)
    ax.set(
        xlim=(left[0], right[-1]),
        ylim=(0, 1),
        title="entry (held-out inputs)",
        xlabel="λ",
        ylabel="share of inputs",
    )
    ax.legend(loc="lower left", fontsize="small", frameon=True)
    handles = [Patch(color=colour[a], label=a) for a in actions]
    fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), title="action")
    fig.suptitle("The solved policy: action per belief state across λ")
    fig.tight_layout()
    return fig


def stage_usage(
    results: pd.DataFrame,
    method: str = "dp",
    compare: Sequence[str] = (ORACLE,),
    datasets: Sequence[str] | None = None,
) -> Figure:
    """Share of inputs ending at each stage, per dataset × λ, as stacked bars.

    Shares pool every seed's rows (each seed covers the same inputs, so each weighs the same).
    The ``compare`` methods (single points, e.g. the oracle router) get a bar each at the right.
    """
    import matplotlib.pyplot as plt
    import seaborn as sns

    rows = results[results["method"] == method]
    if rows.empty:
        raise AnalysisError(f"method '{method}' is not in the results table")
    n_stages = int(results["depth"].max()) + 1
    names = datasets_in(results, datasets)
    bars: dict[str, list[tuple[str, np.ndarray]]] = {}
    for dataset in names:
        mine = rows[rows["dataset"] == dataset]
        parts = [
            (lam_label(method, lam) if np.isfinite(lam) else label(method), g["depth"].to_numpy())
            for lam, g in mine.groupby("lam", sort=True, dropna=False)
        ]
        for name in compare:
            g = results[(results["dataset"] == dataset) & (results["method"] == name)]
            if not g.empty:
                parts.append((label(name), g["depth"].to_numpy()))
        bars[dataset] = parts
    widest = max(len(p) for p in bars.values())
    fig, axes = plt.subplots(
        1, len(names), figsize=((0.5 * widest + 1.6) * len(names), 4.2), squeeze=False
    )
    colours = sns.color_palette("crest", n_stages)
    for ax, dataset in zip(axes.flat, names, strict=True):
        parts = bars[dataset]
        x = np.arange(len(parts))
        bottom = np.zeros(len(parts))
        for k in range(n_stages):
            share = np.array([float((depth == k).mean()) for _, depth in parts])
            ax.bar(
                x, share, bottom=bottom, color=colours[k], width=0.75, label=f"ends at stage {k}"
            )
            bottom += share
        ax.set_xticks(x, [p[0] for p in parts], rotation=45, ha="right", fontsize=8)
        ax.set(ylim=(0, 1), ylabel="share of inputs", title=f"{dataset}: {label(method)}")
        ax.grid(alpha=0.3, axis="y")
    figure_legend(fig, [axes.flat[0]])
    fig.tight_layout()
    return fig


def latency_cdf(
    results: pd.DataFrame,
    methods: Sequence[str] | None = None,
    points: pd.DataFrame | None = None,
    datasets: Sequence[str] | None = None,
) -> Figure:
    """Empirical CDFs of per-input cost (seconds, seed-averaged), one panel per dataset.

    ``methods`` default to every stage alone, the oracle router, the static cascade, the router
    and ``dp``. A method with several λ is drawn at its operating point from ``points``
    (:func:`operating_points`); without it, at its largest λ. The x-axis is logarithmic when the
    costs span more than a factor of 20.

    Long because: one panel per dataset, each with its curves, markers and percentile lines.
    """
    present = set(map(str, results["method"].unique()))
    if methods is None:
        stages = [m for m in present if stage_index(m) is not None]
        methods = ordered(stages) + [
            m for m in (ORACLE, "static_cascade", "router", "dp") if m in present
        ]
    unknown = [m for m in methods if m not in present]
    if unknown:
        raise AnalysisError(f"method(s) {', '.join(unknown)} not in the results table")
    names = datasets_in(results, datasets)
    fig, axes = panel_grid(len(names), 2, 5.6, 4.0)
    for ax, dataset in zip(axes.flat, names, strict=False):
        data = results[results["dataset"] == dataset]
        span = []
        for name in methods:
            rows = data[data["method"] == name]
            lams = rows["lam"].dropna().unique()
            tag = ""
            if len(lams) > 1 or (len(lams) == 1 and rows["lam"].isna().any()):
                lam = float(np.max(lams))
                if points is not None:
                    pick = points[(points["method"] == name) & (points["dataset"] == dataset)]
                    if len(pick) and np.isfinite(pick["lam"].iloc[0]):
                        lam = float(pick["lam"].iloc[0])
                rows = select_rows(rows, name, dataset, lam)
                tag = f" ({lam_label(name, lam)})"
            cost = np.sort(rows.groupby("item_id")["cost"].mean().to_numpy(float))
            if cost.size == 0:
                continue
            span.append(cost)
            k = stage_index(name)
            colour = str(0.15 + 0.55 * k / 4) if k is not None else method_colour(name)
            ax.step(
                cost,
                np.arange(1, cost.size + 1) / cost.size,
                where="post",
                lw=2.2 if name == "dp" else 1.3,
                color=colour,
                label=label(name) + tag,
            )
        allc = np.concatenate(span) if span else np.array([1.0])
        if allc.min() > 0 and allc.max() / allc.min() > 20:
            ax.set_xscale("log")
        ax.set(
            xlabel="latency per input (s, mean over seeds)",
            ylabel="share of inputs ≤ latency",
            ylim=(0, 1.02),
            title=f"{dataset} (n = {data['item_id'].nunique()})",
        )
        plain_log_ticks(ax)
        ax.grid(alpha=0.3)
        # per panel: the operating points (and so the labels) differ between datasets
        ax.legend(
            fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False
        )
    fig.tight_layout()
    return fig


def area_bars(
    curves: pd.DataFrame,
    methods: Sequence[str] = AREA_METHODS + ("random",),
    title: str = "Normalised area under quality vs cost (APGR-style)",
    ablation: bool = False,
) -> Figure:
    """Grouped bars of each method's normalised area per dataset, with CI bars when present.

    ``curves`` has columns method, dataset, area and optionally area_low/area_high
    (:func:`curve_table`, or :func:`summaries.curve_summary` without CIs). 0 = the cheapest stage's
    quality at every cost, 1 = the deepest stage's; random mixing of the two scores 0.5.
    """
    import matplotlib.pyplot as plt

    shown = [m for m in methods if (curves["method"] == m).any()]
    if not shown:
        raise AnalysisError(f"none of {', '.join(methods)} is in the curve table")
    names = sorted(map(str, curves["dataset"].unique()))
    fig, ax = plt.subplots(figsize=(max(5.5, 1.1 * len(names) * len(shown) ** 0.6 + 2), 4.2))
    width = 0.8 / len(shown)
    x = np.arange(len(names))
    has_ci = {"area_low", "area_high"} <= set(curves.columns)
    for i, name in enumerate(shown):
        rows = curves[curves["method"] == name].set_index("dataset").reindex(names)
        est = rows["area"].to_numpy(float)
        yerr = error_bars(est, rows["area_low"], rows["area_high"]) if has_ci else None
        ax.bar(
            x + (i - (len(shown) - 1) / 2) * width,
            np.nan_to_num(est),
            width=width * 0.95,
            yerr=yerr,
            capsize=2,
            color=method_colour(name, ablation=ablation),
            label=label(name),
        )
    ax.axhline(0.5, color="0.4", lw=0.8, ls="--", label="0.5: random mixing of stage 0 and deepest")
    ax.axhline(1.0, color="0.2", lw=0.8, ls=":", label="1: deepest quality at every cost")
    ax.set_xticks(x, names)
    ax.set(ylabel="normalised area (0 = stage 0, 1 = deepest)", title=title)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8, frameon=False, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    return fig


def ablation_bars(curves: pd.DataFrame, methods: Sequence[str] = ABLATIONS) -> Figure:
    """:func:`area_bars` of the DP policy and its ablations."""
    return area_bars(
        curves, methods, title="Ablations: normalised area under quality vs cost", ablation=True
    )
