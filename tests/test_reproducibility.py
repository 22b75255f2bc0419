"""Reproducibility (issue: the paper end to end): the smoke profile run twice with the same seed
writes identical tables, timing columns aside; and every notebook parameter is a params key.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import papermill as pm
import yaml

from asd_core.reporting.notebooks import run_notebook

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = ["02_data_generation", "03_predictor_training", "04_evaluation", "05_analysis"]
# columns that hold measured time (or are computed from it): they differ from run to run
TIMING = re.compile(r"(_s|_s_by|seconds|_us|online_over_replay|created|tok/s)$|^(latency|rate)")
TIMING_FILES = {"03_decision_overhead.csv"}  # a timing benchmark through and through


def test_every_notebook_parameter_is_a_params_key() -> None:
    """A notebook default for a key missing from base.yaml would leak into cpu/paper runs."""
    base = yaml.safe_load((REPO / "params" / "base.yaml").read_text())
    for nb in ["01_profiling", *NOTEBOOKS]:
        declared = pm.inspect_notebook(str(REPO / "notebooks" / f"{nb}.ipynb"))
        missing = [k for k in declared if k not in base and k not in ("profile", "stages")]
        assert not missing, f"{nb}: parameters {missing} are not in params/base.yaml"


def _run(tmp: Path) -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    override = tmp / "override.yaml"
    override.write_text(
        yaml.safe_dump({"data_dir": str(tmp / "data"), "reports_dir": str(tmp / "reports")})
    )
    files = [REPO / "params" / "base.yaml", REPO / "params" / "smoke.yaml", override]
    for nb in NOTEBOOKS:
        run_notebook(nb, files, tmp / "runs")
    return tmp / "reports" / "tables"


def _read(path: Path) -> pd.DataFrame:
    df = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    return df[[c for c in df.columns if not TIMING.search(str(c))]]


def test_smoke_profile_twice_gives_identical_tables(tmp_path: Path) -> None:
    first, second = _run(tmp_path / "a"), _run(tmp_path / "b")
    names = sorted(p.name for p in first.iterdir() if p.suffix in (".csv", ".parquet"))
    assert {"04_results.parquet", "03_predictor_metrics.csv", "05_summary.csv"} <= set(names)
    assert names == sorted(p.name for p in second.iterdir() if p.suffix in (".csv", ".parquet"))
    for name in names:
        if name in TIMING_FILES:
            continue
        a, b = _read(first / name), _read(second / name)
        pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-9, obj=name)
