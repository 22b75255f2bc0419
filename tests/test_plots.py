"""Paper figures and tables (asd_core.analysis.figures) on a synthetic results table shaped like notebook 04's,
and notebook 05 executed end to end under papermill on such a table."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from asd_core.analysis import curve_stats, figures, names, pareto, summaries, tables
from asd_core.ground import frontier, stats
from asd_core.ground.provenance import sidecar_path

REPO = Path(__file__).resolve().parents[1]
LAMS = (0.1, 1.0, 10.0)
BUDGETS = (0.3, 0.6, 0.9)
SHARES = (0.0, 0.5, 1.0)
# Skill of each learned method: how often its decision sees the input's true acceptability.
SKILL = {
    "dp": 0.85,
    "dp_no_risk": 0.8,
    "dp_no_predictor": 0.55,
    "dp_size_costs": 0.75,
    "dp_myopic": 0.7,
    "dp_sequential": 0.85,
    "static_cascade": 0.7,
    "router": 0.6,
    "pair_0_1": 0.7,
    "pair_0_2": 0.7,
    "pair_1_2": 0.7,
}


def _emit(rows, dataset, items, quality, ref_cost, method, lam, seed, depth, cost, path) -> None:
    """Append one method × λ × seed block of rows: every input once."""
    for i, item in enumerate(items):
        rows.append(
            {
                "method": method,
                "lam": lam,
                "seed": seed,
                "dataset": dataset,
                "item_id": item,
                "quality": float(quality[i, depth[i]]),
                "cost": float(cost[i]),
                "cost_rel": float(cost[i] / ref_cost),
                "depth": int(depth[i]),
                "path": path[i],
            }
        )


def synthetic_results(
    n_items: int = 40,
    datasets: tuple[str, ...] = ("mmlu", "truthfulqa"),
    seeds: tuple[int, ...] = (1, 2),
    seed: int = 0,
) -> pd.DataFrame:
    """A results table with notebook 04's columns and realistic structure, three stages.

    Per input: the deepest stage's quality (0/1 for MCQ-like datasets, a ROUGE-like score for
    ``truthfulqa``), whether each stage's answer is accepted (agrees with the deepest's), and
    per-stage seconds. Stage k's quality is the deepest's when accepted, else worse. Single-point
    methods run once (first seed); swept methods get one row per λ/budget/share and seed, with
    per-seed decision noise. Routers pay one stage, cascades every stage they visit.
    """
    rng = np.random.default_rng(seed)
    K = 3
    rows: list[dict[str, object]] = []
    for d, dataset in enumerate(datasets):
        score = dataset == "truthfulqa"
        n = n_items
        items = [f"{dataset}-{i:03d}" for i in range(n)]
        top = rng.uniform(0.2, 0.9, n) if score else (rng.random(n) < 0.7).astype(float)
        accept = np.stack(
            [rng.random(n) < 0.45, rng.random(n) < 0.7, np.ones(n, bool)], axis=1
        )  # (n, K)
        worse = rng.uniform(0.0, 0.3, (n, K)) if score else (rng.random((n, K)) < 0.2).astype(float)
        quality = np.where(accept, top[:, None], worse)  # (n, K)
        base = np.array([0.4, 1.1, 3.0]) * (1 + 0.2 * d)
        cost = base[None, :] * rng.lognormal(0, 0.25, (n, K))  # (n, K) seconds
        ref_cost = cost[:, -1].mean()
        oracle_depth = accept.argmax(axis=1)

        emit = functools.partial(_emit, rows, dataset, items, quality, ref_cost)

        idx = np.arange(n)
        s0 = seeds[0]
        for k in range(K):
            emit(f"stage_{k}", np.nan, s0, np.full(n, k), cost[:, k], [str(k)] * n)
        emit(
            "oracle_router",
            np.nan,
            s0,
            oracle_depth,
            cost[idx, oracle_depth],
            [str(k) for k in oracle_depth],
        )
        casc = np.array([cost[i, : oracle_depth[i] + 1].sum() * 0.9 for i in idx])
        emit(
            "oracle_cascade",
            np.nan,
            s0,
            oracle_depth,
            casc,
            ["→".join(map(str, range(k + 1))) for k in oracle_depth],
        )
        emit(
            "draft_verify_deepest",
            np.nan,
            s0,
            np.full(n, K - 1),
            cost[:, 1] * 0.3 + cost[:, 2] * 0.85,
            ["1→2"] * n,
        )
        for s in seeds:
            noise = np.random.default_rng(1000 * s + d)
            for share in SHARES:
                deep = noise.random(n) < share
                emit(
                    "random",
                    share,
                    s,
                    np.where(deep, K - 1, 0),
                    np.where(deep, cost[:, -1], cost[:, 0]),
                    ["2" if x else "0" for x in deep],
                )
            for method, skill in SKILL.items():
                knobs = LAMS if method.startswith("dp") else BUDGETS
                for knob in knobs:
                    strictness = knob / (1 + knob) if method.startswith("dp") else knob
                    sees = noise.random((n, K)) < skill
                    belief = np.where(sees, accept, noise.random((n, K)) < 0.5)
                    belief = belief & (noise.random((n, K)) > strictness * 0.6)
                    belief[:, -1] = True
                    stages = (
                        [0, K - 1]
                        if method == "pair_0_2"
                        else [0, 1]
                        if method == "pair_0_1"
                        else [1, 2]
                        if method == "pair_1_2"
                        else list(range(K))
                    )
                    depth = np.array(
                        [next(k for k in stages if belief[i, k] or k == stages[-1]) for i in idx]
                    )
                    if method == "router" or (
                        method.startswith("dp") and method != "dp_sequential"
                    ):
                        c = cost[idx, depth] * (1.05 if method.startswith("dp") else 1.0)
                        path = [str(k) for k in depth]
                    else:
                        visited = [[k for k in stages if k <= depth[i]] for i in idx]
                        c = np.array(
                            [cost[i, v].sum() * 0.9 for i, v in zip(idx, visited, strict=True)]
                        )
                        path = ["→".join(map(str, v)) for v in visited]
                    emit(method, float(knob), s, depth, c, path)
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def results() -> pd.DataFrame:
    return synthetic_results()


@pytest.fixture(scope="module")
def summary(results: pd.DataFrame) -> pd.DataFrame:
    return summaries.summarise(results, n_resamples=200, ci_method="percentile")


@pytest.fixture(scope="module")
def curves(results: pd.DataFrame) -> pd.DataFrame:
    return curve_stats.curve_table(results, n_resamples=200, seed=0)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _texts(fig) -> str:
    parts = [fig._suptitle.get_text() if fig._suptitle else ""]
    for ax in fig.axes:
        parts += [ax.get_title(), ax.get_xlabel(), ax.get_ylabel()]
        parts += [t.get_text() for t in ax.get_legend().get_texts()] if ax.get_legend() else []
    for legend in fig.legends:
        parts += [t.get_text() for t in legend.get_texts()]
    return "\n".join(parts)


# -- the synthetic table is what the analysis expects -----------------------------------------


def test_synthetic_table_is_a_valid_results_table(results: pd.DataFrame) -> None:
    summaries.check_table(results)
    assert set(results.columns) >= {
        "method",
        "lam",
        "seed",
        "dataset",
        "item_id",
        "quality",
        "cost",
        "cost_rel",
        "depth",
        "path",
    }
    assert summaries.deepest_stage(results) == "stage_2"
    tq = results[results["dataset"] == "truthfulqa"]
    assert not stats.is_binary(tq["quality"])  # exercises the Wilcoxon path for scores


# -- curve statistics ----------------------------------------------------------------------


def test_curve_table_matches_stats_curve_summary(
    summary: pd.DataFrame, curves: pd.DataFrame
) -> None:
    reference = summaries.curve_summary(summary)
    merged = curves.merge(reference, on=["method", "dataset"], suffixes=("", "_ref"))
    assert len(merged) == len(reference)  # every real method; best_pair comes on top
    np.testing.assert_allclose(merged["area"], merged["area_ref"], rtol=1e-9, equal_nan=True)
    finite = merged["oracle_gap_ref"].notna()
    np.testing.assert_allclose(
        merged.loc[finite, "oracle_gap"], merged.loc[finite, "oracle_gap_ref"], rtol=1e-9
    )
    assert np.isinf(merged.loc[~finite, "oracle_gap"]).all()  # unreached: +inf, not NaN


def test_curve_table_cis_bracket_the_estimate_and_best_pair_is_the_pair_envelope(
    results: pd.DataFrame, summary: pd.DataFrame, curves: pd.DataFrame
) -> None:
    ok = curves["area_low"].notna()
    assert ok.all()
    assert (curves["area_low"] <= curves["area"] + 1e-12).all()
    assert (curves["area"] <= curves["area_high"] + 1e-12).all()
    assert (curves["area_high"] - curves["area_low"] > 0).any()
    for dataset, data in summary.groupby("dataset"):
        pairs = data[data["method"].str.startswith("pair_")]
        lo = data[data["method"] == "stage_0"].iloc[0]
        hi = data[data["method"] == "stage_2"].iloc[0]
        expected = frontier.normalised_area(
            pairs["cost"],
            pairs["quality"],
            (lo["cost"], lo["quality"]),
            (hi["cost"], hi["quality"]),
        )
        got = curves[(curves["dataset"] == dataset) & (curves["method"] == "best_pair")][
            "area"
        ].iloc[0]
        assert got == pytest.approx(expected)
        single = curves[(curves["dataset"] == dataset) & curves["method"].str.startswith("pair_")][
            "area"
        ]
        assert got >= single.max() - 1e-12  # pooling can only help
    orc = curves[curves["method"] == "oracle_router"]
    np.testing.assert_allclose(orc["oracle_gap"], 1.0)


def test_curve_table_is_reproducible_and_seed_dependent(
    results: pd.DataFrame, curves: pd.DataFrame
) -> None:
    again = curve_stats.curve_table(results, n_resamples=200, seed=0)
    pd.testing.assert_frame_equal(again, curves)
    other = curve_stats.curve_table(results, n_resamples=200, seed=1)
    assert not np.allclose(other["area_low"], curves["area_low"])
    np.testing.assert_allclose(other["area"], curves["area"])  # estimates do not depend on the seed


def test_curve_table_names_a_method_that_misses_inputs(results: pd.DataFrame) -> None:
    broken = results.drop(
        results[
            (results["method"] == "router")
            & (results["item_id"] == "mmlu-003")
            & (results["lam"] == 0.6)
        ].index
    )
    with pytest.raises(
        names.AnalysisError,
        match=r"dataset 'mmlu': method 'router' \(λ=0.6\) does not cover every input",
    ):
        curve_stats.curve_table(broken, n_resamples=10)


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(min_value=2, max_value=30),
    m=st.integers(min_value=1, max_value=4),
    confidence=st.sampled_from([0.8, 0.9, 0.95]),
    data=st.data(),
)
def test_bootstrap_of_means_brackets_the_mean(
    n: int, m: int, confidence: float, data: st.DataObject
) -> None:
    values = st.floats(min_value=0.0, max_value=10.0, allow_nan=False)
    q = np.array(data.draw(st.lists(values, min_size=n * m, max_size=n * m))).reshape(n, m)
    c = q + 1.0
    pts = curve_stats.CurvePoints([(f"m{i}", float("nan")) for i in range(m)], q, c)
    cis = curve_stats.resampled_statistics(
        pts, {"mean0": lambda qq, cc: float(qq[0])}, confidence, 200, seed=3
    )
    ci = cis["mean0"]
    assert ci.estimate == pytest.approx(q[:, 0].mean())
    assert q[:, 0].min() - 1e-9 <= ci.low <= ci.estimate + 1e-9
    assert ci.estimate - 1e-9 <= ci.high <= q[:, 0].max() + 1e-9


# -- operating points and tables -------------------------------------------------------------


def test_operating_points_follow_the_smallest_matching_lambda(summary: pd.DataFrame) -> None:
    points = tables.operating_points(summary)
    assert set(points["method"]) == set(summary["method"])
    for p in points[points["method"] == "dp"].itertuples():
        data = summary[(summary["dataset"] == p.dataset)]
        ref = data[data["method"] == "stage_2"].iloc[0]
        dp = data[data["method"] == "dp"].sort_values("lam")
        ok = dp[dp["quality"] >= 0.95 * ref["quality"] - 1e-12]
        if len(ok):
            assert p.matched and p.lam == ok["lam"].min()
        else:
            assert not p.matched and p.lam == dp.sort_values("quality")["lam"].iloc[-1]
    singles = points[points["method"].isin(["stage_0", "oracle_router"])]
    assert singles["lam"].isna().all() and (singles["rule"] == "single point").all()


def test_headline_table_reports_dp_with_cis(results, summary, curves) -> None:
    head = tables.headline_table(results, summary, curves, method="dp", n_resamples=200, seed=0)
    assert list(head["dataset"]) == ["mmlu", "truthfulqa"]
    for col in (
        "speedup",
        "saving_share",
        "oracle_gap",
        "area_dp",
        "area_static_cascade",
        "area_router",
        "area_best_pair",
    ):
        assert {col, f"{col}_low", f"{col}_high"} <= set(head.columns)
    for r in head.itertuples():
        row = summary[
            (summary["dataset"] == r.dataset)
            & (summary["method"] == "dp")
            & (summary["lam"] == r.lam)
        ].iloc[0]
        if r.matched:
            assert r.speedup == pytest.approx(row["speedup"])
            orc = summary[
                (summary["dataset"] == r.dataset) & (summary["method"] == "oracle_router")
            ].iloc[0]
            ref = summary[
                (summary["dataset"] == r.dataset) & (summary["method"] == "stage_2")
            ].iloc[0]
            assert r.saving_share == pytest.approx(
                frontier.saving_share(row["cost"], orc["cost"], ref["cost"])
            )
            assert r.saving_share_low <= r.saving_share <= r.saving_share_high
        else:
            assert np.isnan(r.speedup) and np.isnan(r.saving_share)
        c = curves[(curves["dataset"] == r.dataset) & (curves["method"] == "router")].iloc[0]
        assert r.area_router == c["area"] and r.area_router_low == c["area_low"]


def test_headline_table_unknown_method_is_one_clear_error(results, summary, curves) -> None:
    with pytest.raises(names.AnalysisError, match="headline method 'nope'"):
        tables.headline_table(results, summary, curves, method="nope")


def test_accuracy_latency_marks_follow_holm(summary: pd.DataFrame) -> None:
    table = tables.accuracy_latency_table(summary)
    assert set(table["dataset"]) == {"mmlu", "truthfulqa"}
    assert (table["quality_mark"] == np.where(table["p_quality_holm"] < 0.05, "*", "")).all()
    assert (table["latency_mark"] == np.where(table["p_latency_holm"] < 0.05, "*", "")).all()
    assert (table["latency_mark"] == "*").any()  # stage 0 is far cheaper than stage 2
    ref = table[table["method"] == "stage_2"]
    assert (ref["quality_mark"] == "").all() and np.allclose(ref["speedup"], 1.0)
    tests = table[table["dataset"] == "truthfulqa"].dropna(subset=["p_quality_holm"])[
        "quality_test"
    ]
    assert set(tests) == {"wilcoxon"}
    assert list(table[table["dataset"] == "mmlu"]["method"][:3]) == [
        "stage_0",
        "stage_1",
        "stage_2",
    ]


def test_display_table_writes_cis_marks_and_dashes() -> None:
    df = pd.DataFrame(
        {
            "method": ["dp", "stage_2"],
            "lam": [1.0, np.nan],
            "quality": [0.61234, 0.7],
            "quality_low": [0.58, np.nan],
            "quality_high": [0.64, np.nan],
            "quality_mark": ["*", ""],
            "speedup": [1.456, 1.0],
            "speedup_low": [1.2, 1.0],
            "speedup_high": [1.7, 1.0],
            "oracle_gap": [np.inf, 1.0],
            "retention": [0.98, 1.0],
            "matched": [True, False],
        }
    )
    out = tables.display_table(df)
    assert list(out.columns) == [
        "method",
        "λ / budget",
        "quality",
        "speedup",
        "oracle gap",
        "retention",
        "matched",
    ]
    assert out.loc[0, "quality"] == "0.612 [0.580, 0.640] *"
    assert out.loc[1, "quality"] == "0.700"
    assert out.loc[0, "speedup"] == "1.46× [1.20×, 1.70×]"
    assert out.loc[1, "λ / budget"] == "—"
    assert out.loc[0, "oracle gap"] == "∞"
    assert out.loc[0, "retention"] == "98.0%"
    assert list(out["matched"]) == ["yes", "no"]


def test_write_csv_and_html_with_sidecars(tmp_path: Path, summary: pd.DataFrame) -> None:
    prov = {"git_commit": "abc", "params_digest": "d1", "profile": "smoke", "created_utc": "now"}
    table = tables.accuracy_latency_table(summary)
    csv, page = tables.write_csv_and_html(
        table,
        tmp_path / "t" / "05_accuracy_latency",
        prov,
        title="Accuracy & latency",
        caption="* Holm < 0.05 <b>",
    )
    assert csv.name == "05_accuracy_latency.csv" and page.name == "05_accuracy_latency.html"
    back = pd.read_csv(csv).fillna({"quality_mark": "", "latency_mark": ""})
    pd.testing.assert_frame_equal(back, table, check_dtype=False, check_exact=False)
    html = page.read_text()
    assert html.count("<table") == 1 and "Accuracy &amp; latency" in html
    assert "&lt;b&gt;" in html  # captions are escaped
    assert " *</td>" in html
    for path in (csv, page):
        record = json.loads(sidecar_path(path).read_text())
        assert record["profile"] == "smoke" and record["artifact"] == path.name
    import hashlib

    assert (
        json.loads(sidecar_path(page).read_text())["sha256"]
        == hashlib.sha256(page.read_bytes()).hexdigest()
    )


def test_settings_reject_bad_values_naming_the_key() -> None:
    assert names.AnalysisSettings().confidence == pytest.approx(0.95)
    with pytest.raises(names.AnalysisError, match="analysis_bootstrap_resamples"):
        names.AnalysisSettings(n_resamples=0)
    with pytest.raises(names.AnalysisError, match="analysis_alpha"):
        names.AnalysisSettings(alpha=1.5)
    with pytest.raises(names.AnalysisError, match="analysis_ci_method"):
        names.AnalysisSettings(ci_method="bca")


def test_load_results_errors(tmp_path: Path) -> None:
    with pytest.raises(names.AnalysisError, match="results table not found"):
        names.load_results(tmp_path / "04_results.parquet")
    pd.DataFrame({"method": ["x"]}).to_parquet(tmp_path / "bad.parquet")
    with pytest.raises(names.AnalysisError, match=r"bad.parquet: evaluation table lacks column"):
        names.load_results(tmp_path / "bad.parquet")


# -- figures ---------------------------------------------------------------------------------


def test_pareto_has_a_panel_per_dataset_with_every_baseline(summary: pd.DataFrame) -> None:
    fig = pareto.pareto(summary)
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert len(panels) == 2
    text = _texts(fig)
    for name in (
        "DP policy (ours), λ sweep",
        "static cascade",
        "router (RouteLLM-style)",
        "best two-stage pair",
        "random mixing",
        "oracle router",
        "oracle cascade",
        "stage 0 alone",
        "stage 2 alone",
        "deepest stage, 95% CI",
        "draft + verify",
    ):
        assert name in text, name
    assert "relative to the deepest stage" in text
    assert panels[0].get_title().startswith("mmlu (n = 40")
    # the DP curve's band is drawn: a PolyCollection with finite vertices
    from matplotlib.collections import PolyCollection

    assert any(isinstance(c, PolyCollection) for c in panels[0].collections)
    single = pareto.pareto(summary, datasets=["truthfulqa"])
    assert len([ax for ax in single.axes if ax.get_visible()]) == 1


def test_lambda_sweep_is_log_x_with_every_ablation(summary: pd.DataFrame) -> None:
    fig = pareto.lambda_sweep(summary)
    assert len(fig.axes) == 4
    assert all(ax.get_xscale() == "log" for ax in fig.axes)
    text = _texts(fig)
    present = set(summary["method"])
    assert {"dp", "dp_myopic"} <= present
    for m in names.ABLATIONS:
        assert (names.label(m) in text) == (m in present)
    dp_line = next(
        line for line in fig.axes[0].get_lines() if line.get_label() == names.label("dp")
    )
    np.testing.assert_allclose(dp_line.get_xdata(), LAMS)


def test_stage_usage_bars_sum_to_one(results: pd.DataFrame) -> None:
    fig = figures.stage_usage(results, method="dp")
    ax = fig.axes[0]
    heights: dict[float, float] = {}
    for patch in ax.patches:
        heights[patch.get_x()] = heights.get(patch.get_x(), 0.0) + patch.get_height()
    assert len(heights) == len(LAMS) + 1  # every λ and the oracle router
    np.testing.assert_allclose(list(heights.values()), 1.0)
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels == ["λ=0.1", "λ=1", "λ=10", names.label("oracle_router")]
    with pytest.raises(names.AnalysisError, match="'nope' is not in the results table"):
        figures.stage_usage(results, method="nope")


def test_latency_cdf_uses_the_operating_points(
    results: pd.DataFrame, summary: pd.DataFrame
) -> None:
    points = tables.operating_points(summary)
    fig = figures.latency_cdf(results, points=points)
    text = _texts(fig)
    dp_lam = points[(points["method"] == "dp") & (points["dataset"] == "mmlu")]["lam"].iloc[0]
    assert f"DP policy (ours) (λ={dp_lam:g})" in text
    assert "stage 0 alone" in text and "latency per input (s" in text
    for line in fig.axes[0].get_lines():
        y = line.get_ydata()
        assert y[-1] == pytest.approx(1.0) and np.all(np.diff(y) > 0)
    with pytest.raises(names.AnalysisError, match="not in the results table"):
        figures.latency_cdf(results, methods=["stage_9"])


def test_area_and_ablation_bars(curves: pd.DataFrame) -> None:
    fig = figures.ablation_bars(curves)
    ax = fig.axes[0]
    present = [m for m in names.ABLATIONS if m in set(curves["method"])]
    assert len(present) >= 4 and len(ax.patches) == len(present) * 2
    dp = curves[curves["method"] == "dp"].sort_values("dataset")["area"].to_numpy()
    heights = [p.get_height() for p in ax.patches[:2]]
    np.testing.assert_allclose(heights, dp)
    fig2 = figures.area_bars(curves.drop(columns=["area_low", "area_high"]))  # curve_summary-shaped
    assert "best two-stage pair (envelope)" in _texts(fig2)


def test_online_vs_replay() -> None:
    online = pd.DataFrame(
        {
            "lam": [1.0] * 4 + [10.0] * 4,
            "online_s": [1.0, 2.0, 3.0, 4.0, 2.0, 3.0, 4.0, 5.0],
            "replay_s": [1.1, 1.9, 3.2, 4.0, 2.1, 2.9, 4.4, 5.0],
            "depth_agrees": [True, True, True, False, True, True, True, True],
        }
    )
    fig = figures.online_vs_replay(online)
    text = _texts(fig)
    assert "λ = 1: final stage agrees on 75% (n = 4)" in text
    assert "λ = 10: final stage agrees on 100% (n = 4)" in text
    assert "87.5%" in text and "y = x" in text
    with pytest.raises(names.AnalysisError, match="lacks column"):
        figures.online_vs_replay(online.drop(columns=["replay_s"]))


# -- the tiny tables of the smoke profile do not break the analysis --------------------------


def test_one_input_per_dataset_gives_undefined_cis_not_errors() -> None:
    tiny = synthetic_results(n_items=1, seeds=(1,))
    summary = summaries.summarise(tiny, n_resamples=20, ci_method="percentile")
    curves = curve_stats.curve_table(tiny, n_resamples=20)
    assert curves["area_low"].isna().all()
    head = tables.headline_table(tiny, summary, curves, n_resamples=20)
    # one input: point estimates exist, their intervals do not
    assert head["quality_diff_low"].isna().all() and head["saving_share_low"].isna().all()
    table = tables.accuracy_latency_table(summary)
    assert table[table["method"] == "dp"]["operating_point"].str.contains("95%").all()
    for fig in (
        pareto.pareto(summary),
        pareto.lambda_sweep(summary),
        figures.stage_usage(tiny),
        figures.latency_cdf(tiny),
        figures.ablation_bars(curves),
    ):
        fig.canvas.draw()


# -- notebook 05 end to end ----------------------------------------------------------------


def _write_inputs(reports: Path) -> None:
    from asd_core.ground.provenance import write_parquet

    (reports / "tables").mkdir(parents=True)
    write_parquet(
        synthetic_results(n_items=30),
        reports / "tables" / "04_results.parquet",
        {"notebook": "04_evaluation"},
    )


@pytest.mark.slow
def test_notebook_05_runs_under_the_runner(tmp_path: Path) -> None:
    from asd_core.reporting.notebooks import run_notebook

    reports = tmp_path / "reports"
    _write_inputs(reports)
    override = tmp_path / "override.yaml"
    override.write_text(f"reports_dir: {reports}\n")
    files = [REPO / "params" / "base.yaml", REPO / "params" / "smoke.yaml", override]
    executed = run_notebook("05_analysis", files, tmp_path / "runs")
    assert executed.with_suffix(".html").is_file()
    for name in ("05_summary", "05_curves", "05_headline", "05_accuracy_latency"):
        for ext in (".csv", ".html"):
            path = reports / "tables" / f"{name}{ext}"
            assert path.is_file() and sidecar_path(path).is_file(), path
            assert json.loads(sidecar_path(path).read_text())["notebook"] == "05_analysis"
    for name in (
        "pareto",
        "lambda_sweep",
        "stage_usage",
        "latency_cdf",
        "ablation_bars",
        "area_bars",
    ):
        path = reports / "figures" / f"05_{name}.png"
        assert path.stat().st_size > 10_000 and sidecar_path(path).is_file(), path
    head = pd.read_csv(reports / "tables" / "05_headline.csv")
    assert list(head["dataset"]) == ["mmlu", "truthfulqa"]


def test_notebook_05_is_thin_and_committed_without_outputs() -> None:
    nb = json.loads((REPO / "notebooks" / "05_analysis.ipynb").read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    params = [c for c in code if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(params) == 1
    for line in "".join(params[0]["source"]).splitlines():
        assert "  # " in line, line  # every parameter carries a comment
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code)
    assert not any("def " in "".join(c["source"]) for c in code)
    source = "".join(params[0]["source"])
    assert 'reports_dir = "reports/runs/smoke"' in source and 'headline_method = "dp"' in source


def test_decision_boundaries_draw_every_state_and_the_entry() -> None:
    decisions = pd.DataFrame(
        {
            "lam": [0.1, 0.1, 1.0, 1.0, 0.1, 0.1, 1.0, 1.0],
            "stage": ["s0", "s0", "s0", "s0", "entry", "entry", "entry", "entry"],
            "view": ["direct"] * 4 + [""] * 4,
            "bin": [0, 1, 0, 1, 0, 1, 0, 1],
            "p_low": [0.0, 0.4, 0.0, 0.4, np.nan, np.nan, np.nan, np.nan],
            "p_high": [0.4, 1.0, 0.4, 1.0, np.nan, np.nan, np.nan, np.nan],
            "n_held_out": [5, 5, 5, 5, 9, 1, 2, 8],
            "action": ["stop", "stop", "restart → s1", "stop", "enter s0", "enter s1"] * 1
            + ["enter s0", "enter s1"],
        }
    )
    fig = figures.decision_boundaries(decisions)
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible()]
    assert titles[:2] == ["after s0 (direct)", "entry (held-out inputs)"]
    text = _texts(fig)
    assert "restart → s1" in text and "stop" in text and "enter s1" in text
    with pytest.raises(names.AnalysisError, match="lacks column"):
        figures.decision_boundaries(decisions.drop(columns=["p_low"]))
