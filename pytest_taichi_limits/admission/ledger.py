"""The machine-wide admission ledger: one small file, no server.

Every pytest process of one user on one machine (xdist workers, several sessions) that admits
tests shares `ledger` in a private runtime directory: $PYTEST_TAICHI_LIMITS_LEDGER if set, else
$XDG_RUNTIME_DIR/pytest-taichi-limits, else /tmp/pytest-taichi-limits-$UID (mode 0700, owned by
the user, or the plugin refuses it). Each line is one JSON object: a test waiting for admission
or holding a reservation, with its owner's pid and the pid's start time (so a reused pid is never
taken for a live owner).

Crash safety: every change happens under an `fcntl.flock` on `ledger.lock` (the kernel drops it
when its holder dies, SIGKILL included) and is written to a temporary file that is renamed over
the ledger, so a reader sees the old file or the new one, never half of one. An entry whose owner
is dead is dropped by the next process that reads the ledger. A line that cannot be read (a hand
edit, a disk error) makes the reader rebuild the file from the lines it can read, with a warning.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import stat
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

LEDGER_DIR_ENV = "PYTEST_TAICHI_LIMITS_LEDGER"
LEDGER_NAME = "ledger"
LOCK_NAME = "ledger.lock"
FORMAT_VERSION = 1
WAITING = "waiting"
HELD = "held"


class LedgerError(OSError):
    """The ledger's directory cannot be used safely; the message says why and what to do."""


class LedgerWarning(pytest.PytestWarning):
    """The ledger file was damaged and has been rebuilt from the lines that could be read."""


@dataclass(frozen=True)
class Entry:
    """One test in the ledger: waiting in the queue or holding a reservation."""

    ticket: int  # queue order: lower tickets were first
    pid: int  # the pytest process (xdist worker) that reserves
    start: int  # that process's start time (clock ticks after boot, /proc/PID/stat field 22)
    state: str  # WAITING or HELD
    mem_bytes: int
    gpu_bytes: int
    device: int | None  # the GPU (NVML index) of a HELD entry with gpu_bytes; else None
    since: float  # Unix time the entry was made
    nodeid: str
    overtaken: int = 0  # how many later tickets were admitted while this one waited

    def line(self) -> str:
        return json.dumps({"v": FORMAT_VERSION, **dataclasses.asdict(self)}, sort_keys=True)

    @classmethod
    def parse(cls, line: str) -> Entry:
        """Raises ValueError (KeyError, TypeError included) for a line that is not an entry."""
        data = json.loads(line)
        if not isinstance(data, dict) or data.pop("v", None) != FORMAT_VERSION:
            raise ValueError("not a version 1 ledger entry")
        entry = cls(**data)
        numbers = (
            entry.ticket,
            entry.pid,
            entry.start,
            entry.mem_bytes,
            entry.gpu_bytes,
            entry.overtaken,
        )
        if (
            not all(type(number) is int and number >= 0 for number in numbers)
            or entry.state not in (WAITING, HELD)
            or not isinstance(entry.nodeid, str)
            or not (entry.device is None or type(entry.device) is int)
            or not isinstance(entry.since, (int, float))
        ):
            raise ValueError("an entry field has the wrong type")
        return entry


