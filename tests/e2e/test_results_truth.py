"""Results that tell the truth, and output errors before the run (issue 10, sections 3 and 4),
through real pytest runs."""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import memory

from pytest_taichi_limits.formats import jsonreport

jsonschema = pytest.importorskip("jsonschema")

Run = Callable[..., pytest.RunResult]

# -- durations ------------------------------------------------------------------------------------


def test_a_test_stopped_by_a_budget_shows_its_real_duration(
    pytester: pytest.Pytester, run_plugin: Run
) -> None:
    pytester.makepyfile(
        test_slow="""
        import time
        import pytest

        @pytest.mark.taichi_limits(wall_s=1)
        def test_sleeps():
            time.sleep(30)
    """
    )
    result = run_plugin(
        "--junitxml=junit.xml", "--durations=5", "--durations-min=0.5", "--taichi-limits-grace=0.2"
    )
    result.assert_outcomes(failed=1)
    # Stopped after wall_s=1 at the earliest: a lower bound that no machine load can break.
    [case] = ET.parse(pytester.path / "junit.xml").getroot().iter("testcase")
    assert float(case.get("time", "0")) >= 1.0
    result.stdout.fnmatch_lines(["*slowest 5 durations*", "*s call *test_slow.py::test_sleeps"])


# -- interrupted tests ------------------------------------------------------------------------------

STOPPING_TESTS = """
import pytest

@pytest.mark.taichi_limits
def test_a_first():
    pass

@pytest.mark.taichi_limits
def test_b_stops():
    {stop}

@pytest.mark.taichi_limits
def test_c_never_runs():
    pass
"""


@pytest.mark.parametrize(
    "stop, returncode",
    [
        ("pytest.exit('enough', returncode=0)", 0),
        ("raise KeyboardInterrupt", pytest.ExitCode.INTERRUPTED),
    ],
)
def test_a_test_that_stops_the_session_is_never_passed(
    pytester: pytest.Pytester, run_plugin: Run, stop: str, returncode: int
) -> None:
    pytester.makepyfile(test_stop=STOPPING_TESTS.format(stop=stop))
    result = run_plugin(
        "--taichi-limits-json=report.json",
        "--junitxml=junit.xml",
        "--taichi-limits-save-baseline=base.json",
    )
    assert result.ret == returncode
    document = json.loads((pytester.path / "report.json").read_text())
    jsonschema.validate(document, jsonreport.REPORT_SCHEMA)  # "interrupted" is in schema 2
    assert document["version"] == jsonreport.VERSION
    outcomes = {
        record["nodeid"].split("::")[1]: record["outcome"] for record in document["records"]
    }
    assert outcomes == {"test_a_first": "passed", "test_b_stops": "interrupted"}
    assert document["complete"] is False
    assert not (pytester.path / "base.json").exists()  # half a run is no baseline
    cases = {
        case.get("name"): case
        for case in ET.parse(pytester.path / "junit.xml").getroot().iter("testcase")
    }
    skipped = cases["test_b_stops"].find("skipped")  # not passed, not failed
    assert skipped is not None
    assert "the test stopped the session" in skipped.get("message", "")


# -- output paths resolved once --------------------------------------------------------------------


def test_outputs_do_not_follow_a_chdir(pytester: pytest.Pytester, run_plugin: Run) -> None:
    elsewhere = pytester.mkdir("elsewhere")
    pytester.makepyfile(
        test_moves=f"""
        import os
        import pytest

        os.chdir({str(elsewhere)!r})  # at import, as some test modules do

        @pytest.mark.taichi_limits
        def test_one():
            pass
    """
    )
    result = run_plugin(
        "--taichi-limits-log=usage.jsonl",
        "--taichi-limits-json=report.json",
        "--taichi-limits-save-baseline=base.json",
    )
    result.assert_outcomes(passed=1)
    for name in ("usage.jsonl", "report.json", "base.json"):
        assert (pytester.path / name).is_file(), name
        assert not (elsewhere / name).exists(), name


def test_all_outputs_create_missing_directories(pytester: pytest.Pytester, run_plugin: Run) -> None:
    pytester.makepyfile("import pytest\n@pytest.mark.taichi_limits\ndef test_one():\n    pass\n")
    result = run_plugin(
        "--taichi-limits-log=a/log/usage.jsonl",
        "--taichi-limits-json=b/json/report.json",
        "--taichi-limits-save-baseline=c/base/base.json",
    )
    result.assert_outcomes(passed=1)
    for path in ("a/log/usage.jsonl", "b/json/report.json", "c/base/base.json"):
        assert (pytester.path / path).is_file(), path


