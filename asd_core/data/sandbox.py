"""Run untrusted Python (HumanEval completions and their tests) in a throwaway sandbox (docs/design.md §13).

:func:`run_python` writes the program into a fresh temporary folder, runs it in a separate
``python -I -B`` process, then kills whatever is left and deletes the folder. A small *bootstrap*
interpreter starts first, confines itself, and only then execs the program, so every limit
is in place before the first line of untrusted code runs. The bootstrap takes the strongest
isolation the kernel grants and reports what it got; :attr:`SandboxResult.isolation` records it
as a ``+``-joined list of:

- ``netns``, ``mountns``, ``pidns``, ``ipcns``: fresh Linux namespaces. A new network namespace
  has only a loopback device, and it is down, so every connection fails, localhost included. The
  mount namespace sees the host file system read-only, gets a size-capped tmpfs as its working
  folder (the disk quota) and, when the interpreter lives under a folder other users cannot
  enter (such as root's home), sees only the interpreter's own folder there. The program runs
  under a small init in its own PID namespace: when it ends, the kernel kills everything it
  started, even processes that left its session. ``procfs``: a /proc showing only those.
  Root gets the namespaces directly; other users inside a user namespace (``userns``) when the
  kernel allows unprivileged ones.
- ``uid``: a parent running as root runs the program as a random unused uid, so the program can
  change nothing of the host's and ``RLIMIT_NPROC`` counts only its own processes (root is
  exempt from that limit; inside a user namespace the count is per namespace as well).
- ``socket-guard``: the fallback without a network namespace. Socket creation is replaced before
  the program starts (``PermissionError`` for every family but ``AF_UNIX``). That stops ordinary
  code, not a determined attacker (``ctypes`` or a ``curl`` subprocess get past it), and without
  a mount namespace the disk is bounded per file only.
- ``rlimits``: always. CPU seconds, address space, file size, open files, process count, no core
  dumps; plus ``no_new_privs`` so set-uid programs grant nothing.

When namespaces cannot be set up, ``isolation="auto"`` retries once with the fallback. Root
with neither namespaces nor an interpreter other users can run has no way to bound its process
count, so the run is refused (status ``error``) rather than run unconfined.

The parent enforces the wall clock (SIGTERM to the process group, SIGKILL after a grace period),
reads stdout and stderr as they arrive (keeping the first ``output_bytes`` of each and killing
the run once it floods past ``flood_bytes``), and at the end SIGKILLs the process group and,
when the program ran under its own uid, every process of that uid.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

from asd_core.data import confine
from asd_core.data.supervise import Capture, kill_leftovers, read_report, supervise
from asd_core.ground.errors import AsdError

# "auto": the strongest the kernel grants; "userns": skip root's own namespaces and take the
# unprivileged user-namespace path; "guard": no namespaces at all (the last two test fallbacks)
Isolation = Literal["auto", "userns", "guard"]
Status = Literal["ok", "failed", "timeout", "killed", "error"]

_UID_BASE = 1_800_000_000  # a root parent runs each program as a uid drawn from
_UID_SPAN = 1 << 24  # [_UID_BASE, _UID_BASE + _UID_SPAN): far above any real account
_SIGNAL_REASONS: dict[int, str] = {
    signal.SIGXCPU: "CPU time limit (SIGXCPU)",
    signal.SIGKILL: "killed by SIGKILL (CPU hard limit, out of memory, or the supervisor)",
    signal.SIGXFSZ: "file size limit (SIGXFSZ)",
    signal.SIGSEGV: "segmentation fault (stack or memory exhausted)",
}


class SandboxError(AsdError):
    """Impossible sandbox limits or arguments."""


@dataclass(frozen=True)
class SandboxLimits:
    """What one sandboxed run may use. The defaults suit one HumanEval item."""

    wall_seconds: float = 10.0  # wall clock from launch; then SIGTERM, SIGKILL after grace_seconds
    grace_seconds: float = 0.5  # between SIGTERM and SIGKILL when the wall clock runs out
    cpu_seconds: int = 5  # RLIMIT_CPU per process: SIGXCPU here, SIGKILL one second later
    memory_bytes: int = 1 << 30  # RLIMIT_AS per process (virtual address space)
    file_bytes: int = 10_000_000  # RLIMIT_FSIZE: the largest file the program may write
    disk_bytes: int = 64 << 20  # size of the tmpfs working folder (with a mount namespace)
    max_processes: int = 8  # RLIMIT_NPROC: processes and threads of one run, program included
    max_open_files: int = 64  # RLIMIT_NOFILE
    output_bytes: int = 64 << 10  # bytes of stdout and of stderr kept in the result
    flood_bytes: int = 16 << 20  # total output (both streams) after which the run is killed

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise SandboxError(
                    f"sandbox limit {field.name} must be a positive number, got {value!r}"
                )


@dataclass(frozen=True)
class SandboxResult:
    """The outcome of one sandboxed run."""

    passed: bool  # exited with status 0 within every limit
    status: Status  # ok: exit 0; failed: non-zero exit; timeout: wall clock ran out; killed: a
    # signal ended it (CPU or memory limit, output flood); error: the program never started
    returncode: int | None  # exit status; negative: killed by that signal; None: never started
    stdout: str  # the first SandboxLimits.output_bytes of stdout, undecodable bytes replaced
    stderr: str  # the same for stderr
    truncated: bool  # stdout or stderr had more bytes than were kept
    seconds: float  # wall-clock s from launch until the last process was reaped
    isolation: str  # mechanisms in force, "+"-joined (see the module docstring); "" if none
    detail: str  # one line on why this status, e.g. "wall clock 10 s exceeded"


def run_python(
    source: str,
    limits: SandboxLimits | None = None,
    *,
    isolation: Isolation = "auto",
    python: str | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> SandboxResult:
    """Run ``source`` as a Python program in a fresh sandbox and report what happened.

    ``python`` is the program's interpreter (default: this one); ``clock`` gives seconds for
    :attr:`SandboxResult.seconds`. Never raises for anything the program does.
    """
    if isolation not in ("auto", "userns", "guard"):
        raise SandboxError(f"sandbox isolation must be auto, userns or guard, got {isolation!r}")
    limits = limits or SandboxLimits()
    interpreter = python or sys.executable
    result, namespaces_failed = _run_once(source, limits, isolation, interpreter, clock)
    if namespaces_failed and isolation == "auto":
        result, _ = _run_once(source, limits, "guard", interpreter, clock)
    return result


def _run_once(
    source: str,
    limits: SandboxLimits,
    isolation: Isolation,
    python: str,
    clock: Callable[[], float],
) -> tuple[SandboxResult, bool]:
    """One launch; the flag says the bootstrap could not set up namespaces and ran nothing."""
    root = Path(tempfile.mkdtemp(prefix="asd-sandbox-"))
    uid = _pick_uid() if os.geteuid() == 0 else None
    report_read, report_write = os.pipe()
    try:
        work, program = _prepare_folder(root, source, uid)
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": str(work),
            "TMPDIR": str(work / "tmp"),
            "LANG": "C.UTF-8",
        }
        plan = _plan(isolation, python, program, work, root, uid, limits, env, report_write)
        started = clock()
        try:
            proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _bootstrap_command(), json.dumps(plan)],
                cwd=work,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                pass_fds=(report_write,),
                start_new_session=True,
            )
        except OSError as err:
            return _never_started(f"could not start the sandbox: {err}", clock() - started), False
        finally:
            os.close(report_write)
            report_write = -1
        try:
            stdout, stderr, killed_for = supervise(proc, limits, clock, started)
        finally:
            kill_leftovers(proc.pid, uid)
            proc.wait()
            assert proc.stdout is not None and proc.stderr is not None
            proc.stdout.close()
            proc.stderr.close()
        seconds = clock() - started
        report = read_report(report_read)
    finally:
        if report_write >= 0:
            os.close(report_write)
        os.close(report_read)
        _remove_tree(root)
    return _result(proc.returncode, report, stdout, stderr, killed_for, limits, seconds)


def _pick_uid() -> int:
    """A fresh uid for one run, so its process count and leftovers are its own."""
    return _UID_BASE + secrets.randbelow(_UID_SPAN)


def _prepare_folder(root: Path, source: str, uid: int | None) -> tuple[Path, Path]:
    """Write the program next to an empty working folder; a private uid gets to use them."""
    work = root / "work"
    (work / "tmp").mkdir(parents=True)
    program = root / "program.py"
    program.write_text(source, encoding="utf-8")
    if uid is not None:
        root.chmod(0o711)  # the sandbox uid may pass through, not list
        program.chmod(0o644)
        for folder in (work, work / "tmp"):
            os.chown(folder, uid, uid)
    return work, program


def _plan(
    isolation: Isolation,
    python: str,
    program: Path,
    work: Path,
    root: Path,
    uid: int | None,
    limits: SandboxLimits,
    env: dict[str, str],
    report_fd: int,
) -> dict[str, Any]:
    """Everything the bootstrap needs, as JSON-able values."""
    needed = _interpreter_folders(python)
    blocked = {folder: _blocked_ancestor(folder) for folder in needed}
    public = all(ancestor is None for ancestor in blocked.values())
    return {
        "mode": isolation,
        "python": python,
        "program": str(program),
        "work": str(work),
        "uid": uid,
        "interpreter_public": public,
        "expose": None if public else _expose_plan(blocked, root),
        "limits": {
            "cpu_seconds": int(limits.cpu_seconds),
            "memory_bytes": int(limits.memory_bytes),
            "file_bytes": int(limits.file_bytes),
            "disk_bytes": int(limits.disk_bytes),
            "max_processes": int(limits.max_processes),
            "max_open_files": int(limits.max_open_files),
        },
        "env": env,
        "report_fd": report_fd,
        "guard": SOCKET_GUARD,
    }


def _interpreter_folders(python: str) -> list[Path]:
    """Folders the program's interpreter reads: its installation and, for this one, the venv."""
    real = Path(os.path.realpath(python))
    folders = {real.parent.parent}
    if real == Path(os.path.realpath(sys.executable)):
        folders |= {Path(sys.base_prefix).resolve(), Path(sys.prefix).resolve()}
    return sorted(folders)


