"""The spawn-mode worker: forked by the zygote, runs a module's tests in a session of its own.

It confines itself and installs the GPU cap exactly as a forked child does (loop.start_child),
then builds a pytest session with this run's rootdir, ini file, plugins and options for the
module's file, collects it (a module-level `ti.init` happens here, under the cap), checks that it
collected what the parent collected (same ids, same parameter values), and serves the parent's
run commands through loop.serve: the phases, reports and messages are the fork path's own code.
"""

from __future__ import annotations

import os
import pickle
import sys
import tempfile
from typing import TYPE_CHECKING, Any, NoReturn

import pytest

from ..config.options import SPAWN_WORKER_PLUGIN
from ..config.settings import BUDGET_KEY
from ..ipc.channel import ChannelWriter, CommandReader
from ..ipc.protocol import Refused
from . import loop

if TYPE_CHECKING:
    from ..ipc.requests import Fingerprint, WorkerRequest
    from ..taichi_support.cap import GpuCap

#: Name of the worker's plugin object; config.options.is_spawn_worker looks for it.
WORKER_PLUGIN_NAME = SPAWN_WORKER_PLUGIN


class WorkerError(RuntimeError):
    pass


#: Why a module that imports fine in pytest may fail in a worker.
_IMPORTED_TWICE = (
    "The test module's code at import, and that of the project modules it imports, ran a "
    "second time in that worker while the pytest process still holds what the first import "
    "made: an import side effect that only one process can hold (a bound port, a lock) fails "
    "there, as it does under pytest-xdist. See Known limitations in docs/how-it-works.md."
)


#: What the failure text calls each kind of worker (the `mode` of its records).
_WORKER_KINDS = {
    "spawn": "a fresh interpreter (spawn mode)",
    "reimport": (
        "a worker forked from pytest that imports the project's modules again (reimport mode)"
    ),
}


class WorkerPlugin:
    """Copies the parent's options, silences the worker's terminal, runs the one item."""

    def __init__(
        self,
        request: WorkerRequest,
        writer: ChannelWriter,
        cap: GpuCap,
        control_fd: int,
        start_mode: str = "spawn",
    ) -> None:
        self.__name__ = WORKER_PLUGIN_NAME  # the name pytest registers this object under
        self.request = request
        self.start_mode = start_mode
        self.writer = writer
        self.cap = cap
        self.control_fd = control_fd
        self.collect_errors: list[str] = []
        self.found = False
        self.saved_fds: tuple[int, int] | None = None
        self.stderr_file: Any = None

    @pytest.hookimpl(tryfirst=True)
    def pytest_cmdline_main(self, config: pytest.Config) -> None:
        # Before any plugin configures: -v, --tb, -W, --runxfail, ... as in the parent.
        for name, value in self.request.options.items():
            if hasattr(config.option, name):
                setattr(config.option, name, value)

    @pytest.hookimpl(trylast=True)
    def pytest_configure(self, config: pytest.Config) -> None:
        # The parent's terminal shows this test's result; the worker's session prints nothing.
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            config.pluginmanager.unregister(reporter)

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.failed:
            self.collect_errors.append(f"{report.nodeid or '<session>'}: {report.longreprtext}")

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtestloop(self, session: pytest.Session) -> bool:
        collected = {item.nodeid: item for item in session.items}
        items: list[pytest.Item] = []
        for test in self.request.tests:
            item = collected.get(test.nodeid)
            if item is None:
                return True  # why_not_run says which one is missing
            problem = _differs(test, item)
            if problem is not None:
                self.restore_output()
                self.writer.send(Refused(problem))
                loop.exit_guarded(self.writer, lambda: None)  # never returns
            items.append(item)
        self.found = True
        for item, budget in zip(items, self.request.budgets, strict=True):
            item.stash[BUDGET_KEY] = budget  # the taichi_limits_ti fixture reads it
        self.restore_output()
        commands = CommandReader(self.control_fd)
        loop.exit_guarded(
            self.writer,  # never returns
            lambda: loop.serve(items, self.writer, commands, self.cap),
        )

    def silence_output(self) -> None:
        """Until the test runs: what the session prints before (a conftest's ti.init says
        "[Taichi] Starting on arch=x64", plugins warn at configure) the parent printed once
        already. stderr is kept aside: it explains a session that could not start."""
        self.saved_fds = (os.dup(1), os.dup(2))
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.close(devnull)
        # Kept open for the worker's whole life (it explains a session that cannot start).
        self.stderr_file = tempfile.TemporaryFile()  # noqa: SIM115
        os.dup2(self.stderr_file.fileno(), 2)

    def restore_output(self) -> None:
        if self.saved_fds is None:
            return
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        for fd, saved in zip((1, 2), self.saved_fds, strict=True):
            os.dup2(saved, fd)
            os.close(saved)
        self.saved_fds = None

    def _stderr_tail(self) -> str:
        if self.stderr_file is None:
            return ""
        self.stderr_file.seek(0)
        tail: bytes = self.stderr_file.read()[-4000:]
        return tail.decode("utf-8", "replace").strip()

    def why_not_run(self, exit_code: int | pytest.ExitCode) -> str:
        where = _WORKER_KINDS.get(self.start_mode, f"a worker ({self.start_mode} mode)")
        text = (
            f"the test could not be collected again in {where}; pytest exit code {int(exit_code)}"
        )
        if not self.found:
            missing = [t.nodeid for t in self.request.tests]
            text += f": not all of {', '.join(missing[:3])} were among the collected items"
        if self.collect_errors:
            text += "\n" + "\n".join(self.collect_errors)[-4000:]
        stderr = self._stderr_tail()
        if stderr:
            text += "\nits stderr:\n" + stderr
        return text + "\n" + _IMPORTED_TWICE


