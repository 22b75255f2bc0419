"""Run the numbered notebooks headless under papermill with layered parameters.

``python -m asd_core.reporting.notebooks --profile cpu 01_profiling`` does what
``papermill notebooks/01_profiling.ipynb reports/runs/cpu/01_profiling.ipynb --cwd notebooks
-f params/base.yaml -f params/cpu.yaml`` does, after validating the parameters, and then exports
the executed notebook to HTML next to it. An executed copy replaces the previous one only when
the run succeeds; a failed run is kept as ``<name>.failed.ipynb`` and the failing cell is named.

While a notebook runs, the log lines its library code writes (progress per shard, per fold ×
seed, …) are passed on to this process's stderr, one timestamped line each, without the progress
bars' carriage returns, so a console and a log file both read well.

Run again, the runner skips a notebook whose executed copy is complete for the same code (every
module of ``asd_core``), notebook and parameters, until one notebook has to run: everything
after it runs too, since it reads what the earlier ones wrote. ``--rerun`` runs them all.

Results of the profiles whose reports are committed come from a clean commit: the runner refuses
such a run when the code outside ``reports/`` has uncommitted changes, unless
``ASD_ALLOW_DIRTY=1``, which it then says loudly and the run log records.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from asd_core.ground import config
from asd_core.ground.errors import AsdError, cli_entry
from asd_core.ground.files import atomic_write_text
from asd_core.reporting import runlog

log = logging.getLogger("asd_core.reporting.notebooks")  # also when run as __main__

REPO = Path(__file__).resolve().parents[2]
STATE = ".complete.json"  # per notebook: the digest of the code and parameters of its copy
SCRATCH_PROFILES = frozenset({"smoke"})  # profiles whose reports are never committed


def export_html(notebook: Path, html: Path) -> Path:
    """Write ``notebook`` as a standalone HTML page (figures embedded), atomically."""
    import nbformat
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter().from_notebook_node(nbformat.read(notebook, as_version=4))
    return atomic_write_text(html, body)


class LogLines:
    """A file-like sink for a kernel's stderr that passes on the log records (the notebooks'
    ``logs.NOTEBOOK_FORMAT``: ``HH:MM:SS logger: message``) and drops the rest, the progress
    bars' carriage-return redraws included, which arrive glued to the records."""

    RECORD = re.compile(r"\d\d:\d\d:\d\d [\w.]+: [^\r\n]*")

    def __init__(self, out: TextIO):
        self.out = out
        self.pending = ""

    def write(self, text: str) -> int:
        self.pending += text
        *lines, self.pending = self.pending.split("\n")
        for line in lines:
            for record in self.RECORD.findall(line):
                self.out.write(record + "\n")
        return len(text)

    def flush(self) -> None:
        self.out.flush()


def code_digest(name: str, merged: dict[str, Any], notebooks_dir: Path) -> str:
    """What a notebook's outputs depend on: its source, the parameters and every core module."""
    digest = hashlib.sha256()
    digest.update((notebooks_dir / f"{name}.ipynb").read_bytes())
    digest.update(json.dumps(merged, sort_keys=True, default=str).encode())
    for path in sorted((REPO / "asd_core").rglob("*.py")):
        digest.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def _read_state(out_dir: Path) -> dict[str, str]:
    try:
        state = json.loads((out_dir / STATE).read_text())
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def run_notebook(
    name: str, param_files: Sequence[Path], out_dir: Path, notebooks_dir: Path = REPO / "notebooks"
) -> Path:
    """Execute ``<notebooks_dir>/<name>.ipynb`` with the merged parameters; return the executed copy."""
    import papermill as pm

    source = notebooks_dir / f"{name}.ipynb"
    if not source.is_file():
        raise AsdError(f"{source}: notebook not found")
    merged, origin = config.merge_files(param_files)
    config.validate(merged, origin)
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / f"{name}.ipynb"
    partial = out_dir / f".{name}.running.ipynb"
    start = time.perf_counter()
    log.info("[runner] %s: papermill -f %s", name, " -f ".join(map(str, param_files)))
    # only what the notebook declares: papermill would inject (and warn about) every other key
    declared = set(pm.inspect_notebook(str(source)))
    try:
        pm.execute_notebook(
            str(source),
            str(partial),
            parameters={k: v for k, v in merged.items() if k in declared},
            cwd=str(source.parent),
            kernel_name="python3",
            progress_bar=sys.stderr.isatty(),
            stderr_file=LogLines(sys.stderr),
        )
    except pm.PapermillExecutionError as err:
        failed = out_dir / f"{name}.failed.ipynb"
        os.replace(partial, failed)
        raise AsdError(
            f"notebook {name} failed in cell {err.cell_index} (execution count {err.exec_count}): "
            f"{err.ename}: {err.evalue}; executed copy kept at {failed}"
        ) from None
    os.replace(partial, final)
    html = export_html(final, final.with_suffix(".html"))
    state = _read_state(out_dir)
    state[name] = code_digest(name, merged, notebooks_dir)
    atomic_write_text(out_dir / STATE, json.dumps(state, indent=2) + "\n")
    log.info(
        "[runner] %s: done in %.0f s -> %s, %s", name, time.perf_counter() - start, final, html
    )
    return final


