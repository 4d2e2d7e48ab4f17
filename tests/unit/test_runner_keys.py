"""Which worker runs each test (`Runner.key_of`), with small fakes: no pytest run, no fork.

The key decides what shares a child: a test id (isolation test), a module path (isolation
module) or the session; and how the child starts (fork, spawn; "reimport" is a forked child that
imports its project's modules again).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest

from pytest_taichi_limits.config.settings import Settings
from pytest_taichi_limits.launch.runner import Key, Refused, Runner
from pytest_taichi_limits.launch.startplan import InitRecorder, ModuleStart


@dataclass
class FakeItem:
    path: Path
    nodeid: str


def runner(
    mode: str = "auto",
    isolation: str = "test",
    fresh: dict[str, str] | None = None,
    kept: str | None = None,
) -> Runner:
    """A runner whose start plan marks the modules of `fresh` (path -> reason) as needing a
    fresh import, and whose pytest process keeps Taichi state for unsupervised tests (`kept`)."""
    made = Runner(
        cast(pytest.Config, None), Settings(mode=mode, isolation=isolation), InitRecorder()
    )
    made.modules = {
        os.path.abspath(path): ModuleStart(True, reason) for path, reason in (fresh or {}).items()
    }
    made._kept, made._kept_known = kept, True  # what keeps_taichi_state() decided for this test
    return made


A = FakeItem(Path("/p/tests/test_a.py"), "tests/test_a.py::test_one")
A2 = FakeItem(Path("/p/tests/test_a.py"), "tests/test_a.py::test_two")
B = FakeItem(Path("/p/tests/test_b.py"), "tests/test_b.py::test_one")


def key(made: Runner, item: FakeItem) -> Key:
    return made.key_of(cast(Any, item))


@pytest.mark.parametrize(
    "isolation, scope_a, scope_a2, scope_b",
    [
        ("test", A.nodeid, A2.nodeid, B.nodeid),
        ("module", str(A.path), str(A.path), str(B.path)),
        ("session", "session", "session", "session"),
    ],
)
def test_isolation_decides_what_shares_a_forked_child(
    isolation: str, scope_a: str, scope_a2: str, scope_b: str
) -> None:
    made = runner(isolation=isolation)
    assert [key(made, item) for item in (A, A2, B)] == [
        Key("fork", scope_a),
        Key("fork", scope_a2),
        Key("fork", scope_b),
    ]


def test_spawn_mode_keeps_the_isolation_scope() -> None:
    made = runner(mode="spawn", isolation="module")
    assert key(made, A) == Key("spawn", str(A.path))
    assert key(runner(mode="spawn"), A) == Key("spawn", A.nodeid)


def test_a_module_with_taichi_state_at_import_is_imported_again_once_per_module() -> None:
    fresh = {str(A.path): "test_a.py:3 calls ti.init at import"}
    per_test = runner(fresh=fresh)
    # isolation test: its tests share the module's state, as in plain pytest: one worker
    assert key(per_test, A) == key(per_test, A2) == Key("reimport", str(A.path))
    assert key(per_test, B) == Key("fork", B.nodeid)
    # isolation module: consecutive such modules share one worker ("session" scope)
    assert key(runner(isolation="module", fresh=fresh), A) == Key("reimport", "session")


def test_state_kept_for_unsupervised_tests_means_a_fresh_interpreter() -> None:
    # A marked test while unmarked tests still use pytest's own Taichi fields (issue 16 item 1):
    # no reset of this process, so no fork: a spawn worker.
    made = runner(kept="tests/test_c.py makes a field at import")
    assert key(made, A) == Key("spawn", A.nodeid)
    fresh = runner(fresh={str(A.path): "ti.init at import"}, kept="a field at import")
    assert key(fresh, A) == Key("spawn", str(A.path))


def test_forced_fork_mode_refuses_what_cannot_fork_and_says_why() -> None:
    fresh = runner(mode="fork", fresh={str(A.path): "test_a.py:3 calls ti.init at import"})
    with pytest.raises(Refused, match=r"this module cannot simply be forked: test_a\.py:3"):
        key(fresh, A)
    assert key(fresh, B) == Key("fork", B.nodeid)
    kept = runner(mode="fork", kept="a field at import")
    with pytest.raises(Refused, match="this test cannot simply be forked: a field at import"):
        key(kept, A)
