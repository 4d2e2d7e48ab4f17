"""A memory cgroup per worker (cgroup v2 or v1), where this process may make one.

Where a memory cgroup of this pytest process is writable (cgroup v2 with the memory controller
delegated, or the cgroup v1 memory hierarchy, as root), each supervised worker runs in a cgroup
of its own, made under ours. The plugin's keeper (the zygote's worker in spawn mode) moves
itself in before it forks the test, so every process the test ever starts is born inside, and
stays inside whatever it does with its parent. Then the kernel keeps the figures:

- the memory the test holds: anonymous + shared memory from `memory.stat` (v2 `anon` +
  `shmem`, v1 `rss` + `shmem` + `swap`): tmpfs files and memfds included, page cache not (it is
  reported apart). A page is charged to the cgroup that first touched it: a copy-on-write copy
  of an inherited page is the test's, another process's /dev/shm file is not. One small read.
- a hard cap the kernel enforces between two samples: v1 `memory.limit_in_bytes` with the OOM
  killer disabled (`memory.oom_control`), so the test's tasks wait at the cap while the
  supervisor takes their stack (an eventfd wakes it at once); v2 `memory.high` throttles the
  test at the limit and `memory.max` above it is the backstop.
- the end: every process of the cgroup killed (v2 `cgroup.kill`; v1 by `cgroup.procs` until
  empty, with a deadline), then the cgroup removed. A cgroup whose owner (the pytest process
  that made it, named in the cgroup's name with its start time) is gone is swept away at the
  next start-up, so a SIGKILL of pytest leaves nothing behind for long.

Where none of this is possible, `detect` says why, and the supervisor measures through /proc
(measure/memory.py).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Collection
from dataclasses import dataclass

from .proctree import read_proc, start_ticks

CGROUP_ROOT = "/sys/fs/cgroup"
#: Every cgroup this plugin makes is named `taichi-limits-<owner pid>-<owner start ticks>-<n>`.
NAME_PREFIX = "taichi-limits-"
#: How long the end of a worker may take to kill its cgroup's processes and remove it.
REMOVE_DEADLINE_S = 5.0
#: v1: the test's tasks first wait this far below the cap. The kernel wakes the tasks the cap
#: holds only when the cap is raised: the supervisor gives this room back a step at a time while
#: it waits for the stack dump it asked for, so that a main thread that came to wait after one
#: step (the test's other threads took that room first) is woken by the next.
STACK_RESERVE_BYTES = 1 << 20
STACK_RESERVE_STEP_BYTES = 64 << 10


@dataclass(frozen=True)
class CgroupSupport:
    """Where per-worker memory cgroups can be made: `parent`, on cgroup `version` 1 or 2."""

    parent: str
    version: int = 2

    @property
    def method(self) -> str:
        """The record's `memory_method`: cgroup-v1 or cgroup-v2."""
        return f"cgroup-v{self.version}"


def _read(path: str) -> str | None:
    try:
        with open(path) as handle:
            return handle.read()
    except OSError:
        return None


def _write(path: str, text: str) -> None:
    with open(path, "w") as handle:
        handle.write(text)


def own_cgroup_path(proc_self_cgroup: str) -> str | None:
    """The v2 path in /proc/self/cgroup ("0::/path"); None when there is no v2 entry."""
    for line in proc_self_cgroup.splitlines():
        if line.startswith("0::"):
            return line[3:].strip() or "/"
    return None


def own_v1_memory_path(proc_self_cgroup: str) -> str | None:
    """The v1 memory controller's path in /proc/self/cgroup ("4:memory:/path")."""
    for line in proc_self_cgroup.splitlines():
        words = line.split(":", 2)
        if len(words) == 3 and "memory" in words[1].split(","):
            return words[2].strip() or "/"
    return None


def mount_point(kind: str, option: str | None, mounts_text: str) -> str | None:
    """Where a filesystem of type `kind` (cgroup2; cgroup with `option`) is mounted."""
    for line in mounts_text.splitlines():
        words = line.split()
        if len(words) < 4 or words[2] != kind:
            continue
        if option is None or option in words[3].split(","):
            return words[1]
    return None


