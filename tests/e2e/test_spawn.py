"""Spawn mode: Taichi initialised in the pytest process never makes a supervised test hang.

Every run goes through `run_plugin` (a pytester subprocess with a hard timeout): a fork after
`ti.init` hangs at the first kernel launch, so a regression here must fail, never hang CI.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import psutil
import pytest
from helpers.plugin_types import RunPlugin

KERNEL_MODULE = """
import pytest
import taichi as ti

ti.init(arch=ti.cpu)
values = ti.field(ti.i32, shape=8)

@ti.kernel
def fill(factor: ti.i32):
    for i in values:
        values[i] = i * factor

@pytest.mark.parametrize("factor", [1, 2, 3])
def test_parametrized(factor):
    fill(factor)
    assert values[5] == 5 * factor

class TestInClass:
    def test_method(self):
        fill(10)
        assert values[7] == 70

    def test_tmp_path(self, tmp_path):
        (tmp_path / "out.txt").write_text("ok")
        assert (tmp_path / "out.txt").read_text() == "ok"
"""

FIELD_IN_TEST = """
import taichi as ti

def test_kernel_inside():
    data = ti.field(ti.f32, shape=4)

    @ti.kernel
    def half():
        for i in data:
            data[i] = 0.5

    half()
    assert data[3] == 0.5
"""

FORK_SAFE = """
import taichi as ti

def test_initialises_inside():
    ti.init(arch=ti.cpu)
    data = ti.field(ti.f32, shape=4)

    @ti.kernel
    def half():
        for i in data:
            data[i] = 0.5

    half()
    assert data[3] == 0.5
