"""Render report pages in headless Chromium and check that they show what they should.

``python -m benchmarks.browser_check reports/index.html reports/runs/smoke/05_analysis.html``
renders each page to a PNG screenshot and checks that every ``<img>`` loaded (complete, with
``naturalWidth > 0``) and that the page holds at least ``--min-tables`` tables. A failure is one
line naming the page and the broken images; the exit status is then non-zero.

How: the page is copied to a temporary folder with two additions, a ``<base href>`` pointing at
its real folder (so relative links resolve as before) and a small script that, on the ``load``
event, writes the image and table counts as JSON into the DOM. ``chromium --headless
--dump-dom`` (with a virtual-time budget, so the load event and the script have run) prints
that DOM; a second run with ``--screenshot`` takes the picture. No browser driver, no network:
the flags turn off Chromium's background connections, which a closed network refuses.
"""

from __future__ import annotations

import argparse
import html
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from asd_core.ground.errors import AsdError, cli_entry

# Tried in order when ASD_CHROMIUM is not set.
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

# Quiet, offline, sandbox-free (we render our own local files, often as root in CI).
_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--hide-scrollbars",
    "--mute-audio",
)

_RESULT_ID = "asd-browser-check"
_PROBE = f"""<script>
window.addEventListener("load", function () {{
  var imgs = Array.prototype.slice.call(document.images);
  var broken = imgs.filter(function (i) {{ return !(i.complete && i.naturalWidth > 0); }})
                   .map(function (i) {{ return (i.getAttribute("src") || "").slice(0, 120); }});
  var out = document.createElement("pre");
  out.id = "{_RESULT_ID}";
  out.textContent = JSON.stringify({{images: imgs.length, broken: broken,
                                     tables: document.getElementsByTagName("table").length}});
  document.body.appendChild(out);
}});
</script>"""


class BrowserCheckError(AsdError):
    """A page that did not render as it should, or no browser to render it."""


@dataclass(frozen=True)
class PageCheck:
    """What headless Chromium saw on one page."""

    page: Path  # the checked HTML file
    images: int  # <img> elements on the page
    broken: tuple[str, ...]  # src of the images that did not load (truncated)
    tables: int  # <table> elements on the page
    screenshot: Path | None  # the PNG, when one was taken

    @property
    def ok(self) -> bool:
        return not self.broken


def find_chromium() -> str:
    """The Chromium executable: ``$ASD_CHROMIUM`` or the first of :data:`CHROMIUM_NAMES` on PATH."""
    override = os.environ.get("ASD_CHROMIUM")
    if override:
        if shutil.which(override) is None:
            raise BrowserCheckError(f"ASD_CHROMIUM={override} is not an executable")
        return override
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    raise BrowserCheckError(
        "chromium not found: install Debian's 'chromium' package or set ASD_CHROMIUM"
    )


def _instrumented(page: Path) -> str:
    """The page's HTML with a <base> at its real folder and the probe script before </body>."""
    text = page.read_text(encoding="utf-8", errors="replace")
    base = f'<base href="{html.escape(page.parent.resolve().as_uri())}/">'
    head = re.search(r"<head\b[^>]*>", text, re.I)
    text = text[: head.end()] + base + text[head.end() :] if head else base + text
    body_end = text.lower().rfind("</body>")
    return text[:body_end] + _PROBE + text[body_end:] if body_end >= 0 else text + _PROBE


def _run(chromium: str, args: Sequence[str], timeout: float) -> str:
    with tempfile.TemporaryDirectory(prefix="asd-chromium-") as profile:
        cmd = [chromium, *_FLAGS, f"--user-data-dir={profile}", *args]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            raise BrowserCheckError(f"chromium did not finish within {timeout:.0f} s") from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise BrowserCheckError(f"chromium exited with status {done.returncode}: {last}")
    return done.stdout


def check_page(
    page: str | os.PathLike[str],
    screenshot_dir: str | os.PathLike[str] | None = None,
    chromium: str | None = None,
    width: int = 1400,
    height: int = 2200,
    timeout: float = 90.0,
) -> PageCheck:
    """Render ``page`` headless; count its images (and the broken ones) and tables.

    With ``screenshot_dir``, also write ``<screenshot_dir>/<page stem>.png`` (``width`` ×
    ``height`` pixels of the top of the page).
    """
    page = Path(page)
    if not page.is_file():
        raise BrowserCheckError(f"{page}: page not found")
    chromium = chromium or find_chromium()
    with tempfile.TemporaryDirectory(prefix="asd-browser-check-") as tmp:
        probe = Path(tmp) / page.name
        probe.write_text(_instrumented(page), encoding="utf-8")
        # the virtual-time budget lets the load event (all images settled) and the probe run
        dom = _run(chromium, ["--virtual-time-budget=10000", "--dump-dom", probe.as_uri()], timeout)
    found = re.search(rf'<pre id="{_RESULT_ID}">(.*?)</pre>', dom, re.S)
    if not found:
        raise BrowserCheckError(f"{page}: the page did not finish loading in headless chromium")
    result = json.loads(html.unescape(found.group(1)))
    shot = None
    if screenshot_dir is not None:
        shot = Path(screenshot_dir) / f"{page.stem}.png"
        shot.parent.mkdir(parents=True, exist_ok=True)
        _run(
            chromium,
            [
                f"--window-size={width},{height}",
                f"--screenshot={shot.resolve()}",
                page.resolve().as_uri(),
            ],
            timeout,
        )
        if not shot.is_file() or shot.stat().st_size == 0:
            raise BrowserCheckError(f"{page}: chromium wrote no screenshot")
    return PageCheck(
        page, int(result["images"]), tuple(result["broken"]), int(result["tables"]), shot
    )


def problems(check: PageCheck, min_tables: int = 1, min_images: int = 0) -> list[str]:
    """What is wrong with a checked page, as short phrases (empty when all is well)."""
    out = []
    if check.broken:
        out.append(
            f"{len(check.broken)} of {check.images} images did not load ({', '.join(check.broken[:5])})"
        )
    if check.images < min_images:
        out.append(f"{check.images} images, expected at least {min_images}")
    if check.tables < min_tables:
        out.append(f"{check.tables} tables, expected at least {min_tables}")
    return out


@cli_entry
def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.browser_check", description=__doc__)
    parser.add_argument("pages", nargs="+", help="HTML files to check")
    parser.add_argument(
        "--screenshots",
        default=None,
        help="folder for the PNG screenshots (default: a new folder under the system temp dir)",
    )
    parser.add_argument("--min-tables", type=int, default=1, help="tables each page must hold")
    parser.add_argument("--min-images", type=int, default=0, help="images each page must hold")
    args = parser.parse_args(argv)
    shots = Path(args.screenshots or tempfile.mkdtemp(prefix="asd-screenshots-"))
    chromium = find_chromium()
    failures = []
    for page in args.pages:
        check = check_page(page, shots, chromium)
        wrong = problems(check, args.min_tables, args.min_images)
        if wrong:
            failures.append(f"{page}: {'; '.join(wrong)}")
        else:
            print(
                f"ok: {page}: {check.images} images loaded, {check.tables} tables, "
                f"screenshot {check.screenshot}"
            )
    if failures:
        raise BrowserCheckError(" | ".join(failures))


if __name__ == "__main__":
    main()
