"""The run log of a profile run: what a paper's reproducibility appendix needs (docs/design.md §12).

``reports/runs/<profile>/run_log.json`` and a readable ``run_log.md``: the environment (package
versions, CPU, memory, GPUs, git commit, the merged parameters), then per notebook its start,
end and wall time, the peak resident memory of the notebook's kernel (sampled), its CPU-hours
and, when GPUs are present, per GPU its utilisation and memory over time, GPU-hours and energy
integrated from the sampled power draw, all read through NVIDIA's management library (NVML,
the ``nvidia-ml-py`` binding; nothing is sampled without it).
Machines of one kind differ by up to 3× in decoding speed, so the log also gives each stage's
measured prompt and decode rates (tokens/s, from notebook 01's cost model) beside the times.

A long run killed part-way resumes where it stopped (notebook 02 keeps its shards). When the
previous log in the folder is of an unfinished run of the same commit, parameters and profile,
its notebooks are kept as ``earlier_attempts``, so the log of the run that finishes accounts
for all its work.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import psutil

from asd_core.ground.files import atomic_write_text, repo_path
from asd_core.ground.provenance import provenance

SAMPLE_S = 0.5  # seconds between memory/power samples
GPU_SERIES_S = 10.0  # seconds between the GPU samples kept in the log (each GPU, over time)


@dataclass
class NotebookUsage:
    """Resources one notebook used."""

    notebook: str  # notebook name, e.g. 02_data_generation
    started_utc: str  # ISO time the run started
    ended_utc: str = ""  # ISO time it ended
    wall_s: float = 0.0  # wall-clock seconds
    ok: bool = False  # finished without error
    peak_rss_gib: float = 0.0  # largest sampled resident memory of this process + children, GiB
    cpu_hours: float = 0.0  # user + system CPU time of this process and its children, hours
    gpu_hours: float = 0.0  # wall time × GPUs visible (0 without GPUs)
    gpu_energy_wh: float = 0.0  # integral of sampled GPU power draw, watt-hours
    gpu_peak_memory_gib: list[float] = field(default_factory=list)  # per GPU, largest sampled
    gpu_mean_util_pct: list[float] = field(default_factory=list)  # per GPU, mean utilisation
    # every GPU_SERIES_S: {"t_s", "gpu", "util_pct", "memory_gib", "power_w"} per GPU
    gpu_series: list[dict[str, float]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # anything unusual (e.g. sampling failed)


def skipped(name: str) -> NotebookUsage:
    """The record of a notebook the runner did not run again: its outputs were complete for
    the same code and parameters (its resources are in the attempt that made them)."""
    now = datetime.now(UTC).isoformat(timespec="seconds")
    note = "complete for this code and these parameters: not run again"
    return NotebookUsage(name, now, now, ok=True, notes=[note])


@dataclass(frozen=True)
class GpuReading:
    """One GPU at one moment."""

    util_pct: float  # busy share of the last sample period, %
    memory_gib: float  # device memory in use, GiB
    power_w: float  # power draw, W


class Gpus:
    """The machine's GPUs through NVML (``pynvml``); no GPUs when it or a driver is missing.

    ``nvml`` injects the module (tests pass a fake with the same functions).
    """

    def __init__(self, nvml: Any = None):
        self.nvml: Any = None
        self.handles: list[Any] = []
        try:
            nvml = nvml if nvml is not None else importlib.import_module("pynvml")
            nvml.nvmlInit()
            self.handles = [
                nvml.nvmlDeviceGetHandleByIndex(i) for i in range(nvml.nvmlDeviceGetCount())
            ]
            self.nvml = nvml
        except Exception:  # no binding, no driver, no device: nothing to sample
            self.handles = []

    def read(self) -> list[GpuReading]:
        """Every GPU's reading now; [] without GPUs or when NVML fails mid-run."""
        if self.nvml is None:
            return []
        try:
            return [
                GpuReading(
                    float(self.nvml.nvmlDeviceGetUtilizationRates(h).gpu),
                    self.nvml.nvmlDeviceGetMemoryInfo(h).used / 2**30,
                    self.nvml.nvmlDeviceGetPowerUsage(h) / 1000.0,  # milliwatts
                )
                for h in self.handles
            ]
        except Exception:
            return []

    def close(self) -> None:
        if self.nvml is not None:
            with contextlib.suppress(Exception):
                self.nvml.nvmlShutdown()
            self.nvml = None


def _tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            continue
    return total


