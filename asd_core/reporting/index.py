"""A static index page of every report: ``python -m asd_core.reporting.index --reports reports``.

It lists, for ``<reports>/`` itself and for every ``<reports>/runs/<profile>/``, the executed
notebooks (their HTML export), every table (CSV / HTML / Parquet links, the headline table
inlined) and every figure (shown inline), each with its provenance read from the
``.provenance.json`` sidecar: git commit, parameter digest, profile, seed and creation time, and
whether the sidecar still matches the file (its sha256). The page is plain HTML with inline CSS
and relative links only, so it works from a clone, a file:// URL or any static server.
"""

from __future__ import annotations

import argparse
import hashlib
import html
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from asd_core.ground.errors import AsdError, cli_entry
from asd_core.ground.files import atomic_write_text
from asd_core.ground.provenance import sidecar_path

FIGURE_SUFFIXES = (".png", ".svg", ".jpg", ".jpeg")
TABLE_SUFFIXES = (".csv", ".html", ".parquet")  # one row per stem, a link per format
HEADLINE_STEM = "05_headline"  # inlined at the top of its folder's section


class ReportIndexError(AsdError):
    """A reports folder that cannot be indexed."""


@dataclass(frozen=True)
class Provenance:
    """What a sidecar says about one artifact (every field None when there is no sidecar)."""

    commit: str | None = None  # git commit the artifact was made from
    dirty: bool | None = None  # whether the work tree had uncommitted changes
    params_digest: str | None = None  # hash of the parameters used
    profile: str | None = None  # params profile
    seed: int | None = None  # master seed
    created: str | None = None  # UTC timestamp, ISO 8601
    notebook: str | None = None  # notebook that wrote it, when recorded
    found: bool = False  # a sidecar exists and parses
    stale: bool = False  # the sidecar's sha256 differs from the file's


@dataclass(frozen=True)
class Artifact:
    """One figure, one table (all formats of a stem), or one executed notebook."""

    name: str  # file stem, e.g. "05_pareto"
    files: dict[str, Path]  # suffix (".csv", ".html", …) -> file
    provenance: Provenance  # of the first file with a sidecar
    executed: str | None = None  # notebooks: papermill's end time and duration


@dataclass
class Section:
    """The artifacts of one folder: ``<reports>/`` or ``<reports>/runs/<profile>/``."""

    title: str  # heading shown on the page
    folder: Path  # where the artifacts live
    notebooks: list[Artifact] = field(default_factory=list)
    tables: list[Artifact] = field(default_factory=list)
    figures: list[Artifact] = field(default_factory=list)
    headline: str | None = None  # the <table> element of the headline table, when present

    @property
    def empty(self) -> bool:
        return not (self.notebooks or self.tables or self.figures)


def read_provenance(path: Path) -> Provenance:
    """The provenance sidecar of ``path``; ``found`` is False when absent or unreadable."""
    side = sidecar_path(path)
    try:
        record: dict[str, Any] = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return Provenance()
    if not isinstance(record, dict):
        return Provenance()
    digest = record.get("sha256")
    if digest:
        with path.open("rb") as fh:  # chunked: result tables can be large
            stale = digest != hashlib.file_digest(fh, "sha256").hexdigest()
    else:
        stale = False
    return Provenance(
        commit=record.get("git_commit"),
        dirty=record.get("git_dirty"),
        params_digest=record.get("params_digest"),
        profile=record.get("profile"),
        seed=record.get("seed"),
        created=record.get("created_utc"),
        notebook=record.get("notebook"),
        found=True,
        stale=stale,
    )


def _grouped(folder: Path, suffixes: Sequence[str]) -> dict[str, dict[str, Path]]:
    """Files of ``folder`` with one of ``suffixes`` grouped by stem (hidden files skipped)."""
    groups: dict[str, dict[str, Path]] = {}
    if not folder.is_dir():
        return groups
    for path in sorted(folder.iterdir()):
        if path.is_file() and not path.name.startswith(".") and path.suffix.lower() in suffixes:
            groups.setdefault(path.stem, {})[path.suffix.lower()] = path
    return groups


def _artifact(name: str, files: dict[str, Path], order: Sequence[str]) -> Artifact:
    prov = Provenance()
    for suffix in order:
        if suffix in files:
            prov = read_provenance(files[suffix])
            if prov.found:
                break
    return Artifact(name, dict(sorted(files.items(), key=lambda kv: order.index(kv[0]))), prov)


def _papermill(notebook: Path) -> tuple[str | None, dict[str, Any]]:
    """Papermill's record of an executed notebook: "end time (duration)" and its parameters."""
    try:
        meta = json.loads(notebook.read_text(encoding="utf-8")).get("metadata", {})
    except (OSError, ValueError):
        return None, {}
    pm = meta.get("papermill", {}) if isinstance(meta, dict) else {}
    end, duration = pm.get("end_time"), pm.get("duration")
    when = None
    if end:
        when = str(end)[:19].replace("T", " ") + " UTC"
        if isinstance(duration, (int, float)):
            when += f" ({duration:.0f} s)"
    return when, pm.get("parameters", {}) or {}


