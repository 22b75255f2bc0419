"""The code sandbox against hostile programs (docs/design.md §13).

Each hostile program exits 0 only if its attack worked, so every one must come back not passed;
after each run the host must be intact (canary files, real home, /tmp, a listening socket, no
surviving process, no leftover sandbox folder). Limits are small so the suite stays fast.
"""

from __future__ import annotations

import functools
import os
import shutil
import socket
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from string import Template

import psutil
import pytest

from asd_core.data import sandbox
from asd_core.data.sandbox import SandboxError, SandboxLimits, SandboxResult, run_python

LIMITS = SandboxLimits(
    wall_seconds=1.0,
    grace_seconds=0.2,
    cpu_seconds=1,
    memory_bytes=256 << 20,
    file_bytes=2 << 20,
    disk_bytes=8 << 20,
    max_processes=4,
    max_open_files=64,
    output_bytes=4096,
    flood_bytes=1 << 20,
)
SECRET = "asd-test-secret-7f3a9c"

# name -> program; $-placeholders come from the Host fixture. Each exits 0 only on success.
HOSTILE = {
    "infinite_loop": "while True:\n    pass\n",
    "fork_bomb": """
        import os
        while True:
            try:
                os.fork()
            except OSError:
                pass
    """,
    "escaping_fork": """
        import os, time
        if os.fork() == 0:
            os.setsid()  # leave the process group the supervisor kills
            time.sleep(600)
        time.sleep(600)
    """,
    "memory_hog": """
        hoard = []
        while True:
            hoard.append(bytearray(64 << 20))
    """,
    "disk_filler": """
        import os
        for i in range(10_000):
            with open(f"fill{i}.bin", "wb") as f:
                f.write(os.urandom(1 << 20))
    """,
    "big_file": """
        with open("big.bin", "wb") as f:
            for _ in range(100):
                f.write(b"x" * (1 << 20))
    """,
    "delete_outside": """
        import os, shutil
        try:
            open("$canary", "w").write("overwritten")
        finally:
            os.remove("$canary")
            shutil.rmtree("$canary_dir")
    """,
    "write_tmp": """
        open("$tmp_escape", "w").write("escaped")
    """,
    "socket_localhost": """
        import socket
        socket.create_connection(("127.0.0.1", $port), timeout=2).sendall(b"hello")
    """,
    "socket_outside": """
        import socket
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.sendto(b"x", ("192.0.2.1", 53))  # TEST-NET-1: nothing should even leave the host
        socket.create_connection(("192.0.2.1", 80), timeout=2)
    """,
    "read_secrets": """
        import os, glob
        secret = "$secret_head" + "$secret_tail"  # never whole in a traceback line
        found = [k for k, v in os.environ.items() if secret in v]
        for path in glob.glob("/proc/*/environ"):
            try:
                if secret.encode() in open(path, "rb").read():
                    found.append(path)
            except OSError:
                pass
        assert found, "no secret visible"
        print(found)
    """,
    "stdout_flood": """
        import sys
        while True:
            sys.stdout.write("x" * 65536)
    """,
    "deep_recursion": """
        import sys
        sys.setrecursionlimit(10**9)
        def dive(n):
            return dive(n + 1) + 1
        dive(0)
    """,
    "spawn_subprocesses": """
        import subprocess
        children = [
            subprocess.Popen(["sleep", "600"], start_new_session=True) for _ in range(10)
        ]
        for child in children:
            child.wait()
    """,
    "ignore_sigterm": """
        import signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        while True:
            time.sleep(0.05)
    """,
    "write_real_home": """
        open("$home_target", "w").write("pwned")
    """,
    "kill_parent": """
        import os, signal
        os.kill($parent_pid, signal.SIGTERM)
    """,
}
# statuses that hold even on a loaded machine (test_specific_outcomes pins the mechanisms)
EXPECTED_STATUS = {
    "escaping_fork": {"timeout"},
    "ignore_sigterm": {"timeout"},
    "spawn_subprocesses": {"failed", "timeout"},
}