def detect(
    root: str = CGROUP_ROOT,
    proc_self_cgroup: str | None = None,
    mounts_text: str | None = None,
) -> CgroupSupport | str:
    """Where per-worker memory cgroups can be made (v2 first, then v1), or why not: one
    sentence for the header and every record."""
    if proc_self_cgroup is None:
        proc_self_cgroup = _read("/proc/self/cgroup") or ""
    if mounts_text is None:
        mounts_text = _read("/proc/self/mounts") or ""
    v2 = detect_v2(root, proc_self_cgroup, mounts_text)
    if isinstance(v2, CgroupSupport):
        return v2
    v1 = detect_v1(proc_self_cgroup, mounts_text)
    if isinstance(v1, CgroupSupport):
        return v1
    return f"no usable memory cgroup (cgroup v2: {v2}; cgroup v1: {v1})"


def detect_v2(root: str, proc_self_cgroup: str, mounts_text: str) -> CgroupSupport | str:
    if _read(os.path.join(root, "cgroup.controllers")) is None:
        # Hybrid layouts mount the unified hierarchy elsewhere (/sys/fs/cgroup/unified).
        unified = mount_point("cgroup2", None, mounts_text)
        if unified is None or _read(os.path.join(unified, "cgroup.controllers")) is None:
            return f"not mounted at {root}"
        root = unified
    path = own_cgroup_path(proc_self_cgroup)
    if path is None:
        return "this process is in no cgroup v2"
    own = os.path.join(root, path.lstrip("/"))
    if owner_of(os.path.basename(own)) is not None:
        # The leaf this session's pytest moved itself into (below): an xdist worker started
        # there makes its workers' cgroups beside it, in the delegated cgroup above.
        own = os.path.dirname(own)
    controllers = (_read(os.path.join(own, "cgroup.controllers")) or "").split()
    if "memory" not in controllers:
        return f"the memory controller is not delegated to {own}"
    if not os.access(own, os.W_OK):
        return f"{own} is not writable"
    enabled = (_read(os.path.join(own, "cgroup.subtree_control")) or "").split()
    if "memory" in enabled:
        return CgroupSupport(own, 2)
    try:
        _write(os.path.join(own, "cgroup.subtree_control"), "+memory")
    except OSError as error:
        # EBUSY: a cgroup with processes of its own cannot give controllers to children.
        if not _leave_for_a_leaf(own):
            return (
                f"cannot enable the memory controller below {own} ({error.strerror}): other "
                "processes share it; run pytest in a delegated cgroup of its own "
                "(docs/memory.md)"
            )
    return CgroupSupport(own, 2)


def _leave_for_a_leaf(own: str) -> bool:
    """Where this process is alone in a delegated cgroup (`systemd-run --scope -p Delegate=yes
    pytest`), move it into a leaf of its own so that `own` may give the memory controller to
    the workers' cgroups made beside it; processes that are not ours are never moved."""
    if (_read(os.path.join(own, "cgroup.procs")) or "").split() != [str(os.getpid())]:
        return False
    leaf = os.path.join(own, cgroup_name(0))
    try:
        os.mkdir(leaf)
        _write(os.path.join(leaf, "cgroup.procs"), "0")
        _write(os.path.join(own, "cgroup.subtree_control"), "+memory")
    except OSError:
        return False
    return True


def detect_v1(proc_self_cgroup: str, mounts_text: str) -> CgroupSupport | str:
    mount = mount_point("cgroup", "memory", mounts_text)
    if mount is None:
        return "no memory controller mounted"
    path = own_v1_memory_path(proc_self_cgroup)
    if path is None:
        return "this process is in no v1 memory cgroup"
    own = os.path.join(mount, path.lstrip("/"))
    if not os.path.isdir(own):
        # A container that mounts its own cgroup at the hierarchy's root shows the host's
        # path in /proc/self/cgroup: the mount itself is then ours.
        own = mount
    if not os.access(os.path.join(own, "cgroup.procs"), os.W_OK):
        return f"{own} is not writable (making a memory cgroup on v1 needs root)"
    probe = os.path.join(own, f"{NAME_PREFIX}probe-{os.getpid()}")
    try:
        os.mkdir(probe)
    except FileExistsError:
        pass
    except OSError as error:
        return f"cannot make a cgroup in {own}: {error.strerror}"
    try:
        usable = _read(os.path.join(probe, "memory.stat")) is not None
    finally:
        try:
            os.rmdir(probe)
        except OSError:
            pass
    return CgroupSupport(own, 1) if usable else f"{own} has no memory controller files"


# -- naming, owners and the stale-cgroup sweep ----------------------------------------------------


