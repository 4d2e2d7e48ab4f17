"""Synthetic session reports for the Markdown, HTML and command-line tests.

Records are written as the JSON report holds them and read back with the plugin's own
`Report.from_json`, with fixed times, so that a golden file only changes when the rendering does.
`document()` gives the JSON document, `report()` the object every view renders.
"""

from __future__ import annotations

import copy
from typing import Any

from pytest_taichi_limits.formats.jsonreport import BaselineSection, Report
from pytest_taichi_limits.model.records import UsageRecord
from pytest_taichi_limits.model.timeline import Timeline

MB = 1024 * 1024
ENVIRONMENT = {
    "python": "3.11.7",
    "python_implementation": "CPython",
    "pytest": "9.0.3",
    "taichi": "1.7.4",
    "pytest_taichi_limits": "0.1.0",
    "host": "ci-runner",
    "platform": "linux",
    "machine": "x86_64",
}


def timeline(
    seconds: float,
    peak_mb: float,
    cpu_s: float,
    violation_at_s: float | None = None,
    gpu_bytes: int | None = None,
) -> dict[str, Any]:
    line = Timeline()
    steps = 50
    for step in range(steps + 1):
        share = step / steps
        line.add(
            seconds * share,
            peak_mb * MB * share,
            cpu_s * share,
            None if gpu_bytes is None else int(gpu_bytes * share),
        )
    return line.to_json(violation_at_s)


def record(
    nodeid: str,
    outcome: str = "passed",
    memory_mb: float = 10.0,
    cpu_s: float = 0.5,
    wall_s: float = 0.6,
    gpu_bytes: int | None = None,
    **fields: Any,
) -> dict[str, Any]:
    own = int(memory_mb * MB)
    data: dict[str, Any] = {
        "nodeid": nodeid,
        "outcome": outcome,
        "own_memory_bytes": own,
        "peak_own_memory_bytes": own,
        "memory_method": "smaps",
        "peak_own_rss_bytes": own,
        "kernel_own_rss_bytes": own,
        "peak_rss_bytes": own + 50 * MB,
        "start_rss_bytes": 50 * MB,
        "peak_vms_bytes": own + 500 * MB,
        "cpu_s": cpu_s,
        "wall_s": wall_s,
        "gpu_peak_bytes": gpu_bytes,
        "gpu_note": "measured" if gpu_bytes is not None else "not measured (no NVML)",
        "gpu_clamps": [],
        "worker_pid": 4242,
        "worker_test_number": 1,
        "admission": None,
        "budget": {"cpu_s": 30.0, "mem_mb": 1024.0, "wall_s": 600.0, "gpu_gb": None},
        "pid": 4242,
        "started_at": 1_800_000_000.0,
        "mode": "fork",
        "arch": "x64",
        "violation": None,
        "regression": None,
        "timeline": timeline(wall_s, memory_mb, cpu_s, gpu_bytes=gpu_bytes),
    }
    data.update(fields)
    return data


def violation(
    nodeid: str, resource: str, limit: float, measured: float, at: float = 1_800_000_000.4
) -> dict[str, Any]:
    units = {"cpu_s": "s", "wall_s": "s", "mem_mb": "MB", "gpu_gb": "GB"}
    return {
        "nodeid": nodeid,
        "resource": resource,
        "limit": limit,
        "measured": measured,
        "unit": units[resource],
        "over_by": measured - limit,
        "detected_by": "supervisor (RSS of the process tree, sampled)",
        "phase": "call",
        "pid": 4242,
        "at": at,
        "signals_sent": ["SIGTERM"],
        "stack": "Current thread 0x1 (most recent call first):\n"
        '  File "/src/tests/test_big.py", line 12 in test_big',
        "detail": "",
    }


def growth(
    resource: str, before: float, after: float, allowed: float, tolerance: str
) -> dict[str, Any]:
    return {
        "resource": resource,
        "before": before,
        "before_min": before,
        "runs": 1,
        "after": after,
        "growth": after - before,
        "growth_percent": 100.0 * (after - before) / before if before else None,
        "allowed": allowed,
        "tolerance": tolerance,
        "exceeded": after > allowed,
        "unit": "B" if resource in ("mem", "gpu") else "s",
    }