@dataclass
class Host:
    """What a hostile program could harm, and how to check it is intact."""

    canary: Path
    tmp_escape: Path
    home_target: Path
    server: socket.socket
    sandbox_parent: Path  # where this test's sandboxes make their folders (others run too)
    sandbox_uids: list[int]  # uids this test's sandboxes ran as

    def program(self, name: str) -> str:
        return Template(textwrap.dedent(HOSTILE[name])).substitute(
            canary=self.canary,
            canary_dir=self.canary.parent,
            tmp_escape=self.tmp_escape,
            home_target=self.home_target,
            port=self.server.getsockname()[1],
            secret_head=SECRET[:8],
            secret_tail=SECRET[8:],
            parent_pid=os.getpid(),
        )

    def assert_unharmed(self, result: SandboxResult) -> None:
        assert self.canary.read_text() == "canary"
        assert sorted(p.name for p in self.canary.parent.iterdir()) == ["canary.txt"]
        assert not self.tmp_escape.exists()
        assert not self.home_target.exists()
        assert SECRET not in result.stdout + result.stderr
        self.server.settimeout(0.01)
        with pytest.raises(TimeoutError):  # nobody connected to the host's listening socket
            self.server.accept()
        assert _survivors(self.sandbox_uids) == []
        assert list(self.sandbox_parent.iterdir()) == []  # every sandbox folder deleted


def _survivors(sandbox_uids: list[int]) -> list[psutil.Process]:
    """Live processes our sandboxes started: our descendants or any process of their uids."""
    found = psutil.Process().children(recursive=True)
    for process in psutil.process_iter(["uids"]):
        uids = process.info["uids"]
        if uids is not None and {uids.real, uids.effective} & set(sandbox_uids):
            found.append(process)
    alive = []
    for process in found:
        try:
            if process.status() != psutil.STATUS_ZOMBIE:
                alive.append(process)
        except psutil.NoSuchProcess:
            pass
    return alive


@pytest.fixture
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Host]:
    monkeypatch.setenv("ASD_SANDBOX_TEST_SECRET", SECRET)
    # our own parent folder for sandbox folders, one a sandbox uid may pass through
    sandbox_parent = Path(tempfile.mkdtemp(prefix="asd-sandbox-test-"))
    sandbox_parent.chmod(0o711)
    monkeypatch.setattr(tempfile, "tempdir", str(sandbox_parent))
    sandbox_uids: list[int] = []

    def recorded_uid() -> int:
        sandbox_uids.append(pick_uid())
        return sandbox_uids[-1]

    pick_uid = sandbox._pick_uid
    monkeypatch.setattr(sandbox, "_pick_uid", recorded_uid)
    canary = tmp_path / "outside" / "canary.txt"
    canary.parent.mkdir()
    canary.write_text("canary")
    tmp_escape = sandbox_parent.parent / f"asd-escape-{os.getpid()}-{tmp_path.name}"
    home_target = Path.home() / f".asd-sandbox-escape-{os.getpid()}"
    server = socket.create_server(("127.0.0.1", 0))
    try:
        yield Host(canary, tmp_escape, home_target, server, sandbox_parent, sandbox_uids)
    finally:
        server.close()
        shutil.rmtree(sandbox_parent, ignore_errors=True)
        for leftover in (tmp_escape, home_target):  # only there if the sandbox failed
            leftover.unlink(missing_ok=True)


def _check_hostile(name: str, result: SandboxResult, host: Host) -> None:
    assert not result.passed, f"{name} escaped: {result}"
    assert result.status != "ok"
    assert result.status in EXPECTED_STATUS.get(name, {"failed", "killed", "timeout"}), result
    assert result.seconds < LIMITS.wall_seconds + 3 * LIMITS.grace_seconds + 2.0
    assert len(result.stdout.encode()) <= LIMITS.output_bytes + 3  # + a replaced partial char
    host.assert_unharmed(result)


def test_benign_program_passes(host: Host) -> None:
    result = run_python(
        "def add(a, b):\n    return a + b\n\nassert add(2, 3) == 5\nprint('ok')\n", LIMITS
    )
    assert result.passed and result.status == "ok" and result.returncode == 0
    assert result.stdout == "ok\n" and not result.truncated
    assert "rlimits" in result.isolation
    host.assert_unharmed(result)


def test_failing_program_is_failed_with_its_traceback() -> None:
    result = run_python("assert 1 == 2, 'nope'\n", LIMITS)
    assert (result.passed, result.status, result.returncode) == (False, "failed", 1)
    assert "AssertionError: nope" in result.stderr


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_program_fails_and_host_survives(name: str, host: Host) -> None:
    _check_hostile(name, run_python(host.program(name), LIMITS), host)