def _cpu_seconds(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return t.user + t.system + t.children_user + t.children_system


@contextmanager
def track(name: str, gpus: Gpus | None = None) -> Iterator[NotebookUsage]:
    """Measure the block (a notebook run) by sampling in a background thread."""
    proc = psutil.Process()
    usage = NotebookUsage(name, datetime.now(UTC).isoformat(timespec="seconds"))
    gpus = gpus if gpus is not None else Gpus()
    stop = threading.Event()
    peak = [0]
    energy = [0.0]
    series: list[dict[str, float]] = []
    gpu_sums: dict[int, list[float]] = {}  # gpu -> [samples, util sum, peak memory]

    def sample() -> None:
        start = last = time.monotonic()
        next_kept = start
        while not stop.wait(SAMPLE_S):
            peak[0] = max(peak[0], _tree_rss(proc))
            now = time.monotonic()
            readings = gpus.read()
            energy[0] += sum(r.power_w for r in readings) * (now - last) / 3600.0
            for i, r in enumerate(readings):
                sums = gpu_sums.setdefault(i, [0.0, 0.0, 0.0])
                sums[0] += 1
                sums[1] += r.util_pct
                sums[2] = max(sums[2], r.memory_gib)
            if readings and now >= next_kept:
                t_s = round(now - start, 1)
                series.extend(
                    {"t_s": t_s, "gpu": i, "util_pct": r.util_pct,
                     "memory_gib": round(r.memory_gib, 3), "power_w": r.power_w}
                    for i, r in enumerate(readings)
                )  # fmt: skip
                next_kept = now + GPU_SERIES_S
            last = now

    cpu0, start = _cpu_seconds(proc), time.monotonic()
    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield usage
        usage.ok = True
    finally:
        stop.set()
        thread.join()
        gpus.close()
        peak[0] = max(peak[0], _tree_rss(proc))
        usage.wall_s = time.monotonic() - start
        usage.ended_utc = datetime.now(UTC).isoformat(timespec="seconds")
        usage.peak_rss_gib = peak[0] / 2**30
        usage.cpu_hours = (_cpu_seconds(proc) - cpu0) / 3600.0
        usage.gpu_hours = usage.wall_s * len(gpu_sums) / 3600.0
        usage.gpu_energy_wh = energy[0]
        usage.gpu_mean_util_pct = [gpu_sums[i][1] / gpu_sums[i][0] for i in sorted(gpu_sums)]
        usage.gpu_peak_memory_gib = [gpu_sums[i][2] for i in sorted(gpu_sums)]
        usage.gpu_series = series


def stage_speeds(cost_model_csv: Path) -> list[dict[str, Any]]:
    """Per stage: prompt and decode tokens/s of one sequence (1/b and 1/d of the cost model
    ĉ = a + b·n_in + d·n_out); empty when notebook 01 has not written the table."""
    if not cost_model_csv.is_file():
        return []
    table = pd.read_csv(cost_model_csv)
    return [
        {
            "stage": str(r.stage),
            "prompt_tok_per_s": 1.0 / r.b_s_per_in_token if r.b_s_per_in_token > 0 else None,
            "decode_tok_per_s": 1.0 / r.d_s_per_out_token if r.d_s_per_out_token > 0 else None,
        }
        for r in table.itertuples()
    ]


def earlier_attempts(
    previous: Mapping[str, Any] | None, env: Mapping[str, Any], profile: str
) -> list[dict[str, Any]]:
    """The notebooks of earlier attempts at this same run: ``previous`` (the folder's last log)
    counts when it did not finish and has this clean commit, parameter digest and profile."""
    if not previous or previous.get("complete", True) or env.get("git_dirty"):
        return []
    before = previous.get("environment", {})
    same = previous.get("profile") == profile and all(
        before.get(key) == env.get(key) for key in ("git_commit", "params_digest")
    )
    if not same:
        return []
    return [*previous.get("earlier_attempts", []), *previous.get("notebooks", [])]


def _read_log(path: Path) -> dict[str, Any] | None:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):  # none yet, or unreadable: start a new account
        return None
    return record if isinstance(record, dict) else None