def _differs(test: Fingerprint, item: pytest.Item) -> str | None:
    """Why the worker's `item` is not the test the parent collected under that id, if it is not.

    With another hash seed, `parametrize` over a set can give the same ids to other values.
    """
    params = getattr(getattr(item, "callspec", None), "params", None) or {}
    if set(params) != set(test.params):
        return f"{test.nodeid}: the fresh interpreter collected other parameters"
    for name, pickled in test.params.items():
        value = params[name]
        if pickled is not None:
            try:
                if pickle.loads(pickled) == value or pickle.dumps(value) == pickled:
                    continue
            except Exception:  # noqa: BLE001 - a value that cannot round-trip is not the same
                pass
        return (
            f"{test.nodeid}: different tests were collected in the fresh interpreter "
            f"(spawn mode): parameter {name!r} has another value under this id, as "
            "happens when parametrize iterates over a set or a dict and the hash seed "
            "differs. Set PYTHONHASHSEED (e.g. PYTHONHASHSEED=0) for the pytest run, or "
            "parametrize over a sorted list"
        )
    return None


def run_worker(
    request: WorkerRequest,
    channel_fd: int,
    stack_fd: int,
    control_fd: int,
    zygote_pid: int,
    start_mode: str = "spawn",
) -> NoReturn:
    writer = ChannelWriter(channel_fd)

    def body() -> None:
        start = loop.ChildStart(channel_fd, stack_fd, control_fd, zygote_pid, request.settings)
        os.environ.update(request.env)  # CUDA reads its device list once, at its first use
        cap = loop.start_child(writer, start)
        # The module's own ti.init runs while it is collected here, before any run command.
        cap.cap_gb = request.budgets[0].gpu_gb if request.budgets else None
        os.chdir(request.invocation_dir)
        plugin = WorkerPlugin(request, writer, cap, control_fd, start_mode)
        plugin.silence_output()
        exit_code = pytest.main(request.args, plugins=[plugin])
        plugin.restore_output()
        raise WorkerError(plugin.why_not_run(exit_code))

    loop.exit_guarded(writer, body)


def reimport_worker(
    request: WorkerRequest,
    modules: list[str],
    channel_fd: int,
    stack_fd: int,
    control_fd: int,
    parent_pid: int,
) -> NoReturn:
    """In a child forked from pytest after it reset Taichi: forget `modules` (every module of
    the project itself: launch/startplan.project_modules) and serve as a worker whose session
    imports and collects them again, as a fresh interpreter would: their module-level ti.init,
    fields and other import side effects happen here once. Only the standard library and the
    installed packages pytest imported (numpy, torch, the plugins) are inherited.
    """
    forgotten = {name: sys.modules.pop(name, None) for name in modules}
    for name, module in forgotten.items():
        package, _, child_name = name.rpartition(".")
        # `from app import kernels` takes the package's attribute when it has one: the old
        # module, whose fields the reset destroyed (where the package itself is inherited).
        parent = sys.modules.get(package)
        if module is not None and getattr(parent, child_name, None) is module:
            delattr(parent, child_name)
    run_worker(request, channel_fd, stack_fd, control_fd, parent_pid, start_mode="reimport")
