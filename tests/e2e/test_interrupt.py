"""Ctrl-C (SIGINT) and SIGTERM to the pytest process while a supervised test runs.

The inner pytest is started with Popen (not pytester) so that the test can send it a real
SIGINT at the moment its supervised test is known to run.
"""

from __future__ import annotations

import os
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
) -> tuple[Path, str, int, float]:
    root = watch(pytester)
    started = root / "started"
    source = (
        "import pytest\n"
        + pid_recorder(root)
        + textwrap.dedent(
            INTERRUPTED_TESTS.format(wall_s=wall_s, root=str(root), started=str(started))
        )
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
            returncode = inner.wait(timeout=60)
            took_s = time.monotonic() - sent_at
        finally:
            if inner.poll() is None:
                inner.kill()
                inner.wait()
    return root, output.read_text(), returncode, took_s


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
