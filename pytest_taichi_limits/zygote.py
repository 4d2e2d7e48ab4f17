"""The spawn-mode zygote: a fresh interpreter, started by pytest, that forks one worker per test.

Run as `python -m pytest_taichi_limits.zygote CONTROL_FD PARENT_PID`. It imports pytest, Taichi,
the installed pytest plugins and the third-party modules the pytest process had imported (listed
in the file PYTEST_TAICHI_LIMITS_PREIMPORT names) once, never calling ti.init, so a worker only
imports the test module itself. Per request (a pickled WorkerRequest plus the channel, stack,
result and control fds, over a SEQPACKET socket from the parent) it forks a worker, tells the
parent its pid, waits for it with wait4 and sends its exit status and rusage, encoded as the
keeper of a forked child encodes them (ipc/protocol.py): the parent's SpawnLaunch turns those
into the same ExitInfo a forked child gives.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import socket
import sys


def _die_with_parent(parent_pid: int) -> None:
    from .platform.linux import set_parent_death_signal

    set_parent_death_signal(signal.SIGKILL)
    if os.getppid() != parent_pid:  # pytest died before the signal was armed
        os._exit(1)


def _prewarm() -> None:
    """Import what every worker imports, so each fork has it already."""
    import importlib.metadata

    import pytest  # noqa: F401

    from .child import loop  # noqa: F401
    from .taichi_support.hooks import install_init_wrapper

    # Wrapped at import: every worker inherits the wrapper and only sets its context.
    install_init_wrapper()

    devnull = os.open(os.devnull, os.O_WRONLY)
    saved = os.dup(1)
    os.dup2(devnull, 1)  # Taichi prints a banner on import: the user saw it once already
    try:
        try:
            import taichi  # noqa: F401
        except Exception:  # noqa: BLE001 - the worker will meet the same error and report it
            pass
        if not os.environ.get("PYTEST_DISABLE_PLUGIN_AUTOLOAD"):
            for entry_point in importlib.metadata.entry_points(group="pytest11"):
                try:
                    entry_point.load()
                except Exception:  # noqa: BLE001 - pytest reports a broken plugin itself
                    pass
        _empty_session()
        _import_listed(os.environ.pop("PYTEST_TAICHI_LIMITS_PREIMPORT", ""))
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


def _import_listed(listing: str) -> None:
    """The suite's third-party stack (numpy, scipy, torch, ...), imported once for all workers."""
    import importlib

    if not listing:
        return
    try:
        with open(listing) as handle:
            names = json.load(handle)
    except (OSError, ValueError):
        return
    for name in names:
        if name in sys.modules:
            continue
        try:
            importlib.import_module(name)
        except BaseException:  # noqa: BLE001 - only an optimisation; the worker imports it again
            pass
    from .taichi_support.reinit import taichi_initialised

    if taichi_initialised():  # a package that calls ti.init at import: workers would hang
        import taichi

        taichi.reset()


def _empty_session() -> None:
    """One pytest session over an empty directory imports every module a session needs
    (pytest's own plugins are imported lazily): about 60 ms less per worker."""
    import tempfile

    import pytest

    saved_addopts = os.environ.pop("PYTEST_ADDOPTS", None)  # it may say -n, -x, ...
    saved_stderr = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        from .launch.spawn import TEMP_PREFIX
        from .measure.cgroup import own_start_ticks

        # Named after this process: if it is killed before it removes the folder, the next
        # session's sweep does (launch/spawn.py).
        owner = f"{os.getpid()}-{own_start_ticks()}-"
        with tempfile.TemporaryDirectory(prefix=TEMP_PREFIX + owner) as empty:
            ini = os.path.join(empty, "pytest.ini")
            with open(ini, "w") as handle:
                handle.write("[pytest]\n")
            pytest.main(
                [
                    "-q",
                    "--collect-only",
                    "-p",
                    "no:cacheprovider",
                    "-p",
                    "no:taichi_limits",
                    "--rootdir",
                    empty,
                    "-c",
                    ini,
                    empty,
                ]
            )
    except BaseException:  # noqa: BLE001 - only an optimisation
        pass
    finally:
        sys.stderr.flush()
        os.dup2(saved_stderr, 2)
        os.close(saved_stderr)
        os.close(devnull)
        if saved_addopts is not None:
            os.environ["PYTEST_ADDOPTS"] = saved_addopts


def serve(control: socket.socket) -> None:
    from .child.session import run_worker
    from .ipc.protocol import ChildEnded, ChildStarted, StartFailed, encode_status
    from .ipc.requests import decode_request
    from .launch.forkserver import receive_with_fds
    from .measure.proctree import reap_own_children

    while True:
        try:
            data, fds = receive_with_fds(control, 1 << 22)  # close-on-exec, as pytest made them
        except (ConnectionError, OSError):
            return
        if not data:
            return  # pytest closed the control socket: the session is over
        if len(fds) != 4:
            for fd in fds:
                os.close(fd)
            continue
        channel_fd, stack_fd, result_fd, control_fd = fds
        result = socket.socket(fileno=result_fd)
        try:
            request = decode_request(data)
            zygote_pid = os.getpid()
            pid = os.fork()
        except Exception as error:  # noqa: BLE001 - the parent must hear why
            result.send(encode_status(StartFailed(f"{type(error).__name__}: {error}")))
            result.close()
            for fd in (channel_fd, stack_fd, control_fd):
                os.close(fd)
            continue
        if pid == 0:
            _join_cgroup(request.cgroup_procs)  # before anything: every page is charged there
            control.close()
            result.close()
            run_worker(request, channel_fd, stack_fd, control_fd, zygote_pid)  # never returns
            os._exit(70)
        for fd in (channel_fd, stack_fd, control_fd):
            os.close(fd)
        _join_cgroup(request.cgroup_procs, pid)  # in before the parent looks (the child too)
        try:
            result.send(encode_status(ChildStarted(pid)))
        except OSError:
            pass
        _, status, rusage = os.wait4(pid, 0)
        reap_own_children()  # the test's orphans came here (a subreaper): none outlives it
        try:
            result.send(encode_status(ChildEnded.from_wait4(status, rusage)))
        except OSError:
            pass
        result.close()


def _join_cgroup(procs: str | None, pid: int = 0) -> None:
    """Move a worker (0: this process) into its memory cgroup (measure/cgroup.py): all it
    starts is born there. The worker does it first thing and the zygote once it has forked
    it, whichever comes first. Where neither can, the parent finds the worker outside and
    measures it by smaps instead."""
    if procs is None:
        return
    try:
        with open(procs, "w") as handle:
            handle.write(str(pid))
    except OSError:
        pass


def main(argv: list[str]) -> None:
    control_fd, parent_pid = int(argv[1]), int(argv[2])
    _die_with_parent(parent_pid)
    from .platform.linux import set_child_subreaper

    # The test's orphans are re-parented here, never to pytest (whose own children they
    # would be mistaken for): this process is the keeper of every worker's tree.
    set_child_subreaper(True)
    # Its own process group: a Ctrl-C at the terminal is pytest's to handle, not ours.
    os.setpgid(0, 0)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from .ipc.requests import SYS_PATH_VARIABLE, decode_sys_path

    parent_path = os.environ.pop(SYS_PATH_VARIABLE, None)
    if parent_path:
        sys.path[:] = decode_sys_path(parent_path)
    control = socket.socket(fileno=control_fd)
    _prewarm()
    # Everything imported so far is shared with every worker: keep the collector from
    # touching (and so copying) those pages in each of them.
    gc.collect()
    gc.freeze()
    serve(control)


if __name__ == "__main__":
    main(sys.argv)
