"""What runs inside the supervised child: limits on itself, the test's phases, reports home.

Only public pytest API is used: the phases go through the item's own hooks, so fixtures,
capture, logging and other plugins' wrappers run as in a plain run; reports travel through
`pytest_report_to_serializable`.
"""

from __future__ import annotations

import faulthandler
import gc
import math
import os
import resource
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

import pytest

from ..config.budget import Budget
from ..ipc.channel import ChannelWriter, CommandReader
from ..ipc.protocol import (
    EXIT_DONE,
    EXIT_INTERNAL_ERROR,
    STACK_SIGNAL,
    Done,
    Exit,
    Finished,
    Fixtures,
    Hello,
    InternalError,
    Message,
    Note,
    Phase,
    RaisedWarning,
    Ready,
    Report,
    RunCommand,
)
from ..measure.proctree import ProcessTree
from ..platform import linux
from ..taichi_support import cap as taichi_support
from ..taichi_support.census import TaichiCensus
from ..taichi_support.hooks import install_init_wrapper
from .rounds import RoundRunner

if TYPE_CHECKING:
    from ..config.settings import Settings


@dataclass(frozen=True)
class ChildStart:
    """What a child needs besides its tests: where to write and whom to obey. (A forked child
    inherits the lazy replay of the pytest process's ti.init, armed before the fork.)"""

    channel_fd: int
    stack_fd: int
    control_fd: int
    parent_pid: int
    settings: Settings


def run_forked(
    items: Sequence[pytest.Item], start: ChildStart, first: RunCommand | None = None
) -> NoReturn:
    """Run the tests the parent asks for, one at a time, in this forked process, beginning with
    `first` (the command this child was forked with) if given. Never returns."""
    writer = ChannelWriter(start.channel_fd)

    def body() -> None:
        cap = start_child(writer, start)
        serve(items, writer, CommandReader(start.control_fd), cap, first)

    exit_guarded(writer, body)


def start_child(writer: ChannelWriter, start: ChildStart) -> taichi_support.GpuCap:
    """Confine this process and cap Taichi in it; shared by fork and spawn (child/session.py) mode,
    which collects the tests between this and `serve`."""
    confine_self(start.parent_pid, start.stack_fd)
    cap = taichi_support.prepare_child(Budget(), writer)
    # Everything inherited stays out of this process's garbage collections: a full collection
    # would write to every object's header and copy each page of the parent's heap (measured
    # in benchmarks/bench_fork_cost.py; gc.freeze itself is a constant-time list splice). After
    # prepare_child: where the wrapper was not inherited, it searches the heap once, and
    # gc.get_referrers does not see frozen objects.
    gc.freeze()
    return cap


class StopRequested(BaseException):
    """The supervisor ends this child (a budget was exceeded, pytest is stopping): raised in the
    main thread by SIGTERM, so that the test's fixtures, and every higher-scoped one, are torn
    down before the child leaves. A BaseException, so `except Exception` in a test lets it by."""


class _StopOnSigterm:
    """The child's SIGTERM handler while it serves: the first SIGTERM raises StopRequested in
    the main thread; later ones are ignored, so they cannot cut the teardown it started. A
    Python handler runs between two bytecodes: native code that holds the GIL (a Taichi
    kernel) delays it, and the supervisor's SIGKILL at the end of the grace period still ends
    the child; the report then names the fixtures whose teardown never ran."""

    def __init__(self) -> None:
        self.owner_pid = os.getpid()
        self.raised = False

    def __call__(self, signum: int, frame: Any) -> None:
        if os.getpid() != self.owner_pid:  # a process the test forked inherited this handler
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        if not self.raised:
            self.raised = True
            raise StopRequested()


