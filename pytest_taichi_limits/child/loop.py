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
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

import pytest

from ..config.budget import Budget
from ..ipc.channel import ChannelWriter
from ..ipc.protocol import EXIT_DONE, EXIT_INTERNAL_ERROR, STACK_SIGNAL, CommandReader, Kind
from ..measure.proctree import ProcessTree
from ..platform import linux
from ..taichi_support import cap as taichi_support

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


def run_forked(items: Sequence[pytest.Item], start: ChildStart) -> NoReturn:
    """Run the tests the parent asks for, one at a time, in this forked process. Never returns."""
    writer = ChannelWriter(start.channel_fd)

    def body() -> None:
        cap = start_child(writer, start)
        serve(items, writer, CommandReader(start.control_fd), cap)

    exit_guarded(writer, body)


def start_child(writer: ChannelWriter, start: ChildStart) -> taichi_support.GpuCap:
    """Confine this process and cap Taichi in it; shared by fork and spawn (child/session.py) mode,
    which collects the tests between this and `serve`."""
    _confine_self(start.parent_pid, start.stack_fd)
    cap = taichi_support.prepare_child(Budget(), writer)
    # Everything inherited stays out of this process's garbage collections: a full collection
    # would write to every object's header and copy each page of the parent's heap (measured
    # in benchmarks/bench_fork_cost.py; gc.freeze itself is a constant-time list splice). After
    # prepare_child: where the wrapper was not inherited, it searches the heap once, and
    # gc.get_referrers does not see frozen objects.
    gc.freeze()
    return cap


def serve(
    items: Sequence[pytest.Item],
    writer: ChannelWriter,
    commands: CommandReader,
    cap: taichi_support.GpuCap,
) -> None:
    """Wait for a command, run that test, tell the parent, wait again; tear down on stop."""
    writer.send(Kind.READY, pid=os.getpid())
    commands.ring()
    last: pytest.Item | None = None
    while (command := commands.next()) is not None:
        _set_cpu_limit(command.cpu_s)
        cap.cap_gb = command.gpu_gb
        nextitem = None if command.next_index is None else items[command.next_index]
        run_item(items[command.index], writer, nextitem)
        commands.ring()
        last = None if nextitem is None else items[command.index]
    if last is not None:
        # Stopped before the test it expected next (-x, Ctrl-C): the fixtures kept up for it
        # still get their finalizers.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                last.ihook.pytest_runtest_teardown(item=last, nextitem=None)
            except Exception as error:  # noqa: BLE001 - reported, never hidden
                writer.send(
                    Kind.NOTE, key="teardown_failed", text=f"{type(error).__name__}: {error}"
                )
    taichi_support.finish_child(writer)
    writer.send(Kind.FINISHED)


def run_item(item: pytest.Item, writer: ChannelWriter, nextitem: pytest.Item | None) -> None:
    """The test's phases and every message about them, up to `done`."""
    writer.send(Kind.HELLO, nodeid=item.nodeid)
    with warnings.catch_warnings(record=True) as caught:
        _run_phases(item, writer, nextitem)
    for message in caught:
        writer.send(Kind.WARNING, **_warning_fields(message))
    # Anything the test started and left running dies with it, not after it.
    ProcessTree(os.getpid()).kill_descendants()
    writer.send(Kind.DONE, nodeid=item.nodeid)


def exit_guarded(writer: ChannelWriter, body: Callable[[], None]) -> NoReturn:
    """Run `body`, tell the parent how it ended, and leave this process. Never returns."""
    exit_code = EXIT_INTERNAL_ERROR
    try:
        body()
        exit_code = EXIT_DONE
    except pytest.exit.Exception as stop:
        _send_quietly(
            writer, Kind.EXIT, reason="exit", message=str(stop.msg), returncode=stop.returncode
        )
        exit_code = EXIT_DONE
    except KeyboardInterrupt:
        _send_quietly(
            writer, Kind.EXIT, reason="interrupt", message="KeyboardInterrupt", returncode=2
        )
        exit_code = EXIT_DONE
    except BaseException as error:  # noqa: BLE001 - the parent must hear about anything
        _send_quietly(writer, Kind.INTERNAL_ERROR, text=f"{type(error).__name__}: {error}")
    finally:
        _flush_std_streams()
        os._exit(exit_code)


def _confine_self(parent_pid: int, stack_fd: int) -> None:
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
    faulthandler.register(STACK_SIGNAL, file=stack_fd, all_threads=True, chain=False)
    faulthandler.register(signal.SIGXCPU, file=stack_fd, all_threads=True, chain=False)
    signal.signal(signal.SIGINT, signal.SIG_DFL)


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
    item: pytest.Item, when: str, writer: ChannelWriter, **hook_kwargs: Any
) -> pytest.TestReport:
    writer.send(Kind.PHASE, when=when)
    hook = getattr(item.ihook, f"pytest_runtest_{when}")
    reraise: tuple[type[BaseException], ...] = (pytest.exit.Exception, KeyboardInterrupt)
    os.environ["PYTEST_CURRENT_TEST"] = f"{item.nodeid} ({when})"
    call = pytest.CallInfo.from_call(
        lambda: hook(item=item, **hook_kwargs),
        when=when,  # type: ignore[arg-type]
        reraise=reraise,
    )
    report: pytest.TestReport = item.ihook.pytest_runtest_makereport(item=item, call=call)
    data = item.config.hook.pytest_report_to_serializable(config=item.config, report=report)
    writer.send(Kind.REPORT, data=data)
    taichi_support.inspect_report(report, writer)
    return report


def _warning_fields(message: warnings.WarningMessage) -> dict[str, Any]:
    category = message.category
    return {
        "message": str(message.message),
        "category": f"{category.__module__}:{category.__qualname__}",
        "filename": message.filename,
        "lineno": message.lineno,
    }


def _send_quietly(writer: ChannelWriter, kind: str, **fields: Any) -> None:
    try:
        writer.send(kind, **fields)
    except OSError:
        pass  # the parent will report a child that left without a word


def _flush_std_streams() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 - a closed or replaced stream must not block the exit
            pass
