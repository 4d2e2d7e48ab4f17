"""The Markdown summary, HTML report and timelines from a real pytest run of the plugin."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from helpers.plugin_types import RunPlugin

from pytest_taichi_limits.formats import jsonreport

jsonschema = pytest.importorskip("jsonschema")

TESTS = """
import time
import pytest

@pytest.mark.taichi_limits(mem_mb=1024, wall_s=60)
def test_fine():
    block = bytearray(32 * 1024 * 1024)
    for i in range(0, len(block), 4096):
        block[i] = 1
    time.sleep(0.3)

@pytest.mark.taichi_limits(mem_mb=64, wall_s=60)
def test_too_big():
    block = bytearray(256 * 1024 * 1024)
    for i in range(0, len(block), 4096):
        block[i] = 1
    time.sleep(60)

def test_param_with_pipe():
    pass
"""


@pytest.fixture
def suite(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makepyfile(test_suite=TESTS)
    return pytester


def test_json_html_markdown_and_timelines(
    suite: pytest.Pytester, run_plugin: Any, tmp_path: Path
) -> None:
    report, page, summary, log = (
        tmp_path / name for name in ("r.json", "r.html", "s.md", "log.jsonl")
    )
    base = tmp_path / "base.json"
    result = run_plugin(
        "--taichi-limits",
        f"--taichi-limits-json={report}",
        f"--taichi-limits-html={page}",
        f"--taichi-limits-markdown={summary}",
        f"--taichi-limits-log={log}",
        f"--taichi-limits-save-baseline={base}",
    )
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(
        [f"Markdown summary written to {summary}", f"HTML report written to {page}"]
    )
    document = json.loads(report.read_text())
    jsonschema.validate(document, jsonreport.REPORT_SCHEMA)
    records = {record["nodeid"]: record for record in document["records"]}
    fine = records["test_suite.py::test_fine"]["timeline"]
    assert 1 <= len(fine["t_s"]) <= 200 and fine["violation_at_s"] is None
    assert max(fine["mem_bytes"]) >= 32 * 1024 * 1024  # the 32 MB block was seen
    too_big = records["test_suite.py::test_too_big"]
    assert too_big["timeline"]["violation_at_s"] is not None
    assert max(too_big["timeline"]["mem_bytes"]) > 64 * 1024 * 1024
    # never in the JSON-lines log, and not in the baseline unless asked
    assert all("timeline" not in json.loads(line) for line in log.read_text().splitlines())
    assert all("timeline" not in entry for entry in json.loads(base.read_text())["tests"].values())
    text = summary.read_text()
    assert text.startswith("### taichi-limits: ❌ FAILED — 1 budget violation, 3 supervised")
    assert "| test\\_suite.py::test\\_too\\_big | mem\\_mb | 64 MiB |" in text
    html = page.read_text()
    assert "test_suite.py::test_too_big" in html and "<svg" in html


def test_timeline_in_baseline_only_when_asked(
    suite: pytest.Pytester, run_plugin: Any, tmp_path: Path
) -> None:
    base = tmp_path / "base.json"
    run_plugin(
        "--taichi-limits",
        "-k",
        "fine",
        f"--taichi-limits-save-baseline={base}",
        "--taichi-limits-timeline-in-baseline",
    ).assert_outcomes(passed=1)
    entry = json.loads(base.read_text())["tests"]["test_suite.py::test_fine"]
    assert entry["timeline"]["t_s"] and entry["timeline"]["mem_bytes"]


def test_github_step_summary_is_appended_to_unless_off(
    suite: pytest.Pytester, run_plugin: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    step_summary = tmp_path / "step_summary.md"
    step_summary.write_text("earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(step_summary))
    run_plugin("--taichi-limits", "-k", "fine or pipe").assert_outcomes(passed=2)
    text = step_summary.read_text()
    assert text.startswith("earlier step\n### taichi-limits: ✅ PASSED")
    run_plugin("--taichi-limits", "-k", "fine or pipe", "--taichi-limits-markdown=off")
    assert step_summary.read_text() == text
    # a plain pytest run (nothing supervised) adds nothing either
    run_plugin("-k", "pipe").assert_outcomes(passed=1)
    assert step_summary.read_text() == text


def test_unwritable_paths_are_usage_errors(
    suite: pytest.Pytester, run_plugin: Any, tmp_path: Path
) -> None:
    result = run_plugin("--taichi-limits", f"--taichi-limits-html={tmp_path}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--taichi-limits-html: cannot write*not a regular file*"])


def test_ini_paths_and_xdist_carry_timelines(suite: pytest.Pytester, run_plugin: Any) -> None:
    pytest.importorskip("xdist")
    suite.makeini("""
        [pytest]
        taichi_limits_markdown = out/summary.md
        taichi_limits_html = out/report.html
        taichi_limits_json = out/report.json
    """)
    run_plugin("--taichi-limits", "-n", "2", "-k", "fine or pipe").assert_outcomes(passed=2)
    out = suite.path / "out"
    records = json.loads((out / "report.json").read_text())["records"]
    assert all(record["timeline"] is not None for record in records)
    assert "✅ PASSED" in (out / "summary.md").read_text()
    assert "test_suite.py::test_fine" in (out / "report.html").read_text()


def test_the_html_header_names_the_commit_branch_and_command(
    pytester: pytest.Pytester, run_plugin: RunPlugin, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 21 item 4: outside CI the commit and branch come from `git`, where present."""
    for name in ("GITHUB_SHA", "GITHUB_HEAD_REF", "GITHUB_REF_NAME", "CI_COMMIT_SHA"):
        monkeypatch.delenv(name, raising=False)
    pytester.makepyfile(
        test_one="import pytest\n\n@pytest.mark.taichi_limits\ndef test_a():\n    pass\n"
    )
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=topic"]
    for command in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "one"]):
        subprocess.run([*git, *command], cwd=pytester.path, check=True)
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=pytester.path, capture_output=True, text=True, check=True
    ).stdout.strip()
    run_plugin("--taichi-limits-html=r.html", "--taichi-limits-json=r.json").assert_outcomes(
        passed=1
    )
    page = (pytester.path / "r.html").read_text()
    assert f"<dt>Commit</dt><dd><code>{commit}</code></dd>" in page
    assert "<dt>Branch</dt><dd><code>topic</code></dd>" in page
    assert "--taichi-limits-html=r.html --taichi-limits-json=r.json" in page
    source = json.loads((pytester.path / "r.json").read_text())["source"]
    assert source["commit"] == commit and source["branch"] == "topic"