class FixtureWatch:
    """Tells the parent which fixtures above function scope are set up in this child, each time
    that changes (a `Fixtures` message): when the child is killed before it could tear them
    down, the test's report names them. Public hooks only; registered in the child, or in the
    fork server for its children (`prepare_fork_server`), never in pytest itself."""

    def __init__(self, writer: ChannelWriter | None) -> None:
        self.writer = writer  # None in the fork server: each child sets its own
        self._up: dict[object, str] = {}

    @pytest.hookimpl(wrapper=True)
    def pytest_fixture_setup(self, fixturedef: pytest.FixtureDef[Any]) -> Generator[None, Any, Any]:
        result = yield
        if fixturedef.scope != "function" and fixturedef not in self._up:
            self._up[fixturedef] = f"{fixturedef.argname} ({fixturedef.scope})"
            self._send()
        return result

    def pytest_fixture_post_finalizer(self, fixturedef: pytest.FixtureDef[Any]) -> None:
        if self._up.pop(fixturedef, None) is not None:
            self._send()

    def _send(self) -> None:
        if self.writer is not None:
            self.writer.send(Fixtures(tuple(self._up.values())))


_FIXTURE_WATCH = "taichi_limits_fixtures"


def prepare_fork_server(items: Sequence[pytest.Item]) -> None:
    """In the fork server, once: what each child it forks would otherwise do for itself, and
    copy pytest's pages for (registering a plugin touches every hook caller; about 1 MiB of
    copies per child). Everything inherited is frozen out of the garbage collector, so that no
    collection in a child ever walks (and copies) pytest's objects."""
    install_init_wrapper()
    if items:
        items[0].config.pluginmanager.register(FixtureWatch(None), _FIXTURE_WATCH)
    gc.freeze()


def _watch_fixtures(items: Sequence[pytest.Item], writer: ChannelWriter) -> None:
    if not items:
        return
    manager = items[0].config.pluginmanager
    watch = manager.get_plugin(_FIXTURE_WATCH)
    if isinstance(watch, FixtureWatch):  # registered by the fork server
        watch.writer = writer
    else:
        manager.register(FixtureWatch(writer), _FIXTURE_WATCH)


def serve(
    items: Sequence[pytest.Item],
    writer: ChannelWriter,
    commands: CommandReader,
    cap: taichi_support.GpuCap,
    first: RunCommand | None = None,
) -> None:
    """Wait for a command, run that test, tell the parent, wait again; tear down on stop.
    A child forked with its `first` command runs it at once (the parent took the start
    figures before the fork): no `ready`, no round trip.

    SIGTERM (the supervisor stopping this child) tears down every fixture still set up, then
    the child dies of SIGTERM (in exit_guarded)."""
    signal.signal(signal.SIGTERM, _StopOnSigterm())
    _watch_fixtures(items, writer)
    if first is None:
        writer.send(Ready(os.getpid()))
        commands.ring()
    up: pytest.Item | None = None  # the test whose fixtures may be set up now
    census = TaichiCensus(str(items[0].config.rootpath)) if items else TaichiCensus()
    rounds: RoundRunner | None = None  # leak hunting's, while it runs a test in rounds
    try:
        while isinstance(command := first or commands.next(), RunCommand):
            first = None
            _set_cpu_limit(command.cpu_s)
            cap.cap_gb = command.gpu_gb
            item = items[command.index]
            nextitem = None if command.next_index is None else items[command.next_index]
            up = item
            if command.measured_rounds:
                rounds = _round_runner(item, command, writer, commands, census)
            run_item(item, writer, nextitem, rounds)
            if rounds is not None and not rounds.go_on:
                up = None  # the parent stopped this child during a round: all is torn down
                break
            rounds = None
            commands.ring()
            up = None if nextitem is None else item
        if up is not None:
            # Stopped before the test it expected next (-x, Ctrl-C): the fixtures kept up for
            # it still get their finalizers.
            _tear_down_kept(up, writer)
            up = None
        taichi_support.finish_child(writer)
    except StopRequested:
        if rounds is not None:
            up = rounds.current
        if up is not None:  # everything, module and session fixtures too: this child ends
            again = _TEARDOWN_BEGUN in up.stash  # the stop came during or after its teardown
            _run_phase(up, "teardown", writer, hook=_teardown_hook(up, again), nextitem=None)
        raise
    writer.send(Finished())


def _round_runner(
    item: pytest.Item,
    command: RunCommand,
    writer: ChannelWriter,
    commands: CommandReader,
    census: TaichiCensus,
) -> RoundRunner:
    return RoundRunner(
        item,
        command,
        writer,
        commands,
        census,
        run_phase=_run_phase,
        send_report=lambda item, report: _send_report(item, report, writer),
        teardown_again=lambda item, nextitem: _teardown_again(item, nextitem, writer),
        per_round=lambda: _set_cpu_limit(command.cpu_s),
    )


