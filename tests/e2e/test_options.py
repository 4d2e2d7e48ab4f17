"""Options checked before the run, through real pytest runs: budgets from the budget hook, every
output path together, GitHub's job summary, the admission ledger's files, and the plugin's
printed name on `-p no:`."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from helpers.plugin_types import RunPlugin

ROOT = Path(__file__).resolve().parents[2]
ONE_TEST = "import pytest\n\n@pytest.mark.taichi_limits\ndef test_one():\n    pass\n"


def _usage_error(result: pytest.RunResult, *patterns: str) -> None:
    text = result.stdout.str() + result.stderr.str()
    assert result.ret == pytest.ExitCode.USAGE_ERROR, text
    result.stderr.fnmatch_lines(list(patterns))
    assert "test_one" not in result.stdout.str()  # nothing ran
    assert "Traceback" not in text and "INTERNALERROR" not in text


# -- budgets from the pytest_taichi_limits_budget hook -----------------------------------------

HOOK_CONFTEST = """
import math

import numpy as np

BAD = {"test_abc": "abc", "test_nan": math.nan, "test_inf": math.inf, "test_negative": -1}


def pytest_taichi_limits_budget(item, budget):
    if item.name in BAD:
        return budget.replace(mem_mb=BAD[item.name])
    if item.name == "test_not_a_budget":
        return {"mem_mb": 512}
    if item.name == "test_numpy_int":
        return budget.replace(mem_mb=np.int64(512))
    return None
"""

HOOK_TESTS = "\n".join(
    f"@pytest.mark.taichi_limits\ndef {name}():\n    pass\n"
    for name in (
        "test_abc",
        "test_nan",
        "test_inf",
        "test_negative",
        "test_not_a_budget",
        "test_numpy_int",
    )
)


def test_hook_budgets_are_checked_like_marker_values(
    pytester: pytest.Pytester, run_plugin: RunPlugin
) -> None:
    pytest.importorskip("numpy")
    pytester.makeconftest(HOOK_CONFTEST)
    pytester.makepyfile(test_hook="import pytest\n\n" + HOOK_TESTS)
    result = run_plugin("--taichi-limits-json=r.json")
    result.assert_outcomes(passed=1, failed=5)
    text = result.stdout.str()
    assert "INTERNALERROR" not in text and "could not watch" not in text
    conftest = str(pytester.path / "conftest.py")
    allowed = "a positive number of MiB of own memory up to 1048576 (e.g. mem_mb=1024)"
    for name, got in [
        ("test_abc", "'abc'"),
        ("test_nan", "nan"),
        ("test_inf", "inf"),
        ("test_negative", "-1"),
    ]:
        line = (
            f"test_hook.py::{name}: pytest_taichi_limits_budget of {conftest} returned a bad "
            f"budget: mem_mb must be {allowed} or None for no limit, got {got}"
        )
        assert line in text, name
    assert (
        "expected a pytest_taichi_limits.Budget (e.g. budget.replace(wall_s=60)) or None, " in text
    )
    records = {
        r["nodeid"]: r for r in json.loads((pytester.path / "r.json").read_text())["records"]
    }
    assert records["test_hook.py::test_numpy_int"]["budget"]["mem_mb"] == 512.0


# -- every output path, together, before the run ---------------------------------------------


@pytest.mark.parametrize(
    "args, pattern",
    [
        (
            ["--taichi-limits-markdown=z", "--junitxml=z"],
            "ERROR: --taichi-limits-markdown and --junitxml name the same file 'z'*",
        ),
        (
            ["--taichi-limits-html=y", "--taichi-limits-json=y"],
            "ERROR: --taichi-limits-json and --taichi-limits-html name the same file 'y'*",
        ),
        (
            ["--taichi-limits-log=same", "--taichi-limits-markdown=./same"],
            "ERROR: --taichi-limits-log and --taichi-limits-markdown name the same file*",
        ),
    ],
)
def test_two_outputs_that_name_one_file_are_refused(
    pytester: pytest.Pytester, run_plugin: RunPlugin, args: list[str], pattern: str
) -> None:
    pytester.makepyfile(test_one=ONE_TEST)
    _usage_error(run_plugin(*args), pattern)
    written = {"z", "y", "same"} & set(os.listdir(pytester.path))
    assert not written  # nothing written, not even the first of the two


def test_job_summary_pointing_at_the_json_report_is_refused(
    pytester: pytest.Pytester, run_plugin: RunPlugin, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(test_one=ONE_TEST)
    report = pytester.path / "report.json"
    report.write_text("{}")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(report))
    _usage_error(
        run_plugin(f"--taichi-limits-json={report}"),
        "ERROR: --taichi-limits-json and $GITHUB_STEP_SUMMARY name the same file*",
    )
    assert report.read_text() == "{}"
    # An explicit Markdown path replaces the job summary: no clash then.
    result = run_plugin(f"--taichi-limits-json={report}", "--taichi-limits-markdown=s.md")
    result.assert_outcomes(passed=1)
    assert json.loads(report.read_text())["records"]


@pytest.mark.parametrize(
    "where, reason",
    [
        ("missing", "its directory * does not exist"),
        ("directory", "it is not a regular file"),
        ("proc", "it is on a pseudo file system (/proc, /sys)"),
    ],
)
@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["one process", "xdist"])
def test_unusable_job_summary_warns_once_and_the_run_goes_on(
    pytester: pytest.Pytester,
    run_plugin: RunPlugin,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    where: str,
    reason: str,
    workers: list[str],
) -> None:
    if workers:
        pytest.importorskip("xdist")
    path = {
        "missing": tmp_path / "gone" / "summary.md",
        "directory": tmp_path,
        "proc": Path("/proc/version"),
    }[where]
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(path))
    pytester.makepyfile(test_one=ONE_TEST)
    result = run_plugin("--taichi-limits", *workers)
    assert result.ret == pytest.ExitCode.OK, result.stdout.str() + result.stderr.str()
    result.assert_outcomes(passed=1)
    warning = (
        f"*PytestConfigWarning: taichi-limits: the Markdown summary is not appended to the job "
        f"summary $GITHUB_STEP_SUMMARY='{path}': {reason}; the run goes on without it"
    )
    result.stdout.fnmatch_lines([warning])
    assert sum("not appended to the job summary" in line for line in result.stdout.lines) == 1
    assert not (tmp_path / "gone").exists()
    assert "Markdown summary" not in result.stdout.str().replace("the Markdown summary is", "")


# -- the admission ledger ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["ledger", "ledger.lock"])
def test_a_ledger_file_that_is_a_directory_is_a_usage_error(
    pytester: pytest.Pytester,
    run_plugin: RunPlugin,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    name: str,
) -> None:
    ledger = tmp_path / "ledger-dir"
    ledger.mkdir(mode=0o700)
    (ledger / name).mkdir()
    monkeypatch.setenv("PYTEST_TAICHI_LIMITS_LEDGER", str(ledger))
    pytester.makepyfile(test_one=ONE_TEST)
    _usage_error(
        run_plugin("--taichi-limits-admit"),
        f"ERROR: --taichi-limits-admit: the admission ledger file '{ledger / name}' is not a "
        "regular file; remove it or set PYTEST_TAICHI_LIMITS_LEDGER to another directory",
    )


# -- the plugin's name ---------------------------------------------------------------------------


def test_the_name_pytest_prints_switches_the_plugin_off(
    pytester: pytest.Pytester, run_plugin: RunPlugin
) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.taichi_limits(wall_s=30)
        def test_marked():
            pass

        def test_fixture(taichi_limits_ti):
            pass
        """
    )
    shown = run_plugin("-k", "marked")
    shown.stdout.fnmatch_lines(["taichi-limits: supervising *"])
    shown.stdout.fnmatch_lines(["plugins: *taichi-limits-*"])  # the name -p no: takes
    result = run_plugin("-p", "no:taichi-limits")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.no_fnmatch_line("taichi-limits: *")  # no header: nothing supervised
    result.stdout.fnmatch_lines(
        ["*the taichi_limits_ti fixture needs the taichi-limits plugin, which is switched off*"]
    )
    strict = run_plugin("-p", "no:taichi-limits", "--strict-markers", "-k", "marked")
    strict.stdout.fnmatch_lines(["*'taichi_limits' not found in `markers`*"])
    unknown = run_plugin("-p", "no:taichi-limits", "--taichi-limits")
    assert unknown.ret == pytest.ExitCode.USAGE_ERROR
    unknown.stderr.fnmatch_lines(["*unrecognized arguments: --taichi-limits*"])


