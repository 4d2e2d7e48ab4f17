"""Ctrl-C (SIGINT) and SIGTERM to the pytest process while a supervised test runs.

The inner pytest is started with Popen (not pytester) so that the test can send it a real
SIGINT at the moment its supervised test is known to run.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from helpers.watch import assert_none_alive, pid_recorder, watch

INTERRUPTED_TESTS = """
import subprocess, sys, time, signal

STUBBORN = "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); " \\
    "sys.path.insert(0, sys.argv[1]); from test_int import record_pid; record_pid(); time.sleep(300)"

def test_plain_before():
    pass

@pytest.mark.taichi_limits(wall_s={wall_s})
def test_running_when_interrupted():
    record_pid()
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    grandchild = subprocess.Popen([sys.executable, "-c", STUBBORN, {root!r}])
    deadline = time.time() + 20
    while len(open(_PIDS).read().split("\\n")) < 3 and time.time() < deadline:
        time.sleep(0.05)
    open({started!r}, "w").close()
    time.sleep(120)

@pytest.mark.taichi_limits(wall_s=30)
def test_never_reached():
    pass
"""


def run_until_interrupted(
    pytester: pytest.Pytester,
    wall_s: float,
    *args: str,
    delay_s: float = 0.0,
    signum: int = signal.SIGINT,
    tests: str = INTERRUPTED_TESTS,
    then: tuple[int, ...] = (),
    then_after_s: float = 0.0,
) -> tuple[Path, str, int, float]:
    """Run `tests` in an inner pytest (Popen) until its supervised test writes `started`, send
    `signum` to that pytest after `delay_s` (and the signals `then`, `then_after_s` later); (its
    directory, output, exit status, seconds it took to end after the signal)."""
    root = watch(pytester)
    started = root / "started"
    source = (
        "import pytest\n"
        + pid_recorder(root)
        + textwrap.dedent(tests.format(wall_s=wall_s, root=str(root), started=str(started)))
    )
    pytester.makepyfile(test_int=source)
    output = root / "output.txt"
    env = dict(os.environ, TI_SKIP_VERSION_CHECK="ON")
    with open(output, "wb") as sink:
        inner = subprocess.Popen(
            [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "test_int.py", *args],
            cwd=root,
            stdout=sink,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            preexec_fn=_no_core_dump,  # SIGQUIT's default action dumps core
        )
        try:
            deadline = time.monotonic() + 60
            while not started.exists():
                assert inner.poll() is None, output.read_text()
                assert time.monotonic() < deadline, "the supervised test never started"
                time.sleep(0.05)
            time.sleep(delay_s)
            sent_at = time.monotonic()
            inner.send_signal(signum)
            if then_after_s:
                time.sleep(then_after_s)
            for more in then:
                inner.send_signal(more)
            returncode = inner.wait(timeout=60)
            took_s = time.monotonic() - sent_at
        finally:
            if inner.poll() is None:
                inner.kill()
                inner.wait()
    return root, output.read_text(), returncode, took_s


def _no_core_dump() -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def assert_interrupted_summary(text: str, returncode: int) -> None:
    assert returncode == pytest.ExitCode.INTERRUPTED, text
    lines = text.splitlines()
    assert any("KeyboardInterrupt" in line and line.startswith("!!!") for line in lines), text
    # pytest's normal summary line, with the test that had passed before.
    assert "1 passed" in lines[-1], text
    assert "test_never_reached" not in text
    assert "INTERNALERROR" not in text


def test_ctrl_c_kills_the_child_tree_and_shows_the_interrupted_summary(
    pytester: pytest.Pytester,
) -> None:
    root, text, returncode, took_s = run_until_interrupted(pytester, wall_s=60)
    assert_interrupted_summary(text, returncode)
    # The child and its grandchild both ignore SIGTERM: SIGKILL after a short grace, not the
    # configured one (2 s), not the wall_s.
    assert took_s < 20, text
    assert_none_alive(root, at_least=2)


def test_ctrl_c_during_the_grace_period_still_kills_everything(pytester: pytest.Pytester) -> None:
    # wall_s trips after 3 s, then the supervisor waits out a 60 s grace period for the
    # SIGTERM-ignoring tree: Ctrl-C lands inside that wait.
    root, text, returncode, took_s = run_until_interrupted(
        pytester, 3, "--taichi-limits-grace=60", delay_s=4.0
    )
    assert_interrupted_summary(text, returncode)
    assert took_s < 20, text
    assert_none_alive(root, at_least=2)


def test_sigterm_to_pytest_ends_the_tree_before_pytest_dies(pytester: pytest.Pytester) -> None:
    # What a CI time-out does. pytest used to die at once, and the test's grandchildren, which
    # had been re-parented to pytest, went on running under init.
    root, text, returncode, took_s = run_until_interrupted(pytester, 60, signum=signal.SIGTERM)
    assert returncode == -signal.SIGTERM, text  # pytest still dies of the signal
    assert took_s < 20, text
    assert_none_alive(root, at_least=2)


#: A supervised test that starts `sleep`, an `sh` that ignores SIGTERM (its `sleep` inherits
#: that), and a `sleep` in a session of its own, then waits to be stopped.
SIGNALLED_TESTS = """
import subprocess

