"""One figure per fact on every surface, each from the test's own start (issues 17 item 5, 22).

A violated test's memory figure is read back from the report's peak line, the terminal summary,
the JSON record, the Markdown and HTML tables and the timeline's highest point: one number. A
test killed for CPU in a worker that burned CPU at import reports only its own CPU time.
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path
from typing import Any

import pytest
from helpers.plugin_types import RunPlugin

from pytest_taichi_limits.config.units import human_bytes

ONE_VIOLATION = """
import pytest

HELD = []

@pytest.mark.taichi_limits(mem_mb=150)
def test_leaks():
    for _ in range(400):
        HELD.append(b"\\x01" * (1 << 20))
"""


def _record(path: Path, name: str) -> dict[str, Any]:
    document = json.loads(path.read_text())
    return next(r for r in document["records"] if r["nodeid"].endswith("::" + name))


def test_one_violated_test_shows_one_memory_figure_on_every_surface(
    pytester: pytest.Pytester, run_plugin: RunPlugin
) -> None:
    pytester.makepyfile(test_leak=ONE_VIOLATION)
    json_path, markdown, page = (pytester.path / name for name in ("r.json", "r.md", "r.html"))
    result = run_plugin(
        f"--taichi-limits-json={json_path}",
        f"--taichi-limits-markdown={markdown}",
        f"--taichi-limits-html={page}",
    )
    result.assert_outcomes(failed=1)
    record = _record(json_path, "test_leaks")
    figure = record["own_memory_bytes"]
    shown = human_bytes(figure)
    assert figure == record["peak_own_memory_bytes"]
    assert figure > 150 << 20
    # the timeline's highest point is the figure (its last point holds the final peak)
    assert max(record["timeline"]["mem_bytes"]) == figure
    assert record["timeline"]["mem_bytes"][-1] == figure
    out = result.stdout.str()
    # the report's peak line, and the headline's value said to be the one when caught
    assert re.search(rf"peak usage  own memory \+{re.escape(shown)} \(", out), out
    caught = re.search(r"mem_mb exceeded: ([0-9.]+ [KMG]iB) when caught", out)
    assert caught is not None
    assert record["violation"]["measured"] <= figure / (1 << 20)
    # the terminal summary's table
    assert re.search(rf"^\s*{re.escape(shown)} +\(.*\)\s+test_leak.py::test_leaks$", out, re.M)
    # the Markdown and HTML tables
    assert f"| {shown} |" in markdown.read_text()
    assert f'<td class="n">{html.escape(shown)}</td>' in page.read_text()


def test_the_memory_figure_of_a_test_stopped_for_cpu_is_not_stale(
    pytester: pytest.Pytester, run_plugin: RunPlugin
) -> None:
    """Stopped for cpu_s, the peak line and the JSON show the same, final figure. (With smaps,
    an exact reading of 800 MB is spaced about a second apart: the figure at the stop was the
    one before the allocation, and only the JSON had the kernel's.)"""
    pytester.makepyfile(
        """
        import pytest

        HELD = []

        @pytest.mark.taichi_limits(cpu_s=0.6, mem_mb=4096)
        def test_holds_then_burns():
            HELD.append(b"\\x01" * (800 << 20))
            while True:
                pass
        """
    )
    json_path = pytester.path / "r.json"
    result = run_plugin(f"--taichi-limits-json={json_path}")
    result.assert_outcomes(failed=1)
    record = _record(json_path, "test_holds_then_burns")
    assert record["violation"]["resource"] == "cpu_s"
    # (stopped while it allocates or after: at least its first hundreds of MB, whatever the
    # machine's pace)
    assert record["own_memory_bytes"] == record["peak_own_memory_bytes"] >= 200 << 20
    result.stdout.fnmatch_lines(
        [f"*peak usage  own memory +{human_bytes(record['own_memory_bytes'])} (*"]
    )


def test_cpu_of_a_killed_first_test_in_a_worker_is_from_the_tests_own_start(
    pytester: pytest.Pytester, run_plugin: RunPlugin
) -> None:
    """A module that initialises Taichi and burns CPU at import runs in a worker that imports
    it again: that CPU is the worker's start-up (watched under the first test's budget, and
    within it here), never its first test's (issue 22: it was `CPU 3.81 s | wall 2.09 s` on
    one thread)."""
    pytester.makepyfile(
        test_import_cost="""
        import time
        import pytest
        import taichi as ti

        ti.init(arch=ti.cpu)

        def burn(seconds):
            start = time.process_time()
            while time.process_time() - start < seconds:
                pass

        burn(0.5)  # at import

        @pytest.mark.taichi_limits(cpu_s=1.5)
        def test_burns_on_one_thread():
            burn(30)
        """
    )
    json_path = pytester.path / "r.json"
    result = run_plugin("--taichi-limits", f"--taichi-limits-json={json_path}")
    result.assert_outcomes(failed=1)
    record = _record(json_path, "test_burns_on_one_thread")
    assert record["mode"] == "reimport"
    assert record["violation"]["resource"] == "cpu_s"
    assert record["violation"]["phase"] == "call"
    # One thread: never more CPU than wall time (a tick of /proc's clock aside), and about the
    # budget, not the budget plus the worker's import.
    assert record["cpu_s"] <= record["wall_s"] + 0.05, record
    assert record["cpu_s"] < 1.5 + 0.3, record
