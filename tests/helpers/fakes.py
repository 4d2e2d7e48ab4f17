"""Small records for unit tests: a Usage, a Violation and a UsageRecord with plausible figures,
each changeable field by field (`make_usage(cpu_s=3.0)`)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from pytest_taichi_limits.config.budget import Budget
from pytest_taichi_limits.config.units import MIB
from pytest_taichi_limits.model.records import Usage, UsageRecord, Violation


def make_usage(**changes: Any) -> Usage:
    usage = Usage(
        nodeid="test_x.py::test_x",
        pid=1234,
        started_at=1_700_000_000.0,
        wall_s=2.5,
        cpu_s=1.25,
        start_rss_bytes=50 * MIB,
        peak_own_rss_bytes=30 * MIB,
        peak_rss_bytes=80 * MIB,
        peak_vms_bytes=500 * MIB,
        kernel_maxrss_bytes=90 * MIB,
        gpu_peak_bytes=None,
        gpu_note="not measured (no NVML)",
        samples=12,
        budget=Budget(None, 1024.0, 600.0, None),
        mode="fork",
        peak_own_memory_bytes=30 * MIB,
        memory_method="smaps",
        arch="x64",
        gpu_clamps=(
            (
                "ti.init device_memory_GB=4 (from argument) clamped to device_memory_GB=1 "
                "by gpu_gb=1"
            ),
        ),
    )
    return replace(usage, **changes)


def make_violation(**changes: Any) -> Violation:
    violation = Violation(
        "test_x.py::test_x",
        "mem_mb",
        64.0,
        300.5,
        "supervisor",
        "call",
        1234,
        1_700_000_001.0,
        ("SIGTERM", "SIGKILL"),
        "Thread 0x1 ...",
        "detail",
    )
    return replace(violation, **changes)


def make_record(**changes: Any) -> UsageRecord:
    return replace(UsageRecord.from_usage(make_usage(), "passed", None), **changes)
