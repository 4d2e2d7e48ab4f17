"""The one-way channel from the supervised child to the parent: JSON lines over a pipe.

The parent never trusts it: garbage, a closed pipe or a flood of bytes only ever make the test
fail with a message that says so.
"""

from __future__ import annotations

import json
import os
from typing import Any

from .protocol import KINDS

#: JSON has no tuples, but pytest's serialized reports rely on them (a skip's longrepr is one).
_TUPLE_TAG = "\x00tuple"

#: A report carries captured output, so it may be large; past this the child is misbehaving.
MAX_CHANNEL_BYTES = 256 * 1024 * 1024
#: Most bytes one `drain` reads before it lets the supervisor check the budget again.
_MAX_DRAIN_BYTES = 16 * 1024 * 1024


class ChannelWriter:
    def __init__(self, fd: int) -> None:
        self.fd = fd

    def send(self, kind: str, **fields: Any) -> None:
        fields["t"] = kind
        data = (json.dumps(_tag_tuples(fields), default=repr) + "\n").encode()
        view = memoryview(data)
        while view:
            written = os.write(self.fd, view)
            view = view[written:]


class ChannelReader:
    """Collects messages from non-blocking reads; records why the channel went bad, if it did."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.messages: list[dict[str, Any]] = []
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
                message = json.loads(line, object_hook=_untag_tuples)
            except ValueError:
                message = None
            if not isinstance(message, dict) or not isinstance(message.get("t"), str):
                self._fail(f"the report channel carried garbage: {line[:80]!r}")
                continue
            if message["t"] not in KINDS:
                self._fail(
                    f"the report channel carried an unknown message kind {message['t'][:40]!r}"
                )
                continue
            self.messages.append(message)

    def _fail(self, problem: str) -> None:
        if self.problem is None:
            self.problem = problem


def _tag_tuples(value: Any) -> Any:
    if isinstance(value, tuple):
        return {_TUPLE_TAG: [_tag_tuples(element) for element in value]}
    if isinstance(value, list):
        return [_tag_tuples(element) for element in value]
    if isinstance(value, dict):
        return {key: _tag_tuples(element) for key, element in value.items()}
    return value


def _untag_tuples(value: dict[str, Any]) -> Any:
    if len(value) == 1 and _TUPLE_TAG in value and isinstance(value[_TUPLE_TAG], list):
        return tuple(value[_TUPLE_TAG])
    return value
