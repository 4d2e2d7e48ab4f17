"""The fork server: one process per pytest process (per xdist worker) that forks every test's child.

pytest forks it once, after collection (and after `ti.reset()` where pytest held a Taichi
program: launch/runner.py), so it holds what pytest held then: the collected items, their
modules, fixture definitions and plugins. On each `ForkOrder` it forks a child, which runs the
body the runner gave it: one fork per test instead of a keeper and its child. With isolation
`test` the child's first run command comes with the order, so the child starts its test at once,
without a ready/command round trip.

It is the subreaper between pytest and every test: a test's orphans are re-parented to it, never
to pytest, so pytest's own children are never taken for the test's, and a process that leaves
its parent's subtree (a child that turns its subreaper flag off, a `clone(CLONE_PARENT)`) is
still below it. It runs one test child at a time, so every process below it is that test's. A
test that stops or kills its parent stops or kills the server, never pytest: the parent wakes
(SIGCONT) or kills it, the test is reported, and the next test gets a new server.

Where memory is measured by cgroup, the server moves itself into the next worker's cgroup while
the current worker runs (a `MoveOrder`), so that the next child is born inside. A move can wait
for a kernel RCU grace period (about 15 ms on a quiet machine, up to 130 ms on a busy one, unless
another move happened just before): off the test's path it costs the test nothing.

It reaps every child (SIGCHLD wakes it), reports each test child's end and the kernel's figures
(wait4) on that child's status pipe, ignores the signals a terminal sends pytest's whole process
group (they are pytest's to handle), dies with pytest (PDEATHSIG), and leaves when pytest closes
its order socket, killing whatever is left below it.
"""

from __future__ import annotations

import array
import gc
import os
import select
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..ipc.protocol import (
    EXIT_INTERNAL_ERROR,
    ChannelError,
    ChildEnded,
    ChildStarted,
    ForkOrder,
    Moved,
    MoveOrder,
    Order,
    RunCommand,
    StartFailed,
    Status,
    decode_order,
    decode_status,
    encode_command,
    encode_order,
    encode_status,
)
from ..measure.proctree import reap_own_children, send_signal
from ..model.records import Ending
from ..platform import linux
from ..supervise import signals
from ..supervise.supervisor import ExitInfo, WorkerGone, control_pair, pidfd_open, stack_file

#: How long the server may take to answer (a fork, a move, a child's end) before it is taken
#: for stopped or hung, and killed.
ANSWER_TIMEOUT_S = 5.0
#: How long the server may take to leave once its order socket is closed.
CLOSE_TIMEOUT_S = 2.0
#: The longest an order may be (a reimport worker's request, pickled).
_MAX_ORDER_BYTES = 1 << 22


class LaunchError(WorkerGone):
    """The fork server could not start the test's child."""


@dataclass(frozen=True)
class ChildFds:
    """What a child gets from the parent: where it writes its reports and stacks, where it reads
    its commands, and the pid of the server above it (it dies with it)."""

    channel: int
    stack: int
    control: int
    parent_pid: int


#: What runs in a test's child (launch/runner.py makes it before it starts the server); never
#: returns.
ChildBody = Callable[[ChildFds, ForkOrder], None]


