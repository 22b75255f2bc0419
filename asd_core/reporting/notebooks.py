"""Run the numbered notebooks headless under papermill with layered parameters.

``python -m asd_core.reporting.notebooks --profile cpu 01_profiling`` does what
``papermill notebooks/01_profiling.ipynb reports/runs/cpu/01_profiling.ipynb --cwd notebooks
-f params/base.yaml -f params/cpu.yaml`` does, after validating the parameters, and then exports
the executed notebook to HTML next to it. An executed copy replaces the previous one only when
the run succeeds; a failed run is kept as ``<name>.failed.ipynb`` and the failing cell is named.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from asd_core.ground import config
from asd_core.ground.errors import AsdError, cli_entry
from asd_core.ground.files import atomic_write_text
from asd_core.reporting import runlog

REPO = Path(__file__).resolve().parents[2]


def export_html(notebook: Path, html: Path) -> Path:
    """Write ``notebook`` as a standalone HTML page (figures embedded), atomically."""
    import nbformat
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter().from_notebook_node(nbformat.read(notebook, as_version=4))
    return atomic_write_text(html, body)


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
    print(f"[runner] {name}: papermill -f {' -f '.join(map(str, param_files))}", flush=True)
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
    print(
        f"[runner] {name}: done in {time.perf_counter() - start:.0f} s -> {final}, {html}",
        flush=True,
    )
    return final


@cli_entry
def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m asd_core.reporting.notebooks", description=__doc__
    )
    parser.add_argument("--profile", required=True, help="params/<profile>.yaml is layered on base")
    parser.add_argument("notebooks", nargs="+", help="notebook names, e.g. 01_profiling")
    args = parser.parse_args(argv)
    files = [REPO / "params" / "base.yaml", REPO / "params" / f"{args.profile}.yaml"]
    out_dir = REPO / "reports" / "runs" / args.profile
    merged, origin = config.merge_files(files)
    params = config.validate(merged, origin).model_dump(mode="json")
    usages: list[runlog.NotebookUsage] = []
    # a kill (SIGTERM) unwinds like Ctrl-C, so the log below still records what ran
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        for name in args.notebooks:
            with runlog.track(name) as usage:
                usages.append(usage)
                run_notebook(name, files, out_dir)
    finally:  # a failed run still logs what ran, up to the failure
        log = runlog.write(out_dir, args.profile, params, usages, args.notebooks)
        print(f"[runner] run log: {log} and {log.with_suffix('.md')}", flush=True)


if __name__ == "__main__":
    main()