def is_complete(
    name: str, param_files: Sequence[Path], out_dir: Path, notebooks_dir: Path = REPO / "notebooks"
) -> bool:
    """Whether ``name``'s executed copy is there and was made by this code and these parameters."""
    merged, _ = config.merge_files(param_files)
    done = (out_dir / f"{name}.ipynb").is_file()
    return done and _read_state(out_dir).get(name) == code_digest(name, merged, notebooks_dir)


def dirty_files() -> list[str]:
    """Files outside ``reports/`` with uncommitted changes ([] outside a git checkout)."""
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--", ".", ":(exclude)reports"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line[3:] for line in out.splitlines() if line.strip()]


def check_clean(profile: str) -> None:
    """Refuse a run of a committed profile from a dirty tree, unless ASD_ALLOW_DIRTY=1."""
    if profile in SCRATCH_PROFILES:
        return
    changed = dirty_files()
    if not changed:
        return
    shown = ", ".join(changed[:3]) + (f" and {len(changed) - 3} more" if len(changed) > 3 else "")
    if os.environ.get("ASD_ALLOW_DIRTY") == "1":
        log.warning(
            "[runner] WARNING: the tree is dirty (%s): these %s results do not come from a "
            "commit anyone can check out, and the run log says so",
            shown,
            profile,
        )
        return
    raise AsdError(
        f"profile '{profile}': uncommitted changes outside reports/ ({shown}); its results are "
        "committed, so they must come from a clean commit: commit first, or set "
        "ASD_ALLOW_DIRTY=1 to run anyway"
    )


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@cli_entry
def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m asd_core.reporting.notebooks", description=__doc__
    )
    parser.add_argument("--profile", required=True, help="params/<profile>.yaml is layered on base")
    parser.add_argument("--rerun", action="store_true", help="run notebooks that are complete too")
    parser.add_argument("notebooks", nargs="+", help="notebook names, e.g. 01_profiling")
    args = parser.parse_args(argv)
    files = [REPO / "params" / "base.yaml", REPO / "params" / f"{args.profile}.yaml"]
    out_dir = REPO / "reports" / "runs" / args.profile
    merged, origin = config.merge_files(files)
    params = config.validate(merged, origin).model_dump(mode="json")
    check_clean(args.profile)
    usages: list[runlog.NotebookUsage] = []
    # a kill (SIGTERM) unwinds like Ctrl-C, so the log below still records what ran
    signal.signal(signal.SIGTERM, _interrupt)
    must_run = args.rerun
    try:
        for name in args.notebooks:
            if not must_run and is_complete(name, files, out_dir):
                log.info("[runner] %s: complete for this code and these parameters, skipped", name)
                usages.append(runlog.skipped(name))
                continue
            must_run = True  # later notebooks read what this one writes
            with runlog.track(name) as usage:
                usages.append(usage)
                run_notebook(name, files, out_dir)
    finally:  # a failed run still logs what ran, up to the failure
        path = runlog.write(out_dir, args.profile, params, usages, args.notebooks)
        log.info("[runner] run log: %s and %s", path, path.with_suffix(".md"))


if __name__ == "__main__":
    main()
