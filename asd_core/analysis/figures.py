"""Figures and tables of the paper (DESIGN §10, §11): what notebooks 04 and 05 show.

Inputs are notebook 04's tidy results table (one row per method × λ × seed × dataset × input, see
:mod:`asd_core.runs.evaluate`) and :func:`asd_core.ground.stats.summarise`'s summary of it. Figure
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

import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from asd_core.ground import stats
from asd_core.ground.errors import AsdError
from asd_core.ground.provenance import write_html, write_table

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

ORACLE = "oracle_router"  # the yardstick of oracle gaps and saving shares
CHEAPEST = "stage_0"  # anchors the normalised area at 0
BEST_PAIR = "best_pair"  # pseudo-method: all pair_i_j points pooled
ROUTER = "router"  # the baseline the DP's area is compared with, paired
ABLATIONS = (
    "dp",
    "dp_no_risk",
    "dp_no_predictor",
    "dp_no_smoothing",
    "dp_size_costs",
    "dp_no_restart",
    "dp_myopic",
    "dp_sequential",
    "dp_per_input",
)
AREA_METHODS = ("dp", "static_cascade", "router", BEST_PAIR)  # compared in the headline table
CURVE_BASELINES = ("random", "static_cascade", "router", BEST_PAIR)  # curves on the Pareto figure
SINGLE_POINTS = (
    "oracle_router",
    "oracle_router_quality",
    "oracle_cascade",
    "draft_verify_deepest",
)  # besides stage_k

# Display order of methods in tables and legends; unknown names follow, sorted.
_ORDER = (
    *SINGLE_POINTS,
    "dp",
    "static_cascade",
    "router",
    BEST_PAIR,
    "random",
    *ABLATIONS[1:],  # the DP itself is listed above
)

_LABELS = {
    "dp": "DP policy (ours)",
    "dp_no_risk": "DP, no risk adjustment",
    "dp_no_predictor": "DP, no predictor (max-prob.)",
    "dp_no_smoothing": "DP, raw counts (no smoothing)",
    "dp_size_costs": "DP, size-based costs",
    "dp_no_restart": "DP, continue only (no restarts)",
    "dp_myopic": "myopic stopping",
    "dp_sequential": "sequential cascade (no entry, no skips)",
    "dp_per_input": "DP, per-input costs",
    "static_cascade": "static cascade (FrugalGPT-style)",
    "router": "router (RouteLLM-style)",
    BEST_PAIR: "best two-stage pair (envelope)",
    "random": "random mixing",
    "oracle_router": "oracle router (agreement label)",
    "oracle_router_quality": "oracle router (ground truth)",
    "oracle_cascade": "oracle cascade",
    "draft_verify_deepest": "draft + verify (deepest output)",
}

# Palette indices into seaborn's colour-blind palette; the Pareto figure and the ablation
# figures never share a panel, so the two groups may reuse colours.
_BASELINE_COLOURS = {
    "dp": 0,
    "static_cascade": 1,
    "router": 2,
    BEST_PAIR: 3,
    "oracle_router": 4,
    "oracle_router_quality": 8,
    "oracle_cascade": 5,
    "draft_verify_deepest": 6,
    "random": 7,
}
_ABLATION_COLOURS = {m: i for i, m in enumerate(ABLATIONS)}


class AnalysisError(AsdError):
    """A results table or setting the analysis cannot use."""


# --------------------------------------------------------------------------------------------
# Settings and inputs
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AnalysisSettings:
    """Notebook 05's own parameters (not in ``config.Params``), checked on construction."""

    n_resamples: int = 1000  # bootstrap resamples per CI
    alpha: float = 0.05  # family-wise error rate of the Holm-corrected tests; CIs are 1 − alpha
    ci_method: str = "percentile"  # summarise's CIs: "percentile" (fast) or "BCa"
    headline_method: str = "dp"  # the method the headline table reports

    def __post_init__(self) -> None:
        if not isinstance(self.n_resamples, int) or self.n_resamples < 1:
            raise AnalysisError(
                f"key 'analysis_bootstrap_resamples': must be a positive integer (got {self.n_resamples!r})"
            )
        if not isinstance(self.alpha, float) or not 0.0 < self.alpha < 1.0:
            raise AnalysisError(
                f"key 'analysis_alpha': must be a float in (0, 1) (got {self.alpha!r})"
            )
        if self.ci_method not in ("percentile", "BCa", "basic"):
            raise AnalysisError(
                f"key 'analysis_ci_method': must be 'percentile', 'BCa' or 'basic' (got {self.ci_method!r})"
            )
        if not isinstance(self.headline_method, str) or not self.headline_method:
            raise AnalysisError(
                f"key 'headline_method': must be a method name (got {self.headline_method!r})"
            )

    @property
    def confidence(self) -> float:
        """Nominal coverage of every CI."""
        return 1.0 - self.alpha

    def content(self) -> dict[str, Any]:
        """The settings under their parameter names, for the provenance digest."""
        return {
            "analysis_bootstrap_resamples": self.n_resamples,
            "analysis_alpha": self.alpha,
            "analysis_ci_method": self.ci_method,
            "headline_method": self.headline_method,
        }


