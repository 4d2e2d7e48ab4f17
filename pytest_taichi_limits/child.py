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
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn

import pytest

from . import linux, taichi_support
from .budget import Budget
from .channel import ChannelWriter
from .proctree import ProcessTree

if TYPE_CHECKING:
    from .supervisor import Settings

#: faulthandler dumps every thread's Python stack on this signal, even while native code
#: (a Taichi kernel) holds the GIL. A real-time signal, so tests that use SIGUSR1/2 keep them.
STACK_SIGNAL = signal.SIGRTMIN + 7

#: Exit codes of the child; anything else is a crash.
EXIT_DONE = 0
EXIT_INTERNAL_ERROR = 70


def run_child(
    item: pytest.Item,
    channel_fd: int,
    stack_fd: int,
    parent_pid: int,
    budget: Budget,
    settings: Settings,
) -> NoReturn:
    """Run `item` in this (forked) process and report to the parent. Never returns."""
    writer = ChannelWriter(channel_fd)

    def body() -> None:
        start_child(writer, stack_fd, parent_pid, budget, settings)
        run_item(item, writer)

    exit_guarded(writer, body)


def start_child(writer: ChannelWriter, stack_fd: int, parent_pid: int, budget: Budget,
                settings: Settings) -> None:
    """Confine this process and cap Taichi in it; shared by fork and spawn (worker.py) mode,
    which collects the test between this and `run_item`."""
    _confine_self(parent_pid, budget, stack_fd)
    # Sets this child's context in the ti.init wrapper the process inherited (taichi_hooks).
    taichi_support.prepare_child(budget, settings, writer)
    # Everything inherited stays out of this process's garbage collections: a full collection
    # would write to every object's header and copy each page of the parent's heap (measured
    # in benchmarks/bench_fork_cost.py; gc.freeze itself is a constant-time list splice). After
    # prepare_child: where the wrapper was not inherited, it searches the heap once, and
    # gc.get_referrers does not see frozen objects.
    gc.freeze()


def run_item(item: pytest.Item, writer: ChannelWriter) -> None:
    """The test's phases and every message about them, up to `done`."""
    writer.send("hello", pid=os.getpid(), rss=linux.rss_bytes())
    with warnings.catch_warnings(record=True) as caught:
        _run_phases(item, writer)
    for message in caught:
        writer.send("warning", **_warning_fields(message))
    taichi_support.finish_child(writer)
    # Anything the test started and left running dies with it, not after it.
    ProcessTree(os.getpid()).kill_descendants()
    writer.send("done")


def exit_guarded(writer: ChannelWriter, body: Callable[[], None]) -> NoReturn:
    """Run `body`, tell the parent how it ended, and leave this process. Never returns."""
    exit_code = EXIT_INTERNAL_ERROR
    try:
        body()
        exit_code = EXIT_DONE
    except pytest.exit.Exception as stop:
        _send_quietly(writer, "exit", reason="exit", message=str(stop.msg),
                      returncode=stop.returncode)
        exit_code = EXIT_DONE
    except KeyboardInterrupt:
        _send_quietly(writer, "exit", reason="interrupt", message="KeyboardInterrupt", returncode=2)
        exit_code = EXIT_DONE
    except BaseException as error:  # noqa: BLE001 - the parent must hear about anything
        _send_quietly(writer, "internal-error", text=f"{type(error).__name__}: {error}")
    finally:
        _flush_std_streams()
        os._exit(exit_code)


def _confine_self(parent_pid: int, budget: Budget, stack_fd: int) -> None:
    # Own process group: a Ctrl-C at the terminal reaches pytest, which then ends this tree
    # in order instead of every process dying at once mid-report.
    os.setpgid(0, 0)
    linux.set_parent_death_signal(signal.SIGKILL)
    # Orphans of the test's processes are re-parented here, so the supervisor finds them.
    linux.set_child_subreaper(True)
    if os.getppid() != parent_pid:  # the parent died before PDEATHSIG was armed
        os._exit(EXIT_INTERNAL_ERROR)
    if budget.cpu_s is not None:
        # The kernel is the backstop for the parent's watch; whole seconds only.
        soft = max(1, math.ceil(budget.cpu_s))
        _, hard = resource.getrlimit(resource.RLIMIT_CPU)
        new_hard = soft + 5 if hard == resource.RLIM_INFINITY else min(hard, soft + 5)
        resource.setrlimit(resource.RLIMIT_CPU, (min(soft, new_hard), new_hard))
    # Stacks go where the parent can read them: on its request, on SIGXCPU, and on a crash.
    faulthandler.enable(file=stack_fd, all_threads=True)
    faulthandler.register(STACK_SIGNAL, file=stack_fd, all_threads=True, chain=False)
    faulthandler.register(signal.SIGXCPU, file=stack_fd, all_threads=True, chain=False)
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _run_phases(item: pytest.Item, writer: ChannelWriter) -> None:
    setup = _run_phase(item, "setup", writer)
    if setup.passed and not item.config.getoption("setuponly", False):
        _run_phase(item, "call", writer)
    # Every fixture this child set up is torn down here: its state dies with the child.
    _run_phase(item, "teardown", writer, nextitem=None)


def _run_phase(
    item: pytest.Item, when: str, writer: ChannelWriter, **hook_kwargs: Any
) -> pytest.TestReport:
    writer.send("phase", when=when)
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
    writer.send("report", data=data)
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
