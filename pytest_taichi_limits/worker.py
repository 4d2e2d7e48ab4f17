"""The spawn-mode worker: forked by the zygote, runs one test in a pytest session of its own.

It confines itself and installs the GPU cap exactly as a forked child does (child.start_child),
then builds a pytest session with this run's rootdir, ini file, plugins and options for the test's
file, collects it (a module-level `ti.init` happens here, under the cap) and hands the item to
child.run_item: the phases, reports and messages are the fork path's own code.
"""

from __future__ import annotations

import functools
import os
import sys
import tempfile
from typing import TYPE_CHECKING, Any, NoReturn

import pytest

from . import child
from .channel import ChannelWriter

if TYPE_CHECKING:
    from .spawn import WorkerRequest

#: Name of the worker's plugin object; plugin.py looks for it to know it runs in a worker.
WORKER_PLUGIN_NAME = "taichi_limits_spawn_worker"


class WorkerError(RuntimeError):
    pass


def is_worker(config: pytest.Config) -> bool:
    return config.pluginmanager.has_plugin(WORKER_PLUGIN_NAME)


class WorkerPlugin:
    """Copies the parent's options, silences the worker's terminal, runs the one item."""

    def __init__(self, request: WorkerRequest, writer: ChannelWriter) -> None:
        self.__name__ = WORKER_PLUGIN_NAME  # the name pytest registers this object under
        self.request = request
        self.writer = writer
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
        for item in session.items:
            if item.nodeid == self.request.nodeid:
                self.found = True
                plugin: Any = session.config.pluginmanager.get_plugin("taichi_limits_plugin")
                if plugin is not None:  # the budget the parent resolved, hooks included
                    plugin.use_budget(item, self.request.budget)
                self.restore_output()
                run = functools.partial(child.run_item, item, self.writer)
                child.exit_guarded(self.writer, run)  # never returns
        return True

    def silence_output(self) -> None:
        """Until the test runs: what the session prints before (a conftest's ti.init says
        "[Taichi] Starting on arch=x64", plugins warn at configure) the parent printed once
        already. stderr is kept aside: it explains a session that could not start."""
        self.saved_fds = (os.dup(1), os.dup(2))
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.close(devnull)
        self.stderr_file = tempfile.TemporaryFile()
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
        return self.stderr_file.read()[-4000:].decode("utf-8", "replace").strip()

    def why_not_run(self, exit_code: int | pytest.ExitCode) -> str:
        text = (f"the test could not be collected again in a fresh interpreter (spawn mode; "
                f"pytest exit code {int(exit_code)})")
        if not self.found:
            text += f": {self.request.nodeid} was not among the collected items"
        if self.collect_errors:
            text += "\n" + "\n".join(self.collect_errors)[-4000:]
        stderr = self._stderr_tail()
        if stderr:
            text += "\nits stderr:\n" + stderr
        return text


def run_worker(request: WorkerRequest, channel_fd: int, stack_fd: int,
               zygote_pid: int) -> NoReturn:
    writer = ChannelWriter(channel_fd)

    def body() -> None:
        child.start_child(writer, stack_fd, zygote_pid, request.budget, request.settings)
        os.chdir(request.invocation_dir)
        plugin = WorkerPlugin(request, writer)
        plugin.silence_output()
        exit_code = pytest.main(request.args, plugins=[plugin])
        plugin.restore_output()
        raise WorkerError(plugin.why_not_run(exit_code))

    child.exit_guarded(writer, body)
