"""The sandbox's child side: confine this process as far as the kernel allows, then exec the program.

:mod:`asd_core.data.sandbox` ships this file's source to a fresh ``python -I -S -c`` interpreter
and appends a call to :func:`main` with the plan, so it imports nothing but the standard library,
and everything is imported before the uid is dropped. It writes one JSON object to
``plan["report_fd"]``: ``{"isolation": ...}`` just before exec, or ``{"error": ...,
"namespaces_failed": ...}`` and exit status 121 when it refuses to run the program.

In order (:func:`main`): enter fresh namespaces (root's own, else a user namespace), make the
file system read-only with a size-capped tmpfs as the working folder, fork an init that is PID 1
of the new PID namespace, drop to the program's uid, set ``no_new_privs`` and the rlimits, exec.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import resource
import signal
from typing import Any

CLONE_NEWNS, CLONE_NEWIPC, CLONE_NEWUSER = 0x00020000, 0x08000000, 0x10000000
CLONE_NEWPID, CLONE_NEWNET = 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
# flags a bind remount must repeat, or the kernel refuses it inside a user namespace
STICKY_FLAGS = {
    "nosuid": MS_NOSUID,
    "nodev": MS_NODEV,
    "noexec": MS_NOEXEC,
    "noatime": 1024,
    "nodiratime": 2048,
    "relatime": 1 << 21,
}
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_NO_NEW_PRIVS = 1, 4, 38
REFUSED = 121  # exit status when the program is not run


def exit_like(status: int) -> None:
    """End this process the way the wait status says a child ended."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig not in (signal.SIGKILL, signal.SIGSTOP):
            signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
        os._exit(128 + sig)
    os._exit(os.waitstatus_to_exitcode(status))


def wait_for(child: int) -> int:
    """Reap every child (as PID 1 that includes orphans) until ``child`` ends; its status."""
    while True:
        pid, status = os.waitpid(-1, 0)
        if pid == child:
            return status


def mount_points() -> list[tuple[str, int]]:
    """Every mount point with the flags a bind remount of it must repeat."""
    points = []
    with open("/proc/self/mountinfo") as table:
        for line in table:
            columns = line.split()
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), columns[4])
            points.append((point, sum(STICKY_FLAGS.get(o, 0) for o in columns[5].split(","))))
    return points