def _blocked_ancestor(folder: Path) -> Path | None:
    """The outermost folder on the way to ``folder`` (itself included) others cannot enter."""
    for step in [*reversed(folder.parents), folder]:
        try:
            if not os.stat(step).st_mode & stat.S_IXOTH:
                return step
        except OSError:
            return step
    return None


def _expose_plan(
    blocked: dict[Path, Path | None], root: Path
) -> list[tuple[str, list[str]]] | None:
    """Which closed folders to cover with an empty tmpfs holding only the interpreter's folders.

    None when that cannot work: the interpreter folder itself is closed, or the cover would
    hide the sandbox's own folder.
    """
    covers: dict[Path, list[str]] = {}
    for folder, ancestor in blocked.items():
        if ancestor is None:
            continue
        if ancestor == folder or root.resolve().is_relative_to(ancestor):
            return None
        covers.setdefault(ancestor, []).append(str(folder))
    return [(str(ancestor), folders) for ancestor, folders in covers.items()]


@functools.cache
def _bootstrap_command() -> str:
    """The bootstrap's source (:mod:`asd_core.data.confine`), run by a fresh interpreter's ``-c``."""
    source = Path(confine.__file__).read_text(encoding="utf-8")
    return f"{source}\nimport sys\nmain(json.loads(sys.argv[1]))\n"