def own_start_ticks(pid: int | None = None) -> int:
    """When a process started (clock ticks after boot): with its pid, its identity."""
    stat = read_proc(f"/proc/{pid or os.getpid()}/stat", 1024) or b""
    try:
        return start_ticks(stat)
    except (ValueError, IndexError):
        return 0


def cgroup_name(number: int, owner_pid: int | None = None) -> str:
    owner = owner_pid or os.getpid()
    return f"{NAME_PREFIX}{owner}-{own_start_ticks(owner)}-{number}"


def owner_of(name: str, prefix: str = NAME_PREFIX) -> tuple[int, int] | None:
    """(owner pid, owner start ticks) from the name of a cgroup (or of anything named
    `prefix` + "pid-ticks-suffix"); None for a name not ours."""
    if not name.startswith(prefix):
        return None
    words = name[len(prefix) :].split("-")
    if len(words) != 3 or not (words[0].isdigit() and words[1].isdigit()):
        return None
    return int(words[0]), int(words[1])


def owner_alive(pid: int, ticks: int) -> bool:
    """The same process (pid and start time) still runs: a recycled pid is not the owner."""
    stat = read_proc(f"/proc/{pid}/stat", 1024)
    if not stat:
        return False
    try:
        return start_ticks(stat) == ticks
    except (ValueError, IndexError):
        return False


def sweep_stale(parent: str, deadline_s: float = REMOVE_DEADLINE_S) -> list[str]:
    """Kill the processes of, and remove, every cgroup of ours under `parent` whose owner is
    gone (a pytest killed by SIGKILL cannot clean up); return the paths removed. A cgroup of a
    live owner (another xdist worker, another session) is left alone."""
    removed: list[str] = []
    try:
        names = os.listdir(parent)
    except OSError:
        return removed
    for name in names:
        owner = owner_of(name)
        if owner is None or owner_alive(*owner):
            continue
        stale = open_cgroup(os.path.join(parent, name))
        if stale.kill(deadline_s) and stale.remove(deadline_s):
            removed.append(stale.path)
        stale.close()
    return removed


# -- one worker's cgroup ------------------------------------------------------------------------


def _number(text: bytes | str | None) -> int | None:
    if not text:
        return None
    word = text.strip()
    return int(word) if word.isdigit() else None


def _field(stat: bytes, name: bytes) -> int:
    """The value of one `name value` line of a memory.stat-like text (0 when absent)."""
    key = name + b" "
    if stat.startswith(key):
        at = 0
    else:
        at = stat.find(b"\n" + key)
        if at < 0:
            return 0
        at += 1
    end = stat.find(b"\n", at)
    value = stat[at + len(key) : end if end >= 0 else len(stat)].strip()
    return int(value) if value.isdigit() else 0


