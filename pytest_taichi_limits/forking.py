"""The fast start: fork this pytest process; the child runs the tests it is told to, in order.

Two bodies run in such a child: `child.run_forked` (the parent's own collected items), and
`worker.reimport_worker` for a module whose import left Taichi state behind (its modules are
imported again in the child, after the parent reset Taichi, and the child collects them anew).
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable

from . import linux
from .protocol import EXIT_DONE
from .records import Ending
from .supervisor import ExitInfo, TerminateInOrder, control_pair, pidfd_open, stack_file

#: What runs in the child: given (channel fd, stack fd, control fd, parent pid); never returns.
ChildBody = Callable[[int, int, int, int], None]


class ForkLaunch:
    """A forked child that runs `body`: implements supervisor.Launched."""

    def __init__(self, body: ChildBody) -> None:
        read_fd, write_fd = os.pipe()
        control_write, control_read = control_pair()
        linux.enlarge_pipe(write_fd)
        self.stack_fd = stack_file()
        parent_pid = os.getpid()
        for stream in (sys.stdout, sys.stderr):
            stream.flush()  # or the child would print the parent's buffered text again
        pid = os.fork()
        if pid == 0:
            if isinstance(signal.getsignal(signal.SIGTERM), TerminateInOrder):
                signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the parent's, not the test's
            os.close(read_fd)
            os.close(control_write)
            body(write_fd, self.stack_fd, control_read, parent_pid)
            os._exit(EXIT_DONE)  # body never returns; this is a seatbelt
        os.close(write_fd)
        os.close(control_read)
        os.set_blocking(read_fd, False)
        self.pid = pid
        self.channel_fd = read_fd
        self.control_fd = control_write
        self._pidfd: int | None = pidfd_open(pid)
        self._exit: ExitInfo | None = None

    def wait_fd(self) -> int | None:
        return self._pidfd

    def poll_exit(self, block: bool) -> ExitInfo | None:
        if self._exit is None:
            self._exit = wait_child(self.pid, block)
        return self._exit

    def crash_cause(self) -> str | None:
        return None

    def close(self) -> None:
        for fd in (self.channel_fd, self.stack_fd, self.control_fd, self._pidfd):
            if fd is not None:
                os.close(fd)


def wait_child(pid: int, block: bool) -> ExitInfo | None:
    """wait4 on our own child: its end, exact peak RSS and CPU time (None: still running)."""
    try:
        waited, status, rusage = os.wait4(pid, 0 if block else os.WNOHANG)
    except ChildProcessError:
        return ExitInfo(Ending(None, None), 0, 0.0)
    if waited == 0:
        return None
    return ExitInfo(Ending.from_wait_status(status), rusage.ru_maxrss * 1024,
                    rusage.ru_utime + rusage.ru_stime)
