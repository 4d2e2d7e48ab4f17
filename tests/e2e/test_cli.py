"""The `taichi-limits` command line, run as a real subprocess (`python -m pytest_taichi_limits`)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers import report_files

from pytest_taichi_limits.formats import baseline as baselines
from pytest_taichi_limits.formats import jsonreport

jsonschema = pytest.importorskip("jsonschema")


def cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest_taichi_limits", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _write(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def _baseline(
    path: Path,
    tests: dict[str, dict[str, Any]],
    environment: dict[str, str] | None = None,
    saved_at: str = "2027-01-01T00:00:00+00:00",
) -> Path:
    environment_id = "e" + str(abs(hash(json.dumps(environment or report_files.ENVIRONMENT))))[:8]

    def span(value: float) -> dict[str, float]:
        return {"min": value, "max": value}

    entries = {
        nodeid: {
            "own_memory_bytes": span(figures.get("own_memory_bytes", 10 * report_files.MB)),
            "cpu_s": span(figures.get("cpu_s", 0.5)),
            "wall_s": span(0.6),
            "gpu_bytes": None,
            "runs": 1,
            "memory_method": "smaps",
            "arch": "x64",
            "mode": "fork",
            "environment": environment_id,
            "saved_at": saved_at,
        }
        for nodeid, figures in tests.items()
    }
    return _write(
        path,
        {
            "schema": baselines.SCHEMA,
            "version": baselines.VERSION,
            "environments": {environment_id: environment or report_files.ENVIRONMENT},
            "tests": entries,
        },
    )


def _no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stderr + result.stdout


# -- compare ------------------------------------------------------------------------------------


def test_compare_finds_regressions_and_exits_1(tmp_path: Path) -> None:
    report = _write(
        tmp_path / "report.json",
        report_files.document(
            [
                report_files.record("t.py::test_grown", memory_mb=200.0),
                report_files.record("t.py::test_steady", memory_mb=10.0),
                report_files.record("t.py::test_new"),
            ]
        ),
    )
    base = _baseline(
        tmp_path / "base.json",
        {
            "t.py::test_grown": {"own_memory_bytes": 100 * report_files.MB},
            "t.py::test_steady": {},
            "t.py::test_gone": {},
        },
    )
    result = cli(
        "compare", base, report, "--markdown", tmp_path / "s.md", "-o", tmp_path / "compared.json"
    )
    assert result.returncode == 1, result.stderr
    assert (
        "t.py::test_grown  own memory 100.0 MiB -> 200.0 MiB (+100.0 MiB, +100.0%)" in result.stdout
    )
    assert "test_steady" not in result.stdout.split("regressions against")[1].split("new")[0]
    assert "new since the baseline" in result.stdout and "t.py::test_new" in result.stdout
    assert "t.py::test_gone" in result.stdout
    compared = json.loads((tmp_path / "compared.json").read_text())
    jsonschema.validate(compared, jsonreport.REPORT_SCHEMA)
    assert compared["baseline"]["regressions"] == ["t.py::test_grown"]
    assert compared["baseline"]["missing_tests"] == ["t.py::test_gone"]
    summary = (tmp_path / "s.md").read_text()
    assert "Regressions against the baseline (1)" in summary


def test_compare_tolerance_decides(tmp_path: Path) -> None:
    report = _write(
        tmp_path / "r.json",
        report_files.document([report_files.record("t.py::test_a", memory_mb=200.0)]),
    )
    base = _baseline(
        tmp_path / "b.json", {"t.py::test_a": {"own_memory_bytes": 100 * report_files.MB}}
    )
    assert cli("compare", base, report, "--tolerance", "mem=150%").returncode == 0
    result = cli("compare", base, report, "--tolerance", "mem=bogus")
    assert result.returncode == 2
    assert "--tolerance" in result.stderr and "mem" in result.stderr
    _no_traceback(result)


def test_compare_gives_the_plugins_verdict(
    pytester: pytest.Pytester, run_plugin: Any, tmp_path: Path
) -> None:
    """One baseline, one run: --taichi-limits-compare and `compare` name the same tests."""
    pytester.makepyfile(
        test_mem="""
        import pytest

        @pytest.mark.taichi_limits(mem_mb=1024)
        def test_big():
            block = bytearray(96 * 1024 * 1024)
            for i in range(0, len(block), 4096):
                block[i] = 1

        @pytest.mark.taichi_limits(mem_mb=1024)
        def test_small():
            pass
    """
    )
    base = tmp_path / "base.json"
    run_plugin(f"--taichi-limits-save-baseline={base}").assert_outcomes(passed=2)
    data = json.loads(base.read_text())
    data["tests"]["test_mem.py::test_big"]["own_memory_bytes"] = {"min": 1024, "max": 1024}
    base.write_text(json.dumps(data))
    report = tmp_path / "r.json"
    run = run_plugin(f"--taichi-limits-compare={base}", f"--taichi-limits-json={report}")
    run.assert_outcomes(passed=1, failed=1)
    plugin_verdict = json.loads(report.read_text())["baseline"]["regressions"]
    assert plugin_verdict == ["test_mem.py::test_big"]
    result = cli("compare", base, report, "-o", tmp_path / "again.json")
    assert result.returncode == 1
    assert (
        json.loads((tmp_path / "again.json").read_text())["baseline"]["regressions"]
        == plugin_verdict
    )


# -- merge --------------------------------------------------------------------------------------


def test_merge_reports_of_shards(tmp_path: Path) -> None:
    first = _write(
        tmp_path / "a.json",
        report_files.document(
            [report_files.record("t.py::test_1"), report_files.record("t.py::test_3")]
        ),
    )
    other_env = dict(report_files.ENVIRONMENT, host="runner-2", taichi="1.7.3")
    second = _write(
        tmp_path / "b.json",
        report_files.document(
            [
                report_files.record(
                    "t.py::test_2",
                    "failed",
                    violation=report_files.violation("t.py::test_2", "mem_mb", 1, 2),
                )
            ],
            exit_status=1,
            environment=other_env,
        ),
    )
    out = tmp_path / "all.json"
    result = cli("merge", first, second, "-o", out)
    assert result.returncode == 0, result.stderr
    merged = json.loads(out.read_text())
    jsonschema.validate(merged, jsonreport.REPORT_SCHEMA)
    assert [r["nodeid"] for r in merged["records"]] == [
        "t.py::test_1",
        "t.py::test_2",
        "t.py::test_3",
    ]
    assert merged["exit_status"] == 1 and len(merged["violations"]) == 1
    assert "b.json was made in another environment than" in result.stderr
    assert (
        "taichi 1.7.4 -> 1.7.3" in result.stderr and "host ci-runner -> runner-2" in result.stderr
    )


def test_merge_duplicates_are_an_error_unless_newest_preferred(tmp_path: Path) -> None:
    older = report_files.record("t.py::test_1", memory_mb=1.0, started_at=1_800_000_000.0)
    newer = report_files.record("t.py::test_1", memory_mb=2.0, started_at=1_800_000_100.0)
    first = _write(tmp_path / "a.json", report_files.document([newer]))
    second = _write(tmp_path / "b.json", report_files.document([older]))
    result = cli("merge", first, second, "-o", tmp_path / "m.json")
    assert result.returncode == 2
    assert "'t.py::test_1' is in both" in result.stderr
    assert str(first) in result.stderr and str(second) in result.stderr
    assert "--prefer newest" in result.stderr
    _no_traceback(result)
    assert not (tmp_path / "m.json").exists()
    assert (
        cli("merge", first, second, "-o", tmp_path / "m.json", "--prefer", "newest").returncode == 0
    )
    kept = json.loads((tmp_path / "m.json").read_text())["records"]
    assert [r["own_memory_bytes"] for r in kept] == [2 * report_files.MB]


def test_merge_baselines(tmp_path: Path) -> None:
    first = _baseline(tmp_path / "a.json", {"t.py::test_1": {}, "t.py::test_2": {}})
    second = _baseline(
        tmp_path / "b.json",
        {"t.py::test_3": {"cpu_s": 9.0}},
        environment=dict(report_files.ENVIRONMENT, python="3.12.1"),
    )
    out = tmp_path / "merged.json"
    result = cli("merge", first, second, "-o", out)
    assert result.returncode == 0, result.stderr
    merged = baselines.load(str(out))
    assert sorted(merged.tests) == ["t.py::test_1", "t.py::test_2", "t.py::test_3"]
    cpu_range = merged.tests["t.py::test_3"].ranges["cpu_s"]
    assert cpu_range is not None  # narrows for mypy
    assert cpu_range.high == 9.0
    assert len(merged.environments) == 2
    assert "python 3.11.7 -> 3.12.1" in result.stderr or "python 3.12.1 -> 3.11.7" in result.stderr
    clash = _baseline(
        tmp_path / "c.json", {"t.py::test_2": {}}, saved_at="2027-02-01T00:00:00+00:00"
    )
    refused = cli("merge", first, clash, "-o", out)
    assert refused.returncode == 2 and "'t.py::test_2' is in both" in refused.stderr
    assert cli("merge", first, clash, "-o", out, "--prefer", "newest").returncode == 0
    assert baselines.load(str(out)).tests["t.py::test_2"].saved_at.startswith("2027-02")


def test_merge_refuses_a_mix_of_reports_and_baselines(tmp_path: Path) -> None:
    report = _write(
        tmp_path / "r.json", report_files.document([report_files.record("t.py::test_1")])
    )
    base = _baseline(tmp_path / "b.json", {"t.py::test_2": {}})
    result = cli("merge", report, base, "-o", tmp_path / "m.json")
    assert result.returncode == 2
    assert "is a report" in result.stderr and "is a baseline" in result.stderr


# -- html, show, markdown -----------------------------------------------------------------------


def test_html_show_and_markdown(tmp_path: Path) -> None:
    report = _write(tmp_path / "r.json", report_files.over_budget_document())
    page = tmp_path / "out" / "report.html"
    assert cli("html", report, "-o", page).returncode == 0
    text = page.read_text()
    assert text.startswith("<!DOCTYPE html>") and "tests/test_big.py::test_big" in text
    assert "http://" not in text and "https://" not in text  # nothing fetched
    shown = cli("show", report)
    assert shown.returncode == 0
    assert "budget violations (2):" in shown.stdout
    assert "tests/test_big.py::test_big - mem_mb exceeded: 281.5 MiB when caught" in shown.stdout
    assert "top 3 by own memory" in shown.stdout
    printed = cli("markdown", report)
    assert printed.returncode == 0 and printed.stdout.startswith("### taichi-limits:")


# -- bad files ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "command", "message"),
    [
        ("not json at all", "show", "not a JSON file"),
        ('{"schema": "something/else"}', "show", "is not a pytest-taichi-limits JSON report"),
        (
            '{"schema": "pytest-taichi-limits/report", "version": 99}',
            "html",
            "version 99; this version of pytest-taichi-limits reads version",
        ),
        (
            (
                '{"schema": "pytest-taichi-limits/baseline", "version": 2, "tests": {}, '
                '"environments": {}}'
            ),
            "show",
            "is a baseline, not a JSON report",
        ),
        (
            (
                '{"schema": "pytest-taichi-limits/report", "version": 2, "records": 5, '
                '"environment": {}}'
            ),
            "show",
            "is damaged",
        ),
        ("\xff\xfe", "show", "not a JSON file"),
    ],
)
def test_bad_files_exit_2_with_a_clear_message(
    tmp_path: Path, content: str, command: str, message: str
) -> None:
    path = tmp_path / "bad.json"
    path.write_bytes(content.encode("latin-1"))
    args: list[str | Path] = [command, path]
    if command == "html":
        args += ["-o", tmp_path / "x.html"]
    result = cli(*args)
    assert result.returncode == 2
    assert message in result.stderr, result.stderr
    assert str(path) in result.stderr
    _no_traceback(result)


def test_a_report_given_as_the_baseline_and_missing_files(tmp_path: Path) -> None:
    report = _write(
        tmp_path / "r.json", report_files.document([report_files.record("t.py::test_1")])
    )
    result = cli("compare", report, report)
    assert result.returncode == 2
    assert "is a JSON report, not a baseline" in result.stderr
    missing = cli("show", tmp_path / "nope.json")
    assert missing.returncode == 2 and "no such file" in missing.stderr
    _no_traceback(missing)
    usage = cli("frobnicate")
    assert usage.returncode == 2 and "invalid choice" in usage.stderr


@pytest.mark.parametrize("command", ["compare", "accept", "merge", "html", "markdown", "show"])
def test_help_of_every_command(command: str) -> None:
    result = cli(command, "--help")
    assert result.returncode == 0 and f"usage: taichi-limits {command}" in result.stdout
    _no_traceback(result)
    if command in OUTPUT_HELP:  # issue 21 item 7: -o says what it writes
        assert "-o " in result.stdout and OUTPUT_HELP[command] in " ".join(result.stdout.split())


#: What each command's -o/--output help says it writes.
OUTPUT_HELP = {
    "compare": "also write the report with the comparison in it here",
    "merge": "write the merged report (or baseline) here, atomically",
    "html": "write the HTML page here, atomically",
    "markdown": "write the summary here, atomically, instead of printing it",
}


def test_compare_skips_what_the_plugin_skips(tmp_path: Path) -> None:
    """An xfail or a skip is not compared by --taichi-limits-compare: nor by `compare`."""
    report = _write(
        tmp_path / "r.json",
        report_files.document(
            [
                report_files.record("t.py::test_xfail", "xfailed", memory_mb=500.0),
                report_files.record("t.py::test_skip", "skipped", memory_mb=500.0),
                report_files.record("t.py::test_xpass", "xpassed", memory_mb=500.0),
            ]
        ),
    )
    base = _baseline(
        tmp_path / "b.json",
        {name: {} for name in ("t.py::test_xfail", "t.py::test_skip", "t.py::test_xpass")},
    )
    result = cli("compare", base, report, "-o", tmp_path / "c.json")
    assert result.returncode == 1
    assert json.loads((tmp_path / "c.json").read_text())["baseline"]["regressions"] == [
        "t.py::test_xpass"
    ]


# -- one validation, bounded input, a closed pipe (issue 16 item 13) -----------------------------


@pytest.mark.parametrize("command", ["show", "html", "markdown", "compare", "merge", "accept"])
def test_every_command_checks_every_record_the_same_way(tmp_path: Path, command: str) -> None:
    bad = report_files.record("t.py::test_1")
    bad["cpu_s"] = "lots"
    report = _write(tmp_path / "r.json", report_files.document([report_files.record("t.py::x")]))
    data = json.loads(report.read_text())
    data["records"] = [bad]
    _write(report, data)
    base = _baseline(tmp_path / "base.json", {"t.py::test_1": {}})
    args: dict[str, list[str | Path]] = {
        "show": [report],
        "html": [report, "-o", tmp_path / "x.html"],
        "markdown": [report],
        "compare": [base, report],
        "merge": [report, _write(tmp_path / "b.json", report_files.document([])), "-o", "m.json"],
        "accept": [base, report, "t.py::test_1"],
    }
    result = cli(command, *args[command])
    assert result.returncode == 2, result.stderr
    assert f"{report} is damaged: record of 't.py::test_1': cpu_s must be a number" in (
        result.stderr
    )
    assert "a bug" not in result.stderr
    _no_traceback(result)


def test_a_device_and_a_deep_nest_are_refused_at_once(tmp_path: Path) -> None:
    zero = cli("show", "/dev/zero")  # once read without end (9.5 GB in 10 s)
    assert zero.returncode == 2 and "/dev/zero: not a JSON file" in zero.stderr
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    nested = cli("markdown", deep)
    assert nested.returncode == 2 and "nested too deeply" in nested.stderr, nested.stderr
    _no_traceback(nested)


def test_a_closed_pipe_ends_the_command_quietly_as_cat(tmp_path: Path) -> None:
    """`taichi-limits show r.json | head`: the reader is gone before the first write."""
    report = _write(tmp_path / "r.json", report_files.over_budget_document())
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        shown = subprocess.run(
            [sys.executable, "-m", "pytest_taichi_limits", "show", str(report)],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        os.close(write_end)
    assert shown.returncode == -signal.SIGPIPE
    assert shown.stderr == ""


def test_accept_refuses_figures_that_were_cut_short(tmp_path: Path) -> None:
    records = [
        report_files.record("t.py::test_ok", memory_mb=40.0),
        report_files.record("t.py::test_broken", "failed", reason="assert 1 == 2"),
    ]
    report = _write(tmp_path / "r.json", report_files.document(records))
    base = _baseline(tmp_path / "base.json", {"t.py::test_ok": {}, "t.py::test_broken": {}})
    before = base.read_text()
    refused = cli("accept", base, report, "t.py::test_ok", "t.py::test_broken")
    assert refused.returncode == 2
    assert "t.py::test_broken cannot be accepted: it failed on its own" in refused.stderr
    assert base.read_text() == before  # nothing written
    unknown = cli("accept", base, report, "t.py::test_nope")
    assert unknown.returncode == 2 and "has no record of 't.py::test_nope'" in unknown.stderr
    accepted = cli("accept", base, report, "t.py::test_ok")
    assert accepted.returncode == 0, accepted.stderr
    entry = json.loads(base.read_text())["tests"]["t.py::test_ok"]
    assert entry["own_memory_bytes"] == {"min": 40 * report_files.MB, "max": 40 * report_files.MB}
