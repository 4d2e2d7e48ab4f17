"""Which modules a reimport worker imports again, and the handlers for signals to pytest.

Fast and in-process: fake module tables, and real signals sent to this process itself.
"""

from __future__ import annotations

import os
import signal
import sysconfig
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_taichi_limits.launch import startplan
from pytest_taichi_limits.supervise import signals


def fake_module(name: str, path: str | None, package_dirs: list[str] | None = None) -> object:
    module = types.ModuleType(name)
    module.__file__ = path
    if package_dirs is not None:
        module.__path__ = package_dirs
    return module


def test_the_project_is_imported_again_and_installed_code_is_inherited(tmp_path: Path) -> None:
    site = sysconfig.get_paths()["purelib"]
    stdlib = sysconfig.get_paths()["stdlib"]
    project = str(tmp_path)
    modules = {
        "helpers": fake_module("helpers", f"{project}/helpers.py"),
        "conftest": fake_module("conftest", f"{project}/conftest.py"),
        "app": fake_module("app", f"{project}/src/app/__init__.py", [f"{project}/src/app"]),
        "app.kernels": fake_module("app.kernels", f"{project}/src/app/kernels.py"),
        "ns": fake_module("ns", None, [f"{project}/ns"]),  # a namespace package of the project
        "numpy": fake_module("numpy", f"{site}/numpy/__init__.py"),
        "json": fake_module("json", f"{stdlib}/json/__init__.py"),
        "sys": fake_module("sys", None),  # built in
        "__main__": fake_module("__main__", f"{project}/run.py"),
        # Never imported again, wherever they live: a second copy would not know the first's
        # classes (the worker runs on this pytest and this plugin).
        "pytest": fake_module("pytest", f"{project}/pytest/__init__.py"),
        "_pytest.main": fake_module("_pytest.main", f"{project}/_pytest/main.py"),
        "pluggy": fake_module("pluggy", f"{project}/pluggy/__init__.py"),
        "taichi.lang": fake_module("taichi.lang", f"{project}/taichi/lang/__init__.py"),
        "pytest_taichi_limits.plugin": fake_module("x", f"{project}/pytest_taichi_limits/p.py"),
        "frozen": fake_module("frozen", "<frozen importlib._bootstrap>"),
    }
    assert sorted(startplan.project_modules(modules)) == [
        "app",
        "app.kernels",
        "conftest",
        "helpers",
        "ns",
    ]


def test_this_process_imports_count_too() -> None:
    # This test module is project code; pytest and the standard library are not.
    found = startplan.project_modules()
    assert __name__ in found
    assert "os" not in found and "pytest" not in found and "_pytest.main" not in found


@pytest.fixture
def default_handlers() -> Iterator[None]:
    saved = {number: signal.getsignal(number) for number in (*signals.TERMINATING, signal.SIGINT)}
    for number in signals.TERMINATING:
        signal.signal(number, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    for number, handler in saved.items():
        signal.signal(number, handler)


@pytest.mark.usefixtures("default_handlers")
@pytest.mark.parametrize("number", signals.TERMINATING, ids=lambda n: signal.Signals(n).name)
def test_a_terminating_signal_raises_once_and_the_defaults_come_back(number: int) -> None:
    guard = signals.TerminateInOrder()
    with pytest.raises(signals.Terminated) as raised, guard:
        os.kill(os.getpid(), number)
        pytest.fail("the handler did not raise")
    assert raised.value.signum == number
    assert isinstance(raised.value, KeyboardInterrupt)  # pytest ends the session as interrupted
    assert signal.Signals(number).name in str(raised.value)
    for installed in (*signals.TERMINATING, signal.SIGINT):
        expected = signal.default_int_handler if installed == signal.SIGINT else signal.SIG_DFL
        assert signal.getsignal(installed) == expected


@pytest.mark.usefixtures("default_handlers")
def test_signals_while_the_tree_is_stopped_are_ignored() -> None:
    guard = signals.TerminateInOrder()
    stopped = False
    with pytest.raises(signals.Terminated), guard:
        try:
            os.kill(os.getpid(), signal.SIGTERM)
        except signals.Terminated:
            # What the watch loop's handler does: stop the tree, while more signals come.
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGHUP)
            stopped = True
            raise
    assert stopped


@pytest.mark.usefixtures("default_handlers")
def test_ctrl_c_stays_a_plain_keyboard_interrupt() -> None:
    with pytest.raises(KeyboardInterrupt) as raised, signals.TerminateInOrder():
        os.kill(os.getpid(), signal.SIGINT)
    assert not isinstance(raised.value, signals.Terminated)


@pytest.mark.usefixtures("default_handlers")
def test_a_handler_of_the_users_is_left_alone() -> None:
    heard: list[int] = []
    signal.signal(signal.SIGHUP, lambda number, frame: heard.append(number))
    with signals.TerminateInOrder():
        os.kill(os.getpid(), signal.SIGHUP)
    assert heard == [signal.SIGHUP]


@pytest.mark.usefixtures("default_handlers")
def test_the_keeper_ignores_what_reaches_pytests_group_and_the_child_gets_it_back() -> None:
    def users(number: int, frame: object) -> None:
        pass

    signal.signal(signal.SIGQUIT, users)
    with signals.TerminateInOrder():  # a fork while a test is watched
        saved = signals.keeper_signals()
        for number in (*signals.TERMINATING, signal.SIGINT):
            assert signal.getsignal(number) == signal.SIG_IGN
        signals.restore(saved)
    assert signal.getsignal(signal.SIGQUIT) is users
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    assert signal.getsignal(signal.SIGINT) == signal.default_int_handler
