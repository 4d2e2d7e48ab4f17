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
from .outputs import OutputError, check_appendable, open_for_append, resolve, shown

OPTION = "--taichi-limits-log"


class UsageLog:
    """Collects a test's lines from the hooks and appends them once its reports are logged."""

    def __init__(self, typed: str) -> None:
        self.typed = typed
        self.path = resolve(typed)  # once: an os.chdir during the run must not move the log
        self.shown = shown(typed, self.path)
        self._pending: list[dict[str, Any]] = []

    def check(self) -> None:
        """Before any test: the file can be appended to. Raises pytest.UsageError."""
        try:
            check_appendable(OPTION, self.typed)
        except OutputError as error:
            raise pytest.UsageError(str(error)) from None

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


def append_whole_lines(path: str, data: bytes) -> None:
    """Append `data` in one write, or not at all: a full disk must not leave half a line."""
    fd = open_for_append(path)
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