def write(
    out_dir: Path,
    profile: str,
    params: Mapping[str, Any],
    usages: list[NotebookUsage],
    planned: Sequence[str] | None = None,
) -> Path:
    """Write ``run_log.json`` and ``run_log.md`` into ``out_dir``; returns the JSON path.

    ``planned``: the notebooks the run was asked for; it is ``complete`` when each of them
    ran and succeeded (without ``planned``: when every notebook that ran succeeded).
    """
    env = provenance(params, int(params.get("seed", 0)), command=f"run_all.sh {profile}")
    tables = repo_path(str(params.get("reports_dir", "reports"))) / "tables"
    earlier = earlier_attempts(_read_log(out_dir / "run_log.json"), env, profile)
    done = [u.notebook for u in usages if u.ok]
    complete = all(u.ok for u in usages) if planned is None else done == list(planned)
    record = {
        "profile": profile,
        "environment": env,
        "stage_speeds": stage_speeds(tables / "cost_model.csv"),
        "params": dict(params),
        "notebooks": [asdict(u) for u in usages],
        "complete": complete,
        "earlier_attempts": earlier,
        "total_wall_s": sum(u.wall_s for u in usages),
        "total_cpu_hours": sum(u.cpu_hours for u in usages),
        "total_gpu_hours": sum(u.gpu_hours for u in usages),
        "all_attempts_wall_s": sum(u.wall_s for u in usages) + sum(u["wall_s"] for u in earlier),
    }
    path = out_dir / "run_log.json"
    atomic_write_text(path, json.dumps(record, indent=2, default=str) + "\n")
    atomic_write_text(out_dir / "run_log.md", markdown(record))
    return path


def markdown(record: Mapping[str, Any]) -> str:
    """The run log as a short readable page."""
    env = record["environment"]
    hw = env.get("hardware", {})
    lines = [
        f"# Run log: profile `{record['profile']}`",
        "",
        f"- git commit: `{env.get('git_commit')}`{' (dirty)' if env.get('git_dirty') else ''}",
        f"- params digest: `{env.get('params_digest')}`, seed {env.get('seed')}",
        f"- CPU: {hw.get('cpu')} ({hw.get('cores_usable')} usable cores), RAM "
        f"{(hw.get('ram_bytes') or 0) / 2**30:.1f} GiB, GPUs: {hw.get('gpus') or 'none'}",
        f"- platform: {hw.get('platform')}",
        f"- total wall time {record['total_wall_s'] / 60:.1f} min, "
        f"{record['total_cpu_hours']:.2f} CPU-hours, {record['total_gpu_hours']:.2f} GPU-hours",
        *_speed_lines(record.get("stage_speeds") or []),
        *_attempt_lines(record),
        "",
        "| notebook | start (UTC) | wall | peak RSS GiB | CPU-hours | GPU-hours | GPU energy Wh | ok |",
        "|---|---|---|---|---|---|---|---|",
    ]
    rows = [(u, " (earlier attempt)") for u in record.get("earlier_attempts") or []]
    for u, note in [*rows, *((u, "") for u in record["notebooks"])]:
        lines.append(
            f"| {u['notebook']}{note} | {u['started_utc']} | {u['wall_s'] / 60:.1f} min | "
            f"{u['peak_rss_gib']:.2f} | {u['cpu_hours']:.3f} | {u['gpu_hours']:.3f} | "
            f"{u['gpu_energy_wh']:.1f} | {'yes' if u['ok'] else 'FAILED'} |"
        )
    lines += _gpu_lines([u for u, _ in rows] + list(record["notebooks"]))
    pk = env.get("packages", {})
    lines += ["", "Packages: " + ", ".join(f"{k} {v}" for k, v in sorted(pk.items())), ""]
    return "\n".join(lines)


def _gpu_lines(usages: Sequence[Mapping[str, Any]]) -> list[str]:
    """Per notebook that saw GPUs: each GPU's mean utilisation and peak memory."""
    lines = []
    for u in usages:
        utils, peaks = u.get("gpu_mean_util_pct") or [], u.get("gpu_peak_memory_gib") or []
        if utils:
            gpus = ", ".join(
                f"GPU {i} {util:.0f}% busy, peak {mem:.1f} GiB"
                for i, (util, mem) in enumerate(zip(utils, peaks, strict=True))
            )
            lines.append(f"- {u['notebook']}: {gpus} (over time: `gpu_series` in run_log.json)")
    return ["", *lines] if lines else []


def _speed_lines(speeds: list[Mapping[str, Any]]) -> list[str]:
    def rate(x: float | None) -> str:
        return "–" if x is None else f"{x:.0f}"

    if not speeds:
        return []
    parts = [
        f"{s['stage']} {rate(s['decode_tok_per_s'])} (prompt {rate(s['prompt_tok_per_s'])})"
        for s in speeds
    ]
    return ["- measured tok/s, one sequence, decode (prompt): " + ", ".join(parts)]


def _attempt_lines(record: Mapping[str, Any]) -> list[str]:
    earlier = record.get("earlier_attempts") or []
    lines = (
        [] if record.get("complete", True) else ["- **unfinished**: resume with the same command"]
    )
    if earlier:
        lines.append(
            f"- resumed: {len(earlier)} notebook run(s) of earlier attempts at this commit and "
            f"these parameters, {sum(u['wall_s'] for u in earlier) / 60:.1f} min; all attempts "
            f"together {record.get('all_attempts_wall_s', 0.0) / 60:.1f} min"
        )
    return lines