SOCKET_GUARD = """\
import _socket, runpy, socket, sys

def _guarded(base):
    class GuardedSocket(base):
        def __init__(self, family=-1, type=-1, proto=-1, fileno=None):
            if fileno is None and family != _socket.AF_UNIX:
                raise PermissionError(13, "network access is disabled in this sandbox")
            super().__init__(family, type, proto, fileno)
    return GuardedSocket

socket.socket = socket.SocketType = _guarded(socket.socket)
_socket.socket = _socket.SocketType = _guarded(_socket.socket)
del _guarded
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def _remove_tree(root: Path) -> None:
    """Delete the sandbox folder, restoring permissions the program may have taken away."""

    def retry_writable(function: Callable[[str], object], path: str, _: object) -> None:
        for target in (os.path.dirname(path), path):
            with contextlib.suppress(OSError, NotImplementedError):
                os.chmod(target, 0o700, follow_symlinks=False)
        with contextlib.suppress(OSError):
            function(path)

    shutil.rmtree(root, onerror=retry_writable)


def _never_started(detail: str, seconds: float, isolation: str = "") -> SandboxResult:
    return SandboxResult(
        passed=False,
        status="error",
        returncode=None,
        stdout="",
        stderr="",
        truncated=False,
        seconds=seconds,
        isolation=isolation,
        detail=detail,
    )


def _result(
    returncode: int,
    report: dict[str, Any] | None,
    stdout: Capture,
    stderr: Capture,
    killed_for: str | None,
    limits: SandboxLimits,
    seconds: float,
) -> tuple[SandboxResult, bool]:
    """Classify the run; the flag asks for a retry without namespaces."""
    if report is None or "isolation" not in report:
        report = report or {}
        lines = stderr.text().strip().splitlines()
        reason = report.get("error") or (lines[-1] if lines else f"bootstrap exited {returncode}")
        return _never_started(f"sandbox refused: {reason}", seconds), bool(
            report.get("namespaces_failed")
        )
    status: Status
    if killed_for == "timeout":
        status, detail = "timeout", f"wall clock {limits.wall_seconds:g} s exceeded"
    elif killed_for == "flood":
        status, detail = "killed", f"output flood: more than {limits.flood_bytes} bytes"
    elif returncode == 0:
        status, detail = "ok", "exit status 0"
    elif returncode > 0:
        status, detail = "failed", f"exit status {returncode}"
    else:
        status = "killed"
        detail = _SIGNAL_REASONS.get(-returncode, f"killed by signal {-returncode}")
    result = SandboxResult(
        passed=status == "ok",
        status=status,
        returncode=returncode,
        stdout=stdout.text(),
        stderr=stderr.text(),
        truncated=stdout.truncated or stderr.truncated,
        seconds=seconds,
        isolation=str(report["isolation"]),
        detail=detail,
    )
    return result, False
