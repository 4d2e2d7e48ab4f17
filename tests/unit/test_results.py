"""Unit tests (no subprocess) of the results layer's pure parts: records, outcomes, tolerance,
baseline ranges, output-path checks, report wording."""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import pytest
from helpers.fakes import make_record, make_usage, make_violation

from pytest_taichi_limits.config.budget import Budget
from pytest_taichi_limits.config.units import MIB, human_bytes
from pytest_taichi_limits.formats import baseline as baselines
from pytest_taichi_limits.measure.gpu import NO_NVIDIA_GPU_NOTE
from pytest_taichi_limits.model.records import (
    Ending,
    Growth,
    RecordError,
    Regression,
    UsageRecord,
    Violation,
)
from pytest_taichi_limits.render import summary
from pytest_taichi_limits.render import text as render
from pytest_taichi_limits.results.outcomes import combined_outcome
from pytest_taichi_limits.results.outputs import (
    OutputError,
    check_distinct,
    check_replaceable,
    step_summary_problem,
)


@dataclass
class FakeReport:
    passed: bool = True
    failed: bool = False
    skipped: bool = False


def phase(outcome: str, xfail: bool = False) -> FakeReport:
    report = FakeReport(
        passed=outcome == "passed", failed=outcome == "failed", skipped=outcome == "skipped"
    )
    if xfail:
        report.wasxfail = "reason"  # type: ignore[attr-defined]
    return report


# -- records ---------------------------------------------------------------------------------------


def test_record_round_trips_through_json() -> None:
    growth = Growth("mem", 10.0 * MIB, 9.0 * MIB, 2, 40.0 * MIB, 20.0 * MIB, "10%+8MiB")
    record = UsageRecord.from_usage(
        make_usage(ending=Ending(None, 15)),
        "failed",
        make_violation(),
        Regression(False, "grew", (growth,)),
        reason="mem_mb exceeded",
    )
    data = json.loads(json.dumps(record.to_json()))  # what xdist and the JSON report carry
    assert UsageRecord.from_json(data) == record
    assert data["violation"]["unit"] == "MiB" and data["violation"]["over_by"] == 236.5
    assert data["ending"] == "killed by signal 15 (SIGTERM)" and data["started"] is True


def test_a_version_2_record_reads_with_the_defaults_of_the_new_fields() -> None:
    data = make_record().to_json()
    for added in ("ending", "reason", "started"):
        del data[added]
    record = UsageRecord.from_json(data)
    assert (record.ending, record.reason, record.started) == (None, "", True)


def test_the_violation_moment_prefers_the_timeline_mark() -> None:
    violation = make_violation(at=103.5)
    record = make_record(started_at=100.0, violation=violation, timeline=None)
    assert record.violation_at_s == 3.5
    marked = replace(record, timeline={"violation_at_s": 2.0})
    assert marked.violation_at_s == 2.0
    assert make_record(violation=None).violation_at_s is None


def test_a_test_that_never_started_has_a_record_but_no_figures() -> None:
    record = UsageRecord.not_started("t.py::test_big", Budget(mem_mb=4096.0), "refused", "fork")
    assert record.outcome == "failed" and record.reason == "refused"
    assert not record.measured and not record.comparable and record.failing
    assert UsageRecord.from_json(json.loads(json.dumps(record.to_json()))) == record


def test_violation_round_trips_through_json() -> None:
    violation = make_violation()
    assert Violation.from_json(json.loads(json.dumps(violation.to_json()))) == violation


