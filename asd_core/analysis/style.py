"""Shared look of every figure: colours per method, grids of panels, one legend per figure, plain log ticks."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from asd_core.analysis.names import ABLATIONS, BEST_PAIR

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

# Palette indices into seaborn's colour-blind palette; the Pareto figure and the ablation
# figures never share a panel, so the two groups may reuse colours.
BASELINE_COLOURS = {
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
ABLATION_COLOURS = {m: i for i, m in enumerate(ABLATIONS)}


def method_palette() -> list[Any]:
    import seaborn as sns

    return list(sns.color_palette("colorblind", 10))


def method_colour(method: str, ablation: bool = False) -> Any:
    table = ABLATION_COLOURS if ablation else BASELINE_COLOURS
    pal = method_palette()
    if method in table:
        return pal[table[method]]
    return pal[8 + sum(map(ord, method)) % 2]  # stable across runs, unlike hash()


def error_bars(est: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Asymmetric error bars, shape (2, n); undefined or inverted bounds draw no bar."""
    lower = np.nan_to_num(np.asarray(est, float) - np.asarray(low, float), nan=0.0)
    upper = np.nan_to_num(np.asarray(high, float) - np.asarray(est, float), nan=0.0)
    return np.clip(np.vstack([lower, upper]), 0.0, None)


def panel_grid(n: int, ncols: int, width: float, height: float) -> tuple[Figure, np.ndarray]:
    import matplotlib.pyplot as plt

    ncols = max(1, min(n, ncols))
    nrows = max(1, math.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, axes


def figure_legend(fig: Figure, axes: Sequence[Axes]) -> None:
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


def plain_log_ticks(ax: Axes) -> None:
    """Label only the major ticks of a log x-axis, as plain numbers (1, 2, 0.5, not 2×10⁰)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    if ax.get_xscale() == "log":
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())


def stage_colour(k: int, n_stages: int) -> Any:
    """Stage k's colour: light to dark along one hue, so depth reads at a glance."""
    import seaborn as sns

    return sns.color_palette("rocket_r", n_stages + 2)[k + 2]


def sparse_labels(
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
