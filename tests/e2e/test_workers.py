"""Workers that run several tests: per-module fresh interpreters, --taichi-limits-isolation,
per-test budgets and figures inside a shared child, and a zygote that never hangs pytest.

Every run goes through `run_plugin` (a pytester subprocess with a hard timeout).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pytest_taichi_limits.formats.jsonreport import Report

MIB = 1024 * 1024

#: A module whose import leaves Taichi state behind: it needs a fresh interpreter.
STATEFUL_MODULE = """
import os
import pytest
import taichi as ti

ti.init(arch=ti.cpu)
values = ti.field(ti.i32, shape=8)

@ti.kernel
def fill(factor: ti.i32):
    for i in values:
        values[i] = i * factor

@pytest.fixture(scope="module")
def counted():
    with open(os.path.join(os.path.dirname(__file__), "setups.txt"), "a") as handle:
        handle.write(f"{os.getpid()}\\n")
    yield

{tests}
"""


def _usage(log: Path) -> dict[str, dict[str, Any]]:
    events = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return {event["nodeid"].split("::")[-1]: event for event in events if event["event"] == "usage"}


def _worker_pids(log: Path) -> set[int]:
    events = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return {event["worker_pid"] for event in events if event["event"] == "usage"}


def _setups(pytester: pytest.Pytester) -> list[str]:
    path = pytester.path / "setups.txt"
    return path.read_text().split() if path.exists() else []


def test_module_fixture_is_set_up_once_per_fresh_interpreter_worker(
    pytester: pytest.Pytester, run_plugin: Any
) -> None:
    tests = "\n".join(
        f"def test_{n}(counted):\n    fill({n})\n    assert values[3] == 3 * {n}\n"
        for n in range(1, 5)
    )
    pytester.makepyfile(test_stateful=STATEFUL_MODULE.replace("{tests}", tests))
    log = pytester.path / "usage.jsonl"
    result = run_plugin("--taichi-limits", f"--taichi-limits-log={log}")
    result.assert_outcomes(passed=4)
    usage = _usage(log)
    assert {event["mode"] for event in usage.values()} == {"reimport"}
    assert len({event["worker_pid"] for event in usage.values()}) == 1
    assert sorted(event["worker_test_number"] for event in usage.values()) == [1, 2, 3, 4]
    assert len(_setups(pytester)) == 1


def test_a_violation_ends_the_worker_and_the_module_goes_on_in_a_new_one(
    pytester: pytest.Pytester, run_plugin: Any
) -> None:
    tests = """
def test_1(counted):
    fill(1)

@pytest.mark.taichi_limits(wall_s=2)
def test_2_hangs(counted):
    import time
    time.sleep(60)

def test_3(counted):
    fill(3)
    assert values[2] == 6

def test_4(counted):
    fill(4)
    assert values[2] == 8
"""
    pytester.makepyfile(test_stateful=STATEFUL_MODULE.replace("{tests}", tests))
    log = pytester.path / "usage.jsonl"
    result = run_plugin(
        "--taichi-limits", f"--taichi-limits-log={log}", "--taichi-limits-grace=0.5"
    )
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines(["*taichi_limits: wall_s exceeded*"])
    usage = _usage(log)
    assert usage["test_1"]["worker_pid"] == usage["test_2_hangs"]["worker_pid"]
    assert usage["test_3"]["worker_pid"] == usage["test_4"]["worker_pid"]
    assert usage["test_3"]["worker_pid"] != usage["test_2_hangs"]["worker_pid"]
    assert usage["test_3"]["worker_test_number"] == 1
    assert len(_setups(pytester)) == 2


def test_a_crash_in_a_module_worker_is_reported_and_the_rest_pass(
    pytester: pytest.Pytester, run_plugin: Any
) -> None:
    tests = """
def test_1(counted):
    fill(1)

def test_2_crashes(counted):
    import os, signal
    os.kill(os.getpid(), signal.SIGSEGV)

def test_3(counted):
    fill(3)
    assert values[2] == 6
