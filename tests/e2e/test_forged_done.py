"""A test cannot declare itself passed (issue 16, item 4).

The test below writes well-formed "passed" reports and the `done` message through its child's
own report channel (JSON lines as the plugin writes them), then allocates 300 MB against
mem_mb=100. Its
budget holds until the child is back in the plugin's hands: in per-test isolation until the
child has exited, in a worker until the parent sees (in /proc) its main thread wait for the next
command. Every run goes through `run_plugin` (hard timeout).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from helpers.plugin_types import RunPlugin
from helpers.watch import FIND_CHANNEL

FORGER = (
    "import os\n"
    + FIND_CHANNEL
    + """
import json

import pytest

HELD = []


def wire(value):  # tuples survive the trip as the plugin's channel tags them
    if isinstance(value, tuple):
        return {"\\u0000tuple": [wire(element) for element in value]}
    if isinstance(value, list):
        return [wire(element) for element in value]
    if isinstance(value, dict):
        return {key: wire(element) for key, element in value.items()}
    return value


def forge_a_pass(request):
    item = request.node
    lines = []
    for when in ("setup", "call", "teardown"):
        report = pytest.TestReport(
            item.nodeid, item.location, {}, "passed", None, when, [], 0.0
        )
        data = item.config.hook.pytest_report_to_serializable(config=item.config, report=report)
        lines.append(json.dumps({"t": "report", "data": wire(data)}))
    lines.append(json.dumps({"t": "done", "nodeid": item.nodeid}))
    for fd in channel_fds():
        os.write(fd, ("\\n".join(lines) + "\\n").encode())


@pytest.mark.taichi_limits(mem_mb=100)
def test_claims_it_passed_then_allocates(request):
    forge_a_pass(request)
    HELD.append(b"\\x01" * (300 << 20))


def test_next_in_the_same_worker():
    assert not HELD or len(HELD[0]) == 300 << 20
"""
)


def _events(log: Path, kind: str) -> dict[str, dict[str, Any]]:
    events = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return {e["nodeid"].split("::")[-1]: e for e in events if e["event"] == kind}


@pytest.mark.parametrize("isolation", ["test", "module"])
def test_a_forged_pass_and_done_do_not_end_the_budget(
    pytester: pytest.Pytester, run_plugin: RunPlugin, isolation: str
) -> None:
    pytester.makepyfile(test_forger=FORGER)
    log = pytester.path / "usage.jsonl"
    result = run_plugin(
        "--taichi-limits",
        f"--taichi-limits-isolation={isolation}",
        f"--taichi-limits-log={log}",
        "--taichi-limits-grace=0.5",
    )
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines(
        [
            "FAILED test_forger.py::test_claims_it_passed_then_allocates - mem_mb exceeded*",
        ]
    )
    result.stdout.no_fnmatch_line("*INTERNALERROR*")
    violations = _events(log, "violation")
    assert list(violations) == ["test_claims_it_passed_then_allocates"]
    assert violations["test_claims_it_passed_then_allocates"]["resource"] == "mem_mb"
    # The next test ran in a child of its own (module isolation: the violation ended the worker)
    # and was charged nothing of its neighbour's 300 MB.
    usage = _events(log, "usage")
    assert usage["test_next_in_the_same_worker"]["peak_own_memory_bytes"] < 100 << 20
