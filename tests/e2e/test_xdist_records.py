"""Under pytest-xdist: the same records, JSON, baseline and summary as without it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from helpers.plugin_types import RunPlugin

pytest.importorskip("xdist")

TESTS = """
import os
import pytest
import taichi as ti


@pytest.fixture
def cpu():
    ti.init(arch=ti.cpu, offline_cache=False)
    yield
    ti.reset()


@pytest.mark.parametrize("megabytes", [4, 16, 64])
def test_field(cpu, megabytes):
    extra = int(os.environ.get("EXTRA_MB", "0")) if megabytes == 16 else 0
    values = ti.field(ti.f32, shape=(megabytes + extra) * 1024 * 1024 // 4)
    values.fill(1.0)


@pytest.mark.taichi_limits(mem_mb=40)
def test_over_budget():
    block = bytearray(200 * 1024 * 1024)
    for i in range(0, len(block), 4096):
        block[i] = 1


def test_fails():
    assert False


@pytest.mark.skip(reason="skipped")
def test_skipped():
    pass


def test_plain_python():
    assert True
"""

#: What must be identical between runs: everything but the measured figures, pids and times.
STABLE_FIELDS = ("nodeid", "outcome", "budget", "arch", "mode", "gpu_peak_bytes")


def _run(run_plugin: RunPlugin, *args: str) -> pytest.RunResult:
    return run_plugin("--taichi-limits", "--taichi-limits-grace=0.5", *args)


def _stable(path: Path) -> list[dict[str, Any]]:
    document = json.loads(path.read_text())
    return [
        {key: record[key] for key in STABLE_FIELDS}
        | {"violation": (record["violation"] or {}).get("resource")}
        for record in document["records"]
    ]


def test_records_json_and_baseline_are_the_same_with_two_workers(
    pytester: pytest.Pytester, run_plugin: RunPlugin
) -> None:
    pytester.makepyfile(test_many=TESTS)
    serial = _run(
        run_plugin,
        "-p",
        "no:xdist",
        "--taichi-limits-json=serial.json",
        "--taichi-limits-save-baseline=serial-base.json",
    )
    parallel = _run(
        run_plugin,
        "-n",
        "2",
        "--taichi-limits-json=parallel.json",
        "--taichi-limits-save-baseline=parallel-base.json",
    )
    for result in (serial, parallel):
        result.assert_outcomes(passed=4, failed=2, skipped=1)
    parallel.stdout.fnmatch_lines(["*created: 2/2 workers*"])
    serial_records = _stable(pytester.path / "serial.json")
    assert len(serial_records) == 7  # every supervised test once: none lost, none doubled
    assert len({record["nodeid"] for record in serial_records}) == 7
    assert _stable(pytester.path / "parallel.json") == serial_records
    serial_base = json.loads((pytester.path / "serial-base.json").read_text())
    parallel_base = json.loads((pytester.path / "parallel-base.json").read_text())
    assert set(serial_base["tests"]) == set(parallel_base["tests"])
    assert len(serial_base["tests"]) == 4  # the passed ones
    # The summary lists the same tests in the same places.
    for result in (serial, parallel):
        result.stdout.fnmatch_lines(
            [
                "top 5 by own memory*",
                "*test_many.py::test_field?64?",
                "budget violations (1):",
                "  FAILED test_many.py::test_over_budget - mem_mb exceeded: * when caught, limit mem_mb=40 *",
            ]
        )


def test_workers_compare_with_the_baseline(
    pytester: pytest.Pytester, run_plugin: RunPlugin, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(test_many=TESTS)
    # A child per test: in a shared child a test's figures depend on the tests before it (which
    # pays the module's Taichi start under xdist's timing; what the test before left to the
    # allocator), and the two runs select different tests (docs/baselines.md).
    _run(
        run_plugin,
        "-n",
        "2",
        "--taichi-limits-isolation=test",
        "--taichi-limits-save-baseline=base.json",
        "-k",
        "field",
    ).assert_outcomes(passed=3)
    monkeypatch.setenv("EXTRA_MB", "160")
    result = _run(
        run_plugin,
        "-n",
        "2",
        "--taichi-limits-isolation=test",
        "--taichi-limits-compare=base.json",
        "--taichi-limits-json=report.json",
    )
    result.assert_outcomes(passed=3, failed=3, skipped=1)
    result.stdout.fnmatch_lines(
        [
            "*regressions against base.json (1; these tests fail):",
            "  test_many.py::test_field?16?  own memory * -> * (+*), allowed up to * (mem=10%+16MiB)",
            "new since the baseline, not compared (1; --taichi-limits-save-baseline adds them):",
            "  test_many.py::test_plain_python",
            # issue 22: a failed test is never saved; the hint must not say it would be
            "new since the baseline, not compared, and not saved by "
            "--taichi-limits-save-baseline until they pass (2; a test that failed *",
            "  test_many.py::test_fails",
            "  test_many.py::test_over_budget",
            "FAILED test_many.py::test_field?16? - grew beyond the *",
        ]
    )
    document = json.loads((pytester.path / "report.json").read_text())
    assert document["baseline"]["regressions"] == ["test_many.py::test_field[16]"]
    assert document["baseline"]["missing_tests"] == []