def load_results(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Notebook 04's results table, checked (:func:`stats.check_table`)."""
    path = Path(path)
    if not path.is_file():
        raise AnalysisError(f"{path}: results table not found (run notebook 04 first)")
    df = pd.read_parquet(path)
    try:
        stats.check_table(df)
    except stats.StatsError as err:
        raise AnalysisError(f"{path}: {err}") from None
    return df


# --------------------------------------------------------------------------------------------
# Names, colours, ordering
# --------------------------------------------------------------------------------------------


def label(method: str) -> str:
    """A human-readable name for a method."""
    if m := re.fullmatch(r"stage_(\d+)", method):
        return f"stage {m.group(1)} alone"
    if m := re.fullmatch(r"pair_(\d+)_(\d+)", method):
        return f"pair {m.group(1)}→{m.group(2)}"
    return _LABELS.get(method, method)


def _order_key(method: str) -> tuple[int, int, str]:
    if m := re.fullmatch(r"stage_(\d+)", method):
        return (0, int(m.group(1)), method)
    if method in _ORDER:
        return (1, _ORDER.index(method), method)
    return (2, 0, method)


def ordered(methods: Sequence[str] | set[str]) -> list[str]:
    """Methods in display order: stages, oracles, ours, baselines, ablations, the rest."""
    return sorted(set(methods), key=_order_key)


def _palette() -> list[Any]:
    import seaborn as sns

    return list(sns.color_palette("colorblind", 10))


def _colour(method: str, ablation: bool = False) -> Any:
    table = _ABLATION_COLOURS if ablation else _BASELINE_COLOURS
    pal = _palette()
    if method in table:
        return pal[table[method]]
    return pal[8 + sum(map(ord, method)) % 2]  # stable across runs, unlike hash()


def _stage_index(method: str) -> int | None:
    m = re.fullmatch(r"stage_(\d+)", method)
    return int(m.group(1)) if m else None


def _lam_label(method: str, lam: float) -> str:
    """What ``lam`` means for a method: λ (DP), share sent deepest (random), or a cost budget."""
    if method == "dp" or method.startswith("dp_"):
        return f"λ={lam:g}"
    if method == "random":
        return f"deepest share={lam:g}"
    return f"budget={lam:g}"


def _row(summary: pd.DataFrame, method: str) -> pd.Series | None:
    rows = summary[summary["method"] == method]
    return rows.iloc[0] if len(rows) == 1 else None


def _err(est: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Asymmetric error bars, shape (2, n); undefined or inverted bounds draw no bar."""
    lower = np.nan_to_num(np.asarray(est, float) - np.asarray(low, float), nan=0.0)
    upper = np.nan_to_num(np.asarray(high, float) - np.asarray(est, float), nan=0.0)
    return np.clip(np.vstack([lower, upper]), 0.0, None)


def _grid(n: int, ncols: int, width: float, height: float) -> tuple[Figure, np.ndarray]:
    import matplotlib.pyplot as plt

    ncols = max(1, min(n, ncols))
    nrows = max(1, math.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, axes


def _figure_legend(fig: Figure, axes: Sequence[Axes]) -> None:
    """One legend for the whole figure, right of the panels, each label once."""
    seen: dict[str, Any] = {}
    for ax in axes:
        for handle, text in zip(*ax.get_legend_handles_labels(), strict=True):
            seen.setdefault(text, handle)
    if seen:
        fig.legend(
            list(seen.values()),
            list(seen.keys()),
            loc="center left",
            bbox_to_anchor=(1.0, 0.5),
            frameon=False,
        )


def _plain_log_ticks(ax: Axes) -> None:
    """Label only the major ticks of a log x-axis, as plain numbers (1, 2, 0.5, not 2×10⁰)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    if ax.get_xscale() == "log":
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())


def _datasets(df: pd.DataFrame, datasets: Sequence[str] | None) -> list[str]:
    present = sorted(map(str, df["dataset"].unique()))
    if datasets is None:
        return present
    missing = [d for d in datasets if d not in present]
    if missing:
        raise AnalysisError(
            f"dataset(s) {', '.join(missing)} not in the table ({', '.join(present)})"
        )
    return list(datasets)


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
    pal = _palette()
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
    _plain_log_ticks(ax)
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


def pareto(
    summary: pd.DataFrame,
    datasets: Sequence[str] | None = None,
    curves: Sequence[str] = CURVE_BASELINES,
    method: str = "dp",
    reference: str | None = None,
) -> Figure:
    """Quality vs cost relative to the deepest stage: one panel per dataset.

    ``summary`` is :func:`stats.summarise`'s output. Each panel shows every stage alone, the
    oracles and the draft + verify route as points with CI bars, the ``curves`` baselines
    (``best_pair`` = the upper envelope of all pairs' points), the ``method`` λ curve with its
    quality CI as a band and cost CIs as bars, and the deepest stage's quality CI as a grey band.
    Cost is each method's mean seconds ÷ the deepest stage's mean seconds.
    """
    reference = reference or stats.deepest_stage(summary)
    names = _datasets(summary, datasets)
    fig, axes = _grid(len(names), 2, 6.0, 4.6)
    for ax, dataset in zip(axes.flat, names, strict=False):
        _pareto_panel(
            ax, summary[summary["dataset"] == dataset], dataset, curves, method, reference
        )
    _figure_legend(fig, list(axes.flat[: len(names)]))
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
    ref = _row(data, reference)
    if ref is None:
        raise AnalysisError(f"dataset '{dataset}': no single summary row of '{reference}'")
    scale = float(ref["cost"])

    def rel(v: Any) -> np.ndarray:
        return np.asarray(v, dtype=float) / scale

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

    for name in curves:
        if name == BEST_PAIR:
            pairs = data[data["method"].str.fullmatch(r"pair_\d+_\d+")]
            if pairs.empty:
                continue
            pts = pairs[["cost", "quality"]].to_numpy(float)
            hull = stats.upper_hull(pts[:, 0], pts[:, 1])
            ax.scatter(rel(pts[:, 0]), pts[:, 1], s=8, color=_colour(name), alpha=0.35)
            ax.plot(
                rel(pts[hull, 0]), pts[hull, 1], "-", color=_colour(name), lw=1.6, label=label(name)
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
            color=_colour(name),
            label=label(name),
        )

    ours = data[data["method"] == method].sort_values("cost")
    if not ours.empty:
        colour = _colour(method)
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
            xerr=_err(x, rel(ours["cost_low"]), rel(ours["cost_high"])),
            fmt="-o",
            ms=4.5,
            lw=2.0,
            capsize=2,
            color=colour,
            label=f"{label(method)}, λ sweep",
            zorder=5,
        )
        for xi, yi, lam in _sparse_labels(x, ours["quality"].to_numpy(float), ours["lam"]):
            ax.annotate(
                f"λ={lam:.2g}", (xi, yi), textcoords="offset points", xytext=(4, -10), fontsize=7
            )

    singles = [m for m in data["method"].unique() if _stage_index(str(m)) is not None]
    markers = ["o", "s", "D", "^", "v", "P"]
    for name in ordered(singles) + [m for m in SINGLE_POINTS if (data["method"] == m).any()]:
        r = _row(data, name)
        if r is None:
            continue
        k = _stage_index(name)
        if k is not None:
            colour, marker, size = _stage_colour(k, len(singles)), markers[k % len(markers)], 7
        else:
            colour, marker, size = _colour(name), "*" if name.startswith("oracle") else "X", 11
        x0 = rel(r["cost"])
        ax.errorbar(
            [x0],
            [r["quality"]],
            xerr=_err(np.array([x0]), rel([r["cost_low"]]), rel([r["cost_high"]])),
            yerr=_err(
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
    ax.set(
        xlabel="cost relative to the deepest stage alone (mean s ÷ deepest's mean s)",
        ylabel="quality (accuracy or score)",
        title=f"{dataset} (n = {int(ref['n_inputs'])} inputs)",
    )
    ax.grid(alpha=0.3)


def _stage_colour(k: int, n_stages: int) -> Any:
    """Stage k's colour: light to dark along one hue, so depth reads at a glance."""
    import seaborn as sns

    return sns.color_palette("rocket_r", n_stages + 2)[k + 2]


def _sparse_labels(
    x: np.ndarray, y: np.ndarray, lams: Any, at_most: int = 6
) -> list[tuple[float, float, float]]:
    """The points worth a λ label: distinct positions, spread along the curve, at most
    ``at_most`` — a dense λ grid labelled point by point would print labels over each other."""
    points: list[tuple[float, float, float]] = []
    span_x = max(float(np.ptp(x)), 1e-9)
    span_y = max(float(np.ptp(y)), 1e-9)
    for xi, yi, lam in zip(x, y, lams, strict=True):
        far = all(
            abs(xi - px) / span_x > 0.08 or abs(yi - py) / span_y > 0.08 for px, py, _ in points
        )
        if far:
            points.append((float(xi), float(yi), float(lam)))
    if len(points) > at_most:
        keep = np.linspace(0, len(points) - 1, at_most).round().astype(int)
        points = [points[i] for i in sorted(set(keep.tolist()))]
    return points


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
    """
    import matplotlib.pyplot as plt

    reference = reference or stats.deepest_stage(summary)
    names = _datasets(summary, datasets)
    fig, axes = plt.subplots(
        2, len(names), figsize=(4.4 * len(names), 6.8), squeeze=False, sharex="col"
    )
    for j, dataset in enumerate(names):
        data = summary[summary["dataset"] == dataset]
        ref = _row(data, reference)
        if ref is None:
            raise AnalysisError(f"dataset '{dataset}': no single summary row of '{reference}'")
        scale = float(ref["cost"])
        top, bottom = axes[0, j], axes[1, j]
        for name in methods:
            rows = data[(data["method"] == name) & data["lam"].notna()].sort_values("lam")
            if rows.empty:
                continue
            colour = _colour(name, ablation=True)
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
        orc = _row(data, oracle)
        if orc is not None:
            bottom.axhline(
                orc["cost"] / scale, color=_colour(oracle), lw=1, ls=":", label=label(oracle)
            )
        for ax in (top, bottom):
            ax.set_xscale("log")
            _plain_log_ticks(ax)
            ax.grid(alpha=0.3, which="both")
        top.set(
            title=f"{dataset} (n = {int(ref['n_inputs'])})", ylabel="quality (accuracy or score)"
        )
        bottom.set(xlabel="λ (weight of quality loss)", ylabel="cost relative to the deepest stage")
    _figure_legend(fig, list(axes.flat))
    fig.tight_layout()
    return fig


def decision_boundaries(decisions: pd.DataFrame) -> Figure:
    """The solved policy at a glance: its action in every belief state across λ.

    ``decisions`` is :func:`asd_core.policy.adaptive.decision_table`. One panel per (stage, view)
    where a decision is taken: x is λ (log), y the belief p̃ (each bin drawn over its range on
    the held-out inputs), the colour the action; a last panel shows where the entry sends the
    held-out inputs at each λ.
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
    pal = _palette()
    colour = {a: ("0.85" if a == "stop" else pal[i % len(pal)]) for i, a in enumerate(actions)}
    fig, axes = _grid(len(panels) + 1, 3, 4.6, 3.4)
    for ax, (stage, view) in zip(axes.flat, panels, strict=False):
        rows = states[(states["stage"] == stage) & (states["view"] == view)]
        for r in rows.itertuples():
            x0, x1 = span[float(r.lam)]
            ax.fill_between([x0, x1], r.p_low, r.p_high, color=colour[r.action], lw=0)
        ax.set_xscale("log")
        _plain_log_ticks(ax)
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
    _plain_log_ticks(ax)
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
    names = _datasets(results, datasets)
    bars: dict[str, list[tuple[str, np.ndarray]]] = {}
    for dataset in names:
        mine = rows[rows["dataset"] == dataset]
        parts = [
            (_lam_label(method, lam) if np.isfinite(lam) else label(method), g["depth"].to_numpy())
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
    _figure_legend(fig, [axes.flat[0]])
    fig.tight_layout()
    return fig


def operating_points(summary: pd.DataFrame, reference: str | None = None) -> pd.DataFrame:
    """Each method's operating point per dataset: which λ a table or figure shows.

    Single-point methods: their one row. Methods with a λ sweep: the smallest λ whose quality
    keeps 95% of the deepest stage's (:func:`stats.smallest_matching_lambda`); when none does,
    the λ of highest quality. Columns: method, dataset, lam, matched, rule.
    """
    reference = reference or stats.deepest_stage(summary)
    records = []
    for dataset, data in summary.groupby("dataset", sort=True):
        ref = _row(data, reference)
        if ref is None:
            raise AnalysisError(f"dataset '{dataset}': no single summary row of '{reference}'")
        for method, rows in data.groupby("method", sort=False):
            swept = rows[rows["lam"].notna()]
            if swept.empty or method == reference:
                lam, matched, rule = rows["lam"].iloc[0], False, "single point"
            else:
                lam = stats.smallest_matching_lambda(
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
    out["_k"] = out["method"].map(_order_key)
    return out.sort_values(["dataset", "_k"]).drop(columns="_k").reset_index(drop=True)


def _select(df: pd.DataFrame, method: str, dataset: str, lam: float) -> pd.DataFrame:
    rows = df[(df["method"] == method) & (df["dataset"] == dataset)]
    return rows[rows["lam"].isna()] if pd.isna(lam) else rows[np.isclose(rows["lam"], lam)]


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
    """
    present = set(map(str, results["method"].unique()))
    if methods is None:
        stages = [m for m in present if _stage_index(m) is not None]
        methods = ordered(stages) + [
            m for m in (ORACLE, "static_cascade", "router", "dp") if m in present
        ]
    unknown = [m for m in methods if m not in present]
    if unknown:
        raise AnalysisError(f"method(s) {', '.join(unknown)} not in the results table")
    names = _datasets(results, datasets)
    fig, axes = _grid(len(names), 2, 5.6, 4.0)
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
                rows = _select(rows, name, dataset, lam)
                tag = f" ({_lam_label(name, lam)})"
            cost = np.sort(rows.groupby("item_id")["cost"].mean().to_numpy(float))
            if cost.size == 0:
                continue
            span.append(cost)
            k = _stage_index(name)
            colour = str(0.15 + 0.55 * k / 4) if k is not None else _colour(name)
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
        _plain_log_ticks(ax)
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
    (:func:`curve_table`, or :func:`stats.curve_summary` without CIs). 0 = the cheapest stage's
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
        yerr = _err(est, rows["area_low"], rows["area_high"]) if has_ci else None
        ax.bar(
            x + (i - (len(shown) - 1) / 2) * width,
            np.nan_to_num(est),
            width=width * 0.95,
            yerr=yerr,
            capsize=2,
            color=_colour(name, ablation=ablation),
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


# --------------------------------------------------------------------------------------------
# Bootstrap of curve statistics over inputs
# --------------------------------------------------------------------------------------------

# Elements per batch of resample weights (B × n), to bound memory.
_BATCH_ELEMENTS = 4_000_000


@dataclass(frozen=True)
class _Points:
    """Every (method, λ) point of one dataset, per input (seed-averaged)."""

    keys: list[tuple[str, float]]  # (method, lam) per column; lam NaN for single points
    quality: np.ndarray  # (n_inputs, n_points) quality per input
    cost: np.ndarray  # (n_inputs, n_points) seconds per input

    @classmethod
    def of(cls, data: pd.DataFrame, dataset: str) -> _Points:
        point = data["method"].astype(str) + "|" + data["lam"].map(repr)
        table = (
            data.assign(point=point)
            .groupby(["point", "item_id"])[["quality", "cost"]]
            .mean()
            .unstack("point")
        )
        names = list(table["quality"].columns)
        first = data.assign(point=point).drop_duplicates("point").set_index("point")
        keys = [(str(first.at[p, "method"]), float(first.at[p, "lam"])) for p in names]
        q, c = table["quality"].to_numpy(float), table["cost"].to_numpy(float)
        gaps = np.isnan(q).any(axis=0) | np.isnan(c).any(axis=0)
        if gaps.any():
            method, lam = keys[int(np.argmax(gaps))]
            raise AnalysisError(
                f"dataset '{dataset}': method '{method}' (λ={lam}) does not cover every input"
            )
        return cls(keys, q, c)

    def columns(self, method: str) -> np.ndarray:
        """Column indices of a method's points (``best_pair``: every pair's)."""
        if method == BEST_PAIR:
            hit = [i for i, (m, _) in enumerate(self.keys) if re.fullmatch(r"pair_\d+_\d+", m)]
        else:
            hit = [i for i, (m, _) in enumerate(self.keys) if m == method]
        return np.asarray(hit, dtype=int)

    def column(self, method: str, lam: float = float("nan")) -> int | None:
        """The column of one point, or None."""
        for i, (m, other) in enumerate(self.keys):
            if m == method and ((math.isnan(lam) and math.isnan(other)) or np.isclose(other, lam)):
                return i
        return None


Statistic = Callable[
    [np.ndarray, np.ndarray], float
]  # (mean quality, mean cost) per point -> value


def _bootstrap(
    points: _Points,
    statistics: Mapping[str, Statistic],
    confidence: float,
    n_resamples: int,
    seed: int,
) -> dict[str, stats.CI]:
    """Percentile CIs of statistics of the points' mean quality and cost, resampling inputs.

    Every statistic sees the same resamples (drawn from ``seed``), so CIs of different methods
    are paired. Resamples on which a statistic is NaN are dropped while they are at most the
    tail mass (1 − confidence)/2 of all, else the bounds are NaN; +inf (an oracle quality never
    reached) is ordered like any value. Fewer than 2 inputs give NaN bounds.
    """
    q, c = points.quality, points.cost
    n = q.shape[0]
    full = {k: f(q.mean(axis=0), c.mean(axis=0)) for k, f in statistics.items()}
    if n < 2:
        return {k: stats.CI(v, np.nan, np.nan, confidence, "none") for k, v in full.items()}
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {k: [] for k in statistics}
    batch = max(1, _BATCH_ELEMENTS // n)
    for start in range(0, n_resamples, batch):
        b = min(batch, n_resamples - start)
        idx = rng.integers(0, n, size=(b, n))
        weights = np.bincount((np.arange(b)[:, None] * n + idx).ravel(), minlength=b * n)
        weights = weights.reshape(b, n) / n
        qb, cb = weights @ q, weights @ c
        for k, f in statistics.items():
            draws[k].extend(f(qb[i], cb[i]) for i in range(b))
    tail = (1.0 - confidence) / 2.0
    out = {}
    for k, values in draws.items():
        arr = np.asarray(values, dtype=float)
        undefined = np.isnan(arr)
        # A few undefined resamples (e.g. stage 0 and the deepest tie, so the area is 0/0) are
        # dropped; more than the tail mass and no interval can be trusted.
        if np.isnan(full[k]) or undefined.mean() > tail:
            out[k] = stats.CI(full[k], np.nan, np.nan, confidence, "undefined")
            continue
        low, high = np.quantile(arr[~undefined], [tail, 1.0 - tail], method="inverted_cdf")
        out[k] = stats.CI(full[k], float(low), float(high), confidence, "percentile")
    return out


def _area(points: _Points, cols: np.ndarray, lo: int, hi: int) -> Statistic:
    def f(q: np.ndarray, c: np.ndarray) -> float:
        return stats.normalised_area(c[cols], q[cols], (c[lo], q[lo]), (c[hi], q[hi]))

    return f


def _area_difference(
    points: _Points, cols: np.ndarray, others: np.ndarray, lo: int, hi: int
) -> Statistic:
    mine, theirs = _area(points, cols, lo, hi), _area(points, others, lo, hi)

    def f(q: np.ndarray, c: np.ndarray) -> float:
        return mine(q, c) - theirs(q, c)

    return f


def _gap(cols: np.ndarray, orc: int) -> Statistic:
    def f(q: np.ndarray, c: np.ndarray) -> float:
        if not c[orc] > 0:
            return float("nan")
        gap = stats.oracle_gap(c[cols], q[cols], c[orc], q[orc])
        return gap.ratio if gap.reached else float("inf")

    return f


def _share(col: int, orc: int, hi: int) -> Statistic:
    def f(q: np.ndarray, c: np.ndarray) -> float:
        return stats.saving_share(c[col], c[orc], c[hi])

    return f


def _anchors(points: _Points, dataset: str, cheapest: str, reference: str) -> tuple[int, int]:
    lo, hi = points.column(cheapest), points.column(reference)
    if lo is None or hi is None:
        missing = cheapest if lo is None else reference
        raise AnalysisError(f"dataset '{dataset}': no single-point rows of '{missing}'")
    return lo, hi


def curve_table(
    results: pd.DataFrame,
    methods: Sequence[str] | None = None,
    confidence: float = 0.95,
    n_resamples: int = 1000,
    seed: int = 0,
    cheapest: str = CHEAPEST,
    reference: str | None = None,
    oracle: str = ORACLE,
) -> pd.DataFrame:
    """Per method × dataset: normalised area and oracle gap of its curve, with percentile CIs.

    ``results`` is the tidy results table. A method's curve is its (mean cost, mean quality)
    points, one per λ; ``best_pair`` pools every ``pair_i_j``. The area is
    :func:`stats.normalised_area` between ``cheapest`` and ``reference`` (the same number as
    :func:`stats.curve_summary`); the oracle gap is :func:`stats.oracle_gap`'s ratio against
    ``oracle`` (+inf when the curve never reaches the oracle's quality, NaN without an oracle).
    Columns: method, dataset, n_points, n_inputs, area/_low/_high, area_vs_router/_low/_high
    (the method's area minus the router's on the same resamples: a paired CI), oracle_gap/_low/
    _high, reaches_oracle, and ``reason`` saying why a figure is undefined (NaN).
    """
    stats.check_table(results)
    reference = reference or stats.deepest_stage(results)
    present = set(map(str, results["method"].unique()))
    if methods is None:
        methods = ordered(
            present | ({BEST_PAIR} if any(m.startswith("pair_") for m in present) else set())
        )
    records = []
    for dataset, data in results.groupby("dataset", sort=True):
        points = _Points.of(data, str(dataset))
        lo, hi = _anchors(points, str(dataset), cheapest, reference)
        orc = points.column(oracle)
        statistics: dict[str, Statistic] = {}
        shown = []
        router = points.columns(ROUTER)
        for name in methods:
            cols = points.columns(name)
            if cols.size == 0:
                continue
            shown.append((name, cols.size))
            statistics[f"area:{name}"] = _area(points, cols, lo, hi)
            if router.size:
                statistics[f"vs:{name}"] = _area_difference(points, cols, router, lo, hi)
            if orc is not None:
                statistics[f"gap:{name}"] = _gap(cols, orc)
        cis = _bootstrap(points, statistics, confidence, n_resamples, seed)
        undefined = stats.CI(np.nan, np.nan, np.nan, confidence, "undefined")
        q_mean, c_mean = points.quality.mean(axis=0), points.cost.mean(axis=0)
        for name, n_points in shown:
            area = cis[f"area:{name}"]
            versus = cis.get(f"vs:{name}", undefined)
            gap = cis.get(f"gap:{name}", undefined)
            reasons = []
            if q_mean[hi] == q_mean[lo]:
                reasons.append("area undefined: the deepest stage is no better than stage 0")
            elif q_mean[hi] < q_mean[lo]:
                reasons.append("area inverted: the deepest stage is worse than stage 0")
            if orc is None:
                reasons.append("no oracle router")
            else:
                if math.isinf(gap.estimate):
                    reasons.append("never reaches the oracle router's quality")
                if c_mean[orc] >= c_mean[hi]:
                    reasons.append("the oracle router saves nothing")
            records.append(
                {
                    "method": name,
                    "dataset": dataset,
                    "n_points": n_points,
                    "n_inputs": points.quality.shape[0],
                    "area": area.estimate,
                    "area_low": area.low,
                    "area_high": area.high,
                    "area_vs_router": versus.estimate,
                    "area_vs_router_low": versus.low,
                    "area_vs_router_high": versus.high,
                    "oracle_gap": gap.estimate,
                    "oracle_gap_low": gap.low,
                    "oracle_gap_high": gap.high,
                    "reaches_oracle": bool(np.isfinite(gap.estimate)),
                    "reason": "; ".join(reasons),
                }
            )
    return pd.DataFrame.from_records(records)


# --------------------------------------------------------------------------------------------
# Tables of the paper
# --------------------------------------------------------------------------------------------


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
    """
    reference = reference or stats.deepest_stage(summary)
    if not (summary["method"] == method).any():
        raise AnalysisError(f"headline method '{method}' is not in the summary table")
    points = operating_points(summary, reference)
    records = []
    for dataset, data in summary.groupby("dataset", sort=True):
        ref = _row(data, reference)
        pick = points[(points["method"] == method) & (points["dataset"] == dataset)]
        if ref is None or pick.empty:
            continue
        lam, matched = float(pick["lam"].iloc[0]), bool(pick["matched"].iloc[0])
        row = _select(data, method, str(dataset), lam).iloc[0]
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
        pts = _Points.of(data_rows, str(dataset))
        col, orc, hi = pts.column(method, lam), pts.column(oracle), pts.column(reference)
        reasons = [] if matched else ["no λ keeps 95% of the deepest stage's quality"]
        if col is not None and hi is not None:
            wanted = {"diff": _difference(col, hi)}
            if matched and orc is not None:
                wanted["share"] = _share(col, orc, hi)
            cis = _bootstrap(pts, wanted, confidence, n_resamples, seed)
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
        row = _select(summary, str(p.method), str(p.dataset), float(p.lam)).iloc[0]
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


# --------------------------------------------------------------------------------------------
# Display and HTML
# --------------------------------------------------------------------------------------------

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
