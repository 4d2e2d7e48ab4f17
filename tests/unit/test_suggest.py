"""--taichi-limits-suggest: marker lines that are valid markers, and an ini snippet that fits."""

from __future__ import annotations

import textwrap
from dataclasses import replace

import pytest

from pytest_taichi_limits.config.budget import Budget
from pytest_taichi_limits.model.records import Growth, Regression, UsageRecord
from pytest_taichi_limits.render.suggest import HEADROOM, lines, suggestion_for, suggestions


def _record(
    own_mb: float, cpu_s: float, wall_s: float, gpu_mb: float | None, outcome: str = "passed"
) -> UsageRecord:
    mb = 1024 * 1024
    return UsageRecord(
        nodeid="t.py::t",
        outcome=outcome,
        own_memory_bytes=int(own_mb * mb),
        peak_own_memory_bytes=int(own_mb * mb),
        memory_method="smaps",
        peak_own_rss_bytes=int(own_mb * mb),
        kernel_own_rss_bytes=0,
        peak_rss_bytes=0,
        start_rss_bytes=0,
        peak_vms_bytes=0,
        cpu_s=cpu_s,
        wall_s=wall_s,
        gpu_peak_bytes=None if gpu_mb is None else int(gpu_mb * mb),
        gpu_note="",
        gpu_clamps=(),
        budget=Budget(),
        pid=1,
        started_at=0.0,
        mode="fork",
        arch="x64",
        violation=None,
        regression=None,
    )


@pytest.mark.parametrize(
    "own_mb, cpu_s, wall_s, gpu_mb, expected",
    [
        (0.0, 0.0, 0.0, None, "@pytest.mark.taichi_limits(mem_mb=64, cpu_s=2, wall_s=10)"),
        (100.0, 1.2, 2.1, None, "@pytest.mark.taichi_limits(mem_mb=224, cpu_s=5, wall_s=20)"),
        (
            10.0,
            0.1,
            0.1,
            1500.0,
            "@pytest.mark.taichi_limits(mem_mb=96, cpu_s=3, wall_s=15, gpu_gb=2.25)",
        ),
    ],
)
def test_headroom_and_rounding(
    own_mb: float, cpu_s: float, wall_s: float, gpu_mb: float | None, expected: str
) -> None:
    # mem: 1.5x+64 MB up to 32 MB; cpu: 2x+2 s up to 1 s; wall: 3x+10 s up to 5 s;
    # gpu: 1.25x+0.25 GB up to 0.25 GB (1500 MB = 1.46 GB -> 2.08 -> 2.25).
    assert HEADROOM["mem_mb"] == (1.5, 64.0, 32.0)
    assert suggestion_for(_record(own_mb, cpu_s, wall_s, gpu_mb)).marker() == expected


def test_failed_test_is_marked_as_a_lower_bound() -> None:
    suggestion = suggestion_for(_record(50, 1, 1, None, outcome="failed"))
    assert suggestion.lower_bound
    assert textwrap.shorten(suggestion.measured, 200).startswith("measured own memory 50.0 MiB")


def test_a_failed_or_grown_test_is_no_value_to_paste() -> None:
    """Issue 21 item 3: a leaking test's figure must not be offered as its budget."""
    failed = replace(_record(50, 1, 1, None, outcome="failed"), reason="assert leak == 0")
    growth = Growth("mem", 100 * 1024 * 1024, 100 * 1024 * 1024, 1, 400 * 1024**2, 126e6, "10%")
    grown = replace(
        _record(400, 1, 1, None, outcome="failed"),
        nodeid="t.py::grown",
        regression=Regression(False, "taichi_limits: grew", (growth,)),
    )
    fine = replace(_record(10, 1, 1, None), nodeid="t.py::fine")
    printed = lines(suggestions([failed, grown, fine]))
    [failed_line] = [line for line in printed if "t.py::t " in line]
    assert failed_line.startswith("# @pytest.mark.taichi_limits(")
    assert "not a value to paste: it FAILED (assert leak == 0)" in failed_line
    [grown_line] = [line for line in printed if "t.py::grown" in line]
    assert grown_line.startswith("# @pytest.mark.taichi_limits(")
    assert "it GREW beyond the baseline (own memory 100.0 MiB -> 400.0 MiB)" in grown_line
    assert any(line.startswith("@pytest.mark.taichi_limits(") for line in printed)
    assert "taichi_limits_mem_mb = 96" in printed  # only the test that passed: 1.5 x 10 + 64
