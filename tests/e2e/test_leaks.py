"""Leak hunting (issue 20): a test run in rounds in one child, an exact reading after each, and a
leak verdict with its cause. Real Taichi on the CPU, real allocations, real pytest runs through
`run_plugin`. Each figure is read back from the usage log (`--taichi-limits-log`).

Which of Taichi 1.7.4's reported leaks reproduce on the CPU backend (all of these do):
- a field made again in every call (taichi-dev/taichi#8497): one more field and SNode tree, and
  its storage, per round;
- a FieldsBuilder made, finalized and destroyed in every call (#7242): the SNode tree is freed,
  the Python field object is never (Taichi keeps it): one more field per round, about 5 KiB;
- a field deleted after use (#6803, #8214): Taichi frees nothing before ti.reset();
- a vector ndarray made in every call (#8763): its memory is never freed, while a scalar
  ndarray's is.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pytest_taichi_limits.formats import jsonreport

jsonschema = pytest.importorskip("jsonschema")

MIB = 1024 * 1024

#: A module-scoped Taichi program shared by every round (a per-test ti.init/ti.reset would free
#: whatever a round left, which is what a test suite that resets does).
CONFTEST = """
import pytest

@pytest.fixture(scope="module")
def ti_module():
    import taichi as ti
    ti.init(arch=ti.cpu, offline_cache=False)
    yield ti
    ti.reset()
"""

TAICHI_PATTERNS = """
def step(ti):
    particles = ti.Vector.field(3, dtype=ti.f32, shape=100000)
    particles.fill(1)

def test_field_in_loop(ti_module):
    step(ti_module)

def test_fieldsbuilder(ti_module):
    ti = ti_module
    x = ti.field(int)
    builder = ti.FieldsBuilder()
    builder.dense(ti.i, 1000).place(x)
    tree = builder.finalize()
    x.fill(1)
    tree.destroy()

def test_deleted_field(ti_module):
    a = ti_module.field(ti_module.f32, shape=300000)
    a.fill(1)
    del a

def test_vector_ndarray(ti_module):
    ti = ti_module
    array = ti.ndarray(ti.types.vector(3, ti.f32), (300000,))
    array.fill(1)
    array.to_numpy()

def test_scalar_ndarray(ti_module):
    array = ti_module.ndarray(ti_module.f32, (900000,))
    array.fill(1)
    array.to_numpy()
"""

PYTHON_AND_NATIVE = """
import ctypes

HELD = []

def test_python_list_grows():
    HELD.append(bytearray(2 * 1024 * 1024))

_libc = ctypes.CDLL(None)
_libc.malloc.restype = ctypes.c_void_p
_libc.malloc.argtypes = [ctypes.c_size_t]

def test_malloc_never_freed():
    size = 2 * 1024 * 1024
    ctypes.memset(_libc.malloc(size), 1, size)
"""

CLEAN = """
import functools
import random

import pytest

FIXED = {}

@pytest.mark.parametrize("run", range(20))
def test_kernel_over_a_fixed_field(ti_module, run):
    ti = ti_module
    if "x" not in FIXED:
        FIXED["x"] = ti.field(ti.f32, shape=100000)
        @ti.kernel
        def add(value: ti.f32):
            for i in FIXED["x"]:
                FIXED["x"][i] += value
        FIXED["add"] = add
    for _ in range(50):
        FIXED["add"](1.0)

@functools.lru_cache(maxsize=None)
def table(size):
    return bytearray(size)

@pytest.mark.parametrize("run", range(20))
def test_caches_fill_once(ti_module, run):
    ti = ti_module
    table(8 * 1024 * 1024)
    @ti.kernel
    def total(n: ti.i32) -> ti.i32:  # compiled in the first round, then Taichi's cache
        s = 0
        for i in range(n):
            s += i
        return s
    assert total(10) == 45

@pytest.mark.parametrize("run", range(20))
def test_noisy_allocations_that_are_freed(run):
    blocks = [bytearray(random.randint(1, 4 * 1024 * 1024)) for _ in range(random.randint(1, 8))]
    del blocks
