"""A cgroup v2 per test, where this process may make one: the kernel's own memory figure and cap.

Where the unified hierarchy (cgroup v2) is mounted and this process's cgroup is writable with the
memory controller delegated, each supervised test runs in a cgroup of its own, made under ours.
The plugin's keeper process moves itself into it before it forks the test, so every process the
test ever starts is born inside, and stays inside whatever it does with its parent (a process
can leave a cgroup only by writing to another cgroup's cgroup.procs, which needs write access to
it). Then:

- `memory.stat` gives the test's anonymous and shared memory (`anon` + `shmem`, tmpfs files and
  memfds included: a page is charged to the cgroup that first touched it; copy-on-write copies
  of inherited pages are new pages, charged here) at the cost of one small read;
- `memory.max` is a hard cap the kernel enforces between two samples (it reclaims the page cache
  first, then kills inside the cgroup: `memory.events` counts `oom_kill`);
- `cgroup.kill` ends every process of the test, re-parented or not.

Where any of this is missing (cgroup v1 or hybrid, a read-only /sys/fs/cgroup, the memory
controller not delegated, a cgroup with processes that cannot enable controllers for its
children) `detect` says why and the supervisor measures through /proc (measure/memory.py).
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass

CGROUP_ROOT = "/sys/fs/cgroup"


@dataclass(frozen=True)
class CgroupSupport:
    """Where per-test cgroups can be made: a writable cgroup v2 directory with memory."""

    parent: str


def own_cgroup_path(proc_self_cgroup: str) -> str | None:
    """The v2 path in /proc/self/cgroup ("0::/path"); None when there is no v2 entry."""
    for line in proc_self_cgroup.splitlines():
        if line.startswith("0::"):
            return line[3:].strip() or "/"
    return None


def _read(path: str) -> str | None:
    try:
        with open(path) as handle:
            return handle.read()
    except OSError:
        return None


def _write(path: str, text: str) -> None:
    with open(path, "w") as handle:
        handle.write(text)


def detect(root: str = CGROUP_ROOT, proc_self_cgroup: str | None = None) -> CgroupSupport | str:
    """Where per-test cgroups can be made, or why not (a sentence for the report)."""
    if _read(os.path.join(root, "cgroup.controllers")) is None:
        return f"no cgroup v2 at {root} (cgroup v1 or hybrid)"
    if proc_self_cgroup is None:
        proc_self_cgroup = _read("/proc/self/cgroup") or ""
    path = own_cgroup_path(proc_self_cgroup)
    if path is None:
        return "this process is in no cgroup v2"
    own = os.path.join(root, path.lstrip("/"))
    controllers = (_read(os.path.join(own, "cgroup.controllers")) or "").split()
    if "memory" not in controllers:
        return f"the memory controller is not delegated to {own}"
    if not os.access(own, os.W_OK):
        return f"{own} is not writable"
    enabled = (_read(os.path.join(own, "cgroup.subtree_control")) or "").split()
    if "memory" not in enabled:
        try:
            _write(os.path.join(own, "cgroup.subtree_control"), "+memory")
        except OSError as error:
            # EBUSY: a cgroup with processes of its own cannot give controllers to children
            return f"cannot enable the memory controller below {own}: {error.strerror}"
    return CgroupSupport(own)


@dataclass
class TestCgroup:
    """One test's cgroup."""

    path: str

    @classmethod
    def create(cls, support: CgroupSupport, name: str) -> TestCgroup:
        path = os.path.join(support.parent, name)
        os.mkdir(path)
        made = cls(path)
        if _read(made.file("memory.current")) is None:
            made.remove()
            raise OSError(f"{path} has no memory controller")
        return made

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    def procs_file(self) -> str:
        """Writing "0" here moves the writing process in (the keeper does, before it forks)."""
        return self.file("cgroup.procs")

    def add(self, pid: int) -> None:
        _write(self.procs_file(), str(pid))

    def stat(self) -> dict[str, int]:
        figures: dict[str, int] = {}
        for line in (_read(self.file("memory.stat")) or "").splitlines():
            name, _, value = line.partition(" ")
            if value.strip().isdigit():
                figures[name] = int(value)
        return figures

    def held_bytes(self) -> int | None:
        """Anonymous plus shared memory (tmpfs, memfd, MAP_SHARED) charged to the test."""
        figures = self.stat()
        if "anon" not in figures:
            return None
        return figures["anon"] + figures.get("shmem", 0)

    def current_bytes(self) -> int | None:
        text = _read(self.file("memory.current"))
        return int(text) if text and text.strip().isdigit() else None

    def peak_bytes(self) -> int | None:
        """memory.peak (Linux 5.19+): every charge, page cache included; an upper bound."""
        text = _read(self.file("memory.peak"))
        return int(text) if text and text.strip().isdigit() else None

    def set_max(self, limit_bytes: int | None) -> None:
        _write(self.file("memory.max"), "max" if limit_bytes is None else str(limit_bytes))

    def oom_kills(self) -> int:
        for line in (_read(self.file("memory.events")) or "").splitlines():
            name, _, value = line.partition(" ")
            if name == "oom_kill" and value.strip().isdigit():
                return int(value)
        return 0

    def pids(self) -> list[int]:
        return [int(word) for word in (_read(self.procs_file()) or "").split()]

    def kill(self, rounds: int = 50) -> None:
        """Every process in the cgroup, however it was re-parented."""
        try:
            _write(self.file("cgroup.kill"), "1")  # Linux 5.14+
            return
        except OSError:
            pass
        for _ in range(rounds):
            pids = self.pids()
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            time.sleep(0.001)

    def remove(self, wait_s: float = 1.0) -> bool:
        """rmdir, once the killed processes have left (they leave as they are reaped)."""
        deadline = time.monotonic() + wait_s
        while True:
            try:
                os.rmdir(self.path)
                return True
            except FileNotFoundError:
                return True
            except OSError:
                if time.monotonic() > deadline:
                    return False
                time.sleep(0.005)