"""
    pytester.makepyfile(test_stateful=STATEFUL_MODULE.replace("{tests}", tests))
    result = run_plugin("--taichi-limits")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["*the test process was killed by signal 11 (SIGSEGV)*"])


@pytest.mark.parametrize("isolation, workers", [("test", 3), ("module", 1), ("session", 1)])
def test_isolation_sets_how_many_tests_share_a_forked_child(
    pytester: pytest.Pytester, run_plugin: Any, isolation: str, workers: int
) -> None:
    pytester.makepyfile(
        test_plain="""
        import os
        import pytest

        @pytest.fixture(scope="module")
        def counted():
            with open(os.path.join(os.path.dirname(__file__), "setups.txt"), "a") as handle:
                handle.write(f"{os.getpid()}\\n")

        def test_a(counted): pass
        def test_b(counted): pass
        def test_c(counted): pass
    """
    )
    log = pytester.path / "usage.jsonl"
    result = run_plugin(
        "--taichi-limits", f"--taichi-limits-isolation={isolation}", f"--taichi-limits-log={log}"
    )
    result.assert_outcomes(passed=3)
    usage = _usage(log)
    assert {event["mode"] for event in usage.values()} == {"fork"}
    assert len({event["worker_pid"] for event in usage.values()}) == workers
    assert len(_setups(pytester)) == workers
    result.stdout.fnmatch_lines([f"*start mode auto, isolation {isolation}*"])


def test_the_default_isolation_is_module_and_the_header_says_why(
    pytester: pytest.Pytester, run_plugin: Any
) -> None:
    # Issue 19, item 3: one child per test module by default (measured: 1.0-1.3x plain pytest
    # on real suites where a child per test costs up to 2.3x); the header says so and why.
    body = "def test_a():\n    pass\n\ndef test_b():\n    pass\n"
    pytester.makepyfile(test_one=body, test_two=body)
    log = pytester.path / "usage.jsonl"
    result = run_plugin("--taichi-limits", f"--taichi-limits-log={log}", default_isolation=True)
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(
        [
            "*start mode auto, isolation module (the default: one child per test module, "
            "sharing what the module's tests share in plain pytest; "
            "--taichi-limits-isolation=test gives each test a fresh child*"
        ]
    )
    workers: dict[str, set[int]] = {}
    for line in log.read_text().splitlines():
        event = json.loads(line)
        if event["event"] == "usage":
            workers.setdefault(event["nodeid"].split("::")[0], set()).add(event["worker_pid"])
    assert [len(pids) for pids in workers.values()] == [1, 1]
    assert workers["test_one.py"] != workers["test_two.py"]
    given = run_plugin("--taichi-limits", "--taichi-limits-isolation=test")
    given.stdout.fnmatch_lines(["*start mode auto, isolation test (--taichi-limits-isolation)"])


def test_isolation_marker_overrides_the_option(pytester: pytest.Pytester, run_plugin: Any) -> None:
    pytester.makepyfile(
        test_mixed="""
        import pytest

        pytestmark = pytest.mark.taichi_limits(isolation="module")

        def test_a(): pass
        def test_b(): pass

        @pytest.mark.taichi_limits(isolation="test")
        def test_c(): pass
    """
    )
    log = pytester.path / "usage.jsonl"
    result = run_plugin(f"--taichi-limits-log={log}", "-p", "no:randomly")
    result.assert_outcomes(passed=3)
    usage = _usage(log)
    assert usage["test_a"]["worker_pid"] == usage["test_b"]["worker_pid"]
    assert usage["test_c"]["worker_pid"] != usage["test_b"]["worker_pid"]


def test_bad_isolation_in_a_marker_is_a_collection_error(
    pytester: pytest.Pytester, run_plugin: Any
) -> None:
    pytester.makepyfile(
        test_bad="""
        import pytest

        @pytest.mark.taichi_limits(isolation="process")
        def test_a(): pass
    """
    )
    result = run_plugin()
    result.stdout.fnmatch_lines(
        [
            "*test_bad.py::test_a: @pytest.mark.taichi_limits: isolation must be one of test, "
            "module, session (a string), got 'process'*"
        ]
    )


def test_per_test_memory_in_a_shared_child_is_the_test_s_own(
    pytester: pytest.Pytester, run_plugin: Any
) -> None:
    # A big test that frees its memory, then a smaller one, then one that allocates nothing,
    # all in one child: each is charged only for what it itself held.
    pytester.makepyfile(
        test_sizes="""
        def _hold(mib):
            block = bytearray(mib * 1024 * 1024)
            for i in range(0, len(block), 4096):
                block[i] = 1
            return block

        def test_1_big():
            _hold(200)

        def test_2_medium():
            kept = _hold(50)
            assert kept

        def test_3_nothing():
            pass
    """
    )
    log = pytester.path / "usage.jsonl"
    result = run_plugin(
        "--taichi-limits",
        "--taichi-limits-isolation=session",
        f"--taichi-limits-log={log}",
        "-p",
        "no:randomly",
    )
    result.assert_outcomes(passed=3)
    usage = _usage(log)
    assert len({event["worker_pid"] for event in usage.values()}) == 1
    # The kernel's exact peak (VmHWM, reset at each test's start) against known allocations.
    assert abs(usage["test_1_big"]["kernel_own_rss_bytes"] - 200 * MIB) < MIB
    assert abs(usage["test_2_medium"]["kernel_own_rss_bytes"] - 50 * MIB) < MIB
    assert usage["test_3_nothing"]["kernel_own_rss_bytes"] < MIB


def test_per_test_budget_in_a_shared_child(pytester: pytest.Pytester, run_plugin: Any) -> None:
    pytester.makepyfile(
        test_budgets="""
        import pytest

        def test_1_big():
            block = bytearray(300 * 1024 * 1024)
            for i in range(0, len(block), 4096):
                block[i] = 1

        @pytest.mark.taichi_limits(mem_mb=100)
        def test_2_small_within_its_own_budget():
            block = bytearray(20 * 1024 * 1024)
            for i in range(0, len(block), 4096):
                block[i] = 1

        @pytest.mark.taichi_limits(mem_mb=100)
        def test_3_over():
            block = bytearray(300 * 1024 * 1024)
            for i in range(0, len(block), 4096):
                block[i] = 1

        def test_4_after():
            pass
    """
    )
    log = pytester.path / "usage.jsonl"
    result = run_plugin(
        "--taichi-limits",
        "--taichi-limits-isolation=session",
        f"--taichi-limits-log={log}",
        "-p",
        "no:randomly",
    )
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines(["*taichi_limits: mem_mb exceeded*limit mem_mb=100*"])
    usage = _usage(log)
    assert usage["test_1_big"]["worker_pid"] == usage["test_3_over"]["worker_pid"]
    assert usage["test_4_after"]["worker_pid"] != usage["test_3_over"]["worker_pid"]


PARAMETRIZED_OVER_SETS = """
import json, os
import pytest
import taichi as ti

ti.init(arch=ti.cpu)
scale = ti.field(ti.i32, shape=())

VALUES = list({frozenset({"alpha"}), frozenset({"beta"}), frozenset({"gamma"}),
               frozenset({"delta", "epsilon"})})

@pytest.mark.parametrize("p", VALUES)
def test_value(p, request):
    with open(os.path.join(os.path.dirname(__file__), "ran.jsonl"), "a") as handle:
        handle.write(json.dumps([request.node.nodeid, sorted(p)]) + "\\n")
"""

RECORD_PARENT_COLLECTION = """
import json

def pytest_collection_modifyitems(config, items):
    if config.pluginmanager.has_plugin("taichi_limits_spawn_worker"):
        return  # a fresh interpreter's own collection
    collected = {item.nodeid: sorted(item.callspec.params["p"]) for item in items}
    (config.rootpath / "collected.json").write_text(json.dumps(collected))
"""


@pytest.mark.parametrize("hash_seed", [None, "0"])
def test_a_fresh_interpreter_runs_the_parents_parameters_or_refuses(
    pytester: pytest.Pytester,
    run_plugin: Any,
    monkeypatch: pytest.MonkeyPatch,
    hash_seed: str | None,
) -> None:
    if hash_seed is None:
        monkeypatch.delenv("PYTHONHASHSEED", raising=False)
    else:
        monkeypatch.setenv("PYTHONHASHSEED", hash_seed)
    pytester.makeconftest(RECORD_PARENT_COLLECTION)
    pytester.makepyfile(test_sets=PARAMETRIZED_OVER_SETS)
    result = run_plugin("--taichi-limits")
    collected = json.loads((pytester.path / "collected.json").read_text())
    ran_file = pytester.path / "ran.jsonl"
    ran = (
        [json.loads(line) for line in ran_file.read_text().splitlines()]
        if ran_file.exists()
        else []
    )
    for nodeid, value in ran:  # never another value under the parent's id
        assert collected[nodeid] == value
    outcomes = result.parseoutcomes()
    if hash_seed is not None:
        assert outcomes.get("passed") == 4
    if outcomes.get("failed"):
        result.stdout.fnmatch_lines(
            ["*different tests were collected in the fresh interpreter*Set PYTHONHASHSEED*"]
        )
    assert outcomes.get("passed", 0) + outcomes.get("failed", 0) == 4


ZYGOTE_ATTACK = """
import os, signal, time
import pytest
import taichi as ti

