"""Where library messages go: one logger per module (``logging.getLogger(__name__)``), and a
single place where an entry point or a notebook chooses the level and the format.

Library code never prints: it logs. Command-line entry points (:func:`asd_core.ground.errors.
cli_entry`) and notebooks call :func:`configure`; progress of long loops is logged as plain
timestamped lines, which read the same on a console and in a log file.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable

CLI_FORMAT = "%(message)s"  # command lines: the message alone, as they printed before
NOTEBOOK_FORMAT = "%(asctime)s %(name)s: %(message)s"  # notebooks: when and from where


class _Stderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record arrives (notebook kernels and test
    captures replace it)."""

    @property
    def stream(self) -> object:
        return sys.stderr

    @stream.setter
    def stream(self, value: object) -> None:
        pass


def configure(level: int | str = "INFO", fmt: str = NOTEBOOK_FORMAT) -> None:
    """Send every ``asd_core`` logger's records at ``level`` and above to stderr."""
    handler = _Stderr()
    handler.setFormatter(logging.Formatter(fmt, datefmt="%H:%M:%S"))
    # "__main__": a module run with ``python -m`` logs under that name
    for name in ("asd_core", "__main__"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level)
        logger.propagate = False


class Progress:
    """Logs "done/total" with rate and time left at most every ``every_s`` seconds (and at the
    end): the item-level progress of a long loop, one line at a time."""

    def __init__(
        self,
        log: logging.Logger,
        what: str,
        total: int,
        unit: str = "items",
        done: int = 0,
        every_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.log, self.what, self.total, self.unit = log, what, total, unit
        self.done, self.start_done = done, done
        self.every_s, self.clock = every_s, clock
        self.started = self.last = clock()

    def update(self, n: int = 1) -> None:
        self.done += n
        now = self.clock()
        if now - self.last >= self.every_s or self.done >= self.total:
            self.last = now
            self.log.info("%s", self.line(now))

    def line(self, now: float) -> str:
        """``what: done/total unit (pct), rate unit/h, about T left``."""
        elapsed = now - self.started
        made = self.done - self.start_done
        rate = made / elapsed * 3600.0 if elapsed > 0 else math.nan
        left = (self.total - self.done) / rate * 3600.0 if rate and rate > 0 else math.nan
        pct = 100.0 * self.done / self.total if self.total else 100.0
        text = f"{self.what}: {self.done}/{self.total} {self.unit} ({pct:.0f}%)"
        if math.isfinite(rate):
            text += f", {rate:.0f} {self.unit}/h"
        if math.isfinite(left) and self.done < self.total:
            text += f", about {_duration(left)} left"
        return text


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