def _teardown_again(item: pytest.Item, nextitem: pytest.Item | None, writer: ChannelWriter) -> None:
    """Tear down what `item`'s teardown kept for `nextitem`'s sake (its teardown already ran)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            _teardown_hook(item, again=True)(item=item, nextitem=nextitem)
        except Exception as error:  # noqa: BLE001 - reported, never hidden
            writer.send(Note("teardown_failed", f"{type(error).__name__}: {error}"))


#: On a test's stash once its teardown phase has begun: pytest's hooks cannot run it twice as is.
_TEARDOWN_BEGUN = pytest.StashKey[bool]()


def _teardown_hook(item: pytest.Item, again: bool) -> Callable[..., Any]:
    """The teardown hook of `item`; `again`: its teardown phase already ran (keeping the fixtures
    its next test shares) or was cut short by a stop. pytest's logging plugin keeps per-test
    state that its teardown wrapper deletes and needs at its start (a KeyError, before any
    finalizer runs, the second time), so the fixtures still set up are torn down without it."""
    if not again:
        return item.ihook.pytest_runtest_teardown
    manager = item.config.pluginmanager
    logging_plugin = manager.get_plugin("logging-plugin")
    without = [] if logging_plugin is None else [logging_plugin]
    return manager.subset_hook_caller("pytest_runtest_teardown", without)


def _tear_down_kept(item: pytest.Item, writer: ChannelWriter) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            _teardown_hook(item, again=True)(item=item, nextitem=None)
        except Exception as error:  # noqa: BLE001 - reported, never hidden
            writer.send(Note("teardown_failed", f"{type(error).__name__}: {error}"))


def run_item(
    item: pytest.Item,
    writer: ChannelWriter,
    nextitem: pytest.Item | None,
    rounds: RoundRunner | None = None,
) -> None:
    """The test's phases (in rounds, when it hunts leaks) and every message about them, up to
    `done`."""
    writer.send(Hello(item.nodeid, taichi_support.current_arch()))
    with warnings.catch_warnings(record=True) as caught:
        if rounds is not None:
            rounds.run(nextitem)
        else:
            _run_phases(item, writer, nextitem)
    for message in caught:
        writer.send(_warning(message))
    # Anything the test started and left running dies with it, not after it.
    ProcessTree(os.getpid()).kill_descendants()
    # The arch of the Taichi program the test ran with, wherever ti.init happened (at import,
    # in an earlier test of this worker): the record shows it, not "not initialised".
    writer.send(Done(item.nodeid, taichi_support.current_arch()))


def exit_guarded(writer: ChannelWriter, body: Callable[[], None]) -> NoReturn:
    """Run `body`, tell the parent how it ended, and leave this process. Never returns."""
    exit_code: int | None = EXIT_INTERNAL_ERROR
    try:
        body()
        exit_code = EXIT_DONE
    except StopRequested:
        exit_code = None  # torn down (serve): now die of the SIGTERM that asked for it
    except pytest.exit.Exception as stop:
        _send_quietly(writer, Exit("exit", str(stop.msg), stop.returncode))
        exit_code = EXIT_DONE
    except KeyboardInterrupt:
        _send_quietly(writer, Exit("interrupt", "KeyboardInterrupt", 2))
        exit_code = EXIT_DONE
    except BaseException as error:  # noqa: BLE001 - the parent must hear about anything
        _send_quietly(writer, InternalError(f"{type(error).__name__}: {error}"))
    finally:
        _flush_std_streams()
        if exit_code is None:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGTERM])  # a test may block it
            os.kill(os.getpid(), signal.SIGTERM)
            exit_code = 128 + signal.SIGTERM  # seatbelt; the signal ends the process first
        os._exit(exit_code)


def confine_self(parent_pid: int, stack_fd: int) -> None:
    # Own process group: a Ctrl-C at the terminal reaches pytest, which then ends this tree
    # in order instead of every process dying at once mid-report.
    os.setpgid(0, 0)
    linux.set_parent_death_signal(signal.SIGKILL)
    # Orphans of the test's processes are re-parented here, so the supervisor finds them.
    linux.set_child_subreaper(True)
    if os.getppid() != parent_pid:  # the parent died before PDEATHSIG was armed
        os._exit(EXIT_INTERNAL_ERROR)
    # Stacks go where the parent can read them: on its request, on SIGXCPU, and on a crash.
    faulthandler.enable(file=stack_fd, all_threads=True)
    _fault_in_the_dump()
    faulthandler.register(STACK_SIGNAL, file=stack_fd, all_threads=True, chain=False)
    faulthandler.register(signal.SIGXCPU, file=stack_fd, all_threads=True, chain=False)
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _fault_in_the_dump() -> None:
    """Dump this thread's stack once, to /dev/null, so that a dump at the memory cgroup's cap
    needs no new page. faulthandler's handler runs on an alternate signal stack that this
    child has not touched yet (or shares copy-on-write with its parent): at the cap, the first
    write to it would wait in the kernel with the test's other tasks, and the supervisor's
    request for the stack went unanswered (3 of 10 trials with 3 threads filling memory)."""
    null_fd = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
    try:
        faulthandler.register(STACK_SIGNAL, file=null_fd, all_threads=True, chain=False)
        signal.pthread_kill(threading.get_ident(), STACK_SIGNAL)  # handled before it returns
    finally:
        os.close(null_fd)


def _set_cpu_limit(cpu_s: float | None) -> None:
    """The kernel is the backstop for the parent's watch: RLIMIT_CPU counts this process's
    whole life, so each test's limit is what it used so far plus the test's budget."""
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    if cpu_s is None:
        resource.setrlimit(resource.RLIMIT_CPU, (hard, hard))
        return
    usage = resource.getrusage(resource.RUSAGE_SELF)
    soft = max(1, math.ceil(usage.ru_utime + usage.ru_stime + cpu_s))
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))


def _run_phases(item: pytest.Item, writer: ChannelWriter, nextitem: pytest.Item | None) -> None:
    setup = _run_phase(item, "setup", writer)
    if setup.passed and not item.config.getoption("setuponly", False):
        _run_phase(item, "call", writer)
    # Fixtures the next test of this child shares stay up; the rest are torn down here.
    _run_phase(item, "teardown", writer, nextitem=nextitem)


def _run_phase(
    item: pytest.Item,
    when: str,
    writer: ChannelWriter,
    hook: Callable[..., Any] | None = None,
    *,
    send: bool = True,
    **hook_kwargs: Any,
) -> pytest.TestReport:
    """One phase of `item`; its report sent (`send=False`: the caller sends it, or not)."""
    writer.send(Phase(when))
    if when == "teardown":
        item.stash[_TEARDOWN_BEGUN] = True
    if hook is None:
        hook = getattr(item.ihook, f"pytest_runtest_{when}")
    reraise: tuple[type[BaseException], ...] = (
        pytest.exit.Exception,
        KeyboardInterrupt,
        StopRequested,
    )
    os.environ["PYTEST_CURRENT_TEST"] = f"{item.nodeid} ({when})"
    call = pytest.CallInfo.from_call(
        lambda: hook(item=item, **hook_kwargs),
        when=when,  # type: ignore[arg-type]
        reraise=reraise,
    )
    report: pytest.TestReport = item.ihook.pytest_runtest_makereport(item=item, call=call)
    if send:
        _send_report(item, report, writer)
    return report


def _send_report(item: pytest.Item, report: pytest.TestReport, writer: ChannelWriter) -> None:
    data = item.config.hook.pytest_report_to_serializable(config=item.config, report=report)
    writer.send(Report(data))
    taichi_support.inspect_report(report, writer)


def _warning(message: warnings.WarningMessage) -> RaisedWarning:
    category = message.category
    return RaisedWarning(
        str(message.message),
        f"{category.__module__}:{category.__qualname__}",
        str(message.filename),
        int(message.lineno or 0),
    )


def _send_quietly(writer: ChannelWriter, message: Message) -> None:
    try:
        writer.send(message)
    except OSError:
        pass  # the parent will report a child that left without a word


def _flush_std_streams() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 - a closed or replaced stream must not block the exit
            pass
