"""The framing of the wire: messages over the report pipe (child -> parent), commands and bells
over the control socket. What a line means is `ipc/protocol.py`'s; this module only moves lines.

The parent never trusts the report channel: garbage, a forged or malformed message, a closed pipe
or a flood of bytes only ever make the test fail with a message that says so.
"""

from __future__ import annotations

import os

from .protocol import (
    BELL,
    ChannelError,
    Command,
    Message,
    decode_command,
    decode_message,
    encode_message,
)

#: A report carries captured output, so it may be large; past this the child is misbehaving.
MAX_CHANNEL_BYTES = 256 * 1024 * 1024
#: Most bytes one `drain` reads before it lets the supervisor check the budget again.
_MAX_DRAIN_BYTES = 16 * 1024 * 1024


class ChannelWriter:
    def __init__(self, fd: int) -> None:
        self.fd = fd

    def send(self, message: Message) -> None:
        view = memoryview(encode_message(message))
        while view:
            written = os.write(self.fd, view)
            view = view[written:]


class ChannelReader:
    """Collects messages from non-blocking reads, each decoded once, as it arrives; records why
    the channel went bad, if it did."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.messages: list[Message] = []
        self.problem: str | None = None
        self.closed = False
        self.overflowed = False  # past MAX_CHANNEL_BYTES: nothing more it sends can be heard
        self._pending = bytearray()
        # No newline before this offset of _pending: a big report is scanned once, not once
        # per chunk.
        self._scan_from = 0
        self._total = 0

    def drain(self) -> None:
        # Bounded per call: a child that writes without end must not keep the supervisor
        # from its clock (wall_s) and its samples.
        total_before = self._total
        while not self.closed and self._total - total_before <= _MAX_DRAIN_BYTES:
            try:
                chunk = os.read(self.fd, 1 << 20)
            except BlockingIOError:
                return
            except OSError as error:
                self._fail(f"the report channel broke: {error}")
                self.closed = True
                return
            if not chunk:
                self.closed = True
                if self._pending and self.problem is None:
                    self._fail("the report channel ended in the middle of a message")
                return
            self._total += len(chunk)
            if self._total > MAX_CHANNEL_BYTES:
                # Keep reading and drop it: a child blocked on a full pipe would otherwise
                # hang until wall_s and be reported for that instead.
                self._fail(f"the child sent more than {MAX_CHANNEL_BYTES} bytes of reports")
                self.overflowed = True
                self._pending.clear()
                self._scan_from = 0
                continue
            self._pending += chunk
            self._split()

    def _split(self) -> None:
        while True:
            newline = self._pending.find(b"\n", self._scan_from)
            if newline < 0:
                self._scan_from = len(self._pending)
                return
            self._scan_from = 0
            line = bytes(self._pending[:newline])
            del self._pending[: newline + 1]
            try:
                self.messages.append(decode_message(line))
            except ChannelError as error:
                self._fail(str(error))

    def _fail(self, problem: str) -> None:
        if self.problem is None:
            self.problem = problem


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

    def next(self) -> Command | None:
        """The next command, or None: the parent is gone."""
        while b"\n" not in self._pending:
            try:
                chunk = os.read(self.fd, 4096)
            except OSError:
                return None
            if not chunk:
                return None
            self._pending += chunk
        line, _, self._pending = self._pending.partition(b"\n")
        return decode_command(line)  # the parent's own words: an error here is the plugin's
