"""The session's output files, checked once before any test runs.

`--taichi-limits-json`, `--taichi-limits-save-baseline` and `--taichi-limits-log` are resolved to
absolute paths at configure time (a test module that calls os.chdir at import must not move
them), and each is checked up front, so a path that cannot be written is a usage error (exit 4)
naming the option, not a failure found after every test ran. All three create missing
directories, as pytest's --junitxml does.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping


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