def test_own_memory_is_one_figure_the_kernels_peak_apart() -> None:
    # The supervisor folds the kernel's peak into peak_own_memory_bytes where the method allows
    # (measure/meter.py, final_bytes): the record shows that one figure under both names.
    usage = make_usage(peak_own_memory_bytes=30 * MIB, kernel_maxrss_bytes=90 * MIB)
    assert usage.kernel_own_rss_bytes == 40 * MIB
    record = UsageRecord.from_usage(usage, "passed", None)
    assert record.own_memory_bytes == record.peak_own_memory_bytes == 30 * MIB
    assert record.kernel_own_rss_bytes == 40 * MIB
    assert record.memory_method == "smaps"
    bigger = UsageRecord.from_usage(replace(usage, peak_own_memory_bytes=70 * MIB), "passed", None)
    assert bigger.own_memory_bytes == 70 * MIB


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("cpu_s", "lots", "cpu_s must be a number"),
        ("own_memory_bytes", None, "own_memory_bytes must be a whole number"),
        ("outcome", "won", "outcome 'won' is not one of"),
        ("gpu_clamps", "x", "gpu_clamps must be a list"),
        ("budget", {"cpu_s": 1}, "budget must map"),
    ],
)
def test_record_from_json_names_the_bad_field(field: str, value: object, message: str) -> None:
    data = make_record().to_json()
    data[field] = value
    with pytest.raises(RecordError, match=message):
        UsageRecord.from_json(data)
    del data[field]
    with pytest.raises(RecordError, match=f"{field} is missing"):
        UsageRecord.from_json(data)


def test_usage_has_no_mutable_extra() -> None:
    usage = make_usage()
    assert not hasattr(usage, "extra")
    with pytest.raises(AttributeError):
        usage.arch = "cuda"  # type: ignore[misc]
    assert usage.to_json()["gpu_clamps"] == list(usage.gpu_clamps)


# -- outcome combination ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "phases, interrupted, expected",
    [
        (
            {"setup": phase("passed"), "call": phase("passed"), "teardown": phase("passed")},
            False,
            "passed",
        ),
        ({"setup": phase("failed")}, False, "error"),
        ({"setup": phase("skipped"), "teardown": phase("passed")}, False, "skipped"),
        (
            {"setup": phase("passed"), "call": phase("failed"), "teardown": phase("passed")},
            False,
            "failed",
        ),
        ({"setup": phase("passed"), "call": phase("skipped", xfail=True)}, False, "xfailed"),
        ({"setup": phase("passed"), "call": phase("passed", xfail=True)}, False, "xpassed"),
        (
            {"setup": phase("passed"), "call": phase("passed"), "teardown": phase("failed")},
            False,
            "error",
        ),
        # A test that stopped the session never "passed", whatever the parent made of its phases.
        ({"setup": phase("passed"), "teardown": phase("passed")}, True, "interrupted"),
        ({"setup": phase("passed"), "call": phase("skipped")}, True, "interrupted"),
        ({"setup": phase("skipped")}, True, "interrupted"),
        ({"setup": phase("passed"), "call": phase("failed")}, True, "failed"),
    ],
)
def test_combined_outcome(phases: dict[str, FakeReport], interrupted: bool, expected: str) -> None:
    assert combined_outcome(phases, interrupted) == expected


# -- tolerance -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, problem",
    [
        ("mem=10%+16MB,mem=5%", "mem is given twice"),
        ("mem=10%,", "empty item"),
        (",cpu=1s", "empty item"),
        ("mem=10%,,cpu=1s", "empty item"),
    ],
)
def test_tolerance_refuses_duplicates_and_empty_items(spec: str, problem: str) -> None:
    with pytest.raises(baselines.ToleranceError, match=problem):
        baselines.parse_tolerance(spec)


def test_tolerance_units_are_binary_whichever_way_written() -> None:
    mb = baselines.parse_tolerance("mem=16MB").allowances["mem"]
    mib = baselines.parse_tolerance("mem=16MiB").allowances["mem"]
    assert mb is not None and mib is not None
    assert mb.absolute == mib.absolute == 16 * MIB
    assert mib.describe() == "16MiB"
    assert baselines.parse_tolerance(None).describe() == baselines.DEFAULT_TOLERANCE_SPEC


# -- baseline ranges -------------------------------------------------------------------------------

ENVIRONMENT = {"python": "3.11.7", "taichi": "1.7.4", "host": "a"}


