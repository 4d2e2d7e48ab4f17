"""Spawn mode: run a supervised test in a fresh interpreter when Taichi is initialised here.

Measured with Taichi 1.7.4: once a process has called `ti.init` (and not `ti.reset`), a child
forked from it hangs forever at its first kernel launch. Real suites call `ti.init` at the top of
a test module, in a conftest's `pytest_configure` or in an application module a test imports, so
in `auto` mode the plugin looks, before each supervised test, at whether Taichi holds a program in
this process (`taichi.lang.impl.get_runtime().prog is not None`: `ti.init` creates it and
`ti.reset` drops it; a fork after `ti.reset` runs kernels fine) and, if it does, starts the test
from a pre-started "zygote" interpreter instead: a child of pytest that has imported pytest,
Taichi and the installed plugins but never initialised Taichi. Per test the zygote forks a worker
(zygote.py) that builds a pytest session for that one test file with this run's rootdir, ini
file, plugins and options, collects it (a module-level `ti.init` then happens in the worker) and
runs the item through child.py, exactly as a forked child does. The parent's Supervisor watches the
worker as it watches a forked child: `SpawnLaunch` implements supervisor.Launched.

Where Taichi was initialised is known because the plugin wraps `taichi.init` as soon as Taichi is
imported (`InitRecorder`, installed before the initial conftests load).
"""

from __future__ import annotations

import json
import os
import pickle
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from . import linux
from .budget import Budget
from .records import Ending
from .supervisor import ExitInfo, Settings
from .taichi_hooks import replace_everywhere, when_taichi_imported

#: How long the parent waits for the zygote to fork a worker; the first time this includes the
#: zygote's own start (importing pytest, Taichi and the plugins: about a second here).
START_TIMEOUT_S = 300.0

#: Options of the parent that the worker must not copy: they select, distribute or end the run
#: (the worker runs exactly one test), or they are passed on its command line instead.
_NOT_COPIED = frozenset({
    "file_or_dir", "keyword", "markexpr", "deselect", "ignore", "ignore_glob", "lf", "failedfirst",
    "last_failed_no_failures", "newfirst", "cacheclear", "stepwise", "stepwise_skip",
    "stepwise_reset", "exitfirst", "maxfail", "collectonly", "continue_on_collection_errors",
    "numprocesses", "maxprocesses", "dist", "tx", "px", "rsyncdir", "rsyncignore", "looponfail",
    "maxworkerrestart", "maxschedchunk", "testrunuid", "distload", "basetemp", "plugins",
    "override_ini", "inifilename", "rootdir", "confcutdir", "noconftest", "importmode",
    "capture", "help", "version", "showfixtures", "show_fixtures_per_test", "markers", "debug",
    "traceconfig", "pastebin", "xmlpath", "reportlog", "usepdb", "trace", "setupplan",
})


# -- where Taichi was initialised ------------------------------------------------------------


@dataclass(frozen=True)
class InitSite:
    """One `ti.init` call made in the pytest process."""

    filename: str
    lineno: int
    function: str

    def describe(self, rootpath: os.PathLike[str] | str | None = None) -> str:
        shown = self.filename
        if rootpath is not None:
            try:
                shown = os.path.relpath(self.filename, rootpath)
            except ValueError:
                pass
            if shown.startswith(".." + os.sep):
                shown = self.filename
        return f"{shown}:{self.lineno} (in {self.function})"


class InitRecorder:
    """Wraps `taichi.init` in this process, as soon as Taichi is imported, to note who calls it.

    Modules that do `from taichi import init` after the wrap get the wrapper too; the recorder
    is installed before the initial conftests are imported, so that is every module of the run.
    """

    def __init__(self) -> None:
        self.sites: list[InitSite] = []
        self._installed = False

    def install(self) -> None:
        if self._installed:
            return
        self._installed = True
        when_taichi_imported(self._wrap)

    def _wrap(self) -> None:
        misc = sys.modules.get("taichi.lang.misc")
        original = getattr(misc, "init", None)
        if original is None or getattr(original, "_taichi_limits_recorder", None) is self:
            return
        sites = self.sites
        package_dirs = tuple(
            os.path.dirname(getattr(sys.modules.get(name), "__file__", None) or "/nonexistent")
            + os.sep for name in ("taichi", __package__))

        def init(*args: Any, **kwargs: Any) -> Any:
            sites.append(_caller_outside(package_dirs))
            return original(*args, **kwargs)

        init.__doc__ = original.__doc__
        init.__wrapped__ = original  # type: ignore[attr-defined]
        init._taichi_limits_recorder = self  # type: ignore[attr-defined]
        # taichi, taichi.lang and taichi.lang.misc all hold the function: replace every name.
        replace_everywhere(original, init)