def collect(folder: Path, title: str) -> Section:
    """Everything indexable in one folder: ``*.html`` notebooks, ``tables/``, ``figures/``.

    Executed notebooks have no sidecar; :func:`attach_notebook_provenance` fills theirs in.
    """
    section = Section(title, folder)
    for name, files in _grouped(folder / "tables", TABLE_SUFFIXES).items():
        section.tables.append(_artifact(name, files, TABLE_SUFFIXES))
        if name == HEADLINE_STEM and ".html" in files:
            match = re.search(
                r"<table\b.*?</table>", files[".html"].read_text("utf-8"), re.S | re.I
            )
            section.headline = match.group(0) if match else None
    for name, files in _grouped(folder / "figures", FIGURE_SUFFIXES).items():
        section.figures.append(_artifact(name, files, FIGURE_SUFFIXES))
    for name, files in _grouped(folder, (".html", ".ipynb")).items():
        if ".html" not in files or name == "index":
            continue
        executed, params = _papermill(files[".ipynb"]) if ".ipynb" in files else (None, {})
        prov = Provenance(profile=params.get("profile"), notebook=name)
        section.notebooks.append(Artifact(name, files, prov, executed))
    return section


def attach_notebook_provenance(sections: Sequence[Section]) -> None:
    """Give each executed notebook the provenance of the artifacts it wrote.

    A notebook's tables and figures record ``notebook`` and ``profile`` in their sidecars; they
    may live in another section (the cpu profile writes to ``reports/`` but runs into
    ``reports/runs/cpu/``), so every section is searched, the notebook's own first.
    """
    written: dict[tuple[str, str | None], Provenance] = {}
    for section in sections:
        for art in section.tables + section.figures:
            p = art.provenance
            if p.found and p.notebook:
                written.setdefault((p.notebook, p.profile), p)
    for section in sections:
        own = {
            (a.provenance.notebook, a.provenance.profile): a.provenance
            for a in section.tables + section.figures
            if a.provenance.found and a.provenance.notebook
        }
        for i, nb in enumerate(section.notebooks):
            key = (nb.name, nb.provenance.profile)
            found = own.get(key) or written.get(key)
            if found is not None:
                section.notebooks[i] = Artifact(nb.name, nb.files, found, nb.executed)


def _href(target: Path, page_dir: Path) -> str:
    return quote(Path(os.path.relpath(target, page_dir)).as_posix())


def _provenance_html(p: Provenance) -> str:
    if not p.found:
        extra = f" · profile {html.escape(str(p.profile))}" if p.profile else ""
        what = "no artifact of it has provenance" if p.notebook else "no provenance sidecar"
        return f'<span class="warn">{what}</span>{extra}'
    parts = []
    if p.commit:
        commit = html.escape(str(p.commit)[:10])
        parts.append(f"commit <code>{commit}</code>" + (" (dirty)" if p.dirty else ""))
    if p.params_digest:
        parts.append(f"params <code>{html.escape(str(p.params_digest))}</code>")
    if p.profile:
        parts.append(f"profile {html.escape(str(p.profile))}")
    if p.seed is not None:
        parts.append(f"seed {html.escape(str(p.seed))}")
    if p.created:
        parts.append(html.escape(str(p.created).replace("T", " ").replace("+00:00", " UTC")))
    text = " · ".join(parts) or "sidecar without details"
    if p.stale:
        text += ' · <span class="warn">stale: the file changed after its sidecar</span>'
    return text


def _links(files: dict[str, Path], page_dir: Path) -> str:
    return " ".join(
        f'<a href="{_href(path, page_dir)}">{html.escape(suffix.lstrip(".").upper())}</a>'
        for suffix, path in files.items()
    )


def _section_html(section: Section, anchor: str, page_dir: Path) -> str:
    out = [f'<section id="{anchor}">', f"<h2>{html.escape(section.title)}</h2>"]
    rel = _href(section.folder, page_dir)
    out.append(f'<p class="where">folder <a href="{rel}/">{html.escape(rel)}/</a></p>')
    if section.headline:
        out.append('<h3>Headline</h3><div class="scroll headline">')
        out.append(section.headline)
        out.append("</div>")
    if section.notebooks:
        out.append("<h3>Executed notebooks</h3><table><thead><tr>")
        out.append("<th>notebook</th><th>files</th><th>executed</th><th>provenance</th>")
        out.append("</tr></thead><tbody>")
        for nb in section.notebooks:
            out.append(
                f'<tr><td><a href="{_href(nb.files[".html"], page_dir)}">{html.escape(nb.name)}</a></td>'
                f"<td>{_links(nb.files, page_dir)}</td><td>{html.escape(nb.executed or '—')}</td>"
                f"<td>{_provenance_html(nb.provenance)}</td></tr>"
            )
        out.append("</tbody></table>")
    if section.tables:
        out.append("<h3>Tables</h3><table><thead><tr>")
        out.append("<th>table</th><th>files</th><th>provenance</th></tr></thead><tbody>")
        for t in section.tables:
            out.append(
                f"<tr><td>{html.escape(t.name)}</td><td>{_links(t.files, page_dir)}</td>"
                f"<td>{_provenance_html(t.provenance)}</td></tr>"
            )
        out.append("</tbody></table>")
    if section.figures:
        out.append('<h3>Figures</h3><div class="figures">')
        for f in section.figures:
            path = next(iter(f.files.values()))
            src = _href(path, page_dir)
            out.append(
                f'<figure><a href="{src}"><img src="{src}" alt="{html.escape(f.name)}"></a>'
                f"<figcaption><b>{html.escape(f.name)}</b><br>{_provenance_html(f.provenance)}"
                "</figcaption></figure>"
            )
        out.append("</div>")
    out.append("</section>")
    return "\n".join(out)


_CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #222;
       max-width: 1500px; margin: 1.5em auto; padding: 0 1.2em; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; } h2 { border-bottom: 2px solid #ddd; padding-top: 0.6em; }
h3 { margin: 1.2em 0 0.4em; } code { font-size: 0.92em; }
nav a { margin-right: 1em; } .where, .muted { color: #666; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; margin: 0.3em 0; }
th, td { padding: 3px 9px; border-bottom: 1px solid #e3e3e3; text-align: left; vertical-align: top; }
th { background: #f4f4f4; } .scroll { overflow-x: auto; } .headline td { white-space: nowrap; }
.figures { display: grid; grid-template-columns: repeat(auto-fill, minmax(460px, 1fr)); gap: 18px; }
figure { margin: 0; border: 1px solid #e3e3e3; padding: 8px; background: #fff; }
figure img { width: 100%; height: auto; display: block; }
figcaption { font-size: 0.86em; color: #444; margin-top: 6px; }
.warn { color: #a40; font-weight: 600; }
"""


def render(sections: Sequence[Section], page_dir: Path, generated: str) -> str:
    """The index page for ``sections`` with links relative to ``page_dir``."""
    shown = [s for s in sections if not s.empty]
    nav = " ".join(f'<a href="#s{i}">{html.escape(s.title)}</a>' for i, s in enumerate(shown))
    body = [_section_html(s, f"s{i}", page_dir) for i, s in enumerate(shown)]
    if not shown:
        body = [
            '<p class="muted">No figures, tables or executed notebooks yet: run '
            "<code>./run_all.sh smoke</code> (or cpu, paper).</p>"
        ]
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>asd reports</title><style>{_CSS}</style></head>\n<body>\n"
        "<h1>Adaptive speculative decoding: reports</h1>\n"
        f'<p class="muted">Generated {html.escape(generated)}. Every artifact shows the provenance '
        "recorded in its sidecar (git commit, parameter digest, profile, seed, creation time).</p>\n"
        f"<nav>{nav}</nav>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def build_index(
    reports_dir: str | os.PathLike[str],
    runs_dir: str | os.PathLike[str] | None = None,
    out: str | os.PathLike[str] | None = None,
) -> Path:
    """Write the index page (default ``<reports_dir>/index.html``) atomically; return its path.

    Sections: ``reports_dir`` itself (its ``tables/``, ``figures/``), then each profile folder of
    ``runs_dir`` (default ``<reports_dir>/runs``; its executed notebooks, ``tables/``,
    ``figures/``). A missing ``reports_dir``, or a ``runs_dir`` given but missing, is an error.
    """
    if not Path(reports_dir).is_dir():
        raise ReportIndexError(f"reports folder '{reports_dir}' not found")
    if runs_dir is not None and not Path(runs_dir).is_dir():
        raise ReportIndexError(f"runs folder '{runs_dir}' not found")
    # Resolved paths on both sides, so relative links do not depend on the working directory.
    reports = Path(reports_dir).resolve()
    runs = Path(runs_dir).resolve() if runs_dir is not None else reports / "runs"
    page = (Path(out) if out is not None else reports / "index.html").resolve()
    sections = [collect(reports, f"{reports.name}/ (the default reports folder)")]
    if runs.is_dir():
        for folder in sorted(
            p for p in runs.iterdir() if p.is_dir() and not p.name.startswith(".")
        ):
            sections.append(collect(folder, f"Profile '{folder.name}'"))
    attach_notebook_provenance(sections)
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return atomic_write_text(page, render(sections, page.parent, generated))


@cli_entry
def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m asd_core.reporting.index", description=__doc__)
    parser.add_argument("--reports", default="reports", help="reports folder (default: reports)")
    parser.add_argument(
        "--runs", default=None, help="executed runs folder (default: <reports>/runs)"
    )
    parser.add_argument("--out", default=None, help="page to write (default: <reports>/index.html)")
    args = parser.parse_args(argv)
    page = build_index(args.reports, args.runs, args.out)
    print(f"wrote {page}")


if __name__ == "__main__":
    main()