def test_saving_again_merges_min_max_and_runs(tmp_path: Path) -> None:
    path = str(tmp_path / "base.json")
    for cpu_s in (9.8, 19.3, 12.0):
        baselines.save(path, [make_record(cpu_s=cpu_s)], ENVIRONMENT, replace=False)
    entry = baselines.load(path).tests["test_x.py::test_x"]
    assert entry.runs == 3
    assert entry.ranges["cpu_s"] == baselines.Range(9.8, 19.3)
    assert entry.ranges["gpu_bytes"] is None
    # Another host (CI runners differ) still widens the range; another Taichi starts it over.
    baselines.save(path, [make_record(cpu_s=5.0)], {**ENVIRONMENT, "host": "b"}, replace=False)
    assert baselines.load(path).tests["test_x.py::test_x"].runs == 4
    baselines.save(
        path, [make_record(cpu_s=5.0)], {**ENVIRONMENT, "taichi": "1.8.0"}, replace=False
    )
    entry = baselines.load(path).tests["test_x.py::test_x"]
    assert (entry.runs, entry.ranges["cpu_s"]) == (1, baselines.Range(5.0, 5.0))
    baselines.save(path, [make_record(cpu_s=7.0)], ENVIRONMENT, replace=True)
    assert baselines.load(path).tests["test_x.py::test_x"].runs == 1


def test_interrupted_and_failed_tests_are_never_saved(tmp_path: Path) -> None:
    path = str(tmp_path / "base.json")
    written, total = baselines.save(
        path,
        [make_record(outcome="interrupted"), make_record(nodeid="b", outcome="failed")],
        ENVIRONMENT,
        replace=False,
    )
    assert (written, total) == (0, 0)


def test_compare_measures_growth_above_the_range_max() -> None:
    entry = baselines.Entry(
        runs=9,
        ranges={
            "own_memory_bytes": baselines.Range(100 * MIB, 100 * MIB),
            "cpu_s": baselines.Range(9.8, 19.3),
            "wall_s": baselines.Range(10.0, 20.0),
            "gpu_bytes": None,
        },
        memory_method="smaps",
        arch="x64",
        mode="fork",
        environment="e",
        saved_at="now",
    )
    tolerance = baselines.parse_tolerance(None)  # cpu=50%+1s
    lucky_low = make_record(cpu_s=19.0, own_memory_bytes=100 * MIB)
    assert not any(g.exceeded for g in baselines.compare(lucky_low, entry, tolerance))
    grown = make_record(cpu_s=31.0, own_memory_bytes=100 * MIB)
    [cpu] = [g for g in baselines.compare(grown, entry, tolerance) if g.exceeded]
    assert (cpu.before, cpu.before_min, cpu.runs) == (19.3, 9.8, 9)
    assert cpu.allowed == pytest.approx(19.3 * 1.5 + 1)
    assert Growth.from_json(cpu.to_json()) == cpu
    report = baselines.regression_report(
        [cpu],
        [cpu],
        baselines.Baseline("base.json", {"test_x.py::test_x": entry}, {}),
        "test_x.py::test_x",
        grown,
        warn_only=False,
    )
    assert "9.80 s..19.30 s -> 31.00 s" in report
    assert "base.json, 9 runs (growth is measured above the largest)" in report


def _write_baseline(tmp_path: Path, tests: dict[str, Any], version: int = 2) -> str:
    path = tmp_path / "base.json"
    path.write_text(
        json.dumps(
            {"schema": baselines.SCHEMA, "version": version, "environments": {}, "tests": tests}
        )
    )
    return str(path)


def _entry(**changes: Any) -> dict[str, Any]:
    entry = {
        "runs": 1,
        "own_memory_bytes": {"min": 1, "max": 2},
        "cpu_s": {"min": 1, "max": 1},
        "wall_s": {"min": 1, "max": 1},
        "gpu_bytes": None,
        "memory_method": "smaps",
        "arch": "x64",
        "mode": "fork",
        "environment": "e",
        "saved_at": "now",
    }
    entry.update(changes)
    return {key: value for key, value in entry.items() if value != "DROP"}


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"own_memory_bytes": "lots"}, "own_memory_bytes"),
        ({"own_memory_bytes": None}, "own_memory_bytes"),
        ({"cpu_s": "DROP"}, "cpu_s"),
        ({"cpu_s": {"min": 2, "max": 1}}, "cpu_s"),
        ({"wall_s": {"min": True, "max": 1}}, "wall_s"),
        ({"runs": 0}, "runs"),
        ({"arch": 5}, "arch"),
    ],
)
def test_baseline_is_validated_on_load(tmp_path: Path, changes: dict[str, Any], field: str) -> None:
    path = _write_baseline(tmp_path, {"t.py::test_a": _entry(**changes)})
    with pytest.raises(
        baselines.BaselineError,
        match=f"baseline '.*base.json', test 't.py::test_a': field '{field}'",
    ):
        baselines.load(path)


