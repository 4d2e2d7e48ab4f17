"""The terminal summary: top consumers, violations on one line each, aligned human units."""

from __future__ import annotations

import re

import pytest
from helpers.plugin_types import RunPlugin

SIZED_TESTS = """
import pytest

def _hold(megabytes):
    block = bytearray(megabytes * 1024 * 1024)
    for i in range(0, len(block), 4096):
        block[i] = 1
    return block

@pytest.mark.taichi_limits(mem_mb=1024)
def test_large():
    _hold(300)

@pytest.mark.taichi_limits(mem_mb=1024)
def test_medium():
    _hold(120)

@pytest.mark.taichi_limits(mem_mb=1024)
def test_small():
    _hold(8)

@pytest.mark.taichi_limits(cpu_s=60)
def test_busy():
    total = 0
    for i in range(15_000_000):
        total += i

@pytest.mark.taichi_limits(mem_mb=50)
def test_over_memory():
    # Stopped somewhere between 50 and 100 MiB, however late the supervisor looks on a loaded
    # machine: always below test_medium's 120 MiB, so the ranking cannot depend on timing.
    _hold(100)

@pytest.mark.taichi_limits(wall_s=0.5)
def test_over_time():
    import time
    time.sleep(30)
"""


def _section(result: pytest.RunResult) -> list[str]:
    lines = result.outlines
    start = next(i for i, line in enumerate(lines) if "taichi-limits summary" in line)
    end = next(i for i in range(start + 1, len(lines)) if lines[i].startswith("===="))
    return lines[start + 1 : end]


def test_top_consumers_violations_aligned(pytester: pytest.Pytester, run_plugin: RunPlugin) -> None:
    pytester.makepyfile(test_sized=SIZED_TESTS)
    result = run_plugin("--taichi-limits-top=3", "--taichi-limits-grace=0.5")
    result.assert_outcomes(passed=4, failed=2)
    section = _section(result)
    memory_at = section.index(
        next(line for line in section if line.startswith("top 3 by own memory"))
    )
    memory_rows = section[memory_at + 1 : memory_at + 4]
    assert [row.split()[-1].split("::")[1] for row in memory_rows] == [
        "test_large",
        "test_medium",
        "test_over_memory",
    ]
    # Human units, right-aligned: every test id starts in the same column.
    assert len({row.index("test_sized.py") for row in memory_rows}) == 1
    assert all(
        re.match(r"^ +\d+\.\d (MiB|GiB) +\(\d+\.\d (MiB|GiB)\)  test_sized\.py::", row)
        for row in memory_rows
    ), memory_rows
    cpu_at = section.index(next(line for line in section if line.startswith("top 3 by CPU time")))
    cpu_rows = section[cpu_at + 1 : cpu_at + 4]
    # Which test used the most CPU depends on the machine's load: the table's order does not.
    seconds = [float(row.split()[0]) for row in cpu_rows]
    assert seconds == sorted(seconds, reverse=True), cpu_rows
    assert all(
        re.match(r"^ +\d+\.\d\d s +\(\d+\.\d\d s\)  test_sized\.py::", row) for row in cpu_rows
    ), cpu_rows
    assert len({row.index("test_sized.py") for row in cpu_rows}) == 1
    assert any(line.startswith("GPU memory: not measured") for line in section)
    violations_at = section.index("budget violations (2):")
    violation_lines = section[violations_at + 1 : violations_at + 3]
    pattern = re.compile(
        r"^  FAILED test_sized\.py::test_over_(memory|time) - (mem_mb|wall_s) "
        r"exceeded: .* when caught, limit (mem_mb=50|wall_s=0\.5) \(over by .*\)$"
    )
    assert all(pattern.match(line) for line in violation_lines), violation_lines


def test_top_zero_hides_the_tables(pytester: pytest.Pytester, run_plugin: RunPlugin) -> None:
    pytester.makepyfile(
        test_sized="""
        import pytest

        @pytest.mark.taichi_limits(mem_mb=512)
        def test_one(): pass
    """
    )
    result = run_plugin("--taichi-limits-top=0")
    result.assert_outcomes(passed=1)
    assert "taichi-limits summary" not in result.stdout.str()
    result = run_plugin("--taichi-limits-top=-1")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--taichi-limits-top must be a whole number >= 0, got '-1'"])
    pytester.makeini("[pytest]\ntaichi_limits_top = many\n")
    result = run_plugin()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*ini option taichi_limits_top must be a whole number >= 0, got 'many'"]
    )


def test_no_summary_without_supervised_tests(
    pytester: pytest.Pytester, run_plugin: RunPlugin
) -> None:
    pytester.makepyfile("def test_plain(): pass")
    result = run_plugin()
    result.assert_outcomes(passed=1)
    assert "taichi-limits summary" not in result.stdout.str()
