"""Where a test ran: the session's software and host, the commit and command line of the run,
and the Taichi arch its child initialised.

Read without importing Taichi (package metadata), so the pytest process never initialises it.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shlex
import subprocess
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from ..ipc.protocol import Done, Hello, Message, TaichiInit, TaichiInitDone
from ..model.records import NO_TAICHI
from .jsonreport import Source

#: Keys of the environment whose difference makes a baseline comparison doubtful.
COMPARED_KEYS = ("python", "taichi")


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def session_environment() -> dict[str, str]:
    """Python, pytest and Taichi versions and the host, as strings."""
    return {
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "pytest": _version("pytest"),
        "taichi": _version("taichi"),
        "pytest_taichi_limits": _version("pytest-taichi-limits"),
        "host": platform.node() or "unknown",
        "platform": sys.platform,
        "machine": platform.machine() or "unknown",
    }


#: CI variables that name the commit and the branch, in the order they are tried: GitHub
#: Actions (a pull request's own branch first), GitLab CI, then the common CI_* names.
_COMMIT_VARIABLES = ("GITHUB_SHA", "CI_COMMIT_SHA", "BUILDKITE_COMMIT", "CIRCLE_SHA1", "GIT_COMMIT")
_BRANCH_VARIABLES = (
    "GITHUB_HEAD_REF",
    "GITHUB_REF_NAME",
    "CI_COMMIT_REF_NAME",
    "BUILDKITE_BRANCH",
    "CIRCLE_BRANCH",
    "GIT_BRANCH",
)
#: `git` may be slow on a network file system or prompt for nothing: never wait longer.
_GIT_TIMEOUT_S = 5.0


def run_source(
    directory: str, arguments: Sequence[str], environ: Mapping[str, str] | None = None
) -> Source:
    """The commit, branch and command line of this run, where known: CI variables first, else
    `git` in `directory` (absent, not a repository, a detached HEAD: None)."""
    environ = os.environ if environ is None else environ
    commit = next((environ[name] for name in _COMMIT_VARIABLES if environ.get(name)), None)
    branch = next((environ[name] for name in _BRANCH_VARIABLES if environ.get(name)), None)
    if commit is None:
        commit = _git(directory, "rev-parse", "HEAD")
    if branch is None:
        branch = _git(directory, "symbolic-ref", "--quiet", "--short", "HEAD")
    return Source(commit, branch, shlex.join(["pytest", *arguments]))


def _git(directory: str, *arguments: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", *arguments],
            cwd=directory,
            capture_output=True,
            text=True,
            timeout=_GIT_TIMEOUT_S,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.SubprocessError):
        return None  # no git, or it hung
    value = done.stdout.strip()
    return value if done.returncode == 0 and value else None


def taichi_arch(messages: list[Message]) -> str:
    """The arch of the Taichi runtime the test ran with, from what the child told the parent.

    The last arch told wins: the child's `done` (the arch of its Taichi program when the test
    ended, wherever ti.init happened: at import, in an earlier test of the same worker), else
    the test's last ti.init: the arch Taichi chose, else the one it asked for (`arch=ti.cpu`
    is reported as `x64` on x86-64 hosts), else the arch its program had when the test began
    (`hello`: a test stopped by a budget or crashed says no `done`).
    """
    arch = NO_TAICHI
    for message in messages:
        if isinstance(message, (Hello, TaichiInit, TaichiInitDone, Done)) and message.arch:
            arch = message.arch
    return arch


def differences(
    baseline: dict[str, Any], current: dict[str, Any], keys: tuple[str, ...] = COMPARED_KEYS
) -> list[str]:
    """'taichi 1.7.3 -> 1.7.4' for each compared key whose value changed."""
    return [
        f"{key} {baseline.get(key, 'unknown')} -> {current.get(key, 'unknown')}"
        for key in keys
        if baseline.get(key) != current.get(key)
    ]