def test_plain_before():
    pass

@pytest.mark.taichi_limits(wall_s={wall_s})
def test_running_when_signalled():
    record_pid()
    started = [
        subprocess.Popen(["sleep", "300"]),
        subprocess.Popen(["sh", "-c", "trap '' TERM; sleep 300; sleep 300"]),
        subprocess.Popen(["sleep", "300"], start_new_session=True),
    ]
    for process in started:
        record_pid(process.pid)
    open({started!r}, "w").close()
    for process in started:
        process.wait()

@pytest.mark.taichi_limits(wall_s=30)
def test_never_reached():
    pass
"""


@pytest.mark.parametrize(
    "signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT], ids=lambda s: s.name
)
def test_a_terminating_signal_stops_the_tree_writes_incomplete_reports_and_ends_pytest(
    pytester: pytest.Pytester, signum: signal.Signals
) -> None:
    # A closed terminal or SSH session (SIGHUP), Ctrl-\\ (SIGQUIT), a CI time-out (SIGTERM):
    # pytest used to die at once, and the test's processes went on running under init.
    root, text, returncode, took_s = run_until_interrupted(
        pytester,
        120,
        "--taichi-limits-json=report.json",
        "--taichi-limits-markdown=report.md",
        "--junitxml=junit.xml",
        signum=signum,
        tests=SIGNALLED_TESTS,
    )
    assert returncode == -signum, text  # pytest still ends by the signal
    assert took_s < 30, text
    assert_none_alive(root, at_least=4)
    assert f"{signum.name} received while a supervised test ran" in text
    assert "1 passed" in text.splitlines()[-1], text
    document = json.loads((root / "report.json").read_text())
    assert document["complete"] is False
    assert document["exit_status"] == pytest.ExitCode.INTERRUPTED
    assert "PASSED" not in (root / "report.md").read_text().splitlines()[0]
    assert (root / "junit.xml").exists()


def test_more_signals_while_the_tree_is_stopped_do_not_cut_the_stopping_short(
    pytester: pytest.Pytester,
) -> None:
    # An impatient user, or a terminal that closes while a CI time-out fires: the first
    # signal handled decides, the others must not leave the tree behind.
    root, text, returncode, _ = run_until_interrupted(
        pytester,
        120,
        signum=signal.SIGTERM,
        then=(signal.SIGHUP, signal.SIGINT, signal.SIGTERM),
        tests=SIGNALLED_TESTS,
    )
    # Python runs the handlers of signals pending together by number: SIGHUP may come first.
    assert returncode in (-signal.SIGTERM, -signal.SIGHUP), text
    assert_none_alive(root, at_least=4)


#: Under xdist: every supervised test writes `started` and then waits to be stopped.
XDIST_TESTS = """
import time

@pytest.mark.parametrize("number", range(4))
@pytest.mark.taichi_limits(wall_s={wall_s})
def test_waits(number):
    open({started!r}, "w").close()
    time.sleep(120)
"""


@pytest.mark.parametrize("gap_s", [0.0, 0.05, 0.5])
def test_double_ctrl_c_under_xdist_is_never_reported_complete_or_passed(
    pytester: pytest.Pytester, gap_s: float
) -> None:
    # The second Ctrl-C lands wherever it lands (while pytest reports the first, while xdist
    # shuts its workers down, ...): the report, if there is one, says the session was cut short.
    root, text, returncode, _ = run_until_interrupted(
        pytester,
        120,
        "-n",
        "2",
        "--taichi-limits-json=report.json",
        "--taichi-limits-markdown=report.md",
        then=(signal.SIGINT,),
        then_after_s=gap_s,
        tests=XDIST_TESTS,
    )
    assert returncode != 0, text
    report = root / "report.json"
    if report.exists():
        document = json.loads(report.read_text())
        assert document["complete"] is False, document
        assert document["exit_status"] != 0, document
    markdown = root / "report.md"
    if markdown.exists():
        assert "PASSED" not in markdown.read_text().splitlines()[0]
    # (The xdist workers finish their current test after the controller is gone, as they do
    # without the plugin: within its wall_s.)