def _caller_outside(package_dirs: tuple[str, ...]) -> InitSite:
    frame = sys._getframe(2)
    while frame is not None and frame.f_code.co_filename.startswith(package_dirs):
        frame = frame.f_back  # type: ignore[assignment]
    if frame is None:
        return InitSite("<unknown>", 0, "?")
    return InitSite(frame.f_code.co_filename, frame.f_lineno, frame.f_code.co_name)


def taichi_initialised_here() -> bool:
    """Whether Taichi holds a program in this process, which a forked child would hang on."""
    impl = sys.modules.get("taichi.lang.impl")
    if impl is None:
        return False
    try:
        return impl.get_runtime().prog is not None
    except Exception:  # noqa: BLE001 - a Taichi we cannot read is treated as initialised
        return True


# -- choosing the mode -------------------------------------------------------------------------


class SpawnWarning(pytest.PytestWarning):
    """A supervised test runs in a fresh interpreter because Taichi is initialised in pytest."""


@dataclass(frozen=True)
class ModeChoice:
    mode: str  # "fork" or "spawn"
    refusal: str | None = None  # fork forced while Taichi is initialised: the test's failure text
    warning: str | None = None  # said once per session, the first time spawn is chosen
    site: InitSite | None = None  # the first ti.init call seen, where the warning points


