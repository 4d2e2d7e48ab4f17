"""The wire between the supervised child and the parent: one closed vocabulary, decoded once.

Two pipes join them. The child writes *messages* (JSON lines, `ipc/channel.py`) about the test it
runs; the parent writes *commands* (JSON lines) telling an idle child which test to run next. A
message kind outside `Kind` is a channel problem (the test fails saying so), never skipped:
anything the child writes may be forged by the test itself, so the parent checks every field it
uses and measures for itself whatever it can (memory, CPU time, the clock).
"""

from __future__ import annotations

import enum
import json
import os
import signal
from dataclasses import dataclass
from typing import Any


class Kind(str, enum.Enum):
    """Every message a child may send, in the order a run sends them."""

    READY = "ready"  # the child is set up and waits for a command
    HELLO = "hello"  # a test starts (nodeid)
    PHASE = "phase"  # setup / call / teardown begins
    TAICHI_INIT = "taichi_init"  # ti.init was called (arch asked for)
    TAICHI_INIT_DONE = "taichi_init_done"  # ti.init returned (arch applied)
    NOTE = "note"  # something the report should say (a clamp, a failed reset)
    TAICHI_DEVICE_OOM = "taichi_device_oom"  # a phase failed: Taichi ran out of device memory
    REPORT = "report"  # a serialised TestReport
    WARNING = "warning"  # a warning the test raised
    DONE = "done"  # the test is over (nodeid); the child waits for the next command
    EXIT = "exit"  # pytest.exit or KeyboardInterrupt inside the test: the session must end
    REFUSED = "refused"  # a fresh interpreter could not run the test the parent asked for
    INTERNAL_ERROR = "internal-error"  # the plugin failed inside the child
    FINISHED = "finished"  # the child tore everything down and is about to exit


KINDS: frozenset[str] = frozenset(kind.value for kind in Kind)

#: The `key` of a NOTE that says a ti.init's device memory was clamped to gpu_gb.
CLAMP_NOTE = "gpu_clamp"

#: faulthandler dumps every thread's Python stack on this signal, even while native code
#: (a Taichi kernel) holds the GIL. A real-time signal, so tests that use SIGUSR1/2 keep them.
STACK_SIGNAL = signal.SIGRTMIN + 7

#: Exit codes of the child; anything else is a crash.
EXIT_DONE = 0
EXIT_INTERNAL_ERROR = 70


@dataclass(frozen=True)
class RunCommand:
    """Run the test at `index` of the child's list; `next_index` is the test that will follow
    in the same child (its fixtures stay up), or None (tear everything down)."""

    index: int
    next_index: int | None
    cpu_s: float | None  # the test's CPU budget, for the child's RLIMIT_CPU backstop
    gpu_gb: float | None  # the test's GPU budget, for the ti.init cap

    def encode(self) -> bytes:
        fields = {
            "c": "run",
            "index": self.index,
            "next": self.next_index,
            "cpu_s": self.cpu_s,
            "gpu_gb": self.gpu_gb,
        }
        return (json.dumps(fields) + "\n").encode()


STOP_COMMAND = b'{"c": "stop"}\n'

#: What the child writes back on the control socket after `ready` and `done`: the parent's
#: loop wakes for it at once, while it reads other messages at most once per interval.
BELL = b"!"


class CommandReader:
    """The child's side of the control socket: blocking reads, one command per line; `ring`
    tells the parent to read the channel now."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._pending = b""

    def ring(self) -> None:
        try:
            os.write(self.fd, BELL)
        except OSError:
            pass  # the parent is gone: PDEATHSIG ends this process

    def next(self) -> RunCommand | None:
        """The next run command, or None: stop (or the parent is gone)."""
        while b"\n" not in self._pending:
            try:
                chunk = os.read(self.fd, 4096)
            except OSError:
                return None
            if not chunk:
                return None
            self._pending += chunk
        line, _, self._pending = self._pending.partition(b"\n")
        fields: Any = json.loads(line)
        if fields.get("c") != "run":
            return None
        return RunCommand(
            int(fields["index"]), fields.get("next"), fields.get("cpu_s"), fields.get("gpu_gb")
        )
