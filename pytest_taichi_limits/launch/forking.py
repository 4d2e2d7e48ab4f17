"""The fast start: fork a keeper from this pytest process, which forks the test's child.

Two bodies run in such a child: `child.run_forked` (the parent's own collected items), and
`worker.reimport_worker` for a module whose import left Taichi state behind (its modules are
imported again in the child, after the parent reset Taichi, and the child collects them anew).

The keeper is a child subreaper between pytest and the test: the test's orphans are re-parented
to it, never to pytest, so pytest's own children (a conftest thread's `subprocess.run`) are never
taken for the test's, and a process of the test that leaves its parent's subtree (a child that
turns its subreaper flag off, a `clone(CLONE_PARENT)`) is still below the keeper. A test that
stops or kills its parent stops or kills the keeper, never pytest. The keeper waits for the
child with wait4, reports its end and the kernel's figures on a pipe, holds the test's orphans
until the parent is done with the tree (so the grace period holds for them too), then kills
whatever is left and leaves. It dies with pytest (PDEATHSIG), and so does the child.
"""

from __future__ import annotations

import gc
import os
import select
import signal
import sys
import time
from collections.abc import Callable

from ..ipc.protocol import (
    EXIT_DONE,
    EXIT_INTERNAL_ERROR,
    ChannelError,
    ChildEnded,
    ChildStarted,
    Status,
    decode_status,
    encode_status,
)
from ..measure.proctree import reap_own_children, send_signal
from ..model.records import Ending
from ..platform import linux
from ..supervise import signals
from ..supervise.supervisor import ExitInfo, control_pair, stack_file

#: How long a keeper may take to report its child's end once that child was killed.
_KEEPER_ANSWER_S = 5.0

#: What runs in the child: given (channel fd, stack fd, control fd, parent pid); never returns.
ChildBody = Callable[[int, int, int, int], None]


class LaunchError(RuntimeError):
    """The keeper could not start the test's child."""


class ForkLaunch:
    """A keeper and, below it, a forked child that runs `body`: implements supervisor.Launched.

    `cgroup_procs`: the worker's memory cgroup's `cgroup.procs` (v1 or v2) the keeper moves
    itself into before it forks, so that the child and everything it starts are born in it
    (measure/cgroup.py).
    """

    def __init__(self, body: ChildBody, cgroup_procs: str | None = None) -> None:
        read_fd, write_fd = os.pipe()
        control_write, control_read = control_pair()
        status_read, status_write = os.pipe()
        release_read, release_write = os.pipe()
        linux.enlarge_pipe(write_fd)
        self.stack_fd = stack_file()
        parent_pid = os.getpid()
        for stream in (sys.stdout, sys.stderr):
            stream.flush()  # or the child would print the parent's buffered text again
        keeper = os.fork()
        if keeper == 0:
            try:
                for fd in (read_fd, control_write, status_read, release_write):
                    os.close(fd)
                _keep(
                    body,
                    (write_fd, self.stack_fd, control_read),
                    status_write,
                    release_read,
                    parent_pid,
                    cgroup_procs,
                )
            finally:
                os._exit(EXIT_INTERNAL_ERROR)
        control_inode = os.fstat(control_read).st_ino
        for fd in (write_fd, control_read, status_write, release_read):
            os.close(fd)
        self._release = release_write  # closed when the parent is done with the test's tree
        self.keeper_pid = keeper
        self.origin_pid = parent_pid
        self.channel_fd = read_fd
        self.control_fd = control_write
        self.control_inode = control_inode
        self._status = _StatusLines(status_read)
        first = self._status.next(block=True)
        if not isinstance(first, ChildStarted):
            self.close()
            raise LaunchError(
                "the keeper process could not fork the test's child (out of processes or memory?)"
            )
        self.pid = first.pid
        os.set_blocking(read_fd, False)
        self._exit: ExitInfo | None = None

    def wait_fd(self) -> int | None:
        return self._status.fd

    def poll_exit(self, block: bool) -> ExitInfo | None:
        if self._exit is not None:
            return self._exit
        if block:
            # A test may have stopped its parent (the keeper): wake it so that it can reap and
            # report; one that still does not answer is killed, and its pipe closes.
            send_signal(self.keeper_pid, signal.SIGCONT)
            if not select.select([self._status.fd], [], [], _KEEPER_ANSWER_S)[0]:
                send_signal(self.keeper_pid, signal.SIGKILL)
        status = self._status.next(block)
        if not isinstance(status, ChildEnded) and not self._status.ended:
            return None
        if not isinstance(status, ChildEnded):
            # the keeper was killed: PDEATHSIG took the test's child with it
            self._exit = ExitInfo(Ending(None, signal.SIGKILL), 0, 0.0)
        else:
            self._exit = ExitInfo.of(status)
        return self._exit

    def crash_cause(self) -> str | None:
        if (
            self._exit is not None
            and self._status.ended
            and self._exit.maxrss_bytes == 0
            and self._exit.ending.signal_number == signal.SIGKILL
        ):
            return (
                "the plugin's keeper process above the test was killed (by the test?), "
                "and the test process died with it"
            )
        return None

    def close(self) -> None:
        for fd in (self.channel_fd, self.stack_fd, self.control_fd, self._release):
            os.close(fd)  # the release: the keeper kills what is left of the test, and leaves
        self._status.wait_closed(timeout_s=2.0)  # the keeper's exit closes its end
        self._status.close()
        _reap_keeper(self.keeper_pid)