def test_version_1_baseline_is_refused_with_what_to_do(tmp_path: Path) -> None:
    path = _write_baseline(tmp_path, {}, version=1)
    with pytest.raises(
        baselines.BaselineError, match=r"version 1.*--taichi-limits-baseline-replace"
    ):
        baselines.load(path)


# -- output paths ----------------------------------------------------------------------------------


def test_output_checks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    check_replaceable("--x", "new/dir/out.json")  # missing directories are created later
    assert not (tmp_path / "new").exists()  # ... but not by the check
    assert os.listdir(tmp_path) == []  # the probe file is gone
    with pytest.raises(OutputError, match=r"--x: cannot write '/proc/x\.json': cannot create"):
        check_replaceable("--x", "/proc/x.json")
    (tmp_path / "file").write_text("")
    with pytest.raises(OutputError, match="file' is not a directory"):
        check_replaceable("--x", "file/out.json")
    os.mkfifo(tmp_path / "fifo")
    assert stat.S_ISFIFO(os.stat(tmp_path / "fifo").st_mode)
    with pytest.raises(OutputError, match="not a regular file"):
        check_replaceable("--x", "fifo")
    with pytest.raises(OutputError, match="--a and --b name the same file"):
        check_distinct({"--a": "out.json", "--b": str(tmp_path / "out.json"), "--c": None})


# -- wording ---------------------------------------------------------------------------------------


def test_binary_units_are_named_so() -> None:
    assert human_bytes(1.5 * 1024**3) == "1.5 GiB"
    assert human_bytes(300 * MIB) == "300.0 MiB"
    headline = render.violation_headline(make_violation())
    assert "mem_mb exceeded: 300.5 MiB when caught, limit mem_mb=64" in headline


def test_cpu_arch_says_the_gpu_cap_does_not_apply() -> None:
    on_cpu = render.gpu_cap_lines(make_usage(arch="x64"))
    assert on_cpu == [
        (
            "GPU cap: ti.init device_memory_GB=4 (from argument): the gpu_gb cap does "
            "not apply on arch x64 (device_memory_GB is a GPU pool; the CPU backend's "
            "memory counts against mem_mb)"
        )
    ]
    assert (
        "clamped to device_memory_GB=1 by gpu_gb=1"
        in render.gpu_cap_lines(make_usage(arch="cuda"))[0]
    )


def test_violation_summary_line_is_the_report_headline() -> None:
    record = make_record(outcome="failed", violation=make_violation())
    [_title, line] = summary.violations([record])
    assert line == (
        "  FAILED test_x.py::test_x - mem_mb exceeded: 300.5 MiB when caught, limit "
        "mem_mb=64 (over by 236.5 MiB, +369.5%)"
    )


def test_input_beyond_the_size_limit_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pytest_taichi_limits.formats import reading

    path = tmp_path / "big.json"
    path.write_text("[" + "1," * 5000 + "1]")
    monkeypatch.setattr(reading, "MAX_INPUT_BYTES", 4096)
    monkeypatch.setattr(reading, "_CHUNK_BYTES", 1024)
    with pytest.raises(reading.InputError, match=r"larger than 4\.0 KiB, not a file"):
        reading.read_json(str(path))