def process_start(pid: int) -> int | None:
    """The start time of `pid` in clock ticks after boot, or None when it does not exist."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stream:
            text = stream.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    fields = text[text.rfind(b")") + 2 :].split()
    try:
        if fields[0] == b"Z":  # a zombie holds no memory and will never release anything
            return None
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def owner_alive(entry: Entry) -> bool:
    return process_start(entry.pid) == entry.start


def default_directory() -> str:
    override = os.environ.get(LEDGER_DIR_ENV)
    if override:
        return override
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime):
        return os.path.join(runtime, "pytest-taichi-limits")
    return os.path.join(tempfile.gettempdir(), f"pytest-taichi-limits-{os.getuid()}")


def private_directory(path: str) -> str:
    """Create `path` (mode 0700) or check that it is a directory of this user's that nobody
    else can write to: another user could otherwise plant a ledger that blocks every test."""
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        info = os.lstat(path)
    except OSError as error:
        raise LedgerError(
            error.errno,
            f"cannot create the admission ledger directory {path!r}: "
            f"{error.strerror}; set {LEDGER_DIR_ENV} to a writable directory",
        ) from None
    if (
        not stat.S_ISDIR(info.st_mode)
        or info.st_uid != os.getuid()
        or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    ):
        raise LedgerError(
            0,
            f"the admission ledger directory {path!r} is not a directory "
            "owned by you and writable only by you; remove it or set "
            f"{LEDGER_DIR_ENV} to another directory",
        )
    return path


class Ledger:
    """The ledger file of one directory. `transaction()` is the only way to read or change it."""

    def __init__(self, directory: str, alive: Callable[[Entry], bool] = owner_alive) -> None:
        self.directory = private_directory(directory)
        self.path = os.path.join(directory, LEDGER_NAME)
        self.lock_path = os.path.join(directory, LOCK_NAME)
        self.alive = alive
        self._check_files()

    def _check_files(self) -> None:
        """The lock and the ledger are regular files, or absent (made at the first use): found
        now, a directory or a device in their place is a usage error, not an INTERNALERROR at
        the first test."""
        for path in (self.lock_path, self.path):
            try:
                info = os.lstat(path)
            except FileNotFoundError:
                continue
            except OSError as error:
                raise LedgerError(
                    error.errno, f"cannot read the admission ledger file {path!r}: {error.strerror}"
                ) from None
            if not stat.S_ISREG(info.st_mode):
                raise LedgerError(
                    0,
                    f"the admission ledger file {path!r} is not a regular file; remove it or "
                    f"set {LEDGER_DIR_ENV} to another directory",
                )

    @contextlib.contextmanager
    def transaction(self) -> Iterator[list[Entry]]:
        """Lock the ledger and yield its live entries; what the list holds when the block ends
        normally is written back (only if it changed). An exception leaves the file as it was."""
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            entries, damaged = self._read()
            live = [entry for entry in entries if self.alive(entry)]
            original = list(live)
            yield live
            if live != original or len(live) != len(entries) or damaged:
                self._write(live)
        finally:
            os.close(fd)  # closing drops the flock

    def _read(self) -> tuple[list[Entry], bool]:
        try:
            with open(self.path, encoding="utf-8", errors="replace") as stream:
                text = stream.read()
        except FileNotFoundError:
            return [], False
        entries: list[Entry] = []
        bad = 0
        for line in text.splitlines():
            if not line.strip():
                continue
            try:
                entries.append(Entry.parse(line))
            except (ValueError, TypeError, KeyError):
                bad += 1
        if bad or (text and not text.endswith("\n")):
            warnings.warn(
                LedgerWarning(
                    f"the admission ledger {self.path} was damaged ({bad} unreadable line(s)); it "
                    f"was rebuilt from the {len(entries)} entries that could be read. Tests whose "
                    "reservations were lost may run alongside more than the capacity allows until "
                    "they end."
                ),
                stacklevel=4,
            )
            return entries, True
        return entries, False

    def _write(self, entries: list[Entry]) -> None:
        fd, temporary = tempfile.mkstemp(prefix=".ledger-", dir=self.directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as stream:
                stream.write("".join(entry.line() + "\n" for entry in entries))
            os.replace(temporary, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise

    def entries(self) -> list[Entry]:
        """The live entries now (reclaiming dead ones): for reports and tests."""
        with self.transaction() as entries:
            return list(entries)


def this_process() -> tuple[int, int]:
    """(pid, start time) of the calling process, as an Entry records its owner."""
    pid = os.getpid()
    start = process_start(pid)
    if start is None:
        raise LedgerError(0, "cannot read /proc/self/stat: admission needs Linux's /proc")
    return pid, start