@dataclass
class SpawnController:
    """Decides fork or spawn per test, and owns the zygote for this pytest process."""

    config: pytest.Config
    recorder: InitRecorder
    configured_mode: str
    _zygote: Zygote | None = None
    _warned: bool = False
    _temp_root: str | None = None
    _count: int = 0
    _worker_setup: tuple[list[str], dict[str, Any]] | None = None
    spawned: int = field(default=0)

    def where(self) -> str:
        rootpath = getattr(self.config, "rootpath", None)
        if self.recorder.sites:
            sites = list(dict.fromkeys(site.describe(rootpath) for site in self.recorder.sites))
            more = f" (and {len(sites) - 1} more)" if len(sites) > 1 else ""
            return f"ti.init at {sites[0]}{more}"
        return "Taichi was initialised before the plugin could watch (place unknown)"

    def header_lines(self) -> list[str]:
        if self.configured_mode == "spawn":
            return [("taichi-limits: start mode spawn (--taichi-limits-mode=spawn): every "
                    "supervised test runs in a fresh interpreter")]
        if not taichi_initialised_here():
            return []
        if self.configured_mode == "fork":
            return [(f"taichi-limits: WARNING: --taichi-limits-mode=fork, but {self.where()} "
                    "initialised Taichi in the pytest process: a forked child would hang at its "
                    "first kernel launch, so supervised tests fail instead of forking. Use "
                    "--taichi-limits-mode=auto.")]
        return [(f"taichi-limits: start mode spawn (slower): {self.where()} initialised Taichi in "
                "the pytest process, and a forked child would hang at its first kernel launch. "
                "For the fast fork mode, call ti.init inside tests or fixtures.")]

    def choose(self) -> ModeChoice:
        if self.configured_mode == "spawn":
            return ModeChoice("spawn")
        if not taichi_initialised_here():
            return ModeChoice("fork")
        if self.configured_mode == "fork":
            return ModeChoice("fork", refusal=(
                f"taichi_limits: not started: --taichi-limits-mode=fork, but {self.where()} "
                "initialised Taichi in the pytest process, and a child forked from it hangs at "
                "its first kernel launch. Use --taichi-limits-mode=auto (or spawn), or call "
                "ti.init inside the test or a fixture so that fork mode works."))
        warning = None
        if not self._warned:
            self._warned = True
            warning = (
                f"taichi-limits: supervised tests now run in spawn mode (a fresh interpreter per "
                f"test, slower than fork) because {self.where()} initialised Taichi in the "
                "pytest process; a forked child would hang at its first kernel launch. For the "
                "fast fork mode, call ti.init inside tests or fixtures (or use the "
                "taichi_limits_ti fixture), not at import or in pytest_configure.")
        return ModeChoice("spawn", warning=warning,
                          site=self.recorder.sites[0] if self.recorder.sites else None)

    def prepare(self) -> None:
        """Start the zygote now, before the supervisor notes which children pytest has."""
        if self._zygote is None or not self._zygote.alive():
            if self._zygote is not None:
                self._zygote.close()
            self._zygote = Zygote.start(self.config.invocation_params.dir)

    def launcher(self, item: pytest.Item, budget: Budget,
                 settings: Settings) -> Callable[[], SpawnLaunch]:
        self.prepare()
        zygote = self._zygote
        assert zygote is not None
        args, options = self._worker_args()
        self._count += 1
        self.spawned += 1
        request = WorkerRequest(
            nodeid=item.nodeid,
            args=[*args, f"--basetemp={self._basetemp(self._count)}", str(item.path)],
            options=options,
            invocation_dir=str(self.config.invocation_params.dir),
            budget=budget,
            settings=settings,
        )
        return lambda: SpawnLaunch(zygote, request)

    def _basetemp(self, number: int) -> str:
        given = self.config.getoption("basetemp", None)
        if given:
            # pytest makes the worker's --basetemp without parents, and this run's own
            # basetemp may not exist yet (it is made on first use).
            root = os.path.abspath(str(given))
            os.makedirs(root, exist_ok=True)
            return os.path.join(root, f"taichi-limits-spawn-{number}")
        if self._temp_root is None:
            self._temp_root = tempfile.mkdtemp(prefix="pytest-taichi-limits-spawn-")
        return os.path.join(self._temp_root, str(number))

    def _worker_args(self) -> tuple[list[str], dict[str, Any]]:
        if self._worker_setup is None:
            self._worker_setup = worker_args(self.config)
        return self._worker_setup

    def close(self) -> None:
        if self._zygote is not None:
            self._zygote.close()
            self._zygote = None
        if self._temp_root is not None:
            shutil.rmtree(self._temp_root, ignore_errors=True)
            self._temp_root = None


def worker_args(config: pytest.Config) -> tuple[list[str], dict[str, Any]]:
    """The worker's command line (what must be known before its conftests load) and the rest
    of this run's option values, copied onto the worker's config before it configures."""
    option = config.option
    args = ["--rootdir", str(config.rootpath)]
    if config.inipath is not None:
        args += ["-c", str(config.inipath)]
    for plugin in getattr(option, "plugins", None) or []:
        args += ["-p", str(plugin)]
    for override in getattr(option, "override_ini", None) or []:
        args += ["-o", str(override)]
    for name, flag in (("confcutdir", "--confcutdir"), ("importmode", "--import-mode"),
                       ("capture", "--capture")):
        value = getattr(option, name, None)
        if value is not None:
            args.append(f"{flag}={value}")
    if getattr(option, "noconftest", False):
        args.append("--noconftest")
    if config.pluginmanager.has_plugin("xdist"):
        args += ["-n", "0"]  # the ini's addopts may say -n; the worker runs one test itself
    copied: dict[str, Any] = {}
    for name, value in vars(option).items():
        if name in _NOT_COPIED:
            continue
        try:
            pickle.dumps(value)
        except Exception:  # noqa: BLE001 - a plugin's live object stays behind
            continue
        copied[name] = value
    return args, copied


# -- the zygote, from the parent's side --------------------------------------------------------


@dataclass(frozen=True)
class WorkerRequest:
    """What the worker needs to run one test: sent pickled to the zygote (our own pipe)."""

    nodeid: str
    args: list[str]
    options: dict[str, Any]
    invocation_dir: str
    budget: Budget
    settings: Settings