class TestCgroup:
    """One worker's cgroup: the files both versions have, and what differs, in subclasses.

    The files read at every sample (memory.stat, cgroup.procs) stay open and are read with
    pread: about 20 us for memory.stat.
    """

    __test__ = False  # not a pytest test class, whatever its name says
    version = 0

    def __init__(self, path: str) -> None:
        self.path = path
        self._fds: dict[str, int] = {}

    @classmethod
    def create(cls, support: CgroupSupport, name: str) -> TestCgroup:
        path = os.path.join(support.parent, name)
        os.mkdir(path)
        made = (CgroupV1 if support.version == 1 else CgroupV2)(path)
        if made._pread("memory.stat") is None:
            made.remove(0.0)
            made.close()
            raise OSError(f"{path} has no memory controller")
        made.prepare()
        return made

    # -- files ---------------------------------------------------------------------------------

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    def procs_file(self) -> str:
        """Writing "0" here moves the writing process in (the keeper does, before it forks)."""
        return self.file("cgroup.procs")

    def _pread(self, name: str, size: int = 8192) -> bytes | None:
        fd = self._fds.get(name)
        try:
            if fd is None:
                fd = self._fds[name] = os.open(self.file(name), os.O_RDONLY | os.O_CLOEXEC)
            return os.pread(fd, size, 0)
        except OSError:
            return None

    def _write(self, name: str, text: str) -> None:
        _write(self.file(name), text)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    # -- figures -------------------------------------------------------------------------------

    def prepare(self) -> None:
        """Settings made once, when the cgroup is made."""

    def stat(self) -> bytes:
        return self._pread("memory.stat") or b""

    def held_bytes(self) -> int | None:
        """Anonymous and shared memory charged to the cgroup (None: it cannot be read)."""
        raise NotImplementedError

    def page_cache_bytes(self) -> int:
        """File pages charged to the cgroup: reported, never charged to the test."""
        raise NotImplementedError

    def usage_bytes(self) -> int | None:
        """Everything charged to the cgroup: held memory, page cache, kernel memory."""
        raise NotImplementedError

    def reset_peak(self) -> bool:
        """Start the kernel's peak of the charge again (a worker runs several tests)."""
        return False

    def peak_bytes(self) -> int | None:
        """The kernel's peak of the charge since `reset_peak` (or since the cgroup was made)."""
        return None

    def set_cap(self, start_usage_bytes: int, limit_bytes: int | None) -> None:
        """Cap what the cgroup may be charged: `limit_bytes` above the start, a little more."""

    def cap_bytes(self) -> int | None:
        """The cap the kernel enforces now (None: none)."""
        return None

    def release_reserve(self) -> None:
        """Wake the tasks held at the cap, giving them one more step of room below it, so that
        they run the stack dump the supervisor asked for (v1); nothing on v2."""

    def held_at_cap(self) -> bool:
        """Whether the cap holds the test's tasks now (v1: waiting at the limit)."""
        return False

    def cap_event_fd(self) -> int | None:
        """An fd that becomes readable when the test reaches the cap (None: none)."""
        return None

    def oom_kills(self) -> int:
        return 0

    # -- processes -----------------------------------------------------------------------------

    def add(self, pid: int) -> None:
        _write(self.procs_file(), str(pid))

    def pids(self) -> list[int]:
        # Opened afresh each time: v1 keeps the pid list of an open file until it has not
        # been read for a second, so a kept-open cgroup.procs would never see a change.
        text = read_proc(self.procs_file(), 1 << 20) or b""
        return [int(word) for word in text.split()]

    def kill(self, deadline_s: float = REMOVE_DEADLINE_S, spare: Collection[int] = ()) -> bool:
        """SIGKILL every process in the cgroup, however it was re-parented, until it is
        empty (but for `spare`: the plugin's fork server, on its way out) or the deadline
        passes; whether it is. A process that forks meanwhile is born in the cgroup and found
        by the next round."""
        deadline = time.monotonic() + deadline_s
        while True:
            pids = [pid for pid in self.pids() if pid not in spare]
            if not pids:
                return True
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            if time.monotonic() > deadline:
                return not [pid for pid in self.pids() if pid not in spare]
            time.sleep(0.001)

    def remove(self, wait_s: float = 1.0) -> bool:
        """rmdir, once the killed processes have left (they leave as they are reaped)."""
        self.close()
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


class CgroupV2(TestCgroup):
    version = 2

    def prepare(self) -> None:
        try:
            self._write("memory.swap.max", "0")  # swapped-out memory would leave the figure
        except OSError:
            pass

    def held_bytes(self) -> int | None:
        stat = self.stat()
        if b"anon " not in stat:
            return None
        return _field(stat, b"anon") + _field(stat, b"shmem")

    def page_cache_bytes(self) -> int:
        stat = self.stat()
        return max(0, _field(stat, b"file") - _field(stat, b"shmem"))

    def usage_bytes(self) -> int | None:
        return _number(self._pread("memory.current"))

    def reset_peak(self) -> bool:
        # Linux 6.12+: a write to memory.peak restarts the peak seen through that open file.
        fd = self._fds.get("memory.peak")
        try:
            if fd is None:
                fd = self._fds["memory.peak"] = os.open(
                    self.file("memory.peak"), os.O_RDWR | os.O_CLOEXEC
                )
            os.write(fd, b"reset\n")
            return True
        except OSError:
            return False

    def peak_bytes(self) -> int | None:
        return _number(self._pread("memory.peak"))

    def set_cap(self, start_usage_bytes: int, limit_bytes: int | None) -> None:
        if limit_bytes is None:
            self._write("memory.high", "max")
            self._write("memory.max", "max")
            return
        # memory.high throttles the test at the limit (page cache is reclaimed first) while
        # the sampled check fires; memory.max above it is the backstop (an OOM kill in here).
        self._write("memory.high", str(start_usage_bytes + limit_bytes))
        self._write("memory.max", str(start_usage_bytes + limit_bytes + cap_margin(limit_bytes)))

    def cap_bytes(self) -> int | None:
        return _number(self._pread("memory.max"))

    def oom_kills(self) -> int:
        return _field(self._pread("memory.events") or b"", b"oom_kill")

    def kill(self, deadline_s: float = REMOVE_DEADLINE_S, spare: Collection[int] = ()) -> bool:
        if not spare:  # cgroup.kill would take the spared process too
            try:
                self._write("cgroup.kill", "1")  # Linux 5.14+
            except OSError:
                pass
        return super().kill(deadline_s, spare)


