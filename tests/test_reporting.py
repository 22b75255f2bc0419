"""Reporting: provenance records, atomic writes, sidecars next to every table and figure."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import time
import types
from datetime import datetime
from pathlib import Path

import pandas as pd
import pytest

from asd_core.ground import config, dependencies, files, provenance

REPO = Path(__file__).resolve().parents[1]
PARAMS = [REPO / "params" / "base.yaml", REPO / "params" / "smoke.yaml"]


def _head() -> str | None:
    if not shutil.which("git"):
        return None
    out = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True
    )
    return out.stdout.strip() or None


def test_repo_path_anchors_relative_paths_at_the_repo_root(tmp_path: Path) -> None:
    assert files.REPO_ROOT == REPO
    assert (files.REPO_ROOT / "pyproject.toml").is_file()
    assert files.repo_path("reports/tables") == REPO / "reports" / "tables"
    assert files.repo_path(tmp_path) == tmp_path


def test_provenance_records_commit_digest_seed_versions_hardware() -> None:
    params = config.load(PARAMS)
    prov = provenance.provenance(params, 7, notebook="01_profiling")
    head = _head()
    if head:
        assert prov["git_commit"] == head
        assert isinstance(prov["git_dirty"], bool)
    assert prov["params_digest"] == params.digest()
    assert prov["profile"] == "smoke"
    assert prov["seed"] == 7
    assert prov["notebook"] == "01_profiling"
    assert {"python", "numpy", "pandas", "torch", "datasets"} <= prov["packages"].keys()
    # set-up installs a lock exactly, so the environment matches one by name and digest (the
    # newest-allowed check is the one unlocked set-up)
    if os.environ.get("ASD_RESOLVE") != "newest":
        assert prov["lock"] in dependencies.LOCKS
    if prov["lock"] is not None:
        assert prov["lock_sha256"] == dependencies.file_digest(REPO / prov["lock"])
    hw = prov["hardware"]
    assert hw["cores"] >= 1 and hw["cores_usable"] >= 1 and isinstance(hw["gpus"], list)
    assert hw["cpu"]
    assert datetime.fromisoformat(prov["created_utc"]).utcoffset() is not None
    json.dumps(prov)  # serialisable as is


def test_params_digest_of_a_dict_matches_and_is_sensitive() -> None:
    params = config.load(PARAMS)
    as_dict = {**params.model_dump(), "stages": params.stages}  # StageConfig objects inside
    assert provenance.params_digest(as_dict) == params.digest()
    assert provenance.params_digest({**as_dict, "seed": 1}) != params.digest()
    subset = config.validate_subset(seed=0, stages=[s.model_dump() for s in params.stages])
    assert provenance.params_digest(subset) == provenance.params_digest(dict(subset))


def test_provenance_tolerates_no_git(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(provenance, "REPO_ROOT", tmp_path)  # not a repository
    prov = provenance.provenance({"seed": 0}, 0)
    assert prov["git_commit"] is None and prov["git_dirty"] is None
    monkeypatch.setenv("PATH", str(tmp_path))  # no git executable at all
    assert provenance.provenance({"seed": 0}, 0)["git_commit"] is None


def test_rewritten_reports_do_not_make_the_tree_dirty(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "t.csv").write_text("a\n1\n")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    monkeypatch.setattr(provenance, "REPO_ROOT", tmp_path)
    assert provenance.provenance({"seed": 0}, 0)["git_dirty"] is False
    (tmp_path / "reports" / "t.csv").write_text("a\n2\n")  # a run rewrote a committed table
    (tmp_path / "reports" / "new.png").write_bytes(b"png")
    assert provenance.provenance({"seed": 0}, 0)["git_dirty"] is False
    (tmp_path / "code.py").write_text("x = 2\n")  # the code is not what was committed
    assert provenance.provenance({"seed": 0}, 0)["git_dirty"] is True


def test_write_table_is_atomic_and_has_a_sidecar(tmp_path: Path) -> None:
    df = pd.DataFrame({"stage": ["a", "b"], "a_s": [0.5, 1.25]})
    prov = provenance.provenance({"seed": 3, "profile": "smoke"}, 3)
    path = provenance.write_table(df, tmp_path / "tables" / "cost.csv", prov)
    assert sorted(p.name for p in path.parent.iterdir()) == ["cost.csv", "cost.csv.provenance.json"]
    pd.testing.assert_frame_equal(pd.read_csv(path), df)
    side = json.loads(provenance.sidecar_path(path).read_text())
    assert side["seed"] == 3
    assert side["params_digest"] == prov["params_digest"]
    assert side["git_commit"] == prov["git_commit"]
    assert side["artifact"] == "cost.csv"
    assert side["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "x.txt"
    files.atomic_write_text(target, "old\n")

    def broken_replace(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        files.atomic_write_text(target, "new\n")
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["x.txt"]


def test_atomic_write_text_creates_folders_and_overwrites(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "c.txt"
    files.atomic_write_text(target, "één\n")
    files.atomic_write_text(target, "two\n")
    assert target.read_text(encoding="utf-8") == "two\n"
    assert [p.name for p in target.parent.iterdir()] == ["c.txt"]


def test_save_figure_writes_png_and_sidecar(tmp_path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    try:
        path = provenance.save_figure(fig, tmp_path / "fig.png", provenance.provenance({}, 11))
    finally:
        plt.close(fig)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fig.png", "fig.png.provenance.json"]
    assert json.loads((tmp_path / "fig.png.provenance.json").read_text())["seed"] == 11


def test_run_log_states_each_stages_measured_speed(tmp_path: Path) -> None:
    from asd_core.reporting import runlog

    assert runlog.stage_speeds(tmp_path / "missing.csv") == []
    csv = tmp_path / "cost_model.csv"
    csv.write_text(
        "stage,a_s,b_s_per_in_token,d_s_per_out_token\ns0,0.1,0.005,0.02\ns1,0.1,0.01,0\n"
    )
    speeds = runlog.stage_speeds(csv)
    assert speeds[0] == {"stage": "s0", "prompt_tok_per_s": 200.0, "decode_tok_per_s": 50.0}
    assert speeds[1]["decode_tok_per_s"] is None  # an unfitted slope is no speed
    record = {
        "profile": "p",
        "environment": {"hardware": {}},
        "stage_speeds": speeds,
        "notebooks": [],
        "total_wall_s": 60.0,
        "total_cpu_hours": 0.0,
        "total_gpu_hours": 0.0,
    }
    assert "decode (prompt): s0 50 (prompt 200), s1 – (prompt 100)" in runlog.markdown(record)


def test_a_resumed_run_keeps_the_earlier_attempts_of_the_same_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from asd_core.reporting import runlog

    env = {"git_commit": "abc", "git_dirty": False, "params_digest": "p1", "hardware": {}}
    monkeypatch.setattr(runlog, "provenance", lambda *a, **k: dict(env))
    params = {"seed": 0, "reports_dir": str(tmp_path / "reports")}

    def usage(name: str, ok: bool, wall: float) -> runlog.NotebookUsage:
        return runlog.NotebookUsage(name, "2026-12-01T00:00:00+00:00", ok=ok, wall_s=wall)

    plan = ["01", "02", "03"]
    runlog.write(tmp_path, "cpu", params, [usage("01", True, 60), usage("02", False, 600)], plan)
    first = json.loads((tmp_path / "run_log.json").read_text())
    assert first["complete"] is False and first["earlier_attempts"] == []
    assert "unfinished" in (tmp_path / "run_log.md").read_text()
    runlog.write(tmp_path, "cpu", params, [usage("02", True, 300), usage("03", True, 30)], plan[1:])
    second = json.loads((tmp_path / "run_log.json").read_text())
    assert second["complete"] is True
    assert [u["notebook"] for u in second["earlier_attempts"]] == ["01", "02"]
    assert second["all_attempts_wall_s"] == 990 and second["total_wall_s"] == 330
    page = (tmp_path / "run_log.md").read_text()
    assert "02 (earlier attempt)" in page and "all attempts together 16.5 min" in page
    # a finished run is not carried into the next one, nor a run of another commit
    runlog.write(tmp_path, "cpu", params, [usage("01", False, 5)], plan)
    assert json.loads((tmp_path / "run_log.json").read_text())["earlier_attempts"] == []
    env["git_commit"] = "def"
    runlog.write(tmp_path, "cpu", params, [usage("01", True, 5)], ["01"])
    assert json.loads((tmp_path / "run_log.json").read_text())["earlier_attempts"] == []


class _FakeNvml:
    """NVML's functions as pynvml exposes them, for two GPUs with fixed readings."""

    def __init__(self) -> None:
        self.shut = False

    def nvmlInit(self) -> None: ...

    def nvmlShutdown(self) -> None:
        self.shut = True

    def nvmlDeviceGetCount(self) -> int:
        return 2

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        return i

    def nvmlDeviceGetUtilizationRates(self, h: int) -> object:
        return types.SimpleNamespace(gpu=40 + 20 * h)

    def nvmlDeviceGetMemoryInfo(self, h: int) -> object:
        return types.SimpleNamespace(used=(h + 1) * 2**30)

    def nvmlDeviceGetPowerUsage(self, h: int) -> int:
        return 100_000 * (h + 1)  # milliwatts


