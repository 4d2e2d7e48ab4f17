"""The CI recipes in docs/ci.md and examples/ci: valid against GitHub's and GitLab's own schemas
(check-jsonschema, offline), the steps the docs promise, and every pytest or taichi-limits command
they run uses only options that really exist."""

from __future__ import annotations

import re
import shutil
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
GITLAB = ROOT / "examples" / "ci" / "gitlab-ci.yml"
RELEASE = ROOT / ".github" / "workflows" / "release.yml"
SAMPLE_WORKFLOW = (
    ROOT / "examples" / "sample_project" / ".github" / "workflows" / "taichi-limits.yml"
)
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


def _steps(workflow: Any) -> list[dict[str, Any]]:
    steps: list[dict[str, Any]] = workflow["jobs"]["tests"]["steps"]
    return steps


def _step(workflow: Any, uses: str) -> dict[str, Any]:
    return next(step for step in _steps(workflow) if step.get("uses", "").startswith(uses))


def test_workflow_is_valid_yaml_with_the_steps_the_docs_promise() -> None:
    text = WORKFLOW.read_text(encoding="utf-8")
    workflow = yaml.safe_load(text)
    triggers = workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` as true
    assert {"push", "pull_request", "workflow_dispatch"} <= set(triggers)
    uses = {step.get("uses", "").split("@")[0] for step in _steps(workflow)}
    assert {
        "actions/checkout",
        "actions/setup-python",
        "actions/cache/restore",
        "actions/cache/save",
        "actions/upload-artifact",
        "actions/github-script",
    } <= uses
    script = "\n".join(_run_scripts(workflow))
    assert "python -m venv" in script  # PEP 668
    for needed in (
        "--taichi-limits ",
        "--taichi-limits-json=",
        "--taichi-limits-html=",
        "--taichi-limits-markdown=",
        "--taichi-limits-compare=",
        "--taichi-limits-save-baseline=",
    ):
        assert needed in script
    # Not on PyPI yet: the plugin comes from a wheel file, never by its name from the index.
    assert re.search(r"pip install \"\$TAICHI_LIMITS\" -e \.", script)
    assert workflow["env"]["TAICHI_LIMITS"].startswith("ci/wheels/pytest_taichi_limits-")


def test_workflow_uses_the_default_branch_whatever_its_name() -> None:
    text = WORKFLOW.read_text(encoding="utf-8")
    assert not re.search(r"\bmain\b|\bmaster\b|refs/heads/", text)
    workflow = yaml.safe_load(text)
    default = "github.ref_name == github.event.repository.default_branch"
    assert default in workflow["jobs"]["tests"]["if"]
    assert workflow["jobs"]["tests"]["env"]["ON_DEFAULT_BRANCH"] == "${{ " + default + " }}"
    save = _step(workflow, "actions/cache/save")
    assert "env.ON_DEFAULT_BRANCH == 'true'" in save["if"]
    assert '[ "$ON_DEFAULT_BRANCH" = true ]' in "\n".join(_run_scripts(workflow))


def test_workflow_caches_pip_and_never_hides_a_missing_report() -> None:
    workflow = yaml.safe_load(WORKFLOW.read_text(encoding="utf-8"))
    python = _step(workflow, "actions/setup-python")
    assert python["with"]["cache"] == "pip" and python["with"]["cache-dependency-path"]
    uploads = [step for step in _steps(workflow) if "upload-artifact" in step.get("uses", "")]
    assert len(uploads) == 2
    for upload in uploads:
        assert upload["if"] == "${{ !cancelled() }}"  # also when tests failed
        assert upload["with"]["if-no-files-found"] == "error"
    html = next(step for step in uploads if step["with"]["path"] == "taichi-limits.html")
    assert html["with"]["archive"] is False and html["id"] == "html"


def test_job_summary_says_when_no_baseline_was_found_and_links_the_html() -> None:
    workflow = yaml.safe_load(WORKFLOW.read_text(encoding="utf-8"))
    summary = next(step for step in _steps(workflow) if step.get("name") == "Job summary")
    assert summary["if"] == "${{ !cancelled() }}"
    assert summary["env"]["HTML_URL"] == "${{ steps.html.outputs.artifact-url }}"
    script = summary["run"]
    assert "[ ! -f taichi-limits-baseline.json ]" in script and "No baseline found" in script
    assert "A push to the default branch saves one" in script
    assert "[The HTML report]($HTML_URL)" in script
    assert 'cat taichi-limits-comment.md >> "$GITHUB_STEP_SUMMARY"' in script


def test_one_sticky_comment_with_the_permission_it_needs() -> None:
    workflow = yaml.safe_load(WORKFLOW.read_text(encoding="utf-8"))
    assert workflow["permissions"] == {"contents": "read", "pull-requests": "write"}
    comment = _step(workflow, "actions/github-script")
    assert "github.event_name == 'pull_request'" in comment["if"]
    # A fork's pull request gets a read-only token: no comment there.
    assert "github.event.pull_request.head.repo.full_name == github.repository" in comment["if"]
    script = comment["with"]["script"]
    assert 'readFileSync("taichi-limits-comment.md"' in script
    assert 'const marker = "<!-- taichi-limits -->"' in script
    assert "c.body.startsWith(marker)" in script and 'c.user.type === "Bot"' in script
    assert "updateComment" in script and "createComment" in script
    assert "github.paginate" in script  # the comment is found among more than 30


def test_gitlab_recipe_compares_in_merge_request_pipelines() -> None:
    gitlab = yaml.safe_load(GITLAB.read_text(encoding="utf-8"))
    rules = gitlab["workflow"]["rules"]
    assert rules[0] == {"if": '$CI_PIPELINE_SOURCE == "merge_request_event"'}
    assert {"if": "$CI_COMMIT_BRANCH && $CI_OPEN_MERGE_REQUESTS", "when": "never"} in rules
    job = gitlab["taichi-tests"]
    policies = [rule["variables"]["BASELINE_POLICY"] for rule in job["rules"]]
    assert policies == ["pull-push", "pull"]
    assert job["rules"][0]["if"] == "$CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH"
    baseline = next(cache for cache in job["cache"] if "baseline" in cache["key"])
    assert baseline["policy"] == "$BASELINE_POLICY" and baseline["unprotect"] is True
    script = "\n".join(job["script"])
    assert "--taichi-limits-compare=taichi-limits-baseline.json" in script
    assert "no baseline in the cache" in script
    assert 'pip install "$TAICHI_LIMITS" -e .' in script
    assert job["artifacts"]["when"] == "always"
    assert "taichi-limits.html" in job["artifacts"]["paths"]


def test_docs_show_the_shipped_workflow() -> None:
    blocks = _blocks("yaml")
    assert blocks[0].strip() == WORKFLOW.read_text(encoding="utf-8").strip()
    assert GITLAB.read_text(encoding="utf-8").strip() in [block.strip() for block in blocks]


def test_sample_project_workflow_is_the_recipe() -> None:
    recipe = WORKFLOW.read_text(encoding="utf-8")
    assert SAMPLE_WORKFLOW.read_text(encoding="utf-8") == recipe


@cache
def _check_jsonschema() -> list[str]:
    found = shutil.which("check-jsonschema", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.skip("check-jsonschema is in the test extra: pip install '.[test]'")
    return [found]


def _schema_errors(schema: str, *paths: Path) -> str:
    result = subprocess.run(
        [*_check_jsonschema(), "--builtin-schema", schema, *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return "" if result.returncode == 0 else result.stdout + result.stderr


def test_github_workflows_match_githubs_schema(tmp_path: Path) -> None:
    # The sharded example of the docs is a workflow without its triggers: given one, it must pass.
    sharded = next(block for block in _blocks("yaml") if "strategy:" in block)
    fragment = tmp_path / "sharded.yml"
    fragment.write_text("name: sharded\non: [push]\n" + sharded, encoding="utf-8")
    paths = [WORKFLOW, RELEASE, fragment]
    assert _schema_errors("vendor.github-workflows", *paths) == ""


def test_gitlab_recipe_matches_gitlabs_schema() -> None:
    assert _schema_errors("vendor.gitlab-ci", GITLAB) == ""


def test_the_schema_check_itself_sees_a_wrong_key(tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.yml"
    wrong.write_text(
        WORKFLOW.read_text(encoding="utf-8").replace("runs-on:", "run-on:", 1), encoding="utf-8"
    )
    assert "run-on" in _schema_errors("vendor.github-workflows", wrong)
    gitlab = tmp_path / ".gitlab-ci.yml"
    gitlab.write_text(
        GITLAB.read_text(encoding="utf-8").replace("policy: $BASELINE_POLICY", "policy: fetch"),
        encoding="utf-8",
    )
    assert "policy" in _schema_errors("vendor.gitlab-ci", gitlab)


def test_every_yaml_block_of_the_docs_parses() -> None:
    blocks = _blocks("yaml")
    assert len(blocks) >= 3  # GitHub, sharded GitHub, GitLab
    for block in blocks:
        assert isinstance(yaml.safe_load(block), dict)


def test_commands_use_only_options_that_exist() -> None:
    lines: list[str] = []
    for block in [
        WORKFLOW.read_text(encoding="utf-8"),
        GITLAB.read_text(encoding="utf-8"),
        *_blocks("yaml"),
    ]:
        for script in _run_scripts(yaml.safe_load(block)):
            lines += _commands(script)
    for block in _blocks("bash"):
        lines += _commands(block)
    checked = [
        line
        for line in lines
        if ("pytest" in line or "taichi-limits" in line) and not line.lstrip().startswith("echo ")
    ]
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