def test_all_hostile_programs_in_one_loop(host: Host) -> None:
    results = {name: run_python(host.program(name), LIMITS) for name in HOSTILE}
    run_python("print('still working')", LIMITS)  # the sandbox keeps working after all of them
    for name, result in results.items():
        _check_hostile(name, result, host)
    assert run_python("print('still working')", LIMITS).passed


def test_specific_outcomes(host: Host) -> None:
    flood = run_python(host.program("stdout_flood"), LIMITS)
    assert flood.truncated and flood.stdout == "x" * LIMITS.output_bytes
    ignore = run_python(host.program("ignore_sigterm"), LIMITS)
    assert ignore.returncode == -9 and ignore.seconds >= LIMITS.wall_seconds
    roomy = replace(LIMITS, wall_seconds=10.0)  # each limit below bites long before this
    loop = run_python(host.program("infinite_loop"), roomy)
    assert loop.status == "killed" and "CPU" in loop.detail and loop.seconds < 6.0
    memory = run_python(host.program("memory_hog"), roomy)
    assert memory.status == "failed" and "MemoryError" in memory.stderr
    big = run_python(host.program("big_file"), roomy)
    assert big.status == "failed" and "File too large" in big.stderr
    disk = run_python(host.program("disk_filler"), roomy)
    assert disk.status == "failed"
    if "mountns" in disk.isolation:  # the tmpfs quota
        assert "No space left on device" in disk.stderr
    home = run_python("import os\nopen(os.path.expanduser('~/note'), 'w').write('x')\n", LIMITS)
    assert home.passed  # the sandbox's own HOME is writable
    for result in (flood, ignore, loop, memory, big, disk, home):
        host.assert_unharmed(result)


def test_environment_is_minimal() -> None:
    probe = "import json, os\nprint(json.dumps(dict(os.environ)))\n"
    result = run_python(probe, LIMITS)
    assert result.passed
    assert set(eval(result.stdout)) <= {"PATH", "HOME", "TMPDIR", "LANG", "LC_CTYPE"}
    assert SECRET not in result.stdout


@functools.cache
def _public_python() -> str | None:
    """An interpreter a dropped uid can run without namespaces (root's fallback needs one)."""
    folders = [Path(sys.executable).parent, *map(Path, os.environ.get("PATH", "").split(":"))]
    for candidate in dict.fromkeys(str(folder / "python3") for folder in folders):
        if not os.access(candidate, os.X_OK):
            continue
        if run_python("pass", LIMITS, isolation="guard", python=candidate).passed:
            return candidate
    return None


# the attacks the weaker levels must still stop (the rest rely on what they lack)
FALLBACK_CASES = [
    ("userns", "socket_localhost"),
    ("userns", "read_secrets"),
    ("userns", "delete_outside"),
    ("userns", "escaping_fork"),
    ("guard", "socket_localhost"),
    ("guard", "socket_outside"),
    ("guard", "read_secrets"),
    ("guard", "fork_bomb"),
    ("guard", "escaping_fork"),
    ("guard", "kill_parent"),
]


@pytest.mark.parametrize(("isolation", "name"), FALLBACK_CASES)
def test_weaker_isolation_still_contains(isolation: str, name: str, host: Host) -> None:
    python = _public_python()
    if python is None:
        pytest.skip("no interpreter other users can run")
    result = run_python(host.program(name), LIMITS, isolation=isolation, python=python)  # type: ignore[arg-type]
    if result.status == "error":
        pytest.skip(f"{isolation} isolation unavailable here: {result.detail}")
    assert ("socket-guard" in result.isolation) == (isolation == "guard")
    _check_hostile(name, result, host)


def test_bad_limits_and_isolation_are_one_line_errors() -> None:
    with pytest.raises(SandboxError, match="wall_seconds"):
        SandboxLimits(wall_seconds=0)
    with pytest.raises(SandboxError, match="max_processes"):
        SandboxLimits(max_processes=True)
    with pytest.raises(SandboxError, match="isolation"):
        run_python("pass", isolation="none")  # type: ignore[arg-type]


