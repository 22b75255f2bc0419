"""The sandbox's parent side: pump a confined program's output, enforce its wall clock and flood limit, and leave nothing running.

The parent reads stdout and stderr as they arrive (keeping the first ``output_bytes`` of each
and killing the run once it floods past ``flood_bytes``), sends SIGTERM to the process group at
the deadline and SIGKILL after a grace period, and at the end SIGKILLs the process group and,
when the program ran under its own uid, every process of that uid.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import subprocess
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import psutil

if TYPE_CHECKING:
    from asd_core.data.sandbox import SandboxLimits  # the parent module; a type only


_DRAIN_SECONDS = 0.2  # after the program exits, how long its pipes may take to reach EOF


_POLL_SECONDS = 0.02  # exit polling interval where pidfd_open is missing


_READ_CHUNK = 1 << 16


class Capture:
    """The first ``keep`` bytes of a stream, and how many came in total."""

    def __init__(self, keep: int):
        self.keep = keep
        self.data = bytearray()
        self.total = 0

    def add(self, chunk: bytes) -> None:
        room = self.keep - len(self.data)
        if room > 0:
            self.data += chunk[:room]
        self.total += len(chunk)

    @property
    def truncated(self) -> bool:
        return self.total > len(self.data)

    def text(self) -> str:
        return self.data.decode("utf-8", errors="replace")


def supervise(
    proc: subprocess.Popen[bytes],
    limits: SandboxLimits,
    clock: Callable[[], float],
    started: float,
) -> tuple[Capture, Capture, str | None]:
    """Pump the output until the bootstrap exits, enforcing the wall clock and the flood limit.

    Returns the stdout and stderr captures and why the supervisor killed the run ("timeout",
    "flood") or None.

    Long because: one event loop: output pumping, the wall clock and the flood limit interact.
    """
    assert proc.stdout is not None and proc.stderr is not None
    captures = {proc.stdout.fileno(): Capture(limits.output_bytes)}
    captures[proc.stderr.fileno()] = Capture(limits.output_bytes)
    selector = selectors.DefaultSelector()
    for fd in captures:
        os.set_blocking(fd, False)
        selector.register(fd, selectors.EVENT_READ)
    exit_fd = _pidfd(proc.pid)  # readable once the bootstrap exits; None: poll for it
    if exit_fd is not None:
        selector.register(exit_fd, selectors.EVENT_READ)
    deadline = started + limits.wall_seconds
    hard_kill_at: float | None = None
    exited_at: float | None = None
    killed_for: str | None = None
    try:
        while True:
            now = clock()
            if exited_at is None and proc.poll() is not None:
                exited_at = now
                _signal_group(proc.pid, signal.SIGKILL)  # stragglers would hold the pipes open
                if exit_fd is not None:
                    selector.unregister(exit_fd)
            if exited_at is not None:
                pipes_open = any(key.fd in captures for key in selector.get_map().values())
                if not pipes_open or now > exited_at + _DRAIN_SECONDS:
                    break
                wake_at = exited_at + _DRAIN_SECONDS
            else:
                if killed_for is None and now >= deadline:
                    killed_for = "timeout"
                    _signal_group(proc.pid, signal.SIGTERM)
                    hard_kill_at = now + limits.grace_seconds
                if hard_kill_at is not None and now >= hard_kill_at:
                    _signal_group(proc.pid, signal.SIGKILL)
                    hard_kill_at = now + limits.grace_seconds  # again, if it is still there
                wake_at = deadline if hard_kill_at is None else hard_kill_at
                if exit_fd is None:
                    wake_at = min(wake_at, now + _POLL_SECONDS)
            for key, _ in selector.select(max(0.0, wake_at - now)):
                if key.fd not in captures:
                    continue  # the exit fd: handled by proc.poll() at the top
                try:
                    chunk = os.read(key.fd, _READ_CHUNK)
                except BlockingIOError:
                    continue
                if not chunk:
                    selector.unregister(key.fd)
                    continue
                captures[key.fd].add(chunk)
                flooded = sum(c.total for c in captures.values()) > limits.flood_bytes
                if flooded and killed_for is None:
                    killed_for = "flood"
                    _signal_group(proc.pid, signal.SIGKILL)
    finally:
        selector.close()
        if exit_fd is not None:
            os.close(exit_fd)
    stdout, stderr = captures.values()
    return stdout, stderr, killed_for


def _pidfd(pid: int) -> int | None:
    """A descriptor that becomes readable when ``pid`` exits (Linux 5.3+), or None."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # the group is gone already
        os.killpg(pgid, sig)


def kill_leftovers(pgid: int, uid: int | None) -> None:
    """SIGKILL the program's process group and, with a private uid, every process of that uid.

    The uid sweep catches processes that left the session when there is no PID namespace.
    """
    _signal_group(pgid, signal.SIGKILL)
    if uid is None:
        return
    doomed = []
    for process in psutil.process_iter(["uids"]):
        uids = process.info["uids"]
        if uids is not None and uid in (uids.real, uids.effective):
            try:
                process.kill()
                doomed.append(process)
            except psutil.Error:
                pass
    _wait_gone(doomed, timeout=2.0)


def _wait_gone(processes: list[psutil.Process], timeout: float) -> None:
    """Wait until each process has exited; a zombie counts as gone (init reaps orphans)."""
    give_up = time.monotonic() + timeout
    while processes and time.monotonic() < give_up:
        still = []
        for process in processes:
            try:
                if process.status() != psutil.STATUS_ZOMBIE:
                    still.append(process)
            except psutil.NoSuchProcess:
                pass
        processes = still
        if processes:
            time.sleep(0.01)


def read_report(fd: int) -> dict[str, Any] | None:
    os.set_blocking(fd, False)
    try:
        raw = os.read(fd, _READ_CHUNK)
    except BlockingIOError:
        return None
    try:
        report = json.loads(raw)
    except ValueError:
        return None
    return report if isinstance(report, dict) else None
