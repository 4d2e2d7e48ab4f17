"""The CI recipes in docs/ci.md and examples/ci: valid YAML, and every pytest or taichi-limits
command they run uses only options that really exist."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML is in the test extra: pip install '.[test]'")

ROOT = Path(__file__).resolve().parents[2]
WORKFLOW = ROOT / "examples" / "ci" / "github-actions.yml"
CI_DOC = ROOT / "docs" / "ci.md"
_OPTION = re.compile(r"(?<![\w-])(--?[A-Za-z][\w-]*)")


def _blocks(language: str) -> list[str]:
    text = CI_DOC.read_text(encoding="utf-8")
    return re.findall(rf"^```{language}\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)


def _help(*command: str) -> set[str]:
    result = subprocess.run(
        [sys.executable, *command, "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=ROOT / "docs",
    )
    assert result.returncode == 0, result.stderr
    return set(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", result.stdout))


@cache
def pytest_options() -> frozenset[str]:
    return frozenset(_help("-m", "pytest", "-p", "no:cacheprovider"))


@cache
def cli_options(command: str) -> frozenset[str]:
    return frozenset(_help("-m", "pytest_taichi_limits", command))


def _commands(script: str) -> Iterator[str]:
    """Shell commands of a script, continuation lines joined."""
    yield from script.replace("\\\n", " ").splitlines()


def _run_scripts(workflow: Any) -> list[str]:
    scripts = []
    jobs = workflow.get("jobs", workflow)  # GitLab: the jobs are the top-level keys
    for job in jobs.values():
        if not isinstance(job, dict):
            continue
        scripts += [step["run"] for step in job.get("steps", []) if "run" in step]
        script = job.get("script")
        if script:
            scripts += script
    return scripts


def _check_command(line: str) -> list[str]:
    """Options of a pytest or taichi-limits command line that do not exist."""
    problems = []
    if re.search(r"-m pytest\b", line) and "pytest_taichi_limits" not in line:
        tail = line.split("-m pytest", 1)[1]
        problems += [option for option in _OPTION.findall(tail) if option not in pytest_options()]
    elif "taichi-limits " not in line:  # arguments gathered for pytest (args+=(...))
        problems += [
            option
            for option in re.findall(r"--taichi-limits[\w-]*", line)
            if option not in pytest_options()
        ]
    match = re.search(r"(?:taichi-limits|-m pytest_taichi_limits)\s+(\w+)(.*)", line)
    if match and "pytest --" not in line:
        command, tail = match.groups()
        if command not in ("compare", "merge", "html", "markdown", "show"):
            problems.append(f"taichi-limits {command}")
        else:
            problems += [
                f"{command} {option}"
                for option in _OPTION.findall(tail)
                if option not in cli_options(command)
            ]
    return problems


def test_workflow_is_valid_yaml_with_the_steps_the_docs_promise() -> None:
    workflow = yaml.safe_load(WORKFLOW.read_text(encoding="utf-8"))
    triggers = workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` as true
    assert {"push", "pull_request"} <= set(triggers)
    steps = workflow["jobs"]["tests"]["steps"]
    uses = [step.get("uses", "").split("@")[0] for step in steps]
    assert {
        "actions/checkout",
        "actions/setup-python",
        "actions/cache/restore",
        "actions/cache/save",
        "actions/upload-artifact",
    } <= set(uses)
    script = "\n".join(_run_scripts(workflow))
    assert "python -m venv" in script  # PEP 668
    for needed in (
        "--taichi-limits ",
        "--taichi-limits-json=",
        "--taichi-limits-html=",
        "--taichi-limits-compare=",
        "--taichi-limits-save-baseline=",
    ):
        assert needed in script
    upload = next(step for step in steps if "upload-artifact" in step.get("uses", ""))
    assert upload["if"] == "always()" and "taichi-limits.html" in upload["with"]["path"]


def test_docs_show_the_shipped_workflow() -> None:
    assert _blocks("yaml")[0].strip() == WORKFLOW.read_text(encoding="utf-8").strip()


def test_every_yaml_block_of_the_docs_parses() -> None:
    blocks = _blocks("yaml")
    assert len(blocks) >= 3  # GitHub, sharded GitHub, GitLab
    for block in blocks:
        assert isinstance(yaml.safe_load(block), dict)


def test_commands_use_only_options_that_exist() -> None:
    lines: list[str] = []
    for block in [WORKFLOW.read_text(encoding="utf-8"), *_blocks("yaml")]:
        for script in _run_scripts(yaml.safe_load(block)):
            lines += _commands(script)
    for block in _blocks("bash"):
        lines += _commands(block)
    checked = [line for line in lines if "pytest" in line or "taichi-limits" in line]
    assert sum("taichi-limits merge" in line for line in checked) >= 1
    problems = [
        f"{line.strip()}: {problem}" for line in checked for problem in _check_command(line)
    ]
    assert problems == []


def test_the_check_itself_catches_a_wrong_option() -> None:
    assert _check_command(".venv/bin/python -m pytest --taichi-limits-jsn=x.json") == [
        "--taichi-limits-jsn"
    ]
    assert _check_command("taichi-limits compare a b --markdon x") == ["compare --markdon"]
    assert _check_command("taichi-limits frobnicate x") == ["taichi-limits frobnicate"]
    assert _check_command("args+=(--taichi-limits-compar=b.json)") == ["--taichi-limits-compar"]
