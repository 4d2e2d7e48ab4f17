"""Admission end to end: real pytest runs under pytest-xdist, real ledgers, a real SIGKILL.

Every run gets a private ledger directory (PYTEST_TAICHI_LIMITS_LEDGER), so these tests share
nothing with each other or with a user's own runs. Verdicts come from timestamps the tests
record, never from how long something took: a test that must run alone waits a few seconds for a
third test to start (which correct admission never lets happen) and the recorded intervals are
checked; a test that must overlap waits until a second one has started, and fails with a clear
message if none does within a minute.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.plugin_types import RunPlugin

pytest.importorskip("xdist")

TESTS = """
import json
import os
import pathlib
import time

import pytest

LOG = pathlib.Path(os.environ["ADMIT_LOG"])
WAIT_FOR = int(os.environ.get("ADMIT_WAIT_FOR", "0"))  # wait until this many tests started
MUST = os.environ.get("ADMIT_MUST") == "1"  # ... and fail if they never do
PATIENCE_S = float(os.environ.get("ADMIT_PATIENCE_S", "3"))


def run(name):
    started = time.time()
    (LOG / f"{{name}}.start").write_text(repr(started))
    deadline = time.monotonic() + PATIENCE_S
    while len(list(LOG.glob("*.start"))) < WAIT_FOR:
        if time.monotonic() > deadline:
            if MUST:
                pytest.fail(f"{{name}}: no other test started within {{PATIENCE_S}} s, so the "
                            "tests did not run side by side")
            break
        time.sleep(0.05)
    time.sleep(0.3)
    (LOG / f"{{name}}.json").write_text(json.dumps([started, time.time()]))


@pytest.mark.taichi_limits({mark})
@pytest.mark.parametrize("number", range({count}))
def test_admitted(number):
    run(f"{{__name__}}-{{number}}")
"""


@pytest.fixture
def admit_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private ledger and a log directory for the tests' timestamps."""
    log = tmp_path / "timestamps"
    log.mkdir()
    monkeypatch.setenv("PYTEST_TAICHI_LIMITS_LEDGER", str(tmp_path / "ledger"))
    monkeypatch.setenv("ADMIT_LOG", str(log))
    return log


def _intervals(log: Path) -> list[tuple[float, float]]:
    return [tuple(json.loads(path.read_text())) for path in sorted(log.glob("*.json"))]


def _most_at_once(intervals: list[tuple[float, float]]) -> int:
    return max(
        sum(1 for start, end in intervals if start <= moment < end) for moment, _ in intervals
    )


def _ledger_entries(tmp_path: Path) -> list[str]:
    path = tmp_path / "ledger" / "ledger"
    return path.read_text().splitlines() if path.exists() else []


@pytest.mark.parametrize(
    "mark, capacity",
    [("mem_mb=1024", "mem=2GB"), ("mem_mb=10, gpu_gb=2", "gpu=4GB")],
    ids=["memory", "gpu"],
)
def test_four_tests_under_room_for_two_never_run_more_than_two_at_once(
    pytester: pytest.Pytester,
    run_plugin: RunPlugin,
    admit_env: Path,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    mark: str,
    capacity: str,
) -> None:
    pytester.makepyfile(test_four=TESTS.format(mark=mark, count=4))
    monkeypatch.setenv("ADMIT_WAIT_FOR", "3")  # a third test would start if it could
    result = run_plugin(
        "-n",
        "4",
        "--taichi-limits-admit",
        f"--taichi-limits-capacity={capacity}",
        "--taichi-limits-log=usage.jsonl",
    )
    result.assert_outcomes(passed=4)
    intervals = _intervals(admit_env)
    assert len(intervals) == 4
    assert _most_at_once(intervals) <= 2
    result.stdout.fnmatch_lines(
        [
            (
                "*taichi-limits: admission by budget: each supervised test reserves its mem_mb and "
                "gpu_gb budgets before it starts; capacity *"
            ),
            "*taichi-limits admission*",
            "4 tests admitted; waited * s in total*",
            "peak reserved * (machine-wide, every session)*",
        ]
    )
    usages = [json.loads(line) for line in (pytester.path / "usage.jsonl").read_text().splitlines()]
    assert len(usages) == 4
    for usage in usages:
        extra = usage["admission"]
        assert extra["admission_wait_s"] >= 0 and extra["admission_source"] == "its budget"
        if capacity == "gpu=4GB":
            assert extra["admission_gpu_bytes"] == 2 * 1024**3
            assert extra["admission_reserved_gpu_bytes"] <= 4 * 1024**3
        else:
            assert extra["admission_reserved_mem_bytes"] <= 2 * 1024**3
    # Measured once, by the xdist controller, for every worker (gpu case: MemAvailable).
    assert len({usage["admission"]["admission_capacity_mem_bytes"] for usage in usages}) == 1
    assert _ledger_entries(tmp_path) == []  # every reservation released


