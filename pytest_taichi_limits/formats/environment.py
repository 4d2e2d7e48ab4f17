"""Where a test ran: the session's software and host, and the Taichi arch its child initialised.

Read without importing Taichi (package metadata), so the pytest process never initialises it.
"""

from __future__ import annotations

import importlib.metadata
import platform
import sys
from typing import Any

from ..ipc.protocol import Kind
from ..model.records import NO_TAICHI

_INIT_KINDS = (Kind.TAICHI_INIT.value, Kind.TAICHI_INIT_DONE.value)


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


def taichi_arch(messages: list[dict[str, Any]]) -> str:
    """The arch of the child's last ti.init, from what the child told the parent.

    Prefers an `arch` field on the init-done message (the arch Taichi actually chose), and falls
    back to the arch the init asked for (`arch=ti.cpu` is reported as `x64` on x86-64 hosts).
    """
    arch = NO_TAICHI
    for message in messages:
        kind = message.get("t")
        if kind in _INIT_KINDS and message.get("arch"):
            arch = str(message["arch"])
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
