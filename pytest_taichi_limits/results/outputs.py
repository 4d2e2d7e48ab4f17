"""The session's output files, checked together once before any test runs.

Every output (`--taichi-limits-json`, `-save-baseline`, `-log`, `-markdown`, `-html`, pytest's own
`--junitxml`, and GitHub's job summary) is resolved to an absolute path at configure time (a test
module that calls os.chdir at import must not move it) and checked up front: a path that cannot
be written, or two outputs that name one file, is a usage error (exit 4) naming the options, not
a failure found after every test ran. Missing directories are created, as pytest's --junitxml
does. GitHub's job summary is a courtesy: where it cannot be appended to, the run warns once and
goes on without it.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import tempfile
from collections.abc import Mapping

#: Set by GitHub Actions in every step: a file whose Markdown shows on the run's summary page.
STEP_SUMMARY_VARIABLE = "GITHUB_STEP_SUMMARY"
#: How the job summary is named where it is named with the options.
STEP_SUMMARY_NAME = f"${STEP_SUMMARY_VARIABLE}"
#: Open flags for appending: O_NONBLOCK so that a FIFO without a reader is an error (ENXIO),
#: never a hang.
APPEND_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK
#: Pseudo file systems whose files take no appended report (a write there fails or does
#: something else entirely).
_PSEUDO_ROOTS = ("/proc", "/sys")


class OutputError(ValueError):
    """An output path that cannot be used; the message names the option and says why."""


def resolve(path: str) -> str:
    """The absolute path, fixed now: relative to the current directory at configure time."""
    return os.path.abspath(os.path.expanduser(path))


def nearest_directory(path: str) -> str:
    """The directory the file's missing parents would be created in (its nearest ancestor)."""
    directory = os.path.dirname(path)
    while not os.path.lexists(directory):
        directory = os.path.dirname(directory)
    return directory


def shown(typed: str, path: str) -> str:
    """The path as the user typed it, and what it resolved to where that differs."""
    return repr(typed) if typed == path else f"{typed!r} ({path})"


def check_replaceable(option: str, typed: str) -> None:
    """The file `typed` names can be written by a rename over it: it is absent or a regular
    file, and a file can be created where it will live. Raises OutputError."""
    path = resolve(typed)
    where = shown(typed, path)
    if os.path.lexists(path) and not os.path.isfile(path):
        # A rename over a device (/dev/null) as root would replace the node with a plain file.
        raise OutputError(f"{option}: cannot write {where}: it exists and is not a regular file")
    directory = nearest_directory(path)
    if not os.path.isdir(directory):
        raise OutputError(f"{option}: cannot write {where}: {directory!r} is not a directory")
    try:
        # The only sure test of a directory (/proc, a read-only mount, root's access() lies).
        fd, probe = tempfile.mkstemp(prefix=".taichi-limits-probe-", dir=directory)
    except OSError as error:
        raise OutputError(
            f"{option}: cannot write {where}: cannot create a file in "
            f"{directory!r} ({error.strerror or error})"
        ) from None
    os.close(fd)
    os.unlink(probe)


def check_distinct(paths: Mapping[str, str | None]) -> None:
    """No two outputs (option -> path as typed) name the same file: each would overwrite the
    other. Raises OutputError."""
    seen: dict[str, str] = {}
    for option, path in paths.items():
        if path is None:
            continue
        key = os.path.realpath(resolve(path))
        if key in seen:
            raise OutputError(
                f"{seen[key]} and {option} name the same file {path!r}: give each "
                "output its own file"
            )
        seen[key] = option


def open_for_append(path: str) -> int:
    """An fd appending to `path` (created if missing). Raises OSError."""
    fd = os.open(path, APPEND_FLAGS, 0o644)
    # Non-blocking was for the open only: a FIFO with a slow reader is waited for, not lost.
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    return fd


def append_reason(error: OSError) -> str:
    if error.errno == errno.ENXIO:
        return "it is a FIFO that no process is reading"
    return error.strerror or str(error)


def check_appendable(option: str, typed: str) -> None:
    """The file `typed` names can be appended to (a regular file, or a FIFO that is being
    read), creating its missing directories as --junitxml does. Raises OutputError."""
    path = resolve(typed)
    directory = nearest_directory(path)
    try:
        if not os.path.isdir(directory):
            raise NotADirectoryError(errno.ENOTDIR, f"{directory!r} is not a directory")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        os.close(open_for_append(path))
    except OSError as error:
        raise OutputError(
            f"{option}: cannot append to {shown(typed, path)}: {append_reason(error)} (give a "
            "regular file, or a FIFO that is being read, in a writable directory)"
        ) from None


def _on_pseudo_file_system(path: str) -> bool:
    real = os.path.realpath(path)
    return any(real == root or real.startswith(root + os.sep) for root in _PSEUDO_ROOTS)


def step_summary_problem(path: str) -> str | None:
    """Why GitHub's job summary file `path` cannot be appended to; None when it can.

    GitHub creates the file before the step runs; nothing is created here: a missing directory
    means the variable points somewhere else than GitHub meant.
    """
    if _on_pseudo_file_system(path):
        return "it is on a pseudo file system (/proc, /sys)"
    directory = os.path.dirname(path) or os.curdir
    if not os.path.isdir(directory):
        return f"its directory {directory!r} does not exist"
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return None if os.access(directory, os.W_OK) else f"{directory!r} is not writable"
    except OSError as error:
        return error.strerror or str(error)
    if not stat.S_ISREG(info.st_mode):
        return "it is not a regular file"
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_NONBLOCK))
    except OSError as error:
        return append_reason(error)
    return None
