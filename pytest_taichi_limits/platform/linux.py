"""Small Linux process controls (prctl, /proc reads); no-ops where they do not exist."""

from __future__ import annotations

import ctypes
import ctypes.util
import fcntl
import os
import sys
from functools import lru_cache
from typing import Any

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
_FALLOC_FL_KEEP_SIZE = 1


@lru_cache(maxsize=1)
def _libc() -> Any:
    name = ctypes.util.find_library("c")
    if name is None or not sys.platform.startswith("linux"):
        return None
    return ctypes.CDLL(name, use_errno=True)


def set_child_subreaper(enabled: bool) -> bool:
    """Make orphaned descendants re-parent to this process instead of init."""
    libc = _libc()
    return libc is not None and libc.prctl(_PR_SET_CHILD_SUBREAPER, int(enabled), 0, 0, 0) == 0


def set_parent_death_signal(signum: int) -> bool:
    libc = _libc()
    return libc is not None and libc.prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0) == 0


def signal_main_thread(pid: int, signum: int) -> bool:
    """Send `signum` to the main thread of process `pid` (tgkill), not to whichever of its
    threads the kernel picks. CPython runs a Python handler in its main thread only, and a
    signal another thread took (a Taichi worker's, the first to run after a SIGCONT) may not
    reach it while the main thread sleeps or holds the GIL in a loop (CPython 3.11). False
    where it could not be sent (gone, no tgkill): the caller then uses kill."""
    libc = _libc()
    tgkill = None if libc is None else getattr(libc, "tgkill", None)
    return tgkill is not None and tgkill(pid, pid, signum) == 0


def preallocate(fd: int, size: int) -> bool:
    """Allocate a file's pages up to `size` without changing its size (fallocate with
    FALLOC_FL_KEEP_SIZE): the pages are charged to this process's memory cgroup, so a writer
    in another cgroup that is at its limit can still fill them."""
    libc = _libc()
    if libc is None:
        return False
    done = libc.fallocate(fd, _FALLOC_FL_KEEP_SIZE, ctypes.c_long(0), ctypes.c_long(size))
    return bool(done == 0)


def enlarge_pipe(fd: int, size: int = 1 << 20) -> None:
    """Let a child write this much before it blocks, so the parent can read in batches."""
    try:
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, size)
    except (AttributeError, OSError):
        pass  # not Linux, or above /proc/sys/fs/pipe-max-size: the default 64 KiB still works


def rss_bytes(pid: int | str = "self") -> int:
    """Resident memory of one process, 0 when it cannot be read."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, IndexError, ValueError):
        return 0


def reset_peak_rss(pid: int) -> bool:
    """Start the kernel's peak-RSS count (VmHWM) of `pid` again from its current RSS, so that
    the peak of one test in a child that runs several is the kernel's exact figure."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes(pid: int | str = "self") -> int:
    """The kernel's peak RSS of one process (VmHWM) since it started or since
    `reset_peak_rss`; 0 when it cannot be read."""
    try:
        with open(f"/proc/{pid}/status", "rb") as handle:
            for line in handle:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, IndexError, ValueError):
        pass
    return 0


def process_state(pid: int) -> str:
    """The state letter of /proc/<pid>/stat (R, S, T for stopped, Z, ...); "" when gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            text = handle.read()
        return text[text.rindex(b")") + 2 :].split()[0].decode()
    except (OSError, ValueError, IndexError):
        return ""


#: The number of read(2), which `os.read` calls, per machine (asm/unistd.h): where it is not
#: known, `blocked_reading` cannot tell.
_READ_SYSCALLS = {
    "x86_64": b"0",
    "aarch64": b"63",
    "arm64": b"63",
    "riscv64": b"63",
    "i686": b"3",
    "armv7l": b"3",
    "ppc64le": b"3",
    "s390x": b"3",
}
_READ_SYSCALL = _READ_SYSCALLS.get(os.uname().machine)


def blocked_reading(pid: int, inode: int) -> bool | None:
    """Whether the main thread of `pid` is blocked in read(2) on the file (a socket, a pipe)
    whose inode is `inode`, as the kernel sees it (/proc/<pid>/syscall; no word from the
    process itself). None: this machine cannot tell (the file is not readable here, e.g.
    without ptrace access, or the read syscall's number is not known)."""
    if _READ_SYSCALL is None:
        return None
    try:
        with open(f"/proc/{pid}/syscall", "rb") as handle:
            fields = handle.read().split()
    except (FileNotFoundError, ProcessLookupError):
        # Gone, it waits for nothing; but a kernel without the file (no
        # CONFIG_HAVE_ARCH_TRACEHOOK, a sandbox's /proc) cannot tell.
        return None if os.path.exists(f"/proc/{pid}") else False
    except OSError:
        return None
    # "running", or the syscall number and its six arguments in hex, then sp and pc.
    if len(fields) < 2 or fields[0] != _READ_SYSCALL:
        return False
    try:
        target = os.readlink(f"/proc/{pid}/fd/{int(fields[1], 16)}")
    except (OSError, ValueError):
        return False
    return target.endswith(f":[{inode}]")


def open_fd_count(pid: int) -> int | None:
    """How many files `pid` holds open; None when /proc cannot show it."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def thread_count(pid: int) -> int | None:
    """How many threads `pid` runs; None when /proc cannot show it."""
    try:
        return len(os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return None


def trim_heap() -> bool:
    """Give the C library's free heap memory back to the kernel (glibc's malloc_trim), so that
    what a process holds is what it uses, not what its allocator keeps for later; False where
    there is no malloc_trim (another C library)."""
    libc = _libc()
    trim = getattr(libc, "malloc_trim", None) if libc is not None else None
    if trim is None:
        return False
    trim(0)
    return True