ti.init(arch=ti.cpu)
values = ti.field(ti.i32, shape=4)

@pytest.mark.taichi_limits(wall_s=3)
def test_1_attacks_its_parent():
    os.kill(os.getppid(), signal.{signal_name})
    time.sleep(30)

def test_2_after():
    values[1] = 5
    assert values[1] == 5
"""


@pytest.mark.parametrize(
    "signal_name, expected",
    [
        ("SIGSTOP", "*taichi_limits: wall_s exceeded*"),
        (
            "SIGUSR1",
            "*the spawn-mode zygote killed by signal 10 (SIGUSR1), and the worker died with it*",
        ),
        (
            "SIGKILL",
            "*the spawn-mode zygote killed by signal 9 (SIGKILL), and the worker died with it*",
        ),
    ],
)
def test_a_stopped_or_killed_zygote_never_hangs_pytest(
    pytester: pytest.Pytester, run_plugin: Any, signal_name: str, expected: str
) -> None:
    # In spawn mode the test's parent is the zygote: stopping it used to hang pytest forever,
    # and a zygote killed by SIGUSR1 was reported as "SIGKILL from outside (the OOM killer)".
    pytester.makepyfile(test_attack=ZYGOTE_ATTACK.replace("{signal_name}", signal_name))
    result = run_plugin(
        "--taichi-limits",
        "--taichi-limits-mode=spawn",
        "--taichi-limits-grace=0.5",
        "--taichi-limits-json=report.json",
        "-p",
        "no:randomly",
        timeout=90,
    )
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines([expected])
    result.stdout.no_fnmatch_line("*OOM killer*")
    # A worker whose end no one could report says so, never "exited with status None"; the
    # report reads back (the ending's text is parsed).
    result.stdout.no_fnmatch_line("*status None*")
    report = Report.from_json(json.loads((pytester.path / "report.json").read_text()))
    endings = [record.ending.describe for record in report.records if record.ending is not None]
    assert endings and not any("None" in ending for ending in endings), endings


@pytest.mark.parametrize(
    "attack, expected",
    [
        ("os.kill(os.getpid(), signal.SIGSTOP)", "*taichi_limits: wall_s exceeded*"),
        (
            "os.kill(os.getpid(), signal.SIGKILL)",
            "*the test process was killed by signal 9 (SIGKILL)*",
        ),
        (
            "os.kill(os.getpid(), signal.SIGUSR1)",
            "*the test process was killed by signal 10 (SIGUSR1)*",
        ),
    ],
)
def test_a_stopped_or_signalled_worker_is_reported_and_the_module_goes_on(
    pytester: pytest.Pytester, run_plugin: Any, attack: str, expected: str
) -> None:
    body = ZYGOTE_ATTACK.replace("os.kill(os.getppid(), signal.{signal_name})", attack)
    pytester.makepyfile(test_attack=body)
    result = run_plugin(
        "--taichi-limits", "--taichi-limits-grace=0.5", "-p", "no:randomly", timeout=90
    )
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines([expected])


def test_an_application_package_made_at_import_is_imported_again_in_each_worker(
    pytester: pytest.Pytester, run_plugin: Any
) -> None:
    # The shape of a real application suite: `from app import kernels` where app/kernels.py
    # calls ti.init and makes fields at import. After the reset in pytest, the worker must use
    # a fresh app.kernels, never the package's attribute holding the old module.
    pytester.mkpydir("app")
    pytester.path.joinpath("app", "kernels.py").write_text(
        "import taichi as ti\nti.init(arch=ti.cpu)\nx = ti.field(ti.f64, shape=16)\n\n"
        "@ti.kernel\ndef ramp():\n    for i in x:\n        x[i] = i\n\n"
        "@ti.kernel\ndef total() -> ti.f64:\n    s = 0.0\n    for i in x:\n        s += x[i]\n"
        "    return s\n"
    )
    for number in range(2):
        pytester.makepyfile(
            **{
                f"test_app_{number}": """
            from app import kernels as k

            def test_total():
                k.ramp()
                assert k.total() == sum(range(16))
        """
            }
        )
    log = pytester.path / "usage.jsonl"
    result = run_plugin("--taichi-limits", f"--taichi-limits-log={log}")
    result.assert_outcomes(passed=2)
    assert {event["mode"] for event in _usage(log).values()} == {"reimport"}
    assert len(_worker_pids(log)) == 2  # isolation test: a worker per module
    # With module isolation (the default), the two modules share one reimport worker, as they
    # share app.kernels's Taichi state in one process in plain pytest: it is imported (and
    # initialises Taichi) once.
    shared = pytester.path / "shared.jsonl"
    result = run_plugin("--taichi-limits", f"--taichi-limits-log={shared}", default_isolation=True)
    result.assert_outcomes(passed=2)
    assert {event["mode"] for event in _usage(shared).values()} == {"reimport"}
    assert len(_worker_pids(shared)) == 1
    result.stdout.fnmatch_lines(["*and run in one shared worker that imports them again*"])


@pytest.mark.parametrize(
    "signal_name, expected",
    [
        ("SIGSTOP", "*taichi_limits: wall_s exceeded*"),
        ("SIGKILL", "*the plugin's fork server above the test was killed*"),
        ("SIGUSR1", "*the plugin's fork server above the test was killed*"),
    ],
)
def test_a_test_that_attacks_its_parent_in_fork_mode_hits_the_fork_server_not_pytest(
    pytester: pytest.Pytester, run_plugin: Any, signal_name: str, expected: str
) -> None:
    # In fork mode the test's parent is the plugin's fork server, never pytest: stopping or
    # killing it fails that test, and the next one runs (in a child of a new server).
    body = ZYGOTE_ATTACK.replace("{signal_name}", signal_name).replace(
        "ti.init(arch=ti.cpu)\nvalues = ti.field(ti.i32, shape=4)\n", ""
    )
    body = body.replace("    values[1] = 5\n    assert values[1] == 5\n", "    pass\n")
    pytester.makepyfile(test_attack=body)
    result = run_plugin(
        "--taichi-limits", "--taichi-limits-grace=0.5", "-p", "no:randomly", timeout=90
    )
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines([expected])


# -- the arch a test ran with, wherever ti.init happened (issue 22) ------------------------------


def _arch_of_every_test(usage: dict[str, dict[str, Any]]) -> set[str]:
    archs = {event["arch"] for event in usage.values()}
    assert "not initialised" not in archs, usage
    return archs


def test_a_later_test_in_a_module_worker_is_recorded_with_the_arch_it_ran_with(
    pytester: pytest.Pytester, run_plugin: Any
) -> None:
    # test_1 initialises Taichi; test_2 and test_3 run kernels on that runtime in the same
    # worker, without a ti.init of their own.
    pytester.makepyfile(
        test_shared="""
        import taichi as ti

        STATE = {}

        @ti.kernel
        def fill(values: ti.template(), factor: ti.i32):
            for i in values:
                values[i] = i * factor

        def test_1_initialises():
            ti.init(arch=ti.cpu)
            STATE["values"] = ti.field(ti.i32, shape=8)
            fill(STATE["values"], 1)

        def test_2_runs_a_kernel():
            fill(STATE["values"], 2)
            assert STATE["values"][3] == 6

        def test_3_runs_a_kernel():
            fill(STATE["values"], 3)
            assert STATE["values"][3] == 9
    """
    )
    log = pytester.path / "usage.jsonl"
    result = run_plugin(
        "--taichi-limits", "--taichi-limits-isolation=module", f"--taichi-limits-log={log}"
    )
    result.assert_outcomes(passed=3)
    usage = _usage(log)
    assert len({event["worker_pid"] for event in usage.values()}) == 1
    assert len(_arch_of_every_test(usage)) == 1


def test_every_test_of_a_reimport_worker_is_recorded_with_the_arch_of_the_import_s_init(
    pytester: pytest.Pytester, run_plugin: Any
) -> None:
    # ti.init at import, in the worker's collection: before its first test started.
    tests = "\n".join(f"def test_{n}():\n    fill({n})\n" for n in range(1, 4))
    pytester.makepyfile(test_stateful=STATEFUL_MODULE.replace("{tests}", tests))
    log = pytester.path / "usage.jsonl"
    result = run_plugin("--taichi-limits", f"--taichi-limits-log={log}")
    result.assert_outcomes(passed=3)
    usage = _usage(log)
    assert {event["mode"] for event in usage.values()} == {"reimport"}
    assert len(_arch_of_every_test(usage)) == 1