class ForkServer:
    """pytest's side of its fork server."""

    def __init__(self, body: ChildBody, prepare: Callable[[], None] | None = None) -> None:
        """`prepare`: run once in the server, before its first fork: what every child would
        otherwise do for itself (child/loop.py's prepare_fork_server)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        parent_pid = os.getpid()
        for stream in (sys.stdout, sys.stderr):
            stream.flush()  # or its children would print pytest's buffered text again
        pid = os.fork()
        if pid == 0:
            try:
                ours.close()
                _Server(theirs, parent_pid, body, prepare).run()
            finally:
                os._exit(0)
        theirs.close()
        self.pid = pid
        self.origin_pid = parent_pid
        self._orders = ours
        self._moves_pending = 0
        self._move_error = ""
        self._gone = False
        #: whether it maps shared memory its children inherit (the runner reads it once)
        self.maps_shared_memory: bool | None = None

    def usable(self) -> bool:
        """Running and answering: not exited, killed, or stopped by a signal."""
        if self._gone:
            return False
        try:
            if os.waitpid(self.pid, os.WNOHANG)[0] != 0:
                self._gone = True
        except ChildProcessError:
            self._gone = True
        if not self._gone and linux.process_state(self.pid) in ("T", "t"):
            self._gone = True  # stopped (by a test?): it would never answer
        return not self._gone

    def send(self, order: Order, fds: Sequence[int] = ()) -> None:
        """Raises OSError when the server is gone."""
        socket.send_fds(self._orders, [encode_order(order)], list(fds))

    def move_to(self, procs: str) -> None:
        """Order a move into the cgroup whose cgroup.procs is `procs`; `moved` waits for it."""
        try:
            self.send(MoveOrder(procs))
        except OSError as error:
            self._move_error = f"the fork server is gone ({error})"
            return
        self._moves_pending += 1

    def moved(self, timeout_s: float = ANSWER_TIMEOUT_S) -> str:
        """Wait for the answers to every move ordered; "" when the last one succeeded, else why
        it did not."""
        deadline = time.monotonic() + timeout_s
        while self._moves_pending:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._orders], [], [], left)[0]:
                self._moves_pending = 0
                self._move_error = "the fork server did not answer (stopped by a test?)"
                self._gone = True
                break
            try:
                data = self._orders.recv(4096)
            except OSError:
                data = b""
            if not data:
                self._moves_pending = 0
                self._move_error = "the fork server is gone"
                self._gone = True
                break
            self._moves_pending -= 1
            answer = _decode(data)
            self._move_error = answer.error if isinstance(answer, (Moved, StartFailed)) else ""
        return self._move_error

    def rss_bytes(self) -> int:
        """What a child it forks now holds at birth: the server's resident memory."""
        return linux.rss_bytes(self.pid)

    def close(self) -> None:
        """Close its order socket: it kills what is left below it and leaves; a server that
        does not (stopped, hung) is killed."""
        self._orders.close()
        send_signal(self.pid, signal.SIGCONT)
        deadline = time.monotonic() + CLOSE_TIMEOUT_S
        while True:
            try:
                if os.waitpid(self.pid, os.WNOHANG)[0] != 0:
                    return
            except ChildProcessError:
                return
            if time.monotonic() > deadline:
                send_signal(self.pid, signal.SIGKILL)
                try:
                    os.waitpid(self.pid, 0)
                except ChildProcessError:
                    pass
                return
            time.sleep(0.001)


