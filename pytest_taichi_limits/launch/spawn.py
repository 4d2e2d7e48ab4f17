"""Spawn mode: run supervised tests in a fresh interpreter, for modules that need one.

Per module that left Taichi state behind at import (launch/startplan.py), a worker runs that
module's
tests one after another, as they share module state in plain pytest too. Workers come from a
pre-started "zygote" interpreter, a child of pytest that imported pytest, Taichi, the installed
plugins and the third-party modules this run imported (never calling ti.init): per worker it
forks, and the worker builds a pytest session with this run's rootdir, ini file, plugins and
options for the module's file, collects it (its module-level `ti.init` happens there, under the
cap) and serves the parent's run commands through child/loop.py exactly as a forked child does. The
parent's supervisor watches the worker as it watches a forked child: `SpawnLaunch` implements
supervisor.Launched.

Every wait on the zygote has a deadline, and a zygote that stops answering (stopped by a
signal, hung, dead) is killed and replaced: a worker's end is learnt from a pidfd, its status
from the zygote or, when the zygote is gone, by reaping the worker here (pytest is its child
subreaper meanwhile).
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
from typing import Any

import pytest

from ..ipc.protocol import (
    ChannelError,
    ChildEnded,
    ChildStarted,
    RunCommand,
    StartFailed,
    Status,
    decode_status,
)
from ..ipc.requests import SYS_PATH_VARIABLE, WorkerRequest, encode_request, encode_sys_path
from ..measure import cgroup
from ..model.records import Ending, signal_name
from ..platform import linux
from ..supervise.supervisor import ExitInfo, WorkerGone, control_pair, pidfd_open, stack_file

#: How long the parent waits for the zygote to fork a worker; the first time this includes the
#: zygote's own start (importing pytest, Taichi, the plugins and the suite's third-party stack).
FIRST_START_TIMEOUT_S = 300.0
START_TIMEOUT_S = 60.0
#: How long a worker's end may go unreported by the zygote before the zygote is given up.
STATUS_TIMEOUT_S = 2.0

#: Options of the parent that the worker must not copy: they select, distribute or end the run
#: (the worker runs exactly one test), or they are passed on its command line instead.
_NOT_COPIED = frozenset(
    {
        "file_or_dir",
        "keyword",
        "markexpr",
        "deselect",
        "ignore",
        "ignore_glob",
        "lf",
        "failedfirst",
        "last_failed_no_failures",
        "newfirst",
        "cacheclear",
        "stepwise",
        "stepwise_skip",
        "stepwise_reset",
        "exitfirst",
        "maxfail",
        "collectonly",
        "continue_on_collection_errors",
        "numprocesses",
        "maxprocesses",
        "dist",
        "tx",
        "px",
        "rsyncdir",
        "rsyncignore",
        "looponfail",
        "maxworkerrestart",
        "maxschedchunk",
        "testrunuid",
        "distload",
        "basetemp",
        "plugins",
        "override_ini",
        "inifilename",
        "rootdir",
        "confcutdir",
        "noconftest",
        "importmode",
        "capture",
        "help",
        "version",
        "showfixtures",
        "show_fixtures_per_test",
        "markers",
        "debug",
        "traceconfig",
        "pastebin",
        "xmlpath",
        "reportlog",
        "usepdb",
        "trace",
        "setupplan",
    }
)


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
    for name, flag in (
        ("confcutdir", "--confcutdir"),
        ("importmode", "--import-mode"),
        ("capture", "--capture"),
    ):
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


class SpawnError(RuntimeError):
    pass


class Zygote:
    """The pre-started interpreter; dies with pytest (PDEATHSIG) and on close()."""

    def __init__(self, process: subprocess.Popen[bytes], control: socket.socket) -> None:
        self.process = process
        self.control = control
        self.started_workers = 0

    @classmethod
    def start(cls, cwd: os.PathLike[str] | str, preimport: list[str], temp_dir: str) -> Zygote:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        environment = dict(os.environ)
        # The zygote sees the modules this run sees (rootdir inserts, the pytest script's dir),
        # and imports this run's third-party stack once for all its workers.
        environment[SYS_PATH_VARIABLE] = encode_sys_path(sys.path)
        listing = os.path.join(temp_dir, "preimport.json")
        with open(listing, "w") as handle:
            json.dump(preimport, handle)
        environment["PYTEST_TAICHI_LIMITS_PREIMPORT"] = listing
        try:
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "pytest_taichi_limits.zygote",
                    str(theirs.fileno()),
                    str(os.getpid()),
                ],
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
                cwd=cwd,
                env=environment,
            )
        finally:
            theirs.close()
        return cls(process, ours)

    def usable(self) -> bool:
        """Running, and not stopped by a signal (a stopped zygote never answers)."""
        return self.process.poll() is None and linux.process_state(self.process.pid) != "T"

    def death(self) -> str | None:
        """How the zygote ended, once it has (None: still running, or not known yet)."""
        try:
            code = self.process.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
            return None
        if code < 0:
            return f"killed by signal {-code} ({signal_name(-code)})"
        return f"exited with status {code}"

    def request(self, request: WorkerRequest, fds: list[int]) -> None:
        socket.send_fds(self.control, [encode_request(request)], fds)

    def close(self) -> None:
        """Ask it to leave (its control socket closes); kill it when it does not at once."""
        try:
            self.control.close()
            if linux.process_state(self.process.pid) == "T":
                raise subprocess.TimeoutExpired("zygote", 0)
            self.process.wait(timeout=2)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class SpawnLaunch:
    """A worker forked by the zygote for one module's tests: implements supervisor.Launched."""

    def __init__(self, zygote: Zygote, request: WorkerRequest) -> None:
        read_fd, write_fd = os.pipe()
        control_write, control_read = control_pair()
        linux.enlarge_pipe(write_fd)
        self.stack_fd = stack_file()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.zygote = zygote
        self._result = ours
        self._exit: ExitInfo | None = None
        self._cause: str | None = None
        self._ended_at: float | None = None
        self.channel_fd = read_fd
        self.control_fd = control_write
        self.control_inode = os.fstat(control_read).st_ino
        try:
            zygote.request(request, [write_fd, self.stack_fd, theirs.fileno(), control_read])
        except OSError as error:
            self._close_fds()
            raise SpawnError(f"the spawn-mode zygote is gone ({error})") from None
        finally:
            for fd in (write_fd, control_read):
                os.close(fd)
            theirs.close()
        timeout_s = START_TIMEOUT_S if zygote.started_workers else FIRST_START_TIMEOUT_S
        first = self._receive_start(timeout_s)
        if not isinstance(first, ChildStarted):
            self._close_fds()
            why = first.error if isinstance(first, StartFailed) else "no answer"
            raise SpawnError(f"the spawn-mode zygote did not start a worker ({why})")
        zygote.started_workers += 1
        self.pid = first.pid
        # The zygote is a child subreaper that forks the worker and holds nothing else.
        self.keeper_pid = self.origin_pid = zygote.process.pid
        self._pidfd = pidfd_open(self.pid)
        os.set_blocking(read_fd, False)
        ours.setblocking(False)

    #: the zygote forks a worker at once; it reports ready (supervisor.Launched)
    unborn = False

    def start(self, first: RunCommand | None) -> None:
        raise WorkerGone("a spawn-mode worker is started by the zygote, never with a command")

    def birth_rss_bytes(self) -> int:
        return 0

    def _receive_start(self, timeout_s: float) -> Status:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self._result], [], [], 0.2)
            if ready:
                data = self._result.recv(65536)
                return _decode(data) if data else StartFailed(self._zygote_gone())
            if not self.zygote.usable():
                return StartFailed(self._zygote_gone())
        return StartFailed(f"no answer in {timeout_s:g} s")

    def _zygote_gone(self) -> str:
        death = self.zygote.death()
        if death is not None:
            return f"the spawn-mode zygote {death}"
        return "the spawn-mode zygote stopped answering (stopped by a signal?)"

    def wait_fd(self) -> int | None:
        return self._pidfd if self._pidfd is not None else self._result.fileno()

    def poll_exit(self, block: bool) -> ExitInfo | None:
        deadline = time.monotonic() + (STATUS_TIMEOUT_S * 3 if block else 0.0)
        while True:
            if self._exit is None:
                self._exit = self._poll_once()
            if self._exit is not None or time.monotonic() >= deadline:
                return self._exit
            time.sleep(0.01)

    def _poll_once(self) -> ExitInfo | None:
        try:
            data = self._result.recv(65536)
        except BlockingIOError:
            return self._without_zygote()
        except OSError:
            data = b""
        if not data:  # the zygote died: its PDEATHSIG took the worker with it
            self._cause = f"{self._zygote_gone()}, and the worker died with it"
            return ExitInfo(Ending(None, signal.SIGKILL), 0, 0.0)
        status = _decode(data)
        if not isinstance(status, ChildEnded):
            self._cause = f"the spawn-mode zygote did not say how the worker ended ({data[:80]!r})"
            return ExitInfo(Ending(None, None), 0, 0.0)
        return ExitInfo.of(status)

    def _without_zygote(self) -> ExitInfo | None:
        """The worker ended but the zygote does not say how: after a while, give it up."""
        if self._pidfd is None or not select.select([self._pidfd], [], [], 0)[0]:
            return None
        now = time.monotonic()
        self._ended_at = self._ended_at or now
        if now - self._ended_at < STATUS_TIMEOUT_S and self.zygote.usable():
            return None
        self._cause = (
            "the spawn-mode zygote stopped answering (stopped by a signal?): it "
            "was killed, and will be replaced; the worker's exit status is unknown"
        )
        self.zygote.process.kill()
        self.zygote.process.wait()
        return ExitInfo(Ending(None, None), 0, 0.0)

    def crash_cause(self) -> str | None:
        return self._cause

    def _close_fds(self) -> None:
        for fd in (self.channel_fd, self.stack_fd, self.control_fd):
            os.close(fd)
        self._result.close()

    def close(self) -> None:
        self._close_fds()
        if self._pidfd is not None:
            os.close(self._pidfd)


def _decode(data: bytes) -> Status:
    try:
        return decode_status(data)
    except ChannelError as error:
        return StartFailed(str(error))


#: The start of the name of every temporary folder of a pytest process that starts workers.
TEMP_PREFIX = "pytest-taichi-limits-spawn-"


def new_temp_dir() -> str:
    """A folder for the zygote's listing and the workers' files, removed when the session ends.
    Named after this process (pid and start time): a session killed before it could remove its
    folder (SIGKILL) leaves it to the next one, which removes it here."""
    sweep_stale_temp_dirs(tempfile.gettempdir())
    owner = os.getpid()
    return tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{owner}-{cgroup.own_start_ticks(owner)}-")


def sweep_stale_temp_dirs(parent: str) -> list[str]:
    """Remove the temporary folders under `parent` whose pytest process is gone; the paths
    removed. A live owner's (another session, another xdist worker) is left alone."""
    removed: list[str] = []
    try:
        names = os.listdir(parent)
    except OSError:
        return removed
    for name in names:
        owner = cgroup.owner_of(name, TEMP_PREFIX)
        if owner is None or cgroup.owner_alive(*owner):
            continue  # not ours, named before folders carried their owner, or alive
        path = os.path.join(parent, name)
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed
