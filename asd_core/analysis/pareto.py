"""Quality against cost: the Pareto figure per task and the λ sweep of the DP policy."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from asd_core.analysis import summaries
from asd_core.analysis.names import (
    ABLATIONS,
    BEST_PAIR,
    CURVE_BASELINES,
    ORACLE,
    SINGLE_POINTS,
    AnalysisError,
    datasets_in,
    label,
    ordered,
    stage_index,
    summary_row,
)
from asd_core.analysis.style import (
    error_bars,
    figure_legend,
    method_colour,
    panel_grid,
    plain_log_ticks,
    sparse_labels,
    stage_colour,
)
from asd_core.ground import frontier

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


def pareto(
    summary: pd.DataFrame,
    datasets: Sequence[str] | None = None,
    curves: Sequence[str] = CURVE_BASELINES,
    method: str = "dp",
    reference: str | None = None,
) -> Figure:
    """Quality vs cost relative to the deepest stage: one panel per dataset.

    ``summary`` is :func:`summaries.summarise`'s output. Each panel shows every stage alone, the
    oracles and the draft + verify route as points with CI bars, the ``curves`` baselines
    (``best_pair`` = the upper envelope of all pairs' points), the ``method`` λ curve with its
    quality CI as a band and cost CIs as bars, and the deepest stage's quality CI as a grey band.
    Cost is each method's mean seconds ÷ the deepest stage's mean seconds.
    """
    reference = reference or summaries.deepest_stage(summary)
    names = datasets_in(summary, datasets)
    fig, axes = panel_grid(len(names), 2, 6.0, 4.6)
    for ax, dataset in zip(axes.flat, names, strict=False):
        _pareto_panel(
            ax, summary[summary["dataset"] == dataset], dataset, curves, method, reference
        )
    figure_legend(fig, list(axes.flat[: len(names)]))
    fig.suptitle("Quality vs cost (95% CIs over inputs)" if len(names) > 1 else "", y=1.0)
    fig.tight_layout()
    return fig


def _pareto_panel(
    ax: Axes,
    data: pd.DataFrame,
    dataset: str,
    curves: Sequence[str],
    method: str,
    reference: str,
) -> None:
    """One task's panel: the deepest stage's CI band, the baselines' curves, the DP's λ sweep
    with its CI, then every single point; costs relative to the deepest stage alone."""
    ref = summary_row(data, reference)
    if ref is None:
        raise AnalysisError(f"dataset '{dataset}': no single summary row of '{reference}'")
    scale = float(ref["cost"])

    def rel(v: Any) -> np.ndarray:
        return np.asarray(v, dtype=float) / scale

    _reference_band(ax, ref)
    _baseline_curves(ax, data, curves, rel)
    _dp_sweep(ax, data, method, rel)
    _single_points(ax, data, rel)
    ax.set(
        xlabel="cost relative to the deepest stage alone (mean s ÷ deepest's mean s)",
        ylabel="quality (accuracy or score)",
        title=f"{dataset} (n = {int(ref['n_inputs'])} inputs)",
    )
    ax.grid(alpha=0.3)


Rel = Callable[[Any], np.ndarray]  # seconds -> cost relative to the deepest stage alone


def _reference_band(ax: Axes, ref: pd.Series) -> None:
    if np.isfinite(ref["quality_low"]) and np.isfinite(ref["quality_high"]):
        # hatched, not filled: the DP's own CI band stays readable on top of it
        ax.axhspan(
            ref["quality_low"],
            ref["quality_high"],
            facecolor="none",
            edgecolor="0.75",
            hatch="///",
            lw=0,
            zorder=0,
            label="deepest stage, 95% CI",
        )
    ax.axvline(1.0, color="0.6", lw=0.8, ls=":", zorder=0)


def _baseline_curves(ax: Axes, data: pd.DataFrame, curves: Sequence[str], rel: Rel) -> None:
    for name in curves:
        if name == BEST_PAIR:
            pairs = data[data["method"].str.fullmatch(r"pair_\d+_\d+")]
            if pairs.empty:
                continue
            pts = pairs[["cost", "quality"]].to_numpy(float)
            hull = frontier.upper_hull(pts[:, 0], pts[:, 1])
            ax.scatter(rel(pts[:, 0]), pts[:, 1], s=8, color=method_colour(name), alpha=0.35)
            ax.plot(
                rel(pts[hull, 0]),
                pts[hull, 1],
                "-",
                color=method_colour(name),
                lw=1.6,
                label=label(name),
            )
            continue
        rows = data[data["method"] == name].sort_values("cost")
        if rows.empty:
            continue
        ax.plot(
            rel(rows["cost"]),
            rows["quality"],
            "-o",
            ms=3.5,
            lw=1.3,
            color=method_colour(name),
            label=label(name),
        )


def _dp_sweep(ax: Axes, data: pd.DataFrame, method: str, rel: Rel) -> None:
    ours = data[data["method"] == method].sort_values("cost")
    if ours.empty:
        return
    colour = method_colour(method)
    x = rel(ours["cost"])
    ax.fill_between(
        x,
        ours["quality_low"],
        ours["quality_high"],
        color=colour,
        alpha=0.12,
        lw=0,
        label=f"{label(method)}, 95% CI of quality",
    )
    ax.errorbar(
        x,
        ours["quality"],
        xerr=error_bars(x, rel(ours["cost_low"]), rel(ours["cost_high"])),
        fmt="-o",
        ms=4.5,
        lw=2.0,
        capsize=2,
        color=colour,
        label=f"{label(method)}, λ sweep",
        zorder=5,
    )
    for xi, yi, lam in sparse_labels(x, ours["quality"].to_numpy(float), ours["lam"]):
        ax.annotate(
            f"λ={lam:.2g}", (xi, yi), textcoords="offset points", xytext=(4, -10), fontsize=7
        )


def _single_points(ax: Axes, data: pd.DataFrame, rel: Rel) -> None:
    singles = [m for m in data["method"].unique() if stage_index(str(m)) is not None]
    markers = ["o", "s", "D", "^", "v", "P"]
    for name in ordered(singles) + [m for m in SINGLE_POINTS if (data["method"] == m).any()]:
        r = summary_row(data, name)
        if r is None:
            continue
        k = stage_index(name)
        if k is not None:
            colour, marker, size = stage_colour(k, len(singles)), markers[k % len(markers)], 7
        else:
            colour, marker, size = (
                method_colour(name),
                "*" if name.startswith("oracle") else "X",
                11,
            )
        x0 = rel(r["cost"])
        ax.errorbar(
            [x0],
            [r["quality"]],
            xerr=error_bars(np.array([x0]), rel([r["cost_low"]]), rel([r["cost_high"]])),
            yerr=error_bars(
                np.array([r["quality"]]),
                np.array([r["quality_low"]]),
                np.array([r["quality_high"]]),
            ),
            fmt=marker,
            ms=size,
            color=colour,
            capsize=2,
            lw=1,
            label=label(name),
            zorder=6,
        )


def lambda_sweep(
    summary: pd.DataFrame,
    methods: Sequence[str] = ABLATIONS,
    datasets: Sequence[str] | None = None,
    reference: str | None = None,
    oracle: str = ORACLE,
) -> Figure:
    """Quality (top row) and relative cost (bottom row) vs λ per dataset, log-x.

    Only methods whose ``lam`` is a real λ belong here (``dp`` and its ablations); the DP gets
    its 95% CI bands, the ablations thin lines. The deepest stage's quality (its CI hatched) and
    cost 1 are drawn for reference, and the oracle router's cost as a dotted line.

    Long because: two rows of panels (quality and cost against λ) share their styling.
    """
    import matplotlib.pyplot as plt

    reference = reference or summaries.deepest_stage(summary)
    names = datasets_in(summary, datasets)
    fig, axes = plt.subplots(
        2, len(names), figsize=(4.4 * len(names), 6.8), squeeze=False, sharex="col"
    )
    for j, dataset in enumerate(names):
        data = summary[summary["dataset"] == dataset]
        ref = summary_row(data, reference)
        if ref is None:
            raise AnalysisError(f"dataset '{dataset}': no single summary row of '{reference}'")
        scale = float(ref["cost"])
        top, bottom = axes[0, j], axes[1, j]
        for name in methods:
            rows = data[(data["method"] == name) & data["lam"].notna()].sort_values("lam")
            if rows.empty:
                continue
            colour = method_colour(name, ablation=True)
            ours = name == "dp"
            lw, ms = (2.2, 2.5) if ours else (1.1, 0)
            lam = rows["lam"].to_numpy(float)
            style = "-o" if ours else "-"
            top.plot(lam, rows["quality"], style, ms=ms, lw=lw, color=colour, label=label(name))
            bottom.plot(lam, rows["cost"] / scale, style, ms=ms, lw=lw, color=colour)
            if ours:  # one band only: nine overlapping bands would blur into one grey
                top.fill_between(
                    lam, rows["quality_low"], rows["quality_high"], color=colour, alpha=0.18, lw=0
                )
                bottom.fill_between(
                    lam,
                    rows["cost_low"] / scale,
                    rows["cost_high"] / scale,
                    color=colour,
                    alpha=0.18,
                    lw=0,
                )
        top.axhline(ref["quality"], color="black", lw=1, ls="--", label=label(reference))
        if np.isfinite(ref["quality_low"]) and np.isfinite(ref["quality_high"]):
            top.axhspan(
                ref["quality_low"],
                ref["quality_high"],
                facecolor="none",
                edgecolor="0.8",
                hatch="///",
                lw=0,
                zorder=0,
            )
        bottom.axhline(1.0, color="black", lw=1, ls="--")
        orc = summary_row(data, oracle)
        if orc is not None:
            bottom.axhline(
                orc["cost"] / scale, color=method_colour(oracle), lw=1, ls=":", label=label(oracle)
            )
        for ax in (top, bottom):
            ax.set_xscale("log")
            plain_log_ticks(ax)
            ax.grid(alpha=0.3, which="both")
        top.set(
            title=f"{dataset} (n = {int(ref['n_inputs'])})", ylabel="quality (accuracy or score)"
        )
        bottom.set(xlabel="λ (weight of quality loss)", ylabel="cost relative to the deepest stage")
    figure_legend(fig, list(axes.flat))
    fig.tight_layout()
    return fig
