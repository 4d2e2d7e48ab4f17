"""--taichi-limits-suggest: marker lines that are valid markers, and an ini snippet that fits."""

from __future__ import annotations

import ast
import re
import textwrap
from typing import Any, cast

import pytest
from _plugin_types import RunPlugin

from pytest_taichi_limits.budget import marker_values
from pytest_taichi_limits.records import UsageRecord
from pytest_taichi_limits.suggest import HEADROOM, suggestion_for

BODIES = """
import pytest
import taichi as ti


@pytest.fixture
def cpu():
    ti.init(arch=ti.cpu, offline_cache=False)
    yield
    ti.reset()


{mark_field}
def test_field(cpu):
    values = ti.field(ti.f32, shape=32 * 1024 * 1024)
    values.fill(2.0)


{mark_plain}
def test_plain():
    assert sum(range(1000)) == 499500
"""

_LINE = re.compile(r"^(@pytest\.mark\.taichi_limits\((?P<args>[^)]*)\))  # (?P<nodeid>\S+) \(")


def _suggested(result: pytest.RunResult) -> dict[str, str]:
    found = {}
    for line in result.outlines:
        match = _LINE.match(line)
        if match:
            found[match.group("nodeid")] = match.group(1)
    return found


def test_suggested_markers_parse_and_pass_when_fed_back(
    pytester: pytest.Pytester, run_plugin: RunPlugin
) -> None:
    pytester.makepyfile(test_measured=BODIES.format(mark_field="", mark_plain=""))
    result = run_plugin("--taichi-limits", "--taichi-limits-suggest")
    result.assert_outcomes(passed=2)
    markers = _suggested(result)
    assert set(markers) == {"test_measured.py::test_field", "test_measured.py::test_plain"}
    for marker in markers.values():
        call = ast.parse(marker.lstrip("@"), mode="eval").body
        assert isinstance(call, ast.Call) and not call.args
        keywords = cast(
            "dict[str, Any]",
            {keyword.arg: ast.literal_eval(keyword.value) for keyword in call.keywords},
        )
        assert set(keywords) == {"mem_mb", "cpu_s", "wall_s"}  # no GPU measured here
        marker_values("t", [pytest.mark.taichi_limits(**keywords).mark])  # valid, or raises
    field_mb = ast.literal_eval(
        markers["test_measured.py::test_field"].split("mem_mb=")[1].split(",")[0]
    )
    assert field_mb >= 128 * 1.5 + 64  # the 128 MB field, with the documented headroom
    # Feed them back: the same tests carrying the suggested markers, without --taichi-limits.
    pytester.makepyfile(
        test_measured=BODIES.format(
            mark_field=markers["test_measured.py::test_field"],
            mark_plain=markers["test_measured.py::test_plain"],
        )
    )
    result = run_plugin("--taichi-limits-json=fed.json")
    result.assert_outcomes(passed=2)
    assert '"mem_mb": ' + str(field_mb) in (pytester.path / "fed.json").read_text()


def test_ini_snippet_fits_every_test(pytester: pytest.Pytester, run_plugin: RunPlugin) -> None:
    pytester.makepyfile(test_measured=BODIES.format(mark_field="", mark_plain=""))
    result = run_plugin("--taichi-limits", "--taichi-limits-suggest")
    lines = result.outlines
    start = lines.index("[pytest]")
    snippet = ["[pytest]"]
    for line in lines[start + 1 :]:
        if not line.startswith("taichi_limits_"):
            break
        snippet.append(line)
    assert [line.split(" = ")[0] for line in snippet[1:]] == [
        "taichi_limits_cpu_s",
        "taichi_limits_mem_mb",
        "taichi_limits_wall_s",
    ]
    field_mb = float(
        _suggested(result)["test_measured.py::test_field"].split("mem_mb=")[1].split(",")[0]
    )
    assert f"taichi_limits_mem_mb = {field_mb:g}" in snippet  # the largest suggestion
    pytester.makefile(".ini", pytest="\n".join(snippet) + "\n")
    result = run_plugin("--taichi-limits")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines([f"*default budget cpu_s=* mem_mb={field_mb:g} wall_s=*"])


def _record(
    own_mb: float, cpu_s: float, wall_s: float, gpu_mb: float | None, outcome: str = "passed"
) -> UsageRecord:
    mb = 1024 * 1024
    return UsageRecord(
        nodeid="t.py::t",
        outcome=outcome,
        own_memory_bytes=int(own_mb * mb),
        peak_own_memory_bytes=int(own_mb * mb),
        memory_method="rss-growth",
        peak_own_rss_bytes=int(own_mb * mb),
        kernel_own_rss_bytes=0,
        peak_rss_bytes=0,
        start_rss_bytes=0,
        peak_vms_bytes=0,
        cpu_s=cpu_s,
        wall_s=wall_s,
        gpu_peak_bytes=None if gpu_mb is None else int(gpu_mb * mb),
        gpu_note="",
        gpu_clamps=(),
        budget={},
        pid=1,
        started_at=0.0,
        mode="fork",
        arch="x64",
        violation=None,
        regression=None,
    )


@pytest.mark.parametrize(
    "own_mb, cpu_s, wall_s, gpu_mb, expected",
    [
        (0.0, 0.0, 0.0, None, "@pytest.mark.taichi_limits(mem_mb=64, cpu_s=2, wall_s=10)"),
        (100.0, 1.2, 2.1, None, "@pytest.mark.taichi_limits(mem_mb=224, cpu_s=5, wall_s=20)"),
        (
            10.0,
            0.1,
            0.1,
            1500.0,
            "@pytest.mark.taichi_limits(mem_mb=96, cpu_s=3, wall_s=15, gpu_gb=2.25)",
        ),
    ],
)
def test_headroom_and_rounding(
    own_mb: float, cpu_s: float, wall_s: float, gpu_mb: float | None, expected: str
) -> None:
    # mem: 1.5x+64 MB up to 32 MB; cpu: 2x+2 s up to 1 s; wall: 3x+10 s up to 5 s;
    # gpu: 1.25x+0.25 GB up to 0.25 GB (1500 MB = 1.46 GB -> 2.08 -> 2.25).
    assert HEADROOM["mem_mb"] == (1.5, 64.0, 32.0)
    assert suggestion_for(_record(own_mb, cpu_s, wall_s, gpu_mb)).marker() == expected


def test_failed_test_is_marked_as_a_lower_bound() -> None:
    suggestion = suggestion_for(_record(50, 1, 1, None, outcome="failed"))
    assert suggestion.lower_bound
    assert textwrap.shorten(suggestion.measured, 200).startswith("measured own memory 50.0 MiB")
