"""Signals to pytest while a supervised test runs: the test's whole tree ends first.

With the default action, SIGTERM (a CI time-out, `kill`), SIGHUP (a closed terminal or SSH
session) and SIGQUIT (Ctrl-\\) would end pytest at once, and whatever the test had started,
re-parented to init, would run on. While a test is watched, each of them raises `Terminated`
(a KeyboardInterrupt) inside the watch loop instead: the loop's handler stops the test's tree,
pytest ends the session as interrupted (its reports say so: never complete, never passed), and
the plugin then lets pytest die of the same signal, as it would have (plugin.py).

SIGINT (Ctrl-C) raises KeyboardInterrupt there as always. A second signal of any of these kinds
while the tree is being stopped is ignored: it must not cut the stopping short and leave the
tree running.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import types
from typing import Any

#: The signals whose default action would end pytest and leave the test's tree behind.
TERMINATING = (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)


class Terminated(KeyboardInterrupt):
    """A terminating signal reached pytest while a supervised test ran."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        name = signal.Signals(signum).name
        super().__init__(
            f"{name} received while a supervised test ran: its processes were stopped; "
            f"pytest ends with {name} once its reports are written"
        )


class TerminateInOrder:
    """While installed (a `with` block around one test's watch): the first SIGTERM, SIGHUP,
    SIGQUIT or SIGINT raises, later ones are ignored until the block ends.

    Installed only over the default actions (SIG_DFL; Python's own SIGINT handler), and only in
    the main thread: a handler of the user's or another plugin's is left alone.
    """

    def __init__(self) -> None:
        self.owner_pid = os.getpid()
        self.installed: list[int] = []
        self.received: int | None = None

    def __call__(self, signum: int, frame: types.FrameType | None) -> None:
        if os.getpid() != self.owner_pid:  # a forked child, before it reset the handler
            signal.signal(signum, _default(signum))
            os.kill(os.getpid(), signum)
            return
        if self.received is not None:
            return  # the tree is being stopped already
        self.received = signum
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise Terminated(signum)

    def __enter__(self) -> TerminateInOrder:
        self.received = None
        if threading.current_thread() is not threading.main_thread():
            return self
        for signum in (*TERMINATING, signal.SIGINT):
            if signal.getsignal(signum) == _default(signum):
                signal.signal(signum, self)
                self.installed.append(signum)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: types.TracebackType | None,
    ) -> None:
        for signum in self.installed:
            signal.signal(signum, _default(signum))
        self.installed = []


def _default(signum: int) -> Any:
    """What this handler replaces: Python's own for SIGINT, the default action otherwise."""
    return signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL


def keeper_signals() -> dict[int, Any]:
    """In the fork server (launch/forkserver.py): ignore Ctrl-C, Ctrl-\\, a hangup and SIGTERM.
    They reach pytest's whole process group (a terminal, a CI runner that ends the group) and
    are pytest's to handle: a server that died of one would take the test's child with it and
    leave its orphans to init before pytest could stop them (pytest ends the server with
    SIGKILL). Returns the handlers to give back to the test's child."""
    saved: dict[int, Any] = {}
    for signum in (*TERMINATING, signal.SIGINT):
        handler = signal.getsignal(signum)
        saved[signum] = _default(signum) if isinstance(handler, TerminateInOrder) else handler
        signal.signal(signum, signal.SIG_IGN)
    return saved


def restore(saved: dict[int, Any]) -> None:
    for signum, handler in saved.items():
        signal.signal(signum, signal.SIG_DFL if handler is None else handler)


def die_of(signum: int) -> None:
    """End this process by `signum`'s default action, as if no handler had been installed."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    signal.signal(signum, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, [signum])
    os.kill(os.getpid(), signum)
    os._exit(128 + signum)  # seatbelt: the signal ends the process first
