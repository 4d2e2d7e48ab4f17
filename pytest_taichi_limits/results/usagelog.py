"""`--taichi-limits-log PATH`: one JSON line per supervised test (usage) and per violation.

An implementation of the plugin's own hooks `pytest_taichi_limits_usage` and
`pytest_taichi_limits_violation`, as any conftest could write one. The lines of a test are written
when its reports have been logged (`pytest_runtest_logfinish`): a log that cannot be written then
stops the session, and the result of the test that just ran is shown all the same. Under
pytest-xdist every worker appends to the same file, under a lock.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import stat
from typing import Any

import pytest

from ..model.records import Usage, Violation
from .outputs import nearest_directory, resolve, shown

OPTION = "--taichi-limits-log"

#: Open flags: O_NONBLOCK so that a FIFO without a reader is an error (ENXIO), never a hang.
_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK


class UsageLog:
    """Collects a test's lines from the hooks and appends them once its reports are logged."""

    def __init__(self, typed: str) -> None:
        self.path = resolve(typed)  # once: an os.chdir during the run must not move the log
        self.shown = shown(typed, self.path)
        self._pending: list[dict[str, Any]] = []

    def check(self) -> None:
        """Before any test: the file can be appended to. Raises pytest.UsageError."""
        directory = nearest_directory(self.path)
        try:
            if not os.path.isdir(directory):
                raise NotADirectoryError(errno.ENOTDIR, f"{directory!r} is not a directory")
            os.makedirs(os.path.dirname(self.path), exist_ok=True)  # as --junitxml does
            os.close(_open(self.path))
        except OSError as error:
            raise pytest.UsageError(
                f"{OPTION}: cannot append to {self.shown}: {_reason(error)} (give a regular "
                "file, or a FIFO that is being read, in a writable directory)"
            ) from None

    def pytest_taichi_limits_usage(self, item: pytest.Item, usage: Usage) -> None:
        self._pending.append({"event": "usage", **usage.to_json()})

    def pytest_taichi_limits_violation(
        self, item: pytest.Item, violation: Violation, usage: Usage
    ) -> None:
        self._pending.append({"event": "violation", **violation.to_json()})

    def pytest_runtest_logfinish(self) -> None:
        self.flush()

    def pytest_sessionfinish(self) -> None:
        self.flush()  # lines of a test whose protocol was cut short (never lost)

    def flush(self) -> None:
        if not self._pending:
            return
        lines = "".join(json.dumps(line, default=str) + "\n" for line in self._pending)
        self._pending.clear()
        try:
            append_whole_lines(self.path, lines.encode())
        except OSError as error:
            raise pytest.UsageError(
                f"{OPTION}: cannot append to {self.shown}: {error}; the lines already in it "
                "are left as they were"
            ) from None


def _open(path: str) -> int:
    fd = os.open(path, _FLAGS, 0o644)
    # Non-blocking was for the open only: a FIFO with a slow reader is waited for, not lost.
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    return fd


def _reason(error: OSError) -> str:
    if error.errno == errno.ENXIO:
        return "it is a FIFO that no process is reading"
    return error.strerror or str(error)


def append_whole_lines(path: str, data: bytes) -> None:
    """Append `data` in one write, or not at all: a full disk must not leave half a line."""
    fd = _open(path)
    try:
        regular = stat.S_ISREG(os.fstat(fd).st_mode)
        if regular:
            fcntl.flock(fd, fcntl.LOCK_EX)  # xdist workers append to the same file
        size = os.fstat(fd).st_size
        try:
            written = os.write(fd, data)  # one write with O_APPEND: lines never interleave
            if written != len(data):
                raise OSError(errno.ENOSPC, f"only {written} of {len(data)} bytes written")
        except OSError:
            if regular:
                os.ftruncate(fd, size)  # take back the part of a line that was written
            raise
    finally:
        os.close(fd)