def _keep(
    body: ChildBody,
    child_fds: tuple[int, int, int],
    status_fd: int,
    release_fd: int,
    parent_pid: int,
    cgroup_procs: str | None,
) -> None:
    """The keeper's whole life (in a fork of pytest): fork the test, wait, report, clean up."""
    gc.disable()  # a collection would write to every inherited object and copy its page
    handlers = signals.keeper_signals()  # a terminal's signals are pytest's to handle
    linux.set_parent_death_signal(signal.SIGKILL)
    if os.getppid() != parent_pid:  # pytest died before the signal was armed
        return
    linux.set_child_subreaper(True)
    if cgroup_procs is not None:
        try:  # the test and all it starts are born in its cgroup
            with open(cgroup_procs, "w") as handle:
                handle.write("0")
        except OSError:
            pass  # the parent finds the child outside it and measures by smaps instead
    keeper_pid = os.getpid()
    pid = os.fork()
    if pid == 0:
        os.close(status_fd)
        os.close(release_fd)
        signals.restore(handlers)  # pytest's own, never the supervisor's
        gc.enable()
        body(*child_fds, keeper_pid)
        os._exit(EXIT_DONE)  # body never returns; this is a seatbelt
    for fd in child_fds:
        os.close(fd)
    os.write(status_fd, encode_status(ChildStarted(pid)))
    _, status, rusage = os.wait4(pid, 0)
    os.write(status_fd, encode_status(ChildEnded.from_wait4(status, rusage)))
    os.read(release_fd, 1)  # EOF: the parent is done (or gone)
    reap_own_children()  # whatever of the test is left: killed here, never seen by pytest
    os._exit(0)


class _StatusLines:
    """Lines from the keeper (ipc/protocol.py's exit statuses): its child's pid, then how that
    child ended."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.ended = False
        self._pending = b""

    def next(self, block: bool) -> Status | None:
        while b"\n" not in self._pending and not self.ended:
            if not block and not select.select([self.fd], [], [], 0)[0]:
                return None
            chunk = os.read(self.fd, 4096)
            if not chunk:
                self.ended = True
            self._pending += chunk
        line, newline, self._pending = self._pending.partition(b"\n")
        if not newline:
            return None
        try:
            return decode_status(line)
        except ChannelError:
            return None

    def wait_closed(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.ended:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.fd], [], [], left)[0]:
                return
            if not os.read(self.fd, 4096):
                self.ended = True

    def close(self) -> None:
        os.close(self.fd)


def _reap_keeper(pid: int, wait_s: float = 2.0) -> None:
    """The keeper leaves right after its report; one that does not is killed."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            if os.waitpid(pid, os.WNOHANG)[0] != 0:
                return
        except ChildProcessError:
            return
        if time.monotonic() > deadline:
            send_signal(pid, signal.SIGKILL)
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
            return
        time.sleep(0.001)