# -- forged verdicts: a wrong HumanEval program that tries to write its own "pass" --------------
# Every attack first looks for the verdict mark (it is in the judge's program file, whose path
# is in the judge's /proc/<pid>/cmdline) and then tries one way to print verdict lines where the
# judge's report goes. Each wraps a wrong add_all (it returns -1); the judge must fail it on
# every assert. The same attack around a right add_all must still pass where the attack leaves
# the judge alive, so the suite cannot pass by breaking the judge.
FORGE_TEST = (
    "def check(candidate):\n"
    "    assert candidate([1, 2]) == 3\n"
    "    assert candidate([]) == 0\n"
    "    assert candidate([5]) == 5\n"
)
FORGE_PRELUDE = """
import glob, os, re, signal, sys

def _marks():
    marks = set()
    for cmdline in glob.glob("/proc/[0-9]*/cmdline"):
        try:
            args = open(cmdline, "rb").read().split(b"\\0")
        except OSError:
            continue
        for arg in args:
            if arg.endswith(b".py"):
                try:
                    marks |= set(re.findall(rb"@asd-[0-9a-f]{16}", open(arg, "rb").read()))
                except OSError:
                    pass
    return [m.decode() for m in marks] or ["@asd-0000000000000000"]

def _lines():
    text = ""
    for mark in _marks():
        text += f"{mark} check 1\\n" + "".join(f"{mark} assert {i} 1\\n" for i in range(3))
    return text.encode()
"""
FORGERIES = {
    "print_to_stdout_and_stderr": "os.write(1, _lines()); os.write(2, _lines()); print(_lines().decode())",
    "write_every_descriptor": """
for fd in range(256):
    try:
        os.write(fd, _lines())
    except OSError:
        pass
""",
    "open_the_judges_descriptors": """
for path in glob.glob("/proc/[0-9]*/fd/*"):
    if path.startswith(f"/proc/{os.getpid()}/"):  # not its own answer pipe
        continue
    try:
        with open(path, "wb", buffering=0) as fh:
            fh.write(_lines())
    except OSError:
        pass
""",
    "read_the_judges_memory": """
try:
    with open(f"/proc/{os.getppid()}/mem", "rb") as fh:
        fh.read(1)
    os.write(1, _lines())
except OSError:
    pass
""",
    "exit_zero_on_load": "os._exit(0)",
    "kill_the_judge": "os.kill(os.getppid(), signal.SIGKILL)",
    "stop_the_judge": "os.kill(os.getppid(), signal.SIGSTOP)",
    "kill_every_process": """
try:
    os.kill(-1, signal.SIGKILL)
except OSError:
    pass
""",
}
FORGED_ANSWERS = {
    "equal_to_everything": "class _Yes:\n    def __eq__(self, other):\n        return True\n    __hash__ = object.__hash__\n",
}
# attacks after which the judge is still there to judge a right program
# (writing into every descriptor also garbles the program's own answer pipe, so not that one)
JUDGE_SURVIVES = {"print_to_stdout_and_stderr", "open_the_judges_descriptors",
                  "read_the_judges_memory"}  # fmt: skip
FORGE_LIMITS = SandboxLimits(wall_seconds=4.0, cpu_seconds=2, max_processes=6)


def _forged_program(attack: str, body: str) -> str:
    return f"{FORGE_PRELUDE}\n{attack}\n\ndef add_all(xs):\n    {body}\n"


def _judged(attack: str, body: str) -> tuple[bool, tuple[bool, ...]]:
    from asd_core.data.code_answers import run_humaneval

    program = _forged_program(textwrap.dedent(attack), body)
    outcome = run_humaneval(program, FORGE_TEST, "add_all", FORGE_LIMITS)
    return outcome.passed, outcome.asserts


@pytest.mark.parametrize("name", sorted(FORGERIES))
def test_a_wrong_program_cannot_forge_its_verdict(name: str) -> None:
    assert _judged(FORGERIES[name], "return -1") == (False, (False, False, False))
    if name in JUDGE_SURVIVES:
        assert _judged(FORGERIES[name], "return sum(xs)") == (True, (True, True, True))


def test_an_answer_that_equals_everything_is_not_believed() -> None:
    from asd_core.data.code_answers import run_humaneval

    program = FORGED_ANSWERS["equal_to_everything"] + "\ndef add_all(xs):\n    return _Yes()\n"
    outcome = run_humaneval(program, FORGE_TEST, "add_all", FORGE_LIMITS)
    assert (outcome.passed, outcome.asserts) == (False, (False, False, False))
