"""The HumanEval judge: runs a unit test against a candidate it cannot be lied to by.

This file is not imported by the project. :func:`asd_core.data.code_answers.run_humaneval` sends its
text, with the item's parameters appended, into the sandbox as the program to run, so it uses
the standard library only. Inside the sandbox it splits into two processes:

- the **judge** (this process, trusted): runs the item's prompt helpers and its test code, and
  calls ``check(candidate)``, where ``candidate`` is a stand-in that forwards each call to the
  other process and returns the decoded result. It decides every pass/fail itself and prints
  the verdict lines, tagged with a one-time mark, on its own stdout;
- the **candidate** (a fresh interpreter, untrusted): runs the generated program and answers
  calls over a pipe, one JSON line each way. Its stdout and stderr go nowhere, it inherits no
  other descriptor, and it cannot reach the judge's: the judge makes itself non-dumpable (no
  ``/proc/<judge>/fd``, no ptrace) and drops every capability from the candidate's bounding
  set. The mark only tells verdict lines from stray output; the candidate may well read it
  (this file, with the parameters, is readable in the sandbox), but has nowhere to print it.

So a wrong program can only give wrong answers. Values cross as tagged JSON of plain builtins
(None, bool, int, float, str, bytes, list, tuple, dict, set): an object with a forged ``__eq__``
cannot come back, and a reply that does not decode fails that call. A call that exceeds its
time share kills the candidate; the next statement starts a fresh one.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from typing import Any

PARAMS_MARKER = "# --- judge parameters ---"
MAX_LINE = 16 << 20  # bytes of one reply; a longer one fails the call
PR_SET_DUMPABLE = 4
PR_CAPBSET_DROP = 24
LAST_CAP = 63


class CallFailed(Exception):
    """The candidate raised, hung, died or sent something that does not decode."""


class Overtime(BaseException):
    """The time share of the statement being judged ran out."""


# -- values across the pipe ------------------------------------------------------------------
def encode(value: Any) -> Any:
    """A JSON-able form of a plain builtin value (exact types only; subclasses are refused)."""
    kind = type(value)
    if value is None or kind in (bool, str):
        return value
    if kind is int:
        return {"i": str(value)}
    if kind is float:
        return {"f": repr(value)}
    if kind is bytes:
        return {"b": value.hex()}
    if kind is list:
        return [encode(v) for v in value]
    if kind is tuple:
        return {"t": [encode(v) for v in value]}
    if kind is dict:
        return {"d": [[encode(k), encode(v)] for k, v in value.items()]}
    if kind in (set, frozenset):
        return {"s": [encode(v) for v in value], "frozen": kind is frozenset}
    raise TypeError(f"cannot pass a {kind.__name__} between judge and candidate")


def decode(data: Any) -> Any:
    """The value :func:`encode` described; anything else raises ValueError."""
    if data is None or type(data) in (bool, str):
        return data
    if type(data) is list:
        return [decode(v) for v in data]
    if type(data) is dict and len(data) in (1, 2):
        if set(data) == {"i"} and type(data["i"]) is str:
            return int(data["i"])
        if set(data) == {"f"} and type(data["f"]) is str:
            return float(data["f"])
        if set(data) == {"b"} and type(data["b"]) is str:
            return bytes.fromhex(data["b"])
        if set(data) == {"t"} and type(data["t"]) is list:
            return tuple(decode(v) for v in data["t"])
        if set(data) == {"d"} and type(data["d"]) is list:
            return {decode(k): decode(v) for k, v in (_pair(p) for p in data["d"])}
        if set(data) == {"s", "frozen"} and type(data["s"]) is list:
            items = [decode(v) for v in data["s"]]
            return frozenset(items) if data["frozen"] is True else set(items)
    raise ValueError("not an encoded value")


def _pair(item: Any) -> tuple[Any, Any]:
    if type(item) is not list or len(item) != 2:
        raise ValueError("not a key/value pair")
    return item[0], item[1]


def _send(fd: int, message: dict[str, Any], deadline: float) -> None:
    data = (json.dumps(message) + "\n").encode()
    while data:
        if not select.select([], [fd], [], max(0.0, deadline - time.monotonic()))[1]:
            raise CallFailed("the candidate stopped reading")
        data = data[os.write(fd, data[: 1 << 16]) :]


def _receive(fd: int, buffer: bytearray, deadline: float) -> Any:
    while b"\n" not in buffer:
        if len(buffer) > MAX_LINE:
            raise CallFailed("reply too long")
        if not select.select([fd], [], [], max(0.0, deadline - time.monotonic()))[0]:
            raise CallFailed("no reply in time")
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            raise CallFailed("the candidate exited")
        buffer += chunk
    line, _, rest = bytes(buffer).partition(b"\n")
    buffer[:] = rest
    try:
        return json.loads(line)
    except ValueError:
        raise CallFailed("a reply that is not JSON") from None


# -- the candidate process -----------------------------------------------------------------
def candidate_main() -> None:
    """Run the program sent first, then answer calls until stdin closes."""
    requests = os.fdopen(os.dup(0), "rb")
    replies = os.fdopen(os.dup(1), "w", buffering=1)
    quiet = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):  # the program's own prints and reads go nowhere
        os.dup2(quiet, fd)
    namespace: dict[str, Any] = {"__name__": "__candidate__"}
    function = None
    for raw in requests:
        message = json.loads(raw)
        if "program" in message:
            try:
                exec(compile(message["program"], "candidate.py", "exec"), namespace)
                function = namespace.get(message["entry_point"])
                reply: dict[str, Any] = {"loaded": callable(function)}
            except BaseException as exc:  # the program's own failure, reported as not loaded
                reply = {"loaded": False, "error": type(exc).__name__}
        else:
            try:
                args, kwargs = decode(message["args"]), decode(message["kwargs"])
                reply = {"value": encode(function(*args, **kwargs))}  # type: ignore[misc]
            except BaseException as exc:
                reply = {"error": type(exc).__name__}
        replies.write(json.dumps(reply) + "\n")


def _drop_capabilities() -> None:  # pragma: no cover - runs between fork and exec
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for cap in range(LAST_CAP + 1):
        libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)  # fails harmlessly without CAP_SETPCAP


class Candidate:
    """The untrusted program in its own process; started again after a hang or a crash."""

    def __init__(self, command: list[str], program: str, entry_point: str):
        self.command, self.program, self.entry_point = command, program, entry_point
        self.process: subprocess.Popen[bytes] | None = None
        self.buffer = bytearray()

    def start(self, seconds: float) -> bool:
        """Launch and load the program; True when its entry point is callable."""
        self.stop()
        self.process = subprocess.Popen(
            self.command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            close_fds=True,
            preexec_fn=_drop_capabilities,
        )
        self.buffer = bytearray()
        deadline = time.monotonic() + seconds
        try:
            self._send({"program": self.program, "entry_point": self.entry_point}, deadline)
            return self._receive(deadline).get("loaded") is True
        except (CallFailed, OSError):
            self.stop()
            return False

    def call(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if self.process is None:
            raise CallFailed("no candidate running")
        deadline = time.monotonic() + 3600  # the statement's alarm ends a hang first
        try:
            self._send({"args": encode(args), "kwargs": encode(kwargs)}, deadline)
            reply = self._receive(deadline)
        except (OSError, Overtime):
            self.stop()
            raise
        if type(reply) is not dict or "value" not in reply:
            raise CallFailed(str(reply.get("error") if type(reply) is dict else reply))
        try:
            return decode(reply["value"])
        except (ValueError, TypeError, RecursionError, OverflowError):
            raise CallFailed("a value that does not decode") from None

    def _send(self, message: dict[str, Any], deadline: float) -> None:
        assert self.process is not None and self.process.stdin is not None
        _send(self.process.stdin.fileno(), message, deadline)

    def _receive(self, deadline: float) -> Any:
        assert self.process is not None and self.process.stdout is not None
        return _receive(self.process.stdout.fileno(), self.buffer, deadline)

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            for stream in (self.process.stdin, self.process.stdout):
                if stream is not None:
                    stream.close()
            self.process = None


# -- the judge ------------------------------------------------------------------------------
def _alarm(signum: int, frame: Any) -> None:
    raise Overtime()


def _runs(code: Any, namespace: dict[str, Any], seconds: float) -> bool:
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        exec(code, namespace)
        return True
    except BaseException:
        return False
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def _compiled(source: str, name: str) -> Any:
    try:
        return compile(source, name, "exec")
    except (SyntaxError, ValueError):
        return None


def judge_main(params: dict[str, Any]) -> None:
    """Judge one item: the verdict lines go to this process's stdout, nothing else does."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    report = os.fdopen(os.dup(1), "w", buffering=1)
    quiet = os.open(os.devnull, os.O_WRONLY)
    os.dup2(quiet, 1)
    signal.signal(signal.SIGALRM, _alarm)

    # the candidate runs this file's code without the parameters
    own = os.path.abspath(sys.argv[0])
    with open(own, encoding="utf-8") as fh:
        module = fh.read().rsplit(f"\n{PARAMS_MARKER}\n", 1)[0]
    child = os.path.abspath("candidate_process.py")  # the working folder is writable
    with open(child, "w", encoding="utf-8") as fh:
        fh.write(module + "\ncandidate_main()\n")
    command = [sys.executable, "-I", "-B", child]
    if _guarded():  # no network namespace: the candidate gets the same socket guard
        command = [sys.executable, "-I", "-B", "-c", params["guard"], child]

    candidate = Candidate(command, params["program"], params["entry_point"])
    load_s, check_s, statement_s = params["seconds"]

    def stand_in(*args: Any, **kwargs: Any) -> Any:
        return candidate.call(args, kwargs)

    namespace: dict[str, Any] = {"__name__": "__judge__"}
    helpers = _compiled(params["prompt"], "prompt.py")
    test = _compiled(params["test"], "test.py")
    loaded = test is not None and (helpers is None or _runs(helpers, namespace, load_s))
    # some tests call the function by its own name (HumanEval/33), as the original harness,
    # running everything in one namespace, allowed: that name is the stand-in too
    namespace[params["entry_point"]] = stand_in
    loaded = loaded and _runs(test, namespace, load_s) and callable(namespace.get("check"))
    loaded = loaded and candidate.start(load_s)
    checked = loaded and _runs(
        compile("check(candidate)", "check", "exec"), {**namespace, "candidate": stand_in}, check_s
    )
    print(params["mark"], "loaded", int(loaded), file=report)
    print(params["mark"], "check", int(checked), file=report)
    scope = {**namespace, params["parameter"]: stand_in}
    index = 0
    for source, scored in params["statements"]:
        if loaded and candidate.process is None:  # a hang or crash ended the last one
            candidate.start(load_s)
        code = _compiled(source, "assert")
        ok = loaded and code is not None and _runs(code, scope, statement_s)
        if scored:
            print(params["mark"], "assert", index, int(ok), file=report)
            index += 1
    candidate.stop()


def _guarded() -> bool:
    """True when the sandbox runs without a network namespace and replaced ``socket.socket``."""
    import socket

    return socket.socket.__name__ == "GuardedSocket"