def test_with_room_for_all_they_overlap(
    pytester: pytest.Pytester,
    run_plugin: RunPlugin,
    admit_env: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pytester.makepyfile(test_four=TESTS.format(mark="mem_mb=1024", count=4))
    monkeypatch.setenv("ADMIT_WAIT_FOR", "2")
    monkeypatch.setenv("ADMIT_MUST", "1")
    monkeypatch.setenv("ADMIT_PATIENCE_S", "60")
    result = run_plugin(
        "-n", "4", "--taichi-limits-admit=budget", "--taichi-limits-capacity=mem=8GB"
    )
    result.assert_outcomes(passed=4)
    assert _most_at_once(_intervals(admit_env)) >= 2


@pytest.mark.parametrize(
    "mark, says",
    [
        (
            "mem_mb=4096",
            (
                "needs memory 4.0 GiB (its budget) but the whole capacity is 2.0 GiB "
                "(declared): it could never start*"
            ),
        ),
        (
            "mem_mb=10, gpu_gb=8",
            (
                "needs GPU memory 8.0 GiB (its budget) but the largest device holds "
                "4.0 GiB: it could never start*"
            ),
        ),
    ],
    ids=["memory", "gpu"],
)
def test_a_test_larger_than_the_capacity_fails_at_once(
    pytester: pytest.Pytester, run_plugin: RunPlugin, admit_env: Path, mark: str, says: str
) -> None:
    pytester.makepyfile(test_big=TESTS.format(mark=mark, count=1))
    result = run_plugin("--taichi-limits-admit", "--taichi-limits-capacity=mem=2GB,gpu=4GB")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([f"taichi_limits admission: test_big.py::test_admitted?0? {says}"])
    assert "During handling" not in result.stdout.str()
    assert not list(admit_env.iterdir())  # the test body never ran


def test_two_sessions_started_together_share_one_ledger(
    pytester: pytest.Pytester, admit_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("test_first", "test_second"):
        pytester.makepyfile(**{name: TESTS.format(mark="mem_mb=1024", count=2)})
    monkeypatch.setenv("ADMIT_WAIT_FOR", "2")  # a test of the other session would start if it could
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "no:cacheprovider",
        "-p",
        "no:xdist",
        "--taichi-limits-admit",
        "--taichi-limits-capacity=mem=1GB",
    ]
    sessions = [
        subprocess.Popen(
            [*command, f"{name}.py"],
            cwd=pytester.path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for name in ("test_first", "test_second")
    ]
    outputs = [session.communicate(timeout=120)[0].decode() for session in sessions]
    for session, output in zip(sessions, outputs, strict=True):
        assert session.returncode == 0, output
        assert "2 passed" in output
    intervals = _intervals(admit_env)
    assert len(intervals) == 4
    assert _most_at_once(intervals) == 1  # 1 GB each under 1 GB: one at a time, both sessions


KILLER = """
import os
import signal
import time

import pytest


#: The xdist worker: it collects this module (the test runs below the plugin's keeper).
XDIST_WORKER_PID = os.getpid()


@pytest.mark.taichi_limits(mem_mb=1024)
def test_a_kills_its_worker():
    os.kill(XDIST_WORKER_PID, signal.SIGKILL)  # the process holding this test's reservation
    time.sleep(60)


@pytest.mark.taichi_limits(mem_mb=1024)
@pytest.mark.parametrize("number", range(2))
def test_b_after(number):
    pass
"""


def test_worker_killed_while_holding_a_reservation_does_not_block_the_rest(
    pytester: pytest.Pytester, run_plugin: RunPlugin, admit_env: Path, tmp_path: Path
) -> None:
    pytester.makepyfile(test_killer=KILLER)
    # One worker, so the other tests run after the kill, in the replacement worker; each needs
    # the whole capacity that the dead worker's reservation holds.
    result = run_plugin("-n", "1", "--taichi-limits-admit", "--taichi-limits-capacity=mem=1GB")
    result.stdout.fnmatch_lines(["*worker 'gw0' crashed while running*test_a_kills_its_worker*"])
    result.assert_outcomes(passed=2, failed=1)
    assert _ledger_entries(tmp_path) == []


def test_bad_admission_options_are_usage_errors(
    pytester: pytest.Pytester, run_plugin: RunPlugin, admit_env: Path
) -> None:
    pytester.makepyfile(test_ok="def test_ok():\n    pass\n")
    for args, says in [
        (["--taichi-limits-admit=maybe"], "*--taichi-limits-admit*invalid choice*'maybe'*"),
        (
            ["--taichi-limits-admit", "--taichi-limits-capacity=mem=lots"],
            "*--taichi-limits-capacity: cannot read the amount 'lots'*",
        ),
        (
            ["--taichi-limits-admit=baseline"],
            "*--taichi-limits-admit=baseline needs a baseline*--taichi-limits-compare=PATH*",
        ),
        (
            ["-o", "taichi_limits_admit=sometimes"],
            "*ini option taichi_limits_admit must be budget, baseline or off, got 'sometimes'*",
        ),
    ]:
        result = run_plugin(*args)
        assert result.ret == 4, args
        result.stderr.fnmatch_lines([says])


def test_shared_ledger_directory_of_another_user_is_refused(
    pytester: pytest.Pytester,
    run_plugin: RunPlugin,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    shared = tmp_path / "open"
    shared.mkdir()
    shared.chmod(0o777)
    monkeypatch.setenv("PYTEST_TAICHI_LIMITS_LEDGER", str(shared))
    pytester.makepyfile(test_ok="def test_ok():\n    pass\n")
    result = run_plugin("--taichi-limits-admit")
    assert result.ret == 4
    result.stderr.fnmatch_lines(["*not a directory owned by you and writable only by you*"])
    assert os.listdir(shared) == []


def test_baseline_mode_reserves_measured_peaks_and_ini_switches_it_on(
    pytester: pytest.Pytester, run_plugin: RunPlugin, admit_env: Path
) -> None:
    pytester.makepyfile(test_small=TESTS.format(mark="mem_mb=1024", count=3))
    pytester.makeini("[pytest]\ntaichi_limits_admit = baseline\n")
    saved = run_plugin(
        "--taichi-limits-admit=off", "--taichi-limits-save-baseline=base.json", "-k", "not 2"
    )  # test_admitted[2] stays out of the baseline
    saved.assert_outcomes(passed=2)
    result = run_plugin(
        "--taichi-limits-compare=base.json",
        "--taichi-limits-log=usage.jsonl",
        "--taichi-limits-capacity=mem=1GB",
    )
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(
        [
            (
                "*admission by baseline: each supervised test reserves its "
                "baseline peaks plus tolerance*"
            )
        ]
    )
    extras = {
        usage["nodeid"]: usage["admission"]
        for usage in map(json.loads, (pytester.path / "usage.jsonl").read_text().splitlines())
    }
    measured = [extras[f"test_small.py::test_admitted[{n}]"] for n in (0, 1)]
    for extra in measured:
        assert extra["admission_source"] == "baseline peak plus tolerance, at most the budget"
        assert extra["admission_mem_bytes"] < 1024**3
    new = extras["test_small.py::test_admitted[2]"]
    assert new["admission_mem_bytes"] == 1024**3  # not in the baseline: its budget
    assert new["admission_source"] == "its budget; not in the baseline"


FAKE_GPUS = """
from pytest_taichi_limits.admission import capacity

GB = 1024**3


def fake_devices():
    return ([capacity.Device(index, 16 * GB, f"GPU-fake{index}") for index in range(3)],
            "fake NVML, 3 device(s)")


capacity.nvml_devices = fake_devices
"""

DEVICE_TESTS = """
import json
import os
import pathlib
import time

import pytest

LOG = pathlib.Path(os.environ["ADMIT_LOG"])


@pytest.mark.taichi_limits(mem_mb=10, gpu_gb=10)
@pytest.mark.parametrize("number", range(4))
def test_on_a_device(number):
    started = time.time()
    seen = [os.environ.get("CUDA_VISIBLE_DEVICES"), os.environ.get("TI_VISIBLE_DEVICE")]
    time.sleep(1.0)
    (LOG / f"{number}.json").write_text(json.dumps([started, time.time(), *seen]))
"""


def test_each_gpu_test_gets_a_device_with_room_within_cuda_visible_devices(
    pytester: pytest.Pytester,
    run_plugin: RunPlugin,
    admit_env: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Three fake 16 GB devices (NVML replaced in a conftest), CUDA_VISIBLE_DEVICES=2,1 set
    outside pytest, four gpu_gb=10 tests under -n 3: each child sees one device of 1 and 2,
    under both names, and no two tests share a device at the same time."""
    pytester.makeconftest(FAKE_GPUS)
    pytester.makepyfile(test_devices=DEVICE_TESTS)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,1")
    result = run_plugin("-n", "3", "--taichi-limits-admit")
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(
        [
            (
                "*capacity memory * GPU 16.0 GiB on each of 2 device(s) (fake "
                "NVML, 3 device(s), 2 visible through "
                "CUDA_VISIBLE_DEVICES='2,1')*"
            )
        ]
    )
    runs = [json.loads(path.read_text()) for path in sorted(admit_env.glob("*.json"))]
    assert len(runs) == 4
    for _, _, cuda, ti_device in runs:
        assert (cuda, ti_device) in (("GPU-fake1", "1"), ("GPU-fake2", "2"))
    for start, end, cuda, _ in runs:
        assert not [
            other
            for other in runs
            if other[2] == cuda and other[0] != start and other[0] < end and start < other[1]
        ]