"""


def _log(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _modes(path: Path) -> dict[str, str]:
    return {
        event["nodeid"].split("::", 1)[1]: event["mode"]
        for event in _log(path)
        if event["event"] == "usage"
    }


def test_module_level_init_runs_in_spawn_mode(
    pytester: pytest.Pytester, run_plugin: RunPlugin
) -> None:
    pytester.makepyfile(test_module=KERNEL_MODULE)
    log = pytester.path / "usage.jsonl"
    result = run_plugin("--taichi-limits", f"--taichi-limits-log={log}", "-v")
    result.assert_outcomes(passed=5)
    modes = _modes(log)
    assert len(modes) == 5 and set(modes.values()) == {"reimport"}
    # Said once, after collection, naming the module and the line that made it necessary.
    result.stdout.fnmatch_lines(
        [
            "taichi-limits: start mode fork, except 1 of 1 modules that import Taichi state, and run "
            "each in a worker of its own that imports them again (forked after a Taichi reset):",
            "  test_module.py: ti.init at test_module.py:4 (module level) while it was imported",
        ]
    )
    assert "SpawnWarning" not in result.stdout.str()
    # The module's tests share one worker, as they share module state in plain pytest.
    assert len({event["pid"] for event in _log(log) if event["event"] == "usage"}) == 1


def test_conftest_pytest_configure_init_is_named_in_header(
    pytester: pytest.Pytester, run_plugin: RunPlugin
) -> None:
    pytester.makeconftest("""
        import taichi as ti

        def pytest_configure(config):
            ti.init(arch=ti.cpu)
    """)
    pytester.makepyfile(test_inside=FIELD_IN_TEST)
    log = pytester.path / "usage.jsonl"
    result = run_plugin("--taichi-limits", f"--taichi-limits-log={log}")
    result.assert_outcomes(passed=1)
    # The test relies on the conftest's init: Taichi is reset before the fork and that init
    # is replayed in the child, which stays on the fast fork path.
    result.stdout.fnmatch_lines(
        [
            "taichi-limits: start mode fork for all 1 supervised modules (isolation test)",
            (
                "taichi-limits: Taichi was initialised in the pytest process (last ti.init at "
                "conftest.py:4 (in pytest_configure)): it is reset before each fork, and that init is "
                "replayed in a forked test that uses Taichi without its own ti.init"
            ),
        ]
    )
    assert set(_modes(log).values()) == {"fork"}


def test_helper_module_that_initialises_at_import(
    pytester: pytest.Pytester, run_plugin: RunPlugin
) -> None:
    pytester.makepyfile(
        apphelper="""
        from taichi import init
        import taichi as ti

        init(arch=ti.cpu)
        scale = ti.field(ti.f32, shape=())
    """
    )
    pytester.makepyfile(
        test_app="""
        import pytest
        import taichi as ti
        import apphelper

        @ti.kernel
        def set_scale(value: ti.f32):
            apphelper.scale[None] = value

        @pytest.mark.taichi_limits(mem_mb=1024)
        def test_uses_helper():
            set_scale(2.5)
            assert apphelper.scale[None] == 2.5
    """
    )
    result = run_plugin("-p", "no:randomly")
    result.assert_outcomes(passed=1)
    # `from taichi import init` still goes through the recorder: the helper is named.
    result.stdout.fnmatch_lines(["*ti.init at apphelper.py:4 (module level)*"])


def test_fork_safe_and_initialising_modules_mixed(
    pytester: pytest.Pytester, run_plugin: RunPlugin
) -> None:
    # test_b's import initialised Taichi and made a field: only test_b needs a fresh
    # interpreter; test_a keeps the fork path.
    pytester.makepyfile(test_a=FORK_SAFE, test_b=KERNEL_MODULE)
    log = pytester.path / "usage.jsonl"
    result = run_plugin("--taichi-limits", f"--taichi-limits-log={log}")
    result.assert_outcomes(passed=6)
    modes = {event["nodeid"]: event["mode"] for event in _log(log) if event["event"] == "usage"}
    assert {mode for nodeid, mode in modes.items() if nodeid.startswith("test_a")} == {"fork"}
    assert {mode for nodeid, mode in modes.items() if nodeid.startswith("test_b")} == {"reimport"}


def test_deselected_initialising_module_decides_nothing(
    pytester: pytest.Pytester, run_plugin: RunPlugin
) -> None:
    pytester.makepyfile(test_a=FORK_SAFE, test_b=KERNEL_MODULE)
    log = pytester.path / "usage.jsonl"
    result = run_plugin("--taichi-limits", f"--taichi-limits-log={log}", "-k", "test_initialises")
    result.assert_outcomes(passed=1, deselected=5)
    assert set(_modes(log).values()) == {"fork"}
    result.stdout.fnmatch_lines(["taichi-limits: start mode fork for all 1 supervised modules*"])


def test_taichi_initialised_by_a_plain_test_is_reset_before_the_next_fork(
    pytester: pytest.Pytester, run_plugin: RunPlugin
) -> None:
    # An unsupervised test that initialises Taichi in pytest itself: the supervised test after
    # it still forks (Taichi is reset first) and its kernel runs.
    pytester.makepyfile(
        test_order="""
        import pytest
        import taichi as ti

        def kernel_runs():
            data = ti.field(ti.i32, shape=2)

            @ti.kernel
            def one():
                for i in data:
                    data[i] = 1

            one()
            return data[1] == 1

        @pytest.mark.taichi_limits(wall_s=60)
        def test_1_before():
            ti.init(arch=ti.cpu)
            assert kernel_runs()

        def test_2_initialises_pytest_itself():
            ti.init(arch=ti.cpu)

        @pytest.mark.taichi_limits(wall_s=60)
        def test_3_after():
            ti.init(arch=ti.cpu)
            assert kernel_runs()
    """
    )
    log = pytester.path / "usage.jsonl"
    result = run_plugin(f"--taichi-limits-log={log}", "-p", "no:randomly")
    result.assert_outcomes(passed=3)
    assert _modes(log) == {"test_1_before": "fork", "test_3_after": "fork"}


def test_budgets_enforced_with_the_same_report_in_both_modes(
    pytester: pytest.Pytester, run_plugin: RunPlugin
) -> None:
    body = """
        import time
        import pytest

        @pytest.mark.taichi_limits(mem_mb=150)
        def test_memory():
            block = bytearray(400 * 1024 * 1024)
            for i in range(0, len(block), 4096):
                block[i] = 1
            time.sleep(30)

        @pytest.mark.taichi_limits(wall_s=1.5)
        def test_wall():
            time.sleep(60)
    """
    pytester.makepyfile(test_budgets=body)
    reports = {}
    for mode in ("fork", "spawn"):
        result = run_plugin(f"--taichi-limits-mode={mode}", "--taichi-limits-grace=0.5")
        result.assert_outcomes(failed=2)
        result.stdout.fnmatch_lines(
            [
                "*taichi_limits: mem_mb exceeded: * when caught, limit mem_mb=150 (over by *",
                f"*process     pid *, caught at *({mode} mode)",
                "*test_memory*",
                "*taichi_limits: wall_s exceeded: * when caught, limit wall_s=1.5 (over by *",
                f"*process     pid *, caught at *({mode} mode)",
                "*test_wall*",
            ]
        )
        # The shape of a report: the label of each line, without the figures.
        reports[mode] = [
            line.split()[0]
            for line in result.stdout.lines
            if line.startswith("  ")
            and line.split()[0] in ("caught", "peak", "budget", "stopped", "process")
        ]
    assert reports["fork"] == reports["spawn"]
    assert len(reports["spawn"]) == 10


def test_forced_fork_mode_fails_instead_of_hanging(
    pytester: pytest.Pytester, run_plugin: RunPlugin
) -> None:
    pytester.makepyfile(test_module=KERNEL_MODULE)
    started = time.monotonic()
    result = run_plugin("--taichi-limits", "--taichi-limits-mode=fork", timeout=60)
    assert time.monotonic() - started < 55
    result.assert_outcomes(failed=5)
    result.stdout.fnmatch_lines(
        [
            (
                "*taichi_limits: not started: --taichi-limits-mode=fork, but this module cannot simply "
                "be forked: ti.init at test_module.py:4 (module level) while it was imported*"
                "Use --taichi-limits-mode=auto*"
            ),
        ]
    )


def test_forced_spawn_mode_header_and_options_reach_the_worker(
    pytester: pytest.Pytester, run_plugin: RunPlugin
) -> None:
    # No ti.init in pytest at all: spawn is used because it was asked for, and the worker
    # sees this run's options (the arch of the taichi_limits_ti fixture, -o ini overrides).
    pytester.makepyfile(
        test_fixture="""
        import pytest

        def test_arch(taichi_limits_ti, pytestconfig):
            from taichi.lang import impl
            assert impl.current_cfg().arch == taichi_limits_ti.x64
            assert pytestconfig.getini("python_functions") == ["test_*", "check_*"]
    """
    )
    log = pytester.path / "usage.jsonl"
    result = run_plugin(
        "--taichi-limits-mode=spawn",
        "--taichi-limits-arch=x64",
        "-o",
        "python_functions=test_* check_*",
        f"--taichi-limits-log={log}",
    )
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["taichi-limits: start mode spawn (--taichi-limits-mode=spawn)*"])
    assert set(_modes(log).values()) == {"spawn"}


def test_gpu_cap_applies_to_module_level_init_in_the_worker(
    pytester: pytest.Pytester, run_plugin: RunPlugin
) -> None:
    # The worker installs the cap before it collects, so even the module's own ti.init,
    # which runs again in the worker, is capped.
    pytester.makepyfile(
        test_cap="""
        import taichi as ti
        ti.init(arch=ti.cpu, device_memory_GB=6)

        def test_capped():
            from taichi.lang import impl
            assert impl.current_cfg().device_memory_GB <= 0.5
    """
    )
    result = run_plugin("--taichi-limits", "--taichi-limits-gpu-gb=0.5")
    result.assert_outcomes(passed=1)


def _tagged(tag: str) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter():
        try:
            if process.environ().get("TAICHI_LIMITS_TEST_TAG") == tag:
                found.append(process)
        except psutil.Error:
            continue
    return found


def test_zygote_and_workers_leave_nothing_behind(
    pytester: pytest.Pytester, run_plugin: RunPlugin, monkeypatch: pytest.MonkeyPatch
) -> None:
    tag = uuid.uuid4().hex
    monkeypatch.setenv("TAICHI_LIMITS_TEST_TAG", tag)
    pytester.makepyfile(test_module=KERNEL_MODULE)
    result = run_plugin("--taichi-limits")
    result.assert_outcomes(passed=5)
    deadline = time.monotonic() + 10
    while _tagged(tag) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _tagged(tag) == []


@pytest.mark.parametrize("mode", ["auto", "spawn"])
def test_zygote_and_worker_die_with_a_killed_pytest(pytester: pytest.Pytester, mode: str) -> None:
    tag = uuid.uuid4().hex
    pytester.makepyfile(
        test_hang="""
        import time
        import taichi as ti
        ti.init(arch=ti.cpu)

        def test_sleeps():
            time.sleep(120)
    """
    )
    environment = {**os.environ, "TAICHI_LIMITS_TEST_TAG": tag}
    output = (pytester.path / "pytest-output.txt").open("w")
    pytest_process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pytest",
            "--taichi-limits",
            f"--taichi-limits-mode={mode}",
            "-p",
            "no:cacheprovider",
            "-q",
        ],
        cwd=pytester.path,
        env=environment,
        stdout=output,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 90
        # pytest itself and the worker that runs the test (forked; with a zygote in spawn mode).
        while (
            len(_tagged(tag)) < 2 and pytest_process.poll() is None and time.monotonic() < deadline
        ):
            time.sleep(0.2)
        assert len(_tagged(tag)) >= 2, (
            f"the worker never started (pytest's exit status: {pytest_process.poll()}); "
            f"its output:\n{(pytester.path / 'pytest-output.txt').read_text()[-3000:]}"
        )
        pytest_process.send_signal(signal.SIGKILL)
        pytest_process.wait(timeout=10)
        deadline = time.monotonic() + 10
        while _tagged(tag) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _tagged(tag) == []
    finally:
        pytest_process.kill()
        pytest_process.wait()
        output.close()
        for process in _tagged(tag):
            process.kill()


def test_worker_that_cannot_collect_the_test_says_why(
    pytester: pytest.Pytester, run_plugin: RunPlugin
) -> None:
    # Collection that differs in the fresh interpreter (here: an environment variable the
    # parent sets after collection): the test fails with the worker's own explanation.
    pytester.makeconftest("""
        import pathlib

        def pytest_collection_finish(session):
            pathlib.Path(session.config.rootpath, "collected.flag").write_text("1")
    """)
    pytester.makepyfile(
        test_flaky_collection="""
        import pathlib
        import pytest

        if pathlib.Path(__file__).with_name("collected.flag").exists():
            raise RuntimeError("collected twice")

        def test_one():
            pass
    """
    )
    result = run_plugin("--taichi-limits", "--taichi-limits-mode=spawn")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*could not be collected again in a fresh interpreter*",
            "*RuntimeError: collected twice*",
        ]
    )


def test_spawn_mode_under_xdist(pytester: pytest.Pytester, run_plugin: RunPlugin) -> None:
    # Each xdist worker is a pytest process of its own, with its own zygote.
    pytester.makepyfile(test_module=KERNEL_MODULE)
    log = pytester.path / "usage.jsonl"
    result = run_plugin("--taichi-limits", f"--taichi-limits-log={log}", "-n", "2")
    result.assert_outcomes(passed=5)
    assert set(_modes(log).values()) == {"reimport"}
    # A worker per run of the module's tests in each xdist worker, never one per test.
    assert len({event["pid"] for event in _log(log) if event["event"] == "usage"}) < 5