"""


def _line(source: str, text: str) -> int:
    """The line of `text` in a module pytester writes from `source` (dedented, from its first
    line that is not blank)."""
    lines = source.strip("\n").splitlines()
    return next(number for number, line in enumerate(lines, 1) if text in line)


def _usage(log: Path) -> dict[str, dict[str, Any]]:
    events = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return {event["nodeid"].split("::")[-1]: event for event in events if event["event"] == "usage"}


def _leaking(event: dict[str, Any]) -> set[str]:
    return {series["key"] for series in event["leaks"]["series"] if series["leak"]}


def _run(
    pytester: pytest.Pytester, run_plugin: Any, *args: str, timeout: float = 120
) -> tuple[pytest.RunResult, dict[str, dict[str, Any]]]:
    log = pytester.path / "usage.jsonl"
    result = run_plugin("--taichi-limits", f"--taichi-limits-log={log}", *args, timeout=timeout)
    return result, _usage(log) if log.exists() else {}


def test_taichi_leak_patterns_are_caught_with_their_cause(
    pytester: pytest.Pytester, run_plugin: Any
) -> None:
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_patterns=TAICHI_PATTERNS)
    result, usage = _run(pytester, run_plugin, "--taichi-limits-leaks=2:5")
    result.assert_outcomes(failed=4, passed=1)
    field = usage["test_field_in_loop"]
    assert {"fields", "snode_trees", "taichi_bytes"} <= _leaking(field)
    made_at = f"test_patterns.py:{_line(TAICHI_PATTERNS, 'particles = ')} in step"
    assert field["leaks"]["causes"] == [f"1 new field per round, made at {made_at}"]
    assert [r["taichi"]["fields"] for r in field["leaks"]["rounds"]] == [1, 2, 3, 4, 5, 6, 7]
    builder = usage["test_fieldsbuilder"]
    assert "fields" in _leaking(builder) and "snode_trees" not in _leaking(builder)
    assert builder["leaks"]["causes"][0].startswith("1 new field per round, made at ")
    assert {"fields", "snode_trees"} <= _leaking(usage["test_deleted_field"])
    vector = usage["test_vector_ndarray"]
    assert "own_memory_bytes" in _leaking(vector)
    line = _line(TAICHI_PATTERNS, "array = ti.ndarray(ti.types.vector")
    assert vector["leaks"]["causes"][0].startswith(
        f"1 vector ndarray made per round at test_patterns.py:{line} in test_vector_ndarray: "
    )
    assert "taichi-dev/taichi#8763" in vector["leaks"]["causes"][0]
    assert not _leaking(usage["test_scalar_ndarray"])
    result.stdout.fnmatch_lines(
        [
            "taichi_limits: leak: own memory +*/round, Taichi's field and ndarray storage "
            "+1.1 MiB/round, Taichi fields +1/round, Taichi SNode trees +1/round "
            "(allowance leak_mb=1)",
            "  caught by   supervisor (an exact reading after each of 5 measured rounds, which "
            "followed 2 rounds of warm-up; *",
            "  grew        Taichi fields grew by 1 per round (in 5 of 5 rounds)",
            f"  cause       1 new field per round, made at {made_at}",
            "  rounds      Taichi fields after each round (warm-up | measured): 1 2 | 3 4 5 6 7",
        ]
    )


def test_a_python_leak_and_a_native_leak_are_caught_under_xdist(
    pytester: pytest.Pytester, run_plugin: Any
) -> None:
    pytester.makepyfile(test_leaky=PYTHON_AND_NATIVE)
    report, junit = pytester.path / "report.json", pytester.path / "junit.xml"
    result, usage = _run(
        pytester,
        run_plugin,
        "-n",
        "2",
        "--taichi-limits-leaks=2:5",
        f"--taichi-limits-json={report}",
        f"--junitxml={junit}",
    )
    result.assert_outcomes(failed=2)
    document = json.loads(report.read_text())
    jsonschema.validate(document, jsonreport.REPORT_SCHEMA)
    assert {len(record["leaks"]["rounds"]) for record in document["records"]} == {7}
    assert {violation["resource"] for violation in document["violations"]} == {"leak_mb"}
    assert junit.read_text().count('name="taichi_limits_leak_verdict" value="leak"') == 2
    result.stdout.fnmatch_lines(
        [
            "leaks: 2 of 2 tests that hunted leaks grew in every round (warm-up+measured "
            "rounds: 2+5):",
            "  LEAK test_leaky.py::test_malloc_never_freed - own memory +*/round",
        ]
    )
    for name in ("test_python_list_grows", "test_malloc_never_freed"):
        leaks = usage[name]["leaks"]
        assert _leaking(usage[name]) == {"own_memory_bytes"}, leaks
        own = next(series for series in leaks["series"] if series["key"] == "own_memory_bytes")
        assert own["slope"] > MIB and own["growing_rounds"] == 5
        assert len(leaks["rounds"]) == 7 and [r["warmup"] for r in leaks["rounds"][:3]] == [
            True,
            True,
            False,
        ]
    result.stdout.fnmatch_lines(["taichi_limits: leak: own memory +*/round (allowance leak_mb=1)"])


def test_no_false_leak_in_20_runs_of_the_clean_set_under_xdist(
    pytester: pytest.Pytester, run_plugin: Any
) -> None:
    """With the defaults (2 warm-up rounds, 5 measured, leak_mb=1): caches that fill once, a
    Taichi kernel over a fixed field, allocations of up to 32 MiB that are freed, 20 times
    each, in two xdist workers: none is flagged."""
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_clean=CLEAN)
    result, usage = _run(
        pytester,
        run_plugin,
        "-n",
        "2",
        "--taichi-limits-leaks=2:5",
        "--taichi-limits-isolation=module",
        timeout=600,
    )
    result.assert_outcomes(passed=60)
    assert len(usage) == 60
    flagged = [name for name, event in usage.items() if _leaking(event)]
    assert flagged == []
    assert all(event["leaks"]["note"] == "" for event in usage.values())
    assert {len(event["leaks"]["rounds"]) for event in usage.values()} == {7}


def test_rounds_in_spawn_mode_and_with_module_isolation(
    pytester: pytest.Pytester, run_plugin: Any
) -> None:
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(
        test_spawned="""
        import pytest
        HELD = []

        @pytest.mark.taichi_limits(leak_rounds="1:3")
        def test_field(ti_module):
            values = ti_module.field(ti_module.i32, shape=1000)
            values.fill(1)

        @pytest.mark.taichi_limits(leak_rounds="1:3")
        def test_list():
            HELD.append(bytearray(3 * 1024 * 1024))

        @pytest.mark.taichi_limits(leak_rounds="1:3")
        def test_clean():
            pass
        """
    )
    for mode in ("--taichi-limits-mode=spawn", "--taichi-limits-isolation=module"):
        result, usage = _run(pytester, run_plugin, mode)
        result.assert_outcomes(failed=2, passed=1)
        assert "fields" in _leaking(usage["test_field"]), mode
        assert usage["test_field"]["leaks"]["causes"][0].startswith(
            "1 new field per round, made at test_spawned.py:6 in test_field"
        )
        assert _leaking(usage["test_list"]) == {"own_memory_bytes"}, mode
        assert not _leaking(usage["test_clean"]), mode
        (pytester.path / "usage.jsonl").unlink()


COUNTING = """
import os
import pytest

