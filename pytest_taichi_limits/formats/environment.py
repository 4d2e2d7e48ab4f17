"""Where a test ran: the session's software and host, and the Taichi arch its child initialised.

Read without importing Taichi (package metadata), so the pytest process never initialises it.
"""

from __future__ import annotations

import importlib.metadata
import platform
import sys
from typing import Any

from ..ipc.protocol import Done, Message, TaichiInit, TaichiInitDone
from ..model.records import NO_TAICHI

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


def taichi_arch(messages: list[Message]) -> str:
    """The arch of the Taichi runtime the test ran with, from what the child told the parent.

    The last arch told wins: the child's `done` (the arch of its Taichi program when the test
    ended, wherever ti.init happened: at import, in an earlier test of the same worker), else
    the test's last ti.init: the arch Taichi chose, else the one it asked for (`arch=ti.cpu`
    is reported as `x64` on x86-64 hosts).
    """
    arch = NO_TAICHI
    for message in messages:
        if isinstance(message, (TaichiInit, TaichiInitDone, Done)) and message.arch:
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