class SpawnError(RuntimeError):
    pass


class Zygote:
    """The pre-started interpreter; dies with pytest (PDEATHSIG) and on close()."""

    def __init__(self, process: subprocess.Popen[bytes], control: socket.socket) -> None:
        self.process = process
        self.control = control

    @classmethod
    def start(cls, cwd: os.PathLike[str] | str) -> Zygote:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        environment = dict(os.environ)
        # The zygote sees the modules this run sees (rootdir inserts, the pytest script's dir).
        environment["PYTEST_TAICHI_LIMITS_SYS_PATH"] = json.dumps([str(path) for path in sys.path])
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", "pytest_taichi_limits.zygote",
                 str(theirs.fileno()), str(os.getpid())],
                pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, cwd=cwd, env=environment,
            )
        finally:
            theirs.close()
        return cls(process, ours)

    def alive(self) -> bool:
        return self.process.poll() is None

    def send(self, request: WorkerRequest, fds: list[int]) -> None:
        socket.send_fds(self.control, [pickle.dumps(request)], fds)

    def close(self) -> None:
        try:
            self.control.close()  # the zygote leaves when its control socket closes
            self.process.wait(timeout=2)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class SpawnLaunch:
    """A worker forked by the zygote for one test: implements supervisor.Launched."""

    def __init__(self, zygote: Zygote, request: WorkerRequest) -> None:
        read_fd, write_fd = os.pipe()
        linux.enlarge_pipe(write_fd)
        self.stack_fd = _stack_file()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._result = ours
        self._exit: ExitInfo | None = None
        try:
            zygote.send(request, [write_fd, self.stack_fd, theirs.fileno()])
        except OSError as error:
            for fd in (read_fd, self.stack_fd):
                os.close(fd)
            ours.close()
            raise SpawnError(f"the spawn-mode zygote is gone ({error})") from None
        finally:
            os.close(write_fd)
            theirs.close()
        first = self._receive(timeout_s=START_TIMEOUT_S, zygote=zygote)
        if not first or "pid" not in first:
            os.close(read_fd)
            os.close(self.stack_fd)
            ours.close()
            raise SpawnError(
                "the spawn-mode zygote did not start a worker "
                f"({(first or {}).get('error', 'it exited or did not answer')}); "
                "see its output above")
        self.pid: int = int(first["pid"])
        self.channel_fd = read_fd
        os.set_blocking(read_fd, False)
        ours.setblocking(False)

    def _receive(self, timeout_s: float, zygote: Zygote) -> dict[str, Any] | None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self._result], [], [], 0.5)
            if ready:
                data = self._result.recv(65536)
                return json.loads(data) if data else None
            if not zygote.alive():
                return None
        return None

    def wait_fd(self) -> int | None:
        return self._result.fileno()

    def poll_exit(self, block: bool) -> ExitInfo | None:
        if self._exit is not None:
            return self._exit
        self._result.setblocking(block)
        try:
            data = self._result.recv(65536)
        except BlockingIOError:
            return None
        except OSError:
            data = b""
        finally:
            self._result.setblocking(False)
        if not data:  # the zygote died: its PDEATHSIG took the worker with it
            self._exit = ExitInfo(Ending(None, signal.SIGKILL), 0, 0.0)
            return self._exit
        message = json.loads(data)
        status = int(message["status"])
        if os.WIFSIGNALED(status):
            ending = Ending(None, os.WTERMSIG(status))
        else:
            ending = Ending(os.waitstatus_to_exitcode(status), None)
        self._exit = ExitInfo(ending, int(message["maxrss_bytes"]), float(message["cpu_s"]))
        return self._exit

    def close(self) -> None:
        os.close(self.channel_fd)
        os.close(self.stack_fd)
        self._result.close()


def _stack_file() -> int:
    if hasattr(os, "memfd_create"):
        return os.memfd_create("pytest-taichi-limits-stack")
    handle = tempfile.TemporaryFile()
    return os.dup(handle.fileno())
