"""The static report index (asd_core.reporting.index) and its headless-browser check
(benchmarks.browser_check)."""

from __future__ import annotations

import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import nbformat  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from asd_core.analysis.tables import write_csv_and_html  # noqa: E402
from asd_core.ground.errors import AsdError  # noqa: E402
from asd_core.ground.files import atomic_write_text  # noqa: E402
from asd_core.ground.provenance import save_figure, write_table
from asd_core.reporting import index
from benchmarks import browser_check  # noqa: E402

PROV = {
    "git_commit": "0123456789abcdef0123",
    "git_dirty": False,
    "params_digest": "feedbeef12345678",
    "profile": "smoke",
    "seed": 3,
    "created_utc": "2026-01-02T03:04:05+00:00",
}


class _Links(HTMLParser):
    """Every href and img src of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []
        self.imgs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "a" and a.get("href") and not str(a["href"]).startswith("#"):
            self.hrefs.append(str(a["href"]))
        if tag == "img" and a.get("src"):
            self.imgs.append(str(a["src"]))


def _links(page: Path) -> _Links:
    parser = _Links()
    parser.feed(page.read_text())
    return parser


def _figure(path: Path, prov: dict) -> None:
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.plot([0, 1], [0, 1])
    save_figure(fig, path, prov, dpi=60)
    plt.close(fig)


def _executed_notebook(path: Path, profile: str) -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("x = 1")]
    nb.metadata["papermill"] = {
        "end_time": "2026-01-02T04:00:00.123456",
        "duration": 12.3,
        "parameters": {"profile": profile},
    }
    nbformat.write(nb, path)
    atomic_write_text(
        path.with_suffix(".html"),
        "<!doctype html><html><head><title>nb</title></head><body><table><tr><td>1</td></tr></table></body></html>",
    )


@pytest.fixture()
def reports(tmp_path: Path) -> Path:
    """reports/ with a committed figure and table, and runs/smoke/ with a notebook, its table,
    a headline table, a figure without sidecar and a stale one."""
    root = tmp_path / "my reports"  # a space: links must be URL-quoted
    _figure(
        root / "figures" / "01_latency_fit.png",
        PROV | {"profile": "cpu", "notebook": "01_profiling"},
    )
    write_table(
        pd.DataFrame({"a": [1, 2]}),
        root / "tables" / "cost_model.csv",
        PROV | {"profile": "cpu", "notebook": "01_profiling"},
    )
    run = root / "runs" / "smoke"
    run.mkdir(parents=True)
    _executed_notebook(run / "05_analysis.ipynb", "smoke")
    _executed_notebook(root / "runs" / "smoke" / "01_profiling.ipynb", "smoke")
    head = pd.DataFrame(
        {"dataset": ["mmlu"], "speedup": [1.5], "speedup_low": [1.2], "speedup_high": [1.9]}
    )
    write_csv_and_html(
        head, run / "tables" / "05_headline", PROV | {"notebook": "05_analysis"}, title="Headline"
    )
    _figure(run / "figures" / "05_pareto.png", PROV | {"notebook": "05_analysis"})
    _figure(run / "figures" / "orphan.png", PROV)
    (run / "figures" / "orphan.png.provenance.json").unlink()
    _figure(run / "figures" / "stale.png", PROV)
    with open(run / "figures" / "stale.png", "ab") as fh:  # changed after its sidecar was written
        fh.write(b"\0")
    (run / "figures" / ".hidden.png").write_bytes(b"")
    return root


def test_index_links_every_artifact_relatively(reports: Path) -> None:
    page = index.build_index(reports)
    assert page == (reports / "index.html").resolve()
    links = _links(page)
    targets = {unquote(h) for h in links.hrefs} | {unquote(s) for s in links.imgs}
    for rel in (
        "figures/01_latency_fit.png",
        "tables/cost_model.csv",
        "runs/smoke/05_analysis.html",
        "runs/smoke/05_analysis.ipynb",
        "runs/smoke/tables/05_headline.csv",
        "runs/smoke/tables/05_headline.html",
        "runs/smoke/figures/05_pareto.png",
        "runs/smoke/figures/orphan.png",
    ):
        assert rel in targets, rel
    for link in links.hrefs + links.imgs:
        assert not link.startswith(("/", "file:", "http")), link  # relative only
        assert (page.parent / unquote(link)).exists(), link
    assert " " not in "".join(links.hrefs + links.imgs)  # "my reports" is quoted as %20
    assert set(map(unquote, links.imgs)) == {
        "figures/01_latency_fit.png",
        "runs/smoke/figures/05_pareto.png",
        "runs/smoke/figures/orphan.png",
        "runs/smoke/figures/stale.png",
    }  # every figure inline, hidden files skipped
    text = page.read_text()
    assert "<script" not in text and "http://" not in text and "https://" not in text


def test_index_shows_provenance_and_inlines_the_headline(reports: Path) -> None:
    text = index.build_index(reports).read_text()
    assert "commit <code>0123456789</code>" in text
    assert "params <code>feedbeef12345678</code>" in text
    assert "profile smoke" in text and "profile cpu" in text
    assert "2026-01-02 03:04:05 UTC" in text
    assert "no provenance sidecar" in text  # orphan.png
    assert "stale: the file changed after its sidecar" in text  # stale.png
    assert text.count("stale:") == 1
    # the headline table is inlined in its section, with its CI text
    assert re.search(r"<h3>Headline</h3><div[^>]*>\s*<table", text)
    assert "1.50× [1.20×, 1.90×]" in text
    # executed notebooks: papermill's time, and the provenance of the artifacts they wrote
    row = re.search(r"<tr><td><a href=\"runs/smoke/05_analysis.html\">.*?</tr>", text, re.S)
    assert row and "2026-01-02 04:00:00 UTC (12 s)" in row.group(0)
    assert "feedbeef12345678" in row.group(0)
    row01 = re.search(r"<tr><td><a href=\"runs/smoke/01_profiling.html\">.*?</tr>", text, re.S)
    # 01's artifacts are from the cpu profile, not this smoke run: not borrowed
    assert row01 and "no artifact of it has provenance" in row01.group(0)


def test_index_to_another_place_and_cli(reports: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "site" / "index.html"
    index.main(["--reports", str(reports), "--out", str(out)])
    assert f"wrote {out.resolve()}" in capsys.readouterr().out
    for link in _links(out).imgs:
        assert (out.parent / unquote(link)).is_file()
        assert unquote(link).startswith("../my reports/")


def test_missing_folder_is_one_clear_error(tmp_path: Path, capsys) -> None:
    with pytest.raises(index.ReportIndexError, match=r"^reports folder '.*nope' not found$"):
        index.build_index(tmp_path / "nope")
    with pytest.raises(AsdError, match="runs folder"):
        index.build_index(tmp_path, runs_dir=tmp_path / "absent")
    with pytest.raises(SystemExit) as exit_info:
        index.main(["--reports", str(tmp_path / "nope")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "reports folder" in err[0]


def test_empty_reports_folder_gives_a_page_that_says_so(tmp_path: Path) -> None:
    text = index.build_index(tmp_path).read_text()
    assert "No figures, tables or executed notebooks yet" in text


def test_index_is_written_atomically(reports: Path, monkeypatch) -> None:
    page = index.build_index(reports)
    before = page.read_text()

    def boom(*_a, **_k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(index, "render", boom)
    with pytest.raises(RuntimeError):
        index.build_index(reports)
    assert page.read_text() == before
    assert not [p for p in page.parent.iterdir() if p.name.startswith(".index.html")]


def test_probe_is_injected_with_a_base_at_the_page_folder(tmp_path: Path) -> None:
    page = tmp_path / "p.html"
    page.write_text("<html><head><title>t</title></head><body><img src='a.png'></body></html>")
    text = browser_check._instrumented(page)
    assert f'<head><base href="{tmp_path.resolve().as_uri()}/">' in text
    assert text.index("asd-browser-check") < text.index("</body>")


def test_browser_check_without_chromium_is_one_clear_error(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("ASD_CHROMIUM", raising=False)
    with pytest.raises(browser_check.BrowserCheckError, match="chromium not found"):
        browser_check.find_chromium()


def test_problems_name_broken_images_and_missing_tables() -> None:
    check = browser_check.PageCheck(Path("x.html"), 3, ("figures/a.png",), 0, None)
    assert browser_check.problems(check) == [
        "1 of 3 images did not load (figures/a.png)",
        "0 tables, expected at least 1",
    ]
    good = browser_check.PageCheck(Path("x.html"), 3, (), 2, None)
    assert browser_check.problems(good) == []


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed")
def test_index_renders_in_headless_chromium(reports: Path, tmp_path: Path, capsys) -> None:
    page = index.build_index(reports)
    shots = tmp_path / "shots"
    check = browser_check.check_page(page, shots)
    assert check.ok and check.images == 4 and check.tables >= 3, check
    png = shots / "index.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5_000
    nb = browser_check.check_page(reports / "runs" / "smoke" / "05_analysis.html")
    assert nb.ok and nb.tables == 1 and nb.screenshot is None
    # a broken image fails the CLI with one line naming it
    (reports / "runs" / "smoke" / "figures" / "05_pareto.png").unlink()
    with pytest.raises(SystemExit) as exit_info:
        browser_check.main([str(page), "--screenshots", str(shots)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "1 of 4 images did not load" in err[0] and "05_pareto.png" in err[0]
    json.dumps(check.broken)  # plain data
