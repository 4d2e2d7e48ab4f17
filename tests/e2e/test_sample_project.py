"""The CI recipes run as written on examples/sample_project: their shell steps (the test step and
the job summary of the GitHub workflow, the test script of the GitLab job) run here with the CI
variables a default-branch push and a pull request set, against a copy of the sample project, with
real Taichi tests supervised. What only GitHub or GitLab can do (the cache, the artifact upload,
the comment) is left out; the schema tests in tests/unit/test_ci_docs.py cover their syntax."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML is in the test extra: pip install '.[test]'")

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "examples" / "sample_project"
SAMPLE_TESTS = 4
#: Hard outer limit for one recipe step (a supervised run of the sample's four tests).
STEP_TIMEOUT_S = 300
#: For the runs that compare: what is under test is that the recipe compares, not whether a
#: Taichi test's memory moved between two runs on a loaded machine (it can, by 100s of MiB).
NEVER_GROWS = {"PYTEST_ADDOPTS": "--taichi-limits-tolerance=mem=off,cpu=off"}


@pytest.fixture
def project(tmp_path: Path) -> Path:
    copy = tmp_path / "heat1d"
    shutil.copytree(SAMPLE, copy, ignore=shutil.ignore_patterns("__pycache__", ".pytest_cache"))
    return copy


def _github_step(name: str) -> str:
    workflow = yaml.safe_load((SAMPLE / ".github" / "workflows" / "taichi-limits.yml").read_text())
    step = next(step for step in workflow["jobs"]["tests"]["steps"] if step.get("name") == name)
    script: str = step["run"]
    return script


def _run(shell: str, script: str, cwd: Path, **variables: str) -> subprocess.CompletedProcess[str]:
    """`script` as CI runs it, with this interpreter where the recipe made a virtual environment."""
    env = {**os.environ, "TI_SKIP_VERSION_CHECK": "ON", **variables}
    env.pop("PYTEST_XDIST_WORKER", None)
    env.pop("PYTEST_ADDOPTS", None)
    return subprocess.run(
        [shell, "-e", "-c", script.replace(".venv/bin/python", sys.executable)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=STEP_TIMEOUT_S,
        check=False,
    )


def _records(project: Path) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = json.loads((project / "taichi-limits.json").read_text())[
        "records"
    ]
    return records


def test_github_recipe_saves_on_the_default_branch_and_compares_a_pull_request(
    project: Path,
) -> None:
    tests, summary = _github_step("Tests under taichi-limits"), _github_step("Job summary")
    job_summary = project / "step-summary.md"
    push = {"GITHUB_EVENT_NAME": "push", "ON_DEFAULT_BRANCH": "true"}
    pull = {"GITHUB_EVENT_NAME": "pull_request", "ON_DEFAULT_BRANCH": "false"}
    github = {"GITHUB_STEP_SUMMARY": str(job_summary), "HTML_URL": "https://example.org/html"}

    # A pull request before the default branch ever ran: no baseline, and the summary says so.
    ran = _run("bash", tests, project, **pull)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert (
        "--taichi-limits-compare" not in ran.stdout and "comparing with baseline" not in ran.stdout
    )
    assert len(_records(project)) == SAMPLE_TESTS
    assert _run("bash", summary, project, **pull, **github).returncode == 0
    first = job_summary.read_text()
    assert "**No baseline found**" in first and "A push to the default branch saves one" in first
    assert "### taichi-limits: " in first
    assert "[The HTML report](https://example.org/html)" in first
    assert (project / "taichi-limits-comment.md").read_text() == first

    # The default branch saves the baseline of every test that passed.
    ran = _run("bash", tests, project, **push)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    saved = json.loads((project / "taichi-limits-baseline.json").read_text())
    assert len(saved["tests"]) == SAMPLE_TESTS

    # The next pull request compares with it, and the summary has no "no baseline" note.
    ran = _run("bash", tests, project, **pull, **NEVER_GROWS)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "taichi-limits: comparing with baseline taichi-limits-baseline.json" in ran.stdout
    assert "no test grew beyond tolerance" in ran.stdout
    job_summary.write_text("")
    assert _run("bash", summary, project, **pull, **github).returncode == 0
    second = job_summary.read_text()
    assert "No baseline found" not in second and "### taichi-limits: " in second
    for written in ("taichi-limits.html", "taichi-limits.md", "junit.xml"):
        assert (project / written).stat().st_size > 0


def test_github_job_summary_says_when_pytest_wrote_nothing(project: Path) -> None:
    job_summary = project / "step-summary.md"
    ran = _run(
        "bash",
        _github_step("Job summary"),
        project,
        GITHUB_EVENT_NAME="push",
        GITHUB_STEP_SUMMARY=str(job_summary),
        HTML_URL="",
    )
    assert ran.returncode == 0, ran.stderr
    text = job_summary.read_text()
    assert "**taichi-limits wrote no summary**" in text and "HTML report" not in text


def test_gitlab_recipe_saves_on_the_default_branch_and_compares_a_merge_request(
    project: Path,
) -> None:
    job = yaml.safe_load((SAMPLE / ".gitlab-ci.yml").read_text())["taichi-tests"]
    script = job["script"][-1]  # the first two make the virtual environment
    merge_request = {"CI_DEFAULT_BRANCH": "trunk", "CI_MERGE_REQUEST_IID": "7"}

    ran = _run("sh", script, project, **merge_request)  # POSIX sh: no bash needed in the image
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "taichi-limits: no baseline in the cache: nothing is compared" in ran.stdout

    ran = _run("sh", script, project, CI_DEFAULT_BRANCH="trunk", CI_COMMIT_BRANCH="trunk")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert (project / "taichi-limits-baseline.json").exists()

    ran = _run("sh", script, project, **merge_request, **NEVER_GROWS)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "taichi-limits: comparing with baseline taichi-limits-baseline.json" in ran.stdout
    assert "no test grew beyond tolerance" in ran.stdout
    assert len(_records(project)) == SAMPLE_TESTS
    for written in job["artifacts"]["paths"]:
        assert (project / written).stat().st_size > 0