# -- the docs say what --help says ---------------------------------------------------------------


def _help_entries(help_text: str) -> dict[str, str]:
    """The taichi-limits group of `pytest --help`: flag -> its help without whitespace (argparse
    wraps lines at the terminal's width, inside hyphenated words too)."""
    group = help_text.split("resource budgets for Taichi tests", 1)[1].split("\n\n", 1)[0]
    entries: dict[str, str] = {}
    for chunk in re.split(r"\n  (?=--)", group)[1:]:
        usage, _, text = chunk.partition(" ")
        flag = re.split(r"[=\[ ]", usage.strip(), maxsplit=1)[0]
        entries[flag] = "".join(text.split())
    return entries


def _docs_rows(page: str) -> dict[str, tuple[str, str]]:
    """Every generated options table row of a docs page: flag -> (ini key, meaning)."""
    rows: dict[str, tuple[str, str]] = {}
    for region in re.findall(
        r"<!-- generated: options.*?-->\n(.*?)<!-- end generated -->", page, re.S
    ):
        for flag, ini, meaning in re.findall(
            r"^\| `(--taichi-limits[\w-]*)[^`]*` \| `?(\w*)`? \| (.*) \|$", region, re.M
        ):
            rows[flag] = (ini, meaning.replace("\\|", "|").replace("\\*", "*"))
    return rows


def test_the_docs_options_tables_say_what_help_says(run_plugin: RunPlugin) -> None:
    """The real `pytest --help` of an installed plugin, against docs/reference.md and
    docs/admission.md: the same flags, the same ini keys, the same words."""
    result = run_plugin("--help")
    assert result.ret == pytest.ExitCode.OK
    help_text = result.stdout.str()
    entries = _help_entries(help_text)
    ini_keys = set(re.findall(r"^  (taichi_limits\w*) \(", help_text, re.M))
    reference = _docs_rows((ROOT / "docs" / "reference.md").read_text(encoding="utf-8"))
    assert set(reference) == set(entries)
    assert {ini for ini, _ in reference.values() if ini} == ini_keys
    for flag, (ini, meaning) in reference.items():
        said = meaning + (f" (ini: {ini})" if ini else "")
        assert entries[flag] == "".join(said.split()), flag
    admission = _docs_rows((ROOT / "docs" / "admission.md").read_text(encoding="utf-8"))
    assert set(admission) == {"--taichi-limits-admit", "--taichi-limits-capacity"}
    assert all(row == reference[flag] for flag, row in admission.items())