def document(
    records: list[dict[str, Any]],
    baseline: dict[str, Any] | None = None,
    complete: bool = True,
    exit_status: int = 0,
    environment: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The JSON document of a session with these records (plain JSON values)."""
    made = Report(
        records=tuple(
            UsageRecord.from_json(record)
            for record in sorted(copy.deepcopy(records), key=lambda r: r["nodeid"])
        ),
        environment=environment or ENVIRONMENT,
        complete=complete,
        exit_status=exit_status,
        baseline=None if baseline is None else BaselineSection.from_json(baseline),
        created_at="2027-01-15T10:00:00.000+00:00",
    )
    return made.to_json()


def report(*args: Any, **kwargs: Any) -> Report:
    """The session's Report, as `document` makes it."""
    return Report.from_json(document(*args, **kwargs))


def over_budget() -> Report:
    return Report.from_json(over_budget_document())


def with_baseline() -> Report:
    return Report.from_json(with_baseline_document())


def awkward_ids() -> Report:
    return Report.from_json(awkward_ids_document())


def over_budget_document() -> dict[str, Any]:
    """Two violations, a pass, a skip; no baseline."""
    big = "tests/test_big.py::test_big"
    spin = "tests/test_big.py::test_spin"
    return document(
        [
            record(
                big,
                "failed",
                memory_mb=300.0,
                wall_s=1.2,
                violation=violation(big, "mem_mb", 256.0, 281.5),
                budget={"cpu_s": 30.0, "mem_mb": 256.0, "wall_s": 600.0, "gpu_gb": None},
                timeline=timeline(1.2, 300.0, 1.0, violation_at_s=1.1),
            ),
            record(
                spin,
                "failed",
                cpu_s=2.02,
                wall_s=2.1,
                violation=violation(spin, "cpu_s", 2.0, 2.02),
                budget={"cpu_s": 2.0, "mem_mb": 1024.0, "wall_s": 600.0, "gpu_gb": None},
            ),
            record("tests/test_small.py::test_fine", memory_mb=12.0, cpu_s=0.2),
            record("tests/test_small.py::test_skipped", "skipped", memory_mb=0.0, cpu_s=0.0),
        ],
        exit_status=1,
    )


def with_baseline_document() -> dict[str, Any]:
    """A regression, a warning-only regression, a new and a missing test, another Taichi."""
    grown = "tests/test_a.py::test_grown"
    warned = "tests/test_a.py::test_warned"
    records = [
        record(
            grown,
            "failed",
            memory_mb=200.0,
            regression={
                "warn_only": False,
                "text": "taichi_limits: grew beyond the baseline's tolerance",
                "growths": [
                    growth("mem", 100 * MB, 200 * MB, 126 * MB, "10%+16MB"),
                    growth("cpu", 0.5, 0.5, 1.75, "50%+1s"),
                ],
            },
        ),
        record(
            warned,
            cpu_s=5.0,
            regression={
                "warn_only": True,
                "text": "taichi_limits: grew",
                "growths": [growth("cpu", 1.0, 5.0, 2.5, "50%+1s")],
            },
        ),
        record("tests/test_a.py::test_new", memory_mb=1.0),
        record("tests/test_a.py::test_steady", memory_mb=50.0, gpu_bytes=512 * MB),
    ]
    section = {
        "path": "baseline.json",
        "tolerance": "mem=10%+16MB,cpu=50%+1s,wall=off",
        "warn_only": False,
        "regressions": [grown, warned],
        "new_tests": ["tests/test_a.py::test_new"],
        "missing_tests": ["tests/test_a.py::test_gone"],
        "environment_warnings": [
            (
                "3 of 4 baseline tests were measured with another taichi "
                "(taichi 1.7.3 -> 1.7.4): their figures may differ for "
                "that reason"
            )
        ],
    }
    return document(records, section, exit_status=1)


def awkward_ids_document() -> dict[str, Any]:
    """Test ids that Markdown would misread, and a very long one."""
    long_id = (
        "tests/deep/"
        + "nested/" * 12
        + "test_long.py::test_with_a_long_name["
        + "x" * 80
        + "-param]"
    )
    return document(
        [
            record("tests/test_md.py::test_pipe[a|b]"),
            record("tests/test_md.py::test_tick[`rm -rf`]"),
            record("tests/test_md.py::test_newline[line1\nline2]"),
            record("tests/test_md.py::test_markup[<b>*bold*_x_</b>]"),
            record(long_id, memory_mb=99.0),
        ]
    )


def with_failures() -> Report:
    """A failed assertion, a crash, a test refused before it started, a regression that failed
    its test, and a pass."""
    refused = record(
        "tests/test_c.py::test_refused",
        "failed",
        memory_mb=0.0,
        cpu_s=0.0,
        wall_s=0.0,
        pid=0,
        worker_pid=0,
        started=False,
        timeline=None,
        reason="taichi_limits admission: tests/test_c.py::test_refused needs memory 4.0 GB",
    )
    grown = record(
        "tests/test_c.py::test_grown",
        "failed",
        reason="grew beyond the baseline's tolerance: own memory 10.0 MiB -> 40.0 MiB",
        regression={
            "warn_only": False,
            "text": "taichi_limits: grew beyond the baseline's tolerance: own memory 10.0 MiB -> "
            "40.0 MiB (+30.0 MiB, +300.0%), allowed up to 27.0 MiB (mem=10%+16MiB)",
            "growths": [growth("mem", 10 * MB, 40 * MB, 27 * MB, "10%+16MiB")],
        },
    )
    section = {
        "path": "baseline.json",
        "tolerance": "mem=10%+16MiB",
        "warn_only": False,
        "regressions": ["tests/test_c.py::test_grown"],
        "new_tests": [],
        "missing_tests": [],
        "environment_warnings": [],
    }
    return report(
        [
            record("tests/test_c.py::test_assert", "failed", reason="assert 1 + 1 == 3"),
            record(
                "tests/test_c.py::test_crash",
                "failed",
                reason="the test process was killed by signal 11 (SIGSEGV)",
            ),
            refused,
            grown,
            record("tests/test_c.py::test_fine"),
        ],
        section,
        exit_status=1,
    )


def leaks(
    per_round_mb: float,
    fields: bool = False,
    warmup: int = 2,
    measured: int = 5,
    stopped: str = "",
) -> dict[str, Any]:
    """Leak hunting's JSON for a test whose own memory grows `per_round_mb` each round (and, with
    `fields`, one Taichi field per round, made at tests/test_sim.py:42 in step)."""
    from pytest_taichi_limits.model.leaks import RoundReading
    from pytest_taichi_limits.supervise.leaks import judge

    readings = [
        RoundReading(
            number=number,
            warmup=number <= warmup,
            own_memory_bytes=int((40 + per_round_mb * number) * MB),
            gpu_bytes=None,
            open_fds=12,
            threads=8,
            processes=0,
            cpu_s=0.05,
            wall_s=0.06,
            taichi={"fields": number if fields else 1, "snode_trees": 1},
            sites={"field at tests/test_sim.py:42 in step": number} if fields else {},
        )
        for number in range(1, warmup + measured + 1)
    ]
    found = judge(
        readings[: len(readings) - 2] if stopped else readings, warmup, measured, MB, stopped
    )
    return found.to_json()


def with_leaks_document() -> dict[str, Any]:
    """A test that leaks memory and fields, one that does not, one whose rounds stopped."""
    leaky = "tests/test_sim.py::test_step"
    leak_violation = violation(leaky, "cpu_s", 1.0, 2.3)
    leak_violation.update(
        resource="leak_mb",
        unit="MiB/round",
        measured=2.3,
        over_by=1.3,
        detected_by="supervisor (an exact reading after each of 5 measured rounds, which "
        "followed 2 rounds of warm-up; private and shared memory of the process tree, "
        "smaps_rollup)",
        signals_sent=[],
        stack="",
        detail="own memory +2.3 MiB/round, Taichi fields +1/round",
    )
    budget = {"cpu_s": None, "mem_mb": 4096.0, "wall_s": 600.0, "gpu_gb": None, "leak_mb": 1.0}
    return document(
        [
            record(
                leaky,
                "failed",
                memory_mb=56.0,
                violation=leak_violation,
                budget=budget,
                leaks=leaks(2.3, fields=True),
                reason="leak: own memory +2.3 MiB/round, Taichi fields +1/round",
            ),
            record("tests/test_sim.py::test_clean", budget=budget, leaks=leaks(0.01)),
            record(
                "tests/test_sim.py::test_flaky",
                "failed",
                budget=budget,
                leaks=leaks(
                    0.0, stopped="the rounds stopped in round 6 of 7: the test did not pass it"
                ),
                reason="assert 0.1 + 0.2 == 0.3",
            ),
        ],
        exit_status=1,
    )


def with_leaks() -> Report:
    return Report.from_json(with_leaks_document())