@pytest.mark.parametrize(
    "resource, limit, measured, headline",
    [
        (
            "mem_mb",
            4096.0,
            4096.0 + 12 / 1024,
            "mem_mb exceeded: 4.00001 GiB when caught, limit mem_mb=4096 "
            "(over by 12.0 KiB, +0.0003%)",
        ),
        (
            "mem_mb",
            4096.0,
            4096.0 + 1 / MIB,
            "mem_mb exceeded: 4096.000001 MiB when caught, limit mem_mb=4096 "
            "(over by 1 B, +<0.000001%)",
        ),
        (
            "wall_s",
            1.0,
            1.0013,
            "wall_s exceeded: 1.001 s when caught, limit wall_s=1 (over by 0.001 s, +0.1%)",
        ),
        (
            "mem_mb",
            256.0,
            281.5,
            "mem_mb exceeded: 281.5 MiB when caught, limit mem_mb=256 (over by 25.5 MiB, +10.0%)",
        ),
    ],
)
def test_the_headline_never_rounds_an_excess_away(
    resource: str, limit: float, measured: float, headline: str
) -> None:
    """Issue 22: "4.0 GiB when caught, limit mem_mb=4096" read as if nothing was exceeded."""
    violation = make_violation(resource=resource, limit=limit, measured=measured)
    assert render.violation_headline(violation) == f"taichi_limits: {headline}"
    assert render.used_text(violation) == headline.split(": ")[1].split(" when")[0]


def test_the_runs_source_comes_from_ci_variables_first(tmp_path: Path) -> None:
    from pytest_taichi_limits.formats.environment import run_source

    environ = {"GITHUB_SHA": "abc123", "GITHUB_HEAD_REF": "fix/leak", "GITHUB_REF_NAME": "9/merge"}
    source = run_source(str(tmp_path), ["--taichi-limits", "tests/a b.py"], environ)
    assert (source.commit, source.branch) == ("abc123", "fix/leak")
    assert source.command == "pytest --taichi-limits 'tests/a b.py'"
    gitlab = run_source(str(tmp_path), [], {"CI_COMMIT_SHA": "d00d", "CI_COMMIT_REF_NAME": "main"})
    assert (gitlab.commit, gitlab.branch, gitlab.command) == ("d00d", "main", "pytest")


def test_the_failure_reason_is_the_first_line_of_the_first_failed_phase() -> None:
    from pytest_taichi_limits.results.outcomes import MAX_REASON_CHARS, failure_reason

    def report(
        when: Literal["setup", "call", "teardown"],
        outcome: Literal["passed", "failed", "skipped"],
        longrepr: str | None,
    ) -> pytest.TestReport:
        return pytest.TestReport("t.py::t", ("t.py", 0, "t"), {}, outcome, longrepr, when)

    passed = report("setup", "passed", None)
    failed = report("call", "failed", "\ntaichi_limits: the test process was killed\n  during")
    assert failure_reason([passed, failed, report("teardown", "failed", "later")]) == (
        "the test process was killed"
    )
    assert failure_reason([passed]) == ""
    long = failure_reason([report("call", "failed", "x" * 1000)])
    assert len(long) == MAX_REASON_CHARS and long.endswith("…")


def test_no_nvidia_gpu_is_left_out_of_the_usage_line() -> None:
    """Said once in the header instead (plugin.py), not in every report."""
    assert "GPU" not in render.usage_line(make_usage(gpu_note=NO_NVIDIA_GPU_NOTE))
    failed = "not measured (NVML failed: NVMLError: Unknown Error)"
    assert render.usage_line(make_usage(gpu_note=failed)).endswith(f"| GPU {failed}")


def test_step_summary_problems(tmp_path: Path) -> None:
    existing = tmp_path / "summary.md"
    existing.write_text("earlier step\n")
    assert step_summary_problem(str(existing)) is None
    assert step_summary_problem(str(tmp_path / "new.md")) is None  # GitHub may not have made it
    assert "does not exist" in str(step_summary_problem(str(tmp_path / "gone" / "s.md")))
    assert step_summary_problem(str(tmp_path)) == "it is not a regular file"
    assert "pseudo file system" in str(step_summary_problem("/proc/self/status"))
    assert existing.read_text() == "earlier step\n"  # looked at, never written
    assert not (tmp_path / "new.md").exists()


@pytest.mark.parametrize(
    "ending", [Ending(0, None), Ending(3, None), Ending(None, 9), Ending(None, None)]
)
def test_every_ending_reads_back_and_never_says_none(ending: Ending) -> None:
    # A spawn-mode worker whose zygote stopped answering has no known exit status: the record
    # said "exited with status None" (issue 16 item 14), which its own reader then refused.
    assert "None" not in ending.describe
    assert Ending.from_text(ending.describe) == ending
