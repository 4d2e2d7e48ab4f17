"""What a worker (a spawn-mode or reimport child) is asked to run, as it crosses to the child.

Sent pickled, over the plugin's own sockets (the zygote's control socket) or inherited through a
fork: never from the test's side of the wire.
"""

from __future__ import annotations

import base64
import json
import pickle
from dataclasses import dataclass
from typing import Any

import pytest

from ..config.budget import Budget
from ..config.settings import Settings


@dataclass(frozen=True)
class Fingerprint:
    """A parametrized test's parameters, so a fresh interpreter can check it collected the same
    values under the same id (a set's order depends on the hash seed)."""

    nodeid: str
    params: dict[str, bytes | None]  # pickled value, None when it cannot be pickled


def fingerprint(item: pytest.Item) -> Fingerprint:
    params: dict[str, bytes | None] = {}
    callspec = getattr(item, "callspec", None)
    for name, value in (getattr(callspec, "params", None) or {}).items():
        try:
            params[name] = pickle.dumps(value)
        except Exception:  # noqa: BLE001 - a lambda, a lock: compared by its text instead
            params[name] = None
    return Fingerprint(item.nodeid, params)


@dataclass(frozen=True)
class WorkerRequest:
    """What a worker needs to run a module's tests: sent pickled to the zygote (our own pipe)."""

    tests: list[Fingerprint]
    budgets: list[Budget]  # per test, for the taichi_limits_ti fixture
    args: list[str]
    options: dict[str, Any]
    invocation_dir: str
    settings: Settings
    env: dict[str, str]  # set before collection (the device admission chose)
    #: the worker's memory cgroup: it moves itself in first thing (measure/cgroup.py)
    cgroup_procs: str | None = None


def encode_reimport(request: WorkerRequest, modules: list[str]) -> str:
    """A reimport worker's request and the modules it imports again, for the fork server's
    order (ipc/protocol.py's ForkOrder.request): pickled, then base64 so that it is text."""
    return base64.b64encode(pickle.dumps((request, modules))).decode("ascii")


def decode_reimport(text: str) -> tuple[WorkerRequest, list[str]]:
    request, modules = pickle.loads(base64.b64decode(text))  # our own order, never the test's
    return request, modules


def encode_request(request: WorkerRequest) -> bytes:
    """A spawn-mode worker's request, for the zygote's control socket."""
    return pickle.dumps(request)


def decode_request(data: bytes) -> WorkerRequest:
    request = pickle.loads(data)  # our own socket, never the test's
    if not isinstance(request, WorkerRequest):
        raise TypeError(f"the zygote was sent a {type(request).__name__}, not a WorkerRequest")
    return request


#: The environment variable that gives the zygote pytest's sys.path.
SYS_PATH_VARIABLE = "PYTEST_TAICHI_LIMITS_SYS_PATH"


def encode_sys_path(paths: list[str]) -> str:
    """pytest's sys.path (rootdir inserts, the pytest script's folder), for the zygote."""
    return json.dumps([str(path) for path in paths])


def decode_sys_path(text: str) -> list[str]:
    paths = json.loads(text)
    if not isinstance(paths, list) or not all(isinstance(path, str) for path in paths):
        raise ValueError(f"{SYS_PATH_VARIABLE} is not a list of paths: {text[:80]!r}")
    return paths