# -- usage errors before the run -------------------------------------------------------------------

ONE_TEST = "import pytest\n@pytest.mark.taichi_limits\ndef test_one():\n    pass\n"


def _usage_error(result: pytest.RunResult, *patterns: str) -> None:
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str() + result.stderr.str()
    result.stderr.fnmatch_lines(list(patterns))
    assert "test_one" not in result.stdout.str()  # nothing ran
    assert "Traceback" not in result.stdout.str() + result.stderr.str()


def _valid_baseline(pytester: pytest.Pytester, run_plugin: Run) -> dict[str, object]:
    run_plugin("--taichi-limits-save-baseline=good.json").assert_outcomes(passed=1)
    data: dict[str, object] = json.loads((pytester.path / "good.json").read_text())
    return data


@pytest.mark.parametrize(
    "args, pattern",
    [
        (
            ["--taichi-limits-json=/proc/x.json"],
            "ERROR: --taichi-limits-json: cannot write '/proc/x.json': cannot create a file in '/proc'*",
        ),
        (
            ["--taichi-limits-save-baseline=/proc/base.json"],
            "ERROR: --taichi-limits-save-baseline: cannot write '/proc/base.json'*",
        ),
        (
            ["--taichi-limits-json=out.json", "--taichi-limits-log=out.json"],
            "ERROR: --taichi-limits-json and --taichi-limits-log name the same file 'out.json'*",
        ),
        (
            ["--taichi-limits-json=out.xml", "--junitxml=out.xml"],
            "ERROR: --taichi-limits-json and --junitxml name the same file*",
        ),
        (
            ["--taichi-limits-tolerance=mem=10%+16MB,mem=5%"],
            "ERROR: --taichi-limits-tolerance: mem is given twice in *",
        ),
        (
            ["--taichi-limits-tolerance=mem=10%,"],
            "ERROR: --taichi-limits-tolerance: 'mem=10%,' has an empty item*",
        ),
        (
            ["--taichi-limits-baseline-replace"],
            "ERROR: --taichi-limits-baseline-replace only works with --taichi-limits-save-baseline=PATH",
        ),
        (
            ["--taichi-limits-compare-warn"],
            "ERROR: --taichi-limits-compare-warn only works with --taichi-limits-compare=PATH",
        ),
    ],
)
def test_bad_outputs_and_options_are_usage_errors(
    pytester: pytest.Pytester, run_plugin: Run, args: list[str], pattern: str
) -> None:
    pytester.makepyfile(test_one=ONE_TEST)
    _usage_error(run_plugin(*args), pattern)


def test_ini_tolerance_error_names_the_ini_key(pytester: pytest.Pytester, run_plugin: Run) -> None:
    pytester.makepyfile(test_one=ONE_TEST)
    pytester.makeini("[pytest]\ntaichi_limits_tolerance = mem=5 parsecs\n")
    _usage_error(run_plugin(), "ERROR: ini option taichi_limits_tolerance: mem: unit 'parsecs'*")


def test_corrupt_or_conflicted_baseline_for_save_is_refused_up_front(
    pytester: pytest.Pytester, run_plugin: Run
) -> None:
    pytester.makepyfile(test_one=ONE_TEST)
    text = json.dumps(_valid_baseline(pytester, run_plugin), indent=2)
    lines = text.splitlines()
    conflicted = "\n".join(["<<<<<<< HEAD", *lines, "=======", *lines, ">>>>>>> branch"])
    (pytester.path / "base.json").write_text(conflicted)
    _usage_error(
        run_plugin("--taichi-limits-save-baseline=base.json"),
        "ERROR: --taichi-limits-save-baseline: baseline '*base.json' cannot be read: *",
    )
    assert (pytester.path / "base.json").read_text() == conflicted  # left as it was
    # Replacing it is what the message offers: then the file is not read.
    result = run_plugin(
        "--taichi-limits-save-baseline=base.json", "--taichi-limits-baseline-replace"
    )
    result.assert_outcomes(passed=1)