class ServerLaunch:
    """A test's child forked by the fork server: implements supervisor.Launched.

    Unborn until `start` (the first run command of a forked worker comes with the order); a
    reimport worker (`request` given) is started at once and reports `ready` as it always has.
    """

    def __init__(self, server: ForkServer, env: dict[str, str], request: str | None = None):
        read_fd, write_fd = os.pipe()
        control_write, control_read = control_pair()
        status_read, status_write = os.pipe()
        linux.enlarge_pipe(write_fd)
        self.stack_fd = stack_file()
        self.server = server
        self.keeper_pid = server.pid
        #: pytest: the test shares copy-on-write pages with it and with the server
        self.origin_pid = server.origin_pid
        self.channel_fd = read_fd
        self.control_fd = control_write
        self.control_inode = os.fstat(control_read).st_ino
        self.pid = 0
        self._for_child = [write_fd, self.stack_fd, control_read, status_write]
        self._status = _StatusLines(status_read)
        self._env = env
        self._request = request
        self._birth_rss_bytes = 0
        self._pidfd: int | None = None
        self._exit: ExitInfo | None = None
        self._cause: str | None = None
        #: called once the child is forked (the runner orders the server into the next
        #: worker's cgroup then, while this one runs)
        self.after_start: Callable[[], object] | None = None
        os.set_blocking(read_fd, False)
        if request is not None:
            self.start(None)

    @property
    def unborn(self) -> bool:
        return self.pid == 0

    def birth_rss_bytes(self) -> int:
        """The child's resident memory when it is forked: the server's (read once, before)."""
        if not self._birth_rss_bytes:
            self._birth_rss_bytes = self.server.rss_bytes()
        return self._birth_rss_bytes

    def start(self, first: RunCommand | None) -> None:
        """Fork the child; with `first`, it runs that test at once. Raises LaunchError."""
        self.birth_rss_bytes()
        order = ForkOrder(
            self._env, None if first is None else encode_command(first).decode(), self._request
        )
        try:
            self.server.send(order, self._for_child)
        except OSError as error:
            self._status.close()
            raise LaunchError(f"the plugin's fork server is gone ({error})") from None
        finally:
            for fd in self._for_child:
                if fd != self.stack_fd:  # the parent reads the stacks too
                    os.close(fd)
            self._for_child = []
        started = self._status.next(block=True, timeout_s=ANSWER_TIMEOUT_S)
        if not isinstance(started, ChildStarted):
            why = started.error if isinstance(started, StartFailed) else "no answer"
            send_signal(self.server.pid, signal.SIGKILL)  # replaced before the next test
            raise LaunchError(f"the plugin's fork server could not fork the test's child ({why})")
        self.pid = started.pid
        self._pidfd = pidfd_open(self.pid)  # its end, even while the server cannot say it
        if self.after_start is not None:
            self.after_start()

    def wait_fd(self) -> int | None:
        return self._pidfd if self._pidfd is not None else self._status.fd

    def poll_exit(self, block: bool) -> ExitInfo | None:
        if self._exit is not None:
            return self._exit
        if not block and self._pidfd is not None and select.select([self._pidfd], [], [], 0)[0]:
            block = True  # it has ended: the server says how at once, or is made to
        if block:
            # A test may have stopped its parent (the server): wake it so that it can reap and
            # report; one that still does not answer is killed, and its pipe closes.
            send_signal(self.server.pid, signal.SIGCONT)
            if not select.select([self._status.fd], [], [], ANSWER_TIMEOUT_S)[0]:
                send_signal(self.server.pid, signal.SIGKILL)
                self._cause = (
                    "the plugin's fork server above the test stopped answering (stopped by the "
                    "test?): it was killed, and the test process died with it"
                )
        status = self._status.next(block)
        if not isinstance(status, ChildEnded) and not self._status.ended:
            return None
        if not isinstance(status, ChildEnded):
            # the server was killed: PDEATHSIG took the test's child with it
            self._cause = self._cause or (
                "the plugin's fork server above the test was killed (by the test?), "
                "and the test process died with it"
            )
            self._exit = ExitInfo(Ending(None, signal.SIGKILL), 0, 0.0)
        else:
            self._cause = None
            self._exit = ExitInfo.of(status)
        return self._exit

    def crash_cause(self) -> str | None:
        return self._cause if self._exit is not None else None

    def close(self) -> None:
        for fd in self._for_child:  # never sent: the child was never forked
            if fd != self.stack_fd:
                os.close(fd)
        self._for_child = []
        for fd in (self.channel_fd, self.stack_fd, self.control_fd):
            os.close(fd)
        self._status.close()
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None


class _StatusLines:
    """Lines from the server about one child (ipc/protocol.py's exit statuses): its pid, then
    how it ended."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.ended = False
        self._pending = b""
        self._closed = False

    def next(self, block: bool, timeout_s: float | None = None) -> Status | None:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while b"\n" not in self._pending and not self.ended:
            wait_s = 0.0 if not block else None
            if deadline is not None:
                wait_s = max(0.0, deadline - time.monotonic())
            if not select.select([self.fd], [], [], wait_s)[0]:
                return None
            chunk = os.read(self.fd, 4096)
            if not chunk:
                self.ended = True
            self._pending += chunk
        line, newline, self._pending = self._pending.partition(b"\n")
        if not newline:
            return None
        return _decode(line)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            os.close(self.fd)


def _decode(data: bytes) -> Status:
    try:
        return decode_status(data)
    except ChannelError as error:
        return StartFailed(str(error))


# -- the server itself (in a fork of pytest) --------------------------------------------------


def _wake(signum: int, frame: Any) -> None:
    """SIGCHLD's handler: nothing to do, the wake-up fd did it (set_wakeup_fd)."""