class Confinement:
    """One program's confinement: the plan, libc, the uid it runs as, what was achieved."""

    def __init__(self, plan: dict[str, Any]):
        self.plan = plan
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.limits = plan["limits"]
        self.is_root = os.geteuid() == 0
        self.uid = plan["uid"] if self.is_root else os.getuid()
        self.gid = plan["uid"] if self.is_root else os.getgid()
        self.mechanisms: list[str] = []
        self.namespace: str | None = None  # "root": root's own rights; "user": a user namespace
        self.dropped = False

    def check(self, status: int, what: str) -> None:
        if status != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"{what}: {os.strerror(errno)}")

    def mount(
        self, source: str | None, target: str, kind: str | None, flags: int, data: str = ""
    ) -> None:
        def raw(text: str | None) -> bytes | None:
            return None if text is None else text.encode()

        status = self.libc.mount(
            raw(source), raw(target), raw(kind), ctypes.c_ulong(flags), raw(data or None)
        )
        self.check(status, f"mount {target}")

    def report(self, **fields: object) -> None:
        os.write(self.plan["report_fd"], json.dumps(fields).encode())
        os.close(self.plan["report_fd"])

    def refuse(self, reason: str, namespaces_failed: bool = False) -> None:
        self.report(error=reason, namespaces_failed=namespaces_failed)
        os._exit(REFUSED)

    def drop_uid(self) -> None:
        os.setgroups([])
        os.setgid(self.gid)
        os.setuid(self.uid)
        self.dropped = True
        # a uid change makes /proc/self root's, and the user namespace maps are written there
        self.check(self.libc.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0), "prctl dumpable")

    def owned(self, pid: str) -> bool:
        try:
            return os.stat(f"/proc/{pid}").st_uid == self.uid
        except OSError:
            return False

    def stay_out_of_the_way(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)  # the grace period is the program's, not ours
        os.close(self.plan["report_fd"])

    def enter_namespaces(self) -> None:
        """Fresh mount, network, PID and IPC namespaces: root's own, else a user namespace."""
        flags = CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC
        mode = self.plan["mode"]
        if mode == "auto" and self.is_root and self.libc.unshare(flags) == 0:
            self.namespace = "root"
        elif mode != "guard" and (not self.is_root or self.plan["interpreter_public"]):
            if self.is_root:
                self.drop_uid()
            if self.libc.unshare(CLONE_NEWUSER | flags) == 0:
                self.namespace = "user"
                self.mechanisms.append("userns")

    def confine_files(self, expose: list[list[Any]] | None) -> None:
        """Everything read-only, the interpreter's own folders exposed, a tmpfs to work in."""
        self.mount(None, "/", None, MS_REC | MS_PRIVATE)
        for point, flags in mount_points():
            try:
                self.mount(None, point, None, MS_REMOUNT | MS_BIND | MS_RDONLY | flags)
            except OSError:
                if point == "/":
                    raise  # other mount points are best effort (some vanish or are locked)
        for cover, folders in expose or []:
            handles = [os.open(f, os.O_PATH | os.O_DIRECTORY) for f in folders]
            self.mount("tmpfs", cover, "tmpfs", MS_NOSUID | MS_NODEV, "size=64k,mode=0755")
            for folder, handle in zip(folders, handles, strict=True):
                os.makedirs(folder, exist_ok=True)
                self.mount(f"/proc/self/fd/{handle}", folder, None, MS_BIND | MS_REC)
                self.mount(None, folder, None, MS_REMOUNT | MS_BIND | MS_RDONLY)
                os.close(handle)
            self.mount(None, cover, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
        work = self.plan["work"]
        quota = f"size={self.limits['disk_bytes']},mode=0700,uid={self.uid},gid={self.gid}"
        self.mount("tmpfs", work, "tmpfs", MS_NOSUID | MS_NODEV, quota)
        os.mkdir(os.path.join(work, "tmp"), 0o700)
        os.chown(os.path.join(work, "tmp"), self.uid, self.gid)

    def set_up_namespaces(self) -> None:
        """Map the uid (user namespace) and confine the files; refuse when either fails."""
        try:
            if self.namespace == "user":
                for name, text in (
                    ("setgroups", "deny"),
                    ("uid_map", f"{self.uid} {self.uid} 1"),
                    ("gid_map", f"{self.gid} {self.gid} 1"),
                ):
                    with open(f"/proc/self/{name}", "w") as handle:
                        handle.write(text)
            self.confine_files(self.plan["expose"] if self.namespace == "root" else None)
        except OSError as err:
            self.refuse(f"namespace set-up failed: {err}", namespaces_failed=True)
        self.mechanisms += ["netns", "mountns", "pidns", "ipcns"]

    def fork_init(self) -> None:
        """Become the program's grandparent: only the grandchild returns from here.

        Three processes: this bootstrap waits outside the namespaces; its child is PID 1 inside,
        reaps orphans and passes on the program's wait status (PID 1 could not die of a signal
        to mirror it); the grandchild becomes the program. The program is not PID 1 itself
        because PID 1 ignores signals it has no handler for, SIGXCPU included.
        """
        status_read, status_write = os.pipe()
        init = os.fork()
        if init:
            os.close(status_write)
            self.stay_out_of_the_way()
            init_status = os.waitpid(init, 0)[1]
            passed_on = os.read(status_read, 32)
            exit_like(int(passed_on) if passed_on else init_status)
        os.close(status_read)
        self.check(self.libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl pdeathsig")
        try:
            self.mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
            self.mechanisms.append("procfs")
        except OSError:
            pass  # the host's /proc stays; the uid or permissions still guard other processes
        program_pid = os.fork()
        if program_pid:
            self.stay_out_of_the_way()
            os.write(status_write, str(wait_for(program_pid)).encode())
            os._exit(0)  # the kernel now kills whatever is left in the namespace
        os.close(status_write)

    def leave_root(self) -> None:
        """Root runs the program as its own uid, or refuses when nothing could bound it."""
        if self.is_root and not self.dropped:
            exposed = self.namespace == "root" and self.plan["expose"] is not None
            if self.plan["interpreter_public"] or exposed:
                self.drop_uid()
            else:
                self.refuse(
                    "running as root without namespaces, and other users cannot run the "
                    "interpreter, so the process count cannot be limited"
                )
        if self.dropped:
            self.mechanisms.append("uid")

    def set_limits(self) -> None:
        """``no_new_privs`` and the rlimits, each capped at the hard limit already in force."""
        self.check(self.libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl no_new_privs")
        limits = self.limits
        processes = limits["max_processes"]
        if self.namespace == "user":
            processes += 2  # the bootstrap and PID 1 run as this uid in this namespace too
        elif not self.dropped:  # no private count: the limit covers every process of this user
            processes += sum(1 for p in os.listdir("/proc") if p.isdigit() and self.owned(p))
        for resource_id, value in (
            (resource.RLIMIT_CPU, (limits["cpu_seconds"], limits["cpu_seconds"] + 1)),
            (resource.RLIMIT_AS, limits["memory_bytes"]),
            (resource.RLIMIT_FSIZE, limits["file_bytes"]),
            (resource.RLIMIT_NOFILE, limits["max_open_files"]),
            (resource.RLIMIT_NPROC, processes),
            (resource.RLIMIT_CORE, 0),
        ):
            soft, hard = value if isinstance(value, tuple) else (value, value)
            current_hard = resource.getrlimit(resource_id)[1]
            if current_hard != resource.RLIM_INFINITY:
                soft, hard = min(soft, current_hard), min(hard, current_hard)
            resource.setrlimit(resource_id, (soft, hard))
        self.mechanisms.append("rlimits")

    def exec_program(self) -> None:
        plan = self.plan
        python, program = plan["python"], plan["program"]
        argv = [python, "-I", "-B", program]
        if "netns" not in self.mechanisms:
            self.mechanisms.append("socket-guard")
            argv = [python, "-I", "-B", "-c", plan["guard"], program]
        os.chdir(plan["work"])
        self.report(isolation="+".join(self.mechanisms))
        os.execve(python, argv, plan["env"])


def main(plan: dict[str, Any]) -> None:
    """Confine this process as the plan says, then exec the program (never returns)."""
    confinement = Confinement(plan)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # mirroring SIGXCPU must not dump core
    confinement.enter_namespaces()
    if confinement.namespace is not None:
        confinement.set_up_namespaces()
        confinement.fork_init()
    confinement.leave_root()
    confinement.set_limits()
    confinement.exec_program()