COUNT = {"n": 0}

def _round():
    COUNT["n"] += 1
    return COUNT["n"]

@pytest.mark.taichi_limits(leak_rounds="2:5")
def test_crashes_in_round_3():
    if _round() == 3:
        os.abort()

@pytest.mark.taichi_limits(leak_rounds="2:5")
def test_fails_in_round_3():
    assert _round() != 3

@pytest.mark.taichi_limits(leak_rounds="2:5")
def test_skips_in_round_3():
    if _round() == 3:
        pytest.skip("not in the third round")

@pytest.mark.xfail(reason="known to fail")
@pytest.mark.taichi_limits(leak_rounds="2:5")
def test_xfails():
    assert False

@pytest.mark.taichi_limits(leak_rounds="2:5", mem_mb=80)
def test_breaks_mem_mb_in_a_round():
    COUNT.setdefault("held", []).append(bytearray(20 * 1024 * 1024))
"""


def test_a_round_that_does_not_pass_decides_and_is_named(
    pytester: pytest.Pytester, run_plugin: Any
) -> None:
    pytester.makepyfile(test_counting=COUNTING)
    result, usage = _run(pytester, run_plugin, "-rsx")
    result.assert_outcomes(failed=3, skipped=1, xfailed=1)
    crashed = usage["test_crashes_in_round_3"]["leaks"]
    assert crashed["note"] == "the rounds stopped in round 3 of 7: the test process ended"
    assert len(crashed["rounds"]) == 2
    failed = usage["test_fails_in_round_3"]["leaks"]
    assert failed["note"] == "the rounds stopped in round 3 of 7: the test did not pass it"
    assert usage["test_skips_in_round_3"]["leaks"]["note"].startswith(
        "the rounds stopped in round 3 of 7"
    )
    assert usage["test_xfails"]["leaks"]["note"].startswith("the rounds stopped in round 1 of 7")
    over = usage["test_breaks_mem_mb_in_a_round"]["leaks"]
    assert over["note"].endswith(": mem_mb exceeded") and over["series"] == []
    result.stdout.fnmatch_lines(
        [
            "*assert 3 != 3",
            "*taichi_limits leak hunting*",
            "leak hunting ran this test in up to 7 rounds (2 warm-up, 5 measured): it stopped "
            "in round 3 (measured round 1 of 5); rounds 1-2 passed",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "taichi_limits: the test process was killed by signal 6 (SIGABRT)",
            "  rounds      the rounds stopped in round 3 of 7: the test process ended",
            "  rounds      own memory after each round (MiB; warm-up | measured): * *",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "taichi_limits: mem_mb exceeded: * when caught, limit mem_mb=80 *",
            "  rounds      the rounds stopped in round * of 7: mem_mb exceeded",
            "  rounds      own memory after each round (MiB; warm-up | measured): *",
        ]
    )


def test_a_test_that_stops_the_session_in_round_2(
    pytester: pytest.Pytester, run_plugin: Any
) -> None:
    pytester.makepyfile(
        test_stop="""
        import pytest
        COUNT = {"n": 0}

        @pytest.mark.taichi_limits(leak_rounds="1:3")
        def test_stops():
            COUNT["n"] += 1
            if COUNT["n"] == 2:
                pytest.exit("enough for today", returncode=3)

        def test_never_runs():
            pass
        """
    )
    result, usage = _run(pytester, run_plugin)
    assert result.ret == 3
    assert usage["test_stops"]["interrupted"] == "pytest.exit('enough for today', returncode=3)"
    assert usage["test_stops"]["leaks"]["note"].startswith("the rounds stopped in round 2 of 4")
    assert "test_never_runs" not in result.stdout.str()


def test_fixtures_are_fresh_in_every_round_and_higher_scopes_are_set_up_once(
    pytester: pytest.Pytester, run_plugin: Any
) -> None:
    pytester.makepyfile(
        test_fixtures="""
        import pytest

        EVENTS = []
        KEPT = []

        def note(what):
            with open("events.txt", "a") as handle:
                handle.write(what + "\\n")

        @pytest.fixture(scope="module")
        def shared():
            note("module up")
            yield
            note("module down")

        @pytest.fixture
        def fresh(shared):
            note("function up")
            box = []
            yield box
            assert box == [1], "a fixture value from an earlier round"
            note("function down")
            KEPT.append(bytearray(3 * 1024 * 1024))  # a leak in a teardown

        @pytest.mark.taichi_limits(leak_rounds="1:3")
        @pytest.mark.parametrize("size", [1, 2])
        def test_with_fixtures(fresh, size):
            fresh.append(1)

        @pytest.mark.taichi_limits(leak_rounds="1:3")
        class TestInAClass:
            def test_fresh_instance(self):
                assert not hasattr(self, "seen")
                self.seen = True
        """
    )
    result, usage = _run(pytester, run_plugin, "--taichi-limits-isolation=module")
    result.assert_outcomes(failed=2, passed=1)
    events = (pytester.path / "events.txt").read_text().splitlines()
    # Two tests of 4 rounds each; the first one's leak ends the module's child, so the module
    # fixture is set up (and torn down) once per child.
    assert events.count("function up") == events.count("function down") == 8
    assert events.count("module up") == events.count("module down") == 2
    for name in ("test_with_fixtures[1]", "test_with_fixtures[2]"):
        # The reading comes before a round's teardown: its leak shows in the next round.
        assert _leaking(usage[name]) == {"own_memory_bytes"}
    assert not _leaking(usage["test_fresh_instance"])


def test_time_budgets_hold_per_round(pytester: pytest.Pytester, run_plugin: Any) -> None:
    """Four rounds of 1.5 s each against wall_s=4: the test's 6 s are over it, no round is."""
    pytester.makepyfile(
        test_slow="""
        import time
        import pytest

        @pytest.mark.taichi_limits(leak_rounds="0:4", wall_s=4)
        def test_slow_rounds():
            time.sleep(1.5)
        """
    )
    result, usage = _run(pytester, run_plugin)
    result.assert_outcomes(passed=1)
    rounds = usage["test_slow_rounds"]["leaks"]["rounds"]
    assert len(rounds) == 4 and all(1.5 <= r["wall_s"] < 4 for r in rounds)
    assert usage["test_slow_rounds"]["wall_s"] > 4