class _Server:
    def __init__(
        self,
        orders: socket.socket,
        parent_pid: int,
        body: ChildBody,
        prepare: Callable[[], None] | None,
    ) -> None:
        self.orders = orders
        self.parent_pid = parent_pid
        self.body = body
        self.prepare = prepare
        #: every test child not yet reaped: pid -> the write end of its status pipe
        self.children: dict[int, int] = {}
        self.handlers: dict[int, Any] = {}
        self.wake_read = self.wake_write = -1

    def run(self) -> None:
        """The server's whole life; returns when pytest closes the order socket."""
        gc.disable()  # a collection would write to every inherited object and copy its page
        self.handlers = signals.keeper_signals()  # a terminal's signals are pytest's to handle
        linux.set_parent_death_signal(signal.SIGKILL)
        if os.getppid() != self.parent_pid:  # pytest died before the signal was armed
            return
        linux.set_child_subreaper(True)
        if self.prepare is not None:
            self.prepare()
        self.wake_read, self.wake_write = os.pipe()
        for fd in (self.wake_read, self.wake_write):
            os.set_blocking(fd, False)
        signal.signal(signal.SIGCHLD, _wake)
        signal.set_wakeup_fd(self.wake_write)
        try:
            while self._serve_once():
                pass
        finally:
            reap_own_children()  # whatever is left below: killed, never seen by pytest

    def _serve_once(self) -> bool:
        # The timeout is a seatbelt: SIGCHLD wakes the loop at once.
        orders = self.orders.fileno()
        ready = select.select([orders, self.wake_read], [], [], 1.0)[0]
        if self.wake_read in ready:
            try:
                os.read(self.wake_read, 4096)
            except OSError:
                pass
        self._reap()
        if orders not in ready:
            return True
        try:
            data, fds = receive_with_fds(self.orders, _MAX_ORDER_BYTES)
        except OSError:
            return False
        if not data:
            return False  # pytest closed the socket: the session is over (or pytest is gone)
        try:
            order = decode_order(data)
        except ChannelError:
            order = None
        if isinstance(order, MoveOrder):
            self._answer(Moved(_move_self(order.procs)))
        elif isinstance(order, ForkOrder) and len(fds) == 4:
            self._fork(order, *fds)
            return True
        for fd in fds:
            os.close(fd)
        return True

    def _answer(self, status: Status) -> None:
        try:
            self.orders.send(encode_status(status))
        except OSError:
            pass  # pytest is gone: the next recv says so

    def _fork(self, order: ForkOrder, channel: int, stack: int, control: int, status: int) -> None:
        server_pid = os.getpid()
        try:
            pid = os.fork()
        except OSError as error:
            _write(status, StartFailed(f"{type(error).__name__}: {error}"))
            for fd in (channel, stack, control, status):
                os.close(fd)
            return
        if pid == 0:
            try:
                self._become_child(status)
                os.environ.update(order.env)  # the devices admission chose: before any use
                self.body(ChildFds(channel, stack, control, server_pid), order)
            finally:
                os._exit(EXIT_INTERNAL_ERROR)
        for fd in (channel, stack, control):
            os.close(fd)
        _write(status, ChildStarted(pid))
        self.children[pid] = status

    def _become_child(self, status: int) -> None:
        """In the forked child: nothing of the server's is left (its sockets, its handlers)."""
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for fd in (status, self.wake_read, self.wake_write, *self.children.values()):
            os.close(fd)
        self.orders.close()
        signals.restore(self.handlers)  # pytest's own, never the supervisor's
        gc.enable()

    def _reap(self) -> None:
        while True:
            try:
                pid, wait_status, rusage = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            status = self.children.pop(pid, None)
            if status is not None:  # a test's child; any other was an orphan of a test
                _write(status, ChildEnded.from_wait4(wait_status, rusage))
                os.close(status)


def receive_with_fds(sock: socket.socket, size: int, max_fds: int = 8) -> tuple[bytes, list[int]]:
    """One message and the fds that came with it, close-on-exec as pytest made them: a program
    the test execs must not hold the report channel (its end would never be seen) or the
    control socket. (socket.recv_fds drops its flags argument before Python 3.12.)"""
    fds = array.array("i")
    data, ancillary, _, _ = sock.recvmsg(
        size, socket.CMSG_LEN(max_fds * fds.itemsize), socket.MSG_CMSG_CLOEXEC
    )
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
    return data, list(fds)


def _write(fd: int, status: Status) -> None:
    try:
        os.write(fd, encode_status(status))
    except OSError:
        pass  # pytest closed its end: it no longer cares


def _move_self(procs: str) -> str:
    """Move this process into the cgroup of `procs`; "" when done, else why not."""
    try:
        with open(procs, "w") as handle:
            handle.write("0")
    except OSError as error:
        return f"{type(error).__name__}: {error}"
    return ""