@pytest.mark.parametrize(
    "value, problem",
    [
        ("lots", 'must be {"min": number, "max": number}*got \'lots\''),
        (None, 'must be {"min": number, "max": number}*got None'),
        ("DROP", "is missing"),
    ],
)
def test_baseline_figures_are_validated_on_load(
    pytester: pytest.Pytester, run_plugin: Run, value: object, problem: str
) -> None:
    pytester.makepyfile(test_one=ONE_TEST)
    data = _valid_baseline(pytester, run_plugin)
    entry = data["tests"]["test_one.py::test_one"]  # type: ignore[index]
    if value == "DROP":
        del entry["own_memory_bytes"]
    else:
        entry["own_memory_bytes"] = value
    (pytester.path / "base.json").write_text(json.dumps(data))
    _usage_error(
        run_plugin("--taichi-limits-compare=base.json"),
        "ERROR: --taichi-limits-compare: baseline 'base.json', test "
        f"'test_one.py::test_one': field 'own_memory_bytes' {problem}*",
    )


def test_a_version_1_baseline_is_refused_with_what_to_do(
    pytester: pytest.Pytester, run_plugin: Run
) -> None:
    pytester.makepyfile(test_one=ONE_TEST)
    data = _valid_baseline(pytester, run_plugin)
    data["version"] = 1
    (pytester.path / "base.json").write_text(json.dumps(data))
    _usage_error(
        run_plugin("--taichi-limits-compare=base.json"),
        "ERROR: --taichi-limits-compare: baseline 'base.json' has version 1; this plugin "
        "reads version 2 (own memory is measured differently since version 2*"
        "--taichi-limits-baseline-replace",
    )


def test_a_log_fifo_without_a_reader_is_an_error_not_a_hang(
    pytester: pytest.Pytester, run_plugin: Run
) -> None:
    pytester.makepyfile(test_one=ONE_TEST)
    os.mkfifo(pytester.path / "log.fifo")
    # Before the fix the open blocked until run_plugin's hard timeout.
    _usage_error(
        run_plugin("--taichi-limits-log=log.fifo", timeout=60),
        "ERROR: --taichi-limits-log: cannot append to 'log.fifo' (*): it is a FIFO that "
        "no process is reading*",
    )


# -- the short summary line ------------------------------------------------------------------------


def test_short_summary_keeps_the_message_for_a_long_test_id(
    pytester: pytest.Pytester, run_plugin: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("CI", "BUILD_NUMBER"):  # on CI pytest prints whole messages anyway
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("COLUMNS", "80")
    name = "test_a_rather_long_name_for_a_test"  # node id of 52 characters
    pytester.makepyfile(
        test_width=f"""
        import time
        import pytest

        @pytest.mark.taichi_limits(wall_s=0.3)
        def {name}():
            time.sleep(30)
    """
    )
    result = run_plugin("--taichi-limits-grace=0.2")
    result.assert_outcomes(failed=1)
    [line] = [line for line in result.outlines if line.startswith("FAILED ")]
    assert line.startswith(f"FAILED test_width.py::{name} - wall_s exceeded"), line
    assert len(line) <= 80
    # The whole headline, however long the id, in the plugin's own summary.
    result.stdout.fnmatch_lines(
        [
            (
                f"  FAILED test_width.py::{name} - wall_s exceeded: * s when "
                "caught, limit wall_s=0.3 (over by *)"
            )
        ]
    )


def test_usage_log_lines_come_from_the_hooks(pytester: pytest.Pytester, run_plugin: Run) -> None:
    pytester.makepyfile(
        test_over="""
        import pytest

        @pytest.mark.taichi_limits(mem_mb=20)
        def test_over():
            block = bytearray(100 * 1024 * 1024)
            for i in range(0, len(block), 4096):
                block[i] = 1
    """
    )
    result = run_plugin("--taichi-limits-log=usage.jsonl")
    result.assert_outcomes(failed=1)
    events = [
        json.loads(line) for line in Path(pytester.path / "usage.jsonl").read_text().splitlines()
    ]
    assert [event["event"] for event in events] == ["usage", "violation"]
    usage, violation = events
    assert usage["memory_method"] == memory.expected_method()
    assert usage["own_memory_bytes"] == usage["peak_own_memory_bytes"] > 20 * 1024 * 1024
    assert "extra" not in usage and usage["arch"] == "not initialised"
    assert violation["resource"] == "mem_mb" and violation["unit"] == "MiB"