def test_run_log_samples_gpus_through_nvml(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from asd_core.reporting import runlog

    monkeypatch.setattr(runlog, "SAMPLE_S", 0.01)
    monkeypatch.setattr(runlog, "GPU_SERIES_S", 0.0)
    nvml = _FakeNvml()
    with runlog.track("nb", runlog.Gpus(nvml)) as usage:
        time.sleep(0.2)
    assert nvml.shut
    assert usage.gpu_mean_util_pct == [40.0, 60.0]
    assert usage.gpu_peak_memory_gib == [1.0, 2.0]
    assert usage.gpu_hours == pytest.approx(usage.wall_s * 2 / 3600)
    assert 0 < usage.gpu_energy_wh <= 300 * usage.wall_s / 3600
    assert {s["gpu"] for s in usage.gpu_series} == {0, 1} and len(usage.gpu_series) >= 4
    record = {"notebooks": [dataclasses.asdict(usage)]}
    assert any(
        "GPU 1 60% busy, peak 2.0 GiB" in line for line in runlog._gpu_lines(record["notebooks"])
    )


def test_no_nvml_means_no_gpus() -> None:
    from asd_core.reporting import runlog

    class Broken:
        def nvmlInit(self) -> None:
            raise OSError("NVML Shared Library Not Found")

    assert runlog.Gpus(Broken()).read() == []
    with runlog.track("nb", runlog.Gpus(Broken())) as usage:
        pass
    assert usage.gpu_hours == 0 and usage.gpu_series == [] and usage.gpu_mean_util_pct == []