class CgroupV1(TestCgroup):
    version = 1

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self._event_fd: int | None = None
        self._limit_bytes: int | None = None
        self._reserve_left_bytes = 0

    def prepare(self) -> None:
        for name, value in (
            ("memory.swappiness", "0"),  # swapped-out memory would leave the figure
            ("memory.move_charge_at_immigrate", "0"),  # the keeper's pages stay pytest's
            # At the cap the tasks wait instead of being killed: the supervisor takes their
            # stack and ends them, and reports it.
            ("memory.oom_control", "1"),
        ):
            try:
                self._write(name, value)
            except OSError:
                pass
        self._event_fd = self._oom_eventfd()

    def _oom_eventfd(self) -> int | None:
        """An eventfd the kernel signals each time the cgroup reaches its limit."""
        try:
            event_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        except (AttributeError, OSError):
            return None
        try:
            control = os.open(self.file("memory.oom_control"), os.O_RDONLY | os.O_CLOEXEC)
            try:
                self._write("cgroup.event_control", f"{event_fd} {control}")
            finally:
                os.close(control)
        except OSError:
            os.close(event_fd)
            return None
        return event_fd

    def held_bytes(self) -> int | None:
        stat = self.stat()
        if b"rss " not in stat:
            return None
        return _field(stat, b"rss") + _field(stat, b"shmem") + _field(stat, b"swap")

    def page_cache_bytes(self) -> int:
        stat = self.stat()
        return max(0, _field(stat, b"cache") - _field(stat, b"shmem"))

    def usage_bytes(self) -> int | None:
        return _number(self._pread("memory.usage_in_bytes"))

    def reset_peak(self) -> bool:
        try:
            self._write("memory.max_usage_in_bytes", "0")  # restarts at the current usage
            return True
        except OSError:
            return False

    def peak_bytes(self) -> int | None:
        return _number(self._pread("memory.max_usage_in_bytes"))

    def set_cap(self, start_usage_bytes: int, limit_bytes: int | None) -> None:
        if limit_bytes is None:
            self._limit_bytes = None
            self._write("memory.limit_in_bytes", "-1")
            return
        cap = start_usage_bytes + limit_bytes + cap_margin(limit_bytes)
        self._limit_bytes, self._reserve_left_bytes = cap, STACK_RESERVE_BYTES
        self._write("memory.limit_in_bytes", str(cap - STACK_RESERVE_BYTES))

    def cap_bytes(self) -> int | None:
        return self._limit_bytes

    def release_reserve(self) -> None:
        if self._limit_bytes is None or not self._reserve_left_bytes or not self.held_at_cap():
            return
        self._reserve_left_bytes = max(0, self._reserve_left_bytes - STACK_RESERVE_STEP_BYTES)
        try:  # a raise of the limit wakes every task waiting at it (memcg1_oom_recover)
            self._write("memory.limit_in_bytes", str(self._limit_bytes - self._reserve_left_bytes))
        except OSError:
            pass

    def held_at_cap(self) -> bool:
        return b"under_oom 1" in (self._pread("memory.oom_control") or b"")

    def cap_event_fd(self) -> int | None:
        return self._event_fd

    def oom_kills(self) -> int:
        return _field(self._pread("memory.oom_control") or b"", b"oom_kill")

    def close(self) -> None:
        super().close()
        if self._event_fd is not None:
            os.close(self._event_fd)
            self._event_fd = None


def cap_margin(limit_bytes: int) -> int:
    """How far above the limit the kernel's cap sits: room for the kernel memory the cgroup is
    charged too (page tables, sockets), so that the sampled check at the limit fires first for
    a test that grows at a pace it can follow."""
    return max(16 << 20, limit_bytes // 32)


def open_cgroup(path: str) -> TestCgroup:
    """A cgroup that exists already (a stale one to sweep): its version from its files."""
    if os.path.exists(os.path.join(path, "cgroup.controllers")):
        return CgroupV2(path)
    return CgroupV1(path)
