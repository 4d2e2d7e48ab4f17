"""Workers that run several tests: per-module fresh interpreters, --taichi-limits-isolation,
per-test budgets and figures inside a shared child, and a zygote that never hangs pytest.

Every run goes through `run_plugin` (a pytester subprocess with a hard timeout).
"""

from __future__ import annotations

from typing import Any

import pytest


class _Opaque:
    """A parameter without __eq__ and without a stable repr (its id is in it)."""

    def __init__(self, size: int) -> None:
        self.size = size


class _Locked:
    """A parameter that cannot be pickled at all."""

    def __reduce__(self) -> Any:
        raise TypeError("no")


def _item(nodeid: str, **params: object) -> Any:
    from types import SimpleNamespace

    return SimpleNamespace(nodeid=nodeid, callspec=SimpleNamespace(params=params))


@pytest.mark.parametrize(
    "parent, worker, same",
    [
        ({"p": {"a": 1, "b": 2}}, {"p": {"b": 2, "a": 1}}, True),  # a dict, another order
        ({"p": {"a": 1}}, {"p": {"a": 2}}, False),
        ({"p": frozenset({"x", "y"})}, {"p": frozenset({"y", "x"})}, True),
        ({"p": frozenset({"x"})}, {"p": frozenset({"y"})}, False),
        ({"p": _Opaque(3)}, {"p": _Opaque(3)}, True),  # same state: same pickle
        ({"p": _Opaque(3)}, {"p": _Opaque(4)}, False),
        ({"p": _Locked()}, {"p": _Locked()}, False),  # cannot be compared: refused
    ],
)
def test_a_fresh_interpreter_checks_parameter_values_not_their_text(
    parent: dict[str, object], worker: dict[str, object], same: bool
) -> None:
    from pytest_taichi_limits.child.session import _differs
    from pytest_taichi_limits.ipc.requests import fingerprint

    problem = _differs(fingerprint(_item("t.py::t[p0]", **parent)), _item("t.py::t[p0]", **worker))
    if same:
        assert problem is None
    else:
        assert problem is not None and "t.py::t[p0]" in problem and "PYTHONHASHSEED" in problem
